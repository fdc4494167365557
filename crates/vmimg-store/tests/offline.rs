//! Through the front door without network: every retry of every transport
//! reaches the observer a `Store::get` was given (asking a registry what a
//! reference names, a container build's config and layers, a download),
//! and a host name that does not resolve fails after one retry, as an
//! unavailable source that names the host.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmimg_fetch::FetchOptions;
use vmimg_store::{ErrorKind, GetOptions, RootfsFormat, Store, StoreOptions};
use vmimg_testserver::oci_image::ImageSpec;
use vmimg_testserver::{Fault, TestServer};

/// Keeps what each retry said.
#[derive(Default)]
struct Retries(Mutex<Vec<String>>);

impl vmimg_fetch::Progress for Retries {
    fn retrying(&self, error: &(dyn std::error::Error + 'static), _delay: Duration) {
        self.0.lock().unwrap().push(error.to_string());
    }
}

impl vmimg_store::Observer for Retries {}

impl Retries {
    fn said(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

fn open_store(root: &Path, attempts: usize) -> Store {
    let fetch = FetchOptions { attempts, min_delay: Duration::from_millis(10), ..FetchOptions::default() };
    let registry = vmimg_oci::RegistryOptions {
        docker_config: Some("/nonexistent/config.json".into()),
        fetch: fetch.clone(),
        ..Default::default()
    };
    Store::open(StoreOptions { root: Some(root.to_owned()), fetch, registry, ..Default::default() }).unwrap()
}

fn observed(retries: &Arc<Retries>) -> GetOptions {
    GetOptions { observer: Some(retries.clone()), format: None, ..Default::default() }
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_resolve_fails_after_one_retry_told_to_the_observer() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(tmp.path(), 8);
    for (source, message) in [
        ("http://vmimg-test.invalid/disk.qcow2", "fetch it from a mirror you can reach, or use a local copy"),
        ("oci://vmimg-test.invalid/vm/x:1", "use a registry you can reach, or a local copy of the image"),
    ] {
        let retries = Arc::new(Retries::default());
        let started = Instant::now();
        let error = store.get(source, &observed(&retries)).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "{source}: took {:?}", started.elapsed());
        assert_eq!(error.kind(), ErrorKind::Unavailable, "{source}: {error}");
        let text = error.to_string();
        assert!(text.contains("cannot resolve vmimg-test.invalid") && text.contains(message), "{source}: {text}");
        let said = retries.said();
        assert!(said.len() == 1 && said[0].contains("cannot resolve"), "{source}: one retry, told: {said:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_refuses_connections_is_retried_and_each_retry_told() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(tmp.path(), 3);
    let retries = Arc::new(Retries::default());
    let error = store.get(&format!("oci://127.0.0.1:{}/vm/x:1", closed_port()), &observed(&retries)).await;
    assert_eq!(error.unwrap_err().kind(), ErrorKind::Unavailable);
    let said = retries.said();
    assert!(said.len() == 2 && said.iter().all(|s| s.contains("/v2/vm/x/manifests/1")), "{said:?}");
}

/// A container image built through the queue: the retries of its manifest
/// (asked before the build), its config and its layer (asked by the
/// build's task) all reach the get's observer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_builds_retries_reach_the_observer_of_the_get() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tree");
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::write(dir.join("etc/text"), "retried").unwrap();
    let layout = tmp.path().join("layout");
    ImageSpec::new().dir_layer(&dir).cmd(&["/bin/sh"]).build_layout(&layout, "1").unwrap();
    let blob = |digest: &str| layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let json = |path| serde_json::from_slice::<serde_json::Value>(&fs::read(path).unwrap()).unwrap();
    let manifest_digest = json(layout.join("index.json"))["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let manifest = json(blob(&manifest_digest));
    let server = TestServer::start();
    for tag in ["1", &manifest_digest] {
        server.add_file(&format!("/v2/test/c/manifests/{tag}"), blob(&manifest_digest));
    }
    let config = manifest["config"]["digest"].as_str().unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    for digest in [config, layer] {
        server.add_file(&format!("/v2/test/c/blobs/{digest}"), blob(digest));
    }
    for path in
        ["/v2/test/c/manifests/1".to_owned(), format!("/v2/test/c/blobs/{config}"), format!("/v2/test/c/blobs/{layer}")]
    {
        server.fault(&path, Fault::Status(503), 1);
    }
    let store = open_store(&tmp.path().join("store"), 3);
    let retries = Arc::new(Retries::default());
    let source = format!("oci://{}/test/c:1", server.base_url().trim_start_matches("http://"));
    let options = GetOptions { format: Some(RootfsFormat::Cpio), ..observed(&retries) };
    store.get(&source, &options).await.unwrap();
    let said = retries.said();
    assert_eq!(said.len(), 3, "{said:?}");
    for asked in ["/manifests/1", config, layer] {
        assert!(said.iter().any(|s| s.contains(asked) && s.contains("503")), "{asked} in {said:?}");
    }
}
