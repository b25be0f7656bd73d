//! [`ResponseCache`]: the service and its future.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::CacheBody;
use super::control::CacheControl;
use super::entry::{Entry, Lookup, Outcome};
use super::flight::{Join, Leader};
use super::layer::{ResponseCacheLayer, Settings};
use super::response::{
    CACHE_STATUS, Status, StoredResponse, VaryMarker, decode, decode_marker, encode, encode_marker,
    respond, storable, variant_key,
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
        Pass { #[pin] fut: F, status: Option<HeaderValue> },
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
            FutKindProj::Pass { fut, status } => {
                let res = std::task::ready!(fut.poll(cx))?;
                Poll::Ready(Ok(pass(res, status.take())))
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
        for (i, v) in req.headers().get_all(name).iter().enumerate() {
            if i > 0 {
                key.push(',');
            }
            key.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
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

fn unsafe_method(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
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
            let (req, tags) = tags_of(req, s.invalidates.as_deref());
            let fut = self.inner.call(req);
            return boxed(async move {
                let res = fut.await?;
                if res.status().is_success() || res.status().is_redirection() {
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
                Ok(pass(res, None))
            });
        }
        ResponseFuture {
            kind: FutKind::Pass {
                fut: self.inner.call(req),
                status: None,
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
        if !s.cache_authorized && req.headers().contains_key(header::AUTHORIZATION) {
            return self.pass_with(req, "fwd=bypass");
        }
        let req_cc = if req.headers().contains_key(header::CACHE_CONTROL) {
            CacheControl::parse(req.headers().get_all(header::CACHE_CONTROL))
        } else {
            CacheControl::default()
        };
        if req_cc.no_store {
            return self.pass_with(req, "fwd=bypass");
        }
        let refresh = req_cc.no_cache
            || req_cc.max_age == Some(0)
            || s.refresh_if
                .as_ref()
                .is_some_and(|f| f(RequestRef::from(&req)));
        let looked_up = KEY.with_borrow_mut(|key| {
            key.clear();
            write_key(key, &req, &s.vary);
            if key.len() > s.max_key {
                return None;
            }
            let (found, now) = if refresh {
                (Lookup::Miss { fallback: None }, 0)
            } else {
                s.engine.lookup_now(key)
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
        if let Lookup::Fresh(e) | Lookup::Stale(e) = &found
            && let Some(marker) = marker_of(e)
        {
            let names = marker.0.clone();
            let primary = key_for(&req, &s.vary, key.take());
            let secondary = variant_key(&primary, req.headers(), &names);
            if secondary.len() > s.max_key {
                return self.pass_with(req, "fwd=bypass; detail=key-too-long");
            }
            (found, now) = s.engine.lookup_now(&secondary);
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
                    if let Some(leader) = s.engine.served_stale(&key_for(&req, &s.vary, key)) {
                        self.refresh_in_background(&req, leader, variant);
                    }
                    return ResponseFuture {
                        kind: FutKind::Ready { res: Some(res) },
                    };
                }
            }
            Lookup::Miss { fallback: f } => fallback = f,
        }
        let key = key_for(&req, &s.vary, key);
        if head {
            // A HEAD response has no body to store; it is answered from GET entries only.
            return self.pass_with(req, "fwd=miss");
        }
        s.engine.missed();
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let s = Arc::clone(&self.settings);
        boxed(miss(s, inner, req, key, fallback, refresh, variant))
    }

    fn refresh_in_background<ReqBody, ResBody>(
        &self,
        req: &Request<ReqBody>,
        leader: Leader,
        variant: Option<Vec<HeaderName>>,
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
        tokio::spawn(async move {
            if std::future::poll_fn(|cx| svc.poll_ready(cx)).await.is_ok() {
                let _ = lead(&s, svc, r, leader, None, false, variant).await;
            }
        });
    }
}

async fn miss<S, ReqBody, ResBody>(
    s: Arc<Settings>,
    mut inner: S,
    req: Request<ReqBody>,
    key: String,
    fallback: Option<Arc<Entry>>,
    refresh: bool,
    variant: Option<Vec<HeaderName>>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    loop {
        match s.engine.join(&key).await {
            Join::Done(Outcome::Value(entry)) => {
                if let Some(stored) = stored_of(&entry) {
                    let now = s.engine.now();
                    let status = if now < entry.fresh_until {
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
                return lead(&s, inner, req, leader, fallback, refresh, variant).await;
            }
        }
    }
    let res = inner.call(req).await?;
    Ok(pass(res, Some(status_value(&s.name, "fwd=miss"))))
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
    refresh: bool,
    variant: Option<Vec<HeaderName>>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
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
        if now < entry.sie_until {
            fallback = Some(entry);
        }
    }
    // Serves the stale-if-error copy to the caller and the waiters; without one, lets
    // the waiters go to the backend themselves.
    let serve_stale = |leader: Leader, fallback: Option<Arc<Entry>>| {
        let Some((entry, stored)) = fallback
            .as_ref()
            .and_then(|e| stored_of(e).map(|st| (e, st)))
        else {
            leader.complete(Outcome::Pass);
            return None;
        };
        s.engine.served_stale_on_error();
        let now = s.engine.now();
        let status = hit_status(s, entry, now, Some("stale-if-error"));
        let res = respond_entry(entry, stored, &request_headers, false, status, now);
        leader.complete(Outcome::Value(Arc::clone(entry)));
        Some(res)
    };
    let res = match inner.call(req).await {
        Ok(res) => res,
        Err(e) => {
            leader.load_failed();
            return match serve_stale(leader, fallback) {
                Some(res) => Ok(res),
                None => Err(e),
            };
        }
    };
    if res.status().is_server_error() {
        leader.load_failed();
        if fallback.is_some() {
            if let Some(stale) = serve_stale(leader, fallback) {
                return Ok(stale);
            }
            return Ok(pass(res, Some(status_value(&s.name, "fwd=miss"))));
        }
    } else {
        leader.load_succeeded();
    }
    let fwd = if refresh { "fwd=request" } else { "fwd=miss" };
    let Some((lifetimes, extra)) = storable(
        res.status(),
        res.headers(),
        &s.statuses,
        &s.vary,
        s.engine.defaults(),
    ) else {
        leader.complete(Outcome::Pass);
        return Ok(pass(res, Some(status_value(&s.name, fwd))));
    };
    // Where the response goes: under the leader's key (no extra `Vary`, or the variant
    // key the marker led to), or under a variant key with a marker at the URI's key.
    let learn_variant = match &variant {
        None => !extra.is_empty(),
        Some(names) if *names == extra => false,
        // The resource's `Vary` changed since the marker: store nothing until it expires.
        Some(_) => {
            leader.complete(Outcome::Pass);
            return Ok(pass(res, Some(status_value(&s.name, fwd))));
        }
    };
    let (parts, body) = res.into_parts();
    match collect(body, s.max_body).await {
        Collected::Whole(body) => {
            let value = encode(parts.status, &parts.headers, &body);
            let Some(stored) = decode(&value) else {
                leader.complete(Outcome::Pass);
                let res = Response::from_parts(parts, CacheBody::full(Some(body)));
                return Ok(res);
            };
            let stored = Arc::new(stored);
            let status = Status::Other(status_value(&s.name, &format!("{fwd}; stored")));
            let entry = if learn_variant {
                // The marker at the URI's key, then the response at this request's
                // variant key (unless a load of that variant is already under way).
                let secondary = variant_key(&leader.key, &request_headers, &extra);
                leader
                    .store(encode_marker(&extra), None, lifetimes, &tag_refs, true)
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
            Ok(respond_entry(
                &entry,
                &stored,
                &request_headers,
                false,
                status,
                s.engine.now(),
            ))
        }
        Collected::Partial(frames, rest, error) => {
            leader.complete(Outcome::Pass);
            let mut res = Response::from_parts(parts, CacheBody::prefixed(frames, rest, error));
            res.headers_mut()
                .insert(CACHE_STATUS, status_value(&s.name, fwd));
            Ok(res)
        }
    }
}
