//! Layers applied to a root: every entry kind with its metadata, OCI
//! whiteouts across layers, compressed layers, and hostile layers that try
//! to write, link or remove outside the root. The same layers merged in
//! memory (`merge`) extract to the same tree.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use vmimg_rootfs::apply::{ApplyError, ApplyOptions, Compression, LayerSummary, Rootfs, decompress};
use vmimg_rootfs::depth::{MAX_DEPTH, TooDeep};
use vmimg_rootfs::merge::{LayerTar, MergeOptions, Merged};

/// A tar written entry by entry, with every header field the tests need.
#[derive(Default)]
struct Tar(Vec<u8>);

struct Item<'a> {
    name: &'a str,
    kind: u8,
    mode: u32,
    owner: (u32, u32),
    link: &'a str,
    device: (u32, u32),
    data: &'a [u8],
    xattrs: &'a [(&'a str, &'a str)],
}

impl<'a> Item<'a> {
    fn new(name: &'a str, kind: u8) -> Self {
        let mode = if kind == b'5' { 0o755 } else { 0o644 };
        Item { name, kind, mode, owner: (0, 0), link: "", device: (0, 0), data: b"", xattrs: &[] }
    }
}

impl Tar {
    fn file(mut self, name: &str, data: &[u8]) -> Self {
        self.add(Item { data, ..Item::new(name, b'0') });
        self
    }
    fn dir(mut self, name: &str) -> Self {
        self.add(Item::new(name, b'5'));
        self
    }
    fn symlink(mut self, name: &str, target: &str) -> Self {
        self.add(Item { link: target, ..Item::new(name, b'2') });
        self
    }
    fn hard_link(mut self, name: &str, target: &str) -> Self {
        self.add(Item { link: target, ..Item::new(name, b'1') });
        self
    }
    fn with(mut self, item: Item) -> Self {
        self.add(item);
        self
    }

    /// The entry, after a PAX header for its xattrs and for a name or link
    /// target longer than ustar's 100 bytes.
    fn add<'a>(&mut self, item: Item<'a>) {
        let mut pax: Vec<(String, &str)> = item.xattrs.iter().map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v)).collect();
        let mut short = |key: &str, value: &'a str| {
            if value.len() <= 100 {
                return value;
            }
            pax.push((key.into(), value));
            "long"
        };
        let (name, link) = (short("path", item.name), short("linkpath", item.link));
        if !pax.is_empty() {
            let mut records = Vec::new();
            for (key, value) in pax {
                let body = format!(" {key}={value}\n");
                let mut len = body.len() + 1;
                while format!("{len}{body}").len() != len {
                    len += 1;
                }
                records.extend_from_slice(format!("{len}{body}").as_bytes());
            }
            self.block(&header("pax", b'x', 0o644, (0, 0), "", (0, 0), records.len()), &records);
        }
        let block = header(name, item.kind, item.mode, item.owner, link, item.device, item.data.len());
        self.block(&block, item.data);
    }

    fn block(&mut self, header: &[u8; 512], data: &[u8]) {
        self.0.extend_from_slice(header);
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
    }

    fn bytes(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0; 1024]);
        self.0
    }
}

fn header(
    name: &str,
    kind: u8,
    mode: u32,
    owner: (u32, u32),
    link: &str,
    device: (u32, u32),
    size: usize,
) -> [u8; 512] {
    let mut block = [0u8; 512];
    let octal = |block: &mut [u8; 512], at: usize, width: usize, value: u64| {
        block[at..at + width - 1].copy_from_slice(format!("{value:0w$o}", w = width - 1).as_bytes());
    };
    block[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut block, 100, 8, u64::from(mode));
    octal(&mut block, 108, 8, u64::from(owner.0));
    octal(&mut block, 116, 8, u64::from(owner.1));
    octal(&mut block, 124, 12, size as u64);
    octal(&mut block, 136, 12, 1_600_000_000);
    block[156] = kind;
    block[157..157 + link.len()].copy_from_slice(link.as_bytes());
    block[257..265].copy_from_slice(b"ustar\x0000");
    octal(&mut block, 329, 8, u64::from(device.0));
    octal(&mut block, 337, 8, u64::from(device.1));
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    block
}

/// One layer with an entry of every kind, with owners, modes, a device's
/// numbers and an xattr.
fn every_kind_layer() -> Vec<u8> {
    Tar::default()
        .dir("./")
        .dir("bin")
        .with(Item { mode: 0o4755, owner: (0, 0), data: b"#!/bin/sh\n", ..Item::new("bin/su", b'0') })
        .with(Item {
            owner: (1000, 100),
            data: b"mine",
            xattrs: &[("user.note", "hi"), ("trusted.origin", "root's")],
            ..Item::new("home/u/f", b'0')
        })
        .symlink("bin/sh", "/bin/busybox")
        .hard_link("bin/su2", "bin/su")
        .with(Item { mode: 0o666, device: (1, 3), ..Item::new("dev/null", b'3') })
        .with(Item { mode: 0o660, device: (7, 0), ..Item::new("dev/loop0", b'4') })
        .with(Item { mode: 0o600, ..Item::new("run/fifo", b'6') })
        .with(Item { mode: 0o1777, ..Item::new("tmp", b'5') })
        .bytes()
}

/// A layer, and one above it whose whiteouts and replacements change it.
fn whiteout_layers() -> (Vec<u8>, Vec<u8>) {
    let base = Tar::default()
        .file("etc/motd", b"old")
        .file("etc/keep", b"kept")
        .file("var/cache/a", b"a")
        .file("var/cache/sub/b", b"b")
        .file("opt/dir/x", b"x")
        .file("srv/file", b"file")
        .hard_link("etc/motd-link", "etc/motd")
        .bytes();
    let top = Tar::default()
        .file("etc/.wh.motd", b"")
        // Opaque after some of the layer's own entries, and before others.
        .file("var/cache/new-before", b"1")
        .dir("var/cache/sub")
        .file("var/cache/.wh..wh..opq", b"")
        .file("var/cache/new-after", b"2")
        // A directory replaced by a file, and a file by a directory.
        .file("opt/dir", b"now a file")
        .dir("srv/file")
        .file("srv/file/inside", b"now a dir")
        // Removing what is not there is fine; an aufs entry is ignored.
        .file(".wh.nothing", b"")
        .file(".wh..wh.plnk", b"")
        .bytes();
    (base, top)
}

fn apply(root: &Path, layers: &[Vec<u8>]) -> Result<Vec<LayerSummary>, ApplyError> {
    let mut rootfs = Rootfs::open(root, ApplyOptions::default())?;
    layers.iter().map(|layer| rootfs.apply_layer(layer.as_slice())).collect()
}

fn read(path: &Path) -> String {
    String::from_utf8(fs::read(path).unwrap()).unwrap()
}

#[test]
fn every_entry_kind_with_its_metadata() {
    let root = tempfile::tempdir().unwrap();
    let layer = every_kind_layer();
    let summary = &apply(root.path(), &[layer]).unwrap()[0];
    assert_eq!((summary.entries, summary.skipped_devices, summary.skipped_xattrs), (10, 0, 0));
    let r = root.path();
    let su = fs::metadata(r.join("bin/su")).unwrap();
    assert_eq!((su.mode() & 0o7777, su.mtime(), su.nlink()), (0o4755, 1_600_000_000, 2));
    assert_eq!(fs::metadata(r.join("bin/su2")).unwrap().ino(), su.ino());
    let mine = fs::metadata(r.join("home/u/f")).unwrap();
    assert_eq!((mine.uid(), mine.gid()), (1000, 100));
    let note = Command::new("getfattr").args(["--only-values", "-n", "user.note"]).arg(r.join("home/u/f")).output();
    assert_eq!(note.unwrap().stdout, b"hi");
    assert_eq!(fs::read_link(r.join("bin/sh")).unwrap(), Path::new("/bin/busybox"));
    let null = fs::symlink_metadata(r.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!((null.rdev(), null.mode() & 0o7777), (rustix::fs::makedev(1, 3), 0o666));
    assert!(fs::symlink_metadata(r.join("dev/loop0")).unwrap().file_type().is_block_device());
    assert!(fs::symlink_metadata(r.join("run/fifo")).unwrap().file_type().is_fifo());
    assert_eq!(fs::metadata(r.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
    assert_eq!(fs::metadata(r.join("home")).unwrap().permissions().mode() & 0o777, 0o755, "implied parents");
}

#[test]
fn whiteouts_remove_and_hide_only_lower_layers() {
    let root = tempfile::tempdir().unwrap();
    let (base, top) = whiteout_layers();
    let summaries = apply(root.path(), &[base, top]).unwrap();
    assert_eq!(summaries[1].whiteouts, 4);
    let r = root.path();
    assert!(!r.join("etc/motd").exists());
    assert_eq!(read(&r.join("etc/motd-link")), "old", "a hard link keeps its own name");
    assert_eq!(read(&r.join("etc/keep")), "kept");
    let mut cache: Vec<_> = fs::read_dir(r.join("var/cache")).unwrap().map(|e| e.unwrap().file_name()).collect();
    cache.sort();
    assert_eq!(cache, ["new-after", "new-before", "sub"]);
    assert_eq!(fs::read_dir(r.join("var/cache/sub")).unwrap().count(), 0, "lower content under an opaque dir");
    assert_eq!(read(&r.join("opt/dir")), "now a file");
    assert_eq!(read(&r.join("srv/file/inside")), "now a dir");
}

#[test]
fn compressed_layers() {
    let tar = Tar::default().file("hello", b"world").bytes();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(&tar).unwrap();
    let gzip = gzip.finish().unwrap();
    let zstd = zstd::encode_all(tar.as_slice(), 3).unwrap();
    for (blob, compression) in [(gzip, Compression::Gzip), (zstd, Compression::Zstd), (tar, Compression::None)] {
        let root = tempfile::tempdir().unwrap();
        let mut rootfs = Rootfs::open(root.path(), ApplyOptions::default()).unwrap();
        rootfs.apply_layer(decompress(blob.as_slice(), compression).unwrap()).unwrap();
        assert_eq!(read(&root.path().join("hello")), "world");
    }
}

/// A host directory beside the root stands for everything outside it:
/// nothing may appear there, change, or go.
struct Host {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "host").unwrap();
        Host { _dir: dir, root, outside }
    }

    fn apply(&self, layers: &[Vec<u8>]) -> Result<Vec<LayerSummary>, ApplyError> {
        apply(&self.root, layers)
    }

    fn assert_untouched(&self) {
        let names: Vec<_> = fs::read_dir(&self.outside).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["secret"]);
        assert_eq!(read(&self.outside.join("secret")), "host");
        assert_eq!(fs::metadata(self.outside.join("secret")).unwrap().nlink(), 1);
    }
}

#[test]
fn hostile_names_are_refused() {
    for name in ["/etc/passwd", "../outside/new", "a/../../outside/new", "./.wh...", "x/.wh.."] {
        let host = Host::new();
        let error = host.apply(&[Tar::default().file(name, b"evil").bytes()]).unwrap_err();
        assert!(matches!(error, ApplyError::Refused { .. }), "{name}: {error}");
        host.assert_untouched();
    }
    let host = Host::new();
    let link = Tar::default().hard_link("stolen", "../outside/secret").bytes();
    assert!(matches!(host.apply(&[link]).unwrap_err(), ApplyError::Refused { .. }));
    host.assert_untouched();
}

#[test]
fn symlinks_resolve_inside_the_root() {
    let host = Host::new();
    let outside = host.outside.to_str().unwrap().to_owned();
    let layers = [
        Tar::default()
            .dir(&outside[1..])
            .dir("outside")
            .symlink("abs", &outside)
            .symlink("rel", "../../../../outside")
            .symlink("up", "..")
            .symlink("dangling", "/nowhere")
            .bytes(),
        Tar::default()
            .file("abs/new", b"through an absolute link")
            .file("rel/new", b"through a relative link")
            .file("up/up/new", b"through ..")
            .file("abs/.wh.secret", b"")
            .file("rel/.wh..wh..opq", b"")
            .bytes(),
    ];
    host.apply(&layers).unwrap();
    host.assert_untouched();
    let r = &host.root;
    assert_eq!(read(&r.join(outside.trim_start_matches('/')).join("new")), "through an absolute link");
    assert_eq!(read(&r.join("outside/new")), "through a relative link");
    assert_eq!(read(&r.join("new")), "through ..");
    // A write through a dangling link fails; it makes nothing on the host.
    let dangling = Tar::default().file("dangling/new", b"x").bytes();
    assert!(matches!(host.apply(&[dangling]).unwrap_err(), ApplyError::Io { .. }));
    // Hard links through a link to the host find nothing there to steal.
    let stolen = Tar::default().hard_link("stolen", "abs/secret").bytes();
    assert!(matches!(host.apply(&[stolen]).unwrap_err(), ApplyError::Io { .. }));
    host.assert_untouched();
}

#[test]
fn limits_bound_a_bomb() {
    let root = tempfile::tempdir().unwrap();
    let options = ApplyOptions { max_bytes: 1000, ..ApplyOptions::default() };
    let mut rootfs = Rootfs::open(root.path(), options).unwrap();
    let big = Tar::default().file("a", &[1; 600]).file("b", &[2; 600]).bytes();
    assert!(matches!(rootfs.apply_layer(big.as_slice()).unwrap_err(), ApplyError::Io { .. }));
    let options = ApplyOptions { max_entries: 2, ..ApplyOptions::default() };
    let mut rootfs = Rootfs::open(root.path(), options).unwrap();
    let many = Tar::default().dir("x").dir("y").dir("z").bytes();
    assert!(matches!(rootfs.apply_layer(many.as_slice()).unwrap_err(), ApplyError::Limit(_)));
}

#[test]
fn gnu_tar_layers_apply_like_tar_extracts_them() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("a/b")).unwrap();
    fs::write(tree.join("a/b/file"), vec![7u8; 3 << 20]).unwrap();
    std::os::unix::fs::symlink("b/file", tree.join("a/link")).unwrap();
    fs::hard_link(tree.join("a/b/file"), tree.join("a/hard")).unwrap();
    let layer = dir.path().join("layer.tar");
    let status = Command::new("tar")
        .args(["--format=posix", "--xattrs", "-C"])
        .arg(&tree)
        .arg("-cf")
        .arg(&layer)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    apply(&root, &[fs::read(&layer).unwrap()]).unwrap();
    let diff = Command::new("diff").arg("-r").arg("--no-dereference").arg(&tree).arg(&root).output().unwrap();
    assert!(diff.status.success(), "{}", String::from_utf8_lossy(&diff.stdout));
    assert_eq!(fs::metadata(root.join("a/hard")).unwrap().ino(), fs::metadata(root.join("a/b/file")).unwrap().ino());
}

#[test]
fn without_root_devices_are_skipped_and_said() {
    let root = tempfile::tempdir().unwrap();
    let options = ApplyOptions { owners: false, devices: false, ..ApplyOptions::default() };
    let mut rootfs = Rootfs::open(root.path(), options.clone()).unwrap();
    let layer = Tar::default()
        .with(Item { owner: (1000, 1000), data: b"x", ..Item::new("home/f", b'0') })
        .with(Item { device: (1, 3), ..Item::new("dev/null", b'3') })
        .bytes();
    let summary = rootfs.apply_layer(layer.as_slice()).unwrap();
    assert_eq!(summary.skipped_devices, 1);
    assert!(!root.path().join("dev/null").exists());
    assert_eq!(fs::metadata(root.path().join("home/f")).unwrap().uid(), rustix::process::geteuid().as_raw());
    let warnings = summary.warnings(&options);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[1].starts_with("1 device nodes"), "{warnings:?}");
    assert!(LayerSummary::default().warnings(&ApplyOptions { owners: true, ..options }).is_empty());
}

#[test]
fn directories_a_layer_does_not_name_keep_their_mtime() {
    let root = tempfile::tempdir().unwrap();
    let base = Tar::default().dir("usr").dir("usr/bin").file("usr/bin/gzip", b"old").file("usr/bin/gone", b"x").bytes();
    let top = Tar::default().file("usr/bin/gzip", b"new").file("usr/bin/.wh.gone", b"").bytes();
    apply(root.path(), &[base, top]).unwrap();
    let bin = fs::metadata(root.path().join("usr/bin")).unwrap();
    assert_eq!(bin.mtime(), 1_600_000_000, "the base layer's time, not the apply's");
    assert_eq!(read(&root.path().join("usr/bin/gzip")), "new");
    assert!(!root.path().join("usr/bin/gone").exists());
}

/// `d/d/…/NAME`, `depth` names long.
fn deep_name(depth: usize, name: &str) -> String {
    "d/".repeat(depth - 1) + name
}

fn assert_too_deep(result: Result<Vec<LayerSummary>, ApplyError>, path: &str, depth: usize) {
    match result {
        Err(ApplyError::TooDeep(deep)) => assert_eq!(deep, TooDeep { path: path.into(), depth }),
        other => panic!("{path}: {other:?}"),
    }
}

/// The crate's depth bound, counted where entries land: an entry at the
/// bound is made; one past it is refused before it is made, whether its
/// name is that long, its missing parents would be, or a symlink leads a
/// short name there.
#[test]
fn entries_past_the_depth_bound_are_refused_before_they_are_made() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let bottom = deep_name(MAX_DEPTH, "f");
    let link_target = "/".to_owned() + &"d/".repeat(MAX_DEPTH - 3) + "d";
    let base = Tar::default().dir("d").file(&bottom, b"at the bound").symlink("s", &link_target).bytes();
    apply(r, &[base]).unwrap();
    assert_eq!(read(&r.join(&bottom)), "at the bound");

    let past = deep_name(MAX_DEPTH + 1, "f");
    let error = apply(r, &[Tar::default().file(&past, b"").bytes()]).unwrap_err();
    assert!(error.to_string().contains(&format!("{} levels below the root", MAX_DEPTH + 1)), "{error}");
    assert_too_deep(Err(error), &past, MAX_DEPTH + 1);
    let dir = deep_name(MAX_DEPTH + 1, "x");
    assert_too_deep(apply(r, &[Tar::default().dir(&dir).bytes()]), &dir, MAX_DEPTH + 1);
    // Parents a layer leaves out are made down to the bound, never past it.
    let far = deep_name(MAX_DEPTH + 50, "f");
    assert_too_deep(apply(r, &[Tar::default().file(&far, b"").bytes()]), &far, MAX_DEPTH + 1);
    assert_eq!(fs::read_dir(r.join("d/".repeat(MAX_DEPTH))).unwrap().count(), 0, "nothing past the bound");

    // `s` leads MAX_DEPTH - 2 deep: `s/x/f` is MAX_DEPTH, `s/x/y/f` one past.
    apply(r, &[Tar::default().file("s/x/f", b"through the link").bytes()]).unwrap();
    assert_eq!(read(&r.join(deep_name(MAX_DEPTH - 1, "x/f"))), "through the link");
    assert_too_deep(apply(r, &[Tar::default().file("s/x/y/f", b"").bytes()]), "s/x/y/f", MAX_DEPTH + 1);
    assert_too_deep(apply(r, &[Tar::default().file("s/x/y/z/f", b"").bytes()]), "s/x/y/z/f", MAX_DEPTH + 1);
    assert_eq!(fs::read_dir(r.join(deep_name(MAX_DEPTH - 1, "x/y"))).unwrap().count(), 0);
}

/// The tree `layers` make merged in memory, as one tar.
fn merged_tar(layers: &[Vec<u8>]) -> (Merged, Vec<u8>) {
    let merged = merge(layers);
    let (tar, written) = merged.write_tar(Vec::new(), layer_reader(layers)).unwrap();
    assert!(written.entries > 0);
    (merged, tar)
}

fn merge(layers: &[Vec<u8>]) -> Merged {
    let mut merged = Merged::new(MergeOptions::default());
    for layer in layers {
        merged.add_layer(layer.as_slice()).unwrap();
    }
    merged
}

/// Reads layer `n` of `layers` again.
fn layer_reader(layers: &[Vec<u8>]) -> impl FnMut(usize) -> std::io::Result<LayerTar> + '_ {
    |layer| Ok(Box::new(std::io::Cursor::new(layers[layer].clone())) as LayerTar)
}

/// The tree `layers` make merged in memory, extracted by GNU tar.
fn merge_and_extract(root: &Path, layers: &[Vec<u8>]) {
    let (_, tar) = merged_tar(layers);
    let archive = root.with_extension("tar");
    fs::write(&archive, tar).unwrap();
    let out = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--same-owner", "--numeric-owner", "-xpf"])
        .arg(&archive)
        .arg("-C")
        .arg(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Layers with every entry kind, whiteouts, symlinked parents and a hard
/// link to a file replaced later.
fn layer_stack() -> [Vec<u8>; 5] {
    let (base, top) = whiteout_layers();
    let links = Tar::default().dir("usr/lib").symlink("lib", "usr/lib").symlink("up", "../..").bytes();
    let through = Tar::default()
        .file("lib/libc.so", b"through a symlinked parent")
        .file("up/etc/through-up", b"climbing stays inside")
        .with(Item { mode: 0o700, owner: (5, 6), data: b"new su", ..Item::new("bin/su", b'0') })
        .hard_link("bin/su3", "bin/su")
        .bytes();
    [every_kind_layer(), base, top, links, through]
}

#[test]
fn merged_layers_extract_to_the_tree_applying_makes() {
    let layers = layer_stack();

    let (applied, merged) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    apply(applied.path(), &layers).unwrap();
    merge_and_extract(merged.path(), &layers);
    let (want, got) =
        (vmimg_testserver::trees::describe(applied.path()), vmimg_testserver::trees::describe(merged.path()));
    let only = |a: &[String], b: &[String]| a.iter().filter(|x| !b.contains(x)).cloned().collect::<Vec<_>>();
    assert_eq!(got.len(), want.len(), "merged only: {:#?}\napplied only: {:#?}", only(&got, &want), only(&want, &got));
    for (got, want) in got.iter().zip(&want) {
        assert_eq!(
            got.split(' ').skip(1).collect::<Vec<_>>(),
            want.split(' ').skip(1).collect::<Vec<_>>(),
            "{got} / {want}"
        );
    }
    let entry = |path: &str| want.iter().find(|e| e.starts_with(&format!("{path} "))).unwrap().clone();
    assert!(entry("bin/su3").contains("None 0 2 "), "a hard link to the new su: {want:#?}");
    assert!(entry("bin/su2").contains("None 0 1 ") && entry("bin/su2").starts_with("bin/su2 104755"), "{want:#?}");
}

#[test]
fn merging_refuses_what_applying_refuses() {
    for name in ["/etc/passwd", "../outside/new", "a/../../outside/new", "./.wh...", "x/.wh.."] {
        let mut merged = Merged::new(MergeOptions::default());
        let error = merged.add_layer(Tar::default().file(name, b"evil").bytes().as_slice()).unwrap_err();
        assert!(matches!(error, ApplyError::Refused { .. }), "{name}: {error}");
    }
    let mut merged = Merged::new(MergeOptions { max_bytes: 1000, ..MergeOptions::default() });
    let bomb = Tar::default().file("a", &[0; 600]).file("b", &[0; 600]).bytes();
    assert!(matches!(merged.add_layer(bomb.as_slice()).unwrap_err(), ApplyError::Limit(_)));
    let mut merged = Merged::new(MergeOptions::default());
    let layer = Tar::default().symlink("dangling", "/nowhere").file("dangling/new", b"x").bytes();
    assert!(matches!(merged.add_layer(layer.as_slice()).unwrap_err(), ApplyError::Io { .. }));
    let mut merged = Merged::new(MergeOptions::default());
    let deep = Tar::default().file(&deep_name(MAX_DEPTH + 1, "f"), b"x").bytes();
    assert!(matches!(merged.add_layer(deep.as_slice()).unwrap_err(), ApplyError::TooDeep(_)));
    let mut merged = Merged::new(MergeOptions::default());
    let looped = Tar::default().symlink("a", "b").symlink("b", "a").file("a/x", b"x").bytes();
    assert!(matches!(merged.add_layer(looped.as_slice()).unwrap_err(), ApplyError::Io { .. }));
    let mut merged = Merged::new(MergeOptions::default());
    let stolen = Tar::default().hard_link("stolen", "../outside/secret").bytes();
    assert!(matches!(merged.add_layer(stolen.as_slice()).unwrap_err(), ApplyError::Refused { .. }));
    // Through an absolute link, a hard link finds nothing outside the tree to take.
    let mut merged = Merged::new(MergeOptions::default());
    let through = Tar::default().symlink("abs", "/etc").hard_link("stolen", "abs/shadow").bytes();
    assert!(matches!(merged.add_layer(through.as_slice()).unwrap_err(), ApplyError::Io { .. }));
}

/// Absolute and climbing symlinks resolve inside the merged tree, for
/// files, hard links and whiteouts alike, as applying resolves them.
#[test]
fn merged_symlinks_resolve_inside_the_root() {
    let layers = [
        Tar::default()
            .dir("host/outside")
            .file("host/outside/secret", b"kept inside")
            .file("host/outside/other", b"whited out through a link")
            .symlink("abs", "/host/outside")
            .symlink("up", "../..")
            .bytes(),
        Tar::default()
            .file("abs/new", b"through an absolute link")
            .hard_link("linked", "abs/secret")
            .file("up/abs/.wh.other", b"")
            .bytes(),
    ];
    let (applied, merged) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    apply(applied.path(), &layers).unwrap();
    merge_and_extract(merged.path(), &layers);
    let tree = vmimg_testserver::trees::describe(merged.path());
    let paths: Vec<_> = tree.iter().map(|entry| entry.split(' ').next().unwrap()).collect();
    assert!(paths.contains(&"host/outside/new") && paths.contains(&"linked"), "{tree:#?}");
    assert!(!paths.contains(&"host/outside/other"), "{tree:#?}");
    assert_eq!(read(&merged.path().join("linked")), "kept inside");
    let (want, got) = (vmimg_testserver::trees::describe(applied.path()), tree);
    let path_and_mode = |entry: &String| entry.split(' ').take(2).collect::<Vec<_>>().join(" ");
    assert_eq!(got.iter().map(path_and_mode).collect::<Vec<_>>(), want.iter().map(path_and_mode).collect::<Vec<_>>());
}

#[test]
fn merged_layers_make_the_ext4_applying_and_mke2fs_make() {
    use vmimg_testserver::mounts::skip_missing;
    let layers = layer_stack();
    let dir = tempfile::tempdir().unwrap();
    let (applied, from_tree, from_layers) =
        (dir.path().join("tree"), dir.path().join("tree.img"), dir.path().join("layers.img"));
    fs::create_dir(&applied).unwrap();
    apply(&applied, &layers).unwrap();
    let options = vmimg_rootfs::ext4::Ext4Options::default();
    vmimg_rootfs::ext4::build(&applied, &from_tree, &options).unwrap();
    let merged = merge(&layers);
    let summary = match vmimg_rootfs::ext4::build_merged(&merged, layer_reader(&layers), &from_layers, &options) {
        Err(e) if e.to_string().contains("cannot read a tar") => {
            return skip_missing(format!("mke2fs 1.47.1 or later, which reads a tar (-d -): {e}"));
        }
        built => built.unwrap(),
    };
    assert!(summary.free_bytes >= options.min_free_bytes, "{summary:?}");
    if let Some((want, got)) = mounted_trees(&from_tree, &from_layers, "ext4") {
        assert_eq!(got, want);
    }
}

/// The trees two images of type `fs` hold, mounted read-only (`None`, off
/// CI, where this host cannot mount them).
fn mounted_trees(a: &Path, b: &Path, fs: &str) -> Option<(Vec<String>, Vec<String>)> {
    use vmimg_testserver::mounts::{Mount, skip_missing};
    match (Mount::image_read_only(a, fs), Mount::image_read_only(b, fs)) {
        (Ok(a), Ok(b)) => {
            Some((vmimg_testserver::trees::describe(a.path()), vmimg_testserver::trees::describe(b.path())))
        }
        (Err(e), _) | (_, Err(e)) => {
            skip_missing(format!("mounting an {fs} image: {e}"));
            None
        }
    }
}

/// `archive` extracted by GNU cpio into `dir`, described.
fn cpio_extracted(archive: &[u8], dir: &Path) -> Vec<String> {
    let mut child = Command::new("cpio")
        .args(["-idmu", "--no-absolute-filenames", "--quiet"])
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("GNU cpio is needed: apt-get install cpio");
    child.stdin.take().unwrap().write_all(archive).unwrap();
    assert!(child.wait().unwrap().success());
    vmimg_testserver::trees::describe_cpio_extracted(dir)
}

#[test]
fn merged_layers_make_the_cpio_applying_makes() {
    let layers = layer_stack();
    let dir = tempfile::tempdir().unwrap();
    let (applied, from_tree, from_layers) = (dir.path().join("tree"), dir.path().join("a"), dir.path().join("b"));
    for path in [&applied, &from_tree, &from_layers] {
        fs::create_dir(path).unwrap();
    }
    apply(&applied, &layers).unwrap();
    let mut tree_archive = Vec::new();
    vmimg_rootfs::cpio::write_tree(&applied, &mut tree_archive).unwrap();
    let mut merged_archive = Vec::new();
    let summary =
        vmimg_rootfs::cpio::write_merged(&merge(&layers), layer_reader(&layers), &mut merged_archive).unwrap();
    assert_eq!(summary.bytes, merged_archive.len() as u64);

    let (want, got) = (cpio_extracted(&tree_archive, &from_tree), cpio_extracted(&merged_archive, &from_layers));
    assert_eq!(got, want);
    let entry = |path: &str| want.iter().find(|e| e.starts_with(&format!("{path} "))).unwrap().clone();
    assert!(entry("bin/su3").contains("None 0 2 "), "a hard link to the new su: {want:#?}");
    assert!(entry("dev/null").starts_with("dev/null 20666 0:0 0 [] None 259 "), "{want:#?}");
}

#[test]
fn merged_layers_make_the_erofs_applying_and_mkfs_erofs_make() {
    let layers = layer_stack();
    let dir = tempfile::tempdir().unwrap();
    let applied = dir.path().join("tree");
    let (from_tree, from_layers) = (dir.path().join("tree.img"), dir.path().join("layers.img"));
    fs::create_dir(&applied).unwrap();
    apply(&applied, &layers).unwrap();
    let options = vmimg_rootfs::erofs::ErofsOptions::default();
    vmimg_rootfs::erofs::build(&applied, &from_tree, &options).unwrap();
    vmimg_rootfs::erofs::build_merged(&merge(&layers), layer_reader(&layers), &from_layers, &options).unwrap();
    let Some((want, got)) = mounted_trees(&from_tree, &from_layers, "erofs") else { return };
    assert_eq!(got, want);
    let entry = |path: &str| want.iter().find(|e| e.starts_with(&format!("{path} "))).unwrap().clone();
    assert!(entry("dev/null").starts_with("dev/null 20666 0:0 0 [] None 259 "), "{want:#?}");
    assert!(entry("run/fifo").starts_with("run/fifo 10600 "), "{want:#?}");
    assert!(entry("home/u/f").contains("trusted.origin") && entry("home/u/f").contains("1000:100"), "{want:#?}");
}

/// The layer stack and a layer of what stresses an erofs writer: a
/// directory of several blocks, a long symlink, an empty file, a sparse
/// one, one of exactly two blocks, and compressible files of many extents
/// (text, zeros, text between random bytes, sizes around a block).
fn erofs_layers() -> Vec<Vec<u8>> {
    let mut big = Tar::default();
    for n in 0..700 {
        big = big.file(&format!("big/entry-with-a-longish-name-{n:04}"), format!("{n}").as_bytes());
    }
    let mut sparse = vec![0u8; 3 << 20];
    sparse[(2 << 20) + 5..(2 << 20) + 9].copy_from_slice(b"data");
    let text: Vec<u8> = (0..60_000u32).flat_map(|n| format!("line {n} of a text\n").into_bytes()).collect();
    let mut random = vec![0u8; 50_000];
    fs::File::open("/dev/urandom").unwrap().read_exact(&mut random).unwrap();
    let mixed = [&text[..9000], &random[..], &text[..20_000], &vec![0; 300_000][..], &text[..3]].concat();
    let extra = big
        .symlink("long", &"x/".repeat(1500))
        .file("empty", b"")
        .file("sparse", &sparse)
        .file("exact", &[7; 8192])
        .file("text", &text)
        .file("text-4095", &text[..4095])
        .file("text-4097", &text[..4097])
        .file("mixed", &mixed)
        .file("random", &random)
        .bytes();
    let mut layers = layer_stack().to_vec();
    layers.push(extra);
    layers
}

/// erofs is written by vmimg itself (no tree on the host), stored, LZ4 or
/// LZ4HC: each the same mounted tree as mkfs.erofs makes of the applied
/// layers with the same compression (and checked by `fsck.erofs
/// --extract`, which decodes every file, before it appears), and no more
/// than 5% bigger.
#[test]
fn merged_layers_make_the_erofs_mkfs_erofs_makes_in_every_compression() {
    use vmimg_rootfs::erofs::{Compression, ErofsOptions};
    let layers = erofs_layers();
    let dir = tempfile::tempdir().unwrap();
    let applied = dir.path().join("tree");
    fs::create_dir(&applied).unwrap();
    apply(&applied, &layers).unwrap();
    for compression in [Compression::None, Compression::Lz4, Compression::Lz4hc { level: 9 }] {
        let (from_tree, from_layers) = (dir.path().join("tree.img"), dir.path().join("layers.img"));
        let options = ErofsOptions { compression, ..ErofsOptions::default() };
        vmimg_rootfs::erofs::build(&applied, &from_tree, &options).unwrap();
        vmimg_rootfs::erofs::build_merged(&merge(&layers), layer_reader(&layers), &from_layers, &options).unwrap();
        if let Some((want, got)) = mounted_trees(&from_tree, &from_layers, "erofs") {
            assert_eq!(got, want, "{compression:?}");
        }
        let (native, mkfs) = (fs::metadata(&from_layers).unwrap().len(), fs::metadata(&from_tree).unwrap().len());
        assert!(native <= mkfs + mkfs / 20, "{compression:?}: vmimg's image {native} bytes, mkfs.erofs's {mkfs}");
    }
}

/// What a directory for mkfs.erofs could not carry, written natively: a
/// symlink's xattrs, two xattrs of one name in two namespaces.
#[test]
fn a_merged_erofs_carries_what_a_directory_cannot() {
    let carried = [Tar::default()
        .with(Item { link: "f", xattrs: &[("trusted.a", "1")], ..Item::new("l", b'2') })
        .with(Item { xattrs: &[("user.a", "1"), ("trusted.a", "2")], ..Item::new("f", b'0') })
        .bytes()];
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("carried.img");
    let options = vmimg_rootfs::erofs::ErofsOptions::default();
    vmimg_rootfs::erofs::build_merged(&merge(&carried), layer_reader(&carried), &image, &options).unwrap();
    let mount = match vmimg_testserver::mounts::Mount::image_read_only(&image, "erofs") {
        Ok(mount) => mount,
        Err(e) => return vmimg_testserver::mounts::skip_missing(format!("mounting an erofs image: {e}")),
    };
    let tree = vmimg_testserver::trees::describe(mount.path());
    let entry = |path: &str| tree.iter().find(|e| e.starts_with(&format!("{path} "))).unwrap().clone();
    assert!(entry("l").contains("trusted.a"), "{tree:#?}");
    assert!(entry("f").contains("trusted.a") && entry("f").contains("user.a"), "{tree:#?}");
}

#[test]
fn a_merged_erofs_refuses_what_erofs_cannot_hold() {
    let big = "v".repeat(70_000);
    let cases = [
        (Item { xattrs: &[("system.other", "1")], ..Item::new("f", b'0') }, "f: the xattr system.other"),
        (Item { xattrs: &[("user.big", &big)], ..Item::new("f", b'0') }, "f: the xattr user.big: over 64 KiB"),
        (Item { device: (4096, 0), ..Item::new("dev/x", b'3') }, "dev/x: device 4096:0"),
    ];
    for (item, says) in cases {
        let layers = [Tar::default().with(item).bytes()];
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        let options = vmimg_rootfs::erofs::ErofsOptions::default();
        let error =
            vmimg_rootfs::erofs::build_merged(&merge(&layers), layer_reader(&layers), &image, &options).unwrap_err();
        assert!(error.to_string().contains(says) && error.to_string().contains("ext4"), "{error}");
        assert!(!image.exists());
    }
}
