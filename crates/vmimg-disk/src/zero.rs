//! Zero detection and hole-keeping writes.
//!
//! A block that is all zeros is never written: the output was sized with
//! `set_len`, so unwritten blocks stay holes. Blocks are the 4 KiB filesystem
//! blocks of the output (aligned to output offsets), the granularity at which
//! `qemu-img convert -S 4k` makes holes, so the output never allocates more.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The hole granularity: one filesystem block.
pub const BLOCK: u64 = 4096;

/// True when every byte of `buf` is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    // OR-folding fixed chunks lets the compiler use wide vector registers.
    let mut chunks = buf.chunks_exact(64);
    let body = chunks.by_ref().all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0);
    body && chunks.remainder().iter().all(|&b| b == 0)
}

/// Writes `buf` at `offset` in `dst`, skipping every output block that `buf`
/// leaves all zero; returns the bytes written.
pub fn write_skipping_zeros(dst: &File, buf: &[u8], offset: u64) -> io::Result<u64> {
    let mut written = 0;
    let mut run: Option<usize> = None; // start (in buf) of the pending non-zero run
    let mut pos = 0usize;
    while pos < buf.len() {
        let block_end = ((offset + pos as u64) / BLOCK + 1) * BLOCK;
        let end = ((block_end - offset) as usize).min(buf.len());
        let zero = is_zero(&buf[pos..end]);
        match (zero, run) {
            (false, None) => run = Some(pos),
            (true, Some(start)) => {
                dst.write_all_at(&buf[start..pos], offset + start as u64)?;
                written += (pos - start) as u64;
                run = None;
            }
            _ => {}
        }
        pos = end;
    }
    if let Some(start) = run {
        dst.write_all_at(&buf[start..], offset + start as u64)?;
        written += (buf.len() - start) as u64;
    }
    Ok(written)
}

/// Punches holes in `target` wherever `model`, a sparse file holding the
/// same bytes, has one: the bytes stay, the blocks that held zeros go.
pub fn punch_holes_like(target: &File, model: &File) -> io::Result<()> {
    use rustix::fs::{FallocateFlags, fallocate};
    let len = model.metadata()?.len();
    for extent in crate::raw::raw_extents(model, len) {
        let extent = extent?;
        if extent.allocation == vmimg_qcow2::Allocation::Unallocated {
            fallocate(target, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, extent.start, extent.len)?;
        }
    }
    Ok(())
}
