//! What the cache costs, beside its peers in the same run.
//!
//! - `cache/http-hit`: a `GET` answered from L1 through `ResponseCache`, beside
//!   axum-response-cache answering the same request from its cache, and `baseline` (the
//!   handler alone, which builds the same response). Both layers build a full response per
//!   hit; ours also adds `ETag`, `Age` and `Cache-Status`.
//! - `cache/get-or-load-hit`: `Cache::get_or_load` on a cached key, beside a plain moka
//!   `get_with_by_ref` (the floor: one moka lookup), in an async loop.
//! - `cache/l2-hit`: a read that misses L1 and is answered by Redis (one EVALSHA), beside
//!   one raw `GET` round trip on the same connection. Needs Redis (`TEST_REDIS_URL`, else
//!   127.0.0.1:6379); skipped without it.
//!
//! Added cost = median minus `baseline` where there is one.

mod common;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use criterion::Criterion;
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};
use tower_scale::cache::{Cache, CacheEngine, ResponseCacheLayer};

const PRODUCT: &str = r#"{"id":7,"name":"Product 7","price_cents":1234,"version":1}"#;

#[inline(never)]
fn request() -> Request<Body> {
    Request::get("/products/7").body(Body::empty()).unwrap()
}

fn handler() -> impl Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_req: Request<Body>| async {
        let mut r = Response::new(Body::from(PRODUCT));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        Ok::<_, Infallible>(r)
    })
}

fn run<S, B>(rt: &tokio::runtime::Runtime, svc: &S, iters: u64) -> Duration
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    common::run(rt, svc, |_| request(), iters)
}

/// The same request as a browser sends it, with `Host`, `Accept` and `User-Agent`: a hit
/// then also looks through real request headers (for `If-None-Match`,
/// `If-Modified-Since`, `Cache-Control`, `Authorization`).
mod browser {
    use super::*;

    #[inline(never)]
    pub(super) fn request() -> Request<Body> {
        Request::get("/products/7")
            .header("host", "shop.example")
            .header("accept", "application/json")
            .header("user-agent", "bench/1.0")
            .body(Body::empty())
            .unwrap()
    }

    pub(super) fn run<S, B>(rt: &tokio::runtime::Runtime, svc: &S, iters: u64) -> Duration
    where
        S: Service<Request<Body>, Response = Response<B>> + Clone,
        S::Error: std::fmt::Debug,
    {
        common::run(rt, svc, |_| request(), iters)
    }
}

/// `group`: `cache/http-hit` (a bare request) or `cache/http-hit-browser` (with a
/// browser's headers).
fn http_hit(c: &mut Criterion, rt: &tokio::runtime::Runtime, group: &str) {
    let browser = group.ends_with("browser");
    let engine = rt.block_on(async { CacheEngine::builder().build().unwrap() });
    let ours = ResponseCacheLayer::new(&engine).layer(handler());
    let theirs =
        axum_response_cache::CacheLayer::with_lifespan(Duration::from_secs(3600)).layer(handler());
    // Warm both caches and check they answer from them.
    rt.block_on(async {
        for _ in 0..2 {
            let r = ours.clone().oneshot(request()).await.unwrap();
            std::hint::black_box(r);
            let r = theirs.clone().oneshot(request()).await.unwrap();
            std::hint::black_box(r);
        }
        let r = ours.clone().oneshot(request()).await.unwrap();
        let status = r.headers()["cache-status"].to_str().unwrap();
        assert!(status.contains("hit"), "ours must hit: {status}");
    });
    let baseline = handler();
    let mut g = c.benchmark_group(group);
    macro_rules! timed {
        ($svc:expr) => {
            |b: &mut criterion::Bencher<'_>| {
                b.iter_custom(|n| {
                    if browser {
                        browser::run(rt, $svc, n)
                    } else {
                        run(rt, $svc, n)
                    }
                })
            }
        };
    }
    g.bench_function("baseline", timed!(&baseline));
    g.bench_function("tower-scale", timed!(&ours));
    g.bench_function("axum-response-cache", timed!(&theirs));
    g.finish();
}

fn get_or_load_hit(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let engine = CacheEngine::builder().build().unwrap();
    let ours: Cache<str, u64> = Cache::new(&engine, "bench");
    rt.block_on(async {
        ours.get_or_load("product:7", || async { Ok::<_, Infallible>(7) })
            .await
            .unwrap();
    });
    let moka: moka::sync::Cache<String, u64> = moka::sync::Cache::new(10_000);
    moka.insert("product:7".to_owned(), 7);
    let mut g = c.benchmark_group("cache/get-or-load-hit");
    g.bench_function("tower-scale", |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..n {
                    let v = ours
                        .get_or_load("product:7", || async { Ok::<_, Infallible>(0) })
                        .await
                        .unwrap();
                    std::hint::black_box(v);
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("moka-get_with", |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..n {
                    let v = moka.get_with_by_ref("product:7", || 0);
                    std::hint::black_box(v);
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

fn l2_hit(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let url = common::redis_url();
    let prefix = format!("bench-cache-{}", std::process::id());
    let backend = rt.block_on(async {
        tower_scale::redis::RedisBackend::builder(&url)
            .prefix(&prefix)
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap()
    });
    if rt.block_on(backend.ping()).is_err() {
        eprintln!("cache/l2-hit skipped: no Redis at {url}");
        return;
    }
    // The baseline: a plain GET over a multiplexed redis-rs connection of its own.
    let raw = rt.block_on(common::raw_redis(&url));
    const KEYS: u64 = 5_000;
    let engine = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            CacheEngine::builder()
                .redis(backend.clone())
                .build()
                .unwrap()
        })
    };
    let writer = engine(rt);
    let cache: Cache<u64, String> = Cache::new(&writer, "l2");
    rt.block_on(async {
        for k in 0..KEYS {
            cache.set(&k, &PRODUCT.to_owned()).await.unwrap();
        }
        let _: () = redis::cmd("SET")
            .arg("raw")
            .arg(PRODUCT)
            .query_async(&mut raw.clone())
            .await
            .unwrap();
    });
    let mut g = c.benchmark_group("cache/l2-hit");
    g.bench_function("tower-scale", |b| {
        b.iter_custom(|n| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < n {
                // A fresh instance: every read misses L1 and is answered by L2.
                let reader = engine(rt);
                let c: Cache<u64, String> = Cache::new(&reader, "l2");
                // Its subscriber connects outside the timed loop.
                rt.block_on(async {
                    while !reader.is_subscribed() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                });
                let batch = (n - done).min(KEYS);
                total += rt.block_on(async {
                    let start = Instant::now();
                    for k in 0..batch {
                        let v = c.get(&k).await;
                        assert!(v.is_some(), "key {k} must be in L2");
                        std::hint::black_box(v);
                    }
                    start.elapsed()
                });
                done += batch;
            }
            total
        })
    });
    g.bench_function("redis-get", |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..n {
                    let v: Vec<u8> = redis::cmd("GET")
                        .arg("raw")
                        .query_async(&mut raw.clone())
                        .await
                        .unwrap();
                    std::hint::black_box(v);
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    rt.block_on(async {
        cache.invalidate_prefix("").await.unwrap();
        let _: i64 = redis::cmd("DEL")
            .arg("raw")
            .query_async(&mut raw.clone())
            .await
            .unwrap();
    });
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    http_hit(c, &rt, "cache/http-hit");
    http_hit(c, &rt, "cache/http-hit-browser");
    get_or_load_hit(c, &rt);
    l2_hit(c, &rt);
}

common::bench_main!(benches);
