//! Tar archives that keep holes: a streaming reader and writer.
//!
//! Why our own: the `tar` crate reads and writes old GNU sparse entries, but
//! reads PAX sparse 0.0 with wrong content and 0.1/1.0 under their
//! `GNUSparseFile.N/` names, with no error (DESIGN.md, checked 2026-11); and
//! its sparse reader hands out the holes as zeros, which a disk of a few GiB
//! of data in 50 GiB would pay for in full. This module gives the data
//! segments with their offsets instead, so holes cost nothing either way.
//!
//! Owners, device numbers and extended attributes (PAX `SCHILY.xattr.*`,
//! what GNU tar, Docker and umoci write) come with each entry, so OCI
//! layers can be applied with them.
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
pub use write::{Sink, Writer};

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
    /// Permission bits, setuid, setgid and sticky included.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch (times before it read as 0).
    pub mtime: u64,
    /// Major and minor numbers of a device node (0 for other kinds).
    pub device: (u32, u32),
    /// Extended attributes from PAX `SCHILY.xattr.NAME` records, in order.
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub link_name: Vec<u8>,
    /// Where the stored data goes in the file, in order.
    pub segments: Vec<Segment>,
    /// Whether the entry was stored sparse (in any format).
    pub sparse: bool,
}

impl Entry {
    /// A regular file of `size` bytes at `path`: mode 0644, owned by root,
    /// time 0, nothing else.
    pub fn file(path: &[u8], size: u64) -> Entry {
        Entry {
            path: path.to_vec(),
            kind: Kind::File,
            size,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            device: (0, 0),
            xattrs: Vec::new(),
            link_name: Vec::new(),
            segments: Vec::new(),
            sparse: false,
        }
    }

    /// The name for messages.
    pub fn path_lossy(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}
