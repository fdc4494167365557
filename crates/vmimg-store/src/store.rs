//! The store on disk, and who may write which part of it when.
//!
//! ```text
//! <root>/
//!   blobs/<algorithm>/<hex>     downloaded sources, by digest, immutable
//!   images/<key>/disk.raw       a ready disk
//!   images/<key>/image.json     its record
//!   images/<key>/machine.json   its VM definition (bundles, blank images)
//!   tmp/<key>.part[.meta]       a download in progress (kept to resume)
//!   tmp/<key>.work-*/           an image being made (removed if abandoned)
//!   locks/<key>.lock            held while <key> is being made
//!   catalog.json, config.json   optional: more aliases; mirrors
//! ```
//!
//! The life of an image: under the key's lock (a tokio mutex inside the
//! process, an advisory file lock across processes), the source streams into
//! `tmp/<key>.part` while the disk is made in a work directory under `tmp/`.
//! Nothing is visible until the digest matched: then the partial is renamed
//! into `blobs/`, the record written into the work directory, everything
//! flushed, and the work directory renamed to `images/<key>`. A crash at any
//! moment leaves either no image or a whole one; the next holder of the lock
//! removes abandoned work directories and resumes the partial.

use crate::catalog::{Arch, Catalog, Mirrors};
use crate::error::{Error, Result};
use crate::record::ImageRecord;
use crate::source::{Resolved, Resolver};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vmimg_fetch::{Digest, FetchOptions, Fetcher};

/// How to open a store.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// The root directory; [`default_root`] when None.
    pub root: Option<PathBuf>,
    /// A catalog file whose aliases add to or override the others.
    pub catalog: Option<PathBuf>,
    /// URL prefix rewrites, on top of the store's config.json.
    pub mirrors: Mirrors,
    /// The architecture aliases resolve to (the host's when None).
    pub arch: Option<Arch>,
    pub fetch: FetchOptions,
    /// How to reach OCI registries (its `fetch` is replaced by the one above).
    pub registry: vmimg_oci::RegistryOptions,
    /// Conversion threads (0: one per core, at most 8).
    pub threads: usize,
}

/// `config.json` in the store root.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    mirrors: Mirrors,
}

/// `$VMIMG_STORE`, else `$XDG_CACHE_HOME/vmimg`, else `~/.cache/vmimg`.
pub fn default_root() -> PathBuf {
    let env = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("VMIMG_STORE")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("vmimg")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/vmimg")))
        .unwrap_or_else(|| PathBuf::from("/var/lib/vmimg"))
}

/// An open image store.
pub struct Store {
    root: PathBuf,
    catalog: Catalog,
    mirrors: Mirrors,
    arch: Arch,
    fetch_options: FetchOptions,
    /// Made on first use: loading the system's root certificates costs
    /// more than a whole `instance create`.
    fetcher: std::sync::OnceLock<Fetcher>,
    registry_options: vmimg_oci::RegistryOptions,
    registry: std::sync::OnceLock<vmimg_oci::Registry>,
    pub(crate) threads: usize,
    in_process: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub(crate) metrics: crate::metrics::Metrics,
}

impl Store {
    /// Opens (creating if needed) the store and loads its catalog and config.
    pub fn open(options: StoreOptions) -> Result<Store> {
        let root = options.root.unwrap_or_else(default_root);
        let root = std::path::absolute(&root).map_err(Error::io("cannot resolve", &root))?;
        for dir in ["blobs", "images", "tmp", "locks"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(Error::io("cannot create", &path))?;
        }
        let mut catalog = Catalog::embedded();
        let mut mirrors = Mirrors::default();
        if let Some(config) = read_optional(&root.join("config.json"))? {
            let (path, text) = config;
            let config: Config =
                serde_json::from_str(&text).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
            mirrors.extend(config.mirrors);
        }
        mirrors.extend(options.mirrors);
        if let Some((path, text)) = read_optional(&root.join("catalog.json"))? {
            catalog.overlay(Catalog::parse(&text, &path.display().to_string())?);
        }
        if let Some(path) = &options.catalog {
            catalog.overlay(Catalog::load(path)?);
        }
        let arch = options.arch.or_else(Arch::host).ok_or_else(|| {
            Error::Usage(format!("no catalog architecture for this host ({}): pass --arch", std::env::consts::ARCH))
        })?;
        Ok(Store {
            metrics: crate::metrics::Metrics::new(&root),
            root,
            catalog,
            mirrors,
            arch,
            registry_options: vmimg_oci::RegistryOptions { fetch: options.fetch.clone(), ..options.registry },
            fetch_options: options.fetch,
            fetcher: std::sync::OnceLock::new(),
            registry: std::sync::OnceLock::new(),
            threads: options.threads,
            in_process: Mutex::default(),
        })
    }

    /// The HTTP client, made on first use.
    pub(crate) fn fetcher(&self) -> Result<&Fetcher> {
        if let Some(fetcher) = self.fetcher.get() {
            return Ok(fetcher);
        }
        let fetcher = Fetcher::new(self.fetch_options.clone())?;
        Ok(self.fetcher.get_or_init(|| fetcher))
    }

    /// The OCI registry client, made on first use.
    pub fn registry(&self) -> Result<&vmimg_oci::Registry> {
        if let Some(registry) = self.registry.get() {
            return Ok(registry);
        }
        let registry = vmimg_oci::Registry::new(self.registry_options.clone())?;
        Ok(self.registry.get_or_init(|| registry))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The URL rewrites applied to every fetch.
    pub fn mirrors(&self) -> &Mirrors {
        &self.mirrors
    }

    /// What `source` (an alias, URL or file path) names, with the digest it must have.
    pub fn resolve(&self, source: &str, digest: Option<Digest>) -> Result<Resolved> {
        Resolver { catalog: &self.catalog, mirrors: &self.mirrors, arch: self.arch }.resolve(source, digest)
    }

    pub(crate) fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn image_dir(&self, key: &str) -> PathBuf {
        self.root.join("images").join(key)
    }

    /// The ready disk of image `key`.
    pub fn disk_path(&self, key: &str) -> PathBuf {
        self.image_dir(key).join("disk.raw")
    }

    /// The file of image `record`: its disk, or a container image's initramfs.
    pub fn image_file(&self, record: &ImageRecord) -> PathBuf {
        self.image_dir(&record.name).join(record.file_name())
    }

    /// The raw disk of image `record`; an error for an initramfs, which has none.
    pub(crate) fn raw_disk(&self, record: &ImageRecord) -> Result<PathBuf> {
        if record.file_name() != "disk.raw" {
            return Err(Error::Usage(format!(
                "image {} is a {} initramfs, not a disk: give it to the VM as its initrd, or build a disk \
                 (vmimg build --format ext4)",
                record.name, record.format
            )));
        }
        Ok(self.disk_path(&record.name))
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join(crate::pull::by_digest("blobs", digest))
    }

    /// The partial download of `key`'s source.
    pub fn partial_path(&self, key: &str) -> PathBuf {
        self.tmp().join(format!("{key}.part"))
    }

    /// The record of image `key`, if it is in the store.
    pub fn lookup(&self, key: &str) -> Result<Option<ImageRecord>> {
        let path = self.image_dir(key).join("image.json");
        match path.try_exists() {
            Ok(true) => ImageRecord::load(&path).map(Some),
            Ok(false) => Ok(None),
            Err(e) => Err(Error::io("cannot stat", &path)(e)),
        }
    }

    /// The record of the image `name` names: a key, or the name of an image
    /// the user made (`bundle import`, `image new`).
    pub fn find_image(&self, name: &str) -> Result<Option<ImageRecord>> {
        let is_one_component = !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\0']);
        if !is_one_component {
            return Ok(None);
        }
        match self.lookup(name)? {
            Some(record) => Ok(Some(record)),
            None if crate::catalog::is_name_safe(name) => self.lookup(&crate::source::local_key(name)),
            None => Ok(None),
        }
    }

    /// Holds `key` for this caller alone, in this process and across
    /// processes, until the guard drops.
    pub(crate) async fn lock(&self, key: &str) -> Result<KeyLock> {
        let mutex = self.in_process.lock().expect("lock table").entry(key.to_owned()).or_default().clone();
        let in_process = mutex.lock_owned().await;
        let path = self.lock_path(key);
        let file = tokio::task::spawn_blocking(move || LockFile::acquire(path, true))
            .await
            .expect("lock task")?
            .expect("a blocking lock is always had");
        Ok(KeyLock { _file: file, _in_process: in_process })
    }

    fn lock_path(&self, key: &str) -> PathBuf {
        self.root.join("locks").join(format!("{key}.lock"))
    }

    /// Holds the store's lease, shared by every pull and build in flight
    /// (in any process): while one is held, `gc` collects no blob or layer,
    /// which such work may be about to name in a record.
    pub(crate) async fn lease(&self) -> Result<Lease> {
        let path = self.lock_path(LEASE_KEY);
        tokio::task::spawn_blocking(move || {
            let file = open_lock(&path)?;
            file.lock_shared().map_err(Error::io("lock", &path))?;
            Ok(Lease { _file: file })
        })
        .await
        .expect("lease task")
    }

    /// The lease held alone (None while work is in flight): what `gc` holds
    /// while it collects blobs and layers.
    pub(crate) fn try_exclusive_lease(&self) -> Result<Option<Lease>> {
        let path = self.lock_path(LEASE_KEY);
        let file = open_lock(&path)?;
        Ok(try_hold(&file, &path)?.then_some(Lease { _file: file }))
    }

    /// A fresh work directory for `key` under `tmp/` (removed on drop
    /// unless kept).
    pub(crate) fn work_dir(&self, key: &str) -> Result<tempfile::TempDir> {
        let tmp = self.tmp();
        tempfile::Builder::new()
            .prefix(&format!("{key}.work-"))
            .tempdir_in(&tmp)
            .map_err(Error::io("cannot create a directory in", &tmp))
    }

    /// Holds `key` if nobody else does (None if someone does).
    pub(crate) fn try_lock(&self, key: &str) -> Result<Option<LockFile>> {
        LockFile::acquire(self.lock_path(key), false)
    }

    /// Removes work directories of `key` that an interrupted run left.
    pub(crate) fn remove_abandoned_work(&self, key: &str) -> Result<()> {
        let tmp = self.tmp();
        let prefix = format!("{key}.work-");
        for entry in std::fs::read_dir(&tmp).map_err(Error::io("cannot list", &tmp))? {
            let entry = entry.map_err(Error::io("cannot list", &tmp))?;
            if entry.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)) {
                std::fs::remove_dir_all(entry.path()).map_err(Error::io("cannot remove", &entry.path()))?;
            }
        }
        Ok(())
    }
}

/// Exclusive hold on one cache key (released on drop, or when the process dies).
pub(crate) struct KeyLock {
    _file: LockFile,
    _in_process: tokio::sync::OwnedMutexGuard<()>,
}

/// The lock file of the store's lease (`locks/.lease.lock`): a name no key
/// can have, never removed.
pub(crate) const LEASE_KEY: &str = ".lease";

/// A share of the store's lease, or all of it (see [`Store::lease`]).
pub(crate) struct Lease {
    _file: File,
}

/// A held lock file, removed by its holder when released, so that locks do
/// not pile up. Whoever locks a file checks afterwards that its path still
/// names it (the last holder may have removed it meanwhile), else retries.
pub(crate) struct LockFile {
    file: File,
    path: PathBuf,
}

impl LockFile {
    /// Locks `path` (waiting when `wait`; None if held elsewhere otherwise).
    fn acquire(path: PathBuf, wait: bool) -> Result<Option<LockFile>> {
        loop {
            let file = open_lock(&path)?;
            if wait {
                file.lock().map_err(Error::io("lock", &path))?;
            } else if !try_hold(&file, &path)? {
                return Ok(None);
            }
            if same_file(&file, &path) {
                return Ok(Some(LockFile { file, path }));
            }
        }
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Removed while still locked: a waiter that then gets the lock sees
        // the path gone (or naming a newer file) and tries again.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// Locks `file` (at `path`) exclusively if nobody holds it; false if someone does.
fn try_hold(file: &File, path: &Path) -> Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", path)(e)),
    }
}

fn open_lock(path: &Path) -> Result<File> {
    File::options().create(true).truncate(false).write(true).open(path).map_err(Error::io("open", path))
}

/// Whether `path` names the open `file` (same device and inode).
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(ours), Ok(named)) => (ours.dev(), ours.ino()) == (named.dev(), named.ino()),
        _ => false,
    }
}

/// A small file of the store's that may be absent, with its path.
fn read_optional(path: &Path) -> Result<Option<(PathBuf, String)>> {
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some((path.to_owned(), crate::fsutil::read_bounded(path, crate::catalog::MAX_CATALOG_BYTES)?)))
}
