//! What the session layer costs per request, beside tower-sessions in the same run, both
//! with their in-memory store.
//!
//! - `session/untouched`: the request carries the cookie of an existing session and the
//!   handler never touches it.
//! - `session/read-one`: the handler reads one value from the existing session.
//!
//! Added cost = median minus `baseline` (the handler alone, same requests).
//! `extension-floor` is what any layer pays to hand a handler per-request state through the
//! extensions (one shared flag, no cookie, no store): the floor under both layers.

mod common;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};

type Resp = Response<Full<Bytes>>;

#[inline(never)]
fn request(cookie: &str) -> Request<Full<Bytes>> {
    Request::get("/me")
        .header("cookie", cookie)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[inline(never)]
fn run<S>(rt: &tokio::runtime::Runtime, svc: &S, cookie: &str, iters: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Resp> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut svc = svc.clone();
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let resp = svc
                .ready()
                .await
                .unwrap()
                .call(request(cookie))
                .await
                .unwrap();
            std::hint::black_box(resp);
        }
        start.elapsed()
    })
}

fn ok() -> Resp {
    Response::new(Full::new(Bytes::from_static(b"ok")))
}

/// The cookie a first request through `svc` was given.
fn first_cookie<S>(rt: &tokio::runtime::Runtime, svc: &S) -> String
where
    S: Service<Request<Full<Bytes>>, Response = Resp> + Clone,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let req = Request::post("/login")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = svc.clone().oneshot(req).await.unwrap();
        let set = resp.headers()["set-cookie"].to_str().unwrap();
        set.split(';').next().unwrap().to_owned()
    })
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Ours: POST creates the session, GET /me reads one value or nothing.
    let ours_layer =
        tower_scale::session::SessionLayer::builder(tower_scale::session::MemoryStore::new())
            .secure(false)
            .build()
            .unwrap();
    let ours = |read: bool| {
        ours_layer.layer(tower::service_fn(
            move |req: Request<Full<Bytes>>| async move {
                let s = req
                    .extensions()
                    .get::<tower_scale::session::Session>()
                    .cloned()
                    .unwrap();
                if req.method() == http::Method::POST {
                    s.insert("n", &7i64).await.unwrap();
                } else if read {
                    std::hint::black_box(s.get::<i64>("n").await.unwrap());
                }
                Ok::<_, Infallible>(ok())
            },
        ))
    };
    // tower-sessions, the same handlers.
    let theirs_layer =
        tower_sessions::SessionManagerLayer::new(tower_sessions::MemoryStore::default())
            .with_secure(false);
    let theirs = |read: bool| {
        theirs_layer.clone().layer(tower::service_fn(
            move |req: Request<Full<Bytes>>| async move {
                let s = req
                    .extensions()
                    .get::<tower_sessions::Session>()
                    .cloned()
                    .unwrap();
                if req.method() == http::Method::POST {
                    s.insert("n", 7i64).await.unwrap();
                } else if read {
                    std::hint::black_box(s.get::<i64>("n").await.unwrap());
                }
                Ok::<_, Infallible>(ok())
            },
        ))
    };
    let baseline =
        tower::service_fn(|_req: Request<Full<Bytes>>| async { Ok::<_, Infallible>(ok()) });

    for (group, read) in [("session/untouched", false), ("session/read-one", true)] {
        let mut g = c.benchmark_group(group);
        let o = ours(read);
        let t = theirs(read);
        let (oc, tc) = (first_cookie(&rt, &o), first_cookie(&rt, &t));
        g.bench_function("baseline", |b| {
            b.iter_custom(|n| run(&rt, &baseline, &oc, n))
        });
        g.bench_function("extension-floor", |b| {
            b.iter_custom(|n| run(&rt, &common::ExtensionFloor(baseline), &oc, n))
        });
        g.bench_function("tower-scale", |b| b.iter_custom(|n| run(&rt, &o, &oc, n)));
        g.bench_function("tower-sessions", |b| {
            b.iter_custom(|n| run(&rt, &t, &tc, n))
        });
        g.finish();
    }
}

criterion_group! {
    name = group;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = benches
}

fn main() {
    group();
    Criterion::default().configure_from_args().final_summary();
}
