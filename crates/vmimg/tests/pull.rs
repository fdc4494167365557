//! `vmimg pull` as a user and a script meet it: the path as the last line,
//! `--json`, quiet runs, one-line errors, several processes pulling the
//! same source at once downloading it once, a full disk, names and
//! refreshed URLs.

mod common;

use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use vmimg_testserver::{Fault, TestServer};

fn vmimg(store: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vmimg"));
    command.arg("--store").arg(store).env("VMIMG_RETRY_DELAY", "10").args(args);
    command
}

fn run(mut command: Command) -> Output {
    command.output().expect("run vmimg")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A qcow2 made by qemu-img (6 MiB of incompressible data in 32 MiB), its
/// sha256, and its raw bytes.
fn image(dir: &Path) -> (Vec<u8>, String, Vec<u8>) {
    let raw = dir.join("src.raw");
    let qcow2 = dir.join("src.qcow2");
    let ok = |c: &mut Command| assert!(c.status().unwrap().success());
    ok(Command::new("qemu-img").args(["create", "-q", "-f", "raw"]).arg(&raw).arg("32M"));
    let mut noise = vec![0u8; 6 << 20];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut noise).unwrap();
    std::fs::OpenOptions::new().write(true).open(&raw).unwrap().write_all_at(&noise, 2 << 20).unwrap();
    ok(Command::new("qemu-img").args(["convert", "-c", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&qcow2));
    let out = Command::new("sha256sum").arg(&qcow2).output().unwrap();
    let digest = format!("sha256:{}", text(&out.stdout).split_whitespace().next().unwrap());
    (std::fs::read(qcow2).unwrap(), digest, std::fs::read(raw).unwrap())
}

#[test]
fn pull_prints_the_disk_path_last_and_json_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let (qcow2, digest, raw) = image(dir.path());
    let server = TestServer::start();
    server.add("/os.qcow2", qcow2);
    let store = dir.path().join("store");
    let url = server.url("/os.qcow2");

    let out = run(vmimg(&store, &["pull", &url, "--digest", &digest]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let path = stdout.lines().last().unwrap();
    assert!(std::fs::read(path).unwrap() == raw);
    assert!(text(&out.stderr).contains("downloaded, verified and converted"), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains('\r'), "no progress bar when not on a terminal");

    let out = run(vmimg(&store, &["-q", "pull", &url, "--digest", &digest, "--json"]));
    assert!(out.status.success() && out.stderr.is_empty(), "{}", text(&out.stderr));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["path"], path);
    assert_eq!(record["cached"], true);
    assert_eq!(record["verified"], true);
    assert_eq!(record["digest"], digest.as_str());
    assert_eq!(server.requests("/os.qcow2"), 1);
}

#[test]
fn unverified_urls_are_flagged_and_failures_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (qcow2, digest, _) = image(dir.path());
    let server = TestServer::start();
    server.add("/os.qcow2", qcow2);
    let store = dir.path().join("store");

    let out = run(vmimg(&store, &["pull", &server.url("/os.qcow2")]));
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("is not verified"), "{}", text(&out.stderr));

    let wrong = format!("sha256:{}", "0".repeat(64));
    let out = run(vmimg(&store, &["pull", &server.url("/os.qcow2"), "--digest", &wrong]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "refused");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("vmimg: error: digest mismatch") && stderr.contains(&digest) && stderr.contains(&wrong));

    for (source, expected) in [("no-such-alias", "unknown alias"), ("./missing.img", "cannot open")] {
        let out = run(vmimg(&store, &["pull", source]));
        assert_eq!(out.status.code(), Some(3), "not found");
        assert!(text(&out.stderr).contains(expected), "{}", text(&out.stderr));
        assert!(!text(&out.stderr).contains("cannot cannot"), "{}", text(&out.stderr));
    }
    let no_repository = "names a registry but no repository";
    for (args, said) in [
        (&["pull", "127.0.0.1:5055/vm/test:v1"][..], "a registry image is written oci://127.0.0.1:5055/vm/test:v1"),
        (&["pull", "oci:127.0.0.1:5055/vm/test:v1"], "names no local layout; a registry image is written oci://"),
        (
            &["build", "oci:registry.example/vm/test:v1"],
            "a registry image is written oci://registry.example/vm/test:v1",
        ),
        (&["pull", "oci://127.0.0.1:5000"], no_repository),
        (&["cat", "oci://127.0.0.1:5000"], no_repository),
        (&["push", "x", "oci://127.0.0.1:5000"], no_repository),
        (&["push", "x", "127.0.0.1:5000/vm/x:1"], "is not a registry reference: write oci://"),
        (&["copy", "oci://127.0.0.1:5000", "oci://127.0.0.1:5000/vm/x:1"], no_repository),
        (&["cat", "oci:./layout:v1"], "is not a registry reference: write oci://"),
        (&["build", "./missing.img"], "is not a container image"),
    ] {
        let out = run(vmimg(&store, args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: invalid input: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(said), "{args:?}: {}", text(&out.stderr));
    }
    for args in [["bundle", "import", "./missing.tar.zst"], ["instance", "create", "./missing.img"]] {
        let out = run(vmimg(&store, &args));
        let stderr = text(&out.stderr);
        assert!(stderr.contains("cannot open") && !stderr.contains("cannot cannot"), "{args:?}: {stderr}");
    }
    let out = run(vmimg(&store, &["pull", "x", "--digest", "md5:00"]));
    assert_eq!(out.status.code(), Some(2), "a malformed digest is a usage error");
}

#[test]
fn processes_pulling_the_same_source_download_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let (qcow2, digest, raw) = image(dir.path());
    let server = TestServer::start();
    // A body that takes about a second, so the processes overlap.
    server.fault("/os.qcow2", Fault::SlowBody { bytes_per_sec: qcow2.len() as u64 }, usize::MAX);
    server.add("/os.qcow2", qcow2);
    let store = dir.path().join("store");
    let url = server.url("/os.qcow2");
    let children: Vec<_> = (0..4)
        .map(|_| {
            let mut command = vmimg(&store, &["-q", "pull", &url, "--digest", &digest]);
            command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let paths: Vec<String> = children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", text(&out.stderr));
            text(&out.stdout).trim().to_owned()
        })
        .collect();
    assert!(paths.windows(2).all(|w| w[0] == w[1]), "{paths:?}");
    assert_eq!(server.requests("/os.qcow2"), 1, "one download for four processes");
    assert!(std::fs::read(&paths[0]).unwrap() == raw);
}

#[test]
fn catalog_list_and_show() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = run(vmimg(&store, &["catalog", "list"]));
    let list = text(&out.stdout);
    assert!(list.contains("debian-12") && list.contains("amd64,arm64"), "{list}");
    let out = run(vmimg(&store, &["catalog", "show", "debian-12"]));
    let entry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(entry["arch"]["arm64"]["digest"].as_str().unwrap().starts_with("sha512:"));
}

#[test]
fn a_killed_pull_is_resumed_by_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let (qcow2, digest, raw) = image(dir.path());
    let len = qcow2.len() as u64;
    let server = TestServer::start();
    // The first request trickles (about 4 s for the whole body).
    server.fault("/os.qcow2", Fault::SlowBody { bytes_per_sec: len / 4 }, 1);
    server.add("/os.qcow2", qcow2);
    let store = dir.path().join("store");
    let url = server.url("/os.qcow2");
    let mut first = vmimg(&store, &["-q", "pull", &url, "--digest", &digest]).spawn().unwrap();
    let part = wait_for_partial(&store, len / 4);
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    assert!(std::fs::read_dir(store.join("images")).unwrap().next().is_none(), "no image from a killed pull");

    let out = run(vmimg(&store, &["-q", "pull", &url, "--digest", &digest]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(std::fs::read(text(&out.stdout).trim()).unwrap() == raw);
    // (The killed download's record may land last: the server logs a
    // request when it stops sending, and notices the dead client late.)
    let resumed = server.log().into_iter().find(|r| r.status == 206).expect("a resumed request");
    let resumed_at: u64 = resumed.range.unwrap().trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap();
    assert!(resumed_at >= part, "resumed at {resumed_at}, {part} bytes were held");
    assert!(!part_path(&store).exists(), "the partial became the blob");
}

/// A pull that fills its disk fails in one line (exit 9) that says what its
/// partial download keeps, where, and how to resume or drop it; a plain
/// `gc` keeps the fresh partial, `gc --partials` (its dry run first) frees
/// it. Needs root (a 16 MiB tmpfs holds the store).
#[test]
fn a_full_disk_says_what_the_partial_keeps_and_gc_partials_drops_it() {
    let mount = match vmimg_testserver::mounts::Mount::tmpfs_of(16 << 20) {
        Ok(mount) => mount,
        Err(why) => return vmimg_testserver::mounts::skip_missing(format!("a small tmpfs (root): {why}")),
    };
    let mut noise = vec![0u8; 32 << 20];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut noise).unwrap();
    let server = TestServer::start();
    server.add("/big.raw", noise);
    let store = mount.path().join("store");

    let (code, line) = common::error_line(&run(vmimg(&store, &["pull", &server.url("/big.raw")])));
    assert_eq!(code, 9, "{line}");
    let partial = part_path(&store);
    let kept = std::fs::metadata(&partial).unwrap().blocks() * 512;
    assert!(kept > 12 << 20, "the partial keeps {kept} bytes of a 16 MiB disk");
    let expected = format!(
        "No space left on device (os error 28): the partial download keeps {} in {}; free space and pull again to \
         resume, or drop it with `vmimg gc --partials`",
        vmimg_disk::format_size(kept),
        partial.display()
    );
    assert!(line.contains(&format!("cannot write {}", partial.display())) && line.contains(&expected), "{line}");

    let gc = |args: &[&str]| -> serde_json::Value {
        let out = run(vmimg(&store, &[&["gc", "--json"], args].concat()));
        assert!(out.status.success() && out.stderr.is_empty(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(gc(&[])["tmp_entries"], 0, "a fresh partial is kept to resume");
    let dry = gc(&["--partials", "--dry-run"]);
    assert!(dry["dry_run"] == true && dry["tmp_entries"] == 2, "the partial and its sidecar: {dry}");
    assert!(dry["bytes_freed"].as_u64().unwrap() >= kept && partial.exists(), "{dry}");
    let done = gc(&["--partials"]);
    assert_eq!((&done["tmp_entries"], &done["bytes_freed"]), (&dry["tmp_entries"], &dry["bytes_freed"]));
    assert!(!partial.exists(), "gc --partials dropped it");
    let left: Vec<_> = std::fs::read_dir(store.join("tmp")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "left in tmp/: {left:?}");
}

fn part_path(store: &Path) -> std::path::PathBuf {
    let tmp = store.join("tmp");
    std::fs::read_dir(&tmp)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "part"))
        .unwrap_or_else(|| tmp.join("none.part"))
}

/// Waits until the partial download holds at least `bytes`; returns its length.
fn wait_for_partial(store: &Path, bytes: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let len = std::fs::metadata(part_path(store)).map(|m| m.len()).unwrap_or(0);
        if len >= bytes {
            return len;
        }
        assert!(std::time::Instant::now() < deadline, "the download never got going");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_terminal_gets_a_progress_bar() {
    let dir = tempfile::tempdir().unwrap();
    let (qcow2, digest, _) = image(dir.path());
    let server = TestServer::start();
    server.add("/os.qcow2", qcow2);
    let command = format!(
        "{} --store {} pull {} --digest {digest}",
        env!("CARGO_BIN_EXE_vmimg"),
        dir.path().join("store").display(),
        server.url("/os.qcow2")
    );
    // script(1) runs the command on a pseudo-terminal and copies what it draws.
    let out = Command::new("script").args(["-qec", &command, "/dev/null"]).output().expect("script(1) from util-linux");
    let screen = text(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("ETA") && screen.contains("MiB"), "no bar: {screen}");
    // script's terminal has no width: the bar keeps a fixed one rather than shrinking to nothing.
    assert!(screen.contains("] ") && screen.contains(" ["), "no fixed-width bar: {screen}");
    // The bar is labelled with the source as written, never the store's key (the path's last line has that).
    let bar = screen.lines().find(|line| line.contains(" [")).unwrap();
    assert!(bar.contains(&format!("{} [", server.url("/os.qcow2"))), "{bar}");
    let before_path = screen.rsplit_once("/images/").unwrap().0;
    assert!(!before_path.contains("url-"), "{screen}");

    // stdout captured by the shell, stderr still the terminal: the bar is drawn, the path captured.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    server.add("/other.qcow2", image(&other).0);
    let captured = format!(
        "D=$({} --store {} pull {}); echo \"path=$D\"",
        env!("CARGO_BIN_EXE_vmimg"),
        dir.path().join("store").display(),
        server.url("/other.qcow2")
    );
    let out = Command::new("script").args(["-qec", &captured, "/dev/null"]).output().unwrap();
    let screen = text(&out.stdout);
    assert!(screen.contains("ETA") && screen.contains("path=/"), "{screen}");
}

#[test]
fn the_speed_limit_options_cut_a_dripping_download() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    server.add("/os.img", vec![7; 1 << 20]);
    // 16 KiB/s: a minute for the body, and never silent for --read-timeout.
    server.fault("/os.img", Fault::SlowBody { bytes_per_sec: 16 << 10 }, usize::MAX);
    let store = dir.path().join("store");
    let started = std::time::Instant::now();
    let limits = ["--speed-limit", "262144", "--speed-time", "1", "--retries", "2"];
    let out = run(vmimg(&store, &[&["pull", &server.url("/os.img")], &limits[..]].concat()));
    let stderr = text(&out.stderr);
    assert!(!out.status.success() && started.elapsed() < std::time::Duration::from_secs(10), "{stderr}");
    let too_slow = "too slow: ";
    assert!(stderr.matches(too_slow).count() == 2 && stderr.contains("retrying in"), "a retry, then the end: {stderr}");
    assert!(stderr.contains("over the last 1s, under the minimum of 262144 bytes/s"), "{stderr}");
    assert!(stderr.contains("gave up after 2 attempts"), "{stderr}");
}

#[test]
fn names_tag_images_and_refresh_pulls_a_changed_url() {
    use common::{fails_in_one_line, ok, ok_with_stderr};
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let server = TestServer::start();
    std::fs::create_dir(dir.path().join("b")).unwrap();
    let (first, second) = (image(dir.path()), image(&dir.path().join("b")));
    server.add("/os.qcow2", first.0);
    let url = server.url("/os.qcow2");

    let path = ok(&store, &["-q", "pull", &url, "--name", "web"]);
    assert_eq!(std::fs::read(&path).unwrap(), first.2);
    let listing = ok(&store, &["images"]);
    assert!(listing.lines().next().unwrap().contains("NAMES") && listing.contains(" web "), "{listing}");
    let (_, told) = ok_with_stderr(&store, &["tag", "web", "stable"]);
    assert!(told.starts_with("stable names image url-"), "{told}");
    let record: serde_json::Value = serde_json::from_str(&ok(&store, &["-q", "pull", "stable", "--json"])).unwrap();
    assert_eq!(
        (record["cached"].as_bool(), record["names"].clone()),
        (Some(true), serde_json::json!(["stable", "web"]))
    );
    let (code, line) = fails_in_one_line(&store, &["tag", "web", "debian-12"]);
    assert!(code > 1 && line.contains("catalog alias"), "{line}");
    ok(&store, &["untag", "stable"]);
    let (_, line) = fails_in_one_line(&store, &["untag", "stable"]);
    assert!(line.contains("no name named \"stable\""), "{line}");

    server.add("/os.qcow2", second.0);
    assert_eq!(ok(&store, &["-q", "pull", &url]), path, "no refresh: the store's version");
    let (new_path, told) = ok_with_stderr(&store, &["pull", &url, "--refresh"]);
    assert_ne!(new_path, path);
    assert_eq!(std::fs::read(&new_path).unwrap(), second.2);
    assert!(told.contains("changed: its older image") && told.contains("is replaced"), "{told}");
    assert_eq!(ok(&store, &["-q", "pull", "web"]), new_path, "the name followed the new version");
    assert!(!Path::new(&path).exists(), "the old version is gone");
}
