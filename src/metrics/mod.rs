//! Latency histograms for HTTP servers.
//!
//! [`HttpMetricsLayer`] records, for every request:
//!
//! | metric (Prometheus name) | kind | labels |
//! |---|---|---|
//! | `http.server.request.duration` (`http_server_request_duration_seconds`) | histogram, seconds | method, route, status |
//! | `http.server.requests` (`http_server_requests_total`) | counter | method, route, status, outcome |
//! | `http.server.active_requests` (`http_server_active_requests`) | gauge | method, route |
//!
//! Labels follow OpenTelemetry: `http.request.method` (the nine standard methods, else
//! `_OTHER`), `http.route` (the route *template*, never the raw path: raw paths make
//! unbounded series, which is an outage of your metrics store), `http.response.status_code`
//! (`error` when the service returned an error instead of a response), and `outcome`
//! (`success`/`failure` from the crate's shared [classifier](crate::classify)).
//!
//! A request is timed until its response body ends, not until the handler returns, and it
//! stays in the in-flight gauge until then. The gauge is held by a guard that cannot leak:
//! a cancelled request, a panicking handler or a client that hangs up mid-body all release
//! it.
//!
//! The layer reports through the [`metrics`](https://docs.rs/metrics) facade and installs
//! no exporter. Install your recorder before serving: handles are registered with the
//! recorder on the first request of each label set and reused after that, which is what
//! makes this layer cheap. Histogram buckets are the exporter's business; use
//! [`DEFAULT_DURATION_BUCKETS`] (OpenTelemetry's advice) with it.
//!
//! # Examples
//!
//! Default: route templates from axum's `MatchedPath`. Apply with `Router::layer` so the
//! route is matched before the layer runs.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
//! use tower_scale::metrics::{HttpMetricsLayer, DEFAULT_DURATION_BUCKETS, DURATION_METRIC};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let prometheus = PrometheusBuilder::new()
//!     .with_recommended_naming(true)
//!     .set_buckets_for_metric(Matcher::Full(DURATION_METRIC.into()), DEFAULT_DURATION_BUCKETS)?
//!     .install_recorder()?;
//!
//! let app = Router::new()
//!     .route("/products/{id}", get(|| async { "a product" }))
//!     .layer(HttpMetricsLayer::new())
//!     .route("/metrics", get(move || std::future::ready(prometheus.render())));
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! Customised: a route function for another router, 429 counted as a failure, and a
//! tighter cap on route labels.
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_scale::classify::HttpClassifier;
//! use tower_scale::metrics::{route_fn, HttpMetricsLayer};
//! use tower_scale::ServiceBuilderExt;
//!
//! let layer = HttpMetricsLayer::builder()
//!     .route_label(route_fn(|req| match req.uri.path() {
//!         "/" => Some("/".into()),
//!         p if p.starts_with("/items/") => Some("/items/{id}".into()),
//!         _ => None,
//!     }))
//!     .classifier(HttpClassifier::default().failure_status(429)?)
//!     .max_routes(100)
//!     .build()?;
//!
//! let svc = ServiceBuilder::new()
//!     .http_metrics(layer)
//!     .service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hi")))
//!     });
//! # let _ = svc;
//! # Ok::<(), tower_scale::ConfigError>(())
//! ```
//!
//! # Errors
//!
//! The layer never fails a request; the inner service's errors pass through unchanged and
//! are counted with status `error`. [`HttpMetricsLayerBuilder::build`] returns a
//! [`ConfigError`](crate::ConfigError) for empty names or a zero route cap.
//!
//! # Panics
//!
//! [`ResponseFuture`] panics if polled again after it completed, like any future.
//!
//! # Cancel safety
//!
//! Dropping the response future or the response body at any point ends the measurement:
//! the in-flight gauge is decremented exactly once. A future dropped before the inner
//! service answered records no duration (there was no response to time).

mod body;
mod future;
mod handles;
mod layer;
mod route;
mod service;

pub use body::MetricsBody;
pub use future::ResponseFuture;
pub use layer::{
    ACTIVE_METRIC, DEFAULT_DURATION_BUCKETS, DURATION_METRIC, HttpMetricsLayer,
    HttpMetricsLayerBuilder, REQUESTS_METRIC,
};
pub use route::{DefaultRouteLabel, RouteFn, RouteLabel, route_fn};
pub use service::HttpMetrics;
