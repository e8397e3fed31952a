//! State shared by the coordinator and the partition tasks on the worker thread.
//!
//! Everything here lives on one thread (a current-thread runtime), so plain `Cell`s and
//! `RefCell`s are enough; no borrow is ever held across an `.await`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Notify, watch};

use super::PipelineError;
use super::failures::FailureLog;
use super::pace::Pace;
use super::pause::PauseGate;
use super::progress::Progress;
use crate::context::StepShared;
use crate::metrics::RunMetrics;
use crate::policy::{BudgetAction, CircuitBreaker, Policies, SplitMix};
use crate::sink::{DynSink, Framing};

/// A sink and its name, shared by all tasks. The async mutex is only contended at barriers.
pub(crate) struct SinkHandle {
    pub(crate) name: String,
    pub(crate) framing: Framing,
    /// What its records must satisfy ([`crate::Sink::max_record_bytes`],
    /// [`crate::Sink::record_check`]).
    pub(crate) limits: crate::sink::RecordLimits,
    pub(crate) sink: Mutex<Box<dyn DynSink>>,
    pub(crate) breaker: Option<RefCell<CircuitBreaker>>,
    /// Records written to it ([`crate::metrics::RECORDS_WRITTEN`]).
    pub(crate) written: metrics::Counter,
}

/// The checkpoint barrier.
///
/// The coordinator calls [`Barrier::request`]; each running task, at its next record
/// boundary, flushes its outputs, publishes its position and calls [`Barrier::arrive`], then
/// waits for the release. When every running task has arrived (or ended), the coordinator
/// takes the snapshot and calls [`Barrier::release`].
pub(crate) struct Barrier {
    requested: Cell<bool>,
    arrived: Cell<usize>,
    running: Cell<usize>,
    all_arrived: Notify,
    requested_notify: Notify,
    release: watch::Sender<u64>,
}

impl Barrier {
    fn new() -> Self {
        Barrier {
            requested: Cell::new(false),
            arrived: Cell::new(0),
            running: Cell::new(0),
            all_arrived: Notify::new(),
            requested_notify: Notify::new(),
            release: watch::channel(0).0,
        }
    }

    /// True when tasks should stop at the next record boundary.
    #[inline]
    pub(crate) fn requested(&self) -> bool {
        self.requested.get()
    }

    pub(crate) fn request(&self) {
        self.arrived.set(0);
        self.requested.set(true);
        self.requested_notify.notify_waiters();
    }

    /// Resolves when a barrier is requested (for tasks waiting for input).
    pub(crate) async fn wait_requested(&self) {
        if !self.requested.get() {
            self.requested_notify.notified().await;
        }
    }

    /// A task has stopped for the barrier; returns a receiver to await the release with.
    pub(crate) fn arrive(&self) -> watch::Receiver<u64> {
        let mut rx = self.release.subscribe();
        rx.borrow_and_update();
        self.arrived.set(self.arrived.get() + 1);
        if self.arrived.get() >= self.running.get() {
            self.all_arrived.notify_one();
        }
        rx
    }

    /// Waits until every running task has arrived.
    pub(crate) async fn wait_all_arrived(&self, fatal: &Fatal) {
        while self.arrived.get() < self.running.get() && !fatal.stop_now() {
            tokio::select! {
                _ = self.all_arrived.notified() => {}
                _ = fatal.notify.notified() => {}
            }
        }
    }

    /// True when every running task is at the barrier.
    pub(crate) fn arrived_all(&self) -> bool {
        self.arrived.get() >= self.running.get()
    }

    pub(crate) fn release(&self) {
        self.requested.set(false);
        self.arrived.set(0);
        self.release.send_modify(|g| *g += 1);
    }

    pub(crate) fn task_started(&self) {
        self.running.set(self.running.get() + 1);
    }

    pub(crate) fn task_ended(&self) {
        self.running.set(self.running.get().saturating_sub(1));
        if self.requested.get() && self.arrived.get() >= self.running.get() {
            self.all_arrived.notify_one();
        }
    }

    pub(crate) fn running(&self) -> usize {
        self.running.get()
    }
}

/// The first fatal error of any task; the coordinator stops on it.
///
/// With `final_checkpoint`, the coordinator first takes a final checkpoint (every other task
/// stops at its next record boundary as for any barrier); without it, tasks stop at once and
/// the last completed checkpoint is what a restart resumes from.
pub(crate) struct Fatal {
    error: RefCell<Option<(PipelineError, bool)>>,
    pub(crate) notify: Notify,
}

impl Fatal {
    pub(crate) fn set(&self, e: PipelineError, final_checkpoint: bool) {
        let mut slot = self.error.borrow_mut();
        match slot.as_mut() {
            None => *slot = Some((e, final_checkpoint)),
            // a later error never allows a checkpoint that an earlier one forbade
            Some(s) => s.1 &= final_checkpoint,
        }
        drop(slot);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    pub(crate) fn is_set(&self) -> bool {
        self.error.borrow().is_some()
    }

    /// True when tasks must stop at once (an error that forbids a final checkpoint).
    #[inline]
    pub(crate) fn stop_now(&self) -> bool {
        self.error.borrow().as_ref().is_some_and(|(_, ckpt)| !ckpt)
    }

    pub(crate) fn take(&self) -> Option<(PipelineError, bool)> {
        self.error.borrow_mut().take()
    }
}

/// Counters of this run (not cumulative over restarts).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) records_in: Cell<u64>,
    pub(crate) records_out: Cell<u64>,
    pub(crate) dead_letters: Cell<u64>,
    pub(crate) late_dropped: Cell<u64>,
    pub(crate) skipped: Cell<u64>,
    pub(crate) retries: Cell<u64>,
    pub(crate) sink_failures: Cell<u64>,
    pub(crate) sink_retries: Cell<u64>,
    /// `records_in` when the last committed checkpoint was taken.
    pub(crate) records_at_checkpoint: Cell<u64>,
    /// Bytes of the records read (their values).
    pub(crate) bytes_in: Cell<u64>,
    /// `bytes_in` when the last committed checkpoint was taken.
    pub(crate) bytes_at_checkpoint: Cell<u64>,
}

/// Counts the sink writes that wait for a retry or an open breaker.
#[derive(Default)]
pub(crate) struct HeldWrites {
    count: Cell<usize>,
    changed: Notify,
}

impl HeldWrites {
    /// Marks a write as held until the guard is dropped.
    pub(crate) fn enter(&self) -> HeldGuard<'_> {
        self.count.set(self.count.get() + 1);
        self.changed.notify_waiters();
        HeldGuard(self)
    }

    /// Resolves as soon as at least one write is held.
    pub(crate) async fn any(&self) {
        while self.count.get() == 0 {
            self.changed.notified().await;
        }
    }
}

/// See [`HeldWrites::enter`].
pub(crate) struct HeldGuard<'a>(&'a HeldWrites);

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.count.set(self.0.count.get().saturating_sub(1));
    }
}

/// Everything the tasks and the coordinator share.
pub(crate) struct RuntimeShared {
    pub(crate) step: StepShared,
    pub(crate) barrier: Barrier,
    pub(crate) fatal: Fatal,
    pub(crate) task_exit: Notify,
    /// Index 0 is the main sink, then side sinks in declaration order, then dead letters.
    pub(crate) sinks: Vec<SinkHandle>,
    pub(crate) dead_letter_sink: Option<usize>,
    pub(crate) fallback_dead_letter_sink: Option<usize>,
    pub(crate) policies: Policies,
    pub(crate) pause: PauseGate,
    /// Sink writes waiting for a retry or for an open breaker (they hold their task away
    /// from record boundaries, so a stop does not wait for them).
    pub(crate) held: HeldWrites,
    pub(crate) failures: FailureLog,
    pub(crate) rng: RefCell<SplitMix>,
    origin: tokio::time::Instant,
    pub(crate) epoch: Cell<u64>,
    pub(crate) counters: Counters,
    pub(crate) progress: Arc<Progress>,
    pub(crate) metrics: RunMetrics,
    pub(crate) listeners: crate::notify::Listeners,
    /// A pause was announced and its end not yet ([`crate::notify::RunEvent::Resumed`]).
    pub(crate) paused_announced: Cell<bool>,
    pub(crate) batch_size: usize,
    pub(crate) flush_bytes: usize,
    pub(crate) poll_interval: Duration,
    /// The ceiling on records read per second, if the run has one.
    pub(crate) pace: Option<Pace>,
    /// Partitions queued for want of a free place (`max_open_partitions`): an unbounded
    /// partition task gives its place up when it is idle, or after a while, so that every
    /// partition of a followed directory is read.
    pub(crate) partitions_waiting: Cell<usize>,
}

impl RuntimeShared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        step: StepShared,
        sinks: Vec<SinkHandle>,
        dead_letter_sink: Option<usize>,
        fallback_dead_letter_sink: Option<usize>,
        policies: Policies,
        epoch: u64,
        progress: Arc<Progress>,
        metrics: RunMetrics,
        listeners: crate::notify::Listeners,
        batch_size: usize,
        flush_bytes: usize,
        poll_interval: Duration,
        max_records_per_second: Option<u32>,
    ) -> Rc<Self> {
        let pace = max_records_per_second.map(Pace::new);
        let batch_size = pace.as_ref().map_or(batch_size, |p| p.batch_size(batch_size));
        let failures = FailureLog::new(policies.error_budget, policies.dead_letter_rate, metrics.clone());
        Rc::new(RuntimeShared {
            step,
            barrier: Barrier::new(),
            fatal: Fatal {
                error: RefCell::new(None),
                notify: Notify::new(),
            },
            task_exit: Notify::new(),
            sinks,
            dead_letter_sink,
            fallback_dead_letter_sink,
            policies,
            pause: PauseGate::default(),
            held: HeldWrites::default(),
            failures,
            rng: RefCell::new(SplitMix::from_entropy()),
            origin: tokio::time::Instant::now(),
            epoch: Cell::new(epoch),
            counters: Counters::default(),
            progress,
            metrics,
            listeners,
            paused_announced: Cell::new(false),
            batch_size,
            flush_bytes,
            poll_interval,
            pace,
            partitions_waiting: Cell::new(0),
        })
    }

    /// Monotonic time since the run started (tokio's clock, so tests can pause it).
    #[inline]
    pub(crate) fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Closes the pause gate until `until` ([`PauseGate::pause_until`]), and counts a pause
    /// that starts now.
    pub(crate) fn pause_until(&self, until: tokio::time::Instant, reason: &'static str) {
        if self.pause.pause_until(until, reason) {
            self.metrics.pause(reason);
            self.progress.set_paused(Some(reason));
            if !self.paused_announced.replace(true) {
                self.listeners.emit(&crate::notify::RunEvent::Paused {
                    pipeline: self.step.pipeline.to_string(),
                    cause: reason.to_owned(),
                });
            }
        }
    }

    /// The error budget is exceeded: pause or abort, as configured, and say why.
    pub(crate) fn budget_exceeded(&self, why: String) {
        let Some(budget) = self.policies.error_budget else {
            return;
        };
        match budget.action {
            BudgetAction::Pause => {
                if self.pause.active_until().is_none() {
                    tracing::warn!(%why, pause_ms = budget.window.as_millis() as u64, "error budget exceeded: pausing input");
                }
                self.pause_until(
                    tokio::time::Instant::now() + budget.window,
                    "the error budget is exceeded",
                );
            }
            BudgetAction::Abort => {
                tracing::error!(%why, "error budget exceeded: stopping");
                self.fatal.set(
                    PipelineError::Aborted {
                        reason: format!("error budget exceeded: {why}"),
                        summary: None,
                    },
                    true,
                );
            }
        }
    }
}

/// Where one partition stands, as its task last published it.
pub(crate) struct TaskSlot<P> {
    pub(crate) position: RefCell<Option<P>>,
    pub(crate) done: Cell<bool>,
    pub(crate) running: Cell<bool>,
    pub(crate) idle: Cell<bool>,
    /// The task gave its place up to a waiting partition (unbounded sources): the
    /// coordinator queues the partition again, to resume at `position`.
    pub(crate) rotated: Cell<bool>,
    pub(crate) max_event_time: Cell<Option<i64>>,
    /// The reader's lag after its last batch ([`crate::PartitionReader::lag`]).
    pub(crate) lag: Cell<Option<u64>>,
}

impl<P> TaskSlot<P> {
    pub(crate) fn new(position: Option<P>, done: bool, max_event_time: Option<i64>) -> Rc<Self> {
        Rc::new(TaskSlot {
            position: RefCell::new(position),
            done: Cell::new(done),
            running: Cell::new(false),
            idle: Cell::new(false),
            rotated: Cell::new(false),
            max_event_time: Cell::new(max_event_time),
            lag: Cell::new(None),
        })
    }
}
