//! The server `scripts/http-bench.sh` measures: one handler behind a chosen stack of
//! layers, on a real socket. `STACK` picks the stack:
//!
//! - `bare`: axum alone; `GET /` answers "Hello, World!".
//! - one of ours alone: `metrics` (histograms into a Prometheus recorder), `rate-limit`
//!   (in process, keyed by the peer's IP, a quota nobody reaches), `session` (in memory;
//!   the handler reads one value), and `timeout` (tower-http's, which both full stacks
//!   share);
//! - the peers alone: `peer-metrics` (axum-prometheus), `peer-rate-limit`
//!   (tower_governor), `peer-session` (tower-sessions);
//! - `ours3` (metrics, rate limit, session) and `ours` (the same and the timeout);
//!   `peers3` and `peers`, the peers' equivalents;
//! - `map`: `GET /products/{id}` answering a product's JSON from a map, what the
//!   reference server's cached read is compared with.
//!
//! `POST /login` (not measured) starts a session holding `n = 7` and answers its cookie;
//! the load generator sends that cookie on every request, whatever the stack, so every
//! stack parses the same request. Prints `listening on http://ADDR` when ready; SIGTERM
//! stops it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tower_scale::metrics::{DEFAULT_DURATION_BUCKETS, DURATION_METRIC, HttpMetricsLayer};
use tower_scale::rate_limit::{Quota, RateLimitLayer};
use tower_scale::session::{MemoryStore, Session, SessionLayer};

const HELLO: &str = "Hello, World!";

async fn bare() -> &'static str {
    HELLO
}

async fn ours_read(session: Session) -> &'static str {
    std::hint::black_box(session.get::<i64>("n").await.ok().flatten());
    HELLO
}

async fn ours_login(session: Session) -> &'static str {
    session.insert("n", &7i64).await.unwrap();
    "in"
}

async fn peer_read(session: tower_sessions::Session) -> &'static str {
    std::hint::black_box(session.get::<i64>("n").await.ok().flatten());
    HELLO
}

async fn peer_login(session: tower_sessions::Session) -> &'static str {
    session.insert("n", 7i64).await.unwrap();
    "in"
}

async fn product(
    State(map): State<Arc<HashMap<i64, String>>>,
    Path(id): Path<i64>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match map.get(&id) {
        Some(json) => (
            [(http::header::CONTENT_TYPE, "application/json")],
            json.clone(),
        )
            .into_response(),
        None => http::StatusCode::NOT_FOUND.into_response(),
    }
}

fn ours_rate_limit() -> RateLimitLayer {
    RateLimitLayer::builder()
        .quota(
            Quota::new(1_000_000, Duration::from_secs(1))
                .unwrap()
                .burst(u32::MAX)
                .unwrap(),
        )
        .build()
        .unwrap()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stack = std::env::var("STACK").unwrap_or_else(|_| "bare".into());
    let words: Vec<&str> = match stack.as_str() {
        "ours3" => vec!["session", "rate-limit", "metrics"],
        "ours3-one-layer" => vec!["ours3-one-layer"],
        "ours" => vec!["session", "rate-limit", "metrics", "timeout"],
        "peers3" => vec!["peer-session", "peer-rate-limit", "peer-metrics"],
        "peers" => vec!["peer-session", "peer-rate-limit", "peer-metrics", "timeout"],
        one => vec![one],
    };
    let has = |w: &str| words.contains(&w);

    // Histograms with buckets, as each crate's docs set them up (without buckets the
    // exporter keeps summaries, whose upkeep costs more per sample).
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(DURATION_METRIC.into()),
            DEFAULT_DURATION_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(axum_prometheus::AXUM_HTTP_REQUESTS_DURATION_SECONDS.into()),
            axum_prometheus::utils::SECONDS_DURATION_BUCKETS,
        )?
        .install_recorder()?;
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });

    let mut app: Router = if stack == "map" {
        let map: HashMap<i64, String> = (1..=1000)
            .map(|i| {
                let json = serde_json::json!({
                    "id": i, "name": format!("Product {i}"), "price_cents": 100 + (i * 37) % 9900, "version": 1
                });
                (i, json.to_string())
            })
            .collect();
        Router::new()
            .route("/products/{id}", get(product))
            .with_state(Arc::new(map))
    } else if has("session") || has("ours3-one-layer") {
        Router::new()
            .route("/", get(ours_read))
            .route("/login", post(ours_login))
    } else if has("peer-session") {
        Router::new()
            .route("/", get(peer_read))
            .route("/login", post(peer_login))
    } else {
        Router::new()
            .route("/", get(bare))
            .route("/login", post(bare))
    };
    // Innermost first, as the words are listed.
    for w in &words {
        app = match *w {
            "bare" | "map" => app,
            // The same three in one `Router::layer` call (one `ServiceBuilder`): axum boxes
            // each route's service and body once per `layer` call, not once per layer.
            "ours3-one-layer" => app.layer(
                tower::ServiceBuilder::new()
                    .layer(HttpMetricsLayer::new())
                    .layer(ours_rate_limit())
                    .layer(
                        SessionLayer::builder(MemoryStore::new())
                            .secure(false)
                            .build()?,
                    ),
            ),
            "session" => app.layer(
                SessionLayer::builder(MemoryStore::new())
                    .secure(false)
                    .build()?,
            ),
            "rate-limit" => app.layer(ours_rate_limit()),
            "metrics" => app.layer(HttpMetricsLayer::new()),
            "timeout" => app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
                http::StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(10),
            )),
            "peer-session" => app.layer(
                tower_sessions::SessionManagerLayer::new(tower_sessions::MemoryStore::default())
                    .with_secure(false),
            ),
            "peer-rate-limit" => {
                let conf = tower_governor::governor::GovernorConfigBuilder::default()
                    .per_nanosecond(1)
                    .burst_size(u32::MAX)
                    .key_extractor(tower_governor::key_extractor::PeerIpKeyExtractor)
                    .finish()
                    .unwrap();
                app.layer(tower_governor::GovernorLayer::new(Arc::new(conf)))
            }
            "peer-metrics" => app.layer(axum_prometheus::PrometheusMetricLayer::new()),
            other => return Err(format!("unknown STACK word {other:?}").into()),
        };
    }

    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3100".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{} ({stack})", listener.local_addr()?);
    // SIGTERM ends the process at once, through `exit` (valgrind writes its counts then:
    // scripts/http-bench.sh).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        term.recv().await;
        std::process::exit(0);
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
