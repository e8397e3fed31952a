//! Ledger backends: SQLite (embedded default) and PostgreSQL (shared by several workers).
//!
//! Both implement [`keel::ledger::Ledger`] with the same behaviour, checked by one test suite
//! (`tests/ledger`). [`open`] picks a backend from a location:
//!
//! - `sqlite:PATH` or a plain path: a SQLite file (created if missing);
//! - `postgres://user@host:port/db` (or `postgresql://`): PostgreSQL, tables in `schema`.

use std::sync::Arc;

use keel::ledger::{Ledger, LedgerError};

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "postgres")]
pub use postgres::PostgresLedger;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteLedger;

/// Opens the ledger at `location`; `schema` applies to PostgreSQL only. A backend this
/// build does not include is a [`LedgerError::Config`] naming the feature to enable.
pub async fn open(location: &str, schema: &str) -> Result<Arc<dyn Ledger>, LedgerError> {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        return Ok(Arc::new(PostgresLedger::connect(location, schema).await?));
        #[cfg(not(feature = "postgres"))]
        return Err(LedgerError::Config({
            let _ = schema;
            missing_feature("PostgreSQL", "postgres")
        }));
    }
    let path = location.strip_prefix("sqlite:").unwrap_or(location);
    if path.is_empty() {
        return Err(LedgerError::Config("an empty ledger location".into()));
    }
    #[cfg(feature = "sqlite")]
    {
        let path = path.to_owned();
        let ledger = tokio::task::spawn_blocking(move || SqliteLedger::open(path))
            .await
            .map_err(|e| LedgerError::Backend(format!("opening the ledger: {e}")))??;
        Ok(Arc::new(ledger))
    }
    #[cfg(not(feature = "sqlite"))]
    Err(LedgerError::Config(missing_feature("SQLite", "sqlite")))
}

/// The message for a backend this build leaves out.
#[cfg(not(all(feature = "sqlite", feature = "postgres")))]
fn missing_feature(backend: &str, feature: &str) -> String {
    format!("this build of keel has no {backend} backend: enable the `{feature}` feature of keel-connectors")
}
