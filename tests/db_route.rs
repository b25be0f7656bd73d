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

/// A private pair with table `t` created by `sql` on the primary, and a pool to each.
async fn pair_with(sql: &str) -> (PgPair, PgPool, PgPool) {
    let pair = PgPair::start();
    let primary = pool(&pair.primary_url()).await;
    let replica = pool(&pair.replica_url()).await;
    sqlx::raw_sql(sql).execute(&primary).await.unwrap();
    (pair, primary, replica)
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
    let (pair, primary, replica) =
        pair_with("CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1)").await;
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
    support::pause_replay(&pair.replica_url()).await;
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

// ---------------------------------------------------------------------------------------
// The layer, around handlers that use the `Db` it hands them.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower::ServiceExt;
use tower_scale::db_route::{Db, DbRouteLayer};

type Svc =
    tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

fn app(router: DbRouter<PgPool>) -> Svc {
    let layer = DbRouteLayer::builder(router)
        .secure(false)
        .route_header(true)
        .build()
        .unwrap();
    let handler = tower::service_fn(|req: Request<Full<Bytes>>| async move {
        let db = req.extensions().get::<Db<PgPool>>().cloned().unwrap();
        let id: i32 = req
            .uri()
            .path()
            .trim_start_matches("/row/")
            .parse()
            .unwrap();
        let status = if req.method() == Method::PUT {
            sqlx::query("INSERT INTO t VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(id)
                .execute(db.writer())
                .await
                .unwrap();
            StatusCode::OK
        } else if has_row(db.reader(), id).await {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = status;
        Ok::<_, Infallible>(r)
    });
    tower::util::BoxCloneSyncService::new(tower::Layer::layer(&layer, handler))
}

/// Status, `x-db-route`, and the token cookie set, if any.
async fn call(
    svc: &Svc,
    method: Method,
    id: i32,
    cookie: Option<&str>,
) -> (StatusCode, String, Option<String>) {
    let mut req = Request::builder().method(method).uri(format!("/row/{id}"));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let res = svc
        .clone()
        .oneshot(req.body(Full::default()).unwrap())
        .await
        .unwrap();
    let route = res.headers()["x-db-route"].to_str().unwrap().to_owned();
    let set = res
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    (res.status(), route, set)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_routes_reads_and_gives_writers_their_writes() {
    let (pair, primary, replica) = pair_with("CREATE TABLE t (id int primary key)").await;
    let router = DbRouter::builder(primary.clone())
        .replica("r1", replica.clone())
        .build()
        .unwrap();
    let svc = app(router.clone());
    eventually(
        "the table on the replica",
        Duration::from_secs(10),
        || async { sqlx::query("SELECT 1 FROM t").execute(&replica).await.ok() },
    )
    .await;

    // GET reads the replica; PUT writes the primary and sets the token.
    let (status, route, set) = call(&svc, Method::GET, 1, None).await;
    assert_eq!(
        (status, route.as_str(), set),
        (StatusCode::NOT_FOUND, "replica", None)
    );
    let (status, route, cookie) = call(&svc, Method::PUT, 1, None).await;
    assert_eq!((status, route.as_str()), (StatusCode::OK, "primary"));
    let cookie = cookie.expect("a write sets the token");
    assert!(cookie.starts_with("db_pos=1."), "{cookie}");
    eventually("row 1 on the replica", Duration::from_secs(10), || async {
        has_row(&replica, 1).await.then_some(())
    })
    .await;

    // Replay paused: the writer reads the primary and sees its write; another client
    // reads the replica, which has not replayed it.
    support::pause_replay(&pair.replica_url()).await;
    let (_, _, cookie) = call(&svc, Method::PUT, 5, None).await;
    let cookie = cookie.unwrap();
    router.check_health().await;
    let (status, route, _) = call(&svc, Method::GET, 5, Some(&cookie)).await;
    assert_eq!((status, route.as_str()), (StatusCode::OK, "primary"));
    let (status, route, _) = call(&svc, Method::GET, 5, None).await;
    assert_eq!((status, route.as_str()), (StatusCode::NOT_FOUND, "replica"));

    // Bad tokens: garbage and stale ones are ignored; a forged far-ahead position pins
    // its client to the primary, and only for the token's age.
    let now = now_ms();
    let cases = [
        ("garbage", "db_pos=garbage".to_owned(), "replica"),
        (
            "huge",
            format!("db_pos={}", "f".repeat(8 * 1024)),
            "replica",
        ),
        (
            "stale",
            format!("db_pos=1.ffffffffffffffff.{}", now - 60_000),
            "replica",
        ),
        (
            "forged far ahead",
            format!("db_pos=1.ffffffffffffffff.{now}"),
            "primary",
        ),
    ];
    for (name, cookie, want) in cases {
        let (status, route, _) = call(&svc, Method::GET, 1, Some(&cookie)).await;
        assert_eq!(route, want, "case {name}");
        assert_eq!(
            status,
            StatusCode::OK,
            "case {name}: row 1 is on both databases"
        );
    }

    // Resumed and caught up: the writer is back on the replica.
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&replica)
        .await
        .unwrap();
    eventually(
        "the writer back on the replica",
        Duration::from_secs(10),
        || async {
            router.check_health().await;
            let (status, route, _) = call(&svc, Method::GET, 5, Some(&cookie)).await;
            (status == StatusCode::OK && route == "replica").then_some(())
        },
    )
    .await;
}
