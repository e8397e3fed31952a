//! How the end of an external command run for a job becomes a job outcome (`keel queue work
//! --exec`, or a Rust handler that runs commands).
//!
//! The contract, documented for command authors:
//!
//! | the command                                   | the job                                   |
//! |-----------------------------------------------|-------------------------------------------|
//! | exits 0                                       | acked (done)                              |
//! | exits [`EXIT_RETRY`] (75, `EX_TEMPFAIL`)      | transient: retried with backoff           |
//! | exits 75 and printed `keel-retry-after: 30s`  | throttled: retried, not before 30 s       |
//! | is killed by a signal                         | transient (`killed`)                      |
//! | runs longer than its time limit               | transient (`timeout`), its processes killed |
//! | exits with any other code `c`                 | permanent (`exit_c`): the dead set        |
//!
//! A retried attempt still counts toward the job's `max_attempts`; the last one goes to the
//! dead set whatever the class.

use std::time::Duration;

use crate::failure::{Class, Failure};

/// The exit code of a job command that asks to be retried later (`EX_TEMPFAIL` of
/// sysexits.h).
pub const EXIT_RETRY: i32 = 75;

/// The prefix of the line (on stdout or stderr) by which a command exiting [`EXIT_RETRY`]
/// says how long to wait before the retry: `keel-retry-after: 30s`.
pub const RETRY_AFTER_PREFIX: &str = "keel-retry-after:";

/// How a job's command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandEnd {
    /// It exited with this code.
    Exited(i32),
    /// A signal (this number) killed it.
    Signaled(i32),
    /// It ran longer than this limit and was killed.
    TimedOut(Duration),
}

/// The outcome of a job whose command ended as `end`: see the module docs. `retry_after` is
/// what the command asked for (the last [`RETRY_AFTER_PREFIX`] line), used only with
/// [`EXIT_RETRY`]; `stderr_tail` (the end of its stderr) becomes the failure's message, or a
/// description of `end` when it is blank.
pub fn classify_exit(end: CommandEnd, retry_after: Option<Duration>, stderr_tail: &str) -> Result<(), Failure> {
    let tail = stderr_tail.trim();
    let message = |what: String| if tail.is_empty() { what } else { tail.to_owned() };
    match end {
        CommandEnd::Exited(0) => Ok(()),
        CommandEnd::Exited(EXIT_RETRY) => match retry_after {
            Some(after) => Err(Failure::throttled(
                "retry_after",
                message(format!("the command asked to be retried after {}", shown(after))),
                Some(after),
            )),
            None => Err(Failure::transient(
                "exit_transient",
                message(format!("the command exited with {EXIT_RETRY} (retry later)")),
            )),
        },
        CommandEnd::Exited(c) => Err(Failure::new(
            Class::Permanent,
            format!("exit_{c}"),
            message(format!("the command exited with {c}")),
        )),
        CommandEnd::Signaled(s) => Err(Failure::transient(
            "killed",
            message(format!("the command was killed by signal {s}")),
        )),
        // the command's own words come after the reason: it was stopped, not failing
        CommandEnd::TimedOut(limit) => {
            let what = format!("the command ran longer than {} and was killed", shown(limit));
            Err(Failure::transient(
                "timeout",
                if tail.is_empty() {
                    what
                } else {
                    format!("{what}; its stderr ended with: {tail}")
                },
            ))
        }
    }
}

/// `30s`, `1.5s`, `300ms`: a duration for a message.
fn shown(d: Duration) -> String {
    format!("{d:?}")
}

/// The delay a line asks for, if it is a [`RETRY_AFTER_PREFIX`] line (`keel-retry-after:
/// 30s`, surrounding blanks ignored) whose duration `parse` accepts; `None` otherwise.
pub fn retry_after_of_line(line: &str, parse: impl Fn(&str) -> Result<Duration, String>) -> Option<Duration> {
    let rest = line.trim().strip_prefix(RETRY_AFTER_PREFIX)?;
    parse(rest.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> Result<Duration, String> {
        s.strip_suffix('s')
            .and_then(|n| n.parse().ok())
            .map(Duration::from_secs)
            .ok_or_else(|| format!("bad duration {s}"))
    }

    #[test]
    fn every_way_a_command_ends_has_its_class_and_reason() {
        assert!(classify_exit(CommandEnd::Exited(0), Some(Duration::from_secs(5)), "noise").is_ok());
        let cases = [
            (
                CommandEnd::Exited(EXIT_RETRY),
                None,
                Class::Transient,
                "exit_transient",
                None,
            ),
            (
                CommandEnd::Exited(EXIT_RETRY),
                Some(Duration::from_secs(30)),
                Class::Throttled,
                "retry_after",
                Some(Duration::from_secs(30)),
            ),
            // a retry-after only counts with exit 75
            (
                CommandEnd::Exited(3),
                Some(Duration::from_secs(30)),
                Class::Permanent,
                "exit_3",
                None,
            ),
            (CommandEnd::Exited(1), None, Class::Permanent, "exit_1", None),
            (CommandEnd::Signaled(9), None, Class::Transient, "killed", None),
            (
                CommandEnd::TimedOut(Duration::from_secs(2)),
                None,
                Class::Transient,
                "timeout",
                None,
            ),
        ];
        for (end, after, class, reason, retry_after) in cases {
            let f = classify_exit(end, after, "").expect_err("a failure");
            assert_eq!(
                (f.class, f.reason.as_ref(), f.retry_after),
                (class, reason, retry_after),
                "{end:?}"
            );
            assert!(!f.message.is_empty(), "{end:?}");
        }
    }

    #[test]
    fn the_stderr_tail_is_the_message_and_a_timeout_says_so_first() {
        let f = classify_exit(CommandEnd::Exited(3), None, "  no such file\n").unwrap_err();
        assert_eq!(f.message, "no such file");
        let f = classify_exit(CommandEnd::TimedOut(Duration::from_secs(2)), None, "working").unwrap_err();
        assert!(f.message.starts_with("the command ran longer than 2s") && f.message.ends_with("working"));
    }

    #[test]
    fn retry_after_lines_are_recognised_only_with_the_prefix_and_a_valid_duration() {
        assert_eq!(
            retry_after_of_line("keel-retry-after: 30s", secs),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after_of_line("  keel-retry-after:5s \r", secs),
            Some(Duration::from_secs(5))
        );
        assert_eq!(retry_after_of_line("keel-retry-after: soon", secs), None);
        assert_eq!(retry_after_of_line("retry-after: 30s", secs), None);
        assert_eq!(retry_after_of_line("log: keel-retry-after: 30s", secs), None);
    }
}
