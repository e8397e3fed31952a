//! `keel queue enqueue|list|show|stats|health|dead|retry|purge|work`: the durable job queue
//! from the command line.
//!
//! `work --exec CMD` runs `sh -c CMD` once per job (see `exec.rs` for what a command gets
//! and how its end is classified, `supervise.rs` for how it dies with its worker).
//! `show` and `retry` of an id that is not a job (or, for `retry`, not a dead one) exit 2;
//! `health` exits 1 unless the queue is ok (`health.rs`).

mod exec;
mod health;
pub mod supervise;

use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use keel::queue::worker::{Worker, WorkerOptions};
use keel::queue::{Disposition, Job, JobState, NewJob, Queue, QueueStats, enqueue};
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
    /// One job with its error history; exit 2 if there is no such job.
    Show {
        /// The job's id.
        id: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Status (ok, degraded, stalled) and why, sizes, in flight, dead, and the oldest wait;
    /// exit 1 unless ok.
    Health {
        /// Stalled when a ready job has waited longer than this.
        #[arg(long, alias = "max-wait", default_value = "5m")]
        max_oldest_age: String,
        /// Degraded when the dead set holds more jobs than this.
        #[arg(long, default_value_t = 0)]
        max_dead: u64,
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
    /// Move dead jobs back to ready with a fresh budget of attempts (their history goes on);
    /// exit 2 if a named job does not exist or is not dead (nothing is moved then).
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
    /// Run a command per job (payload on stdin; exit 0 acks, 75 retries, with a
    /// `keel-retry-after: 30s` line after that delay; others bury).
    Work {
        /// The command, run with `sh -c`.
        #[arg(long)]
        exec: String,
        /// Kill a command still running after this long (`30s`, `10m`): the attempt fails as
        /// `timeout` and is retried.
        #[arg(long)]
        timeout: Option<String>,
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
        /// Serve `/metrics` (the queue's gauges, jobs by outcome, handler durations),
        /// `/health` and `/ready` on this address (`:9464` for loopback).
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<String>,
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
        dispatch(cmd, queue, &target.name).await
    })
}

async fn dispatch(cmd: Cmd, queue: Arc<dyn Queue>, name: &str) -> Result<u8> {
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
        Cmd::Show { id, json } => show(q, &id, json).await,
        Cmd::Health {
            max_oldest_age,
            max_dead,
            json,
        } => {
            let thresholds = health::Thresholds {
                max_dead,
                max_oldest_age: duration(&max_oldest_age, "--max-oldest-age")?,
            };
            let s = q.stats().await?;
            let h = health::assess(&s, &thresholds, now_ms());
            if json {
                let mut v = serde_json::to_value(&s)?;
                v["status"] = h.status.as_str().into();
                v["reasons"] = h.reasons.clone().into();
                v["oldest_wait_ms"] = h.oldest_wait_ms.into();
                v["in_flight"] = s.active.into();
                println!("{v}");
            } else {
                println!("status: {}", h.status.as_str());
                for r in &h.reasons {
                    println!("  because {r}");
                }
                print_stats(&s);
                if let Some(w) = h.oldest_wait_ms {
                    println!("oldest waiting job: {:.1}s", w as f64 / 1000.0);
                }
            }
            Ok(if h.status == health::Status::Ok {
                EXIT_OK
            } else {
                EXIT_DEAD_LETTERS
            })
        }
        Cmd::Retry { ids, all } => {
            if ids.is_empty() && !all {
                eprintln!("keel: name the dead jobs to retry, or --all");
                return Ok(EXIT_USAGE);
            }
            // every named job must be dead: otherwise nothing is moved
            for id in &ids {
                match q.get(id).await? {
                    None => {
                        eprintln!("keel: no job {id} in queue {}", q.describe());
                        return Ok(EXIT_USAGE);
                    }
                    Some(j) if j.state != JobState::Dead => {
                        eprintln!("keel: job {id} is {}, not dead: only dead jobs can be retried", j.state);
                        return Ok(EXIT_USAGE);
                    }
                    Some(_) => {}
                }
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
            timeout,
            concurrency,
            lease,
            grace,
            poll,
            worker,
            drain,
            metrics_addr,
        } => {
            let timeout = timeout.map(|t| duration(&t, "--timeout")).transpose()?;
            if let Some(addr) = metrics_addr {
                let addr = match crate::serve::parse_addr(&addr) {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("keel: --metrics-addr: {e}");
                        return Ok(EXIT_USAGE);
                    }
                };
                let ready = crate::serve::Readiness::default();
                ready.worker();
                let bound = crate::serve::start(addr, ready)?;
                eprintln!("keel: metrics on http://{bound}/metrics");
            }
            work(
                queue.clone(),
                exec,
                timeout,
                concurrency,
                &lease,
                &grace,
                &poll,
                worker,
                drain,
                name,
            )
            .await
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn work(
    queue: Arc<dyn Queue>,
    exec: String,
    timeout: Option<Duration>,
    concurrency: usize,
    lease: &str,
    grace: &str,
    poll: &str,
    worker: Option<String>,
    drain: bool,
    name: &str,
) -> Result<u8> {
    let host = keel::util::hostname();
    let mut opts = WorkerOptions::new(worker.unwrap_or_else(|| format!("{host}-{}", std::process::id())));
    opts.concurrency = concurrency.max(1);
    opts.lease = duration(lease, "--lease")?;
    opts.grace = duration(grace, "--grace")?;
    opts.poll = duration(poll, "--poll")?;
    opts.handle_signals = true;
    opts.metrics_name = name.to_owned();
    tracing::info!(queue = %queue.describe(), worker = %opts.id, concurrency = opts.concurrency, "working");
    let (stdout, lines) = exec::StdoutWriter::start();
    let spec = Arc::new(exec::ExecSpec {
        command: exec,
        timeout,
        supervisor: std::env::current_exe().context("finding the keel executable (it supervises the commands)")?,
        worker: opts.id.clone(),
        stdout: lines,
    });
    let w = Worker::new(queue.clone(), opts, move |job: Job| {
        exec::run_command(spec.clone(), job)
    })
    .on_failure(|job, failure, disposition| match disposition {
        Disposition::Retry { at_ms } => tracing::warn!(
            job = %job.id, kind = %job.kind, attempt = job.attempts, reason = %failure.reason,
            error = %failure.message, retry_at = %format_rfc3339_ms(at_ms), "job failed; retrying"
        ),
        Disposition::Dead => tracing::warn!(
            job = %job.id, kind = %job.kind, attempt = job.attempts, reason = %failure.reason,
            error = %failure.message, "job failed; moved to the dead set"
        ),
    });
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
    let report = w.run().await;
    // the commands' last lines reach stdout before the worker exits
    drop(w);
    stdout.finish(Duration::from_secs(2)).await;
    let report = report?;
    eprintln!(
        "keel: worker stopped: {} acked, {} retried, {} dead, {} released, {} lost",
        report.acked, report.retried, report.dead, report.released, report.lost
    );
    Ok(EXIT_OK)
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
                println!("{}", attempt_line(e));
            }
        }
    }
    Ok(())
}

/// One failed attempt of a job, as `list --errors` and `show` print it.
fn attempt_line(e: &keel::queue::JobError) -> String {
    format!(
        "    attempt {} {} {} ({}): {}",
        e.attempt,
        format_rfc3339_ms(e.at_ms),
        e.reason,
        e.class.as_str(),
        e.message
    )
}

/// `keel queue show ID`: the job, or exit 2 when there is none.
async fn show(q: &dyn Queue, id: &str, json: bool) -> Result<u8> {
    let Some(j) = q.get(id).await? else {
        eprintln!("keel: no job {id} in queue {}", q.describe());
        return Ok(EXIT_USAGE);
    };
    if json {
        println!("{}", serde_json::to_string(&j)?);
        return Ok(EXIT_OK);
    }
    println!("job        {} ({})", j.id, j.kind);
    println!("state      {}", j.state);
    println!("priority   {}", j.priority);
    println!("attempts   {} of at most {}", j.attempts, j.max_attempts);
    println!("enqueued   {}", format_rfc3339_ms(j.enqueued_ms));
    println!("run at     {}", format_rfc3339_ms(j.run_at_ms));
    if let Some(until) = j.lease_until_ms {
        let worker = j.worker.as_deref().unwrap_or("?");
        // (on Redis the lease is on the server's clock: close to this one on one machine)
        if until < now_ms() {
            println!(
                "lease      ran out at {} (worker {worker} died or stalled; the next take runs the job again)",
                format_rfc3339_ms(until)
            );
        } else {
            println!("lease      until {} (worker {worker})", format_rfc3339_ms(until));
        }
    }
    if let Some(k) = &j.idempotency_key {
        println!("key        {k}");
    }
    println!("payload    {}", j.payload);
    if !j.errors.is_empty() {
        println!("errors");
    }
    for e in &j.errors {
        println!("{}", attempt_line(e));
    }
    Ok(EXIT_OK)
}
