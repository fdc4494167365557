//! The host side of a compressed image: where each cluster, table and
//! refcount block goes, and the refcounts themselves.
//!
//! Whole clusters (stored data, tables, refcount blocks) are handed out
//! front to back at the frontier. Compressed clusters are packed at a byte
//! cursor in the "open" cluster, as QEMU packs them: one may run on into the
//! next cluster only if that is the frontier; otherwise (a stored cluster
//! took it) it goes to a fresh cluster and the open cluster's tail stays
//! unused. A stored cluster between two compressed ones thus wastes no more
//! than the one compressed cluster that does not fit the open cluster's
//! tail. The open cluster is given up once the frontier is a refcount
//! block's worth of clusters ahead.
//!
//! No cluster before the open one and the frontier ever gains a reference
//! again, which lets refcounts stream: the counts of a refcount block's
//! clusters are final once both have passed them, and the block is then
//! written at the frontier (counted, in turn, by a later block). Only the
//! blocks that count the tail (the L1 table, the last blocks and the
//! refcount table itself) are sized together, to a fixed point, at the end.
//!
//! Writes are buffered and mostly in file order; a compressed cluster that
//! lands in the open cluster's tail after the buffer moved on is written on
//! its own.

use super::{CompressStats, Outcome, Packed, Plan};
use crate::create::{HeaderBytes, REFCOUNT_BYTES, REFCOUNT_ORDER, SECTOR, make_holes};
use crate::error::{Error, Result};
use crate::header::{Compression, MAGIC, MAX_REFCOUNT_TABLE_BYTES, V3_HEADER_LEN};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// L1 and L2 entry flag: the cluster's refcount is exactly one.
const COPIED: u64 = 1 << 63;
const L2_COMPRESSED: u64 = 1 << 62;
/// Standard cluster offsets live in bits 9 to 55.
const MAX_STANDARD_OFFSET: u64 = 1 << 56;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// The header length with the compression_type field (105 bytes, padded).
const ZSTD_HEADER_LEN: u32 = 112;
/// Output is buffered up to this before a write.
const WRITE_BYTES: usize = 4 << 20;
/// L1 entries serialised per write.
const L1_CHUNK: usize = 1 << 16;
/// Gaps up to this (the unused tail of a cluster) are buffered as zeros,
/// longer ones left as holes.
const GAP_FILL: u64 = 64 << 10;

/// Places packed clusters and writes the image.
pub(crate) struct HostWriter<'a> {
    out: Output<'a>,
    cluster_bits: u32,
    compression: Compression,
    virtual_size: u64,
    /// The first host byte no whole cluster has been handed out from
    /// (cluster-aligned): the file grows here.
    frontier: u64,
    /// The cluster compressed clusters are packed into, and the byte where
    /// the next one goes (up to the cluster's end).
    open: Option<(u64, u64)>,
    refs: Refcounts,
    l1: Vec<u64>,
    l2: L2Table,
    stats: CompressStats,
}

impl<'a> HostWriter<'a> {
    /// Empties `dst` and reserves its first cluster for the header.
    pub(crate) fn new(dst: &'a File, plan: &Plan) -> Result<Self> {
        make_holes(dst, 0).map_err(Error::write("the new image's length"))?;
        let bits = plan.cluster_bits;
        let l1_entries = plan.virtual_size.div_ceil(crate::create::l2_coverage(bits));
        let mut refs = Refcounts::new(bits);
        refs.add(0)?;
        Ok(HostWriter {
            out: Output { dst, start: 0, buf: Vec::new() },
            cluster_bits: bits,
            compression: plan.compression,
            virtual_size: plan.virtual_size,
            frontier: plan.cluster_size(),
            open: None,
            refs,
            l1: vec![0; l1_entries as usize],
            l2: L2Table { index: None, entries: vec![0; 1 << (bits - 3)], used: false },
            stats: CompressStats::default(),
        })
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Places and writes the clusters of one batch, in order.
    pub(crate) fn place(&mut self, packed: &Packed) -> Result<()> {
        let c = self.cluster_size() as usize;
        let mut at = 0;
        for &(cluster, outcome) in &packed.clusters {
            let len = match outcome {
                Outcome::Zero => {
                    self.stats.clusters_zero += 1;
                    continue;
                }
                Outcome::Compressed(len) => len,
                Outcome::Stored => c,
            };
            let bytes = packed.payload.get(at..at + len).ok_or_else(|| internal("a batch's payload is short"))?;
            at += len;
            self.enter_l2(cluster)?;
            let entry = match outcome {
                Outcome::Stored => {
                    self.stats.clusters_stored += 1;
                    let offset = self.alloc_clusters(1)?;
                    self.out.write(offset, bytes)?;
                    offset | COPIED
                }
                _ => {
                    self.stats.clusters_compressed += 1;
                    let offset = self.alloc_bytes(len as u64)?;
                    self.out.write(offset, bytes)?;
                    self.compressed_entry(offset, len as u64)?
                }
            };
            self.l2.set(cluster, entry);
        }
        Ok(())
    }

    /// The L2 entry of a compressed cluster of `len` bytes at `offset`: the
    /// offset, and above it the number of sectors after the first it touches.
    fn compressed_entry(&self, offset: u64, len: u64) -> Result<u64> {
        let shift = 70 - self.cluster_bits;
        if offset >= 1 << shift {
            return Err(Error::Create(format!(
                "host offset {offset:#x} is past what a compressed cluster's descriptor holds with {} B clusters",
                self.cluster_size()
            )));
        }
        let sectors = (offset + len - 1) / SECTOR - offset / SECTOR;
        Ok(L2_COMPRESSED | sectors << shift | offset)
    }

    /// Makes the L2 table of virtual cluster `cluster` the current one,
    /// writing the previous one out.
    fn enter_l2(&mut self, cluster: u64) -> Result<()> {
        let index = cluster >> (self.cluster_bits - 3);
        if self.l2.index != Some(index) {
            self.flush_l2()?;
            self.l2.index = Some(index);
        }
        Ok(())
    }

    /// Writes the current L2 table, if it maps anything, and points the L1
    /// table at it.
    fn flush_l2(&mut self) -> Result<()> {
        let Some(index) = self.l2.index.take() else { return Ok(()) };
        if !std::mem::take(&mut self.l2.used) {
            return Ok(());
        }
        let offset = self.alloc_clusters(1)?;
        let bytes: Vec<u8> = self.l2.entries.iter().flat_map(|e| e.to_be_bytes()).collect();
        self.out.write(offset, &bytes)?;
        self.l2.entries.fill(0);
        let slot = self.l1.get_mut(index as usize).ok_or_else(|| internal("an L2 table past the L1 table"))?;
        *slot = offset | COPIED;
        Ok(())
    }

    /// Room for a compressed cluster of `len` bytes (less than a cluster):
    /// in the open cluster's tail, running on into the frontier cluster if it
    /// must and can, else at the start of a fresh cluster. A cluster whose
    /// refcount is full takes no more.
    fn alloc_bytes(&mut self, len: u64) -> Result<u64> {
        if let Some((open, cursor)) = self.open {
            let open_end = (open + 1) << self.cluster_bits;
            let touches_open = cursor < open_end;
            let full = touches_open && self.refs.get(open)? == u16::MAX;
            let fits = cursor + len <= open_end;
            if !full && (fits || open_end == self.frontier) {
                if touches_open {
                    self.refs.add(open)?;
                }
                if !fits {
                    self.take_clusters(1)?;
                    self.open = Some((open + 1, cursor + len));
                } else {
                    self.open = Some((open, cursor + len));
                }
                return Ok(cursor);
            }
        }
        let offset = self.alloc_clusters(1)?;
        self.open = Some((offset >> self.cluster_bits, offset + len));
        Ok(offset)
    }

    /// `n` whole clusters at the frontier, after the refcount blocks that
    /// have become final.
    fn alloc_clusters(&mut self, n: u64) -> Result<u64> {
        self.write_final_blocks()?;
        let offset = self.take_clusters(n)?;
        if self.frontier > MAX_STANDARD_OFFSET {
            return Err(Error::Create(format!("the image would grow past {MAX_STANDARD_OFFSET:#x} bytes")));
        }
        if let Some((open, _)) = self.open
            && (self.frontier >> self.cluster_bits) - open > self.refs.per_block()
        {
            self.open = None;
        }
        Ok(offset)
    }

    /// `n` clusters at the frontier, counted once each.
    fn take_clusters(&mut self, n: u64) -> Result<u64> {
        let offset = self.frontier;
        let first = offset >> self.cluster_bits;
        for cluster in first..first + n {
            self.refs.add(cluster)?;
        }
        self.frontier += n << self.cluster_bits;
        Ok(offset)
    }

    /// Writes, at the frontier, the refcount block of each group of clusters
    /// that can gain no more references.
    fn write_final_blocks(&mut self) -> Result<()> {
        loop {
            let mut settled = self.frontier >> self.cluster_bits;
            if let Some((open, _)) = self.open {
                settled = settled.min(open);
            }
            if !self.refs.first_group_final(settled) {
                return Ok(());
            }
            let offset = self.take_clusters(1)?;
            let block = self.refs.pop_group(offset);
            self.out.write(offset, &block)?;
        }
    }

    /// Writes the last L2 table, the L1 table, the remaining refcount blocks,
    /// the refcount table and the header.
    pub(crate) fn finish(mut self) -> Result<CompressStats> {
        self.flush_l2()?;
        let c = self.cluster_size();
        let l1_bytes = self.l1.len() as u64 * 8;
        let l1_offset = self.alloc_clusters(l1_bytes.div_ceil(c))?;
        for (i, chunk) in self.l1.chunks(L1_CHUNK).enumerate() {
            if chunk.iter().all(|&e| e == 0) {
                continue; // left a hole
            }
            let bytes: Vec<u8> = chunk.iter().flat_map(|e| e.to_be_bytes()).collect();
            self.out.write(l1_offset + (i * L1_CHUNK * 8) as u64, &bytes)?;
        }
        self.open = None;
        self.write_final_blocks()?;
        let (blocks, table_clusters) = self.tail_sizes()?;
        let blocks_offset = self.take_clusters(blocks)?;
        let table_offset = self.take_clusters(table_clusters)?;
        for i in 0..blocks {
            let offset = blocks_offset + i * c;
            let block = self.refs.pop_group(offset);
            self.out.write(offset, &block)?;
        }
        if !self.refs.counts.is_empty() {
            return Err(internal("refcounts left uncounted by any block"));
        }
        let table: Vec<u8> = self.refs.table.iter().flat_map(|e| e.to_be_bytes()).collect();
        self.out.write(table_offset, &table)?;
        self.out.flush()?;
        let file_len = self.frontier;
        self.out.dst.set_len(file_len).map_err(Error::write("the image's length"))?;
        let header = self.header(l1_offset, table_offset, table_clusters);
        self.out.dst.write_all_at(&header, 0).map_err(Error::write("the header"))?;
        self.stats.file_len = file_len;
        Ok(self.stats)
    }

    /// How many refcount blocks and refcount table clusters the tail needs:
    /// the least fixed point, as both count themselves.
    fn tail_sizes(&self) -> Result<(u64, u64)> {
        let c = self.cluster_size();
        let start = self.frontier >> self.cluster_bits;
        let per_block = self.refs.per_block();
        let (mut blocks, mut table) = (0, 0);
        loop {
            let groups = (start + blocks + table).div_ceil(per_block);
            let next = (groups - self.refs.first_group, (groups * 8).div_ceil(c));
            if next == (blocks, table) {
                break;
            }
            (blocks, table) = next;
        }
        if table * c > MAX_REFCOUNT_TABLE_BYTES {
            return Err(Error::Create(format!(
                "the image would need a refcount table of {} bytes, past QEMU's 8 MiB limit; use larger clusters",
                table * c
            )));
        }
        Ok((blocks, table))
    }

    fn header(&self, l1_offset: u64, table_offset: u64, table_clusters: u64) -> Vec<u8> {
        let zstd = self.compression == Compression::Zstd;
        let mut h = HeaderBytes(Vec::with_capacity(ZSTD_HEADER_LEN as usize + 8));
        h.bytes(&MAGIC)
            .u32(3) // version
            .u64(0) // backing_file_offset
            .u32(0) // backing_file_size
            .u32(self.cluster_bits)
            .u64(self.virtual_size)
            .u32(0) // crypt_method: none
            .u32(self.l1.len() as u32) // l1_size
            .u64(l1_offset)
            .u64(table_offset)
            .u32(table_clusters as u32)
            .u32(0) // nb_snapshots
            .u64(0) // snapshots_offset
            .u64(if zstd { INCOMPAT_COMPRESSION } else { 0 })
            .u64(0) // compatible_features
            .u64(0) // autoclear_features
            .u32(REFCOUNT_ORDER)
            .u32(if zstd { ZSTD_HEADER_LEN } else { V3_HEADER_LEN });
        if zstd {
            h.bytes(&[1, 0, 0, 0, 0, 0, 0, 0]); // compression_type 1 (zstd), padding
        }
        h.u32(0).u32(0); // end of header extensions
        debug_assert_eq!(h.0.len(), if zstd { 120 } else { 112 });
        h.0
    }
}

fn internal(what: &str) -> Error {
    Error::Create(format!("internal error: {what}"))
}

/// The L2 table being filled.
struct L2Table {
    /// Its L1 index, once a cluster of its range has been seen.
    index: Option<u64>,
    entries: Vec<u64>,
    /// Whether any entry is set.
    used: bool,
}

impl L2Table {
    fn set(&mut self, cluster: u64, entry: u64) {
        let mask = self.entries.len() as u64 - 1;
        self.entries[(cluster & mask) as usize] = entry;
        self.used = true;
    }
}

/// The refcounts not yet written: those of the host clusters from the first
/// group (the clusters one refcount block counts) without a block on.
struct Refcounts {
    /// log2 of the clusters one block counts.
    group_bits: u32,
    first_group: u64,
    /// Counts of the clusters from `first_group`'s first, in order.
    counts: Vec<u16>,
    /// The refcount table: the offset of each group's block.
    table: Vec<u64>,
}

impl Refcounts {
    fn new(cluster_bits: u32) -> Self {
        let group_bits = cluster_bits - (REFCOUNT_BYTES.trailing_zeros());
        Refcounts { group_bits, first_group: 0, counts: Vec::new(), table: Vec::new() }
    }

    fn per_block(&self) -> u64 {
        1 << self.group_bits
    }

    /// The index in `counts` of host cluster `cluster`.
    fn slot(&self, cluster: u64) -> Result<usize> {
        cluster
            .checked_sub(self.first_group << self.group_bits)
            .map(|i| i as usize)
            .ok_or_else(|| internal("a cluster counted after its refcount block was written"))
    }

    fn get(&self, cluster: u64) -> Result<u16> {
        Ok(self.counts.get(self.slot(cluster)?).copied().unwrap_or(0))
    }

    /// Counts one more reference to `cluster`.
    fn add(&mut self, cluster: u64) -> Result<()> {
        let slot = self.slot(cluster)?;
        if slot >= self.counts.len() {
            let groups = (cluster >> self.group_bits) + 1;
            if groups * 8 > MAX_REFCOUNT_TABLE_BYTES {
                return Err(Error::Create(format!(
                    "the image would need more than {} refcount blocks, past QEMU's 8 MiB refcount table limit; \
                     use larger clusters",
                    MAX_REFCOUNT_TABLE_BYTES / 8
                )));
            }
            self.counts.resize(slot + 1, 0);
        }
        let count = &mut self.counts[slot];
        *count = count.checked_add(1).ok_or_else(|| internal("a refcount overflowed"))?;
        Ok(())
    }

    /// Whether every cluster of the first group lies before `frontier`, the
    /// first cluster that can still gain references.
    fn first_group_final(&self, frontier: u64) -> bool {
        (self.first_group + 1) << self.group_bits <= frontier
    }

    /// The first group's refcount block, which is written at `offset`.
    fn pop_group(&mut self, offset: u64) -> Vec<u8> {
        let n = (self.per_block() as usize).min(self.counts.len());
        let mut block: Vec<u8> = self.counts.drain(..n).flat_map(u16::to_be_bytes).collect();
        block.resize((self.per_block() * REFCOUNT_BYTES) as usize, 0);
        self.table.push(offset);
        debug_assert_eq!(self.table.len() as u64, self.first_group + 1);
        self.first_group += 1;
        block
    }
}

/// Buffered writes of consecutive output.
struct Output<'a> {
    dst: &'a File,
    /// The file offset of `buf`'s first byte.
    start: u64,
    buf: Vec<u8>,
}

impl Output<'_> {
    /// Writes `bytes` at `offset`. Past everything written so far, they are
    /// buffered (a short gap before them filled with zeros); over bytes
    /// still buffered, they replace them; over bytes already written out,
    /// they are written at once.
    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        let end = self.start + self.buf.len() as u64;
        if offset >= end {
            if self.buf.is_empty() || offset - end > GAP_FILL {
                self.flush()?;
                self.start = offset;
            } else {
                self.buf.resize(self.buf.len() + (offset - end) as usize, 0);
            }
            self.buf.extend_from_slice(bytes);
            if self.buf.len() >= WRITE_BYTES {
                self.flush()?;
            }
            return Ok(());
        }
        let (written, buffered) = bytes.split_at((self.start.saturating_sub(offset) as usize).min(bytes.len()));
        if !written.is_empty() {
            self.dst.write_all_at(written, offset).map_err(Error::write("the image"))?;
        }
        let at = offset.max(self.start);
        let inside = buffered.len().min((end - at.min(end)) as usize);
        self.buf[(at - self.start) as usize..][..inside].copy_from_slice(&buffered[..inside]);
        self.buf.extend_from_slice(&buffered[inside..]);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.dst.write_all_at(&self.buf, self.start).map_err(Error::write("the image"))?;
        self.start += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::CompressOptions;
    use crate::{Allocation, Qcow2};
    use std::process::Command;

    /// With 2 MiB clusters and 16-byte compressed clusters, a host cluster
    /// would hold 131072 of them; the 65536th goes to a fresh cluster
    /// instead, and `qemu-img check` (which does not decompress) agrees with
    /// every count.
    #[test]
    fn a_full_refcount_starts_a_fresh_cluster() {
        let n = 140_000u64;
        let options = CompressOptions { cluster_bits: 21, threads: 1, ..CompressOptions::default() };
        let plan = Plan::new(n << 21, &options).unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut writer = HostWriter::new(file.as_file(), &plan).unwrap();
        let clusters = (0..n).map(|i| (i, Outcome::Compressed(16))).collect();
        let payload = (0..n).flat_map(|i| [i as u8; 16]).collect();
        writer.place(&Packed { seq: 0, clusters, payload }).unwrap();
        let stats = writer.finish().unwrap();
        assert_eq!(stats.clusters_compressed, n);

        let out = Command::new("qemu-img").args(["check", file.path().to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        let img = Qcow2::open(file.reopen().unwrap()).unwrap();
        let hosts: Vec<u64> = img
            .extents(0)
            .map(|e| match e.unwrap().allocation {
                Allocation::Compressed { host_offset, .. } => host_offset,
                other => panic!("{other:?}"),
            })
            .collect();
        let c = 2 << 20;
        assert_eq!(hosts.len() as u64, n);
        assert_eq!(&hosts[65534..65536], &[c + 65534 * 16, 2 * c]);
        assert_eq!(&hosts[131069..131071], &[2 * c + 65534 * 16, 3 * c]);
    }

    /// Stored and compressed clusters mixed over many refcount blocks (512 B
    /// clusters: a block counts 256 of them): the refcounts held in memory
    /// never cover more than three blocks' worth, and `qemu-img check` agrees
    /// with every count written.
    #[test]
    fn refcounts_in_memory_stay_bounded() {
        let n = 200_000u64;
        let options = CompressOptions { cluster_bits: 9, threads: 1, ..CompressOptions::default() };
        let plan = Plan::new(n << 9, &options).unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut writer = HostWriter::new(file.as_file(), &plan).unwrap();
        let mut most = 0;
        for (seq, first) in (0..n).step_by(1000).enumerate() {
            let mut packed = Packed { seq: seq as u64, clusters: Vec::new(), payload: Vec::new() };
            for i in first..first + 1000 {
                let outcome = match i % 7 {
                    0 | 3 => Outcome::Stored,
                    5 => Outcome::Zero,
                    _ => Outcome::Compressed(20 + (i * 37 % 420) as usize),
                };
                let len = match outcome {
                    Outcome::Stored => 512,
                    Outcome::Compressed(len) => len,
                    Outcome::Zero => 0,
                };
                packed.payload.extend(std::iter::repeat_n(i as u8, len));
                packed.clusters.push((i, outcome));
            }
            writer.place(&packed).unwrap();
            most = most.max(writer.refs.counts.len());
        }
        assert!(most <= 3 * 256, "{most} refcounts held");
        let stats = writer.finish().unwrap();
        assert!(stats.file_len > 250 * 512 * 256, "{stats:?}");
        let out = Command::new("qemu-img").args(["check", file.path().to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }

    /// Bytes land where they are written, whether past the buffer (after a
    /// short gap or a hole), inside it, or over what was written out.
    #[test]
    fn output_writes_in_any_order() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut out = Output { dst: file.as_file(), start: 0, buf: Vec::new() };
        out.write(100, b"aaaa").unwrap();
        out.write(110, b"bb").unwrap(); // gap of 6 filled
        out.write(102, b"cc").unwrap(); // inside the buffer
        out.write(200_000, b"dd").unwrap(); // far: flushes, leaves a hole
        out.write(108, b"eeeee").unwrap(); // over written bytes, 1 byte over the hole
        out.write(200_001, b"fff").unwrap(); // over the buffer's end and past it
        out.flush().unwrap();
        let bytes = std::fs::read(file.path()).unwrap();
        assert_eq!(bytes.len(), 200_004);
        assert_eq!(&bytes[100..114], b"aacc\0\0\0\0eeeee\0");
        assert_eq!(&bytes[200_000..], b"dfff");
    }
}
