//! What the session layer costs per request, beside tower-sessions in the same run, both
//! with their in-memory store.
//!
//! - `session/untouched`: the request carries the cookie of an existing session and the
//!   handler never touches it.
//! - `session/read-one`: the handler reads one value from the existing session.
//!
//! Added cost = median minus `baseline` (a handler of the same shape alone, same requests:
//! its future holds the request, as the measured handlers' do).
//! `extension-floor` is what any layer pays to hand a handler per-request state through the
//! extensions (one shared flag, no cookie, no store), the handler taking it as the measured
//! handlers take their session: the floor under both layers.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::Bytes;
use criterion::Criterion;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};

type Resp = Response<Full<Bytes>>;

/// A request as hyper hands it over: its header values are slices of the connection's
/// read buffer (a reference count, not a copy), here one shared buffer holding the cookie.
#[inline(never)]
fn request(cookie: &Bytes) -> Request<Full<Bytes>> {
    let value = http::HeaderValue::from_maybe_shared(cookie.slice(..)).unwrap();
    Request::get("/me")
        .header("cookie", value)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// The measured loop over requests carrying `cookie`.
fn run<S>(rt: &tokio::runtime::Runtime, svc: &S, cookie: &str, iters: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let cookie = Bytes::copy_from_slice(cookie.as_bytes());
    common::run(rt, svc, |_| request(&cookie), iters)
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

    // Each layer serves three handlers over one store: a login that creates the session
    // (its cookie is what the measured requests carry), one that takes the session and
    // leaves it untouched, one that reads a value. Separate handlers, so that neither
    // measured handler's future carries the others' states.
    let ours_layer =
        tower_scale::session::SessionLayer::builder(tower_scale::session::MemoryStore::new())
            .secure(false)
            .build()
            .unwrap();
    let ours_session = |req: &Request<Full<Bytes>>| {
        req.extensions()
            .get::<tower_scale::session::Session>()
            .cloned()
            .unwrap()
    };
    let ours_login = ours_layer.layer(tower::service_fn(
        move |req: Request<Full<Bytes>>| async move {
            ours_session(&req).insert("n", &7i64).await.unwrap();
            Ok::<_, Infallible>(ok())
        },
    ));
    let ours_untouched = ours_layer.layer(tower::service_fn(
        move |req: Request<Full<Bytes>>| async move {
            std::hint::black_box(ours_session(&req));
            Ok::<_, Infallible>(ok())
        },
    ));
    let ours_read = ours_layer.layer(tower::service_fn(
        move |req: Request<Full<Bytes>>| async move {
            let s = ours_session(&req);
            std::hint::black_box(s.get::<i64>("n").await.unwrap());
            Ok::<_, Infallible>(ok())
        },
    ));

    // tower-sessions, the same handlers.
    let theirs_layer =
        tower_sessions::SessionManagerLayer::new(tower_sessions::MemoryStore::default())
            .with_secure(false);
    let theirs_session = |req: &Request<Full<Bytes>>| {
        req.extensions()
            .get::<tower_sessions::Session>()
            .cloned()
            .unwrap()
    };
    let theirs_login = theirs_layer.clone().layer(tower::service_fn(
        move |req: Request<Full<Bytes>>| async move {
            theirs_session(&req).insert("n", 7i64).await.unwrap();
            Ok::<_, Infallible>(ok())
        },
    ));
    let theirs_untouched = theirs_layer.clone().layer(tower::service_fn(
        move |req: Request<Full<Bytes>>| async move {
            std::hint::black_box(theirs_session(&req));
            Ok::<_, Infallible>(ok())
        },
    ));
    let theirs_read = theirs_layer.clone().layer(tower::service_fn(
        move |req: Request<Full<Bytes>>| async move {
            let s = theirs_session(&req);
            std::hint::black_box(s.get::<i64>("n").await.unwrap());
            Ok::<_, Infallible>(ok())
        },
    ));

    let cookies = Cookies {
        ours: first_cookie(&rt, &ours_login),
        theirs: first_cookie(&rt, &theirs_login),
    };
    compare(
        c,
        &rt,
        "session/untouched",
        &ours_untouched,
        &theirs_untouched,
        &cookies,
    );
    compare(
        c,
        &rt,
        "session/read-one",
        &ours_read,
        &theirs_read,
        &cookies,
    );

    // In an axum `Router`, each layer applied with `Router::layer` around a route whose
    // handler takes the session as an extractor and leaves it untouched. Routing has put
    // its own extensions in the request by then, so the map exists. The baseline is the
    // router with a pass-through layer (axum re-boxes a route for every layer).
    let ours_router = axum::Router::new()
        .route(
            "/me",
            axum::routing::get(|s: tower_scale::session::Session| async move {
                std::hint::black_box(s);
                "ok"
            }),
        )
        .layer(ours_layer.clone());
    let theirs_router = axum::Router::new()
        .route(
            "/me",
            axum::routing::get(|s: tower_sessions::Session| async move {
                std::hint::black_box(s);
                "ok"
            }),
        )
        .layer(theirs_layer.clone());
    let bare = axum::Router::new()
        .route("/me", axum::routing::get(|| async move { "ok" }))
        .layer(tower::util::MapResponseLayer::new(
            |r: axum::response::Response| r,
        ));
    // The floor in a router: the flag layer, the handler taking the flag as an extractor.
    let floor_router = axum::Router::new()
        .route(
            "/me",
            axum::routing::get(
                |axum::Extension(f): axum::Extension<Arc<AtomicBool>>| async move {
                    std::hint::black_box(f);
                    "ok"
                },
            ),
        )
        .layer(tower::layer::layer_fn(common::ExtensionFloor));
    let mut g = c.benchmark_group("session/router-untouched");
    g.bench_function("passthrough-layer", |b| {
        b.iter_custom(|n| run(&rt, &bare, &cookies.ours, n))
    });
    g.bench_function("extension-floor", |b| {
        b.iter_custom(|n| run(&rt, &floor_router, &cookies.ours, n))
    });
    g.bench_function("tower-scale", |b| {
        b.iter_custom(|n| run(&rt, &ours_router, &cookies.ours, n))
    });
    g.bench_function("tower-sessions", |b| {
        b.iter_custom(|n| run(&rt, &theirs_router, &cookies.theirs, n))
    });
    g.finish();
}

/// The session cookie each layer gave at login.
struct Cookies {
    ours: String,
    theirs: String,
}

/// One group: the handler alone, the extension floor, ours and tower-sessions.
fn compare<O, T>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    group: &str,
    ours: &O,
    theirs: &T,
    cookies: &Cookies,
) where
    O: Service<Request<Full<Bytes>>, Response = Resp> + Clone,
    O::Error: std::fmt::Debug,
    T: Service<Request<Full<Bytes>>, Response = Resp> + Clone,
    T::Error: std::fmt::Debug,
{
    // The handler alone, shaped like the measured ones: its future holds the request.
    let baseline = tower::service_fn(|req: Request<Full<Bytes>>| async move {
        std::hint::black_box(req.extensions().len());
        Ok::<_, Infallible>(ok())
    });
    let (oc, tc) = (&cookies.ours, &cookies.theirs);
    let mut g = c.benchmark_group(group);
    g.bench_function("baseline", |b| b.iter_custom(|n| run(rt, &baseline, oc, n)));
    // The floor's handler takes the flag as the measured handlers take their session (a
    // lookup and a clone, as an axum extractor does).
    let taker = tower::service_fn(|req: Request<Full<Bytes>>| async move {
        std::hint::black_box(req.extensions().get::<Arc<AtomicBool>>().cloned());
        Ok::<_, Infallible>(ok())
    });
    g.bench_function("extension-floor", |b| {
        b.iter_custom(|n| run(rt, &common::ExtensionFloor(taker), oc, n))
    });
    g.bench_function("tower-scale", |b| b.iter_custom(|n| run(rt, ours, oc, n)));
    g.bench_function("tower-sessions", |b| {
        b.iter_custom(|n| run(rt, theirs, tc, n))
    });
    g.finish();
}

common::bench_main!(benches);
