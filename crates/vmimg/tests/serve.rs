//! `vmimg serve` as a process: one daemon per store, SIGTERM stops it
//! cleanly, and a daemon killed with SIGKILL mid-pull carries the pull on
//! at its next start, the image byte-identical.

mod common;

use common::fails;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vmimg_testserver::{Fault, TestServer};

/// `vmimg --store STORE serve --listen unix:SOCKET`, its log in `log`.
fn serve(store: &Path, socket: &Path, log: &Path) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_vmimg"))
        .env("RUST_LOG", "info")
        .arg("--store")
        .arg(store)
        .env("VMIMG_RETRY_DELAY", "10")
        .args(["serve", "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    wait_for(|| std::os::unix::net::UnixStream::connect(socket).is_ok(), "the daemon to listen");
    child
}

fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn client(socket: &Path) -> reqwest::Client {
    reqwest::Client::builder().unix_socket(socket).build().unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn get_json(socket: &Path, path: &str) -> serde_json::Value {
    runtime().block_on(async {
        let response = client(socket).get(format!("http://vmimg{path}")).send().await.unwrap();
        response.json().await.unwrap()
    })
}

/// A qcow2 of 8 MiB with data in its first 6, and what qemu-img makes of it.
fn qcow2_and_raw(dir: &Path) -> (PathBuf, Vec<u8>) {
    let raw = dir.join("source.raw");
    let mut bytes: Vec<u8> = (0..6u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    bytes.resize(8 << 20, 0);
    std::fs::write(&raw, &bytes).unwrap();
    let qcow2 = dir.join("source.qcow2");
    let converted =
        Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&qcow2).status().unwrap();
    assert!(converted.success());
    (qcow2, bytes)
}

#[test]
fn a_daemon_killed_mid_pull_finishes_it_at_its_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let (store, socket, log) = (dir.path().join("store"), dir.path().join("vmimg.sock"), dir.path().join("log"));
    let (qcow2, raw) = qcow2_and_raw(dir.path());
    let server = TestServer::start();
    server.add_file("/disk.qcow2", &qcow2);
    let size = std::fs::metadata(&qcow2).unwrap().len();
    server.fault("/disk.qcow2", Fault::SlowBody { bytes_per_sec: 1 << 20 }, 1);

    let mut daemon = serve(&store, &socket, &log);
    let created = runtime().block_on(async {
        let body = serde_json::json!({ "source": server.url("/disk.qcow2") });
        let response = client(&socket).post("http://vmimg/v1/images").json(&body).send().await.unwrap();
        assert_eq!(response.status(), 202);
        response.json::<serde_json::Value>().await.unwrap()
    });
    let name = created["name"].as_str().unwrap().to_owned();
    wait_for(
        || get_json(&socket, &format!("/v1/images/{name}"))["bytes_done"].as_u64().unwrap_or(0) >= 1 << 20,
        "a MiB of the pull",
    );
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let partial = std::fs::read_dir(store.join("tmp")).unwrap().count();
    assert!(partial > 0, "the killed pull left its partial download");

    let mut daemon = serve(&store, &socket, &log);
    wait_for(|| get_json(&socket, &format!("/v1/images/{name}"))["status"] == "ready", "the resumed pull");
    let disk = std::fs::read(store.join("images").join(&name).join("disk.raw")).unwrap();
    assert!(disk == raw, "the resumed image differs from qemu-img's conversion");
    // The killed request is logged when the server's writer gives up; the resumed one asked for the rest.
    let ranges: Vec<_> = server.log().into_iter().filter(|r| r.path == "/disk.qcow2").map(|r| r.range).collect();
    assert!(ranges.len() <= 2, "one request before the kill, one after: {ranges:?}");
    let start = |r: &Option<String>| r.as_deref()?.strip_prefix("bytes=")?.split('-').next()?.parse::<u64>().ok();
    let resumed_at = ranges.iter().find_map(start).unwrap_or(0);
    assert!(resumed_at > 0 && resumed_at < size, "the second request resumed the partial: {ranges:?}");
    assert!(!store.join("accepted").read_dir().unwrap().any(|_| true), "the finished request is forgotten");
    terminate(&mut daemon);
}

/// Sends SIGTERM and waits for a clean exit.
fn terminate(daemon: &mut Child) {
    let pid = rustix::process::Pid::from_child(daemon);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = daemon.wait().unwrap();
    assert!(status.success(), "SIGTERM ends the daemon cleanly: {status:?}");
}

#[test]
fn one_daemon_per_store_and_sigterm_stops_it_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (store, socket, log) = (dir.path().join("store"), dir.path().join("vmimg.sock"), dir.path().join("log"));
    let mut daemon = serve(&store, &socket, &log);
    let other = dir.path().join("other.sock");
    let error = fails(&store, &["serve", "--listen", &format!("unix:{}", other.display())]);
    assert!(error.contains("another vmimg serve is running"), "{error}");
    // The CLI keeps working beside it.
    common::ok(&store, &["images"]);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660);
    let error = fails(&store, &["serve", "--listen", "tcp:127.0.0.1:0"]);
    assert!(error.contains("token"), "TCP without a token is refused: {error}");
    terminate(&mut daemon);
    assert!(!socket.exists(), "the socket is removed at exit");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("SIGTERM"), "{log}");
}
