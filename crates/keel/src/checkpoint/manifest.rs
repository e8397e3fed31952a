//! The checkpoint manifest and its on-disk encoding.
//!
//! # Format (version 1)
//!
//! A manifest file is UTF-8 text: one header line, then the JSON body.
//!
//! ```text
//! keel-checkpoint v1 len=<body length in bytes> crc32c=<8 hex digits of the body's CRC-32C>
//! {"id":7,"pipeline":"orders",...}
//! ```
//!
//! The header makes a manifest verifiable without trusting the JSON: a file whose header is
//! missing, whose version is unknown, whose body length differs (a torn or truncated write) or
//! whose checksum does not match (bit rot, an edit by hand) is *corrupt*, and recovery falls
//! back to the previous manifest. The body stays readable for operators (`keel checkpoints
//! show`).
//!
//! # Crash cases
//!
//! Manifests are written with [`crate::durable::write_atomic`]; a crash leaves either no new
//! manifest or a complete one. A hidden temp file may remain and is ignored and removed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::CheckpointId;

/// The manifest format version written by this build.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &str = "keel-checkpoint";

/// The durable description of checkpoint `id`: everything needed to resume after epoch `id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Checkpoint id (= the epoch it closes). Grows across restarts.
    pub id: CheckpointId,
    /// Pipeline name.
    pub pipeline: String,
    /// Fingerprint of the pipeline definition that wrote this checkpoint.
    pub fingerprint: String,
    /// Wall-clock time of the checkpoint, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// True when the input was exhausted and every result (final aggregates included) is in
    /// this checkpoint: a restart has nothing left to do.
    pub finished: bool,
    /// Per-partition positions and watermarks, by partition id.
    pub partitions: BTreeMap<String, PartitionCheckpoint>,
    /// The pipeline watermark (minimum over active partitions), if any event time was seen.
    pub watermark: Option<i64>,
    /// The state files that, applied in order, rebuild the keyed state.
    pub state: StateFiles,
    /// Pre-commits by sink name (the dead-letter output is a sink too).
    pub sinks: BTreeMap<String, serde_json::Value>,
    /// Counters accumulated over all runs up to this checkpoint.
    pub stats: RunStats,
}

/// Where one partition stands in a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionCheckpoint {
    /// The source-specific position to resume from (after the last record fully handled).
    pub position: serde_json::Value,
    /// True when the partition was read to its end (batch mode).
    #[serde(default)]
    pub done: bool,
    /// Highest event time seen in the partition, in ms.
    #[serde(default)]
    pub max_event_time: Option<i64>,
}

/// The state files of a checkpoint: a full snapshot followed by deltas.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFiles {
    /// File names relative to the store's state directory, oldest first.
    pub files: Vec<String>,
    /// Number of live keys over all tables.
    #[serde(default)]
    pub keys: u64,
    /// Total bytes of the listed files.
    #[serde(default)]
    pub bytes: u64,
}

/// Cumulative counters, carried from checkpoint to checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunStats {
    /// Records read from sources and fully handled.
    pub records_in: u64,
    /// Records written to the main sink.
    pub records_out: u64,
    /// Records sent to the dead-letter output.
    pub dead_letters: u64,
}

/// Why bytes are not a valid manifest.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    /// The header line is missing or not a keel checkpoint header.
    #[error("not a keel checkpoint (bad or missing header line)")]
    BadHeader,
    /// Written by an incompatible version.
    #[error("unsupported checkpoint format version {0} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion(u32),
    /// The body is shorter or longer than the header says: a torn or truncated write.
    #[error("body length {actual} differs from header length {expected} (truncated or torn write)")]
    Length {
        /// Length in the header.
        expected: usize,
        /// Length found.
        actual: usize,
    },
    /// The checksum does not match.
    #[error("checksum mismatch: header says {expected:08x}, body has {actual:08x}")]
    Checksum {
        /// Checksum in the header.
        expected: u32,
        /// Checksum of the body.
        actual: u32,
    },
    /// The body is not a valid manifest.
    #[error("invalid manifest body: {0}")]
    Body(String),
}

impl Manifest {
    /// Encodes the manifest: header line and JSON body.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising a tree of plain data types with string keys cannot fail.
        let body = serde_json::to_vec_pretty(self).unwrap_or_default();
        let crc = crc32c::crc32c(&body);
        let mut out = format!("{MAGIC} v{FORMAT_VERSION} len={} crc32c={crc:08x}\n", body.len()).into_bytes();
        out.extend_from_slice(&body);
        out
    }

    /// Decodes and verifies a manifest written by [`Manifest::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let nl = memchr::memchr(b'\n', bytes).ok_or(ManifestError::BadHeader)?;
        let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| ManifestError::BadHeader)?;
        let body = &bytes[nl + 1..];
        let mut parts = header.split(' ');
        if parts.next() != Some(MAGIC) {
            return Err(ManifestError::BadHeader);
        }
        let version: u32 = parts
            .next()
            .and_then(|v| v.strip_prefix('v'))
            .and_then(|v| v.parse().ok())
            .ok_or(ManifestError::BadHeader)?;
        if version != FORMAT_VERSION {
            return Err(ManifestError::UnsupportedVersion(version));
        }
        let len: usize = parts
            .next()
            .and_then(|v| v.strip_prefix("len="))
            .and_then(|v| v.parse().ok())
            .ok_or(ManifestError::BadHeader)?;
        let crc = parts
            .next()
            .and_then(|v| v.strip_prefix("crc32c="))
            .and_then(|v| u32::from_str_radix(v, 16).ok())
            .ok_or(ManifestError::BadHeader)?;
        if body.len() != len {
            return Err(ManifestError::Length {
                expected: len,
                actual: body.len(),
            });
        }
        let actual = crc32c::crc32c(body);
        if actual != crc {
            return Err(ManifestError::Checksum { expected: crc, actual });
        }
        serde_json::from_slice(body).map_err(|e| ManifestError::Body(e.to_string()))
    }
}

#[cfg(test)]
pub(crate) fn sample(id: CheckpointId) -> Manifest {
    let mut partitions = BTreeMap::new();
    partitions.insert(
        "part-000.jsonl".to_string(),
        PartitionCheckpoint {
            position: serde_json::json!(1234),
            done: false,
            max_event_time: Some(99),
        },
    );
    Manifest {
        id,
        pipeline: "orders".into(),
        fingerprint: "abc".into(),
        created_at_ms: 1,
        finished: false,
        partitions,
        watermark: Some(42),
        state: StateFiles {
            files: vec![format!("{id:020}.full")],
            keys: 3,
            bytes: 10,
        },
        sinks: BTreeMap::new(),
        stats: RunStats::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let m = sample(7);
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = sample(7).encode();
        for cut in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..cut]).is_err(), "cut at {cut} accepted");
        }
    }

    /// Every single-bit flip of every byte, header included, is refused, except one kind
    /// that is harmless: the case bit (0x20) of a letter `a`-`f` of the header's hex CRC turns
    /// it into `A`-`F`, which parses to the same checksum; the manifest read is then exactly
    /// the one written.
    #[test]
    fn every_single_bit_flip_of_every_byte_is_detected() {
        let m = sample(7);
        let bytes = m.encode();
        let header = std::str::from_utf8(&bytes[..bytes.iter().position(|&b| b == b'\n').unwrap()]).unwrap();
        let crc_digits = header.find("crc32c=").unwrap() + "crc32c=".len()..header.len();
        assert_eq!(crc_digits.len(), 8);
        let mut harmless = 0;
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                match Manifest::decode(&b) {
                    Err(_) => {}
                    Ok(got) => {
                        assert!(
                            crc_digits.contains(&i) && bit == 5 && bytes[i].is_ascii_lowercase(),
                            "flip of bit {bit} at {i} ({:?}) accepted",
                            bytes[i] as char
                        );
                        assert_eq!(got, m);
                        harmless += 1;
                    }
                }
            }
        }
        let letters = bytes[crc_digits].iter().filter(|b| b.is_ascii_lowercase()).count();
        assert_eq!(harmless, letters);
    }

    #[test]
    fn unknown_version_is_refused() {
        let bytes = sample(1).encode();
        let text = String::from_utf8(bytes).unwrap().replacen(" v1 ", " v9 ", 1);
        assert_eq!(
            Manifest::decode(text.as_bytes()),
            Err(ManifestError::UnsupportedVersion(9))
        );
    }
}
