//! Initramfs archives: a directory tree, or layers merged in memory
//! ([`write_merged`], for any user, no tree on the host), written as a cpio
//! "newc" archive (magic `070701`), the format the Linux kernel unpacks into
//! its rootfs at boot (`init/initramfs.c`).
//!
//! [`write_tree`] owns the whole walk and the encoding. It is our own code, not
//! GNU cpio behind a pipe, because the archive must be reproducible and safe
//! whatever the tree holds: entries come out sorted by name, parents before
//! children, with inode numbers counted from 1 in that order (never the
//! host's), device fields of the archived filesystem zero and nlink counted
//! inside the tree, so the same tree gives the same bytes on any host
//! filesystem. The walk goes through directory file descriptors with
//! `O_NOFOLLOW`, so no symlink, however placed, leads it out of the root.
//!
//! What the archive holds, per entry: inode, type and permission bits
//! (setuid, setgid and sticky included), owner, group, nlink, mtime (clamped
//! to newc's unsigned 32 bits: before 1970 reads as 1970), size, and the major
//! and minor numbers of device nodes. The root directory is the entry `.`
//! (the kernel applies its owner and mode to `/`); every other name is
//! relative to the root without a leading `/`. A symlink's target is its data.
//! Hard links (of files, device nodes, FIFOs, sockets) share one inode number
//! and nlink; the data goes with the *last* link and the earlier ones have
//! size 0, the convention of GNU cpio (whose reader defers empty links until
//! the data comes) and of the kernel's own `gen_init_cpio` (the kernel links
//! each later name to the first and writes the data it then meets). The
//! archive ends with the `TRAILER!!!` entry, unpadded beyond newc's 4-byte
//! alignment. The tests extract archives with GNU cpio and boot Debian's
//! kernel on one, comparing every entry with the tree.
//!
//! What it refuses, with an error naming the path: a regular file of 4 GiB or
//! more (newc's size field has 32 bits), a name longer than the kernel's
//! `PATH_MAX` (the kernel would silently skip it), more than 2^32 - 1 inodes,
//! a tree deeper than [`crate::depth::MAX_DEPTH`] (the kernel would unpack
//! it, but one rule for every format means a tree that makes an initramfs
//! makes a disk too; found by the first walk, before a byte is written),
//! and a tree that changes under the walk (a file that shrinks, hard links
//! that come or go between the two walks).
//!
//! What it cannot carry: extended attributes (newc has no field for them, so
//! file capabilities and SELinux labels are lost; use an erofs or ext4 disk
//! when they matter), sub-second timestamps, and the numbering of the host.
//!
//! Memory: file data streams through one fixed buffer; besides the listings of
//! the directories on the current path, the only table that grows is the one
//! of inodes with more than one link. The walk holds one descriptor per
//! directory level, [`crate::depth::MAX_DEPTH`] at most.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};

use crate::depth;
use crate::merge::{Content, Emit, LayerTar, Merged, Node, st_mode};
use vmimg_tar::Kind;

/// The largest regular file newc can hold: its size field has 32 bits.
pub const MAX_FILE_SIZE: u64 = u32::MAX as u64;

/// The kernel's `PATH_MAX`: it skips entries whose name, with its NUL, is longer.
const KERNEL_PATH_MAX: usize = 4096;

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &[u8] = b"TRAILER!!!";
const COPY_BUFFER: usize = 256 * 1024;

/// What [`write_tree`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpioSummary {
    /// Entries in the archive, the root `.` included, the trailer not.
    pub entries: u64,
    /// Bytes written to the output, trailer and padding included.
    pub bytes: u64,
}

/// Writes the tree under `root` (a directory; a symlink naming one is
/// followed, nothing below it is) to `out` as a newc cpio archive.
///
/// `out` is written through a buffer and flushed before returning; pass
/// `&mut w` to keep using `w` (to finish a compressor, to fsync a file).
pub fn write_tree(root: &Path, out: impl Write) -> io::Result<CpioSummary> {
    let links = count_links(root)?;
    let mut archive = Archive::new(out, links);
    walk(root, &mut |entry| archive.entry(entry))?;
    archive.inodes.check_all_links_seen()?;
    archive.finish()
}

/// Writes the tree `merged` stands for to `out` as a newc cpio archive,
/// with the owners, modes and device numbers the layers give, whoever runs
/// it: no tree on the host. File contents are read from the layers
/// `open_layer` gives again ([`Merged::emit`]); entries come in its order
/// (directories parents first, then symlinks, devices and FIFOs, then
/// files), inode numbers count from 1 in that order, and a hard-linked
/// file's earlier names come right before the name that carries its data.
/// Refused as by [`write_tree`]: files of 4 GiB or more, names over the
/// kernel's `PATH_MAX`, and owners or device numbers over 32 bits.
pub fn write_merged(
    merged: &Merged,
    open_layer: impl FnMut(usize) -> io::Result<LayerTar>,
    out: impl Write,
) -> io::Result<CpioSummary> {
    let mut archive = Archive::new(out, HashMap::new());
    merged.emit(&mut archive, open_layer)?;
    archive.finish()
}

impl<W: Write> Archive<W> {
    /// The header of `node`, numbered afresh, with `nlink` links and
    /// `filesize` bytes.
    fn merged_header(&mut self, node: &Node<'_>, nlink: u64, filesize: u64) -> io::Result<Header> {
        let entry = &node.entry;
        let fits = |value: u64, what: &str| {
            u32::try_from(value)
                .map_err(|_| at_msg(&entry.path, &format!("{what} {value} does not fit newc's 32 bits")))
        };
        let (major, minor) = entry.device;
        Ok(Header {
            ino: self.inodes.fresh()?,
            mode: st_mode(entry.kind, entry.mode),
            uid: fits(entry.uid, "the owner")?,
            gid: fits(entry.gid, "the group")?,
            nlink: fits(nlink, "the link count")?,
            mtime: entry.mtime.min(u64::from(u32::MAX)) as u32,
            filesize: filesize as u32,
            rdev_major: major,
            rdev_minor: minor,
        })
    }
}

impl<W: Write> Emit for Archive<W> {
    fn node(&mut self, node: &Node<'_>) -> io::Result<()> {
        if node.entry.kind == Kind::Symlink {
            // Each name its own symlink, as the kernel and GNU cpio make them.
            let target = &node.entry.link_name;
            for path in node.paths {
                let header = self.merged_header(node, 1, target.len() as u64)?;
                self.head(&header, path)?;
                self.put(target)?;
                self.pad(target.len() as u64)?;
            }
            return Ok(());
        }
        let header = self.merged_header(node, node.nlink, 0)?;
        node.paths.iter().try_for_each(|path| self.head(&header, path))
    }

    fn file(&mut self, node: &Node<'_>, content: &mut Content<'_>) -> io::Result<()> {
        let size = node.entry.size;
        check_size(size, &node.entry.path)?;
        let header = self.merged_header(node, node.nlink, 0)?;
        for path in &node.paths[1..] {
            self.head(&header, path)?;
        }
        self.head(&Header { filesize: size as u32, ..header }, &node.paths[0])?;
        let mut at = 0u64;
        let path = &node.entry.path;
        content(&mut |offset, bytes| {
            let end = offset.checked_add(bytes.len() as u64).filter(|&end| offset >= at && end <= size);
            let end = end.ok_or_else(|| at_msg(path, "its content does not match its size (the layer changed?)"))?;
            self.zeros(offset - at)?;
            self.put(bytes)?;
            at = end;
            Ok(())
        })?;
        self.zeros(size.saturating_sub(at))?;
        self.pad(size)
    }
}

impl<W: Write> Archive<W> {
    /// Writes `len` zero bytes: a hole of a sparse file.
    fn zeros(&mut self, len: u64) -> io::Result<()> {
        let copied = io::copy(&mut io::repeat(0).take(len), &mut self.out)?;
        self.bytes += copied;
        Ok(())
    }
}

/// The first walk: how many times each multiply-linked inode appears in the
/// tree, so the second walk knows which link is the last one.
fn count_links(root: &Path) -> io::Result<HashMap<(u64, u64), u32>> {
    let mut counts = HashMap::new();
    walk(root, &mut |entry| {
        if is_linkable(entry.stat) && entry.stat.st_nlink > 1 {
            *counts.entry(inode_key(entry.stat)).or_insert(0) += 1;
        }
        Ok(())
    })?;
    Ok(counts)
}

/// Types archived as hard links when they share an inode. Directories cannot;
/// symlinks are written one by one, since neither the kernel nor GNU cpio
/// links them.
fn is_linkable(stat: &Stat) -> bool {
    !matches!(FileType::from_raw_mode(stat.st_mode), FileType::Directory | FileType::Symlink)
}

#[allow(clippy::useless_conversion)] // stat's field types differ between architectures
fn inode_key(stat: &Stat) -> (u64, u64) {
    (u64::from(stat.st_dev), u64::from(stat.st_ino))
}

/// One file met by [`walk`]: its directory, its name there, its path from the
/// root (`.` for the root itself) and its lstat.
struct Entry<'a> {
    dir: BorrowedFd<'a>,
    name: &'a CStr,
    path: &'a [u8],
    stat: &'a Stat,
    /// For a directory, how many directories it holds.
    subdirs: u32,
}

/// A directory being walked: its descriptor, its sorted entry names, the next
/// one to visit, and the length of its path (the prefix of its children's).
struct Level {
    fd: OwnedFd,
    names: Vec<CString>,
    next: usize,
    prefix_len: usize,
}

/// Visits `root` and everything below it, depth first, parents before
/// children, names sorted bytewise, never following a symlink.
fn walk(root: &Path, visit: &mut dyn FnMut(&Entry<'_>) -> io::Result<()>) -> io::Result<()> {
    let fd = rustix::fs::open(root, dir_flags().difference(OFlags::NOFOLLOW), Mode::empty())
        .map_err(|e| context(e.into(), &root.display().to_string(), "open the root directory"))?;
    let stat = rustix::fs::fstat(&fd)?;
    let (names, subdirs) = list_dir(&fd, b".")?;
    visit(&Entry { dir: fd.as_fd(), name: c".", path: b".", stat: &stat, subdirs })?;
    let mut stack = vec![Level { fd, names, next: 0, prefix_len: 0 }];
    let mut path = Vec::new();
    loop {
        // The root and the directories down to the next entry's: as many
        // as the entry is deep.
        let depth = stack.len();
        let Some(top) = stack.last_mut() else { break };
        let Some(name) = top.names.get_mut(top.next).map(std::mem::take) else {
            stack.pop();
            continue;
        };
        top.next += 1;
        path.truncate(top.prefix_len);
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name.to_bytes());
        depth::check(depth, || show(&path))?;
        if let Some(level) = visit_child(&top.fd, &name, &path, visit)? {
            stack.push(level);
        }
    }
    Ok(())
}

/// Visits one child of `dir`; for a directory, returns the level to walk next.
fn visit_child(
    dir: &OwnedFd,
    name: &CStr,
    path: &[u8],
    visit: &mut dyn FnMut(&Entry<'_>) -> io::Result<()>,
) -> io::Result<Option<Level>> {
    let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| at(e, path, "lstat"))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        visit(&Entry { dir: dir.as_fd(), name, path, stat: &stat, subdirs: 0 })?;
        return Ok(None);
    }
    let fd = rustix::fs::openat(dir, name, dir_flags(), Mode::empty()).map_err(|e| at(e, path, "open directory"))?;
    let stat = rustix::fs::fstat(&fd)?;
    let (names, subdirs) = list_dir(&fd, path)?;
    visit(&Entry { dir: dir.as_fd(), name, path, stat: &stat, subdirs })?;
    Ok(Some(Level { fd, names, next: 0, prefix_len: path.len() }))
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// The names in a directory, sorted bytewise, and how many are directories.
fn list_dir(fd: &OwnedFd, path: &[u8]) -> io::Result<(Vec<CString>, u32)> {
    let mut names = Vec::new();
    let mut subdirs = 0u32;
    for entry in Dir::read_from(fd).map_err(|e| at(e, path, "read directory"))? {
        let entry = entry.map_err(|e| at(e, path, "read directory"))?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        if is_dir(fd, &entry.file_type(), name)? {
            subdirs += 1;
        }
        names.push(name.to_owned());
    }
    names.sort_unstable();
    Ok((names, subdirs))
}

/// Whether a directory entry is a directory, asking lstat when readdir does not say.
fn is_dir(dir: &OwnedFd, file_type: &FileType, name: &CStr) -> io::Result<bool> {
    Ok(match file_type {
        FileType::Directory => true,
        FileType::Unknown => {
            let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            FileType::from_raw_mode(stat.st_mode) == FileType::Directory
        }
        _ => false,
    })
}

/// Inode numbers of the archive: counted from 1 in walk order, shared by the
/// links of one host inode, whose data goes with its last link.
struct Inodes {
    next: u32,
    links: HashMap<(u64, u64), Link>,
}

struct Link {
    ino: Option<u32>,
    total: u32,
    remaining: u32,
}

/// The inode fields of one entry.
struct Assigned {
    ino: u32,
    nlink: u32,
    /// Whether this entry carries the file's data (always, but for all links of
    /// a hard-linked file but the last).
    with_data: bool,
}

impl Inodes {
    fn new(counts: HashMap<(u64, u64), u32>) -> Self {
        let links = counts
            .into_iter()
            .filter(|&(_, total)| total > 1)
            .map(|(key, total)| (key, Link { ino: None, total, remaining: total }))
            .collect();
        Inodes { next: 1, links }
    }

    fn fresh(&mut self) -> io::Result<u32> {
        let ino = self.next;
        self.next = ino.checked_add(1).ok_or_else(|| {
            io::Error::other(
                "cpio: the tree has more than 2^32 - 1 inodes, more than newc can number; \
                 build an erofs or ext4 disk instead",
            )
        })?;
        Ok(ino)
    }

    fn assign(&mut self, entry: &Entry<'_>) -> io::Result<Assigned> {
        let stat = entry.stat;
        let single = stat.st_nlink <= 1 || !is_linkable(stat);
        match self.links.get(&inode_key(stat)) {
            Some(_) if !single => self.assign_link(entry),
            _ => {
                let nlink = if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                    entry.subdirs.saturating_add(2)
                } else {
                    1
                };
                Ok(Assigned { ino: self.fresh()?, nlink, with_data: true })
            }
        }
    }

    fn assign_link(&mut self, entry: &Entry<'_>) -> io::Result<Assigned> {
        let ino = match self.links[&inode_key(entry.stat)].ino {
            Some(ino) => ino,
            None => self.fresh()?,
        };
        let link = self.links.get_mut(&inode_key(entry.stat)).expect("looked up above");
        link.ino = Some(ino);
        link.remaining = link.remaining.checked_sub(1).ok_or_else(|| {
            at_msg(entry.path, "has more hard links than when the walk began; archive a tree nothing writes to")
        })?;
        Ok(Assigned { ino, nlink: link.total, with_data: link.remaining == 0 })
    }

    /// After the walk: every link counted by the first walk was met by the
    /// second, so every hard-linked file got its data.
    fn check_all_links_seen(&self) -> io::Result<()> {
        match self.links.values().find(|link| link.remaining > 0) {
            None => Ok(()),
            Some(link) => Err(io::Error::other(format!(
                "cpio: a file with {} hard links lost {} of them while the tree was archived, so its data was never \
                 written; archive a tree nothing writes to",
                link.total, link.remaining
            ))),
        }
    }
}

/// The fields of one newc header that vary; the device of the archived
/// filesystem and the checksum are always 0.
#[derive(Default)]
struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

impl Header {
    fn encode(&self, namesize: u32) -> [u8; HEADER_LEN] {
        let fields = [
            self.ino,
            self.mode,
            self.uid,
            self.gid,
            self.nlink,
            self.mtime,
            self.filesize,
            0,
            0,
            self.rdev_major,
            self.rdev_minor,
            namesize,
            0,
        ];
        let mut out = [0u8; HEADER_LEN];
        out[..MAGIC.len()].copy_from_slice(MAGIC);
        for (i, field) in fields.iter().enumerate() {
            for (j, digit) in out[MAGIC.len() + i * 8..][..8].iter_mut().enumerate() {
                *digit = b"0123456789ABCDEF"[(field >> (28 - 4 * j)) as usize & 0xF];
            }
        }
        out
    }
}

/// Bytes of zeros that bring `len` to a multiple of 4.
fn padding(len: u64) -> usize {
    ((4 - len % 4) % 4) as usize
}

/// The newc stream: headers, names, data and their padding, counted.
struct Archive<W: Write> {
    out: BufWriter<W>,
    inodes: Inodes,
    entries: u64,
    bytes: u64,
}

impl<W: Write> Archive<W> {
    fn new(out: W, links: HashMap<(u64, u64), u32>) -> Self {
        Archive { out: BufWriter::with_capacity(COPY_BUFFER, out), inodes: Inodes::new(links), entries: 0, bytes: 0 }
    }

    /// Writes a header and its name (NUL-terminated, padded).
    fn head(&mut self, header: &Header, name: &[u8]) -> io::Result<()> {
        check_name(name)?;
        let namesize = name.len() + 1;
        self.put(&header.encode(namesize as u32))?;
        self.put(name)?;
        self.put(&[0])?;
        self.pad((HEADER_LEN + namesize) as u64)?;
        self.entries += 1;
        Ok(())
    }

    /// Ends the archive and flushes it.
    fn finish(mut self) -> io::Result<CpioSummary> {
        self.head(&Header { nlink: 1, ..Header::default() }, TRAILER)?;
        self.entries -= 1;
        self.out.flush()?;
        Ok(CpioSummary { entries: self.entries, bytes: self.bytes })
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        self.put(&[0; 3][..padding(len)])
    }
}

/// Refuses a name the kernel would skip.
fn check_name(name: &[u8]) -> io::Result<()> {
    if name.len() + 1 > KERNEL_PATH_MAX {
        return Err(at_msg(
            name,
            &format!(
                "the name is longer than the kernel's PATH_MAX ({KERNEL_PATH_MAX} bytes with its NUL), \
                 and the kernel would skip it without a word; shorten the tree's paths"
            ),
        ));
    }
    Ok(())
}

/// Refuses a file newc's size field cannot hold.
fn check_size(size: u64, path: &[u8]) -> io::Result<()> {
    if size > MAX_FILE_SIZE {
        return Err(at_msg(
            path,
            &format!(
                "{size} bytes do not fit newc's 32-bit size field (at most {MAX_FILE_SIZE}); \
                 put such a tree on an erofs or ext4 disk instead"
            ),
        ));
    }
    Ok(())
}

impl<W: Write> Archive<W> {
    /// Archives one entry of [`write_tree`]'s walk.
    fn entry(&mut self, entry: &Entry<'_>) -> io::Result<()> {
        check_name(entry.path)?;
        match FileType::from_raw_mode(entry.stat.st_mode) {
            FileType::RegularFile => self.regular(entry),
            FileType::Symlink => self.symlink(entry),
            _ => self.special(entry),
        }
    }

    /// Directories, device nodes, FIFOs and sockets: a header, no data.
    fn special(&mut self, entry: &Entry<'_>) -> io::Result<()> {
        let assigned = self.inodes.assign(entry)?;
        let mut header = self.header(entry.stat, &assigned);
        if matches!(FileType::from_raw_mode(entry.stat.st_mode), FileType::CharacterDevice | FileType::BlockDevice) {
            header.rdev_major = rustix::fs::major(entry.stat.st_rdev);
            header.rdev_minor = rustix::fs::minor(entry.stat.st_rdev);
        }
        self.head(&header, entry.path)
    }

    fn symlink(&mut self, entry: &Entry<'_>) -> io::Result<()> {
        let target =
            rustix::fs::readlinkat(entry.dir, entry.name, Vec::new()).map_err(|e| at(e, entry.path, "readlink"))?;
        let target = target.as_bytes();
        let assigned = self.inodes.assign(entry)?;
        let header = Header { filesize: target.len() as u32, ..self.header(entry.stat, &assigned) };
        self.head(&header, entry.path)?;
        self.put(target)?;
        self.pad(target.len() as u64)
    }

    fn regular(&mut self, entry: &Entry<'_>) -> io::Result<()> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
        let fd =
            rustix::fs::openat(entry.dir, entry.name, flags, Mode::empty()).map_err(|e| at(e, entry.path, "open"))?;
        let stat = rustix::fs::fstat(&fd)?;
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        check_size(size, entry.path)?;
        let assigned = self.inodes.assign(&Entry { stat: &stat, ..*entry })?;
        let data_len = if assigned.with_data { size } else { 0 };
        let header = Header { filesize: data_len as u32, ..self.header(&stat, &assigned) };
        self.head(&header, entry.path)?;
        if data_len > 0 {
            self.copy_data(File::from(fd), data_len, entry.path)?;
        }
        Ok(())
    }

    /// Streams exactly `len` bytes of `file` through the output buffer.
    fn copy_data(&mut self, file: File, len: u64, path: &[u8]) -> io::Result<()> {
        let copied = io::copy(&mut file.take(len), &mut self.out).map_err(|e| context(e, &show(path), "read"))?;
        if copied != len {
            return Err(at_msg(path, &format!("shrank from {len} to {copied} bytes while it was archived")));
        }
        self.bytes += len;
        self.pad(len)
    }

    #[allow(clippy::useless_conversion)] // stat's field types differ between architectures
    fn header(&self, stat: &Stat, assigned: &Assigned) -> Header {
        Header {
            ino: assigned.ino,
            mode: stat.st_mode,
            uid: stat.st_uid,
            gid: stat.st_gid,
            nlink: assigned.nlink,
            mtime: i64::from(stat.st_mtime).clamp(0, i64::from(u32::MAX)) as u32,
            ..Header::default()
        }
    }
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

fn context(err: io::Error, path: &str, what: &str) -> io::Error {
    io::Error::new(err.kind(), format!("cpio: {path}: cannot {what}: {err}"))
}

fn at(err: rustix::io::Errno, path: &[u8], what: &str) -> io::Error {
    context(err.into(), &show(path), what)
}

fn at_msg(path: &[u8], msg: &str) -> io::Error {
    io::Error::other(format!("cpio: {}: {msg}", show(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_run_out_with_a_clear_error() {
        let mut inodes = Inodes::new(HashMap::new());
        inodes.next = u32::MAX - 1;
        assert_eq!(inodes.fresh().unwrap(), u32::MAX - 1);
        let err = inodes.fresh().unwrap_err();
        assert!(err.to_string().contains("2^32 - 1 inodes"), "{err}");
    }

    #[test]
    fn headers_are_110_bytes_of_uppercase_hex() {
        let header = Header { ino: 0xABC, mode: 0o100644, filesize: 5, ..Header::default() };
        let bytes = header.encode(6);
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(&bytes[6..14], b"00000ABC");
        assert_eq!(&bytes[14..22], b"000081A4");
        assert_eq!(&bytes[54..62], b"00000005");
        assert_eq!(&bytes[94..102], b"00000006");
        assert_eq!(&bytes[102..110], b"00000000");
    }

    #[test]
    fn padding_reaches_four_byte_alignment() {
        assert_eq!([0, 1, 2, 3, 4, 5].map(padding), [0, 3, 2, 1, 0, 3]);
    }
}
