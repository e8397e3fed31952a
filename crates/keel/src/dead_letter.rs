//! Dead letters: failed records with their provenance.
//!
//! A dead letter keeps the original bytes, key and headers unchanged, and adds why and where
//! it failed. Dead letters are written through a sink like any output, so they are scoped to
//! epochs: after any crash each bad record is in the dead-letter output exactly once (I5).
//!
//! # Envelope (version 2), one JSON object per line
//!
//! `v` (2), `id` (the record's correlation id or null), `reason`, `field`, `class`, `stage`,
//! `message`, `chain`, `pipeline`, `partition`, `position`, `epoch`, `attempts`,
//! `first_failed_ms`, `last_failed_ms`, `key` / `key_b64`, `headers` (a list, in the record's
//! order, repeated names kept: `{"name": .., "value": ..}` for a UTF-8 value,
//! `{"name": .., "value_b64": ..}` otherwise), and `raw` (the original
//! value when it is UTF-8) or `raw_b64` (base64 otherwise), `replays` (what replays did with
//! it), and last `crc32c`: the CRC-32C, as 8 hex digits, of the line up to that field with
//! `}` in place of `,"crc32c":"..."}`. A line whose checksum does not match is reported as
//! corrupt by every reader ([`Envelope::decode`]).
//!
//! Version 1 stored `headers` as an object of names to (lossily converted) UTF-8 values; such
//! envelopes are still read, their headers in name order.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::failure::{Class, Failure};
use crate::record::Record;

/// The envelope format version.
pub const ENVELOPE_VERSION: u32 = 2;

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
    /// The record's headers, in order, repeated names kept, values byte for byte.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "headers_v1_or_v2"
    )]
    pub headers: Vec<Header>,
    /// The original value, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// The original value as base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_b64: Option<String>,
    /// User metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Replays of this dead letter, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replays: Vec<Replay>,
}

/// One header of a dead-lettered record, its value byte for byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The name.
    pub name: String,
    /// The value, exactly as the record had it.
    pub value: Vec<u8>,
}

/// A header as stored: a UTF-8 value as is, any other in base64 under `value_b64`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredHeader {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_b64: Option<String>,
}

impl Serialize for Header {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (value, value_b64) = match std::str::from_utf8(&self.value) {
            Ok(v) => (Some(v.to_owned()), None),
            Err(_) => (None, Some(B64.encode(&self.value))),
        };
        StoredHeader {
            name: self.name.clone(),
            value,
            value_b64,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Header {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let h = StoredHeader::deserialize(d)?;
        let value = match (h.value, h.value_b64) {
            (Some(v), None) => v.into_bytes(),
            (None, Some(b)) => B64.decode(b).map_err(D::Error::custom)?,
            _ => return Err(D::Error::custom("a header needs exactly one of `value`, `value_b64`")),
        };
        Ok(Header { name: h.name, value })
    }
}

/// Reads `headers` of version 2 (a list) or version 1 (an object of UTF-8 values).
fn headers_v1_or_v2<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Header>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        V2(Vec<Header>),
        V1(BTreeMap<String, String>),
    }
    Ok(match Either::deserialize(d)? {
        Either::V2(h) => h,
        Either::V1(m) => m
            .into_iter()
            .map(|(name, v)| Header {
                name,
                value: v.into_bytes(),
            })
            .collect(),
    })
}

/// One replay of a dead letter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Replay {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The replay id.
    pub id: String,
    /// Where the record went: `pipeline` or a sink name.
    pub to: String,
}

/// Why a dead-letter line cannot be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvelopeError {
    /// The line has no checksum field.
    #[error("no crc32c field")]
    NoChecksum,
    /// The checksum does not match.
    #[error("checksum mismatch (stored {stored}, computed {computed:08x})")]
    Checksum {
        /// Stored value.
        stored: String,
        /// Computed value.
        computed: u32,
    },
    /// Not a valid envelope.
    #[error("invalid envelope: {0}")]
    Json(String),
}

const CRC_FIELD: &str = ",\"crc32c\":\"";

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
                .map(|(k, v)| Header {
                    name: k.clone(),
                    value: v.to_vec(),
                })
                .collect(),
            raw,
            raw_b64,
            metadata: BTreeMap::new(),
            replays: Vec::new(),
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

    /// The original record headers, in order, byte for byte.
    pub fn original_headers(&self) -> Vec<(String, bytes::Bytes)> {
        self.headers
            .iter()
            .map(|h| (h.name.clone(), bytes::Bytes::from(h.value.clone())))
            .collect()
    }

    /// The original record key.
    pub fn original_key(&self) -> Option<Vec<u8>> {
        match (&self.key, &self.key_b64) {
            (Some(s), _) => Some(s.clone().into_bytes()),
            (None, Some(b)) => B64.decode(b).ok(),
            (None, None) => None,
        }
    }

    /// The identity of this dead letter: a BLAKE3 hash (hex) of the envelope without its
    /// replays, so that recording a replay (or moving the line, as a purge does) does not
    /// change it. Two envelopes with the same identity are the same failure of the same
    /// record at the same position and time.
    pub fn identity(&self) -> String {
        let mut bare = self.clone();
        bare.replays.clear();
        let mut buf = Vec::new();
        bare.encode(&mut buf);
        blake3::hash(&buf).to_hex().to_string()
    }

    /// Appends the envelope as compact JSON, checksum last.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        // Serialising plain data with string keys into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, self);
        let crc = crc32c::crc32c(&out[start..]);
        out.pop(); // the closing brace
        out.extend_from_slice(format!("{CRC_FIELD}{crc:08x}\"}}").as_bytes());
    }

    /// Reads one line written by [`Envelope::encode`], verifying its checksum.
    pub fn decode(line: &[u8]) -> Result<Envelope, EnvelopeError> {
        let text = std::str::from_utf8(line).map_err(|e| EnvelopeError::Json(e.to_string()))?;
        let text = text.trim_end();
        let at = text.rfind(CRC_FIELD).ok_or(EnvelopeError::NoChecksum)?;
        let stored = text[at + CRC_FIELD.len()..]
            .strip_suffix("\"}")
            .ok_or(EnvelopeError::NoChecksum)?;
        let mut body = text[..at].to_owned();
        body.push('}');
        let computed = crc32c::crc32c(body.as_bytes());
        if u32::from_str_radix(stored, 16).ok() != Some(computed) {
            return Err(EnvelopeError::Checksum {
                stored: stored.to_owned(),
                computed,
            });
        }
        serde_json::from_str(&body).map_err(|e| EnvelopeError::Json(e.to_string()))
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
        assert_eq!(Envelope::decode(&buf).unwrap(), e);
        // plain JSON readers see every field, the checksum as one more
        let plain: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(plain["reason"], "malformed");
        // any change is detected
        let mut bad = buf.clone();
        let i = bad.iter().position(|&b| b == b'p').unwrap();
        bad[i] = b'q';
        assert!(matches!(Envelope::decode(&bad), Err(EnvelopeError::Checksum { .. })));
        let bin = Envelope::new(&Record::from_value(vec![0xc3, 0x28]), &f, at);
        assert_eq!(bin.raw, None);
        assert_eq!(bin.original_value().unwrap(), vec![0xc3, 0x28]);
    }

    /// Headers keep their order, their repeated names and their non-UTF-8 bytes through an
    /// envelope and back; version 1 envelopes (headers as an object) are still read.
    #[test]
    fn headers_round_trip_byte_for_byte_in_order() {
        let f = Failure::permanent("malformed", "bad").with_stage("parse");
        let pos = serde_json::json!(1);
        let at = Provenance {
            pipeline: "p",
            partition: "a",
            position: &pos,
            epoch: 1,
            attempts: 1,
            first_failed_ms: 5,
            last_failed_ms: 5,
        };
        let mut r = Record::from_value(&b"x"[..]);
        r.headers = vec![
            ("trace".to_owned(), bytes::Bytes::from_static(b"t-1")),
            ("bin".to_owned(), bytes::Bytes::from_static(&[0xff, 0xfe, 0x00])),
            ("trace".to_owned(), bytes::Bytes::from_static(b"t-2")),
            ("a".to_owned(), bytes::Bytes::from_static(b"")),
        ];
        let e = Envelope::new(&r, &f, at);
        let mut buf = Vec::new();
        e.encode(&mut buf);
        let back = Envelope::decode(&buf).unwrap();
        assert_eq!(back.original_headers(), r.headers);
        let plain: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(plain["headers"][1]["value_b64"], "//4A");
        assert_eq!(plain["headers"][2]["value"], "t-2");

        // a version 1 line
        let mut v1: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        let obj = v1.as_object_mut().unwrap();
        obj.remove("crc32c");
        obj.insert("v".into(), 1.into());
        obj.insert("headers".into(), serde_json::json!({"b": "2", "a": "1"}));
        let mut line = serde_json::to_vec(&v1).unwrap();
        let crc = crc32c::crc32c(&line);
        line.pop();
        line.extend_from_slice(format!("{CRC_FIELD}{crc:08x}\"}}").as_bytes());
        let old = Envelope::decode(&line).unwrap();
        assert_eq!(
            old.original_headers(),
            vec![
                ("a".to_owned(), bytes::Bytes::from_static(b"1")),
                ("b".to_owned(), bytes::Bytes::from_static(b"2"))
            ]
        );
    }

    /// Every cut of a line and every single-bit flip of every byte is refused, except the
    /// case bit (0x20) of a letter `a`-`f` of the stored hex CRC (`A`-`F` parses to the same
    /// checksum; the envelope read is then exactly the one written).
    #[test]
    fn every_truncation_and_single_bit_flip_is_detected() {
        let f = Failure::permanent("malformed", "bad")
            .with_stage("parse")
            .with_field("amount");
        let pos = serde_json::json!({"offset": 12});
        let at = Provenance {
            pipeline: "p",
            partition: "a",
            position: &pos,
            epoch: 2,
            attempts: 1,
            first_failed_ms: 5,
            last_failed_ms: 6,
        };
        let mut r = Record::from_value(&b"{\"id\": 1,"[..]);
        r.key = Some(bytes::Bytes::from_static(&[0xff, 0x00]));
        r.headers = vec![("h".to_owned(), bytes::Bytes::from_static(b"v"))];
        let e = Envelope::new(&r, &f, at);
        let mut line = Vec::new();
        e.encode(&mut line);
        assert_eq!(Envelope::decode(&line).unwrap(), e);
        for cut in 0..line.len() {
            assert!(Envelope::decode(&line[..cut]).is_err(), "cut at {cut} accepted");
        }
        let crc_at = line.len() - "\"}".len() - 8..line.len() - "\"}".len();
        let mut harmless = 0;
        for i in 0..line.len() {
            for bit in 0..8 {
                let mut b = line.clone();
                b[i] ^= 1 << bit;
                if let Ok(got) = Envelope::decode(&b) {
                    assert!(
                        crc_at.contains(&i) && bit == 5 && line[i].is_ascii_lowercase(),
                        "flip of bit {bit} at {i} ({:?}) accepted",
                        line[i] as char
                    );
                    assert_eq!(got, e);
                    harmless += 1;
                }
            }
        }
        assert_eq!(harmless, line[crc_at].iter().filter(|b| b.is_ascii_lowercase()).count());
    }
}
