//! Ledger backends: SQLite (embedded default) and PostgreSQL (shared by several workers).
//!
//! Both implement [`keel::ledger::Ledger`] with the same behaviour, checked by one test suite
//! (`tests/ledger`). [`open`] picks a backend from a location:
//!
//! - `sqlite:PATH` or a plain path: a SQLite file (created if missing);
//! - `postgres://user@host:port/db` (or `postgresql://`): PostgreSQL, tables in `schema`.

use std::sync::Arc;

use keel::ledger::{Ledger, LedgerError};

pub mod postgres;
mod sql;
pub mod sqlite;

pub use postgres::PostgresLedger;
pub use sqlite::SqliteLedger;

/// Opens the ledger at `location`; `schema` applies to PostgreSQL only.
pub async fn open(location: &str, schema: &str) -> Result<Arc<dyn Ledger>, LedgerError> {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresLedger::connect(location, schema).await?));
    }
    let path = location.strip_prefix("sqlite:").unwrap_or(location);
    if path.is_empty() {
        return Err(LedgerError::Config("an empty ledger location".into()));
    }
    let path = path.to_owned();
    let ledger = tokio::task::spawn_blocking(move || SqliteLedger::open(path))
        .await
        .map_err(|e| LedgerError::Backend(format!("opening the ledger: {e}")))??;
    Ok(Arc::new(ledger))
}
