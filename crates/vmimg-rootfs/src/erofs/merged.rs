//! erofs disks from layers merged in memory ([`crate::merge`]), the same
//! image whoever builds it.
//!
//! erofs-utils 1.5 (bookworm's) reads only a directory, and a user without
//! root cannot give a directory owners, device nodes or `security.*` and
//! `trusted.*` xattrs. So [`build_merged`] writes the merged tree to a
//! directory as any user can (a *shadow* tree: the final files only, each
//! once; device nodes and FIFOs as empty regular files standing in for
//! them; every xattr as `user.NAME`, whatever its namespace), lets
//! `mkfs.erofs` compress it with extended inodes and no shared xattrs, and
//! then writes the real metadata into the image ([`super::patch`]): owners,
//! modes, mtimes, device types and numbers, xattr namespaces. Those fields
//! have the same size whatever their value, so nothing moves; the image
//! is then checked by `fsck.erofs --extract` before it appears. Root and
//! any other user take this same path and get the same bytes.
//!
//! What it refuses, naming the path: xattrs on a symlink (Linux keeps
//! `user.*` off symlinks, so the shadow tree cannot carry them), xattrs
//! outside `user.`, `security.` and `trusted.` (POSIX ACLs among them),
//! two xattrs of one file that differ only in namespace, owners or groups
//! over 32 bits, and device numbers erofs's 32-bit field cannot hold.
//! What mkfs.erofs 1.5 cannot take is refused as for any tree
//! ([`super::build`]).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, XattrFlags};
use vmimg_disk::Replace;
use vmimg_tar::Kind;

use super::patch::{self, USER_INDEX, Wanted};
use super::{Compression, ErofsImage, ErofsOptions, check_with, context, mkfs, native, scan, tool, validate, version};
use crate::apply::{RelPath, lossy};
use crate::merge::{Content, Emit, LayerTar, Merged, Node, Xattrs, st_mode};

/// mkfs.erofs options the patch needs: 64-byte inodes (32-bit owners, an
/// mtime each) and xattrs kept inline (a tolerance of `INT_MAX` turns
/// sharing off).
const SHADOW_OPTIONS: [&str; 4] = ["-E", "force-inode-extended", "-x", "2147483647"];

/// xattr namespaces the shadow tree moves to `user.`, and erofs's name
/// index of each.
const MOVED_NAMESPACES: [(&str, u8); 2] = [("security.", 6), ("trusted.", 4)];

/// Makes `out` an erofs image of the tree `merged` stands for, its file
/// contents read from the layers `open_layer` gives (the same decompressed
/// bytes [`Merged::add_layer`] read), by way of a shadow tree written
/// under `shadow` (an empty directory, left for the caller to remove).
pub fn build_merged(
    merged: &Merged,
    open_layer: impl FnMut(usize) -> io::Result<LayerTar>,
    shadow: &Path,
    out: &Path,
    options: &ErofsOptions,
) -> io::Result<ErofsImage> {
    validate(options)?;
    let fsck = tool(options, "fsck.erofs");
    let erofs_utils_version = version(&fsck)?;
    if options.compression == Compression::None {
        let bytes = vmimg_disk::publish_path(out, Replace::Yes, true, |image| {
            let bytes = native::write(merged, open_layer, image, &options.uuid, options.timestamp)?;
            check_with(image, &fsck)?;
            Ok::<_, io::Error>(bytes)
        })?;
        return Ok(ErofsImage { bytes, erofs_utils_version });
    }
    let root = rustix::fs::open(shadow, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| context(e.into(), shadow, "open"))?;
    let mut tree = Shadow { root, wanted: HashMap::new(), newest: 0 };
    merged.emit(&mut tree, open_layer)?;
    scan(shadow)?;
    let timestamp = options.timestamp.unwrap_or(tree.newest.saturating_add(1));
    for wanted in tree.wanted.values_mut() {
        wanted.mtime = wanted.mtime.min(timestamp);
    }
    let bytes = vmimg_disk::publish_path(out, Replace::Yes, true, |image| {
        mkfs(shadow, image, options, timestamp, &SHADOW_OPTIONS)?;
        patch::patch(image, &tree.wanted).map_err(|e| context(e, image, "set the tree's metadata"))?;
        check_with(image, &fsck)?;
        std::fs::metadata(image).map(|meta| meta.len()).map_err(|e| context(e, image, "stat"))
    })?;
    Ok(ErofsImage { bytes, erofs_utils_version })
}

/// The shadow tree being written, and what each path's inode must say.
struct Shadow {
    root: OwnedFd,
    wanted: HashMap<RelPath, Wanted>,
    newest: u64,
}

impl Emit for Shadow {
    fn node(&mut self, node: &Node<'_>) -> io::Result<()> {
        let (entry, path) = (&node.entry, &node.paths[0]);
        let special = match entry.kind {
            Kind::Directory if path == b"." => {
                let xattrs = set_xattrs(self.root.as_fd(), path, &entry.xattrs)?;
                return self.note(node, None, xattrs);
            }
            Kind::Directory => {
                rustix::fs::mkdirat(&self.root, name(path), Mode::from_raw_mode(0o700)).map_err(at(path, "mkdir"))?;
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let dir = rustix::fs::openat(&self.root, name(path), flags, Mode::empty()).map_err(at(path, "open"))?;
                let xattrs = set_xattrs(dir.as_fd(), path, &entry.xattrs)?;
                return self.note(node, None, xattrs);
            }
            Kind::Symlink => {
                if !entry.xattrs.is_empty() {
                    return Err(refused(path, "xattrs on a symlink, which the tree mkfs.erofs reads cannot hold"));
                }
                rustix::fs::symlinkat(name(&entry.link_name), &self.root, name(path)).map_err(at(path, "symlink"))?;
                return self.note(node, None, Vec::new());
            }
            Kind::CharDevice => (3, device_number(entry.device, path)?),
            Kind::BlockDevice => (4, device_number(entry.device, path)?),
            _ => (5, 0),
        };
        let placeholder = self.create(path)?;
        let xattrs = set_xattrs(placeholder.as_fd(), path, &entry.xattrs)?;
        self.note(node, Some(special), xattrs)
    }

    fn file(&mut self, node: &Node<'_>, content: &mut Content<'_>) -> io::Result<()> {
        let path = &node.paths[0];
        let file = File::from(self.create(path)?);
        content(&mut |offset, bytes| file.write_all_at(bytes, offset)).map_err(|e| context(e, name(path), "write"))?;
        file.set_len(node.entry.size).map_err(|e| context(e, name(path), "write"))?;
        let xattrs = set_xattrs(file.as_fd(), path, &node.entry.xattrs)?;
        self.note(node, None, xattrs)
    }
}

impl Shadow {
    fn create(&self, path: &[u8]) -> io::Result<OwnedFd> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rustix::fs::openat(&self.root, name(path), flags, Mode::from_raw_mode(0o600)).map_err(at(path, "create"))
    }

    /// Links the further names of `node` and notes what each name's inode
    /// must say.
    fn note(&mut self, node: &Node<'_>, special: Option<(u8, u32)>, xattrs: Vec<(Vec<u8>, u8)>) -> io::Result<()> {
        let entry = &node.entry;
        let (first, others) = node.paths.split_first().expect("an inode has a name");
        for path in others {
            rustix::fs::linkat(&self.root, name(first), &self.root, name(path), AtFlags::empty())
                .map_err(at(path, "link"))?;
        }
        let owner = |id: u64, what: &str| {
            u32::try_from(id).map_err(|_| refused(first, &format!("{what} {id}, over erofs's 32 bits")))
        };
        let wanted = Wanted {
            mode: st_mode(entry.kind, entry.mode) as u16,
            uid: owner(entry.uid, "the owner")?,
            gid: owner(entry.gid, "the group")?,
            mtime: entry.mtime,
            special,
            xattrs,
        };
        self.newest = self.newest.max(entry.mtime);
        for path in node.paths {
            self.wanted.insert(path.clone(), wanted.clone());
        }
        Ok(())
    }
}

/// Sets `xattrs` on `fd` as `user.*` ones; returns each with the name
/// after its prefix and its erofs name index (1 for `user.`).
fn set_xattrs(fd: BorrowedFd<'_>, path: &[u8], xattrs: &Xattrs) -> io::Result<Vec<(Vec<u8>, u8)>> {
    let mut stored = Vec::new();
    for (xattr, value) in xattrs {
        let (suffix, index) = match MOVED_NAMESPACES.iter().find_map(|(p, i)| Some((xattr.strip_prefix(p)?, *i))) {
            Some((suffix, index)) => (suffix, Some(index)),
            None => match xattr.strip_prefix("user.") {
                Some(suffix) => (suffix, None),
                None => {
                    return Err(refused(
                        path,
                        &format!("the xattr {xattr}: erofs disks take user., security. and trusted. ones"),
                    ));
                }
            },
        };
        match rustix::fs::fsetxattr(fd, format!("user.{suffix}").as_str(), value, XattrFlags::CREATE) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                return Err(refused(path, &format!("two xattrs named {suffix} in different namespaces")));
            }
            Err(e) => return Err(context(e.into(), name(path), &format!("set the xattr {xattr} (as user.{suffix})"))),
        }
        stored.push((suffix.as_bytes().to_vec(), index.unwrap_or(USER_INDEX)));
    }
    Ok(stored)
}

/// Linux's `new_encode_dev`, erofs's 32-bit device field.
pub(super) fn device_number((major, minor): (u32, u32), path: &[u8]) -> io::Result<u32> {
    if major >= 1 << 12 || minor >= 1 << 20 {
        return Err(refused(path, &format!("device {major}:{minor}, over erofs's 12-bit major or 20-bit minor")));
    }
    Ok((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

fn name(path: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(path))
}

fn at<'a>(path: &'a [u8], what: &'static str) -> impl FnOnce(rustix::io::Errno) -> io::Error + 'a {
    move |e| context(e.into(), name(path), what)
}

pub(super) fn refused(path: &[u8], why: &str) -> io::Error {
    let message = format!("erofs: {}: {why}; build an ext4 disk instead", lossy(path));
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_encode_as_linux_does() {
        assert_eq!(device_number((1, 3), b"dev/null").unwrap(), 0x103);
        assert_eq!(device_number((259, 0x12345), b"dev/x").unwrap(), 0x45 | (259 << 8) | (0x12300 << 12));
        assert!(device_number((4096, 0), b"dev/x").is_err());
    }
}
