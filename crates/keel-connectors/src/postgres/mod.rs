//! PostgreSQL: an exactly-once sink of rows into a table.
//!
//! Each epoch is staged locally ([`crate::stage`]) and committed in **one transaction**
//! that inserts (or upserts) its rows and moves the sink's row in `keel_sink_progress` to the
//! epoch's token (fixed at prepare). The transaction first locks that row and reads it: a
//! commit repeated after a crash finds its own token there and does nothing. Readers see an
//! epoch's rows all at once, at the commit, or not at all.
//!
//! At start the sink reads the table's columns from the catalog: every mapped column must
//! exist, a `NOT NULL` column without a default must be mapped, and an upsert key must be
//! covered by a unique index. Each output record is then checked against the column types
//! before it joins an epoch ([`keel::Sink::record_check`]): a value the column cannot take
//! fails that record alone (`bad_type`, `missing_field`), which the sink's policy
//! dead-letters, instead of failing a decided epoch's commit.
//!
//! Dead letters go to a table of their own ([`PostgresSink::dead_letters`], created if
//! missing): one row per dead letter, keyed by its identity.

mod columns;
mod config;
mod errors;
mod sink;

pub use config::{PostgresSinkConfig, WriteMode};
pub use sink::{PostgresPublisher, PostgresSink};

/// `name` as a quoted SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.table` or `table`, each part quoted.
pub(crate) fn quote_table(name: &str) -> String {
    name.split('.').map(quote_ident).collect::<Vec<_>>().join(".")
}
