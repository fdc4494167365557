//! Where the daemon listens (`unix:PATH`, `tcp:HOST:PORT`), who each
//! connection's client is, and the accept loops that hand connections to
//! hyper with the daemon's connection limits.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tower::ServiceExt;

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A unix socket, made mode 0660 (its directory's permissions decide
    /// who reaches it).
    Unix(PathBuf),
    /// A TCP address: every request must carry the bearer token.
    Tcp(SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(text: &str) -> Result<Listen, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path (unix:/run/vmimg/vmimg.sock)".to_owned());
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        if let Some(address) = text.strip_prefix("tcp:") {
            return address.parse().map(Listen::Tcp).map_err(|_| {
                format!("{address:?} is not HOST:PORT with a numeric host (tcp:127.0.0.1:8080, tcp:[::1]:8080)")
            });
        }
        Err(format!("{text:?}: write unix:PATH or tcp:HOST:PORT"))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
            Listen::Tcp(address) => write!(f, "tcp:{address}"),
        }
    }
}

/// The default socket: `/run/vmimg/vmimg.sock` as root, else
/// `$XDG_RUNTIME_DIR/vmimg.sock` (None when that is unset).
pub fn default_socket() -> Option<PathBuf> {
    if rustix::process::geteuid().is_root() {
        return Some(PathBuf::from("/run/vmimg/vmimg.sock"));
    }
    std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()).map(|d| PathBuf::from(d).join("vmimg.sock"))
}

/// Who a connection's client is: the unit per-client limits count in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    /// A unix socket peer, by user id.
    Unix { uid: u32 },
    /// A TCP peer, by address.
    Tcp(IpAddr),
}

impl Client {
    /// Whether requests must carry the bearer token (TCP clients).
    pub fn needs_token(self) -> bool {
        matches!(self, Client::Tcp(_))
    }
}

/// A bound listener.
pub enum Bound {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Bound {
    /// Binds `listen`; a unix socket a dead daemon left is replaced, a live
    /// one (or any other file) is refused.
    pub async fn bind(listen: &Listen) -> std::io::Result<Bound> {
        match listen {
            Listen::Tcp(address) => Ok(Bound::Tcp(TcpListener::bind(address).await?)),
            Listen::Unix(path) => {
                remove_stale_socket(path).await?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let listener = UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
                Ok(Bound::Unix(listener, path.clone()))
            }
        }
    }

    /// The address bound (for a TCP port 0, the port given).
    pub fn local(&self) -> Listen {
        match self {
            Bound::Unix(_, path) => Listen::Unix(path.clone()),
            Bound::Tcp(listener) => Listen::Tcp(listener.local_addr().expect("a bound socket has an address")),
        }
    }
}

async fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
    let in_use = || std::io::Error::new(std::io::ErrorKind::AddrInUse, format!("{} is in use", path.display()));
    if !meta.file_type().is_socket() {
        return Err(in_use());
    }
    match tokio::net::UnixStream::connect(path).await {
        Ok(_) => Err(in_use()),
        Err(_) => std::fs::remove_file(path),
    }
}

/// How connections are served.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A client that has not sent a request's headers in this long is cut.
    pub header_timeout: Duration,
}

/// Accepts connections on `bound` until `stop` turns true, serving each with
/// `router`; the connections are watched by `graceful`.
pub async fn accept(
    bound: Bound,
    router: Router,
    limits: ConnectionLimits,
    graceful: &GracefulShutdown,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    loop {
        let accepted = tokio::select! {
            accepted = next(&bound) => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let (io, client) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = router.clone().map_request(move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(client);
            request
        });
        let connection = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service));
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, ?client, "connection ended");
            }
        });
    }
}

/// A connection's stream, over either transport.
type Io = TokioIo<Box<dyn Stream>>;
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Stream for T {}

async fn next(bound: &Bound) -> std::io::Result<(Io, Client)> {
    match bound {
        Bound::Tcp(listener) => {
            let (stream, peer) = listener.accept().await?;
            stream.set_nodelay(true)?;
            Ok((TokioIo::new(Box::new(stream)), Client::Tcp(peer.ip())))
        }
        Bound::Unix(listener, _) => {
            let (stream, _) = listener.accept().await?;
            let uid = stream.peer_cred()?.uid();
            Ok((TokioIo::new(Box::new(stream)), Client::Unix { uid }))
        }
    }
}
