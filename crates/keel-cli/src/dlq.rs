//! `keel dlq list|show|stats|replay|purge`: operating the dead letters of a pipeline.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use keel::dead_letter::Envelope;
use keel_connectors::file::dead_letters::{DeadLetterDir, Filter, Location};
use keel_declare::dead_letters::DeadLetters;
use keel_declare::replay::{self, ReplayError};

use crate::{EXIT_DEAD_LETTERS, EXIT_FAILED, EXIT_OK, EXIT_USAGE};

/// Where the dead letters are: a pipeline file, or a dead-letter directory (of a Rust
/// pipeline, say) with `--dir`.
#[derive(clap::Args, Clone)]
pub struct Source {
    /// The pipeline file (its `[dead_letter] path` is used).
    #[arg(required_unless_present = "dir")]
    pipeline: Option<PathBuf>,
    /// A dead-letter directory, instead of a pipeline file (replay needs the pipeline file).
    #[arg(long, conflicts_with = "pipeline")]
    dir: Option<PathBuf>,
}

impl Source {
    /// The pipeline (when given by file) and its dead-letter directory.
    fn open(&self) -> Result<(Option<keel_declare::Loaded>, DeadLetters)> {
        match (&self.pipeline, &self.dir) {
            (_, Some(d)) => Ok((None, DeadLetters::in_dir(DeadLetterDir::new(d)))),
            (Some(p), None) => {
                let l = loaded(p)?;
                let d = DeadLetters::of(&l).map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok((Some(l), d))
            }
            (None, None) => Err(crate::UsageError("name a pipeline file or --dir DIR".into()).into()),
        }
    }
}

/// Which dead letters a command concerns.
#[derive(clap::Args, Clone)]
pub struct Select {
    #[command(flatten)]
    source: Source,
    /// Only this reason.
    #[arg(long)]
    reason: Option<String>,
    /// Only this stage.
    #[arg(long)]
    stage: Option<String>,
    /// Only this partition.
    #[arg(long)]
    partition: Option<String>,
    /// Last failure at or after this time: RFC 3339, or a duration ago (`2h`).
    #[arg(long)]
    since: Option<String>,
    /// Last failure before this time: RFC 3339, or a duration ago.
    #[arg(long)]
    until: Option<String>,
    /// Only dead letters never replayed.
    #[arg(long, conflicts_with = "replayed")]
    not_replayed: bool,
    /// Only dead letters replayed at least once.
    #[arg(long)]
    replayed: bool,
    /// At most this many.
    #[arg(long)]
    limit: Option<usize>,
}

/// Subcommands.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// List dead letters, oldest first.
    List {
        #[command(flatten)]
        select: Select,
        /// One JSON object per line (the envelope and its location).
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter in full: `show PIPELINE LOCATION` or `show --dir DIR LOCATION`.
    Show {
        /// The pipeline file, then the location (FILE:LINE, as `list` prints it); with
        /// `--dir`, the location only.
        #[arg(num_args = 1..=2, required = true, value_name = "[PIPELINE] LOCATION")]
        args: Vec<String>,
        /// A dead-letter directory, instead of a pipeline file.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Count dead letters by reason, stage and partition.
    Stats {
        #[command(flatten)]
        select: Select,
        /// Output JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send the original records back through the pipeline (or straight to one sink).
    Replay {
        #[command(flatten)]
        select: Select,
        /// Write the original records to this sink, skipping the steps.
        #[arg(long)]
        to_sink: Option<String>,
        /// Replay dead letters that were replayed before too.
        #[arg(long)]
        force: bool,
        /// Print what would be replayed, replay nothing.
        #[arg(long)]
        dry_run: bool,
        /// A jq program that fixes each original record before it is replayed (`'.amount |=
        /// fabs'`); it must give one output per record, or nothing is replayed.
        #[arg(long, value_name = "JQ")]
        transform: Option<String>,
        /// Replay the records of a file written by `keel dlq export` and fixed by hand, in
        /// place of the originals (the filters do not apply; the file names its dead letters).
        #[arg(long, value_name = "FILE", conflicts_with = "transform")]
        from: Option<PathBuf>,
    },
    /// Write the original records as JSON lines to fix by hand (`record`, or `text` when the
    /// original is not JSON), then replay them with `keel dlq replay --from FILE`.
    Export {
        #[command(flatten)]
        select: Select,
        /// Write here instead of stdout.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Delete dead letters.
    Purge {
        #[command(flatten)]
        select: Select,
        /// Required: this deletes dead letters.
        #[arg(long)]
        confirm: bool,
    },
}

fn parse_time(s: &str) -> Result<u64> {
    if let Some(ms) = keel_declare::steps::parse_rfc3339(s) {
        return Ok(ms.max(0) as u64);
    }
    let ago = keel_declare::config::parse_duration(s).map_err(|e| anyhow::anyhow!("{e}; or give an RFC 3339 time"))?;
    Ok(keel::util::now_ms().saturating_sub(ago.as_millis() as u64))
}

impl Select {
    fn filter(&self) -> Result<Filter> {
        Ok(Filter {
            reason: self.reason.clone(),
            stage: self.stage.clone(),
            partition: self.partition.clone(),
            since_ms: self.since.as_deref().map(parse_time).transpose()?,
            until_ms: self.until.as_deref().map(parse_time).transpose()?,
            replayed: match (self.replayed, self.not_replayed) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
        })
    }
}

fn loaded(path: &std::path::Path) -> Result<keel_declare::Loaded> {
    keel_declare::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn selected(select: &Select) -> Result<(Option<keel_declare::Loaded>, DeadLetters, replay::Selection)> {
    let (l, d) = select.source.open()?;
    let mut v = d
        .select(&select.filter()?)
        .with_context(|| format!("reading {}", d.describe()))?;
    // oldest first (by the time of the last failure, then by place), before `--limit`
    v.sort_by(|a, b| (a.1.last_failed_ms, &a.0).cmp(&(b.1.last_failed_ms, &b.0)));
    if let Some(n) = select.limit {
        v.truncate(n);
    }
    Ok((l, d, v))
}

fn one_line(loc: &Location, e: &Envelope) -> String {
    let raw = e
        .raw
        .clone()
        .unwrap_or_else(|| format!("<{} bytes, base64>", e.raw_b64.as_ref().map_or(0, |b| b.len())));
    let raw: String = raw.chars().take(60).collect();
    let id = e.id.as_ref().map_or(String::new(), |v| format!(" id={v}"));
    let replayed = if e.replays.is_empty() {
        String::new()
    } else {
        format!(" replayed×{}", e.replays.len())
    };
    format!(
        "{loc}  {}  {} in {}  {} {}{id}{replayed}  {raw:?}",
        keel_declare::steps::format_ms(e.last_failed_ms),
        e.reason,
        e.stage,
        e.partition,
        position(&e.position)
    )
}

/// A source position as `list` shows it: `@1460` for a number (in files, the byte offset
/// just after the record), the JSON text otherwise.
fn position(p: &serde_json::Value) -> String {
    match p {
        serde_json::Value::Number(n) => format!("@{n}"),
        other => format!("@{other}"),
    }
}

/// Runs a subcommand.
pub fn run(cmd: Cmd) -> Result<u8> {
    match cmd {
        Cmd::List { select, json } => {
            let (_, d, sel) = selected(&select)?;
            for (loc, e) in &sel {
                if json {
                    let mut v = serde_json::to_value(e)?;
                    v["location"] = loc.to_string().into();
                    println!("{v}");
                } else {
                    println!("{}", one_line(loc, e));
                }
            }
            let corrupt = d.read()?.iter().filter(|e| e.envelope.is_err()).count();
            if corrupt > 0 {
                eprintln!("keel: {corrupt} dead-letter lines fail their checksum (see `keel dlq stats`)");
            }
            if sel.is_empty() && !json {
                eprintln!("no dead letters match in {}", d.describe());
            }
            Ok(EXIT_OK)
        }
        Cmd::Show { args, dir } => {
            let (source, location) = match (args.as_slice(), dir) {
                ([loc], Some(dir)) => (
                    Source {
                        pipeline: None,
                        dir: Some(dir),
                    },
                    loc.clone(),
                ),
                ([pipeline, loc], None) => (
                    Source {
                        pipeline: Some(pipeline.into()),
                        dir: None,
                    },
                    loc.clone(),
                ),
                _ => {
                    return Err(crate::UsageError(
                        "usage: keel dlq show PIPELINE LOCATION, or keel dlq show --dir DIR LOCATION".into(),
                    )
                    .into());
                }
            };
            let (_, d) = source.open()?;
            let at: Location = location.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            match d.get(&at)? {
                None => {
                    eprintln!("no dead letter at {at}");
                    Ok(EXIT_USAGE)
                }
                Some(entry) => match entry.envelope {
                    Ok(e) => {
                        println!("{}", serde_json::to_string_pretty(&e)?);
                        Ok(EXIT_OK)
                    }
                    Err(err) => {
                        eprintln!("{at}: corrupt: {err}");
                        Ok(EXIT_DEAD_LETTERS)
                    }
                },
            }
        }
        Cmd::Stats { select, json } => {
            let (_, d, sel) = selected(&select)?;
            let corrupt = d.read()?.iter().filter(|e| e.envelope.is_err()).count();
            let mut by_reason: BTreeMap<(String, String), u64> = BTreeMap::new();
            let mut by_partition: BTreeMap<String, u64> = BTreeMap::new();
            let mut replayed = 0;
            for (_, e) in &sel {
                *by_reason.entry((e.reason.clone(), e.stage.clone())).or_default() += 1;
                *by_partition.entry(e.partition.clone()).or_default() += 1;
                replayed += usize::from(!e.replays.is_empty());
            }
            if json {
                let v = serde_json::json!({
                    "total": sel.len(),
                    "replayed": replayed,
                    "corrupt": corrupt,
                    "by_reason": by_reason.iter().map(|((r, s), n)| serde_json::json!({"reason": r, "stage": s, "count": n})).collect::<Vec<_>>(),
                    "by_partition": by_partition,
                });
                println!("{v}");
            } else {
                println!(
                    "{} dead letters ({replayed} replayed, {corrupt} corrupt lines) in {}",
                    sel.len(),
                    d.describe()
                );
                let mut rows: Vec<_> = by_reason.into_iter().collect();
                rows.sort_by_key(|r| std::cmp::Reverse(r.1));
                println!("{:<24} {:<20} {:>10}", "reason", "stage", "count");
                for ((r, s), n) in rows {
                    println!("{r:<24} {s:<20} {n:>10}");
                }
                println!("\n{:<44} {:>10}", "partition", "count");
                for (p, n) in by_partition {
                    println!("{p:<44} {n:>10}");
                }
            }
            Ok(EXIT_OK)
        }
        Cmd::Export { select, output } => {
            let (_, _, sel) = selected(&select)?;
            match output {
                Some(path) => {
                    let mut buf = Vec::new();
                    replay::export(&sel, &mut buf)?;
                    keel::durable::write_atomic(&keel::durable::LocalOps, &path, &buf)
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!(
                        "wrote {} dead letters to {}; fix `record` (or `text`), then `keel dlq replay PIPELINE --from {}`",
                        sel.len(),
                        path.display(),
                        path.display()
                    );
                }
                None => replay::export(&sel, &mut std::io::stdout().lock())?,
            }
            Ok(EXIT_OK)
        }
        Cmd::Replay {
            select,
            to_sink,
            force,
            dry_run,
            transform,
            from,
        } => {
            let mut select = select;
            if !force && !select.replayed {
                select.not_replayed = true;
            }
            let (l, d, sel) = selected(&select)?;
            let Some(l) = l else {
                return Err(
                    crate::UsageError("replay needs the pipeline file: it runs the records through it".into()).into(),
                );
            };
            let fixed = match (&transform, &from) {
                (Some(code), _) => replay::transform(&sel, code).map(|v| (sel, Some(v))),
                (None, Some(file)) => replay::read_export(&d, file).map(|(sel, v)| {
                    // already replayed ones stay out unless --force, as with filters
                    let (sel, v): (Vec<_>, Vec<_>) = sel
                        .into_iter()
                        .zip(v)
                        .filter(|((_, e), _)| force || e.replays.is_empty())
                        .unzip();
                    (sel, Some(v))
                }),
                (None, None) => Ok((sel, None)),
            };
            let (sel, replacements) = match fixed {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("keel: {e}");
                    return Ok(EXIT_USAGE);
                }
            };
            if dry_run {
                for (loc, e) in &sel {
                    println!("{}", one_line(loc, e));
                }
                println!(
                    "{} dead letters would be replayed to {}",
                    sel.len(),
                    to_sink.as_deref().unwrap_or("the pipeline")
                );
                return Ok(EXIT_OK);
            }
            match replay::replay(&l, sel, replacements, to_sink.as_deref(), |o| o.handle_signals = true) {
                Ok(None) => {
                    println!("nothing to replay (already replayed ones need --force)");
                    Ok(EXIT_OK)
                }
                Ok(Some(r)) => {
                    let s = &r.summary;
                    println!(
                        "replay {}{}: {} dead letters to {}: {} records out, {} dead-lettered again; {} envelopes marked",
                        r.id,
                        if r.resumed {
                            " (resumed an interrupted replay)"
                        } else {
                            ""
                        },
                        r.selected,
                        r.to,
                        s.records_out,
                        s.dead_letters,
                        r.marked
                    );
                    Ok(if s.dead_letters > 0 { EXIT_DEAD_LETTERS } else { EXIT_OK })
                }
                Err(ReplayError::Config(e)) => {
                    eprintln!("keel: config error: {e}");
                    Ok(EXIT_USAGE)
                }
                Err(e @ ReplayError::Stateful { .. }) => {
                    eprintln!("keel: {e}");
                    Ok(EXIT_USAGE)
                }
                Err(e) => {
                    eprintln!("keel: {e}");
                    eprintln!("keel: run the same command again to resume the replay");
                    Ok(EXIT_FAILED)
                }
            }
        }
        Cmd::Purge { select, confirm } => {
            let (_, d) = select.source.open()?;
            let filter = select.filter()?;
            if select.limit.is_some() {
                bail!("--limit does not apply to purge");
            }
            if !confirm {
                let n = d.select(&filter)?.len();
                eprintln!("purge would delete {n} dead letters; add --confirm to proceed");
                return Ok(EXIT_USAGE);
            }
            let (n, on_topic) = d.purge(&filter).with_context(|| format!("purging {}", d.describe()))?;
            println!("deleted {n} dead letters");
            if on_topic > 0 {
                eprintln!(
                    "keel: {on_topic} selected dead letters are on the Kafka topic, which keel does not edit: \
                     its retention removes them"
                );
            }
            Ok(EXIT_OK)
        }
    }
}
