//! Images made by `write_compressed`, checked by qemu-img and by this
//! crate's reader: `qemu-img check` finds no error and no leak, `qemu-img
//! info` reads back the compression type, cluster size and virtual size,
//! `qemu-img convert -O raw` (or `qemu-img compare`, for big sparse disks)
//! gives back the source byte for byte, and `Qcow2::read_at` reads the same
//! bytes while `Qcow2::extents` shows each cluster stored as expected.
//!
//! Disks mix compressible, incompressible and all-zero clusters, holes,
//! ranges that start and end inside clusters and share clusters, sizes that
//! are not a multiple of the cluster size (nor of 512), L2 table and
//! refcount block boundaries; for zstd and zlib, clusters of 512 B, 4 KiB,
//! 64 KiB and 2 MiB. A 1 TiB sparse disk writes a small file quickly; the
//! output does not depend on the thread count; bad options are refused.

// A slice of one range is meant: the data ranges of a disk.
#![allow(clippy::single_range_in_vec_init)]

use serde_json::Value;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vmimg_qcow2::{Allocation, CompressOptions, CompressStats, Compression, Error, Qcow2, ReadAt, write_compressed};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// Runs qemu-img; panics with its stderr unless it exits 0.
fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img").args(args).output().expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn qemu_json(args: &[&str]) -> Value {
    serde_json::from_str(&qemu_img(args)).expect("qemu-img prints JSON")
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `qemu-img check` exits 0 (no corruption, no leak) and says so in its JSON.
fn assert_check_clean(image: &Path) {
    let report = qemu_json(&["check", "--output=json", s(image)]);
    assert_eq!(report["check-errors"], 0, "{}: {report}", image.display());
    for key in ["corruptions", "leaks", "leaks-fixed", "corruptions-fixed"] {
        assert!(report.get(key).is_none_or(|v| v == 0), "{}: {key} in {report}", image.display());
    }
}

/// `qemu-img info` reads back the format, sizes and compression type.
fn assert_info(image: &Path, virtual_size: u64, options: &CompressOptions) {
    let info = qemu_json(&["info", "--output=json", s(image)]);
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], virtual_size.next_multiple_of(512));
    assert_eq!(info["cluster-size"], 1u64 << options.cluster_bits);
    let data = &info["format-specific"]["data"];
    assert_eq!(data["compat"], "1.1");
    assert_eq!(data["refcount-bits"], 16);
    assert_eq!(data["compression-type"], options.compression.name());
    assert_eq!(data["corrupt"], false);
}

/// `qemu-img convert -O raw` of `image` is `expected`, zero-padded to
/// whole sectors.
fn assert_converts_to(image: &Path, expected: &[u8]) {
    let raw = image.with_extension("back.raw");
    qemu_img(&["convert", "-f", "qcow2", "-O", "raw", s(image), s(&raw)]);
    let back = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    assert_eq!(back.len() as u64, (expected.len() as u64).next_multiple_of(512));
    assert!(back[..expected.len()] == *expected, "{}: qemu-img reads other bytes", image.display());
    assert!(back[expected.len()..].iter().all(|&b| b == 0));
}

/// What a disk's cluster holds, for building test disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Text-like bytes: compresses well.
    Text,
    /// One byte repeated: compresses to almost nothing.
    Repeat,
    /// Random bytes: stored as is.
    Random,
    /// Zeros inside a data range: left unallocated.
    Zeros,
    /// Outside every data range.
    Hole,
    /// Text in a data range that starts and ends inside the cluster; the
    /// rest of the cluster is a hole.
    Partial,
}

/// A raw disk in memory and its data ranges.
struct Disk {
    bytes: Vec<u8>,
    data: Vec<Range<u64>>,
}

/// Deterministic pseudo-random bytes (xorshift).
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Words from a small vocabulary, as in logs and program text.
fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "qcow2 ",
        "cluster ",
        "refcount ",
        "table\n",
        "vmimg ",
        "zstd ",
        "zlib ",
        "offset=",
        "0x1f00 ",
        "l2 ",
        "ok ",
        "disk ",
    ];
    let picks = random_bytes(len, seed);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(WORDS[picks[i % len] as usize % WORDS.len()].as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

impl Disk {
    /// A disk of `size` bytes whose clusters of `cluster` bytes hold
    /// `kinds[i % kinds.len()]`.
    fn with_kinds(size: u64, cluster: u64, kinds: &[Kind]) -> Disk {
        let mut disk = Disk { bytes: vec![0; size as usize], data: Vec::new() };
        for (i, start) in (0..size).step_by(cluster as usize).enumerate() {
            let end = (start + cluster).min(size);
            let kind = kinds[i % kinds.len()];
            let (from, to) = match kind {
                Kind::Hole => continue,
                Kind::Partial => (start + cluster / 4, (start + 3 * cluster / 4).min(end)),
                _ => (start, end),
            };
            if from >= to {
                continue;
            }
            let len = (to - from) as usize;
            let fill = match kind {
                Kind::Text | Kind::Partial => text_bytes(len, i as u64),
                Kind::Repeat => vec![0x5a; len],
                Kind::Random => random_bytes(len, i as u64),
                Kind::Zeros | Kind::Hole => vec![0; len],
            };
            disk.put(from, &fill);
        }
        disk
    }

    /// Writes `bytes` at `offset` and adds them to the data ranges.
    fn put(&mut self, offset: u64, bytes: &[u8]) {
        self.bytes[offset as usize..][..bytes.len()].copy_from_slice(bytes);
        let range = offset..offset + bytes.len() as u64;
        match self.data.last_mut() {
            Some(last) if last.end == range.start => last.end = range.end,
            _ => self.data.push(range),
        }
    }

    /// The disk as a sparse raw file: only the data ranges are written.
    fn write_raw(&self, path: &Path) -> File {
        let file = File::create(path).unwrap();
        file.set_len(self.bytes.len() as u64).unwrap();
        for r in &self.data {
            file.write_all_at(&self.bytes[r.start as usize..r.end as usize], r.start).unwrap();
        }
        File::open(path).unwrap()
    }
}

fn compress_to(
    src: &dyn ReadAt,
    size: u64,
    data: &[Range<u64>],
    dst: &Path,
    options: &CompressOptions,
) -> CompressStats {
    let stats = write_compressed(src, size, data, &File::create(dst).unwrap(), options).unwrap();
    assert_eq!(stats.file_len, dst.metadata().unwrap().len());
    assert_eq!(stats.virtual_size, size.next_multiple_of(512));
    stats
}

fn options(compression: Compression, cluster_bits: u32) -> CompressOptions {
    CompressOptions { cluster_bits, ..CompressOptions::new(compression) }
}

/// This crate's reader reads `expected` from `image`, and maps each
/// cluster the way `kind_of` says it was stored.
fn assert_reads_back(image: &Path, expected: &[u8], kind_of: impl Fn(u64) -> Option<Kind>) {
    let img = Qcow2::open(File::open(image).unwrap()).unwrap();
    let cluster = img.header().cluster_size();
    let mut back = vec![0u8; expected.len()];
    img.read_at(&mut back, 0, &mut img.decoder().unwrap()).unwrap();
    assert!(back == expected, "{}: the reader reads other bytes", image.display());
    for extent in img.extents(0) {
        let e = extent.unwrap();
        let mut at = e.start;
        while at < e.end() {
            let Some(kind) = kind_of(at / cluster) else { break };
            let ok = match kind {
                Kind::Text | Kind::Repeat | Kind::Partial => matches!(e.allocation, Allocation::Compressed { .. }),
                Kind::Random => matches!(e.allocation, Allocation::Data { .. }),
                Kind::Zeros | Kind::Hole => e.allocation == Allocation::Unallocated,
            };
            assert!(ok, "{}: cluster {} ({kind:?}) is {:?}", image.display(), at / cluster, e.allocation);
            at = (at / cluster + 1) * cluster;
        }
    }
}

const MIXED: [Kind; 9] = [
    Kind::Text,
    Kind::Random,
    Kind::Zeros,
    Kind::Hole,
    Kind::Hole,
    Kind::Partial,
    Kind::Repeat,
    Kind::Text,
    Kind::Random,
];

/// A mixed disk for `cluster_bits`: at least 48 clusters and 12 MiB (so
/// small clusters cross many L2 tables and refcount blocks), plus a part
/// cluster at the end.
fn check_mixed(compression: Compression, cluster_bits: u32) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = 1u64 << cluster_bits;
    let size = (48 * cluster).max(12 * MIB) + 1536;
    let disk = Disk::with_kinds(size, cluster, &MIXED);
    let raw = dir.path().join("disk.raw");
    let src = disk.write_raw(&raw);
    let image = dir.path().join("disk.qcow2");
    let options = options(compression, cluster_bits);
    let stats = compress_to(&src, size, &disk.data, &image, &options);

    let clusters = size.div_ceil(cluster);
    let count = |kinds: &[Kind]| (0..clusters).filter(|i| kinds.contains(&MIXED[(*i % 9) as usize])).count() as u64;
    assert_eq!(stats.clusters_stored, count(&[Kind::Random]), "{stats:?}");
    assert_eq!(stats.clusters_zero, count(&[Kind::Zeros]), "{stats:?}");
    assert_eq!(stats.clusters_compressed, count(&[Kind::Text, Kind::Repeat, Kind::Partial]), "{stats:?}");
    assert!(stats.file_len < size, "{stats:?}");

    assert_check_clean(&image);
    assert_info(&image, size, &options);
    assert_converts_to(&image, &disk.bytes);
    assert_reads_back(&image, &disk.bytes, |i| Some(MIXED[(i % 9) as usize]));
}

#[test]
fn zstd_512_byte_clusters() {
    check_mixed(Compression::Zstd, 9);
}

#[test]
fn zlib_512_byte_clusters() {
    check_mixed(Compression::Zlib, 9);
}

#[test]
fn zstd_4k_clusters() {
    check_mixed(Compression::Zstd, 12);
}

#[test]
fn zlib_4k_clusters() {
    check_mixed(Compression::Zlib, 12);
}

#[test]
fn zstd_64k_clusters() {
    check_mixed(Compression::Zstd, 16);
}

#[test]
fn zlib_64k_clusters() {
    check_mixed(Compression::Zlib, 16);
}

#[test]
fn zstd_2m_clusters() {
    check_mixed(Compression::Zstd, 21);
}

#[test]
fn zlib_2m_clusters() {
    check_mixed(Compression::Zlib, 21);
}

/// A size that is not a multiple of 512: the image is rounded up to whole
/// sectors, as QEMU rounds, and the tail reads as zeros. Data ranges past
/// the end are ignored, and a source shorter than the disk reads as zeros.
#[test]
fn unaligned_size_and_short_source() {
    let dir = tempfile::tempdir().unwrap();
    for compression in [Compression::Zstd, Compression::Zlib] {
        let size = MIB + 100;
        let mut disk = Disk { bytes: vec![0; size as usize], data: Vec::new() };
        disk.put(0, &text_bytes(300 * KIB as usize, 1));
        disk.put(size - 5000, &text_bytes(5000, 2));
        // The source in memory stops 40 bytes short; ranges run past the end.
        let mut src = disk.bytes.clone();
        src.truncate(size as usize - 40);
        disk.bytes[size as usize - 40..].fill(0);
        let mut data = disk.data.clone();
        data.last_mut().unwrap().end = size + 10 * MIB;
        data.push(size + 20 * MIB..size + 30 * MIB);
        let image = dir.path().join(format!("unaligned-{}.qcow2", compression.name()));
        let options = options(compression, 16);
        compress_to(&src, size, &data, &image, &options);
        assert_check_clean(&image);
        assert_info(&image, size, &options);
        assert_converts_to(&image, &disk.bytes);
        let mut padded = disk.bytes.clone();
        padded.resize(size.next_multiple_of(512) as usize, 0);
        assert_reads_back(&image, &padded, |_| None);
    }
}

/// Data around L2 table boundaries of a disk bigger than one L2 table covers,
/// at 4 KiB clusters (2 MiB per L2 table) and 64 KiB clusters (512 MiB).
#[test]
fn data_across_l2_tables() {
    let dir = tempfile::tempdir().unwrap();
    for (cluster_bits, size) in [(12u32, 9 * MIB + 4096 + 512), (16, 2 * GIB + 3 * 512)] {
        let coverage = 1u64 << (2 * cluster_bits - 3);
        let raw = dir.path().join(format!("l2-{cluster_bits}.raw"));
        let file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&raw).unwrap();
        file.set_len(size).unwrap();
        let mut pieces = Vec::new();
        for (i, at) in [coverage - 3000, 2 * coverage - 70_000, 3 * coverage + 1, size - 700].into_iter().enumerate() {
            let len = (140_000).min(size - at) as usize;
            let mut bytes = text_bytes(len, i as u64);
            bytes[len / 2..].copy_from_slice(&random_bytes(len - len / 2, i as u64));
            file.write_all_at(&bytes, at).unwrap();
            pieces.push((at, bytes));
        }
        let data: Vec<_> = pieces.iter().map(|(at, b)| *at..at + b.len() as u64).collect();
        for compression in [Compression::Zstd, Compression::Zlib] {
            let image = dir.path().join(format!("l2-{cluster_bits}-{}.qcow2", compression.name()));
            let options = options(compression, cluster_bits);
            compress_to(&file, size, &data, &image, &options);
            assert_check_clean(&image);
            assert_info(&image, size, &options);
            qemu_img(&["compare", "-q", "-f", "raw", "-F", "qcow2", s(&raw), s(&image)]);
            let img = Qcow2::open(File::open(&image).unwrap()).unwrap();
            let mut decoder = img.decoder().unwrap();
            for (at, bytes) in &pieces {
                // Each piece with a few bytes of hole on both sides.
                let from = at.saturating_sub(10);
                let to = (at + bytes.len() as u64 + 10).min(size);
                let mut back = vec![0; (to - from) as usize];
                img.read_at(&mut back, from, &mut decoder).unwrap();
                let mut want = vec![0; back.len()];
                want[(at - from) as usize..][..bytes.len()].copy_from_slice(bytes);
                assert!(back == want, "{}: piece at {at:#x}", image.display());
            }
        }
    }
}

/// Compressible data makes a much smaller file, about as small as
/// qemu-img's own for the same disk.
#[test]
fn compresses_about_as_well_as_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let size = 24 * MIB;
    let kinds = [Kind::Text, Kind::Text, Kind::Text, Kind::Random, Kind::Zeros, Kind::Hole, Kind::Repeat];
    let disk = Disk::with_kinds(size, 64 * KIB, &kinds);
    let raw = dir.path().join("disk.raw");
    let src = disk.write_raw(&raw);
    for compression in [Compression::Zstd, Compression::Zlib] {
        let name = compression.name();
        let ours = dir.path().join(format!("ours-{name}.qcow2"));
        let theirs = dir.path().join(format!("theirs-{name}.qcow2"));
        let stats = compress_to(&src, size, &disk.data, &ours, &CompressOptions::new(compression));
        let data_bytes: u64 = disk.data.iter().map(|r| r.end - r.start).sum();
        assert!(stats.file_len < data_bytes / 2, "{name}: {stats:?}, {data_bytes} bytes of data");
        let type_option = format!("compression_type={name}");
        qemu_img(&["convert", "-c", "-f", "raw", "-O", "qcow2", "-o", &type_option, s(&raw), s(&theirs)]);
        let theirs_len = theirs.metadata().unwrap().len();
        assert!(
            stats.file_len * 100 <= theirs_len * 105,
            "{name}: ours is {} bytes, qemu-img's {theirs_len}",
            stats.file_len
        );
        qemu_img(&["compare", "-q", "-f", "qcow2", "-F", "qcow2", s(&ours), s(&theirs)]);
    }
}

/// A 1 TiB disk with a few MiB of data: quick, a small file, and nothing
/// but the L1 table (16 KiB here) grows with the virtual size.
#[test]
fn a_terabyte_sparse_disk_is_quick_and_small() {
    let dir = tempfile::tempdir().unwrap();
    let size = TIB;
    let raw = dir.path().join("big.raw");
    let file = File::create(&raw).unwrap();
    file.set_len(size).unwrap();
    let mut data = Vec::new();
    for (i, at) in [0, 512 * MIB - 4096, 300 * GIB + 12345, size - MIB].into_iter().enumerate() {
        let mut bytes = text_bytes(MIB as usize, i as u64);
        bytes[..64 * KIB as usize].copy_from_slice(&random_bytes(64 * KIB as usize, i as u64));
        file.write_all_at(&bytes, at).unwrap();
        data.push(at..at + MIB);
    }
    let src = File::open(&raw).unwrap();
    for compression in [Compression::Zstd, Compression::Zlib] {
        let image = dir.path().join(format!("big-{}.qcow2", compression.name()));
        let started = Instant::now();
        let options = CompressOptions::new(compression);
        let stats = compress_to(&src, size, &data, &image, &options);
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        assert!(stats.file_len < 3 * MIB, "{stats:?}");
        assert!(stats.clusters_stored >= 2, "{stats:?}");
        assert_check_clean(&image);
        assert_info(&image, size, &options);
        qemu_img(&["compare", "-q", "-f", "raw", "-F", "qcow2", s(&raw), s(&image)]);
        let img = Qcow2::open(File::open(&image).unwrap()).unwrap();
        assert_eq!(img.header().l1_size, 2048);
        let mut decoder = img.decoder().unwrap();
        for r in &data {
            let mut back = vec![0; MIB as usize];
            img.read_at(&mut back, r.start, &mut decoder).unwrap();
            let mut want = vec![0; MIB as usize];
            src.read_exact_or_zero_at(&mut want, r.start).unwrap();
            assert!(back == want, "{}: range {r:?}", image.display());
        }
    }
}

/// Batches finish in any order on any number of threads; the file is the
/// same byte for byte.
#[test]
fn same_bytes_whatever_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let size = 8 * MIB + 512;
    let disk = Disk::with_kinds(size, 4 * KIB, &MIXED);
    let mut images: Vec<Vec<u8>> = Vec::new();
    for threads in [1, 3, 8] {
        let image: PathBuf = dir.path().join(format!("t{threads}.qcow2"));
        let options = CompressOptions { threads, ..options(Compression::Zstd, 12) };
        compress_to(&disk.bytes, size, &disk.data, &image, &options);
        images.push(std::fs::read(&image).unwrap());
    }
    assert!(images.windows(2).all(|w| w[0] == w[1]));
}

/// A file that held something is replaced; a disk without any data makes
/// an image of metadata only.
#[test]
fn replaces_contents_and_handles_empty_disks() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("empty.qcow2");
    std::fs::write(&image, vec![0xff; 3 * MIB as usize]).unwrap();
    let dst = std::fs::OpenOptions::new().write(true).open(&image).unwrap();
    let zeros = vec![0u8; MIB as usize];
    for data in [vec![], vec![0..MIB]] {
        let stats = write_compressed(&zeros, 20 * GIB, &data, &dst, &CompressOptions::default()).unwrap();
        assert_eq!((stats.clusters_compressed, stats.clusters_stored), (0, 0));
        assert_eq!(stats.clusters_zero, data.len() as u64 * 16);
        assert_eq!(stats.file_len, 64 * KIB * 4, "header, L1 table, refcount block and table");
        assert_check_clean(&image);
        let img = Qcow2::open(File::open(&image).unwrap()).unwrap();
        let extents: Vec<_> = img.extents(0).map(Result::unwrap).collect();
        assert_eq!(extents.len(), 1);
        assert_eq!(extents[0].allocation, Allocation::Unallocated);
    }
}

#[test]
fn refuses_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    let dst = File::create(dir.path().join("refused.qcow2")).unwrap();
    let src = vec![1u8; 4096];
    let good = CompressOptions::default();
    let cases: [(CompressOptions, u64, Vec<Range<u64>>, &str); 10] = [
        (CompressOptions { cluster_bits: 8, ..good }, MIB, vec![], "cluster_bits is 8"),
        (CompressOptions { cluster_bits: 22, ..good }, MIB, vec![], "cluster_bits is 22"),
        (good, 0, vec![], "virtual size 0 is out of range"),
        (good, u64::MAX, vec![], "out of range"),
        (CompressOptions { cluster_bits: 9, ..good }, 128 * GIB + 1, vec![], "32 MiB L1 limit"),
        (CompressOptions { level: 23, ..good }, MIB, vec![], "zstd level 23 is out of range"),
        (CompressOptions { level: 10, ..CompressOptions::new(Compression::Zlib) }, MIB, vec![], "zlib level 10"),
        (CompressOptions { level: -1, ..CompressOptions::new(Compression::Zlib) }, MIB, vec![], "zlib level -1"),
        (good, MIB, vec![4096..8192, 0..10], "ascending order"),
        (good, MIB, vec![10..20, 5..30], "ascending order"),
    ];
    for (options, size, data, expected) in cases {
        let err = write_compressed(&src, size, &data, &dst, &options).unwrap_err();
        assert!(matches!(err, Error::Create(_)), "{err:?}");
        assert!(err.to_string().contains(expected), "{err} (expected {expected:?})");
    }
    // The largest disk 512 B clusters allow is fine.
    let options = CompressOptions { cluster_bits: 9, ..good };
    write_compressed(&src, 128 * GIB, &[0..4096], &dst, &options).unwrap();
}

/// A source that fails to read fails the conversion with its error, however
/// many batches are in flight.
#[test]
fn read_errors_are_reported() {
    struct Failing;
    impl ReadAt for Failing {
        fn read_at(&self, _: &mut [u8], offset: u64) -> std::io::Result<usize> {
            if offset >= 5 * MIB { Err(std::io::Error::other("bad sector")) } else { Ok(0) }
        }
        fn size(&self) -> std::io::Result<u64> {
            Ok(GIB)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let dst = File::create(dir.path().join("failed.qcow2")).unwrap();
    let err = write_compressed(&Failing, GIB, &[0..GIB], &dst, &CompressOptions::default()).unwrap_err();
    assert!(err.to_string().contains("bad sector"), "{err}");
}
