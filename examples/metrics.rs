//! Latency histograms per route, with a Prometheus endpoint.
//!
//! Run: `cargo run --example metrics` (needs nothing else), then
//! `curl localhost:3000/products/7` a few times and `curl localhost:3000/metrics`:
//! `http_server_request_duration_seconds_bucket{...,http_route="/products/{id}",...}`
//! counts them by route template, never by raw path. `LISTEN` sets the address.

use axum::{Router, extract::Path, routing::get};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tower_scale::metrics::{DEFAULT_DURATION_BUCKETS, DURATION_METRIC, HttpMetricsLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The recorder first: layers built after it describe their metrics to it.
    let prometheus = PrometheusBuilder::new()
        .with_recommended_naming(true)
        .set_buckets_for_metric(
            Matcher::Full(DURATION_METRIC.into()),
            DEFAULT_DURATION_BUCKETS,
        )?
        .install_recorder()?;

    let app = Router::new()
        .route(
            "/products/{id}",
            get(|Path(id): Path<u32>| async move { format!("product {id}\n") }),
        )
        // Measures the routes above it (matched first, so labelled by template).
        .layer(HttpMetricsLayer::new())
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        );

    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
