//! [`RetryLayer`] and its builder.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tower_layer::Layer;

use super::budget::RetryBudget;
use super::policy::Shared;
use super::service::Retry;
use crate::ConfigError;
use crate::classify::HttpClassifier;
use crate::duration::micros;

/// Applies [`Retry`] to a service. Clones share the budget.
pub struct RetryLayer<C = HttpClassifier> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for RetryLayer<C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C> fmt::Debug for RetryLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        f.debug_struct("RetryLayer")
            .field("max_attempts", &s.max_attempts)
            .field("deadline", &s.deadline)
            .field("attempt_timeout", &s.attempt_timeout)
            .field("budget", &s.budget)
            .finish_non_exhaustive()
    }
}

impl<S, C> Layer<S> for RetryLayer<C> {
    type Service = Retry<S, C>;

    fn layer(&self, inner: S) -> Retry<S, C> {
        Retry {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

impl RetryLayer {
    /// A builder with the defaults: 3 attempts, backoff with full jitter from 25 ms up to
    /// 1 s, no deadline, no per-attempt timeout, `Retry-After` honoured up to 5 s, bodies
    /// replayed up to 64 KiB, and a budget of 20% of requests plus 10 per second.
    pub fn builder() -> RetryLayerBuilder {
        RetryLayerBuilder {
            max_attempts: 3,
            base: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            deadline: None,
            attempt_timeout: None,
            retry_after_cap: Duration::from_secs(5),
            body_cap: 64 * 1024,
            budget: None,
            classifier: HttpClassifier::default(),
        }
    }
}

/// Builds a [`RetryLayer`].
#[must_use]
#[derive(Debug)]
pub struct RetryLayerBuilder<C = HttpClassifier> {
    max_attempts: u32,
    base: Duration,
    max_backoff: Duration,
    deadline: Option<Duration>,
    attempt_timeout: Option<Duration>,
    retry_after_cap: Duration,
    body_cap: u64,
    budget: Option<RetryBudget>,
    classifier: C,
}

impl<C> RetryLayerBuilder<C> {
    /// Attempts in all, the first included (default 3; 1 disables retries).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Backoff before retry n is uniform in [0, min(`max`, `base` × 2^(n − 1))] (full
    /// jitter; default 25 ms and 1 s).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base = base;
        self.max_backoff = max;
        self
    }

    /// The whole call, every attempt and backoff included, ends by then (default: none). No
    /// retry starts that could not begin before it.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// One attempt may take this long (default: none); a timed-out attempt is retried like
    /// a failed one.
    pub fn attempt_timeout(mut self, d: Duration) -> Self {
        self.attempt_timeout = Some(d);
        self
    }

    /// A failed response's `Retry-After` (seconds or an HTTP date) is waited out if it is
    /// at most this (default 5 s); a longer one ends the retries there.
    pub fn retry_after_cap(mut self, cap: Duration) -> Self {
        self.retry_after_cap = cap;
        self
    }

    /// Request bodies up to this size are buffered so they can be sent again (default 64
    /// KiB); larger ones, and bodies of unknown size, are streamed once and not retried.
    pub fn body_cap(mut self, bytes: u64) -> Self {
        self.body_cap = bytes;
        self
    }

    /// The retry budget (default [`RetryBudget::default`]: 20% plus 10 per second over 10
    /// s). Pass one budget to several layers to share it.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// What a failure is (default [`HttpClassifier`]: 5xx and errors; 4xx are not retried).
    pub fn classifier<C2>(self, classifier: C2) -> RetryLayerBuilder<C2> {
        RetryLayerBuilder {
            max_attempts: self.max_attempts,
            base: self.base,
            max_backoff: self.max_backoff,
            deadline: self.deadline,
            attempt_timeout: self.attempt_timeout,
            retry_after_cap: self.retry_after_cap,
            body_cap: self.body_cap,
            budget: self.budget,
            classifier,
        }
    }

    /// Validates the settings.
    ///
    /// # Errors
    ///
    /// Zero attempts, a zero backoff base or a maximum below it, a zero deadline or attempt
    /// timeout.
    pub fn build(self) -> Result<RetryLayer<C>, ConfigError> {
        crate::describe::once();
        Ok(RetryLayer {
            shared: Arc::new(self.shared()?),
        })
    }

    /// Validates the settings, for [`RetryAnyLayer`](super::RetryAnyLayer): retries for any
    /// service whose requests can be cloned (give it a classifier for its response and
    /// error types, e.g. [`ErrorIsFailure`](crate::classify::ErrorIsFailure)).
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    pub fn build_any(self) -> Result<super::RetryAnyLayer<C>, ConfigError> {
        Ok(super::RetryAnyLayer {
            shared: Arc::new(self.shared()?),
        })
    }

    fn shared(self) -> Result<Shared<C>, ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::new("max_attempts", "must be at least 1"));
        }
        if self.base.is_zero()
            || self.max_backoff < self.base
            || self.max_backoff > Duration::from_secs(3600)
        {
            return Err(ConfigError::new(
                "backoff",
                "the base must be above zero, the maximum at least the base and at most 1 h",
            ));
        }
        if self.deadline.is_some_and(|d| d.is_zero())
            || self.attempt_timeout.is_some_and(|d| d.is_zero())
        {
            return Err(ConfigError::new(
                "deadline",
                "deadlines and timeouts must be longer than zero",
            ));
        }
        Ok(Shared {
            max_attempts: self.max_attempts,
            base_us: micros(self.base),
            max_backoff_us: micros(self.max_backoff),
            deadline: self.deadline,
            attempt_timeout: self.attempt_timeout,
            retry_after_cap: self.retry_after_cap,
            body_cap: self.body_cap,
            budget: self.budget.unwrap_or_default(),
            classifier: self.classifier,
            jitter: crate::hash::Jitter::new(),
            retried: OnceLock::new(),
            exhausted: OnceLock::new(),
        })
    }
}
