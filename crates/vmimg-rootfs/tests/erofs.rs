//! erofs images built through erofs-utils, read back byte for byte through
//! the kernel (`mount -t erofs -o loop,ro`) and through `fsck.erofs --extract`.
//!
//! Needs root (device nodes, owners, `trusted.*` xattrs, mounting), loop
//! devices and an erofs-capable kernel, and Debian's `erofs-utils`.

mod common;

use vmimg_testserver::trees::entries;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{CAP_NET_RAW, chmod, nest_dirs, noise, odd_owners_and_modes, set_mtime, setxattr};
use common::{assert_too_deep, deep_tree, killed_by, sorted_names, special_files, twin_trees};
use tempfile::TempDir;
use vmimg_rootfs::depth::MAX_DEPTH;
use vmimg_rootfs::erofs::{Compression, ErofsOptions, build, check};
use vmimg_testserver::mounts::{Mount, skip_missing};

/// Bytes that compress well.
fn text(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = seed;
    while out.len() < len {
        out.extend_from_slice(format!("line {i} of a compressible file, seed {seed}\n").as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// The file erofs-utils 1.5 stores wrongly with `-E ztailpacking`: 4095 bytes,
/// random but for its last 31, which are equal.
fn ztailpacking_victim() -> Vec<u8> {
    let mut data = noise(4064, 77);
    data.extend_from_slice(&[b'x'; 31]);
    data
}

/// A tree with what container root filesystems hold, and what is hard for erofs.
fn build_tree(root: &Path) {
    let p = |rel: &str| root.join(rel);
    for i in 0..40 {
        let dir = p(&format!("many/{i:02}"));
        fs::create_dir_all(&dir).unwrap();
        for j in 0..40u64 {
            let len = ((i as u64 * 40 + j) * 37 % 3000) as usize;
            fs::write(dir.join(format!("f{j}")), text(len, j)).unwrap();
        }
    }
    fs::create_dir_all(p("big")).unwrap();
    fs::write(p("big/compressible"), text(6 << 20, 1)).unwrap();
    fs::write(p("big/random"), noise(5 << 20, 2)).unwrap();
    fs::create_dir_all(p("edges")).unwrap();
    for len in [0usize, 1, 4095, 4096, 4097, 8191, 65535, 65536, 65537, 131073] {
        fs::write(p(&format!("edges/random-{len}")), noise(len, len as u64)).unwrap();
        let mut mixed = noise(len / 2, 3);
        mixed.extend_from_slice(&text(len - len / 2, 3));
        fs::write(p(&format!("edges/mixed-{len}")), mixed).unwrap();
    }
    fs::write(p("edges/ztailpacking-victim"), ztailpacking_victim()).unwrap();
    build_special_entries(root);
    build_metadata(root);
}

/// Links, devices, deep and long names.
fn build_special_entries(root: &Path) {
    let p = |rel: &str| root.join(rel);
    for dir in ["links", "dev", "run", "empty-dir"] {
        fs::create_dir_all(p(dir)).unwrap();
    }
    symlink("../big/compressible", p("links/relative")).unwrap();
    symlink("/etc/passwd", p("links/absolute")).unwrap();
    symlink("no/such/target", p("links/dangling")).unwrap();
    symlink("../many", p("links/to-dir")).unwrap();
    fs::write(p("links/hard-1"), b"three names, one inode").unwrap();
    fs::hard_link(p("links/hard-1"), p("links/hard-2")).unwrap();
    fs::hard_link(p("links/hard-1"), p("many/00/hard-3")).unwrap();
    fs::write(p("links/empty-1"), b"").unwrap();
    fs::hard_link(p("links/empty-1"), p("links/empty-2")).unwrap();
    special_files(root);
    let deep: PathBuf = (0..64).map(|i| format!("d{i}")).collect();
    fs::create_dir_all(root.join(&deep)).unwrap();
    fs::write(root.join(&deep).join("bottom"), b"64 levels down").unwrap();
    let long = "L".repeat(254); // mkfs.erofs 1.5's longest; see the refusal test

    fs::create_dir_all(p(&long)).unwrap();
    fs::write(p(&format!("{long}/{long}")), b"longest names").unwrap();
}

/// Owners, modes, xattrs, mtimes with nanoseconds.
fn build_metadata(root: &Path) {
    let p = |rel: &str| root.join(rel);
    fs::create_dir_all(p("bin")).unwrap();
    fs::write(p("bin/su"), b"#!/bin/sh\n").unwrap();
    fs::write(p("bin/ping"), b"#!/bin/sh\n").unwrap();
    fs::write(p("owned"), b"odd owner").unwrap();
    fs::write(p("no-access"), b"mode 000").unwrap();
    fs::create_dir_all(p("tmp")).unwrap();
    fs::create_dir_all(p("shared")).unwrap();
    lchown(p("links/relative"), Some(4242), Some(4343)).unwrap();
    lchown(p("shared"), Some(1000), Some(1000)).unwrap();
    odd_owners_and_modes(root);
    setxattr(&p("bin/ping"), "security.capability", &CAP_NET_RAW);
    setxattr(&p("owned"), "user.mime_type", b"text/plain");
    setxattr(&p("shared"), "trusted.overlay.opaque", b"y");
    setxattr(&p("links/absolute"), "trusted.on-a-symlink", b"yes");
    setxattr(&p("big/random"), "user.big", &text(3000, 9));
    for i in 0..6 {
        setxattr(&p(&format!("many/0{i}/f1")), "user.shared", b"one value on many files: stored once");
    }
    for (i, (path, meta)) in entries(root).into_iter().rev().enumerate() {
        let secs = if meta.is_dir() { 1_500_000_000 } else { 1_600_000_000 };
        set_mtime(&path, secs + i as i64 * 13, (i as i64 * 7_919_111) % 1_000_000_000);
    }
}

fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut names = vec![0u8; 64 * 1024];
    let len = rustix::fs::llistxattr(path, &mut names[..]).unwrap();
    names[..len]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|name| {
            let name = String::from_utf8(name.to_vec()).unwrap();
            let mut value = vec![0u8; 64 * 1024];
            let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]).unwrap();
            value.truncate(len);
            (name, value)
        })
        .collect()
}

/// What a read-back must keep of one entry (contents are compared apart).
#[derive(Debug, PartialEq, Eq)]
struct Record {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    rdev: u64,
    size: Option<u64>,
    nlink: u64,
    target: Option<PathBuf>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

struct Snapshot {
    records: BTreeMap<PathBuf, Record>,
    hard_links: BTreeSet<Vec<PathBuf>>,
}

/// How much of the metadata a reader reproduces.
#[derive(Clone, Copy, PartialEq)]
enum Reader {
    /// The kernel: everything.
    Kernel,
    /// `fsck.erofs --extract` of 1.5: no xattrs, no hard links, no setuid or
    /// setgid bits, no sockets, and its own directory sizes and link counts.
    Fsck,
}

fn snapshot(root: &Path, reader: Reader) -> Snapshot {
    let mut records = BTreeMap::new();
    let mut inodes: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    for (path, meta) in entries(root) {
        let rel = path.strip_prefix(root).unwrap().to_path_buf();
        let kind = meta.file_type();
        if reader == Reader::Fsck && std::os::unix::fs::FileTypeExt::is_socket(&kind) {
            continue;
        }
        if !kind.is_dir() {
            inodes.entry(meta.ino()).or_default().push(rel.clone());
        }
        let full = reader == Reader::Kernel;
        let record = Record {
            mode: if full { meta.mode() } else { meta.mode() & !0o6000 },
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            rdev: meta.rdev(),
            size: (!kind.is_dir()).then(|| meta.size()),
            nlink: if full { meta.nlink() } else { 0 },
            target: kind.is_symlink().then(|| fs::read_link(&path).unwrap()),
            xattrs: if full { xattrs(&path) } else { BTreeMap::new() },
        };
        records.insert(rel, record);
    }
    let hard_links =
        if reader == Reader::Kernel { inodes.into_values().filter(|g| g.len() > 1).collect() } else { BTreeSet::new() };
    Snapshot { records, hard_links }
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    let (mut a, mut b) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    let (mut x, mut y) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = read_full(&mut a, &mut x);
        if n != read_full(&mut b, &mut y) || x[..n] != y[..n] {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

fn read_full(file: &mut fs::File, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]).unwrap() {
            0 => break,
            n => filled += n,
        }
    }
    filled
}

/// Asserts that `copy` holds what `src` holds, as far as `reader` can tell.
fn assert_same_tree(src: &Path, copy: &Path, reader: Reader) {
    let (want, got) = (snapshot(src, reader), snapshot(copy, reader));
    let wrong: Vec<_> = want
        .records
        .iter()
        .filter(|&(path, record)| got.records.get(path) != Some(record))
        .map(|(path, record)| (path, record, got.records.get(path)))
        .collect();
    assert!(wrong.is_empty(), "entries differ (path, want, got): {wrong:#?}");
    assert_eq!(got.records.len(), want.records.len(), "entry count");
    assert_eq!(got.hard_links, want.hard_links);
    let differing: Vec<_> = want
        .records
        .keys()
        .filter(|rel| fs::symlink_metadata(src.join(rel)).unwrap().is_file())
        .filter(|rel| !same_bytes(&src.join(rel), &copy.join(rel)))
        .collect();
    assert!(differing.is_empty(), "contents differ: {differing:?}");
}

/// A read-only loop mount of an erofs image, unmounted when dropped.
fn mount_read_only(image: &Path) -> Mount {
    Mount::image_read_only(image, "erofs").expect("a loop mount of the image (as root, with a kernel that has erofs)")
}

fn fsck_extract(image: &Path) -> TempDir {
    let dir = TempDir::new().unwrap();
    let target = dir.path().join("x");
    let out = Command::new("fsck.erofs").arg(format!("--extract={}", target.display())).arg(image).output().unwrap();
    assert!(out.status.success(), "fsck.erofs --extract: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

struct Built {
    src: TempDir,
    work: TempDir,
    image: PathBuf,
}

fn build_with(options: &ErofsOptions) -> Built {
    let src = TempDir::new().unwrap();
    build_tree(src.path());
    let work = TempDir::new().unwrap();
    let image = work.path().join("rootfs.erofs");
    let built = build(src.path(), &image, options).unwrap();
    assert_eq!(built.bytes, fs::metadata(&image).unwrap().len());
    assert_eq!(built.erofs_utils_version, "1.5", "the findings in erofs.rs are for erofs-utils 1.5: re-check them");
    Built { src, work, image }
}

#[test]
fn the_kernel_reads_back_every_byte_and_attribute() {
    let built = build_with(&ErofsOptions::default());
    let mount = mount_read_only(&built.image);
    assert_same_tree(built.src.path(), mount.path(), Reader::Kernel);
    assert_eq!(fs::read_dir(built.work.path()).unwrap().count(), 1, "no temporary file is left");
}

#[test]
fn fsck_extraction_reads_back_every_byte() {
    let built = build_with(&ErofsOptions::default());
    let extracted = fsck_extract(&built.image);
    assert_same_tree(built.src.path(), &extracted.path().join("x"), Reader::Fsck);
}

#[test]
fn every_offered_compression_reads_back_exactly() {
    let cases = [
        (Compression::Lz4, 4096),
        (Compression::Lz4hc { level: 9 }, 65536),
        (Compression::Lz4hc { level: 1 }, vmimg_rootfs::erofs::MAX_PCLUSTER),
        (Compression::None, 4096),
    ];
    let mut sizes = Vec::new();
    for (compression, pcluster_size) in cases {
        let built = build_with(&ErofsOptions { compression, pcluster_size, ..ErofsOptions::default() });
        let mount = mount_read_only(&built.image);
        assert_same_tree(built.src.path(), mount.path(), Reader::Kernel);
        sizes.push(fs::metadata(&built.image).unwrap().len());
    }
    assert!(sizes[1] < sizes[0] && sizes[0] < sizes[3], "lz4hc < lz4 < none: {sizes:?}");
}

/// erofs-utils 1.5's `-E ztailpacking` stores this file wrongly, and neither
/// its fsck nor its extraction notices: why erofs.rs never passes it. Through
/// [`build`] the same file reads back exactly (it is in every tree above).
#[test]
fn ztailpacking_in_erofs_utils_1_5_corrupts_data_silently() {
    let src = TempDir::new().unwrap();
    fs::write(src.path().join("victim"), ztailpacking_victim()).unwrap();
    let work = TempDir::new().unwrap();
    let image = work.path().join("ztail.erofs");
    let out = Command::new("mkfs.erofs").arg("-zlz4hc").arg("-Eztailpacking").arg(&image).arg(src.path()).output();
    let out = out.unwrap();
    assert!(out.status.success());
    let banner = String::from_utf8_lossy(&out.stdout); // mkfs.erofs prints its version on stdout
    if !banner.contains("mkfs.erofs 1.5") {
        return skip_missing(format!("erofs-utils 1.5, whose ztailpacking finding this re-checks (found {banner})"));
    }
    check(&image).expect("fsck.erofs passes the corrupted image");
    let mount = mount_read_only(&image);
    let read = fs::read(mount.path().join("victim")).unwrap();
    assert_eq!(read.len(), 4095);
    assert_ne!(read, ztailpacking_victim(), "the kernel reads other bytes than were written");

    let good = work.path().join("good.erofs");
    build(src.path(), &good, &ErofsOptions::default()).unwrap();
    let mount = mount_read_only(&good);
    assert_eq!(fs::read(mount.path().join("victim")).unwrap(), ztailpacking_victim());
}

#[test]
fn same_tree_same_image_whatever_the_host_numbering() {
    let (first, second) = twin_trees(build_tree, 100);
    for root in [first.path(), second.path()] {
        set_mtime(root, 1_234_567_890, 0);
    }
    let work = TempDir::new().unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    build(first.path(), &a, &ErofsOptions::default()).unwrap();
    build(second.path(), &b, &ErofsOptions::default()).unwrap();
    assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap(), "the two images differ");
}

#[test]
fn mtimes_are_kept_unless_a_timestamp_clamps_them() {
    let src = TempDir::new().unwrap();
    for (name, secs) in [("old", 1_000_000_000), ("new", 1_800_000_000), ("future", 4_000_000_000)] {
        fs::write(src.path().join(name), name).unwrap();
        set_mtime(&src.path().join(name), secs, 123_456_789);
    }
    set_mtime(src.path(), 1_100_000_000, 0);
    let work = TempDir::new().unwrap();
    let mtimes = |options: &ErofsOptions| {
        let image = work.path().join("t.erofs");
        build(src.path(), &image, options).unwrap();
        let mount = mount_read_only(&image);
        ["old", "new", "future"].map(|n| fs::symlink_metadata(mount.path().join(n)).unwrap().mtime())
    };
    assert_eq!(mtimes(&ErofsOptions::default()), [1_000_000_000, 1_800_000_000, 4_000_000_000]);
    let clamped = ErofsOptions { timestamp: Some(1_700_000_000), ..ErofsOptions::default() };
    assert_eq!(mtimes(&clamped), [1_000_000_000, 1_700_000_000, 1_700_000_000]);
}

/// Nothing but `keep` in `dir`.
fn only(dir: &Path, keep: &[&str]) {
    assert_eq!(sorted_names(dir), keep, "leftovers in {}", dir.display());
}

#[test]
fn a_failed_build_leaves_nothing_and_says_why() {
    let work = TempDir::new().unwrap();
    let out = work.path().join("rootfs.erofs");
    let err = build(&work.path().join("missing"), &out, &ErofsOptions::default()).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    fs::write(work.path().join("a-file"), b"").unwrap();
    let err = build(&work.path().join("a-file"), &out, &ErofsOptions::default()).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
    let no_tools = ErofsOptions { tool_dir: Some(work.path().join("no-tools")), ..ErofsOptions::default() };
    let src = TempDir::new().unwrap();
    let err = build(src.path(), &out, &no_tools).unwrap_err();
    assert!(err.to_string().contains("apt-get install erofs-utils"), "{err}");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    only(work.path(), &["a-file"]);
}

#[test]
fn an_image_that_fails_its_check_never_replaces_the_old_one() {
    let tools = TempDir::new().unwrap();
    symlink("/usr/bin/mkfs.erofs", tools.path().join("mkfs.erofs")).unwrap();
    fs::write(tools.path().join("fsck.erofs"), "#!/bin/sh\necho 'bad inode @ nid 36' >&2\nexit 1\n").unwrap();
    chmod(&tools.path().join("fsck.erofs"), 0o755);
    let work = TempDir::new().unwrap();
    let out = work.path().join("rootfs.erofs");
    fs::write(&out, b"the previous image").unwrap();
    let src = TempDir::new().unwrap();
    fs::write(src.path().join("file"), b"data").unwrap();
    let options = ErofsOptions { tool_dir: Some(tools.path().to_path_buf()), ..ErofsOptions::default() };
    let err = build(src.path(), &out, &options).unwrap_err();
    assert!(err.to_string().contains("bad inode @ nid 36"), "{err}");
    assert_eq!(fs::read(&out).unwrap(), b"the previous image");
    only(work.path(), &["rootfs.erofs"]);
}

/// A tool that fails is one line: the error line of its output that tells
/// what went wrong (the first `<E>`), how many it leaves out, what to do.
#[test]
fn a_failing_tool_is_one_line() {
    let work = TempDir::new().unwrap();
    let notes = work.path().join("notes.txt");
    fs::write(&notes, "not an erofs image\n").unwrap();
    let err = check(&notes).unwrap_err().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("fsck.erofs failed (exit status: 1): erofs_io: Failed to read data"), "{err}");
    assert!(err.contains("more lines)") && err.contains("erofs-utils 1.5") && err.contains("notes.txt"), "{err}");

    // The real mkfs.erofs, made to fail on a missing source ("$@"/missing
    // appends to the last argument, the source directory).
    let tools = TempDir::new().unwrap();
    let script = "#!/bin/sh\nexec /usr/bin/mkfs.erofs \"$@\"/missing\n";
    fs::write(tools.path().join("mkfs.erofs"), script).unwrap();
    chmod(&tools.path().join("mkfs.erofs"), 0o755);
    symlink("/usr/bin/fsck.erofs", tools.path().join("fsck.erofs")).unwrap();
    let src = TempDir::new().unwrap();
    let options = ErofsOptions { tool_dir: Some(tools.path().to_path_buf()), ..ErofsOptions::default() };
    let err = build(src.path(), &work.path().join("rootfs.erofs"), &options).unwrap_err().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("mkfs.erofs failed (exit status: 1): erofs: failed to parse source directory"), "{err}");
    only(work.path(), &["notes.txt"]);
}

#[test]
fn check_refuses_a_damaged_superblock() {
    let src = TempDir::new().unwrap();
    fs::write(src.path().join("file"), text(100_000, 5)).unwrap();
    let work = TempDir::new().unwrap();
    let image = work.path().join("rootfs.erofs");
    build(src.path(), &image, &ErofsOptions::default()).unwrap();
    check(&image).unwrap();
    let mut bytes = fs::read(&image).unwrap();
    bytes[1024 + 40] ^= 0xFF; // inside the superblock, which carries a checksum
    fs::write(&image, bytes).unwrap();
    // fsck.erofs 1.5 prints the bad checksum but exits 0: check() still fails.
    let err = check(&image).unwrap_err();
    assert!(err.to_string().contains("superblock chksum doesn't match"), "{err}");
}

#[test]
fn names_and_paths_mkfs_erofs_1_5_cannot_take_are_refused_clearly() {
    let work = TempDir::new().unwrap();
    let out = work.path().join("rootfs.erofs");
    let src = TempDir::new().unwrap();
    fs::write(src.path().join("N".repeat(255)), b"a legal Linux name").unwrap();
    let err = build(src.path(), &out, &ErofsOptions::default()).unwrap_err();
    assert!(err.to_string().contains("a name of 255 bytes; mkfs.erofs 1.5 takes at most 254"), "{err}");

    let src = TempDir::new().unwrap();
    nest_dirs(src.path(), &"n".repeat(250), 17);
    let err = build(src.path(), &out, &ErofsOptions::default()).unwrap_err();
    assert!(err.to_string().contains("paths must stay under 4096"), "{err}");
    only(work.path(), &[]);
}

/// Beyond cpio's 4 GiB: a sparse file of 4 GiB + 9000 bytes with random
/// islands at its start, across the 4 GiB mark and at its end.
#[test]
fn a_file_over_four_gib_reads_back_exactly() {
    let src = TempDir::new().unwrap();
    let path = src.path().join("huge");
    let file = fs::File::create(&path).unwrap();
    for (i, offset) in [0u64, (1 << 32) - 2048, (1 << 32) + 4096].into_iter().enumerate() {
        std::os::unix::fs::FileExt::write_all_at(&file, &noise(3000, i as u64), offset).unwrap();
    }
    file.set_len((1 << 32) + 9000).unwrap();
    let work = TempDir::new().unwrap();
    let image = work.path().join("huge.erofs");
    build(src.path(), &image, &ErofsOptions::default()).unwrap();
    assert!(fs::metadata(&image).unwrap().len() < 64 << 20, "zeros compress");
    let mount = mount_read_only(&image);
    assert_eq!(fs::metadata(mount.path().join("huge")).unwrap().len(), (1 << 32) + 9000);
    assert!(same_bytes(&path, &mount.path().join("huge")));
}

/// The crate's depth bound: a tree at it builds (and `fsck.erofs --extract`
/// reads its deepest file back), one a level deeper is refused before
/// mkfs.erofs runs, leaving nothing.
#[test]
fn a_tree_at_the_depth_bound_builds_and_a_deeper_one_is_refused() {
    let src = TempDir::new().unwrap();
    let bottom = deep_tree(src.path(), MAX_DEPTH);
    let work = TempDir::new().unwrap();
    let image = work.path().join("deep.erofs");
    build(src.path(), &image, &ErofsOptions::default()).unwrap();
    check(&image).unwrap();
    let extracted = fsck_extract(&image);
    assert_eq!(fs::read(extracted.path().join("x").join(&bottom)).unwrap(), b"at the bottom");

    let src = TempDir::new().unwrap();
    let bottom = deep_tree(src.path(), MAX_DEPTH + 1);
    let err = build(src.path(), &work.path().join("deeper.erofs"), &ErofsOptions::default()).unwrap_err();
    assert_too_deep(&err, &bottom, MAX_DEPTH + 1);
    only(work.path(), &["deep.erofs"]);
}

/// What the bound guards against: fsck.erofs 1.5 overflows its (8 MiB)
/// stack on a tree about 640 deep (the depth moves by one with the size of
/// the environment): it passes 600, it crashes at 700.
#[test]
fn fsck_erofs_1_5_crashes_on_a_tree_700_deep() {
    let work = TempDir::new().unwrap();
    let fsck = |depth: usize| {
        let src = TempDir::new().unwrap();
        deep_tree(src.path(), depth);
        let image = work.path().join(format!("{depth}.erofs"));
        let out = Command::new("mkfs.erofs").arg(&image).arg(src.path()).output().unwrap();
        assert!(out.status.success(), "mkfs.erofs: {}", String::from_utf8_lossy(&out.stderr));
        let banner = String::from_utf8_lossy(&out.stdout).into_owned();
        let status = Command::new("sh")
            .args(["-c", "ulimit -s 8192 && exec fsck.erofs --extract \"$0\""])
            .arg(&image)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        (banner, status)
    };
    let (banner, status) = fsck(600);
    if !banner.contains("mkfs.erofs 1.5") {
        return skip_missing(format!("erofs-utils 1.5, whose depth finding this re-checks (found {banner})"));
    }
    assert!(status.success(), "fsck.erofs on a tree 600 deep: {status}");
    let (_, status) = fsck(700);
    assert!(killed_by(status, 11), "fsck.erofs on a tree 700 deep: {status} (if it passes, see crate::depth)");
}

/// The tools get an 8 MiB stack whatever the caller's limit: with the
/// caller's at 4 MiB (where fsck.erofs 1.5 crashes at about 320 deep), a
/// tree at the depth bound still builds and checks.
#[test]
fn the_depth_bound_holds_under_a_small_stack_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let src = TempDir::new().unwrap();
    deep_tree(src.path(), MAX_DEPTH);
    let work = TempDir::new().unwrap();
    let before = getrlimit(Resource::Stack);
    setrlimit(Resource::Stack, Rlimit { current: Some(4 << 20), maximum: before.maximum }).unwrap();
    let built = build(src.path(), &work.path().join("deep.erofs"), &ErofsOptions::default());
    setrlimit(Resource::Stack, before).unwrap();
    built.unwrap();
}
