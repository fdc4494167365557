//! vmimg's conversion against qemu-img's, byte for byte and block for block,
//! on images qemu-img and qemu-io make: every cluster size, compression type
//! and qcow2 version, zero clusters (plain and preallocated), extended L2
//! subclusters, unallocated ranges, preallocated images and raw sources.

mod common;

use common::*;
use std::fs::File;
use std::path::Path;
use vmimg_disk::{ConvertOptions, DiskImage, Format};
use vmimg_qcow2::{Allocation, Qcow2};

/// An unaligned (not a multiple of any cluster size above 512) virtual size.
const SIZE: u64 = 8 * MIB + 1536;

fn check_matrix(cluster_size: &str) {
    let dir = tempfile::tempdir().unwrap();
    let raw = mixed_raw(dir.path(), SIZE);
    let variants: &[(&str, &[&str])] = &[
        ("v2", &["-o", "compat=0.10"]),
        ("v2-zlib", &["-c", "-o", "compat=0.10"]),
        ("v3", &[]),
        ("v3-zlib", &["-c"]),
        ("v3-zstd", &["-c", "-o", "compression_type=zstd"]),
    ];
    for (name, extra) in variants {
        let mut args = extra.to_vec();
        let cluster_opt = format!("cluster_size={cluster_size}");
        args.extend(["-o", &cluster_opt]);
        let image = qcow2_from(dir.path(), &raw, &format!("{name}-{cluster_size}.qcow2"), &args);
        assert_converts_like_qemu(&image, None);
    }
}

#[test]
fn cluster_size_512() {
    check_matrix("512");
}

#[test]
fn cluster_size_4k() {
    check_matrix("4k");
}

#[test]
fn cluster_size_64k() {
    check_matrix("64k");
}

#[test]
fn cluster_size_2m() {
    check_matrix("2M");
}

fn allocations(image: &Path) -> Vec<Allocation> {
    let img = Qcow2::open(File::open(image).unwrap()).unwrap();
    img.extents(0).map(|e| e.unwrap().allocation).collect()
}

fn has(allocs: &[Allocation], pred: impl Fn(&Allocation) -> bool) -> bool {
    allocs.iter().any(pred)
}

#[test]
fn zero_clusters_plain_and_preallocated() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("zeros.qcow2");
    qemu_img(&["create", "-f", "qcow2", image.to_str().unwrap(), "16M"]);
    qemu_io(
        &image,
        &[
            "write -P 0xaa 0 4M",
            "write -z 64k 128k",    // allocated clusters zeroed in place: preallocated zero
            "write -z -u 1M 192k",  // zeroed and unmapped: plain zero
            "write -z 8M 1M",       // never allocated: plain zero
            "write -P 0x55 3M 100", // data inside a cluster that stays allocated
        ],
    );
    let allocs = allocations(&image);
    assert!(has(&allocs, |a| *a == Allocation::Zero), "fixture has zero clusters: {allocs:?}");
    assert_converts_like_qemu(&image, None);
}

#[test]
fn zero_writes_in_v2_images() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("v2zeros.qcow2");
    qemu_img(&["create", "-f", "qcow2", "-o", "compat=0.10", image.to_str().unwrap(), "8M"]);
    qemu_io(&image, &["write -P 0x11 0 2M", "write -z 512k 512k", "write -z 6M 1M"]);
    assert_converts_like_qemu(&image, None);
}

#[test]
fn extended_l2_subclusters() {
    let dir = tempfile::tempdir().unwrap();
    for cluster in ["64k", "2M"] {
        let image = dir.path().join(format!("extl2-{cluster}.qcow2"));
        let opts = format!("extended_l2=on,cluster_size={cluster}");
        qemu_img(&["create", "-f", "qcow2", "-o", &opts, image.to_str().unwrap(), "12M"]);
        qemu_io(
            &image,
            &[
                "write -P 0x11 0 4k",      // first subcluster(s) of cluster 0
                "write -P 0x22 70k 2k",    // one 2 KiB subcluster (64k clusters)
                "write -z 8k 4k",          // zero subcluster beside data
                "write -P 0x33 1M 300k",   // several whole and partial subclusters
                "write -z 1088k 64k",      // zero run inside allocated data
                "write -P 0x44 5M 1k",     // a partial subcluster (copy-on-write)
                "write -z 9M 512k",        // zero subclusters in an unallocated cluster
                "write -P 0x66 12287k 1k", // the last bytes of the disk
            ],
        );
        let allocs = allocations(&image);
        assert!(has(&allocs, |a| *a == Allocation::Zero), "{cluster}: zero subclusters: {allocs:?}");
        assert!(has(&allocs, |a| *a == Allocation::Unallocated), "{cluster}: unallocated subclusters");
        assert_converts_like_qemu(&image, None);
    }
}

#[test]
fn extended_l2_with_compressed_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let raw = mixed_raw(dir.path(), SIZE);
    for comp in ["zlib", "zstd"] {
        let opts = format!("extended_l2=on,compression_type={comp}");
        let image = qcow2_from(dir.path(), &raw, &format!("extl2-{comp}.qcow2"), &["-c", "-o", &opts]);
        assert!(has(&allocations(&image), |a| matches!(a, Allocation::Compressed { .. })));
        assert_converts_like_qemu(&image, None);
    }
}

#[test]
fn preallocated_images_with_zero_data_become_holes() {
    let dir = tempfile::tempdir().unwrap();
    for mode in ["metadata", "falloc", "full"] {
        let image = dir.path().join(format!("prealloc-{mode}.qcow2"));
        let opt = format!("preallocation={mode}");
        qemu_img(&["create", "-f", "qcow2", "-o", &opt, image.to_str().unwrap(), "16M"]);
        qemu_io(&image, &["write -P 0x77 1M 100k", "write -z 2M 64k"]);
        assert_converts_like_qemu(&image, None);
    }
}

#[test]
fn large_sparse_virtual_disk() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("sparse.qcow2");
    qemu_img(&["create", "-f", "qcow2", image.to_str().unwrap(), "40G"]);
    qemu_io(&image, &["write -P 0x12 0 64k", "write -P 0x34 20G 1M", "write -P 0x56 40959M 1M"]);
    assert_converts_like_qemu(&image, None);
    assert!(allocated(&dir.path().join("sparse.qcow2.vmimg.raw")) < 4 * MIB);
}

#[test]
fn raw_sources_keep_holes_and_drop_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let raw = mixed_raw(dir.path(), 12 * MIB);
    assert_converts_like_qemu(&raw, Some(Format::Raw));
    assert_converts_like_qemu(&raw, None);
}

#[test]
fn a_file_given_as_raw_that_starts_with_an_image_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let raw = mixed_raw(dir.path(), 4 * MIB);
    let image = qcow2_from(dir.path(), &raw, "looks-like-qcow2.qcow2", &["-c"]);
    let err = DiskImage::open(&image, Some(Format::Raw)).err().expect("a qcow2 header given as raw");
    assert!(matches!(err, vmimg_disk::Error::HeaderInRaw { .. }), "{err:?}");
    assert!(err.to_string().contains("starts with a qcow2 image header"), "{err}");
    // The attack: a qcow2 header naming a host file, to be published as a raw disk.
    let evil = dir.path().join("evil.img");
    qemu_img(&["create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/passwd", evil.to_str().unwrap(), "1M"]);
    let err = DiskImage::open(&evil, Some(Format::Raw)).err().expect("a qcow2 header given as raw");
    assert!(err.to_string().contains("naming backing file \"/etc/passwd\""), "{err}");
}

#[test]
fn a_qcow2_whose_disk_starts_with_an_image_header_is_not_converted() {
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("inner.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/shadow", inner.to_str().unwrap(), "1M"]);
    let outer = dir.path().join("outer.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", inner.to_str().unwrap(), outer.to_str().unwrap()]);
    let src = DiskImage::open(&outer, None).unwrap();
    let out = dir.path().join("out.raw");
    let err = vmimg_disk::convert_to_path(&src, &out, &ConvertOptions::default()).unwrap_err();
    assert!(err.to_string().contains("/etc/shadow"), "{err}");
    assert!(!out.exists());
}

#[test]
fn read_at_matches_qemu_for_scattered_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let raw = mixed_raw(dir.path(), SIZE);
    let image = qcow2_from(dir.path(), &raw, "ranges.qcow2", &["-c", "-o", "cluster_size=4k,compression_type=zstd"]);
    let img = Qcow2::open(File::open(&image).unwrap()).unwrap();
    let mut decoder = img.decoder().unwrap();
    let expected = std::fs::read(&raw).unwrap();
    let mut offset = 0u64;
    let mut len = 1usize;
    while offset < SIZE {
        let n = len.min((SIZE - offset) as usize);
        let mut buf = vec![0xffu8; n];
        img.read_at(&mut buf, offset, &mut decoder).unwrap();
        assert!(buf == expected[offset as usize..][..n], "range {offset}+{n} differs");
        offset += n as u64 + 333;
        len = len * 3 + 7;
        len %= 3 * MIB as usize;
    }
}
