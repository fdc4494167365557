//! The build manager as a library user sees it: builds queued behind a
//! concurrency limit with their positions, one build per reference and
//! format, failures that keep their error, builds a killed process left
//! behind run again, totals, metrics and deletion; against a real registry.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use vmimg_oci::Reference;
use vmimg_store::{BuildStatus, Manager, ManagerOptions, RootfsFormat, Store, StoreOptions, build_id};
use vmimg_testserver::RegistryServer;
use vmimg_testserver::oci_image::ImageSpec;

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
    assert!(manager.metrics().queue_length >= 1);

    let (a_done, b_done) = (manager.wait(&first.id).await.unwrap(), manager.wait(&other.id).await.unwrap());
    assert_eq!((a_done.status, b_done.status), (BuildStatus::Ready, BuildStatus::Ready), "{a_done:?} {b_done:?}");
    assert!(a_done.digest.is_some() && a_done.bytes_pulled > 0);
    let metrics = manager.metrics();
    assert_eq!((metrics.builds_started, metrics.builds_ready, metrics.builds_failed), (2, 2, 0));
    assert_eq!((metrics.queue_length, metrics.running, metrics.build_duration.count), (0, 0, 2));
    assert!(metrics.bytes_pulled >= a_done.bytes_pulled + b_done.bytes_pulled);
    let text = metrics.to_prometheus();
    assert!(text.contains("vmimg_builds_ready_total 2\n") && text.contains("le=\"+Inf\"} 2\n"), "{text}");

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
    assert_eq!(manager.metrics().builds_failed, 1);
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
    let id = build_id(&reference, RootfsFormat::Ext4);
    let record = serde_json::json!({
        "id": id, "reference": reference.to_string(), "format": "ext4", "status": "pulling",
        "bytes_pulled": 12, "created_at": "2026-11-25T00:00:00Z", "updated_at": "2026-11-25T00:00:01Z"
    });
    fs::write(store.join("builds").join(format!("{id}.json")), record.to_string()).unwrap();

    // Not while another process holds the build's lock.
    let lock = fs::File::create(store.join("locks").join(format!("build-{id}.lock"))).unwrap();
    lock.lock().unwrap();
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
    manager.store().gc(None, false).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_on_one_store_build_once() {
    let registry = RegistryServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let reference = push(&registry, tmp.path(), "e", "E");
    let store = tmp.path().join("store");
    // Two managers with stores of their own, as two processes have.
    let (one, two) = (open_manager(&store, 1), open_manager(&store, 1));
    let (a, b) =
        (one.create(&reference, RootfsFormat::Cpio).unwrap(), two.create(&reference, RootfsFormat::Cpio).unwrap());
    assert_eq!(a.id, b.id);
    let (a, b) = (one.wait(&a.id).await.unwrap(), two.wait(&b.id).await.unwrap());
    assert_eq!((a.status, b.status), (BuildStatus::Ready, BuildStatus::Ready));
    assert_eq!(a.image, b.image);
    assert!(a.bytes_pulled == 0 || b.bytes_pulled == 0, "one of them downloaded nothing: {a:?} {b:?}");
    assert_eq!(fs::read_dir(store.join("images")).unwrap().count(), 1);
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
        collector.gc(None, false).await.unwrap();
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
    let report = collector.gc(None, false).await.unwrap();
    assert_eq!(report.blobs, 0, "every layer is named by a built image: {report:?}");
}
