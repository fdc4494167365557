//! Signing what is pushed and checking what is pulled, in a registry, in
//! cosign's key-based format (see `sign` for the format and the keys).
//!
//! A signature is added to the image's signature manifest
//! (`sha256-HEX.sig`): its layers are kept, ours appended unless the same
//! payload and signature are there already, as `cosign sign` does. A check
//! reads the signature manifests of the digests given (at most
//! [`MAX_SIGNATURE_LAYERS`] layers each), and passes at the first layer
//! whose payload verifies under one of the keys and names one of those
//! digests; otherwise it is refused with what was found.

use crate::artifact::{Descriptor, OCI_MANIFEST};
use crate::reference::Reference;
use crate::registry::{Error, Registry, Result, sha256};
use crate::sign::{self, MAX_PAYLOAD_BYTES, SIGNATURE_ANNOTATION, SIMPLE_SIGNING, SignKey, VerifyKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use vmimg_fetch::{Digest, Progress};

/// Signature layers read of one signature manifest, at most.
pub const MAX_SIGNATURE_LAYERS: usize = 64;
const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// A signature manifest, as cosign writes one.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignatureManifest {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

impl Registry {
    /// Signs the image `reference`'s repository holds under manifest
    /// `digest` with `key`: the payload blob, a config, and the signature
    /// manifest (its earlier signatures kept). Returns the signature's
    /// reference.
    pub async fn sign(
        &self,
        reference: &Reference,
        digest: &Digest,
        key: &SignKey,
        progress: &dyn Progress,
    ) -> Result<Reference> {
        let at = reference.with_tag(&sign::signature_tag(digest));
        let payload = sign::payload(&docker_reference(reference), digest);
        let layer = Descriptor {
            media_type: SIMPLE_SIGNING.to_owned(),
            digest: sha256(&payload),
            size: payload.len() as u64,
            annotations: BTreeMap::from([(SIGNATURE_ANNOTATION.to_owned(), key.sign(&payload))]),
            platform: None,
        };
        // Read where it is written: the host pushes go to.
        let mut layers = match self.retry(progress, || self.signature_manifest(&at, None)).await? {
            Some(found) => found.layers,
            None => Vec::new(),
        };
        if !layers.iter().any(|l| l.digest == layer.digest && l.annotations == layer.annotations) {
            layers.push(layer);
        }
        let payload_digest = sha256(&payload);
        self.retry(progress, || self.upload_missing(&at, &payload_digest, &payload)).await?;
        let config = signature_config(&layers);
        let config_descriptor = Descriptor {
            media_type: IMAGE_CONFIG.to_owned(),
            digest: sha256(&config),
            size: config.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
        };
        self.retry(progress, || self.upload_missing(&at, &config_descriptor.digest, &config)).await?;
        let manifest = SignatureManifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.to_owned()),
            config: config_descriptor,
            layers,
        };
        let bytes = serde_json::to_vec(&manifest).expect("a manifest serializes");
        self.retry(progress, || self.put_manifest(&at, &bytes, OCI_MANIFEST)).await?;
        Ok(at)
    }

    /// Checks that one of `digests` (of images in `reference`'s repository)
    /// carries a signature by one of `keys`; refused otherwise, with what
    /// was found.
    pub async fn verify_signed(
        &self,
        reference: &Reference,
        digests: &[Digest],
        keys: &[VerifyKey],
        progress: &dyn Progress,
    ) -> Result<()> {
        let mut found = Vec::new();
        for digest in digests {
            let at = reference.with_tag(&sign::signature_tag(digest));
            let Some(manifest) = self.retry(progress, || self.signature_manifest(&at, Some(progress))).await? else {
                continue;
            };
            for layer in manifest.layers.iter().filter(|l| l.media_type == SIMPLE_SIGNING).take(MAX_SIGNATURE_LAYERS) {
                match self.check_layer(&at, layer, digests, keys, progress).await? {
                    Ok(()) => return Ok(()),
                    Err(why) => found.push(why),
                }
            }
        }
        let reason = if found.is_empty() {
            format!("it has no signature (no tag {} in its repository)", sign::signature_tag(&digests[0]))
        } else {
            format!("none of its {} signatures passes: {}", found.len(), found.join("; "))
        };
        Err(Error::Unsigned { reference: reference.to_string(), reason })
    }

    /// One signature layer: Ok(Ok) when it verifies under a key and signs
    /// one of `digests`, Ok(Err(why)) when it does not.
    async fn check_layer(
        &self,
        at: &Reference,
        layer: &Descriptor,
        digests: &[Digest],
        keys: &[VerifyKey],
        progress: &dyn Progress,
    ) -> Result<std::result::Result<(), String>> {
        let Some(signature) = layer.annotations.get(SIGNATURE_ANNOTATION) else {
            return Ok(Err("a layer without a signature annotation".into()));
        };
        if layer.size > MAX_PAYLOAD_BYTES {
            return Ok(Err(format!("a payload of {} bytes (at most {MAX_PAYLOAD_BYTES})", layer.size)));
        }
        let payload = self
            .retry(progress, || self.small_blob(at, &layer.digest, layer.size, MAX_PAYLOAD_BYTES, progress))
            .await?;
        if !keys.iter().any(|key| key.verifies(&payload, signature)) {
            return Ok(Err("signed by another key".into()));
        }
        Ok(match sign::signed_digest(&payload) {
            Ok(signed) if digests.contains(&signed) => Ok(()),
            Ok(signed) => Err(format!("a signature of another image ({signed})")),
            Err(e) => Err(e.to_string()),
        })
    }

    /// The signature manifest at `at`, or None if there is none: from the
    /// hosts that resolve tags (telling `progress`), or with None from the
    /// host pushes go to.
    async fn signature_manifest(
        &self,
        at: &Reference,
        progress: Option<&dyn Progress>,
    ) -> Result<Option<SignatureManifest>> {
        let read = match progress {
            Some(progress) => self.manifest(at, progress).await,
            None => self.manifest_for_push(at).await,
        };
        let manifest = match read {
            Ok(manifest) => manifest,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let parsed: SignatureManifest = serde_json::from_slice(&manifest.bytes)
            .map_err(|e| Error::Http { url: at.to_string(), message: format!("not a signature manifest: {e}") })?;
        Ok(Some(parsed))
    }

    /// Uploads `bytes` as blob `digest` unless the repository has it.
    pub(crate) async fn upload_missing(&self, at: &Reference, digest: &Digest, bytes: &[u8]) -> Result<()> {
        if !self.has_blob(at, digest).await? {
            self.upload_bytes(at, digest, bytes).await?;
        }
        Ok(())
    }
}

/// `registry/repository`, as a payload names the image.
fn docker_reference(reference: &Reference) -> String {
    format!("{}/{}", reference.registry(), reference.repository())
}

/// The config of a signature manifest, as cosign writes one: its layers'
/// digests as the root filesystem's.
fn signature_config(layers: &[Descriptor]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| l.digest.to_string()).collect();
    let config = serde_json::json!({
        "architecture": "",
        "os": "",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    serde_json::to_vec(&config).expect("a config serializes")
}
