//! [`ServiceBuilderExt`]: one `ServiceBuilder` method per middleware.

use tower::ServiceBuilder;
#[cfg(feature = "metrics")]
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
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    #[cfg(feature = "metrics")]
    fn http_metrics<R, C>(
        self,
        layer: crate::metrics::HttpMetricsLayer<R, C>,
    ) -> ServiceBuilder<Stack<crate::metrics::HttpMetricsLayer<R, C>, L>> {
        self.layer(layer)
    }
}
