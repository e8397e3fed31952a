//! The checkpoint protocol: how keel gets exactly-once output across crashes.
//!
//! # Epochs
//!
//! The work between two checkpoints is an *epoch*. Epoch `k` ends with checkpoint `k`:
//!
//! 1. The coordinator triggers `k` (interval, graceful shutdown, end of input, on demand).
//! 2. Every partition task stops at a record boundary and reports the position after the last
//!    record it fully handled and its watermark. With all tasks stopped, the state store
//!    serialises what changed during the epoch, and every sink (the dead-letter output
//!    included) *seals* epoch `k`: it flushes what the epoch wrote into its staging area.
//!    Processing of epoch `k + 1` resumes right away; the rest runs on the checkpoint thread.
//! 3. The checkpoint thread *prepares* every sealed sink (fsync of its staged data, giving a
//!    serialisable pre-commit), writes the state file, then writes manifest `k` durably: id,
//!    pipeline, config fingerprint, time, positions, watermarks, state file list, sink
//!    pre-commits, format version and checksum ([`manifest`]).
//! 4. Only after manifest `k` is durable: `commit(k)` on every sink (making epoch `k`'s output
//!    visible), then sources are acknowledged (for monitoring only, never for recovery).
//!
//! Checkpoints are written in order: manifest `k + 1` is never written before `commit(k)` has
//! finished, so at most one epoch is ever prepared-but-uncommitted.
//!
//! # Recovery
//!
//! On start, [`recovery::decide`] picks the newest manifest that verifies (a corrupt one is
//! skipped with a warning), and every sink is told to re-run `commit(k)` for the epochs up to
//! `k` (idempotent) and to abort everything after `k`. State and watermarks are restored,
//! sources seek to the saved positions, and the next epoch gets an id larger than any id seen
//! before (in a manifest, corrupt or not, or in a sink's files).
//!
//! # Invariants
//!
//! - I1 output is visible only after a commit; a reader never sees an epoch that may still be
//!   rolled back.
//! - I2 `commit(k)` happens only after manifest `k` is durable; `commit` is idempotent.
//! - I3 positions, state and committed output of checkpoint `k` describe the same records.
//! - I4 checkpoint ids only grow, across restarts too.
//! - I5 dead letters are epoch-scoped like output.
//! - I6 every durable file is temp file, fsync, rename, fsync of the directory
//!   ([`crate::durable`]).

pub mod manifest;
pub mod recovery;
pub mod store;

pub use manifest::{Manifest, PartitionCheckpoint, RunStats, StateFiles};
pub use recovery::{RecoveryPlan, SinkRecovery};
pub use store::{CheckpointStore, FileCheckpointStore, ManifestRead};

/// The id of a checkpoint and of the epoch it closes.
pub type CheckpointId = u64;
