//! [`ServiceBuilderExt`]: one `ServiceBuilder` method per middleware.

use tower::ServiceBuilder;
#[cfg(any(
    feature = "metrics",
    feature = "rate-limit",
    feature = "cache",
    feature = "session",
    feature = "db-route",
    feature = "retry",
    feature = "circuit-breaker"
))]
use tower::layer::util::Stack;

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

/// Adds this crate's layers to a [`tower::ServiceBuilder`], one method per middleware,
/// each gated by its feature. Names differ from `ServiceBuilder`'s own methods (its
/// `rate_limit` and `retry` are tower's middleware): `rate_limit_by_key` and `http_retry`.
///
/// Sealed: implemented for `ServiceBuilder` only.
///
/// # Examples
///
/// ```
/// # #[cfg(all(feature = "metrics", feature = "rate-limit", feature = "session"))] {
/// use tower::ServiceBuilder;
/// use tower_scale::ServiceBuilderExt;
/// use tower_scale::metrics::HttpMetricsLayer;
/// use tower_scale::rate_limit::{Quota, RateLimitLayer};
/// use tower_scale::session::{MemoryStore, SessionLayer};
///
/// let stack = ServiceBuilder::new()
///     .http_metrics(HttpMetricsLayer::new())
///     .rate_limit_by_key(
///         RateLimitLayer::builder()
///             .quota("100/15m".parse::<Quota>().unwrap())
///             .build()
///             .unwrap(),
///     )
///     .session(SessionLayer::builder(MemoryStore::new()).build().unwrap());
/// # let _ = stack; }
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// Adds [`HttpMetricsLayer`](crate::metrics::HttpMetricsLayer).
    #[cfg(feature = "metrics")]
    fn http_metrics<R, C>(
        self,
        layer: crate::metrics::HttpMetricsLayer<R, C>,
    ) -> ServiceBuilder<Stack<crate::metrics::HttpMetricsLayer<R, C>, L>>;

    /// Adds [`RateLimitLayer`](crate::rate_limit::RateLimitLayer).
    #[cfg(feature = "rate-limit")]
    fn rate_limit_by_key<K, S, R>(
        self,
        layer: crate::rate_limit::RateLimitLayer<K, S, R>,
    ) -> ServiceBuilder<Stack<crate::rate_limit::RateLimitLayer<K, S, R>, L>>;

    /// Adds [`SessionLayer`](crate::session::SessionLayer).
    #[cfg(feature = "session")]
    fn session(
        self,
        layer: crate::session::SessionLayer,
    ) -> ServiceBuilder<Stack<crate::session::SessionLayer, L>>;

    /// Adds [`ResponseCacheLayer`](crate::cache::ResponseCacheLayer).
    #[cfg(feature = "cache")]
    fn response_cache(
        self,
        layer: crate::cache::ResponseCacheLayer,
    ) -> ServiceBuilder<Stack<crate::cache::ResponseCacheLayer, L>>;

    /// Adds [`DbRouteLayer`](crate::db_route::DbRouteLayer).
    #[cfg(feature = "db-route")]
    fn db_route<P>(
        self,
        layer: crate::db_route::DbRouteLayer<P>,
    ) -> ServiceBuilder<Stack<crate::db_route::DbRouteLayer<P>, L>>;

    /// Adds [`RetryLayer`](crate::retry::RetryLayer) (HTTP requests).
    #[cfg(feature = "retry")]
    fn http_retry<C>(
        self,
        layer: crate::retry::RetryLayer<C>,
    ) -> ServiceBuilder<Stack<crate::retry::RetryLayer<C>, L>>;

    /// Adds [`RetryAnyLayer`](crate::retry::RetryAnyLayer) (requests that are `Clone`).
    #[cfg(feature = "retry")]
    fn retry_any<C>(
        self,
        layer: crate::retry::RetryAnyLayer<C>,
    ) -> ServiceBuilder<Stack<crate::retry::RetryAnyLayer<C>, L>>;

    /// Adds [`CircuitBreakerLayer`](crate::circuit_breaker::CircuitBreakerLayer).
    #[cfg(feature = "circuit-breaker")]
    fn circuit_breaker<K, C>(
        self,
        layer: crate::circuit_breaker::CircuitBreakerLayer<K, C>,
    ) -> ServiceBuilder<Stack<crate::circuit_breaker::CircuitBreakerLayer<K, C>, L>>;

    /// Adds [`OpenAs503Layer`](crate::circuit_breaker::OpenAs503Layer): an open breaker's
    /// refusal as a 503 response, above a `circuit_breaker`.
    #[cfg(feature = "circuit-breaker")]
    fn open_as_503(self) -> ServiceBuilder<Stack<crate::circuit_breaker::OpenAs503Layer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    #[cfg(feature = "metrics")]
    fn http_metrics<R, C>(
        self,
        layer: crate::metrics::HttpMetricsLayer<R, C>,
    ) -> ServiceBuilder<Stack<crate::metrics::HttpMetricsLayer<R, C>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "rate-limit")]
    fn rate_limit_by_key<K, S, R>(
        self,
        layer: crate::rate_limit::RateLimitLayer<K, S, R>,
    ) -> ServiceBuilder<Stack<crate::rate_limit::RateLimitLayer<K, S, R>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "session")]
    fn session(
        self,
        layer: crate::session::SessionLayer,
    ) -> ServiceBuilder<Stack<crate::session::SessionLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "cache")]
    fn response_cache(
        self,
        layer: crate::cache::ResponseCacheLayer,
    ) -> ServiceBuilder<Stack<crate::cache::ResponseCacheLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "db-route")]
    fn db_route<P>(
        self,
        layer: crate::db_route::DbRouteLayer<P>,
    ) -> ServiceBuilder<Stack<crate::db_route::DbRouteLayer<P>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "retry")]
    fn http_retry<C>(
        self,
        layer: crate::retry::RetryLayer<C>,
    ) -> ServiceBuilder<Stack<crate::retry::RetryLayer<C>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "retry")]
    fn retry_any<C>(
        self,
        layer: crate::retry::RetryAnyLayer<C>,
    ) -> ServiceBuilder<Stack<crate::retry::RetryAnyLayer<C>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "circuit-breaker")]
    fn circuit_breaker<K, C>(
        self,
        layer: crate::circuit_breaker::CircuitBreakerLayer<K, C>,
    ) -> ServiceBuilder<Stack<crate::circuit_breaker::CircuitBreakerLayer<K, C>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "circuit-breaker")]
    fn open_as_503(self) -> ServiceBuilder<Stack<crate::circuit_breaker::OpenAs503Layer, L>> {
        self.layer(crate::circuit_breaker::OpenAs503Layer)
    }
}
