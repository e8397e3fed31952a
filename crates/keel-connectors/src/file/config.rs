//! Settings of the file source and the file sink.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::csv::CsvDialect;

/// How records are laid out in a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// One JSON value per line (`.jsonl`).
    #[default]
    #[serde(alias = "jsonl", alias = "ndjson")]
    JsonLines,
    /// Comma-separated values as RFC 4180 defines them (`.csv`): a record ends at a line
    /// break outside quotes, so a quoted field may hold line breaks.
    Csv,
    /// Plain text lines (`.txt`, `.log`).
    Lines,
}

impl FileFormat {
    /// The name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            FileFormat::JsonLines => "json_lines",
            FileFormat::Csv => "csv",
            FileFormat::Lines => "lines",
        }
    }

    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::JsonLines => "jsonl",
            FileFormat::Csv => "csv",
            FileFormat::Lines => "txt",
        }
    }
}

/// Settings of [`super::FileSource`].
#[derive(Clone, Debug, PartialEq)]
pub struct FileSourceConfig {
    /// The directory to read.
    pub path: PathBuf,
    /// The record layout.
    pub format: FileFormat,
    /// File name pattern (`*` and `?` wildcards); default `*.<extension of the format>`.
    pub pattern: Option<String>,
    /// Keep watching for new files and new lines instead of ending at the end of the input.
    pub follow: bool,
    /// In follow mode, how often to look for new data.
    pub poll_interval: Duration,
    /// Read only the file of this name (batch ingestion runs one pipeline per file); the
    /// pattern is ignored.
    pub only: Option<String>,
    /// CSV: the dialect used to find where records end (and whether files have a header).
    pub csv: CsvDialect,
    /// Records longer than this many bytes are not buffered whole: they are dead-lettered
    /// as `oversized` with their first [`OVERSIZED_PREFIX`] bytes (or fewer) and reading
    /// goes on after them (see the module doc of the source for where). Default 1 MiB.
    pub max_record_bytes: usize,
}

/// The default of [`FileSourceConfig::max_record_bytes`].
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;

/// At most this many bytes of an oversized record are kept in its dead letter.
pub const OVERSIZED_PREFIX: usize = 64 << 10;

impl FileSourceConfig {
    /// Reads `*.jsonl` files in `path` once.
    pub fn new(path: impl Into<PathBuf>, format: FileFormat) -> Self {
        FileSourceConfig {
            path: path.into(),
            format,
            pattern: None,
            follow: false,
            poll_interval: Duration::from_millis(500),
            only: None,
            csv: CsvDialect::default(),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }

    /// The effective file name pattern.
    pub fn pattern(&self) -> String {
        self.pattern
            .clone()
            .unwrap_or_else(|| format!("*.{}", self.format.extension()))
    }

    /// True when `name` matches the pattern.
    pub fn matches(&self, name: &str) -> bool {
        if let Some(only) = &self.only {
            return name == only;
        }
        glob_match(self.pattern().as_bytes(), name.as_bytes())
    }
}

/// Settings of [`super::FileSink`].
#[derive(Clone, Debug, PartialEq)]
pub struct FileSinkConfig {
    /// The output directory (created if missing).
    pub path: PathBuf,
    /// The record layout (decides the file extension).
    pub format: FileFormat,
    /// File name prefix.
    pub prefix: String,
    /// Start a new file in the same epoch after this many bytes.
    pub max_file_bytes: u64,
    /// A first line written at the top of every file (the CSV header).
    pub header: Option<String>,
}

impl FileSinkConfig {
    /// Files `part-*.<ext>` in `path`.
    pub fn new(path: impl Into<PathBuf>, format: FileFormat) -> Self {
        FileSinkConfig {
            path: path.into(),
            format,
            prefix: "part".into(),
            max_file_bytes: 256 << 20,
            header: None,
        }
    }

    /// Dead-letter segments in `path`: JSON lines, prefix `dead`, rotated at 64 MiB; what
    /// `keel dlq` and [`super::dead_letters::DeadLetterDir`] read.
    pub fn dead_letters(path: impl Into<PathBuf>) -> Self {
        FileSinkConfig {
            prefix: "dead".into(),
            max_file_bytes: 64 << 20,
            ..Self::new(path, FileFormat::JsonLines)
        }
    }
}

/// Matches `*` (any run) and `?` (one byte) against a name.
pub fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match(b"*.jsonl", b"part-000.jsonl"));
        assert!(!glob_match(b"*.jsonl", b"part-000.json"));
        assert!(glob_match(b"part-??.csv", b"part-01.csv"));
        assert!(!glob_match(b"part-??.csv", b"part-001.csv"));
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"a*b*c", b"axxbyyc"));
        assert!(!glob_match(b"a*b*c", b"axxbyy"));
    }
}
