//! Read-your-writes through the cache when no replica gives a token.
//!
//! A `PUT /products/{id}` invalidates the cached product and list on every instance, but
//! another instance drops its own in-process copy only when the invalidation message
//! reaches it. With replicas, the database routing's token already sends the writer's
//! next reads past the cache (`refresh_if`). Without them, instances sharing Redis would
//! leave a gap of one message's flight in which the writer, sent to another instance,
//! could read its old copy. So a successful write also sets a short-lived cookie, and for
//! [`FOR`] after it the writer's reads are answered by the database, not the cache.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;

/// The cookie's name.
pub(crate) const COOKIE: &str = "wrote";

/// How long after a write the writer's reads skip the cache: far past the invalidation
/// messages' flight, and short enough that a writer soon reads through the cache again.
pub(crate) const FOR: Duration = Duration::from_secs(5);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Marks a successful write's response: `wrote=<ms since the epoch>`, for [`FOR`].
pub(crate) fn mark(mut res: Response, secure: bool) -> Response {
    if !res.status().is_success() {
        return res;
    }
    let cookie = format!(
        "{COOKIE}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{}",
        now_ms(),
        FOR.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

/// True if the request carries a write mark younger than [`FOR`] (either way: the
/// instance that wrote it may run a clock a little ahead). A malformed one is no mark.
pub(crate) fn wrote_recently(headers: &HeaderMap) -> bool {
    let now = now_ms();
    let window = u64::try_from(FOR.as_millis()).unwrap_or(u64::MAX);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter_map(|ms| ms.parse::<u64>().ok())
        .any(|at| now.abs_diff(at) < window)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn a_fresh_mark_counts_and_an_old_or_malformed_one_does_not() {
        let now = now_ms();
        assert!(wrote_recently(&with_cookie(&format!(
            "id=x; {COOKIE}={now}"
        ))));
        assert!(!wrote_recently(&with_cookie(&format!(
            "{COOKIE}={}",
            now - 6_000
        ))));
        for junk in [
            "wrote=",
            "wrote=abc",
            "wrote=-5",
            "wroteX=1",
            "x=1",
            ";;",
            "wrote=99999999999999999999999",
        ] {
            assert!(!wrote_recently(&with_cookie(junk)), "{junk}");
        }
        assert!(!wrote_recently(&HeaderMap::new()));
    }

    #[test]
    fn only_a_successful_write_is_marked() {
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        let ok = mark(StatusCode::OK.into_response(), true);
        let set = ok.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            set.starts_with("wrote=") && set.contains("Max-Age=5") && set.contains("; Secure"),
            "{set}"
        );
        assert!(wrote_recently(&with_cookie(set.split(';').next().unwrap())));
        let refused = mark(StatusCode::BAD_REQUEST.into_response(), true);
        assert!(refused.headers().get(header::SET_COOKIE).is_none());
    }
}
