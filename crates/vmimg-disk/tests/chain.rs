//! Trusted backing chains against QEMU: overlays made by `create_overlay`
//! (cluster sizes 512 B, 64 KiB and 2 MiB; virtual sizes 1 MiB, 20 GiB and
//! 1 TiB; raw and qcow2 backing files) read as their base, fresh and after
//! qemu-io wrote into them; a chain of three; backing files without a format
//! extension; and the chains refused: loops, too deep, and any overlay
//! through the untrusted `DiskImage::open`.

mod common;

use common::*;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use vmimg_disk::{DiskImage, Error, Format, MAX_CHAIN_DEPTH};
use vmimg_qcow2::{BackingFormat, OverlayOptions, create_overlay};

const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;
/// The base's size: not a whole number of clusters of any size above 512 B,
/// so every overlay reads past its end inside a cluster.
const BASE_SIZE: u64 = 8 * MIB + 1536;

/// The bases: a raw disk with data, written zeros and holes, and the same
/// disk as a qcow2 image whose cluster at 4 MiB is compressed, by the names
/// overlays give them.
fn bases(dir: &Path) -> [(BackingFormat, &'static str); 2] {
    let raw = mixed_raw(dir, BASE_SIZE);
    let qcow2 = qcow2_from(dir, &raw, "base.qcow2", &[]);
    qemu_io(&qcow2, &["write -c -P 0x5c 4M 64k"]); // into a hole of the raw disk: unallocated
    open_rw(&raw).write_all_at(&[0x5c; 64 << 10], 4 * MIB).unwrap();
    [(BackingFormat::Raw, "source.raw"), (BackingFormat::Qcow2, "base.qcow2")]
}

fn create(overlay: &Path, backing_file: &str, format: BackingFormat, size: u64, cluster_bits: u32) {
    let options = OverlayOptions { cluster_bits, ..OverlayOptions::new(backing_file, format, size) };
    create_overlay(&File::create(overlay).unwrap(), &options).unwrap();
}

/// Converts the chain at `overlay` with vmimg and with qemu-img, checks they
/// agree byte for byte (and vmimg allocates no more), and returns qemu-img's
/// output.
fn assert_chain_converts_like_qemu(overlay: &Path) -> PathBuf {
    let chain = DiskImage::open_chain(overlay, MAX_CHAIN_DEPTH).unwrap_or_else(|e| panic!("{e}"));
    assert_image_converts_like_qemu(&chain, Format::Qcow2)
}

/// What a fresh overlay of `size` bytes over the base reads as: the base's
/// bytes, cut or extended with zeros to `size`.
fn base_as(dir: &Path, size: u64) -> PathBuf {
    let expected = dir.join(format!("expected-{size}.raw"));
    let base = File::open(dir.join("source.raw")).unwrap();
    let out = File::create(&expected).unwrap();
    out.set_len(size).unwrap();
    let mut buf = vec![0; BASE_SIZE.min(size) as usize];
    base.read_exact_at(&mut buf, 0).unwrap();
    out.write_all_at(&buf, 0).unwrap();
    expected
}

fn qemu_check(image: &Path) {
    qemu_img(&["check", "-q", image.to_str().unwrap()]);
}

fn check_overlays(cluster_bits: u32) {
    let dir = tempfile::tempdir().unwrap();
    for (format, base) in bases(dir.path()) {
        for size in [MIB, 20 * GIB, TIB] {
            if cluster_bits == 9 && size == TIB {
                continue; // too large for 512 B clusters (vmimg-qcow2's tests/create.rs)
            }
            let overlay = dir.path().join(format!("{}-{size}.qcow2", format.name()));
            create(&overlay, base, format, size, cluster_bits);
            let fresh = assert_chain_converts_like_qemu(&overlay);
            assert_same_bytes(&fresh, &base_as(dir.path(), size));
            // Writes that cut the base's data runs, and its compressed cluster
            // at 4 MiB, into pieces read from different layers.
            let writes: &[&str] = if size > BASE_SIZE {
                &["write -P 0xab 1M 64k", "write -z 5M 64k", "write -P 0xcd 4112k 512"]
            } else {
                &["write -P 0xab 256k 64k", "write -z 512k 64k"]
            };
            qemu_io(&overlay, writes);
            qemu_check(&overlay);
            assert_chain_converts_like_qemu(&overlay);
        }
    }
}

#[test]
fn overlays_with_512_byte_clusters() {
    check_overlays(9);
}

#[test]
fn overlays_with_64k_clusters() {
    check_overlays(16);
}

#[test]
fn overlays_with_2m_clusters() {
    check_overlays(21);
}

/// raw ← qcow2 (zstd, written by qemu-io, compressed clusters too) ← overlay
/// in another directory, naming its backing file by a relative path, whose
/// own backing file is named by an absolute one.
#[test]
fn chain_of_three() {
    let dir = tempfile::tempdir().unwrap();
    let raw = mixed_raw(dir.path(), BASE_SIZE);
    let mid = dir.path().join("mid.qcow2");
    let (raw_name, mid_name) = (raw.to_str().unwrap(), mid.to_str().unwrap());
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", "-b", raw_name, "-F", "raw", mid_name]);
    qemu_io(&mid, &["write -P 0x11 2M 128k", "write -z 3M 64k", "write -c -P 0x22 6M 64k"]);
    std::fs::create_dir(dir.path().join("top")).unwrap();
    let top = dir.path().join("top/disk.qcow2");
    create(&top, "../mid.qcow2", BackingFormat::Qcow2, 16 * MIB, 16);
    qemu_io(&top, &["write -P 0x33 2112k 64k", "write -z 6M 4k", "write -P 0x44 12M 1M"]);
    qemu_check(&top);
    let chain = DiskImage::open_chain(&top, 2).unwrap();
    let formats: Vec<_> = std::iter::successors(Some(&chain), |i| i.backing()).map(DiskImage::format).collect();
    assert_eq!(formats, [Format::Qcow2, Format::Qcow2, Format::Raw]);
    assert_chain_converts_like_qemu(&top);
    let err = DiskImage::open_chain(&top, 1).err().expect("two backing files are one too many");
    assert!(matches!(err, Error::ChainTooDeep { max: 1, .. }), "{err}");
}

/// Without a backing format extension the backing file's format is probed.
/// An unknown format in the extension is refused.
#[test]
fn backing_format_probed_without_extension() {
    let dir = tempfile::tempdir().unwrap();
    for (format, base) in bases(dir.path()) {
        let overlay = dir.path().join(format!("{}-probed.qcow2", format.name()));
        create(&overlay, base, format, 12 * MIB, 16);
        // The extension starts at byte 104: make it the end of extensions.
        open_rw(&overlay).write_all_at(&[0; 4], 104).unwrap();
        qemu_io(&overlay, &["write -P 0xab 1M 64k"]);
        assert_chain_converts_like_qemu(&overlay);
    }
    let overlay = dir.path().join("unknown.qcow2");
    create(&overlay, "source.raw", BackingFormat::Raw, MIB, 16);
    open_rw(&overlay).write_all_at(b"xyz", 112).unwrap(); // the extension's data: "raw"
    let err = DiskImage::open_chain(&overlay, 1).err().expect("an unknown backing format is refused");
    assert!(matches!(&err, Error::UnknownFormat(f) if f == "xyz"), "{err}");
}

/// Loops are refused: an overlay naming itself, by its own name or a hard
/// link, and two overlays naming each other.
#[test]
fn loops_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    create(&p("self.qcow2"), "self.qcow2", BackingFormat::Qcow2, MIB, 16);
    create(&p("linked.qcow2"), "alias.qcow2", BackingFormat::Qcow2, MIB, 16);
    std::fs::hard_link(p("linked.qcow2"), p("alias.qcow2")).unwrap();
    create(&p("a.qcow2"), "b.qcow2", BackingFormat::Qcow2, MIB, 16);
    create(&p("b.qcow2"), "a.qcow2", BackingFormat::Qcow2, MIB, 16);
    for (top, names, named) in [
        ("self.qcow2", "self.qcow2", "self.qcow2"),
        ("linked.qcow2", "linked.qcow2", "alias.qcow2"),
        ("a.qcow2", "b.qcow2", "a.qcow2"),
    ] {
        let err = DiskImage::open_chain(&p(top), MAX_CHAIN_DEPTH).err().expect("a loop is refused");
        let Error::BackingLoop { path, backing } = &err else { panic!("{top}: {err}") };
        assert_eq!((path, backing), (&p(names), &p(named)), "{err}");
        assert!(err.to_string().contains("the backing chain loops"), "{err}");
    }
}

/// At most 16 backing files, whatever the caller asks; a chain of exactly
/// 16 reads as its base.
#[test]
fn deep_chains_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = mixed_raw(dir.path(), BASE_SIZE);
    let mut below = "source.raw".to_owned();
    let mut format = BackingFormat::Raw;
    for depth in 1..=MAX_CHAIN_DEPTH + 1 {
        let name = format!("layer-{depth}.qcow2");
        create(&dir.path().join(&name), &below, format, BASE_SIZE, 16);
        (below, format) = (name, BackingFormat::Qcow2);
    }
    let deepest = dir.path().join(format!("layer-{MAX_CHAIN_DEPTH}.qcow2"));
    let fresh = assert_chain_converts_like_qemu(&deepest);
    assert_same_bytes(&fresh, &base);
    let too_deep = dir.path().join(&below);
    for max_depth in [MAX_CHAIN_DEPTH, usize::MAX] {
        let err = DiskImage::open_chain(&too_deep, max_depth).err().expect("17 backing files are too many");
        assert!(matches!(&err, Error::ChainTooDeep { path, max: 16 } if *path == too_deep), "{err}");
        assert!(err.to_string().contains("deeper than 16 backing files"), "{err}");
    }
}

/// The untrusted way in still refuses every overlay; the trusted one opens
/// plain images as they are and names a missing backing file.
#[test]
fn untrusted_open_refuses_overlays() {
    let dir = tempfile::tempdir().unwrap();
    bases(dir.path());
    let overlay = dir.path().join("overlay.qcow2");
    create(&overlay, "source.raw", BackingFormat::Raw, MIB, 16);
    for format in [None, Some(Format::Qcow2)] {
        let err = DiskImage::open(&overlay, format).err().expect("an overlay from outside is refused");
        assert!(err.to_string().contains("refused: the image names a backing file \"source.raw\""), "{err}");
    }
    for plain in ["source.raw", "base.qcow2"] {
        let image = DiskImage::open_chain(&dir.path().join(plain), MAX_CHAIN_DEPTH).unwrap();
        assert!(image.backing().is_none());
    }
    create(&overlay, "missing.raw", BackingFormat::Raw, MIB, 16);
    let err = DiskImage::open_chain(&overlay, MAX_CHAIN_DEPTH).err().expect("a missing backing file is an error");
    assert!(
        err.to_string().contains("cannot open the backing file") && err.to_string().contains("missing.raw"),
        "{err}"
    );
}
