//! [`ResponseFuture`]: one call through [`Retry`](super::Retry), attempt by attempt.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::body::ReplayBody;
use super::error::RetryError;
use super::policy::{Shared, attempt_timer, backoff, deadline_timer, expired, retry_after};
use super::service::Template;
use crate::BoxError;
use crate::classify::{Class, Classify};

pin_project! {
    #[project = StateProj]
    pub(super) enum State<F, B>
    where
        B: Body,
    {
        // Boxed, as is the request of `Ready`: only bodies to buffer and retries use them,
        // and inline they would make every call's future larger.
        Buffering {
            body: Pin<Box<B>>,
            buf: Vec<u8>,
            timer: Option<Pin<Box<Sleep>>>,
        },
        Ready { req: Option<Box<Request<ReplayBody<B>>>>, timer: Option<Pin<Box<Sleep>>> },
        Calling { #[pin] fut: F, timer: Option<Pin<Box<Sleep>>> },
        Backoff { sleep: Pin<Box<Sleep>> },
    }
}

impl<F, B: Body> State<F, B> {
    pub(super) fn calling(fut: F, timer: Option<Pin<Box<Sleep>>>) -> Self {
        State::Calling { fut, timer }
    }
}

pin_project! {
    /// Response future of [`Retry`].
    pub struct ResponseFuture<S, B, C>
    where
        S: Service<Request<ReplayBody<B>>>,
        B: Body,
    {
        pub(super) svc: S,
        pub(super) shared: Arc<Shared<C>>,
        pub(super) template: Option<Box<Template>>,
        pub(super) attempt: u32,
        pub(super) started: Option<Instant>,
        #[pin]
        pub(super) state: State<S::Future, B>,
    }
}

impl<S, B, C> fmt::Debug for ResponseFuture<S, B, C>
where
    S: Service<Request<ReplayBody<B>>>,
    B: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Why an attempt failed, when it did.
pub(crate) enum Failed {
    /// A failure response; its `Retry-After`, if any.
    Status(Option<Duration>),
    Error,
    TimedOut,
}

impl<S, B, RB, C> Future for ResponseFuture<S, B, C>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    C: Classify<Response<RB>, S::Error>,
{
    type Output = Result<Response<RB>, RetryError<S::Error>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Buffering { body, buf, timer } => {
                    // Read to the end, within the cap whatever the size hint said (trailers
                    // are not kept).
                    loop {
                        match body.as_mut().poll_frame(cx) {
                            Poll::Ready(Some(Ok(frame))) => {
                                if let Ok(data) = frame.into_data() {
                                    if (buf.len() + data.len()) as u64 > this.shared.body_cap {
                                        return Poll::Ready(Err(RetryError::Body(
                                            "request body is larger than its size hint said".into(),
                                        )));
                                    }
                                    buf.extend_from_slice(&data);
                                }
                            }
                            Poll::Ready(Some(Err(e))) => {
                                return Poll::Ready(Err(RetryError::Body(e.into())));
                            }
                            Poll::Ready(None) => break,
                            Poll::Pending => return expired(timer, cx),
                        }
                    }
                    let template = this.template.as_mut().expect("buffering has a template");
                    template.body = Bytes::from(std::mem::take(buf));
                    let req = template.request();
                    let timer = timer.take();
                    this.state.set(State::Ready {
                        req: Some(Box::new(req)),
                        timer,
                    });
                }
                StateProj::Ready { req, timer } => {
                    match this.svc.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(RetryError::Inner(e))),
                        Poll::Pending => return expired(timer, cx),
                    }
                    let req = req.take().expect("sent once");
                    let fut = this.svc.call(*req);
                    let timer = attempt_timer(this.shared, *this.started);
                    this.state.set(State::Calling { fut, timer });
                }
                StateProj::Calling { fut, timer } => {
                    let res = ready!(poll_attempt(fut, timer, cx));
                    let shared = &**this.shared;
                    let failed = match &res {
                        None => Failed::TimedOut,
                        Some(Ok(resp)) => {
                            #[cfg(feature = "circuit-breaker")]
                            if resp
                                .extensions()
                                .get::<crate::circuit_breaker::CircuitOpen>()
                                .is_some()
                            {
                                // The breaker refused: an answer, not a failure to retry.
                                return Poll::Ready(answer(res));
                            }
                            if shared.classifier.classify(Ok(resp)) == Class::Success {
                                return Poll::Ready(answer(res));
                            }
                            Failed::Status(retry_after(resp.headers()))
                        }
                        Some(Err(e)) => {
                            if shared.classifier.classify(Err(e)) == Class::Success {
                                return Poll::Ready(answer(res));
                            }
                            Failed::Error
                        }
                    };
                    let replayable = this.template.is_some();
                    match backoff(shared, replayable, this.attempt, *this.started, &failed) {
                        // The failed attempt (and its body) is dropped before the wait.
                        Some(sleep) => this.state.set(State::Backoff { sleep }),
                        None => return Poll::Ready(answer(res)),
                    }
                }
                StateProj::Backoff { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    let req = this
                        .template
                        .as_ref()
                        .expect("only replayable requests back off")
                        .request();
                    let timer = deadline_timer(this.shared, *this.started);
                    this.state.set(State::Ready {
                        req: Some(Box::new(req)),
                        timer,
                    });
                }
            }
        }
    }
}

/// Polls an attempt against its timer: `Ready(None)` if the timer ran out first.
#[inline]
pub(crate) fn poll_attempt<F: Future>(
    fut: Pin<&mut F>,
    timer: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
) -> Poll<Option<F::Output>> {
    match fut.poll(cx) {
        Poll::Ready(res) => Poll::Ready(Some(res)),
        Poll::Pending
            if timer
                .as_mut()
                .is_some_and(|t| t.as_mut().poll(cx).is_ready()) =>
        {
            Poll::Ready(None)
        }
        Poll::Pending => Poll::Pending,
    }
}

/// The last attempt's result as the caller gets it (`None`: it timed out).
#[inline]
pub(crate) fn answer<T, E>(res: Option<Result<T, E>>) -> Result<T, RetryError<E>> {
    match res {
        Some(r) => r.map_err(RetryError::Inner),
        None => Err(RetryError::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::HttpClassifier;

    /// The future every call returns is moved several times on its way to the executor:
    /// the request copy for a retry lives boxed so that it stays small (it was 560 bytes
    /// with the copy inline).
    #[test]
    fn the_response_future_stays_small() {
        type Body = http_body_util::Full<Bytes>;
        type Ready = std::future::Ready<Result<Response<Body>, std::convert::Infallible>>;
        type Svc = tower::util::ServiceFn<fn(Request<ReplayBody<Body>>) -> Ready>;
        let size = std::mem::size_of::<ResponseFuture<Svc, Body, HttpClassifier>>();
        eprintln!("retry response future: {size} bytes");
        assert!(size <= 320, "{size} bytes");
    }
}
