//! The daemon's own metrics, in the store's registry beside the library's:
//! requests counted by method, route and status, and their latency to the
//! response's head, by method and route.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use std::time::Instant;
use vmimg_store::Store;

/// Upper bounds, in seconds, of the latency buckets.
const LATENCY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

/// Latency histograms by route, made with the daemon's buckets.
type Latencies = Family<RouteLabels, Histogram, fn() -> Histogram>;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

/// Request counts and latencies.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Latencies,
}

impl HttpMetrics {
    /// Made and registered in `store`'s registry as `vmimg_http_*`.
    pub fn register(store: &Store) -> HttpMetrics {
        let latency = Latencies::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
        let metrics = HttpMetrics { requests: Family::default(), latency };
        let mut registry = store.metrics().registry();
        let ours = registry.sub_registry_with_prefix("vmimg_http");
        ours.register("requests", "HTTP requests answered", metrics.requests.clone());
        ours.register_with_unit(
            "request_duration",
            "Time from a request to its response's head",
            prometheus_client::registry::Unit::Seconds,
            metrics.latency.clone(),
        );
        metrics
    }
}

/// Counts and times every request.
pub async fn track(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    metrics.requests.get_or_create(&RequestLabels { method: method.clone(), route: route.clone(), status }).inc();
    metrics.latency.get_or_create(&RouteLabels { method, route }).observe(started.elapsed().as_secs_f64());
    response
}
