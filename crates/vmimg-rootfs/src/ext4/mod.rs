//! ext4 disks: a root filesystem tree made into a sparse raw ext4 image,
//! empty ext4 disks for volumes and overlays, and their check.
//!
//! The tool, not a crate: no Rust crate writes a general ext4 (`arcbox-ext4`
//! silently drops device nodes and FIFOs, DESIGN.md), so e2fsprogs does the
//! writing: `mke2fs -d` copies the tree with its owners, modes, times, device
//! numbers, hard links, symlinks and xattrs (run as root, or under fakeroot,
//! to read them all); `e2fsck -fyD` then indexes the big directories the way
//! the kernel would have (mke2fs 1.47.0 writes every directory linear);
//! `e2fsck -fn` must find the result clean before it is renamed to its name.
//! Tested with Debian's e2fsprogs 1.47.2 (bookworm-backports; 1.47.0 builds
//! from a directory too). A missing tool is an error that names the
//! package. [`build_merged`] makes the same image from layers merged in
//! memory, fed to `mke2fs -d -` as a tar (module `merged`).
//!
//! This module owns the sizing and the command lines. The image is made and
//! checked in a temporary file beside the output, which
//! `vmimg_disk::publish_path` flushes and renames into place (removing it on
//! any error).
//!
//! It refuses a root that is not a directory, a `lost+found` at the root
//! that is not a directory (mke2fs makes its own there), an output inside
//! the tree, a label longer than 16 bytes, a tree deeper than
//! [`crate::depth::MAX_DEPTH`], a path of exactly 2,039 bytes (mke2fs 1.47.0
//! to 1.47.2 abort on it, see [`crate::depth`]), and, for empty disks, an
//! existing path unless asked (checked first, and again by the rename) and
//! a size under [`MIN_EMPTY_SIZE`] or not a multiple of 4 KiB. The tree is
//! refused before anything is written.
//!
//! # Sizing
//! One walk of the tree (lstat, symlinks never followed, nothing outside the
//! root) counts what mke2fs will allocate, in 4 KiB blocks, as upper bounds:
//! - a regular file: a block per 4 KiB of its data (where the file is
//!   sparse, the data runs SEEK_DATA finds), plus extent blocks if it may
//!   need more than the 4 extents an inode holds (an extent per data run,
//!   per 128 MiB and per metadata area it may cross; 340 extents a block);
//!   hard links once, by (device, inode), like mke2fs;
//! - a directory: records of 8 bytes + the name, rounded to 4, in blocks of
//!   4084 bytes (12 are the checksum tail), as mke2fs packs them linear and
//!   as `e2fsck -D` indexes them (leaves left 20 % empty, a root block, index
//!   blocks past 507 leaves), the larger; plus extent blocks (mke2fs
//!   interleaves directory blocks with files, so every block may be its own
//!   extent); `lost+found` keeps 4 blocks;
//! - a symlink of 60 bytes or more: a block; xattrs that do not fit the 92
//!   bytes a 256-byte inode has for them: a block;
//! - inodes: the 11 reserved ones (root and lost+found among them) and one
//!   per file, directory, symlink (mke2fs never shares one between symlinks),
//!   device, FIFO and socket.
//!
//! Free for the guest: `headroom` of the tree's blocks, at least
//! `min_free_bytes`; free inodes: `headroom` of the tree's, at least
//! `min_free_inodes`. Then the layout mke2fs gives those numbers (`-b 4096
//! -I 256 -N`): per group of 32768 blocks two bitmaps and an inode table
//! (16 inodes a block, the count rounded up to fill them); in groups 0, 1 and
//! the powers of 3, 5 and 7 a superblock, the group descriptors (64 a block)
//! and the reserved descriptor blocks for growing 1024 times (at most 1024);
//! the journal at mke2fs's own default for the size, passed explicitly with
//! `-J size=` (4 MiB under 128 MiB, 16 under 1 GiB, 32 under 2, 64 under 16,
//! 128 under 32, 256 under 64, 512 under 128 GiB, 1 GiB above); the root,
//! lost+found and resize-inode blocks; and a last group too small for its
//! metadata (which mke2fs would drop) is grown. (A test checks this layout
//! against mke2fs's free block count, exact from 64 MiB to 70 GiB.) A margin
//! of 1/512 of the tree and 1 MiB covers what the model cannot see. The image is sparse: free
//! space, inode tables and the journal cost no host space.
//!
//! `-m 0`: no blocks are reserved for root. The headroom is the guest's free
//! space; a 5 % reserve would hide part of it from unprivileged processes and
//! grow with the image for nothing.
//!
//! Cost: mke2fs 1.47.0 adds each entry by scanning its whole directory, so a
//! directory of n entries costs O(n²): 20,000 entries in one directory take
//! 20 to 35 s (by name length) on this project's machines, 2,000 a fraction
//! of a second. 1.47.1 fixed that.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::{self, File, Metadata};
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::fs::SeekFrom;
use rustix::io::Errno;

use crate::depth;
use vmimg_disk::Replace;

/// The block size of every image made here.
pub const BLOCK_SIZE: u64 = 4096;
/// The smallest empty disk [`new_empty`] makes.
pub const MIN_EMPTY_SIZE: u64 = 16 << 20;

mod merged;
pub use merged::{build_merged, check_reads_tar, reads_tar};

const INODE_SIZE: u64 = 256;
const BLOCKS_PER_GROUP: u64 = BLOCK_SIZE * 8;
/// Group descriptors are 64 bytes with the 64bit feature.
const DESCS_PER_BLOCK: u64 = BLOCK_SIZE / 64;
const INODES_PER_BLOCK: u64 = BLOCK_SIZE / INODE_SIZE;
const MAX_INODES_PER_GROUP: u64 = BLOCK_SIZE * 8;
/// Inodes 1 to 10 are reserved (2 is the root), 11 is lost+found.
const FIRST_INODE: u64 = 11;
const LOST_FOUND_BLOCKS: u64 = 4;
/// The resize inode's double-indirect block.
const RESIZE_INODE_BLOCKS: u64 = 1;
/// A directory block less its checksum tail (metadata_csum).
const DIR_BLOCK_USABLE: u64 = BLOCK_SIZE - 12;
/// `e2fsck -D` leaves this much of each index leaf empty (its default 20 %).
const HTREE_SLACK: u64 = DIR_BLOCK_USABLE * 20 / 100;
/// Index entries in the root block and in an interior block of an htree.
const HTREE_ROOT_ENTRIES: u64 = (BLOCK_SIZE - 40) / 8;
const HTREE_NODE_ENTRIES: u64 = (BLOCK_SIZE - 16) / 8;
const EXTENTS_IN_INODE: u64 = 4;
const EXTENTS_PER_BLOCK: u64 = (BLOCK_SIZE - 12) / 12;
const MAX_EXTENT_BLOCKS: u64 = 32768;
/// Bytes for xattr entries in a 256-byte inode: 256 - 128 - 32 (extra
/// fields) - 4 (magic).
const IN_INODE_XATTR_BYTES: u64 = INODE_SIZE - 128 - 32 - 4;
/// Longer symlink targets take a block.
const FAST_SYMLINK_MAX: u64 = 59;
const FLEX_BG_SIZE: u32 = 16;
const EMPTY_BYTES_PER_INODE: u64 = 16384;
/// The length of a path (from the root, no leading `/`) that makes
/// `mke2fs -d` 1.47.0 to 1.47.2 overflow its path buffer by a byte and abort.
const MKE2FS_FATAL_PATH_LEN: usize = 2039;
/// Every feature, explicitly, so a host's mke2fs.conf cannot change the
/// layout (Debian 1.47.0's ext4 defaults; no orphan_file, which kernels
/// before 5.15 cannot write).
const FEATURES: &str = "none,has_journal,ext_attr,resize_inode,dir_index,filetype,extent,64bit,flex_bg,\
                        sparse_super,large_file,huge_file,dir_nlink,extra_isize,metadata_csum";

/// Directories of more entries than this make `mke2fs -d` (1.47.2) slow:
/// each name it adds scans every block of its directory, checking each
/// block's checksum (one directory of 18,000 names: 19 s; 11 s without
/// checksums; e2fsprogs after 1.47.2 appends instead). Such trees are made
/// without `metadata_csum`, which `tune2fs -O metadata_csum` then adds
/// (`e2fsck -fyD`, run in any case, rebuilds directories with their
/// checksum tails): the same features, in half the time.
const CHECKSUMS_LATER_ABOVE: u64 = 2_000;

/// The features of a new image, `metadata_csum` left for later when asked.
fn features(checksums_later: bool) -> &'static str {
    match checksums_later {
        true => FEATURES.strip_suffix(",metadata_csum").expect("metadata_csum comes last"),
        false => FEATURES,
    }
}

/// Adds `metadata_csum` to an image made without it.
fn add_checksums(image: &Path, identity: &Identity) -> io::Result<()> {
    let mut cmd = Tool::Tune2fs.command(identity)?;
    cmd.args(["-O", "metadata_csum"]).arg(image);
    run(Tool::Tune2fs, cmd, image, None).map(drop)
}

/// What every image carries of its identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// Volume label (`-L`), at most 16 bytes.
    pub label: Option<String>,
    /// The filesystem UUID, also used as the directory hash seed; random
    /// when `None`.
    pub uuid: Option<[u8; 16]>,
    /// Seconds since the epoch for the superblock and lost+found times
    /// (`E2FSPROGS_FAKE_TIME`); now when `None`. With `uuid` too, the same
    /// tree gives the same bytes (atimes are copied from the tree, and
    /// reading it may move them).
    pub timestamp: Option<u64>,
}

/// How [`build`] sizes an image.
#[derive(Debug, Clone, PartialEq)]
pub struct Ext4Options {
    /// Free space left for the guest, as a fraction of the space the tree
    /// takes (0.2: 20 %); also the fraction of free inodes.
    pub headroom: f64,
    /// At least this much free space, whatever `headroom` gives.
    pub min_free_bytes: u64,
    /// At least this many free inodes, whatever `headroom` gives.
    pub min_free_inodes: u64,
    pub identity: Identity,
}

impl Default for Ext4Options {
    /// 20 % headroom, at least 64 MiB and 16384 inodes free: room for a
    /// guest's logs and a few packages.
    fn default() -> Self {
        Ext4Options { headroom: 0.2, min_free_bytes: 64 << 20, min_free_inodes: 16384, identity: Identity::default() }
    }
}

/// What [`build`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ext4Summary {
    /// The image's size in bytes (apparent; most of it is holes).
    pub size: u64,
    /// The filesystem's inode count.
    pub inodes: u64,
    /// Inodes the tree's entries take: regular files (hard links once),
    /// directories, symlinks, devices, FIFOs and sockets; the root not
    /// counted.
    pub files: u64,
    /// The sizes of the tree's regular files added up (hard links once).
    pub data_bytes: u64,
    /// What the tree takes in the image by the estimate: data, directory,
    /// extent, symlink and xattr blocks.
    pub tree_bytes: u64,
    /// Free bytes in the image, read from its superblock.
    pub free_bytes: u64,
    /// Free inodes in the image, read from its superblock.
    pub free_inodes: u64,
}

/// How [`new_empty`] makes a disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmptyOptions {
    /// Replace a file already at the path (refused otherwise).
    pub replace: bool,
    pub identity: Identity,
}

/// Why an e2fsprogs step failed. It travels inside the `io::Error` the
/// functions return (`err.get_ref()` downcasts to it). Its message is one
/// line, quoting the line of the tool's output that tells what went wrong
/// (see `tool.rs`); `output` keeps all of it.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("{tool} not found in PATH, /usr/sbin or /sbin: install the Debian package e2fsprogs")]
    MissingTool { tool: &'static str },
    #[error("{tool} failed on {image} ({status}): {}: {}", crate::tool::summary(output), tool_advice(tool, output))]
    Tool { tool: &'static str, image: PathBuf, status: String, output: String },
    #[error(
        "this host's mke2fs is {version}, which cannot read a tar (mke2fs -d -, from 1.47.1): install e2fsprogs \
         1.47.1 or later and libarchive13 (on Debian bookworm: apt-get install -t bookworm-backports e2fsprogs \
         libarchive13)"
    )]
    CannotReadTar { version: String },
    #[error(
        "{image} is not a clean ext4 filesystem: e2fsck -fn exited with {status}: {}: `e2fsck -fn` lists every \
         problem, `e2fsck -f` repairs what it can",
        crate::tool::summary(output)
    )]
    NotClean { image: PathBuf, status: String, output: String },
}

/// What to do when `tool` failed saying `output`.
fn tool_advice(tool: &str, output: &str) -> String {
    if output.contains("No space left on device") {
        "free space on the filesystem that holds the image".to_owned()
    } else if ["Could not allocate", "No free space", "too small"].iter().any(|s| output.contains(s)) {
        "the image was sized too small for the tree: that is a bug in vmimg's estimate, please report it".to_owned()
    } else {
        format!("vmimg is tested with e2fsprogs 1.47 (`{tool} -V` shows this host's)")
    }
}

impl From<Ext4Error> for io::Error {
    fn from(err: Ext4Error) -> Self {
        let kind = match &err {
            Ext4Error::MissingTool { .. } | Ext4Error::CannotReadTar { .. } => io::ErrorKind::NotFound,
            Ext4Error::NotClean { .. } => io::ErrorKind::InvalidData,
            Ext4Error::Tool { output, .. } if output.contains("No space left on device") => io::ErrorKind::StorageFull,
            Ext4Error::Tool { .. } => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}

/// Makes `out` a sparse raw ext4 image holding the tree at `root`, sized by
/// the rules in the module doc, checked with `e2fsck -fn` before it takes
/// the name `out` (replacing a file there). The root directory's mode,
/// owner and times are the tree root's.
pub fn build(root: &Path, out: &Path, options: &Ext4Options) -> io::Result<Ext4Summary> {
    check_options(options)?;
    let tree = survey(root)?;
    refuse_output_inside(root, out)?;
    let plan = Plan::new(&tree, options);
    let make = |image: &Path| {
        set_size(image, plan.blocks * BLOCK_SIZE)?;
        let inodes = OsString::from(plan.inodes.to_string());
        let extra = [OsStr::new("-N"), &inodes, OsStr::new("-d"), root.as_os_str()];
        let later = tree.largest_dir > CHECKSUMS_LATER_ABOVE;
        let cmd = mke2fs_command(image, plan.blocks, plan.journal_blocks, &options.identity, features(later), &extra)?;
        run(Tool::Mke2fs, cmd, image, None)?;
        set_root_inode(image, root, &options.identity)?;
        if later {
            add_checksums(image, &options.identity)?;
        }
        e2fsck_optimize(image, &options.identity)?;
        check(image)?;
        Superblock::read(image)
    };
    let sb = vmimg_disk::publish_path(out, Replace::Yes, true, |image| make(image).map_err(told_of(out)))?;
    Ok(Ext4Summary::of(&tree, &sb))
}

impl Ext4Summary {
    /// What an image made for `tree` holds, by its superblock `sb`.
    fn of(tree: &Tree, sb: &Superblock) -> Ext4Summary {
        Ext4Summary {
            size: sb.blocks * BLOCK_SIZE,
            inodes: sb.inodes,
            files: tree.inodes,
            data_bytes: tree.data_bytes,
            tree_bytes: tree.blocks * BLOCK_SIZE,
            free_bytes: sb.free_blocks * BLOCK_SIZE,
            free_inodes: sb.free_inodes,
        }
    }
}

/// Makes `path` an empty sparse ext4 disk of `size` bytes (a multiple of
/// 4 KiB, at least [`MIN_EMPTY_SIZE`]), one inode per 16 KiB, through a
/// temporary file renamed into place. An existing `path` is refused unless
/// `options.replace`.
pub fn new_empty(path: &Path, size: u64, options: &EmptyOptions) -> io::Result<()> {
    check_identity(&options.identity)?;
    if size < MIN_EMPTY_SIZE || !size.is_multiple_of(BLOCK_SIZE) {
        return Err(invalid(format!(
            "{}: an empty ext4 disk must be at least {} MiB and a multiple of 4 KiB; asked for {size} bytes",
            path.display(),
            MIN_EMPTY_SIZE >> 20
        )));
    }
    if !options.replace && fs::symlink_metadata(path).is_ok() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{}: already exists", path.display())));
    }
    let blocks = size / BLOCK_SIZE;
    let replace = if options.replace { Replace::Yes } else { Replace::No };
    let make = |image: &Path| {
        set_size(image, size)?;
        let ratio = OsString::from(EMPTY_BYTES_PER_INODE.to_string());
        mke2fs(image, blocks, journal_blocks(blocks), &options.identity, &[OsStr::new("-i"), &ratio])?;
        check(image)
    };
    vmimg_disk::publish_path(path, replace, true, |image| make(image).map_err(told_of(path)))
}

/// A tool's error about the temporary image, told of `out`, the path the
/// caller asked for (the temporary is gone once the error is seen).
fn told_of(out: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |error| {
        if error.get_ref().and_then(|inner| inner.downcast_ref::<Ext4Error>()).is_none() {
            return error;
        }
        let kind = error.kind();
        let inner = error.into_inner().expect("checked above").downcast::<Ext4Error>().expect("checked above");
        let renamed = match *inner {
            Ext4Error::Tool { tool, status, output, .. } => Ext4Error::Tool { tool, image: out.into(), status, output },
            Ext4Error::NotClean { status, output, .. } => Ext4Error::NotClean { image: out.into(), status, output },
            other => other,
        };
        io::Error::new(kind, renamed)
    }
}

/// Checks the ext4 image at `image` with `e2fsck -fn` (read-only, forced):
/// an error carrying e2fsck's output unless it is clean.
pub fn check(image: &Path) -> io::Result<()> {
    fs::metadata(image).map_err(at(image))?;
    let output = Tool::E2fsck.command(&Identity::default())?.arg("-fn").arg(image).stdin(Stdio::null()).output()?;
    if output.status.success() {
        return Ok(());
    }
    Err(Ext4Error::NotClean {
        image: image.to_path_buf(),
        status: output.status.to_string(),
        output: output_text(&output.stdout, &output.stderr),
    }
    .into())
}

// ---------------------------------------------------------------- the tree

/// What the tree needs in the image.
#[derive(Debug, Default)]
struct Tree {
    /// Inodes beyond the reserved ones (the root and a root lost+found are
    /// among those).
    inodes: u64,
    /// Entries of the largest directory.
    largest_dir: u64,
    /// Blocks, lost+found's included.
    blocks: u64,
    data_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Root,
    LostFound,
    Other,
}

fn survey(root: &Path) -> io::Result<Tree> {
    let meta = fs::symlink_metadata(root).map_err(at(root))?;
    if !meta.is_dir() {
        return Err(invalid(format!("{}: not a directory", root.display())));
    }
    let mut tree = Tree { blocks: xattr_blocks(root)?, ..Tree::default() };
    let mut linked = HashSet::new();
    let mut lost_found = false;
    let mut dirs = vec![(root.to_path_buf(), Place::Root, 0)];
    while let Some((dir, place, depth)) = dirs.pop() {
        let mut names = DirNames::default();
        for entry in fs::read_dir(&dir).map_err(at(&dir))? {
            let entry = entry.map_err(at(&dir))?;
            let name = entry.file_name();
            let path = entry.path();
            check_entry(root, &path, depth + 1)?;
            let meta = fs::symlink_metadata(&path).map_err(at(&path))?;
            names.add(name.len());
            let root_lost_found = place == Place::Root && name == "lost+found";
            if root_lost_found && !meta.is_dir() {
                return Err(invalid(format!(
                    "{}: not a directory, and mke2fs makes lost+found a directory",
                    path.display()
                )));
            }
            if meta.is_dir() {
                lost_found |= root_lost_found;
                tree.inodes += u64::from(!root_lost_found);
                tree.blocks += xattr_blocks(&path)?;
                dirs.push((path, if root_lost_found { Place::LostFound } else { Place::Other }, depth + 1));
                continue;
            }
            let kind = meta.file_type();
            // mke2fs links a non-symlink to the inode it made for the same
            // (device, inode) before: one inode, its blocks once.
            if !kind.is_symlink() && meta.nlink() > 1 && !linked.insert((meta.dev(), meta.ino())) {
                continue;
            }
            tree.inodes += 1;
            tree.blocks += xattr_blocks(&path)?;
            if kind.is_symlink() {
                tree.blocks += u64::from(meta.len() > FAST_SYMLINK_MAX);
            } else if kind.is_file() {
                tree.data_bytes += meta.len();
                tree.blocks += file_blocks(&path, &meta)?;
            }
        }
        if place == Place::Root && !lost_found {
            names.add("lost+found".len());
            tree.blocks += LOST_FOUND_BLOCKS;
        }
        let blocks = names.blocks();
        tree.blocks += if place == Place::LostFound { blocks.max(LOST_FOUND_BLOCKS) } else { blocks };
        tree.largest_dir = tree.largest_dir.max(names.entries);
    }
    Ok(tree)
}

/// Refuses an entry `depth` names below the root that mke2fs could not
/// take.
fn check_entry(root: &Path, path: &Path, depth: usize) -> io::Result<()> {
    let relative = path.strip_prefix(root).unwrap_or(path);
    depth::check(depth, || relative.display().to_string())?;
    if relative.as_os_str().len() == MKE2FS_FATAL_PATH_LEN {
        return Err(invalid(format!(
            "{}: a path of {MKE2FS_FATAL_PATH_LEN} bytes, the one length mke2fs 1.47 cannot take (it overflows \
             its path buffer and aborts): rename a directory on the path",
            relative.display()
        )));
    }
    Ok(())
}

/// The blocks a regular file takes: data and extent tree.
fn file_blocks(path: &Path, meta: &Metadata) -> io::Result<u64> {
    let size = meta.len();
    if size == 0 {
        return Ok(0);
    }
    // Fewer bytes allocated than the size: holes (or a compressing
    // filesystem); SEEK_DATA tells which.
    let (data, runs) =
        if meta.blocks() * 512 >= size { (size.div_ceil(BLOCK_SIZE), 1) } else { data_runs(path, size)? };
    Ok(data_and_extent_blocks(data, runs))
}

/// `data` blocks in `runs` runs of data, and the extent tree they need.
fn data_and_extent_blocks(data: u64, runs: u64) -> u64 {
    // An extent per run, per longest extent, and per metadata area (a
    // group's backup superblock, a flex group's tables, the journal) a run
    // may cross; never more than the blocks. A run of zero blocks inside
    // the data becomes a hole and may add an extent, but it takes a data
    // block less than counted here, which pays for it.
    let extents = (runs + 2 * data.div_ceil(MAX_EXTENT_BLOCKS) + 1).min(data);
    data + extent_tree_blocks(extents)
}

/// Data blocks and runs of a sparse file, by SEEK_DATA and SEEK_HOLE; the
/// whole file as one run where the filesystem cannot tell.
fn data_runs(path: &Path, size: u64) -> io::Result<(u64, u64)> {
    let file = File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32 | rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(at(path))?;
    let (mut blocks, mut runs, mut covered, mut pos) = (0, 0, 0, 0);
    while pos < size {
        let start = match rustix::fs::seek(&file, SeekFrom::Data(pos)) {
            Ok(start) => start,
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::NOTSUP) => return Ok((size.div_ceil(BLOCK_SIZE), 1)),
            Err(e) => return Err(at(path)(e.into())),
        };
        let end = rustix::fs::seek(&file, SeekFrom::Hole(start)).map_err(|e| at(path)(e.into()))?.min(size);
        if end <= start {
            break;
        }
        let first = (start / BLOCK_SIZE).max(covered);
        covered = end.div_ceil(BLOCK_SIZE);
        blocks += covered.saturating_sub(first);
        runs += 1;
        pos = end;
    }
    Ok((blocks, runs))
}

/// Blocks of an extent tree holding `extents` (the inode holds 4).
fn extent_tree_blocks(extents: u64) -> u64 {
    let (mut level, mut blocks) = (extents, 0);
    while level > EXTENTS_IN_INODE {
        level = level.div_ceil(EXTENTS_PER_BLOCK);
        blocks += level;
    }
    blocks
}

/// A block for the xattrs of the entry at `path` if they do not fit in its
/// inode.
fn xattr_blocks(path: &Path) -> io::Result<u64> {
    let len = match rustix::fs::llistxattr_query(path) {
        Ok(len) => len,
        Err(Errno::NOTSUP) => 0,
        Err(e) => return Err(at(path)(e.into())),
    };
    if len == 0 {
        return Ok(0);
    }
    let mut list = vec![0; len];
    let len = rustix::fs::llistxattr(path, &mut list).map_err(|e| at(path)(e.into()))?;
    let mut xattrs = Vec::new();
    for name in list[..len].split(|&b| b == 0).filter(|name| !name.is_empty()) {
        let value = rustix::fs::lgetxattr_query(path, OsStr::from_bytes(name)).map_err(|e| at(path)(e.into()))?;
        xattrs.push((name, value as u64));
    }
    Ok(xattr_block(xattrs))
}

/// A block for xattrs (names and value lengths) if they do not fit in
/// their inode.
fn xattr_block<'a>(xattrs: impl IntoIterator<Item = (&'a [u8], u64)>) -> u64 {
    // Entries: a 16-byte header, the name less its prefix's index, the
    // value, each rounded to 4; then a 4-byte end mark.
    let bytes: u64 =
        4 + xattrs.into_iter().map(|(name, value)| 16 + round4(xattr_suffix_len(name)) + round4(value)).sum::<u64>();
    u64::from(bytes > IN_INODE_XATTR_BYTES)
}

/// The length ext4 stores of an xattr name: known prefixes become an index.
fn xattr_suffix_len(name: &[u8]) -> u64 {
    const WHOLE: [&[u8]; 2] = [b"system.posix_acl_access", b"system.posix_acl_default"];
    const PREFIXES: [&[u8]; 4] = [b"user.", b"trusted.", b"security.", b"system."];
    if WHOLE.contains(&name) {
        return 0;
    }
    let prefix = PREFIXES.iter().find(|p| name.starts_with(p)).map_or(0, |p| p.len());
    (name.len() - prefix) as u64
}

fn round4(n: u64) -> u64 {
    n.next_multiple_of(4)
}

/// The names of one directory, for its size.
#[derive(Debug, Default)]
struct DirNames {
    /// Record bytes of the entries, `.` and `..` not included.
    bytes: u64,
    longest: u64,
    entries: u64,
}

impl DirNames {
    fn add(&mut self, name_len: usize) {
        let record = round4(8 + name_len as u64);
        self.bytes += record;
        self.longest = self.longest.max(record);
        self.entries += 1;
    }

    /// Blocks the directory takes, linear as mke2fs writes it and indexed
    /// as `e2fsck -D` rewrites it, whichever is more, and its extent tree.
    fn blocks(&self) -> u64 {
        // Every block but the last is full to within the longest record:
        // mke2fs puts an entry in the first block with room, e2fsck packs
        // them in order. `.` and `..` take 24 bytes of the first.
        let longest = self.longest.max(12);
        let linear = (self.bytes + 24).div_ceil(DIR_BLOCK_USABLE + 4 - longest);
        let mut blocks = linear;
        // e2fsck indexes a directory of two blocks or more whose entries
        // would not fit one: leaves are closed once less than the slack is
        // left, behind a root block (and interior blocks past its 507).
        if linear >= 2 && self.bytes >= BLOCK_SIZE - 24 {
            let fill = round4(DIR_BLOCK_USABLE - HTREE_SLACK + 1).min(DIR_BLOCK_USABLE + 4 - longest);
            let leaves = self.bytes.div_ceil(fill);
            let interior = if leaves <= HTREE_ROOT_ENTRIES { 0 } else { leaves.div_ceil(HTREE_NODE_ENTRIES) };
            blocks = blocks.max(1 + leaves + interior);
        }
        blocks + extent_tree_blocks(blocks)
    }
}

// -------------------------------------------------------------- the layout

/// The image's numbers: blocks, inodes asked of mke2fs, journal blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    blocks: u64,
    inodes: u64,
    journal_blocks: u64,
}

impl Plan {
    fn new(tree: &Tree, options: &Ext4Options) -> Plan {
        let fraction = |n: u64| (n as f64 * options.headroom).ceil() as u64;
        let free_blocks = fraction(tree.blocks).max(options.min_free_bytes.div_ceil(BLOCK_SIZE));
        let inodes = FIRST_INODE + tree.inodes + fraction(tree.inodes).max(options.min_free_inodes);
        let margin = tree.blocks / 512 + (1 << 20) / BLOCK_SIZE;
        let wanted = tree.blocks + RESIZE_INODE_BLOCKS + free_blocks + margin;
        let mut blocks = wanted;
        loop {
            // At most one inode bitmap (32768 inodes) a group.
            blocks = blocks.max(inodes);
            let layout = Layout::new(blocks, inodes);
            let journal = journal_blocks(blocks);
            let needed = wanted + layout.metadata + journal + journal_extent_blocks(journal);
            if blocks < needed {
                blocks = needed;
            } else if let Some(short) = layout.last_group_shortfall() {
                blocks += short;
            } else {
                return Plan { blocks, inodes, journal_blocks: journal };
            }
        }
    }
}

/// mke2fs's metadata for `blocks` blocks and `inodes` inodes asked.
#[derive(Debug, Clone, Copy)]
struct Layout {
    blocks: u64,
    groups: u64,
    itable_blocks: u64,
    desc_blocks: u64,
    reserved_gdt: u64,
    /// Superblocks, descriptors, reserved descriptors, bitmaps, tables.
    metadata: u64,
}

impl Layout {
    fn new(blocks: u64, inodes: u64) -> Layout {
        let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
        let per_group = inodes.div_ceil(groups).min(MAX_INODES_PER_GROUP);
        let itable_blocks = per_group.div_ceil(INODES_PER_BLOCK);
        let desc_blocks = groups.div_ceil(DESCS_PER_BLOCK);
        // Room to grow the descriptor table to 1024 times the size, or to
        // 2^32 blocks, at most a block of pointers.
        let max_blocks = if blocks < u64::from(u32::MAX) / 1024 { blocks * 1024 } else { u64::from(u32::MAX) };
        let reserved_gdt =
            max_blocks.div_ceil(BLOCKS_PER_GROUP).div_ceil(DESCS_PER_BLOCK).saturating_sub(desc_blocks).min(1024);
        let metadata = backup_groups(groups) * (1 + desc_blocks + reserved_gdt) + groups * (2 + itable_blocks);
        Layout { blocks, groups, itable_blocks, desc_blocks, reserved_gdt, metadata }
    }

    /// Blocks to add so mke2fs keeps the last group: it drops one with
    /// fewer than its metadata + 50 blocks.
    fn last_group_shortfall(&self) -> Option<u64> {
        let rest = self.blocks % BLOCKS_PER_GROUP;
        let mut overhead = 2 + self.itable_blocks;
        if has_superblock(self.groups - 1) {
            overhead += 1 + self.desc_blocks + self.reserved_gdt;
        }
        (rest != 0 && rest < overhead + 50).then(|| overhead + 50 - rest)
    }

    /// The inodes mke2fs makes: a whole number of inode table blocks.
    #[cfg(test)]
    fn inodes(&self) -> u64 {
        self.itable_blocks * INODES_PER_BLOCK * self.groups
    }
}

/// Groups with a superblock copy (sparse_super): 0, 1 and the powers of 3,
/// 5 and 7.
fn backup_groups(groups: u64) -> u64 {
    let mut count = groups.min(2);
    for base in [3u64, 5, 7] {
        let mut g = base;
        while g < groups {
            count += 1;
            g *= base;
        }
    }
    count
}

fn has_superblock(group: u64) -> bool {
    let power_of = |base: u64| {
        let mut g = group;
        while g > 1 && g.is_multiple_of(base) {
            g /= base;
        }
        g == 1
    };
    group <= 1 || power_of(3) || power_of(5) || power_of(7)
}

/// mke2fs's default journal for a filesystem of `blocks` blocks
/// (`ext2fs_default_journal_size`).
fn journal_blocks(blocks: u64) -> u64 {
    const STEPS: [(u64, u64); 7] = [
        (32768, 1024),
        (256 * 1024, 4096),
        (512 * 1024, 8192),
        (4096 * 1024, 16384),
        (8192 * 1024, 32768),
        (16384 * 1024, 65536),
        (32768 * 1024, 131072),
    ];
    STEPS.iter().find(|&&(below, _)| blocks < below).map_or(262144, |&(_, journal)| journal)
}

/// The journal is one run in the middle of the filesystem, split by the
/// longest extent and the metadata it crosses.
fn journal_extent_blocks(journal: u64) -> u64 {
    extent_tree_blocks(2 * journal.div_ceil(MAX_EXTENT_BLOCKS) + 2)
}

/// The counts in an image's superblock.
#[derive(Debug, Clone, Copy)]
struct Superblock {
    blocks: u64,
    free_blocks: u64,
    inodes: u64,
    free_inodes: u64,
}

impl Superblock {
    fn read(image: &Path) -> io::Result<Superblock> {
        let mut sb = [0u8; 1024];
        File::open(image).and_then(|f| f.read_exact_at(&mut sb, 1024)).map_err(at(image))?;
        let u32_at = |off: usize| u64::from(u32::from_le_bytes(sb[off..off + 4].try_into().unwrap()));
        if sb[0x38..0x3a] != [0x53, 0xef] || u32_at(0x18) != 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: no ext4 superblock with 4 KiB blocks", image.display()),
            ));
        }
        Ok(Superblock {
            inodes: u32_at(0),
            blocks: u32_at(0x4) | (u32_at(0x150) << 32),
            free_blocks: u32_at(0xc) | (u32_at(0x158) << 32),
            free_inodes: u32_at(0x10),
        })
    }
}

// ------------------------------------------------------------ the commands

#[derive(Debug, Clone, Copy)]
enum Tool {
    Mke2fs,
    E2fsck,
    Debugfs,
    Tune2fs,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Mke2fs => "mke2fs",
            Tool::E2fsck => "e2fsck",
            Tool::Debugfs => "debugfs",
            Tool::Tune2fs => "tune2fs",
        }
    }

    /// The tool in PATH, else where Debian puts it (root's PATH has
    /// /usr/sbin, a user's may not).
    fn path(self) -> Result<PathBuf, Ext4Error> {
        let name = self.name();
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|dir| dir.join(name))
            .find(|candidate| fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
            .ok_or(Ext4Error::MissingTool { tool: name })
    }

    /// A command for the tool with a fixed environment: C messages, no host
    /// e2fsck.conf (its directory slack is part of the sizing), no layout
    /// knobs, and the identity's time.
    fn command(self, identity: &Identity) -> io::Result<Command> {
        let mut cmd = Command::new(self.path()?);
        cmd.env("LC_ALL", "C").env("E2FSCK_CONFIG", "/dev/null");
        for knob in ["MKE2FS_FIRST_META_BG", "MKE2FS_DEVICE_SECTSIZE", "MKE2FS_DEVICE_PHYS_SECTSIZE", "MKE2FS_SYNC"] {
            cmd.env_remove(knob);
        }
        match identity.timestamp {
            Some(time) => cmd.env("E2FSPROGS_FAKE_TIME", time.to_string()).env("E2FSCK_TIME", time.to_string()),
            None => cmd.env_remove("E2FSPROGS_FAKE_TIME").env_remove("E2FSCK_TIME"),
        };
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        Ok(cmd)
    }
}

/// Runs mke2fs for an image of `blocks` blocks with its journal, the
/// identity, and `extra` arguments (the inode count, the source tree).
fn mke2fs(image: &Path, blocks: u64, journal_blocks: u64, identity: &Identity, extra: &[&OsStr]) -> io::Result<()> {
    let cmd = mke2fs_command(image, blocks, journal_blocks, identity, FEATURES, extra)?;
    run(Tool::Mke2fs, cmd, image, None).map(drop)
}

/// The command [`mke2fs`] runs.
fn mke2fs_command(
    image: &Path,
    blocks: u64,
    journal_blocks: u64,
    identity: &Identity,
    features: &str,
    extra: &[&OsStr],
) -> io::Result<Command> {
    let mut cmd = Tool::Mke2fs.command(identity)?;
    let journal_mib = (journal_blocks * BLOCK_SIZE) >> 20;
    let mut extended = "lazy_itable_init=1,lazy_journal_init=1".to_string();
    cmd.args(["-t", "ext4", "-F", "-q", "-b", "4096", "-I", "256", "-m", "0", "-O", features]);
    cmd.arg("-G").arg(FLEX_BG_SIZE.to_string()).arg("-J").arg(format!("size={journal_mib}"));
    if let Some(uuid) = identity.uuid {
        let uuid = format_uuid(&uuid);
        let _ = write!(extended, ",hash_seed={uuid}");
        cmd.arg("-U").arg(uuid);
    }
    if let Some(label) = &identity.label {
        cmd.arg("-L").arg(label);
    }
    cmd.arg("-E").arg(extended).args(extra).arg(image).arg(blocks.to_string());
    Ok(cmd)
}

/// Runs a prepared command on `image`, feeding it `stdin`: its stderr, or
/// an error with its output if it failed (for e2fsck, exit 1 is success:
/// it changed something, as asked).
fn run(tool: Tool, cmd: Command, image: &Path, stdin: Option<&str>) -> io::Result<String> {
    let mut write = |pipe: &mut dyn io::Write| pipe.write_all(stdin.unwrap_or_default().as_bytes());
    run_fed(tool, cmd, image, stdin.is_some().then_some(&mut write))
}

/// Writes a tool's standard input while it runs.
type Feed<'a> = &'a mut dyn FnMut(&mut dyn io::Write) -> io::Result<()>;

/// [`run`] with standard input written by `feed` while the tool reads it
/// (none when `None`). A tool that fails is the error, whatever `feed` met
/// writing to it (a broken pipe, once it stopped reading).
fn run_fed(tool: Tool, mut cmd: Command, image: &Path, feed: Option<Feed>) -> io::Result<String> {
    cmd.stdin(if feed.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().map_err(at(image))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (stdout, stderr) = (drain(stdout), drain(stderr));
    let fed = match (feed, child.stdin.take()) {
        (Some(feed), Some(pipe)) => {
            // A pipe of 1 MiB (Linux's default most for any user) instead
            // of 64 KiB: fewer switches between writer and tool. Only speed
            // depends on it.
            let _ = rustix::pipe::fcntl_setpipe_size(&pipe, 1 << 20);
            let mut pipe = io::BufWriter::with_capacity(1 << 20, pipe);
            feed(&mut pipe).and_then(|()| pipe.flush())
        }
        _ => Ok(()),
    };
    let status = child.wait()?;
    let output = std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    let ok = match tool {
        Tool::E2fsck => matches!(output.status.code(), Some(0 | 1)),
        _ => output.status.success(),
    };
    if !ok {
        return Err(Ext4Error::Tool {
            tool: tool.name(),
            image: image.to_path_buf(),
            status: output.status.to_string(),
            output: output_text(&output.stdout, &output.stderr),
        }
        .into());
    }
    fed?;
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Reads `pipe` to its end on a thread of its own.
fn drain(pipe: Option<impl io::Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// Gives the image's root directory the mode, owner and times of the tree's
/// root (mke2fs 1.47.0 copies only its xattrs).
fn set_root_inode(image: &Path, root: &Path, identity: &Identity) -> io::Result<()> {
    let meta = fs::symlink_metadata(root).map_err(at(root))?;
    let script = format!(
        "sif / mode 0{:o}\nsif / uid {}\nsif / gid {}\nsif / atime @{}\nsif / mtime @{}\nsif / ctime @{}\n",
        meta.mode(),
        meta.uid(),
        meta.gid(),
        meta.atime(),
        meta.mtime(),
        meta.ctime()
    );
    let mut cmd = Tool::Debugfs.command(identity)?;
    cmd.args(["-w", "-f", "-"]).arg(image);
    let stderr = run(Tool::Debugfs, cmd, image, Some(&script))?;
    refuse_complaints(image, &stderr)
}

/// debugfs exits 0 whatever its commands did: anything but its banner on
/// its stderr is a failed command.
fn refuse_complaints(image: &Path, stderr: &str) -> io::Result<()> {
    let complaints: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs ")).collect();
    if !complaints.is_empty() {
        return Err(Ext4Error::Tool {
            tool: "debugfs",
            image: image.to_path_buf(),
            status: "exit status: 0".into(),
            output: complaints.join("\n"),
        }
        .into());
    }
    Ok(())
}

/// `e2fsck -fyD`: indexes the directories mke2fs wrote linear.
fn e2fsck_optimize(image: &Path, identity: &Identity) -> io::Result<()> {
    let mut cmd = Tool::E2fsck.command(identity)?;
    cmd.arg("-fyD").arg(image);
    run(Tool::E2fsck, cmd, image, None).map(drop)
}

// --------------------------------------------------------------- the files

/// Gives the empty temporary image its size: mke2fs writes within it.
fn set_size(image: &Path, bytes: u64) -> io::Result<()> {
    fs::OpenOptions::new().write(true).open(image).and_then(|f| f.set_len(bytes)).map_err(at(image))
}

/// mke2fs would copy the growing image into itself.
fn refuse_output_inside(root: &Path, out: &Path) -> io::Result<()> {
    let root = fs::canonicalize(root).map_err(at(root))?;
    let parent = out.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = fs::canonicalize(parent).map_err(at(parent))?;
    if dir.starts_with(&root) {
        return Err(invalid(format!("{}: the image would be inside the tree {}", out.display(), root.display())));
    }
    Ok(())
}

// ---------------------------------------------------------------- helpers

fn check_options(options: &Ext4Options) -> io::Result<()> {
    if !options.headroom.is_finite() || !(0.0..=100.0).contains(&options.headroom) {
        return Err(invalid(format!("headroom {} is not a fraction between 0 and 100", options.headroom)));
    }
    check_identity(&options.identity)
}

fn check_identity(identity: &Identity) -> io::Result<()> {
    match &identity.label {
        Some(label) if label.len() > 16 || label.contains('\0') => {
            Err(invalid(format!("label {label:?} is longer than 16 bytes or holds a NUL")))
        }
        _ => Ok(()),
    }
}

fn format_uuid(uuid: &[u8; 16]) -> String {
    let hex: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// A tool's output for an error message, the first 16 KiB of it.
fn output_text(stdout: &[u8], stderr: &[u8]) -> String {
    const MAX: usize = 16 << 10;
    let mut text = String::from_utf8_lossy(stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(stderr));
    let text = text.trim();
    if text.len() <= MAX {
        return text.to_string();
    }
    let cut = (0..=MAX).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}\n[… {} more bytes]", &text[..cut], text.len() - cut)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Puts `path` in front of an error's message, keeping its kind.
fn at(path: &Path) -> impl Fn(io::Error) -> io::Error + '_ {
    move |err| io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout model against mke2fs itself: an empty filesystem's free
    /// blocks and inode count, for sizes from 64 MiB to 70 GiB.
    #[test]
    fn layout_matches_mke2fs() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img");
        let cases = [
            (16384u64, 5000u64),
            (51200, 30000),
            (262144, 30000),
            (300000, 70000),
            (786432, 200000),
            (4456448, 100000),
            (18350080, 1_000_000),
        ];
        for (blocks, inodes) in cases {
            let _ = fs::remove_file(&image);
            File::create(&image).unwrap().set_len(blocks * BLOCK_SIZE).unwrap();
            let layout = Layout::new(blocks, inodes);
            assert!(layout.last_group_shortfall().is_none(), "{blocks}: pick a size mke2fs keeps whole");
            let journal = journal_blocks(blocks);
            let asked = OsString::from(inodes.to_string());
            mke2fs(&image, blocks, journal, &Identity::default(), &[OsStr::new("-N"), &asked]).unwrap();
            let sb = Superblock::read(&image).unwrap();
            assert_eq!(sb.blocks, blocks);
            assert_eq!(sb.inodes, layout.inodes(), "inodes for {blocks} blocks, {inodes} asked");
            let fixed = LOST_FOUND_BLOCKS + RESIZE_INODE_BLOCKS + 1; // + the root's block
            let predicted = blocks - layout.metadata - journal - fixed;
            // The model may count a journal extent block mke2fs did not need.
            let slack = journal_extent_blocks(journal);
            assert!(
                sb.free_blocks >= predicted && sb.free_blocks <= predicted + slack,
                "{blocks} blocks, {inodes} inodes: mke2fs left {} free, the model {predicted}",
                sb.free_blocks
            );
        }
    }

    #[test]
    fn dir_blocks() {
        // 20,000 names of 22 bytes: records of 32, 127 a block linear.
        let mut names = DirNames::default();
        (0..20000).for_each(|_| names.add(22));
        let linear = (20000 * 32 + 24u64).div_ceil(DIR_BLOCK_USABLE + 4 - 32);
        assert!(linear >= 158);
        // e2fsck -D made 195 leaves and a root of these (seen with 1.47.0).
        let blocks = names.blocks();
        assert!(blocks >= 196 + extent_tree_blocks(196), "{blocks}");
        assert!(blocks <= 210 + extent_tree_blocks(210), "{blocks}");
        let mut small = DirNames::default();
        small.add(5);
        assert_eq!(small.blocks(), 1);
    }

    #[test]
    fn superblock_groups() {
        let with: Vec<u64> = (0..100).filter(|&g| has_superblock(g)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
        assert_eq!(backup_groups(100), 10);
        assert_eq!(backup_groups(1), 1);
        assert_eq!(extent_tree_blocks(4), 0);
        assert_eq!(extent_tree_blocks(5), 1);
        assert_eq!(extent_tree_blocks(341), 2);
        assert_eq!(extent_tree_blocks(340 * 5), 6);
        assert_eq!(format_uuid(&[0xab; 16]), "abababab-abab-abab-abab-abababababab");
    }
}
