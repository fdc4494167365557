//! vmimg's transport: getting bytes onto the host, verified.
//!
//! - [`Digest`] and [`Hasher`]: `sha256:`/`sha512:` digests, parsed strictly
//!   and computed while bytes stream;
//! - [`Fetcher`]: HTTP(S) downloads into a partial file with the digest
//!   computed on the way, resumed with `Range`/`If-Range` after a cut,
//!   retried with backoff, cut when slower than a floor, reported through
//!   [`Progress`].
//!
//! This crate knows nothing of images or of the store: it moves bytes and
//! says what their digest was.

mod digest;
mod download;
mod error;
mod speed;

pub use digest::{Algorithm, Digest, DigestParseError, Hasher, digest_reader};
pub use download::{FetchOptions, Fetched, Fetcher, NoProgress, Progress, Request, meta_path, remove_partial};
pub use error::{Error, Result};
pub use reqwest::header::{HeaderMap, HeaderValue};
