//! Atomic publication of an output file: the one helper for "write it
//! beside its destination, flush it, rename it over the destination, flush
//! the directory". Readers see the old file or the complete new one, never
//! a part; on any error or panic the temporary is removed and the
//! destination is untouched.
//!
//! Two entry points share every step after the writing:
//! - [`publish`] hands the writer an open [`File`]. It is a new unnamed file
//!   in the destination's directory (`O_TMPFILE`: same filesystem, and a
//!   crash at any moment leaves nothing behind, since the kernel frees a
//!   file no name points to), named only once complete; where the
//!   filesystem has no `O_TMPFILE`, a named temporary beside the
//!   destination from the start.
//! - [`publish_path`] hands the writer the path of a named temporary beside
//!   the destination, for external tools that open files by name (mke2fs,
//!   mkfs.erofs): created empty and exclusively, mode 0644 less the umask;
//!   the writer may check it there before it takes the destination's name,
//!   and [`Replace::No`] refuses a destination that exists at that moment
//!   (`RENAME_NOREPLACE`), not just when the writing began.
//!
//! With `sync`, the file is flushed before it takes the destination's name
//! and the directory after, so the new name survives a crash. A temporary
//! is named `.<destination's name>.vmimg-<pid>-<n>.tmp`; a name already
//! taken (left by a crashed process with the same pid) is skipped.
//!
//! Refused before anything is written ([`check_destination`]): a
//! destination with no file name (`/`, `..`), a directory, anything else
//! that is not a regular file (the rename would replace a device node, not
//! fill it), and one whose directory is missing or not a directory.

use crate::error::{Error, Result};
use rustix::fs::{AtFlags, CWD, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether publishing may replace a file already at the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Rename over whatever file is there.
    Yes,
    /// Refuse, with an error of kind [`io::ErrorKind::AlreadyExists`] that
    /// names the destination, if anything is there; the check and the
    /// rename are one step.
    No,
}

/// Creates a temporary file beside `dst`, lets `write` fill it, and renames
/// it over `dst` when `write` succeeds. With `sync`, the file is flushed
/// before the rename and the directory after it.
pub fn publish<T, E: From<Error>>(dst: &Path, sync: bool, write: impl FnOnce(&File) -> Result<T, E>) -> Result<T, E> {
    check_dst(dst)?;
    let (file, temp) = match open_unnamed(parent(dst)) {
        Some(file) => (file, None),
        None => {
            let (temp, file) = TempName::create(dst, "cannot create", create_new)?;
            (file, Some(temp))
        }
    };
    let value = write(&file)?;
    finish(&file, temp, dst, Replace::Yes, sync)?;
    Ok(value)
}

/// Creates an empty file beside `dst`, lets `write` fill it through its
/// path, and renames it to `dst` when `write` succeeds: over a file there
/// with [`Replace::Yes`], never with [`Replace::No`]. With `sync`, the file
/// is flushed before the rename and the directory after it. The temporary
/// is removed if `write` fails or panics, or the rename fails.
pub fn publish_path<T, E: From<Error>>(
    dst: &Path,
    replace: Replace,
    sync: bool,
    write: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E> {
    check_dst(dst)?;
    let (temp, _) = TempName::create(dst, "cannot create", create_new)?;
    let value = write(temp.path())?;
    // Opened again by name: the writer may have replaced the file created.
    let file = File::open(temp.path()).map_err(Error::io("cannot open", temp.path()))?;
    finish(&file, Some(temp), dst, replace, sync)?;
    Ok(value)
}

/// The steps after the writing, for both entry points: flush the file,
/// give an unnamed one a temporary name, rename it to `dst`, flush the
/// directory.
fn finish(file: &File, temp: Option<TempName>, dst: &Path, replace: Replace, sync: bool) -> Result<()> {
    if sync {
        let name = temp.as_ref().map_or(dst, TempName::path);
        file.sync_all().map_err(Error::io("cannot flush", name))?;
    }
    let temp = match temp {
        Some(temp) => temp,
        None => TempName::create(dst, "cannot name", |path| name_unnamed(file, path))?.0,
    };
    temp.rename_to(dst, replace)?;
    if sync {
        File::open(parent(dst)).and_then(|d| d.sync_all()).map_err(Error::io("cannot flush directory", dst))?;
    }
    Ok(())
}

/// A temporary's name beside its destination, removed when dropped unless
/// it was renamed away: an error or a panic in a writer leaves nothing.
struct TempName {
    path: Option<PathBuf>,
}

impl TempName {
    /// Makes a file with a fresh temporary name beside `dst` through `make`
    /// (which must fail with `AlreadyExists` if the name is taken), trying
    /// the next name while it is.
    fn create<R>(dst: &Path, what: &'static str, make: impl Fn(&Path) -> io::Result<R>) -> Result<(TempName, R)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        const ATTEMPTS: u32 = 100;
        let name = dst.file_name().unwrap_or_default().to_string_lossy();
        let pid = std::process::id();
        let mut attempt = 0;
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = parent(dst).join(format!(".{name}.vmimg-{pid}-{n}.tmp"));
            match make(&path) {
                Ok(made) => return Ok((TempName { path: Some(path) }, made)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < ATTEMPTS => attempt += 1,
                Err(e) => return Err(Error::io(what, path)(e)),
            }
        }
    }

    fn path(&self) -> &Path {
        self.path.as_deref().expect("a temporary keeps its name until renamed")
    }

    /// Renames the temporary to `dst`; from then on the file is `dst`'s.
    /// With [`Replace::No`], `renameat2(RENAME_NOREPLACE)`, or where the
    /// filesystem or kernel refuses that flag, [`TempName::link_to`].
    fn rename_to(mut self, dst: &Path, replace: Replace) -> Result<()> {
        let renamed = match replace {
            Replace::Yes => fs::rename(self.path(), dst),
            Replace::No => match rustix::fs::renameat_with(CWD, self.path(), CWD, dst, RenameFlags::NOREPLACE) {
                Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => return self.link_to(dst),
                other => other.map_err(io::Error::from),
            },
        };
        renamed.map_err(Error::io("cannot rename the output to", dst))?;
        self.path = None;
        Ok(())
    }

    /// Gives the file the name `dst` unless something is there (a hard link
    /// fails on an existing name, in one step), then drops the temporary
    /// name.
    fn link_to(self, dst: &Path) -> Result<()> {
        fs::hard_link(self.path(), dst).map_err(Error::io("cannot rename the output to", dst))
    }
}

impl Drop for TempName {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = fs::remove_file(path);
        }
    }
}

/// A new empty file at `path`, refused (`AlreadyExists`) if the name is
/// taken.
fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(0o644).open(path)
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
fn name_unnamed(file: &File, path: &Path) -> io::Result<()> {
    let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    Ok(rustix::fs::linkat(CWD, fd_path.as_str(), CWD, path, AtFlags::SYMLINK_FOLLOW)?)
}

fn check_dst(dst: &Path) -> Result<()> {
    check_destination(dst, None)
}

/// Refuses a destination that publishing could only refuse after the work,
/// or would wrongly replace: one with no file name, a directory (`example`
/// is a file name to suggest in it), anything but a regular file (a device,
/// a FIFO, a socket: the rename would replace the node itself), and one
/// whose directory is missing or is not a directory. [`publish`] and
/// [`publish_path`] check this first; a caller with work to do before it
/// publishes checks it before that work, with a better `example`.
pub fn check_destination(dst: &Path, example: Option<&str>) -> Result<()> {
    if dst.file_name().is_none() {
        return Err(Error::io("cannot publish to", dst)(io::Error::new(io::ErrorKind::InvalidInput, "no file name")));
    }
    let path = dst.to_owned();
    match fs::metadata(dst) {
        Ok(meta) if meta.is_dir() => Err(Error::DestinationIsDirectory { path, example: example.map(str::to_owned) }),
        Ok(meta) if !meta.is_file() => Err(Error::DestinationNotAFile { path, what: file_kind(&meta.file_type()) }),
        Ok(_) => Ok(()),
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => check_directory(dst),
        Err(e) => Err(Error::io("cannot look at", dst)(e)),
    }
}

/// Refuses a destination whose directory is missing (naming it) or is not
/// a directory (naming the nearest ancestor that is something else).
fn check_directory(dst: &Path) -> Result<()> {
    let dir = parent(dst);
    for ancestor in dir.ancestors() {
        let ancestor = if ancestor.as_os_str().is_empty() { Path::new(".") } else { ancestor };
        match fs::metadata(ancestor) {
            Ok(meta) if meta.is_dir() && ancestor == dir => return Ok(()),
            Ok(meta) if meta.is_dir() => {
                return Err(Error::DestinationDirMissing { path: dst.to_owned(), dir: dir.to_owned() });
            }
            Ok(_) => return Err(Error::DestinationDirNotADir { path: dst.to_owned(), dir: ancestor.to_owned() }),
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => continue,
            Err(e) => return Err(Error::io("cannot look at", ancestor)(e)),
        }
    }
    Ok(())
}

fn file_kind(kind: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_block_device() {
        "a block device"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fallback for filesystems without `RENAME_NOREPLACE` behaves as
    /// the rename does: it refuses an existing name, and leaves no
    /// temporary either way.
    #[test]
    fn the_link_fallback_never_replaces() {
        let no_replace: [fn(TempName, &Path) -> Result<()>; 2] =
            [|temp, dst| temp.rename_to(dst, Replace::No), TempName::link_to];
        for publish in no_replace {
            let dir = tempfile::tempdir().unwrap();
            let dst = dir.path().join("dst");
            fs::write(&dst, b"old").unwrap();
            let temp = |bytes: &[u8]| TempName::create(&dst, "cannot create", |path| fs::write(path, bytes)).unwrap().0;
            let err = publish(temp(b"new"), &dst).unwrap_err();
            let refused = matches!(&err, Error::Io { source, path, .. }
                if source.kind() == io::ErrorKind::AlreadyExists && path == &dst);
            assert!(refused, "{err}");
            assert_eq!(fs::read(&dst).unwrap(), b"old");
            fs::remove_file(&dst).unwrap();
            publish(temp(b"new"), &dst).unwrap();
            assert_eq!(fs::read(&dst).unwrap(), b"new");
            let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names, ["dst"]);
        }
    }

    #[test]
    fn a_destination_without_a_name_is_refused() {
        for dst in ["/", ".."] {
            let err = publish_path(Path::new(dst), Replace::Yes, false, |_| Ok::<_, Error>(())).unwrap_err();
            assert!(err.to_string().contains("no file name"), "{err}");
        }
    }
}
