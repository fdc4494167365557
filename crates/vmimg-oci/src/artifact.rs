//! Cloud-image artifacts, as cocoonstack publishes them (its epoch registry
//! serves them, cocoon imports them), read and written.
//!
//! An OCI 1.1 image manifest whose `artifactType` (or, from older tools, the
//! config's media type) is [`ARTIFACT_TYPE`]. Its disk layers have media
//! type `application/vnd.cocoonstack.disk.{qcow2,raw}` or the `.part`
//! variants of a disk split into pieces (`split -b 1900M -d` and `oras
//! push`); concatenated in the lexicographic order of their
//! `org.opencontainers.image.title` annotations (a stable sort, so equal
//! titles keep the manifest's order) they are the disk. Every other layer
//! (a `SHA256SUMS` as `text/plain`, say) is skipped.
//!
//! Refused, with what was found: a manifest that is not JSON of that shape,
//! an index with no manifest for the platform, a container image (its
//! config is an image config: `vmimg pull` builds those, `cat` cannot), no
//! disk layer, disk layers of both formats, digests that are not
//! `sha256:`/`sha512:` of the right length, more than [`MAX_LAYERS`] layers,
//! disk layers whose sizes add up past `u64`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use vmimg_fetch::Digest;

pub const ARTIFACT_TYPE: &str = "application/vnd.cocoonstack.os-image.v1+json";
pub const DISK_QCOW2: &str = "application/vnd.cocoonstack.disk.qcow2";
pub const DISK_QCOW2_PART: &str = "application/vnd.cocoonstack.disk.qcow2.part";
pub const DISK_RAW: &str = "application/vnd.cocoonstack.disk.raw";
pub const DISK_RAW_PART: &str = "application/vnd.cocoonstack.disk.raw.part";
pub const TITLE: &str = "org.opencontainers.image.title";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The empty config of an artifact: `{}`.
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
const IMAGE_CONFIGS: &[&str] =
    &["application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"];

/// The most layers a manifest may have.
pub const MAX_LAYERS: usize = 4096;

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
}

/// An image manifest (the fields vmimg reads and writes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index (the fields vmimg reads).
#[derive(Debug, Deserialize)]
pub(crate) struct ImageIndex {
    pub(crate) manifests: Vec<Descriptor>,
}

/// The disk's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }

    /// The media type of one part of a disk in `parts` parts.
    pub fn media_type(self, parts: usize) -> &'static str {
        match (self, parts > 1) {
            (DiskFormat::Qcow2, false) => DISK_QCOW2,
            (DiskFormat::Qcow2, true) => DISK_QCOW2_PART,
            (DiskFormat::Raw, false) => DISK_RAW,
            (DiskFormat::Raw, true) => DISK_RAW_PART,
        }
    }

    fn of(media_type: &str) -> Option<DiskFormat> {
        match media_type {
            DISK_QCOW2 | DISK_QCOW2_PART => Some(DiskFormat::Qcow2),
            DISK_RAW | DISK_RAW_PART => Some(DiskFormat::Raw),
            _ => None,
        }
    }
}

/// A cloud image: its disk's parts, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudImage {
    pub format: DiskFormat,
    pub parts: Vec<Descriptor>,
    pub annotations: BTreeMap<String, String>,
}

impl CloudImage {
    /// The disk's size: its parts' sizes added.
    pub fn size(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("the manifest is not valid JSON of an OCI manifest: {0}")]
    Json(String),
    #[error("{0} is a container image, not a cloud image: `vmimg pull` builds a disk from it")]
    ContainerImage(String),
    #[error("{reference} is not a cloud image (artifact type {found:?}, expected {ARTIFACT_TYPE:?})")]
    NotCloudImage { reference: String, found: String },
    #[error("{0} has no disk layer (media type {DISK_QCOW2} or {DISK_RAW}, or their .part variants)")]
    NoDisk(String),
    #[error("{0} mixes qcow2 and raw disk layers")]
    MixedFormats(String),
    #[error("{0} has more than {MAX_LAYERS} layers")]
    TooManyLayers(String),
    #[error("{0} has disk layers whose sizes add up to more than 2^64 bytes")]
    TooLarge(String),
    #[error("{reference} is not a container image (config or artifact type {found:?})")]
    NotContainerImage { reference: String, found: String },
    #[error("{reference} has a layer of media type {media_type:?}, which vmimg cannot apply")]
    UnknownLayer { reference: String, media_type: String },
    #[error("{reference}: the index has no manifest for {os}/{architecture}")]
    NoPlatform { reference: String, os: String, architecture: String },
}

/// Whether a manifest's media type (or its JSON's) is an index.
pub fn is_index(media_type: &str, bytes: &[u8]) -> bool {
    let declared = |t: &str| t == OCI_INDEX || t == DOCKER_MANIFEST_LIST;
    if declared(media_type.split(';').next().unwrap_or_default().trim()) {
        return true;
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Probe>(bytes)
        .is_ok_and(|p| p.media_type.as_deref().is_some_and(declared) || p.manifests.is_some())
}

/// The digest of the index entry for `os`/`architecture`.
pub fn pick_platform(bytes: &[u8], reference: &str, os: &str, architecture: &str) -> Result<Digest, ArtifactError> {
    let index: ImageIndex = serde_json::from_slice(bytes).map_err(|e| ArtifactError::Json(e.to_string()))?;
    index
        .manifests
        .into_iter()
        .find(|m| m.platform.as_ref().is_some_and(|p| p.os == os && p.architecture == architecture))
        .map(|m| m.digest)
        .ok_or_else(|| ArtifactError::NoPlatform {
            reference: reference.to_owned(),
            os: os.to_owned(),
            architecture: architecture.to_owned(),
        })
}

/// Reads a cloud image's manifest (`reference` names it in errors).
pub fn parse(bytes: &[u8], reference: &str) -> Result<CloudImage, ArtifactError> {
    let manifest: ImageManifest = serde_json::from_slice(bytes).map_err(|e| ArtifactError::Json(e.to_string()))?;
    if manifest.layers.len() > MAX_LAYERS {
        return Err(ArtifactError::TooManyLayers(reference.to_owned()));
    }
    let artifact_type = manifest.artifact_type.as_deref().unwrap_or(&manifest.config.media_type);
    if artifact_type != ARTIFACT_TYPE {
        if IMAGE_CONFIGS.contains(&artifact_type) {
            return Err(ArtifactError::ContainerImage(reference.to_owned()));
        }
        return Err(ArtifactError::NotCloudImage { reference: reference.to_owned(), found: artifact_type.to_owned() });
    }
    let mut parts: Vec<Descriptor> =
        manifest.layers.into_iter().filter(|l| DiskFormat::of(&l.media_type).is_some()).collect();
    let Some(first) = parts.first() else { return Err(ArtifactError::NoDisk(reference.to_owned())) };
    let format = DiskFormat::of(&first.media_type).expect("a disk layer");
    if parts.iter().any(|p| DiskFormat::of(&p.media_type) != Some(format)) {
        return Err(ArtifactError::MixedFormats(reference.to_owned()));
    }
    if parts.iter().try_fold(0u64, |total, p| total.checked_add(p.size)).is_none() {
        return Err(ArtifactError::TooLarge(reference.to_owned()));
    }
    parts.sort_by(|a, b| title(a).cmp(title(b)));
    Ok(CloudImage { format, parts, annotations: manifest.annotations })
}

fn title(layer: &Descriptor) -> &str {
    layer.annotations.get(TITLE).map_or("", String::as_str)
}

/// The manifest of a cloud image of `format` whose parts are `parts`
/// (digest and size each), titled `<name>.NN.<format>.part` when split
/// (as `split -d` numbers them, so titles sort in part order).
pub fn manifest(
    format: DiskFormat,
    parts: &[(Digest, u64)],
    name: &str,
    annotations: BTreeMap<String, String>,
) -> ImageManifest {
    let media_type = format.media_type(parts.len());
    // Wide enough that the titles sort in part order.
    let width = parts.len().saturating_sub(1).to_string().len().max(2);
    let layers = parts
        .iter()
        .enumerate()
        .map(|(i, (digest, size))| {
            let title = match parts.len() {
                1 => format!("{name}.{}", format.name()),
                _ => format!("{name}.{i:0width$}.{}.part", format.name()),
            };
            Descriptor {
                media_type: media_type.to_owned(),
                digest: digest.clone(),
                size: *size,
                annotations: BTreeMap::from([(TITLE.to_owned(), title)]),
                platform: None,
            }
        })
        .collect();
    ImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.to_owned()),
        artifact_type: Some(ARTIFACT_TYPE.to_owned()),
        config: empty_config(),
        layers,
        annotations,
    }
}

/// The descriptor of `{}`, the config every artifact shares.
pub fn empty_config() -> Descriptor {
    Descriptor {
        media_type: EMPTY_CONFIG.to_owned(),
        digest: "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a".parse().expect("a digest"),
        size: 2,
        annotations: BTreeMap::new(),
        platform: None,
    }
}
