//! A qcow2 reader built for images from outside: safe on hostile input, fast
//! on big ones.
//!
//! It reads qcow2 versions 2 and 3 with cluster sizes from 512 B to 2 MiB,
//! zlib and zstd compressed clusters, zero clusters (plain and preallocated)
//! and extended L2 entries with subclusters. It refuses, with an error naming
//! the field and its value, anything that points outside the file it was
//! given: backing files and external data files (unless the caller opts in
//! with [`OpenOptions::allow_backing_file`]), and every table offset or size
//! that runs past the file or past QEMU's own limits. Encrypted images are
//! refused. Nothing here panics, aborts or allocates in proportion to a
//! header field that the file size does not back.
//!
//! Two ways in:
//! - [`Qcow2::extents`] iterates the allocation map (data, compressed, zero and
//!   unallocated runs), which is what a converter parallelises over;
//! - [`Qcow2::read_at`] reads any virtual range, decompressing as needed.
//!
//! All reads are positioned ([`ReadAt`]), so one `Qcow2` serves many threads.
//!
//! Two ways out: [`create_overlay`] writes an empty version 3 overlay over a
//! backing file (metadata only, refcounts exact), and [`write_compressed`]
//! writes a raw disk as a zstd- or zlib-compressed image, as `qemu-img
//! convert -c` does, on all cores with bounded memory.
//!
//! ```no_run
//! use vmimg_qcow2::{Qcow2, Allocation};
//! let img = Qcow2::open(std::fs::File::open("disk.qcow2")?)?;
//! for extent in img.extents(0) {
//!     let extent = extent?;
//!     if let Allocation::Compressed { .. } = extent.allocation {
//!         println!("compressed cluster at {:#x}", extent.start);
//!     }
//! }
//! let mut first_sector = [0u8; 512];
//! img.read_at(&mut first_sector, 0, &mut img.decoder()?)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod compress;
mod create;
mod decompress;
mod error;
mod header;
mod map;
mod read_at;

pub use compress::{CompressOptions, CompressStats, DEFAULT_ZLIB_LEVEL, DEFAULT_ZSTD_LEVEL, write_compressed};
pub use create::{BackingFormat, DEFAULT_CLUSTER_BITS, OverlayOptions, create_overlay};
pub use decompress::ClusterDecoder;
pub use error::{Error, Result};
pub use header::{Compression, Encryption, FeatureName, Header, MAGIC};
pub use map::{Allocation, Extent, Extents};
pub use read_at::ReadAt;

use error::invalid;

/// What [`Qcow2::open_with`] lets an image refer to.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Accept an image that names a backing file. The reader still never
    /// opens it: unallocated ranges read as zeros, and following the chain is
    /// the caller's business. Off by default: images from outside are refused.
    pub allow_backing_file: bool,
}

/// An open qcow2 image.
pub struct Qcow2<R> {
    src: R,
    header: Header,
    file_len: u64,
    /// The L1 entries that map the virtual size (trailing spare entries dropped).
    l1: Vec<u64>,
}

impl<R: ReadAt> Qcow2<R> {
    /// Opens an image from outside: backing files, external data files and
    /// encryption are refused.
    pub fn open(src: R) -> Result<Self> {
        Self::open_with(src, OpenOptions::default())
    }

    pub fn open_with(src: R, options: OpenOptions) -> Result<Self> {
        let file_len = src.size().map_err(Error::io("the image size"))?;
        let header = Header::parse(&src, file_len)?;
        refuse_foreign_references(&header, options)?;
        let l1 = read_l1(&src, &header)?;
        Ok(Qcow2 { src, header, file_len, l1 })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn virtual_size(&self) -> u64 {
        self.header.virtual_size
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The underlying byte source.
    pub fn source(&self) -> &R {
        &self.src
    }

    /// The allocation map from virtual offset `from` to the end of the disk.
    pub fn extents(&self, from: u64) -> Extents<'_, R> {
        self.extents_in(from..self.virtual_size())
    }

    /// The allocation map of a virtual range: runs are cut at its ends.
    pub fn extents_in(&self, range: std::ops::Range<u64>) -> Extents<'_, R> {
        Extents::new(&self.header, &self.l1, &self.src, self.file_len, range)
    }

    /// A decompressor for this image's clusters; keep one per thread.
    pub fn decoder(&self) -> Result<ClusterDecoder> {
        ClusterDecoder::new(self.header.compression)
    }

    /// Fills `buf` with the virtual disk's bytes from `offset`. The range must
    /// lie within the virtual size.
    pub fn read_at(&self, buf: &mut [u8], offset: u64, decoder: &mut ClusterDecoder) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= self.virtual_size());
        let Some(end) = end else {
            return Err(invalid!(
                "read of {} bytes at {offset:#x} is past the virtual size {}",
                buf.len(),
                self.virtual_size()
            ));
        };
        let mut scratch = Vec::new();
        for extent in self.extents_in(offset..end) {
            let extent = extent?;
            let out = &mut buf[(extent.start - offset) as usize..][..extent.len as usize];
            self.read_extent_prefix(&extent, out, decoder, &mut scratch)?;
        }
        Ok(())
    }

    /// Fills `out` with the first `out.len()` bytes of `extent`.
    ///
    /// `scratch` holds compressed input and partial clusters between calls.
    pub fn read_extent_prefix(
        &self,
        extent: &Extent,
        out: &mut [u8],
        decoder: &mut ClusterDecoder,
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        debug_assert!(out.len() as u64 <= extent.len);
        match extent.allocation {
            Allocation::Zero | Allocation::Unallocated => out.fill(0),
            Allocation::Data { host_offset } => {
                self.src.read_exact_or_zero_at(out, host_offset).map_err(Error::io("a data cluster"))?
            }
            Allocation::Compressed { host_offset, compressed_len } => {
                scratch.resize(compressed_len as usize, 0);
                self.src.read_exact_or_zero_at(scratch, host_offset).map_err(Error::io("a compressed cluster"))?;
                self.decompress_cluster(extent, scratch, out, decoder)?;
            }
        }
        Ok(())
    }

    /// Decompresses the compressed cluster `extent` from its bytes `input`
    /// into `out` (a prefix of the cluster, usually all of it).
    pub fn decompress_cluster(
        &self,
        extent: &Extent,
        input: &[u8],
        out: &mut [u8],
        decoder: &mut ClusterDecoder,
    ) -> Result<()> {
        let Allocation::Compressed { host_offset, .. } = extent.allocation else {
            return Err(invalid!("extent at {:#x} is not a compressed cluster", extent.start));
        };
        let cluster = self.header.cluster_size() as usize;
        // Compressed extents start on a cluster boundary unless the map was
        // started inside one; decode whole clusters, copy the part wanted.
        let skip = (extent.start % cluster as u64) as usize;
        if skip == 0 && out.len() == cluster {
            return decoder.decompress(input, out, host_offset);
        }
        let mut whole = vec![0u8; cluster];
        decoder.decompress(input, &mut whole, host_offset)?;
        out.copy_from_slice(&whole[skip..skip + out.len()]);
        Ok(())
    }
}

fn refuse_foreign_references(header: &Header, options: OpenOptions) -> Result<()> {
    if let Some(path) = &header.backing_file
        && !options.allow_backing_file
    {
        return Err(Error::BackingFileRefused { path: path.clone() });
    }
    if header.has_external_data_file() {
        let path = header.data_file.clone().unwrap_or_else(|| "(unnamed)".into());
        return Err(Error::DataFileRefused { path });
    }
    match header.encryption {
        Encryption::None => Ok(()),
        other => Err(Error::Encrypted(other.name())),
    }
}

/// Reads the L1 entries that cover the virtual size; the header bounded them.
fn read_l1<R: ReadAt>(src: &R, header: &Header) -> Result<Vec<u64>> {
    let entries = header.l1_entries_needed() as usize;
    let mut raw = vec![0u8; entries * 8];
    src.read_exact_or_zero_at(&mut raw, header.l1_table_offset).map_err(Error::io("the L1 table"))?;
    Ok(raw.chunks_exact(8).map(header::be_u64).collect())
}
