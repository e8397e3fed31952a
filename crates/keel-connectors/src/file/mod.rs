//! Local files: a directory of JSON lines, CSV or plain lines as a source (each file a
//! partition, byte-offset positions, optional follow mode), and exactly-once file output.

mod config;
pub mod csv;
pub mod dead_letters;
mod sink;
mod source;

pub use config::{
    DEFAULT_MAX_RECORD_BYTES, FileFormat, FileSinkConfig, FileSourceConfig, OVERSIZED_PREFIX, glob_match,
};
pub use csv::{CsvDialect, CsvFields, CsvParseError, CsvParser};
pub use sink::{FilePreCommit, FileSink, OWNER_FILE};
pub use source::{FileReader, FileSource};

#[cfg(test)]
mod tests;
