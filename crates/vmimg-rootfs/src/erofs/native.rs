//! erofs images written by vmimg itself from layers merged in memory
//! ([`crate::merge`]), stored or LZ4-compressed: no tree on the host, and
//! the same bytes whoever builds them, since every field is written as
//! the layers give it.
//!
//! Why vmimg writes the format: bookworm's mkfs.erofs (1.5) reads only a
//! directory, which a user without root cannot give owners, devices or
//! `security.*` xattrs, and which costs the whole tree on the host's disk;
//! no Rust crate writes erofs. The image is checked by `fsck.erofs
//! --extract` (every file decoded) before it appears.
//!
//! The layout (Linux's `fs/erofs/erofs_fs.h`, 4 KiB blocks): block 0 holds
//! the superblock at byte 1024; then every regular file's data as its
//! content arrives, in whole blocks: stored (`FLAT_PLAIN`; holes left
//! unwritten read as zeros) or, for a file of more than a block in a
//! compressed image, as LZ4 extents of one block each ([`super::lz4`]);
//! then the full blocks of directories and symlink targets too long to
//! sit beside their inode; then the metadata area: 64-byte inodes (32-bit
//! owners, an mtime each), each followed by its xattrs and either, where
//! it fits in the inode's block, the last partial block of a stored file
//! (kept in a temporary file meanwhile), directory or symlink
//! (`FLAT_INLINE`), or a compressed file's map header and lcluster
//! indexes (`COMPRESSED_FULL`); the root's inode
//! first, so its nid fits the superblock's 16 bits. Directory entries are
//! sorted by name with `.` and `..`, as the kernel's binary search needs.
//! xattrs are kept inline in five namespaces (`user.`, `trusted.`,
//! `security.`, and POSIX ACLs, which erofs stores as the VFS gives
//! them), on any inode; any other is refused by name, as are owners over
//! 32 bits and device numbers erofs's 32-bit field cannot hold.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vmimg_tar::Kind;

use super::lz4::{Encoded, FileEncoder, Level};
use super::{Compression, ErofsImage, ErofsOptions, check_with, invalid, tool, validate, version};
use crate::apply::{RelPath, lossy};
use crate::merge::{Content, Emit, LayerTar, Merged, Node, Xattrs, st_mode};
use vmimg_disk::Replace;

const BLOCK: u64 = 4096;
const SUPERBLOCK_OFFSET: u64 = 1024;
const MAGIC: u32 = 0xE0F5_E1E2;
/// `feature_compat`: the superblock's block carries a CRC32C; inodes carry mtimes.
const SB_CHKSUM: u32 = 1;
const COMPAT_MTIME: u32 = 2;
const INODE_SIZE: u64 = 64;
/// Inodes start on 32-byte slots: a nid is a slot's number.
const SLOT: u64 = 32;
const DIRENT: usize = 12;
/// A directory's file type in directory entries.
const FT_DIR: u8 = 2;
/// Linux's longest name.
const MAX_NAME: usize = 255;
const FLAT_PLAIN: u16 = 0;
const FLAT_INLINE: u16 = 2;
const COMPRESSED_FULL: u16 = 1;
/// `feature_incompat`: compressed data ends its block, zeros before it.
const ZERO_PADDING: u32 = 1;
/// `i_format`: bit 0 set for an extended inode; the data layout above it.
const EXTENDED: u16 = 1;
/// The ibody xattr header before an inode's xattrs.
const XATTR_HEADER: usize = 12;

/// What an inode holds besides its metadata.
enum Body {
    /// A regular file's data, from this block on; its last partial block
    /// kept beside the inode instead when `tail` says where it waits in
    /// [`Tree::tails`].
    File {
        size: u64,
        block: u64,
        tail: Option<u64>,
    },
    /// A regular file's data in LZ4 extents: their block count and the
    /// file's lcluster indexes.
    Compressed {
        size: u64,
        blocks: u64,
        indexes: Vec<u8>,
    },
    /// A directory: its parent (itself for the root), and its names with
    /// the inodes they name.
    Dir {
        parent: usize,
        children: Vec<(Vec<u8>, usize)>,
    },
    Symlink(Vec<u8>),
    /// A device node, FIFO or socket: its erofs device number (0 for a FIFO).
    Special(u32),
}

struct Inode {
    mode: u16,
    uid: u32,
    gid: u32,
    mtime: u64,
    nlink: u32,
    /// The encoded xattr area (header and entries), empty when none.
    xattrs: Vec<u8>,
    body: Body,
}

/// Where an inode's data went.
#[derive(Clone, Copy, Default)]
struct Placed {
    layout: u16,
    /// `i_u`: the first data block, the device number, or a compressed
    /// file's block count.
    field: u32,
    size: u64,
    /// Bytes of data kept right after the inode and its xattrs.
    inline: u64,
}

/// Makes `out` an erofs image of the tree `merged` stands for, its file
/// contents read from the layers `open_layer` gives (the same decompressed
/// bytes [`Merged::add_layer`] read); it appears once `fsck.erofs` has
/// decoded every file in it. Physical clusters are one block: bigger ones
/// are for [`super::build`] from a directory.
pub fn build_merged(
    merged: &Merged,
    open_layer: impl FnMut(usize) -> io::Result<LayerTar>,
    out: &Path,
    options: &ErofsOptions,
) -> io::Result<ErofsImage> {
    validate(options)?;
    if options.pcluster_size != BLOCK as u32 {
        return Err(invalid(format!(
            "erofs: layers are written in physical clusters of one block, not {}",
            options.pcluster_size
        )));
    }
    let fsck = tool(options, "fsck.erofs");
    let erofs_utils_version = version(&fsck)?;
    let bytes = vmimg_disk::publish_path(out, Replace::Yes, true, |image| {
        let bytes = write(merged, open_layer, image, options)?;
        check_with(image, &fsck)?;
        Ok::<_, io::Error>(bytes)
    })?;
    Ok(ErofsImage { bytes, erofs_utils_version })
}

/// Writes the erofs image of the tree `merged` stands for
/// into `image` (an empty file); its file contents come from the layers
/// `open_layer` gives. `timestamp` is the build time; mtimes after it are
/// clamped to it (see [`super::ErofsOptions::timestamp`]). Returns the
/// image's size in bytes.
fn write(
    merged: &Merged,
    open_layer: impl FnMut(usize) -> io::Result<LayerTar>,
    image: &Path,
    options: &ErofsOptions,
) -> io::Result<u64> {
    let file = File::options().read(true).write(true).open(image)?;
    let level = match options.compression {
        Compression::None => None,
        Compression::Lz4 => Some(Level::Fast),
        Compression::Lz4hc { level } => Some(Level::High(i32::from(level))),
    };
    let tails = tempfile::tempfile_in(image.parent().unwrap_or(Path::new(".")))?;
    let mut tree = Tree {
        file: &file,
        level,
        inodes: Vec::new(),
        by_path: HashMap::new(),
        next_block: 1,
        tails: &tails,
        tails_len: 0,
    };
    merged.emit(&mut tree, open_layer)?;
    let Tree { inodes, mut next_block, .. } = tree;
    let newest = inodes.iter().map(|inode| inode.mtime).max().unwrap_or(0);
    let timestamp = options.timestamp.unwrap_or(newest.saturating_add(1));
    let placed = inodes
        .iter()
        .enumerate()
        .map(|(n, inode)| place(inode, data_bytes(&inodes, n, &[]).len() as u64, &mut next_block))
        .collect::<io::Result<Vec<_>>>()?;
    let (slots, meta_bytes) = meta_layout(&inodes, &placed)?;
    let meta_block = next_block;
    let mut meta = MetaWriter::new(&file, meta_block * BLOCK);
    let (mut tail, mut tails_read) = (Vec::new(), Freed::new(&tails));
    for (n, (inode, placed)) in inodes.iter().zip(&placed).enumerate() {
        let at = slots[n] * SLOT;
        meta.put(at, &inode_bytes(inode, placed, n, timestamp))?;
        meta.put(at + INODE_SIZE, &inode.xattrs)?;
        let after_xattrs = at + INODE_SIZE + inode.xattrs.len() as u64;
        match &inode.body {
            // The map header (all zeros here) and 8 reserved bytes, then the indexes.
            Body::Compressed { indexes, .. } => meta.put(at + map_start(inode) + 16, indexes)?,
            Body::File { tail: Some(kept), .. } => {
                tail.resize(placed.inline as usize, 0);
                tails.read_exact_at(&mut tail, *kept)?;
                meta.put(after_xattrs, &tail)?;
                tails_read.advance(*kept + placed.inline);
            }
            _ => {
                let data = data_bytes(&inodes, n, &slots);
                let (in_blocks, inline) = data.split_at(data.len() - placed.inline as usize);
                file.write_all_at(in_blocks, u64::from(placed.field) * BLOCK)?;
                meta.put(after_xattrs, inline)?;
            }
        }
    }
    meta.flush()?;
    let blocks = meta_block + meta_bytes / BLOCK;
    let superblock = superblock(inodes.len() as u64, blocks, meta_block, timestamp, &options.uuid, level.is_some())?;
    file.write_all_at(&superblock, SUPERBLOCK_OFFSET)?;
    file.set_len(blocks * BLOCK)?;
    file.sync_all()?;
    Ok(blocks * BLOCK)
}

/// Writes the metadata area front to back, in runs of up to 1 MiB: what
/// lies between the pieces it is given stays a hole (zeros; the image
/// starts empty), and the area is never whole in memory (a stored file's
/// inline tail is up to a block, for each of millions of files).
struct MetaWriter<'a> {
    file: &'a File,
    /// Where the area starts in the image.
    base: u64,
    /// The run being gathered, and where in the area it starts.
    run: Vec<u8>,
    run_at: u64,
}

impl<'a> MetaWriter<'a> {
    const RUN: usize = 1 << 20;

    fn new(file: &'a File, base: u64) -> MetaWriter<'a> {
        MetaWriter { file, base, run: Vec::with_capacity(Self::RUN), run_at: 0 }
    }

    /// Puts `bytes` at `at` in the area, at or past the end of what was put.
    fn put(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        let end = self.run_at + self.run.len() as u64;
        if at < end {
            return Err(io::Error::other(format!("erofs: metadata at {at}, before {end} already written")));
        }
        if (at > end && at - end > 64) || self.run.len() + bytes.len() > Self::RUN {
            self.flush()?;
            self.run_at = at;
        } else {
            self.run.resize((at - self.run_at) as usize, 0);
        }
        self.run.extend_from_slice(bytes);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.write_all_at(&self.run, self.base + self.run_at)?;
        self.run_at += self.run.len() as u64;
        self.run.clear();
        Ok(())
    }
}

/// Frees the kept tails the metadata area has taken (they are read in the
/// order they were kept), so the build never holds a tail twice on disk.
struct Freed<'a> {
    file: &'a File,
    freed: u64,
    /// The filesystem refused a hole once: the tails stay until the end.
    refused: bool,
}

impl<'a> Freed<'a> {
    fn new(file: &'a File) -> Freed<'a> {
        Freed { file, freed: 0, refused: false }
    }

    /// Every tail before `read` is in the image: frees them, 8 MiB at a
    /// time, where the filesystem punches holes (a saving, never a reason
    /// to fail the build: any refusal just stops the freeing).
    fn advance(&mut self, read: u64) {
        use rustix::fs::{FallocateFlags, fallocate};
        if self.refused || read - self.freed < 8 << 20 {
            return;
        }
        let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        self.refused = fallocate(self.file, punch, self.freed, read - self.freed).is_err();
        self.freed = read;
    }
}

/// The tree as [`Merged::emit`] hands it over: inodes kept, file data
/// written to the image as it comes.
struct Tree<'a> {
    file: &'a File,
    /// How file data is compressed; None: stored.
    level: Option<Level>,
    inodes: Vec<Inode>,
    by_path: HashMap<RelPath, usize>,
    next_block: u64,
    /// Stored files' last partial blocks, each kept here until the inode
    /// it goes beside is written (a file, not memory: a tree may have
    /// millions), and how much it holds.
    tails: &'a File,
    tails_len: u64,
}

impl Emit for Tree<'_> {
    fn node(&mut self, node: &Node<'_>) -> io::Result<()> {
        let entry = &node.entry;
        let path = &node.paths[0];
        let body = match entry.kind {
            Kind::Directory => Body::Dir { parent: self.parent_of(path)?, children: Vec::new() },
            Kind::Symlink => Body::Symlink(entry.link_name.clone()),
            Kind::CharDevice | Kind::BlockDevice => Body::Special(device_number(entry.device, path)?),
            _ => Body::Special(0),
        };
        self.add(node, body)
    }

    /// A file of more than a block is compressed when the image is (a
    /// smaller one would take its block either way); else it is stored,
    /// its last partial block beside its inode where it fits there (as
    /// mkfs.erofs does), so a small file takes no block of its own.
    fn file(&mut self, node: &Node<'_>, content: &mut Content<'_>) -> io::Result<()> {
        let (size, path) = (node.entry.size, &node.paths[0]);
        if let Some(level) = self.level
            && size > BLOCK
        {
            return self.compressed_file(node, content, level);
        }
        let tail_len = size % BLOCK;
        let xattrs = encode_xattrs(&node.entry.xattrs, path)?;
        let inline = fits_beside_inode(&xattrs, tail_len);
        let in_blocks = if inline { size - tail_len } else { size };
        let block = reserve(&mut self.next_block, in_blocks.div_ceil(BLOCK), path)?;
        let (start, mut tail) = (block * BLOCK, vec![0u8; if inline { tail_len as usize } else { 0 }]);
        content(&mut |offset, bytes| {
            if offset.checked_add(bytes.len() as u64).is_none_or(|end| end > size) {
                return Err(io::Error::other(format!("{}: content past its size {size}", lossy(path))));
            }
            let split = in_blocks.saturating_sub(offset).min(bytes.len() as u64) as usize;
            let (to_blocks, to_tail) = bytes.split_at(split);
            self.file.write_all_at(to_blocks, start + offset)?;
            let tail_offset = (offset + split as u64).saturating_sub(in_blocks) as usize;
            tail[tail_offset..][..to_tail.len()].copy_from_slice(to_tail);
            Ok(())
        })?;
        let tail = match inline {
            true => Some(self.keep_tail(&tail)?),
            false => None,
        };
        self.add_encoded(node, Body::File { size, block, tail }, xattrs)
    }
}

impl Tree<'_> {
    /// Keeps a stored file's last partial block until its inode is
    /// written; returns where it is kept.
    fn keep_tail(&mut self, tail: &[u8]) -> io::Result<u64> {
        let at = self.tails_len;
        self.tails.write_all_at(tail, at)?;
        self.tails_len += tail.len() as u64;
        Ok(at)
    }

    /// A regular file encoded in LZ4 extents as its content arrives, its
    /// blocks written one after the other from the next free one.
    fn compressed_file(&mut self, node: &Node<'_>, content: &mut Content<'_>, level: Level) -> io::Result<()> {
        let (file, size, path) = (self.file, node.entry.size, &node.paths[0]);
        let next_block = &mut self.next_block;
        let mut write_block = |block: &[u8]| {
            let address = reserve(next_block, 1, path)?;
            file.write_all_at(block, address * BLOCK)?;
            Ok(address)
        };
        let mut encoder = FileEncoder::new(level, size, &mut write_block);
        content(&mut |offset, bytes| encoder.push(offset, bytes))?;
        let body = match encoder.finish()? {
            Encoded::Plain { block } => Body::File { size, block, tail: None },
            Encoded::Compressed { blocks, indexes } => Body::Compressed { size, blocks, indexes },
        };
        self.add(node, body)
    }

    /// The inode of the directory `path` is in (the root's own for `.`;
    /// [`Merged::emit`] hands directories over parents first).
    fn parent_of(&self, path: &[u8]) -> io::Result<usize> {
        let parent = match path.iter().rposition(|&b| b == b'/') {
            Some(slash) => &path[..slash],
            None if path == b"." => return Ok(self.inodes.len()),
            None => b".",
        };
        self.by_path.get(parent).copied().ok_or_else(|| io::Error::other("erofs: a name before its directory"))
    }

    /// Keeps `node`'s inode and names it in its parents' directories.
    fn add(&mut self, node: &Node<'_>, body: Body) -> io::Result<()> {
        let xattrs = encode_xattrs(&node.entry.xattrs, &node.paths[0])?;
        self.add_encoded(node, body, xattrs)
    }

    /// [`Tree::add`], its xattr area encoded already.
    fn add_encoded(&mut self, node: &Node<'_>, body: Body, xattrs: Vec<u8>) -> io::Result<()> {
        let entry = &node.entry;
        let first = &node.paths[0];
        let owner = |id: u64, what: &str| {
            u32::try_from(id).map_err(|_| refused(first, &format!("{what} {id}, over erofs's 32 bits")))
        };
        let inode = Inode {
            mode: st_mode(entry.kind, entry.mode) as u16,
            uid: owner(entry.uid, "the owner")?,
            gid: owner(entry.gid, "the group")?,
            mtime: entry.mtime,
            nlink: u32::try_from(node.nlink).map_err(|_| refused(first, "more links than erofs counts"))?,
            xattrs,
            body,
        };
        let n = self.inodes.len();
        self.inodes.push(inode);
        for path in node.paths {
            if path == b"." {
                continue;
            }
            let name = &path[path.iter().rposition(|&b| b == b'/').map_or(0, |slash| slash + 1)..];
            if name.len() > MAX_NAME {
                return Err(refused(path, &format!("a name of {} bytes, over Linux's {MAX_NAME}", name.len())));
            }
            let parent = self.parent_of(path)?;
            match &mut self.inodes[parent].body {
                Body::Dir { children, .. } => children.push((name.to_vec(), n)),
                _ => return Err(io::Error::other("erofs: a name in what is not a directory")),
            }
            self.by_path.insert(path.clone(), n);
        }
        self.by_path.insert(first.clone(), n);
        Ok(())
    }
}

/// The xattr area of an inode: the ibody header, then each entry (name
/// length, name index, value length, name after its prefix, value),
/// padded to 4 bytes. Empty when there are none.
fn encode_xattrs(xattrs: &Xattrs, path: &[u8]) -> io::Result<Vec<u8>> {
    if xattrs.is_empty() {
        return Ok(Vec::new());
    }
    let mut area = vec![0u8; XATTR_HEADER];
    for (name, value) in xattrs {
        let (index, suffix) = name_index(name).ok_or_else(|| {
            refused(path, &format!("the xattr {name}: erofs disks take user., trusted., security. and POSIX ACLs"))
        })?;
        let value_size =
            u16::try_from(value.len()).map_err(|_| refused(path, &format!("the xattr {name}: over 64 KiB")))?;
        area.extend([suffix.len() as u8, index]);
        area.extend(value_size.to_le_bytes());
        area.extend(suffix.as_bytes());
        area.extend(value);
        area.resize(area.len().next_multiple_of(4), 0);
    }
    if (area.len() - XATTR_HEADER) / 4 + 1 > usize::from(u16::MAX) || area.len() as u64 + INODE_SIZE > BLOCK {
        return Err(refused(path, "more xattrs than an erofs inode's block holds"));
    }
    Ok(area)
}

/// erofs's name index of an xattr and the name after its prefix.
fn name_index(name: &str) -> Option<(u8, &str)> {
    match name {
        "system.posix_acl_access" => return Some((2, "")),
        "system.posix_acl_default" => return Some((3, "")),
        _ => {}
    }
    let prefixes = [("user.", 1), ("trusted.", 4), ("security.", 6)];
    prefixes.iter().find_map(|(prefix, index)| {
        let suffix = name.strip_prefix(prefix)?;
        (!suffix.is_empty() && suffix.len() <= MAX_NAME).then_some((*index, suffix))
    })
}

/// What inode `n` keeps as data outside the image's file area: a
/// directory's entries, a symlink's target; nothing for other inodes.
/// `slots` are the inodes' nids (empty while only the size is wanted).
fn data_bytes(inodes: &[Inode], n: usize, slots: &[u64]) -> Vec<u8> {
    match &inodes[n].body {
        Body::Dir { parent, children } => {
            let nid = |i: usize| slots.get(i).copied().unwrap_or(0);
            let mut entries: Vec<(&[u8], u64, u8)> = children
                .iter()
                .map(|(name, child)| (name.as_slice(), nid(*child), file_type(inodes[*child].mode)))
                .collect();
            entries.push((b".", nid(n), FT_DIR));
            entries.push((b"..", nid(*parent), FT_DIR));
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            dir_blocks(&entries)
        }
        Body::Symlink(target) => target.clone(),
        Body::File { .. } | Body::Compressed { .. } | Body::Special(_) => Vec::new(),
    }
}

/// Sorted directory entries (name, nid, file type) in blocks: each block
/// holds as many as fit, their 12-byte records (nid, the name's offset in
/// the block, the type) then their names; the last block is cut after its
/// last name.
fn dir_blocks(entries: &[(&[u8], u64, u8)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = entries;
    while !rest.is_empty() {
        let (mut count, mut used) = (0, 0);
        while count < rest.len() && used + DIRENT + rest[count].0.len() <= BLOCK as usize {
            used += DIRENT + rest[count].0.len();
            count += 1;
        }
        let block_start = out.len();
        let mut name_at = count * DIRENT;
        for (name, nid, file_type) in &rest[..count] {
            out.extend(nid.to_le_bytes());
            out.extend((name_at as u16).to_le_bytes());
            out.extend([*file_type, 0]);
            name_at += name.len();
        }
        rest[..count].iter().for_each(|(name, ..)| out.extend(*name));
        rest = &rest[count..];
        if !rest.is_empty() {
            out.resize(block_start + BLOCK as usize, 0);
        }
    }
    out
}

/// A directory entry's file type, from the inode's mode.
fn file_type(mode: u16) -> u8 {
    match u32::from(mode) & 0o170000 {
        0o100000 => 1,
        0o040000 => FT_DIR,
        0o020000 => 3,
        0o060000 => 4,
        0o010000 => 5,
        0o140000 => 6,
        0o120000 => 7,
        _ => 0,
    }
}

/// Decides where `inode`'s data goes: regular files where they were
/// written (a stored file's last partial block inline when it was kept
/// for that), devices as they are; a directory's or symlink's last
/// partial block inline when it fits beside the inode, the rest in blocks
/// from `next_block`.
fn place(inode: &Inode, data_len: u64, next_block: &mut u64) -> io::Result<Placed> {
    let mut allocate = |len: u64| {
        let block = *next_block;
        *next_block += len.div_ceil(BLOCK);
        u32::try_from(block).map_err(|_| io::Error::other("erofs: an image past 32-bit block numbers"))
    };
    Ok(match &inode.body {
        Body::File { size, block, tail } => {
            let inline = if tail.is_some() { size % BLOCK } else { 0 };
            let field = match size - inline {
                0 => 0,
                _ => u32::try_from(*block).map_err(|_| io::Error::other("erofs: a block past 32 bits"))?,
            };
            let layout = if tail.is_some() { FLAT_INLINE } else { FLAT_PLAIN };
            Placed { layout, field, size: *size, inline }
        }
        Body::Special(rdev) => Placed { layout: FLAT_PLAIN, field: *rdev, size: 0, inline: 0 },
        Body::Compressed { size, blocks, .. } => {
            let field = u32::try_from(*blocks).map_err(|_| io::Error::other("erofs: a file of 2^32 blocks"))?;
            Placed { layout: COMPRESSED_FULL, field, size: *size, inline: 0 }
        }
        Body::Dir { .. } | Body::Symlink(_) => {
            let size = match &inode.body {
                Body::Symlink(target) => target.len() as u64,
                _ => data_len,
            };
            let tail = size % BLOCK;
            if fits_beside_inode(&inode.xattrs, tail) {
                let field = if size > tail { allocate(size - tail)? } else { 0 };
                Placed { layout: FLAT_INLINE, field, size, inline: tail }
            } else {
                Placed { layout: FLAT_PLAIN, field: allocate(size)?, size, inline: 0 }
            }
        }
    })
}

/// Whether a last partial block of `tail` bytes fits beside its inode and
/// the inode's `xattrs`, all in one block (none when there is no tail).
fn fits_beside_inode(xattrs: &[u8], tail: u64) -> bool {
    tail > 0 && INODE_SIZE + xattrs.len() as u64 + tail <= BLOCK
}

/// Takes `count` blocks for `path`'s data from `next_block` on, all of
/// them within erofs's 32-bit block numbers; returns the first.
fn reserve(next_block: &mut u64, count: u64, path: &[u8]) -> io::Result<u64> {
    let first = *next_block;
    *next_block = first
        .checked_add(count)
        .filter(|&end| end < u64::from(u32::MAX))
        .ok_or_else(|| refused(path, "more data than an erofs image's 32-bit block numbers reach"))?;
    Ok(first)
}

/// Each inode's slot in the metadata area (the root's first), none
/// straddling a block, and the area's size in whole blocks.
fn meta_layout(inodes: &[Inode], placed: &[Placed]) -> io::Result<(Vec<u64>, u64)> {
    let mut slots = Vec::with_capacity(inodes.len());
    let mut at = 0u64;
    for (inode, placed) in inodes.iter().zip(placed) {
        // The inode, its xattrs and inline data stay in one block; a
        // compressed file's indexes may run on into the next ones.
        let kept_together = INODE_SIZE + inode.xattrs.len() as u64 + placed.inline;
        if at % BLOCK + kept_together > BLOCK {
            at = at.next_multiple_of(BLOCK);
        }
        slots.push(at / SLOT);
        let need = match &inode.body {
            Body::Compressed { indexes, .. } => map_start(inode) + 16 + indexes.len() as u64,
            _ => kept_together,
        };
        at = (at + need).next_multiple_of(SLOT);
    }
    if slots.first().is_some_and(|&root| root != 0) {
        return Err(io::Error::other("erofs: the root is not the first inode"));
    }
    Ok((slots, at.next_multiple_of(BLOCK)))
}

/// Where a compressed file's map header starts, from its inode's start:
/// the end of its xattrs, aligned to 8 bytes (inodes start on 32).
fn map_start(inode: &Inode) -> u64 {
    (INODE_SIZE + inode.xattrs.len() as u64).next_multiple_of(8)
}

/// The 64-byte extended inode of inode `n`.
fn inode_bytes(inode: &Inode, placed: &Placed, n: usize, timestamp: u64) -> [u8; INODE_SIZE as usize] {
    let mut raw = [0u8; INODE_SIZE as usize];
    let xattr_icount = if inode.xattrs.is_empty() { 0 } else { ((inode.xattrs.len() - XATTR_HEADER) / 4 + 1) as u16 };
    raw[0..2].copy_from_slice(&(EXTENDED | (placed.layout << 1)).to_le_bytes());
    raw[2..4].copy_from_slice(&xattr_icount.to_le_bytes());
    raw[4..6].copy_from_slice(&inode.mode.to_le_bytes());
    raw[8..16].copy_from_slice(&placed.size.to_le_bytes());
    raw[16..20].copy_from_slice(&placed.field.to_le_bytes());
    raw[20..24].copy_from_slice(&(n as u32 + 1).to_le_bytes());
    raw[24..28].copy_from_slice(&inode.uid.to_le_bytes());
    raw[28..32].copy_from_slice(&inode.gid.to_le_bytes());
    raw[32..40].copy_from_slice(&inode.mtime.min(timestamp).to_le_bytes());
    raw[44..48].copy_from_slice(&inode.nlink.to_le_bytes());
    raw
}

/// Block 0 from byte 1024 on: the superblock, its CRC32C over the rest of
/// the block (the checksum field zeroed) as the kernel computes it.
fn superblock(
    inos: u64,
    blocks: u64,
    meta_block: u64,
    timestamp: u64,
    uuid: &[u8; 16],
    compressed: bool,
) -> io::Result<Vec<u8>> {
    let mut sb = vec![0u8; (BLOCK - SUPERBLOCK_OFFSET) as usize];
    let blocks = u32::try_from(blocks).map_err(|_| io::Error::other("erofs: an image past 32-bit block numbers"))?;
    sb[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    sb[8..12].copy_from_slice(&(SB_CHKSUM | COMPAT_MTIME).to_le_bytes());
    sb[12] = 12; // 4 KiB blocks
    sb[16..24].copy_from_slice(&inos.to_le_bytes());
    sb[24..32].copy_from_slice(&timestamp.to_le_bytes());
    sb[36..40].copy_from_slice(&blocks.to_le_bytes());
    sb[40..44].copy_from_slice(&(meta_block as u32).to_le_bytes());
    sb[48..64].copy_from_slice(uuid);
    if compressed {
        // Compressed data ends its block, zeros before it; LZ4 matches reach back 64 KiB at most.
        sb[80..84].copy_from_slice(&ZERO_PADDING.to_le_bytes());
        sb[84..86].copy_from_slice(&u16::MAX.to_le_bytes());
    }
    let checksum = !crc32c::crc32c(&sb);
    sb[4..8].copy_from_slice(&checksum.to_le_bytes());
    Ok(sb)
}

/// Linux's `new_encode_dev`, erofs's 32-bit device field.
fn device_number((major, minor): (u32, u32), path: &[u8]) -> io::Result<u32> {
    if major >= 1 << 12 || minor >= 1 << 20 {
        return Err(refused(path, &format!("device {major}:{minor}, over erofs's 12-bit major or 20-bit minor")));
    }
    Ok((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

fn refused(path: &[u8], why: &str) -> io::Error {
    let message = format!("erofs: {}: {why}; build an ext4 disk instead", lossy(path));
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_taken_into_the_image_are_freed_behind() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let file = tempfile::tempfile_in(dir.path()).unwrap();
        file.write_all_at(&vec![1u8; 20 << 20], 0).unwrap();
        file.sync_all().unwrap();
        let allocated = || file.metadata().unwrap().blocks() * 512;
        let mut freed = Freed::new(&file);
        freed.advance(4 << 20);
        assert!(allocated() >= 20 << 20, "under 8 MiB read, nothing is freed yet");
        freed.advance(12 << 20);
        assert!(allocated() <= 9 << 20, "{} bytes still allocated", allocated());
        let mut rest = vec![0u8; 8 << 20];
        file.read_exact_at(&mut rest, 12 << 20).unwrap();
        assert!(rest.iter().all(|&b| b == 1), "the tails not yet read are kept");
    }

    #[test]
    fn device_numbers_encode_as_linux_does() {
        assert_eq!(device_number((1, 3), b"dev/null").unwrap(), 0x103);
        assert_eq!(device_number((259, 0x12345), b"dev/x").unwrap(), 0x45 | (259 << 8) | (0x12300 << 12));
        assert!(device_number((4096, 0), b"dev/x").is_err());
    }

    #[test]
    fn directories_fill_blocks_and_sort_their_names() {
        let names: Vec<Vec<u8>> = (0..400).map(|n| format!("name-{n:03}").into_bytes()).collect();
        let entries: Vec<(&[u8], u64, u8)> = names.iter().map(|n| (n.as_slice(), 7, 1)).collect();
        let bytes = dir_blocks(&entries);
        // 20 bytes an entry: 204 fit a block, so 196 are in the second, cut after its last name.
        assert_eq!(bytes.len(), BLOCK as usize + 196 * 20);
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 204 * 12);
        assert_eq!(&bytes[204 * 12..204 * 12 + 8], b"name-000");
    }
}
