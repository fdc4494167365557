//! The image record: one JSON file per image (`images/<key>/image.json`),
//! written atomically, read with a size limit.

use crate::container::ContainerInfo;
use crate::error::{Error, Result};
use crate::source::SourceInfo;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use vmimg_fetch::Digest;

/// A record larger than this is refused as corrupt.
const MAX_RECORD_BYTES: u64 = 1 << 20;

/// What the store knows of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The cache key, also the image's directory name.
    pub name: String,
    pub source: SourceInfo,
    /// The digest of the source's bytes (checked against the catalog or
    /// `--digest` when `verified`; computed only otherwise). None for a
    /// blank image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    pub verified: bool,
    /// What the source was: `raw`, `qcow2`, `bundle`, or `blank`.
    pub source_format: String,
    /// The stream the source was published compressed in (`gzip`, `xz`,
    /// `zstd`, `bzip2`), decoded while it streamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_compression: Option<String>,
    /// The downloaded source, relative to the store root (none for a local file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// The downloaded parts of a source in parts (an OCI cloud image),
    /// relative to the store root, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<String>,
    /// The disk's format: `raw`; for a container image's disk, `ext4` or
    /// `erofs` (raw disks holding that filesystem) or `cpio`.
    pub format: String,
    pub virtual_size: u64,
    /// Bytes the disk occupies on the host (it is sparse).
    pub allocated_size: u64,
    pub status: Status,
    /// Made by `image new`: its owner writes the disk in place, and it
    /// cannot be exported or removed while it has instances.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mutable: bool,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// What an image built from a container image keeps of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ready,
}

impl ImageRecord {
    /// The record of the raw disk made in `work` (`disk.raw`), ready,
    /// unverified, with no blob: callers set what differs.
    pub(crate) fn for_work(
        key: &str,
        work: &tempfile::TempDir,
        source: SourceInfo,
        digest: Option<Digest>,
        source_format: &str,
    ) -> Result<ImageRecord> {
        ImageRecord::for_file(key, &work.path().join("disk.raw"), source, digest, source_format)
    }

    /// The record of the disk `file`, ready, unverified, with no blob.
    pub(crate) fn for_file(
        key: &str,
        file: &Path,
        source: SourceInfo,
        digest: Option<Digest>,
        source_format: &str,
    ) -> Result<ImageRecord> {
        let meta = std::fs::metadata(file).map_err(Error::io("cannot stat", file))?;
        Ok(ImageRecord {
            name: key.to_owned(),
            source,
            digest,
            verified: false,
            source_format: source_format.to_owned(),
            source_compression: None,
            blob: None,
            blobs: Vec::new(),
            format: "raw".to_owned(),
            virtual_size: meta.len(),
            allocated_size: meta.blocks() * 512,
            status: Status::Ready,
            created_at: now(),
            mutable: false,
            container: None,
        })
    }

    /// The name of the image's file in its directory.
    pub fn file_name(&self) -> &'static str {
        self.container.as_ref().map_or("disk.raw", |c| c.format.file_name())
    }

    pub(crate) fn load(path: &Path) -> Result<ImageRecord> {
        let text = crate::fsutil::read_bounded(path, MAX_RECORD_BYTES)?;
        serde_json::from_str(&text).map_err(|e| Error::Record { path: path.to_owned(), message: e.to_string() })
    }

    pub(crate) fn save(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_atomic(path, &serde_json::to_vec_pretty(self).expect("a record serializes"))
    }
}

/// Now, as RFC 3339 in UTC, to the second.
pub(crate) fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
