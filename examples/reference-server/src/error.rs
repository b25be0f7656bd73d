//! Errors: the JSON error answer every route gives, and why the server stopped.

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A JSON error response: `{"error": "..."}` with a status.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    /// 400 with a message saying what to send instead.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }

    /// A body axum could not take: 400 for JSON that does not parse, does not fit (a
    /// missing field, a wrong type, an unknown field) or is not sent as JSON, which is the
    /// contract's "400 on bad input" where axum would answer 422 or 415; 413 for a body
    /// over the limit (a chunked one is only found too large while it is read).
    pub fn rejected(e: &axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection as Rejected;
        let status = match e {
            Rejected::JsonDataError(_)
            | Rejected::JsonSyntaxError(_)
            | Rejected::MissingJsonContentType(_) => StatusCode::BAD_REQUEST,
            other => other.status(),
        };
        Self(status, e.body_text())
    }

    /// 503 with `Retry-After`: a dependency is failing, try again shortly.
    pub fn unavailable(message: impl Into<String>, retry_after_secs: u64) -> Response {
        let mut r = Self(StatusCode::SERVICE_UNAVAILABLE, message.into()).into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        r
    }

    /// 500 for a failure the client cannot mend; the cause is logged, not sent.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "request failed");
        Self(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// Keeps the contract's "all errors are JSON" for refusals made outside the handlers (the
/// body limit, the request timeout, axum's own rejections): an error status whose body is
/// not JSON gets `{"error": "<reason>"}`.
pub fn json_errors(res: Response) -> Response {
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (mut parts, _) = res.into_parts();
    let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
    let body = json!({ "error": reason }).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

/// Why the server stopped: bad configuration (exit 2) or a failure while running (exit 1).
#[derive(Debug)]
pub enum Failure {
    /// A setting is wrong; the message names it.
    Config(String),
    /// Something failed while starting or serving.
    Run(Box<dyn std::error::Error + Send + Sync>),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(m) => write!(f, "bad configuration: {m}"),
            Self::Run(e) => e.fmt(f),
        }
    }
}

impl<E: Into<Box<dyn std::error::Error + Send + Sync>>> From<E> for Failure {
    fn from(e: E) -> Self {
        Self::Run(e.into())
    }
}
