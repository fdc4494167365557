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

use crate::locks::{KeyLock, Lease, LockFile, Locks};
use crate::record::ImageRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmimg_fetch::{FetchOptions, Fetcher};

/// Where registry hosts are configured (`hosts.toml` files in containerd's
/// layout, or Docker's `certs.d` files) unless the registry options name
/// another directory: the user's, never collected.
pub const HOSTS_DIR: &str = "certs.d";

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
    /// For commands that only read (listings, usage): the store is not
    /// made when missing (it reads as empty), and nothing is written.
    pub read_only: bool,
    /// Conversion threads (0: one per core, at most 8).
    pub threads: usize,
}

/// `config.json` in the store root.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    mirrors: Mirrors,
    /// Scope (a registry, or `registry/repository-prefix`, or `""` for all)
    /// to the public keys one of which must have signed its images.
    #[serde(default)]
    signatures: BTreeMap<String, Vec<PathBuf>>,
}

impl Config {
    /// The signature policy `signatures` says, its keys read (paths
    /// relative to the store root); a key that does not read is an error
    /// naming the config file.
    fn policy(&self, root: &Path, path: &Path) -> Result<vmimg_oci::sign::Policy> {
        let mut policy = vmimg_oci::sign::Policy::default();
        for (scope, files) in &self.signatures {
            let keys = files
                .iter()
                .map(|file| vmimg_oci::sign::VerifyKey::from_file(&root.join(file)))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::Config { path: path.to_owned(), message: format!("signatures.{scope:?}: {e}") })?;
            policy.require(scope, keys);
        }
        Ok(policy)
    }
}

/// `$VMIMG_STORE`, else `$XDG_CACHE_HOME/vmimg`, else `~/.cache/vmimg`.
pub fn default_root() -> PathBuf {
    let env = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("VMIMG_STORE")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("vmimg")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/vmimg")))
        .unwrap_or_else(|| PathBuf::from("/var/lib/vmimg"))
}

/// An open image store: a handle, cheap to clone, that every clone shares
/// (with its lock table and clients), so tasks it starts can hold one.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
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
    threads: usize,
    locks: Locks,
    metrics: crate::metrics::Metrics,
}

impl Store {
    /// Opens (creating if needed) the store and loads its catalog and config.
    pub fn open(options: StoreOptions) -> Result<Store> {
        let root = options.root.unwrap_or_else(default_root);
        let root = std::path::absolute(&root).map_err(Error::io("resolve", &root))?;
        if !options.read_only {
            for dir in ["blobs", "images", "tmp", "locks"] {
                let path = root.join(dir);
                std::fs::create_dir_all(&path).map_err(Error::io("create", &path))?;
            }
        }
        let mut catalog = Catalog::embedded();
        let mut mirrors = Mirrors::default();
        let mut registry_options = options.registry;
        if let Some(config) = read_optional(&root.join("config.json"))? {
            let (path, text) = config;
            let config: Config = serde_json::from_str(&text)
                .map_err(|e| Error::Config { path: path.clone(), message: e.to_string() })?;
            registry_options.policy.extend(config.policy(&root, &path)?);
            mirrors.extend(config.mirrors);
        }
        mirrors.extend(options.mirrors);
        if let Some((path, text)) = read_optional(&root.join("catalog.json"))? {
            catalog.overlay(Catalog::parse(&text, &path.display().to_string())?);
        }
        if let Some(path) = &options.catalog {
            catalog.overlay(Catalog::load(path)?);
        }
        let arch = options.arch.or_else(Arch::host).ok_or(Error::NoHostArch { host: std::env::consts::ARCH })?;
        let locks = Locks::new(root.join("locks"));
        let hosts_dir = registry_options.hosts_dir.clone().unwrap_or_else(|| root.join(HOSTS_DIR));
        let metrics = crate::metrics::Metrics::new(&root);
        Ok(Store {
            shared: Arc::new(Shared {
                root,
                catalog,
                mirrors,
                arch,
                registry_options: vmimg_oci::RegistryOptions {
                    fetch: options.fetch.clone(),
                    hosts_dir: Some(hosts_dir),
                    ..registry_options
                },
                fetch_options: options.fetch,
                fetcher: std::sync::OnceLock::new(),
                registry: std::sync::OnceLock::new(),
                threads: options.threads,
                locks,
                metrics,
            }),
        })
    }

    /// The HTTP client, made on first use.
    pub(crate) fn fetcher(&self) -> Result<&Fetcher> {
        if let Some(fetcher) = self.shared.fetcher.get() {
            return Ok(fetcher);
        }
        let fetcher = Fetcher::new(self.shared.fetch_options.clone())?;
        Ok(self.shared.fetcher.get_or_init(|| fetcher))
    }

    /// The OCI registry client, made on first use.
    pub fn registry(&self) -> Result<&vmimg_oci::Registry> {
        if let Some(registry) = self.shared.registry.get() {
            return Ok(registry);
        }
        let registry = vmimg_oci::Registry::new(self.shared.registry_options.clone())?;
        Ok(self.shared.registry.get_or_init(|| registry))
    }

    /// The store's metrics: pulls, builds and bytes on disk.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.shared.metrics
    }

    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    pub fn catalog(&self) -> &Catalog {
        &self.shared.catalog
    }

    /// Conversion threads (0: one per core, at most 8).
    pub(crate) fn threads(&self) -> usize {
        self.shared.threads
    }

    pub fn arch(&self) -> Arch {
        self.shared.arch
    }

    /// The URL rewrites applied to every fetch.
    pub fn mirrors(&self) -> &Mirrors {
        &self.shared.mirrors
    }

    pub(crate) fn tmp(&self) -> PathBuf {
        self.shared.root.join("tmp")
    }

    pub(crate) fn image_dir(&self, key: &str) -> PathBuf {
        self.shared.root.join("images").join(key)
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
            return Err(Error::NotADisk { image: record.name.clone(), format: record.format.to_string() });
        }
        Ok(self.disk_path(&record.name))
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
            Err(e) => Err(Error::io("stat", &path)(e)),
        }
    }

    /// The record of the image `name` names: a key, the name of an image
    /// the user made (`bundle import`, `image new`), or a name the user gave
    /// an image (`tag`).
    pub fn find_image(&self, name: &str) -> Result<Option<ImageRecord>> {
        let is_one_component = !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\0']);
        if !is_one_component {
            return Ok(None);
        }
        if let Some(record) = self.lookup(name)? {
            return Ok(Some(record));
        }
        if !crate::catalog::is_name_safe(name) {
            return Ok(None);
        }
        if let Some(record) = self.lookup(&crate::source::local_key(name))? {
            return Ok(Some(record));
        }
        match self.named(name)? {
            Some(key) => self.lookup(&key),
            None => Ok(None),
        }
    }

    /// Holds `key` for this caller alone, in this process and across
    /// processes, until the guard drops.
    pub(crate) async fn lock(&self, key: &str) -> Result<KeyLock> {
        self.shared.locks.hold(key).await
    }

    /// Holds the store's lease, shared by every pull and build in flight
    /// (in any process): while one is held, `gc` collects no blob or layer,
    /// which such work may be about to name in a record.
    pub(crate) async fn lease(&self) -> Result<Lease> {
        self.shared.locks.lease().await
    }

    /// The lease held alone (None while work is in flight): what `gc` holds
    /// while it collects blobs and layers.
    pub(crate) fn try_exclusive_lease(&self) -> Result<Option<Lease>> {
        self.shared.locks.try_exclusive_lease()
    }

    /// A fresh work directory for `key` under `tmp/` (removed on drop
    /// unless kept).
    pub(crate) fn work_dir(&self, key: &str) -> Result<tempfile::TempDir> {
        let tmp = self.tmp();
        tempfile::Builder::new()
            .prefix(&format!("{key}.work-"))
            .tempdir_in(&tmp)
            .map_err(Error::io("create a directory in", &tmp))
    }

    /// Holds `key` if nobody else does (None if someone does).
    pub(crate) fn try_lock(&self, key: &str) -> Result<Option<LockFile>> {
        self.shared.locks.try_hold(key)
    }

    /// Removes work directories of `key` that an interrupted run left.
    pub(crate) fn remove_abandoned_work(&self, key: &str) -> Result<()> {
        let tmp = self.tmp();
        let prefix = format!("{key}.work-");
        for entry in std::fs::read_dir(&tmp).map_err(Error::io("list", &tmp))? {
            let entry = entry.map_err(Error::io("list", &tmp))?;
            if entry.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)) {
                std::fs::remove_dir_all(entry.path()).map_err(Error::io("remove", &entry.path()))?;
            }
        }
        Ok(())
    }
}

/// A small file of the store's that may be absent, with its path.
fn read_optional(path: &Path) -> Result<Option<(PathBuf, String)>> {
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some((path.to_owned(), crate::fsutil::read_bounded(path, crate::catalog::MAX_CATALOG_BYTES)?)))
}
