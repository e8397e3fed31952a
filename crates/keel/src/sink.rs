//! Sinks: where records go, with two-phase commits scoped to epochs.
//!
//! A sink receives encoded records ([`OutBatch`]) tagged with the current epoch. At a
//! checkpoint it *seals* the epoch and hands a [`SealedEpoch`] to the checkpoint thread, which
//! calls [`SealedEpoch::prepare`] (make the data durable, return a pre-commit) before the
//! manifest is written and [`SealedEpoch::commit`] (make it visible) after. On start,
//! [`Sink::recover`] finishes interrupted commits and discards epochs the restored checkpoint
//! does not cover.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use thiserror::Error;

use crate::checkpoint::CheckpointId;
use crate::checkpoint::recovery::SinkRecovery;
use crate::failure::Failure;

/// What a sink promises about its output after crashes and restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Guarantee {
    /// Every record is visible exactly once, and only after its checkpoint (two-phase commit).
    ExactlyOnce,
    /// Replays rewrite the same records (upserts by key); readers may see them early.
    Idempotent,
    /// Every record is written at least once; replays after a crash may duplicate.
    AtLeastOnce,
}

impl fmt::Display for Guarantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Guarantee::ExactlyOnce => "exactly-once",
            Guarantee::Idempotent => "idempotent",
            Guarantee::AtLeastOnce => "at-least-once",
        })
    }
}

/// How records are laid out in an [`OutBatch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Each record is followed by `\n`; the data can be written out as is.
    Lines,
    /// Records are separate messages; use [`OutBatch::records`].
    Messages,
}

/// An error of a sink.
#[derive(Debug, Error)]
pub enum SinkError {
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What failed.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// A pre-commit from a checkpoint cannot be used.
    #[error("invalid pre-commit: {0}")]
    PreCommit(String),
    /// The sink refused records.
    #[error("{0}")]
    Rejected(Failure),
    /// The sink can no longer write this epoch (its staged data is in an unknown state): the
    /// run must stop and recover from its last checkpoint.
    #[error("{0}")]
    Fatal(String),
    /// Another error.
    #[error("{0}")]
    Other(String),
}

impl SinkError {
    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        SinkError::Io {
            context: crate::failure::name_io_cause(context.into(), &source),
            source,
        }
    }
}

/// Encoded records on their way to a sink.
#[derive(Debug)]
pub struct OutBatch {
    framing: Framing,
    /// The values (with their `\n` for [`Framing::Lines`]): what a file sink writes.
    data: Vec<u8>,
    /// The keys, apart from the values, so that they never end up in the written data.
    keys: Vec<u8>,
    spans: Vec<Span>,
}

#[derive(Clone, Copy, Debug)]
struct Span {
    /// Where the key starts in `keys`, if the record has one (it ends at the next key).
    key_start: Option<u32>,
    key_end: u32,
    value_start: u32,
    end: u32,
}

/// One record of an [`OutBatch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutRecord<'a> {
    /// The key, if the encoder produced one.
    pub key: Option<&'a [u8]>,
    /// The encoded value (without the line terminator).
    pub value: &'a [u8],
}

impl OutBatch {
    /// An empty batch for a sink with the given framing.
    pub fn new(framing: Framing) -> Self {
        OutBatch {
            framing,
            data: Vec::new(),
            keys: Vec::new(),
            spans: Vec::new(),
        }
    }

    /// Appends a record whose value `encode` writes into the buffer it is given; `key`, if
    /// any, is kept beside it (never in [`data`](OutBatch::data)). If `encode` fails, the
    /// batch is left unchanged.
    pub fn push_with<E>(
        &mut self,
        key: Option<&[u8]>,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let value_start = self.data.len();
        if let Err(e) = encode(&mut self.data) {
            self.data.truncate(value_start);
            return Err(e);
        }
        let end = self.data.len();
        if self.framing == Framing::Lines {
            self.data.push(b'\n');
        }
        let key_start = key.map(|k| {
            let at = self.keys.len() as u32;
            self.keys.extend_from_slice(k);
            at
        });
        self.spans.push(Span {
            key_start,
            key_end: self.keys.len() as u32,
            value_start: value_start as u32,
            end: end as u32,
        });
        Ok(())
    }

    /// Appends a record from bytes.
    pub fn push(&mut self, key: Option<&[u8]>, value: &[u8]) {
        let _ = self.push_with::<()>(key, |b| {
            b.extend_from_slice(value);
            Ok(())
        });
    }

    /// The framing of this batch.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// The encoded values, without keys: for [`Framing::Lines`] each followed by `\n` (the
    /// data can be written out as is). For [`Framing::Messages`] the values are concatenated;
    /// use [`OutBatch::records`] for records with their keys.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The records, in order.
    pub fn records(&self) -> impl ExactSizeIterator<Item = OutRecord<'_>> + '_ {
        self.spans.iter().map(|s| OutRecord {
            key: s.key_start.map(|k| &self.keys[k as usize..s.key_end as usize]),
            value: &self.data[s.value_start as usize..s.end as usize],
        })
    }

    /// The last record, if any.
    pub fn last(&self) -> Option<OutRecord<'_>> {
        self.spans.last().map(|s| OutRecord {
            key: s.key_start.map(|k| &self.keys[k as usize..s.key_end as usize]),
            value: &self.data[s.value_start as usize..s.end as usize],
        })
    }

    /// Bytes of the last record (key and value), 0 when empty.
    pub fn last_record_bytes(&self) -> usize {
        self.spans.last().map_or(0, |s| {
            let key = s.key_start.map_or(0, |k| (s.key_end - k) as usize);
            (s.end - s.value_start) as usize + key
        })
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Bytes held (values and keys).
    pub fn bytes(&self) -> usize {
        self.data.len() + self.keys.len()
    }

    /// Removes all records, keeping the allocation.
    pub fn clear(&mut self) {
        self.data.clear();
        self.keys.clear();
        self.spans.clear();
    }

    /// Keeps only the first `n` records (used to drop outputs of a record that failed).
    pub fn truncate(&mut self, n: usize) {
        if n < self.spans.len() {
            let s = self.spans[n];
            self.data.truncate(s.value_start as usize);
            self.keys.truncate(s.key_start.unwrap_or(s.key_end) as usize);
            self.spans.truncate(n);
        }
    }
}

/// The part of an epoch that the checkpoint thread finishes. Both calls may block.
pub trait SealedEpoch: Send + 'static {
    /// Makes the epoch's data durable and returns the pre-commit to store in the manifest.
    fn prepare(&mut self) -> Result<serde_json::Value, SinkError>;
    /// Makes the epoch's data visible. Called only after the manifest is durable, and maybe
    /// again after a crash: must be idempotent.
    fn commit(&mut self) -> Result<(), SinkError>;
}

/// A sealed epoch with nothing to do (no records were written).
#[derive(Debug, Default)]
pub struct EmptyEpoch;

impl SealedEpoch for EmptyEpoch {
    fn prepare(&mut self) -> Result<serde_json::Value, SinkError> {
        Ok(serde_json::Value::Null)
    }
    fn commit(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// What recovery did, for logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Files or transactions whose interrupted commit was finished.
    pub committed: usize,
    /// Staged epochs discarded.
    pub aborted: usize,
    /// Committed output of epochs newer than the restored checkpoint, removed.
    pub rolled_back: usize,
}

/// A destination for records.
pub trait Sink: 'static {
    /// A short description for logs (`files out/records`).
    fn describe(&self) -> String;

    /// The delivery guarantee, printed when a pipeline starts.
    fn guarantee(&self) -> Guarantee;

    /// How this sink wants records laid out.
    fn framing(&self) -> Framing {
        Framing::Lines
    }

    /// The highest epoch id the sink's storage mentions, so new epochs never reuse one.
    fn highest_epoch(&mut self) -> impl Future<Output = Result<Option<CheckpointId>, SinkError>> {
        async { Ok(None) }
    }

    /// The largest record (key and value) the sink can take, if it has a limit (a broker's
    /// message size). The runtime fails a bigger main output record as `oversized` at this
    /// sink's stage when it is encoded, so the policy handles that record alone, before its
    /// epoch is decided.
    fn max_record_bytes(&self) -> Option<usize> {
        None
    }

    /// A check each encoded record must pass to join an epoch (a value the destination's
    /// schema cannot take, say). A record that fails it fails alone at this sink's stage,
    /// before its epoch is decided, and the stage's policy handles it (a dead letter by
    /// default). Read after [`Sink::recover`], so that it can use what the sink learnt there.
    fn record_check(&self) -> Option<RecordCheck> {
        None
    }

    /// Called once on start, before any write: finish commits of epochs up to the restored
    /// checkpoint, discard staged epochs after it.
    fn recover(&mut self, recovery: &SinkRecovery) -> impl Future<Output = Result<RecoveryReport, SinkError>>;

    /// Writes records of epoch `epoch` to the staging area (invisible until commit).
    fn write(&mut self, epoch: CheckpointId, batch: &OutBatch) -> impl Future<Output = Result<(), SinkError>>;

    /// Ends epoch `epoch` on the writing side; later writes belong to a later epoch.
    fn seal(&mut self, epoch: CheckpointId) -> impl Future<Output = Result<Box<dyn SealedEpoch>, SinkError>>;
}

/// A per-record check of a sink ([`Sink::record_check`]).
pub type RecordCheck = std::sync::Arc<dyn Fn(OutRecord<'_>) -> Result<(), Failure> + Send + Sync>;

/// What each record written to a sink must satisfy: its size limit and its own check.
#[derive(Clone, Default)]
pub(crate) struct RecordLimits {
    pub(crate) max_bytes: Option<usize>,
    pub(crate) check: Option<RecordCheck>,
}

impl fmt::Debug for RecordLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordLimits")
            .field("max_bytes", &self.max_bytes)
            .field("check", &self.check.is_some())
            .finish()
    }
}

impl RecordLimits {
    pub(crate) fn of(sink: &dyn DynSink) -> Self {
        RecordLimits {
            max_bytes: sink.max_record_bytes(),
            check: sink.record_check(),
        }
    }
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Object-safe form of [`Sink`], so a pipeline can hold sinks of different types.
pub(crate) trait DynSink {
    fn describe(&self) -> String;
    fn guarantee(&self) -> Guarantee;
    fn framing(&self) -> Framing;
    fn max_record_bytes(&self) -> Option<usize>;
    fn record_check(&self) -> Option<RecordCheck>;
    fn highest_epoch(&mut self) -> BoxFut<'_, Result<Option<CheckpointId>, SinkError>>;
    fn recover<'a>(&'a mut self, r: &'a SinkRecovery) -> BoxFut<'a, Result<RecoveryReport, SinkError>>;
    fn write<'a>(&'a mut self, epoch: CheckpointId, batch: &'a OutBatch) -> BoxFut<'a, Result<(), SinkError>>;
    fn seal(&mut self, epoch: CheckpointId) -> BoxFut<'_, Result<Box<dyn SealedEpoch>, SinkError>>;
}

impl<S: Sink> DynSink for S {
    fn describe(&self) -> String {
        Sink::describe(self)
    }
    fn guarantee(&self) -> Guarantee {
        Sink::guarantee(self)
    }
    fn framing(&self) -> Framing {
        Sink::framing(self)
    }
    fn max_record_bytes(&self) -> Option<usize> {
        Sink::max_record_bytes(self)
    }
    fn record_check(&self) -> Option<RecordCheck> {
        Sink::record_check(self)
    }
    fn highest_epoch(&mut self) -> BoxFut<'_, Result<Option<CheckpointId>, SinkError>> {
        Box::pin(Sink::highest_epoch(self))
    }
    fn recover<'a>(&'a mut self, r: &'a SinkRecovery) -> BoxFut<'a, Result<RecoveryReport, SinkError>> {
        Box::pin(Sink::recover(self, r))
    }
    fn write<'a>(&'a mut self, epoch: CheckpointId, batch: &'a OutBatch) -> BoxFut<'a, Result<(), SinkError>> {
        Box::pin(Sink::write(self, epoch, batch))
    }
    fn seal(&mut self, epoch: CheckpointId) -> BoxFut<'_, Result<Box<dyn SealedEpoch>, SinkError>> {
        Box::pin(Sink::seal(self, epoch))
    }
}

/// Turns items into bytes for a sink.
pub trait Encoder<T>: Clone + 'static {
    /// Appends the encoded value of `item` to `out`.
    fn encode(&mut self, item: &T, out: &mut Vec<u8>) -> Result<(), Failure>;

    /// Appends the key of `item` to `out` and returns true, or returns false for no key.
    fn key(&mut self, item: &T, out: &mut Vec<u8>) -> bool {
        let _ = (item, out);
        false
    }
}

/// Encodes items as compact JSON (one object per line on line sinks).
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonEncoder;

impl<T: Serialize> Encoder<T> for JsonEncoder {
    fn encode(&mut self, item: &T, out: &mut Vec<u8>) -> Result<(), Failure> {
        serde_json::to_writer(out, item).map_err(|e| Failure::permanent("encode", e.to_string()))
    }
}

/// Encodes byte-like items as they are.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawEncoder;

impl<T: AsRef<[u8]>> Encoder<T> for RawEncoder {
    fn encode(&mut self, item: &T, out: &mut Vec<u8>) -> Result<(), Failure> {
        out.extend_from_slice(item.as_ref());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_batch_is_newline_framed_and_truncates() {
        let mut b = OutBatch::new(Framing::Lines);
        b.push(None, b"a");
        b.push(Some(b"k"), b"bb");
        assert_eq!(b.data(), b"a\nbb\n", "a key is never glued onto the value");
        let recs: Vec<_> = b.records().collect();
        assert_eq!(
            recs[1],
            OutRecord {
                key: Some(b"k"),
                value: b"bb"
            }
        );
        b.truncate(1);
        assert_eq!(b.data(), b"a\n");
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn failed_encode_leaves_batch_unchanged() {
        let mut b = OutBatch::new(Framing::Messages);
        b.push(None, b"x");
        let r: Result<(), &str> = b.push_with(Some(b"key"), |buf| {
            buf.extend_from_slice(b"partial");
            Err("nope")
        });
        assert!(r.is_err());
        assert_eq!(b.data(), b"x");
        assert_eq!(b.len(), 1);
    }
}
