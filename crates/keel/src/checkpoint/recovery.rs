//! Recovery decisions, as pure functions over what was read from storage.
//!
//! [`decide`] chooses the checkpoint to restore; [`plan_epoch_files`] decides what a sink
//! that stages each epoch in its own files must do with the files it finds. Both are pure so
//! that every case is tested exhaustively; the I/O happens in the store and in the sinks.

use serde::{Deserialize, Serialize};

use super::CheckpointId;
use super::manifest::Manifest;
use super::store::ManifestRead;

/// What to restore on start.
#[derive(Clone, Debug, PartialEq)]
pub struct RecoveryPlan {
    /// The newest manifest that verified, if any.
    pub restore: Option<Manifest>,
    /// Manifests that could not be used, with the reason (newer ones deserve a warning).
    pub skipped: Vec<(CheckpointId, String)>,
    /// The id of the first epoch of this run: larger than every id seen before (I4).
    pub next_epoch: CheckpointId,
}

impl RecoveryPlan {
    /// The id of the restored checkpoint, if any.
    pub fn restored_id(&self) -> Option<CheckpointId> {
        self.restore.as_ref().map(|m| m.id)
    }

    /// What a sink named `name` needs to recover.
    pub fn sink(&self, name: &str) -> SinkRecovery {
        SinkRecovery {
            last_checkpoint: self.restored_id(),
            precommit: self.restore.as_ref().and_then(|m| m.sinks.get(name).cloned()),
            pipeline: self.restore.as_ref().map(|m| m.pipeline.clone()).unwrap_or_default(),
            from_scratch: false,
            checkpoint_interval: None,
        }
    }
}

/// Why recovery refuses to start. Nothing has been changed on disk when this is returned.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RecoveryError {
    /// A manifest was written by a newer keel: skipping it would roll back the output of its
    /// epoch, so the run stops instead.
    #[error(
        "checkpoint {id} was written in checkpoint format version {version}, and this build reads version {supported}: run a newer keel (nothing was changed)"
    )]
    NewerFormat {
        /// The manifest's id.
        id: CheckpointId,
        /// Its format version.
        version: u32,
        /// The version this build reads.
        supported: u32,
    },
}

/// Chooses the checkpoint to restore from every manifest read, ascending or not.
///
/// The newest valid manifest wins; corrupt manifests newer than it are skipped (the caller
/// warns). A manifest of a newer format version is never skipped: the whole decision is
/// refused. `highest_epoch_elsewhere` is the highest epoch id found outside the store (in
/// sink files), so that a new epoch never reuses an id even when manifests were lost.
pub fn decide(
    reads: &[ManifestRead],
    highest_epoch_elsewhere: Option<CheckpointId>,
) -> Result<RecoveryPlan, RecoveryError> {
    if let Some(ManifestRead::Unsupported { id, version }) =
        reads.iter().find(|r| matches!(r, ManifestRead::Unsupported { .. }))
    {
        return Err(RecoveryError::NewerFormat {
            id: *id,
            version: *version,
            supported: super::manifest::FORMAT_VERSION,
        });
    }
    let restore = reads
        .iter()
        .filter_map(|r| match r {
            ManifestRead::Valid(m) => Some(m),
            ManifestRead::Corrupt { .. } | ManifestRead::Unsupported { .. } => None,
        })
        .max_by_key(|m| m.id)
        .cloned();
    let restored = restore.as_ref().map(|m| m.id);
    let mut skipped: Vec<(CheckpointId, String)> = reads
        .iter()
        .filter_map(|r| match r {
            ManifestRead::Corrupt { id, reason } if restored.is_none_or(|k| *id > k) => Some((*id, reason.clone())),
            _ => None,
        })
        .collect();
    skipped.sort_by_key(|(id, _)| *id);
    let highest = reads.iter().map(ManifestRead::id).chain(highest_epoch_elsewhere).max();
    Ok(RecoveryPlan {
        restore,
        skipped,
        next_epoch: highest.map_or(1, |h| h + 1),
    })
}

/// What a sink is told on start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SinkRecovery {
    /// The checkpoint being restored; `None` for a fresh start.
    pub last_checkpoint: Option<CheckpointId>,
    /// This sink's pre-commit in that checkpoint, if it had one.
    pub precommit: Option<serde_json::Value>,
    /// The pipeline that runs the sink: sinks that keep output record it as the output's
    /// owner and refuse output owned by another pipeline (invariant I7).
    #[serde(default)]
    pub pipeline: String,
    /// The operator asked to start from scratch and confirmed it: committed output of this
    /// pipeline that no checkpoint accounts for may be deleted. Without it such output is
    /// refused, never deleted.
    #[serde(default)]
    pub from_scratch: bool,
    /// How often the run checkpoints (`None`: only at the end): sinks that rely on a
    /// broker's duplicate window check it against this at start.
    #[serde(skip)]
    pub checkpoint_interval: Option<std::time::Duration>,
}

/// Whether an epoch file is still staged (hidden) or committed (visible).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochFileState {
    /// Written during the epoch, not yet visible to readers.
    Staged,
    /// Made visible by a commit.
    Committed,
}

/// A file of a sink that stages each epoch separately, as found on start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochFile {
    /// The epoch that wrote it.
    pub epoch: CheckpointId,
    /// Staged or committed.
    pub state: EpochFileState,
    /// Its name (the sink knows how to map it to a path).
    pub name: String,
}

/// What to do with one epoch file on start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EpochFileAction {
    /// The epoch is covered by the restored checkpoint but its commit was interrupted:
    /// finish it (idempotent).
    Commit(String),
    /// The epoch is not covered by any valid checkpoint: its records will be replayed, so its
    /// staged output is discarded.
    Abort(String),
    /// Committed output of an epoch no usable checkpoint covers: a newer manifest was lost or
    /// corrupted after its commit, or the checkpoints were deleted (a run from scratch). The
    /// records will be produced again, so the output is removed to keep it exactly-once (the
    /// caller warns loudly).
    RollBack(String),
}

/// Decides, for every epoch file a sink found, what recovery must do with it.
///
/// - staged, epoch <= restored checkpoint: commit (the commit was interrupted);
/// - staged, newer or no checkpoint: abort;
/// - committed, newer than the restored checkpoint or with no checkpoint at all: roll back,
///   so that the output always describes exactly the restored checkpoint (I3);
/// - committed, covered by the checkpoint: keep.
pub fn plan_epoch_files(files: &[EpochFile], last: Option<CheckpointId>) -> Vec<EpochFileAction> {
    let mut actions: Vec<EpochFileAction> = files
        .iter()
        .filter_map(|f| {
            let covered = last.is_some_and(|k| f.epoch <= k);
            match (f.state, covered) {
                (EpochFileState::Staged, true) => Some(EpochFileAction::Commit(f.name.clone())),
                (EpochFileState::Staged, false) => Some(EpochFileAction::Abort(f.name.clone())),
                (EpochFileState::Committed, false) => Some(EpochFileAction::RollBack(f.name.clone())),
                (EpochFileState::Committed, true) => None,
            }
        })
        .collect();
    actions.sort_by(|a, b| action_key(a).cmp(&action_key(b)));
    actions
}

fn action_key(a: &EpochFileAction) -> (u8, &str) {
    match a {
        EpochFileAction::Commit(n) => (0, n),
        EpochFileAction::Abort(n) => (1, n),
        EpochFileAction::RollBack(n) => (2, n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::manifest::sample;

    fn valid(id: u64) -> ManifestRead {
        ManifestRead::Valid(sample(id))
    }
    fn corrupt(id: u64) -> ManifestRead {
        ManifestRead::Corrupt {
            id,
            reason: "checksum mismatch".into(),
        }
    }

    #[test]
    fn no_manifest_starts_fresh_at_epoch_one() {
        let p = decide(&[], None).unwrap();
        assert_eq!((p.restored_id(), p.next_epoch, p.skipped.len()), (None, 1, 0));
    }

    #[test]
    fn newest_valid_manifest_wins() {
        let p = decide(&[valid(1), valid(2), valid(3)], None).unwrap();
        assert_eq!((p.restored_id(), p.next_epoch), (Some(3), 4));
        assert!(p.skipped.is_empty());
    }

    #[test]
    fn corrupt_newest_falls_back_to_previous_and_id_is_not_reused() {
        let p = decide(&[valid(1), valid(2), corrupt(3)], None).unwrap();
        assert_eq!((p.restored_id(), p.next_epoch), (Some(2), 4));
        assert_eq!(p.skipped, vec![(3, "checksum mismatch".into())]);
    }

    #[test]
    fn several_corrupt_newest_fall_back_further() {
        let p = decide(&[valid(4), corrupt(5), corrupt(6)], None).unwrap();
        assert_eq!((p.restored_id(), p.next_epoch), (Some(4), 7));
        assert_eq!(p.skipped.len(), 2);
    }

    #[test]
    fn corrupt_older_than_restored_is_not_a_warning() {
        let p = decide(&[corrupt(1), valid(2)], None).unwrap();
        assert_eq!((p.restored_id(), p.skipped.len()), (Some(2), 0));
    }

    #[test]
    fn all_corrupt_starts_fresh_above_them() {
        let p = decide(&[corrupt(1), corrupt(2)], None).unwrap();
        assert_eq!((p.restored_id(), p.next_epoch, p.skipped.len()), (None, 3, 2));
    }

    #[test]
    fn a_newer_format_version_refuses_the_whole_decision() {
        let newer = ManifestRead::Unsupported { id: 3, version: 2 };
        for reads in [vec![valid(1), valid(2), newer.clone()], vec![newer.clone(), valid(4)]] {
            assert_eq!(
                decide(&reads, None),
                Err(RecoveryError::NewerFormat {
                    id: 3,
                    version: 2,
                    supported: 1
                })
            );
        }
    }

    #[test]
    fn unordered_input_is_fine() {
        let p = decide(&[valid(3), valid(1), valid(2)], None).unwrap();
        assert_eq!(p.restored_id(), Some(3));
    }

    #[test]
    fn epochs_found_in_sinks_push_the_next_id() {
        let p = decide(&[valid(2)], Some(9)).unwrap();
        assert_eq!(p.next_epoch, 10);
        assert_eq!(decide(&[], Some(5)).unwrap().next_epoch, 6);
    }

    fn f(epoch: u64, state: EpochFileState) -> EpochFile {
        EpochFile {
            epoch,
            state,
            name: format!("{epoch}-{state:?}"),
        }
    }

    #[test]
    fn staged_before_at_and_after_the_checkpoint() {
        use EpochFileAction::*;
        use EpochFileState::*;
        let files = [f(4, Staged), f(5, Staged), f(6, Staged), f(7, Staged)];
        let a = plan_epoch_files(&files, Some(5));
        assert_eq!(
            a,
            vec![
                Commit("4-Staged".into()),
                Commit("5-Staged".into()),
                Abort("6-Staged".into()),
                Abort("7-Staged".into())
            ]
        );
    }

    #[test]
    fn committed_before_and_at_are_kept_after_are_rolled_back() {
        use EpochFileAction::*;
        use EpochFileState::*;
        let files = [f(4, Committed), f(5, Committed), f(6, Committed)];
        assert_eq!(plan_epoch_files(&files, Some(5)), vec![RollBack("6-Committed".into())]);
    }

    #[test]
    fn without_checkpoint_everything_is_discarded() {
        use EpochFileAction::*;
        use EpochFileState::*;
        let files = [f(1, Committed), f(2, Staged)];
        assert_eq!(
            plan_epoch_files(&files, None),
            vec![Abort("2-Staged".into()), RollBack("1-Committed".into())]
        );
    }

    #[test]
    fn nothing_found_nothing_to_do() {
        assert!(plan_epoch_files(&[], Some(3)).is_empty());
        assert!(plan_epoch_files(&[], None).is_empty());
    }

    /// Exhaustive over small worlds: every file ends either visible or gone, and exactly the
    /// epochs up to the checkpoint end visible.
    #[test]
    fn exhaustive_small_worlds() {
        let states = [EpochFileState::Staged, EpochFileState::Committed];
        for last in [None, Some(1), Some(2), Some(3)] {
            for mask in 0..(1u32 << 6) {
                // up to 3 epochs, each possibly staged and/or committed
                let mut files = Vec::new();
                for e in 1..=3u64 {
                    for (si, s) in states.iter().enumerate() {
                        if mask & (1 << ((e - 1) * 2 + si as u64)) != 0 {
                            files.push(f(e, *s));
                        }
                    }
                }
                let actions = plan_epoch_files(&files, last);
                for file in &files {
                    let act = actions.iter().find(|a| match a {
                        EpochFileAction::Commit(n) | EpochFileAction::Abort(n) | EpochFileAction::RollBack(n) => {
                            *n == file.name
                        }
                    });
                    let visible_after = match (file.state, act) {
                        (_, Some(EpochFileAction::Commit(_))) => true,
                        (_, Some(_)) => false,
                        (EpochFileState::Committed, None) => true,
                        (EpochFileState::Staged, None) => panic!("staged file left undecided"),
                    };
                    let should = last.is_some_and(|k| file.epoch <= k);
                    assert_eq!(visible_after, should, "last={last:?} file={file:?}");
                }
            }
        }
    }
}
