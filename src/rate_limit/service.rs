//! The [`RateLimit`] service.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tower_service::Service;

use super::future::{Post, ResponseFuture};
use super::gcra::{Gcra, Verdict};
use super::layer::{Fallback, Shared};
use super::quota::Quota;
use super::response::{self, RateLimited, Reason};
use super::store::{Decision, MAX_QUOTAS, QuotaSpec, Store, StoreFuture};
use crate::StoreUnavailable;
use crate::key::{KeyExtractor, RequestRef};
use crate::refusal::OnRefusal;

/// Admits or refuses each request against its quotas. Built by
/// [`RateLimitLayer`](super::RateLimitLayer).
pub struct RateLimit<In, K, S, R> {
    pub(crate) inner: In,
    pub(crate) shared: Arc<Shared<K, S, R>>,
}

impl<In: Clone, K, S, R> Clone for RateLimit<In, K, S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<In: fmt::Debug, K, S, R> fmt::Debug for RateLimit<In, K, S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The key a request's state is kept under: its client key, or one shared bucket for the
/// requests the extractor could not key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BucketKey<K> {
    /// The client's key.
    Key(K),
    /// No key could be extracted.
    Unkeyed,
}

impl<K: fmt::Display> fmt::Display for BucketKey<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BucketKey::Key(k) => write!(f, "k:{k}"),
            BucketKey::Unkeyed => f.write_str("unkeyed"),
        }
    }
}

/// Which of the layer's quotas applied to a request.
#[derive(Clone, Copy)]
pub(crate) struct Applied {
    pub(crate) idx: [u8; MAX_QUOTAS],
    pub(crate) n: usize,
}

impl Applied {
    fn indices(&self) -> &[u8] {
        &self.idx[..self.n]
    }
}

enum Verdicted {
    Admit(Post),
    // Boxed: refusals are rare, and every future would otherwise carry a response inline.
    Refuse(Box<http::Response<bytes::Bytes>>),
}

static WARNED_UNKEYED: AtomicBool = AtomicBool::new(false);

impl<K, S, R: OnRefusal<RateLimited>> Shared<K, S, R> {
    fn specs(&self, applied: &Applied) -> [&QuotaSpec; MAX_QUOTAS] {
        let mut specs = [&self.rules[0].spec; MAX_QUOTAS];
        for (slot, &i) in specs.iter_mut().zip(applied.indices()) {
            *slot = &self.rules[usize::from(i)].spec;
        }
        specs
    }

    /// The GCRA a verdict of quota `i` came from: the layer's, or its local share when the
    /// store failed and the fallback decided.
    fn gcra_of(&self, i: u8, local: bool) -> Gcra {
        match &self.fallback {
            Fallback::Local { specs, .. } if local => specs[usize::from(i)].gcra(),
            _ => self.rules[usize::from(i)].spec.gcra(),
        }
    }

    /// Quota `i` and its `RateLimit-Policy` item as a verdict's headers describe it: the
    /// layer's, or its local share when the fallback decided.
    fn quota_of(&self, i: u8, local: bool) -> (&Quota, &HeaderValue) {
        match &self.fallback {
            Fallback::Local { quotas, .. } if local => {
                let (q, p) = &quotas[usize::from(i)];
                (q, p)
            }
            _ => {
                let rule = &self.rules[usize::from(i)];
                (&rule.quota, &rule.policy)
            }
        }
    }

    #[inline]
    fn conclude(&self, applied: &Applied, decision: &Decision) -> Verdicted {
        self.conclude_from(applied, decision, false)
    }

    #[inline]
    fn conclude_from(&self, applied: &Applied, decision: &Decision, local: bool) -> Verdicted {
        // The common case first: one quota, admitted, no headers to write.
        if decision.allowed() && !self.headers_on_success && applied.n == 1 {
            let rule = &self.rules[usize::from(applied.idx[0])];
            rule.counter(&rule.allowed, "allowed").increment(1);
            return Verdicted::Admit(Post::Nothing);
        }
        self.conclude_slow(applied, decision, local)
    }

    #[inline(never)]
    fn conclude_slow(&self, applied: &Applied, decision: &Decision, local: bool) -> Verdicted {
        let verdicts = decision.verdicts();
        // Admitted: every quota counts an admission. Refused: only the quotas that refused
        // count, since the others took nothing.
        for (&i, v) in applied.indices().iter().zip(verdicts) {
            let rule = &self.rules[usize::from(i)];
            if decision.allowed() {
                rule.counter(&rule.allowed, "allowed").increment(1);
            } else if !v.allowed {
                rule.counter(&rule.refused, "refused").increment(1);
            }
        }
        if decision.allowed() || self.shadow {
            if !decision.allowed() {
                tracing::debug!("rate limit (shadow): would have refused");
            }
            if self.headers_on_success {
                let mut h =
                    response::Pending::with_capacity(response::pending_capacity(self.x_headers));
                self.write_headers(&mut h, applied, verdicts, local);
                return Verdicted::Admit(Post::Headers(h.into_boxed_slice()));
            }
            return Verdicted::Admit(Post::Nothing);
        }
        let retry_after = verdicts
            .iter()
            .filter(|v| !v.allowed)
            .map(|v| v.retry_after_us)
            .max()
            .filter(|us| *us != u64::MAX)
            .map(Duration::from_micros);
        let refusal = RateLimited {
            reason: Reason::QuotaExceeded,
            retry_after,
            quotas: applied
                .indices()
                .iter()
                .zip(verdicts)
                .map(|(&i, v)| {
                    response::status(self.quota_of(i, local).0, v, &self.gcra_of(i, local))
                })
                .collect(),
        };
        let mut resp = self.response.response(&refusal);
        self.write_headers(resp.headers_mut(), applied, verdicts, local);
        response::write_retry_after(resp.headers_mut(), retry_after);
        resp.extensions_mut().insert(refusal);
        Verdicted::Refuse(Box::new(resp))
    }

    fn write_headers(
        &self,
        h: &mut impl response::HeaderSink,
        applied: &Applied,
        verdicts: &[Verdict],
        local: bool,
    ) {
        let rows = applied.indices().iter().zip(verdicts).map(|(&i, v)| {
            let (quota, policy) = self.quota_of(i, local);
            (quota, policy, *v, self.gcra_of(i, local))
        });
        response::write_headers(h, rows, self.x_headers);
    }

    fn store_failed<Key: std::hash::Hash>(
        &self,
        key: &Key,
        applied: &Applied,
        cost: u64,
        err: &StoreUnavailable,
    ) -> Verdicted {
        ::metrics::counter!("tower_scale.rate_limit.store_errors").increment(1);
        match self.warn.ready(std::time::Duration::from_secs(10)) {
            Some(skipped) => {
                tracing::warn!(error = %err, skipped, "rate limit: store unavailable; the configured fallback decides")
            }
            None => tracing::debug!(error = %err, "rate limit: store unavailable"),
        }
        match &self.fallback {
            // Shadow mode never refuses, whatever the store does.
            Fallback::Open | Fallback::Closed if self.shadow => Verdicted::Admit(Post::Nothing),
            Fallback::Open => Verdicted::Admit(Post::Nothing),
            Fallback::Closed => {
                let refusal = RateLimited {
                    reason: Reason::StoreUnavailable,
                    retry_after: Some(Duration::from_secs(1)),
                    quotas: Vec::new(),
                };
                let mut resp = self.response.response(&refusal);
                response::write_retry_after(resp.headers_mut(), refusal.retry_after);
                resp.extensions_mut().insert(refusal);
                Verdicted::Refuse(Box::new(resp))
            }
            Fallback::Local { store, specs, .. } => {
                let local: Vec<&QuotaSpec> = applied
                    .indices()
                    .iter()
                    .map(|&i| &specs[usize::from(i)])
                    .collect();
                let decision = store.decide(key, &local, cost);
                self.conclude_from(applied, &decision, true)
            }
        }
    }
}

impl<In, K, S, R, B, ResBody> Service<Request<B>> for RateLimit<In, K, S, R>
where
    In: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    In::Future: Send + 'static,
    In::Error: Send + 'static,
    ResBody: From<bytes::Bytes> + Send + 'static,
    B: Send + 'static,
    K: KeyExtractor,
    S: Store<BucketKey<K::Key>>,
    R: OnRefusal<RateLimited>,
{
    type Response = Response<ResBody>;
    type Error = In::Error;
    type Future = ResponseFuture<In::Future, Result<Response<ResBody>, In::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Small enough to inline into the caller, so the request is handed on without a
        // copy; the decision itself is made out of line.
        match self.shared.decide(&req) {
            Decided::Now(Verdicted::Admit(post)) => {
                ResponseFuture::calling(self.inner.call(req), post)
            }
            Decided::Now(Verdicted::Refuse(resp)) => ResponseFuture::refused(resp),
            Decided::Later(pending) => self.call_later(req, pending),
        }
    }
}

/// The decision for a request: made already (in-process store), or awaiting the store.
enum Decided<Key> {
    Now(Verdicted),
    Later(Pending<Key>),
}

/// A store check under way, with what concluding it needs.
struct Pending<Key> {
    check: super::store::BoxedCheck,
    key: BucketKey<Key>,
    applied: Applied,
    cost: u64,
}

impl<K: KeyExtractor, S: Store<BucketKey<K::Key>>, R: OnRefusal<RateLimited>> Shared<K, S, R> {
    /// Decides `req` as far as can be done without waiting. Inlined, and the request is
    /// only lent to code that is inlined too in the common case (every quota applies,
    /// cost 1), so the caller can hand the request on without copying it.
    #[inline]
    fn decide<B>(&self, req: &Request<B>) -> Decided<K::Key> {
        let (applied, cost) = if self.simple {
            (self.all, 1)
        } else {
            self.select(RequestRef::from(req))
        };
        if applied.n == 0 || cost == 0 {
            return Decided::Now(Verdicted::Admit(Post::Nothing));
        }
        let key = match self.key.extract(req) {
            Ok(k) => BucketKey::Key(k),
            Err(e) => unkeyed(&e),
        };
        self.check(key, applied, u64::from(cost))
    }

    /// Which quotas apply to a request, and its cost.
    #[inline(never)]
    fn select(&self, view: RequestRef<'_>) -> (Applied, u32) {
        let applied = if self.unconditional {
            // No quota has a predicate: all of them apply, as computed at build time.
            self.all
        } else {
            let mut applied = Applied {
                idx: [0; MAX_QUOTAS],
                n: 0,
            };
            for (i, rule) in self.rules.iter().enumerate() {
                if rule.matcher.as_ref().is_none_or(|m| m(view)) {
                    applied.idx[applied.n] = i as u8;
                    applied.n += 1;
                }
            }
            applied
        };
        (applied, self.cost.as_ref().map_or(1, |f| f(view)))
    }

    /// Asks the store, and concludes if it answers at once.
    #[inline]
    fn check(&self, key: BucketKey<K::Key>, applied: Applied, cost: u64) -> Decided<K::Key> {
        if applied.n == 1 && !self.headers_on_success {
            // One quota and nothing to report if admitted: a store that can admits at
            // once, with no decision to build; otherwise it falls through to `check`.
            let rule = &self.rules[usize::from(applied.idx[0])];
            if self.store.try_admit(&key, &rule.spec, cost) {
                rule.counter(&rule.allowed, "allowed").increment(1);
                return Decided::Now(Verdicted::Admit(Post::Nothing));
            }
        }
        self.check_store(key, applied, cost)
    }

    /// Every other case: the store's full decision, now or later.
    #[inline(never)]
    fn check_store(&self, key: BucketKey<K::Key>, applied: Applied, cost: u64) -> Decided<K::Key> {
        let one;
        let many;
        let specs: &[&QuotaSpec] = if applied.n == 1 {
            one = [&self.rules[usize::from(applied.idx[0])].spec];
            &one
        } else {
            many = self.specs(&applied);
            &many[..applied.n]
        };
        match self.store.check(&key, specs, cost) {
            StoreFuture::Ready(Ok(d)) => Decided::Now(self.conclude(&applied, &d)),
            StoreFuture::Ready(Err(e)) => Decided::Now(self.store_failed(&key, &applied, cost, &e)),
            StoreFuture::Pending(check) => Decided::Later(Pending {
                check,
                key,
                applied,
                cost,
            }),
        }
    }
}

#[cold]
fn unkeyed<Key>(e: &crate::key::KeyError) -> BucketKey<Key> {
    if !WARNED_UNKEYED.swap(true, Ordering::Relaxed) {
        tracing::warn!(error = %e, "rate limit: request could not be keyed; unkeyed requests share one bucket");
    }
    BucketKey::Unkeyed
}

impl<In, K, S, R> RateLimit<In, K, S, R>
where
    K: KeyExtractor,
    S: Store<BucketKey<K::Key>>,
    R: OnRefusal<RateLimited>,
{
    /// The store answers later (Redis): the inner call waits for it, in one boxed future.
    #[inline(never)]
    fn call_later<B, ResBody>(
        &mut self,
        req: Request<B>,
        pending: Pending<K::Key>,
    ) -> ResponseFuture<In::Future, Result<Response<ResBody>, In::Error>>
    where
        In: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
        In::Future: Send + 'static,
        In::Error: Send + 'static,
        ResBody: Send + 'static,
        B: Send + 'static,
    {
        // The readiness `poll_ready` obtained belongs to `self.inner`: take it into the
        // future, leave a clone for the next request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        let Pending {
            check,
            key,
            applied,
            cost,
        } = pending;
        ResponseFuture::deciding(Box::pin(async move {
            let verdicted = match check.await {
                Ok(d) => shared.conclude(&applied, &d),
                Err(e) => shared.store_failed(&key, &applied, cost, &e),
            };
            match verdicted {
                Verdicted::Admit(post) => (Some(inner.call(req).await), post),
                Verdicted::Refuse(resp) => (None, Post::Refuse(resp)),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::{OnStoreError, Quota, RateLimitLayer};
    use bytes::Bytes;
    use http_body_util::Full;
    use tower_layer::Layer;

    /// A store that is always down.
    #[derive(Clone, Debug)]
    struct Down;

    impl<K> Store<K> for Down {
        fn check(&self, _: &K, _: &[&QuotaSpec], _: u64) -> StoreFuture {
            StoreFuture::Ready(Err(StoreUnavailable::backend(std::io::Error::other(
                "down",
            ))))
        }
    }

    #[tokio::test]
    async fn the_local_share_reports_its_own_remaining() {
        let layer = RateLimitLayer::builder()
            .key(crate::key::GlobalKey)
            .store(Down)
            .quota("10/1m".parse::<Quota>().unwrap().named("m").unwrap())
            .headers_on_success(true)
            .x_ratelimit_headers(true)
            .on_store_error(OnStoreError::Local { share: 0.5 })
            .build()
            .unwrap();
        let mut svc = layer.layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
        }));
        let mut seen = Vec::new();
        for _ in 0..6 {
            let r = svc.call(Request::new(())).await.unwrap();
            let h = r.headers().get("ratelimit").unwrap().to_str().unwrap();
            seen.push((r.status().as_u16(), h.split(';').nth(1).unwrap().to_owned()));
            // The policy and the limit are the share's, as the remaining count is: a
            // client told `q=10` would be refused after 5.
            assert_eq!(r.headers()["ratelimit-policy"], "\"m\";q=5;w=60");
            assert_eq!(r.headers()["x-ratelimit-limit"], "5");
            if r.status().as_u16() == 429 {
                let refusal = r.extensions().get::<RateLimited>().unwrap();
                assert_eq!(refusal.quotas[0].limit, 5);
            }
        }
        // Half of 10 per minute: 5 admitted, counting down from 4, then refused at 0.
        let want: Vec<_> = [
            (200, "r=4"),
            (200, "r=3"),
            (200, "r=2"),
            (200, "r=1"),
            (200, "r=0"),
            (429, "r=0"),
        ]
        .iter()
        .map(|(s, r)| (*s, r.to_string()))
        .collect();
        assert_eq!(seen, want);
    }
}
