//! In-memory sources, sinks and a step harness, for examples and tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::checkpoint::CheckpointId;
use crate::checkpoint::recovery::SinkRecovery;
use crate::context::{Context, SideSink, StepShared, TaskLocal};
use crate::failure::Failure;
use crate::record::{Record, SourceBatch};
use crate::sink::{Framing, Guarantee, OutBatch, RecoveryReport, SealedEpoch, Sink, SinkError};
use crate::source::{PartitionReader, ReadStatus, Source, SourceError};
use crate::state::{SnapshotPolicy, StateStore};
use crate::step::Step;
use crate::time::WatermarkConfig;

/// A bounded source of in-memory partitions (`p0`, `p1`, ...); positions are record indexes.
#[derive(Clone, Debug)]
pub struct VecSource {
    partitions: Arc<Vec<Vec<Vec<u8>>>>,
}

impl VecSource {
    /// One inner vector per partition.
    pub fn new<T: AsRef<[u8]>>(partitions: Vec<Vec<T>>) -> Self {
        VecSource {
            partitions: Arc::new(
                partitions
                    .into_iter()
                    .map(|p| p.into_iter().map(|r| r.as_ref().to_vec()).collect())
                    .collect(),
            ),
        }
    }
}

/// Reads one partition of a [`VecSource`].
#[derive(Debug)]
pub struct VecReader {
    records: Arc<Vec<Vec<Vec<u8>>>>,
    partition: usize,
    next: u64,
}

impl Source for VecSource {
    type Position = u64;
    type Reader = VecReader;

    fn describe(&self) -> String {
        format!("memory ({} partitions)", self.partitions.len())
    }

    fn is_bounded(&self) -> bool {
        true
    }

    async fn discover(&mut self) -> Result<Vec<String>, SourceError> {
        Ok((0..self.partitions.len()).map(|i| format!("p{i}")).collect())
    }

    async fn open(&mut self, partition: &str, from: Option<u64>) -> Result<VecReader, SourceError> {
        let index = partition
            .strip_prefix('p')
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|i| *i < self.partitions.len())
            .ok_or_else(|| SourceError::Config(format!("no partition {partition}")))?;
        Ok(VecReader {
            records: self.partitions.clone(),
            partition: index,
            next: from.unwrap_or(0),
        })
    }
}

impl PartitionReader for VecReader {
    type Position = u64;

    async fn next_batch(&mut self, batch: &mut SourceBatch<u64>, max: usize) -> Result<ReadStatus, SourceError> {
        let records = &self.records[self.partition];
        if self.next as usize >= records.len() {
            return Ok(ReadStatus::End);
        }
        let end = (self.next as usize + max).min(records.len());
        for (i, r) in records[self.next as usize..end].iter().enumerate() {
            batch.push(Record::from_value(r.clone()), self.next + i as u64 + 1);
        }
        self.next = end as u64;
        Ok(ReadStatus::Records)
    }
}

#[derive(Debug, Default)]
struct MemoryInner {
    staged: BTreeMap<CheckpointId, Vec<u8>>,
    committed: BTreeMap<CheckpointId, Vec<u8>>,
    commits: u64,
}

/// An exactly-once sink in memory: epochs are staged and become visible on commit; recovery
/// behaves like the file sink's (commit covered epochs, discard the rest). Clones share the
/// same storage, so a test can run several pipelines against it like restarts.
#[derive(Clone, Debug, Default)]
pub struct MemorySink {
    inner: Arc<Mutex<MemoryInner>>,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Committed output, one string per line.
    pub fn committed_lines(&self) -> Vec<String> {
        let g = self.lock();
        g.committed
            .values()
            .flat_map(|d| {
                String::from_utf8_lossy(d)
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Bytes written but not committed yet.
    pub fn staged_bytes(&self) -> usize {
        self.lock().staged.values().map(Vec::len).sum()
    }

    /// Number of commits that made data visible.
    pub fn commits(&self) -> u64 {
        self.lock().commits
    }
}

struct MemorySealed {
    inner: Arc<Mutex<MemoryInner>>,
    epoch: CheckpointId,
}

impl SealedEpoch for MemorySealed {
    fn prepare(&mut self) -> Result<serde_json::Value, SinkError> {
        Ok(serde_json::json!({ "epoch": self.epoch }))
    }
    fn commit(&mut self) -> Result<(), SinkError> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(data) = g.staged.remove(&self.epoch) {
            g.committed.insert(self.epoch, data);
            g.commits += 1;
        }
        Ok(())
    }
}

impl Sink for MemorySink {
    fn describe(&self) -> String {
        "memory".into()
    }
    fn guarantee(&self) -> Guarantee {
        Guarantee::ExactlyOnce
    }
    async fn recover(&mut self, r: &SinkRecovery) -> Result<RecoveryReport, SinkError> {
        let mut g = self.lock();
        let mut report = RecoveryReport::default();
        let covered = |e: CheckpointId| r.last_checkpoint.is_some_and(|k| e <= k);
        let epochs: Vec<_> = g.staged.keys().copied().collect();
        for e in epochs {
            if let Some(d) = g.staged.remove(&e) {
                if covered(e) {
                    g.committed.insert(e, d);
                    report.committed += 1;
                } else {
                    report.aborted += 1;
                }
            }
        }
        let before = g.committed.len();
        g.committed.retain(|e, _| covered(*e));
        report.rolled_back = before - g.committed.len();
        Ok(report)
    }
    async fn highest_epoch(&mut self) -> Result<Option<CheckpointId>, SinkError> {
        let g = self.lock();
        Ok(g.staged.keys().chain(g.committed.keys()).copied().max())
    }
    async fn write(&mut self, epoch: CheckpointId, batch: &OutBatch) -> Result<(), SinkError> {
        self.lock()
            .staged
            .entry(epoch)
            .or_default()
            .extend_from_slice(batch.data());
        Ok(())
    }
    async fn seal(&mut self, epoch: CheckpointId) -> Result<Box<dyn SealedEpoch>, SinkError> {
        Ok(Box::new(MemorySealed {
            inner: self.inner.clone(),
            epoch,
        }))
    }
}

/// Runs a step on single items, outside a pipeline, with a real [`Context`]: for unit tests
/// of steps.
pub struct StepHarness {
    shared: StepShared,
    local: TaskLocal,
    runtime: tokio::runtime::Runtime,
}

impl StepHarness {
    /// A harness with the given side sinks (by name) and default watermark settings.
    pub fn new(side_sinks: &[&str]) -> Self {
        Self::with_watermarks(side_sinks, WatermarkConfig::default())
    }

    /// A harness with the given side sinks and watermark settings.
    pub fn with_watermarks(side_sinks: &[&str], time: WatermarkConfig) -> Self {
        let sides = side_sinks
            .iter()
            .map(|n| SideSink {
                name: (*n).to_owned(),
                framing: Framing::Lines,
                limits: Default::default(),
            })
            .collect();
        let shared = StepShared::new("test", StateStore::new(SnapshotPolicy::default()), time, sides);
        let local = TaskLocal::new("p0", &shared);
        // A current-thread runtime cannot fail to build without I/O drivers.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| panic!("test runtime: {e}"));
        StepHarness { shared, local, runtime }
    }

    /// Sets the pipeline watermark.
    pub fn set_watermark(&mut self, wm: Option<i64>) {
        self.shared.watermark.set(wm);
    }

    /// Runs `step` on `item` as if it came from `record`.
    pub fn run<In, S: Step<In>>(&mut self, step: &mut S, item: In, record: &Record) -> Result<Vec<S::Out>, Failure> {
        self.local.begin_record(Some(record));
        let mut out = Vec::new();
        let mut cx = Context::new(&self.shared, &mut self.local, Some(record));
        self.runtime.block_on(step.process(item, &mut cx, &mut out))?;
        Ok(out)
    }

    /// Runs `step` on a record made from `value`.
    pub fn run_record<S: Step<Record>>(&mut self, step: &mut S, value: &str) -> Result<Vec<S::Out>, Failure> {
        let r = Record::from_value(value.as_bytes().to_vec());
        self.run(step, r.clone(), &r)
    }

    /// Runs `finish` of `step`.
    pub fn finish<In, S: Step<In>>(&mut self, step: &mut S) -> Result<Vec<S::Out>, Failure> {
        self.local.begin_record(None);
        let mut out = Vec::new();
        let mut cx = Context::new(&self.shared, &mut self.local, None);
        self.runtime.block_on(step.finish(&mut cx, &mut out))?;
        Ok(out)
    }

    /// Lines emitted so far to side sink `name` (and clears them).
    pub fn take_side(&mut self, name: &str) -> Vec<String> {
        let Some(i) = self.shared.side_sinks.iter().position(|s| s.name == name) else {
            return Vec::new();
        };
        let lines = String::from_utf8_lossy(self.local.side[i].data())
            .lines()
            .map(str::to_owned)
            .collect();
        self.local.side[i].clear();
        lines
    }

    /// Late records dropped so far.
    pub fn late_dropped(&self) -> u64 {
        self.local.late_dropped
    }
}

/// Wraps a step so that it works on plain values outside a flow; see [`StepHarness`].
pub fn run_step<In, S: Step<In>>(step: &mut S, item: In) -> Result<Vec<S::Out>, Failure> {
    let mut h = StepHarness::new(&[]);
    let r = Record::default();
    h.run(step, item, &r)
}
