//! A partition task: reads one partition in order and runs each record through the flow,
//! handling failures with the pipeline's policies.
//!
//! Invariants:
//! - The published position is always the position after the last record whose outputs
//!   (main, side and dead letters) are in this task's outboxes or already in the sinks.
//! - Before arriving at a barrier, the task writes its outboxes to the sinks, so the sealed
//!   epoch holds exactly the records up to the published position.
//! - A record that fails leaves no output behind: outboxes are rolled back to where they
//!   were before the record. A record waiting for a retry or a pause is not handled yet: a
//!   checkpoint taken meanwhile holds the position before it.

use std::rc::Rc;

use tokio::time::{Duration, Instant};

use super::PipelineError;
use super::shared::{RuntimeShared, TaskSlot};
use super::sink_io::{self, Written};
use super::window::{Ahead, Started, Window};
use crate::context::{Context, TaskLocal};
use crate::dead_letter::{Envelope, Provenance};
use crate::failure::{Failure, reason};
use crate::policy::{Action, FailureEvent, RetryState};
use crate::record::{Record, SourceBatch};
use crate::sink::{Encoder, Framing, OutBatch, RecordLimits};
use crate::source::{PartitionReader, ReadStatus};
use crate::step::Step;
use crate::util::now_ms;

/// The outboxes of one task, written to the sinks at barriers and when they grow large.
pub(crate) struct Outboxes {
    pub(crate) main: OutBatch,
    pub(crate) dead: OutBatch,
}

impl Outboxes {
    pub(crate) fn new(rt: &RuntimeShared) -> Self {
        let framing = |i: Option<usize>| i.map_or(Framing::Lines, |i| rt.sinks[i].framing);
        Outboxes {
            main: OutBatch::new(rt.sinks[0].framing),
            dead: OutBatch::new(framing(rt.dead_letter_sink)),
        }
    }

    /// Writes every non-empty outbox to its sink (side outboxes live in `local`). Records of
    /// a batch a sink refuses go to the action of the sink's stage (dead letters by default).
    pub(crate) async fn flush(&mut self, rt: &RuntimeShared, local: &mut TaskLocal) -> Result<(), PipelineError> {
        let epoch = rt.epoch.get();
        if !self.main.is_empty() {
            let written = sink_io::write(rt, 0, epoch, &self.main).await?;
            self.rejected(rt, local, 0, written)?;
            self.main.clear();
        }
        for i in 0..local.side.len() {
            if !local.side[i].is_empty() {
                let written = sink_io::write(rt, i + 1, epoch, &local.side[i]).await?;
                let side = std::mem::replace(&mut local.side[i], OutBatch::new(rt.sinks[i + 1].framing));
                self.rejected_batch(rt, local, i + 1, &side, written)?;
                local.side[i] = side;
                local.side[i].clear();
            }
        }
        if let Some(d) = rt.dead_letter_sink
            && !self.dead.is_empty()
        {
            let mut written = sink_io::write(rt, d, epoch, &self.dead).await?;
            if let (Written::Rejected(f), Some(fb)) = (&written, rt.fallback_dead_letter_sink) {
                tracing::warn!(error = %f, "the dead-letter output refused a batch; writing it to the fallback");
                written = sink_io::write(rt, fb, epoch, &self.dead).await?;
            }
            if let Written::Rejected(f) = written {
                return Err(PipelineError::Record {
                    partition: local.partition.to_string(),
                    failure: Box::new(f),
                });
            }
            self.dead.clear();
        }
        Ok(())
    }

    fn rejected(
        &mut self,
        rt: &RuntimeShared,
        local: &TaskLocal,
        sink: usize,
        written: Written,
    ) -> Result<(), PipelineError> {
        let main = std::mem::replace(&mut self.main, OutBatch::new(rt.sinks[0].framing));
        let r = self.rejected_batch(rt, local, sink, &main, written);
        self.main = main;
        r
    }

    /// Routes the records of a refused batch by the action of the sink's stage.
    fn rejected_batch(
        &mut self,
        rt: &RuntimeShared,
        local: &TaskLocal,
        sink: usize,
        batch: &OutBatch,
        written: Written,
    ) -> Result<(), PipelineError> {
        let Written::Rejected(failure) = written else {
            return Ok(());
        };
        let action = terminal(rt.policies.action(&rt.sinks[sink].name, failure.class));
        let partition = local.partition.to_string();
        let event = FailureEvent {
            failure: &failure,
            partition: &partition,
            attempts: 1,
            action: action.name(),
        };
        rt.policies.notify(&event);
        for _ in 0..batch.len() {
            rt.failures.record(&failure, action.name());
        }
        match action {
            Action::Skip => {
                rt.counters.skipped.set(rt.counters.skipped.get() + batch.len() as u64);
                Ok(())
            }
            Action::DeadLetter if rt.dead_letter_sink.is_some() => {
                let now = now_ms();
                for r in batch.records() {
                    let rec = Record {
                        key: r.key.map(bytes::Bytes::copy_from_slice),
                        value: bytes::Bytes::copy_from_slice(r.value),
                        ..Record::default()
                    };
                    let env = Envelope::new(
                        &rec,
                        &failure,
                        Provenance {
                            pipeline: &rt.step.pipeline,
                            partition: &partition,
                            position: &serde_json::Value::Null,
                            epoch: rt.epoch.get(),
                            attempts: 1,
                            first_failed_ms: now,
                            last_failed_ms: now,
                        },
                    );
                    push_envelope(&mut self.dead, &env);
                }
                rt.counters
                    .dead_letters
                    .set(rt.counters.dead_letters.get() + batch.len() as u64);
                rt.counters
                    .records_out
                    .set(rt.counters.records_out.get().saturating_sub(batch.len() as u64));
                Ok(())
            }
            _ => Err(PipelineError::Record {
                partition,
                failure: Box::new(failure),
            }),
        }
    }

    fn bytes(&self, local: &TaskLocal) -> usize {
        self.main.bytes() + self.dead.bytes() + local.side.iter().map(OutBatch::bytes).sum::<usize>()
    }
}

/// The action a failure ends with once retries and pauses are over.
fn terminal(action: &Action) -> &Action {
    match action {
        Action::Retry { then, .. } | Action::Pause { then, .. } => terminal(then),
        other => other,
    }
}

fn push_envelope(out: &mut OutBatch, env: &Envelope) {
    let _ = out.push_with::<()>(None, |buf| {
        env.encode(buf);
        Ok(())
    });
}

/// What the batch loop does after a record.
enum Next {
    Continue,
    Stop,
}

/// How one record ended.
enum Outcome {
    /// Outputs written (how many).
    Out(u64),
    /// Dead-lettered.
    Dead,
    /// Skipped or dropped.
    Skipped,
    /// The pipeline stops.
    Stop,
}

/// Batches a busy partition of an unbounded source reads before it gives its place up to a
/// waiting one.
const ROTATE_AFTER_BATCHES: u32 = 64;

/// Runs one partition until its end, a fatal error, or forever (unbounded sources).
pub(crate) struct PartitionTask<R: PartitionReader, S: Step<Record>, E> {
    pub(crate) rt: Rc<RuntimeShared>,
    pub(crate) slot: Rc<TaskSlot<R::Position>>,
    pub(crate) reader: R,
    pub(crate) flow: S,
    pub(crate) encoder: E,
    pub(crate) local: TaskLocal,
    pub(crate) out: Outboxes,
    pub(crate) outputs: Vec<S::Out>,
    pub(crate) marks: Vec<usize>,
    pub(crate) scratch_key: Vec<u8>,
    /// Records handled since the counters were last updated.
    pub(crate) tally: Tally,
    /// The records running ahead, when the flow has a concurrent call.
    pub(crate) window: Option<Window>,
    /// Records read from this partition ([`crate::metrics::RECORDS_READ`]).
    pub(crate) read: metrics::Counter,
}

/// Records a task handled and has not added to the run's counters yet.
#[derive(Default)]
pub(crate) struct Tally {
    handled: u64,
    bytes: u64,
    out: u64,
    dead: u64,
}

impl<R, S, E> PartitionTask<R, S, E>
where
    R: PartitionReader,
    R::Position: serde::Serialize,
    S: Step<Record>,
    E: Encoder<S::Out>,
{
    /// The coordinator has counted this task as running (`Barrier::task_started`) and set
    /// `slot.running` before spawning it.
    pub(crate) async fn run(mut self) {
        let partition = self.local.partition.to_string();
        let result = super::catch_panic(|| format!("partition {partition}"), self.read_all())
            .await
            .and_then(|r| r);
        self.slot.running.set(false);
        if let Err(e) = result {
            self.rt.fatal.set(e, false);
        }
        self.rt.barrier.task_ended();
        self.rt.task_exit.notify_one();
    }

    async fn read_all(&mut self) -> Result<(), PipelineError> {
        let rt = self.rt.clone();
        let mut batch: SourceBatch<R::Position> = SourceBatch::default();
        let mut idle_since: Option<Instant> = None;
        let mut batches = 0u32;
        loop {
            if let Next::Stop = self.boundary(&batch, 0).await? {
                return Ok(());
            }
            if let Some(pace) = &rt.pace {
                let d = pace.delay();
                if !d.is_zero() && !self.wait(d).await? {
                    return Ok(());
                }
            }
            batch.clear();
            if let Some(w) = &mut self.window {
                w.reset();
            }
            let status = match self.read(&mut batch).await? {
                Some(s) => s,
                None => return Ok(()),
            };
            if let Some(pace) = &rt.pace {
                pace.charge(batch.len());
            }
            match status {
                ReadStatus::End => {
                    self.out.flush(&rt, &mut self.local).await?;
                    self.slot.done.set(true);
                    self.publish_time();
                    return Ok(());
                }
                ReadStatus::Idle if rt.partitions_waiting.get() > 0 => return self.rotate().await,
                ReadStatus::Idle => {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= rt.step.time.idle_timeout {
                        self.slot.idle.set(true);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(rt.poll_interval) => {}
                        _ = rt.barrier.wait_requested() => {}
                    }
                    continue;
                }
                ReadStatus::Records => {
                    idle_since = None;
                    self.slot.idle.set(false);
                    batches += 1;
                }
            }
            let n = batch.len();
            for i in 0..n {
                if i > 0 {
                    // a record boundary: checkpoints and pauses are served here too
                    if (rt.barrier.requested() || rt.pause.active_until().is_some() || rt.fatal.is_set())
                        && let Next::Stop = self.boundary(&batch, i).await?
                    {
                        return Ok(());
                    }
                }
                let outcome = self.record(&batch, i).await?;
                if rt.policies.error_budget.is_some() {
                    // the budget's ratio needs records counted as they go
                    rt.failures.handled(1, rt.now());
                }
                match outcome {
                    Outcome::Out(o) => self.tally.out += o,
                    Outcome::Dead => self.tally.dead += 1,
                    Outcome::Skipped => {}
                    Outcome::Stop => {
                        self.count();
                        return Ok(());
                    }
                }
                self.tally.handled += 1;
                self.tally.bytes += batch.records[i].value.len() as u64;
            }
            if let Some(p) = batch.positions.last() {
                *self.slot.position.borrow_mut() = Some(p.clone());
            }
            self.count();
            self.publish_time();
            if self.out.bytes(&self.local) >= rt.flush_bytes {
                self.out.flush(&rt, &mut self.local).await?;
            }
            if batches >= ROTATE_AFTER_BATCHES && rt.partitions_waiting.get() > 0 {
                return self.rotate().await;
            }
            tokio::task::yield_now().await;
        }
    }

    /// Gives the task's place up to a waiting partition, at a record boundary: the output so
    /// far is flushed into the epoch, the slot keeps the position, and the coordinator queues
    /// the partition again.
    async fn rotate(&mut self) -> Result<(), PipelineError> {
        self.out.flush(&self.rt, &mut self.local).await?;
        self.publish_time();
        self.slot.rotated.set(true);
        Ok(())
    }

    /// Reads the next batch, retrying transient source errors with the `source` stage's
    /// policy. `None` when the pipeline stops meanwhile.
    async fn read(&mut self, batch: &mut SourceBatch<R::Position>) -> Result<Option<ReadStatus>, PipelineError> {
        let rt = self.rt.clone();
        let mut schedule: Option<RetryState> = None;
        loop {
            let next = super::catch_panic(|| "source".into(), self.reader.next_batch(batch, rt.batch_size)).await?;
            let err = match next {
                Ok(s) => {
                    self.slot.lag.set(self.reader.lag());
                    return Ok(Some(s));
                }
                Err(e) => e,
            };
            let mut f = Failure::from_error(&err).with_stage("source");
            rt.policies.classifier.apply(&mut f);
            let policy = match rt.policies.action("source", f.class) {
                Action::Retry { policy, .. } => *policy,
                _ => {
                    return Err(PipelineError::Source {
                        partition: self.local.partition.to_string(),
                        source: err,
                    });
                }
            };
            let now = rt.now();
            let st = schedule.get_or_insert_with(|| policy.start(now));
            let delay = st.next_delay(now, f.retry_after, &mut *rt.rng.borrow_mut());
            match delay {
                Ok(d) => {
                    tracing::warn!(partition = %self.local.partition, error = %err, retry_in_ms = d.as_millis() as u64, "reading the source failed; retrying");
                    batch.clear();
                    if !self.wait(d).await? {
                        return Ok(None);
                    }
                }
                Err(_) => {
                    return Err(PipelineError::Source {
                        partition: self.local.partition.to_string(),
                        source: err,
                    });
                }
            }
        }
    }

    /// At the boundary before record `i` of `batch` (or between batches, `i = 0`): serves a
    /// requested barrier, waits out a pause, and stops when the pipeline stops.
    async fn boundary(&mut self, batch: &SourceBatch<R::Position>, i: usize) -> Result<Next, PipelineError> {
        if i > 0 {
            *self.slot.position.borrow_mut() = Some(batch.positions[i - 1].clone());
        }
        loop {
            if self.rt.barrier.requested() {
                self.arrive().await?;
            }
            if self.rt.fatal.stop_now() {
                return Ok(Next::Stop);
            }
            if self.rt.fatal.is_set() {
                // the pipeline is stopping with a final checkpoint: let the coordinator ask
                // for the barrier instead of handling more records
                tokio::task::yield_now().await;
                continue;
            }
            match self.rt.pause.active_until() {
                Some(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = self.rt.barrier.wait_requested() => {}
                        _ = self.rt.fatal.notify.notified() => {}
                    }
                }
                None => return Ok(Next::Continue),
            }
        }
    }

    /// Waits `d` at a record boundary (the slot already holds the position before the
    /// waiting record), serving barriers and pauses. False when the pipeline stops.
    async fn wait(&mut self, d: Duration) -> Result<bool, PipelineError> {
        let until = Instant::now() + d;
        loop {
            if self.rt.barrier.requested() {
                self.arrive().await?;
            }
            if self.rt.fatal.stop_now() {
                return Ok(false);
            }
            let wake = self.rt.pause.active_until().map_or(until, |p| p.max(until));
            if Instant::now() >= wake {
                return Ok(true);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.rt.barrier.wait_requested() => {}
                _ = self.rt.fatal.notify.notified() => {}
            }
        }
    }

    /// One run of record `i` of `batch` through the flow and into the outboxes. On failure
    /// the outboxes are as before.
    async fn attempt(&mut self, rec: &Record) -> Result<u64, Failure> {
        let rt = self.rt.clone();
        admissible(&rt, rec)?;
        self.local.begin_record(Some(rec));
        let main_mark = self.out.main.len();
        self.local.side_marks(&mut self.marks);
        self.outputs.clear();
        let mut cx = Context::new(&rt.step, &mut self.local, Some(rec));
        let run = super::catch_panic(
            || "flow".into(),
            self.flow.process(rec.clone(), &mut cx, &mut self.outputs),
        )
        .await;
        self.outputs_of(run, main_mark)
    }

    /// [`attempt`](Self::attempt) for flows with a concurrent call: record `i` of `batch`
    /// runs through the window.
    async fn attempt_windowed(&mut self, batch: &SourceBatch<R::Position>, i: usize) -> Result<u64, Failure> {
        let rec = &batch.records[i];
        admissible(&self.rt, rec)?;
        let ahead = self.run_ahead(batch, i).await;
        self.local.begin_record(Some(rec));
        let main_mark = self.out.main.len();
        self.local.side_marks(&mut self.marks);
        self.outputs.clear();
        let run = self.finish_ahead(rec, ahead).await;
        self.outputs_of(run, main_mark)
    }

    /// Encodes the outputs of a run of the flow into the main outbox; on failure (of the
    /// run or of an encoding) the outboxes are rolled back to `main_mark` and the side marks.
    fn outputs_of(
        &mut self,
        run: Result<Result<(), Failure>, PipelineError>,
        main_mark: usize,
    ) -> Result<u64, Failure> {
        let mut result = match run {
            Ok(r) => r,
            Err(super::PipelineError::Panic { message, .. }) => {
                // not a record failure to route by policy: the step may be broken now
                return Err(Failure::fatal(reason::PANIC, message).with_stage("flow"));
            }
            Err(e) => return Err(Failure::fatal(reason::PANIC, e.to_string()).with_stage("flow")),
        };
        if result.is_ok() {
            let main = &self.rt.sinks[0];
            for o in self.outputs.drain(..) {
                let encoded = encode_main(&mut self.out.main, &mut self.encoder, &o, &mut self.scratch_key)
                    .and_then(|()| within_limit(&mut self.out.main, &main.limits));
                if let Err(f) = encoded {
                    result = Err(f.with_stage(main.name.clone()));
                    break;
                }
            }
        }
        match result {
            Ok(()) => Ok((self.out.main.len() - main_mark) as u64),
            Err(mut f) => {
                self.out.main.truncate(main_mark);
                self.local.rollback_side(&self.marks);
                if f.stage.is_empty() {
                    f.stage = "flow".into();
                }
                Err(f)
            }
        }
    }

    /// Flows with a concurrent call: admits the records after `i` into the window (their
    /// steps before the call run and their calls start), then returns record `i`'s entry,
    /// beginning it now if it has none (its first attempt at a window's edge, or a retry).
    async fn run_ahead(&mut self, batch: &SourceBatch<R::Position>, i: usize) -> Ahead {
        let Some(window) = &mut self.window else {
            return self.begin_ahead(batch, i).await;
        };
        for j in window.admit_after(i, batch.len()) {
            if admissible(&self.rt, &batch.records[j]).is_ok() {
                let ahead = self.begin_ahead(batch, j).await;
                if let Err(f) = &ahead.begun
                    && f.reason == reason::PANIC
                {
                    // the flow may be broken now: stop before record `i` goes on with it
                    return Ahead {
                        index: i,
                        key: None,
                        begun: Err(f.clone()),
                    };
                }
                if let Some(w) = &mut self.window {
                    w.push(ahead);
                }
            }
        }
        match self.window.as_mut().and_then(|w| w.take(i)) {
            Some(ahead) => ahead,
            None => self.begin_ahead(batch, i).await,
        }
    }

    /// Runs the steps before the concurrent call on record `j` (refusing keyed state, event
    /// time and side outputs) and starts its calls.
    async fn begin_ahead(&mut self, batch: &SourceBatch<R::Position>, j: usize) -> Ahead {
        let rec = &batch.records[j];
        self.local.begin_record(Some(rec));
        self.local.ahead = true;
        let mut calls = Vec::new();
        let mut cx = Context::new(&self.rt.step, &mut self.local, Some(rec));
        let begun = match super::catch_panic(|| "flow".into(), self.flow.begin(rec.clone(), &mut cx, &mut calls)).await
        {
            Ok(Ok(())) => Ok(calls.into_iter().map(Started::spawn).collect()),
            Ok(Err(f)) => Err(f),
            Err(e) => Err(Failure::fatal(reason::PANIC, panic_text(e)).with_stage("flow")),
        };
        self.local.ahead = false;
        Ahead {
            index: j,
            key: self.local.has_key.then(|| self.local.key.clone()),
            begun,
        }
    }

    /// Waits for the calls of record `rec`'s entry, then runs the steps after the call on
    /// their values, in order, into `self.outputs`.
    async fn finish_ahead(&mut self, rec: &Record, ahead: Ahead) -> Result<Result<(), Failure>, PipelineError> {
        let calls = match ahead.begun {
            Ok(calls) => calls,
            Err(f) => return Ok(Err(f)),
        };
        let mut values = Vec::with_capacity(calls.len());
        for call in calls {
            match call.value().await {
                Ok(v) => values.push(v),
                Err(f) => return Ok(Err(f)),
            }
        }
        if let Some(key) = &ahead.key {
            self.local.key.clone_from(key);
            self.local.has_key = true;
        }
        let rt = self.rt.clone();
        let mut cx = Context::new(&rt.step, &mut self.local, Some(rec));
        for v in values {
            let r = super::catch_panic(|| "flow".into(), self.flow.resume(v, &mut cx, &mut self.outputs)).await?;
            if r.is_err() {
                return Ok(r);
            }
        }
        Ok(Ok(()))
    }

    /// Handles record `i` of `batch` to its end: outputs, retries, pauses, dead letter, skip,
    /// or stopping the pipeline.
    async fn record(&mut self, batch: &SourceBatch<R::Position>, i: usize) -> Result<Outcome, PipelineError> {
        let rt = self.rt.clone();
        let rec = &batch.records[i];
        let mut attempts = 0u32;
        let mut schedule: Option<RetryState> = None;
        let mut pauses = 0u32;
        let mut first_failed_ms = 0u64;
        // the stage of the last retried failure: a success after it counts for that stage
        let mut retried_at: Option<String> = None;
        'attempt: loop {
            attempts += 1;
            // the windowed path is boxed: its states stay out of this future, which every
            // record of every flow runs through
            let attempt = match self.window.is_some() {
                false => self.attempt(rec).await,
                true => Box::pin(self.attempt_windowed(batch, i)).await,
            };
            let mut failure = match attempt {
                Ok(out) => {
                    if let Some(stage) = &retried_at {
                        rt.metrics.retry(stage, "succeeded", None);
                    }
                    return Ok(Outcome::Out(out));
                }
                Err(f) => f,
            };
            if failure.reason == reason::PANIC {
                // whatever the policies say: the step's own state can no longer be trusted
                return Err(PipelineError::Panic {
                    stage: failure.stage.clone(),
                    message: failure.message.clone(),
                });
            }
            if first_failed_ms == 0 {
                first_failed_ms = now_ms();
            }
            rt.policies.classifier.apply(&mut failure);
            let dirty = self.local.state_changed.get();
            let mut action = rt.policies.action(&failure.stage, failure.class).clone();
            loop {
                match action {
                    Action::Retry { policy, then } => {
                        if dirty {
                            note_no_retry(&mut failure, "the failed attempt changed keyed state");
                            action = *then;
                            continue;
                        }
                        let now = rt.now();
                        let st = schedule.get_or_insert_with(|| policy.start(now));
                        let delay = st.next_delay(now, failure.retry_after, &mut *rt.rng.borrow_mut());
                        match delay {
                            Ok(d) if rt.policies.budget.as_ref().is_none_or(|b| b.withdraw(now)) => {
                                rt.metrics.retry(&failure.stage, "attempted", Some(d));
                                retried_at = Some(failure.stage.clone());
                                self.notify(&failure, attempts, "retry");
                                rt.counters.retries.set(rt.counters.retries.get() + 1);
                                self.hold_before(batch, i);
                                if !self.wait(d).await? {
                                    return Ok(Outcome::Stop);
                                }
                                continue 'attempt;
                            }
                            Ok(_) => {
                                rt.metrics.retry_refused(&failure.stage);
                                rt.metrics.retry(&failure.stage, "exhausted", None);
                                exhausted(&mut failure, attempts, "the pipeline's retry budget is used up");
                                action = *then;
                            }
                            Err(_) => {
                                rt.metrics.retry(&failure.stage, "exhausted", None);
                                exhausted(&mut failure, attempts, "no attempts left");
                                action = *then;
                            }
                        }
                    }
                    Action::Pause {
                        duration,
                        max_pauses,
                        then,
                    } => {
                        if dirty || pauses >= max_pauses {
                            if dirty {
                                note_no_retry(&mut failure, "the failed attempt changed keyed state");
                            } else {
                                exhausted(&mut failure, attempts, "paused too often");
                            }
                            action = *then;
                            continue;
                        }
                        pauses += 1;
                        let d = failure.retry_after.unwrap_or(duration);
                        self.notify(&failure, attempts, "pause");
                        rt.pause_until(Instant::now() + d, "a throttled failure");
                        self.hold_before(batch, i);
                        if !self.wait(d).await? {
                            return Ok(Outcome::Stop);
                        }
                        continue 'attempt;
                    }
                    Action::DeadLetter if rt.dead_letter_sink.is_none() => {
                        note_no_retry(&mut failure, "the pipeline has no dead-letter output");
                        action = Action::Fail;
                    }
                    Action::DeadLetter => {
                        self.notify(&failure, attempts, "dead_letter");
                        self.dead_letter(rec, &batch.positions[i], &failure, attempts, first_failed_ms)
                            .await?;
                        return Ok(Outcome::Dead);
                    }
                    Action::Skip => {
                        self.notify(&failure, attempts, "skip");
                        tracing::debug!(partition = %self.local.partition, failure = %failure, "record skipped");
                        rt.counters.skipped.set(rt.counters.skipped.get() + 1);
                        return Ok(Outcome::Skipped);
                    }
                    Action::Fail | Action::Abort => {
                        let name = action.name();
                        self.notify(&failure, attempts, name);
                        // the record is not handled: a final checkpoint holds the position
                        // before it, which is consistent only if it changed no state
                        self.hold_before(batch, i);
                        if !dirty {
                            // the outputs of the records before it belong to the final
                            // checkpoint: hand them to the sinks before leaving
                            self.out.flush(&rt, &mut self.local).await?;
                            self.publish_time();
                        }
                        let partition = self.local.partition.to_string();
                        let error = if name == "abort" {
                            PipelineError::Aborted {
                                reason: format!("a `{}` failure in partition {partition}: {failure}", failure.reason),
                                summary: None,
                            }
                        } else {
                            PipelineError::Record {
                                partition,
                                failure: Box::new(failure),
                            }
                        };
                        rt.fatal.set(error, !dirty);
                        return Ok(Outcome::Stop);
                    }
                }
            }
        }
    }

    /// Publishes the position before record `i`: the record is not handled yet.
    fn hold_before(&self, batch: &SourceBatch<R::Position>, i: usize) {
        if i > 0 {
            *self.slot.position.borrow_mut() = Some(batch.positions[i - 1].clone());
        }
    }

    fn notify(&self, failure: &Failure, attempts: u32, action: &'static str) {
        self.rt.failures.record(failure, action);
        self.rt.policies.notify(&FailureEvent {
            failure,
            partition: &self.local.partition,
            attempts,
            action,
        });
    }

    /// Adds the records handled since the last call to the run's counters. Called before a
    /// task reaches a barrier (wherever that happens: a record boundary, a retry's wait), so a
    /// checkpoint's counts describe exactly the records its positions cover (I3).
    fn count(&mut self) {
        let Tally {
            handled,
            bytes,
            out,
            dead,
        } = std::mem::take(&mut self.tally);
        let rt = &self.rt;
        let c = &rt.counters;
        c.records_in.set(c.records_in.get() + handled);
        c.bytes_in.set(c.bytes_in.get() + bytes);
        self.read.increment(handled);
        rt.metrics.uncommitted(
            c.records_in.get().saturating_sub(c.records_at_checkpoint.get()),
            c.bytes_in.get().saturating_sub(c.bytes_at_checkpoint.get()),
        );
        c.records_out.set(c.records_out.get() + out);
        c.dead_letters.set(c.dead_letters.get() + dead);
        if let Some(budget) = &rt.policies.budget {
            // first attempts are what retries are budgeted against
            for _ in 0..handled.min(64) {
                budget.deposit(rt.now());
            }
        }
        if self.local.late_dropped > 0 {
            c.late_dropped.set(c.late_dropped.get() + self.local.late_dropped);
            self.local.late_dropped = 0;
        }
        rt.progress.set_records(
            c.records_in.get(),
            c.records_out.get(),
            c.dead_letters.get(),
            c.late_dropped.get(),
        );
    }

    fn publish_time(&self) {
        if self.local.max_event_time.is_some() {
            self.slot.max_event_time.set(self.local.max_event_time);
        }
    }

    /// Stops at the barrier: flush, publish, wait for the release.
    async fn arrive(&mut self) -> Result<(), PipelineError> {
        self.count();
        self.out.flush(&self.rt, &mut self.local).await?;
        self.publish_time();
        let mut release = self.rt.barrier.arrive();
        tokio::select! {
            _ = release.changed() => {}
            _ = self.rt.fatal.notify.notified(), if self.rt.fatal.stop_now() => {}
        }
        Ok(())
    }

    /// Writes the dead letter of `rec` into the outbox, within the rate limit and the error
    /// budget.
    async fn dead_letter(
        &mut self,
        rec: &Record,
        position: &R::Position,
        failure: &Failure,
        attempts: u32,
        first_failed_ms: u64,
    ) -> Result<(), PipelineError> {
        let rt = self.rt.clone();
        if let Some(wait) = rt.failures.dead_letter_delay(rt.now()) {
            rt.metrics.dead_letter_rate_limited();
            tokio::time::sleep(wait).await;
        }
        let partition = self.local.partition.to_string();
        let position = serde_json::to_value(position).unwrap_or(serde_json::Value::Null);
        let env = Envelope::new(
            rec,
            failure,
            Provenance {
                pipeline: &rt.step.pipeline,
                partition: &partition,
                position: &position,
                epoch: rt.epoch.get(),
                attempts,
                first_failed_ms,
                last_failed_ms: now_ms(),
            },
        );
        push_envelope(&mut self.out.dead, &env);
        if let Some(why) = rt.failures.dead_letter(rt.now()) {
            rt.budget_exceeded(why);
        }
        Ok(())
    }
}

/// The checks a record passes before any step sees it: a failure its source attached, and
/// the size limit.
#[inline]
fn admissible(rt: &RuntimeShared, rec: &Record) -> Result<(), Failure> {
    if !rec.headers.is_empty()
        && let Some(f) = rec.source_failure()
    {
        return Err(f);
    }
    if let Some(max) = rt.policies.max_record_bytes
        && rec.value.len() > max
    {
        return Err(Failure::permanent(
            reason::OVERSIZED,
            format!(
                "record of {} bytes is larger than the maximum of {max}",
                rec.value.len()
            ),
        )
        .with_stage("source"));
    }
    Ok(())
}

fn panic_text(e: PipelineError) -> String {
    match e {
        PipelineError::Panic { message, .. } => message,
        other => other.to_string(),
    }
}

fn note_no_retry(f: &mut Failure, why: &str) {
    f.chain.push(format!("not retried: {why}"));
}

fn exhausted(f: &mut Failure, attempts: u32, why: &str) {
    let was = format!("{}: {}", f.reason, f.message);
    f.chain.insert(0, was);
    f.message = format!("gave up after {attempts} attempts ({why}): {}", f.message);
    f.reason = reason::RETRIES_EXHAUSTED.into();
}

/// Encodes a stream item for the main sink (used for end-of-input outputs too).
pub(crate) fn encode_main<T, E: Encoder<T>>(
    out: &mut OutBatch,
    encoder: &mut E,
    item: &T,
    scratch_key: &mut Vec<u8>,
) -> Result<(), Failure> {
    scratch_key.clear();
    let has_key = encoder.key(item, scratch_key);
    let key = has_key.then_some(&scratch_key[..]);
    out.push_with(key, |buf| encoder.encode(item, buf))
}

/// The record pushed last onto `out`, if over the sink's size limit (`oversized`) or
/// refused by its check, is taken back out and fails (the caller sets the sink's stage).
#[inline]
pub(crate) fn within_limit(out: &mut OutBatch, limits: &RecordLimits) -> Result<(), Failure> {
    if let Some(max) = limits.max_bytes {
        let size = out.last_record_bytes();
        if size > max {
            out.truncate(out.len() - 1);
            return Err(Failure::permanent(
                reason::OVERSIZED,
                format!("an output record of {size} bytes is larger than the sink's maximum of {max}"),
            ));
        }
    }
    if let Some(check) = &limits.check
        && let Some(last) = out.last()
        && let Err(f) = check(last)
    {
        out.truncate(out.len() - 1);
        return Err(f);
    }
    Ok(())
}
