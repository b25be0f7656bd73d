//! `GET /products/{id}/price`: the pricing upstream through retries and a circuit breaker.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tower::ServiceExt;
use tower_scale::BoxError;
use tower_scale::circuit_breaker::{
    CircuitBreakerLayer, CircuitOpen, OpenAs503Layer, PerHost, Window,
};
use tower_scale::retry::{ReplayBody, RetryError, RetryLayer};

use super::products::ProductId;
use crate::error::{ApiError, Failure};
use crate::state::Shared;

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new().route("/products/{id}/price", get(price))
}

/// The pricing upstream's client: retries outside a circuit breaker, each attempt bounded.
type PriceClient = tower::util::BoxCloneSyncService<
    http::Request<Empty<Bytes>>,
    http::Response<axum::body::Body>,
    RetryError<BoxError>,
>;

/// The pricing upstream: its base URL and the client that calls it.
pub(crate) struct Pricing {
    base: String,
    client: PriceClient,
}

impl Pricing {
    /// Retry (3 attempts within 2.5 s, never into an open breaker) ─▶ 503 for refusals ─▶
    /// circuit breaker (opens at 50% failures of the last 20 calls, once 5 are in; probes
    /// with 2; stays open for `open`) ─▶ 1 s per attempt ─▶ hyper client. The timeout
    /// sits inside the breaker, so a hung upstream counts as failing.
    pub(crate) fn new(base: String, open: Duration) -> Result<Self, Failure> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        let client: Client<HttpConnector, ReplayBody<Empty<Bytes>>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let breaker = CircuitBreakerLayer::builder()
            .name("pricing")
            .key(PerHost)
            .window(Window::Count(20))
            .minimum_calls(5)
            .failure_rate(0.5)
            .open_duration(open)
            .half_open_probes(2)
            .build()
            .map_err(|e| Failure::Config(format!("pricing breaker: {e}")))?;
        let retry = RetryLayer::builder()
            .max_attempts(3)
            .backoff(Duration::from_millis(50), Duration::from_millis(400))
            .deadline(Duration::from_millis(2500))
            .build()
            .map_err(|e| Failure::Config(format!("pricing retry: {e}")))?;
        let svc = tower::ServiceBuilder::new()
            .layer(retry)
            .layer(OpenAs503Layer)
            .layer(breaker)
            .map_response(|r: http::Response<hyper::body::Incoming>| r.map(axum::body::Body::new))
            .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(1)))
            .service(client);
        Ok(Self {
            base,
            client: tower::util::BoxCloneSyncService::new(svc),
        })
    }
}

async fn price(
    State(s): State<Arc<Shared>>,
    ProductId(id): ProductId,
) -> Result<Response, ApiError> {
    let Some(p) = &s.pricing else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "pricing upstream not configured (set PRICING_URL)".into(),
        ));
    };
    let uri = format!("{}/price/{id}", p.base);
    let Ok(req) = http::Request::get(uri).body(Empty::<Bytes>::new()) else {
        // PRICING_URL was checked at start; only an id could break it, and ids are numbers.
        return Ok(ApiError::unavailable("pricing upstream URL is invalid", 1));
    };
    let resp = match p.client.clone().oneshot(req).await {
        Ok(resp) => resp,
        Err(e) => {
            return Ok(ApiError::unavailable(
                format!("pricing upstream failed: {e}"),
                1,
            ));
        }
    };
    if let Some(open) = resp.extensions().get::<CircuitOpen>() {
        // Refused at once by the open breaker: its Retry-After is the time until it probes.
        let secs = open.retry_after.as_micros().div_ceil(1_000_000).max(1) as u64;
        return Ok(ApiError::unavailable(
            "pricing upstream unavailable (circuit breaker open)",
            secs,
        ));
    }
    let status = resp.status();
    // The retry deadline and the attempt timeout end with the response head: the body gets
    // its own bound, in time and in size.
    let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024).collect();
    let body = match tokio::time::timeout(Duration::from_secs(1), body).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            return Ok(ApiError::unavailable(
                format!("pricing upstream body failed: {e}"),
                1,
            ));
        }
        Err(_) => return Ok(ApiError::unavailable("pricing upstream body timed out", 1)),
    };
    if !status.is_success() {
        return Ok(ApiError::unavailable(
            format!("pricing upstream answered {status}"),
            1,
        ));
    }
    let price = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("price_cents").and_then(|c| c.as_i64()));
    match price {
        Some(price) => Ok(Json(json!({ "id": id, "price_cents": price })).into_response()),
        None => Ok(ApiError::unavailable("pricing upstream sent no price", 1)),
    }
}
