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

/// What the cache does with requests that carry `Authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AuthorizedRequests {
    /// They pass through to the service: never answered from the cache, their responses
    /// never stored (the default).
    #[default]
    Bypass,
    /// As RFC 9111 §3.5 lets a shared cache: they are answered from the cache, and their
    /// responses are stored only when they say they may be shared (`public`, `s-maxage`
    /// or `must-revalidate`).
    Shared,
    /// As any other request: for services whose responses never depend on who asks.
    Cache,
}

pub(crate) struct Settings {
    pub(crate) engine: CacheEngine,
    pub(crate) rules: super::response::Rules,
    pub(crate) max_body: usize,
    pub(crate) max_key: usize,
    pub(crate) reinvalidate: Vec<std::time::Duration>,
    pub(crate) authorized: AuthorizedRequests,
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
            .field("rules", &s.rules)
            .field("max_body", &s.max_body)
            .field("max_key", &s.max_key)
            .field("authorized", &s.authorized)
            .finish_non_exhaustive()
    }
}

/// Builds a [`ResponseCacheLayer`].
#[must_use]
pub struct ResponseCacheLayerBuilder {
    engine: CacheEngine,
    statuses: Vec<StatusCode>,
    default_freshness: bool,
    vary: Vec<String>,
    targeted: Vec<String>,
    keep: std::time::Duration,
    max_body: usize,
    max_key: usize,
    reinvalidate: Vec<std::time::Duration>,
    authorized: AuthorizedRequests,
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
    /// A layer with the defaults: any status with explicit freshness, and 200 with the
    /// engine's TTL without; no `Vary` headers; responses with validators kept 5 minutes
    /// past fresh for revalidation; no targeted `Cache-Control` field; bodies up to 1 MiB,
    /// keys up to 2 KiB; requests with `Authorization` not cached.
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
            default_freshness: true,
            vary: Vec::new(),
            targeted: Vec::new(),
            keep: std::time::Duration::from_secs(300),
            max_body: 1 << 20,
            max_key: 2048,
            reinvalidate: Vec::new(),
            authorized: AuthorizedRequests::Bypass,
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
    /// The statuses stored when the response states no freshness of its own, for the
    /// engine's TTL (default: 200 only). A response with explicit freshness (`max-age`,
    /// `s-maxage`, `Expires`) is stored whatever its final status, as RFC 9111 §3 allows.
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// Whether responses that state no freshness of their own are stored, for the
    /// engine's TTL, when their status is one of [`statuses`](Self::statuses) (default:
    /// yes). `false` stores only what the origin says may be stored for how long: the
    /// choice for a cache in front of an origin it does not control.
    pub fn default_freshness(mut self, yes: bool) -> Self {
        self.default_freshness = yes;
        self
    }

    /// Targeted `Cache-Control` fields (RFC 9213) this cache obeys, in order of
    /// precedence (default: none). When a response carries one of them with a valid
    /// value, its directives replace those of `Cache-Control` for this cache, and the
    /// field is never sent to clients. For a layer that is the edge in front of an
    /// origin, `["cdn-cache-control"]`; for one inside the service, behind a CDN that
    /// field is meant for, a name of its own, e.g. `["tower-scale-cache-control"]`.
    pub fn targeted<I, S>(mut self, fields: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.targeted = fields.into_iter().map(Into::into).collect();
        self
    }

    /// How long past fresh a response with a validator from the origin (`ETag` or
    /// `Last-Modified`) is kept, so that a later request revalidates it with a
    /// conditional request instead of fetching it again (default 5 minutes; zero turns
    /// revalidation off). A `304` costs one round trip and no body.
    pub fn keep_for_revalidation(mut self, keep: std::time::Duration) -> Self {
        self.keep = keep;
        self
    }

    /// Request headers that select among responses (`Accept-Encoding`, `Accept-Language`):
    /// their values are part of the key, normalised (case, spacing and line splitting of
    /// the `Accept` family; `Accept-Encoding` sorted) so that equivalent requests share
    /// an entry. A response whose own `Vary` names other headers is stored per variant.
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
    /// through). Only for responses that do not depend on who asked. The same as
    /// [`authorized`](Self::authorized) with [`AuthorizedRequests::Cache`] or
    /// [`AuthorizedRequests::Bypass`].
    pub fn cache_authorized(mut self, yes: bool) -> Self {
        self.authorized = if yes {
            AuthorizedRequests::Cache
        } else {
            AuthorizedRequests::Bypass
        };
        self
    }

    /// What the cache does with requests that carry `Authorization` (default:
    /// [`AuthorizedRequests::Bypass`]).
    pub fn authorized(mut self, authorized: AuthorizedRequests) -> Self {
        self.authorized = authorized;
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

    /// Extra tags a successful unsafe request (any method but GET, HEAD, OPTIONS and
    /// TRACE) invalidates,
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
    /// (1xx, 206, 304), a `Vary` or targeted name that is not a header name, a zero body
    /// or key cap, or a name that cannot be a header value.
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
        let names = |setting: &'static str, list: &[String]| {
            let mut names: Vec<HeaderName> = Vec::with_capacity(list.len());
            for v in list {
                let name = HeaderName::from_bytes(v.trim().as_bytes()).map_err(|_| {
                    ConfigError::new(setting, format!("`{v}` is not a header name"))
                })?;
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            Ok::<_, ConfigError>(names)
        };
        let vary = names("vary", &self.vary)?;
        let targeted = names("targeted", &self.targeted)?;
        if let Some(t) = targeted.iter().find(|t| **t == http::header::CACHE_CONTROL) {
            return Err(ConfigError::new(
                "targeted",
                format!(
                    "`{t}` is the field targeted fields take precedence over; name another, such as cdn-cache-control"
                ),
            ));
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
                rules: super::response::Rules {
                    statuses: self.statuses,
                    default_freshness: self.default_freshness,
                    vary,
                    targeted,
                    keep: self.keep,
                },
                max_body: self.max_body,
                max_key: self.max_key,
                reinvalidate: self.reinvalidate,
                authorized: self.authorized,
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
