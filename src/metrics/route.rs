//! Where the `http.route` label comes from.

use std::borrow::Cow;
use std::fmt;

use crate::key::RequestRef;

/// Gives the route template of a request: the bounded label value for `http.route`.
///
/// Return the *template* (`/products/{id}`), never the raw path: every distinct value is a
/// new time series, and raw paths are unbounded. `None` means "unmatched"; those requests
/// share one label.
pub trait RouteLabel: Clone + Send + Sync + 'static {
    /// The route template of this request, if known.
    fn route<'a>(&self, req: RequestRef<'a>) -> Option<Cow<'a, str>>;
}

/// The default: axum's `MatchedPath` when the `axum` feature is on (apply the layer with
/// `Router::layer` or `route_layer` so the route is matched before it runs), otherwise
/// every request is unmatched. Supply [`route_fn`] for other routers.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct DefaultRouteLabel;

impl RouteLabel for DefaultRouteLabel {
    #[inline]
    fn route<'a>(&self, req: RequestRef<'a>) -> Option<Cow<'a, str>> {
        #[cfg(feature = "axum")]
        {
            req.extensions
                .get::<axum::extract::MatchedPath>()
                .map(|m| Cow::Borrowed(m.as_str()))
        }
        #[cfg(not(feature = "axum"))]
        {
            let _ = req;
            None
        }
    }
}

/// A closure as a [`RouteLabel`]; see [`route_fn`].
#[derive(Clone)]
pub struct RouteFn<F>(F);

impl<F> fmt::Debug for RouteFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteFn").finish_non_exhaustive()
    }
}

/// Labels requests with a closure that maps a request to its route template.
///
/// ```
/// use tower_scale::metrics::{route_fn, HttpMetricsLayer};
/// let layer = HttpMetricsLayer::builder()
///     .route_label(route_fn(|req| {
///         req.uri.path().starts_with("/users/").then_some("/users/{id}".into())
///     }))
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
pub fn route_fn<F>(f: F) -> RouteFn<F>
where
    F: Fn(RequestRef<'_>) -> Option<Cow<'static, str>> + Clone + Send + Sync + 'static,
{
    RouteFn(f)
}

impl<F> RouteLabel for RouteFn<F>
where
    F: Fn(RequestRef<'_>) -> Option<Cow<'static, str>> + Clone + Send + Sync + 'static,
{
    fn route<'a>(&self, req: RequestRef<'a>) -> Option<Cow<'a, str>> {
        (self.0)(req)
    }
}
