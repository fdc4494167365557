//! The allocation map: what each virtual byte range of the image holds.
//!
//! [`Extents`] walks the L1 table and the L2 tables in virtual order and yields
//! runs of equal kind, merging neighbours (data runs only when their host
//! ranges are contiguous too; compressed clusters never merge). Each L2 table
//! is read once, its offset checked first; every entry is decoded with the
//! same checks QEMU applies (alignment, reserved subcluster states), and every
//! host offset is checked against the file before it is returned.
//!
//! No host cluster may serve twice: not an L2 table used by two L1 entries,
//! not a data cluster mapped at two virtual offsets, not either of them on
//! top of the header, the L1 table or the refcount table. QEMU never writes
//! such an image, and refusing it bounds the walk by the file size: a small
//! file cannot loop one L2 table over an exabyte of virtual disk.

use crate::error::{Error, Result, invalid};
use crate::header::{Header, be_u64, check_aligned, check_range};
use crate::read_at::ReadAt;
use std::collections::VecDeque;
use std::ops::Range;

/// What a virtual range of the image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Stored uncompressed at `host_offset` in the image file.
    Data { host_offset: u64 },
    /// One compressed cluster: `compressed_len` bytes (whole sectors, so they
    /// may run into the next cluster's data) at `host_offset`.
    Compressed { host_offset: u64, compressed_len: u64 },
    /// Reads as zeros: a zero cluster or subcluster (preallocated or not).
    Zero,
    /// Not allocated: reads as zeros (this reader never follows backing files).
    Unallocated,
}

/// A run of the virtual disk with one [`Allocation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Virtual offset of the run's first byte.
    pub start: u64,
    /// Length in bytes (never zero).
    pub len: u64,
    pub allocation: Allocation,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }

    /// True when the run reads as zeros without touching the image file.
    pub fn reads_as_zero(&self) -> bool {
        matches!(self.allocation, Allocation::Zero | Allocation::Unallocated)
    }

    /// Tries to append `next` to `self`; true on success.
    fn merge(&mut self, next: &Extent) -> bool {
        if self.end() != next.start {
            return false;
        }
        let mergeable = match (self.allocation, next.allocation) {
            (Allocation::Data { host_offset: a }, Allocation::Data { host_offset: b }) => a + self.len == b,
            (Allocation::Zero, Allocation::Zero) | (Allocation::Unallocated, Allocation::Unallocated) => true,
            _ => false,
        };
        if mergeable {
            self.len += next.len;
        }
        mergeable
    }
}

const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2E_COMPRESSED: u64 = 1 << 62;
const L2E_ZERO: u64 = 1;
const SECTOR: u64 = 512;

/// Iterator over the allocation map of a virtual range.
pub struct Extents<'a, R: ReadAt + ?Sized> {
    header: &'a Header,
    l1: &'a [u64],
    src: &'a R,
    file_len: u64,
    /// Next virtual offset to decode.
    pos: u64,
    /// Where the walk stops (at most the virtual size).
    end: u64,
    claims: HostClaims,
    /// The L2 table in `l2`, by L1 index.
    l2_index: Option<u64>,
    l2: Vec<u8>,
    /// Decoded but not yet returned runs of the current cluster, in order.
    pending: VecDeque<Extent>,
    /// The run being grown by merging.
    current: Option<Extent>,
    failed: bool,
}

impl<'a, R: ReadAt + ?Sized> Extents<'a, R> {
    pub(crate) fn new(header: &'a Header, l1: &'a [u64], src: &'a R, file_len: u64, range: Range<u64>) -> Self {
        let end = range.end.min(header.virtual_size);
        Extents {
            header,
            l1,
            src,
            file_len,
            pos: range.start.min(end),
            end,
            claims: HostClaims::new(header, file_len),
            l2_index: None,
            l2: Vec::new(),
            pending: VecDeque::new(),
            current: None,
            failed: false,
        }
    }

    /// Decodes the runs starting at `self.pos` (one cluster, or a whole
    /// unallocated L2 range) into `self.pending`, advancing `self.pos`.
    fn decode_next(&mut self) -> Result<()> {
        let h = self.header;
        let l1_index = self.pos / h.l2_coverage();
        let l2_offset = self.l1[l1_index as usize] & L1E_OFFSET_MASK;
        if l2_offset == 0 {
            let end = ((l1_index + 1) * h.l2_coverage()).min(self.end);
            self.push(end, Allocation::Unallocated);
            return Ok(());
        }
        self.load_l2(l1_index, l2_offset)?;
        let cluster_index = (self.pos >> h.cluster_bits) % h.l2_entries();
        let at = (cluster_index * h.l2_entry_size()) as usize;
        let entry = be_u64(&self.l2[at..]);
        let bitmap = if h.extended_l2() { be_u64(&self.l2[at + 8..]) } else { 0 };
        self.decode_cluster(entry, bitmap)
    }

    fn load_l2(&mut self, l1_index: u64, l2_offset: u64) -> Result<()> {
        if self.l2_index == Some(l1_index) {
            return Ok(());
        }
        let cluster = self.header.cluster_size();
        check_aligned(l2_offset, cluster, "L2 table")?;
        check_range(l2_offset, cluster, self.file_len, "L2 table")?;
        self.claims.claim(l2_offset, "the L2 table", l1_index * self.header.l2_coverage())?;
        self.l2.resize(cluster as usize, 0);
        self.src.read_exact_or_zero_at(&mut self.l2, l2_offset).map_err(Error::io("an L2 table"))?;
        self.l2_index = Some(l1_index);
        Ok(())
    }

    fn decode_cluster(&mut self, entry: u64, bitmap: u64) -> Result<()> {
        let h = self.header;
        let cluster = h.cluster_size();
        let cluster_start = self.pos & !(cluster - 1);
        let cluster_end = (cluster_start + cluster).min(self.end);
        if entry & L2E_COMPRESSED != 0 {
            if bitmap != 0 {
                return Err(invalid!(
                    "compressed cluster at virtual offset {cluster_start:#x} has a subcluster bitmap"
                ));
            }
            let allocation = self.compressed(entry)?;
            self.push(cluster_end, allocation);
            return Ok(());
        }
        let host = entry & L2E_OFFSET_MASK;
        if !host.is_multiple_of(cluster) {
            return Err(invalid!(
                "data cluster for virtual offset {cluster_start:#x} has unaligned host offset {host:#x}"
            ));
        }
        if host != 0 && host >= self.file_len {
            return Err(invalid!(
                "data cluster for virtual offset {cluster_start:#x} is at host offset {host:#x}, past the end of \
                 the file ({} bytes)",
                self.file_len
            ));
        }
        let zero_flag = entry & L2E_ZERO != 0 && !h.extended_l2();
        let allocated = bitmap as u32 != 0 || (!h.extended_l2() && !zero_flag);
        if host != 0 && allocated {
            self.claims.claim(host, "a data cluster", cluster_start)?;
        }
        if !h.extended_l2() {
            let allocation = match (zero_flag, host) {
                (true, _) => Allocation::Zero,
                (false, 0) => Allocation::Unallocated,
                (false, host_offset) => Allocation::Data { host_offset: host_offset + (self.pos - cluster_start) },
            };
            self.push(cluster_end, allocation);
            return Ok(());
        }
        self.decode_subclusters(cluster_start, cluster_end, host, bitmap)
    }

    fn decode_subclusters(&mut self, cluster_start: u64, cluster_end: u64, host: u64, bitmap: u64) -> Result<()> {
        let sc_size = self.header.cluster_size() / 32;
        let first = (self.pos - cluster_start) / sc_size;
        for i in first..32 {
            let start = cluster_start + i * sc_size;
            if start >= cluster_end {
                break;
            }
            let allocated = bitmap >> i & 1 != 0;
            let zero = bitmap >> (32 + i) & 1 != 0;
            let allocation = match (allocated, zero) {
                (true, true) => {
                    return Err(invalid!("subcluster at virtual offset {start:#x} is marked both allocated and zero"));
                }
                (true, false) if host == 0 => {
                    return Err(invalid!(
                        "subcluster at virtual offset {start:#x} is allocated in an unallocated cluster"
                    ));
                }
                (true, false) => Allocation::Data { host_offset: host + (self.pos - cluster_start) },
                (false, true) => Allocation::Zero,
                (false, false) => Allocation::Unallocated,
            };
            self.push((start + sc_size).min(cluster_end), allocation);
        }
        Ok(())
    }

    fn compressed(&self, entry: u64) -> Result<Allocation> {
        let h = self.header;
        let shift = 62 - (h.cluster_bits - 8);
        let host_offset = entry & ((1 << shift) - 1);
        let sectors = ((entry >> shift) & ((1 << (h.cluster_bits - 8)) - 1)) + 1;
        let compressed_len = sectors * SECTOR - (host_offset % SECTOR);
        // The descriptor counts whole sectors, so the last cluster in the file
        // may name up to a sector past its end; more than that is corruption.
        if host_offset >= self.file_len || host_offset + compressed_len > self.file_len + SECTOR {
            return Err(invalid!(
                "compressed cluster at host offset {host_offset:#x} ({compressed_len} bytes) runs past the end \
                 of the file ({} bytes)",
                self.file_len
            ));
        }
        let compressed_len = compressed_len.min(self.file_len - host_offset);
        Ok(Allocation::Compressed { host_offset, compressed_len })
    }

    /// Queues the run from `self.pos` to `end` and advances past it.
    fn push(&mut self, end: u64, allocation: Allocation) {
        self.pending.push_back(Extent { start: self.pos, len: end - self.pos, allocation });
        self.pos = end;
    }
}

impl<R: ReadAt + ?Sized> Iterator for Extents<'_, R> {
    type Item = Result<Extent>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            while let Some(next) = self.pending.pop_front() {
                match &mut self.current {
                    Some(cur) => {
                        if !cur.merge(&next) {
                            return Some(Ok(std::mem::replace(cur, next)));
                        }
                    }
                    None => self.current = Some(next),
                }
            }
            if self.pos >= self.end {
                return self.current.take().map(Ok);
            }
            if let Err(e) = self.decode_next() {
                self.failed = true;
                return Some(Err(e));
            }
        }
    }
}

/// The host clusters the walk has seen in use, one bit each (a file of
/// `n` clusters costs `n / 8` bytes).
struct HostClaims {
    bits: Vec<u64>,
    cluster_bits: u32,
}

impl HostClaims {
    /// Starts with the header cluster, the L1 table and the refcount table
    /// claimed. The header bounded all three by the file size.
    fn new(header: &Header, file_len: u64) -> Self {
        let clusters = file_len.div_ceil(header.cluster_size());
        let mut claims =
            HostClaims { bits: vec![0; clusters.div_ceil(64) as usize], cluster_bits: header.cluster_bits };
        claims.mark_range(0, 1);
        claims.mark_range(header.l1_table_offset, u64::from(header.l1_size) * 8);
        claims
            .mark_range(header.refcount_table_offset, u64::from(header.refcount_table_clusters) << header.cluster_bits);
        claims
    }

    fn mark_range(&mut self, offset: u64, len: u64) {
        let first = offset >> self.cluster_bits;
        let last = (offset + len).div_ceil(1 << self.cluster_bits);
        for cluster in first..last.min(self.bits.len() as u64 * 64) {
            self.bits[(cluster / 64) as usize] |= 1 << (cluster % 64);
        }
    }

    /// Claims the cluster at `host` (checked to lie in the file) for `what`
    /// at virtual offset `virt`; an error if something already uses it.
    fn claim(&mut self, host: u64, what: &str, virt: u64) -> Result<()> {
        let cluster = host >> self.cluster_bits;
        let (word, bit) = ((cluster / 64) as usize, 1u64 << (cluster % 64));
        let Some(slot) = self.bits.get_mut(word) else { return Ok(()) };
        if *slot & bit != 0 {
            return Err(invalid!(
                "{what} for virtual offset {virt:#x} is at host offset {host:#x}, a cluster the image already \
                 uses for other data or metadata (its tables overlap or loop)"
            ));
        }
        *slot |= bit;
        Ok(())
    }
}
