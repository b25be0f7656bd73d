//! [`ResponseCacheLayer`] and its builder.

use std::fmt;
use std::sync::Arc;

use http::StatusCode;
use http::header::HeaderName;
use tower_layer::Layer;

use super::engine::CacheEngine;
use super::service::ResponseCache;
use crate::ConfigError;
use crate::key::RequestRef;

pub(crate) type TagFnRef = dyn Fn(RequestRef<'_>) -> Vec<String> + Send + Sync;
type TagFn = Arc<TagFnRef>;
pub(crate) type RefreshFn = Arc<dyn Fn(RequestRef<'_>) -> bool + Send + Sync>;

/// Caches HTTP responses to `GET` (and answers `HEAD` from them) in a [`CacheEngine`],
/// and drops them when an unsafe request to the same resource succeeds. See the
/// [module docs](super) for the rules.
#[derive(Clone)]
pub struct ResponseCacheLayer {
    pub(crate) settings: Arc<Settings>,
}

pub(crate) struct Settings {
    pub(crate) engine: CacheEngine,
    pub(crate) statuses: Vec<StatusCode>,
    pub(crate) vary: Vec<HeaderName>,
    pub(crate) max_body: usize,
    pub(crate) max_key: usize,
    pub(crate) reinvalidate: Vec<std::time::Duration>,
    pub(crate) cache_authorized: bool,
    pub(crate) tags: Option<TagFn>,
    pub(crate) invalidates: Option<TagFn>,
    pub(crate) refresh_if: Option<RefreshFn>,
    pub(crate) name: String,
    pub(crate) hit_status: super::response::HitStatus,
}

impl fmt::Debug for ResponseCacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        f.debug_struct("ResponseCacheLayer")
            .field("engine", &s.engine)
            .field("statuses", &s.statuses)
            .field("vary", &s.vary)
            .field("max_body", &s.max_body)
            .field("max_key", &s.max_key)
            .field("cache_authorized", &s.cache_authorized)
            .finish_non_exhaustive()
    }
}

/// Builds a [`ResponseCacheLayer`].
#[must_use]
pub struct ResponseCacheLayerBuilder {
    engine: CacheEngine,
    statuses: Vec<StatusCode>,
    vary: Vec<String>,
    max_body: usize,
    max_key: usize,
    reinvalidate: Vec<std::time::Duration>,
    cache_authorized: bool,
    tags: Option<TagFn>,
    invalidates: Option<TagFn>,
    refresh_if: Option<RefreshFn>,
    name: String,
}

impl fmt::Debug for ResponseCacheLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCacheLayerBuilder")
            .field("statuses", &self.statuses)
            .field("vary", &self.vary)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl ResponseCacheLayer {
    /// A layer with the defaults: status 200 only, no `Vary` headers, bodies up to 1 MiB,
    /// keys up to 2 KiB, requests with `Authorization` not cached.
    pub fn new(engine: &CacheEngine) -> Self {
        Self::builder(engine)
            .build()
            .expect("the default configuration is valid")
    }

    /// Starts a builder.
    pub fn builder(engine: &CacheEngine) -> ResponseCacheLayerBuilder {
        ResponseCacheLayerBuilder {
            engine: engine.clone(),
            statuses: vec![StatusCode::OK],
            vary: Vec::new(),
            max_body: 1 << 20,
            max_key: 2048,
            reinvalidate: Vec::new(),
            cache_authorized: false,
            tags: None,
            invalidates: None,
            refresh_if: None,
            name: "tower-scale".into(),
        }
    }

    /// The tag every cached response to `path` carries (and an unsafe request to `path`
    /// invalidates): for [`ResponseCacheLayerBuilder::invalidates`] and
    /// [`CacheEngine::invalidate_tag`].
    pub fn path_tag(path: &str) -> String {
        format!("path:{path}")
    }
}

impl ResponseCacheLayerBuilder {
    /// The statuses whose responses are stored (default: 200 only).
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// Request headers that select among responses (`Accept-Encoding`, `Accept-Language`):
    /// their values are part of the key. A response whose own `Vary` names a header not
    /// listed here is not stored.
    pub fn vary<I, S>(mut self, headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.vary = headers.into_iter().map(Into::into).collect();
        self
    }

    /// The largest body stored (default 1 MiB). Larger responses are streamed through,
    /// never buffered beyond this.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The longest cache key, in bytes (default 2 KiB): the path and query, plus the
    /// [`vary`](Self::vary) headers' values. A request with a longer one passes through
    /// uncached (`Cache-Status: ...; fwd=bypass; detail=key-too-long`), so clients cannot
    /// fill the cache, and Redis, with entries under long made-up URLs.
    pub fn max_key(mut self, bytes: usize) -> Self {
        self.max_key = bytes;
        self
    }

    /// With read replicas: after a successful unsafe request, its tags are invalidated
    /// again `after` this long (default: not; call it more than once for several). A
    /// reader whose miss was served by a replica that had not yet replayed the write
    /// stores the old response after the first invalidation; a later one drops it. Set
    /// one above the replicas' usual replay lag (milliseconds on a healthy replica) and
    /// one near the lag at which the router takes a replica out of rotation.
    pub fn reinvalidate_after(mut self, after: std::time::Duration) -> Self {
        self.reinvalidate.push(after);
        self.reinvalidate.sort_unstable();
        self
    }

    /// Cache responses to requests that carry `Authorization` (default: no, they pass
    /// through). Only for responses that do not depend on who asked.
    pub fn cache_authorized(mut self, yes: bool) -> Self {
        self.cache_authorized = yes;
        self
    }

    /// Extra tags for a cached response, from its request (every response already
    /// carries [`ResponseCacheLayer::path_tag`] of its path).
    pub fn tags(
        mut self,
        f: impl Fn(RequestRef<'_>) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.tags = Some(Arc::new(f));
        self
    }

    /// Extra tags a successful unsafe request (POST, PUT, PATCH, DELETE) invalidates,
    /// beyond its own path's: e.g. a `PUT /products/7` also invalidating the list at
    /// `/products`.
    pub fn invalidates(
        mut self,
        f: impl Fn(RequestRef<'_>) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.invalidates = Some(Arc::new(f));
        self
    }

    /// Requests that must not be answered from the cache: for them the layer asks the inner service and stores its answer in place of the entry,
    /// as for a request with `Cache-Control: no-cache` (default: none). For a client whose reads must see its
    /// own recent writes, which an entry filled by another client from a lagging replica
    /// may not hold: with database routing, ask the routing layer
    /// (`DbRouteLayer::current_token`).
    ///
    /// ```
    /// # use tower_scale::cache::{CacheEngine, ResponseCacheLayer};
    /// # let engine = CacheEngine::builder().build().unwrap();
    /// let layer = ResponseCacheLayer::builder(&engine)
    ///     .refresh_if(|req| req.headers.contains_key("x-fresh"))
    ///     .build()?;
    /// # Ok::<(), tower_scale::ConfigError>(())
    /// ```
    pub fn refresh_if(
        mut self,
        f: impl Fn(RequestRef<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.refresh_if = Some(Arc::new(f));
        self
    }

    /// The cache's name in `Cache-Status` (default `tower-scale`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Validates the configuration.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for no statuses, a status that is not cacheable by default
    /// (1xx, 206, 304), a `Vary` name that is not a header name, a zero body or key cap,
    /// or a name that cannot be a header value.
    pub fn build(self) -> Result<ResponseCacheLayer, ConfigError> {
        if self.statuses.is_empty() {
            return Err(ConfigError::new(
                "statuses",
                "list at least one status to store, e.g. 200",
            ));
        }
        if let Some(s) = self.statuses.iter().find(|s| {
            s.is_informational()
                || **s == StatusCode::PARTIAL_CONTENT
                || **s == StatusCode::NOT_MODIFIED
        }) {
            return Err(ConfigError::new(
                "statuses",
                format!("{s} cannot be stored whole; use final statuses such as 200, 301, 404"),
            ));
        }
        let mut vary = Vec::with_capacity(self.vary.len());
        for v in &self.vary {
            let name = HeaderName::from_bytes(v.trim().as_bytes())
                .map_err(|_| ConfigError::new("vary", format!("`{v}` is not a header name")))?;
            if !vary.contains(&name) {
                vary.push(name);
            }
        }
        if self.max_body == 0 {
            return Err(ConfigError::new(
                "max_body",
                "must be above zero; 1 MiB suits most JSON",
            ));
        }
        if self.max_key == 0 {
            return Err(ConfigError::new(
                "max_key",
                "must be above zero; 2 KiB holds any reasonable path and query",
            ));
        }
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return Err(ConfigError::new(
                "name",
                "must be a non-empty token of ASCII letters, digits, `-`, `.` and `_`",
            ));
        }
        Ok(ResponseCacheLayer {
            settings: Arc::new(Settings {
                engine: self.engine,
                statuses: self.statuses,
                vary,
                max_body: self.max_body,
                max_key: self.max_key,
                reinvalidate: self.reinvalidate,
                cache_authorized: self.cache_authorized,
                tags: self.tags,
                invalidates: self.invalidates,
                refresh_if: self.refresh_if,
                hit_status: super::response::HitStatus::new(&self.name),
                name: self.name,
            }),
        })
    }
}

impl<S> Layer<S> for ResponseCacheLayer {
    type Service = ResponseCache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResponseCache {
            inner,
            settings: Arc::clone(&self.settings),
        }
    }
}
