//! Writing files with exactly-once commits.
//!
//! # Layout
//!
//! ```text
//! DIR/part-<epoch, 12 digits>-<seq, 3+ digits>.<ext>            committed: visible to readers
//! DIR/.part-<epoch, 12 digits>-<seq, 3+ digits>.<ext>.pending   staged: hidden until commit
//! ```
//!
//! The sequence number of a file within its epoch has at least three digits (`-000` to
//! `-999`, then `-1000` and on); every width is recognised on recovery.
//!
//! # Write failures
//!
//! Each batch is written at the staged file's known good size (`pwrite`). When a write fails
//! part-way (EIO, ENOSPC), the file is cut back to that size before the error is returned, so a
//! retry writes the batch once and the size in the pre-commit is the size on disk. If the cut
//! itself fails, the sink refuses every later write of the epoch (a fatal error): the run
//! stops, and recovery discards the epoch's staged files and replays its records.
//!
//! Records of epoch `k` go to staged files only. `prepare(k)` fsyncs them and the directory;
//! `commit(k)` renames each to its visible name and fsyncs the directory. Readers that skip
//! names starting with `.` or `_` (Flink's convention, and `check.py`'s) never see data of an
//! epoch that could still be rolled back.
//!
//! # Crash cases
//!
//! - During the epoch or before manifest `k` is durable: staged files of `k` exist; recovery
//!   restores an earlier checkpoint and deletes them (the records are replayed).
//! - After manifest `k`, before or during the renames: some files of `k` are staged, some
//!   visible; recovery restores `k` and renames the rest (commit is idempotent).
//! - Visible files of an epoch newer than the restored checkpoint can only exist if a newer
//!   manifest was found corrupt after its commit; recovery removes them, because their
//!   records are replayed (the runtime warns).
//!
//! # Ownership
//!
//! `DIR/.keel-owner.json` (written durably at the first start) names the pipeline whose
//! checkpoints account for the committed files. Recovery deletes committed files only when
//! that pipeline's checkpoint says so; it refuses a directory owned by another pipeline, and
//! committed files with no checkpoint at all (a lost checkpoint directory, or a new pipeline
//! pointed at old output) unless the operator confirmed a start from scratch
//! ([`FileSink::check_owner`]).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel::checkpoint::CheckpointId;
use keel::checkpoint::recovery::{EpochFile, EpochFileAction, EpochFileState, SinkRecovery, plan_epoch_files};
use keel::durable::{self, Ops};
use keel::sink::{Guarantee, OutBatch, RecoveryReport, SealedEpoch, Sink, SinkError};
use serde::{Deserialize, Serialize};

use super::config::FileSinkConfig;

/// Writes records to files in a directory, committing one epoch at a time.
#[derive(Debug)]
pub struct FileSink {
    config: Arc<FileSinkConfig>,
    ops: Ops,
    open: Option<OpenFile>,
    closed: Vec<StagedFile>,
    seq: u32,
    /// Set when a failed write could not be cut back: the epoch's staged data is unknown.
    poisoned: Option<String>,
}

#[derive(Debug)]
struct OpenFile {
    file: File,
    staged: StagedFile,
}

/// One staged file of an epoch.
#[derive(Debug)]
struct StagedFile {
    handle: Option<Arc<File>>,
    name: String,
    bytes: u64,
}

/// The pre-commit of a file sink: the files of the epoch and their sizes.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct FilePreCommit {
    /// Committed names (in the sink directory) with their sizes.
    pub files: Vec<(String, u64)>,
}

impl FileSink {
    /// A sink writing to `config.path`.
    pub fn new(config: FileSinkConfig) -> Self {
        Self::with_ops(config, durable::local())
    }

    /// A sink using the given file operations (tests inject failures this way).
    pub fn with_ops(config: FileSinkConfig, ops: Ops) -> Self {
        FileSink {
            config: Arc::new(config),
            ops,
            open: None,
            closed: Vec::new(),
            seq: 0,
            poisoned: None,
        }
    }

    fn dir(&self) -> &Path {
        &self.config.path
    }

    fn file_name(&self, epoch: CheckpointId, seq: u32) -> String {
        format!(
            "{}-{epoch:012}-{seq:03}.{}",
            self.config.prefix,
            self.config.format.extension()
        )
    }

    fn io(&self, what: &str, e: std::io::Error) -> SinkError {
        SinkError::io(format!("{what} in {}", self.dir().display()), e)
    }

    fn open_file(&mut self, epoch: CheckpointId) -> Result<&mut OpenFile, SinkError> {
        if self.open.is_none() {
            durable::create_dir_durable(&*self.ops, self.dir()).map_err(|e| self.io("creating the directory", e))?;
            let name = self.file_name(epoch, self.seq);
            self.seq += 1;
            let path = self.dir().join(staged_name(&name));
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| self.io("creating a staged file", e))?;
            let mut bytes = 0;
            if let Some(h) = &self.config.header {
                file.write_all(h.as_bytes())
                    .and_then(|_| file.write_all(b"\n"))
                    .map_err(|e| self.io("writing", e))?;
                bytes = h.len() as u64 + 1;
            }
            self.open = Some(OpenFile {
                file,
                staged: StagedFile {
                    handle: None,
                    name,
                    bytes,
                },
            });
        }
        // just set above when it was missing
        self.open
            .as_mut()
            .ok_or_else(|| SinkError::Other("no open file".into()))
    }

    fn close_open(&mut self) -> Result<(), SinkError> {
        if let Some(open) = self.open.take() {
            let mut staged = open.staged;
            staged.handle = Some(Arc::new(open.file));
            self.closed.push(staged);
        }
        Ok(())
    }

    /// Epoch files present in the directory.
    fn list(&self) -> Result<Vec<EpochFile>, SinkError> {
        let entries = match fs::read_dir(self.dir()) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io("listing", e)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.io("listing", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let (visible, state) = match name.strip_prefix('.').and_then(|n| n.strip_suffix(".pending")) {
                Some(v) => (v.to_owned(), EpochFileState::Staged),
                None => (name.clone(), EpochFileState::Committed),
            };
            if let Some(epoch) = self.parse_epoch(&visible) {
                files.push(EpochFile { epoch, state, name });
            }
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    /// The epoch of a visible file name written by this sink, or `None` for other files.
    fn parse_epoch(&self, name: &str) -> Option<CheckpointId> {
        let rest = name.strip_prefix(&self.config.prefix)?.strip_prefix('-')?;
        let rest = rest.strip_suffix(self.config.format.extension())?.strip_suffix('.')?;
        let (epoch, seq) = rest.split_once('-')?;
        if epoch.len() != 12 || seq.len() < 3 || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        epoch.parse().ok()
    }
}

/// The file that names the pipeline owning a sink directory (hidden from readers).
pub const OWNER_FILE: &str = ".keel-owner.json";

/// The content of [`OWNER_FILE`].
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Owner {
    /// Format version of this file.
    keel_owner: u32,
    /// The pipeline whose checkpoints account for the committed files here.
    pipeline: String,
}

impl FileSink {
    /// Refuses to start when recovery would delete committed output that no checkpoint of
    /// this pipeline accounts for (invariant I7), and records this pipeline as the owner of
    /// the directory the first time.
    ///
    /// - owned by another pipeline: refused, whatever is in it;
    /// - committed files of this sink's pattern, and no checkpoint: refused, unless the
    ///   directory is this pipeline's and the operator confirmed a start from scratch;
    /// - committed files and a checkpoint, but no owner file (written by an older keel): the
    ///   checkpoint accounts for them, the directory is adopted.
    fn check_owner(&self, r: &SinkRecovery, files: &[EpochFile]) -> Result<(), SinkError> {
        let path = self.dir().join(OWNER_FILE);
        let owner = match self.ops.read(&path) {
            Ok(bytes) => Some(serde_json::from_slice::<Owner>(&bytes).map_err(|e| {
                SinkError::Fatal(format!(
                    "{} is not a keel owner file ({e}); the directory's owner is unknown, refusing to touch it",
                    path.display()
                ))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(self.io("reading the owner file", e)),
        };
        let dir = self.dir().display();
        if let Some(o) = &owner
            && o.pipeline != r.pipeline
        {
            return Err(SinkError::Fatal(format!(
                "{dir} holds the output of pipeline `{}`, not `{}`: point this sink at another directory \
                 (keel never deletes another pipeline's output)",
                o.pipeline, r.pipeline
            )));
        }
        let committed = files.iter().filter(|f| f.state == EpochFileState::Committed).count();
        if committed > 0 && r.last_checkpoint.is_none() {
            let hint = match (&owner, r.from_scratch) {
                (Some(_), true) => None,
                (Some(_), false) => Some(format!(
                    "{dir} holds {committed} committed files of pipeline `{}`, but the pipeline has no checkpoint \
                     (was its checkpoint directory deleted?): restore the checkpoints to resume, or run with \
                     --from-scratch --confirm to delete that output and start over",
                    r.pipeline
                )),
                (None, _) => Some(format!(
                    "{dir} holds {committed} committed files that no checkpoint accounts for and no keel pipeline \
                     owns ({OWNER_FILE} is missing): move them away or point this sink at another directory"
                )),
            };
            if let Some(hint) = hint {
                return Err(SinkError::Fatal(hint));
            }
        }
        if owner.is_none() {
            durable::create_dir_durable(&*self.ops, self.dir()).map_err(|e| self.io("creating the directory", e))?;
            let body = serde_json::to_vec(&Owner {
                keel_owner: 1,
                pipeline: r.pipeline.clone(),
            })
            .map_err(|e| SinkError::Other(e.to_string()))?;
            durable::write_atomic(&*self.ops, &path, &body).map_err(|e| self.io("writing the owner file", e))?;
        }
        Ok(())
    }
}

fn staged_name(name: &str) -> String {
    format!(".{name}.pending")
}

/// The files of one sealed epoch, finished by the checkpoint thread.
struct SealedFiles {
    dir: PathBuf,
    ops: Ops,
    files: Vec<StagedFile>,
}

impl SealedEpoch for SealedFiles {
    fn prepare(&mut self) -> Result<serde_json::Value, SinkError> {
        for f in &self.files {
            if let Some(h) = &f.handle {
                h.sync_data()
                    .map_err(|e| SinkError::io(format!("fsync of {}", f.name), e))?;
            }
        }
        if !self.files.is_empty() {
            self.ops
                .sync_dir(&self.dir)
                .map_err(|e| SinkError::io(format!("fsync of {}", self.dir.display()), e))?;
        }
        let pre = FilePreCommit {
            files: self.files.iter().map(|f| (f.name.clone(), f.bytes)).collect(),
        };
        serde_json::to_value(pre).map_err(|e| SinkError::Other(e.to_string()))
    }

    fn commit(&mut self) -> Result<(), SinkError> {
        for f in &mut self.files {
            f.handle = None;
            commit_file(&*self.ops, &self.dir, &f.name, Some(f.bytes))?;
        }
        if !self.files.is_empty() {
            self.ops
                .sync_dir(&self.dir)
                .map_err(|e| SinkError::io(format!("fsync of {}", self.dir.display()), e))?;
        }
        Ok(())
    }
}

/// Renames a staged file to its visible name. Idempotent: a file already visible is fine.
fn commit_file(ops: &dyn durable::FileOps, dir: &Path, name: &str, bytes: Option<u64>) -> Result<(), SinkError> {
    let staged = dir.join(staged_name(name));
    let visible = dir.join(name);
    match fs::metadata(&staged) {
        Ok(meta) => {
            if let Some(expected) = bytes
                && meta.len() != expected
            {
                return Err(SinkError::PreCommit(format!(
                    "staged file {} has {} bytes but its checkpoint says {expected}",
                    staged.display(),
                    meta.len()
                )));
            }
            ops.rename(&staged, &visible)
                .map_err(|e| SinkError::io(format!("committing {name}"), e))?;
            keel::crash::crash_point("mid_rename");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if visible.exists() {
                Ok(())
            } else {
                Err(SinkError::PreCommit(format!(
                    "{name}: neither the staged nor the committed file exists"
                )))
            }
        }
        Err(e) => Err(SinkError::io(format!("committing {name}"), e)),
    }
}

impl Sink for FileSink {
    fn describe(&self) -> String {
        format!("files {} ({})", self.dir().display(), self.config.format.name())
    }

    fn guarantee(&self) -> Guarantee {
        Guarantee::ExactlyOnce
    }

    async fn highest_epoch(&mut self) -> Result<Option<CheckpointId>, SinkError> {
        Ok(self.list()?.iter().map(|f| f.epoch).max())
    }

    async fn recover(&mut self, r: &SinkRecovery) -> Result<RecoveryReport, SinkError> {
        let files = self.list()?;
        self.check_owner(r, &files)?;
        let expected: Option<FilePreCommit> = r
            .precommit
            .as_ref()
            .and_then(|p| serde_json::from_value(p.clone()).ok());
        let size_of = |name: &str| {
            expected
                .as_ref()
                .and_then(|p| p.files.iter().find(|(n, _)| n == name).map(|(_, b)| *b))
        };
        let mut report = RecoveryReport::default();
        for action in plan_epoch_files(&files, r.last_checkpoint) {
            match action {
                EpochFileAction::Commit(staged) => {
                    let name = staged.trim_start_matches('.').trim_end_matches(".pending").to_owned();
                    commit_file(&*self.ops, self.dir(), &name, size_of(&name))?;
                    report.committed += 1;
                }
                EpochFileAction::Abort(name) => {
                    self.ops
                        .remove(&self.dir().join(&name))
                        .map_err(|e| self.io("removing a staged file", e))?;
                    report.aborted += 1;
                }
                EpochFileAction::RollBack(name) => {
                    tracing::warn!(file = %name, "rolling back committed output of an epoch after the restored checkpoint");
                    self.ops
                        .remove(&self.dir().join(&name))
                        .map_err(|e| self.io("rolling back", e))?;
                    report.rolled_back += 1;
                }
            }
        }
        if report != RecoveryReport::default() {
            self.ops.sync_dir(self.dir()).map_err(|e| self.io("fsync", e))?;
        }
        Ok(report)
    }

    async fn write(&mut self, epoch: CheckpointId, batch: &OutBatch) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        if let Some(why) = &self.poisoned {
            return Err(SinkError::Fatal(why.clone()));
        }
        let max = self.config.max_file_bytes;
        let dir = self.config.path.clone();
        let ops = self.ops.clone();
        let open = self.open_file(epoch)?;
        let at = open.staged.bytes;
        if let Err(e) = ops.write_at(&open.file, batch.data(), at) {
            let what = format!("writing {} in {}", open.staged.name, dir.display());
            // Cut back to the last good size, so that a retry does not duplicate a torn part.
            if let Err(cut) = open.file.set_len(at) {
                let why = format!("{what}: {e}; cutting the file back to {at} bytes failed too: {cut}");
                self.poisoned = Some(why.clone());
                return Err(SinkError::Fatal(why));
            }
            return Err(SinkError::io(what, e));
        }
        open.staged.bytes += batch.data().len() as u64;
        if open.staged.bytes >= max {
            self.close_open()?;
        }
        Ok(())
    }

    async fn seal(&mut self, _epoch: CheckpointId) -> Result<Box<dyn SealedEpoch>, SinkError> {
        if let Some(why) = &self.poisoned {
            return Err(SinkError::Fatal(why.clone()));
        }
        self.close_open()?;
        self.seq = 0;
        let files = std::mem::take(&mut self.closed);
        Ok(Box::new(SealedFiles {
            dir: self.config.path.clone(),
            ops: self.ops.clone(),
            files,
        }))
    }
}
