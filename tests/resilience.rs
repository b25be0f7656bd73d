//! Retry and circuit breaker, as layers over scripted upstreams. Time is paused where the
//! assertions are about time, so they are exact and fast.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_scale::circuit_breaker::{
    BreakerError, CircuitBreakerLayer, CircuitOpen, OpenAs503Layer, PerHost, State, Window,
};
use tower_scale::clock::Clock;
use tower_scale::retry::{ReplayBody, RetryBudget, RetryError, RetryLayer};

type Body = ReplayBody<Full<Bytes>>;

/// What the scripted upstream saw: when each attempt came and what body it carried.
#[derive(Default)]
struct Seen {
    at: Mutex<Vec<Instant>>,
    bodies: Mutex<Vec<Bytes>>,
}

/// An upstream answering each call with `script(n)` (n counts from 0).
fn upstream(
    seen: Arc<Seen>,
    script: impl Fn(usize) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
) -> impl Service<
    Request<Body>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send {
    tower::service_fn(move |req: Request<Body>| {
        let (seen, script) = (Arc::clone(&seen), script.clone());
        async move {
            let n = {
                let mut at = seen.at.lock().unwrap();
                at.push(Instant::now());
                at.len() - 1
            };
            let body = req.into_body().collect().await.unwrap().to_bytes();
            seen.bodies.lock().unwrap().push(body);
            Ok(script(n))
        }
    })
}

fn status(code: u16) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri).body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test(start_paused = true)]
async fn backoff_stays_within_full_jitter_bounds() {
    let seen = Arc::new(Seen::default());
    let retry = RetryLayer::builder()
        .max_attempts(5)
        .backoff(Duration::from_millis(100), Duration::from_millis(300))
        .build()
        .unwrap();
    for _ in 0..20 {
        seen.at.lock().unwrap().clear();
        let mut svc = retry.layer(upstream(Arc::clone(&seen), |_| status(503)));
        let resp = svc.ready().await.unwrap().call(get("/")).await.unwrap();
        assert_eq!(resp.status(), 503, "the last failure is returned");
        let at = seen.at.lock().unwrap().clone();
        assert_eq!(at.len(), 5, "max attempts, the first included");
        for (i, w) in at.windows(2).enumerate() {
            let ceiling = Duration::from_millis((100u64 << i).min(300));
            assert!(
                w[1] - w[0] <= ceiling,
                "retry {} waited {:?} > {ceiling:?}",
                i + 1,
                w[1] - w[0]
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_deadline_covers_every_attempt() {
    let seen = Arc::new(Seen::default());
    let mut svc = RetryLayer::builder()
        .max_attempts(1000)
        .backoff(Duration::from_millis(100), Duration::from_millis(100))
        .deadline(Duration::from_secs(1))
        .budget(
            RetryBudget::with_clock(10.0, 1000, Duration::from_secs(10), Clock::tokio()).unwrap(),
        )
        .build()
        .unwrap()
        .layer(upstream(Arc::clone(&seen), |_| status(500)));
    let start = Instant::now();
    let resp = svc.ready().await.unwrap().call(get("/")).await.unwrap();
    assert_eq!(resp.status(), 500);
    assert!(
        start.elapsed() <= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let n = seen.at.lock().unwrap().len();
    assert!(
        (2..1000).contains(&n),
        "{n} attempts: the deadline, not max_attempts, ended them"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_attempt_times_out_and_the_next_answers() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let hangs_once = tower::service_fn(move |_req: Request<Body>| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Ok::<_, Infallible>(status(200))
        }
    });
    let mut svc = RetryLayer::builder()
        .attempt_timeout(Duration::from_millis(200))
        .build()
        .unwrap()
        .layer(hangs_once);
    let start = Instant::now();
    let resp = svc.ready().await.unwrap().call(get("/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        start.elapsed() < Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Every attempt hangs: the caller gets `TimedOut`, not a hang.
    let mut svc = RetryLayer::builder()
        .max_attempts(2)
        .attempt_timeout(Duration::from_millis(100))
        .build()
        .unwrap()
        .layer(tower::service_fn(|_req: Request<Body>| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, Infallible>(status(200))
        }));
    let err = svc.ready().await.unwrap().call(get("/")).await.unwrap_err();
    assert!(matches!(err, RetryError::TimedOut), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn only_what_is_safe_to_repeat_is_retried() {
    // (method, idempotency key, status, attempts expected)
    let cases = [
        ("GET", false, 503, 3),
        ("PUT", false, 503, 3),
        ("DELETE", false, 502, 3),
        ("POST", false, 503, 1),
        ("POST", true, 503, 3),
        ("PATCH", false, 503, 1),
        ("GET", false, 404, 1),
        ("GET", false, 429, 1),
        ("GET", false, 200, 1),
    ];
    for (method, keyed, code, want) in cases {
        let seen = Arc::new(Seen::default());
        let mut svc = RetryLayer::builder()
            .build()
            .unwrap()
            .layer(upstream(Arc::clone(&seen), move |_| status(code)));
        let mut req = Request::builder().method(method).uri("/x");
        if keyed {
            req = req.header("idempotency-key", "k-1");
        }
        let resp = svc
            .ready()
            .await
            .unwrap()
            .call(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), code);
        assert_eq!(
            seen.at.lock().unwrap().len(),
            want,
            "{method} keyed={keyed} {code}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_up_to_the_cap() {
    for (after, cap, want_attempts) in [(2u64, 5u64, 2usize), (10, 5, 1)] {
        let seen = Arc::new(Seen::default());
        let mut svc = RetryLayer::builder()
            .max_attempts(2)
            .retry_after_cap(Duration::from_secs(cap))
            .build()
            .unwrap()
            .layer(upstream(Arc::clone(&seen), move |n| {
                if n == 0 {
                    Response::builder()
                        .status(503)
                        .header("retry-after", after.to_string())
                        .body(Full::new(Bytes::new()))
                        .unwrap()
                } else {
                    status(200)
                }
            }));
        let resp = svc.ready().await.unwrap().call(get("/")).await.unwrap();
        let at = seen.at.lock().unwrap().clone();
        assert_eq!(
            at.len(),
            want_attempts,
            "Retry-After {after} with cap {cap}"
        );
        if want_attempts == 2 {
            assert_eq!(resp.status(), 200);
            assert_eq!(
                at[1] - at[0],
                Duration::from_secs(after),
                "waited exactly Retry-After"
            );
        } else {
            assert_eq!(resp.status(), 503, "over the cap: answered, not retried");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn bodies_are_replayed_up_to_the_cap() {
    for (body, cap, want) in [("hello", 64u64, 3usize), ("hello", 4, 1)] {
        let seen = Arc::new(Seen::default());
        let mut svc = RetryLayer::builder()
            .body_cap(cap)
            .build()
            .unwrap()
            .layer(upstream(Arc::clone(&seen), |_| status(503)));
        let req = Request::put("/items/1")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        svc.ready().await.unwrap().call(req).await.unwrap();
        let bodies = seen.bodies.lock().unwrap().clone();
        assert_eq!(bodies.len(), want, "cap {cap}");
        assert!(
            bodies.iter().all(|b| b == body.as_bytes()),
            "every attempt carries the body"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_budget_bounds_upstream_calls_against_a_dead_upstream() {
    let seen = Arc::new(Seen::default());
    let budget = RetryBudget::with_clock(0.2, 10, Duration::from_secs(10), Clock::tokio()).unwrap();
    let svc = RetryLayer::builder()
        .max_attempts(3)
        .budget(budget)
        .build()
        .unwrap()
        .layer(upstream(Arc::clone(&seen), |_| status(503)));
    let requests = 2_000;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..requests {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            svc.ready()
                .await
                .unwrap()
                .call(get("/"))
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let secs = start.elapsed().as_secs_f64().ceil() + 10.0;
    let calls = seen.at.lock().unwrap().len() as f64;
    let bound = 1.2 * requests as f64 + 10.0 * secs;
    assert!(calls <= bound, "{calls} upstream calls > {bound}");
    assert!(
        calls < 1.5 * requests as f64,
        "{calls}: attempts × requests would be {}",
        3 * requests
    );
    assert!(calls > requests as f64, "some retries were allowed");
}

/// An upstream whose answers a test switches: 200 or 500.
fn switchable(
    failing: Arc<AtomicU32>,
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
+ Send {
    tower::service_fn(move |_req: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let code = if failing.load(Ordering::SeqCst) == 1 {
            500
        } else {
            200
        };
        async move { Ok::<_, Infallible>(status(code)) }
    })
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_refuses_fast_as_503_then_recovers() {
    let failing = Arc::new(AtomicU32::new(1));
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CircuitBreakerLayer::builder()
        .name("pricing")
        .window(Window::Count(10))
        .minimum_calls(5)
        .open_duration(Duration::from_secs(10))
        .half_open_probes(2)
        .clock(Clock::tokio())
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc =
        OpenAs503Layer.layer(layer.layer(switchable(Arc::clone(&failing), Arc::clone(&calls))));
    for _ in 0..5 {
        assert_eq!(
            svc.ready()
                .await
                .unwrap()
                .call(Request::new(()))
                .await
                .unwrap()
                .status(),
            500
        );
    }
    assert_eq!(handle.state(), State::Open);
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "10");
    assert_eq!(
        resp.extensions()
            .get::<CircuitOpen>()
            .unwrap()
            .breaker
            .as_ref(),
        "pricing"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "refused without calling the upstream"
    );

    failing.store(0, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(10)).await;
    for _ in 0..2 {
        assert_eq!(
            svc.ready()
                .await
                .unwrap()
                .call(Request::new(()))
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_the_probe_count_reaches_the_upstream_when_half_open() {
    for round in 0..30 {
        let failing = Arc::new(AtomicU32::new(1));
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (f, c, g) = (Arc::clone(&failing), Arc::clone(&calls), Arc::clone(&gate));
        // While failing, answers 500 at once; once healed, holds every call at the gate.
        let upstream = tower::service_fn(move |_req: Request<()>| {
            let (f, c, g) = (Arc::clone(&f), Arc::clone(&c), Arc::clone(&g));
            async move {
                if f.load(Ordering::SeqCst) == 1 {
                    return Ok::<_, Infallible>(status(500));
                }
                c.fetch_add(1, Ordering::SeqCst);
                let _permit = g.acquire().await.unwrap();
                Ok(status(200))
            }
        });
        let layer = CircuitBreakerLayer::builder()
            .minimum_calls(2)
            .open_duration(Duration::from_millis(50))
            .half_open_probes(3)
            .build()
            .unwrap();
        let handle = layer.handle();
        let svc = layer.layer(upstream);
        for _ in 0..2 {
            let _ = svc.clone().oneshot(Request::new(())).await;
        }
        assert_eq!(handle.state(), State::Open);
        failing.store(0, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(60)).await;
        let refused = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (svc, refused) = (svc.clone(), Arc::clone(&refused));
            tasks.push(tokio::spawn(async move {
                match svc.oneshot(Request::new(())).await {
                    Err(BreakerError::Open(_)) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => assert_eq!(r.status(), 200),
                    Err(BreakerError::Inner(e)) => match e {},
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }));
        }
        // Every refusal is immediate; the probes wait at the gate.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while refused.load(Ordering::SeqCst) + calls.load(Ordering::SeqCst) < 64 {
            assert!(std::time::Instant::now() < deadline, "round {round}: stuck");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Give any call that slipped past the breaker time to show up.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "round {round}: exactly the probes passed"
        );
        gate.add_permits(64);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(refused.load(Ordering::SeqCst), 61, "round {round}");
        assert_eq!(
            handle.state(),
            State::Closed,
            "round {round}: the probes closed it"
        );
    }
}

#[tokio::test]
async fn per_host_breakers_are_independent() {
    let layer = CircuitBreakerLayer::builder()
        .key(PerHost)
        .minimum_calls(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(tower::service_fn(|req: Request<()>| async move {
        let code = if req.uri().host() == Some("down.example") {
            500
        } else {
            200
        };
        Ok::<_, Infallible>(status(code))
    }));
    for _ in 0..2 {
        let _ = svc
            .ready()
            .await
            .unwrap()
            .call(Request::get("http://down.example/p").body(()).unwrap())
            .await;
    }
    assert_eq!(handle.state_of("down.example"), State::Open);
    assert_eq!(handle.state_of("up.example"), State::Closed);
    let r = svc
        .ready()
        .await
        .unwrap()
        .call(Request::get("http://up.example/p").body(()).unwrap())
        .await;
    assert_eq!(r.unwrap().status(), 200);
    let r = svc
        .ready()
        .await
        .unwrap()
        .call(Request::get("http://down.example/p").body(()).unwrap())
        .await;
    assert!(matches!(r, Err(BreakerError::Open(_))));
    handle.reset_key("down.example");
    assert_eq!(handle.state_of("down.example"), State::Closed);
}

#[tokio::test]
async fn keyed_breakers_stay_bounded() {
    let layer = CircuitBreakerLayer::builder()
        .key(PerHost)
        .max_keys(160)
        .minimum_calls(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(tower::service_fn(|_req: Request<()>| async move {
        Ok::<_, Infallible>(status(500))
    }));
    // Ten thousand hosts, each failing once: every breaker trips and must be kept, so past
    // the cap new hosts share the layer's own breaker instead of growing the map.
    for i in 0..10_000 {
        let _ = svc
            .ready()
            .await
            .unwrap()
            .call(
                Request::get(format!("http://h{i}.example/"))
                    .body(())
                    .unwrap(),
            )
            .await;
    }
    assert_eq!(
        handle.state(),
        State::Open,
        "the overflow shares the layer's breaker"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_does_not_retry_a_breakers_refusal() {
    let failing = Arc::new(AtomicU32::new(1));
    let calls = Arc::new(AtomicUsize::new(0));
    let breaker = CircuitBreakerLayer::builder()
        .minimum_calls(2)
        .clock(Clock::tokio())
        .build()
        .unwrap();
    let handle = breaker.handle();
    let (f, c) = (Arc::clone(&failing), Arc::clone(&calls));
    let upstream = tower::service_fn(move |_req: Request<Body>| {
        c.fetch_add(1, Ordering::SeqCst);
        let code = if f.load(Ordering::SeqCst) == 1 {
            500
        } else {
            200
        };
        async move { Ok::<_, Infallible>(status(code)) }
    });
    let mut svc = tower::ServiceBuilder::new()
        .layer(RetryLayer::builder().max_attempts(5).build().unwrap())
        .layer(OpenAs503Layer)
        .layer(breaker)
        .service(upstream);
    let resp = svc.ready().await.unwrap().call(get("/")).await.unwrap();
    assert_eq!(
        resp.status(),
        503,
        "two failures open the breaker; its refusal is the answer"
    );
    assert!(resp.extensions().get::<CircuitOpen>().is_some());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "retries stopped at the open breaker"
    );
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_holds_for_requests_that_are_not_retried() {
    let hangs = tower::service_fn(|_req: Request<Body>| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, Infallible>(status(200))
    });
    for (retry, method) in [
        (
            RetryLayer::builder().deadline(Duration::from_millis(500)),
            "POST",
        ),
        (
            RetryLayer::builder()
                .max_attempts(1)
                .attempt_timeout(Duration::from_millis(500)),
            "GET",
        ),
    ] {
        let mut svc = retry.build().unwrap().layer(hangs);
        let start = Instant::now();
        let req = Request::builder()
            .method(method)
            .uri("/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
        assert!(matches!(err, RetryError::TimedOut), "{method}: {err:?}");
        assert!(start.elapsed() <= Duration::from_millis(500), "{method}");
    }
}

/// A body whose size hint promises `hint` bytes, then sends `data`, or stalls for ever.
struct Lying {
    hint: u64,
    data: Option<Bytes>,
    stall: bool,
}

impl http_body::Body for Lying {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if self.stall {
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(self.data.take().map(|d| Ok(http_body::Frame::data(d))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.hint)
    }
}

#[tokio::test(start_paused = true)]
async fn buffering_is_bounded_in_size_and_time() {
    let upstream = tower::service_fn(|_req: Request<ReplayBody<Lying>>| async {
        Ok::<_, Infallible>(status(200))
    });
    let layer = RetryLayer::builder()
        .body_cap(8)
        .deadline(Duration::from_millis(300))
        .build()
        .unwrap();
    // Promises 4 bytes, sends 1 KiB: refused, not buffered without bound.
    let req = Request::put("/x")
        .body(Lying {
            hint: 4,
            data: Some(Bytes::from(vec![b'x'; 1024])),
            stall: false,
        })
        .unwrap();
    let err = layer.layer(upstream).oneshot(req).await.unwrap_err();
    assert!(matches!(err, RetryError::Body(_)), "{err:?}");
    // A body that stalls while buffered: the deadline still ends the call.
    let req = Request::put("/x")
        .body(Lying {
            hint: 4,
            data: None,
            stall: true,
        })
        .unwrap();
    let start = Instant::now();
    let err = layer.layer(upstream).oneshot(req).await.unwrap_err();
    assert!(matches!(err, RetryError::TimedOut), "{err:?}");
    assert!(start.elapsed() <= Duration::from_millis(300));
}

#[tokio::test]
async fn huge_settings_do_not_panic() {
    let seen = Arc::new(Seen::default());
    let mut svc = RetryLayer::builder()
        .deadline(Duration::MAX)
        .build()
        .unwrap()
        .layer(upstream(Arc::clone(&seen), |n| {
            status(if n == 0 { 503 } else { 200 })
        }));
    let resp = svc.ready().await.unwrap().call(get("/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        RetryLayer::builder()
            .backoff(Duration::from_secs(1), Duration::MAX)
            .build()
            .is_err()
    );
}

#[tokio::test]
async fn breaker_settings_that_could_never_open_are_refused() {
    let err = CircuitBreakerLayer::builder()
        .window(Window::Count(10))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("minimum_calls"), "{err}");
}

#[tokio::test]
async fn healthy_hosts_make_room_for_new_ones() {
    let layer = CircuitBreakerLayer::builder()
        .key(PerHost)
        .max_keys(160)
        .minimum_calls(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(tower::service_fn(|req: Request<()>| async move {
        let code = if req.uri().host() == Some("down.example") {
            500
        } else {
            200
        };
        Ok::<_, Infallible>(status(code))
    }));
    for i in 0..10_000 {
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(
                Request::get(format!("http://h{i}.example/"))
                    .body(())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.unwrap().status(), 200);
    }
    // The map is full of healthy hosts; a failing host still gets its own breaker.
    for _ in 0..2 {
        let _ = svc
            .ready()
            .await
            .unwrap()
            .call(Request::get("http://down.example/").body(()).unwrap())
            .await;
    }
    assert_eq!(handle.state_of("down.example"), State::Open);
    assert_eq!(
        handle.state(),
        State::Closed,
        "the shared breaker was not tripped"
    );
    // Reading a key makes no breaker; forcing one makes it, or says there is no room.
    assert_eq!(handle.state_of("never.example"), State::Closed);
    handle.force_open_key("forced.example").unwrap();
    assert_eq!(handle.state_of("forced.example"), State::Open);
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test]
async fn breakers_keyed_by_a_crate_key_extractor() {
    use tower_scale::circuit_breaker::ByKey;
    use tower_scale::key::HeaderKey;
    let layer = CircuitBreakerLayer::builder()
        .key(ByKey(HeaderKey::named("x-tenant").unwrap()))
        .minimum_calls(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(tower::service_fn(|req: Request<()>| async move {
        let bad = req.headers().get("x-tenant").is_some_and(|t| t == "noisy");
        Ok::<_, Infallible>(status(if bad { 500 } else { 200 }))
    }));
    let req = |tenant: &str| {
        Request::get("/")
            .header("x-tenant", tenant)
            .body(())
            .unwrap()
    };
    for _ in 0..2 {
        let _ = svc.ready().await.unwrap().call(req("noisy")).await;
    }
    assert!(matches!(
        svc.ready().await.unwrap().call(req("noisy")).await,
        Err(BreakerError::Open(_))
    ));
    let r = svc.ready().await.unwrap().call(req("quiet")).await.unwrap();
    assert_eq!(r.status(), 200, "another tenant's breaker is closed");
    assert_eq!(
        handle.state(),
        State::Closed,
        "the shared breaker was not tripped"
    );
}
