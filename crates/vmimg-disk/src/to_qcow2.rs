//! Writing a disk image as a compressed qcow2 image, the form vmimg pushes
//! disks in, published atomically.
//!
//! The work is [`vmimg_qcow2::write_compressed`]'s (layout, limits and
//! refusals in its docs); this module gives it the source's data ranges and
//! publishes the result with [`publish`]:
//! - a raw image is read by its allocation map: its SEEK_DATA ranges are
//!   read, its holes are known zeros;
//! - a qcow2 image is read through this crate's reader: the ranges that do
//!   not read as zero (data and compressed clusters) are read, each thread
//!   borrowing a decompressor from a small pool;
//! - an image with a backing chain ([`DiskImage::open_chain`]) is refused:
//!   convert it to raw first. The chain's merged map is built for one pass
//!   in order, not for the positioned reads the writer makes.

use crate::error::{Error, Result};
use crate::image::{DiskImage, Kind, Qcow2Source};
use crate::publish::publish;
use crate::raw::raw_extents;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;
use vmimg_qcow2::{Allocation, ClusterDecoder, CompressOptions, CompressStats, Qcow2, ReadAt, write_compressed};

/// How [`convert_to_qcow2`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qcow2ConvertOptions {
    /// Cluster size, compression type and level, threads.
    pub compress: CompressOptions,
    /// Flush the output to stable storage before it is published.
    pub sync: bool,
}

impl Default for Qcow2ConvertOptions {
    fn default() -> Self {
        Qcow2ConvertOptions { compress: CompressOptions::default(), sync: true }
    }
}

/// Writes `image` to `dst` as a compressed qcow2 image (zstd by default),
/// atomically: `dst` appears complete or not at all.
pub fn convert_to_qcow2(image: &DiskImage, dst: &Path, options: &Qcow2ConvertOptions) -> Result<CompressStats> {
    if image.backing().is_some() {
        return Err(Error::ChainToQcow2 { path: image.path().to_owned() });
    }
    let size = image.virtual_size()?;
    let compress = |src: &dyn ReadAt, data: &[Range<u64>]| {
        publish(dst, options.sync, |file| {
            write_compressed(src, size, data, file, &options.compress).map_err(|e| match e {
                vmimg_qcow2::Error::Create(_) | vmimg_qcow2::Error::Write { .. } => Error::qcow2(dst)(e),
                e => Error::qcow2(image.path())(e),
            })
        })
    };
    match image.kind() {
        Kind::Raw(file) => {
            let mut data = Vec::new();
            for extent in raw_extents(file, size) {
                let e = extent.map_err(Error::io("cannot map", image.path()))?;
                if !e.reads_as_zero() {
                    data.push(e.start..e.end());
                }
            }
            compress(file, &data)
        }
        Kind::Qcow2(img) => {
            let mut data: Vec<Range<u64>> = Vec::new();
            for extent in img.extents(0) {
                let e = extent.map_err(Error::qcow2(image.path()))?;
                if matches!(e.allocation, Allocation::Zero | Allocation::Unallocated) {
                    continue;
                }
                match data.last_mut() {
                    Some(last) if last.end == e.start => last.end = e.end(),
                    _ => data.push(e.start..e.end()),
                }
            }
            compress(&Qcow2Reader { img, decoders: Mutex::new(Vec::new()) }, &data)
        }
    }
}

/// A qcow2 image's virtual disk as positioned reads.
struct Qcow2Reader<'a> {
    img: &'a Qcow2<Qcow2Source>,
    /// Decoders not in use; one per thread reading at a time.
    decoders: Mutex<Vec<ClusterDecoder>>,
}

impl ReadAt for Qcow2Reader<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let size = self.img.virtual_size();
        if offset >= size {
            return Ok(0);
        }
        let len = buf.len().min(usize::try_from(size - offset).unwrap_or(usize::MAX));
        let pooled = self.decoders.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut decoder = match pooled {
            Some(d) => d,
            None => self.img.decoder().map_err(io::Error::other)?,
        };
        let outcome = self.img.read_at(&mut buf[..len], offset, &mut decoder);
        self.decoders.lock().unwrap_or_else(|e| e.into_inner()).push(decoder);
        outcome.map_err(io::Error::other)?;
        Ok(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.img.virtual_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Format;
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::process::Command;
    use vmimg_qcow2::Compression;

    const MIB: u64 = 1 << 20;

    fn qemu_img(args: &[&str]) -> String {
        let out = Command::new("qemu-img").args(args).output().expect("qemu-img runs");
        assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// A 20 MiB raw disk: text, noise and zeros at odd offsets, holes between.
    /// Its length (20 MiB + 4900 bytes) ends mid-sector, so it is opened as
    /// declared raw (probing refuses it) and read to a whole sector.
    fn raw_disk(path: &Path) {
        let file = File::create(path).unwrap();
        file.set_len(20 * MIB + 512).unwrap();
        let text: Vec<u8> = (0..3 * MIB).map(|i| b"vmimg qcow2 zstd\n"[(i % 17) as usize]).collect();
        let mut x = 7u64;
        let noise: Vec<u8> = (0..MIB)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        file.write_all_at(&text, 1000).unwrap();
        file.write_all_at(&noise, 7 * MIB).unwrap();
        file.write_all_at(&vec![0; MIB as usize], 9 * MIB).unwrap();
        file.write_all_at(&text[..5000], 20 * MIB - 100).unwrap();
    }

    fn options() -> Qcow2ConvertOptions {
        Qcow2ConvertOptions { sync: false, ..Qcow2ConvertOptions::default() }
    }

    fn assert_same_disk(qcow2: &Path, other: &Path, other_format: &str) {
        let check = qemu_img(&["check", "--output=json", qcow2.to_str().unwrap()]);
        assert!(check.contains("\"check-errors\": 0") && !check.contains("leaks"), "{check}");
        qemu_img(&[
            "compare",
            "-q",
            "-f",
            "qcow2",
            "-F",
            other_format,
            qcow2.to_str().unwrap(),
            other.to_str().unwrap(),
        ]);
    }

    #[test]
    fn raw_and_qcow2_sources_convert() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        raw_disk(&raw);
        let out = dir.path().join("from-raw.qcow2");
        let stats = convert_to_qcow2(&DiskImage::open(&raw, Some(Format::Raw)).unwrap(), &out, &options()).unwrap();
        assert_same_disk(&out, &raw, "raw");
        assert!(stats.clusters_zero >= 16, "{stats:?}");
        assert!(stats.file_len < 3 * MIB, "{stats:?}");
        let info = qemu_img(&["info", "--output=json", out.to_str().unwrap()]);
        assert!(info.contains("\"compression-type\": \"zstd\""), "{info}");

        // A zlib qcow2 with zero clusters, made by qemu-img, to zlib.
        let theirs = dir.path().join("theirs.qcow2");
        qemu_img(&["convert", "-c", "-f", "raw", "-O", "qcow2", raw.to_str().unwrap(), theirs.to_str().unwrap()]);
        let zlib = Qcow2ConvertOptions { compress: CompressOptions::new(Compression::Zlib), ..options() };
        let out = dir.path().join("from-qcow2.qcow2");
        let source = DiskImage::open(&theirs, Some(Format::Qcow2)).unwrap();
        convert_to_qcow2(&source, &out, &zlib).unwrap();
        assert_same_disk(&out, &raw, "raw");
        let info = qemu_img(&["info", "--output=json", out.to_str().unwrap()]);
        assert!(info.contains("\"compression-type\": \"zlib\""), "{info}");
    }

    /// Refusals and failures leave neither the output nor a temporary file.
    #[test]
    fn refusals_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        raw_disk(&raw);
        let overlay = dir.path().join("overlay.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", "-b", "disk.raw", "-F", "raw", overlay.to_str().unwrap()]);
        let out = dir.path().join("out.qcow2");
        let chain = DiskImage::open_chain(&overlay, 4).unwrap();
        let err = convert_to_qcow2(&chain, &out, &options()).unwrap_err();
        assert!(matches!(err, Error::ChainToQcow2 { .. }), "{err}");

        let mut bad = options();
        bad.compress.cluster_bits = 22;
        let err = convert_to_qcow2(&DiskImage::open(&raw, Some(Format::Raw)).unwrap(), &out, &bad).unwrap_err();
        assert!(err.to_string().contains("out.qcow2") && err.to_string().contains("cluster_bits is 22"), "{err}");
        let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["disk.raw", "overlay.qcow2"]);
    }
}
