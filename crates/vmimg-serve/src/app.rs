//! The daemon's state and its routes, with the OpenAPI document generated
//! from the handlers' annotations.

use crate::guard::{StreamSlot, Streams, Token, authenticate};
use crate::http_metrics::{HttpMetrics, track};
use crate::jobs::Jobs;
use crate::problem::{Answer, Problem};
use crate::{admin, disk, dl, images};
use axum::Router;
use axum::body::Body;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use std::sync::Arc;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa::openapi::{Content, RefOr};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use vmimg_store::{ErrorKind, Manager, Store};

/// What every handler shares.
pub struct App {
    pub store: Store,
    pub builds: Manager,
    pub jobs: Arc<Jobs>,
    pub streams: Streams,
    /// The canonical directories clients may name local sources in.
    pub local_roots: Vec<std::path::PathBuf>,
}

impl App {
    /// Runs `work` on the store on a blocking thread (record reads, directory
    /// walks), never on an async one.
    pub async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> vmimg_store::Result<T> + Send + 'static,
    ) -> Answer<T> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || work(&store)).await {
            Ok(done) => done.map_err(Problem::from),
            Err(e) => Err(Problem::new(ErrorKind::Internal, format!("a blocking task failed: {e}"))),
        }
    }
}

/// The limits the routes enforce.
#[derive(Debug, Clone, Copy)]
pub struct RouteLimits {
    pub body_bytes: usize,
    /// A request body not received in this long is cut (408).
    pub body_timeout: std::time::Duration,
    /// A response whose head is not ready in this long is given up (503).
    pub answer_timeout: std::time::Duration,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "vmimg", description = "VM disk images from any source, verified, converted and ready to boot."),
    paths(dl::download, healthz, metrics, openapi_json),
    components(schemas(Problem)),
    tags(
        (name = "images", description = "Images in the store and being made; their disks"),
        (name = "instances", description = "Writable disks made from images"),
        (name = "builds", description = "Container images being built into disks"),
        (name = "store", description = "The store as a whole"),
        (name = "daemon", description = "Health, metrics and this document"),
    )
)]
struct ApiDoc;

/// The API's routes and their OpenAPI document.
fn api() -> (Router<Arc<App>>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(images::list, images::create))
        .routes(routes!(images::get, images::delete))
        .routes(routes!(images::events))
        .routes(routes!(disk::disk))
        .routes(routes!(admin::create_instance, admin::list_instances))
        .routes(routes!(admin::get_instance, admin::delete_instance))
        .routes(routes!(admin::list_builds))
        .routes(routes!(admin::get_build, admin::delete_build))
        .routes(routes!(admin::usage))
        .routes(routes!(admin::gc))
        .split_for_parts();
    complete(&mut doc);
    (router, doc)
}

/// Completes what the annotations leave out and OpenAPI 3.1 requires or
/// clients rely on: every response has a description (its status's reason
/// phrase where the annotation gives none), problems are listed under the
/// media type they are sent as, and a HEAD operation's id differs from its
/// GET's (one handler serves both).
fn complete(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        let get_id = item.get.as_ref().and_then(|get| get.operation_id.clone());
        if let Some(head) = &mut item.head
            && head.operation_id.is_some()
            && head.operation_id == get_id
        {
            head.operation_id = get_id.map(|id| format!("{id}_head"));
        }
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            for (status, response) in &mut operation.responses.responses {
                let RefOr::T(response) = response else { continue };
                if response.description.is_empty() {
                    response.description = describe(status).to_owned();
                }
                let json = response.content.get("application/json");
                if json.is_some_and(is_problem)
                    && let Some(content) = response.content.shift_remove("application/json")
                {
                    response.content.insert("application/problem+json".to_owned(), content);
                }
            }
        }
    }
}

/// The description of a response of `status` (a code, or `default`).
fn describe(status: &str) -> &'static str {
    if status == "default" {
        return "What went wrong (RFC 9457)";
    }
    StatusCode::from_bytes(status.as_bytes()).ok().and_then(|s| s.canonical_reason()).unwrap_or("The answer")
}

fn is_problem(content: &RefOr<Content>) -> bool {
    let RefOr::T(content) = content else { return false };
    matches!(&content.schema, Some(RefOr::Ref(r)) if r.ref_location == "#/components/schemas/Problem")
}

/// The OpenAPI 3.1 document of the daemon's API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().1
}

/// Every route, with its limits, authentication and metrics.
pub fn router(app: Arc<App>, token: Option<Token>, limits: RouteLimits) -> Router {
    let (api, doc) = api();
    let doc = Bytes::from(doc.to_json().expect("the OpenAPI document serializes"));
    let http_metrics = HttpMetrics::register(&app.store);
    api.route("/dl/{*reference}", get(dl::download).head(dl::download))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(move || openapi_json(doc.clone())))
        .layer(from_fn_with_state(token, authenticate))
        .route("/healthz", get(healthz))
        .route_layer(from_fn_with_state(http_metrics, track))
        .layer(RequestBodyLimitLayer::new(limits.body_bytes))
        .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, limits.answer_timeout))
        .fallback(|| async { Problem::new(ErrorKind::NotFound, "no such endpoint: see /openapi.json") })
        .layer(axum::middleware::from_fn(crate::problem::problems_only))
        .layer(TraceLayer::new_for_http())
        .with_state(app)
}

/// Whether the daemon answers.
#[utoipa::path(get, path = "/healthz", tag = "daemon", responses((status = 200, body = String)))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// The library's metrics and the daemon's, as OpenMetrics text.
#[utoipa::path(get, path = "/metrics", tag = "daemon",
    responses((status = 200, content_type = "application/openmetrics-text", body = String)))]
async fn metrics(axum::extract::State(app): axum::extract::State<Arc<App>>) -> Answer<impl IntoResponse> {
    let text = app.blocking(|store| Ok(store.metrics().encode())).await?;
    let kind = HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");
    Ok(([(header::CONTENT_TYPE, kind)], text))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "daemon",
    responses((status = 200, content_type = "application/json", body = Object)))]
async fn openapi_json(doc: Bytes) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], doc)
}

/// A body of the chunks `receiver` gets; `slot` is held until it ends or
/// its client goes away. An error item aborts the answer.
pub fn channel_body(receiver: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>, slot: StreamSlot) -> Body {
    Body::from_stream(futures_util::stream::unfold((receiver, slot), |(mut receiver, slot)| async move {
        receiver.recv().await.map(|item| (item, (receiver, slot)))
    }))
}
