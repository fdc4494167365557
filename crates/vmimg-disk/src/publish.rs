//! Atomic publication of an output file.
//!
//! The output is written to a new unnamed file in its destination's
//! directory (`O_TMPFILE`: same filesystem, and a crash at any moment leaves
//! nothing behind, since the kernel frees a file no name points to), flushed
//! when asked, then given a temporary name and renamed over the destination
//! only once complete; the directory is flushed after the rename so the new
//! name survives a crash. Where the filesystem has no `O_TMPFILE`, the file
//! is a named temporary beside the destination from the start. On any error
//! the temporary file is removed and the destination is untouched: readers
//! see the old file or the complete new one, never a part.

use crate::error::{Error, Result};
use rustix::fs::{AtFlags, CWD, Mode, OFlags};
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Creates a temporary file beside `dst`, lets `write` fill it, and renames
/// it over `dst` when `write` succeeds. With `sync`, the file is flushed
/// before the rename and the directory after it.
pub fn publish<T, E: From<Error>>(dst: &Path, sync: bool, write: impl FnOnce(&File) -> Result<T, E>) -> Result<T, E> {
    let tmp = temp_path_beside(dst);
    let (file, mut named) = match open_unnamed(parent(dst)) {
        Some(file) => (file, false),
        None => {
            let file = OpenOptions::new().write(true).create_new(true).open(&tmp);
            (file.map_err(Error::io("cannot create", &tmp))?, true)
        }
    };
    let outcome = write(&file).and_then(|value| {
        if sync {
            file.sync_all().map_err(Error::io("cannot flush", &tmp))?;
        }
        if !named {
            name_unnamed(&file, &tmp)?;
            named = true;
        }
        fs::rename(&tmp, dst).map_err(Error::io("cannot rename the output to", dst))?;
        if sync {
            File::open(parent(dst)).and_then(|d| d.sync_all()).map_err(Error::io("cannot flush directory", dst))?;
        }
        Ok(value)
    });
    if outcome.is_err() && named {
        let _ = fs::remove_file(&tmp);
    }
    outcome
}

/// An unnamed file in `dir`, or None where the filesystem cannot make one
/// or there is no /proc to name it through later.
fn open_unnamed(dir: &Path) -> Option<File> {
    if !Path::new("/proc/self/fd").is_dir() {
        return None;
    }
    let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
    rustix::fs::openat(CWD, dir, flags, Mode::from_raw_mode(0o644)).ok().map(File::from)
}

/// Gives an unnamed file the name `path` (through /proc, which needs no
/// privilege, unlike `AT_EMPTY_PATH`).
fn name_unnamed(file: &File, path: &Path) -> Result<()> {
    let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    rustix::fs::linkat(CWD, fd_path.as_str(), CWD, path, AtFlags::SYMLINK_FOLLOW)
        .map_err(|e| Error::io("cannot name", path)(e.into()))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn temp_path_beside(dst: &Path) -> PathBuf {
    let name = dst.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    dst.with_file_name(format!(".{name}.vmimg-{}-{nanos}.tmp", std::process::id()))
}
