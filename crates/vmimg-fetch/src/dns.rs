//! Host names to addresses, with a failure that can be told from others.
//!
//! vmimg's HTTP clients (this crate's [`Fetcher`](crate::Fetcher), the
//! registry client) resolve names as reqwest does by default, with the
//! system's resolver (`getaddrinfo`, on a blocking thread), but through
//! [`SystemResolver`], whose failure is a [`ResolveFailed`] in the error's
//! chain of causes. hyper only says "dns error" around whatever the
//! resolver returned; a type of our own there is what lets
//! [`unresolved`] find a name that did not resolve without reading any
//! error's text.
//!
//! A name that does not resolve now (no network, no DNS, a typo) will not
//! resolve a second later: the retry loops try it once more, not eight
//! times (see [`Retries`](crate::Retries)).

use crate::download::FetchOptions;
use crate::error::{Error, Result};
use std::net::{SocketAddr, ToSocketAddrs};

/// The resolver of vmimg's HTTP clients: the system's.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl reqwest::dns::Resolve for SystemResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port (or the scheme's) in.
            let lookup = {
                let host = host.clone();
                tokio::task::spawn_blocking(move || (host.as_str(), 0).to_socket_addrs())
            };
            match lookup.await {
                Ok(Ok(addrs)) => Ok(Box::new(addrs.collect::<Vec<SocketAddr>>().into_iter()) as reqwest::dns::Addrs),
                Ok(Err(error)) => Err(Box::new(ResolveFailed { host, reason: reason(&error) }) as _),
                Err(join) => {
                    Err(Box::new(ResolveFailed { host, reason: format!("the lookup task failed: {join}") }) as _)
                }
            }
        })
    }
}

/// What the system's resolver said, without std's prefix.
fn reason(error: &std::io::Error) -> String {
    let text = error.to_string();
    text.strip_prefix("failed to lookup address information: ").unwrap_or(&text).to_owned()
}

/// A host name the resolver could not turn into addresses: the cause at
/// the bottom of a request's error when resolving failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot resolve {host}: {reason}")]
pub struct ResolveFailed {
    pub host: String,
    /// The resolver's words: "Name or service not known", "Temporary
    /// failure in name resolution", …
    pub reason: String,
}

/// What TLS refused, if that is why `error` (a request's error) failed: a
/// certificate that does not verify (a `rustls::Error` among the causes,
/// inside I/O errors), or a fatal alert from the server (a client
/// certificate it wanted or refused), which rustls reports as text. Trying
/// again does not help.
pub fn tls_refused(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(refused) = error.downcast_ref::<rustls::Error>() {
            return Some(refused.to_string());
        }
        let io = error.downcast_ref::<std::io::Error>();
        if let Some(io) = io
            && io.kind() == std::io::ErrorKind::InvalidData
            && io.to_string().starts_with("received fatal alert")
        {
            return Some(io.to_string());
        }
        // An I/O error's source is its inner error's source: look at the inner one itself.
        cause = match io.and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

/// The name that did not resolve, if that is why `error` (a request's
/// error, say) failed: a [`ResolveFailed`] among its causes.
pub fn unresolved<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e ResolveFailed> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(failed) = error.downcast_ref::<ResolveFailed>() {
            return Some(failed);
        }
        cause = error.source();
    }
    None
}

/// An HTTP client as vmimg's transports use one: its user agent, the
/// connect and read timeouts of `options`, names resolved by
/// [`SystemResolver`].
pub fn http_client(options: &FetchOptions) -> Result<reqwest::Client> {
    build_client(client_builder(options))
}

/// What [`http_client`] builds, for a caller to add to (a registry host's
/// certificates).
pub fn client_builder(options: &FetchOptions) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("vmimg/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(options.connect_timeout)
        .read_timeout(options.read_timeout)
        .dns_resolver(SystemResolver)
}

/// The client `builder` makes; its failure (a certificate the TLS library
/// refuses) as an error.
pub fn build_client(builder: reqwest::ClientBuilder) -> Result<reqwest::Client> {
    builder.build().map_err(|e| Error::Transfer {
        url: String::new(),
        message: format!("cannot start an HTTP client: {}", crate::error::error_chain(&e)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolve_failure_is_found_under_other_errors() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Box<dyn std::error::Error + Send + Sync>);
        let failed = ResolveFailed { host: "example.invalid".into(), reason: "Name or service not known".into() };
        let wrapped = Outer(Box::new(Outer(Box::new(failed.clone()))));
        assert_eq!(unresolved(&wrapped), Some(&failed));
        assert_eq!(unresolved(&Outer("refused".into())), None);
        let io = std::io::Error::other("failed to lookup address information: Name or service not known");
        assert_eq!(reason(&io), "Name or service not known");
    }
}
