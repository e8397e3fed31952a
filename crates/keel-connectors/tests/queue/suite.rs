//! The behaviour every queue backend must have (see `keel::queue`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel::Failure;
use keel::ledger::BoxFuture;
use keel::policy::{Backoff, Jitter, RetryPolicy};
use keel::queue::worker::{Worker, WorkerOptions};
use keel::queue::{
    Disposition, Enqueued, Job, JobError, JobId, JobState, NewJob, Queue, QueueError, QueueStats, enqueue,
};
use keel::util::now_ms;
use serde_json::json;

use crate::backends::Backend;

const LONG: Duration = Duration::from_secs(3600);

fn error(attempt: u32, reason: &str) -> JobError {
    JobError {
        attempt,
        class: keel::Class::Transient,
        reason: reason.into(),
        message: format!("{reason} on attempt {attempt}"),
        at_ms: now_ms(),
    }
}

async fn take_all(q: &dyn Queue, worker: &str) -> Vec<Job> {
    q.take(worker, LONG, 1000).await.unwrap()
}

fn ns(jobs: &[Job]) -> Vec<i64> {
    jobs.iter().map(|j| j.payload["n"].as_i64().unwrap()).collect()
}

pub async fn higher_priority_first_then_fifo(b: &Backend) {
    let q = &*b.queue;
    for (n, p) in [(1, 0), (2, 5), (3, 0), (4, -3), (5, 5), (6, 10)] {
        enqueue(q, NewJob::new("k", json!({ "n": n })).priority(p))
            .await
            .unwrap();
    }
    let first = q.take("w", LONG, 1).await.unwrap();
    assert_eq!(ns(&first), vec![6]);
    assert_eq!(first[0].attempts, 1);
    assert_eq!(first[0].state, JobState::Active);
    assert_eq!(ns(&take_all(q, "w").await), vec![2, 5, 1, 3, 4]);
    assert!(take_all(q, "w").await.is_empty());
}

pub async fn delayed_jobs_never_run_early(b: &Backend) {
    let q = &*b.queue;
    let far = NewJob::new("k", json!({ "n": 1 })).priority(100).delay(LONG);
    enqueue(q, far).await.unwrap();
    enqueue(q, NewJob::new("k", json!({ "n": 2 }))).await.unwrap();
    assert_eq!(ns(&take_all(q, "w").await), vec![2], "only the job whose time has come");
    let soon = enqueue(q, NewJob::new("k", json!({ "n": 3 })).delay(Duration::from_millis(50)))
        .await
        .unwrap();
    let listed = q.list(Some(JobState::Scheduled), 10).await.unwrap();
    assert_eq!(listed.len(), 2);
    let run_at = listed.iter().find(|j| j.id == soon.id).expect("scheduled").run_at_ms;
    b.wait_past(run_at).await;
    let got = take_all(q, "w").await;
    assert_eq!(ns(&got), vec![3], "the due job, not the one an hour away");
    assert!(got[0].run_at_ms <= b.now_ms().await);
}
pub async fn idempotency_keys_return_the_first_job(b: &Backend) {
    let q = &*b.queue;
    let a = enqueue(q, NewJob::new("k", json!({ "n": 1 })).key("order-17"))
        .await
        .unwrap();
    let again = enqueue(q, NewJob::new("k", json!({ "n": 2 })).key("order-17"))
        .await
        .unwrap();
    assert!(!a.duplicate);
    assert_eq!((again.id.as_str(), again.duplicate), (a.id.as_str(), true));
    // within one batch too, and after the job is done
    let batch = q
        .enqueue_many(&[
            NewJob::new("k", json!({ "n": 3 })).key("order-18"),
            NewJob::new("k", json!({ "n": 4 })).key("order-18"),
        ])
        .await
        .unwrap();
    assert_eq!(batch[0].id, batch[1].id);
    assert!(!batch[0].duplicate && batch[1].duplicate);
    let jobs = take_all(q, "w").await;
    assert_eq!(ns(&jobs), vec![1, 3], "duplicates enqueue nothing");
    for j in &jobs {
        q.ack(&j.id, "w", j.lease).await.unwrap();
    }
    let after = enqueue(q, NewJob::new("k", json!({ "n": 5 })).key("order-17"))
        .await
        .unwrap();
    assert!(after.duplicate && after.id == a.id);
    assert!(take_all(q, "w").await.is_empty());
}

pub async fn expired_leases_put_jobs_back_and_count_the_attempt(b: &Backend) {
    let q = &*b.queue;
    let other = b.another().await;
    let e = enqueue(q, NewJob::new("k", json!({ "n": 1 }))).await.unwrap();
    let taken = q.take("dies", LONG, 1).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert!(
        other.take("w2", LONG, 1).await.unwrap().is_empty(),
        "held while the lease runs"
    );
    // the lease is cut short, then the worker "dies": nothing extends it again
    q.extend(&e.id, "dies", 1, Duration::from_millis(20)).await.unwrap();
    let active = q.list(Some(JobState::Active), 10).await.unwrap();
    b.wait_past(active[0].lease_until_ms.expect("a lease")).await;
    let again = other.take("w2", LONG, 1).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id.as_str(), again[0].attempts), (e.id.as_str(), 2));
    assert!(matches!(q.ack(&e.id, "dies", 1).await, Err(QueueError::LostLease(_))));
    other.ack(&e.id, "w2", 2).await.unwrap();
    assert!(q.list(None, 10).await.unwrap().is_empty());
}
pub async fn extended_leases_hold_and_stale_workers_are_fenced(b: &Backend) {
    let q = &*b.queue;
    let other = b.another().await;
    let e = enqueue(q, NewJob::new("k", json!({ "n": 1 }))).await.unwrap();
    let taken = q.take("w1", Duration::from_millis(50), 1).await.unwrap();
    q.extend(&e.id, "w1", 1, LONG).await.unwrap();
    // past the first lease: only the extension holds the job now
    b.wait_past(taken[0].lease_until_ms.expect("a lease")).await;
    assert!(
        other.take("w2", LONG, 1).await.unwrap().is_empty(),
        "the extended lease holds"
    );
    for (worker, attempt) in [("w2", 1), ("w1", 2)] {
        assert!(matches!(
            q.extend(&e.id, worker, attempt, LONG).await,
            Err(QueueError::LostLease(_))
        ));
        assert!(matches!(
            q.ack(&e.id, worker, attempt).await,
            Err(QueueError::LostLease(_))
        ));
    }
    let active = q.list(Some(JobState::Active), 10).await.unwrap();
    assert_eq!(active.len(), 1, "fenced calls changed nothing");
    assert_eq!(active[0].worker.as_deref(), Some("w1"));
}

pub async fn retries_follow_the_disposition_and_keep_every_error(b: &Backend) {
    let q = &*b.queue;
    let e = enqueue(q, NewJob::new("k", json!({ "n": 1 }))).await.unwrap();
    // a retry due at once runs again at the next take; one an hour away does not
    for (attempt, backoff) in [(1, Duration::ZERO), (2, LONG)] {
        let jobs = take_all(q, "w").await;
        assert_eq!(jobs.len(), 1, "attempt {attempt}: the job is ready");
        assert_eq!(jobs[0].attempts, attempt);
        assert_eq!(jobs[0].errors.len() as u32, attempt - 1);
        let at = now_ms() + keel::ledger::ms(backoff);
        q.fail(
            &e.id,
            "w",
            jobs[0].lease,
            &error(attempt, "timeout"),
            Disposition::Retry { at_ms: at },
        )
        .await
        .unwrap();
        let scheduled = q.list(Some(JobState::Scheduled), 10).await.unwrap();
        assert_eq!(scheduled.len(), 1);
        // (on this machine's clock, which the backend's server shares; a minute of slack)
        let run_at = scheduled[0].run_at_ms;
        assert!((at..at + 60_000).contains(&run_at), "retry at {run_at}, asked for {at}");
        assert_eq!(scheduled[0].errors.len() as u32, attempt);
        assert_eq!(scheduled[0].errors.last().unwrap().reason, "timeout");
    }
    assert!(take_all(q, "w").await.is_empty(), "not before the backoff");
}

pub async fn the_last_attempt_and_permanent_failures_go_to_the_dead_set(b: &Backend) {
    let q = &*b.queue;
    let a = enqueue(q, NewJob::new("k", json!({ "n": 1 })).max_attempts(2))
        .await
        .unwrap();
    let p = enqueue(q, NewJob::new("k", json!({ "n": 2 }))).await.unwrap();
    take_all(q, "w").await;
    q.fail(
        &a.id,
        "w",
        1,
        &error(1, "timeout"),
        Disposition::Retry { at_ms: now_ms() },
    )
    .await
    .unwrap();
    q.fail(&p.id, "w", 1, &error(1, "bad_payload"), Disposition::Dead)
        .await
        .unwrap();
    let again = q.take("w", Duration::from_millis(50), 10).await.unwrap();
    assert_eq!(ns(&again), vec![1]);
    q.fail(&a.id, "w", 2, &error(2, "timeout"), Disposition::Dead)
        .await
        .unwrap();
    let dead = q.list(Some(JobState::Dead), 10).await.unwrap();
    let by_n: BTreeMap<i64, &Job> = dead.iter().map(|j| (j.payload["n"].as_i64().unwrap(), j)).collect();
    assert_eq!(by_n.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(
        by_n[&1].errors.iter().map(|e| e.attempt).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(by_n[&2].errors.len(), 1);
    assert_eq!(by_n[&2].errors[0].reason, "bad_payload");

    // a lease expiring on the last attempt buries the job with a `lease_expired` error
    let last = enqueue(q, NewJob::new("k", json!({ "n": 4 })).max_attempts(1))
        .await
        .unwrap();
    let got = q.take("dies", Duration::from_millis(50), 1).await.unwrap();
    assert_eq!(got[0].id, last.id);
    b.wait_past(got[0].lease_until_ms.expect("a lease")).await;
    assert!(q.take("w", LONG, 10).await.unwrap().is_empty());
    let dead = q.list(Some(JobState::Dead), 10).await.unwrap();
    let buried = dead.iter().find(|j| j.id == last.id).expect("buried");
    assert_eq!(buried.errors.last().unwrap().reason, "lease_expired");
}

pub async fn dead_jobs_are_retried_and_purged(b: &Backend) {
    let q = &*b.queue;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(enqueue(q, NewJob::new("k", json!({ "n": n }))).await.unwrap().id);
    }
    for j in take_all(q, "w").await {
        q.fail(&j.id, "w", j.lease, &error(1, "bad"), Disposition::Dead)
            .await
            .unwrap();
    }
    assert_eq!(q.stats().await.unwrap().dead, 3);
    assert_eq!(q.retry_dead(Some(&ids[..1])).await.unwrap(), 1);
    assert_eq!(q.retry_dead(Some(&["999999".to_string()])).await.unwrap(), 0);
    let back = take_all(q, "w").await;
    assert_eq!(ns(&back), vec![0]);
    assert_eq!(
        (back[0].attempts, back[0].max_attempts),
        (2, 6),
        "attempts go on counting, with a fresh budget of 5"
    );
    assert_eq!(back[0].errors.len(), 1, "the history stays");
    assert_eq!(q.purge(JobState::Dead).await.unwrap(), 2);
    assert_eq!(q.retry_dead(None).await.unwrap(), 0);
    let s = q.stats().await.unwrap();
    assert_eq!((s.dead, s.active), (0, 1));
}

pub async fn released_jobs_run_again_without_counting_the_attempt(b: &Backend) {
    let q = &*b.queue;
    let e = enqueue(q, NewJob::new("k", json!({ "n": 1 }))).await.unwrap();
    take_all(q, "w").await;
    q.release(&e.id, "w", 1).await.unwrap();
    assert!(matches!(q.release(&e.id, "w", 1).await, Err(QueueError::LostLease(_))));
    let again = take_all(q, "w2").await;
    assert_eq!((again[0].id.as_str(), again[0].attempts), (e.id.as_str(), 1));
    assert_eq!(again[0].lease, 2, "a new lease token although the attempt is the same");
}

pub async fn lease_tokens_are_never_reused(b: &Backend) {
    let q = &*b.queue;
    let e = enqueue(q, NewJob::new("k", json!({ "n": 1 })).max_attempts(1))
        .await
        .unwrap();
    let first = q.take("w1", Duration::from_millis(50), 1).await.unwrap();
    assert_eq!(first[0].lease, 1);
    b.wait_past(first[0].lease_until_ms.expect("a lease")).await;
    assert!(
        take_all(q, "w2").await.is_empty(),
        "buried: its only attempt's lease expired"
    );
    assert_eq!(q.retry_dead(None).await.unwrap(), 1);
    // the same worker takes it again: the stale first task is fenced
    let second = q.take("w1", LONG, 1).await.unwrap();
    assert_eq!((second[0].attempts, second[0].lease), (2, 2));
    assert!(matches!(q.ack(&e.id, "w1", 1).await, Err(QueueError::LostLease(_))));
    q.ack(&e.id, "w1", 2).await.unwrap();
}

pub async fn stats_report_sizes_by_priority_and_the_oldest_wait(b: &Backend) {
    let q = &*b.queue;
    let before = now_ms();
    for p in [1, 1, 2, 7, 9] {
        enqueue(q, NewJob::new("k", json!({ "p": p })).priority(p))
            .await
            .unwrap();
    }
    enqueue(q, NewJob::new("k", json!({})).delay(Duration::from_secs(60)))
        .await
        .unwrap();
    let taken = q.take("w", LONG, 2).await.unwrap(); // 9 and 7
    q.fail(&taken[1].id, "w", taken[1].lease, &error(1, "bad"), Disposition::Dead)
        .await
        .unwrap();
    let s = q.stats().await.unwrap();
    assert_eq!((s.ready, s.scheduled, s.active, s.dead), (3, 1, 1, 1), "{s:?}");
    assert_eq!(s.ready_by_priority, BTreeMap::from([(1, 2), (2, 1)]));
    let since = s.oldest_ready_since_ms.expect("a ready job");
    assert!(since >= before && since <= now_ms(), "{since}");
}

pub async fn concurrent_workers_never_share_a_job(b: &Backend) {
    let jobs: Vec<NewJob> = (0..300).map(|n| NewJob::new("k", json!({ "n": n }))).collect();
    b.queue.enqueue_many(&jobs).await.unwrap();
    let mut handles = Vec::new();
    for w in 0..4 {
        let q = b.another().await;
        handles.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            let mut seen = Vec::new();
            // (300 jobs: a worker that takes at least one per call is done in 300 calls)
            for _ in 0..=300 {
                let got = q.take(&worker, LONG, 5).await.unwrap();
                if got.is_empty() {
                    return seen;
                }
                for j in got {
                    q.ack(&j.id, &worker, j.lease).await.unwrap();
                    seen.push(j.payload["n"].as_i64().unwrap());
                }
            }
            panic!("{worker} kept taking jobs after 300 takes");
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (0..300).collect::<Vec<_>>(), "every job exactly once");
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy::new(
        Backoff::Constant {
            delay: Duration::from_millis(20),
        },
        Jitter::None,
        10,
        None,
    )
    .unwrap()
}

async fn drained(q: &dyn Queue) -> bool {
    let s = q.stats().await.unwrap();
    s.ready + s.scheduled + s.active == 0
}

pub async fn a_worker_acks_retries_and_buries_by_class(b: &Backend) {
    let q = b.queue.clone();
    let mut jobs = Vec::new();
    for n in 0..20 {
        let mode = match n % 4 {
            0 => "permanent",
            1 => "flaky",
            2 => "throttled",
            _ => "ok",
        };
        jobs.push(NewJob::new("k", json!({ "n": n, "mode": mode })).max_attempts(3));
    }
    q.enqueue_many(&jobs).await.unwrap();
    let mut opts = WorkerOptions::new("worker-1");
    opts.concurrency = 3;
    opts.poll = Duration::from_millis(10);
    opts.retry = fast_retries();
    let hooks = Arc::new(AtomicU64::new(0));
    let h = hooks.clone();
    let worker = Worker::new(q.clone(), opts, |job: Job| async move {
        match job.payload["mode"].as_str().unwrap_or("") {
            "permanent" => Err(Failure::permanent("bad_payload", "cannot be processed")),
            // fails twice, succeeds on the third attempt
            "flaky" if job.attempts < 3 => Err(Failure::transient("timeout", "upstream timed out")),
            "throttled" => Err(Failure::throttled(
                "rate_limited",
                "slow down",
                Some(Duration::from_millis(30)),
            )),
            _ => Ok(()),
        }
    })
    .on_failure(move |_, _, _| {
        h.fetch_add(1, Ordering::Relaxed);
    });
    let stop = worker.shutdown_handle();
    let run = tokio::spawn(async move { worker.run().await });
    // (bounded: 3,000 looks)
    let mut looks = 0;
    while !drained(&*q).await {
        looks += 1;
        assert!(looks < 3000, "the worker did not drain the queue");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.trigger();
    let report = run.await.unwrap().unwrap();
    // ok: 5 acked; flaky: 5 acked after 2 retries each; throttled: 2 retries then dead;
    // permanent: dead at once
    assert_eq!(report.acked, 10, "{report:?}");
    assert_eq!(report.dead, 10, "{report:?}");
    assert_eq!(report.retried, 20, "{report:?}");
    assert_eq!(hooks.load(Ordering::Relaxed), 30);
    let dead = q.list(Some(JobState::Dead), 100).await.unwrap();
    for j in dead {
        let expect = if j.payload["mode"] == "throttled" { 3 } else { 1 };
        assert_eq!(j.errors.len(), expect, "{j:?}");
    }
}

pub async fn a_worker_shuts_down_gracefully(b: &Backend) {
    let q = b.queue.clone();
    enqueue(&*q, NewJob::new("k", json!({ "quick": true }))).await.unwrap();
    let slow = enqueue(&*q, NewJob::new("k", json!({ "quick": false }))).await.unwrap();
    let mut opts = WorkerOptions::new("worker-1");
    opts.poll = Duration::from_millis(10);
    opts.grace = Duration::from_secs(2);
    // the quick job finishes once the shutdown has begun (within the grace period); the
    // slow one never does and is released when the grace period ends
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let worker = Worker::new(q.clone(), opts, move |job: Job| {
        let started = started_tx.clone();
        let mut go = go_rx.clone();
        async move {
            let _ = started.send(());
            if job.payload["quick"] == true {
                let _ = go.wait_for(|go| *go).await;
            } else {
                tokio::time::sleep(LONG).await;
            }
            Ok(())
        }
    });
    let stop = worker.shutdown_handle();
    let run = tokio::spawn(async move { worker.run().await });
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(60), started_rx.recv())
            .await
            .expect("both jobs start")
            .expect("a handler ran");
    }
    stop.trigger();
    go_tx.send(true).unwrap();
    let report = run.await.unwrap().unwrap();
    assert_eq!((report.acked, report.released), (1, 1), "{report:?}");
    let ready = q.list(Some(JobState::Ready), 10).await.unwrap();
    assert_eq!(ready.len(), 1);
    assert_eq!((ready[0].id.as_str(), ready[0].attempts), (slow.id.as_str(), 0));
}

/// 100,000 jobs of 11 priorities, 1 % of them delayed by up to 1.5 s, taken 100 at a time:
/// no take returns a job while a job of higher priority was ready and is left for a later
/// take, and no delayed job is taken before its time.
pub async fn mixed_priorities_at_scale_never_start_a_lower_one_first(b: &Backend) {
    let q = &*b.queue;
    let mut rng = 0x243F_6A88_85A3_08D3u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let start = now_ms();
    let mut jobs = Vec::with_capacity(100_000);
    for n in 0..100_000 {
        let r = next();
        let mut j = NewJob::new("k", json!({ "n": n })).priority((r % 11) as i32 - 5);
        if (r >> 20) % 100 == 0 {
            j = j.run_at(start + 200 + (r >> 30) % 1300);
        }
        jobs.push(j);
    }
    for chunk in jobs.chunks(5000) {
        q.enqueue_many(chunk).await.unwrap();
    }
    // (take index, take start) per job, and the lowest priority of each take
    let mut taken: BTreeMap<i64, (usize, u64)> = BTreeMap::new();
    let mut lowest: Vec<i32> = Vec::new();
    let mut starts: Vec<u64> = Vec::new();
    // (bounded: 1,000 takes return something, and empty ones only wait for delayed jobs,
    // which are due within 1.5 s of the start)
    let mut empty = 0;
    while taken.len() < 100_000 {
        let at = now_ms();
        let got = q.take("w", LONG, 100).await.unwrap();
        let returned = now_ms();
        if got.is_empty() {
            empty += 1;
            assert!(empty < 3000, "jobs went missing: {} taken", taken.len());
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let k = lowest.len();
        let mut prev = i32::MAX;
        for j in &got {
            assert!(j.priority <= prev, "one take returned priorities out of order");
            prev = j.priority;
            assert!(j.run_at_ms <= returned, "job {} taken before its time", j.id);
            let n = j.payload["n"].as_i64().unwrap();
            assert!(taken.insert(n, (k, at)).is_none(), "job {n} taken twice");
        }
        lowest.push(prev);
        starts.push(at);
    }
    // prefix minimum of the lowest priority per take: a job ready from the first take on
    // must not see a lower priority taken before its own take
    let mut prefix_min = Vec::with_capacity(lowest.len() + 1);
    prefix_min.push(i32::MAX);
    for &p in &lowest {
        prefix_min.push(prefix_min.last().copied().unwrap_or(i32::MAX).min(p));
    }
    let mut checked_delayed = 0;
    for (n, j) in jobs.iter().enumerate() {
        let (k, _) = taken[&(n as i64)];
        match j.run_at_ms {
            None => assert!(
                prefix_min[k] >= j.priority,
                "job {n} (priority {}) waited while a take returned priority {}",
                j.priority,
                prefix_min[k]
            ),
            Some(run_at) => {
                checked_delayed += 1;
                // takes that started after it was due and before it was taken
                for t in 0..k {
                    if starts[t] > run_at + 5 {
                        assert!(
                            lowest[t] >= j.priority,
                            "delayed job {n} (priority {}) was due while take {t} returned priority {}",
                            j.priority,
                            lowest[t]
                        );
                    }
                }
            }
        }
    }
    assert!(checked_delayed > 500, "{checked_delayed}");
}

/// A real backend whose `extend` always fails (as when the backend is unreachable from this
/// worker): everything else goes through.
#[derive(Debug)]
struct ExtendFails(Arc<dyn Queue>);

impl Queue for ExtendFails {
    fn describe(&self) -> String {
        self.0.describe()
    }
    fn enqueue_many<'a>(&'a self, jobs: &'a [NewJob]) -> BoxFuture<'a, Result<Vec<Enqueued>, QueueError>> {
        self.0.enqueue_many(jobs)
    }
    fn take<'a>(&'a self, worker: &'a str, lease: Duration, max: usize) -> BoxFuture<'a, Result<Vec<Job>, QueueError>> {
        self.0.take(worker, lease, max)
    }
    fn extend<'a>(&'a self, _: &'a str, _: &'a str, _: u64, _: Duration) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async { Err(QueueError::Backend("injected: the backend cannot be reached".into())) })
    }
    fn ack<'a>(&'a self, id: &'a str, worker: &'a str, lease: u64) -> BoxFuture<'a, Result<(), QueueError>> {
        self.0.ack(id, worker, lease)
    }
    fn fail<'a>(
        &'a self,
        id: &'a str,
        worker: &'a str,
        lease: u64,
        error: &'a JobError,
        disposition: Disposition,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        self.0.fail(id, worker, lease, error, disposition)
    }
    fn release<'a>(&'a self, id: &'a str, worker: &'a str, lease: u64) -> BoxFuture<'a, Result<(), QueueError>> {
        self.0.release(id, worker, lease)
    }
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Job>, QueueError>> {
        self.0.get(id)
    }
    fn list<'a>(&'a self, state: Option<JobState>, limit: usize) -> BoxFuture<'a, Result<Vec<Job>, QueueError>> {
        self.0.list(state, limit)
    }
    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, QueueError>> {
        self.0.stats()
    }
    fn retry_dead<'a>(&'a self, ids: Option<&'a [JobId]>) -> BoxFuture<'a, Result<u64, QueueError>> {
        self.0.retry_dead(ids)
    }
    fn purge(&self, state: JobState) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.0.purge(state)
    }
}

/// Runs a closure when dropped (a handler future being cancelled drops it).
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// A worker whose lease extensions all fail cancels its handler before the lease runs out
/// and never acks the job (another worker may have it by then).
pub async fn a_worker_that_cannot_extend_its_lease_cancels_the_handler_in_time(b: &Backend) {
    const LEASE: Duration = Duration::from_secs(3);
    let q: Arc<dyn Queue> = Arc::new(ExtendFails(b.queue.clone()));
    let e = enqueue(&*q, NewJob::new("k", json!({ "n": 1 }))).await.unwrap();
    let mut opts = WorkerOptions::new("worker-1");
    opts.concurrency = 1;
    opts.lease = LEASE;
    opts.poll = Duration::from_millis(20);
    opts.grace = Duration::from_millis(50);
    // (lease_until of the attempt, when its handler future was dropped, whether it finished)
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64, bool)>();
    let worker = Worker::new(q.clone(), opts, move |job: Job| {
        let tx = tx.clone();
        async move {
            if job.attempts > 1 {
                // a later attempt (the lease expired meanwhile): waits for the shutdown
                tokio::time::sleep(LONG).await;
                return Ok(());
            }
            let until = job.lease_until_ms.unwrap_or(0);
            let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let f = finished.clone();
            let _guard = OnDrop(move || {
                let _ = tx.send((until, now_ms(), f.load(Ordering::SeqCst)));
            });
            // longer than the lease: only a cancellation ends it early
            tokio::time::sleep(LEASE * 2).await;
            finished.store(true, Ordering::SeqCst);
            Ok(())
        }
    });
    let stop = worker.shutdown_handle();
    let run = tokio::spawn(async move { worker.run().await });
    let (until, dropped_at, finished) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("the handler neither finished nor was cancelled")
        .expect("a handler ran");
    stop.trigger();
    let report = run.await.unwrap().unwrap();
    assert!(
        !finished,
        "the handler ran to its end although its lease could not be extended"
    );
    assert!(
        dropped_at < until,
        "cancelled at {dropped_at}, after the lease ran out at {until}"
    );
    assert_eq!(report.acked, 0, "{report:?}");
    assert!(report.lost >= 1, "{report:?}");
    let left = b.queue.list(None, 10).await.unwrap();
    assert!(left.iter().any(|j| j.id == e.id), "the job was not acked: {left:?}");
}
