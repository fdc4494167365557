//! `/v1/images`: list, create (202 while the image is made), get, delete,
//! and the event stream of an image being made.

use crate::app::App;
use crate::guard::check_name;
use crate::jobs::Job;
use crate::problem::{Answer, JsonBody, Problem};
use crate::view::Image;
use axum::Json;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;
use vmimg_store::{Arch, GetOptions, RootfsFormat};

/// What to get.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateImage {
    /// Any source the CLI takes: a catalog alias, a URL, a local path,
    /// `oci://REF`, `docker://REF`, `oci:DIR[:NAME]`, `oci-archive:FILE[:NAME]`.
    pub source: String,
    /// The digest a URL's or file's bytes must have (`sha256:…`).
    #[serde(default)]
    pub digest: Option<String>,
    /// What a container image becomes: ext4 (the default), erofs or cpio.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub format: Option<String>,
    /// The architecture to resolve aliases and indexes to (amd64, arm64);
    /// the host's by default.
    #[serde(default)]
    pub arch: Option<String>,
}

impl CreateImage {
    fn options(&self) -> Answer<GetOptions> {
        let bad = |e: vmimg_store::Error| Problem::bad_request(e.to_string());
        let digest = match &self.digest {
            Some(text) => Some(text.parse().map_err(|e| Problem::bad_request(format!("digest: {e}")))?),
            None => None,
        };
        let format = self.format.as_deref().map(str::parse::<RootfsFormat>).transpose().map_err(bad)?;
        let arch = self.arch.as_deref().map(str::parse::<Arch>).transpose().map_err(bad)?;
        Ok(GetOptions { digest, format, arch, ..GetOptions::default() })
    }
}

/// Every image: those in the store, then those being made or failed (an
/// image whose job still runs is shown as its job, as [`find`] does).
#[utoipa::path(get, path = "/v1/images", tag = "images",
    responses((status = 200, body = Vec<Image>), (status = "default", body = Problem)))]
pub async fn list(State(app): State<Arc<App>>) -> Answer<Json<Vec<Image>>> {
    let jobs = app.jobs.all();
    let running: HashSet<&str> =
        jobs.iter().filter(|(_, job)| !job.state().status.is_done()).map(|(key, _)| key.as_str()).collect();
    let summaries = app.blocking(|store| store.images()).await?;
    let mut images: Vec<Image> = summaries
        .iter()
        .filter(|s| !running.contains(s.record.name.as_str()))
        .map(|s| Image::ready(&s.record))
        .collect();
    let ready: HashSet<String> = images.iter().map(|i| i.name.clone()).collect();
    images.extend(jobs.iter().filter(|(key, _)| !ready.contains(key)).map(|(key, job)| Image::of_job(key, job)));
    Ok(Json(images))
}

/// Gets a source into the store: 200 with the image when it is there
/// already, else 202 at once with the image being made (poll it, or follow
/// its events). The same source asked by many clients is made once.
#[utoipa::path(post, path = "/v1/images", tag = "images", request_body = CreateImage,
    responses(
        (status = 200, description = "Ready already", body = Image),
        (status = 202, description = "Being made", body = Image),
        (status = "default", body = Problem)))]
pub async fn create(State(app): State<Arc<App>>, JsonBody(request): JsonBody<CreateImage>) -> Answer<Response> {
    let options = request.options()?;
    crate::guard::check_local(&request.source, app.store.catalog(), &app.local_roots)?;
    let plan = app.store.plan(&request.source, &options).await?;
    let key = plan.key().to_owned();
    let lookup = key.clone();
    if let Some(record) = app.blocking(move |store| store.lookup(&lookup)).await? {
        return Ok((StatusCode::OK, Json(Image::ready(&record))).into_response());
    }
    let job = app.jobs.start(plan, &request.source, &options).await?;
    let mut response = (StatusCode::ACCEPTED, Json(Image::of_job(&key, &job))).into_response();
    let location = HeaderValue::from_str(&format!("/v1/images/{key}")).expect("keys are ASCII");
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

/// One image, ready or being made.
#[utoipa::path(get, path = "/v1/images/{name}", tag = "images", params(("name" = String, Path)),
    responses((status = 200, body = Image), (status = "default", body = Problem)))]
pub async fn get(State(app): State<Arc<App>>, Path(name): Path<String>) -> Answer<Json<Image>> {
    check_name("image", &name)?;
    Ok(Json(find(&app, &name).await?))
}

/// Removes an image (409 while instances use it or it is being made), or
/// forgets a failed one.
#[utoipa::path(delete, path = "/v1/images/{name}", tag = "images", params(("name" = String, Path)),
    responses((status = 204), (status = "default", body = Problem)))]
pub async fn delete(State(app): State<Arc<App>>, Path(name): Path<String>) -> Answer<StatusCode> {
    check_name("image", &name)?;
    if app.jobs.is_running(&name) {
        return Err(Problem::new(vmimg_store::ErrorKind::InUse, format!("{name} is being made: wait for it to end")));
    }
    if let Some(record) = in_store(&app, &name).await? {
        app.store.remove_image(&record.name, false).await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    if app.jobs.forget_failed(&name) { Ok(StatusCode::NO_CONTENT) } else { Err(Problem::not_found("image", &name)) }
}

/// Server-Sent Events of an image being made: its state now, then every
/// change (at most ten a second), the last one `ready` or `failed`. Each
/// event's type is the status, its data the image object.
#[utoipa::path(get, path = "/v1/images/{name}/events", tag = "images", params(("name" = String, Path)),
    responses((status = 200, content_type = "text/event-stream", body = Image), (status = "default", body = Problem)))]
pub async fn events(State(app): State<Arc<App>>, Path(name): Path<String>) -> Answer<Response> {
    check_name("image", &name)?;
    if let Some(job) = app.jobs.get(&name) {
        return Ok(Sse::new(follow(name, job)).keep_alive(KeepAlive::default()).into_response());
    }
    let image = find(&app, &name).await?;
    let once = futures_util::stream::once(async move { Ok::<_, Infallible>(event(&image)) });
    Ok(Sse::new(once).into_response())
}

/// The image `name` names in the store.
async fn in_store(app: &App, name: &str) -> Answer<Option<vmimg_store::ImageRecord>> {
    let name = name.to_owned();
    app.blocking(move |store| store.find_image(&name)).await
}

/// The image `name` names: being made, in the store, or failed. A job
/// running is asked first: its image record is written before the job (and
/// a container build's record) ends, and an image is ready only once all
/// that it is made of says so.
async fn find(app: &App, name: &str) -> Answer<Image> {
    let job = app.jobs.get(name);
    if let Some(job) = job.as_ref().filter(|job| !job.state().status.is_done()) {
        return Ok(Image::of_job(name, job));
    }
    if let Some(record) = in_store(app, name).await? {
        return Ok(Image::ready(&record));
    }
    match job {
        Some(job) => Ok(Image::of_job(name, &job)),
        None => Err(Problem::not_found("image", name)),
    }
}

/// The job's states as events, until it ends.
fn follow(key: String, job: Arc<Job>) -> impl Stream<Item = Result<Event, Infallible>> {
    let receiver = job.subscribe();
    futures_util::stream::unfold((receiver, true, false), move |(mut receiver, first, ended)| {
        let (key, job) = (key.clone(), job.clone());
        async move {
            if ended {
                return None;
            }
            if !first {
                tokio::time::sleep(Duration::from_millis(100)).await;
                // A dropped sender with nothing unseen: the job is gone.
                receiver.changed().await.ok()?;
            }
            let status = receiver.borrow_and_update().status;
            let image = Image::of_job(&key, &job);
            Some((Ok(event(&image)), (receiver, false, status.is_done())))
        }
    })
}

fn event(image: &Image) -> Event {
    let name = serde_json::to_value(image.status).expect("a status serializes");
    Event::default().event(name.as_str().unwrap_or("status")).json_data(image).expect("an image serializes")
}
