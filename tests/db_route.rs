//! The routing core against a real PostgreSQL primary and its physical streaming replica
//! (a private pair, so replay can be paused and the replica stopped without touching the
//! shared one).

mod support;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use support::{PgPair, eventually};
use tower_scale::db_route::{ConsistencyToken, DbRouter, PositionSource, PrimaryReason, ReadRoute};

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn has_row(pool: &PgPool, id: i32) -> bool {
    sqlx::query_scalar::<_, i32>("SELECT id FROM t WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_follow_the_writers_position() {
    let pair = PgPair::start();
    let primary = pool(&pair.primary_url()).await;
    let replica = pool(&pair.replica_url()).await;
    sqlx::raw_sql("CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1)")
        .execute(&primary)
        .await
        .unwrap();
    let router = DbRouter::builder(primary.clone())
        .replica("r1", replica.clone())
        .build()
        .unwrap();
    let strict = DbRouter::builder(primary.clone())
        .replica("r1", replica.clone())
        .max_lag_bytes(0)
        .build()
        .unwrap();

    // A client that wrote row 1 reads from the replica once it has replayed it.
    let wrote = ConsistencyToken {
        lsn: Some(primary.write_position().await.unwrap()),
        issued_ms: now_ms(),
    };
    let route = eventually(
        "the replica to replay row 1",
        Duration::from_secs(10),
        || async {
            router.check_health().await;
            match router.route_read(Some(&wrote), now_ms()) {
                r @ ReadRoute::Replica(_) => Some(r),
                _ => None,
            }
        },
    )
    .await;
    assert!(has_row(router.handle(route), 1).await);

    // Replay paused: the writer of row 2 reads from the primary and sees its write;
    // another client still reads the replica.
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&replica)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (2)")
        .execute(&primary)
        .await
        .unwrap();
    let wrote2 = ConsistencyToken {
        lsn: Some(primary.write_position().await.unwrap()),
        issued_ms: now_ms(),
    };
    router.check_health().await;
    let route = router.route_read(Some(&wrote2), now_ms());
    assert_eq!(route, ReadRoute::Primary(PrimaryReason::NotReplayed));
    assert!(
        has_row(router.handle(route), 2).await,
        "the writer sees its write"
    );
    let other = router.route_read(None, now_ms());
    assert_eq!(other, ReadRoute::Replica(0));
    assert!(
        !has_row(router.handle(other), 2).await,
        "the replica is behind"
    );
    // With no lag allowed, the paused replica is skipped altogether.
    strict.check_health().await;
    assert_eq!(
        strict.route_read(None, now_ms()),
        ReadRoute::Primary(PrimaryReason::NoHealthyReplica)
    );
    assert!(strict.health()[0].lag_bytes > 0);

    // Resumed and caught up: the writer is back on the replica.
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&replica)
        .await
        .unwrap();
    eventually(
        "the replica to replay row 2",
        Duration::from_secs(10),
        || async {
            router.check_health().await;
            matches!(
                router.route_read(Some(&wrote2), now_ms()),
                ReadRoute::Replica(_)
            )
            .then_some(())
        },
    )
    .await;
    assert!(has_row(&replica, 2).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_is_skipped_and_rejoins() {
    let pair = PgPair::start();
    let primary = pool(&pair.primary_url()).await;
    let replica = pool(&pair.replica_url()).await;
    let router = DbRouter::builder(primary.clone())
        .replica("r1", replica)
        .check_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    router.check_health().await;
    assert_eq!(router.route_read(None, now_ms()), ReadRoute::Replica(0));

    pair.stop_replica();
    router.check_health().await;
    let route = router.route_read(None, now_ms());
    assert_eq!(route, ReadRoute::Primary(PrimaryReason::NoHealthyReplica));
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(router.handle(route))
        .await
        .unwrap();
    assert_eq!(one, 1, "reads succeed from the primary");

    pair.start_replica();
    eventually("the replica to rejoin", Duration::from_secs(10), || async {
        router.check_health().await;
        (router.route_read(None, now_ms()) == ReadRoute::Replica(0)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_primary_is_not_a_replica() {
    let pair = PgPair::start();
    let primary = pool(&pair.primary_url()).await;
    let err = primary.replica_position().await.unwrap_err();
    assert!(err.to_string().contains("not a replica"), "{err}");
}
