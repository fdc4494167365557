//! Byte ranges (RFC 9110 §14): one `Range: bytes=…` asked of a resource
//! of known length, and the head of the answer that serves it.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use std::ops::Range;

/// The answer to `method` with `headers` for an octet stream of `len` bytes
/// whose strong ETag is `etag`, with an empty body, and the bytes its body
/// must carry: None for a HEAD, a 304 (`If-None-Match` names the ETag) or
/// a 416.
pub fn answer(method: &Method, headers: &HeaderMap, len: u64, etag: &str) -> (Response, Option<Range<u64>>) {
    let mut response = Response::new(Body::empty());
    let head = response.headers_mut();
    head.insert(header::ETAG, HeaderValue::from_str(etag).expect("an ETag is ASCII"));
    head.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return (response, None);
    }
    let part = asked(headers, len, Some(etag));
    let (status, range) = self::head(&part, len, response.headers_mut());
    *response.status_mut() = status;
    (response, range.filter(|_| method != Method::HEAD))
}

/// What to send of a resource of `len` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// All of it (no Range, a Range that does not apply, or several ranges).
    Whole,
    /// One range: 206.
    Bytes(Range<u64>),
    /// A range that does not overlap the resource: 416.
    Unsatisfiable,
}

/// The part `headers` ask of a resource of `len` bytes whose strong ETag is
/// `etag`: a `Range` is honoured only when an `If-Range` (if any) names
/// that ETag; several ranges are answered whole, as RFC 9110 allows.
fn asked(headers: &HeaderMap, len: u64, etag: Option<&str>) -> Part {
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else { return Part::Whole };
    if let Some(if_range) = headers.get(header::IF_RANGE)
        && etag.is_none_or(|etag| if_range.as_bytes() != etag.as_bytes())
    {
        return Part::Whole;
    }
    let Some(spec) = range.trim().strip_prefix("bytes=") else { return Part::Whole };
    if spec.contains(',') {
        return Part::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return Part::Whole };
    let number = |s: &str| if s.bytes().all(|b| b.is_ascii_digit()) { s.parse::<u64>().ok() } else { None };
    let range = match (first, last) {
        ("", suffix) => match number(suffix) {
            Some(0) => return Part::Unsatisfiable,
            Some(n) => len.saturating_sub(n)..len,
            None => return Part::Whole,
        },
        (start, "") => match number(start) {
            Some(start) => start..len,
            None => return Part::Whole,
        },
        (start, end) => match (number(start), number(end)) {
            (Some(start), Some(end)) if start <= end => start..end.saturating_add(1).min(len),
            _ => return Part::Whole,
        },
    };
    if range.start >= len { Part::Unsatisfiable } else { Part::Bytes(range) }
}

/// The status, length and headers of the answer serving `part` of `len`
/// bytes; the body's range (None for a 416, which has no body).
fn head(part: &Part, len: u64, headers: &mut HeaderMap) -> (StatusCode, Option<Range<u64>>) {
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let (status, range) = match part {
        Part::Whole => (StatusCode::OK, 0..len),
        Part::Bytes(range) => {
            let value = format!("bytes {}-{}/{len}", range.start, range.end - 1);
            headers.insert(header::CONTENT_RANGE, HeaderValue::from_str(&value).expect("ASCII"));
            (StatusCode::PARTIAL_CONTENT, range.clone())
        }
        Part::Unsatisfiable => {
            let value = format!("bytes */{len}");
            headers.insert(header::CONTENT_RANGE, HeaderValue::from_str(&value).expect("ASCII"));
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            return (StatusCode::RANGE_NOT_SATISFIABLE, None);
        }
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(range.end - range.start));
    (status, Some(range))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(range: &str, if_range: Option<&str>) -> Part {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_str(range).unwrap());
        if let Some(value) = if_range {
            headers.insert(header::IF_RANGE, HeaderValue::from_str(value).unwrap());
        }
        asked(&headers, 1000, Some("\"e\""))
    }

    #[test]
    fn single_ranges_are_read_as_rfc_9110_says() {
        assert_eq!(ask("bytes=0-99", None), Part::Bytes(0..100));
        assert_eq!(ask("bytes=900-", None), Part::Bytes(900..1000));
        assert_eq!(ask("bytes=-10", None), Part::Bytes(990..1000));
        assert_eq!(ask("bytes=-5000", None), Part::Bytes(0..1000));
        assert_eq!(ask("bytes=990-5000", None), Part::Bytes(990..1000));
        assert_eq!(ask("bytes=1000-", None), Part::Unsatisfiable);
        assert_eq!(ask("bytes=-0", None), Part::Unsatisfiable);
    }

    #[test]
    fn what_does_not_apply_is_answered_whole() {
        for range in ["bytes=5-1", "bytes=a-b", "items=0-1", "bytes=0-1,5-6", "bytes=+1-2", "bytes=1"] {
            assert_eq!(ask(range, None), Part::Whole, "{range}");
        }
        assert_eq!(ask("bytes=0-1", Some("\"other\"")), Part::Whole);
        assert_eq!(ask("bytes=0-1", Some("\"e\"")), Part::Bytes(0..2));
    }
}
