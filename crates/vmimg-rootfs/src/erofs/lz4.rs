//! A regular file's data as erofs LZ4 physical clusters of one block each,
//! with full (8-byte) logical cluster indexes: what [`super::native`]
//! writes for LZ4 and LZ4HC images.
//!
//! The file is cut into extents as mkfs.erofs cuts it: while more than a
//! block remains, LZ4 (`LZ4_compress_destSize`, or its HC twin) fills one
//! block with as much input as fits; an extent that would hold no more
//! than a block is stored plain instead (exactly one block of input), and
//! the last block or less of a file is always stored plain. So every
//! extent but the last is at least a block long, and no two start in one
//! logical cluster, which has a single index. Compressed bytes end at the
//! block's end with zeros before them (the ZERO_PADDING feature: readers
//! find the start by skipping zeros, and an LZ4 block never starts with
//! one); plain bytes start at the block's start. Each extent decodes on its
//! own to exactly its length, as the kernel and fsck.erofs require.
//!
//! Indexes, one per 4 KiB of the file: the lcluster where an extent starts
//! holds its type (0 plain, 1 LZ4), where in the lcluster it starts and its
//! block; each lcluster it covers after that holds type 2 with the distance
//! back to the start's lcluster and on to the next extent's; a last extent
//! that ends inside a later lcluster than its start leaves a plain index
//! there whose offset marks the file's end. A file all of plain extents is
//! just its data in consecutive blocks, and is written as such.
//!
//! Why lzzzz: it binds liblz4 (vendored 1.10) with the fixed-output
//! compressors (`compress_fill`) safely; lz4_flex has no fixed-output mode.

use std::io;

/// What an extent holds at most before it is encoded: bounds the memory a
/// file takes while it streams in (twice this), and how much one block may
/// decode to. LZ4 puts little more than this into a block at best (a run
/// of zeros, about 255 bytes a byte), so a block is never cut short by it;
/// erofs-utils takes up to 900 KiB and more.
const WINDOW: usize = 1 << 20;
const BLOCK: usize = 4096;
const TYPE_PLAIN: u16 = 0;
const TYPE_LZ4: u16 = 1;
const TYPE_NONHEAD: u16 = 2;

/// The LZ4 compressor and its level.
#[derive(Debug, Clone, Copy)]
pub(super) enum Level {
    Fast,
    High(i32),
}

/// One extent: logical bytes `start..start + len`, in `block`.
struct Extent {
    start: u64,
    len: u64,
    compressed: bool,
    block: u64,
}

/// How a file's data was written.
pub(super) enum Encoded {
    /// In consecutive blocks from this one, uncompressed: plain data.
    Plain { block: u64 },
    /// LZ4 extents: how many blocks they take, and the file's indexes.
    Compressed { blocks: u64, indexes: Vec<u8> },
}

/// A file of `size` bytes being encoded as its pieces arrive; each block is
/// handed to `write_block`, which returns the block's address.
pub(super) struct FileEncoder<'a> {
    level: Level,
    size: u64,
    /// Bytes not yet encoded, from `consumed` on.
    pending: Vec<u8>,
    consumed: usize,
    /// The file offset of `pending[consumed]`.
    at: u64,
    extents: Vec<Extent>,
    write_block: &'a mut dyn FnMut(&[u8]) -> io::Result<u64>,
}

impl<'a> FileEncoder<'a> {
    pub(super) fn new(level: Level, size: u64, write_block: &'a mut dyn FnMut(&[u8]) -> io::Result<u64>) -> Self {
        FileEncoder { level, size, pending: Vec::new(), consumed: 0, at: 0, extents: Vec::new(), write_block }
    }

    /// Takes the file's bytes at `offset` (offsets only grow; a gap is a
    /// hole of zeros).
    pub(super) fn push(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let filled = self.at + (self.pending.len() - self.consumed) as u64;
        if offset < filled || offset + bytes.len() as u64 > self.size {
            return Err(io::Error::other(format!(
                "erofs: file content at {offset}, before {filled} or past the size {}",
                self.size
            )));
        }
        self.zeros(offset - filled)?;
        for chunk in bytes.chunks(WINDOW) {
            self.pending.extend_from_slice(chunk);
            self.encode_full()?;
        }
        Ok(())
    }

    /// Encodes what is left (zeros up to the size included) and returns
    /// how the file was written.
    pub(super) fn finish(mut self) -> io::Result<Encoded> {
        let filled = self.at + (self.pending.len() - self.consumed) as u64;
        self.zeros(self.size - filled)?;
        while self.consumed < self.pending.len() {
            self.encode_one()?;
        }
        let first = self.extents.first().map_or(0, |e| e.block);
        let plain = self.extents.iter().enumerate().all(|(k, e)| !e.compressed && e.block == first + k as u64);
        if plain {
            return Ok(Encoded::Plain { block: first });
        }
        Ok(Encoded::Compressed { blocks: self.extents.len() as u64, indexes: indexes(&self.extents, self.size) })
    }

    fn zeros(&mut self, mut count: u64) -> io::Result<()> {
        while count > 0 {
            let n = count.min(WINDOW as u64) as usize;
            self.pending.resize(self.pending.len() + n, 0);
            count -= n as u64;
            self.encode_full()?;
        }
        Ok(())
    }

    /// Encodes extents while a whole window waits (destSize then has all
    /// the input one block can take).
    fn encode_full(&mut self) -> io::Result<()> {
        while self.pending.len() - self.consumed >= WINDOW {
            self.encode_one()?;
        }
        if self.consumed >= WINDOW {
            self.pending.drain(..self.consumed);
            self.consumed = 0;
        }
        Ok(())
    }

    /// Encodes the next extent into one block.
    fn encode_one(&mut self) -> io::Result<()> {
        let left = self.size - self.at;
        let input = &self.pending[self.consumed..];
        let input = &input[..input.len().min(WINDOW)];
        let mut block = [0u8; BLOCK];
        let (len, compressed) = if left <= BLOCK as u64 {
            block[..left as usize].copy_from_slice(&input[..left as usize]);
            (left as usize, false)
        } else {
            let mut out = [0u8; BLOCK];
            let (read, wrote) = match self.level {
                Level::Fast => lzzzz::lz4::compress_fill(input, &mut out),
                Level::High(level) => lzzzz::lz4_hc::compress_fill(input, &mut out, level),
            }
            .map_err(|e| io::Error::other(format!("erofs: LZ4 compression failed: {e}")))?;
            if read > BLOCK && wrote > 0 {
                block[BLOCK - wrote..].copy_from_slice(&out[..wrote]);
                (read, true)
            } else {
                block.copy_from_slice(&input[..BLOCK]);
                (BLOCK, false)
            }
        };
        let address = (self.write_block)(&block)?;
        self.extents.push(Extent { start: self.at, len: len as u64, compressed, block: address });
        self.consumed += len;
        self.at += len as u64;
        Ok(())
    }
}

/// The file's full lcluster indexes (see the module doc).
fn indexes(extents: &[Extent], size: u64) -> Vec<u8> {
    let lcluster = BLOCK as u64;
    let count = size.div_ceil(lcluster) as usize;
    let mut out = vec![0u8; count * 8];
    let mut set = |n: u64, kind: u16, offset: u64, tail: [u8; 4]| {
        let slot = &mut out[n as usize * 8..][..8];
        slot[0..2].copy_from_slice(&kind.to_le_bytes());
        slot[2..4].copy_from_slice(&(offset as u16).to_le_bytes());
        slot[4..8].copy_from_slice(&tail);
    };
    for (k, extent) in extents.iter().enumerate() {
        let (head, offset) = (extent.start / lcluster, extent.start % lcluster);
        let next = (extent.start + extent.len) / lcluster;
        let kind = if extent.compressed { TYPE_LZ4 } else { TYPE_PLAIN };
        set(head, kind, offset, (extent.block as u32).to_le_bytes());
        for n in head + 1..next {
            let (back, on) = ((n - head) as u16, (next - n) as u16);
            let mut deltas = [0u8; 4];
            deltas[..2].copy_from_slice(&back.to_le_bytes());
            deltas[2..].copy_from_slice(&on.to_le_bytes());
            set(n, TYPE_NONHEAD, offset, deltas);
        }
        let last = k + 1 == extents.len();
        if last && !size.is_multiple_of(lcluster) && next > head {
            set(next, TYPE_PLAIN, size % lcluster, [0; 4]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(level: Level, data: &[u8]) -> (Encoded, Vec<Vec<u8>>) {
        let mut blocks = Vec::new();
        let mut write = |block: &[u8]| {
            blocks.push(block.to_vec());
            Ok(blocks.len() as u64 + 9)
        };
        let mut encoder = FileEncoder::new(level, data.len() as u64, &mut write);
        for (n, piece) in data.chunks(1000).enumerate() {
            encoder.push(n as u64 * 1000, piece).unwrap();
        }
        let encoded = encoder.finish().unwrap();
        (encoded, blocks)
    }

    /// Decodes a file from its blocks and indexes as a reader would.
    fn decode(indexes: &[u8], blocks: &[Vec<u8>], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let field = |n: usize, at: usize| u16::from_le_bytes([indexes[n * 8 + at], indexes[n * 8 + at + 1]]);
        let heads: Vec<usize> = (0..indexes.len() / 8).filter(|&n| field(n, 0) != TYPE_NONHEAD).collect();
        for (k, &n) in heads.iter().enumerate() {
            let start = n * BLOCK + usize::from(field(n, 2));
            if start >= size {
                break; // the end marker
            }
            let end = heads.get(k + 1).map_or(size, |&m| m * BLOCK + usize::from(field(m, 2))).min(size);
            let address = u32::from_le_bytes(indexes[n * 8 + 4..n * 8 + 8].try_into().unwrap()) as usize;
            let block = &blocks[address - 10];
            if field(n, 0) == TYPE_PLAIN {
                out.extend_from_slice(&block[..end - start]);
            } else {
                let stream = &block[block.iter().position(|&b| b != 0).unwrap()..];
                let mut decoded = vec![0u8; end - start];
                assert_eq!(lzzzz::lz4::decompress(stream, &mut decoded).unwrap(), end - start);
                out.extend_from_slice(&decoded);
            }
        }
        out
    }

    #[test]
    fn files_decode_from_their_extents() {
        let text: Vec<u8> = (0..300_000u32).flat_map(|n| format!("line {n} of the file\n").into_bytes()).collect();
        let mut random = vec![0u8; 50_000];
        let mut x = 1u32;
        random.iter_mut().for_each(|b| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *b = (x >> 24) as u8;
        });
        let mixed: Vec<u8> = [&text[..9000], &random[..], &text[..20_000], &vec![0; 700_000][..]].concat();
        for data in [&text[..5000], &text[..8192], &text[..], &mixed[..]] {
            for level in [Level::Fast, Level::High(9)] {
                let (encoded, blocks) = encode(level, data);
                let Encoded::Compressed { blocks: count, indexes } = encoded else { panic!("compressible") };
                assert_eq!(count as usize, blocks.len());
                assert_eq!(indexes.len(), data.len().div_ceil(BLOCK) * 8);
                assert!(decode(&indexes, &blocks, data.len()) == data, "{} bytes, {level:?}", data.len());
            }
        }
    }

    #[test]
    fn incompressible_and_small_files_stay_plain() {
        let mut random = vec![0u8; 3 * BLOCK + 100];
        let mut x = 7u32;
        random.iter_mut().for_each(|b| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *b = (x >> 24) as u8;
        });
        for data in [&random[..], &random[..10], &random[..BLOCK]] {
            let (encoded, blocks) = encode(Level::Fast, data);
            assert!(matches!(encoded, Encoded::Plain { block: 10 }));
            assert_eq!(blocks.concat()[..data.len()], *data);
        }
    }
}
