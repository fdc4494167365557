//! A hostile registry (vmimg-testserver playing one on 127.0.0.1): huge
//! manifests, manifests that are not what their digest says, blobs longer
//! or shorter than their descriptors.

use vmimg_fetch::{Algorithm, Digest, Hasher, NoProgress};
use vmimg_oci::artifact;
use vmimg_oci::{Error, Reference, Registry, RegistryOptions};
use vmimg_testserver::TestServer;

fn sha256(bytes: &[u8]) -> Digest {
    let mut hasher = Hasher::new(Algorithm::Sha256);
    hasher.update(bytes);
    hasher.finish()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn registry() -> Registry {
    registry_with_retries(2)
}

/// A cloud image manifest with one raw disk layer of `size` bytes and `digest`.
fn manifest(digest: &Digest, size: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": artifact::OCI_MANIFEST, "artifactType": artifact::ARTIFACT_TYPE,
        "config": artifact::empty_config(),
        "layers": [{ "mediaType": artifact::DISK_RAW, "digest": digest, "size": size }]
    }))
    .unwrap()
}

#[test]
fn a_huge_manifest_is_refused() {
    let server = TestServer::start();
    server.add("/v2/big/manifests/1", vec![b' '; vmimg_oci::MAX_MANIFEST_BYTES + 1]);
    let reference = Reference::parse(&format!("{}/big:1", server.base_url().trim_start_matches("http://"))).unwrap();
    let error = runtime().block_on(registry().manifest(&reference, &vmimg_fetch::NoProgress)).unwrap_err();
    assert!(matches!(error, Error::TooLarge { .. }), "{error}");
}

#[test]
fn a_manifest_that_is_not_its_digest_is_refused() {
    let server = TestServer::start();
    let bytes = manifest(&sha256(b"disk"), 4);
    let claimed = sha256(b"something else");
    server.add(&format!("/v2/x/manifests/{claimed}"), bytes);
    let host = server.base_url().trim_start_matches("http://").to_owned();
    let reference = Reference::parse(&format!("{host}/x@{claimed}")).unwrap();
    let error = runtime().block_on(registry().manifest(&reference, &vmimg_fetch::NoProgress)).unwrap_err();
    assert!(matches!(error, Error::ManifestDigest { .. }), "{error}");
}

#[test]
fn blobs_longer_or_shorter_or_other_than_described_are_refused() {
    let server = TestServer::start();
    let host = server.base_url().trim_start_matches("http://").to_owned();
    let disk = b"0123456789abcdef".to_vec();
    let digest = sha256(&disk);
    server.add(&format!("/v2/x/blobs/{digest}"), disk.clone());
    // The registry serves the disk's bytes under another digest too.
    let other = sha256(b"0123456789abcdeX");
    server.add(&format!("/v2/x/blobs/{other}"), disk.clone());
    let cases = [
        ("short", manifest(&digest, 20), "16 bytes where its descriptor says 20"),
        ("long", manifest(&digest, 8), "bytes where its descriptor says 8"),
        ("other", manifest(&other, 16), "digest mismatch"),
    ];
    for (tag, bytes, expected) in cases {
        server.add(&format!("/v2/x/manifests/{tag}"), bytes);
        let reference = Reference::parse(&format!("{host}/x:{tag}")).unwrap();
        let registry = registry();
        let result = runtime().block_on(async {
            let (pinned, image) = registry.cloud_image(&reference, "amd64", &NoProgress).await?;
            let mut out = Vec::new();
            registry.stream_disk(pinned.reference(), &image, &mut out, &NoProgress).await
        });
        let error = result.unwrap_err().to_string();
        assert!(error.contains(expected), "{tag}: {error}");
    }
}

#[test]
fn a_blob_cut_midway_is_resumed_where_it_stopped() {
    let server = TestServer::start();
    let host = server.base_url().trim_start_matches("http://").to_owned();
    let disk: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = sha256(&disk);
    let path = format!("/v2/x/blobs/{digest}");
    server.add(&path, disk.clone());
    server.fault(&path, vmimg_testserver::Fault::CutAfter(1_000_000), 2);
    server.add("/v2/x/manifests/cut", manifest(&digest, disk.len() as u64));
    let reference = Reference::parse(&format!("{host}/x:cut")).unwrap();
    let registry = registry_with_retries(4);
    let out = runtime()
        .block_on(async {
            let (pinned, image) = registry.cloud_image(&reference, "amd64", &NoProgress).await?;
            let mut out = Vec::new();
            registry.stream_disk(pinned.reference(), &image, &mut out, &NoProgress).await.map(|_| out)
        })
        .unwrap();
    assert!(out == disk);
    // The server logs a request once it has written its answer, which may be after the client has read it all.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let ranges = loop {
        let mut ranges: Vec<_> = server.log().into_iter().filter(|r| r.path == path).map(|r| r.range).collect();
        if ranges.len() >= 3 || std::time::Instant::now() > deadline {
            ranges.sort(); // in the order asked, whatever the order logged
            break ranges;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(ranges, [None, Some("bytes=1000000-".into()), Some("bytes=2000000-".into())]);
}

fn registry_with_retries(attempts: usize) -> Registry {
    let fetch =
        vmimg_fetch::FetchOptions { attempts, min_delay: std::time::Duration::from_millis(5), ..Default::default() };
    Registry::new(RegistryOptions {
        docker_config: Some("/nonexistent/config.json".into()),
        fetch,
        ..Default::default()
    })
    .unwrap()
}

/// A container image whose config blob is `served`, described as `digest` and `size`.
fn container_manifest(digest: &Digest, size: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": artifact::OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": size },
        "layers": []
    }))
    .unwrap()
}

#[test]
fn container_configs_that_lie_or_are_huge_are_refused() {
    let server = TestServer::start();
    let host = server.base_url().trim_start_matches("http://").to_owned();
    let config = br#"{"config":{"Cmd":["/bin/sh"]}}"#.to_vec();
    let digest = sha256(&config);
    server.add(&format!("/v2/c/blobs/{digest}"), config.clone());
    let other = sha256(b"another config");
    server.add(&format!("/v2/c/blobs/{other}"), config.clone());
    let huge = sha256(b"huge");
    let cases = [
        ("good", container_manifest(&digest, config.len() as u64), None),
        ("other", container_manifest(&other, config.len() as u64), Some("digest mismatch")),
        ("short", container_manifest(&digest, config.len() as u64 + 5), Some("where its descriptor says")),
        ("huge", container_manifest(&huge, vmimg_oci::container::MAX_CONFIG_BYTES + 1), Some("larger than")),
    ];
    for (tag, bytes, expected) in cases {
        server.add(&format!("/v2/c/manifests/{tag}"), bytes);
        let reference = Reference::parse(&format!("{host}/c:{tag}")).unwrap();
        let outcome = runtime().block_on(async {
            let registry = registry();
            let (pinned, image) = registry.image(&reference, "amd64", &NoProgress).await?;
            let vmimg_oci::OciImage::Container(image) = image else { panic!("{tag}: not a container image") };
            registry.run_config(pinned.reference(), &image, &NoProgress).await
        });
        match expected {
            None => assert_eq!(outcome.unwrap().cmd, ["/bin/sh"]),
            Some(expected) => {
                let error = outcome.unwrap_err().to_string();
                assert!(error.contains(expected), "{tag}: {error}");
            }
        }
    }
}

#[test]
fn pushes_and_uploads_that_cannot_work_are_refused_before_any_request() {
    use vmimg_oci::Push;
    use vmimg_oci::artifact::DiskFormat;
    let file = tempfile::tempfile().unwrap();
    file.set_len(10_000).unwrap();
    let registry = registry();
    // Nothing listens there: a refusal that sent a request would fail otherwise.
    let reference = Reference::parse("127.0.0.1:9/x:1").unwrap();
    let push = |part_size, jobs| Push {
        format: DiskFormat::Raw,
        part_size,
        jobs,
        name: "disk".into(),
        annotations: Default::default(),
    };
    let cases = [
        (push(0, 1), "part size", "0 bytes"),
        (push(1, 1), "part size", "10000 parts"),
        (push(4096, 0), "job count", "0"),
    ];
    for (push, expected, reason) in cases {
        let error = runtime().block_on(registry.push_disk(&reference, &file, &push, &NoProgress)).unwrap_err();
        assert!(matches!(&error, Error::InvalidInput { what, .. } if *what == expected), "{error}");
        assert!(error.to_string().contains(reason), "{error}");
    }
    let digest = sha256(b"x");
    let error = runtime()
        .block_on(registry.upload_blob(&reference, &digest, &file, (u64::MAX, 2), &vmimg_fetch::NoProgress))
        .unwrap_err();
    assert!(matches!(&error, Error::InvalidInput { what: "blob range", .. }), "{error}");
}

#[test]
fn disk_parts_whose_sizes_add_past_u64_are_refused() {
    let digest = sha256(b"part");
    let layer = serde_json::json!({ "mediaType": artifact::DISK_RAW_PART, "digest": digest, "size": u64::MAX / 2 + 1 });
    let bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": artifact::OCI_MANIFEST, "artifactType": artifact::ARTIFACT_TYPE,
        "config": artifact::empty_config(), "layers": [layer.clone(), layer]
    }))
    .unwrap();
    let error = artifact::parse(&bytes, "huge").unwrap_err();
    assert!(matches!(error, artifact::ArtifactError::TooLarge(_)), "{error}");
}
