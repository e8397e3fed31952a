//! Records as sources produce them.

use bytes::Bytes;

/// One record as read from a source: opaque bytes with an optional key, headers and event
/// time. Cloning is cheap (the bytes are reference-counted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// The record key, when the source has one (a Kafka key, a Redis stream field).
    pub key: Option<Bytes>,
    /// The payload, exactly as read (a line without its `\n`, a message body).
    pub value: Bytes,
    /// Headers, in the order the source gave them.
    pub headers: Vec<(String, Bytes)>,
    /// Event time in milliseconds since the Unix epoch, when the source knows it.
    pub event_time: Option<i64>,
}

impl Record {
    /// A record with only a value.
    pub fn from_value(value: impl Into<Bytes>) -> Self {
        Record {
            value: value.into(),
            ..Record::default()
        }
    }

    /// The value as UTF-8 text, if it is valid UTF-8.
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }
}

/// A header a source sets on a record it could not frame (a line longer than the
/// maximum, a CSV quote never closed). Its value is `reason: message`; the runtime fails the
/// record with that reason at stage `source`, without running the steps, so it is handled
/// by the policies (dead-lettered by default) like any other failure.
pub const SOURCE_FAILURE: &str = "keel.source_failure";

impl Record {
    /// The failure a source recorded on this record (see [`SOURCE_FAILURE`]), if any.
    pub fn source_failure(&self) -> Option<crate::Failure> {
        let (_, v) = self.headers.iter().find(|(k, _)| k == SOURCE_FAILURE)?;
        let text = String::from_utf8_lossy(v);
        let (reason, message) = text.split_once(": ").unwrap_or((&text, ""));
        let reason: std::borrow::Cow<'static, str> = match reason {
            crate::failure::reason::OVERSIZED => crate::failure::reason::OVERSIZED.into(),
            crate::failure::reason::MALFORMED => crate::failure::reason::MALFORMED.into(),
            other => other.to_owned().into(),
        };
        Some(crate::Failure::permanent(reason, message.to_owned()).with_stage("source"))
    }
}

/// Records read from one partition, with the position *after* each record.
///
/// Sources fill a batch that the runtime reuses; `records[i]` is followed by `positions[i]`.
#[derive(Debug)]
pub struct SourceBatch<P> {
    /// The records, in partition order.
    pub records: Vec<Record>,
    /// `positions[i]` is the position to resume from after `records[i]` was fully handled.
    pub positions: Vec<P>,
}

impl<P> Default for SourceBatch<P> {
    fn default() -> Self {
        SourceBatch {
            records: Vec::new(),
            positions: Vec::new(),
        }
    }
}

impl<P> SourceBatch<P> {
    /// Removes all records, keeping the allocations.
    pub fn clear(&mut self) {
        self.records.clear();
        self.positions.clear();
    }

    /// Appends a record and the position after it.
    pub fn push(&mut self, record: Record, position_after: P) {
        self.records.push(record);
        self.positions.push(position_after);
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}
