//! A bounded source of records held in memory, in named partitions (replays use it).

use std::sync::Arc;

use super::{PartitionReader, ReadStatus, Source, SourceError};
use crate::record::{Record, SourceBatch};

/// Named partitions of records; positions are record indexes.
#[derive(Clone, Debug)]
pub struct MemorySource {
    name: String,
    partitions: Arc<Vec<(String, Vec<Record>)>>,
}

impl MemorySource {
    /// A source called `name` (for logs) with these partitions.
    pub fn new(name: impl Into<String>, partitions: Vec<(String, Vec<Record>)>) -> Self {
        MemorySource {
            name: name.into(),
            partitions: Arc::new(partitions),
        }
    }
}

/// Reads one partition of a [`MemorySource`].
#[derive(Debug)]
pub struct MemoryReader {
    partitions: Arc<Vec<(String, Vec<Record>)>>,
    index: usize,
    next: u64,
}

impl Source for MemorySource {
    type Position = u64;
    type Reader = MemoryReader;

    fn describe(&self) -> String {
        let n: usize = self.partitions.iter().map(|(_, r)| r.len()).sum();
        format!("{} ({n} records in memory)", self.name)
    }

    fn is_bounded(&self) -> bool {
        true
    }

    async fn discover(&mut self) -> Result<Vec<String>, SourceError> {
        Ok(self.partitions.iter().map(|(p, _)| p.clone()).collect())
    }

    async fn open(&mut self, partition: &str, from: Option<u64>) -> Result<MemoryReader, SourceError> {
        let index = self
            .partitions
            .iter()
            .position(|(p, _)| p == partition)
            .ok_or_else(|| SourceError::Config(format!("no partition {partition}")))?;
        Ok(MemoryReader {
            partitions: self.partitions.clone(),
            index,
            next: from.unwrap_or(0),
        })
    }
}

impl PartitionReader for MemoryReader {
    type Position = u64;

    async fn next_batch(&mut self, batch: &mut SourceBatch<u64>, max: usize) -> Result<ReadStatus, SourceError> {
        let records = &self.partitions[self.index].1;
        let from = self.next as usize;
        if from >= records.len() {
            return Ok(ReadStatus::End);
        }
        let end = (from + max).min(records.len());
        for (i, r) in records[from..end].iter().enumerate() {
            batch.push(r.clone(), (from + i + 1) as u64);
        }
        self.next = end as u64;
        Ok(ReadStatus::Records)
    }
}
