//! Which breaker a call goes through: [`BreakerKey`] and the stock keys ([`Single`],
//! [`PerHost`], [`ByKey`], [`key_fn`]).

use std::fmt;
use std::hash::Hash;

use crate::key::KeyExtractor;

/// Which breaker a request goes through.
pub trait BreakerKey<Req>: Clone + Send + Sync + 'static {
    /// What identifies the breaker.
    type Key<'a>: Hash
    where
        Req: 'a;

    /// The request's breaker, or `None` for the layer's shared one.
    fn key<'a>(&self, req: &'a Req) -> Option<Self::Key<'a>>;
}

/// One breaker for every request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl<Req> BreakerKey<Req> for Single {
    type Key<'a>
        = ()
    where
        Req: 'a;

    #[inline]
    fn key(&self, _: &Req) -> Option<()> {
        None
    }
}

/// One breaker per upstream host (the default): the request URI's authority (an outgoing
/// client's request), else its `Host` header. Requests naming no host share the layer's
/// breaker.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerHost;

impl<B> BreakerKey<http::Request<B>> for PerHost {
    type Key<'a>
        = &'a str
    where
        B: 'a;

    #[inline]
    fn key<'a>(&self, req: &'a http::Request<B>) -> Option<&'a str> {
        match req.uri().authority() {
            Some(a) => Some(a.as_str()),
            None => req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok()),
        }
    }
}

/// Keys breakers with one of the crate's [`KeyExtractor`]s, the same ones the rate
/// limiter uses: [`HeaderKey`](crate::key::HeaderKey) for a tenant header,
/// [`ClientIp`](crate::key::ClientIp), [`RouteKey`](crate::key::RouteKey) for one breaker
/// per route of an inbound service. A request the extractor cannot key shares the layer's
/// breaker.
#[derive(Debug, Clone)]
pub struct ByKey<K>(pub K);

impl<K: KeyExtractor, B> BreakerKey<http::Request<B>> for ByKey<K> {
    type Key<'a>
        = K::Key
    where
        B: 'a;

    fn key(&self, req: &http::Request<B>) -> Option<K::Key> {
        self.0.extract(req).ok()
    }
}

/// Keys requests with a closure; from [`key_fn`].
#[derive(Clone)]
pub struct KeyFn<F>(F);

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFn")
    }
}

/// Keys requests with `f` (e.g. by tenant); `None` uses the layer's shared breaker.
pub fn key_fn<Req, K, F>(f: F) -> KeyFn<F>
where
    F: Fn(&Req) -> Option<K> + Clone + Send + Sync + 'static,
    K: Hash,
{
    KeyFn(f)
}

impl<Req, K, F> BreakerKey<Req> for KeyFn<F>
where
    F: Fn(&Req) -> Option<K> + Clone + Send + Sync + 'static,
    K: Hash,
{
    type Key<'a>
        = K
    where
        Req: 'a;

    fn key(&self, req: &Req) -> Option<K> {
        (self.0)(req)
    }
}
