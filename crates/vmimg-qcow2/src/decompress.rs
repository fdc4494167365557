//! Decompression of single compressed clusters.
//!
//! A compressed cluster's descriptor covers whole 512-byte sectors, so the
//! bytes handed in usually run past the end of the compressed stream into
//! the next cluster's data. Like QEMU, a cluster is good when the stream fills
//! exactly one cluster: zlib (raw deflate) may stop at the output's end, zstd
//! may be split into several frames and trailing bytes are ignored. The output
//! buffer is the bound: a stream that would produce more than a cluster is
//! cut off (zlib) or refused (zstd), never allowed to grow memory.

use crate::error::{Error, Result};
use crate::header::Compression;
use flate2::{Decompress, FlushDecompress, Status};

/// A reusable decompressor for one compression type; keep one per thread.
pub struct ClusterDecoder {
    kind: Decoder,
}

enum Decoder {
    Zlib(Box<Decompress>),
    Zstd(Box<zstd::bulk::Decompressor<'static>>),
}

impl ClusterDecoder {
    pub fn new(compression: Compression) -> Result<Self> {
        let kind = match compression {
            Compression::Zlib => Decoder::Zlib(Box::new(Decompress::new(false))),
            Compression::Zstd => Decoder::Zstd(Box::new(zstd::bulk::Decompressor::new().map_err(|e| {
                Error::Decompress { host_offset: 0, reason: format!("cannot create a zstd context: {e}") }
            })?)),
        };
        Ok(ClusterDecoder { kind })
    }

    /// Decompresses `input` (read from `host_offset`, for error messages) so
    /// that it fills `output` exactly.
    pub fn decompress(&mut self, input: &[u8], output: &mut [u8], host_offset: u64) -> Result<()> {
        let outcome = match &mut self.kind {
            Decoder::Zlib(z) => inflate(z, input, output),
            Decoder::Zstd(z) => unzstd(z, input, output),
        };
        outcome.map_err(|reason| Error::Decompress { host_offset, reason })
    }
}

fn inflate(z: &mut Decompress, input: &[u8], output: &mut [u8]) -> Result<(), String> {
    z.reset(false);
    let status = z.decompress(input, output, FlushDecompress::Finish).map_err(|e| format!("deflate: {e}"))?;
    let produced = z.total_out() as usize;
    match status {
        Status::StreamEnd | Status::BufError | Status::Ok if produced == output.len() => Ok(()),
        _ => Err(format!("deflate stream ended after {produced} bytes, short of the {}-byte cluster", output.len())),
    }
}

fn unzstd(z: &mut zstd::bulk::Decompressor<'static>, input: &[u8], output: &mut [u8]) -> Result<(), String> {
    let (mut read, mut written) = (0, 0);
    while written < output.len() {
        let rest = &input[read..];
        let frame = zstd::zstd_safe::find_frame_compressed_size(rest)
            .map_err(|code| format!("zstd frame at byte {read}: {}", zstd::zstd_safe::get_error_name(code)))?;
        let n = z
            .decompress_to_buffer(&rest[..frame], &mut output[written..])
            .map_err(|e| format!("zstd frame at byte {read}: {e}"))?;
        if n == 0 {
            return Err(format!("zstd frame at byte {read} is empty; the cluster is not filled"));
        }
        read += frame;
        written += n;
    }
    Ok(())
}
