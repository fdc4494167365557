//! Disk images as vmimg handles them: what format a file is, what it holds,
//! and turning it quickly into a sparse raw disk or a compressed qcow2 image.
//!
//! - [`DiskImage`] opens a raw or qcow2 file, probing only when the caller did
//!   not name the format (a file that probes as raw is never read as qcow2);
//!   [`DiskImage::open_chain`] opens an overlay the store made with its
//!   backing chain, which then reads and converts as one disk;
//! - [`probe`] and [`probe_file`] tell what a file is from its magic: raw,
//!   qcow2, a compressed stream, another image format, or no disk at all;
//!   [`ensure_plain_raw`] refuses a raw disk that carries an image header;
//! - [`ImageInfo`] is the set of facts `qemu-img info` reports, in its JSON shape;
//! - [`convert_to_raw`] and [`convert_to_path`] write a sparse raw copy whose
//!   bytes equal `qemu-img convert -O raw` and which allocates no more than it,
//!   decompressing on all cores with positioned writes;
//! - [`copy_raw`] copies a raw disk keeping its holes (reflink, else
//!   `copy_file_range` or reads and writes of its data ranges), optionally
//!   extended;
//! - [`convert_to_qcow2`] writes a raw or qcow2 image as a zstd- (or zlib-)
//!   compressed qcow2 image, as `qemu-img convert -c` does, the form vmimg
//!   pushes disks in: compressed on all cores, written front to back with
//!   bounded memory, published atomically;
//! - [`decoder`] decompresses the gzip, xz, zstd and bzip2 streams disks are
//!   published in, and [`write_sparse`] writes a raw disk from a stream;
//! - [`publish`] writes a file so that it appears whole or not at all, and
//!   [`publish_path`] does the same for a tool that writes it by name;
//! - [`parse_size`] reads sizes such as `20G`; [`format_size`] writes them
//!   for people (`1.5 GiB`).
//!
//! This crate knows files only: no network, no store.

mod chain;
mod convert;
mod copy;
mod error;
mod image;
mod info;
mod probe;
mod publish;
mod raw;
mod size;
mod to_qcow2;
mod unpack;
mod zero;

pub use chain::MAX_CHAIN_DEPTH;
pub use convert::{ConvertOptions, ConvertStats, convert_to_path, convert_to_raw};
pub use copy::{CopyMethod, CopyOptions, CopyStats, copy_raw};
pub use error::{Error, Result};
pub use image::{DiskImage, Format, Qcow2Source};
pub use info::{EncryptFacts, FormatSpecific, ImageInfo, Qcow2Facts};
pub use probe::{
    Content, Foreign, MIN_DISK_BYTES, NotADisk, PROBE_BYTES, SECTOR, Stream, TAIL_BYTES, ensure_plain_raw,
    looks_like_text, probe, probe_file, probe_tail,
};
pub use publish::{Replace, check_destination, publish, publish_path};
pub use raw::raw_extents;
pub use size::{format_size, parse_size};
pub use to_qcow2::{Qcow2ConvertOptions, convert_to_qcow2};
pub use unpack::{MAX_UNPACKED, decoder, read_head, write_sparse};
pub use vmimg_qcow2::{CompressOptions, CompressStats, Compression};
pub use zero::{BLOCK, is_zero, punch_holes_like, write_skipping_zeros};
