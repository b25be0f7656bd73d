//! The [`HttpMetrics`] service.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::body::{InFlight, MetricsBody};
use super::future::ResponseFuture;
use super::handles::Routes;
use super::route::RouteLabel;
use crate::classify::Classify;
use crate::key::RequestRef;

/// Records `http.server.request.duration`, `http.server.active_requests` and
/// `http.server.requests` for every request. Built by [`HttpMetricsLayer`](super::HttpMetricsLayer).
#[derive(Debug, Clone)]
pub struct HttpMetrics<S, R, C> {
    pub(crate) inner: S,
    pub(crate) routes: Arc<Routes>,
    pub(crate) route: R,
    pub(crate) classifier: C,
}

impl<S, R, C, ReqBody, ResBody> Service<Request<ReqBody>> for HttpMetrics<S, R, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    R: RouteLabel,
    C: Classify<Response<ResBody>, S::Error>,
{
    type Response = Response<MetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let route = self.route.route(RequestRef::from(&req));
        let entry = self.routes.entry(req.method(), route.as_deref());
        drop(route);
        let in_flight = InFlight::start(entry);
        ResponseFuture {
            inner: self.inner.call(req),
            in_flight: Some(in_flight),
            classifier: self.classifier.clone(),
        }
    }
}
