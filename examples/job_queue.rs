//! The job queue in Rust: a worker with 4 concurrent handlers on an embedded (SQLite) queue.
//! A flaky job fails twice with a transient error and succeeds on its third attempt; a
//! rate-limited one is retried after its retry-after; a bad payload goes to the dead set
//! with its error, and is retried from there by hand.
//!
//! ```text
//! cargo run -p keel-examples --example job_queue
//! ```

use std::time::Duration;

use keel::policy::{Backoff, Jitter, RetryPolicy};
use keel::queue::worker::{Worker, WorkerOptions};
use keel::queue::{Job, JobState, NewJob, enqueue};
use keel::{Class, Failure};
use keel_examples::out_dir;
use serde_json::json;

async fn handle(job: Job) -> Result<(), Failure> {
    match job.kind.as_str() {
        "flaky" if job.attempts < 3 => Err(Failure::transient("timeout", "the upstream timed out")),
        "rate_limited" if job.attempts < 2 => Err(Failure::throttled(
            "rate_limited",
            "429 Too Many Requests",
            Some(Duration::from_millis(300)),
        )),
        "convert" if job.payload["file"].as_str().is_none_or(|f| !f.ends_with(".pdf")) => Err(Failure::permanent(
            "unsupported_format",
            format!("cannot convert {}", job.payload["file"]),
        )),
        _ => {
            println!("  done: job {} ({}, attempt {})", job.id, job.kind, job.attempts);
            Ok(())
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let out = out_dir("job_queue");
    let location = format!("sqlite:{}", out.join("queue.db").display());
    let queue = keel_connectors::queue::open(&location, "default", Duration::from_secs(3600)).await?;

    enqueue(&*queue, NewJob::new("convert", json!({ "file": "a.pdf" })).priority(5)).await?;
    enqueue(&*queue, NewJob::new("convert", json!({ "file": "b.docx" }))).await?;
    enqueue(&*queue, NewJob::new("flaky", json!({})).max_attempts(5)).await?;
    enqueue(&*queue, NewJob::new("rate_limited", json!({}))).await?;
    let first = enqueue(&*queue, NewJob::new("email", json!({ "to": "x" })).key("welcome-x")).await?;
    let again = enqueue(&*queue, NewJob::new("email", json!({ "to": "x" })).key("welcome-x")).await?;
    assert!(again.duplicate && again.id == first.id, "same key, same job");

    let mut options = WorkerOptions::new("example-worker");
    options.poll = Duration::from_millis(20);
    options.retry = RetryPolicy::new(
        Backoff::Exponential {
            initial: Duration::from_millis(50),
            multiplier: 2.0,
            max_delay: Duration::from_secs(1),
        },
        Jitter::Equal,
        5,
        None,
    )?;
    let worker = Worker::new(queue.clone(), options, handle).on_failure(|job, failure, disposition| {
        println!(
            "  failed: job {} ({}, attempt {}): {} -> {disposition:?}",
            job.id, job.kind, job.attempts, failure.reason
        );
    });
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(async move { worker.run().await });
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let s = queue.stats().await?;
        if s.ready + s.scheduled + s.active == 0 {
            break;
        }
    }
    stop.trigger();
    let report = running.await??;
    println!("worker: {report:?}");
    assert_eq!((report.acked, report.dead, report.retried), (4, 1, 3));

    let dead = queue.list(Some(JobState::Dead), 10).await?;
    println!(
        "dead set: job {} ({}): {:?}",
        dead[0].id, dead[0].kind, dead[0].errors[0].message
    );
    assert_eq!(dead[0].errors[0].class, Class::Permanent);
    assert_eq!(queue.retry_dead(None).await?, 1);
    println!("retried from the dead set: {} ready", queue.stats().await?.ready);
    Ok(())
}
