//! Sources and sinks for keel.
//!
//! - [`file`]: local files (always built): the embedded default.
//! - [`ledger`]: ledger backends (SQLite with the `sqlite` feature, PostgreSQL with
//!   `postgres`).
//! - [`queue`]: job queue backends (SQLite with `sqlite`, Redis with `redis`).
//! - [`generator`]: deterministic synthetic records for demos and benchmarks.
//! - [`stdout`]: print committed records.
//! - [`txn`]: staged transactions on object storage (S3; the `s3` feature).
//! - [`kafka`]: Kafka source and exactly-once sink (the `kafka` feature).
//! - [`nats`]: NATS JetStream source and exactly-once sink (the `nats` feature).
//! - [`redis_stream`]: Redis Streams source and exactly-once sink (the `redis` feature).
//! - [`postgres`]: PostgreSQL exactly-once table sink (the `postgres` feature).
//! - [`s3`]: exactly-once files per epoch on object storage (the `s3` feature).
//! - [`delta`]: Delta Lake table sink, exactly once with `txn` actions (the `delta` feature).
//! - [`stage`]: the staged-epoch protocol the message sinks share.
//! - [`webhook`]: run events posted to a webhook (the `webhook` feature).
//!
//! Every backend that needs a client library is a cargo feature (none by default), so a
//! program that only reads and writes files compiles none of them; `keel` enables them all.
//! A location naming a backend that was not built is refused with the feature to enable.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "delta")]
pub mod delta;
#[cfg(any(
    feature = "kafka",
    feature = "nats",
    feature = "redis",
    feature = "postgres",
    feature = "delta"
))]
pub mod envelope;
pub mod file;
pub mod generator;
#[cfg(any(
    feature = "nats",
    feature = "redis",
    feature = "postgres",
    feature = "s3",
    feature = "delta"
))]
pub(crate) mod io;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod ledger;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod queue;
#[cfg(feature = "redis")]
pub mod redis_stream;
#[cfg(feature = "s3")]
pub mod s3;
pub mod stage;
pub mod stdout;
#[cfg(feature = "s3")]
pub mod txn;
#[cfg(feature = "webhook")]
pub mod webhook;
