//! Object storage (S3 and compatible servers): an exactly-once sink of files per epoch.
//!
//! Each epoch is staged locally ([`crate::stage`]) and uploaded at its commit, as objects
//! `<prefix>/part-<epoch, 20 digits>-<n, 4 digits>.<ext>` (dead letters: `dead-…jsonl`), a
//! new object after `max_file_bytes`. An object appears whole when its upload completes,
//! and only decided epochs are uploaded, so **a reader that lists the prefix sees only
//! committed epochs**. Object names are fixed by the epoch and the order of its records, so
//! a commit repeated after a crash writes the same objects again, never new ones; a crash
//! between two objects of one epoch leaves the first visible until the restart uploads the
//! rest (never rolled back).
//!
//! On start, objects of epochs newer than the restored checkpoint (whose manifest was lost)
//! are deleted, since their records will be produced again; objects no checkpoint accounts
//! for at all (the checkpoints were deleted) are refused unless the run is from scratch.
//! The prefix belongs to the sink: other writers' objects named like its own would be
//! taken for its output.
//!
//! Reading: list `<prefix>/part-*` (any order; the names sort by epoch). Each object of a
//! CSV sink starts with the header line.

mod config;
mod sink;

pub use config::S3SinkConfig;
pub use sink::{S3Publisher, S3Sink};
