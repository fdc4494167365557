//! The metadata of an erofs image made by `mkfs.erofs`, rewritten in place:
//! owners, modes, mtimes, device nodes and xattr namespaces that a user
//! without root could not give the tree mkfs.erofs read (see
//! [`super::merged`]).
//!
//! [`patch`] walks the image's directories from the root inode and, for
//! each path, sets what [`Wanted`] says in its inode: mode, owner, group,
//! mtime, and for a placeholder of a device node or FIFO (an empty regular
//! file in the tree) the file type in the inode and in its directory entry,
//! the device number and the plain data layout; and it moves `user.*`
//! xattrs that stand for `security.*` or `trusted.*` ones to their own
//! namespace, by the name index byte of their entry (the stored name after
//! the prefix is the same), refusing any xattr the layers did not give (the
//! host's filesystem may add an SELinux label or a default ACL to the
//! shadow tree). Nothing changes size or place, so no other byte of the
//! image moves.
//!
//! It reads only what this module's own mkfs.erofs run wrote, but parses
//! it as untrusted all the same: every offset is checked against the
//! image's length, each directory is read once, and an image that does not
//! hold exactly the wanted paths is an error. It needs extended (64-byte)
//! inodes (`-E force-inode-extended`) for 32-bit owners and per-inode
//! mtimes, and xattrs kept inline (no shared xattr may need moving).
//!
//! The layout is Linux's `fs/erofs/erofs_fs.h`: the superblock at byte
//! 1024, inodes at `meta_blkaddr * block size + nid * 32`, directories as
//! blocks of 12-byte entries followed by their names.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::apply::{RelPath, lossy};

const SUPERBLOCK_OFFSET: u64 = 1024;
const MAGIC: u32 = 0xE0F5_E1E2;
/// `feature_compat`: the superblock's block carries a CRC32C.
const SB_CHKSUM: u32 = 1;
/// `feature_compat`: each inode has a Bloom filter of its xattr names
/// (erofs-utils 1.7 and later), which moving a name's namespace would
/// leave stale.
const XATTR_FILTER: u32 = 4;
/// The name index of `user.` xattrs.
pub(super) const USER_INDEX: u8 = 1;
const EXTENDED_INODE: u64 = 64;
const DIRENT: usize = 12;
const FLAT_PLAIN: u16 = 0;
const FLAT_INLINE: u16 = 2;
/// Directory entry file types.
const FT_REG_FILE: u8 = 1;
const FT_DIR: u8 = 2;

/// What one path's inode must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Wanted {
    /// Type and permission bits, as `st_mode`.
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    /// For a placeholder: the directory entry's file type and the device
    /// number (0 for a FIFO).
    pub special: Option<(u8, u32)>,
    /// Every xattr the inode holds, as the shadow tree gave it (`user.`
    /// and the name after its prefix), with the name index it must have
    /// (1 for `user.` itself): exactly these, nothing the host added.
    pub xattrs: Vec<(Vec<u8>, u8)>,
}

/// Sets what `wanted` says for every path of the erofs `image`, which must
/// hold exactly those paths (the root is `.`).
pub(super) fn patch(image: &Path, wanted: &HashMap<RelPath, Wanted>) -> io::Result<()> {
    let file = File::options().read(true).write(true).open(image)?;
    let image = Image::open(file)?;
    let root = image.root_nid;
    let mut seen: HashSet<RelPath> = HashSet::from([b".".to_vec()]);
    let mut patched: HashSet<u64> = HashSet::new();
    let mut pending: Vec<(u64, RelPath)> = vec![(root, b".".to_vec())];
    image.set(root, b".", want(wanted, b".")?, &mut patched)?;
    while let Some((dir, dir_path)) = pending.pop() {
        for entry in image.dir_entries(dir)? {
            if entry.name == b"." || entry.name == b".." {
                continue;
            }
            let path = if dir == root { entry.name.clone() } else { [&dir_path[..], b"/", &entry.name].concat() };
            let wanted = want(wanted, &path)?;
            if !seen.insert(path.clone()) {
                return Err(corrupt(&format!("{}: named twice", lossy(&path))));
            }
            if entry.file_type == FT_DIR {
                pending.push((entry.nid, path.clone()));
            }
            if let Some((file_type, _)) = wanted.special {
                if entry.file_type != FT_REG_FILE {
                    return Err(corrupt(&format!("{}: a placeholder that is not a regular file", lossy(&path))));
                }
                image.write(entry.file_type_at, &[file_type])?;
            }
            image.set(entry.nid, &path, wanted, &mut patched)?;
        }
    }
    if seen.len() != wanted.len() {
        return Err(corrupt(&format!("the image holds {} paths of the {} the tree has", seen.len(), wanted.len())));
    }
    image.seal()?;
    image.file.sync_all()
}

fn want<'a>(wanted: &'a HashMap<RelPath, Wanted>, path: &[u8]) -> io::Result<&'a Wanted> {
    wanted.get(path).ok_or_else(|| corrupt(&format!("{}: in the image but not in the tree", lossy(path))))
}

/// An xattr in the image that the layers did not give: the host's, added
/// to the shadow tree (an SELinux label, an inherited default ACL).
fn foreign_xattr(path: &[u8], index: u8, name: &[u8]) -> io::Error {
    let message = format!(
        "erofs: {}: the tree mkfs.erofs read carries an xattr the layers did not give (name index {index}, {:?}): \
         the host's filesystem adds it (an SELinux label? a default ACL?); build on a filesystem that adds none, \
         or build an ext4 disk",
        lossy(path),
        lossy(name)
    );
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("erofs: the image mkfs.erofs made: {what}"))
}

/// A directory entry, with where its file type byte is in the image.
struct DirEntry {
    name: Vec<u8>,
    nid: u64,
    file_type: u8,
    file_type_at: u64,
}

/// The parts of an inode the patch reads.
struct Inode {
    at: u64,
    format: u16,
    size: u64,
    raw_blkaddr: u32,
    xattr_icount: u16,
}

impl Inode {
    fn layout(&self) -> u16 {
        (self.format >> 1) & 0x7
    }

    /// Bytes of inline xattrs after the inode.
    fn xattr_size(&self) -> u64 {
        match self.xattr_icount {
            0 => 0,
            n => 12 + (u64::from(n) - 1) * 4,
        }
    }
}

struct Image {
    file: File,
    len: u64,
    block: u64,
    meta_start: u64,
    root_nid: u64,
    feature_compat: u32,
}

impl Image {
    fn open(file: File) -> io::Result<Image> {
        let len = file.metadata()?.len();
        let mut sb = [0u8; 128];
        read_exact_at(&file, len, &mut sb, SUPERBLOCK_OFFSET)?;
        if u32::from_le_bytes(sb[0..4].try_into().expect("4 bytes")) != MAGIC {
            return Err(corrupt("no erofs superblock"));
        }
        let blkszbits = sb[12];
        if blkszbits != 12 {
            return Err(corrupt(&format!("a block size of 2^{blkszbits} bytes, not 4096")));
        }
        let block = 1u64 << blkszbits;
        let root_nid = u64::from(u16::from_le_bytes([sb[14], sb[15]]));
        let meta_blkaddr = u64::from(u32::from_le_bytes(sb[40..44].try_into().expect("4 bytes")));
        let feature_compat = u32::from_le_bytes(sb[8..12].try_into().expect("4 bytes"));
        if feature_compat & XATTR_FILTER != 0 {
            return Err(corrupt("xattr name filters, which this patch would leave stale"));
        }
        Ok(Image { file, len, block, meta_start: meta_blkaddr * block, root_nid, feature_compat })
    }

    /// Sets the superblock's checksum anew, when it has one: it covers the
    /// rest of block 0, where the first inodes may be. The kernel's value
    /// is `crc32c(~0, ...)` without the final inversion.
    fn seal(&self) -> io::Result<()> {
        if self.feature_compat & SB_CHKSUM == 0 {
            return Ok(());
        }
        let mut rest = vec![0u8; (self.block - SUPERBLOCK_OFFSET) as usize];
        self.read(&mut rest, SUPERBLOCK_OFFSET)?;
        rest[4..8].fill(0);
        let checksum = !crc32c::crc32c(&rest);
        self.write(SUPERBLOCK_OFFSET + 4, &checksum.to_le_bytes())
    }

    fn read(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        read_exact_at(&self.file, self.len, buf, at)
    }

    fn write(&self, at: u64, bytes: &[u8]) -> io::Result<()> {
        if at.checked_add(bytes.len() as u64).is_none_or(|end| end > self.len) {
            return Err(corrupt("a write past the image's end"));
        }
        self.file.write_all_at(bytes, at)
    }

    fn inode(&self, nid: u64) -> io::Result<Inode> {
        let at = nid.checked_mul(32).and_then(|o| o.checked_add(self.meta_start)).ok_or_else(|| corrupt("a nid"))?;
        let mut raw = [0u8; EXTENDED_INODE as usize];
        self.read(&mut raw, at)?;
        let u16_at = |i: usize| u16::from_le_bytes([raw[i], raw[i + 1]]);
        let format = u16_at(0);
        if format & 1 == 0 {
            return Err(corrupt(&format!("inode {nid} is compact; mkfs.erofs was asked for extended inodes")));
        }
        Ok(Inode {
            at,
            format,
            size: u64::from_le_bytes(raw[8..16].try_into().expect("8 bytes")),
            raw_blkaddr: u32::from_le_bytes(raw[16..20].try_into().expect("4 bytes")),
            xattr_icount: u16_at(2),
        })
    }

    /// The entries of directory `nid`, read once.
    fn dir_entries(&self, nid: u64) -> io::Result<Vec<DirEntry>> {
        let inode = self.inode(nid)?;
        if inode.size > self.len {
            return Err(corrupt(&format!("directory {nid} is larger than the image")));
        }
        let mut entries = Vec::new();
        let mut offset = 0;
        while offset < inode.size {
            let len = (inode.size - offset).min(self.block);
            let at = self.data_at(&inode, offset, len)?;
            let mut block = vec![0u8; len as usize];
            self.read(&mut block, at)?;
            entries.extend(parse_dir_block(&block, at).map_err(|e| corrupt(&format!("directory {nid}: {e}")))?);
            offset += len;
        }
        Ok(entries)
    }

    /// Where `len` bytes at `offset` of a flat inode's data are.
    fn data_at(&self, inode: &Inode, offset: u64, len: u64) -> io::Result<u64> {
        let full_blocks = inode.size / self.block;
        let at = match inode.layout() {
            FLAT_INLINE if offset / self.block >= full_blocks => {
                let tail = inode.at + EXTENDED_INODE + inode.xattr_size();
                if tail % self.block + len > self.block {
                    return Err(corrupt("inline data crosses a block"));
                }
                tail + offset % self.block
            }
            FLAT_PLAIN | FLAT_INLINE => u64::from(inode.raw_blkaddr) * self.block + offset,
            other => return Err(corrupt(&format!("a directory of data layout {other}"))),
        };
        Ok(at)
    }

    /// Writes `wanted` into inode `nid`, once however many names it has.
    fn set(&self, nid: u64, path: &[u8], wanted: &Wanted, patched: &mut HashSet<u64>) -> io::Result<()> {
        if !patched.insert(nid) {
            return Ok(());
        }
        let inode = self.inode(nid)?;
        let mut fields = [0u8; 44];
        self.read(&mut fields, inode.at)?;
        fields[4..6].copy_from_slice(&wanted.mode.to_le_bytes());
        fields[24..28].copy_from_slice(&wanted.uid.to_le_bytes());
        fields[28..32].copy_from_slice(&wanted.gid.to_le_bytes());
        fields[32..40].copy_from_slice(&wanted.mtime.to_le_bytes());
        fields[40..44].copy_from_slice(&0u32.to_le_bytes());
        if let Some((_, rdev)) = wanted.special {
            if inode.size != 0 {
                return Err(corrupt(&format!("{}: a placeholder with data", lossy(path))));
            }
            let format = (inode.format & !(0x7 << 1)) | (FLAT_PLAIN << 1);
            fields[0..2].copy_from_slice(&format.to_le_bytes());
            fields[16..20].copy_from_slice(&rdev.to_le_bytes());
        }
        self.write(inode.at, &fields)?;
        self.set_xattr_namespaces(&inode, path, &wanted.xattrs)
    }

    /// Checks that the inode's xattrs are inline and exactly the `user.*`
    /// ones `xattrs` names (a host's SELinux label or default ACL on the
    /// shadow tree would be refused here), and gives each its namespace.
    fn set_xattr_namespaces(&self, inode: &Inode, path: &[u8], xattrs: &[(Vec<u8>, u8)]) -> io::Result<()> {
        let mut body = vec![0u8; inode.xattr_size() as usize];
        let start = inode.at + EXTENDED_INODE;
        self.read(&mut body, start)?;
        if body.get(4).is_some_and(|&shared| shared != 0) {
            return Err(corrupt(&format!("{}: shared xattrs, which mkfs.erofs was told not to make", lossy(path))));
        }
        let mut left: Vec<&(Vec<u8>, u8)> = xattrs.iter().collect();
        let mut at = 12;
        while at + 4 <= body.len() {
            let (name_len, index) = (usize::from(body[at]), body[at + 1]);
            let value_len = usize::from(u16::from_le_bytes([body[at + 2], body[at + 3]]));
            let name = body.get(at + 4..at + 4 + name_len).ok_or_else(|| corrupt("an xattr past its inode"))?;
            let found = left.iter().position(|(wanted, _)| wanted == name).filter(|_| index == USER_INDEX);
            let Some(found) = found else {
                return Err(foreign_xattr(path, index, name));
            };
            self.write(start + at as u64 + 1, &[left.swap_remove(found).1])?;
            at += (4 + name_len + value_len).next_multiple_of(4);
        }
        if !left.is_empty() {
            return Err(corrupt(&format!("{}: {} of its xattrs are missing", lossy(path), left.len())));
        }
        Ok(())
    }
}

/// The entries of one directory block at `at` in the image.
fn parse_dir_block(block: &[u8], at: u64) -> Result<Vec<DirEntry>, String> {
    let u16_at = |i: usize| u16::from_le_bytes([block[i], block[i + 1]]);
    if block.len() < DIRENT {
        return Err("a block shorter than one entry".into());
    }
    let count = usize::from(u16_at(8)) / DIRENT;
    if count == 0 || count * DIRENT > block.len() {
        return Err(format!("{count} entries in a block of {} bytes", block.len()));
    }
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let base = i * DIRENT;
        let start = usize::from(u16_at(base + 8));
        let end = if i + 1 < count { usize::from(u16_at(base + DIRENT + 8)) } else { block.len() };
        let name = block.get(start..end).filter(|_| start >= count * DIRENT).ok_or("a name out of its block")?;
        let name = name.split(|&b| b == 0).next().unwrap_or_default().to_vec();
        if name.is_empty() || name.contains(&b'/') {
            return Err(format!("the name {:?}", lossy(&name)));
        }
        entries.push(DirEntry {
            name,
            nid: u64::from_le_bytes(block[base..base + 8].try_into().expect("8 bytes")),
            file_type: block[base + 10],
            file_type_at: at + (base + 10) as u64,
        });
    }
    Ok(entries)
}

fn read_exact_at(file: &File, len: u64, buf: &mut [u8], at: u64) -> io::Result<()> {
    if at.checked_add(buf.len() as u64).is_none_or(|end| end > len) {
        return Err(corrupt(&format!("a read of {} bytes at {at}, past the image's end", buf.len())));
    }
    file.read_exact_at(buf, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(entries: &[(&[u8], u64, u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut nameoff = entries.len() * DIRENT;
        for (name, nid, file_type) in entries {
            out.extend_from_slice(&nid.to_le_bytes());
            out.extend_from_slice(&(nameoff as u16).to_le_bytes());
            out.extend_from_slice(&[*file_type, 0]);
            nameoff += name.len();
        }
        for (name, _, _) in entries {
            out.extend_from_slice(name);
        }
        out
    }

    #[test]
    fn directory_blocks_parse_with_their_file_type_offsets() {
        let bytes = block(&[(b".", 1, FT_DIR), (b"..", 1, FT_DIR), (b"null", 9, FT_REG_FILE)]);
        let entries = parse_dir_block(&bytes, 4096).unwrap();
        assert_eq!(entries.iter().map(|e| e.name.as_slice()).collect::<Vec<_>>(), [&b"."[..], b"..", b"null"]);
        assert_eq!((entries[2].nid, entries[2].file_type_at), (9, 4096 + 2 * 12 + 10));
    }

    #[test]
    fn hostile_directory_blocks_are_refused() {
        let mut bytes = block(&[(b"a", 1, FT_REG_FILE), (b"b", 2, FT_REG_FILE)]);
        bytes[8] = 0xff; // the first name's offset, past the block
        assert!(parse_dir_block(&bytes, 0).is_err());
        assert!(parse_dir_block(&block(&[(b"a/b", 1, FT_REG_FILE)]), 0).is_err());
        assert!(parse_dir_block(&[0u8; 4], 0).is_err());
        let mut zero = block(&[(b"a", 1, FT_REG_FILE)]);
        zero[8] = 0;
        assert!(parse_dir_block(&zero, 0).is_err());
    }
}
