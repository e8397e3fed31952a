//! How long does processing stop while keel checkpoints a large keyed state?
//!
//! Runs `KEYS + 25M` records through one keyed stateful step with a checkpoint every second
//! into a temporary directory: the first `KEYS` records create one key each, the next 25M
//! update keys spread over the whole table. A step notes the wall-clock gap between consecutive
//! records; the longest gap is the longest pause of processing (a checkpoint's work on the
//! worker thread shows up there). Prints records/s, the number of checkpoints, and per phase
//! the longest and the 99.99th percentile gap: in the first phase the table grows (its
//! hash table doubles now and then, a pause of its own); in the second it does not, so its
//! pauses are the checkpoints'.
//!
//! ```text
//! cargo run --release -p keel --example state_pause -- 1000000
//! cargo run --release -p keel --example state_pause -- 10000000
//! ```

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use keel::testing::MemorySink;
use keel::{
    FileCheckpointStore, Flow, PartitionReader, Pipeline, ReadStatus, Record, Source, SourceBatch, SourceError,
    StateSpec,
};

/// `total` records in one partition: record `i` has key `i` for the first `keys` records,
/// then keys spread over the table.
#[derive(Clone)]
struct Keys {
    keys: u64,
    total: u64,
}

struct KeysReader {
    keys: u64,
    total: u64,
    next: u64,
}

impl Source for Keys {
    type Position = u64;
    type Reader = KeysReader;
    fn describe(&self) -> String {
        format!("{} records over {} keys", self.total, self.keys)
    }
    fn is_bounded(&self) -> bool {
        true
    }
    async fn discover(&mut self) -> Result<Vec<String>, SourceError> {
        Ok(vec!["p0".into()])
    }
    async fn open(&mut self, _p: &str, from: Option<u64>) -> Result<KeysReader, SourceError> {
        Ok(KeysReader {
            keys: self.keys,
            total: self.total,
            next: from.unwrap_or(0),
        })
    }
}

impl PartitionReader for KeysReader {
    type Position = u64;
    async fn next_batch(&mut self, batch: &mut SourceBatch<u64>, max: usize) -> Result<ReadStatus, SourceError> {
        if self.next >= self.total {
            return Ok(ReadStatus::End);
        }
        let end = (self.next + max as u64).min(self.total);
        for i in self.next..end {
            let key = if i < self.keys { i } else { (i * 7919) % self.keys };
            batch.push(Record::from_value(key.to_string().into_bytes()), i + 1);
        }
        self.next = end;
        Ok(ReadStatus::Records)
    }
}

fn main() {
    let keys: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let counts = StateSpec::<u64>::new("counts");
    // (previous record's time, records seen, gaps of phase 1, gaps of phase 2) in µs
    type Gaps = (Option<Instant>, u64, Vec<u32>, Vec<u32>);
    let gaps: Rc<RefCell<Gaps>> = Rc::default();
    let g = gaps.clone();
    let flow = Flow::<Record>::new()
        .key_by(|r: &Record| r.value.to_vec())
        .stateful(move |_r, cx| {
            cx.state(&counts).update(|n| *n.get_or_insert(0) += 1)?;
            let now = Instant::now();
            let mut g = g.borrow_mut();
            if let Some(prev) = g.0 {
                let gap = (now - prev).as_micros().min(u32::MAX as u128) as u32;
                if g.1 < keys { g.2.push(gap) } else { g.3.push(gap) }
            }
            g.0 = Some(now);
            g.1 += 1;
            Ok(())
        })
        .filter(|_: &()| false);
    let started = Instant::now();
    let summary = Pipeline::builder("state-pause")
        .source(Keys {
            keys,
            total: keys + 25_000_000,
        })
        .flow(flow)
        .sink(MemorySink::new())
        .checkpoints(FileCheckpointStore::new(dir.path()))
        .checkpoint_interval(Some(Duration::from_secs(1)))
        .build()
        .expect("pipeline")
        .run()
        .expect("run");
    let elapsed = started.elapsed();
    let stats = |mut v: Vec<u32>| {
        v.sort_unstable();
        let max = v.last().copied().unwrap_or(0);
        let p = v.get(v.len().saturating_sub(1) * 9999 / 10000).copied().unwrap_or(0);
        (max as f64 / 1000.0, p as f64 / 1000.0)
    };
    let (grow, update) = {
        let mut g = gaps.borrow_mut();
        (stats(std::mem::take(&mut g.2)), stats(std::mem::take(&mut g.3)))
    };
    println!(
        "keys={keys} records={} elapsed={:.2}s records/s={:.0} checkpoints={} growing: longest_pause_ms={:.1} p99.99_ms={:.3} updating: longest_pause_ms={:.1} p99.99_ms={:.3}",
        summary.records_in,
        elapsed.as_secs_f64(),
        summary.records_in as f64 / elapsed.as_secs_f64(),
        summary.checkpoints,
        grow.0,
        grow.1,
        update.0,
        update.1
    );
}
