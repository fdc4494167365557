//! Atomic publication of an output file.
//!
//! The output is written to a new temporary file beside its destination
//! (same directory, so the same filesystem), flushed when asked, and renamed
//! over the destination only once complete; the directory is flushed after
//! the rename so the new name survives a crash. On any error the temporary
//! file is removed and the destination is untouched: readers see the old
//! file or the complete new one, never a part.

use crate::error::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

/// Creates a temporary file beside `dst`, lets `write` fill it, and renames
/// it over `dst` when `write` succeeds. With `sync`, the file is flushed
/// before the rename and the directory after it.
pub(crate) fn publish<T>(dst: &Path, sync: bool, write: impl FnOnce(&File) -> Result<T>) -> Result<T> {
    let tmp = temp_path_beside(dst);
    let file = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(Error::io("cannot create", &tmp))?;
    let outcome = write(&file).and_then(|value| {
        if sync {
            file.sync_all().map_err(Error::io("cannot flush", &tmp))?;
        }
        fs::rename(&tmp, dst).map_err(Error::io("cannot rename the output to", dst))?;
        if sync {
            sync_parent(dst)?;
        }
        Ok(value)
    });
    if outcome.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    outcome
}

fn temp_path_beside(dst: &Path) -> PathBuf {
    let name = dst.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    dst.with_file_name(format!(".{name}.vmimg-{}-{nanos}.tmp", std::process::id()))
}

fn sync_parent(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent).and_then(|d| d.sync_all()).map_err(Error::io("cannot flush directory", parent))
}
