//! Integration tests of the `keel` command (one test binary for the crate).

mod cli;
mod crash;
mod csv;
mod fault;
mod ingest;
mod kafka;
mod metrics;
mod notify;
mod queue;
mod refjob;
mod secrets;
