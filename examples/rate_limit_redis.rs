//! A rate limit shared by every instance through Redis, with a stricter quota on one
//! route: 100 requests per 15 minutes per client, and 10 exports an hour on top.
//!
//! Run: `cargo run --example rate_limit_redis` (needs Redis; `REDIS_URL`, default
//! redis://127.0.0.1:6379), then `curl -i -X POST localhost:3001/exports` eleven times:
//! the eleventh answers 429 with `Retry-After` and `RateLimit` headers. Start a second
//! copy with `LISTEN=127.0.0.1:3002`: both count against the same quotas.

use std::net::SocketAddr;
use std::time::Duration;

use axum::{
    Router,
    routing::{get, post},
};
use tower_scale::rate_limit::{Quota, RateLimitLayer, RedisStore};
use tower_scale::redis::RedisBackend;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis = RedisBackend::builder(url)
        .prefix("example-rate-limit")
        .timeout(Duration::from_millis(50))
        .build()?;

    // Keyed by the peer's IP (behind a load balancer, use `key::ClientIp` with its
    // address as trusted); both quotas are checked in one Redis round trip.
    let limit = RateLimitLayer::builder()
        .store(RedisStore::new(redis))
        .quota("100/15m".parse::<Quota>()?.named("api")?)
        .quota_for("10/1h".parse::<Quota>()?.named("export")?, |req| {
            req.method == http::Method::POST && req.uri.path() == "/exports"
        })
        .build()?;

    let app = Router::new()
        .route("/products", get(|| async { "the catalogue\n" }))
        .route("/exports", post(|| async { "export started\n" }))
        .layer(limit);

    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3001".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // The peer address reaches the layer as `ConnectInfo`.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
