//! Registry hosts as a hosts directory configures them, against real
//! `docker-registry` processes on loopback addresses: mirrors tried in
//! order, each kind of failing mirror left for the next host, the bytes
//! checked whoever served them; TLS with a private CA, `skip_verify`, and
//! client certificates, with certificates made by `openssl`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use vmimg_fetch::{Digest, Progress};
use vmimg_oci::artifact::DiskFormat;
use vmimg_oci::{OciImage, Push, Reference, Registry, RegistryOptions};
use vmimg_testserver::tls::TestCa;
use vmimg_testserver::{RegistryConfig, RegistryServer};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// What a pull told its progress.
#[derive(Default)]
struct Heard {
    retries: Mutex<Vec<String>>,
    served_by: Mutex<Vec<String>>,
}

impl Progress for Heard {
    fn retrying(&self, error: &(dyn std::error::Error + 'static), _delay: std::time::Duration) {
        self.retries.lock().unwrap().push(error.to_string());
    }

    fn served_by(&self, host: &str) {
        self.served_by.lock().unwrap().push(host.to_owned());
    }
}

fn registry_with(hosts_dir: &Path) -> Registry {
    let options = RegistryOptions {
        hosts_dir: Some(hosts_dir.to_owned()),
        docker_config: Some("/nonexistent/config.json".into()),
        fetch: vmimg_fetch::FetchOptions { min_delay: std::time::Duration::from_millis(50), ..Default::default() },
        ..RegistryOptions::default()
    };
    Registry::new(options).unwrap()
}

/// Writes `DIR/<registry>/hosts.toml`.
fn hosts_file(dir: &Path, registry: &str, text: &str) {
    std::fs::create_dir_all(dir.join(registry)).unwrap();
    std::fs::write(dir.join(registry).join("hosts.toml"), text).unwrap();
}

/// A disk of `parts` MiB of random bytes, pushed raw in 1 MiB parts to
/// `reference` through `registry`; returns its bytes.
fn push_disk(registry: &Registry, reference: &Reference, dir: &Path, parts: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; (parts << 20) as usize];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
    push_disk_bytes(registry, reference, dir, &bytes);
    bytes
}

/// Pushes `bytes` raw in 1 MiB parts to `reference` through `registry`.
fn push_disk_bytes(registry: &Registry, reference: &Reference, dir: &Path, bytes: &[u8]) {
    let path = dir.join("pushed.raw");
    std::fs::write(&path, bytes).unwrap();
    let push = Push {
        format: DiskFormat::Raw,
        part_size: 1 << 20,
        jobs: 2,
        name: "disk".into(),
        annotations: BTreeMap::new(),
    };
    let file = std::fs::File::open(&path).unwrap();
    runtime().block_on(registry.push_disk(reference, &file, &push, &vmimg_fetch::NoProgress)).unwrap();
}

/// The disk `reference` names, pulled through `registry`: its parts
/// fetched as a pull fetches them, each checked, joined.
fn pull_disk(registry: &Registry, reference: &Reference, dir: &Path, heard: &Heard) -> Result<Vec<u8>, String> {
    runtime().block_on(async {
        let (_, image) = registry.image(reference, "amd64", heard).await.map_err(|e| e.to_string())?;
        let OciImage::Cloud(image) = image else { panic!("a cloud image") };
        let mut disk = Vec::new();
        for (i, part) in image.parts.iter().enumerate() {
            let partial = dir.join(format!("part-{i}"));
            let fetched = registry
                .fetch_blob(reference, &part.digest, part.size, &partial, heard)
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!((&fetched.digest, fetched.size), (&part.digest, part.size), "a part with other bytes");
            disk.extend(std::fs::read(&partial).unwrap());
        }
        Ok(disk)
    })
}

/// The path of blob `digest` in a registry's storage.
fn stored_blob(registry: &RegistryServer, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    registry.storage().join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
}

#[test]
fn mirrors_are_tried_in_order_and_a_failing_one_is_left_for_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = RegistryServer::start();
    let reference: Reference = format!("{}/vm/disk:1", upstream.host()).parse().unwrap();
    let plain = Registry::new(RegistryOptions::default()).unwrap();
    let disk = push_disk(&plain, &reference, dir.path(), 4);

    // A mirror that refuses connections, one that lacks the image, and one
    // that serves a part with other bytes.
    let refused = std::net::TcpListener::bind("127.0.0.3:0").unwrap().local_addr().unwrap();
    let empty =
        RegistryServer::start_configured(&RegistryConfig { ip: Some("127.0.0.4".into()), ..Default::default() });
    let corrupt =
        RegistryServer::start_configured(&RegistryConfig { ip: Some("127.0.0.5".into()), ..Default::default() });
    let on_corrupt: Reference = format!("{}/vm/disk:1", corrupt.host()).parse().unwrap();
    push_disk_bytes(&plain, &on_corrupt, dir.path(), &disk);
    let (_, image) = runtime().block_on(plain.image(&on_corrupt, "amd64", &vmimg_fetch::NoProgress)).unwrap();
    let OciImage::Cloud(image) = image else { panic!("a cloud image") };
    let bad = &image.parts[2].digest;
    let stored = stored_blob(&corrupt, bad);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();

    let hosts = dir.path().join("certs.d");
    let text = format!(
        "server = \"{}\"\n[host.\"http://{refused}\"]\n[host.\"{}\"]\n[host.\"{}\"]\n",
        upstream.url(),
        empty.url(),
        corrupt.url()
    );
    hosts_file(&hosts, &upstream.host(), &text);
    let registry = registry_with(&hosts);
    let heard = Heard::default();
    let pulled = pull_disk(&registry, &reference, dir.path(), &heard).unwrap();
    assert!(pulled == disk, "the disk pulled through the mirrors is not the one pushed");

    let retries = heard.retries.lock().unwrap().join("\n");
    assert!(retries.contains(&format!("http://{refused} failed, trying {}", empty.url())), "{retries}");
    assert!(retries.contains(&format!("{} failed, trying {}", empty.url(), corrupt.url())), "{retries}");
    assert!(retries.contains("not found"), "the empty mirror's 404: {retries}");
    assert!(
        retries.contains(&format!("{} failed, trying {}: blob digest mismatch", corrupt.url(), upstream.url())),
        "{retries}"
    );
    let served: std::collections::BTreeSet<String> = heard.served_by.lock().unwrap().iter().cloned().collect();
    assert_eq!(served, [corrupt.url(), upstream.url()].into(), "the corrupt mirror served all but one part");
}

#[test]
fn capabilities_say_which_host_resolves_tags_and_which_serves_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = RegistryServer::start();
    let reference: Reference = format!("{}/vm/disk:1", upstream.host()).parse().unwrap();
    let plain = Registry::new(RegistryOptions::default()).unwrap();
    let disk = push_disk(&plain, &reference, dir.path(), 2);
    // A mirror holding the same image under the same name, that may only
    // serve blobs: the tag is resolved upstream, the parts come from it.
    let mirror = RegistryServer::start_configured(&RegistryConfig {
        ip: Some("127.0.0.6".into()),
        access_log: true,
        ..Default::default()
    });
    push_disk_bytes(&plain, &format!("{}/vm/disk:1", mirror.host()).parse().unwrap(), dir.path(), &disk);
    let hosts = dir.path().join("certs.d");
    let text = format!("[host.\"{}\"]\ncapabilities = [\"pull\"]\n", mirror.url());
    hosts_file(&hosts, &upstream.host(), &text);
    let heard = Heard::default();
    let before = mirror.requests().len();
    let pulled = pull_disk(&registry_with(&hosts), &reference, dir.path(), &heard).unwrap();
    assert!(pulled == disk);
    let served = heard.served_by.lock().unwrap().clone();
    assert_eq!(served[0], upstream.url(), "the tag is resolved upstream");
    assert!(served[1..].iter().all(|h| *h == mirror.url()), "{served:?}");
    let probes = mirror.requests()[before..].iter().filter(|r| *r == "GET /v2/").count();
    assert_eq!(probes, 1, "an open mirror was asked how to authorize more than once");
    let asked: Vec<String> = mirror.requests()[before..].iter().filter(|r| *r != "GET /v2/").cloned().collect();
    assert!(asked.iter().all(|r| r.contains("/blobs/") && r.contains("?ns=127.0.0.1")), "{asked:?}");
    assert_eq!(asked.iter().filter(|r| r.starts_with("GET")).count(), 2, "{asked:?}");
}

#[test]
fn tls_registries_take_a_private_ca_skip_verify_and_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&dir.path().join("pki"), "vmimg-test-ca");
    let server = ca.server("registry", "127.0.0.1");
    let client = ca.client("host-a");
    let secure = RegistryServer::start_configured(&RegistryConfig {
        tls: Some((server.cert.clone(), server.key.clone())),
        ..Default::default()
    });
    let mutual = RegistryServer::start_configured(&RegistryConfig {
        tls: Some((server.cert.clone(), server.key.clone())),
        client_ca: Some(ca.ca_cert.clone()),
        ..Default::default()
    });
    let hosts = dir.path().join("certs.d");
    std::fs::create_dir_all(&hosts).unwrap();
    let configure = |registry: &RegistryServer, extra: &str| {
        hosts_file(&hosts, &registry.host(), &format!("server = \"{}\"\n{extra}", registry.url()));
    };
    let ca_line = format!("ca = \"{}\"\n", ca.ca_cert.display());

    // The private CA: a push and a pull.
    configure(&secure, &ca_line);
    let reference: Reference = format!("{}/vm/disk:1", secure.host()).parse().unwrap();
    let disk = push_disk(&registry_with(&hosts), &reference, dir.path(), 1);
    let pulled = pull_disk(&registry_with(&hosts), &reference, dir.path(), &Heard::default()).unwrap();
    assert!(pulled == disk);

    // Without it the certificate is refused, and says why; skip_verify takes it.
    configure(&secure, "");
    let error = pull_disk(&registry_with(&hosts), &reference, dir.path(), &Heard::default()).unwrap_err();
    assert!(error.contains("TLS refused the connection") && error.contains("UnknownIssuer"), "{error}");
    configure(&secure, "skip_verify = true\n");
    assert!(pull_disk(&registry_with(&hosts), &reference, dir.path(), &Heard::default()).unwrap() == disk);

    // A registry that asks for a client certificate: refused without, taken with.
    let on_mutual: Reference = format!("{}/vm/disk:1", mutual.host()).parse().unwrap();
    configure(&mutual, &ca_line);
    let error = pull_disk(&registry_with(&hosts), &on_mutual, dir.path(), &Heard::default()).unwrap_err();
    assert!(error.contains(&mutual.host()) && error.contains("TLS refused the connection"), "{error}");
    let client_line = format!("client = [[\"{}\", \"{}\"]]\n", client.cert.display(), client.key.display());
    configure(&mutual, &format!("{ca_line}{client_line}"));
    push_disk_bytes(&registry_with(&hosts), &on_mutual, dir.path(), &disk);
    assert!(pull_disk(&registry_with(&hosts), &on_mutual, dir.path(), &Heard::default()).unwrap() == disk);

    // A certificate file that is not one is refused by name.
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    configure(&secure, &format!("ca = \"{}\"\n", dir.path().join("junk.pem").display()));
    let error = pull_disk(&registry_with(&hosts), &reference, dir.path(), &Heard::default()).unwrap_err();
    assert!(error.contains("junk.pem"), "{error}");
}
