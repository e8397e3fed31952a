//! `keel`: run, validate and operate pipelines declared in TOML.
//!
//! Exit codes (stable, documented in the README):
//! - 0: success.
//! - 1: the pipeline finished, but records were dead-lettered; or a check found problems.
//! - 2: usage or configuration error: nothing was run.
//! - 3: the pipeline failed (the last checkpoint stays valid; run again to resume).
//! - 4: a batch ingestion finished, but some files failed (rolled back; the next run retries
//!   them).
#![forbid(unsafe_code)]

mod checkpoints;
mod dlq;
mod ledger;
mod logging;
mod progress;
mod queue;
mod run;
mod serve;
mod term;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: finished with dead letters, or a check found problems.
pub const EXIT_DEAD_LETTERS: u8 = 1;
/// Exit code: usage or configuration error.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the pipeline failed.
pub const EXIT_FAILED: u8 = 3;
/// Exit code: a batch ingestion finished with failed files.
pub const EXIT_UNITS_FAILED: u8 = 4;

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Fault-tolerant data pipelines with exactly-once checkpoints"
)]
#[command(
    after_help = "Exit codes: 0 ok, 1 finished with dead letters (or a check found problems), \
2 usage or configuration error, 3 pipeline failed, 4 some files of a batch ingestion failed."
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = logging::Format::Text)]
    log_format: logging::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline; a rerun resumes from its last checkpoint.
    Run(run::RunArgs),
    /// Check a pipeline file without running it.
    Validate {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// Inspect and manage checkpoints.
    #[command(subcommand)]
    Checkpoints(checkpoints::Cmd),
    /// Inspect, replay and purge dead letters.
    #[command(subcommand)]
    Dlq(dlq::Cmd),
    /// Inspect and repair the batch-ingestion ledger.
    #[command(subcommand)]
    Ledger(ledger::Cmd),
    /// The durable job queue: enqueue, inspect, and run workers (`work --exec CMD`).
    Queue {
        #[command(flatten)]
        target: queue::Target,
        #[command(subcommand)]
        cmd: queue::Cmd,
    },
    /// (Internal) runs one job's command for `keel queue work --exec` so that it dies with
    /// its worker; see `queue/supervise.rs`.
    #[command(name = "__supervise", hide = true)]
    Supervise {
        /// The program and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        argv: Vec<std::ffi::OsString>,
    },
}

/// A mistake in how keel was called (exit code 2), found after argument parsing.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Exits quietly when stdout is a closed pipe (`keel dlq list | head -1`), as Unix tools do,
/// instead of printing a panic; every other panic is reported as before.
fn exit_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(EXIT_OK.into());
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    exit_quietly_on_broken_pipe();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if let Command::Supervise { argv } = &cli.command {
        // before anything else (no logging, no signal handling): it passes the command's
        // output and end through unchanged
        queue::supervise::supervise(argv);
    }
    let level = match &cli.command {
        Command::Run(a) if a.quiet => "error",
        _ => cli.log_level.as_str(),
    };
    logging::init(level, cli.log_format);
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Validate { pipeline } => run::validate(&pipeline),
        Command::Checkpoints(cmd) => checkpoints::run(cmd),
        Command::Dlq(cmd) => dlq::run(cmd),
        Command::Ledger(cmd) => ledger::run(cmd),
        Command::Queue { target, cmd } => queue::run(target, cmd),
        Command::Supervise { argv } => queue::supervise::supervise(&argv),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("keel: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            // the chain may quote a location: never print its password
            eprintln!("keel: error: {}", keel::util::redact_url(&format!("{e:#}")));
            ExitCode::from(EXIT_FAILED)
        }
    }
}
