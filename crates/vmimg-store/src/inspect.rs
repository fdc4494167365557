//! `inspect`: everything the store knows of one image, in one place.
//!
//! An [`Inspection`] is what `images` lists of the image (its record, path,
//! bytes on disk, last use), under the same keys, and what the record
//! implies said outright: the source as a user would write it, where its
//! bytes came from, what its digest was checked against (or that it was
//! not); its file as its header describes it now; and the instances made
//! from it. It reads and never writes: inspecting an image is no use of it.

use crate::error::Result;
use crate::fsutil::blocking;
use crate::instance::Instance;
use crate::manage::ImageSummary;
use crate::record::{ImageRecord, SourceInfo};
use crate::store::Store;
use serde::Serialize;
use std::path::Path;

/// Everything the store knows of one image.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// What `images` lists of it, under the same keys.
    #[serde(flatten)]
    pub image: ImageSummary,
    /// The source as a user would write it again.
    pub source_name: String,
    /// Where its bytes came from (see [`SourceInfo::origin`]); None for a
    /// blank image.
    pub origin: Option<String>,
    /// What its digest was checked against; None: it was not (or it has none).
    pub verified_against: Option<Verifier>,
    /// Its disk as `vmimg info` reads it now; None for an initramfs.
    pub disk: Option<DiskFacts>,
    /// The instances made from it, by name.
    pub instance_list: Vec<Instance>,
}

/// What an image's digest was checked against when it entered the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verifier {
    /// The digest the catalog pins for the alias's snapshot.
    Catalog,
    /// The digest the caller gave (`--digest`).
    Digest,
    /// The manifest the registry or layout served, by its digest.
    Manifest,
}

impl Verifier {
    /// What verified `record`'s digest, if anything did.
    pub fn of(record: &ImageRecord) -> Option<Verifier> {
        if !record.verified {
            return None;
        }
        match record.source {
            SourceInfo::Alias { .. } => Some(Verifier::Catalog),
            SourceInfo::Url { .. } | SourceInfo::File { .. } | SourceInfo::Bundle { .. } => Some(Verifier::Digest),
            SourceInfo::Oci { .. } | SourceInfo::Layout { .. } => Some(Verifier::Manifest),
            SourceInfo::Blank => None,
        }
    }

    /// What it is, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Verifier::Catalog => "the catalog's digest",
            Verifier::Digest => "the digest given (--digest)",
            Verifier::Manifest => "the manifest's digest",
        }
    }
}

/// A disk file as `vmimg info` reads it, in the store's snake_case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskFacts {
    /// Its format, as qemu-img names it: raw (the store keeps its disks
    /// raw, so they are read as raw, never probed: a guest may have written
    /// anything at their start).
    pub format: &'static str,
    /// None for a format vmimg names but does not read.
    pub virtual_size: Option<u64>,
    /// Bytes the file occupies on the host now (it is sparse).
    pub allocated_size: u64,
}

impl DiskFacts {
    /// Reads the store's raw disk at `path`.
    pub fn read(path: &Path) -> Result<DiskFacts> {
        let info = vmimg_disk::ImageInfo::read(path, Some(vmimg_disk::Format::Raw))?;
        Ok(DiskFacts { format: info.format, virtual_size: info.virtual_size, allocated_size: info.actual_size })
    }
}

impl Store {
    /// Everything the store knows of the image `name` names (as
    /// [`Store::find`] takes it: a key, a name, a source pulled before, or
    /// the start of one key).
    pub async fn inspect(&self, name: &str) -> Result<Inspection> {
        let record = self.find(name).await?;
        let store = self.clone();
        blocking("inspecting the image", move || store.inspection(record)).await
    }

    /// [`Store::inspect`] of a record in hand: reads the disk, the image's
    /// directory and the instance records (blocking).
    pub fn inspection(&self, record: ImageRecord) -> Result<Inspection> {
        let instance_list = self.instances_of(&record.name)?;
        let names = self.names_of(&record.name)?;
        let disk = record.is_disk().then(|| DiskFacts::read(&self.image_file(&record))).transpose()?;
        Ok(Inspection {
            source_name: record.source.display_name(),
            origin: record.source.origin(),
            verified_against: Verifier::of(&record),
            disk,
            image: self.summary(record, instance_list.len(), names),
            instance_list,
        })
    }
}
