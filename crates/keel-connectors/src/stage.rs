//! Staged epochs: the durable local copy of an epoch that a message sink publishes at its
//! commit (DESIGN §3, option (a): stage, then publish after the manifest).
//!
//! ```text
//!  write    records of epoch E ─► <staging>/epoch-E.stage (appended)
//!  seal     the file is closed for E
//!  prepare  fsync file + directory; the publisher notes where E's records can only come
//!           after (a stream's last sequence...) ─► pre-commit {epoch, records, mark}
//!  ── manifest E durable: the epoch is decided ──
//!  commit   publish E's records (idempotently), then delete the file
//! ```
//!
//! [`StagedSink`] runs that protocol for any [`Publish`]er: NATS JetStream and Redis Streams
//! share it (Kafka has its own, with routing and a fallback). On start, the restored
//! checkpoint's epoch is published again with `resume` set (the publisher skips what an
//! interrupted publish already did), and staged epochs newer than the checkpoint are
//! discarded: they were never decided, and their records will be read again.
//!
//! A staging file is a sequence of `u32 key length (u32::MAX: no key) | key | u32 value
//! length | value`, little-endian; the Kafka sink puts `u16 topic length | topic` before each
//! record when it routes.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel::checkpoint::CheckpointId;
use keel::checkpoint::recovery::SinkRecovery;
use keel::sink::{EmptyEpoch, Framing, Guarantee, OutBatch, RecordCheck, RecoveryReport, SealedEpoch, Sink, SinkError};
use serde::{Deserialize, Serialize};

/// `u16 topic length | topic`, before a routed record.
#[cfg(feature = "kafka")]
pub(crate) fn encode_route(out: &mut impl Write, topic: &str) -> std::io::Result<()> {
    let len = u16::try_from(topic.len()).map_err(|_| std::io::Error::other("a topic name over 64 KiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(topic.as_bytes())
}

/// `u32 key length (u32::MAX: no key) | key | u32 value length | value`, little-endian.
pub(crate) fn encode_staged(out: &mut impl Write, key: Option<&[u8]>, value: &[u8]) -> std::io::Result<()> {
    let len = |n: usize| u32::try_from(n).map_err(|_| std::io::Error::other("a record over 4 GiB"));
    match key {
        Some(k) => {
            out.write_all(&len(k.len())?.to_le_bytes())?;
            out.write_all(k)?;
        }
        None => out.write_all(&u32::MAX.to_le_bytes())?,
    }
    out.write_all(&len(value.len())?.to_le_bytes())?;
    out.write_all(value)
}

/// A staged record, borrowed from its staging file.
#[derive(Debug, PartialEq, Eq)]
pub struct Staged<'a> {
    /// Its destination (a Kafka topic), when the sink routes records by a field.
    pub topic: Option<&'a str>,
    /// The key, if the encoder made one.
    pub key: Option<&'a [u8]>,
    /// The encoded value.
    pub value: &'a [u8],
}

/// The records of a staging file; `routed` when each has its topic first.
pub(crate) fn decode_staged(bytes: &[u8], routed: bool) -> Result<Vec<Staged<'_>>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let take = |n: usize, at: &mut usize| -> Result<&[u8], String> {
        let s = bytes
            .get(*at..*at + n)
            .ok_or_else(|| format!("cut short at byte {}", *at))?;
        *at += n;
        Ok(s)
    };
    let u32_at = |at: &mut usize| -> Result<u32, String> {
        let b = bytes
            .get(*at..*at + 4)
            .ok_or_else(|| format!("cut short at byte {}", *at))?;
        *at += 4;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    while at < bytes.len() {
        let topic = if routed {
            let b = take(2, &mut at)?;
            let n = u16::from_le_bytes([b[0], b[1]]) as usize;
            let t = take(n, &mut at)?;
            Some(std::str::from_utf8(t).map_err(|_| format!("a topic that is not UTF-8 before byte {at}"))?)
        } else {
            None
        };
        let klen = u32_at(&mut at)?;
        let key = if klen == u32::MAX {
            None
        } else {
            Some(take(klen as usize, &mut at)?)
        };
        let vlen = u32_at(&mut at)?;
        let value = take(vlen as usize, &mut at)?;
        out.push(Staged { topic, key, value });
    }
    Ok(out)
}

/// Where a message sink publishes its epochs: the part of a [`StagedSink`] that knows the
/// service. Every call but [`Publish::describe`] and [`Publish::max_record_bytes`] may block
/// (they run on the checkpoint thread, or on a blocking thread at start).
pub trait Publish: Send + Sync + 'static {
    /// The destination, for logs (`nats nats://host:4222 subject orders`); no password.
    fn describe(&self) -> String;

    /// The largest record the destination takes, once [`Publish::start`] has learnt it.
    fn max_record_bytes(&self) -> Option<usize> {
        None
    }

    /// A check of each record ([`Sink::record_check`]), once [`Publish::start`] has run.
    fn record_check(&self) -> Option<RecordCheck> {
        None
    }

    /// At start, before any write: connect and check the destination, so that a missing
    /// stream fails the run before any work. `writer` is `<pipeline>/<sink>`: what the
    /// publisher's records are recognised by. Called once, before any other blocking call.
    fn start(&self, writer: &str, recovery: &SinkRecovery) -> Result<(), SinkError>;

    /// The highest epoch the destination has from this sink (a Delta table's `txn` version),
    /// so that new epochs are numbered above it. Called before [`Publish::start`].
    fn highest_epoch(&self) -> Result<Option<CheckpointId>, SinkError> {
        Ok(None)
    }

    /// At start, after [`Publish::start`]: removes output of epochs after `restored` that a
    /// lost checkpoint had decided (their records will be produced again), where the
    /// destination can; with no checkpoint at all, only when the run is `from_scratch`
    /// (else such output is refused, never deleted). Returns how many objects it removed.
    fn roll_back_after(&self, restored: Option<CheckpointId>, from_scratch: bool) -> Result<usize, SinkError> {
        let _ = (restored, from_scratch);
        Ok(0)
    }

    /// At prepare: what a later recovery needs to find what an interrupted publish of
    /// `epoch` did (stored in the manifest).
    fn mark(&self, epoch: CheckpointId) -> Result<serde_json::Value, SinkError>;

    /// Publishes the records of `epoch`, record `i` with sequence `i`. With `resume` (after
    /// a crash), some of them may be published already: only the others must be. Retries
    /// transient failures for as long as the publisher's patience allows.
    fn publish(
        &self,
        epoch: CheckpointId,
        mark: &serde_json::Value,
        records: &[Staged<'_>],
        resume: bool,
    ) -> Result<(), SinkError>;
}

/// What a staged sink keeps in the manifest for an epoch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StagedPreCommit {
    /// The epoch.
    pub epoch: CheckpointId,
    /// How many records its staging file holds.
    pub records: u64,
    /// The publisher's [`Publish::mark`].
    pub mark: serde_json::Value,
}

/// An exactly-once sink that stages each epoch in a local file and publishes it at the
/// commit, through `P`.
pub struct StagedSink<P> {
    name: String,
    dir: PathBuf,
    publisher: Arc<P>,
    open: Option<Open>,
}

struct Open {
    epoch: CheckpointId,
    path: PathBuf,
    out: BufWriter<File>,
    records: u64,
}

impl<P> std::fmt::Debug for StagedSink<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedSink")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .finish()
    }
}

fn stage_path(dir: &Path, epoch: CheckpointId) -> PathBuf {
    dir.join(format!("epoch-{epoch:020}.stage"))
}

fn stage_epoch(name: &str) -> Option<CheckpointId> {
    name.strip_prefix("epoch-")?.strip_suffix(".stage")?.parse().ok()
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> SinkError {
    move |e| SinkError::io(context, e)
}

/// The epochs with a staging file in `dir`, ascending.
fn staged_epochs(dir: &Path) -> Result<Vec<CheckpointId>, SinkError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SinkError::io(format!("listing {}", dir.display()), e)),
    };
    let mut epochs = Vec::new();
    for e in entries {
        let e = e.map_err(io(format!("listing {}", dir.display())))?;
        if let Some(id) = e.file_name().to_str().and_then(stage_epoch) {
            epochs.push(id);
        }
    }
    epochs.sort_unstable();
    Ok(epochs)
}

fn remove_staged(path: &Path) -> Result<(), SinkError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SinkError::io(format!("removing {}", path.display()), e)),
    }
}

/// Reads the staging file of `pre` and publishes it; the file is removed once published.
fn publish_file<P: Publish>(publisher: &P, pre: &StagedPreCommit, path: &Path, resume: bool) -> Result<(), SinkError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io(format!("reading {}", path.display())))?;
    let records = decode_staged(&bytes, false)
        .map_err(|e| SinkError::Fatal(format!("staged epoch {} ({}): {e}", pre.epoch, path.display())))?;
    if records.len() as u64 != pre.records {
        return Err(SinkError::Fatal(format!(
            "staged epoch {} ({}) holds {} records, its checkpoint says {}",
            pre.epoch,
            path.display(),
            records.len(),
            pre.records
        )));
    }
    publisher.publish(pre.epoch, &pre.mark, &records, resume)?;
    remove_staged(path)
}

impl<P: Publish> StagedSink<P> {
    /// A sink named `name` (its name in the pipeline) staging under `dir`.
    pub fn new(name: impl Into<String>, dir: impl Into<PathBuf>, publisher: P) -> Self {
        StagedSink {
            name: name.into(),
            dir: dir.into(),
            publisher: Arc::new(publisher),
            open: None,
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&P) -> Result<T, SinkError> + Send + 'static,
    ) -> Result<T, SinkError> {
        let p = self.publisher.clone();
        tokio::task::spawn_blocking(move || f(&p))
            .await
            .map_err(|e| SinkError::Other(format!("sink `{}`: {e}", self.name)))?
    }
}

impl<P: Publish> Sink for StagedSink<P> {
    fn describe(&self) -> String {
        self.publisher.describe()
    }

    fn guarantee(&self) -> Guarantee {
        Guarantee::ExactlyOnce
    }

    fn framing(&self) -> Framing {
        Framing::Messages
    }

    fn max_record_bytes(&self) -> Option<usize> {
        self.publisher.max_record_bytes()
    }

    fn record_check(&self) -> Option<RecordCheck> {
        self.publisher.record_check()
    }

    async fn highest_epoch(&mut self) -> Result<Option<CheckpointId>, SinkError> {
        let staged = staged_epochs(&self.dir)?.last().copied();
        let published = self.blocking(|p| p.highest_epoch()).await?;
        Ok(staged.max(published))
    }

    async fn recover(&mut self, recovery: &SinkRecovery) -> Result<RecoveryReport, SinkError> {
        let (writer, r) = (format!("{}/{}", recovery.pipeline, self.name), recovery.clone());
        self.blocking(move |p| p.start(&writer, &r)).await?;
        let (restored, scratch) = (recovery.last_checkpoint, recovery.from_scratch);
        let rolled_back = self.blocking(move |p| p.roll_back_after(restored, scratch)).await?;
        keel::durable::create_dir_durable(&*keel::durable::local(), &self.dir)
            .map_err(io(format!("creating {}", self.dir.display())))?;
        let mut report = RecoveryReport {
            rolled_back,
            ..RecoveryReport::default()
        };
        if let Some(pre) = &recovery.precommit {
            let pre: StagedPreCommit = serde_json::from_value(pre.clone())
                .map_err(|e| SinkError::PreCommit(format!("sink `{}`: {e}", self.name)))?;
            let path = stage_path(&self.dir, pre.epoch);
            if path.exists() {
                // the commit of the restored checkpoint may have been interrupted: finish it
                self.blocking(move |p| publish_file(p, &pre, &path, true)).await?;
                report.committed += 1;
            }
        }
        // staged epochs after the restored checkpoint were never decided; earlier ones were
        // published (their files are left only by a crash between publish and delete)
        let restored = recovery.last_checkpoint;
        for epoch in staged_epochs(&self.dir)? {
            remove_staged(&stage_path(&self.dir, epoch))?;
            if restored.is_none_or(|r| epoch > r) {
                report.aborted += 1;
            }
        }
        Ok(report)
    }

    async fn write(&mut self, epoch: CheckpointId, batch: &OutBatch) -> Result<(), SinkError> {
        if let Some(open) = &self.open
            && open.epoch != epoch
        {
            return Err(SinkError::Fatal(format!(
                "sink `{}`: a write for epoch {epoch} while epoch {} is open",
                self.name, open.epoch
            )));
        }
        if self.open.is_none() {
            let path = stage_path(&self.dir, epoch);
            let file = File::create(&path).map_err(io(format!("creating {}", path.display())))?;
            self.open = Some(Open {
                epoch,
                path,
                out: BufWriter::with_capacity(1 << 20, file),
                records: 0,
            });
        }
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        for r in batch.records() {
            encode_staged(&mut open.out, r.key, r.value)
                .map_err(|e| SinkError::Fatal(format!("staging to {}: {e}", open.path.display())))?;
            open.records += 1;
        }
        Ok(())
    }

    async fn seal(&mut self, epoch: CheckpointId) -> Result<Box<dyn SealedEpoch>, SinkError> {
        let Some(open) = self.open.take() else {
            return Ok(Box::new(EmptyEpoch));
        };
        if open.epoch != epoch {
            return Err(SinkError::Fatal(format!(
                "sink `{}`: sealing epoch {epoch} while epoch {} is open",
                self.name, open.epoch
            )));
        }
        Ok(Box::new(SealedStaged {
            open: Some(open),
            pre: None,
            publisher: self.publisher.clone(),
        }))
    }
}

/// A sealed epoch of a [`StagedSink`].
struct SealedStaged<P> {
    open: Option<Open>,
    pre: Option<(StagedPreCommit, PathBuf)>,
    publisher: Arc<P>,
}

impl<P: Publish> SealedEpoch for SealedStaged<P> {
    fn prepare(&mut self) -> Result<serde_json::Value, SinkError> {
        let Some(mut open) = self.open.take() else {
            return Err(SinkError::Fatal("staged sink: prepare called twice".into()));
        };
        let path = open.path.clone();
        open.out.flush().map_err(io(format!("writing {}", path.display())))?;
        open.out
            .get_ref()
            .sync_all()
            .map_err(io(format!("syncing {}", path.display())))?;
        if let Some(dir) = path.parent() {
            keel::durable::local()
                .sync_dir(dir)
                .map_err(io(format!("syncing {}", dir.display())))?;
        }
        let pre = StagedPreCommit {
            epoch: open.epoch,
            records: open.records,
            mark: self.publisher.mark(open.epoch)?,
        };
        let value = serde_json::to_value(&pre).map_err(|e| SinkError::Other(e.to_string()))?;
        self.pre = Some((pre, path));
        Ok(value)
    }

    fn commit(&mut self) -> Result<(), SinkError> {
        let Some((pre, path)) = self.pre.take() else {
            return Err(SinkError::Fatal("staged sink: commit without prepare".into()));
        };
        publish_file(&*self.publisher, &pre, &path, false)
    }
}
