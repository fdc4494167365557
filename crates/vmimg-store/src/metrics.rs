//! The store's metrics, kept in a `prometheus_client` [`Registry`] that a
//! daemon serves as it is ([`Metrics::encode`] gives the OpenMetrics text)
//! and may add its own metrics to ([`Metrics::registry`]).
//!
//! One [`Metrics`] per open [`Store`], its families made and registered
//! once, when the store opens:
//! - builds (`vmimg_builds_*`, `vmimg_build_*`): counted by every
//!   [`Manager`](crate::Manager) on the store, so any number of managers
//!   share one set of families and a scrape never shows a family twice;
//! - pulls (`vmimg_pulls_*`, `vmimg_pull_*`), by the kind of source
//!   (`source="alias"`, `"url"`, `"file"` or `"oci"`): counted by
//!   [`Store::pull`], so they count with or without a manager (a pull
//!   whose future is dropped counts as started only);
//! - the bytes the store takes on disk (`vmimg_store_bytes{part=…}`, the
//!   parts of [`Store::usage`]): measured at every scrape by a collector,
//!   never cached, so a scrape always reads fresh sizes.
//!
//! It owns no business logic: the store and the manager say what happened,
//! this module only counts it.

use crate::error::Result;
use crate::record::Pulled;
use crate::usage::Usage;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry, Unit};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use vmimg_fetch::Progress;

/// Upper bounds, in seconds, of the duration histograms' buckets.
const DURATION_BUCKETS: [f64; 10] = [0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

/// What every vmimg metric's name starts with.
const PREFIX: &str = "vmimg";

/// The store's registry and the metrics vmimg keeps in it.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub(crate) builds: BuildMetrics,
    pub(crate) pulls: PullMetrics,
}

/// What the build manager counts.
pub(crate) struct BuildMetrics {
    pub(crate) started: Counter,
    pub(crate) ready: Counter,
    pub(crate) failed: Counter,
    pub(crate) cancelled: Counter,
    pub(crate) bytes_pulled: Counter,
    pub(crate) queue_length: Gauge,
    pub(crate) running: Gauge,
    pub(crate) duration: Histogram,
}

/// A counter per kind of source.
type BySource = Family<[(&'static str, &'static str); 1], Counter>;

/// What [`Store::pull`] counts.
pub(crate) struct PullMetrics {
    started: BySource,
    ready: BySource,
    failed: BySource,
    cache_hits: BySource,
    bytes_downloaded: Counter,
    duration: Histogram,
}

impl Metrics {
    /// The metrics of the store at `root`, registered under `vmimg_`.
    pub(crate) fn new(root: &Path) -> Metrics {
        let builds = BuildMetrics {
            started: Counter::default(),
            ready: Counter::default(),
            failed: Counter::default(),
            cancelled: Counter::default(),
            bytes_pulled: Counter::default(),
            queue_length: Gauge::default(),
            running: Gauge::default(),
            duration: Histogram::new(DURATION_BUCKETS),
        };
        let pulls = PullMetrics {
            started: BySource::default(),
            ready: BySource::default(),
            failed: BySource::default(),
            cache_hits: BySource::default(),
            bytes_downloaded: Counter::default(),
            duration: Histogram::new(DURATION_BUCKETS),
        };
        let mut registry = Registry::default();
        let ours = registry.sub_registry_with_prefix(PREFIX);
        builds.register(ours);
        pulls.register(ours);
        ours.register_collector(Box::new(StoreBytes { root: root.to_owned() }));
        Metrics { registry: Mutex::new(registry), builds, pulls }
    }

    /// Every metric of the registry as OpenMetrics text (ending `# EOF`),
    /// the store's sizes measured now.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry())
            .expect("encoding into a String cannot fail");
        text
    }

    /// The registry, for a daemon to register its own metrics in (or to
    /// encode it in another format). vmimg's own are under the `vmimg_`
    /// prefix.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().expect("metrics registry")
    }
}

impl BuildMetrics {
    fn register(&self, registry: &mut Registry) {
        register_each(
            registry,
            [
                ("builds_started", "Builds that started running", &self.started),
                ("builds_ready", "Builds that made their disk", &self.ready),
                ("builds_failed", "Builds that failed (an error or a panic)", &self.failed),
                ("builds_cancelled", "Builds cancelled, queued or running", &self.cancelled),
                ("build_bytes_pulled", "Layer bytes builds downloaded", &self.bytes_pulled),
            ],
        );
        register_each(
            registry,
            [
                ("build_queue_length", "Builds waiting for a slot", &self.queue_length),
                ("builds_running", "Builds holding a slot", &self.running),
            ],
        );
        register_duration(registry, "build_duration", "How long builds ran, queue not counted", &self.duration);
    }
}

impl PullMetrics {
    fn register(&self, registry: &mut Registry) {
        register_each(
            registry,
            [
                ("pulls_started", "Pulls asked for", &self.started),
                ("pulls_ready", "Pulls that ended with the image (cache hits too)", &self.ready),
                ("pulls_failed", "Pulls that failed", &self.failed),
                ("pull_cache_hits", "Pulls the store already had the image of", &self.cache_hits),
            ],
        );
        let downloaded = [("pull_bytes_downloaded", "Source bytes pulls downloaded", &self.bytes_downloaded)];
        register_each(registry, downloaded);
        register_duration(registry, "pull_duration", "How long pulls that missed the cache took", &self.duration);
    }

    /// Counts a pull of `source` as started; [`CountedPull::finish`] counts its end.
    /// Counts a pull of a source of `kind` (`alias`, `url`, `file`, `oci`).
    pub(crate) fn start(&self, kind: &'static str) -> CountedPull<'_> {
        let labels = [("source", kind)];
        self.started.get_or_create(&labels).inc();
        CountedPull { metrics: self, labels, started: Instant::now() }
    }
}

/// A pull in flight, counted.
pub(crate) struct CountedPull<'a> {
    metrics: &'a PullMetrics,
    labels: [(&'static str, &'static str); 1],
    started: Instant,
}

impl CountedPull<'_> {
    /// `next`, with the bytes the download receives counted.
    pub(crate) fn progress(&self, next: Option<Arc<dyn Progress>>) -> Option<Arc<dyn Progress>> {
        let downloaded = self.metrics.bytes_downloaded.clone();
        Some(Arc::new(Received::new(next, move |bytes| {
            downloaded.inc_by(bytes);
        })))
    }

    /// Counts how the pull ended, and passes `pulled` on.
    pub(crate) fn finish(self, pulled: Result<Pulled>) -> Result<Pulled> {
        let metrics = self.metrics;
        let count = |family: &BySource| {
            family.get_or_create(&self.labels).inc();
        };
        match &pulled {
            Ok(found) if found.cached => count(&metrics.cache_hits),
            Ok(_) => metrics.duration.observe(self.started.elapsed().as_secs_f64()),
            Err(_) => count(&metrics.failed),
        }
        if pulled.is_ok() {
            count(&metrics.ready);
        }
        pulled
    }
}

/// Registers each metric as its name and help say.
fn register_each<'a, M: Metric + Clone>(
    registry: &mut Registry,
    metrics: impl IntoIterator<Item = (&'a str, &'a str, &'a M)>,
) {
    for (name, help, metric) in metrics {
        registry.register(name, help, metric.clone());
    }
}

/// Registers `histogram` as `vmimg_<name>_seconds`.
fn register_duration(registry: &mut Registry, name: &str, help: &str, histogram: &Histogram) {
    registry.register_with_unit(name, help, Unit::Seconds, histogram.clone());
}

/// A download's progress passed on to `next`, the bytes each attempt
/// receives handed to `count` (what a resumed attempt found on disk is not
/// counted again).
pub(crate) struct Received<F> {
    next: Option<Arc<dyn Progress>>,
    at: AtomicU64,
    count: F,
}

impl<F: Fn(u64) + Send + Sync> Received<F> {
    pub(crate) fn new(next: Option<Arc<dyn Progress>>, count: F) -> Received<F> {
        Received { next, at: AtomicU64::new(0), count }
    }
}

impl<F: Fn(u64) + Send + Sync> Progress for Received<F> {
    fn started(&self, offset: u64, total: Option<u64>) {
        self.at.store(offset, Ordering::Relaxed);
        if let Some(next) = &self.next {
            next.started(offset, total);
        }
    }

    fn advanced(&self, written: u64) {
        let before = self.at.swap(written, Ordering::Relaxed);
        if written > before {
            (self.count)(written - before);
        }
        if let Some(next) = &self.next {
            next.advanced(written);
        }
    }

    fn retrying(&self, error: &(dyn std::error::Error + 'static), delay: std::time::Duration) {
        if let Some(next) = &self.next {
            next.retrying(error, delay);
        }
    }

    fn served_by(&self, host: &str) {
        if let Some(next) = &self.next {
            next.served_by(host);
        }
    }
}

/// `vmimg_store_bytes{part=…}`, measured at each scrape.
#[derive(Debug)]
struct StoreBytes {
    root: PathBuf,
}

impl Collector for StoreBytes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let usage = Usage::of(&self.root);
        let help = "Bytes the store takes on disk, by part";
        let mut family = encoder.encode_descriptor("store", help, Some(&Unit::Bytes), MetricType::Gauge)?;
        for (part, bytes) in usage.by_part() {
            ConstGauge::new(bytes).encode(family.encode_family(&[("part", part)])?)?;
        }
        Ok(())
    }
}
