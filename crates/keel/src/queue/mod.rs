//! A durable job queue: priorities, delays, idempotency keys, leases, retries with backoff
//! and a dead set.
//!
//! # Semantics (every backend, checked by one test suite in `keel-connectors`)
//!
//! - **Order.** [`Queue::take`] returns ready jobs (their `run_at` has come) by priority,
//!   highest first ([`MIN_PRIORITY`]..=[`MAX_PRIORITY`]), then in the order they became
//!   ready (FIFO within a priority). A delayed job is never returned before its `run_at`.
//! - **Idempotency.** Enqueueing with a key that was used within the retention window
//!   returns the first job's id (`duplicate: true`) and enqueues nothing.
//! - **Leases.** A taken job is *active*, held by one worker until `lease_until`; taking
//!   counts an attempt. The worker extends the lease while it works, then acks (the job is
//!   done and removed) or fails it. A lease that expires (the worker died) puts the job back
//!   as ready — its attempt stays counted — or in the dead set when it has no attempt left.
//!   Every take of a job gets a new lease token ([`Job::lease`], never reused, not even
//!   after a release or a retry from the dead set), and every call of a worker names the
//!   token it holds: a worker whose lease was taken over gets [`QueueError::LostLease`] and
//!   changes nothing, so a job's handler only runs again after its lease expired. An expired
//!   lease records a `lease_expired` error in the job's history.
//! - **Failures.** [`dispose`] decides: transient and throttled failures are retried after a
//!   backoff (at least the retry-after the failure carries) while attempts remain;
//!   permanent and fatal ones, and the last attempt, go to the dead set, which keeps the
//!   error of every attempt. Dead jobs can be listed, retried or purged. A retry puts the
//!   job back as ready with a fresh budget: its attempts keep counting (the history goes on
//!   with the next attempt number) and its `max_attempts` becomes `attempts` plus the budget
//!   it was enqueued with.
//!
//! [`worker::Worker`] runs handlers on a queue with a concurrency limit, lease extension,
//! and graceful shutdown.

pub mod command;
pub mod worker;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::failure::Class;
use crate::ledger::BoxFuture;
use crate::policy::{RandomSource, RetryPolicy};

/// The lowest priority.
pub const MIN_PRIORITY: i32 = -1000;
/// The highest priority.
pub const MAX_PRIORITY: i32 = 1000;

/// A job id, assigned by the backend.
pub type JobId = String;

/// A job to enqueue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    /// What kind of work (`crawl`, `convert`, ...); handlers dispatch on it.
    pub kind: String,
    /// The payload (JSON).
    pub payload: serde_json::Value,
    /// Higher runs first; [`MIN_PRIORITY`]..=[`MAX_PRIORITY`] (default 0).
    pub priority: i32,
    /// Not before this time (ms since the Unix epoch, on the enqueuer's clock); `None` is
    /// now. A backend shared by several machines (Redis) keeps it as a delay from the
    /// enqueuer's now and decides on its own clock.
    pub run_at_ms: Option<u64>,
    /// Enqueueing the same key again within the retention window returns this job.
    pub idempotency_key: Option<String>,
    /// Most attempts, the first included (default 5).
    pub max_attempts: u32,
}

impl NewJob {
    /// A job of `kind` with `payload`, priority 0, to run now, 5 attempts.
    pub fn new(kind: impl Into<String>, payload: serde_json::Value) -> Self {
        NewJob {
            kind: kind.into(),
            payload,
            priority: 0,
            run_at_ms: None,
            idempotency_key: None,
            max_attempts: 5,
        }
    }

    /// With this priority.
    pub fn priority(mut self, p: i32) -> Self {
        self.priority = p;
        self
    }

    /// To run `d` from now.
    pub fn delay(mut self, d: Duration) -> Self {
        self.run_at_ms = Some(crate::util::now_ms() + crate::ledger::ms(d));
        self
    }

    /// To run at `ms` since the Unix epoch.
    pub fn run_at(mut self, ms: u64) -> Self {
        self.run_at_ms = Some(ms);
        self
    }

    /// With an idempotency key.
    pub fn key(mut self, k: impl Into<String>) -> Self {
        self.idempotency_key = Some(k.into());
        self
    }

    /// With at most `n` attempts.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Checks the fields a backend relies on.
    pub fn check(&self) -> Result<(), QueueError> {
        if self.kind.is_empty() {
            return Err(QueueError::Invalid("the job kind is empty".into()));
        }
        if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&self.priority) {
            return Err(QueueError::Invalid(format!(
                "priority {} is outside {MIN_PRIORITY}..={MAX_PRIORITY}",
                self.priority
            )));
        }
        if self.max_attempts == 0 {
            return Err(QueueError::Invalid("max_attempts must be at least 1".into()));
        }
        if self.idempotency_key.as_ref().is_some_and(|k| k.is_empty()) {
            return Err(QueueError::Invalid("the idempotency key is empty".into()));
        }
        Ok(())
    }
}

/// The result of an enqueue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    /// The job's id (the earlier job's for a duplicate key).
    pub id: JobId,
    /// True when the idempotency key was seen within the retention window.
    pub duplicate: bool,
}

/// One failed attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    /// Which attempt ([`Job::attempts`] when it failed: numbers keep growing across
    /// retries from the dead set).
    pub attempt: u32,
    /// Its class.
    pub class: Class,
    /// Its stable reason.
    pub reason: String,
    /// The message.
    pub message: String,
    /// When (ms).
    pub at_ms: u64,
}

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting to run: its time has come.
    Ready,
    /// Waiting for its `run_at` (delayed, or a retry after backoff).
    Scheduled,
    /// Held by a worker.
    Active,
    /// Failed for good.
    Dead,
}

impl JobState {
    /// The name shown and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Ready => "ready",
            JobState::Scheduled => "scheduled",
            JobState::Active => "active",
            JobState::Dead => "dead",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<JobState> {
        [JobState::Ready, JobState::Scheduled, JobState::Active, JobState::Dead]
            .into_iter()
            .find(|j| j.as_str() == s)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A job as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// Its kind.
    pub kind: String,
    /// Its payload.
    pub payload: serde_json::Value,
    /// Its priority.
    pub priority: i32,
    /// Where it stands.
    pub state: JobState,
    /// Attempts so far (taking a job counts one), over the job's whole life: a retry from
    /// the dead set does not reset it.
    pub attempts: u32,
    /// The last attempt: a failure of this one is final. Starts as [`NewJob::max_attempts`]
    /// and grows by that budget with each retry from the dead set.
    pub max_attempts: u32,
    /// When it was enqueued (ms).
    pub enqueued_ms: u64,
    /// When it may run (ms).
    pub run_at_ms: u64,
    /// Until when its worker holds it (active jobs).
    pub lease_until_ms: Option<u64>,
    /// The token of its latest take (see the module docs): the worker's calls name it.
    pub lease: u64,
    /// The worker holding it (active jobs).
    pub worker: Option<String>,
    /// Every failed attempt, oldest first.
    pub errors: Vec<JobError>,
    /// Its idempotency key.
    pub idempotency_key: Option<String>,
}

/// What happens to a failed job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Run again, not before this time (ms, on the worker's clock: a backend shared by
    /// several machines keeps it as a delay from the worker's now and decides on its own clock).
    Retry {
        /// The time.
        at_ms: u64,
    },
    /// To the dead set.
    Dead,
}

/// The decision for a failed attempt of `job` (whose `attempts` counts it): see the module
/// docs. `random` jitters the backoff ("equal jitter": half fixed, half random).
pub fn dispose(
    job: &Job,
    class: Class,
    retry_after: Option<Duration>,
    retry: &RetryPolicy,
    now_ms: u64,
    random: &mut dyn RandomSource,
) -> Disposition {
    let retryable = matches!(class, Class::Transient | Class::Throttled);
    if !retryable || job.attempts >= job.max_attempts {
        return Disposition::Dead;
    }
    let raw = retry.raw_delay(job.attempts.max(1));
    let jittered = raw / 2 + raw.mul_f64(random.next_f64().clamp(0.0, 1.0) / 2.0);
    let delay = jittered.max(retry_after.unwrap_or_default());
    Disposition::Retry {
        at_ms: now_ms + crate::ledger::ms(delay),
    }
}

/// Sizes of a queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Ready jobs.
    pub ready: u64,
    /// Ready jobs by priority.
    pub ready_by_priority: BTreeMap<i32, u64>,
    /// Delayed jobs and retries waiting for their time.
    pub scheduled: u64,
    /// Jobs held by workers.
    pub active: u64,
    /// Jobs in the dead set.
    pub dead: u64,
    /// Since when the oldest ready job has been waiting (ms), if any.
    pub oldest_ready_since_ms: Option<u64>,
    /// Active jobs whose lease has run out (on the backend's clock): the worker holding them
    /// died or stalled, and no take has put them back yet (they count in `active` too).
    pub expired_leases: u64,
}

/// A queue error.
#[derive(Debug, Error)]
pub enum QueueError {
    /// The backend failed (connection, I/O, a script).
    #[error("queue backend: {0}")]
    Backend(String),
    /// A bad location or setting.
    #[error("queue configuration: {0}")]
    Config(String),
    /// A job that cannot be enqueued.
    #[error("invalid job: {0}")]
    Invalid(String),
    /// The worker no longer holds this attempt of the job (its lease expired and the job was
    /// taken again, or it was released): nothing was changed.
    #[error("job {0}: the lease was lost")]
    LostLease(JobId),
}

/// A queue backend. Every method is atomic. See the module docs for the contract.
pub trait Queue: Send + Sync + std::fmt::Debug {
    /// A short description (`sqlite:queue.db (default)`).
    fn describe(&self) -> String;

    /// Enqueues `jobs`; one result per job, in order. Atomic per backend batch (SQLite: all
    /// of them; Redis: each run of 1,000).
    fn enqueue_many<'a>(&'a self, jobs: &'a [NewJob]) -> BoxFuture<'a, Result<Vec<Enqueued>, QueueError>>;

    /// Takes up to `max` ready jobs for `worker` with a lease of `lease`; first puts back
    /// the jobs whose lease expired and makes due scheduled jobs ready.
    fn take<'a>(&'a self, worker: &'a str, lease: Duration, max: usize) -> BoxFuture<'a, Result<Vec<Job>, QueueError>>;

    /// Extends the lease `lease` of job `id` held by `worker` to `duration` from now.
    fn extend<'a>(
        &'a self,
        id: &'a str,
        worker: &'a str,
        lease: u64,
        duration: Duration,
    ) -> BoxFuture<'a, Result<(), QueueError>>;

    /// The attempt under `lease` succeeded: the job is done and removed.
    fn ack<'a>(&'a self, id: &'a str, worker: &'a str, lease: u64) -> BoxFuture<'a, Result<(), QueueError>>;

    /// The attempt under `lease` failed with `error`; the job is retried or buried as
    /// `disposition` says.
    fn fail<'a>(
        &'a self,
        id: &'a str,
        worker: &'a str,
        lease: u64,
        error: &'a JobError,
        disposition: Disposition,
    ) -> BoxFuture<'a, Result<(), QueueError>>;

    /// Gives the job back unstarted (graceful shutdown): ready again, the attempt not
    /// counted.
    fn release<'a>(&'a self, id: &'a str, worker: &'a str, lease: u64) -> BoxFuture<'a, Result<(), QueueError>>;

    /// The job `id`, in whatever state; `None` if there is none (never enqueued, acked,
    /// purged, or not an id this backend could have given).
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Job>, QueueError>>;

    /// Jobs in `state` (all states if `None`), in the order they would run (dead: oldest
    /// death first), at most `limit`.
    fn list<'a>(&'a self, state: Option<JobState>, limit: usize) -> BoxFuture<'a, Result<Vec<Job>, QueueError>>;

    /// Sizes.
    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, QueueError>>;

    /// Moves dead jobs (`ids`, or all) back to ready, each with a fresh budget of attempts
    /// (see the module docs); ids of jobs that are not dead are skipped. Returns how many
    /// were moved.
    fn retry_dead<'a>(&'a self, ids: Option<&'a [JobId]>) -> BoxFuture<'a, Result<u64, QueueError>>;

    /// Deletes the jobs in `state`; returns how many.
    fn purge(&self, state: JobState) -> BoxFuture<'_, Result<u64, QueueError>>;
}

/// Enqueues one job.
pub async fn enqueue(queue: &dyn Queue, job: NewJob) -> Result<Enqueued, QueueError> {
    queue
        .enqueue_many(std::slice::from_ref(&job))
        .await?
        .pop()
        .ok_or_else(|| QueueError::Backend("the backend returned no result".into()))
}

/// The ordering key of a ready job: priority first (highest first), then readiness order.
/// Backends store `(MAX_PRIORITY - priority) * 2^40 + order`, exact in an `f64` score.
pub fn ready_score(priority: i32, order: u64) -> f64 {
    let p = (MAX_PRIORITY - priority.clamp(MIN_PRIORITY, MAX_PRIORITY)) as u64;
    (p * (1u64 << 40) + (order & ((1u64 << 40) - 1))) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::SplitMix;

    fn job(attempts: u32, max: u32) -> Job {
        Job {
            id: "1".into(),
            kind: "k".into(),
            payload: serde_json::Value::Null,
            priority: 0,
            state: JobState::Active,
            attempts,
            max_attempts: max,
            enqueued_ms: 0,
            run_at_ms: 0,
            lease_until_ms: None,
            lease: 0,
            worker: None,
            errors: Vec::new(),
            idempotency_key: None,
        }
    }

    #[test]
    fn transient_failures_retry_with_backoff_until_attempts_run_out() {
        let p = RetryPolicy::default();
        let mut r = SplitMix::new(1);
        for attempt in 1..5 {
            let Disposition::Retry { at_ms } = dispose(&job(attempt, 5), Class::Transient, None, &p, 1000, &mut r)
            else {
                panic!("attempt {attempt} should be retried");
            };
            let raw = crate::ledger::ms(p.raw_delay(attempt));
            assert!((1000 + raw / 2..=1000 + raw).contains(&at_ms), "{attempt}: {at_ms}");
        }
        assert_eq!(
            dispose(&job(5, 5), Class::Transient, None, &p, 0, &mut r),
            Disposition::Dead
        );
    }

    #[test]
    fn retry_after_is_honoured_and_permanent_failures_die_at_once() {
        let p = RetryPolicy::default();
        let mut r = SplitMix::new(2);
        let d = dispose(
            &job(1, 5),
            Class::Throttled,
            Some(Duration::from_secs(30)),
            &p,
            0,
            &mut r,
        );
        assert_eq!(d, Disposition::Retry { at_ms: 30_000 });
        assert_eq!(
            dispose(&job(1, 5), Class::Permanent, None, &p, 0, &mut r),
            Disposition::Dead
        );
        assert_eq!(
            dispose(&job(1, 5), Class::Fatal, None, &p, 0, &mut r),
            Disposition::Dead
        );
    }

    #[test]
    fn ready_scores_order_by_priority_then_fifo_exactly() {
        assert!(ready_score(MAX_PRIORITY, 5) < ready_score(MAX_PRIORITY - 1, 0));
        assert!(ready_score(0, 1) < ready_score(0, 2));
        // the largest scores stay exact integers in an f64: consecutive orders stay distinct
        let top = ready_score(MIN_PRIORITY, (1 << 40) - 1);
        assert!(top < 2f64.powi(53));
        assert_eq!(top - ready_score(MIN_PRIORITY, (1 << 40) - 2), 1.0);
    }
}
