//! `keel checkpoints list|show|verify|prune`.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use keel::checkpoint::{CheckpointStore, FileCheckpointStore, Manifest, ManifestRead};
use keel::state::StateStore;
use keel::util::now_ms;

use crate::{EXIT_DEAD_LETTERS, EXIT_OK, EXIT_USAGE};

/// Where the checkpoints are: a pipeline file or a directory.
#[derive(clap::Args)]
pub struct Target {
    /// The pipeline file (its `[checkpoint] path` is used).
    pipeline: Option<PathBuf>,
    /// The checkpoint directory, instead of a pipeline file.
    #[arg(long)]
    state: Option<PathBuf>,
}

/// Subcommands.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// List checkpoints, newest last.
    List {
        #[command(flatten)]
        target: Target,
        /// Output JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Show one manifest (default: the newest valid one).
    Show {
        #[command(flatten)]
        target: Target,
        /// Checkpoint id.
        #[arg(long)]
        id: Option<u64>,
    },
    /// Verify every manifest and the state files it references; exit 1 on problems.
    Verify {
        #[command(flatten)]
        target: Target,
    },
    /// Delete all but the newest N valid checkpoints.
    Prune {
        #[command(flatten)]
        target: Target,
        /// Checkpoints to keep.
        #[arg(long, default_value_t = 3)]
        keep: usize,
        /// Required: this deletes checkpoints.
        #[arg(long)]
        confirm: bool,
    },
}

fn store(t: &Target) -> Result<FileCheckpointStore> {
    match (&t.state, &t.pipeline) {
        (Some(dir), _) => Ok(FileCheckpointStore::new(dir)),
        (None, Some(p)) => {
            let loaded = keel_declare::load(p).map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(FileCheckpointStore::new(loaded.state_dir()))
        }
        (None, None) => Err(crate::UsageError("name a pipeline file or --state DIR".into()).into()),
    }
}

fn age(ms: u64) -> String {
    let s = now_ms().saturating_sub(ms) / 1000;
    match s {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

/// Checks that the state files of `m` exist and verify. Returns problems found.
fn verify_state(store: &FileCheckpointStore, m: &Manifest) -> Vec<String> {
    let mut state = StateStore::new(Default::default());
    match state.restore(&m.state.files, |n| store.read_state(n)) {
        Ok(()) if state.len() as u64 != m.state.keys => {
            vec![format!(
                "state has {} keys, manifest says {}",
                state.len(),
                m.state.keys
            )]
        }
        Ok(()) => Vec::new(),
        Err(e) => vec![e.to_string()],
    }
}

/// Runs a subcommand.
pub fn run(cmd: Cmd) -> Result<u8> {
    match cmd {
        Cmd::List { target, json } => {
            let store = store(&target)?;
            let reads = store.read_all().context("reading checkpoints")?;
            if reads.is_empty() && !json {
                println!("no checkpoints in {}", store.root().display());
            }
            for r in reads {
                match r {
                    ManifestRead::Valid(m) => {
                        if json {
                            println!(
                                "{}",
                                serde_json::json!({"id": m.id, "valid": true, "created_at_ms": m.created_at_ms, "finished": m.finished,
                                    "partitions": m.partitions.len(), "state_keys": m.state.keys, "state_bytes": m.state.bytes,
                                    "records_in": m.stats.records_in, "records_out": m.stats.records_out, "dead_letters": m.stats.dead_letters})
                            );
                        } else {
                            println!(
                                "{:>8}  {:<9} {:<9} partitions={:<4} keys={:<8} in={} out={} dead={}",
                                m.id,
                                age(m.created_at_ms),
                                if m.finished { "finished" } else { "" },
                                m.partitions.len(),
                                m.state.keys,
                                m.stats.records_in,
                                m.stats.records_out,
                                m.stats.dead_letters
                            );
                        }
                    }
                    ManifestRead::Corrupt { id, reason } => {
                        if json {
                            println!("{}", serde_json::json!({"id": id, "valid": false, "error": reason}));
                        } else {
                            println!("{id:>8}  CORRUPT: {reason}");
                        }
                    }
                    ManifestRead::Unsupported { id, version } => {
                        if json {
                            println!(
                                "{}",
                                serde_json::json!({"id": id, "valid": false, "format_version": version})
                            );
                        } else {
                            println!("{id:>8}  NEWER FORMAT: version {version}, written by a newer keel");
                        }
                    }
                }
            }
            Ok(EXIT_OK)
        }
        Cmd::Show { target, id } => {
            let store = store(&target)?;
            let reads = store.read_all()?;
            let found = reads.into_iter().rev().find(|r| match (r, id) {
                (ManifestRead::Valid(_), None) => true,
                (r, Some(i)) => r.id() == i,
                _ => false,
            });
            match found {
                Some(ManifestRead::Valid(m)) => {
                    println!("{}", serde_json::to_string_pretty(&m)?);
                    Ok(EXIT_OK)
                }
                Some(ManifestRead::Corrupt { id, reason }) => {
                    eprintln!("checkpoint {id} is corrupt: {reason}");
                    Ok(EXIT_DEAD_LETTERS)
                }
                Some(ManifestRead::Unsupported { id, version }) => {
                    eprintln!("checkpoint {id} has format version {version}, written by a newer keel");
                    Ok(EXIT_DEAD_LETTERS)
                }
                None => {
                    eprintln!("no such checkpoint in {}", store.root().display());
                    Ok(EXIT_USAGE)
                }
            }
        }
        Cmd::Verify { target } => {
            let store = store(&target)?;
            let reads = store.read_all()?;
            let mut problems = 0;
            let mut newest_ok = None;
            let mut newer = false;
            for r in &reads {
                match r {
                    ManifestRead::Valid(m) => {
                        let issues = verify_state(&store, m);
                        if issues.is_empty() {
                            println!(
                                "checkpoint {}: ok ({} state files, {} keys)",
                                m.id,
                                m.state.files.len(),
                                m.state.keys
                            );
                            newest_ok = Some(m.id);
                        } else {
                            problems += 1;
                            for i in issues {
                                println!("checkpoint {}: STATE PROBLEM: {i}", m.id);
                            }
                        }
                    }
                    ManifestRead::Corrupt { id, reason } => {
                        problems += 1;
                        println!("checkpoint {id}: CORRUPT: {reason}");
                    }
                    ManifestRead::Unsupported { id, version } => {
                        problems += 1;
                        newer = true;
                        println!(
                            "checkpoint {id}: NEWER FORMAT version {version}: a restart with this build is refused"
                        );
                    }
                }
            }
            match newest_ok {
                _ if newer => println!("a restart with this build would be refused: run a newer keel"),
                Some(id) => println!("a restart would resume from checkpoint {id}"),
                None => println!("no usable checkpoint: a restart would start from the beginning"),
            }
            Ok(if problems == 0 { EXIT_OK } else { EXIT_DEAD_LETTERS })
        }
        Cmd::Prune { target, keep, confirm } => {
            let store = store(&target)?;
            if !confirm {
                eprintln!("prune deletes checkpoints; add --confirm to proceed");
                return Ok(EXIT_USAGE);
            }
            let deleted = store.prune(keep).context("pruning")?;
            println!(
                "deleted {} checkpoints{}",
                deleted.len(),
                if deleted.is_empty() {
                    String::new()
                } else {
                    format!(": {deleted:?}")
                }
            );
            Ok(EXIT_OK)
        }
    }
}
