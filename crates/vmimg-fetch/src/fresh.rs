//! Whether a file a server gave before is still the file it serves: the
//! conditional request behind `pull --refresh`.
//!
//! The request is a `GET` with `If-None-Match` (the ETag held) and
//! `If-Modified-Since` (the Last-Modified held), as a cache revalidates:
//! `304 Not Modified` means unchanged. A `200` (a server that ignores
//! conditions, or a new file) is judged by its own validators, and its body
//! is never read. Without validators held there is nothing to ask: the
//! file counts as changed, and the caller downloads it again.

use crate::download::{Fetcher, Progress, Validators, check_url, status_error};
use crate::error::{Error, Result};
use reqwest::StatusCode;
use reqwest::header;

/// What a conditional request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// The server still serves the version held.
    Unchanged,
    /// It serves another version (or cannot tell): these are its validators.
    Changed(Validators),
}

impl Fetcher {
    /// Asks the server whether `url` is still the version `held` names,
    /// with the download's retries, told to `progress`.
    pub async fn changed(&self, url: &str, held: &Validators, progress: &dyn Progress) -> Result<Freshness> {
        check_url(url)?;
        self.retried(progress, || self.changed_once(url, held)).await
    }

    async fn changed_once(&self, url: &str, held: &Validators) -> Result<Freshness> {
        let mut request = self.client.get(url);
        if let Some(etag) = &held.etag {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        if let Some(modified) = &held.last_modified {
            request = request.header(header::IF_MODIFIED_SINCE, modified);
        }
        // The body is dropped unread: only the answer's head matters.
        let response = request.send().await.map_err(|e| Error::transfer(url, e))?;
        match response.status() {
            StatusCode::NOT_MODIFIED if !held.is_empty() => Ok(Freshness::Unchanged),
            StatusCode::OK => Ok(judge(held, Validators::of(response.headers()))),
            _ => Err(status_error(url, &response)),
        }
    }
}

/// A `200`'s verdict: unchanged only when it names the version held by a
/// strong ETag, or (without ETags) by the same Last-Modified.
fn judge(held: &Validators, served: Validators) -> Freshness {
    let strong = |etag: &Option<String>| etag.clone().filter(|e| !e.starts_with("W/"));
    let same = match (strong(&held.etag), strong(&served.etag)) {
        (Some(a), Some(b)) => a == b,
        (None, None) => {
            held.etag.is_none() && held.last_modified.is_some() && held.last_modified == served.last_modified
        }
        _ => false,
    };
    if same { Freshness::Unchanged } else { Freshness::Changed(served) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(etag: Option<&str>, modified: Option<&str>) -> Validators {
        Validators { etag: etag.map(Into::into), last_modified: modified.map(Into::into) }
    }

    #[test]
    fn a_200_is_judged_by_its_validators() {
        let date = Some("Tue, 01 Dec 2026 10:00:00 GMT");
        assert_eq!(judge(&v(Some("\"a\""), None), v(Some("\"a\""), None)), Freshness::Unchanged);
        assert!(matches!(judge(&v(Some("\"a\""), None), v(Some("\"b\""), None)), Freshness::Changed(_)));
        assert!(matches!(judge(&v(Some("W/\"a\""), None), v(Some("W/\"a\""), None)), Freshness::Changed(_)));
        assert_eq!(judge(&v(None, date), v(None, date)), Freshness::Unchanged);
        assert!(matches!(judge(&v(None, date), v(None, Some("Wed, 02 Dec 2026 10:00:00 GMT"))), Freshness::Changed(_)));
        assert!(matches!(judge(&v(None, None), v(None, None)), Freshness::Changed(_)));
    }
}
