//! A compressed source made into a disk as it streams.
//!
//! The stream is decoded (`vmimg_disk::decoder`) and its first bytes probed
//! again. A raw disk inside is written sparse as the image's disk, straight
//! from the decoder. A qcow2 image inside is written (sparse) to a scratch
//! file in the work directory and converted from there, then the scratch
//! file is removed before the image is published: the qcow2 reader bounds
//! every table by the file's length, which a stream tells only at its end.
//! Anything else inside (an image format vmimg does not read, a stream
//! compressed twice, no disk: text, or a raw disk that turns out at the
//! stream's end not to be a whole number of sectors) is refused by name. The digest is the
//! caller's business: it is taken on the bytes as published, before
//! decoding.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use vmimg_disk::{Content, ConvertOptions, ConvertStats, DiskImage, Format, PROBE_BYTES, Stream};

/// Decodes `src`, a `stream`-compressed source named `label`, into
/// `work/disk.raw`; returns what was inside and the conversion's figures.
pub(crate) fn unpack_to_disk(
    src: impl Read + Send,
    stream: Stream,
    label: &Path,
    work: &Path,
    options: &ConvertOptions,
) -> Result<(Format, ConvertStats)> {
    let inner = PathBuf::from(format!("{} (inside its {} stream)", label.display(), stream.name()));
    let mut decoded = vmimg_disk::decoder(stream, src).map_err(Error::io("decompress", &inner))?;
    let head = vmimg_disk::read_head(&mut decoded, PROBE_BYTES).map_err(Error::io("decompress", &inner))?;
    let disk = work.join("disk.raw");
    match vmimg_disk::probe(&head, None) {
        Content::Raw => {
            let (out, (virtual_size, bytes_written)) = write_out(&head, &mut decoded, &disk, &inner)?;
            // A stream's length is known only at its end.
            if !virtual_size.is_multiple_of(vmimg_disk::SECTOR) {
                let content = Content::NotADisk(vmimg_disk::NotADisk::PartialSector(virtual_size));
                return Err(vmimg_disk::Error::Unsupported { path: inner, content }.into());
            }
            out.sync_all().map_err(Error::io("flush", &disk))?;
            Ok((Format::Raw, ConvertStats { virtual_size, bytes_written }))
        }
        Content::Qcow2 => {
            let scratch = work.join("source.qcow2");
            let (file, _) = write_out(&head, &mut decoded, &scratch, &inner)?;
            let converted = DiskImage::qcow2_from(Box::new(file), &inner)
                .map_err(Error::from)
                .and_then(|image| crate::convert::write_disk(&image, &disk, options));
            std::fs::remove_file(&scratch).map_err(Error::io("remove", &scratch))?;
            Ok((Format::Qcow2, converted?))
        }
        content => Err(vmimg_disk::Error::Unsupported { path: inner, content }.into()),
    }
}

/// Writes the decoded stream (its `head` already read) sparse into a new
/// file at `path`; returns the file, open for reading too, and the sizes
/// `write_sparse` reports.
fn write_out(head: &[u8], decoded: &mut impl Read, path: &Path, inner: &Path) -> Result<(File, (u64, u64))> {
    let out = File::options().create(true).truncate(true).read(true).write(true).open(path);
    let out = out.map_err(Error::io("create", path))?;
    let sizes = vmimg_disk::write_sparse(head, decoded, &out).map_err(Error::io("decompress", inner))?;
    Ok((out, sizes))
}
