//! Helpers shared by the runnable examples: a sink that fails on purpose, and where the
//! examples write.
//!
//! ```text
//! cargo run -p keel-examples --example orders            # the orders job with the Rust API
//! cargo run -p keel-examples --example rate_limited_api  # pause and resume on 429 + retry-after
//! cargo run -p keel-examples --example flaky_sink        # retries with backoff, then dead letters
//! cargo run -p keel-examples --example sink_outage       # breaker opens, input pauses, resumes
//! cargo run -p keel-examples --example poison_record     # dead-lettered, the partition goes on
//! cargo run -p keel-examples --example ledger_txn        # the ledger and staged transactions
//! cargo run -p keel-examples --example job_queue         # a worker: retries, backoff, dead set
//! cargo run -p keel-examples --example crawler           # 429 pause, retries, skip, 401 abort and resume
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use keel::checkpoint::CheckpointId;
use keel::checkpoint::recovery::SinkRecovery;
use keel::policy::{RandomSource, SplitMix};
use keel::sink::{Guarantee, OutBatch, RecoveryReport, SealedEpoch, Sink, SinkError};

/// A fresh output directory `target/examples/<name>`.
pub fn out_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from("target/examples").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// When a [`Faulty`] sink fails.
#[derive(Clone, Debug)]
pub enum Faults {
    /// Each write fails with this probability (a seeded, repeatable sequence).
    Random(f64),
    /// Every write fails from `from` to `until` after the sink was created.
    Outage {
        /// Start of the outage.
        from: std::time::Duration,
        /// End of the outage.
        until: std::time::Duration,
    },
}

/// Wraps a sink and makes its writes fail (transiently, like a network error) as planned.
pub struct Faulty<S> {
    inner: S,
    faults: Faults,
    rng: SplitMix,
    started: Instant,
    /// Writes attempted and writes failed.
    pub calls: Arc<(AtomicU64, AtomicU64)>,
    log: Arc<Mutex<Vec<String>>>,
}

impl<S> Faulty<S> {
    /// `inner` with `faults`.
    pub fn new(inner: S, faults: Faults) -> Self {
        Faulty {
            inner,
            faults,
            rng: SplitMix::new(7),
            started: Instant::now(),
            calls: Arc::new((AtomicU64::new(0), AtomicU64::new(0))),
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

impl<S: Sink> Sink for Faulty<S> {
    fn describe(&self) -> String {
        format!("{} (failing on purpose: {:?})", self.inner.describe(), self.faults)
    }
    fn guarantee(&self) -> Guarantee {
        self.inner.guarantee()
    }
    async fn highest_epoch(&mut self) -> Result<Option<CheckpointId>, SinkError> {
        self.inner.highest_epoch().await
    }
    async fn recover(&mut self, r: &SinkRecovery) -> Result<RecoveryReport, SinkError> {
        self.inner.recover(r).await
    }
    async fn write(&mut self, epoch: CheckpointId, batch: &OutBatch) -> Result<(), SinkError> {
        self.calls.0.fetch_add(1, Ordering::Relaxed);
        let fail = match &self.faults {
            Faults::Random(p) => self.rng.next_f64() < *p,
            Faults::Outage { from, until } => {
                let t = self.started.elapsed();
                t >= *from && t < *until
            }
        };
        if fail {
            self.calls.1.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut l) = self.log.lock() {
                l.push(format!(
                    "{:?}: write of {} records refused",
                    self.started.elapsed(),
                    batch.len()
                ));
            }
            let e = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset by peer");
            return Err(SinkError::io("writing to the sink", e));
        }
        self.inner.write(epoch, batch).await
    }
    async fn seal(&mut self, epoch: CheckpointId) -> Result<Box<dyn SealedEpoch>, SinkError> {
        self.inner.seal(epoch).await
    }
}

/// Counts the lines of the visible files of a directory.
pub fn count_lines(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| {
                    std::fs::read_to_string(e.path())
                        .map(|t| t.lines().count())
                        .unwrap_or(0)
                })
                .sum()
        })
        .unwrap_or(0)
}
