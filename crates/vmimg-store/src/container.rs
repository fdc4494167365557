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
//!    each is applied to a root directory in the work directory as soon as
//!    it and the ones below it are in;
//! 3. the root directory becomes the disk (`vmimg-rootfs`), is checked
//!    (`e2fsck`, `fsck.erofs`), and the directory is removed;
//! 4. the image is published as any other: record written, work directory
//!    renamed to `images/<key>`.
//!
//! A crash at any step leaves the layer cache with whole blobs only and no
//! image; the next build removes the abandoned work and goes again.

use crate::error::{Error, Result};
use crate::record::{ContainerInfo, ImageRecord, Pulled, RootfsFormat, SourceFormat, SourceInfo};
use crate::store::Store;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmimg_fetch::{Progress, remove_partial};
use vmimg_oci::container::{Compression, ContainerImage, Layer};
use vmimg_oci::{Pinned, Reference};
use vmimg_rootfs::apply::{self, ApplyOptions, LayerSummary, Rootfs};

/// Layers downloaded at once.
const LAYER_JOBS: usize = 3;

/// Hears how a build goes.
pub trait BuildObserver: Send + Sync {
    /// Every layer is in the cache; the disk is being made.
    fn converting(&self) {}
    /// `bytes` more layer bytes arrived from the registry.
    fn pulled(&self, _bytes: u64) {}
}

impl Store {
    /// The cache key of `pinned` (a reference at its manifest digest) built as `format`.
    pub fn container_key(&self, pinned: &Pinned, format: RootfsFormat) -> String {
        let digest = pinned.digest();
        format!("oci-{}_{}-{}", &digest.hex()[..16], self.arch(), format.name())
    }

    /// Builds the disk of container image `image` (`pinned` names it), or
    /// finds it in the store.
    pub async fn build_container(
        &self,
        pinned: &Pinned,
        image: &ContainerImage,
        format: RootfsFormat,
        observer: Arc<dyn BuildObserver>,
    ) -> Result<Pulled> {
        let key = self.container_key(pinned, format);
        if let Some(found) = self.found(&key)? {
            return Ok(found);
        }
        let _lease = self.lease().await?;
        let _lock = self.lock(&key).await?;
        if let Some(found) = self.found(&key)? {
            return Ok(found);
        }
        self.remove_abandoned_work(&key)?;
        let registry = self.registry()?;
        let run = registry.run_config(pinned.reference(), image).await?;
        let work = self.work_dir(&key)?;
        let rootfs = work.path().join("rootfs");
        std::fs::create_dir(&rootfs).map_err(Error::io("cannot create", &rootfs))?;
        let (layers, warnings) = self.fetch_and_apply(pinned.reference(), image, &rootfs, observer.clone()).await?;
        observer.converting();
        let out = work.path().join(format.file_name());
        let (root, file) = (rootfs.clone(), out.clone());
        tokio::task::spawn_blocking(move || make_disk(&root, &file, format)).await.expect("disk builder")?;
        remove_tree(&rootfs)?;
        let digest = pinned.digest().clone();
        let info = SourceInfo::Oci { reference: pinned.reference().clone(), digest: digest.clone() };
        let mut record = ImageRecord::for_file(&key, &out, info, Some(digest), SourceFormat::Container)?;
        record.verified = true;
        record.format = format.image_format();
        let systemd = run.wants_systemd();
        record.container = Some(ContainerInfo { format, run, systemd, layers, warnings });
        self.publish_work(work, record)
    }

    /// Gets every layer into the cache, `LAYER_JOBS` at a time, and applies
    /// them in order as they arrive; returns their store-relative paths and
    /// what the tree could not keep of them.
    async fn fetch_and_apply(
        &self,
        pinned: &Reference,
        image: &ContainerImage,
        rootfs: &Path,
        observer: Arc<dyn BuildObserver>,
    ) -> Result<(Vec<String>, Vec<String>)> {
        use futures_util::StreamExt;
        let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
        let fetching = async move {
            let fetches: Vec<_> =
                image.layers.iter().map(|layer| self.cached_layer(pinned, layer, observer.clone())).collect();
            let mut in_order = futures_util::stream::iter(fetches).buffered(LAYER_JOBS);
            while let Some(fetched) = in_order.next().await {
                let failed = fetched.is_err();
                // The applier has stopped (it failed) or this fetch did: stop too.
                if arrived.send(fetched).is_err() || failed {
                    break;
                }
            }
        };
        let applying = async move {
            let options = ApplyOptions::default();
            let mut applier = Rootfs::open(rootfs, options.clone()).map_err(rootfs_error(rootfs))?;
            let mut paths = Vec::with_capacity(image.layers.len());
            let mut applied = LayerSummary::default();
            for layer in &image.layers {
                let relative = arrivals.recv().await.expect("a fetch result for every layer until one fails")?;
                let (path, compression) = (self.root().join(&relative), layer.compression);
                let summary;
                (applier, summary) = tokio::task::spawn_blocking(move || apply_one(applier, &path, compression))
                    .await
                    .expect("layer applier")?;
                applied += &summary;
                paths.push(relative);
            }
            Ok((paths, applied.warnings(&options)))
        };
        tokio::join!(fetching, applying).1
    }

    /// The layer's blob in the cache, downloaded (and checked) if missing.
    async fn cached_layer(
        &self,
        pinned: &Reference,
        layer: &Layer,
        observer: Arc<dyn BuildObserver>,
    ) -> Result<String> {
        let digest = &layer.descriptor.digest;
        let relative = crate::pull::by_digest("layers", digest);
        let path = self.root().join(&relative);
        if path.exists() {
            return Ok(relative);
        }
        let _lock = self.lock(&format!("layer-{}", digest.hex())).await?;
        if path.exists() {
            return Ok(relative);
        }
        let partial = self.tmp().join(format!("layer-{}.part", digest.hex()));
        let progress = PulledBytes { observer, seen: std::sync::atomic::AtomicU64::new(0) };
        let fetched = self.registry()?.fetch_blob(pinned, digest, layer.descriptor.size, &partial, &progress).await?;
        if let Err(mismatch) = crate::oci::check_blob(&layer.descriptor, &fetched.digest, fetched.size) {
            let _ = remove_partial(&partial);
            return Err(mismatch);
        }
        self.keep_verified(&partial, "layers", digest)
    }
}

/// Counts the bytes a layer download adds, for the observer.
struct PulledBytes {
    observer: Arc<dyn BuildObserver>,
    seen: std::sync::atomic::AtomicU64,
}

impl Progress for PulledBytes {
    fn advanced(&self, written: u64) {
        let before = self.seen.fetch_max(written, std::sync::atomic::Ordering::Relaxed);
        if written > before {
            self.observer.pulled(written - before);
        }
    }
}

fn apply_one(mut applier: Rootfs, blob: &Path, compression: Compression) -> Result<(Rootfs, LayerSummary)> {
    let file = std::fs::File::open(blob).map_err(Error::io("cannot open", blob))?;
    let compression = match compression {
        Compression::None => apply::Compression::None,
        Compression::Gzip => apply::Compression::Gzip,
        Compression::Zstd => apply::Compression::Zstd,
    };
    let tar = apply::decompress(std::io::BufReader::with_capacity(1 << 20, file), compression)
        .map_err(Error::io("cannot decompress", blob))?;
    let summary = applier.apply_layer(tar).map_err(|source| Error::Layer { path: blob.to_owned(), source })?;
    Ok((applier, summary))
}

fn make_disk(rootfs: &Path, out: &Path, format: RootfsFormat) -> Result<()> {
    let made = match format {
        RootfsFormat::Ext4 => vmimg_rootfs::ext4::build(rootfs, out, &Default::default()).map(drop),
        RootfsFormat::Erofs => vmimg_rootfs::erofs::build(rootfs, out, &Default::default()).map(drop),
        RootfsFormat::Cpio => write_cpio(rootfs, out),
    };
    made.map_err(Error::io("cannot build the disk", out))
}

fn write_cpio(rootfs: &Path, out: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(out)?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
    vmimg_rootfs::cpio::write_tree(rootfs, &mut writer)?;
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

fn remove_tree(path: &PathBuf) -> Result<()> {
    std::fs::remove_dir_all(path).map_err(Error::io("cannot remove", path))
}

fn rootfs_error(path: &Path) -> impl FnOnce(apply::ApplyError) -> Error {
    let path = path.to_owned();
    move |source| Error::Layer { path, source }
}
