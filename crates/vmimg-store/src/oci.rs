//! Cloud images from OCI registries into the store, and store images out
//! to them.
//!
//! A pull asks the registry for the manifest (a tag may have moved; a
//! digest pins it), and keys the image by that digest and the architecture,
//! so a moved tag is a miss and a second pull of the same content a hit.
//! The disk's parts download side by side (`PART_JOBS` at a time), each
//! into its own partial file under `tmp/`, resumed after a cut, checked
//! for its size and digest; a qcow2 disk is converted while the parts
//! arrive: the converter reads their concatenation, each read waiting for
//! the part it falls in. Each part is then kept as a blob, and the image
//! published as a pull publishes any other. Raw parts are joined into the
//! disk once all are verified. Conversions, joins, fsyncs and removals run
//! on blocking threads.

use crate::catalog::Arch;
use crate::content::{check_blob, remove_partials};
use crate::convert::{Converted, Job, Made, write_disk};
use crate::error::{Error, Result};
use crate::fsutil::blocking;
use crate::growing::{EndOnDrop, GrowingFile, Watermark};
use crate::publish::discard;
use crate::record::{ImageRecord, SourceInfo};
use crate::source::{Location, OciOrigin, Resolved, Source};
use crate::store::Store;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmimg_disk::{ConvertStats, DiskImage, Format};
use vmimg_fetch::{NoProgress, Progress};
use vmimg_oci::artifact::{CloudImage, DiskFormat};
use vmimg_oci::container::ContainerImage;
use vmimg_oci::sign::SignKey;
use vmimg_oci::{ImageSource, Layout, OciImage, Push, Pushed, Reference};
use vmimg_qcow2::ReadAt;

/// What an OCI reference names, resolved.
#[derive(Debug, Clone)]
pub enum OciSource {
    Cloud(Resolved),
    /// A container image, pinned to its manifest's digest: a disk is built from it.
    Container {
        origin: OciOrigin,
        image: ContainerImage,
    },
}

/// Parts downloaded at once.
const PART_JOBS: usize = 3;

impl Store {
    /// What an OCI `source` (a registry reference or a local layout) names
    /// now (asking the registry what its tag names, reading the layout's
    /// index; through an index, its entry for `arch`): a cloud image,
    /// resolved to the source of a pull keyed by its manifest's digest and
    /// the architecture; or a container image, to build. `progress` hears
    /// the registry's retries.
    pub async fn resolve_oci_source(&self, source: &Source, arch: Arch, progress: &dyn Progress) -> Result<OciSource> {
        let (origin, image) = match source {
            Source::Registry(reference) => {
                let (pinned, image) = self.registry()?.image(reference, arch.name(), progress).await?;
                (OciOrigin::Registry(pinned), image)
            }
            Source::Layout(reference) => {
                let layout = Layout::open(reference).await?;
                let (digest, image) = layout.image(reference.tag(), arch.name()).await?;
                (OciOrigin::Layout { layout, reference: reference.clone(), digest }, image)
            }
            _ => return Err(Error::Invalid(format!("{source} is not an OCI image"))),
        };
        if let OciImage::Container(image) = image {
            return Ok(OciSource::Container { origin, image });
        }
        let digest = origin.digest().clone();
        let key = format!("oci-{}_{arch}", &digest.hex()[..16]);
        let (info, location) = (origin.info(), Location::Oci(origin));
        Ok(OciSource::Cloud(Resolved { key, info, location, expected: Some(digest) }))
    }

    /// Downloads the parts of `image` and converts them into a work directory.
    pub(crate) async fn make_from_oci(
        &self,
        job: Job<'_>,
        origin: &OciOrigin,
        progress: Option<Arc<dyn Progress>>,
    ) -> Result<Made> {
        let Job { source, work } = job;
        let images = origin.image_source(self)?;
        let image = &cloud_image(&images, origin, self.arch(), progress.as_deref().unwrap_or(&NoProgress)).await?;
        let disk = work.join("disk.raw");
        let partials: Vec<_> =
            (0..image.parts.len()).map(|i| self.tmp().join(format!("{}.part{i}", source.key))).collect();
        let watermarks: Vec<_> = image.parts.iter().map(|_| Watermark::new(None)).collect();
        let _release = watermarks.iter().map(|w| EndOnDrop(w.clone())).collect::<Vec<_>>();
        let progress = Arc::new(PartsProgress::new(progress, image));
        let qcow2 = image.format == DiskFormat::Qcow2;
        let converter = if qcow2 { Some(self.convert_parts(&partials, &watermarks, image, &disk)?) } else { None };
        let fetched = fetch_parts(&images, image, &partials, &watermarks, &progress).await;
        let mut converted = match converter {
            Some(task) => Some(task.await),
            None => None,
        };
        fetched?;
        if qcow2 && watermarks.iter().any(|w| w.restarted()) {
            // A part was fetched again from its first byte (a mirror that
            // failed or served other bytes, then the next host): what the
            // converter read may not be what was verified. Convert again
            // from the verified parts.
            converted = Some(self.convert_parts(&partials, &watermarks, image, &disk)?.await);
        }
        let (blobs, stats) = self.finish_parts(image, origin, &partials, converted, disk).await?;
        let source_format = if image.format == DiskFormat::Qcow2 { Format::Qcow2 } else { Format::Raw };
        let digest = source.expected.clone().expect("an OCI source has its manifest digest");
        Ok(Made {
            digest,
            converted: Converted::plain(source_format, stats),
            blob: None,
            blobs,
            validators: Default::default(),
        })
    }

    /// Converts the qcow2 disk the parts make into `disk` as their bytes
    /// arrive (or from the finished files, once every watermark ended).
    fn convert_parts(
        &self,
        partials: &[PathBuf],
        watermarks: &[Arc<Watermark>],
        image: &CloudImage,
        disk: &Path,
    ) -> Result<impl std::future::Future<Output = Result<ConvertStats>> + Unpin + use<>> {
        let reader = Concat::open(partials, watermarks, image)?;
        let (disk, options) = (disk.to_owned(), self.convert_options());
        Ok(blocking("the conversion", move || {
            let image = DiskImage::qcow2_from(Box::new(reader), Path::new("the download"))?;
            write_disk(&image, &disk, &options)
        }))
    }

    /// After every part was fetched and verified: refuses parts that make
    /// no disk (keeping none of them), keeps the parts as blobs and, for raw
    /// parts, joins them into `disk`. Returns the blobs and the disk's figures.
    async fn finish_parts(
        &self,
        image: &CloudImage,
        origin: &OciOrigin,
        partials: &[PathBuf],
        converted: Option<Result<ConvertStats>>,
        disk: PathBuf,
    ) -> Result<(Vec<String>, ConvertStats)> {
        let converted = match converted {
            Some(converted) => converted.map(Some),
            None => check_raw_parts(partials, image, origin).await.map(|()| None),
        };
        if let Err(refused) = converted {
            // Verified parts that do not make a disk (a hostile qcow2): keep none.
            let _ = remove_partials(partials.to_vec()).await;
            return Err(refused);
        }
        let mut blobs = Vec::with_capacity(partials.len());
        for (partial, part) in partials.iter().zip(&image.parts) {
            blobs.push(self.keep_blob(partial, &part.digest).await?);
        }
        let stats = match converted? {
            Some(stats) => stats,
            None => {
                let parts: Vec<_> = image.parts.iter().map(|p| (self.blob_path(&p.digest), p.size)).collect();
                blocking("joining the disk's parts", move || join_raw_parts(&parts, &disk)).await?
            }
        };
        Ok((blobs, stats))
    }

    /// Pushes image `key` to `reference` as a cloud image, its parts titled
    /// after the key and its manifest annotated with the disk format, the
    /// image's creation time and, for a catalog image, its distribution and
    /// version. For qcow2 the disk is first written as a zstd-compressed
    /// qcow2 into a work directory under `tmp/` (removed after, or by `gc`
    /// if the push is killed), held under a lock of its own so the image
    /// stays usable meanwhile. `progress` hears the registry's retries.
    pub async fn push(
        &self,
        key: &str,
        reference: &Reference,
        options: &PushOptions,
        progress: &dyn Progress,
    ) -> Result<Pushed> {
        if options.part_size == 0 || options.jobs == 0 {
            return Err(Error::Invalid("a push needs parts of at least one byte and at least one job".into()));
        }
        let record = self.lookup(key)?.ok_or_else(|| Error::NotFound { what: "image", name: key.to_owned() })?;
        let sign_key =
            options.sign_key.as_deref().map(SignKey::from_file).transpose().map_err(vmimg_oci::Error::from)?;
        let mut pushed = self.push_disk(key, &record, reference, options, progress).await?;
        if let Some(sign_key) = sign_key {
            let signature = self.registry()?.sign(reference, &pushed.digest, &sign_key, progress).await?;
            pushed.signature = Some(signature);
        }
        Ok(pushed)
    }

    /// Pushes image `key` (whose record is `record`) as `options` say.
    async fn push_disk(
        &self,
        key: &str,
        record: &ImageRecord,
        reference: &Reference,
        options: &PushOptions,
        progress: &dyn Progress,
    ) -> Result<Pushed> {
        let push = &Push {
            format: options.format,
            part_size: options.part_size,
            jobs: options.jobs,
            name: key.to_owned(),
            annotations: self.annotations(record, options.format),
        };
        let disk_path = self.raw_disk(record)?;
        if push.format == DiskFormat::Raw {
            let disk = File::open(&disk_path).map_err(Error::io("open", &disk_path))?;
            return Ok(self.registry()?.push_disk(reference, &disk, push, progress).await?);
        }
        let push_key = format!("push-{key}");
        let _lock = self.lock(&push_key).await?;
        let work = self.work_dir(&push_key)?;
        let pushed = self.push_as_qcow2(disk_path, work.path(), reference, push, progress).await;
        discard(work).await;
        pushed
    }

    /// Writes the raw disk at `disk_path` as a zstd-compressed qcow2 into
    /// `work`, and pushes that.
    async fn push_as_qcow2(
        &self,
        disk_path: PathBuf,
        work: &Path,
        reference: &Reference,
        push: &Push,
        progress: &dyn Progress,
    ) -> Result<Pushed> {
        let qcow2 = work.join("disk.qcow2");
        let options = vmimg_disk::Qcow2ConvertOptions {
            compress: vmimg_disk::CompressOptions { threads: self.threads(), ..Default::default() },
            sync: false,
        };
        let target = qcow2.clone();
        blocking("the qcow2 conversion", move || {
            let image = DiskImage::open(&disk_path, Some(Format::Raw))?;
            Ok(vmimg_disk::convert_to_qcow2(&image, &target, &options)?)
        })
        .await?;
        let file = File::open(&qcow2).map_err(Error::io("open", &qcow2))?;
        Ok(self.registry()?.push_disk(reference, &file, push, progress).await?)
    }

    /// The manifest annotations of a pushed image, as cocoonstack's tools read them.
    fn annotations(&self, record: &ImageRecord, format: DiskFormat) -> BTreeMap<String, String> {
        let mut annotations = BTreeMap::from([
            ("cocoonstack.disk.format".to_owned(), format.name().to_owned()),
            ("org.opencontainers.image.created".to_owned(), record.created_at.to_string()),
        ]);
        if let SourceInfo::Alias { alias, snapshot, .. } = &record.source {
            let entry = self.catalog().get(alias);
            annotations.insert("cocoonstack.os.name".into(), entry.map_or(alias.clone(), |e| e.distro.clone()));
            annotations.insert("cocoonstack.os.version".into(), entry.map_or(snapshot.clone(), |e| e.version.clone()));
        }
        annotations
    }
}

/// How to push an image.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// What the parts hold: qcow2 (zstd-compressed clusters) or the raw disk.
    pub format: DiskFormat,
    /// Bytes per part (the last may be shorter).
    pub part_size: u64,
    /// Parts hashed and uploaded at once.
    pub jobs: usize,
    /// Sign what is pushed with this private key (cosign's key-based
    /// format; see `vmimg_oci::sign`).
    pub sign_key: Option<PathBuf>,
}

/// Fetches every part, `PART_JOBS` at a time; the first failure fails all.
async fn fetch_parts(
    images: &ImageSource<'_>,
    image: &CloudImage,
    partials: &[std::path::PathBuf],
    watermarks: &[Arc<Watermark>],
    progress: &Arc<PartsProgress>,
) -> Result<()> {
    use futures_util::StreamExt;
    let mut jobs = Vec::with_capacity(image.parts.len());
    for (i, part) in image.parts.iter().enumerate() {
        let (partial, watermark) = (&partials[i], watermarks[i].clone());
        let tee = Tee { watermark: watermark.clone(), progress: progress.clone(), index: i };
        jobs.push(async move {
            let fetched = images.fetch_blob(&part.digest, part.size, partial, &tee).await;
            let checked = fetched.map_err(Error::from).and_then(|f| check_blob(part, &f.digest, f.size));
            watermark.end(checked.is_ok());
            if checked.is_err() {
                let _ = remove_partials(vec![partial.clone()]).await;
            }
            checked
        });
    }
    let results: Vec<Result<()>> = futures_util::stream::iter(jobs).buffer_unordered(PART_JOBS).collect().await;
    let outcome: Result<()> = results.into_iter().collect();
    if let Err(Error::PartMismatch { .. }) = outcome {
        // The source serves bad bytes: keep none of this image's parts.
        let _ = remove_partials(partials.to_vec()).await;
    }
    outcome
}

/// The cloud image `origin` names (still the one its digest says).
async fn cloud_image(
    images: &ImageSource<'_>,
    origin: &OciOrigin,
    arch: Arch,
    progress: &dyn Progress,
) -> Result<CloudImage> {
    match images.image(arch.name(), progress).await? {
        (digest, _) if digest != *origin.digest() => Err(Error::Conflict(format!(
            "{origin}: the image changed (its manifest is now {digest}) while it was being pulled; pull it again"
        ))),
        (_, OciImage::Cloud(image)) => Ok(image),
        (_, OciImage::Container(_)) => Err(Error::Invalid(format!("{origin} is a container image, not a disk"))),
    }
}

/// A raw disk from raw parts (each a file and its size): their bytes in
/// order, zero blocks left as holes.
fn join_raw_parts(parts: &[(PathBuf, u64)], disk: &Path) -> Result<ConvertStats> {
    let size = parts.iter().map(|(_, len)| len).sum();
    let out = File::create(disk).map_err(Error::io("create", disk))?;
    out.set_len(size).map_err(Error::io("size", disk))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    let mut written = 0;
    for (path, len) in parts {
        let file = File::open(path).map_err(Error::io("open", path))?;
        let mut done = 0;
        while done < *len {
            let n = (len - done).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], done).map_err(Error::io("read", path))?;
            written += vmimg_disk::write_skipping_zeros(&out, &buf[..n], offset).map_err(Error::io("write", disk))?;
            (done, offset) = (done + n as u64, offset + n as u64);
        }
    }
    out.sync_all().map_err(Error::io("flush", disk))?;
    Ok(ConvertStats { virtual_size: size, bytes_written: written })
}

/// [`check_raw_head`] on the first of the raw parts, on a blocking thread.
async fn check_raw_parts(partials: &[PathBuf], image: &CloudImage, origin: &OciOrigin) -> Result<()> {
    let Some(first) = partials.first().cloned() else { return Ok(()) };
    let label = PathBuf::from(format!("{origin} (its raw disk layers)"));
    let (first_len, size) = (image.parts[0].size, image.size());
    blocking("the check of the disk", move || check_raw_head(&first, first_len, size, label)).await
}

/// Refuses raw parts that do not make a plain raw disk of `size` bytes: the
/// disk they start (at the head of `first`, a part of `first_len` bytes)
/// is probed (an image header would be misread by a probing VMM; a
/// compressed stream or a page is no disk). The layers' media type says
/// raw, as `-f raw` does: text and a length that is not a whole number of
/// sectors, which probing alone would refuse, are taken as declared.
fn check_raw_head(first: &Path, first_len: u64, size: u64, label: PathBuf) -> Result<()> {
    use vmimg_disk::NotADisk::{PartialSector, Text};
    let file = File::open(first).map_err(Error::io("open", first))?;
    let mut head = vec![0u8; (vmimg_disk::PROBE_BYTES as u64).min(first_len) as usize];
    file.read_exact_at(&mut head, 0).map_err(Error::io("read", first))?;
    match vmimg_disk::probe(&head, Some(size)) {
        vmimg_disk::Content::Raw | vmimg_disk::Content::NotADisk(Text | PartialSector(_)) => Ok(()),
        vmimg_disk::Content::Qcow2 | vmimg_disk::Content::Foreign(_) => {
            Ok(vmimg_disk::ensure_plain_raw(&head, &label)?)
        }
        content => Err(vmimg_disk::Error::Unsupported { path: label, content }.into()),
    }
}

/// The parts of a disk read as one, each read waiting for its part's bytes.
struct Concat {
    parts: Vec<(u64, u64, GrowingFile)>,
    len: u64,
}

impl Concat {
    fn open(partials: &[std::path::PathBuf], watermarks: &[Arc<Watermark>], image: &CloudImage) -> Result<Concat> {
        let mut parts = Vec::new();
        let mut start = 0;
        for ((path, watermark), part) in partials.iter().zip(watermarks).zip(&image.parts) {
            let file = File::options().create(true).truncate(false).write(true).read(true).open(path);
            let file = file.map_err(Error::io("create", path))?;
            parts.push((start, part.size, GrowingFile::new(file, watermark.clone())));
            start += part.size;
        }
        Ok(Concat { parts, len: start })
    }
}

impl ReadAt for Concat {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let index = self.parts.partition_point(|(start, len, _)| start + len <= offset);
        let Some((start, len, part)) = self.parts.get(index) else { return Ok(0) };
        let within = offset - start;
        let n = (len - within).min(buf.len() as u64) as usize;
        part.read_at(&mut buf[..n], within)
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(self.len)
    }
}

/// Tells a part's watermark and the pull's progress (as one download of the
/// whole disk) what a part's fetch does.
struct Tee {
    watermark: Arc<Watermark>,
    progress: Arc<PartsProgress>,
    index: usize,
}

impl Progress for Tee {
    fn started(&self, offset: u64, total: Option<u64>) {
        self.watermark.started(offset, total);
        self.progress.advanced_part(self.index, offset);
    }

    fn advanced(&self, written: u64) {
        self.watermark.advanced(written);
        self.progress.advanced_part(self.index, written);
    }

    fn retrying(&self, error: &(dyn std::error::Error + 'static), delay: std::time::Duration) {
        if let Some(next) = &self.progress.next {
            next.retrying(error, delay);
        }
    }

    fn served_by(&self, host: &str) {
        if let Some(next) = &self.progress.next {
            next.served_by(host);
        }
    }
}

/// The whole pull's progress: bytes of every part added up.
struct PartsProgress {
    next: Option<Arc<dyn Progress>>,
    done: std::sync::Mutex<Vec<u64>>,
}

impl PartsProgress {
    fn new(next: Option<Arc<dyn Progress>>, image: &CloudImage) -> PartsProgress {
        if let Some(next) = &next {
            next.started(0, Some(image.size()));
        }
        PartsProgress { next, done: std::sync::Mutex::new(vec![0; image.parts.len()]) }
    }

    fn advanced_part(&self, index: usize, written: u64) {
        let Some(next) = &self.next else { return };
        let total = {
            let mut done = self.done.lock().expect("progress");
            done[index] = written;
            done.iter().sum()
        };
        next.advanced(total);
    }
}
