//! Sessions kept in Redis, so any instance serves any request: log in, count visits,
//! log out, through the `Session` extractor.
//!
//! Run: `cargo run --example sessions_redis` (needs Redis; `REDIS_URL`, default
//! redis://127.0.0.1:6379), then
//! `curl -c jar -d '{"user":"ada"}' -H 'content-type: application/json' localhost:3003/login`,
//! `curl -b jar localhost:3003/visits` (1, 2, 3, ...) and `curl -b jar -X POST localhost:3003/logout`.

use std::time::Duration;

use axum::{
    Json, Router,
    routing::{get, post},
};
use serde::Deserialize;
use tower_scale::redis::RedisBackend;
use tower_scale::session::{RedisSessionStore, Session, SessionError, SessionLayer};

#[derive(Deserialize)]
struct Login {
    user: String,
}

async fn login(session: Session, Json(body): Json<Login>) -> Result<String, SessionError> {
    // A new session id on every login: an id planted before it is worthless after.
    session.login(&body.user).await?;
    Ok(format!("hello {}\n", body.user))
}

async fn visits(session: Session) -> Result<String, SessionError> {
    // Atomic in Redis: parallel requests each see their own count.
    let n = session.increment("visits", 1).await?;
    let user = session.user().await?.unwrap_or_else(|| "anonymous".into());
    Ok(format!("{user}: visit {n}\n"))
}

async fn logout(session: Session) -> &'static str {
    session.destroy().await;
    "bye\n"
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis = RedisBackend::builder(url)
        .prefix("example-sessions")
        .timeout(Duration::from_millis(100))
        .build()?;
    let sessions = SessionLayer::builder(RedisSessionStore::new(redis))
        // Plain HTTP on localhost; keep `Secure` (the default) behind TLS.
        .secure(false)
        .build()?;

    let app = Router::new()
        .route("/login", post(login))
        .route("/visits", get(visits))
        .route("/logout", post(logout))
        .layer(sessions);

    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3003".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
