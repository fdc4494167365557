//! The server speaks HTTP and misbehaves exactly as asked (a plain
//! TcpStream client, so nothing hides what is on the wire).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;
use vmimg_testserver::{Fault, TestServer, Versioning};

/// Status, headers (lowercase names) and body of one exchange.
struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

fn get(server: &TestServer, method: &str, path: &str, headers: &[&str]) -> Reply {
    let mut stream = TcpStream::connect(server.base_url().trim_start_matches("http://")).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    stream.write_all(format!("{request}\r\n").as_bytes()).unwrap();
    let mut all = Vec::new();
    stream.read_to_end(&mut all).unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(all[..split].to_vec()).unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Reply { status, head, body: all[split + 4..].to_vec() }
}

fn body() -> Vec<u8> {
    (0..100_000u32).map(|i| (i % 251) as u8).collect()
}

#[test]
fn ranges_if_range_and_head() {
    let server = TestServer::start();
    server.add("/f", body());
    let full = get(&server, "GET", "/f", &[]);
    assert_eq!((full.status, full.body.len()), (200, 100_000));
    let etag = full.header("etag").unwrap();
    let part = get(&server, "GET", "/f", &["Range: bytes=10-19"]);
    assert_eq!((part.status, &part.body[..]), (206, &body()[10..20]));
    assert_eq!(part.header("content-range").unwrap(), "bytes 10-19/100000");
    let tail = get(&server, "GET", "/f", &["Range: bytes=99990-", &format!("If-Range: {etag}")]);
    assert_eq!((tail.status, tail.body.len()), (206, 10));
    assert_eq!(get(&server, "GET", "/f", &["Range: bytes=200000-"]).status, 416);
    server.add("/f", body());
    let changed = get(&server, "GET", "/f", &["Range: bytes=10-", &format!("If-Range: {etag}")]);
    assert_eq!((changed.status, changed.body.len()), (200, 100_000), "a changed file ignores the range");
    let head = get(&server, "HEAD", "/f", &[]);
    assert!(head.body.is_empty() && head.header("content-length").unwrap() == "100000");
    assert_eq!(get(&server, "GET", "/nothing", &[]).status, 404);
    assert_eq!(server.requests("/f"), 6);
    assert_eq!(server.log()[1].range.as_deref(), Some("bytes=10-19"));
}

#[test]
fn faults_apply_in_order_then_stop() {
    let server = TestServer::start();
    server.add("/f", body());
    server.fault("/f", Fault::Status(500), 1);
    server.fault("/f", Fault::TooManyRequests { retry_after_secs: 3 }, 1);
    server.fault("/f", Fault::CutAfter(1000), 1);
    server.fault("/f", Fault::WrongBytes { at: 5 }, 1);
    server.fault("/f", Fault::IgnoreRange, 1);
    assert_eq!(get(&server, "GET", "/f", &[]).status, 500);
    let throttled = get(&server, "GET", "/f", &[]);
    assert_eq!((throttled.status, throttled.header("retry-after").unwrap().as_str()), (429, "3"));
    let cut = get(&server, "GET", "/f", &[]);
    assert_eq!((cut.header("content-length").unwrap().as_str(), cut.body.len()), ("100000", 1000));
    let wrong = get(&server, "GET", "/f", &[]);
    let diff: Vec<_> = (0..wrong.body.len()).filter(|&i| wrong.body[i] != body()[i]).collect();
    assert_eq!(diff, [5]);
    assert_eq!(get(&server, "GET", "/f", &["Range: bytes=10-"]).status, 200);
    assert_eq!(get(&server, "GET", "/f", &["Range: bytes=10-"]).status, 206, "the queue is empty");
}

#[test]
fn a_replaced_version_and_routes_that_hide_or_ignore_validators() {
    let server = TestServer::start();
    server.add_with("/f", body(), Versioning { if_range: false, ..Versioning::default() });
    let etag = get(&server, "GET", "/f", &[]).header("etag").unwrap();
    server.fault("/f", Fault::Replace(Arc::new(vec![7; 100_000])), 1);
    let replaced = get(&server, "GET", "/f", &["Range: bytes=10-", &format!("If-Range: {etag}")]);
    assert_eq!((replaced.status, &replaced.body[..]), (206, &[7; 99_990][..]), "If-Range ignored");
    let new_etag = replaced.header("etag").unwrap();
    assert_ne!(new_etag, etag, "a new version has a new ETag");
    assert_eq!(get(&server, "GET", "/f", &[]).header("etag"), Some(new_etag), "the new version stays");

    server.add_with("/g", body(), Versioning { etag: false, last_modified: false, ..Versioning::default() });
    let bare = get(&server, "GET", "/g", &["Range: bytes=10-"]);
    assert_eq!((bare.status, bare.header("etag"), bare.header("last-modified")), (206, None, None));
    let honest = Versioning { etag: false, ..Versioning::default() };
    server.add_with("/h", body(), honest);
    let modified = get(&server, "GET", "/h", &[]).header("last-modified").unwrap();
    let by_date = get(&server, "GET", "/h", &["Range: bytes=10-", &format!("If-Range: {modified}")]);
    assert_eq!(by_date.status, 206, "If-Range with the route's Last-Modified");
    assert_eq!(get(&server, "GET", "/h", &["Range: bytes=10-", "If-Range: \"other\""]).status, 200);
}

#[test]
fn stalls_throttles_redirects_and_listings() {
    let server = TestServer::start();
    server.add("/f", body());
    server.fault("/f", Fault::Stall { after: 10, duration: Duration::from_millis(300) }, 1);
    let started = std::time::Instant::now();
    let stalled = get(&server, "GET", "/f", &[]);
    assert!(stalled.body.len() == 10 && started.elapsed() >= Duration::from_millis(300));
    server.fault("/f", Fault::SlowBody { bytes_per_sec: 500_000 }, 1);
    let started = std::time::Instant::now();
    assert_eq!(get(&server, "GET", "/f", &[]).body, body());
    assert!(started.elapsed() >= Duration::from_millis(150), "{:?}", started.elapsed());

    server.redirect("/old", "/f", 302);
    let moved = get(&server, "GET", "/old", &[]);
    assert_eq!((moved.status, moved.header("location").unwrap()), (302, server.url("/f")));

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("20260101-1")).unwrap();
    std::fs::write(dir.path().join("20260101-1/SUMS"), b"abc").unwrap();
    server.serve_dir("/mirror/", dir.path());
    let index = String::from_utf8(get(&server, "GET", "/mirror/", &[]).body).unwrap();
    assert!(index.contains("<a href=\"20260101-1/\">"), "{index}");
    assert_eq!(get(&server, "GET", "/mirror/20260101-1/SUMS", &[]).body, b"abc");
    assert_eq!(get(&server, "GET", "/mirror/../etc/passwd", &[]).status, 404);
}

#[test]
fn the_binary_prints_its_url_and_serves_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("disk.img"), b"bytes").unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vmimg-testserver"))
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
    let address = line.trim().trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).unwrap();
    stream.write_all(b"GET /disk.img HTTP/1.1\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("bytes"), "{reply}");
}
