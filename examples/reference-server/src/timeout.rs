//! The whole-request timeout: a request that takes longer than its limit is answered with
//! a status of its own (the server uses 503), and its handler is dropped.
//!
//! The timer is armed only when a request has to wait: the first poll of the inner future
//! that does not finish starts it, so the limit counts from the end of that poll (the
//! layer's future is polled at once after the call; work the inner service does within
//! the call or that first poll is not counted, as it cannot be interrupted anyway). A
//! request answered on its first poll (a cache hit, a refusal, a health check) reads no
//! clock and arms no timer. tower-http's
//! `TimeoutLayer`, which the server used before, polls its timer before the request, so
//! every request registered a timer with Tokio and took it out again
//! (`docs/benchmarks.md`, "End to end over HTTP").

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

/// Answers `status` to a request that takes longer than `limit` (see the module's docs).
#[derive(Clone, Copy, Debug)]
pub struct RequestTimeoutLayer {
    limit: Duration,
    status: http::StatusCode,
}

impl RequestTimeoutLayer {
    /// A request running longer than `limit` is answered `status`, with an empty body.
    pub fn new(status: http::StatusCode, limit: Duration) -> Self {
        Self { limit, status }
    }
}

impl<S> Layer<S> for RequestTimeoutLayer {
    type Service = RequestTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestTimeout {
            inner,
            layer: *self,
        }
    }
}

/// The service of [`RequestTimeoutLayer`].
#[derive(Clone, Debug)]
pub struct RequestTimeout<S> {
    inner: S,
    layer: RequestTimeoutLayer,
}

impl<S, B, ResB> Service<http::Request<B>> for RequestTimeout<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResB>>,
    ResB: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        TimeoutFuture {
            inner: self.inner.call(req),
            sleep: None,
            layer: self.layer,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`RequestTimeout`].
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: F,
        // Boxed: a `Sleep` is larger than the rest of the future, which every layer
        // outside moves, and most requests never need one.
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
        layer: RequestTimeoutLayer,
    }
}

impl<F, ResB, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<http::Response<ResB>, E>>,
    ResB: Default,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(res) = this.inner.poll(cx) {
            return Poll::Ready(res);
        }
        let limit = this.layer.limit;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if sleep.as_mut().poll(cx).is_ready() {
            let mut res = http::Response::new(ResB::default());
            *res.status_mut() = this.layer.status;
            return Poll::Ready(Ok(res));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn slow(
        takes: Duration,
    ) -> impl Service<
        http::Request<()>,
        Response = http::Response<String>,
        Error = std::convert::Infallible,
        Future = impl Future<Output = Result<http::Response<String>, std::convert::Infallible>>,
    > + Clone {
        tower::service_fn(move |_req: http::Request<()>| async move {
            tokio::time::sleep(takes).await;
            Ok::<_, std::convert::Infallible>(http::Response::new("done".to_owned()))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_past_its_limit_is_answered_with_the_status() {
        let svc = RequestTimeoutLayer::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        )
        .layer(slow(Duration::from_secs(31)));
        let started = tokio::time::Instant::now();
        let res = svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(res.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(res.body().is_empty());
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(30),
            "the limit, counted from the call"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_within_its_limit_is_answered_by_the_handler() {
        let svc = RequestTimeoutLayer::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        )
        .layer(slow(Duration::from_secs(29)));
        let res = svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(res.status(), http::StatusCode::OK);
        assert_eq!(res.body(), "done");
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_request_that_waits_arms_a_timer() {
        let layer = RequestTimeoutLayer::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        );
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut at_once = layer.layer(tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        }));
        let mut fut = std::pin::pin!(at_once.call(http::Request::new(())));
        assert!(fut.as_mut().poll(&mut cx).is_ready());
        assert!(
            fut.sleep.is_none(),
            "no timer for a request answered at once"
        );
        let mut waits = layer.layer(slow(Duration::from_secs(1)));
        let mut fut = std::pin::pin!(waits.call(http::Request::new(())));
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert!(fut.sleep.is_some(), "a timer once the request waits");
    }
}
