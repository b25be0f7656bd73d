//! Answers for requests a layer refuses on its own (a quota used up, an open circuit
//! breaker, a session store that is down): one shape for every layer.
//!
//! A refusal is a typed value ([`RateLimited`](crate::rate_limit::RateLimited),
//! [`CircuitOpen`](crate::circuit_breaker::CircuitOpen)) that says its status and when to
//! retry ([`Refusal`]). An [`OnRefusal`] turns it into a response; the default,
//! [`JsonRefusal`], answers `{"error": "<the refusal's message>"}` with `Retry-After` in
//! whole seconds, rounded up. The layers put the refusal in the response's extensions.
//!
//! # Examples
//!
//! A plain-text answer for rate-limited requests:
//!
//! ```
//! # #[cfg(feature = "rate-limit")] {
//! use bytes::Bytes;
//! use http::Response;
//! use tower_scale::rate_limit::{RateLimitLayer, RateLimited};
//! use tower_scale::refusal::{OnRefusal, Refusal};
//!
//! #[derive(Clone)]
//! struct PlainText;
//!
//! impl OnRefusal<RateLimited> for PlainText {
//!     fn response(&self, refused: &RateLimited) -> Response<Bytes> {
//!         let mut r = Response::new(Bytes::from(format!("slow down: {refused}\n")));
//!         *r.status_mut() = refused.status();
//!         r
//!     }
//! }
//!
//! let layer = RateLimitLayer::builder().response(PlainText).build();
//! # let _ = layer; }
//! ```

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// A request refused by a layer: its status and when the same request may succeed.
pub trait Refusal: fmt::Display + Send + Sync + 'static {
    /// The status of the answer (429, 503, ...).
    fn status(&self) -> StatusCode;

    /// When the same request may succeed (`Retry-After`); `None` when no wait will do.
    fn retry_after(&self) -> Option<Duration>;
}

/// Builds the response for a refusal `R`. The layers add their own headers (rate-limit
/// state, `Retry-After`) and the refusal itself to the extensions afterwards, so an
/// implementation only chooses status and body.
pub trait OnRefusal<R: Refusal>: Clone + Send + Sync + 'static {
    /// The response for `refusal`.
    fn response(&self, refusal: &R) -> Response<Bytes>;
}

/// The default answer: the refusal's status, `{"error": "<its message>"}` as JSON, and
/// `Retry-After` when it has one.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonRefusal;

impl<R: Refusal> OnRefusal<R> for JsonRefusal {
    fn response(&self, refusal: &R) -> Response<Bytes> {
        json(
            refusal.status(),
            &refusal.to_string(),
            refusal.retry_after(),
        )
    }
}

/// `status` with `{"error": message}` and, when given, `Retry-After`.
pub(crate) fn json(
    status: StatusCode,
    message: &str,
    retry_after: Option<Duration>,
) -> Response<Bytes> {
    let mut body = String::with_capacity(message.len() + 16);
    body.push_str("{\"error\":\"");
    escape_json_into(&mut body, message);
    body.push_str("\"}");
    let mut r = Response::new(Bytes::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(d) = retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(d)));
    }
    r
}

/// `Retry-After` for a wait: whole seconds, rounded up so that waiting that long is
/// enough, and at least 1.
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Appends `s` as the inside of a JSON string.
fn escape_json_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_json_whatever_the_message_holds() {
        let nasty = "a \"quoted\" \\ back\nslash\u{1}\u{7f} é";
        let r = json(
            StatusCode::TOO_MANY_REQUESTS,
            nasty,
            Some(Duration::from_millis(1500)),
        );
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["error"], nasty);
        let r = json(StatusCode::SERVICE_UNAVAILABLE, "x", None);
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        for (us, want) in [
            (0, 1),
            (1, 1),
            (1_000_000, 1),
            (1_000_001, 2),
            (2_500_000, 3),
        ] {
            assert_eq!(retry_after_secs(Duration::from_micros(us)), want, "{us} us");
        }
    }
}
