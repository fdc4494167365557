//! What the daemon asks of a client before it serves it: the bearer token
//! (TCP clients), safe names in paths, local sources only from the
//! directories it was given, and a bounded number of streams at once per
//! client.

use crate::listen::Client;
use crate::problem::{Answer, Problem};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;
use vmimg_store::{Catalog, ErrorKind, Source};

/// The bearer token TCP clients must send.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl Token {
    /// The token in `text` (a token file's contents): its first line, trimmed.
    pub fn from_file_text(text: &str) -> Result<Token, String> {
        let token = text.lines().next().unwrap_or("").trim();
        if token.len() < 16 {
            return Err("the token file must hold a token of at least 16 characters on its first line".to_owned());
        }
        Ok(Token(token.as_bytes().into()))
    }

    /// Whether `request`'s `Authorization: Bearer` header carries the
    /// token, compared in constant time.
    fn admits(&self, request: &Request) -> bool {
        let Some(value) = request.headers().get(header::AUTHORIZATION) else { return false };
        // The scheme's name is case-insensitive (RFC 9110 §11.1).
        let Some((scheme, sent)) = value.as_bytes().split_at_checked(7) else { return false };
        scheme.eq_ignore_ascii_case(b"Bearer ") && sent.ct_eq(&self.0).into()
    }
}

/// Refuses a TCP client's request that lacks the token (401); unix socket
/// clients are let in by the socket's permissions.
pub async fn authenticate(State(token): State<Option<Token>>, request: Request, next: Next) -> Response {
    let client = request.extensions().get::<Client>().copied();
    let needs = client.is_none_or(Client::needs_token);
    if needs && !token.as_ref().is_some_and(|t| t.admits(&request)) {
        let problem = Problem::with_status(
            StatusCode::UNAUTHORIZED,
            ErrorKind::Denied,
            "send the daemon's token: Authorization: Bearer <the --token-file's token>",
        );
        let mut response = problem.into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"vmimg\""));
        return response;
    }
    next.run(request).await
}

/// Refuses a name that could leave its directory or carries control
/// characters: 1 to 128 of `[A-Za-z0-9._-]`, not starting with a dot.
pub fn check_name(what: &str, name: &str) -> Answer<()> {
    let safe = (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if safe {
        Ok(())
    } else {
        let shown: String = name.chars().take(128).flat_map(char::escape_default).collect();
        Err(Problem::bad_request(format!(
            "{what} name \"{shown}\" is not 1 to 128 of [A-Za-z0-9._-] starting with no dot"
        )))
    }
}

/// Refuses a local source (a file, an OCI layout or archive) outside
/// `roots` (canonical directories): a client must not read the daemon's own
/// files through it. A path that does not resolve is refused alike, so the
/// answer says nothing of what exists outside.
pub fn check_local(source: &str, catalog: &Catalog, roots: &[PathBuf]) -> Answer<()> {
    let path = match Source::parse(source, catalog) {
        Ok(Source::File(path)) => path,
        Ok(Source::Layout(layout)) => layout.path().to_owned(),
        // Not local, or not a source at all: the store says which.
        _ => return Ok(()),
    };
    let inside = std::fs::canonicalize(&path).is_ok_and(|real| roots.iter().any(|root| real.starts_with(root)));
    if inside {
        return Ok(());
    }
    Err(Problem::with_status(
        StatusCode::FORBIDDEN,
        ErrorKind::Denied,
        format!(
            "{} is not inside a directory this daemon takes local sources from: start it with --allow-local DIR",
            path.display()
        ),
    ))
}

/// Counts the streams each client has open.
#[derive(Clone)]
pub struct Streams {
    per_client: usize,
    open: Arc<Mutex<HashMap<Client, usize>>>,
}

/// One open stream, counted until it drops (when the stream ends or its
/// client goes away).
pub struct StreamSlot {
    client: Client,
    open: Arc<Mutex<HashMap<Client, usize>>>,
}

impl Streams {
    pub fn new(per_client: usize) -> Streams {
        Streams { per_client, open: Arc::default() }
    }

    /// A slot for one more stream of `client`, or 429.
    pub fn open(&self, client: Option<Client>) -> Answer<StreamSlot> {
        let client = client.unwrap_or(Client::Unix { uid: u32::MAX });
        let mut open = self.open.lock().expect("stream table");
        let count = open.entry(client).or_default();
        if *count >= self.per_client {
            return Err(Problem::with_status(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorKind::Unavailable,
                format!("{} streams are open for this client already: finish one first", self.per_client),
            ));
        }
        *count += 1;
        Ok(StreamSlot { client, open: self.open.clone() })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("stream table");
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}
