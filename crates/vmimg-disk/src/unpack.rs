//! Compressed streams that disks are published in (Fedora CoreOS
//! `.qcow2.xz`, Flatcar `.img.bz2`, podman machine `.zst`, `.raw.gz`),
//! decoded as they are read, and a raw disk written sparse from a stream.
//!
//! Decoders come from well-kept crates: flate2 (on zlib-rs) for gzip, zstd,
//! liblzma for xz, bzip2 (on libbz2-rs). Each reads concatenated members or
//! frames, as the command-line tools do, and checks the format's own
//! checksums (gzip's CRC-32, xz's and zstd's when present, bzip2's CRC). A
//! decompressed stream is capped at [`MAX_UNPACKED`]: a bomb fails instead
//! of filling the host.

use crate::probe::Stream;
use crate::zero::write_skipping_zeros;
use std::fs::File;
use std::io::{self, Read};

/// The most bytes a compressed stream may decompress to.
pub const MAX_UNPACKED: u64 = 1 << 42;
/// Bytes read and written at a time.
const CHUNK: usize = 1 << 20;

/// A reader of the decompressed bytes of `src`, a `stream`-compressed
/// stream, failing past [`MAX_UNPACKED`].
pub fn decoder<'a>(stream: Stream, src: impl Read + Send + 'a) -> io::Result<Box<dyn Read + Send + 'a>> {
    let src = io::BufReader::with_capacity(CHUNK, src);
    let decoded: Box<dyn Read + Send + 'a> = match stream {
        Stream::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(src)),
        Stream::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(src)?),
        Stream::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(src)),
        Stream::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(src)),
    };
    Ok(Box::new(Capped { inner: decoded, left: MAX_UNPACKED, stream }))
}

struct Capped<R> {
    inner: R,
    left: u64,
    stream: Stream,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other(format!(
                "the {} stream decompresses to more than {MAX_UNPACKED} bytes",
                self.stream.name()
            ))
        })?;
        Ok(n)
    }
}

/// Reads up to `len` bytes from `src` (fewer only at its end).
pub fn read_head(src: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(len);
    src.take(len as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// Writes `head` and then the rest of `src` into `dst` from offset 0,
/// leaving a hole for every all-zero block, and sizes `dst` to the total.
/// Returns (bytes in the stream, bytes written).
pub fn write_sparse(head: &[u8], src: &mut impl Read, dst: &File) -> io::Result<(u64, u64)> {
    let mut written = write_skipping_zeros(dst, head, 0)?;
    let mut offset = head.len() as u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let filled = fill(src, &mut buf)?;
        if filled == 0 {
            break;
        }
        written += write_skipping_zeros(dst, &buf[..filled], offset)?;
        offset += filled as u64;
    }
    dst.set_len(offset)?;
    Ok((offset, written))
}

/// Fills `buf` as far as `src` goes: block-aligned writes keep holes exact.
fn fill(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn every_stream_decodes_concatenated_members() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (a, b) = data.split_at(100_000);
        let gzip = |part: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(part).unwrap();
            e.finish().unwrap()
        };
        // With its content checksum, as the zstd tool writes by default.
        let zstd = |part: &[u8]| {
            let mut e = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
            e.include_checksum(true).unwrap();
            e.write_all(part).unwrap();
            e.finish().unwrap()
        };
        let xz = |part: &[u8]| {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(part).unwrap();
            e.finish().unwrap()
        };
        let bzip2 = |part: &[u8]| {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(part).unwrap();
            e.finish().unwrap()
        };
        type Encoder<'a> = &'a dyn Fn(&[u8]) -> Vec<u8>;
        let encoders: [(Stream, Encoder); 4] =
            [(Stream::Gzip, &gzip), (Stream::Zstd, &zstd), (Stream::Xz, &xz), (Stream::Bzip2, &bzip2)];
        for (stream, encode) in encoders {
            let joined = [encode(a), encode(b)].concat();
            let mut out = Vec::new();
            decoder(stream, &joined[..]).unwrap().read_to_end(&mut out).unwrap();
            assert!(out == data, "{}", stream.name());
            let mut corrupt = joined.clone();
            let middle = corrupt.len() / 3;
            corrupt[middle] ^= 0x40;
            let mut out = Vec::new();
            let result = decoder(stream, &corrupt[..]).and_then(|mut d| d.read_to_end(&mut out));
            assert!(result.is_err(), "{}: a flipped byte decoded without an error", stream.name());
        }
    }
}
