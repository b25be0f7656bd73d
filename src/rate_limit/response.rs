//! Refusals: the typed [`RateLimited`], the response a refusal gets, and the headers.
//!
//! Headers follow draft-ietf-httpapi-ratelimit-headers-10: `RateLimit-Policy` lists each
//! quota that applied (`"api";q=100;w=900`), `RateLimit` its state (`"api";r=42;t=30`:
//! remaining units, seconds until it is full again). A refusal adds `Retry-After`, rounded
//! up so that waiting that many seconds gets the same request admitted.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::gcra::{Gcra, Verdict};
use super::quota::Quota;

/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// One quota's state after a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuotaStatus {
    /// The quota's name.
    pub name: Arc<str>,
    /// Requests per window.
    pub limit: u32,
    /// The window.
    pub window: Duration,
    /// Units still available.
    pub remaining: u64,
    /// Until the quota is full again.
    pub reset: Duration,
    /// Until this quota admits the request (`None`: never, its cost exceeds the burst;
    /// zero: it admits it now).
    pub retry_after: Option<Duration>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// A quota is used up.
    QuotaExceeded,
    /// The store could not answer and the layer fails closed.
    StoreUnavailable,
}

/// A refused request: put in the refusal response's extensions, and what the response
/// builder gets.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimited {
    /// Why.
    pub reason: Reason,
    /// When the same request will be admitted (`None` if it never will: its cost exceeds a
    /// quota's burst, or the store is down).
    pub retry_after: Option<Duration>,
    /// Every quota that applied, refusing or not.
    pub quotas: Vec<QuotaStatus>,
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            Reason::StoreUnavailable => f.write_str("rate limiter unavailable; try again shortly"),
            Reason::QuotaExceeded => {
                let names: Vec<&str> = self
                    .quotas
                    .iter()
                    .filter(|q| q.retry_after != Some(Duration::ZERO))
                    .map(|q| &*q.name)
                    .collect();
                write!(f, "rate limit exceeded ({})", names.join(", "))?;
                match self.retry_after {
                    Some(d) => write!(f, "; retry in {} s", ceil_secs(d)),
                    None => f.write_str("; this request is larger than the quota allows"),
                }
            }
        }
    }
}

impl std::error::Error for RateLimited {}

impl crate::refusal::Refusal for RateLimited {
    /// 429, or 503 when the store is down and the layer fails closed.
    fn status(&self) -> StatusCode {
        match self.reason {
            Reason::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            Reason::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_micros()
        .div_ceil(1_000_000)
        .try_into()
        .unwrap_or(u64::MAX)
}

fn us_to_secs_ceil(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

/// `"name";q=LIMIT;w=WINDOW_SECONDS` for one quota. The window is whole seconds: a
/// sub-second or fractional period is advertised over the window rounded up, with the
/// quota scaled to it (`5/500ms` is `q=10;w=1`), rounded down so it never overstates.
pub(crate) fn policy_item(q: &Quota) -> HeaderValue {
    let w = ceil_secs(q.period()).max(1);
    let scaled = u128::from(q.limit()) * u128::from(w) * 1_000_000 / q.period().as_micros().max(1);
    let limit = u64::try_from(scaled).unwrap_or(u64::MAX).max(1);
    // Names are restricted to token characters, so this is always a valid header value.
    HeaderValue::from_str(&format!("\"{}\";q={};w={}", q.name(), limit, w))
        .unwrap_or_else(|_| HeaderValue::from_static("\"default\""))
}

pub(crate) fn status(q: &Quota, v: &Verdict, gcra: &Gcra) -> QuotaStatus {
    QuotaStatus {
        name: Arc::from(q.name()),
        limit: q.limit(),
        window: q.period(),
        remaining: v.remaining(gcra),
        reset: Duration::from_micros(v.reset_us),
        retry_after: (v.retry_after_us != u64::MAX)
            .then(|| Duration::from_micros(v.retry_after_us)),
    }
}

/// Writes `RateLimit-Policy`, `RateLimit` and (if asked) `X-RateLimit-*` for the quotas
/// that applied, in order.
pub(crate) fn write_headers<'a>(
    headers: &mut impl HeaderSink,
    applied: impl Iterator<Item = (&'a Quota, &'a HeaderValue, Verdict, Gcra)> + Clone,
    x_headers: bool,
) {
    // One quota (the usual case): its policy value as built, shared; several: joined.
    let mut rows = applied.clone();
    let policy = match (rows.next(), rows.next()) {
        (Some((_, p, _, _)), None) => Some(p.clone()),
        (None, _) => None,
        _ => {
            let mut joined = Vec::with_capacity(64);
            for (i, (_, p, _, _)) in applied.clone().enumerate() {
                if i > 0 {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(p.as_bytes());
            }
            HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)).ok()
        }
    };
    if let Some(v) = policy {
        headers.put(RATELIMIT_POLICY, v);
    }
    // Written in this thread's scratch buffer, then copied into the header: one
    // allocation. A `String` of its own handed over to `Bytes` cost two (the string, then
    // the `Bytes` that shares it, as it has spare room).
    let state = STATE_SCRATCH.with_borrow_mut(|state| {
        state.clear();
        for (i, (q, _, v, g)) in applied.clone().enumerate() {
            if i > 0 {
                state.extend_from_slice(b", ");
            }
            state.push(b'"');
            state.extend_from_slice(q.name().as_bytes());
            state.extend_from_slice(b"\";r=");
            push_decimal(state, v.remaining(&g));
            state.extend_from_slice(b";t=");
            push_decimal(state, us_to_secs_ceil(v.reset_us));
        }
        let value = HeaderValue::from_bytes(state).ok();
        if state.capacity() > 4096 {
            // Many long quota names once: do not keep the memory for the thread's life.
            *state = Vec::new();
        }
        value
    });
    if let Some(v) = state {
        headers.put(RATELIMIT, v);
    }
    if x_headers
        && let Some((q, _, v, g)) = applied.min_by_key(|(_, _, v, g)| (v.allowed, v.remaining(g)))
    {
        headers.put(X_LIMIT, HeaderValue::from(q.limit()));
        headers.put(X_REMAINING, HeaderValue::from(v.remaining(&g)));
        headers.put(X_RESET, HeaderValue::from(us_to_secs_ceil(v.reset_us)));
    }
}

/// Where the rate-limit headers go: a refusal's own map, or the list an admitted request
/// carries until its response exists.
pub(crate) trait HeaderSink {
    fn put(&mut self, name: HeaderName, value: HeaderValue);
}

impl HeaderSink for HeaderMap {
    fn put(&mut self, name: HeaderName, value: HeaderValue) {
        self.insert(name, value);
    }
}

/// The headers for a response not made yet, in the order written: a list, not a map (a
/// map of its own cost three allocations and a second hashing of every name).
pub(crate) type Pending = Vec<(HeaderName, HeaderValue)>;

impl HeaderSink for Pending {
    fn put(&mut self, name: HeaderName, value: HeaderValue) {
        self.push((name, value));
    }
}

/// How many headers [`write_headers`] writes at most: the policy and the state, and the
/// three `X-RateLimit-*` ones when they are on.
pub(crate) fn pending_capacity(x_headers: bool) -> usize {
    if x_headers { 5 } else { 2 }
}

thread_local! {
    /// Where [`write_headers`] writes the `RateLimit` value before copying it out.
    static STATE_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Appends `n` in decimal: the formatting machinery costs more than the digits, and
/// pushing them one `char` at a time checked each for UTF-8 and capacity.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        // The remainder is below 10: the cast cannot truncate.
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Adds `Retry-After` (whole seconds, rounded up) when the refusal has one.
pub(crate) fn write_retry_after(headers: &mut HeaderMap, retry_after: Option<Duration>) {
    if let Some(d) = retry_after {
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from(crate::refusal::retry_after_secs(d)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(allowed: bool, retry_us: u64, reset_us: u64) -> Verdict {
        Verdict {
            allowed,
            retry_after_us: retry_us,
            reset_us,
        }
    }

    #[test]
    fn decimals_match_the_formatter() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            let mut s = b"x".to_vec();
            push_decimal(&mut s, n);
            assert_eq!(s, format!("x{n}").as_bytes());
        }
    }

    /// The `RateLimit` value is written in a scratch buffer the thread keeps: what an
    /// earlier request wrote never leaks into the next, longer or shorter.
    #[test]
    fn the_state_scratch_starts_clean_each_time() {
        let api: Quota = "100/15m".parse::<Quota>().unwrap().named("api").unwrap();
        let export: Quota = "10/1h".parse::<Quota>().unwrap().named("export").unwrap();
        let (pa, pe) = (policy_item(&api), policy_item(&export));
        let rows = [
            (&api, &pa, v(true, 0, 899_999_999), api.gcra()),
            (&export, &pe, v(false, 5, 3_600_000_000), export.gcra()),
        ];
        let mut values = Vec::new();
        for n in [2, 1, 2] {
            let mut h = HeaderMap::new();
            write_headers(&mut h, rows[..n].iter().copied(), false);
            values.push(h[RATELIMIT].to_str().unwrap().to_owned());
        }
        assert_eq!(values[0], "\"api\";r=0;t=900, \"export\";r=0;t=3600");
        assert_eq!(values[1], "\"api\";r=0;t=900");
        assert_eq!(values[2], values[0]);
    }

    #[test]
    fn header_format_matches_the_draft() {
        let api: Quota = "100/15m".parse::<Quota>().unwrap().named("api").unwrap();
        let export: Quota = "10/1h".parse::<Quota>().unwrap().named("export").unwrap();
        let (pa, pe) = (policy_item(&api), policy_item(&export));
        assert_eq!(pa, "\"api\";q=100;w=900");
        let mut h = HeaderMap::new();
        write_headers(
            &mut h,
            [
                // 100 per 15 min: one unit every 9 s; 42 left is 58 units in use.
                (&api, &pa, v(true, 0, 58 * 9_000_000 - 1), api.gcra()),
                (
                    &export,
                    &pe,
                    v(false, 5_000_000, 3_600_000_000),
                    export.gcra(),
                ),
            ]
            .into_iter(),
            true,
        );
        assert_eq!(
            h[RATELIMIT_POLICY],
            "\"api\";q=100;w=900, \"export\";q=10;w=3600"
        );
        assert_eq!(h[RATELIMIT], "\"api\";r=42;t=522, \"export\";r=0;t=3600");
        // X-RateLimit-* describe the refusing quota.
        assert_eq!(h[X_LIMIT], "10");
        assert_eq!(h[X_REMAINING], "0");
    }

    #[test]
    fn sub_second_windows_are_scaled_not_stretched() {
        let q: Quota = "5/500ms".parse().unwrap();
        assert_eq!(policy_item(&q), "\"5/500ms\";q=10;w=1");
        let q: Quota = "3/1500ms".parse().unwrap();
        assert_eq!(policy_item(&q), "\"3/1500ms\";q=4;w=2");
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one() {
        let mut h = HeaderMap::new();
        write_retry_after(&mut h, Some(Duration::from_millis(1)));
        assert_eq!(h[RETRY_AFTER], "1");
        write_retry_after(&mut h, Some(Duration::from_millis(2001)));
        assert_eq!(h[RETRY_AFTER], "3");
        let mut h = HeaderMap::new();
        write_retry_after(&mut h, None);
        assert!(h.get(RETRY_AFTER).is_none());
    }

    #[test]
    fn default_response_is_json() {
        use crate::refusal::{JsonRefusal, OnRefusal};
        let r = RateLimited {
            reason: Reason::QuotaExceeded,
            retry_after: Some(Duration::from_secs(9)),
            quotas: vec![],
        };
        let resp = JsonRefusal.response(&r);
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[RETRY_AFTER], "9");
        let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(body["error"], "rate limit exceeded (); retry in 9 s");
        let r = RateLimited {
            reason: Reason::StoreUnavailable,
            retry_after: None,
            quotas: vec![],
        };
        assert_eq!(
            JsonRefusal.response(&r).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
