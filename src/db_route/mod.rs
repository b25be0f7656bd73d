//! Read/write database routing: reads from replicas, writes to the primary, and
//! read-your-writes by WAL position.
//!
//! **In progress.** Built so far: the driver-agnostic core, [`DbRouter`] (a primary and
//! its replicas, replica health from their replayed WAL position and lag, and the choice
//! of where a read goes), the client's [`ConsistencyToken`], and, with `sqlx-postgres`,
//! [`PositionSource`] for sqlx's `PgPool`. The tower layer that routes per request and
//! sets the token, and the `Db` extractor, come next (`docs/architecture.md`).
//!
//! - A read goes to a healthy replica, in turn. A client that wrote carries a token with
//!   the primary's position after its write (`pg_current_wal_insert_lsn()`); its reads go
//!   to a replica only once that replica has replayed past it (`pg_last_wal_replay_lsn()`),
//!   else to the primary. A token without a position pins the client to the primary for
//!   the time pin (2 s by default). A token is honoured for at most `token_max_age`, so a
//!   forged or garbage one can at worst keep its client on the primary that long.
//! - [`DbRouter::check_health`] (periodically with [`DbRouter::spawn_health_checks`])
//!   reads each replica's position and lag; one that errs, does not answer within the
//!   check timeout, or lags beyond `max_lag` or `max_lag_bytes` is skipped; with no
//!   healthy replica, reads go to the primary; a replica that recovers is used again.
//!
//! Metrics: `tower_scale.db_route.replica_lag_bytes` and `.replica_lag_seconds` (gauges,
//! label `replica`), `.health_changes` (counter, labels `replica`, `healthy`).
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

mod position;
mod router;
#[cfg(feature = "sqlx-postgres")]
mod sqlx_pg;

pub use position::{BadLsn, ConsistencyToken, Lsn};
pub use router::{
    DbRouter, DbRouterBuilder, PositionSource, PrimaryReason, ReadRoute, ReplicaHealth,
    ReplicaPosition,
};
