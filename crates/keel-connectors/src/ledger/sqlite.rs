//! The embedded ledger: one SQLite database file (WAL mode, full sync).
//!
//! Every operation is one transaction. Claims take the write lock up front
//! (`BEGIN IMMEDIATE`), so the read of a row and the decision written back cannot interleave
//! with another process's claim on the same file. The schema is versioned with
//! `PRAGMA user_version` and migrated forward on open; a database written by a newer keel
//! is refused rather than guessed at.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::ledger::{
    BoxFuture, Claim, ClaimRequest, Filter, Fingerprint, Ledger, LedgerError, Stats, Status, Unit, UnitRef, decide, ms,
};
use keel::util::now_ms;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params, params_from_iter};

use super::sql::{self, COLUMNS, Param};

/// Schema migrations, in order; `user_version` counts those applied.
const MIGRATIONS: &[&str] = &["CREATE TABLE keel_units (
        pipeline       TEXT NOT NULL,
        scope          TEXT NOT NULL,
        key            TEXT NOT NULL,
        checksum       TEXT,
        size           INTEGER NOT NULL,
        mtime_ns       INTEGER NOT NULL,
        status         TEXT NOT NULL CHECK (status IN ('pending', 'in_progress', 'completed', 'failed')),
        attempts       INTEGER NOT NULL,
        last_error     TEXT,
        metadata       TEXT NOT NULL,
        owner          TEXT,
        lease_until_ms INTEGER,
        started_ms     INTEGER,
        finished_ms    INTEGER,
        updated_ms     INTEGER NOT NULL,
        PRIMARY KEY (pipeline, scope, key)
    ) WITHOUT ROWID;
    CREATE INDEX keel_units_by_status ON keel_units (pipeline, status, updated_ms);"];

const TABLE: &str = "keel_units";

/// A ledger in a SQLite file.
#[derive(Clone)]
pub struct SqliteLedger {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteLedger").field("path", &self.path).finish()
    }
}

fn backend(e: rusqlite::Error) -> LedgerError {
    LedgerError::Backend(e.to_string())
}

impl SqliteLedger {
    /// Opens (creating if needed) the ledger at `path` and migrates its schema.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LedgerError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| LedgerError::Config(format!("creating {}: {e}", dir.display())))?;
        }
        let mut conn = Connection::open(&path)
            .map_err(|e| LedgerError::Config(format!("opening ledger {}: {e}", path.display())))?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(backend)?;
        migrate(&mut conn)?;
        Ok(SqliteLedger {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection in the blocking pool.
    fn with<T, F>(&self, f: F) -> BoxFuture<'static, Result<T, LedgerError>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, LedgerError> + Send + 'static,
    {
        let conn = self.conn.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut c = conn
                    .lock()
                    .map_err(|_| LedgerError::Backend("the ledger connection was poisoned by a panic".into()))?;
                f(&mut c)
            })
            .await
            .map_err(|e| LedgerError::Backend(format!("ledger task: {e}")))?
        })
    }
}

/// Applies the migrations this database lacks.
fn migrate(conn: &mut Connection) -> Result<(), LedgerError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(LedgerError::Schema { found: version, known });
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(m).map_err(backend)?;
        tx.pragma_update(None, "user_version", i as i64 + 1).map_err(backend)?;
    }
    tx.commit().map_err(backend)
}

fn placeholder(n: usize) -> String {
    format!("?{n}")
}

fn bind(params: Vec<Param>) -> Vec<SqlValue> {
    params
        .into_iter()
        .map(|p| match p {
            Param::Text(s) => SqlValue::Text(s),
            Param::Int(i) => SqlValue::Integer(i),
        })
        .collect()
}

fn read_unit(r: &Row<'_>) -> rusqlite::Result<Unit> {
    let status: String = r.get(6)?;
    let metadata: String = r.get(9)?;
    let opt_u64 = |v: Option<i64>| v.map(sql::to_u64);
    Ok(Unit {
        unit: UnitRef {
            pipeline: r.get(0)?,
            scope: r.get(1)?,
            key: r.get(2)?,
        },
        fingerprint: Fingerprint {
            checksum: r.get(3)?,
            size: sql::to_u64(r.get(4)?),
            mtime_ns: r.get(5)?,
        },
        // the CHECK constraint keeps other values out
        status: Status::parse(&status).unwrap_or(Status::Failed),
        attempts: u32::try_from(r.get::<_, i64>(7)?).unwrap_or(u32::MAX),
        last_error: r.get(8)?,
        metadata: serde_json::from_str(&metadata).unwrap_or(serde_json::Value::Null),
        owner: r.get(10)?,
        lease_until_ms: opt_u64(r.get(11)?),
        started_ms: opt_u64(r.get(12)?),
        finished_ms: opt_u64(r.get(13)?),
        updated_ms: sql::to_u64(r.get(14)?),
    })
}

fn select_one(conn: &Connection, u: &UnitRef) -> Result<Option<Unit>, LedgerError> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM {TABLE} WHERE pipeline = ?1 AND scope = ?2 AND key = ?3"
    ))
    .and_then(|mut st| st.query_row(params![u.pipeline, u.scope, u.key], read_unit).optional())
    .map_err(backend)
}

fn claim_all(
    conn: &mut Connection,
    requests: &[ClaimRequest],
    worker: &str,
    lease: u64,
) -> Result<Vec<Claim>, LedgerError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let now = now_ms();
    let mut claims = Vec::with_capacity(requests.len());
    for r in requests {
        let existing = select_one(&tx, &r.unit)?;
        let claim = decide(existing.as_ref(), &r.fingerprint, worker, now);
        let fp = &r.fingerprint;
        match &claim {
            Claim::Process { attempt, .. } => {
                tx.prepare_cached(&format!(
                    "INSERT INTO {TABLE} ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'in_progress', ?7, NULL, '{{}}', ?8, ?9, ?10, NULL, ?10)
                     ON CONFLICT (pipeline, scope, key) DO UPDATE SET
                       checksum = excluded.checksum, size = excluded.size, mtime_ns = excluded.mtime_ns,
                       status = 'in_progress', attempts = excluded.attempts, owner = excluded.owner,
                       lease_until_ms = excluded.lease_until_ms, started_ms = excluded.started_ms,
                       finished_ms = NULL, updated_ms = excluded.updated_ms"
                ))
                .and_then(|mut st| {
                    st.execute(params![
                        r.unit.pipeline,
                        r.unit.scope,
                        r.unit.key,
                        fp.checksum,
                        sql::to_i64(fp.size),
                        fp.mtime_ns,
                        i64::from(*attempt),
                        worker,
                        sql::to_i64(now.saturating_add(lease)),
                        sql::to_i64(now),
                    ])
                })
                .map_err(backend)?;
            }
            Claim::Skip => {
                if existing.as_ref().is_some_and(|u| !u.fingerprint.same_stat(fp)) {
                    tx.prepare_cached(&format!(
                        "UPDATE {TABLE} SET size = ?4, mtime_ns = ?5, checksum = COALESCE(?6, checksum)
                         WHERE pipeline = ?1 AND scope = ?2 AND key = ?3"
                    ))
                    .and_then(|mut st| {
                        st.execute(params![
                            r.unit.pipeline,
                            r.unit.scope,
                            r.unit.key,
                            sql::to_i64(fp.size),
                            fp.mtime_ns,
                            fp.checksum
                        ])
                    })
                    .map_err(backend)?;
                }
            }
            Claim::Busy { .. } => {}
        }
        claims.push(claim);
    }
    tx.commit().map_err(backend)?;
    Ok(claims)
}

/// Updates each unit `worker` holds with `sql` (parameters: pipeline, scope, key, worker,
/// then `extra`); returns the units it does not hold.
fn update_held(
    conn: &mut Connection,
    sql_text: &str,
    units: &[(UnitRef, Vec<SqlValue>)],
    worker: &str,
) -> Result<Vec<UnitRef>, LedgerError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let mut lost = Vec::new();
    {
        let mut st = tx.prepare_cached(sql_text).map_err(backend)?;
        for (u, extra) in units {
            let mut values: Vec<SqlValue> = vec![
                SqlValue::Text(u.pipeline.clone()),
                SqlValue::Text(u.scope.clone()),
                SqlValue::Text(u.key.clone()),
                SqlValue::Text(worker.to_owned()),
            ];
            values.extend(extra.iter().cloned());
            if st.execute(params_from_iter(values)).map_err(backend)? == 0 {
                lost.push(u.clone());
            }
        }
    }
    tx.commit().map_err(backend)?;
    Ok(lost)
}

const HELD: &str = "WHERE pipeline = ?1 AND scope = ?2 AND key = ?3 AND owner = ?4 AND status = 'in_progress'";

impl Ledger for SqliteLedger {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn claim<'a>(
        &'a self,
        requests: &'a [ClaimRequest],
        worker: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claim>, LedgerError>> {
        let requests = requests.to_vec();
        let worker = worker.to_owned();
        self.with(move |c| claim_all(c, &requests, &worker, ms(lease)))
    }

    fn renew<'a>(
        &'a self,
        units: &'a [UnitRef],
        worker: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<UnitRef>, LedgerError>> {
        let until = sql::to_i64(now_ms().saturating_add(ms(lease)));
        let units: Vec<_> = units
            .iter()
            .map(|u| (u.clone(), vec![SqlValue::Integer(until)]))
            .collect();
        let worker = worker.to_owned();
        let sql_text = format!("UPDATE {TABLE} SET lease_until_ms = ?5 {HELD}");
        self.with(move |c| update_held(c, &sql_text, &units, &worker))
    }

    fn complete<'a>(
        &'a self,
        units: &'a [(UnitRef, serde_json::Value)],
        worker: &'a str,
    ) -> BoxFuture<'a, Result<Vec<UnitRef>, LedgerError>> {
        let now = sql::to_i64(now_ms());
        let units: Vec<_> = units
            .iter()
            .map(|(u, m)| (u.clone(), vec![SqlValue::Text(m.to_string()), SqlValue::Integer(now)]))
            .collect();
        let worker = worker.to_owned();
        let sql_text = format!(
            "UPDATE {TABLE} SET status = 'completed', metadata = ?5, last_error = NULL, owner = NULL,
               lease_until_ms = NULL, finished_ms = ?6, updated_ms = ?6 {HELD}"
        );
        self.with(move |c| update_held(c, &sql_text, &units, &worker))
    }

    fn fail<'a>(
        &'a self,
        unit: &'a UnitRef,
        worker: &'a str,
        error: &'a str,
        metadata: serde_json::Value,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        let now = sql::to_i64(now_ms());
        let units = vec![(
            unit.clone(),
            vec![
                SqlValue::Text(error.to_owned()),
                SqlValue::Text(metadata.to_string()),
                SqlValue::Integer(now),
            ],
        )];
        let worker = worker.to_owned();
        let sql_text = format!(
            "UPDATE {TABLE} SET status = 'failed', last_error = ?5, metadata = ?6, owner = NULL,
               lease_until_ms = NULL, finished_ms = ?7, updated_ms = ?7 {HELD}"
        );
        let fut = self.with(move |c| update_held(c, &sql_text, &units, &worker));
        Box::pin(async move {
            match fut.await?.pop() {
                Some(lost) => Err(LedgerError::LostLease(lost.key)),
                None => Ok(()),
            }
        })
    }

    fn list<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<Vec<Unit>, LedgerError>> {
        let w = sql::where_clause(filter, None, placeholder);
        let limit = filter.limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
        let text = format!(
            "SELECT {COLUMNS} FROM {TABLE}{} ORDER BY pipeline, scope, key{limit}",
            w.clause
        );
        let values = bind(w.params);
        self.with(move |c| {
            let mut st = c.prepare_cached(&text).map_err(backend)?;
            let rows = st.query_map(params_from_iter(values), read_unit).map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
    }

    fn retry<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<u64, LedgerError>> {
        let w = sql::target_clause(TABLE, filter, Some(Status::Failed), placeholder);
        let now = sql::to_i64(now_ms());
        let text = format!(
            "UPDATE {TABLE} SET status = 'pending', owner = NULL, lease_until_ms = NULL, updated_ms = {now}{}",
            w.clause
        );
        let values = bind(w.params);
        self.with(move |c| Ok(c.execute(&text, params_from_iter(values)).map_err(backend)? as u64))
    }

    fn clear<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<u64, LedgerError>> {
        let w = sql::target_clause(TABLE, filter, None, placeholder);
        let text = format!("DELETE FROM {TABLE}{}", w.clause);
        let values = bind(w.params);
        self.with(move |c| Ok(c.execute(&text, params_from_iter(values)).map_err(backend)? as u64))
    }

    fn stats<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<Stats, LedgerError>> {
        let w = sql::where_clause(filter, None, placeholder);
        let text = format!(
            "SELECT status, COUNT(*), COALESCE(SUM(attempts), 0) FROM {TABLE}{} GROUP BY status",
            w.clause
        );
        let values = bind(w.params);
        self.with(move |c| {
            let mut st = c.prepare_cached(&text).map_err(backend)?;
            let rows = st
                .query_map(params_from_iter(values), |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                })
                .map_err(backend)?;
            let mut stats = Stats::default();
            for row in rows {
                let (status, n, attempts) = row.map_err(backend)?;
                let n = sql::to_u64(n);
                stats.attempts += sql::to_u64(attempts);
                match Status::parse(&status) {
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
