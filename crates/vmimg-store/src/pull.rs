//! `pull`: a source into the store as a ready raw disk, verified.
//!
//! For a URL, three stages overlap: the download writes the partial file
//! and hashes it; a converter thread reads the same file through a
//! [`GrowingFile`] as it fills and writes the raw disk into a work directory.
//! A qcow2 pull so costs about its slowest stage. A raw source is converted
//! (made sparse) once its download is complete. For a local file, hashing
//! and conversion run side by side. Either way the image is published only
//! after the digest matched; a mismatch deletes the partial and the work.
//! Conversions, fsyncs, renames and removals of partials run on blocking
//! threads (`fsutil::blocking`): a pull never holds up an async thread.

use crate::error::{Error, Result};
use crate::fsutil::blocking;
use crate::growing::{EndOnDrop, GrowingFile, Sequential, Watermark};
use crate::record::{ImageRecord, Pulled};
use crate::source::{Location, Resolved};
use crate::store::Store;
use crate::unpack::unpack_to_disk;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmimg_disk::{Content, ConvertOptions, ConvertStats, DiskImage, Format, PROBE_BYTES, Stream};
use vmimg_fetch::{Algorithm, Digest, Fetched, Progress, digest_reader, remove_partial};

/// What making a disk starts from: the source, and the work directory to
/// make it in.
#[derive(Clone, Copy)]
pub(crate) struct Job<'a> {
    pub(crate) source: &'a Resolved,
    pub(crate) work: &'a Path,
}

/// A disk made in a work directory, not yet published.
pub(crate) struct Made {
    pub(crate) digest: Digest,
    pub(crate) converted: Converted,
    pub(crate) blob: Option<String>,
    /// The blobs of a source in parts.
    pub(crate) blobs: Vec<String>,
}

/// What the source was, and what making its disk did.
pub(crate) struct Converted {
    pub(crate) source_format: Format,
    /// The stream the source came compressed in, if any.
    pub(crate) compression: Option<Stream>,
    pub(crate) stats: ConvertStats,
}

impl Converted {
    pub(crate) fn plain(source_format: Format, stats: ConvertStats) -> Converted {
        Converted { source_format, compression: None, stats }
    }
}

impl Store {
    /// Gets `source` into the store (or finds it there) and returns its disk.
    /// `progress` hears about the download, if there is one.
    pub async fn pull(&self, source: &Resolved, progress: Option<Arc<dyn Progress>>) -> Result<Pulled> {
        let counted = self.metrics().pulls.start(source);
        let progress = counted.progress(progress);
        counted.finish(self.pull_uncounted(source, progress).await)
    }

    async fn pull_uncounted(&self, source: &Resolved, progress: Option<Arc<dyn Progress>>) -> Result<Pulled> {
        if let Some(found) = self.found(&source.key)? {
            return Ok(found);
        }
        let _lease = self.lease().await?;
        let _lock = self.lock(&source.key).await?;
        if let Some(found) = self.found(&source.key)? {
            return Ok(found);
        }
        self.remove_abandoned_work(&source.key)?;
        let work = self.work_dir(&source.key)?;
        let job = Job { source, work: work.path() };
        let made = match &source.location {
            Location::Url(url) => self.make_from_url(job, url, progress).await,
            Location::File(path) => self.make_from_file(job, path.clone()).await,
            Location::Oci(pinned) => self.make_from_oci(job, pinned, progress).await,
        };
        match made {
            Ok(made) => self.publish_made(source, work, made).await,
            Err(error) => {
                discard(work).await;
                Err(error)
            }
        }
    }

    pub(crate) fn found(&self, key: &str) -> Result<Option<Pulled>> {
        let found = self.lookup(key)?.map(|record| Pulled { path: self.image_file(&record), record, cached: true });
        if found.is_some() {
            self.touch(key);
        }
        Ok(found)
    }

    pub(crate) fn convert_options(&self) -> ConvertOptions {
        ConvertOptions { threads: self.threads(), sync: true }
    }

    async fn make_from_url(&self, job: Job<'_>, url: &str, progress: Option<Arc<dyn Progress>>) -> Result<Made> {
        let Job { source, work } = job;
        let algorithm = source.expected.as_ref().map_or(Algorithm::Sha256, Digest::algorithm);
        let fetcher = self.fetcher()?;
        let partial = self.partial_path(&source.key);
        let reader = File::options().create(true).truncate(false).write(true).read(true).open(&partial);
        let reader = reader.map_err(Error::io("create", &partial))?;
        let watermark = Watermark::new(progress);
        let _release_converter = EndOnDrop(watermark.clone());
        let mut converter = {
            let (watermark, work, options) = (watermark.clone(), work.to_owned(), self.convert_options());
            let label = PathBuf::from(url);
            blocking("the conversion", move || {
                convert_while_downloading(GrowingFile::new(reader, watermark), &label, &work, &options)
            })
        };
        let fetch = fetcher.fetch(url, algorithm, &partial, &*watermark);
        tokio::pin!(fetch);
        let (fetched, converted) = tokio::select! {
            fetched = &mut fetch => {
                watermark.end(fetched.is_ok());
                (fetched, converter.await)
            }
            converted = &mut converter => match converted {
                // The first bytes say it is no disk vmimg reads: stop downloading it.
                Err(refused) if is_refusal(&refused) => return Err(drop_partial(&partial, refused).await),
                converted => {
                    let fetched = fetch.await;
                    watermark.end(fetched.is_ok());
                    (fetched, converted)
                }
            },
        };
        let digest = match fetched {
            Ok(Fetched { digest, .. }) => digest,
            Err(failed) => return Err(keep_partial_if_resumable(&partial, failed.into()).await),
        };
        or_drop_partial(&partial, check_digest(source, &digest)).await?;
        let converted = {
            let (partial, label, dir, options) =
                (partial.clone(), PathBuf::from(url), work.to_owned(), self.convert_options());
            blocking("the conversion", move || finish_download(converted, &partial, &label, &dir, &options)).await
        };
        let converted = or_drop_partial(&partial, converted).await?;
        let blob = self.keep_blob(&partial, &digest).await?;
        Ok(Made { digest, converted, blob: Some(blob), blobs: Vec::new() })
    }

    /// Moves a verified partial into `blobs/` and returns its store-relative path.
    pub(crate) async fn keep_blob(&self, partial: &Path, digest: &Digest) -> Result<String> {
        let (root, partial, digest) = (self.root().to_owned(), partial.to_owned(), digest.clone());
        blocking("keeping a blob", move || keep_verified_in(&root, &partial, "blobs", &digest)).await
    }

    /// [`keep_verified_in`] this store. It blocks (renames, fsyncs): an
    /// async caller runs it through `fsutil::blocking`.
    pub(crate) fn keep_verified(&self, partial: &Path, kind: &str, digest: &Digest) -> Result<String> {
        keep_verified_in(self.root(), partial, kind, digest)
    }

    async fn make_from_file(&self, job: Job<'_>, path: PathBuf) -> Result<Made> {
        let Job { source, work } = job;
        let algorithm = source.expected.as_ref().map_or(Algorithm::Sha256, Digest::algorithm);
        let (options, dir) = (self.convert_options(), work.to_owned());
        let (digest, converted) = blocking("the conversion", move || {
            Ok(std::thread::scope(|scope| {
                let hashing = scope.spawn(|| File::open(&path).and_then(|f| digest_reader(algorithm, f)));
                let converted = convert_source_file(&path, &path, &dir, &options);
                (hashing.join().expect("hashing thread").map_err(Error::io("read", &path)), converted)
            }))
        })
        .await?;
        let digest = digest?;
        check_digest(source, &digest)?;
        Ok(Made { digest, converted: converted?, blob: None, blobs: Vec::new() })
    }

    /// The record of a pulled image.
    async fn publish_made(&self, source: &Resolved, work: tempfile::TempDir, made: Made) -> Result<Pulled> {
        let format = made.converted.source_format.into();
        let mut record = ImageRecord::for_work(&source.key, &work, source.info.clone(), Some(made.digest), format)?;
        record.source_compression = made.converted.compression.map(Into::into);
        record.virtual_size = made.converted.stats.virtual_size;
        record.verified = source.expected.is_some();
        record.blob = made.blob;
        record.blobs = made.blobs;
        self.publish_image(work, record).await
    }

    /// Publishes the work directory as image `record.name` (see
    /// [`publish_dir`]) on a blocking thread.
    pub(crate) async fn publish_image(&self, work: tempfile::TempDir, record: ImageRecord) -> Result<Pulled> {
        let target = self.image_dir(&record.name);
        let record = blocking("publishing the image", move || publish_dir(work, &target, &record).map(|()| record));
        Ok(self.published(record.await?))
    }

    /// [`publish_dir`] into this store. It blocks (fsyncs): an async caller
    /// uses [`Store::publish_image`].
    pub(crate) fn publish_work(&self, work: tempfile::TempDir, record: ImageRecord) -> Result<Pulled> {
        publish_dir(work, &self.image_dir(&record.name), &record)?;
        Ok(self.published(record))
    }

    fn published(&self, record: ImageRecord) -> Pulled {
        Pulled { path: self.image_file(&record), record, cached: false }
    }
}

/// Writes the record into the work directory and renames it to `target`
/// (`images/<name>`), flushed: the image appears whole, in one step.
fn publish_dir(work: tempfile::TempDir, target: &Path, record: &ImageRecord) -> Result<()> {
    record.save(&work.path().join("image.json"))?;
    if !record.mutable {
        // A ready image never changes: its file is read-only (instances
        // are the writable copies), so a VM booted on it by mistake
        // cannot change the base under every instance.
        let file = work.path().join(record.file_name());
        let read_only = std::os::unix::fs::PermissionsExt::from_mode(0o444);
        std::fs::set_permissions(&file, read_only).map_err(Error::io("make read-only", &file))?;
    }
    let work = work.keep();
    std::fs::rename(&work, target).map_err(Error::io("cannot rename into", target))?;
    crate::fsutil::sync_dir(target.parent().expect("images/"))
}

/// Moves a verified partial under `root` to `<kind>/<algorithm>/<hex>`
/// (`blobs`, or `layers`), durably, and returns that store-relative path.
fn keep_verified_in(root: &Path, partial: &Path, kind: &str, digest: &Digest) -> Result<String> {
    let relative = by_digest(kind, digest);
    let blob = root.join(&relative);
    let dir = blob.parent().expect("<kind>/<algorithm>");
    std::fs::create_dir_all(dir).map_err(Error::io("cannot create", dir))?;
    std::fs::rename(partial, &blob).map_err(Error::io("cannot rename into", &blob))?;
    crate::fsutil::sync_dir(dir)?;
    remove_partial(partial).map_err(Error::io("cannot remove", partial))?;
    Ok(relative)
}

/// Removes a work directory (it may hold a whole disk) on a blocking thread.
pub(crate) async fn discard(work: tempfile::TempDir) {
    let _ = blocking("removing a work directory", move || {
        drop(work);
        Ok(())
    })
    .await;
}

/// Removes partial downloads (and their sidecars), on a blocking thread.
pub(crate) async fn remove_partials(partials: Vec<PathBuf>) -> Result<()> {
    blocking("removing partial downloads", move || {
        partials.iter().try_for_each(|partial| remove_partial(partial).map_err(Error::io("remove", partial)))
    })
    .await
}

/// Removes the partial of a download that cannot make an image (a
/// mismatch, a refused format), and returns `error`.
async fn drop_partial(partial: &Path, error: Error) -> Error {
    remove_partials(vec![partial.to_owned()]).await.err().unwrap_or(error)
}

/// `result`, after removing the partial if it is an error.
async fn or_drop_partial<T>(partial: &Path, result: Result<T>) -> Result<T> {
    match result {
        Ok(value) => Ok(value),
        Err(error) => Err(drop_partial(partial, error).await),
    }
}

/// After a failed download, keeps its partial only if it holds bytes to
/// resume from; returns `error`.
async fn keep_partial_if_resumable(partial: &Path, error: Error) -> Error {
    match std::fs::metadata(partial) {
        Ok(meta) if meta.len() > 0 => error,
        _ => drop_partial(partial, error).await,
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

/// Makes the disk while the download arrives: a qcow2 image converted, a
/// compressed stream decoded (and what is inside made into the disk). None
/// for a raw source, made sparse once complete (its trailer probed too).
/// Anything else is refused from its first bytes.
fn convert_while_downloading(
    reader: GrowingFile,
    label: &Path,
    work: &Path,
    options: &ConvertOptions,
) -> Result<Option<Converted>> {
    let mut sequential = Sequential::new(&reader);
    let head = vmimg_disk::read_head(&mut sequential, PROBE_BYTES).map_err(Error::io("read", label))?;
    match vmimg_disk::probe(&head, None) {
        Content::Raw => Ok(None),
        Content::Qcow2 => {
            let image = DiskImage::qcow2_from(Box::new(reader), label)?;
            let stats = write_disk(&image, &work.join("disk.raw"), options)?;
            Ok(Some(Converted::plain(Format::Qcow2, stats)))
        }
        Content::Compressed(stream) => {
            let (source_format, stats) = unpack_to_disk(Sequential::new(&reader), stream, label, work, options)?;
            Ok(Some(Converted { source_format, compression: Some(stream), stats }))
        }
        content => Err(vmimg_disk::Error::Unsupported { path: label.to_owned(), content }.into()),
    }
}

/// Makes the disk from a complete source file (`label` names it in errors):
/// probed, then converted, or decoded and what is inside converted.
fn convert_source_file(src: &Path, label: &Path, work: &Path, options: &ConvertOptions) -> Result<Converted> {
    let file = File::open(src).map_err(Error::io("open", src))?;
    if let Content::Compressed(stream) = vmimg_disk::probe_file(&file).map_err(Error::io("read", src))? {
        let (source_format, stats) = unpack_to_disk(file, stream, label, work, options)?;
        return Ok(Converted { source_format, compression: Some(stream), stats });
    }
    let image = DiskImage::from_file(file, label, None)?;
    let stats = write_disk(&image, &work.join("disk.raw"), options)?;
    Ok(Converted::plain(image.format(), stats))
}

/// Completes the disk of a verified download: what the converter made while
/// it arrived, else (a raw source, or a conversion cut short by a restarted
/// download) the disk made from the whole file now; a raw source's file is
/// then made sparse.
fn finish_download(
    streamed: Result<Option<Converted>>,
    partial: &Path,
    label: &Path,
    work: &Path,
    options: &ConvertOptions,
) -> Result<Converted> {
    let converted = match streamed {
        Ok(Some(converted)) => converted,
        _ => convert_source_file(partial, label, work, options)?,
    };
    if converted.source_format == Format::Raw && converted.compression.is_none() {
        keep_sparse(partial, &work.join("disk.raw"))?;
    }
    Ok(converted)
}

/// Whether `error` refuses the source for what it is (so no retry or
/// later look can help).
fn is_refusal(error: &Error) -> bool {
    use vmimg_disk::Error::{HeaderInDisk, HeaderInRaw, Unsupported};
    matches!(error, Error::Disk(Unsupported { .. } | HeaderInRaw { .. } | HeaderInDisk { .. }))
}

/// Punches holes in a raw source's downloaded file where its disk has them:
/// the blob keeps its bytes (and digest) and stops costing its zeros.
fn keep_sparse(partial: &Path, disk: &Path) -> Result<()> {
    let target = File::options().write(true).open(partial).map_err(Error::io("open", partial))?;
    let model = File::open(disk).map_err(Error::io("open", disk))?;
    vmimg_disk::punch_holes_like(&target, &model).map_err(Error::io("punch holes in", partial))?;
    target.sync_all().map_err(Error::io("flush", partial))
}

pub(crate) fn write_disk(image: &DiskImage, disk: &Path, options: &ConvertOptions) -> Result<ConvertStats> {
    let out = File::create(disk).map_err(Error::io("cannot create", disk))?;
    let stats = vmimg_disk::convert_to_raw(image, &out, options)?;
    out.sync_all().map_err(Error::io("cannot flush", disk))?;
    Ok(stats)
}
