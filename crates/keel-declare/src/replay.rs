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
//!
//! Fixing before replaying: a replay may send *replacements* instead of the originals, made
//! by a jq program ([`transform`]) or by hand in an exported file ([`export`], then
//! [`read_export`]). Replacements are written into the replay's selection with the envelopes
//! they replace, so a resumed replay sends the same bytes; the envelopes marked are still the
//! originals (the dead-letter files are never edited, which their checksums would refuse).

use std::path::{Path, PathBuf};

use keel::dead_letter::{Envelope, Replay};
use keel::source::MemorySource;
use keel::util::now_ms;
use keel::{Options, Record, RunSummary};
use keel_connectors::file::dead_letters::{DeadLetterDir, Location};

use crate::dead_letters::DeadLetters;

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
    /// The dead letters go to a broker `keel dlq` does not read.
    #[error(
        "the dead letters go to {0}: read them there (each is the original record with its envelope in keel.error.* headers or fields); keel dlq reads dead-letter directories and Kafka topics"
    )]
    NotReadable(String),
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
    /// A jq program given to `--transform` does not compile or fails on a dead letter;
    /// nothing was replayed.
    #[error("--transform: {0}")]
    Transform(String),
    /// The dead-letter topic could not be read or its replays recorded.
    #[error("{0}")]
    Topic(String),
    /// A line of a file given to `--from` is not usable; nothing was replayed.
    #[error("{file}:{line}: {message}")]
    Import {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
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
            _ => None,
        })
        .collect();
    if let Some(d) = &loaded.config.dead_letter
        && crate::dead_letters::not_readable(d).is_none()
    {
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
    if let Some(elsewhere) = crate::dead_letters::not_readable(d) {
        return Err(ReplayError::NotReadable(elsewhere));
    }
    Ok(DeadLetterDir::new(loaded.resolve(&d.path)))
}

/// Dead letters chosen for a replay, with their locations.
pub type Selection = Vec<(Location, Envelope)>;

/// An interrupted replay: its id, target, and selection.
fn unfinished(loaded: &Loaded) -> Result<Option<(String, String, Persisted)>, ReplayError> {
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

/// A persisted selection: the dead letters, each with its replacement if it has one.
type Persisted = Vec<(Location, Envelope, Option<String>)>;

fn read_selection(path: &Path) -> Result<(String, Persisted), ReplayError> {
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()));
    let text = std::fs::read_to_string(path)?;
    let mut lines = text.lines();
    let to = lines.next().unwrap_or("pipeline").trim_start_matches("to ").to_owned();
    let mut out = Vec::new();
    for line in lines {
        let mut cols = line.splitn(3, '\t');
        let (Some(loc), Some(env)) = (cols.next(), cols.next()) else {
            continue;
        };
        let loc: Location = loc.parse().map_err(invalid)?;
        let env = Envelope::decode(env.as_bytes()).map_err(|e| invalid(e.to_string()))?;
        let value = match cols.next() {
            Some(v) => Some(serde_json::from_str::<String>(v).map_err(|e| invalid(e.to_string()))?),
            None => None,
        };
        out.push((loc, env, value));
    }
    Ok((to, out))
}

fn record_of(env: &Envelope, replacement: Option<&str>) -> Record {
    Record {
        key: env.original_key().map(Into::into),
        value: match replacement {
            Some(v) => v.as_bytes().to_vec().into(),
            None => env.original_value().unwrap_or_default().into(),
        },
        headers: env.original_headers(),
        event_time: None,
    }
}

/// The original record of a dead letter as JSON, if it is JSON.
fn original_json(env: &Envelope) -> Option<serde_json::Value> {
    serde_json::from_slice(&env.original_value()?).ok()
}

/// Runs the jq program `code` over the original record of each dead letter: the
/// replacements to replay, one per dead letter. Every dead letter must be JSON and give
/// exactly one output; otherwise nothing is replayed and the error names the dead letter.
pub fn transform(selection: &Selection, code: &str) -> Result<Vec<String>, ReplayError> {
    let program = crate::steps::JqProgram::compile(code).map_err(ReplayError::Transform)?;
    selection
        .iter()
        .map(|(loc, env)| {
            let fail = |what: String| ReplayError::Transform(format!("dead letter {loc}: {what}"));
            let json = original_json(env).ok_or_else(|| {
                fail("the original record is not JSON (fix it by hand: `keel dlq export`, then `replay --from`)".into())
            })?;
            let doc = crate::doc::Doc::from_json(json)
                .map_err(|v| fail(format!("the original record is {v}, not an object")))?;
            let mut out = program.run(&doc).map_err(|f| fail(f.message.clone()))?;
            match out.len() {
                1 => Ok(out.remove(0).to_string()),
                n => Err(fail(format!("the program gave {n} outputs; it must give exactly one"))),
            }
        })
        .collect()
}

/// Writes the dead letters of `selection` as JSON lines to fix by hand: `dead_letter` (the
/// location), `identity`, `reason`, `stage`, `message`, and the original as `record` (when
/// it is JSON) or `text`. Edit `record` or `text` only; [`read_export`] reads the file back.
pub fn export(selection: &Selection, out: &mut impl std::io::Write) -> std::io::Result<()> {
    for (loc, env) in selection {
        let mut line = serde_json::json!({
            "dead_letter": loc.to_string(),
            "identity": env.identity(),
            "reason": env.reason,
            "stage": env.stage,
            "message": env.message,
        });
        match original_json(env) {
            Some(v) => line["record"] = v,
            None => {
                let raw = env.original_value().unwrap_or_default();
                line["text"] = String::from_utf8_lossy(&raw).into_owned().into();
            }
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Reads a file written by [`export`] (and fixed by hand): the dead letters it names, found
/// by identity in `dlq`, and their replacements. A line that does not parse, names a dead
/// letter that is not there, or has neither `record` nor `text` is an error naming the line;
/// nothing is replayed then.
pub fn read_export(dlq: &DeadLetters, path: &Path) -> Result<(Selection, Vec<String>), ReplayError> {
    use std::collections::HashMap;
    let text = std::fs::read_to_string(path)?;
    let mut by_identity: HashMap<String, (Location, Envelope)> = HashMap::new();
    for (loc, env) in dlq.select(&Default::default())? {
        by_identity.entry(env.identity()).or_insert((loc, env));
    }
    let (mut selection, mut values) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fail = |message: String| ReplayError::Import {
            file: path.to_owned(),
            line: i + 1,
            message,
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| fail(format!("not JSON: {e}")))?;
        let identity = v["identity"]
            .as_str()
            .ok_or_else(|| fail("no `identity` (lines come from `keel dlq export`)".into()))?;
        let found = by_identity.get(identity).ok_or_else(|| {
            fail(format!(
                "dead letter {} is not in {} (purged?)",
                v["dead_letter"].as_str().unwrap_or("?"),
                dlq.describe()
            ))
        })?;
        let value = match (&v.get("record"), &v.get("text")) {
            (Some(r), _) => r.to_string(),
            (None, Some(serde_json::Value::String(t))) => t.clone(),
            _ => return Err(fail("neither `record` nor `text`".into())),
        };
        selection.push(found.clone());
        values.push(value);
    }
    Ok((selection, values))
}

/// Replays `selection` (or resumes an interrupted replay first, ignoring `selection`).
/// `to_sink` sends the original records straight to that sink instead of the steps;
/// `replacements` (one per dead letter, in order) are sent instead of the originals.
pub fn replay(
    loaded: &Loaded,
    selection: Selection,
    replacements: Option<Vec<String>>,
    to_sink: Option<&str>,
    options: impl FnOnce(&mut Options),
) -> Result<Option<ReplayReport>, ReplayError> {
    let dlq = DeadLetters::of(loaded)?;
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
            if replacements.as_ref().is_some_and(|r| r.len() != selection.len()) {
                return Err(ReplayError::Transform("one replacement per dead letter".into()));
            }
            let mut text = format!("to {to}\n");
            for (i, (loc, env)) in selection.iter().enumerate() {
                let mut buf = Vec::new();
                env.encode(&mut buf);
                text.push_str(&format!("{loc}\t{}", String::from_utf8_lossy(&buf)));
                if let Some(value) = replacements.as_ref().map(|r| &r[i]) {
                    // a JSON string: no tab or line break inside
                    text.push('\t');
                    text.push_str(&serde_json::Value::String(value.clone()).to_string());
                }
                text.push('\n');
            }
            keel::durable::write_atomic(&keel::durable::LocalOps, &dir.join("selection.jsonl"), text.as_bytes())?;
            let selection = selection
                .into_iter()
                .enumerate()
                .map(|(i, (loc, env))| (loc, env, replacements.as_ref().map(|r| r[i].clone())))
                .collect();
            (id, to, selection, false)
        }
    };
    let dir = replays_dir(loaded).join(&id);
    let records: Vec<Record> = selection
        .iter()
        .map(|(_, e, value)| record_of(e, value.as_deref()))
        .collect();
    let selection: Selection = selection.into_iter().map(|(loc, env, _)| (loc, env)).collect();
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
