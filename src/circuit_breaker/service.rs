//! The [`CircuitBreaker`] service, its future and errors, and [`OpenAs503`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::core::{Breaker, Outcome, Permit};
use super::layer::{BreakerKey, Shared};
use crate::classify::{Class, Classify};

/// Fails calls fast while its breaker is open. Built by
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
pub struct CircuitBreaker<S, K, C> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<K, C>>,
}

impl<S: Clone, K, C> Clone for CircuitBreaker<S, K, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, K, C> fmt::Debug for CircuitBreaker<S, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish()
    }
}

/// A call refused because its breaker is open (or half-open with every probe out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitOpen {
    /// The layer's name.
    pub breaker: Arc<str>,
    /// When a call may pass again: the time until the breaker half-opens.
    pub retry_after: Duration,
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker `{}` is open; retry in {} ms",
            self.breaker,
            self.retry_after.as_millis()
        )
    }
}

impl std::error::Error for CircuitOpen {}

impl crate::refusal::Refusal for CircuitOpen {
    /// 503: the upstream is unavailable for now.
    fn status(&self) -> http::StatusCode {
        http::StatusCode::SERVICE_UNAVAILABLE
    }

    fn retry_after(&self) -> Option<Duration> {
        Some(self.retry_after)
    }
}

/// The error of a [`CircuitBreaker`]: refused, or the inner service's own error.
#[derive(Debug)]
#[non_exhaustive]
pub enum BreakerError<E> {
    /// Refused without calling the inner service.
    Open(CircuitOpen),
    /// The inner service failed.
    Inner(E),
}

impl<E: fmt::Display> fmt::Display for BreakerError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakerError::Open(o) => o.fmt(f),
            BreakerError::Inner(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for BreakerError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BreakerError::Open(o) => Some(o),
            BreakerError::Inner(e) => Some(e),
        }
    }
}

/// A permit in flight: records the call's outcome, or that it was abandoned, exactly once.
struct Guard<K, C> {
    shared: Arc<Shared<K, C>>,
    /// `None` for the shared breaker (held by `shared`), to spare a reference count.
    breaker: Option<Arc<Breaker>>,
    permit: Permit,
    start_us: u64,
    done: bool,
}

impl<K, C> Guard<K, C> {
    fn finish(&mut self, outcome: Outcome) {
        self.done = true;
        let shared = &*self.shared;
        let breaker = self.breaker.as_deref().unwrap_or(&shared.single);
        let clock = &shared.clock;
        if let Some(t) = breaker.record(&shared.config, self.permit, outcome, || clock.now_us()) {
            shared.transitioned(t);
        }
    }
}

impl<K, C> Drop for Guard<K, C> {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Outcome::Cancelled);
        }
    }
}

pin_project! {
    /// Response future of [`CircuitBreaker`].
    pub struct ResponseFuture<F, K, C> {
        #[pin]
        fut: Option<F>,
        guard: Option<Guard<K, C>>,
        refused: Option<CircuitOpen>,
    }
}

impl<F, K, C> fmt::Debug for ResponseFuture<F, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, T, E, K, C> Future for ResponseFuture<F, K, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = Result<T, BreakerError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let res = match this.fut.as_mut().as_pin_mut() {
            Some(fut) => ready!(fut.poll(cx)),
            None => {
                let refusal = this
                    .refused
                    .take()
                    .expect("ResponseFuture polled after completion");
                return Poll::Ready(Err(BreakerError::Open(refusal)));
            }
        };
        this.fut.set(None);
        if let Some(mut guard) = this.guard.take() {
            let shared = &*guard.shared;
            let failed = shared.classifier.classify(res.as_ref()) == Class::Failure;
            let slow = match shared.config.slow_call_us {
                Some(t) => shared.clock.now_us().saturating_sub(guard.start_us) >= t,
                None => false,
            };
            guard.finish(if failed {
                Outcome::Failure { slow }
            } else {
                Outcome::Success { slow }
            });
        }
        Poll::Ready(res.map_err(BreakerError::Inner))
    }
}

impl<S, Req, K, C> Service<Req> for CircuitBreaker<S, K, C>
where
    S: Service<Req>,
    K: BreakerKey<Req>,
    C: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = BreakerError<S::Error>;
    type Future = ResponseFuture<S::Future, K, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(BreakerError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &*self.shared;
        let keyed = shared.key.key(&req).map(|k| shared.breaker(shared.hash(k)));
        let breaker = keyed.as_deref().unwrap_or(&shared.single);
        let clock = &shared.clock;
        match breaker.acquire(&shared.config, || clock.now_us()) {
            Ok((permit, transition)) => {
                if let Some(t) = transition {
                    shared.transitioned(t);
                }
                let start_us = if shared.config.times_calls() {
                    clock.now_us()
                } else {
                    0
                };
                let guard = Guard {
                    shared: Arc::clone(&self.shared),
                    breaker: keyed,
                    permit,
                    start_us,
                    done: false,
                };
                ResponseFuture {
                    fut: Some(self.inner.call(req)),
                    guard: Some(guard),
                    refused: None,
                }
            }
            Err(refusal) => {
                shared.count_refusal();
                ResponseFuture {
                    fut: None,
                    guard: None,
                    refused: Some(CircuitOpen {
                        breaker: Arc::clone(&shared.name),
                        retry_after: Duration::from_micros(refusal.retry_after_us),
                    }),
                }
            }
        }
    }
}

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
