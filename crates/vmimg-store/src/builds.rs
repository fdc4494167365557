//! The build queue: container images made into disks, a few at a time.
//!
//! The life of a build (one per reference and format: asking twice gives
//! the same build):
//! - `pending`: its record is written to `builds/<id>.json` and it waits
//!   for one of the [`ManagerOptions::concurrency`] slots, with a queue
//!   position;
//! - `pulling`: it holds the build's lock (`locks/build-<id>.lock`, so two
//!   processes never run one build twice), resolves the reference and
//!   fetches the layers into the layer cache (see the `container` module);
//! - `converting`: the layers are in; the disk is being made;
//! - `ready`, with the image's key, or `failed`, with the error.
//!
//! Every change of status is written to the record atomically. A process
//! killed mid-build leaves a record that says `pending`, `pulling` or
//! `converting` while nobody holds its lock: [`Manager::recover_interrupted`]
//! runs such builds again (the store removes their abandoned work; an
//! image is published whole or not at all, so no half-made disk is ever
//! ready). The manager also counts builds, bytes pulled and failures, and
//! times builds ([`Manager::metrics`]).

use crate::container::BuildObserver;
use crate::error::{Error, Result};
use crate::record::{Pulled, RootfsFormat, Timestamp};
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmimg_fetch::{Digest, Hasher};
use vmimg_oci::{OciImage, Reference};

/// A build record larger than this is refused as corrupt.
const MAX_BUILD_RECORD: u64 = 1 << 20;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildStatus {
    Pending,
    Pulling,
    Converting,
    Ready,
    Failed,
}

impl BuildStatus {
    pub fn is_done(self) -> bool {
        matches!(self, BuildStatus::Ready | BuildStatus::Failed)
    }

    pub fn name(self) -> &'static str {
        match self {
            BuildStatus::Pending => "pending",
            BuildStatus::Pulling => "pulling",
            BuildStatus::Converting => "converting",
            BuildStatus::Ready => "ready",
            BuildStatus::Failed => "failed",
        }
    }
}

/// One build, as its record keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Build {
    pub id: String,
    /// The reference asked for.
    pub reference: String,
    pub format: RootfsFormat,
    pub status: BuildStatus,
    /// Place in the queue of a pending build (1 is next), in this process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<usize>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The manifest digest the reference named when the build ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// The ready image's key in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Layer bytes downloaded (cached layers cost nothing).
    #[serde(default)]
    pub bytes_pulled: u64,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub updated_at: String,
}

/// Bytes on disk of what builds make and use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Every image in the store (disks and records).
    pub image_bytes: u64,
    /// The layer cache.
    pub layer_cache_bytes: u64,
}

/// Build durations in seconds, as a cumulative histogram.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Histogram {
    /// (upper bound in seconds, builds that took at most that long).
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

const DURATION_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

impl Histogram {
    fn new() -> Histogram {
        Histogram { buckets: DURATION_BUCKETS.iter().map(|&b| (b, 0)).collect(), sum_seconds: 0.0, count: 0 }
    }

    fn observe(&mut self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        for (bound, count) in &mut self.buckets {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.sum_seconds += seconds;
        self.count += 1;
    }
}

/// The manager's counters at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    pub builds_started: u64,
    pub builds_ready: u64,
    pub builds_failed: u64,
    /// Layer bytes downloaded by builds.
    pub bytes_pulled: u64,
    /// Builds waiting for a slot.
    pub queue_length: usize,
    /// Builds holding a slot.
    pub running: usize,
    pub build_duration: Histogram,
}

impl Metrics {
    /// The Prometheus text exposition of the counters.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            out.push_str(&format!("# HELP vmimg_{name} {help}\n# TYPE vmimg_{name} {kind}\n{value}"));
        };
        let line = |name: &str, value: u64| format!("vmimg_{name} {value}\n");
        metric("builds_started_total", "counter", "Builds started.", line("builds_started_total", self.builds_started));
        metric(
            "builds_ready_total",
            "counter",
            "Builds that made their disk.",
            line("builds_ready_total", self.builds_ready),
        );
        metric(
            "builds_failed_total",
            "counter",
            "Builds that failed.",
            line("builds_failed_total", self.builds_failed),
        );
        metric(
            "build_bytes_pulled_total",
            "counter",
            "Layer bytes downloaded.",
            line("build_bytes_pulled_total", self.bytes_pulled),
        );
        metric(
            "build_queue_length",
            "gauge",
            "Builds waiting for a slot.",
            line("build_queue_length", self.queue_length as u64),
        );
        metric("builds_running", "gauge", "Builds running.", line("builds_running", self.running as u64));
        let h = &self.build_duration;
        let mut histogram: String = h
            .buckets
            .iter()
            .map(|(le, n)| format!("vmimg_build_duration_seconds_bucket{{le=\"{le}\"}} {n}\n"))
            .collect();
        histogram.push_str(&format!("vmimg_build_duration_seconds_bucket{{le=\"+Inf\"}} {}\n", h.count));
        histogram.push_str(&format!("vmimg_build_duration_seconds_sum {}\n", h.sum_seconds));
        histogram.push_str(&format!("vmimg_build_duration_seconds_count {}\n", h.count));
        metric("build_duration_seconds", "histogram", "How long builds took.", histogram);
        out
    }
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
/// print!("{}", manager.metrics().to_prometheus());
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
    /// Bumped at every change, for [`Manager::wait`].
    changes: tokio::sync::watch::Sender<u64>,
    counters: Counters,
}

#[derive(Default)]
struct State {
    /// The builds this process runs or has run.
    builds: HashMap<String, Build>,
    /// Pending builds, next first.
    queue: VecDeque<String>,
    running: usize,
}

#[derive(Default)]
struct Counters {
    started: AtomicU64,
    ready: AtomicU64,
    failed: AtomicU64,
    bytes_pulled: AtomicU64,
    durations: Mutex<Option<Histogram>>,
}

impl Manager {
    pub fn new(store: Arc<Store>, options: ManagerOptions) -> Result<Manager> {
        let dir = store.root().join("builds");
        std::fs::create_dir_all(&dir).map_err(Error::io("cannot create", &dir))?;
        let inner = Inner {
            store,
            slots: tokio::sync::Semaphore::new(options.concurrency.max(1)),
            state: Mutex::default(),
            changes: tokio::sync::watch::Sender::new(0),
            counters: Counters::default(),
        };
        Ok(Manager { inner: Arc::new(inner) })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// Starts building `reference` as `format` and returns at once; the
    /// build of the same reference and format already under way, if any.
    /// Needs a tokio runtime.
    pub fn create(&self, reference: &Reference, format: RootfsFormat) -> Result<Build> {
        let id = build_id(reference, format);
        {
            let state = self.inner.state.lock().expect("build state");
            if let Some(build) = state.builds.get(&id).filter(|b| !b.status.is_done()) {
                return Ok(state.with_position(build.clone()));
            }
        }
        let time = Timestamp::now().to_string();
        let build = Build {
            id: id.clone(),
            reference: reference.to_string(),
            format,
            status: BuildStatus::Pending,
            queue_position: None,
            error: None,
            digest: None,
            image: None,
            bytes_pulled: 0,
            created_at: time.clone(),
            updated_at: time,
        };
        self.inner.save(&build)?;
        Ok(self.enqueue(build))
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
        let state = self.inner.state.lock().expect("build state");
        if let Some(build) = state.builds.get(id) {
            return Ok(Some(state.with_position(build.clone())));
        }
        drop(state);
        self.inner.load(id)
    }

    /// Every build with a record, newest first.
    pub fn list(&self) -> Result<Vec<Build>> {
        let dir = self.inner.dir();
        let mut builds = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(Error::io("cannot list", &dir))? {
            let name = entry.map_err(Error::io("cannot list", &dir))?.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json")
                && let Some(build) = self.get(id)?
            {
                builds.push(build);
            }
        }
        builds.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.id.cmp(&b.id)));
        Ok(builds)
    }

    /// Waits until build `id` is ready or failed.
    pub async fn wait(&self, id: &str) -> Result<Build> {
        self.follow(id, |_| {}).await
    }

    /// Calls `watch` with the build at every change until it is done.
    pub async fn follow(&self, id: &str, mut watch: impl FnMut(&Build)) -> Result<Build> {
        let mut changes = self.inner.changes.subscribe();
        loop {
            let build = self.get(id)?.ok_or_else(|| Error::NotFound { what: "build", name: id.to_owned() })?;
            watch(&build);
            if build.status.is_done() {
                return Ok(build);
            }
            changes.changed().await.expect("the manager outlives its waiters");
        }
    }

    /// Removes build `id`'s record and, when it made one, its image
    /// (refused while the image has instances unless `force`).
    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let build = self.get(id)?.ok_or_else(|| Error::NotFound { what: "build", name: id.to_owned() })?;
        if !build.status.is_done() {
            return Err(Error::Conflict(format!("build {id} is {}: wait for it to end", build.status.name())));
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
            let running_here = self.inner.state.lock().expect("build state").builds.contains_key(&build.id);
            if build.status.is_done() || running_here {
                continue;
            }
            if self.inner.store.try_lock(&lock_name(&build.id))?.is_none() {
                continue; // another process runs it
            }
            let build = Build { status: BuildStatus::Pending, updated_at: Timestamp::now().to_string(), ..build };
            self.inner.save(&build)?;
            recovered.push(self.enqueue(build));
        }
        Ok(recovered)
    }

    /// Bytes of images and of the layer cache.
    pub fn totals(&self) -> Totals {
        let usage = self.inner.store.usage();
        Totals { image_bytes: usage.images, layer_cache_bytes: usage.layers }
    }

    pub fn metrics(&self) -> Metrics {
        let counters = &self.inner.counters;
        let state = self.inner.state.lock().expect("build state");
        let durations = counters.durations.lock().expect("durations").clone();
        Metrics {
            builds_started: counters.started.load(Ordering::Relaxed),
            builds_ready: counters.ready.load(Ordering::Relaxed),
            builds_failed: counters.failed.load(Ordering::Relaxed),
            bytes_pulled: counters.bytes_pulled.load(Ordering::Relaxed),
            queue_length: state.queue.len(),
            running: state.running,
            build_duration: durations.unwrap_or_else(Histogram::new),
        }
    }

    /// Queues `build` and starts the task that runs it when a slot frees.
    fn enqueue(&self, build: Build) -> Build {
        let id = build.id.clone();
        let queued = {
            let mut state = self.inner.state.lock().expect("build state");
            state.queue.push_back(id.clone());
            state.builds.insert(id.clone(), build.clone());
            state.with_position(build)
        };
        self.inner.changed();
        tokio::spawn(self.inner.clone().run(id));
        queued
    }
}

impl State {
    fn with_position(&self, mut build: Build) -> Build {
        build.queue_position = self.queue.iter().position(|id| *id == build.id).map(|i| i + 1);
        build
    }
}

impl Inner {
    async fn run(self: Arc<Self>, id: String) {
        let _slot = self.slots.acquire().await.expect("open semaphore");
        {
            let mut state = self.state.lock().expect("build state");
            state.queue.retain(|queued| *queued != id);
            state.running += 1;
        }
        self.counters.started.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let outcome = self.build(&id).await;
        let elapsed = started.elapsed();
        self.counters.durations.lock().expect("durations").get_or_insert_with(Histogram::new).observe(elapsed);
        let counter = if outcome.is_ok() { &self.counters.ready } else { &self.counters.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        self.state.lock().expect("build state").running -= 1;
        self.update(&id, |build| match outcome {
            Ok(pulled) => {
                build.status = BuildStatus::Ready;
                build.image = Some(pulled.record.name);
            }
            Err(error) => {
                build.status = BuildStatus::Failed;
                build.error = Some(error.to_string());
            }
        });
    }

    async fn build(self: &Arc<Self>, id: &str) -> Result<Pulled> {
        let _held = self.store.lock(&lock_name(id)).await?;
        self.update(id, |b| b.status = BuildStatus::Pulling);
        let reference = self.build_of(id).reference;
        let reference: Reference = reference.parse().map_err(|e| Error::Invalid(format!("{reference}: {e}")))?;
        let (pinned, image) = self.store.registry()?.image(&reference, self.store.arch().name()).await?;
        let OciImage::Container(image) = image else {
            return Err(Error::Invalid(format!(
                "{reference} is a cloud image, not a container image: pull it to get its disk"
            )));
        };
        self.update(id, |b| b.digest = Some(pinned.digest().clone()));
        let observer = Arc::new(Observer { inner: self.clone(), id: id.to_owned() });
        self.store.build_container(&pinned, &image, self.build_of(id).format, observer).await
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
            build.updated_at = Timestamp::now().to_string();
            build.clone()
        };
        if let Err(error) = self.save(&build) {
            let mut state = self.state.lock().expect("build state");
            let build = state.builds.get_mut(id).expect("a build of this process");
            build.status = BuildStatus::Failed;
            build.error = Some(format!("cannot save the build record: {error}"));
        }
        self.changed();
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

    fn save(&self, build: &Build) -> Result<()> {
        let build = Build { queue_position: None, ..build.clone() };
        crate::fsutil::write_atomic(&self.record_path(&build.id), &serde_json::to_vec_pretty(&build).expect("JSON"))
    }

    fn load(&self, id: &str) -> Result<Option<Build>> {
        let path = self.record_path(id);
        if !path.exists() {
            return Ok(None);
        }
        let text = crate::fsutil::read_bounded(&path, MAX_BUILD_RECORD)?;
        let build = serde_json::from_str(&text).map_err(|e| Error::Record { path, message: e.to_string() })?;
        Ok(Some(build))
    }
}

/// Moves a build to `converting` and counts its bytes.
struct Observer {
    inner: Arc<Inner>,
    id: String,
}

impl BuildObserver for Observer {
    fn converting(&self) {
        self.inner.update(&self.id, |b| b.status = BuildStatus::Converting);
    }

    fn pulled(&self, bytes: u64) {
        self.inner.counters.bytes_pulled.fetch_add(bytes, Ordering::Relaxed);
        if let Some(build) = self.inner.state.lock().expect("build state").builds.get_mut(&self.id) {
            build.bytes_pulled += bytes;
        }
        self.inner.changed();
    }
}

/// A build's id: the same for the same reference and format.
pub fn build_id(reference: &Reference, format: RootfsFormat) -> String {
    let mut hasher = Hasher::new(vmimg_fetch::Algorithm::Sha256);
    hasher.update(format!("{reference} {}", format.name()).as_bytes());
    hasher.finish().hex()[..16].to_owned()
}

fn lock_name(id: &str) -> String {
    format!("build-{id}")
}
