//! Writing files with exactly-once commits.
//!
//! # Layout
//!
//! ```text
//! DIR/part-<epoch, 12 digits>-<seq, 3 digits>.<ext>            committed: visible to readers
//! DIR/.part-<epoch, 12 digits>-<seq, 3 digits>.<ext>.pending   staged: hidden until commit
//! ```
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
//!   manifest was lost after its commit; recovery removes them, because their records are
//!   replayed (the runtime warns).

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
        if epoch.len() != 12 || seq.len() != 3 || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        epoch.parse().ok()
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
        let max = self.config.max_file_bytes;
        let dir = self.config.path.clone();
        let open = self.open_file(epoch)?;
        open.file
            .write_all(batch.data())
            .map_err(|e| SinkError::io(format!("writing {} in {}", open.staged.name, dir.display()), e))?;
        open.staged.bytes += batch.data().len() as u64;
        if open.staged.bytes >= max {
            self.close_open()?;
        }
        Ok(())
    }

    async fn seal(&mut self, _epoch: CheckpointId) -> Result<Box<dyn SealedEpoch>, SinkError> {
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
