//! [`SessionLayer`], its builder, the service and its future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::handle::{Session, SessionError, StateGuard};
use super::id::{RawCookies, SessionId};
use super::store::{Lifetimes, Save, Saved, SessionStore};
use crate::ConfigError;
use crate::cookie::{SameSite, SetCookie};

/// How often reading a session pushes its idle expiry back, unless set or the idle
/// timeout is shorter than twice this.
const DEFAULT_TOUCH_EVERY: Duration = Duration::from_secs(60);

/// What the layer and every session handle share.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) cookie: SetCookie,
    pub(crate) max_age: Option<Duration>,
    pub(crate) life: Lifetimes,
    pub(crate) max_bytes: usize,
    pub(crate) max_per_user: usize,
}

/// The settings and the store, shared by the layer and every session handle.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) store: Box<dyn SessionStore>,
    /// Store failures logged at WARN at most once per 10 s, per layer.
    warn: crate::error::Throttle,
    /// `tower_scale.session.loads`, registered on first use (after the application
    /// installed its recorder): a load then counts without a registry lookup.
    loads: std::sync::OnceLock<::metrics::Counter>,
}

impl Shared {
    /// Counts a load of the store.
    pub(crate) fn count_load(&self) {
        self.loads
            .get_or_init(|| ::metrics::counter!("tower_scale.session.loads"))
            .increment(1);
    }

    /// A store call failed: counted, logged (throttled), and the error to return.
    pub(crate) fn unavailable(&self, e: crate::StoreUnavailable) -> SessionError {
        ::metrics::counter!("tower_scale.session.store_errors").increment(1);
        match self.warn.ready(Duration::from_secs(10)) {
            Some(skipped) => {
                tracing::warn!(error = %e, skipped, "session store unavailable");
            }
            None => tracing::debug!(error = %e, "session store unavailable"),
        }
        SessionError::Unavailable(e)
    }
}

/// Gives every request a lazily loaded [`Session`]. Built by [`SessionLayer::builder`].
pub struct SessionLayer {
    shared: Arc<Shared>,
}

impl Clone for SessionLayer {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLayer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl SessionLayer {
    /// A builder over `store`, with the defaults: cookie `id` (`HttpOnly`, `Secure`,
    /// `SameSite=Lax`, `Path=/`, no `Max-Age`: it ends with the browser session), 24 h idle
    /// and 7 days absolute timeouts, expiry pushed back at most once a minute, 16 KiB per
    /// session, 64 sessions per user.
    pub fn builder(store: impl SessionStore) -> SessionLayerBuilder {
        SessionLayerBuilder {
            store: Box::new(store),
            cookie_name: "id".into(),
            host_prefix: false,
            secure: true,
            same_site: SameSite::Lax,
            domain: None,
            path: "/".into(),
            max_age: None,
            life: Lifetimes {
                idle: Duration::from_secs(24 * 3600),
                absolute: Duration::from_secs(7 * 24 * 3600),
                touch_every: DEFAULT_TOUCH_EVERY,
            },
            touch_set: false,
            max_bytes: 16 * 1024,
            max_per_user: 64,
        }
    }
}

/// Builds a [`SessionLayer`].
#[must_use]
pub struct SessionLayerBuilder {
    store: Box<dyn SessionStore>,
    cookie_name: String,
    host_prefix: bool,
    secure: bool,
    same_site: SameSite,
    domain: Option<String>,
    path: String,
    max_age: Option<Duration>,
    life: Lifetimes,
    /// `touch_every` was set: checked against the idle timeout, not derived from it.
    touch_set: bool,
    max_bytes: usize,
    max_per_user: usize,
}

impl fmt::Debug for SessionLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLayerBuilder")
            .field("cookie_name", &self.cookie_name)
            .finish_non_exhaustive()
    }
}

impl SessionLayerBuilder {
    /// The cookie's name (default `id`).
    pub fn cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie_name = name.into();
        self
    }

    /// Names the cookie `__Host-<name>`: browsers then only accept it `Secure`, from this
    /// host, with `Path=/` and no `Domain`, so a sibling subdomain cannot plant one.
    pub fn host_prefix(mut self, on: bool) -> Self {
        self.host_prefix = on;
        self
    }

    /// `Secure` (default on; turn off only to test over plain HTTP).
    pub fn secure(mut self, on: bool) -> Self {
        self.secure = on;
        self
    }

    /// `SameSite` (default `Lax`).
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.same_site = same_site;
        self
    }

    /// `Domain` (default none: this host only).
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// `Path` (default `/`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// `Max-Age` on the cookie (default none: a browser-session cookie). It is sent when
    /// the id is issued (a new session, a login, `cycle_id`), so it counts from then, not
    /// from the last request. The server's own timeouts apply whatever the cookie says.
    pub fn cookie_max_age(mut self, d: Duration) -> Self {
        self.max_age = Some(d);
        self
    }

    /// A session unused this long ends (default 24 h).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.life.idle = d;
        self
    }

    /// A session this old ends, however busy (default 7 days).
    pub fn absolute_timeout(mut self, d: Duration) -> Self {
        self.life.absolute = d;
        self
    }

    /// Reading a session pushes its idle expiry back at most this often (default 1 min,
    /// or half the idle timeout if that is shorter). It must be at most half the idle
    /// timeout: a session only read would otherwise end while in use.
    pub fn touch_every(mut self, d: Duration) -> Self {
        self.life.touch_every = d;
        self.touch_set = true;
        self
    }

    /// The most a session may hold, keys and JSON values together (default 16 KiB).
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n;
        self
    }

    /// The most sessions one user may have (default 64): a login past it ends the user's
    /// oldest sessions, so neither the store nor the user's index grows without bound
    /// however often someone logs in.
    pub fn max_sessions_per_user(mut self, n: usize) -> Self {
        self.max_per_user = n;
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    ///
    /// A cookie name that is not a token, a path or domain with characters a cookie
    /// attribute cannot hold, `SameSite=None` without `Secure`, the `__Host-` prefix with
    /// `Secure` off or a `Domain` or a path other than `/`, zero timeouts, an idle timeout
    /// longer than the absolute one, or a zero size or per-user cap.
    pub fn build(self) -> Result<SessionLayer, ConfigError> {
        crate::describe::once();
        if !crate::cookie::is_token(&self.cookie_name) {
            return Err(ConfigError::new(
                "cookie_name",
                format!(
                    "{:?} is not a cookie name (letters, digits, !#$%&'*+-.^_`|~)",
                    self.cookie_name
                ),
            ));
        }
        let attr_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| (0x21..0x7f).contains(&b) && b != b';' && b != b',')
        };
        if !attr_ok(&self.path) || !self.path.starts_with('/') {
            return Err(ConfigError::new(
                "path",
                "a cookie path starts with `/` and holds no `;`, `,` or spaces",
            ));
        }
        if self.domain.as_deref().is_some_and(|d| !attr_ok(d)) {
            return Err(ConfigError::new(
                "domain",
                "a cookie domain holds no `;`, `,` or spaces",
            ));
        }
        if self.same_site == SameSite::None && !self.secure {
            return Err(ConfigError::new("same_site", "SameSite=None needs Secure"));
        }
        if self.host_prefix && (!self.secure || self.domain.is_some() || self.path != "/") {
            return Err(ConfigError::new(
                "host_prefix",
                "`__Host-` cookies must be Secure, with Path=/ and no Domain",
            ));
        }
        if self.life.idle.is_zero() || self.life.absolute.is_zero() {
            return Err(ConfigError::new(
                "timeout",
                "session timeouts must be longer than zero",
            ));
        }
        let year = Duration::from_secs(366 * 24 * 3600);
        if self.life.absolute > year || self.max_age.is_some_and(|d| d > year) {
            return Err(ConfigError::new(
                "timeout",
                "session timeouts and the cookie's Max-Age are at most a year",
            ));
        }
        if self.life.idle > self.life.absolute {
            return Err(ConfigError::new(
                "idle_timeout",
                "must not exceed the absolute timeout",
            ));
        }
        let mut life = self.life;
        if !self.touch_set {
            life.touch_every = DEFAULT_TOUCH_EVERY.min(life.idle / 2);
        } else if life.touch_every > life.idle / 2 {
            // A read pushes the expiry back only once `touch_every` has passed since the
            // last push, so a session only read lives `idle - touch_every` between reads.
            return Err(ConfigError::new(
                "touch_every",
                "must be at most half the idle timeout: a session that is only read would end while in use",
            ));
        }
        if self.max_bytes == 0 {
            return Err(ConfigError::new("max_bytes", "must be at least 1"));
        }
        if self.max_per_user == 0 {
            return Err(ConfigError::new(
                "max_sessions_per_user",
                "must be at least 1",
            ));
        }
        let cookie_name = if self.host_prefix {
            format!("__Host-{}", self.cookie_name)
        } else {
            self.cookie_name
        };
        Ok(SessionLayer {
            shared: Arc::new(Shared {
                config: Config {
                    cookie: SetCookie::new(
                        cookie_name,
                        &self.path,
                        self.same_site,
                        self.secure,
                        self.domain.as_deref(),
                    ),
                    max_age: self.max_age,
                    life,
                    max_bytes: self.max_bytes,
                    max_per_user: self.max_per_user,
                },
                store: self.store,
                warn: crate::error::Throttle::new(),
                loads: std::sync::OnceLock::new(),
            }),
        })
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionManager<S>;

    fn layer(&self, inner: S) -> SessionManager<S> {
        SessionManager {
            inner,
            layer: self.clone(),
        }
    }
}

/// Puts a [`Session`] in each request's extensions and saves it after the handler. Built by
/// [`SessionLayer`].
#[derive(Clone)]
pub struct SessionManager<S> {
    inner: S,
    layer: SessionLayer,
}

impl<S: fmt::Debug> fmt::Debug for SessionManager<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionManager")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Service<Request<B>> for SessionManager<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let shared = &self.layer.shared;
        // Kept raw: parsed only if the handler uses its session.
        let raw = RawCookies::from_headers(req.headers(), shared.config.cookie.name());
        let session = Session::new(Arc::clone(shared), raw);
        req.extensions_mut().insert(session.clone());
        ResponseFuture {
            state: State::Calling {
                fut: self.inner.call(req),
                session: Some(session),
            },
        }
    }
}

type Saving<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

pin_project! {
    /// Response future of [`SessionManager`].
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        state: State<F, B, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B, E> {
        Calling { #[pin] fut: F, session: Option<Session> },
        Saving { fut: Saving<B, E> },
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<Bytes> + Send + 'static,
    E: Send + 'static,
{
    type Output = Result<Response<B>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project().state.project() {
                StateProj::Calling { fut, session } => {
                    let res = ready!(fut.poll(cx));
                    let session = session.take().expect("polled after completion");
                    let resp = match res {
                        Ok(r) if session.inner.dirty.load(Ordering::Acquire) => r,
                        // Untouched or unchanged: nothing to write, no cookie to set.
                        other => return Poll::Ready(other),
                    };
                    let fut: Saving<B, E> = Box::pin(async move {
                        match finish(&session).await {
                            Ok(cookie) => {
                                let mut resp = resp;
                                if let Some(c) = cookie {
                                    resp.headers_mut().append(http::header::SET_COOKIE, c);
                                }
                                Ok(resp)
                            }
                            Err(e) => Ok(failed(&e)),
                        }
                    });
                    self.as_mut().project().state.set(State::Saving { fut });
                }
                StateProj::Saving { fut } => return fut.as_mut().poll(cx),
            }
        }
    }
}

/// The answer when the session's changes could not be written: the handler's response
/// would claim a change that did not happen.
fn failed<B: From<Bytes>>(e: &SessionError) -> Response<B> {
    e.log("session write failed");
    e.response().map(B::from)
}

/// Writes what the request changed; returns the `Set-Cookie` to send, if any.
async fn finish(session: &Session) -> Result<Option<HeaderValue>, SessionError> {
    let inner = &session.inner;
    let shared = &*inner.shared;
    let config = &shared.config;
    let store = &shared.store;
    let mut s = inner.state().await;
    if s.ended {
        // An early write (an increment) found the session gone: whatever the request
        // changed after it is not written either, and the response says so (409), as
        // below. The cookie is left as it is: if a concurrent login rotated the id,
        // clearing the cookie here could clear the new one that login set.
        return Err(SessionError::Ended);
    }
    if s.destroy {
        let sent_key = s.sent.as_ref().map(SessionId::storage_key);
        if s.log_out_everywhere {
            let user = s
                .user
                .clone()
                .or_else(|| s.loaded.as_ref().and_then(|l| l.user().map(str::to_owned)));
            if let Some(u) = user {
                store
                    .destroy_user(&u)
                    .await
                    .map_err(|e| shared.unavailable(e))?;
            }
        }
        if let Some(k) = &sent_key {
            store.destroy(k).await.map_err(|e| shared.unavailable(e))?;
        }
        ::metrics::counter!("tower_scale.session.destroyed").increment(1);
        return Ok(Some(config.cookie.header("", Some(0))));
    }
    match write(shared, &mut s).await? {
        Some(saved) if !saved.applied => {
            // The session ended while this request ran (logout elsewhere, expiry, or a
            // concurrent login rotated its id): its changes are dropped, not written into
            // a session brought back to life, and the client is told (409) instead of
            // getting the handler's answer, which claims a change that did not happen. The
            // cookie is left as it is, as above: a dead id is no session next time.
            return Err(SessionError::Ended);
        }
        _ => {}
    }
    Ok(s.issued.as_ref().map(|id| {
        config
            .cookie
            .header(&id.to_cookie(), config.max_age.map(|d| d.as_secs()))
    }))
}

/// Sends the changes made so far to the store, in one save: the changed values, a login,
/// a new id. `None` if there was nothing to send. Afterwards the state describes the
/// session as stored: a later write adds only what changed since.
pub(crate) async fn write(
    shared: &Shared,
    s: &mut StateGuard<'_>,
) -> Result<Option<Saved>, SessionError> {
    let store = &shared.store;
    let sent_key = s.sent.as_ref().map(SessionId::storage_key);
    let existed = s.loaded.as_ref().is_some_and(|l| l.existed);
    if s.replace_old
        && let Some(k) = &sent_key
    {
        // A login by another user: the old user's session ends here.
        store.destroy(k).await.map_err(|e| shared.unavailable(e))?;
        s.replace_old = false;
    }
    let Some(id) = s.new_id.clone().or_else(|| s.sent.clone()) else {
        return Ok(None);
    };
    let save = Save {
        key: id.storage_key(),
        renamed_from: if s.new_id.is_some() && existed {
            sent_key
        } else {
            None
        },
        ops: std::mem::take(&mut s.ops),
        user: s.user.clone(),
        owner: s.loaded.as_ref().and_then(|l| l.user().map(str::to_owned)),
        new: !existed,
        max_per_user: shared.config.max_per_user,
    };
    if save.ops.is_empty() && save.user.is_none() && save.renamed_from.is_none() && !save.new {
        return Ok(None);
    }
    let new = save.new;
    let saved = store
        .save(save, shared.config.life)
        .await
        .map_err(|e| shared.unavailable(e))?;
    if !saved.applied {
        ::metrics::counter!("tower_scale.session.expired").increment(1);
        s.ended = true;
        return Ok(Some(saved));
    }
    ::metrics::counter!("tower_scale.session.saves").increment(1);
    if new {
        ::metrics::counter!("tower_scale.session.created").increment(1);
    }
    // The session now lives under `id`, with the owner written.
    let user = s.user.take();
    if let Some(l) = s.loaded.as_mut() {
        l.existed = true;
        if user.is_some() {
            l.record_mut().user = user;
        }
    }
    if let Some(new_id) = s.new_id.take() {
        s.issued = Some(new_id.clone());
        s.sent = Some(new_id);
    }
    Ok(Some(saved))
}
