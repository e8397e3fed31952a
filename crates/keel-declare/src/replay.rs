//! Replaying dead letters: their original records go through the pipeline again (or
//! straight to one sink), exactly once, and each replayed envelope records the replay.
//!
//! A replay gets an id and a directory `<checkpoints>/replays/<id>/` holding the selected
//! envelopes (`selection.jsonl`, written durably before anything runs), the replay's own
//! checkpoints, and `done` once the envelopes are marked. Its output files carry the prefix
//! `<sink prefix>-replay-<id>` and its new dead letters `dead-replay-<id>`, so they never mix
//! with the epochs of the pipeline itself. A replay interrupted by a crash is resumed by the
//! next `keel dlq replay` before anything new is selected: its records are not replayed
//! again (the run resumes from its checkpoints), and the envelopes it marks are found by
//! their identity ([`Envelope::identity`]), so a purge in between cannot make it mark others.

use std::path::{Path, PathBuf};

use keel::dead_letter::{Envelope, Replay};
use keel::source::MemorySource;
use keel::util::now_ms;
use keel::{Options, Record, RunSummary};
use keel_connectors::file::dead_letters::{DeadLetterDir, Location};

use crate::build::{Loaded, Variant, build_variant};
use crate::source::AnySource;

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The pipeline file is not usable.
    #[error("{0}")]
    Config(#[from] crate::ConfigErrors),
    /// Reading or writing replay files failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The replay run failed; running the same command again resumes it.
    #[error("the replay failed: {0}")]
    Pipeline(#[from] keel::PipelineError),
    /// The pipeline has no dead-letter output.
    #[error("the pipeline file has no [dead_letter] output")]
    NoDeadLetters,
    /// Replaying through the steps of a pipeline with keyed state would run outside that
    /// state (a replay has its own checkpoints) and corrupt its results.
    #[error(
        "pipeline `{pipeline}` keeps keyed state (steps {steps}): a replay through its steps would run outside that state \
         and corrupt its results (a second total per key, say). Replay the originals straight to a sink with \
         `--to-sink NAME`, or fix the input and run the pipeline again with `--from-scratch --confirm`"
    )]
    Stateful {
        /// The pipeline.
        pipeline: String,
        /// Its stateful steps, named.
        steps: String,
    },
}

/// The stateful steps of a pipeline (`aggregate`, `dedupe`), by name.
fn stateful_steps(loaded: &Loaded) -> Vec<String> {
    use crate::config::StepConfig;
    loaded
        .config
        .steps
        .iter()
        .filter(|s| matches!(s, StepConfig::Aggregate(_) | StepConfig::Dedupe(_)))
        .map(|s| format!("`{}`", s.given_name().unwrap_or(s.kind())))
        .collect()
}

/// Removes what replays left (their checkpoints and selections, and their output and dead
/// letters in the pipeline's directories): a run from scratch starts over without them, so
/// that no replayed record is both output and dead-lettered again. Returns the files removed.
pub fn remove_replays(loaded: &Loaded) -> std::io::Result<usize> {
    use crate::config::SinkConfig;
    let mut removed = 0;
    let dir = replays_dir(loaded);
    if dir.exists() {
        keel::durable::FileOps::remove_dir_all(&keel::durable::LocalOps, &dir)?;
        removed += 1;
    }
    let mut outputs: Vec<(PathBuf, String)> = loaded
        .config
        .sinks
        .iter()
        .filter_map(|s| match s {
            SinkConfig::Files(f) => Some((
                loaded.resolve(&f.path),
                format!("{}-replay-", f.prefix.as_deref().unwrap_or("part")),
            )),
            SinkConfig::Stdout(_) => None,
        })
        .collect();
    if let Some(d) = &loaded.config.dead_letter {
        outputs.push((loaded.resolve(&d.path), "dead-replay-".into()));
    }
    for (dir, prefix) in outputs {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in entries {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.trim_start_matches('.').starts_with(&prefix) {
                keel::durable::FileOps::remove(&keel::durable::LocalOps, &e.path())?;
                removed += 1;
            }
        }
        keel::durable::FileOps::sync_dir(&keel::durable::LocalOps, &dir)?;
    }
    Ok(removed)
}

/// What a replay did.
#[derive(Debug)]
pub struct ReplayReport {
    /// The replay id.
    pub id: String,
    /// Where records went: `pipeline` or a sink name.
    pub to: String,
    /// Dead letters replayed.
    pub selected: usize,
    /// Envelopes marked as replayed.
    pub marked: usize,
    /// The run (records out, new dead letters, ...).
    pub summary: RunSummary,
    /// True when this resumed an interrupted replay.
    pub resumed: bool,
}

fn replays_dir(loaded: &Loaded) -> PathBuf {
    loaded.state_dir().join("replays")
}

/// The dead-letter directory of a pipeline file.
pub fn dead_letter_dir(loaded: &Loaded) -> Result<DeadLetterDir, ReplayError> {
    let d = loaded.config.dead_letter.as_ref().ok_or(ReplayError::NoDeadLetters)?;
    Ok(DeadLetterDir::new(loaded.resolve(&d.path)))
}

/// Dead letters chosen for a replay, with their locations.
pub type Selection = Vec<(Location, Envelope)>;

/// An interrupted replay: its id, target, and selection.
fn unfinished(loaded: &Loaded) -> Result<Option<(String, String, Selection)>, ReplayError> {
    let dir = replays_dir(loaded);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(None);
    };
    let mut ids: Vec<String> = entries
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .collect();
    ids.sort();
    for id in ids {
        let d = dir.join(&id);
        if d.join("done").exists() || !d.join("selection.jsonl").exists() {
            continue;
        }
        let (to, selection) = read_selection(&d.join("selection.jsonl"))?;
        return Ok(Some((id, to, selection)));
    }
    Ok(None)
}

fn read_selection(path: &Path) -> Result<(String, Selection), ReplayError> {
    let text = std::fs::read_to_string(path)?;
    let mut lines = text.lines();
    let to = lines.next().unwrap_or("pipeline").trim_start_matches("to ").to_owned();
    let mut out = Vec::new();
    for line in lines {
        let Some((loc, env)) = line.split_once('\t') else {
            continue;
        };
        let loc: Location = loc
            .parse()
            .map_err(|e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let env = Envelope::decode(env.as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?;
        out.push((loc, env));
    }
    Ok((to, out))
}

fn record_of(env: &Envelope) -> Record {
    Record {
        key: env.original_key().map(Into::into),
        value: env.original_value().unwrap_or_default().into(),
        headers: env.original_headers(),
        event_time: None,
    }
}

/// Replays `selection` (or resumes an interrupted replay first, ignoring `selection`).
/// `to_sink` sends the original records straight to that sink instead of the steps.
pub fn replay(
    loaded: &Loaded,
    selection: Selection,
    to_sink: Option<&str>,
    options: impl FnOnce(&mut Options),
) -> Result<Option<ReplayReport>, ReplayError> {
    let dlq = dead_letter_dir(loaded)?;
    let (id, to, selection, resumed) = match unfinished(loaded)? {
        Some((id, to, sel)) => (id, to, sel, true),
        None => {
            if selection.is_empty() {
                return Ok(None);
            }
            let id = format!("r{}", now_ms());
            let to = to_sink.unwrap_or("pipeline").to_owned();
            let stateful = stateful_steps(loaded);
            if to == "pipeline" && !stateful.is_empty() {
                return Err(ReplayError::Stateful {
                    pipeline: loaded.config.name.clone(),
                    steps: stateful.join(", "),
                });
            }
            let dir = replays_dir(loaded).join(&id);
            keel::durable::create_dir_durable(&keel::durable::LocalOps, &dir)?;
            let mut text = format!("to {to}\n");
            for (loc, env) in &selection {
                let mut buf = Vec::new();
                env.encode(&mut buf);
                text.push_str(&format!("{loc}\t{}\n", String::from_utf8_lossy(&buf)));
            }
            keel::durable::write_atomic(&keel::durable::LocalOps, &dir.join("selection.jsonl"), text.as_bytes())?;
            (id, to, selection, false)
        }
    };
    let dir = replays_dir(loaded).join(&id);
    let records: Vec<Record> = selection.iter().map(|(_, e)| record_of(e)).collect();
    let variant = Variant {
        source: Some(AnySource::Memory(MemorySource::new(
            format!("replay {id}"),
            vec![("replay".into(), records)],
        ))),
        file_prefix: Some(format!("replay-{id}")),
        state_dir: Some(dir.clone()),
        only_sink: (to != "pipeline").then(|| to.clone()),
        outputs: None,
    };
    let pipeline = build_variant(loaded, variant, options)?;
    let summary = pipeline.run()?;
    keel::crash::crash_point("replay_before_mark");
    // by identity, not line: a purge since the selection may have moved the lines
    let marked = dlq.mark_replayed(
        &selection,
        &Replay {
            at_ms: now_ms(),
            id: id.clone(),
            to: to.clone(),
        },
    )?;
    keel::durable::write_atomic(&keel::durable::LocalOps, &dir.join("done"), b"done\n")?;
    Ok(Some(ReplayReport {
        id,
        to,
        selected: selection.len(),
        marked,
        summary,
        resumed,
    }))
}
