//! Composable [tower] layers for services that scale out.
//!
//! tower-scale gives an axum or hyper service what it needs to run as many interchangeable
//! instances: shared state in Redis, protection for the database, resilience against
//! failing dependencies, and measurements of all of it. Every layer is a plain tower
//! [`Layer`](tower_layer::Layer): `Clone`, cheap to clone, configured by a validating
//! builder, and reporting through the [`metrics`](https://docs.rs/metrics) facade and
//! [`tracing`].
//!
//! # Overview
//!
//! | module | what it does | feature |
//! |---|---|---|
//! | [`metrics`] | latency histograms, in-flight gauge, request counter | `metrics` |
//! | [`key`] | who a request counts against (peer IP, client IP behind trusted proxies, API key) | always |
//! | [`classify`] | one success/failure/slow verdict shared by every layer | always |
//! | [`rate_limit`] | GCRA rate limits per client, in-process or shared through Redis | `rate-limit` |
//! | [`redis`] | the shared Redis backend: connection, key layout, scripts, timeouts | `redis` |
//! | [`circuit_breaker`] | closed/open/half-open breakers, per key, over any tower service | `circuit-breaker` |
//! | [`retry`] | retries with jittered backoff, a deadline, a budget and body replay | `retry` |
//! | [`session`] | sessions in a store: hashed ids in cookies, lazy, merged per key | `session` |
//! | [`cache`] | two-tier cache-aside (moka + Redis) for data and HTTP responses, invalidated everywhere | `cache` |
//! | [`jobs`] | background jobs: queues in Redis, worker pools with leases, retries, dead letters, status by id | `jobs` |
//! | [`db_route`] | reads to replicas, writes to the primary, read-your-writes by WAL position | `db-route`, `sqlx-postgres` |
//! | [`clock`] | the time source of the in-process state machines | with `rate-limit`, `circuit-breaker`, `retry`, `session` or `cache` |
//!
//! The path of a request through a fully assembled service is described in
//! `docs/architecture.md`.
//!
//! # Example
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use tower_scale::metrics::HttpMetricsLayer;
//!
//! # async fn run() -> std::io::Result<()> {
//! let app = Router::new()
//!     .route("/hello/{name}", get(|| async { "hello" }))
//!     .layer(HttpMetricsLayer::new());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! # Features
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `metrics` | yes | [`metrics`] |
//! | `rate-limit` | no | [`rate_limit`]; with `redis`, its `RedisStore` |
//! | `redis` | no | [`redis`] (redis-rs with Tokio and `ConnectionManager`) |
//! | `axum` | no | route templates from `MatchedPath`, `ConnectInfo` peer addresses, `RouteKey` |
//! | `circuit-breaker` | no | [`circuit_breaker`] |
//! | `retry` | no | [`retry`] |
//! | `session` | no | [`session`]; with `redis`, its `RedisSessionStore` |
//! | `cache` | no | [`cache`]; with `redis`, the shared L2 tier and cross-instance invalidation |
//! | `jobs` | no | [`jobs`]; with `redis`, its `RedisJobStore` |
//! | `db-route` | no | [`db_route`]'s driver-agnostic core |
//! | `sqlx-postgres` | no | `db-route` with its sqlx `PgPool` integration |
//! | `full` | no | all of the above |
//!
//! # Minimum supported Rust version
//!
//! Rust 1.88.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
#[cfg(feature = "cache")]
pub mod cache;
#[cfg(feature = "circuit-breaker")]
pub mod circuit_breaker;
pub mod classify;
#[cfg(any(
    feature = "rate-limit",
    feature = "circuit-breaker",
    feature = "retry",
    feature = "session",
    feature = "cache"
))]
pub mod clock;
#[cfg(any(feature = "session", feature = "db-route"))]
mod cookie;
#[cfg(feature = "db-route")]
pub mod db_route;
pub mod duration;
mod error;
#[cfg(any(
    feature = "rate-limit",
    feature = "circuit-breaker",
    feature = "db-route",
    feature = "cache",
    feature = "retry",
    feature = "jobs"
))]
mod hash;
#[cfg(any(
    feature = "session",
    feature = "db-route",
    feature = "cache",
    feature = "jobs"
))]
mod hex;
#[cfg(any(feature = "cache", feature = "retry"))]
mod http_date;
#[cfg(feature = "jobs")]
pub mod jobs;
pub mod key;
#[cfg(any(feature = "rate-limit", feature = "circuit-breaker"))]
mod keyed;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "rate-limit")]
pub mod rate_limit;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(
    feature = "rate-limit",
    feature = "circuit-breaker",
    feature = "session",
    feature = "jobs"
))]
pub mod refusal;
#[cfg(feature = "retry")]
pub mod retry;
#[cfg(feature = "session")]
pub mod session;

pub use builder::ServiceBuilderExt;

// The README's examples compile (as doc tests).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

// So do the getting-started guide's starting point and finished program (its fragments,
// tagged `ignore`, are checked line by line against the finished program in
// tests/examples.rs).
#[cfg(doctest)]
#[doc = include_str!("../docs/getting-started.md")]
struct GettingStartedDoctests;
pub use error::{BoxError, ConfigError, StoreUnavailable, StoreUnavailableKind};

/// Items that exist in the builds where a layer records metrics: every feature but `axum`.
macro_rules! with_metrics {
    ($($item:item)*) => {
        $(
            #[cfg(any(
                feature = "metrics",
                feature = "rate-limit",
                feature = "circuit-breaker",
                feature = "retry",
                feature = "session",
                feature = "cache",
                feature = "db-route",
                feature = "jobs",
                feature = "redis"
            ))]
            $item
        )*
    };
}

with_metrics! {
    mod describe;

    /// Sends the description (help text and unit) of every metric the layers record to
    /// the installed `metrics` recorder, so Prometheus shows `# HELP` for each series.
    /// Each layer does this once per process when it is built; call it yourself if you
    /// install the recorder after building a layer.
    pub fn describe_metrics() {
        describe::all();
    }
}
