//! Integration tests of the `keel` command (one test binary for the crate).

mod brokers;
mod cli;
mod crash;
mod csv;
mod delta;
mod fault;
mod ingest;
mod kafka;
mod metrics;
mod nats;
mod notify;
mod postgres;
mod queue;
mod redis_stream;
mod refjob;
mod s3;
mod secrets;
