//! The embedded job queue: one SQLite database file (WAL mode, full sync).
//!
//! Every operation is one transaction; those that take or move jobs take the write lock up
//! front (`BEGIN IMMEDIATE`), so two workers (threads or processes) never take the same job.
//! Several named queues can share a file. The schema version lives in `keel_queue_schema`
//! (not `PRAGMA user_version`, so the file can also hold a ledger).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::ledger::{BoxFuture, ms};
use keel::queue::{Disposition, Enqueued, Job, JobError, JobId, JobState, NewJob, Queue, QueueError, QueueStats};
use keel::util::now_ms;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE keel_jobs (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        queue        TEXT NOT NULL,
        kind         TEXT NOT NULL,
        payload      TEXT NOT NULL,
        priority     INTEGER NOT NULL,
        state        TEXT NOT NULL CHECK (state IN ('ready', 'scheduled', 'active', 'dead')),
        run_at       INTEGER NOT NULL,
        ready_order  INTEGER NOT NULL,
        ready_at     INTEGER NOT NULL,
        enqueued     INTEGER NOT NULL,
        attempts     INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL,
        lease_until  INTEGER,
        leases       INTEGER NOT NULL DEFAULT 0,
        worker       TEXT,
        errors       TEXT NOT NULL,
        idem_key     TEXT,
        dead_at      INTEGER
    );
    CREATE INDEX keel_jobs_ready ON keel_jobs (queue, state, priority DESC, ready_order);
    CREATE INDEX keel_jobs_run_at ON keel_jobs (queue, state, run_at);
    CREATE INDEX keel_jobs_lease ON keel_jobs (queue, state, lease_until);
    CREATE TABLE keel_job_keys (
        queue   TEXT NOT NULL,
        key     TEXT NOT NULL,
        id      INTEGER NOT NULL,
        expires INTEGER NOT NULL,
        PRIMARY KEY (queue, key)
    ) WITHOUT ROWID;
    CREATE TABLE keel_queue_seq (queue TEXT PRIMARY KEY, next INTEGER NOT NULL) WITHOUT ROWID;",
    // the attempts a job was enqueued with, granted again by each retry from the dead set
    // (NULL for jobs enqueued before: their max_attempts is still that budget)
    "ALTER TABLE keel_jobs ADD COLUMN budget INTEGER;",
];

#[doc(hidden)]
/// The columns [`job_of`] reads, in order.
pub const COLUMNS: &str = "id, kind, payload, priority, state, attempts, max_attempts, enqueued, run_at, lease_until, worker, errors, idem_key, leases";

/// A queue in a SQLite file.
#[derive(Clone)]
pub struct SqliteQueue {
    path: PathBuf,
    name: String,
    retention: Duration,
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteQueue")
            .field("path", &self.path)
            .field("name", &self.name)
            .finish()
    }
}

fn backend(e: rusqlite::Error) -> QueueError {
    QueueError::Backend(e.to_string())
}

impl SqliteQueue {
    /// Opens (creating if needed) queue `name` in the file at `path`; idempotency keys are
    /// kept for `retention`.
    pub fn open(path: impl AsRef<Path>, name: &str, retention: Duration) -> Result<Self, QueueError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| QueueError::Config(format!("creating {}: {e}", dir.display())))?;
        }
        let mut conn = Connection::open(&path)
            .map_err(|e| QueueError::Config(format!("opening queue {}: {e}", path.display())))?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(backend)?;
        migrate(&mut conn)?;
        Ok(SqliteQueue {
            path,
            name: name.to_owned(),
            retention,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` in a transaction in the blocking pool.
    fn with<T, F>(&self, write: bool, f: F) -> BoxFuture<'static, Result<T, QueueError>>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &str) -> Result<T, QueueError> + Send + 'static,
    {
        let conn = self.conn.clone();
        let name = self.name.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut c = conn
                    .lock()
                    .map_err(|_| QueueError::Backend("the queue connection was poisoned by a panic".into()))?;
                let behavior = if write {
                    TransactionBehavior::Immediate
                } else {
                    TransactionBehavior::Deferred
                };
                let tx = c.transaction_with_behavior(behavior).map_err(backend)?;
                let out = f(&tx, &name)?;
                tx.commit().map_err(backend)?;
                Ok(out)
            })
            .await
            .map_err(|e| QueueError::Backend(format!("queue task: {e}")))?
        })
    }
}

fn migrate(conn: &mut Connection) -> Result<(), QueueError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS keel_queue_schema (version INTEGER NOT NULL)")
        .map_err(backend)?;
    let version: i64 = tx
        .query_row("SELECT version FROM keel_queue_schema", [], |r| r.get(0))
        .optional()
        .map_err(backend)?
        .unwrap_or(0);
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(QueueError::Config(format!(
            "the queue schema is version {version}, newer than this keel knows ({known}): upgrade keel"
        )));
    }
    for m in MIGRATIONS.iter().skip(version as usize) {
        tx.execute_batch(m).map_err(backend)?;
    }
    tx.execute("DELETE FROM keel_queue_schema", []).map_err(backend)?;
    tx.execute("INSERT INTO keel_queue_schema (version) VALUES (?1)", [known])
        .map_err(backend)?;
    tx.commit().map_err(backend)
}

/// The next `n` readiness orders of `queue`.
fn next_orders(tx: &Transaction<'_>, queue: &str, n: u64) -> Result<u64, QueueError> {
    let first: i64 = tx
        .query_row(
            "INSERT INTO keel_queue_seq (queue, next) VALUES (?1, 1 + ?2)
             ON CONFLICT (queue) DO UPDATE SET next = next + ?2
             RETURNING next - ?2",
            params![queue, n as i64],
            |r| r.get(0),
        )
        .map_err(backend)?;
    Ok(first as u64)
}

/// Decodes a job from a row of `keel_jobs` selected as [`COLUMNS`] (in that order). Public only for the fuzz target
/// `queue_row`.
#[doc(hidden)]
pub fn job_of(r: &Row<'_>) -> rusqlite::Result<Job> {
    let state: String = r.get(4)?;
    let payload: String = r.get(2)?;
    let errors: String = r.get(11)?;
    Ok(Job {
        id: r.get::<_, i64>(0)?.to_string(),
        kind: r.get(1)?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        priority: r.get(3)?,
        state: JobState::parse(&state).unwrap_or(JobState::Dead),
        attempts: r.get(5)?,
        max_attempts: r.get(6)?,
        enqueued_ms: r.get::<_, i64>(7)? as u64,
        run_at_ms: r.get::<_, i64>(8)? as u64,
        lease_until_ms: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
        worker: r.get(10)?,
        errors: serde_json::from_str(&errors).unwrap_or_default(),
        idempotency_key: r.get(12)?,
        lease: r.get::<_, i64>(13)? as u64,
    })
}

fn id_of(id: &str) -> Result<i64, QueueError> {
    id.parse()
        .map_err(|_| QueueError::Invalid(format!("`{id}` is not a job id")))
}

/// Puts back jobs whose lease expired and makes due scheduled jobs ready.
fn housekeeping(tx: &Transaction<'_>, queue: &str, now: u64) -> Result<(), QueueError> {
    let expired: Vec<(i64, u32, u32, String)> = {
        let mut st = tx
            .prepare_cached(
                "SELECT id, attempts, max_attempts, errors FROM keel_jobs
                 WHERE queue = ?1 AND state = 'active' AND lease_until < ?2 ORDER BY lease_until, id",
            )
            .map_err(backend)?;
        st.query_map(params![queue, now as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .map_err(backend)?
        .collect::<Result<_, _>>()
        .map_err(backend)?
    };
    for (id, attempts, max, errors) in expired {
        let mut errors: Vec<JobError> = serde_json::from_str(&errors).unwrap_or_default();
        errors.push(lease_expired(attempts, now));
        let errors = serde_json::to_string(&errors).unwrap_or_default();
        if attempts >= max {
            tx.execute(
                "UPDATE keel_jobs SET state = 'dead', dead_at = ?2, worker = NULL, lease_until = NULL, errors = ?3
                 WHERE id = ?1",
                params![id, now as i64, errors],
            )
            .map_err(backend)?;
        } else {
            let order = next_orders(tx, queue, 1)?;
            tx.execute(
                "UPDATE keel_jobs SET state = 'ready', ready_order = ?2, ready_at = ?3, run_at = ?3,
                 worker = NULL, lease_until = NULL, errors = ?4 WHERE id = ?1",
                params![id, order as i64, now as i64, errors],
            )
            .map_err(backend)?;
        }
    }
    let due: Vec<i64> = {
        let mut st = tx
            .prepare_cached(
                "SELECT id FROM keel_jobs WHERE queue = ?1 AND state = 'scheduled' AND run_at <= ?2
                 ORDER BY run_at, id",
            )
            .map_err(backend)?;
        st.query_map(params![queue, now as i64], |r| r.get(0))
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?
    };
    if !due.is_empty() {
        let first = next_orders(tx, queue, due.len() as u64)?;
        let mut st = tx
            .prepare_cached("UPDATE keel_jobs SET state = 'ready', ready_order = ?2, ready_at = run_at WHERE id = ?1")
            .map_err(backend)?;
        for (i, id) in due.into_iter().enumerate() {
            st.execute(params![id, (first + i as u64) as i64]).map_err(backend)?;
        }
    }
    Ok(())
}

/// The error recorded when a lease expires.
pub(crate) fn lease_expired(attempt: u32, now: u64) -> JobError {
    JobError {
        attempt,
        class: keel::Class::Transient,
        reason: "lease_expired".into(),
        message: "the worker's lease expired (it died or stalled)".into(),
        at_ms: now,
    }
}

/// The row of active job `id` held by `worker` under `lease`; `LostLease` if it is not.
fn held(tx: &Transaction<'_>, queue: &str, id: &str, worker: &str, lease: u64) -> Result<i64, QueueError> {
    let n = id_of(id)?;
    let found: Option<i64> = tx
        .query_row(
            "SELECT id FROM keel_jobs WHERE id = ?1 AND queue = ?2 AND state = 'active' AND worker = ?3 AND leases = ?4",
            params![n, queue, worker, lease as i64],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
    found.ok_or_else(|| QueueError::LostLease(id.to_owned()))
}

impl Queue for SqliteQueue {
    fn describe(&self) -> String {
        format!("sqlite:{} ({})", self.path.display(), self.name)
    }

    fn enqueue_many<'a>(&'a self, jobs: &'a [NewJob]) -> BoxFuture<'a, Result<Vec<Enqueued>, QueueError>> {
        let jobs = jobs.to_vec();
        let retention = ms(self.retention);
        self.with(true, move |tx, queue| {
            for j in &jobs {
                j.check()?;
            }
            let now = now_ms();
            tx.execute(
                "DELETE FROM keel_job_keys WHERE queue = ?1 AND expires <= ?2",
                params![queue, now as i64],
            )
            .map_err(backend)?;
            let mut out = Vec::with_capacity(jobs.len());
            let first = next_orders(tx, queue, jobs.len() as u64)?;
            for (i, j) in jobs.iter().enumerate() {
                if let Some(k) = &j.idempotency_key {
                    let existing: Option<i64> = tx
                        .query_row(
                            "SELECT id FROM keel_job_keys WHERE queue = ?1 AND key = ?2",
                            params![queue, k],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(backend)?;
                    if let Some(id) = existing {
                        out.push(Enqueued {
                            id: id.to_string(),
                            duplicate: true,
                        });
                        continue;
                    }
                }
                let run_at = j.run_at_ms.unwrap_or(now).clamp(now, i64::MAX as u64);
                let state = if run_at <= now { "ready" } else { "scheduled" };
                let id: i64 = tx
                    .prepare_cached(
                        "INSERT INTO keel_jobs (queue, kind, payload, priority, state, run_at, ready_order, ready_at,
                         enqueued, attempts, max_attempts, budget, errors, idem_key)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6, ?8, 0, ?9, ?9, '[]', ?10) RETURNING id",
                    )
                    .map_err(backend)?
                    .query_row(
                        params![
                            queue,
                            j.kind,
                            j.payload.to_string(),
                            j.priority,
                            state,
                            run_at as i64,
                            (first + i as u64) as i64,
                            now as i64,
                            j.max_attempts,
                            j.idempotency_key
                        ],
                        |r| r.get(0),
                    )
                    .map_err(backend)?;
                if let Some(k) = &j.idempotency_key {
                    tx.execute(
                        "INSERT INTO keel_job_keys (queue, key, id, expires) VALUES (?1, ?2, ?3, ?4)",
                        params![queue, k, id, now.saturating_add(retention).min(i64::MAX as u64) as i64],
                    )
                    .map_err(backend)?;
                }
                out.push(Enqueued {
                    id: id.to_string(),
                    duplicate: false,
                });
            }
            Ok(out)
        })
    }

    fn take<'a>(&'a self, worker: &'a str, lease: Duration, max: usize) -> BoxFuture<'a, Result<Vec<Job>, QueueError>> {
        let worker = worker.to_owned();
        let lease = ms(lease);
        self.with(true, move |tx, queue| {
            let now = now_ms();
            housekeeping(tx, queue, now)?;
            if max == 0 {
                return Ok(Vec::new());
            }
            let mut jobs: Vec<Job> = {
                let mut st = tx
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM keel_jobs WHERE queue = ?1 AND state = 'ready'
                         ORDER BY priority DESC, ready_order LIMIT ?2"
                    ))
                    .map_err(backend)?;
                st.query_map(params![queue, max as i64], job_of)
                    .map_err(backend)?
                    .collect::<Result<_, _>>()
                    .map_err(backend)?
            };
            let until = now + lease;
            let mut st = tx
                .prepare_cached(
                    "UPDATE keel_jobs SET state = 'active', attempts = attempts + 1, leases = leases + 1,
                     lease_until = ?2, worker = ?3 WHERE id = ?1",
                )
                .map_err(backend)?;
            for j in &mut jobs {
                st.execute(params![id_of(&j.id)?, until as i64, worker])
                    .map_err(backend)?;
                j.state = JobState::Active;
                j.attempts += 1;
                j.lease += 1;
                j.lease_until_ms = Some(until);
                j.worker = Some(worker.clone());
            }
            Ok(jobs)
        })
    }

    fn extend<'a>(
        &'a self,
        id: &'a str,
        worker: &'a str,
        lease: u64,
        duration: Duration,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        let (id, worker, duration) = (id.to_owned(), worker.to_owned(), ms(duration));
        self.with(true, move |tx, queue| {
            let n = held(tx, queue, &id, &worker, lease)?;
            tx.execute(
                "UPDATE keel_jobs SET lease_until = ?2 WHERE id = ?1",
                params![n, (now_ms() + duration) as i64],
            )
            .map_err(backend)?;
            Ok(())
        })
    }

    fn ack<'a>(&'a self, id: &'a str, worker: &'a str, lease: u64) -> BoxFuture<'a, Result<(), QueueError>> {
        let (id, worker) = (id.to_owned(), worker.to_owned());
        self.with(true, move |tx, queue| {
            let n = held(tx, queue, &id, &worker, lease)?;
            tx.execute("DELETE FROM keel_jobs WHERE id = ?1", [n])
                .map_err(backend)?;
            Ok(())
        })
    }

    fn fail<'a>(
        &'a self,
        id: &'a str,
        worker: &'a str,
        lease: u64,
        error: &'a JobError,
        disposition: Disposition,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        let (id, worker, error) = (id.to_owned(), worker.to_owned(), error.clone());
        self.with(true, move |tx, queue| {
            let n = held(tx, queue, &id, &worker, lease)?;
            let errors: String = tx
                .query_row("SELECT errors FROM keel_jobs WHERE id = ?1", [n], |r| r.get(0))
                .map_err(backend)?;
            let mut errors: Vec<JobError> = serde_json::from_str(&errors).unwrap_or_default();
            errors.push(error);
            let errors = serde_json::to_string(&errors).unwrap_or_default();
            match disposition {
                Disposition::Retry { at_ms } => tx.execute(
                    "UPDATE keel_jobs SET state = 'scheduled', run_at = ?2, worker = NULL, lease_until = NULL,
                     errors = ?3 WHERE id = ?1",
                    params![n, at_ms.min(i64::MAX as u64) as i64, errors],
                ),
                Disposition::Dead => tx.execute(
                    "UPDATE keel_jobs SET state = 'dead', dead_at = ?2, worker = NULL, lease_until = NULL,
                     errors = ?3 WHERE id = ?1",
                    params![n, now_ms() as i64, errors],
                ),
            }
            .map_err(backend)?;
            Ok(())
        })
    }

    fn release<'a>(&'a self, id: &'a str, worker: &'a str, lease: u64) -> BoxFuture<'a, Result<(), QueueError>> {
        let (id, worker) = (id.to_owned(), worker.to_owned());
        self.with(true, move |tx, queue| {
            let n = held(tx, queue, &id, &worker, lease)?;
            let order = next_orders(tx, queue, 1)?;
            let now = now_ms() as i64;
            tx.execute(
                "UPDATE keel_jobs SET state = 'ready', attempts = attempts - 1, worker = NULL, lease_until = NULL,
                 ready_order = ?2, ready_at = ?3, run_at = ?3 WHERE id = ?1",
                params![n, order as i64, now],
            )
            .map_err(backend)?;
            Ok(())
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Job>, QueueError>> {
        // (not a number: not an id this backend gives)
        let Ok(n) = id_of(id) else {
            return Box::pin(async { Ok(None) });
        };
        self.with(false, move |tx, queue| {
            tx.query_row(
                &format!("SELECT {COLUMNS} FROM keel_jobs WHERE id = ?1 AND queue = ?2"),
                params![n, queue],
                job_of,
            )
            .optional()
            .map_err(backend)
        })
    }

    fn list<'a>(&'a self, state: Option<JobState>, limit: usize) -> BoxFuture<'a, Result<Vec<Job>, QueueError>> {
        self.with(false, move |tx, queue| {
            let (cond, order) = match state {
                None => ("1 = 1", "id"),
                Some(JobState::Ready) => ("state = 'ready'", "priority DESC, ready_order"),
                Some(JobState::Scheduled) => ("state = 'scheduled'", "run_at, id"),
                Some(JobState::Active) => ("state = 'active'", "lease_until, id"),
                Some(JobState::Dead) => ("state = 'dead'", "dead_at, id"),
            };
            let mut st = tx
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM keel_jobs WHERE queue = ?1 AND {cond} ORDER BY {order} LIMIT ?2"
                ))
                .map_err(backend)?;
            st.query_map(params![queue, limit as i64], job_of)
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, QueueError>> {
        self.with(false, move |tx, queue| {
            let now = now_ms() as i64;
            let mut s = QueueStats::default();
            let mut st = tx
                .prepare(
                    "SELECT CASE WHEN state = 'scheduled' AND run_at <= ?2 THEN 'ready' ELSE state END AS st,
                            priority, COUNT(*), MIN(CASE WHEN state = 'ready' THEN ready_at ELSE run_at END)
                     FROM keel_jobs WHERE queue = ?1 GROUP BY st, priority",
                )
                .map_err(backend)?;
            let rows = st
                .query_map(params![queue, now], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i32>(1)?,
                        r.get::<_, i64>(2)? as u64,
                        r.get::<_, Option<i64>>(3)?,
                    ))
                })
                .map_err(backend)?;
            for row in rows {
                let (state, priority, n, since) = row.map_err(backend)?;
                match state.as_str() {
                    "ready" => {
                        s.ready += n;
                        *s.ready_by_priority.entry(priority).or_default() += n;
                        let since = since.map(|v| v as u64);
                        s.oldest_ready_since_ms = match (s.oldest_ready_since_ms, since) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                    }
                    "scheduled" => s.scheduled += n,
                    "active" => s.active += n,
                    _ => s.dead += n,
                }
            }
            s.expired_leases = tx
                .query_row(
                    "SELECT COUNT(*) FROM keel_jobs WHERE queue = ?1 AND state = 'active' AND lease_until < ?2",
                    params![queue, now],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(backend)? as u64;
            Ok(s)
        })
    }

    fn retry_dead<'a>(&'a self, ids: Option<&'a [JobId]>) -> BoxFuture<'a, Result<u64, QueueError>> {
        let ids: Option<Vec<i64>> = match ids.map(|ids| ids.iter().map(|i| id_of(i)).collect::<Result<Vec<_>, _>>()) {
            None => None,
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => return Box::pin(async move { Err(e) }),
        };
        self.with(true, move |tx, queue| {
            let dead: Vec<i64> = {
                let mut st = tx
                    .prepare("SELECT id FROM keel_jobs WHERE queue = ?1 AND state = 'dead' ORDER BY dead_at, id")
                    .map_err(backend)?;
                st.query_map([queue], |r| r.get(0))
                    .map_err(backend)?
                    .collect::<Result<_, _>>()
                    .map_err(backend)?
            };
            let chosen: Vec<i64> = dead
                .into_iter()
                .filter(|d| ids.as_ref().is_none_or(|ids| ids.contains(d)))
                .collect();
            if chosen.is_empty() {
                return Ok(0);
            }
            let first = next_orders(tx, queue, chosen.len() as u64)?;
            let now = now_ms() as i64;
            for (i, id) in chosen.iter().enumerate() {
                tx.execute(
                    "UPDATE keel_jobs SET state = 'ready', max_attempts = attempts + COALESCE(budget, max_attempts),
                     dead_at = NULL, ready_order = ?2, ready_at = ?3, run_at = ?3 WHERE id = ?1",
                    params![id, (first + i as u64) as i64, now],
                )
                .map_err(backend)?;
            }
            Ok(chosen.len() as u64)
        })
    }

    fn purge(&self, state: JobState) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.with(true, move |tx, queue| {
            let n = tx
                .execute(
                    "DELETE FROM keel_jobs WHERE queue = ?1 AND state = ?2",
                    params![queue, state.as_str()],
                )
                .map_err(backend)?;
            Ok(n as u64)
        })
    }
}
