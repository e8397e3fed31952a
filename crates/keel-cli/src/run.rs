//! `keel run` and `keel validate`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use keel::{Outcome, RunSummary};
use keel_declare::config::SourceConfig;

use crate::progress::{Reporter, human};
use crate::{EXIT_DEAD_LETTERS, EXIT_FAILED, EXIT_OK, EXIT_UNITS_FAILED, EXIT_USAGE};

/// Arguments of `keel run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The pipeline file.
    pipeline: PathBuf,
    /// Delete existing checkpoints and start from the beginning of the input; the committed
    /// output of the pipeline is deleted too, which needs `--confirm`.
    #[arg(long)]
    from_scratch: bool,
    /// Confirm that `--from-scratch` may delete existing checkpoints and output.
    #[arg(long, requires = "from_scratch")]
    confirm: bool,
    /// Override the checkpoint interval (`500ms`, `1s`, `off`).
    #[arg(long)]
    checkpoint_interval: Option<String>,
    /// No progress line, and no log lines below errors.
    #[arg(long, short)]
    pub(crate) quiet: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Serve `/metrics` (Prometheus), `/health` and `/ready` on this address
    /// (`127.0.0.1:9464`, or `:9464` for loopback); overrides `[metrics] listen`.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_addr: Option<String>,
}

/// `--checkpoint-interval`: `None` keeps the file's setting; `Some(None)` is `off`.
fn parse_interval(arg: Option<&str>) -> Result<Option<Option<std::time::Duration>>, u8> {
    match arg {
        None => Ok(None),
        Some("off") => Ok(Some(None)),
        Some(s) => match keel_declare::config::parse_duration(s) {
            Ok(d) if !d.is_zero() => Ok(Some(Some(d))),
            Ok(_) => {
                eprintln!("keel: --checkpoint-interval must be positive or `off`");
                Err(EXIT_USAGE)
            }
            Err(e) => {
                eprintln!("keel: --checkpoint-interval: {e}");
                Err(EXIT_USAGE)
            }
        },
    }
}

fn config_errors(e: &keel_declare::ConfigErrors) -> u8 {
    for err in &e.0 {
        eprintln!("keel: config error: {err}");
    }
    EXIT_USAGE
}

/// `keel validate`: every check of `keel run` that needs no data.
pub fn validate(path: &Path) -> Result<u8> {
    let loaded = match keel_declare::load(path) {
        Ok(l) => l,
        Err(e) => return Ok(config_errors(&e)),
    };
    let pipeline = match keel_declare::build(&loaded, |_| {}) {
        Ok(p) => p,
        Err(e) => return Ok(config_errors(&e)),
    };
    if let SourceConfig::Files(f) = &loaded.config.source {
        let dir = loaded.resolve(&f.path);
        if !dir.is_dir() {
            eprintln!(
                "keel: config error: {}: source.path: input directory {} does not exist",
                path.display(),
                dir.display()
            );
            return Ok(EXIT_USAGE);
        }
    }
    println!("ok: pipeline `{}`", pipeline.name());
    println!("  source: {}", pipeline.source_description());
    println!(
        "  steps:  {}",
        loaded
            .config
            .steps
            .iter()
            .map(|s| s.given_name().unwrap_or(s.kind()))
            .collect::<Vec<_>>()
            .join(" -> ")
    );
    for s in pipeline.sinks() {
        println!("  sink {}: {} ({})", s.name, s.describe, s.guarantee);
    }
    println!("  checkpoints: {}", loaded.state_dir().display());
    match keel_declare::ingest::plan(&loaded) {
        Err(e) => return Ok(config_errors(&e)),
        Ok(Some(plan)) => {
            let worker = if plan.settings.worker.is_empty() {
                "assigned at the first run"
            } else {
                plan.settings.worker.as_str()
            };
            println!(
                "  ingest: one unit per file, ledger {} (worker {worker}, checksum {})",
                keel::util::redact_url(&plan.ledger),
                plan.settings.checksum
            );
            for (name, dir) in &plan.outputs {
                println!("    output {name}: {}/<file>/", dir.display());
            }
        }
        Ok(None) => {}
    }
    Ok(EXIT_OK)
}

/// `keel run`.
pub fn run(args: RunArgs) -> Result<u8> {
    let loaded = match keel_declare::load(&args.pipeline) {
        Ok(l) => l,
        Err(e) => return Ok(config_errors(&e)),
    };
    let plan = match keel_declare::ingest::plan(&loaded) {
        Ok(p) => p,
        Err(e) => return Ok(config_errors(&e)),
    };
    if let Some(plan) = plan {
        if let Err(e) = keel_declare::build(&loaded, |_| {}) {
            return Ok(config_errors(&e));
        }
        return run_ingest(&args, &loaded, &plan);
    }
    let interval = match parse_interval(args.checkpoint_interval.as_deref()) {
        Ok(i) => i,
        Err(code) => return Ok(code),
    };
    if args.from_scratch {
        let targets = loaded
            .from_scratch_targets()
            .map_err(|e| anyhow::anyhow!("looking for existing checkpoints and output: {e}"))?;
        if !targets.is_empty() && !args.confirm {
            eprintln!(
                "keel: --from-scratch would delete {}; add --confirm to do it",
                targets.join(", ")
            );
            return Ok(EXIT_USAGE);
        }
        if !targets.is_empty() {
            eprintln!("keel: starting from scratch: deleting {}", targets.join(", "));
        }
        keel_declare::replay::remove_replays(&loaded)
            .map_err(|e| anyhow::anyhow!("removing the output of earlier replays: {e}"))?;
    }
    let webhooks = match keel_declare::notify::webhooks(&loaded) {
        Ok(w) => w,
        Err(e) => return Ok(config_errors(&e)),
    };
    let pipeline = match keel_declare::build(&loaded, |o| {
        o.from_scratch = args.from_scratch;
        o.handle_signals = true;
        for w in &webhooks {
            o.listeners.push(w.clone());
        }
        if let Some(i) = interval {
            o.checkpoint_interval = i;
        }
    }) {
        Ok(p) => p,
        Err(e) => return Ok(config_errors(&e)),
    };
    tracing::info!(pipeline = %pipeline.name(), source = %pipeline.source_description(), checkpoints = %loaded.state_dir().display(), "starting");
    for s in pipeline.sinks() {
        tracing::info!(sink = %s.name, output = %s.describe, guarantee = %s.guarantee, "sink");
    }
    if let Some(code) = serve_metrics(&args, &loaded, Some(pipeline.progress()))? {
        return Ok(code);
    }
    let reporter = Reporter::start(pipeline.progress(), args.quiet || args.json);
    let result = pipeline.run();
    reporter.finish();
    for w in &webhooks {
        // the run's last event goes out before the process exits
        w.flush(std::time::Duration::from_secs(10));
    }
    match result {
        Err(e) => {
            eprintln!(
                "keel: pipeline {}: {e}",
                if matches!(e, keel::PipelineError::Aborted { .. }) {
                    "aborted"
                } else {
                    "failed"
                }
            );
            let refused_at_start = matches!(
                &e,
                keel::PipelineError::Sink {
                    source: keel::SinkError::Fatal(_),
                    ..
                }
            ) || matches!(&e, keel::PipelineError::Checkpoint(m) if m.contains("nothing was changed"));
            if refused_at_start {
                eprintln!("keel: nothing was changed; fix the cause above, then run the same command again");
            } else {
                eprintln!("keel: the last checkpoint is intact; run the same command again to resume");
            }
            Ok(EXIT_FAILED)
        }
        Ok(summary) => {
            let dead_code = loaded
                .config
                .errors
                .exit_code_on_dead_letters
                .unwrap_or(EXIT_DEAD_LETTERS);
            report(&summary, args.json, dead_code);
            Ok(
                if summary.dead_letters > 0 && summary.outcome != Outcome::AlreadyFinished {
                    dead_code
                } else {
                    EXIT_OK
                },
            )
        }
    }
}

fn report(s: &RunSummary, json: bool, dead_code: u8) {
    let outcome = match s.outcome {
        Outcome::Finished => "finished",
        Outcome::Stopped => "stopped",
        Outcome::AlreadyFinished => "already_finished",
        Outcome::Aborted => "aborted",
    };
    if json {
        let v = serde_json::json!({
            "outcome": outcome,
            "restored_from": s.restored_from,
            "records_in": s.records_in,
            "records_out": s.records_out,
            "dead_letters": s.dead_letters,
            "late_dropped": s.late_dropped,
            "checkpoints": s.checkpoints,
            "last_checkpoint": s.last_checkpoint,
            "elapsed_s": s.elapsed.as_secs_f64(),
            "startup_s": s.startup.as_secs_f64(),
            "records_per_s": s.records_per_sec(),
            "totals": { "records_in": s.totals.records_in, "records_out": s.totals.records_out, "dead_letters": s.totals.dead_letters },
            "skipped": s.skipped,
            "retries": s.retries,
            "pauses": s.pauses,
            "sink_failures": s.sink_failures.0,
            "breakers": s.breakers.iter().map(|(n, b)| serde_json::json!({"sink": n, "stats": b})).collect::<Vec<_>>(),
            "failures": s.failures,
        });
        println!("{v}");
        return;
    }
    if s.outcome == Outcome::AlreadyFinished {
        eprintln!(
            "keel: nothing to do: checkpoint {} says this input was fully processed ({} records in, {} out, {} dead-lettered). Use --from-scratch --confirm to run again.",
            s.last_checkpoint.unwrap_or(0),
            s.totals.records_in,
            s.totals.records_out,
            s.totals.dead_letters
        );
        return;
    }
    let resumed = s
        .restored_from
        .map_or(String::new(), |c| format!(", resumed from checkpoint {c}"));
    eprintln!(
        "keel: {outcome}{resumed}: {} records in, {} out, {} dead-lettered{}, {} checkpoints, {:.2}s, {}/s",
        s.records_in,
        s.records_out,
        s.dead_letters,
        if s.late_dropped > 0 {
            format!(", {} late dropped", s.late_dropped)
        } else {
            String::new()
        },
        s.checkpoints,
        s.elapsed.as_secs_f64(),
        human(s.records_per_sec())
    );
    if !s.failures.is_empty() {
        eprintln!("keel: failures by reason and stage:");
        eprintln!("  {:<24} {:<20} {:<12} {:>10}", "reason", "stage", "action", "count");
        for f in &s.failures {
            eprintln!("  {:<24} {:<20} {:<12} {:>10}", f.reason, f.stage, f.action, f.count);
        }
    }
    if s.skipped + s.retries + s.pauses > 0 {
        eprintln!(
            "keel: {} skipped, {} retries, {} pauses",
            s.skipped, s.retries, s.pauses
        );
    }
    for (sink, b) in s.breakers.iter().filter(|(_, b)| b.opened > 0) {
        eprintln!(
            "keel: circuit breaker of sink `{sink}`: opened {}x, reopened {}x, closed {}x",
            b.opened, b.reopened, b.closed
        );
    }
    if s.dead_letters > 0 {
        eprintln!(
            "keel: {} records were dead-lettered (exit code {dead_code}); see `keel dlq list`",
            s.dead_letters
        );
    }
    if s.outcome == Outcome::Stopped {
        match s.last_checkpoint {
            Some(c) => eprintln!("keel: stopped at checkpoint {c}; run the same command again to resume"),
            None => eprintln!("keel: stopped before the first checkpoint; run the same command again to start over"),
        }
    }
}

/// Serves `/metrics`, `/health` and `/ready` when `--metrics-addr` or `[metrics] listen`
/// asks for it; `/ready` follows `progress` (a batch ingestion has none: ready while it
/// runs). `Some(code)` when the address is refused.
fn serve_metrics(
    args: &RunArgs,
    loaded: &keel_declare::Loaded,
    progress: Option<std::sync::Arc<keel::runtime::Progress>>,
) -> Result<Option<u8>> {
    let Some(addr) = args.metrics_addr.as_deref().or(loaded.config.metrics.listen.as_deref()) else {
        return Ok(None);
    };
    let addr = match crate::serve::parse_addr(addr) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("keel: --metrics-addr: {e}");
            return Ok(Some(EXIT_USAGE));
        }
    };
    let ready = crate::serve::Readiness::default();
    match progress {
        Some(p) => ready.watch(p),
        None => ready.worker(),
    }
    let bound = crate::serve::start(addr, ready)?;
    if !args.quiet {
        eprintln!("keel: metrics on http://{bound}/metrics");
    }
    Ok(None)
}

/// `keel run` of a pipeline with an `[ingest]` table: one unit per input file.
fn run_ingest(args: &RunArgs, loaded: &keel_declare::Loaded, plan: &keel_declare::ingest::IngestPlan) -> Result<u8> {
    use keel_declare::ingest;
    if args.from_scratch {
        eprintln!(
            "keel: --from-scratch does not apply to [ingest] pipelines: the ledger decides what runs; \
             use `keel ledger retry` or `keel ledger clear` to process files again"
        );
        return Ok(EXIT_USAGE);
    }
    let interval = match parse_interval(args.checkpoint_interval.as_deref()) {
        Ok(i) => i,
        Err(code) => return Ok(code),
    };
    let webhooks = match keel_declare::notify::webhooks(loaded) {
        Ok(w) => w,
        Err(e) => return Ok(config_errors(&e)),
    };
    if let Some(code) = serve_metrics(args, loaded, None)? {
        return Ok(code);
    }
    std::fs::create_dir_all(loaded.state_dir())?;
    let mut plan = plan.clone();
    ingest::assign_worker(&mut plan, &loaded.state_dir())?;
    let plan = &plan;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&rt, async {
        let ledger = keel_connectors::ledger::open(&plan.ledger, &plan.schema).await?;
        tracing::info!(pipeline = %loaded.config.name, ledger = %ledger.describe(), worker = %plan.settings.worker, "starting batch ingestion");
        let ingestor = ingest::ingestor(plan, ledger);
        let stop = ingestor.shutdown_handle();
        tokio::task::spawn_local(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
                return;
            };
            for n in 0..2 {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                if n == 0 {
                    tracing::warn!("stopping: the current file checkpoints and resumes on the next run (a second signal exits at once)");
                    stop.trigger();
                } else {
                    std::process::exit(130);
                }
            }
        });
        let report = ingest::run(loaded, plan, &ingestor, |o| {
            if let Some(i) = interval {
                o.checkpoint_interval = i;
            }
        })
        .await?;
        anyhow::Ok(report)
    });
    let notify = |event: keel::notify::RunEvent| {
        for w in &webhooks {
            keel::notify::RunListener::on_event(w, &event);
            w.flush(std::time::Duration::from_secs(10));
        }
    };
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            notify(keel::notify::RunEvent::Failed {
                pipeline: loaded.config.name.clone(),
                error: format!("{e:#}"),
            });
            eprintln!("keel: batch ingestion failed: {e:#}");
            eprintln!("keel: files already completed stay completed; run the same command again to go on");
            return Ok(EXIT_FAILED);
        }
    };
    let dead_code = loaded
        .config
        .errors
        .exit_code_on_dead_letters
        .unwrap_or(EXIT_DEAD_LETTERS);
    if !report.failed.is_empty() {
        notify(keel::notify::RunEvent::IngestFilesFailed {
            pipeline: loaded.config.name.clone(),
            failed: report.failed.len() as u64,
            files: report.failed.iter().take(10).map(|f| f.key.clone()).collect(),
        });
    } else if report.dead_letters > 0 {
        notify(keel::notify::RunEvent::FinishedWithDeadLetters {
            pipeline: loaded.config.name.clone(),
            records_in: report.records_in,
            dead_letters: report.dead_letters,
        });
    }
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v["worker"] = serde_json::Value::from(plan.settings.worker.clone());
        println!("{v}");
    } else {
        report_ingest(&report);
    }
    Ok(if !report.failed.is_empty() {
        EXIT_UNITS_FAILED
    } else if report.dead_letters > 0 {
        dead_code
    } else {
        EXIT_OK
    })
}

fn report_ingest(r: &keel::ingest::IngestReport) {
    let mut why = Vec::new();
    for (n, label) in [
        (r.new, "new"),
        (r.changed, "changed"),
        (r.retried, "retried"),
        (r.resumed, "resumed"),
        (r.taken_over, "taken over"),
    ] {
        if n > 0 {
            why.push(format!("{n} {label}"));
        }
    }
    eprintln!(
        "keel: {}{} files: {} completed{}, {} skipped (already ingested), {} failed{}{}; {} records in, {} out, {} dead-lettered; {:.2}s",
        if r.interrupted { "stopped early; " } else { "" },
        r.inputs,
        r.completed,
        if why.is_empty() {
            String::new()
        } else {
            format!(" ({})", why.join(", "))
        },
        r.skipped,
        r.failed.len(),
        if r.busy > 0 {
            format!(", {} held by other workers", r.busy)
        } else {
            String::new()
        },
        if r.lost > 0 {
            format!(", {} lost to other workers", r.lost)
        } else {
            String::new()
        },
        r.records_in,
        r.records_out,
        r.dead_letters,
        r.elapsed.as_secs_f64()
    );
    if !r.failed.is_empty() {
        eprintln!("keel: failed files (rolled back; the next run retries them):");
        for f in &r.failed {
            eprintln!("  {} (attempt {}): {}", f.key, f.attempt, f.reason);
        }
        eprintln!("keel: exit code {EXIT_UNITS_FAILED}; see `keel ledger list-failed`");
    }
    if r.interrupted {
        eprintln!("keel: run the same command again to go on");
    }
}
