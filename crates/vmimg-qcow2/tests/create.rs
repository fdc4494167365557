//! Overlays made by `create_overlay`, checked by qemu-img (`check` finds no
//! error and no leak; `info` reads back the backing file, its format and the
//! virtual size) and by this crate's reader, for cluster sizes 512 B, 64 KiB
//! and 2 MiB, virtual sizes 1 MiB, 20 GiB and 1 TiB, raw and qcow2 backing
//! files; plus the options refused and the bytes a 1 TiB overlay allocates.

use serde_json::Value;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use vmimg_qcow2::{Allocation, BackingFormat, Compression, Error, OpenOptions, OverlayOptions, Qcow2, create_overlay};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// Runs qemu-img; panics with its stderr unless it exits 0.
fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img").args(args).output().expect("qemu-img runs");
    assert!(out.status.success(), "qemu-img {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn qemu_json(args: &[&str]) -> Value {
    serde_json::from_str(&qemu_img(args)).expect("qemu-img prints JSON")
}

/// A raw and a qcow2 base image of 1 MiB in `dir`, by the names overlays give them.
fn bases(dir: &Path) -> [(BackingFormat, &'static str); 2] {
    std::fs::write(dir.join("base.raw"), vec![0x5a; MIB as usize]).unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", dir.join("base.qcow2").to_str().unwrap(), "1M"]);
    [(BackingFormat::Raw, "base.raw"), (BackingFormat::Qcow2, "base.qcow2")]
}

fn create_at(path: &Path, options: &OverlayOptions) -> Result<(), Error> {
    create_overlay(&File::create(path).unwrap(), options)
}

fn options(backing_file: &str, backing_format: BackingFormat, virtual_size: u64, cluster_bits: u32) -> OverlayOptions {
    OverlayOptions { cluster_bits, ..OverlayOptions::new(backing_file, backing_format, virtual_size) }
}

/// `qemu-img check` exits 0 (no corruption, no leak) and says so in its JSON.
fn assert_check_clean(image: &Path) {
    let report = qemu_json(&["check", "--output=json", image.to_str().unwrap()]);
    assert_eq!(report["check-errors"], 0, "{}: {report}", image.display());
    for key in ["corruptions", "leaks", "leaks-fixed", "corruptions-fixed"] {
        assert!(report.get(key).is_none_or(|v| v == 0), "{}: {key} in {report}", image.display());
    }
}

/// `qemu-img info` reads back what was asked for.
fn assert_info(image: &Path, options: &OverlayOptions) {
    let info = qemu_json(&["info", "--output=json", image.to_str().unwrap()]);
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], options.virtual_size.next_multiple_of(512));
    assert_eq!(info["cluster-size"], 1u64 << options.cluster_bits);
    assert_eq!(info["backing-filename"], options.backing_file.as_str());
    assert_eq!(info["backing-filename-format"], options.backing_format.name());
    let data = &info["format-specific"]["data"];
    assert_eq!(data["compat"], "1.1");
    assert_eq!(data["refcount-bits"], 16);
    assert_eq!(data["compression-type"], "zlib");
    assert_eq!(data["corrupt"], false);
}

/// This crate's reader refuses the overlay by default, and with backing
/// files allowed reports the backing file and its format and maps the whole
/// disk as unallocated.
fn assert_reads_back(image: &Path, options: &OverlayOptions) {
    let refused = Qcow2::open(File::open(image).unwrap()).err().expect("an overlay is refused by default");
    assert!(matches!(&refused, Error::BackingFileRefused { path } if *path == options.backing_file), "{refused}");
    let allow = OpenOptions { allow_backing_file: true };
    let img = Qcow2::open_with(File::open(image).unwrap(), allow).unwrap();
    let h = img.header();
    assert_eq!(h.backing_file.as_deref(), Some(options.backing_file.as_str()));
    assert_eq!(h.backing_format.as_deref(), Some(options.backing_format.name()));
    assert_eq!((h.version, h.header_length, h.refcount_order), (3, 104, 4));
    assert_eq!((h.incompatible_features, h.compatible_features, h.autoclear_features), (0, 0, 0));
    assert_eq!(h.compression, Compression::Zlib);
    assert_eq!(h.cluster_bits, options.cluster_bits);
    let extents: Vec<_> = img.extents(0).map(Result::unwrap).collect();
    assert_eq!(extents.len(), 1, "{extents:?}");
    assert_eq!((extents[0].len, extents[0].allocation), (img.virtual_size(), Allocation::Unallocated));
}

fn check_cluster_size(cluster_bits: u32) {
    let dir = tempfile::tempdir().unwrap();
    for (format, base) in bases(dir.path()) {
        for size in [MIB, 20 * GIB, TIB] {
            let overlay = dir.path().join(format!("{base}-{size}.qcow2"));
            let options = options(base, format, size, cluster_bits);
            if cluster_bits == 9 && size == TIB {
                let err = create_at(&overlay, &options).unwrap_err();
                assert!(err.to_string().contains("32 MiB L1 limit"), "{err}");
                continue;
            }
            create_at(&overlay, &options).unwrap();
            assert_check_clean(&overlay);
            assert_info(&overlay, &options);
            assert_reads_back(&overlay, &options);
        }
    }
}

#[test]
fn cluster_size_512() {
    check_cluster_size(9);
}

#[test]
fn cluster_size_64k() {
    check_cluster_size(16);
}

#[test]
fn cluster_size_2m() {
    check_cluster_size(21);
}

/// With 512 B clusters the largest disk (128 GiB, a 32 MiB L1 table) needs
/// hundreds of refcount blocks and a refcount table of several clusters;
/// one sector more is refused.
#[test]
fn largest_disk_has_exact_refcounts() {
    let dir = tempfile::tempdir().unwrap();
    bases(dir.path());
    let overlay = dir.path().join("largest.qcow2");
    let largest = options("base.raw", BackingFormat::Raw, 128 * GIB, 9);
    create_at(&overlay, &largest).unwrap();
    assert_check_clean(&overlay);
    let img = Qcow2::open_with(File::open(&overlay).unwrap(), OpenOptions { allow_backing_file: true }).unwrap();
    assert_eq!(img.header().l1_size, 4 << 20);
    assert!(img.header().refcount_table_clusters > 1, "{:?}", img.header());
    let err = create_at(&overlay, &OverlayOptions { virtual_size: 128 * GIB + 1, ..largest }).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
}

/// Only metadata is written: a 1 TiB overlay is a few clusters long and
/// allocates a few KiB (its L1 table is a hole).
#[test]
fn a_terabyte_overlay_allocates_a_few_kib() {
    let dir = tempfile::tempdir().unwrap();
    for (cluster_bits, clusters) in [(16, 4), (21, 4)] {
        let overlay = dir.path().join(format!("big-{cluster_bits}.qcow2"));
        create_at(&overlay, &options("/nowhere/base.raw", BackingFormat::Raw, TIB, cluster_bits)).unwrap();
        let meta = overlay.metadata().unwrap();
        assert_eq!(meta.len(), clusters << cluster_bits, "header, refcount table and block, L1 table");
        assert!(meta.blocks() * 512 <= 32 << 10, "{} bytes allocated", meta.blocks() * 512);
    }
}

/// Sizes round up to whole sectors, as qemu-img rounds them; a file that
/// held something is replaced; an absolute backing file name is kept as is.
#[test]
fn rounds_sizes_and_replaces_contents() {
    let dir = tempfile::tempdir().unwrap();
    bases(dir.path());
    let overlay = dir.path().join("overlay.qcow2");
    std::fs::write(&overlay, vec![0xff; 3 * MIB as usize]).unwrap();
    let base = dir.path().join("base.qcow2");
    let options = OverlayOptions::new(base.to_str().unwrap(), BackingFormat::Qcow2, 1000);
    create_overlay(&std::fs::OpenOptions::new().write(true).open(&overlay).unwrap(), &options).unwrap();
    assert_check_clean(&overlay);
    assert_info(&overlay, &options);
    assert_eq!(qemu_json(&["info", "--output=json", overlay.to_str().unwrap()])["virtual-size"], 1024);
}

#[test]
fn refuses_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    let overlay: PathBuf = dir.path().join("refused.qcow2");
    let good = options("base.raw", BackingFormat::Raw, MIB, 16);
    let cases = [
        (OverlayOptions { cluster_bits: 8, ..good.clone() }, "cluster_bits is 8"),
        (OverlayOptions { cluster_bits: 22, ..good.clone() }, "cluster_bits is 22"),
        (OverlayOptions { virtual_size: 0, ..good.clone() }, "virtual size 0 is out of range"),
        (OverlayOptions { virtual_size: u64::MAX, ..good.clone() }, "out of range"),
        (OverlayOptions { backing_file: String::new(), ..good.clone() }, "is 0 bytes; it must be 1 to 1023 bytes"),
        (OverlayOptions { backing_file: "a".repeat(1024), ..good.clone() }, "is 1024 bytes"),
        (OverlayOptions { backing_file: "a\0b".into(), ..good.clone() }, "\"a\\0b\" contains a NUL byte"),
        (options(&"a".repeat(385), BackingFormat::Raw, MIB, 9), "at most 384 fit the header cluster"),
    ];
    for (options, expected) in cases {
        let err = create_at(&overlay, &options).unwrap_err();
        assert!(matches!(err, Error::Create(_)), "{err:?}");
        assert!(err.to_string().contains(expected), "{err} (expected {expected:?})");
    }
    // The longest names that fit, both naming base.raw: "././…/base.raw".
    bases(dir.path());
    for (cluster_bits, len) in [(9, 384), (16, 1023)] {
        let name = format!("{}/base.raw", "./".repeat((len - 9) / 2)).replacen("/", "//", (len - 9) % 2);
        assert_eq!(name.len(), len);
        let fits = options(&name, BackingFormat::Raw, MIB, cluster_bits);
        create_at(&overlay, &fits).unwrap();
        assert_check_clean(&overlay);
        assert_info(&overlay, &fits);
        assert_reads_back(&overlay, &fits);
    }
}
