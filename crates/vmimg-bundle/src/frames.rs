//! The zstd frame layout of a compressed bundle, followed as its bytes pass
//! on their way to the decoder.
//!
//! zstd checks a frame's content checksum (XXH64 of what it decompressed)
//! at the frame's end, and only when the frame declares one. [`Frames`]
//! walks the frame structure of the compressed stream (frame headers,
//! block headers, skippable frames; RFC 8878 §3.1) without decoding it, so
//! that an import can insist on what the decoder alone does not:
//!
//! - with [`Integrity::FrameChecksums`], every zstd frame declares a
//!   content checksum, refused at the frame's header (before its data);
//! - the stream is one or more whole frames: input that ends inside a frame
//!   (a truncated file), an empty input or bytes after the last frame that
//!   do not start another frame are refused.
//!
//! It judges nothing else: block contents, window sizes, the checksums
//! themselves are the decoder's. Skippable frames are allowed (`pzstd`
//! writes them): they hold nothing the decoder outputs.

use std::io::{self, Read};

/// Who vouches for the bundle's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// The frames: every zstd frame must carry its content checksum, which
    /// the decoder verifies at the frame's end.
    FrameChecksums,
    /// The caller, who checks the whole file's digest and discards the
    /// import on a mismatch: frames without a checksum are accepted (those
    /// with one are still verified).
    CallerDigest,
}

/// A zstd frame that carries no content checksum, where
/// [`Integrity::FrameChecksums`] wants every one to (it travels inside an
/// `io::Error` through the decoder and the tar reader; the import makes it
/// `bundle::Error::UncheckedFrame`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "its zstd frame {frame} carries no content checksum, so a corrupt byte would go unnoticed: compress it with \
     checksums (zstd's default, `zstd -C`), or give the bundle's digest to check it by"
)]
pub struct UncheckedFrame {
    /// The frame's number, from 1.
    pub frame: u64,
}

const ZSTD_MAGIC: u32 = 0xFD2F_B528;
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
const SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;

/// Whether `head`, a file's first bytes, starts a zstd or skippable frame,
/// or could (a head shorter than a magic number that begins one).
pub(crate) fn starts_like_a_frame(head: &[u8]) -> bool {
    let n = head.len().min(4);
    let (zstd, skippable) = (ZSTD_MAGIC.to_le_bytes(), SKIPPABLE_MAGIC.to_le_bytes());
    let skippable_start = n > 0 && head[0] & 0xF0 == skippable[0] && head[1..n] == skippable[1..n];
    head[..n] == zstd[..n] || skippable_start
}

/// The next field of the frame structure to read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Magic,
    FrameDescriptor,
    SkippableSize,
    BlockHeader,
}

impl Field {
    fn len(self) -> usize {
        match self {
            Field::Magic | Field::SkippableSize => 4,
            Field::FrameDescriptor => 1,
            Field::BlockHeader => 3,
        }
    }
}

/// A reader that follows the frame structure of the zstd stream read
/// through it and fails as soon as it breaks a rule of the module's.
pub struct Frames<R> {
    inner: R,
    integrity: Integrity,
    field: Field,
    /// The bytes of `field` read so far.
    pending: [u8; 4],
    have: usize,
    /// Bytes to pass over before `field` starts.
    skip: u64,
    /// Whether the current frame ends with a checksum.
    checksum: bool,
    /// zstd frames begun.
    frames: u64,
}

impl<R> Frames<R> {
    pub fn new(inner: R, integrity: Integrity) -> Self {
        Frames { inner, integrity, field: Field::Magic, pending: [0; 4], have: 0, skip: 0, checksum: false, frames: 0 }
    }

    fn feed(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() as u64);
                self.skip -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            let take = (self.field.len() - self.have).min(bytes.len());
            self.pending[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have == self.field.len() {
                self.have = 0;
                self.parse()?;
            }
        }
        Ok(())
    }

    /// Reads the complete `field` in `pending`: sets what to skip and
    /// which field comes next.
    fn parse(&mut self) -> io::Result<()> {
        let le32 = u32::from_le_bytes(self.pending);
        (self.skip, self.field) = match self.field {
            Field::Magic if le32 == ZSTD_MAGIC => (0, Field::FrameDescriptor),
            Field::Magic if le32 & SKIPPABLE_MASK == SKIPPABLE_MAGIC => (0, Field::SkippableSize),
            Field::Magic => return Err(self.not_a_frame()),
            Field::SkippableSize => (u64::from(le32), Field::Magic),
            Field::FrameDescriptor => (self.frame_header(self.pending[0])?, Field::BlockHeader),
            Field::BlockHeader => self.block(),
        };
        Ok(())
    }

    /// Checks a frame header descriptor; returns the length of the rest
    /// of the header.
    fn frame_header(&mut self, descriptor: u8) -> io::Result<u64> {
        self.frames += 1;
        self.checksum = descriptor & 0b100 != 0;
        if !self.checksum && self.integrity == Integrity::FrameChecksums {
            return Err(io::Error::new(io::ErrorKind::InvalidData, UncheckedFrame { frame: self.frames }));
        }
        let single_segment = descriptor & 0b10_0000 != 0;
        let window = u64::from(!single_segment);
        let dictionary = [0, 1, 2, 4][usize::from(descriptor & 0b11)];
        let content_size = match descriptor >> 6 {
            0 => u64::from(single_segment),
            flag => 1 << flag,
        };
        Ok(window + dictionary + content_size)
    }

    /// The block whose header is in `pending`: its length, and the field
    /// after it (the checksum, if any, is skipped with the last block).
    fn block(&self) -> (u64, Field) {
        let header = u32::from_le_bytes([self.pending[0], self.pending[1], self.pending[2], 0]);
        let (last, kind, size) = (header & 1 != 0, (header >> 1) & 0b11, u64::from(header >> 3));
        // An RLE block stores its byte once; the decoder refuses the
        // reserved kind 3.
        let stored = if kind == 1 { 1 } else { size };
        match last {
            true => (stored + if self.checksum { 4 } else { 0 }, Field::Magic),
            false => (stored, Field::BlockHeader),
        }
    }

    // A stream that starts with no frame is refused before it gets here
    // (`bundle::import` looks at its head first); this says so all the same.
    fn not_a_frame(&self) -> io::Error {
        invalid(match self.frames {
            0 => "it is not zstd-compressed (no zstd frame magic at its start)".to_owned(),
            n => format!("it has bytes after its last zstd frame (frame {n}) that start no frame"),
        })
    }

    /// Refuses an end of input anywhere but between frames.
    fn end(&self) -> io::Result<()> {
        let between_frames = self.field == Field::Magic && self.have == 0 && self.skip == 0;
        match (between_frames, self.frames) {
            (true, 0) => Err(invalid("it holds no zstd frame".to_owned())),
            (true, _) => Ok(()),
            (false, _) => Err(invalid("it is truncated: it ends inside a frame".to_owned())),
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl<R: Read> Read for Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        match n {
            0 if !buf.is_empty() => self.end()?,
            _ => self.feed(&buf[..n])?,
        }
        Ok(n)
    }
}
