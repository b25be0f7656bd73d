//! [`ResponseCache`]: the service and its future.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::CacheBody;
use super::control;
use super::control::CacheControl;
use super::entry::{Entry, Lookup, Outcome};
use super::flight::{Join, Leader};
use super::layer::{AuthorizedRequests, ResponseCacheLayer, Settings};
use super::response::{
    CACHE_STATUS, Meta, Status, StoredResponse, VaryMarker, decode, decode_marker, encode,
    encode_marker, respond, storable, variant_key,
};

use crate::BoxError;
use crate::key::RequestRef;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The service [`ResponseCacheLayer`] makes. See the [module docs](super).
#[derive(Clone)]
pub struct ResponseCache<S> {
    pub(crate) inner: S,
    pub(crate) settings: Arc<Settings>,
}

impl<S: fmt::Debug> fmt::Debug for ResponseCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCache")
            .field("inner", &self.inner)
            .field(
                "layer",
                &ResponseCacheLayer {
                    settings: Arc::clone(&self.settings),
                },
            )
            .finish()
    }
}

pin_project! {
    /// The future of [`ResponseCache`]: ready at once for a hit, the inner service's own
    /// for a request that passes through, boxed for a miss (which waits on the network
    /// anyway).
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: FutKind<F, B, E>,
    }
}

pin_project! {
    #[project = FutKindProj]
    enum FutKind<F, B, E> {
        Ready { res: Option<Response<CacheBody<B>>> },
        Pass { #[pin] fut: F, status: Option<HeaderValue>, strip: Option<Arc<Settings>> },
        Boxed { fut: BoxFuture<Result<Response<CacheBody<B>>, E>> },
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            FutKindProj::Ready { res } => Poll::Ready(Ok(res
                .take()
                .expect("ResponseFuture polled after completion"))),
            FutKindProj::Pass { fut, status, strip } => {
                let res = std::task::ready!(fut.poll(cx))?;
                let mut res = pass(res, status.take());
                if let Some(s) = strip.take() {
                    strip_targeted(&s, res.headers_mut());
                }
                Poll::Ready(Ok(res))
            }
            FutKindProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}

fn pass<B>(res: Response<B>, status: Option<HeaderValue>) -> Response<CacheBody<B>> {
    let mut res = res.map(CacheBody::inner);
    if let Some(status) = status {
        res.headers_mut().insert(CACHE_STATUS, status);
    }
    res
}

/// Targeted `Cache-Control` fields are for this cache, not for clients (RFC 9213).
fn strip_targeted(s: &Settings, headers: &mut HeaderMap) {
    for name in &s.rules.targeted {
        headers.remove(name);
    }
}

/// The settings to strip targeted fields with, if any are configured (a pass-through
/// then holds one reference more).
fn strip_of(s: &Arc<Settings>) -> Option<Arc<Settings>> {
    (!s.rules.targeted.is_empty()).then(|| Arc::clone(s))
}

fn status_value(name: &str, rest: &str) -> HeaderValue {
    let mut s = String::with_capacity(name.len() + rest.len() + 2);
    s.push_str(name);
    s.push_str("; ");
    s.push_str(rest);
    HeaderValue::from_maybe_shared(Bytes::from(s))
        .unwrap_or_else(|_| HeaderValue::from_static("tower-scale"))
}

fn hit_status<'a>(s: &'a Settings, entry: &Entry, now: u64, detail: Option<&str>) -> Status<'a> {
    let ttl = entry.ttl_secs(now);
    match detail {
        None => Status::Hit(&s.hit_status, ttl),
        Some(d) => Status::Other(status_value(
            s.hit_status.name(),
            &format!("hit; ttl={ttl}; detail={d}"),
        )),
    }
}

/// For a request that asked for the origin's answer (`no-cache`, `max-age=0`, the refresh
/// hook): what L1 holds is never served, only used to revalidate (a browser's reload then
/// costs the origin a 304, not a body).
fn demoted(found: Lookup, refresh: bool) -> Lookup {
    match found {
        Lookup::Fresh(e) | Lookup::Stale(e) if refresh => Lookup::Miss { fallback: Some(e) },
        other => other,
    }
}

fn stored_of(entry: &Entry) -> Option<&StoredResponse> {
    entry.decoded_ref::<StoredResponse>(decode)
}

fn marker_of(entry: &Entry) -> Option<&VaryMarker> {
    entry.decoded_ref::<VaryMarker>(decode_marker)
}

fn respond_entry<B>(
    entry: &Entry,
    stored: &StoredResponse,
    request_headers: &HeaderMap,
    head: bool,
    status: Status<'_>,
    now: u64,
) -> Response<CacheBody<B>> {
    respond(stored, request_headers, head, entry.age_secs(now), status).map(CacheBody::full)
}

/// The owned key: the one already copied, or written again (only misses need one).
fn key_for<B>(req: &Request<B>, vary: &[HeaderName], copied: Option<String>) -> String {
    copied.unwrap_or_else(|| {
        let mut key = String::with_capacity(64);
        write_key(&mut key, req, vary);
        key
    })
}

/// The cache key: the URI as the request gives it (path and query; the authority too in
/// absolute form) and the configured `Vary` headers' values. The `Host` header is not in
/// it, so instances reached under different names share entries; a service that answers
/// several hosts lists `host` among its `vary` headers.
fn write_key<B>(key: &mut String, req: &Request<B>, vary: &[HeaderName]) {
    key.push_str("h:");
    if let Some(a) = req.uri().authority() {
        key.push_str(a.as_str());
    }
    key.push_str(req.uri().path_and_query().map_or("/", |pq| pq.as_str()));
    for name in vary {
        key.push('\n');
        key.push_str(name.as_str());
        key.push(':');
        control::push_selecting_value(key, name, req.headers().get_all(name));
    }
}

thread_local! {
    /// The key of the request being looked up: a hit needs no owned copy.
    static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fn tags_of<B>(req: Request<B>, f: Option<&super::layer::TagFnRef>) -> (Request<B>, Vec<String>) {
    let mut tags = vec![ResponseCacheLayer::path_tag(req.uri().path())];
    match f {
        Some(f) => {
            tags.extend(f(RequestRef::from(&req)));
            (req, tags)
        }
        None => (req, tags),
    }
}

/// Request headers that would make the origin answer something other than the whole
/// response (a 304, a 206), which could not be stored.
const CONDITIONAL: [HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

/// Every method but the safe ones (RFC 9110 §9.2.1), unknown ones included.
fn unsafe_method(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The path a `Location` or `Content-Location` value names, resolved against the
/// request's URI (RFC 3986 §5.2), if it is on the request's origin (RFC 9111 §4.4 does
/// not let a response invalidate another origin's resources).
fn same_origin_path(
    uri: &http::Uri,
    host: Option<&HeaderValue>,
    value: &HeaderValue,
) -> Option<String> {
    let text = value.to_str().ok()?.trim();
    let text = text.split('#').next().unwrap_or_default();
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| host.and_then(|h| h.to_str().ok()).map(str::to_owned));
    let path = if text.starts_with("//") || has_scheme(text) {
        let absolute = if text.starts_with("//") {
            http::Uri::try_from(format!("http:{text}")).ok()?
        } else {
            http::Uri::try_from(text).ok()?
        };
        // §4.4 compares the host parts.
        let theirs = absolute.host()?;
        let ours = authority.and_then(|a| http::uri::Authority::try_from(a).ok());
        if !ours.is_some_and(|ours| ours.host().eq_ignore_ascii_case(theirs)) {
            return None;
        }
        absolute.path().to_owned()
    } else {
        let reference = text.split('?').next().unwrap_or_default();
        if reference.is_empty() {
            return None;
        }
        if reference.starts_with('/') {
            reference.to_owned()
        } else {
            let base = uri.path();
            let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{reference}")
        }
    };
    Some(remove_dot_segments(&path))
}

/// Whether a URI reference starts with a scheme (RFC 3986 §3.1: a letter, then letters,
/// digits, `+`, `-` or `.`, then `:` before any `/`, `?` or `#`).
fn has_scheme(text: &str) -> bool {
    let Some(colon) = text.find(':') else {
        return false;
    };
    let scheme = &text[..colon];
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// RFC 3986 §5.2.4, on a path that starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing = i == last,
            ".." => {
                out.pop();
                trailing = i == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut p = String::with_capacity(path.len());
    for seg in &out {
        p.push('/');
        p.push_str(seg);
    }
    if trailing || p.is_empty() {
        p.push('/');
    }
    p
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ResponseCache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Default + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let method = req.method();
        if method == Method::GET || method == Method::HEAD {
            return self.read(req);
        }
        if unsafe_method(method) {
            let s = Arc::clone(&self.settings);
            let (req, mut tags) = tags_of(req, s.invalidates.as_deref());
            let uri = req.uri().clone();
            let host = req.headers().get(header::HOST).cloned();
            let fut = self.inner.call(req);
            return boxed(async move {
                let res = fut.await?;
                if res.status().is_success() || res.status().is_redirection() {
                    // The resources the response names on this origin change too (RFC
                    // 9111 §4.4).
                    for name in [header::LOCATION, header::CONTENT_LOCATION] {
                        if let Some(path) = res
                            .headers()
                            .get(&name)
                            .and_then(|v| same_origin_path(&uri, host.as_ref(), v))
                        {
                            let tag = ResponseCacheLayer::path_tag(&path);
                            if !tags.contains(&tag) {
                                tags.push(tag);
                            }
                        }
                    }
                    // A task of its own: the write is done, so the invalidation must be
                    // too, even if the client goes away meanwhile.
                    let engine = s.engine.clone();
                    let again = s.reinvalidate.clone();
                    let task = tokio::spawn(async move {
                        for tag in &tags {
                            if let Err(e) = engine.invalidate_tag(tag).await {
                                tracing::warn!(tag = %tag, error = %e, "cache invalidation could not reach Redis; other instances keep their copies until TTL");
                            }
                        }
                        if !again.is_empty() {
                            // Copies loaded meanwhile from a replica that had not replayed
                            // the write go too.
                            tokio::spawn(async move {
                                let start = tokio::time::Instant::now();
                                for after in again {
                                    tokio::time::sleep_until(start + after).await;
                                    for tag in &tags {
                                        if let Err(e) = engine.invalidate_tag(tag).await {
                                            tracing::debug!(tag = %tag, error = %e, "later cache invalidation failed");
                                        }
                                    }
                                }
                            });
                        }
                    });
                    let _ = task.await;
                }
                let mut res = pass(res, None);
                strip_targeted(&s, res.headers_mut());
                Ok(res)
            });
        }
        ResponseFuture {
            kind: FutKind::Pass {
                fut: self.inner.call(req),
                status: None,
                strip: strip_of(&self.settings),
            },
        }
    }
}

fn boxed<F, B, E>(
    fut: impl Future<Output = Result<Response<CacheBody<B>>, E>> + Send + 'static,
) -> ResponseFuture<F, B, E> {
    ResponseFuture {
        kind: FutKind::Boxed { fut: Box::pin(fut) },
    }
}

impl<S> ResponseCache<S> {
    fn pass_with<ReqBody, ResBody>(
        &mut self,
        req: Request<ReqBody>,
        fwd: &str,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        let status = status_value(&self.settings.name, fwd);
        ResponseFuture {
            kind: FutKind::Pass {
                fut: self.inner.call(req),
                status: Some(status),
                strip: strip_of(&self.settings),
            },
        }
    }

    fn read<ReqBody, ResBody>(
        &mut self,
        req: Request<ReqBody>,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Default + Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let s = &*self.settings;
        let head = req.method() == Method::HEAD;
        // Requests with `Authorization` whose responses are stored only if shareable.
        let authorized = match s.authorized {
            AuthorizedRequests::Cache => false,
            _ if !req.headers().contains_key(header::AUTHORIZATION) => false,
            AuthorizedRequests::Shared => true,
            _ => return self.pass_with(req, "fwd=bypass"),
        };
        let req_cc = if req.headers().contains_key(header::CACHE_CONTROL) {
            CacheControl::parse(req.headers().get_all(header::CACHE_CONTROL))
        } else {
            CacheControl::default()
        };
        if req_cc.no_store {
            return self.pass_with(req, "fwd=bypass");
        }
        // A client's reload may be answered by revalidating the stored copy; a request the
        // refresh hook picks (read-your-writes) is answered by the origin alone.
        let reload = req_cc.no_cache || req_cc.max_age == Some(0);
        let own_writes = !reload
            && s.refresh_if
                .as_ref()
                .is_some_and(|f| f(RequestRef::from(&req)));
        let refresh = reload || own_writes;
        let looked_up = KEY.with_borrow_mut(|key| {
            key.clear();
            write_key(key, &req, &s.rules.vary);
            if key.len() > s.max_key {
                return None;
            }
            let (found, now) = if own_writes {
                (Lookup::Miss { fallback: None }, 0)
            } else {
                let (found, now) = s.engine.lookup_now(key);
                (demoted(found, reload), now)
            };
            // A fresh hit needs no owned key; anything else will.
            let owned = (!matches!(found, Lookup::Fresh(_))).then(|| key.clone());
            Some((found, now, owned))
        });
        let Some((mut found, mut now, mut key)) = looked_up else {
            return self.pass_with(req, "fwd=bypass; detail=key-too-long");
        };
        // The common case first: a fresh stored response.
        if let Lookup::Fresh(entry) = &found
            && let Some(stored) = stored_of(entry)
        {
            s.engine.served_fresh();
            let status = hit_status(s, entry, now, None);
            let res = respond_entry(entry, stored, req.headers(), head, status, now);
            return ResponseFuture {
                kind: FutKind::Ready { res: Some(res) },
            };
        }
        // The URI's responses vary on headers beyond the configured ones: its key holds a
        // marker naming them, and this request's variant has a key of its own.
        let mut variant = None;
        // A marker past fresh still leads to the variant, which may be kept for
        // revalidation.
        if let Lookup::Fresh(e) | Lookup::Stale(e) | Lookup::Miss { fallback: Some(e) } = &found
            && let Some(marker) = marker_of(e)
        {
            let names = marker.0.clone();
            let primary = key_for(&req, &s.rules.vary, key.take());
            let secondary = variant_key(&primary, req.headers(), &names);
            if secondary.len() > s.max_key {
                return self.pass_with(req, "fwd=bypass; detail=key-too-long");
            }
            (found, now) = s.engine.lookup_now(&secondary);
            found = demoted(found, reload);
            key = Some(secondary);
            variant = Some(names);
        }
        let mut fallback = None;
        match found {
            Lookup::Fresh(entry) => {
                if let Some(stored) = stored_of(&entry) {
                    s.engine.served_fresh();
                    let status = hit_status(s, &entry, now, None);
                    let res = respond_entry(&entry, stored, req.headers(), head, status, now);
                    return ResponseFuture {
                        kind: FutKind::Ready { res: Some(res) },
                    };
                }
            }
            Lookup::Stale(entry) => {
                if let Some(stored) = stored_of(&entry) {
                    let status = hit_status(s, &entry, now, None);
                    let res = respond_entry(&entry, stored, req.headers(), head, status, now);
                    if let Some(leader) = s.engine.served_stale(&key_for(&req, &s.rules.vary, key))
                    {
                        self.refresh_in_background(&req, leader, &entry, variant, authorized);
                    }
                    return ResponseFuture {
                        kind: FutKind::Ready { res: Some(res) },
                    };
                }
            }
            Lookup::Miss { fallback: f } => fallback = f,
        }
        let key = key_for(&req, &s.rules.vary, key);
        if head {
            // A HEAD response has no body to store; it is answered from GET entries only,
            // and updates the fields of a kept one it validates (RFC 9111 §4.3.5).
            let kept = fallback.filter(|e| stored_of(e).is_some_and(StoredResponse::has_validator));
            let Some(kept) = kept else {
                return self.pass_with(req, "fwd=miss");
            };
            // A leader of its own: GETs of the key neither wait for this HEAD nor are
            // held up by it.
            let leader = s.engine.detached_leader(&key);
            let (req, tags) = tags_of(req, s.tags.as_deref());
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            let s = Arc::clone(&self.settings);
            return boxed(async move {
                let update = HeadUpdate {
                    leader,
                    kept,
                    tags,
                    variant,
                    authorized,
                };
                let res = update.run(&s, inner, req).await?;
                let mut res = pass(res, Some(status_value(&s.name, "fwd=miss")));
                strip_targeted(&s, res.headers_mut());
                Ok(res)
            });
        }
        s.engine.missed();
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let s = Arc::clone(&self.settings);
        let load = Load {
            refresh,
            own_writes,
            variant,
            authorized,
        };
        boxed(miss(s, inner, req, key, fallback, load))
    }

    fn refresh_in_background<ReqBody, ResBody>(
        &self,
        req: &Request<ReqBody>,
        leader: Leader,
        stale: &Arc<Entry>,
        variant: Option<Vec<HeaderName>>,
        authorized: bool,
    ) where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Default + Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let mut r = Request::new(ReqBody::default());
        *r.uri_mut() = req.uri().clone();
        *r.version_mut() = req.version();
        *r.extensions_mut() = req.extensions().clone();
        let headers = r.headers_mut();
        for (name, value) in req.headers() {
            if !CONDITIONAL.contains(name) && name != header::CACHE_CONTROL {
                headers.append(name.clone(), value.clone());
            }
        }
        let s = Arc::clone(&self.settings);
        let mut svc = self.inner.clone();
        let stale = Arc::clone(stale);
        let load = Load {
            refresh: false,
            own_writes: false,
            variant,
            authorized,
        };
        tokio::spawn(async move {
            if std::future::poll_fn(|cx| svc.poll_ready(cx)).await.is_ok() {
                let _ = lead(&s, svc, r, leader, Some(stale), load).await;
            }
        });
    }
}

/// What a load is for.
struct Load {
    /// The client asked for the origin's answer (`no-cache`, the refresh hook).
    refresh: bool,
    /// The refresh hook picked the request: no stored copy may answer it, not even one
    /// revalidated (a `Last-Modified` within the second of a write would pass) or standing
    /// in for a failing origin.
    own_writes: bool,
    /// The `Vary` names of the variant being loaded, if the URI has variants.
    variant: Option<Vec<HeaderName>>,
    /// The request carries `Authorization`: store only shareable responses.
    authorized: bool,
}

async fn miss<S, ReqBody, ResBody>(
    s: Arc<Settings>,
    mut inner: S,
    req: Request<ReqBody>,
    key: String,
    fallback: Option<Arc<Entry>>,
    load: Load,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Default,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let began = s.engine.now();
    loop {
        match s.engine.join(&key).await {
            Join::Done(Outcome::Value(entry)) => {
                if let Some(stored) = stored_of(&entry) {
                    let now = s.engine.now();
                    // Loaded (or revalidated) while this request waited, or an older copy
                    // the leader served because the origin failed.
                    let status = if now < entry.fresh_until || entry.stored_at >= began {
                        Status::Other(status_value(&s.name, "fwd=miss; collapsed"))
                    } else {
                        hit_status(&s, &entry, now, Some("stale-if-error"))
                    };
                    return Ok(respond_entry(
                        &entry,
                        stored,
                        req.headers(),
                        false,
                        status,
                        now,
                    ));
                }
                break;
            }
            Join::Done(_) => break,
            // Its leader went away: join again (as its waiters, this request may lead).
            Join::Abandoned => {}
            Join::Lead(leader) => {
                return lead(&s, inner, req, leader, fallback, load).await;
            }
        }
    }
    let res = inner.call(req).await?;
    let mut res = pass(res, Some(status_value(&s.name, "fwd=miss")));
    strip_targeted(&s, res.headers_mut());
    Ok(res)
}

/// What reading a body up to the cap gave.
enum Collected<B> {
    Whole(Bytes),
    /// Too large, with trailers, or failed: the part read, then the rest (or the error).
    Partial(
        VecDeque<Frame<Bytes>>,
        Option<Pin<Box<B>>>,
        Option<BoxError>,
    ),
}

async fn collect<B>(body: B, cap: usize) -> Collected<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = Box::pin(body);
    if body.size_hint().lower() > cap as u64 {
        return Collected::Partial(VecDeque::new(), Some(body), None);
    }
    let mut frames = VecDeque::new();
    let mut size = 0usize;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                let trailers = frame.is_trailers();
                if let Some(d) = frame.data_ref() {
                    size = size.saturating_add(d.len());
                }
                frames.push_back(frame);
                if trailers || size > cap {
                    return Collected::Partial(frames, Some(body), None);
                }
            }
            Some(Err(e)) => return Collected::Partial(frames, None, Some(e.into())),
        }
    }
    if frames.len() == 1 {
        if let Ok(d) = frames.pop_front().expect("one frame").into_data() {
            return Collected::Whole(d);
        }
        return Collected::Whole(Bytes::new());
    }
    let mut all = BytesMut::with_capacity(size);
    for f in frames {
        if let Ok(d) = f.into_data() {
            all.extend_from_slice(&d);
        }
    }
    Collected::Whole(all.freeze())
}

async fn lead<S, ReqBody, ResBody>(
    s: &Settings,
    mut inner: S,
    req: Request<ReqBody>,
    mut leader: Leader,
    mut fallback: Option<Arc<Entry>>,
    load: Load,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Default,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let Load {
        refresh,
        own_writes,
        variant,
        authorized,
    } = load;
    let (mut req, tags) = tags_of(req, s.tags.as_deref());
    let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    let request_headers = req.headers().clone();
    // The origin is asked for the whole, unconditional response, which can be stored;
    // the client's conditions are answered from it here.
    for name in CONDITIONAL {
        req.headers_mut().remove(name);
    }
    if let Some(entry) = leader.read_l2(&tag_refs).await {
        let now = s.engine.now();
        if !refresh
            && now < entry.fresh_until
            && let Some(stored) = stored_of(&entry)
        {
            let status = hit_status(s, &entry, now, Some("l2"));
            let res = respond_entry(&entry, stored, &request_headers, false, status, now);
            leader.complete(Outcome::Value(entry));
            return Ok(res);
        }
        if now < entry.sie_until && !own_writes {
            fallback = Some(entry);
        }
    }
    // A kept copy with the origin's validators is revalidated: a 304 costs no body.
    // The unconditional request is kept in case the 304 names another representation.
    let unconditional = fallback
        .as_deref()
        .and_then(stored_of)
        .is_some_and(StoredResponse::has_validator)
        .then(|| {
            let mut r = Request::new(ReqBody::default());
            *r.uri_mut() = req.uri().clone();
            *r.version_mut() = req.version();
            *r.headers_mut() = req.headers().clone();
            *r.extensions_mut() = req.extensions().clone();
            r
        });
    let mut conditional = fallback
        .as_deref()
        .and_then(stored_of)
        .is_some_and(|stored| stored.add_conditions(req.headers_mut()));
    // Serves the stale-if-error copy to the caller and the waiters; without one, lets
    // the waiters go to the backend themselves. Only a successful response within its
    // stale-if-error window stands in for a failing origin.
    let serve_stale = |leader: Leader, fallback: Option<Arc<Entry>>| {
        let now = s.engine.now();
        let Some((entry, stored)) = fallback
            .as_ref()
            .and_then(|e| stored_of(e).map(|st| (e, st)))
            .filter(|(e, st)| st.serves_on_error(e, now))
        else {
            leader.complete(Outcome::Pass);
            return None;
        };
        s.engine.served_stale_on_error();
        let status = hit_status(s, entry, now, Some("stale-if-error"));
        let res = respond_entry(entry, stored, &request_headers, false, status, now);
        leader.complete(Outcome::Value(Arc::clone(entry)));
        Some(res)
    };
    let personal = Personal::of(&req);
    let mut answer = inner.call(req).await;
    let other_representation = conditional
        && answer.as_ref().is_ok_and(|res| {
            res.status() == StatusCode::NOT_MODIFIED
                && !fallback
                    .as_deref()
                    .and_then(stored_of)
                    .is_some_and(|stored| stored.is_validated_by(res.headers()))
        });
    if other_representation && let Some(again) = unconditional {
        // The 304 selects a representation this cache does not hold: fetch it whole.
        conditional = false;
        answer = match std::future::poll_fn(|cx| inner.poll_ready(cx)).await {
            Ok(()) => inner.call(again).await,
            Err(e) => Err(e),
        };
    }
    let res = match answer {
        Ok(res) => res,
        Err(e) => {
            leader.load_failed();
            return match serve_stale(leader, fallback) {
                Some(res) => Ok(res),
                None => Err(e),
            };
        }
    };
    let authorized = authorized || personal.made();
    if res.status().is_server_error() {
        leader.load_failed();
        if fallback.is_some() {
            if let Some(stale) = serve_stale(leader, fallback) {
                return Ok(stale);
            }
            let mut res = pass(res, Some(status_value(&s.name, "fwd=miss")));
            strip_targeted(s, res.headers_mut());
            return Ok(res);
        }
    } else {
        leader.load_succeeded();
    }
    if conditional
        && res.status() == StatusCode::NOT_MODIFIED
        && let Some(entry) = fallback
    {
        let parts = res.into_parts().0;
        return Ok(revalidated(
            s,
            leader,
            &entry,
            &parts.headers,
            &request_headers,
            &tag_refs,
            variant.as_deref(),
            authorized,
            if refresh {
                "fwd=request; fwd-status=304"
            } else {
                "fwd=stale; fwd-status=304"
            },
        )
        .await);
    }
    let fwd = if refresh {
        "fwd=request"
    } else if conditional {
        "fwd=stale"
    } else {
        "fwd=miss"
    };
    let unstored = |leader: Leader, res: Response<ResBody>| {
        leader.complete(Outcome::Pass);
        let mut res = pass(res, Some(status_value(&s.name, fwd)));
        strip_targeted(s, res.headers_mut());
        res
    };
    let Some(storable) = storable(
        res.status(),
        res.headers(),
        &s.rules,
        s.engine.defaults(),
        authorized,
    ) else {
        return Ok(unstored(leader, res));
    };
    let extra = &storable.extra;
    // Where the response goes: under the leader's key (no extra `Vary`, or the variant
    // key the marker led to), or under a variant key with a marker at the URI's key.
    let learn_variant = match &variant {
        None => !extra.is_empty(),
        Some(names) if names == extra => false,
        // The resource's `Vary` changed since the marker: store nothing until it expires.
        Some(_) => return Ok(unstored(leader, res)),
    };
    let lifetimes = storable.lifetimes;
    let (parts, body) = res.into_parts();
    match collect(body, s.max_body).await {
        Collected::Whole(body) => {
            let value = encode(
                parts.status,
                &parts.headers,
                &body,
                storable.meta,
                &s.rules.targeted,
                &storable.strip,
            );
            let Some(stored) = decode(&value) else {
                leader.complete(Outcome::Pass);
                let mut res = Response::from_parts(parts, CacheBody::full(Some(body)));
                strip_targeted(s, res.headers_mut());
                return Ok(res);
            };
            let stored = Arc::new(stored);
            let status = Status::Other(status_value(&s.name, &format!("{fwd}; stored")));
            let entry = if learn_variant {
                // The marker at the URI's key, then the response at this request's
                // variant key (unless a load of that variant is already under way).
                let secondary = variant_key(&leader.key, &request_headers, extra);
                leader
                    .store(encode_marker(extra), None, lifetimes, &tag_refs, true)
                    .await;
                leader.complete(Outcome::Pass);
                match s.engine.try_lead(&secondary) {
                    Some(mut variant_leader) => {
                        let _ = variant_leader.read_l2(&tag_refs).await;
                        let entry = variant_leader
                            .store(value, Some(stored.clone()), lifetimes, &tag_refs, true)
                            .await;
                        variant_leader.complete(Outcome::Value(Arc::clone(&entry)));
                        entry
                    }
                    None => {
                        let mut res = Response::from_parts(parts, CacheBody::full(Some(body)));
                        res.headers_mut()
                            .insert(CACHE_STATUS, status_value(&s.name, fwd));
                        strip_targeted(s, res.headers_mut());
                        return Ok(res);
                    }
                }
            } else {
                let entry = leader
                    .store(value, Some(stored.clone()), lifetimes, &tag_refs, true)
                    .await;
                leader.complete(Outcome::Value(Arc::clone(&entry)));
                entry
            };
            if storable.strip.is_empty() {
                return Ok(respond_entry(
                    &entry,
                    &stored,
                    &request_headers,
                    false,
                    status,
                    s.engine.now(),
                ));
            }
            // Fields the cache may not keep still reach the client the origin answered.
            let mut res = Response::from_parts(parts, CacheBody::full(Some(body)));
            res.headers_mut().insert(
                CACHE_STATUS,
                status_value(&s.name, &format!("{fwd}; stored")),
            );
            strip_targeted(s, res.headers_mut());
            Ok(res)
        }
        Collected::Partial(frames, rest, error) => {
            leader.complete(Outcome::Pass);
            let mut res = Response::from_parts(parts, CacheBody::prefixed(frames, rest, error));
            res.headers_mut()
                .insert(CACHE_STATUS, status_value(&s.name, fwd));
            strip_targeted(s, res.headers_mut());
            Ok(res)
        }
    }
}

/// The request's session (with the `session` feature), kept across the origin's call. A
/// response the origin made from it holds that user's own data: it is stored only if it
/// says it may be shared, as for a request with `Authorization`.
struct Personal {
    #[cfg(feature = "session")]
    session: Option<crate::session::Session>,
}

impl Personal {
    fn of<B>(req: &Request<B>) -> Self {
        let _ = req;
        Self {
            #[cfg(feature = "session")]
            session: req.extensions().get::<crate::session::Session>().cloned(),
        }
    }

    /// The origin used the session while it answered.
    fn made(&self) -> bool {
        #[cfg(feature = "session")]
        {
            self.session.as_ref().is_some_and(|s| s.was_used())
        }
        #[cfg(not(feature = "session"))]
        {
            false
        }
    }
}

/// A `HEAD` request that found a kept response: the origin's answer, if its validators
/// match, updates the kept response's fields and freshness as a 304 would (RFC 9111
/// §4.3.5), unless its length says the body changed.
struct HeadUpdate {
    leader: Leader,
    kept: Arc<Entry>,
    tags: Vec<String>,
    variant: Option<Vec<HeaderName>>,
    authorized: bool,
}

impl HeadUpdate {
    async fn run<S, ReqBody, B>(
        self,
        s: &Settings,
        mut inner: S,
        req: Request<ReqBody>,
    ) -> Result<Response<B>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<B>>,
    {
        let Self {
            mut leader,
            kept,
            tags,
            variant,
            authorized,
        } = self;
        let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
        // The fences are read before the origin is asked: an invalidation meanwhile keeps
        // the update out.
        let _ = leader.read_l2(&tag_refs).await;
        let personal = Personal::of(&req);
        let res = inner.call(req).await?;
        let authorized = authorized || personal.made();
        let Some(old) = stored_of(&kept).filter(|_| res.status().is_success()) else {
            leader.complete(Outcome::Pass);
            return Ok(res);
        };
        let update = res.headers();
        let same_etag = old
            .etag
            .as_ref()
            .filter(|_| !old.own_etag)
            .is_some_and(|tag| {
                update
                    .get(header::ETAG)
                    .is_some_and(|theirs| theirs.as_bytes() == tag.as_bytes())
            });
        let same_date = !update.contains_key(header::ETAG)
            && old
                .headers
                .get(header::LAST_MODIFIED)
                .is_some_and(|lm| update.get(header::LAST_MODIFIED) == Some(lm));
        let same_length = update
            .get(header::CONTENT_LENGTH)
            .is_none_or(|len| len.as_bytes() == old.body.len().to_string().as_bytes());
        let (headers, storable) = updated(s, old, update, variant.as_deref(), authorized);
        // A GET may have stored a newer copy while the origin answered this HEAD.
        let current = s.engine.still_holds(&leader.key, &kept);
        match storable {
            Some(st) if (same_etag || same_date) && same_length && current => {
                let value = encode(
                    old.status,
                    &headers,
                    &old.body,
                    st.meta,
                    &s.rules.targeted,
                    &st.strip,
                );
                let entry = leader
                    .store(value, None, st.lifetimes, &tag_refs, true)
                    .await;
                leader.complete(Outcome::Value(entry));
            }
            _ => leader.complete(Outcome::Pass),
        }
        Ok(res)
    }
}

/// A stored response's fields updated by a 304 or a `HEAD` response, and how to store the
/// result: under the same key only (a `Vary` that changed waits for a full load), and,
/// for a request with `Authorization`, only if the update itself says it may be shared
/// (the stored response's `public` does not vouch for the fields it adds).
fn updated(
    s: &Settings,
    old: &StoredResponse,
    update: &HeaderMap,
    variant: Option<&[HeaderName]>,
    authorized: bool,
) -> (HeaderMap, Option<super::response::Storable>) {
    let headers = old.updated_by(update);
    let storable = storable(
        old.status,
        &headers,
        &s.rules,
        s.engine.defaults(),
        authorized,
    )
    .filter(|st| st.extra == variant.unwrap_or_default())
    .filter(|_| !authorized || shareable(s, update));
    (headers, storable)
}

/// Whether a response's own directives let a shared cache store it for a request with
/// `Authorization` (RFC 9111 §3.5).
fn shareable(s: &Settings, headers: &HeaderMap) -> bool {
    let (cc, _) = CacheControl::for_response(headers, &s.rules.targeted);
    cc.public || cc.s_maxage.is_some() || cc.must_revalidate
}

/// The origin answered a revalidation with `304 Not Modified`: the stored response, its
/// fields updated by the 304's (RFC 9111 §4.3.4), is stored again with new lifetimes and
/// served; nothing of the body crossed the wire.
#[allow(clippy::too_many_arguments)]
async fn revalidated<B>(
    s: &Settings,
    leader: Leader,
    entry: &Entry,
    update: &HeaderMap,
    request_headers: &HeaderMap,
    tags: &[&str],
    variant: Option<&[HeaderName]>,
    authorized: bool,
    fwd: &str,
) -> Response<CacheBody<B>> {
    let Some(old) = stored_of(entry) else {
        // Unreachable: the conditions were taken from this stored response.
        leader.complete(Outcome::Pass);
        return Response::new(CacheBody::full(None));
    };
    let (headers, storable) = updated(s, old, update, variant, authorized);
    let (meta, strip) = storable
        .as_ref()
        .map_or((Meta::default(), &[][..]), |st| (st.meta, &st.strip[..]));
    let value = encode(
        old.status,
        &headers,
        &old.body,
        meta,
        &s.rules.targeted,
        strip,
    );
    let Some(new) = decode(&value) else {
        leader.complete(Outcome::Pass);
        return Response::new(CacheBody::full(None));
    };
    let new = Arc::new(new);
    match storable {
        Some(st) => {
            let stored = leader
                .store(value, Some(new.clone()), st.lifetimes, tags, true)
                .await;
            leader.complete(Outcome::Value(Arc::clone(&stored)));
            let status = Status::Other(status_value(&s.name, &format!("{fwd}; stored")));
            respond_entry(
                &stored,
                &new,
                request_headers,
                false,
                status,
                s.engine.now(),
            )
        }
        None => {
            leader.complete(Outcome::Pass);
            let status = Status::Other(status_value(&s.name, fwd));
            respond(&new, request_headers, false, 0, status).map(CacheBody::full)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_on_the_request_origin_only() {
        let uri: http::Uri = "/shop/items/7?x=1".parse().unwrap();
        let host = HeaderValue::from_static("example.com");
        let resolve =
            |v: &'static str| same_origin_path(&uri, Some(&host), &HeaderValue::from_static(v));
        let cases: [(&str, Option<&str>); 13] = [
            ("/items/8", Some("/items/8")),
            ("/items/8?page=2#top", Some("/items/8")),
            ("8", Some("/shop/items/8")),
            ("../lists/1", Some("/shop/lists/1")),
            ("./", Some("/shop/items/")),
            ("/a/./b/../c", Some("/a/c")),
            ("http://example.com/x", Some("/x")),
            ("https://EXAMPLE.com/y/", Some("/y/")),
            ("//example.com/z", Some("/z")),
            ("http://other.example/x", None),
            ("", None),
            ("/orders/1?next=http://x", Some("/orders/1")),
            ("http://example.com:8080/p", Some("/p")),
        ];
        for (value, want) in cases {
            assert_eq!(resolve(value).as_deref(), want, "{value}");
        }
        // Without a Host or an authority, only relative references are on the origin.
        let none = same_origin_path(&uri, None, &HeaderValue::from_static("http://a/x"));
        assert_eq!(none, None);
        let bytes = HeaderValue::from_bytes(b"/caf\xc3\xa9").unwrap();
        assert_eq!(same_origin_path(&uri, Some(&host), &bytes), None);
    }

    #[test]
    fn only_safe_methods_leave_the_cache_alone() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE"] {
            assert!(
                !unsafe_method(&Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
        for m in [
            "POST", "PUT", "PATCH", "DELETE", "CONNECT", "PURGE", "M-SEARCH",
        ] {
            assert!(
                unsafe_method(&Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
    }
}
