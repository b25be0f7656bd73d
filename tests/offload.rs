//! The offload layer (async request-reply) over an axum router, with the in-process store
//! and with real Redis shared by two "instances".

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_scale::jobs::offload::{OffloadLayer, OffloadedRequest};
use tower_scale::jobs::{Backoff, MemoryJobStore, Queue, RedisJobStore, Worker, WorkerHandle};

use support::{eventually, redis_backend, redis_url, unique};

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Resp {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

async fn send(
    app: &Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let res = app
        .clone()
        .oneshot(b.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// The routes: a slow report that echoes its body, a fast route, and one that fails.
fn routes(runs: Arc<AtomicU32>) -> Router {
    Router::new()
        .route(
            "/reports",
            post(move |headers: HeaderMap, body: String| {
                let runs = Arc::clone(&runs);
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let lang = headers
                        .get("accept-language")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let secret = headers.get("authorization").is_some();
                    (
                        StatusCode::CREATED,
                        [("x-report", "1"), ("set-cookie", "private=1")],
                        format!("report of {body:?} lang={lang:?} auth={secret}"),
                    )
                }
            }),
        )
        .route("/fast", get(|| async { "fast" }))
}

fn queue_on(store: impl tower_scale::jobs::store::JobStore, name: &str) -> Queue<OffloadedRequest> {
    Queue::builder(name)
        .store(store)
        .max_attempts(2)
        .build()
        .unwrap()
}

fn layer(q: Queue<OffloadedRequest>) -> OffloadLayer {
    OffloadLayer::builder(q)
        .when(|r| r.uri.path() == "/reports")
        .max_body(1024)
        .build()
        .unwrap()
}

fn workers(offload: &OffloadLayer, inner: Router) -> WorkerHandle {
    Worker::builder(offload.queue().clone())
        .poll_interval(Duration::from_millis(20))
        .backoff(Backoff::exponential(
            Duration::from_millis(20),
            Duration::from_millis(50),
        ))
        .spawn(offload.handler(inner))
}

async fn done(app: &Router, location: &str) -> Resp {
    eventually("the job finishes", Duration::from_secs(10), || async {
        let r = send(app, "GET", location, &[], "").await;
        (r.status != StatusCode::ACCEPTED).then_some(r)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matched_request_is_answered_202_and_its_response_served_later() {
    let runs = Arc::new(AtomicU32::new(0));
    let inner = routes(Arc::clone(&runs));
    let offload = layer(queue_on(MemoryJobStore::new(), "http"));
    let w = workers(&offload, inner.clone());
    let app = inner.layer(offload);

    let r = send(
        &app,
        "POST",
        "/reports?year=2026",
        &[("accept-language", "fr"), ("authorization", "Bearer x")],
        "q1",
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let location = r.headers["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/jobs/") && location.len() == "/jobs/".len() + 32);
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.json()["status"], location.as_str());
    assert!(
        r.headers.get("preference-applied").is_none(),
        "the client did not ask"
    );

    // While it runs: 202 with its state.
    let pending = send(&app, "GET", &location, &[], "").await;
    assert_eq!(pending.status, StatusCode::ACCEPTED);
    assert!(["queued", "running"].contains(&pending.json()["state"].as_str().unwrap()));
    assert_eq!(pending.headers["retry-after"], "1");

    // Then the response the route gave, without Set-Cookie; only allow-listed headers
    // reached it (Accept-Language yes, Authorization no).
    let r = done(&app, &location).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.headers["x-report"], "1");
    assert!(r.headers.get("set-cookie").is_none());
    assert_eq!(r.body, "report of \"q1\" lang=Some(\"fr\") auth=false");
    // Served again on the next poll: the response is kept.
    assert_eq!(send(&app, "GET", &location, &[], "").await.body, r.body);
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // Requests the layer does not match pass through as before.
    let r = send(&app, "GET", "/fast", &[], "").await;
    assert_eq!((r.status, r.body.as_ref()), (StatusCode::OK, &b"fast"[..]));
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_respond_async_offloads_any_route() {
    let inner = routes(Arc::default());
    let offload = layer(queue_on(MemoryJobStore::new(), "http"));
    let w = workers(&offload, inner.clone());
    let app = inner.layer(offload);
    let r = send(
        &app,
        "GET",
        "/fast",
        &[("prefer", "wait=5, respond-async")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.headers["preference-applied"], "respond-async");
    let r = done(&app, r.headers["location"].to_str().unwrap()).await;
    assert_eq!((r.status, r.body.as_ref()), (StatusCode::OK, &b"fast"[..]));
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_gives_the_same_job() {
    let runs = Arc::new(AtomicU32::new(0));
    let inner = routes(Arc::clone(&runs));
    let offload = layer(queue_on(MemoryJobStore::new(), "http"));
    let w = workers(&offload, inner.clone());
    let app = inner.layer(offload);
    let post = |key: &'static str, body: &'static str| {
        let app = app.clone();
        async move { send(&app, "POST", "/reports", &[("idempotency-key", key)], body).await }
    };
    let a = post("k-1", "one").await;
    let b = post("k-1", "one again").await;
    let c = post("k-2", "two").await;
    assert_eq!(a.headers["location"], b.headers["location"]);
    assert_ne!(a.headers["location"], c.headers["location"]);
    // The same key on another route is another job.
    let d = send(
        &app,
        "GET",
        "/fast",
        &[("idempotency-key", "k-1"), ("prefer", "respond-async")],
        "",
    )
    .await;
    assert_ne!(a.headers["location"], d.headers["location"]);
    let r = done(&app, a.headers["location"].to_str().unwrap()).await;
    assert!(String::from_utf8_lossy(&r.body).contains("\"one\""));
    done(&app, c.headers["location"].to_str().unwrap()).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2, "k-1 ran once");
    let bad = send(
        &app,
        "POST",
        "/reports",
        &[("idempotency-key", &"x".repeat(201))],
        "",
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_nothing_is_stored() {
    let q = queue_on(MemoryJobStore::new(), "http");
    let inner = routes(Arc::default());
    let app = inner.layer(layer(q.clone()));
    let r = send(&app, "POST", "/reports", &[], &"x".repeat(1025)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.json()["error"].as_str().unwrap().contains("1024"));
    assert_eq!(q.stats().await.unwrap().queued, 0, "nothing was enqueued");
    for path in [
        format!("/jobs/{}", "0".repeat(32)),
        "/jobs/nope".to_owned(),
        "/jobs/".to_owned(),
        format!("/jobs/{}/x", "0".repeat(32)),
    ] {
        let r = send(&app, "GET", &path, &[], "").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert!(r.json()["error"].as_str().unwrap().contains("no such job"));
    }
    assert!(
        OffloadLayer::builder(q.clone())
            .status_path("jobs")
            .build()
            .is_err()
    );
    assert!(
        OffloadLayer::builder(q.clone())
            .status_path("/jobs/")
            .build()
            .is_err()
    );
    assert!(
        OffloadLayer::builder(q)
            .status_path("/a?b")
            .build()
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_service_is_retried_then_reported() {
    let q = queue_on(MemoryJobStore::new(), "http");
    let offload = layer(q);
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let failing = tower::service_fn(move |_req: Request<http_body_util::Full<Bytes>>| {
        c.fetch_add(1, Ordering::SeqCst);
        async {
            Err::<http::Response<http_body_util::Full<Bytes>>, _>(std::io::Error::other(
                "disk full",
            ))
        }
    });
    let w = Worker::builder(offload.queue().clone())
        .poll_interval(Duration::from_millis(20))
        .backoff(Backoff::exponential(
            Duration::from_millis(20),
            Duration::from_millis(50),
        ))
        .spawn(offload.handler(failing));
    let app = routes(Arc::default()).layer(offload);
    let r = send(&app, "POST", "/reports", &[], "x").await;
    let r = done(&app, r.headers["location"].to_str().unwrap()).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.json()["state"], "dead");
    assert!(
        r.json()["last_error"]
            .as_str()
            .unwrap()
            .contains("disk full")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "both attempts ran");
    w.shutdown(Duration::from_secs(1)).await;
}

/// Two instances on one Redis, and on the Cluster: A accepts and answers the status, B's
/// worker runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_accepts_and_another_runs_it_through_redis() {
    for cluster in [false, true] {
        accept_here_run_there(cluster).await;
    }
}

async fn accept_here_run_there(cluster: bool) {
    let prefix = unique("offload");
    let backend = || {
        if cluster {
            support::redis_cluster_backend(&prefix)
        } else {
            redis_backend(&redis_url(), &prefix)
        }
    };
    let runs_a = Arc::new(AtomicU32::new(0));
    let runs_b = Arc::new(AtomicU32::new(0));
    let a_layer = layer(queue_on(RedisJobStore::new(backend()), "http"));
    let b_layer = layer(queue_on(RedisJobStore::new(backend()), "http"));
    let a = routes(Arc::clone(&runs_a)).layer(a_layer);
    let w = workers(&b_layer, routes(Arc::clone(&runs_b)));
    let r = send(&a, "POST", "/reports", &[], "shared").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = done(&a, r.headers["location"].to_str().unwrap()).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(String::from_utf8_lossy(&r.body).contains("\"shared\""));
    assert_eq!(
        (runs_a.load(Ordering::SeqCst), runs_b.load(Ordering::SeqCst)),
        (0, 1)
    );
    w.shutdown(Duration::from_secs(1)).await;
}
