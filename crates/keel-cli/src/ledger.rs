//! `keel ledger list|list-failed|retry|clear|stats|verify`: inspecting and repairing the
//! ingestion ledger by hand.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use keel::ledger::{Algorithm, Filter, Fingerprint, Ledger, Status, Unit};

use crate::{EXIT_DEAD_LETTERS, EXIT_OK, EXIT_USAGE};

/// Which ledger, and which units of it.
#[derive(clap::Args, Clone)]
pub struct Select {
    /// A pipeline file: its `[ingest]` ledger, and its name as the default `--pipeline`.
    #[arg(long, short = 'f', conflicts_with = "ledger")]
    file: Option<PathBuf>,
    /// The ledger: `sqlite:PATH`, a path, or `postgres://...`.
    #[arg(long)]
    ledger: Option<String>,
    /// PostgreSQL schema of the ledger tables.
    #[arg(long, default_value = "keel")]
    schema: String,
    /// Only units of this pipeline.
    #[arg(long)]
    pipeline: Option<String>,
    /// Only units of this scope (`file`).
    #[arg(long)]
    scope: Option<String>,
    /// Only this unit key (a file name).
    #[arg(long)]
    key: Option<String>,
    /// Only units with this status: pending, in_progress, completed, failed.
    #[arg(long, value_parser = parse_status)]
    status: Option<Status>,
    /// Only units last changed longer ago than this (`1h`, `2d`).
    #[arg(long)]
    older_than: Option<String>,
    /// At most this many units.
    #[arg(long)]
    limit: Option<usize>,
}

/// Subcommands.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// List units, by pipeline, scope and key.
    List {
        #[command(flatten)]
        select: Select,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// List failed units with their last error.
    ListFailed {
        #[command(flatten)]
        select: Select,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Send units (failed ones unless --status says otherwise) back to pending: the next run
    /// processes them again.
    Retry {
        #[command(flatten)]
        select: Select,
        /// Print the count as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete units from the ledger (their files are processed again by the next run, their
    /// output replaced). Needs --confirm.
    Clear {
        #[command(flatten)]
        select: Select,
        /// Really delete.
        #[arg(long)]
        confirm: bool,
        /// Print the count as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Counts by status and the failure rate.
    Stats {
        #[command(flatten)]
        select: Select,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recompute the checksum of every completed unit's file; report changed and missing
    /// files (exit code 1 when there are any).
    Verify {
        #[command(flatten)]
        select: Select,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

fn parse_status(s: &str) -> Result<Status, String> {
    Status::parse(s).ok_or_else(|| format!("unknown status `{s}`: use pending, in_progress, completed or failed"))
}

impl Select {
    /// The ledger location and schema, and the default pipeline filter.
    fn location(&self) -> Result<(String, String, Option<String>)> {
        if let Some(file) = &self.file {
            let loaded = keel_declare::load(file).map_err(|e| anyhow::anyhow!("{e}"))?;
            let plan = keel_declare::ingest::plan(&loaded)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .with_context(|| format!("{} has no [ingest] table", file.display()))?;
            return Ok((plan.ledger, plan.schema, Some(loaded.config.name.clone())));
        }
        match &self.ledger {
            Some(l) => Ok((l.clone(), self.schema.clone(), None)),
            None => bail!("name the ledger: --file PIPELINE.toml or --ledger LOCATION"),
        }
    }

    fn filter(&self, default_pipeline: Option<String>) -> Result<Filter> {
        let updated_before_ms = match &self.older_than {
            None => None,
            Some(s) => {
                let d = keel_declare::config::parse_duration(s).map_err(|e| anyhow::anyhow!("--older-than: {e}"))?;
                Some(keel::util::now_ms().saturating_sub(keel::ledger::ms(d)))
            }
        };
        Ok(Filter {
            pipeline: self.pipeline.clone().or(default_pipeline),
            scope: self.scope.clone(),
            key: self.key.clone(),
            status: self.status,
            updated_before_ms,
            limit: self.limit,
        })
    }
}

/// Runs a `keel ledger` command.
pub fn run(cmd: Cmd) -> Result<u8> {
    let select = match &cmd {
        Cmd::List { select, .. }
        | Cmd::ListFailed { select, .. }
        | Cmd::Retry { select, .. }
        | Cmd::Clear { select, .. }
        | Cmd::Stats { select, .. }
        | Cmd::Verify { select, .. } => select.clone(),
    };
    let (location, schema, default_pipeline) = match select.location() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("keel: {e:#}");
            return Ok(EXIT_USAGE);
        }
    };
    if !location.starts_with("postgres") {
        let path = location.strip_prefix("sqlite:").unwrap_or(&location);
        if !Path::new(path).exists() {
            eprintln!("keel: no ledger at {path} (nothing was ingested yet?)");
            return Ok(EXIT_USAGE);
        }
    }
    let filter = match select.filter(default_pipeline) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("keel: {e:#}");
            return Ok(EXIT_USAGE);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let ledger = keel_connectors::ledger::open(&location, &schema)
            .await
            .with_context(|| format!("opening the ledger {}", keel::util::redact_url(&location)))?;
        dispatch(cmd, ledger, filter).await
    })
}

async fn dispatch(cmd: Cmd, ledger: Arc<dyn Ledger>, mut filter: Filter) -> Result<u8> {
    match cmd {
        Cmd::List { json, .. } => {
            let units = ledger.list(&filter).await?;
            print_units(&units, json, false)?;
            Ok(EXIT_OK)
        }
        Cmd::ListFailed { json, .. } => {
            filter.status = Some(Status::Failed);
            let units = ledger.list(&filter).await?;
            print_units(&units, json, true)?;
            Ok(EXIT_OK)
        }
        Cmd::Retry { json, .. } => {
            let n = ledger.retry(&filter).await?;
            if json {
                println!("{}", serde_json::json!({ "retried": n }));
            } else {
                eprintln!(
                    "keel: {n} units sent back to pending ({}); the next run processes them",
                    filter.status.unwrap_or(Status::Failed)
                );
            }
            Ok(EXIT_OK)
        }
        Cmd::Clear { confirm, json, .. } => {
            if !confirm {
                let n = ledger.stats(&filter).await?.total();
                eprintln!(
                    "keel: this would delete {n} units from the ledger (their files would be ingested again); add --confirm"
                );
                return Ok(EXIT_USAGE);
            }
            let n = ledger.clear(&filter).await?;
            if json {
                println!("{}", serde_json::json!({ "cleared": n }));
            } else {
                eprintln!("keel: {n} units deleted from the ledger");
            }
            Ok(EXIT_OK)
        }
        Cmd::Stats { json, .. } => {
            let s = ledger.stats(&filter).await?;
            if json {
                let mut v = serde_json::to_value(&s)?;
                v["total"] = s.total().into();
                v["failure_rate"] = s.failure_rate().into();
                println!("{v}");
            } else {
                println!("{:<12} {:>10}", "status", "units");
                for (name, n) in [
                    ("pending", s.pending),
                    ("in_progress", s.in_progress),
                    ("completed", s.completed),
                    ("failed", s.failed),
                ] {
                    println!("{name:<12} {n:>10}");
                }
                println!("{:<12} {:>10}", "total", s.total());
                println!(
                    "failure rate {:.2}% of finished units; {} attempts in all",
                    s.failure_rate() * 100.0,
                    s.attempts
                );
            }
            Ok(EXIT_OK)
        }
        Cmd::Verify { json, .. } => {
            if filter.status.is_none() {
                filter.status = Some(Status::Completed);
            }
            let units = ledger.list(&filter).await?;
            let checked =
                tokio::task::spawn_blocking(move || units.into_iter().map(verify).collect::<Vec<_>>()).await?;
            let (mut changed, mut missing) = (0, 0);
            for (unit, state) in &checked {
                match state {
                    Verdict::Changed { .. } => changed += 1,
                    Verdict::Missing { .. } => missing += 1,
                    _ => {}
                }
                if json {
                    println!("{}", verdict_json(unit, state));
                } else if !matches!(state, Verdict::Unchanged) {
                    println!("{:<8} {}  {}", state.label(), unit.unit.key, state.detail());
                }
            }
            if !json {
                eprintln!(
                    "keel: verified {} units: {} unchanged, {changed} changed, {missing} missing",
                    checked.len(),
                    checked.len() - changed - missing
                );
            }
            Ok(if changed + missing > 0 {
                EXIT_DEAD_LETTERS
            } else {
                EXIT_OK
            })
        }
    }
}

/// What `verify` found for a unit.
enum Verdict {
    Unchanged,
    Changed { now: String },
    Missing { path: String },
    Unknown { why: String },
}

impl Verdict {
    fn label(&self) -> &'static str {
        match self {
            Verdict::Unchanged => "ok",
            Verdict::Changed { .. } => "changed",
            Verdict::Missing { .. } => "missing",
            Verdict::Unknown { .. } => "unknown",
        }
    }

    fn detail(&self) -> String {
        match self {
            Verdict::Unchanged => String::new(),
            Verdict::Changed { now } => format!("checksum now {now}"),
            Verdict::Missing { path } => format!("{path} does not exist"),
            Verdict::Unknown { why } => why.clone(),
        }
    }
}

fn verify(unit: Unit) -> (Unit, Verdict) {
    let verdict = match unit.metadata.get("path").and_then(|p| p.as_str()) {
        None => Verdict::Unknown {
            why: "no path recorded".into(),
        },
        Some(path) => {
            let algorithm = unit.fingerprint.algorithm().unwrap_or(Algorithm::Blake3);
            match Fingerprint::of_file(Path::new(path), algorithm) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Verdict::Missing { path: path.into() },
                Err(e) => Verdict::Unknown {
                    why: format!("cannot read {path}: {e}"),
                },
                Ok(fp) if fp.same_content(&unit.fingerprint) => Verdict::Unchanged,
                Ok(fp) => Verdict::Changed {
                    now: fp.checksum.unwrap_or_default(),
                },
            }
        }
    };
    (unit, verdict)
}

fn verdict_json(unit: &Unit, v: &Verdict) -> serde_json::Value {
    serde_json::json!({
        "pipeline": unit.unit.pipeline,
        "scope": unit.unit.scope,
        "key": unit.unit.key,
        "verdict": v.label(),
        "recorded": unit.fingerprint.checksum,
        "detail": v.detail(),
    })
}

fn print_units(units: &[Unit], json: bool, errors: bool) -> Result<()> {
    if json {
        for u in units {
            println!("{}", serde_json::to_string(u)?);
        }
        return Ok(());
    }
    if units.is_empty() {
        eprintln!("keel: no units match");
        return Ok(());
    }
    println!(
        "{:<20} {:<6} {:<32} {:<12} {:>8}  {}",
        "pipeline",
        "scope",
        "key",
        "status",
        "attempts",
        if errors { "last error" } else { "updated" }
    );
    for u in units {
        let last = if errors {
            u.last_error.clone().unwrap_or_default()
        } else {
            keel::util::format_rfc3339_ms(u.updated_ms)
        };
        println!(
            "{:<20} {:<6} {:<32} {:<12} {:>8}  {}",
            u.unit.pipeline, u.unit.scope, u.unit.key, u.status, u.attempts, last
        );
    }
    Ok(())
}
