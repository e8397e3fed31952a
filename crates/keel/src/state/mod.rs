//! Keyed state: named tables of typed values, one value per key, checkpointed with the epoch.
//!
//! A stateful step declares a [`StateSpec<T>`] (a table name and its value type) and reads or
//! writes the value of the *current key* (set by `key_by`) through [`crate::Context::state`].
//! Values are typed through serde and encoded with `postcard` in state files.
//!
//! At each checkpoint the store writes what changed during the epoch (a delta) or, when the
//! chain of deltas grows too long, a full snapshot ([`file`] describes the format). Restoring
//! applies the checkpoint's files in order. Tables restored from disk keep their raw bytes
//! until a step first touches them with a type, so restoring needs no registration.

pub mod file;
pub mod key_group;

use std::any::Any;
use std::cell::Cell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::marker::PhantomData;
use std::sync::Arc;

use rustc_hash::FxHasher;
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use self::file::{Entry, Kind, StateFileError, StateFileWriter};

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// A state key: stored inline up to 16 bytes, so typical keys cost no allocation and one
/// memory access less per lookup.
type Key = smallvec::SmallVec<[u8; 16]>;

/// A state error.
#[derive(Debug, Error)]
pub enum StateError {
    /// A stored value does not decode as the type the step asked for.
    #[error("state table `{table}`: stored value does not decode as the requested type: {source}")]
    Decode {
        /// Table name.
        table: String,
        /// The postcard error.
        source: postcard::Error,
    },
    /// A value could not be encoded.
    #[error("state table `{table}`: value does not encode: {source}")]
    Encode {
        /// Table name.
        table: String,
        /// The postcard error.
        source: postcard::Error,
    },
    /// The same table name was used with two different value types.
    #[error("state table `{0}` is used with two different value types")]
    TypeClash(String),
    /// A state file is unusable.
    #[error("state file: {0}")]
    File(#[from] StateFileError),
}

/// Names a table of keyed state and its value type. Cheap to clone; clones share nothing
/// but the name.
#[derive(Debug)]
pub struct StateSpec<T> {
    name: Arc<str>,
    index: Cell<Option<usize>>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for StateSpec<T> {
    fn clone(&self) -> Self {
        StateSpec {
            name: self.name.clone(),
            index: self.index.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> StateSpec<T> {
    /// A table called `name`.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        StateSpec {
            name: name.into(),
            index: Cell::new(None),
            _t: PhantomData,
        }
    }

    /// The table name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

struct Slot<T> {
    value: T,
    dirty: bool,
}

/// A table of values of one type. A slot holds `Some` while its key is live; `update` lets
/// a step take the value out (`None`) to delete the key.
struct Table<T> {
    map: FxMap<Key, Slot<Option<T>>>,
    deleted: Vec<Key>,
    /// Keys whose slot became dirty in this epoch: a delta visits only these, so its cost on
    /// the worker thread is what changed, not the table's size.
    dirty: DirtyKeys,
}

/// Object-safe operations on any table, for snapshots and restore.
trait AnyTable: Any {
    fn len(&self) -> usize;
    fn write(&mut self, w: &mut StateFileWriter, full: bool, name: &str) -> Result<(), StateError>;
    fn apply(&mut self, name: &str, entry: Entry<'_>) -> Result<(), StateError>;
    fn has_changes(&self) -> bool;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn is_raw(&self) -> bool;
    fn into_raw(self: Box<Self>, name: &str) -> Result<RawTable, StateError>;
}

/// The keys that changed in an epoch, for the next delta. A delta visits them through this
/// list (one random lookup each) while few changed; once more than one key in eight changed,
/// one sequential pass over the table costs less (measured with 10M keys), so the list is
/// dropped and the delta scans.
#[derive(Default)]
struct DirtyKeys {
    keys: Vec<Key>,
    overflow: bool,
}

impl DirtyKeys {
    /// Notes that `key` of a table of `len` keys became dirty (it was clean).
    #[inline]
    fn mark(&mut self, key: &[u8], len: usize) {
        if self.overflow {
            return;
        }
        if self.keys.len() > len / 8 + 64 {
            self.overflow = true;
            self.keys = Vec::new();
            return;
        }
        self.keys.push(key.into());
    }

    fn is_empty(&self) -> bool {
        !self.overflow && self.keys.is_empty()
    }

    /// True when the delta must scan the table instead of the list.
    fn scan(&self) -> bool {
        self.overflow
    }

    fn clear(&mut self) {
        self.keys.clear();
        self.overflow = false;
    }
}

/// A table restored from disk and not yet touched by a typed step.
#[derive(Default)]
struct RawTable {
    map: FxMap<Key, Slot<Box<[u8]>>>,
    deleted: Vec<Key>,
    dirty: DirtyKeys,
}

impl AnyTable for RawTable {
    fn len(&self) -> usize {
        self.map.len()
    }
    fn write(&mut self, w: &mut StateFileWriter, full: bool, name: &str) -> Result<(), StateError> {
        w.table(name);
        if !full {
            for k in self.deleted.drain(..) {
                w.delete(&k);
            }
        }
        self.deleted.clear();
        if full || self.dirty.scan() {
            for (k, slot) in self.map.iter_mut() {
                if full || slot.dirty {
                    w.put(k, &slot.value);
                    slot.dirty = false;
                }
            }
            self.dirty.clear();
        } else {
            for k in self.dirty.keys.drain(..) {
                if let Some(slot) = self.map.get_mut(&k)
                    && slot.dirty
                {
                    w.put(&k, &slot.value);
                    slot.dirty = false;
                }
            }
        }
        Ok(())
    }
    fn apply(&mut self, _name: &str, entry: Entry<'_>) -> Result<(), StateError> {
        match entry {
            Entry::Put(k, v) => {
                self.map.insert(
                    k.into(),
                    Slot {
                        value: v.into(),
                        dirty: false,
                    },
                );
            }
            Entry::Delete(k) => {
                self.map.remove(k);
            }
        }
        Ok(())
    }
    fn has_changes(&self) -> bool {
        !self.deleted.is_empty() || !self.dirty.is_empty()
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn is_raw(&self) -> bool {
        true
    }
    fn into_raw(self: Box<Self>, _name: &str) -> Result<RawTable, StateError> {
        Ok(*self)
    }
}

impl<T: Serialize + DeserializeOwned + 'static> AnyTable for Table<T> {
    fn len(&self) -> usize {
        self.map.len()
    }
    fn write(&mut self, w: &mut StateFileWriter, full: bool, name: &str) -> Result<(), StateError> {
        w.table(name);
        if !full {
            for k in self.deleted.drain(..) {
                w.delete(&k);
            }
        }
        self.deleted.clear();
        let mut err = None;
        let mut put = |w: &mut StateFileWriter, k: &[u8], slot: &mut Slot<Option<T>>| {
            if let Some(value) = &slot.value {
                w.put_with(k, |buf| {
                    if let Err(e) = postcard::to_io(value, &mut *buf) {
                        err = Some(e);
                    }
                });
            }
            slot.dirty = false;
        };
        if full || self.dirty.scan() {
            for (k, slot) in self.map.iter_mut() {
                if full || slot.dirty {
                    put(w, k, slot);
                }
            }
            self.dirty.clear();
        } else {
            for k in self.dirty.keys.drain(..) {
                if let Some(slot) = self.map.get_mut(&k)
                    && slot.dirty
                {
                    put(w, &k, slot);
                }
            }
        }
        match err {
            Some(source) => Err(StateError::Encode {
                table: name.to_owned(),
                source,
            }),
            None => Ok(()),
        }
    }
    fn apply(&mut self, name: &str, entry: Entry<'_>) -> Result<(), StateError> {
        match entry {
            Entry::Put(k, v) => {
                let value = postcard::from_bytes(v).map_err(|source| StateError::Decode {
                    table: name.to_owned(),
                    source,
                })?;
                self.map.insert(
                    k.into(),
                    Slot {
                        value: Some(value),
                        dirty: false,
                    },
                );
            }
            Entry::Delete(k) => {
                self.map.remove(k);
            }
        }
        Ok(())
    }
    fn has_changes(&self) -> bool {
        !self.deleted.is_empty() || !self.dirty.is_empty()
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn is_raw(&self) -> bool {
        false
    }
    fn into_raw(self: Box<Self>, name: &str) -> Result<RawTable, StateError> {
        let mut raw = RawTable {
            map: FxMap::default(),
            deleted: self.deleted,
            dirty: self.dirty,
        };
        for (k, slot) in self.map {
            let Some(value) = slot.value else { continue };
            let bytes = postcard::to_allocvec(&value).map_err(|source| StateError::Encode {
                table: name.to_owned(),
                source,
            })?;
            raw.map.insert(
                k,
                Slot {
                    value: bytes.into(),
                    dirty: slot.dirty,
                },
            );
        }
        Ok(raw)
    }
}

/// Every key of a table with its value.
pub type Entries<T> = Vec<(Box<[u8]>, T)>;

/// Settings for when to write a full snapshot instead of a delta.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotPolicy {
    /// Write a full snapshot after this many deltas in a row.
    pub max_deltas: usize,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy { max_deltas: 16 }
    }
}

/// A state file produced at a checkpoint, ready to be written by the checkpoint thread.
#[derive(Debug)]
pub struct StateSnapshot {
    /// The file name (`<id>.full` or `<id>.delta`).
    pub name: String,
    /// The file bytes.
    pub bytes: Vec<u8>,
    /// Full snapshot (restarts the chain) or delta (extends it).
    pub kind: Kind,
}

/// All keyed state of a pipeline.
#[derive(Default)]
pub struct StateStore {
    names: Vec<Arc<str>>,
    tables: Vec<Box<dyn AnyTable>>,
    by_name: FxMap<Arc<str>, usize>,
    policy: SnapshotPolicy,
    /// State files of the restored checkpoint, oldest first (full snapshot, then deltas).
    chain: Vec<String>,
    /// Sizes of the chain's files, in the same order.
    chain_sizes: Vec<u64>,
    /// A full snapshot exists (written or restored): later snapshots are deltas.
    based: bool,
    /// Restored from parts of other chains ([`StateStore::restore_groups`]): the next
    /// snapshot must be written, in full, even if nothing changed.
    unsaved: bool,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("tables", &self.names)
            .field("chain", &self.chain)
            .finish()
    }
}

impl StateStore {
    /// An empty store.
    pub fn new(policy: SnapshotPolicy) -> Self {
        StateStore {
            policy,
            ..Default::default()
        }
    }

    fn index_of(&mut self, name: &Arc<str>) -> usize {
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        let i = self.tables.len();
        self.names.push(name.clone());
        self.tables.push(Box::new(RawTable::default()));
        self.by_name.insert(name.clone(), i);
        i
    }

    /// The typed table for `spec`, converting a raw restored table on first use.
    fn table<T: Serialize + DeserializeOwned + 'static>(
        &mut self,
        spec: &StateSpec<T>,
    ) -> Result<&mut Table<T>, StateError> {
        let i = match spec.index.get() {
            Some(i)
                if i < self.tables.len() && (Arc::ptr_eq(&self.names[i], &spec.name) || self.names[i] == spec.name) =>
            {
                i
            }
            _ => {
                let i = self.index_of(&spec.name);
                spec.index.set(Some(i));
                i
            }
        };
        if !self.tables[i].as_any_mut().is::<Table<T>>() {
            let name = self.names[i].clone();
            let slot = std::mem::replace(&mut self.tables[i], Box::new(RawTable::default()));
            if !slot.is_raw() {
                self.tables[i] = slot;
                return Err(StateError::TypeClash(name.to_string()));
            }
            let raw = slot.into_raw(&name)?;
            // decode every value before taking the table apart: a value that does not
            // decode leaves the raw table in place, so the error repeats on every access
            // and nothing restored is lost (iteration order is the same without mutation)
            let decoded: Result<Vec<T>, _> = raw.map.values().map(|s| postcard::from_bytes(&s.value)).collect();
            let values = match decoded {
                Ok(values) => values,
                Err(source) => {
                    self.tables[i] = Box::new(raw);
                    return Err(StateError::Decode {
                        table: name.to_string(),
                        source,
                    });
                }
            };
            let mut typed: Table<T> = Table {
                map: FxMap::default(),
                deleted: raw.deleted,
                dirty: raw.dirty,
            };
            typed.map.reserve(raw.map.len());
            for ((k, s), value) in raw.map.into_iter().zip(values) {
                typed.map.insert(
                    k,
                    Slot {
                        value: Some(value),
                        dirty: s.dirty,
                    },
                );
            }
            self.tables[i] = Box::new(typed);
        }
        match self.tables[i].as_any_mut().downcast_mut::<Table<T>>() {
            Some(t) => Ok(t),
            None => Err(StateError::TypeClash(self.names[i].to_string())),
        }
    }

    /// Reads the value of `key`.
    pub fn get<T: Serialize + DeserializeOwned + Clone + 'static>(
        &mut self,
        spec: &StateSpec<T>,
        key: &[u8],
    ) -> Result<Option<T>, StateError> {
        Ok(self.table(spec)?.map.get(key).and_then(|s| s.value.clone()))
    }

    /// Runs `f` on the value of `key` (`None` if absent). Leaving `None` deletes the key.
    pub fn update<T: Serialize + DeserializeOwned + 'static, R>(
        &mut self,
        spec: &StateSpec<T>,
        key: &[u8],
        f: impl FnOnce(&mut Option<T>) -> R,
    ) -> Result<R, StateError> {
        let table = self.table(spec)?;
        let len = table.map.len();
        if let Some(slot) = table.map.get_mut(key) {
            let r = f(&mut slot.value);
            if slot.value.is_some() {
                if !slot.dirty {
                    slot.dirty = true;
                    table.dirty.mark(key, len);
                }
            } else {
                table.map.remove(key);
                table.deleted.push(key.into());
            }
            Ok(r)
        } else {
            let mut value = None;
            let r = f(&mut value);
            if value.is_some() {
                table.map.insert(key.into(), Slot { value, dirty: true });
                table.dirty.mark(key, len);
            }
            Ok(r)
        }
    }

    /// Sets the value of `key`.
    pub fn put<T: Serialize + DeserializeOwned + 'static>(
        &mut self,
        spec: &StateSpec<T>,
        key: &[u8],
        value: T,
    ) -> Result<(), StateError> {
        let table = self.table(spec)?;
        let len = table.map.len();
        match table.map.get_mut(key) {
            Some(slot) => {
                slot.value = Some(value);
                if !slot.dirty {
                    slot.dirty = true;
                    table.dirty.mark(key, len);
                }
            }
            None => {
                table.map.insert(
                    key.into(),
                    Slot {
                        value: Some(value),
                        dirty: true,
                    },
                );
                table.dirty.mark(key, len);
            }
        }
        Ok(())
    }

    /// Deletes `key`; returns the old value.
    pub fn delete<T: Serialize + DeserializeOwned + 'static>(
        &mut self,
        spec: &StateSpec<T>,
        key: &[u8],
    ) -> Result<Option<T>, StateError> {
        let table = self.table(spec)?;
        let old = table.map.remove(key).and_then(|s| s.value);
        if old.is_some() {
            table.deleted.push(key.into());
        }
        Ok(old)
    }

    /// Every key and value of a table, in no particular order (for end-of-input output).
    pub fn entries<T: Serialize + DeserializeOwned + Clone + 'static>(
        &mut self,
        spec: &StateSpec<T>,
    ) -> Result<Entries<T>, StateError> {
        Ok(self
            .table(spec)?
            .map
            .iter()
            .filter_map(|(k, s)| Some((k[..].into(), s.value.clone()?)))
            .collect())
    }

    /// Deletes every key of a table for which `keep` returns false.
    pub fn retain<T: Serialize + DeserializeOwned + 'static>(
        &mut self,
        spec: &StateSpec<T>,
        mut keep: impl FnMut(&[u8], &T) -> bool,
    ) -> Result<usize, StateError> {
        let table = self.table(spec)?;
        let before = table.map.len();
        let deleted = &mut table.deleted;
        table.map.retain(|k, s| {
            let k_keep = s.value.as_ref().is_some_and(|v| keep(k, v));
            if !k_keep {
                deleted.push(k.clone());
            }
            k_keep
        });
        Ok(before - table.map.len())
    }

    /// Number of live keys over all tables.
    pub fn len(&self) -> usize {
        self.tables.iter().map(|t| t.len()).sum()
    }

    /// True when no table holds a key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Serialises the changes of the epoch closed by checkpoint `id`: a delta of the keys that
    /// changed (its cost is what changed, not the size of the state), or a full snapshot when
    /// there is no base snapshot yet. Returns `None` when nothing changed. Marks everything
    /// clean.
    ///
    /// Chains are never folded here, on the worker thread: the checkpoint thread keeps the
    /// chain of state files and compacts it into a new full snapshot in the background
    /// ([`compact`]).
    pub fn snapshot(&mut self, id: u64) -> Result<Option<StateSnapshot>, StateError> {
        if !self.unsaved && !self.tables.iter().any(|t| t.has_changes()) {
            return Ok(None);
        }
        self.unsaved = false;
        let full = !self.based;
        let kind = if full { Kind::Full } else { Kind::Delta };
        let mut w = StateFileWriter::new(kind, id);
        for (i, t) in self.tables.iter_mut().enumerate() {
            t.write(&mut w, full, &self.names[i])?;
        }
        let bytes = w.finish();
        self.based = true;
        let name = format!("{id:020}.{}", kind.suffix());
        Ok(Some(StateSnapshot { name, bytes, kind }))
    }

    /// The snapshot policy (the checkpoint thread decides compactions with it).
    pub fn policy(&self) -> SnapshotPolicy {
        self.policy
    }

    /// The restored chain of state files with their sizes, in chain order (empty for a fresh
    /// start). Later files are tracked by the checkpoint thread.
    pub fn restored_chain(&self) -> Vec<(String, u64)> {
        self.chain
            .iter()
            .cloned()
            .zip(self.chain_sizes.iter().copied())
            .collect()
    }

    /// Rebuilds the store from the files of a checkpoint, read through `read_file`.
    pub fn restore(
        &mut self,
        files: &[String],
        mut read_file: impl FnMut(&str) -> std::io::Result<Vec<u8>>,
    ) -> Result<(), RestoreError> {
        self.clear();
        self.based = !files.is_empty();
        self.apply_chain(files, &mut read_file, |_| true)?;
        Ok(())
    }

    /// Rebuilds the store with the keys of `groups` ([`key_group`]) only, from the chains of
    /// state files of a checkpoint (one chain per worker that took it, each a full snapshot
    /// then deltas), whatever the number of workers then and now. The restored keys no longer
    /// form any one chain, so the next snapshot is a full one.
    pub fn restore_groups(
        &mut self,
        chains: &[Vec<String>],
        groups: std::ops::Range<u16>,
        mut read_file: impl FnMut(&str) -> std::io::Result<Vec<u8>>,
    ) -> Result<(), RestoreError> {
        self.clear();
        for files in chains {
            self.apply_chain(files, &mut read_file, |key| groups.contains(&key_group::key_group(key)))?;
        }
        self.chain.clear();
        self.chain_sizes.clear();
        self.based = false;
        // the next snapshot is a full one even if nothing changes before it
        self.unsaved = true;
        Ok(())
    }

    fn clear(&mut self) {
        self.unsaved = false;
        self.tables.clear();
        self.names.clear();
        self.by_name.clear();
        self.chain.clear();
        self.chain_sizes.clear();
    }

    /// Applies one chain of state files (a full snapshot, then deltas) to the store, entries
    /// whose key `keep` accepts only, and records it as the store's chain.
    fn apply_chain(
        &mut self,
        files: &[String],
        read_file: &mut impl FnMut(&str) -> std::io::Result<Vec<u8>>,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<(), RestoreError> {
        for (n, name) in files.iter().enumerate() {
            let bytes = read_file(name).map_err(|e| RestoreError::Read(name.clone(), e))?;
            let mut err = None;
            let (kind, _) = file::read(&bytes, |table, entry| {
                if err.is_some() || !keep(entry.key()) {
                    return;
                }
                let i = self.index_of(&Arc::from(table));
                if let Err(e) = self.tables[i].apply(table, entry) {
                    err = Some(e);
                }
            })
            .map_err(|e| RestoreError::File(name.clone(), e))?;
            if let Some(e) = err {
                return Err(RestoreError::State(name.clone(), e));
            }
            if (n == 0) != (kind == Kind::Full) {
                return Err(RestoreError::File(
                    name.clone(),
                    StateFileError::Malformed("chain must start with one full snapshot"),
                ));
            }
            self.chain.push(name.clone());
            self.chain_sizes.push(bytes.len() as u64);
        }
        Ok(())
    }
}

/// One table's entries as raw bytes: key to encoded value.
type RawEntries = FxMap<Key, Box<[u8]>>;

/// Folds a chain of state files (a full snapshot, then deltas) into one full snapshot for
/// checkpoint `id`, on raw bytes: no value is decoded, so it runs on any thread and needs no
/// table types. The result describes exactly the state that restoring `files` gives.
pub fn compact(
    id: u64,
    files: &[String],
    mut read_file: impl FnMut(&str) -> std::io::Result<Vec<u8>>,
) -> Result<StateSnapshot, RestoreError> {
    let mut tables: Vec<(String, RawEntries)> = Vec::new();
    for (n, name) in files.iter().enumerate() {
        let bytes = read_file(name).map_err(|e| RestoreError::Read(name.clone(), e))?;
        let (kind, _) = file::read(&bytes, |table, entry| {
            let i = match tables.iter().position(|(t, _)| t == table) {
                Some(i) => i,
                None => {
                    tables.push((table.to_owned(), FxMap::default()));
                    tables.len() - 1
                }
            };
            match entry {
                Entry::Put(k, v) => {
                    tables[i].1.insert(k.into(), v.into());
                }
                Entry::Delete(k) => {
                    tables[i].1.remove(k);
                }
            }
        })
        .map_err(|e| RestoreError::File(name.clone(), e))?;
        if (n == 0) != (kind == Kind::Full) {
            return Err(RestoreError::File(
                name.clone(),
                StateFileError::Malformed("chain must start with one full snapshot"),
            ));
        }
    }
    let mut w = StateFileWriter::new(Kind::Full, id);
    for (table, map) in &tables {
        w.table(table);
        for (k, v) in map {
            w.put(k, v);
        }
    }
    Ok(StateSnapshot {
        name: format!("{id:020}.{}", Kind::Full.suffix()),
        bytes: w.finish(),
        kind: Kind::Full,
    })
}

/// Why restoring state failed.
#[derive(Debug, Error)]
pub enum RestoreError {
    /// A file could not be read.
    #[error("cannot read state file {0}: {1}")]
    Read(String, std::io::Error),
    /// A file is corrupt.
    #[error("state file {0}: {1}")]
    File(String, StateFileError),
    /// A value could not be applied.
    #[error("state file {0}: {1}")]
    State(String, StateError),
}

impl RestoreError {
    /// True when the file was read whole and its bytes are bad (checksum, framing, values):
    /// the checkpoint may then be skipped. A read error or a format version this build does
    /// not know says nothing about the checkpoint, and recovery must stop instead (I7).
    pub fn is_corruption(&self) -> bool {
        match self {
            RestoreError::Read(..) => false,
            RestoreError::File(_, StateFileError::Version(v)) => *v < file::VERSION,
            RestoreError::File(..) | RestoreError::State(..) => true,
        }
    }
}

#[cfg(test)]
mod tests;
