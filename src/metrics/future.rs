//! The response future of [`HttpMetrics`](super::HttpMetrics).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::body::{InFlight, MetricsBody};
use super::handles::ERROR_STATUS;
use crate::classify::Classify;

pin_project! {
    /// Response future of [`HttpMetrics`](super::HttpMetrics).
    pub struct ResponseFuture<F, C> {
        #[pin]
        pub(crate) inner: F,
        pub(crate) in_flight: Option<InFlight>,
        pub(crate) classifier: C,
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E, C> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Response<B>, E>>,
    C: Classify<Response<B>, E>,
{
    type Output = Result<Response<MetricsBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut in_flight = this
            .in_flight
            .take()
            .expect("ResponseFuture polled after completion");
        let class = this.classifier.classify(result.as_ref());
        match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let handles = in_flight.entry().status(status, class);
                in_flight.finished_as(handles);
                Poll::Ready(Ok(resp.map(|b| MetricsBody::new(b, in_flight))))
            }
            Err(e) => {
                let handles = in_flight.entry().status(ERROR_STATUS, class);
                in_flight.finished_as(handles);
                drop(in_flight);
                Poll::Ready(Err(e))
            }
        }
    }
}
