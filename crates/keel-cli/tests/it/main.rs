//! Integration tests of the `keel` command (one test binary for the crate).

mod cli;
mod crash;
mod fault;
mod csv;
mod ingest;
mod queue;
mod refjob;
mod secrets;
