//! `copy_raw`: every method keeps the source's bytes and holes, extends to the
//! asked size with a hole, and refuses shrinking, qcow2 sources and copying a
//! file onto itself without leaving anything behind.
//!
//! /tmp is ext4 on the test machines, which refuses reflinks: there the
//! reflink test makes an XFS with `reflink=1` on a loop device (as root), or
//! uses `VMIMG_REFLINK_DIR`, a directory on a filesystem that clones. The
//! copy across filesystems copies from a tmpfs the test mounts.

mod common;

use common::*;
use rustix::fs::ioctl_ficlone;
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use vmimg_disk::{CopyMethod, CopyOptions, CopyStats, Error, copy_raw};
use vmimg_testserver::mounts::{Mount, skip_missing};

const GIB: u64 = 1 << 30;

/// A sparse file of `size` bytes with data of the given lengths at the
/// given offsets and holes everywhere else. The data has no zero byte, so
/// every block written holds data even to the read/write method.
fn sparse_file(dir: &Path, name: &str, size: u64, writes: &[(u64, usize)]) -> PathBuf {
    let path = dir.join(name);
    let file = File::create(&path).unwrap();
    file.set_len(size).unwrap();
    for &(offset, len) in writes {
        file.write_all_at(&nonzero_data(len, offset), offset).unwrap();
    }
    path
}

fn nonzero_data(len: usize, seed: u64) -> Vec<u8> {
    (0..len as u64).map(|i| ((i * 31 + seed) % 255 + 1) as u8).collect()
}

/// Sources with data at odd offsets, in the last partial block, none at
/// all, and no bytes at all.
fn fixtures(dir: &Path) -> Vec<PathBuf> {
    let odd = 10 * MIB + 123;
    let tail = 3 * MIB + 1000;
    vec![
        sparse_file(
            dir,
            "odd.raw",
            odd,
            &[(0, 1), (4095, 2), (MIB + 777, 300_000), (5 * MIB + 3, 3 * 4096 + 5), (odd - 50, 50)],
        ),
        sparse_file(dir, "tail.raw", tail, &[(tail - 1, 1)]),
        sparse_file(dir, "all-hole.raw", 7 * MIB + 1, &[]),
        sparse_file(dir, "empty.raw", 0, &[]),
    ]
}

fn options(first_method: CopyMethod, size: Option<u64>) -> CopyOptions {
    CopyOptions { size, sync: false, first_method }
}

/// Whether `dir`'s filesystem clones files (FICLONE).
fn reflinks_in(dir: &Path) -> bool {
    let (a, b) = (dir.join(".probe-a"), dir.join(".probe-b"));
    fs::write(&a, b"probe").unwrap();
    let cloned = ioctl_ficlone(File::create(&b).unwrap(), File::open(&a).unwrap()).is_ok();
    fs::remove_file(&a).unwrap();
    fs::remove_file(&b).unwrap();
    cloned
}

/// The copy has the source's bytes and exactly its data ranges.
fn assert_exact_copy(src: &Path, dst: &Path) {
    assert_same_bytes(src, dst);
    assert_eq!(data_ranges(dst), data_ranges(src), "{} vs {}", dst.display(), src.display());
}

/// The copy is `size` bytes: the source's bytes and data ranges, then
/// zeros in a hole, but for at most `slack` bytes of data past the block
/// that holds the source's end.
fn assert_extended_copy(src: &Path, dst: &Path, size: u64, slack: u64) {
    let (original, copy) = (fs::read(src).unwrap(), fs::read(dst).unwrap());
    assert_eq!(copy.len() as u64, size);
    assert!(copy[..original.len()] == original[..], "{}: prefix differs", src.display());
    assert!(copy[original.len()..].iter().all(|&b| b == 0), "{}: extension not zero", src.display());
    let end = (original.len() as u64).next_multiple_of(4096);
    let (before, after): (Vec<_>, Vec<_>) = block_ranges(dst).into_iter().partition(|&(start, _)| start < end);
    let clipped: Vec<_> = before.iter().map(|&(start, stop)| (start, stop.min(end))).collect();
    assert_eq!(clipped, block_ranges(src), "{}: data ranges differ", src.display());
    let beyond: u64 = before.iter().chain(&after).map(|&(start, stop)| stop.saturating_sub(start.max(end))).sum();
    assert!(beyond <= slack, "{}: {beyond} bytes of data past the source's end", src.display());
}

/// The file's data ranges in whole 4 KiB blocks: a source's last range
/// ends at its (maybe unaligned) end, while in an extended copy the block
/// that holds that end is data to its last byte.
fn block_ranges(path: &Path) -> Vec<(u64, u64)> {
    data_ranges(path).into_iter().map(|(start, end)| (start, end.next_multiple_of(4096))).collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn every_method_keeps_bytes_and_holes() {
    let dir = tempfile::tempdir().unwrap();
    let reflinks = reflinks_in(dir.path());
    for src in fixtures(dir.path()) {
        for first in [CopyMethod::Reflink, CopyMethod::CopyFileRange, CopyMethod::ReadWrite] {
            let dst = dir.path().join(format!("copy-{}", first.name().replace('/', "-")));
            let stats = copy_raw(&src, &dst, &options(first, None)).unwrap();
            let expected = if first == CopyMethod::Reflink && !reflinks { CopyMethod::CopyFileRange } else { first };
            assert_eq!(stats.method, expected, "{}", src.display());
            let written = if expected == CopyMethod::Reflink { 0 } else { allocated(&src) };
            let size = fs::metadata(&src).unwrap().len();
            let want = CopyStats { source_size: size, virtual_size: size, bytes_copied: written, method: expected };
            assert_eq!(stats, want, "{} by {}", src.display(), first.name());
            assert_exact_copy(&src, &dst);
        }
    }
}

#[test]
fn extends_to_the_asked_size_with_a_hole() {
    let dir = tempfile::tempdir().unwrap();
    for src in fixtures(dir.path()) {
        for first in [CopyMethod::Reflink, CopyMethod::CopyFileRange, CopyMethod::ReadWrite] {
            let dst = dir.path().join("grown.raw");
            let size = 16 * MIB + 7;
            let stats = copy_raw(&src, &dst, &options(first, Some(size))).unwrap();
            assert_eq!(stats.virtual_size, size);
            assert_extended_copy(&src, &dst, size, 0);
        }
    }
}

#[test]
fn the_same_size_is_not_a_shrink() {
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_file(dir.path(), "src.raw", 2 * MIB + 5, &[(MIB, 10)]);
    let dst = dir.path().join("dst.raw");
    let stats = copy_raw(&src, &dst, &options(CopyMethod::Reflink, Some(2 * MIB + 5))).unwrap();
    assert_eq!(stats.virtual_size, 2 * MIB + 5);
    assert_exact_copy(&src, &dst);
}

#[test]
fn read_write_turns_zero_blocks_into_holes() {
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_file(dir.path(), "src.raw", 4 * MIB, &[(0, 4096), (2 * MIB, 4096)]);
    open_rw(&src).write_all_at(&vec![0; MIB as usize], MIB).unwrap();
    let kernel = dir.path().join("kernel.raw");
    copy_raw(&src, &kernel, &options(CopyMethod::CopyFileRange, None)).unwrap();
    assert_exact_copy(&src, &kernel);
    let user = dir.path().join("user.raw");
    let stats = copy_raw(&src, &user, &options(CopyMethod::ReadWrite, None)).unwrap();
    assert_same_bytes(&src, &user);
    assert_eq!(data_ranges(&user), [(0, 4096), (2 * MIB, 2 * MIB + 4096)]);
    assert_eq!(stats.bytes_copied, 2 * 4096);
}

#[test]
fn a_sparse_20_gib_disk_costs_only_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let size = 20 * GIB + 512;
    let writes = [(0, MIB as usize), (7 * GIB + 3, 2 * MIB as usize), (size - MIB - 9, MIB as usize + 9)];
    let src = sparse_file(dir.path(), "big.raw", size, &writes);
    let data = allocated(&src);
    assert!(data < 5 * MIB, "the fixture allocates {data} bytes");
    for first in [CopyMethod::Reflink, CopyMethod::CopyFileRange, CopyMethod::ReadWrite] {
        let dst = dir.path().join("big-copy.raw");
        let stats = copy_raw(&src, &dst, &options(first, Some(40 * GIB))).unwrap();
        assert!(stats.bytes_copied <= data, "{}: wrote {} bytes", first.name(), stats.bytes_copied);
        assert_eq!(block_ranges(&dst), block_ranges(&src), "{}", first.name());
        assert!(fs::metadata(&dst).unwrap().blocks() * 512 < 2 * data, "{}: st_blocks", first.name());
        assert_eq!(fs::metadata(&dst).unwrap().len(), 40 * GIB);
        open_rw(&dst).set_len(size).unwrap(); // the rest is a hole, checked above
        assert_same_bytes(&src, &dst);
    }
}

#[test]
fn copy_file_range_refused_across_filesystems_falls_back_to_read_write() {
    let other = match Mount::tmpfs() {
        Ok(mount) => mount,
        Err(e) => return skip_missing(format!("a second filesystem (a tmpfs) to copy from: {e}")),
    };
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_file(other.path(), "src.raw", 6 * MIB + 1, &[(100, 5000), (6 * MIB - 10, 11)]);
    for first in [CopyMethod::Reflink, CopyMethod::CopyFileRange] {
        let dst = dir.path().join("dst.raw");
        let stats = copy_raw(&src, &dst, &options(first, None)).unwrap();
        assert_eq!(stats.method, CopyMethod::ReadWrite, "from {}", first.name());
        assert_exact_copy(&src, &dst);
    }
}

/// A directory on a filesystem that clones: `VMIMG_REFLINK_DIR` if set,
/// else the temporary directory if it clones, else an XFS the test makes.
fn reflink_dir() -> Result<(tempfile::TempDir, Option<Mount>), String> {
    if let Some(base) = std::env::var_os("VMIMG_REFLINK_DIR") {
        return Ok((tempfile::tempdir_in(base).unwrap(), None));
    }
    let dir = tempfile::tempdir().unwrap();
    if reflinks_in(dir.path()) {
        return Ok((dir, None));
    }
    let xfs = Mount::xfs_with_reflink(512 * MIB)?;
    Ok((xfs.tempdir(), Some(xfs)))
}

#[test]
fn reflink_shares_blocks_where_the_filesystem_clones() {
    let (dir, _xfs) = match reflink_dir() {
        Ok(found) => found,
        Err(e) => {
            return skip_missing(format!("a filesystem that clones (set VMIMG_REFLINK_DIR, or run as root): {e}"));
        }
    };
    assert!(reflinks_in(dir.path()), "{} refuses FICLONE", dir.path().display());
    for src in fixtures(dir.path()) {
        let dst = dir.path().join("clone.raw");
        let stats = copy_raw(&src, &dst, &CopyOptions::default()).unwrap();
        assert_eq!((stats.method, stats.bytes_copied), (CopyMethod::Reflink, 0), "{}", src.display());
        assert_exact_copy(&src, &dst);
        let size = stats.source_size + 3 * MIB + 1;
        let stats = copy_raw(&src, &dst, &CopyOptions { size: Some(size), ..CopyOptions::default() }).unwrap();
        assert_eq!(stats.method, CopyMethod::Reflink);
        // Growing a clone whose end is mid-block makes XFS zero that block's
        // tail, so it copies the shared block (preallocating up to its CoW
        // extent size hint, 128 KiB by default): data, but reading as zeros.
        assert_extended_copy(&src, &dst, size, 128 << 10);
    }
}

#[test]
fn shrinking_is_refused_and_leaves_the_destination_alone() {
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_file(dir.path(), "src.raw", 3 * MIB, &[(0, 10)]);
    let dst = dir.path().join("dst.raw");
    fs::write(&dst, b"old contents").unwrap();
    let before = names(dir.path());
    let err = copy_raw(&src, &dst, &options(CopyMethod::Reflink, Some(3 * MIB - 1))).unwrap_err();
    assert!(matches!(err, Error::Shrink { size: 3145728, requested: 3145727, .. }), "{err:?}");
    let message = err.to_string();
    for part in ["shrinking is refused", "3145728", "3145727", "src.raw"] {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
    assert_eq!(fs::read(&dst).unwrap(), b"old contents");
    assert_eq!(names(dir.path()), before);
}

#[test]
fn a_qcow2_source_is_refused_with_a_pointer_to_convert() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", image.to_str().unwrap(), "1G"]);
    let before = names(dir.path());
    let err = copy_raw(&image, &dir.path().join("out.raw"), &CopyOptions::default()).unwrap_err();
    assert!(matches!(err, Error::CopyOfQcow2 { .. }), "{err:?}");
    assert!(err.to_string().contains("convert it to raw instead"), "{err}");
    assert_eq!(names(dir.path()), before);
}

#[test]
fn copying_a_file_onto_itself_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_file(dir.path(), "src.raw", MIB, &[(0, 4096)]);
    let link = dir.path().join("link.raw");
    fs::hard_link(&src, &link).unwrap();
    let before = names(dir.path());
    for dst in [&src, &link] {
        let err = copy_raw(&src, dst, &CopyOptions::default()).unwrap_err();
        assert!(matches!(err, Error::SameFile { .. }), "{err:?}");
        assert!(err.to_string().contains("are the same file"), "{err}");
    }
    assert_eq!(names(dir.path()), before);
    assert_eq!(fs::read(&src).unwrap()[..4096], nonzero_data(4096, 0)[..]);
}

#[test]
fn a_missing_source_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = copy_raw(&dir.path().join("missing.raw"), &dir.path().join("out.raw"), &CopyOptions::default());
    let message = err.unwrap_err().to_string();
    assert!(message.starts_with("cannot open") && message.contains("missing.raw"), "{message}");
    assert!(names(dir.path()).is_empty());
}
