//! The one bound on how deep a tree may nest, for every part of the crate:
//! layers are refused the entry that would pass it ([`crate::apply`]), and
//! the ext4, erofs and cpio builders refuse a tree from elsewhere that
//! passes it, before any tool runs or any byte is written.
//!
//! Depth counts the names from the root to an entry: `etc` is 1 deep,
//! `etc/ssl/certs` 3. [`MAX_DEPTH`] is 512, far beyond what real images
//! use (a deep `node_modules` is under 100) and below where the tools
//! break. What checking found (2026-12, 8 MiB stack, Linux's default; the
//! tests build a tree at the bound with each tool and check it):
//! - erofs-utils 1.5 recurses on the stack: `fsck.erofs --extract` dies
//!   of SIGSEGV on a tree 643 or 644 deep (the depth moves by one with the
//!   size of the environment; 600 passes), `mkfs.erofs` at 1,941 (1,940
//!   passes); with a 4 MiB stack (`ulimit -s 4096`) both crash at about
//!   half that, so [`crate::erofs`] runs them with at least 8 MiB.
//! - e2fsprogs 1.47.0 and 1.47.2 (bookworm-backports) build and check
//!   trees 3,000 deep. Their `mke2fs -d` aborts with heap corruption
//!   ("realloc(): invalid next size") on any tree holding a path of
//!   exactly 2,039 bytes, at any depth: an off-by-one in the buffer it
//!   grows for paths (255, 510, 1,020, then 2,040 bytes, the one size where
//!   malloc leaves no slack). The 1,500-deep tree that aborted it had such
//!   a path; [`crate::ext4`] refuses that length alone.

/// The deepest entry a tree may have, in names below the root.
pub const MAX_DEPTH: usize = 512;

/// A tree deeper than [`MAX_DEPTH`]. Builders return it inside an
/// `io::Error` of kind `InvalidInput` (`err.get_ref()` downcasts to it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{path}: {depth} levels below the root, deeper than the {MAX_DEPTH} vmimg accepts \
     (fsck.erofs 1.5 crashes at about 640): flatten the tree"
)]
pub struct TooDeep {
    /// The entry found too deep, relative to the root.
    pub path: String,
    /// How deep it is.
    pub depth: usize,
}

/// An error when an entry `depth` names below the root passes the bound;
/// `path` is asked for only then.
pub fn check(depth: usize, path: impl FnOnce() -> String) -> Result<(), TooDeep> {
    if depth > MAX_DEPTH { Err(TooDeep { path: path(), depth }) } else { Ok(()) }
}

impl From<TooDeep> for std::io::Error {
    fn from(err: TooDeep) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, err)
    }
}

/// The [`TooDeep`] an `io::Error` carries, if it carries one.
pub fn too_deep(err: &std::io::Error) -> Option<&TooDeep> {
    err.get_ref().and_then(|inner| inner.downcast_ref())
}
