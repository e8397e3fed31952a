//! Settings of the PostgreSQL sink.

use std::path::PathBuf;
use std::time::Duration;

/// How rows reach the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// `INSERT` every row.
    #[default]
    Insert,
    /// `INSERT … ON CONFLICT (key) DO UPDATE`: the last row of a key wins (within an epoch
    /// too). The key columns must be covered by a unique index.
    Upsert {
        /// The key columns.
        key: Vec<String>,
    },
}

/// The PostgreSQL sink.
#[derive(Clone, Debug)]
pub struct PostgresSinkConfig {
    /// `postgres://user[:password]@host:port/db` or `host=… dbname=…` (no TLS: a local or
    /// tunnelled server).
    pub url: String,
    /// `table` or `schema.table`; it must exist (except for dead letters).
    pub table: String,
    /// `(column, field)`: the top-level record field each column takes. Empty: every
    /// column of the table from the field of the same name.
    pub columns: Vec<(String, String)>,
    /// Insert or upsert.
    pub mode: WriteMode,
    /// Where epochs are staged until their commit.
    pub staging: PathBuf,
    /// How long a commit keeps retrying through an outage before the run fails.
    pub publish_timeout: Duration,
    /// Rows per `INSERT` statement within an epoch's transaction.
    pub rows_per_statement: usize,
    /// The sink writes dead letters (records are envelopes).
    pub dead_letters: bool,
}

impl PostgresSinkConfig {
    /// Inserts into `table` every column from the field of the same name.
    pub fn new(url: impl Into<String>, table: impl Into<String>, staging: impl Into<PathBuf>) -> Self {
        PostgresSinkConfig {
            url: url.into(),
            table: table.into(),
            columns: Vec::new(),
            mode: WriteMode::Insert,
            staging: staging.into(),
            publish_timeout: Duration::from_secs(300),
            rows_per_statement: 5000,
            dead_letters: false,
        }
    }
}
