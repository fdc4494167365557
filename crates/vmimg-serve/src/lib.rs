//! vmimg's daemon: the store's front door over HTTP, for VM platforms.
//!
//! [`Daemon::start`] claims a store (one daemon per store), recovers the
//! builds a killed daemon left, cleans `tmp/`, and serves the API on unix
//! sockets and TCP addresses until [`Daemon::stop`]. The API (its OpenAPI
//! document is [`openapi`], served at `/openapi.json`):
//! - `/v1/images`: list, create (202 while the image is made, one job per
//!   image however many clients ask), get, delete, Server-Sent Events of an
//!   image being made, and `/v1/images/{name}/disk` (ranges, strong ETag);
//! - `/dl/{reference}`: a registry's cloud image streamed as it is
//!   verified, never ending cleanly when a part fails its digest;
//! - `/v1/instances`, `/v1/builds`, `/v1/store/usage`, `/v1/store/gc`;
//! - `/metrics` (the library's registry and the daemon's request metrics),
//!   `/healthz`.
//!
//! Errors are `application/problem+json` with the status of the library
//! error's kind. TCP clients must send the bearer token; unix socket
//! clients are let in by the socket's permissions.
//!
//! Modules: `listen` (addresses, clients, accept loops), `guard` (token,
//! names, per-client stream limits), `problem`, `ranges`, `jobs` (images
//! being made), `view` (the image object), the handlers (`images`, `disk`,
//! `dl`, `admin`), `http_metrics`, and `app` (state, routes, document).
//! The daemon holds no store logic: every decision is the library's.

mod admin;
mod app;
mod disk;
mod dl;
mod guard;
mod http_metrics;
mod images;
mod jobs;
mod listen;
mod problem;
mod ranges;
mod view;

pub use app::openapi;
pub use guard::Token;
pub use listen::{Listen, default_socket};

use app::{App, RouteLimits};
use hyper_util::server::graceful::GracefulShutdown;
use jobs::Jobs;
use listen::{Bound, ConnectionLimits};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use vmimg_store::{Manager, ManagerOptions, ServiceClaim, Store};

/// How to serve.
#[derive(Clone)]
pub struct Config {
    pub listen: Vec<Listen>,
    /// Required when listening on TCP.
    pub token: Option<Token>,
    /// Directories whose files and OCI layouts clients may name as sources
    /// (none by default: the daemon's clients must not read its files).
    pub local_sources: Vec<PathBuf>,
    pub limits: Limits,
}

/// What one client may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's headers must arrive within this.
    pub header_timeout: Duration,
    /// A request's body must arrive within this.
    pub body_timeout: Duration,
    /// A response's head must be ready within this.
    pub answer_timeout: Duration,
    pub body_bytes: usize,
    /// Disk and `/dl/` streams one client may have open at once.
    pub streams_per_client: usize,
    /// How long [`Daemon::stop`] lets requests finish.
    pub grace: Duration,
    /// Container builds run at once.
    pub builds: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            answer_timeout: Duration::from_secs(300),
            body_bytes: 64 << 10,
            streams_per_client: 16,
            grace: Duration::from_secs(10),
            builds: ManagerOptions::default().concurrency,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] vmimg_store::Error),
    #[error("cannot listen on {listen}: {source}")]
    Bind { listen: Listen, source: std::io::Error },
    #[error("listening on TCP needs a token file: clients must authenticate there")]
    TcpWithoutToken,
    #[error("cannot take local sources from {path}: {source}")]
    LocalSources { path: PathBuf, source: std::io::Error },
    #[error("nothing to listen on")]
    NoListener,
}

/// A running daemon.
pub struct Daemon {
    addresses: Vec<Listen>,
    stop: watch::Sender<bool>,
    accepting: Vec<tokio::task::JoinHandle<()>>,
    graceful: Arc<GracefulShutdown>,
    grace: Duration,
    _claim: ServiceClaim,
}

impl Daemon {
    /// Claims `store`, readies it, and starts serving.
    pub async fn start(store: Store, config: Config) -> Result<Daemon, ServeError> {
        if config.listen.is_empty() {
            return Err(ServeError::NoListener);
        }
        if config.token.is_none() && config.listen.iter().any(|l| matches!(l, Listen::Tcp(_))) {
            return Err(ServeError::TcpWithoutToken);
        }
        let local_roots = config
            .local_sources
            .iter()
            .map(|path| {
                std::fs::canonicalize(path).map_err(|source| ServeError::LocalSources { path: path.clone(), source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let claim = store.claim_service()?;
        let builds = Manager::new(Arc::new(store.clone()), ManagerOptions { concurrency: config.limits.builds })?;
        let recovered = builds.recover_interrupted()?;
        let cleaned = store.clean_tmp().await?;
        tracing::info!(store = %store.root().display(), builds_recovered = recovered.len(), tmp_removed = cleaned.tmp_entries, "store ready");
        let limits = config.limits;
        let app = Arc::new(App {
            jobs: Arc::new(Jobs::new(store.clone(), builds.clone())),
            store,
            builds,
            streams: guard::Streams::new(limits.streams_per_client),
            local_roots,
        });
        let route_limits = RouteLimits {
            body_bytes: limits.body_bytes,
            body_timeout: limits.body_timeout,
            answer_timeout: limits.answer_timeout,
        };
        let jobs = app.jobs.clone();
        tokio::spawn(async move { jobs.resume().await });
        let router = app::router(app, config.token, route_limits);
        let mut bound = Vec::new();
        for listen in &config.listen {
            bound
                .push(Bound::bind(listen).await.map_err(|source| ServeError::Bind { listen: listen.clone(), source })?);
        }
        let (stop, stopped) = watch::channel(false);
        let graceful = Arc::new(GracefulShutdown::new());
        let connection = ConnectionLimits { header_timeout: limits.header_timeout };
        let addresses: Vec<Listen> = bound.iter().map(Bound::local).collect();
        let accepting = bound
            .into_iter()
            .map(|bound| {
                let (router, graceful, stopped) = (router.clone(), graceful.clone(), stopped.clone());
                tokio::spawn(async move { listen::accept(bound, router, connection, &graceful, stopped).await })
            })
            .collect();
        for address in &addresses {
            tracing::info!(%address, "listening");
        }
        Ok(Daemon { addresses, stop, accepting, graceful, grace: limits.grace, _claim: claim })
    }

    /// Where it listens (a TCP port 0 replaced by the port given).
    pub fn addresses(&self) -> &[Listen] {
        &self.addresses
    }

    /// Stops accepting, lets requests in flight finish for the grace period,
    /// and releases the store. Images being made stop where they are: their
    /// partial downloads are resumed by the next pull.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.accepting {
            let _ = task.await;
        }
        for address in &self.addresses {
            if let Listen::Unix(path) = address {
                let _ = std::fs::remove_file(path);
            }
        }
        let graceful = Arc::try_unwrap(self.graceful).unwrap_or_else(|_| unreachable!("the accept loops have ended"));
        if tokio::time::timeout(self.grace, graceful.shutdown()).await.is_err() {
            tracing::warn!(grace = ?self.grace, "requests still running were cut");
        }
    }
}
