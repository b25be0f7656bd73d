//! What the routing layer adds per request, with warm health state, over the bare service.
//!
//! - `db_route/read-no-token`: a `GET` with no token cookie (one replica pick).
//! - `db_route/read-with-token`: a `GET` carrying a token among other cookies (the cookie
//!   read and the position check).
//!
//! No peer: no Rust crate routes reads and writes as a tower layer. Added cost = median
//! minus `baseline` (the same requests to the bare service). `extension-floor` is what any
//! layer pays to hand a handler per-request state through the extensions (one shared flag,
//! no cookie, no routing): the part of the cost that is not routing.

mod common;

use std::convert::Infallible;

use bytes::Bytes;
use criterion::Criterion;
use http::{Request, Response};
use http_body_util::Full;
use tower::Layer;
use tower_scale::db_route::{
    ConsistencyToken, DbRouteLayer, DbRouter, Lsn, PositionSource, ReplicaPosition,
};

use tower_scale::BoxError;

/// A handle whose positions are fixed: the bench measures the layer, not a database.
struct Fixed;

impl PositionSource for Fixed {
    async fn write_position(&self) -> Result<Lsn, BoxError> {
        Ok(Lsn(100))
    }

    async fn replica_position(&self) -> Result<ReplicaPosition, BoxError> {
        Ok(ReplicaPosition {
            replayed: Lsn(100),
            lag: None,
        })
    }
}

#[inline(never)]
fn request(cookie: Option<&str>) -> Request<Full<Bytes>> {
    let mut r = Request::get("/products/7");
    if let Some(c) = cookie {
        r = r.header("cookie", c);
    }
    r.body(Full::new(Bytes::new())).unwrap()
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let router = DbRouter::builder(Fixed)
        .replica("r1", Fixed)
        .replica("r2", Fixed)
        .build()
        .unwrap();
    rt.block_on(router.check_health());
    let ok = || Response::new(Full::new(Bytes::from_static(b"ok")));
    let baseline =
        tower::service_fn(
            move |_req: Request<Full<Bytes>>| async move { Ok::<_, Infallible>(ok()) },
        );
    let ours = DbRouteLayer::builder(router)
        .build()
        .unwrap()
        .layer(baseline);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // The token's position (50) is one both replicas have replayed (100), as it is a few
    // milliseconds after a write: its age is then never checked, so issuing it once is
    // enough. A position not yet replayed would be judged by age and, after 30 s, measure
    // the no-token path instead.
    let cookie = move || {
        let token = ConsistencyToken {
            lsn: Some(Lsn(50)),
            issued_ms: now,
        };
        format!("theme=dark; db_pos={}; lang=en", token.encode())
    };
    for (group, with_token) in [
        ("db_route/read-no-token", false),
        ("db_route/read-with-token", true),
    ] {
        let cookie = with_token.then(cookie);
        let mut g = c.benchmark_group(group);
        g.bench_function("baseline", |b| {
            b.iter_custom(|n| common::run(&rt, &baseline, |_| request(cookie.as_deref()), n))
        });
        g.bench_function("extension-floor", |b| {
            b.iter_custom(|n| {
                common::run(
                    &rt,
                    &common::ExtensionFloor(baseline),
                    |_| request(cookie.as_deref()),
                    n,
                )
            })
        });
        g.bench_function("tower-scale", |b| {
            b.iter_custom(|n| common::run(&rt, &ours, |_| request(cookie.as_deref()), n))
        });
        g.finish();
    }
}

common::bench_main!(benches);
