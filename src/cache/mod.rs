//! Two-tier cache-aside: an in-process L1 ([moka]) in front of a shared L2 (Redis), with
//! invalidation that reaches every instance within milliseconds.
//!
//! One engine, [`CacheEngine`], and two faces over it:
//!
//! - [`Cache<K, V>`](Cache) for application data: [`get_or_load`](Cache::get_or_load),
//!   [`get`](Cache::get), [`set`](Cache::set), [`invalidate`](Cache::invalidate),
//!   [`invalidate_prefix`](Cache::invalidate_prefix) and
//!   [`CacheEngine::invalidate_tag`]; values are serialised with serde (JSON) for Redis
//!   and kept decoded in L1.
//! - [`ResponseCacheLayer`], a tower layer that caches HTTP responses.
//!
//! What both get:
//!
//! - **TTL with jitter**: up to 10% (configurable) is cut from each TTL at random, so
//!   values stored together do not expire together.
//! - **Stampede protection**: concurrent misses of one key run one loader per instance;
//!   the others wait for its result, and get its error if it fails (errors are never
//!   cached). A waiter whose loader is cancelled takes over.
//! - **Serving stale** (RFC 5861): within stale-while-revalidate the old value is served
//!   at once and one background load refreshes it; within stale-if-error the old value is
//!   served while the loader (or, for HTTP, the backend with a 5xx) fails.
//! - **Invalidation** by key, by prefix, and by tag. A tag is a version counter in Redis:
//!   invalidating it is one `INCR` and one message, whatever the number of entries, and
//!   every entry records the versions of its tags, checked when read. Prefixes are
//!   matched in L1 and scanned in Redis (O(keys): prefer tags on hot paths).
//! - **Everywhere at once**: invalidations are published on a Redis channel; every
//!   instance's subscriber drops its L1 copies (measured p50 and p99 in
//!   `docs/benchmarks.md`). The subscriber proves itself alive with a heartbeat; while it
//!   is down (or before it first connects) L1 entries are trusted for at most
//!   `unsubscribed_ttl` (1 s), and L1 is emptied when it connects again, since messages
//!   sent meanwhile are lost.
//! - **No stale write-back**: a load records, before it starts, the key's generation, the
//!   prefix generation and its tags' versions; its result is written (to L1 and, checked
//!   atomically by a script, to L2) only if none of them moved. A slow loader that began
//!   before an invalidation never writes its older value afterwards.
//! - **Redis down or slow**: every Redis call is bounded by the backend's timeout; a
//!   failure makes the cache skip L2 for half a second and serve from L1 and the loader.
//!   Requests never fail because the cache did, and it recovers by itself. An
//!   invalidation that cannot reach Redis acts locally and returns the error; it is not
//!   retried, so other instances (and L2) keep the old value until its TTL: callers that
//!   cannot accept that retry it.
//! - **Memory**: `max_bytes` weighs keys and stored bytes; the decoded form kept beside
//!   them (the typed value, a response's header map) is not counted, so budget up to
//!   about twice the figure.
//!
//! # `ResponseCache` rules
//!
//! A shared cache as RFC 9111 describes it (with RFC 5861's stale directives, RFC 9213's
//! targeted fields and RFC 9211's `Cache-Status`); `docs/architecture.md` has the table
//! of what it implements section by section and where it deliberately differs.
//!
//! - `GET` is cached; `HEAD` is answered from `GET` entries (a `HEAD` miss passes
//!   through, and its response refreshes the fields of a kept entry it validates);
//!   other methods pass through.
//! - Key: the URI's path and query (and authority, in absolute form), and the values of
//!   the configured `Vary` headers, normalised (case, spacing and line splitting of the
//!   `Accept` family; `Accept-Encoding` sorted) so equivalent requests share an entry.
//!   `Host` is not part of it, so every instance behind a load balancer shares entries;
//!   a service that answers several hosts lists `host` among its `vary` headers. A
//!   response whose own `Vary` names other headers is stored as a variant: a marker at
//!   the URI's key names those headers, and each request's variant has a key with their
//!   values (one more L1 lookup for such URIs). `Vary: *` is never stored.
//! - Stored: any final status with explicit freshness (`s-maxage`, `max-age`,
//!   `Expires` in any of the three date formats), and the configured statuses (200 by
//!   default) without it, for the engine's TTL, unless
//!   [`default_freshness(false)`](ResponseCacheLayerBuilder::default_freshness). Never:
//!   interim responses, 206, 304, `Set-Cookie`, `no-store`, `private`, a malformed
//!   directive, an `Age` that is not one non-negative integer. Fields listed in
//!   `Connection`, `private="..."` and `no-cache="..."` are left out of what is stored.
//!   The TTL is the lifetime less the age the response arrived with (its `Age`, or the
//!   time since its `Date`, whichever is more), and `Age` on a hit grows from there.
//!   Its own `stale-while-revalidate` / `stale-if-error` override the engine's windows;
//!   `must-revalidate`, `proxy-revalidate` and `no-cache` turn both off, and `s-maxage`
//!   leaves only the response's own. With a
//!   [targeted field](ResponseCacheLayerBuilder::targeted) such as `CDN-Cache-Control`,
//!   its directives replace `Cache-Control`'s for this cache and it is never sent to
//!   clients.
//! - Revalidation: a response with the origin's validator (`ETag`, `Last-Modified`) is
//!   kept past fresh ([`keep_for_revalidation`](ResponseCacheLayerBuilder::keep_for_revalidation),
//!   5 minutes); a later miss asks the origin with `If-None-Match` / `If-Modified-Since`,
//!   and a `304` updates the stored fields and freshness and serves the stored body (one
//!   round trip, no body). A `no-cache` response is stored and revalidated before every
//!   reuse.
//! - The origin is otherwise asked for the whole response: the client's conditional and
//!   `Range` headers are not forwarded; `If-None-Match`, else `If-Modified-Since`, is
//!   answered from the stored response (2xx only), and `Range` is ignored (a full 200).
//! - Requests carrying `Authorization` pass through unless
//!   [`authorized`](ResponseCacheLayerBuilder::authorized) says otherwise:
//!   [`AuthorizedRequests::Shared`] stores their responses only when they say they may be
//!   shared (`public`, `s-maxage`, `must-revalidate`). So does a response the origin made
//!   from the request's session (with the `session` feature, when a
//!   [`SessionLayer`](crate::session::SessionLayer) outside this layer gave the request a
//!   session and the handler used it): it is that user's own, whatever its headers
//!   say, unless they say it may be shared. A request's
//!   `Cache-Control: no-store` passes through; `no-cache` or `max-age=0` (a browser's
//!   reload) asks the origin, with the stored copy's validators when it has them, and
//!   stores the result; a request the `refresh_if` hook picks is answered by the origin
//!   alone (no conditional request, no stale-if-error copy).
//! - Stale-if-error serves only a stored successful (2xx) response: a stored error is
//!   never the fallback for a new failure.
//! - Bodies up to `max_body` (1 MiB) are stored; larger ones are streamed through,
//!   buffered no further than the cap.
//! - Every stored response gets a strong `ETag` (from its body's SHA-256, so every
//!   instance agrees) unless it has one; `If-None-Match` that matches is answered 304.
//!   That `ETag` is the cache's own and is never sent to the origin as a validator.
//! - `Cache-Status` (RFC 9211) on every cached route: `tower-scale; hit; ttl=42`
//!   (negative while stale), `fwd=miss; stored`, `fwd=miss; collapsed` (answered by
//!   another request's fetch), `fwd=stale; fwd-status=304; stored` (revalidated),
//!   `fwd=bypass`, `fwd=request`, and `detail=l2` or `detail=stale-if-error` where it
//!   applies; `Age` on hits.
//! - A successful (2xx, 3xx) response to any unsafe method (every method but `GET`,
//!   `HEAD`, `OPTIONS` and `TRACE`, unknown ones included) invalidates the tag of its
//!   path, which every `GET` entry of that path carries (all query strings and `Vary`
//!   variants), the paths its `Location` and `Content-Location` name on the same origin,
//!   and any tags from [`invalidates`](ResponseCacheLayerBuilder::invalidates).
//!
//! # Metrics
//!
//! `tower_scale.cache.hits` (label `tier`: `l1`, `l2`), `.misses`, `.stale_served`
//! (`reason`: `revalidate`, `error`), `.loads` (`outcome`), `.coalesced`,
//! `.invalidations` (`direction`: `sent`, `received`; `kind`: `key`, `tag`, `prefix`),
//! the gauge `.subscribed`; L2 round trips through the [backend](crate::redis) under
//! `op` `cache_get`, `cache_set`, `cache_invalidate`.
//!
//! # Examples
//!
//! An HTTP cache in process:
//!
//! ```
//! use axum::{Router, routing::get};
//! use tower_scale::cache::{CacheEngine, ResponseCacheLayer};
//!
//! let engine = CacheEngine::builder().build()?;
//! let app: Router = Router::new()
//!     .route("/products/{id}", get(|| async { "a product" }))
//!     .layer(ResponseCacheLayer::new(&engine));
//! # Ok::<(), tower_scale::ConfigError>(())
//! ```
//!
//! Shared by every instance through Redis, serving stale, and a `PUT` to a product also
//! invalidating the list:
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_scale::cache::{CacheEngine, ResponseCacheLayer};
//! use tower_scale::redis::RedisBackend;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = RedisBackend::builder("redis://127.0.0.1:6379").build()?;
//! let engine = CacheEngine::builder()
//!     .redis(redis)
//!     .ttl(Duration::from_secs(60))
//!     .stale_while_revalidate(Duration::from_secs(10))
//!     .stale_if_error(Duration::from_secs(300))
//!     .build()?;
//! let layer = ResponseCacheLayer::builder(&engine)
//!     .vary(["accept-encoding"])
//!     .invalidates(|req| {
//!         if req.uri.path().starts_with("/products/") {
//!             vec![ResponseCacheLayer::path_tag("/products")]
//!         } else {
//!             vec![]
//!         }
//!     })
//!     .build()?;
//! # let _ = layer; Ok(()) }
//! ```
//!
//! # Cancel safety
//!
//! Dropping a caller that is loading a key hands the load to one of its waiters; nothing
//! half-loaded is stored.

mod body;
mod builder;
pub mod control;
mod engine;
mod entry;
mod flight;
#[cfg(feature = "redis")]
mod l2;
mod layer;
mod metrics;
mod response;
mod service;
mod typed;

pub use body::CacheBody;
pub use builder::CacheEngineBuilder;
pub use engine::CacheEngine;
pub use layer::{AuthorizedRequests, ResponseCacheLayer, ResponseCacheLayerBuilder};
pub use service::{ResponseCache, ResponseFuture};
pub use typed::{Cache, LoadError, LoadOptions, SetError};
