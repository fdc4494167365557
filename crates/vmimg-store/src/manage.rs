//! Keeping the store in hand: listing images, removing them, accounting
//! for space, collecting garbage.
//!
//! Every removal renames the doomed directory into `tmp/` first (one atomic
//! step), then deletes it, under the image's key lock, so a crash never
//! leaves half an image in `images/`. An image with qcow2 instances is never
//! removed unless the caller forces it (then those instances go too: a qcow2
//! instance cannot outlive its backing file); raw instances are copies and
//! stay. Only images that can be pulled again are ever evicted by `gc`.
//! Removals run on blocking threads; the scans that decide them (records,
//! directory listings, sizes) stay on the caller's.

use crate::error::{Error, Result};
use crate::fsutil::blocking;
use crate::publish::remove_dir_atomically;
use crate::record::{ImageRecord, InstanceFormat, Timestamp};
use crate::store::Store;
use crate::usage::{Usage, allocated};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// An image as `vmimg images` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    pub path: PathBuf,
    #[serde(flatten)]
    pub record: ImageRecord,
    /// Bytes the image's directory occupies.
    pub bytes_on_disk: u64,
    pub instances: usize,
    /// The names users gave it (`tag`), sorted.
    pub names: Vec<String>,
    /// When a pull or an instance last used it.
    pub last_used_at: Timestamp,
}

/// What [`Store::gc`] removes beyond what nothing needs, and whether it
/// only says so.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcOptions {
    /// Evict images that can be pulled again, least recently used first,
    /// until the store takes at most this many bytes.
    #[serde(default)]
    pub keep_under: Option<u64>,
    /// Remove every partial download no pull is resuming, however fresh
    /// (to free a full disk).
    #[serde(default)]
    pub partials: bool,
    /// Say what would go; remove nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What `gc` removed (or, in a dry run, would remove).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub images: Vec<String>,
    /// Blobs and layers.
    pub blobs: usize,
    pub tmp_entries: usize,
    /// Lock files a killed process left.
    pub locks: usize,
    pub bytes_freed: u64,
    /// A pull or build was in flight: blobs and layers were left for the
    /// next gc.
    pub in_flight: bool,
}

/// The store held by a service, as [`Store::claim_service`] gave it.
pub struct ServiceClaim {
    _lock: crate::locks::LockFile,
}

/// The lock key a service holds.
const SERVICE_KEY: &str = ".service";

/// A partial download untouched this long is stale.
const STALE_PARTIAL: Duration = Duration::from_secs(24 * 3600);

impl Store {
    /// Every image, oldest use first.
    pub fn images(&self) -> Result<Vec<ImageSummary>> {
        let instances = self.instances()?;
        let names = self.names()?;
        let summary = |record: ImageRecord| {
            let count = instances.iter().filter(|i| i.record.image == record.name).count();
            let names = names.iter().filter(|(_, key)| **key == record.name).map(|(name, _)| name.clone()).collect();
            self.summary(record, count, names)
        };
        let mut images: Vec<ImageSummary> = self.records()?.into_iter().map(summary).collect();
        images.sort_by(|a, b| (&a.last_used_at, &a.record.name).cmp(&(&b.last_used_at, &b.record.name)));
        Ok(images)
    }

    /// What `images` shows of `record`, which has `instances` instances
    /// and `names`.
    pub(crate) fn summary(&self, record: ImageRecord, instances: usize, names: Vec<String>) -> ImageSummary {
        let image_dir = self.image_dir(&record.name);
        ImageSummary {
            path: self.image_file(&record),
            bytes_on_disk: allocated(&image_dir),
            instances,
            names,
            last_used_at: last_used(&image_dir).into(),
            record,
        }
    }

    /// Marks image `key` as just used (for least-recently-used collection).
    pub(crate) fn touch(&self, key: &str) {
        let record = self.image_dir(key).join("image.json");
        if let Ok(file) = std::fs::File::options().append(true).open(&record) {
            let _ = file.set_modified(SystemTime::now());
        }
    }

    /// Removes image `key`, the blobs no other image uses, and the record of
    /// the build that made it; returns the instances removed with it. Only
    /// qcow2 instances depend on the image (a raw instance is a copy of its
    /// own): with any, removal is refused unless `force`, which removes them.
    pub async fn remove_image(&self, key: &str, force: bool) -> Result<Vec<String>> {
        let _lock = self.lock(key).await?;
        let record = self.lookup(key)?.ok_or_else(|| Error::NotFound { what: "image", name: key.to_owned() })?;
        let dependents: Vec<_> =
            self.instances_of(key)?.into_iter().filter(|i| i.record.format == InstanceFormat::Qcow2).collect();
        let names: Vec<String> = dependents.iter().map(|i| i.record.name.clone()).collect();
        if !dependents.is_empty() && !force {
            return Err(Error::InUse { image: key.to_owned(), instances: names.join(", ") });
        }
        for instance in dependents {
            remove_dir_atomically(instance.path.parent().expect("instances/<name>").to_owned(), self.tmp()).await?;
        }
        remove_dir_atomically(self.image_dir(key), self.tmp()).await?;
        self.remove_names_of(key)?;
        let referenced = self.referenced_blobs()?;
        let unused: Vec<_> = record.blob.into_iter().chain(record.blobs).filter(|b| !referenced.contains(b)).collect();
        let blobs: Vec<_> = unused.into_iter().map(|blob| self.root().join(blob)).collect();
        blocking("removing blobs", move || blobs.iter().try_for_each(|blob| crate::fsutil::remove_file(blob))).await?;
        self.forget_builds_of(key)?;
        Ok(names)
    }

    /// Removes the records of the builds that made image `key`: a build
    /// listed as ready names an image that exists.
    fn forget_builds_of(&self, key: &str) -> Result<()> {
        for path in entries(&self.root().join("builds"))? {
            let build = crate::record::load_json::<serde_json::Value>(&path);
            let names_key = build.is_ok_and(|b| b["image"] == key);
            if names_key {
                crate::fsutil::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Bytes on disk of images, blobs, partial work and instances.
    pub fn usage(&self) -> Usage {
        Usage::of(self.root())
    }

    /// Removes what nothing needs: leftovers in `tmp/` (abandoned work,
    /// empty partials, partial downloads idle for a day, or every partial
    /// download with `partials`), lock files nobody holds, blobs and layers
    /// no image names, and then, while the store is over `keep_under`
    /// bytes, the least recently used images that can be pulled again from
    /// their source and have neither instances nor names (what the user
    /// made, bundles and blank images, is never evicted). A partial download a pull is
    /// resuming is never removed (its key is locked), nor are blobs and
    /// layers while a pull or build is in flight (it holds the store's
    /// lease). With `dry_run`, nothing is removed: the report says what
    /// would go.
    pub async fn gc(&self, options: &GcOptions) -> Result<GcReport> {
        let GcOptions { keep_under, partials, dry_run } = *options;
        let mut report = GcReport { dry_run, ..GcReport::default() };
        self.collect_tmp(&mut report, partials).await?;
        match self.try_exclusive_lease()? {
            Some(_exclusive) => self.collect_blobs(&mut report).await?,
            None => report.in_flight = true,
        }
        if let Some(budget) = keep_under {
            let mut total = self.usage().total.saturating_sub(report.bytes_freed);
            for image in self.images()? {
                if total <= budget {
                    break;
                }
                if image.instances == 0 && image.names.is_empty() && image.record.source.can_pull_again() {
                    if !dry_run {
                        self.remove_image(&image.record.name, false).await?;
                    }
                    total = total.saturating_sub(image.bytes_on_disk);
                    report.bytes_freed += image.bytes_on_disk;
                    report.images.push(image.record.name);
                }
            }
        }
        if !dry_run {
            self.collect_locks(&mut report)?;
        }
        Ok(report)
    }

    /// Removes what interrupted work left in `tmp/` and nothing holds (as
    /// [`Store::gc`] does first): work directories, and partial downloads
    /// once empty or idle for a day; a partial a later pull can resume is
    /// kept. A daemon calls it at start.
    pub async fn clean_tmp(&self) -> Result<GcReport> {
        let mut report = GcReport::default();
        self.collect_tmp(&mut report, false).await?;
        Ok(report)
    }

    /// Claims the store for one long-running service (`vmimg serve`) until
    /// the claim drops: a second claim, from any process, is a conflict.
    /// Commands beside the service share the store through its usual locks.
    pub fn claim_service(&self) -> Result<ServiceClaim> {
        match self.try_lock(SERVICE_KEY)? {
            Some(lock) => Ok(ServiceClaim { _lock: lock }),
            None => Err(Error::Conflict(format!(
                "another vmimg serve is running on the store {}: stop it, or give this one another store",
                self.root().display()
            ))),
        }
    }

    /// Every image's record, in no order: what [`Store::images`] lists,
    /// without measuring each image or counting its instances.
    pub fn records(&self) -> Result<Vec<ImageRecord>> {
        let mut records = Vec::new();
        for path in entries(&self.root().join("images"))? {
            let key = path.file_name().expect("a named entry").to_string_lossy().into_owned();
            records.extend(self.lookup(&key)?);
        }
        Ok(records)
    }

    fn referenced_blobs(&self) -> Result<HashSet<String>> {
        let referenced = |record: ImageRecord| {
            let layers = record.container.map(|c| c.layers).unwrap_or_default();
            record.blob.into_iter().chain(record.blobs).chain(layers)
        };
        Ok(self.records()?.into_iter().flat_map(referenced).collect())
    }

    async fn collect_blobs(&self, report: &mut GcReport) -> Result<()> {
        let referenced = self.referenced_blobs()?;
        let kinds = [entries(&self.root().join("blobs"))?, entries(&self.root().join("layers"))?];
        for path in kinds.iter().flatten().flat_map(|dir| entries(dir).unwrap_or_default()) {
            let relative = path.strip_prefix(self.root()).expect("inside the store").to_string_lossy().into_owned();
            if !referenced.contains(&relative) {
                report.remove(path, Collected::Blob).await?;
            }
        }
        Ok(())
    }

    /// Removes entries of `tmp/` whose key nobody holds: work and removal
    /// directories always, partial downloads once empty or stale, or all
    /// of them with `partials`.
    async fn collect_tmp(&self, report: &mut GcReport, partials: bool) -> Result<()> {
        for path in entries(&self.tmp())? {
            let name = path.file_name().expect("a named entry").to_string_lossy().into_owned();
            let (key, stale) = match name.split_once(".work-").or_else(|| name.split_once(".removing-")) {
                Some((key, _)) => (key.to_owned(), true),
                None => match name.split_once(".part") {
                    Some((key, _)) => {
                        (key.to_owned(), partials || allocated(&path) == 0 || idle_for(&path) > STALE_PARTIAL)
                    }
                    None => continue,
                },
            };
            if stale && let Some(_held) = self.try_lock(&key)? {
                report.remove(path, Collected::Tmp).await?;
            }
        }
        Ok(())
    }

    /// Removes lock files nobody holds (each is removed by its holder
    /// anyway; these are a killed process's).
    fn collect_locks(&self, report: &mut GcReport) -> Result<()> {
        for path in entries(&self.root().join("locks"))? {
            let Some(key) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".lock")) else {
                continue;
            };
            if key != crate::locks::LEASE_KEY
                && key != SERVICE_KEY
                && let Some(held) = self.try_lock(key)?
            {
                drop(held); // removes the file while it holds it
                report.locks += 1;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Collected {
    Blob,
    Tmp,
}

impl GcReport {
    /// Counts `path` as collected and, unless this is a dry run, removes it
    /// (on a blocking thread).
    async fn remove(&mut self, path: PathBuf, kind: Collected) -> Result<()> {
        self.bytes_freed += allocated(&path);
        match kind {
            Collected::Blob => self.blobs += 1,
            Collected::Tmp => self.tmp_entries += 1,
        }
        if self.dry_run { Ok(()) } else { blocking("garbage collection", move || remove_any(&path)).await }
    }
}

fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    match std::fs::read_dir(dir) {
        Ok(list) => Ok(list.flatten().map(|e| e.path()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io("list", dir)(e)),
    }
}

/// Removes a file or a tree; one already gone (its holder removed it
/// between the listing and now) is fine.
fn remove_any(path: &Path) -> Result<()> {
    let result = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", path)(e)),
        _ => Ok(()),
    }
}

fn last_used(image_dir: &Path) -> SystemTime {
    std::fs::metadata(image_dir.join("image.json")).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH)
}

fn idle_for(path: &Path) -> Duration {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
    SystemTime::now().duration_since(modified).unwrap_or_default()
}
