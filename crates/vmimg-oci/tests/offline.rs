//! Without network: a registry (or a token realm) whose host name does not
//! resolve is told apart from other failures, tried once more only, and
//! named with what to do; every retry of the registry client (manifests,
//! tokens, blobs streamed, uploads) is told to the caller's progress.
//!
//! `.invalid` never resolves (RFC 6761), and resolvers answer it at once.

use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vmimg_fetch::{Algorithm, Digest, Hasher, Progress};
use vmimg_oci::{Error, Reference, Registry, RegistryOptions, artifact};
use vmimg_testserver::{Fault, TestServer};

/// Keeps what each retry said.
#[derive(Default)]
struct Retries(Mutex<Vec<String>>);

impl Progress for Retries {
    fn retrying(&self, error: &(dyn std::error::Error + 'static), _delay: Duration) {
        self.0.lock().unwrap().push(error.to_string());
    }
}

impl Retries {
    fn said(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

fn registry(attempts: usize) -> Registry {
    let fetch = vmimg_fetch::FetchOptions { attempts, min_delay: Duration::from_millis(10), ..Default::default() };
    let options =
        RegistryOptions { docker_config: Some("/nonexistent/config.json".into()), fetch, ..Default::default() };
    Registry::new(options).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

fn sha256(bytes: &[u8]) -> Digest {
    let mut hasher = Hasher::new(Algorithm::Sha256);
    hasher.update(bytes);
    hasher.finish()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn assert_unresolved(error: &Error, retries: &Retries, started: Instant) {
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(matches!(error, Error::Unresolved { host, .. } if host == "vmimg-test.invalid"), "{error:?}");
    assert_eq!(error.unresolved_host(), Some("vmimg-test.invalid"));
    let message = error.to_string();
    assert!(
        message.contains("cannot resolve vmimg-test.invalid")
            && message.contains("no network, no DNS, or no such host")
            && message.contains("use a registry you can reach, or a local copy of the image"),
        "{message}"
    );
    let said = retries.said();
    assert!(said.len() == 1 && said[0].contains("cannot resolve vmimg-test.invalid"), "one retry, told: {said:?}");
}

#[test]
fn a_registry_whose_name_does_not_resolve_is_tried_once_more_and_named() {
    let reference = Reference::parse("vmimg-test.invalid/vm/x:1").unwrap();
    let retries = Retries::default();
    let started = Instant::now();
    let error = runtime().block_on(registry(8).image(&reference, "amd64", &retries)).unwrap_err();
    assert_unresolved(&error, &retries, started);
    assert!(error.to_string().starts_with("https://vmimg-test.invalid/v2/vm/x/manifests/1: "), "{error}");
}

/// A registry on 127.0.0.1 that answers every request with a bearer
/// challenge whose token realm is on a host that does not resolve.
fn challenging_registry() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(
                b"HTTP/1.1 401 Unauthorized\r\n\
                  WWW-Authenticate: Bearer realm=\"http://vmimg-test.invalid/token\",service=\"test\"\r\n\
                  Content-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    host
}

#[test]
fn a_token_realm_whose_name_does_not_resolve_is_tried_once_more_and_named() {
    let reference = Reference::parse(&format!("{}/vm/x:1", challenging_registry())).unwrap();
    let retries = Retries::default();
    let started = Instant::now();
    let error = runtime().block_on(registry(8).image(&reference, "amd64", &retries)).unwrap_err();
    assert_unresolved(&error, &retries, started);
    assert!(error.to_string().starts_with("http://vmimg-test.invalid/token: "), "the realm is named: {error}");
}

#[test]
fn every_retry_against_a_closed_port_is_told_and_is_no_name_failure() {
    let reference = Reference::parse(&format!("127.0.0.1:{}/vm/x:1", closed_port())).unwrap();
    let runtime = runtime();
    let retries = Retries::default();
    let error = runtime.block_on(registry(3).image(&reference, "amd64", &retries)).unwrap_err();
    assert!(matches!(&error, Error::Http { .. }) && error.unresolved_host().is_none(), "{error:?}");
    let said = retries.said();
    assert!(said.len() == 2 && said.iter().all(|s| s.contains("/v2/vm/x/manifests/1")), "{said:?}");

    let file = tempfile::tempfile().unwrap();
    file.set_len(4096).unwrap();
    let push = vmimg_oci::Push {
        format: artifact::DiskFormat::Raw,
        part_size: 1 << 20,
        jobs: 1,
        name: "disk".into(),
        annotations: Default::default(),
    };
    let retries = Retries::default();
    let error = runtime.block_on(registry(3).push_disk(&reference, &file, &push, &retries)).unwrap_err();
    assert!(matches!(&error, Error::Http { .. }), "{error:?}");
    let said = retries.said();
    assert!(said.len() == 2 && said.iter().all(|s| s.contains("/v2/vm/x/blobs/")), "an upload's retries: {said:?}");
}

#[test]
fn a_blob_streamed_again_after_a_failure_says_so() {
    let server = TestServer::start();
    let host = server.base_url().trim_start_matches("http://").to_owned();
    let disk: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let digest = sha256(&disk);
    let path = format!("/v2/x/blobs/{digest}");
    server.add(&path, disk.clone());
    server.fault(&path, Fault::Status(503), 1);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": artifact::OCI_MANIFEST, "artifactType": artifact::ARTIFACT_TYPE,
        "config": artifact::empty_config(),
        "layers": [{ "mediaType": artifact::DISK_RAW, "digest": digest, "size": disk.len() }]
    }))
    .unwrap();
    server.add("/v2/x/manifests/1", manifest);
    let reference = Reference::parse(&format!("{host}/x:1")).unwrap();
    let (registry, retries) = (registry(3), Retries::default());
    let out = runtime()
        .block_on(async {
            let (pinned, image) = registry.cloud_image(&reference, "amd64", &retries).await?;
            let mut out = Vec::new();
            registry.stream_disk(pinned.reference(), &image, &mut out, &retries).await.map(|_| out)
        })
        .unwrap();
    assert!(out == disk);
    let said = retries.said();
    assert!(said.len() == 1 && said[0].contains("503"), "{said:?}");
}
