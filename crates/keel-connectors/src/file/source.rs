//! Reading a directory of line-oriented files; each file is a partition.
//!
//! Positions are byte offsets after a record's line terminator. A record is one line
//! without its `\n` (and, for CSV and plain lines, without a trailing `\r`). A last line
//! without `\n` is a record at the end of a bounded read; in follow mode it is left for
//! later, since the writer may still be appending to it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use keel::{PartitionReader, ReadStatus, Record, Source, SourceBatch, SourceError};

use super::config::{FileFormat, FileSourceConfig};

const CHUNK: usize = 1 << 20;

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

/// Reads one file.
#[derive(Debug)]
pub struct FileReader {
    config: Arc<FileSourceConfig>,
    path: PathBuf,
    file: File,
    /// Complete data not yet split into records.
    chunk: Bytes,
    /// Bytes of an unfinished last line, carried into the next read.
    partial: BytesMut,
    /// File offset of the first byte of `chunk`.
    chunk_offset: u64,
    /// Offset of the next byte to read from the file.
    read_offset: u64,
    csv_header: Option<Bytes>,
    eof: bool,
    /// The whole current chunk, kept to recycle its buffer later.
    whole: Option<Bytes>,
    /// Earlier chunks, recycled once no record points into them.
    retired: Vec<Bytes>,
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
        let (csv_header, header_len) = match config.format {
            FileFormat::Csv => read_header(&path)?,
            _ => (None, 0),
        };
        // a fresh CSV partition starts after its header line
        let offset = if offset == 0 { header_len } else { offset };
        file.seek(SeekFrom::Start(offset)).map_err(|e| io("seeking in", e))?;
        Ok(FileReader {
            config,
            path,
            file,
            chunk: Bytes::new(),
            partial: BytesMut::new(),
            chunk_offset: offset,
            read_offset: offset,
            csv_header,
            eof: false,
            whole: None,
            retired: Vec::new(),
        })
    }

    /// Reads the next chunk; returns false at the end of the file.
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

    fn fill(&mut self) -> Result<bool, SourceError> {
        let carried = self.partial.len();
        let mut buf = self.buffer(CHUNK + carried);
        buf.extend_from_slice(&self.partial);
        // read_to_end fills spare capacity without zeroing it first
        let read = (&mut self.file)
            .take(CHUNK as u64)
            .read_to_end(&mut buf)
            .map_err(|e| SourceError::Io {
                context: format!("reading {}", self.path.display()),
                source: e,
            })? as u64;
        if read == 0 {
            // nothing new: the unfinished line stays in `partial`
            return Ok(false);
        }
        self.partial.clear();
        self.chunk_offset = self.read_offset - carried as u64;
        self.read_offset += read;
        self.chunk = Bytes::from(buf);
        if let Some(old) = self.whole.replace(self.chunk.clone())
            && self.retired.len() < 4
        {
            self.retired.push(old);
        }
        Ok(true)
    }

    fn strip_cr(&self) -> bool {
        self.config.format != FileFormat::JsonLines
    }

    fn record(&self, mut line: Bytes) -> Record {
        if self.strip_cr() && line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        let mut r = Record::from_value(line);
        if let Some(h) = &self.csv_header {
            r.headers.push(("csv.header".to_owned(), h.clone()));
        }
        r
    }
}

impl PartitionReader for FileReader {
    type Position = u64;

    async fn next_batch(&mut self, batch: &mut SourceBatch<u64>, max: usize) -> Result<ReadStatus, SourceError> {
        loop {
            // Split complete lines out of the current chunk.
            while batch.len() < max && !self.chunk.is_empty() {
                match memchr::memchr(b'\n', &self.chunk) {
                    Some(i) => {
                        let line = self.chunk.slice(..i);
                        self.chunk = self.chunk.slice(i + 1..);
                        self.chunk_offset += i as u64 + 1;
                        let rec = self.record(line);
                        batch.push(rec, self.chunk_offset);
                    }
                    None => {
                        self.partial.extend_from_slice(&self.chunk);
                        self.chunk = Bytes::new();
                    }
                }
            }
            if batch.len() >= max {
                return Ok(ReadStatus::Records);
            }
            if self.eof || !self.fill()? {
                self.eof = !self.config.follow;
                if !self.partial.is_empty() && !self.config.follow {
                    // a bounded file whose last line has no terminator
                    let line = self.partial.split().freeze();
                    self.chunk_offset += line.len() as u64;
                    let rec = self.record(line);
                    batch.push(rec, self.chunk_offset);
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

/// The first line of a CSV file (without its terminator) and its length with the terminator.
fn read_header(path: &Path) -> Result<(Option<Bytes>, u64), SourceError> {
    let io = |e| SourceError::Io {
        context: format!("reading the CSV header of {}", path.display()),
        source: e,
    };
    let mut f = File::open(path).map_err(io)?;
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        if let Some(i) = memchr::memchr(b'\n', &buf[..n]) {
            line.extend_from_slice(&buf[..i]);
            let len = line.len() as u64 + 1;
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok((Some(Bytes::from(line)), len));
        }
        line.extend_from_slice(&buf[..n]);
        if line.len() > 1 << 20 {
            return Err(SourceError::Other(format!(
                "{}: CSV header line longer than 1 MiB",
                path.display()
            )));
        }
    }
    let len = line.len() as u64;
    Ok(((!line.is_empty()).then(|| Bytes::from(line)), len))
}
