//! [`ServiceBuilderExt`]: one `ServiceBuilder` method per middleware.

use tower::ServiceBuilder;
#[cfg(any(feature = "metrics", feature = "rate-limit", feature = "cache"))]
use tower::layer::util::Stack;

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

/// Adds this crate's layers to a [`tower::ServiceBuilder`].
///
/// Sealed: implemented for `ServiceBuilder` only.
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// Adds [`HttpMetricsLayer`](crate::metrics::HttpMetricsLayer).
    #[cfg(feature = "metrics")]
    fn http_metrics<R, C>(
        self,
        layer: crate::metrics::HttpMetricsLayer<R, C>,
    ) -> ServiceBuilder<Stack<crate::metrics::HttpMetricsLayer<R, C>, L>>;

    /// Adds [`RateLimitLayer`](crate::rate_limit::RateLimitLayer).
    #[cfg(feature = "rate-limit")]
    fn rate_limit<K, S, R>(
        self,
        layer: crate::rate_limit::RateLimitLayer<K, S, R>,
    ) -> ServiceBuilder<Stack<crate::rate_limit::RateLimitLayer<K, S, R>, L>>;

    /// Adds [`ResponseCacheLayer`](crate::cache::ResponseCacheLayer).
    #[cfg(feature = "cache")]
    fn response_cache(
        self,
        layer: crate::cache::ResponseCacheLayer,
    ) -> ServiceBuilder<Stack<crate::cache::ResponseCacheLayer, L>>;
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
    fn rate_limit<K, S, R>(
        self,
        layer: crate::rate_limit::RateLimitLayer<K, S, R>,
    ) -> ServiceBuilder<Stack<crate::rate_limit::RateLimitLayer<K, S, R>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "cache")]
    fn response_cache(
        self,
        layer: crate::cache::ResponseCacheLayer,
    ) -> ServiceBuilder<Stack<crate::cache::ResponseCacheLayer, L>> {
        self.layer(layer)
    }
}
