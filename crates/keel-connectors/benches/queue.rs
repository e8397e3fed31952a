//! Job queue throughput and latency, SQLite and Redis:
//!
//! ```text
//! cargo bench -p keel-connectors --bench queue [-- JOBS]     (default 20,000)
//! ```
//!
//! - enqueue, one call per job (what a producer sees), and in batches of 1,000;
//! - processing: a `Worker` (concurrency 8, no-op handler: take, ack) drains the queue;
//! - latency from enqueue to handler start, with one job enqueued every 2 ms while a worker
//!   (poll 5 ms) waits: p50, p99, max.
//!
//! Redis runs on 127.0.0.1:6379; compare with `redis-benchmark -q -n 100000 -t set,lpush,lpop`
//! (one round trip per request: the ceiling for one-call-per-job operations).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel::queue::worker::{Worker, WorkerOptions};
use keel::queue::{Job, NewJob, Queue, enqueue};
use keel::util::now_ms;
use serde_json::json;

fn micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn drain(q: Arc<dyn Queue>, concurrency: usize) -> Duration {
    let mut opts = WorkerOptions::new("bench");
    opts.concurrency = concurrency;
    opts.poll = Duration::from_millis(5);
    let worker = Worker::new(q.clone(), opts, |_job: Job| async { Ok(()) });
    let stop = worker.shutdown_handle();
    let started = Instant::now();
    let run = tokio::spawn(async move { worker.run().await });
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let s = q.stats().await.expect("stats");
        if s.ready + s.active + s.scheduled == 0 {
            break;
        }
    }
    let took = started.elapsed();
    stop.trigger();
    let _ = run.await;
    took
}

async fn latency(q: Arc<dyn Queue>) -> (f64, f64, f64) {
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let s = seen.clone();
    let mut opts = WorkerOptions::new("bench-latency");
    opts.concurrency = 8;
    opts.poll = Duration::from_millis(5);
    let worker = Worker::new(q.clone(), opts, move |job: Job| {
        let s = s.clone();
        async move {
            let sent = job.payload["us"].as_u64().unwrap_or(0);
            s.lock().expect("lock").push(micros().saturating_sub(sent));
            Ok(())
        }
    });
    let stop = worker.shutdown_handle();
    let run = tokio::spawn(async move { worker.run().await });
    for _ in 0..1000 {
        enqueue(&*q, NewJob::new("lat", json!({ "us": micros() })))
            .await
            .expect("enqueue");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    while seen.lock().expect("lock").len() < 1000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.trigger();
    let _ = run.await;
    let mut v = seen.lock().expect("lock").clone();
    v.sort_unstable();
    let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)] as f64 / 1000.0;
    (pct(0.5), pct(0.99), *v.last().unwrap_or(&0) as f64 / 1000.0)
}

async fn bench(label: &str, open: impl AsyncFn() -> Arc<dyn Queue>, n: usize) {
    let q = open().await;
    let started = Instant::now();
    for i in 0..n {
        enqueue(&*q, NewJob::new("bench", json!({ "n": i })))
            .await
            .expect("enqueue");
    }
    let one = n as f64 / started.elapsed().as_secs_f64();
    let processed = n as f64 / drain(q.clone(), 8).await.as_secs_f64();

    let jobs: Vec<NewJob> = (0..n).map(|i| NewJob::new("bench", json!({ "n": i }))).collect();
    let started = Instant::now();
    for chunk in jobs.chunks(1000) {
        q.enqueue_many(chunk).await.expect("enqueue_many");
    }
    let batched = n as f64 / started.elapsed().as_secs_f64();
    let processed2 = n as f64 / drain(q.clone(), 32).await.as_secs_f64();
    let (p50, p99, max) = latency(q.clone()).await;
    println!(
        "| {label} | {one:>8.0} | {batched:>8.0} | {processed:>8.0} | {processed2:>8.0} | {p50:.1} / {p99:.1} / {max:.1} |"
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(20_000);
    println!("\n{n} jobs; jobs/s; latency enqueue -> handler start in ms (p50 / p99 / max)\n");
    println!(
        "| backend | enqueue (1 per call) | enqueue (batches of 1,000) | process (concurrency 8) | process (concurrency 32) | latency |"
    );
    println!("|---|---|---|---|---|---|");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("queue.db");
    bench(
        "SQLite (WAL, synchronous=FULL)",
        async || {
            keel_connectors::queue::open(&format!("sqlite:{}", path.display()), "bench", Duration::from_secs(60))
                .await
                .expect("sqlite")
        },
        n,
    )
    .await;
    let name = format!("bench-{}", now_ms());
    bench(
        "Redis 127.0.0.1:6379",
        async || {
            keel_connectors::queue::open("redis://127.0.0.1:6379/", &name, Duration::from_secs(60))
                .await
                .expect("redis")
        },
        n,
    )
    .await;
    // clean up the benchmark's Redis keys
    if let Ok(client) = redis::Client::open("redis://127.0.0.1:6379/")
        && let Ok(mut c) = client.get_multiplexed_async_connection().await
    {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("keel:q:{{{name}}}:*"))
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut c).await;
        }
    }
}
