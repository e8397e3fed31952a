//! The reference job between keel and a broker, for every broker connector: killed at the
//! crash points around a publish and with `kill -9` at random instants, then run to its
//! end; and a server outage mid-run. After every kill a reader of the outputs sees no record
//! twice and consistent running totals; at the end every record once, the final totals, and
//! every bad line dead-lettered once. Each broker supplies a [`Target`]: where the job reads
//! and writes, and what a reader of its outputs sees.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::refjob::{self, Input};

/// Where the reference job reads and writes for one broker.
pub trait Target {
    /// The `[source]` table (default: the input files).
    fn source_toml(&self) -> String {
        "[source]\ntype = \"files\"\npath = \"${IN}\"\nformat = \"json_lines\"\n".into()
    }
    /// The `[[sinks]]` (named `records` and `final`) and `[dead_letter]` tables.
    fn outputs_toml(&self) -> String {
        "[[sinks]]\nname = \"records\"\ntype = \"files\"\npath = \"${OUT}/records\"\n\n\
         [[sinks]]\nname = \"final\"\ntype = \"files\"\npath = \"${OUT}/final\"\n\n\
         [dead_letter]\npath = \"${OUT}/dead\"\nid_field = \"id\"\n"
            .into()
    }
    /// Puts the input lines where the source reads them.
    fn load(&self, lines: &[String]) {
        let _ = lines;
    }
    /// Whether readers see whole epochs only. A sink that publishes a decided epoch message
    /// by message (NATS) shows part of it after a crash mid-publish, in the order the
    /// partition tasks wrote it, so per-customer running totals in that snapshot need not be
    /// a prefix of one serial order; no record may be there twice all the same.
    fn whole_epochs(&self) -> bool {
        true
    }
    /// What a reader of the outputs sees now, as `records/`, `final/` and `dead/` under the
    /// returned directory (dead letters as JSON lines with `raw` and `reason`).
    fn seen(&self, dir: &Path, what: &str) -> PathBuf {
        let _ = what;
        dir.join("out")
    }
}

/// The job: `target`'s source and outputs around the reference job's steps.
pub fn job(target: &dyn Target) -> String {
    let j = refjob::JOB;
    let steps = &j[j.find("[[steps]]").unwrap_or(0)..j.find("[[sinks]]").unwrap_or(j.len())];
    format!(
        "name = \"reference-job-brokers\"\n\n{}\n{steps}{}\n[checkpoint]\npath = \"${{STATE}}\"\ninterval = \"${{KEEL_CHECKPOINT_INTERVAL:-1s}}\"\n",
        target.source_toml(),
        target.outputs_toml()
    )
}

/// `keel run` of the job in `dir`.
pub fn spawn(dir: &Path, crash_at: Option<&str>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.args(["run", dir.join("job.toml").to_str().unwrap(), "--quiet"])
        .env("IN", dir.join("in"))
        .env("OUT", dir.join("out"))
        .env("STATE", dir.join("state"))
        .env("KEEL_CHECKPOINT_INTERVAL", "60ms")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(c) = crash_at {
        cmd.env("KEEL_CRASH_AT", c);
    }
    cmd.spawn().unwrap()
}

fn newest_manifest(dir: &Path) -> String {
    std::fs::read_dir(dir.join("state").join("checkpoints"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("ckpt-"))
                .max()
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

/// Generates the input in `dir/in` (and hands it to the target), writes the job.
pub fn setup(target: &dyn Target, dir: &Path, records: u64, seed: u64) -> Input {
    let input = refjob::generate(&dir.join("in"), records, 3, 2_000, 50, seed);
    std::fs::write(dir.join("job.toml"), job(target)).unwrap();
    target.load(&refjob::visible_lines(&dir.join("in")));
    input
}

fn check_snapshot(target: &dyn Target, input: &Input, dir: &Path, what: &str) {
    let seen = target.seen(dir, what);
    let mut problems = refjob::check(input, &seen, false);
    if !target.whole_epochs() {
        problems.retain(|p| !p.contains("running totals inconsistent"));
    }
    assert!(problems.is_empty(), "{what}: a reader sees {problems:?}");
}

/// The crash test: each of `points` (`KEEL_CRASH_AT`) must abort the run there; then
/// `kill -9` at 12 random instants, each up to 150 ms after a new checkpoint (or 600 ms into
/// the run); then a run to the end. The job reads at most `records / 16` records a second,
/// so however fast the connector, every kill must land in a running job with input left
/// (the 12 runs read at most 12 × 0.75 s of it, 56 % of the input).
pub fn crash_test(target: &dyn Target, records: u64, points: &[&str]) {
    // one crash test at a time: each runs and kills many keel processes, and the timing of
    // the kills should not depend on what the others do
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = setup(target, dir, records, 11);
    let paced = std::fs::read_to_string(dir.join("job.toml")).unwrap()
        + &format!("\n[run]\nmax_records_per_second = {}\n", records / 16);
    std::fs::write(dir.join("job.toml"), paced).unwrap();
    for point in points {
        let status = spawn(dir, Some(point)).wait().unwrap();
        assert_eq!(status.signal(), Some(6), "{point}: expected to abort there: {status:?}");
        check_snapshot(target, &input, dir, point);
    }
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for k in 0..12 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let before = newest_manifest(dir);
        let mut child = spawn(dir, None);
        // kill once the run has checkpointed, or has run for 600 ms (a run on a loaded
        // machine may be slow to recover)
        let started = Instant::now();
        let mut exited = None;
        while exited.is_none() && newest_manifest(dir) <= before && started.elapsed() < Duration::from_millis(600) {
            exited = child.try_wait().unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        if exited.is_none() {
            std::thread::sleep(Duration::from_millis(rng % 150));
            let _ = child.kill();
        }
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "kill {k} found the run ended: {status:?}");
        check_snapshot(target, &input, dir, &format!("kill {k}"));
    }
    let status = spawn(dir, None).wait().unwrap();
    assert!(matches!(status.code(), Some(0 | 1)), "final run: {status:?}");
    let seen = target.seen(dir, "end");
    let problems = refjob::check(&input, &seen, true);
    assert!(problems.is_empty(), "after 12 kills: {problems:?}");
}

/// A server of its own for a test, on a free port, stopped (SIGTERM) and started again with
/// the same data directory: an outage a run must wait out.
pub struct Server {
    program: String,
    args: Vec<String>,
    /// Run as this user and group (a server that refuses root).
    user: Option<(u32, u32)>,
    /// How a service manager stops it (`-TERM`; PostgreSQL's fast shutdown is `-INT`).
    stop_signal: &'static str,
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    _data: tempfile::TempDir,
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Server {
    /// Starts `program` with `args(port, data_dir)`.
    pub fn start(program: &str, args: impl Fn(u16, &Path) -> Vec<String>) -> Server {
        Self::start_as(program, None, "-TERM", |_| {}, args)
    }

    /// Starts `program` as `user`, stopped with `stop_signal`, after `prepare(data_dir)`
    /// (the data directory is the user's).
    pub fn start_as(
        program: &str,
        user: Option<(u32, u32)>,
        stop_signal: &'static str,
        prepare: impl FnOnce(&Path),
        args: impl Fn(u16, &Path) -> Vec<String>,
    ) -> Server {
        let data = tempfile::tempdir().unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(data.path(), Some(uid), Some(gid)).unwrap();
        }
        prepare(data.path());
        let port = free_port();
        let mut s = Server {
            program: program.into(),
            args: args(port, data.path()),
            user,
            stop_signal,
            child: None,
            port,
            _data: data,
        };
        s.up();
        s
    }

    fn up(&mut self) {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).stdout(Stdio::null()).stderr(Stdio::null());
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", self.program));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} did not listen on {}",
                self.program,
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGTERM, as a service manager does) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args([self.stop_signal, &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.up();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The outage test: once the run has checkpointed, the server is stopped for `outage` and
/// started again. The run must wait it out by itself and end normally with every record
/// once and nothing dead-lettered but the bad lines.
pub fn outage_test(target: &dyn Target, server: &mut Server, records: u64, outage: Duration) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = setup(target, dir, records, 5);
    let mut child = spawn(dir, None);
    let deadline = Instant::now() + Duration::from_secs(120);
    while newest_manifest(dir).is_empty() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before the outage");
        assert!(Instant::now() < deadline, "no checkpoint in 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.stop();
    std::thread::sleep(outage);
    let during = child.try_wait().unwrap();
    server.restart();
    assert!(during.is_none(), "the run ended during the outage: {during:?}");
    let status = child.wait().unwrap();
    assert!(matches!(status.code(), Some(0 | 1)), "after the outage: {status:?}");
    let seen = target.seen(dir, "after the outage");
    let problems = refjob::check(&input, &seen, true);
    assert!(problems.is_empty(), "after the outage: {problems:?}");
}

/// Writes `records`, `final` and dead letters (`(raw, reason)`) as a reader saw them into
/// `dir/seen-<n>`, the layout [`refjob::check`] reads.
pub fn write_seen(dir: &Path, records: &[String], fin: &[String], dead: &[(String, String)]) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let out = dir.join(format!("seen-{}", N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)));
    for (sub, lines) in [("records", records), ("final", fin)] {
        std::fs::create_dir_all(out.join(sub)).unwrap();
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(
            out.join(sub).join("part-0-seen.jsonl"),
            if lines.is_empty() { String::new() } else { text },
        )
        .unwrap();
    }
    std::fs::create_dir_all(out.join("dead")).unwrap();
    let dead: Vec<String> = dead
        .iter()
        .map(|(raw, reason)| serde_json::json!({"raw": raw, "reason": reason}).to_string())
        .collect();
    let mut text = dead.join("\n");
    text.push('\n');
    std::fs::write(
        out.join("dead").join("dead-0-seen.jsonl"),
        if dead.is_empty() { String::new() } else { text },
    )
    .unwrap();
    out
}
