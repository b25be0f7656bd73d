//! `POST /exports`: accepted and numbered. The queue and its workers come with the jobs
//! module; until then nothing runs the export.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use crate::state::Shared;

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new().route("/exports", post(create))
}

static JOBS: AtomicU64 = AtomicU64::new(0);

async fn create(State(s): State<Arc<Shared>>) -> Response {
    let n = JOBS.fetch_add(1, Ordering::Relaxed) + 1;
    let job = format!("{}-{n}", s.instance.to_str().unwrap_or("export"));
    (StatusCode::ACCEPTED, Json(json!({ "job": job }))).into_response()
}
