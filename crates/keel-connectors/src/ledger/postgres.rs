//! The shared ledger: PostgreSQL, for several workers.
//!
//! A claim locks each row it decides on (`SELECT … FOR UPDATE`, rows taken in key order so
//! that two workers' batches cannot deadlock) and a new unit is inserted with
//! `ON CONFLICT DO NOTHING`, so two workers never both take a unit whose lease is valid.
//! Lease times come from the database clock, not the workers', so clock skew between
//! machines cannot hand out a unit twice. The schema is versioned in
//! `<schema>.keel_ledger_schema` and migrated under an advisory lock.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use keel::ledger::{
    BoxFuture, Claim, ClaimRequest, Filter, Fingerprint, Ledger, LedgerError, Stats, Status, Unit, UnitRef, decide, ms,
};
use keel::util::redact_url;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::sql::{self, COLUMNS, Param};

/// The migrations, in order; `%s` stands for the schema.
const MIGRATIONS: &[&str] = &["CREATE TABLE %s.keel_units (
        pipeline       TEXT NOT NULL,
        scope          TEXT NOT NULL,
        key            TEXT NOT NULL,
        checksum       TEXT,
        size           BIGINT NOT NULL,
        mtime_ns       BIGINT NOT NULL,
        status         TEXT NOT NULL CHECK (status IN ('pending', 'in_progress', 'completed', 'failed')),
        attempts       BIGINT NOT NULL,
        last_error     TEXT,
        metadata       JSONB NOT NULL,
        owner          TEXT,
        lease_until_ms BIGINT,
        started_ms     BIGINT,
        finished_ms    BIGINT,
        updated_ms     BIGINT NOT NULL,
        PRIMARY KEY (pipeline, scope, key)
    );
    CREATE INDEX keel_units_by_status ON %s.keel_units (pipeline, status, updated_ms);"];

/// The database clock in milliseconds.
const NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// A ledger in a PostgreSQL schema.
#[derive(Clone)]
pub struct PostgresLedger {
    pool: Pool,
    /// The location with its password redacted ([`redact_url`]): the pool keeps the real one.
    url: String,
    schema: String,
    table: String,
}

impl std::fmt::Debug for PostgresLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresLedger")
            .field("url", &self.url)
            .field("schema", &self.schema)
            .finish()
    }
}

fn backend(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Backend(redact_url(&e.to_string()))
}

/// True for a plain SQL identifier (`keel`, `ingest_2`), the only schema names accepted.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 63
}

impl PostgresLedger {
    /// Connects to `url` (`postgres://user@host:port/db`), creates `schema` if needed and
    /// migrates the ledger's tables in it.
    pub async fn connect(url: &str, schema: &str) -> Result<Self, LedgerError> {
        if !is_identifier(schema) {
            return Err(LedgerError::Config(format!(
                "schema `{schema}`: use lowercase letters, digits and `_` (at most 63)"
            )));
        }
        // only the redacted location is ever shown (errors, `describe`, `Debug`)
        let shown = redact_url(url);
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| LedgerError::Config(redact_url(&format!("ledger url `{shown}`: {e}"))))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(4)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| LedgerError::Config(redact_url(&format!("ledger url `{shown}`: {e}"))))?;
        let ledger = PostgresLedger {
            pool,
            url: shown,
            table: format!("{schema}.keel_units"),
            schema: schema.to_owned(),
        };
        ledger.migrate().await?;
        Ok(ledger)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, LedgerError> {
        self.pool
            .get()
            .await
            .map_err(|e| LedgerError::Backend(redact_url(&format!("connecting to {}: {e}", self.url))))
    }

    async fn migrate(&self) -> Result<(), LedgerError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let s = &self.schema;
        // one migrator at a time, whatever the schema name hashes to
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[&format!("keel-ledger-{s}")],
        )
        .await
        .map_err(backend)?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.keel_ledger_schema (version BIGINT NOT NULL);"
        ))
        .await
        .map_err(backend)?;
        let row = tx
            .query_opt(&format!("SELECT version FROM {s}.keel_ledger_schema"), &[])
            .await
            .map_err(backend)?;
        let version: i64 = match row {
            Some(r) => r.get(0),
            None => {
                tx.execute(&format!("INSERT INTO {s}.keel_ledger_schema VALUES (0)"), &[])
                    .await
                    .map_err(backend)?;
                0
            }
        };
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(LedgerError::Schema { found: version, known });
        }
        for m in MIGRATIONS.iter().skip(version as usize) {
            tx.batch_execute(&m.replace("%s", s)).await.map_err(backend)?;
        }
        tx.execute(&format!("UPDATE {s}.keel_ledger_schema SET version = $1"), &[&known])
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    /// Updates each unit `worker` holds with `set` (parameters: `$1`-`$4` pipeline, scope,
    /// key, worker, then `extra` from `$5`; `$now` is the database time); returns the units
    /// it does not hold.
    async fn update_held(
        &self,
        set: &str,
        units: &[(UnitRef, Vec<Box<dyn ToSql + Sync + Send>>)],
        worker: &str,
    ) -> Result<Vec<UnitRef>, LedgerError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let mut lost = Vec::new();
        let text = format!(
            "UPDATE {} SET {} WHERE pipeline = $1 AND scope = $2 AND key = $3 AND owner = $4 AND status = 'in_progress'",
            self.table,
            set.replace("$now", NOW)
        );
        let update = tx.prepare(&text).await.map_err(backend)?;
        for (u, extra) in units {
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&u.pipeline, &u.scope, &u.key, &worker];
            params.extend(extra.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)));
            let changed = tx.execute(&update, &params).await.map_err(backend)?;
            if changed == 0 {
                lost.push(u.clone());
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(lost)
    }
}

fn placeholder(n: usize) -> String {
    format!("${n}")
}

fn bind(params: &[Param]) -> Vec<Box<dyn ToSql + Sync + Send>> {
    params
        .iter()
        .map(|p| -> Box<dyn ToSql + Sync + Send> {
            match p {
                Param::Text(s) => Box::new(s.clone()),
                Param::Int(i) => Box::new(*i),
            }
        })
        .collect()
}

fn refs(params: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
}

fn read_unit(r: &Row) -> Unit {
    let status: String = r.get(6);
    let opt_u64 = |v: Option<i64>| v.map(sql::to_u64);
    Unit {
        unit: UnitRef {
            pipeline: r.get(0),
            scope: r.get(1),
            key: r.get(2),
        },
        fingerprint: Fingerprint {
            checksum: r.get(3),
            size: sql::to_u64(r.get(4)),
            mtime_ns: r.get(5),
        },
        // the CHECK constraint keeps other values out
        status: Status::parse(&status).unwrap_or(Status::Failed),
        attempts: u32::try_from(r.get::<_, i64>(7)).unwrap_or(u32::MAX),
        last_error: r.get(8),
        metadata: r.get(9),
        owner: r.get(10),
        lease_until_ms: opt_u64(r.get(11)),
        started_ms: opt_u64(r.get(12)),
        finished_ms: opt_u64(r.get(13)),
        updated_ms: sql::to_u64(r.get(14)),
    }
}

impl PostgresLedger {
    async fn claim_all(
        &self,
        requests: &[ClaimRequest],
        worker: &str,
        lease: Duration,
    ) -> Result<Vec<Claim>, LedgerError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let now: i64 = tx
            .query_one(&format!("SELECT {NOW}"), &[])
            .await
            .map_err(backend)?
            .get(0);
        let now_u = sql::to_u64(now);
        let until = sql::to_i64(now_u.saturating_add(ms(lease)));
        let t = &self.table;
        let insert = tx
            .prepare(&format!(
                "INSERT INTO {t} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, 'in_progress', 1, NULL, '{{}}', $7, $8, $9, NULL, $9)
                 ON CONFLICT DO NOTHING"
            ))
            .await
            .map_err(backend)?;
        let select = tx
            .prepare(&format!(
                "SELECT {COLUMNS} FROM {t} WHERE pipeline = $1 AND scope = $2 AND key = $3 FOR UPDATE"
            ))
            .await
            .map_err(backend)?;
        let take = tx
            .prepare(&format!(
                "UPDATE {t} SET checksum = $4, size = $5, mtime_ns = $6, status = 'in_progress', attempts = $7,
                   owner = $8, lease_until_ms = $9, started_ms = $10, finished_ms = NULL, updated_ms = $10
                 WHERE pipeline = $1 AND scope = $2 AND key = $3"
            ))
            .await
            .map_err(backend)?;
        let touch = tx
            .prepare(&format!(
                "UPDATE {t} SET size = $4, mtime_ns = $5, checksum = COALESCE($6, checksum)
                 WHERE pipeline = $1 AND scope = $2 AND key = $3"
            ))
            .await
            .map_err(backend)?;
        // rows are locked in key order so that concurrent batches cannot deadlock
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by(|&a, &b| requests[a].unit.cmp(&requests[b].unit));
        let mut claims = vec![Claim::Skip; requests.len()];
        for i in order {
            let r = &requests[i];
            let (u, fp) = (&r.unit, &r.fingerprint);
            let size = sql::to_i64(fp.size);
            let inserted = tx
                .execute(
                    &insert,
                    &[
                        &u.pipeline,
                        &u.scope,
                        &u.key,
                        &fp.checksum,
                        &size,
                        &fp.mtime_ns,
                        &worker,
                        &until,
                        &now,
                    ],
                )
                .await
                .map_err(backend)?;
            if inserted == 1 {
                claims[i] = decide(None, fp, worker, now_u);
                continue;
            }
            let row = tx
                .query_opt(&select, &[&u.pipeline, &u.scope, &u.key])
                .await
                .map_err(backend)?;
            let existing = row.as_ref().map(read_unit);
            let claim = decide(existing.as_ref(), fp, worker, now_u);
            match &claim {
                Claim::Process { attempt, .. } => {
                    let attempt = i64::from(*attempt);
                    tx.execute(
                        &take,
                        &[
                            &u.pipeline,
                            &u.scope,
                            &u.key,
                            &fp.checksum,
                            &size,
                            &fp.mtime_ns,
                            &attempt,
                            &worker,
                            &until,
                            &now,
                        ],
                    )
                    .await
                    .map_err(backend)?;
                }
                Claim::Skip if existing.as_ref().is_some_and(|e| !e.fingerprint.same_stat(fp)) => {
                    tx.execute(
                        &touch,
                        &[&u.pipeline, &u.scope, &u.key, &size, &fp.mtime_ns, &fp.checksum],
                    )
                    .await
                    .map_err(backend)?;
                }
                Claim::Skip | Claim::Busy { .. } => {}
            }
            claims[i] = claim;
        }
        tx.commit().await.map_err(backend)?;
        Ok(claims)
    }
}

impl Ledger for PostgresLedger {
    fn describe(&self) -> String {
        format!("postgres:{} (schema {})", self.url, self.schema)
    }

    fn claim<'a>(
        &'a self,
        requests: &'a [ClaimRequest],
        worker: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claim>, LedgerError>> {
        Box::pin(self.claim_all(requests, worker, lease))
    }

    fn renew<'a>(
        &'a self,
        units: &'a [UnitRef],
        worker: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<UnitRef>, LedgerError>> {
        Box::pin(async move {
            let lease = sql::to_i64(ms(lease));
            let units: Vec<_> = units
                .iter()
                .map(|u| (u.clone(), vec![Box::new(lease) as Box<dyn ToSql + Sync + Send>]))
                .collect();
            self.update_held("lease_until_ms = $now + $5", &units, worker).await
        })
    }

    fn complete<'a>(
        &'a self,
        units: &'a [(UnitRef, serde_json::Value)],
        worker: &'a str,
    ) -> BoxFuture<'a, Result<Vec<UnitRef>, LedgerError>> {
        Box::pin(async move {
            let units: Vec<_> = units
                .iter()
                .map(|(u, m)| (u.clone(), vec![Box::new(m.clone()) as Box<dyn ToSql + Sync + Send>]))
                .collect();
            self.update_held(
                "status = 'completed', metadata = $5, last_error = NULL, owner = NULL, lease_until_ms = NULL, \
                 finished_ms = $now, updated_ms = $now",
                &units,
                worker,
            )
            .await
        })
    }

    fn fail<'a>(
        &'a self,
        unit: &'a UnitRef,
        worker: &'a str,
        error: &'a str,
        metadata: serde_json::Value,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        Box::pin(async move {
            let units = vec![(
                unit.clone(),
                vec![
                    Box::new(error.to_owned()) as Box<dyn ToSql + Sync + Send>,
                    Box::new(metadata) as Box<dyn ToSql + Sync + Send>,
                ],
            )];
            let lost = self
                .update_held(
                    "status = 'failed', last_error = $5, metadata = $6, owner = NULL, lease_until_ms = NULL, \
                     finished_ms = $now, updated_ms = $now",
                    &units,
                    worker,
                )
                .await?;
            match lost.into_iter().next() {
                Some(u) => Err(LedgerError::LostLease(u.key)),
                None => Ok(()),
            }
        })
    }

    fn list<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<Vec<Unit>, LedgerError>> {
        Box::pin(async move {
            let w = sql::where_clause(filter, None, placeholder);
            let limit = filter.limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
            let text = format!(
                "SELECT {COLUMNS} FROM {}{} ORDER BY pipeline, scope, key{limit}",
                self.table, w.clause
            );
            let params = bind(&w.params);
            let client = self.client().await?;
            let rows = client.query(&text, &refs(&params)).await.map_err(backend)?;
            Ok(rows.iter().map(read_unit).collect())
        })
    }

    fn retry<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<u64, LedgerError>> {
        Box::pin(async move {
            let w = sql::target_clause(&self.table, filter, Some(Status::Failed), placeholder);
            let text = format!(
                "UPDATE {} SET status = 'pending', owner = NULL, lease_until_ms = NULL, updated_ms = {NOW}{}",
                self.table, w.clause
            );
            let params = bind(&w.params);
            let client = self.client().await?;
            client.execute(&text, &refs(&params)).await.map_err(backend)
        })
    }

    fn clear<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<u64, LedgerError>> {
        Box::pin(async move {
            let w = sql::target_clause(&self.table, filter, None, placeholder);
            let text = format!("DELETE FROM {}{}", self.table, w.clause);
            let params = bind(&w.params);
            let client = self.client().await?;
            client.execute(&text, &refs(&params)).await.map_err(backend)
        })
    }

    fn stats<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<Stats, LedgerError>> {
        Box::pin(async move {
            let w = sql::where_clause(filter, None, placeholder);
            let text = format!(
                "SELECT status, COUNT(*)::bigint, COALESCE(SUM(attempts), 0)::bigint FROM {}{} GROUP BY status",
                self.table, w.clause
            );
            let params = bind(&w.params);
            let client = self.client().await?;
            let rows = client.query(&text, &refs(&params)).await.map_err(backend)?;
            let mut stats = Stats::default();
            for r in rows {
                let n = sql::to_u64(r.get(1));
                stats.attempts += sql::to_u64(r.get(2));
                match Status::parse(r.get(0)) {
                    Some(Status::Pending) => stats.pending = n,
                    Some(Status::InProgress) => stats.in_progress = n,
                    Some(Status::Completed) => stats.completed = n,
                    Some(Status::Failed) => stats.failed = n,
                    None => {}
                }
            }
            Ok(stats)
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["keel", "_x", "ingest_2"] {
            assert!(super::is_identifier(ok), "{ok}");
        }
        for bad in ["", "2x", "Keel", "a;drop", "a b", "a-b"] {
            assert!(!super::is_identifier(bad), "{bad}");
        }
    }
}
