//! The front door: one call gets any source into the store.
//!
//! [`Store::get`] takes a source as a user writes it, parses it
//! ([`Source`]), and takes the path that source needs: a catalog alias, a
//! URL or a local file is pulled and converted (`pull`); an `oci://` or
//! `docker://` reference is asked of its registry, and is pulled as a cloud
//! image or built into a disk as a container image (`builds`). An image the
//! store already has is returned at once. [`Store::find`] answers, without
//! any download, which image a name or a source names; [`Store::remove`]
//! removes it. Frontends (the CLI, the daemon) call these and nothing
//! below them to decide what a source is.

use crate::builds::Manager;
use crate::catalog::Arch;
use crate::error::{Error, Result};
use crate::oci::OciSource;
use crate::record::{ImageRecord, Pulled, RootfsFormat};
use crate::source::{OciOrigin, Resolved, Source};
use crate::store::Store;
use crate::suggest::Suggestion;
use std::sync::Arc;
use vmimg_fetch::{Digest, NoProgress, Progress};

/// How to get a source.
#[derive(Clone, Default)]
pub struct GetOptions {
    /// The digest a URL's or file's bytes must have (an alias's comes from
    /// the catalog, a registry image's from its manifest).
    pub digest: Option<Digest>,
    /// The architecture to resolve aliases and image indexes to (the
    /// store's when None).
    pub arch: Option<Arch>,
    /// What a container image becomes (ext4 when None); refused for any
    /// other source.
    pub format: Option<RootfsFormat>,
    /// Hears the download's bytes and the work's stages.
    pub observer: Option<Arc<dyn Observer>>,
    /// The build queue a container image is built through (its concurrency
    /// shared by every caller that passes it, as a daemon would); a queue of
    /// its own with the default concurrency when None. Builds of one image
    /// are one build whichever queue asks (their lock says who runs it).
    pub builds: Option<Manager>,
    /// Ask the server of a URL given without a digest whether the version
    /// in the store is still the one it serves, and pull the one it serves
    /// if not (see `versions`); without it the store's version is returned.
    /// Other sources are pinned (an alias by the catalog, a digest by
    /// itself) or asked anyway (a registry tag).
    pub refresh: bool,
    /// A name to give the image once it is in (see [`Store::tag`]).
    pub name: Option<String>,
}

impl GetOptions {
    /// Who hears the transports' retries: the observer, or nobody.
    fn progress(&self) -> &dyn Progress {
        match &self.observer {
            Some(observer) => observer.as_ref(),
            None => &NoProgress,
        }
    }
}

/// Hears how a [`Store::get`] goes: the bytes downloaded and every retry
/// of the transports (as a download's [`Progress`]: asking a registry what
/// a reference names, the download, a build's requests), and the stages of
/// the work.
pub trait Observer: Progress {
    fn stage(&self, _stage: Stage) {}
}

/// Where a [`Store::get`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for a build slot; 1 is next.
    Queued { position: usize },
    /// Downloading.
    Pulling,
    /// Making the disk from what was downloaded.
    Converting,
}

impl Store {
    /// Gets `source` into the store, or finds it there, and returns its
    /// image. `source` is anything [`Source::parse`] takes, or the name of
    /// an image in the store.
    pub async fn get(&self, source: &str, options: &GetOptions) -> Result<Pulled> {
        let plan = self.plan(source, options).await?;
        self.get_planned(&plan, options).await
    }

    /// Gets a parsed source into the store.
    pub async fn get_source(&self, source: &Source, options: &GetOptions) -> Result<Pulled> {
        let plan = self.plan_source(source, options).await?;
        self.get_planned(&plan, options).await
    }

    /// What [`Store::get`] of `source` would make, decided now and pinned
    /// (a registry tag is asked of its registry once): the key of the image
    /// it makes is known before any download, for a caller that answers
    /// before the work is done (a daemon). Nothing is downloaded.
    pub async fn plan(&self, source: &str, options: &GetOptions) -> Result<Plan> {
        let parsed = match Source::parse(source, self.catalog()) {
            Err(Error::UnknownAlias { .. }) if let Some(record) = self.find_image(source)? => {
                return Ok(Plan { key: record.name, work: Work::Named });
            }
            parsed => parsed?,
        };
        self.plan_source(&parsed, options).await
    }

    /// What [`Store::get_source`] of `source` would make (see [`Store::plan`]).
    pub async fn plan_source(&self, source: &Source, options: &GetOptions) -> Result<Plan> {
        match self.resolve_source(source, options).await? {
            Resolution::Disk(resolved) => {
                if options.format.is_some() {
                    return Err(Error::Invalid(format!(
                        "{source} is a disk image: a disk format applies to container images"
                    )));
                }
                Ok(Plan { key: resolved.key.clone(), work: Work::Pull(resolved) })
            }
            Resolution::Container(origin) => {
                let format = options.format.unwrap_or_default();
                Ok(Plan { key: self.container_key(origin.digest(), format), work: Work::Build(origin, format) })
            }
        }
    }

    /// Carries out `plan`: finds its image, or pulls or builds it. The
    /// options' observer and build queue are used; the plan's source, digest,
    /// arch and format were fixed when it was made.
    pub async fn get_planned(&self, plan: &Plan, options: &GetOptions) -> Result<Pulled> {
        tracing::debug!(image = %plan.key, work = ?plan.work, "planned");
        if let Some(name) = &options.name {
            self.check_name(name, &plan.key)?;
        }
        let mut pulled = self.carry_out(plan, options).await?;
        if let Some(name) = &options.name {
            self.tag(&pulled.record.name, name).await?;
        }
        pulled.names = self.names_of(&pulled.record.name)?;
        Ok(pulled)
    }

    async fn carry_out(&self, plan: &Plan, options: &GetOptions) -> Result<Pulled> {
        match &plan.work {
            Work::Named => {
                self.found(&plan.key)?.ok_or_else(|| Error::NotFound { what: "image", name: plan.key.clone() })
            }
            Work::Pull(resolved) => {
                let progress = options.observer.clone().map(|o| o as Arc<dyn Progress>);
                self.pull(resolved, progress).await
            }
            Work::Build(origin, format) => match self.found(&plan.key)? {
                Some(built) => Ok(built),
                None => self.build_and_wait(origin, *format, options).await,
            },
        }
    }

    /// The image `name` names, without downloading anything: an image's key
    /// or name as the store lists it, a source pulled before (a registry
    /// tag is asked of its registry), or else the start of one image's key
    /// (three characters at least; the start of several is refused, with
    /// them). An unknown name is refused with the closest one.
    pub async fn find(&self, name: &str) -> Result<ImageRecord> {
        if let Some(record) = self.find_image(name)? {
            return Ok(record);
        }
        if let Ok(source) = Source::parse(name, self.catalog())
            && let Some(record) = self.find_pulled(&source).await?
        {
            return Ok(record);
        }
        self.find_by_prefix(name)
    }

    /// The image a get of `source` would find now, without downloading: a
    /// file's current version, else its newest one (it was edited since).
    async fn find_pulled(&self, source: &Source) -> Result<Option<ImageRecord>> {
        match self.resolve_source(source, &GetOptions::default()).await {
            Ok(Resolution::Disk(resolved)) => match self.lookup(&resolved.key)? {
                None if matches!(source, Source::File(_)) => self.newest_version(&resolved.info),
                record => Ok(record),
            },
            Ok(Resolution::Container(origin)) => {
                self.lookup(&self.container_key(origin.digest(), RootfsFormat::default()))
            }
            Err(_) => Ok(None),
        }
    }

    /// The one image whose key starts with `prefix`.
    fn find_by_prefix(&self, prefix: &str) -> Result<ImageRecord> {
        let records = self.records()?;
        let starting: Vec<&ImageRecord> =
            records.iter().filter(|r| prefix.len() >= 3 && r.name.starts_with(prefix)).collect();
        match starting.as_slice() {
            [record] => Ok((*record).clone()),
            [] => {
                let names = records.iter().map(|r| r.name.strip_prefix(crate::source::LOCAL_PREFIX).unwrap_or(&r.name));
                Err(Error::UnknownImage { name: prefix.to_owned(), suggestion: Suggestion::closest(prefix, names) })
            }
            several => {
                let names: Vec<&str> = several.iter().map(|r| r.name.as_str()).collect();
                Err(Error::Invalid(format!("{prefix:?} starts several images ({}): give more of it", names.join(", "))))
            }
        }
    }

    /// Removes the image `name` names (see [`Store::find`]); returns the
    /// instances removed with it (only with `force`).
    pub async fn remove(&self, name: &str, force: bool) -> Result<Vec<String>> {
        let record = self.find(name).await?;
        self.remove_image(&record.name, force).await
    }

    async fn resolve_source(&self, source: &Source, options: &GetOptions) -> Result<Resolution> {
        let arch = options.arch.unwrap_or(self.arch());
        let resolved = match source {
            Source::Registry(_) | Source::Layout(_) => {
                if options.digest.is_some() {
                    return Err(Error::Invalid(format!(
                        "{source} is verified by its manifest: pin it as REF@sha256:… instead of giving a digest"
                    )));
                }
                match self.resolve_oci_source(source, arch, options.progress()).await? {
                    OciSource::Cloud(resolved) => resolved,
                    OciSource::Container { origin, .. } => return Ok(Resolution::Container(origin)),
                }
            }
            _ => {
                let mut resolved = self.resolver(arch).resolve(source, options.digest.clone())?;
                self.pick_version(&mut resolved, options.refresh, options.progress()).await?;
                resolved
            }
        };
        Ok(Resolution::Disk(resolved))
    }
}

/// What a [`Store::get`] will do, decided and pinned: see [`Store::plan`].
#[derive(Debug, Clone)]
pub struct Plan {
    key: String,
    work: Work,
}

impl Plan {
    /// The key of the image the plan makes or finds (its `name` in the
    /// store's records).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether carrying it out builds a container image (through the build
    /// queue) rather than pulling a disk.
    pub fn is_build(&self) -> bool {
        matches!(self.work, Work::Build(..))
    }
}

#[derive(Debug, Clone)]
enum Work {
    /// The name of an image in the store.
    Named,
    Pull(Resolved),
    Build(OciOrigin, RootfsFormat),
}

/// What a source turned out to be.
enum Resolution {
    /// A disk to pull.
    Disk(Resolved),
    /// A container image to build, pinned to its manifest's digest.
    Container(OciOrigin),
}

impl Store {
    /// Builds the container image at `origin` as `format` through the
    /// build queue of `options` and waits for it, telling its observer the
    /// stages.
    async fn build_and_wait(&self, origin: &OciOrigin, format: RootfsFormat, options: &GetOptions) -> Result<Pulled> {
        let manager = match &options.builds {
            Some(manager) => manager.clone(),
            None => Manager::new(Arc::new(self.clone()), Default::default())?,
        };
        let observer = &options.observer;
        let build = match observer {
            // Stages and bytes come from the build's record (below); retries only as they happen.
            Some(observer) => {
                manager.create_observed(origin.pinned_ref(), format, Arc::new(Retries(observer.clone())))?
            }
            None => manager.create(origin.pinned_ref(), format)?,
        };
        let build = manager
            .follow(&build.id, |build| {
                if let Some(observer) = &observer {
                    tell(observer.as_ref(), build);
                }
            })
            .await?;
        match (build.status, build.image) {
            (crate::builds::BuildStatus::Ready, Some(key)) => {
                let record = self.lookup(&key)?.ok_or(Error::NotFound { what: "image", name: key })?;
                Ok(Pulled {
                    path: self.image_file(&record),
                    record,
                    cached: false,
                    replaced: Vec::new(),
                    names: Vec::new(),
                })
            }
            _ => Err(Error::BuildFailed {
                kind: build.error_kind.unwrap_or(crate::ErrorKind::Internal),
                reference: build.reference.to_string(),
                message: build.error.unwrap_or_else(|| "no error recorded".to_owned()),
            }),
        }
    }
}

/// Passes a build's retries on to the observer of a get.
struct Retries(Arc<dyn Observer>);

impl crate::container::BuildObserver for Retries {
    fn retrying(&self, error: &(dyn std::error::Error + 'static), delay: std::time::Duration) {
        self.0.retrying(error, delay);
    }

    fn served_by(&self, host: &str) {
        self.0.served_by(host);
    }
}

/// Tells `observer` where `build` is.
fn tell(observer: &dyn Observer, build: &crate::builds::Build) {
    use crate::builds::BuildStatus;
    match (build.status, build.queue_position) {
        (BuildStatus::Pending, Some(position)) => observer.stage(Stage::Queued { position }),
        (BuildStatus::Pulling, _) => {
            observer.stage(Stage::Pulling);
            observer.advanced(build.bytes_pulled);
        }
        (BuildStatus::Converting, _) => observer.stage(Stage::Converting),
        _ => {}
    }
}
