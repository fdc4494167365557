//! ext4 images checked from outside: e2fsck, dumpe2fs and debugfs read them
//! without mounting (stat, ea_list, ea_get, dump, rdump). The trees hold
//! device nodes and foreign owners, so these tests run as root (as CI does).

mod common;

use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{CAP_NET_RAW, assert_too_deep, chmod, deep_tree, killed_by, mknod, nest_dirs, setxattr, sorted_names};
use rustix::fs::FileType;
use vmimg_rootfs::depth::MAX_DEPTH;
use vmimg_rootfs::ext4::{self, EmptyOptions, Ext4Error, Ext4Options, Ext4Summary, Identity};

const MIB: u64 = 1 << 20;

/// A directory for a test's tree and images: on tmpfs where there is one,
/// since creating 50,000 files on this machine's disk takes half a minute
/// of kernel time, on tmpfs half a second.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let on_shm = shm.is_dir().then(|| tempfile::tempdir_in(shm).ok()).flatten();
    on_shm.unwrap_or_else(|| tempfile::tempdir().unwrap())
}

/// A scratch directory holding `root`, a tree with `dirs` made in it.
fn scratch_tree(dirs: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let dir = scratch();
    let root = dir.path().join("root");
    fs::create_dir_all(&root).unwrap();
    for d in dirs {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    (dir, root)
}

/// Runs debugfs's `request` on `image` and gives its stdout.
fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs").arg("-R").arg(request).arg(image).output().expect("debugfs (e2fsprogs)");
    assert!(out.status.success(), "debugfs -R {request:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// An inode as `debugfs stat` shows it.
#[derive(Debug)]
struct Stat {
    inode: u64,
    kind: String,
    mode: u32,
    uid: u64,
    gid: u64,
    links: u64,
    flags: u32,
    text: String,
}

fn stat(image: &Path, path: &str) -> Stat {
    let text = debugfs(image, &format!("stat \"{path}\""));
    let field = |name: &str| -> &str {
        let start = text.find(name).unwrap_or_else(|| panic!("no {name} in stat {path}:\n{text}")) + name.len();
        text[start..].split_whitespace().next().unwrap()
    };
    let kind_start = text.find("Type: ").expect("Type") + 6;
    let kind = text[kind_start..].split("  ").next().unwrap().trim().to_string();
    Stat {
        inode: field("Inode: ").parse().unwrap(),
        mode: u32::from_str_radix(field("Mode: "), 8).unwrap(),
        // debugfs prints owners as signed 32-bit numbers.
        uid: u64::from(field("User: ").parse::<i64>().unwrap() as u32),
        gid: u64::from(field("Group: ").parse::<i64>().unwrap() as u32),
        links: field("Links: ").parse().unwrap(),
        flags: u32::from_str_radix(field("Flags: ").trim_start_matches("0x"), 16).unwrap(),
        kind,
        text,
    }
}

fn dumpe2fs_field(image: &Path, name: &str) -> u64 {
    let out = Command::new("dumpe2fs").arg("-h").arg(image).output().expect("dumpe2fs (e2fsprogs)");
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name}:\n{text}"));
    line[name.len()..].trim().trim_start_matches(':').trim().parse().unwrap()
}

/// Bytes from a fixed xorshift stream: incompressible, reproducible.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
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

fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// The free space and inodes `build` promises for `options`.
fn assert_headroom(summary: &Ext4Summary, options: &Ext4Options) {
    let want_bytes = ((summary.tree_bytes as f64 * options.headroom) as u64).max(options.min_free_bytes);
    let want_inodes = ((summary.files as f64 * options.headroom) as u64).max(options.min_free_inodes);
    assert!(summary.free_bytes >= want_bytes, "{summary:?}: free bytes below {want_bytes}");
    assert!(summary.free_inodes >= want_inodes, "{summary:?}: free inodes below {want_inodes}");
}

/// 50,000 files of 0–100 bytes: 20,000 in one directory, 30,000 in 300
/// directories three levels deep. Each file takes a block and an inode,
/// the case where content + 20 % ran out of blocks elsewhere.
#[test]
fn small_file_heavy_tree() {
    let (dir, root) = scratch_tree(&["big"]);
    for i in 0..20_000 {
        fs::write(root.join(format!("big/f{i:05}")), vec![b'x'; i % 101]).unwrap();
    }
    for d in 0..300 {
        let sub = root.join(format!("tree/d{}/e{}/sub{d}", d / 100, d / 10));
        fs::create_dir_all(&sub).unwrap();
        for j in 0..100 {
            fs::write(sub.join(format!("f{j}.conf")), vec![b'y'; (d * 7 + j) % 101]).unwrap();
        }
    }
    let image = dir.path().join("small.ext4");
    let options = Ext4Options::default();
    let summary = ext4::build(&root, &image, &options).unwrap();
    eprintln!("{summary:?}");
    ext4::check(&image).unwrap();
    assert_eq!(summary.files, 20_000 + 30_000 + 1 + 1 + 3 + 30 + 300);
    assert_headroom(&summary, &options);
    // The big directory was indexed, and holds every name.
    let big = stat(&image, "/big");
    assert_eq!(big.flags & 0x1000, 0x1000, "not an htree directory:\n{}", big.text);
    let listing = debugfs(&image, "ls /big");
    let names: std::collections::HashSet<&str> = listing.split_whitespace().collect();
    assert!((0..20_000).all(|i| names.contains(format!("f{i:05}").as_str())), "names missing");
    // Made without checksums (a directory that big), which were added after.
    let features = debugfs(&image, "features");
    assert!(features.contains("metadata_csum") && features.contains("dir_index"), "{features}");
    let one = dir.path().join("one");
    debugfs(&image, &format!("dump /big/f00100 {}", one.display()));
    assert_eq!(fs::read(&one).unwrap(), vec![b'x'; 100]);
    assert_eq!(fs::metadata(&image).unwrap().len(), summary.size);
    assert_eq!(sorted_names(dir.path()), ["one", "root", "small.ext4"], "a temporary file was left");
}

/// A few large files of incompressible data and a sparse one: exactly
/// what was written comes back.
#[test]
fn large_files_read_back() {
    let (dir, root) = scratch_tree(&["data"]);
    let files = [("data/a.bin", 64 * MIB as usize + 5), ("data/b.bin", 20 * MIB as usize), ("c.bin", 4097)];
    for (i, (name, len)) in files.iter().enumerate() {
        fs::write(root.join(name), noise(*len, i as u64 + 1)).unwrap();
    }
    // 1 GiB apparent, 3 MiB of data in three runs.
    let sparse = File::create(root.join("sparse.img")).unwrap();
    sparse.set_len(1 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    for (k, offset) in [0u64, 300 * MIB + 7, (1 << 30) - MIB].into_iter().enumerate() {
        sparse.write_all_at(&noise(MIB as usize, 10 + k as u64), offset).unwrap();
    }
    drop(sparse);

    let image = dir.path().join("large.ext4");
    let options = Ext4Options { min_free_bytes: 0, ..Ext4Options::default() };
    let summary = ext4::build(&root, &image, &options).unwrap();
    eprintln!("{summary:?}");
    assert_headroom(&summary, &options);
    // The sparse file's holes were not counted as data.
    assert!(summary.tree_bytes < 100 * MIB, "{summary:?}");
    assert!(summary.size < 200 * MIB, "{summary:?}");
    for name in ["data/a.bin", "data/b.bin", "c.bin", "sparse.img"] {
        let back = dir.path().join("back");
        debugfs(&image, &format!("dump /{name} {}", back.display()));
        assert!(fs::read(&back).unwrap() == fs::read(root.join(name)).unwrap(), "{name} differs");
        fs::remove_file(&back).unwrap();
    }
    // 3 MiB of data, the middle run straddling one more block; counted in
    // 512-byte sectors.
    let stat = stat(&image, "/sparse.img");
    assert!(stat.text.contains("Blockcount: 6152"), "the holes were written:\n{}", stat.text);
}

/// Every kind of entry an OCI layer can hold, checked in the image: types,
/// modes, owners, device numbers, link targets, hard links, xattrs, and
/// contents (by rdump back into a directory, compared with the tree).
#[test]
fn mixed_tree_keeps_everything() {
    let (dir, root) = scratch_tree(&["etc", "usr/bin", "usr/lib", "dev", "tmp", "srv/shared", "a", "b"]);
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(root.join("usr/bin/su"), noise(10_000, 3)).unwrap();
    chmod(&root.join("usr/bin/su"), 0o4755);
    chmod(&root.join("tmp"), 0o1777);
    chmod(&root.join("srv/shared"), 0o2775);
    lchown(root.join("srv/shared"), Some(1000), Some(1000)).unwrap();
    fs::write(root.join("srv/odd"), "odd owner").unwrap();
    lchown(root.join("srv/odd"), Some(123_456), Some(4_000_000_000)).unwrap();
    chmod(&root.join("srv/odd"), 0o640);
    // Symlinks: fast (< 60 bytes), exactly 60, long; absolute and dangling.
    symlink("usr/lib", root.join("lib")).unwrap();
    let sixty = "x".repeat(60);
    let long = format!("/usr/lib/{}", "very-long-directory-name/".repeat(8));
    symlink(&sixty, root.join("etc/sixty")).unwrap();
    symlink(&long, root.join("etc/long")).unwrap();
    lchown(root.join("lib"), Some(7), Some(8)).unwrap();
    // Hard links across directories.
    fs::write(root.join("a/linked"), "one inode, two names").unwrap();
    fs::hard_link(root.join("a/linked"), root.join("b/also-linked")).unwrap();
    // Devices, a FIFO and a socket.
    mknod(&root.join("dev/null"), FileType::CharacterDevice, 0o666, 1, 3);
    mknod(&root.join("dev/sda1"), FileType::BlockDevice, 0o660, 8, 1);
    mknod(&root.join("dev/nvme"), FileType::BlockDevice, 0o600, 259, 300);
    mknod(&root.join("dev/initctl"), FileType::Fifo, 0o600, 0, 0);
    drop(std::os::unix::net::UnixListener::bind(root.join("dev/log")).unwrap());
    lchown(root.join("dev/sda1"), Some(0), Some(6)).unwrap();
    // Xattrs: in the inode, in a block of their own, on a directory, on a
    // symlink (trusted.*), and a file capability.
    setxattr(&root.join("usr/bin/su"), "security.capability", &CAP_NET_RAW);
    setxattr(&root.join("etc/passwd"), "user.comment", b"accounts");
    setxattr(&root.join("etc/passwd"), "user.big", &[b'b'; 300]);
    setxattr(&root.join("usr/lib"), "user.dir", b"on a directory");
    setxattr(&root.join("lib"), "trusted.link", b"on a symlink");
    // Names of 255 bytes, and 40 levels of directories.
    let long_name = "n".repeat(255);
    fs::write(root.join("srv").join(&long_name), "long name").unwrap();
    fs::create_dir(root.join("srv").join("d".repeat(255))).unwrap();
    let mut deep = root.join("deep");
    for level in 0..40 {
        deep.push(format!("level-{level:02}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), "at the bottom").unwrap();
    // A lost+found of the tree's own: mke2fs fills the one it makes.
    fs::create_dir(root.join("lost+found")).unwrap();
    fs::write(root.join("lost+found/kept"), "found").unwrap();
    // The root's own mode and owner.
    chmod(&root, 0o750);
    lchown(&root, Some(1), Some(2)).unwrap();

    let image = dir.path().join("mixed.ext4");
    let summary = ext4::build(&root, &image, &Ext4Options::default()).unwrap();
    eprintln!("{summary:?}");

    let s = stat(&image, "/");
    assert_eq!((s.mode, s.uid, s.gid), (0o750, 1, 2), "root:\n{}", s.text);
    let s = stat(&image, "/usr/bin/su");
    assert_eq!((s.kind.as_str(), s.mode), ("regular", 0o4755));
    let s = stat(&image, "/tmp");
    assert_eq!((s.kind.as_str(), s.mode), ("directory", 0o1777));
    let s = stat(&image, "/srv/shared");
    assert_eq!((s.mode, s.uid, s.gid), (0o2775, 1000, 1000));
    let s = stat(&image, "/srv/odd");
    assert_eq!((s.mode, s.uid, s.gid), (0o640, 123_456, 4_000_000_000));
    let s = stat(&image, "/lib");
    assert_eq!((s.kind.as_str(), s.uid, s.gid), ("symlink", 7, 8));
    assert!(s.text.contains("Fast link dest: \"usr/lib\""), "{}", s.text);
    for path in ["/etc/sixty", "/etc/long"] {
        let s = stat(&image, path);
        assert_eq!(s.kind, "symlink");
        assert!(!s.text.contains("Fast link dest"), "{path} should take a block:\n{}", s.text);
    }
    let (one, two) = (stat(&image, "/a/linked"), stat(&image, "/b/also-linked"));
    assert_eq!((one.inode, one.links), (two.inode, 2), "hard link split");
    let s = stat(&image, "/dev/null");
    assert_eq!((s.kind.as_str(), s.mode), ("character special", 0o666));
    assert!(s.text.contains("Device major/minor number: 01:03"), "{}", s.text);
    let s = stat(&image, "/dev/sda1");
    assert_eq!((s.kind.as_str(), s.mode, s.gid), ("block special", 0o660, 6));
    assert!(s.text.contains("Device major/minor number: 08:01"), "{}", s.text);
    assert!(stat(&image, "/dev/nvme").text.contains("Device major/minor number: 259:300"));
    assert_eq!(stat(&image, "/dev/initctl").kind, "FIFO");
    assert_eq!(stat(&image, "/dev/log").kind, "socket");
    assert_eq!(stat(&image, "/lost+found").inode, 11);

    // Xattrs, byte for byte.
    let value = |path: &str, name: &str| {
        let out = dir.path().join("xattr");
        debugfs(&image, &format!("ea_get -f {} {path} {name}", out.display()));
        fs::read(&out).unwrap()
    };
    assert_eq!(value("/usr/bin/su", "security.capability"), CAP_NET_RAW);
    assert_eq!(value("/etc/passwd", "user.comment"), b"accounts");
    assert_eq!(value("/etc/passwd", "user.big"), [b'b'; 300]);
    assert_eq!(value("/usr/lib", "user.dir"), b"on a directory");
    assert_eq!(value("/lib", "trusted.link"), b"on a symlink");
    assert!(!stat(&image, "/etc/passwd").text.contains("File ACL: 0"), "300 bytes of xattrs need a block");

    // Everything rdump can write back (files, directories, symlinks), with
    // contents, modes, owners and mtimes.
    let back = dir.path().join("back");
    fs::create_dir(&back).unwrap();
    debugfs(&image, &format!("rdump / {}", back.display()));
    let mut checked = 0;
    compare(&root, &back, &mut checked);
    assert!(checked >= 60, "only {checked} entries compared");
}

/// Compares what rdump wrote with the tree; special files are not dumped.
fn compare(src: &Path, back: &Path, checked: &mut usize) {
    for entry in fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let (a, b) = (entry.path(), back.join(entry.file_name()));
        let ma = fs::symlink_metadata(&a).unwrap();
        let kind = ma.file_type();
        if !(kind.is_dir() || kind.is_file() || kind.is_symlink()) {
            continue;
        }
        let mb = fs::symlink_metadata(&b).unwrap_or_else(|e| panic!("{}: {e}", b.display()));
        assert_eq!(mb.file_type(), kind, "{}", a.display());
        if kind.is_symlink() {
            // rdump leaves symlinks to their creator (owners checked above
            // with stat).
            assert_eq!(fs::read_link(&b).unwrap(), fs::read_link(&a).unwrap(), "{}", a.display());
        } else {
            assert_eq!((mb.uid(), mb.gid()), (ma.uid(), ma.gid()), "{}", a.display());
            // rdump sets the permission bits only (setuid, setgid and
            // sticky are checked above with stat).
            assert_eq!(mb.mode() & 0o777, ma.mode() & 0o777, "{}", a.display());
            assert_eq!(mb.mtime(), ma.mtime(), "{}", a.display());
        }
        if kind.is_file() {
            assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap(), "{} differs", a.display());
        }
        if kind.is_dir() {
            compare(&a, &b, checked);
        }
        *checked += 1;
    }
}

/// An empty disk: the asked size, sparse, clean; an existing path refused
/// unless replacing; sizes too small or not in 4 KiB refused.
#[test]
fn empty_disk() {
    let dir = scratch();
    let disk = dir.path().join("volume.ext4");
    let options = EmptyOptions {
        identity: Identity { label: Some("data".into()), ..Identity::default() },
        ..EmptyOptions::default()
    };
    ext4::new_empty(&disk, 4 << 30, &options).unwrap();
    assert_eq!(fs::metadata(&disk).unwrap().len(), 4 << 30);
    assert!(allocated(&disk) < 16 * MIB, "{} bytes allocated", allocated(&disk));
    ext4::check(&disk).unwrap();
    assert_eq!(dumpe2fs_field(&disk, "Block count:"), (4 << 30) / 4096);
    assert_eq!(dumpe2fs_field(&disk, "Reserved block count:"), 0);

    let err = ext4::new_empty(&disk, 1 << 30, &options).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
    assert_eq!(fs::metadata(&disk).unwrap().len(), 4 << 30, "the existing disk was touched");
    ext4::new_empty(&disk, 1 << 30, &EmptyOptions { replace: true, ..options.clone() }).unwrap();
    assert_eq!(dumpe2fs_field(&disk, "Block count:"), (1 << 30) / 4096);

    for size in [ext4::MIN_EMPTY_SIZE - 4096, (64 << 20) + 512] {
        let err = ext4::new_empty(&dir.path().join("bad"), size, &options).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("16 MiB"), "{err}");
    }
    assert_eq!(sorted_names(dir.path()), ["volume.ext4"]);
}

/// A large headroom costs no host space: the image is sparse.
#[test]
fn image_is_sparse() {
    let (dir, root) = scratch_tree(&["etc"]);
    fs::write(root.join("etc/hostname"), "vm\n").unwrap();
    fs::write(root.join("payload"), noise(3 * MIB as usize, 5)).unwrap();
    let image = dir.path().join("sparse.ext4");
    let options = Ext4Options { min_free_bytes: 8 << 30, ..Ext4Options::default() };
    let summary = ext4::build(&root, &image, &options).unwrap();
    eprintln!("{summary:?} allocated {}", allocated(&image));
    assert!(summary.size >= 8 << 30);
    assert_headroom(&summary, &options);
    assert!(allocated(&image) < 16 * MIB, "{} bytes allocated of {}", allocated(&image), summary.size);
}

/// A root that does not exist, or is not a directory, is a clear error,
/// and nothing is left behind.
#[test]
fn bad_root_leaves_nothing() {
    let dir = scratch();
    let out = dir.path().join("out.ext4");
    let missing = dir.path().join("no-such-root");
    let err = ext4::build(&missing, &out, &Ext4Options::default()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("no-such-root"), "{err}");

    let file = dir.path().join("a-file");
    fs::write(&file, "not a tree").unwrap();
    let err = ext4::build(&file, &out, &Ext4Options::default()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("not a directory"), "{err}");

    // mke2fs makes lost+found a directory: a file of that name is refused.
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("lost+found"), "").unwrap();
    let err = ext4::build(&root, &out, &Ext4Options::default()).unwrap_err();
    assert!(err.to_string().contains("lost+found"), "{err}");
    fs::remove_file(root.join("lost+found")).unwrap();

    // An image inside its own tree.
    let err = ext4::build(&root, &root.join("self.ext4"), &Ext4Options::default()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("inside the tree"), "{err}");
    fs::remove_dir(&root).unwrap();

    assert_eq!(sorted_names(dir.path()), ["a-file"]);
    let err = ext4::check(&missing).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    let missing_tool = Ext4Error::MissingTool { tool: "mke2fs" }.to_string();
    assert!(missing_tool.contains("e2fsprogs"), "{missing_tool}");
}

/// e2fsck's many lines about a file that is no ext4 make one line: the one
/// that says what is wrong, and how many more there were.
#[test]
fn a_failed_check_is_one_line() {
    let dir = scratch();
    let notes = dir.path().join("notes.txt");
    fs::write(&notes, "not an ext4 image\n").unwrap();
    let err = ext4::check(&notes).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    let err = err.to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with(&format!("{} is not a clean ext4 filesystem: e2fsck -fn exited with", notes.display())));
    assert!(err.contains("short read while trying to open") && err.contains("more lines)"), "{err}");
}

/// A mid-size tree of mixed file sizes: the image holds the headroom asked
/// and not much more: the estimate is close, not merely generous.
#[test]
fn estimate_is_close() {
    let (dir, root) = scratch_tree(&[]);
    let mut x = 7u64;
    let mut data = 0u64;
    for d in 0..40 {
        let sub = root.join(format!("usr/share/pkg{d}"));
        fs::create_dir_all(&sub).unwrap();
        for f in 0..50 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            // Mostly small, a few of a few MiB.
            let len = if f % 25 == 0 { (x >> 40) % (4 * MIB) } else { (x >> 40) % 40_000 };
            let mut file = File::create(sub.join(format!("file{f}.dat"))).unwrap();
            file.write_all(&noise(len as usize, x)).unwrap();
            data += len;
        }
    }
    let image = dir.path().join("mid.ext4");
    let options = Ext4Options { min_free_bytes: 0, min_free_inodes: 0, ..Ext4Options::default() };
    let summary = ext4::build(&root, &image, &options).unwrap();
    eprintln!("{summary:?}");
    assert_eq!(summary.data_bytes, data);
    assert_headroom(&summary, &options);
    // The tree's estimate is within 3 % + 1 MiB of its data; the free space
    // within 1 % of the image + 2 MiB of the headroom asked; the image at
    // most twice the data + 16 MiB.
    assert!(summary.tree_bytes <= data + data / 33 + MIB, "{summary:?}");
    let want = (summary.tree_bytes as f64 * options.headroom) as u64;
    assert!(summary.free_bytes <= want + summary.size / 100 + 2 * MIB, "{summary:?}: free beyond {want}");
    assert!(summary.size <= 2 * data + 16 * MIB, "{summary:?}");
}

/// The same tree with the same UUID and time gives the same bytes.
#[test]
fn reproducible_with_identity() {
    let (dir, root) = scratch_tree(&["etc/sub"]);
    for i in 0..200 {
        fs::write(root.join(format!("etc/sub/f{i}")), noise(i * 37, i as u64)).unwrap();
    }
    let options = Ext4Options {
        identity: Identity {
            label: Some("rootfs".into()),
            uuid: Some(*b"0123456789abcdef"),
            timestamp: Some(1_700_000_000),
        },
        ..Ext4Options::default()
    };
    // The first build reads the tree and may move its atimes (relatime);
    // the next two see the same tree.
    let images: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("r{i}.ext4"))).collect();
    for image in &images {
        ext4::build(&root, image, &options).unwrap();
    }
    assert!(fs::read(&images[1]).unwrap() == fs::read(&images[2]).unwrap(), "two builds differ");
    let dump = Command::new("dumpe2fs").arg("-h").arg(&images[1]).output().unwrap();
    let text = String::from_utf8(dump.stdout).unwrap();
    assert!(text.contains("30313233-3435-3637-3839-616263646566"), "{text}");
    assert!(text.contains("Filesystem volume name:   rootfs"), "{text}");
}

/// The crate's depth bound: a tree at it builds, passes `e2fsck -fn` and
/// holds its deepest file; one a level deeper is refused before mke2fs
/// runs, leaving nothing.
#[test]
fn a_tree_at_the_depth_bound_builds_and_a_deeper_one_is_refused() {
    let (dir, root) = scratch_tree(&[]);
    let bottom = deep_tree(&root, MAX_DEPTH);
    let image = dir.path().join("deep.ext4");
    ext4::build(&root, &image, &Ext4Options::default()).unwrap();
    ext4::check(&image).unwrap();
    assert_eq!(debugfs(&image, &format!("cat /{bottom}")), "at the bottom");

    let (dir, root) = scratch_tree(&[]);
    let bottom = deep_tree(&root, MAX_DEPTH + 1);
    let err = ext4::build(&root, &dir.path().join("deeper.ext4"), &Ext4Options::default()).unwrap_err();
    assert_too_deep(&err, &bottom, MAX_DEPTH + 1);
    assert_eq!(sorted_names(dir.path()), ["root"]);
}

/// A tree whose one file lies at a path of `len` bytes from the root (8
/// directories of 250-byte names, then the file's name).
fn tree_with_path_of(len: usize) -> (tempfile::TempDir, PathBuf) {
    let (dir, root) = scratch_tree(&[]);
    let segment = "n".repeat(250);
    nest_dirs(&root, &segment, 8);
    let path = format!("{segment}/").repeat(8) + &"f".repeat(len - 8 * 251);
    fs::write(root.join(&path), b"").unwrap();
    (dir, root)
}

/// mke2fs 1.47.0 (1.47.2 too) overflows its path buffer on a path of
/// exactly 2,039 bytes and aborts: such a tree is refused before it runs;
/// a byte shorter or longer builds.
#[test]
fn the_path_length_mke2fs_aborts_on_is_refused() {
    let (dir, root) = tree_with_path_of(2039);
    let err = ext4::build(&root, &dir.path().join("out.ext4"), &Ext4Options::default()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("a path of 2039 bytes"), "{err}");
    assert_eq!(sorted_names(dir.path()), ["root"]);

    let image = dir.path().join("by-hand.ext4");
    File::create(&image).unwrap().set_len(64 * MIB).unwrap();
    let status = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&root)
        .arg(&image)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(killed_by(status, 6), "mke2fs -d on a 2039-byte path: {status} (if it passes, see crate::depth)");

    for len in [2038, 2040] {
        let (dir, root) = tree_with_path_of(len);
        let image = dir.path().join("out.ext4");
        ext4::build(&root, &image, &Ext4Options::default()).unwrap_or_else(|e| panic!("{len}: {e}"));
    }
}
