//! Applying OCI image layers to a root directory, bottom layer first.
//!
//! A layer is a tar (plain, gzip or zstd; see [`decompress`]) of changes:
//! files, directories, symlinks, hard links, device nodes and FIFOs, with
//! owners, modes, mtimes and xattrs (`SCHILY.xattr.*`), and OCI whiteouts:
//! `DIR/.wh.NAME` removes `DIR/NAME` of the layers below, and
//! `DIR/.wh..wh..opq` hides everything the layers below put under `DIR`.
//! An entry of the same layer is never removed by its own layer's
//! whiteouts, whichever comes first in the tar.
//!
//! Layers are hostile. Every name is cleaned and refused when it is
//! absolute or climbs with `..`; every parent directory is opened with
//! `openat2(RESOLVE_IN_ROOT)`, so a symlink anywhere in a path (even one
//! planted by an earlier entry, pointing at `/etc` or `../../..`) resolves
//! inside the root as it would in the guest, never on the host; the last
//! component is created or removed with `*at` calls that do not follow
//! links. Hard links resolve their target the same way, so they cannot
//! reach a host file. Whiteouts of `.` or `..` are refused. The content of
//! the tree is bounded ([`ApplyOptions::max_bytes`]) against decompression
//! bombs, entries per layer too. So is its depth ([`crate::depth`]): an
//! entry that would lie deeper than [`MAX_DEPTH`] is refused before it is
//! made, the layer's missing parents too, counted where the entry lands
//! (a symlink on the way can lead it deeper than its name says).
//!
//! Owners and device nodes need root. Without it, files belong to the
//! caller and device nodes are skipped; [`LayerSummary`] counts what was
//! skipped so the caller can say so. Xattrs the host filesystem or the
//! caller's privileges refuse (and xattrs on symlinks and devices, which
//! have no file descriptor to set them through) are counted the same way.
//!
//! Why our own: the `tar` crate's `unpack` neither knows whiteouts nor
//! resolves symlinks inside a root (it refuses them or follows them on the
//! host), and umoci/containerd are programs, not libraries for Rust.

use rustix::fs::{
    AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Timestamps, XattrFlags, chmodat, chownat, fchmod, fchown,
    fsetxattr, futimens, linkat, makedev, mkdirat, mknodat, openat, openat2, statat, symlinkat, unlinkat, utimensat,
};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use vmimg_tar::{Entry, Kind, Limits, Reader};

use crate::depth::{self, MAX_DEPTH, TooDeep};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The layer's tar stream out of its compressed blob.
pub fn decompress<'a>(blob: impl Read + Send + 'a, compression: Compression) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(blob))),
        Compression::Zstd => Box::new(zstd::Decoder::new(blob)?),
    })
}

/// What applying may do and how much it may write.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Give entries the owners their headers name (needs root).
    pub owners: bool,
    /// Make character and block devices (needs root).
    pub devices: bool,
    /// The most bytes of file content (holes included) all layers may add.
    pub max_bytes: u64,
    /// The most entries one layer may have.
    pub max_entries: u64,
}

impl Default for ApplyOptions {
    /// Owners and devices when running as root; 256 GiB, 10 million entries a layer.
    fn default() -> Self {
        let root = rustix::process::geteuid().is_root();
        ApplyOptions { owners: root, devices: root, max_bytes: 256 << 30, max_entries: 10_000_000 }
    }
}

/// What one layer did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LayerSummary {
    pub entries: u64,
    /// Bytes of file content the layer wrote (holes included).
    pub bytes: u64,
    /// Whiteouts applied (both kinds).
    pub whiteouts: u64,
    /// Device nodes not made (not root).
    pub skipped_devices: u64,
    /// Xattrs not set (refused by the host, or on symlinks and devices).
    pub skipped_xattrs: u64,
    /// Entries of a kind a root filesystem has no use for (tape volume headers and such).
    pub skipped_other: u64,
}

impl std::ops::AddAssign<&LayerSummary> for LayerSummary {
    fn add_assign(&mut self, layer: &LayerSummary) {
        self.entries += layer.entries;
        self.bytes += layer.bytes;
        self.whiteouts += layer.whiteouts;
        self.skipped_devices += layer.skipped_devices;
        self.skipped_xattrs += layer.skipped_xattrs;
        self.skipped_other += layer.skipped_other;
    }
}

impl LayerSummary {
    /// What the tree lacks of what the layers asked for, in words, for
    /// the one who built it.
    pub fn warnings(&self, options: &ApplyOptions) -> Vec<String> {
        let mut warnings = Vec::new();
        if !options.owners {
            warnings.push("files belong to the building user, not to the image's owners: build as root".to_owned());
        }
        let counts = [
            (self.skipped_devices, "device nodes were not made (build as root)"),
            (self.skipped_xattrs, "xattrs were not kept (the host refused them, or they were on symlinks or devices)"),
            (self.skipped_other, "entries of types a root filesystem has no use for were skipped"),
        ];
        warnings.extend(counts.iter().filter(|(n, _)| *n > 0).map(|(n, what)| format!("{n} {what}")));
        warnings
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("layer entry {path:?} refused: {reason}")]
    Refused { path: String, reason: String },
    #[error("layer entry {path:?}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("layer entry {0}")]
    TooDeep(TooDeep),
    #[error("the layer is not a valid tar archive: {0}")]
    Tar(#[source] io::Error),
    #[error("{0}")]
    Limit(String),
}

pub(crate) type Result<T> = std::result::Result<T, ApplyError>;

/// A root directory that layers are applied to.
pub struct Rootfs {
    root: OwnedFd,
    path: PathBuf,
    options: ApplyOptions,
    /// File content bytes written so far, across layers.
    bytes: u64,
    depths: Depths,
}

/// A cleaned name inside the root: components joined by `/`, none empty,
/// `.` or `..`; empty for the root itself.
pub(crate) type RelPath = Vec<u8>;

/// The state of the layer being applied.
#[derive(Default)]
struct Layer {
    touched: Touched,
    /// Directories whose mtime is set once the layer's entries are in.
    dir_times: Vec<(RelPath, u64)>,
    /// The mtimes of directories from below that the layer changes without
    /// an entry of their own: put back once its entries are in, as umoci
    /// and containerd do, so a layer's work leaves no build-time stamp.
    kept_times: HashMap<RelPath, Timestamps>,
    summary: LayerSummary,
}

impl Layer {
    /// Notes `dir`'s mtime before the layer first changes it.
    fn keep_time(&mut self, path: &[u8], dir: &OwnedFd) -> io::Result<()> {
        if !self.kept_times.contains_key(path) {
            let stat = rustix::fs::fstat(dir)?;
            let time = rustix::fs::Timespec { tv_sec: stat.st_mtime, tv_nsec: stat.st_mtime_nsec as _ };
            self.kept_times.insert(path.to_vec(), Timestamps { last_access: time, last_modification: time });
        }
        Ok(())
    }
}

/// Every path a layer has an entry for, and their ancestors: what its own
/// whiteouts must not remove.
#[derive(Default)]
pub(crate) struct Touched(HashSet<RelPath>);

impl Touched {
    pub(crate) fn touch(&mut self, path: &[u8]) {
        let mut end = path.len();
        while end > 0 && self.0.insert(path[..end].to_vec()) {
            end = path[..end].iter().rposition(|&b| b == b'/').unwrap_or(0);
        }
    }

    pub(crate) fn contains(&self, path: &[u8]) -> bool {
        self.0.contains(path)
    }
}

/// How a layer's tar is read: metadata and sparse maps bounded.
pub(crate) const LAYER_LIMITS: Limits = Limits { max_meta_bytes: 1 << 20, max_segments: 1 << 16 };

/// The name of a layer's `count`th entry, cleaned, and the whiteout it
/// asks for if it is one; refused past `max_entries` entries.
pub(crate) fn entry_name(entry: &Entry, count: u64, max_entries: u64) -> Result<(RelPath, Option<Whiteout>)> {
    if count > max_entries {
        return Err(ApplyError::Limit(format!("the layer has over {max_entries} entries")));
    }
    let name = clean_name(&entry.path)?;
    let whiteout = whiteout(&name).map_err(|reason| refused(&entry.path, reason))?;
    Ok((name, whiteout))
}

/// What a whiteout entry asks for.
pub(crate) enum Whiteout {
    /// Remove this path of the layers below.
    Remove(RelPath),
    /// Hide the lower content of this directory.
    Opaque(RelPath),
    /// An aufs bookkeeping entry (`.wh..wh.*`): nothing to do.
    Ignore,
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Linux's PATH_MAX and NAME_MAX, with room for the terminating NUL.
const MAX_PATH: usize = 4095;
const MAX_NAME: usize = 255;

impl Rootfs {
    /// Opens an existing directory to apply layers to.
    pub fn open(path: &Path, options: ApplyOptions) -> Result<Rootfs> {
        let root = openat(rustix::fs::CWD, path, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| ApplyError::Io { path: path.display().to_string(), source: e.into() })?;
        let depths = Depths::new(&root).map_err(|e| ApplyError::Io { path: path.display().to_string(), source: e })?;
        Ok(Rootfs { root, path: path.to_owned(), options, bytes: 0, depths })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies one layer's tar stream (already decompressed), then reads the
    /// stream to its end so a digest over it covers every byte.
    pub fn apply_layer(&mut self, tar: impl Read) -> Result<LayerSummary> {
        let mut reader = Reader::new(tar, LAYER_LIMITS);
        let mut layer = Layer::default();
        while let Some(entry) = reader.next_entry().map_err(ApplyError::Tar)? {
            layer.summary.entries += 1;
            match entry_name(&entry, layer.summary.entries, self.options.max_entries)? {
                (_, Some(whiteout)) => {
                    self.apply_whiteout(whiteout, &mut layer).map_err(|e| io_error(&entry.path, e))?
                }
                (name, None) => {
                    layer.touched.touch(&name);
                    self.apply_entry(&mut reader, &entry, &name, &mut layer)?;
                    continue;
                }
            }
            layer.summary.whiteouts += 1;
        }
        let named: HashSet<&RelPath> = layer.dir_times.iter().map(|(dir, _)| dir).collect();
        for (dir, time) in layer.kept_times.iter().filter(|(dir, _)| !named.contains(dir)) {
            let fd = self.open_dir(dir).map_err(|e| io_error(dir, e))?;
            futimens(&fd, time).map_err(|e| io_error(dir, e.into()))?;
        }
        for (dir, mtime) in &layer.dir_times {
            let fd = self.open_dir(dir).map_err(|e| io_error(dir, e))?;
            futimens(&fd, &times(*mtime)).map_err(|e| io_error(dir, e.into()))?;
        }
        let trailing = self.options.max_bytes.saturating_sub(self.bytes);
        io::copy(&mut reader.into_inner().take(trailing), &mut io::sink()).map_err(ApplyError::Tar)?;
        Ok(layer.summary)
    }

    fn apply_entry<R: Read>(
        &mut self,
        reader: &mut Reader<R>,
        entry: &Entry,
        name: &[u8],
        layer: &mut Layer,
    ) -> Result<()> {
        if name.is_empty() {
            return self.set_root_metadata(entry).map_err(|e| io_error(b".", e));
        }
        let (parent_path, leaf) = split_last(name);
        let parent = self.open_dir_creating(parent_path).map_err(|e| io_error(&entry.path, e))?;
        let depth = self.depths.of(&parent).map_err(|e| io_error(&entry.path, e))? + 1;
        depth::check(depth, || lossy(&entry.path)).map_err(ApplyError::TooDeep)?;
        layer.keep_time(parent_path, &parent).map_err(|e| io_error(&entry.path, e))?;
        let summary = &mut layer.summary;
        let made = match entry.kind {
            Kind::File => self.write_file(reader, entry, &parent, leaf, summary),
            Kind::Directory => {
                layer.dir_times.push((name.to_vec(), entry.mtime));
                self.make_dir(entry, &parent, leaf, depth, summary)
            }
            Kind::Symlink => self.make_symlink(entry, &parent, leaf, summary),
            Kind::HardLink => return self.make_hard_link(entry, &parent, leaf),
            Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => self.make_node(entry, &parent, leaf, summary),
            Kind::Other(_) => {
                summary.skipped_other += 1;
                Ok(())
            }
        };
        made.map_err(|e| io_error(&entry.path, e))
    }

    fn write_file<R: Read>(
        &mut self,
        reader: &mut Reader<R>,
        entry: &Entry,
        parent: &OwnedFd,
        leaf: &[u8],
        summary: &mut LayerSummary,
    ) -> io::Result<()> {
        self.bytes += entry.size;
        if self.bytes > self.options.max_bytes {
            return Err(io::Error::other(format!(
                "the layers hold over {} bytes of files, the limit",
                self.options.max_bytes
            )));
        }
        summary.bytes += entry.size;
        remove_existing(parent, leaf, false)?;
        let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let file = File::from(openat(parent, leaf, flags, Mode::from_raw_mode(0o600))?);
        file.set_len(entry.size)?;
        reader.read_data(&mut |offset, data| file.write_all_at(data, offset))?;
        self.set_fd_metadata(file.as_fd(), entry, summary)
    }

    /// Makes (or keeps) the directory `leaf`, `depth` names below the root.
    fn make_dir(
        &self,
        entry: &Entry,
        parent: &OwnedFd,
        leaf: &[u8],
        depth: usize,
        summary: &mut LayerSummary,
    ) -> io::Result<()> {
        if remove_existing(parent, leaf, true)? != Some(FileType::Directory) {
            mkdirat(parent, leaf, Mode::from_raw_mode(0o700))?;
        }
        let dir = openat(
            parent,
            leaf,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        self.depths.learn(&dir, depth)?;
        self.set_fd_metadata(dir.as_fd(), entry, summary)
    }

    fn make_symlink(&self, entry: &Entry, parent: &OwnedFd, leaf: &[u8], summary: &mut LayerSummary) -> io::Result<()> {
        remove_existing(parent, leaf, false)?;
        symlinkat(entry.link_name.as_slice(), parent, leaf)?;
        summary.skipped_xattrs += entry.xattrs.len() as u64;
        self.set_path_metadata(parent, leaf, entry, false)
    }

    fn make_node(&self, entry: &Entry, parent: &OwnedFd, leaf: &[u8], summary: &mut LayerSummary) -> io::Result<()> {
        let kind = match entry.kind {
            Kind::CharDevice => FileType::CharacterDevice,
            Kind::BlockDevice => FileType::BlockDevice,
            _ => FileType::Fifo,
        };
        if kind != FileType::Fifo && !self.options.devices {
            summary.skipped_devices += 1;
            return Ok(());
        }
        remove_existing(parent, leaf, false)?;
        let (major, minor) = entry.device;
        mknodat(parent, leaf, kind, Mode::from_raw_mode(0o600), makedev(major, minor))?;
        summary.skipped_xattrs += entry.xattrs.len() as u64;
        self.set_path_metadata(parent, leaf, entry, true)
    }

    /// A hard link to an earlier entry: the target is cleaned and resolved
    /// inside the root like any name, so it cannot be a host file.
    fn make_hard_link(&self, entry: &Entry, parent: &OwnedFd, leaf: &[u8]) -> Result<()> {
        let target = clean_name(&entry.link_name)?;
        if target.is_empty() {
            return Err(refused(&entry.path, "a hard link to the root directory".into()));
        }
        let (target_dir, target_leaf) = split_last(&target);
        let linked = (|| {
            let target_parent = self.open_dir(target_dir)?;
            let target_stat = statat(&target_parent, target_leaf, AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(target_stat.st_mode) == FileType::Directory {
                return Err(io::Error::other("a hard link to a directory"));
            }
            if let Ok(existing) = statat(parent, leaf, AtFlags::SYMLINK_NOFOLLOW)
                && (existing.st_dev, existing.st_ino) == (target_stat.st_dev, target_stat.st_ino)
            {
                return Ok(());
            }
            remove_existing(parent, leaf, false)?;
            linkat(&target_parent, target_leaf, parent, leaf, AtFlags::empty())?;
            Ok(())
        })();
        linked.map_err(|e: io::Error| io_error(&entry.path, e))
    }

    /// Owner, mode, xattrs and mtime of a file or directory, through its descriptor.
    fn set_fd_metadata(&self, fd: BorrowedFd, entry: &Entry, summary: &mut LayerSummary) -> io::Result<()> {
        if self.options.owners {
            let (uid, gid) = owner(entry)?;
            fchown(fd, Some(uid), Some(gid))?;
        }
        fchmod(fd, Mode::from_raw_mode(entry.mode))?;
        for (name, value) in &entry.xattrs {
            match fsetxattr(fd, name.as_str(), value, XattrFlags::empty()) {
                Ok(()) => {}
                Err(Errno::PERM | Errno::NOTSUP | Errno::ACCESS) => summary.skipped_xattrs += 1,
                Err(e) => return Err(e.into()),
            }
        }
        if entry.kind != Kind::Directory {
            futimens(fd, &times(entry.mtime))?;
        }
        Ok(())
    }

    /// Owner, mode (not for symlinks, which have none) and mtime of an entry
    /// that cannot be opened.
    fn set_path_metadata(&self, parent: &OwnedFd, leaf: &[u8], entry: &Entry, mode: bool) -> io::Result<()> {
        if self.options.owners {
            let (uid, gid) = owner(entry)?;
            chownat(parent, leaf, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
        }
        if mode {
            chmodat(parent, leaf, Mode::from_raw_mode(entry.mode), AtFlags::empty())?;
        }
        utimensat(parent, leaf, &times(entry.mtime), AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    fn set_root_metadata(&self, entry: &Entry) -> io::Result<()> {
        if entry.kind != Kind::Directory {
            return Err(io::Error::other("the root is not a directory in this layer"));
        }
        self.set_fd_metadata(self.root.as_fd(), entry, &mut LayerSummary::default())
    }

    fn apply_whiteout(&self, whiteout: Whiteout, layer: &mut Layer) -> io::Result<()> {
        match whiteout {
            Whiteout::Remove(path) if !layer.touched.contains(&path) => {
                let (dir, leaf) = split_last(&path);
                match self.open_dir(dir) {
                    Ok(parent) => {
                        layer.keep_time(dir, &parent)?;
                        remove_existing(&parent, leaf, false).map(drop)
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Whiteout::Remove(_) | Whiteout::Ignore => Ok(()),
            Whiteout::Opaque(dir) => {
                let fd = self.open_dir_creating(&dir)?;
                layer.keep_time(&dir, &fd)?;
                hide_lower(&fd, &dir, layer)
            }
        }
    }

    /// Opens a directory of the tree, resolving every symlink on the way as
    /// if the root were `/`.
    fn open_dir(&self, path: &[u8]) -> io::Result<OwnedFd> {
        let path: &[u8] = if path.is_empty() { b"." } else { path };
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV;
        Ok(openat2(&self.root, path, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty(), resolve)?)
    }

    /// [`Rootfs::open_dir`], making missing directories (mode 0755, owned
    /// by root) on the way, as tars may leave a parent out; none deeper
    /// than [`MAX_DEPTH`] (the error carries a [`TooDeep`]).
    fn open_dir_creating(&self, path: &[u8]) -> io::Result<OwnedFd> {
        match self.open_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && !path.is_empty() => {
                let (parent, leaf) = split_last(path);
                let parent = self.open_dir_creating(parent)?;
                let depth = self.depths.of(&parent)? + 1;
                depth::check(depth, || lossy(path))?;
                let made = match mkdirat(&parent, leaf, Mode::from_raw_mode(0o755)) {
                    Ok(()) => true,
                    Err(Errno::EXIST) => false, // what is there is found by climbing
                    Err(e) => return Err(e.into()),
                };
                let dir = self.open_dir(path)?;
                if made {
                    self.depths.learn(&dir, depth)?;
                }
                Ok(dir)
            }
            opened => opened,
        }
    }
}

/// A directory's identity while it exists: (device, inode).
type DirKey = (u64, u64);

/// How deep the tree's directories are. A layer's symlinks may lead an
/// entry anywhere in the tree, so its name does not tell: the depth of the
/// directory it lands in is learnt when the directory is made here, or
/// found once by climbing `..` to the root. A directory made here takes
/// the entry of a removed one whose inode number it reuses.
struct Depths {
    root: DirKey,
    known: RefCell<HashMap<DirKey, usize>>,
}

impl Depths {
    fn new(root: &OwnedFd) -> io::Result<Depths> {
        Ok(Depths { root: dir_key(root.as_fd())?, known: RefCell::default() })
    }

    fn learn(&self, dir: &OwnedFd, depth: usize) -> io::Result<()> {
        self.known.borrow_mut().insert(dir_key(dir.as_fd())?, depth);
        Ok(())
    }

    /// Names between the root and `dir`; past [`MAX_DEPTH`], the climb
    /// stops and says `MAX_DEPTH + 1`.
    fn of(&self, dir: &OwnedFd) -> io::Result<usize> {
        let mut climbed = Vec::new();
        let mut above: Option<OwnedFd> = None;
        let base = loop {
            let fd = above.as_ref().map_or(dir.as_fd(), |fd| fd.as_fd());
            let here = dir_key(fd)?;
            if here == self.root {
                break 0;
            }
            if let Some(&depth) = self.known.borrow().get(&here) {
                break depth;
            }
            if climbed.len() > MAX_DEPTH {
                return Ok(MAX_DEPTH + 1);
            }
            climbed.push(here);
            let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            above = Some(openat(fd, "..", flags, Mode::empty())?);
        };
        let mut known = self.known.borrow_mut();
        for (above_base, key) in climbed.iter().rev().enumerate() {
            known.insert(*key, base + above_base + 1);
        }
        Ok(base + climbed.len())
    }
}

#[allow(clippy::useless_conversion)] // stat's field types differ between architectures
fn dir_key(dir: BorrowedFd) -> io::Result<DirKey> {
    let stat = rustix::fs::fstat(dir)?;
    Ok((u64::from(stat.st_dev), u64::from(stat.st_ino)))
}

/// Removes, under an opaque directory, everything the layer did not put
/// there itself: the content of the layers below.
fn hide_lower(dir: &OwnedFd, path: &[u8], layer: &Layer) -> io::Result<()> {
    for child in children(dir)? {
        let child_path = join(path, &child);
        if !layer.touched.contains(&child_path) {
            remove_tree(dir, &child)?;
        } else if FileType::from_raw_mode(statat(dir, child.as_slice(), AtFlags::SYMLINK_NOFOLLOW)?.st_mode)
            == FileType::Directory
        {
            let fd =
                openat(dir, child.as_slice(), OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW, Mode::empty())?;
            hide_lower(&fd, &child_path, layer)?;
        }
    }
    Ok(())
}

/// Removes `leaf` unless it is missing, or a directory when `keep_dir`;
/// returns the type it had.
fn remove_existing(parent: &OwnedFd, leaf: &[u8], keep_dir: bool) -> io::Result<Option<FileType>> {
    let kind = match statat(parent, leaf, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => FileType::from_raw_mode(stat.st_mode),
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if !(keep_dir && kind == FileType::Directory) {
        remove_tree(parent, leaf)?;
    }
    Ok(Some(kind))
}

/// Removes a file, or a directory with everything in it, without following links.
fn remove_tree(parent: &OwnedFd, leaf: &[u8]) -> io::Result<()> {
    match unlinkat(parent, leaf, AtFlags::empty()) {
        Err(Errno::ISDIR) => {
            let dir = openat(parent, leaf, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW, Mode::empty())?;
            for child in children(&dir)? {
                remove_tree(&dir, &child)?;
            }
            Ok(unlinkat(parent, leaf, AtFlags::REMOVEDIR)?)
        }
        done => Ok(done?),
    }
}

/// The names in a directory, `.` and `..` left out.
fn children(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    let mut entries = Dir::read_from(dir)?;
    while let Some(entry) = entries.read() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// The cleaned form of an archive name: `./` prefixes, empty components and
/// `.` dropped; absolute names, `..` and overlong names refused.
pub(crate) fn clean_name(raw: &[u8]) -> Result<RelPath> {
    if raw.starts_with(b"/") {
        return Err(refused(raw, "an absolute name: layer entries must be relative to the root".into()));
    }
    if raw.len() > MAX_PATH {
        return Err(refused(raw, format!("a name over {MAX_PATH} bytes")));
    }
    if raw.contains(&0) {
        // No filesystem name holds one; an initramfs would cut the name there.
        return Err(refused(raw, "a NUL byte in the name".into()));
    }
    let mut clean = Vec::with_capacity(raw.len());
    for component in raw.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".") {
        if component == b".." {
            return Err(refused(raw, "'..' would climb out of the root".into()));
        }
        if component.len() > MAX_NAME {
            return Err(refused(raw, format!("a name component over {MAX_NAME} bytes")));
        }
        if !clean.is_empty() {
            clean.push(b'/');
        }
        clean.extend_from_slice(component);
    }
    Ok(clean)
}

/// The whiteout an entry's name asks for, if it is one.
fn whiteout(name: &[u8]) -> std::result::Result<Option<Whiteout>, String> {
    let (dir, leaf) = split_last(name);
    let Some(target) = leaf.strip_prefix(WHITEOUT_PREFIX) else { return Ok(None) };
    if leaf == OPAQUE {
        return Ok(Some(Whiteout::Opaque(dir.to_vec())));
    }
    if target.starts_with(WHITEOUT_PREFIX) {
        return Ok(Some(Whiteout::Ignore));
    }
    if target.is_empty() || target == b"." || target == b".." {
        return Err(format!("a whiteout of {:?}, outside what the layer may remove", String::from_utf8_lossy(target)));
    }
    Ok(Some(Whiteout::Remove(join(dir, target))))
}

pub(crate) fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(slash) => (&path[..slash], &path[slash + 1..]),
        None => (&[], path),
    }
}

pub(crate) fn join(dir: &[u8], leaf: &[u8]) -> RelPath {
    if dir.is_empty() { leaf.to_vec() } else { [dir, b"/", leaf].concat() }
}

fn owner(entry: &Entry) -> io::Result<(Uid, Gid)> {
    let id = |n: u64| u32::try_from(n).map_err(|_| io::Error::other(format!("owner id {n} is over 32 bits")));
    Ok((Uid::from_raw(id(entry.uid)?), Gid::from_raw(id(entry.gid)?)))
}

fn times(mtime: u64) -> Timestamps {
    let time = rustix::fs::Timespec { tv_sec: mtime.min(i64::MAX as u64) as i64, tv_nsec: 0 };
    Timestamps { last_access: time, last_modification: time }
}

pub(crate) fn refused(path: &[u8], reason: String) -> ApplyError {
    ApplyError::Refused { path: lossy(path), reason }
}

/// The error of the entry at `path`: too deep when `source` says so.
pub(crate) fn io_error(path: &[u8], source: io::Error) -> ApplyError {
    match depth::too_deep(&source) {
        Some(deep) => ApplyError::TooDeep(TooDeep { path: lossy(path), depth: deep.depth }),
        None => ApplyError::Io { path: lossy(path), source },
    }
}

pub(crate) fn lossy(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_or_refused() {
        assert_eq!(clean_name(b"./usr//bin/./sh").unwrap(), b"usr/bin/sh");
        assert_eq!(clean_name(b"./").unwrap(), b"");
        assert!(clean_name(b"/etc/passwd").is_err());
        assert!(clean_name(b"usr/../../etc").is_err());
        assert!(clean_name(&[b'a'; 256]).is_err());
        assert!(clean_name(b"etc/passwd\0x").is_err(), "an initramfs would cut it at the NUL");
    }

    #[test]
    fn whiteouts_are_recognised() {
        assert!(matches!(whiteout(b"etc/.wh.motd"), Ok(Some(Whiteout::Remove(p))) if p == b"etc/motd"));
        assert!(matches!(whiteout(b"var/.wh..wh..opq"), Ok(Some(Whiteout::Opaque(p))) if p == b"var"));
        assert!(matches!(whiteout(b".wh..wh.plnk"), Ok(Some(Whiteout::Ignore))));
        assert!(matches!(whiteout(b"etc/motd"), Ok(None)));
        assert!(whiteout(b"etc/.wh...").is_err());
        assert!(whiteout(b"etc/.wh.").is_err());
    }

    #[test]
    fn a_layer_touches_ancestors() {
        let mut layer = Layer::default();
        layer.touched.touch(b"a/b/c");
        assert!(layer.touched.contains(b"a".as_slice()) && layer.touched.contains(b"a/b".as_slice()));
    }
}
