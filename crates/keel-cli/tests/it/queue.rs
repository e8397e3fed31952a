//! `keel queue`, through the real binary: workers killed with `kill -9` mid-job take their
//! commands (and what those started) with them, every run of a job is recorded and a job runs
//! again only after its lease expired, and completes once; time limits, retry-after, exit
//! classification, health thresholds, `show`/`retry` of unknown ids, attempt history across
//! `retry`, graceful shutdown. On SQLite, and the kill test on Redis too.
//!
//! No sleep stands for a readiness condition: the tests wait (polling, with a bound on the
//! number of polls) for files and lines that say a step happened, and assert no durations.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use keel::queue::NewJob;

/// How often the polls below look.
const POLL: Duration = Duration::from_millis(10);
/// The most polls of one wait (60 s at [`POLL`]: only a broken build gets near it).
const MAX_POLLS: usize = 6000;
/// The most polls of a wait that runs `keel` at each look.
const MAX_COMMAND_POLLS: usize = 600;

/// A worker that is killed when the test ends, whichever way it ends.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn keel(dir: &Path, queue: &str, name: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.arg("queue")
        .args(args)
        .args(["--queue", queue, "--name", name])
        .current_dir(dir)
        .env("RUST_LOG", "error");
    cmd
}

fn sqlite(dir: &Path) -> String {
    format!("sqlite:{}", dir.join("queue.db").display())
}

/// Polls `ready` until it gives a value; panics with `what` after [`MAX_POLLS`] polls.
fn wait_for<T>(what: &str, ready: impl FnMut() -> Option<T>) -> T {
    wait_polls(what, MAX_POLLS, ready)
}

/// Polls `ready` until it gives a value; panics with `what` after `polls` polls.
fn wait_polls<T>(what: &str, polls: usize, mut ready: impl FnMut() -> Option<T>) -> T {
    for _ in 0..polls {
        if let Some(v) = ready() {
            return v;
        }
        std::thread::sleep(POLL);
    }
    panic!("gave up waiting: {what}");
}

/// Waits (bounded) for `child` to exit.
fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let found = (0..MAX_POLLS).find_map(|_| {
        let s = child.try_wait().unwrap();
        if s.is_none() {
            std::thread::sleep(POLL);
        }
        s
    });
    found.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("{what} did not exit");
    })
}

/// True while process `pid` exists and is not a zombie.
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
}

/// Waits (bounded) until none of `pids` is alive; on failure kills them and panics.
fn wait_all_dead(pids: &[String], what: &str) {
    for _ in 0..MAX_POLLS / 10 {
        if !pids.iter().any(|p| alive(p)) {
            return;
        }
        std::thread::sleep(POLL);
    }
    let left: Vec<&String> = pids.iter().filter(|p| alive(p)).collect();
    for p in &left {
        let _ = Command::new("kill").args(["-KILL", p]).status();
    }
    panic!("{what}: processes {left:?} outlived it");
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn enqueue_jobs(queue: &str, name: &str, jobs: Vec<NewJob>) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let q = keel_connectors::queue::open(queue, name, Duration::from_secs(3600))
            .await
            .unwrap();
        q.enqueue_many(&jobs).await.unwrap().into_iter().map(|e| e.id).collect()
    })
}

/// The kill test's job command. Every run appends `start ID ATTEMPT WORKER SH_PID CHILD_PID
/// START_MS LEASE_UNTIL_MS` to runs.log (after starting a child of its own that would live
/// 5 minutes), waits for the file `gate`, writes its effect atomically (an idempotent `mv`),
/// then appends `done ID ATTEMPT WORKER`.
const GATED: &str = r#"sleep 300 & gc=$!
echo "start $KEEL_JOB_ID $KEEL_JOB_ATTEMPT $KEEL_WORKER_ID $$ $gc $(date +%s%3N) $KEEL_JOB_LEASE_UNTIL_MS" >> runs.log
while [ ! -e gate ]; do sleep 0.02; done
kill $gc
cat > effects/.$KEEL_JOB_ID && mv effects/.$KEEL_JOB_ID effects/$KEEL_JOB_ID
echo "done $KEEL_JOB_ID $KEEL_JOB_ATTEMPT $KEEL_WORKER_ID" >> runs.log"#;

const KILL_ROUNDS: usize = 4;
const KILL_JOBS: usize = 8;
const CONCURRENCY: usize = 4;

/// One run of a job's command, from runs.log.
#[derive(Debug)]
struct Run {
    attempt: u32,
    worker: String,
    pids: [String; 2],
    start_ms: u64,
    lease_until_ms: u64,
}

/// Per job id: its runs' starts, and its completions (attempt, worker).
type Runs = (BTreeMap<String, Vec<Run>>, BTreeMap<String, Vec<(u32, String)>>);

fn runs_of(dir: &Path) -> Runs {
    let mut starts: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    let mut dones: BTreeMap<String, Vec<(u32, String)>> = BTreeMap::new();
    for line in lines_of(&dir.join("runs.log")) {
        let f: Vec<&str> = line.split(' ').collect();
        match f[0] {
            "start" => starts.entry(f[1].to_owned()).or_default().push(Run {
                attempt: f[2].parse().unwrap(),
                worker: f[3].to_owned(),
                pids: [f[4].to_owned(), f[5].to_owned()],
                start_ms: f[6].parse().unwrap(),
                lease_until_ms: f[7].parse().unwrap(),
            }),
            "done" => dones
                .entry(f[1].to_owned())
                .or_default()
                .push((f[2].parse().unwrap(), f[3].to_owned())),
            other => panic!("a bad line in runs.log: {other}"),
        }
    }
    (starts, dones)
}

/// `KILL_ROUNDS` workers are each killed with `kill -9` once `CONCURRENCY` of their job
/// commands have started (and wait on a gate, so every kill lands mid-run): the commands and
/// the children they started die with the worker; the next workers take the jobs again only
/// once their leases expired (the queue's own history says so, and `health` shows the dead
/// worker's leases as stalled); with the gate open, a last worker completes every job once.
fn kill_9_workers_mid_job(queue: &str, name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("effects")).unwrap();
    let jobs = (0..KILL_JOBS)
        .map(|n| NewJob::new("effect", serde_json::json!({ "n": n })).max_attempts(50))
        .collect();
    let ids = enqueue_jobs(queue, name, jobs);
    let spawn = |worker: &str, drain: bool| {
        let mut args = vec![
            "work",
            "--exec",
            GATED,
            "--lease",
            "1s",
            "--poll",
            "20ms",
            "--concurrency",
            "4",
            "--worker",
            worker,
        ];
        if drain {
            args.push("--drain");
        }
        Worker(
            keel(dir, queue, name, &args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut killed = BTreeSet::new();
    for round in 1..=KILL_ROUNDS {
        let worker = format!("w{round}");
        let mut child = spawn(&worker, false);
        let pids: Vec<String> = wait_for(&format!("{CONCURRENCY} commands of {worker} started"), || {
            let (starts, _) = runs_of(dir);
            let mine: Vec<String> = starts
                .values()
                .flatten()
                .filter(|r| r.worker == worker)
                .flat_map(|r| r.pids.clone())
                .collect();
            (mine.len() >= CONCURRENCY * 2).then_some(mine)
        });
        child.0.kill().unwrap();
        let status = child.0.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "{worker} was running until the kill: {status:?}"
        );
        killed.insert(worker.clone());
        // the commands and their own children die with their worker (and do not go on
        // beside the runs that will take over their jobs)
        wait_all_dead(&pids, &format!("kill -9 of worker {worker}"));
    }

    // the killed workers' leases run out: health says stalled, and why
    let stalled = wait_polls("health reports the dead workers' leases", MAX_COMMAND_POLLS, || {
        let out = keel(dir, queue, name, &["health", "--json"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (v["active"].as_u64() > Some(0) && v["expired_leases"] == v["active"]).then_some((out.status.code(), v))
    });
    assert_eq!(
        stalled.1["expired_leases"], KILL_JOBS,
        "every job is held by a killed worker"
    );
    assert_eq!(stalled.0, Some(1), "{}", stalled.1);
    assert_eq!(stalled.1["status"], "stalled");
    assert!(
        stalled.1["reasons"].to_string().contains("lease ran out"),
        "{}",
        stalled.1
    );
    // the queue's record: every attempt before the current one ended by its lease expiring
    let out = keel(dir, queue, name, &["list", "--json"]).output().unwrap();
    let listed = json_lines(&out);
    assert_eq!(listed.len(), KILL_JOBS);
    let mut reclaimed = 0;
    for j in &listed {
        let attempts = j["attempts"].as_u64().unwrap();
        let errors = j["errors"].as_array().unwrap();
        assert_eq!(errors.len() as u64, attempts.saturating_sub(1), "{j}");
        for (k, e) in errors.iter().enumerate() {
            assert_eq!(
                (e["reason"].as_str(), e["attempt"].as_u64()),
                (Some("lease_expired"), Some(k as u64 + 1)),
                "{j}"
            );
        }
        reclaimed += errors.len();
    }
    assert!(
        reclaimed >= CONCURRENCY,
        "some jobs were taken again after a kill: {reclaimed}"
    );

    std::fs::write(dir.join("gate"), "").unwrap();
    let mut last = spawn("final", true);
    let status = wait_exit(&mut last.0, "the draining worker");
    assert!(status.success(), "{status:?}");

    let out = keel(dir, queue, name, &["stats", "--json"]).output().unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in ["ready", "scheduled", "active", "dead"] {
        assert_eq!(stats[k], 0, "{k}: {stats}");
    }
    let mut effects: Vec<String> = std::fs::read_dir(dir.join("effects"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    effects.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(effects, want);

    // every run recorded: each job ran again only after the lease of its previous run had
    // expired, and completed once, by the last worker
    let (starts, dones) = runs_of(dir);
    assert_eq!(starts.keys().collect::<Vec<_>>(), want.iter().collect::<Vec<_>>());
    let mut reruns = 0;
    for (id, mut runs) in starts {
        runs.sort_by_key(|r| r.start_ms);
        let (last, earlier) = runs.split_last().unwrap();
        assert_eq!(last.worker, "final", "job {id}: {runs:?}");
        for r in earlier {
            assert!(
                killed.contains(&r.worker),
                "job {id} ran again after a run that was not killed: {runs:?}"
            );
        }
        for w in runs.windows(2) {
            reruns += 1;
            assert_eq!(
                w[1].attempt,
                w[0].attempt + 1,
                "job {id}: one attempt per take: {runs:?}"
            );
            assert!(
                w[1].start_ms >= w[0].lease_until_ms,
                "job {id}: attempt {} started before attempt {}'s lease ran out: {runs:?}",
                w[1].attempt,
                w[0].attempt
            );
        }
        assert_eq!(
            dones.get(&id).map(Vec::as_slice),
            Some(&[(last.attempt, "final".to_owned())][..]),
            "job {id} completes once, in its last run"
        );
    }
    assert!(reruns >= CONCURRENCY, "{reruns} reruns");
}

#[test]
fn kill_9_sqlite_workers_mid_job_then_each_job_completes_once() {
    let tmp = tempfile::tempdir().unwrap();
    kill_9_workers_mid_job(&sqlite(tmp.path()), "kill-test");
}

const REDIS: &str = "redis://127.0.0.1:6379/";

/// Deletes a Redis queue's keys when the test ends, whichever way it ends.
struct RedisQueueKeys(String);

impl Drop for RedisQueueKeys {
    fn drop(&mut self) {
        let Ok(mut c) = redis::Client::open(REDIS).and_then(|c| c.get_connection()) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("keel:q:{{{}}}:*", self.0))
            .query(&mut c)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut c);
        }
    }
}

#[test]
fn kill_9_redis_workers_mid_job_then_each_job_completes_once() {
    let keys = RedisQueueKeys(format!("kill-test-{}-{}", std::process::id(), keel::util::now_ms()));
    kill_9_workers_mid_job(REDIS, &keys.0);
}

/// Ctrl-C in a terminal signals the whole foreground process group: here SIGINT to the
/// worker's group. The commands are outside it (under their supervisor, in groups of their
/// own), so the quick one finishes within `--grace` and is acked instead of dying of the
/// signal, and the slow one is released when the grace period ends.
#[test]
fn ctrl_c_reaches_the_worker_only_which_finishes_quick_jobs_and_releases_slow_ones_after_the_grace_period() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = sqlite(dir);
    for kind in ["quick", "slow"] {
        let out = keel(dir, &db, "sig", &["enqueue", kind, "{}"]).output().unwrap();
        assert!(out.status.success());
    }
    // the quick job ends once the worker has been asked to stop (the file `stop` appears)
    let cmd = r#"echo "$KEEL_JOB_KIND" >> starts.log; if [ "$KEEL_JOB_KIND" = slow ]; then sleep 300; else while [ ! -e stop ]; do sleep 0.02; done; fi"#;
    let mut child = Worker(
        keel(
            dir,
            &db,
            "sig",
            &["work", "--exec", cmd, "--grace", "3s", "--poll", "20ms"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // (a group of its own, as a terminal gives a foreground job)
        .process_group(0)
        .spawn()
        .unwrap(),
    );
    wait_for("both jobs started", || {
        (lines_of(&dir.join("starts.log")).len() >= 2).then_some(())
    });
    let group = rustix::process::Pid::from_raw(child.0.id() as i32).unwrap();
    rustix::process::kill_process_group(group, rustix::process::Signal::INT).unwrap();
    std::fs::write(dir.join("stop"), "").unwrap();
    let status = wait_exit(&mut child.0, "the worker after SIGINT");
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    let left = json_lines(&keel(dir, &db, "sig", &["list", "--json"]).output().unwrap());
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
    let db = sqlite(dir);
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
    let left = json_lines(&keel(dir, &db, "mb", &["list", "--json"]).output().unwrap());
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

/// A job cancelled (here by the end of a shutdown's grace period, as when its lease cannot be
/// extended) kills its command with everything the command started, not only `sh`.
#[test]
fn a_cancelled_job_kills_its_command_and_what_it_started() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = sqlite(dir);
    let out = keel(dir, &db, "grp", &["enqueue", "slow", "{}"]).output().unwrap();
    assert!(out.status.success());
    let cmd = r#"sleep 300 & echo $! > child.pid.tmp; mv child.pid.tmp child.pid; wait"#;
    let mut worker = Worker(
        keel(
            dir,
            &db,
            "grp",
            &["work", "--exec", cmd, "--grace", "100ms", "--poll", "20ms"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let pid = wait_for("the command started", || {
        std::fs::read_to_string(dir.join("child.pid"))
            .ok()
            .map(|p| p.trim().to_owned())
    });
    assert!(alive(&pid));
    let kill = Command::new("kill")
        .args(["-TERM", &worker.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(wait_exit(&mut worker.0, "the worker after SIGTERM").success());
    wait_all_dead(&[pid], "the cancelled job");
}

/// `--timeout`: a command still running at the limit is killed with what it started, and the
/// attempt fails as a transient `timeout`, retried until the attempts run out.
#[test]
fn a_command_past_its_timeout_is_killed_and_retried_as_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = sqlite(dir);
    let out = keel(dir, &db, "to", &["enqueue", "slow", "{}", "--max-attempts", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let cmd = r#"sleep 300 & echo "$KEEL_JOB_ATTEMPT $$ $!" >> runs.log; wait"#;
    let out = keel(
        dir,
        &db,
        "to",
        &["work", "--exec", cmd, "--timeout", "300ms", "--poll", "20ms", "--drain"],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let runs = lines_of(&dir.join("runs.log"));
    assert_eq!(runs.len(), 2, "both attempts ran: {runs:?}");
    let pids: Vec<String> = runs
        .iter()
        .flat_map(|l| l.split(' ').skip(1).map(str::to_owned))
        .collect();
    wait_all_dead(&pids, "a command past its time limit");
    let dead = json_lines(&keel(dir, &db, "to", &["dead", "--json"]).output().unwrap());
    assert_eq!(dead.len(), 1);
    let errors = dead[0]["errors"].as_array().unwrap();
    let got: Vec<(&str, &str, u64)> = errors
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap(),
                e["class"].as_str().unwrap(),
                e["attempt"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [("timeout", "transient", 1), ("timeout", "transient", 2)]);
}

/// Exit 75 with a `keel-retry-after:` line (on stdout or on stderr) retries the job after that
/// delay, as a throttled failure, not a permanent one; exit 75 alone retries with backoff.
#[test]
fn exit_75_with_a_retry_after_line_retries_after_that_delay() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = sqlite(dir);
    for kind in ["stdout", "stderr", "plain"] {
        let out = keel(dir, &db, "ra", &["enqueue", kind, "{}"]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let cmd = r#"echo "$KEEL_JOB_KIND" >> runs.log
case "$KEEL_JOB_KIND" in
  stdout) echo working; echo "keel-retry-after: 2h" ;;
  stderr) echo "keel-retry-after: 3h" >&2 ;;
  plain) exit 75 ;;
esac
exit 75"#;
    let before = keel::util::now_ms();
    let mut worker = Worker(
        keel(dir, &db, "ra", &["work", "--exec", cmd, "--poll", "20ms"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("all three commands ran", || {
        (lines_of(&dir.join("runs.log")).len() >= 3).then_some(())
    });
    // (the plain job's backoff is short: it may be running again by now)
    let listed = wait_polls(
        "the throttled jobs are scheduled, the plain one failed once",
        MAX_COMMAND_POLLS,
        || {
            let jobs = json_lines(&keel(dir, &db, "ra", &["list", "--json"]).output().unwrap());
            let scheduled = jobs
                .iter()
                .filter(|j| j["state"] == "scheduled" && j["kind"] != "plain")
                .count();
            let plain_failed = jobs.iter().any(|j| j["kind"] == "plain" && j["errors"][0].is_object());
            (scheduled == 2 && plain_failed).then_some(jobs)
        },
    );
    let kill = Command::new("kill")
        .args(["-TERM", &worker.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(wait_exit(&mut worker.0, "the worker after SIGTERM").success());
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut worker.0.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(
        stdout.contains("working\n"),
        "the command's stdout is passed through: {stdout:?}"
    );
    for (kind, hours) in [("stdout", 2), ("stderr", 3)] {
        let j = listed.iter().find(|j| j["kind"] == kind).unwrap();
        let first = &j["errors"][0];
        assert_eq!(
            (first["class"].as_str(), first["reason"].as_str()),
            (Some("throttled"), Some("retry_after")),
            "{j}"
        );
        let run_at = j["run_at_ms"].as_u64().unwrap();
        let asked = before + hours * 3_600_000;
        // (the asked delay, from when the attempt failed: between the start and an hour later)
        assert!(
            run_at >= asked && run_at < asked + 3_600_000,
            "{kind}: runs at {run_at}, asked {asked}: {j}"
        );
    }
    let plain = listed.iter().find(|j| j["kind"] == "plain").unwrap();
    assert_eq!(plain["errors"][0]["reason"], "exit_transient", "{plain}");
    assert!(plain["run_at_ms"].as_u64().unwrap() < before + 3_600_000, "{plain}");
}

/// How `work --exec` classifies how a command ended (`classify_exit`): one job per way, one
/// attempt each, then the dead set says which class and reason each got; a retried attempt
/// is logged with its retry time in RFC 3339; a process a command left behind is killed.
#[test]
fn exec_classifies_exit_codes_signals_and_retry_after() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = sqlite(dir);
    for kind in ["ok", "temp", "bad", "signal", "throttle", "leaves"] {
        let out = keel(dir, &db, "cl", &["enqueue", kind, "{}", "--max-attempts", "1"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    // fails once with 75, then succeeds: retried
    let out = keel(dir, &db, "cl", &["enqueue", "flaky", "{}", "--max-attempts", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let cmd = r#"case "$KEEL_JOB_KIND" in
  ok) exit 0 ;;
  temp) echo "upstream busy" >&2; exit 75 ;;
  bad) echo "no such record" >&2; exit 3 ;;
  signal) kill -KILL $$ ;;
  throttle) echo "keel-retry-after: 10m"; exit 75 ;;
  flaky) [ "$KEEL_JOB_ATTEMPT" = 1 ] && exit 75; exit 0 ;;
  leaves) sleep 300 & echo $! > leftover.pid ;;
esac"#;
    let out = keel(dir, &db, "cl", &["work", "--exec", cmd, "--poll", "20ms", "--drain"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let dead = json_lines(&keel(dir, &db, "cl", &["dead", "--json"]).output().unwrap());
    let got: BTreeMap<String, (String, String, String)> = dead
        .iter()
        .map(|j| {
            let e = &j["errors"][0];
            (
                j["kind"].as_str().unwrap().to_owned(),
                (
                    e["class"].as_str().unwrap().to_owned(),
                    e["reason"].as_str().unwrap().to_owned(),
                    e["message"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect();
    let want = |class: &str, reason: &str| (class.to_owned(), reason.to_owned());
    let classes: BTreeMap<&str, (String, String)> = got
        .iter()
        .map(|(k, (c, r, _))| (k.as_str(), (c.clone(), r.clone())))
        .collect();
    assert_eq!(
        classes,
        BTreeMap::from([
            ("bad", want("permanent", "exit_3")),
            ("signal", want("transient", "killed")),
            ("temp", want("transient", "exit_transient")),
            ("throttle", want("throttled", "retry_after")),
        ]),
        "ok, flaky and leaves were acked"
    );
    // what a command leaves running in its group is killed when it exits
    let leftover = std::fs::read_to_string(dir.join("leftover.pid")).unwrap();
    wait_all_dead(&[leftover.trim().to_owned()], "the command that left a process behind");
    assert_eq!(got["bad"].2, "no such record");
    assert_eq!(got["temp"].2, "upstream busy");
    assert!(got["signal"].2.contains("signal 9"), "{:?}", got["signal"]);
    // logs: times in RFC 3339, no debug structs
    let log = String::from_utf8_lossy(&out.stderr);
    let retry = log
        .lines()
        .find(|l| l.contains("job failed; retrying"))
        .unwrap_or_else(|| panic!("the flaky job's retry is logged: {log}"));
    assert!(retry.contains("retry_at=20"), "{retry}");
    assert!(!log.contains("Retry {") && !log.contains("at_ms"), "{log}");
}

/// `health`: ok is exit 0; more dead jobs than `--max-dead` is degraded, a ready job older
/// than `--max-oldest-age` is stalled, both exit 1 and say why.
#[test]
fn health_applies_its_thresholds_and_says_why_with_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = sqlite(dir);
    let health = |args: &[&str]| {
        let mut all = vec!["health"];
        all.extend_from_slice(args);
        keel(dir, &db, "h", &all).output().unwrap()
    };
    let out = health(&[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("status: ok\n"));
    // one dead job
    keel(dir, &db, "h", &["enqueue", "bad", "{}", "--max-attempts", "1"])
        .output()
        .unwrap();
    let work = keel(
        dir,
        &db,
        "h",
        &["work", "--exec", "exit 3", "--poll", "20ms", "--drain"],
    )
    .output()
    .unwrap();
    assert!(work.status.success(), "{work:?}");
    let out = health(&[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("status: degraded\n") && text.contains("1 dead job(s), more than --max-dead 0"),
        "{text}"
    );
    let out = health(&["--max-dead", "1"]);
    assert_eq!(out.status.code(), Some(0), "at the threshold: {out:?}");
    // a ready job older than the limit (any wait is older than 0s)
    keel(dir, &db, "h", &["enqueue", "waits", "{}"]).output().unwrap();
    let (code, v) = wait_polls("the ready job has waited a moment", MAX_COMMAND_POLLS, || {
        let out = health(&["--max-dead", "1", "--max-oldest-age", "0s", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (v["status"] == "stalled").then_some((out.status.code(), v))
    });
    assert_eq!(code, Some(1));
    assert!(v["reasons"][0].as_str().unwrap().contains("--max-oldest-age"), "{v}");
}

/// `show` and `retry` of an id that is no job exit 2; `retry` of a job that is not dead too
/// (nothing moved); a retried job's attempts and history go on from where they were.
#[test]
fn show_and_retry_of_unknown_ids_exit_2_and_history_continues_across_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = sqlite(dir);
    let q = |args: &[&str]| keel(dir, &db, "sr", args).output().unwrap();
    for args in [&["show", "999"][..], &["retry", "999"], &["show", "not-an-id"]] {
        let out = q(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("no job"), "{out:?}");
    }
    let out = q(&["enqueue", "k", "{}", "--max-attempts", "2"]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let out = q(&["retry", &id]);
    assert_eq!(out.status.code(), Some(2), "a ready job is not retried: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not dead"), "{out:?}");
    let work = || {
        let out = q(&[
            "work",
            "--exec",
            r#"echo "$KEEL_JOB_ATTEMPT" >> attempts.log; echo "failed on $KEEL_JOB_ATTEMPT" >&2; exit 75"#,
            "--poll",
            "20ms",
            "--drain",
        ]);
        assert!(out.status.success(), "{out:?}");
    };
    work();
    let out = q(&["retry", &id]);
    assert!(out.status.success(), "{out:?}");
    work();
    assert_eq!(lines_of(&dir.join("attempts.log")), ["1", "2", "3", "4"]);
    let out = q(&["show", &id, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            job["state"].as_str(),
            job["attempts"].as_u64(),
            job["max_attempts"].as_u64()
        ),
        (Some("dead"), Some(4), Some(4))
    );
    let attempts: Vec<u64> = job["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3, 4], "{job}");
    let text = String::from_utf8_lossy(&q(&["show", &id]).stdout).into_owned();
    assert!(
        text.contains("attempts   4 of at most 4") && text.contains("attempt 4 20"),
        "{text}"
    );
}
