//! Fixtures for the oracle tests: images made by qemu-img and qemu-io, and
//! the comparison of vmimg's conversion with qemu-img's.

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use vmimg_disk::{ConvertOptions, DiskImage, Format};

pub const MIB: u64 = 1 << 20;

/// Runs a command and returns its stdout; panics with its stderr on failure.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn qemu_img(args: &[&str]) -> String {
    run("qemu-img", args)
}

/// Runs qemu-io commands on a qcow2 image.
pub fn qemu_io(image: &Path, commands: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in commands {
        args.extend(["-c", c]);
    }
    let image = image.to_str().expect("utf-8 path");
    args.push(image);
    run("qemu-io", &args);
}

/// Deterministic pseudo-random bytes (xorshift), compressible by half so the
/// compressed fixtures look like real data rather than noise.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 2 == 0 { (x & 0xff) as u8 } else { (i / 7) as u8 }
        })
        .collect()
}

/// A raw disk of `size` bytes with data, zero-filled data and holes at
/// assorted (also unaligned) places: the source of most fixtures.
pub fn mixed_raw(dir: &Path, size: u64) -> PathBuf {
    let path = dir.join("source.raw");
    let file = File::create(&path).unwrap();
    file.set_len(size).unwrap();
    let writes: &[(u64, usize, Option<u64>)] = &[
        (0, 3 * MIB as usize, Some(1)),
        (3 * MIB + 512, 4096, Some(2)),
        (3 * MIB + 70_000, 100_000, None), // written zeros: must become holes
        (5 * MIB + 1000, 300_000, Some(3)),
        (size - 10_000, 10_000, Some(4)), // tail up to the (maybe unaligned) end
    ];
    for &(offset, len, seed) in writes {
        let data = seed.map_or_else(|| vec![0; len], |s| pattern(len, s));
        file.write_all_at(&data, offset).unwrap();
    }
    path
}

/// Makes `name` from `raw` with `qemu-img convert -O qcow2` and the given extra args.
pub fn qcow2_from(dir: &Path, raw: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    args.extend_from_slice(extra);
    args.extend([raw.to_str().unwrap(), out.to_str().unwrap()]);
    qemu_img(&args);
    out
}

/// The file's data ranges, from SEEK_DATA/SEEK_HOLE.
pub fn data_ranges(path: &Path) -> Vec<(u64, u64)> {
    use rustix::fs::{SeekFrom, seek};
    let file = File::open(path).unwrap();
    let len = file.metadata().unwrap().len();
    let mut ranges = Vec::new();
    let mut pos = 0;
    while pos < len {
        let Ok(data) = seek(&file, SeekFrom::Data(pos)) else { break };
        let hole = seek(&file, SeekFrom::Hole(data)).unwrap();
        ranges.push((data, hole));
        pos = hole;
    }
    ranges
}

/// Bytes in the file's data ranges, which unlike `st_blocks` does not depend
/// on when the filesystem allocates its own metadata (ext4 extent-tree blocks
/// appear only once delayed allocation ends).
pub fn allocated(path: &Path) -> u64 {
    data_ranges(path).iter().map(|(start, end)| end - start).sum()
}

/// Converts `image` with vmimg (format given or probed) and with qemu-img,
/// and checks the bytes are identical and vmimg allocates no more.
pub fn assert_converts_like_qemu(image: &Path, format: Option<Format>) {
    let src = DiskImage::open(image, format).unwrap_or_else(|e| panic!("open {}: {e}", image.display()));
    assert_image_converts_like_qemu(&src, format.unwrap_or(src.format()));
}

/// Converts the open image `src` with vmimg and its file with qemu-img (as
/// `format`), and checks the bytes are identical and vmimg allocates no more.
/// Returns the path of qemu-img's output.
pub fn assert_image_converts_like_qemu(src: &DiskImage, format: Format) -> PathBuf {
    let image = src.path();
    let dir = image.parent().unwrap();
    let stem = image.file_name().unwrap().to_string_lossy();
    let ours = dir.join(format!("{stem}.vmimg.raw"));
    let theirs = dir.join(format!("{stem}.qemu.raw"));
    let options = ConvertOptions { threads: 2, sync: false };
    vmimg_disk::convert_to_path(src, &ours, &options).unwrap_or_else(|e| panic!("convert {}: {e}", image.display()));
    qemu_img(&["convert", "-f", format.name(), "-O", "raw", image.to_str().unwrap(), theirs.to_str().unwrap()]);
    assert_same_bytes(&ours, &theirs);
    let (a, b) = (allocated(&ours), allocated(&theirs));
    assert!(a <= b, "{}: vmimg allocates {a} bytes, qemu-img {b}", image.display());
    theirs
}

/// Compares two files, naming the first differing offset. Only the union of
/// their data ranges is read: a range that is a hole in both reads as zeros.
pub fn assert_same_bytes(a: &Path, b: &Path) {
    let (fa, fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let len = fa.metadata().unwrap().len();
    assert_eq!(len, fb.metadata().unwrap().len(), "{} and {} differ in length", a.display(), b.display());
    let mut ranges = data_ranges(a);
    ranges.extend(data_ranges(b));
    ranges.sort_unstable();
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut done = 0; // everything before this offset is compared
    for (start, end) in ranges {
        let mut offset = start.max(done);
        while offset < end {
            let n = (end - offset).min(MIB) as usize;
            fa.read_exact_at(&mut ba[..n], offset).unwrap();
            fb.read_exact_at(&mut bb[..n], offset).unwrap();
            if ba[..n] != bb[..n] {
                let at = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y).unwrap();
                panic!("{} and {} differ at byte {}", a.display(), b.display(), offset + at as u64);
            }
            offset += n as u64;
        }
        done = done.max(end);
    }
}

/// Opens a file for writing without truncating it.
pub fn open_rw(path: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(path).unwrap()
}
