//! Cloud images through a real OCI registry (Debian's docker-registry on
//! 127.0.0.1): push, pull and cat round trips, an artifact assembled by hand
//! the way cocoonstack publishes one, token auth, and every refusal.

mod common;

use common::{fails, ok, ok_with_stderr, vmimg};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use vmimg_fetch::{Algorithm, Digest, Hasher};
use vmimg_oci::artifact::{self, Descriptor};
use vmimg_oci::{Reference, Registry, RegistryOptions};
use vmimg_testserver::{RegistryServer, TestServer};

/// A raw disk of `mib` MiB with random data in two places and holes.
fn noisy_disk(path: &Path, mib: u64) -> Vec<u8> {
    let mut noise = vec![0u8; 3 << 20];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut noise).unwrap();
    let file = std::fs::File::create(path).unwrap();
    file.set_len(mib << 20).unwrap();
    file.write_all_at(&noise[..2 << 20], 0).unwrap();
    file.write_all_at(&noise[2 << 20..], (mib - 2) << 20).unwrap();
    std::fs::read(path).unwrap()
}

fn sha256(bytes: &[u8]) -> Digest {
    let mut hasher = Hasher::new(Algorithm::Sha256);
    hasher.update(bytes);
    hasher.finish()
}

fn images(store: &Path) -> Vec<Value> {
    serde_json::from_str::<Value>(&ok(store, &["images", "--json"])).unwrap().as_array().unwrap().clone()
}

#[test]
fn push_then_pull_and_cat_give_the_disk_back() {
    let registry = RegistryServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (store, other) = (dir.path().join("store"), dir.path().join("other"));
    let disk = noisy_disk(&dir.path().join("disk.img"), 24);
    let path = ok(&store, &["pull", dir.path().join("disk.img").to_str().unwrap()]);
    let key = Path::new(&path).parent().unwrap().file_name().unwrap().to_str().unwrap().to_owned();
    let target = format!("oci://{}/vm/disk:v1", registry.host());

    let (pinned, stderr) = ok_with_stderr(&store, &["push", &key, &target, "--part-size", "5M", "--format", "raw"]);
    assert!(pinned.starts_with(&format!("oci://{}/vm/disk:v1@sha256:", registry.host())), "{pinned}");
    let pulled = ok(&other, &["pull", &pinned]);
    assert!(std::fs::read(&pulled).unwrap() == disk, "what push prints, pull takes");
    assert!(stderr.contains("5 parts, 5 sent, 0 already there"), "{stderr}");
    let (_, stderr) = ok_with_stderr(&store, &["push", &key, &target, "--part-size", "5M", "--format", "raw"]);
    assert!(stderr.contains("5 parts, 0 sent, 5 already there"), "the second push sent parts again: {stderr}");

    let out = vmimg(&other, &["cat", &target]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == disk, "cat gave other bytes");

    // The default: zstd-compressed qcow2 parts, smaller, that qemu-img reads back to the disk.
    let compressed = format!("oci://{}/vm/disk:qcow2", registry.host());
    let (_, stderr) = ok_with_stderr(&store, &["push", &key, &compressed, "--part-size", "1M"]);
    assert!(stderr.contains("4 parts") || stderr.contains("3 parts"), "3 MiB of noise in 1 MiB parts: {stderr}");
    let out = vmimg(&other, &["cat", &compressed]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let qcow2 = dir.path().join("pushed.qcow2");
    std::fs::write(&qcow2, &out.stdout).unwrap();
    let check = Command::new("qemu-img").arg("check").arg(&qcow2).output().unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let info = Command::new("qemu-img").args(["info", "--output=json"]).arg(&qcow2).output().unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format-specific"]["data"]["compression-type"], "zstd");
    let flat = dir.path().join("flat.raw");
    assert!(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(&qcow2).arg(&flat).status().unwrap().success());
    assert!(std::fs::read(&flat).unwrap() == disk, "the pushed qcow2 is not the disk");
    let from_qcow2 = ok(&other, &["pull", &compressed]);
    assert!(std::fs::read(&from_qcow2).unwrap() == disk);
    assert_eq!(std::fs::read_dir(store.join("tmp")).unwrap().count(), 0, "the push left its qcow2 behind");
    ok(&other, &["rm", Path::new(&from_qcow2).parent().unwrap().file_name().unwrap().to_str().unwrap()]);

    let pulled = ok(&other, &["pull", &target]);
    assert!(std::fs::read(&pulled).unwrap() == disk);
    assert!(std::fs::metadata(&pulled).unwrap().len() == 24 << 20);
    let instance = ok(&other, &["instance", "create", &target, "--name", "vm"]);
    assert!(instance.ends_with("instances/vm/disk.qcow2"), "{instance}");
    ok(&other, &["instance", "rm", "vm"]);
    let (again, stderr) = ok_with_stderr(&other, &["pull", &pinned]);
    assert_eq!(again, pulled, "a pull by digest of the same manifest is the same image");
    assert!(!stderr.contains("converted"), "the second pull was not a hit: {stderr}");
    let image = &images(&other)[0];
    assert_eq!(image["source"]["kind"], "oci");
    assert_eq!(image["verified"], true);
    assert_eq!(image["blobs"].as_array().unwrap().len(), 5);
    ok(&other, &["rm", image["name"].as_str().unwrap()]);
    let blobs = std::fs::read_dir(other.join("blobs/sha256")).unwrap().count();
    assert_eq!(blobs, 0, "removing the image left its part blobs");
}

/// Pushes `bytes` as a blob with the test's own client.
fn put_blob(registry: &Registry, reference: &Reference, bytes: &[u8]) -> Descriptor {
    let digest = sha256(bytes);
    runtime().block_on(registry.upload_bytes(reference, &digest, bytes)).unwrap();
    Descriptor {
        media_type: String::new(),
        digest,
        size: bytes.len() as u64,
        annotations: BTreeMap::new(),
        platform: None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn layer(mut descriptor: Descriptor, media_type: &str, title: &str) -> Descriptor {
    descriptor.media_type = media_type.to_owned();
    descriptor.annotations.insert(artifact::TITLE.to_owned(), title.to_owned());
    descriptor
}

fn put_manifest(registry: &Registry, reference: &Reference, manifest: &Value) {
    let bytes = serde_json::to_vec(manifest).unwrap();
    runtime().block_on(registry.put_manifest(reference, &bytes, artifact::OCI_MANIFEST)).unwrap();
}

#[test]
fn a_split_qcow2_artifact_published_as_cocoonstack_does() {
    let server = RegistryServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    noisy_disk(&dir.path().join("disk.raw"), 16);
    let qcow2 = dir.path().join("disk.qcow2");
    let converted = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", "-c", "-o", "compression_type=zstd"])
        .arg(dir.path().join("disk.raw"))
        .arg(&qcow2)
        .status()
        .unwrap();
    assert!(converted.success());
    let qcow2_bytes = std::fs::read(&qcow2).unwrap();
    // Three parts, as `split -b N -d --additional-suffix=.qcow2.part` names them.
    let part_size = qcow2_bytes.len().div_ceil(3);
    let parts: Vec<&[u8]> = qcow2_bytes.chunks(part_size).collect();
    assert_eq!(parts.len(), 3);

    let registry = Registry::new(RegistryOptions::default()).unwrap();
    let reference = Reference::parse(&format!("{}/cocoonstack/ubuntu:24.04", server.host())).unwrap();
    let sums = b"0123  ubuntu.qcow2\n";
    let config = put_blob(&registry, &reference, b"{}");
    // Layers out of order: the titles give the order; the checksum list is skipped.
    let layers = vec![
        layer(put_blob(&registry, &reference, parts[2]), artifact::DISK_QCOW2_PART, "ubuntu02.qcow2.part"),
        layer(put_blob(&registry, &reference, sums), "text/plain", "SHA256SUMS"),
        layer(put_blob(&registry, &reference, parts[0]), artifact::DISK_QCOW2_PART, "ubuntu00.qcow2.part"),
        layer(put_blob(&registry, &reference, parts[1]), artifact::DISK_QCOW2_PART, "ubuntu01.qcow2.part"),
    ];
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": artifact::OCI_MANIFEST,
        "artifactType": artifact::ARTIFACT_TYPE,
        "config": { "mediaType": artifact::EMPTY_CONFIG, "digest": config.digest, "size": 2 },
        "layers": layers,
        "annotations": { "cocoonstack.os.name": "ubuntu", "cocoonstack.os.version": "24.04", "cocoonstack.disk.format": "qcow2" }
    });
    put_manifest(&registry, &reference, &manifest);
    let source = format!("oci://{reference}");

    let out = vmimg(&store, &["cat", &source]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == qcow2_bytes, "cat did not reassemble the parts in title order");

    let disk = ok(&store, &["pull", &source]);
    let expected = dir.path().join("expected.raw");
    assert!(
        Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(&qcow2).arg(&expected).status().unwrap().success()
    );
    assert!(std::fs::read(&disk).unwrap() == std::fs::read(&expected).unwrap(), "the converted disk differs");
    assert_eq!(images(&store)[0]["source_format"], "qcow2");

    // A corrupt blob in the registry: refused, nothing kept.
    let data = server.storage().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{}/data",
        &layers[0].digest.hex()[..2],
        layers[0].digest.hex()
    ));
    let mut corrupt = std::fs::read(&data).unwrap();
    corrupt[100] ^= 0xff;
    std::fs::write(&data, corrupt).unwrap();
    let fresh = dir.path().join("fresh");
    let error = fails(&fresh, &["pull", &source]);
    assert!(error.contains("digest") && error.contains(&layers[0].digest.to_string()), "{error}");
    assert!(images(&fresh).is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(fresh.join("tmp")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let out = vmimg(&fresh, &["cat", &source]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("digest mismatch"));
}

#[test]
fn what_is_not_a_cloud_image_is_refused_clearly() {
    let server = RegistryServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let registry = Registry::new(RegistryOptions::default()).unwrap();
    let at = |repo: &str| Reference::parse(&format!("{}/{repo}", server.host())).unwrap();

    let config = put_blob(
        &registry,
        &at("app:1"),
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
    );
    let container = serde_json::json!({
        "schemaVersion": 2, "mediaType": artifact::OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest, "size": config.size },
        "layers": []
    });
    put_manifest(&registry, &at("app:1"), &container);
    let error = fails(&store, &["cat", &format!("oci://{}/app:1", server.host())]);
    assert!(error.contains("is a container image, not a cloud image"), "{error}");

    let empty = put_blob(&registry, &at("nodisk:1"), b"{}");
    let sums = put_blob(&registry, &at("nodisk:1"), b"sums");
    let no_disk = serde_json::json!({
        "schemaVersion": 2, "mediaType": artifact::OCI_MANIFEST, "artifactType": artifact::ARTIFACT_TYPE,
        "config": { "mediaType": artifact::EMPTY_CONFIG, "digest": empty.digest, "size": 2 },
        "layers": [layer(sums, "text/plain", "SHA256SUMS")]
    });
    put_manifest(&registry, &at("nodisk:1"), &no_disk);
    let error = fails(&store, &["pull", &format!("oci://{}/nodisk:1", server.host())]);
    assert!(error.contains("has no disk layer"), "{error}");

    // A disk that is a qcow2 naming a backing file on the host: refused, nothing kept.
    let evil = dir.path().join("evil.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-u", "-b", "/etc/hostname", "-F", "raw"])
        .arg(&evil)
        .arg("1M")
        .status()
        .unwrap();
    assert!(made.success());
    let part = layer(put_blob(&registry, &at("evil:1"), &std::fs::read(&evil).unwrap()), artifact::DISK_QCOW2, "x");
    let config = put_blob(&registry, &at("evil:1"), b"{}");
    let evil_manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": artifact::OCI_MANIFEST, "artifactType": artifact::ARTIFACT_TYPE,
        "config": { "mediaType": artifact::EMPTY_CONFIG, "digest": config.digest, "size": 2 },
        "layers": [part]
    });
    put_manifest(&registry, &at("evil:1"), &evil_manifest);
    let error = fails(&store, &["pull", &format!("oci://{}/evil:1", server.host())]);
    assert!(error.contains("backing file") && error.contains("/etc/hostname"), "{error}");
    for dir in ["tmp", "blobs/sha256", "images"] {
        let left: Vec<_> = std::fs::read_dir(store.join(dir)).map(|d| d.flatten().collect()).unwrap_or_default();
        assert!(left.is_empty(), "{dir}: {:?}", left.iter().map(|e| e.file_name()).collect::<Vec<_>>());
    }

    let error = fails(&store, &["pull", &format!("oci://{}/nodisk:missing", server.host())]);
    assert!(error.contains("not found in the registry"), "{error}");
    let error = fails(&store, &["pull", "oci://UPPER/Case"]);
    assert!(error.contains("invalid image reference"), "{error}");
    assert!(images(&store).is_empty());
}

#[test]
fn a_registry_with_token_auth_and_docker_config_credentials() {
    let tokens = TestServer::start();
    tokens.add("/token", br#"{"token": "vmimg-test-token"}"#.to_vec());
    let server = RegistryServer::start_with_token_auth(&tokens.url("/token"));
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let disk = noisy_disk(&dir.path().join("disk.img"), 6);
    let path = ok(&store, &["pull", dir.path().join("disk.img").to_str().unwrap()]);
    let key = Path::new(&path).parent().unwrap().file_name().unwrap().to_str().unwrap().to_owned();
    let target = format!("oci://{}/private/disk:1", server.host());
    ok(&store, &["push", &key, &target, "--part-size", "2M", "--format", "raw"]);
    let other = dir.path().join("other");
    let pulled = ok(&other, &["pull", &target]);
    assert!(std::fs::read(pulled).unwrap() == disk);
    assert!(tokens.requests("/token") >= 2, "the token endpoint was not asked");
    assert!(tokens.log().iter().all(|r| r.authorization.is_none()), "credentials were sent that nobody gave");

    // Credentials from Docker's config.json go to the realm as Basic auth.
    let docker = dir.path().join("docker");
    std::fs::create_dir(&docker).unwrap();
    let config = format!(r#"{{"auths": {{"{}": {{"auth": "dXNlcjpzM2NyZXQ="}}}}}}"#, server.host());
    std::fs::write(docker.join("config.json"), config).unwrap();
    let with_config = Command::new(env!("CARGO_BIN_EXE_vmimg"))
        .env("DOCKER_CONFIG", &docker)
        .arg("--store")
        .arg(dir.path().join("third"))
        .args(["cat", &target])
        .output()
        .unwrap();
    assert!(with_config.status.success(), "{}", String::from_utf8_lossy(&with_config.stderr));
    assert!(with_config.stdout == disk);
    let basic = tokens.log().into_iter().filter_map(|r| r.authorization).collect::<Vec<_>>();
    assert!(basic.iter().any(|a| a == "Basic dXNlcjpzM2NyZXQ="), "{basic:?}");

    // A copy within the registry mounts every blob: the token asked for it
    // covers the repository the blobs come from too.
    let sibling = format!("oci://{}/mounted/disk:1", server.host());
    let copied: Value = serde_json::from_str(&ok(&other, &["copy", &target, &sibling, "--json"])).unwrap();
    assert_eq!((copied["blobs_sent"].as_u64(), copied["blobs_mounted"].as_u64()), (Some(0), Some(4)), "{copied}");
    let asked = tokens.log().into_iter().map(|r| r.query).collect::<Vec<_>>();
    let both = "scope=repository%3Amounted%2Fdisk%3Apull%2Cpush&scope=repository%3Aprivate%2Fdisk%3Apull";
    assert!(asked.iter().any(|q| q.starts_with(both)), "no token for the mount's two repositories: {asked:?}");

    // A realm that refuses: a clear error saying how to log in.
    let refusing = TestServer::start();
    refusing.fault("/token", vmimg_testserver::Fault::Status(401), usize::MAX);
    refusing.add("/token", Vec::new());
    let locked = RegistryServer::start_with_token_auth(&refusing.url("/token"));
    let error = fails(&other, &["pull", &format!("oci://{}/private/disk:1", locked.host())]);
    assert!(error.contains("access denied") && error.contains("--username"), "{error}");
}

#[test]
fn an_index_resolves_to_the_platform_asked_for() {
    let server = RegistryServer::start();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new(RegistryOptions::default()).unwrap();
    let at = Reference::parse(&format!("{}/multi:1", server.host())).unwrap();
    let config = put_blob(&registry, &at, b"{}");
    let mut entries = Vec::new();
    for arch in ["amd64", "arm64"] {
        let disk = format!("the {arch} disk\n").repeat(64).into_bytes();
        let part = layer(put_blob(&registry, &at, &disk), artifact::DISK_RAW, "disk.raw");
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": artifact::OCI_MANIFEST, "artifactType": artifact::ARTIFACT_TYPE,
            "config": { "mediaType": artifact::EMPTY_CONFIG, "digest": config.digest, "size": 2 },
            "layers": [part]
        });
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let digest = sha256(&bytes);
        put_manifest(&registry, &at.at_digest(digest.clone()), &manifest);
        entries.push(serde_json::json!({
            "mediaType": artifact::OCI_MANIFEST, "digest": digest, "size": bytes.len(),
            "platform": { "os": "linux", "architecture": arch }
        }));
    }
    let index = serde_json::json!({ "schemaVersion": 2, "mediaType": artifact::OCI_INDEX, "manifests": entries });
    runtime().block_on(registry.put_manifest(&at, &serde_json::to_vec(&index).unwrap(), artifact::OCI_INDEX)).unwrap();
    let store = dir.path().join("store");
    let source = format!("oci://{at}");
    for arch in ["amd64", "arm64"] {
        let out = vmimg(&store, &["cat", "--arch", arch, &source]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.stdout, format!("the {arch} disk\n").repeat(64).into_bytes());
    }
    let amd = ok(&store, &["pull", "--arch", "amd64", &source]);
    let arm = ok(&store, &["pull", "--arch", "arm64", &source]);
    assert_ne!(amd, arm, "two architectures of one index are two images");
    assert_eq!(std::fs::read(arm).unwrap(), "the arm64 disk\n".repeat(64).into_bytes());
}

/// A layer typed as a raw disk whose bytes are a qcow2 header naming a host
/// file: published as raw, a probing VMM would hand the guest that file.
#[test]
fn a_raw_layer_carrying_a_qcow2_header_is_refused() {
    let server = RegistryServer::start();
    let dir = tempfile::tempdir().unwrap();
    let evil = dir.path().join("evil.qcow2");
    let created = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/passwd"])
        .arg(&evil)
        .arg("1M")
        .status()
        .unwrap();
    assert!(created.success());
    let registry = Registry::new(RegistryOptions::default()).unwrap();
    let at = Reference::parse(&format!("{}/evil:1", server.host())).unwrap();
    let config = put_blob(&registry, &at, b"{}");
    let part = layer(put_blob(&registry, &at, &std::fs::read(&evil).unwrap()), artifact::DISK_RAW, "disk.raw");
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": artifact::OCI_MANIFEST, "artifactType": artifact::ARTIFACT_TYPE,
        "config": { "mediaType": artifact::EMPTY_CONFIG, "digest": config.digest, "size": 2 },
        "layers": [part]
    });
    put_manifest(&registry, &at, &manifest);
    let store = dir.path().join("store");
    let error = fails(&store, &["pull", &format!("oci://{at}")]);
    assert!(error.contains("starts with a qcow2 image header naming backing file \"/etc/passwd\""), "{error}");
    assert!(images(&store).is_empty());
    let kept: Vec<_> = std::fs::read_dir(store.join("tmp")).unwrap().flatten().collect();
    assert!(kept.is_empty(), "tmp/ keeps {kept:?}");
    assert!(
        !store.join("blobs/sha256").exists() || std::fs::read_dir(store.join("blobs/sha256")).unwrap().next().is_none()
    );
}

/// Writes `bytes` into the OCI layout `dir` as a blob; returns its descriptor's digest and size.
fn layout_blob(dir: &Path, bytes: &[u8]) -> (Digest, u64) {
    let digest = sha256(bytes);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(digest.hex()), bytes).unwrap();
    (digest, bytes.len() as u64)
}

/// A cloud image in a local OCI layout (`oci:DIR:v1`) and in a tar of it
/// (`oci-archive:FILE:v1`), built here and never pushed: pulled as from a
/// registry, the disk equals `qemu-img convert`'s, and both name one image
/// (one manifest, one key).
#[test]
fn a_cloud_image_in_a_local_layout_or_archive_is_pulled() {
    let tmp = tempfile::tempdir().unwrap();
    let (raw, qcow2) = (tmp.path().join("disk.raw"), tmp.path().join("disk.qcow2"));
    noisy_disk(&raw, 16);
    let convert = Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&raw).arg(&qcow2).status().unwrap();
    assert!(convert.success());
    let layout = tmp.path().join("layout");
    let part = layout_blob(&layout, &std::fs::read(&qcow2).unwrap());
    layout_blob(&layout, b"{}");
    let manifest = artifact::manifest(artifact::DiskFormat::Qcow2, &[part], "disk", BTreeMap::new());
    let (digest, size) = layout_blob(&layout, &serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest.to_string(), "size": size,
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let archive = tmp.path().join("layout.tar");
    assert!(Command::new("tar").arg("-cf").arg(&archive).arg("-C").arg(&layout).arg(".").status().unwrap().success());

    let store = tmp.path().join("store");
    let pulled: Value =
        serde_json::from_str(&ok(&store, &["pull", "--json", &format!("oci:{}:v1", layout.display())])).unwrap();
    assert_eq!(std::fs::read(pulled["path"].as_str().unwrap()).unwrap(), std::fs::read(&raw).unwrap());
    assert_eq!(pulled["source"]["kind"], "layout");
    assert_eq!(pulled["digest"], digest.to_string());
    assert_eq!(pulled["verified"], true);
    let again: Value =
        serde_json::from_str(&ok(&store, &["pull", "--json", &format!("oci-archive:{}:v1", archive.display())]))
            .unwrap();
    assert_eq!((&again["name"], &again["cached"]), (&pulled["name"], &Value::Bool(true)), "one manifest, one image");
    let error = common::fails(&store, &["pull", &format!("oci:{}:v2", layout.display())]);
    assert!(error.contains("v2"), "{error}");
}

#[test]
fn a_push_cut_several_times_completes_and_the_registry_holds_each_part_once() {
    let registry = RegistryServer::start();
    let proxy = vmimg_testserver::cutting::CuttingProxy::start(&registry.host(), 40 << 20, 3);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut disk = vec![0u8; 200 << 20];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut disk).unwrap();
    std::fs::write(dir.path().join("disk.img"), &disk).unwrap();
    let key = {
        let path = ok(&store, &["pull", dir.path().join("disk.img").to_str().unwrap()]);
        Path::new(&path).parent().unwrap().file_name().unwrap().to_str().unwrap().to_owned()
    };
    let through_proxy = format!("oci://{}/vm/cut:1", proxy.host());
    let (pinned, stderr) = ok_with_stderr(
        &store,
        &["push", &key, &through_proxy, "--format", "raw", "--part-size", "64M", "--retries", "6"],
    );
    assert_eq!(proxy.cut(), 3, "the proxy cut fewer connections than asked: {stderr}");
    assert!(stderr.contains("retrying"), "the cuts were not told: {stderr}");
    assert!(stderr.contains("4 parts, 4 sent"), "{stderr}");

    // What the registry holds: each part once, the config and the manifest.
    // (The sessions cut mid-PATCH are Distribution's to purge: it answers
    // 404 for them, to a status request and to a DELETE alike.)
    let v2 = registry.storage().join("docker/registry/v2");
    let blobs = walk_files(&v2.join("blobs")).into_iter().filter(|p| p.ends_with("data")).count();
    assert_eq!(blobs, 4 + 2, "blobs in the registry's storage");
    let direct = pinned.replace(&proxy.host(), &registry.host());
    let pulled = ok(&dir.path().join("other"), &["pull", &direct]);
    assert!(std::fs::read(pulled).unwrap() == disk, "the registry holds another disk");
}

/// Every file under `dir`.
fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { files.extend(walk_files(&path)) } else { files.push(path) }
    }
    files
}

#[test]
fn copy_between_registries_streams_mounts_and_keeps_the_signature() {
    let (a, b) = (
        RegistryServer::start(),
        RegistryServer::start_configured(&vmimg_testserver::RegistryConfig {
            ip: Some("127.0.0.7".into()),
            ..Default::default()
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let disk = noisy_disk(&dir.path().join("disk.img"), 8);
    let key = {
        let path = ok(&store, &["pull", dir.path().join("disk.img").to_str().unwrap()]);
        Path::new(&path).parent().unwrap().file_name().unwrap().to_str().unwrap().to_owned()
    };
    let signing = dir.path().join("key.pem");
    let public = dir.path().join("key.pub");
    let openssl = |args: &[&str]| assert!(Command::new("openssl").args(args).status().unwrap().success());
    openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", signing.to_str().unwrap()]);
    openssl(&["ec", "-in", signing.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]);
    let source = format!("oci://{}/vm/disk:1", a.host());
    ok(
        &store,
        &["push", &key, &source, "--part-size", "3M", "--format", "raw", "--sign-key", signing.to_str().unwrap()],
    );

    // To another registry: every blob streamed, the signature with it; a
    // second copy sends nothing.
    let copier = dir.path().join("copier");
    let target = format!("oci://{}/mirror/disk:1", b.host());
    let copied: Value = serde_json::from_str(&ok(&copier, &["copy", &source, &target, "--json"])).unwrap();
    assert_eq!((copied["blobs_sent"].as_u64(), copied["signed"].as_bool()), (Some(3 + 1 + 2), Some(true)), "{copied}");
    assert!(!copier.exists(), "a copy between registries wrote to the store");
    let again: Value = serde_json::from_str(&ok(&copier, &["copy", &source, &target, "--json"])).unwrap();
    assert_eq!((again["blobs_sent"].as_u64(), again["blobs_present"].as_u64()), (Some(0), Some(6)), "{again}");
    let pulled = ok(&dir.path().join("puller"), &["pull", &target, "--verify-key", public.to_str().unwrap()]);
    assert!(std::fs::read(pulled).unwrap() == disk, "the copy is another disk");
    assert_eq!(copied["digest"], again["digest"]);

    // Within one registry: mounted, not sent.
    let sibling = format!("oci://{}/other/disk:1", a.host());
    let mounted: Value = serde_json::from_str(&ok(&copier, &["copy", &source, &sibling, "--json"])).unwrap();
    assert_eq!((mounted["blobs_sent"].as_u64(), mounted["blobs_mounted"].as_u64()), (Some(0), Some(6)), "{mounted}");

    // A container image (config and layers) copies the same way, and builds.
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/motd"), "copied\n").unwrap();
    let spec = vmimg_testserver::oci_image::ImageSpec::new().dir_layer(&rootfs).cmd(&["/bin/sh"]);
    spec.push(&a.host(), "test/app", "1").unwrap();
    let app = format!("oci://{}/test/app:1", b.host());
    ok(&copier, &["copy", &format!("oci://{}/test/app:1", a.host()), &app]);
    ok(&dir.path().join("builder"), &["build", &app, "--format", "cpio"]);

    // A source blob with other bytes fails the copy, and the target never holds it.
    let (_, image) = {
        let registry = Registry::new(RegistryOptions::default()).unwrap();
        let reference: Reference = format!("{}/vm/disk:1", a.host()).parse().unwrap();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(registry.cloud_image(&reference, "amd64", &vmimg_fetch::NoProgress))
            .unwrap()
    };
    let part = &image.parts[1].digest;
    let stored = a.storage().join(format!("docker/registry/v2/blobs/sha256/{}/{}/data", &part.hex()[..2], part.hex()));
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[7] ^= 1;
    std::fs::write(&stored, bytes).unwrap();
    let fresh = format!("oci://{}/fresh/disk:1", b.host());
    let (code, line) = common::fails_in_one_line(&copier, &["copy", &source, &fresh]);
    assert!(code != 0 && line.contains(&part.to_string()), "{line}");
    let (code, line) = common::fails_in_one_line(&copier, &["copy", &source, dir.path().join("x").to_str().unwrap()]);
    assert!(code == 2 && line.contains("two oci:// references"), "{line}");
}
