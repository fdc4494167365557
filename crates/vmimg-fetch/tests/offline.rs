//! Without network: a host name that does not resolve is told apart from
//! other connection failures, tried once more only, and named with what
//! to do; every retry of either is told to the progress.
//!
//! `.invalid` never resolves (RFC 6761), and resolvers answer it at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};
use vmimg_fetch::{Algorithm, Error, FetchOptions, Fetcher, Progress};

/// Keeps what each retry said.
#[derive(Default)]
struct Retries(Mutex<Vec<String>>);

impl Progress for Retries {
    fn retrying(&self, error: &(dyn std::error::Error + 'static), _delay: Duration) {
        self.0.lock().unwrap().push(error.to_string());
    }
}

impl Retries {
    fn said(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

fn fetcher(attempts: usize) -> Fetcher {
    Fetcher::new(FetchOptions { attempts, min_delay: Duration::from_millis(10), ..FetchOptions::default() }).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

const UNRESOLVABLE: &str = "http://vmimg-test.invalid/disk.qcow2";

fn assert_unresolved(error: &Error, retries: &Retries, started: Instant) {
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(error.unresolved_host(), Some("vmimg-test.invalid"), "{error:?}");
    assert!(matches!(error, Error::GaveUp { attempts: 2, .. }), "one retry, not eight: {error:?}");
    let message = error.to_string();
    assert!(
        message.contains("cannot resolve vmimg-test.invalid")
            && message.contains("no network, no DNS, or no such host")
            && message.contains("from a mirror you can reach, or use a local copy"),
        "{message}"
    );
    let said = retries.said();
    assert!(said.len() == 1 && said[0].contains("cannot resolve vmimg-test.invalid"), "the retry is told: {said:?}");
}

#[test]
fn a_download_from_a_host_that_does_not_resolve_is_retried_once_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let retries = Retries::default();
    let started = Instant::now();
    let fetched =
        runtime().block_on(fetcher(8).fetch(UNRESOLVABLE, Algorithm::Sha256, &dir.path().join("part"), &retries));
    assert_unresolved(&fetched.unwrap_err(), &retries, started);
}

#[test]
fn a_document_from_a_host_that_does_not_resolve_is_retried_once_and_says_what_to_do() {
    let retries = Retries::default();
    let started = Instant::now();
    let text = runtime().block_on(fetcher(8).get_text(UNRESOLVABLE, 1 << 10, &retries));
    assert_unresolved(&text.unwrap_err(), &retries, started);
}

#[test]
fn a_refused_connection_is_not_a_name_and_every_retry_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}/disk.qcow2", closed_port());
    let (retries, text_retries) = (Retries::default(), Retries::default());
    let runtime = runtime();
    let error = runtime.block_on(fetcher(3).fetch(&url, Algorithm::Sha256, &dir.path().join("part"), &retries));
    let error = error.unwrap_err();
    assert!(matches!(&error, Error::GaveUp { attempts: 3, .. }), "{error:?}");
    assert_eq!(error.unresolved_host(), None, "{error}");
    let said = retries.said();
    assert!(said.len() == 2 && said.iter().all(|s| s.contains(&url)), "two retries told: {said:?}");

    let error = runtime.block_on(fetcher(3).get_text(&url, 1 << 10, &text_retries)).unwrap_err();
    assert!(matches!(&error, Error::GaveUp { attempts: 3, .. }) && error.unresolved_host().is_none(), "{error:?}");
    assert_eq!(text_retries.said().len(), 2, "a document's retries are told too");
}
