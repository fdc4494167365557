//! Images whose tables overlap or loop, made by patching real qemu-img
//! images: each must be refused with a clear error, in time bounded by the
//! file size, by both the map walk and the converter.

mod common;

use common::*;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use vmimg_disk::{ConvertOptions, DiskImage};
use vmimg_qcow2::Qcow2;

/// A 2 GiB qcow2 (64 KiB clusters, so one L2 table maps 512 MiB) with data
/// in the first two L2 ranges.
fn two_table_image(dir: &Path) -> PathBuf {
    let image = dir.join("tables.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", image.to_str().unwrap(), "2G"]);
    qemu_io(&image, &["write -P 0x11 0 128k", "write -P 0x22 512M 64k"]);
    image
}

fn be_u64_at(file: &File, offset: u64) -> u64 {
    let mut b = [0u8; 8];
    file.read_exact_at(&mut b, offset).unwrap();
    u64::from_be_bytes(b)
}

fn set_be_u64(file: &File, offset: u64, value: u64) {
    file.write_all_at(&value.to_be_bytes(), offset).unwrap();
}

/// (L1 table offset, L2 table offset of L1 entry 0) of `image`.
fn tables(file: &File) -> (u64, u64) {
    let l1 = be_u64_at(file, 40);
    (l1, be_u64_at(file, l1) & 0x00ff_ffff_ffff_fe00)
}

fn assert_loop_refused(image: &Path) {
    let img = Qcow2::open(File::open(image).unwrap()).unwrap();
    let err = img.extents(0).find_map(Result::err).expect("the walk must fail");
    assert!(err.to_string().contains("overlap or loop"), "{err}");
    let dst = image.with_extension("raw");
    let src = DiskImage::open(image, None).unwrap();
    let err = vmimg_disk::convert_to_path(&src, &dst, &ConvertOptions::default()).unwrap_err();
    assert!(err.to_string().contains("overlap or loop"), "{err}");
    assert!(!dst.exists());
}

#[test]
fn two_l1_entries_sharing_an_l2_table() {
    let dir = tempfile::tempdir().unwrap();
    let image = two_table_image(dir.path());
    let file = open_rw(&image);
    let (l1, _) = tables(&file);
    set_be_u64(&file, l1 + 8, be_u64_at(&file, l1));
    assert_loop_refused(&image);
}

#[test]
fn one_data_cluster_mapped_twice() {
    let dir = tempfile::tempdir().unwrap();
    let image = two_table_image(dir.path());
    let file = open_rw(&image);
    let (_, l2) = tables(&file);
    set_be_u64(&file, l2 + 8, be_u64_at(&file, l2));
    assert_loop_refused(&image);
}

#[test]
fn l2_table_on_top_of_the_l1_table() {
    let dir = tempfile::tempdir().unwrap();
    let image = two_table_image(dir.path());
    let file = open_rw(&image);
    let (l1, _) = tables(&file);
    set_be_u64(&file, l1, l1 | 1 << 63);
    assert_loop_refused(&image);
}

#[test]
fn data_cluster_on_top_of_an_l2_table() {
    let dir = tempfile::tempdir().unwrap();
    let image = two_table_image(dir.path());
    let file = open_rw(&image);
    let (_, l2) = tables(&file);
    set_be_u64(&file, l2, l2 | 1 << 63);
    assert_loop_refused(&image);
}
