//! Small file-system steps the store repeats: bounded reads, durable
//! atomic writes, directory syncs, and [`blocking`], which runs such steps
//! (and whole-disk work) off the async threads.

use crate::error::{Error, Result};
use futures_util::FutureExt;
use std::fs::File;
use std::future::Future;
use std::io::{Read, Write};
use std::path::Path;

/// Runs `work` on one of tokio's blocking threads, never on an async one:
/// conversions and copies of whole disks, hashing, fsyncs, renames that
/// publish, removals of trees and big files. The task starts at once (the
/// future need not be polled for it to run). Should `work` panic, the
/// error says that `what` did not complete.
pub(crate) fn blocking<T, F>(what: &'static str, work: F) -> impl Future<Output = Result<T>> + Unpin
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .map(move |joined| joined.unwrap_or_else(|e| Err(Error::Internal(format!("{what} did not complete: {e}")))))
}

/// Reads a text file of at most `limit` bytes.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<String> {
    let file = File::open(path).map_err(Error::io("open", path))?;
    let mut text = String::new();
    file.take(limit + 1).read_to_string(&mut text).map_err(Error::io("read", path))?;
    if text.len() as u64 > limit {
        return Err(Error::Io {
            action: "read",
            path: path.to_owned(),
            source: std::io::Error::other(format!("larger than {limit} bytes")),
        });
    }
    Ok(text)
}

/// Flushes a directory's entries (a rename or a new file in it) to disk.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io("flush", dir))
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new
/// one (see `vmimg_disk::publish`).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    vmimg_disk::publish(path, true, |mut file| file.write_all(bytes).map_err(Error::io("write", path)))
}

/// Removes a file; a missing one is fine.
pub(crate) fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", path)(e)),
        _ => Ok(()),
    }
}
