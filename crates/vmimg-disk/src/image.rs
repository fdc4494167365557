//! Opening a disk image file as raw or qcow2.
//!
//! The format is probed (see `probe.rs`) only when the caller did not say
//! it: qcow2 by its magic, raw when no known header is found; compressed
//! streams, other image formats and files that are no disk are refused by
//! name. A caller who says `raw` never gets qcow2, and a file said to be raw
//! that starts with an image header is refused (so a guest that writes a
//! qcow2 header into its raw disk cannot make the host read other files
//! through it).
//!
//! [`DiskImage::open`] is for images from outside and refuses qcow2 images
//! that name a backing file; images the store made itself are opened with
//! their backing chain by [`DiskImage::open_chain`] (in `chain.rs`).

use crate::error::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use vmimg_qcow2::{OpenOptions, Qcow2, ReadAt};

/// The disk formats vmimg reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }

    /// qcow2 when the file starts with the qcow2 magic, raw otherwise: for
    /// files the store made itself (backing chains), never for input.
    pub(crate) fn by_magic(file: &File) -> std::io::Result<Format> {
        let mut magic = [0u8; 4];
        file.read_exact_or_zero_at(&mut magic, 0)?;
        Ok(if magic == vmimg_qcow2::MAGIC { Format::Qcow2 } else { Format::Raw })
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Format> {
        match s {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            other => Err(Error::UnknownFormat(other.to_string())),
        }
    }
}

/// An open disk image, ready to be read or converted.
pub struct DiskImage {
    path: PathBuf,
    kind: Kind,
    /// What the image's unallocated ranges read from (trusted chains only).
    backing: Option<Box<DiskImage>>,
}

/// Where a qcow2 image's bytes come from: a file, or any positioned reader
/// (a file that a download is still writing).
pub type Qcow2Source = Box<dyn ReadAt + Send + Sync>;

pub(crate) enum Kind {
    Raw(File),
    Qcow2(Box<Qcow2<Qcow2Source>>),
}

impl DiskImage {
    /// Opens `path` as `format`, or as what it probes as when `format` is None.
    /// qcow2 images that refer to other files, files that are neither raw nor
    /// qcow2, and raw files that start with an image header are refused.
    pub fn open(path: &Path, format: Option<Format>) -> Result<DiskImage> {
        let file = File::open(path).map_err(Error::io("cannot open", path))?;
        DiskImage::from_file(file, path, format)
    }

    /// [`DiskImage::open`] for a file already open; `path` names it in errors.
    pub fn from_file(file: File, path: &Path, format: Option<Format>) -> Result<DiskImage> {
        let format = match format {
            Some(Format::Raw) => ensure_plain_raw_file(&file, path).map(|()| Format::Raw)?,
            Some(format) => format,
            None => crate::probe::detect(&file, path)?,
        };
        match format {
            Format::Raw => Ok(DiskImage::from_parts(path, Kind::Raw(file), None)),
            Format::Qcow2 => DiskImage::qcow2_from(Box::new(file), path),
        }
    }

    /// Opens qcow2 bytes from any positioned reader; `label` names it in
    /// errors. Backing files and external data files are refused.
    pub fn qcow2_from(source: Qcow2Source, label: &Path) -> Result<DiskImage> {
        let qcow2 = Qcow2::open_with(source, OpenOptions::default()).map_err(Error::qcow2(label))?;
        Ok(DiskImage::from_parts(label, Kind::Qcow2(Box::new(qcow2)), None))
    }

    pub(crate) fn from_parts(path: &Path, kind: Kind, backing: Option<Box<DiskImage>>) -> DiskImage {
        DiskImage { path: path.to_owned(), kind, backing }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        match self.kind {
            Kind::Raw(_) => Format::Raw,
            Kind::Qcow2(_) => Format::Qcow2,
        }
    }

    /// The disk's size. A raw file's is its length rounded up to a whole
    /// 512-byte sector, as QEMU reads it (the rest of the last sector reads
    /// as zeros); only a file taken as raw unprobed (`-f raw`) can end
    /// mid-sector.
    pub fn virtual_size(&self) -> Result<u64> {
        match &self.kind {
            Kind::Raw(f) => {
                let len = f.size().map_err(Error::io("cannot stat", &self.path))?;
                Ok(len.next_multiple_of(crate::probe::SECTOR))
            }
            Kind::Qcow2(q) => Ok(q.virtual_size()),
        }
    }

    /// The image this one's unallocated ranges read from: only images opened
    /// by [`DiskImage::open_chain`] have one.
    pub fn backing(&self) -> Option<&DiskImage> {
        self.backing.as_deref()
    }

    /// Refuses a qcow2 image from outside whose disk starts with an image
    /// header: converted to raw, it would be the disk a probing VMM misreads
    /// (see `probe.rs`). A raw image was checked when opened; a trusted chain
    /// the store made is the guest's own business.
    pub(crate) fn ensure_plain_head(&self) -> Result<()> {
        let Kind::Qcow2(qcow2) = &self.kind else { return Ok(()) };
        if self.backing.is_some() {
            return Ok(());
        }
        let len = qcow2.virtual_size().min(crate::probe::PROBE_BYTES as u64) as usize;
        let mut head = vec![0u8; len];
        let mut decoder = qcow2.decoder().map_err(Error::qcow2(&self.path))?;
        qcow2.read_at(&mut head, 0, &mut decoder).map_err(Error::qcow2(&self.path))?;
        match crate::probe::image_header(&head) {
            None => Ok(()),
            Some((found, detail)) => Err(Error::HeaderInDisk { path: self.path.clone(), found, detail }),
        }
    }

    pub(crate) fn kind(&self) -> &Kind {
        &self.kind
    }
}

/// Refuses a file taken as raw that starts with an image header.
fn ensure_plain_raw_file(file: &File, path: &Path) -> Result<()> {
    let mut head = vec![0u8; crate::probe::PROBE_BYTES];
    let read = file.read_exact_or_zero_at(&mut head, 0);
    read.map_err(Error::io("cannot read", path))?;
    crate::probe::ensure_plain_raw(&head, path)
}
