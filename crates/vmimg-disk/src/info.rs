//! The facts `vmimg info` reports, in the shape of `qemu-img info --output=json`.
//!
//! Info reads only the header: it describes images that [`crate::DiskImage`]
//! would refuse (a backing file, an external data file, encryption), so users
//! can see why, and names the image formats vmimg does not read (vmdk, vpc,
//! vhdx, vdi, ...) as qemu-img does, without a virtual size. A compressed
//! stream or an archive or page that is no disk is an error that says what
//! it is. A file with no header that `convert` and `pull` refuse as raw
//! (shorter than a sector, not a whole number of them, text) is described
//! as qemu-img describes any file, raw, its size rounded up to a whole
//! sector, and [`ImageInfo::not_a_disk`] says why it is no disk.

use crate::error::{Error, Result};
use crate::image::Format;
use crate::probe::{Content, NotADisk, SECTOR, probe_file};
use serde::Serialize;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use vmimg_qcow2::{Encryption, Header, ReadAt};

/// What an image is, as `qemu-img info --output=json` names it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    pub filename: String,
    pub format: &'static str,
    /// None for a format vmimg names but does not read (vmdk, vpc, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_size: Option<u64>,
    /// Bytes the image file occupies on the host (allocated blocks).
    pub actual_size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_filename: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_filename_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    pub dirty_flag: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format_specific: Option<FormatSpecific>,
    /// Why a file described as raw is no raw disk to probing (so `convert`
    /// and `pull` refuse it); not in qemu-img's JSON.
    #[serde(skip)]
    pub not_a_disk: Option<NotADisk>,
}

/// `format-specific`: `{"type": "qcow2", "data": {...}}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "type", content = "data", rename_all = "kebab-case")]
pub enum FormatSpecific {
    Qcow2(Qcow2Facts),
}

/// qcow2 facts, named as QEMU names them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Qcow2Facts {
    /// "0.10" (version 2) or "1.1" (version 3).
    pub compat: &'static str,
    pub compression_type: &'static str,
    /// Present for version 3 only, as in QEMU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lazy_refcounts: Option<bool>,
    pub refcount_bits: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extended_l2: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_file_raw: Option<bool>,
    /// Present when the image is encrypted, as QEMU's `encrypt` object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypt: Option<EncryptFacts>,
}

/// `encrypt`: `{"format": "aes" | "luks"}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EncryptFacts {
    pub format: &'static str,
}

impl ImageInfo {
    /// Describes `path` as `format`, or as what it probes as.
    pub fn read(path: &Path, format: Option<Format>) -> Result<ImageInfo> {
        let file = File::open(path).map_err(Error::io("cannot open", path))?;
        let meta = file.metadata().map_err(Error::io("cannot stat", path))?;
        let content = match format {
            Some(Format::Raw) => Content::Raw,
            Some(Format::Qcow2) => Content::Qcow2,
            None => probe_file(&file).map_err(Error::io("cannot read", path))?,
        };
        let (content, not_a_disk) = match content {
            Content::NotADisk(why @ (NotADisk::TooSmall(_) | NotADisk::PartialSector(_) | NotADisk::Text)) => {
                (Content::Raw, Some(why))
            }
            content => (content, None),
        };
        let Some(format_name) = content.qemu_name() else {
            return Err(Error::Unsupported { path: path.to_owned(), content });
        };
        let mut info = ImageInfo {
            filename: path.display().to_string(),
            format: format_name,
            virtual_size: (content == Content::Raw).then_some(meta.len().next_multiple_of(SECTOR)),
            actual_size: meta.blocks() * 512,
            cluster_size: None,
            backing_filename: None,
            backing_filename_format: None,
            encrypted: None,
            dirty_flag: false,
            format_specific: None,
            not_a_disk,
        };
        if content == Content::Qcow2 {
            let header = Header::parse(&file, file.size().map_err(Error::io("cannot stat", path))?)
                .map_err(Error::qcow2(path))?;
            info.add_qcow2(&header);
        }
        Ok(info)
    }

    fn add_qcow2(&mut self, h: &Header) {
        self.virtual_size = Some(h.virtual_size);
        self.cluster_size = Some(h.cluster_size());
        self.backing_filename = h.backing_file.clone();
        self.backing_filename_format = h.backing_format.clone();
        let encrypted = h.encryption != Encryption::None;
        self.encrypted = encrypted.then_some(true);
        self.dirty_flag = h.dirty();
        let external = h.has_external_data_file();
        let v3 = |fact: bool| (h.version >= 3).then_some(fact);
        self.format_specific = Some(FormatSpecific::Qcow2(Qcow2Facts {
            compat: h.compat(),
            compression_type: h.compression.name(),
            lazy_refcounts: v3(h.lazy_refcounts()),
            refcount_bits: h.refcount_bits(),
            corrupt: v3(h.corrupt()),
            extended_l2: v3(h.extended_l2()),
            data_file: external.then(|| h.data_file.clone().unwrap_or_default()),
            data_file_raw: external.then(|| h.data_file_raw()),
            encrypt: encrypted.then(|| EncryptFacts { format: h.encryption.name() }),
        }));
    }
}
