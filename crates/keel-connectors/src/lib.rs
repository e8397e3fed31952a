//! Sources and sinks for keel.
//!
//! - [`file`]: local files (always built): the embedded default.
//! - [`ledger`]: ledger backends (SQLite, PostgreSQL).
//! - [`generator`]: deterministic synthetic records for demos and benchmarks.
//! - [`stdout`]: print committed records.
//! - [`txn`]: staged transactions on object storage (S3).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod file;
pub mod generator;
pub mod ledger;
pub mod queue;
pub mod stdout;
pub mod txn;
