//! The daemon as its clients meet it: reqwest over a real unix socket and
//! real TCP (with the bearer token), sources served by a real HTTP server
//! (vmimg-testserver) and a real registry (Debian's docker-registry), and
//! disks made and checked with qemu-img. Each test starts its own daemon on
//! its own store.

use futures_util::StreamExt;
use reqwest::{Client, Method, Response, StatusCode, header};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmimg_fetch::{Algorithm, Digest, FetchOptions, Hasher};
use vmimg_oci::artifact::{self, DiskFormat};
use vmimg_oci::{Reference, Registry, RegistryOptions};
use vmimg_serve::{Config, Daemon, Limits, Listen, ServeError, Token};
use vmimg_store::{Store, StoreOptions};
use vmimg_testserver::{Fault, RegistryServer, TestServer, mounts};

const TOKEN: &str = "serve-tests-token-0123456789abcdef";
/// How long any wait in these tests may take before it fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// A client of the daemon: reqwest on one transport, and the URL base.
#[derive(Clone)]
struct Api {
    client: Client,
    base: String,
}

impl Api {
    /// A client of the unix socket at `socket`, sending no token.
    fn unix(socket: &Path) -> Api {
        let client = Client::builder().unix_socket(socket).timeout(DEADLINE).build().unwrap();
        Api { client, base: "http://vmimg".to_owned() }
    }

    /// A client of TCP `address`, sending `token` if any.
    fn tcp(address: SocketAddr, token: Option<&str>) -> Api {
        let mut headers = header::HeaderMap::new();
        if let Some(token) = token {
            headers.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        }
        let client = Client::builder().default_headers(headers).timeout(DEADLINE).build().unwrap();
        Api { client, base: format!("http://{address}") }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(Method::GET, path)
    }

    async fn json(&self, path: &str) -> Value {
        let response = self.get(path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> Response {
        self.request(Method::POST, path).json(&body).send().await.unwrap()
    }
}

/// A daemon on a fresh store, listening on a unix socket and on TCP.
struct Served {
    dir: tempfile::TempDir,
    store: Store,
    daemon: Daemon,
    socket: PathBuf,
    address: SocketAddr,
    unix: Api,
    tcp: Api,
}

/// Quick retries, and no low-speed cut (sources are throttled on purpose).
fn quick_fetch() -> FetchOptions {
    FetchOptions {
        attempts: 3,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(10),
        min_speed: 0,
        ..FetchOptions::default()
    }
}

async fn serve() -> Served {
    serve_with(Limits::default()).await
}

async fn serve_with(limits: Limits) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let options =
        StoreOptions { root: Some(dir.path().join("store")), fetch: quick_fetch(), ..StoreOptions::default() };
    let store = Store::open(options).unwrap();
    let socket = dir.path().join("run/vmimg.sock");
    let config = Config {
        listen: vec![Listen::Unix(socket.clone()), Listen::Tcp("127.0.0.1:0".parse().unwrap())],
        token: Some(Token::from_file_text(TOKEN).unwrap()),
        local_sources: vec![std::env::temp_dir()],
        limits,
    };
    let daemon = Daemon::start(store.clone(), config).await.unwrap();
    let address = daemon
        .addresses()
        .iter()
        .find_map(|l| match l {
            Listen::Tcp(address) => Some(*address),
            Listen::Unix(_) => None,
        })
        .unwrap();
    assert_ne!(address.port(), 0, "the bound port is given, not the 0 asked for");
    assert!(daemon.addresses().contains(&Listen::Unix(socket.clone())));
    let (unix, tcp) = (Api::unix(&socket), Api::tcp(address, Some(TOKEN)));
    Served { dir, store, daemon, socket, address, unix, tcp }
}

impl Served {
    async fn stop(self) {
        self.daemon.stop().await;
        assert!(!self.socket.exists(), "the socket is removed at stop");
    }

    /// The disk file the store holds for image `name`.
    fn disk_file(&self, name: &str) -> PathBuf {
        let record = self.store.find_image(name).unwrap().expect("the image is in the store");
        self.store.image_file(&record)
    }
}

fn run(command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Bytes that do not compress, the same for the same seed (xorshift64*).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A qcow2 image made by qemu-img, and the raw disk `qemu-img convert -O raw` makes of it.
struct Disk {
    qcow2: PathBuf,
    raw: PathBuf,
}

/// A `mib` MiB disk: `noise_bytes` of noise at 0, 1 MiB of 0xab at its
/// middle (written by qemu-io), holes elsewhere; as qcow2.
fn qcow2_disk(dir: &Path, name: &str, mib: u64, noise_bytes: usize, seed: u64) -> Disk {
    let source = dir.join(format!("{name}.source.raw"));
    let (qcow2, raw) = (dir.join(format!("{name}.qcow2")), dir.join(format!("{name}.raw")));
    std::fs::write(&source, noise(noise_bytes, seed)).unwrap();
    std::fs::OpenOptions::new().write(true).open(&source).unwrap().set_len(mib << 20).unwrap();
    let write = format!("write -P 0xab {}M 1M", mib / 2);
    run(Command::new("qemu-io").args(["-f", "raw", "-c", &write]).arg(&source));
    run(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&source).arg(&qcow2));
    run(Command::new("qemu-img").args(["convert", "-f", "qcow2", "-O", "raw"]).arg(&qcow2).arg(&raw));
    Disk { qcow2, raw }
}

fn sha256(bytes: &[u8]) -> Digest {
    let mut hasher = Hasher::new(Algorithm::Sha256);
    hasher.update(bytes);
    hasher.finish()
}

fn header(response: &Response, name: impl header::AsHeaderName) -> &str {
    response.headers().get(name).map_or("", |v| v.to_str().unwrap())
}

/// Checks that `response` is a problem+json of `status` and `kind`; returns it.
async fn problem(response: Response, status: StatusCode, kind: &str) -> Value {
    let url = response.url().clone();
    assert_eq!(response.status(), status, "{url}");
    assert_eq!(header(&response, header::CONTENT_TYPE), "application/problem+json", "{url}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert_eq!(body["kind"], kind, "{body}");
    assert_eq!(body["type"], format!("urn:vmimg:problem:{kind}"), "{body}");
    assert!(body["title"].is_string() && !body["detail"].as_str().unwrap().is_empty(), "{body}");
    body
}

/// Polls image `name` until it is ready; fails on `failed` or at the deadline.
async fn wait_ready(api: &Api, name: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let image = api.json(&format!("/v1/images/{name}")).await;
        match image["status"].as_str().unwrap() {
            "ready" => return image,
            "failed" => panic!("image {name} failed: {image}"),
            _ => assert!(Instant::now() < deadline, "image {name} not ready in {DEADLINE:?}: {image}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// POSTs `source` and waits until its image is ready; returns the image.
async fn pull(api: &Api, source: &str) -> Value {
    let response = api.post("/v1/images", json!({ "source": source })).await;
    assert!(matches!(response.status(), StatusCode::OK | StatusCode::ACCEPTED), "{}", response.status());
    let image: Value = response.json().await.unwrap();
    wait_ready(api, image["name"].as_str().unwrap()).await
}

/// Server-Sent Events, as (event type, data) until the stream ends.
async fn read_events(response: Response) -> Vec<(String, Value)> {
    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, header::CONTENT_TYPE).starts_with("text/event-stream"));
    let mut body = response.bytes_stream();
    let (mut buffer, mut events) = (Vec::<u8>::new(), Vec::new());
    while let Some(chunk) = tokio::time::timeout(DEADLINE, body.next()).await.expect("an event or the end in time") {
        buffer.extend_from_slice(&chunk.unwrap());
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let block = String::from_utf8(buffer.drain(..end + 2).collect()).unwrap();
            let (mut kind, mut data) = (String::new(), String::new());
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    kind = value.trim().to_owned();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                }
            }
            if !data.is_empty() {
                events.push((kind, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    assert!(buffer.iter().all(u8::is_ascii_whitespace), "a partial event at the end: {buffer:?}");
    events
}

/// Every endpoint answers as documented, on both transports: images
/// (create 202 then 200, list, get, events, disk, delete), instances (and
/// the 409 of an image they use), builds, usage, gc, metrics, the document.
#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_answers_as_documented() {
    let s = serve().await;
    let disk = qcow2_disk(s.dir.path(), "disk", 8, 256 << 10, 1);
    let source = disk.qcow2.to_str().unwrap();
    let (unix, tcp) = (&s.unix, &s.tcp);

    let health = Client::new().get(format!("http://{}/healthz", s.address)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK, "/healthz is open to a client without the token");
    assert_eq!(health.text().await.unwrap(), "ok\n");
    assert_eq!(unix.json("/v1/images").await, json!([]));

    // Create: 202 at once with the image being made and where to follow it.
    let created = tcp.post("/v1/images", json!({ "source": source })).await;
    assert_eq!(created.status(), StatusCode::ACCEPTED);
    let location = header(&created, header::LOCATION).to_owned();
    let image: Value = created.json().await.unwrap();
    let name = image["name"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/images/{name}"));
    assert!(["pulling", "converting"].contains(&image["status"].as_str().unwrap()), "{image}");
    assert_eq!(image["source"], source);
    let ready = wait_ready(unix, &name).await;
    assert_eq!(ready["name"], name);
    assert_eq!(ready["format"], "raw");
    assert_eq!(ready["virtual_size"], 8 << 20);
    assert!(ready["allocated_size"].as_u64().unwrap() > 0);
    assert!(ready["digest"].as_str().unwrap().starts_with("sha256:"), "{ready}");
    assert_eq!(ready["verified"], false, "no digest was given to check");
    assert!(ready["created_at"].is_string() && ready.get("error").is_none(), "{ready}");

    // Asked again: 200 with the ready image, nothing pulled again.
    let again = unix.post("/v1/images", json!({ "source": source })).await;
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!((&again["name"], &again["status"]), (&json!(name), &json!("ready")));
    let listed = tcp.json("/v1/images").await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["name"], name);

    // The events of a ready image: its state once, then the end.
    let events = read_events(unix.get(&format!("/v1/images/{name}/events")).send().await.unwrap()).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].0.as_str(), &events[0].1["name"]), ("ready", &json!(name)));

    problem(unix.get("/v1/images/nosuch").send().await.unwrap(), StatusCode::NOT_FOUND, "not_found").await;
    problem(tcp.get("/v1/images/nosuch/events").send().await.unwrap(), StatusCode::NOT_FOUND, "not_found").await;
    problem(tcp.get("/v1/images/nosuch/disk").send().await.unwrap(), StatusCode::NOT_FOUND, "not_found").await;
    let head = unix.request(Method::HEAD, &format!("/v1/images/{name}/disk")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, header::CONTENT_LENGTH), (8u64 << 20).to_string());
    assert_eq!(header(&head, header::ACCEPT_RANGES), "bytes");

    // Instances: made from the image, which then cannot go.
    let made = tcp.post("/v1/instances", json!({ "image": name, "name": "vm1" })).await;
    assert_eq!(made.status(), StatusCode::CREATED);
    let instance: Value = made.json().await.unwrap();
    assert_eq!((&instance["name"], &instance["image"]), (&json!("vm1"), &json!(name)));
    assert!(Path::new(instance["path"].as_str().unwrap()).is_file(), "{instance}");
    let instances = unix.json("/v1/instances").await;
    assert_eq!(instances.as_array().unwrap().len(), 1);
    assert_eq!(instances[0]["name"], "vm1");
    assert_eq!(unix.json("/v1/instances/vm1").await["image"], name);
    let in_use = unix.request(Method::DELETE, &format!("/v1/images/{name}")).send().await.unwrap();
    problem(in_use, StatusCode::CONFLICT, "in_use").await;
    let made = unix.post("/v1/instances", json!({ "image": "nosuch" })).await;
    problem(made, StatusCode::NOT_FOUND, "not_found").await;
    let deleted = tcp.request(Method::DELETE, "/v1/instances/vm1").send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    problem(unix.get("/v1/instances/vm1").send().await.unwrap(), StatusCode::NOT_FOUND, "not_found").await;
    let deleted = tcp.request(Method::DELETE, "/v1/instances/vm1").send().await.unwrap();
    problem(deleted, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(unix.json("/v1/instances").await, json!([]));

    // Builds: none here.
    assert_eq!(tcp.json("/v1/builds").await, json!([]));
    problem(tcp.get("/v1/builds/nosuch").send().await.unwrap(), StatusCode::NOT_FOUND, "not_found").await;
    let deleted = unix.request(Method::DELETE, "/v1/builds/nosuch").send().await.unwrap();
    problem(deleted, StatusCode::NOT_FOUND, "not_found").await;

    // The store.
    let usage = unix.json("/v1/store/usage").await;
    assert!(usage["total_image_bytes"].as_u64().unwrap() > 0, "{usage}");
    assert!(usage["total_oci_cache_bytes"].is_u64(), "{usage}");
    assert!(usage["images"].as_u64().unwrap() > 0 && usage["total"].as_u64().unwrap() > 0, "{usage}");
    let gc = tcp.post("/v1/store/gc", json!({ "dry_run": true })).await;
    assert_eq!(gc.status(), StatusCode::OK);
    let gc: Value = gc.json().await.unwrap();
    assert_eq!(gc["dry_run"], true, "{gc}");
    assert!(gc["images"].as_array().unwrap().is_empty(), "nothing is evicted without keep_under: {gc}");
    let gc = unix.request(Method::POST, "/v1/store/gc").send().await.unwrap();
    assert_eq!(gc.status(), StatusCode::OK, "gc takes no body too");
    assert_eq!(unix.json(&format!("/v1/images/{name}")).await["status"], "ready", "gc kept the image");

    // Metrics: the daemon's request counts beside the library's.
    let metrics = tcp.get("/metrics").send().await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(header(&metrics, header::CONTENT_TYPE).starts_with("application/openmetrics-text"));
    let text = metrics.text().await.unwrap();
    for line in [
        r#"vmimg_http_requests_total{method="POST",route="/v1/images",status="202"} 1"#,
        r#"vmimg_http_requests_total{method="POST",route="/v1/images",status="200"} 1"#,
        r#"vmimg_http_requests_total{method="DELETE",route="/v1/images/{name}",status="409"} 1"#,
        r#"vmimg_pulls_started_total{source="file"} 1"#,
        r#"vmimg_pulls_ready_total{source="file"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
    }
    assert!(text.contains("vmimg_http_request_duration_seconds_bucket{"), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF");

    let doc = unix.get("/openapi.json").send().await.unwrap();
    assert_eq!(header(&doc, header::CONTENT_TYPE), "application/json");
    assert_eq!(doc.json::<Value>().await.unwrap()["openapi"], "3.1.0");
    problem(tcp.get("/v2/nothing").send().await.unwrap(), StatusCode::NOT_FOUND, "not_found").await;

    // Delete: gone from the list and the store.
    let file = s.disk_file(&name);
    let deleted = unix.request(Method::DELETE, &format!("/v1/images/{name}")).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert!(!file.exists(), "{} is left", file.display());
    problem(unix.get(&format!("/v1/images/{name}")).send().await.unwrap(), StatusCode::NOT_FOUND, "not_found").await;
    let deleted = unix.request(Method::DELETE, &format!("/v1/images/{name}")).send().await.unwrap();
    problem(deleted, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(tcp.json("/v1/images").await, json!([]));
    s.stop().await;
}

/// Fifty clients (unix and TCP) asking for one URL while it downloads get
/// one image, made by one GET of the source and one pull of the library.
#[tokio::test(flavor = "multi_thread")]
async fn fifty_clients_asking_for_one_url_cause_one_download() {
    let s = serve().await;
    let disk = qcow2_disk(s.dir.path(), "disk", 8, 1 << 20, 2);
    let bytes = std::fs::read(&disk.qcow2).unwrap();
    let server = TestServer::start();
    server.add("/vm.qcow2", bytes.clone());
    // About 1.5 s: every client asks while the one download runs.
    server.fault("/vm.qcow2", Fault::SlowBody { bytes_per_sec: bytes.len() as u64 * 2 / 3 }, usize::MAX);
    let url = server.url("/vm.qcow2");

    // Half on the unix socket, half on TCP, each its own client (its own connections).
    let clients: Vec<Api> =
        (0..50).map(|i| if i % 2 == 0 { Api::unix(&s.socket) } else { Api::tcp(s.address, Some(TOKEN)) }).collect();
    let start = Arc::new(tokio::sync::Barrier::new(clients.len()));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|api| {
            let (url, start) = (url.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                let response = api.post("/v1/images", json!({ "source": url })).await;
                let status = response.status();
                let image: Value = response.json().await.unwrap();
                let name = image["name"].as_str().unwrap().to_owned();
                (status, name.clone(), wait_ready(&api, &name).await)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }

    let name = answers[0].1.clone();
    for (status, asked, ready) in &answers {
        assert_eq!(*status, StatusCode::ACCEPTED, "every client asked while the image was being made");
        assert_eq!((asked, &ready["name"]), (&name, &json!(name)), "one image for one source");
        assert_eq!(ready["status"], "ready");
    }
    let log = server.log();
    let fetched: Vec<_> =
        log.iter().filter(|r| r.path == "/vm.qcow2").map(|r| (r.method.as_str(), r.range.clone())).collect();
    assert_eq!(fetched, [("GET", None)], "one whole GET of the source, no second or resumed one");
    assert!(std::fs::read(s.disk_file(&name)).unwrap() == std::fs::read(&disk.raw).unwrap(), "the disk differs");
    let metrics = s.unix.get("/metrics").send().await.unwrap().text().await.unwrap();
    let started = r#"vmimg_pulls_started_total{source="url"} 1"#;
    assert!(metrics.lines().any(|l| l == started), "the library was asked once: {metrics}");
    s.stop().await;
}

/// GETs `range` of `path`; checks the 206's headers; returns its body.
async fn ranged(api: &Api, path: &str, range: &str, expected: std::ops::Range<u64>, len: u64) -> Vec<u8> {
    let response = api.get(path).header(header::RANGE, range).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{range}");
    let content_range = format!("bytes {}-{}/{len}", expected.start, expected.end - 1);
    assert_eq!(header(&response, header::CONTENT_RANGE), content_range, "{range}");
    assert_eq!(header(&response, header::CONTENT_LENGTH), (expected.end - expected.start).to_string(), "{range}");
    response.bytes().await.unwrap().to_vec()
}

/// `/disk` is the store's file byte for byte (and qemu-img's conversion of
/// the source), whole and in ranges; HEAD, 416, If-None-Match, If-Range.
#[tokio::test(flavor = "multi_thread")]
async fn disk_ranges_are_the_store_file_byte_for_byte() {
    let s = serve().await;
    let disk = qcow2_disk(s.dir.path(), "disk", 16, 1 << 20, 3);
    let name = pull(&s.unix, disk.qcow2.to_str().unwrap()).await["name"].as_str().unwrap().to_owned();
    let file = std::fs::read(s.disk_file(&name)).unwrap();
    let len = file.len() as u64;
    assert_eq!(len, 16 << 20);
    let path = format!("/v1/images/{name}/disk");

    let head = s.tcp.request(Method::HEAD, &path).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, header::CONTENT_LENGTH), len.to_string());
    assert_eq!(header(&head, header::ACCEPT_RANGES), "bytes");
    assert_eq!(header(&head, header::CONTENT_TYPE), "application/octet-stream");
    let etag = header(&head, header::ETAG).to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2, "a strong ETag: {etag}");
    assert!(head.bytes().await.unwrap().is_empty(), "HEAD has no body");

    let whole = s.unix.get(&path).send().await.unwrap();
    assert_eq!((whole.status(), header(&whole, header::ETAG)), (StatusCode::OK, etag.as_str()));
    let whole = whole.bytes().await.unwrap();
    assert!(whole == file, "GET gave other bytes than the store's file");
    assert!(whole == std::fs::read(&disk.raw).unwrap(), "the disk is not what qemu-img convert -O raw makes");

    let middle = 8u64 << 20;
    for (range, expected) in [
        ("bytes=0-99".to_owned(), 0..100),
        // Across the end of the noise (data, then a hole) and across the start of the 0xab MiB.
        (format!("bytes={}-{}", (1 << 20) - 700, (1 << 20) + 299), (1 << 20) - 700..(1 << 20) + 300),
        (format!("bytes={}-{}", middle - 10, middle + 9), middle - 10..middle + 10),
        ("bytes=-5000".to_owned(), len - 5000..len),
        (format!("bytes={}-", middle + (1 << 20) - 3), middle + (1 << 20) - 3..len),
        (format!("bytes={}-{}", len - 10, len + 1000), len - 10..len),
        ("bytes=-99999999999".to_owned(), 0..len),
    ] {
        let body = ranged(&s.tcp, &path, &range, expected.clone(), len).await;
        assert!(body == file[expected.start as usize..expected.end as usize], "{range}: other bytes");
    }
    let range = format!("bytes={middle}-{}", middle + 3);
    assert_eq!(ranged(&s.unix, &path, &range, middle..middle + 4, len).await, [0xab; 4]);

    for range in [format!("bytes={len}-"), format!("bytes={}-{}", len + 5, len + 10), "bytes=-0".to_owned()] {
        let refused = s.tcp.get(&path).header(header::RANGE, &range).send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(header(&refused, header::CONTENT_RANGE), format!("bytes */{len}"), "{range}");
        assert!(refused.bytes().await.unwrap().is_empty());
    }

    let cached = s.tcp.get(&path).header(header::IF_NONE_MATCH, &etag).send().await.unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&cached, header::ETAG), etag);
    assert!(cached.bytes().await.unwrap().is_empty());
    let other = s.tcp.request(Method::HEAD, &path).header(header::IF_NONE_MATCH, "\"other\"").send().await.unwrap();
    assert_eq!(other.status(), StatusCode::OK, "another ETag is no match");

    // If-Range: the range when the ETag is the disk's, the whole disk otherwise.
    let same = s.unix.get(&path).header(header::RANGE, "bytes=10-19").header(header::IF_RANGE, &etag).send();
    let same = same.await.unwrap();
    assert_eq!(same.status(), StatusCode::PARTIAL_CONTENT);
    assert!(same.bytes().await.unwrap() == file[10..20]);
    let changed = s.unix.request(Method::HEAD, &path).header(header::RANGE, "bytes=10-19");
    let changed = changed.header(header::IF_RANGE, "\"older\"").send().await.unwrap();
    assert_eq!(
        (changed.status(), header(&changed, header::CONTENT_LENGTH)),
        (StatusCode::OK, len.to_string().as_str())
    );
    // HEAD with a range: the 206's head alone.
    let head = s.tcp.request(Method::HEAD, &path).header(header::RANGE, "bytes=100-199").send().await.unwrap();
    assert_eq!(head.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        (header(&head, header::CONTENT_LENGTH), header(&head, header::CONTENT_RANGE)),
        ("100", "bytes 100-199/16777216")
    );
    // Several ranges are answered whole, as RFC 9110 allows.
    let several = s.tcp.get(&path).header(header::RANGE, "bytes=0-1,5-6").send().await.unwrap();
    assert_eq!(several.status(), StatusCode::OK);
    assert!(several.bytes().await.unwrap() == file);
    s.stop().await;
}

/// `Limits::streams_per_client` is counted per client: streams read to the
/// end or dropped give their slot back, the one too many gets 429.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_gets_its_streams_and_no_more() {
    let limits = Limits { streams_per_client: 2, ..Limits::default() };
    let s = serve_with(limits).await;
    let disk = qcow2_disk(s.dir.path(), "disk", 16, 64 << 10, 4);
    let name = pull(&s.unix, disk.qcow2.to_str().unwrap()).await["name"].as_str().unwrap().to_owned();
    let path = format!("/v1/images/{name}/disk");

    // Streams read to their end give their slot back.
    for _ in 0..5 {
        let response = s.unix.get(&path).header(header::RANGE, "bytes=0-1023").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(response.bytes().await.unwrap().len(), 1024);
    }
    // Two held open (16 MiB, unread): a third of the same client is refused.
    let first = s.unix.get(&path).send().await.unwrap();
    let second = Api::unix(&s.socket).get(&path).send().await.unwrap();
    assert_eq!((first.status(), second.status()), (StatusCode::OK, StatusCode::OK));
    let third = Api::unix(&s.socket).get(&path).send().await.unwrap();
    problem(third, StatusCode::TOO_MANY_REQUESTS, "unavailable").await;
    // HEAD streams nothing; another client (TCP, by address) has its own count.
    let head = s.unix.request(Method::HEAD, &path).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    let other = s.tcp.get(&path).header(header::RANGE, "bytes=0-9").send().await.unwrap();
    assert_eq!(other.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(other.bytes().await.unwrap().len(), 10);
    // A client that goes away gives its slot back.
    drop(first);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let response = Api::unix(&s.socket).get(&path).header(header::RANGE, "bytes=0-9").send().await.unwrap();
        if response.status() == StatusCode::PARTIAL_CONTENT {
            break;
        }
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(Instant::now() < deadline, "the slot of a dropped stream was not given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(second);
    s.stop().await;
}

/// Pushes `parts` to `reference` as a cocoonstack cloud image (split qcow2).
async fn push_cloud_image(reference: &Reference, parts: &[&[u8]]) -> Vec<Digest> {
    let registry = Registry::new(RegistryOptions::default()).unwrap();
    registry.upload_bytes(reference, &sha256(b"{}"), b"{}").await.unwrap();
    let mut described = Vec::new();
    for part in parts {
        let digest = sha256(part);
        registry.upload_bytes(reference, &digest, part).await.unwrap();
        described.push((digest, part.len() as u64));
    }
    let manifest = artifact::manifest(DiskFormat::Qcow2, &described, "cloud", BTreeMap::new());
    let bytes = serde_json::to_vec(&manifest).unwrap();
    registry.put_manifest(reference, &bytes, artifact::OCI_MANIFEST).await.unwrap();
    described.into_iter().map(|(digest, _)| digest).collect()
}

/// Flips one byte in the middle of blob `digest` in the registry's storage.
fn corrupt_blob(server: &RegistryServer, digest: &Digest) {
    let hex = digest.hex();
    let data = server.storage().join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]));
    let mut bytes = std::fs::read(&data).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
}

/// GETs `path` (with `range`) and reads the body: it must end in an error,
/// never in all its bytes.
async fn assert_cut(api: &Api, path: &str, range: Option<&str>) {
    let mut request = api.get(path);
    if let Some(range) = range {
        request = request.header(header::RANGE, range);
    }
    let response = request.send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let length: usize = header(&response, header::CONTENT_LENGTH).parse().unwrap();
    let mut body = response.bytes_stream();
    let mut received = 0;
    while let Some(chunk) = tokio::time::timeout(DEADLINE, body.next()).await.expect("the stream ends in time") {
        match chunk {
            Ok(chunk) => received += chunk.len(),
            Err(e) => {
                assert!(received < length, "all {length} bytes came, then an error: {e}");
                return;
            }
        }
    }
    panic!("{path} ({range:?}) ended cleanly after {received} of {length} bytes of a corrupt disk");
}

/// `/dl/` is the artifact's parts joined, whole and in ranges across parts;
/// once a part is corrupt in the registry, every answer that covers it ends
/// in an error at the client, never in a clean body.
#[tokio::test(flavor = "multi_thread")]
async fn dl_streams_a_registry_image_verified_and_never_ends_clean_when_a_part_is_corrupt() {
    let registry = tokio::task::spawn_blocking(RegistryServer::start).await.unwrap();
    let s = serve().await;
    let disk = qcow2_disk(s.dir.path(), "cloud", 12, 3 << 20, 5);
    let qcow2 = std::fs::read(&disk.qcow2).unwrap();
    let len = qcow2.len() as u64;
    let part = qcow2.len().div_ceil(3);
    let parts: Vec<&[u8]> = qcow2.chunks(part).collect();
    assert_eq!(parts.len(), 3);
    let part = part as u64;
    let reference = Reference::parse(&format!("{}/vm/cloud:1", registry.host())).unwrap();
    let digests = push_cloud_image(&reference, &parts).await;
    let path = format!("/dl/{}/vm/cloud:1", registry.host());

    let head = s.tcp.request(Method::HEAD, &path).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, header::CONTENT_LENGTH), len.to_string());
    assert_eq!(header(&head, header::ACCEPT_RANGES), "bytes");
    let manifest_digest = header(&head, "docker-content-digest").to_owned();
    assert!(manifest_digest.starts_with("sha256:"), "{manifest_digest}");
    assert_eq!(header(&head, header::ETAG), format!("\"{manifest_digest}\""));

    let whole = s.unix.get(&path).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    assert!(whole.bytes().await.unwrap() == qcow2, "/dl gave other bytes than the parts joined");
    // A digest reference names the same image.
    let pinned = format!("/dl/{}/vm/cloud@{manifest_digest}", registry.host());
    let body = ranged(&s.tcp, &pinned, "bytes=0-15", 0..16, len).await;
    assert_eq!(body, qcow2[..16]);
    for (range, expected) in [
        (format!("bytes={}-{}", part - 1000, part + 999), part - 1000..part + 1000),
        (format!("bytes=-{}", len - 2 * part + 10), 2 * part - 10..len),
        (format!("bytes={}-", part - 1), part - 1..len),
    ] {
        let body = ranged(&s.tcp, &path, &range, expected.clone(), len).await;
        assert!(body == qcow2[expected.start as usize..expected.end as usize], "{range}: other bytes");
    }
    let refused = s.unix.get(&path).header(header::RANGE, format!("bytes={len}-")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&refused, header::CONTENT_RANGE), format!("bytes */{len}"));

    // The last part corrupt: the held-back tail never comes, the stream fails.
    corrupt_blob(&registry, &digests[2]);
    assert_cut(&s.tcp, &path, None).await;
    assert_cut(&s.unix, &path, Some(&format!("bytes={}-", len - 100))).await;
    assert_cut(&s.unix, &path, Some(&format!("bytes={}-{}", part - 10, 2 * part + 10))).await;
    // A range of the parts still intact is served, verified.
    let body = ranged(&s.unix, &path, &format!("bytes=10-{}", 2 * part - 1), 10..2 * part, len).await;
    assert!(body == qcow2[10..2 * part as usize]);
    // The middle part corrupt too: a range across it fails.
    corrupt_blob(&registry, &digests[1]);
    assert_cut(&s.tcp, &path, Some(&format!("bytes={}-{}", part - 10, part + 10))).await;
    assert_cut(&s.unix, &path, Some(&format!("bytes=0-{}", part))).await;
    s.stop().await;
}

/// An event stream joined mid-pull starts with the state now (bytes in
/// already) and goes forward to one final `ready`.
#[tokio::test(flavor = "multi_thread")]
async fn events_joined_mid_pull_give_the_state_now_then_ready() {
    let s = serve().await;
    let disk = qcow2_disk(s.dir.path(), "disk", 8, 1 << 20, 6);
    let bytes = std::fs::read(&disk.qcow2).unwrap();
    let server = TestServer::start();
    server.add("/slow.qcow2", bytes.clone());
    // About 2 s.
    server.fault("/slow.qcow2", Fault::SlowBody { bytes_per_sec: bytes.len() as u64 / 2 }, usize::MAX);
    let created = s.unix.post("/v1/images", json!({ "source": server.url("/slow.qcow2") })).await;
    assert_eq!(created.status(), StatusCode::ACCEPTED);
    let name = created.json::<Value>().await.unwrap()["name"].as_str().unwrap().to_owned();

    // Mid-pull: some bytes are in.
    let deadline = Instant::now() + DEADLINE;
    let seen = loop {
        let image = s.tcp.json(&format!("/v1/images/{name}")).await;
        if image["status"] == "pulling" && image["bytes_done"].as_u64().unwrap_or(0) > 0 {
            break image;
        }
        assert!(image["status"] == "pulling" && Instant::now() < deadline, "{image}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(seen["bytes_total"], bytes.len() as u64, "{seen}");
    let events = read_events(s.tcp.get(&format!("/v1/images/{name}/events")).send().await.unwrap()).await;

    let (first, last) = (&events[0], events.last().unwrap());
    assert_eq!(first.0, "pulling", "{events:?}");
    let first_done = first.1["bytes_done"].as_u64().unwrap();
    assert!(first_done >= seen["bytes_done"].as_u64().unwrap(), "the first event is the state now: {first:?}");
    assert!(first_done < bytes.len() as u64, "joined mid-pull: {first:?}");
    assert_eq!((last.0.as_str(), &last.1["status"], &last.1["name"]), ("ready", &json!("ready"), &json!(name)));
    let order = ["pulling", "converting", "ready"];
    let mut at = (0, 0);
    for (kind, image) in &events {
        assert_eq!(image["status"], json!(kind), "an event's type is its status");
        let place = order.iter().position(|o| o == kind).unwrap_or_else(|| panic!("event {kind}: {events:?}"));
        let done = image["bytes_done"].as_u64().unwrap_or(at.1);
        assert!(place >= at.0 && done >= at.1, "events go forward only: {events:?}");
        at = (place, done);
    }
    assert_eq!(events.iter().filter(|e| e.0 == "ready").count(), 1, "{events:?}");
    assert!(std::fs::read(s.disk_file(&name)).unwrap() == std::fs::read(&disk.raw).unwrap());
    s.stop().await;
}

/// TCP needs the bearer token (401 problem and a Bearer challenge without
/// it, with a wrong, shorter or longer one); the unix socket and /healthz
/// need none; TCP without a token configured does not start.
#[tokio::test(flavor = "multi_thread")]
async fn tcp_wants_the_token_and_the_unix_socket_does_not() {
    assert!(Token::from_file_text("short\n").is_err(), "a token under 16 characters is refused");
    assert!(Token::from_file_text("\n0123456789abcdef").is_err(), "the token is on the first line");
    assert!(Token::from_file_text("  0123456789abcdef  \n").is_ok());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreOptions { root: Some(dir.path().to_owned()), ..StoreOptions::default() }).unwrap();
    let tcp_only = Config {
        listen: vec![Listen::Tcp("127.0.0.1:0".parse().unwrap())],
        token: None,
        local_sources: Vec::new(),
        limits: Limits::default(),
    };
    assert!(matches!(Daemon::start(store, tcp_only).await, Err(ServeError::TcpWithoutToken)));

    let s = serve().await;
    let bare = Api::tcp(s.address, None);
    let wrong = Api::tcp(s.address, Some("not-the-token-but-long-enough"));
    let prefix = Api::tcp(s.address, Some(&TOKEN[..20]));
    let longer = Api::tcp(s.address, Some(&format!("{TOKEN}x")));
    for api in [&bare, &wrong, &prefix, &longer] {
        for (method, path) in [
            (Method::GET, "/v1/images"),
            (Method::GET, "/v1/images/x/disk"),
            (Method::GET, "/dl/127.0.0.1:1/vm/x:1"),
            (Method::GET, "/v1/store/usage"),
            (Method::GET, "/metrics"),
            (Method::GET, "/openapi.json"),
        ] {
            let response = api.request(method, path).send().await.unwrap();
            assert!(header(&response, header::WWW_AUTHENTICATE).starts_with("Bearer"), "{path}");
            problem(response, StatusCode::UNAUTHORIZED, "denied").await;
        }
        let post = api.post("/v1/images", json!({ "source": "/nonexistent.qcow2" })).await;
        problem(post, StatusCode::UNAUTHORIZED, "denied").await;
    }
    for scheme in ["Basic", "Token"] {
        let other = bare.get("/v1/images").header(header::AUTHORIZATION, format!("{scheme} {TOKEN}")).send().await;
        assert_eq!(other.unwrap().status(), StatusCode::UNAUTHORIZED, "{scheme}");
    }
    // The auth scheme's name is case-insensitive (RFC 9110 §11.1).
    let lower = bare.get("/v1/images").header(header::AUTHORIZATION, format!("bearer {TOKEN}")).send().await;
    assert_eq!(lower.unwrap().status(), StatusCode::OK);
    assert_eq!(s.tcp.json("/v1/images").await, json!([]));
    assert_eq!(s.unix.json("/v1/images").await, json!([]), "the unix socket needs no token");
    assert_eq!(s.unix.get("/metrics").send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(bare.get("/healthz").send().await.unwrap().status(), StatusCode::OK);
    s.stop().await;
}

/// Names that could leave a directory or carry control characters, overlong
/// names, and bad, unknown or oversized bodies: problems, nothing started.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_names_and_bodies_are_refused() {
    let s = serve().await;
    let long = "a".repeat(129);
    let names =
        ["..%2F..%2Fetc", "..%2F", ".hidden", "a%01b", "a%00b", "a%2Fb", "a%20b", "a%0Ab", "%C3%A9t%C3%A9", &long];
    let routes = [
        (Method::GET, "/v1/images/{}"),
        (Method::DELETE, "/v1/images/{}"),
        (Method::GET, "/v1/images/{}/events"),
        (Method::GET, "/v1/images/{}/disk"),
        (Method::HEAD, "/v1/images/{}/disk"),
        (Method::GET, "/v1/instances/{}"),
        (Method::DELETE, "/v1/instances/{}"),
        (Method::GET, "/v1/builds/{}"),
        (Method::DELETE, "/v1/builds/{}"),
    ];
    // Local sources only from the directories the daemon was given (here the temp dir): not its own files,
    // not through `..` or a symlink, and a missing path answers as an existing one does.
    let link = s.dir.path().join("passwd-link");
    std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
    let outside = std::env::temp_dir().join("../etc/passwd");
    for source in ["/etc/passwd", "/etc/nonexistent", "oci:/etc", outside.to_str().unwrap(), link.to_str().unwrap()] {
        let post = s.unix.post("/v1/images", json!({ "source": source })).await;
        problem(post, StatusCode::FORBIDDEN, "denied").await;
    }
    assert_eq!(s.unix.json("/v1/images").await, json!([]), "nothing refused was started");
    for name in names {
        for (method, route) in &routes {
            let path = route.replace("{}", name);
            for api in [&s.unix, &s.tcp] {
                let response = api.request(method.clone(), &path).send().await.unwrap();
                if *method == Method::HEAD {
                    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "HEAD {path}");
                } else {
                    problem(response, StatusCode::BAD_REQUEST, "invalid_input").await;
                }
            }
        }
    }
    // 128 characters is a name: there is no such image.
    let longest = format!("/v1/images/{}", "a".repeat(128));
    problem(s.unix.get(&longest).send().await.unwrap(), StatusCode::NOT_FOUND, "not_found").await;
    for body in [
        json!({ "image": "..%2F..%2Fetc" }),
        json!({ "image": "../../etc" }),
        json!({ "image": "ok", "name": "../x" }),
        json!({ "image": "ok", "name": "a\u{1}b" }),
        json!({ "image": "ok", "name": long }),
    ] {
        problem(s.unix.post("/v1/instances", body).await, StatusCode::BAD_REQUEST, "invalid_input").await;
    }
    let bad_digest = s.unix.post("/v1/images", json!({ "source": "/x.qcow2", "digest": "md5:00" })).await;
    problem(bad_digest, StatusCode::BAD_REQUEST, "invalid_input").await;
    let bad_reference = s.tcp.get("/dl/127.0.0.1:1/UPPER/Case:1").send().await.unwrap();
    problem(bad_reference, StatusCode::BAD_REQUEST, "invalid_input").await;

    // Bodies: unknown fields, wrong types, not JSON, too large; problems all.
    for (path, body) in [
        ("/v1/images", json!({ "source": "/x.qcow2", "sourcee": "typo" })),
        ("/v1/images", json!({ "source": 5 })),
        ("/v1/images", json!({})),
        ("/v1/instances", json!({ "image": "x", "size": "big" })),
        ("/v1/instances", json!({ "image": "x", "extra": 1 })),
        ("/v1/store/gc", json!({ "dry_run": true, "everything": true })),
    ] {
        let response = s.unix.post(path, body.clone()).await;
        assert!(response.status().is_client_error(), "{path} {body}: {}", response.status());
        let status = response.status();
        let refused = problem(response, status, "invalid_input").await;
        if body.get("sourcee").is_some() {
            assert!(refused["detail"].as_str().unwrap().contains("sourcee"), "{refused}");
        }
    }
    let not_json = s.tcp.request(Method::POST, "/v1/images").body("source=/x").send().await.unwrap();
    problem(not_json, StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_input").await;
    let broken = s.tcp.request(Method::POST, "/v1/images").header(header::CONTENT_TYPE, "application/json");
    let broken = broken.body("{\"source\": ").send().await.unwrap();
    problem(broken, StatusCode::BAD_REQUEST, "invalid_input").await;
    let put = s.unix.request(Method::PUT, "/v1/images").send().await.unwrap();
    assert_eq!(header(&put, header::ALLOW), "GET,HEAD,POST");
    problem(put, StatusCode::METHOD_NOT_ALLOWED, "invalid_input").await;
    let huge = json!({ "source": "x".repeat(70 << 10) });
    let too_large = s.unix.post("/v1/images", huge.clone()).await;
    problem(too_large, StatusCode::PAYLOAD_TOO_LARGE, "invalid_input").await;
    // Without a Content-Length (chunked), the limit holds as the body arrives.
    let chunks = futures_util::stream::iter(
        serde_json::to_vec(&huge)
            .unwrap()
            .chunks(8 << 10)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let chunked = s.tcp.request(Method::POST, "/v1/images").header(header::CONTENT_TYPE, "application/json");
    let chunked = chunked.body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    problem(chunked, StatusCode::PAYLOAD_TOO_LARGE, "invalid_input").await;
    assert_eq!(s.unix.json("/v1/images").await, json!([]), "nothing refused was started");
    s.stop().await;
}

/// The daemon's routes and their methods, as the router has them.
const ROUTES: &[(&str, &[&str])] = &[
    ("/v1/images", &["get", "post"]),
    ("/v1/images/{name}", &["delete", "get"]),
    ("/v1/images/{name}/events", &["get"]),
    ("/v1/images/{name}/disk", &["get", "head"]),
    ("/dl/{reference}", &["get", "head"]),
    ("/v1/instances", &["get", "post"]),
    ("/v1/instances/{name}", &["delete", "get"]),
    ("/v1/builds", &["get"]),
    ("/v1/builds/{id}", &["delete", "get"]),
    ("/v1/store/usage", &["get"]),
    ("/v1/store/gc", &["post"]),
    ("/metrics", &["get"]),
    ("/healthz", &["get"]),
    ("/openapi.json", &["get"]),
];

/// Whether `python3` has openapi-spec-validator; under CI its absence fails.
fn validator() -> bool {
    let probe = Command::new("python3").args(["-c", "import openapi_spec_validator"]).output();
    match probe {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            let why = String::from_utf8_lossy(&out.stderr);
            mounts::skip_missing(format!(
                "python3 lacks openapi-spec-validator (pip install openapi-spec-validator): {why}"
            ));
            false
        }
        Err(e) => {
            mounts::skip_missing(format!("python3: {e}"));
            false
        }
    }
}

/// Validates the OpenAPI 3.1 document in `file`; the validator's verdict.
fn validate(file: &Path) -> std::process::Output {
    let script = "import json, sys\n\
                  from openapi_spec_validator import validate, OpenAPIV31SpecValidator\n\
                  validate(json.load(open(sys.argv[1])), cls=OpenAPIV31SpecValidator)\n";
    Command::new("python3").args(["-c", script]).arg(file).output().unwrap()
}

/// The document is OpenAPI 3.1, lists exactly the routes the daemon serves,
/// and passes openapi-spec-validator (required under CI=true).
#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_lists_every_route_and_validates() {
    let s = serve().await;
    let doc = s.unix.json("/openapi.json").await;
    assert_eq!(doc, serde_json::to_value(vmimg_serve::openapi()).unwrap(), "served as the library makes it");
    assert_eq!(doc["openapi"], "3.1.0");
    let methods = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
    let listed: BTreeMap<&str, BTreeSet<&str>> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(path, item)| {
            let ops = item.as_object().unwrap().keys().map(String::as_str).filter(|k| methods.contains(k)).collect();
            (path.as_str(), ops)
        })
        .collect();
    let expected: BTreeMap<&str, BTreeSet<&str>> =
        ROUTES.iter().map(|(path, ops)| (*path, ops.iter().copied().collect())).collect();
    assert_eq!(listed, expected, "the document lists every route with its methods, and no other");
    // One id per operation (a handler serving GET and HEAD gives two), and
    // problems under the media type they are sent as.
    let doc_ref = &doc;
    let operations: Vec<&Value> =
        ROUTES.iter().flat_map(|(path, ops)| ops.iter().map(move |op| &doc_ref["paths"][*path][*op])).collect();
    let ids: BTreeSet<&str> = operations.iter().map(|op| op["operationId"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), operations.len(), "operation ids repeat: {ids:?}");
    for op in &operations {
        for (status, response) in op["responses"].as_object().unwrap() {
            assert!(response["description"].as_str().is_some_and(|d| !d.is_empty()), "{status} of {op}");
        }
        let problem = &op["responses"]["default"]["content"]["application/problem+json"]["schema"]["$ref"];
        if op["operationId"] != "healthz" && op["operationId"] != "metrics" && op["operationId"] != "openapi_json" {
            assert_eq!(problem, "#/components/schemas/Problem", "{op}");
        }
    }
    for schema in ["Image", "Problem", "CreateImage", "CreateInstance", "GcOptions", "StoreUsage"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "no schema {schema}");
    }

    // Every operation the document lists is routed (none meets the fallback or a 405).
    for (path, ops) in ROUTES {
        let concrete = path.replace("{name}", "x").replace("{id}", "x").replace("{reference}", "127.0.0.1:1/UPPER/x:1");
        for op in *ops {
            let method = Method::from_bytes(op.to_uppercase().as_bytes()).unwrap();
            let mut request = s.unix.request(method.clone(), &concrete);
            if method == Method::POST {
                request = request.json(&json!({ "unknown": 1 }));
            }
            let response = request.send().await.unwrap();
            assert_ne!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{op} {path}");
            if response.status() == StatusCode::NOT_FOUND && method != Method::HEAD {
                let body: Value = response.json().await.unwrap();
                assert!(!body["detail"].as_str().unwrap().starts_with("no such endpoint"), "{op} {path}: {body}");
            }
        }
    }

    if validator() {
        let file = s.dir.path().join("openapi.json");
        std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
        let out = validate(&file);
        assert!(
            out.status.success(),
            "the document is not valid OpenAPI 3.1: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The validator does fail a broken document.
        let mut broken = doc.clone();
        broken["paths"]["/v1/images"]["get"]["responses"] = json!("none");
        std::fs::write(&file, serde_json::to_vec(&broken).unwrap()).unwrap();
        assert!(!validate(&file).status.success(), "the validator passed a broken document");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_image_is_built_through_the_daemons_queue() {
    let registry = RegistryServer::start();
    let s = serve().await;
    let rootfs = s.dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/motd"), "built by the daemon\n").unwrap();
    let spec = vmimg_testserver::oci_image::ImageSpec::new().dir_layer(&rootfs).cmd(&["/bin/sh"]).env("LANG=C.UTF-8");
    let host = registry.host();
    tokio::task::spawn_blocking(move || spec.push(&host, "test/app", "1").unwrap()).await.unwrap();
    let source = format!("oci://{}/test/app:1", registry.host());

    let created = s.tcp.post("/v1/images", json!({ "source": source, "format": "ext4" })).await;
    assert_eq!(created.status(), StatusCode::ACCEPTED);
    let image: Value = created.json().await.unwrap();
    assert!(["pending", "pulling", "converting"].contains(&image["status"].as_str().unwrap()), "{image}");
    let ready = wait_ready(&s.unix, image["name"].as_str().unwrap()).await;
    assert_eq!(ready["format"], "ext4");
    assert_eq!(ready["config"]["cmd"], json!(["/bin/sh"]), "{ready}");
    assert_eq!(ready["config"]["env"], json!(["LANG=C.UTF-8"]), "{ready}");
    let builds = s.unix.json("/v1/builds").await;
    assert_eq!(builds.as_array().unwrap().len(), 1, "{builds}");
    assert_eq!((&builds[0]["status"], &builds[0]["image"]), (&json!("ready"), &ready["name"]));
    let id = builds[0]["id"].as_str().unwrap();
    assert_eq!(s.unix.json(&format!("/v1/builds/{id}")).await["status"], "ready");

    let disk = s.dir.path().join("served.ext4");
    let path = format!("/v1/images/{}/disk", ready["name"].as_str().unwrap());
    let bytes = s.unix.get(&path).send().await.unwrap().bytes().await.unwrap();
    std::fs::write(&disk, &bytes).unwrap();
    run(Command::new("e2fsck").arg("-fn").arg(&disk));
    let usage = s.unix.json("/v1/store/usage").await;
    assert!(usage["total_oci_cache_bytes"].as_u64().unwrap() > 0, "the layer is cached: {usage}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_finish_its_request_is_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let quick = Duration::from_millis(300);
    let s = serve_with(Limits { header_timeout: quick, body_timeout: quick, ..Limits::default() }).await;

    // Headers never finished: the connection is closed once the header timeout passes.
    let mut stream = tokio::net::TcpStream::connect(s.address).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: vmimg\r\n").await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "the connection was not cut");
    assert!(started.elapsed() >= Duration::from_millis(250), "cut before the timeout: {:?}", started.elapsed());

    // A body that never arrives whole: 408, as problem+json.
    let mut stream = tokio::net::TcpStream::connect(s.address).await.unwrap();
    let head = format!(
        "POST /v1/images HTTP/1.1\r\nHost: vmimg\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert_eq!(s.unix.json("/v1/images").await, json!([]));
    s.stop().await;
}
