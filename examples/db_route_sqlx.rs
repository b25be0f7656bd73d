//! Read/write routing with sqlx: reads go to a PostgreSQL streaming replica, writes to the
//! primary, and a client that wrote reads its own write (read-your-writes): after a write
//! it carries a cookie with the primary's WAL position, and its reads go to a replica only
//! once that replica has replayed past it, else to the primary.
//!
//! Needs PostgreSQL: `DATABASE_URL` (the primary) and `DATABASE_REPLICA_URL` (a streaming
//! replica of it; without one, every read goes to the primary). Run:
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1/postgres \
//! DATABASE_REPLICA_URL=postgres://postgres@127.0.0.1:5433/postgres \
//!   cargo run --example db_route_sqlx
//! curl -i localhost:3008/notes/1                          # x-db-route: replica
//! curl -i -c jar -X POST -d 'hello' localhost:3008/notes  # x-db-route: primary, Set-Cookie: db_pos=...
//! curl -i -b jar localhost:3008/notes/2                   # the replica if it has replayed the write, else the primary
//! ```

use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::{Router, routing::get, routing::post};
use sqlx::PgPool;
use tower_scale::db_route::{Db, DbRouteLayer, DbRouter};

type Failure = (StatusCode, String);

fn failed(e: sqlx::Error) -> Failure {
    (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n"))
}

async fn get_note(db: Db<PgPool>, Path(id): Path<i64>) -> Result<String, Failure> {
    let query = || sqlx::query_scalar::<_, String>("SELECT body FROM notes WHERE id = $1").bind(id);
    let body = match query().fetch_optional(db.reader()).await {
        Ok(body) => body,
        // The replica failed between two health checks: once more on the primary.
        Err(e) => match db.reader_after_failure() {
            Some(primary) => query().fetch_optional(primary).await.map_err(failed)?,
            None => return Err(failed(e)),
        },
    };
    body.map(|b| format!("{b}\n"))
        .ok_or((StatusCode::NOT_FOUND, "no such note\n".into()))
}

async fn post_note(db: Db<PgPool>, body: String) -> Result<(StatusCode, String), Failure> {
    let id: i64 = sqlx::query_scalar("INSERT INTO notes (body) VALUES ($1) RETURNING id")
        .bind(body)
        .fetch_one(db.writer())
        .await
        .map_err(failed)?;
    Ok((StatusCode::CREATED, format!("{id}\n")))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let primary = PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS notes (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL);
         INSERT INTO notes (id, body) VALUES (1, 'the first note') ON CONFLICT DO NOTHING;
         SELECT setval('notes_id_seq', (SELECT max(id) FROM notes));",
    )
    .execute(&primary)
    .await?;

    let mut router = DbRouter::builder(primary).max_lag(Duration::from_secs(5));
    if let Ok(url) = std::env::var("DATABASE_REPLICA_URL") {
        router = router.replica("replica-1", PgPool::connect(&url).await?);
    }
    let router = router.build()?;
    // Replica positions and lag, each second: a replica that lags or fails is skipped.
    router.spawn_health_checks(Duration::from_secs(1));
    router.check_health().await;

    let app = Router::new()
        .route("/notes", post(post_note))
        .route("/notes/{id}", get(get_note))
        .layer(
            DbRouteLayer::builder(router)
                .secure(false) // plain HTTP on localhost; keep `Secure` in production
                .route_header(true) // `x-db-route: replica | primary`, to see it work
                .build()?,
        );

    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3008".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
