//! A fleet behind a pull-through cache: an upstream `docker-registry`, a
//! second one in proxy mode in front of it (127.0.0.2), and several hosts
//! (separate stores and `vmimg` processes) pulling the same cloud image and
//! building the same container image at once through it, as each host's
//! `certs.d/<upstream>/hosts.toml` says. The upstream's log counts what it
//! served: once one host has pulled, the rest of the fleet adds nothing.
//! (Hosts that all miss at once each cost the upstream a transfer:
//! Distribution's proxy streams a blob it is still fetching from the
//! upstream again for every other request, `ServeBlob`'s in-flight branch;
//! README says so.) Then the mirror is killed mid-pull and the hosts finish
//! from the upstream.

mod common;

use common::{command, ok};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};
use vmimg_testserver::{RegistryConfig, RegistryServer};

const HOSTS: usize = 4;

/// `count` hosts' stores, each told to pull `upstream`'s images through `mirror`.
fn fleet(dir: &Path, upstream: &RegistryServer, mirror: &str, count: usize) -> Vec<PathBuf> {
    (0..count)
        .map(|i| {
            let store = dir.join(format!("host-{i}"));
            let config = store.join("certs.d").join(upstream.host());
            std::fs::create_dir_all(&config).unwrap();
            let text = format!(
                "server = \"{}\"\n\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                upstream.url()
            );
            std::fs::write(config.join("hosts.toml"), text).unwrap();
            store
        })
        .collect()
}

/// Starts `vmimg ARGS` on every store at once.
fn start_all(stores: &[PathBuf], args: &[&str]) -> Vec<Child> {
    let start = |store: &PathBuf| command(store, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    stores.iter().map(start).collect()
}

/// Each run's output.
fn wait_all(children: Vec<Child>) -> Vec<Output> {
    children.into_iter().map(|child| child.wait_with_output().unwrap()).collect()
}

/// Runs `vmimg ARGS` on every store at once; returns each run's output.
fn all_at_once(stores: &[PathBuf], args: &[&str]) -> Vec<Output> {
    wait_all(start_all(stores, args))
}

/// `--json` outputs of runs that must all have succeeded.
fn json_of(outputs: &[Output]) -> Vec<Value> {
    outputs
        .iter()
        .map(|out| {
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            serde_json::from_slice(&out.stdout).unwrap()
        })
        .collect()
}

/// How many times the registry served each blob (GET, by digest).
fn blob_gets(registry: &RegistryServer) -> BTreeMap<String, usize> {
    let mut gets = BTreeMap::new();
    for request in registry.requests() {
        if let Some(rest) = request.strip_prefix("GET ")
            && let Some((_, digest)) = rest.split_once("/blobs/")
        {
            *gets.entry(digest.split('?').next().unwrap().to_owned()).or_default() += 1;
        }
    }
    gets
}

fn sha256_of(path: &str) -> String {
    let mut file = std::fs::File::open(path).unwrap();
    vmimg_fetch::digest_reader(vmimg_fetch::Algorithm::Sha256, &mut file).unwrap().to_string()
}

/// A raw disk of `mib` MiB of random bytes at `path`.
fn random_disk(path: &Path, mib: usize) {
    let mut bytes = vec![0u8; mib << 20];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Pulls `disk` into a scratch store and pushes it to `target` in raw
/// parts of `part` bytes.
fn publish(dir: &Path, disk: &Path, target: &str, part: &str) {
    let scratch = dir.join("publisher");
    let path = ok(&scratch, &["pull", disk.to_str().unwrap()]);
    let key = Path::new(&path).parent().unwrap().file_name().unwrap().to_str().unwrap().to_owned();
    ok(&scratch, &["push", &key, target, "--format", "raw", "--part-size", part]);
}

#[test]
fn a_fleet_behind_a_pull_through_cache_costs_the_upstream_what_one_host_does() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = RegistryServer::start_configured(&RegistryConfig { access_log: true, ..Default::default() });
    let mirror = RegistryServer::start_configured(&RegistryConfig {
        ip: Some("127.0.0.2".into()),
        proxy: Some(upstream.url()),
        ..Default::default()
    });
    random_disk(&dir.path().join("disk.raw"), 12);
    let cloud = format!("oci://{}/vm/disk:1", upstream.host());
    publish(dir.path(), &dir.path().join("disk.raw"), &cloud, "4M");
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/motd"), "one image for the fleet\n").unwrap();
    let spec = vmimg_testserver::oci_image::ImageSpec::new().dir_layer(&rootfs).cmd(&["/bin/sh"]);
    spec.push(&upstream.host(), "test/app", "1").unwrap();
    let container = format!("oci://{}/test/app:1", upstream.host());
    let published = blob_gets(&upstream);
    let pull = ["pull", cloud.as_str(), "--json"];
    let build = ["build", container.as_str(), "--format", "erofs", "--json"];

    // One host first (a canary, or the fleet's pre-pull job): the cache
    // fetches each blob from the upstream, at most twice (Distribution 2.8
    // fetches a missed blob once to serve and once to store).
    let canary = fleet(&dir.path().join("canary"), &upstream, &mirror.url(), 1);
    let first = [json_of(&all_at_once(&canary, &pull)), json_of(&all_at_once(&canary, &build))];
    let after_canary = blob_gets(&upstream);
    let fetched = growth(&published, &after_canary);
    assert!(fetched.len() >= 5, "3 parts, a layer and a config came from the upstream: {fetched:?}");
    assert!(fetched.values().all(|&n| n <= 2), "the upstream served a blob more than twice: {fetched:?}");

    // Then the fleet, at once: the upstream serves nothing more, and every
    // host has the canary's disks.
    let hosts = fleet(dir.path(), &upstream, &mirror.url(), HOSTS);
    let pulled = json_of(&all_at_once(&hosts, &pull));
    let built = json_of(&all_at_once(&hosts, &build));
    let more = growth(&after_canary, &blob_gets(&upstream));
    assert!(more.is_empty(), "{HOSTS} hosts made the upstream serve blobs again: {more:?}");
    for (outputs, canary) in [(&pulled, &first[0][0]), (&built, &first[1][0])] {
        let expected = sha256_of(canary["path"].as_str().unwrap());
        for output in outputs.iter().chain([canary]) {
            assert_eq!(output["served_by"], serde_json::json!([mirror.url()]), "{output}");
            assert_eq!(sha256_of(output["path"].as_str().unwrap()), expected, "a host ended with another disk");
        }
    }
}

/// The blobs served more often in `after` than in `before`, and how many more times.
fn growth(before: &BTreeMap<String, usize>, after: &BTreeMap<String, usize>) -> BTreeMap<String, usize> {
    after.iter().map(|(blob, n)| (blob.clone(), n - before.get(blob).unwrap_or(&0))).filter(|&(_, n)| n > 0).collect()
}

#[test]
fn a_mirror_killed_mid_pull_leaves_the_hosts_to_finish_from_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = RegistryServer::start();
    let mut mirror = RegistryServer::start_configured(&RegistryConfig {
        ip: Some("127.0.0.3".into()),
        proxy: Some(upstream.url()),
        access_log: true,
        ..Default::default()
    });
    random_disk(&dir.path().join("disk.raw"), 96);
    let cloud = format!("oci://{}/vm/big:1", upstream.host());
    publish(dir.path(), &dir.path().join("disk.raw"), &cloud, "8M");
    let stores = fleet(dir.path(), &upstream, &mirror.url(), HOSTS);
    let children = start_all(&stores, &["pull", &cloud, "--json"]);
    // Killed once it has served a blob.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !mirror.requests().iter().any(|r| r.starts_with("GET") && r.contains("/blobs/")) {
        assert!(Instant::now() < deadline, "the hosts never asked the mirror for a blob");
        std::thread::sleep(Duration::from_millis(5));
    }
    mirror.kill();
    let outputs = wait_all(children);
    let pulled = json_of(&outputs);
    let expected = sha256_of(dir.path().join("disk.raw").to_str().unwrap());
    for (output, out) in pulled.iter().zip(&outputs) {
        assert_eq!(sha256_of(output["path"].as_str().unwrap()), expected, "{output}");
        let hosts = output["served_by"].as_array().unwrap();
        assert!(hosts.contains(&Value::from(upstream.url())), "{output}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("{} failed, trying {}", mirror.url(), upstream.url())), "{stderr}");
    }
}

#[test]
fn a_mirror_serving_other_bytes_is_passed_over_and_the_disk_is_the_verified_one() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = RegistryServer::start();
    let mirror =
        RegistryServer::start_configured(&RegistryConfig { ip: Some("127.0.0.8".into()), ..Default::default() });
    random_disk(&dir.path().join("disk.raw"), 6);
    // qcow2 parts (zstd clusters), converted while they arrive: the
    // converter reads the mirror's bytes before they are found wrong.
    let publisher = dir.path().join("publisher");
    let path = ok(&publisher, &["pull", dir.path().join("disk.raw").to_str().unwrap()]);
    let key = Path::new(&path).parent().unwrap().file_name().unwrap().to_str().unwrap().to_owned();
    let cloud = format!("oci://{}/vm/disk:1", upstream.host());
    let on_mirror = format!("oci://{}/vm/disk:1", mirror.host());
    let pushed: Value =
        serde_json::from_str(&ok(&publisher, &["push", &key, &cloud, "--part-size", "2M", "--json"])).unwrap();
    ok(&publisher, &["push", &key, &on_mirror, "--part-size", "2M"]);
    let manifest = mirror.storage().join("docker/registry/v2/blobs/sha256");
    let digest = pushed["digest"].as_str().unwrap().trim_start_matches("sha256:").to_owned();
    let bytes = std::fs::read(manifest.join(&digest[..2]).join(&digest).join("data")).unwrap();
    let manifest: Value = serde_json::from_slice(&bytes).unwrap();
    let part = manifest["layers"][1]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_owned();
    let stored = mirror.storage().join(format!("docker/registry/v2/blobs/sha256/{}/{part}/data", &part[..2]));
    let mut part_bytes = std::fs::read(&stored).unwrap();
    for byte in part_bytes.iter_mut().step_by(4096) {
        *byte ^= 0xff;
    }
    std::fs::write(&stored, part_bytes).unwrap();

    let store = fleet(dir.path(), &upstream, &mirror.url(), 1).remove(0);
    let out = command(&store, &["pull", &cloud, "--json"]).output().unwrap();
    let pulled = json_of(std::slice::from_ref(&out)).remove(0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{} failed, trying {}", mirror.url(), upstream.url())), "{stderr}");
    let expected = sha256_of(dir.path().join("disk.raw").to_str().unwrap());
    assert_eq!(sha256_of(pulled["path"].as_str().unwrap()), expected, "the disk is not the one verified");
    assert_eq!(pulled["served_by"], serde_json::json!([mirror.url(), upstream.url()]), "{pulled}");

    // A copy to another registry streams the part from the mirror, finds it
    // wrong before the target commits it, and takes it from the upstream.
    let target =
        RegistryServer::start_configured(&RegistryConfig { ip: Some("127.0.0.9".into()), ..Default::default() });
    let copy = format!("oci://{}/vm/copied:1", target.host());
    let out = command(&store, &["copy", &cloud, &copy]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("{} failed, trying {}", mirror.url(), upstream.url())), "{stderr}");
    let copied = ok(&dir.path().join("from-target"), &["pull", &copy]);
    assert_eq!(sha256_of(&copied), expected, "the copy is not the verified disk");
}

#[test]
fn a_mirror_serving_another_layer_is_passed_over_and_the_tree_is_the_verified_one() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = RegistryServer::start();
    let mirror =
        RegistryServer::start_configured(&RegistryConfig { ip: Some("127.0.0.10".into()), ..Default::default() });
    // The image's one layer, and another the mirror serves under its digest:
    // other names, and shorter (zeros for noise), so the download reads all
    // of it before the digest is found wrong. A merged build reads a layer's
    // entries while it arrives: those of the mirror's must be dropped.
    let tree = |name: &str, noise: bool| {
        let root = dir.path().join(name);
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc").join(name), format!("{name}\n")).unwrap();
        let mut data = vec![0u8; 256 << 10];
        if noise {
            std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut data).unwrap();
        }
        std::fs::write(root.join("etc/data"), data).unwrap();
        vmimg_testserver::oci_image::ImageSpec::new().dir_layer(&root).cmd(&["/bin/sh"])
    };
    tree("upstream", true).push(&upstream.host(), "test/app", "1").unwrap();
    let copied = std::process::Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false"])
        .args(["--dest-tls-verify=false"])
        .arg(format!("docker://{}/test/app:1", upstream.host()))
        .arg(format!("docker://{}/test/app:1", mirror.host()))
        .status()
        .unwrap();
    assert!(copied.success(), "skopeo copy to the mirror");
    let layout = dir.path().join("other-layout");
    tree("mirror", false).build_layout(&layout, "1").unwrap();
    let other_layer = std::fs::read(layout_blob(&layout, &first_layer(&layout_manifest(&layout)))).unwrap();
    let mirror_manifest = mirror_blob_path(&mirror, &skopeo_digest(&upstream, "test/app:1"));
    let layer = first_layer(&serde_json::from_slice(&std::fs::read(mirror_manifest).unwrap()).unwrap());
    let stored = mirror_blob_path(&mirror, &layer);
    assert!(other_layer.len() < std::fs::metadata(&stored).unwrap().len() as usize, "the mirror's layer is shorter");
    std::fs::write(&stored, other_layer).unwrap();

    let store = fleet(dir.path(), &upstream, &mirror.url(), 1).remove(0);
    let image = format!("oci://{}/test/app:1", upstream.host());
    let out = command(&store, &["build", &image, "--format", "cpio", "--json"]).output().unwrap();
    let built = json_of(std::slice::from_ref(&out)).remove(0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{} failed, trying {}", mirror.url(), upstream.url())), "{stderr}");
    let listing = std::process::Command::new("cpio")
        .args(["-it", "--quiet", "-F", built["path"].as_str().unwrap()])
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(names.lines().any(|n| n.ends_with("etc/upstream")), "the upstream's file is missing: {names}");
    assert!(!names.contains("mirror"), "the mirror's layer got into the disk: {names}");
}

/// The digest (`sha256:…`) of the first layer of `manifest`.
fn first_layer(manifest: &Value) -> String {
    manifest["layers"][0]["digest"].as_str().unwrap().to_owned()
}

/// The manifest of the one image in OCI layout `layout`.
fn layout_manifest(layout: &Path) -> Value {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    serde_json::from_slice(&std::fs::read(layout_blob(layout, digest)).unwrap()).unwrap()
}

fn layout_blob(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

/// Where `registry` stores blob `digest` (`sha256:…`).
fn mirror_blob_path(registry: &RegistryServer, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    registry.storage().join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
}

/// The manifest digest of `registry`'s `name:tag`, as skopeo reads it.
fn skopeo_digest(registry: &RegistryServer, name: &str) -> String {
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{}/{name}", registry.host()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
