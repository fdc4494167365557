//! Conversion of a raw or qcow2 image to a sparse raw disk, on all cores.
//!
//! The allocation map is cut into batches: runs of data and compressed
//! clusters that are contiguous in the virtual disk, at most [`BATCH_BYTES`]
//! each. Zero and unallocated runs are never batched: the output is sized
//! with `set_len` first, so they are holes already. Worker threads take
//! batches from a shared cursor, read each batch's compressed clusters in one
//! positioned read, decompress them with their own decoder, and write the
//! result with positioned writes in whatever order they finish, skipping
//! every 4 KiB block that is all zeros. Memory is a few batch buffers per
//! worker, whatever the image size.
//!
//! A trusted backing chain ([`DiskImage::open_chain`]) converts as the one
//! disk it stands for: its merged allocation map names the image ("layer")
//! each extent reads from, and a batch never spans two layers.

use crate::chain::{LayerExtent, LayerExtents, chain_extents};
use crate::error::{Error, Result};
use crate::image::{DiskImage, Kind, Qcow2Source};
use crate::publish::publish;
use crate::zero::write_skipping_zeros;
use std::fs::File;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use vmimg_qcow2::{Allocation, ClusterDecoder, Extent, Qcow2, ReadAt};

/// The most virtual bytes one batch covers.
pub const BATCH_BYTES: u64 = 2 << 20;
/// The largest host span read at once for a batch's compressed clusters.
const MAX_COMPRESSED_SPAN: u64 = 2 * BATCH_BYTES;
/// The most workers chosen by default: past this, writes into one file's
/// page cache contend on its inode lock and each worker only adds memory
/// (at most a batch, a compressed span and a cluster: about 8 MiB).
const MAX_DEFAULT_WORKERS: usize = 8;

/// How to convert.
#[derive(Debug, Clone, Copy)]
pub struct ConvertOptions {
    /// Worker threads; 0 means one per available core (at most 8).
    pub threads: usize,
    /// Flush the output to stable storage before it is published.
    pub sync: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions { threads: 0, sync: true }
    }
}

impl ConvertOptions {
    fn worker_count(&self) -> usize {
        match self.threads {
            0 => thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_DEFAULT_WORKERS),
            n => n,
        }
    }
}

/// What a conversion did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvertStats {
    pub virtual_size: u64,
    /// Bytes actually written (everything else is a hole).
    pub bytes_written: u64,
}

/// Converts `src` into `dst` (truncated first) as a sparse raw disk.
/// A disk that would start with an image header is refused before anything
/// is written (see `probe.rs`).
pub fn convert_to_raw(src: &DiskImage, dst: &File, options: &ConvertOptions) -> Result<ConvertStats> {
    src.ensure_plain_head()?;
    let virtual_size = src.virtual_size()?;
    size_output(dst, virtual_size).map_err(Error::io("cannot size the output for", src.path()))?;
    let batcher = Mutex::new(Batcher::new(chain_extents(src)?));
    let written = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    thread::scope(|s| {
        for _ in 0..options.worker_count() {
            s.spawn(|| {
                let outcome = Worker::new(src, dst).and_then(|mut w| w.run(&batcher, &written, &failed));
                if let Err(e) = outcome {
                    failed.store(true, Ordering::Relaxed);
                    first_error.lock().expect("error slot").get_or_insert(e);
                }
            });
        }
    });
    match first_error.into_inner().expect("error slot") {
        Some(e) => Err(e),
        None => Ok(ConvertStats { virtual_size, bytes_written: written.into_inner() }),
    }
}

/// Makes `dst` a hole of `len` bytes. An empty file is only extended: on
/// ext4, truncating to zero arms a flush of the whole file at close.
fn size_output(dst: &File, len: u64) -> std::io::Result<()> {
    if dst.metadata()?.len() != 0 {
        dst.set_len(0)?;
    }
    dst.set_len(len)
}

/// Converts `src` to a sparse raw file at `dst`, atomically: the data goes to
/// a temporary file beside `dst`, which is flushed (unless `options.sync` is
/// off) and renamed over `dst` only when complete. On failure nothing is left.
/// Refused before any work: a `dst` that [`crate::check_destination`]
/// refuses (a directory, a device, a missing directory) and `dst` being the
/// source itself.
pub fn convert_to_path(src: &DiskImage, dst: &Path, options: &ConvertOptions) -> Result<ConvertStats> {
    let stem = src.path().file_stem().map(|stem| format!("{}.raw", stem.to_string_lossy()));
    crate::publish::check_destination(dst, stem.as_deref())?;
    refuse_same_file("converting", src.path(), dst)?;
    publish(dst, options.sync, |file| convert_to_raw(src, file, options))
}

/// Refuses `dst` when it is `src` (the same inode: the path, a hard link or
/// a symbolic link to it): the output would replace its own source.
pub(crate) fn refuse_same_file(verb: &'static str, src: &Path, dst: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(src), std::fs::metadata(dst)) {
        (Ok(ours), Ok(theirs)) if (ours.dev(), ours.ino()) == (theirs.dev(), theirs.ino()) => {
            Err(Error::SameFile { verb, src: src.to_owned(), dst: dst.to_owned() })
        }
        _ => Ok(()),
    }
}

/// A run of contiguous data or compressed extents of one layer, converted as one unit.
struct Batch {
    layer: usize,
    extents: Vec<Extent>,
}

impl Batch {
    fn start(&self) -> u64 {
        self.extents[0].start
    }

    fn len(&self) -> u64 {
        self.extents.last().map_or(0, Extent::end) - self.start()
    }

    /// The host byte range holding all the batch's compressed clusters, when
    /// they lie close enough together to read in one go.
    fn compressed_span(&self) -> Option<(u64, u64)> {
        let mut span: Option<(u64, u64)> = None;
        let mut total = 0;
        for e in &self.extents {
            if let Allocation::Compressed { host_offset, compressed_len } = e.allocation {
                let (lo, hi) = span.unwrap_or((host_offset, host_offset));
                span = Some((lo.min(host_offset), hi.max(host_offset + compressed_len)));
                total += compressed_len;
            }
        }
        span.filter(|(lo, hi)| hi - lo <= MAX_COMPRESSED_SPAN && hi - lo <= total * 2)
    }
}

/// Cuts the allocation map into batches; shared by the workers under a lock.
struct Batcher<'a> {
    extents: LayerExtents<'a>,
    carry: Option<LayerExtent>,
}

impl<'a> Batcher<'a> {
    fn new(extents: LayerExtents<'a>) -> Self {
        Batcher { extents, carry: None }
    }

    fn next_batch(&mut self) -> Option<Result<Batch>> {
        let mut batch = Batch { layer: 0, extents: Vec::new() };
        let mut len = 0;
        loop {
            let LayerExtent { layer, extent } = match self.carry.take().map(Ok).or_else(|| self.extents.next()) {
                None => break,
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(e)) => e,
            };
            if extent.reads_as_zero() {
                if batch.extents.is_empty() {
                    continue;
                }
                break;
            }
            if batch.extents.is_empty() {
                batch.layer = layer;
            }
            let contiguous = layer == batch.layer && batch.extents.last().is_none_or(|last| last.end() == extent.start);
            let room = BATCH_BYTES.saturating_sub(len);
            if !contiguous || (room < extent.len && !batch.extents.is_empty() && !is_data(&extent)) || room == 0 {
                self.carry = Some(LayerExtent { layer, extent });
                break;
            }
            let (head, tail) = split_data(extent, room);
            len += head.len;
            batch.extents.push(head);
            if let Some(tail) = tail {
                self.carry = Some(LayerExtent { layer, extent: tail });
                break;
            }
        }
        (!batch.extents.is_empty()).then_some(Ok(batch))
    }
}

fn is_data(e: &Extent) -> bool {
    matches!(e.allocation, Allocation::Data { .. })
}

/// Splits a data extent longer than `room` into its first `room` bytes and
/// the rest; other extents are returned whole.
fn split_data(e: Extent, room: u64) -> (Extent, Option<Extent>) {
    match e.allocation {
        Allocation::Data { host_offset } if e.len > room => (
            Extent { len: room, ..e },
            Some(Extent {
                start: e.start + room,
                len: e.len - room,
                allocation: Allocation::Data { host_offset: host_offset + room },
            }),
        ),
        _ => (e, None),
    }
}

/// One conversion thread with its own buffers and decoders.
struct Worker<'a> {
    /// The image converted, then its backing chain: indexed by layer.
    layers: Vec<&'a DiskImage>,
    dst: &'a File,
    /// A decoder for each qcow2 layer.
    decoders: Vec<Option<ClusterDecoder>>,
    buf: Vec<u8>,
    compressed: Vec<u8>,
    scratch: Vec<u8>,
}

impl<'a> Worker<'a> {
    fn new(src: &'a DiskImage, dst: &'a File) -> Result<Self> {
        let layers: Vec<_> = std::iter::successors(Some(src), |image| image.backing()).collect();
        let decoders = layers
            .iter()
            .map(|image| match image.kind() {
                Kind::Qcow2(img) => img.decoder().map(Some).map_err(Error::qcow2(image.path())),
                Kind::Raw(_) => Ok(None),
            })
            .collect::<Result<_>>()?;
        Ok(Worker { layers, dst, decoders, buf: Vec::new(), compressed: Vec::new(), scratch: Vec::new() })
    }

    fn run(&mut self, batcher: &Mutex<Batcher>, written: &AtomicU64, failed: &AtomicBool) -> Result<()> {
        while !failed.load(Ordering::Relaxed) {
            let next = batcher.lock().expect("batcher").next_batch();
            let Some(batch) = next.transpose()? else { return Ok(()) };
            written.fetch_add(self.convert(&batch)?, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Reads, decompresses and writes one batch; returns the bytes written.
    fn convert(&mut self, batch: &Batch) -> Result<u64> {
        let len = batch.len() as usize;
        grown(&mut self.buf, len);
        let image = self.layers[batch.layer];
        match image.kind() {
            Kind::Raw(file) => self.fill_raw(image.path(), file, batch)?,
            Kind::Qcow2(img) => self.fill_qcow2(image.path(), img, batch)?,
        }
        write_skipping_zeros(self.dst, &self.buf[..len], batch.start())
            .map_err(Error::io("cannot write the output for", self.layers[0].path()))
    }

    /// The part of the batch buffer that holds `extent`.
    fn slot<'b>(buf: &'b mut [u8], batch: &Batch, extent: &Extent) -> &'b mut [u8] {
        &mut buf[(extent.start - batch.start()) as usize..][..extent.len as usize]
    }

    fn fill_raw(&mut self, path: &Path, file: &File, batch: &Batch) -> Result<()> {
        for e in &batch.extents {
            file.read_exact_or_zero_at(Self::slot(&mut self.buf, batch, e), e.start)
                .map_err(Error::io("cannot read", path))?;
        }
        Ok(())
    }

    fn fill_qcow2(&mut self, path: &Path, img: &Qcow2<Qcow2Source>, batch: &Batch) -> Result<()> {
        let decoder = self.decoders[batch.layer].as_mut().expect("qcow2 layers have a decoder");
        let span = batch.compressed_span();
        if let Some((lo, hi)) = span {
            img.source()
                .read_exact_or_zero_at(grown(&mut self.compressed, (hi - lo) as usize), lo)
                .map_err(Error::io("cannot read", path))?;
        }
        for e in &batch.extents {
            let out = Self::slot(&mut self.buf, batch, e);
            let outcome = match (e.allocation, span) {
                (Allocation::Compressed { host_offset, compressed_len }, Some((lo, _))) => {
                    let input = &self.compressed[(host_offset - lo) as usize..][..compressed_len as usize];
                    img.decompress_cluster(e, input, out, decoder)
                }
                _ => img.read_extent_prefix(e, out, decoder, &mut self.scratch),
            };
            outcome.map_err(Error::qcow2(path))?;
        }
        Ok(())
    }
}

/// The first `len` bytes of `buf`, grown if needed. Buffers only grow, so a
/// worker zeroes each byte of its buffers once, not once per batch.
fn grown(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    &mut buf[..len]
}
