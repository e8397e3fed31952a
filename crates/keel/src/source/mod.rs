//! Sources: where records come from.
//!
//! A source has partitions; each partition is read in order by one [`PartitionReader`], and
//! every record comes with the position *after* it. keel stores positions in its own
//! checkpoints and seeks sources to them on restart; it never relies on a broker's committed
//! offsets for recovery ([`Source::acknowledge`] is for monitoring only).

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::checkpoint::CheckpointId;
use crate::record::SourceBatch;

/// An error of a source.
#[derive(Debug, Error)]
pub enum SourceError {
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What failed (`reading input/part-001.jsonl`).
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// A saved position cannot be used (for example a file is now shorter than the offset).
    #[error("partition {partition}: cannot resume at {position}: {reason}")]
    BadPosition {
        /// The partition.
        partition: String,
        /// The position, as text.
        position: String,
        /// Why.
        reason: String,
    },
    /// The source is misconfigured.
    #[error("{0}")]
    Config(String),
    /// A failure the source classified itself (a broker's error codes say more than an
    /// I/O error kind): the policies of stage `source` apply to its class.
    #[error("{0}")]
    Failed(#[source] crate::failure::FailureError),
    /// Another error.
    #[error("{0}")]
    Other(String),
}

/// What a call to [`PartitionReader::next_batch`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Records were appended to the batch.
    Records,
    /// Nothing to read right now; ask again later.
    Idle,
    /// The partition is exhausted (bounded sources only).
    End,
}

/// A source of records with one or more partitions.
pub trait Source: 'static {
    /// Where a partition stands; serialised into checkpoints.
    type Position: Serialize + DeserializeOwned + Clone + Debug + 'static;
    /// Reads one partition.
    type Reader: PartitionReader<Position = Self::Position>;

    /// A short description for logs (`files input/*.jsonl`).
    fn describe(&self) -> String;

    /// True when the input is finite: the pipeline ends when every partition has ended.
    fn is_bounded(&self) -> bool;

    /// True when a partition that reported [`ReadStatus::End`] never gets more records
    /// (files, generators): a later run skips it. A broker's partition read in bounded mode
    /// ends only for the run that read it: such a source returns false, and a later run
    /// reads on from its position.
    fn ends_are_final(&self) -> bool {
        true
    }

    /// How often to look for new partitions while running (`None`: only at start).
    fn discovery_interval(&self) -> Option<Duration> {
        None
    }

    /// Lists the partitions to read, in the order they should be opened.
    fn discover(&mut self) -> impl Future<Output = Result<Vec<String>, SourceError>>;

    /// Opens `partition`, positioned at `from` (`None`: its beginning).
    fn open(
        &mut self,
        partition: &str,
        from: Option<Self::Position>,
    ) -> impl Future<Output = Result<Self::Reader, SourceError>>;

    /// Called after checkpoint `id` is committed with the positions it holds. Brokers use
    /// this to acknowledge or commit offsets for monitoring; it must not be needed for
    /// recovery.
    fn acknowledge(
        &mut self,
        id: CheckpointId,
        positions: &[(String, Self::Position)],
    ) -> impl Future<Output = Result<(), SourceError>> {
        let _ = (id, positions);
        async { Ok(()) }
    }
}

/// Reads one partition in order.
pub trait PartitionReader: 'static {
    /// The source's position type.
    type Position: Clone;

    /// Appends up to `max` records to `batch` (empty on entry) and returns what it found.
    ///
    /// Must return within about 100 ms when no data is available (with
    /// [`ReadStatus::Idle`]), so that checkpoints are not held up.
    fn next_batch(
        &mut self,
        batch: &mut SourceBatch<Self::Position>,
        max: usize,
    ) -> impl Future<Output = Result<ReadStatus, SourceError>>;

    /// How far this partition's reader is behind its end, when the source knows (records
    /// for a broker, bytes for a file): read after each batch, reported per partition in
    /// [`crate::runtime::Progress`]. Must be cheap (no I/O).
    fn lag(&self) -> Option<u64> {
        None
    }
}

mod memory;

pub use memory::{MemoryReader, MemorySource};
