//! [`Retry`]: the service, and the copy of a request it keeps to send again.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tokio::time::Instant;
use tower_service::Service;

use super::body::ReplayBody;
use super::error::RetryError;
use super::future::{ResponseFuture, State};
use super::policy::{IDEMPOTENCY_KEY, Shared, attempt_timer, deadline_timer, is_idempotent};
use crate::BoxError;
use crate::classify::Classify;

/// Retries failed calls of an HTTP service. Built by [`RetryLayer`](super::RetryLayer).
pub struct Retry<S, C> {
    pub(super) inner: S,
    pub(super) shared: Arc<Shared<C>>,
}

impl<S: Clone, C> Clone for Retry<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Retry<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B, RB, C> Service<Request<B>> for Retry<S, C>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    C: Classify<Response<RB>, S::Error>,
{
    type Response = Response<RB>;
    type Error = RetryError<S::Error>;
    type Future = ResponseFuture<S, B, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(RetryError::Inner)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = &*self.shared;
        shared.budget.deposit();
        let retryable = shared.max_attempts > 1
            && (is_idempotent(req.method()) || req.headers().contains_key(IDEMPOTENCY_KEY));
        let started =
            (shared.deadline.is_some() || shared.attempt_timeout.is_some()).then(Instant::now);
        // The readiness `poll_ready` obtained belongs to `self.inner`: take it into the
        // future, leave a clone for the next request.
        let clone = self.inner.clone();
        let mut svc = std::mem::replace(&mut self.inner, clone);
        let hint = req.body().size_hint();
        let (state, template) = if !retryable {
            let fut = svc.call(req.map(ReplayBody::stream));
            (State::calling(fut, attempt_timer(shared, started)), None)
        } else if req.body().is_end_stream() || hint.exact() == Some(0) {
            let (parts, _) = req.into_parts();
            let template = Box::new(Template {
                head: Request::from_parts(parts.clone(), ()),
                body: Bytes::new(),
            });
            let fut = svc.call(Request::from_parts(parts, ReplayBody::bytes(Bytes::new())));
            (
                State::calling(fut, attempt_timer(shared, started)),
                Some(template),
            )
        } else if hint.upper().is_some_and(|u| u <= shared.body_cap) {
            // The head waits in the template while the body is read into it.
            let (parts, body) = req.into_parts();
            (
                State::Buffering {
                    body: Box::pin(body),
                    buf: Vec::new(),
                    timer: deadline_timer(shared, started),
                },
                Some(Box::new(Template {
                    head: Request::from_parts(parts, ()),
                    body: Bytes::new(),
                })),
            )
        } else {
            // Too large, or of unknown size, to hold: sent once.
            let fut = svc.call(req.map(ReplayBody::stream));
            (State::calling(fut, attempt_timer(shared, started)), None)
        };
        ResponseFuture {
            svc,
            shared: Arc::clone(&self.shared),
            template,
            attempt: 1,
            started,
            state,
        }
    }
}

/// What a retry sends again. Boxed in the future: inline, its request head would make
/// every call's future (moved several times on its way to the executor) hundreds of bytes
/// larger.
pub(super) struct Template {
    pub(super) head: Request<()>,
    pub(super) body: Bytes,
}

impl Template {
    pub(super) fn request<B>(&self) -> Request<ReplayBody<B>> {
        self.head
            .clone()
            .map(|()| ReplayBody::bytes(self.body.clone()))
    }
}
