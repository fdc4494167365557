//! `Store::pull` against a local HTTP server that injects faults: every
//! failure mode of a download, verified results, nothing published on error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmimg_fetch::{Algorithm, Digest, FetchOptions, Progress, digest_reader};
use vmimg_store::{Error, Mirrors, Store, StoreOptions};
use vmimg_testserver::{Fault, TestServer, Versioning};

/// A qcow2 image (zlib clusters) and the raw disk it stands for.
struct Fixture {
    _dir: tempfile::TempDir,
    raw: PathBuf,
    qcow2: Vec<u8>,
}

fn qemu(tool: &str, args: &[&str]) {
    let status = Command::new(tool).args(args).status().unwrap();
    assert!(status.success(), "{tool} {args:?}");
}

fn fixture(pattern: u8) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let qcow2 = dir.path().join("disk.qcow2");
    let raw_s = raw.to_str().unwrap();
    qemu("qemu-img", &["create", "-q", "-f", "raw", raw_s, "64M"]);
    let write = format!("write -P {pattern} 1M 3M");
    qemu("qemu-io", &["-f", "raw", "-c", &write, "-c", "write -P 7 40M 1M", raw_s]);
    qemu("qemu-img", &["convert", "-c", "-f", "raw", "-O", "qcow2", raw_s, qcow2.to_str().unwrap()]);
    let qcow2 = std::fs::read(qcow2).unwrap();
    Fixture { _dir: dir, raw, qcow2 }
}

fn sha256(bytes: &[u8]) -> Digest {
    digest_reader(Algorithm::Sha256, bytes).unwrap()
}

fn fast_retries() -> FetchOptions {
    FetchOptions {
        attempts: 4,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        read_timeout: Duration::from_secs(1),
        ..FetchOptions::default()
    }
}

/// Store options with quick retries.
fn quick() -> StoreOptions {
    StoreOptions { fetch: fast_retries(), ..StoreOptions::default() }
}

/// Options that give up after one attempt.
fn one_attempt() -> StoreOptions {
    StoreOptions { fetch: FetchOptions { attempts: 1, ..fast_retries() }, ..StoreOptions::default() }
}

fn open_store(root: &Path, options: StoreOptions) -> Store {
    Store::open(StoreOptions { root: Some(root.to_owned()), ..options }).unwrap()
}

async fn pull(store: &Store, source: &str, digest: Option<Digest>) -> vmimg_store::Result<vmimg_store::Pulled> {
    let resolved = store.resolve(source, digest)?;
    store.pull(&resolved, None).await
}

/// The store holds nothing but empty directories and lock files.
fn assert_nothing_kept(root: &Path) {
    for dir in ["images", "tmp", "blobs/sha256"] {
        let entries: Vec<_> =
            std::fs::read_dir(root.join(dir)).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        assert!(entries.is_empty(), "{dir} holds {entries:?}");
    }
}

fn assert_same_disk(disk: &Path, raw: &Path) {
    assert!(
        std::fs::read(disk).unwrap() == std::fs::read(raw).unwrap(),
        "{} differs from {}",
        disk.display(),
        raw.display()
    );
}

#[tokio::test]
async fn a_verified_qcow2_pull_then_a_hit() {
    let f = fixture(0x5a);
    let server = TestServer::start();
    server.add("/disk.qcow2", f.qcow2.clone());
    let root = tempfile::tempdir().unwrap();
    let store = open_store(root.path(), quick());
    let url = server.url("/disk.qcow2");

    let first = pull(&store, &url, Some(sha256(&f.qcow2))).await.unwrap();
    assert!(!first.cached && first.record.verified);
    assert_eq!(first.record.source_format, vmimg_store::SourceFormat::Qcow2);
    assert_same_disk(&first.path, &f.raw);
    assert!(root.path().join(first.record.blob.as_ref().unwrap()).is_file());
    assert!(std::fs::read_dir(root.path().join("tmp")).unwrap().next().is_none(), "tmp/ is empty after a pull");

    let again = pull(&store, &url, Some(sha256(&f.qcow2))).await.unwrap();
    assert!(again.cached);
    assert_eq!(again.path, first.path);
    assert_eq!(server.requests("/disk.qcow2"), 1, "a hit does not touch the network");
}

#[tokio::test]
async fn a_digest_mismatch_keeps_nothing() {
    let f = fixture(1);
    let server = TestServer::start();
    server.add("/disk.qcow2", f.qcow2.clone());
    let root = tempfile::tempdir().unwrap();
    let store = open_store(root.path(), quick());
    let wrong = sha256(b"something else");
    let err = pull(&store, &server.url("/disk.qcow2"), Some(wrong.clone())).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{text}");
    assert!(text.contains(&wrong.to_string()) && text.contains(&sha256(&f.qcow2).to_string()), "{text}");
    assert_nothing_kept(root.path());
}

#[tokio::test]
async fn corrupt_bytes_in_transit_are_a_mismatch() {
    let f = fixture(2);
    let server = TestServer::start();
    server.add("/disk.qcow2", f.qcow2.clone());
    server.fault("/disk.qcow2", Fault::WrongBytes { at: f.qcow2.len() as u64 / 2 }, 1);
    let root = tempfile::tempdir().unwrap();
    let store = open_store(root.path(), quick());
    let err = pull(&store, &server.url("/disk.qcow2"), Some(sha256(&f.qcow2))).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert_nothing_kept(root.path());
}

#[tokio::test]
async fn a_cut_body_resumes_with_a_range_request() {
    let f = fixture(3);
    let server = TestServer::start();
    server.add("/disk.qcow2", f.qcow2.clone());
    let cut = f.qcow2.len() as u64 / 3;
    server.fault("/disk.qcow2", Fault::CutAfter(cut), 1);
    let root = tempfile::tempdir().unwrap();
    let store = open_store(root.path(), quick());
    let pulled = pull(&store, &server.url("/disk.qcow2"), Some(sha256(&f.qcow2))).await.unwrap();
    assert_same_disk(&pulled.path, &f.raw);
    let ranges: Vec<_> = server.log().into_iter().filter_map(|r| r.range).collect();
    assert_eq!(ranges.len(), 1, "one resumed request");
    let resumed_at: u64 = ranges[0].trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap();
    assert!(resumed_at > 0 && resumed_at <= cut, "resumed at {resumed_at}, cut at {cut}");
}

#[tokio::test]
async fn server_errors_and_throttling_are_retried() {
    let f = fixture(4);
    let server = TestServer::start();
    server.add("/disk.qcow2", f.qcow2.clone());
    server.fault("/disk.qcow2", Fault::Status(500), 1);
    server.fault("/disk.qcow2", Fault::TooManyRequests { retry_after_secs: 0 }, 1);
    server.fault("/disk.qcow2", Fault::Status(503), 1);
    let root = tempfile::tempdir().unwrap();
    let store = open_store(root.path(), quick());
    let pulled = pull(&store, &server.url("/disk.qcow2"), Some(sha256(&f.qcow2))).await.unwrap();
    assert_same_disk(&pulled.path, &f.raw);
    assert_eq!(server.requests("/disk.qcow2"), 4);
}

#[tokio::test]
async fn a_not_found_fails_at_once_and_persistent_errors_give_up() {
    let server = TestServer::start();
    server.add("/broken", vec![1; 10]);
    server.fault("/broken", Fault::Status(502), usize::MAX);
    let root = tempfile::tempdir().unwrap();
    let store = open_store(root.path(), quick());
    let err = pull(&store, &server.url("/missing.qcow2"), None).await.unwrap_err().to_string();
    assert!(err.contains("404") && err.contains("/missing.qcow2"), "{err}");
    assert_eq!(server.requests("/missing.qcow2"), 1);
    let err = pull(&store, &server.url("/broken"), None).await.unwrap_err().to_string();
    assert!(err.contains("502") && err.contains("gave up after 4 attempts"), "{err}");
    assert!(!root.path().join("images").read_dir().unwrap().any(|_| true));
    // Attempts that got no byte leave no partial and no lock file behind.
    let left =
        |dir: &str| root.path().join(dir).read_dir().unwrap().flatten().map(|e| e.file_name()).collect::<Vec<_>>();
    assert!(left("tmp").is_empty(), "{:?}", left("tmp"));
    assert!(left("locks").iter().all(|l| l == ".lease.lock"), "{:?}", left("locks"));
}

#[tokio::test]
async fn a_stalled_body_is_cut_and_resumed() {
    let f = fixture(5);
    let server = TestServer::start();
    server.add("/disk.qcow2", f.qcow2.clone());
    server.fault("/disk.qcow2", Fault::Stall { after: 100_000, duration: Duration::from_secs(5) }, 1);
    let root = tempfile::tempdir().unwrap();
    let store = open_store(root.path(), quick());
    let started = std::time::Instant::now();
    let pulled = pull(&store, &server.url("/disk.qcow2"), Some(sha256(&f.qcow2))).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(4), "the stall was cut by the read timeout");
    assert_same_disk(&pulled.path, &f.raw);
    assert!(server.log().iter().any(|r| r.range.as_deref() == Some("bytes=100000-")));
}

#[tokio::test]
async fn a_server_that_ignores_ranges_still_gives_the_right_disk() {
    let f = fixture(6);
    let server = TestServer::start();
    server.add("/disk.qcow2", f.qcow2.clone());
    server.fault("/disk.qcow2", Fault::CutAfter(f.qcow2.len() as u64 / 2), 1);
    server.fault("/disk.qcow2", Fault::IgnoreRange, 1);
    let root = tempfile::tempdir().unwrap();
    let store = open_store(root.path(), quick());
    let pulled = pull(&store, &server.url("/disk.qcow2"), Some(sha256(&f.qcow2))).await.unwrap();
    assert_same_disk(&pulled.path, &f.raw);
}

#[tokio::test]
async fn an_upstream_change_mid_download_starts_over() {
    let (old, new) = (fixture(7), fixture(8));
    let server = TestServer::start();
    server.add("/disk.qcow2", old.qcow2.clone());
    server.fault("/disk.qcow2", Fault::CutAfter(old.qcow2.len() as u64 * 2 / 3), 1);
    let root = tempfile::tempdir().unwrap();
    let store = open_store(root.path(), one_attempt());
    // The first pull gives up after the cut; its partial stays for the next.
    let url = server.url("/disk.qcow2");
    pull(&store, &url, Some(sha256(&new.qcow2))).await.unwrap_err();
    assert!(store.partial_path(&store.resolve(&url, Some(sha256(&new.qcow2))).unwrap().key).exists());
    server.add("/disk.qcow2", new.qcow2.clone());
    let store = open_store(root.path(), quick());
    let pulled = pull(&store, &url, Some(sha256(&new.qcow2))).await.unwrap();
    assert_same_disk(&pulled.path, &new.raw);
    let last = server.log().pop().unwrap();
    assert!(last.if_range.is_some() && last.status == 200, "If-Range saw the change: {last:?}");
}

#[tokio::test]
async fn a_partial_left_by_another_process_is_resumed() {
    let f = fixture(9);
    let server = TestServer::start();
    server.add("/disk.qcow2", f.qcow2.clone());
    server.fault("/disk.qcow2", Fault::CutAfter(f.qcow2.len() as u64 / 2), 1);
    let root = tempfile::tempdir().unwrap();
    let url = server.url("/disk.qcow2");
    pull(&open_store(root.path(), one_attempt()), &url, Some(sha256(&f.qcow2))).await.unwrap_err();
    let pulled = pull(&open_store(root.path(), quick()), &url, Some(sha256(&f.qcow2))).await.unwrap();
    assert_same_disk(&pulled.path, &f.raw);
    let last = server.log().pop().unwrap();
    assert_eq!((last.status, last.range.is_some()), (206, true), "{last:?}");
}

#[tokio::test]
async fn raw_sources_become_sparse_disks() {
    let f = fixture(10);
    let raw = std::fs::read(&f.raw).unwrap();
    let server = TestServer::start();
    server.add("/disk.img", raw.clone());
    let root = tempfile::tempdir().unwrap();
    let store = open_store(root.path(), quick());
    let pulled = pull(&store, &server.url("/disk.img"), None).await.unwrap();
    assert_eq!(pulled.record.source_format, vmimg_store::SourceFormat::Raw);
    assert!(!pulled.record.verified);
    assert_same_disk(&pulled.path, &f.raw);
    assert!(pulled.record.allocated_size < 8 << 20, "holes stay holes: {}", pulled.record.allocated_size);
}

#[tokio::test]
async fn local_files_are_verified_and_converted() {
    let f = fixture(11);
    let dir = tempfile::tempdir().unwrap();
    let qcow2 = dir.path().join("local.qcow2");
    std::fs::write(&qcow2, &f.qcow2).unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = open_store(root.path(), quick());
    let source = qcow2.to_str().unwrap();
    let err = pull(&store, source, Some(sha256(b"other"))).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }));
    assert_nothing_kept(root.path());
    let pulled = pull(&store, source, Some(sha256(&f.qcow2))).await.unwrap();
    assert_same_disk(&pulled.path, &f.raw);
    assert!(pulled.record.blob.is_none());
    assert!(pull(&store, source, Some(sha256(&f.qcow2))).await.unwrap().cached);
}

#[tokio::test]
async fn aliases_resolve_through_the_catalog_and_a_mirror() {
    let f = fixture(12);
    let server = TestServer::start();
    server.add("/mirror/v1/disk.qcow2", f.qcow2.clone());
    server.add("/mirror/v2/disk.qcow2", f.qcow2.clone());
    let root = tempfile::tempdir().unwrap();
    let catalog = |snapshot: &str| {
        format!(
            r#"{{"testos-1": {{"distro": "testos", "version": "1", "snapshot": "{snapshot}", "arch": {{
                "amd64": {{"url": "https://upstream.invalid/{snapshot}/disk.qcow2", "digest": "{digest}"}},
                "arm64": {{"url": "https://upstream.invalid/{snapshot}/disk.qcow2", "digest": "{digest}"}}}}}}}}"#,
            digest = sha256(&f.qcow2)
        )
    };
    let catalog_file = root.path().join("my-catalog.json");
    let mut mirrors = Mirrors::default();
    mirrors.add_rule(&format!("https://upstream.invalid/={}", server.url("/mirror/"))).unwrap();
    let options = || StoreOptions { catalog: Some(catalog_file.clone()), mirrors: mirrors.clone(), ..quick() };

    std::fs::write(&catalog_file, catalog("v1")).unwrap();
    let store = open_store(root.path(), options());
    let first = pull(&store, "testos-1", None).await.unwrap();
    assert!(first.record.verified);
    let name = first.path.parent().unwrap().file_name().unwrap().to_str().unwrap().to_owned();
    assert_eq!(name, format!("testos-1_v1_{}", store.arch()));
    assert_same_disk(&first.path, &f.raw);

    std::fs::write(&catalog_file, catalog("v2")).unwrap();
    let store = open_store(root.path(), options());
    let bumped = pull(&store, "testos-1", None).await.unwrap();
    assert!(!bumped.cached, "a new snapshot is a miss");
    assert_eq!(server.requests("/mirror/v2/disk.qcow2"), 1);
}

#[tokio::test]
async fn concurrent_pulls_in_one_process_share_one_download() {
    let f = fixture(13);
    let server = TestServer::start();
    server.add("/disk.qcow2", f.qcow2.clone());
    server.fault("/disk.qcow2", Fault::SlowBody { bytes_per_sec: 4 << 20 }, 1);
    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(open_store(root.path(), quick()));
    let url = server.url("/disk.qcow2");
    let pulls = (0..4).map(|_| {
        let (store, url, digest) = (store.clone(), url.clone(), sha256(&f.qcow2));
        tokio::spawn(async move { pull(&store, &url, Some(digest)).await.unwrap() })
    });
    let results = futures_util::future::join_all(pulls).await;
    let paths: Vec<_> = results.into_iter().map(|r| r.unwrap().path).collect();
    assert!(paths.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(server.requests("/disk.qcow2"), 1);
    assert_same_disk(&paths[0], &f.raw);
}

#[tokio::test]
async fn redirects_are_followed() {
    let f = fixture(14);
    let server = TestServer::start();
    server.add("/real/disk.qcow2", f.qcow2.clone());
    server.redirect("/latest/disk.qcow2", "/real/disk.qcow2", 302);
    let root = tempfile::tempdir().unwrap();
    let store = open_store(root.path(), quick());
    let pulled = pull(&store, &server.url("/latest/disk.qcow2"), Some(sha256(&f.qcow2))).await.unwrap();
    assert_same_disk(&pulled.path, &f.raw);
    assert_eq!(server.requests("/real/disk.qcow2"), 1);
}

/// `len` bytes of noise from `seed`: two seeds are two versions of one
/// file, of the same size, that differ everywhere.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    };
    (0..len).map(|_| next()).collect()
}

/// A raw disk's old and new version, 4 MiB each, and where to cut the first.
fn two_versions() -> (Vec<u8>, Vec<u8>, u64) {
    (noise(1, 4 << 20), noise(2, 4 << 20), 2 << 20)
}

/// Pulls `url` without a digest (unverified): the disk and the recorded
/// digest are exactly those of `expected`.
async fn assert_pulls_exactly(store: &Store, url: &str, expected: &[u8]) {
    let pulled = pull(store, url, None).await.unwrap();
    assert!(!pulled.record.verified);
    assert!(std::fs::read(&pulled.path).unwrap() == expected, "the disk is not exactly the expected version");
    assert_eq!(pulled.record.digest, Some(sha256(expected)), "the digest is of the bytes kept");
}

/// How many requests `path` got, once the server logged `expected` of them
/// or 5 s passed: it logs a request when its answer ends, which can be after
/// the client moved on.
async fn requests_once_logged(server: &TestServer, path: &str, expected: usize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.requests(path) < expected && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.requests(path)
}

/// Where each range request of `path` started.
fn range_starts(server: &TestServer, path: &str) -> Vec<u64> {
    let ranges = server.log().into_iter().filter(|r| r.path == path).filter_map(|r| r.range);
    ranges.map(|r| r.trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap()).collect()
}

/// A server that ignores If-Range, as broken ones do.
fn ignoring_if_range() -> Versioning {
    Versioning { if_range: false, ..Versioning::default() }
}

/// A server that sends neither ETag nor Last-Modified.
fn without_validators() -> Versioning {
    Versioning { etag: false, last_modified: false, ..Versioning::default() }
}

/// A pull cut halfway through the old version, whose resumed request gets
/// the new version under `versioning`, keeps exactly the new version.
async fn assert_a_new_version_after_a_cut_starts_over(versioning: Versioning) {
    let (old, new, cut) = two_versions();
    let server = TestServer::start();
    server.add_with("/disk.img", old, versioning);
    server.fault("/disk.img", Fault::CutAfter(cut), 1);
    server.fault("/disk.img", Fault::Replace(Arc::new(new.clone())), 1);
    let root = tempfile::tempdir().unwrap();
    assert_pulls_exactly(&open_store(root.path(), quick()), &server.url("/disk.img"), &new).await;
    let requests = requests_once_logged(&server, "/disk.img", 3).await;
    assert_eq!(requests, 3, "cut, resumed into the new version, started over");
}

#[tokio::test]
async fn a_resumed_answer_of_a_new_version_starts_over() {
    // After the cut the range is answered with 206, from the new version,
    // under its new ETag.
    assert_a_new_version_after_a_cut_starts_over(ignoring_if_range()).await;
}

#[tokio::test]
async fn a_resume_without_validators_starts_over_when_the_overlap_differs() {
    assert_a_new_version_after_a_cut_starts_over(without_validators()).await;
}

#[tokio::test]
async fn a_partial_left_by_another_process_is_not_joined_to_a_new_version() {
    let (old, new, cut) = two_versions();
    let server = TestServer::start();
    server.add_with("/disk.img", old, ignoring_if_range());
    server.fault("/disk.img", Fault::CutAfter(cut), 1);
    let root = tempfile::tempdir().unwrap();
    let url = server.url("/disk.img");
    pull(&open_store(root.path(), one_attempt()), &url, None).await.unwrap_err();
    server.add("/disk.img", new.clone()); // a new ETag, If-Range still ignored
    assert_pulls_exactly(&open_store(root.path(), quick()), &url, &new).await;
}

#[tokio::test]
async fn a_resume_without_validators_rereads_an_overlap_and_keeps_what_it_proves() {
    let (old, _, cut) = two_versions();
    let server = TestServer::start();
    server.add_with("/disk.img", old.clone(), without_validators());
    server.fault("/disk.img", Fault::CutAfter(cut), 1);
    let root = tempfile::tempdir().unwrap();
    assert_pulls_exactly(&open_store(root.path(), quick()), &server.url("/disk.img"), &old).await;
    assert_eq!(requests_once_logged(&server, "/disk.img", 2).await, 2, "the overlap matched: no restart");
    let starts = range_starts(&server, "/disk.img");
    assert!(
        starts.len() == 1 && starts[0] < cut && cut - starts[0] <= 64 << 10,
        "one resume, a little before the cut: {starts:?}"
    );
}

/// Keeps what each retry said.
#[derive(Default)]
struct Retries(Mutex<Vec<String>>);

impl Progress for Retries {
    fn retrying(&self, error: &(dyn std::error::Error + 'static), _delay: Duration) {
        self.0.lock().unwrap().push(error.to_string());
    }
}

/// Quick retries, and a transfer under 256 KiB/s over half a second is cut
/// (long before the read timeout, which a drip never trips).
fn speed_floor(attempts: usize) -> StoreOptions {
    let fetch = FetchOptions {
        attempts,
        min_speed: 256 << 10,
        speed_window: Duration::from_millis(500),
        read_timeout: Duration::from_secs(30),
        ..fast_retries()
    };
    StoreOptions { fetch, ..StoreOptions::default() }
}

/// Pulls `url` without a digest, failing the test if that takes 20 s.
async fn pull_within_20s(store: &Store, url: &str, progress: Arc<Retries>) -> vmimg_store::Result<vmimg_store::Pulled> {
    let source = store.resolve(url, None)?;
    tokio::time::timeout(Duration::from_secs(20), store.pull(&source, Some(progress)))
        .await
        .expect("the slow body was never cut")
}

#[tokio::test]
async fn a_dripping_body_is_cut_for_slowness_and_resumed() {
    let body = noise(3, 1 << 20);
    let server = TestServer::start();
    server.add("/disk.img", body.clone());
    server.fault("/disk.img", Fault::SlowBody { bytes_per_sec: 16 << 10 }, 1);
    let root = tempfile::tempdir().unwrap();
    let store = open_store(root.path(), speed_floor(2));
    let retries = Arc::new(Retries::default());
    let pulled = pull_within_20s(&store, &server.url("/disk.img"), retries.clone()).await.unwrap();
    assert!(std::fs::read(&pulled.path).unwrap() == body);
    requests_once_logged(&server, "/disk.img", 2).await;
    let starts = range_starts(&server, "/disk.img");
    assert!(starts.len() == 1 && starts[0] > 0, "resumed after the bytes the drip brought: {starts:?}");
    let said = retries.0.lock().unwrap().clone();
    assert!(said.len() == 1 && said[0].contains("too slow") && said[0].contains("over the last 500ms"), "{said:?}");
}

#[tokio::test]
async fn a_body_that_always_drips_gives_up_saying_it_is_too_slow() {
    let server = TestServer::start();
    server.add("/disk.img", noise(4, 1 << 20));
    server.fault("/disk.img", Fault::SlowBody { bytes_per_sec: 16 << 10 }, usize::MAX);
    let root = tempfile::tempdir().unwrap();
    let store = open_store(root.path(), speed_floor(3));
    let retries = Arc::new(Retries::default());
    let started = std::time::Instant::now();
    let err = pull_within_20s(&store, &server.url("/disk.img"), retries.clone()).await.unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // Attempts that only dripped do not reset the count, as progress would.
    assert!(
        err.contains("too slow") && err.contains("262144 bytes/s") && err.contains("gave up after 3 attempts"),
        "{err}"
    );
    let said = retries.0.lock().unwrap().clone();
    assert!(said.len() == 2 && said.iter().all(|s| s.contains("too slow")), "{said:?}");
}
