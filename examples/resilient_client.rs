//! An outgoing client with retries and a circuit breaker: `GET /quote` asks an upstream
//! that fails every other call; the retry hides those failures. `POST /upstream/down`
//! makes the upstream fail every call: after five calls the breaker opens and `/quote`
//! answers 503 at once, without calling the upstream, until it has been open a second and
//! a probe finds the upstream well again (`POST /upstream/up`).
//!
//! Run: `cargo run --example resilient_client` (needs nothing: the flaky upstream runs in
//! the same process), then `curl localhost:3007/quote` (200), `curl -X POST
//! localhost:3007/upstream/down`, `curl localhost:3007/quote` a few times (503, then
//! `circuit open`), `curl -X POST localhost:3007/upstream/up`, and a second later
//! `curl localhost:3007/quote` (200 again).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{
    Router,
    routing::{get, post},
};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;
use tower_scale::BoxError;
use tower_scale::circuit_breaker::{CircuitBreakerLayer, OpenAs503Layer, PerHost, Window};
use tower_scale::retry::{RetryError, RetryLayer};

type Upstream = tower::util::BoxCloneSyncService<
    http::Request<Empty<Bytes>>,
    http::Response<axum::body::Body>,
    RetryError<BoxError>,
>;

#[derive(Clone)]
struct App {
    client: Upstream,
    upstream: String,
    down: Arc<AtomicBool>,
}

/// Retries (3 attempts within 2 s, never into an open breaker) ─▶ an open breaker as 503
/// ─▶ the breaker (opens when three quarters of the last 10 calls failed, once 5 are in,
/// so the upstream's every-other-call failures do not open it; open for a second) ─▶ 500 ms per attempt ─▶ the HTTP client.
fn client() -> Result<Upstream, tower_scale::ConfigError> {
    let breaker = CircuitBreakerLayer::builder()
        .name("upstream")
        .key(PerHost)
        .window(Window::Count(10))
        .minimum_calls(5)
        .failure_rate(0.75)
        .open_duration(Duration::from_secs(1))
        .build()?;
    let retry = RetryLayer::builder()
        .max_attempts(3)
        .deadline(Duration::from_secs(2))
        .build()?;
    let http = Client::builder(TokioExecutor::new()).build_http();
    Ok(tower::util::BoxCloneSyncService::new(
        tower::ServiceBuilder::new()
            .layer(retry)
            .layer(OpenAs503Layer)
            .layer(breaker)
            .map_response(|r: http::Response<hyper::body::Incoming>| r.map(axum::body::Body::new))
            .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(
                500,
            )))
            .service(http),
    ))
}

async fn quote(State(app): State<App>) -> (StatusCode, String) {
    let req = http::Request::get(format!("{}/price", app.upstream))
        .body(Empty::new())
        .expect("a valid URL");
    match app.client.oneshot(req).await {
        Ok(res) => {
            let status = res.status();
            let body = res.into_body().collect().await.map(|b| b.to_bytes());
            let body = body.map_or_else(
                |e| e.to_string(),
                |b| String::from_utf8_lossy(&b).into_owned(),
            );
            (status, body)
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("upstream failed: {e}\n"),
        ),
    }
}

/// The flaky upstream: every other call fails, or every call while `down`.
fn upstream(down: Arc<AtomicBool>) -> Router {
    let calls = Arc::new(AtomicU64::new(0));
    Router::new().route(
        "/price",
        get(move || async move {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            if down.load(Ordering::Relaxed) || n.is_multiple_of(2) {
                (StatusCode::SERVICE_UNAVAILABLE, "busy\n".to_owned())
            } else {
                (
                    StatusCode::OK,
                    format!("price 42 (upstream call {})\n", n + 1),
                )
            }
        }),
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let down = Arc::new(AtomicBool::new(false));
    let up_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream_url = format!("http://{}", up_listener.local_addr()?);
    tokio::spawn(axum::serve(up_listener, upstream(Arc::clone(&down))).into_future());

    let app = App {
        client: client()?,
        upstream: upstream_url,
        down: Arc::clone(&down),
    };
    let router = Router::new()
        .route("/quote", get(quote))
        .route(
            "/upstream/down",
            post(|State(app): State<App>| async move {
                app.down.store(true, Ordering::Relaxed);
                "upstream failing every call\n"
            }),
        )
        .route(
            "/upstream/up",
            post(|State(app): State<App>| async move {
                app.down.store(false, Ordering::Relaxed);
                "upstream back to every other call\n"
            }),
        )
        .with_state(app);

    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3007".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router).await?;
    Ok(())
}
