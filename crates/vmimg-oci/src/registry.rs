//! A client for the OCI distribution API, small and strict.
//!
//! Why our own rather than `oci-client`: that crate reads every manifest
//! whole with no size limit (a hostile registry could send gigabytes), cannot
//! resume an interrupted transfer, and asks a mount's token for the target
//! repository only (DESIGN.md). Blob downloads here go through
//! `vmimg_fetch::Fetcher`, which already resumes with `Range`, retries with
//! backoff and hashes while bytes stream; what is left is a few requests.
//!
//! - Hosts: a registry's own server is `https://HOST/v2/…`, plain HTTP for
//!   loopback hosts (`localhost`, `127.0.0.0/8`, `[::1]`) and the hosts the
//!   caller marks insecure; Docker Hub is `registry-1.docker.io`. A hosts
//!   directory (containerd's `hosts.toml` layout, see `hosts`) may put
//!   mirrors before it and give any host its certificates. Manifests by
//!   tag go to the hosts that may `resolve`, by digest and blobs to those
//!   that may `pull`, pushes to those that may `push`, each in order: a
//!   host that fails (refused, timed out, an error status, a missing
//!   manifest or blob, bytes of the wrong digest) is left for the next,
//!   told to the caller's `Progress` as a retry, and what served is told as
//!   `served_by`. Only the last host's failure is the caller's.
//! - Auth: every request carries the authorization cached for its host,
//!   repository and access; a `401` is answered once (token from the
//!   challenge's realm, or Basic credentials), then the request is sent
//!   again (see `auth`). The caller's credentials go to the registry's own
//!   server only; a mirror gets what Docker's config holds for it. A
//!   credential helper's answer is kept per host, so it runs once however
//!   many requests ask.
//! - Manifests are read with a 4 MiB limit and hashed: a manifest asked for
//!   by digest must have that digest.
//! - Uploads are monolithic (`POST` then `PUT ?digest=` with the body
//!   streamed from a file range), after a `HEAD` shows the registry lacks
//!   the blob; transient failures retry the whole blob.
//! - Retries: the calls that retry (everything but the single requests
//!   below, which their callers retry) take a `Progress` that hears every
//!   retry before its wait, with the error that caused it; backoff and
//!   budget are `vmimg_fetch::Retries`'s, so a host name that does not
//!   resolve ([`Error::Unresolved`]) is tried once more only.

use crate::auth::{Challenge, CredentialSource, Credentials, DockerConfig, Login};
use crate::endpoint::Endpoint;
use crate::helper::HelperError;
use crate::hosts::{Capabilities, Host, Hosts, HostsDir};
use crate::reference::Reference;
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderValue};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmimg_fetch::{Algorithm, Digest, FetchOptions, Fetched, Hasher, Progress, Request, Retries};

/// A manifest larger than this is refused.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// The manifest media types vmimg asks for.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    /// The registry's host name (or its token realm's) did not resolve: no
    /// network, no DNS, or no such host. Tried once more only.
    #[error(
        "{url}: cannot resolve {host}: {reason} (no network, no DNS, or no such host); use a registry you can \
         reach, or a local copy of the image (an OCI layout or archive)"
    )]
    Unresolved { url: String, host: String, reason: String },
    /// TLS refused the connection (see [`vmimg_fetch::Error::Tls`]).
    #[error(
        "{url}: TLS refused the connection: {reason}; give the registry's CA (`ca` in its hosts.toml) or the \
         client certificate it asks for (`client`)"
    )]
    Tls { url: String, reason: String },
    #[error("{url}: the registry answered {status}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Status { url: String, status: u16, detail: Option<String> },
    #[error(
        "{registry}: access denied to {repository}: give credentials (a user name and password, or token) \
         or log in with `docker login {registry}` (it writes ~/.docker/config.json)"
    )]
    Unauthorized { registry: String, repository: String },
    #[error("{reference} not found in the registry (no such repository, tag or digest)")]
    NotFound { reference: String },
    #[error("{what} from {url} is larger than {limit} bytes")]
    TooLarge { what: &'static str, url: String, limit: usize },
    #[error("the manifest of {reference} has digest {actual}, not {expected}")]
    ManifestDigest { reference: String, expected: Digest, actual: Digest },
    #[error("docker config: {0}")]
    Config(String),
    #[error(transparent)]
    Helper(#[from] HelperError),
    #[error(
        "{registry} asks for Basic auth, which takes a password, and Docker's credential helper holds an identity \
         token for it: give a user name and password, or log in with one (`docker login {registry}`)"
    )]
    IdentityTokenForBasic { registry: String },
    #[error(transparent)]
    Artifact(#[from] crate::artifact::ArtifactError),
    #[error("blob {digest}: {actual} bytes where its descriptor says {expected}; nothing from it is to be trusted")]
    BlobSize { digest: Digest, expected: u64, actual: u64 },
    #[error("blob digest mismatch: expected {expected}, got {actual}; nothing from it is to be trusted")]
    BlobDigest { expected: Digest, actual: Digest },
    #[error("cannot write the output: {0}")]
    Output(String),
    #[error(transparent)]
    Fetch(#[from] vmimg_fetch::Error),
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Layout(#[from] crate::layout::LayoutError),
    /// A caller's argument that cannot work (a part size of 0, say).
    #[error("invalid {what}: {reason}")]
    InvalidInput { what: &'static str, reason: String },
    #[error(transparent)]
    Hosts(#[from] crate::hosts::HostsError),
    #[error("{registry}: no host may {need} ({file} lists none with that capability)")]
    NoHost { registry: String, need: &'static str, file: String },
    #[error(transparent)]
    Sign(#[from] crate::sign::SignError),
    /// The policy asks for a signature the image lacks.
    #[error("{reference} is refused: the policy asks for a signature by the given key, and {reason}")]
    Unsigned { reference: String, reason: String },
    /// A mirror failed; the next host is tried (told as a retry).
    #[error("{host} failed, trying {next}: {source}")]
    HostFailed { host: String, next: String, source: Box<Error> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A request to `url` that failed: [`Error::Unresolved`] when its host
    /// name did not resolve, else [`Error::Http`] with every cause.
    pub(crate) fn http(url: &str, error: reqwest::Error) -> Error {
        if let Some(reason) = vmimg_fetch::tls_refused(&error) {
            return Error::Tls { url: url.to_owned(), reason };
        }
        match vmimg_fetch::unresolved(&error) {
            Some(failed) => {
                Error::Unresolved { url: url.to_owned(), host: failed.host.clone(), reason: failed.reason.clone() }
            }
            // The message names the URL already.
            None => Error::Http { url: url.to_owned(), message: vmimg_fetch::error_chain(&error.without_url()) },
        }
    }

    /// Whether the host that answered is to blame, so that another host may
    /// do better: anything but this machine's own trouble (a file that
    /// does not read, an output that does not take the bytes) or a
    /// caller's mistake.
    fn is_host_failure(&self) -> bool {
        match self {
            Error::Io { .. } | Error::Output(_) | Error::InvalidInput { .. } | Error::Config(_) | Error::Hosts(_) => {
                false
            }
            Error::Fetch(e) => !matches!(e, vmimg_fetch::Error::Io { .. }),
            _ => true,
        }
    }

    /// Worth another try: the network failed (a name that did not resolve
    /// too, once), or the registry said so (408, 429, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Http { .. } | Error::Unresolved { .. } => true,
            Error::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            Error::Fetch(e) => e.is_transient(),
            // A mirror that served other bytes: the next host may not.
            Error::HostFailed { .. } => true,
            _ => false,
        }
    }

    /// The host whose name did not resolve, if that is why this failed (a
    /// blob's download included).
    pub fn unresolved_host(&self) -> Option<&str> {
        match self {
            Error::Unresolved { host, .. } => Some(host),
            Error::Fetch(e) => e.unresolved_host(),
            _ => None,
        }
    }
}

impl vmimg_fetch::Retryable for Error {
    fn unresolved_host(&self) -> Option<&str> {
        Error::unresolved_host(self)
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Fetch(e) => vmimg_fetch::Retryable::retry_after(e),
            _ => None,
        }
    }
}

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Hosts (`host` or `host:port`) spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Credentials for every registry, before Docker's config.
    pub credentials: Option<Credentials>,
    /// Docker's config.json; [`DockerConfig::default_path`] when None.
    pub docker_config: Option<PathBuf>,
    /// Where `hosts.toml` files are read from (containerd's layout); none:
    /// every registry is its own server alone.
    pub hosts_dir: Option<PathBuf>,
    /// The signatures images must carry to be used.
    pub policy: crate::sign::Policy,
    pub fetch: FetchOptions,
}

/// Read or write access to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Pull,
    Push,
}

/// What a request's authorization must cover: `access` to a repository,
/// and for a cross-repository mount, pull access to the repository the
/// blob is mounted from (a token for the target alone makes the registry
/// refuse the mount).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope<'a> {
    pub repository: &'a str,
    pub access: Access,
    pub mount_from: Option<&'a str>,
}

impl<'a> Scope<'a> {
    fn of(reference: &'a Reference, access: Access) -> Scope<'a> {
        Scope { repository: reference.repository(), access, mount_from: None }
    }

    /// The token scopes to ask for (Distribution's `repository:NAME:ACTIONS`).
    fn strings(&self) -> Vec<String> {
        let actions = match self.access {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        };
        let mut scopes = vec![format!("repository:{}:{actions}", self.repository)];
        scopes.extend(self.mount_from.map(|from| format!("repository:{from}:pull")));
        scopes
    }
}

/// What a request asks of a host (its `capabilities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Resolve,
    Pull,
    Push,
}

impl Need {
    fn allowed(self, capabilities: &Capabilities) -> bool {
        match self {
            Need::Resolve => capabilities.resolve,
            Need::Pull => capabilities.pull,
            Need::Push => capabilities.push,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Need::Resolve => "resolve",
            Need::Pull => "pull",
            Need::Push => "push",
        }
    }

    /// What reading `reference`'s manifest needs: a tag is resolved, a
    /// digest pulled.
    fn manifest(reference: &Reference) -> Need {
        if reference.digest().is_some() { Need::Pull } else { Need::Resolve }
    }
}

/// A manifest as the registry sent it.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    /// The SHA-256 of `bytes`.
    pub digest: Digest,
}

/// A client for any number of registries.
pub struct Registry {
    /// The client of hosts without settings of their own.
    http: reqwest::Client,
    options: RegistryOptions,
    docker: DockerConfig,
    /// Each registry's hosts, in the order to try them, read once.
    endpoints: Mutex<HashMap<String, Arc<[Arc<Endpoint>]>>>,
    /// Mirrors (by API root) that served a blob (by digest) with other
    /// bytes: not asked for it again by this client.
    distrusted: Mutex<std::collections::HashSet<(String, Digest)>>,
    /// Hosts (by API root) whose `/v2/` asked for no authorization: blob
    /// downloads from them are not preceded by that question again.
    open: Mutex<std::collections::HashSet<String>>,
    /// Authorization by (host, repository, access).
    auth: Mutex<HashMap<(String, String, Access), HeaderValue>>,
    /// What credential helpers answered, by host (held while one runs).
    helped: tokio::sync::Mutex<HashMap<String, Option<Login>>>,
}

impl Registry {
    pub fn new(options: RegistryOptions) -> Result<Registry> {
        let docker = match options.docker_config.clone().or_else(DockerConfig::default_path) {
            Some(path) => DockerConfig::load(&path).map_err(Error::Config)?,
            None => DockerConfig::default(),
        };
        let http = vmimg_fetch::http_client(&options.fetch)?;
        Ok(Registry {
            http,
            options,
            docker,
            endpoints: Mutex::default(),
            distrusted: Mutex::default(),
            open: Mutex::default(),
            auth: Mutex::default(),
            helped: Default::default(),
        })
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    /// The registry's own server when no hosts file says otherwise:
    /// `https://HOST` (`http://` for loopback and insecure hosts).
    pub fn default_server(&self, reference: &Reference) -> String {
        let plain = reference.is_loopback() || self.options.insecure.iter().any(|h| h == reference.registry());
        format!("{}://{}", if plain { "http" } else { "https" }, reference.api_host())
    }

    /// The hosts of `reference`'s registry, in the order to try them (read
    /// from the hosts directory on first use).
    pub fn hosts(&self, reference: &Reference) -> Result<Vec<Host>> {
        Ok(self.endpoints(reference)?.iter().map(|e| e.host.clone()).collect())
    }

    fn endpoints(&self, reference: &Reference) -> Result<Arc<[Arc<Endpoint>]>> {
        let registry = reference.registry();
        if let Some(found) = self.endpoints.lock().expect("endpoints").get(registry) {
            return Ok(found.clone());
        }
        let server = self.default_server(reference);
        let hosts = match &self.options.hosts_dir {
            Some(dir) => HostsDir(dir.clone()).hosts(registry, &server)?,
            None => Hosts::server_only(&server)?,
        };
        let made = hosts
            .hosts
            .into_iter()
            .map(|host| Endpoint::new(host, registry, &self.options.fetch, &self.http).map(Arc::new))
            .collect::<Result<Arc<[_]>>>()?;
        let mut endpoints = self.endpoints.lock().expect("endpoints");
        Ok(endpoints.entry(registry.to_owned()).or_insert(made).clone())
    }

    /// The hosts of `reference`'s registry that may `need`, in order.
    fn able(&self, reference: &Reference, need: Need) -> Result<Vec<Arc<Endpoint>>> {
        let all = self.endpoints(reference)?;
        let able: Vec<_> = all.iter().filter(|e| need.allowed(&e.host.capabilities)).cloned().collect();
        if able.is_empty() {
            let file = match &self.options.hosts_dir {
                Some(dir) => dir.join(reference.registry()).join("hosts.toml").display().to_string(),
                None => "no hosts file".into(),
            };
            return Err(Error::NoHost { registry: reference.registry().to_owned(), need: need.name(), file });
        }
        Ok(able)
    }

    /// The hosts that may pull blob `digest`: those able to pull, less the
    /// mirrors that served it with other bytes.
    fn able_for_blob(&self, reference: &Reference, digest: &Digest) -> Result<Vec<Arc<Endpoint>>> {
        let distrusted = self.distrusted.lock().expect("distrusted hosts");
        let mut able = self.able(reference, Need::Pull)?;
        able.retain(|e| e.host.is_server || !distrusted.contains(&(e.host.api.clone(), digest.clone())));
        Ok(able)
    }

    /// Blob `digest` came from `url` with other bytes: if `url` is on one of
    /// the registry's mirrors, it is not asked for that blob again (the
    /// registry's own server always is). Returns the mirror's name.
    pub(crate) fn distrust(&self, reference: &Reference, url: &reqwest::Url, digest: &Digest) -> Option<String> {
        let hosts = self.able(reference, Need::Pull).ok()?;
        let mirror = hosts.iter().find(|e| !e.host.is_server && e.is_own(url))?;
        self.distrusted.lock().expect("distrusted hosts").insert((mirror.host.api.clone(), digest.clone()));
        Some(mirror.name().to_owned())
    }

    /// The error to give when blob `digest`, streamed from `url`, was
    /// `wrong`: from a mirror (now distrusted for it), its failure, worth
    /// another try on the next host; from the registry's server, `wrong`.
    pub(crate) fn passed_over(
        &self,
        reference: &Reference,
        url: &reqwest::Url,
        digest: &Digest,
        wrong: Error,
    ) -> Error {
        let Some(host) = self.distrust(reference, url, digest) else { return wrong };
        let next =
            self.able_for_blob(reference, digest).ok().and_then(|able| able.first().map(|e| e.name().to_owned()));
        let next = next.unwrap_or_else(|| reference.registry().to_owned());
        Error::HostFailed { host, next, source: Box::new(wrong) }
    }

    /// Runs `op` on each host that may `need` in turn until one succeeds,
    /// telling `progress` which served; a host's failure passes to the next
    /// (told to `progress` as a retry at once), the last host's is returned.
    async fn on_hosts<T, F, Fut>(&self, reference: &Reference, need: Need, progress: &dyn Progress, op: F) -> Result<T>
    where
        F: Fn(Arc<Endpoint>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.on_each(self.able(reference, need)?, progress, op).await
    }

    /// [`Registry::on_hosts`] over `hosts`.
    async fn on_each<T, F, Fut>(&self, hosts: Vec<Arc<Endpoint>>, progress: &dyn Progress, op: F) -> Result<T>
    where
        F: Fn(Arc<Endpoint>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        for pair in hosts.windows(2) {
            let (endpoint, next) = (&pair[0], &pair[1]);
            match op(endpoint.clone()).await {
                Ok(value) => {
                    progress.served_by(endpoint.name());
                    return Ok(value);
                }
                Err(e) if e.is_host_failure() => {
                    tracing::info!(host = endpoint.name(), next = next.name(), error = %e, "a registry host failed");
                    let (host, next) = (endpoint.name().to_owned(), next.name().to_owned());
                    progress.retrying(&Error::HostFailed { host, next, source: Box::new(e) }, Duration::ZERO);
                }
                Err(e) => return Err(e),
            }
        }
        let last = hosts.last().expect("at least one host is able");
        let value = op(last.clone()).await?;
        progress.served_by(last.name());
        Ok(value)
    }

    /// The manifest `reference` names (its digest, else its tag), from the
    /// first host that has it.
    pub async fn manifest(&self, reference: &Reference, progress: &dyn Progress) -> Result<Manifest> {
        self.on_hosts(reference, Need::manifest(reference), progress, |e| self.manifest_at(e, reference)).await
    }

    /// The manifest `reference` names, as the host pushes go to has it.
    pub(crate) async fn manifest_for_push(&self, reference: &Reference) -> Result<Manifest> {
        self.manifest_at(self.push_host(reference)?, reference).await
    }

    async fn manifest_at(&self, endpoint: Arc<Endpoint>, reference: &Reference) -> Result<Manifest> {
        let url = endpoint.url(reference, &format!("manifests/{}", reference.manifest_reference()));
        let accept = MANIFEST_TYPES.join(", ");
        let response = self
            .send(&endpoint, reference, Access::Pull, || endpoint.http.get(&url).header(header::ACCEPT, &accept))
            .await?;
        let response = expect(response, &[StatusCode::OK], reference)?;
        let media_type = header_str(response.headers(), header::CONTENT_TYPE).unwrap_or_default().to_owned();
        let bytes = read_bounded(response, &url, MAX_MANIFEST_BYTES, "manifest").await?;
        let digest = sha256(&bytes);
        if let Some(expected) = reference.digest()
            && *expected != digest
        {
            return Err(Error::ManifestDigest {
                reference: reference.to_string(),
                expected: expected.clone(),
                actual: digest,
            });
        }
        Ok(Manifest { bytes, media_type, digest })
    }

    /// Downloads blob `digest` of `size` bytes into `partial` (resuming
    /// what is there for the same host), hashing it on the way. A mirror's
    /// blob is checked here (size and digest; a wrong one is dropped and
    /// the next host asked); the last host's is the caller's to check.
    /// `progress` hears the bytes, every retry and the host that served.
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        partial: &std::path::Path,
        progress: &dyn Progress,
    ) -> Result<Fetched> {
        let hosts = self.able_for_blob(reference, digest)?;
        let last = hosts.last().map(|e| e.host.api.clone());
        let last = last.as_deref();
        self.on_each(hosts, progress, |endpoint| async move {
            let url = endpoint.url(reference, &format!("blobs/{digest}"));
            let mut headers = HeaderMap::new();
            let authorize = || self.authorization(&endpoint, reference, Access::Pull);
            if let Some(auth) = retry_with(&endpoint.fetch, progress, authorize).await? {
                headers.insert(header::AUTHORIZATION, auth);
            }
            let request = Request { url: &url, headers, size: Some(size) };
            let fetched = endpoint.fetcher.fetch_with(&request, digest.algorithm(), partial, progress).await?;
            if last != Some(endpoint.host.api.as_str()) {
                let wrong = if fetched.size != size {
                    Some(Error::BlobSize { digest: digest.clone(), expected: size, actual: fetched.size })
                } else if fetched.digest != *digest {
                    Some(Error::BlobDigest { expected: digest.clone(), actual: fetched.digest.clone() })
                } else {
                    None
                };
                if let Some(wrong) = wrong {
                    vmimg_fetch::remove_partial(partial)
                        .map_err(|source| Error::Io { path: partial.to_owned(), source })?;
                    let from = reqwest::Url::parse(&url).map_err(|e| Error::Http { url, message: e.to_string() })?;
                    self.distrust(reference, &from, digest);
                    return Err(wrong);
                }
            }
            Ok(fetched)
        })
        .await
    }

    /// A blob's body from byte `offset`, for streaming, from the first host
    /// that has it.
    pub async fn blob_from(
        &self,
        reference: &Reference,
        digest: &Digest,
        offset: u64,
        progress: &dyn Progress,
    ) -> Result<reqwest::Response> {
        self.on_each(self.able_for_blob(reference, digest)?, progress, |endpoint| async move {
            let url = endpoint.url(reference, &format!("blobs/{digest}"));
            let response = self
                .send(&endpoint, reference, Access::Pull, || {
                    let request = endpoint.http.get(&url);
                    if offset > 0 { request.header(header::RANGE, format!("bytes={offset}-")) } else { request }
                })
                .await?;
            let wanted = if offset > 0 { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
            let response = expect(response, &[wanted], reference)?;
            let start = header_str(response.headers(), header::CONTENT_RANGE)
                .and_then(|range| range.strip_prefix("bytes "))
                .and_then(|range| range.split('-').next())
                .and_then(|start| start.parse::<u64>().ok());
            if offset > 0 && start != Some(offset) {
                let message = format!("asked for bytes from {offset}, the answer's Content-Range says {start:?}");
                return Err(Error::Http { url: response.url().to_string(), message });
            }
            Ok(response)
        })
        .await
    }

    /// A small blob (a config), whole in memory: its size must be `size`,
    /// at most `limit`, and its digest `digest`.
    pub async fn small_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        limit: u64,
        progress: &dyn Progress,
    ) -> Result<Vec<u8>> {
        if size > limit {
            let url = format!("{reference}@{digest}");
            return Err(Error::TooLarge { what: "config blob", url, limit: limit as usize });
        }
        self.on_hosts(reference, Need::Pull, progress, |endpoint| self.small_blob_at(endpoint, reference, digest, size))
            .await
    }

    async fn small_blob_at(
        &self,
        endpoint: Arc<Endpoint>,
        reference: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<Vec<u8>> {
        let url = endpoint.url(reference, &format!("blobs/{digest}"));
        let response = self.send(&endpoint, reference, Access::Pull, || endpoint.http.get(&url)).await?;
        let response = expect(response, &[StatusCode::OK], reference)?;
        let bytes = read_bounded(response, &url, size as usize, "config blob").await?;
        if bytes.len() as u64 != size {
            return Err(Error::BlobSize { digest: digest.clone(), expected: size, actual: bytes.len() as u64 });
        }
        let mut hasher = vmimg_fetch::Hasher::new(digest.algorithm());
        hasher.update(&bytes);
        let actual = hasher.finish();
        if actual != *digest {
            return Err(Error::BlobDigest { expected: digest.clone(), actual });
        }
        Ok(bytes)
    }

    /// The host pushes go to: the first that may push. A push is not
    /// spread over hosts (a part on one and the manifest on another would
    /// be no image).
    pub(crate) fn push_host(&self, reference: &Reference) -> Result<Arc<Endpoint>> {
        Ok(self.able(reference, Need::Push)?.swap_remove(0))
    }

    /// Whether the repository holds blob `digest`.
    pub async fn has_blob(&self, reference: &Reference, digest: &Digest) -> Result<bool> {
        let endpoint = self.push_host(reference)?;
        let url = endpoint.url(reference, &format!("blobs/{digest}"));
        let response = self.send(&endpoint, reference, Access::Push, || endpoint.http.head(&url)).await?;
        match response.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(status_error(&url, response).await),
        }
    }

    /// Uploads `len` bytes of `file` from `offset` as blob `digest`, in
    /// chunks, resuming after a cut (see `upload`), retrying as the
    /// registry's budget allows, each retry told to `progress`; a range
    /// past the largest file offset is refused.
    pub async fn upload_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        file: &std::fs::File,
        (offset, len): (u64, u64),
        progress: &dyn Progress,
    ) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > i64::MAX as u64) {
            let reason = format!("{len} bytes from offset {offset} run past the largest file offset");
            return Err(Error::InvalidInput { what: "blob range", reason });
        }
        let range = crate::upload::Range { file, offset, len };
        self.upload_chunked(reference, digest, range, progress).await
    }

    /// Uploads a small blob held in memory, whole.
    pub async fn upload_bytes(&self, reference: &Reference, digest: &Digest, bytes: &[u8]) -> Result<()> {
        self.upload(reference, digest, bytes.len() as u64, || reqwest::Body::from(bytes.to_vec())).await
    }

    /// A monolithic upload: `POST` for a location, then `PUT ?digest=`
    /// with the body `body` makes.
    async fn upload(
        &self,
        reference: &Reference,
        digest: &Digest,
        len: u64,
        body: impl Fn() -> reqwest::Body,
    ) -> Result<()> {
        let endpoint = self.push_host(reference)?;
        let location = self.start_upload(&endpoint, reference).await?;
        let put = crate::upload::closing_url(&location, digest);
        let response = self
            .send(&endpoint, reference, Access::Push, || {
                endpoint
                    .http
                    .put(&put)
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .header(header::CONTENT_LENGTH, len)
                    .body(body())
            })
            .await?;
        expect(response, &[StatusCode::CREATED], reference).map(drop)
    }

    /// Puts a manifest under `reference`'s tag (or digest); returns its digest.
    pub async fn put_manifest(&self, reference: &Reference, bytes: &[u8], media_type: &str) -> Result<Digest> {
        let endpoint = self.push_host(reference)?;
        let url = endpoint.url(reference, &format!("manifests/{}", reference.manifest_reference()));
        let body = bytes.to_vec();
        let response = self
            .send(&endpoint, reference, Access::Push, || {
                endpoint.http.put(&url).header(header::CONTENT_TYPE, media_type).body(body.clone())
            })
            .await?;
        expect(response, &[StatusCode::CREATED], reference)?;
        Ok(sha256(bytes))
    }

    /// Runs `attempt` until it succeeds or fails for good, with backoff
    /// between transient failures, each told to `progress`; a name that
    /// does not resolve is tried once more only (see [`Retries`]).
    pub(crate) async fn retry<T, F, Fut>(&self, progress: &dyn Progress, attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        retry_with(&self.options.fetch, progress, attempt).await
    }

    /// Sends the request `build` makes with the cached authorization; after
    /// a `401`, authorizes as the challenge asks and sends it once more.
    /// Authorization goes to `endpoint`'s own origin only: a request to
    /// another (an upload `Location` a registry points elsewhere) is sent
    /// without it, and a `401` from there is not answered.
    pub(crate) async fn send(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
        access: Access,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        self.send_in(endpoint, reference, Scope::of(reference, access), build).await
    }

    /// [`Registry::send`] with authorization for `scope`.
    pub(crate) async fn send_in(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
        scope: Scope<'_>,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let cached = self.auth.lock().expect("auth cache").get(&auth_key(endpoint, &scope)).cloned();
        let response = send_once(endpoint, &build, cached.as_ref()).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        if !endpoint.is_own(response.url()) {
            return Err(unauthorized(endpoint, reference));
        }
        let auth = self.authorize(endpoint, reference, &scope, &response).await?;
        let response = send_once(endpoint, &build, Some(&auth)).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(unauthorized(endpoint, reference));
        }
        Ok(response)
    }

    /// The authorization cached for `access` to `reference`'s repository
    /// on `endpoint`, if any (for a request whose body cannot be sent twice).
    pub(crate) fn cached_authorization(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
        access: Access,
    ) -> Option<HeaderValue> {
        self.auth.lock().expect("auth cache").get(&auth_key(endpoint, &Scope::of(reference, access))).cloned()
    }

    /// The authorization for a blob download (fetched by another client):
    /// the cached one, else what the registry's `/v2/` challenge asks for.
    async fn authorization(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
        access: Access,
    ) -> Result<Option<HeaderValue>> {
        let scope = Scope::of(reference, access);
        if let Some(auth) = self.auth.lock().expect("auth cache").get(&auth_key(endpoint, &scope)) {
            return Ok(Some(auth.clone()));
        }
        if self.open.lock().expect("open hosts").contains(&endpoint.host.api) {
            return Ok(None);
        }
        let url = endpoint.base();
        let response = send_once(endpoint, &|| endpoint.http.get(&url), None).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            self.open.lock().expect("open hosts").insert(endpoint.host.api.clone());
            return Ok(None);
        }
        self.authorize(endpoint, reference, &scope, &response).await.map(Some)
    }

    /// Answers the challenge of a `401` and caches the answer.
    async fn authorize(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
        scope: &Scope<'_>,
        response: &reqwest::Response,
    ) -> Result<HeaderValue> {
        let challenge = header_str(response.headers(), header::WWW_AUTHENTICATE).and_then(Challenge::parse);
        let auth = self.answer(endpoint, reference, scope, challenge).await?;
        self.auth.lock().expect("auth cache").insert(auth_key(endpoint, scope), auth.clone());
        Ok(auth)
    }

    /// What vmimg proves itself with to `endpoint`: for the registry's own
    /// server, the caller's credentials; else what Docker's config.json
    /// says for the host (a helper's answer, asked once per host, or an
    /// `auths` entry).
    async fn login(&self, endpoint: &Endpoint) -> Result<Option<Login>> {
        if let Some(credentials) = &self.options.credentials
            && endpoint.host.is_server
        {
            return Ok(Some(Login::Password(credentials.clone())));
        }
        let registry = endpoint.auth_name();
        let helper = match self.docker.source(registry) {
            CredentialSource::File(found) => return Ok(found.cloned().map(Login::Password)),
            CredentialSource::Helper(helper) => helper,
        };
        let mut helped = self.helped.lock().await;
        if let Some(login) = helped.get(registry) {
            return Ok(login.clone());
        }
        let login = crate::helper::get(helper, crate::auth::helper_server(registry)).await?;
        helped.insert(registry.to_owned(), login.clone());
        Ok(login)
    }

    /// The Authorization value that answers `challenge`.
    async fn answer(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
        scope: &Scope<'_>,
        challenge: Option<Challenge>,
    ) -> Result<HeaderValue> {
        match challenge {
            Some(Challenge::Basic) => match self.login(endpoint).await? {
                Some(Login::Password(credentials)) => Ok(basic(&credentials)),
                Some(Login::IdentityToken(_)) => {
                    Err(Error::IdentityTokenForBasic { registry: endpoint.auth_name().to_owned() })
                }
                None => Err(unauthorized(endpoint, reference)),
            },
            Some(Challenge::Bearer { realm, service }) => {
                let login = self.login(endpoint).await?;
                let scopes = scope.strings();
                // The host's own client (its CAs, certificate, headers) for a
                // realm on its origin; the plain one for a realm elsewhere.
                let own = reqwest::Url::parse(&realm).is_ok_and(|url| endpoint.is_own(&url));
                let http = if own { &endpoint.http } else { &self.http };
                let asked =
                    TokenAsk { realm: &realm, service: service.as_deref(), scopes: &scopes, login: login.as_ref() };
                let token = token(endpoint, http, reference, &asked).await?;
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| Error::Http { url: realm, message: "the token is not a valid header value".into() })
            }
            None => Err(unauthorized(endpoint, reference)),
        }
    }
}

/// [`Registry::retry`] with the budget of `options`.
async fn retry_with<T, F, Fut>(options: &FetchOptions, progress: &dyn Progress, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut retries = Retries::new(options, progress);
    loop {
        match attempt().await {
            Err(e) if e.is_transient() => {
                if !retries.wait(&e).await {
                    return Err(e);
                }
            }
            outcome => return outcome,
        }
    }
}

/// Sends the request `build` makes through `endpoint`'s client, with
/// `auth` if it goes to `endpoint`'s own origin.
async fn send_once(
    endpoint: &Endpoint,
    build: &impl Fn() -> reqwest::RequestBuilder,
    auth: Option<&HeaderValue>,
) -> Result<reqwest::Response> {
    let mut request = build().build().map_err(|e| Error::Http { url: String::new(), message: e.to_string() })?;
    if let Some(auth) = auth.filter(|_| endpoint.is_own(request.url())) {
        request.headers_mut().insert(header::AUTHORIZATION, auth.clone());
    }
    let url = request.url().to_string();
    endpoint.http.execute(request).await.map_err(|e| Error::http(&url, e))
}

/// What a token is asked for: at `realm`, for `service` and `scopes`, with
/// `login` if any.
#[derive(Clone, Copy)]
struct TokenAsk<'a> {
    realm: &'a str,
    service: Option<&'a str>,
    scopes: &'a [String],
    login: Option<&'a Login>,
}

/// A bearer token from the realm, for the scopes asked.
async fn token(
    endpoint: &Endpoint,
    http: &reqwest::Client,
    reference: &Reference,
    asked: &TokenAsk<'_>,
) -> Result<String> {
    let request = token_request(http, asked)?;
    let realm = asked.realm;
    let response = request.send().await.map_err(|e| Error::http(realm, e))?;
    match response.status() {
        StatusCode::OK => {}
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Err(unauthorized(endpoint, reference)),
        _ => return Err(status_error(realm, response).await),
    }
    let body = read_bounded(response, realm, 1 << 20, "token response").await?;
    #[derive(serde::Deserialize)]
    struct Token {
        token: Option<String>,
        access_token: Option<String>,
    }
    let token: Token = serde_json::from_slice(&body)
        .map_err(|e| Error::Http { url: realm.to_owned(), message: format!("bad token response: {e}") })?;
    token
        .token
        .or(token.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Http { url: realm.to_owned(), message: "the token response holds no token".into() })
}

/// The request for a token: a `GET` with the scope and service, and the
/// password as Basic auth if there is one; for an identity token, the
/// OAuth2 refresh-token grant docker sends (a form `POST`).
fn token_request(http: &reqwest::Client, asked: &TokenAsk<'_>) -> Result<reqwest::RequestBuilder> {
    let TokenAsk { realm, service, scopes, login } = *asked;
    let mut url = reqwest::Url::parse(realm)
        .map_err(|e| Error::Http { url: realm.to_owned(), message: format!("bad token realm: {e}") })?;
    if let Some(Login::IdentityToken(refresh)) = login {
        let form = refresh_grant(refresh, service, &scopes.join(" "));
        return Ok(http.post(url).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(form));
    }
    let mut query = url.query_pairs_mut();
    for scope in scopes {
        query.append_pair("scope", scope);
    }
    query.extend_pairs(service.map(|service| ("service", service)));
    drop(query);
    let request = http.get(url);
    Ok(match login {
        Some(Login::Password(c)) => request.basic_auth(&c.username, Some(&c.password)),
        _ => request,
    })
}

fn unauthorized(endpoint: &Endpoint, reference: &Reference) -> Error {
    Error::Unauthorized { registry: endpoint.auth_name().to_owned(), repository: reference.repository().to_owned() }
}

/// Where the authorization for `scope` on a host is cached.
fn auth_key(endpoint: &Endpoint, scope: &Scope<'_>) -> (String, String, Access) {
    let repositories = match scope.mount_from {
        Some(from) => format!("{} {from}", scope.repository),
        None => scope.repository.to_owned(),
    };
    (endpoint.host.api.clone(), repositories, scope.access)
}

/// The form of an OAuth2 refresh-token grant for `scope`, as docker posts
/// it to a token realm.
fn refresh_grant(refresh: &str, service: Option<&str>, scope: &str) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "refresh_token").append_pair("refresh_token", refresh);
    form.extend_pairs(service.map(|service| ("service", service)));
    form.append_pair("scope", scope).append_pair("client_id", "vmimg").finish()
}

fn basic(c: &Credentials) -> HeaderValue {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is a valid header value");
    value.set_sensitive(true);
    value
}

pub(crate) fn sha256(bytes: &[u8]) -> Digest {
    let mut hasher = Hasher::new(Algorithm::Sha256);
    hasher.update(bytes);
    hasher.finish()
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The response if its status is one of `ok`; a clear error otherwise.
pub(crate) fn expect(
    response: reqwest::Response,
    ok: &[StatusCode],
    reference: &Reference,
) -> Result<reqwest::Response> {
    match response.status() {
        s if ok.contains(&s) => Ok(response),
        StatusCode::NOT_FOUND => Err(Error::NotFound { reference: reference.to_string() }),
        s => Err(Error::Status { url: response.url().to_string(), status: s.as_u16(), detail: None }),
    }
}

async fn status_error(url: &str, response: reqwest::Response) -> Error {
    let status = response.status().as_u16();
    let detail =
        read_bounded(response, url, 4096, "error").await.ok().map(|b| String::from_utf8_lossy(&b).trim().to_owned());
    Error::Status { url: url.to_owned(), status, detail: detail.filter(|d| !d.is_empty()) }
}

/// The body, refused past `limit` bytes.
async fn read_bounded(response: reqwest::Response, url: &str, limit: usize, what: &'static str) -> Result<Vec<u8>> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(Error::TooLarge { what, url: url.to_owned(), limit });
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.map_err(|e| Error::http(url, e))?);
        if body.len() > limit {
            return Err(Error::TooLarge { what, url: url.to_owned(), limit });
        }
    }
    Ok(body)
}

/// An upload Location, absolute or relative to the request that gave it.
pub(crate) fn resolve(base: &str, location: &str) -> Result<String> {
    let base = reqwest::Url::parse(base).map_err(|e| Error::Http { url: base.to_owned(), message: e.to_string() })?;
    base.join(location)
        .map(String::from)
        .map_err(|e| Error::Http { url: location.to_owned(), message: format!("bad upload location: {e}") })
}

/// A request body that streams `len` bytes of `file` from `offset`, with
/// positioned reads (so parallel uploads of one file never share a cursor).
pub(crate) fn file_range_body(file: &std::fs::File, offset: u64, len: u64) -> reqwest::Body {
    use std::os::unix::fs::FileExt;
    let file = file.try_clone().map(std::sync::Arc::new);
    let end = offset + len;
    let stream = futures_util::stream::unfold((file, offset), move |(file, pos)| async move {
        if pos >= end {
            return None;
        }
        let handle = match &file {
            Ok(f) => f.clone(),
            Err(e) => return Some((Err(std::io::Error::new(e.kind(), e.to_string())), (file, end))),
        };
        let n = (end - pos).min(1 << 20) as usize;
        let chunk = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; n];
            handle.read_exact_at(&mut buf, pos).map(|()| buf)
        })
        .await
        .expect("read task");
        let next = if chunk.is_ok() { pos + n as u64 } else { end };
        Some((chunk, (file, next)))
    });
    reqwest::Body::wrap_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_for_loopback_and_insecure_hosts_only() {
        let options = RegistryOptions {
            insecure: vec!["registry.lan:5000".into()],
            docker_config: Some("/nonexistent/config.json".into()),
            ..RegistryOptions::default()
        };
        let registry = Registry::new(options).unwrap();
        let endpoint = |r: &str| registry.default_server(&Reference::parse(r).unwrap());
        assert_eq!(endpoint("alpine"), "https://registry-1.docker.io");
        assert_eq!(endpoint("ghcr.io/o/r"), "https://ghcr.io");
        assert_eq!(endpoint("registry.lan:5000/r"), "http://registry.lan:5000");
        assert_eq!(endpoint("registry.lan/r"), "https://registry.lan", "insecure names a host and port");
        assert_eq!(endpoint("localhost:5000/r"), "http://localhost:5000");
        assert_eq!(endpoint("127.0.0.1:5000/r"), "http://127.0.0.1:5000");
        assert_eq!(endpoint("[::1]:5000/r"), "http://[::1]:5000");
        assert_eq!(endpoint("127.example.com/r"), "https://127.example.com");
    }

    #[test]
    fn a_hosts_file_puts_its_mirrors_before_the_default_server() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("127.0.0.1:5000")).unwrap();
        let file = "[host.\"http://127.0.0.2:5001\"]\ncapabilities = [\"pull\"]\n";
        std::fs::write(dir.path().join("127.0.0.1:5000/hosts.toml"), file).unwrap();
        let options = RegistryOptions {
            hosts_dir: Some(dir.path().to_owned()),
            docker_config: Some("/nonexistent/config.json".into()),
            ..RegistryOptions::default()
        };
        let registry = Registry::new(options).unwrap();
        let apis = |r: &str| -> Vec<String> {
            registry.hosts(&Reference::parse(r).unwrap()).unwrap().into_iter().map(|h| h.api).collect()
        };
        assert_eq!(apis("127.0.0.1:5000/vm/a"), ["http://127.0.0.2:5001/v2", "http://127.0.0.1:5000/v2"]);
        assert_eq!(apis("127.0.0.1:5002/vm/a"), ["http://127.0.0.1:5002/v2"], "no file: the server alone");
        // A tag is resolved by hosts that may resolve: the server only here.
        let tagged = Reference::parse("127.0.0.1:5000/vm/a:1").unwrap();
        let resolvers: Vec<String> =
            registry.able(&tagged, Need::Resolve).unwrap().iter().map(|e| e.name().to_owned()).collect();
        assert_eq!(resolvers, ["http://127.0.0.1:5000"]);
        let pullers = registry.able(&tagged, Need::Pull).unwrap();
        assert_eq!(pullers[0].url(&tagged, "blobs/x"), "http://127.0.0.2:5001/v2/vm/a/blobs/x?ns=127.0.0.1:5000");
        assert_eq!(pullers[1].url(&tagged, "blobs/x"), "http://127.0.0.1:5000/v2/vm/a/blobs/x");
    }
}
