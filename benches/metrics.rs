//! What the latency-histogram layer costs per request, beside axum-prometheus doing the
//! same job in the same run, both recording into the same Prometheus recorder.
//!
//! Two tiers: a bare `service_fn` (the layer's own cost) and an axum `Router` with a
//! templated route (what a service pays). Each iteration builds a request, calls the
//! service and reads the response body to its end, which is when both layers record.
//! `scripts/bench-report.sh` turns the results into "added ns per request" and ratios.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use axum_prometheus::PrometheusMetricLayer;
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower::{Layer, Service, ServiceExt};
use tower_scale::metrics::{DEFAULT_DURATION_BUCKETS, HttpMetricsLayer};

fn recorder() -> PrometheusHandle {
    PrometheusBuilder::new()
        .with_recommended_naming(true)
        .set_buckets(DEFAULT_DURATION_BUCKETS)
        .unwrap()
        .install_recorder()
        .unwrap()
}

/// One request. A function of its own so `scripts/bench-instructions.sh` can count them.
#[inline(never)]
fn request() -> Request<Body> {
    Request::builder()
        .uri("/products/42")
        .body(Body::empty())
        .unwrap()
}

/// Runs `iters` requests through `svc` on a current-thread runtime and returns the time.
/// Histogram samples are drained into buckets after the timed loop, as the exporter's
/// upkeep would do, so the recorder's buffer does not grow across batches.
fn run<S, B>(rt: &tokio::runtime::Runtime, prom: &PrometheusHandle, svc: &S, iters: u64) -> Duration
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut svc = svc.clone();
    let elapsed = rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let req = request();
            let resp = svc.ready().await.unwrap().call(req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap();
            std::hint::black_box(body);
        }
        start.elapsed()
    });
    prom.run_upkeep();
    elapsed
}

fn bench(c: &mut Criterion) {
    let prom = recorder();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let noop = tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{\"id\":42}"))))
    });

    let mut g = c.benchmark_group("metrics/service");
    g.bench_function("baseline", |b| b.iter_custom(|n| run(&rt, &prom, &noop, n)));
    let ours = HttpMetricsLayer::new().layer(noop);
    g.bench_function("tower-scale", |b| {
        b.iter_custom(|n| run(&rt, &prom, &ours, n))
    });
    let theirs = PrometheusMetricLayer::new().layer(noop);
    g.bench_function("axum-prometheus", |b| {
        b.iter_custom(|n| run(&rt, &prom, &theirs, n))
    });
    g.finish();

    let router = || Router::new().route("/products/{id}", get(|| async { "{\"id\":42}" }));
    let mut g = c.benchmark_group("metrics/router");
    let bare = router();
    g.bench_function("baseline", |b| b.iter_custom(|n| run(&rt, &prom, &bare, n)));
    // axum re-boxes a route for every layer it is given; this pass-through layer measures
    // that cost, which every layer pays, so the deltas below are the layers' own.
    let passthrough = router().layer(tower::util::MapResponseLayer::new(|r: Response<Body>| r));
    g.bench_function("passthrough-layer", |b| {
        b.iter_custom(|n| run(&rt, &prom, &passthrough, n))
    });
    // The same, also wrapping the response body (as any layer that times a request until
    // its body ends must): axum boxes the wrapped body into `axum::body::Body` again.
    let passthrough_body =
        router().layer(tower::util::MapResponseLayer::new(|r: Response<Body>| {
            r.map(|b| b.map_frame(|f| f))
        }));
    g.bench_function("passthrough-body-layer", |b| {
        b.iter_custom(|n| run(&rt, &prom, &passthrough_body, n))
    });
    let ours = router().layer(HttpMetricsLayer::new());
    g.bench_function("tower-scale", |b| {
        b.iter_custom(|n| run(&rt, &prom, &ours, n))
    });
    let theirs = router().layer(PrometheusMetricLayer::new());
    g.bench_function("axum-prometheus", |b| {
        b.iter_custom(|n| run(&rt, &prom, &theirs, n))
    });
    g.finish();

    // For scale: one histogram record through the facade's macro (a registry lookup each
    // time, how per-request label sets are usually recorded) and through a held handle.
    let mut g = c.benchmark_group("metrics/raw");
    g.bench_function("histogram-macro-record", |b| {
        b.iter(|| {
            metrics::histogram!("bench.raw", "http.route" => "/products/{id}", "http.request.method" => "GET")
                .record(std::hint::black_box(0.001));
        })
    });
    let handle = metrics::histogram!("bench.raw", "http.route" => "/products/{id}", "http.request.method" => "GET");
    g.bench_function("histogram-handle-record", |b| {
        b.iter(|| handle.record(std::hint::black_box(0.001)))
    });
    // The layer reads the clock twice per request through `tokio::time::Instant`. Benches
    // are built with tokio's `test-util` (the tests pause time), which routes that read
    // through the runtime's mockable clock; production builds read the OS clock directly.
    g.bench_function("tokio-instant-now-in-runtime", |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..n {
                    std::hint::black_box(tokio::time::Instant::now());
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("std-instant-now", |b| {
        b.iter(|| std::hint::black_box(Instant::now()))
    });
    g.finish();
    prom.run_upkeep();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(60);
    targets = bench
}
criterion_main!(benches);
