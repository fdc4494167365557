//! The wire: reading one request head (and a small body, such as a form's),
//! answering it, sending the body with whatever fault is queued.

use crate::{Content, Fault, RequestRecord, Route, Shared, Versioning};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A request head and body larger than this together are dropped.
const MAX_HEAD: usize = 16 << 10;
const CHUNK: usize = 1 << 20;

struct Request {
    method: String,
    path: String,
    query: String,
    range: Option<String>,
    if_range: Option<String>,
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
    authorization: Option<String>,
    content_length: u64,
    body: Vec<u8>,
}

/// What a request resolves to before faults.
struct Body {
    content: Content,
    etag: String,
    last_modified: String,
    versioning: Versioning,
}

/// The Last-Modified of a served directory's files and listings.
const LAST_MODIFIED: &str = "Mon, 02 Nov 2026 10:00:00 GMT";

impl Body {
    /// Whether a range request with this `If-Range` gets the range: it names
    /// this version, or the route does not care (as broken servers do).
    fn honours(&self, if_range: Option<&str>) -> bool {
        let v = &self.versioning;
        if_range.is_none_or(|x| !v.if_range || self.is_named_by(x, x))
    }

    /// Whether a conditional request's validators name this version, so
    /// that it is answered `304 Not Modified` (RFC 9110: If-None-Match
    /// wins over If-Modified-Since).
    fn not_modified(&self, request: &Request) -> bool {
        let (etag, since) = (request.if_none_match.as_deref(), request.if_modified_since.as_deref());
        self.versioning.conditional
            && match etag {
                Some(etag) => self.is_named_by(etag, ""),
                None => since.is_some_and(|since| self.is_named_by("", since)),
            }
    }

    /// Whether `etag` or `last_modified` names this version (as sent).
    fn is_named_by(&self, etag: &str, last_modified: &str) -> bool {
        let v = &self.versioning;
        (v.etag && etag == self.etag) || (v.last_modified && last_modified == self.last_modified)
    }

    /// The validator headers, as the route's versioning says.
    fn validators(&self) -> String {
        let mut headers = String::new();
        if self.versioning.etag {
            headers.push_str(&format!("ETag: {}\r\n", self.etag));
        }
        if self.versioning.last_modified {
            headers.push_str(&format!("Last-Modified: {}\r\n", self.last_modified));
        }
        headers
    }
}

pub(crate) fn serve_connection(stream: TcpStream, shared: &Shared) {
    let Ok(request) = read_request(&stream) else { return };
    let status = answer(&stream, &request, shared).unwrap_or(0);
    shared.record(RequestRecord {
        method: request.method,
        path: request.path,
        query: request.query,
        range: request.range,
        if_range: request.if_range,
        if_none_match: request.if_none_match,
        authorization: request.authorization,
        body: request.body,
        status,
    });
}

fn read_request(stream: &TcpStream) -> io::Result<Request> {
    let mut reader = BufReader::new(stream.take(MAX_HEAD as u64));
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(io::Error::other("not HTTP"));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        range: None,
        if_range: None,
        if_none_match: None,
        if_modified_since: None,
        authorization: None,
        content_length: 0,
        body: Vec::new(),
    };
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::other("head cut"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            (&mut reader).take(request.content_length).read_to_end(&mut request.body)?;
            return Ok(request);
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "range" => request.range = Some(value.trim().to_owned()),
                "if-range" => request.if_range = Some(value.trim().to_owned()),
                "if-none-match" => request.if_none_match = Some(value.trim().to_owned()),
                "if-modified-since" => request.if_modified_since = Some(value.trim().to_owned()),
                "authorization" => request.authorization = Some(value.trim().to_owned()),
                "content-length" => request.content_length = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
}

/// Answers the request; returns the status sent.
fn answer(mut stream: &TcpStream, request: &Request, shared: &Shared) -> io::Result<u16> {
    let mut route = shared.route(&request.path);
    let fault = route.as_ref().and_then(|_| shared.next_fault(&request.path));
    if let Some(Fault::Replace(bytes)) = &fault {
        route = Some(shared.insert(&request.path, Content::Bytes(bytes.clone()), None));
    }
    let body = match (route, &fault) {
        (None, _) => return small(stream, 404, "not found", &[]),
        (_, Some(Fault::Status(code))) => return small(stream, *code, "injected", &[]),
        (_, Some(Fault::TooManyRequests { retry_after_secs })) => {
            return small(stream, 429, "slow down", &[("Retry-After", retry_after_secs.to_string())]);
        }
        (Some(Route::Redirect { to, status }), _) => return small(stream, status, "moved", &[("Location", to)]),
        (Some(Route::Content { content, etag, last_modified, versioning }), _) => {
            Body { content, etag, last_modified, versioning }
        }
    };
    if body.not_modified(request) {
        return small(stream, 304, "", &[("ETag", body.etag.clone())]);
    }
    let len = content_len(&body.content)?;
    let honour_range = fault != Some(Fault::IgnoreRange) && body.honours(request.if_range.as_deref());
    let range = match request.range.as_deref().filter(|_| honour_range) {
        None => None,
        Some(spec) => match parse_range(spec, len) {
            Some(range) => Some(range),
            None => return small(stream, 416, "range not satisfiable", &[("Content-Range", format!("bytes */{len}"))]),
        },
    };
    let (status, start, end) = match range {
        Some((start, end)) => (206, start, end),
        None => (200, 0, len),
    };
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\n{}\
         Accept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n",
        reason(status),
        end - start,
        body.validators()
    );
    if status == 206 {
        head.push_str(&format!("Content-Range: bytes {start}-{}/{len}\r\n", end - 1));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if request.method != "HEAD" {
        send_body(stream, &body, start, end, fault.as_ref(), shared)?;
    }
    stream.flush()?;
    Ok(status)
}

fn small(mut stream: &TcpStream, status: u16, text: &str, headers: &[(&str, String)]) -> io::Result<u16> {
    let mut head =
        format!("HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nConnection: close\r\n", reason(status), text.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(text);
    stream.write_all(head.as_bytes())?;
    Ok(status)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// `bytes=A-B`, `bytes=A-`, `bytes=-N` → the half-open range to send.
fn parse_range(spec: &str, len: u64) -> Option<(u64, u64)> {
    let (first, last) = spec.strip_prefix("bytes=")?.split_once('-')?;
    let (start, end) = match (first.trim(), last.trim()) {
        ("", suffix) => (len.saturating_sub(suffix.parse().ok()?), len),
        (start, "") => (start.parse().ok()?, len),
        (start, end) => (start.parse().ok()?, end.parse::<u64>().ok()?.saturating_add(1).min(len)),
    };
    (start < end).then_some((start, end))
}

fn content_len(content: &Content) -> io::Result<u64> {
    match content {
        Content::Bytes(bytes) => Ok(bytes.len() as u64),
        Content::File(path) => Ok(std::fs::metadata(path)?.len()),
    }
}

/// Sends bytes `start..end` of the body, as the fault says.
fn send_body(
    mut stream: &TcpStream,
    body: &Body,
    start: u64,
    end: u64,
    fault: Option<&Fault>,
    shared: &Shared,
) -> io::Result<()> {
    let limit = match fault {
        Some(Fault::CutAfter(n)) | Some(Fault::Stall { after: n, .. }) => end.min(start.saturating_add(*n)),
        _ => end,
    };
    let file = match &body.content {
        Content::File(path) => Some(File::open(path)?),
        Content::Bytes(_) => None,
    };
    let chunk_len = match fault {
        // Small writes, so that a throttled body trickles.
        Some(Fault::SlowBody { bytes_per_sec }) => (*bytes_per_sec / 20).clamp(1, CHUNK as u64) as usize,
        _ => CHUNK,
    };
    let mut buf = vec![0u8; chunk_len.min((limit - start) as usize)];
    let started = Instant::now();
    let mut offset = start;
    while offset < limit {
        let n = (limit - offset).min(buf.len() as u64) as usize;
        let chunk = &mut buf[..n];
        match (&body.content, &file) {
            (Content::Bytes(bytes), _) => chunk.copy_from_slice(&bytes[offset as usize..offset as usize + n]),
            (_, Some(file)) => file.read_exact_at(chunk, offset)?,
            _ => unreachable!("a file route has a file"),
        }
        if let Some(Fault::WrongBytes { at }) = fault
            && (offset..offset + n as u64).contains(at)
        {
            chunk[(at - offset) as usize] ^= 0xff;
        }
        if let Some(Fault::SlowBody { bytes_per_sec }) = fault {
            throttle(started, offset - start + n as u64, *bytes_per_sec);
        }
        stream.write_all(chunk)?;
        offset += n as u64;
    }
    if let Some(Fault::Stall { duration, .. }) = fault {
        stream.flush()?;
        let until = Instant::now() + *duration;
        while Instant::now() < until && !shared.stopping.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Sleeps so that `sent` bytes since `started` stay under `rate` per second.
fn throttle(started: Instant, sent: u64, rate: u64) {
    let due = Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
    if let Some(wait) = due.checked_sub(started.elapsed()) {
        std::thread::sleep(wait);
    }
}

/// A path under a served directory: a file, or a listing for a directory.
pub(crate) fn route_in_dir(prefix: &str, dir: &Path, path: &str) -> Option<Route> {
    let rest = path.strip_prefix(prefix)?;
    let relative = PathBuf::from(rest.trim_start_matches('/'));
    if relative.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let full = dir.join(&relative);
    let meta = std::fs::metadata(&full).ok()?;
    if meta.is_dir() {
        let listing = path.ends_with('/').then(|| listing(&full, path))??;
        return Some(Route::Content {
            content: Content::Bytes(listing.into_bytes().into()),
            etag: "\"listing\"".into(),
            last_modified: LAST_MODIFIED.into(),
            versioning: Versioning::default(),
        });
    }
    let etag = format!("\"{:x}-{:x}\"", meta.len(), meta.mtime_nsec() ^ meta.mtime() as i64);
    let last_modified = LAST_MODIFIED.into();
    Some(Route::Content { content: Content::File(full), etag, last_modified, versioning: Versioning::default() })
}

/// An Apache-style index page.
fn listing(dir: &Path, path: &str) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some(if e.path().is_dir() { format!("{name}/") } else { name })
        })
        .collect();
    names.sort();
    let mut html = format!(
        "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 3.2 Final//EN\">\n<html><head><title>Index of {path}</title></head>\n\
         <body><h1>Index of {path}</h1><pre><a href=\"?C=N;O=D\">Name</a>\n<hr><a href=\"../\">Parent Directory</a>\n"
    );
    for name in names {
        html.push_str(&format!("<a href=\"{name}\">{name}</a>  2026-11-02 10:00  -\n"));
    }
    html.push_str("<hr></pre></body></html>\n");
    Some(html)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=95-200", 100), Some((95, 100)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("pages=1-2", 100), None);
    }
}
