//! Passwords in queue and ledger locations never appear in what `keel` prints, with debug
//! logging on: not on success, not in errors (a refused connection, a rejected password).

use std::path::Path;
use std::process::Command;

const SECRET: &str = "s3cretpw";

/// Runs `keel ARGS` in `dir` with debug logs; returns (exit code, stdout + stderr).
fn keel(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["--log-level", "debug"])
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("KEEL_QUEUE")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn assert_no_secret(what: &str, (code, text): (Option<i32>, String)) -> (Option<i32>, String) {
    for line in text.lines() {
        assert!(!line.contains(SECRET), "{what}: the password is shown: {line}");
    }
    (code, text)
}

#[test]
fn queue_and_ledger_commands_never_print_a_password() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let name = format!("secrets-{}-{}", std::process::id(), keel::util::now_ms());
    // accepted (the default user has no password, so any is accepted with a user name)
    let ok = format!("redis://default:{SECRET}@127.0.0.1:6379/");
    // rejected: a password without a user name, on a server that has none configured
    let rejected = format!("redis://:{SECRET}@127.0.0.1:6379/");
    // refused: nothing listens there
    let refused = format!("redis://:{SECRET}@127.0.0.1:1/");
    let (code, text) = assert_no_secret(
        "enqueue",
        keel(dir, &["queue", "enqueue", "k", "{}", "--queue", &ok, "--name", &name]),
    );
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = assert_no_secret(
        "work",
        keel(
            dir,
            &[
                "queue", "work", "--exec", "true", "--drain", "--poll", "20ms", "--queue", &ok, "--name", &name,
            ],
        ),
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("default:***@127.0.0.1:6379"),
        "the location is shown redacted: {text}"
    );
    for (what, queue) in [("rejected", &rejected), ("refused", &refused)] {
        let (code, text) = assert_no_secret(what, keel(dir, &["queue", "stats", "--queue", queue, "--name", &name]));
        assert_ne!(code, Some(0), "{what}: {text}");
        assert!(
            text.contains("***"),
            "{what}: the error names the redacted location: {text}"
        );
    }

    let pg_ok = format!("postgres://postgres:{SECRET}@127.0.0.1:5432/test");
    let pg_refused = format!("postgres://postgres:{SECRET}@127.0.0.1:1/test");
    let (code, text) = assert_no_secret("ledger stats", keel(dir, &["ledger", "stats", "--ledger", &pg_ok]));
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = assert_no_secret(
        "ledger refused",
        keel(dir, &["ledger", "stats", "--ledger", &pg_refused]),
    );
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("***"), "the error names the redacted location: {text}");

    // a pipeline whose [ingest] ledger carries a password: validate and run
    std::fs::create_dir_all(dir.join("in")).unwrap();
    std::fs::write(dir.join("in/a.jsonl"), "{\"id\":1}\n").unwrap();
    std::fs::write(
        dir.join("p.toml"),
        format!(
            r#"name = "secrets-{name}"

[source]
type = "files"
path = "in"
format = "json_lines"

[[steps]]
type = "parse"
format = "json"

[[sinks]]
name = "out"
type = "files"
path = "out"

[checkpoint]
path = "state"

[ingest]
ledger = "{pg_ok}"
schema = "secrets_test"
lease = "10s"
"#
        ),
    )
    .unwrap();
    let (code, text) = assert_no_secret("validate", keel(dir, &["validate", "p.toml"]));
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = assert_no_secret("run", keel(dir, &["run", "p.toml"]));
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("postgres:***@127.0.0.1:5432"),
        "the ledger is shown redacted: {text}"
    );
}
