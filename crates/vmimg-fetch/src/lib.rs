//! vmimg's transport: getting bytes onto the host, verified.
//!
//! - [`Digest`] and [`Hasher`]: `sha256:`/`sha512:` digests, parsed strictly
//!   and computed while bytes stream;
//! - [`Fetcher`]: HTTP(S) downloads into a partial file with the digest
//!   computed on the way, resumed with `Range`/`If-Range` after a cut,
//!   retried with backoff, cut when slower than a floor, reported through
//!   [`Progress`];
//! - [`Fetcher::changed`]: whether a file downloaded before is still the
//!   version the server serves (a conditional request on its [`Validators`]);
//! - [`Retries`]: the retry budget every transport's loop spends, which
//!   tells each retry to a [`Progress`] and gives a host name that does not
//!   resolve one retry only;
//! - [`http_client`]: an HTTP client as the transports use one, whose
//!   failures to resolve a name are found by [`unresolved`].
//!
//! This crate knows nothing of images or of the store: it moves bytes and
//! says what their digest was.

mod digest;
mod dns;
mod download;
mod error;
mod fresh;
mod retry;
mod speed;

pub use digest::{Algorithm, Digest, DigestParseError, Hasher, digest_reader};
pub use dns::{ResolveFailed, SystemResolver, build_client, client_builder, http_client, tls_refused, unresolved};
pub use download::{
    FetchOptions, Fetched, Fetcher, NoProgress, Progress, Request, Validators, meta_path, remove_partial,
};
pub use error::{Error, Result, error_chain};
pub use fresh::Freshness;
pub use reqwest::header::{HeaderMap, HeaderValue};
pub use retry::{Retries, Retryable};
