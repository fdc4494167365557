//! Blob uploads in chunks that survive a cut (the OCI distribution spec's
//! chunked upload): `POST` opens a session, each `PATCH` sends up to
//! [`CHUNK`] bytes with `Content-Range: START-END`, streamed from the file
//! with positioned reads, and a `PUT ?digest=` closes it. Every answer's
//! `Location` is the session's next URL (registries keep the session's
//! state in it).
//!
//! After a failure worth another try, the session is asked how much it
//! holds (`GET` on its URL: `204` with `Range: 0-LAST`), and the upload
//! goes on from there, with the `Location` that answer gives. A session
//! that cannot say (its URL refused, the session unknown or expired), or
//! that says it holds less than it acknowledged, is abandoned (a `DELETE`,
//! whose failure does not matter) for a new one from the part's first
//! byte: bytes are never sent twice into one session, as Distribution 2.8
//! appends what a `PATCH` brings whatever its `Content-Range` says, and
//! answers every status request with `Range: 0-0` (it cannot resume).
//! Retries follow the registry's budget, told to the caller's progress;
//! bytes accepted since the last failure start the budget again.

use crate::endpoint::Endpoint;
use crate::reference::Reference;
use crate::registry::{Access, Error, Registry, Result};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};
use vmimg_fetch::{Digest, Progress, Retries};

/// Bytes sent in one `PATCH`.
pub const CHUNK: u64 = 32 << 20;

/// An upload session: its next URL, and how many bytes it holds.
struct Session {
    location: String,
    held: u64,
}

/// A range of a file to upload as a blob.
#[derive(Clone, Copy)]
pub(crate) struct Range<'a> {
    pub file: &'a std::fs::File,
    pub offset: u64,
    pub len: u64,
}

impl Registry {
    /// Uploads `range` as blob `digest` in chunks, resuming after a cut
    /// (see the module's doc).
    pub(crate) async fn upload_chunked(
        &self,
        reference: &Reference,
        digest: &Digest,
        range: Range<'_>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let endpoint = self.push_host(reference)?;
        let mut retries = Retries::new(&endpoint.fetch, progress);
        let mut session: Option<Session> = None;
        // The most any session of this part ever held: only going past it
        // is progress (a registry that cannot resume, behind a link that
        // cuts every connection at the same point, would otherwise be
        // retried for ever).
        let mut furthest = 0;
        loop {
            let error = match self.upload_attempt(&endpoint, reference, digest, range, &mut session).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => e,
                Err(e) => return Err(e),
            };
            if let Some(held) = session.as_ref().map(|s| s.held).filter(|&held| held > furthest) {
                furthest = held;
                retries.progressed();
            }
            if !retries.wait(&error).await {
                return Err(error);
            }
            session = match session.take() {
                Some(open) => self.resumable(&endpoint, reference, open).await,
                None => None,
            };
        }
    }

    /// One try: a session (the one given, else a new one) brought to the
    /// end of `range` and closed.
    async fn upload_attempt(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
        digest: &Digest,
        range: Range<'_>,
        session: &mut Option<Session>,
    ) -> Result<()> {
        if session.is_none() {
            *session = Some(self.open_session(endpoint, reference).await?);
        }
        let open = session.as_mut().expect("a session");
        while open.held < range.len {
            self.patch(endpoint, reference, open, range).await?;
        }
        let put = closing_url(&open.location, digest);
        let close = || endpoint.http.put(&put).header(header::CONTENT_LENGTH, 0);
        let response = self.send(endpoint, reference, Access::Push, close).await?;
        crate::registry::expect(response, &[StatusCode::CREATED], reference).map(drop)
    }

    /// A new session.
    async fn open_session(&self, endpoint: &Endpoint, reference: &Reference) -> Result<Session> {
        Ok(Session { location: self.start_upload(endpoint, reference).await?, held: 0 })
    }

    /// `POST`: opens an upload session in `reference`'s repository; returns
    /// its URL.
    pub(crate) async fn start_upload(&self, endpoint: &Endpoint, reference: &Reference) -> Result<String> {
        let start = endpoint.url(reference, "blobs/uploads/");
        let response = self.send(endpoint, reference, Access::Push, || endpoint.http.post(&start)).await?;
        let response = crate::registry::expect(response, &[StatusCode::ACCEPTED], reference)?;
        location(&start, response.headers())
    }

    /// One `PATCH` of the next chunk; the session then holds it.
    async fn patch(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
        open: &mut Session,
        range: Range<'_>,
    ) -> Result<()> {
        let len = CHUNK.min(range.len - open.held);
        let (first, last) = (open.held, open.held + len - 1);
        let url = open.location.clone();
        let send = || {
            endpoint
                .http
                .patch(&url)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(header::CONTENT_RANGE, format!("{first}-{last}"))
                .header(header::CONTENT_LENGTH, len)
                .body(crate::registry::file_range_body(range.file, range.offset + first, len))
        };
        let response = self.send(endpoint, reference, Access::Push, send).await?;
        let response = crate::registry::expect(response, &[StatusCode::ACCEPTED], reference)?;
        // `0-0` after the first byte alone is that byte.
        let reported = last_byte(response.headers()).unwrap_or(last);
        if reported != last {
            let message = format!("after bytes {first}-{last} the upload says it ends at byte {reported}");
            return Err(Error::Http { url, message });
        }
        open.location = location(&url, response.headers())?;
        open.held = last + 1;
        Ok(())
    }

    /// `open` if the registry says it holds at least what it acknowledged
    /// (then with the URL and count it gives now), else None, the session
    /// abandoned.
    async fn resumable(&self, endpoint: &Endpoint, reference: &Reference, open: Session) -> Option<Session> {
        let status = self.send(endpoint, reference, Access::Push, || endpoint.http.get(&open.location)).await;
        let resumed = match status {
            Ok(response) if response.status() == StatusCode::NO_CONTENT => {
                let held = held(response.headers()).unwrap_or(0);
                let location = location(&open.location, response.headers()).ok();
                location.filter(|_| held >= open.held && held > 0).map(|location| Session { location, held })
            }
            _ => None,
        };
        if resumed.is_none() {
            let abandoned = open.location.clone();
            let _ = self.send(endpoint, reference, Access::Push, || endpoint.http.delete(&abandoned)).await;
        }
        resumed
    }
}

/// The last byte a session's answer says it holds: LAST of `Range: 0-LAST`.
fn last_byte(headers: &HeaderMap) -> Option<u64> {
    let range = headers.get(header::RANGE)?.to_str().ok()?;
    let range = range.strip_prefix("bytes=").unwrap_or(range);
    let (first, last) = range.split_once('-')?;
    (first.trim() == "0").then_some(())?;
    last.trim().parse().ok()
}

/// How many bytes a session's status says it holds: LAST + 1 of `Range:
/// 0-LAST`, except `0-0`, which registries answer for an empty session
/// too, and counts as none (a session then starts over, never sending a
/// byte twice into one).
fn held(headers: &HeaderMap) -> Option<u64> {
    last_byte(headers).map(|last| if last == 0 { 0 } else { last.saturating_add(1) })
}

/// The `PUT` that closes the upload session at `location` as blob `digest`.
pub(crate) fn closing_url(location: &str, digest: &Digest) -> String {
    let separator = if location.contains('?') { '&' } else { '?' };
    format!("{location}{separator}digest={digest}")
}

/// The session's next URL, from an answer's `Location` (relative to `base`).
fn location(base: &str, headers: &HeaderMap) -> Result<String> {
    let location = headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Error::Http { url: base.to_owned(), message: "no Location for the upload".into() })?;
    crate::registry::resolve(base, location)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_count_the_bytes_held() {
        let with = |range: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::RANGE, range.parse().unwrap());
            held(&headers)
        };
        assert_eq!(with("0-1048575"), Some(1 << 20));
        assert_eq!(with("bytes=0-99"), Some(100));
        assert_eq!(with("0-0"), Some(0), "an empty session, as registries say it");
        assert_eq!(with("nonsense"), None);
        assert_eq!(with("5-9"), None, "a range that does not start at 0 says nothing held");
        assert_eq!(with("0-18446744073709551615"), Some(u64::MAX));
        assert_eq!(held(&HeaderMap::new()), None);
    }
}
