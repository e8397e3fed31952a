//! Reading a directory of files; each file is a partition.
//!
//! # Framing
//!
//! - `json_lines` and `lines`: a record is one line without its `\n` (and, for plain
//!   lines, without a trailing `\r`).
//! - `csv`: a record ends at a line break outside quotes (RFC 4180), found with `csv-core`
//!   (see [`super::csv`]): a quoted field may hold CR, LF and CRLF; CRLF, LF and CR each end
//!   a record; empty lines are skipped. A record's bytes (without its terminator) are its
//!   value, so the parse step and dead letters see exactly what the file holds. The header
//!   (the first record, unless the dialect says there is none) is attached to every record
//!   as the `csv.header` header.
//! - A UTF-8 BOM at the start of a file is skipped, in every format.
//! - A last record without a line break is read at the end of a bounded read; in follow
//!   mode it is left for later, since the writer may still be appending to it.
//!
//! # Positions
//!
//! A position is the byte offset just after a record's terminator, which is where the next
//! record starts; a CSV record that spans lines has one position, after its last line, so a
//! resume after a crash always lands on a record boundary. Framing from a position gives the
//! same records as reading on from it: every decision below depends only on the bytes of the
//! file from the start of the record, never on how reads happened to split them.
//!
//! # Records that are too long
//!
//! Nothing longer than `max_record_bytes` (plus its terminator) is buffered. Every byte is
//! scanned at most twice and copied at most once into the buffer of a record in progress
//! (see [`ReadStats`]), so a file with a 1 GiB line costs linear time and bounded memory.
//!
//! - A line (`json_lines`, `lines`) longer than `max_record_bytes` is dead-lettered as
//!   `oversized` with its first [`OVERSIZED_PREFIX`] bytes (or `max_record_bytes`, if less);
//!   reading resumes after its `\n`.
//! - A CSV record that ends but is longer than `max_record_bytes`: the same, resuming after it.
//! - A CSV record that does not end within `max_record_bytes` (a quote that is never
//!   closed, usually): its **first line** is dead-lettered as `oversized`, and reading
//!   **resumes at the next line**, which is read as the start of a record. So the rows after
//!   a stray quote are not lost; the price is that the inner lines of a quoted field that is
//!   legitimately longer than `max_record_bytes` are read as rows too (and most likely
//!   dead-lettered as `column_count`): raise `max_record_bytes` for such files. Re-reading
//!   from the next line cannot run away again inside the same stretch (every quote there
//!   that starts a field is one of a pair), so no byte is scanned more than twice. When the
//!   record has no line break within `max_record_bytes`, the part up to the next `\n` is
//!   skipped and reading resumes after it.
//! - At the end of a bounded file, a CSV record still inside quotes is handled the same
//!   way, with reason `malformed`: its first line is dead-lettered, reading resumes at the
//!   next line.
//!
//! A source sets the header [`keel::record::SOURCE_FAILURE`] on such a record; the runtime
//! then fails it at stage `source` with that reason, without running the steps.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use keel::{PartitionReader, ReadStatus, Record, Source, SourceBatch, SourceError};

use super::config::{FileFormat, FileSourceConfig, OVERSIZED_PREFIX};
use super::csv::Framer;

const CHUNK: usize = 1 << 20;
const BOM: &[u8] = b"\xef\xbb\xbf";
/// A directory of files, each read in order as one partition.
#[derive(Clone, Debug)]
pub struct FileSource {
    config: Arc<FileSourceConfig>,
}

impl FileSource {
    /// A source over `config.path`.
    pub fn new(config: FileSourceConfig) -> Self {
        FileSource {
            config: Arc::new(config),
        }
    }

    /// The partitions (file names relative to the directory) present now, sorted.
    pub fn list(&self) -> Result<Vec<String>, SourceError> {
        list_files(&self.config)
    }

    /// The configuration.
    pub fn config(&self) -> &FileSourceConfig {
        &self.config
    }
}

/// Lists input files: regular files matching the pattern, not hidden (`.`/`_` prefix).
pub(crate) fn list_files(config: &FileSourceConfig) -> Result<Vec<String>, SourceError> {
    let dir = &config.path;
    if let Some(only) = &config.only {
        // one named file: no need to list a directory that may hold 100,000 of them
        let meta = std::fs::metadata(dir.join(only)).map_err(|e| SourceError::Io {
            context: format!("input file {}", dir.join(only).display()),
            source: e,
        })?;
        return Ok(if meta.is_file() { vec![only.clone()] } else { Vec::new() });
    }
    let entries = std::fs::read_dir(dir).map_err(|e| SourceError::Io {
        context: format!("listing input directory {}", dir.display()),
        source: e,
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SourceError::Io {
            context: format!("listing {}", dir.display()),
            source: e,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if is_file && config.matches(&name) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

impl Source for FileSource {
    type Position = u64;
    type Reader = FileReader;

    fn describe(&self) -> String {
        format!(
            "files {}/{} ({}{})",
            self.config.path.display(),
            self.config.pattern(),
            self.config.format.name(),
            if self.config.follow { ", follow" } else { "" }
        )
    }

    fn is_bounded(&self) -> bool {
        !self.config.follow
    }

    fn discovery_interval(&self) -> Option<Duration> {
        self.config.follow.then_some(self.config.poll_interval)
    }

    async fn discover(&mut self) -> Result<Vec<String>, SourceError> {
        list_files(&self.config)
    }

    async fn open(&mut self, partition: &str, from: Option<u64>) -> Result<FileReader, SourceError> {
        FileReader::open(self.config.clone(), partition, from.unwrap_or(0))
    }
}

/// Bytes a [`FileReader`] has scanned for record ends and copied into the buffer of records
/// that span reads, since it was opened: both grow linearly with the bytes read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Bytes read from the file.
    pub read: u64,
    /// Bytes given to the framer (memchr or csv-core).
    pub scanned: u64,
    /// Bytes copied into the buffer of a record in progress.
    pub copied: u64,
    /// The largest that buffer has been, in bytes.
    pub max_pending: usize,
}

/// Reads one file.
#[derive(Debug)]
pub struct FileReader {
    config: Arc<FileSourceConfig>,
    path: PathBuf,
    file: File,
    /// Bytes read but not yet scanned.
    chunk: Bytes,
    /// File offset of the first byte of `chunk`.
    chunk_offset: u64,
    /// Offset of the next byte to read from the file.
    read_offset: u64,
    /// File offset where the record in progress starts: the position after the last record.
    start: u64,
    /// The scanned bytes of the record in progress that came before `chunk` (at most
    /// `max_record_bytes + 2`; only the dead letter's prefix while `skipping`).
    pending: BytesMut,
    /// The record in progress is too long: skipping to the end of its line.
    skipping: bool,
    /// CSV only: where records end.
    framer: Option<Box<Framer>>,
    /// Bytes read but not yet scanned, to scan after `chunk` (which then holds bytes to
    /// scan again, after a record that did not end).
    stash: Option<Bytes>,
    csv_header: Option<Bytes>,
    eof: bool,
    /// The whole current chunk, kept to recycle its buffer later.
    whole: Option<Bytes>,
    /// Earlier chunks, recycled once no record points into them.
    retired: Vec<Bytes>,
    stats: ReadStats,
}

impl FileReader {
    fn open(config: Arc<FileSourceConfig>, partition: &str, offset: u64) -> Result<Self, SourceError> {
        let path = config.path.join(partition);
        let io = |what: &str, e| SourceError::Io {
            context: format!("{what} {}", path.display()),
            source: e,
        };
        let mut file = File::open(&path).map_err(|e| io("opening", e))?;
        let len = file.metadata().map_err(|e| io("reading metadata of", e))?.len();
        if offset > len {
            return Err(SourceError::BadPosition {
                partition: partition.to_owned(),
                position: offset.to_string(),
                reason: format!("the file is now {len} bytes long; was it truncated or replaced?"),
            });
        }
        let csv = config.format == FileFormat::Csv;
        let (csv_header, header_end) = if csv && config.csv.header {
            read_header(&path, &config)?
        } else {
            (None, 0)
        };
        // a fresh CSV partition starts after its header line
        let offset = if offset == 0 { header_end } else { offset };
        file.seek(SeekFrom::Start(offset)).map_err(|e| io("seeking in", e))?;
        let framer = csv.then(|| Box::new(Framer::new(&config.csv)));
        Ok(FileReader {
            config,
            path,
            file,
            chunk: Bytes::new(),
            chunk_offset: offset,
            read_offset: offset,
            start: offset,
            pending: BytesMut::new(),
            skipping: false,
            framer,
            stash: None,
            csv_header,
            eof: false,
            whole: None,
            retired: Vec::new(),
            stats: ReadStats::default(),
        })
    }

    /// What this reader has scanned and copied so far.
    pub fn stats(&self) -> ReadStats {
        self.stats
    }

    /// A buffer for the next chunk: an earlier chunk that no record points into any more,
    /// or a new one. Reusing buffers spares the kernel from mapping and zeroing fresh pages.
    fn buffer(&mut self, need: usize) -> Vec<u8> {
        let mut i = 0;
        while i < self.retired.len() {
            match self.retired.swap_remove(i).try_into_mut() {
                Ok(m) => {
                    let mut v = Vec::from(m);
                    if v.capacity() >= need {
                        v.clear();
                        return v;
                    }
                }
                Err(still_shared) => {
                    self.retired.push(still_shared);
                    i += 1;
                }
            }
        }
        Vec::with_capacity(need)
    }

    /// Reads the next chunk; returns false when there is nothing new.
    fn fill(&mut self) -> Result<bool, SourceError> {
        if let Some(s) = self.stash.take() {
            self.chunk = s;
            return Ok(true);
        }
        let mut buf = self.buffer(CHUNK);
        // read_to_end fills spare capacity without zeroing it first
        let read = (&mut self.file)
            .take(CHUNK as u64)
            .read_to_end(&mut buf)
            .map_err(|e| SourceError::Io {
                context: format!("reading {}", self.path.display()),
                source: e,
            })? as u64;
        if read == 0 {
            return Ok(false);
        }
        self.stats.read += read;
        self.chunk_offset = self.read_offset;
        self.read_offset += read;
        self.chunk = Bytes::from(buf);
        if let Some(old) = self.whole.replace(self.chunk.clone())
            && self.retired.len() < 4
        {
            self.retired.push(old);
        }
        if self.chunk_offset == 0 && self.chunk.starts_with(BOM) {
            self.consume(BOM.len());
            self.start = self.chunk_offset;
        }
        Ok(true)
    }

    fn consume(&mut self, n: usize) {
        self.chunk = self.chunk.slice(n..);
        self.chunk_offset += n as u64;
    }

    fn keep(&mut self, n: usize) {
        if self.pending.capacity() - self.pending.len() < n {
            // grow by doubling, so that copies stay linear
            self.pending.reserve(n.max(self.pending.len()));
        }
        self.pending.extend_from_slice(&self.chunk[..n]);
        self.stats.copied += n as u64;
        self.stats.max_pending = self.stats.max_pending.max(self.pending.len());
    }

    fn max(&self) -> usize {
        self.config.max_record_bytes
    }

    fn prefix(&self) -> usize {
        self.max().clamp(1, OVERSIZED_PREFIX)
    }

    /// Pushes a record whose bytes (terminator included) end at `end`.
    fn push(&mut self, batch: &mut SourceBatch<u64>, mut value: Bytes, end: u64) {
        let terminated = value.last() == Some(&b'\n') || (self.framer.is_some() && value.last() == Some(&b'\r'));
        if terminated {
            value.truncate(value.len() - 1);
        }
        if self.config.format == FileFormat::Lines && value.last() == Some(&b'\r') {
            value.truncate(value.len() - 1);
        }
        let mut rec = if value.len() > self.max() {
            let message = format!(
                "a record of {} bytes is longer than max_record_bytes ({}); its first {} bytes are kept",
                value.len(),
                self.max(),
                self.prefix()
            );
            value.truncate(self.prefix());
            failed(value, keel::failure::reason::OVERSIZED, &message)
        } else {
            Record::from_value(value)
        };
        self.finish_record(&mut rec, end);
        batch.push(rec, end);
    }

    fn finish_record(&mut self, rec: &mut Record, end: u64) {
        if let Some(h) = &self.csv_header {
            rec.headers.push(("csv.header".to_owned(), h.clone()));
        }
        self.start = end;
    }

    /// Pushes a record that failed to frame: `value` is its first line (or prefix).
    fn push_failed(
        &mut self,
        batch: &mut SourceBatch<u64>,
        mut value: Bytes,
        reason: &'static str,
        message: &str,
        end: u64,
    ) {
        while matches!(value.last(), Some(b'\n' | b'\r')) {
            value.truncate(value.len() - 1);
        }
        if value.len() > self.max() {
            value.truncate(self.prefix());
        }
        let mut rec = failed(value, reason, message);
        self.finish_record(&mut rec, end);
        batch.push(rec, end);
    }

    /// A CSV record that is still open (inside quotes) where it must end: its first line
    /// is dead-lettered and reading resumes at the next line. `record` holds its bytes.
    /// Returns false when it has no line break: the caller decides.
    fn resume_at_next_line(
        &mut self,
        batch: &mut SourceBatch<u64>,
        reason: &'static str,
        message: &str,
    ) -> Result<bool, SourceError> {
        let Some(i) = memchr::memchr(b'\n', &self.pending) else {
            return Ok(false);
        };
        let line = self.pending.split_to(i + 1).freeze();
        let next = self.start + i as u64 + 1;
        self.push_failed(batch, line, reason, message, next);
        // scan again from the next line: the bytes after it are still here (the rest of
        // the record's buffer, then the unscanned chunk), no need to read them again
        let rest = self.pending.split().freeze();
        if !rest.is_empty() {
            let unscanned = std::mem::replace(&mut self.chunk, rest);
            if !unscanned.is_empty() {
                self.stash = Some(unscanned);
            }
        }
        self.chunk_offset = next;
        self.start = next;
        self.eof = false;
        if let Some(f) = &mut self.framer {
            f.reset();
        }
        Ok(true)
    }

    /// Scans the current chunk once; pushes at most one record.
    fn step(&mut self, batch: &mut SourceBatch<u64>) -> Result<(), SourceError> {
        if self.skipping {
            match memchr::memchr(b'\n', &self.chunk) {
                Some(i) => {
                    self.stats.scanned += i as u64 + 1;
                    self.consume(i + 1);
                    self.skipping = false;
                    let prefix = self.pending.split().freeze();
                    let message = format!(
                        "a record of {} bytes is longer than max_record_bytes ({}); its first {} bytes are kept",
                        self.chunk_offset - self.start,
                        self.max(),
                        prefix.len()
                    );
                    let end = self.chunk_offset;
                    self.push_failed(batch, prefix, keel::failure::reason::OVERSIZED, &message, end);
                    if let Some(f) = &mut self.framer {
                        f.reset();
                    }
                }
                None => {
                    self.stats.scanned += self.chunk.len() as u64;
                    let n = self.chunk.len();
                    self.consume(n);
                }
            }
            return Ok(());
        }
        if self.framer.is_some() && self.pending.is_empty() {
            // empty lines (and the LF of a CRLF) before a CSV record belong to no record
            let skip = self.chunk.iter().take_while(|&&b| b == b'\n' || b == b'\r').count();
            if skip > 0 {
                self.stats.scanned += skip as u64;
                self.consume(skip);
                self.start = self.chunk_offset;
                if self.chunk.is_empty() {
                    return Ok(());
                }
            }
        }
        // scan no further than the longest record allowed (+ CRLF)
        let room = (self.start + self.max() as u64 + 2).saturating_sub(self.chunk_offset);
        let take = self.chunk.len().min(room as usize);
        let found = match &mut self.framer {
            Some(f) => f.scan(&self.chunk[..take]),
            None => memchr::memchr(b'\n', &self.chunk[..take]).map(|i| i + 1),
        };
        self.stats.scanned += found.unwrap_or(take) as u64;
        match found {
            Some(n) => {
                // A record ended by CR ends there, whether or not the LF of a CRLF is already
                // in the buffer: its position must not depend on how the file was read. The
                // LF is skipped before the next record, like an empty line.
                let value = if self.pending.is_empty() {
                    self.chunk.slice(..n)
                } else {
                    self.keep(n);
                    self.pending.split().freeze()
                };
                self.consume(n);
                let mut value = value;
                if value.ends_with(b"\r\n") && self.framer.is_some() {
                    value.truncate(value.len() - 1);
                }
                let end = self.chunk_offset;
                self.push(batch, value, end);
            }
            None => {
                self.keep(take);
                self.consume(take);
                if take as u64 == room {
                    // the record does not end within max_record_bytes
                    let message = format!(
                        "no record end within max_record_bytes ({}): a quoted field is not closed",
                        self.max()
                    );
                    if self.framer.is_some()
                        && self.resume_at_next_line(batch, keel::failure::reason::OVERSIZED, &message)?
                    {
                        return Ok(());
                    }
                    self.pending.truncate(self.prefix());
                    self.skipping = true;
                }
            }
        }
        Ok(())
    }

    /// At the end of a bounded file. Returns true when reading goes on (from an earlier
    /// offset).
    fn at_end(&mut self, batch: &mut SourceBatch<u64>) -> Result<bool, SourceError> {
        let end = self.chunk_offset;
        if self.skipping {
            self.skipping = false;
            let prefix = self.pending.split().freeze();
            let message = format!(
                "a record of {} bytes is longer than max_record_bytes ({}); its first {} bytes are kept",
                end - self.start,
                self.max(),
                prefix.len()
            );
            self.push_failed(batch, prefix, keel::failure::reason::OVERSIZED, &message, end);
            return Ok(false);
        }
        if self.pending.is_empty() {
            return Ok(false);
        }
        let complete = self.framer.as_mut().is_none_or(|f| f.finish());
        if complete {
            // a last record without a line break
            let value = self.pending.split().freeze();
            self.push(batch, value, end);
            return Ok(false);
        }
        let message = "the file ends inside a quoted field";
        if self.resume_at_next_line(batch, keel::failure::reason::MALFORMED, message)? {
            return Ok(true);
        }
        let value = self.pending.split().freeze();
        self.push_failed(batch, value, keel::failure::reason::MALFORMED, message, end);
        Ok(false)
    }
}

/// A record that failed in the source: the runtime fails it with `reason` at stage `source`.
fn failed(value: Bytes, reason: &str, message: &str) -> Record {
    let mut rec = Record::from_value(value);
    rec.headers.push((
        keel::record::SOURCE_FAILURE.to_owned(),
        Bytes::from(format!("{reason}: {message}")),
    ));
    rec
}

impl PartitionReader for FileReader {
    type Position = u64;

    /// Bytes of the file after the last record read (one `fstat`).
    fn lag(&self) -> Option<u64> {
        Some(self.file.metadata().ok()?.len().saturating_sub(self.start))
    }

    async fn next_batch(&mut self, batch: &mut SourceBatch<u64>, max: usize) -> Result<ReadStatus, SourceError> {
        loop {
            while batch.len() < max && !self.chunk.is_empty() {
                self.step(batch)?;
            }
            if batch.len() >= max {
                return Ok(ReadStatus::Records);
            }
            if self.eof || !self.fill()? {
                self.eof = !self.config.follow;
                if !self.config.follow && self.at_end(batch)? {
                    continue;
                }
                return Ok(if !batch.is_empty() {
                    ReadStatus::Records
                } else if self.config.follow {
                    ReadStatus::Idle
                } else {
                    ReadStatus::End
                });
            }
        }
    }
}

/// The header record of a CSV file (without its terminator) and the offset after it.
fn read_header(path: &Path, config: &FileSourceConfig) -> Result<(Option<Bytes>, u64), SourceError> {
    let io = |e| SourceError::Io {
        context: format!("reading the CSV header of {}", path.display()),
        source: e,
    };
    let mut f = File::open(path).map_err(io)?;
    let mut framer = Framer::new(&config.csv);
    let mut head = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut scanned = 0;
    let mut skipped = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        let mut data = &buf[..n];
        if n == 0 {
            if head.is_empty() {
                return Ok((None, skipped));
            }
            if !framer.finish() {
                return Err(SourceError::Other(format!(
                    "{}: the CSV header ends inside a quoted field",
                    path.display()
                )));
            }
            let len = head.len() as u64;
            return Ok((Some(Bytes::from(head)), skipped + len));
        }
        if skipped == 0 && head.is_empty() && scanned == 0 && data.starts_with(BOM) {
            data = &data[BOM.len()..];
            skipped = BOM.len() as u64;
        }
        scanned += n;
        if head.is_empty() {
            let blank = data.iter().take_while(|&&b| b == b'\n' || b == b'\r').count();
            skipped += blank as u64;
            data = &data[blank..];
        }
        if let Some(end) = framer.scan(data) {
            head.extend_from_slice(&data[..end]);
            let mut len = head.len() as u64;
            if head.last() == Some(&b'\r') && data.get(end) == Some(&b'\n') {
                len += 1;
            }
            while matches!(head.last(), Some(b'\n' | b'\r')) {
                head.pop();
            }
            return Ok((Some(Bytes::from(head)), skipped + len));
        }
        head.extend_from_slice(data);
        if head.len() > config.max_record_bytes {
            return Err(SourceError::Other(format!(
                "{}: the CSV header is longer than max_record_bytes ({})",
                path.display(),
                config.max_record_bytes
            )));
        }
    }
}
