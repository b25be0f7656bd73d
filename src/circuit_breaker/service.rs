//! [`CircuitBreaker`]: the service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

use super::error::{BreakerError, CircuitOpen};
use super::future::{Guard, ResponseFuture};
use super::key::BreakerKey;
use super::registry::Shared;
use crate::classify::Classify;

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
