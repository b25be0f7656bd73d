//! [`RetryAnyLayer`]: the same retries for any tower service whose requests can be cloned.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use super::error::RetryError;
use super::future::{Failed, answer, poll_attempt};
use super::policy::{Shared, attempt_timer, backoff, deadline_timer, expired};
use crate::classify::{Class, Classify, ErrorIsFailure};

/// Applies [`RetryAny`] to a service; from
/// [`RetryLayerBuilder::build_any`](super::RetryLayerBuilder::build_any).
///
/// Every request is taken as safe to send again: wrap only calls that are (reads, or writes
/// the upstream deduplicates). The budget, backoff, deadline and attempt timeout are the
/// HTTP layer's; there is no body to buffer (the request is cloned) and no `Retry-After`.
pub struct RetryAnyLayer<C = ErrorIsFailure> {
    pub(crate) shared: Arc<Shared<C>>,
}

impl<C> Clone for RetryAnyLayer<C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C> fmt::Debug for RetryAnyLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryAnyLayer")
            .field("max_attempts", &self.shared.max_attempts)
            .finish_non_exhaustive()
    }
}

impl<S, C> Layer<S> for RetryAnyLayer<C> {
    type Service = RetryAny<S, C>;

    fn layer(&self, inner: S) -> RetryAny<S, C> {
        RetryAny {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Retries failed calls of any service with cloneable requests. Built by
/// [`RetryAnyLayer`].
pub struct RetryAny<S, C> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S: Clone, C> Clone for RetryAny<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for RetryAny<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryAny")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C> Service<Req> for RetryAny<S, C>
where
    S: Service<Req> + Clone,
    Req: Clone,
    C: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = RetryError<S::Error>;
    type Future = AnyFuture<S, Req, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(RetryError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &*self.shared;
        shared.budget.deposit();
        let started =
            (shared.deadline.is_some() || shared.attempt_timeout.is_some()).then(Instant::now);
        let clone = self.inner.clone();
        let mut svc = std::mem::replace(&mut self.inner, clone);
        let template = (shared.max_attempts > 1).then(|| req.clone());
        let fut = svc.call(req);
        AnyFuture {
            svc,
            shared: Arc::clone(&self.shared),
            template,
            attempt: 1,
            started,
            state: AnyState::Calling {
                fut,
                timer: attempt_timer(shared, started),
            },
        }
    }
}

pin_project! {
    #[project = AnyStateProj]
    enum AnyState<F, Req> {
        Ready { req: Option<Req>, timer: Option<Pin<Box<Sleep>>> },
        Calling { #[pin] fut: F, timer: Option<Pin<Box<Sleep>>> },
        Backoff { sleep: Pin<Box<Sleep>> },
    }
}

pin_project! {
    /// Response future of [`RetryAny`].
    pub struct AnyFuture<S, Req, C>
    where
        S: Service<Req>,
    {
        svc: S,
        shared: Arc<Shared<C>>,
        template: Option<Req>,
        attempt: u32,
        started: Option<Instant>,
        #[pin]
        state: AnyState<S::Future, Req>,
    }
}

impl<S: Service<Req>, Req, C> fmt::Debug for AnyFuture<S, Req, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyFuture")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C> Future for AnyFuture<S, Req, C>
where
    S: Service<Req>,
    Req: Clone,
    C: Classify<S::Response, S::Error>,
{
    type Output = Result<S::Response, RetryError<S::Error>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                AnyStateProj::Ready { req, timer } => {
                    match this.svc.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(RetryError::Inner(e))),
                        Poll::Pending => return expired(timer, cx),
                    }
                    let fut = this.svc.call(req.take().expect("sent once"));
                    let timer = attempt_timer(this.shared, *this.started);
                    this.state.set(AnyState::Calling { fut, timer });
                }
                AnyStateProj::Calling { fut, timer } => {
                    let res = ready!(poll_attempt(fut, timer, cx));
                    let shared = &**this.shared;
                    let failed = match &res {
                        None => Failed::TimedOut,
                        Some(r) => match shared.classifier.classify(r.as_ref()) {
                            Class::Success => return Poll::Ready(answer(res)),
                            Class::Failure if r.is_ok() => Failed::Status(None),
                            Class::Failure => Failed::Error,
                        },
                    };
                    let replayable = this.template.is_some();
                    match backoff(shared, replayable, this.attempt, *this.started, &failed) {
                        Some(sleep) => this.state.set(AnyState::Backoff { sleep }),
                        None => return Poll::Ready(answer(res)),
                    }
                }
                AnyStateProj::Backoff { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    let req = this.template.clone();
                    let timer = deadline_timer(this.shared, *this.started);
                    this.state.set(AnyState::Ready { req, timer });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::RetryLayer;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;
    use tower::ServiceExt;

    #[tokio::test(start_paused = true)]
    async fn retries_any_service_until_it_answers() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = Arc::clone(&calls);
        let flaky = tower::service_fn(move |n: u32| {
            let k = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if k < 2 {
                    Err(std::io::Error::other("refused"))
                } else {
                    Ok(n * 2)
                }
            }
        });
        let layer = RetryLayer::builder()
            .classifier(ErrorIsFailure)
            .build_any()
            .unwrap();
        assert_eq!(layer.layer(flaky.clone()).oneshot(21).await.unwrap(), 42);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "two failures, then the answer"
        );

        // Out of attempts: the last error.
        calls.store(0, Ordering::SeqCst);
        let two = RetryLayer::builder()
            .max_attempts(2)
            .classifier(ErrorIsFailure)
            .build_any()
            .unwrap();
        let err = two.layer(flaky).oneshot(1).await.unwrap_err();
        assert!(matches!(err, RetryError::Inner(_)), "{err:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_attempt_timeout_applies() {
        let slow = tower::service_fn(|_: ()| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, std::io::Error>(())
        });
        let layer = RetryLayer::builder()
            .classifier(ErrorIsFailure)
            .attempt_timeout(Duration::from_millis(100))
            .deadline(Duration::from_millis(500))
            .build_any()
            .unwrap();
        let start = Instant::now();
        let err = layer.layer(slow).oneshot(()).await.unwrap_err();
        assert!(matches!(err, RetryError::TimedOut));
        assert!(start.elapsed() <= Duration::from_millis(500));
    }
}
