//! One file downloaded over HTTP(S), verified while it streams, resumed after
//! a cut, retried with backoff.
//!
//! The life of a download: bytes go to a partial file the caller names (the
//! store keeps it under its `tmp/`), and into a running hash as they arrive,
//! so the digest is ready the moment the last byte lands: there is no second
//! pass. A sidecar `<partial>.meta` records the URL and the version of the
//! file: its strong ETag, Last-Modified and total size.
//!
//! After a cut, the next attempt asks for `Range: bytes=N-` with `If-Range`
//! (the ETag, else Last-Modified). Bytes of two versions are never joined:
//! - a 206 continues the file and the hash only if it shows the same
//!   version (all three validators equal); a server that ignored `If-Range`
//!   and sends a range of a new version makes the download start over;
//! - without a strong ETag, validators prove too little: the request starts
//!   a few KiB before `N` and that overlap must equal the bytes held, else
//!   the download starts over;
//! - a 200 (the range ignored, or the file changed) is taken from its first
//!   byte, skipping the bytes held only when the same strong ETag vouches
//!   for them.
//!
//! A partial left by an earlier process is resumed the same way once its
//! bytes are hashed again (read locally, once).
//!
//! The file work (opening, hashing a partial again, writing each block,
//! truncating, the final fsync) runs on tokio's blocking threads, never on
//! the async thread that drives the transfer.
//!
//! Connection errors, timeouts (including a body that stalls for
//! `read_timeout`), cut bodies, bodies slower than `min_speed` over
//! `speed_window` (the `speed` module), 408, 429 (honouring Retry-After)
//! and 5xx are retried with exponential backoff and jitter from `backon`,
//! each retry told to the [`Progress`] (the `retry` module); an attempt
//! that made progress resets the budget, unless it was cut for slowness. A
//! host name that does not resolve is tried once more only. Other answers
//! fail at once. Why not `reqwest-retry`: it cannot retry a streaming body
//! and never resumes one.
//!
//! This module does not decide whether the digest is right: the caller
//! compares [`Fetched::digest`] with what it expected, and owns the partial.

use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Error, Result};
use crate::retry::Retries;
use crate::speed::PacedBody;
use backon::BackoffBuilder;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How hard to try.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Attempts in a row without progress before giving up.
    pub attempts: usize,
    /// First delay between attempts; doubles up to `max_delay`.
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub connect_timeout: Duration,
    /// A body that sends nothing for this long is cut and resumed.
    pub read_timeout: Duration,
    /// Refuse bodies larger than this (a hostile server could stream forever).
    pub max_size: u64,
    /// A body slower than this many bytes a second, averaged over
    /// `speed_window`, is cut and resumed (0: never).
    pub min_speed: u64,
    pub speed_window: Duration,
}

impl FetchOptions {
    /// The delays between attempts: exponential from `min_delay` to
    /// `max_delay`, with jitter, `attempts - 1` of them.
    pub fn backoff(&self) -> backon::ExponentialBackoff {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.attempts.saturating_sub(1))
            .with_jitter()
            .build()
    }
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            attempts: 8,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            max_size: 1 << 40,
            min_speed: 1 << 10,
            speed_window: Duration::from_secs(30),
        }
    }
}

/// What a download reports as it goes. Every method has a no-op default.
pub trait Progress: Send + Sync {
    /// An attempt starts with `offset` bytes already in the partial file
    /// (0 after a restart), `total` when the server said the length.
    fn started(&self, _offset: u64, _total: Option<u64>) {}
    /// The first `written` bytes of the partial file are final.
    fn advanced(&self, _written: u64) {}
    /// An attempt failed with `error`; the next starts after `delay`. Every
    /// retry loop of vmimg's transports tells this, so `error` is a
    /// transport's: this crate's [`Error`], or a registry client's (downcast
    /// to look closer).
    fn retrying(&self, _error: &(dyn std::error::Error + 'static), _delay: Duration) {}
    /// A registry host (`https://mirror.example`, the API root without
    /// `/v2`) served a manifest or a whole blob.
    fn served_by(&self, _host: &str) {}
}

/// Progress that nobody watches.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What to download: a URL, with headers sent on every attempt.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub url: &'a str,
    pub headers: HeaderMap,
    /// The body's exact size, when the caller knows it.
    pub size: Option<u64>,
}

/// A finished download: the partial file holds exactly these bytes.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub digest: Digest,
    pub size: u64,
    /// The version of the file the bytes are, as the server named it.
    pub validators: Validators,
}

/// What an HTTP server says names one version of a file: a later
/// conditional request ([`Fetcher::changed`]) asks whether it still is.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    /// The ETag, strong or weak (`W/"…"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

impl Validators {
    /// The validators an answer carries.
    pub(crate) fn of(headers: &HeaderMap) -> Validators {
        Validators {
            etag: header_str(headers, header::ETAG).map(str::to_owned),
            last_modified: header_str(headers, header::LAST_MODIFIED).map(str::to_owned),
        }
    }

    /// Whether there is anything to ask a server about.
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// An HTTP client with vmimg's retry and resume rules.
pub struct Fetcher {
    pub(crate) client: reqwest::Client,
    pub(crate) options: FetchOptions,
}

/// Bytes are written to the partial file in blocks of this size.
const WRITE_BLOCK: usize = 1 << 20;

impl Fetcher {
    pub fn new(options: FetchOptions) -> Result<Fetcher> {
        Ok(Fetcher { client: crate::dns::http_client(&options)?, options })
    }

    /// A fetcher that sends through `client` (made by
    /// [`client_builder`](crate::client_builder) with more settings).
    pub fn with_client(client: reqwest::Client, options: FetchOptions) -> Fetcher {
        Fetcher { client, options }
    }

    /// Downloads `url` into `partial`, resuming what an earlier attempt left
    /// there for the same URL, and returns the digest of the whole body.
    pub async fn fetch(
        &self,
        url: &str,
        algorithm: Algorithm,
        partial: &Path,
        progress: &dyn Progress,
    ) -> Result<Fetched> {
        self.fetch_with(&Request { url, headers: HeaderMap::new(), size: None }, algorithm, partial, progress).await
    }

    /// [`Fetcher::fetch`] with request headers (credentials) and, when the
    /// size is known (a content-addressed blob), a body refused past it.
    pub async fn fetch_with(
        &self,
        request: &Request<'_>,
        algorithm: Algorithm,
        partial: &Path,
        progress: &dyn Progress,
    ) -> Result<Fetched> {
        let url = request.url;
        check_url(url)?;
        let max_size = request.size.unwrap_or(self.options.max_size).min(self.options.max_size);
        let mut transfer = Transfer::resume(url, algorithm, partial, progress, max_size).await?;
        transfer.headers = request.headers.clone();
        let mut retries = Retries::new(&self.options, progress);
        loop {
            let before = transfer.written;
            let error = match transfer.attempt(self).await {
                Ok(()) => break,
                Err(e) if e.is_transient() => e,
                Err(e) => return Err(e),
            };
            // A body cut for slowness brought too little to count.
            if transfer.written > before && !matches!(error, Error::TooSlow { .. }) {
                retries.progressed();
            }
            if !retries.wait(&error).await {
                return Err(Error::GaveUp { attempts: retries.attempts(), last: Box::new(error) });
            }
        }
        transfer.on_file("flush", |file| file.sync_all()).await?;
        // A file complete already (416) was named by the answers that brought it.
        let validators = transfer.validators.take().unwrap_or_else(|| transfer.meta.version.validators());
        Ok(Fetched { digest: transfer.hasher.finish(), size: transfer.written, validators })
    }

    /// A small document (a checksum list, a directory index), at most `limit`
    /// bytes, with the same retries, told to `progress`.
    pub async fn get_text(&self, url: &str, limit: usize, progress: &dyn Progress) -> Result<String> {
        check_url(url)?;
        self.retried(progress, || self.get_text_once(url, limit)).await
    }

    /// Runs `attempt` until it succeeds or fails for good, retrying
    /// transient failures within the options' budget, told to `progress`.
    pub(crate) async fn retried<T, A: Future<Output = Result<T>>>(
        &self,
        progress: &dyn Progress,
        mut attempt: impl FnMut() -> A,
    ) -> Result<T> {
        let mut retries = Retries::new(&self.options, progress);
        loop {
            let error = match attempt().await {
                Ok(value) => return Ok(value),
                Err(e) if e.is_transient() => e,
                Err(e) => return Err(e),
            };
            if !retries.wait(&error).await {
                return Err(Error::GaveUp { attempts: retries.attempts(), last: Box::new(error) });
            }
        }
    }

    async fn get_text_once(&self, url: &str, limit: usize) -> Result<String> {
        let response = self.client.get(url).send().await.map_err(|e| Error::transfer(url, e))?;
        if response.status() != StatusCode::OK {
            return Err(status_error(url, &response));
        }
        let mut body = Vec::new();
        let mut stream = PacedBody::new(url, response.bytes_stream(), &self.options);
        while let Some(chunk) = stream.next().await? {
            body.extend_from_slice(&chunk);
            if body.len() > limit {
                return Err(Error::TooLarge { url: url.to_owned(), limit: limit as u64 });
            }
        }
        String::from_utf8(body).map_err(|_| Error::Transfer { url: url.to_owned(), message: "not UTF-8 text".into() })
    }
}

pub(crate) fn check_url(url: &str) -> Result<()> {
    let parsed = reqwest::Url::parse(url).map_err(|e| Error::Url { url: url.to_owned(), reason: e.to_string() })?;
    match parsed.scheme() {
        "http" | "https" => Ok(()),
        other => {
            Err(Error::Url { url: url.to_owned(), reason: format!("unsupported scheme {other:?} (use http or https)") })
        }
    }
}

pub(crate) fn status_error(url: &str, response: &reqwest::Response) -> Error {
    let retry_after = header_str(response.headers(), header::RETRY_AFTER).and_then(|s| s.trim().parse().ok());
    Error::Status { url: url.to_owned(), status: response.status().as_u16(), retry_after }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What the sidecar file remembers so another process can resume: the URL
/// and the version of the file the partial's bytes came from.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct PartialMeta {
    url: String,
    version: Version,
}

/// What tells one version of a file from another. A resumed answer must
/// show exactly the version of the first, or the bytes held are dropped.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Version {
    /// A strong ETag: the only validator that promises the same bytes (a
    /// weak one, `W/`, does not).
    etag: Option<String>,
    last_modified: Option<String>,
    /// The body's full length.
    total: Option<u64>,
}

impl Version {
    /// The version an answer shows: its total from Content-Range (a 206) or
    /// Content-Length.
    fn of(response: &reqwest::Response) -> Version {
        let headers = response.headers();
        let total = match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                parse_content_range(header_str(headers, header::CONTENT_RANGE).unwrap_or_default()).and_then(|r| r.1)
            }
            _ => response.content_length(),
        };
        Version {
            etag: header_str(headers, header::ETAG).filter(|e| !e.starts_with("W/")).map(str::to_owned),
            last_modified: header_str(headers, header::LAST_MODIFIED).map(str::to_owned),
            total,
        }
    }

    /// What to send as `If-Range`: the ETag, else Last-Modified.
    fn validator(&self) -> Option<&str> {
        self.etag.as_deref().or(self.last_modified.as_deref())
    }

    /// What names this version to a later conditional request.
    fn validators(&self) -> Validators {
        Validators { etag: self.etag.clone(), last_modified: self.last_modified.clone() }
    }

    /// Whether an answer of this version can be trusted to continue the
    /// bytes held on its validators alone.
    fn is_strong(&self) -> bool {
        self.etag.is_some()
    }
}

/// How many bytes before the end of the partial a resume asks for again
/// when no strong ETag vouches for the answer: they must match the file.
const OVERLAP: u64 = 4 << 10;

/// The sidecar of a partial file.
pub fn meta_path(partial: &Path) -> PathBuf {
    let mut name = partial.as_os_str().to_owned();
    name.push(".meta");
    PathBuf::from(name)
}

/// Removes a partial file and its sidecar (missing files are fine).
pub fn remove_partial(partial: &Path) -> std::io::Result<()> {
    for path in [partial.to_owned(), meta_path(partial)] {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The leading bytes of an answer's body that the partial file holds
/// already: first `trusted` bytes dropped unseen (a strong ETag vouches for
/// them), then `check`, compared with the file's last bytes.
#[derive(Debug, Default)]
struct Held {
    trusted: u64,
    check: Vec<u8>,
}

impl Held {
    /// Takes the held bytes off the front of `chunk` and returns the rest,
    /// or `None` if they are not the bytes the file holds.
    fn strip<'c>(&mut self, chunk: &'c [u8]) -> Option<&'c [u8]> {
        let trusted = self.trusted.min(chunk.len() as u64) as usize;
        self.trusted -= trusted as u64;
        let chunk = &chunk[trusted..];
        let checked = self.check.len().min(chunk.len());
        if chunk[..checked] != self.check[..checked] {
            return None;
        }
        self.check.drain(..checked);
        Some(&chunk[checked..])
    }
}

/// What an answer means for the bytes held.
enum Fit {
    /// Stream its body; its first bytes are held already.
    Continue(Held),
    /// It is of another version than the bytes held, and cannot be used
    /// (a range of the new version): start over with a new request.
    Changed,
    /// The file is complete already (416 to a range from its end).
    Complete,
}

/// How a body went.
enum Body {
    /// It ended (maybe early: the caller compares the total).
    Ended,
    /// Its overlap differs from the bytes held: the file changed.
    Diverged,
}

/// The state of one download across its attempts.
struct Transfer<'a> {
    url: &'a str,
    path: &'a Path,
    /// Shared with the blocking threads that read and write it.
    file: Arc<File>,
    meta: PartialMeta,
    algorithm: Algorithm,
    hasher: Hasher,
    /// Bytes of the body in the file (and in the hash).
    written: u64,
    buffer: Vec<u8>,
    progress: &'a dyn Progress,
    max_size: u64,
    headers: HeaderMap,
    /// The validators of the last answer whose body was taken.
    validators: Option<Validators>,
}

impl<'a> Transfer<'a> {
    /// Opens `path`, keeping (and hashing again) what an earlier download of
    /// the same URL left there.
    async fn resume(
        url: &'a str,
        algorithm: Algorithm,
        path: &'a Path,
        progress: &'a dyn Progress,
        max_size: u64,
    ) -> Result<Self> {
        let (owned, wanted) = (path.to_owned(), url.to_owned());
        let (file, resumed) = blocking(path, move || open_partial(&owned, &wanted, algorithm)).await?;
        let resumed = resumed.unwrap_or_else(|| Resumed {
            meta: PartialMeta { url: url.to_owned(), ..PartialMeta::default() },
            written: 0,
            hasher: Hasher::new(algorithm),
        });
        Ok(Transfer {
            url,
            path,
            file: Arc::new(file),
            meta: resumed.meta,
            algorithm,
            hasher: resumed.hasher,
            written: resumed.written,
            buffer: Vec::with_capacity(WRITE_BLOCK),
            progress,
            max_size,
            headers: HeaderMap::new(),
            validators: None,
        })
    }

    /// Runs `work` on the partial file on a blocking thread; its failure is
    /// an error to `action` the file.
    async fn on_file<T: Send + 'static>(
        &self,
        action: &'static str,
        work: impl FnOnce(&File) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T> {
        let (file, path) = (self.file.clone(), self.path.to_owned());
        blocking(self.path, move || work(&file).map_err(Error::io(action, &path))).await
    }

    /// Forgets every byte held: empty file, fresh hash.
    async fn restart(&mut self) -> Result<()> {
        self.on_file("truncate", |file| file.set_len(0)).await?;
        self.hasher = Hasher::new(self.algorithm);
        self.written = 0;
        self.buffer.clear();
        Ok(())
    }

    /// One request and its body. When the answer or the body proves the
    /// file changed since the bytes held, they are dropped and the request
    /// sent again: nothing is held then, so that cannot happen twice.
    async fn attempt(&mut self, fetcher: &Fetcher) -> Result<()> {
        loop {
            let response = self.request(&fetcher.client).await?;
            let held = match self.fit(&response).await? {
                Fit::Continue(held) => held,
                Fit::Changed => {
                    self.restart().await?;
                    continue;
                }
                Fit::Complete => return Ok(()),
            };
            self.remember(&response).await?;
            self.validators = Some(Validators::of(response.headers()));
            self.progress.started(self.written, self.meta.version.total);
            let body = self.receive(PacedBody::new(self.url, response.bytes_stream(), &fetcher.options), held).await;
            self.flush().await?;
            match body? {
                Body::Ended => return self.check_complete(),
                Body::Diverged => self.restart().await?,
            }
        }
    }

    /// Where the next request starts: after the bytes held, or an overlap
    /// before their end when no strong ETag will vouch for the answer.
    fn resume_at(&self) -> u64 {
        if self.meta.version.is_strong() { self.written } else { self.written - OVERLAP.min(self.written) }
    }

    async fn request(&self, client: &reqwest::Client) -> Result<reqwest::Response> {
        let mut request = client.get(self.url).headers(self.headers.clone());
        if self.written > 0 {
            request = request.header(header::RANGE, format!("bytes={}-", self.resume_at()));
            if let Some(validator) = self.meta.version.validator() {
                request = request.header(header::IF_RANGE, validator);
            }
        }
        request.send().await.map_err(|e| Error::transfer(self.url, e))
    }

    /// Judges an answer against the bytes held: a 200 continues them only
    /// if it is of the same version under a strong ETag (else they are
    /// dropped and its body taken whole); a 206 only if it is of the same
    /// version and starts where asked.
    async fn fit(&mut self, response: &reqwest::Response) -> Result<Fit> {
        let same = || Version::of(response) == self.meta.version;
        match (response.status(), self.written) {
            (StatusCode::OK, 0) => Ok(Fit::Continue(Held::default())),
            (StatusCode::OK, held) if self.meta.version.is_strong() && same() => {
                Ok(Fit::Continue(Held { trusted: held, check: Vec::new() }))
            }
            (StatusCode::OK, _) => {
                self.restart().await?;
                Ok(Fit::Continue(Held::default()))
            }
            (StatusCode::PARTIAL_CONTENT, held) if held > 0 => match same() {
                false => Ok(Fit::Changed),
                true => {
                    self.check_content_range(response.headers())?;
                    Ok(Fit::Continue(Held { trusted: 0, check: self.overlap().await? }))
                }
            },
            (StatusCode::RANGE_NOT_SATISFIABLE, held) if Some(held) == self.meta.version.total => Ok(Fit::Complete),
            _ => Err(status_error(self.url, response)),
        }
    }

    /// The bytes held between [`Transfer::resume_at`] and the end of the
    /// file, which a 206 repeats.
    async fn overlap(&self) -> Result<Vec<u8>> {
        let start = self.resume_at();
        let mut bytes = vec![0; (self.written - start) as usize];
        self.on_file("read", move |file| file.read_exact_at(&mut bytes, start).map(|()| bytes)).await
    }

    /// A 206 must start exactly where asked.
    fn check_content_range(&self, headers: &HeaderMap) -> Result<()> {
        let range = header_str(headers, header::CONTENT_RANGE).unwrap_or_default();
        match parse_content_range(range) {
            Some((start, _)) if start == self.resume_at() => Ok(()),
            _ => Err(Error::Transfer {
                url: self.url.to_owned(),
                message: format!("asked for bytes {}- but the server sent Content-Range {range:?}", self.resume_at()),
            }),
        }
    }

    /// A download from byte 0 records the version it gets in the sidecar
    /// (a resumed one has shown the same already).
    async fn remember(&mut self, response: &reqwest::Response) -> Result<()> {
        if self.written > 0 {
            return Ok(());
        }
        let version = Version::of(response);
        if version.total.is_some_and(|t| t > self.max_size) {
            return Err(Error::TooLarge { url: self.url.to_owned(), limit: self.max_size });
        }
        self.meta.version = version;
        let (sidecar, json) = (meta_path(self.path), serde_json::to_vec(&self.meta).expect("meta serializes"));
        blocking(self.path, move || std::fs::write(&sidecar, json).map_err(Error::io("write", &sidecar))).await
    }

    /// Streams the body into the hash and the file, after taking off the
    /// bytes `held` already.
    async fn receive<S, B>(&mut self, mut body: PacedBody<'_, S>, mut held: Held) -> Result<Body>
    where
        S: futures_util::Stream<Item = reqwest::Result<B>> + Unpin,
        B: AsRef<[u8]>,
    {
        while let Some(chunk) = body.next().await? {
            let Some(fresh) = held.strip(chunk.as_ref()) else {
                return Ok(Body::Diverged);
            };
            let total = self.written + (self.buffer.len() + fresh.len()) as u64;
            if total > self.max_size || self.meta.version.total.is_some_and(|t| total > t) {
                return Err(Error::TooLarge {
                    url: self.url.to_owned(),
                    limit: self.meta.version.total.unwrap_or(self.max_size),
                });
            }
            self.hasher.update(fresh);
            self.buffer.extend_from_slice(fresh);
            if self.buffer.len() >= WRITE_BLOCK {
                self.flush().await?;
            }
        }
        Ok(Body::Ended)
    }

    /// After the body ended: all of it is here, if its length was said.
    fn check_complete(&self) -> Result<()> {
        match self.meta.version.total {
            Some(total) if total != self.written => Err(Error::Transfer {
                url: self.url.to_owned(),
                message: format!("the body ended after {} of {total} bytes", self.written),
            }),
            _ => Ok(()),
        }
    }

    /// Writes the buffered block at the end of the bytes held.
    async fn flush(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let (block, at) = (std::mem::take(&mut self.buffer), self.written);
        let mut block = self.on_file("write", move |file| file.write_all_at(&block, at).map(|()| block)).await?;
        self.written += block.len() as u64;
        block.clear();
        self.buffer = block;
        self.progress.advanced(self.written);
        Ok(())
    }
}

/// What an earlier download of the same URL left in a partial file.
struct Resumed {
    meta: PartialMeta,
    /// The partial file's length: bytes held.
    written: u64,
    /// The hash of those bytes.
    hasher: Hasher,
}

/// Opens (creating) the partial file at `path` and, if an earlier download
/// of `url` left bytes there, hashes them again; else empties it.
///
/// The open file is locked (exclusively, waiting for it) until it is
/// closed, that is until the transfer and every write it had in flight
/// are done: a write of a transfer cancelled midway cannot land in the file
/// after a new transfer of the same partial has read or written it.
fn open_partial(path: &Path, url: &str, algorithm: Algorithm) -> Result<(File, Option<Resumed>)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(Error::io("create", path))?;
    file.lock().map_err(Error::io("lock", path))?;
    let meta = read_sidecar(path);
    let len = file.metadata().map_err(Error::io("stat", path))?.len();
    match meta {
        Some(meta) if meta.url == url && meta.version.total.is_none_or(|t| len <= t) && len > 0 => {
            let hasher = Hasher::new(algorithm).consume((&file).take(len)).map_err(Error::io("read", path))?;
            Ok((file, Some(Resumed { meta, written: len, hasher })))
        }
        _ => {
            file.set_len(0).map_err(Error::io("truncate", path))?;
            Ok((file, None))
        }
    }
}

/// The sidecar of the partial at `path`, if it reads as one (at most
/// [`MAX_SIDECAR`] bytes are read).
fn read_sidecar(path: &Path) -> Option<PartialMeta> {
    let mut bytes = Vec::new();
    File::open(meta_path(path)).ok()?.take(MAX_SIDECAR).read_to_end(&mut bytes).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A sidecar holds a URL and three validators: far less than this.
const MAX_SIDECAR: u64 = 1 << 20;

/// Runs `work` on one of tokio's blocking threads (file work must not hold
/// up the async thread that drives transfers); should it panic, the error
/// names `path`.
async fn blocking<T: Send + 'static>(path: &Path, work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let joined = tokio::task::spawn_blocking(work).await;
    joined.unwrap_or_else(|e| Err(Error::io("finish the work on", path)(std::io::Error::other(e.to_string()))))
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`) → (START, TOTAL).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = if total == "*" { None } else { Some(total.parse().ok()?) };
    Some((start.parse().ok()?, total))
}

#[cfg(test)]
mod tests {
    use super::{Held, open_partial};
    use crate::Algorithm;
    use std::time::Duration;

    #[test]
    fn a_partial_opens_once_the_last_handle_of_its_earlier_transfer_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.part");
        let (first, _) = open_partial(&path, "http://h/x", Algorithm::Sha256).unwrap();
        let (sender, opened) = std::sync::mpsc::channel();
        let second = std::thread::spawn(move || {
            let opened = open_partial(&path, "http://h/x", Algorithm::Sha256).map(drop);
            sender.send(opened).unwrap();
        });
        assert!(opened.recv_timeout(Duration::from_millis(300)).is_err(), "opened while the first was open");
        drop(first);
        opened.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
        second.join().unwrap();
    }

    #[test]
    fn held_bytes_come_off_the_front_across_chunks() {
        let mut held = Held { trusted: 3, check: b"abcd".to_vec() };
        assert_eq!(held.strip(b"xy"), Some(&b""[..]));
        assert_eq!(held.strip(b"zab"), Some(&b""[..]));
        assert_eq!(held.strip(b"cdNEW"), Some(&b"NEW"[..]));
        assert_eq!(held.strip(b"more"), Some(&b"more"[..]));
    }

    #[test]
    fn an_overlap_that_differs_is_refused_wherever_chunks_split() {
        let mut held = Held { trusted: 0, check: b"abcd".to_vec() };
        assert_eq!(held.strip(b"ab"), Some(&b""[..]));
        assert_eq!(held.strip(b"cX"), None);
        assert_eq!(Held { trusted: 1, check: b"ab".to_vec() }.strip(b"-aXnew"), None);
    }
}
