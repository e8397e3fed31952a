//! The PostgreSQL sink: epochs staged locally, each committed in one transaction with the
//! sink's progress row (see the module documentation of [`super`]).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::SinkExt;
use keel::checkpoint::CheckpointId;
use keel::checkpoint::recovery::SinkRecovery;
use keel::sink::{RecordCheck, SinkError};
use keel::{Class, Failure};
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, NoTls};

use super::columns::{self, Column, Kind, Mapped};
use super::config::{PostgresSinkConfig, WriteMode};
use super::errors::classify;
use super::{quote_ident, quote_table};
use crate::stage::{Publish, Staged, StagedSink};

/// The PostgreSQL sink: a [`StagedSink`] committing through a [`PostgresPublisher`].
pub type PostgresSink = StagedSink<PostgresPublisher>;

impl PostgresSink {
    /// A sink named `name` writing rows into `config.table`.
    pub fn with_config(name: impl Into<String>, config: PostgresSinkConfig) -> Self {
        let dir = config.staging.clone();
        StagedSink::new(name, dir, PostgresPublisher::new(config))
    }

    /// The dead-letter sink: one row per dead letter in `config.table`, created if missing
    /// (identity, pipeline, reason, class, stage, message, field, source partition and
    /// position, epoch, attempts, failure times, the original text or base64, the whole
    /// envelope as `jsonb`), keyed by identity.
    pub fn dead_letters(mut config: PostgresSinkConfig) -> Self {
        config.dead_letters = true;
        config.columns = crate::envelope::ROW_COLUMNS
            .iter()
            .map(|c| ((*c).to_owned(), (*c).to_owned()))
            .collect();
        config.mode = WriteMode::Upsert {
            key: vec!["identity".into()],
        };
        Self::with_config("dead_letters", config)
    }
}

/// The dead-letter table (`%t`: its quoted name).
const DEAD_LETTER_TABLE: &str = "CREATE TABLE IF NOT EXISTS %t (
    identity TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    reason TEXT NOT NULL,
    class TEXT NOT NULL,
    stage TEXT NOT NULL,
    message TEXT NOT NULL,
    field TEXT,
    partition TEXT NOT NULL,
    position JSONB,
    epoch BIGINT NOT NULL,
    attempts INTEGER NOT NULL,
    first_failed_ms BIGINT NOT NULL,
    last_failed_ms BIGINT NOT NULL,
    raw TEXT,
    raw_b64 TEXT,
    envelope JSONB NOT NULL,
    written_at TIMESTAMPTZ NOT NULL DEFAULT now()
)";

/// Commits epochs into a table.
pub struct PostgresPublisher {
    config: PostgresSinkConfig,
    started: OnceLock<Started>,
    /// The connection; `None` after it broke (the next use connects again).
    client: Arc<Mutex<Option<Arc<Client>>>>,
}

struct Started {
    writer: String,
    columns: Arc<Vec<Mapped>>,
    /// How an epoch's rows go in.
    load: Load,
    /// The progress table, quoted.
    progress: String,
    /// The upsert key's columns, if upserting.
    key: Vec<String>,
}

/// How rows are loaded inside an epoch's transaction.
enum Load {
    /// `COPY t (cols) FROM STDIN (FORMAT csv)`: inserts whose every column has a type the
    /// sink writes as text itself (the server's own input functions convert it, as for a
    /// COPY of a CSV file). The sink runs 2.4 times as fast as with the statement below
    /// (BENCHMARKS.md).
    Copy(String),
    /// `INSERT INTO t (cols) SELECT cols FROM jsonb_populate_recordset(NULL::t, $1)
    /// [ON CONFLICT …]`, 5000 rows a statement: upserts, and columns of other types
    /// (arrays, ranges, enums…), which the server maps from JSON itself.
    Statement(String),
}

/// The rows of an epoch, ready for its [`Load`].
enum Rows {
    /// One CSV body.
    Csv(Vec<u8>),
    /// JSON arrays of rows, one per statement.
    Json(Vec<String>),
}

/// The token of an epoch's transaction, fixed at prepare.
#[derive(Debug, Serialize, Deserialize)]
struct Mark {
    token: String,
}

fn rejected(f: Failure) -> SinkError {
    SinkError::Rejected(f)
}

impl PostgresPublisher {
    /// A publisher for `config`; connects at [`Publish::start`].
    pub fn new(config: PostgresSinkConfig) -> Self {
        PostgresPublisher {
            config,
            started: OnceLock::new(),
            client: Arc::default(),
        }
    }

    fn shown(&self) -> String {
        keel::util::redact_url(&self.config.url)
    }

    /// The connection, opened when there is none.
    fn client(&self) -> Result<Arc<Client>, Failure> {
        if let Some(c) = self
            .client
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .filter(|c| !c.is_closed())
        {
            return Ok(c);
        }
        let (url, shown) = (self.config.url.clone(), self.shown());
        let client = crate::io::block_on(async move {
            let (client, connection) =
                tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(&url, NoTls))
                    .await
                    .map_err(|_| {
                        Failure::transient(
                            keel::failure::reason::TIMEOUT,
                            format!("connecting to {shown}: no answer in 10 s"),
                        )
                    })?
                    .map_err(|e| classify(&e, &format!("connecting to {shown}")))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "postgres sink: connection closed");
                }
            });
            Ok::<_, Failure>(Arc::new(client))
        })
        .map_err(|e| Failure::fatal("runtime", e))??;
        if let Ok(mut c) = self.client.lock() {
            *c = Some(client.clone());
        }
        Ok(client)
    }

    /// Runs `f` again while it fails transiently, until `deadline`.
    fn patiently<T>(&self, doing: &str, deadline: Instant, f: impl Fn() -> Result<T, Failure>) -> Result<T, SinkError> {
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(e) if e.class == Class::Transient && Instant::now() < deadline => {
                    tracing::warn!(error = %e, "postgres sink: {doing} failed; retrying");
                    if let Ok(mut c) = self.client.lock() {
                        *c = None;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(rejected(e)),
            }
        }
    }

    /// Reads the table's columns and builds the statements; creates the progress table
    /// (and a dead-letter table) if missing.
    fn prepare_table(&self, writer: &str) -> Result<Started, Failure> {
        let client = self.client()?;
        let table = quote_table(&self.config.table);
        let schema = match self.config.table.rsplit_once('.') {
            Some((s, _)) => format!("{}.", quote_table(s)),
            None => String::new(),
        };
        let progress = format!("{schema}keel_sink_progress");
        let dead_letters = self.config.dead_letters;
        let name = self.config.table.clone();
        let (t, p) = (table.clone(), progress.clone());
        let rows = crate::io::block_on(async move {
            let doing = format!("reading the columns of table {name}");
            let ddl = format!(
                "CREATE TABLE IF NOT EXISTS {p} (writer TEXT PRIMARY KEY, token TEXT NOT NULL, epoch BIGINT NOT NULL, committed_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            );
            client.batch_execute(&ddl).await.map_err(|e| classify(&e, &format!("creating {p}")))?;
            if dead_letters {
                client
                    .batch_execute(&DEAD_LETTER_TABLE.replace("%t", &t))
                    .await
                    .map_err(|e| classify(&e, &format!("creating {t}")))?;
            }
            let oid: u32 = client
                .query_one("SELECT to_regclass($1)::oid", &[&t])
                .await
                .map_err(|e| classify(&e, &doing))?
                .try_get::<_, Option<u32>>(0)
                .map_err(|e| classify(&e, &doing))?
                .ok_or_else(|| Failure::fatal("unknown_table", format!("table {name} does not exist (keel creates no tables but the dead-letter one)")))?;
            let columns = client
                .query(
                    "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull, atthasdef
                     FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                    &[&oid],
                )
                .await
                .map_err(|e| classify(&e, &doing))?;
            let unique = client
                .query(
                    "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                     WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL GROUP BY i.indexrelid",
                    &[&oid],
                )
                .await
                .map_err(|e| classify(&e, &doing))?;
            let columns: Vec<Column> = columns
                .iter()
                .map(|r| {
                    let ty: String = r.get(1);
                    Column {
                        name: r.get(0),
                        kind: Kind::of(&ty),
                        ty,
                        not_null: r.get(2),
                        has_default: r.get(3),
                    }
                })
                .collect();
            let unique: Vec<Vec<String>> = unique.iter().map(|r| r.get(0)).collect();
            Ok::<_, Failure>((columns, unique))
        })
        .map_err(|e| Failure::fatal("runtime", e))??;
        let (columns, unique) = rows;
        self.plan(writer, &table, progress, columns, &unique)
    }

    /// Checks the mapping against the table and builds the insert statement.
    fn plan(
        &self,
        writer: &str,
        table: &str,
        progress: String,
        columns: Vec<Column>,
        unique: &[Vec<String>],
    ) -> Result<Started, Failure> {
        let config_error =
            |m: String| Failure::fatal("config", format!("postgres sink, table {}: {m}", self.config.table));
        let mapping: Vec<(String, String)> = if self.config.columns.is_empty() {
            columns.iter().map(|c| (c.name.clone(), c.name.clone())).collect()
        } else {
            self.config.columns.clone()
        };
        let mut mapped = Vec::new();
        for (column, field) in &mapping {
            let Some(c) = columns.iter().find(|c| &c.name == column) else {
                let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
                return Err(config_error(format!(
                    "no column `{column}` (the table has {})",
                    names.join(", ")
                )));
            };
            // a column left to its default is not written when no record field is mapped to it
            if self.config.columns.is_empty() && c.has_default && !c.not_null {
                continue;
            }
            mapped.push(Mapped {
                column: c.clone(),
                field: field.clone(),
            });
        }
        if let Some(c) = columns
            .iter()
            .find(|c| c.not_null && !c.has_default && !mapped.iter().any(|m| m.column.name == c.name))
        {
            return Err(config_error(format!(
                "column `{}` is NOT NULL without a default: map a field to it",
                c.name
            )));
        }
        let key = match &self.config.mode {
            WriteMode::Insert => Vec::new(),
            WriteMode::Upsert { key } => {
                let mut sorted = key.clone();
                sorted.sort();
                if !unique.contains(&sorted) {
                    return Err(config_error(format!(
                        "the upsert key ({}) is not covered by a unique index of its own: create one, e.g. CREATE UNIQUE INDEX ON {table} ({})",
                        key.join(", "),
                        key.join(", ")
                    )));
                }
                if let Some(k) = key.iter().find(|k| !mapped.iter().any(|m| &m.column.name == *k)) {
                    return Err(config_error(format!("the upsert key column `{k}` takes no field")));
                }
                key.clone()
            }
        };
        let cols: Vec<String> = mapped.iter().map(|m| quote_ident(&m.column.name)).collect();
        let list = cols.join(", ");
        let conflict = if key.is_empty() {
            String::new()
        } else {
            let updates: Vec<String> = mapped
                .iter()
                .filter(|m| !key.contains(&m.column.name))
                .map(|m| format!("{0} = EXCLUDED.{0}", quote_ident(&m.column.name)))
                .collect();
            let target = key.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ");
            if updates.is_empty() {
                format!(" ON CONFLICT ({target}) DO NOTHING")
            } else {
                format!(" ON CONFLICT ({target}) DO UPDATE SET {}", updates.join(", "))
            }
        };
        let copy = key.is_empty() && mapped.iter().all(|m| m.column.kind != Kind::Other);
        let load = if copy {
            Load::Copy(format!("COPY {table} ({list}) FROM STDIN (FORMAT csv)"))
        } else {
            Load::Statement(format!(
                "INSERT INTO {table} ({list}) SELECT {list} FROM jsonb_populate_recordset(NULL::{table}, $1::text::jsonb){conflict}"
            ))
        };
        Ok(Started {
            writer: writer.to_owned(),
            load,
            columns: Arc::new(mapped),
            progress,
            key,
        })
    }

    /// The JSON object a staged record stands for: the record itself, or for a dead-letter
    /// table the row of its envelope.
    fn row_value<'a>(&self, staged: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        if self.config.dead_letters {
            std::borrow::Cow::Owned(crate::envelope::row_of(staged, false))
        } else {
            std::borrow::Cow::Borrowed(staged)
        }
    }

    /// The rows of `records`: one CSV body for a COPY, or JSON arrays of at most
    /// `rows_per_statement` objects. Upserts keep the last row of each key (a statement may
    /// not touch a row twice).
    fn rows(&self, s: &Started, epoch: CheckpointId, records: &[Staged<'_>]) -> Result<Rows, SinkError> {
        if matches!(s.load, Load::Copy(_)) {
            let mut csv = Vec::with_capacity(records.iter().map(|r| r.value.len() + 8).sum());
            for (i, r) in records.iter().enumerate() {
                columns::csv_row(&s.columns, &self.row_value(r.value), &mut csv)
                    .map_err(|e| SinkError::Fatal(format!("record {i} of epoch {epoch}: {e}")))?;
            }
            return Ok(Rows::Csv(csv));
        }
        let mut rows = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let row = columns::row(&s.columns, &self.row_value(r.value))
                .map_err(|e| SinkError::Fatal(format!("record {i} of epoch {epoch}: {e}")))?;
            rows.push(row);
        }
        if !s.key.is_empty() {
            let mut last = std::collections::HashMap::new();
            for (i, row) in rows.iter().enumerate() {
                let k: Vec<String> = s
                    .key
                    .iter()
                    .map(|k| row.get(k).map(|v| v.to_string()).unwrap_or_default())
                    .collect();
                last.insert(k, i);
            }
            let keep: std::collections::HashSet<usize> = last.into_values().collect();
            rows = rows
                .into_iter()
                .enumerate()
                .filter(|(i, _)| keep.contains(i))
                .map(|(_, r)| r)
                .collect();
        }
        Ok(Rows::Json(
            rows.chunks(self.config.rows_per_statement.max(1))
                .map(|c| {
                    serde_json::Value::Array(c.iter().cloned().map(serde_json::Value::Object).collect()).to_string()
                })
                .collect(),
        ))
    }

    /// One transaction: nothing if the progress row already has `token`, else the rows and
    /// the progress row.
    fn commit_once(&self, s: &Started, epoch: CheckpointId, token: &str, rows: &Arc<Rows>) -> Result<bool, Failure> {
        let client = self.client()?;
        let load = match &s.load {
            Load::Copy(sql) | Load::Statement(sql) => sql.clone(),
        };
        let (progress, writer, token, rows) = (s.progress.clone(), s.writer.clone(), token.to_owned(), rows.clone());
        let table = self.config.table.clone();
        crate::io::block_on(async move {
            let doing = format!("committing epoch {epoch} into table {table}");
            let fail = |e: tokio_postgres::Error| classify(&e, &doing);
            client.batch_execute("BEGIN").await.map_err(fail)?;
            let done = async {
                let current = client
                    .query_opt(&format!("SELECT token FROM {progress} WHERE writer = $1 FOR UPDATE"), &[&writer])
                    .await
                    .map_err(fail)?;
                if current.is_some_and(|r| r.get::<_, String>(0) == token) {
                    return Ok(false);
                }
                let statement = client.prepare(&load).await.map_err(fail)?;
                match &*rows {
                    Rows::Csv(csv) => {
                        let sink = client.copy_in::<_, bytes::Bytes>(&statement).await.map_err(fail)?;
                        futures_util::pin_mut!(sink);
                        // in pieces of 1 MiB: the server gets going before the last byte
                        for piece in csv.chunks(1 << 20) {
                            sink.send(bytes::Bytes::copy_from_slice(piece)).await.map_err(fail)?;
                        }
                        sink.finish().await.map_err(fail)?;
                    }
                    Rows::Json(chunks) => {
                        for chunk in chunks {
                            client.execute(&statement, &[chunk]).await.map_err(fail)?;
                        }
                    }
                }
                client
                    .execute(
                        &format!(
                            "INSERT INTO {progress} (writer, token, epoch) VALUES ($1, $2, $3)
                             ON CONFLICT (writer) DO UPDATE SET token = EXCLUDED.token, epoch = EXCLUDED.epoch, committed_at = now()"
                        ),
                        &[&writer, &token, &(epoch as i64)],
                    )
                    .await
                    .map_err(fail)?;
                Ok::<_, Failure>(true)
            }
            .await;
            match done {
                Ok(wrote) => {
                    client.batch_execute(if wrote { "COMMIT" } else { "ROLLBACK" }).await.map_err(fail)?;
                    Ok(wrote)
                }
                Err(f) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    Err(f)
                }
            }
        })
        .map_err(|e| Failure::fatal("runtime", e))?
    }
}

impl Publish for PostgresPublisher {
    fn describe(&self) -> String {
        let what = if self.config.dead_letters {
            "postgres dead letters"
        } else {
            "postgres"
        };
        let mode = match &self.config.mode {
            WriteMode::Insert => String::new(),
            WriteMode::Upsert { key } => format!(" (upsert on {})", key.join(", ")),
        };
        format!("{what} {} table {}{mode}", self.shown(), self.config.table)
    }

    fn record_check(&self) -> Option<RecordCheck> {
        if self.config.dead_letters {
            return None;
        }
        let columns = self.started.get()?.columns.clone();
        Some(Arc::new(move |r: keel::sink::OutRecord<'_>| {
            columns::check_record(&columns, r.value)
        }))
    }

    fn start(&self, writer: &str, _recovery: &SinkRecovery) -> Result<(), SinkError> {
        if self.started.get().is_some() {
            return Ok(());
        }
        let started = self.prepare_table(writer).map_err(rejected)?;
        tracing::info!(
            table = %self.config.table,
            columns = started.columns.len(),
            "postgres sink: each epoch commits in one transaction with its progress row in {}",
            started.progress
        );
        let _ = self.started.set(started);
        Ok(())
    }

    fn mark(&self, epoch: CheckpointId) -> Result<serde_json::Value, SinkError> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        serde_json::to_value(Mark {
            token: format!("{epoch}.{nanos}.{}", std::process::id()),
        })
        .map_err(|e| SinkError::Other(e.to_string()))
    }

    fn publish(
        &self,
        epoch: CheckpointId,
        mark: &serde_json::Value,
        records: &[Staged<'_>],
        _resume: bool,
    ) -> Result<(), SinkError> {
        let s = self
            .started
            .get()
            .ok_or_else(|| SinkError::Fatal("postgres sink: used before start".into()))?;
        let mark: Mark =
            serde_json::from_value(mark.clone()).map_err(|e| SinkError::PreCommit(format!("postgres sink: {e}")))?;
        let rows = Arc::new(self.rows(s, epoch, records)?);
        let deadline = Instant::now() + self.config.publish_timeout;
        let wrote = self.patiently("a commit", deadline, || self.commit_once(s, epoch, &mark.token, &rows))?;
        tracing::debug!(epoch, wrote, rows = records.len(), "postgres sink: epoch committed");
        Ok(())
    }
}
