//! The coordinator: recovery on start, opening partitions, triggering checkpoints, ending.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::checkpointer::{Checkpointer, Completion, Job};
use super::shared::{RuntimeShared, SinkHandle, TaskSlot};
use super::task::{Outboxes, PartitionTask, encode_main, within_limit};
use super::window::Window;
use super::{NamedSink, Outcome, Pipeline, PipelineError, RunSummary};
use crate::checkpoint::recovery;
use crate::checkpoint::{
    CheckpointId, CheckpointStore, Manifest, ManifestRead, PartitionCheckpoint, RunStats, StateFiles,
};
use crate::context::{Context, SideSink, StepShared, TaskLocal};
use crate::policy::CircuitBreaker;
use crate::record::Record;
use crate::sink::{Encoder, RecordLimits};
use crate::source::Source;
use crate::state::StateStore;
use crate::step::Step;
use crate::time::{PartitionTime, pipeline_watermark};
use crate::util::now_ms;

/// Runs a pipeline to its end. See the module docs of [`crate::checkpoint`].
pub(crate) async fn run<Src, S, E>(p: Pipeline<Src, S, E>) -> Result<RunSummary, PipelineError>
where
    Src: Source,
    S: Step<Record>,
    E: Encoder<S::Out>,
{
    let started = Instant::now();
    let Pipeline {
        name,
        mut source,
        flow,
        encoder,
        main,
        side,
        dead_letters,
        fallback,
        store,
        options,
        progress,
        shutdown,
    } = p;

    let mut sinks: Vec<NamedSink> = std::iter::once(main).chain(side).collect();
    let side_count = sinks.len() - 1;
    let dead_index = dead_letters.map(|d| {
        sinks.push(d);
        sinks.len() - 1
    });
    let fallback_index = match (dead_index, fallback) {
        (Some(_), Some(f)) => {
            sinks.push(f);
            Some(sinks.len() - 1)
        }
        _ => None,
    };

    // 1. Choose the checkpoint to restore and restore its state.
    if options.from_scratch
        && let Some(store) = &store
    {
        wipe(store.as_ref())?;
        tracing::info!(store = %store.describe(), "starting from scratch: checkpoints deleted");
    }
    let mut highest = None;
    for s in &mut sinks {
        let h = s.sink.highest_epoch().await.map_err(|e| PipelineError::Sink {
            sink: s.name.clone(),
            source: e,
        })?;
        highest = highest.max(h);
    }
    // Nothing is changed on disk until the decision is made: a read error stops the run here
    // (I7), before any fallback could roll back the output of newer epochs.
    let unreadable = |e: std::io::Error| {
        PipelineError::Checkpoint(format!(
            "cannot read the checkpoints: {e}; nothing was changed, fix the cause and run again"
        ))
    };
    let mut reads = match &store {
        Some(st) => st.read_all().map_err(unreadable)?,
        None => Vec::new(),
    };
    let mut state = StateStore::new(options.snapshots);
    let plan = loop {
        let plan = recovery::decide(&reads, highest).map_err(|e| PipelineError::Checkpoint(e.to_string()))?;
        let Some(m) = &plan.restore else { break plan };
        let Some(st) = &store else { break plan };
        match state.restore(&m.state.files, |n| st.read_state(n)) {
            Ok(()) => break plan,
            Err(e) if !e.is_corruption() => {
                return Err(PipelineError::Checkpoint(format!(
                    "checkpoint {}: {e}; nothing was changed, fix the cause and run again",
                    m.id
                )));
            }
            Err(e) => {
                tracing::warn!(checkpoint = m.id, error = %e, "checkpoint state is unusable; falling back to the previous checkpoint");
                let id = m.id;
                for r in reads.iter_mut() {
                    if r.id() == id {
                        *r = ManifestRead::Corrupt {
                            id,
                            reason: format!("state: {e}"),
                        };
                    }
                }
            }
        }
    };
    if let Some(st) = &store {
        st.remove_temp_files()
            .map_err(|e| PipelineError::Checkpoint(format!("cleaning temp files: {e}")))?;
    }
    for (id, reason) in &plan.skipped {
        tracing::warn!(checkpoint = id, reason = %reason, "checkpoint is unusable; falling back to the previous one");
    }
    if let Some(m) = &plan.restore {
        tracing::info!(
            checkpoint = m.id,
            keys = state.len(),
            partitions = m.partitions.len(),
            "restored checkpoint"
        );
        if !options.fingerprint.is_empty() && !m.fingerprint.is_empty() && m.fingerprint != options.fingerprint {
            tracing::warn!(
                checkpoint = m.id,
                "the pipeline definition changed since this checkpoint was written; resuming with the new one"
            );
        }
    }

    // 2. Sinks finish interrupted commits and discard epochs after the checkpoint.
    for s in &mut sinks {
        let mut recovery = plan.sink(&s.name);
        recovery.pipeline = name.clone();
        recovery.from_scratch = options.from_scratch;
        recovery.checkpoint_interval = options.checkpoint_interval;
        let r = s.sink.recover(&recovery).await.map_err(|e| PipelineError::Sink {
            sink: s.name.clone(),
            source: e,
        })?;
        if r.rolled_back > 0 {
            tracing::warn!(sink = %s.name, files = r.rolled_back, "removed committed output that no usable checkpoint covers; it will be produced again");
        }
        if r.committed + r.aborted > 0 {
            tracing::info!(sink = %s.name, finished_commits = r.committed, discarded = r.aborted, "sink recovered");
        }
    }
    let restored_from = plan.restored_id();
    let base_stats = plan.restore.as_ref().map(|m| m.stats).unwrap_or_default();
    // A finished run is finished for the input it saw: a partition that did not exist then
    // (a file added since) is read by this run, with the restored state.
    // A source whose ends are not final (a broker in bounded mode) is read on from its
    // positions, whether or not the last run finished.
    let ends_are_final = source.ends_are_final();
    let new_input = match plan.restore.as_ref().filter(|m| m.finished && ends_are_final) {
        Some(m) => super::catch_panic(|| "source".into(), source.discover())
            .await?
            .map_err(|e| PipelineError::Source {
                partition: String::new(),
                source: e,
            })?
            .into_iter()
            .filter(|p| !m.partitions.contains_key(p))
            .count(),
        None => 0,
    };
    if new_input > 0 {
        tracing::info!(partitions = new_input, "new input since the run finished: reading it");
    }
    if let Some(m) = plan
        .restore
        .as_ref()
        .filter(|m| m.finished && ends_are_final && new_input == 0)
    {
        progress.set_finished();
        return Ok(RunSummary {
            outcome: Outcome::AlreadyFinished,
            restored_from,
            records_in: 0,
            records_out: 0,
            dead_letters: 0,
            late_dropped: 0,
            checkpoints: 0,
            last_checkpoint: Some(m.id),
            totals: base_stats,
            elapsed: started.elapsed(),
            startup: started.elapsed(),
            skipped: 0,
            retries: 0,
            pauses: 0,
            sink_failures: (0, 0),
            breakers: Vec::new(),
            failures: Vec::new(),
        });
    }

    // 3. The shared runtime and the checkpoint thread.
    // after recovery: a sink's limits may depend on what it learnt there (a server's limit)
    let side_sinks: Vec<SideSink> = sinks[1..=side_count]
        .iter()
        .map(|s| SideSink {
            name: s.name.clone(),
            framing: s.sink.framing(),
            limits: RecordLimits::of(s.sink.as_ref()),
        })
        .collect();
    let step_shared = StepShared::new(&name, state, options.watermarks, side_sinks);
    step_shared
        .watermark
        .set(plan.restore.as_ref().and_then(|m| m.watermark));
    let run_metrics = crate::metrics::RunMetrics::new(&name);
    if options.policies.sink_breaker.is_some() {
        // every breaker's gauge exists from the start, closed
        for s in &sinks {
            run_metrics.breaker(&s.name, crate::policy::BreakerState::Closed, false, false);
        }
    }
    let handles: Vec<SinkHandle> = sinks
        .into_iter()
        .map(|s| SinkHandle {
            written: run_metrics.records_written(&s.name),
            breaker: options
                .policies
                .sink_breaker
                .map(|c| RefCell::new(CircuitBreaker::new(s.name.clone(), c))),
            name: s.name,
            framing: s.sink.framing(),
            limits: RecordLimits::of(s.sink.as_ref()),
            sink: tokio::sync::Mutex::new(s.sink),
        })
        .collect();
    let rt = RuntimeShared::new(
        step_shared,
        handles,
        dead_index,
        fallback_index,
        options.policies.clone(),
        plan.next_epoch,
        progress.clone(),
        run_metrics.clone(),
        options.listeners.clone(),
        options.batch_size,
        options.flush_bytes,
        options.poll_interval,
        options.max_records_per_second,
    );
    let chain = rt.step.state.borrow().restored_chain();
    let checkpointer = Checkpointer::spawn(
        store.clone(),
        options.retain,
        2,
        options.snapshots,
        chain,
        run_metrics.clone(),
    )
    .map_err(|e| PipelineError::Runtime(format!("cannot start the checkpoint thread: {e}")))?;

    let mut slots = BTreeMap::new();
    if let Some(m) = &plan.restore {
        for (pid, pc) in &m.partitions {
            let position = if pc.done && pc.position.is_null() {
                None
            } else {
                Some(
                    serde_json::from_value::<Src::Position>(pc.position.clone()).map_err(|e| {
                        PipelineError::Checkpoint(format!(
                            "checkpoint {}: position of partition {pid} does not decode for this source: {e}",
                            m.id
                        ))
                    })?,
                )
            };
            let done = pc.done && ends_are_final;
            slots.insert(pid.clone(), TaskSlot::new(position, done, pc.max_event_time));
        }
    }

    let mut c = Coordinator {
        name,
        flow,
        encoder,
        rt,
        slots,
        pending: VecDeque::new(),
        tasks: Vec::new(),
        epoch: plan.next_epoch,
        base_stats,
        checkpointer,
        acks: BTreeMap::new(),
        counted: BTreeMap::new(),
        completed: 0,
        last_completed: None,
        store_present: store.is_some(),
        fingerprint: options.fingerprint.clone(),
        max_open: options.max_open_partitions,
        restored: restored_from.is_some(),
        started,
        log_lifecycle: options.log_lifecycle,
        signals: None,
        shutdown: None,
        handed_over: None,
    };
    c.discover(&mut source).await?;
    let startup = started.elapsed();
    c.rt.metrics.recovered(startup);
    c.rt.metrics.interval(options.checkpoint_interval);
    c.rt.metrics.ready(true);
    c.rt.progress.set_ready(true);
    if c.log_lifecycle {
        tracing::info!(
            pipeline = %c.name,
            epoch = c.epoch,
            partitions = c.pending.len(),
            startup_ms = startup.as_millis() as u64,
            "pipeline started"
        );
    } else {
        tracing::debug!(pipeline = %c.name, epoch = c.epoch, "pipeline started");
    }

    c.shutdown = Some(shutdown.clone());
    if options.handle_signals {
        // a runtime without its I/O driver (a user's own, for `run_local`) cannot watch
        // signals: the run goes on, stoppable with its ShutdownHandle
        match Signals::new() {
            Ok(s) => c.signals = Some(s),
            Err(e) => tracing::warn!("{e}; SIGINT and SIGTERM are not handled by this run (use its ShutdownHandle)"),
        }
    }
    let result = c.main_loop(&mut source, &options).await;
    c.rt.metrics.ready(false);
    c.rt.progress.set_ready(false);
    for t in c.tasks.drain(..) {
        t.abort();
    }
    c.checkpointer.join();
    progress.set_finished();
    let summary = |outcome| {
        let rt = &c.rt;
        let counters = &rt.counters;
        RunSummary {
            outcome,
            restored_from,
            records_in: counters.records_in.get(),
            records_out: counters.records_out.get(),
            dead_letters: counters.dead_letters.get(),
            late_dropped: counters.late_dropped.get(),
            checkpoints: c.completed,
            last_checkpoint: c.last_completed.or(restored_from),
            totals: c.stats(),
            elapsed: started.elapsed(),
            startup,
            skipped: counters.skipped.get(),
            retries: counters.retries.get(),
            pauses: rt.pause.count(),
            sink_failures: (counters.sink_failures.get(), counters.sink_retries.get()),
            breakers: rt
                .sinks
                .iter()
                .filter_map(|h| h.breaker.as_ref().map(|b| (h.name.clone(), b.borrow().stats())))
                .collect(),
            failures: rt.failures.summary(),
        }
    };
    match result {
        Ok(outcome) => Ok(summary(outcome)),
        // an abort keeps what the run did: its counts and its last checkpoint
        Err(PipelineError::Aborted { reason, .. }) => Err(PipelineError::Aborted {
            reason,
            summary: Some(Box::new(summary(Outcome::Aborted))),
        }),
        Err(e) => Err(e),
    }
}

fn wipe(store: &dyn CheckpointStore) -> Result<(), PipelineError> {
    let err = |e: std::io::Error| PipelineError::Checkpoint(format!("deleting checkpoints: {e}"));
    for id in store.list().map_err(err)? {
        store.delete_manifest(id).map_err(err)?;
    }
    for name in store.list_state().map_err(err)? {
        store.delete_state(&name).map_err(err)?;
    }
    Ok(())
}

struct Coordinator<Src: Source, S, E> {
    name: String,
    flow: S,
    encoder: E,
    rt: Rc<RuntimeShared>,
    slots: BTreeMap<String, Rc<TaskSlot<Src::Position>>>,
    pending: VecDeque<String>,
    tasks: Vec<JoinHandle<()>>,
    epoch: CheckpointId,
    base_stats: RunStats,
    checkpointer: Checkpointer,
    acks: BTreeMap<CheckpointId, Vec<(String, Src::Position)>>,
    /// `records_in` and `bytes_in` at each checkpoint in flight (the uncommitted gauges).
    counted: BTreeMap<CheckpointId, (u64, u64)>,
    completed: u64,
    last_completed: Option<CheckpointId>,
    store_present: bool,
    fingerprint: String,
    max_open: usize,
    restored: bool,
    started: Instant,
    log_lifecycle: bool,
    /// SIGINT and SIGTERM, when the run handles them (taken after the first one).
    signals: Option<Signals>,
    /// The run's shutdown handle.
    shutdown: Option<super::ShutdownHandle>,
    /// The last checkpoint handed to the checkpoint thread in this run.
    handed_over: Option<CheckpointId>,
}

/// How soon the first checkpoint follows a restore (when the interval is longer).
const FIRST_AFTER_RESTORE: Duration = Duration::from_millis(200);

impl<Src, S, E> Coordinator<Src, S, E>
where
    Src: Source,
    S: Step<Record>,
    E: Encoder<S::Out>,
{
    async fn main_loop(&mut self, source: &mut Src, options: &super::Options) -> Result<Outcome, PipelineError> {
        let interval = options.checkpoint_interval;
        // After a restore, the first checkpoint comes early: readers get the replayed output
        // soon, and a second crash replays little.
        let first = |d: Duration| {
            if self.restored { d.min(FIRST_AFTER_RESTORE) } else { d }
        };
        let mut next_checkpoint = interval.map(|d| tokio::time::Instant::now() + first(d));
        let mut watermark_tick = tokio::time::interval(Duration::from_millis(100));
        watermark_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let discovery_every = source.discovery_interval().filter(|_| !source.is_bounded());
        let mut next_discovery = discovery_every.map(|d| tokio::time::Instant::now() + d);

        loop {
            if let Some((e, final_checkpoint)) = self.rt.fatal.take() {
                if final_checkpoint {
                    tracing::warn!(error = %e, "stopping: taking a final checkpoint first");
                    self.update_watermark();
                    if let Err(ce) = self.checkpoint(source, false, false).await.and_then(|taken| {
                        taken.then_some(()).ok_or_else(|| {
                            PipelineError::Runtime("no final checkpoint: tasks are held by a sink that is down".into())
                        })
                    }) {
                        tracing::error!(error = %ce, "the final checkpoint failed; the previous one stays valid");
                    } else if let Err(de) = self.drain(source).await {
                        tracing::error!(error = %de, "the final checkpoint failed; the previous one stays valid");
                    }
                }
                return Err(e);
            }
            self.open_partitions(source).await?;
            if source.is_bounded() && self.rt.barrier.running() == 0 && self.pending.is_empty() {
                self.update_watermark();
                self.finish_input().await?;
                if !self.checkpoint(source, true, false).await? {
                    return self.stop_at_last_checkpoint(source).await;
                }
                self.drain(source).await?;
                return Ok(Outcome::Finished);
            }
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                _ = self.rt.fatal.notify.notified() => {}
                _ = self.rt.pause.started() => {
                    // a pause starts: checkpoint what is done, while input waits
                    self.update_watermark();
                    if !self.checkpoint(source, false, true).await? {
                        return self.stop_at_last_checkpoint(source).await;
                    }
                }
                _ = wait_shutdown(self.shutdown.as_ref()) => {
                    tracing::info!("shutdown requested: stopping input, taking a final checkpoint");
                    return self.stop(source).await;
                }
                _ = wait_signal(&mut self.signals) => {
                    tracing::info!("signal received: stopping input, taking a final checkpoint (send it again to exit at once)");
                    exit_on_next_signal(self.signals.take());
                    return self.stop(source).await;
                }
                Some(done) = self.checkpointer.done.recv() => {
                    self.on_completion(source, done).await?;
                }
                _ = tokio::time::sleep_until(next_checkpoint.unwrap_or(far)), if next_checkpoint.is_some() => {
                    self.update_watermark();
                    if !self.checkpoint(source, false, true).await? {
                        return self.stop_at_last_checkpoint(source).await;
                    }
                    next_checkpoint = interval.map(|d| tokio::time::Instant::now() + d);
                }
                _ = tokio::time::sleep_until(next_discovery.unwrap_or(far)), if next_discovery.is_some() => {
                    match self.discover(source).await {
                        // a broker that does not answer now is asked again at the next discovery
                        Err(PipelineError::Source { source: e, .. })
                            if crate::failure::classify_error(&e).class == crate::failure::Class::Transient =>
                        {
                            tracing::warn!(error = %e, "looking for new partitions failed; trying again later");
                        }
                        other => other?,
                    }
                    next_discovery = discovery_every.map(|d| tokio::time::Instant::now() + d);
                }
                _ = self.rt.task_exit.notified() => {}
                _ = watermark_tick.tick() => self.update_watermark(),
            }
        }
    }

    async fn stop(&mut self, source: &mut Src) -> Result<Outcome, PipelineError> {
        self.update_watermark();
        if !self.checkpoint(source, false, false).await? {
            return self.stop_at_last_checkpoint(source).await;
        }
        self.drain(source).await?;
        Ok(Outcome::Stopped)
    }

    /// Ends the run at the last durable checkpoint, without a new one: a stop was requested
    /// while a checkpoint waited for tasks that cannot reach a record boundary (a sink held
    /// down by its breaker). Checkpoints already handed over are still committed; the open
    /// epoch's staged output is discarded by the next start, which replays its records.
    async fn stop_at_last_checkpoint(&mut self, source: &mut Src) -> Result<Outcome, PipelineError> {
        tracing::warn!(
            last_checkpoint = ?self.last_completed,
            "stopping without a final checkpoint: tasks are held up (a sink is down); the records since the last checkpoint are read again on the next run"
        );
        self.drain(source).await?;
        Ok(Outcome::Stopped)
    }

    /// Looks for partitions and queues the ones not seen before.
    async fn discover(&mut self, source: &mut Src) -> Result<(), PipelineError> {
        let found = super::catch_panic(|| "source".into(), source.discover())
            .await?
            .map_err(|e| PipelineError::Source {
                partition: String::new(),
                source: e,
            })?;
        for pid in found {
            let known = self.slots.get(&pid);
            let skip = known.is_some_and(|s| s.done.get() || s.running.get()) || self.pending.contains(&pid);
            if !skip {
                self.pending.push_back(pid);
            }
        }
        Ok(())
    }

    /// Opens queued partitions up to the limit of open partitions.
    async fn open_partitions(&mut self, source: &mut Src) -> Result<(), PipelineError> {
        self.tasks.retain(|t| !t.is_finished());
        // partitions that gave their place up go to the back of the queue
        for (pid, slot) in &self.slots {
            if slot.rotated.get() && !slot.running.get() {
                slot.rotated.set(false);
                if !slot.done.get() && !self.pending.contains(pid) {
                    self.pending.push_back(pid.clone());
                }
            }
        }
        while self.rt.barrier.running() < self.max_open {
            let Some(pid) = self.pending.pop_front() else {
                break;
            };
            let slot = self
                .slots
                .entry(pid.clone())
                .or_insert_with(|| TaskSlot::new(None, false, None))
                .clone();
            if slot.done.get() || slot.running.get() {
                continue;
            }
            let from = slot.position.borrow().clone();
            let reader = super::catch_panic(|| "source".into(), source.open(&pid, from))
                .await?
                .map_err(|e| PipelineError::Source {
                    partition: pid.clone(),
                    source: e,
                })?;
            let task = PartitionTask {
                rt: self.rt.clone(),
                slot: slot.clone(),
                reader,
                flow: self.flow.clone(),
                encoder: self.encoder.clone(),
                local: TaskLocal::new(&pid, &self.rt.step),
                out: Outboxes::new(&self.rt),
                outputs: Vec::new(),
                marks: Vec::new(),
                scratch_key: Vec::new(),
                tally: Default::default(),
                window: (self.flow.concurrency() > 1).then(|| Window::new(self.flow.concurrency())),
                read: self.rt.metrics.records_read(&pid),
            };
            slot.running.set(true);
            self.rt.barrier.task_started();
            self.tasks.push(tokio::task::spawn_local(task.run()));
        }
        self.rt.partitions_waiting.set(self.pending.len());
        let done = self.slots.values().filter(|s| s.done.get()).count() as u64;
        self.rt.progress.set_partitions(self.rt.barrier.running() as u64, done);
        Ok(())
    }

    fn update_watermark(&self) {
        let wm = pipeline_watermark(
            &self.rt.step.time,
            self.slots.values().map(|s| PartitionTime {
                max_event_time: s.max_event_time.get(),
                inactive: s.done.get() || s.idle.get() || !s.running.get(),
            }),
            self.rt.step.watermark.get(),
        );
        self.rt.step.watermark.set(wm);
    }

    /// Runs `finish` of the flow once, after a bounded input is exhausted.
    async fn finish_input(&mut self) -> Result<(), PipelineError> {
        let rt = self.rt.clone();
        let mut flow = self.flow.clone();
        let mut local = TaskLocal::new("", &rt.step);
        let mut out = Outboxes::new(&rt);
        let mut outputs = Vec::new();
        let mut cx = Context::new(&rt.step, &mut local, None);
        let end = |f| PipelineError::Record {
            partition: "(end of input)".into(),
            failure: Box::new(f),
        };
        flow.finish(&mut cx, &mut outputs).await.map_err(end)?;
        let mut key = Vec::new();
        for o in &outputs {
            encode_main(&mut out.main, &mut self.encoder, o, &mut key)
                .and_then(|()| within_limit(&mut out.main, &self.rt.sinks[0].limits))
                .map_err(end)?;
        }
        let c = &rt.counters;
        c.records_out.set(c.records_out.get() + outputs.len() as u64);
        out.flush(&rt, &mut local).await
    }

    fn stats(&self) -> RunStats {
        let c = &self.rt.counters;
        RunStats {
            records_in: self.base_stats.records_in + c.records_in.get(),
            records_out: self.base_stats.records_out + c.records_out.get(),
            dead_letters: self.base_stats.dead_letters + c.dead_letters.get(),
        }
    }

    /// Closes the current epoch: stops every task at a record boundary, seals the sinks,
    /// snapshots state and hands the checkpoint to the checkpoint thread. `release` lets the
    /// tasks go on (false for the last checkpoint of a run).
    ///
    /// Returns `false`, without a checkpoint, when a stop (signal or shutdown handle) is
    /// requested while the tasks are not all at a record boundary yet: a task can be held
    /// for as long as a sink is down, and an operator's signal must not wait for that.
    async fn checkpoint(&mut self, _source: &mut Src, finished: bool, release: bool) -> Result<bool, PipelineError> {
        let rt = self.rt.clone();
        let barrier_started = Instant::now();
        rt.barrier.request();
        // A shutdown requested before this checkpoint is the reason for it: only a new one
        // interrupts the wait.
        let shutdown = self.shutdown.as_ref().filter(|s| !s.is_triggered());
        // The last checkpoint of a stop does not wait for writes held by a down sink.
        let stopping = !release && !finished;
        let interrupted = tokio::select! {
            _ = rt.barrier.wait_all_arrived(&rt.fatal) => false,
            _ = rt.held.any(), if stopping => true,
            _ = wait_shutdown(shutdown) => true,
            _ = wait_signal(&mut self.signals) => {
                exit_on_next_signal(self.signals.take());
                true
            }
        };
        if interrupted && rt.barrier.arrived_all() {
            // the barrier completed at the same instant: take the checkpoint after all
        } else if interrupted {
            return Ok(false);
        }
        if rt.fatal.stop_now()
            && let Some((e, _)) = rt.fatal.take()
        {
            return Err(e);
        }
        let epoch = self.epoch;
        rt.metrics.phase("barrier", barrier_started.elapsed());
        self.counted
            .insert(epoch, (rt.counters.records_in.get(), rt.counters.bytes_in.get()));
        let lag: Vec<(String, u64)> = self
            .slots
            .iter()
            .filter_map(|(pid, s)| Some((pid.clone(), s.lag.get().filter(|_| !s.done.get())?)))
            .collect();
        for (pid, n) in &lag {
            rt.metrics.lag(pid, *n);
        }
        let event_times: Vec<(String, i64)> = self
            .slots
            .iter()
            .filter(|(_, s)| !s.done.get())
            .filter_map(|(pid, s)| Some((pid.clone(), s.max_event_time.get()?)))
            .collect();
        if rt.step.watermark.get().is_some() || !event_times.is_empty() {
            rt.metrics
                .event_time(rt.step.watermark.get(), &event_times, crate::util::now_ms());
        }
        rt.progress.set_lag(lag);
        if rt.pause.active_until().is_none() {
            rt.metrics.unpaused();
            rt.progress.set_paused(None);
            if rt.paused_announced.replace(false) {
                rt.listeners.emit(&crate::notify::RunEvent::Resumed {
                    pipeline: self.name.clone(),
                });
            }
            if release {
                rt.metrics.ready(true);
            }
        }
        let mut partitions = BTreeMap::new();
        let mut acks = Vec::new();
        for (pid, slot) in &self.slots {
            let pos = slot.position.borrow();
            let position = match pos.as_ref() {
                Some(p) => {
                    acks.push((pid.clone(), p.clone()));
                    serde_json::to_value(p).map_err(|e| PipelineError::Checkpoint(format!("position of {pid}: {e}")))?
                }
                None if slot.done.get() => serde_json::Value::Null,
                None => continue,
            };
            partitions.insert(
                pid.clone(),
                PartitionCheckpoint {
                    position,
                    done: slot.done.get(),
                    max_event_time: slot.max_event_time.get(),
                },
            );
        }
        let mut sealed = Vec::with_capacity(rt.sinks.len());
        for h in &rt.sinks {
            let mut sink = h.sink.lock().await;
            let s = super::catch_panic(|| h.name.clone(), sink.seal(epoch))
                .await?
                .map_err(|e| PipelineError::Sink {
                    sink: h.name.clone(),
                    source: e,
                })?;
            sealed.push((h.name.clone(), s));
        }
        let (snapshot, files) = {
            let mut state = rt.step.state.borrow_mut();
            let snapshot = if self.store_present {
                state.snapshot(epoch)?
            } else {
                None
            };
            let files = StateFiles {
                // the checkpoint thread keeps the chain of state files and fills them in
                files: Vec::new(),
                keys: state.len() as u64,
                bytes: 0,
            };
            (snapshot, files)
        };
        let manifest = Manifest {
            id: epoch,
            pipeline: self.name.clone(),
            fingerprint: self.fingerprint.clone(),
            created_at_ms: now_ms(),
            finished,
            partitions,
            watermark: rt.step.watermark.get(),
            state: files,
            sinks: BTreeMap::new(),
            stats: self.stats(),
        };
        self.epoch += 1;
        self.handed_over = Some(epoch);
        rt.epoch.set(self.epoch);
        if release {
            rt.barrier.release();
        }
        self.acks.insert(epoch, acks);
        self.checkpointer
            .jobs
            .send(Job {
                manifest,
                sealed,
                state: snapshot,
            })
            .await
            .map_err(|_| PipelineError::Runtime("the checkpoint thread stopped".into()))?;
        Ok(true)
    }

    async fn on_completion(&mut self, source: &mut Src, done: Completion) -> Result<(), PipelineError> {
        if done.result.is_err() {
            self.rt.metrics.checkpoint_failed();
        }
        done.result.map_err(PipelineError::Checkpoint)?;
        if self.completed == 0 && self.log_lifecycle {
            tracing::info!(
                checkpoint = done.id,
                since_start_ms = self.started.elapsed().as_millis() as u64,
                "first checkpoint of this run committed"
            );
        }
        self.completed += 1;
        self.last_completed = Some(done.id);
        self.rt.progress.checkpoint_done(done.id, done.at_ms, done.keys);
        self.rt.metrics.committed(done.id, done.at_ms, done.keys);
        if let Some((records, bytes)) = self.counted.remove(&done.id) {
            self.rt.counters.records_at_checkpoint.set(records);
            self.rt.counters.bytes_at_checkpoint.set(bytes);
        }
        self.counted.retain(|id, _| *id > done.id);
        tracing::debug!(checkpoint = done.id, "checkpoint committed");
        // Older entries belong to checkpoints that were superseded; keep only newer ones.
        let acks = self.acks.remove(&done.id);
        self.acks.retain(|id, _| *id > done.id);
        if let Some(acks) = acks
            && let Err(e) = source.acknowledge(done.id, &acks).await
        {
            tracing::warn!(checkpoint = done.id, error = %e, "acknowledging the source failed (monitoring only)");
        }
        Ok(())
    }

    /// Waits until every checkpoint handed to the checkpoint thread is committed.
    async fn drain(&mut self, source: &mut Src) -> Result<(), PipelineError> {
        let Some(last) = self.handed_over else {
            return Ok(()); // no checkpoint was handed over in this run
        };
        while self.last_completed.is_none_or(|c| c < last) {
            match self.checkpointer.done.recv().await {
                Some(done) => self.on_completion(source, done).await?,
                None => {
                    return Err(PipelineError::Runtime("the checkpoint thread stopped".into()));
                }
            }
        }
        Ok(())
    }
}

/// SIGINT and SIGTERM.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, PipelineError> {
        use tokio::signal::unix::{SignalKind, signal};
        let err = |e: std::io::Error| PipelineError::Runtime(format!("cannot handle signals: {e}"));
        Ok(Signals {
            int: signal(SignalKind::interrupt()).map_err(err)?,
            term: signal(SignalKind::terminate()).map_err(err)?,
        })
    }
}

async fn wait_shutdown(shutdown: Option<&super::ShutdownHandle>) {
    match shutdown {
        Some(s) => s.wait().await,
        None => std::future::pending().await,
    }
}

async fn wait_signal(signals: &mut Option<Signals>) {
    match signals {
        Some(s) => {
            tokio::select! {
                _ = s.int.recv() => {}
                _ = s.term.recv() => {}
            }
        }
        None => std::future::pending().await,
    }
}

/// After the first signal, a second one exits at once (status 130).
fn exit_on_next_signal(signals: Option<Signals>) {
    if let Some(s) = signals {
        tokio::task::spawn_local(async move {
            let mut s = Some(s);
            wait_signal(&mut s).await;
            eprintln!("keel: second signal, exiting without waiting for the final checkpoint");
            std::process::exit(130);
        });
    }
}
