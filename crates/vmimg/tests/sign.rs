//! Signed images, in cosign's key-based format, against a real
//! `docker-registry`: `push --sign-key` and `pull --verify-key` (and the
//! store config's `signatures` policy), every refusal made before any byte
//! of the image is used, and test vectors made independently by `openssl`
//! from the documented format, both ways.

mod common;

use common::{fails_in_one_line, ok, vmimg};
use serde_json::{Value, json};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use vmimg_fetch::{Algorithm, Digest, Hasher, NoProgress};
use vmimg_oci::{Reference, Registry, RegistryOptions};
use vmimg_testserver::RegistryServer;

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A P-256 key pair made by openssl: (PKCS#8 private, SEC1 private, SPKI public).
fn key_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (sec1, pkcs8, public) =
        (dir.join(format!("{name}.ec.pem")), dir.join(format!("{name}.pem")), dir.join(format!("{name}.pub")));
    let text = |p: &Path| p.to_str().unwrap().to_owned();
    openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &text(&sec1)]);
    openssl(&["pkcs8", "-topk8", "-nocrypt", "-in", &text(&sec1), "-out", &text(&pkcs8)]);
    openssl(&["ec", "-in", &text(&sec1), "-pubout", "-out", &text(&public)]);
    (pkcs8, sec1, public)
}

fn sha256(bytes: &[u8]) -> Digest {
    let mut hasher = Hasher::new(Algorithm::Sha256);
    hasher.update(bytes);
    hasher.finish()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A store holding a 4 MiB disk of random bytes; returns the store and the image's key.
fn store_with_disk(dir: &Path) -> (PathBuf, String) {
    let mut bytes = vec![0u8; 4 << 20];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
    std::fs::write(dir.join("disk.raw"), &bytes).unwrap();
    let store = dir.join("publisher");
    let path = ok(&store, &["pull", dir.join("disk.raw").to_str().unwrap()]);
    let key = Path::new(&path).parent().unwrap().file_name().unwrap().to_str().unwrap().to_owned();
    (store, key)
}

/// Pushes `key` to `target` (with `extra` arguments); returns the JSON it
/// prints. `plain` pushes in other parts: another manifest, another digest.
fn push(store: &Path, key: &str, target: &str, extra: &[&str]) -> Value {
    let part_size = if target.ends_with(":plain") { "2M" } else { "1M" };
    let mut args = vec!["push", key, target, "--format", "raw", "--part-size", part_size, "--json"];
    args.extend(extra);
    serde_json::from_str(&ok(store, &args)).unwrap()
}

/// A store that has nothing of any image: no blob, no image, nothing in tmp/.
fn assert_untouched(store: &Path) {
    for dir in ["blobs", "tmp", "images"] {
        let path = store.join(dir);
        let entries = std::fs::read_dir(&path).map(|d| d.count()).unwrap_or(0);
        assert_eq!(entries, 0, "{} holds something of a refused image", path.display());
    }
}

#[test]
fn signed_pushes_pull_and_everything_else_is_refused_before_any_byte_is_used() {
    let registry = RegistryServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, a_sec1, a_pub) = key_pair(dir.path(), "a");
    let (_, b_sec1, b_pub) = key_pair(dir.path(), "b");
    let (store, key) = store_with_disk(dir.path());
    let signed = format!("oci://{}/vm/disk:signed", registry.host());
    let plain = format!("oci://{}/vm/disk:plain", registry.host());

    let pushed = push(&store, &key, &signed, &["--sign-key", a.to_str().unwrap()]);
    let digest = pushed["digest"].as_str().unwrap();
    let tag = format!("sha256-{}.sig", &digest["sha256:".len()..]);
    assert_eq!(pushed["signature"], json!(format!("oci://{}/vm/disk:{tag}", registry.host())), "{pushed}");
    // Signing again with a key in SEC1 form adds a second signature beside the first.
    push(&store, &key, &signed, &["--sign-key", b_sec1.to_str().unwrap()]);
    push(&store, &key, &signed, &["--sign-key", a_sec1.to_str().unwrap()]);
    let manifest = signature_manifest(&registry, &tag);
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 2, "the same signature twice: {manifest}");

    let key_arg = |path: &PathBuf| path.to_str().unwrap().to_owned();
    let pulled = dir.path().join("pulled");
    ok(&pulled, &["pull", &signed, "--verify-key", &key_arg(&a_pub)]);
    let by_b = dir.path().join("by-b");
    ok(&by_b, &["pull", &signed, "--verify-key", &key_arg(&b_pub)]);

    // An unsigned image, and one whose signature tag holds another image's signature.
    let plain_digest = push(&store, &key, &plain, &[])["digest"].as_str().unwrap().to_owned();
    let refused = dir.path().join("refused");
    let (code, line) = fails_in_one_line(&refused, &["pull", &plain, "--verify-key", &key_arg(&a_pub)]);
    assert_eq!(code, 6, "{line}");
    assert!(line.contains("has no signature") && line.contains("sha256-"), "{line}");
    assert_untouched(&refused);
    let wrong_tag = format!("sha256-{}.sig", &plain_digest["sha256:".len()..]);
    copy_manifest(&registry, &tag, &wrong_tag);
    let (code, line) = fails_in_one_line(&refused, &["pull", &plain, "--verify-key", &key_arg(&a_pub)]);
    assert!(code == 6 && line.contains("a signature of another image"), "{line}");
    assert_untouched(&refused);

    // Signed by a key the puller does not take.
    let (_, _, c_pub) = key_pair(dir.path(), "c");
    let (code, line) = fails_in_one_line(&refused, &["pull", &signed, "--verify-key", &key_arg(&c_pub)]);
    assert!(code == 6 && line.contains("signed by another key"), "{line}");
    assert_untouched(&refused);
    let out = vmimg(&refused, &["cat", &signed, "--verify-key", &key_arg(&c_pub)]);
    assert!(!out.status.success() && out.stdout.is_empty(), "cat wrote bytes of a refused image");

    // The store config's policy, by scope.
    let policed = dir.path().join("policed");
    std::fs::create_dir_all(&policed).unwrap();
    let config = json!({ "signatures": { format!("{}/vm", registry.host()): [a_pub] } });
    std::fs::write(policed.join("config.json"), config.to_string()).unwrap();
    let (code, line) = fails_in_one_line(&policed, &["pull", &plain]);
    assert!(code == 6 && line.contains("refused"), "{line}");
    ok(&policed, &["pull", &signed]);
    let elsewhere = format!("oci://{}/other/disk:1", registry.host());
    push(&store, &key, &elsewhere, &[]);
    ok(&policed, &["pull", &elsewhere]);
    let config = json!({ "signatures": { "": ["missing.pub"] } });
    std::fs::write(policed.join("config.json"), config.to_string()).unwrap();
    let (code, line) = fails_in_one_line(&policed, &["images"]);
    assert!(code == 2 && line.contains("missing.pub"), "{line}");
}

/// The signature manifest under `tag` of `vm/disk`.
fn signature_manifest(registry: &RegistryServer, tag: &str) -> Value {
    let client = Registry::new(RegistryOptions::default()).unwrap();
    let at: Reference = format!("{}/vm/disk:{tag}", registry.host()).parse().unwrap();
    let manifest = runtime().block_on(client.manifest(&at, &NoProgress)).unwrap();
    serde_json::from_slice(&manifest.bytes).unwrap()
}

/// Puts the manifest under tag `from` of `vm/disk` under tag `to` too.
fn copy_manifest(registry: &RegistryServer, from: &str, to: &str) {
    let client = Registry::new(RegistryOptions::default()).unwrap();
    let source: Reference = format!("{}/vm/disk:{from}", registry.host()).parse().unwrap();
    let target: Reference = format!("{}/vm/disk:{to}", registry.host()).parse().unwrap();
    runtime().block_on(async {
        let manifest = client.manifest(&source, &NoProgress).await.unwrap();
        client.put_manifest(&target, &manifest.bytes, &manifest.media_type).await.unwrap();
    });
}

#[test]
fn signatures_openssl_makes_verify_and_vmimgs_verify_with_openssl() {
    let registry = RegistryServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, _, a_pub) = key_pair(dir.path(), "a");
    let (store, key) = store_with_disk(dir.path());
    let path = |p: &Path| p.to_str().unwrap().to_owned();

    // vmimg's signature, checked by openssl over the payload blob.
    let signed = format!("oci://{}/vm/disk:signed", registry.host());
    let digest = push(&store, &key, &signed, &["--sign-key", &path(&a)])["digest"].as_str().unwrap().to_owned();
    let tag = format!("sha256-{}.sig", &digest["sha256:".len()..]);
    let layer = &signature_manifest(&registry, &tag)["layers"][0];
    assert_eq!(layer["mediaType"], "application/vnd.dev.cosign.simplesigning.v1+json");
    let client = Registry::new(RegistryOptions::default()).unwrap();
    let at: Reference = format!("{}/vm/disk:{tag}", registry.host()).parse().unwrap();
    let payload_digest: Digest = layer["digest"].as_str().unwrap().parse().unwrap();
    let size = layer["size"].as_u64().unwrap();
    let payload = runtime().block_on(client.small_blob(&at, &payload_digest, size, 1 << 16, &NoProgress)).unwrap();
    let document: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(document["critical"]["image"]["docker-manifest-digest"], json!(digest));
    assert_eq!(document["critical"]["type"], "cosign container image signature");
    assert_eq!(document["critical"]["identity"]["docker-reference"], json!(format!("{}/vm/disk", registry.host())));
    std::fs::write(dir.path().join("payload"), &payload).unwrap();
    let signature = layer["annotations"]["dev.cosignproject.cosign/signature"].as_str().unwrap();
    std::fs::write(dir.path().join("signature.b64"), signature).unwrap();
    let der = openssl(&["base64", "-d", "-A", "-in", &path(&dir.path().join("signature.b64"))]);
    std::fs::write(dir.path().join("signature.der"), der).unwrap();
    let verified = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        &path(&a_pub),
        "-signature",
        &path(&dir.path().join("signature.der")),
        &path(&dir.path().join("payload")),
    ]);
    assert_eq!(String::from_utf8_lossy(&verified).trim(), "Verified OK");

    // A signature openssl makes over a payload written from the format's
    // documentation, in a manifest put together here: vmimg takes it.
    let plain = format!("oci://{}/vm/disk:plain", registry.host());
    let plain_digest = push(&store, &key, &plain, &[])["digest"].as_str().unwrap().to_owned();
    let payload = format!(
        "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"{}/vm/disk\"}},\"image\":{{\"docker-manifest-digest\":\
         \"{plain_digest}\"}},\"type\":\"cosign container image signature\"}},\"optional\":{{\"by\":\"openssl\"}}}}",
        registry.host()
    );
    std::fs::write(dir.path().join("payload.json"), &payload).unwrap();
    let der = openssl(&["dgst", "-sha256", "-sign", &path(&a), &path(&dir.path().join("payload.json"))]);
    std::fs::write(dir.path().join("openssl.der"), &der).unwrap();
    let b64 = openssl(&["base64", "-A", "-in", &path(&dir.path().join("openssl.der"))]);
    let config = b"{}".to_vec();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": 2 },
        "layers": [{
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "digest": sha256(payload.as_bytes()),
            "size": payload.len(),
            "annotations": { "dev.cosignproject.cosign/signature": String::from_utf8(b64).unwrap().trim() },
        }],
    });
    let at: Reference =
        format!("{}/vm/disk:sha256-{}.sig", registry.host(), &plain_digest["sha256:".len()..]).parse().unwrap();
    runtime().block_on(async {
        client.upload_bytes(&at, &sha256(&config), &config).await.unwrap();
        client.upload_bytes(&at, &sha256(payload.as_bytes()), payload.as_bytes()).await.unwrap();
        let bytes = serde_json::to_vec(&manifest).unwrap();
        client.put_manifest(&at, &bytes, "application/vnd.oci.image.manifest.v1+json").await.unwrap();
    });
    ok(&dir.path().join("puller"), &["pull", &plain, "--verify-key", &path(&a_pub)]);
}
