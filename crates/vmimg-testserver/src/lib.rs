//! A real HTTP/1.1 file server on 127.0.0.1 for tests and benchmarks, that
//! can misbehave on purpose.
//!
//! It serves bytes held in memory, files, and directory trees (with
//! Apache-style listings), honours `Range` and `If-Range` with a strong ETag,
//! follows `HEAD` and redirects, and logs every request (with its body, if
//! small). A route added with [`Versioning`] can hide its ETag or
//! Last-Modified, or ignore `If-Range` as broken servers do. Per path, a queue of [`Fault`]s is consumed one per
//! request: error statuses, 429 with Retry-After, a body cut midway, a
//! stall, a flipped byte, a range ignored, a throttled body, the content
//! replaced by a new version.
//!
//! Written on `std::net` with one thread per connection and `Connection:
//! close` on purpose: the faults need byte-level control of what goes on the
//! wire (cut a body after exactly N bytes, hold a socket silent), which an
//! HTTP framework hides. It is a test tool: it binds only 127.0.0.1.
//!
//! Beside it: [`RegistryServer`] starts Debian's docker-registry on a free
//! loopback port; [`oci_image`] builds container images with umoci and
//! pushes them with skopeo; [`guest`] boots a Debian kernel under QEMU with
//! a busybox guest, from an initramfs or a root disk, and reads its console;
//! [`mounts`] mounts the filesystems tests need and fails, under CI, a test
//! that would otherwise skip; [`trees`] describes a tree file by file, for
//! comparing two.

pub mod cutting;
pub mod guest;
mod http;
pub mod mounts;
pub mod oci_image;
mod registry;
pub mod tls;
pub mod trees;
pub mod uploads;

pub use registry::{RegistryConfig, RegistryServer};

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A way to misbehave, applied to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer this status with a tiny body.
    Status(u16),
    /// Answer 429 with `Retry-After`.
    TooManyRequests { retry_after_secs: u64 },
    /// Send the headers (full length) and only this many body bytes, then close.
    CutAfter(u64),
    /// Send this many body bytes, then hold the socket silent for `duration`, then close.
    Stall { after: u64, duration: Duration },
    /// Flip the byte at this offset of the file.
    WrongBytes { at: u64 },
    /// Answer a range request with 200 and the whole body.
    IgnoreRange,
    /// Send the body at this rate.
    SlowBody { bytes_per_sec: u64 },
    /// Serve these bytes from now on (a new version, with a new ETag), from
    /// this request on: the file changed upstream between two requests.
    Replace(Arc<Vec<u8>>),
}

/// What a route tells clients about its version, and whether it keeps its
/// word. The default is an honest server: a strong ETag, Last-Modified, and
/// `If-Range` honoured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Versioning {
    /// Send a strong `ETag`.
    pub etag: bool,
    /// Send `Last-Modified`.
    pub last_modified: bool,
    /// Answer a `Range` whose `If-Range` names another version with the
    /// whole body (RFC 9110); false serves the range of the new version
    /// anyway.
    pub if_range: bool,
    /// Answer `If-None-Match` or `If-Modified-Since` naming the version
    /// served with `304 Not Modified`; false ignores them (a 200, as
    /// servers without caching support answer).
    pub conditional: bool,
}

impl Default for Versioning {
    fn default() -> Self {
        Versioning { etag: true, last_modified: true, if_range: true, conditional: true }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// What followed `?` in the request's target, as sent.
    pub query: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub if_none_match: Option<String>,
    pub authorization: Option<String>,
    /// The body the request sent (a form's, say), as far as it fits in
    /// 16 KiB with the head.
    pub body: Vec<u8>,
    pub status: u16,
}

#[derive(Clone)]
pub(crate) enum Content {
    Bytes(Arc<Vec<u8>>),
    File(PathBuf),
}

#[derive(Clone)]
pub(crate) enum Route {
    Content { content: Content, etag: String, last_modified: String, versioning: Versioning },
    Redirect { to: String, status: u16 },
}

#[derive(Default)]
pub(crate) struct Shared {
    routes: Mutex<HashMap<String, Route>>,
    dirs: Mutex<Vec<(String, PathBuf)>>,
    faults: Mutex<HashMap<String, VecDeque<(Fault, usize)>>>,
    log: Mutex<Vec<RequestRecord>>,
    versions: AtomicU64,
    pub(crate) stopping: AtomicBool,
}

impl Shared {
    pub(crate) fn route(&self, path: &str) -> Option<Route> {
        if let Some(route) = self.routes.lock().unwrap().get(path) {
            return Some(route.clone());
        }
        let dirs = self.dirs.lock().unwrap();
        dirs.iter().find_map(|(prefix, dir)| http::route_in_dir(prefix, dir, path))
    }

    /// Serves `content` at `path` with a new ETag and Last-Modified, keeping the route's
    /// versioning if it had one; returns the new route.
    pub(crate) fn insert(&self, path: &str, content: Content, versioning: Option<Versioning>) -> Route {
        let version = self.versions.fetch_add(1, Ordering::Relaxed);
        let etag = format!("\"v{version}\"");
        let last_modified = format!("Mon, 02 Nov 2026 10:{:02}:{:02} GMT", version / 60 % 60, version % 60);
        let mut routes = self.routes.lock().unwrap();
        let versioning = match (versioning, routes.get(path)) {
            (Some(versioning), _) => versioning,
            (None, Some(Route::Content { versioning, .. })) => *versioning,
            (None, _) => Versioning::default(),
        };
        let route = Route::Content { content, etag, last_modified, versioning };
        routes.insert(path.to_owned(), route.clone());
        route
    }

    /// The next fault queued for `path`, if any.
    pub(crate) fn next_fault(&self, path: &str) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap();
        let queue = faults.get_mut(path)?;
        let (fault, times) = queue.front_mut()?;
        let fault = fault.clone();
        if *times != usize::MAX {
            *times -= 1;
            if *times == 0 {
                queue.pop_front();
            }
        }
        Some(fault)
    }

    pub(crate) fn record(&self, record: RequestRecord) {
        self.log.lock().unwrap().push(record);
    }
}

/// A running server; it stops when dropped.
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server on 127.0.0.1 on a free port.
    pub fn start() -> TestServer {
        TestServer::start_on(0).expect("bind 127.0.0.1")
    }

    /// Starts a server on 127.0.0.1:`port` (0: any free port).
    pub fn start_on(port: u16) -> std::io::Result<TestServer> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(listener, shared))
        };
        Ok(TestServer { addr, shared, acceptor: Some(acceptor) })
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// Serves `bytes` at `path`, replacing what was there (with a new ETag
    /// and the versioning it had).
    pub fn add(&self, path: &str, bytes: Vec<u8>) {
        self.shared.insert(path, Content::Bytes(Arc::new(bytes)), None);
    }

    /// [`TestServer::add`] with the validators `versioning` says.
    pub fn add_with(&self, path: &str, bytes: Vec<u8>, versioning: Versioning) {
        self.shared.insert(path, Content::Bytes(Arc::new(bytes)), Some(versioning));
    }

    /// Serves the file at `file` at `path`, read from disk on each request.
    pub fn add_file(&self, path: &str, file: impl Into<PathBuf>) {
        self.shared.insert(path, Content::File(file.into()), None);
    }

    /// Serves every file under `dir` at `prefix` + its relative path, and a
    /// listing for each directory (paths ending in `/`).
    pub fn serve_dir(&self, prefix: &str, dir: impl Into<PathBuf>) {
        self.shared.dirs.lock().unwrap().push((prefix.to_owned(), dir.into()));
    }

    /// Answers `from` with a redirect to `to` (a path on this server or a URL).
    pub fn redirect(&self, from: &str, to: &str, status: u16) {
        let to = if to.starts_with('/') { self.url(to) } else { to.to_owned() };
        self.shared.routes.lock().unwrap().insert(from.to_owned(), Route::Redirect { to, status });
    }

    /// Queues `fault` for the next `times` requests of `path` (`usize::MAX`: always).
    pub fn fault(&self, path: &str, fault: Fault, times: usize) {
        if times > 0 {
            self.shared.faults.lock().unwrap().entry(path.to_owned()).or_default().push_back((fault, times));
        }
    }

    /// How many requests `path` received.
    pub fn requests(&self, path: &str) -> usize {
        self.shared.log.lock().unwrap().iter().filter(|r| r.path == path).count()
    }

    /// Every request so far, in order.
    pub fn log(&self) -> Vec<RequestRecord> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Serves until the process ends (for the binary).
    pub fn wait(mut self) {
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the acceptor
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(stream) = stream {
            let shared = shared.clone();
            std::thread::spawn(move || http::serve_connection(stream, &shared));
        }
    }
}
