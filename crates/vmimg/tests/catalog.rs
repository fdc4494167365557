//! `vmimg catalog list|show|refresh` as a user meets them: a refresh that
//! reads Debian's layout through a mirror, the refreshed file then used with
//! `--catalog`, and per-alias failures.

use std::path::Path;
use std::process::{Command, Output};
use vmimg_fetch::{Algorithm, digest_reader};
use vmimg_testserver::TestServer;

fn vmimg(store: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vmimg"));
    command.arg("--store").arg(store).env("VMIMG_RETRY_DELAY", "10").args(args);
    command.output().expect("run vmimg")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The digest the test publisher lists for a file.
fn listed(name: &str) -> String {
    digest_reader(Algorithm::Sha512, name.as_bytes()).unwrap().to_string()
}

/// Debian's bookworm directory: the pinned build, a newer one, `latest/`.
fn publish_bookworm(root: &Path) {
    for snapshot in ["20260923-2610", "20261101-2700", "latest"] {
        let dir = root.join("images/cloud/bookworm").join(snapshot);
        std::fs::create_dir_all(&dir).unwrap();
        let mut sums = String::new();
        for arch in ["amd64", "arm64"] {
            for ext in ["json", "qcow2", "raw"] {
                let name = format!("debian-12-genericcloud-{arch}-{snapshot}.{ext}");
                sums += &format!("{}  {name}\n", &listed(&name)["sha512:".len()..]);
            }
        }
        std::fs::write(dir.join("SHA512SUMS"), sums).unwrap();
    }
}

#[test]
fn refresh_through_a_mirror_then_use_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (store, file) = (dir.path().join("store"), dir.path().join("catalog.json"));
    let file_arg = file.to_str().unwrap();
    publish_bookworm(&dir.path().join("upstream"));
    let server = TestServer::start();
    server.serve_dir("/debian/", dir.path().join("upstream"));
    let mirror = format!("https://cloud.debian.org/={}", server.url("/debian/"));

    let out = vmimg(&store, &["catalog", "refresh", file_arg, "debian-12", "--mirror", &mirror]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "debian-12: 20260923-2610 -> 20261101-2700\n");

    let out = vmimg(&store, &["catalog", "list", "--catalog", file_arg]);
    let list = text(&out.stdout);
    let row = list.lines().find(|l| l.starts_with("debian-12 ")).unwrap();
    assert!(row.contains(" 20261101-2700 ") && row.ends_with("amd64,arm64"), "{list}");
    assert!(list.lines().any(|l| l.starts_with("debian-13 ")), "the other aliases are still there: {list}");

    let out = vmimg(&store, &["catalog", "show", "debian-12", "--catalog", file_arg]);
    let entry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let name = "debian-12-genericcloud-arm64-20261101-2700.qcow2";
    assert_eq!(entry["snapshot"], "20261101-2700");
    assert_eq!(
        entry["arch"]["arm64"]["url"],
        format!("https://cloud.debian.org/images/cloud/bookworm/20261101-2700/{name}")
    );
    assert_eq!(entry["arch"]["arm64"]["digest"], listed(name));
    assert!(entry["bumped_at"].as_str().unwrap().ends_with('Z'), "{entry}");

    let out = vmimg(&store, &["catalog", "show", "debian-12"]);
    let embedded: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(embedded["snapshot"], "20260923-2610", "without --catalog, the embedded pin");

    // debian-13's directory is missing on the mirror, `nope` is no alias:
    // each fails alone, debian-12 is reported, the exit code says it failed.
    let out = vmimg(&store, &["catalog", "refresh", file_arg, "debian-12", "debian-13", "nope", "--mirror", &mirror]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "debian-12: unchanged (20261101-2700)\n");
    let stderr = text(&out.stderr);
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(lines.iter().all(|l| l.starts_with("vmimg: error: ")), "{stderr}");
    assert!(lines[0].contains("debian-13: GET") && lines[0].contains("404"), "{stderr}");
    assert!(lines[1].contains("nope: no alias \"nope\""), "{stderr}");
    assert!(lines[2].ends_with("2 of 3 aliases not refreshed: debian-13, nope"), "{stderr}");
}
