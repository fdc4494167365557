use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a download failed. Messages name the URL or file and say what the
/// server did, so the user can tell a typo from an outage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("invalid URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("GET {url}: the server answered {status}")]
    Status { url: String, status: u16, retry_after: Option<u64> },
    #[error("GET {url}: {message}")]
    Transfer { url: String, message: String },
    /// The URL's host name did not resolve: no network, no DNS, or no such
    /// host. Tried once more only (see [`Retries`](crate::Retries)).
    #[error(
        "GET {url}: cannot resolve {host}: {reason} (no network, no DNS, or no such host); fetch it from a mirror \
         you can reach, or use a local copy"
    )]
    Unresolved { url: String, host: String, reason: String },
    /// TLS refused the connection: a server certificate that does not
    /// verify, or a handshake the server ended. Not tried again.
    #[error(
        "{url}: TLS refused the connection: {reason}; give the registry's CA (`ca` in its hosts.toml) or the \
         client certificate it asks for (`client`)"
    )]
    Tls { url: String, reason: String },
    #[error("GET {url}: the body is larger than the limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error(
        "GET {url}: the transfer was too slow: {speed} bytes/s over the last {window:?}, under the minimum of \
         {min_speed} bytes/s (the speed limit)"
    )]
    TooSlow { url: String, speed: u64, window: std::time::Duration, min_speed: u64 },
    #[error("{last} (gave up after {attempts} attempts)")]
    GaveUp { attempts: usize, last: Box<Error> },
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_owned();
        move |source| Error::Io { action, path, source }
    }

    pub(crate) fn transfer(url: &str, error: reqwest::Error) -> Error {
        if let Some(failed) = crate::dns::unresolved(&error) {
            return Error::Unresolved { url: url.to_owned(), host: failed.host.clone(), reason: failed.reason.clone() };
        }
        if let Some(reason) = crate::dns::tls_refused(&error) {
            return Error::Tls { url: url.to_owned(), reason };
        }
        // reqwest's Display hides the cause (timeout, reset): append it.
        Error::Transfer { url: url.to_owned(), message: error_chain(&error.without_url()) }
    }

    /// Whether trying again may succeed: connection trouble (a name that
    /// did not resolve too, once), timeouts, cut bodies (also for
    /// slowness), 408, 429 and 5xx answers.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transfer { .. } | Error::TooSlow { .. } | Error::Unresolved { .. } => true,
            Error::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            _ => false,
        }
    }

    /// The host whose name did not resolve, if that is why this failed
    /// (also when it gave up after retrying).
    pub fn unresolved_host(&self) -> Option<&str> {
        match self {
            Error::Unresolved { host, .. } => Some(host),
            Error::GaveUp { last, .. } => last.unresolved_host(),
            _ => None,
        }
    }
}

impl crate::Retryable for Error {
    fn unresolved_host(&self) -> Option<&str> {
        Error::unresolved_host(self)
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Status { retry_after: Some(secs), .. } => Some(std::time::Duration::from_secs(*secs)),
            _ => None,
        }
    }
}

/// An error and its causes on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        message = format!("{message}: {c}");
        cause = c.source();
    }
    message
}
