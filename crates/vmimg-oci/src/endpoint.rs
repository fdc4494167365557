//! One host of a registry as the client speaks to it: the [`Host`] a hosts
//! file (or vmimg's default) gives, and an HTTP client made for it: the CAs
//! it is trusted through besides the system's, its client certificate,
//! `skip_verify`, its connect timeout and extra headers.
//!
//! A mirror's requests carry containerd's `?ns=REGISTRY` (the registry the
//! request is for, which a pull-through cache serving several needs), and
//! its blob downloads (and the requests that authorize them) try twice
//! only: a mirror that stops answering is left for the next host after one
//! retry, not after the full budget the registry's own server gets.

use crate::hosts::Host;
use crate::reference::Reference;
use crate::registry::{Error, Result};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::path::Path;
use vmimg_fetch::{FetchOptions, Fetcher};

/// Attempts of a mirror's blob download before the next host is tried.
const MIRROR_ATTEMPTS: usize = 2;

/// A registry host and the client that speaks to it.
pub(crate) struct Endpoint {
    pub host: Host,
    /// The registry it serves requests of (`docker.io`, `127.0.0.1:5000`).
    registry: String,
    pub http: reqwest::Client,
    pub fetcher: Fetcher,
    /// How hard to try this host (a mirror: [`MIRROR_ATTEMPTS`]).
    pub fetch: FetchOptions,
}

impl Endpoint {
    /// `host` of `registry`; `shared` is the client for hosts that need no
    /// settings of their own.
    pub fn new(host: Host, registry: &str, fetch: &FetchOptions, shared: &reqwest::Client) -> Result<Endpoint> {
        let mut fetch = fetch.clone();
        if !host.is_server {
            fetch.attempts = fetch.attempts.min(MIRROR_ATTEMPTS);
        }
        let http = if needs_own_client(&host) { client(&host, &fetch)? } else { shared.clone() };
        let fetcher = Fetcher::with_client(http.clone(), fetch.clone());
        Ok(Endpoint { host, registry: registry.to_owned(), http, fetcher, fetch })
    }

    /// The URL of `path` in `reference`'s repository on this host.
    pub fn url(&self, reference: &Reference, path: &str) -> String {
        let url = format!("{}/{}/{path}", self.host.api, reference.repository());
        if self.host.is_server { url } else { format!("{url}?ns={}", self.registry) }
    }

    /// The API's base (`…/v2/`), where a client learns how to authorize.
    pub fn base(&self) -> String {
        format!("{}/", self.host.api)
    }

    /// The host as messages and reports name it: its URL without `/v2`.
    pub fn name(&self) -> &str {
        self.host.api.strip_suffix("/v2").unwrap_or(&self.host.api)
    }

    /// Whether `url` is on this host's origin (scheme, host and port), the
    /// only one its authorization is sent to.
    pub fn is_own(&self, url: &reqwest::Url) -> bool {
        reqwest::Url::parse(&self.host.api).is_ok_and(|api| api.origin() == url.origin())
    }

    /// Who cached authorizations and credentials are kept for: the
    /// registry for its server, the host's own address for a mirror.
    pub fn auth_name(&self) -> &str {
        if self.host.is_server { &self.registry } else { authority(&self.host.api) }
    }
}

/// `host:port` of an API root URL.
fn authority(api: &str) -> &str {
    let rest = api.split_once("://").map_or(api, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

fn needs_own_client(host: &Host) -> bool {
    !host.ca.is_empty()
        || !host.client.is_empty()
        || host.skip_verify
        || !host.headers.is_empty()
        || host.dial_timeout.is_some()
}

/// A client with `host`'s settings; a certificate that does not read is an
/// error naming its file.
fn client(host: &Host, fetch: &FetchOptions) -> Result<reqwest::Client> {
    let mut builder = vmimg_fetch::client_builder(fetch);
    let mut roots = Vec::new();
    for ca in &host.ca {
        let pem = read(ca)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad_pem(ca, "CA certificates", e))?;
        if certs.is_empty() {
            return Err(bad_pem(ca, "CA certificates", "no CERTIFICATE block"));
        }
        roots.extend(certs);
    }
    if !roots.is_empty() {
        builder = builder.tls_certs_merge(roots);
    }
    // One client certificate: a TLS client presents one (containerd's
    // list is tried in order; the first is the one used here).
    if let Some((cert, key)) = host.client.first() {
        let mut pem = read(cert)?;
        if let Some(key) = key {
            pem.push(b'\n');
            pem.extend(read(key)?);
        }
        let identity =
            reqwest::Identity::from_pem(&pem).map_err(|e| bad_pem(cert, "a client certificate and key", e))?;
        builder = builder.identity(identity);
    }
    if host.skip_verify {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    if let Some(timeout) = host.dial_timeout {
        builder = builder.connect_timeout(timeout);
    }
    builder = builder.default_headers(headers(host)?);
    Ok(vmimg_fetch::build_client(builder)?)
}

fn headers(host: &Host) -> Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, value) in &host.headers {
        let invalid = || Error::InvalidInput { what: "header", reason: format!("{name}: {value:?} for {}", host.api) };
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
        map.append(name, HeaderValue::from_str(value).map_err(|_| invalid())?);
    }
    Ok(map)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io { path: path.to_owned(), source })
}

fn bad_pem(path: &Path, what: &str, error: impl std::fmt::Display) -> Error {
    Error::InvalidInput {
        what: "certificate",
        reason: format!("{} does not hold {what} in PEM: {error}", path.display()),
    }
}
