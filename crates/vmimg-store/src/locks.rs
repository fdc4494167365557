//! Who may change which part of the store when: per-key locks and the
//! store's lease, in this process and across processes.
//!
//! A key's lock (`locks/<key>.lock`) is a tokio mutex inside the process
//! and an advisory `flock` across processes; it is held while the key's
//! image (or build, or push) is being made or removed. The lock file is
//! removed by its holder on release, so locks do not pile up; whoever
//! locks a file checks afterwards that its path still names it, else
//! tries again. The lease (`locks/.lease.lock`) is shared by every pull
//! and build in flight and held alone by `gc` while it collects content.
//! A process that dies releases all it held.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The store's lock files, and the in-process half of each key's lock.
pub(crate) struct Locks {
    dir: PathBuf,
    in_process: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Locks {
    pub(crate) fn new(dir: PathBuf) -> Locks {
        Locks { dir, in_process: Mutex::default() }
    }

    /// Holds `key` for this caller alone until the guard drops.
    pub(crate) async fn hold(&self, key: &str) -> Result<KeyLock> {
        let mutex = self.in_process.lock().expect("lock table").entry(key.to_owned()).or_default().clone();
        let in_process = mutex.lock_owned().await;
        let path = self.path(key);
        let file = tokio::task::spawn_blocking(move || LockFile::acquire(path, true))
            .await
            .expect("lock task")?
            .expect("a blocking lock is always had");
        Ok(KeyLock { _file: file, _in_process: in_process })
    }

    /// Holds `key` if nobody else (in any process) does.
    pub(crate) fn try_hold(&self, key: &str) -> Result<Option<LockFile>> {
        LockFile::acquire(self.path(key), false)
    }

    /// A share of the lease.
    pub(crate) async fn lease(&self) -> Result<Lease> {
        let path = self.path(LEASE_KEY);
        tokio::task::spawn_blocking(move || {
            let file = open_lock(&path)?;
            file.lock_shared().map_err(Error::io("lock", &path))?;
            Ok(Lease { _file: file })
        })
        .await
        .expect("lease task")
    }

    /// The whole lease, if no share of it is held.
    pub(crate) fn try_exclusive_lease(&self) -> Result<Option<Lease>> {
        let path = self.path(LEASE_KEY);
        let file = open_lock(&path)?;
        Ok(try_hold(&file, &path)?.then_some(Lease { _file: file }))
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.lock"))
    }
}

/// Exclusive hold on one cache key (released on drop, or when the process dies).
pub(crate) struct KeyLock {
    _file: LockFile,
    _in_process: tokio::sync::OwnedMutexGuard<()>,
}

/// The lock file of the store's lease (`locks/.lease.lock`): a name no key
/// can have, never removed.
pub(crate) const LEASE_KEY: &str = ".lease";

/// A share of the store's lease, or all of it (see [`Locks::lease`]).
pub(crate) struct Lease {
    _file: File,
}

/// A held lock file, removed by its holder when released, so that locks do
/// not pile up. Whoever locks a file checks afterwards that its path still
/// names it (the last holder may have removed it meanwhile), else retries.
pub(crate) struct LockFile {
    file: File,
    path: PathBuf,
}

impl LockFile {
    /// Locks `path` (waiting when `wait`; None if held elsewhere otherwise).
    fn acquire(path: PathBuf, wait: bool) -> Result<Option<LockFile>> {
        loop {
            let file = open_lock(&path)?;
            if wait {
                file.lock().map_err(Error::io("lock", &path))?;
            } else if !try_hold(&file, &path)? {
                return Ok(None);
            }
            if same_file(&file, &path) {
                return Ok(Some(LockFile { file, path }));
            }
        }
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Removed while still locked: a waiter that then gets the lock sees
        // the path gone (or naming a newer file) and tries again.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// Locks `file` (at `path`) exclusively if nobody holds it; false if someone does.
fn try_hold(file: &File, path: &Path) -> Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", path)(e)),
    }
}

/// The lock file at `path`, made if missing. In a store this process may
/// not write (a read-only mount, another user's store) an existing one is
/// opened to read: flock needs no more, so readers still see who holds it.
fn open_lock(path: &Path) -> Result<File> {
    use std::io::ErrorKind;
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .or_else(|e| match e.kind() {
            ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied => File::open(path).map_err(|_| e),
            _ => Err(e),
        })
        .map_err(Error::io("open", path))
}

/// Whether `path` names the open `file` (same device and inode).
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(ours), Ok(named)) => (ours.dev(), ours.ino()) == (named.dev(), named.ino()),
        _ => false,
    }
}
