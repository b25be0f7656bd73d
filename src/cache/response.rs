//! Stored HTTP responses: which may be stored and for how long, their encoding in the
//! engine, and the responses built from them (hits, 304s).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use sha2::{Digest, Sha256};

use super::control::{self, CacheControl, Vary, if_none_match, not_modified_since};
use super::entry::{Entry, Lifetimes};

/// A stored response as L1 keeps it decoded: the headers of a hit ready to clone, with
/// `Age` and `Cache-Status` present so that setting them replaces rather than grows the
/// map.
#[derive(Debug)]
pub(crate) struct StoredResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) etag: Option<HeaderValue>,
    /// `Last-Modified`, for a client's `If-Modified-Since`.
    pub(crate) last_modified: Option<SystemTime>,
    /// Fields the origin sent for this cache only (targeted `Cache-Control`), kept for
    /// revalidation and never sent to clients.
    pub(crate) hidden: Vec<(HeaderName, HeaderValue)>,
    /// The `ETag` is this cache's own (from the body), not a validator the origin knows.
    pub(crate) own_etag: bool,
    pub(crate) meta: Meta,
}

/// What a stored response carries beyond its message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Its age when stored (RFC 9111 §4.2.3), seconds: its `Age` grows from there.
    pub(crate) initial_age: u32,
    /// How long past fresh it may stand in for a failing origin, seconds.
    pub(crate) stale_if_error: u32,
}

impl StoredResponse {
    /// Adds the validators the origin gave (`If-None-Match` from its `ETag`,
    /// `If-Modified-Since` from its `Last-Modified`) to a request; false if it gave none.
    pub(crate) fn add_conditions(&self, request: &mut HeaderMap) -> bool {
        let mut any = false;
        if let Some(etag) = self.etag.as_ref().filter(|_| !self.own_etag) {
            request.insert(header::IF_NONE_MATCH, etag.clone());
            any = true;
        }
        if let Some(lm) = self.headers.get(header::LAST_MODIFIED) {
            request.insert(header::IF_MODIFIED_SINCE, lm.clone());
            any = true;
        }
        any
    }

    /// Whether a 304 to a revalidation selects this stored response (RFC 9111 §4.3.4):
    /// its `ETag`, if it has one, is this response's; else its `Last-Modified`, if it has
    /// one, is; a 304 with neither selects it.
    pub(crate) fn is_validated_by(&self, update: &HeaderMap) -> bool {
        if let Some(theirs) = update.get(header::ETAG) {
            return !self.own_etag && self.etag.as_ref() == Some(theirs);
        }
        match update.get(header::LAST_MODIFIED) {
            Some(theirs) => self.headers.get(header::LAST_MODIFIED) == Some(theirs),
            None => true,
        }
    }

    /// Whether the origin gave a validator this cache can revalidate with.
    pub(crate) fn has_validator(&self) -> bool {
        (self.etag.is_some() && !self.own_etag) || self.headers.contains_key(header::LAST_MODIFIED)
    }

    /// May stand in for a failing origin at `now`: only a successful response, and only
    /// within its stale-if-error window.
    pub(crate) fn serves_on_error(&self, entry: &Entry, now: u64) -> bool {
        let window = u64::from(self.meta.stale_if_error).saturating_mul(1_000_000);
        self.status.is_success()
            && now < entry.sie_until
            && now < entry.fresh_until.saturating_add(window)
    }

    /// The header fields as the origin sent them (what was stored of them).
    fn origin_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(self.headers.len() + self.hidden.len());
        for (name, value) in &self.headers {
            if *name == header::AGE || *name == CACHE_STATUS {
                continue;
            }
            if self.own_etag && *name == header::ETAG {
                continue;
            }
            h.append(name.clone(), value.clone());
        }
        for (name, value) in &self.hidden {
            h.append(name.clone(), value.clone());
        }
        h
    }

    /// The stored fields updated by a `304` (or a `HEAD` response) to a revalidation, as
    /// RFC 9111 §4.3.4 says: each field the update carries replaces the stored one, except
    /// those that describe the connection or the body's length.
    pub(crate) fn updated_by(&self, update: &HeaderMap) -> HeaderMap {
        let mut h = self.origin_headers();
        let mut replaced: Vec<&HeaderName> = Vec::new();
        let listed: Vec<&[u8]> = update
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| control::split_list(v.as_bytes()))
            .collect();
        for (name, value) in update {
            if (hop_by_hop(name) && *name != header::AGE)
                || *name == header::CONTENT_LENGTH
                || listed
                    .iter()
                    .any(|l| l.eq_ignore_ascii_case(name.as_str().as_bytes()))
            {
                continue;
            }
            if !replaced.contains(&name) {
                h.remove(name);
                replaced.push(name);
            }
            h.append(name.clone(), value.clone());
        }
        h
    }
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

/// How the layer decides what to store, from its builder.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    /// Statuses stored with the engine's TTL when the response states no freshness.
    pub(crate) statuses: Vec<StatusCode>,
    /// False: only responses that state their freshness are stored.
    pub(crate) default_freshness: bool,
    /// Request headers in every key.
    pub(crate) vary: Vec<HeaderName>,
    /// Targeted `Cache-Control` fields (RFC 9213) this cache obeys, in order.
    pub(crate) targeted: Vec<HeaderName>,
    /// How long past fresh a response with validators is kept for revalidation.
    pub(crate) keep: Duration,
}

/// How a response is stored.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Storable {
    /// The engine's lifetimes: fresh, stale-while-revalidate, and kept (for stale-if-error
    /// or revalidation, whichever is longer).
    pub(crate) lifetimes: Lifetimes,
    /// Request headers its `Vary` names beyond the configured ones, sorted: those select a
    /// variant under the URI's key.
    pub(crate) extra: Vec<HeaderName>,
    pub(crate) meta: Meta,
    /// Fields never stored: those `Connection` lists and those `private="..."` and
    /// `no-cache="..."` name.
    pub(crate) strip: Vec<HeaderName>,
}

/// Whether a response may be stored by a shared cache (RFC 9111 §3), for how long, and
/// how. `authorized`: the request carried `Authorization`, so the response is stored only
/// if it says it may be shared (§3.5).
pub(crate) fn storable(
    status: StatusCode,
    headers: &HeaderMap,
    rules: &Rules,
    defaults: Lifetimes,
    authorized: bool,
) -> Option<Storable> {
    // Interim responses never reach a tower service through hyper; 206 and 304 are not
    // whole responses.
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || headers.contains_key(header::SET_COOKIE)
    {
        return None;
    }
    let (cc, _) = CacheControl::for_response(headers, &rules.targeted);
    if cc.no_store || cc.private || cc.invalid {
        return None;
    }
    if authorized && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return None;
    }
    let extra = match Vary::parse(headers.get_all(header::VARY)) {
        Vary::None => Vec::new(),
        Vary::Any => return None,
        Vary::Headers(names) => {
            let mut extra: Vec<HeaderName> = names
                .into_iter()
                .filter(|n| !rules.vary.contains(n))
                .collect();
            extra.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            extra
        }
    };
    // Explicit freshness makes any final status storable (§3); without it, only the
    // configured statuses, with the operator's default.
    let explicit = match cc.shared_max_age() {
        Some(secs) => Some(Duration::from_secs(u64::from(secs))),
        // §5.3: an invalid `Expires` (such as `0`) means already expired.
        None => headers
            .get(header::EXPIRES)
            .map(|e| expires_lifetime(e, headers.get(header::DATE)).unwrap_or(Duration::ZERO)),
    };
    let lifetime = match explicit {
        Some(lifetime) => lifetime,
        None if rules.default_freshness && rules.statuses.contains(&status) => defaults.ttl,
        None => return None,
    };
    // Freshness already used up on the way here (§4.2.3): the `Age` it carries, or the
    // time since its `Date`, whichever is more. An `Age` that is not one non-negative
    // integer makes the response stale.
    let age = control::age(headers.get_all(header::AGE))?;
    let apparent = headers
        .get(header::DATE)
        .and_then(control::http_date)
        .and_then(|date| SystemTime::now().duration_since(date).ok())
        .map_or(0, |d| d.as_secs());
    let initial_age = age.max(apparent);
    let mut ttl = lifetime.saturating_sub(Duration::from_secs(initial_age));
    if cc.no_cache {
        // Stored, but every reuse is revalidated first (§5.2.2.4).
        ttl = Duration::ZERO;
    }
    let validator =
        headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
    if ttl.is_zero() && !validator {
        // Stale at once and nothing to revalidate it with: no use storing it.
        return None;
    }
    let secs = |s: Option<u32>, d: Duration| s.map_or(d, |s| Duration::from_secs(u64::from(s)));
    let (swr, sie) = if cc.must_revalidate || cc.no_cache {
        (Duration::ZERO, Duration::ZERO)
    } else if cc.s_maxage.is_some() || ttl.is_zero() {
        // `s-maxage` implies proxy-revalidate for a shared cache (§5.2.2.10), and a
        // response stale on arrival is revalidated before use: only the response's own
        // RFC 5861 directives may allow serving it stale.
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
    let keep = if validator {
        rules.keep
    } else {
        Duration::ZERO
    };
    let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let mut strip = cc.no_cache_fields;
    for name in cc.private_fields {
        if !strip.contains(&name) {
            strip.push(name);
        }
    }
    for value in headers.get_all(header::CONNECTION) {
        for token in control::split_list(value.as_bytes()) {
            if let Ok(name) = HeaderName::from_bytes(token)
                && !strip.contains(&name)
            {
                strip.push(name);
            }
        }
    }
    Some(Storable {
        lifetimes: Lifetimes {
            ttl,
            swr,
            sie: sie.max(keep),
        },
        extra,
        meta: Meta {
            initial_age: clamp(initial_age),
            stale_if_error: clamp(sie.as_secs()),
        },
        strip,
    })
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
        control::push_selecting_value(&mut key, name, request.get_all(name));
    }
    key
}

/// `Expires` minus `Date` (or now, without a usable `Date`); `None` if `Expires` is not an
/// HTTP date or is not in the future.
fn expires_lifetime(expires: &HeaderValue, date: Option<&HeaderValue>) -> Option<Duration> {
    let expires = control::http_date(expires)?;
    let date = date
        .and_then(control::http_date)
        .unwrap_or_else(SystemTime::now);
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

/// The first two bytes of an encoded response: its status with this bit set (a marker
/// has zero, an older encoding the bare status; neither decodes as a response).
const ENCODING: u16 = 0x8000;
/// On a field name's length: the field is for this cache only, not sent to clients.
const HIDDEN: u16 = 0x8000;
/// On a field name's length: the `ETag` is this cache's own.
const OWN: u16 = 0x4000;
const NAME_LEN: u16 = 0x3fff;

/// Encodes a response for the engine: status, what it carries beyond the message, the
/// fields (minus hop-by-hop ones and `strip`; `targeted` ones marked hidden; with an
/// `ETag`), body.
pub(crate) fn encode(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    meta: Meta,
    targeted: &[HeaderName],
    strip: &[HeaderName],
) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 256);
    out.put_u16(status.as_u16() | ENCODING);
    out.put_u32(meta.initial_age);
    out.put_u32(meta.stale_if_error);
    let etag = if headers.contains_key(header::ETAG) {
        None
    } else {
        Some(etag_for(body))
    };
    // The count is a u16: past it, fields are dropped rather than miscounted.
    let room = usize::from(u16::MAX) - usize::from(etag.is_some());
    let kept: Vec<(&HeaderName, &HeaderValue)> = headers
        .iter()
        .filter(|(n, _)| {
            !hop_by_hop(n) && !strip.contains(n) && n.as_str().len() <= usize::from(NAME_LEN)
        })
        .take(room)
        .collect();
    let count = kept.len() + usize::from(etag.is_some());
    out.put_u16(count as u16);
    let mut put = |name: &HeaderName, value: &HeaderValue, flags: u16| {
        out.put_u16(name.as_str().len() as u16 | flags);
        out.put_slice(name.as_str().as_bytes());
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
    };
    for (name, value) in &kept {
        let flags = if targeted.contains(name) { HIDDEN } else { 0 };
        put(name, value, flags);
    }
    if let Some(etag) = &etag {
        put(&header::ETAG, etag, OWN);
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
    let u32_at = |at: &mut usize| take(at, 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let first = u16_at(&mut at)?;
    if first & ENCODING == 0 {
        return None;
    }
    let status = StatusCode::from_u16(first & !ENCODING).ok()?;
    let meta = Meta {
        initial_age: u32_at(&mut at)?,
        stale_if_error: u32_at(&mut at)?,
    };
    let count = u16_at(&mut at)?;
    let mut headers = HeaderMap::with_capacity(usize::from(count) + 3);
    let mut hidden = Vec::new();
    let mut own_etag = false;
    for _ in 0..count {
        let raw = u16_at(&mut at)?;
        let name = HeaderName::from_bytes(take(&mut at, usize::from(raw & NAME_LEN))?).ok()?;
        let len = u32_at(&mut at)? as usize;
        let value = HeaderValue::from_bytes(take(&mut at, len)?).ok()?;
        if raw & HIDDEN != 0 {
            hidden.push((name, value));
        } else {
            own_etag |= raw & OWN != 0;
            headers.append(name, value);
        }
    }
    let etag = headers.get(header::ETAG).cloned();
    let last_modified = headers
        .get(header::LAST_MODIFIED)
        .and_then(control::http_date);
    let body = bytes.slice(at..);
    headers.insert(header::AGE, HeaderValue::from_static("0"));
    headers.insert(CACHE_STATUS, HeaderValue::from_static("-"));
    Some(StoredResponse {
        status,
        headers,
        body,
        etag,
        last_modified,
        hidden,
        own_etag,
        meta,
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

/// Whether a request's preconditions make the answer from `stored` a 304 (RFC 9110
/// §13.2.2): `If-None-Match` against its `ETag`, else `If-Modified-Since` against its
/// `Last-Modified`. They apply to 2xx responses only (§13.2.1).
fn not_modified(stored: &StoredResponse, request_headers: &HeaderMap) -> bool {
    if !stored.status.is_success() || request_headers.is_empty() {
        return false;
    }
    if request_headers.contains_key(header::IF_NONE_MATCH) {
        return stored.etag.as_ref().is_some_and(|etag| {
            if_none_match(
                request_headers.get_all(header::IF_NONE_MATCH),
                etag.as_bytes(),
            )
        });
    }
    match (
        request_headers.get(header::IF_MODIFIED_SINCE),
        stored.last_modified,
    ) {
        (Some(since), Some(modified)) => not_modified_since(since, modified),
        _ => false,
    }
}

/// Headers a cached response is given room for, beyond its own.
const RESERVED_FOR_OUTER_LAYERS: usize = 8;

/// The response a stored one gives: a 304 when the request's preconditions say so, no body
/// for `HEAD`, with `Age` (`resident`: seconds in this cache, added to the age it
/// arrived with) and `Cache-Status`.
pub(crate) fn respond(
    stored: &StoredResponse,
    request_headers: &HeaderMap,
    head: bool,
    resident: u64,
    status: Status<'_>,
) -> Response<Option<Bytes>> {
    let not_modified = not_modified(stored, request_headers);
    let age_value = age_value(resident.saturating_add(u64::from(stored.meta.initial_age)));
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
        // Room for what the layers outside add to a response (ids, limits, cookies): a
        // clone has none, and growing it by one header at a time moves it more than once.
        res.headers_mut().reserve(RESERVED_FOR_OUTER_LAYERS);
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
                    ("date", "Tue, 01 Dec 2037 10:00:00 GMT"),
                    ("expires", "Tue, 01 Dec 2037 10:01:00 GMT"),
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
        let rules = Rules {
            statuses: ok.to_vec(),
            default_freshness: true,
            vary: vary.to_vec(),
            targeted: Vec::new(),
            keep: Duration::ZERO,
        };
        for (name, status, hs, want) in cases {
            let got = storable(
                StatusCode::from_u16(status).unwrap(),
                &headers(hs),
                &rules,
                DEFAULTS,
                false,
            );
            assert_eq!(got.map(|st| st.lifetimes), want, "case {name}");
        }
    }

    fn rules() -> Rules {
        Rules {
            statuses: vec![StatusCode::OK],
            default_freshness: true,
            vary: Vec::new(),
            targeted: vec![HeaderName::from_static("cdn-cache-control")],
            keep: Duration::from_secs(300),
        }
    }

    /// RFC 9111's storing rules beyond the basic ones: the lifetimes each case gets
    /// (`None`: not stored), with keep = 300 s for responses with validators.
    #[test]
    fn shared_cache_storing_table() {
        let secs = Duration::from_secs;
        let lt = |ttl: u64, swr: u64, sie: u64| {
            Some(Lifetimes {
                ttl: secs(ttl),
                swr: secs(swr),
                sie: secs(sie),
            })
        };
        type Case = (
            &'static str,
            u16,
            &'static [(&'static str, &'static str)],
            bool,
            Option<Lifetimes>,
        );
        let cases: [Case; 19] = [
            (
                "404 with max-age",
                404,
                &[("cache-control", "max-age=7")],
                false,
                lt(7, 5, 50),
            ),
            (
                "500 with s-maxage",
                500,
                &[("cache-control", "s-maxage=7")],
                false,
                lt(7, 0, 0),
            ),
            ("404 without freshness", 404, &[], false, None),
            (
                "103 interim",
                103,
                &[("cache-control", "max-age=7")],
                false,
                None,
            ),
            (
                "206 partial",
                206,
                &[("cache-control", "max-age=7")],
                false,
                None,
            ),
            ("304", 304, &[("cache-control", "max-age=7")], false, None),
            (
                "no-cache with an etag: stored, revalidated every time",
                200,
                &[("cache-control", "no-cache"), ("etag", "\"v1\"")],
                false,
                lt(0, 0, 300),
            ),
            (
                "no-cache with last-modified",
                200,
                &[
                    ("cache-control", "no-cache, max-age=60"),
                    ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
                ],
                false,
                lt(0, 0, 300),
            ),
            (
                "max-age=0 with an etag",
                200,
                &[("cache-control", "max-age=0"), ("etag", "\"v1\"")],
                false,
                lt(0, 0, 300),
            ),
            (
                "a validator keeps it past fresh",
                200,
                &[("cache-control", "max-age=7"), ("etag", "\"v1\"")],
                false,
                lt(7, 5, 300),
            ),
            (
                "qualified no-cache is storable",
                200,
                &[("cache-control", "no-cache=\"x-a\", max-age=7")],
                false,
                lt(7, 5, 50),
            ),
            (
                "qualified private is storable",
                200,
                &[("cache-control", "private=\"x-a\", max-age=7")],
                false,
                lt(7, 5, 50),
            ),
            (
                "invalid age is stale",
                200,
                &[("cache-control", "max-age=60"), ("age", "old, 0")],
                false,
                None,
            ),
            (
                "authorized without a share directive",
                200,
                &[("cache-control", "max-age=7")],
                true,
                None,
            ),
            (
                "authorized with public",
                200,
                &[("cache-control", "public, max-age=7")],
                true,
                lt(7, 5, 50),
            ),
            (
                "authorized with must-revalidate",
                200,
                &[("cache-control", "must-revalidate, max-age=7")],
                true,
                lt(7, 0, 0),
            ),
            (
                "targeted wins over no-store",
                200,
                &[
                    ("cache-control", "no-store"),
                    ("cdn-cache-control", "max-age=9"),
                ],
                false,
                lt(9, 5, 50),
            ),
            (
                "targeted private wins over max-age",
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("cdn-cache-control", "private"),
                ],
                false,
                None,
            ),
            (
                "expires in an obsolete format",
                200,
                &[
                    ("date", "Tuesday, 01-Dec-37 10:00:00 GMT"),
                    ("expires", "tue, 01 dec 2037 10:01:00 gmt"),
                ],
                false,
                lt(60, 5, 50),
            ),
        ];
        for (name, status, hs, authorized, want) in cases {
            let got = storable(
                StatusCode::from_u16(status).unwrap(),
                &headers(hs),
                &rules(),
                DEFAULTS,
                authorized,
            );
            assert_eq!(got.map(|st| st.lifetimes), want, "case {name}");
        }
        let no_default = Rules {
            default_freshness: false,
            ..rules()
        };
        assert!(
            storable(
                StatusCode::OK,
                &HeaderMap::new(),
                &no_default,
                DEFAULTS,
                false
            )
            .is_none()
        );
        assert!(
            storable(
                StatusCode::OK,
                &headers(&[("cache-control", "max-age=1")]),
                &no_default,
                DEFAULTS,
                false
            )
            .is_some()
        );
    }

    #[test]
    fn stored_fields_leave_out_what_the_response_says_not_to_store() {
        let h = headers(&[
            ("cache-control", "no-store"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("x-user", "alice"),
            ("x-secret", "s"),
            (
                "cdn-cache-control",
                "private=\"x-user\", no-cache=\"x-secret\", max-age=60",
            ),
            ("x-kept", "k"),
            ("age", "20"),
        ]);
        let rules = rules();
        let st = storable(StatusCode::OK, &h, &rules, DEFAULTS, false).unwrap();
        assert_eq!(st.meta.initial_age, 20);
        assert_eq!(st.lifetimes.ttl, Duration::from_secs(40));
        let r = decode(&encode(
            StatusCode::OK,
            &h,
            b"b",
            st.meta,
            &rules.targeted,
            &st.strip,
        ))
        .unwrap();
        for gone in [
            "x-hop",
            "x-user",
            "x-secret",
            "connection",
            "cdn-cache-control",
        ] {
            assert!(!r.headers.contains_key(gone), "{gone} stored");
        }
        assert_eq!(r.headers["x-kept"], "k");
        assert_eq!(r.hidden.len(), 1, "the targeted field is kept aside");
        assert!(r.own_etag);
        // Served with the age it arrived with plus its time here.
        let table = HitStatus::new("tower-scale");
        let res = respond(&r, &HeaderMap::new(), false, 5, Status::Hit(&table, 1));
        assert_eq!(res.headers()[header::AGE], "25");
        assert!(!res.headers().contains_key("cdn-cache-control"));
    }

    #[test]
    fn a_304_updates_the_stored_fields_but_not_the_body_length() {
        let h = headers(&[
            ("cache-control", "max-age=1"),
            ("etag", "\"v1\""),
            ("x-a", "old"),
            ("x-b", "kept"),
        ]);
        let stored = decode(&encode(
            StatusCode::OK,
            &h,
            b"body",
            Meta::default(),
            &[],
            &[],
        ))
        .unwrap();
        assert!(!stored.own_etag);
        let mut req = HeaderMap::new();
        assert!(stored.add_conditions(&mut req));
        assert_eq!(req[header::IF_NONE_MATCH], "\"v1\"");
        let update = headers(&[
            ("cache-control", "max-age=60"),
            ("x-a", "new"),
            ("content-length", "0"),
            ("connection", "close"),
        ]);
        let merged = stored.updated_by(&update);
        assert_eq!(merged[header::CACHE_CONTROL], "max-age=60");
        assert_eq!(merged["x-a"], "new");
        assert_eq!(merged["x-b"], "kept");
        assert!(!merged.contains_key(header::CONTENT_LENGTH));
        assert!(!merged.contains_key(header::CONNECTION));
        assert!(!merged.contains_key(CACHE_STATUS));
        // This cache's own ETag is no validator for the origin.
        let own = decode(&encode(
            StatusCode::OK,
            &HeaderMap::new(),
            b"x",
            Meta::default(),
            &[],
            &[],
        ))
        .unwrap();
        assert!(own.own_etag);
        let mut req = HeaderMap::new();
        assert!(!own.add_conditions(&mut req));
        assert!(!own.updated_by(&HeaderMap::new()).contains_key(header::ETAG));
    }

    #[test]
    fn if_modified_since_is_answered_from_last_modified() {
        let h = headers(&[("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT")]);
        let stored = decode(&encode(StatusCode::OK, &h, b"x", Meta::default(), &[], &[])).unwrap();
        let table = HitStatus::new("tower-scale");
        let ask = |since: &'static str| {
            let mut req = HeaderMap::new();
            req.insert(header::IF_MODIFIED_SINCE, HeaderValue::from_static(since));
            respond(&stored, &req, false, 0, Status::Hit(&table, 1)).status()
        };
        assert_eq!(
            ask("Tue, 01 Dec 2026 10:00:00 GMT"),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            ask("Wed, 02 Dec 2026 10:00:00 GMT"),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(ask("Tue, 01 Dec 2026 09:59:59 GMT"), StatusCode::OK);
        assert_eq!(ask("not a date"), StatusCode::OK);
        // If-None-Match, when present, decides alone (RFC 9110 §13.2.2).
        let mut req = HeaderMap::new();
        req.insert(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_static("Wed, 02 Dec 2026 10:00:00 GMT"),
        );
        req.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(
            respond(&stored, &req, false, 0, Status::Hit(&table, 1)).status(),
            StatusCode::OK
        );
    }

    #[test]
    fn vary_beyond_the_configured_headers_names_the_extra_ones_sorted() {
        let vary = [HeaderName::from_static("accept-language")];
        let rules = Rules {
            vary: vary.to_vec(),
            ..rules()
        };
        let extra = storable(
            StatusCode::OK,
            &headers(&[("vary", "X-B, accept-language, x-a")]),
            &rules,
            DEFAULTS,
            false,
        )
        .unwrap()
        .extra;
        assert_eq!(extra, ["x-a", "x-b"]);
        let marker = encode_marker(&extra);
        assert_eq!(decode_marker(&marker), Some(VaryMarker(extra.clone())));
        assert!(decode(&marker).is_none(), "a marker is never a response");
        assert!(
            decode_marker(&encode(
                StatusCode::OK,
                &HeaderMap::new(),
                b"x",
                Meta::default(),
                &[],
                &[]
            ))
            .is_none()
        );
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
        let bytes = encode(StatusCode::OK, &h, b"{}", Meta::default(), &[], &[]);
        let r = decode(&bytes).unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(&r.body[..], b"{}");
        assert_eq!(r.headers.get_all("x-a").iter().count(), 2);
        assert!(!r.headers.contains_key("connection"));
        assert!(!r.headers.contains_key("content-length"));
        assert_eq!(r.etag, Some(etag_for(b"{}")));
        // An ETag from the origin is kept.
        let h = headers(&[("etag", "W/\"v1\"")]);
        let r = decode(&encode(StatusCode::OK, &h, b"x", Meta::default(), &[], &[])).unwrap();
        assert_eq!(r.etag.unwrap(), "W/\"v1\"");
    }

    #[test]
    fn truncated_or_foreign_bytes_do_not_decode() {
        let bytes = encode(
            StatusCode::OK,
            &headers(&[("x-a", "1")]),
            b"body",
            Meta::default(),
            &[],
            &[],
        );
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
        let stored = decode(&encode(
            StatusCode::OK,
            &h,
            b"hello",
            Meta::default(),
            &[],
            &[],
        ))
        .unwrap();
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
