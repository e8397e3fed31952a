//! Dead letters the topic cannot take: parked in the local dead-letter directory, published
//! into the topic later.
//!
//! A dead-letter epoch is decided once its manifest is durable; if its commit cannot publish
//! it within `fallback_after` (the topic is missing, refused, or its brokers are down), the
//! epoch is *parked* instead of failing the checkpoint:
//!
//! ```text
//!  park   .kafka-<epoch>-<ms>.json      pre-commit (partitions, offsets noted at prepare)
//!         dead-kafka-<epoch>-<ms>.jsonl the envelopes, one per line (what `keel dlq` reads)
//!         then the staging file is removed
//!  drain  (at start, and at a commit at most every 30 s once the topic answers)
//!         a pre-commit without offsets gets them now, written before anything is published;
//!         read back from those offsets, publish the dead letters whose identity is not
//!         there, flush, then remove the segment, then its pre-commit
//! ```
//!
//! Each step is a durable write (temp file, fsync, rename, fsync of the directory), so a
//! crash anywhere leaves either the staging file (the commit is run again at start) or a
//! parked segment (drained later); a pre-commit without its segment is left by a crash and
//! removed. The read-back matches dead letters by identity, not by sequence, so a segment
//! edited in between (`keel dlq purge`, a replay's marks) is still published exactly once:
//! a purged dead letter is not published at all.
//!
//! A dead letter larger than the topic takes is never sent: it stays in the directory, in a
//! `dead-kafka-oversized-<epoch>.jsonl` segment that is not drained.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel::dead_letter::Envelope;
use keel::durable::{self, FileOps as _};
use keel::sink::SinkError;

use super::dead_letters::{DeadLetterMessage, message_of};
use super::sink::{KafkaPreCommit, Outgoing, Publisher, decode_staged, remove_staged};

/// How often a commit tries to drain the fallback directory.
const DRAIN_EVERY: Duration = Duration::from_secs(30);

fn io(context: String) -> impl FnOnce(std::io::Error) -> SinkError {
    move |e| SinkError::io(context, e)
}

/// The pre-commit of a parked segment.
fn precommit_name(base: &str) -> String {
    format!(".{base}.json")
}

fn segment_name(base: &str) -> String {
    format!("dead-{base}.jsonl")
}

impl Publisher {
    /// True when a failed dead-letter commit goes to the fallback directory.
    pub(super) fn can_park(&self) -> bool {
        self.config.dead_letters && self.config.fallback.is_some()
    }

    /// True when an epoch was parked less than 30 s ago and nothing was drained since: the
    /// next epochs are parked without waiting for the topic again.
    pub(super) fn recently_parked(&self) -> bool {
        self.can_park()
            && self
                .parked_at
                .lock()
                .is_ok_and(|t| t.is_some_and(|t| t.elapsed() < DRAIN_EVERY))
    }

    fn fallback_dir(&self) -> Result<&Path, SinkError> {
        self.config
            .fallback
            .as_deref()
            .ok_or_else(|| SinkError::Fatal("kafka dead letters: no fallback directory".into()))
    }

    /// Parks the staged dead letters of `pre` (at `path`) in the fallback directory, because
    /// publishing them failed with `why`.
    pub(super) fn park(&self, pre: &KafkaPreCommit, path: &Path, why: &SinkError) -> Result<(), SinkError> {
        let dir = self.fallback_dir()?;
        let bytes = Self::read_staged(pre, path)?;
        let records = decode_staged(&bytes, false).map_err(SinkError::Fatal)?;
        let mut body = Vec::with_capacity(bytes.len() + records.len());
        for r in &records {
            body.extend_from_slice(r.value);
            body.push(b'\n');
        }
        let base = format!("kafka-{:020}-{}", pre.epoch, keel::util::now_ms());
        let ops = durable::LocalOps;
        durable::create_dir_durable(&ops, dir).map_err(io(format!("creating {}", dir.display())))?;
        let precommit = serde_json::to_vec(pre).map_err(|e| SinkError::Other(e.to_string()))?;
        let pre_path = dir.join(precommit_name(&base));
        durable::write_atomic(&ops, &pre_path, &precommit).map_err(io(format!("writing {}", pre_path.display())))?;
        let segment = dir.join(segment_name(&base));
        durable::write_atomic(&ops, &segment, &body).map_err(io(format!("writing {}", segment.display())))?;
        remove_staged(path)?;
        if let Ok(mut t) = self.parked_at.lock() {
            *t = Some(Instant::now());
        }
        tracing::warn!(
            error = %why,
            epoch = pre.epoch,
            dead_letters = records.len(),
            parked = %segment.display(),
            "the dead-letter topic {} did not take an epoch: its dead letters wait in the fallback directory and go to the topic once it answers",
            self.config.topic
        );
        Ok(())
    }

    /// Publishes dead letters as epoch `pre`; those larger than the topic takes stay in the
    /// fallback directory (or fail the commit without one).
    pub(super) fn publish_dead_letters(
        &self,
        pre: &KafkaPreCommit,
        envelopes: &[Envelope],
        resume: bool,
    ) -> Result<(), SinkError> {
        let limit = self.config.max_message_bytes(self.writer.len());
        let messages: Vec<DeadLetterMessage> = envelopes.iter().map(message_of).collect();
        let (fit, over): (Vec<_>, Vec<_>) = messages.iter().zip(envelopes).partition(|(m, _)| m.size() <= limit);
        if !over.is_empty() {
            self.keep_oversized(pre, &over.iter().map(|(_, e)| *e).collect::<Vec<_>>(), limit)?;
        }
        let outgoing: Vec<Outgoing<'_>> = fit
            .iter()
            .map(|(m, _)| Outgoing {
                topic: None,
                key: m.key.as_deref(),
                value: m.value.as_deref(),
                headers: &m.headers,
                identity: Some(&m.identity),
            })
            .collect();
        self.publish(pre, &outgoing, resume)
    }

    fn keep_oversized(&self, pre: &KafkaPreCommit, envelopes: &[&Envelope], limit: usize) -> Result<(), SinkError> {
        let Ok(dir) = self.fallback_dir() else {
            return Err(SinkError::Fatal(format!(
                "kafka dead letters: {} dead letters of epoch {} are larger than topic {} takes ({limit} bytes) and \
                 there is no fallback directory to keep them in",
                envelopes.len(),
                pre.epoch,
                self.config.topic
            )));
        };
        let mut body = Vec::new();
        for e in envelopes {
            e.encode(&mut body);
            body.push(b'\n');
        }
        let ops = durable::LocalOps;
        durable::create_dir_durable(&ops, dir).map_err(io(format!("creating {}", dir.display())))?;
        // named by epoch: a commit run again after a crash writes the same file again
        let path = dir.join(format!("dead-kafka-oversized-{:020}.jsonl", pre.epoch));
        durable::write_atomic(&ops, &path, &body).map_err(io(format!("writing {}", path.display())))?;
        tracing::warn!(
            count = envelopes.len(),
            kept = %path.display(),
            "dead letters larger than topic {} takes ({limit} bytes) stay in the fallback directory",
            self.config.topic
        );
        Ok(())
    }

    /// Drains the fallback directory if the last attempt is 30 s old; failures are logged
    /// (the dead letters wait for the next attempt).
    pub(super) fn drain_if_due(&self) {
        if !self.can_park() {
            return;
        }
        let due = match self.last_drain.lock() {
            Ok(mut last) => {
                let due = last.is_none_or(|t| t.elapsed() >= DRAIN_EVERY);
                if due {
                    *last = Some(Instant::now());
                }
                due
            }
            Err(_) => false,
        };
        if due {
            self.drain_now();
        }
    }

    /// Drains the fallback directory now; failures are logged.
    pub(super) fn drain_now(&self) {
        match self.drain() {
            Ok(0) => {}
            Ok(n) => {
                if let Ok(mut t) = self.parked_at.lock() {
                    *t = None;
                }
                tracing::info!(dead_letters = n, topic = %self.config.topic, "published parked dead letters");
            }
            Err(e) => {
                tracing::warn!(error = %e, topic = %self.config.topic, "parked dead letters stay in the fallback directory")
            }
        }
    }

    /// Publishes every parked segment into the topic. Returns how many dead letters were
    /// published.
    fn drain(&self) -> Result<usize, SinkError> {
        let dir = self.fallback_dir()?;
        let mut parked = parked(dir)?;
        if parked.is_empty() {
            return Ok(0);
        }
        // one quick question first: a topic still down costs one metadata request
        self.partitions(false)?;
        parked.sort();
        let mut total = 0;
        for base in parked {
            total += self.drain_one(dir, &base)?;
        }
        Ok(total)
    }

    fn drain_one(&self, dir: &Path, base: &str) -> Result<usize, SinkError> {
        let ops = durable::LocalOps;
        let pre_path = dir.join(precommit_name(base));
        let segment = dir.join(segment_name(base));
        let bytes = match fs::read(&segment) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // drained before a crash, or parked only halfway (the staging file was kept)
                return remove(&pre_path);
            }
            Err(e) => return Err(SinkError::io(format!("reading {}", segment.display()), e)),
        };
        let pre_bytes = fs::read(&pre_path).map_err(io(format!("reading {}", pre_path.display())))?;
        let mut pre: KafkaPreCommit = serde_json::from_slice(&pre_bytes)
            .map_err(|e| SinkError::PreCommit(format!("{}: {e}", pre_path.display())))?;
        let mut envelopes = Vec::new();
        for (i, line) in bytes.split(|&b| b == b'\n').enumerate().filter(|(_, l)| !l.is_empty()) {
            let env = Envelope::decode(line).map_err(|e| {
                SinkError::Other(format!(
                    "{}:{}: {e} (the segment stays where it is; repair or remove that line)",
                    segment.display(),
                    i + 1
                ))
            })?;
            envelopes.push(env);
        }
        if pre.from.is_empty() || pre.partitions == 0 {
            // never published: note where this publish starts before anything is sent
            pre.partitions = self.partitions(true)?;
            pre.from = self.end_offsets(pre.partitions)?;
            let json = serde_json::to_vec(&pre).map_err(|e| SinkError::Other(e.to_string()))?;
            durable::write_atomic(&ops, &pre_path, &json).map_err(io(format!("writing {}", pre_path.display())))?;
        }
        self.publish_dead_letters(&pre, &envelopes, true)?;
        remove(&segment)?;
        remove(&pre_path)?;
        Ok(envelopes.len())
    }
}

/// The parked segments in `dir`: the bases of their pre-commits.
fn parked(dir: &Path) -> Result<Vec<String>, SinkError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SinkError::io(format!("listing {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(io(format!("listing {}", dir.display())))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(base) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".json"))
            && base.starts_with("kafka-")
        {
            out.push(base.to_owned());
        }
    }
    Ok(out)
}

fn remove(path: &PathBuf) -> Result<usize, SinkError> {
    let ops = durable::LocalOps;
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(SinkError::io(format!("removing {}", path.display()), e)),
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    ops.sync_dir(dir).map_err(io(format!("syncing {}", dir.display())))?;
    Ok(0)
}
