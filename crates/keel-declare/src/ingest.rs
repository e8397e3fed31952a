//! `[ingest]`: batch ingestion of a directory, one unit per input file (see
//! [`keel::ingest`] for the protocol).
//!
//! Each file is run through the pipeline on its own: its source is that one file, its
//! checkpoints live in `<checkpoint dir>/units/<txid>/`, and each file sink writes into the
//! staging directory of the file's transaction in that sink's directory. The commit
//! publishes `<sink path>/<file name>/` (and `<dead_letter path>/<file name>/`), replacing
//! the output of an earlier version of the same file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel::ingest::{IngestError, IngestReport, IngestSettings, Ingestor, OutputStore, UnitJob, UnitRun, list_inputs};
use keel::ledger::{Algorithm, Ledger};
use keel::txn::{FsTxnStore, JsonLines, NonEmpty, Validator};
use keel::{Options, Outcome};
use keel_connectors::file::{FileFormat, FileSource, FileSourceConfig};

use crate::build::{Loaded, Variant, build_variant};
use crate::config::{SinkConfig, SourceConfig, StepConfig};
use crate::error::{ConfigErrors, Errors, KeyPath};
use crate::source::AnySource;

/// Validators accepted in `[ingest] validators`.
pub const VALIDATORS: [&str; 2] = ["non_empty", "json_lines"];

/// An `[ingest]` table, checked and resolved. Its `Debug` shows the ledger location with
/// the password redacted.
#[derive(Clone)]
pub struct IngestPlan {
    /// Settings of the ingestor.
    pub settings: IngestSettings,
    /// The ledger location (`sqlite:PATH` resolved against the pipeline file, or a URL).
    pub ledger: String,
    /// The PostgreSQL schema.
    pub schema: String,
    /// The input directory, format and pattern.
    pub input: FileSourceConfig,
    /// Output stores: file sinks by name, then `dead_letters`, with their directories.
    pub outputs: Vec<(String, PathBuf)>,
    /// Validators of the sinks' output.
    pub validators: Vec<String>,
}

impl std::fmt::Debug for IngestPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestPlan")
            .field("settings", &self.settings)
            .field("ledger", &keel::util::redact_url(&self.ledger))
            .field("schema", &self.schema)
            .field("input", &self.input)
            .field("outputs", &self.outputs)
            .field("validators", &self.validators)
            .finish()
    }
}

/// The plan of the `[ingest]` table of `loaded`, or `None` without one. Every problem is
/// reported with its key, before anything runs.
pub fn plan(loaded: &Loaded) -> Result<Option<IngestPlan>, ConfigErrors> {
    let cfg = &loaded.config;
    let Some(ing) = &cfg.ingest else {
        return Ok(None);
    };
    let mut errors = Errors::new(&loaded.path, &loaded.text);
    let at = KeyPath::key("ingest");
    let input = match &cfg.source {
        SourceConfig::Files(f) => {
            if f.follow {
                errors.add(
                    &KeyPath::key("source").k("follow"),
                    "batch ingestion reads a directory once: `follow` cannot be used with [ingest]",
                );
            }
            crate::build::files_source(loaded, f)
        }
        SourceConfig::Generator(_) | SourceConfig::Kafka(_) | SourceConfig::Nats(_) | SourceConfig::RedisStream(_) => {
            errors.add(
                &KeyPath::key("source").k("type"),
                "[ingest] needs a `files` source: each input file is a unit",
            );
            FileSourceConfig::new(".", FileFormat::JsonLines)
        }
    };
    for (i, step) in cfg.steps.iter().enumerate() {
        if matches!(step, StepConfig::Aggregate(_) | StepConfig::Dedupe(_)) {
            errors.add(
                &KeyPath::key("steps").i(i).k("type"),
                format!(
                    "a `{}` step keeps state across files, but [ingest] processes each file on its own \
                     (a changed file is processed again): remove it or drop [ingest]",
                    step.kind()
                ),
            );
        }
    }
    let mut outputs = Vec::new();
    for (i, s) in cfg.sinks.iter().enumerate() {
        match s {
            SinkConfig::Files(f) => outputs.push((f.name.clone(), loaded.resolve(&f.path))),
            _ => errors.add(
                &KeyPath::key("sinks").i(i).k("type"),
                "[ingest] commits each file's output as a transaction: use `files` sinks (stdout and brokers cannot be rolled back)",
            ),
        }
    }
    if let Some(d) = &cfg.dead_letter {
        if d.fallback.is_some() {
            errors.add(
                &KeyPath::key("dead_letter").k("fallback"),
                "a dead-letter fallback cannot be used with [ingest]: dead letters are part of each file's transaction",
            );
        }
        outputs.push(("dead_letters".into(), loaded.resolve(&d.path)));
    }
    let checksum = match ing.checksum.as_deref() {
        None => Algorithm::Blake3,
        Some(name) => Algorithm::parse(name).unwrap_or_else(|| {
            errors.add(
                &at.k("checksum"),
                format!("unknown checksum `{name}`: use blake3, sha256 or md5"),
            );
            Algorithm::Blake3
        }),
    };
    if let Some(r) = ing.max_bad_ratio
        && !(0.0..=1.0).contains(&r)
    {
        errors.add(&at.k("max_bad_ratio"), "must be between 0 and 1");
    }
    if ing.lease.is_some_and(|l| l.as_millis() < 100) {
        errors.add(&at.k("lease"), "must be at least 100ms");
    }
    if ing.concurrency == Some(0) {
        errors.add(&at.k("concurrency"), "must be at least 1");
    }
    if ing.scope.trim().is_empty() {
        errors.add(&at.k("scope"), "must not be empty");
    }
    for (i, v) in ing.validators.iter().enumerate() {
        if !VALIDATORS.contains(&v.as_str()) {
            errors.add(
                &at.k("validators").i(i),
                format!("unknown validator `{v}`: use {}", VALIDATORS.join(", ")),
            );
        }
    }
    if !errors.list.is_empty() {
        return Err(ConfigErrors(errors.list));
    }
    let state = loaded.state_dir();
    let ledger = match &ing.ledger {
        None => format!("sqlite:{}", state.join("ledger.db").display()),
        Some(l) if l.starts_with("postgres://") || l.starts_with("postgresql://") => l.clone(),
        Some(l) => format!(
            "sqlite:{}",
            loaded.resolve(l.strip_prefix("sqlite:").unwrap_or(l)).display()
        ),
    };
    let worker = worker_id(ing.worker.as_deref(), &state);
    let mut settings = IngestSettings::new(cfg.name.clone(), worker, state.join("units"));
    settings.scope = ing.scope.clone();
    settings.checksum = checksum;
    settings.rehash = ing.rehash;
    if let Some(l) = ing.lease {
        settings.lease = l;
    }
    settings.min_records = ing.min_records;
    if let Some(c) = ing.concurrency {
        settings.concurrency = c;
    }
    settings.max_bad_ratio = ing.max_bad_ratio;
    Ok(Some(IngestPlan {
        settings,
        ledger,
        schema: ing.schema.clone(),
        input,
        outputs,
        validators: ing.validators.clone(),
    }))
}

/// The worker id: `configured`, else `KEEL_WORKER`, else the id stored in
/// `<state_dir>/worker-id`, else empty (assigned by [`assign_worker`] at the first run).
pub fn worker_id(configured: Option<&str>, state_dir: &Path) -> String {
    configured
        .map(str::to_owned)
        .or_else(|| std::env::var("KEEL_WORKER").ok())
        .filter(|w| !w.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string(state_dir.join(WORKER_ID_FILE))
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_default()
}

/// Where a worker keeps its generated id.
pub const WORKER_ID_FILE: &str = "worker-id";

/// Gives `plan` a worker id if it has none: `<host>-<random>`, stored durably in the
/// checkpoint directory so that a restarted worker is the same worker (it resumes its own
/// files) and two checkpoint directories are two workers.
pub fn assign_worker(plan: &mut IngestPlan, state_dir: &Path) -> std::io::Result<()> {
    if !plan.settings.worker.is_empty() {
        return Ok(());
    }
    let host = keel::util::hostname();
    let random = keel::txn::new_id();
    let id = format!("{host}-{}", &random[random.len() - 8..]);
    std::fs::create_dir_all(state_dir)?;
    keel::durable::write_atomic(&*keel::durable::local(), &state_dir.join(WORKER_ID_FILE), id.as_bytes())?;
    plan.settings.worker = id;
    Ok(())
}

fn validator(name: &str) -> Option<Box<dyn Validator>> {
    match name {
        "non_empty" => Some(Box::new(NonEmpty)),
        "json_lines" => Some(Box::new(JsonLines)),
        _ => None,
    }
}

/// The ingestor of `plan` on `ledger`.
pub fn ingestor(plan: &IngestPlan, ledger: Arc<dyn Ledger>) -> Ingestor {
    let ns = keel::ingest::staging_namespace(&plan.settings.worker);
    let stores = plan
        .outputs
        .iter()
        .map(|(name, dir)| OutputStore {
            name: name.clone(),
            store: FsTxnStore::with(dir, &ns, keel::durable::local()),
            validators: if name == "dead_letters" {
                Vec::new()
            } else {
                plan.validators.iter().filter_map(|v| validator(v)).collect()
            },
        })
        .collect();
    Ingestor::new(ledger, stores, plan.settings.clone())
}

/// Ingests the input directory of `plan` with `ingestor` (from [`ingestor`]); `options`
/// adjusts each file's run.
pub async fn run(
    loaded: &Loaded,
    plan: &IngestPlan,
    ingestor: &Ingestor,
    options: impl Fn(&mut Options),
) -> Result<IngestReport, IngestError> {
    // absolute paths in the ledger, so that `keel ledger verify` works from anywhere
    let dir = std::fs::canonicalize(&plan.input.path).map_err(|source| IngestError::Io {
        context: format!("input directory {}", plan.input.path.display()),
        source,
    })?;
    let inputs = list_inputs(&dir, |name| plan.input.matches(name))?;
    let names: Vec<String> = plan.outputs.iter().map(|(n, _)| n.clone()).collect();
    let runner = |job: UnitJob| {
        let outputs: HashMap<String, PathBuf> = names.iter().cloned().zip(job.outputs.iter().cloned()).collect();
        let mut source = plan.input.clone();
        source.only = Some(job.unit.key.clone());
        let variant = Variant {
            source: Some(AnySource::Files(FileSource::new(source))),
            state_dir: Some(job.state_dir.clone()),
            outputs: Some(outputs),
            ..Variant::default()
        };
        let built = build_variant(loaded, variant, |o| {
            options(o);
            o.handle_signals = false;
            o.log_lifecycle = false;
        });
        async move {
            let pipeline = built.map_err(|e| e.to_string())?.with_shutdown(job.shutdown.clone());
            let s = pipeline.run_local().await.map_err(|e| e.to_string())?;
            Ok(UnitRun {
                records_in: s.totals.records_in,
                records_out: s.totals.records_out,
                dead_letters: s.totals.dead_letters,
                stopped: s.outcome == Outcome::Stopped,
            })
        }
    };
    ingestor.run(inputs, runner).await
}
