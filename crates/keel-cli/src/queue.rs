//! `keel queue enqueue|list|stats|health|dead|retry|purge|work`: the durable job queue from
//! the command line.
//!
//! `work --exec CMD` runs `sh -c CMD` once per job with the payload (JSON) on stdin and
//! `KEEL_JOB_ID`, `KEEL_JOB_KIND`, `KEEL_JOB_ATTEMPT`, `KEEL_JOB_PRIORITY` and
//! `KEEL_JOB_LEASE_UNTIL_MS` (the lease at the start, extended while the command runs) in the
//! environment.
//! Exit 0 acks the job; exit 75 (`EX_TEMPFAIL`) or death by a signal is a transient failure
//! (retried with backoff); any other exit code is permanent (the job goes to the dead set).
//! The last lines of the command's stderr become the error message.
//! The command runs in a process group of its own: when its job is cancelled (its lease lost
//! or not extendable in time, or a shutdown's grace period over) the whole group is killed.

use std::io::Read as _;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use keel::queue::worker::{Worker, WorkerOptions, classify_exit};
use keel::queue::{Job, JobState, NewJob, Queue, QueueStats, enqueue};
use keel::util::{format_rfc3339_ms, now_ms};

use crate::{EXIT_DEAD_LETTERS, EXIT_OK, EXIT_USAGE};

/// Which queue.
#[derive(clap::Args, Clone)]
pub struct Target {
    /// The queue: `sqlite:PATH`, a path, or `redis://host:port/db` (default: `KEEL_QUEUE`,
    /// else `sqlite:keel-queue.db`).
    #[arg(long, global = true)]
    queue: Option<String>,
    /// The queue's name (several named queues can share a database or server).
    #[arg(long, global = true, default_value = "default")]
    name: String,
    /// How long idempotency keys are remembered.
    #[arg(long, global = true, default_value = "24h")]
    retention: String,
}

/// Subcommands.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Enqueue a job; prints its id.
    Enqueue {
        /// The job kind.
        kind: String,
        /// The payload (JSON); read from stdin when absent.
        payload: Option<String>,
        /// Higher runs first (-1000..=1000).
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        priority: i32,
        /// Run no earlier than this long from now (`30s`, `5m`).
        #[arg(long, conflicts_with = "run_at")]
        delay: Option<String>,
        /// Run no earlier than this time (RFC 3339).
        #[arg(long)]
        run_at: Option<String>,
        /// An idempotency key: the same key within the retention returns the first job.
        #[arg(long)]
        key: Option<String>,
        /// Most attempts.
        #[arg(long, default_value_t = 5)]
        max_attempts: u32,
        /// Print `{"id":..,"duplicate":..}`.
        #[arg(long)]
        json: bool,
    },
    /// List jobs in the order they would run.
    List {
        /// Only this state: ready, scheduled, active, dead.
        #[arg(long, value_parser = parse_state)]
        state: Option<JobState>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Sizes by state and priority.
    Stats {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Status (ok, degraded, stalled), sizes, in flight, dead, and the oldest wait; exit 1
    /// unless ok.
    Health {
        /// The queue is stalled when a job has waited longer than this.
        #[arg(long, default_value = "5m")]
        max_wait: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Dead jobs with their error history.
    Dead {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Move dead jobs back to ready (attempts start over).
    Retry {
        /// These jobs.
        ids: Vec<String>,
        /// Every dead job.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Delete every job in a state. Needs --confirm.
    Purge {
        /// The state: ready, scheduled, active, dead.
        #[arg(long, value_parser = parse_state, default_value = "dead")]
        state: JobState,
        /// Really delete.
        #[arg(long)]
        confirm: bool,
    },
    /// Run a command per job (payload on stdin; exit 0 acks, 75 retries, others bury).
    Work {
        /// The command, run with `sh -c`.
        #[arg(long)]
        exec: String,
        /// Jobs run at the same time.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// The lease of a job, extended while its command runs.
        #[arg(long, default_value = "30s")]
        lease: String,
        /// On SIGINT/SIGTERM, how long running commands may take before they are killed and
        /// their jobs released.
        #[arg(long, default_value = "10s")]
        grace: String,
        /// How long to wait before asking an empty queue again.
        #[arg(long, default_value = "200ms")]
        poll: String,
        /// This worker's id (default: host name and process id).
        #[arg(long)]
        worker: Option<String>,
        /// Stop once the queue has nothing ready, scheduled or in flight.
        #[arg(long)]
        drain: bool,
    },
}

fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::parse(s).ok_or_else(|| format!("unknown state `{s}`: use ready, scheduled, active or dead"))
}

fn duration(s: &str, what: &str) -> Result<Duration> {
    keel_declare::config::parse_duration(s).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// Runs a `keel queue` command.
pub fn run(target: Target, cmd: Cmd) -> Result<u8> {
    let location = target
        .queue
        .clone()
        .or_else(|| std::env::var("KEEL_QUEUE").ok())
        .unwrap_or_else(|| "sqlite:keel-queue.db".into());
    let retention = match duration(&target.retention, "--retention") {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keel: {e}");
            return Ok(EXIT_USAGE);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let queue = keel_connectors::queue::open(&location, &target.name, retention)
            .await
            .with_context(|| format!("opening the queue {}", keel::util::redact_url(&location)))?;
        dispatch(cmd, queue).await
    })
}

async fn dispatch(cmd: Cmd, queue: Arc<dyn Queue>) -> Result<u8> {
    let q = &*queue;
    match cmd {
        Cmd::Enqueue {
            kind,
            payload,
            priority,
            delay,
            run_at,
            key,
            max_attempts,
            json,
        } => {
            let text = match payload {
                Some(p) => p,
                None => {
                    let mut s = String::new();
                    std::io::stdin().read_to_string(&mut s)?;
                    s
                }
            };
            let payload: serde_json::Value =
                serde_json::from_str(text.trim()).context("the payload is not valid JSON")?;
            let mut job = NewJob::new(kind, payload).priority(priority).max_attempts(max_attempts);
            if let Some(d) = delay {
                job = job.delay(duration(&d, "--delay")?);
            }
            if let Some(t) = run_at {
                let Some(ms) = keel_declare::steps::parse_rfc3339(&t) else {
                    bail!("--run-at: `{t}` is not an RFC 3339 time");
                };
                job = job.run_at(ms.max(0) as u64);
            }
            if let Some(k) = key {
                job = job.key(k);
            }
            let e = enqueue(q, job).await?;
            if json {
                println!("{}", serde_json::to_string(&e)?);
            } else if e.duplicate {
                println!("{} (duplicate key: the existing job)", e.id);
            } else {
                println!("{}", e.id);
            }
            Ok(EXIT_OK)
        }
        Cmd::List { state, limit, json } => {
            print_jobs(&q.list(state, limit).await?, json, false)?;
            Ok(EXIT_OK)
        }
        Cmd::Dead { limit, json } => {
            print_jobs(&q.list(Some(JobState::Dead), limit).await?, json, true)?;
            Ok(EXIT_OK)
        }
        Cmd::Stats { json } => {
            let s = q.stats().await?;
            if json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                print_stats(&s);
            }
            Ok(EXIT_OK)
        }
        Cmd::Health { max_wait, json } => {
            let max_wait = duration(&max_wait, "--max-wait")?;
            let s = q.stats().await?;
            let oldest_wait_ms = s.oldest_ready_since_ms.map(|t| now_ms().saturating_sub(t));
            let status = if oldest_wait_ms.is_some_and(|w| w > keel::ledger::ms(max_wait)) {
                "stalled"
            } else if s.dead > 0 {
                "degraded"
            } else {
                "ok"
            };
            if json {
                let mut v = serde_json::to_value(&s)?;
                v["status"] = status.into();
                v["oldest_wait_ms"] = oldest_wait_ms.into();
                v["in_flight"] = s.active.into();
                println!("{v}");
            } else {
                println!("status: {status}");
                print_stats(&s);
                if let Some(w) = oldest_wait_ms {
                    println!("oldest waiting job: {:.1}s", w as f64 / 1000.0);
                }
            }
            Ok(if status == "ok" { EXIT_OK } else { EXIT_DEAD_LETTERS })
        }
        Cmd::Retry { ids, all } => {
            if ids.is_empty() && !all {
                eprintln!("keel: name the dead jobs to retry, or --all");
                return Ok(EXIT_USAGE);
            }
            let n = q.retry_dead(if all { None } else { Some(&ids) }).await?;
            eprintln!("keel: {n} dead jobs moved back to ready");
            Ok(EXIT_OK)
        }
        Cmd::Purge { state, confirm } => {
            if !confirm {
                let s = q.stats().await?;
                let n = match state {
                    JobState::Ready => s.ready,
                    JobState::Scheduled => s.scheduled,
                    JobState::Active => s.active,
                    JobState::Dead => s.dead,
                };
                eprintln!("keel: this would delete about {n} {state} jobs; add --confirm");
                return Ok(EXIT_USAGE);
            }
            let n = q.purge(state).await?;
            eprintln!("keel: {n} {state} jobs deleted");
            Ok(EXIT_OK)
        }
        Cmd::Work {
            exec,
            concurrency,
            lease,
            grace,
            poll,
            worker,
            drain,
        } => work(queue.clone(), exec, concurrency, &lease, &grace, &poll, worker, drain).await,
    }
}

#[allow(clippy::too_many_arguments)]
async fn work(
    queue: Arc<dyn Queue>,
    exec: String,
    concurrency: usize,
    lease: &str,
    grace: &str,
    poll: &str,
    worker: Option<String>,
    drain: bool,
) -> Result<u8> {
    let host = keel::util::hostname();
    let mut opts = WorkerOptions::new(worker.unwrap_or_else(|| format!("{host}-{}", std::process::id())));
    opts.concurrency = concurrency.max(1);
    opts.lease = duration(lease, "--lease")?;
    opts.grace = duration(grace, "--grace")?;
    opts.poll = duration(poll, "--poll")?;
    opts.handle_signals = true;
    tracing::info!(queue = %queue.describe(), worker = %opts.id, concurrency = opts.concurrency, "working");
    let exec = Arc::new(exec);
    let w = Worker::new(queue.clone(), opts, move |job: Job| run_command(exec.clone(), job)).on_failure(
        |job, failure, disposition| {
            tracing::warn!(job = %job.id, kind = %job.kind, attempt = job.attempts, reason = %failure.reason, message = %failure.message, ?disposition, "job failed");
        },
    );
    if drain {
        let stop = w.shutdown_handle();
        let q = queue.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Ok(s) = q.stats().await
                    && s.ready + s.scheduled + s.active == 0
                {
                    stop.trigger();
                    return;
                }
            }
        });
    }
    let report = w.run().await?;
    eprintln!(
        "keel: worker stopped: {} acked, {} retried, {} dead, {} released, {} lost",
        report.acked, report.retried, report.dead, report.released, report.lost
    );
    Ok(EXIT_OK)
}

/// Runs the command for one job; see the module docs.
async fn run_command(exec: Arc<String>, job: Job) -> Result<(), keel::Failure> {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(exec.as_str())
        .env("KEEL_JOB_ID", &job.id)
        .env("KEEL_JOB_KIND", &job.kind)
        .env("KEEL_JOB_ATTEMPT", job.attempts.to_string())
        .env("KEEL_JOB_PRIORITY", job.priority.to_string())
        .env("KEEL_JOB_LEASE_UNTIL_MS", job.lease_until_ms.unwrap_or(0).to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| keel::Failure::fatal("spawn_failed", format!("cannot run `{exec}`: {e}")))?;
    // cancelled before the command exits (its lease lost or not extendable, or the grace
    // period of a shutdown over): this future is dropped and the command is killed with
    // everything it started
    let mut group = KillGroupOnDrop(child.id());
    if let Some(mut stdin) = child.stdin.take() {
        // a command that does not read its input closes the pipe: not an error
        let _ = stdin.write_all(job.payload.to_string().as_bytes()).await;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| keel::Failure::transient("wait_failed", e.to_string()))?;
    group.0 = None;
    // exit 0 acks whatever the command printed
    if out.status.success() {
        return Ok(());
    }
    classify_exit(out.status.code(), &stderr_tail(&out.stderr))
}

/// Kills the process group of a job's command when dropped, unless disarmed (`.0 = None`)
/// once the command exited. The command is its group's leader (`process_group(0)`), so the
/// group is the command and every process it started that did not leave it.
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        use rustix::process::{Pid, Signal, kill_process_group};
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()).and_then(Pid::from_raw) {
            // (already gone: nothing to do)
            let _ = kill_process_group(pid, Signal::KILL);
        }
    }
}

/// The longest stderr message kept for a failed job, in bytes.
const STDERR_TAIL_BYTES: usize = 2000;

/// The last 5 lines of `stderr` (invalid UTF-8 replaced), at most [`STDERR_TAIL_BYTES`] of
/// them, cut at a character boundary.
fn stderr_tail(stderr: &[u8]) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = stderr.lines().rev().take(5).collect();
    let tail = lines.into_iter().rev().collect::<Vec<_>>().join("\n");
    let mut start = tail.len().saturating_sub(STDERR_TAIL_BYTES);
    while !tail.is_char_boundary(start) {
        start += 1;
    }
    tail[start..].to_owned()
}

fn print_stats(s: &QueueStats) {
    println!("ready      {:>10}", s.ready);
    for (p, n) in s.ready_by_priority.iter().rev() {
        println!("  priority {p:>5} {n:>10}");
    }
    println!("scheduled  {:>10}", s.scheduled);
    println!("in flight  {:>10}", s.active);
    println!("dead       {:>10}", s.dead);
}

fn print_jobs(jobs: &[Job], json: bool, errors: bool) -> Result<()> {
    if json {
        for j in jobs {
            println!("{}", serde_json::to_string(j)?);
        }
        return Ok(());
    }
    if jobs.is_empty() {
        eprintln!("keel: no jobs");
        return Ok(());
    }
    println!(
        "{:<10} {:<16} {:>8} {:<10} {:>8}  run at",
        "id", "kind", "priority", "state", "attempts"
    );
    for j in jobs {
        println!(
            "{:<10} {:<16} {:>8} {:<10} {:>5}/{:<2}  {}",
            j.id,
            j.kind,
            j.priority,
            j.state,
            j.attempts,
            j.max_attempts,
            format_rfc3339_ms(j.run_at_ms)
        );
        if errors {
            for e in &j.errors {
                println!(
                    "    attempt {} {} {} ({}): {}",
                    e.attempt,
                    format_rfc3339_ms(e.at_ms),
                    e.reason,
                    e.class.as_str(),
                    e.message
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{STDERR_TAIL_BYTES, stderr_tail};

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
}
