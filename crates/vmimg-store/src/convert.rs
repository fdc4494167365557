//! Making a disk from a source in a work directory: what a pull's
//! makers (a URL, a file, an OCI cloud image) share. The source is probed
//! by its bytes: a qcow2 image is converted, a compressed stream decoded
//! (and what is inside made into the disk), a raw disk made sparse; anything
//! else is refused.

use crate::error::{Error, Result};
use crate::growing::{GrowingFile, Sequential};
use crate::source::Resolved;
use crate::unpack::unpack_to_disk;
use std::fs::File;
use std::path::Path;
use vmimg_disk::{Content, ConvertOptions, ConvertStats, DiskImage, Format, PROBE_BYTES, Stream};
use vmimg_fetch::Digest;

/// What making a disk starts from: the source, and the work directory to
/// make it in.
#[derive(Clone, Copy)]
pub(crate) struct Job<'a> {
    pub(crate) source: &'a Resolved,
    pub(crate) work: &'a Path,
}

/// A disk made in a work directory, not yet published.
pub(crate) struct Made {
    pub(crate) digest: Digest,
    pub(crate) converted: Converted,
    pub(crate) blob: Option<String>,
    /// The blobs of a source in parts.
    pub(crate) blobs: Vec<String>,
    /// The version of the file a URL served.
    pub(crate) validators: vmimg_fetch::Validators,
}

/// What the source was, and what making its disk did.
pub(crate) struct Converted {
    pub(crate) source_format: Format,
    /// The stream the source came compressed in, if any.
    pub(crate) compression: Option<Stream>,
    pub(crate) stats: ConvertStats,
}

impl Converted {
    pub(crate) fn plain(source_format: Format, stats: ConvertStats) -> Converted {
        Converted { source_format, compression: None, stats }
    }
}

/// Makes the disk while the download arrives: a qcow2 image converted, a
/// compressed stream decoded (and what is inside made into the disk). None
/// for a raw source, made sparse once complete (its trailer probed too).
/// Anything else is refused from its first bytes.
pub(crate) fn convert_while_downloading(
    reader: GrowingFile,
    label: &Path,
    work: &Path,
    options: &ConvertOptions,
) -> Result<Option<Converted>> {
    let mut sequential = Sequential::new(&reader);
    let head = vmimg_disk::read_head(&mut sequential, PROBE_BYTES).map_err(Error::io("read", label))?;
    match vmimg_disk::probe(&head, None) {
        Content::Raw => Ok(None),
        Content::Qcow2 => {
            let image = DiskImage::qcow2_from(Box::new(reader), label)?;
            let stats = write_disk(&image, &work.join("disk.raw"), options)?;
            Ok(Some(Converted::plain(Format::Qcow2, stats)))
        }
        Content::Compressed(stream) => {
            let (source_format, stats) = unpack_to_disk(Sequential::new(&reader), stream, label, work, options)?;
            Ok(Some(Converted { source_format, compression: Some(stream), stats }))
        }
        content => Err(vmimg_disk::Error::Unsupported { path: label.to_owned(), content }.into()),
    }
}

/// Makes the disk from a complete source file (`label` names it in errors):
/// probed, then converted, or decoded and what is inside converted.
pub(crate) fn convert_source_file(
    src: &Path,
    label: &Path,
    work: &Path,
    options: &ConvertOptions,
) -> Result<Converted> {
    let file = File::open(src).map_err(Error::io("open", src))?;
    if let Content::Compressed(stream) = vmimg_disk::probe_file(&file).map_err(Error::io("read", src))? {
        let (source_format, stats) = unpack_to_disk(file, stream, label, work, options)?;
        return Ok(Converted { source_format, compression: Some(stream), stats });
    }
    let image = DiskImage::from_file(file, label, None)?;
    let stats = write_disk(&image, &work.join("disk.raw"), options)?;
    Ok(Converted::plain(image.format(), stats))
}

/// Completes the disk of a verified download: what the converter made while
/// it arrived, else (a raw source, or a conversion cut short by a restarted
/// download) the disk made from the whole file now; a raw source's file is
/// then made sparse.
pub(crate) fn finish_download(
    streamed: Result<Option<Converted>>,
    partial: &Path,
    label: &Path,
    work: &Path,
    options: &ConvertOptions,
) -> Result<Converted> {
    let converted = match streamed {
        Ok(Some(converted)) => converted,
        _ => convert_source_file(partial, label, work, options)?,
    };
    if converted.source_format == Format::Raw && converted.compression.is_none() {
        keep_sparse(partial, &work.join("disk.raw"))?;
    }
    Ok(converted)
}

/// Whether `error` refuses the source for what it is (so no retry or
/// later look can help).
pub(crate) fn is_refusal(error: &Error) -> bool {
    use vmimg_disk::Error::{HeaderInDisk, HeaderInRaw, Unsupported};
    matches!(error, Error::Disk(Unsupported { .. } | HeaderInRaw { .. } | HeaderInDisk { .. }))
}

/// Punches holes in a raw source's downloaded file where its disk has them:
/// the blob keeps its bytes (and digest) and stops costing its zeros.
fn keep_sparse(partial: &Path, disk: &Path) -> Result<()> {
    let target = File::options().write(true).open(partial).map_err(Error::io("open", partial))?;
    let model = File::open(disk).map_err(Error::io("open", disk))?;
    vmimg_disk::punch_holes_like(&target, &model).map_err(Error::io("punch holes in", partial))?;
    target.sync_all().map_err(Error::io("flush", partial))
}

pub(crate) fn write_disk(image: &DiskImage, disk: &Path, options: &ConvertOptions) -> Result<ConvertStats> {
    let out = File::create(disk).map_err(Error::io("create", disk))?;
    let stats = vmimg_disk::convert_to_raw(image, &out, options)?;
    out.sync_all().map_err(Error::io("flush", disk))?;
    Ok(stats)
}
