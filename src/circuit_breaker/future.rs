//! [`ResponseFuture`]: one call through a breaker, recording its outcome however it ends.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::core::{Breaker, Outcome, Permit};
use super::error::{BreakerError, CircuitOpen};
use super::registry::Shared;
use crate::classify::{Class, Classify};

/// A permit in flight: records the call's outcome, or that it was abandoned, exactly once.
pub(super) struct Guard<K, C> {
    pub(super) shared: Arc<Shared<K, C>>,
    /// `None` for the shared breaker (held by `shared`), to spare a reference count.
    pub(super) breaker: Option<Arc<Breaker>>,
    pub(super) permit: Permit,
    pub(super) start_us: u64,
    pub(super) done: bool,
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
        pub(super) fut: Option<F>,
        pub(super) guard: Option<Guard<K, C>>,
        pub(super) refused: Option<CircuitOpen>,
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
