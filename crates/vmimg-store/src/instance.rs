//! Instances: writable disks made from a store image, one per VM.
//!
//! An instance is `instances/<name>/` holding `disk.qcow2` (a copy-on-write
//! overlay whose backing file is the image's raw disk, named by a path
//! relative to the overlay so the store can move) or `disk.raw` (a reflink
//! where the filesystem can, else a sparse copy), and `instance.json`. It
//! is made in a work directory under `tmp/` and renamed into place, under
//! the image's key lock, so it never races the image's removal. Copies,
//! fsyncs and removals run on blocking threads.
//!
//! The instance records are the image's reference count: an image is in use
//! while any `instances/*/instance.json` names it. Counting by scanning the
//! records cannot drift and survives restarts and crashes.

use crate::catalog::is_name_safe;
use crate::error::{Error, Result};
use crate::fsutil::blocking;
use crate::publish::remove_dir_atomically;
use crate::record::{InstanceFormat, InstanceRecord, Timestamp};
use crate::store::Store;
use serde::Serialize;
use std::fs::File;
use std::path::{Path, PathBuf};

/// An instance and the path of its disk.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub path: PathBuf,
    #[serde(flatten)]
    pub record: InstanceRecord,
}

/// What to make.
#[derive(Debug, Clone)]
pub struct InstanceRequest {
    /// The image's key.
    pub image: String,
    /// A name, or the first free `<image>-<n>`.
    pub name: Option<String>,
    /// A virtual size larger than the image's, or the image's.
    pub size: Option<u64>,
    pub format: InstanceFormat,
}

const RECORD: &str = "instance.json";

impl Store {
    fn instances_dir(&self) -> PathBuf {
        self.root().join("instances")
    }

    fn instance_dir(&self, name: &str) -> PathBuf {
        self.instances_dir().join(name)
    }

    /// Makes a writable disk from image `request.image`.
    pub async fn create_instance(&self, request: &InstanceRequest) -> Result<Instance> {
        let _lock = self.lock(&request.image).await?;
        let image = self
            .lookup(&request.image)?
            .ok_or_else(|| Error::NotFound { what: "image", name: request.image.clone() })?;
        let base = self.raw_disk(&image)?;
        self.touch(&request.image);
        let size = request.size.unwrap_or(image.virtual_size);
        if size < image.virtual_size {
            return Err(Error::Invalid(format!(
                "an instance cannot be smaller than its image: {size} < {} bytes",
                image.virtual_size
            )));
        }
        let name = match &request.name {
            Some(name) => self.check_new_instance_name(name)?,
            None => self.free_instance_name(&request.image)?,
        };
        let work = self.work_dir(&format!("instance-{name}"))?;
        let (disk, base, format) = (work.path().join(request.format.file_name()), base, request.format);
        let record = InstanceRecord {
            name,
            image: request.image.clone(),
            format,
            virtual_size: size,
            created_at: Timestamp::now(),
        };
        let target = self.instance_dir(&record.name);
        blocking("making the instance", move || {
            write_instance_disk(&disk, &base, size, format)?;
            publish_instance(work, &target, record)
        })
        .await
    }

    /// Every instance, by name.
    pub fn instances(&self) -> Result<Vec<Instance>> {
        let dir = self.instances_dir();
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(found) };
        for entry in entries {
            let path = entry.map_err(Error::io("list", &dir))?.path().join(RECORD);
            if !path.exists() {
                continue;
            }
            let record: InstanceRecord = crate::record::load_json(&path)?;
            found.push(Instance { path: self.instance_dir(&record.name).join(record.format.file_name()), record });
        }
        found.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        Ok(found)
    }

    /// The instances made from image `key`.
    pub fn instances_of(&self, key: &str) -> Result<Vec<Instance>> {
        Ok(self.instances()?.into_iter().filter(|i| i.record.image == key).collect())
    }

    /// Removes an instance and its disk.
    pub async fn remove_instance(&self, name: &str) -> Result<()> {
        let instance = self.instances()?.into_iter().find(|i| i.record.name == name);
        let instance = instance.ok_or_else(|| Error::NotFound { what: "instance", name: name.to_owned() })?;
        let _lock = self.lock(&instance.record.image).await?;
        remove_dir_atomically(self.instance_dir(name), self.tmp()).await
    }

    /// `name`, or why no new instance can take it (unsafe, or taken): a
    /// caller that pulls the instance's image first checks it before.
    pub fn check_new_instance_name(&self, name: &str) -> Result<String> {
        if !is_name_safe(name) {
            return Err(Error::InvalidName { what: "instance", name: name.to_owned() });
        }
        if self.instance_dir(name).exists() {
            return Err(Error::Exists { what: "instance", name: name.to_owned() });
        }
        Ok(name.to_owned())
    }

    fn free_instance_name(&self, image: &str) -> Result<String> {
        let stem: String = image.chars().take(56).collect();
        (1..)
            .map(|n| format!("{stem}-{n}"))
            .find(|name| !self.instance_dir(name).exists())
            .ok_or_else(|| Error::Conflict(format!("no free instance name for image {image}")))
    }
}

/// Writes the instance's disk at `disk` from the raw `base`.
fn write_instance_disk(disk: &Path, base: &Path, size: u64, format: InstanceFormat) -> Result<()> {
    match format {
        InstanceFormat::Raw => {
            let options = vmimg_disk::CopyOptions { size: Some(size), ..vmimg_disk::CopyOptions::default() };
            vmimg_disk::copy_raw(base, disk, &options)?;
        }
        InstanceFormat::Qcow2 => {
            let backing = relative_backing_name(base);
            let file = File::create(disk).map_err(Error::io("create", disk))?;
            let options = vmimg_qcow2::OverlayOptions::new(backing, vmimg_qcow2::BackingFormat::Raw, size);
            vmimg_qcow2::create_overlay(&file, &options)
                .map_err(|source| Error::Qcow2 { path: disk.to_owned(), source })?;
            file.sync_all().map_err(Error::io("flush", disk))?;
        }
    }
    Ok(())
}

/// The image's disk as the instance's directory will see it once renamed
/// into `instances/<name>/`: `../../images/<key>/disk.raw`.
fn relative_backing_name(base: &Path) -> String {
    let key = base.parent().and_then(Path::file_name).expect("images/<key>/disk.raw");
    format!("../../images/{}/disk.raw", key.to_string_lossy())
}

/// Writes the record into the work directory and renames it to `target`
/// (`instances/<name>`), flushed.
fn publish_instance(work: tempfile::TempDir, target: &Path, record: InstanceRecord) -> Result<Instance> {
    crate::record::save_json(&work.path().join(RECORD), &record)?;
    let dir = target.parent().expect("instances/");
    std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    std::fs::rename(work.keep(), target).map_err(Error::io("rename into", target))?;
    crate::fsutil::sync_dir(dir)?;
    Ok(Instance { path: target.join(record.format.file_name()), record })
}
