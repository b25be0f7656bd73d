//! One answer to "did that call succeed?", shared by retry, circuit breaker and metrics.
//!
//! Every layer that judges outcomes asks the same [`Classify`] implementation, so a
//! service's retries, breakers and dashboards never disagree about what a failure is.
//! [`HttpClassifier`] is the default: server errors (5xx), transport errors and timeouts are
//! failures; client errors (4xx) are the client's problem and are not. A call can also be
//! *slow*: [`Classifier::slow_call`] adds a duration threshold, for circuit breakers'
//! slow-call rate.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use tower_scale::classify::{Class, Classifier, HttpClassifier};
//!
//! // Default: 5xx and errors fail.
//! let c = Classifier::new(HttpClassifier::default()).slow_call(Duration::from_secs(1));
//! let ok = http::Response::builder().status(404).body(()).unwrap();
//! let verdict = c.judge::<_, std::io::Error>(Ok(&ok), Duration::from_millis(1500));
//! assert_eq!(verdict.class, Class::Success);
//! assert!(verdict.slow);
//!
//! // Customised: an upstream's 429 counts as a failure too.
//! let strict = HttpClassifier::default().failure_status(429).unwrap();
//! let busy = http::Response::builder().status(429).body(()).unwrap();
//! assert_eq!(Classifier::new(strict).judge::<_, std::io::Error>(Ok(&busy), Duration::ZERO).class, Class::Failure);
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};

use crate::ConfigError;

/// Success or failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// The call did what was asked, or failed through the caller's fault (4xx).
    Success,
    /// The callee failed: 5xx, a transport error, a timeout.
    Failure,
}

impl Class {
    /// `"success"` or `"failure"`: the label written into metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Success => "success",
            Class::Failure => "failure",
        }
    }
}

/// Decides the [`Class`] of a call's result.
pub trait Classify<T, E>: Clone + Send + Sync + 'static {
    /// Classifies a result.
    fn classify(&self, result: Result<&T, &E>) -> Class;
}

/// The default HTTP classifier: statuses in a configurable set (500..=599 by default) and
/// every error are failures.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpClassifier {
    // Bit n set: status 400 + n is a failure (400..=655, where failures are).
    common: [u64; 4],
    // The failures outside 400..=655, sorted: none unless configured. Kept out of line so
    // that the classifier, which services and their futures carry, stays small.
    others: Option<Arc<[u16]>>,
}

/// The first status of [`HttpClassifier`]'s bit set.
const COMMON_FROM: u16 = 400;

impl Default for HttpClassifier {
    fn default() -> Self {
        let mut c = Self {
            common: [0; 4],
            others: None,
        };
        for s in 500..=599 {
            c.set(s, true);
        }
        c
    }
}

impl fmt::Debug for HttpClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let statuses: Vec<u16> = (100..=999).filter(|s| self.is_failure_status(*s)).collect();
        f.debug_struct("HttpClassifier")
            .field("failure_statuses", &statuses)
            .finish()
    }
}

impl HttpClassifier {
    /// `status` (100..=999) in the common bit set: its word and bit.
    fn common_bit(status: u16) -> Option<(usize, u64)> {
        let n = status.checked_sub(COMMON_FROM)?;
        (n < 256).then(|| (usize::from(n / 64), 1 << (n % 64)))
    }

    fn set(&mut self, status: u16, failure: bool) {
        if let Some((word, bit)) = Self::common_bit(status) {
            if failure {
                self.common[word] |= bit;
            } else {
                self.common[word] &= !bit;
            }
            return;
        }
        let mut others: Vec<u16> = self.others.as_deref().unwrap_or_default().to_vec();
        match (others.binary_search(&status), failure) {
            (Err(at), true) => others.insert(at, status),
            (Ok(at), false) => {
                others.remove(at);
            }
            _ => {}
        }
        self.others = (!others.is_empty()).then(|| Arc::from(others));
    }

    fn check(status: u16) -> Result<u16, ConfigError> {
        if (100..=999).contains(&status) {
            Ok(status)
        } else {
            Err(ConfigError::new(
                "failure_status",
                format!("{status} is not an HTTP status; use 100..=999"),
            ))
        }
    }

    /// Also treats `status` as a failure (e.g. 429 from an upstream).
    pub fn failure_status(mut self, status: u16) -> Result<Self, ConfigError> {
        self.set(Self::check(status)?, true);
        Ok(self)
    }

    /// Treats `status` as a success even if it is a 5xx (e.g. 501 from an API that uses it
    /// for "not supported here").
    pub fn success_status(mut self, status: u16) -> Result<Self, ConfigError> {
        self.set(Self::check(status)?, false);
        Ok(self)
    }

    /// True if a response with this status is a failure.
    #[inline]
    pub fn is_failure_status(&self, status: u16) -> bool {
        match Self::common_bit(status) {
            Some((word, bit)) => self.common[word] & bit != 0,
            None => self
                .others
                .as_deref()
                .is_some_and(|o| o.binary_search(&status).is_ok()),
        }
    }

    /// The class of a status code.
    pub fn classify_status(&self, status: StatusCode) -> Class {
        if self.is_failure_status(status.as_u16()) {
            Class::Failure
        } else {
            Class::Success
        }
    }
}

impl<B, E> Classify<Response<B>, E> for HttpClassifier {
    fn classify(&self, result: Result<&Response<B>, &E>) -> Class {
        match result {
            Ok(resp) => self.classify_status(resp.status()),
            Err(_) => Class::Failure,
        }
    }
}

/// Classifies any result by `Ok`/`Err`: for protocol-agnostic services.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorIsFailure;

impl<T, E> Classify<T, E> for ErrorIsFailure {
    fn classify(&self, result: Result<&T, &E>) -> Class {
        match result {
            Ok(_) => Class::Success,
            Err(_) => Class::Failure,
        }
    }
}

/// A closure as a classifier; see [`classify_fn`].
#[derive(Clone)]
pub struct ClassifyFn<F>(F);

impl<F> fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyFn").finish_non_exhaustive()
    }
}

/// Classifies with a closure.
pub fn classify_fn<F, T, E>(f: F) -> ClassifyFn<F>
where
    F: Fn(Result<&T, &E>) -> Class + Clone + Send + Sync + 'static,
{
    ClassifyFn(f)
}

impl<F, T, E> Classify<T, E> for ClassifyFn<F>
where
    F: Fn(Result<&T, &E>) -> Class + Clone + Send + Sync + 'static,
{
    fn classify(&self, result: Result<&T, &E>) -> Class {
        (self.0)(result)
    }
}

/// A call's verdict: its class and whether it was slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Success or failure.
    pub class: Class,
    /// True if the call took at least the slow-call threshold.
    pub slow: bool,
}

/// A [`Classify`] plus an optional slow-call threshold: the one object layers share.
#[derive(Debug, Clone)]
pub struct Classifier<C> {
    classify: C,
    slow_after: Option<Duration>,
}

impl<C> Classifier<C> {
    /// Wraps a classifier with no slow-call threshold.
    pub fn new(classify: C) -> Self {
        Self {
            classify,
            slow_after: None,
        }
    }

    /// Calls taking `threshold` or longer are slow.
    #[must_use]
    pub fn slow_call(mut self, threshold: Duration) -> Self {
        self.slow_after = Some(threshold);
        self
    }

    /// The slow-call threshold, if any.
    pub fn slow_threshold(&self) -> Option<Duration> {
        self.slow_after
    }

    /// The wrapped classifier.
    pub fn inner(&self) -> &C {
        &self.classify
    }

    /// True if a call that took `elapsed` is slow.
    pub fn is_slow(&self, elapsed: Duration) -> bool {
        self.slow_after.is_some_and(|t| elapsed >= t)
    }

    /// Judges a finished call.
    pub fn judge<T, E>(&self, result: Result<&T, &E>, elapsed: Duration) -> Verdict
    where
        C: Classify<T, E>,
    {
        Verdict {
            class: self.classify.classify(result),
            slow: self.is_slow(elapsed),
        }
    }
}

impl Default for Classifier<HttpClassifier> {
    fn default() -> Self {
        Self::new(HttpClassifier::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16) -> Response<()> {
        Response::builder().status(status).body(()).unwrap()
    }

    #[test]
    fn default_http_table() {
        let cases = [
            ("ok", 200, Class::Success),
            ("redirect", 302, Class::Success),
            ("not found", 404, Class::Success),
            ("too many", 429, Class::Success),
            ("internal", 500, Class::Failure),
            ("bad gateway", 502, Class::Failure),
            ("unavailable", 503, Class::Failure),
            ("nonstandard 599", 599, Class::Failure),
            ("nonstandard 600", 600, Class::Success),
        ];
        let c = HttpClassifier::default();
        for (name, status, want) in cases {
            let got = Classify::<_, ()>::classify(&c, Ok(&resp(status)));
            assert_eq!(got, want, "case {name}");
        }
        assert_eq!(
            Classify::<Response<()>, _>::classify(&c, Err(&"boom")),
            Class::Failure
        );
    }

    #[test]
    fn custom_statuses() {
        let c = HttpClassifier::default()
            .failure_status(429)
            .unwrap()
            .success_status(501)
            .unwrap();
        assert!(c.is_failure_status(429));
        assert!(!c.is_failure_status(501));
        assert!(c.is_failure_status(500));
        assert!(HttpClassifier::default().failure_status(99).is_err());
        assert!(HttpClassifier::default().failure_status(1000).is_err());
        assert!(!c.is_failure_status(u16::MAX));
    }

    #[test]
    fn statuses_outside_the_common_set() {
        // The bit set covers 400..=655; the rest is a sorted list, kept only when needed.
        let c = HttpClassifier::default()
            .failure_status(302)
            .unwrap()
            .failure_status(999)
            .unwrap()
            .failure_status(100)
            .unwrap()
            .failure_status(655)
            .unwrap()
            .failure_status(656)
            .unwrap();
        for s in [100, 302, 655, 656, 999, 500, 599] {
            assert!(c.is_failure_status(s), "{s} is a failure");
        }
        for s in [101, 301, 303, 399, 400, 600, 654, 657, 998] {
            assert!(!c.is_failure_status(s), "{s} is not a failure");
        }
        let back = c
            .success_status(302)
            .unwrap()
            .success_status(999)
            .unwrap()
            .success_status(100)
            .unwrap()
            .success_status(655)
            .unwrap()
            .success_status(656)
            .unwrap();
        assert_eq!(
            back,
            HttpClassifier::default(),
            "the list is dropped when empty"
        );
        assert!(std::mem::size_of::<HttpClassifier>() <= 48);
    }

    #[test]
    fn slow_threshold_is_inclusive() {
        let c = Classifier::default().slow_call(Duration::from_millis(100));
        assert!(!c.is_slow(Duration::from_millis(99)));
        assert!(c.is_slow(Duration::from_millis(100)));
        assert!(!Classifier::default().is_slow(Duration::from_secs(3600)));
    }

    #[test]
    fn closures_and_errors() {
        let c = classify_fn(|r: Result<&u32, &()>| match r {
            Ok(n) if *n > 10 => Class::Failure,
            Ok(_) => Class::Success,
            Err(_) => Class::Failure,
        });
        assert_eq!(c.classify(Ok(&11)), Class::Failure);
        assert_eq!(c.classify(Ok(&1)), Class::Success);
        assert_eq!(
            Classify::<u8, u8>::classify(&ErrorIsFailure, Err(&1)),
            Class::Failure
        );
        assert_eq!(
            Classify::<u8, u8>::classify(&ErrorIsFailure, Ok(&1)),
            Class::Success
        );
    }
}
