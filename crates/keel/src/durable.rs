//! Crash-safe file writes (invariant I6).
//!
//! A durable file is written as: temp file in the same directory, `fsync` of the temp file,
//! `rename` over the final name, `fsync` of the directory. After a crash at any instant a
//! reader finds either the old file (or none) or the complete new one, never a torn one; a
//! leftover temp file (its name starts with `.` and ends with `.tmp`) is garbage that
//! [`remove_temp_files`] cleans up.
//!
//! The individual operations go through [`FileOps`], so that tests can make the Nth operation
//! fail ([`FailingOps`]) and check that every intermediate state is recoverable.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The primitive file operations that durable writes are made of.
pub trait FileOps: Send + Sync + std::fmt::Debug + 'static {
    /// Creates (or truncates) `path`, writes `bytes` and fsyncs the file.
    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Fsyncs an existing file.
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Fsyncs a directory, making renames and creations in it durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes a file; a missing file is not an error.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Swaps two existing paths (files or directories) atomically: each name then refers to
    /// what the other did.
    fn exchange(&self, a: &Path, b: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it; a missing directory is not an error.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Reads a whole file. An error means the bytes are unknown (not that they are bad):
    /// callers must never treat it as corruption.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }
    /// Writes `bytes` at `offset` of an open file (all of them, or an error: a short write
    /// may have left part of them on disk).
    fn write_at(&self, file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
    }
}

/// The real local file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalOps;

impl FileOps for LocalOps {
    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn exchange(&self, a: &Path, b: &Path) -> io::Result<()> {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).map_err(io::Error::from)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        match fs::remove_dir_all(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// The shared handle to file operations used by stores and sinks.
pub type Ops = Arc<dyn FileOps>;

/// The default operations: the local file system.
pub fn local() -> Ops {
    Arc::new(LocalOps)
}

/// Writes `bytes` to `path` durably: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(ops: &dyn FileOps, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent_dir(path);
    let tmp = temp_path(path);
    if let Err(e) = ops.write_synced(&tmp, bytes) {
        let _ = ops.remove(&tmp);
        return Err(e);
    }
    if let Err(e) = ops.rename(&tmp, path) {
        let _ = ops.remove(&tmp);
        return Err(e);
    }
    ops.sync_dir(&dir)
}

/// Renames `from` to `to` and fsyncs the directory of `to` (and of `from`, when different).
pub fn rename_durable(ops: &dyn FileOps, from: &Path, to: &Path) -> io::Result<()> {
    ops.rename(from, to)?;
    let to_dir = parent_dir(to);
    ops.sync_dir(&to_dir)?;
    let from_dir = parent_dir(from);
    if from_dir != to_dir {
        ops.sync_dir(&from_dir)?;
    }
    Ok(())
}

/// The temp file name used by [`write_atomic`] for `path`: hidden, in the same directory.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_dir(path).join(format!(".{name}.{}.tmp", std::process::id()))
}

/// True for names that [`temp_path`] produces.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Removes temp files left in `dir` by writes that a crash interrupted. Returns how many.
pub fn remove_temp_files(ops: &dyn FileOps, dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if is_temp_name(&entry.file_name().to_string_lossy()) {
            ops.remove(&entry.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Creates `dir` and its missing parents so that all of them survive a crash: every
/// directory it creates is fsynced (its own entries), and so is each created directory's
/// parent (the entry naming it), from the deepest up to the parent of the topmost one
/// created. An existing `dir` costs nothing.
pub fn create_dir_durable(ops: &dyn FileOps, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    // the directories that do not exist yet, deepest first
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d.to_path_buf());
        at = d.parent();
    }
    fs::create_dir_all(dir)?;
    for d in &missing {
        ops.sync_dir(d)?;
    }
    match missing.last() {
        Some(top) => ops.sync_dir(&parent_dir(top)),
        None => Ok(()),
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// File operations that fail from the Nth call on (counting from 0), for crash tests.
///
/// After the failing call every later call fails too, like a process that died at that
/// instant: nothing after it reaches the disk.
#[derive(Debug)]
pub struct FailingOps {
    inner: LocalOps,
    fail_from: usize,
    /// The OS error to fail with (`None`: a generic injected error).
    os_error: Option<i32>,
    calls: AtomicUsize,
    synced_dirs: std::sync::Mutex<Vec<PathBuf>>,
}

impl FailingOps {
    /// Fails every call from the `fail_from`-th on.
    pub fn new(fail_from: usize) -> Self {
        FailingOps {
            inner: LocalOps,
            fail_from,
            os_error: None,
            calls: AtomicUsize::new(0),
            synced_dirs: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Fails every call from the `fail_from`-th on with OS error `errno` (28, ENOSPC: a disk
    /// that fills up at that instant).
    pub fn with_os_error(fail_from: usize, errno: i32) -> Self {
        FailingOps {
            os_error: Some(errno),
            ..Self::new(fail_from)
        }
    }

    /// The directories fsynced so far (successfully), in order.
    pub fn synced_dirs(&self) -> Vec<PathBuf> {
        self.synced_dirs.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// How many calls were made (including failed ones).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn gate(&self) -> io::Result<()> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n >= self.fail_from {
            Err(match self.os_error {
                Some(errno) => io::Error::from_raw_os_error(errno),
                None => io::Error::other(format!("injected failure at file operation {n}")),
            })
        } else {
            Ok(())
        }
    }
}

impl FileOps for FailingOps {
    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.gate()?;
        self.inner.write_synced(path, bytes)
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.gate()?;
        self.inner.sync_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.gate()?;
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.gate()?;
        self.inner.sync_dir(dir)?;
        if let Ok(mut v) = self.synced_dirs.lock() {
            v.push(dir.to_path_buf());
        }
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.gate()?;
        self.inner.remove(path)
    }
    fn exchange(&self, a: &Path, b: &Path) -> io::Result<()> {
        self.gate()?;
        self.inner.exchange(a, b)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.gate()?;
        self.inner.remove_dir_all(path)
    }
    fn write_at(&self, file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
        self.gate()?;
        self.inner.write_at(file, bytes, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        write_atomic(&LocalOps, &p, b"one").unwrap();
        write_atomic(&LocalOps, &p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
    }

    /// A failure at every step of the write leaves either the old content or the new one,
    /// never a torn file, and never a visible temp file after cleanup.
    #[test]
    fn a_failure_at_any_step_leaves_old_or_new_content() {
        for fail_at in 0..4 {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("m.json");
            write_atomic(&LocalOps, &p, b"old").unwrap();
            let ops = FailingOps::new(fail_at);
            let res = write_atomic(&ops, &p, b"new");
            let content = fs::read(&p).unwrap();
            match fail_at {
                // write or rename failed: the old content stays
                0 | 1 => {
                    assert!(res.is_err());
                    assert_eq!(content, b"old");
                }
                // the directory fsync failed: the rename happened, the error is reported
                2 => {
                    assert!(res.is_err());
                    assert_eq!(content, b"new");
                }
                _ => {
                    assert!(res.is_ok());
                    assert_eq!(content, b"new");
                }
            }
            remove_temp_files(&LocalOps, dir.path()).unwrap();
            let names: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert_eq!(names, vec!["m.json".to_string()], "fail_at={fail_at}");
        }
    }

    /// Every level that `create_dir_durable` creates is fsynced once, and so is the parent
    /// of the topmost one; existing levels are not touched.
    #[test]
    fn creating_nested_directories_fsyncs_every_created_level_and_its_parent() {
        let root = tempfile::tempdir().unwrap();
        let base = root.path().join("base");
        fs::create_dir(&base).unwrap();
        let deep = base.join("a").join("b").join("c");
        let ops = FailingOps::new(usize::MAX);
        create_dir_durable(&ops, &deep).unwrap();
        assert!(deep.is_dir());
        let synced = ops.synced_dirs();
        for d in [base.clone(), base.join("a"), base.join("a/b"), deep.clone()] {
            assert_eq!(
                synced.iter().filter(|s| **s == d).count(),
                1,
                "{} in {synced:?}",
                d.display()
            );
        }
        assert_eq!(synced.len(), 4, "{synced:?}");
        assert!(
            !synced.contains(&root.path().to_path_buf()),
            "existing levels are not fsynced"
        );
        // nothing to create: nothing to fsync
        let again = FailingOps::new(usize::MAX);
        create_dir_durable(&again, &deep).unwrap();
        assert!(again.synced_dirs().is_empty());
        // a failing fsync is reported
        assert!(create_dir_durable(&FailingOps::new(0), &base.join("x/y")).is_err());
    }

    #[test]
    fn leftover_temp_files_are_recognised_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        let tmp = temp_path(&p);
        fs::write(&tmp, b"torn").unwrap();
        assert!(is_temp_name(&tmp.file_name().unwrap().to_string_lossy()));
        assert_eq!(remove_temp_files(&LocalOps, dir.path()).unwrap(), 1);
        assert!(!tmp.exists());
    }
}
