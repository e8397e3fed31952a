//! Building and running pipelines.
//!
//! A pipeline runs on one worker thread: a current-thread tokio runtime with one task per
//! open partition and a coordinator that triggers checkpoints. The checkpoint thread finishes
//! checkpoints (fsync, manifest, commits) while the worker goes on with the next epoch. See
//! [`crate::checkpoint`] for the protocol.

mod checkpointer;
mod coordinator;
mod failures;
mod pace;
mod pause;
pub(crate) mod progress;
mod shared;
mod sink_io;
mod task;
pub(crate) use task::within_limit;
mod window;

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::Notify;

pub use self::failures::FailureCount;
pub use self::progress::{Progress, ProgressSnapshot};
use crate::checkpoint::{CheckpointId, CheckpointStore, RunStats};
use crate::failure::Failure;
use crate::policy::{BreakerStats, Policies};
use crate::record::Record;
use crate::sink::{DynSink, Encoder, Guarantee, JsonEncoder, Sink, SinkError};
use crate::source::{Source, SourceError};
use crate::state::{RestoreError, SnapshotPolicy, StateError};
use crate::step::Step;
use crate::time::WatermarkConfig;

/// Why a pipeline stopped with an error.
#[derive(Debug, Error)]
pub enum PipelineError {
    /// The pipeline is not set up correctly.
    #[error("configuration: {0}")]
    Config(String),
    /// A source failed.
    #[error("source, partition {partition}: {source}")]
    Source {
        /// The partition (empty for source-wide errors).
        partition: String,
        /// The error.
        source: SourceError,
    },
    /// A sink failed.
    #[error("sink `{sink}`: {source}")]
    Sink {
        /// The sink name.
        sink: String,
        /// The error.
        source: SinkError,
    },
    /// A record failed and its policy is to stop.
    #[error("record in partition {partition} failed: {failure}")]
    Record {
        /// The partition.
        partition: String,
        /// The failure.
        failure: Box<Failure>,
    },
    /// A checkpoint could not be written or read.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// State could not be saved.
    #[error("state: {0}")]
    State(#[from] StateError),
    /// State could not be restored from any checkpoint.
    #[error("restoring state: {0}")]
    Restore(#[from] RestoreError),
    /// A policy or the error budget stopped the pipeline on purpose (after a final
    /// checkpoint). `summary` keeps what the run did (records, dead letters, its last
    /// checkpoint); [`Pipeline::run`] always fills it in.
    #[error("aborted: {reason}")]
    Aborted {
        /// Why: the policy or budget and the failure that triggered it.
        reason: String,
        /// The run's counts up to the abort (outcome [`Outcome::Aborted`]).
        summary: Option<Box<RunSummary>>,
    },
    /// The runtime itself failed.
    #[error("runtime: {0}")]
    Runtime(String),
    /// Code of a step, a sink or a source panicked. The run stopped at its last durable
    /// checkpoint (the panicking code may have left its own state half-changed, so nothing
    /// after the panic is trusted); a new run resumes from there.
    #[error("panic in {stage}: {message}")]
    Panic {
        /// Where: `flow` (a step), `source`, or the sink's name.
        stage: String,
        /// The panic's message.
        message: String,
    },
}

/// The message of a caught panic.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    match (p.downcast_ref::<&str>(), p.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_owned(),
        (_, Some(s)) => s.clone(),
        _ => "(a panic without a message)".to_owned(),
    }
}

/// Runs `f` to its end, turning a panic inside it into [`PipelineError::Panic`] at `stage`.
pub(crate) async fn catch_panic<T>(
    stage: impl FnOnce() -> String,
    f: impl std::future::Future<Output = T>,
) -> Result<T, PipelineError> {
    use futures_util::FutureExt;
    std::panic::AssertUnwindSafe(f)
        .catch_unwind()
        .await
        .map_err(|p| PipelineError::Panic {
            stage: stage(),
            message: panic_message(&*p),
        })
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A bounded input was read to its end and everything is committed.
    Finished,
    /// A shutdown was requested (signal or [`ShutdownHandle`]); a final checkpoint was taken,
    /// unless tasks were held at that moment (a sink down): then the run ended at its last
    /// durable checkpoint, and the next run reads the records after it again.
    Stopped,
    /// The newest checkpoint says the input was already fully processed; nothing was done.
    AlreadyFinished,
    /// A policy or the error budget aborted the run after a final checkpoint (only in the
    /// summary of [`PipelineError::Aborted`]).
    Aborted,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// How the run ended.
    pub outcome: Outcome,
    /// The checkpoint restored at start, if any.
    pub restored_from: Option<CheckpointId>,
    /// Records read and handled in this run.
    pub records_in: u64,
    /// Records written to the main sink in this run.
    pub records_out: u64,
    /// Records dead-lettered in this run.
    pub dead_letters: u64,
    /// Late records dropped in this run.
    pub late_dropped: u64,
    /// Checkpoints completed in this run.
    pub checkpoints: u64,
    /// The last checkpoint completed, if any.
    pub last_checkpoint: Option<CheckpointId>,
    /// Counters over all runs up to the last checkpoint.
    pub totals: RunStats,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// Time from start until processing began (recovery included).
    pub startup: Duration,
    /// Records skipped by a `skip` policy in this run.
    pub skipped: u64,
    /// Retries of records in this run.
    pub retries: u64,
    /// Pipeline-wide pauses in this run.
    pub pauses: u64,
    /// Failed sink writes, and their retries, in this run.
    pub sink_failures: (u64, u64),
    /// Circuit breaker transitions, by sink name.
    pub breakers: Vec<(String, BreakerStats)>,
    /// Failures of this run by reason, stage and the action taken.
    pub failures: Vec<FailureCount>,
}

impl RunSummary {
    /// Records handled per second of wall-clock time.
    pub fn records_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.records_in as f64 / s } else { 0.0 }
    }
}

/// Triggers a graceful shutdown of a running pipeline from anywhere: stop reading, finish the
/// records in flight, take a final checkpoint, commit, return [`Outcome::Stopped`].
#[derive(Clone, Debug, Default)]
pub struct ShutdownHandle(Arc<ShutdownInner>);

#[derive(Debug, Default)]
struct ShutdownInner {
    requested: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl ShutdownHandle {
    /// Requests the shutdown.
    pub fn trigger(&self) {
        self.0.requested.store(true, std::sync::atomic::Ordering::SeqCst);
        self.0.notify.notify_waiters();
        self.0.notify.notify_one();
    }

    /// True once a shutdown was requested.
    pub fn is_triggered(&self) -> bool {
        self.0.requested.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) async fn wait(&self) {
        while !self.is_triggered() {
            self.0.notify.notified().await;
        }
    }
}

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Time between checkpoints; `None` takes only the final one. After a restore, the
    /// first checkpoint comes after at most 200 ms, so replayed output is visible soon.
    pub checkpoint_interval: Option<Duration>,
    /// Completed checkpoints to keep.
    pub retain: usize,
    /// Records per source read.
    pub batch_size: usize,
    /// A task writes its buffered output to the sinks once it holds this many bytes.
    pub flush_bytes: usize,
    /// How long an idle partition waits before asking its source again.
    pub poll_interval: Duration,
    /// Partitions read at the same time (bounded sources open the rest as these end).
    pub max_open_partitions: usize,
    /// A ceiling on records read per second across every partition (`None`: as fast as
    /// the pipeline goes). Must be at least 1.
    pub max_records_per_second: Option<u32>,
    /// Watermark settings.
    pub watermarks: WatermarkConfig,
    /// When to write full state snapshots instead of deltas.
    pub snapshots: SnapshotPolicy,
    /// Ignore and delete existing checkpoints and start from the beginning of the input.
    pub from_scratch: bool,
    /// Stop gracefully on SIGINT and SIGTERM, as the `keel` command does (on by default): the
    /// first signal stops the input and takes a final checkpoint, a second one exits at once
    /// with code 130. Turn it off when the program handles signals itself and stops the
    /// pipeline with a [`ShutdownHandle`]. (tokio keeps its signal handlers installed for the
    /// rest of the process once a run has started them.)
    pub handle_signals: bool,
    /// Log the start and the first checkpoint of the run at info level (batch ingestion,
    /// which runs one pipeline per file, logs them at debug level).
    pub log_lifecycle: bool,
    /// Fingerprint of the pipeline definition, stored in manifests (a warning is logged when
    /// it changes between runs).
    pub fingerprint: String,
    /// How failures are handled (see [`crate::policy`]).
    pub policies: Policies,
    /// Who hears of run-level events ([`crate::notify`]).
    pub listeners: crate::notify::Listeners,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            checkpoint_interval: Some(Duration::from_secs(1)),
            retain: 3,
            batch_size: 1024,
            flush_bytes: 1 << 20,
            poll_interval: Duration::from_millis(50),
            max_open_partitions: 64,
            max_records_per_second: None,
            watermarks: WatermarkConfig::default(),
            snapshots: SnapshotPolicy::default(),
            from_scratch: false,
            handle_signals: true,
            log_lifecycle: true,
            fingerprint: String::new(),
            policies: Policies::default(),
            listeners: Default::default(),
        }
    }
}

pub(crate) struct NamedSink {
    pub(crate) name: String,
    pub(crate) sink: Box<dyn DynSink>,
}

/// Builds a [`Pipeline`]: a source, a flow, a main sink, and optionally side sinks, a
/// dead-letter output and a checkpoint store.
pub struct PipelineBuilder<Src, S, E> {
    name: String,
    source: Src,
    flow: S,
    encoder: E,
    main: Option<NamedSink>,
    side: Vec<NamedSink>,
    dead_letters: Option<NamedSink>,
    fallback: Option<NamedSink>,
    store: Option<Arc<dyn CheckpointStore>>,
    options: Options,
}

/// A pipeline ready to run.
pub struct Pipeline<Src, S, E> {
    pub(crate) name: String,
    pub(crate) source: Src,
    pub(crate) flow: S,
    pub(crate) encoder: E,
    pub(crate) main: NamedSink,
    pub(crate) side: Vec<NamedSink>,
    pub(crate) dead_letters: Option<NamedSink>,
    pub(crate) fallback: Option<NamedSink>,
    pub(crate) store: Option<Arc<dyn CheckpointStore>>,
    pub(crate) options: Options,
    pub(crate) progress: Arc<Progress>,
    pub(crate) shutdown: ShutdownHandle,
}

impl Pipeline<(), (), ()> {
    /// Starts building a pipeline called `name` (used in manifests, dead letters and logs).
    pub fn builder(name: impl Into<String>) -> PipelineBuilder<(), (), JsonEncoder> {
        PipelineBuilder {
            name: name.into(),
            source: (),
            flow: (),
            encoder: JsonEncoder,
            main: None,
            side: Vec::new(),
            dead_letters: None,
            fallback: None,
            store: None,
            options: Options::default(),
        }
    }
}

impl<Src, S, E> PipelineBuilder<Src, S, E> {
    /// Sets the source.
    pub fn source<Src2: Source>(self, source: Src2) -> PipelineBuilder<Src2, S, E> {
        PipelineBuilder {
            name: self.name,
            source,
            flow: self.flow,
            encoder: self.encoder,
            main: self.main,
            side: self.side,
            dead_letters: self.dead_letters,
            fallback: self.fallback,
            store: self.store,
            options: self.options,
        }
    }

    /// Sets the steps records go through (a [`crate::Flow`] or any [`Step`]).
    pub fn flow<S2>(self, flow: impl Into<FlowStep<S2>>) -> PipelineBuilder<Src, S2, E> {
        PipelineBuilder {
            name: self.name,
            source: self.source,
            flow: flow.into().0,
            encoder: self.encoder,
            main: self.main,
            side: self.side,
            dead_letters: self.dead_letters,
            fallback: self.fallback,
            store: self.store,
            options: self.options,
        }
    }

    /// Sets the steps records go through as one [`Step`] from records.
    pub fn step<S2: Step<Record>>(self, step: S2) -> PipelineBuilder<Src, S2, E> {
        self.flow(FlowStep(step))
    }

    /// Sets the main sink, encoding items as JSON.
    pub fn sink(mut self, sink: impl Sink) -> Self {
        self.main = Some(NamedSink {
            name: "main".into(),
            sink: Box::new(sink),
        });
        self
    }

    /// Sets the main sink with a name and an encoder.
    pub fn sink_with<E2>(self, name: &str, sink: impl Sink, encoder: E2) -> PipelineBuilder<Src, S, E2> {
        PipelineBuilder {
            name: self.name,
            source: self.source,
            flow: self.flow,
            encoder,
            main: Some(NamedSink {
                name: name.into(),
                sink: Box::new(sink),
            }),
            side: self.side,
            dead_letters: self.dead_letters,
            fallback: self.fallback,
            store: self.store,
            options: self.options,
        }
    }

    /// Adds a sink that steps emit to by name ([`crate::Context::emit_json`]).
    pub fn side_sink(mut self, name: &str, sink: impl Sink) -> Self {
        self.side.push(NamedSink {
            name: name.into(),
            sink: Box::new(sink),
        });
        self
    }

    /// Sets the dead-letter output. Without one, a permanent failure stops the pipeline.
    pub fn dead_letters(mut self, sink: impl Sink) -> Self {
        self.dead_letters = Some(NamedSink {
            name: "dead_letters".into(),
            sink: Box::new(sink),
        });
        self
    }

    /// Sets a second dead-letter output that takes over when the first one refuses a batch.
    pub fn dead_letter_fallback(mut self, sink: impl Sink) -> Self {
        self.fallback = Some(NamedSink {
            name: "dead_letters_fallback".into(),
            sink: Box::new(sink),
        });
        self
    }

    /// Calls `listener` on run-level events: paused, resumed, failed, aborted, finished with
    /// dead letters ([`crate::notify`]).
    pub fn on_event(mut self, listener: impl crate::notify::RunListener) -> Self {
        self.options.listeners.push(listener);
        self
    }

    /// Sets how failures are handled.
    pub fn policies(mut self, policies: Policies) -> Self {
        self.options.policies = policies;
        self
    }

    /// Sets the checkpoint store. Without one, nothing is recovered after a restart.
    pub fn checkpoints(mut self, store: impl CheckpointStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Sets a shared checkpoint store.
    pub fn checkpoint_store(mut self, store: Arc<dyn CheckpointStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Time between checkpoints (`None`: only the final one).
    pub fn checkpoint_interval(mut self, every: Option<Duration>) -> Self {
        self.options.checkpoint_interval = every;
        self
    }

    /// Replaces all options.
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// Changes options in place.
    pub fn configure(mut self, f: impl FnOnce(&mut Options)) -> Self {
        f(&mut self.options);
        self
    }
}

/// Anything that can be a pipeline's flow: a [`crate::Flow`] or a bare [`Step`].
pub struct FlowStep<S>(pub(crate) S);

impl<In: 'static, S: Step<In>> From<crate::step::Flow<In, S>> for FlowStep<S>
where
    S::Out: 'static,
{
    fn from(f: crate::step::Flow<In, S>) -> Self {
        FlowStep(f.into_step())
    }
}

impl<Src, S, E> PipelineBuilder<Src, S, E>
where
    Src: Source,
    S: Step<Record>,
    E: Encoder<S::Out>,
{
    /// Checks the pipeline and returns it ready to run.
    pub fn build(self) -> Result<Pipeline<Src, S, E>, PipelineError> {
        let main = self
            .main
            .ok_or_else(|| PipelineError::Config("the pipeline has no sink".into()))?;
        let mut names = vec![main.name.as_str()];
        for s in &self.side {
            if names.contains(&s.name.as_str()) || s.name.starts_with("dead_letters") {
                return Err(PipelineError::Config(format!("two sinks are named `{}`", s.name)));
            }
            names.push(&s.name);
        }
        if self.options.batch_size == 0
            || self.options.max_open_partitions == 0
            || self.options.max_records_per_second == Some(0)
        {
            return Err(PipelineError::Config(
                "batch_size, max_open_partitions and max_records_per_second must be at least 1".into(),
            ));
        }
        if self.options.checkpoint_interval.is_some_and(|d| d.is_zero()) {
            return Err(PipelineError::Config("checkpoint interval must be positive".into()));
        }
        Ok(Pipeline {
            name: self.name,
            source: self.source,
            flow: self.flow,
            encoder: self.encoder,
            main,
            side: self.side,
            dead_letters: self.dead_letters,
            fallback: self.fallback,
            store: self.store,
            options: self.options,
            progress: Arc::new(Progress::default()),
            shutdown: ShutdownHandle::default(),
        })
    }
}

/// One line per sink for start-up logs: name, description, guarantee.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkInfo {
    /// Sink name.
    pub name: String,
    /// Description.
    pub describe: String,
    /// Delivery guarantee.
    pub guarantee: Guarantee,
}

impl<Src, S, E> Pipeline<Src, S, E>
where
    Src: Source,
    S: Step<Record>,
    E: Encoder<S::Out>,
{
    /// Live counters, readable from other threads while the pipeline runs.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// A handle to stop the pipeline gracefully from another thread or task.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Stops on `handle` instead of its own handle (one handle can stop several runs; a
    /// handle triggered before the run stops it right after recovery, with a checkpoint).
    pub fn with_shutdown(mut self, handle: ShutdownHandle) -> Self {
        self.shutdown = handle;
        self
    }

    /// The sinks with their guarantees (main first, dead letters last).
    pub fn sinks(&self) -> Vec<SinkInfo> {
        std::iter::once(&self.main)
            .chain(&self.side)
            .chain(&self.dead_letters)
            .chain(&self.fallback)
            .map(|s| SinkInfo {
                name: s.name.clone(),
                describe: s.sink.describe(),
                guarantee: s.sink.guarantee(),
            })
            .collect()
    }

    /// The source description.
    pub fn source_description(&self) -> String {
        self.source.describe()
    }

    /// The pipeline name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the pipeline to its end (bounded input) or until shutdown, on a runtime of its
    /// own on the calling thread. Do not call from inside an async runtime; use
    /// [`Pipeline::run_local`] there.
    pub fn run(self) -> Result<RunSummary, PipelineError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PipelineError::Runtime(format!("cannot start the runtime: {e}")))?;
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, self.run_local())
    }

    /// Runs the pipeline inside the current `LocalSet` (see [`tokio::task::LocalSet`]).
    pub async fn run_local(self) -> Result<RunSummary, PipelineError> {
        let (name, listeners) = (self.name.clone(), self.options.listeners.clone());
        // a panic that escaped every narrower catch (in the runtime itself) still ends the run
        // with an error instead of unwinding through the caller
        let result = catch_panic(|| "runtime".into(), coordinator::run(self))
            .await
            .and_then(|r| r);
        if !listeners.is_empty() {
            let event = match &result {
                Err(PipelineError::Aborted { reason, .. }) => Some(crate::notify::RunEvent::Aborted {
                    pipeline: name,
                    reason: reason.clone(),
                }),
                Err(e) => Some(crate::notify::RunEvent::Failed {
                    pipeline: name,
                    error: e.to_string(),
                }),
                Ok(s) if s.dead_letters > 0 => Some(crate::notify::RunEvent::FinishedWithDeadLetters {
                    pipeline: name,
                    records_in: s.records_in,
                    dead_letters: s.dead_letters,
                }),
                Ok(_) => None,
            };
            if let Some(e) = event {
                listeners.emit(&e);
            }
        }
        result
    }
}
