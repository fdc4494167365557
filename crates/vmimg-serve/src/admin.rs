//! Instances, builds and the store as a whole: `/v1/instances`,
//! `/v1/builds`, `/v1/store/usage`, `/v1/store/gc`.

use crate::app::App;
use crate::guard::check_name;
use crate::problem::{Answer, JsonBody, Problem};
use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;
use vmimg_store::{Build, GcOptions, GcReport, Instance, InstanceFormat, InstanceRequest, Usage};

/// An instance to make: a writable disk from a ready image.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstance {
    /// The image's name.
    pub image: String,
    /// The instance's name; `<image>-<n>` when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// A virtual size in bytes, at least the image's.
    #[serde(default)]
    pub size: Option<u64>,
    /// qcow2 (a copy-on-write overlay, the default) or raw (a copy).
    #[serde(default)]
    pub format: Option<InstanceFormat>,
}

#[utoipa::path(post, path = "/v1/instances", tag = "instances", request_body = CreateInstance,
    responses((status = 201, body = Instance), (status = "default", body = Problem)))]
pub async fn create_instance(
    State(app): State<Arc<App>>,
    JsonBody(request): JsonBody<CreateInstance>,
) -> Answer<Response> {
    check_name("image", &request.image)?;
    if let Some(name) = &request.name {
        check_name("instance", name)?;
    }
    let image = request.image.clone();
    let record = app.blocking(move |store| store.find_image(&image)).await?;
    let record = record.ok_or_else(|| Problem::not_found("image", &request.image))?;
    let request = InstanceRequest {
        image: record.name,
        name: request.name,
        size: request.size,
        format: request.format.unwrap_or(InstanceFormat::Qcow2),
    };
    let instance = app.store.create_instance(&request).await?;
    Ok((StatusCode::CREATED, Json(instance)).into_response())
}

#[utoipa::path(get, path = "/v1/instances", tag = "instances",
    responses((status = 200, body = Vec<Instance>), (status = "default", body = Problem)))]
pub async fn list_instances(State(app): State<Arc<App>>) -> Answer<Json<Vec<Instance>>> {
    Ok(Json(app.blocking(|store| store.instances()).await?))
}

#[utoipa::path(get, path = "/v1/instances/{name}", tag = "instances", params(("name" = String, Path)),
    responses((status = 200, body = Instance), (status = "default", body = Problem)))]
pub async fn get_instance(State(app): State<Arc<App>>, Path(name): Path<String>) -> Answer<Json<Instance>> {
    check_name("instance", &name)?;
    let instances = app.blocking(|store| store.instances()).await?;
    instances.into_iter().find(|i| i.record.name == name).map(Json).ok_or_else(|| Problem::not_found("instance", &name))
}

#[utoipa::path(delete, path = "/v1/instances/{name}", tag = "instances", params(("name" = String, Path)),
    responses((status = 204), (status = "default", body = Problem)))]
pub async fn delete_instance(State(app): State<Arc<App>>, Path(name): Path<String>) -> Answer<StatusCode> {
    check_name("instance", &name)?;
    app.store.remove_instance(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every build of container images, queued, running or ended.
#[utoipa::path(get, path = "/v1/builds", tag = "builds",
    responses((status = 200, body = Vec<Build>), (status = "default", body = Problem)))]
pub async fn list_builds(State(app): State<Arc<App>>) -> Answer<Json<Vec<Build>>> {
    let builds = app.builds.clone();
    Ok(Json(app.blocking(move |_| builds.list()).await?))
}

#[utoipa::path(get, path = "/v1/builds/{id}", tag = "builds", params(("id" = String, Path)),
    responses((status = 200, body = Build), (status = "default", body = Problem)))]
pub async fn get_build(State(app): State<Arc<App>>, Path(id): Path<String>) -> Answer<Json<Build>> {
    check_name("build", &id)?;
    build(&app, &id).await?.map(Json).ok_or_else(|| Problem::not_found("build", &id))
}

/// The build `id`'s record, read on a blocking thread.
async fn build(app: &App, id: &str) -> Answer<Option<Build>> {
    let (builds, id) = (app.builds.clone(), id.to_owned());
    app.blocking(move |_| builds.get(&id)).await
}

/// Cancels a queued or running build (200 with it, cancelled), or removes
/// the record of one that ended (204).
#[utoipa::path(delete, path = "/v1/builds/{id}", tag = "builds", params(("id" = String, Path)),
    responses((status = 200, body = Build), (status = 204), (status = "default", body = Problem)))]
pub async fn delete_build(State(app): State<Arc<App>>, Path(id): Path<String>) -> Answer<Response> {
    check_name("build", &id)?;
    let build = build(&app, &id).await?.ok_or_else(|| Problem::not_found("build", &id))?;
    if build.status.is_done() {
        app.builds.delete(&id, false).await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok(Json(app.builds.cancel(&id).await?).into_response())
}

/// Bytes on disk, by part, and hypeman's two totals.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoreUsage {
    #[serde(flatten)]
    pub usage: Usage,
    /// Every image (disks and records): hypeman's TotalImageBytes.
    pub total_image_bytes: u64,
    /// The layer cache: hypeman's TotalOCICacheBytes.
    pub total_oci_cache_bytes: u64,
}

#[utoipa::path(get, path = "/v1/store/usage", tag = "store",
    responses((status = 200, body = StoreUsage), (status = "default", body = Problem)))]
pub async fn usage(State(app): State<Arc<App>>) -> Answer<Json<StoreUsage>> {
    let builds = app.builds.clone();
    let (usage, totals) = app.blocking(move |store| Ok((store.usage(), builds.totals()))).await?;
    Ok(Json(StoreUsage {
        usage,
        total_image_bytes: totals.image_bytes,
        total_oci_cache_bytes: totals.layer_cache_bytes,
    }))
}

/// Removes what nothing needs (see `vmimg gc`).
#[utoipa::path(post, path = "/v1/store/gc", tag = "store", request_body = GcOptions,
    responses((status = 200, body = GcReport), (status = "default", body = Problem)))]
pub async fn gc(State(app): State<Arc<App>>, body: Option<JsonBody<GcOptions>>) -> Answer<Json<GcReport>> {
    let options = body.map(|b| b.0).unwrap_or_default();
    Ok(Json(app.store.gc(&options).await?))
}
