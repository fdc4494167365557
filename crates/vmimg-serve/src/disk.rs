//! `GET`/`HEAD /v1/images/{name}/disk`: a ready image's file, with its
//! length, a strong ETag, and single ranges; holes read as zeros.

use crate::app::App;
use crate::guard::{StreamSlot, check_name};
use crate::listen::Client;
use crate::problem::{Answer, Problem};
use crate::ranges;
use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, Method};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use vmimg_store::ErrorKind;

/// Bytes read from the file at a time.
const CHUNK: usize = 1 << 20;
/// Chunks read ahead of the client.
const READ_AHEAD: usize = 4;

/// The image's disk file.
#[utoipa::path(method(get, head), path = "/v1/images/{name}/disk", tag = "images",
    params(("name" = String, Path), ("Range" = Option<String>, Header, description = "One byte range")),
    responses(
        (status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304), (status = 416), (status = "default", body = Problem)))]
pub async fn disk(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    client: Option<Extension<Client>>,
    method: Method,
    headers: HeaderMap,
) -> Answer<Response> {
    check_name("image", &name)?;
    let found = app.blocking(move |store| {
        let Some(record) = store.find_image(&name)? else { return Ok(None) };
        let path = store.image_file(&record);
        let file = File::open(&path).map_err(|source| vmimg_store::Error::Io { action: "open", path, source })?;
        Ok(Some((record, file)))
    });
    let Some((record, file)) = found.await? else { return Err(Problem::new(ErrorKind::NotFound, "no such image")) };
    let meta = file.metadata().map_err(|e| Problem::new(ErrorKind::Internal, format!("the disk's metadata: {e}")))?;
    let len = meta.len();
    // The file changes only when a mutable image is written in place: its time and length say so.
    let etag = format!("\"{}-{}.{}-{len}\"", record.name, meta.mtime(), meta.mtime_nsec());
    let (mut response, range) = ranges::answer(&method, &headers, len, &etag);
    if let Some(range) = range {
        let slot = app.streams.open(client.map(|c| c.0))?;
        *response.body_mut() = file_body(file, range, !record.mutable, slot);
    }
    Ok(response)
}

/// Bytes `range` of `file` as a body: read ahead on a blocking thread, a
/// few chunks at most, stopping when the client goes away. `slot` is held
/// until the body ends. A disk that cannot change is mapped a chunk at a
/// time, so that its bytes go from the page cache to the socket in one copy
/// (as nginx's sendfile does) and no more than the read-ahead is mapped; a
/// mutable image, which its owner may truncate under a mapping, is read.
fn file_body(file: File, range: Range<u64>, mapped: bool, slot: StreamSlot) -> Body {
    let (sender, receiver) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut at = range.start;
        while at < range.end {
            let len = CHUNK.min((range.end - at) as usize);
            let chunk = if mapped { map_chunk(&file, at, len) } else { read_chunk(&file, at, len) };
            let failed = chunk.is_err();
            if sender.blocking_send(chunk).is_err() || failed {
                return;
            }
            at += len as u64;
        }
    });
    crate::app::channel_body(receiver, slot)
}

/// `len` bytes of `file` at `at`, mapped, its pages faulted in here (a
/// blocking thread) rather than where the async writer reads them.
fn map_chunk(file: &File, at: u64, len: usize) -> std::io::Result<Bytes> {
    // SAFETY: the file is an immutable image's disk: nothing truncates or
    // writes it while it is mapped (removing the image unlinks it, which
    // leaves the mapping valid).
    let map = unsafe { memmap2::MmapOptions::new().offset(at).len(len).map(file)? };
    let touched = map.iter().step_by(4096).fold(0u8, |sum, byte| sum ^ byte);
    std::hint::black_box(touched);
    Ok(Bytes::from_owner(map))
}

/// `len` bytes of `file` at `at`, read.
fn read_chunk(file: &File, at: u64, len: usize) -> std::io::Result<Bytes> {
    let mut buffer = Vec::with_capacity(len);
    match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buffer), at)? {
        read if read == len => Ok(Bytes::from(buffer)),
        _ => Err(std::io::Error::other("the disk is shorter than it was when the answer began")),
    }
}
