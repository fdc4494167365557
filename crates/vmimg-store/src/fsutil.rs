//! Small file-system steps the store repeats: bounded reads, durable
//! atomic writes, directory syncs.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

/// Reads a text file of at most `limit` bytes.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<String> {
    let file = File::open(path).map_err(Error::io("cannot open", path))?;
    let mut text = String::new();
    file.take(limit + 1).read_to_string(&mut text).map_err(Error::io("cannot read", path))?;
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
    File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io("cannot flush", dir))
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new
/// one: a temporary file beside it, flushed, renamed, the directory flushed.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("a path inside the store");
    let mut temp =
        tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).map_err(Error::io("cannot create a file in", dir))?;
    temp.write_all(bytes).and_then(|()| temp.as_file().sync_all()).map_err(Error::io("cannot write", temp.path()))?;
    temp.persist(path).map_err(|e| Error::io("cannot rename into", path)(e.error))?;
    sync_dir(dir)
}

/// Removes a file; a missing one is fine.
pub(crate) fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("cannot remove", path)(e)),
        _ => Ok(()),
    }
}
