//! A builder of small, valid qcow2 images in memory, for tests that corrupt
//! one field at a time.
//!
//! [`Builder`] lays out a minimal image that `qemu-img check` accepts, with
//! every cluster it uses counted once in the refcounts (C = cluster size):
//!
//! ```text
//! 0               header, header extensions, backing file name
//! C               L1 table (as many clusters as it needs)
//! then            refcount table (one cluster), refcount block (one cluster)
//! then            one L2 table per L1 entry that maps anything
//! then            one cluster per data or compressed cluster, in virtual order
//! ```
//!
//! [`Image`] keeps the offsets of everything it laid out and the bytes the
//! virtual disk should read as, so a test can patch a field by name and know
//! what a good read returns.

#![allow(dead_code)]

use std::collections::BTreeMap;
use vmimg_qcow2::Compression;

/// Byte offsets of the header fields (QEMU's docs/interop/qcow2.rst).
pub mod field {
    pub const MAGIC: u64 = 0;
    pub const VERSION: u64 = 4;
    pub const BACKING_FILE_OFFSET: u64 = 8;
    pub const BACKING_FILE_SIZE: u64 = 16;
    pub const CLUSTER_BITS: u64 = 20;
    pub const SIZE: u64 = 24;
    pub const CRYPT_METHOD: u64 = 32;
    pub const L1_SIZE: u64 = 36;
    pub const L1_TABLE_OFFSET: u64 = 40;
    pub const REFCOUNT_TABLE_OFFSET: u64 = 48;
    pub const REFCOUNT_TABLE_CLUSTERS: u64 = 56;
    pub const NB_SNAPSHOTS: u64 = 60;
    pub const SNAPSHOTS_OFFSET: u64 = 64;
    pub const INCOMPATIBLE_FEATURES: u64 = 72;
    pub const COMPATIBLE_FEATURES: u64 = 80;
    pub const AUTOCLEAR_FEATURES: u64 = 88;
    pub const REFCOUNT_ORDER: u64 = 96;
    pub const HEADER_LENGTH: u64 = 100;
    pub const COMPRESSION_TYPE: u64 = 104;
}

pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;

pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub const EXT_CRYPTO_HEADER: u32 = 0x0537_be77;
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// L1 and L2 entry flag: the cluster's refcount is exactly one.
pub const COPIED: u64 = 1 << 63;
pub const L2_COMPRESSED: u64 = 1 << 62;
pub const L2_ZERO: u64 = 1;

const V3_HEADER_LEN: u64 = 112;

/// What one virtual cluster holds.
#[derive(Debug, Clone, Copy)]
pub enum Content {
    /// Uncompressed [`pattern`] bytes made from this seed.
    Data(u64),
    /// Compressed [`pattern`] bytes made from this seed.
    Compressed(u64),
    /// A zero cluster (flag in the L2 entry, nothing allocated).
    Zero,
}

/// Describes an image; [`Builder::build`] lays it out.
#[derive(Debug, Clone)]
pub struct Builder {
    version: u32,
    cluster_bits: u32,
    virtual_size: u64,
    compression: Compression,
    extended_l2: bool,
    clusters: BTreeMap<u64, Content>,
    backing_file: Option<String>,
    extensions: Vec<(u32, Vec<u8>)>,
}

impl Builder {
    /// A version 3 image of 1 MiB with 64 KiB clusters and nothing allocated.
    pub fn v3() -> Self {
        Builder {
            version: 3,
            cluster_bits: 16,
            virtual_size: 1 << 20,
            compression: Compression::Zlib,
            extended_l2: false,
            clusters: BTreeMap::new(),
            backing_file: None,
            extensions: Vec::new(),
        }
    }

    /// Makes it a version 2 (compat=0.10) image.
    pub fn version_2(mut self) -> Self {
        self.version = 2;
        self
    }

    pub fn version_3(mut self) -> Self {
        self.version = 3;
        self
    }

    /// The image most tests corrupt: data, compressed, zero and unallocated
    /// clusters in the first L2 table.
    pub fn mixed() -> Self {
        Builder::mixed_v2().version_3().cluster(2, Content::Zero)
    }

    /// [`Builder::mixed`] as version 2, which has no zero clusters.
    pub fn mixed_v2() -> Self {
        Builder::v3()
            .version_2()
            .cluster(0, Content::Data(1))
            .cluster(1, Content::Compressed(2))
            .cluster(5, Content::Data(3))
    }

    pub fn cluster_bits(mut self, bits: u32) -> Self {
        self.cluster_bits = bits;
        self
    }

    pub fn virtual_size(mut self, size: u64) -> Self {
        self.virtual_size = size;
        self
    }

    pub fn zstd(mut self) -> Self {
        self.compression = Compression::Zstd;
        self
    }

    pub fn extended_l2(mut self) -> Self {
        self.extended_l2 = true;
        self
    }

    /// Sets what virtual cluster `index` holds.
    pub fn cluster(mut self, index: u64, content: Content) -> Self {
        self.clusters.insert(index, content);
        self
    }

    pub fn backing_file(mut self, name: &str) -> Self {
        self.backing_file = Some(name.to_owned());
        self
    }

    /// Adds a header extension of type `kind`.
    pub fn extension(mut self, kind: u32, data: &[u8]) -> Self {
        self.extensions.push((kind, data.to_vec()));
        self
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn l2_entry_size(&self) -> u64 {
        if self.extended_l2 { 16 } else { 8 }
    }

    fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_size()
    }

    pub fn build(&self) -> Image {
        let c = self.cluster_size();
        let v3_only = self.compression != Compression::Zlib
            || self.extended_l2
            || self.clusters.values().any(|c| matches!(c, Content::Zero));
        assert!(self.version == 3 || !v3_only, "zstd, extended L2 and zero clusters need version 3");
        assert!(self.clusters.keys().all(|&i| i < self.virtual_size.div_ceil(c)), "cluster past the virtual size");
        let l1_size = self.virtual_size.div_ceil(self.l2_entries() * c);
        let mut layout = Layout::new(self, l1_size);
        let payloads = layout.place_clusters(self);
        let mut image = Image {
            bytes: vec![0; layout.next as usize],
            cluster_size: c,
            cluster_bits: self.cluster_bits,
            l2_entry_size: self.l2_entry_size(),
            l2_entries: self.l2_entries(),
            l1_offset: layout.l1_offset,
            l1_size,
            refcount_table_offset: layout.refcount_table_offset,
            l2_offsets: layout.l2_offsets,
            hosts: layout.hosts,
            expected: self.expected_disk(),
        };
        self.write_header(&mut image);
        image.write_refcounts(layout.refcount_block_offset);
        self.write_tables(&mut image, &payloads);
        image
    }

    fn write_header(&self, image: &mut Image) {
        let l1_size = u32::try_from(image.l1_size).expect("l1_size fits the header");
        image.set_bytes(field::MAGIC, b"QFI\xfb");
        image.set_u32(field::VERSION, self.version);
        image.set_u32(field::CLUSTER_BITS, self.cluster_bits);
        image.set_u64(field::SIZE, self.virtual_size);
        image.set_u32(field::L1_SIZE, l1_size);
        image.set_u64(field::L1_TABLE_OFFSET, image.l1_offset);
        image.set_u64(field::REFCOUNT_TABLE_OFFSET, image.refcount_table_offset);
        image.set_u32(field::REFCOUNT_TABLE_CLUSTERS, 1);
        let mut pos = 72;
        if self.version == 3 {
            image.set_u64(field::INCOMPATIBLE_FEATURES, self.incompatible_features());
            image.set_u32(field::REFCOUNT_ORDER, 4);
            image.set_u32(field::HEADER_LENGTH, V3_HEADER_LEN as u32);
            image.set_bytes(field::COMPRESSION_TYPE, &[u8::from(self.compression == Compression::Zstd)]);
            pos = V3_HEADER_LEN;
        }
        for (kind, data) in &self.extensions {
            image.set_u32(pos, *kind);
            image.set_u32(pos + 4, data.len() as u32);
            image.set_bytes(pos + 8, data);
            pos += 8 + (data.len() as u64).next_multiple_of(8);
        }
        pos += 8; // the end-of-extensions marker: type 0, length 0
        if let Some(name) = &self.backing_file {
            image.set_u64(field::BACKING_FILE_OFFSET, pos);
            image.set_u32(field::BACKING_FILE_SIZE, name.len() as u32);
            image.set_bytes(pos, name.as_bytes());
            pos += name.len() as u64;
        }
        assert!(pos <= self.cluster_size(), "header extensions overflow the first cluster");
    }

    fn incompatible_features(&self) -> u64 {
        let mut bits = 0;
        if self.compression == Compression::Zstd {
            bits |= INCOMPAT_COMPRESSION;
        }
        if self.extended_l2 {
            bits |= INCOMPAT_EXTL2;
        }
        bits
    }

    fn write_tables(&self, image: &mut Image, payloads: &BTreeMap<u64, Vec<u8>>) {
        for index in 0..image.l1_size {
            let l2 = image.l2_offsets[index as usize];
            if l2 != 0 {
                image.set_l1_entry(index, l2 | COPIED);
            }
        }
        for (&index, &content) in &self.clusters {
            let host = image.hosts.get(&index).copied().unwrap_or(0);
            let (entry, bitmap) = match content {
                Content::Data(_) => (host | COPIED, 0xffff_ffff),
                Content::Compressed(_) => {
                    (compressed_descriptor(self.cluster_bits, host, payloads[&index].len() as u64), 0)
                }
                Content::Zero if self.extended_l2 => (0, 0xffff_ffff << 32),
                Content::Zero => (L2_ZERO, 0),
            };
            image.set_l2_entry(index, entry);
            if self.extended_l2 {
                image.set_l2_bitmap(index, bitmap);
            }
            if let Some(payload) = payloads.get(&index) {
                image.set_bytes(host, payload);
            }
        }
    }

    /// The bytes of cluster `index` in the file: raw or compressed.
    fn payload(&self, content: Content) -> Option<Vec<u8>> {
        let c = self.cluster_size() as usize;
        match (content, self.compression) {
            (Content::Data(seed), _) => Some(pattern(c, seed)),
            (Content::Compressed(seed), Compression::Zlib) => Some(deflate(&pattern(c, seed))),
            (Content::Compressed(seed), Compression::Zstd) => {
                Some(zstd::bulk::compress(&pattern(c, seed), 3).expect("zstd compresses"))
            }
            (Content::Zero, _) => None,
        }
    }

    /// What the virtual disk reads as.
    fn expected_disk(&self) -> Vec<u8> {
        let c = self.cluster_size();
        let mut disk = vec![0; self.virtual_size as usize];
        for (&index, &content) in &self.clusters {
            if let Content::Data(seed) | Content::Compressed(seed) = content {
                let start = index * c;
                let len = c.min(self.virtual_size - start) as usize;
                disk[start as usize..][..len].copy_from_slice(&pattern(c as usize, seed)[..len]);
            }
        }
        disk
    }
}

/// Where [`Builder::build`] puts each table and cluster.
struct Layout {
    l1_offset: u64,
    refcount_table_offset: u64,
    refcount_block_offset: u64,
    l2_offsets: Vec<u64>,
    hosts: BTreeMap<u64, u64>,
    /// The first free offset: the file length once all is placed.
    next: u64,
}

impl Layout {
    fn new(b: &Builder, l1_size: u64) -> Self {
        let c = b.cluster_size();
        let l1_offset = c;
        let refcount_table_offset = l1_offset + (l1_size * 8).div_ceil(c).max(1) * c;
        Layout {
            l1_offset,
            refcount_table_offset,
            refcount_block_offset: refcount_table_offset + c,
            l2_offsets: vec![0; l1_size as usize],
            hosts: BTreeMap::new(),
            next: refcount_table_offset + 2 * c,
        }
    }

    fn alloc(&mut self, c: u64) -> u64 {
        let at = self.next;
        self.next += c;
        at
    }

    /// Gives every mapped L2 table and every data or compressed cluster a
    /// host cluster; returns the bytes each of those clusters holds.
    fn place_clusters(&mut self, b: &Builder) -> BTreeMap<u64, Vec<u8>> {
        let c = b.cluster_size();
        for &index in b.clusters.keys() {
            let l1_index = (index / b.l2_entries()) as usize;
            if self.l2_offsets[l1_index] == 0 {
                self.l2_offsets[l1_index] = self.alloc(c);
            }
        }
        let mut payloads = BTreeMap::new();
        for (&index, &content) in &b.clusters {
            if let Some(payload) = b.payload(content) {
                assert!(payload.len() as u64 <= c, "cluster {index} does not compress");
                let host = self.alloc(c);
                self.hosts.insert(index, host);
                payloads.insert(index, payload);
            }
        }
        payloads
    }
}

/// A laid-out image and where its parts are.
#[derive(Debug, Clone)]
pub struct Image {
    pub bytes: Vec<u8>,
    pub cluster_size: u64,
    pub cluster_bits: u32,
    pub l2_entry_size: u64,
    pub l2_entries: u64,
    pub l1_offset: u64,
    pub l1_size: u64,
    pub refcount_table_offset: u64,
    /// The L2 table of each L1 entry (0: none).
    pub l2_offsets: Vec<u64>,
    /// The host offset of each data or compressed virtual cluster.
    pub hosts: BTreeMap<u64, u64>,
    /// What the virtual disk reads as.
    pub expected: Vec<u8>,
}

impl Image {
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn set_bytes(&mut self, at: u64, data: &[u8]) {
        self.bytes[at as usize..][..data.len()].copy_from_slice(data);
    }

    pub fn set_u32(&mut self, at: u64, value: u32) {
        self.set_bytes(at, &value.to_be_bytes());
    }

    pub fn set_u64(&mut self, at: u64, value: u64) {
        self.set_bytes(at, &value.to_be_bytes());
    }

    pub fn u64_at(&self, at: u64) -> u64 {
        u64::from_be_bytes(self.bytes[at as usize..][..8].try_into().unwrap())
    }

    /// Sets the header's incompatible feature bits `bits` (keeping the others).
    pub fn set_incompatible(&mut self, bits: u64) {
        let old = self.u64_at(field::INCOMPATIBLE_FEATURES);
        self.set_u64(field::INCOMPATIBLE_FEATURES, old | bits);
    }

    pub fn set_l1_entry(&mut self, index: u64, entry: u64) {
        self.set_u64(self.l1_offset + index * 8, entry);
    }

    /// Where the L2 entry of virtual cluster `index` lives in the file.
    pub fn l2_entry_offset(&self, index: u64) -> u64 {
        let table = self.l2_offsets[(index / self.l2_entries) as usize];
        assert_ne!(table, 0, "virtual cluster {index} has no L2 table");
        table + (index % self.l2_entries) * self.l2_entry_size
    }

    pub fn l2_entry(&self, index: u64) -> u64 {
        self.u64_at(self.l2_entry_offset(index))
    }

    pub fn set_l2_entry(&mut self, index: u64, entry: u64) {
        self.set_u64(self.l2_entry_offset(index), entry);
    }

    /// Sets the subcluster bitmap of an extended L2 entry.
    pub fn set_l2_bitmap(&mut self, index: u64, bitmap: u64) {
        assert_eq!(self.l2_entry_size, 16, "only extended L2 entries have bitmaps");
        self.set_u64(self.l2_entry_offset(index) + 8, bitmap);
    }

    /// Makes virtual cluster `index` (already compressed) hold `payload` as
    /// its compressed bytes, with a descriptor counting its sectors.
    pub fn set_compressed(&mut self, index: u64, payload: &[u8]) {
        let host = self.host(index);
        assert!(payload.len() as u64 <= self.cluster_size, "the payload fits the cluster's slot");
        self.set_bytes(host, payload);
        self.set_l2_entry(index, compressed_descriptor(self.cluster_bits, host, payload.len() as u64));
    }

    /// Host offset of virtual cluster `index` (data or compressed).
    pub fn host(&self, index: u64) -> u64 {
        self.hosts[&index]
    }

    /// Counts each cluster of the file once: header, tables and data.
    fn write_refcounts(&mut self, block: u64) {
        let clusters = self.len() / self.cluster_size;
        assert!(clusters <= self.cluster_size / 2, "one refcount block covers the image");
        self.set_u64(self.refcount_table_offset, block);
        for i in 0..clusters {
            self.set_bytes(block + i * 2, &1u16.to_be_bytes());
        }
    }
}

/// The L2 entry of a compressed cluster of `len` bytes at `host`.
pub fn compressed_descriptor(cluster_bits: u32, host: u64, len: u64) -> u64 {
    let shift = 62 - (cluster_bits - 8);
    let sectors = len.div_ceil(512).max(1);
    L2_COMPRESSED | (sectors - 1) << shift | host
}

/// Deterministic text-like bytes (xorshift over 16 letters and a space):
/// distinct for each seed, compressible to about half.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 4 == 3 { b' ' } else { b'a' + (x % 16) as u8 }
        })
        .collect()
}

/// Raw deflate with QEMU's 4 KiB window, as qcow2 stores zlib clusters.
pub fn deflate(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::Compress::new_with_window_bits(flate2::Compression::best(), false, 12);
    let mut out = Vec::with_capacity(data.len() + 1024);
    let status = z.compress_vec(data, &mut out, flate2::FlushCompress::Finish).expect("deflate");
    assert_eq!(status, flate2::Status::StreamEnd, "deflate output fits");
    out
}
