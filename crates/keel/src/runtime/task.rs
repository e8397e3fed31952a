//! A partition task: reads one partition in order and runs each record through the flow.
//!
//! Invariants:
//! - The published position is always the position after the last record whose outputs
//!   (main, side and dead letters) are in this task's outboxes or already in the sinks.
//! - Before arriving at a barrier, the task writes its outboxes to the sinks, so the sealed
//!   epoch holds exactly the records up to the published position.
//! - A record that fails leaves no output behind: outboxes are rolled back to where they
//!   were before the record.

use std::rc::Rc;
use std::time::Instant;

use super::PipelineError;
use super::shared::{RuntimeShared, TaskSlot};
use crate::context::{Context, TaskLocal};
use crate::dead_letter::{Envelope, Provenance};
use crate::failure::{Class, Failure};
use crate::record::{Record, SourceBatch};
use crate::sink::{Encoder, Framing, OutBatch};
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

    /// Writes every non-empty outbox to its sink (side outboxes live in `local`).
    pub(crate) async fn flush(
        &mut self,
        rt: &RuntimeShared,
        local: &mut TaskLocal,
    ) -> Result<(), PipelineError> {
        let epoch = rt.epoch.get();
        if !self.main.is_empty() {
            write(rt, 0, epoch, &self.main).await?;
            self.main.clear();
        }
        for (i, side) in local.side.iter_mut().enumerate() {
            if !side.is_empty() {
                write(rt, i + 1, epoch, side).await?;
                side.clear();
            }
        }
        if let Some(d) = rt.dead_letter_sink
            && !self.dead.is_empty()
        {
            write(rt, d, epoch, &self.dead).await?;
            self.dead.clear();
        }
        Ok(())
    }

    fn bytes(&self, local: &TaskLocal) -> usize {
        self.main.bytes()
            + self.dead.bytes()
            + local.side.iter().map(OutBatch::bytes).sum::<usize>()
    }
}

async fn write(
    rt: &RuntimeShared,
    sink: usize,
    epoch: u64,
    batch: &OutBatch,
) -> Result<(), PipelineError> {
    let handle = &rt.sinks[sink];
    let mut s = handle.sink.lock().await;
    s.write(epoch, batch)
        .await
        .map_err(|e| PipelineError::Sink {
            sink: handle.name.clone(),
            source: e,
        })
}

/// Runs one partition until its end, a fatal error, or forever (unbounded sources).
pub(crate) struct PartitionTask<R: PartitionReader, S, E> {
    pub(crate) rt: Rc<RuntimeShared>,
    pub(crate) slot: Rc<TaskSlot<R::Position>>,
    pub(crate) reader: R,
    pub(crate) flow: S,
    pub(crate) encoder: E,
    pub(crate) local: TaskLocal,
    pub(crate) out: Outboxes,
}

impl<R, S, E> PartitionTask<R, S, E>
where
    R: PartitionReader,
    R::Position: serde::Serialize,
    S: Step<Record>,
    E: crate::sink::Encoder<S::Out>,
{
    /// The coordinator has counted this task as running (`Barrier::task_started`) and set
    /// `slot.running` before spawning it.
    pub(crate) async fn run(mut self) {
        let result = self.read_all().await;
        self.slot.running.set(false);
        if let Err(e) = result {
            self.rt.fatal.set(e);
        }
        self.rt.barrier.task_ended();
        self.rt.task_exit.notify_one();
    }

    async fn read_all(&mut self) -> Result<(), PipelineError> {
        let rt = self.rt.clone();
        let mut batch: SourceBatch<R::Position> = SourceBatch::default();
        let mut outputs: Vec<S::Out> = Vec::new();
        let mut marks: Vec<usize> = Vec::new();
        let mut idle_since: Option<Instant> = None;
        let mut scratch_key = Vec::new();
        loop {
            if rt.barrier.requested() {
                self.arrive().await?;
            }
            if rt.fatal.is_set() {
                return Ok(());
            }
            batch.clear();
            let status = self
                .reader
                .next_batch(&mut batch, rt.batch_size)
                .await
                .map_err(|e| PipelineError::Source {
                    partition: self.local.partition.to_string(),
                    source: e,
                })?;
            match status {
                ReadStatus::End => {
                    self.out.flush(&rt, &mut self.local).await?;
                    self.slot.done.set(true);
                    self.publish_time();
                    return Ok(());
                }
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
                }
            }
            let n = batch.len();
            let mut handled = 0u64;
            let mut out_count = 0u64;
            let mut dead_count = 0u64;
            for i in 0..n {
                let rec = &batch.records[i];
                self.local.begin_record(Some(rec));
                let main_mark = self.out.main.len();
                self.local.side_marks(&mut marks);
                outputs.clear();
                let mut cx = Context::new(&rt.step, &mut self.local, Some(rec));
                let mut result = self.flow.process(rec.clone(), &mut cx, &mut outputs).await;
                if result.is_ok() {
                    for o in outputs.drain(..) {
                        if let Err(f) =
                            encode_main(&mut self.out.main, &mut self.encoder, &o, &mut scratch_key)
                        {
                            result = Err(f.with_stage(rt.sinks[0].name.clone()));
                            break;
                        }
                    }
                }
                match result {
                    Ok(()) => out_count += (self.out.main.len() - main_mark) as u64,
                    Err(failure) => {
                        self.out.main.truncate(main_mark);
                        self.local.rollback_side(&marks);
                        self.dead_letter(rec, &batch.positions[i], failure)?;
                        dead_count += 1;
                    }
                }
                handled += 1;
                if rt.barrier.requested() && i + 1 < n {
                    *self.slot.position.borrow_mut() = Some(batch.positions[i].clone());
                    self.count(handled, out_count, dead_count);
                    (handled, out_count, dead_count) = (0, 0, 0);
                    self.arrive().await?;
                    if rt.fatal.is_set() {
                        return Ok(());
                    }
                }
            }
            if let Some(p) = batch.positions.last() {
                *self.slot.position.borrow_mut() = Some(p.clone());
            }
            self.count(handled, out_count, dead_count);
            self.publish_time();
            if self.out.bytes(&self.local) >= rt.flush_bytes {
                self.out.flush(&rt, &mut self.local).await?;
            }
            tokio::task::yield_now().await;
        }
    }

    fn count(&mut self, handled: u64, out: u64, dead: u64) {
        let c = &self.rt.counters;
        c.records_in.set(c.records_in.get() + handled);
        c.records_out.set(c.records_out.get() + out);
        c.dead_letters.set(c.dead_letters.get() + dead);
        if self.local.late_dropped > 0 {
            c.late_dropped
                .set(c.late_dropped.get() + self.local.late_dropped);
            self.local.late_dropped = 0;
        }
        self.rt.progress.set_records(
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
        self.out.flush(&self.rt, &mut self.local).await?;
        self.publish_time();
        let mut release = self.rt.barrier.arrive();
        tokio::select! {
            _ = release.changed() => {}
            _ = self.rt.fatal.notify.notified() => {}
        }
        Ok(())
    }

    /// Routes a failed record: permanent failures to the dead-letter output, anything else
    /// stops the pipeline.
    fn dead_letter(
        &mut self,
        rec: &Record,
        position: &R::Position,
        mut failure: Failure,
    ) -> Result<(), PipelineError> {
        if failure.stage.is_empty() {
            failure.stage = "flow".into();
        }
        let partition = self.local.partition.to_string();
        if failure.class != Class::Permanent || self.rt.dead_letter_sink.is_none() {
            return Err(PipelineError::Record {
                partition,
                failure: Box::new(failure),
            });
        }
        let position = serde_json::to_value(position).unwrap_or(serde_json::Value::Null);
        let now = now_ms();
        let env = Envelope::new(
            rec,
            &failure,
            Provenance {
                pipeline: &self.rt.step.pipeline,
                partition: &partition,
                position: &position,
                epoch: self.rt.epoch.get(),
                attempts: 1,
                first_failed_ms: now,
                last_failed_ms: now,
            },
        );
        self.out
            .dead
            .push_with::<()>(None, |buf| {
                env.encode(buf);
                Ok(())
            })
            .ok();
        Ok(())
    }
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
