//! Stored HTTP responses: which may be stored and for how long, their encoding in the
//! engine, and the responses built from them (hits, 304s).

use std::sync::OnceLock;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use sha2::{Digest, Sha256};

use super::control::{CacheControl, Vary, if_none_match};
use super::entry::Lifetimes;

/// A stored response as L1 keeps it decoded: the headers of a hit ready to clone, with
/// `Age` and `Cache-Status` present so that setting them replaces rather than grows the
/// map.
#[derive(Debug)]
pub(crate) struct StoredResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) etag: Option<HeaderValue>,
}

/// What `Cache-Status` says of a response built from a stored one.
pub(crate) enum Status<'a> {
    /// A plain hit: `{name}; hit; ttl={ttl}`.
    Hit(&'a HitStatus, i64),
    /// Anything else, built by the caller.
    Other(HeaderValue),
}

/// The `Cache-Status` values of plain hits, one per `ttl` from -60 to 3600 s, built on
/// first use as static strings (a hit clones one without touching a reference count).
/// There is one table per cache name per process, whatever the number of layers, so what
/// it holds for good is bounded: about 150 KB per name, plus the values used.
#[derive(Debug)]
pub(crate) struct HitStatus {
    name: String,
    table: &'static [OnceLock<HeaderValue>],
}

const TTL_MIN: i64 = -60;
const TTL_MAX: i64 = 3600;

impl HitStatus {
    pub(crate) fn new(name: &str) -> Self {
        type Tables = Vec<(String, &'static [OnceLock<HeaderValue>])>;
        static TABLES: std::sync::Mutex<Tables> = std::sync::Mutex::new(Vec::new());
        let mut tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
        let table = match tables.iter().find(|(n, _)| n == name) {
            Some((_, t)) => *t,
            None => {
                let t: &'static [OnceLock<HeaderValue>] =
                    Box::leak((TTL_MIN..=TTL_MAX).map(|_| OnceLock::new()).collect());
                tables.push((name.to_owned(), t));
                t
            }
        };
        Self {
            name: name.to_owned(),
            table,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn value(&self, ttl: i64) -> HeaderValue {
        let text = || format!("{}; hit; ttl={ttl}", self.name);
        if !(TTL_MIN..=TTL_MAX).contains(&ttl) {
            return value_of(text());
        }
        self.table[(ttl - TTL_MIN) as usize]
            .get_or_init(|| {
                let s: &'static str = Box::leak(text().into_boxed_str());
                HeaderValue::from_static(s)
            })
            .clone()
    }
}

/// `Age` values for the first hour as static strings: cloning one touches no reference
/// count. Built once per process (one allocation of about 15 KB).
fn age_value(age: u64) -> HeaderValue {
    static AGES: OnceLock<Box<[HeaderValue]>> = OnceLock::new();
    const N: u64 = 3601;
    if age >= N {
        return HeaderValue::from(age);
    }
    let table = AGES.get_or_init(|| {
        let mut all = String::new();
        let mut ends = Vec::with_capacity(N as usize);
        for n in 0..N {
            all.push_str(&n.to_string());
            ends.push(all.len());
        }
        let all: &'static str = Box::leak(all.into_boxed_str());
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let v = HeaderValue::from_static(&all[start..end]);
                start = end;
                v
            })
            .collect()
    });
    table[age as usize].clone()
}

pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// A header value from text the caller knows is valid (digits, a validated name).
fn value_of(s: String) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from(s)).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Headers that describe one connection or one transfer, never stored.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "age"
            | "cache-status"
    )
}

/// Why a response is not stored, or for how long it is.
/// Whether a response may be stored, for how long, and which request headers beyond the
/// configured ones it varies on (sorted; those select a variant under the URI's key).
pub(crate) fn storable(
    status: StatusCode,
    headers: &HeaderMap,
    statuses: &[StatusCode],
    vary: &[HeaderName],
    defaults: Lifetimes,
) -> Option<(Lifetimes, Vec<HeaderName>)> {
    if !statuses.contains(&status) || headers.contains_key(header::SET_COOKIE) {
        return None;
    }
    let cc = CacheControl::parse(headers.get_all(header::CACHE_CONTROL));
    if cc.no_store || cc.private || cc.no_cache || cc.invalid {
        return None;
    }
    let extra = match Vary::parse(headers.get_all(header::VARY)) {
        Vary::None => Vec::new(),
        Vary::Any => return None,
        Vary::Headers(names) => {
            let mut extra: Vec<HeaderName> =
                names.into_iter().filter(|n| !vary.contains(n)).collect();
            extra.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            extra
        }
    };
    let lifetime = match cc.shared_max_age() {
        Some(secs) => Duration::from_secs(u64::from(secs)),
        None => match headers.get(header::EXPIRES) {
            // RFC 9111 §5.3: an invalid `Expires` (such as `0`) means already expired.
            Some(expires) => expires_lifetime(expires, headers.get(header::DATE))?,
            None => defaults.ttl,
        },
    };
    // Freshness already used up on the way here (RFC 9111 §4.2.3).
    let age = headers
        .get(header::AGE)
        .and_then(|a| a.to_str().ok()?.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let ttl = lifetime.checked_sub(age).filter(|t| !t.is_zero())?;
    let secs = |s: Option<u32>, d: Duration| s.map_or(d, |s| Duration::from_secs(u64::from(s)));
    let (swr, sie) = if cc.must_revalidate {
        (Duration::ZERO, Duration::ZERO)
    } else if cc.s_maxage.is_some() {
        // `s-maxage` implies proxy-revalidate for a shared cache (RFC 9111 §5.2.2.10): only
        // the response's own RFC 5861 directives may allow serving it stale.
        (
            secs(cc.stale_while_revalidate, Duration::ZERO),
            secs(cc.stale_if_error, Duration::ZERO),
        )
    } else {
        (
            secs(cc.stale_while_revalidate, defaults.swr),
            secs(cc.stale_if_error, defaults.sie),
        )
    };
    Some((Lifetimes { ttl, swr, sie }, extra))
}

/// Stored at a URI's key when its responses vary on headers beyond the configured ones:
/// the names, so a lookup can find the variant for its request. Encoded with a zero
/// status, which no response has.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct VaryMarker(pub(crate) Vec<HeaderName>);

pub(crate) fn encode_marker(names: &[HeaderName]) -> Bytes {
    let mut out = BytesMut::with_capacity(2 + names.len() * 16);
    out.put_u16(0);
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            out.put_u8(b'\n');
        }
        out.put_slice(n.as_str().as_bytes());
    }
    out.freeze()
}

pub(crate) fn decode_marker(bytes: &Bytes) -> Option<VaryMarker> {
    let names = bytes.strip_prefix(&[0, 0])?;
    names
        .split(|&b| b == b'\n')
        .map(|n| HeaderName::from_bytes(n).ok())
        .collect::<Option<Vec<_>>>()
        .filter(|v| !v.is_empty())
        .map(VaryMarker)
}

/// The key of a request's variant under `primary`: the values of `names` appended.
pub(crate) fn variant_key(primary: &str, request: &HeaderMap, names: &[HeaderName]) -> String {
    let mut key = String::with_capacity(primary.len() + 32);
    key.push_str(primary);
    key.push_str("\n~");
    for name in names {
        key.push('\n');
        key.push_str(name.as_str());
        key.push(':');
        for (i, v) in request.get_all(name).iter().enumerate() {
            if i > 0 {
                key.push(',');
            }
            key.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
    }
    key
}

/// `Expires` minus `Date` (or now, without a usable `Date`); `None` if `Expires` is not an
/// HTTP date or is not in the future.
fn expires_lifetime(expires: &HeaderValue, date: Option<&HeaderValue>) -> Option<Duration> {
    let parse = |v: &HeaderValue| httpdate::parse_http_date(v.to_str().ok()?).ok();
    let expires = parse(expires)?;
    let date = date
        .and_then(parse)
        .unwrap_or_else(std::time::SystemTime::now);
    expires.duration_since(date).ok().filter(|d| !d.is_zero())
}

/// A strong validator from the body: 128 bits of its SHA-256, so every instance gives the
/// same response the same tag.
pub(crate) fn etag_for(body: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(body);
    let mut tag = Vec::with_capacity(34);
    tag.push(b'"');
    crate::hex::encode_into(&digest[..16], &mut tag);
    tag.push(b'"');
    HeaderValue::from_bytes(&tag).expect("hex digits are a valid header value")
}

/// Encodes a response for the engine: status, headers (minus hop-by-hop ones; with an
/// `ETag`), body.
pub(crate) fn encode(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 256);
    out.put_u16(status.as_u16());
    let etag = if headers.contains_key(header::ETAG) {
        None
    } else {
        Some(etag_for(body))
    };
    // The count is a u16: past it, headers are dropped rather than miscounted.
    let room = usize::from(u16::MAX) - usize::from(etag.is_some());
    let kept: Vec<(&HeaderName, &HeaderValue)> = headers
        .iter()
        .filter(|(n, _)| !hop_by_hop(n))
        .take(room)
        .collect();
    let count = kept.len() + usize::from(etag.is_some());
    out.put_u16(count as u16);
    let mut put = |name: &HeaderName, value: &HeaderValue| {
        out.put_u16(name.as_str().len() as u16);
        out.put_slice(name.as_str().as_bytes());
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
    };
    for (name, value) in &kept {
        put(name, value);
    }
    if let Some(etag) = &etag {
        put(&header::ETAG, etag);
    }
    out.put_slice(body);
    out.freeze()
}

/// Decodes what [`encode`] wrote; `None` for anything else (an entry of another type or
/// from another version), which the caller treats as a miss.
pub(crate) fn decode(bytes: &Bytes) -> Option<StoredResponse> {
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let s = bytes.get(*at..at.checked_add(n)?)?;
        *at += n;
        Some(s)
    };
    let u16_at = |at: &mut usize| take(at, 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let status = StatusCode::from_u16(u16_at(&mut at)?).ok()?;
    let count = u16_at(&mut at)?;
    let mut headers = HeaderMap::with_capacity(usize::from(count) + 3);
    for _ in 0..count {
        let n = usize::from(u16_at(&mut at)?);
        let name = HeaderName::from_bytes(take(&mut at, n)?).ok()?;
        let l = take(&mut at, 4)?;
        let len = u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize;
        let value = HeaderValue::from_bytes(take(&mut at, len)?).ok()?;
        headers.append(name, value);
    }
    let etag = headers.get(header::ETAG).cloned();
    let body = bytes.slice(at..);
    headers.insert(header::AGE, HeaderValue::from_static("0"));
    headers.insert(CACHE_STATUS, HeaderValue::from_static("-"));
    Some(StoredResponse {
        status,
        headers,
        body,
        etag,
    })
}

/// The headers a 304 carries (RFC 9110 §15.4.5).
const NOT_MODIFIED_HEADERS: [HeaderName; 6] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
];

/// The response a stored one gives: a 304 when `If-None-Match` matches its `ETag`, no body
/// for `HEAD`, with `Age` and `Cache-Status`.
pub(crate) fn respond(
    stored: &StoredResponse,
    request_headers: &HeaderMap,
    head: bool,
    age: u64,
    status: Status<'_>,
) -> Response<Option<Bytes>> {
    // Preconditions apply to 2xx responses only (RFC 9110 §13.2.1).
    let not_modified = stored.status.is_success()
        && stored.etag.as_ref().is_some_and(|etag| {
            request_headers.contains_key(header::IF_NONE_MATCH)
                && if_none_match(
                    request_headers.get_all(header::IF_NONE_MATCH),
                    etag.as_bytes(),
                )
        });
    let age_value = age_value(age);
    let status_value = match status {
        Status::Hit(table, ttl) => table.value(ttl),
        Status::Other(v) => v,
    };
    let mut res;
    if not_modified {
        res = Response::new(None);
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        let headers = res.headers_mut();
        for name in NOT_MODIFIED_HEADERS {
            for v in stored.headers.get_all(&name) {
                headers.append(name.clone(), v.clone());
            }
        }
    } else {
        res = Response::new(if head || stored.body.is_empty() {
            None
        } else {
            Some(stored.body.clone())
        });
        *res.status_mut() = stored.status;
        *res.headers_mut() = stored.headers.clone();
        if head {
            // A GET's body carries its own length; a HEAD answer must state it.
            res.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(stored.body.len()));
        }
        // The stored map has both (see `decode`): replace in place, no hashing, no growth.
        let (mut age_value, mut status_value) = (Some(age_value), Some(status_value));
        for (name, value) in res.headers_mut().iter_mut() {
            let new = if *name == header::AGE {
                age_value.take()
            } else if *name == CACHE_STATUS {
                status_value.take()
            } else {
                None
            };
            if let Some(v) = new {
                *value = v;
            }
        }
        return res;
    }
    res.headers_mut().insert(header::AGE, age_value);
    res.headers_mut().insert(CACHE_STATUS, status_value);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    const DEFAULTS: Lifetimes = Lifetimes {
        ttl: Duration::from_secs(60),
        swr: Duration::from_secs(5),
        sie: Duration::from_secs(50),
    };

    #[test]
    fn storable_table() {
        let ok = [StatusCode::OK];
        let vary = [HeaderName::from_static("accept-language")];
        let secs = Duration::from_secs;
        type Case = (
            &'static str,
            u16,
            &'static [(&'static str, &'static str)],
            Option<Lifetimes>,
        );
        let cases: [Case; 19] = [
            ("plain 200", 200, &[], Some(DEFAULTS)),
            ("404 not configured", 404, &[], None),
            ("set-cookie", 200, &[("set-cookie", "a=b")], None),
            ("no-store", 200, &[("cache-control", "no-store")], None),
            (
                "private",
                200,
                &[("cache-control", "private, max-age=60")],
                None,
            ),
            ("no-cache", 200, &[("cache-control", "no-cache")], None),
            ("max-age=0", 200, &[("cache-control", "max-age=0")], None),
            ("bad max-age", 200, &[("cache-control", "max-age=x")], None),
            (
                "max-age",
                200,
                &[("cache-control", "max-age=7")],
                Some(Lifetimes {
                    ttl: secs(7),
                    ..DEFAULTS
                }),
            ),
            (
                "s-maxage wins",
                200,
                &[(
                    "cache-control",
                    "max-age=7, s-maxage=9, stale-while-revalidate=1",
                )],
                Some(Lifetimes {
                    ttl: secs(9),
                    swr: secs(1),
                    sie: Duration::ZERO,
                }),
            ),
            (
                "must-revalidate serves nothing stale",
                200,
                &[("cache-control", "max-age=7, must-revalidate")],
                Some(Lifetimes {
                    ttl: secs(7),
                    swr: Duration::ZERO,
                    sie: Duration::ZERO,
                }),
            ),
            ("vary *", 200, &[("vary", "*")], None),
            ("expires 0", 200, &[("expires", "0")], None),
            (
                "expires in the past",
                200,
                &[
                    ("date", "Tue, 01 Dec 2026 10:00:00 GMT"),
                    ("expires", "Tue, 01 Dec 2026 09:00:00 GMT"),
                ],
                None,
            ),
            (
                "expires a minute after date",
                200,
                &[
                    ("date", "Tue, 01 Dec 2026 10:00:00 GMT"),
                    ("expires", "Tue, 01 Dec 2026 10:01:00 GMT"),
                ],
                Some(Lifetimes {
                    ttl: secs(60),
                    ..DEFAULTS
                }),
            ),
            (
                "age is subtracted",
                200,
                &[("cache-control", "max-age=60"), ("age", "45")],
                Some(Lifetimes {
                    ttl: secs(15),
                    ..DEFAULTS
                }),
            ),
            (
                "age beyond max-age",
                200,
                &[("cache-control", "max-age=60"), ("age", "60")],
                None,
            ),
            (
                "vary on a configured header",
                200,
                &[("vary", "Accept-Language")],
                Some(DEFAULTS),
            ),
            (
                "vary on another header: stored as a variant",
                200,
                &[("vary", "accept-language, cookie")],
                Some(DEFAULTS),
            ),
        ];
        for (name, status, hs, want) in cases {
            let got = storable(
                StatusCode::from_u16(status).unwrap(),
                &headers(hs),
                &ok,
                &vary,
                DEFAULTS,
            );
            assert_eq!(got.map(|(l, _)| l), want, "case {name}");
        }
    }

    #[test]
    fn vary_beyond_the_configured_headers_names_the_extra_ones_sorted() {
        let vary = [HeaderName::from_static("accept-language")];
        let (_, extra) = storable(
            StatusCode::OK,
            &headers(&[("vary", "X-B, accept-language, x-a")]),
            &[StatusCode::OK],
            &vary,
            DEFAULTS,
        )
        .unwrap();
        assert_eq!(extra, ["x-a", "x-b"]);
        let marker = encode_marker(&extra);
        assert_eq!(decode_marker(&marker), Some(VaryMarker(extra.clone())));
        assert!(decode(&marker).is_none(), "a marker is never a response");
        assert!(decode_marker(&encode(StatusCode::OK, &HeaderMap::new(), b"x")).is_none());
        let req = headers(&[("x-a", "1"), ("x-b", "2"), ("x-b", "3")]);
        assert_eq!(variant_key("h:/p", &req, &extra), "h:/p\n~\nx-a:1\nx-b:2,3");
    }

    #[test]
    fn encoding_round_trips_and_adds_an_etag() {
        let h = headers(&[
            ("content-type", "application/json"),
            ("x-a", "1"),
            ("x-a", "2"),
            ("connection", "close"),
            ("content-length", "2"),
        ]);
        let bytes = encode(StatusCode::OK, &h, b"{}");
        let r = decode(&bytes).unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(&r.body[..], b"{}");
        assert_eq!(r.headers.get_all("x-a").iter().count(), 2);
        assert!(!r.headers.contains_key("connection"));
        assert!(!r.headers.contains_key("content-length"));
        assert_eq!(r.etag, Some(etag_for(b"{}")));
        // An ETag from the origin is kept.
        let h = headers(&[("etag", "W/\"v1\"")]);
        let r = decode(&encode(StatusCode::OK, &h, b"x")).unwrap();
        assert_eq!(r.etag.unwrap(), "W/\"v1\"");
    }

    #[test]
    fn truncated_or_foreign_bytes_do_not_decode() {
        let bytes = encode(StatusCode::OK, &headers(&[("x-a", "1")]), b"body");
        for cut in 0..12 {
            assert!(decode(&bytes.slice(..cut)).is_none(), "cut at {cut}");
        }
        assert!(decode(&Bytes::from_static(b"\"json value\"")).is_none());
    }

    #[test]
    fn respond_gives_304_on_a_matching_if_none_match_and_no_body_for_head() {
        let h = headers(&[
            ("content-type", "text/plain"),
            ("cache-control", "max-age=5"),
        ]);
        let stored = decode(&encode(StatusCode::OK, &h, b"hello")).unwrap();
        let etag = stored.etag.clone().unwrap();
        let table = HitStatus::new("tower-scale");
        let status = || Status::Hit(&table, 5);
        let mut req = HeaderMap::new();
        req.insert(header::IF_NONE_MATCH, etag.clone());
        let res = respond(&stored, &req, false, 3, status());
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        assert!(res.body().is_none());
        assert_eq!(res.headers()[header::ETAG], etag);
        assert_eq!(res.headers()[header::CACHE_CONTROL], "max-age=5");
        assert!(!res.headers().contains_key(header::CONTENT_TYPE));
        let res = respond(&stored, &HeaderMap::new(), true, 3, status());
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.body().is_none());
        assert_eq!(res.headers()[header::CONTENT_LENGTH], "5");
        assert_eq!(res.headers()[header::AGE], "3");
        let mut req = HeaderMap::new();
        req.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        let res = respond(&stored, &req, false, 0, status());
        assert_eq!(res.headers()["cache-status"], "tower-scale; hit; ttl=5");
        for age in [0, 1, 59, 3600, 3601, u64::MAX] {
            assert_eq!(age_value(age), age.to_string().as_str());
        }
        for ttl in [-61, -60, 0, 3600, 3601] {
            assert_eq!(
                table.value(ttl),
                format!("tower-scale; hit; ttl={ttl}").as_str()
            );
        }
        assert_eq!(res.body().as_deref(), Some(&b"hello"[..]));
    }
}
