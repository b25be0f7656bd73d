//! Errors shared by every layer.

use std::fmt;

/// The error type of services that wrap any inner error (tower's convention): test a
/// cause with `err.is::<T>()` or `downcast_ref`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A builder was given a configuration that cannot work.
///
/// Returned by the `build()` methods of every builder in this crate, so a misconfiguration
/// is found when the service starts, never at request time. The message names the setting
/// and says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    setting: &'static str,
    message: String,
}

impl ConfigError {
    /// A configuration error for `setting`, with a message that says how to fix it.
    pub fn new(setting: &'static str, message: impl Into<String>) -> Self {
        Self {
            setting,
            message: message.into(),
        }
    }

    /// The name of the setting that is wrong.
    pub fn setting(&self) -> &'static str {
        self.setting
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.setting, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A shared store (Redis) could not be reached in time.
///
/// Layers turn this into their documented degraded behaviour (serve from L1, fail open,
/// answer 503); it reaches callers only from the store APIs themselves.
#[derive(Debug)]
#[non_exhaustive]
pub struct StoreUnavailable {
    /// What went wrong.
    pub kind: StoreUnavailableKind,
}

/// Why a store call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreUnavailableKind {
    /// The call did not complete within the configured timeout.
    Timeout(std::time::Duration),
    /// The store answered with an error or the connection failed.
    Backend(BoxError),
}

impl StoreUnavailable {
    /// A failed call of a store of your own (an implementation of one of the store
    /// traits): the store answered with an error or could not be reached.
    pub fn failed(err: impl Into<BoxError>) -> Self {
        Self {
            kind: StoreUnavailableKind::Backend(err.into()),
        }
    }

    /// A call of a store of your own that did not complete within `after`.
    pub fn timed_out(after: std::time::Duration) -> Self {
        Self {
            kind: StoreUnavailableKind::Timeout(after),
        }
    }

    #[cfg(feature = "redis")]
    pub(crate) fn timeout(after: std::time::Duration) -> Self {
        Self {
            kind: StoreUnavailableKind::Timeout(after),
        }
    }

    #[cfg(any(feature = "redis", feature = "jobs"))]
    pub(crate) fn backend(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            kind: StoreUnavailableKind::Backend(Box::new(err)),
        }
    }

    /// The same failure again, for each of several callers a batched call served.
    #[cfg(feature = "jobs")]
    pub(crate) fn duplicate(&self) -> Self {
        let kind = match &self.kind {
            StoreUnavailableKind::Timeout(d) => StoreUnavailableKind::Timeout(*d),
            StoreUnavailableKind::Backend(e) => {
                StoreUnavailableKind::Backend(Box::new(std::io::Error::other(e.to_string())))
            }
        };
        Self { kind }
    }

    /// True if the call timed out rather than failed.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, StoreUnavailableKind::Timeout(_))
    }
}

impl fmt::Display for StoreUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            StoreUnavailableKind::Timeout(d) => {
                write!(
                    f,
                    "store did not answer within {d:?}; check that it is running and reachable, or raise the timeout"
                )
            }
            StoreUnavailableKind::Backend(e) => write!(f, "store call failed: {e}"),
        }
    }
}

impl std::error::Error for StoreUnavailable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            StoreUnavailableKind::Timeout(_) => None,
            StoreUnavailableKind::Backend(e) => Some(&**e),
        }
    }
}

/// The answer of an extractor whose layer is missing from the route: a 500 naming the
/// layer (a server misconfiguration, not the client's fault).
#[cfg(all(feature = "axum", any(feature = "session", feature = "db-route")))]
pub(crate) fn missing_layer(message: &'static str) -> axum::response::Response {
    use axum::response::IntoResponse;
    (http::StatusCode::INTERNAL_SERVER_ERROR, message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_error_names_the_setting() {
        let e = ConfigError::new("prefix", "must not contain `{` or `}`");
        assert_eq!(e.setting(), "prefix");
        assert_eq!(
            e.to_string(),
            "invalid `prefix`: must not contain `{` or `}`"
        );
    }

    /// A route whose layer is missing: the extractor's rejection is a 500 naming the layer.
    #[cfg(all(feature = "axum", feature = "session", feature = "db-route"))]
    #[tokio::test]
    async fn extractors_without_their_layer_name_it() {
        use axum::extract::FromRequestParts;
        use axum::response::IntoResponse;
        use http_body_util::BodyExt;

        async fn rejection<T: FromRequestParts<()>>() -> (http::StatusCode, String)
        where
            T::Rejection: IntoResponse,
        {
            let (mut parts, ()) = http::Request::new(()).into_parts();
            let Err(r) = T::from_request_parts(&mut parts, &()).await else {
                panic!("extracted without its layer");
            };
            let res = r.into_response();
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
        let (status, body) = rejection::<crate::session::Session>().await;
        assert_eq!(status, http::StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("SessionLayer"), "{body}");
        let (status, body) = rejection::<crate::db_route::Db<()>>().await;
        assert_eq!(status, http::StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("DbRouteLayer"), "{body}");
    }

    #[test]
    fn timeout_is_distinguished() {
        let e = StoreUnavailable::timeout(std::time::Duration::from_millis(5));
        assert!(e.is_timeout());
        assert!(e.to_string().contains("5ms"));
    }
}

/// A WARN line at most once per interval per layer, so an outage is seen in the log
/// without flooding it; the metrics count every occurrence.
#[cfg(any(
    feature = "rate-limit",
    feature = "session",
    feature = "jobs",
    all(feature = "cache", feature = "redis")
))]
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    /// Milliseconds since the first use, plus one (0: never logged).
    last: std::sync::atomic::AtomicU64,
    skipped: std::sync::atomic::AtomicU64,
}

#[cfg(any(
    feature = "rate-limit",
    feature = "session",
    feature = "jobs",
    all(feature = "cache", feature = "redis")
))]
impl Throttle {
    pub(crate) const fn new() -> Self {
        Self {
            last: std::sync::atomic::AtomicU64::new(0),
            skipped: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(occurrences not logged since the last line)` if this one is to be logged.
    pub(crate) fn ready(&self, every: std::time::Duration) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now = START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
            + 1;
        let last = self.last.load(Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= every.as_millis() as u64;
        if due
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.skipped.swap(0, Relaxed));
        }
        self.skipped.fetch_add(1, Relaxed);
        None
    }
}

#[cfg(all(test, any(feature = "rate-limit", feature = "session")))]
mod throttle_tests {
    use std::time::Duration;

    #[test]
    fn a_throttle_lets_one_line_through_per_interval_and_counts_the_rest() {
        let t = super::Throttle::new();
        assert_eq!(
            t.ready(Duration::from_millis(50)),
            Some(0),
            "the first is logged"
        );
        for _ in 0..5 {
            assert_eq!(t.ready(Duration::from_millis(50)), None);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            t.ready(Duration::from_millis(50)),
            Some(5),
            "then one, saying 5 were not"
        );
        assert_eq!(t.ready(Duration::from_millis(50)), None);
    }
}
