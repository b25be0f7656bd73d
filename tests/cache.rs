//! The cache: the typed face and the HTTP layer, in process and through a real Redis shared
//! by two engines ("instances"), including a private Redis killed mid-test.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use support::{LayerExt, RedisServer, eventually, redis_backend, redis_url, unique};
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;
use tower_scale::cache::{Cache, CacheEngine, LoadOptions, ResponseCacheLayer, SetError};
use tower_scale::clock::Clock;

/// The Redis deployments the shared-cache tests run on: one node, and a Cluster.
const DEPLOYMENTS: [&str; 2] = ["redis", "cluster"];

/// An engine on `deployment` (one of [`DEPLOYMENTS`]) under `prefix`.
fn engine_on(deployment: &str, prefix: &str) -> CacheEngine {
    let backend = match deployment {
        "cluster" => support::redis_cluster_backend(prefix),
        _ => redis_backend(&redis_url(), prefix),
    };
    CacheEngine::builder()
        .redis(backend)
        .ttl_jitter(0.0)
        .heartbeat(Duration::from_millis(200))
        .build()
        .unwrap()
}

fn redis_engine(url: &str, prefix: &str) -> CacheEngine {
    CacheEngine::builder()
        .redis(redis_backend(url, prefix))
        .ttl_jitter(0.0)
        .heartbeat(Duration::from_millis(200))
        .build()
        .unwrap()
}

async fn subscribed(engines: &[&CacheEngine]) {
    for e in engines {
        eventually(
            "the invalidation subscriber",
            Duration::from_secs(5),
            || async { e.is_subscribed().then_some(()) },
        )
        .await;
    }
}

/// A loader error for the tests.
#[derive(Debug, Clone, PartialEq)]
struct Boom(&'static str);

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "boom: {}", self.0)
    }
}

impl std::error::Error for Boom {}

// ---------------------------------------------------------------------------------------
// The typed face

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_misses_run_the_loader_once() {
    let prefix = unique("stampede");
    let engines = [
        ("in process", CacheEngine::builder().build().unwrap()),
        ("with redis", redis_engine(&redis_url(), &prefix)),
        ("on the cluster", engine_on("cluster", &prefix)),
    ];
    for (name, engine) in engines {
        let cache: Cache<str, u64> = Cache::new(&engine, "stampede");
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let (cache, runs) = (cache.clone(), Arc::clone(&runs));
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load("cold", move || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, Boom>(7)
                    })
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 7, "{name}");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{name}: loader runs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_reaches_every_waiter_and_is_not_cached() {
    let engine = CacheEngine::builder().build().unwrap();
    let cache: Cache<str, u64> = Cache::new(&engine, "errors");
    let runs = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (cache, runs) = (cache.clone(), Arc::clone(&runs));
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load("k", move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err::<u64, _>(Boom("db down"))
                })
                .await
        }));
    }
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert_eq!(err.downcast_ref::<Boom>(), Some(&Boom("db down")));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // Not cached: the next call loads again.
    let v = cache
        .get_or_load("k", || async { Ok::<_, Boom>(1) })
        .await
        .unwrap();
    assert_eq!(v, 1);
}

#[tokio::test]
async fn a_value_that_does_not_serialise_is_refused_and_changes_nothing() {
    use std::collections::HashMap;
    // JSON object keys must be strings: a map keyed by pairs does not serialise.
    type Grid = HashMap<(u8, u8), u8>;
    let engine = CacheEngine::builder().build().unwrap();
    let cache: Cache<str, Grid> = Cache::new(&engine, "grids");
    cache.set("g", &Grid::new()).await.unwrap();
    let bad = Grid::from([((1, 2), 3)]);
    let err = cache.set("g", &bad).await.unwrap_err();
    assert!(matches!(err, SetError::Encode(_)), "{err:?}");
    assert!(err.to_string().contains("does not serialise"), "{err}");
    assert_eq!(
        cache.get("g").await,
        Some(Grid::new()),
        "the stored value stays"
    );
}

fn paused_engine() -> CacheEngine {
    CacheEngine::builder()
        .clock(Clock::tokio())
        .ttl(Duration::from_secs(10))
        .ttl_jitter(0.0)
        .stale_while_revalidate(Duration::from_secs(5))
        .stale_if_error(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_serves_the_old_value_and_refreshes_once() {
    let engine = paused_engine();
    let cache: Cache<str, u64> = Cache::new(&engine, "swr");
    let loads = Arc::new(AtomicUsize::new(0));
    let loader = |value: u64, loads: Arc<AtomicUsize>| {
        move || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, Boom>(value)
        }
    };
    assert_eq!(
        cache
            .get_or_load("k", loader(1, loads.clone()))
            .await
            .unwrap(),
        1
    );
    tokio::time::advance(Duration::from_secs(11)).await; // stale, within SWR
    for _ in 0..10 {
        // Served at once, old value; one refresh starts in the background.
        let v = cache
            .get_or_load("k", loader(2, loads.clone()))
            .await
            .unwrap();
        assert_eq!(v, 1);
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // the refresh finishes
    assert_eq!(
        loads.load(Ordering::SeqCst),
        2,
        "one initial load, one refresh"
    );
    assert_eq!(
        cache
            .get_or_load("k", loader(3, loads.clone()))
            .await
            .unwrap(),
        2
    );
    assert_eq!(loads.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_the_old_value_while_the_loader_fails_and_not_after() {
    let engine = paused_engine();
    let cache: Cache<str, u64> = Cache::new(&engine, "sie");
    cache
        .get_or_load("k", || async { Ok::<_, Boom>(1) })
        .await
        .unwrap();
    let failing = || async { Err::<u64, _>(Boom("down")) };
    struct Step {
        name: &'static str,
        advance: u64,
        want: Result<u64, ()>,
    }
    let steps = [
        Step {
            name: "past SWR, within SIE",
            advance: 20,
            want: Ok(1),
        },
        Step {
            name: "still within SIE",
            advance: 15,
            want: Ok(1),
        },
        Step {
            name: "past SIE",
            advance: 10,
            want: Err(()),
        },
    ];
    for step in steps {
        tokio::time::advance(Duration::from_secs(step.advance)).await;
        let got = cache.get_or_load("k", failing).await.map_err(drop);
        assert_eq!(got, step.want, "step {}", step.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_on_one_instance_reaches_the_other_within_milliseconds() {
    for d in DEPLOYMENTS {
        propagation(d).await;
    }
}

async fn propagation(deployment: &str) {
    let prefix = unique("propagation");
    let a = engine_on(deployment, &prefix);
    let b = engine_on(deployment, &prefix);
    subscribed(&[&a, &b]).await;
    let ca: Cache<str, String> = Cache::new(&a, "p");
    let cb: Cache<str, String> = Cache::new(&b, "p");
    let mut micros = Vec::new();
    for round in 0..200 {
        let key = format!("k{round}");
        // B holds the old value in L1 (read through L2 after A stored it).
        ca.set(&key, &"old".to_string()).await.unwrap();
        assert_eq!(cb.get(&key).await.as_deref(), Some("old"));
        let start = Instant::now();
        ca.invalidate(&key).await.unwrap();
        loop {
            // B's L1 must drop it; a read that goes to L2 finds nothing either.
            if cb.get(&key).await.is_none() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "round {round}: B still serves the old value"
            );
            tokio::task::yield_now().await;
        }
        micros.push(start.elapsed().as_micros() as u64);
    }
    micros.sort_unstable();
    let p50 = micros[micros.len() / 2];
    let p99 = micros[micros.len() * 99 / 100];
    println!("invalidation propagation over 200 rounds ({deployment}): p50 {p50} µs, p99 {p99} µs");
    assert!(p99 < 200_000, "p99 {p99} µs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_and_prefixes_invalidate_on_every_instance() {
    for d in DEPLOYMENTS {
        tags_and_prefixes(d).await;
    }
}

async fn tags_and_prefixes(deployment: &str) {
    let prefix = unique("tags");
    let a = engine_on(deployment, &prefix);
    let b = engine_on(deployment, &prefix);
    subscribed(&[&a, &b]).await;
    let ca: Cache<str, u32> = Cache::new(&a, "n");
    let cb: Cache<str, u32> = Cache::new(&b, "n");
    let team = LoadOptions::new().tag("team");
    for (k, v) in [("x", 1), ("y", 2)] {
        ca.get_or_load_with(k, &team, move || async move { Ok::<_, Boom>(v) })
            .await
            .unwrap();
    }
    ca.set("user:1", &10).await.unwrap();
    ca.set("user:2", &20).await.unwrap();
    ca.set("other", &30).await.unwrap();
    // B reads everything through L2 into its L1.
    for (k, v) in [
        ("x", 1),
        ("y", 2),
        ("user:1", 10),
        ("user:2", 20),
        ("other", 30),
    ] {
        assert_eq!(cb.get(k).await, Some(v), "B reads {k}");
    }
    a.invalidate_tag("team").await.unwrap();
    ca.invalidate_prefix("user:").await.unwrap();
    for k in ["x", "y", "user:1", "user:2"] {
        eventually(&format!("B drops {k}"), Duration::from_secs(2), || async {
            cb.get(k).await.is_none().then_some(())
        })
        .await;
        assert_eq!(ca.get(k).await, None, "A drops {k}");
    }
    if deployment == "redis" {
        assert_eq!(cb.get("other").await, Some(30), "untouched keys stay");
    } else {
        // On a Cluster a prefix invalidation makes every L2 entry stale (there is no scan
        // of the masters): an untouched key may be a miss, never a wrong value.
        assert!(
            matches!(cb.get("other").await, Some(30) | None),
            "untouched keys stay or miss"
        );
    }
    // Reloaded values carry the new tag version and are served again.
    let v = cb
        .get_or_load_with("x", &team, || async { Ok::<_, Boom>(5) })
        .await
        .unwrap();
    assert_eq!(v, 5);
    assert_eq!(ca.get("x").await, Some(5), "A reads B's reload through L2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loader_never_writes_back_a_value_older_than_an_invalidation() {
    for d in DEPLOYMENTS {
        slow_loader_race(d).await;
    }
}

async fn slow_loader_race(deployment: &str) {
    let prefix = unique("race");
    let a = engine_on(deployment, &prefix);
    let b = engine_on(deployment, &prefix);
    subscribed(&[&a, &b]).await;
    let raw = redis_backend(&redis_url(), &prefix);
    struct Case {
        name: &'static str,
        invalidate: fn(Cache<str, String>, CacheEngine) -> tokio::task::JoinHandle<()>,
    }
    let cases = [
        Case {
            name: "key",
            invalidate: |c, _| tokio::spawn(async move { c.invalidate("k").await.unwrap() }),
        },
        Case {
            name: "tag",
            invalidate: |_, e| tokio::spawn(async move { e.invalidate_tag("t").await.unwrap() }),
        },
        Case {
            name: "prefix",
            invalidate: |c, _| tokio::spawn(async move { c.invalidate_prefix("").await.unwrap() }),
        },
        Case {
            // An instance whose message never arrives (a partition): only the generation
            // in Redis moves, and the store script alone must refuse the old value.
            name: "silent",
            invalidate: |_, e| {
                tokio::spawn(async move {
                    let _ = e;
                })
            },
        },
    ];
    for case in cases {
        let ca: Cache<str, String> = Cache::new(&a, case.name);
        let cb: Cache<str, String> = Cache::new(&b, case.name);
        let opts = LoadOptions::new().tag("t");
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let slow = {
            let ca = ca.clone();
            let opts = opts.clone();
            tokio::spawn(async move {
                ca.get_or_load_with("k", &opts, move || async move {
                    let _ = started_tx.send(());
                    let _ = go_rx.await;
                    Ok::<_, Boom>("old".to_string())
                })
                .await
                .unwrap()
            })
        };
        started_rx.await.unwrap();
        // The data changes and B invalidates while A's load is under way.
        (case.invalidate)(cb.clone(), b.clone()).await.unwrap();
        if case.name == "silent" {
            let gen_key = raw.key_with_suffix("cache", "d:silent:k", "g");
            let _: i64 = if deployment == "cluster" {
                support::redis_cluster_raw(&["INCR", &gen_key]).await
            } else {
                support::redis_raw(&redis_url(), &["INCR", &gen_key]).await
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        go_tx.send(()).unwrap();
        assert_eq!(
            slow.await.unwrap(),
            "old",
            "{}: the caller gets what it loaded",
            case.name
        );
        // Neither tier kept it: the next read on either instance loads afresh.
        for (who, c) in [("A", &ca), ("B", &cb)] {
            let v = c
                .get_or_load_with("k", &opts, || async { Ok::<_, Boom>("new".to_string()) })
                .await
                .unwrap();
            assert_eq!(
                v, "new",
                "{deployment} {}: {who} must not see the old value",
                case.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_fails_no_request_and_the_cache_resumes() {
    let mut redis = RedisServer::start();
    let prefix = unique("killed");
    let a = redis_engine(&redis.url(), &prefix);
    let b = redis_engine(&redis.url(), &prefix);
    subscribed(&[&a, &b]).await;
    let ca: Cache<str, u32> = Cache::new(&a, "k");
    let cb: Cache<str, u32> = Cache::new(&b, "k");
    let loads = Arc::new(AtomicUsize::new(0));
    let load = |v: u32, loads: &Arc<AtomicUsize>| {
        let loads = Arc::clone(loads);
        move || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Boom>(v)
        }
    };
    assert_eq!(ca.get_or_load("x", load(1, &loads)).await.unwrap(), 1);
    redis.kill();
    // Every call answers, from L1 or the loader, within the Redis timeout.
    for round in 0..20 {
        let start = Instant::now();
        let v = cb.get_or_load("x", load(1, &loads)).await.unwrap();
        assert_eq!(v, 1, "round {round}");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "round {round} took {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually(
        "A to notice the lost subscription",
        Duration::from_secs(3),
        || async { (!a.is_subscribed()).then_some(()) },
    )
    .await;
    redis.restart();
    subscribed(&[&a, &b]).await;
    // Resumed: L2 and invalidation work again across the instances.
    ca.set("y", &5).await.unwrap();
    assert_eq!(cb.get("y").await, Some(5), "B reads A's write through L2");
    ca.invalidate("y").await.unwrap();
    eventually("B to drop y", Duration::from_secs(2), || async {
        cb.get("y").await.is_none().then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// The HTTP face

type App = BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

/// An origin whose responses a test sets per path, counting the calls it gets.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicUsize>,
    version: Arc<AtomicUsize>,
    headers: Arc<Mutex<Vec<(&'static str, String)>>>,
    status: Arc<Mutex<Option<StatusCode>>>,
    body_size: Arc<Mutex<Option<usize>>>,
    conditional_seen: Arc<AtomicUsize>,
}

impl Origin {
    fn app(&self) -> App {
        let o = self.clone();
        BoxCloneSyncService::new(tower::service_fn(move |req: Request<Full<Bytes>>| {
            let o = o.clone();
            async move {
                o.calls.fetch_add(1, Ordering::SeqCst);
                for h in ["if-none-match", "if-modified-since", "range"] {
                    if req.headers().contains_key(h) {
                        o.conditional_seen.fetch_add(1, Ordering::SeqCst);
                    }
                }
                if req.method() == Method::PUT {
                    o.version.fetch_add(1, Ordering::SeqCst);
                    return Ok(Response::new(Full::new(Bytes::from_static(b"ok"))));
                }
                let v = o.version.load(Ordering::SeqCst);
                let body = match *o.body_size.lock().unwrap() {
                    Some(n) => "x".repeat(n),
                    None => format!("{} v{v}", req.uri()),
                };
                let mut res = Response::new(Full::new(Bytes::from(body)));
                *res.status_mut() = o.status.lock().unwrap().unwrap_or(StatusCode::OK);
                for (n, v) in o.headers.lock().unwrap().iter() {
                    res.headers_mut()
                        .append(*n, HeaderValue::from_str(v).unwrap());
                }
                Ok::<_, Infallible>(res)
            }
        }))
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

async fn send<S>(svc: &S, method: Method, uri: &str, headers: &[(&str, &str)]) -> Got
where
    S: tower::Service<Request<Full<Bytes>>, Error = Infallible> + Clone,
    S::Response: Into<Response<tower_scale::cache::CacheBody<Full<Bytes>>>>,
{
    let mut req = Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let res: Response<_> = svc
        .clone()
        .oneshot(req.body(Full::default()).unwrap())
        .await
        .unwrap()
        .into();
    let (parts, body) = res.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn cache_status(g: &Got) -> &str {
    g.headers
        .get("cache-status")
        .map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn http_storage_rules() {
    struct Case {
        name: &'static str,
        response_headers: &'static [(&'static str, &'static str)],
        request_headers: &'static [(&'static str, &'static str)],
        status: StatusCode,
        cached: bool,
    }
    let cases = [
        Case {
            name: "plain 200",
            response_headers: &[],
            request_headers: &[],
            status: StatusCode::OK,
            cached: true,
        },
        Case {
            name: "404 is not a configured status",
            response_headers: &[],
            request_headers: &[],
            status: StatusCode::NOT_FOUND,
            cached: false,
        },
        Case {
            name: "500",
            response_headers: &[],
            request_headers: &[],
            status: StatusCode::INTERNAL_SERVER_ERROR,
            cached: false,
        },
        Case {
            name: "set-cookie",
            response_headers: &[("set-cookie", "a=b")],
            request_headers: &[],
            status: StatusCode::OK,
            cached: false,
        },
        Case {
            name: "no-store",
            response_headers: &[("cache-control", "no-store")],
            request_headers: &[],
            status: StatusCode::OK,
            cached: false,
        },
        Case {
            name: "private",
            response_headers: &[("cache-control", "private, max-age=60")],
            request_headers: &[],
            status: StatusCode::OK,
            cached: false,
        },
        Case {
            name: "no-cache",
            response_headers: &[("cache-control", "no-cache")],
            request_headers: &[],
            status: StatusCode::OK,
            cached: false,
        },
        Case {
            name: "max-age=0",
            response_headers: &[("cache-control", "max-age=0")],
            request_headers: &[],
            status: StatusCode::OK,
            cached: false,
        },
        Case {
            name: "s-maxage=0 beats max-age",
            response_headers: &[("cache-control", "max-age=60, s-maxage=0")],
            request_headers: &[],
            status: StatusCode::OK,
            cached: false,
        },
        Case {
            name: "public max-age",
            response_headers: &[("cache-control", "public, max-age=60")],
            request_headers: &[],
            status: StatusCode::OK,
            cached: true,
        },
        Case {
            name: "vary *",
            response_headers: &[("vary", "*")],
            request_headers: &[],
            status: StatusCode::OK,
            cached: false,
        },
        Case {
            name: "vary on a configured header",
            response_headers: &[("vary", "Accept-Language")],
            request_headers: &[("accept-language", "en")],
            status: StatusCode::OK,
            cached: true,
        },
        Case {
            name: "vary on another header (a variant)",
            response_headers: &[("vary", "cookie")],
            request_headers: &[],
            status: StatusCode::OK,
            cached: true,
        },
        Case {
            name: "authorization",
            response_headers: &[],
            request_headers: &[("authorization", "Bearer x")],
            status: StatusCode::OK,
            cached: false,
        },
        Case {
            name: "request no-store",
            response_headers: &[],
            request_headers: &[("cache-control", "no-store")],
            status: StatusCode::OK,
            cached: false,
        },
        Case {
            name: "malformed cache-control",
            response_headers: &[("cache-control", "max-age=\"a,,=\"\"")],
            request_headers: &[],
            status: StatusCode::OK,
            cached: false,
        },
    ];
    for case in cases {
        let engine = CacheEngine::builder().build().unwrap();
        let layer = ResponseCacheLayer::builder(&engine)
            .vary(["accept-language"])
            .build()
            .unwrap();
        let origin = Origin::default();
        *origin.headers.lock().unwrap() = case
            .response_headers
            .iter()
            .map(|(n, v)| (*n, v.to_string()))
            .collect();
        *origin.status.lock().unwrap() = Some(case.status);
        let svc = layer.layer_service(origin.app());
        let first = send(&svc, Method::GET, "/r", case.request_headers).await;
        let second = send(&svc, Method::GET, "/r", case.request_headers).await;
        assert_eq!(first.status, case.status, "{}", case.name);
        assert_eq!(first.body, second.body, "{}", case.name);
        let want_calls = if case.cached { 1 } else { 2 };
        assert_eq!(
            origin.calls(),
            want_calls,
            "case {}: origin calls",
            case.name
        );
        if case.cached {
            assert!(
                cache_status(&first).contains("fwd=miss; stored"),
                "{}: {}",
                case.name,
                cache_status(&first)
            );
            assert!(
                cache_status(&second).contains("hit; ttl="),
                "{}: {}",
                case.name,
                cache_status(&second)
            );
            assert!(second.headers.contains_key("age"), "{}", case.name);
        } else {
            assert!(
                !cache_status(&second).contains("hit"),
                "{}: {}",
                case.name,
                cache_status(&second)
            );
        }
    }
}

#[tokio::test]
async fn http_keys_etags_head_and_body_cap() {
    let engine = CacheEngine::builder().build().unwrap();
    let layer = ResponseCacheLayer::builder(&engine)
        .vary(["accept-language"])
        .max_body(1024)
        .build()
        .unwrap();
    let origin = Origin::default();
    let svc = layer.layer_service(origin.app());

    // Query strings and Vary values are separate entries.
    for (uri, lang) in [("/a?x=1", "en"), ("/a?x=2", "en"), ("/a?x=1", "fr")] {
        let g = send(&svc, Method::GET, uri, &[("accept-language", lang)]).await;
        assert!(cache_status(&g).contains("fwd=miss"), "{uri} {lang}");
    }
    assert_eq!(origin.calls(), 3);
    let g = send(&svc, Method::GET, "/a?x=1", &[("accept-language", "fr")]).await;
    assert!(cache_status(&g).contains("hit"));
    assert_eq!(origin.calls(), 3);

    // ETag and If-None-Match.
    let etag = g.headers["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.len() == 34, "{etag}");
    for (inm, want) in [
        (etag.as_str(), StatusCode::NOT_MODIFIED),
        (&*format!("W/{etag}"), StatusCode::NOT_MODIFIED),
        ("*", StatusCode::NOT_MODIFIED),
        ("\"other\"", StatusCode::OK),
        ("garbage, \"", StatusCode::OK),
    ] {
        let g = send(
            &svc,
            Method::GET,
            "/a?x=1",
            &[("accept-language", "fr"), ("if-none-match", inm)],
        )
        .await;
        assert_eq!(g.status, want, "If-None-Match {inm}");
        if want == StatusCode::NOT_MODIFIED {
            assert!(g.body.is_empty());
            assert_eq!(g.headers["etag"], etag.as_str());
        }
    }
    // Every instance computes the same ETag: it comes from the body.
    let other = CacheEngine::builder().build().unwrap();
    let svc2 = ResponseCacheLayer::new(&other).layer_service(origin.app());
    let g2 = send(&svc2, Method::GET, "/a?x=1", &[("accept-language", "fr")]).await;
    assert_eq!(g2.headers["etag"], etag.as_str());

    // HEAD is answered from the GET entry, without a body.
    let calls = origin.calls();
    let h = send(&svc, Method::HEAD, "/a?x=1", &[("accept-language", "fr")]).await;
    assert_eq!(origin.calls(), calls);
    assert!(h.body.is_empty());
    assert_eq!(
        h.headers["content-length"],
        g.body.len().to_string().as_str()
    );
    // A HEAD miss passes through and stores nothing.
    send(&svc, Method::HEAD, "/head-only", &[]).await;
    send(&svc, Method::HEAD, "/head-only", &[]).await;
    assert_eq!(origin.calls(), calls + 2);

    // A body over the cap is streamed whole and not stored.
    *origin.body_size.lock().unwrap() = Some(4096);
    let calls = origin.calls();
    for _ in 0..2 {
        let g = send(&svc, Method::GET, "/big", &[]).await;
        assert_eq!(g.body.len(), 4096);
        assert!(!cache_status(&g).contains("stored"));
    }
    assert_eq!(origin.calls(), calls + 2);
    *origin.body_size.lock().unwrap() = Some(1024);
    send(&svc, Method::GET, "/at-cap", &[]).await;
    let g = send(&svc, Method::GET, "/at-cap", &[]).await;
    assert!(
        cache_status(&g).contains("hit"),
        "a body of exactly the cap is stored"
    );

    // A conditional or ranged miss asks the origin for the whole response, stores it, and
    // answers the condition itself.
    let g = send(
        &svc,
        Method::GET,
        "/conditional",
        &[("if-none-match", "\"nope\""), ("range", "bytes=0-1")],
    )
    .await;
    assert_eq!(g.status, StatusCode::OK);
    assert!(cache_status(&g).contains("stored"), "{}", cache_status(&g));
    assert_eq!(origin.conditional_seen.load(Ordering::SeqCst), 0);
    let etag = g.headers["etag"].to_str().unwrap().to_owned();
    let g = send(
        &svc,
        Method::GET,
        "/conditional",
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(g.status, StatusCode::NOT_MODIFIED);

    // A request's no-cache refetches and stores the fresh result.
    let calls = origin.calls();
    let g = send(
        &svc,
        Method::GET,
        "/at-cap",
        &[("cache-control", "no-cache")],
    )
    .await;
    assert!(
        cache_status(&g).contains("fwd=request; stored"),
        "{}",
        cache_status(&g)
    );
    assert_eq!(origin.calls(), calls + 1);
}

/// A client cannot fill the cache with entries under long made-up URLs: a key over the
/// cap passes through, stores nothing, and every such request reaches the origin.
#[tokio::test]
async fn keys_over_the_cap_pass_through_and_store_nothing() {
    let engine = CacheEngine::builder().build().unwrap();
    let layer = ResponseCacheLayer::builder(&engine)
        .vary(["accept-language"])
        .max_key(64)
        .build()
        .unwrap();
    let origin = Origin::default();
    let svc = layer.layer_service(origin.app());
    let long = format!("/a?{}", "x".repeat(60));
    for _ in 0..3 {
        let g = send(&svc, Method::GET, &long, &[]).await;
        assert_eq!(g.status, StatusCode::OK);
        assert!(
            cache_status(&g).contains("fwd=bypass; detail=key-too-long"),
            "{}",
            cache_status(&g)
        );
    }
    assert_eq!(origin.calls(), 3);
    // The vary headers' values count towards the key.
    let g = send(
        &svc,
        Method::GET,
        "/a",
        &[("accept-language", &"f".repeat(60))],
    )
    .await;
    assert!(
        cache_status(&g).contains("key-too-long"),
        "{}",
        cache_status(&g)
    );
    // A key within the cap is cached as usual.
    for want in ["fwd=miss", "hit"] {
        let g = send(&svc, Method::GET, "/a?x=1", &[("accept-language", "en")]).await;
        assert!(cache_status(&g).contains(want), "{}", cache_status(&g));
    }
    assert_eq!(origin.calls(), 5);
    assert_eq!(engine.local_entries(), 1);
}

#[tokio::test]
async fn a_request_the_refresh_hook_picks_is_answered_by_the_origin_and_replaces_the_entry() {
    let engine = CacheEngine::builder().build().unwrap();
    let layer = ResponseCacheLayer::builder(&engine)
        .refresh_if(|req| req.headers.contains_key("x-wrote"))
        .build()
        .unwrap();
    let origin = Origin::default();
    let svc = layer.layer_service(origin.app());
    let g = send(&svc, Method::GET, "/r", &[]).await;
    assert_eq!(g.body, "/r v0");
    origin.version.fetch_add(1, Ordering::SeqCst);
    // Others still get the entry; the picked request goes to the origin, whose answer
    // replaces it.
    assert_eq!(send(&svc, Method::GET, "/r", &[]).await.body, "/r v0");
    let g = send(&svc, Method::GET, "/r", &[("x-wrote", "1")]).await;
    assert_eq!(g.body, "/r v1");
    assert!(
        cache_status(&g).contains("fwd=request; stored"),
        "{}",
        cache_status(&g)
    );
    let g = send(&svc, Method::GET, "/r", &[]).await;
    assert_eq!(g.body, "/r v1");
    assert!(cache_status(&g).contains("hit"), "{}", cache_status(&g));
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn responses_varying_on_other_headers_are_stored_per_variant() {
    for deployment in ["in process", "redis", "cluster"] {
        let prefix = unique("variants");
        let engine = match deployment {
            "in process" => CacheEngine::builder().build().unwrap(),
            d => engine_on(d, &prefix),
        };
        // Only `accept` is configured; the origin also varies on `accept-language`.
        let layer = ResponseCacheLayer::builder(&engine)
            .vary(["accept"])
            .build()
            .unwrap();
        let origin = Origin::default();
        *origin.headers.lock().unwrap() = vec![("vary", "Accept, Accept-Language".to_owned())];
        let svc = layer.layer_service(origin.app());
        let get = |lang: &'static str| {
            let svc = svc.clone();
            async move { send(&svc, Method::GET, "/v", &[("accept-language", lang)]).await }
        };
        assert!(cache_status(&get("en").await).contains("stored"));
        assert!(
            cache_status(&get("fr").await).contains("stored"),
            "fr is another variant"
        );
        assert_eq!(origin.calls(), 2, "{deployment}");
        for lang in ["en", "fr", "en"] {
            let g = get(lang).await;
            assert!(
                cache_status(&g).contains("hit"),
                "{lang}: {}",
                cache_status(&g)
            );
        }
        assert_eq!(
            origin.calls(),
            2,
            "{deployment}: variants answered from the cache"
        );
        // A PUT to the URI drops every variant.
        send(&svc, Method::PUT, "/v", &[]).await;
        let g = get("fr").await;
        assert!(
            cache_status(&g).contains("fwd=miss"),
            "{}",
            cache_status(&g)
        );
    }
}

#[tokio::test]
async fn http_bad_input_never_panics() {
    let engine = CacheEngine::builder().build().unwrap();
    let layer = ResponseCacheLayer::builder(&engine)
        .vary(["accept"])
        .build()
        .unwrap();
    let origin = Origin::default();
    let svc = layer.layer_service(origin.app());
    let huge = "max-age=1,".repeat(10_000);
    let garbage = "\"\\\",,,;;==W/\"".repeat(1000);
    let inputs: [(&str, &str); 6] = [
        ("cache-control", &huge),
        ("cache-control", &garbage),
        ("if-none-match", &garbage),
        ("if-none-match", &huge),
        ("accept", &garbage),
        ("cache-control", "max-age=99999999999999999999999999999"),
    ];
    for (name, value) in inputs {
        let g = send(&svc, Method::GET, "/bad", &[(name, value)]).await;
        assert_eq!(g.status, StatusCode::OK, "{name}");
    }
    // Malformed response headers: never stored, never a panic.
    for value in [huge.as_str(), garbage.as_str()] {
        *origin.headers.lock().unwrap() = vec![
            ("cache-control", value.to_owned()),
            ("vary", value.to_owned()),
        ];
        let g = send(&svc, Method::GET, "/bad-response", &[]).await;
        assert_eq!(g.status, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_invalidates_the_resource_and_its_list_on_every_instance() {
    for d in DEPLOYMENTS {
        put_invalidates(d).await;
    }
}

async fn put_invalidates(deployment: &str) {
    let prefix = unique("http-put");
    let a = engine_on(deployment, &prefix);
    let b = engine_on(deployment, &prefix);
    subscribed(&[&a, &b]).await;
    let layer = |e: &CacheEngine| {
        ResponseCacheLayer::builder(e)
            .invalidates(|req| {
                if req.uri.path().starts_with("/products/") {
                    vec![ResponseCacheLayer::path_tag("/products")]
                } else {
                    vec![]
                }
            })
            .build()
            .unwrap()
    };
    let origin = Origin::default();
    let sa = layer(&a).layer_service(origin.app());
    let sb = layer(&b).layer_service(origin.app());
    for uri in ["/products/1", "/products?limit=5", "/products/2"] {
        let first = send(&sa, Method::GET, uri, &[]).await;
        assert!(first.body.ends_with(b"v0"));
        // B reads A's entry from L2.
        let g = send(&sb, Method::GET, uri, &[]).await;
        assert!(
            cache_status(&g).contains("detail=l2"),
            "{uri}: {}",
            cache_status(&g)
        );
        let g = send(&sb, Method::GET, uri, &[]).await;
        assert!(
            cache_status(&g).contains("hit; ttl="),
            "{uri}: {}",
            cache_status(&g)
        );
    }
    let put = send(&sa, Method::PUT, "/products/1", &[]).await;
    assert_eq!(put.status, StatusCode::OK);
    // The product and the list change on B; another product does not.
    for (uri, changed) in [
        ("/products/1", true),
        ("/products?limit=5", true),
        ("/products/2", false),
    ] {
        eventually(&format!("B's {uri}"), Duration::from_secs(2), || async {
            let g = send(&sb, Method::GET, uri, &[]).await;
            (g.body.ends_with(b"v1") == changed).then_some(())
        })
        .await;
        let g = send(&sa, Method::GET, uri, &[]).await;
        assert_eq!(g.body.ends_with(b"v1"), changed, "A's {uri}");
    }
}

#[tokio::test(start_paused = true)]
async fn http_stale_while_revalidate_and_stale_if_error() {
    let engine = CacheEngine::builder()
        .clock(Clock::tokio())
        .ttl(Duration::from_secs(10))
        .ttl_jitter(0.0)
        .stale_while_revalidate(Duration::from_secs(5))
        .stale_if_error(Duration::from_secs(60))
        .build()
        .unwrap();
    let origin = Origin::default();
    let svc = ResponseCacheLayer::new(&engine).layer_service(origin.app());
    let g = send(&svc, Method::GET, "/p", &[]).await;
    assert!(g.body.ends_with(b"v0"));
    origin.version.fetch_add(1, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(12)).await;
    // Stale within SWR: the old body at once, with a negative ttl, and one refresh.
    let g = send(&svc, Method::GET, "/p", &[]).await;
    assert!(g.body.ends_with(b"v0"));
    assert!(cache_status(&g).contains("ttl=-"), "{}", cache_status(&g));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(origin.calls(), 2);
    let g = send(&svc, Method::GET, "/p", &[]).await;
    assert!(g.body.ends_with(b"v1"), "refreshed");
    // The origin fails: within SIE the stale copy is served instead of the 500.
    *origin.status.lock().unwrap() = Some(StatusCode::INTERNAL_SERVER_ERROR);
    tokio::time::advance(Duration::from_secs(20)).await;
    let g = send(&svc, Method::GET, "/p", &[]).await;
    assert_eq!(g.status, StatusCode::OK);
    assert!(g.body.ends_with(b"v1"));
    assert!(
        cache_status(&g).contains("stale-if-error"),
        "{}",
        cache_status(&g)
    );
    tokio::time::advance(Duration::from_secs(60)).await;
    let g = send(&svc, Method::GET, "/p", &[]).await;
    assert_eq!(
        g.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "past SIE the failure shows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscriber_goes_away_with_the_engine() {
    let prefix = unique("subscriber");
    let backend = redis_backend(&redis_url(), &prefix);
    let channel = backend.channel("cache-invalidations");
    let subscribers = || {
        let channel = channel.clone();
        async move {
            let (_, n): (String, i64) =
                support::redis_raw(&redis_url(), &["PUBSUB", "NUMSUB", &channel]).await;
            n
        }
    };
    let engine = redis_engine(&redis_url(), &prefix);
    subscribed(&[&engine]).await;
    assert_eq!(subscribers().await, 1);
    drop(engine);
    eventually(
        "the subscriber to leave",
        Duration::from_secs(3),
        || async { (subscribers().await == 0).then_some(()) },
    )
    .await;
}

#[test]
fn layers_and_futures_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_send_sync::<CacheEngine>();
    assert_send_sync::<Cache<str, String>>();
    assert_send_sync::<ResponseCacheLayer>();
    assert_send_sync::<tower_scale::cache::ResponseCache<App>>();
    assert_send::<
        tower_scale::cache::ResponseFuture<
            <App as tower::Service<Request<Full<Bytes>>>>::Future,
            Full<Bytes>,
            Infallible,
        >,
    >();
}

#[test]
fn bad_layer_config_names_the_setting() {
    let engine = CacheEngine::builder().build().unwrap();
    let cases = [
        (
            "statuses",
            ResponseCacheLayer::builder(&engine).statuses([]),
        ),
        (
            "statuses",
            ResponseCacheLayer::builder(&engine).statuses([StatusCode::PARTIAL_CONTENT]),
        ),
        (
            "vary",
            ResponseCacheLayer::builder(&engine).vary(["bad header"]),
        ),
        ("max_body", ResponseCacheLayer::builder(&engine).max_body(0)),
        ("max_key", ResponseCacheLayer::builder(&engine).max_key(0)),
        ("name", ResponseCacheLayer::builder(&engine).name("a; b")),
        ("name", ResponseCacheLayer::builder(&engine).name("cache-é")),
        ("name", ResponseCacheLayer::builder(&engine).name("")),
    ];
    for (setting, b) in cases {
        assert_eq!(b.build().unwrap_err().setting(), setting);
    }
}

/// With read replicas, a reader can refill the cache from one that has not replayed a
/// write yet; `reinvalidate_after` drops that copy a moment later.
#[tokio::test]
async fn a_refill_from_a_lagging_replica_is_dropped_by_the_second_invalidation() {
    let engine = CacheEngine::builder().build().unwrap();
    let layer = ResponseCacheLayer::builder(&engine)
        .reinvalidate_after(Duration::from_millis(200))
        .build()
        .unwrap();
    // The origin's "replica" serves the previous version for the first read after a write.
    let written = Arc::new(AtomicUsize::new(1));
    let lagging = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let origin = {
        let (written, lagging) = (Arc::clone(&written), Arc::clone(&lagging));
        BoxCloneSyncService::new(tower::service_fn(move |req: Request<Full<Bytes>>| {
            let (written, lagging) = (Arc::clone(&written), Arc::clone(&lagging));
            async move {
                if req.method() == Method::PUT {
                    written.fetch_add(1, Ordering::SeqCst);
                    lagging.store(true, Ordering::SeqCst);
                    return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"ok",
                    ))));
                }
                let v = written.load(Ordering::SeqCst);
                let seen = if lagging.swap(false, Ordering::SeqCst) {
                    v - 1
                } else {
                    v
                };
                Ok(Response::new(Full::new(Bytes::from(format!("v{seen}")))))
            }
        }))
    };
    let svc = layer.layer_service(origin);
    assert_eq!(send(&svc, Method::GET, "/p", &[]).await.body, "v1");
    send(&svc, Method::PUT, "/p", &[]).await;
    // The read right after the write: a miss served stale by the lagging replica, stored.
    assert_eq!(send(&svc, Method::GET, "/p", &[]).await.body, "v1");
    let g = send(&svc, Method::GET, "/p", &[]).await;
    assert_eq!(
        (&g.body[..], cache_status(&g).contains("hit")),
        (&b"v1"[..], true)
    );
    // The second invalidation drops it.
    eventually("the stale copy to go", Duration::from_secs(2), || async {
        (send(&svc, Method::GET, "/p", &[]).await.body == "v2").then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// The HTTP layer as a shared cache (RFC 9111, 9213, 5861, 9211): each test's origin sets
// the headers; each checks what reaches the client and what reaches the origin.

/// A request as the origin saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    uri: String,
    headers: HeaderMap,
}

type Answer = (StatusCode, Vec<(&'static str, String)>, String);
type Handler = Arc<dyn Fn(&Seen, usize) -> Answer + Send + Sync>;

/// An origin written per test: `answer` gets each request and its number (from 0).
#[derive(Clone)]
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    answer: Handler,
}

impl Recorder {
    fn new(answer: impl Fn(&Seen, usize) -> Answer + Send + Sync + 'static) -> Self {
        Self {
            seen: Arc::default(),
            answer: Arc::new(answer),
        }
    }

    fn app(&self) -> App {
        let o = self.clone();
        BoxCloneSyncService::new(tower::service_fn(move |req: Request<Full<Bytes>>| {
            let o = o.clone();
            async move {
                let seen = Seen {
                    method: req.method().clone(),
                    uri: req.uri().to_string(),
                    headers: req.headers().clone(),
                };
                let n = {
                    let mut all = o.seen.lock().unwrap();
                    all.push(seen.clone());
                    all.len() - 1
                };
                if seen.uri.starts_with("/slow") {
                    // Long enough for concurrent requests to join this one's load.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let (status, headers, body) = (o.answer)(&seen, n);
                let mut res = Response::new(Full::new(Bytes::from(body)));
                *res.status_mut() = status;
                for (name, value) in headers {
                    res.headers_mut()
                        .append(name, HeaderValue::from_str(&value).unwrap());
                }
                Ok::<_, Infallible>(res)
            }
        }))
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// Whether the origin's request carried `name: value`.
fn asks(seen: &Seen, name: &str, value: &str) -> bool {
    seen.headers.get(name).is_some_and(|v| v == value)
}

/// An origin that answers `Cache-Control: cc` and `ETag: etag` with `body`, and a bare 304
/// to a request whose `If-None-Match` is `etag`.
fn etag_origin(cc: &'static str, etag: &'static str, body: &'static str) -> Recorder {
    Recorder::new(move |seen, _| {
        if asks(seen, "if-none-match", etag) {
            return (StatusCode::NOT_MODIFIED, vec![], String::new());
        }
        ok_with(&[("cache-control", cc), ("etag", etag)], body)
    })
}

fn ok_with(headers: &[(&'static str, &str)], body: &str) -> Answer {
    (
        StatusCode::OK,
        headers.iter().map(|(n, v)| (*n, v.to_string())).collect(),
        body.to_owned(),
    )
}

fn paused_http_engine() -> CacheEngine {
    CacheEngine::builder()
        .clock(Clock::tokio())
        .ttl(Duration::from_secs(10))
        .ttl_jitter(0.0)
        .stale_while_revalidate(Duration::ZERO)
        .stale_if_error(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn header<'a>(g: &'a Got, name: &str) -> &'a str {
    g.headers.get(name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test(start_paused = true)]
async fn age_grows_from_the_age_a_response_arrived_with_and_a_bad_age_is_stale() {
    let engine = paused_http_engine();
    let origin = Recorder::new(|seen, _| {
        let age = if seen.uri.ends_with("bad") {
            "old, 0"
        } else {
            "30"
        };
        ok_with(&[("cache-control", "max-age=600"), ("age", age)], "x")
    });
    let svc = ResponseCacheLayer::new(&engine).layer_service(origin.app());
    let first = send(&svc, Method::GET, "/good", &[]).await;
    assert_eq!(header(&first, "age"), "30");
    tokio::time::advance(Duration::from_secs(10)).await;
    let hit = send(&svc, Method::GET, "/good", &[]).await;
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    assert_eq!(header(&hit, "age"), "40", "30 on arrival plus 10 here");
    assert_eq!(origin.calls(), 1);
    // `Age: old, 0` is not one non-negative integer: the response is stale, not reused.
    send(&svc, Method::GET, "/bad", &[]).await;
    let again = send(&svc, Method::GET, "/bad", &[]).await;
    assert!(!cache_status(&again).contains("hit"));
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_stale_response_is_revalidated_with_one_conditional_request_and_no_body() {
    let engine = paused_http_engine();
    // Version 1 of the resource; a matching validator gets a 304 with updated fields.
    let origin = Recorder::new(|seen, _| {
        let etag_matches = asks(seen, "if-none-match", "\"v1\"");
        let since_matches = seen
            .headers
            .get("if-modified-since")
            .is_some_and(|v| v == "Tue, 01 Dec 2026 10:00:00 GMT");
        let validators: &[(&'static str, &str)] = if seen.uri.ends_with("etag") {
            &[("etag", "\"v1\"")]
        } else {
            &[("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT")]
        };
        if etag_matches || since_matches {
            return (
                StatusCode::NOT_MODIFIED,
                vec![
                    ("cache-control", "max-age=10".into()),
                    ("x-revalidated", "yes".into()),
                ],
                String::new(),
            );
        }
        let mut headers = vec![
            ("cache-control", "max-age=10".to_owned()),
            ("x-revalidated", "no".to_owned()),
            ("content-type", "text/plain".to_owned()),
        ];
        headers.extend(validators.iter().map(|(n, v)| (*n, v.to_string())));
        (StatusCode::OK, headers, "the whole body".into())
    });
    let svc = ResponseCacheLayer::new(&engine).layer_service(origin.app());
    for (path, condition) in [("/etag", "if-none-match"), ("/lm", "if-modified-since")] {
        let before = origin.calls();
        send(&svc, Method::GET, path, &[]).await;
        tokio::time::advance(Duration::from_secs(11)).await;
        let g = send(&svc, Method::GET, path, &[]).await;
        assert_eq!(g.status, StatusCode::OK, "{path}");
        assert_eq!(&g.body[..], b"the whole body", "{path}: the stored body");
        assert_eq!(header(&g, "x-revalidated"), "yes", "{path}: fields updated");
        assert_eq!(header(&g, "content-type"), "text/plain", "{path}");
        assert!(
            cache_status(&g).contains("fwd=stale; fwd-status=304; stored"),
            "{path}: {}",
            cache_status(&g)
        );
        let seen = origin.seen();
        assert_eq!(seen.len(), before + 2, "{path}: one revalidation");
        assert!(
            seen[before + 1].headers.contains_key(condition),
            "{path}: the revalidation was conditional: {:?}",
            seen[before + 1].headers
        );
        assert!(!seen[before].headers.contains_key(condition), "{path}");
        // Fresh again for the 304's max-age: no origin call.
        let hit = send(&svc, Method::GET, path, &[]).await;
        assert!(cache_status(&hit).contains("hit"), "{path}");
        assert_eq!(header(&hit, "x-revalidated"), "yes", "{path}");
        assert_eq!(origin.calls(), before + 2, "{path}");
    }
}

#[tokio::test(start_paused = true)]
async fn no_cache_responses_are_stored_and_revalidated_before_each_reuse() {
    let engine = paused_http_engine();
    let origin = etag_origin("no-cache", "\"a\"", "body a");
    let svc = ResponseCacheLayer::new(&engine).layer_service(origin.app());
    for _ in 0..3 {
        let g = send(&svc, Method::GET, "/n", &[]).await;
        assert_eq!(&g.body[..], b"body a");
    }
    let seen = origin.seen();
    assert_eq!(seen.len(), 3, "every reuse asks the origin");
    assert!(!seen[0].headers.contains_key("if-none-match"));
    assert!(seen[1].headers.contains_key("if-none-match"));
    assert!(seen[2].headers.contains_key("if-none-match"));
}

#[tokio::test(start_paused = true)]
async fn must_revalidate_is_never_served_stale_even_when_the_origin_fails() {
    let engine = CacheEngine::builder()
        .clock(Clock::tokio())
        .ttl_jitter(0.0)
        .stale_while_revalidate(Duration::from_secs(30))
        .stale_if_error(Duration::from_secs(600))
        .build()
        .unwrap();
    let failing = Arc::new(AtomicUsize::new(0));
    let f = Arc::clone(&failing);
    let origin = Recorder::new(move |seen, _| {
        if f.load(Ordering::SeqCst) == 1 {
            return (StatusCode::BAD_GATEWAY, vec![], "down".into());
        }
        let cc = if seen.uri.ends_with("proxy") {
            "max-age=1, proxy-revalidate"
        } else {
            "max-age=1, must-revalidate"
        };
        ok_with(&[("cache-control", cc)], "ok")
    });
    let svc = ResponseCacheLayer::new(&engine).layer_service(origin.app());
    for path in ["/must", "/proxy"] {
        failing.store(0, Ordering::SeqCst);
        send(&svc, Method::GET, path, &[]).await;
        tokio::time::advance(Duration::from_secs(2)).await;
        failing.store(1, Ordering::SeqCst);
        let g = send(&svc, Method::GET, path, &[]).await;
        assert_eq!(
            g.status,
            StatusCode::BAD_GATEWAY,
            "{path}: {}",
            cache_status(&g)
        );
    }
}

#[tokio::test]
async fn qualified_private_and_no_cache_strip_the_named_fields_from_what_is_stored() {
    let engine = CacheEngine::builder().build().unwrap();
    let origin = Recorder::new(|_, _| {
        ok_with(
            &[
                (
                    "cache-control",
                    "max-age=60, private=\"x-user\", no-cache=\"x-secret\"",
                ),
                ("x-user", "alice"),
                ("x-secret", "s3"),
                ("x-shared", "yes"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
            ],
            "page",
        )
    });
    let svc = ResponseCacheLayer::new(&engine).layer_service(origin.app());
    let first = send(&svc, Method::GET, "/p", &[]).await;
    assert_eq!(
        header(&first, "x-user"),
        "alice",
        "the asker gets the origin's fields"
    );
    let hit = send(&svc, Method::GET, "/p", &[]).await;
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    assert_eq!(origin.calls(), 1);
    for gone in ["x-user", "x-secret", "x-hop"] {
        assert!(!hit.headers.contains_key(gone), "{gone} was stored");
    }
    assert_eq!(header(&hit, "x-shared"), "yes");
    assert_eq!(&hit.body[..], b"page");
}

#[tokio::test]
async fn any_final_status_with_explicit_freshness_is_stored_and_defaults_can_be_off() {
    let engine = CacheEngine::builder().build().unwrap();
    let origin = Recorder::new(|seen, n| {
        let status = if seen.uri.starts_with("/404") {
            StatusCode::NOT_FOUND
        } else if seen.uri.starts_with("/103") {
            StatusCode::from_u16(103).unwrap()
        } else {
            StatusCode::OK
        };
        let headers = if seen.uri.ends_with("fresh") {
            vec![("cache-control", "max-age=60".to_owned())]
        } else {
            vec![]
        };
        (status, headers, format!("answer {n}"))
    });
    let default = ResponseCacheLayer::new(&engine).layer_service(origin.app());
    let explicit_only = ResponseCacheLayer::builder(&engine)
        .default_freshness(false)
        .build()
        .unwrap()
        .layer_service(origin.app());
    // Each case: the layer, the path, whether the second request is a hit.
    let cases: [(&str, &App2, &str, bool); 6] = [
        ("404 with max-age", &default, "/404/fresh", true),
        ("404 without", &default, "/404/plain", false),
        ("103 is never stored", &default, "/103/fresh", false),
        ("200 without, with defaults", &default, "/200/plain", true),
        (
            "200 without, defaults off",
            &explicit_only,
            "/200/plain-off",
            false,
        ),
        (
            "200 with max-age, defaults off",
            &explicit_only,
            "/200/off-fresh",
            true,
        ),
    ];
    for (name, svc, path, hit) in cases {
        let before = origin.calls();
        let a = send(svc, Method::GET, path, &[]).await;
        let b = send(svc, Method::GET, path, &[]).await;
        let want = if hit { 1 } else { 2 };
        assert_eq!(origin.calls() - before, want, "{name}");
        assert_eq!(a.body == b.body, hit, "{name}");
    }
}

type App2 = tower_scale::cache::ResponseCache<App>;

#[tokio::test]
async fn authorized_requests_are_stored_only_when_the_response_says_it_is_shared() {
    use tower_scale::cache::AuthorizedRequests;
    let engine = CacheEngine::builder().build().unwrap();
    let origin = Recorder::new(|seen, n| {
        let cc = match seen.uri.as_str() {
            "/public" => "public, max-age=60",
            "/s-maxage" => "s-maxage=60",
            "/must-revalidate" => "max-age=60, must-revalidate",
            _ => "max-age=60",
        };
        ok_with(&[("cache-control", cc)], &format!("{n}"))
    });
    let shared = ResponseCacheLayer::builder(&engine)
        .authorized(AuthorizedRequests::Shared)
        .build()
        .unwrap()
        .layer_service(origin.app());
    let auth = [("authorization", "Bearer t")];
    for (path, stored) in [
        ("/public", true),
        ("/s-maxage", true),
        ("/must-revalidate", true),
        ("/plain", false),
    ] {
        let before = origin.calls();
        send(&shared, Method::GET, path, &auth).await;
        let g = send(&shared, Method::GET, path, &auth).await;
        assert_eq!(
            origin.calls() - before,
            if stored { 1 } else { 2 },
            "{path}"
        );
        assert_eq!(cache_status(&g).contains("hit"), stored, "{path}");
    }
    // The default still lets them all pass.
    let bypass = ResponseCacheLayer::new(&engine).layer_service(origin.app());
    let g = send(&bypass, Method::GET, "/public", &auth).await;
    assert!(cache_status(&g).contains("fwd=bypass"));
}

#[tokio::test(start_paused = true)]
async fn a_stored_error_is_never_the_stale_if_error_fallback() {
    let engine = paused_http_engine();
    let origin = Recorder::new(|_, n| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            vec![],
            format!("outage report {n}"),
        )
    });
    let svc = ResponseCacheLayer::builder(&engine)
        .statuses([StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE])
        .build()
        .unwrap()
        .layer_service(origin.app());
    let first = send(&svc, Method::GET, "/e", &[]).await;
    assert!(
        cache_status(&first).contains("stored"),
        "the operator listed 503"
    );
    tokio::time::advance(Duration::from_secs(11)).await;
    // Stale, within stale-if-error, and the origin fails again: the client sees the new
    // failure, not the stored one dressed as a fallback.
    let g = send(&svc, Method::GET, "/e", &[]).await;
    assert_eq!(g.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(&g.body[..], b"outage report 1");
    assert!(
        !cache_status(&g).contains("stale-if-error"),
        "{}",
        cache_status(&g)
    );
}

#[tokio::test]
async fn unsafe_methods_invalidate_their_target_and_the_locations_they_name() {
    let engine = CacheEngine::builder().build().unwrap();
    let origin = Recorder::new(|seen, n| {
        if seen.method == Method::GET {
            return ok_with(
                &[("cache-control", "max-age=600")],
                &format!("{} {n}", seen.uri),
            );
        }
        let mut headers = vec![];
        if seen.uri == "/orders" {
            headers.push(("location", "/orders/1".to_owned()));
            headers.push((
                "content-location",
                "http://shop.example/receipts/1".to_owned(),
            ));
        } else if seen.uri == "/elsewhere" {
            headers.push(("location", "http://other.example/kept".to_owned()));
        }
        (StatusCode::CREATED, headers, String::new())
    });
    let svc = ResponseCacheLayer::new(&engine).layer_service(origin.app());
    let host = [("host", "shop.example")];
    let paths = ["/a", "/orders/1", "/receipts/1", "/kept"];
    let bodies = async |svc: &App2| {
        let mut out = Vec::new();
        for p in paths {
            out.push(send(svc, Method::GET, p, &host).await.body);
        }
        out
    };
    let before = bodies(&svc).await;
    assert_eq!(bodies(&svc).await, before, "all cached");
    // An unknown method is unsafe: it invalidates its target.
    send(&svc, Method::from_bytes(b"PURGE").unwrap(), "/a", &host).await;
    // A POST invalidates what its Location and Content-Location name on this origin;
    // another origin's resource is left alone.
    send(&svc, Method::POST, "/orders", &host).await;
    send(&svc, Method::POST, "/elsewhere", &host).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = bodies(&svc).await;
    for (i, p) in paths.iter().take(3).enumerate() {
        assert_ne!(after[i], before[i], "{p} was not invalidated");
    }
    assert_eq!(
        after[3], before[3],
        "another origin's /kept was invalidated"
    );
    // OPTIONS is safe.
    send(&svc, Method::OPTIONS, "/a", &host).await;
    assert_eq!(bodies(&svc).await, after);
}

#[tokio::test]
async fn a_targeted_field_overrides_cache_control_and_never_reaches_clients() {
    let engine = CacheEngine::builder().build().unwrap();
    let origin = Recorder::new(|seen, n| {
        let (cc, cdn) = match seen.uri.as_str() {
            "/cdn-stores" => ("no-store", "max-age=60"),
            "/cdn-refuses" => ("max-age=60", "no-store"),
            "/cdn-private" => ("public, max-age=60", "private"),
            _ => ("max-age=60", "max-age=\"never\""),
        };
        ok_with(
            &[("cache-control", cc), ("cdn-cache-control", cdn)],
            &format!("{n}"),
        )
    });
    let svc = ResponseCacheLayer::builder(&engine)
        .targeted(["cdn-cache-control"])
        .build()
        .unwrap()
        .layer_service(origin.app());
    // The last case: an invalid targeted field is ignored, so Cache-Control applies.
    for (path, stored) in [
        ("/cdn-stores", true),
        ("/cdn-refuses", false),
        ("/cdn-private", false),
        ("/cdn-invalid", true),
    ] {
        let before = origin.calls();
        let a = send(&svc, Method::GET, path, &[]).await;
        let b = send(&svc, Method::GET, path, &[]).await;
        assert_eq!(
            origin.calls() - before,
            if stored { 1 } else { 2 },
            "{path}"
        );
        for g in [&a, &b] {
            assert!(
                !g.headers.contains_key("cdn-cache-control"),
                "{path}: forwarded"
            );
            assert!(g.headers.contains_key("cache-control"), "{path}");
        }
    }
    // Without the setting, the field is the origin's business and passes through.
    let other = CacheEngine::builder().build().unwrap();
    let plain = ResponseCacheLayer::new(&other).layer_service(origin.app());
    let g = send(&plain, Method::GET, "/cdn-stores", &[]).await;
    assert_eq!(header(&g, "cdn-cache-control"), "max-age=60");
}

#[tokio::test]
async fn expires_in_obsolete_formats_and_odd_case_is_understood() {
    let engine = CacheEngine::builder().build().unwrap();
    let origin = Recorder::new(|seen, _| {
        let at = std::time::SystemTime::now() + Duration::from_secs(120);
        let fixdate = httpdate::fmt_http_date(at); // "Sun, 06 Nov 1994 08:49:37 GMT"
        let expires = match seen.uri.as_str() {
            "/lower" => fixdate.to_lowercase(),
            "/upper" => fixdate.to_uppercase(),
            _ => {
                // RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT"
                let parts: Vec<&str> = fixdate.split(' ').collect();
                let day = match parts[0] {
                    "Mon," => "Monday",
                    "Tue," => "Tuesday",
                    "Wed," => "Wednesday",
                    "Thu," => "Thursday",
                    "Fri," => "Friday",
                    "Sat," => "Saturday",
                    _ => "Sunday",
                };
                format!(
                    "{day}, {}-{}-{} {} GMT",
                    parts[1],
                    parts[2],
                    &parts[3][2..],
                    parts[4]
                )
            }
        };
        ok_with(&[("expires", &expires)], "x")
    });
    let svc = ResponseCacheLayer::builder(&engine)
        .default_freshness(false)
        .build()
        .unwrap()
        .layer_service(origin.app());
    for path in ["/lower", "/upper", "/rfc850"] {
        let before = origin.calls();
        send(&svc, Method::GET, path, &[]).await;
        let g = send(&svc, Method::GET, path, &[]).await;
        assert!(
            cache_status(&g).contains("hit"),
            "{path}: {}",
            cache_status(&g)
        );
        assert_eq!(origin.calls() - before, 1, "{path}");
    }
}

#[tokio::test]
async fn equivalent_selecting_header_values_share_an_entry() {
    let engine = CacheEngine::builder().build().unwrap();
    let origin = Recorder::new(|seen, n| {
        let vary = if seen.uri == "/lang" {
            "accept-language"
        } else {
            "accept-encoding"
        };
        ok_with(&[("vary", vary)], &format!("{n}"))
    });
    let svc = ResponseCacheLayer::builder(&engine)
        .vary(["accept-encoding"])
        .build()
        .unwrap()
        .layer_service(origin.app());
    // Configured Vary header: order, case and spacing do not matter.
    for v in ["gzip, br", "br,gzip", "GZIP,  BR"] {
        send(&svc, Method::GET, "/enc", &[("accept-encoding", v)]).await;
    }
    assert_eq!(origin.calls(), 1);
    // A variant the response's own Vary names: case and spacing do not matter.
    for v in ["en-GB, fr;q=0.5", "en-gb,fr;q=0.5"] {
        send(&svc, Method::GET, "/lang", &[("accept-language", v)]).await;
    }
    assert_eq!(origin.calls(), 2);
    send(&svc, Method::GET, "/lang", &[("accept-language", "de")]).await;
    assert_eq!(
        origin.calls(),
        3,
        "a different value is a different variant"
    );
}

#[tokio::test]
async fn a_clients_if_modified_since_is_answered_from_the_cache() {
    let engine = CacheEngine::builder().build().unwrap();
    let lm = "Tue, 01 Dec 2026 10:00:00 GMT";
    let origin = Recorder::new(move |_, _| {
        ok_with(
            &[("cache-control", "max-age=60"), ("last-modified", lm)],
            "doc",
        )
    });
    let svc = ResponseCacheLayer::new(&engine).layer_service(origin.app());
    send(&svc, Method::GET, "/d", &[]).await;
    let g = send(&svc, Method::GET, "/d", &[("if-modified-since", lm)]).await;
    assert_eq!(g.status, StatusCode::NOT_MODIFIED);
    assert!(g.body.is_empty());
    let g = send(
        &svc,
        Method::GET,
        "/d",
        &[("if-modified-since", "Mon, 30 Nov 2026 10:00:00 GMT")],
    )
    .await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(origin.calls(), 1, "the origin never saw the conditions");
}

/// hyper answers `Expect: 100-continue` itself and hands a tower service the final
/// response only, so no interim response can reach the cache; one a service returns
/// anyway (as the 103 case above shows) is passed on, never stored.
#[tokio::test]
async fn over_a_real_connection_only_the_final_response_reaches_the_layer() {
    use axum::{Router, routing::get};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let engine = CacheEngine::builder().build().unwrap();
    let app: Router = Router::new()
        .route(
            "/echo",
            get(|body: Bytes| async move { format!("{} bytes", body.len()) }),
        )
        .layer(ResponseCacheLayer::new(&engine));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = vec![0u8; 1024];
    // A GET with a body and `Expect: 100-continue`: the handler reads the body, so hyper
    // sends `100 Continue` on the wire before the final 200.
    conn.write_all(
        b"GET /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let n = conn.read(&mut buf).await.unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    conn.write_all(b"hello").await.unwrap();
    let mut all = interim;
    while !all.contains("5 bytes") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {all}");
        all.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(all.contains("HTTP/1.1 200 OK"), "{all}");
    // What was stored is the final response: the next request is a hit with the 200.
    conn.write_all(b"GET /echo HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut again = String::new();
    while !again.contains("5 bytes") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {again}");
        again.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(again.starts_with("HTTP/1.1 200 OK"), "{again}");
    assert!(again.contains("hit; ttl="), "{again}");
    assert_eq!(engine.local_entries(), 1);
}

#[tokio::test]
async fn requests_waiting_on_a_load_never_get_the_targeted_field() {
    let engine = CacheEngine::builder().build().unwrap();
    let origin = Recorder::new(|_, n| {
        ok_with(
            &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "no-store"),
            ],
            &format!("{n}"),
        )
    });
    let svc = ResponseCacheLayer::builder(&engine)
        .targeted(["cdn-cache-control"])
        .build()
        .unwrap()
        .layer_service(origin.app());
    let (a, b, c) = tokio::join!(
        send(&svc, Method::GET, "/slow", &[]),
        send(&svc, Method::GET, "/slow", &[]),
        send(&svc, Method::GET, "/slow", &[]),
    );
    assert_eq!(
        origin.calls(),
        3,
        "not shareable: each waiter asked the origin"
    );
    for g in [a, b, c] {
        assert!(
            !g.headers.contains_key("cdn-cache-control"),
            "{:?}",
            g.headers
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_304_for_another_representation_is_not_applied_and_the_whole_response_is_fetched() {
    let engine = paused_http_engine();
    // The origin honours only If-Modified-Since and changed the resource within the
    // same second: its 304 carries the new ETag.
    let origin = Recorder::new(|seen, n| {
        let lm = "Tue, 01 Dec 2026 10:00:00 GMT";
        if n > 0 && seen.headers.contains_key("if-modified-since") {
            return (
                StatusCode::NOT_MODIFIED,
                vec![
                    ("etag", "\"v2\"".into()),
                    ("cache-control", "max-age=10".into()),
                ],
                String::new(),
            );
        }
        let etag = if n == 0 { "\"v1\"" } else { "\"v2\"" };
        ok_with(
            &[
                ("cache-control", "max-age=10"),
                ("etag", etag),
                ("last-modified", lm),
            ],
            &format!("version {}", if n == 0 { 1 } else { 2 }),
        )
    });
    let svc = ResponseCacheLayer::new(&engine).layer_service(origin.app());
    send(&svc, Method::GET, "/r", &[]).await;
    tokio::time::advance(Duration::from_secs(11)).await;
    let g = send(&svc, Method::GET, "/r", &[]).await;
    assert_eq!(&g.body[..], b"version 2", "{}", cache_status(&g));
    assert_eq!(header(&g, "etag"), "\"v2\"");
    let seen = origin.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen[1].headers.contains_key("if-none-match"));
    assert!(!seen[2].headers.contains_key("if-none-match"));
    assert!(!seen[2].headers.contains_key("if-modified-since"));
    let hit = send(&svc, Method::GET, "/r", &[]).await;
    assert_eq!(&hit.body[..], b"version 2");
}

#[tokio::test(start_paused = true)]
async fn a_variant_is_revalidated_like_any_response() {
    let engine = paused_http_engine();
    let origin = Recorder::new(|seen, _| {
        if asks(seen, "if-none-match", "\"fr1\"") {
            return (StatusCode::NOT_MODIFIED, vec![], String::new());
        }
        ok_with(
            &[
                ("cache-control", "max-age=10"),
                ("vary", "accept-language"),
                ("etag", "\"fr1\""),
            ],
            "bonjour",
        )
    });
    let svc = ResponseCacheLayer::new(&engine).layer_service(origin.app());
    let fr = [("accept-language", "fr")];
    send(&svc, Method::GET, "/hello", &fr).await;
    tokio::time::advance(Duration::from_secs(11)).await;
    let g = send(&svc, Method::GET, "/hello", &fr).await;
    assert_eq!(&g.body[..], b"bonjour");
    assert!(
        cache_status(&g).contains("fwd-status=304"),
        "{}",
        cache_status(&g)
    );
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].headers["if-none-match"], "\"fr1\"");
    let hit = send(&svc, Method::GET, "/hello", &fr).await;
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_authorized_revalidation_does_not_share_the_fields_it_adds() {
    use tower_scale::cache::AuthorizedRequests;
    let engine = paused_http_engine();
    // Anonymous: public. With Authorization, the 304 adds the account and no directive.
    let origin = Recorder::new(|seen, _| {
        let authorized = seen.headers.contains_key("authorization");
        if asks(seen, "if-none-match", "\"p1\"") {
            let headers = if authorized {
                vec![("x-account", "alice".into())]
            } else {
                vec![("cache-control", "public, max-age=10".into())]
            };
            return (StatusCode::NOT_MODIFIED, headers, String::new());
        }
        ok_with(
            &[("cache-control", "public, max-age=10"), ("etag", "\"p1\"")],
            "page",
        )
    });
    let svc = ResponseCacheLayer::builder(&engine)
        .authorized(AuthorizedRequests::Shared)
        .build()
        .unwrap()
        .layer_service(origin.app());
    send(&svc, Method::GET, "/page", &[]).await;
    tokio::time::advance(Duration::from_secs(11)).await;
    let mine = send(
        &svc,
        Method::GET,
        "/page",
        &[("authorization", "Bearer alice")],
    )
    .await;
    assert_eq!(
        header(&mine, "x-account"),
        "alice",
        "the asker gets the update"
    );
    let theirs = send(&svc, Method::GET, "/page", &[]).await;
    assert!(
        !theirs.headers.contains_key("x-account"),
        "alice's field reached another client: {}",
        cache_status(&theirs)
    );
    assert_eq!(&theirs.body[..], b"page");
}

/// A copy stored by one instance goes stale in Redis; another instance revalidates it
/// with the origin's validator and every instance then shares the refreshed entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_revalidates_what_another_stored_in_redis() {
    let prefix = unique("revalidate");
    let a = redis_engine(&redis_url(), &prefix);
    let b = redis_engine(&redis_url(), &prefix);
    subscribed(&[&a, &b]).await;
    let origin = Recorder::new(|seen, _| {
        if asks(seen, "if-none-match", "\"r1\"") {
            return (
                StatusCode::NOT_MODIFIED,
                vec![("cache-control", "max-age=1".into())],
                String::new(),
            );
        }
        ok_with(
            &[("cache-control", "max-age=1"), ("etag", "\"r1\"")],
            "shared body",
        )
    });
    let on_a = ResponseCacheLayer::new(&a).layer_service(origin.app());
    let on_b = ResponseCacheLayer::new(&b).layer_service(origin.app());
    send(&on_a, Method::GET, "/r", &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let g = send(&on_b, Method::GET, "/r", &[]).await;
    assert_eq!(&g.body[..], b"shared body");
    assert!(
        cache_status(&g).contains("fwd-status=304"),
        "{}",
        cache_status(&g)
    );
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].headers["if-none-match"], "\"r1\"");
    // Instance A finds the refreshed entry in Redis: fresh, no origin call.
    a.clear_local();
    let g = send(&on_a, Method::GET, "/r", &[]).await;
    assert!(
        cache_status(&g).contains("detail=l2"),
        "{}",
        cache_status(&g)
    );
    assert_eq!(origin.calls(), 2);
}

/// An origin for the `HEAD` tests: `max-age=1` on a GET and `max-age=60` on a HEAD, the
/// `ETag` `etag` gives, `x-seen` the request's number, and for a HEAD what hyper would
/// put on the wire (the 9-byte body's length, no body).
fn head_origin(etag: impl Fn(&Seen) -> &'static str + Send + Sync + 'static) -> Recorder {
    Recorder::new(move |seen, n| {
        let head = seen.method == Method::HEAD;
        let cc = if head { "max-age=60" } else { "max-age=1" };
        let mut answer = ok_with(
            &[
                ("cache-control", cc),
                ("etag", etag(seen)),
                ("x-seen", &n.to_string()),
            ],
            "kept body",
        );
        if head {
            answer.1.push(("content-length", "9".into()));
            answer.2.clear();
        }
        answer
    })
}

#[tokio::test(start_paused = true)]
async fn a_head_response_that_validates_a_kept_copy_refreshes_it() {
    let engine = paused_http_engine();
    let origin = head_origin(|seen| {
        if seen.uri == "/changed" && seen.method == Method::HEAD {
            "\"h2\""
        } else {
            "\"h1\""
        }
    });
    let svc = ResponseCacheLayer::new(&engine).layer_service(origin.app());
    send(&svc, Method::GET, "/same", &[]).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    let head = send(&svc, Method::HEAD, "/same", &[]).await;
    assert!(head.body.is_empty());
    assert_eq!(header(&head, "x-seen"), "1");
    // The HEAD's fields and freshness now serve the GET: no origin call, the old body.
    let g = send(&svc, Method::GET, "/same", &[]).await;
    assert!(cache_status(&g).contains("hit"), "{}", cache_status(&g));
    assert_eq!(header(&g, "x-seen"), "1");
    assert_eq!(&g.body[..], b"kept body");
    assert_eq!(origin.calls(), 2);
    // A HEAD with another validator says the body changed: no update, the GET goes out.
    send(&svc, Method::GET, "/changed", &[]).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    send(&svc, Method::HEAD, "/changed", &[]).await;
    let g = send(&svc, Method::GET, "/changed", &[]).await;
    assert!(!cache_status(&g).contains("hit"), "{}", cache_status(&g));
    assert_eq!(origin.calls(), 5);
}

/// A browser's reload (`Cache-Control: max-age=0` or `no-cache`) is answered by the
/// origin, as it asks, but a stored copy with a validator makes that a 304 with no body.
#[tokio::test]
async fn a_reload_revalidates_the_stored_copy_instead_of_fetching_it_whole() {
    let engine = CacheEngine::builder().build().unwrap();
    let origin = etag_origin("max-age=600", "\"doc1\"", "document");
    let svc = ResponseCacheLayer::new(&engine).layer_service(origin.app());
    send(&svc, Method::GET, "/doc", &[]).await;
    for reload in ["max-age=0", "no-cache"] {
        let g = send(&svc, Method::GET, "/doc", &[("cache-control", reload)]).await;
        assert_eq!(&g.body[..], b"document", "{reload}");
        assert!(
            cache_status(&g).contains("fwd=request; fwd-status=304"),
            "{reload}: {}",
            cache_status(&g)
        );
    }
    let seen = origin.seen();
    assert_eq!(seen.len(), 3, "each reload asked the origin");
    assert!(asks(&seen[1], "if-none-match", "\"doc1\""));
    assert!(asks(&seen[2], "if-none-match", "\"doc1\""));
}

/// The refresh hook (read-your-writes) wants the origin's answer alone: no conditional
/// request a same-second `Last-Modified` could pass, no stored copy for a failing origin.
#[tokio::test]
async fn a_request_the_refresh_hook_picks_is_never_answered_from_a_stored_copy() {
    let engine = CacheEngine::builder()
        .stale_if_error(Duration::from_secs(600))
        .build()
        .unwrap();
    let down = Arc::new(AtomicUsize::new(0));
    let d = Arc::clone(&down);
    let origin = Recorder::new(move |seen, n| {
        if d.load(Ordering::SeqCst) == 1 {
            return (StatusCode::BAD_GATEWAY, vec![], "down".into());
        }
        if seen.headers.contains_key("if-modified-since") {
            return (StatusCode::NOT_MODIFIED, vec![], String::new());
        }
        ok_with(
            &[
                ("cache-control", "max-age=600"),
                ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
            ],
            &format!("version {n}"),
        )
    });
    let svc = ResponseCacheLayer::builder(&engine)
        .refresh_if(|req| req.headers.contains_key("x-wrote"))
        .build()
        .unwrap()
        .layer_service(origin.app());
    send(&svc, Method::GET, "/mine", &[]).await;
    let g = send(&svc, Method::GET, "/mine", &[("x-wrote", "1")]).await;
    assert_eq!(&g.body[..], b"version 1", "{}", cache_status(&g));
    assert!(!origin.seen()[1].headers.contains_key("if-modified-since"));
    down.store(1, Ordering::SeqCst);
    let g = send(&svc, Method::GET, "/mine", &[("x-wrote", "1")]).await;
    assert_eq!(g.status, StatusCode::BAD_GATEWAY, "{}", cache_status(&g));
}

/// With Redis, the `HEAD`'s fence read brings the kept copy into L1 again (a new entry
/// with the same bytes): the update still applies, and reaches the other instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_update_applies_through_redis_and_reaches_every_instance() {
    let prefix = unique("head-update");
    let a = redis_engine(&redis_url(), &prefix);
    let b = redis_engine(&redis_url(), &prefix);
    subscribed(&[&a, &b]).await;
    let origin = head_origin(|_| "\"hr\"");
    let on_a = ResponseCacheLayer::new(&a).layer_service(origin.app());
    let on_b = ResponseCacheLayer::new(&b).layer_service(origin.app());
    send(&on_a, Method::GET, "/h", &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    send(&on_a, Method::HEAD, "/h", &[]).await;
    let g = send(&on_a, Method::GET, "/h", &[]).await;
    assert!(cache_status(&g).contains("hit"), "{}", cache_status(&g));
    assert_eq!(header(&g, "x-seen"), "1");
    let g = send(&on_b, Method::GET, "/h", &[]).await;
    assert!(
        cache_status(&g).contains("detail=l2"),
        "{}",
        cache_status(&g)
    );
    assert_eq!(header(&g, "x-seen"), "1");
    assert_eq!(origin.calls(), 2);
}
