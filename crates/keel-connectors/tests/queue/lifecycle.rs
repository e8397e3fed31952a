//! A job's life seen from outside: found by id in every state, retried from the dead set
//! with its attempts counting on, leases that ran out visible in the stats, and a worker
//! that really extends the lease of a job whose handler runs long.

use std::sync::Arc;
use std::time::Duration;

use keel::policy::{RetryPolicy, SplitMix};
use keel::queue::worker::{Worker, WorkerOptions};
use keel::queue::{Disposition, Job, JobError, JobState, NewJob, dispose, enqueue};
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

pub async fn a_job_is_found_by_id_in_every_state(b: &Backend) {
    let q = &*b.queue;
    let e = enqueue(q, NewJob::new("k", json!({ "n": 1 })).key("found"))
        .await
        .unwrap();
    let state = |j: Option<Job>| j.map(|j| (j.state, j.attempts));
    assert_eq!(state(q.get(&e.id).await.unwrap()), Some((JobState::Ready, 0)));
    let taken = q.take("w", LONG, 1).await.unwrap();
    let active = q.get(&e.id).await.unwrap().expect("active");
    assert_eq!(
        (active.state, active.worker.as_deref(), active.lease),
        (JobState::Active, Some("w"), 1)
    );
    assert_eq!(active.idempotency_key.as_deref(), Some("found"));
    q.fail(
        &e.id,
        "w",
        taken[0].lease,
        &error(1, "later"),
        Disposition::Retry {
            at_ms: now_ms() + 3_600_000,
        },
    )
    .await
    .unwrap();
    assert_eq!(state(q.get(&e.id).await.unwrap()), Some((JobState::Scheduled, 1)));
    // unknown ids, and ids this backend never gives, are none
    for unknown in ["999999", "0", "-1", "not-an-id", ""] {
        assert!(q.get(unknown).await.unwrap().is_none(), "{unknown:?}");
    }
    q.purge(JobState::Scheduled).await.unwrap();
    assert!(q.get(&e.id).await.unwrap().is_none(), "purged");
}

/// A dead job retried keeps its attempt count and history (the next error is attempt 3, not
/// 1 again) and gets its budget of attempts anew: dispose retries it until that runs out.
pub async fn a_retried_job_keeps_counting_attempts_with_a_fresh_budget(b: &Backend) {
    let q = &*b.queue;
    let e = enqueue(q, NewJob::new("k", json!({ "n": 1 })).max_attempts(2))
        .await
        .unwrap();
    let retry = RetryPolicy::default();
    let mut rng = SplitMix::new(7);
    let mut decisions = Vec::new();
    // two rounds of a 2-attempt budget, a retry from the dead set between them
    for round in 0..2 {
        for _ in 0..2 {
            let job = q.take("w", LONG, 1).await.unwrap().pop().expect("ready");
            let mut d = dispose(&job, keel::Class::Transient, None, &retry, now_ms(), &mut rng);
            if let Disposition::Retry { .. } = d {
                d = Disposition::Retry { at_ms: now_ms() };
            }
            decisions.push((job.attempts, job.max_attempts, matches!(d, Disposition::Dead)));
            q.fail(&e.id, "w", job.lease, &error(job.attempts, "flaky"), d)
                .await
                .unwrap();
        }
        if round == 0 {
            assert_eq!(q.retry_dead(Some(std::slice::from_ref(&e.id))).await.unwrap(), 1);
        }
    }
    assert_eq!(
        decisions,
        [(1, 2, false), (2, 2, true), (3, 4, false), (4, 4, true)],
        "(attempt, max_attempts, dead)"
    );
    let dead = q.get(&e.id).await.unwrap().expect("dead");
    assert_eq!(dead.state, JobState::Dead);
    let attempts: Vec<u32> = dead.errors.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, [1, 2, 3, 4], "the history goes on across the retry");
    // a second retry grants the first budget again, not the grown max_attempts
    assert_eq!(q.retry_dead(None).await.unwrap(), 1);
    let again = q.get(&e.id).await.unwrap().expect("ready");
    assert_eq!(
        (again.state, again.attempts, again.max_attempts),
        (JobState::Ready, 4, 6)
    );
}

pub async fn stats_count_leases_that_ran_out_until_a_take_puts_them_back(b: &Backend) {
    let q = &*b.queue;
    enqueue(q, NewJob::new("k", json!({ "n": 1 }))).await.unwrap();
    enqueue(q, NewJob::new("k", json!({ "n": 2 }))).await.unwrap();
    // (the long lease first: a take puts back the leases that ran out before it)
    let held = q.take("lives", LONG, 1).await.unwrap();
    let short = q.take("dies", Duration::from_millis(20), 1).await.unwrap();
    assert_eq!((short.len(), held.len()), (1, 1));
    b.wait_past(short[0].lease_until_ms.expect("a lease")).await;
    let s = q.stats().await.unwrap();
    assert_eq!((s.active, s.expired_leases), (2, 1), "{s:?}");
    // the next take puts the job back (and takes it): no lease has run out any more
    let again = q.take("w2", LONG, 1).await.unwrap();
    assert_eq!(again[0].id, short[0].id);
    let s = q.stats().await.unwrap();
    assert_eq!((s.active, s.expired_leases), (2, 0), "{s:?}");
}

/// The worker extends the lease of a job whose handler outlives it: while the handler runs,
/// the backend's clock passes the first lease's end, the job's lease on the backend has moved
/// on, and another worker cannot take the job. (A 3 s lease, extended every second: a loaded
/// machine has room.)
pub async fn the_worker_extends_the_lease_while_its_handler_runs(b: &Backend) {
    const LEASE: Duration = Duration::from_secs(3);
    let q = b.queue.clone();
    let e = enqueue(&*q, NewJob::new("k", json!({ "n": 1 }))).await.unwrap();
    let mut opts = WorkerOptions::new("extends");
    opts.concurrency = 1;
    opts.lease = LEASE;
    opts.poll = Duration::from_millis(20);
    let other = b.another().await;
    let seen = Arc::new(std::sync::Mutex::new(None));
    let (seen_in, q_in) = (seen.clone(), q.clone());
    let backend = b.clock();
    let worker = Worker::new(q.clone(), opts, move |job: Job| {
        let (seen, q, other, backend) = (seen_in.clone(), q_in.clone(), other.clone(), backend);
        async move {
            let first = job.lease_until_ms.unwrap_or(0);
            backend.wait_past(first).await;
            let now = q.get(&job.id).await.unwrap().expect("held");
            let stolen = other.take("thief", LONG, 1).await.unwrap();
            *seen.lock().unwrap() = Some((first, now.lease_until_ms, now.worker.clone(), stolen.len()));
            Ok(())
        }
    });
    let stop = worker.shutdown_handle();
    let run = tokio::spawn(async move { worker.run().await });
    // (bounded: 3,000 looks)
    let mut looks = 0;
    while seen.lock().unwrap().is_none() {
        looks += 1;
        assert!(looks < 3000, "the handler never got past the first lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // (the job in flight is finished and acked before the worker stops)
    stop.trigger();
    let report = run.await.unwrap().unwrap();
    let (first, later, worker, stolen) = seen.lock().unwrap().clone().expect("the handler ran");
    assert!(
        later.is_some_and(|l| l > first),
        "the lease ending at {first} was never extended: {later:?}"
    );
    assert_eq!(worker.as_deref(), Some("extends"));
    assert_eq!(stolen, 0, "another worker took the job past its first lease");
    assert_eq!((report.acked, report.lost), (1, 0), "{report:?}");
    assert!(q.get(&e.id).await.unwrap().is_none(), "acked");
}
