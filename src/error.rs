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
