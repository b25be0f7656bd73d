//! [`DbRouteLayer`]: decides per request where its reads go, hands handlers a [`Db`], and
//! gives a client that wrote its [`ConsistencyToken`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::position::{ConsistencyToken, Lsn, now_ms};
use super::router::{DbRouter, PositionSource, PrimaryReason, ReadRoute};
use crate::ConfigError;
use crate::cookie::{SameSite, SetCookie};
use crate::key::RequestRef;

type IntentFn = Arc<dyn Fn(RequestRef<'_>) -> Option<Intent> + Send + Sync>;

/// What a request does to the database, when its method does not say (a `POST` that only
/// reads, a `GET` that writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Reads only: a replica, unless read-your-writes needs the primary.
    Read,
    /// Writes: every query on the primary, and the client gets a token afterwards.
    Write,
}

/// The header naming which database served a request (`primary` or `replica`).
pub const X_DB_ROUTE: HeaderName = HeaderName::from_static("x-db-route");

const USED_READER: u8 = 1;
const USED_WRITER: u8 = 2;
/// A read failed on the replica and was retried on the primary.
const USED_FALLBACK: u8 = 4;

/// The database handles of one request, in its extensions (and, with `axum`, an
/// extractor). Cheap to clone.
pub struct Db<P> {
    inner: Arc<DbState<P>>,
}

struct DbState<P> {
    router: DbRouter<P>,
    read: ReadRoute,
    used: AtomicU8,
}

impl<P> Clone for Db<P> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<P> fmt::Debug for Db<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("read", &self.inner.read)
            .finish_non_exhaustive()
    }
}

impl<P> Db<P> {
    /// The handle for this request's reads: a replica, or the primary when the request's
    /// intent is to write, it has already used [`writer`](Self::writer), the client must
    /// see its own recent write, or no replica is healthy. For a request that writes, this
    /// is the writer (and counts as using it).
    pub fn reader(&self) -> &P {
        let s = &*self.inner;
        if matches!(s.read, ReadRoute::Primary(PrimaryReason::Write))
            || s.used.load(Ordering::Relaxed) & USED_WRITER != 0
        {
            return self.writer();
        }
        s.used.fetch_or(USED_READER, Ordering::Relaxed);
        s.router.handle(s.read)
    }

    /// The primary. Using it marks the request as writing: the client gets a token, so
    /// its next reads see what it wrote.
    pub fn writer(&self) -> &P {
        self.inner.used.fetch_or(USED_WRITER, Ordering::Relaxed);
        self.inner.router.writer()
    }

    /// After a read through [`reader`](Self::reader) failed: the primary, for one retry,
    /// or `None` if that read already went to the primary. The replica that failed is
    /// taken out of rotation until its next health check finds it well, so the requests
    /// after this one do not try it either. The retry counts as a read, not a write: the
    /// client gets no token for it.
    ///
    /// ```
    /// # use tower_scale::db_route::Db;
    /// # async fn get(db: Db<String>) -> Result<usize, String> {
    /// async fn query(pool: &String) -> Result<usize, String> { Ok(pool.len()) }
    /// let n = match query(db.reader()).await {
    ///     Ok(n) => n,
    ///     Err(e) => match db.reader_after_failure() {
    ///         Some(primary) => query(primary).await?,
    ///         None => return Err(e),
    ///     },
    /// };
    /// # Ok(n) }
    /// ```
    pub fn reader_after_failure(&self) -> Option<&P> {
        let s = &*self.inner;
        match s.read {
            ReadRoute::Replica(i) if s.used.load(Ordering::Relaxed) & USED_WRITER == 0 => {
                s.router.replica_failed(i);
                s.used.fetch_or(USED_FALLBACK, Ordering::Relaxed);
                Some(s.router.writer())
            }
            _ => None,
        }
    }

    /// Where this request's reads go.
    pub fn read_route(&self) -> ReadRoute {
        self.inner.read
    }
}

/// Routes each request's database use (see the [module docs](super)).
pub struct DbRouteLayer<P> {
    settings: Arc<Settings<P>>,
}

struct Settings<P> {
    router: DbRouter<P>,
    cookie: SetCookie,
    route_header: bool,
    intent: Option<IntentFn>,
    tokens_without_replicas: bool,
}

impl<P> Clone for DbRouteLayer<P> {
    fn clone(&self) -> Self {
        Self {
            settings: Arc::clone(&self.settings),
        }
    }
}

impl<P> fmt::Debug for DbRouteLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbRouteLayer")
            .field("router", &self.settings.router)
            .field("cookie", &self.settings.cookie)
            .finish_non_exhaustive()
    }
}

/// Builds a [`DbRouteLayer`].
#[must_use]
pub struct DbRouteLayerBuilder<P> {
    router: DbRouter<P>,
    cookie: String,
    secure: bool,
    same_site: SameSite,
    route_header: bool,
    intent: Option<IntentFn>,
    tokens_without_replicas: bool,
}

impl<P> fmt::Debug for DbRouteLayerBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbRouteLayerBuilder")
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

impl<P> DbRouteLayer<P> {
    /// Starts a builder: token cookie `db_pos` (`Secure`), no `x-db-route` header, intent
    /// from the method (`GET`, `HEAD`, `OPTIONS` read; others write).
    pub fn builder(router: DbRouter<P>) -> DbRouteLayerBuilder<P> {
        DbRouteLayerBuilder {
            router,
            cookie: "db_pos".into(),
            secure: true,
            same_site: SameSite::Lax,
            route_header: false,
            intent: None,
            tokens_without_replicas: false,
        }
    }

    /// The token in `headers` if it is well formed and still honoured: for a layer in
    /// front of this one that must treat a client who just wrote differently (a response
    /// cache should not answer it from an entry another client filled from a lagging
    /// replica).
    pub fn current_token(&self, headers: &http::HeaderMap) -> Option<ConsistencyToken> {
        let s = &*self.settings;
        token_of(headers, s.cookie.name())
            .filter(|t| t.is_current(now_ms(), s.router.token_max_age()))
    }
}

impl<P> DbRouteLayerBuilder<P> {
    /// The cookie that carries the token (default `db_pos`).
    pub fn cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie = name.into();
        self
    }

    /// Whether the cookie is `Secure` (default yes; turn off for plain-HTTP testing only).
    pub fn secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    /// `SameSite` of the token cookie (default `Lax`: sent on navigations from other
    /// sites, so a client who wrote and follows a link back still reads its write).
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.same_site = same_site;
        self
    }

    /// Sets the token after a write even when the router has no replicas (default: no;
    /// every read goes to the primary then, so the database needs none). For a layer in
    /// front of this one that must still treat a client who just wrote differently
    /// ([`current_token`](DbRouteLayer::current_token)): a response cache shared by
    /// several instances, each of which drops its own copy only when the invalidation
    /// message reaches it.
    pub fn tokens_without_replicas(mut self, on: bool) -> Self {
        self.tokens_without_replicas = on;
        self
    }

    /// Adds `x-db-route: primary` or `replica` to every response, naming the database
    /// the handler used (the writer wins when it used both).
    pub fn route_header(mut self, on: bool) -> Self {
        self.route_header = on;
        self
    }

    /// Decides a request's intent where its method does not (return `None` to keep the
    /// method's).
    pub fn intent(
        mut self,
        f: impl Fn(RequestRef<'_>) -> Option<Intent> + Send + Sync + 'static,
    ) -> Self {
        self.intent = Some(Arc::new(f));
        self
    }

    /// Validates the configuration.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a cookie name that is not a cookie token.
    pub fn build(self) -> Result<DbRouteLayer<P>, ConfigError> {
        if !crate::cookie::is_token(&self.cookie) {
            return Err(ConfigError::new(
                "cookie_name",
                format!(
                    "{:?} is not a cookie name (letters, digits, !#$%&'*+-.^_`|~)",
                    self.cookie
                ),
            ));
        }
        Ok(DbRouteLayer {
            settings: Arc::new(Settings {
                cookie: SetCookie::new(self.cookie, "/", self.same_site, self.secure, None),
                router: self.router,
                route_header: self.route_header,
                intent: self.intent,
                tokens_without_replicas: self.tokens_without_replicas,
            }),
        })
    }
}

impl<S, P> Layer<S> for DbRouteLayer<P> {
    type Service = DbRoute<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        DbRoute {
            inner,
            settings: Arc::clone(&self.settings),
        }
    }
}

/// The service [`DbRouteLayer`] makes.
pub struct DbRoute<S, P> {
    inner: S,
    settings: Arc<Settings<P>>,
}

impl<S: Clone, P> Clone for DbRoute<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            settings: Arc::clone(&self.settings),
        }
    }
}

impl<S: fmt::Debug, P> fmt::Debug for DbRoute<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbRoute")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The token in the request's `Cookie` headers, if one is there and well formed, its age
/// unchecked. Duplicates and garbage read as none.
fn token_of(headers: &http::HeaderMap, name: &str) -> Option<ConsistencyToken> {
    ConsistencyToken::parse_bytes(crate::cookie::find_cookie(headers, name)?)
}

impl<S, P, ReqBody, ResBody> Service<Request<ReqBody>> for DbRoute<S, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    P: PositionSource,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, P, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let s = &*self.settings;
        let (mut parts, body) = req.into_parts();
        let by_method = if matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
            Intent::Read
        } else {
            Intent::Write
        };
        let intent = s
            .intent
            .as_ref()
            .and_then(|f| f(RequestRef::from(&parts)))
            .unwrap_or(by_method);
        let read = match intent {
            Intent::Write => ReadRoute::Primary(PrimaryReason::Write),
            Intent::Read => match token_of(&parts.headers, s.cookie.name()) {
                Some(token) => s.router.route_carried(&token),
                None => s.router.route_read(None, 0),
            },
        };
        s.router.record(read);
        let db = Db {
            inner: Arc::new(DbState {
                router: s.router.clone(),
                read,
                used: AtomicU8::new(0),
            }),
        };
        parts.extensions.insert(db.clone());
        ResponseFuture {
            state: State::Inner {
                fut: self.inner.call(Request::from_parts(parts, body)),
            },
            db: Some(db),
            settings: Arc::clone(&self.settings),
            _e: std::marker::PhantomData,
        }
    }
}

type PositionFuture = Pin<Box<dyn Future<Output = Option<Lsn>> + Send>>;

pin_project! {
    /// The future of [`DbRoute`]: the inner service's, then, after a request that wrote,
    /// one read of the primary's position for the client's token.
    pub struct ResponseFuture<F, P, B, E> {
        #[pin]
        state: State<F, B>,
        db: Option<Db<P>>,
        settings: Arc<Settings<P>>,
        _e: std::marker::PhantomData<fn() -> E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Inner { #[pin] fut: F },
        // The response waits boxed: inline it would make every request's future larger.
        Position { fut: PositionFuture, res: Option<Box<Response<B>>> },
    }
}

impl<F, P, B, E> fmt::Debug for ResponseFuture<F, P, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("db_route::ResponseFuture")
    }
}

impl<F, P, B, E> Future for ResponseFuture<F, P, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    P: PositionSource,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Inner { fut } => {
                    let mut res = std::task::ready!(fut.poll(cx))?;
                    let db = this.db.take().expect("polled after completion");
                    let used = db.inner.used.load(Ordering::Relaxed);
                    if this.settings.route_header {
                        let to = if used & (USED_WRITER | USED_FALLBACK) != 0 {
                            "primary"
                        } else {
                            match db.inner.read {
                                ReadRoute::Replica(_) => "replica",
                                ReadRoute::Primary(_) => "primary",
                            }
                        };
                        res.headers_mut()
                            .insert(X_DB_ROUTE, HeaderValue::from_static(to));
                    }
                    // With no replica to lag behind, a client needs no token to see its
                    // writes, unless a layer in front asks for one.
                    let wrote = used & USED_WRITER != 0
                        && (res.status().is_success() || res.status().is_redirection())
                        && (db.inner.router.has_replicas()
                            || this.settings.tokens_without_replicas);
                    if !wrote {
                        return Poll::Ready(Ok(res));
                    }
                    let router = db.inner.router.clone();
                    let fut: PositionFuture = Box::pin(async move {
                        // Bounded like a health check: a slow primary delays the response
                        // by at most the check timeout, and the client gets a time pin.
                        let read = router.writer().write_position();
                        match tokio::time::timeout(router.check_timeout(), read).await {
                            Ok(Ok(l)) => Some(l),
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "primary position unavailable; the client gets a time pin");
                                None
                            }
                            Err(_) => {
                                tracing::debug!(
                                    "primary position timed out; the client gets a time pin"
                                );
                                None
                            }
                        }
                    });
                    this.state.set(State::Position {
                        fut,
                        res: Some(Box::new(res)),
                    });
                }
                StateProj::Position { fut, res } => {
                    let lsn = std::task::ready!(fut.as_mut().poll(cx));
                    let mut res = *res.take().expect("polled after completion");
                    let token = ConsistencyToken {
                        lsn,
                        issued_ms: now_ms(),
                    };
                    let s = &**this.settings;
                    let max_age = s.router.token_max_age().as_secs().max(1);
                    let cookie = s.cookie.header(&token.encode(), Some(max_age));
                    res.headers_mut().append(header::SET_COOKIE, cookie);
                    return Poll::Ready(Ok(res));
                }
            }
        }
    }
}

/// Why a handler could not extract its [`Db`].
#[cfg(feature = "axum")]
#[derive(Debug, Clone, Copy)]
pub struct MissingDbRouteLayer;

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for MissingDbRouteLayer {
    fn into_response(self) -> axum::response::Response {
        crate::error::missing_layer(
            "no database handles: the route is not behind tower_scale::db_route::DbRouteLayer",
        )
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync, P: Send + Sync + 'static> axum::extract::FromRequestParts<S> for Db<P> {
    type Rejection = MissingDbRouteLayer;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Db<P>>()
            .cloned()
            .ok_or(MissingDbRouteLayer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db_route::ReplicaPosition;
    use std::convert::Infallible;
    use std::time::Duration;
    use tower::ServiceExt;

    /// A driver that cannot tell the primary's position: writers get a time pin.
    struct NoPosition;

    impl PositionSource for NoPosition {
        async fn write_position(&self) -> Result<Lsn, crate::BoxError> {
            Err("no position".into())
        }

        async fn replica_position(&self) -> Result<ReplicaPosition, crate::BoxError> {
            Ok(ReplicaPosition {
                replayed: Lsn(0),
                lag: None,
            })
        }
    }

    #[tokio::test]
    async fn without_a_position_a_writer_is_pinned_to_the_primary_for_a_while() {
        let router = DbRouter::builder(NoPosition)
            .replica("r", NoPosition)
            .time_pin(Duration::from_millis(300))
            .build()
            .unwrap();
        router.check_health().await;
        let layer = DbRouteLayer::builder(router)
            .secure(false)
            .route_header(true)
            .build()
            .unwrap();
        let svc = layer.layer(tower::service_fn(|req: Request<()>| async move {
            let db = req.extensions().get::<Db<NoPosition>>().cloned().unwrap();
            if req.method() == Method::PUT {
                let _ = db.writer();
            } else {
                let _ = db.reader();
            }
            Ok::<_, Infallible>(Response::new(()))
        }));
        let send = |method: Method, cookie: Option<String>| {
            let svc = svc.clone();
            async move {
                let mut req = Request::builder().method(method).uri("/");
                if let Some(c) = cookie {
                    req = req.header(header::COOKIE, c);
                }
                svc.oneshot(req.body(()).unwrap()).await.unwrap()
            }
        };
        let res = send(Method::PUT, None).await;
        assert_eq!(res.headers()[X_DB_ROUTE], "primary");
        let set = res.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(set.starts_with("db_pos=1.-."), "{set}");
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Lax"),
            "{set}"
        );
        let cookie = set.split(';').next().unwrap().to_owned();
        let res = send(Method::GET, Some(cookie.clone())).await;
        assert_eq!(res.headers()[X_DB_ROUTE], "primary", "pinned");
        let res = send(Method::GET, None).await;
        assert_eq!(
            res.headers()[X_DB_ROUTE],
            "replica",
            "other clients are not"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        let res = send(Method::GET, Some(cookie)).await;
        assert_eq!(res.headers()[X_DB_ROUTE], "replica", "the pin ends");
    }

    /// A `PUT` through `layer` whose handler uses the writer.
    async fn write_through(layer: DbRouteLayer<NoPosition>) -> Response<()> {
        let svc = layer.layer(tower::service_fn(|req: Request<()>| async move {
            let _ = req.extensions().get::<Db<NoPosition>>().unwrap().writer();
            Ok::<_, Infallible>(Response::new(()))
        }));
        let req = Request::builder()
            .method(Method::PUT)
            .uri("/")
            .body(())
            .unwrap();
        svc.oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn the_token_cookie_carries_the_configured_same_site() {
        let router = DbRouter::builder(NoPosition)
            .replica("r", NoPosition)
            .build()
            .unwrap();
        let layer = DbRouteLayer::builder(router)
            .same_site(SameSite::Strict)
            .build()
            .unwrap();
        let res = write_through(layer).await;
        let set = res.headers()[header::SET_COOKIE].to_str().unwrap();
        assert!(
            set.contains("SameSite=Strict") && set.contains("; Secure"),
            "{set}"
        );
    }

    #[tokio::test]
    async fn a_router_without_replicas_sets_no_token_unless_asked() {
        for asked in [false, true] {
            let router = DbRouter::builder(NoPosition).build().unwrap();
            let layer = DbRouteLayer::builder(router)
                .route_header(true)
                .tokens_without_replicas(asked)
                .build()
                .unwrap();
            let res = write_through(layer.clone()).await;
            assert_eq!(res.headers()[X_DB_ROUTE], "primary");
            let set = res.headers().get(header::SET_COOKIE);
            assert_eq!(set.is_some(), asked, "{set:?}");
            if let Some(set) = set {
                // A time pin (this driver has no position), current for a layer in front.
                let pair = set.to_str().unwrap().split(';').next().unwrap().to_owned();
                let mut h = http::HeaderMap::new();
                h.insert(header::COOKIE, pair.parse().unwrap());
                assert!(layer.current_token(&h).is_some(), "{pair}");
            }
        }
    }

    /// A token (and its position read) only after a request really used the primary;
    /// within one request, reads after a write go to the primary.
    #[tokio::test]
    async fn only_a_request_that_used_the_writer_gets_a_token() {
        let router = DbRouter::builder(NoPosition)
            .replica("r", NoPosition)
            .build()
            .unwrap();
        router.check_health().await;
        let layer = DbRouteLayer::builder(router)
            .secure(false)
            .route_header(true)
            .build()
            .unwrap();
        let svc = layer.layer(tower::service_fn(|req: Request<()>| async move {
            let db = req.extensions().get::<Db<NoPosition>>().cloned().unwrap();
            let reads_primary = match req.uri().path() {
                "/none" => None,
                "/read" => {
                    let _ = db.reader();
                    Some(matches!(db.read_route(), ReadRoute::Primary(_)))
                }
                _ => {
                    let w: *const NoPosition = db.writer();
                    Some(std::ptr::eq(db.reader(), w))
                }
            };
            let mut res = Response::new(());
            if let Some(p) = reads_primary {
                res.headers_mut().insert(
                    "x-reads-primary",
                    HeaderValue::from_static(if p { "yes" } else { "no" }),
                );
            }
            Ok::<_, Infallible>(res)
        }));
        let send = |method: Method, path: &'static str| {
            let svc = svc.clone();
            async move {
                let req = Request::builder()
                    .method(method)
                    .uri(path)
                    .body(())
                    .unwrap();
                svc.oneshot(req).await.unwrap()
            }
        };
        let cases = [
            (Method::POST, "/none", "primary", None, false),
            (Method::POST, "/read", "primary", Some("yes"), true),
            (Method::GET, "/read", "replica", Some("no"), false),
            (
                Method::GET,
                "/write-then-read",
                "primary",
                Some("yes"),
                true,
            ),
        ];
        for (method, path, route, reads_primary, token) in cases {
            let res = send(method.clone(), path).await;
            let name = format!("{method} {path}");
            assert_eq!(res.headers()[X_DB_ROUTE], route, "{name}");
            assert_eq!(
                res.headers()
                    .get("x-reads-primary")
                    .map(|v| v.to_str().unwrap()),
                reads_primary,
                "{name}"
            );
            assert_eq!(
                res.headers().contains_key(header::SET_COOKIE),
                token,
                "{name}"
            );
        }
    }

    #[test]
    fn tokens_in_cookies() {
        let age = Duration::from_secs(30);
        let good = ConsistencyToken {
            lsn: Some(Lsn(7)),
            issued_ms: now_ms(),
        }
        .encode();
        let headers = |values: &[&str]| {
            let mut h = http::HeaderMap::new();
            for v in values {
                h.append(header::COOKIE, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let big = format!("db_pos={}", "9".repeat(8 * 1024));
        let cases: [(&str, Vec<String>, bool); 7] = [
            ("alone", vec![format!("db_pos={good}")], true),
            (
                "among others",
                vec![format!("a=1; db_pos={good}; b=2")],
                true,
            ),
            (
                "second header",
                vec!["a=1".into(), format!("db_pos={good}")],
                true,
            ),
            (
                "duplicated",
                vec![format!("db_pos={good}; db_pos={good}")],
                false,
            ),
            ("garbage", vec!["db_pos=%%%".into()], false),
            ("8 KiB", vec![big], false),
            ("absent", vec!["other=1".into()], false),
        ];
        for (name, values, want) in cases {
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            assert_eq!(
                token_of(&headers(&refs), "db_pos").is_some_and(|t| t.is_current(now_ms(), age)),
                want,
                "case {name}"
            );
        }
    }
}
