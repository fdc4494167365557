//! What the image tests (cpio, erofs, ext4) share: test data, entries made
//! with their metadata past the umask, and walks over a tree.

#![allow(dead_code)] // each test file uses a part

use std::fs;
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::Path;

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timestamps, XattrFlags, makedev};
use tempfile::TempDir;

/// `cap_net_raw+ep` as the kernel stores it (VFS_CAP_REVISION_2).
pub const CAP_NET_RAW: [u8; 20] = [1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// Deterministic bytes that do not compress.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Sets the mtime (and atime) of `path` itself, not of what a symlink names.
pub fn set_mtime(path: &Path, secs: i64, nsecs: i64) {
    let time = rustix::fs::Timespec { tv_sec: secs, tv_nsec: nsecs };
    let times = Timestamps { last_access: time, last_modification: time };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A device node or FIFO with exactly `mode`.
pub fn mknod(path: &Path, kind: FileType, mode: u32, major: u32, minor: u32) {
    rustix::fs::mknodat(CWD, path, kind, Mode::from_raw_mode(mode), makedev(major, minor)).unwrap();
    chmod(path, mode); // past the umask
}

pub fn setxattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()).unwrap_or_else(|e| panic!("{name}: {e}"));
}

/// dev/null, dev/odd (a 32-bit minor), dev/loop9, run/fifo and run/sock.
pub fn special_files(root: &Path) {
    let p = |rel: &str| root.join(rel);
    mknod(&p("dev/null"), FileType::CharacterDevice, 0o666, 1, 3);
    mknod(&p("dev/odd"), FileType::CharacterDevice, 0o600, 259, 70000);
    mknod(&p("dev/loop9"), FileType::BlockDevice, 0o660, 7, 9);
    mknod(&p("run/fifo"), FileType::Fifo, 0o644, 0, 0);
    std::os::unix::net::UnixListener::bind(p("run/sock")).unwrap();
}

/// Foreign owners on `owned` and `dev/odd`; setuid `bin/su`, setgid `owned`
/// and `shared`, sticky `tmp`, and `no-access` of mode 000.
pub fn odd_owners_and_modes(root: &Path) {
    let p = |rel: &str| root.join(rel);
    lchown(p("owned"), Some(123_456), Some(654_321)).unwrap();
    lchown(p("dev/odd"), Some(7), Some(8)).unwrap();
    chmod(&p("bin/su"), 0o4755);
    chmod(&p("owned"), 0o2640);
    chmod(&p("tmp"), 0o1777);
    chmod(&p("shared"), 0o2775);
    chmod(&p("no-access"), 0o000);
}

/// `levels` directories named `segment` one in the other, made relative to
/// descriptors since no single syscall may take a path beyond PATH_MAX.
pub fn nest_dirs(root: &Path, segment: &str, levels: usize) {
    let mut dir = fs::File::open(root).unwrap();
    for _ in 0..levels {
        rustix::fs::mkdirat(&dir, segment, Mode::from_raw_mode(0o755)).unwrap();
        dir = rustix::fs::openat(&dir, segment, rustix::fs::OFlags::DIRECTORY, Mode::empty()).unwrap().into();
    }
}

/// A tree whose deepest entry, the file `d/d/…/f`, lies `depth` names
/// below `root`; returns that file's path from the root.
pub fn deep_tree(root: &Path, depth: usize) -> String {
    let file = "d/".repeat(depth - 1) + "f";
    nest_dirs(root, "d", depth - 1);
    fs::write(root.join(&file), b"at the bottom").unwrap();
    file
}

/// Asserts that `err` refuses `path` as `depth` names deep, past the bound,
/// and says so.
pub fn assert_too_deep(err: &std::io::Error, path: &str, depth: usize) {
    let deep = vmimg_rootfs::depth::too_deep(err).unwrap_or_else(|| panic!("not a TooDeep: {err}"));
    assert_eq!((deep.path.as_str(), deep.depth), (path, depth), "{err}");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let message = err.to_string();
    let bound = format!("deeper than the {} vmimg accepts", vmimg_rootfs::depth::MAX_DEPTH);
    assert!(message.contains(&format!("{depth} levels below the root")) && message.contains(&bound), "{message}");
}

/// Whether `status` is a death by `signal`.
pub fn killed_by(status: std::process::ExitStatus, signal: i32) -> bool {
    std::os::unix::process::ExitStatusExt::signal(&status) == Some(signal)
}

/// Two trees made by `build`, the second after `burn` inodes were used up so
/// that the host numbers them otherwise, and with the first's root mode.
pub fn twin_trees(build: fn(&Path), burn: usize) -> (TempDir, TempDir) {
    let first = TempDir::new().unwrap();
    build(first.path());
    let other = TempDir::new().unwrap();
    for i in 0..burn {
        fs::write(other.path().join(i.to_string()), b"").unwrap();
    }
    let second = TempDir::new().unwrap();
    build(second.path());
    chmod(second.path(), fs::metadata(first.path()).unwrap().permissions().mode());
    (first, second)
}

/// The names in `dir`, sorted.
pub fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}
