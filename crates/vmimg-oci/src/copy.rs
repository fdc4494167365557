//! Registry to registry (as `crane copy` and `skopeo copy` do): an image's
//! manifest, everything it refers to (an index's manifests, each
//! manifest's config and layers, cloud image parts or container layers
//! alike), and its cosign signature if it has one, from one repository to
//! another, streamed through: nothing is written to disk.
//!
//! Each blob the target lacks is mounted from the source repository when
//! both are on one registry (`POST ?mount=&from=`, which costs no bytes),
//! else streamed from the source's `GET` into the target's upload, hashed
//! and counted on the way: a blob whose bytes are not its descriptor's
//! size and digest fails its upload before the registry commits it (the
//! body ends with an error), and the registry checks the digest again. A
//! blob cut midway is sent again, with the registry's retry budget. The
//! manifests go last, children before their index, byte for byte, so the
//! target's digests are the source's; a signature manifest after the image.
//! Under a signature policy the source must pass it before anything is
//! copied.

use crate::artifact::{Descriptor, OCI_MANIFEST};
use crate::reference::Reference;
use crate::registry::{Access, Error, Manifest, Registry, Result, Scope, expect, resolve};
use crate::sign;
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header;
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use vmimg_fetch::{Digest, Hasher, Progress};

/// Manifests an index may list, and blobs a manifest may refer to, at most
/// (an index inside an index is refused, so a copy reads at most this many
/// manifests and this many blobs for each).
const MAX_REFERENCES: usize = 1024;

/// What a copy did.
#[derive(Debug, Clone, Default)]
pub struct Copied {
    /// The digest of the manifest copied (the target's is the same).
    pub digest: Option<Digest>,
    pub manifests: usize,
    /// Blobs the target lacked, streamed through.
    pub blobs_sent: usize,
    pub bytes_sent: u64,
    /// Blobs mounted from the source repository (same registry).
    pub blobs_mounted: usize,
    /// Blobs the target had.
    pub blobs_present: usize,
    /// Whether a signature was copied too.
    pub signed: bool,
}

/// What a manifest refers to, whatever its kind.
#[derive(Deserialize)]
struct References {
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

impl Registry {
    /// Copies the image `source` names to `target` (its tag, or the
    /// source's digest when it has none), with its signature if the
    /// source has one.
    pub async fn copy(&self, source: &Reference, target: &Reference, progress: &dyn Progress) -> Result<Copied> {
        let mut copied = Copied::default();
        let root = self.retry(progress, || self.manifest(source, progress)).await?;
        let digest = root.digest.clone();
        let repository = format!("{}/{}", source.registry(), source.repository());
        if let Some(keys) = self.options().policy.keys_for(&repository) {
            self.verify_signed(source, std::slice::from_ref(&digest), keys, progress).await?;
        }
        self.copy_tree(source, target, &root, progress, &mut copied, true).await?;
        let at = if target.tag().is_some() { target.clone() } else { target.at_digest(digest.clone()) };
        self.put_copy(&at, &root, progress).await?;
        let signature_tag = sign::signature_tag(&digest);
        let signature_at = source.with_tag(&signature_tag);
        match self.retry(progress, || self.manifest(&signature_at, progress)).await {
            Ok(signature) => {
                self.copy_tree(source, target, &signature, progress, &mut copied, false).await?;
                self.put_copy(&target.with_tag(&signature_tag), &signature, progress).await?;
                copied.signed = true;
            }
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        copied.digest = Some(digest);
        Ok(copied)
    }

    /// Copies what `manifest` refers to: an index's manifests (each with
    /// what it refers to, then itself; each once), a manifest's config and
    /// layers. An index is refused unless `may_be_index`.
    async fn copy_tree(
        &self,
        source: &Reference,
        target: &Reference,
        manifest: &Manifest,
        progress: &dyn Progress,
        copied: &mut Copied,
        may_be_index: bool,
    ) -> Result<()> {
        copied.manifests += 1;
        let refs: References = serde_json::from_slice(&manifest.bytes).map_err(|e| Error::Http {
            url: source.to_string(),
            message: format!("a manifest that does not parse: {e}"),
        })?;
        if !may_be_index && !refs.manifests.is_empty() {
            let message = format!("an index inside an index ({}): not copied", manifest.digest);
            return Err(Error::Http { url: source.to_string(), message });
        }
        if refs.manifests.len() + refs.layers.len() > MAX_REFERENCES {
            let message = format!("a manifest referring to more than {MAX_REFERENCES} things");
            return Err(Error::Http { url: source.to_string(), message });
        }
        let mut seen = std::collections::HashSet::new();
        for child in refs.manifests.iter().filter(|child| seen.insert(child.digest.clone())) {
            let at = source.at_digest(child.digest.clone());
            let child_manifest = self.retry(progress, || self.manifest(&at, progress)).await?;
            Box::pin(self.copy_tree(source, target, &child_manifest, progress, copied, false)).await?;
            self.put_copy(&target.at_digest(child.digest.clone()), &child_manifest, progress).await?;
        }
        for blob in refs.config.iter().chain(&refs.layers) {
            self.copy_blob(source, target, blob, progress, copied).await?;
        }
        Ok(())
    }

    /// Puts `manifest` at `at`, byte for byte.
    async fn put_copy(&self, at: &Reference, manifest: &Manifest, progress: &dyn Progress) -> Result<()> {
        let media_type = if manifest.media_type.is_empty() { OCI_MANIFEST } else { &manifest.media_type };
        self.retry(progress, || self.put_manifest(at, &manifest.bytes, media_type)).await.map(drop)
    }

    /// One blob to the target: there already, mounted, or streamed.
    async fn copy_blob(
        &self,
        source: &Reference,
        target: &Reference,
        blob: &Descriptor,
        progress: &dyn Progress,
        copied: &mut Copied,
    ) -> Result<()> {
        if self.retry(progress, || self.has_blob(target, &blob.digest)).await? {
            copied.blobs_present += 1;
            return Ok(());
        }
        if source.registry() == target.registry()
            && self.retry(progress, || self.mount(source, target, &blob.digest)).await?
        {
            copied.blobs_mounted += 1;
            return Ok(());
        }
        self.retry(progress, || self.stream_blob_to(source, target, blob, progress)).await?;
        copied.blobs_sent += 1;
        copied.bytes_sent += blob.size;
        Ok(())
    }

    /// Asks the target's registry to mount blob `digest` from the source
    /// repository: true if it did (`201`); a `202` (it opened an upload
    /// instead) is closed again and false.
    async fn mount(&self, source: &Reference, target: &Reference, digest: &Digest) -> Result<bool> {
        let endpoint = self.push_host(target)?;
        let base = endpoint.url(target, "blobs/uploads/");
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}mount={digest}&from={}", source.repository());
        let scope =
            Scope { repository: target.repository(), access: Access::Push, mount_from: Some(source.repository()) };
        let response = self.send_in(&endpoint, target, scope, || endpoint.http.post(&url)).await?;
        match response.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                if let Some(location) = response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()) {
                    let location = resolve(&url, location)?;
                    let _ = self.send(&endpoint, target, Access::Push, || endpoint.http.delete(&location)).await;
                }
                Ok(false)
            }
            _ => expect(response, &[StatusCode::CREATED], target).map(|_| false),
        }
    }

    /// Streams blob `blob` from the source into an upload to the target,
    /// checking its size and digest on the way.
    async fn stream_blob_to(
        &self,
        source: &Reference,
        target: &Reference,
        blob: &Descriptor,
        progress: &dyn Progress,
    ) -> Result<()> {
        let endpoint = self.push_host(target)?;
        let location = self.start_upload(&endpoint, target).await?;
        let put = crate::upload::closing_url(&location, &blob.digest);
        // The body is the source's response, which cannot be sent twice:
        // a 401 here (the token expired midway) fails the attempt, and the
        // retry starts again with the token the first request renewed.
        let body = self.blob_from(source, &blob.digest, 0, progress).await?;
        let from = body.url().clone();
        let verdict = Arc::new(Mutex::new(None));
        let body = reqwest::Body::wrap_stream(checked(body, blob.clone(), verdict.clone()));
        let request = endpoint
            .http
            .put(&put)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, blob.size)
            .body(body);
        let own = reqwest::Url::parse(&put).is_ok_and(|url| endpoint.is_own(&url));
        let auth = self.cached_authorization(&endpoint, target, Access::Push).filter(|_| own);
        let request = match auth {
            Some(auth) => request.header(header::AUTHORIZATION, auth),
            None => request,
        };
        let sent = request.send().await;
        // The source's bytes were wrong: that, not how the upload ended (a
        // mirror's: the next try asks another host).
        if let Some(wrong) = verdict.lock().expect("verdict").take() {
            return Err(self.passed_over(source, &from, &blob.digest, wrong));
        }
        expect(sent.map_err(|e| Error::http(&put, e))?, &[StatusCode::CREATED], target).map(drop)
    }
}

/// `response`'s body, ended with an error if it is not `blob`'s size and
/// digest (so that an upload of it fails before the registry commits it),
/// the error also left in `verdict`. The digest is checked before the last
/// byte is handed on: a client stops reading a body once it has sent its
/// length.
fn checked(
    response: reqwest::Response,
    blob: Descriptor,
    verdict: Arc<Mutex<Option<Error>>>,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    let hasher = Some(Hasher::new(blob.digest.algorithm()));
    futures_util::stream::unfold((response.bytes_stream(), hasher, 0u64), move |state| {
        let (blob, verdict) = (blob.clone(), verdict.clone());
        async move {
            let (mut body, hasher, mut seen) = state;
            // None: the blob ended, or failed.
            let mut hasher = hasher?;
            let fail = |wrong: Error, body, seen| {
                let error = std::io::Error::other(wrong.to_string());
                *verdict.lock().expect("verdict") = Some(wrong);
                Some((Err(error), (body, None, seen)))
            };
            let short = |seen| Error::BlobSize { digest: blob.digest.clone(), expected: blob.size, actual: seen };
            let chunk = match body.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    let error = std::io::Error::other(format!("blob {} from the source: {e}", blob.digest));
                    return Some((Err(error), (body, None, seen)));
                }
                None if seen == 0 && blob.size == 0 && hasher.finish() == blob.digest => return None,
                None => return fail(short(seen), body, seen),
            };
            seen += chunk.len() as u64;
            if seen > blob.size {
                return fail(short(seen), body, seen);
            }
            hasher.update(&chunk);
            if seen < blob.size {
                return Some((Ok(chunk), (body, Some(hasher), seen)));
            }
            let actual = hasher.finish();
            if actual != blob.digest {
                return fail(Error::BlobDigest { expected: blob.digest.clone(), actual }, body, seen);
            }
            Some((Ok(chunk), (body, None, seen)))
        }
    })
}
