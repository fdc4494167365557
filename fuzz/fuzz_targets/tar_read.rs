//! Reads arbitrary bytes as an uncompressed tar archive, as an importer
//! would: every entry's metadata (ustar, GNU long names, PAX records, the
//! four sparse map formats) and its data through `read_data`.
//!
//! Small limits keep each input cheap. Any error is fine; a panic, an
//! abort, a hang or a huge allocation is a bug. So is data the reader hands
//! out of order: each piece must lie inside the entry's size and start at
//! or after the end of the previous one, and the pieces must add up to the
//! entry's segments.
//!
//! Nearly every mutation of a header breaks its checksum, which would keep
//! the fuzzer at the first header. So each input is read twice: as it is,
//! then (if that changes anything) with the checksum of every 512-byte
//! block that carries the ustar or GNU magic rewritten to match, as GNU tar
//! writes it. Headers always start on a block, and data blocks (PAX
//! records, names, sparse maps) rarely hold the magic, so this fixes the
//! headers and leaves the rest alone; v7 headers, which have no magic, get
//! the first read only. A crash in the second read replays from the same
//! file; for a regression test, take the bytes [`with_checksums`] makes of
//! it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmimg_tar::{Limits, Reader};

/// Entries read per input.
const MAX_ENTRIES: usize = 64;

const LIMITS: Limits = Limits { max_meta_bytes: 64 << 10, max_segments: 4096 };

fuzz_target!(|data: &[u8]| {
    read(data);
    let fixed = with_checksums(data);
    if fixed != data {
        read(&fixed);
    }
});

/// `data` with the checksum of each 512-byte block that holds the ustar
/// magic at offset 257 fixed: six octal digits, a NUL and a space.
fn with_checksums(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    for block in out.chunks_exact_mut(512) {
        if &block[257..262] != b"ustar" {
            continue;
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }
    out
}

/// Reads every entry (up to [`MAX_ENTRIES`]) and most entries' data.
fn read(data: &[u8]) {
    let mut reader = Reader::new(data, LIMITS);
    for _ in 0..MAX_ENTRIES {
        let Ok(Some(entry)) = reader.next_entry() else { return };
        // Leave some entries' data unread, so next_entry skips it.
        if entry.mtime % 2 == 1 {
            continue;
        }
        let (size, path) = (entry.size, entry.path_lossy());
        let mut end = 0u64;
        let mut total = 0u64;
        let read = reader.read_data(&mut |offset, piece| {
            let piece_end = offset.checked_add(piece.len() as u64);
            assert!(
                piece_end.is_some_and(|e| e <= size),
                "{path:?}: a piece of {} bytes at {offset} runs past the entry's size {size}",
                piece.len()
            );
            assert!(offset >= end, "{path:?}: a piece at {offset} overlaps or goes back before {end}");
            end = offset + piece.len() as u64;
            total += piece.len() as u64;
            Ok(())
        });
        if read.is_err() {
            return;
        }
        let segments: u64 = entry.segments.iter().map(|s| s.len).sum();
        assert_eq!(total, segments, "{path:?}: the pieces do not add up to the segments");
    }
}
