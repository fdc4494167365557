//! The build manager as a library user sees it: builds queued behind a
//! concurrency limit with their positions, one build per reference and
//! format (run by one process, followed by the others), failures and
//! panics that keep their error, builds a killed process left behind
//! noticed and run again, cancels that leave nothing behind, totals,
//! metrics and deletion; against a real registry, or the test server
//! playing a slow one.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmimg_oci::Reference;
use vmimg_store::{
    Build, BuildObserver, BuildStatus, GcOptions, Manager, ManagerOptions, RootfsFormat, Store, StoreOptions, build_id,
};
use vmimg_testserver::oci_image::ImageSpec;
use vmimg_testserver::{Fault, RegistryServer, TestServer};

/// Pushes a one-layer image whose only file says `text`.
fn push(registry: &RegistryServer, tmp: &Path, name: &str, text: &str) -> Reference {
    let dir = tmp.join(name);
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::write(dir.join("etc/text"), text).unwrap();
    ImageSpec::new().dir_layer(&dir).cmd(&["/bin/sh"]).push(&registry.host(), &format!("test/{name}"), "1").unwrap();
    Reference::parse(&format!("{}/test/{name}:1", registry.host())).unwrap()
}

fn open_manager(store: &Path, concurrency: usize) -> Manager {
    let store = Store::open(StoreOptions { root: Some(store.to_owned()), ..Default::default() }).unwrap();
    Manager::new(Arc::new(store), ManagerOptions { concurrency }).unwrap()
}

/// Writes the record a process pulling the layers of build `format` of
/// `reference` keeps; returns the build's id.
fn record_pulling(store: &Path, reference: &Reference, format: RootfsFormat) -> String {
    let id = build_id(&reference.into(), format);
    let record = serde_json::json!({
        "id": id, "reference": reference.to_string(), "format": format.name(), "status": "pulling",
        "bytes_pulled": 12, "created_at": "2026-11-25T00:00:00Z", "updated_at": "2026-11-25T00:00:01Z"
    });
    fs::create_dir_all(store.join("builds")).unwrap();
    fs::write(store.join("builds").join(format!("{id}.json")), record.to_string()).unwrap();
    id
}

/// Holds build `id`'s lock, as the process running it does (until it dies).
fn hold_build_lock(store: &Path, id: &str) -> fs::File {
    let lock = fs::File::create(store.join("locks").join(format!("build-{id}.lock"))).unwrap();
    lock.lock().unwrap();
    lock
}

/// The samples of an OpenMetrics text by series (`name{label="value"}`),
/// the text checked to end as OpenMetrics says.
fn samples(text: &str) -> HashMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "{text}");
    let sample = |line: &str| {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
        (series.to_owned(), value.parse().unwrap_or_else(|_| panic!("not a number: {line:?}")))
    };
    text.lines().filter(|line| !line.starts_with('#')).map(sample).collect()
}

/// The value of `series` in the store's metrics now.
fn metric(store: &Store, series: &str) -> f64 {
    let text = store.metrics().encode();
    *samples(&text).get(series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Nothing of a build is left: no work or partial download in `tmp/`, no
/// lock file but the store lease's, no cancel marker.
fn assert_nothing_left(store: &Path) {
    let names = |dir: &str| -> Vec<String> {
        let entries = fs::read_dir(store.join(dir)).unwrap();
        entries.map(|e| e.unwrap().file_name().into_string().unwrap()).collect()
    };
    assert_eq!(names("tmp"), Vec::<String>::new(), "tmp/");
    let locks: Vec<_> = names("locks").into_iter().filter(|name| name != ".lease.lock").collect();
    assert_eq!(locks, Vec::<String>::new(), "locks/");
    assert!(names("builds").iter().all(|name| name.ends_with(".json")), "{:?}", names("builds"));
}

/// `len` bytes that do not compress.
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The test server playing a registry with one image, `test/slow:1` (a
/// layer of 3 MiB of noise, laid out by umoci), whose layer's first
/// download stalls for 30 s after 1.5 MiB (downloads write whole MiBs): a
/// build stays pulling, a partial layer in `tmp/`, until cancelled. Later
/// downloads run at full speed.
struct SlowRegistry {
    _server: TestServer,
    reference: Reference,
}

impl SlowRegistry {
    fn start(tmp: &Path) -> SlowRegistry {
        let dir = tmp.join("slow");
        fs::create_dir_all(dir.join("etc")).unwrap();
        fs::write(dir.join("etc/noise"), noise(3 << 20)).unwrap();
        let layout = tmp.join("slow-layout");
        ImageSpec::new().dir_layer(&dir).cmd(&["/bin/sh"]).build_layout(&layout, "1").unwrap();
        let blob = |digest: &str| layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
        let json = |path| serde_json::from_slice::<serde_json::Value>(&fs::read(path).unwrap()).unwrap();
        let index = json(layout.join("index.json"));
        let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
        let manifest = json(blob(manifest_digest));
        let server = TestServer::start();
        for tag in ["1", manifest_digest] {
            server.add_file(&format!("/v2/test/slow/manifests/{tag}"), blob(manifest_digest));
        }
        let layers = manifest["layers"].as_array().unwrap();
        for digest in layers.iter().chain([&manifest["config"]]).map(|d| d["digest"].as_str().unwrap()) {
            server.add_file(&format!("/v2/test/slow/blobs/{digest}"), blob(digest));
        }
        let stall = Fault::Stall { after: 3 << 19, duration: Duration::from_secs(30) };
        server.fault(&format!("/v2/test/slow/blobs/{}", layers[0]["digest"].as_str().unwrap()), stall, 1);
        let host = server.base_url().trim_start_matches("http://").to_owned();
        SlowRegistry { _server: server, reference: Reference::parse(&format!("{host}/test/slow:1")).unwrap() }
    }
}

/// Waits until build `id` has downloaded some of its layer (and stalls).
async fn until_pulling(manager: &Manager, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let build = manager.get(id).unwrap().unwrap();
        if build.bytes_pulled > 0 {
            return;
        }
        assert!(Instant::now() < deadline && !build.status.is_done(), "the layer download never started: {build:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_queue_behind_the_limit_and_run_once_per_reference() {
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (push(&registry, tmp.path(), "a", "A"), push(&registry, tmp.path(), "b", "B"));
    let manager = open_manager(&tmp.path().join("store"), 1);
    let first = manager.create(&a, RootfsFormat::Cpio).unwrap();
    let again = manager.create(&a, RootfsFormat::Cpio).unwrap();
    let other = manager.create(&b, RootfsFormat::Cpio).unwrap();
    assert_eq!(first.id, again.id, "the same reference and format is one build");
    assert!(!again.status.is_done());
    assert_eq!(other.status, BuildStatus::Pending);
    assert!(other.queue_position.is_some(), "{other:?}");
    assert!(metric(manager.store(), "vmimg_build_queue_length") >= 1.0);

    let (a_done, b_done) = (manager.wait(&first.id).await.unwrap(), manager.wait(&other.id).await.unwrap());
    assert_eq!((a_done.status, b_done.status), (BuildStatus::Ready, BuildStatus::Ready), "{a_done:?} {b_done:?}");
    assert!(a_done.digest.is_some() && a_done.bytes_pulled > 0);
    let metrics = samples(&manager.store().metrics().encode());
    let value = |series: &str| metrics[series];
    let counts = ["vmimg_builds_started_total", "vmimg_builds_ready_total", "vmimg_builds_failed_total"];
    assert_eq!(counts.map(value), [2.0, 2.0, 0.0]);
    let gauges = ["vmimg_build_queue_length", "vmimg_builds_running", "vmimg_build_duration_seconds_count"];
    assert_eq!(gauges.map(value), [0.0, 0.0, 2.0]);
    assert_eq!(value("vmimg_build_duration_seconds_bucket{le=\"+Inf\"}"), 2.0);
    assert_eq!(value("vmimg_build_bytes_pulled_total"), (a_done.bytes_pulled + b_done.bytes_pulled) as f64);

    // A new create of a ready build finds the image at once.
    let again = manager.create(&a, RootfsFormat::Cpio).unwrap();
    let again = manager.wait(&again.id).await.unwrap();
    assert_eq!((again.status, again.bytes_pulled), (BuildStatus::Ready, 0));
    assert_eq!(manager.list().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_keeps_its_error() {
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let manager = open_manager(&tmp.path().join("store"), 2);
    let missing = Reference::parse(&format!("{}/test/missing:1", registry.host())).unwrap();
    let build = manager.create(&missing, RootfsFormat::Ext4).unwrap();
    let done = manager.wait(&build.id).await.unwrap();
    assert_eq!(done.status, BuildStatus::Failed);
    assert!(done.error.as_deref().unwrap().contains("not found"), "{done:?}");
    assert_eq!(metric(manager.store(), "vmimg_builds_failed_total"), 1.0);
    // Its record says so too, for the next process.
    let reopened = open_manager(&tmp.path().join("store"), 1);
    assert_eq!(reopened.get(&build.id).unwrap().unwrap().status, BuildStatus::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_a_killed_process_left_run_again() {
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let reference = push(&registry, tmp.path(), "c", "C");
    let _ = open_manager(&store, 1); // makes the store
    // What a process killed while pulling leaves: a record saying so, and
    // abandoned work.
    let id = record_pulling(&store, &reference, RootfsFormat::Ext4);

    // Not while another process holds the build's lock.
    let lock = hold_build_lock(&store, &id);
    let manager = open_manager(&store, 1);
    assert!(manager.recover_interrupted().unwrap().is_empty());
    drop(lock);

    let recovered = manager.recover_interrupted().unwrap();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].status, BuildStatus::Pending);
    let done = manager.wait(&id).await.unwrap();
    assert_eq!(done.status, BuildStatus::Ready, "{done:?}");
    let image = done.image.unwrap();
    assert!(store.join("images").join(&image).join("disk.raw").exists());

    let totals = manager.totals();
    assert!(totals.image_bytes > 0 && totals.layer_cache_bytes > 0, "{totals:?}");
    manager.delete(&id, false).await.unwrap();
    assert!(!store.join("images").join(&image).exists());
    assert!(manager.get(&id).unwrap().is_none());
    manager.store().gc(&GcOptions::default()).await.unwrap();
    assert!(fs::read_dir(store.join("layers/sha256")).unwrap().next().is_none(), "gc removes unused layers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_layer_fails_the_build_and_nothing_is_kept() {
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let reference = push(&registry, tmp.path(), "d", "D");
    // The layer is the image's largest blob: flip one of its bytes in the registry's storage.
    let blobs = registry.storage().join("docker/registry/v2/blobs/sha256");
    let data = fs::read_dir(&blobs)
        .unwrap()
        .flat_map(|prefix| fs::read_dir(prefix.unwrap().path()).unwrap())
        .map(|blob| blob.unwrap().path().join("data"))
        .max_by_key(|data| fs::metadata(data).unwrap().len())
        .unwrap();
    let mut corrupt = fs::read(&data).unwrap();
    corrupt[40] ^= 0xff;
    fs::write(&data, corrupt).unwrap();

    let store = tmp.path().join("store");
    let manager = open_manager(&store, 1);
    let build = manager.create(&reference, RootfsFormat::Ext4).unwrap();
    let done = manager.wait(&build.id).await.unwrap();
    assert_eq!(done.status, BuildStatus::Failed);
    assert!(done.error.as_deref().unwrap().contains("digest"), "{done:?}");
    let kept = |dir: &str| fs::read_dir(store.join(dir)).map(|d| d.count()).unwrap_or(0);
    assert_eq!((kept("images"), kept("layers/sha256"), kept("tmp")), (0, 0, 0));
}

/// Builds an image of one file pushed as `spec` says; returns the file as the ext4 disk has it.
async fn built_file(spec: ImageSpec, name: &str, want_in_manifest: &str) -> String {
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::write(dir.join("etc/text"), format!("pushed as {name}")).unwrap();
    spec.dir_layer(&dir).push(&registry.host(), &format!("test/{name}"), "1").unwrap();
    let reference = format!("{}/test/{name}:1", registry.host());
    let manifest = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{reference}")])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&manifest.stdout).contains(want_in_manifest), "{manifest:?}");

    let manager = open_manager(&tmp.path().join("store"), 1);
    let build = manager.create(&Reference::parse(&reference).unwrap(), RootfsFormat::Ext4).unwrap();
    let done = manager.wait(&build.id).await.unwrap();
    assert_eq!(done.status, BuildStatus::Ready, "{done:?}");
    let record = manager.store().lookup(&done.image.unwrap()).unwrap().unwrap();
    let cat = std::process::Command::new("debugfs")
        .args(["-R", "cat /etc/text"])
        .arg(manager.store().image_file(&record))
        .output()
        .unwrap();
    String::from_utf8_lossy(&cat.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_layers_build_too() {
    assert_eq!(built_file(ImageSpec::new().zstd(), "zstd", "tar+zstd").await, "pushed as zstd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_schema2_images_build_too() {
    let docker_layer = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    assert_eq!(built_file(ImageSpec::new().docker(), "docker", docker_layer).await, "pushed as docker");
}

/// Two managers with stores of their own, as two processes have: the
/// first runs the build, the second finds it running and follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_on_one_store_build_once() {
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let reference = push(&registry, tmp.path(), "e", "E");
    let store = tmp.path().join("store");
    let (one, two) = (open_manager(&store, 1), open_manager(&store, 1));
    let (a, b) =
        (one.create(&reference, RootfsFormat::Cpio).unwrap(), two.create(&reference, RootfsFormat::Cpio).unwrap());
    assert_eq!(a.id, b.id);
    let (a, b) = (one.wait(&a.id).await.unwrap(), two.wait(&b.id).await.unwrap());
    assert_eq!((a.status, b.status), (BuildStatus::Ready, BuildStatus::Ready));
    assert_eq!(a, b, "the second follows the first's record");
    assert_eq!(metric(one.store(), "vmimg_builds_started_total"), 1.0);
    assert_eq!(metric(two.store(), "vmimg_builds_started_total"), 0.0, "the second runs nothing");
    assert_eq!(fs::read_dir(store.join("images")).unwrap().count(), 1);
    assert_nothing_left(&store);
}

/// gc run over and over from another store handle (as another process
/// would) while builds download and apply layers: the layers they are about
/// to name are never collected, and every build ends ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_in_a_loop_never_takes_the_layers_of_builds_in_flight() {
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (push(&registry, tmp.path(), "a", "A"), push(&registry, tmp.path(), "b", "B"));
    let root = tmp.path().join("store");
    let manager = open_manager(&root, 2);
    let builds = [manager.create(&a, RootfsFormat::Ext4).unwrap(), manager.create(&b, RootfsFormat::Cpio).unwrap()];
    let collector = Store::open(StoreOptions { root: Some(root.clone()), ..Default::default() }).unwrap();
    let mut rounds = 0;
    while builds.iter().any(|b| !manager.get(&b.id).unwrap().unwrap().status.is_done()) {
        collector.gc(&GcOptions::default()).await.unwrap();
        rounds += 1;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(rounds > 0);
    for build in &builds {
        let done = manager.wait(&build.id).await.unwrap();
        assert_eq!(done.status, BuildStatus::Ready, "{done:?}");
    }
    let images = collector.images().unwrap();
    assert_eq!(images.len(), 2);
    for image in images {
        for layer in image.record.container.expect("a built image").layers {
            assert!(root.join(&layer).is_file(), "gc collected {layer}, which {} names", image.record.name);
        }
    }
    let report = collector.gc(&GcOptions::default()).await.unwrap();
    assert_eq!(report.blobs, 0, "every layer is named by a built image: {report:?}");
}

/// An observer that panics when the build starts making its disk.
struct PanicsWhenConverting;

impl BuildObserver for PanicsWhenConverting {
    fn converting(&self) {
        panic!("the observer gave up");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_whose_task_panics_ends_failed_and_frees_its_slot() {
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let reference = push(&registry, tmp.path(), "p", "P");
    let store = tmp.path().join("store");
    let manager = open_manager(&store, 1);
    let observer = Arc::new(PanicsWhenConverting);
    let build = manager.create_observed(&reference, RootfsFormat::Ext4, observer).unwrap();
    let done = tokio::time::timeout(Duration::from_secs(30), manager.wait(&build.id)).await.unwrap().unwrap();
    assert_eq!(done.status, BuildStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("the build task panicked: the observer gave up"));
    assert_eq!(open_manager(&store, 1).get(&build.id).unwrap().unwrap().status, BuildStatus::Failed, "its record");
    assert_nothing_left(&store);
    assert_eq!(fs::read_dir(store.join("images")).unwrap().count(), 0);
    assert_eq!(metric(manager.store(), "vmimg_builds_failed_total"), 1.0);
    assert_eq!(metric(manager.store(), "vmimg_builds_running"), 0.0);

    // Its slot is free: the next build runs (one at a time).
    let next = manager.create(&reference, RootfsFormat::Cpio).unwrap();
    assert_eq!(manager.wait(&next.id).await.unwrap().status, BuildStatus::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_whose_process_died_is_reported_interrupted_to_its_followers() {
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let reference = push(&registry, tmp.path(), "f", "F");
    let manager = open_manager(&store, 1);
    // Another process runs the build: its record says pulling, and it holds the build's lock.
    let id = record_pulling(&store, &reference, RootfsFormat::Cpio);
    let lock = hold_build_lock(&store, &id);

    let found = manager.create(&reference, RootfsFormat::Cpio).unwrap();
    assert_eq!((found.id.as_str(), found.status), (id.as_str(), BuildStatus::Pulling), "found running elsewhere");
    let following = tokio::spawn({
        let (manager, id) = (manager.clone(), id.clone());
        async move { manager.wait(&id).await }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!following.is_finished(), "followed while its lock is held");
    assert_eq!(metric(manager.store(), "vmimg_builds_started_total"), 0.0, "not run twice");

    drop(lock); // the process dies: the kernel releases its lock
    let done = tokio::time::timeout(Duration::from_secs(5), following).await.unwrap().unwrap().unwrap();
    assert_eq!(done.status, BuildStatus::Failed);
    let error = done.error.unwrap();
    assert!(error.starts_with("interrupted") && error.contains("while it was pulling"), "{error}");
    assert!(error.contains("recover_interrupted"), "{error}");
    // Its record is left as it was, for recovery to run it again.
    assert_eq!(manager.get(&id).unwrap().unwrap().status, BuildStatus::Pulling);
    assert_eq!(manager.recover_interrupted().unwrap().len(), 1);
    assert_eq!(manager.wait(&id).await.unwrap().status, BuildStatus::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_another_manager_runs_is_followed_and_cancelled_through_its_marker() {
    let tmp = tempfile::tempdir().unwrap();
    let slow = SlowRegistry::start(tmp.path());
    let store = tmp.path().join("store");
    // Two managers with stores of their own, as two processes have.
    let (runner, other) = (open_manager(&store, 1), open_manager(&store, 1));
    let build = runner.create(&slow.reference, RootfsFormat::Ext4).unwrap();
    until_pulling(&runner, &build.id).await;
    let found = other.create(&slow.reference, RootfsFormat::Ext4).unwrap();
    assert_eq!((found.id.as_str(), found.status), (build.id.as_str(), BuildStatus::Pulling));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let following = tokio::spawn({
        let (other, id, seen) = (other.clone(), build.id.clone(), seen.clone());
        async move { other.follow(&id, |b: &Build| seen.lock().unwrap().push(b.status)).await }
    });

    let cancelled = other.cancel(&build.id).await.unwrap();
    assert_eq!(cancelled.status, BuildStatus::Cancelled, "{cancelled:?}");
    assert_eq!(runner.wait(&build.id).await.unwrap().status, BuildStatus::Cancelled);
    assert_eq!(following.await.unwrap().unwrap().status, BuildStatus::Cancelled);
    let seen = seen.lock().unwrap().clone();
    assert_eq!((seen.first(), seen.last()), (Some(&BuildStatus::Pulling), Some(&BuildStatus::Cancelled)));
    assert_eq!(metric(other.store(), "vmimg_builds_started_total"), 0.0, "the other ran nothing");
    assert_eq!(metric(runner.store(), "vmimg_builds_cancelled_total"), 1.0);
    assert_nothing_left(&store);

    // Built again, by the other manager now: nothing of the cancelled build stands in the way.
    let again = other.create(&slow.reference, RootfsFormat::Ext4).unwrap();
    assert_eq!(other.wait(&again.id).await.unwrap().status, BuildStatus::Ready);
    assert_eq!(metric(other.store(), "vmimg_builds_started_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queued_build_and_a_running_one_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let slow = SlowRegistry::start(tmp.path());
    let store = tmp.path().join("store");
    let manager = open_manager(&store, 1);
    let running = manager.create(&slow.reference, RootfsFormat::Ext4).unwrap();
    until_pulling(&manager, &running.id).await;
    let queued = manager.create(&slow.reference, RootfsFormat::Cpio).unwrap();
    assert_eq!((queued.status, queued.queue_position), (BuildStatus::Pending, Some(1)));

    let cancelled = manager.cancel(&queued.id).await.unwrap();
    assert_eq!((cancelled.status, cancelled.queue_position), (BuildStatus::Cancelled, None));
    let record = fs::read_to_string(store.join("builds").join(format!("{}.json", queued.id))).unwrap();
    assert!(record.contains(r#""status": "cancelled""#), "{record}");
    assert!(!store.join("locks").join(format!("build-{}.lock", queued.id)).exists());
    assert_eq!(manager.get(&running.id).unwrap().unwrap().status, BuildStatus::Pulling, "the other goes on");
    assert_eq!(metric(manager.store(), "vmimg_build_queue_length"), 0.0);
    assert_eq!(metric(manager.store(), "vmimg_builds_started_total"), 1.0);

    let tmp_entries: Vec<String> =
        fs::read_dir(store.join("tmp")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(tmp_entries.iter().any(|n| n.starts_with("layer-") && n.ends_with(".part")), "{tmp_entries:?}");
    assert!(tmp_entries.iter().any(|n| n.contains(".work-")), "{tmp_entries:?}");
    let cancelled = manager.cancel(&running.id).await.unwrap();
    assert_eq!(cancelled.status, BuildStatus::Cancelled, "{cancelled:?}");
    assert_nothing_left(&store);
    assert_eq!(fs::read_dir(store.join("images")).unwrap().count(), 0);
    let metrics = samples(&manager.store().metrics().encode());
    assert_eq!(metrics["vmimg_builds_cancelled_total"], 2.0);
    assert_eq!(metrics["vmimg_builds_running"], 0.0);
    assert_eq!(metrics["vmimg_build_duration_seconds_count"], 1.0, "only the running one ran");
    assert!(manager.delete(&running.id, false).await.is_ok(), "a cancelled build has ended");

    // Both build afterwards: nothing of the cancelled builds stands in the way.
    for format in [RootfsFormat::Ext4, RootfsFormat::Cpio] {
        let build = manager.create(&slow.reference, format).unwrap();
        assert_eq!(manager.wait(&build.id).await.unwrap().status, BuildStatus::Ready);
    }
    assert_nothing_left(&store);
}

/// Tells when the build starts making its disk.
struct SaysConverting(Arc<tokio::sync::Notify>);

impl BuildObserver for SaysConverting {
    fn converting(&self) {
        self.0.notify_one();
    }
}

/// Cancelled while `mke2fs` makes the disk on a blocking thread: the
/// cancel returns once that job has ended and the work it used is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_while_the_disk_is_made_waits_for_the_blocking_job() {
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("big");
    fs::create_dir_all(dir.join("etc")).unwrap();
    for i in 0..8 {
        fs::write(dir.join(format!("etc/noise{i}")), noise(1 << 20)).unwrap();
    }
    ImageSpec::new().dir_layer(&dir).push(&registry.host(), "test/big", "1").unwrap();
    let reference = Reference::parse(&format!("{}/test/big:1", registry.host())).unwrap();
    let store = tmp.path().join("store");
    let manager = open_manager(&store, 1);
    let converting = Arc::new(tokio::sync::Notify::new());
    let observer = Arc::new(SaysConverting(converting.clone()));
    let build = manager.create_observed(&reference, RootfsFormat::Ext4, observer).unwrap();
    converting.notified().await;
    let cancelled = manager.cancel(&build.id).await.unwrap();
    assert_eq!(cancelled.status, BuildStatus::Cancelled, "{cancelled:?}");
    assert_nothing_left(&store);
    assert_eq!(fs::read_dir(store.join("images")).unwrap().count(), 0);

    let again = manager.create(&reference, RootfsFormat::Ext4).unwrap();
    assert_eq!(manager.wait(&again.id).await.unwrap().status, BuildStatus::Ready);
    assert_nothing_left(&store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_builds_pulls_and_bytes_on_disk() {
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let reference = push(&registry, tmp.path(), "m", "M");
    let manager = open_manager(&tmp.path().join("store"), 1);
    let store = manager.store().clone();
    let images_before = samples(&store.metrics().encode())["vmimg_store_bytes{part=\"images\"}"];

    let build = manager.create(&reference, RootfsFormat::Cpio).unwrap();
    let build = manager.wait(&build.id).await.unwrap();
    let server = TestServer::start();
    let disk = noise(1 << 20);
    server.add("/disk.raw", disk.clone());
    let source = store.resolve(&server.url("/disk.raw"), None).unwrap();
    assert!(!store.pull(&source, None).await.unwrap().cached);
    assert!(store.pull(&source, None).await.unwrap().cached);
    let missing = store.resolve(&server.url("/missing.raw"), None).unwrap();
    assert!(store.pull(&missing, None).await.is_err());

    let text = store.metrics().encode();
    let metrics = samples(&text);
    let expected = [
        ("vmimg_builds_started_total", 1.0),
        ("vmimg_builds_ready_total", 1.0),
        ("vmimg_builds_failed_total", 0.0),
        ("vmimg_builds_cancelled_total", 0.0),
        ("vmimg_build_bytes_pulled_total", build.bytes_pulled as f64),
        ("vmimg_build_queue_length", 0.0),
        ("vmimg_builds_running", 0.0),
        ("vmimg_build_duration_seconds_count", 1.0),
        ("vmimg_build_duration_seconds_bucket{le=\"+Inf\"}", 1.0),
        ("vmimg_pulls_started_total{source=\"url\"}", 3.0),
        ("vmimg_pulls_ready_total{source=\"url\"}", 2.0),
        ("vmimg_pulls_failed_total{source=\"url\"}", 1.0),
        ("vmimg_pull_cache_hits_total{source=\"url\"}", 1.0),
        ("vmimg_pull_bytes_downloaded_total", disk.len() as f64),
        ("vmimg_pull_duration_seconds_count", 1.0),
    ];
    for (series, value) in expected {
        assert_eq!(metrics.get(series), Some(&value), "{series} in\n{text}");
    }
    assert!(build.bytes_pulled > 0);
    let bucket_1s = metrics["vmimg_build_duration_seconds_bucket{le=\"1.0\"}"];
    assert!(bucket_1s <= 1.0, "cumulative buckets: {text}");
    // The store's bytes are measured at the scrape.
    let usage = store.usage();
    for (part, bytes) in usage.by_part() {
        assert_eq!(metrics[&format!("vmimg_store_bytes{{part=\"{part}\"}}")], bytes as f64, "{part}");
    }
    assert!(usage.images as f64 > images_before);
    for line in ["# TYPE vmimg_build_duration_seconds histogram", "# UNIT vmimg_build_duration_seconds seconds"] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
}

/// Hears the stages of a `Store::get`.
#[derive(Default)]
struct Stages(std::sync::Mutex<Vec<vmimg_store::Stage>>);

impl vmimg_fetch::Progress for Stages {}

impl vmimg_store::Observer for Stages {
    fn stage(&self, stage: vmimg_store::Stage) {
        self.0.lock().unwrap().push(stage);
    }
}

/// The front door builds container images through the queue it is given:
/// a daemon's one queue, its limit shared by every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_door_builds_through_the_queue_it_is_given() {
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (push(&registry, tmp.path(), "a", "A"), push(&registry, tmp.path(), "b", "B"));
    let manager = open_manager(&tmp.path().join("store"), 1);
    let store = manager.store().as_ref().clone();
    let (seen_a, seen_b) = (Arc::new(Stages::default()), Arc::new(Stages::default()));
    let options = |seen: &Arc<Stages>| vmimg_store::GetOptions {
        format: Some(RootfsFormat::Cpio),
        observer: Some(seen.clone()),
        builds: Some(manager.clone()),
        ..Default::default()
    };
    let (get_a, get_b) = (options(&seen_a), options(&seen_b));
    let (source_a, source_b) = (format!("oci://{a}"), format!("oci://{b}"));
    let (got_a, got_b) = tokio::join!(store.get(&source_a, &get_a), store.get(&source_b, &get_b));
    let (got_a, got_b) = (got_a.unwrap(), got_b.unwrap());
    assert_eq!(got_a.record.format, vmimg_store::ImageFormat::Cpio);
    assert_ne!(got_a.record.name, got_b.record.name);
    let builds = manager.list().unwrap();
    assert_eq!(builds.len(), 2, "both built through the queue given: {builds:?}");
    assert!(builds.iter().all(|b| b.status == BuildStatus::Ready));
    for seen in [&seen_a, &seen_b] {
        assert!(seen.0.lock().unwrap().contains(&vmimg_store::Stage::Pulling), "the observer hears the stages");
    }
    assert_eq!(metric(&store, "vmimg_builds_started_total"), 2.0);
}
