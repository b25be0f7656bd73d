//! Rate limiting that holds across instances: GCRA, in this process or in Redis.
//!
//! [`RateLimitLayer`] admits or refuses each request against one or more [`Quota`]s per
//! client. It uses GCRA (the generic cell rate algorithm): one number per client and quota,
//! exact limits, smooth refill, no fixed-window bursts at window edges. The arithmetic
//! lives in [`gcra`], free of I/O.
//!
//! Where the state lives is the [`Store`](store::Store):
//!
//! - [`MemoryStore`] (default): this process only, a sharded map with bounded memory.
//!   Right for one instance; with N instances a client gets N times the quota.
//! - [`RedisStore`] (feature `redis`): every instance shares the quota. One Lua script,
//!   one round trip per request whatever the number of quotas, evaluated with Redis's clock.
//! - [`LeasingStore`] in front of a shared store: takes a key's units in batches and
//!   decides most requests in this process, one round trip per batch. The instances
//!   together still never admit more than the quota grants; a quota may run ahead of its
//!   rate within a window by at most `batch` per instance and set of quotas (the bound is
//!   on the type).
//!
//! All quotas that apply to a request are checked together and atomically: a request
//! refused by one quota consumes nothing of the others. Requests are keyed by a
//! [`KeyExtractor`](crate::key::KeyExtractor): the peer IP by default, the client IP behind
//! trusted proxies, an API key, anything.
//!
//! A refusal is a 429 with `Retry-After` (honest: waiting that long gets the same request
//! admitted) and the IETF `RateLimit-Policy`/`RateLimit` headers
//! (draft-ietf-httpapi-ratelimit-headers-10), optionally `X-RateLimit-*`; its body comes from
//! an [`OnRefusal`](crate::refusal::OnRefusal) (default
//! [`JsonRefusal`](crate::refusal::JsonRefusal)); the typed [`RateLimited`] is in the
//! response extensions. Admitted
//! responses pass through untouched, with the inner service's own body type; refusal bodies
//! are converted from `Bytes`, so that body type must be `From<Bytes>` (axum's `Body` and
//! `Full<Bytes>` are).
//!
//! The in-process store reads a [`Clock`]: the CPU's time-stamp counter by default. A test
//! that pauses Tokio's time gives the layer [`Clock::tokio`] with
//! [`RateLimitLayerBuilder::clock`].
//!
//! When the store fails (Redis down, or slower than the backend's timeout), the layer does
//! what [`OnStoreError`] says: admit, refuse with 503, or enforce a per-instance share of
//! each quota locally until the store answers again. [`RateLimitLayerBuilder::shadow`]
//! decides and counts without refusing.
//!
//! Metrics: `tower_scale.rate_limit.decisions` (counter; labels `quota`, `decision` =
//! `allowed`/`refused`), `tower_scale.rate_limit.store_errors`, and the Redis round trips
//! of the [backend](crate::redis).
//!
//! # Examples
//!
//! Default: 100 requests per 15 minutes per peer IP, in this process.
//!
//! ```
//! use tower_scale::rate_limit::RateLimitLayer;
//!
//! let layer = RateLimitLayer::builder().quota("100/15m".parse()?).build()?;
//! # let _ = layer;
//! # Ok::<(), tower_scale::ConfigError>(())
//! ```
//!
//! Customised: shared through Redis by every instance, clients behind a load balancer, an
//! extra quota on one route (both checked in one round trip), and a local half-share
//! fallback while Redis is down.
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_scale::key::ClientIp;
//! use tower_scale::rate_limit::{OnStoreError, Quota, RateLimitLayer, RedisStore};
//! use tower_scale::redis::RedisBackend;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = RedisBackend::builder("redis://127.0.0.1:6379")
//!     .timeout(Duration::from_millis(30))
//!     .build()?;
//! let layer = RateLimitLayer::builder()
//!     .key(ClientIp::builder().trust_cidr("10.0.0.0/8").build()?)
//!     .store(RedisStore::new(redis))
//!     .quota("100/15m".parse::<Quota>()?.named("api")?)
//!     .quota_for("10/1h".parse::<Quota>()?.named("export")?, |req| {
//!         req.method == http::Method::POST && req.uri.path() == "/exports"
//!     })
//!     .on_store_error(OnStoreError::Local { share: 0.5 })
//!     .headers_on_success(true)
//!     .build()?;
//! # let _ = layer;
//! # Ok(()) }
//! ```
//!
//! # Errors
//!
//! [`RateLimitLayerBuilder::build`] returns a [`ConfigError`](crate::ConfigError) for no
//! quota, more than [`MAX_QUOTAS`](store::MAX_QUOTAS), duplicate names, or a bad fallback share. The service
//! never fails a request itself: refusals are responses, and the inner service's errors
//! pass through.
//!
//! # Panics
//!
//! [`ResponseFuture`] panics if polled after it completed.
//!
//! # Cancel safety
//!
//! A decision is made (and, if admitted, its units taken) before the inner service is
//! called. Dropping the future after that does not return the units.

mod future;
pub mod gcra;
mod layer;
mod lease;
mod memory;
mod quota;
#[cfg(feature = "redis")]
mod redis_store;
mod response;
mod service;
pub mod store;

pub use crate::clock::Clock;
pub use future::ResponseFuture;
pub use layer::{OnStoreError, RateLimitLayer, RateLimitLayerBuilder};
pub use lease::{LeasingStore, LeasingStoreBuilder};
pub use memory::{MemoryStore, MemoryStoreBuilder};
pub use quota::Quota;
#[cfg(feature = "redis")]
pub use redis_store::RedisStore;
pub use response::{QuotaStatus, RATELIMIT, RATELIMIT_POLICY, RateLimited, Reason};
pub use service::RateLimit;
pub use store::AnyStore;
