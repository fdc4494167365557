//! The build queue: container images made into disks, a few at a time.
//!
//! The life of a build (one per reference and format: asking twice gives
//! the same build, and one process runs it while others follow it):
//! - `pending`: the process that creates it takes its lock
//!   (`locks/build-<id>.lock`) and holds it until the build ends, writes its
//!   record `builds/<id>.json`, and queues it for one of the
//!   [`ManagerOptions::concurrency`] slots, with a queue position. Another
//!   process asking for the same build finds the lock held and follows
//!   that record rather than running the build twice;
//! - `pulling`: the build's task resolves the reference and fetches the
//!   layers into the layer cache (see the `container` module);
//! - `converting`: the layers are in; the disk is being made;
//! - then it ends: `ready`, with the image's key; `failed`, with the error;
//!   or `cancelled`.
//!
//! Every change of status is written to the record atomically, and the end
//! is written before the lock is released, so whoever takes the lock next
//! reads how the build ended. A build ends only when nothing of it runs
//! any more (see "Cancel"): [`Manager::wait`] returns then, with its work
//! directory removed and its locks released.
//!
//! **Failure.** A build runs in a task of its own, watched by the task that
//! holds its slot: an error ends it `failed` with that error; a panic in
//! it too, with "the build task panicked: MESSAGE". Either way its slot
//! is freed, it is counted and its waiters hear of it.
//!
//! **Interruption.** A process killed mid-build leaves a record that says
//! `pending`, `pulling` or `converting` while nobody holds the build's lock.
//! [`Manager::follow`] and [`Manager::wait`] report such a build as
//! `failed`, interrupted (without changing its record), rather than waiting
//! for ever; [`Manager::recover_interrupted`] runs it again (the store
//! removes its abandoned work; an image is published whole or not at all,
//! so no half-made disk is ever ready). A build this process runs is
//! followed through an in-process signal; one another process runs, by
//! reading its record every 200 ms and checking that its lock is held.
//!
//! **Cancel.** [`Manager::cancel`] takes a queued build out of the queue
//! and aborts a running build's task; either ends `cancelled`, its record
//! kept so that anyone asking later learns how it ended ([`Manager::delete`]
//! removes it, and refuses a build that has not ended). Nothing of it is
//! left: no work directory, no partial layer download, no lock (layers
//! already verified into the layer cache stay: gc collects those no image
//! names). The rule that makes aborting safe: a blocking job of the build
//! (removing old work, applying a layer, making the filesystem) cannot be
//! stopped midway and outlives the aborted task, so the work directory and
//! the image key's lock are shared by the task and each blocking job and
//! released only by the last of them (the `container` module); the slot is
//! freed, and the build ends, only after that too. A build another process
//! runs is cancelled through a marker file, `builds/<id>.cancel`, which
//! that process looks for every 200 ms; one nobody runs (interrupted) is
//! marked `cancelled` at once.
//!
//! The builds are counted in the store's metrics ([`Store::metrics`]).

use crate::container::BuildObserver;
use crate::error::{Error, Result};
use crate::kind::ErrorKind;
use crate::locks::LockFile;
use crate::oci::OciSource;
use crate::record::{Pulled, RootfsFormat, Timestamp};
use crate::source::OciRef;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinError;
use vmimg_fetch::{Digest, Hasher};
use vmimg_oci::Reference;

/// How often a build run elsewhere is looked at: its record and lock while
/// followed; its cancel marker while run here.
const POLL: Duration = Duration::from_millis(200);

/// How often, and how far apart, `create` tries again a build lock that is
/// held while no record says the build runs: its holder is between taking
/// the lock and writing the record, or only checking that a runner lives.
const CLAIM_TRIES: usize = 50;
const CLAIM_PAUSE: Duration = Duration::from_millis(10);

/// How the manager runs builds.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Builds that run at once; the others wait in order.
    pub concurrency: usize,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions { concurrency: 2 }
    }
}

/// Where a build is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildStatus {
    Pending,
    Pulling,
    Converting,
    Ready,
    Failed,
    /// Stopped by [`Manager::cancel`], queued or running.
    Cancelled,
}

impl BuildStatus {
    /// Whether the build has ended: ready, failed or cancelled.
    pub fn is_done(self) -> bool {
        matches!(self, BuildStatus::Ready | BuildStatus::Failed | BuildStatus::Cancelled)
    }

    pub fn name(self) -> &'static str {
        match self {
            BuildStatus::Pending => "pending",
            BuildStatus::Pulling => "pulling",
            BuildStatus::Converting => "converting",
            BuildStatus::Ready => "ready",
            BuildStatus::Failed => "failed",
            BuildStatus::Cancelled => "cancelled",
        }
    }
}

/// One build, as its record keeps it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Build {
    pub id: String,
    /// The reference asked for.
    #[serde(with = "crate::record::as_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub reference: OciRef,
    pub format: RootfsFormat,
    pub status: BuildStatus,
    /// Place in the queue of a pending build (1 is next), in this process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<usize>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The kind of that error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
    /// The manifest digest the reference named when the build ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub digest: Option<Digest>,
    /// The ready image's key in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Layer bytes downloaded (cached layers cost nothing).
    #[serde(default)]
    pub bytes_pulled: u64,
    /// RFC 3339, UTC.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: Timestamp,
}

/// Bytes on disk of what builds make and use.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Every image in the store (disks and records).
    pub image_bytes: u64,
    /// The layer cache.
    pub layer_cache_bytes: u64,
}

/// Runs builds, keeps their records, and answers about them.
///
/// ```no_run
/// use std::sync::Arc;
/// use vmimg_oci::Reference;
/// use vmimg_store::{BuildStatus, Manager, ManagerOptions, RootfsFormat, Store, StoreOptions};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let store = Arc::new(Store::open(StoreOptions::default())?);
/// let manager = Manager::new(store, ManagerOptions { concurrency: 2 })?;
/// manager.recover_interrupted()?; // builds a killed process left, queued again
/// let build = manager.create(&Reference::parse("alpine:3.18")?, RootfsFormat::Ext4)?; // returns at once
/// println!("{} is {} (queue position {:?})", build.id, build.status.name(), build.queue_position);
/// let done = manager.wait(&build.id).await?;
/// assert_eq!(done.status, BuildStatus::Ready);
/// let record = manager.store().lookup(done.image.as_deref().unwrap())?.unwrap();
/// println!("{} runs {:?}", manager.store().image_file(&record).display(), record.container.unwrap().run.command());
/// print!("{}", manager.store().metrics().encode());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    slots: tokio::sync::Semaphore,
    state: Mutex<State>,
    /// Bumped at every change, for [`Manager::follow`].
    changes: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// The builds this process runs or has run.
    builds: HashMap<String, Build>,
    /// Pending builds, next first.
    queue: VecDeque<String>,
    /// The builds this process has queued or runs, until they end.
    jobs: HashMap<String, Job>,
}

/// A build this process has queued or runs.
struct Job {
    /// Set to ask the build to stop.
    cancel: watch::Sender<bool>,
    /// The callers' observers of the build ([`Manager::create_observed`]).
    observers: Vec<Arc<dyn BuildObserver>>,
}

/// Who runs a build asked for.
enum Claim {
    /// This process: its lock, held until the build ends.
    Ours(LockFile),
    /// This process already, or another one: the build as it is.
    Found(Box<Build>),
}

impl Manager {
    /// Nothing is written until a build is (listing builds writes nothing).
    pub fn new(store: Arc<Store>, options: ManagerOptions) -> Result<Manager> {
        let inner = Inner {
            store,
            slots: tokio::sync::Semaphore::new(options.concurrency.max(1)),
            state: Mutex::default(),
            changes: watch::Sender::new(0),
        };
        Ok(Manager { inner: Arc::new(inner) })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// Starts building `reference` as `format` and returns at once; the
    /// build of the same reference and format already under way, if any, in
    /// this process or another (which goes on running it: follow it with
    /// [`Manager::wait`]). Needs a tokio runtime. Should another process
    /// hold the build's lock while no record says it runs the build (it is
    /// between two steps), this waits for it a little, at most half a
    /// second, on the calling thread.
    pub fn create(&self, reference: impl Into<OciRef>, format: RootfsFormat) -> Result<Build> {
        self.start(reference.into(), format, None)
    }

    /// [`Manager::create`], with `observer` hearing the build's progress as
    /// it happens (layer bytes as they arrive, the registry's retries, the
    /// start of the conversion). It is called from the build's task, as part of the
    /// build: a panic in it fails the build. A build already under way in
    /// this process gets `observer` too; one another process runs is
    /// followed through its record, and `observer` hears nothing of it.
    pub fn create_observed(
        &self,
        reference: impl Into<OciRef>,
        format: RootfsFormat,
        observer: Arc<dyn BuildObserver>,
    ) -> Result<Build> {
        self.start(reference.into(), format, Some(observer))
    }

    fn start(
        &self,
        reference: OciRef,
        format: RootfsFormat,
        observer: Option<Arc<dyn BuildObserver>>,
    ) -> Result<Build> {
        let id = build_id(&reference, format);
        let lock = match self.inner.claim(&id, observer.as_ref())? {
            Claim::Ours(lock) => lock,
            Claim::Found(build) => return Ok(*build),
        };
        let time = Timestamp::now();
        let build = Build {
            id,
            reference,
            format,
            status: BuildStatus::Pending,
            queue_position: None,
            error: None,
            error_kind: None,
            digest: None,
            image: None,
            bytes_pulled: 0,
            created_at: time,
            updated_at: time,
        };
        self.enqueue(build, lock, observer.into_iter().collect())
    }

    /// Builds an image already in a registry the caller controls (one
    /// pushed to it locally), named by digest so nothing can move it.
    pub fn import(&self, reference: &Reference, format: RootfsFormat) -> Result<Build> {
        if reference.digest().is_none() {
            return Err(Error::Invalid(format!("import {reference}: name the image by digest (NAME@sha256:...)")));
        }
        self.create(reference, format)
    }

    /// The build `id`, from this process or from its record.
    pub fn get(&self, id: &str) -> Result<Option<Build>> {
        self.inner.get(id)
    }

    /// Every build with a record, newest first.
    pub fn list(&self) -> Result<Vec<Build>> {
        let dir = self.inner.dir();
        let mut builds = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(builds),
            entries => entries.map_err(Error::io("list", &dir))?,
        };
        for entry in entries {
            let name = entry.map_err(Error::io("list", &dir))?.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json")
                && let Some(build) = self.get(id)?
            {
                builds.push(build);
            }
        }
        builds.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.id.cmp(&b.id)));
        Ok(builds)
    }

    /// Waits until build `id` has ended: ready, failed (interrupted
    /// included, see [`Manager::follow`]) or cancelled.
    pub async fn wait(&self, id: &str) -> Result<Build> {
        self.follow(id, |_| {}).await
    }

    /// Calls `watch` with the build at every change until it has ended. A
    /// build another process runs is read from its record every 200 ms; if
    /// that process has died (the record says the build runs, nobody holds
    /// its lock), the build is reported `failed`, interrupted, its record
    /// left as it is for [`Manager::recover_interrupted`].
    pub async fn follow(&self, id: &str, mut watch: impl FnMut(&Build)) -> Result<Build> {
        let mut changes = self.inner.changes.subscribe();
        let mut seen = None;
        loop {
            let build = self.inner.current(id)?;
            if seen.as_ref() != Some(&build) {
                watch(&build);
            }
            if build.status.is_done() {
                return Ok(build);
            }
            seen = Some(build);
            if self.inner.runs(id) {
                changes.changed().await.expect("the manager outlives its waiters");
            } else {
                let _ = tokio::time::timeout(POLL, changes.changed()).await;
            }
        }
    }

    /// Cancels build `id` and returns it as it ended: `cancelled`, or
    /// ready or failed if it ended first (a build that has ended is
    /// returned as it is).
    ///
    /// A build this process runs is taken out of the queue, or its task
    /// aborted; this returns once nothing of it is left (its blocking jobs
    /// ended, its work directory, partial layer downloads and locks gone).
    /// A build another process runs is asked to stop through its cancel
    /// marker, and this returns once that process has ended it. A build
    /// nobody runs any more (interrupted) is marked cancelled here; gc
    /// removes what its process left in `tmp/`.
    pub async fn cancel(&self, id: &str) -> Result<Build> {
        if self.inner.ask_to_cancel(id) {
            return self.wait(id).await;
        }
        let build = self.get(id)?.ok_or_else(|| not_found(id))?;
        if build.status.is_done() {
            return Ok(build);
        }
        let Some(_free) = self.inner.store.try_lock(&lock_name(id))? else {
            crate::fsutil::write_atomic(&self.inner.cancel_marker(id), b"")?;
            return self.wait(id).await;
        };
        // Nobody runs it: read it again under its lock, and end it here.
        let build = self.inner.load(id)?.ok_or_else(|| not_found(id))?;
        if build.status.is_done() {
            return Ok(build);
        }
        let build =
            Build { status: BuildStatus::Cancelled, queue_position: None, updated_at: Timestamp::now(), ..build };
        self.inner.save(&build)?;
        self.inner.store.metrics().builds.cancelled.inc();
        Ok(build)
    }

    /// Removes build `id`'s record and, when it made one, its image
    /// (refused while the image has instances unless `force`). A build
    /// that has not ended is refused: cancel it first.
    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let build = self.get(id)?.ok_or_else(|| not_found(id))?;
        if !build.status.is_done() {
            return Err(Error::Conflict(format!(
                "build {id} is {}: cancel it, or wait for it to end, first",
                build.status.name()
            )));
        }
        if let Some(key) = &build.image
            && self.inner.store.lookup(key)?.is_some()
        {
            self.inner.store.remove_image(key, force).await?;
        }
        self.inner.state.lock().expect("build state").builds.remove(id);
        crate::fsutil::remove_file(&self.inner.record_path(id))
    }

    /// Runs again the builds a killed process left unfinished (their
    /// records say pending, pulling or converting and nobody holds their
    /// lock); returns them, queued.
    pub fn recover_interrupted(&self) -> Result<Vec<Build>> {
        let mut recovered = Vec::new();
        for build in self.list()? {
            if build.status.is_done() || self.inner.runs(&build.id) {
                continue;
            }
            let Some(lock) = self.inner.hold(&build.id)? else {
                continue; // another process runs it
            };
            // Read again under the lock: it may have ended meanwhile.
            let Some(build) = self.inner.load(&build.id)?.filter(|b| !b.status.is_done()) else {
                continue;
            };
            let build = Build {
                status: BuildStatus::Pending,
                error: None,
                error_kind: None,
                updated_at: Timestamp::now(),
                ..build
            };
            recovered.push(self.enqueue(build, lock, Vec::new())?);
        }
        Ok(recovered)
    }

    /// Bytes of images and of the layer cache.
    pub fn totals(&self) -> Totals {
        let usage = self.inner.store.usage();
        Totals { image_bytes: usage.images, layer_cache_bytes: usage.layers }
    }

    /// Queues `build` (`lock` is its lock), writes its record, and starts
    /// the task that runs it when a slot frees.
    fn enqueue(&self, build: Build, lock: LockFile, observers: Vec<Arc<dyn BuildObserver>>) -> Result<Build> {
        let id = build.id.clone();
        let (cancel, cancelled) = watch::channel(false);
        let queued = {
            let mut state = self.inner.state.lock().expect("build state");
            state.queue.push_back(id.clone());
            state.builds.insert(id.clone(), build.clone());
            state.jobs.insert(id.clone(), Job { cancel, observers });
            state.with_position(build.clone())
        };
        if let Err(error) = self.inner.save(&build) {
            let mut state = self.inner.state.lock().expect("build state");
            state.queue.retain(|queued| *queued != id);
            state.builds.remove(&id);
            state.jobs.remove(&id);
            return Err(error);
        }
        self.inner.store.metrics().builds.queue_length.inc();
        self.inner.changed();
        tokio::spawn(self.inner.clone().run(id, lock, cancelled));
        Ok(queued)
    }
}

impl State {
    fn with_position(&self, mut build: Build) -> Build {
        build.queue_position = self.queue.iter().position(|id| *id == build.id).map(|i| i + 1);
        build
    }
}

impl Inner {
    /// Holds a slot for build `id` and runs it in a task of its own, so
    /// that whatever way it ends (done, failed, panicked, aborted) the
    /// build ends with the slot freed and its lock released.
    async fn run(self: Arc<Self>, id: String, lock: LockFile, mut cancel: watch::Receiver<bool>) {
        let metrics = &self.store.metrics().builds;
        let slot = tokio::select! {
            biased; // a build asked to stop does not start
            () = self.cancel_asked(&id, &mut cancel) => None,
            slot = self.slots.acquire() => Some(slot.expect("the slots are never closed")),
        };
        self.state.lock().expect("build state").queue.retain(|queued| *queued != id);
        metrics.queue_length.dec();
        let Some(slot) = slot else {
            return self.finish(&id, lock, |build| build.status = BuildStatus::Cancelled);
        };
        metrics.started.inc();
        metrics.running.inc();
        let started = Instant::now();
        let (observer, released) = Observer::new(self.clone(), &id);
        let mut task = tokio::spawn(self.clone().build(id.clone(), observer));
        let joined = tokio::select! {
            joined = &mut task => joined,
            () = self.cancel_asked(&id, &mut cancel) => {
                task.abort();
                task.await
            }
        };
        // The observer is dropped when nothing of the build runs any more.
        let _ = released.await;
        metrics.duration.observe(started.elapsed().as_secs_f64());
        metrics.running.dec();
        drop(slot);
        self.finish(&id, lock, |build| end(build, joined));
    }

    async fn build(self: Arc<Self>, id: String, observer: Arc<Observer>) -> Result<Pulled> {
        self.update(&id, |b| b.status = BuildStatus::Pulling);
        let build = self.build_of(&id);
        let reference = build.reference.clone();
        let progress = crate::container::BuildProgress(observer.clone());
        let resolved = self.store.resolve_oci_source(&reference.clone().into(), self.store.arch(), &progress).await?;
        let OciSource::Container { origin, image } = resolved else {
            return Err(Error::Invalid(format!(
                "{reference} is a cloud image, not a container image: pull it to get its disk"
            )));
        };
        self.update(&id, |b| b.digest = Some(origin.digest().clone()));
        self.store.build_container(&origin, &image, build.format, observer).await
    }

    /// Returns when build `id` is asked to stop: by [`Manager::cancel`] in
    /// this process (`local`), or by its cancel marker from another.
    async fn cancel_asked(&self, id: &str, local: &mut watch::Receiver<bool>) {
        let marker = self.cancel_marker(id);
        while !*local.borrow_and_update() && !marker.exists() {
            if let Ok(Err(_)) = tokio::time::timeout(POLL, local.changed()).await {
                tokio::time::sleep(POLL).await; // nobody here can ask any more: the marker alone
            }
        }
    }

    /// Ends build `id` as `end` says. Its record is written first and its
    /// lock released after, so whoever takes the lock reads the end; then
    /// this process's state changes and the waiters hear of it.
    fn finish(&self, id: &str, lock: LockFile, end: impl FnOnce(&mut Build)) {
        let mut build = self.build_of(id);
        end(&mut build);
        build.queue_position = None;
        build.updated_at = Timestamp::now();
        if let Err(error) = self.save(&build) {
            unsaved(&mut build, &error);
        }
        let _ = crate::fsutil::remove_file(&self.cancel_marker(id));
        drop(lock);
        let metrics = &self.store.metrics().builds;
        match build.status {
            BuildStatus::Ready => metrics.ready.inc(),
            BuildStatus::Cancelled => metrics.cancelled.inc(),
            _ => metrics.failed.inc(),
        };
        {
            let mut state = self.state.lock().expect("build state");
            state.builds.insert(id.to_owned(), build);
            state.jobs.remove(id);
        }
        self.changed();
    }

    /// Build `id`'s lock, or the build if this process or another runs it
    /// (its record not ended while its lock is held); with `observer` added
    /// to it if this process runs it.
    fn claim(&self, id: &str, observer: Option<&Arc<dyn BuildObserver>>) -> Result<Claim> {
        for _ in 0..CLAIM_TRIES {
            if let Some(build) = self.join(id, observer) {
                return Ok(Claim::Found(Box::new(build)));
            }
            if let Some(lock) = self.hold(id)? {
                return Ok(Claim::Ours(lock));
            }
            if let Some(build) = self.load(id)?.filter(|b| !b.status.is_done()) {
                return Ok(Claim::Found(Box::new(build)));
            }
            std::thread::sleep(CLAIM_PAUSE);
        }
        Err(Error::Conflict(format!(
            "build {id}: another process holds its lock but no record says it runs the build; try again"
        )))
    }

    /// Build `id` if this process has it queued or running, with `observer`
    /// added to its observers.
    fn join(&self, id: &str, observer: Option<&Arc<dyn BuildObserver>>) -> Option<Build> {
        let mut state = self.state.lock().expect("build state");
        state.jobs.get_mut(id)?.observers.extend(observer.cloned());
        Some(state.with_position(state.builds[id].clone()))
    }

    /// Build `id`'s lock if nobody holds it; a cancel marker left from
    /// before is removed.
    fn hold(&self, id: &str) -> Result<Option<LockFile>> {
        let lock = self.store.try_lock(&lock_name(id))?;
        if lock.is_some() {
            crate::fsutil::remove_file(&self.cancel_marker(id))?;
        }
        Ok(lock)
    }

    /// Whether this process has build `id` queued or running.
    fn runs(&self, id: &str) -> bool {
        self.state.lock().expect("build state").jobs.contains_key(id)
    }

    /// Asks build `id` to stop if this process runs it; whether it does.
    fn ask_to_cancel(&self, id: &str) -> bool {
        let state = self.state.lock().expect("build state");
        state.jobs.get(id).map(|job| job.cancel.send_replace(true)).is_some()
    }

    fn get(&self, id: &str) -> Result<Option<Build>> {
        let state = self.state.lock().expect("build state");
        if let Some(build) = state.builds.get(id) {
            return Ok(Some(state.with_position(build.clone())));
        }
        drop(state);
        self.load(id)
    }

    /// Build `id` as it is now: one that another process should be running
    /// while nobody holds its lock is reported failed, interrupted.
    fn current(&self, id: &str) -> Result<Build> {
        let build = self.get(id)?.ok_or_else(|| not_found(id))?;
        if build.status.is_done() || self.runs(id) {
            return Ok(build);
        }
        let Some(_free) = self.store.try_lock(&lock_name(id))? else {
            return Ok(build);
        };
        // Whoever ran it wrote its end before releasing the lock: read it again.
        let build = self.load(id)?.ok_or_else(|| not_found(id))?;
        Ok(if build.status.is_done() { build } else { interrupted(build) })
    }

    fn build_of(&self, id: &str) -> Build {
        self.state.lock().expect("build state").builds[id].clone()
    }

    /// Changes build `id`, saves its record (a failure to save is kept as
    /// the build's error) and tells the waiters.
    fn update(&self, id: &str, change: impl FnOnce(&mut Build)) {
        let build = {
            let mut state = self.state.lock().expect("build state");
            let build = state.builds.get_mut(id).expect("a build of this process");
            change(build);
            build.updated_at = Timestamp::now();
            build.clone()
        };
        if let Err(error) = self.save(&build) {
            let mut state = self.state.lock().expect("build state");
            unsaved(state.builds.get_mut(id).expect("a build of this process"), &error);
        }
        self.changed();
    }

    /// The observers the callers gave build `id`.
    fn observers(&self, id: &str) -> Vec<Arc<dyn BuildObserver>> {
        let state = self.state.lock().expect("build state");
        state.jobs.get(id).map(|job| job.observers.clone()).unwrap_or_default()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    fn dir(&self) -> PathBuf {
        self.store.root().join("builds")
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir().join(format!("{id}.json"))
    }

    /// The file that asks the process running build `id` to cancel it.
    fn cancel_marker(&self, id: &str) -> PathBuf {
        self.dir().join(format!("{id}.cancel"))
    }

    fn save(&self, build: &Build) -> Result<()> {
        let build = Build { queue_position: None, ..build.clone() };
        let dir = self.dir();
        std::fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        crate::record::save_json(&self.record_path(&build.id), &build)
    }

    fn load(&self, id: &str) -> Result<Option<Build>> {
        let path = self.record_path(id);
        if !path.exists() {
            return Ok(None);
        }
        crate::record::load_json(&path).map(Some)
    }
}

/// Moves a build to `converting`, counts its bytes, and tells the callers'
/// observers. The store holds it until nothing of the build runs any more;
/// its drop then tells the task that holds the build's slot.
struct Observer {
    inner: Arc<Inner>,
    id: String,
    _released: oneshot::Sender<()>,
}

impl Observer {
    /// The observer of build `id`, and what hears that it was dropped.
    fn new(inner: Arc<Inner>, id: &str) -> (Arc<Observer>, oneshot::Receiver<()>) {
        let (released, dropped) = oneshot::channel();
        (Arc::new(Observer { inner, id: id.to_owned(), _released: released }), dropped)
    }
}

impl BuildObserver for Observer {
    fn converting(&self) {
        self.inner.update(&self.id, |b| b.status = BuildStatus::Converting);
        for observer in self.inner.observers(&self.id) {
            observer.converting();
        }
    }

    fn retrying(&self, error: &(dyn std::error::Error + 'static), delay: Duration) {
        for observer in self.inner.observers(&self.id) {
            observer.retrying(error, delay);
        }
    }

    fn served_by(&self, host: &str) {
        for observer in self.inner.observers(&self.id) {
            observer.served_by(host);
        }
    }

    fn pulled(&self, bytes: u64) {
        self.inner.store.metrics().builds.bytes_pulled.inc_by(bytes);
        if let Some(build) = self.inner.state.lock().expect("build state").builds.get_mut(&self.id) {
            build.bytes_pulled += bytes;
        }
        self.inner.changed();
        for observer in self.inner.observers(&self.id) {
            observer.pulled(bytes);
        }
    }
}

/// Writes into `build` how its task ended.
fn end(build: &mut Build, joined: std::result::Result<Result<Pulled>, JoinError>) {
    match joined {
        Ok(Ok(pulled)) => {
            build.status = BuildStatus::Ready;
            build.image = Some(pulled.record.name);
        }
        Ok(Err(error)) => fail(build, error.kind(), error.to_string()),
        Err(aborted) if aborted.is_cancelled() => build.status = BuildStatus::Cancelled,
        Err(panicked) => fail(
            build,
            ErrorKind::Internal,
            format!("the build task panicked: {}", panic_message(panicked.into_panic())),
        ),
    }
}

/// Build `build`'s record could not be saved: the build's error, or for a
/// build that failed already (a full disk fails both), a note after its own
/// error, which stays the one told.
fn unsaved(build: &mut Build, error: &Error) {
    match (&build.status, &mut build.error) {
        (BuildStatus::Failed, Some(message)) => {
            message.push_str(&format!(" (its build record was not saved: {error})"))
        }
        _ => fail(build, ErrorKind::Internal, format!("cannot save the build record: {error}")),
    }
}

fn fail(build: &mut Build, kind: ErrorKind, error: String) {
    build.status = BuildStatus::Failed;
    build.error = Some(error);
    build.error_kind = Some(kind);
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    match panic.downcast::<String>() {
        Ok(message) => *message,
        Err(panic) => panic.downcast_ref::<&str>().map_or("(no message)", |m| m).to_owned(),
    }
}

/// Build `build` as reported when its process died while running it.
fn interrupted(build: Build) -> Build {
    let error = format!(
        "interrupted: the process that ran this build stopped while it was {}; recovering interrupted builds \
         (Manager::recover_interrupted) runs it again",
        build.status.name()
    );
    Build {
        status: BuildStatus::Failed,
        error: Some(error),
        error_kind: Some(ErrorKind::Unavailable),
        queue_position: None,
        ..build
    }
}

fn not_found(id: &str) -> Error {
    Error::NotFound { what: "build", name: id.to_owned() }
}

/// A build's id: the same for the same reference and format.
pub fn build_id(reference: &OciRef, format: RootfsFormat) -> String {
    let mut hasher = Hasher::new(vmimg_fetch::Algorithm::Sha256);
    hasher.update(format!("{reference} {}", format.name()).as_bytes());
    hasher.finish().hex()[..16].to_owned()
}

fn lock_name(id: &str) -> String {
    format!("build-{id}")
}
