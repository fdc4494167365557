//! Tar archives that keep holes: a streaming reader and writer.
//!
//! Why our own: the `tar` crate reads and writes old GNU sparse entries, but
//! reads PAX sparse 0.0 with wrong content and 0.1/1.0 under their
//! `GNUSparseFile.N/` names, with no error (DESIGN.md, checked 2026-11); and
//! its sparse reader hands out the holes as zeros, which a disk of a few GiB
//! of data in 50 GiB would pay for in full. This module gives the data
//! segments with their offsets instead, so holes cost nothing either way.
//!
//! - [`Reader`] reads ustar, GNU (long names, old sparse) and PAX archives,
//!   every sparse format GNU tar writes (old GNU, PAX 0.0, 0.1 and 1.0);
//! - [`Writer`] writes ustar entries, with PAX records for what does not
//!   fit, and sparse files as PAX 1.0 (what `tar --format=posix -S` writes,
//!   read by GNU tar and bsdtar).

mod header;
mod read;
mod write;

pub use read::{Limits, Reader};
pub use write::Writer;

/// A run of a file's data: `len` bytes at `offset`. Between segments the
/// file is a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub len: u64,
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Directory,
    Symlink,
    HardLink,
    CharDevice,
    BlockDevice,
    Fifo,
    /// A type flag this reader does not know; its data is skipped.
    Other(u8),
}

/// An entry's metadata, as [`Reader::next_entry`] returns it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The name as stored (PAX `path`, GNU long name or the header's),
    /// unchecked: the caller decides what is safe.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// The file's size, holes included.
    pub size: u64,
    pub mode: u32,
    /// Seconds since the epoch.
    pub mtime: u64,
    pub link_name: Vec<u8>,
    /// Where the stored data goes in the file, in order.
    pub segments: Vec<Segment>,
    /// Whether the entry was stored sparse (in any format).
    pub sparse: bool,
}

impl Entry {
    /// The name for messages.
    pub fn path_lossy(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}
