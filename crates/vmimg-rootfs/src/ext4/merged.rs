//! ext4 disks from layers merged in memory ([`crate::merge`]): no tree is
//! written to the host, and any user gets the image's owners, modes and
//! device nodes.
//!
//! e2fsprogs 1.47.1 and later read a tar on standard input with `mke2fs
//! -d -` (through libarchive, which Debian's mke2fs opens at run time: the
//! package `libarchive13` must be installed) and keep what its headers
//! say, whoever runs it: owners, modes (setuid included), times, device
//! numbers, hard links. Its parents must come before their entries and a
//! hard link's header sets the inode's metadata: [`Merged::write_tar`]
//! writes that order and those headers. mke2fs 1.47.2 copies only the
//! `security.capability` xattr from a tar, so every xattr is then set with
//! `debugfs ea_set`, its value read from a file: names and paths are
//! quoted for debugfs, and one it cannot take (a newline, a NUL) is
//! refused.
//!
//! Sizing is the model of [`super`], counted from the merged tree instead
//! of a walk of a directory: a regular file is counted by its size (a
//! sparse layer entry may take less: mke2fs skips blocks of zeros).

use super::{
    BLOCK_SIZE, CHECKSUMS_LATER_ABOVE, Ext4Error, Ext4Options, Ext4Summary, FAST_SYMLINK_MAX, LOST_FOUND_BLOCKS,
    MKE2FS_FATAL_PATH_LEN, Plan, Superblock, Tool, Tree, add_checksums, check, check_options, data_and_extent_blocks,
    e2fsck_optimize, features, invalid, mke2fs_command, run, run_fed, set_size, told_of, xattr_block,
};
use crate::merge::{InodeView, LayerTar, Merged, Xattrs};
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::path::Path;
use std::process::Stdio;
use vmimg_disk::Replace;
use vmimg_tar::Kind;

/// Makes `out` a sparse raw ext4 image holding the tree `merged` stands
/// for, its file contents read from the layers `open_layer` gives (the
/// same decompressed bytes [`Merged::add_layer`] read), sized, indexed and
/// checked as [`super::build`] does.
pub fn build_merged(
    merged: &Merged,
    open_layer: impl FnMut(usize) -> io::Result<LayerTar>,
    out: &Path,
    options: &Ext4Options,
) -> io::Result<Ext4Summary> {
    check_options(options)?;
    check_reads_tar()?;
    let tree = census(merged)?;
    let plan = Plan::new(&tree, options);
    let mut open_layer = open_layer;
    let mut make = |image: &Path| {
        set_size(image, plan.blocks * BLOCK_SIZE)?;
        let inodes = OsString::from(plan.inodes.to_string());
        let extra = [OsStr::new("-N"), &inodes, OsStr::new("-d"), OsStr::new("-")];
        let later = tree.largest_dir > CHECKSUMS_LATER_ABOVE;
        let features = features(later);
        let cmd = mke2fs_command(image, plan.blocks, plan.journal_blocks, &options.identity, features, &extra)?;
        let mut xattrs = Vec::new();
        let mut feed = |pipe: &mut dyn io::Write| {
            let (_, written) = merged.write_tar(pipe, &mut open_layer)?;
            xattrs = written.xattrs;
            Ok(())
        };
        run_fed(Tool::Mke2fs, cmd, image, Some(&mut feed))?;
        set_xattrs(image, &xattrs, &options.identity)?;
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

/// Whether this host's mke2fs reads a tar (1.47.1 and later, with
/// libarchive13), asked once.
pub fn reads_tar() -> io::Result<bool> {
    Ok(check_reads_tar().is_ok())
}

/// Whether this host's mke2fs reads a tar, asked once: its version must be
/// 1.47.1 or later, and it must make an image of an empty tar (it loads
/// libarchive.so.13 only then, and fails without it). The error says what
/// to install.
pub fn check_reads_tar() -> io::Result<()> {
    static ANSWER: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let answer = ANSWER.get_or_init(|| {
        let version = mke2fs_version().map_err(|e| format!("mke2fs -V: {e}"))?;
        if version.0 < (1, 47, 1) {
            return Err(Ext4Error::CannotReadTar { version: version.1 }.to_string());
        }
        probe_tar().map_err(|e| {
            Ext4Error::CannotReadTar { version: format!("{} failing on a tar ({e})", version.1) }.to_string()
        })
    });
    answer.clone().map_err(|e| io::Error::new(io::ErrorKind::NotFound, e))
}

/// mke2fs's version, as numbers and as it names itself.
fn mke2fs_version() -> io::Result<((u32, u32, u32), String)> {
    let output = Tool::Mke2fs.command(&super::Identity::default())?.arg("-V").output()?;
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    let word = text.split_whitespace().nth(1).unwrap_or_default().to_owned();
    let mut numbers = word.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
    let mut next = || numbers.next().unwrap_or(0);
    Ok(((next(), next(), next()), format!("mke2fs {word}")))
}

/// Makes a 1 MiB image of an empty tar (its two end blocks) in a temporary
/// directory.
fn probe_tar() -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("probe.img");
    let mut command = Tool::Mke2fs.command(&super::Identity::default())?;
    command.args(["-q", "-F", "-t", "ext4", "-d", "-"]).arg(&image).arg("1M").stdin(Stdio::piped());
    let mut child = command.spawn()?;
    let written = child.stdin.take().expect("piped").write_all(&[0; 1024]);
    let output = child.wait_with_output()?;
    if !output.status.success() {
        return Err(io::Error::other(crate::tool::summary(&String::from_utf8_lossy(&output.stderr))));
    }
    written
}

/// What the merged tree needs in the image (see [`super`]'s sizing).
fn census(merged: &Merged) -> io::Result<Tree> {
    let mut tree = Tree::default();
    for inode in merged.inodes() {
        for path in &inode.paths {
            check_path(path)?;
        }
        tree.blocks += xattr_block(inode.xattrs.iter().map(|(name, value)| (name.as_bytes(), value.len() as u64)));
        let is_root = inode.paths[0] == b".";
        let is_lost_found = inode.paths[0] == b"lost+found";
        if is_lost_found && inode.kind != Kind::Directory {
            return Err(invalid("lost+found: not a directory, and mke2fs makes lost+found a directory".into()));
        }
        tree.inodes += u64::from(!is_root && !is_lost_found);
        tree.largest_dir = tree.largest_dir.max(inode.children.len() as u64);
        tree.blocks += match inode.kind {
            Kind::Directory => dir_blocks(&inode, is_root, is_lost_found),
            Kind::File => {
                tree.data_bytes += inode.size;
                let data = inode.size.div_ceil(BLOCK_SIZE);
                if data == 0 { 0 } else { data_and_extent_blocks(data, 1) }
            }
            Kind::Symlink => u64::from(inode.link_name.len() as u64 > FAST_SYMLINK_MAX),
            _ => 0,
        };
    }
    Ok(tree)
}

/// The blocks of a directory of the merged tree; the root gets the
/// lost+found mke2fs makes if the tree has none.
fn dir_blocks(inode: &InodeView, is_root: bool, is_lost_found: bool) -> u64 {
    let mut names = super::DirNames::default();
    for name in &inode.children {
        names.add(name.len());
    }
    let mut blocks = 0;
    if is_root && !inode.children.contains(&&b"lost+found"[..]) {
        names.add("lost+found".len());
        blocks += LOST_FOUND_BLOCKS;
    }
    let own = names.blocks();
    blocks + if is_lost_found { own.max(LOST_FOUND_BLOCKS) } else { own }
}

/// Refuses a path mke2fs could not take (see [`crate::depth`]).
fn check_path(path: &[u8]) -> io::Result<()> {
    if path.len() == MKE2FS_FATAL_PATH_LEN {
        return Err(invalid(format!(
            "{}: a path of {MKE2FS_FATAL_PATH_LEN} bytes, the one length mke2fs 1.47 cannot take (it overflows \
             its path buffer and aborts): rename a directory on the path",
            String::from_utf8_lossy(path)
        )));
    }
    Ok(())
}

/// Sets every xattr of `xattrs` with one debugfs run, each value read from
/// a file of a scratch directory beside the image.
fn set_xattrs(image: &Path, xattrs: &[(Vec<u8>, Xattrs)], identity: &super::Identity) -> io::Result<()> {
    if xattrs.is_empty() {
        return Ok(());
    }
    let scratch = image.with_extension("xattrs");
    std::fs::create_dir(&scratch).map_err(super::at(&scratch))?;
    let script = (|| {
        let mut script = String::new();
        for (n, (path, pairs)) in xattrs.iter().enumerate() {
            for (m, (name, value)) in pairs.iter().enumerate() {
                let file = scratch.join(format!("{n}-{m}"));
                std::fs::write(&file, value).map_err(super::at(&file))?;
                let (file, path, name) =
                    (quoted(file.as_os_str().as_encoded_bytes())?, quoted(path)?, quoted(name.as_bytes())?);
                script.push_str(&format!("ea_set -f {file} {path} {name}\n"));
            }
        }
        Ok::<_, io::Error>(script)
    })();
    let done = script.and_then(|script| {
        let mut cmd = Tool::Debugfs.command(identity)?;
        cmd.args(["-w", "-f", "-"]).arg(image);
        let stderr = run(Tool::Debugfs, cmd, image, Some(&script))?;
        super::refuse_complaints(image, &stderr)
    });
    let _ = std::fs::remove_dir_all(&scratch);
    done
}

/// `text` as one debugfs argument: in double quotes, a quote doubled (as
/// its parser reads them); a newline or a NUL, which no quoting carries,
/// is refused.
fn quoted(text: &[u8]) -> io::Result<String> {
    if text.contains(&b'\n') || text.contains(&0) {
        return Err(invalid(format!(
            "{}: a name with a newline, which debugfs cannot be given to set xattrs",
            String::from_utf8_lossy(text)
        )));
    }
    let text = std::str::from_utf8(text)
        .map_err(|_| invalid(format!("{}: not UTF-8, which debugfs cannot be given", String::from_utf8_lossy(text))))?;
    Ok(format!("\"{}\"", text.replace('"', "\"\"")))
}
