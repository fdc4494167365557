//! The store's records: what it knows of each image and instance, typed.
//!
//! An image record is one JSON file per image (`images/<key>/image.json`),
//! an instance record one per instance (`instances/<name>/instance.json`),
//! written atomically and read with a size limit. Their JSON is the schema
//! the store's clients (the CLI's `--json`, the daemon) see: field names are
//! stable and snake_case, formats and statuses lowercase words, times
//! RFC 3339 in UTC, digests `algorithm:hex`, references as Docker writes
//! them. A field is only ever added, with a default, so older records read.

use crate::catalog::Arch;
use crate::error::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use vmimg_fetch::Digest;
use vmimg_oci::container::RunConfig;
use vmimg_oci::{LayoutRef, Reference};

/// A record larger than this is refused as corrupt.
pub(crate) const MAX_RECORD_BYTES: u64 = 1 << 20;

/// What the store knows of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The cache key, also the image's directory name.
    pub name: String,
    pub source: SourceInfo,
    /// The digest of the source's bytes (checked against the catalog, the
    /// caller's digest or the manifest when `verified`; computed only
    /// otherwise). None for a blank image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    pub verified: bool,
    /// What the source was.
    pub source_format: SourceFormat,
    /// The stream the source was published compressed in, decoded while it
    /// streamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_compression: Option<Compression>,
    /// The downloaded source, relative to the store root (none for a local file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// The downloaded parts of a source in parts (an OCI cloud image),
    /// relative to the store root, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<String>,
    /// What the image's file holds.
    pub format: ImageFormat,
    pub virtual_size: u64,
    /// Bytes the disk occupies on the host (it is sparse).
    pub allocated_size: u64,
    pub status: Status,
    /// Made by `image new`: its owner writes the disk in place, and it
    /// cannot be exported or removed while it has instances.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mutable: bool,
    pub created_at: Timestamp,
    /// What an image built from a container image keeps of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerInfo>,
}

/// A ready image: its record and the path of its file.
#[derive(Debug, Clone, Serialize)]
pub struct Pulled {
    pub path: PathBuf,
    #[serde(flatten)]
    pub record: ImageRecord,
    /// Whether the store already had it.
    pub cached: bool,
    /// The older versions of its source (a file or URL given without a
    /// digest) it replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<String>,
    /// The names users gave it (see [`Store::tag`](crate::Store::tag)).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

/// An image record's status: the store only ever writes ready images (an
/// image being made has no record until it is published whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ready,
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceInfo {
    /// A catalog alias, pinned to a dated snapshot.
    Alias {
        alias: String,
        snapshot: String,
        arch: Arch,
        url: String,
    },
    /// A URL given without the catalog, and the version of the file its
    /// server named (what `pull --refresh` asks it about).
    Url {
        url: String,
        #[serde(flatten)]
        validators: vmimg_fetch::Validators,
    },
    File {
        path: PathBuf,
    },
    /// Imported from an `image.tar.zst` bundle.
    Bundle {
        path: PathBuf,
    },
    /// Made blank, to be written in place.
    Blank,
    /// An image from an OCI registry (a cloud image, or a container image
    /// built into a disk): the reference asked for, and the digest of the
    /// manifest it named then.
    Oci {
        #[serde(with = "as_text")]
        reference: Reference,
        digest: Digest,
    },
    /// An image from a local OCI layout or archive (`oci:DIR[:NAME]`,
    /// `oci-archive:FILE[:NAME]`), and the digest of its manifest then.
    Layout {
        #[serde(with = "as_text")]
        layout: LayoutRef,
        digest: Digest,
    },
}

impl SourceInfo {
    /// Whether the image can be made again from its source, so that `gc`
    /// may evict it: what the user made (a bundle import, a blank image) or
    /// a local file since gone cannot.
    pub fn can_pull_again(&self) -> bool {
        match self {
            SourceInfo::Alias { .. } | SourceInfo::Url { .. } | SourceInfo::Oci { .. } => true,
            SourceInfo::File { path } => path.is_file(),
            SourceInfo::Layout { layout, .. } => layout.path().exists(),
            SourceInfo::Bundle { .. } | SourceInfo::Blank => false,
        }
    }

    /// Every kind of source, as [`SourceInfo::kind`] names them.
    pub const KINDS: [&'static str; 7] = ["alias", "url", "file", "bundle", "blank", "oci", "layout"];

    /// Its kind, as its JSON's `kind` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceInfo::Alias { .. } => "alias",
            SourceInfo::Url { .. } => "url",
            SourceInfo::File { .. } => "file",
            SourceInfo::Bundle { .. } => "bundle",
            SourceInfo::Blank => "blank",
            SourceInfo::Oci { .. } => "oci",
            SourceInfo::Layout { .. } => "layout",
        }
    }

    /// Where its bytes came from: the URL fetched (an alias's after
    /// mirrors), the file read, or the manifest pinned to the digest it had
    /// then; None for a blank image.
    pub fn origin(&self) -> Option<String> {
        match self {
            SourceInfo::Alias { url, .. } | SourceInfo::Url { url, .. } => Some(url.clone()),
            SourceInfo::File { path } | SourceInfo::Bundle { path } => Some(path.display().to_string()),
            SourceInfo::Blank => None,
            SourceInfo::Oci { reference, digest } => Some(format!("oci://{}", reference.at_digest(digest.clone()))),
            SourceInfo::Layout { layout, digest } => Some(format!("{layout}@{digest}")),
        }
    }

    /// The source as a user would write it again.
    pub fn display_name(&self) -> String {
        match self {
            SourceInfo::Alias { alias, .. } => alias.clone(),
            SourceInfo::Url { url, .. } => url.clone(),
            SourceInfo::File { path } | SourceInfo::Bundle { path } => path.display().to_string(),
            SourceInfo::Blank => "(blank)".to_owned(),
            SourceInfo::Oci { reference, .. } => format!("oci://{reference}"),
            SourceInfo::Layout { layout, .. } => layout.to_string(),
        }
    }
}

/// What an image's source was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Raw,
    Qcow2,
    /// An `image.tar.zst` bundle.
    Bundle,
    /// Nothing: a blank image.
    Blank,
    /// A container image's layers.
    Container,
}

impl From<vmimg_disk::Format> for SourceFormat {
    fn from(format: vmimg_disk::Format) -> SourceFormat {
        match format {
            vmimg_disk::Format::Raw => SourceFormat::Raw,
            vmimg_disk::Format::Qcow2 => SourceFormat::Qcow2,
        }
    }
}

/// A compressed stream a source came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Xz,
    Zstd,
    Bzip2,
}

impl From<vmimg_disk::Stream> for Compression {
    fn from(stream: vmimg_disk::Stream) -> Compression {
        match stream {
            vmimg_disk::Stream::Gzip => Compression::Gzip,
            vmimg_disk::Stream::Xz => Compression::Xz,
            vmimg_disk::Stream::Zstd => Compression::Zstd,
            vmimg_disk::Stream::Bzip2 => Compression::Bzip2,
        }
    }
}

/// What an image's file holds.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// A raw disk (partitioned or not, as its source made it).
    Raw,
    /// A raw disk holding an ext4 filesystem.
    Ext4,
    /// A raw disk holding an erofs filesystem.
    Erofs,
    /// A newc cpio initramfs: no disk.
    Cpio,
}

impl ImageFormat {
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Ext4 => "ext4",
            ImageFormat::Erofs => "erofs",
            ImageFormat::Cpio => "cpio",
        }
    }

    /// The file the image's directory keeps it in.
    pub fn file_name(self) -> &'static str {
        match self {
            ImageFormat::Cpio => "initrd.cpio",
            _ => "disk.raw",
        }
    }
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// What a container image becomes.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsFormat {
    /// A sparse raw disk holding an ext4 filesystem (writable root).
    #[default]
    Ext4,
    /// A raw disk holding a compressed, read-only erofs filesystem.
    Erofs,
    /// A newc cpio archive, for an initramfs.
    Cpio,
}

impl RootfsFormat {
    pub fn name(self) -> &'static str {
        self.image_format().name()
    }

    /// The format of the image it makes.
    pub fn image_format(self) -> ImageFormat {
        match self {
            RootfsFormat::Ext4 => ImageFormat::Ext4,
            RootfsFormat::Erofs => ImageFormat::Erofs,
            RootfsFormat::Cpio => ImageFormat::Cpio,
        }
    }

    /// The file the image's directory keeps it in.
    pub fn file_name(self) -> &'static str {
        self.image_format().file_name()
    }
}

impl std::str::FromStr for RootfsFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<RootfsFormat> {
        match s {
            "ext4" => Ok(RootfsFormat::Ext4),
            "erofs" => Ok(RootfsFormat::Erofs),
            "cpio" => Ok(RootfsFormat::Cpio),
            _ => Err(Error::Invalid(format!("unknown container disk format {s:?} (ext4, erofs or cpio)"))),
        }
    }
}

/// What an image made from a container image keeps of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub format: RootfsFormat,
    /// Entrypoint, command, environment, working directory, user.
    pub run: RunConfig,
    /// Whether the image boots systemd as its init.
    pub systemd: bool,
    /// The layers in the layer cache, bottom first, relative to the store root.
    pub layers: Vec<String>,
    /// What the disk lacks of what the layers asked for (owners and device
    /// nodes when not built as root; xattrs the host refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The disk format of an instance.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceFormat {
    /// A copy-on-write overlay backed by the image's disk.
    Qcow2,
    /// A copy of its own (a reflink where the filesystem can).
    Raw,
}

impl InstanceFormat {
    pub fn name(self) -> &'static str {
        match self {
            InstanceFormat::Qcow2 => "qcow2",
            InstanceFormat::Raw => "raw",
        }
    }

    pub(crate) fn file_name(self) -> &'static str {
        match self {
            InstanceFormat::Qcow2 => "disk.qcow2",
            InstanceFormat::Raw => "disk.raw",
        }
    }
}

impl std::str::FromStr for InstanceFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<InstanceFormat> {
        match s {
            "qcow2" => Ok(InstanceFormat::Qcow2),
            "raw" => Ok(InstanceFormat::Raw),
            _ => Err(Error::Invalid(format!("unknown instance format {s:?} (qcow2 or raw)"))),
        }
    }
}

/// `instances/<name>/instance.json`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub name: String,
    /// The image's key (its directory under `images/`).
    pub image: String,
    pub format: InstanceFormat,
    pub virtual_size: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
}

/// A moment, to the second, written as RFC 3339 in UTC
/// (`2026-12-04T19:22:57Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(SystemTime);

impl Timestamp {
    pub fn now() -> Timestamp {
        SystemTime::now().into()
    }

    pub fn system_time(self) -> SystemTime {
        self.0
    }
}

impl From<SystemTime> for Timestamp {
    /// `time` to the second (what its text keeps), so a record reads back equal.
    fn from(time: SystemTime) -> Timestamp {
        let seconds = time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Timestamp(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&humantime::format_rfc3339_seconds(self.0).to_string())
    }
}

impl std::str::FromStr for Timestamp {
    type Err = humantime::TimestampError;
    fn from_str(s: &str) -> std::result::Result<Timestamp, Self::Err> {
        humantime::parse_rfc3339_weak(s).map(Timestamp)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Timestamp, D::Error> {
        as_text::deserialize(deserializer)
    }
}

/// Serde for types written as their text (`Display` and `FromStr`).
pub(crate) mod as_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<T: std::fmt::Display, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub(crate) fn deserialize<'de, T, D>(deserializer: D) -> Result<T, D::Error>
    where
        T: std::str::FromStr<Err: std::fmt::Display>,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
    }
}

impl ImageRecord {
    /// The record of the raw disk made in `work` (`disk.raw`), ready,
    /// unverified, with no blob: callers set what differs.
    pub(crate) fn for_work(
        key: &str,
        work: &tempfile::TempDir,
        source: SourceInfo,
        digest: Option<Digest>,
        source_format: SourceFormat,
    ) -> Result<ImageRecord> {
        ImageRecord::for_file(key, &work.path().join("disk.raw"), source, digest, source_format)
    }

    /// The record of the disk `file`, ready, unverified, with no blob.
    pub(crate) fn for_file(
        key: &str,
        file: &Path,
        source: SourceInfo,
        digest: Option<Digest>,
        source_format: SourceFormat,
    ) -> Result<ImageRecord> {
        let meta = std::fs::metadata(file).map_err(Error::io("stat", file))?;
        Ok(ImageRecord {
            name: key.to_owned(),
            source,
            digest,
            verified: false,
            source_format,
            source_compression: None,
            blob: None,
            blobs: Vec::new(),
            format: ImageFormat::Raw,
            virtual_size: meta.len(),
            allocated_size: meta.blocks() * 512,
            status: Status::Ready,
            created_at: Timestamp::now(),
            mutable: false,
            container: None,
        })
    }

    /// The name of the image's file in its directory.
    pub fn file_name(&self) -> &'static str {
        self.format.file_name()
    }

    /// Whether its file is a disk (not an initramfs).
    pub fn is_disk(&self) -> bool {
        self.format != ImageFormat::Cpio
    }

    pub(crate) fn load(path: &Path) -> Result<ImageRecord> {
        load_json(path)
    }

    pub(crate) fn save(&self, path: &Path) -> Result<()> {
        save_json(path, self)
    }
}

/// Reads a record, refusing one over [`MAX_RECORD_BYTES`] or malformed.
pub(crate) fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = crate::fsutil::read_bounded(path, MAX_RECORD_BYTES)?;
    serde_json::from_str(&text).map_err(|e| Error::Record { path: path.to_owned(), message: e.to_string() })
}

/// Writes a record atomically.
pub(crate) fn save_json<T: Serialize>(path: &Path, record: &T) -> Result<()> {
    crate::fsutil::write_atomic(path, &serde_json::to_vec_pretty(record).expect("a record serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_written_before_typing_still_read() {
        let old = r#"{"name":"k","source":{"kind":"oci","reference":"127.0.0.1:5000/vm/a:1","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"},
            "digest":null,"verified":true,"source_format":"container","format":"ext4","virtual_size":1,"allocated_size":0,
            "status":"ready","created_at":"2026-11-25T00:00:00Z"}"#;
        let record: ImageRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record.format, ImageFormat::Ext4);
        assert_eq!(record.created_at.to_string(), "2026-11-25T00:00:00Z");
        let SourceInfo::Oci { reference, .. } = &record.source else { panic!("an OCI source") };
        assert_eq!(reference.repository(), "vm/a");
        let again: ImageRecord = serde_json::from_str(&serde_json::to_string(&record).unwrap()).unwrap();
        assert_eq!(again, record);
    }

    #[test]
    fn kinds_are_the_json_tags() {
        let digest: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let sources = [
            SourceInfo::Alias { alias: "a".into(), snapshot: "1".into(), arch: Arch::Amd64, url: "http://h/a".into() },
            SourceInfo::Url { url: "http://h/a".into(), validators: Default::default() },
            SourceInfo::File { path: "/a".into() },
            SourceInfo::Bundle { path: "/a.tar.zst".into() },
            SourceInfo::Blank,
            SourceInfo::Oci { reference: "h.io/vm/a:1".parse().unwrap(), digest: digest.clone() },
            SourceInfo::Layout { layout: "oci:/l:1".parse().unwrap(), digest: digest.clone() },
        ];
        let kinds: Vec<&str> = sources.iter().map(SourceInfo::kind).collect();
        assert_eq!(kinds, SourceInfo::KINDS);
        for source in &sources {
            assert_eq!(serde_json::to_value(source).unwrap()["kind"], source.kind());
        }
        let pinned = format!("oci://h.io/vm/a:1@{digest}");
        assert_eq!(sources[5].origin(), Some(pinned));
        assert_eq!(sources[6].origin(), Some(format!("oci:/l:1@{digest}")));
        assert_eq!(sources[4].origin(), None);
    }

    #[test]
    fn malformed_fields_are_refused() {
        let bad_time = r#"{"name":"i","image":"k","format":"raw","virtual_size":1,"created_at":"yesterday"}"#;
        assert!(serde_json::from_str::<InstanceRecord>(bad_time).is_err());
        let bad_format =
            r#"{"name":"i","image":"k","format":"vmdk","virtual_size":1,"created_at":"2026-11-25T00:00:00Z"}"#;
        assert!(serde_json::from_str::<InstanceRecord>(bad_format).is_err());
    }
}
