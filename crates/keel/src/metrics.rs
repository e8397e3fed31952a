//! Metrics of a run, through the [`metrics`] facade: a service embedding keel gets them in
//! whatever exporter it installs (Prometheus, StatsD...); `keel run --metrics-addr` serves
//! them in the Prometheus text format. Without an installed recorder every call is a no-op.
//!
//! Names follow Prometheus conventions: the `keel_` prefix, base units (seconds, bytes),
//! `_total` for counters. Every metric has the label `pipeline`; the others are bounded
//! (partition, sink, stage, reason, class, action, phase, cause, breaker names come from the
//! pipeline's definition and its sources, never from record contents). The README has the
//! table.
//!
//! The record path pays one atomic add per batch: counters are held as handles per
//! partition task and sink, and incremented with a batch's count.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};

use crate::failure::Failure;
use crate::policy::BreakerState;

/// Records read from a source partition (`partition`).
pub const RECORDS_READ: &str = "keel_records_read_total";
/// Records handed to a sink (`sink`), visible once their checkpoint commits.
pub const RECORDS_WRITTEN: &str = "keel_records_written_total";
/// Records dead-lettered (`stage`, `reason`).
pub const DEAD_LETTERS: &str = "keel_dead_letters_total";
/// Records skipped by a policy (`stage`, `reason`).
pub const RECORDS_SKIPPED: &str = "keel_records_skipped_total";
/// Failures by what was done about them (`stage`, `reason`, `class`, `action`).
pub const FAILURES: &str = "keel_failures_total";
/// Sink writes that failed (`sink`, `class`).
pub const SINK_WRITE_FAILURES: &str = "keel_sink_write_failures_total";
/// Sink writes retried (`sink`).
pub const SINK_RETRIES: &str = "keel_sink_retries_total";
/// Checkpoints (`outcome`: `committed` or `failed`).
pub const CHECKPOINTS: &str = "keel_checkpoints_total";
/// Checkpoint phases (`phase`: `barrier`, `prepare`, `state`, `manifest`, `commit`).
pub const CHECKPOINT_PHASE_SECONDS: &str = "keel_checkpoint_phase_duration_seconds";
/// The id of the last committed checkpoint.
pub const LAST_CHECKPOINT_ID: &str = "keel_last_checkpoint_id";
/// When the last checkpoint was committed (Unix time).
pub const LAST_CHECKPOINT_TIMESTAMP: &str = "keel_last_checkpoint_timestamp_seconds";
/// Records read since the last committed checkpoint: what a crash now would read again.
pub const UNCOMMITTED_RECORDS: &str = "keel_uncommitted_records";
/// Bytes (record values) read since the last committed checkpoint.
pub const UNCOMMITTED_BYTES: &str = "keel_uncommitted_bytes";
/// Keys in keyed state at the last checkpoint.
pub const STATE_KEYS: &str = "keel_state_keys";
/// A circuit breaker's state (`breaker`): 0 closed, 1 open, 2 half-open.
pub const BREAKER_STATE: &str = "keel_circuit_breaker_state";
/// Times a circuit breaker opened (`breaker`).
pub const BREAKER_OPENS: &str = "keel_circuit_breaker_opens_total";
/// Calls a circuit breaker saw fail (`breaker`).
pub const BREAKER_FAILURES: &str = "keel_circuit_breaker_failures_total";
/// Input pauses (`cause`: `circuit breaker open`, `error budget exceeded`, `pause action`...).
pub const PAUSES: &str = "keel_pauses_total";
/// 1 while the input is paused.
pub const PAUSED: &str = "keel_paused";
/// 1 once the run has recovered and is processing (0 while paused, and after the end).
pub const READY: &str = "keel_ready";
/// What a source partition has left to read, when the source knows (`partition`): records
/// behind a broker's end, bytes left in a file.
pub const SOURCE_LAG: &str = "keel_source_lag";
/// The checkpoint interval (0 when checkpoints are off): alert rules compare the age of the
/// last checkpoint with it.
pub const CHECKPOINT_INTERVAL: &str = "keel_checkpoint_interval_seconds";
/// Time to recover at start (restore state, finish and roll back sink epochs).
pub const RECOVERY_SECONDS: &str = "keel_recovery_duration_seconds";

/// Jobs a queue worker finished an attempt of (`queue`, `kind`, `outcome`: `acked`,
/// `retried`, `dead`, `released`, `lost`).
pub const QUEUE_JOBS: &str = "keel_queue_jobs_total";
/// How long job handlers ran (`queue`, `kind`).
pub const QUEUE_HANDLER_SECONDS: &str = "keel_queue_handler_duration_seconds";
/// Ready jobs (`queue`, `priority`).
pub const QUEUE_READY: &str = "keel_queue_ready_jobs";
/// Delayed jobs and retries waiting for their time (`queue`).
pub const QUEUE_DELAYED: &str = "keel_queue_delayed_jobs";
/// Jobs held by workers (`queue`).
pub const QUEUE_IN_FLIGHT: &str = "keel_queue_in_flight_jobs";
/// Jobs in the dead set (`queue`).
pub const QUEUE_DEAD: &str = "keel_queue_dead_jobs";
/// How long the oldest ready job has waited (`queue`; 0 when none is ready).
pub const QUEUE_OLDEST_READY_AGE: &str = "keel_queue_oldest_ready_age_seconds";
/// Held jobs whose lease ran out (`queue`): a worker died or stalled.
pub const QUEUE_EXPIRED_LEASES: &str = "keel_queue_expired_leases";

/// Record retries (`stage`, `outcome`: `attempted`, `succeeded` (the record got through
/// after retries), `exhausted`).
pub const RETRIES: &str = "keel_retries_total";
/// The delays before retries (`stage`).
pub const RETRY_DELAY_SECONDS: &str = "keel_retry_delay_seconds";
/// Retries the pipeline's retry budget refused (`stage`).
pub const RETRY_BUDGET_REFUSALS: &str = "keel_retry_budget_refusals_total";
/// Dead letters that waited for the dead-letter rate limit.
pub const DEAD_LETTERS_RATE_LIMITED: &str = "keel_dead_letters_rate_limited_total";
/// How much of the error budget the current window uses (1: exceeded).
pub const ERROR_BUDGET_USED: &str = "keel_error_budget_used_ratio";
/// The pipeline's event-time watermark (Unix time), when it uses event time.
pub const WATERMARK: &str = "keel_watermark_timestamp_seconds";
/// How far a partition's event time is behind the wall clock (`partition`).
pub const EVENT_TIME_LAG: &str = "keel_event_time_lag_seconds";
/// Bytes of keyed state on disk: the state files a restore of the last checkpoint reads.
pub const STATE_BYTES: &str = "keel_state_bytes";
/// Input files of a batch ingestion (`outcome`: `completed`, `failed`, `skipped`, `busy`,
/// `unreadable`, `lost`, `stopped`).
pub const INGEST_FILES: &str = "keel_ingest_files_total";
/// Input files being processed now.
pub const INGEST_IN_PROGRESS: &str = "keel_ingest_files_in_progress";
/// Bytes of the input files completed.
pub const INGEST_BYTES: &str = "keel_ingest_bytes_total";
/// How long a processed file took (hash, claim, run, commit).
pub const INGEST_FILE_SECONDS: &str = "keel_ingest_file_duration_seconds";

/// Registers help texts and units with the installed recorder (call after installing it).
pub fn describe() {
    describe_counter!(RECORDS_READ, Unit::Count, "Records read from a source partition.");
    describe_counter!(
        RECORDS_WRITTEN,
        Unit::Count,
        "Records handed to a sink; visible once their checkpoint commits."
    );
    describe_counter!(DEAD_LETTERS, Unit::Count, "Records dead-lettered, by stage and reason.");
    describe_counter!(
        RECORDS_SKIPPED,
        Unit::Count,
        "Records skipped by a policy, by stage and reason."
    );
    describe_counter!(
        FAILURES,
        Unit::Count,
        "Failures by stage, reason, class and the action taken."
    );
    describe_counter!(
        SINK_WRITE_FAILURES,
        Unit::Count,
        "Sink writes that failed, by sink and class."
    );
    describe_counter!(SINK_RETRIES, Unit::Count, "Sink writes retried.");
    describe_counter!(CHECKPOINTS, Unit::Count, "Checkpoints committed or failed.");
    describe_histogram!(
        CHECKPOINT_PHASE_SECONDS,
        Unit::Seconds,
        "Duration of each checkpoint phase."
    );
    describe_gauge!(LAST_CHECKPOINT_ID, Unit::Count, "Id of the last committed checkpoint.");
    describe_gauge!(
        LAST_CHECKPOINT_TIMESTAMP,
        Unit::Seconds,
        "Unix time of the last committed checkpoint."
    );
    describe_gauge!(
        UNCOMMITTED_RECORDS,
        Unit::Count,
        "Records read since the last committed checkpoint."
    );
    describe_gauge!(STATE_KEYS, Unit::Count, "Keys in keyed state at the last checkpoint.");
    describe_gauge!(BREAKER_STATE, "Circuit breaker state: 0 closed, 1 open, 2 half-open.");
    describe_counter!(BREAKER_OPENS, Unit::Count, "Times a circuit breaker opened.");
    describe_counter!(BREAKER_FAILURES, Unit::Count, "Calls a circuit breaker saw fail.");
    describe_counter!(PAUSES, Unit::Count, "Input pauses, by cause.");
    describe_gauge!(PAUSED, "1 while the input is paused.");
    describe_gauge!(READY, "1 once the run has recovered and is processing.");
    describe_gauge!(
        SOURCE_LAG,
        "What a source partition has left to read (records or bytes)."
    );
    describe_histogram!(RECOVERY_SECONDS, Unit::Seconds, "Time to recover at start.");
    describe_gauge!(CHECKPOINT_INTERVAL, Unit::Seconds, "The checkpoint interval (0: off).");
    describe_counter!(
        RETRIES,
        Unit::Count,
        "Record retries: attempted, succeeded after retries, exhausted."
    );
    describe_histogram!(RETRY_DELAY_SECONDS, Unit::Seconds, "Delays before retries.");
    describe_counter!(RETRY_BUDGET_REFUSALS, Unit::Count, "Retries the retry budget refused.");
    describe_counter!(
        DEAD_LETTERS_RATE_LIMITED,
        Unit::Count,
        "Dead letters that waited for the rate limit."
    );
    describe_gauge!(ERROR_BUDGET_USED, "Share of the error budget the current window uses.");
    describe_gauge!(WATERMARK, Unit::Seconds, "The event-time watermark (Unix time).");
    describe_gauge!(
        EVENT_TIME_LAG,
        Unit::Seconds,
        "How far a partition's event time is behind the wall clock."
    );
    describe_gauge!(
        STATE_BYTES,
        Unit::Bytes,
        "Bytes of the state files a restore of the last checkpoint reads."
    );
    describe_gauge!(
        UNCOMMITTED_BYTES,
        Unit::Bytes,
        "Bytes read since the last committed checkpoint."
    );
    describe_counter!(
        INGEST_FILES,
        Unit::Count,
        "Input files of a batch ingestion, by outcome."
    );
    describe_gauge!(INGEST_IN_PROGRESS, Unit::Count, "Input files being processed now.");
    describe_counter!(INGEST_BYTES, Unit::Bytes, "Bytes of the input files completed.");
    describe_histogram!(
        INGEST_FILE_SECONDS,
        Unit::Seconds,
        "How long a processed input file took."
    );
    describe_counter!(
        QUEUE_JOBS,
        Unit::Count,
        "Job attempts finished by a queue worker, by outcome."
    );
    describe_histogram!(QUEUE_HANDLER_SECONDS, Unit::Seconds, "How long job handlers ran.");
    describe_gauge!(QUEUE_READY, Unit::Count, "Ready jobs, by priority.");
    describe_gauge!(
        QUEUE_DELAYED,
        Unit::Count,
        "Delayed jobs and retries waiting for their time."
    );
    describe_gauge!(QUEUE_IN_FLIGHT, Unit::Count, "Jobs held by workers.");
    describe_gauge!(QUEUE_DEAD, Unit::Count, "Jobs in the dead set.");
    describe_gauge!(
        QUEUE_OLDEST_READY_AGE,
        Unit::Seconds,
        "How long the oldest ready job has waited."
    );
    describe_gauge!(QUEUE_EXPIRED_LEASES, Unit::Count, "Held jobs whose lease ran out.");
}

/// The metrics of one run, labelled with its pipeline.
#[derive(Clone)]
pub(crate) struct RunMetrics {
    pipeline: Arc<str>,
    committed: Counter,
    failed: Counter,
    last_id: Gauge,
    last_at: Gauge,
    uncommitted: Gauge,
    uncommitted_bytes: Gauge,
    state_keys: Gauge,
    paused: Gauge,
    ready: Gauge,
}

impl RunMetrics {
    pub(crate) fn new(pipeline: &str) -> Self {
        let p = pipeline.to_owned();
        RunMetrics {
            pipeline: pipeline.into(),
            committed: counter!(CHECKPOINTS, "pipeline" => p.clone(), "outcome" => "committed"),
            failed: counter!(CHECKPOINTS, "pipeline" => p.clone(), "outcome" => "failed"),
            last_id: gauge!(LAST_CHECKPOINT_ID, "pipeline" => p.clone()),
            last_at: gauge!(LAST_CHECKPOINT_TIMESTAMP, "pipeline" => p.clone()),
            uncommitted: gauge!(UNCOMMITTED_RECORDS, "pipeline" => p.clone()),
            uncommitted_bytes: gauge!(UNCOMMITTED_BYTES, "pipeline" => p.clone()),
            state_keys: gauge!(STATE_KEYS, "pipeline" => p.clone()),
            paused: gauge!(PAUSED, "pipeline" => p.clone()),
            ready: gauge!(READY, "pipeline" => p),
        }
    }

    fn p(&self) -> String {
        self.pipeline.to_string()
    }

    /// The read counter of a partition (a task holds it).
    pub(crate) fn records_read(&self, partition: &str) -> Counter {
        counter!(RECORDS_READ, "pipeline" => self.p(), "partition" => partition.to_owned())
    }

    /// The written counter of a sink.
    pub(crate) fn records_written(&self, sink: &str) -> Counter {
        counter!(RECORDS_WRITTEN, "pipeline" => self.p(), "sink" => sink.to_owned())
    }

    /// A failure handled with `action`.
    pub(crate) fn failure(&self, f: &Failure, action: &'static str) {
        let (stage, reason) = (f.stage.clone(), f.reason.to_string());
        counter!(FAILURES, "pipeline" => self.p(), "stage" => stage.clone(), "reason" => reason.clone(),
            "class" => f.class.as_str(), "action" => action)
        .increment(1);
        match action {
            "dead_letter" => {
                counter!(DEAD_LETTERS, "pipeline" => self.p(), "stage" => stage, "reason" => reason).increment(1)
            }
            "skip" => {
                counter!(RECORDS_SKIPPED, "pipeline" => self.p(), "stage" => stage, "reason" => reason).increment(1)
            }
            _ => {}
        }
    }

    /// A sink write failed with a failure of `class`.
    pub(crate) fn sink_failure(&self, sink: &str, class: &'static str) {
        counter!(SINK_WRITE_FAILURES, "pipeline" => self.p(), "sink" => sink.to_owned(), "class" => class).increment(1);
    }

    /// A sink write is retried.
    pub(crate) fn sink_retry(&self, sink: &str) {
        counter!(SINK_RETRIES, "pipeline" => self.p(), "sink" => sink.to_owned()).increment(1);
    }

    /// A breaker is now in `state`; `opened` when it just opened, `failed` when a call
    /// failed.
    pub(crate) fn breaker(&self, breaker: &str, state: BreakerState, opened: bool, failed: bool) {
        let name = breaker.to_owned();
        let v = match state {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        };
        gauge!(BREAKER_STATE, "pipeline" => self.p(), "breaker" => name.clone()).set(v);
        if opened {
            counter!(BREAKER_OPENS, "pipeline" => self.p(), "breaker" => name.clone()).increment(1);
        }
        if failed {
            counter!(BREAKER_FAILURES, "pipeline" => self.p(), "breaker" => name).increment(1);
        }
    }

    /// The input paused for `cause`.
    pub(crate) fn pause(&self, cause: &'static str) {
        counter!(PAUSES, "pipeline" => self.p(), "cause" => cause).increment(1);
        self.paused.set(1.0);
        self.ready.set(0.0);
    }

    /// The input is not paused (now).
    pub(crate) fn unpaused(&self) {
        self.paused.set(0.0);
    }

    /// The run is (1) or is not (0) recovered and processing.
    pub(crate) fn ready(&self, ready: bool) {
        self.ready.set(if ready { 1.0 } else { 0.0 });
    }

    /// A partition's lag.
    pub(crate) fn lag(&self, partition: &str, lag: u64) {
        gauge!(SOURCE_LAG, "pipeline" => self.p(), "partition" => partition.to_owned()).set(lag as f64);
    }

    /// Records and bytes read since the last committed checkpoint.
    pub(crate) fn uncommitted(&self, records: u64, bytes: u64) {
        self.uncommitted.set(records as f64);
        self.uncommitted_bytes.set(bytes as f64);
    }

    /// A checkpoint phase took `took`.
    pub(crate) fn phase(&self, phase: &'static str, took: Duration) {
        metrics::histogram!(CHECKPOINT_PHASE_SECONDS, "pipeline" => self.p(), "phase" => phase)
            .record(took.as_secs_f64());
    }

    /// Checkpoint `id`, taken at `at_ms` with `keys` keys in state, committed.
    pub(crate) fn committed(&self, id: u64, at_ms: u64, keys: u64) {
        self.committed.increment(1);
        self.last_id.set(id as f64);
        self.last_at.set(at_ms as f64 / 1000.0);
        self.state_keys.set(keys as f64);
    }

    /// A checkpoint failed.
    pub(crate) fn checkpoint_failed(&self) {
        self.failed.increment(1);
    }

    /// The run checkpoints every `interval` (`None`: off).
    pub(crate) fn interval(&self, interval: Option<Duration>) {
        gauge!(CHECKPOINT_INTERVAL, "pipeline" => self.p()).set(interval.map_or(0.0, |d| d.as_secs_f64()));
    }

    /// A record retry at `stage`: `attempted` (after `delay`), `succeeded`, `exhausted`.
    pub(crate) fn retry(&self, stage: &str, outcome: &'static str, delay: Option<Duration>) {
        counter!(RETRIES, "pipeline" => self.p(), "stage" => stage.to_owned(), "outcome" => outcome).increment(1);
        if let Some(d) = delay {
            metrics::histogram!(RETRY_DELAY_SECONDS, "pipeline" => self.p(), "stage" => stage.to_owned())
                .record(d.as_secs_f64());
        }
    }

    /// The retry budget refused a retry at `stage`.
    pub(crate) fn retry_refused(&self, stage: &str) {
        counter!(RETRY_BUDGET_REFUSALS, "pipeline" => self.p(), "stage" => stage.to_owned()).increment(1);
    }

    /// A dead letter waited for the rate limit.
    pub(crate) fn dead_letter_rate_limited(&self) {
        counter!(DEAD_LETTERS_RATE_LIMITED, "pipeline" => self.p()).increment(1);
    }

    /// The error budget's window uses `used` of it.
    pub(crate) fn error_budget(&self, used: f64) {
        gauge!(ERROR_BUDGET_USED, "pipeline" => self.p()).set(used);
    }

    /// The watermark (ms) and each partition's newest event time (ms), at `now_ms`.
    pub(crate) fn event_time(&self, watermark: Option<i64>, partitions: &[(String, i64)], now_ms: u64) {
        if let Some(w) = watermark {
            gauge!(WATERMARK, "pipeline" => self.p()).set(w as f64 / 1000.0);
        }
        for (p, t) in partitions {
            let lag = (now_ms as f64 - *t as f64).max(0.0) / 1000.0;
            gauge!(EVENT_TIME_LAG, "pipeline" => self.p(), "partition" => p.clone()).set(lag);
        }
    }

    /// A restore of the last checkpoint reads `bytes` of state files.
    pub(crate) fn state_bytes(&self, bytes: u64) {
        gauge!(STATE_BYTES, "pipeline" => self.p()).set(bytes as f64);
    }

    /// Recovery at start took `took`.
    pub(crate) fn recovered(&self, took: Duration) {
        let h: Histogram = metrics::histogram!(RECOVERY_SECONDS, "pipeline" => self.p());
        h.record(took.as_secs_f64());
    }
}

/// A queue's state, as [`crate::queue::Queue::stats`] gives it, into the queue gauges.
pub fn queue_stats(queue: &str, stats: &crate::queue::QueueStats, now_ms: u64) {
    let q = queue.to_owned();
    for (priority, n) in &stats.ready_by_priority {
        gauge!(QUEUE_READY, "queue" => q.clone(), "priority" => priority.to_string()).set(*n as f64);
    }
    gauge!(QUEUE_DELAYED, "queue" => q.clone()).set(stats.scheduled as f64);
    gauge!(QUEUE_IN_FLIGHT, "queue" => q.clone()).set(stats.active as f64);
    gauge!(QUEUE_DEAD, "queue" => q.clone()).set(stats.dead as f64);
    gauge!(QUEUE_EXPIRED_LEASES, "queue" => q.clone()).set(stats.expired_leases as f64);
    let age = stats
        .oldest_ready_since_ms
        .map_or(0.0, |since| now_ms.saturating_sub(since) as f64 / 1000.0);
    gauge!(QUEUE_OLDEST_READY_AGE, "queue" => q).set(age);
}

/// A job attempt of `kind` on `queue` ended with `outcome` after its handler ran `took`.
pub(crate) fn queue_job(queue: &str, kind: &str, outcome: &'static str, took: Option<Duration>) {
    counter!(QUEUE_JOBS, "queue" => queue.to_owned(), "kind" => kind.to_owned(), "outcome" => outcome).increment(1);
    if let Some(t) = took {
        metrics::histogram!(QUEUE_HANDLER_SECONDS, "queue" => queue.to_owned(), "kind" => kind.to_owned())
            .record(t.as_secs_f64());
    }
}

/// An input file of batch ingestion `pipeline` ended with `outcome`; a processed one took
/// `took`, a completed one had `bytes`.
pub(crate) fn ingest_file(pipeline: &str, outcome: &'static str, took: Option<Duration>, bytes: Option<u64>) {
    let p = pipeline.to_owned();
    counter!(INGEST_FILES, "pipeline" => p.clone(), "outcome" => outcome).increment(1);
    if let Some(t) = took {
        metrics::histogram!(INGEST_FILE_SECONDS, "pipeline" => p.clone()).record(t.as_secs_f64());
    }
    if let Some(b) = bytes {
        counter!(INGEST_BYTES, "pipeline" => p).increment(b);
    }
}

/// Input files of batch ingestion `pipeline` being processed now.
pub(crate) fn ingest_in_progress(pipeline: &str, n: usize) {
    gauge!(INGEST_IN_PROGRESS, "pipeline" => pipeline.to_owned()).set(n as f64);
}
