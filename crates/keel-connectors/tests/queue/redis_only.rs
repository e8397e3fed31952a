//! Redis-specific behaviour: decisions on the server's clock, bounded work per script call.

use std::sync::Arc;
use std::time::Duration;

use keel::queue::{Disposition, JobError, JobState, NewJob, Queue, enqueue};
use keel::util::{Clock, now_ms};
use keel_connectors::queue::RedisQueue;
use keel_connectors::queue::redis::PROMOTE_LIMIT;
use serde_json::json;

use crate::backends::{self, Backend, Kind, REDIS_URL, RETENTION};

const LONG: Duration = Duration::from_secs(3600);
const SKEW_MS: u64 = 10 * 60_000;

fn name(b: &Backend) -> &str {
    match &b.kind {
        Kind::Redis(name) => name,
        Kind::Sqlite(_) => unreachable!("a Redis backend"),
    }
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The server's clock (ms).
async fn server_ms(c: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(c).await.unwrap();
    s * 1000 + us / 1000
}

/// A worker whose clock runs 10 minutes ahead takes neither a job whose lease is still valid
/// nor a delayed job before its time; its own delays and retries count from its own now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_clock_runs_ahead_takes_nothing_early() {
    let b = backends::redis().await;
    let q = &*b.queue;
    let clock: Clock = Arc::new(|| now_ms() + SKEW_MS);
    let ahead = RedisQueue::connect(REDIS_URL, name(&b), RETENTION)
        .await
        .unwrap()
        .with_clock(clock.clone());

    let held = enqueue(q, NewJob::new("k", json!({ "n": 1 }))).await.unwrap();
    let taken = q.take("w1", Duration::from_secs(120), 1).await.unwrap();
    assert_eq!(taken[0].id, held.id);
    enqueue(q, NewJob::new("k", json!({ "n": 2 })).delay(Duration::from_secs(300)))
        .await
        .unwrap();
    assert!(
        ahead.take("w2", LONG, 10).await.unwrap().is_empty(),
        "the skewed worker took a held or delayed job"
    );
    let extended = ahead
        .extend(&held.id, "w1", taken[0].lease, Duration::from_secs(120))
        .await;
    assert!(extended.is_ok(), "{extended:?}");

    // the skewed worker's own delay and retry: 5 minutes from its now, not 15 from the server's
    enqueue(&ahead, NewJob::new("k", json!({ "n": 3 })).run_at(clock() + 300_000))
        .await
        .unwrap();
    let ready = enqueue(&ahead, NewJob::new("k", json!({ "n": 4 }))).await.unwrap();
    let got = ahead.take("w2", LONG, 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, ready.id);
    let error = JobError {
        attempt: 1,
        class: keel::Class::Transient,
        reason: "timeout".into(),
        message: "timeout".into(),
        at_ms: clock(),
    };
    ahead
        .fail(
            &ready.id,
            "w2",
            got[0].lease,
            &error,
            Disposition::Retry {
                at_ms: clock() + 300_000,
            },
        )
        .await
        .unwrap();
    let mut c = redis_conn().await;
    let server = server_ms(&mut c).await;
    let scheduled = q.list(Some(JobState::Scheduled), 10).await.unwrap();
    assert_eq!(scheduled.len(), 3, "{scheduled:?}");
    for j in &scheduled {
        // (about 5 minutes from the server's now: a minute of slack either way)
        assert!(
            (server + 240_000..=server + 360_000).contains(&j.run_at_ms),
            "job {} runs at {}, {} ms from the server's now",
            j.payload,
            j.run_at_ms,
            j.run_at_ms as i64 - server as i64
        );
    }
    assert!(q.take("w3", LONG, 10).await.unwrap().is_empty());
    b.cleanup().await;
}

/// More due jobs than one take makes ready: one call makes at most [`PROMOTE_LIMIT`] of them
/// ready, and every one is taken, in the order of its time, then of its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_makes_a_bounded_number_of_due_jobs_ready_and_the_rest_follow_in_order() {
    let b = backends::redis().await;
    let q = &*b.queue;
    let n = PROMOTE_LIMIT * 2 + 500;
    let base = now_ms() + 500;
    // groups of 300 jobs due at the same millisecond, later ids due earlier
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| NewJob::new("k", json!({ "i": i })).run_at(base + ((n - 1 - i) / 300) as u64))
        .collect();
    q.enqueue_many(&jobs).await.unwrap();
    let scheduled = q.list(Some(JobState::Scheduled), n).await.unwrap();
    assert_eq!(scheduled.len(), n, "every job waits for its time");
    let mut want: Vec<(u64, u64)> = scheduled.iter().map(|j| (j.run_at_ms, j.id.parse().unwrap())).collect();
    want.sort_unstable();
    let last_due = want.last().unwrap().0;

    // wait (bounded) until the server's clock has passed every job's time
    let mut c = redis_conn().await;
    let mut tries = 0;
    while server_ms(&mut c).await <= last_due {
        tries += 1;
        assert!(tries < 3000, "the server's clock never reached {last_due}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // one script call, taking nothing: it only makes due jobs ready
    assert!(q.take("w", LONG, 0).await.unwrap().is_empty());
    let prefix = format!("keel:q:{{{}}}:", name(&b));
    let ready: usize = redis::cmd("ZCARD")
        .arg(format!("{prefix}ready"))
        .query_async(&mut c)
        .await
        .unwrap();
    let still: usize = redis::cmd("ZCARD")
        .arg(format!("{prefix}scheduled"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        (1..=PROMOTE_LIMIT).contains(&ready),
        "one call made {ready} jobs ready (at most {PROMOTE_LIMIT})"
    );
    assert_eq!(ready + still, n);

    let mut order = Vec::with_capacity(n);
    for _ in 0..n {
        let got = q.take("w", LONG, 100).await.unwrap();
        if got.is_empty() {
            break;
        }
        order.extend(got.iter().map(|j| (j.run_at_ms, j.id.parse::<u64>().unwrap())));
    }
    assert_eq!(order.len(), n, "every due job is taken");
    assert!(order == want, "taken in the order of their time, then of their id");
    b.cleanup().await;
}

/// The password of a Redis location never shows in `describe`, `Debug` or errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_locations_are_shown_without_their_password() {
    // the default user has no password: any is accepted with the user name
    let q = RedisQueue::connect("redis://default:s3cretpw@127.0.0.1:6379/", "secrets", RETENTION)
        .await
        .unwrap();
    for shown in [q.describe(), format!("{q:?}")] {
        assert!(!shown.contains("s3cretpw") && shown.contains("default:***@"), "{shown}");
    }
    // rejected: a password without a user name, on a server that has none configured (a
    // refused connection is checked through `keel`: the client retries it for seconds)
    let err = RedisQueue::connect("redis://:s3cretpw@127.0.0.1:6379/", "secrets", RETENTION)
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains("s3cretpw") && err.contains("***"), "{err}");
}
