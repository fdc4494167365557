//! `GET`/`HEAD /dl/{reference}`: a cloud image streamed straight from its
//! registry, as `vmimg cat` streams it, without touching the store.
//!
//! What epoch's `/dl/` lacks, this has: the reference is taken as written
//! (tag or digest, slashes and colons included) and pinned to its
//! manifest's digest (the ETag), the answer has a `Content-Length`, single
//! ranges are served, and every part the answer covers is verified as it
//! passes. The last bytes are held back until the last part is verified:
//! a part that fails its digest aborts the connection, so no client can
//! take a cut or corrupt stream for a whole one.

use crate::app::App;
use crate::guard::StreamSlot;
use crate::listen::Client;
use crate::problem::{Answer, Problem};
use crate::ranges;
use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;
use vmimg_oci::Reference;
use vmimg_oci::artifact::CloudImage;

/// A cloud image's disk, its parts joined, verified as they pass.
#[utoipa::path(method(get, head), path = "/dl/{reference}", tag = "images",
    params(("reference" = String, Path, description = "REGISTRY/REPOSITORY[:TAG|@DIGEST], as written"),
           ("Range" = Option<String>, Header, description = "One byte range")),
    responses(
        (status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 416), (status = "default", body = Problem)))]
pub async fn download(
    State(app): State<Arc<App>>,
    Path(reference): Path<String>,
    client: Option<Extension<Client>>,
    method: Method,
    headers: HeaderMap,
) -> Answer<Response> {
    let reference = Reference::parse(&reference).map_err(|e| Problem::bad_request(e.to_string()))?;
    let retries = LogRetries(reference.to_string());
    let (pinned, image) = app.store.registry()?.cloud_image(&reference, app.store.arch().name(), &retries).await?;
    let len = image.size();
    let etag = format!("\"{}\"", pinned.digest());
    let (mut response, range) = ranges::answer(&method, &headers, len, &etag);
    let digest = HeaderValue::from_str(&pinned.digest().to_string()).expect("a digest is ASCII");
    response.headers_mut().insert("docker-content-digest", digest);
    if let Some(range) = range {
        let slot = app.streams.open(client.map(|c| c.0))?;
        *response.body_mut() = stream(app.clone(), pinned.into_reference(), image, range, slot);
    }
    Ok(response)
}

/// The disk's bytes `range` as a body that ends cleanly only once every
/// part it covers is verified, and with an error otherwise.
fn stream(
    app: Arc<App>,
    reference: Reference,
    image: CloudImage,
    range: std::ops::Range<u64>,
    slot: StreamSlot,
) -> Body {
    let (sender, receiver) = mpsc::channel::<io::Result<Bytes>>(8);
    tokio::spawn(async move {
        let mut out = HeldBack { sender: PollSender::new(sender.clone()), held: None };
        let streamed = match app.store.registry() {
            Ok(registry) => {
                let retries = LogRetries(reference.to_string());
                let streamed = registry.stream_disk_range(&reference, &image, range, &mut out, &retries).await;
                streamed.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let last = match streamed {
            Ok(()) => out.held.take().map(Ok),
            Err(message) => {
                tracing::warn!(%reference, error = %message, "a /dl stream failed: aborting it");
                Some(Err(io::Error::other(message)))
            }
        };
        if let Some(last) = last {
            let _ = sender.send(last).await;
        }
    });
    crate::app::channel_body(receiver, slot)
}

/// Sends what is written to it on a channel, one write behind: the last
/// write is held until the writer's owner sends it (or an error instead).
struct HeldBack {
    sender: PollSender<io::Result<Bytes>>,
    held: Option<Bytes>,
}

impl AsyncWrite for HeldBack {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.held.is_some() {
            ready!(this.sender.poll_reserve(cx)).map_err(|_| gone())?;
            let held = this.held.take().expect("checked");
            this.sender.send_item(Ok(held)).map_err(|_| gone())?;
        }
        this.held = Some(Bytes::copy_from_slice(buf));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The client went away: the stream stops.
fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the client went away")
}

/// Logs the registry's retries for a `/dl/` of the reference it holds: its
/// client sees only a slow answer.
struct LogRetries(String);

impl vmimg_fetch::Progress for LogRetries {
    fn retrying(&self, error: &(dyn std::error::Error + 'static), delay: std::time::Duration) {
        tracing::warn!(reference = %self.0, %error, ?delay, "retrying a registry request");
    }
}
