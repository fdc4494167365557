//! A registry's blob uploads as the OCI distribution spec describes
//! resumable chunked uploads, which Debian's Distribution 2.8 does not do
//! (it answers every status request `Range: 0-0` and drops a session cut
//! mid-`PATCH`): sessions keep every byte a cut `PATCH` brought, say how
//! many with `Range: 0-LAST` on `GET`, take a `PATCH` only where its
//! `Content-Range` starts at the offset they hold (`416` otherwise), and a
//! `PUT ?digest=` checks the digest.
//! The server cuts the first `cuts` `PATCH` bodies after `after` bytes
//! each, and counts every body byte it received, so a test can tell a
//! resumed upload (each byte once, and what a cut lost) from a restarted
//! one. Only what a push needs: `POST`, `PATCH`, `GET`, `PUT` and `DELETE`
//! on sessions, `HEAD` on blobs. Listens on 127.0.0.1, stops on drop.

use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A running upload server.
pub struct UploadServer {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<u64, Vec<u8>>,
    next: u64,
    /// Blobs stored, by digest (`sha256:HEX`): their sizes.
    blobs: HashMap<String, u64>,
    /// Body bytes received, cut requests included.
    received: u64,
    cuts: usize,
    after: u64,
    /// Sessions opened.
    opened: usize,
}

impl UploadServer {
    /// A server that cuts the first `cuts` PATCH bodies after `after` bytes.
    pub fn start(after: u64, cuts: usize) -> UploadServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("the server's address").port();
        let state = Arc::new(Mutex::new(State { cuts, after, ..State::default() }));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopping) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        UploadServer { port, state, stop }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Body bytes received so far, cut requests included.
    pub fn received(&self) -> u64 {
        self.state.lock().unwrap().received
    }

    /// Upload sessions opened so far.
    pub fn sessions_opened(&self) -> usize {
        self.state.lock().unwrap().opened
    }

    /// The size of blob `digest`, if it was stored.
    pub fn blob(&self, digest: &str) -> Option<u64> {
        self.state.lock().unwrap().blobs.get(digest).copied()
    }
}

impl Drop for UploadServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

struct Head {
    method: String,
    path: String,
    length: u64,
    /// Where a PATCH's `Content-Range` says its bytes start.
    start: Option<u64>,
}

/// Answers requests on `stream` until it closes or a body is cut.
fn serve(stream: TcpStream, state: &Mutex<State>) {
    let Ok(write) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    let mut write = write;
    while let Some(head) = read_head(&mut reader) {
        let (status, headers) = match answer(&head, &mut reader, state) {
            Some(answer) => answer,
            None => {
                let _ = write.shutdown(Shutdown::Both);
                return;
            }
        };
        let mut text = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n");
        for (name, value) in headers {
            text += &format!("{name}: {value}\r\n");
        }
        if write.write_all(format!("{text}\r\n").as_bytes()).is_err() {
            return;
        }
    }
}

fn read_head(reader: &mut BufReader<TcpStream>) -> Option<Head> {
    let mut line = String::new();
    reader.read_line(&mut line).ok().filter(|&n| n > 0)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let (mut length, mut start) = (0, None);
    loop {
        line.clear();
        reader.read_line(&mut line).ok().filter(|&n| n > 0)?;
        let header = line.trim_end();
        if header.is_empty() {
            return Some(Head { method, path, length, start });
        }
        let Some((name, value)) = header.split_once(':') else { continue };
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().ok()?;
        } else if name.eq_ignore_ascii_case("content-range") {
            start = value.trim().split('-').next().and_then(|first| first.parse().ok());
        }
    }
}

type Answer = (&'static str, Vec<(&'static str, String)>);

/// The answer to one request, its body read; None when the body was cut.
fn answer(head: &Head, body: &mut impl Read, state: &Mutex<State>) -> Option<Answer> {
    let (path, query) = head.path.split_once('?').unwrap_or((&head.path, ""));
    let session = path.strip_prefix("/uploads/").and_then(|id| id.parse::<u64>().ok());
    match (head.method.as_str(), session) {
        ("HEAD", None) => {
            let digest = path.rsplit('/').next().unwrap_or_default();
            let found = state.lock().unwrap().blobs.contains_key(digest);
            Some((if found { "200 OK" } else { "404 Not Found" }, vec![]))
        }
        ("POST", None) if path.ends_with("/blobs/uploads/") => {
            let mut state = state.lock().unwrap();
            let id = state.next;
            state.next += 1;
            state.opened += 1;
            state.sessions.insert(id, Vec::new());
            Some(("202 Accepted", vec![("Location", format!("/uploads/{id}")), ("Range", "0-0".into())]))
        }
        ("PATCH", Some(id)) => patch(id, head, body, state),
        ("GET", Some(id)) => {
            let state = state.lock().unwrap();
            let held = state.sessions.get(&id).map(Vec::len)?;
            Some(("204 No Content", vec![("Location", format!("/uploads/{id}")), ("Range", range(held))]))
        }
        ("PUT", Some(id)) => {
            let mut rest = Vec::new();
            body.take(head.length).read_to_end(&mut rest).ok()?;
            let mut state = state.lock().unwrap();
            state.received += rest.len() as u64;
            let mut data = state.sessions.remove(&id)?;
            data.extend(rest);
            let hex: String = Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
            let actual = format!("sha256:{hex}");
            if query.strip_prefix("digest=") != Some(actual.as_str()) {
                return Some(("400 Bad Request", vec![]));
            }
            state.blobs.insert(actual, data.len() as u64);
            Some(("201 Created", vec![]))
        }
        ("DELETE", Some(id)) => {
            let removed = state.lock().unwrap().sessions.remove(&id).is_some();
            Some((if removed { "204 No Content" } else { "404 Not Found" }, vec![]))
        }
        _ => Some(("404 Not Found", vec![])),
    }
}

/// A PATCH: its body appended to session `id` as it arrives (what a cut
/// brought is kept); cut after `after` bytes while cuts remain.
fn patch(id: u64, head: &Head, body: &mut impl Read, state: &Mutex<State>) -> Option<Answer> {
    let length = head.length;
    let cut_at = {
        let mut state = state.lock().unwrap();
        let held = state.sessions.get(&id)?.len();
        if head.start != Some(held as u64) {
            drop(state);
            std::io::copy(&mut body.take(length), &mut std::io::sink()).ok()?;
            return Some(("416 Range Not Satisfiable", vec![("Range", range(held))]));
        }
        (state.cuts > 0).then(|| {
            state.cuts -= 1;
            state.after.min(length)
        })
    };
    let mut left = cut_at.unwrap_or(length);
    let mut buffer = vec![0u8; 64 << 10];
    while left > 0 {
        let n = body.read(&mut buffer[..left.min(64 << 10) as usize]).ok().filter(|&n| n > 0)?;
        let mut state = state.lock().unwrap();
        state.received += n as u64;
        state.sessions.get_mut(&id)?.extend_from_slice(&buffer[..n]);
        left -= n as u64;
    }
    if cut_at.is_some() {
        return None;
    }
    let held = state.lock().unwrap().sessions.get(&id).map(Vec::len)?;
    Some(("202 Accepted", vec![("Location", format!("/uploads/{id}")), ("Range", range(held))]))
}

/// `0-LAST` for `held` bytes (`0-0` for none, as registries say it).
fn range(held: usize) -> String {
    format!("0-{}", held.saturating_sub(1))
}
