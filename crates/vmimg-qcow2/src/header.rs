//! The qcow2 header and its extensions, parsed and bounds-checked.
//!
//! [`Header::parse`] reads only the first cluster and the backing file name,
//! and checks every offset, size and count it finds against the file size and
//! the virtual size before anything else trusts it. It reports the backing
//! file, external data file and encryption as facts (so `info` can show them);
//! the policy of refusing them lives in [`crate::Qcow2::open`].

use crate::error::{Error, Result, invalid};
use crate::read_at::ReadAt;

/// The four bytes every qcow2 image starts with.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Smallest and largest cluster size QEMU creates or opens (512 B, 2 MiB).
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// QEMU's cap on the L1 table (32 MiB of entries); it also caps the virtual size.
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// QEMU's cap on the refcount table (8 MiB).
pub const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;
/// QEMU's cap on snapshots per image.
pub const MAX_SNAPSHOTS: u32 = 65536;
/// QEMU's cap on a backing or data file name.
pub const MAX_FILE_NAME: u32 = 1023;

const V2_HEADER_LEN: u32 = 72;
pub(crate) const V3_HEADER_LEN: u32 = 104;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = (1 << 5) - 1;
const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

pub(crate) const EXT_END: u32 = 0;
pub(crate) const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
const EXT_CRYPTO_HEADER: u32 = 0x0537_be77;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// How compressed clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate (RFC 1951) with a 4 KiB window: the default and v2's only choice.
    Zlib,
    /// One or more zstd frames.
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::Zlib => "zlib",
            Compression::Zstd => "zstd",
        }
    }
}

/// How the image's clusters are encrypted, if they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    None,
    /// The legacy, insecure AES-CBC scheme.
    Aes,
    Luks,
}

impl Encryption {
    pub fn name(self) -> &'static str {
        match self {
            Encryption::None => "none",
            Encryption::Aes => "aes",
            Encryption::Luks => "luks",
        }
    }
}

/// Everything the header and its extensions say, after validation.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub virtual_size: u64,
    pub encryption: Encryption,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression: Compression,
    /// The backing file name the header points to, if any.
    pub backing_file: Option<String>,
    /// The backing file format from the header extension, if any.
    pub backing_format: Option<String>,
    /// The external data file name from the header extension, if any.
    pub data_file: Option<String>,
    /// Names the image gives its feature bits (used in error messages).
    pub feature_names: Vec<FeatureName>,
}

/// One entry of the feature name table extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub kind: u8,
    pub bit: u8,
    pub name: String,
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Bytes per L2 entry: 8, or 16 with extended L2 entries.
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() { 16 } else { 8 }
    }

    /// Entries per L2 table (an L2 table fills one cluster).
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_size()
    }

    /// Bytes one L2 table maps.
    pub fn l2_coverage(&self) -> u64 {
        self.l2_entries() << self.cluster_bits
    }

    /// Subclusters per cluster: 32 with extended L2 entries, else 1.
    pub fn subclusters(&self) -> u64 {
        if self.extended_l2() { 32 } else { 1 }
    }

    pub fn dirty(&self) -> bool {
        self.incompatible_features & INCOMPAT_DIRTY != 0
    }

    pub fn corrupt(&self) -> bool {
        self.incompatible_features & INCOMPAT_CORRUPT != 0
    }

    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }

    pub fn lazy_refcounts(&self) -> bool {
        self.compatible_features & COMPAT_LAZY_REFCOUNTS != 0
    }

    /// True when the image says its data lives in another file.
    pub fn has_external_data_file(&self) -> bool {
        self.incompatible_features & INCOMPAT_DATA_FILE != 0 || self.data_file.is_some()
    }

    pub fn data_file_raw(&self) -> bool {
        self.autoclear_features & AUTOCLEAR_DATA_FILE_RAW != 0
    }

    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// `"0.10"` for version 2, `"1.1"` for version 3, as `qemu-img info` says.
    pub fn compat(&self) -> &'static str {
        if self.version == 2 { "0.10" } else { "1.1" }
    }

    /// L1 entries needed to map the whole virtual size.
    pub fn l1_entries_needed(&self) -> u64 {
        self.virtual_size.div_ceil(self.l2_coverage())
    }

    /// Reads and validates the header of `src`, whose length is `file_len`.
    pub fn parse<R: ReadAt + ?Sized>(src: &R, file_len: u64) -> Result<Header> {
        let mut fixed = [0u8; V3_HEADER_LEN as usize];
        if file_len < V2_HEADER_LEN as u64 {
            return if file_len >= 4 && read_magic(src)? == MAGIC {
                Err(invalid!("file is {file_len} bytes, shorter than a qcow2 header"))
            } else {
                Err(Error::NotQcow2)
            };
        }
        src.read_exact_or_zero_at(&mut fixed, 0).map_err(Error::io("the qcow2 header"))?;
        let f = Fields(&fixed);
        if fixed[..4] != MAGIC {
            return Err(Error::NotQcow2);
        }
        let version = f.u32(4);
        if version != 2 && version != 3 {
            return Err(Error::UnsupportedVersion(version));
        }
        let mut h = Header {
            version,
            cluster_bits: f.u32(20),
            virtual_size: f.u64(24),
            encryption: Encryption::None,
            l1_size: f.u32(36),
            l1_table_offset: f.u64(40),
            refcount_table_offset: f.u64(48),
            refcount_table_clusters: f.u32(56),
            nb_snapshots: f.u32(60),
            snapshots_offset: f.u64(64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression: Compression::Zlib,
            backing_file: None,
            backing_format: None,
            data_file: None,
            feature_names: Vec::new(),
        };
        h.encryption = match f.u32(32) {
            0 => Encryption::None,
            1 => Encryption::Aes,
            2 => Encryption::Luks,
            m => return Err(invalid!("unknown encryption method {m} in header field crypt_method")),
        };
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&h.cluster_bits) {
            return Err(invalid!(
                "cluster_bits is {}; qcow2 cluster sizes range from 512 B (9) to 2 MiB (21)",
                h.cluster_bits
            ));
        }
        if version == 3 {
            if file_len < V3_HEADER_LEN as u64 {
                return Err(invalid!("file is {file_len} bytes, shorter than a version 3 header"));
            }
            h.incompatible_features = f.u64(72);
            h.compatible_features = f.u64(80);
            h.autoclear_features = f.u64(88);
            h.refcount_order = f.u32(96);
            h.header_length = f.u32(100);
        }
        h.check_features()?;
        let first_cluster = h.read_first_cluster(src, file_len)?;
        if h.header_length > V3_HEADER_LEN {
            h.compression = match first_cluster[V3_HEADER_LEN as usize] {
                0 => Compression::Zlib,
                1 => Compression::Zstd,
                t => return Err(invalid!("unknown compression_type {t}")),
            };
        }
        if (h.compression != Compression::Zlib) != (h.incompatible_features & INCOMPAT_COMPRESSION != 0) {
            return Err(invalid!(
                "the compression type bit and the compression_type field disagree \
                 (bit set: {}, field: {})",
                h.incompatible_features & INCOMPAT_COMPRESSION != 0,
                h.compression.name()
            ));
        }
        h.parse_extensions(&first_cluster, f.u64(8))?;
        h.read_backing_file_name(src, file_len, f.u64(8), f.u32(16))?;
        h.check_tables(file_len)?;
        Ok(h)
    }

    fn check_features(&self) -> Result<()> {
        let unknown = self.incompatible_features & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(Error::Unsupported(format!(
                "incompatible feature bits {unknown:#x} are set; this reader does not know them"
            )));
        }
        if self.version == 3 {
            if self.header_length < V3_HEADER_LEN || !self.header_length.is_multiple_of(8) {
                return Err(invalid!(
                    "header_length is {}; version 3 needs at least 104 and a multiple of 8",
                    self.header_length
                ));
            }
            if u64::from(self.header_length) > self.cluster_size() {
                return Err(invalid!(
                    "header_length {} is larger than the cluster size {}",
                    self.header_length,
                    self.cluster_size()
                ));
            }
        }
        if self.refcount_order > 6 {
            return Err(invalid!("refcount_order is {}; at most 6 (64-bit refcounts)", self.refcount_order));
        }
        if self.extended_l2() && self.cluster_bits < 14 {
            return Err(invalid!(
                "extended L2 entries need clusters of at least 16 KiB, the image has {} B",
                self.cluster_size()
            ));
        }
        Ok(())
    }

    /// The header area: the first cluster (or the whole file, if shorter).
    fn read_first_cluster<R: ReadAt + ?Sized>(&self, src: &R, file_len: u64) -> Result<Vec<u8>> {
        let len = self.cluster_size().min(file_len);
        let mut buf = vec![0u8; len as usize];
        src.read_exact_or_zero_at(&mut buf, 0).map_err(Error::io("the qcow2 header cluster"))?;
        buf.resize(self.cluster_size() as usize, 0);
        Ok(buf)
    }

    /// Walks the header extensions, which live between the header and the end
    /// of the first cluster (or the backing file name, if that comes first).
    fn parse_extensions(&mut self, cluster: &[u8], backing_offset: u64) -> Result<()> {
        let mut end = cluster.len();
        if backing_offset != 0 && backing_offset < end as u64 {
            end = backing_offset as usize;
        }
        let mut pos = self.header_length as usize;
        while pos + 8 <= end {
            let kind = be_u32(&cluster[pos..]);
            let len = be_u32(&cluster[pos + 4..]) as usize;
            let data_start = pos + 8;
            if len > end - data_start {
                return Err(invalid!(
                    "header extension {kind:#010x} at offset {pos} claims {len} bytes, \
                     past the end of the header area ({end} bytes)"
                ));
            }
            let data = &cluster[data_start..data_start + len];
            match kind {
                EXT_END => return Ok(()),
                EXT_BACKING_FORMAT => self.backing_format = Some(ext_string(data, "backing format")?),
                EXT_DATA_FILE => self.data_file = Some(ext_string(data, "external data file name")?),
                EXT_FEATURE_TABLE => self.feature_names = parse_feature_table(data),
                EXT_CRYPTO_HEADER if self.encryption != Encryption::Luks => {
                    return Err(invalid!("a LUKS header extension is present but crypt_method is not LUKS"));
                }
                _ => {}
            }
            pos = data_start + len.next_multiple_of(8);
        }
        Ok(())
    }

    fn read_backing_file_name<R: ReadAt + ?Sized>(
        &mut self,
        src: &R,
        file_len: u64,
        offset: u64,
        size: u32,
    ) -> Result<()> {
        if offset == 0 {
            return Ok(());
        }
        if size > MAX_FILE_NAME {
            return Err(invalid!("backing_file_size is {size}; at most {MAX_FILE_NAME} bytes"));
        }
        check_range(offset, u64::from(size), file_len, "backing file name")?;
        if offset < u64::from(self.header_length) {
            return Err(invalid!("backing file name at offset {offset} overlaps the header"));
        }
        let mut name = vec![0u8; size as usize];
        src.read_exact_or_zero_at(&mut name, offset).map_err(Error::io("the backing file name"))?;
        self.backing_file = Some(String::from_utf8_lossy(&name).into_owned());
        Ok(())
    }

    /// Bounds the L1, refcount and snapshot tables by QEMU's caps and the file.
    fn check_tables(&self, file_len: u64) -> Result<()> {
        let cluster = self.cluster_size();
        let max_l1 = MAX_L1_BYTES / 8;
        let needed = self.l1_entries_needed();
        if needed > max_l1 {
            return Err(invalid!(
                "virtual size {} needs {needed} L1 entries; at most {max_l1} fit QEMU's 32 MiB \
                 L1 limit at this cluster size",
                self.virtual_size
            ));
        }
        if u64::from(self.l1_size) > max_l1 {
            return Err(invalid!("l1_size is {}; at most {max_l1} entries", self.l1_size));
        }
        if u64::from(self.l1_size) < needed {
            return Err(invalid!(
                "l1_size is {} but the virtual size {} needs {needed} entries",
                self.l1_size,
                self.virtual_size
            ));
        }
        if self.l1_size > 0 {
            check_aligned(self.l1_table_offset, cluster, "L1 table")?;
            check_range(self.l1_table_offset, u64::from(self.l1_size) * 8, file_len, "L1 table")?;
        }
        let reftable_bytes = u64::from(self.refcount_table_clusters) * cluster;
        if reftable_bytes > MAX_REFCOUNT_TABLE_BYTES {
            return Err(invalid!(
                "refcount table of {} clusters is larger than QEMU's 8 MiB limit",
                self.refcount_table_clusters
            ));
        }
        check_aligned(self.refcount_table_offset, cluster, "refcount table")?;
        check_range(self.refcount_table_offset, reftable_bytes, file_len, "refcount table")?;
        if self.nb_snapshots > MAX_SNAPSHOTS {
            return Err(invalid!("nb_snapshots is {}; at most {MAX_SNAPSHOTS}", self.nb_snapshots));
        }
        if self.nb_snapshots > 0 {
            check_aligned(self.snapshots_offset, cluster, "snapshot table")?;
            // Each snapshot header takes at least 40 bytes.
            check_range(self.snapshots_offset, u64::from(self.nb_snapshots) * 40, file_len, "snapshot table")?;
        }
        Ok(())
    }

    /// The name the image's feature table gives an incompatible feature bit.
    pub fn incompatible_feature_name(&self, bit: u8) -> Option<&str> {
        self.feature_names.iter().find(|f| f.kind == 0 && f.bit == bit).map(|f| f.name.as_str())
    }
}

fn read_magic<R: ReadAt + ?Sized>(src: &R) -> Result<[u8; 4]> {
    let mut magic = [0u8; 4];
    src.read_exact_or_zero_at(&mut magic, 0).map_err(Error::io("the file's first bytes"))?;
    Ok(magic)
}

/// Checks that `[offset, offset + len)` lies inside a file of `file_len` bytes.
pub(crate) fn check_range(offset: u64, len: u64, file_len: u64, what: &str) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= file_len => Ok(()),
        _ => {
            Err(invalid!("{what} at offset {offset:#x} ({len} bytes) runs past the end of the file ({file_len} bytes)"))
        }
    }
}

pub(crate) fn check_aligned(offset: u64, cluster: u64, what: &str) -> Result<()> {
    if !offset.is_multiple_of(cluster) {
        return Err(invalid!("{what} offset {offset:#x} is not aligned to the cluster size {cluster}"));
    }
    Ok(())
}

fn ext_string(data: &[u8], what: &str) -> Result<String> {
    if data.len() > MAX_FILE_NAME as usize {
        return Err(invalid!("{what} header extension is {} bytes; at most {MAX_FILE_NAME}", data.len()));
    }
    let data = data.split(|&b| b == 0).next().unwrap_or_default();
    Ok(String::from_utf8_lossy(data).into_owned())
}

fn parse_feature_table(data: &[u8]) -> Vec<FeatureName> {
    data.chunks_exact(48)
        .map(|entry| {
            let name = entry[2..].split(|&b| b == 0).next().unwrap_or_default();
            FeatureName { kind: entry[0], bit: entry[1], name: String::from_utf8_lossy(name).into_owned() }
        })
        .collect()
}

pub(crate) fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

pub(crate) fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// Big-endian field access into the fixed header.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u32(&self, at: usize) -> u32 {
        be_u32(&self.0[at..])
    }
    fn u64(&self, at: usize) -> u64 {
        be_u64(&self.0[at..])
    }
}
