//! [`OpenAs503Layer`]: an open breaker's refusal as an HTTP 503, for HTTP stacks.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::error::{BreakerError, CircuitOpen};

/// Turns a breaker's refusals into `503 Service Unavailable` responses with `Retry-After`
/// (whole seconds, rounded up) and the [`CircuitOpen`] in their extensions; the inner
/// service's own errors pass through. The HTTP face of a breaker, for a server route or in
/// front of a client whose caller wants responses.
///
/// The response body is built from `Bytes`, so the body type must be `From<Bytes>` (axum's
/// `Body` and `Full<Bytes>` are).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAs503Layer;

impl<S> Layer<S> for OpenAs503Layer {
    type Service = OpenAs503<S>;

    fn layer(&self, inner: S) -> OpenAs503<S> {
        OpenAs503 { inner }
    }
}

/// See [`OpenAs503Layer`].
#[derive(Debug, Clone)]
pub struct OpenAs503<S> {
    inner: S,
}

impl<S, Req, B, E> Service<Req> for OpenAs503<S>
where
    S: Service<Req, Response = http::Response<B>, Error = BreakerError<E>>,
    B: From<Bytes>,
{
    type Response = http::Response<B>;
    type Error = E;
    type Future = OpenAs503Future<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx).map_err(|e| match e {
            BreakerError::Inner(e) => e,
            // `poll_ready` only ever passes the inner service's errors on.
            BreakerError::Open(_) => unreachable!("poll_ready never refuses"),
        })
    }

    fn call(&mut self, req: Req) -> Self::Future {
        OpenAs503Future {
            fut: self.inner.call(req),
        }
    }
}

pin_project! {
    /// Response future of [`OpenAs503`].
    #[derive(Debug)]
    pub struct OpenAs503Future<F> {
        #[pin]
        fut: F,
    }
}

impl<F, B, E> Future for OpenAs503Future<F>
where
    F: Future<Output = Result<http::Response<B>, BreakerError<E>>>,
    B: From<Bytes>,
{
    type Output = Result<http::Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(self.project().fut.poll(cx)) {
            Ok(resp) => Ok(resp),
            Err(BreakerError::Inner(e)) => Err(e),
            Err(BreakerError::Open(open)) => Ok(open_response(open)),
        })
    }
}

/// The 503 for a refusal: [`JsonRefusal`](crate::refusal::JsonRefusal)'s answer, with the
/// refusal in the extensions.
pub fn open_response<B: From<Bytes>>(open: CircuitOpen) -> http::Response<B> {
    use crate::refusal::OnRefusal;
    let mut resp = crate::refusal::JsonRefusal.response(&open).map(B::from);
    resp.extensions_mut().insert(open);
    resp
}
