//! The Delta Lake sink: epochs staged locally, each committed as one Delta commit with a
//! `txn` action (see the module documentation of [`super`]).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, JsonWriter};
use deltalake::{DataType, DeltaTable, DeltaTableError, PrimitiveType, StructField};
use keel::checkpoint::CheckpointId;
use keel::checkpoint::recovery::SinkRecovery;
use keel::failure::reason;
use keel::sink::{RecordCheck, SinkError};
use keel::{Class, Failure};
use serde_json::Value;

use super::config::{ColumnType, DeltaSinkConfig};
use super::schema::{self, Column};
use crate::stage::{Publish, Staged, StagedSink};

/// The Delta Lake sink: a [`StagedSink`] committing through a [`DeltaPublisher`].
pub type DeltaSink = StagedSink<DeltaPublisher>;

impl DeltaSink {
    /// A sink named `name` committing to `config.table`.
    pub fn with_config(name: impl Into<String>, config: DeltaSinkConfig) -> Self {
        let dir = config.staging.clone();
        StagedSink::new(name, dir, DeltaPublisher::new(config))
    }

    /// The dead-letter sink: one row per dead letter (the columns of
    /// [`crate::envelope::ROW_COLUMNS`]; `position` and `envelope` as JSON text).
    pub fn dead_letters(mut config: DeltaSinkConfig) -> Self {
        config.dead_letters = true;
        let long = ["epoch", "attempts", "first_failed_ms", "last_failed_ms"];
        config.columns = crate::envelope::ROW_COLUMNS
            .iter()
            .map(|c| {
                let ty = if long.contains(c) {
                    ColumnType::Long
                } else {
                    ColumnType::String
                };
                ((*c).to_owned(), ty)
            })
            .collect();
        Self::with_config("dead_letters", config)
    }
}

/// Commits epochs to a Delta table.
pub struct DeltaPublisher {
    config: DeltaSinkConfig,
    /// The table, once opened (absent while it does not exist yet).
    table: Mutex<Option<DeltaTable>>,
    /// The columns records are checked against, once known at start.
    columns: OnceLock<Arc<Vec<Column>>>,
}

fn classify(e: &DeltaTableError, doing: &str) -> Failure {
    let message = keel::util::redact_url(&format!("{doing}: {e}"));
    // storage trouble often arrives wrapped (a kernel or generic error around the object
    // store's): the whole chain says what it is
    let chain = format!("{e:?}").to_ascii_lowercase();
    let unreachable = [
        "error sending request",
        "connection refused",
        "connect error",
        "timed out",
        "timeout",
        "broken pipe",
        "connection reset",
        "dns error",
    ];
    match e {
        DeltaTableError::ObjectStore { .. } | DeltaTableError::Io { .. } => Failure::transient(reason::IO, message),
        DeltaTableError::VersionAlreadyExists(_) | DeltaTableError::Transaction { .. } => {
            // another writer committed first: read the table again and retry
            Failure::transient("conflict", message)
        }
        _ if unreachable.iter().any(|u| chain.contains(u)) => Failure::transient(reason::IO, message),
        DeltaTableError::Arrow { .. } | DeltaTableError::SchemaMismatch { .. } => {
            Failure::fatal("schema_mismatch", message)
        }
        _ => Failure::fatal("delta_error", message),
    }
}

fn url_of(table: &str) -> Result<url::Url, Failure> {
    let parsed = if table.contains("://") {
        url::Url::parse(table).map_err(|e| e.to_string())
    } else {
        std::path::absolute(table).map_err(|e| e.to_string()).and_then(|path| {
            url::Url::from_directory_path(&path).map_err(|()| format!("{} is not a directory path", path.display()))
        })
    };
    parsed.map_err(|e| Failure::fatal("config", format!("delta table `{table}`: {e}")))
}

fn kernel_type(t: ColumnType) -> DataType {
    DataType::Primitive(match t {
        ColumnType::String => PrimitiveType::String,
        ColumnType::Long => PrimitiveType::Long,
        ColumnType::Integer => PrimitiveType::Integer,
        ColumnType::Double => PrimitiveType::Double,
        ColumnType::Boolean => PrimitiveType::Boolean,
        ColumnType::Timestamp => PrimitiveType::Timestamp,
        ColumnType::Date => PrimitiveType::Date,
    })
}

impl DeltaPublisher {
    /// A publisher for `config`; opens the table at [`Publish::start`].
    pub fn new(config: DeltaSinkConfig) -> Self {
        DeltaPublisher {
            config,
            table: Mutex::new(None),
            columns: OnceLock::new(),
        }
    }

    fn shown(&self) -> String {
        keel::util::redact_url(&self.config.table)
    }

    /// Opens the table; `None` when there is none at the location yet.
    fn open(&self) -> Result<Option<DeltaTable>, Failure> {
        let url = url_of(&self.config.table)?;
        if let Ok(dir) = url.to_file_path() {
            // a local table's directory is made on first use, as an object store's prefix is
            std::fs::create_dir_all(&dir)
                .map_err(|e| Failure::fatal("config", format!("creating {}: {e}", dir.display())))?;
        }
        let (options, shown) = (self.config.storage_options.clone(), self.shown());
        crate::io::block_on(async move {
            deltalake::aws::register_handlers(None);
            let table = DeltaTable::try_from_url_with_storage_options(url, options)
                .await
                .map_err(|e| classify(&e, &format!("opening delta table {shown}")))?;
            Ok(table.version().is_some().then_some(table))
        })
        .map_err(|e| Failure::fatal("runtime", e))?
    }

    /// Creates the table with `columns`.
    fn create(&self, columns: &[Column]) -> Result<DeltaTable, Failure> {
        let url = url_of(&self.config.table)?;
        let (options, shown) = (self.config.storage_options.clone(), self.shown());
        let fields: Vec<StructField> = columns
            .iter()
            .map(|c| StructField::new(c.name.clone(), kernel_type(c.ty), c.nullable))
            .collect();
        crate::io::block_on(async move {
            let table = DeltaTable::try_from_url_with_storage_options(url, options)
                .await
                .map_err(|e| classify(&e, &format!("opening delta table {shown}")))?;
            table
                .create()
                .with_columns(fields)
                .await
                .map_err(|e| classify(&e, &format!("creating delta table {shown}")))
        })
        .map_err(|e| Failure::fatal("runtime", e))?
    }

    /// The columns of `table`, as far as the sink writes their types.
    fn columns_of(table: &DeltaTable) -> Result<Vec<Column>, Failure> {
        let snapshot = table
            .snapshot()
            .map_err(|e| classify(&e, "reading the table's schema"))?;
        Ok(snapshot
            .schema()
            .fields()
            .filter_map(|f| {
                let ty = match f.data_type() {
                    DataType::Primitive(p) => schema::type_of(&p.to_string())?,
                    _ => return None,
                };
                Some(Column {
                    name: f.name().clone(),
                    ty,
                    nullable: f.is_nullable(),
                })
            })
            .collect())
    }

    /// Runs `f` again while it fails transiently, until `deadline`.
    fn patiently<T>(
        &self,
        doing: &str,
        deadline: Instant,
        mut f: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, SinkError> {
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(e) if e.class == Class::Transient && Instant::now() < deadline => {
                    tracing::warn!(error = %e, "delta sink: {doing} failed; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(SinkError::Rejected(e)),
            }
        }
    }

    /// One attempt at committing `rows` as `epoch`: nothing when the table has the epoch.
    fn commit_once(&self, epoch: CheckpointId, rows: &[serde_json::Map<String, Value>]) -> Result<bool, Failure> {
        let mut guard = self
            .table
            .lock()
            .map_err(|_| Failure::fatal("runtime", "delta sink: a commit panicked before"))?;
        let table = match guard.take() {
            Some(t) => t,
            None => match self.open()? {
                Some(t) => t,
                None => {
                    let columns = match self.config.columns.as_slice() {
                        [] => schema::inferred(rows),
                        set => set
                            .iter()
                            .map(|(n, t)| Column {
                                name: n.clone(),
                                ty: *t,
                                nullable: true,
                            })
                            .collect(),
                    };
                    self.create(&columns)?
                }
            },
        };
        let (app_id, shown) = (self.config.app_id.clone(), self.shown());
        let rows = rows.to_vec();
        let (table, result) = crate::io::block_on(async move {
            let mut table = table;
            let result = async {
                table
                    .update_state()
                    .await
                    .map_err(|e| classify(&e, &format!("reading delta table {shown}")))?;
                let done = table
                    .snapshot()
                    .map_err(|e| classify(&e, "reading the snapshot"))?
                    .transaction_version(table.log_store().as_ref(), &app_id)
                    .await
                    .map_err(|e| classify(&e, "reading the app's version"))?;
                if done.is_some_and(|v| v >= epoch as i64) {
                    return Ok(false);
                }
                // only the table's columns are written
                let names: Vec<String> = Self::columns_of(&table)?.into_iter().map(|c| c.name).collect();
                let values: Vec<Value> = rows
                    .into_iter()
                    .map(|mut r| {
                        r.retain(|k, _| names.contains(k));
                        Value::Object(r)
                    })
                    .collect();
                let mut writer =
                    JsonWriter::for_table(&table).map_err(|e| classify(&e, &format!("writing to {shown}")))?;
                writer
                    .write(values)
                    .await
                    .map_err(|e| classify(&e, &format!("writing epoch {epoch} to {shown}")))?;
                let adds: Vec<Action> = writer
                    .flush()
                    .await
                    .map_err(|e| classify(&e, &format!("writing epoch {epoch} to {shown}")))?
                    .into_iter()
                    .map(Action::Add)
                    .collect();
                let properties =
                    CommitProperties::default().with_application_transaction(Transaction::new(&app_id, epoch as i64));
                let operation = DeltaOperation::Write {
                    mode: SaveMode::Append,
                    partition_by: None,
                    predicate: None,
                };
                let snapshot = table.snapshot().map_err(|e| classify(&e, "reading the snapshot"))?;
                let finalized = CommitBuilder::from(properties)
                    .with_actions(adds)
                    .build(Some(snapshot), table.log_store(), operation)
                    .await
                    .map_err(|e| classify(&e, &format!("committing epoch {epoch} to {shown}")))?;
                tracing::debug!(epoch, version = finalized.version(), "delta sink: epoch committed");
                Ok(true)
            }
            .await;
            (table, result)
        })
        .map_err(|e| Failure::fatal("runtime", e))?;
        *guard = Some(table);
        result
    }
}

impl Publish for DeltaPublisher {
    fn describe(&self) -> String {
        let what = if self.config.dead_letters {
            "delta dead letters"
        } else {
            "delta"
        };
        format!("{what} {} (app id {})", self.shown(), self.config.app_id)
    }

    fn record_check(&self) -> Option<RecordCheck> {
        if self.config.dead_letters {
            return None;
        }
        let columns = self.columns.get()?.clone();
        Some(Arc::new(move |r: keel::sink::OutRecord<'_>| {
            schema::check_record(&columns, r.value)
        }))
    }

    fn highest_epoch(&self) -> Result<Option<CheckpointId>, SinkError> {
        let Some(table) = self.open().map_err(SinkError::Rejected)? else {
            return Ok(None);
        };
        let app_id = self.config.app_id.clone();
        let version = crate::io::block_on(async move {
            let snapshot = table.snapshot().map_err(|e| classify(&e, "reading the snapshot"))?;
            snapshot
                .transaction_version(table.log_store().as_ref(), &app_id)
                .await
                .map_err(|e| classify(&e, "reading the app's version"))
        })
        .map_err(SinkError::Fatal)?
        .map_err(SinkError::Rejected)?;
        Ok(version.and_then(|v| u64::try_from(v).ok()))
    }

    fn start(&self, _writer: &str, _recovery: &SinkRecovery) -> Result<(), SinkError> {
        let table = self.open().map_err(SinkError::Rejected)?;
        let columns = match &table {
            Some(t) => Some(Self::columns_of(t).map_err(SinkError::Rejected)?),
            None if !self.config.columns.is_empty() => {
                let cols: Vec<Column> = self
                    .config
                    .columns
                    .iter()
                    .map(|(n, t)| Column {
                        name: n.clone(),
                        ty: *t,
                        nullable: true,
                    })
                    .collect();
                let created = self.create(&cols).map_err(SinkError::Rejected)?;
                if let Ok(mut g) = self.table.lock() {
                    *g = Some(created);
                }
                Some(cols)
            }
            None => None,
        };
        if let Some(t) = table
            && let Ok(mut g) = self.table.lock()
        {
            *g = Some(t);
        }
        if let Some(c) = columns {
            let _ = self.columns.set(Arc::new(c));
        }
        Ok(())
    }

    fn mark(&self, _epoch: CheckpointId) -> Result<serde_json::Value, SinkError> {
        Ok(serde_json::Value::Null)
    }

    fn publish(
        &self,
        epoch: CheckpointId,
        _mark: &serde_json::Value,
        records: &[Staged<'_>],
        _resume: bool,
    ) -> Result<(), SinkError> {
        let rows = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let row = if self.config.dead_letters {
                    crate::envelope::row_of(r.value, true)
                } else {
                    r.value.to_vec()
                };
                serde_json::from_slice::<serde_json::Map<String, Value>>(&row)
                    .map_err(|e| SinkError::Fatal(format!("record {i} of epoch {epoch} is not a JSON object: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let deadline = Instant::now() + self.config.publish_timeout;
        let wrote = self.patiently("a commit", deadline, || self.commit_once(epoch, &rows))?;
        if !wrote {
            tracing::info!(epoch, "delta sink: the table already has this epoch");
        }
        Ok(())
    }
}
