//! Container images into the store as disks a micro-VM boots: an ext4 or
//! erofs root filesystem, or a cpio initramfs.
//!
//! The life of a container disk, under its key's lock (`oci-<manifest
//! digest>_<arch>-<format>`, so a moved tag is a miss):
//! 1. the config blob is read (bounded, digest-checked) for the run settings;
//! 2. the layers download side by side into the layer cache
//!    (`layers/<algorithm>/<hex>`, shared by every image that has them;
//!    each under its own lock, checked for size and digest before it is
//!    renamed in, so the cache holds only verified blobs) while, in order,
//!    each is added to the tree as soon as it and the ones below it are in:
//!    merged in memory ([`Assembly`]; the same disk for any user, no tree
//!    on the host) for cpio, erofs, and ext4 where this host's mke2fs reads
//!    a tar (e2fsprogs 1.47.1 and later), each layer's entries read (and
//!    so decompressed) while it downloads, on a thread of its own
//!    ([`EarlyEntries`]); else applied to a root directory in the work
//!    directory (owners and devices only as root);
//! 3. the tree becomes the disk (`vmimg-rootfs`: a merged tree is streamed
//!    as one tar into `mke2fs -d -`, or written as cpio or erofs by vmimg,
//!    its file contents read again from the cached layers), is checked
//!    (`e2fsck`, `fsck.erofs`), and the directory is removed;
//! 4. the image is published as any other: record written, work directory
//!    renamed to `images/<key>`.
//!
//! A crash at any step leaves the layer cache with whole blobs only and no
//! image; the next build removes the abandoned work and goes again.
//!
//! A build's future may be dropped at any await (a cancelled build, whose
//! task is aborted), while a blocking job of it (removing abandoned work,
//! applying a layer, making the filesystem) cannot be stopped midway. So
//! the work directory, the key's lock, the store's lease and the build's
//! observer are held together in one shared [`Work`], and the future and
//! every blocking job hold a share: the directory is removed, and then the
//! lock released, only when the last of them ends (on a blocking thread:
//! the tree may be big). No other build of the key starts meanwhile, and
//! no job sees its tree vanish. A layer download dropped midway removes its
//! partial file; layers already verified into the cache stay (gc collects
//! those no image names). The image is published in one step with no await
//! inside, so a dropped build either published its image whole or not at all.

use crate::error::{Error, Result};
use crate::fsutil::blocking;
use crate::growing::{EndOnDrop, GrowingFile, Sequential, Watermark};
use crate::locks::{KeyLock, Lease};
use crate::pull::Partials;
use crate::record::{ContainerInfo, ImageRecord, Pulled, RootfsFormat, SourceFormat};
use crate::source::OciOrigin;
use crate::store::Store;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmimg_fetch::{Digest, Progress, remove_partial};
use vmimg_oci::container::{Compression, ContainerImage, Layer};
use vmimg_rootfs::apply::{self, ApplyOptions, LayerSummary, Rootfs};
use vmimg_rootfs::merge::{Entries, MergeOptions, Merged};

/// Layers downloaded at once.
const LAYER_JOBS: usize = 3;
/// Layers of a merged tree read ahead of the merge at most.
const READ_AHEAD: usize = 4;

/// A layer's entries read ahead, and the permit that bounds how many are.
struct ReadAhead {
    entries: Entries,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Hears how a build goes.
///
/// [`Store::build_container`] holds its observer until every part of the
/// build has ended, blocking jobs that outlive a dropped build future
/// included: the observer's drop tells its owner that nothing of the build
/// runs any more (its work directory is gone and its key's lock released).
pub trait BuildObserver: Send + Sync {
    /// Every layer is in the cache; the disk is being made.
    fn converting(&self) {}
    /// `bytes` more layer bytes arrived from the registry.
    fn pulled(&self, _bytes: u64) {}
    /// A request to the registry (a manifest, the config, a layer) failed
    /// with `error` and is tried again after `delay`.
    fn retrying(&self, _error: &(dyn std::error::Error + 'static), _delay: std::time::Duration) {}
    /// A registry host (a mirror, or the registry's own server) served a
    /// manifest or a blob.
    fn served_by(&self, _host: &str) {}
}

/// A build's observer as the [`Progress`] of its requests, which hears
/// their retries (bytes are counted apart: [`BuildObserver::pulled`]).
pub(crate) struct BuildProgress(pub(crate) Arc<dyn BuildObserver>);

impl Progress for BuildProgress {
    fn retrying(&self, error: &(dyn std::error::Error + 'static), delay: std::time::Duration) {
        self.0.retrying(error, delay);
    }

    fn served_by(&self, host: &str) {
        self.0.served_by(host);
    }
}

impl Store {
    /// The cache key of the container image whose manifest has `digest`, built as `format`.
    pub fn container_key(&self, digest: &Digest, format: RootfsFormat) -> String {
        format!("oci-{}_{}-{}", &digest.hex()[..16], self.arch(), format.name())
    }

    /// Builds the disk of container image `image` (`origin` says where it is), or
    /// finds it in the store. `observer` is held until every part of the
    /// build has ended (see [`BuildObserver`]).
    pub async fn build_container(
        &self,
        origin: &OciOrigin,
        image: &ContainerImage,
        format: RootfsFormat,
        observer: Arc<dyn BuildObserver>,
    ) -> Result<Pulled> {
        let key = self.container_key(origin.digest(), format);
        if let Some(found) = self.found(&key)? {
            return Ok(found);
        }
        let lease = self.lease().await?;
        let lock = self.lock(&key).await?;
        if let Some(found) = self.found(&key)? {
            return Ok(found);
        }
        let run = origin.image_source(self)?.run_config(image, &BuildProgress(observer.clone())).await?;
        let work = {
            let (store, key, observer) = (self.clone(), key.clone(), observer.clone());
            let held = Held { dir: None, _lock: lock, _lease: lease, _observer: observer };
            blocking("the build", move || Work::start(&store, &key, held)).await?
        };
        let (layers, warnings, assembly) = self
            .fetch_and_apply(origin, image, &work, format, observer.clone())
            .await
            .map_err(|error| self.with_partial_layers_kept(image, error))?;
        observer.converting();
        let (digest, info) = (origin.digest().clone(), origin.info());
        let mut record = {
            let (work, blobs) = (work.clone(), self.layer_blobs(image, &layers));
            blocking("the build", move || {
                let out = work.dir().join(format.file_name());
                assembly.make_disk(&work.rootfs(), &blobs, &out, format)?;
                ImageRecord::for_file(&key, &out, info, Some(digest), SourceFormat::Container)
            })
            .await?
        };
        record.verified = true;
        record.format = format.image_format();
        let systemd = run.wants_systemd();
        record.container = Some(ContainerInfo { format, run, systemd, layers, warnings });
        let mut work = Arc::into_inner(work).expect("every blocking job of the build has ended");
        let held = work.held.take().expect("held until dropped");
        self.publish_work(held.dir.expect("a work directory"), record)
    }

    /// `error`, and, when it is a full disk, what the partial layers of
    /// `image` keep and how to resume or drop them.
    fn with_partial_layers_kept(&self, image: &ContainerImage, error: Error) -> Error {
        let names: Vec<String> =
            image.layers.iter().map(|layer| partial_layer_name(&layer.descriptor.digest)).collect();
        let matches = |name: &str| names.iter().any(|partial| partial == name);
        let partials = Partials { command: "build", glob: "layer-*.part".into(), matches: &matches };
        self.with_kept(&partials, error)
    }

    /// The cached blobs of `image`'s layers (at `relative` paths), and how
    /// each is compressed.
    fn layer_blobs(&self, image: &ContainerImage, relative: &[String]) -> Vec<(PathBuf, Compression)> {
        relative.iter().zip(&image.layers).map(|(path, layer)| (self.root().join(path), layer.compression)).collect()
    }

    /// Gets every layer into the cache, `LAYER_JOBS` at a time, and applies
    /// them in order as they arrive (see [`Assembly`]; a merged tree's are
    /// read ahead, `READ_AHEAD` at most); returns their
    /// store-relative paths, what the tree could not keep of them, and the
    /// tree.
    async fn fetch_and_apply(
        &self,
        origin: &OciOrigin,
        image: &ContainerImage,
        work: &Arc<Work>,
        format: RootfsFormat,
        observer: Arc<dyn BuildObserver>,
    ) -> Result<(Vec<String>, Vec<String>, Assembly)> {
        use futures_util::StreamExt;
        let merges = blocking("the build", move || Assembly::merges(format)).await?;
        let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
        // A merged tree's layers are read ahead, READ_AHEAD at most at once
        // (each holds a permit until merged; the semaphore is fair, so the
        // permits go in the layers' order).
        let read_ahead_permits = merges.then(|| Arc::new(tokio::sync::Semaphore::new(READ_AHEAD)));
        let fetching = async move {
            let fetches: Vec<_> = image
                .layers
                .iter()
                .map(|layer| self.arrived_layer(origin, layer, read_ahead_permits.clone(), observer.clone()))
                .collect();
            let mut in_order = futures_util::stream::iter(fetches).buffered(LAYER_JOBS);
            while let Some(arrival) = in_order.next().await {
                let failed = arrival.is_err();
                // The applier has stopped (it failed) or this fetch did: stop too.
                if arrived.send(arrival).is_err() || failed {
                    break;
                }
            }
        };
        let applying = async move {
            let mut assembly = Assembly::new(merges, &work.rootfs())?;
            let mut paths = Vec::with_capacity(image.layers.len());
            let mut applied = LayerSummary::default();
            for layer in &image.layers {
                let (relative, entries) =
                    arrivals.recv().await.expect("a fetch result for every layer until one fails")?;
                let (path, compression, work) = (self.root().join(&relative), layer.compression, work.clone());
                let summary;
                (assembly, summary) = blocking("the build", move || {
                    let _work = work;
                    // The permit is held until the layer is merged.
                    let (entries, _permit) = match entries {
                        Some(ReadAhead { entries, _permit }) => (Some(entries), Some(_permit)),
                        None => (None, None),
                    };
                    assembly.add(&path, compression, entries)
                })
                .await?;
                applied += &summary;
                paths.push(relative);
            }
            let warnings = assembly.warnings(&applied);
            Ok((paths, warnings, assembly))
        };
        tokio::join!(fetching, applying).1
    }

    /// The layer's blob in the cache (its store-relative path) and, given
    /// read-ahead `permits` (a merged tree), its entries read ahead under
    /// one of them: while it downloads, else from the cache.
    async fn arrived_layer(
        &self,
        origin: &OciOrigin,
        layer: &Layer,
        permits: Option<Arc<tokio::sync::Semaphore>>,
        observer: Arc<dyn BuildObserver>,
    ) -> Result<(String, Option<ReadAhead>)> {
        let permit = match permits {
            Some(permits) => Some(permits.acquire_owned().await.expect("never closed")),
            None => None,
        };
        let (relative, early) = self.cached_layer(origin, layer, permit.is_some(), observer).await?;
        let Some(permit) = permit else { return Ok((relative, None)) };
        let entries = match early {
            Some(entries) => entries,
            None => {
                let (path, compression) = (self.root().join(&relative), layer.compression);
                blocking("the build", move || read_ahead(&path, compression)).await?
            }
        };
        Ok((relative, Some(ReadAhead { entries, _permit: permit })))
    }

    /// The layer's blob in the cache, downloaded (and checked) if missing;
    /// with `read_early`, a download's entries as they arrive too (see
    /// [`EarlyEntries`]).
    async fn cached_layer(
        &self,
        origin: &OciOrigin,
        layer: &Layer,
        read_early: bool,
        observer: Arc<dyn BuildObserver>,
    ) -> Result<(String, Option<Entries>)> {
        let digest = &layer.descriptor.digest;
        let relative = crate::content::by_digest("layers", digest);
        let path = self.root().join(&relative);
        if path.exists() {
            return Ok((relative, None));
        }
        let _lock = self.lock(&format!("layer-{}", digest.hex())).await?;
        if path.exists() {
            return Ok((relative, None));
        }
        let partial = self.tmp().join(partial_layer_name(digest));
        let retries: Arc<dyn Progress> = Arc::new(BuildProgress(observer.clone()));
        let progress = crate::metrics::Received::new(Some(retries), move |bytes| observer.pulled(bytes));
        let watermark = Watermark::new(Some(Arc::new(progress)));
        let _release_reader = EndOnDrop(watermark.clone());
        let dropped_midway = RemoveOnDrop(Some(partial.clone()));
        // The entries are read as the blob arrives: the reader starts
        // beside the download (polled first, it opens the partial before
        // the download does), and fails (it is then not used) if the
        // download does.
        let source = origin.image_source(self)?;
        let early = async {
            match read_early {
                true => EarlyEntries::start(&partial, layer.compression, watermark.clone()).await.ok(),
                false => None,
            }
        };
        let fetch = async {
            let fetched = source.fetch_blob(digest, layer.descriptor.size, &partial, &*watermark).await;
            watermark.end(fetched.is_ok());
            fetched
        };
        let (early, fetched) = tokio::join!(early, fetch);
        dropped_midway.disarm();
        let fetched = fetched?;
        if let Err(mismatch) = crate::content::check_blob(&layer.descriptor, &fetched.digest, fetched.size) {
            let _ = remove_partial(&partial);
            return Err(mismatch);
        }
        let early = early.and_then(|early| early.if_whole(&partial, &watermark));
        Ok((self.keep_verified(&partial, "layers", digest)?, early))
    }
}

/// A layer's entries read from its partial file as the download writes it
/// ([`GrowingFile`]), so that it decompresses while it arrives. They are
/// handed on only once the blob is verified, and only if every byte read
/// was a byte of the verified file: the download never started over (a
/// resume from elsewhere, a mirror's wrong blob removed) and the file read
/// is the one kept. Otherwise they are dropped, which stops their thread,
/// and the layer is read again from the cache.
struct EarlyEntries {
    entries: Entries,
    file: std::fs::File,
}

impl EarlyEntries {
    /// Starts reading the layer at `partial` as `watermark` says it grows;
    /// returns once its first bytes are in (a decompressor reads its header
    /// at once), or fails if the download does.
    ///
    /// The partial file is opened (made if missing) before the first await,
    /// so before the download, polled after this, can touch it: a file the
    /// download removes (a mirror's wrong blob, a cancelled build) is never
    /// made again here.
    async fn start(partial: &Path, compression: Compression, watermark: Arc<Watermark>) -> Result<EarlyEntries> {
        let opened = std::fs::File::options().create(true).truncate(false).write(true).read(true).open(partial);
        let file = opened.map_err(Error::io("create", partial))?;
        let partial = partial.to_owned();
        blocking("the build", move || {
            let reader =
                Sequential::new(GrowingFile::new(file.try_clone().map_err(Error::io("open", &partial))?, watermark));
            let entries = entries_of(reader, compression, &partial)?;
            Ok(EarlyEntries { entries, file })
        })
        .await
    }

    /// The entries, if what they were read from is the whole verified blob at `partial`.
    fn if_whole(self, partial: &Path, watermark: &Watermark) -> Option<Entries> {
        use std::os::unix::fs::MetadataExt;
        let read = self.file.metadata().ok()?;
        let kept = std::fs::metadata(partial).ok()?;
        let same_file = (read.dev(), read.ino()) == (kept.dev(), kept.ino());
        (same_file && !watermark.restarted()).then_some(self.entries)
    }
}

/// What a build holds while any part of it runs: shared by its future and
/// its blocking jobs; dropped by the last of them, which removes the work
/// directory and then releases the key's lock, the lease and the observer,
/// in that order, on a blocking thread.
pub(crate) struct Work {
    /// Taken out to publish the image.
    held: Option<Held>,
}

/// Dropped in the order of its fields.
struct Held {
    dir: Option<tempfile::TempDir>,
    _lock: KeyLock,
    _lease: Lease,
    _observer: Arc<dyn BuildObserver>,
}

impl Work {
    /// Removes what an interrupted build of `key` left and makes a work
    /// directory with an empty `rootfs/` (blocking).
    fn start(store: &Store, key: &str, mut held: Held) -> Result<Arc<Work>> {
        store.remove_abandoned_work(key)?;
        let dir = held.dir.insert(store.work_dir(key)?);
        let rootfs = dir.path().join("rootfs");
        let work = Arc::new(Work { held: Some(held) });
        std::fs::create_dir(&rootfs).map_err(Error::io("create", &rootfs))?;
        Ok(work)
    }

    fn dir(&self) -> &Path {
        let held = self.held.as_ref().expect("held until published");
        held.dir.as_ref().expect("a work directory").path()
    }

    fn rootfs(&self) -> PathBuf {
        self.dir().join("rootfs")
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(held))),
            Err(_) => drop(held),
        }
    }
}

/// Removes a download's partial file (and its metadata) if dropped armed:
/// the download was dropped midway, its build cancelled.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(partial) = self.0.take() {
            let _ = remove_partial(&partial);
        }
    }
}

/// Where a build puts its layers: merged in memory (`vmimg_rootfs::merge`:
/// exact owners and devices for any user, no tree on the host) for a cpio
/// archive, an erofs disk, and an ext4 disk when this host's mke2fs reads
/// a tar; else applied to a directory in the work directory (owners and
/// devices only as root).
enum Assembly {
    Merged(Merged),
    Tree { rootfs: Rootfs, options: ApplyOptions },
}

impl Assembly {
    /// Whether a disk of `format` is made from a merged tree (blocking, once:
    /// it may ask mke2fs). An ext4 disk goes through a directory only when
    /// mke2fs cannot read a tar and the build runs as root, which makes that
    /// directory exactly; without root such a build is refused, with what to
    /// install, rather than give the image's files the caller's owner.
    fn merges(format: RootfsFormat) -> Result<bool> {
        match format {
            RootfsFormat::Ext4 => match vmimg_rootfs::ext4::check_reads_tar() {
                Ok(()) => Ok(true),
                // Root's directory holds owners and devices (the default options say whether this is root).
                Err(_) if ApplyOptions::default().owners => Ok(false),
                Err(e) => Err(Error::io("build an ext4 disk without root with", Path::new("mke2fs"))(e)),
            },
            RootfsFormat::Cpio | RootfsFormat::Erofs => Ok(true),
        }
    }

    fn new(merges: bool, rootfs: &Path) -> Result<Assembly> {
        if merges {
            return Ok(Assembly::Merged(Merged::new(MergeOptions::default())));
        }
        let options = ApplyOptions::default();
        let tree = Rootfs::open(rootfs, options.clone()).map_err(rootfs_error(rootfs))?;
        Ok(Assembly::Tree { rootfs: tree, options })
    }

    /// Adds the layer in `blob`: a merged tree from its `entries`, read
    /// ahead; a directory from the blob (blocking).
    fn add(
        mut self,
        blob: &Path,
        compression: Compression,
        entries: Option<Entries>,
    ) -> Result<(Assembly, LayerSummary)> {
        let layer_error = |source| Error::Layer { path: blob.to_owned(), source };
        let summary = match (&mut self, entries) {
            (Assembly::Merged(merged), Some(entries)) => merged.add_entries(entries).map_err(layer_error)?,
            (Assembly::Tree { rootfs, .. }, None) => {
                rootfs.apply_layer(layer_tar(blob, compression)?).map_err(layer_error)?
            }
            // `merges` decides both: a merged tree's layers are read ahead, a directory's are not.
            _ => return Err(Error::Internal("a layer read ahead or not, against what its tree takes".into())),
        };
        Ok((self, summary))
    }

    /// What the disk lacks of what the layers asked for, in words.
    fn warnings(&self, applied: &LayerSummary) -> Vec<String> {
        match self {
            Assembly::Merged(_) => {
                applied.warnings(&ApplyOptions { owners: true, devices: true, ..Default::default() })
            }
            Assembly::Tree { options, .. } => applied.warnings(options),
        }
    }

    /// Makes the disk at `out` (blocking); the layers' `blobs` are read
    /// again for a merged tree's file contents.
    fn make_disk(
        self,
        rootfs: &Path,
        blobs: &[(PathBuf, Compression)],
        out: &Path,
        format: RootfsFormat,
    ) -> Result<()> {
        let made = match self {
            Assembly::Merged(merged) => {
                let open_layer = |n: usize| {
                    let (blob, compression) = &blobs[n];
                    layer_tar(blob, *compression).map_err(std::io::Error::other)
                };
                match format {
                    RootfsFormat::Cpio => write_cpio(out, |w| vmimg_rootfs::cpio::write_merged(&merged, open_layer, w)),
                    RootfsFormat::Erofs => {
                        vmimg_rootfs::erofs::build_merged(&merged, open_layer, out, &Default::default()).map(drop)
                    }
                    RootfsFormat::Ext4 => {
                        vmimg_rootfs::ext4::build_merged(&merged, open_layer, out, &Default::default()).map(drop)
                    }
                }
            }
            Assembly::Tree { .. } => match format {
                RootfsFormat::Ext4 => vmimg_rootfs::ext4::build(rootfs, out, &Default::default()).map(drop),
                RootfsFormat::Erofs => vmimg_rootfs::erofs::build(rootfs, out, &Default::default()).map(drop),
                RootfsFormat::Cpio => write_cpio(out, |w| vmimg_rootfs::cpio::write_tree(rootfs, w)),
            },
        };
        made.map_err(Error::io("build the disk", out))?;
        remove_tree(rootfs)
    }
}

/// The name, in the store's `tmp/`, of the layer `digest`'s partial download.
fn partial_layer_name(digest: &Digest) -> String {
    format!("layer-{}.part", digest.hex())
}

/// The entries of the layer in `blob`, read ahead on a thread of their own.
fn read_ahead(blob: &Path, compression: Compression) -> Result<Entries> {
    entries_of(std::fs::File::open(blob).map_err(Error::io("open", blob))?, compression, blob)
}

/// The entries of the layer blob `compressed` (the file at `blob`), read
/// ahead on a thread of their own.
fn entries_of(
    compressed: impl std::io::Read + Send + 'static,
    compression: Compression,
    blob: &Path,
) -> Result<Entries> {
    let tar = decompressed(compressed, compression, blob)?;
    vmimg_rootfs::merge::read_ahead(tar).map_err(Error::io("read", blob))
}

/// The tar stream of the layer in `blob`, decompressed.
fn layer_tar(blob: &Path, compression: Compression) -> Result<vmimg_rootfs::merge::LayerTar> {
    decompressed(std::fs::File::open(blob).map_err(Error::io("open", blob))?, compression, blob)
}

/// The tar stream in `compressed`, the layer blob at `blob`, read in 1 MiB
/// pieces.
fn decompressed(
    compressed: impl std::io::Read + Send + 'static,
    compression: Compression,
    blob: &Path,
) -> Result<vmimg_rootfs::merge::LayerTar> {
    let compression = match compression {
        Compression::None => apply::Compression::None,
        Compression::Gzip => apply::Compression::Gzip,
        Compression::Zstd => apply::Compression::Zstd,
    };
    apply::decompress(std::io::BufReader::with_capacity(1 << 20, compressed), compression)
        .map_err(Error::io("decompress", blob))
}

/// Makes `out` the cpio archive `write` writes, synced.
fn write_cpio(
    out: &Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<vmimg_rootfs::cpio::CpioSummary>,
) -> std::io::Result<()> {
    let file = std::fs::File::create(out)?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
    write(&mut writer)?;
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

fn remove_tree(path: &Path) -> Result<()> {
    std::fs::remove_dir_all(path).map_err(Error::io("remove", path))
}

fn rootfs_error(path: &Path) -> impl FnOnce(apply::ApplyError) -> Error {
    let path = path.to_owned();
    move |source| Error::Layer { path, source }
}
