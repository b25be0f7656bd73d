//! An HTTP response cache in front of a slow handler: the first `GET` runs it, the next
//! ones are answered from memory (`Cache-Status` says which) with an `ETag`, a client that
//! sends it back in `If-None-Match` gets `304 Not Modified`, and a `PUT` to the resource
//! drops its copy. With `REDIS_URL`, the entries and their invalidation are shared by
//! every instance.
//!
//! Run: `cargo run --example http_cache` (needs nothing), then `curl -i
//! localhost:3006/articles/1` twice (`fwd=miss; stored`, then `hit`), `curl -i -H
//! 'if-none-match: "<the etag>"' localhost:3006/articles/1` (304), and `curl -X PUT
//! localhost:3006/articles/1` (the next `GET` runs the handler again).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::{Router, routing::get};
use tower_scale::cache::{CacheEngine, ResponseCacheLayer};
use tower_scale::redis::RedisBackend;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut engine = CacheEngine::builder().ttl(Duration::from_secs(30));
    if let Ok(url) = std::env::var("REDIS_URL") {
        engine = engine.redis(
            RedisBackend::builder(url)
                .prefix("example-http-cache")
                .build()?,
        );
    }
    let engine = engine.build()?;
    // Counts the handler's runs, to see the cache at work.
    let runs = Arc::new(AtomicU64::new(0));

    let app = Router::new()
        .route(
            "/articles/{id}",
            get(
                |State(runs): State<Arc<AtomicU64>>, Path(id): Path<u32>| async move {
                    tokio::time::sleep(Duration::from_millis(100)).await; // the slow part
                    let n = runs.fetch_add(1, Ordering::Relaxed) + 1;
                    format!("article {id} (handler run {n})\n")
                },
            )
            .put(|| async { "saved\n" }),
        )
        .with_state(runs)
        // 200s are stored; a successful PUT, POST, PATCH or DELETE invalidates its path.
        .layer(ResponseCacheLayer::new(&engine));

    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3006".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
