//! Checksums and fingerprints of units of work.
//!
//! A [`Fingerprint`] is what the ledger remembers of a unit's content: its size, its
//! modification time and, once computed, a checksum written `algorithm:hex` (`blake3:9f2c…`).
//! Two fingerprints describe the same content when their checksums (of the same algorithm)
//! are equal; without comparable checksums, when size and modification time are equal.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

/// A checksum algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// BLAKE3 (the default: fast and collision resistant).
    #[default]
    Blake3,
    /// SHA-256, for ledgers shared with tools that use it.
    Sha256,
    /// MD5, for compatibility with S3 ETags and legacy ledgers only.
    Md5,
}

impl Algorithm {
    /// Every algorithm.
    pub const ALL: [Algorithm; 3] = [Algorithm::Blake3, Algorithm::Sha256, Algorithm::Md5];

    /// The name used in checksums and configuration (`blake3`, `sha256`, `md5`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Blake3 => "blake3",
            Algorithm::Sha256 => "sha256",
            Algorithm::Md5 => "md5",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == s)
    }

    /// The checksum of `data`, as `algorithm:hex`.
    pub fn of_bytes(self, data: &[u8]) -> String {
        let mut h = Hasher::new(self);
        h.update(data);
        h.finish()
    }

    /// The checksum of the file at `path`, read in chunks.
    pub fn of_file(self, path: &Path) -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let mut h = Hasher::new(self);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(h.finish());
            }
            h.update(&buf[..n]);
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An incremental checksum.
pub struct Hasher {
    algorithm: Algorithm,
    state: State,
}

enum State {
    Blake3(Box<blake3::Hasher>),
    Sha256(sha2::Sha256),
    Md5(md5::Md5),
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algorithm: Algorithm) -> Self {
        use sha2::Digest;
        let state = match algorithm {
            Algorithm::Blake3 => State::Blake3(Box::new(blake3::Hasher::new())),
            Algorithm::Sha256 => State::Sha256(sha2::Sha256::new()),
            Algorithm::Md5 => State::Md5(md5::Md5::new()),
        };
        Hasher { algorithm, state }
    }

    /// Adds data.
    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest;
        match &mut self.state {
            State::Blake3(h) => {
                h.update(data);
            }
            State::Sha256(h) => h.update(data),
            State::Md5(h) => h.update(data),
        }
    }

    /// The checksum, as `algorithm:hex`.
    pub fn finish(self) -> String {
        use sha2::Digest;
        let hex = match self.state {
            State::Blake3(h) => h.finalize().to_hex().to_string(),
            State::Sha256(h) => to_hex(&h.finalize()),
            State::Md5(h) => to_hex(&h.finalize()),
        };
        format!("{}:{hex}", self.algorithm.name())
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// What the ledger remembers of a unit's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// `algorithm:hex`, when computed.
    pub checksum: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch (0 when unknown).
    pub mtime_ns: i64,
}

impl Fingerprint {
    /// Size and modification time of the file at `path`, without a checksum.
    pub fn stat(path: &Path) -> std::io::Result<Fingerprint> {
        let meta = std::fs::metadata(path)?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        Ok(Fingerprint {
            checksum: None,
            size: meta.len(),
            mtime_ns,
        })
    }

    /// Size, modification time and checksum of the file at `path`. The file is stat'ed again
    /// after hashing: if it changed meanwhile (a writer is still at work), this fails with
    /// [`std::io::ErrorKind::Interrupted`] rather than record a checksum of a moving target.
    pub fn of_file(path: &Path, algorithm: Algorithm) -> std::io::Result<Fingerprint> {
        let before = Fingerprint::stat(path)?;
        let checksum = algorithm.of_file(path)?;
        let after = Fingerprint::stat(path)?;
        if !before.same_stat(&after) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                format!("{} changed while its checksum was computed", path.display()),
            ));
        }
        Ok(Fingerprint {
            checksum: Some(checksum),
            ..after
        })
    }

    /// The algorithm of the checksum, if there is one.
    pub fn algorithm(&self) -> Option<Algorithm> {
        self.checksum
            .as_deref()
            .and_then(|c| c.split_once(':'))
            .and_then(|(a, _)| Algorithm::parse(a))
    }

    /// Same size and modification time.
    pub fn same_stat(&self, other: &Fingerprint) -> bool {
        self.size == other.size && self.mtime_ns == other.mtime_ns
    }

    /// True when both describe the same content: equal checksums when both have one of the
    /// same algorithm, otherwise equal size and modification time.
    pub fn same_content(&self, other: &Fingerprint) -> bool {
        match (&self.checksum, &other.checksum) {
            (Some(a), Some(b)) if self.algorithm().is_some() && self.algorithm() == other.algorithm() => a == b,
            _ => self.same_stat(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        assert_eq!(
            Algorithm::Sha256.of_bytes(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Algorithm::Md5.of_bytes(b"abc"), "md5:900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            Algorithm::Blake3.of_bytes(b"abc"),
            "blake3:6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }

    #[test]
    fn file_checksums_match_byte_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        for a in Algorithm::ALL {
            let fp = Fingerprint::of_file(&path, a).unwrap();
            assert_eq!(fp.checksum.as_deref(), Some(a.of_bytes(&data).as_str()));
            assert_eq!(fp.size, data.len() as u64);
            assert_eq!(fp.algorithm(), Some(a));
            assert_eq!(Algorithm::parse(a.name()), Some(a));
        }
    }

    #[test]
    fn same_content_prefers_checksums() {
        let fp = |c: Option<&str>, size, mtime_ns| Fingerprint {
            checksum: c.map(Into::into),
            size,
            mtime_ns,
        };
        // touched: new mtime, same checksum
        assert!(fp(Some("blake3:aa"), 1, 1).same_content(&fp(Some("blake3:aa"), 1, 2)));
        // rewritten with the same size and mtime but new content
        assert!(!fp(Some("blake3:aa"), 1, 1).same_content(&fp(Some("blake3:bb"), 1, 1)));
        // checksums of different algorithms cannot be compared: fall back to stat
        assert!(fp(Some("md5:aa"), 1, 1).same_content(&fp(Some("blake3:bb"), 1, 1)));
        assert!(!fp(Some("md5:aa"), 1, 1).same_content(&fp(Some("blake3:aa"), 2, 1)));
        assert!(fp(None, 3, 4).same_content(&fp(Some("blake3:aa"), 3, 4)));
        assert!(!fp(None, 3, 4).same_content(&fp(None, 3, 5)));
    }
}
