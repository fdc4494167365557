//! `Store::refresh_catalog` against a local server laid out like each
//! publisher (dated directories or dated files, checksum files with other
//! entries around the wanted one, decoys beside them), reached through
//! mirror rules as users reach a mirror: new snapshots, upstream URLs, the
//! listed digests, per-alias failures, hostile listings.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};
use vmimg_fetch::{Algorithm, Digest, FetchOptions, digest_reader};
use vmimg_store::{Arch, Catalog, Change, Mirrors, RefreshError, Store, StoreOptions};
use vmimg_testserver::TestServer;

/// The upstream hosts of the embedded catalog, and where the server keeps each.
const HOSTS: [(&str, &str); 5] = [
    ("https://cloud.debian.org/", "debian"),
    ("https://cloud-images.ubuntu.com/", "ubuntu"),
    ("https://download.fedoraproject.org/", "fedora"),
    ("https://dl.rockylinux.org/", "rocky"),
    ("https://dl-cdn.alpinelinux.org/", "alpine"),
];

/// The publishers, as files under a temporary directory served over HTTP.
struct Upstream {
    dir: tempfile::TempDir,
    server: TestServer,
}

impl Upstream {
    fn start() -> Upstream {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start();
        for (_, key) in HOSTS {
            server.serve_dir(&format!("/{key}/"), dir.path().join(key));
        }
        Upstream { dir, server }
    }

    /// Publishes `text` at upstream `url`.
    fn put(&self, url: &str, text: &str) {
        let (host, key) = HOSTS.iter().find(|(host, _)| url.starts_with(host)).expect("a known host");
        let path = self.dir.path().join(key).join(&url[host.len()..]);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Serves `bytes` at upstream `url` instead of what the tree has there.
    fn replace(&self, url: &str, bytes: Vec<u8>) {
        let (host, key) = HOSTS.iter().find(|(host, _)| url.starts_with(host)).expect("a known host");
        self.server.add(&format!("/{key}/{}", &url[host.len()..]), bytes);
    }

    /// A store that reaches every host through this server.
    fn store(&self, root: &Path) -> Store {
        let mut mirrors = Mirrors::default();
        for (host, key) in HOSTS {
            mirrors.add_rule(&format!("{host}={}", self.server.url(&format!("/{key}/")))).unwrap();
        }
        let fetch = FetchOptions {
            attempts: 2,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
            ..FetchOptions::default()
        };
        Store::open(StoreOptions { root: Some(root.to_owned()), mirrors, fetch, ..StoreOptions::default() }).unwrap()
    }
}

/// The digest the test publishers list for a file: any will do, as long as
/// it is theirs and differs per file.
fn listed(algorithm: Algorithm, name: &str) -> Digest {
    digest_reader(algorithm, name.as_bytes()).unwrap()
}

/// A coreutils line (`*` marks binary mode, as Ubuntu writes).
fn gnu_line(algorithm: Algorithm, name: &str, separator: &str) -> String {
    format!("{}{separator}{name}\n", listed(algorithm, name).hex())
}

fn bsd_line(name: &str) -> String {
    format!("# {name}: 123456 bytes\nSHA256 ({name}) = {}\n", listed(Algorithm::Sha256, name).hex())
}

/// Debian's `<codename>/<snapshot>/` directories, `latest/` and `daily/`.
fn publish_debian(up: &Upstream, codename: &str, version: &str, snapshots: &[&str]) {
    let base = format!("https://cloud.debian.org/images/cloud/{codename}/");
    for snapshot in snapshots.iter().chain(&["latest"]) {
        let mut sums = String::new();
        for arch in ["amd64", "arm64"] {
            for ext in ["json", "qcow2", "raw", "tar.xz"] {
                let name = format!("debian-{version}-genericcloud-{arch}-{snapshot}.{ext}");
                up.put(&format!("{base}{snapshot}/{name}"), "");
                sums += &gnu_line(Algorithm::Sha512, &name, "  ");
            }
        }
        up.put(&format!("{base}{snapshot}/SHA512SUMS"), &sums);
    }
    up.put(&format!("{base}daily/README"), "");
}

/// Ubuntu's `release-<snapshot>/` directories, `release/` and `current/`.
fn publish_ubuntu(up: &Upstream, codename: &str, version: &str, snapshots: &[&str]) {
    let base = format!("https://cloud-images.ubuntu.com/releases/{codename}/");
    for dir in snapshots.iter().map(|s| format!("release-{s}")).chain(["release".into(), "current".into()]) {
        let mut sums = String::new();
        for arch in ["amd64", "arm64", "riscv64"] {
            for ext in ["img", "tar.gz", "manifest"] {
                let name = format!("ubuntu-{version}-server-cloudimg-{arch}.{ext}");
                up.put(&format!("{base}{dir}/{name}"), "");
                sums += &gnu_line(Algorithm::Sha256, &name, " *");
            }
        }
        up.put(&format!("{base}{dir}/SHA256SUMS"), &sums);
    }
}

/// Fedora 43's images/ directories: qcow2 and raw.xz per build, one
/// signed CHECKSUM per build.
fn publish_fedora(up: &Upstream, builds: &[&str]) {
    for arch in ["x86_64", "aarch64"] {
        let base = format!("https://download.fedoraproject.org/pub/fedora/linux/releases/43/Cloud/{arch}/images/");
        for build in builds {
            let mut sums = String::from("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n");
            for kind in [
                "Generic-43-{build}.{arch}.qcow2",
                "Generic-43-{build}.{arch}.raw.xz",
                "AmazonEC2-43-{build}.{arch}.raw.xz",
            ] {
                let name = format!("Fedora-Cloud-Base-{}", kind.replace("{build}", build).replace("{arch}", arch));
                up.put(&format!("{base}{name}"), "");
                sums += &bsd_line(&name);
            }
            sums += "-----BEGIN PGP SIGNATURE-----\n\nnot checked\n-----END PGP SIGNATURE-----\n";
            up.put(&format!("{base}Fedora-Cloud-43-{build}-{arch}-CHECKSUM"), &sums);
        }
    }
}

/// Rocky 9.5's images/ directories: each image beside its own CHECKSUM,
/// with `latest` aliases and LVM variants around.
fn publish_rocky(up: &Upstream, builds: &[&str]) {
    for arch in ["x86_64", "aarch64"] {
        let base = format!("https://dl.rockylinux.org/pub/rocky/9.5/images/{arch}/");
        let names = builds
            .iter()
            .flat_map(|b| {
                [
                    format!("Rocky-9-GenericCloud-Base-9.5-{b}.{arch}.qcow2"),
                    format!("Rocky-9-GenericCloud-LVM-9.5-{b}.{arch}.qcow2"),
                ]
            })
            .chain([format!("Rocky-9-GenericCloud-Base.latest.{arch}.qcow2")]);
        for name in names {
            up.put(&format!("{base}{name}"), "");
            up.put(&format!("{base}{name}.CHECKSUM"), &bsd_line(&name));
        }
    }
}

/// Alpine 3.22's cloud/ directory: per image a `.sha512`, and other flavours around.
fn publish_alpine(up: &Upstream, releases: &[(&str, &str)]) {
    let base = "https://dl-cdn.alpinelinux.org/alpine/v3.22/releases/cloud/";
    for (version, revision) in releases {
        for arch in ["x86_64", "aarch64"] {
            for flavour in [
                "nocloud_alpine-{v}-{a}-uefi-cloudinit-{r}",
                "nocloud_alpine-{v}-{a}-bios-cloudinit-{r}",
                "aws_alpine-{v}-{a}-uefi-tiny-{r}",
            ] {
                let name = flavour.replace("{v}", version).replace("{a}", arch).replace("{r}", revision) + ".qcow2";
                up.put(&format!("{base}{name}"), "");
                up.put(&format!("{base}{name}.asc"), "");
                up.put(&format!("{base}{name}.sha512"), &gnu_line(Algorithm::Sha512, &name, "  "));
            }
        }
    }
}

/// Every embedded alias's publisher, each with a newer snapshot except
/// debian-13 and ubuntu-22.04 (whose pinned snapshots list other digests).
fn publish_all(up: &Upstream) {
    publish_debian(up, "bookworm", "12", &["20260801-2500", "20260923-2610", "20261101-2700"]);
    publish_debian(up, "trixie", "13", &["20260601-2400", "20260712-2537"]);
    publish_ubuntu(up, "noble", "24.04", &["20250430", "20250501", "20250501.1"]);
    publish_ubuntu(up, "jammy", "22.04", &["20250301", "20250429"]);
    publish_fedora(up, &["1.6", "1.9", "1.10"]);
    publish_rocky(up, &["20241118.0", "20241118.1", "20250105.3", "20250215.0"]);
    publish_alpine(up, &[("3.22.4", "r0"), ("3.22.9", "r1"), ("3.22.10", "r0")]);
}

fn refresh(store: &Store, file: &Path, aliases: &[&str]) -> BTreeMap<String, Result<Change, RefreshError>> {
    let aliases: Vec<String> = aliases.iter().map(|a| a.to_string()).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let report = runtime.block_on(store.refresh_catalog(file, &aliases, &vmimg_fetch::NoProgress)).unwrap();
    report.into_iter().map(|r| (r.alias, r.outcome)).collect()
}

fn bumped(from: &str, to: &str) -> Change {
    Change::Bumped { from: from.into(), to: to.into() }
}

fn unchanged(snapshot: &str) -> Change {
    Change::Unchanged { snapshot: snapshot.into() }
}

/// Checks that `alias` in `file` pins `snapshot` at exactly these upstream
/// URLs (amd64, arm64), each with the digest its publisher lists.
fn assert_pinned(file: &Path, alias: &str, snapshot: &str, algorithm: Algorithm, urls: [&str; 2]) {
    let catalog = Catalog::load(file).unwrap();
    let entry = catalog.get(alias).unwrap();
    assert_eq!(entry.snapshot, snapshot, "{alias}");
    for (arch, url) in [Arch::Amd64, Arch::Arm64].into_iter().zip(urls) {
        let artifact = &entry.arch[&arch];
        assert_eq!(artifact.url, url, "{alias} {arch}");
        assert_eq!(artifact.digest, listed(algorithm, url.rsplit_once('/').unwrap().1), "{alias} {arch}");
    }
}

fn bumped_at(file: &Path, alias: &str) -> Option<SystemTime> {
    let catalog = Catalog::load(file).unwrap();
    catalog.get(alias).unwrap().bumped_at.as_deref().map(|t| humantime::parse_rfc3339(t).unwrap())
}

#[test]
fn every_layout_moves_to_its_newest_snapshot() {
    let up = Upstream::start();
    publish_all(&up);
    let work = tempfile::tempdir().unwrap();
    let store = up.store(&work.path().join("store"));
    let file = work.path().join("catalog.json");
    let started = SystemTime::now() - Duration::from_secs(1);

    let report = refresh(&store, &file, &[]);
    let expected = BTreeMap::from([
        ("alpine-3.22", bumped("3.22.4-r0", "3.22.10-r0")),
        ("debian-12", bumped("20260923-2610", "20261101-2700")),
        ("debian-13", Change::Republished { snapshot: "20260712-2537".into() }),
        ("fedora-43", bumped("43-1.6", "43-1.10")),
        ("rocky-9", bumped("20241118.0", "20250215.0")),
        ("ubuntu-22.04", Change::Republished { snapshot: "20250429".into() }),
        ("ubuntu-24.04", bumped("20250430", "20250501.1")),
    ]);
    let report: BTreeMap<_, _> = report.into_iter().map(|(alias, outcome)| (alias, outcome.unwrap())).collect();
    assert_eq!(report, expected.into_iter().map(|(a, c)| (a.to_owned(), c)).collect());

    let debian = "https://cloud.debian.org/images/cloud/bookworm/20261101-2700/debian-12-genericcloud-";
    let debian = [&format!("{debian}amd64-20261101-2700.qcow2"), &format!("{debian}arm64-20261101-2700.qcow2")];
    assert_pinned(&file, "debian-12", "20261101-2700", Algorithm::Sha512, debian.map(String::as_str));
    let ubuntu = "https://cloud-images.ubuntu.com/releases/noble/release-20250501.1/ubuntu-24.04-server-cloudimg-";
    let ubuntu = [&format!("{ubuntu}amd64.img"), &format!("{ubuntu}arm64.img")];
    assert_pinned(&file, "ubuntu-24.04", "20250501.1", Algorithm::Sha256, ubuntu.map(String::as_str));
    let fedora = "https://download.fedoraproject.org/pub/fedora/linux/releases/43/Cloud/";
    let fedora = [
        &format!("{fedora}x86_64/images/Fedora-Cloud-Base-Generic-43-1.10.x86_64.qcow2"),
        &format!("{fedora}aarch64/images/Fedora-Cloud-Base-Generic-43-1.10.aarch64.qcow2"),
    ];
    assert_pinned(&file, "fedora-43", "43-1.10", Algorithm::Sha256, fedora.map(String::as_str));
    let rocky = "https://dl.rockylinux.org/pub/rocky/9.5/images/";
    let rocky = [
        &format!("{rocky}x86_64/Rocky-9-GenericCloud-Base-9.5-20250215.0.x86_64.qcow2"),
        &format!("{rocky}aarch64/Rocky-9-GenericCloud-Base-9.5-20250215.0.aarch64.qcow2"),
    ];
    assert_pinned(&file, "rocky-9", "20250215.0", Algorithm::Sha256, rocky.map(String::as_str));
    let alpine = "https://dl-cdn.alpinelinux.org/alpine/v3.22/releases/cloud/nocloud_alpine-3.22.10-";
    let alpine =
        [&format!("{alpine}x86_64-uefi-cloudinit-r0.qcow2"), &format!("{alpine}aarch64-uefi-cloudinit-r0.qcow2")];
    assert_pinned(&file, "alpine-3.22", "3.22.10-r0", Algorithm::Sha512, alpine.map(String::as_str));
    let trixie = "https://cloud.debian.org/images/cloud/trixie/20260712-2537/debian-13-genericcloud-";
    let trixie = [&format!("{trixie}amd64-20260712-2537.qcow2"), &format!("{trixie}arm64-20260712-2537.qcow2")];
    assert_pinned(&file, "debian-13", "20260712-2537", Algorithm::Sha512, trixie.map(String::as_str));

    assert_eq!(Catalog::load(&file).unwrap().get("alpine-3.22").unwrap().version, "3.22.10");
    let after = SystemTime::now();
    for alias in ["debian-12", "ubuntu-24.04", "fedora-43", "rocky-9", "alpine-3.22"] {
        let at = bumped_at(&file, alias).unwrap_or_else(|| panic!("{alias} has bumped_at"));
        assert!(started <= at && at <= after, "{alias}");
    }
    assert_eq!(bumped_at(&file, "debian-13"), None, "the snapshot did not move");
    let images: Vec<_> =
        up.server.log().into_iter().filter(|r| r.path.ends_with(".qcow2") || r.path.ends_with(".img")).collect();
    assert!(images.is_empty(), "digests come from checksum files, never from images: {images:?}");

    // A newer Debian build: only debian-12 moves, every other entry stays as it was.
    let before: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    publish_debian(&up, "bookworm", "12", &["20261215-2800"]);
    let report = refresh(&store, &file, &[]);
    assert_eq!(report["debian-12"].as_ref().unwrap(), &bumped("20261101-2700", "20261215-2800"));
    let now: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    for (alias, entry) in before.as_object().unwrap().iter().filter(|(alias, _)| *alias != "debian-12") {
        assert_eq!(report[alias].as_ref().unwrap(), &unchanged(entry["snapshot"].as_str().unwrap()));
        assert_eq!(&now[alias], entry, "{alias}");
    }

    // Nothing new: the file is not even rewritten.
    let (text, modified) = (std::fs::read(&file).unwrap(), std::fs::metadata(&file).unwrap().modified().unwrap());
    std::thread::sleep(Duration::from_millis(20));
    assert!(refresh(&store, &file, &[]).values().all(|outcome| matches!(outcome, Ok(Change::Unchanged { .. }))));
    assert_eq!(std::fs::read(&file).unwrap(), text);
    assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), modified);
}

#[test]
fn a_failing_alias_fails_alone() {
    let up = Upstream::start();
    publish_all(&up);
    // The newest Debian build's checksum list lacks the arm64 image.
    let sums = "https://cloud.debian.org/images/cloud/bookworm/20261101-2700/SHA512SUMS";
    let arm64 = "debian-12-genericcloud-arm64-20261101-2700.qcow2";
    up.put(sums, &gnu_line(Algorithm::Sha512, "debian-12-genericcloud-amd64-20261101-2700.qcow2", "  "));
    let work = tempfile::tempdir().unwrap();
    let store = up.store(&work.path().join("store"));
    let file = work.path().join("catalog.json");
    let mut catalog: serde_json::Value = serde_json::from_str(vmimg_store::EMBEDDED).unwrap();
    let mut custom = catalog["debian-12"].clone();
    custom["distro"] = "custom".into();
    catalog["custom-1"] = custom;
    std::fs::write(&file, Catalog::parse(&catalog.to_string(), "test").unwrap().to_json()).unwrap();

    let report = refresh(&store, &file, &["debian-12", "fedora-43", "nope", "custom-1"]);
    let error = |alias: &str| report[alias].as_ref().unwrap_err().to_string();
    assert!(error("debian-12").contains(&format!("no checksum line for {arm64}")), "{}", error("debian-12"));
    assert!(error("debian-12").contains(&up.server.url("/debian/images/cloud/bookworm/20261101-2700/SHA512SUMS")));
    assert!(error("nope").contains("no alias \"nope\""), "{}", error("nope"));
    assert!(error("custom-1").contains("\"custom\" has no refresher"), "{}", error("custom-1"));
    assert_eq!(report["fedora-43"].as_ref().unwrap(), &bumped("43-1.6", "43-1.10"));

    let written = Catalog::load(&file).unwrap();
    let embedded = Catalog::embedded();
    assert_eq!(written.get("debian-12"), embedded.get("debian-12"));
    assert_eq!(written.get("fedora-43").unwrap().snapshot, "43-1.10");
    assert_eq!(written.get("custom-1").unwrap().distro, "custom");

    let absent = work.path().join("absent.json");
    assert!(refresh(&store, &absent, &["nope"])["nope"].is_err());
    assert!(!absent.exists(), "nothing refreshed, nothing written");
}

#[test]
fn hostile_upstreams_fail_cleanly() {
    let up = Upstream::start();
    publish_debian(&up, "bookworm", "12", &["20260923-2610", "20261101-2700"]);
    let work = tempfile::tempdir().unwrap();
    let store = up.store(&work.path().join("store"));
    let file = work.path().join("catalog.json");
    std::fs::write(&file, Catalog::embedded().to_json()).unwrap();
    let pinned = std::fs::read(&file).unwrap();
    let listing = "https://cloud.debian.org/images/cloud/bookworm/";
    let links =
        |hrefs: &[&str]| hrefs.iter().map(|h| format!("<a href=\"{h}\">x</a>\n")).collect::<String>().into_bytes();
    let mut garbage = vec![0xff_u8; 4096];
    garbage.extend(links(&["20261101-2700/"]));
    // Each case overrides what the server sends for one URL; the checksum
    // list's comes first, while the listing is still the real one.
    let sums = "https://cloud.debian.org/images/cloud/bookworm/20261101-2700/SHA512SUMS";
    let short = format!("{}  debian-12-genericcloud-amd64-20261101-2700.qcow2\n", "ab".repeat(32));
    let escaping =
        ["../20991231-9999/", "/20991231-9999/", "http://evil/20991231-9999/", "20991231-9999/../", "..", "?C=M"];
    let cases = [
        (sums, short.into_bytes(), "wrong length"),
        (listing, links(&["20261101-2700/"]).repeat(200_000), "larger than the limit"),
        (listing, garbage, "not UTF-8"),
        (listing, links(&escaping), "lists nothing like 20260923-2610/"),
        (listing, links(&["99999999999999999999999-1/", "20991231-9999x/", "20991231/"]), "lists nothing like"),
        (listing, links(&["20260101-2000/"]), "older than the pinned 20260923-2610"),
    ];
    for (url, body, why) in cases {
        up.replace(url, body);
        let report = refresh(&store, &file, &["debian-12"]);
        let error = report["debian-12"].as_ref().unwrap_err().to_string();
        assert!(error.contains(why), "{why}: {error}");
        assert_eq!(std::fs::read(&file).unwrap(), pinned, "{why}");
    }
}
