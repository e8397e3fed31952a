//! Local files: a directory of JSON lines, CSV or plain lines as a source (each file a
//! partition, byte-offset positions, optional follow mode), and exactly-once file output.

mod config;
pub mod dead_letters;
mod sink;
mod source;

pub use config::{FileFormat, FileSinkConfig, FileSourceConfig, glob_match};
pub use sink::{FilePreCommit, FileSink, OWNER_FILE};
pub use source::{FileReader, FileSource};

#[cfg(test)]
mod tests;
