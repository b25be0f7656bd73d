//! `GET /metrics`, `/healthz`, `/readyz`, and the answers for unknown routes and methods.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::error::ApiError;
use crate::state::Shared;

/// How long a dependency may take to answer a readiness check.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `/healthz`, `/readyz`, and `/metrics` unless it has a listener of its own.
pub(crate) fn router(metrics_public: bool) -> Router<Arc<Shared>> {
    let r = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if metrics_public {
        r.merge(metrics_router())
    } else {
        r
    }
}

/// `/metrics` alone, for `METRICS_LISTEN`.
pub(crate) fn metrics_router() -> Router<Arc<Shared>> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.prometheus.render(),
    )
        .into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when the database's primary and Redis (when configured) answer; else 503 naming
/// each failing one.
async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    if s.draining.load(std::sync::atomic::Ordering::Acquire) {
        return ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: this instance is shutting down".into(),
        )
        .into_response();
    }
    let mut failing = Vec::new();
    match tokio::time::timeout(READY_TIMEOUT, s.db.writer().ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failing.push(format!("database: {e}")),
        Err(_) => failing.push(format!("database: no answer within {READY_TIMEOUT:?}")),
    }
    if let Some(r) = &s.redis
        && let Err(e) = r.ping().await
    {
        failing.push(format!("redis ({}): {e}", r.address()));
    }
    if failing.is_empty() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, failing.join("; ")).into_response()
    }
}

pub(crate) async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such route".into())
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route".into(),
    )
}
