//! A flaky pricing upstream for the reference server's `GET /products/{id}/price`: the
//! `pricing_upstream` example and the `pricing-upstream` binary.
//!
//! `GET /price/{id}` answers `{"id":ID,"price_cents":N}`, failing with 503 for a fraction
//! `FAIL_RATE` (0..1) of requests and answering after `DELAY_MS`. `PUT /admin/faults` with
//! `{"fail_rate":F,"delay_ms":D}` changes both while it runs. `LISTEN` (default
//! 127.0.0.1:8081) is where it listens; it prints the address.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

#[derive(Default)]
struct Faults {
    // f64 bits, so both knobs change atomically enough for a test double.
    fail_rate: AtomicU64,
    delay_ms: AtomicU64,
    rng: AtomicU64,
    calls: AtomicU64,
}

impl Faults {
    fn fail_rate(&self) -> f64 {
        f64::from_bits(self.fail_rate.load(Ordering::Relaxed))
    }

    /// A uniform number in [0, 1) from a shared xorshift state.
    fn roll(&self) -> f64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        loop {
            let mut n = x;
            n ^= n << 13;
            n ^= n >> 7;
            n ^= n << 17;
            match self
                .rng
                .compare_exchange_weak(x, n, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return (n >> 11) as f64 / (1u64 << 53) as f64,
                Err(cur) => x = cur,
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultInput {
    fail_rate: f64,
    delay_ms: u64,
}

fn check_rate(r: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(format!("fail_rate {r} must be within 0..=1"))
    }
}

async fn price(State(f): State<Arc<Faults>>, Path(raw): Path<String>) -> Response {
    f.calls.fetch_add(1, Ordering::Relaxed);
    let Ok(id) = raw.parse::<i64>() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "id must be an integer" })),
        )
            .into_response();
    };
    let delay = f.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if f.roll() < f.fail_rate() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "injected fault" })),
        )
            .into_response();
    }
    Json(json!({ "id": id, "price_cents": 100 + (id.rem_euclid(9900) * 37) % 9900 }))
        .into_response()
}

async fn set_faults(
    State(f): State<Arc<Faults>>,
    body: Result<Json<FaultInput>, JsonRejection>,
) -> Response {
    let input = match body {
        Ok(Json(i)) => i,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": e.body_text() })),
            )
                .into_response();
        }
    };
    match check_rate(input.fail_rate) {
        Ok(r) => {
            f.fail_rate.store(r.to_bits(), Ordering::Relaxed);
            f.delay_ms.store(input.delay_ms, Ordering::Relaxed);
            Json(json!({ "fail_rate": r, "delay_ms": input.delay_ms })).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response(),
    }
}

async fn stats(State(f): State<Arc<Faults>>) -> Json<serde_json::Value> {
    Json(json!({
        "calls": f.calls.load(Ordering::Relaxed),
        "fail_rate": f.fail_rate(),
        "delay_ms": f.delay_ms.load(Ordering::Relaxed),
    }))
}

/// Serves the upstream until SIGINT.
#[tokio::main]
pub async fn main() -> ExitCode {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let listen = env("LISTEN").unwrap_or_else(|| "127.0.0.1:8081".into());
    let fail_rate = match env("FAIL_RATE").map(|v| {
        v.trim()
            .parse::<f64>()
            .map_err(|e| e.to_string())
            .and_then(check_rate)
    }) {
        None => 0.0,
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            eprintln!("pricing_upstream: bad configuration: FAIL_RATE: {e}");
            return ExitCode::from(2);
        }
    };
    let delay_ms = match env("DELAY_MS").map(|v| v.trim().parse::<u64>()) {
        None => 0,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            eprintln!("pricing_upstream: bad configuration: DELAY_MS: {e}");
            return ExitCode::from(2);
        }
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let faults = Arc::new(Faults {
        fail_rate: AtomicU64::new(fail_rate.to_bits()),
        delay_ms: AtomicU64::new(delay_ms),
        rng: AtomicU64::new(seed),
        calls: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/price/{id}", get(price))
        .route("/admin/faults", put(set_faults).get(stats))
        .with_state(faults);
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pricing_upstream: cannot listen on {listen} (LISTEN): {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(a) => println!(
            "pricing_upstream listening on http://{a} (fail_rate {fail_rate}, delay {delay_ms} ms)"
        ),
        Err(e) => eprintln!("pricing_upstream: {e}"),
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        eprintln!("pricing_upstream: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
