//! What a breaker answers instead of calling: [`CircuitOpen`] and [`BreakerError`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

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

/// The error of a [`CircuitBreaker`](super::CircuitBreaker): refused, or the inner service's own error.
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
