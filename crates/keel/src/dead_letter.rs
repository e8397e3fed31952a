//! Dead letters: failed records with their provenance.
//!
//! A dead letter keeps the original bytes, key and headers unchanged, and adds why and where
//! it failed. Dead letters are written through a sink like any output, so they are scoped to
//! epochs: after any crash each bad record is in the dead-letter output exactly once (I5).
//!
//! # Envelope (version 1), one JSON object per line
//!
//! `v` (1), `id` (the record's correlation id or null), `reason`, `field`, `class`, `stage`,
//! `message`, `chain`, `pipeline`, `partition`, `position`, `epoch`, `attempts`,
//! `first_failed_ms`, `last_failed_ms`, `key` / `key_b64`, `headers`, and `raw` (the original
//! value when it is UTF-8) or `raw_b64` (base64 otherwise).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::failure::{Class, Failure};
use crate::record::Record;

/// The envelope format version.
pub const ENVELOPE_VERSION: u32 = 1;

/// A dead letter as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope format version.
    pub v: u32,
    /// The record's correlation id, when known.
    pub id: Option<serde_json::Value>,
    /// Stable snake_case reason.
    pub reason: String,
    /// Field concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Failure class.
    pub class: Class,
    /// The stage that failed.
    pub stage: String,
    /// Human-readable message.
    pub message: String,
    /// Error chain, outermost first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    /// Pipeline name.
    pub pipeline: String,
    /// Source partition.
    pub partition: String,
    /// Position after the record in its partition (source-specific).
    pub position: serde_json::Value,
    /// Epoch in which the record failed.
    pub epoch: u64,
    /// How many attempts were made.
    pub attempts: u32,
    /// First failure, ms since the Unix epoch.
    pub first_failed_ms: u64,
    /// Last failure, ms since the Unix epoch.
    pub last_failed_ms: u64,
    /// The record key as UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The record key as base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_b64: Option<String>,
    /// Headers; values as UTF-8 (lossy).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The original value, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// The original value as base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_b64: Option<String>,
    /// User metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// Where a failed record came from.
#[derive(Clone, Copy, Debug)]
pub struct Provenance<'a> {
    /// Pipeline name.
    pub pipeline: &'a str,
    /// Source partition.
    pub partition: &'a str,
    /// Position after the record.
    pub position: &'a serde_json::Value,
    /// Epoch.
    pub epoch: u64,
    /// Attempts made.
    pub attempts: u32,
    /// First failure time (ms).
    pub first_failed_ms: u64,
    /// Last failure time (ms).
    pub last_failed_ms: u64,
}

impl Envelope {
    /// Builds the envelope of `record`, which failed with `failure`.
    pub fn new(record: &Record, failure: &Failure, at: Provenance<'_>) -> Self {
        let (key, key_b64) = match &record.key {
            None => (None, None),
            Some(k) => match std::str::from_utf8(k) {
                Ok(s) => (Some(s.to_owned()), None),
                Err(_) => (None, Some(B64.encode(k))),
            },
        };
        let (raw, raw_b64) = match std::str::from_utf8(&record.value) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => (None, Some(B64.encode(&record.value))),
        };
        Envelope {
            v: ENVELOPE_VERSION,
            id: failure.record_id.clone(),
            reason: failure.reason.to_string(),
            field: failure.field.clone(),
            class: failure.class,
            stage: failure.stage.clone(),
            message: failure.message.clone(),
            chain: failure.chain.clone(),
            pipeline: at.pipeline.to_owned(),
            partition: at.partition.to_owned(),
            position: at.position.clone(),
            epoch: at.epoch,
            attempts: at.attempts,
            first_failed_ms: at.first_failed_ms,
            last_failed_ms: at.last_failed_ms,
            key,
            key_b64,
            headers: record
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
            raw,
            raw_b64,
            metadata: BTreeMap::new(),
        }
    }

    /// The original record bytes.
    pub fn original_value(&self) -> Option<Vec<u8>> {
        match (&self.raw, &self.raw_b64) {
            (Some(s), _) => Some(s.clone().into_bytes()),
            (None, Some(b)) => B64.decode(b).ok(),
            (None, None) => None,
        }
    }

    /// The original record key.
    pub fn original_key(&self) -> Option<Vec<u8>> {
        match (&self.key, &self.key_b64) {
            (Some(s), _) => Some(s.clone().into_bytes()),
            (None, Some(b)) => B64.decode(b).ok(),
            (None, None) => None,
        }
    }

    /// Appends the envelope as compact JSON.
    pub fn encode(&self, out: &mut Vec<u8>) {
        // Serialising plain data with string keys into a Vec cannot fail.
        let _ = serde_json::to_writer(out, self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_bytes_survive_utf8_or_not() {
        let f = Failure::permanent("malformed", "bad").with_stage("parse");
        let pos = serde_json::json!(10);
        let at = Provenance {
            pipeline: "p",
            partition: "a",
            position: &pos,
            epoch: 3,
            attempts: 1,
            first_failed_ms: 5,
            last_failed_ms: 5,
        };
        let mut r = Record::from_value(&b"{\"id\": 1,"[..]);
        r.key = Some(bytes::Bytes::from_static(&[0xff, 0x00]));
        let e = Envelope::new(&r, &f, at);
        assert_eq!(e.original_value().unwrap(), b"{\"id\": 1,");
        assert_eq!(e.original_key().unwrap(), vec![0xff, 0x00]);
        let mut buf = Vec::new();
        e.encode(&mut buf);
        let back: Envelope = serde_json::from_slice(&buf).unwrap();
        assert_eq!(back, e);
        let bin = Envelope::new(&Record::from_value(vec![0xc3, 0x28]), &f, at);
        assert_eq!(bin.raw, None);
        assert_eq!(bin.original_value().unwrap(), vec![0xc3, 0x28]);
    }
}
