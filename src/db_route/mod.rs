//! Read/write database routing: reads from replicas, writes to the primary, and
//! read-your-writes by WAL position.
//!
//! - [`DbRouter`] holds a primary and its replicas (any handle type, such as a pool; the
//!   driver-specific part is [`PositionSource`], implemented for sqlx's `PgPool` with
//!   `sqlx-postgres`).
//! - [`DbRouteLayer`] decides per request: `GET`, `HEAD` and `OPTIONS` read, other methods
//!   write (overridable with [`intent`](DbRouteLayerBuilder::intent)). It puts a [`Db`]
//!   in the request's extensions (with `axum`, an extractor) whose
//!   [`reader`](Db::reader) is this request's read handle and [`writer`](Db::writer) the
//!   primary (for a request that writes, both are the primary). After a request that used
//!   the primary that way and answered with a 2xx or 3xx, it reads the primary's position
//!   (one query, bounded by the check timeout) and sets the client's token cookie
//!   (`db_pos`), unless the router has no replicas; optionally it names the database used
//!   in `x-db-route`.
//!
//! - [`Shards`] maps a key (a user, a tenant) to one of N databases, stably: the last
//!   resort for scaling writes, after caching and replicas.
//!
//! The reference server uses it with `DATABASE_URL` and `DATABASE_REPLICA_URLS`.
//!
//! - A read goes to a healthy replica, in turn. A client that wrote carries a token with
//!   the primary's position after its write (`pg_current_wal_insert_lsn()`); its reads go
//!   to the next replica in turn that has replayed past it (`pg_last_wal_replay_lsn()`),
//!   else to the primary. A token without a position pins the client to the primary for
//!   the time pin (2 s by default). A token is honoured for at most `token_max_age` (plus 5 s
//!   for clocks that run ahead), so a forged or garbage one can at worst keep its client on
//!   the primary that long.
//! - [`DbRouter::check_health`] (periodically with [`DbRouter::spawn_health_checks`])
//!   reads each replica's position and lag; one that errs, does not answer within the
//!   check timeout, or lags beyond `max_lag` or `max_lag_bytes` is skipped; with no
//!   healthy replica, reads go to the primary; a replica that recovers is used again.
//! - A replica that dies between two checks: a handler whose read failed asks
//!   [`Db::reader_after_failure`] for the primary, retries there once, and the replica is
//!   out of rotation for every request until its next check finds it well.
//!
//! Metrics: `tower_scale.db_route.reads` (counter, labels `to`: `replica` or `primary`,
//! `why`), `.replica_lag_bytes` and `.replica_lag_seconds` (gauges, label `replica`),
//! `.health_changes` (counter, labels `replica`, `healthy`), `.replica_failures`
//! (counter, label `replica`: reads that failed and were retried on the primary).
//!
//! # Examples
//!
//! ```no_run
//! # #[cfg(feature = "sqlx-postgres")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tower_scale::db_route::{DbRouter, ReadRoute};
//!
//! let primary = sqlx::PgPool::connect("postgres://app@primary/app").await?;
//! let replica = sqlx::PgPool::connect("postgres://app@replica/app").await?;
//! let router = DbRouter::builder(primary)
//!     .replica("replica-1", replica)
//!     .max_lag(Duration::from_secs(5))
//!     .build()?;
//! router.spawn_health_checks(Duration::from_secs(1));
//!
//! let route = router.route_read(None, 0);
//! let rows: Vec<(i64,)> = sqlx::query_as("SELECT 1::int8")
//!     .fetch_all(router.handle(route))
//!     .await?;
//! # let _ = (rows, ReadRoute::Replica(0)); Ok(()) }
//! ```

mod layer;
mod position;
mod router;
mod shard;
#[cfg(feature = "sqlx-postgres")]
mod sqlx_pg;

pub use crate::cookie::SameSite;
#[cfg(feature = "axum")]
pub use layer::MissingDbRouteLayer;
pub use layer::{
    Db, DbRoute, DbRouteLayer, DbRouteLayerBuilder, Intent, ResponseFuture, X_DB_ROUTE,
};
pub use position::{BadLsn, ConsistencyToken, Lsn};
pub use router::{
    DbRouter, DbRouterBuilder, PositionSource, PrimaryReason, ReadRoute, ReplicaHealth,
    ReplicaPosition,
};
pub use shard::Shards;
