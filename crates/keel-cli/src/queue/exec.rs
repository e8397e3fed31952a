//! One job's command for `keel queue work --exec CMD`: `sh -c CMD` run through the
//! supervisor (`keel __supervise`, see `supervise.rs`), which kills the command's whole
//! process group when this worker exits or is killed, or gives the job up.
//!
//! Contract of a run:
//! - the command gets the payload (JSON) on stdin and `KEEL_JOB_ID`, `KEEL_JOB_KIND`,
//!   `KEEL_JOB_ATTEMPT`, `KEEL_JOB_PRIORITY`, `KEEL_JOB_LEASE_UNTIL_MS` and
//!   `KEEL_WORKER_ID` in its environment;
//! - its stdout is passed through to the worker's stdout, line by line; the end of its stderr
//!   becomes the error of a failed attempt;
//! - how it ended is classified by [`classify_exit`] (exit 75 with a `keel-retry-after:
//!   DURATION` line on stdout or stderr asks for a retry after that delay);
//! - with a time limit, a command still running at the limit is killed with its group and
//!   the attempt fails as `timeout` (transient);
//! - when the future of [`run_command`] is dropped (the job cancelled: its lease lost or not
//!   extendable, or a shutdown's grace period over) the supervisor's pipe closes and the
//!   supervisor kills the command's group.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::Failure;
use keel::queue::Job;
use keel::queue::command::{CommandEnd, classify_exit, retry_after_of_line};
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// What runs for every job.
#[derive(Debug)]
pub struct ExecSpec {
    /// The command, run with `sh -c`.
    pub command: String,
    /// Kill a command still running after this long (`--timeout`).
    pub timeout: Option<Duration>,
    /// The `keel` executable that supervises commands (this one).
    pub supervisor: PathBuf,
    /// This worker's id (`KEEL_WORKER_ID`).
    pub worker: String,
    /// The worker's stdout (see [`StdoutWriter`]).
    pub stdout: tokio::sync::mpsc::Sender<Vec<u8>>,
}

/// The worker's stdout, written by a thread of its own, a whole line at a time, so that the
/// lines of concurrent commands never mix and a slow reader never blocks the worker's
/// runtime (the commands wait instead: at most [`STDOUT_QUEUED`] lines are queued).
pub struct StdoutWriter {
    done: tokio::sync::oneshot::Receiver<()>,
}

/// Lines queued for the worker's stdout at most.
const STDOUT_QUEUED: usize = 256;

impl StdoutWriter {
    /// Starts the writer; lines are sent to the returned sender.
    pub fn start() -> (Self, tokio::sync::mpsc::Sender<Vec<u8>>) {
        use std::io::Write as _;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(STDOUT_QUEUED);
        let (done_tx, done) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut out = std::io::stdout();
            while let Some(line) = rx.blocking_recv() {
                // (a closed stdout loses the output, not the job)
                let _ = out.write_all(&line).and_then(|()| out.flush());
            }
            let _ = done_tx.send(());
        });
        (StdoutWriter { done }, tx)
    }

    /// Waits until every line sent has been written (every sender dropped), for at most
    /// `limit`.
    pub async fn finish(self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.done).await;
    }
}

/// The most of stderr kept to make the error message from (its last lines are used).
const STDERR_KEPT: usize = 8 * 1024;
/// Lines longer than this are handled in pieces of this size.
const MAX_LINE: usize = 64 * 1024;
/// How long the output of a command that has exited is still read: only a process that left
/// the command's group (and so survived it) can hold the pipes open that long.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// What a command said, collected while it runs.
#[derive(Default)]
struct Said {
    /// The end of its stderr (at most [`STDERR_KEPT`] bytes).
    stderr: Vec<u8>,
    /// The last `keel-retry-after:` delay it printed.
    retry_after: Option<Duration>,
}

/// Runs the command for `job`; see the module docs.
pub async fn run_command(spec: Arc<ExecSpec>, job: Job) -> Result<(), Failure> {
    let mut child = tokio::process::Command::new(&spec.supervisor)
        .args(["__supervise", "--", "sh", "-c"])
        .arg(&spec.command)
        .env("KEEL_JOB_ID", &job.id)
        .env("KEEL_JOB_KIND", &job.kind)
        .env("KEEL_JOB_ATTEMPT", job.attempts.to_string())
        .env("KEEL_JOB_PRIORITY", job.priority.to_string())
        .env("KEEL_JOB_LEASE_UNTIL_MS", job.lease_until_ms.unwrap_or(0).to_string())
        .env("KEEL_WORKER_ID", &spec.worker)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // its own group: a terminal's Ctrl-C reaches the worker only, which then applies
        // --grace (the command has a group of its own too, made by the supervisor)
        .process_group(0)
        .spawn()
        .map_err(|e| Failure::fatal("spawn_failed", format!("cannot run `{}`: {e}", spec.command)))?;
    // the supervisor's lifeline: kept open until it has exited; dropped with this future
    let mut lifeline = child.stdin.take();
    if let Some(pipe) = lifeline.as_mut() {
        let payload = job.payload.to_string();
        // (a supervisor that died early closed the pipe: its exit status tells why)
        let _ = pipe.write_all(format!("{}\n{payload}", payload.len()).as_bytes()).await;
        let _ = pipe.flush().await;
    }
    let said = Arc::new(Mutex::new(Said::default()));
    let mut readers = tokio::task::JoinSet::new();
    if let Some(out) = child.stdout.take() {
        readers.spawn(forward_stdout(BufReader::new(out), spec.clone(), said.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.spawn(keep_stderr(BufReader::new(err), said.clone()));
    }
    let waited = match spec.timeout {
        None => Some(child.wait().await),
        Some(limit) => tokio::time::timeout(limit, child.wait()).await.ok(),
    };
    let end = match waited {
        Some(Ok(status)) => end_of(status),
        Some(Err(e)) => return Err(Failure::transient("wait_failed", e.to_string())),
        None => {
            // past the limit: closing the lifeline makes the supervisor kill the command's
            // group; its exit confirms the kill before the attempt is failed
            drop(lifeline.take());
            let limit = spec.timeout.unwrap_or_default();
            if tokio::time::timeout(OUTPUT_GRACE, child.wait()).await.is_err() {
                tracing::error!(job = %job.id, "the supervisor did not exit after the time limit; killing it");
                let _ = child.kill().await;
            }
            CommandEnd::TimedOut(limit)
        }
    };
    drop(lifeline);
    if tokio::time::timeout(OUTPUT_GRACE, async { while readers.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!(job = %job.id, "a process the command started still holds its output open; no longer reading it");
        readers.abort_all();
    }
    let said = std::mem::take(&mut *said.lock().unwrap_or_else(|p| p.into_inner()));
    classify_exit(end, said.retry_after, &stderr_tail(&said.stderr))
}

/// How the supervisor ended, which is how the command ended (see `supervise.rs`).
fn end_of(status: std::process::ExitStatus) -> CommandEnd {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(c), _) => CommandEnd::Exited(c),
        (None, Some(s)) => CommandEnd::Signaled(s),
        // (neither: not on Unix)
        (None, None) => CommandEnd::Signaled(0),
    }
}

/// Notes a `keel-retry-after:` line.
fn note_retry_after(piece: &[u8], said: &Mutex<Said>) {
    let text = String::from_utf8_lossy(piece);
    if !text.trim_start().starts_with(keel::queue::command::RETRY_AFTER_PREFIX) {
        return;
    }
    match retry_after_of_line(&text, keel_declare::config::parse_duration) {
        Some(d) => said.lock().unwrap_or_else(|p| p.into_inner()).retry_after = Some(d),
        None => {
            tracing::warn!(line = %text.trim(), "ignoring a retry-after line whose duration cannot be read (use one like 30s)")
        }
    }
}

/// Passes the command's stdout through to the worker's, a whole line at a time, noting
/// retry-after lines.
async fn forward_stdout(mut out: impl AsyncBufRead + Unpin, spec: Arc<ExecSpec>, said: Arc<Mutex<Said>>) {
    let mut piece = Vec::new();
    let mut line_start = true;
    while let Ok(true) = next_piece(&mut out, &mut piece).await {
        if line_start {
            note_retry_after(&piece, &said);
        }
        line_start = piece.ends_with(b"\n");
        if spec.stdout.send(std::mem::take(&mut piece)).await.is_err() {
            return;
        }
    }
}

/// Keeps the end of the command's stderr, noting retry-after lines.
async fn keep_stderr(mut err: impl AsyncBufRead + Unpin, said: Arc<Mutex<Said>>) {
    let mut piece = Vec::new();
    let mut line_start = true;
    while let Ok(true) = next_piece(&mut err, &mut piece).await {
        if line_start {
            note_retry_after(&piece, &said);
        }
        line_start = piece.ends_with(b"\n");
        let mut s = said.lock().unwrap_or_else(|p| p.into_inner());
        s.stderr.extend_from_slice(&piece);
        let excess = s.stderr.len().saturating_sub(STDERR_KEPT);
        s.stderr.drain(..excess);
    }
}

/// Reads the next line, newline included, into `piece` (a line longer than [`MAX_LINE`]
/// comes in pieces); false at the end of the input.
async fn next_piece(r: &mut (impl AsyncBufRead + Unpin), piece: &mut Vec<u8>) -> std::io::Result<bool> {
    piece.clear();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(!piece.is_empty());
        }
        if let Some(i) = buf.iter().position(|b| *b == b'\n') {
            piece.extend_from_slice(&buf[..=i]);
            r.consume(i + 1);
            return Ok(true);
        }
        let n = buf.len();
        piece.extend_from_slice(buf);
        r.consume(n);
        if piece.len() >= MAX_LINE {
            return Ok(true);
        }
    }
}

/// The longest stderr message kept for a failed job, in bytes.
pub const STDERR_TAIL_BYTES: usize = 2000;

/// The last 5 lines of `stderr` (invalid UTF-8 replaced), at most [`STDERR_TAIL_BYTES`] of
/// them, cut at a character boundary.
pub fn stderr_tail(stderr: &[u8]) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = stderr.lines().rev().take(5).collect();
    let tail = lines.into_iter().rev().collect::<Vec<_>>().join("\n");
    let mut start = tail.len().saturating_sub(STDERR_TAIL_BYTES);
    while !tail.is_char_boundary(start) {
        start += 1;
    }
    tail[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::{STDERR_TAIL_BYTES, next_piece, stderr_tail};

    #[test]
    fn the_stderr_tail_is_cut_at_a_char_boundary() {
        for prefix in ["", "x", "xx"] {
            for ch in ["é", "€", "😀"] {
                let text = format!("{prefix}{}", ch.repeat(3000));
                let tail = stderr_tail(text.as_bytes());
                assert!(tail.len() <= STDERR_TAIL_BYTES && tail.len() > STDERR_TAIL_BYTES - 4);
                assert!(text.ends_with(&tail));
            }
        }
        assert_eq!(stderr_tail(b"a\nb\nc\nd\ne\nf\n"), "b\nc\nd\ne\nf");
        assert_eq!(stderr_tail(b""), "");
    }

    #[tokio::test]
    async fn output_is_split_into_whole_lines_and_bounded_pieces() {
        let long = vec![b'x'; super::MAX_LINE * 3];
        let mut input = b"one\ntwo\n".to_vec();
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\nlast");
        let mut r = tokio::io::BufReader::new(&input[..]);
        let mut pieces = Vec::new();
        let mut piece = Vec::new();
        while next_piece(&mut r, &mut piece).await.unwrap() {
            pieces.push(piece.clone());
        }
        assert_eq!(pieces[0], b"one\n");
        assert_eq!(pieces[1], b"two\n");
        // (a piece ends at the first read that makes it MAX_LINE long: one buffer more at most)
        assert!((super::MAX_LINE..super::MAX_LINE + 8192).contains(&pieces[2].len()));
        assert!(!pieces[2].ends_with(b"\n"));
        assert_eq!(pieces.last().unwrap(), b"last");
        assert_eq!(pieces.concat(), input);
    }
}
