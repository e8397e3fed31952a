//! Running handlers on a [`Queue`]: a concurrency limit, lease extension while a handler
//! runs, retries with backoff or the dead set on failure, and graceful shutdown.
//!
//! A handler whose lease cannot be extended (the backend keeps failing) is cancelled, its
//! future dropped, before the lease runs out, and its job is neither acked nor failed by
//! this worker: it runs again once the lease expired, as after a crash.
//!
//! Shutdown (a [`ShutdownHandle`], or SIGINT/SIGTERM with [`WorkerOptions::handle_signals`]):
//! no new job is taken; jobs in flight get [`WorkerOptions::grace`] to finish; the rest are
//! released (ready again at once, their attempt not counted).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{Disposition, Job, JobError, Queue, QueueError, dispose};
use crate::ShutdownHandle;
use crate::failure::Failure;
use crate::ledger::BoxFuture;
use crate::policy::{RetryPolicy, SplitMix};
use crate::util::now_ms;

/// A job handler: `Ok` acks the job; a [`Failure`] is classified (see [`super::dispose`]).
pub type Handler = Arc<dyn Fn(Job) -> BoxFuture<'static, Result<(), Failure>> + Send + Sync>;

/// Called after every failed attempt with the decision taken.
pub type FailureHook = Arc<dyn Fn(&Job, &Failure, Disposition) + Send + Sync>;

/// Settings of a worker.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// This worker's id (in leases and listings).
    pub id: String,
    /// Jobs run at the same time.
    pub concurrency: usize,
    /// The lease of a taken job; extended every third of it while the handler runs. A
    /// handler whose lease cannot be extended is cancelled (its future dropped) before the
    /// lease runs out.
    pub lease: Duration,
    /// How long to wait before asking an empty queue again.
    pub poll: Duration,
    /// On shutdown, how long jobs in flight may take to finish before they are released.
    pub grace: Duration,
    /// The backoff of retries (its `max_attempts` is unused: each job has its own).
    pub retry: RetryPolicy,
    /// Stop gracefully on SIGINT and SIGTERM.
    pub handle_signals: bool,
    /// The `queue` label of the worker's metrics ([`crate::metrics::QUEUE_JOBS`] and the
    /// queue gauges, sampled every `stats_every`).
    pub metrics_name: String,
    /// How often the queue's state is read into the gauges (`None`: never).
    pub stats_every: Option<Duration>,
}

impl WorkerOptions {
    /// 4 at a time, 30 s leases, 200 ms polls, 10 s grace, the default backoff.
    pub fn new(id: impl Into<String>) -> Self {
        WorkerOptions {
            id: id.into(),
            concurrency: 4,
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(200),
            grace: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            handle_signals: false,
            metrics_name: "default".into(),
            stats_every: Some(Duration::from_secs(5)),
        }
    }
}

/// What a worker did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkerReport {
    /// Jobs acked.
    pub acked: u64,
    /// Failed attempts rescheduled.
    pub retried: u64,
    /// Jobs sent to the dead set.
    pub dead: u64,
    /// Jobs released unfinished at shutdown.
    pub released: u64,
    /// Attempts stopped because their lease was lost (another worker has the job) or could
    /// not be extended before it ran out (the handler was cancelled; the job runs again).
    pub lost: u64,
}

/// Runs a handler on a queue; see the module docs.
pub struct Worker {
    queue: Arc<dyn Queue>,
    handler: Handler,
    hook: Option<FailureHook>,
    options: WorkerOptions,
    shutdown: ShutdownHandle,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("queue", &self.queue)
            .field("options", &self.options)
            .finish()
    }
}

/// How a job's task ended (the task acks or fails the job itself, so that the acks of
/// concurrent jobs overlap).
enum TaskEnd {
    Acked,
    Retried,
    Dead,
    Released,
    LostLease,
    Failed(QueueError),
}

/// What a job's task needs besides the job.
#[derive(Clone)]
struct TaskContext {
    queue: Arc<dyn Queue>,
    handler: Handler,
    hook: Option<FailureHook>,
    worker: String,
    lease: Duration,
    retry: RetryPolicy,
    metrics_name: Arc<str>,
}

impl Worker {
    /// A worker running `handler` on `queue`.
    pub fn new<F, Fut>(queue: Arc<dyn Queue>, options: WorkerOptions, handler: F) -> Self
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Failure>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |job| Box::pin(handler(job)));
        Worker {
            queue,
            handler,
            hook: None,
            options,
            shutdown: ShutdownHandle::default(),
        }
    }

    /// Calls `hook` after every failed attempt.
    pub fn on_failure(mut self, hook: impl Fn(&Job, &Failure, Disposition) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// A handle that stops the worker gracefully.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Runs until shut down. Backend errors while taking jobs are retried with the poll
    /// interval (logged); an error acking or failing a job stops the worker gracefully and is
    /// returned.
    pub async fn run(&self) -> Result<WorkerReport, QueueError> {
        let opts = &self.options;
        let limit = opts.concurrency.max(1);
        let mut report = WorkerReport::default();
        let mut tasks = tokio::task::JoinSet::new();
        let mut running = 0usize;
        let mut error = None;
        // triggered when the grace period is over: tasks still running release their jobs
        let cancel = ShutdownHandle::default();
        if opts.handle_signals {
            self.forward_signals()?;
        }
        let mut next_stats = tokio::time::Instant::now();
        while !self.shutdown.is_triggered() {
            if let Some(every) = opts.stats_every
                && tokio::time::Instant::now() >= next_stats
            {
                next_stats = tokio::time::Instant::now() + every;
                match self.queue.stats().await {
                    Ok(s) => crate::metrics::queue_stats(&opts.metrics_name, &s, now_ms()),
                    Err(e) => tracing::debug!(error = %e, "reading the queue's stats for its metrics failed"),
                }
            }
            let free = limit - running;
            let mut idle = true;
            // take in batches: with jobs running, wait until half the slots are free
            if free > 0 && (running == 0 || free * 2 >= limit) {
                match self.queue.take(&opts.id, opts.lease, free).await {
                    Ok(jobs) => {
                        idle = jobs.len() < free;
                        for job in jobs {
                            tasks.spawn(run_one(self.context(), job, cancel.clone()));
                            running += 1;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "taking jobs failed; trying again"),
                }
            }
            if !idle && running * 2 < limit {
                continue;
            }
            tokio::select! {
                Some(done) = tasks.join_next(), if running > 0 => {
                    running -= 1;
                    self.count(done, &mut report, &mut error);
                }
                _ = tokio::time::sleep(opts.poll), if idle && running < limit => {}
                _ = self.shutdown.wait() => {}
            }
        }
        // graceful shutdown: jobs in flight may finish within the grace period; then the
        // tasks still running stop their handlers and release their jobs themselves (a task
        // that is acking or failing its job finishes that first)
        let deadline = tokio::time::Instant::now() + opts.grace;
        let mut cancelled = false;
        while running > 0 {
            tokio::select! {
                Some(done) = tasks.join_next() => {
                    running -= 1;
                    self.count(done, &mut report, &mut error);
                }
                _ = tokio::time::sleep_until(deadline), if !cancelled => {
                    cancelled = true;
                    cancel.trigger();
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Counts a finished task; the first backend error stops the worker (gracefully).
    fn count(
        &self,
        done: Result<TaskEnd, tokio::task::JoinError>,
        report: &mut WorkerReport,
        error: &mut Option<QueueError>,
    ) {
        match done {
            Ok(TaskEnd::Acked) => report.acked += 1,
            Ok(TaskEnd::Retried) => report.retried += 1,
            Ok(TaskEnd::Dead) => report.dead += 1,
            Ok(TaskEnd::Released) => report.released += 1,
            Ok(TaskEnd::LostLease) => report.lost += 1,
            Ok(TaskEnd::Failed(e)) => {
                tracing::error!(error = %e, "the queue failed while settling a job; stopping (its lease expires and it runs again)");
                if error.is_none() {
                    *error = Some(e);
                }
                self.shutdown.trigger();
            }
            // only a bug in this module: handler panics are caught in the task
            Err(e) => {
                tracing::error!(error = %e, "a job task ended abnormally; its job runs again when its lease expires")
            }
        }
    }

    fn forward_signals(&self) -> Result<(), QueueError> {
        use tokio::signal::unix::{SignalKind, signal};
        let err = |e: std::io::Error| QueueError::Config(format!("cannot handle signals: {e}"));
        let mut int = signal(SignalKind::interrupt()).map_err(err)?;
        let mut term = signal(SignalKind::terminate()).map_err(err)?;
        let stop = self.shutdown.clone();
        let grace = self.options.grace;
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            tracing::warn!(
                grace_s = grace.as_secs_f64(),
                "stopping: no new jobs; jobs in flight finish or are released (a second signal exits at once)"
            );
            stop.trigger();
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            std::process::exit(130);
        });
        Ok(())
    }

    fn context(&self) -> TaskContext {
        TaskContext {
            queue: self.queue.clone(),
            handler: self.handler.clone(),
            hook: self.hook.clone(),
            worker: self.options.id.clone(),
            lease: self.options.lease,
            retry: self.options.retry,
            metrics_name: self.options.metrics_name.as_str().into(),
        }
    }
}

/// Fails `job` with `failure` as [`dispose`] decides, and calls the hook.
async fn settle_failure(cx: &TaskContext, job: &Job, failure: Failure) -> TaskEnd {
    let now = now_ms();
    let mut rng = SplitMix::new(now ^ job.id.bytes().fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b)));
    let disposition = dispose(job, failure.class, failure.retry_after, &cx.retry, now, &mut rng);
    let error = JobError {
        attempt: job.attempts,
        class: failure.class,
        reason: failure.reason.to_string(),
        message: failure.message.clone(),
        at_ms: now,
    };
    match cx.queue.fail(&job.id, &cx.worker, job.lease, &error, disposition).await {
        Ok(()) => {
            if let Some(hook) = &cx.hook {
                let call = std::panic::AssertUnwindSafe(|| hook(job, &failure, disposition));
                if std::panic::catch_unwind(call).is_err() {
                    tracing::error!(job = %job.id, "the failure hook panicked");
                }
            }
            match disposition {
                Disposition::Dead => TaskEnd::Dead,
                Disposition::Retry { .. } => TaskEnd::Retried,
            }
        }
        Err(QueueError::LostLease(_)) => TaskEnd::LostLease,
        Err(e) => TaskEnd::Failed(e),
    }
}

/// Why a job's lease keeper stopped the handler.
enum LeaseEnd {
    /// Another worker has the job (or it was released): the backend said so.
    Lost,
    /// The lease could not be extended (the backend kept failing) and would run out before
    /// the next try: this worker must stop before another one may take the job.
    Unrenewable,
}

/// Extends the lease of `job` every third of it until the lease is lost or cannot be kept.
///
/// Contract: returns [`LeaseEnd::Unrenewable`] before the lease, as last confirmed, runs out:
/// each extension gets until `lease - lease/6` after the last confirmed one was sent (on
/// this machine's monotonic clock), and a failure that leaves no room for another try gives
/// up at once. The margin covers the time between the take on the backend and the start of
/// this task.
async fn keep_lease(cx: &TaskContext, job: &Job) -> LeaseEnd {
    let every = (cx.lease / 3).max(Duration::from_millis(10));
    let margin = cx.lease / 6;
    let mut renewed = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(renewed + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let give_up_at = renewed + cx.lease.saturating_sub(margin);
        let sent = tokio::time::Instant::now();
        let attempt = cx.queue.extend(&job.id, &cx.worker, job.lease, cx.lease);
        let error = match tokio::time::timeout_at(give_up_at, attempt).await {
            Ok(Ok(())) => {
                renewed = sent;
                continue;
            }
            Ok(Err(QueueError::LostLease(_))) => return LeaseEnd::Lost,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "the extension did not answer in time".to_owned(),
        };
        if tokio::time::Instant::now() + every < give_up_at {
            tracing::warn!(job = %job.id, error = %error, "extending the lease failed; trying again");
        } else {
            tracing::error!(job = %job.id, error = %error, "the lease could not be extended before it runs out; stopping the job");
            return LeaseEnd::Unrenewable;
        }
    }
}

/// Runs the handler on `job` while a second future keeps its lease ([`keep_lease`]), then
/// acks or fails the job. Stops the handler (dropping its future) if the lease is lost or
/// cannot be extended before it runs out (the job is then neither acked nor failed by this
/// worker: it runs again after the lease expired), or releases the job if `cancel` fires
/// first. A panicking handler is a transient failure.
async fn run_one(cx: TaskContext, job: Job, cancel: ShutdownHandle) -> TaskEnd {
    let started = std::time::Instant::now();
    let (end, ran) = attempt(&cx, &job, cancel).await;
    let outcome = match &end {
        TaskEnd::Acked => "acked",
        TaskEnd::Retried => "retried",
        TaskEnd::Dead => "dead",
        TaskEnd::Released => "released",
        TaskEnd::LostLease => "lost",
        TaskEnd::Failed(_) => "failed",
    };
    crate::metrics::queue_job(&cx.metrics_name, &job.kind, outcome, ran.then(|| started.elapsed()));
    end
}

/// One attempt of `job`; true with it when the handler ran to its end.
async fn attempt(cx: &TaskContext, job: &Job, cancel: ShutdownHandle) -> (TaskEnd, bool) {
    use futures_util::FutureExt as _;
    let work = std::panic::AssertUnwindSafe((cx.handler)(job.clone())).catch_unwind();
    let result = tokio::select! {
        r = work => match r {
            Ok(r) => r,
            Err(_) => Err(Failure::transient("handler_panicked", "the handler panicked")),
        },
        end = keep_lease(cx, job) => {
            match end {
                LeaseEnd::Lost => tracing::warn!(job = %job.id, "lease lost: another worker has the job; abandoning this attempt"),
                LeaseEnd::Unrenewable => tracing::warn!(job = %job.id, "the handler was stopped: the job runs again once its lease expired"),
            }
            return (TaskEnd::LostLease, false);
        }
        () = cancel.wait() => {
            let end = match cx.queue.release(&job.id, &cx.worker, job.lease).await {
                Ok(()) => TaskEnd::Released,
                Err(QueueError::LostLease(_)) => TaskEnd::LostLease,
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "releasing failed; the job runs again when its lease expires");
                    TaskEnd::LostLease
                }
            };
            return (end, false);
        }
    };
    let end = match result {
        Ok(()) => match cx.queue.ack(&job.id, &cx.worker, job.lease).await {
            Ok(()) => TaskEnd::Acked,
            Err(QueueError::LostLease(_)) => TaskEnd::LostLease,
            Err(e) => TaskEnd::Failed(e),
        },
        Err(failure) => settle_failure(cx, job, failure).await,
    };
    (end, true)
}

pub use super::command::{CommandEnd, EXIT_RETRY as EXIT_TRANSIENT, classify_exit};
