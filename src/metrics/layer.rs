//! [`HttpMetricsLayer`] and its builder.

use std::sync::Arc;

use ::metrics::SharedString;
use tower_layer::Layer;

use super::handles::{Names, Registry, Routes};
use super::route::{DefaultRouteLabel, RouteLabel};
use super::service::HttpMetrics;
use crate::ConfigError;
use crate::classify::HttpClassifier;

/// Default name of the request duration histogram (OpenTelemetry `http.server.request.duration`).
pub const DURATION_METRIC: &str = "http.server.request.duration";
/// Default name of the finished-requests counter.
pub const REQUESTS_METRIC: &str = "http.server.requests";
/// Default name of the in-flight gauge (OpenTelemetry `http.server.active_requests`).
pub const ACTIVE_METRIC: &str = "http.server.active_requests";

/// OpenTelemetry's advised bucket boundaries for `http.server.request.duration`, in seconds.
///
/// Histogram buckets belong to the exporter, not to the `metrics` facade: pass these to it,
/// e.g. `PrometheusBuilder::set_buckets_for_metric(Matcher::Full(DURATION_METRIC.into()), DEFAULT_DURATION_BUCKETS)`.
pub const DEFAULT_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Applies [`HttpMetrics`] to a service. Cheap to clone; clones share their metric handles.
#[derive(Debug, Clone)]
pub struct HttpMetricsLayer<R = DefaultRouteLabel, C = HttpClassifier> {
    registry: Arc<Registry>,
    route: R,
    classifier: C,
}

impl HttpMetricsLayer {
    /// The layer with defaults: route from axum's `MatchedPath`, the default classifier,
    /// OpenTelemetry metric names, at most 1,000 route labels.
    pub fn new() -> Self {
        Self::builder()
            .build()
            .expect("the default configuration is valid")
    }

    /// Starts a builder.
    pub fn builder() -> HttpMetricsLayerBuilder {
        HttpMetricsLayerBuilder {
            route: DefaultRouteLabel,
            classifier: HttpClassifier::default(),
            duration: DURATION_METRIC.into(),
            requests: REQUESTS_METRIC.into(),
            active: ACTIVE_METRIC.into(),
            unmatched: "unmatched".into(),
            overflow: "overflow".into(),
            max_routes: 1000,
        }
    }
}

impl Default for HttpMetricsLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S, R: Clone, C: Clone> Layer<S> for HttpMetricsLayer<R, C> {
    type Service = HttpMetrics<S, R, C>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpMetrics {
            inner,
            routes: Arc::new(Routes::new(Arc::clone(&self.registry))),
            route: self.route.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// Builds an [`HttpMetricsLayer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct HttpMetricsLayerBuilder<R = DefaultRouteLabel, C = HttpClassifier> {
    route: R,
    classifier: C,
    duration: String,
    requests: String,
    active: String,
    unmatched: String,
    overflow: String,
    max_routes: usize,
}

impl<R, C> HttpMetricsLayerBuilder<R, C> {
    /// Where the route label comes from (default: axum `MatchedPath`).
    pub fn route_label<R2: RouteLabel>(self, route: R2) -> HttpMetricsLayerBuilder<R2, C> {
        HttpMetricsLayerBuilder {
            route,
            classifier: self.classifier,
            duration: self.duration,
            requests: self.requests,
            active: self.active,
            unmatched: self.unmatched,
            overflow: self.overflow,
            max_routes: self.max_routes,
        }
    }

    /// The classifier that fills the counter's `outcome` label (default: 5xx and errors fail).
    pub fn classifier<C2: Clone + Send + Sync + 'static>(
        self,
        classifier: C2,
    ) -> HttpMetricsLayerBuilder<R, C2> {
        HttpMetricsLayerBuilder {
            route: self.route,
            classifier,
            duration: self.duration,
            requests: self.requests,
            active: self.active,
            unmatched: self.unmatched,
            overflow: self.overflow,
            max_routes: self.max_routes,
        }
    }

    /// Names of the duration histogram, requests counter and in-flight gauge.
    pub fn metric_names(
        mut self,
        duration: impl Into<String>,
        requests: impl Into<String>,
        active: impl Into<String>,
    ) -> Self {
        self.duration = duration.into();
        self.requests = requests.into();
        self.active = active.into();
        self
    }

    /// The `http.route` value of requests with no route (default `unmatched`).
    pub fn unmatched_label(mut self, label: impl Into<String>) -> Self {
        self.unmatched = label.into();
        self
    }

    /// At most this many distinct route labels (default 1,000); requests of further routes
    /// are counted under the overflow label (default `overflow`), so a route function that
    /// leaks raw paths cannot grow the series without bound.
    pub fn max_routes(mut self, max: usize) -> Self {
        self.max_routes = max;
        self
    }

    /// The `http.route` value used past `max_routes` (default `overflow`).
    pub fn overflow_label(mut self, label: impl Into<String>) -> Self {
        self.overflow = label.into();
        self
    }

    /// Validates the configuration.
    pub fn build(self) -> Result<HttpMetricsLayer<R, C>, ConfigError> {
        crate::describe::once();
        for (setting, value) in [
            ("duration metric name", &self.duration),
            ("requests metric name", &self.requests),
            ("active metric name", &self.active),
            ("unmatched_label", &self.unmatched),
            ("overflow_label", &self.overflow),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::new(setting, "must not be empty"));
            }
        }
        if self.max_routes == 0 {
            return Err(ConfigError::new(
                "max_routes",
                "must be at least 1; every route would be counted as overflow",
            ));
        }
        let names = Names {
            duration: SharedString::from(self.duration),
            requests: SharedString::from(self.requests),
            active: SharedString::from(self.active),
            unmatched: Arc::from(self.unmatched),
            overflow: Arc::from(self.overflow),
        };
        Ok(HttpMetricsLayer {
            registry: Arc::new(Registry::new(names, self.max_routes)),
            route: self.route,
            classifier: self.classifier,
        })
    }
}
