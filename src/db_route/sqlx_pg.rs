//! [`PositionSource`] for sqlx's `PgPool`.

use std::time::Duration;

use super::position::Lsn;
use super::router::{PositionSource, ReplicaPosition};

use crate::BoxError;

impl PositionSource for sqlx::PgPool {
    async fn write_position(&self) -> Result<Lsn, BoxError> {
        // The insert position: with `synchronous_commit = off` the write position
        // (`pg_current_wal_lsn()`) can trail a commit that already returned.
        let text: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
            .fetch_one(self)
            .await?;
        Ok(text.parse()?)
    }

    async fn replica_position(&self) -> Result<ReplicaPosition, BoxError> {
        // The time lag is zero while the replica has replayed all it received: an idle
        // primary writes no transactions, and the age of the last one replayed would
        // otherwise grow until a caught-up replica looked too far behind.
        let (lsn, lag): (Option<String>, Option<f64>) = sqlx::query_as(
            "SELECT pg_last_wal_replay_lsn()::text, \
             CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
             ELSE EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp())) END::float8",
        )
        .fetch_one(self)
        .await?;
        let lsn = lsn.ok_or("not a replica: pg_last_wal_replay_lsn() is NULL")?;
        Ok(ReplicaPosition {
            replayed: lsn.parse()?,
            lag: lag.and_then(|s| Duration::try_from_secs_f64(s).ok()),
        })
    }
}
