//! Live counters of a running pipeline, readable from any thread (progress lines, metrics).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Live counters of one run. Updated by the worker thread once per batch and per checkpoint.
#[derive(Debug, Default)]
pub struct Progress {
    records_in: AtomicU64,
    records_out: AtomicU64,
    dead_letters: AtomicU64,
    late_dropped: AtomicU64,
    checkpoints: AtomicU64,
    last_checkpoint: AtomicU64,
    last_checkpoint_ms: AtomicU64,
    state_keys: AtomicU64,
    partitions_running: AtomicU64,
    partitions_done: AtomicU64,
    finished: AtomicBool,
    source_lag: AtomicU64,
    lag_known: AtomicBool,
    ready: AtomicBool,
    paused: Mutex<Option<&'static str>>,
    lag_by_partition: Mutex<Vec<(String, u64)>>,
}

/// A copy of the counters at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Records read and handled in this run.
    pub records_in: u64,
    /// Records written to the main sink in this run.
    pub records_out: u64,
    /// Records dead-lettered in this run.
    pub dead_letters: u64,
    /// Late records dropped in this run.
    pub late_dropped: u64,
    /// Checkpoints completed (committed) in this run.
    pub checkpoints: u64,
    /// Id of the last completed checkpoint (0: none).
    pub last_checkpoint: u64,
    /// Time of the last completed checkpoint, ms since the Unix epoch (0: none).
    pub last_checkpoint_ms: u64,
    /// Live keys in state at the last checkpoint.
    pub state_keys: u64,
    /// Partitions being read.
    pub partitions_running: u64,
    /// Partitions read to their end.
    pub partitions_done: u64,
    /// True once the run has ended.
    pub finished: bool,
    /// What the source has left to read over all partitions at the last checkpoint, when it
    /// knows (records behind a broker's end, bytes left in files).
    pub source_lag: Option<u64>,
}

impl Progress {
    /// Reads every counter.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            records_in: self.records_in.load(Relaxed),
            records_out: self.records_out.load(Relaxed),
            dead_letters: self.dead_letters.load(Relaxed),
            late_dropped: self.late_dropped.load(Relaxed),
            checkpoints: self.checkpoints.load(Relaxed),
            last_checkpoint: self.last_checkpoint.load(Relaxed),
            last_checkpoint_ms: self.last_checkpoint_ms.load(Relaxed),
            state_keys: self.state_keys.load(Relaxed),
            partitions_running: self.partitions_running.load(Relaxed),
            partitions_done: self.partitions_done.load(Relaxed),
            finished: self.finished.load(Relaxed),
            source_lag: self.lag_known.load(Relaxed).then(|| self.source_lag.load(Relaxed)),
        }
    }

    /// The lag of each partition whose reader knows it, at the last checkpoint.
    pub fn lag_by_partition(&self) -> Vec<(String, u64)> {
        self.lag_by_partition.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// True once the run has recovered and processes input, until it ends.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed) && !self.finished.load(Relaxed)
    }

    /// Why the input is paused, if it is (as of the last checkpoint or pause).
    pub fn paused(&self) -> Option<&'static str> {
        self.paused.lock().ok().and_then(|p| *p)
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Relaxed);
    }

    pub(crate) fn set_paused(&self, reason: Option<&'static str>) {
        if let Ok(mut p) = self.paused.lock() {
            *p = reason;
        }
    }

    pub(crate) fn set_lag(&self, lag: Vec<(String, u64)>) {
        self.lag_known.store(!lag.is_empty(), Relaxed);
        self.source_lag.store(lag.iter().map(|(_, n)| n).sum(), Relaxed);
        if let Ok(mut l) = self.lag_by_partition.lock() {
            *l = lag;
        }
    }

    pub(crate) fn set_records(&self, records_in: u64, records_out: u64, dead: u64, late: u64) {
        self.records_in.store(records_in, Relaxed);
        self.records_out.store(records_out, Relaxed);
        self.dead_letters.store(dead, Relaxed);
        self.late_dropped.store(late, Relaxed);
    }

    pub(crate) fn checkpoint_done(&self, id: u64, at_ms: u64, keys: u64) {
        self.checkpoints.fetch_add(1, Relaxed);
        self.last_checkpoint.store(id, Relaxed);
        self.last_checkpoint_ms.store(at_ms, Relaxed);
        self.state_keys.store(keys, Relaxed);
    }

    pub(crate) fn set_partitions(&self, running: u64, done: u64) {
        self.partitions_running.store(running, Relaxed);
        self.partitions_done.store(done, Relaxed);
    }

    pub(crate) fn set_finished(&self) {
        self.finished.store(true, Relaxed);
    }
}
