//! Where manifests and state files live.
//!
//! # What a store must guarantee
//!
//! - `write_manifest` is atomic and durable when it returns: a crash leaves the old set of
//!   manifests or the old set plus the complete new one.
//! - `write_state` is durable when it returns; state files are written before the manifest
//!   that references them.
//! - Listing returns every manifest id present, readable or not (so ids never repeat).
//!
//! # File store layout
//!
//! ```text
//! DIR/checkpoints/ckpt-<id, 20 digits>.json    manifests (see manifest.rs for the format)
//! DIR/state/<id, 20 digits>.full|.delta         state files (see crate::state::file)
//! ```
//!
//! Calls may block; the runtime makes them from the checkpoint thread or at start-up.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::CheckpointId;
use super::manifest::{FORMAT_VERSION, Manifest, ManifestError};
use crate::durable::{self, Ops};

/// The result of reading one manifest.
#[derive(Clone, Debug, PartialEq)]
pub enum ManifestRead {
    /// The manifest verified.
    Valid(Manifest),
    /// The manifest was written by a newer keel (its format version is higher than this
    /// build's): it must not be skipped as if it were corrupt, recovery refuses to start.
    Unsupported {
        /// Its id (from its name).
        id: CheckpointId,
        /// The format version in its header.
        version: u32,
    },
    /// The manifest was read whole and fails its checksum or its decoding: it cannot be used.
    Corrupt {
        /// Its id (from its name).
        id: CheckpointId,
        /// Why it cannot be used.
        reason: String,
    },
}

impl ManifestRead {
    /// The id of the manifest.
    pub fn id(&self) -> CheckpointId {
        match self {
            ManifestRead::Valid(m) => m.id,
            ManifestRead::Corrupt { id, .. } | ManifestRead::Unsupported { id, .. } => *id,
        }
    }
}

/// Durable storage for checkpoints.
pub trait CheckpointStore: Send + Sync + std::fmt::Debug + 'static {
    /// A short description for logs (`file:/var/lib/keel/orders`).
    fn describe(&self) -> String;
    /// Ids of all manifests present, ascending, readable or not.
    fn list(&self) -> io::Result<Vec<CheckpointId>>;
    /// Reads and verifies one manifest.
    ///
    /// Contract (invariant I7): `Ok(Corrupt)` only for bytes that were read whole and fail the
    /// checksum or decoding; any failure to read them (EIO, EACCES, EMFILE, a vanished file) is
    /// an `Err`, because nothing is known about the manifest then and recovery must stop
    /// instead of falling back (a fallback rolls back the newer epochs' output).
    fn read(&self, id: CheckpointId) -> io::Result<ManifestRead>;
    /// Writes a manifest atomically and durably.
    fn write_manifest(&self, manifest: &Manifest) -> io::Result<()>;
    /// Deletes a manifest (missing is fine).
    fn delete_manifest(&self, id: CheckpointId) -> io::Result<()>;
    /// Writes a state file durably.
    fn write_state(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Reads a state file.
    fn read_state(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Names of all state files present.
    fn list_state(&self) -> io::Result<Vec<String>>;
    /// Deletes a state file (missing is fine).
    fn delete_state(&self, name: &str) -> io::Result<()>;

    /// Removes temp files that interrupted writes left behind; returns how many.
    fn remove_temp_files(&self) -> io::Result<usize> {
        Ok(0)
    }

    /// Reads every manifest, ascending by id.
    fn read_all(&self) -> io::Result<Vec<ManifestRead>> {
        self.list()?.into_iter().map(|id| self.read(id)).collect()
    }

    /// Keeps the newest `retain` valid manifests (at least one) and deletes older manifests and
    /// every state file that no kept manifest references. Returns the deleted manifest ids.
    fn prune(&self, retain: usize) -> io::Result<Vec<CheckpointId>> {
        self.prune_keeping(retain, &[])
    }

    /// [`CheckpointStore::prune`], keeping the state files named in `protect` as well (a
    /// compaction in flight writes a file that no manifest lists yet).
    fn prune_keeping(&self, retain: usize, protect: &[String]) -> io::Result<Vec<CheckpointId>> {
        let reads = self.read_all()?;
        let valid: Vec<&Manifest> = reads
            .iter()
            .filter_map(|r| match r {
                ManifestRead::Valid(m) => Some(m),
                ManifestRead::Corrupt { .. } | ManifestRead::Unsupported { .. } => None,
            })
            .collect();
        if let Some(ManifestRead::Unsupported { id, version }) =
            reads.iter().find(|r| matches!(r, ManifestRead::Unsupported { .. }))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                super::manifest::ManifestError::UnsupportedVersion(*version).to_string()
                    + &format!(" (checkpoint {id}); not pruning"),
            ));
        }
        let keep = retain.max(1);
        if valid.len() <= keep {
            return Ok(Vec::new());
        }
        let oldest_kept = valid[valid.len() - keep].id;
        let mut deleted = Vec::new();
        for r in &reads {
            if r.id() < oldest_kept {
                self.delete_manifest(r.id())?;
                deleted.push(r.id());
            }
        }
        let referenced: BTreeSet<&str> = valid
            .iter()
            .filter(|m| m.id >= oldest_kept)
            .flat_map(|m| m.state.files.iter().map(String::as_str))
            .collect();
        for name in self.list_state()? {
            // Only files of checkpoints older than every kept one can be garbage: newer ones
            // may belong to a checkpoint being written right now.
            let older = state_file_id(&name).is_some_and(|id| id < oldest_kept);
            if older && !referenced.contains(name.as_str()) && !protect.contains(&name) {
                self.delete_state(&name)?;
            }
        }
        Ok(deleted)
    }
}

/// The checkpoint id encoded in a state file name (`<id>.full` or `<id>.delta`).
pub fn state_file_id(name: &str) -> Option<CheckpointId> {
    name.split('.').next().and_then(|id| id.parse().ok())
}

/// Checkpoints in a local directory (the embedded default).
#[derive(Clone, Debug)]
pub struct FileCheckpointStore {
    root: PathBuf,
    ops: Ops,
}

impl FileCheckpointStore {
    /// A store rooted at `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_ops(dir, durable::local())
    }

    /// A store using the given file operations (tests inject failures this way).
    pub fn with_ops(dir: impl Into<PathBuf>, ops: Ops) -> Self {
        FileCheckpointStore { root: dir.into(), ops }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn manifest_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    /// The path of manifest `id`.
    pub fn manifest_path(&self, id: CheckpointId) -> PathBuf {
        self.manifest_dir().join(format!("ckpt-{id:020}.json"))
    }

    /// Deletes every manifest and state file (a run from scratch).
    pub fn wipe(&self) -> io::Result<()> {
        for id in self.list()? {
            self.delete_manifest(id)?;
        }
        for name in self.list_state()? {
            self.delete_state(&name)?;
        }
        self.remove_temp_files()?;
        Ok(())
    }
}

fn list_names(dir: &Path) -> io::Result<Vec<String>> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            let mut names = Vec::new();
            for e in entries {
                let name = e?.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') {
                    names.push(name);
                }
            }
            names.sort();
            Ok(names)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

impl CheckpointStore for FileCheckpointStore {
    fn describe(&self) -> String {
        format!("file:{}", self.root.display())
    }

    fn remove_temp_files(&self) -> io::Result<usize> {
        Ok(durable::remove_temp_files(&*self.ops, &self.manifest_dir())?
            + durable::remove_temp_files(&*self.ops, &self.state_dir())?)
    }

    fn list(&self) -> io::Result<Vec<CheckpointId>> {
        let mut ids: Vec<CheckpointId> = list_names(&self.manifest_dir())?
            .iter()
            .filter_map(|n| n.strip_prefix("ckpt-")?.strip_suffix(".json")?.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    fn read(&self, id: CheckpointId) -> io::Result<ManifestRead> {
        let path = self.manifest_path(id);
        let bytes = self
            .ops
            .read(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))?;
        Ok(match Manifest::decode(&bytes) {
            Ok(m) if m.id == id => ManifestRead::Valid(m),
            Err(ManifestError::UnsupportedVersion(version)) if version > FORMAT_VERSION => {
                ManifestRead::Unsupported { id, version }
            }
            Ok(m) => ManifestRead::Corrupt {
                id,
                reason: format!("file name says id {id} but manifest says {}", m.id),
            },
            Err(e) => ManifestRead::Corrupt {
                id,
                reason: e.to_string(),
            },
        })
    }

    fn write_manifest(&self, manifest: &Manifest) -> io::Result<()> {
        durable::create_dir_durable(&*self.ops, &self.manifest_dir())?;
        durable::write_atomic(&*self.ops, &self.manifest_path(manifest.id), &manifest.encode())
    }

    fn delete_manifest(&self, id: CheckpointId) -> io::Result<()> {
        self.ops.remove(&self.manifest_path(id))
    }

    fn write_state(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        durable::create_dir_durable(&*self.ops, &self.state_dir())?;
        durable::write_atomic(&*self.ops, &self.state_dir().join(name), bytes)
    }

    fn read_state(&self, name: &str) -> io::Result<Vec<u8>> {
        let path = self.state_dir().join(name);
        self.ops
            .read(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))
    }

    fn list_state(&self) -> io::Result<Vec<String>> {
        list_names(&self.state_dir())
    }

    fn delete_state(&self, name: &str) -> io::Result<()> {
        self.ops.remove(&self.state_dir().join(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::manifest::sample;

    #[test]
    fn write_list_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCheckpointStore::new(dir.path());
        assert!(store.list().unwrap().is_empty());
        store.write_manifest(&sample(3)).unwrap();
        store.write_manifest(&sample(1)).unwrap();
        assert_eq!(store.list().unwrap(), vec![1, 3]);
        assert_eq!(store.read(3).unwrap(), ManifestRead::Valid(sample(3)));
    }

    #[test]
    fn corrupt_manifest_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCheckpointStore::new(dir.path());
        store.write_manifest(&sample(2)).unwrap();
        fs::write(store.manifest_path(2), b"garbage").unwrap();
        assert!(matches!(store.read(2).unwrap(), ManifestRead::Corrupt { id: 2, .. }));
    }

    #[test]
    fn prune_keeps_newest_and_referenced_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCheckpointStore::new(dir.path());
        for id in 1..=5 {
            let mut m = sample(id);
            // checkpoint 5 still uses the full snapshot of checkpoint 3
            m.state.files = if id >= 3 {
                (3..=id)
                    .map(|i| format!("{i:020}.{}", if i == 3 { "full" } else { "delta" }))
                    .collect()
            } else {
                vec![format!("{id:020}.full")]
            };
            for f in &m.state.files {
                store.write_state(f, b"x").unwrap();
            }
            store.write_manifest(&m).unwrap();
        }
        let deleted = store.prune(2).unwrap();
        assert_eq!(deleted, vec![1, 2, 3]);
        assert_eq!(store.list().unwrap(), vec![4, 5]);
        let state = store.list_state().unwrap();
        assert!(
            state.contains(&format!("{:020}.full", 3)),
            "referenced base kept: {state:?}"
        );
        assert!(!state.contains(&format!("{:020}.full", 1)));
        assert!(!state.contains(&format!("{:020}.full", 2)));
    }
}
