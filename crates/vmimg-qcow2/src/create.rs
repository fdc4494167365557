//! Creating copy-on-write overlays: empty qcow2 version 3 images whose every
//! cluster reads from a backing file until the guest writes it.
//!
//! [`create_overlay`] writes metadata only, in the order `qemu-img create`
//! uses (C = cluster size):
//!
//! ```text
//! 0      header (version 3, 104 bytes, 16-bit refcounts, zlib, no incompatible
//!        features), backing format extension, end of extensions, backing file name
//! C      refcount table (as many clusters as it needs)
//! then   refcount blocks (as many as the clusters listed here need)
//! then   L1 table, all zeros: no L2 table exists, so every cluster is unallocated
//! ```
//!
//! Refcounts are exact: each of those clusters is used once and counted once,
//! and nothing else is counted, so `qemu-img check` finds no error and no
//! leak. The count is a fixed point (the refcount blocks count themselves and
//! the table that lists them), which [`Layout::new`] iterates to.
//!
//! Only the header, the refcount table's entries and the refcounts are
//! written; the L1 table and the unused rest of every cluster are holes. The
//! virtual size costs only a 2-byte refcount per L1 table cluster: a 1 TiB
//! disk with 64 KiB clusters has a 16 KiB L1 table, written as nothing, and
//! the file allocates a few KiB.
//!
//! Why a writer of our own: this layout is about 200 lines, and imago's
//! creation path would pull an async runtime into a crate that has none.

use crate::error::{Error, Result};
use crate::header::{
    EXT_BACKING_FORMAT, EXT_END, MAGIC, MAX_CLUSTER_BITS, MAX_FILE_NAME, MAX_L1_BYTES, MIN_CLUSTER_BITS, V3_HEADER_LEN,
};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// The cluster size `qemu-img create` picks: 64 KiB.
pub const DEFAULT_CLUSTER_BITS: u32 = 16;
/// Refcounts are 16 bits wide (refcount_order 4), QEMU's default.
pub(crate) const REFCOUNT_ORDER: u32 = 4;
pub(crate) const REFCOUNT_BYTES: u64 = 1 << (REFCOUNT_ORDER - 3);
/// qemu-img rounds virtual sizes up to whole sectors.
pub(crate) const SECTOR: u64 = 512;

/// The format of an overlay's backing file, recorded in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingFormat {
    Raw,
    Qcow2,
}

impl BackingFormat {
    /// The name QEMU gives the format.
    pub fn name(self) -> &'static str {
        match self {
            BackingFormat::Raw => "raw",
            BackingFormat::Qcow2 => "qcow2",
        }
    }
}

/// What [`create_overlay`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayOptions {
    /// The backing file's name as written into the header: an absolute path,
    /// or a name QEMU resolves against the overlay's directory (`disk.img`).
    /// 1 to 1023 bytes, no NUL, and it must fit the header cluster.
    pub backing_file: String,
    pub backing_format: BackingFormat,
    /// The disk's size in bytes, rounded up to a multiple of 512 as
    /// `qemu-img` does. It may differ from the backing file's: a larger disk
    /// reads zeros past the backing file's end.
    pub virtual_size: u64,
    /// log2 of the cluster size: 9 (512 B) to 21 (2 MiB).
    pub cluster_bits: u32,
}

impl OverlayOptions {
    /// An overlay of `virtual_size` bytes over `backing_file`, with 64 KiB clusters.
    pub fn new(backing_file: impl Into<String>, backing_format: BackingFormat, virtual_size: u64) -> Self {
        OverlayOptions {
            backing_file: backing_file.into(),
            backing_format,
            virtual_size,
            cluster_bits: DEFAULT_CLUSTER_BITS,
        }
    }
}

/// Writes an empty qcow2 overlay into `dst`, replacing what it held.
///
/// `dst` is not flushed: to publish the overlay atomically, write it to a
/// temporary file, flush it and rename it into place (the caller's business,
/// as this crate knows no paths).
pub fn create_overlay(dst: &File, options: &OverlayOptions) -> Result<()> {
    let virtual_size = validate(options)?;
    let layout = Layout::new(options.cluster_bits, virtual_size);
    let header = header_cluster(options, virtual_size, &layout)?;
    make_holes(dst, layout.file_len()).map_err(Error::write("the new image's length"))?;
    dst.write_all_at(&header, 0).map_err(Error::write("the header"))?;
    dst.write_all_at(&layout.refcount_table(), layout.refcount_table_offset())
        .map_err(Error::write("the refcount table"))?;
    dst.write_all_at(&layout.refcounts(), layout.refcount_blocks_offset()).map_err(Error::write("the refcount blocks"))
}

/// Checks the options against the limits the reader enforces; returns the
/// virtual size rounded up to whole sectors.
fn validate(options: &OverlayOptions) -> Result<u64> {
    let bits = options.cluster_bits;
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&bits) {
        return Err(Error::Create(format!(
            "cluster_bits is {bits}; qcow2 cluster sizes range from 512 B (9) to 2 MiB (21)"
        )));
    }
    let name = &options.backing_file;
    if name.is_empty() || name.len() > MAX_FILE_NAME as usize {
        return Err(Error::Create(format!(
            "the backing file name is {} bytes; it must be 1 to {MAX_FILE_NAME} bytes",
            name.len()
        )));
    }
    if name.contains('\0') {
        return Err(Error::Create(format!("the backing file name {name:?} contains a NUL byte")));
    }
    let max = MAX_L1_BYTES / 8 * l2_coverage(bits);
    let size = options.virtual_size;
    if size == 0 || size > max {
        return Err(Error::Create(format!(
            "virtual size {size} is out of range: 1 to {max} bytes with {} B clusters (QEMU's 32 MiB L1 limit)",
            1u64 << bits
        )));
    }
    Ok(size.next_multiple_of(SECTOR))
}

/// Bytes one L2 table maps: a cluster of 8-byte entries, each one cluster.
pub(crate) fn l2_coverage(cluster_bits: u32) -> u64 {
    1 << (2 * cluster_bits - 3)
}

/// Makes `dst` a hole of `len` bytes. An empty file is only extended: on
/// ext4, truncating to zero arms a flush of the whole file at close.
pub(crate) fn make_holes(dst: &File, len: u64) -> std::io::Result<()> {
    if dst.metadata()?.len() != 0 {
        dst.set_len(0)?;
    }
    dst.set_len(len)
}

/// Where the metadata of a new image lives, counted in clusters: the header
/// cluster, then the refcount table, the refcount blocks and the L1 table.
#[derive(Debug, Clone, Copy)]
struct Layout {
    cluster_bits: u32,
    l1_entries: u64,
    refcount_table_clusters: u64,
    refcount_blocks: u64,
    l1_clusters: u64,
}

impl Layout {
    /// Sizes the tables of an image of `virtual_size` bytes. The refcount
    /// blocks must count every cluster, themselves and the table that lists
    /// them included: start with one block and add blocks until they suffice
    /// (the count only grows, so this ends; in practice after a round or two).
    fn new(cluster_bits: u32, virtual_size: u64) -> Self {
        let cluster = 1u64 << cluster_bits;
        let l1_entries = virtual_size.div_ceil(l2_coverage(cluster_bits));
        let mut layout = Layout {
            cluster_bits,
            l1_entries,
            refcount_table_clusters: 1,
            refcount_blocks: 1,
            l1_clusters: (l1_entries * 8).div_ceil(cluster),
        };
        loop {
            let needed = layout.clusters().div_ceil(cluster / REFCOUNT_BYTES);
            if needed <= layout.refcount_blocks {
                return layout;
            }
            layout.refcount_blocks = needed;
            layout.refcount_table_clusters = (needed * 8).div_ceil(cluster);
        }
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Every cluster of the image: all of them metadata.
    fn clusters(&self) -> u64 {
        1 + self.refcount_table_clusters + self.refcount_blocks + self.l1_clusters
    }

    fn file_len(&self) -> u64 {
        self.clusters() * self.cluster_size()
    }

    fn refcount_table_offset(&self) -> u64 {
        self.cluster_size()
    }

    fn refcount_blocks_offset(&self) -> u64 {
        (1 + self.refcount_table_clusters) * self.cluster_size()
    }

    fn l1_table_offset(&self) -> u64 {
        (1 + self.refcount_table_clusters + self.refcount_blocks) * self.cluster_size()
    }

    /// The refcount table's entries: the offset of each refcount block.
    fn refcount_table(&self) -> Vec<u8> {
        let first = self.refcount_blocks_offset();
        (0..self.refcount_blocks).flat_map(|i| (first + i * self.cluster_size()).to_be_bytes()).collect()
    }

    /// A refcount of 1 for each cluster, in order. The blocks are contiguous,
    /// so cluster `k`'s refcount is entry `k` of them all taken as one array.
    fn refcounts(&self) -> Vec<u8> {
        1u16.to_be_bytes().repeat(self.clusters() as usize)
    }
}

/// The bytes of the header cluster up to the end of the backing file name.
fn header_cluster(options: &OverlayOptions, virtual_size: u64, layout: &Layout) -> Result<Vec<u8>> {
    let format = options.backing_format.name().as_bytes();
    let name = options.backing_file.as_bytes();
    let format_ext_len = 8 + format.len().next_multiple_of(8);
    let name_offset = V3_HEADER_LEN as usize + format_ext_len + 8;
    let room = layout.cluster_size() as usize - name_offset;
    if name.len() > room {
        return Err(Error::Create(format!(
            "the backing file name is {} bytes; with {} B clusters at most {room} fit the header cluster",
            name.len(),
            layout.cluster_size()
        )));
    }
    let mut h = HeaderBytes(Vec::with_capacity(name_offset + name.len()));
    h.bytes(&MAGIC)
        .u32(3) // version
        .u64(name_offset as u64) // backing_file_offset
        .u32(name.len() as u32) // backing_file_size
        .u32(layout.cluster_bits)
        .u64(virtual_size)
        .u32(0) // crypt_method: none
        .u32(layout.l1_entries as u32) // l1_size
        .u64(layout.l1_table_offset())
        .u64(layout.refcount_table_offset())
        .u32(layout.refcount_table_clusters as u32)
        .u32(0) // nb_snapshots
        .u64(0) // snapshots_offset
        .u64(0) // incompatible_features
        .u64(0) // compatible_features
        .u64(0) // autoclear_features
        .u32(REFCOUNT_ORDER)
        .u32(V3_HEADER_LEN) // header_length: no compression_type field, so zlib
        .u32(EXT_BACKING_FORMAT)
        .u32(format.len() as u32)
        .bytes(format)
        .bytes(&[0; 7][..format.len().next_multiple_of(8) - format.len()])
        .u32(EXT_END)
        .u32(0)
        .bytes(name);
    debug_assert_eq!(h.0.len(), name_offset + name.len());
    Ok(h.0)
}

/// Appends big-endian header fields.
pub(crate) struct HeaderBytes(pub(crate) Vec<u8>);

impl HeaderBytes {
    pub(crate) fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    pub(crate) fn u32(&mut self, value: u32) -> &mut Self {
        self.bytes(&value.to_be_bytes())
    }

    pub(crate) fn u64(&mut self, value: u64) -> &mut Self {
        self.bytes(&value.to_be_bytes())
    }
}
