//! Delta Lake: an exactly-once table sink, on a local path or S3.
//!
//! Each epoch is staged locally ([`crate::stage`]) and, at its commit, written as Parquet
//! files and committed as **one Delta commit** that carries a `txn` action (app id: the
//! sink's, version: the epoch). Before writing, the commit reads the table's latest
//! version for the app id: an epoch already there (a commit repeated after a crash) is
//! skipped. Readers of the table (any Delta client) see whole epochs or nothing; Parquet
//! files written by a commit that did not happen are in no version (`VACUUM` removes them).
//! New epochs are always numbered above the table's version for the app id, so a pipeline
//! started from scratch is never taken for done.
//!
//! The schema is the table's when it exists; else the configured columns, or the fields of
//! the first epoch's records (integers as `long`, other numbers as `double`, text as
//! `string`, booleans as `boolean`), and the table is created with it. Each record is
//! checked against the schema before it joins an epoch ([`keel::Sink::record_check`]): a
//! value of another type fails that record alone (`bad_type`); fields the table does not
//! have are left out.

mod config;
mod schema;
mod sink;

pub use config::{ColumnType, DeltaSinkConfig};
pub use sink::{DeltaPublisher, DeltaSink};
