//! The state file format: a full snapshot or a delta of keyed state.
//!
//! # Layout (version 1), all integers little-endian, `varint` = LEB128
//!
//! ```text
//! header   "KEELSTAT"  u16 version=1  u8 kind (1 full, 2 delta)  u64 checkpoint id
//! table*   u8 0x01  varint name_len  name  varint entry_count  entry*
//! entry    u8 op (1 put, 2 delete)  varint key_len  key  [put: varint value_len  value]
//! trailer  u8 0xFF  u32 CRC-32C of every byte before it
//! ```
//!
//! Values are the `postcard` encoding of the table's value type. A checkpoint's state is
//! rebuilt by applying its files in order: the full snapshot, then each delta (a put sets a
//! key, a delete removes it).
//!
//! # Crash cases
//!
//! State files are written with [`crate::durable::write_atomic`] before the manifest that
//! lists them, so a manifest never references a missing or partial file. A file written for a
//! checkpoint whose manifest never became durable is unreferenced garbage that pruning removes.
//! A file that fails its checksum makes the checkpoint unusable ([`StateFileError`]), and the
//! runtime falls back to the previous checkpoint.

use thiserror::Error;

const MAGIC: &[u8; 8] = b"KEELSTAT";
/// The state file format version written by this build.
pub const VERSION: u16 = 1;
const TABLE: u8 = 0x01;
const PUT: u8 = 1;
const DELETE: u8 = 2;
const END: u8 = 0xFF;

/// Whether a file holds every entry or only changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Every live entry.
    Full,
    /// Entries changed or deleted since the previous checkpoint.
    Delta,
}

impl Kind {
    /// The file name suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Delta => "delta",
        }
    }
}

/// A state file that cannot be used.
#[derive(Debug, Error, PartialEq)]
pub enum StateFileError {
    /// Not a state file, or cut short.
    #[error("not a keel state file or truncated ({0})")]
    Malformed(&'static str),
    /// Written by an incompatible version.
    #[error("state file format version {0} is newer or unknown (this build reads version {VERSION})")]
    Version(u16),
    /// The checksum does not match.
    #[error("state file checksum mismatch")]
    Checksum,
}

/// Builds a state file in memory.
#[derive(Debug)]
pub struct StateFileWriter {
    buf: Vec<u8>,
    count_at: usize,
    count: u64,
    entries: u64,
}

impl StateFileWriter {
    /// Starts a file of the given kind for checkpoint `id`.
    pub fn new(kind: Kind, id: u64) -> Self {
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        buf.push(match kind {
            Kind::Full => 1,
            Kind::Delta => 2,
        });
        buf.extend_from_slice(&id.to_le_bytes());
        StateFileWriter {
            buf,
            count_at: usize::MAX,
            count: 0,
            entries: 0,
        }
    }

    /// Starts the section of table `name`; entries follow until the next table or `finish`.
    pub fn table(&mut self, name: &str) {
        self.close_table();
        self.buf.push(TABLE);
        put_varint(&mut self.buf, name.len() as u64);
        self.buf.extend_from_slice(name.as_bytes());
        // entry count, patched in close_table; fixed 10-byte varint slot
        self.count_at = self.buf.len();
        self.buf.extend_from_slice(&[0x80; 9]);
        self.buf.push(0);
        self.count = 0;
    }

    /// Writes a put of `key`; `value` appends the encoded value to the buffer it is given.
    pub fn put_with(&mut self, key: &[u8], value: impl FnOnce(&mut Vec<u8>)) {
        self.buf.push(PUT);
        put_varint(&mut self.buf, key.len() as u64);
        self.buf.extend_from_slice(key);
        // value length is not known before encoding: reserve a fixed 5-byte varint
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0]);
        let start = self.buf.len();
        value(&mut self.buf);
        let len = (self.buf.len() - start) as u64;
        write_fixed_varint(&mut self.buf[len_at..len_at + 5], len);
        self.count += 1;
        self.entries += 1;
    }

    /// Writes a put of already encoded bytes.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.put_with(key, |b| b.extend_from_slice(value));
    }

    /// Writes a delete of `key`.
    pub fn delete(&mut self, key: &[u8]) {
        self.buf.push(DELETE);
        put_varint(&mut self.buf, key.len() as u64);
        self.buf.extend_from_slice(key);
        self.count += 1;
        self.entries += 1;
    }

    /// Number of entries written so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    fn close_table(&mut self) {
        if self.count_at != usize::MAX {
            let at = self.count_at;
            write_fixed_varint(&mut self.buf[at..at + 10], self.count);
            self.count_at = usize::MAX;
        }
    }

    /// Finishes the file and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.close_table();
        self.buf.push(END);
        let crc = crc32c::crc32c(&self.buf);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

/// One entry read back from a state file.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry<'a> {
    /// `key` now has `value`.
    Put(&'a [u8], &'a [u8]),
    /// `key` was deleted.
    Delete(&'a [u8]),
}

impl<'a> Entry<'a> {
    /// The key the entry is about.
    pub fn key(&self) -> &'a [u8] {
        match *self {
            Entry::Put(k, _) | Entry::Delete(k) => k,
        }
    }
}

/// Reads a verified state file: calls `f(table, entry)` for every entry in order.
pub fn read(bytes: &[u8], mut f: impl FnMut(&str, Entry<'_>)) -> Result<(Kind, u64), StateFileError> {
    if bytes.len() < 8 + 2 + 1 + 8 + 1 + 4 || &bytes[..8] != MAGIC {
        return Err(StateFileError::Malformed("header"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(body) != crc {
        return Err(StateFileError::Checksum);
    }
    let version = u16::from_le_bytes([body[8], body[9]]);
    if version != VERSION {
        return Err(StateFileError::Version(version));
    }
    let kind = match body[10] {
        1 => Kind::Full,
        2 => Kind::Delta,
        _ => return Err(StateFileError::Malformed("kind")),
    };
    let mut id_bytes = [0u8; 8];
    id_bytes.copy_from_slice(&body[11..19]);
    let id = u64::from_le_bytes(id_bytes);
    let mut r = Reader { b: body, at: 19 };
    loop {
        match r.byte()? {
            END => break,
            TABLE => {
                let name_len = r.varint()? as usize;
                let name =
                    std::str::from_utf8(r.take(name_len)?).map_err(|_| StateFileError::Malformed("table name"))?;
                let count = r.varint()?;
                for _ in 0..count {
                    let op = r.byte()?;
                    let klen = r.varint()? as usize;
                    let key = r.take(klen)?;
                    match op {
                        PUT => {
                            let vlen = r.varint()? as usize;
                            let value = r.take(vlen)?;
                            f(name, Entry::Put(key, value));
                        }
                        DELETE => f(name, Entry::Delete(key)),
                        _ => return Err(StateFileError::Malformed("entry op")),
                    }
                }
            }
            _ => return Err(StateFileError::Malformed("section tag")),
        }
    }
    if r.at != body.len() {
        return Err(StateFileError::Malformed("trailing bytes"));
    }
    Ok((kind, id))
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, StateFileError> {
        let v = *self.b.get(self.at).ok_or(StateFileError::Malformed("eof"))?;
        self.at += 1;
        Ok(v)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], StateFileError> {
        let end = self.at.checked_add(n).ok_or(StateFileError::Malformed("length"))?;
        let s = self.b.get(self.at..end).ok_or(StateFileError::Malformed("eof"))?;
        self.at = end;
        Ok(s)
    }
    fn varint(&mut self) -> Result<u64, StateFileError> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(StateFileError::Malformed("varint"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(StateFileError::Malformed("varint"))
    }
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Writes `v` as a varint that fills exactly `slot.len()` bytes (continuation bits padded).
fn write_fixed_varint(slot: &mut [u8], mut v: u64) {
    let n = slot.len();
    for (i, b) in slot.iter_mut().enumerate() {
        let more = i + 1 < n;
        *b = (v as u8 & 0x7f) | if more { 0x80 } else { 0 };
        v >>= 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = StateFileWriter::new(Kind::Delta, 9);
        w.table("totals");
        w.put(b"c1", &[1, 2, 3]);
        w.delete(b"c2");
        w.table("seen");
        w.put(b"", &[]);
        w.put(&vec![7u8; 300], &vec![9u8; 70_000]);
        w.finish()
    }

    #[test]
    fn roundtrip() {
        let mut got = Vec::new();
        let (kind, id) = read(&sample(), |t, e| {
            got.push(match e {
                Entry::Put(k, v) => (t.to_string(), k.to_vec(), Some(v.len())),
                Entry::Delete(k) => (t.to_string(), k.to_vec(), None),
            })
        })
        .unwrap();
        assert_eq!((kind, id), (Kind::Delta, 9));
        assert_eq!(
            got,
            vec![
                ("totals".into(), b"c1".to_vec(), Some(3)),
                ("totals".into(), b"c2".to_vec(), None),
                ("seen".into(), vec![], Some(0)),
                ("seen".into(), vec![7u8; 300], Some(70_000)),
            ]
        );
    }

    /// Small files of both kinds with every kind of entry, so that every cut and every
    /// single-bit flip of every byte (header, tables, entries, trailer) can be tried.
    fn small_samples() -> Vec<Vec<u8>> {
        let mut d = StateFileWriter::new(Kind::Delta, 9);
        d.table("totals");
        d.put(b"c1", &[1, 2, 3]);
        d.delete(b"c2");
        d.table("seen");
        d.put(b"", &[]);
        d.put(&[7u8; 130], &[9u8; 200]);
        let mut f = StateFileWriter::new(Kind::Full, 0x0102_0304_0506_0708);
        f.table("t");
        f.put(b"k", b"v");
        vec![d.finish(), f.finish()]
    }

    #[test]
    fn every_truncation_is_detected() {
        for bytes in small_samples().into_iter().chain([sample()]) {
            assert!(read(&bytes, |_, _| {}).is_ok());
            for cut in 0..bytes.len() {
                assert!(
                    read(&bytes[..cut], |_, _| {}).is_err(),
                    "cut at {cut} of {} accepted",
                    bytes.len()
                );
            }
        }
    }

    /// Every byte is covered by the CRC-32C of the trailer (or is that CRC), and a CRC-32C
    /// detects every single-bit error, so no flip may be accepted, in the header either.
    #[test]
    fn every_single_bit_flip_of_every_byte_is_detected() {
        for bytes in small_samples() {
            for i in 0..bytes.len() {
                for bit in 0..8 {
                    let mut b = bytes.clone();
                    b[i] ^= 1 << bit;
                    assert!(read(&b, |_, _| {}).is_err(), "flip of bit {bit} at {i} accepted");
                }
            }
        }
    }

    #[test]
    fn fixed_varints_decode_like_normal_ones() {
        for v in [0u64, 1, 127, 128, 300, 1 << 27] {
            let mut slot = [0u8; 5];
            write_fixed_varint(&mut slot, v);
            let mut r = Reader { b: &slot, at: 0 };
            assert_eq!(r.varint().unwrap(), v);
        }
    }
}
