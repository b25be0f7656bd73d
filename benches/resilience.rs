//! What retry and circuit breaker cost per call, beside tower-resilience in the same run.
//!
//! - `resilience/breaker`: a closed breaker (one, `Single`) over a no-op service (every
//!   call succeeds),
//!   ours versus tower-resilience's `CircuitBreakerLayer` (count window of 100, 50%).
//! - `resilience/retry`: the no-retry path (the first attempt succeeds), ours versus
//!   tower-resilience's `RetryLayer` (3 attempts, exponential backoff).
//! - `resilience/breaker-per-host`: our per-host breakers with requests rotating over 10,000
//!   hosts (a breaker lookup per call); tower-resilience has no keyed breaker.
//!
//! Added cost = median minus `baseline` (the no-op service alone, same requests).

mod common;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};
use tower_scale::circuit_breaker::{CircuitBreakerLayer, PerHost, Single, Window};
use tower_scale::retry::{ReplayBody, RetryLayer};

type Resp = Response<Full<Bytes>>;

fn ok() -> Resp {
    Response::new(Full::new(Bytes::from_static(b"{\"id\":42}")))
}

fn noop() -> impl Service<
    Request<Full<Bytes>>,
    Response = Resp,
    Error = Infallible,
    Future = impl Future<Output = Result<Resp, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_req: Request<Full<Bytes>>| async { Ok::<_, Infallible>(ok()) })
}

fn noop_replay() -> impl Service<
    Request<ReplayBody<Full<Bytes>>>,
    Response = Resp,
    Error = Infallible,
    Future = impl Future<Output = Result<Resp, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_req: Request<ReplayBody<Full<Bytes>>>| async { Ok::<_, Infallible>(ok()) })
}

/// The request of call `i`: one of `hosts` upstream hosts (1: always the same).
#[inline(never)]
fn request(i: u64, hosts: &[String]) -> Request<Full<Bytes>> {
    Request::get(&hosts[(i % hosts.len() as u64) as usize])
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn run<S>(rt: &tokio::runtime::Runtime, svc: &S, hosts: &[String], iters: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Resp> + Clone,
    S::Error: std::fmt::Debug,
{
    common::run(rt, svc, |i| request(i, hosts), iters)
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let one = vec!["http://pricing.internal/price/42".to_owned()];

    let mut g = c.benchmark_group("resilience/breaker");
    g.bench_function("baseline", |b| {
        b.iter_custom(|n| run(&rt, &noop(), &one, n))
    });
    let ours = CircuitBreakerLayer::builder()
        .key(Single)
        .window(Window::Count(100))
        .failure_rate(0.5)
        .build()
        .unwrap()
        .layer(noop());
    g.bench_function("tower-scale", |b| {
        b.iter_custom(|n| run(&rt, &ours, &one, n))
    });
    let theirs = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_type(tower_resilience::circuitbreaker::SlidingWindowType::CountBased)
        .sliding_window_size(100)
        .build()
        .unwrap()
        .layer(noop());
    g.bench_function("tower-resilience", |b| {
        b.iter_custom(|n| run(&rt, &theirs, &one, n))
    });
    g.finish();

    let mut g = c.benchmark_group("resilience/retry");
    g.bench_function("baseline", |b| {
        b.iter_custom(|n| run(&rt, &noop(), &one, n))
    });
    let ours = RetryLayer::builder()
        .max_attempts(3)
        .build()
        .unwrap()
        .layer(noop_replay());
    g.bench_function("tower-scale", |b| {
        b.iter_custom(|n| run(&rt, &ours, &one, n))
    });
    let theirs =
        tower_resilience::retry::RetryLayer::<Request<Full<Bytes>>, Resp, Infallible>::builder()
            .max_attempts(3)
            .exponential_backoff(Duration::from_millis(25))
            .build()
            .layer(noop());
    g.bench_function("tower-resilience", |b| {
        b.iter_custom(|n| run(&rt, &theirs, &one, n))
    });
    // The floor of any retry layer: copying the request for a possible second attempt
    // (method, URI, headers, body) and dropping the copy.
    let clone_only = tower::service_fn(|req: Request<Full<Bytes>>| {
        std::hint::black_box(req.clone());
        async { Ok::<_, Infallible>(ok()) }
    });
    g.bench_function("clone-request", |b| {
        b.iter_custom(|n| run(&rt, &clone_only, &one, n))
    });
    g.finish();

    let hosts: Vec<String> = (0..10_000)
        .map(|i| format!("http://h{i}.internal/price/42"))
        .collect();
    let mut g = c.benchmark_group("resilience/breaker-per-host");
    g.bench_function("baseline", |b| {
        b.iter_custom(|n| run(&rt, &noop(), &hosts, n))
    });
    let ours = CircuitBreakerLayer::builder()
        .key(PerHost)
        .max_keys(20_000)
        .build()
        .unwrap()
        .layer(noop());
    g.bench_function("tower-scale", |b| {
        b.iter_custom(|n| run(&rt, &ours, &hosts, n))
    });
    g.finish();
}

/// The same comparison with a request that costs nothing to copy (a number), so what is
/// left is each layer's own machinery: ours is `RetryAnyLayer`.
mod plain {
    use super::*;

    #[inline(never)]
    pub fn request(i: u64) -> u64 {
        std::hint::black_box(i)
    }

    #[inline(never)]
    pub fn run<S>(rt: &tokio::runtime::Runtime, svc: &S, iters: u64) -> Duration
    where
        S: Service<u64, Response = u64> + Clone,
        S::Error: std::fmt::Debug,
    {
        let mut svc = svc.clone();
        rt.block_on(async {
            let start = Instant::now();
            for i in 0..iters {
                let r = svc.ready().await.unwrap().call(request(i)).await.unwrap();
                std::hint::black_box(r);
            }
            start.elapsed()
        })
    }

    pub fn benches(c: &mut Criterion) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let noop = tower::service_fn(|n: u64| async move { Ok::<u64, Infallible>(n) });
        let mut g = c.benchmark_group("resilience/retry-plain");
        g.bench_function("baseline", |b| b.iter_custom(|n| run(&rt, &noop, n)));
        let ours = RetryLayer::builder()
            .max_attempts(3)
            .classifier(tower_scale::classify::ErrorIsFailure)
            .build_any()
            .unwrap()
            .layer(noop);
        g.bench_function("tower-scale", |b| b.iter_custom(|n| run(&rt, &ours, n)));
        let theirs = tower_resilience::retry::RetryLayer::<u64, u64, Infallible>::builder()
            .max_attempts(3)
            .exponential_backoff(Duration::from_millis(25))
            .build()
            .layer(noop);
        g.bench_function("tower-resilience", |b| {
            b.iter_custom(|n| run(&rt, &theirs, n))
        });
        g.finish();
    }
}

common::bench_main!(benches, plain::benches);
