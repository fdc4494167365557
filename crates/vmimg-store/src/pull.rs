//! `pull`: a source into the store as a ready raw disk, verified.
//!
//! For a URL, three stages overlap: the download writes the partial file
//! and hashes it; a converter thread reads the same file through a
//! [`GrowingFile`] as it fills and writes the raw disk into a work directory.
//! A qcow2 pull so costs about its slowest stage. A raw source is converted
//! (made sparse) once its download is complete. For a local file, hashing
//! and conversion run side by side. Either way the image is published only
//! after the digest matched; a mismatch deletes the partial and the work.

use crate::error::{Error, Result};
use crate::growing::{EndOnDrop, GrowingFile, Watermark};
use crate::record::ImageRecord;
use crate::source::{Location, Resolved};
use crate::store::Store;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmimg_disk::{ConvertOptions, ConvertStats, DiskImage, Format};
use vmimg_fetch::{Algorithm, Digest, Fetched, Progress, digest_reader, remove_partial};
use vmimg_qcow2::ReadAt;

/// A ready image: its record and the path of its raw disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pulled {
    pub path: PathBuf,
    #[serde(flatten)]
    pub record: ImageRecord,
    /// Whether the store already had it.
    pub cached: bool,
}

/// A disk made in a work directory, not yet published.
pub(crate) struct Made {
    pub(crate) work: tempfile::TempDir,
    pub(crate) digest: Digest,
    pub(crate) source_format: Format,
    pub(crate) blob: Option<String>,
    /// The blobs of a source in parts.
    pub(crate) blobs: Vec<String>,
    pub(crate) stats: ConvertStats,
}

impl Store {
    /// Gets `source` into the store (or finds it there) and returns its disk.
    /// `progress` hears about the download, if there is one.
    pub async fn pull(&self, source: &Resolved, progress: Option<Arc<dyn Progress>>) -> Result<Pulled> {
        if let Some(found) = self.found(&source.key)? {
            return Ok(found);
        }
        let _lock = self.lock(&source.key).await?;
        if let Some(found) = self.found(&source.key)? {
            return Ok(found);
        }
        self.remove_abandoned_work(&source.key)?;
        let made = match &source.location {
            Location::Url(url) => self.make_from_url(source, url, progress).await?,
            Location::File(path) => self.make_from_file(source, path.clone()).await?,
            Location::Oci(pinned) => self.make_from_oci(source, pinned, progress).await?,
        };
        self.publish(source, made)
    }

    pub(crate) fn found(&self, key: &str) -> Result<Option<Pulled>> {
        let found = self.lookup(key)?.map(|record| Pulled { path: self.image_file(&record), record, cached: true });
        if found.is_some() {
            self.touch(key);
        }
        Ok(found)
    }

    pub(crate) fn convert_options(&self) -> ConvertOptions {
        ConvertOptions { threads: self.threads, sync: true }
    }

    async fn make_from_url(&self, source: &Resolved, url: &str, progress: Option<Arc<dyn Progress>>) -> Result<Made> {
        let algorithm = source.expected.as_ref().map_or(Algorithm::Sha256, Digest::algorithm);
        let fetcher = self.fetcher()?;
        let partial = self.partial_path(&source.key);
        let work = self.work_dir(&source.key)?;
        let disk = work.path().join("disk.raw");
        let reader = File::options().create(true).truncate(false).write(true).read(true).open(&partial);
        let reader = reader.map_err(Error::io("cannot create", &partial))?;
        let watermark = Watermark::new(progress);
        let _release_converter = EndOnDrop(watermark.clone());
        let converter = {
            let (watermark, disk, options) = (watermark.clone(), disk.clone(), self.convert_options());
            tokio::task::spawn_blocking(move || {
                convert_while_downloading(GrowingFile::new(reader, watermark), &disk, &options)
            })
        };
        let fetched = fetcher.fetch(url, algorithm, &partial, &*watermark).await;
        watermark.end(fetched.is_ok());
        let converted = converter.await.expect("converter thread");
        let Fetched { digest, .. } = fetched?;
        if let Err(mismatch) = check_digest(source, &digest) {
            remove_partial(&partial).map_err(Error::io("cannot remove", &partial))?;
            return Err(mismatch);
        }
        let blob = self.keep_blob(&partial, &digest)?;
        let (source_format, stats) = match converted {
            Ok(Some(stats)) => (Format::Qcow2, stats),
            // A raw source, or a conversion cut short by a restarted download:
            // convert the verified file now.
            _ => convert_file(&self.blob_path(&digest), &disk, &self.convert_options())?,
        };
        Ok(Made { work, digest, source_format, blob: Some(blob), blobs: Vec::new(), stats })
    }

    /// Moves a verified partial into `blobs/` and returns its store-relative path.
    pub(crate) fn keep_blob(&self, partial: &Path, digest: &Digest) -> Result<String> {
        self.keep_verified(partial, "blobs", digest)
    }

    /// Moves a verified partial to `<kind>/<algorithm>/<hex>` (`blobs`, or
    /// `layers`), durably, and returns that store-relative path.
    pub(crate) fn keep_verified(&self, partial: &Path, kind: &str, digest: &Digest) -> Result<String> {
        let relative = by_digest(kind, digest);
        let blob = self.root().join(&relative);
        let dir = blob.parent().expect("<kind>/<algorithm>");
        std::fs::create_dir_all(dir).map_err(Error::io("cannot create", dir))?;
        std::fs::rename(partial, &blob).map_err(Error::io("cannot rename into", &blob))?;
        crate::fsutil::sync_dir(dir)?;
        remove_partial(partial).map_err(Error::io("cannot remove", partial))?;
        Ok(relative)
    }

    async fn make_from_file(&self, source: &Resolved, path: PathBuf) -> Result<Made> {
        let work = self.work_dir(&source.key)?;
        let disk = work.path().join("disk.raw");
        let algorithm = source.expected.as_ref().map_or(Algorithm::Sha256, Digest::algorithm);
        let options = self.convert_options();
        let (digest, converted) = tokio::task::spawn_blocking(move || {
            std::thread::scope(|scope| {
                let hashing = scope.spawn(|| File::open(&path).and_then(|f| digest_reader(algorithm, f)));
                let converted = convert_file(&path, &disk, &options);
                (hashing.join().expect("hashing thread").map_err(Error::io("cannot read", &path)), converted)
            })
        })
        .await
        .expect("file pull task");
        let digest = digest?;
        check_digest(source, &digest)?;
        let (source_format, stats) = converted?;
        Ok(Made { work, digest, source_format, blob: None, blobs: Vec::new(), stats })
    }

    /// The record of a pulled image.
    fn publish(&self, source: &Resolved, made: Made) -> Result<Pulled> {
        let format = made.source_format.name();
        let mut record =
            ImageRecord::for_work(&source.key, &made.work, source.info.clone(), Some(made.digest), format)?;
        record.virtual_size = made.stats.virtual_size;
        record.verified = source.expected.is_some();
        record.blob = made.blob;
        record.blobs = made.blobs;
        self.publish_work(made.work, record)
    }

    /// Writes the record into the work directory and renames it to
    /// `images/<name>`: the image appears whole, in one step.
    pub(crate) fn publish_work(&self, work: tempfile::TempDir, record: ImageRecord) -> Result<Pulled> {
        record.save(&work.path().join("image.json"))?;
        let target = self.image_dir(&record.name);
        let work = work.keep();
        std::fs::rename(&work, &target).map_err(Error::io("cannot rename into", &target))?;
        crate::fsutil::sync_dir(target.parent().expect("images/"))?;
        Ok(Pulled { path: self.image_file(&record), record, cached: false })
    }
}

/// Where content of `kind` (`blobs`, `layers`) with `digest` lives, relative to the store root.
pub(crate) fn by_digest(kind: &str, digest: &Digest) -> String {
    format!("{kind}/{}/{}", digest.algorithm().name(), digest.hex())
}

fn check_digest(source: &Resolved, actual: &Digest) -> Result<()> {
    match &source.expected {
        Some(expected) if expected != actual => Err(Error::DigestMismatch {
            source_name: source.display_name(),
            expected: expected.clone(),
            actual: actual.clone(),
        }),
        _ => Ok(()),
    }
}

/// Converts a qcow2 download as it arrives; None when the source is raw
/// (converted once complete).
fn convert_while_downloading(
    reader: GrowingFile,
    disk: &Path,
    options: &ConvertOptions,
) -> Result<Option<ConvertStats>> {
    let mut magic = [0u8; 4];
    reader.read_exact_or_zero_at(&mut magic, 0).map_err(Error::io("cannot read", disk))?;
    if magic != vmimg_qcow2::MAGIC {
        return Ok(None);
    }
    let image = DiskImage::qcow2_from(Box::new(reader), Path::new("the download"))?;
    write_disk(&image, disk, options).map(Some)
}

/// Converts a complete source file (format probed) to the raw disk.
fn convert_file(src: &Path, disk: &Path, options: &ConvertOptions) -> Result<(Format, ConvertStats)> {
    let image = DiskImage::open(src, None)?;
    Ok((image.format(), write_disk(&image, disk, options)?))
}

pub(crate) fn write_disk(image: &DiskImage, disk: &Path, options: &ConvertOptions) -> Result<ConvertStats> {
    let out = File::create(disk).map_err(Error::io("cannot create", disk))?;
    let stats = vmimg_disk::convert_to_raw(image, &out, options)?;
    out.sync_all().map_err(Error::io("cannot flush", disk))?;
    Ok(stats)
}
