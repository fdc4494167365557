//! Images in a registry: finding one (a cloud image or a container image),
//! streaming a cloud image's disk, pushing one.
//!
//! Every blob is checked for its size and its digest as it streams: a body
//! longer than its descriptor says is cut off at once, a shorter one or a
//! wrong digest is an error naming the part. A part cut midway is asked for
//! again from where it stopped (`Range`), with backoff, as a pull would be.
//! Every call that retries takes the `Progress` that hears each retry.

use crate::artifact::{self, ArtifactError, CloudImage, DiskFormat};
use crate::container::{self, ContainerImage, MAX_CONFIG_BYTES, RunConfig};
use crate::reference::{Pinned, Reference};
use crate::registry::{Error, Manifest, Registry, Result};
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use vmimg_fetch::{Digest, Hasher, Progress, Retries};

/// What an OCI reference names.
#[derive(Debug, Clone, PartialEq)]
pub enum OciImage {
    Cloud(CloudImage),
    Container(ContainerImage),
}

/// What `manifest` is, the one place a registry and a local layout decide
/// it: through an index, the manifest for linux/`architecture` (read by
/// `child`, which checks its digest); then a cloud image, or else a
/// container image. Returns the digest of the manifest classified; `name`
/// names the image in errors.
pub(crate) async fn classify<F, Fut>(
    manifest: Manifest,
    name: &str,
    architecture: &str,
    child: F,
) -> Result<(Digest, OciImage)>
where
    F: FnOnce(Digest) -> Fut,
    Fut: std::future::Future<Output = Result<Manifest>>,
{
    let manifest = if artifact::is_index(&manifest.media_type, &manifest.bytes) {
        child(artifact::pick_platform(&manifest.bytes, name, "linux", architecture)?).await?
    } else {
        manifest
    };
    let image = match artifact::parse(&manifest.bytes, name) {
        Err(ArtifactError::ContainerImage(_)) => OciImage::Container(container::parse_manifest(&manifest.bytes, name)?),
        parsed => OciImage::Cloud(parsed?),
    };
    Ok((manifest.digest, image))
}

impl Registry {
    /// The image `reference` names (through an index, the entry for
    /// linux/`architecture`), and the reference pinned to its manifest's
    /// digest: a cloud image, or else a container image. `progress` hears
    /// every retry.
    pub async fn image(
        &self,
        reference: &Reference,
        architecture: &str,
        progress: &dyn Progress,
    ) -> Result<(Pinned, OciImage)> {
        let manifest = self.retry(progress, || self.manifest(reference, progress)).await?;
        let named = manifest.digest.clone();
        let child = |digest: Digest| async move {
            let at = reference.at_digest(digest);
            self.retry(progress, || self.manifest(&at, progress)).await
        };
        let (digest, image) = classify(manifest, &reference.to_string(), architecture, child).await?;
        let repository = format!("{}/{}", reference.registry(), reference.repository());
        if let Some(keys) = self.options().policy.keys_for(&repository) {
            // Signed as the tag names it (an index), or as the platform's manifest.
            let digests = if named == digest { vec![digest.clone()] } else { vec![named, digest.clone()] };
            self.verify_signed(reference, &digests, keys, progress).await?;
        }
        Ok((Pinned::new(reference, digest), image))
    }

    /// The cloud image `reference` names, and the reference pinned to its
    /// manifest's digest; a container image is an error.
    pub async fn cloud_image(
        &self,
        reference: &Reference,
        architecture: &str,
        progress: &dyn Progress,
    ) -> Result<(Pinned, CloudImage)> {
        match self.image(reference, architecture, progress).await? {
            (pinned, OciImage::Cloud(image)) => Ok((pinned, image)),
            (_, OciImage::Container(_)) => Err(ArtifactError::ContainerImage(reference.to_string()).into()),
        }
    }

    /// A container image's run settings, from its config blob (bounded and checked).
    pub async fn run_config(
        &self,
        reference: &Reference,
        image: &ContainerImage,
        progress: &dyn Progress,
    ) -> Result<RunConfig> {
        let config = &image.config;
        let small_blob = || self.small_blob(reference, &config.digest, config.size, MAX_CONFIG_BYTES, progress);
        let bytes = self.retry(progress, small_blob).await?;
        Ok(container::parse_config(&bytes)?)
    }

    /// Writes the disk (its parts in order) to `out`; returns its size.
    /// `progress` hears every retry.
    pub async fn stream_disk(
        &self,
        reference: &Reference,
        image: &CloudImage,
        out: &mut (dyn AsyncWrite + Unpin + Send),
        progress: &dyn Progress,
    ) -> Result<u64> {
        self.stream_disk_range(reference, image, 0..image.size(), out, progress).await?;
        Ok(image.size())
    }

    /// Writes bytes `range` of the disk to `out`. Every part the range
    /// touches is read whole and verified: the bytes before and after the
    /// range are hashed and dropped, so that `Ok` always means every byte
    /// written was checked. A range past the disk's end is an error.
    pub async fn stream_disk_range(
        &self,
        reference: &Reference,
        image: &CloudImage,
        range: Range<u64>,
        out: &mut (dyn AsyncWrite + Unpin + Send),
        progress: &dyn Progress,
    ) -> Result<()> {
        if range.start > range.end || range.end > image.size() {
            return Err(Error::Output(format!(
                "bytes {}..{} are outside the disk's {} bytes",
                range.start,
                range.end,
                image.size()
            )));
        }
        let mut part_start = 0u64;
        for part in &image.parts {
            let part_end = part_start + part.size;
            if part_start < range.end && range.start < part_end {
                let window = range.start.saturating_sub(part_start)..(range.end.min(part_end) - part_start);
                let mut windowed = Window { inner: &mut *out, at: 0, window };
                self.stream_blob(reference, &part.digest, part.size, &mut windowed, progress).await?;
            }
            part_start = part_end;
        }
        out.flush().await.map_err(|e| Error::Output(e.to_string()))?;
        Ok(())
    }

    /// Streams one blob to `out`, resuming after a cut, checking its size
    /// and digest.
    async fn stream_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        out: &mut (dyn AsyncWrite + Unpin + Send),
        progress: &dyn Progress,
    ) -> Result<()> {
        let mut sent = Sent { hasher: Hasher::new(digest.algorithm()), written: 0, from: None };
        let mut retries = Retries::new(&self.options().fetch, progress);
        let blob = BlobRef { reference, digest, size };
        loop {
            let before = sent.written;
            match self.stream_attempt(&blob, &mut sent, out, progress).await {
                Ok(()) => break,
                // Asked to resume past the blob's end: it is shorter than described.
                Err(Error::Status { status: 416, .. }) if sent.written > 0 => {
                    return Err(Error::BlobSize { digest: digest.clone(), expected: size, actual: sent.written });
                }
                Err(e) if e.is_transient() => {
                    if sent.written > before {
                        retries.progressed();
                    }
                    if !retries.wait(&e).await {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let wrong = if sent.written != size {
            Error::BlobSize { digest: digest.clone(), expected: size, actual: sent.written }
        } else {
            let actual = sent.hasher.finish();
            if actual == *digest {
                return Ok(());
            }
            Error::BlobDigest { expected: digest.clone(), actual }
        };
        // The bytes are out: the next request for this blob asks another host.
        if let Some(from) = &sent.from {
            self.distrust(reference, from, digest);
        }
        Err(wrong)
    }

    async fn stream_attempt(
        &self,
        blob: &BlobRef<'_>,
        sent: &mut Sent,
        out: &mut (dyn AsyncWrite + Unpin + Send),
        progress: &dyn Progress,
    ) -> Result<()> {
        let BlobRef { reference, digest, size } = *blob;
        let response = self.blob_from(reference, digest, sent.written, progress).await?;
        sent.from = Some(response.url().clone());
        let url = response.url().to_string();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::http(&url, e))?;
            let end = sent.written + chunk.len() as u64;
            if end > size {
                return Err(Error::BlobSize { digest: digest.clone(), expected: size, actual: end });
            }
            sent.hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(|e| Error::Output(e.to_string()))?;
            sent.written = end;
        }
        if sent.written < size {
            let message = format!("the body ended after {} of {size} bytes", sent.written);
            return Err(Error::Http { url, message });
        }
        Ok(())
    }

    /// Pushes `len` bytes of `file` as a cloud image of `format`, in parts
    /// of `part_size` bytes, `jobs` parts at a time; blobs the repository
    /// has are not sent again. A part size of 0, one that makes more than
    /// [`MAX_LAYERS`](artifact::MAX_LAYERS) parts (which no reader would
    /// take), or 0 jobs is refused before anything is read. `progress`
    /// hears every retry.
    pub async fn push_disk(
        &self,
        reference: &Reference,
        file: &File,
        push: &Push,
        progress: &dyn Progress,
    ) -> Result<Pushed> {
        let len = file.metadata().map_err(|e| Error::Output(e.to_string()))?.len();
        push.check(len)?;
        let ranges: Vec<(u64, u64)> = (0..len.div_ceil(push.part_size).max(1))
            .map(|i| (i * push.part_size, push.part_size.min(len - i * push.part_size)))
            .collect();
        let digests = hash_ranges(file, &ranges, push.jobs).await?;
        let uploads = ranges.iter().zip(&digests).map(|(&range, digest)| async move {
            if self.retry(progress, || self.has_blob(reference, digest)).await? {
                return Ok(false);
            }
            self.upload_blob(reference, digest, file, range, progress).await.map(|()| true)
        });
        let results: Vec<Result<bool>> =
            futures_util::stream::iter(uploads).buffer_unordered(push.jobs).collect().await;
        let uploaded = results.into_iter().collect::<Result<Vec<bool>>>()?;
        let config = artifact::empty_config();
        self.retry(progress, || self.upload_missing(reference, &config.digest, b"{}")).await?;
        let parts: Vec<(Digest, u64)> = digests.into_iter().zip(ranges.iter().map(|r| r.1)).collect();
        let manifest = artifact::manifest(push.format, &parts, &push.name, push.annotations.clone());
        let bytes = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
        let digest = self.retry(progress, || self.put_manifest(reference, &bytes, artifact::OCI_MANIFEST)).await?;
        let sent = uploaded.iter().filter(|&&u| u).count();
        Ok(Pushed { digest, parts: uploaded.len(), sent, signature: None })
    }
}

/// A blob to stream: where, which, how long.
#[derive(Clone, Copy)]
struct BlobRef<'a> {
    reference: &'a Reference,
    digest: &'a Digest,
    size: u64,
}

/// What of a blob has been streamed: its bytes so far, hashed, and where
/// the last of them came from.
struct Sent {
    hasher: Hasher,
    written: u64,
    from: Option<reqwest::Url>,
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The manifest's digest.
    pub digest: Digest,
    pub parts: usize,
    /// Parts uploaded (the others the repository had).
    pub sent: usize,
    /// Where its signature was pushed, if it was signed.
    pub signature: Option<Reference>,
}

/// What to push.
#[derive(Debug, Clone)]
pub struct Push {
    pub format: DiskFormat,
    /// Bytes per part (the last may be shorter).
    pub part_size: u64,
    /// Parts hashed and uploaded at once.
    pub jobs: usize,
    /// The name parts are titled after (`<name>.NN.<format>.part`).
    pub name: String,
    /// The manifest's annotations.
    pub annotations: BTreeMap<String, String>,
}

impl Push {
    /// Refuses what cannot push a disk of `len` bytes.
    fn check(&self, len: u64) -> Result<()> {
        let invalid = |what, reason: String| Err(Error::InvalidInput { what, reason });
        if self.part_size == 0 {
            return invalid("part size", "0 bytes (a part holds at least one byte)".into());
        }
        let parts = len.div_ceil(self.part_size);
        if parts > artifact::MAX_LAYERS as u64 {
            return invalid(
                "part size",
                format!(
                    "{} bytes cut a {len}-byte disk into {parts} parts, more than the {} a manifest may have",
                    self.part_size,
                    artifact::MAX_LAYERS
                ),
            );
        }
        if self.jobs == 0 {
            return invalid("job count", "0 (at least one part must be sent at a time)".into());
        }
        Ok(())
    }
}

/// The SHA-256 of each range of `file`, `jobs` at a time.
async fn hash_ranges(file: &File, ranges: &[(u64, u64)], jobs: usize) -> Result<Vec<Digest>> {
    let file = file.try_clone().map_err(|e| Error::Output(e.to_string()))?;
    let ranges = ranges.to_vec();
    tokio::task::spawn_blocking(move || {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let digests = std::sync::Mutex::new((0..ranges.len()).map(|_| None).collect::<Vec<_>>());
        std::thread::scope(|scope| {
            for _ in 0..jobs.clamp(1, ranges.len()) {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(offset, len)) = ranges.get(i) else { return };
                        let reader = PositionedReader { file: &file, pos: offset, end: offset + len };
                        let digest = vmimg_fetch::digest_reader(vmimg_fetch::Algorithm::Sha256, reader);
                        digests.lock().expect("digests")[i] = Some(digest);
                    }
                });
            }
        });
        digests
            .into_inner()
            .expect("digests")
            .into_iter()
            .map(|d| d.expect("every range hashed").map_err(|e| Error::Output(e.to_string())))
            .collect()
    })
    .await
    .expect("hashing task")
}

/// `Read` over a range of a file, with positioned reads.
struct PositionedReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl std::io::Read for PositionedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Passes on to `inner` only the bytes at offsets `window` of what is
/// written through it; the rest is taken and dropped.
struct Window<'a> {
    inner: &'a mut (dyn AsyncWrite + Unpin + Send),
    /// The offset of the next byte written.
    at: u64,
    window: Range<u64>,
}

impl AsyncWrite for Window<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let end = this.at + buf.len() as u64;
        let (from, to) = (this.window.start.max(this.at), this.window.end.min(end));
        if from >= to {
            this.at = end;
            return Poll::Ready(Ok(buf.len()));
        }
        let skipped = (from - this.at) as usize;
        let wanted = &buf[skipped..(to - this.at) as usize];
        let written = std::task::ready!(Pin::new(&mut *this.inner).poll_write(cx, wanted))?;
        // The bytes around the window are taken with it: those after it once all of it is written.
        let taken = if written == wanted.len() { buf.len() } else { skipped + written };
        this.at += taken as u64;
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}
