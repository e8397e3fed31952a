//! Running handlers on a [`Queue`]: a concurrency limit, lease extension while a handler
//! runs, retries with backoff or the dead set on failure, and graceful shutdown.
//!
//! Shutdown (a [`ShutdownHandle`], or SIGINT/SIGTERM with [`WorkerOptions::handle_signals`]):
//! no new job is taken; jobs in flight get [`WorkerOptions::grace`] to finish; the rest are
//! released (ready again at once, their attempt not counted).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{Disposition, Job, JobError, Queue, QueueError, dispose};
use crate::ShutdownHandle;
use crate::failure::{Class, Failure};
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
    /// The lease of a taken job; extended every third of it while the handler runs.
    pub lease: Duration,
    /// How long to wait before asking an empty queue again.
    pub poll: Duration,
    /// On shutdown, how long jobs in flight may take to finish before they are released.
    pub grace: Duration,
    /// The backoff of retries (its `max_attempts` is unused: each job has its own).
    pub retry: RetryPolicy,
    /// Stop gracefully on SIGINT and SIGTERM.
    pub handle_signals: bool,
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
    /// Attempts whose lease was lost (another worker has the job).
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

/// How a job's task ended.
enum TaskEnd {
    Finished(Result<(), Failure>),
    LostLease,
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
    /// interval (logged); errors acking or failing a job end the run.
    pub async fn run(&self) -> Result<WorkerReport, QueueError> {
        let opts = &self.options;
        let limit = opts.concurrency.max(1);
        let mut report = WorkerReport::default();
        let mut tasks = tokio::task::JoinSet::new();
        let mut running: HashMap<tokio::task::Id, Job> = HashMap::new();
        let mut rng = SplitMix::from_entropy();
        if opts.handle_signals {
            self.forward_signals()?;
        }
        while !self.shutdown.is_triggered() {
            let free = limit - running.len();
            let mut idle = true;
            if free > 0 {
                match self.queue.take(&opts.id, opts.lease, free).await {
                    Ok(jobs) => {
                        idle = jobs.len() < free;
                        for job in jobs {
                            let handle = tasks.spawn(run_one(
                                self.queue.clone(),
                                self.handler.clone(),
                                job.clone(),
                                opts.id.clone(),
                                opts.lease,
                            ));
                            running.insert(handle.id(), job);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "taking jobs failed; trying again"),
                }
            }
            if !idle && running.len() < limit {
                continue;
            }
            tokio::select! {
                Some(done) = tasks.join_next_with_id(), if !running.is_empty() => {
                    self.settle(done, &mut running, &mut report, &mut rng).await?;
                }
                _ = tokio::time::sleep(opts.poll), if running.len() < limit => {}
                _ = self.shutdown.wait() => {}
            }
        }
        // graceful shutdown: let jobs in flight finish within the grace period
        let deadline = tokio::time::Instant::now() + opts.grace;
        while !running.is_empty() {
            tokio::select! {
                Some(done) = tasks.join_next_with_id() => {
                    self.settle(done, &mut running, &mut report, &mut rng).await?;
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        tasks.abort_all();
        for (_, job) in running.drain() {
            match self.queue.release(&job.id, &opts.id, job.attempts).await {
                Ok(()) => report.released += 1,
                Err(QueueError::LostLease(_)) => report.lost += 1,
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "releasing failed; the job runs again when its lease expires")
                }
            }
        }
        Ok(report)
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

    /// Acks or fails a finished job.
    async fn settle(
        &self,
        done: Result<(tokio::task::Id, TaskEnd), tokio::task::JoinError>,
        running: &mut HashMap<tokio::task::Id, Job>,
        report: &mut WorkerReport,
        rng: &mut SplitMix,
    ) -> Result<(), QueueError> {
        let (id, end) = match done {
            Ok((id, end)) => (id, end),
            Err(e) => {
                let panic = Failure::transient("handler_panicked", format!("the handler panicked: {e}"));
                (e.id(), TaskEnd::Finished(Err(panic)))
            }
        };
        let Some(job) = running.remove(&id) else {
            return Ok(());
        };
        let worker = &self.options.id;
        let result = match end {
            TaskEnd::LostLease => {
                report.lost += 1;
                return Ok(());
            }
            TaskEnd::Finished(Ok(())) => self.queue.ack(&job.id, worker, job.attempts).await.map(|()| {
                report.acked += 1;
            }),
            TaskEnd::Finished(Err(failure)) => {
                let now = now_ms();
                let disposition = dispose(&job, failure.class, failure.retry_after, &self.options.retry, now, rng);
                let error = JobError {
                    attempt: job.attempts,
                    class: failure.class,
                    reason: failure.reason.to_string(),
                    message: failure.message.clone(),
                    at_ms: now,
                };
                let r = self.queue.fail(&job.id, worker, &error, disposition).await;
                if r.is_ok() {
                    match disposition {
                        Disposition::Dead => report.dead += 1,
                        Disposition::Retry { .. } => report.retried += 1,
                    }
                    if let Some(hook) = &self.hook {
                        hook(&job, &failure, disposition);
                    }
                }
                r
            }
        };
        match result {
            Err(QueueError::LostLease(_)) => {
                report.lost += 1;
                Ok(())
            }
            other => other,
        }
    }
}

/// Runs the handler on `job`, extending its lease every third of it; stops (dropping the
/// handler's future) if the lease is lost.
async fn run_one(queue: Arc<dyn Queue>, handler: Handler, job: Job, worker: String, lease: Duration) -> TaskEnd {
    let every = (lease / 3).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let work = handler(job.clone());
    tokio::pin!(work);
    loop {
        tokio::select! {
            r = &mut work => return TaskEnd::Finished(r),
            _ = tick.tick() => match queue.extend(&job.id, &worker, job.attempts, lease).await {
                Ok(()) => {}
                Err(QueueError::LostLease(_)) => {
                    tracing::warn!(job = %job.id, "lease lost: another worker has the job; abandoning this attempt");
                    return TaskEnd::LostLease;
                }
                Err(e) => tracing::warn!(job = %job.id, error = %e, "extending the lease failed; trying again"),
            },
        }
    }
}

/// Classifies an exit status of an external command run for a job: `0` acks;
/// [`EXIT_TRANSIENT`] (75, `EX_TEMPFAIL`) is transient (retried with backoff); termination by
/// a signal is transient too; any other code is permanent (dead set).
pub fn classify_exit(code: Option<i32>, stderr_tail: &str) -> Result<(), Failure> {
    let message = if stderr_tail.trim().is_empty() {
        format!(
            "the command exited with {}",
            code.map_or("a signal".into(), |c| c.to_string())
        )
    } else {
        stderr_tail.trim().to_owned()
    };
    match code {
        Some(0) => Ok(()),
        Some(EXIT_TRANSIENT) => Err(Failure::transient("exit_transient", message)),
        None => Err(Failure::transient("killed", message)),
        Some(c) => Err(Failure::new(Class::Permanent, format!("exit_{c}"), message)),
    }
}

/// The exit code of a job command that asks for a retry (`EX_TEMPFAIL` of sysexits.h).
pub const EXIT_TRANSIENT: i32 = 75;
