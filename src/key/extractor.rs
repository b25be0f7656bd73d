//! [`KeyExtractor`], its error, the request view closures get, the peer address, and the
//! escaping that keeps keys from breaking store keys.

use std::borrow::Cow;
use std::fmt;
use std::hash::Hash;
use std::net::SocketAddr;

use http::{Extensions, HeaderMap, Method, Request, Uri};

/// Says whose request this is.
///
/// Implementations must be cheap: they run on every request. They never panic on bad
/// input; a request they cannot key is a [`KeyError`], which each layer handles as its docs
/// say (a rate limiter, for instance, can refuse it or fall back to a shared key).
pub trait KeyExtractor: Clone + Send + Sync + 'static {
    /// The key. `Display` is how it is written into store keys (Redis), so it must be
    /// injective: two different keys must display differently.
    type Key: Clone + Eq + Hash + fmt::Debug + fmt::Display + Send + Sync + 'static;

    /// Extracts the key from a request head.
    fn extract<B>(&self, req: &Request<B>) -> Result<Self::Key, KeyError>;
}

/// A request could not be keyed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// What the extractor needs is not in the request (no peer address, no header).
    Missing(&'static str),
    /// It is there but unusable (a header that is not valid text, say).
    Invalid(&'static str),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Missing(what) => write!(f, "cannot key request: no {what}"),
            KeyError::Invalid(what) => write!(f, "cannot key request: invalid {what}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// A borrowed view of a request head: what every closure this crate takes about a request
/// is handed ([`key_fn`](super::key_fn), rate-limit quota predicates and costs, route
/// labels, cache tags and refresh predicates, routing intent). Made from a `&Request<B>`
/// or a `&request::Parts` without copying.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestRef<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI.
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions (peer address, matched route, session...).
    pub extensions: &'a Extensions,
}

impl<'a, B> From<&'a Request<B>> for RequestRef<'a> {
    fn from(req: &'a Request<B>) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }
}

impl<'a> From<&'a http::request::Parts> for RequestRef<'a> {
    fn from(parts: &'a http::request::Parts) -> Self {
        Self {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            extensions: &parts.extensions,
        }
    }
}

/// The TCP peer's address, as the server recorded it in the request extensions.
///
/// Looks for axum's `ConnectInfo<SocketAddr>` (feature `axum`; serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`), then for a bare [`SocketAddr`]
/// extension (what a hand-written hyper accept loop would insert).
pub fn peer_addr(extensions: &Extensions) -> Option<SocketAddr> {
    #[cfg(feature = "axum")]
    if let Some(ci) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(ci.0);
    }
    extensions.get::<SocketAddr>().copied()
}

/// Writes a key so it can be embedded in a store key without clashing with the store's own
/// separators: `%`, `{`, `}` are percent-encoded (braces would break Redis Cluster hash tags).
/// The encoding is injective.
pub fn escape_key_part(part: &str) -> Cow<'_, str> {
    if !part.bytes().any(|b| matches!(b, b'%' | b'{' | b'}')) {
        return Cow::Borrowed(part);
    }
    let mut out = String::with_capacity(part.len() + 8);
    for c in part.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}
