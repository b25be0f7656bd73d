//! When to retry and how long to wait: idempotency, `Retry-After`, backoff with full
//! jitter, the deadline and attempt timers, and the state every clone of a layer shares.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderName, Method};
use tokio::time::{Instant, Sleep};

use super::budget::RetryBudget;
use super::error::RetryError;
use super::future::Failed;

pub(super) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

pub(crate) struct Shared<C> {
    pub(crate) max_attempts: u32,
    pub(crate) base_us: u64,
    pub(crate) max_backoff_us: u64,
    pub(crate) deadline: Option<Duration>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) retry_after_cap: Duration,
    pub(crate) body_cap: u64,
    pub(crate) budget: RetryBudget,
    pub(crate) classifier: C,
    pub(crate) jitter: crate::hash::Jitter,
    pub(crate) retried: OnceLock<::metrics::Counter>,
    pub(crate) exhausted: OnceLock<::metrics::Counter>,
}

impl<C> Shared<C> {
    /// Full jitter: uniform in [0, min(max, base × 2^(retry − 1))].
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .base_us
            .saturating_mul(1u64 << (retry.saturating_sub(1)).min(40))
            .min(self.max_backoff_us);
        Duration::from_micros(self.jitter.up_to(ceiling))
    }

    pub(crate) fn count(&self, slot: &OnceLock<::metrics::Counter>, name: &'static str) {
        slot.get_or_init(|| ::metrics::counter!(name)).increment(1);
    }
}

/// True for the methods that may be sent twice: GET, HEAD, OPTIONS, TRACE, PUT, DELETE.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The timer of the next attempt: its own timeout, or what is left of the deadline,
/// whichever ends first. `None` (no allocation) when neither is set.
/// The deadline's own timer, for the states with no attempt under way (buffering the
/// body, waiting for the inner service to be ready). `None` without a deadline.
pub(crate) fn deadline_timer<C>(
    shared: &Shared<C>,
    started: Option<Instant>,
) -> Option<Pin<Box<Sleep>>> {
    let end = shared
        .deadline
        .zip(started)
        .and_then(|(d, s)| s.checked_add(d))?;
    Some(Box::pin(tokio::time::sleep_until(end)))
}

/// `Pending`, unless `timer` has run out: then the call has timed out.
pub(crate) fn expired<T, E>(
    timer: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, RetryError<E>>> {
    if timer
        .as_mut()
        .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    {
        Poll::Ready(Err(RetryError::TimedOut))
    } else {
        Poll::Pending
    }
}

#[inline]
pub(crate) fn attempt_timer<C>(
    shared: &Shared<C>,
    started: Option<Instant>,
) -> Option<Pin<Box<Sleep>>> {
    let by_deadline = shared
        .deadline
        .zip(started)
        .and_then(|(d, s)| s.checked_add(d))
        .map(|end| end.saturating_duration_since(Instant::now()));
    let limit = match (shared.attempt_timeout, by_deadline) {
        (Some(a), Some(d)) => Some(a.min(d)),
        (a, d) => a.or(d),
    }?;
    Some(Box::pin(tokio::time::sleep(limit)))
}

/// `Retry-After` as seconds or as an HTTP date in any of its three formats (a date in the
/// past is "now"). Anything
/// else is ignored, and the backoff applies.
pub(super) fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = crate::http_date::parse(v)?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// After a failed attempt: the wait before the next one (the attempt and the retry
/// counted), or `None` to stop and answer with this one.
pub(crate) fn backoff<C>(
    shared: &Shared<C>,
    replayable: bool,
    attempt: &mut u32,
    started: Option<Instant>,
    failed: &Failed,
) -> Option<Pin<Box<Sleep>>> {
    let delay = next_delay(shared, replayable, *attempt, started, failed)?;
    *attempt += 1;
    shared.count(&shared.retried, "tower_scale.retry.retries");
    Some(Box::pin(tokio::time::sleep(delay)))
}

/// How long to wait before the next attempt, or `None` to stop here.
fn next_delay<C>(
    shared: &Shared<C>,
    replayable: bool,
    attempt: u32,
    started: Option<Instant>,
    failed: &Failed,
) -> Option<Duration> {
    if !replayable || attempt >= shared.max_attempts {
        return None;
    }
    let delay = match failed {
        Failed::Status(Some(after)) if *after > shared.retry_after_cap => return None,
        Failed::Status(Some(after)) => *after,
        Failed::Status(None) | Failed::Error | Failed::TimedOut => shared.backoff(attempt),
    };
    if let (Some(d), Some(s)) = (shared.deadline, started)
        && let Some(end) = s.checked_add(d)
        && Instant::now()
            .checked_add(delay)
            .is_none_or(|resume| resume >= end)
    {
        return None;
    }
    if !shared.budget.withdraw() {
        shared.count(&shared.exhausted, "tower_scale.retry.budget_exhausted");
        tracing::debug!("retry budget spent; not retrying");
        return None;
    }
    Some(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(http::header::RETRY_AFTER, v.parse().unwrap());
            retry_after(&m)
        };
        assert_eq!(h("3"), Some(Duration::from_secs(3)));
        assert_eq!(h(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            h("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "past: now"
        );
        assert_eq!(
            h("wednesday, 21-oct-15 07:28:00 gmt"),
            Some(Duration::ZERO),
            "the obsolete RFC 850 format, in any case"
        );
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        let d = h(&soon).unwrap();
        assert!(
            d > Duration::from_secs(28) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(h("-1"), None);
        assert_eq!(h("soon"), None);
        assert_eq!(retry_after(&http::HeaderMap::new()), None);
    }
}
