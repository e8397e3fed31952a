//! Fresh ledgers for each test: a SQLite file in a temporary directory, or a PostgreSQL
//! schema of its own (dropped afterwards) on the machine's server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use keel::ledger::{Ledger, LedgerError};
use keel_connectors::ledger::{PostgresLedger, SqliteLedger};

pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub enum Kind {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

/// A backend under test.
pub struct Backend {
    pub ledger: Arc<dyn Ledger>,
    pub kind: Kind,
}

impl Backend {
    /// Another handle (its own connection) on the same ledger, as a second worker has.
    pub async fn another(&self) -> Arc<dyn Ledger> {
        match &self.kind {
            Kind::Sqlite(dir) => Arc::new(SqliteLedger::open(dir.path().join("ledger.db")).unwrap()),
            Kind::Postgres(schema) => Arc::new(PostgresLedger::connect(PG_URL, schema).await.unwrap()),
        }
    }

    /// Marks the stored schema as written by a newer keel, then reopens: must be refused.
    pub async fn reopen_with_newer_schema(&self) -> Result<(), LedgerError> {
        match &self.kind {
            Kind::Sqlite(dir) => {
                let path = dir.path().join("ledger.db");
                let c = rusqlite::Connection::open(&path).unwrap();
                c.pragma_update(None, "user_version", 99).unwrap();
                drop(c);
                SqliteLedger::open(&path).map(|_| ())
            }
            Kind::Postgres(schema) => {
                let (client, conn) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(conn);
                client
                    .execute(&format!("UPDATE {schema}.keel_ledger_schema SET version = 99"), &[])
                    .await
                    .unwrap();
                PostgresLedger::connect(PG_URL, schema).await.map(|_| ())
            }
        }
    }

    pub async fn cleanup(self) {
        if let Kind::Postgres(schema) = &self.kind {
            let (client, conn) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .await
                .unwrap();
        }
    }
}

pub async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let ledger = SqliteLedger::open(dir.path().join("ledger.db")).unwrap();
    Backend {
        ledger: Arc::new(ledger),
        kind: Kind::Sqlite(dir),
    }
}

pub async fn postgres() -> Backend {
    static N: AtomicU32 = AtomicU32::new(0);
    let schema = format!("keel_test_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let ledger = PostgresLedger::connect(PG_URL, &schema)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {PG_URL} (start it with .ci/services): {e}"));
    Backend {
        ledger: Arc::new(ledger),
        kind: Kind::Postgres(schema),
    }
}
