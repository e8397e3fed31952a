//! Storage faults under the real binary: a disk that fills up mid-run.
//!
//! The reference job writes its output and checkpoints onto a 1 MiB tmpfs: the run stops
//! with exit 3 and `disk full` in its message, losing nothing; once space is freed (the tmpfs
//! grown), the same command resumes and the output is exactly-once and complete. Mounting
//! needs root, which CI has; elsewhere the test says so and passes without running.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::refjob;

/// A tmpfs mounted for the test, unmounted when dropped (also on a failed assertion).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }

    fn grow(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "remount failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn run(dir: &Path, disk: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["run", dir.join("job.toml").to_str().unwrap(), "--quiet"])
        .env("IN", dir.join("in"))
        .env("OUT", disk.join("out"))
        .env("STATE", disk.join("state"))
        .env("KEEL_CHECKPOINT_INTERVAL", "100ms")
        .env("RUST_LOG", "error")
        .output()
        .unwrap()
}

#[test]
fn a_full_disk_stops_the_run_naming_it_and_a_rerun_after_freeing_space_is_exactly_once() {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let disk = dir.join("disk");
    let Some(fs) = Tmpfs::mount(&disk, "1m") else {
        assert!(!is_root, "root could not mount a tmpfs");
        eprintln!("not run: mounting a tmpfs needs root");
        return;
    };
    // about 8 MB of output: far more than the disk holds
    let input = refjob::generate(&dir.join("in"), 100_000, 2, 1_000, 50, 11);
    std::fs::write(dir.join("job.toml"), refjob::JOB).unwrap();
    let full = run(dir, &disk);
    let text = String::from_utf8_lossy(&full.stderr);
    assert_eq!(full.status.code(), Some(3), "{text}");
    assert!(text.contains("disk full"), "the cause is named: {text}");
    // what is visible is still exactly-once so far
    let problems = refjob::check(&input, &disk.join("out"), false);
    assert!(problems.is_empty(), "{problems:?}");

    fs.grow("64m");
    let again = run(dir, &disk);
    assert!(
        matches!(again.status.code(), Some(0 | 1)),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let problems = refjob::check(&input, &disk.join("out"), true);
    assert!(problems.is_empty(), "{problems:?}");
}
