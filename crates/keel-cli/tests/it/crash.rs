//! The crash test: the reference job killed with `kill -9` at random instants and at chosen
//! crash points (between prepare and manifest, right after the manifest, between two renames
//! of one commit), restarted each time. After every kill the visible output holds only epochs
//! covered by a durable checkpoint and is exactly-once so far; at the end it is exactly-once
//! and complete. `bench/crash/crash.sh` runs the long version on 1M+ records.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel::checkpoint::{CheckpointStore, FileCheckpointStore, ManifestRead};

use crate::refjob::{self, Input};

fn spawn(dir: &Path, crash_at: Option<&str>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.args(["run", dir.join("job.toml").to_str().unwrap(), "--quiet"])
        .env("IN", dir.join("in"))
        .env("OUT", dir.join("out"))
        .env("STATE", dir.join("state"))
        .env("KEEL_CHECKPOINT_INTERVAL", "40ms")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(c) = crash_at {
        cmd.env("KEEL_CRASH_AT", c);
    }
    cmd.spawn().unwrap()
}

fn newest_checkpoint(state: &Path) -> Option<u64> {
    FileCheckpointStore::new(state)
        .read_all()
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            ManifestRead::Valid(m) => Some(m.id),
            ManifestRead::Corrupt { .. } | ManifestRead::Unsupported { .. } => None,
        })
        .max()
}

/// The name of the newest checkpoint manifest file (`ckpt-<id>.json`, fixed width), if any.
fn newest_manifest_name(state: &Path) -> Option<String> {
    std::fs::read_dir(state.join("checkpoints"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("ckpt-") && n.ends_with(".json"))
        .max()
}

/// What must hold right after a crash; returns how many visible dead-letter files it checked.
fn check_after_crash(input: &Input, dir: &Path, what: &str) -> usize {
    let newest = newest_checkpoint(&dir.join("state")).unwrap_or(0);
    let mut dead_files = 0;
    for sink in ["records", "final", "dead"] {
        for e in refjob::visible_epochs(&dir.join("out").join(sink)) {
            dead_files += usize::from(sink == "dead");
            assert!(
                e <= newest,
                "{what}: {sink} shows epoch {e} but the newest durable checkpoint is {newest}"
            );
        }
    }
    let problems = refjob::check(input, &dir.join("out"), false);
    assert!(
        problems.is_empty(),
        "{what}: visible output after the crash: {problems:?}"
    );
    dead_files
}

fn run_to_end(dir: &Path) {
    let status = spawn(dir, None).wait().unwrap();
    assert!(matches!(status.code(), Some(0 | 1)), "final run failed: {status:?}");
}

#[test]
fn kill_9_at_random_instants_and_crash_points_then_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = refjob::generate(&dir.join("in"), 600_000, 4, 3_000, 50, 7);
    std::fs::write(dir.join("job.toml"), refjob::JOB).unwrap();

    // visible dead-letter files whose epoch was checked against the newest checkpoint
    let mut dead_checked = 0;
    // deterministic crash points first: each aborts the process at a precise instant
    for (i, point) in [
        "after_prepare:2",
        "after_state:3",
        "after_manifest:2",
        "mid_commit:4",
        "mid_rename:3",
        "after_commit:5",
    ]
    .iter()
    .enumerate()
    {
        let status = spawn(dir, Some(point)).wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(6),
            "{point} (#{i}): the process was expected to abort there: {status:?}"
        );
        dead_checked += check_after_crash(&input, dir, point);
    }

    // then kill -9 at random instants, each chosen after a readiness signal: the run has
    // committed a checkpoint of its own (a manifest newer than any before it exists), so
    // the kill lands while the job is processing, not during its startup or after its end
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut interrupted = 0;
    for k in 0..20 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_millis(rng % 80);
        let before = newest_manifest_name(&dir.join("state"));
        let mut child = spawn(dir, None);
        let mut exited = None;
        // bounded: a run that neither checkpoints nor exits in 120 s is a failure
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                exited = Some(status);
                break;
            }
            if newest_manifest_name(&dir.join("state")) > before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kill {k}: the run neither checkpointed nor exited"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        if exited.is_none() {
            std::thread::sleep(delay);
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
            }
        }
        let status = match exited {
            Some(s) => s,
            None => child.wait().unwrap(),
        };
        match (status.signal(), status.code()) {
            // SIGKILL: only the test sends it
            (Some(9), _) => interrupted += 1,
            // the run finished before its kill: it must have finished well
            (None, Some(0 | 1)) => {}
            _ => panic!("kill {k}: the run ended on its own with {status:?}"),
        }
        dead_checked += check_after_crash(&input, dir, &format!("kill {k} ({delay:?} after its first checkpoint)"));
    }
    assert!(
        interrupted >= 18,
        "only {interrupted} of 20 kills hit a running job; the input is too small"
    );

    assert!(dead_checked > 0, "no dead-letter file was visible after any crash");

    run_to_end(dir);
    let problems = refjob::check(&input, &dir.join("out"), true);
    assert!(problems.is_empty(), "after the final run: {problems:?}");
    // a rerun after completion has nothing to do and changes nothing
    let before = refjob::visible_lines(&dir.join("out/records")).len();
    run_to_end(dir);
    assert_eq!(refjob::visible_lines(&dir.join("out/records")).len(), before);
}
