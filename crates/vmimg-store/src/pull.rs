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

use crate::content::remove_partials;
use crate::convert::{Job, Made, convert_source_file, convert_while_downloading, finish_download, is_refusal};
use crate::error::{Error, Kept, Result};
use crate::fsutil::blocking;
use crate::growing::{EndOnDrop, GrowingFile, Watermark};
use crate::kind::ErrorKind;
use crate::publish::discard;
use crate::record::{ImageRecord, Pulled, SourceInfo};
use crate::source::{Location, Resolved};
use crate::store::Store;
use crate::usage::allocated;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmimg_disk::ConvertOptions;
use vmimg_fetch::{Algorithm, Digest, Fetched, Progress, digest_reader};

/// Partial downloads a failed command may leave in the store's `tmp/`.
pub(crate) struct Partials<'a> {
    /// The command that resumes them.
    pub command: &'static str,
    /// Their names, as a shell pattern, when there are several.
    pub glob: String,
    /// Whether a name in `tmp/` is one of them.
    pub matches: &'a dyn Fn(&str) -> bool,
}

impl Store {
    /// Gets `source` into the store (or finds it there) and returns its disk.
    /// `progress` hears about the download, if there is one.
    pub async fn pull(&self, source: &Resolved, progress: Option<Arc<dyn Progress>>) -> Result<Pulled> {
        let counted = self.metrics().pulls.start(source_kind(source));
        let progress = counted.progress(progress);
        let mut pulled = counted.finish(self.pull_uncounted(source, progress).await)?;
        if !pulled.cached {
            pulled.replaced = self.retire_older_versions(&pulled.record).await?;
        }
        Ok(pulled)
    }

    async fn pull_uncounted(&self, source: &Resolved, progress: Option<Arc<dyn Progress>>) -> Result<Pulled> {
        if let Some(found) = self.found(&source.key)? {
            tracing::info!(source = %source.display_name(), image = %source.key, "in the store already");
            return Ok(found);
        }
        let _lease = self.lease().await?;
        tracing::debug!(image = %source.key, "waiting for the image's lock");
        let _lock = self.lock(&source.key).await?;
        if let Some(found) = self.found(&source.key)? {
            tracing::info!(source = %source.display_name(), image = %source.key, "made by another pull meanwhile");
            return Ok(found);
        }
        tracing::info!(source = %source.display_name(), image = %source.key, verified = source.expected.is_some(), "pulling");
        self.remove_abandoned_work(&source.key)?;
        let work = self.work_dir(&source.key)?;
        let job = Job { source, work: work.path() };
        let made = match &source.location {
            Location::Url(url) => self.make_from_url(job, url, progress).await,
            Location::File(path) => self.make_from_file(job, path.clone()).await,
            Location::Oci(pinned) => self.make_from_oci(job, pinned, progress).await,
        };
        match made {
            Ok(made) => {
                tracing::info!(image = %source.key, "made; publishing");
                self.publish_made(source, work, made).await
            }
            Err(error) => {
                tracing::info!(image = %source.key, %error, "failed; its work is discarded");
                discard(work).await;
                Err(self.with_partials_kept(&source.key, error))
            }
        }
    }

    /// `error`, and, when it is a full disk (or quota), what the partial
    /// downloads of `key` it leaves keep, and how to resume or drop them.
    fn with_partials_kept(&self, key: &str, error: Error) -> Error {
        let prefix = format!("{key}.part");
        let partials = Partials { command: "pull", glob: format!("{prefix}*"), matches: &|n| n.starts_with(&prefix) };
        self.with_kept(&partials, error)
    }

    /// `error`, and, when it is a full disk (or quota), what the partial
    /// downloads `partials` names keep in `tmp/`, and how to resume or drop
    /// them.
    pub(crate) fn with_kept(&self, partials: &Partials<'_>, error: Error) -> Error {
        if error.kind() != ErrorKind::OutOfSpace {
            return error;
        }
        let is_partial = |name: &str| (partials.matches)(name) && !name.ends_with(".meta");
        let entries = std::fs::read_dir(self.tmp()).into_iter().flatten().flatten();
        let kept: Vec<PathBuf> =
            entries.filter(|e| is_partial(&e.file_name().to_string_lossy())).map(|e| e.path()).collect();
        let bytes = kept.iter().map(|path| allocated(path)).sum();
        let at = match &kept[..] {
            [one] => one.clone(),
            _ => self.tmp().join(&partials.glob),
        };
        match bytes {
            0 => error,
            _ => Error::PartialsKept {
                source: Box::new(error),
                kept: Kept { at, files: kept.len(), bytes, command: partials.command },
            },
        }
    }

    pub(crate) fn found(&self, key: &str) -> Result<Option<Pulled>> {
        let found = self.lookup(key)?.map(|record| Pulled {
            path: self.image_file(&record),
            record,
            cached: true,
            replaced: Vec::new(),
            names: Vec::new(),
        });
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
        let (digest, validators) = match fetched {
            Ok(Fetched { digest, validators, .. }) => (digest, validators),
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
        Ok(Made { digest, converted, blob: Some(blob), blobs: Vec::new(), validators })
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
        Ok(Made { digest, converted: converted?, blob: None, blobs: Vec::new(), validators: Default::default() })
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
        if let SourceInfo::Url { validators, .. } = &mut record.source {
            *validators = made.validators;
        }
        self.publish_image(work, record).await
    }
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

/// `alias`, `url`, `file` or `oci`: what kind of source a pull asked for.
/// How metrics label a source.
fn source_kind(source: &Resolved) -> &'static str {
    match (&source.info, &source.location) {
        (SourceInfo::Alias { .. }, _) => "alias",
        (_, Location::Url(_)) => "url",
        (_, Location::File(_)) => "file",
        (_, Location::Oci(_)) => "oci",
    }
}
