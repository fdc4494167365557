//! Container images, as far as a disk builder needs them: which layers to
//! apply, in order, how each is compressed, and how the image wants to run.
//!
//! An OCI or Docker (schema 2) image manifest whose config is an image
//! config. Layers are `…image.layer.v1.tar` (and Docker's
//! `…rootfs.diff.tar`), plain, `+gzip` or `+zstd`; a layer of any other
//! media type (a non-distributable layer, an encrypted one) is refused,
//! naming it, since building without it would make a different image. The
//! config gives the entrypoint, command, environment, working directory
//! and user; an image wants systemd as init when its effective command
//! starts with `/sbin/init`, `/lib/systemd/systemd` or
//! `/usr/lib/systemd/systemd`. Configs over [`MAX_CONFIG_BYTES`] are refused.

use crate::artifact::{ArtifactError, Descriptor, ImageManifest, MAX_LAYERS};
use serde::{Deserialize, Serialize};

/// An image config larger than this is refused.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

const IMAGE_CONFIGS: &[&str] =
    &["application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"];

/// How a layer's tar is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One layer to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub descriptor: Descriptor,
    pub compression: Compression,
}

/// A container image's manifest: its config and its layers, bottom first.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerImage {
    pub config: Descriptor,
    pub layers: Vec<Layer>,
}

/// How the image wants to run (the `config` object of an image config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

const SYSTEMD_INITS: &[&str] = &["/sbin/init", "/lib/systemd/systemd", "/usr/lib/systemd/systemd"];

impl RunConfig {
    /// What runs: the entrypoint followed by the command.
    pub fn command(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }

    /// Whether the image boots systemd as its init.
    pub fn wants_systemd(&self) -> bool {
        self.command().first().is_some_and(|c| SYSTEMD_INITS.contains(&c.as_str()))
    }
}

/// The compression of a layer media type, or None for one vmimg cannot apply.
fn compression(media_type: &str) -> Option<Compression> {
    let base = media_type
        .strip_prefix("application/vnd.oci.image.layer.v1.tar")
        .or_else(|| media_type.strip_prefix("application/vnd.docker.image.rootfs.diff.tar"))?;
    match base {
        "" => Some(Compression::None),
        "+gzip" | ".gzip" => Some(Compression::Gzip),
        "+zstd" | ".zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// Reads a container image's manifest (`reference` names it in errors).
pub fn parse_manifest(bytes: &[u8], reference: &str) -> Result<ContainerImage, ArtifactError> {
    let manifest: ImageManifest = serde_json::from_slice(bytes).map_err(|e| ArtifactError::Json(e.to_string()))?;
    if manifest.layers.len() > MAX_LAYERS {
        return Err(ArtifactError::TooManyLayers(reference.to_owned()));
    }
    if !IMAGE_CONFIGS.contains(&manifest.config.media_type.as_str()) {
        return Err(ArtifactError::NotContainerImage {
            reference: reference.to_owned(),
            found: manifest.artifact_type.unwrap_or(manifest.config.media_type),
        });
    }
    let layers = manifest
        .layers
        .into_iter()
        .map(|descriptor| match compression(&descriptor.media_type) {
            Some(compression) => Ok(Layer { descriptor, compression }),
            None => {
                Err(ArtifactError::UnknownLayer { reference: reference.to_owned(), media_type: descriptor.media_type })
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(ContainerImage { config: manifest.config, layers })
}

/// Reads the run settings from an image config.
pub fn parse_config(bytes: &[u8]) -> Result<RunConfig, ArtifactError> {
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ArtifactError::Json(format!("the image config is over {MAX_CONFIG_BYTES} bytes")));
    }
    #[derive(Deserialize)]
    struct ImageConfig {
        #[serde(default)]
        config: Option<Raw>,
    }
    /// The config object, with JSON `null`s where lists may be.
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Raw {
        entrypoint: Option<Vec<String>>,
        cmd: Option<Vec<String>>,
        env: Option<Vec<String>>,
        working_dir: Option<String>,
        user: Option<String>,
    }
    let image: ImageConfig = serde_json::from_slice(bytes).map_err(|e| ArtifactError::Json(e.to_string()))?;
    let Some(raw) = image.config else { return Ok(RunConfig::default()) };
    Ok(RunConfig {
        entrypoint: raw.entrypoint.unwrap_or_default(),
        cmd: raw.cmd.unwrap_or_default(),
        env: raw.env.unwrap_or_default(),
        working_dir: raw.working_dir.filter(|d| !d.is_empty()),
        user: raw.user.filter(|u| !u.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(config_type: &str, layer_types: &[&str]) -> Vec<u8> {
        let digest = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
        let layers: Vec<_> =
            layer_types.iter().map(|t| serde_json::json!({ "mediaType": t, "digest": digest, "size": 2 })).collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "config": { "mediaType": config_type, "digest": digest, "size": 2 },
            "layers": layers
        }))
        .unwrap()
    }

    #[test]
    fn layers_and_their_compression() {
        let bytes = manifest(
            "application/vnd.oci.image.config.v1+json",
            &[
                "application/vnd.oci.image.layer.v1.tar+gzip",
                "application/vnd.oci.image.layer.v1.tar+zstd",
                "application/vnd.oci.image.layer.v1.tar",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            ],
        );
        let image = parse_manifest(&bytes, "x").unwrap();
        let kinds: Vec<_> = image.layers.iter().map(|l| l.compression).collect();
        assert_eq!(kinds, [Compression::Gzip, Compression::Zstd, Compression::None, Compression::Gzip]);
    }

    #[test]
    fn refusals_name_what_was_found() {
        let foreign = manifest(
            "application/vnd.docker.container.image.v1+json",
            &["application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"],
        );
        let error = parse_manifest(&foreign, "win").unwrap_err().to_string();
        assert!(error.contains("foreign.diff.tar.gzip"), "{error}");
        let encrypted = manifest(
            "application/vnd.oci.image.config.v1+json",
            &["application/vnd.oci.image.layer.v1.tar+gzip+encrypted"],
        );
        assert!(parse_manifest(&encrypted, "x").is_err());
        let artifact = manifest(crate::artifact::EMPTY_CONFIG, &[]);
        let error = parse_manifest(&artifact, "a").unwrap_err().to_string();
        assert!(error.contains("not a container image"), "{error}");
        assert!(parse_manifest(b"[]", "x").is_err());
    }

    #[test]
    fn run_config_and_systemd() {
        let config =
            br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":null,"Cmd":["/lib/systemd/systemd"],
            "Env":["PATH=/usr/bin"],"WorkingDir":"","User":"1000:1000"}}"#;
        let run = parse_config(config).unwrap();
        assert!(run.wants_systemd());
        assert_eq!(run.command(), ["/lib/systemd/systemd"]);
        assert_eq!(run.working_dir, None);
        assert_eq!(run.user.as_deref(), Some("1000:1000"));
        let shell = br#"{"config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["/sbin/init"],"WorkingDir":"/app"}}"#;
        let run = parse_config(shell).unwrap();
        assert!(!run.wants_systemd(), "the effective command is /bin/sh");
        assert_eq!(run.command(), ["/bin/sh", "-c", "/sbin/init"]);
        assert_eq!(parse_config(br#"{"os":"linux"}"#).unwrap(), RunConfig::default());
        assert!(parse_config(&vec![b' '; MAX_CONFIG_BYTES as usize + 1]).is_err());
        assert!(parse_config(br#"{"config":{"Cmd":"not a list"}}"#).is_err());
    }
}
