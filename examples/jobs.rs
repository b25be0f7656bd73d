//! Slow work off the request path: `POST /reports` enqueues a job and answers `202` with
//! where to look; a worker pool runs it; `GET /reports/{id}` answers its state, then its
//! result. With `REDIS_URL` the queue is in Redis, so any instance's workers run any job
//! and a job whose worker dies runs again elsewhere after its lease.
//!
//! Run: `cargo run --example jobs` (needs nothing; Redis with `REDIS_URL`), then
//! `curl -i -X POST -d 'march' localhost:3005/reports` and follow its `Location`:
//! `queued` or `running` with a progress, then `succeeded` with the report.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::{
    Json, Router,
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use tower_scale::jobs::{JobId, MemoryJobStore, Queue, RedisJobStore, Worker};
use tower_scale::redis::RedisBackend;

#[derive(Serialize, Deserialize)]
struct Report {
    month: String,
}

async fn start(State(queue): State<Queue<Report>>, month: String) -> impl IntoResponse {
    match queue.enqueue(&Report { month }).await {
        Ok(id) => (
            StatusCode::ACCEPTED,
            [(header::LOCATION, format!("/reports/{id}"))],
            format!("{{\"job\":\"{id}\"}}\n"),
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

async fn status(State(queue): State<Queue<Report>>, Path(id): Path<String>) -> impl IntoResponse {
    let Some(id) = JobId::parse(&id) else {
        return (StatusCode::NOT_FOUND, "no such job\n").into_response();
    };
    match queue.status(&id).await {
        Ok(Some(s)) => Json(serde_json::json!({
            "state": s.state.as_str(),
            "progress": s.progress,
            "result": s.result_as::<String>().ok(),
        }))
        .into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such job\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let queue = Queue::builder("reports").lease(Duration::from_secs(10));
    let queue: Queue<Report> = match std::env::var("REDIS_URL") {
        Ok(url) => queue.store(RedisJobStore::new(
            RedisBackend::builder(url)
                .prefix("example-jobs")
                .timeout(Duration::from_millis(500))
                .build()?,
        )),
        Err(_) => queue.store(MemoryJobStore::new()),
    }
    .build()?;

    let workers = Worker::builder(queue.clone())
        .concurrency(2)
        .spawn(|job| async move {
            // The slow part, reporting progress as it goes.
            for step in 1..=4u8 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                job.progress(step * 25).await;
            }
            Ok::<_, std::io::Error>(format!("the report for {}", job.payload().month))
        });

    let app = Router::new()
        .route("/reports", post(start))
        .route("/reports/{id}", get(status))
        .with_state(queue);
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3005".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // Running jobs finish (up to 10 s); the rest go back to the queue.
    workers.shutdown(Duration::from_secs(10)).await;
    Ok(())
}
