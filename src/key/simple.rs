//! The other stock extractors: [`HeaderKey`] (an API key), [`GlobalKey`], `RouteKey`
//! (axum) and closures ([`key_fn`]).

use std::fmt;
use std::hash::Hash;
#[cfg(feature = "axum")]
use std::sync::Arc;

use http::{HeaderName, Request};

use super::extractor::{KeyError, KeyExtractor, RequestRef};
use crate::ConfigError;

///
/// The key displays as the value when it is visible ASCII, else as `hex:` and its bytes in
/// hex, so it can be written into a store key without ambiguity.
#[derive(Debug, Clone)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// Keys by the value of `name`.
    pub fn new(name: HeaderName) -> Self {
        Self { name }
    }

    /// Keys by the header called `name`; errors if it is not a valid header name.
    pub fn named(name: &str) -> Result<Self, ConfigError> {
        HeaderName::from_bytes(name.as_bytes())
            .map(Self::new)
            .map_err(|_| ConfigError::new("header", format!("`{name}` is not a valid header name")))
    }
}

/// The value of a header, as a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeaderValueKey(http::HeaderValue);

impl HeaderValueKey {
    /// The raw header value.
    pub fn value(&self) -> &http::HeaderValue {
        &self.0
    }
}

impl fmt::Display for HeaderValueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0.as_bytes();
        if bytes.iter().all(|b| b.is_ascii_graphic()) && !bytes.starts_with(b"hex:") {
            // Visible ASCII is valid UTF-8.
            f.write_str(std::str::from_utf8(bytes).unwrap_or_default())
        } else {
            f.write_str("hex:")?;
            for b in bytes {
                write!(f, "{b:02x}")?;
            }
            Ok(())
        }
    }
}

impl KeyExtractor for HeaderKey {
    type Key = HeaderValueKey;

    fn extract<B>(&self, req: &Request<B>) -> Result<HeaderValueKey, KeyError> {
        match req.headers().get(&self.name) {
            Some(v) if !v.is_empty() => Ok(HeaderValueKey(v.clone())),
            Some(_) => Err(KeyError::Invalid("header value (empty)")),
            None => Err(KeyError::Missing("key header")),
        }
    }
}

/// One key for every request: a global quota or breaker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct GlobalKey;

impl fmt::Display for GlobalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("global")
    }
}

impl KeyExtractor for GlobalKey {
    type Key = GlobalKey;

    fn extract<B>(&self, _req: &Request<B>) -> Result<GlobalKey, KeyError> {
        Ok(GlobalKey)
    }
}

/// Keys a request by the route template axum matched (`/products/{id}`), never the raw path.
#[cfg(feature = "axum")]
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteKey;

/// A route template, as a key.
#[cfg(feature = "axum")]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteTemplate(Arc<str>);

#[cfg(feature = "axum")]
impl fmt::Display for RouteTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(feature = "axum")]
impl KeyExtractor for RouteKey {
    type Key = RouteTemplate;

    fn extract<B>(&self, req: &Request<B>) -> Result<RouteTemplate, KeyError> {
        req.extensions()
            .get::<axum::extract::MatchedPath>()
            .map(|m| RouteTemplate(Arc::from(m.as_str())))
            .ok_or(KeyError::Missing(
                "matched route (apply the layer with Router::layer or route_layer)",
            ))
    }
}

/// A closure as a [`KeyExtractor`]; see [`key_fn`].
#[derive(Clone)]
pub struct FnKey<F> {
    f: F,
}

impl<F> fmt::Debug for FnKey<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnKey").finish_non_exhaustive()
    }
}

/// Keys requests with a closure; `None` means the request cannot be keyed.
///
/// ```
/// use tower_scale::key::{key_fn, KeyExtractor, RequestRef};
/// let tenant = key_fn(|req: RequestRef<'_>| {
///     req.headers.get("x-tenant")?.to_str().ok().map(str::to_owned)
/// });
/// let req = http::Request::builder().header("x-tenant", "acme").body(()).unwrap();
/// assert_eq!(tenant.extract(&req).unwrap(), "acme");
/// ```
pub fn key_fn<F, K>(f: F) -> FnKey<F>
where
    F: Fn(RequestRef<'_>) -> Option<K> + Clone + Send + Sync + 'static,
{
    FnKey { f }
}

impl<F, K> KeyExtractor for FnKey<F>
where
    F: Fn(RequestRef<'_>) -> Option<K> + Clone + Send + Sync + 'static,
    K: Clone + Eq + Hash + fmt::Debug + fmt::Display + Send + Sync + 'static,
{
    type Key = K;

    fn extract<B>(&self, req: &Request<B>) -> Result<K, KeyError> {
        (self.f)(RequestRef::from(req)).ok_or(KeyError::Missing("key (closure returned None)"))
    }
}
