//! Copying a raw disk, keeping its holes, optionally extended to a larger size.
//!
//! [`copy_raw`] owns the whole copy: it refuses a qcow2 source (probed from
//! its magic), a size smaller than the source's, a destination that is the
//! source itself, a directory or a device, or whose directory is missing,
//! all before anything is written. The copy goes to a
//! temporary file beside the destination and is renamed over it only when
//! complete (see `publish`), then extended with `set_len`: the new space is
//! a hole that reads as zeros.
//!
//! Methods, fastest first; each is tried only when the filesystem refuses the
//! one before it:
//!
//! 1. a reflink (`FICLONE`): the copy shares the source's blocks (btrfs, XFS,
//!    bcachefs…), so nothing is read or written and holes stay holes;
//! 2. `copy_file_range` on each data range that SEEK_DATA/SEEK_HOLE finds:
//!    the kernel copies without passing the bytes through user space, and
//!    network filesystems may copy on the server;
//! 3. positioned reads and writes of each data range through one fixed
//!    buffer, skipping every all-zero 4 KiB block.
//!
//! Holes are never read or written by any method, so copying a large sparse
//! disk costs what its data costs, and memory is one buffer whatever the size.

use crate::error::{Error, Result};
use crate::probe::{Content, NotADisk};
use crate::publish::publish;
use crate::raw::RawExtents;
use crate::zero::write_skipping_zeros;
use rustix::fs::{SeekFrom, copy_file_range, ioctl_ficlone, seek};
use rustix::io::Errno;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use vmimg_qcow2::Allocation;

/// The read/write buffer, and the most one `copy_file_range` call is asked for.
const CHUNK: u64 = 1 << 20;

/// How a copy moves the data, fastest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CopyMethod {
    /// The copy shares the source's blocks (`FICLONE`).
    Reflink,
    /// The kernel copies each data range (`copy_file_range`).
    CopyFileRange,
    /// Positioned reads and writes of each data range; all-zero blocks
    /// inside data ranges become holes too.
    ReadWrite,
}

impl CopyMethod {
    pub fn name(self) -> &'static str {
        match self {
            CopyMethod::Reflink => "reflink",
            CopyMethod::CopyFileRange => "copy_file_range",
            CopyMethod::ReadWrite => "read/write",
        }
    }
}

/// How to copy.
#[derive(Debug, Clone, Copy)]
pub struct CopyOptions {
    /// The size of the copy; None keeps the source's. Smaller than the
    /// source's is refused.
    pub size: Option<u64>,
    /// Flush the copy to stable storage before it is published.
    pub sync: bool,
    /// The first method to try; slower ones follow when the filesystem
    /// refuses it. `CopyFileRange` makes a copy that shares no blocks with
    /// the source; `ReadWrite` also turns zero blocks into holes.
    pub first_method: CopyMethod,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions { size: None, sync: true, first_method: CopyMethod::Reflink }
    }
}

/// What a copy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    /// The source's size.
    pub source_size: u64,
    /// The copy's size.
    pub virtual_size: u64,
    /// Bytes written to the copy; 0 for a reflink, which shares blocks.
    pub bytes_copied: u64,
    /// The method that finished the copy.
    pub method: CopyMethod,
}

/// Copies the raw disk `src` to `dst` (replaced atomically), keeping holes,
/// extended to `options.size` when given.
pub fn copy_raw(src: &Path, dst: &Path, options: &CopyOptions) -> Result<CopyStats> {
    let source = open_raw(src)?;
    let name = src.file_name().map(|name| name.to_string_lossy().into_owned());
    crate::publish::check_destination(dst, name.as_deref())?;
    refuse_same_file(&source, src, dst)?;
    // Seeking to the end also sizes a block device, whose metadata says 0.
    let source_size = seek(&source, SeekFrom::End(0)).map_err(|e| Error::io("cannot stat", src)(e.into()))?;
    let virtual_size = copy_size(src, source_size, options.size)?;
    publish(dst, options.sync, |out| {
        let copier = Copier { src: &source, src_path: src, dst: out, dst_path: dst };
        let (method, bytes_copied) = copier.copy(source_size, options.first_method)?;
        out.set_len(virtual_size).map_err(Error::io("cannot extend", dst))?;
        Ok(CopyStats { source_size, virtual_size, bytes_copied, method })
    })
}

fn open_raw(path: &Path) -> Result<File> {
    let file = File::open(path).map_err(Error::io("cannot open", path))?;
    // A copy keeps the bytes it is given, as cp would: a file shorter than
    // a sector, not a whole number of them, or text is copied; headers and
    // files that are another format are refused.
    match crate::probe::probe_file(&file).map_err(Error::io("cannot read", path))? {
        Content::Raw | Content::NotADisk(NotADisk::TooSmall(_) | NotADisk::PartialSector(_) | NotADisk::Text) => {
            Ok(file)
        }
        Content::Qcow2 => Err(Error::CopyOfQcow2 { path: path.to_owned() }),
        content => Err(Error::Unsupported { path: path.to_owned(), content }),
    }
}

fn refuse_same_file(source: &File, src: &Path, dst: &Path) -> Result<()> {
    let ours = source.metadata().map_err(Error::io("cannot stat", src))?;
    match fs::metadata(dst) {
        Ok(theirs) if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) => {
            Err(Error::SameFile { verb: "copying", src: src.to_owned(), dst: dst.to_owned() })
        }
        _ => Ok(()),
    }
}

fn copy_size(src: &Path, source_size: u64, requested: Option<u64>) -> Result<u64> {
    match requested {
        Some(requested) if requested < source_size => {
            Err(Error::Shrink { path: src.to_owned(), size: source_size, requested })
        }
        Some(requested) => Ok(requested),
        None => Ok(source_size),
    }
}

/// True when the call failed because this filesystem (or kernel, or pair of
/// files) does not offer it, rather than because the copy went wrong.
fn refused_by_filesystem(e: Errno) -> bool {
    matches!(e, Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::NOSYS)
}

/// One copy from an open source into the new, empty output.
struct Copier<'a> {
    src: &'a File,
    src_path: &'a Path,
    dst: &'a File,
    dst_path: &'a Path,
}

impl Copier<'_> {
    /// Copies the first `len` bytes' data, starting with `first`; returns the
    /// method that finished and the bytes written.
    fn copy(&self, len: u64, first: CopyMethod) -> Result<(CopyMethod, u64)> {
        if first == CopyMethod::Reflink && self.reflink()? {
            return Ok((CopyMethod::Reflink, 0));
        }
        let mut ranges = RangeCopier { copier: self, method: first.max(CopyMethod::CopyFileRange), buf: Vec::new() };
        let mut written = 0;
        for extent in RawExtents::new(self.src, len) {
            let extent = extent.map_err(Error::io("cannot map", self.src_path))?;
            if let Allocation::Data { .. } = extent.allocation {
                written += ranges.copy(extent.start, extent.end())?;
            }
        }
        Ok((ranges.method, written))
    }

    /// Clones the whole source; false when the filesystem cannot.
    fn reflink(&self) -> Result<bool> {
        match ioctl_ficlone(self.dst, self.src) {
            Ok(()) => Ok(true),
            Err(e) if refused_by_filesystem(e) => Ok(false),
            Err(e) => Err(Error::io("cannot reflink", self.src_path)(e.into())),
        }
    }
}

/// Copies data ranges with `copy_file_range`, or with reads and writes from
/// the first time the kernel refuses it.
struct RangeCopier<'a> {
    copier: &'a Copier<'a>,
    method: CopyMethod,
    buf: Vec<u8>,
}

impl RangeCopier<'_> {
    /// Copies `start..end` to the same offsets; returns the bytes written.
    fn copy(&mut self, start: u64, end: u64) -> Result<u64> {
        let (mut pos, mut written) = (start, 0);
        while pos < end {
            let len = (end - pos).min(CHUNK);
            let (advanced, wrote) = match self.method {
                CopyMethod::ReadWrite => self.read_write(pos, len)?,
                _ => match self.kernel_copy(pos, len)? {
                    Some(n) => (n, n),
                    None => {
                        self.method = CopyMethod::ReadWrite;
                        continue;
                    }
                },
            };
            pos += advanced;
            written += wrote;
        }
        Ok(written)
    }

    /// One `copy_file_range` call; None when the kernel refuses it here.
    fn kernel_copy(&self, pos: u64, len: u64) -> Result<Option<u64>> {
        let Copier { src, src_path, dst, .. } = *self.copier;
        let (mut off_in, mut off_out) = (pos, pos);
        match copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), len as usize) {
            Ok(0) => Err(Error::io("cannot copy", src_path)(source_ended(pos))),
            Ok(n) => Ok(Some(n as u64)),
            Err(e) if refused_by_filesystem(e) => Ok(None),
            Err(e) => Err(Error::io("cannot copy", src_path)(e.into())),
        }
    }

    /// Reads `len` bytes at `pos` and writes their non-zero blocks; returns
    /// the bytes advanced and written.
    fn read_write(&mut self, pos: u64, len: u64) -> Result<(u64, u64)> {
        let Copier { src, src_path, dst, dst_path } = *self.copier;
        self.buf.resize(CHUNK as usize, 0);
        let buf = &mut self.buf[..len as usize];
        src.read_exact_at(buf, pos).map_err(Error::io("cannot read", src_path))?;
        let written = write_skipping_zeros(dst, buf, pos).map_err(Error::io("cannot write", dst_path))?;
        Ok((len, written))
    }
}

fn source_ended(pos: u64) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, format!("the source ended at byte {pos} while being copied"))
}
