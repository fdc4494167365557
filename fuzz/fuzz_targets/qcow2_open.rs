//! Opens arbitrary bytes as a qcow2 image and uses it as a converter would:
//! the header and extension parser, the policy checks, the L1/L2 walk and the
//! reader with both decompressors.
//!
//! The full allocation map is walked (the reader bounds it by the file size)
//! and checked to tile the virtual disk; reads cover at most [`MAX_READ`]
//! bytes (the start and the end of the disk) so each input stays fast. Any
//! error is fine; a panic, an abort, a hang or a huge allocation is a bug.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmimg_qcow2::{Extent, OpenOptions, Qcow2};

/// Virtual bytes read per input, split between the disk's start and end.
const MAX_READ: u64 = 4 << 20;
/// Bytes per `read_at`, odd so reads start inside clusters too.
const CHUNK: u64 = (64 << 10) + 7;

fuzz_target!(|data: &[u8]| {
    // The policy refuses backing files; accept them on a second open so the
    // fuzzer can still reach the tables of images that name one.
    let _ = Qcow2::open(data);
    if let Ok(img) = Qcow2::open_with(data, OpenOptions { allow_backing_file: true }) {
        walk(&img);
        read(&img);
    }
});

/// Walks the whole map; where it succeeds, it must tile the disk.
fn walk(img: &Qcow2<&[u8]>) {
    let mut end = 0;
    for extent in img.extents(0) {
        let Ok(Extent { start, len, .. }) = extent else { return };
        assert_eq!(start, end, "extents leave a gap or overlap");
        assert!(len > 0, "an empty extent");
        end = start + len;
    }
    assert_eq!(end, img.virtual_size(), "the map stops short of the virtual size");
}

/// Reads the first and last `MAX_READ / 2` bytes of the disk.
fn read(img: &Qcow2<&[u8]>) {
    let Ok(mut decoder) = img.decoder() else { return };
    let size = img.virtual_size();
    let half = MAX_READ / 2;
    let ranges = [0..size.min(half), size.saturating_sub(half).max(half.min(size))..size];
    let mut buf = vec![0; CHUNK as usize];
    for range in ranges {
        let mut offset = range.start;
        while offset < range.end {
            let len = CHUNK.min(range.end - offset);
            if img.read_at(&mut buf[..len as usize], offset, &mut decoder).is_err() {
                break;
            }
            offset += len;
        }
    }
}
