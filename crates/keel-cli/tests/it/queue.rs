//! `keel queue work --exec`, killed with `kill -9` in the middle of jobs 10 times and
//! restarted: every job completes, a job's command runs again only after its lease expired,
//! nothing is lost, and with an idempotent command (one effect file per job) the effects
//! are exactly once. On SQLite and on Redis.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel::queue::NewJob;

const JOBS: usize = 200;
const LEASE_MS: u64 = 1000;

/// The job command: logs its start and its lease, works 40 ms, then writes its effect
/// atomically.
const HANDLER: &str = r#"echo "$KEEL_JOB_ID $KEEL_JOB_ATTEMPT $(date +%s%3N) $KEEL_JOB_LEASE_UNTIL_MS" >> starts.log; sleep 0.04; cat > effects/.$KEEL_JOB_ID && mv effects/.$KEEL_JOB_ID effects/$KEEL_JOB_ID"#;

fn keel(dir: &Path, queue: &str, name: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.arg("queue")
        .args(args)
        .args(["--queue", queue, "--name", name])
        .current_dir(dir)
        .env("RUST_LOG", "error");
    cmd
}

fn spawn_worker(dir: &Path, queue: &str, name: &str, drain: bool) -> Child {
    let lease = format!("{LEASE_MS}ms");
    let mut args = vec![
        "work",
        "--exec",
        HANDLER,
        "--lease",
        &lease,
        "--poll",
        "20ms",
        "--concurrency",
        "4",
    ];
    if drain {
        args.push("--drain");
    }
    keel(dir, queue, name, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn kill_9_workers_then_every_job_once(queue: &str, name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("effects")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ids: Vec<String> = rt.block_on(async {
        let q = keel_connectors::queue::open(queue, name, Duration::from_secs(3600))
            .await
            .unwrap();
        let jobs: Vec<NewJob> = (0..JOBS)
            .map(|n| {
                NewJob::new("effect", serde_json::json!({ "n": n }))
                    .priority((n % 3) as i32)
                    .max_attempts(50)
            })
            .collect();
        q.enqueue_many(&jobs).await.unwrap().into_iter().map(|e| e.id).collect()
    });

    let mut rng = 0xD1B5_4A32_D192_ED03u64;
    let mut interrupted = 0;
    for _ in 0..10 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_millis(150 + rng % 400);
        let mut child = spawn_worker(dir, queue, name, false);
        let started = Instant::now();
        while started.elapsed() < delay && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            interrupted += 1;
        }
        child.wait().unwrap();
    }
    assert_eq!(interrupted, 10, "every kill hit a running worker");
    // a last worker drains the queue (the killed workers' leases expire meanwhile)
    let status = spawn_worker(dir, queue, name, true).wait().unwrap();
    assert!(status.success(), "{status:?}");
    std::thread::sleep(Duration::from_millis(200)); // orphaned commands of killed workers finish

    // nothing left, nothing dead
    let out = keel(dir, queue, name, &["stats", "--json"]).output().unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in ["ready", "scheduled", "active", "dead"] {
        assert_eq!(stats[k], 0, "{k}: {stats}");
    }
    // every job's effect exactly once (one file per job id, none other)
    let mut effects: Vec<String> = std::fs::read_dir(dir.join("effects"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    effects.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(effects, want);
    // a job's command ran again only after the lease of its previous attempt expired
    let log = std::fs::read_to_string(dir.join("starts.log")).unwrap();
    let mut starts: BTreeMap<String, Vec<(u32, u64, u64)>> = BTreeMap::new();
    for line in log.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        starts.entry(f[0].to_owned()).or_default().push((
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
        ));
    }
    let mut reruns = 0;
    for (id, mut s) in starts {
        s.sort();
        for w in s.windows(2) {
            let ((a1, t1, lease1), (a2, t2, _)) = (w[0], w[1]);
            reruns += 1;
            assert!(a2 > a1, "job {id}: attempt {a2} after {a1}");
            assert!(
                lease1 >= t1 + LEASE_MS / 2,
                "job {id}: attempt {a1} started with a lease"
            );
            assert!(
                t2 >= lease1,
                "job {id}: attempt {a2} started at {t2}, before attempt {a1}'s lease ran out at {lease1}"
            );
        }
    }
    assert!(reruns > 0, "some jobs were interrupted by the kills and ran again");
}

#[test]
fn kill_9_sqlite_workers_then_every_job_once() {
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", tmp.path().join("queue.db").display());
    kill_9_workers_then_every_job_once(&db, "kill-test");
}

#[test]
fn kill_9_redis_workers_then_every_job_once() {
    let name = format!("kill-test-{}-{}", std::process::id(), keel::util::now_ms());
    kill_9_workers_then_every_job_once("redis://127.0.0.1:6379/", &name);
}

#[test]
fn sigterm_finishes_quick_jobs_and_releases_slow_ones_within_the_grace_period() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = format!("sqlite:{}", dir.join("queue.db").display());
    for kind in ["quick", "slow"] {
        let out = keel(dir, &db, "sig", &["enqueue", kind, "{}"]).output().unwrap();
        assert!(out.status.success());
    }
    let cmd =
        r#"echo "$KEEL_JOB_KIND" >> starts.log; if [ "$KEEL_JOB_KIND" = slow ]; then sleep 30; else sleep 0.3; fi"#;
    let mut child = keel(
        dir,
        &db,
        "sig",
        &["work", "--exec", cmd, "--grace", "1s", "--poll", "20ms"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let started = Instant::now();
    while std::fs::read_to_string(dir.join("starts.log")).map_or(0, |s| s.lines().count()) < 2 {
        assert!(started.elapsed() < Duration::from_secs(10), "the jobs never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let sent = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "the grace period bounds the stop"
    );
    let out = keel(dir, &db, "sig", &["list", "--json"]).output().unwrap();
    let left: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(left.len(), 1, "the quick job finished and was acked: {left:?}");
    assert_eq!(left[0]["kind"], "slow");
    assert_eq!(left[0]["state"], "ready", "the slow job was released");
    assert_eq!(left[0]["attempts"], 0, "its attempt is not counted");
}

/// A command that succeeds after printing long multi-byte stderr is acked once (cutting its
/// stderr used to panic inside a character, which made it a transient failure, re-run);
/// a failing one records its stderr tail cut at a character boundary.
#[test]
fn exec_with_long_multibyte_stderr_acks_successes_once_and_cuts_failures_at_a_char_boundary() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = format!("sqlite:{}", dir.join("queue.db").display());
    for kind in ["ok", "fails"] {
        let out = keel(dir, &db, "mb", &["enqueue", kind, "{}", "--max-attempts", "3"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    // 1500 'é' (2 bytes each) then one ASCII byte: the last 2000 bytes start inside an 'é'
    let cmd = r#"echo "$KEEL_JOB_KIND" >> runs.log; i=0; while [ $i -lt 1500 ]; do printf 'é' >&2; i=$((i+1)); done; printf 'x\n' >&2; if [ "$KEEL_JOB_KIND" = ok ]; then exit 0; else exit 3; fi"#;
    let out = keel(dir, &db, "mb", &["work", "--exec", cmd, "--poll", "20ms", "--drain"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let runs = std::fs::read_to_string(dir.join("runs.log")).unwrap();
    let mut runs: Vec<&str> = runs.lines().collect();
    runs.sort_unstable();
    assert_eq!(runs, ["fails", "ok"], "each command ran once");
    let out = keel(dir, &db, "mb", &["list", "--json"]).output().unwrap();
    let left: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(left.len(), 1, "the successful job was acked: {left:?}");
    assert_eq!(
        (left[0]["kind"].as_str(), left[0]["state"].as_str()),
        (Some("fails"), Some("dead"))
    );
    let errors = left[0]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["reason"], "exit_3");
    let message = errors[0]["message"].as_str().unwrap();
    let full = format!("{}x", "é".repeat(1500));
    assert!(full.ends_with(message), "a suffix of the stderr");
    assert!((1990..=2000).contains(&message.len()), "{} bytes", message.len());
    assert!(message.starts_with('é') && message.ends_with('x'));
}

/// True while process `pid` exists and is not a zombie.
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
}

/// A job cancelled (here by the end of a shutdown's grace period, as when its lease cannot be
/// extended) kills its command with everything the command started, not only `sh`.
#[test]
fn a_cancelled_job_kills_its_command_and_what_it_started() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = format!("sqlite:{}", dir.join("queue.db").display());
    let out = keel(dir, &db, "grp", &["enqueue", "slow", "{}"]).output().unwrap();
    assert!(out.status.success());
    let cmd = r#"sleep 300 & echo $! > child.pid.tmp; mv child.pid.tmp child.pid; wait"#;
    let mut worker = keel(
        dir,
        &db,
        "grp",
        &["work", "--exec", cmd, "--grace", "100ms", "--poll", "20ms"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let started = Instant::now();
    let pid = loop {
        if let Ok(p) = std::fs::read_to_string(dir.join("child.pid")) {
            break p.trim().to_owned();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the command never started");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(alive(&pid));
    let kill = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(worker.wait().unwrap().success());
    // (killed before keel exited; a moment for the kernel to finish it)
    for _ in 0..500 {
        if !alive(&pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    panic!("the command's own child {pid} outlived its cancelled job");
}
