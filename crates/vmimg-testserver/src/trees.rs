//! Trees compared file by file: what two builds of one image must agree
//! on.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Every path under `root` (root included), parents first, with its lstat.
pub fn entries(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = vec![(root.to_path_buf(), fs::symlink_metadata(root).unwrap())];
    let mut i = 0;
    while i < out.len() {
        let (path, meta) = out[i].clone();
        if meta.is_dir() {
            let mut children: Vec<_> = fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()).collect();
            children.sort();
            for child in children {
                let meta = fs::symlink_metadata(&child).unwrap();
                out.push((child, meta));
            }
        }
        i += 1;
    }
    out
}

/// What a tree holds, entry by entry: path, type and mode, owner, size,
/// content, link target, device numbers, link count, xattrs, and the mtime
/// of what is not a directory (a directory's moves with what is made in it).
pub fn describe(root: &Path) -> Vec<String> {
    describe_with(root, |meta| !meta.is_dir())
}

/// [`describe`], but with no symlink's mtime: GNU cpio sets none.
pub fn describe_cpio_extracted(root: &Path) -> Vec<String> {
    describe_with(root, |meta| !meta.is_dir() && !meta.is_symlink())
}

fn describe_with(root: &Path, keeps_mtime: impl Fn(&fs::Metadata) -> bool) -> Vec<String> {
    entries(root)
        .into_iter()
        .map(|(path, meta)| {
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            let content = if meta.is_file() { fs::read(&path).unwrap() } else { Vec::new() };
            let target = fs::read_link(&path).ok();
            let mtime = if keeps_mtime(&meta) { meta.mtime() } else { 0 };
            format!(
                "{relative} {:o} {}:{} {} {content:?} {target:?} {} {} {mtime} {:?}",
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.len(),
                meta.rdev(),
                meta.nlink(),
                xattrs(&path),
            )
        })
        .collect()
}

/// The xattrs of `path` itself, sorted by name.
fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 64 << 10];
    let len = rustix::fs::llistxattr(path, &mut names).unwrap_or(0);
    let mut xattrs: Vec<(String, Vec<u8>)> = names[..len]
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| {
            let mut value = vec![0u8; 64 << 10];
            let n = rustix::fs::lgetxattr(path, name, &mut value).unwrap();
            (String::from_utf8_lossy(name).into_owned(), value[..n].to_vec())
        })
        .collect();
    xattrs.sort();
    xattrs
}
