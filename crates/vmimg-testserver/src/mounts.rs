//! Filesystems a test mounts for itself, and the rule for what a test may do
//! when the host lacks something.
//!
//! - [`Mount`]: a tmpfs (a second filesystem, for copies across
//!   filesystems; a small one, for a full disk), an XFS made with `reflink=1` on a loop device (for
//!   FICLONE, which ext4 refuses), or a read-only loop mount of an image the
//!   test built (erofs). Each is unmounted, and its files removed, on drop.
//!   Mounting needs root (CI runs as root) and, for images, a free loop
//!   device.
//! - [`skip_missing`]: outside CI a test may say it is skipped and return;
//!   under `CI=true` the same call fails the test, so CI never counts a test
//!   as passed that tested nothing.

use std::fmt::Display;
use std::path::Path;
use std::process::Command;
use tempfile::TempDir;

/// Whether this run is CI's (`CI=true`), where everything the tests need must
/// be installed.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Called by a test that cannot run here for want of `what`: under CI it
/// panics (the install step or the machine is wrong); elsewhere it prints
/// that the test is skipped, and the caller returns.
pub fn skip_missing(what: impl Display) {
    if in_ci() {
        panic!("CI=true and this test cannot run: {what}");
    }
    eprintln!("skipped (outside CI only): {what}");
}

/// A filesystem mounted on a temporary directory by the test.
pub struct Mount {
    point: TempDir,
    /// Holds the backing image of a filesystem the test made, if any.
    _backing: Option<TempDir>,
}

impl Mount {
    /// A fresh tmpfs: a filesystem other than the one `/tmp` is on.
    pub fn tmpfs() -> Result<Mount, String> {
        Mount::tmpfs_of(256 << 20)
    }

    /// A fresh tmpfs of `bytes` (rounded up to pages): a small one makes a
    /// full disk.
    pub fn tmpfs_of(bytes: u64) -> Result<Mount, String> {
        let point = TempDir::new().map_err(|e| e.to_string())?;
        mount(&["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"], point.path())?;
        Ok(Mount { point, _backing: None })
    }

    /// An empty XFS made with `mkfs.xfs -m reflink=1` on a sparse image of
    /// `size` bytes (XFS wants at least 300 MiB), mounted read-write.
    pub fn xfs_with_reflink(size: u64) -> Result<Mount, String> {
        let backing = TempDir::new().map_err(|e| e.to_string())?;
        let image = backing.path().join("xfs.img");
        std::fs::File::create(&image).and_then(|f| f.set_len(size)).map_err(|e| e.to_string())?;
        run(Command::new("mkfs.xfs").args(["-q", "-m", "reflink=1"]).arg(&image), "mkfs.xfs (package xfsprogs)")?;
        let point = TempDir::new().map_err(|e| e.to_string())?;
        mount(&["-t", "xfs", "-o", "loop", path_str(&image)?], point.path())?;
        Ok(Mount { point, _backing: Some(backing) })
    }

    /// `image`, a filesystem of type `fstype`, mounted read-only through a
    /// loop device.
    pub fn image_read_only(image: &Path, fstype: &str) -> Result<Mount, String> {
        let point = TempDir::new().map_err(|e| e.to_string())?;
        mount(&["-t", fstype, "-o", "loop,ro", path_str(image)?], point.path())?;
        Ok(Mount { point, _backing: None })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.point.path()
    }

    /// A new temporary directory inside the mount.
    pub fn tempdir(&self) -> TempDir {
        TempDir::new_in(self.path()).expect("a directory in the test's own mount")
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.point.path()).status();
    }
}

fn mount(args: &[&str], point: &Path) -> Result<(), String> {
    run(Command::new("mount").args(args).arg(point), "mount (needs root, and a free loop device for images)")
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let out = command.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim()))
}

fn path_str(path: &Path) -> Result<&str, String> {
    path.to_str().ok_or_else(|| format!("{} is not UTF-8", path.display()))
}
