//! The service `docs/getting-started.md` builds step by step: latency histograms, a rate
//! limit shared through Redis, and sessions in Redis, so that two instances behind a load
//! balancer behave as one.
//!
//! Run: `cargo run --example getting_started` (needs Redis; `REDIS_URL`, default
//! redis://127.0.0.1:6379; `LISTEN`, default 127.0.0.1:3000). The guide says what to try.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use serde::Deserialize;
use tower::ServiceBuilder;
use tower_scale::key::ClientIp;
use tower_scale::metrics::{DEFAULT_DURATION_BUCKETS, DURATION_METRIC, HttpMetricsLayer};
use tower_scale::rate_limit::{Quota, RateLimitLayer, RedisStore};
use tower_scale::redis::RedisBackend;
use tower_scale::session::{RedisSessionStore, Session, SessionError, SessionLayer};

/// This instance's address, to show which one answered.
type Instance = State<Arc<str>>;

async fn product(State(me): Instance, Path(id): Path<u32>) -> String {
    format!("product {id} (from {me})\n")
}

#[derive(Deserialize)]
struct Login {
    user: String,
}

async fn login(session: Session, Json(body): Json<Login>) -> Result<String, SessionError> {
    // A new session id at login: an id planted before it is worthless after.
    session.login(&body.user).await?;
    Ok(format!("hello {}\n", body.user))
}

async fn add_to_cart(State(me): Instance, session: Session) -> Result<String, SessionError> {
    // Atomic in Redis: parallel requests on any instance each get their own count.
    let items = session.increment("cart_items", 1).await?;
    let user = session.user().await?.unwrap_or_else(|| "anonymous".into());
    Ok(format!("{user}: {items} in the cart (from {me})\n"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Step 1: a Prometheus recorder, before the layers that record into it.
    let prometheus = PrometheusBuilder::new()
        .with_recommended_naming(true)
        .set_buckets_for_metric(
            Matcher::Full(DURATION_METRIC.into()),
            DEFAULT_DURATION_BUCKETS,
        )?
        .install_recorder()?;

    // Step 2: one Redis for every instance, and a rate limit kept in it: 100 requests a
    // minute per client, whichever instance serves them.
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis = RedisBackend::builder(url)
        .prefix("shop")
        .timeout(Duration::from_millis(100))
        .build()?;
    let rate_limit = RateLimitLayer::builder()
        // The client's address; behind a load balancer on this machine, the address it
        // appends to `X-Forwarded-For` (only a trusted proxy's entries are believed).
        .key(ClientIp::builder().trust_cidr("127.0.0.1/32").build()?)
        .store(RedisStore::new(redis.clone()))
        .quota("100/1m".parse::<Quota>()?)
        .build()?;

    // Step 3: sessions in the same Redis.
    let sessions = SessionLayer::builder(RedisSessionStore::new(redis))
        .secure(false) // plain HTTP on localhost; keep `Secure` (the default) behind TLS
        .build()?;

    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let me: Arc<str> = listener.local_addr()?.to_string().into();
    let app = Router::new()
        .route("/products/{id}", get(product))
        .route("/login", post(login))
        .route("/cart", post(add_to_cart))
        // One `layer` call for the three (axum boxes each route once per call); the first
        // is the outermost: metrics measure every request above, refused ones included.
        .layer(
            ServiceBuilder::new()
                .layer(HttpMetricsLayer::new())
                .layer(rate_limit)
                .layer(sessions),
        )
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        )
        .with_state(me);

    println!("listening on http://{}", listener.local_addr()?);
    // The peer address reaches the rate limit's key as `ConnectInfo`.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
