//! Rate limiting against real Redis (and the in-process store), through the layer.

mod support;

use support::LayerExt;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};
use tower_scale::key::ClientIp;
use tower_scale::rate_limit::gcra::{self, Gcra};
use tower_scale::rate_limit::store::QuotaSpec;
use tower_scale::rate_limit::{
    AnyStore, Clock, MemoryStore, OnStoreError, Quota, RATELIMIT, RATELIMIT_POLICY, RateLimitLayer,
    RateLimited, RedisStore,
};
use tower_scale::redis::RedisBackend;

type Inner = tower::util::BoxCloneSyncService<Request<()>, Response<Full<Bytes>>, Infallible>;

fn ok_service() -> Inner {
    tower::util::BoxCloneSyncService::new(tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    }))
}

use support::redis_backend as backend;

fn req(peer: &str, method: &str, path: &str) -> Request<()> {
    let mut r = Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .unwrap();
    r.extensions_mut()
        .insert(peer.parse::<SocketAddr>().unwrap());
    r
}

fn quota(s: &str, name: &str) -> Quota {
    s.parse::<Quota>().unwrap().named(name).unwrap()
}

async fn status<S>(svc: &mut S, r: Request<()>) -> (StatusCode, http::HeaderMap)
where
    S: Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible>,
{
    let resp = svc.ready().await.unwrap().call(r).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    resp.into_body().collect().await.unwrap();
    (status, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_admit_exactly_the_quota() {
    for cluster in [false, true] {
        three_instances_share_one_quota(cluster).await;
    }
}

async fn three_instances_share_one_quota(cluster: bool) {
    let prefix = support::unique("rl3");
    let n = 100;
    // Three "instances": each its own layer and its own Redis connection.
    let instances: Vec<_> = (0..3)
        .map(|_| {
            let backend = if cluster {
                support::redis_cluster_backend(&prefix)
            } else {
                backend(&support::redis_url(), &prefix)
            };
            RateLimitLayer::builder()
                .store(RedisStore::new(backend))
                .quota(quota(&format!("{n}/1h"), "shared"))
                .on_store_error(OnStoreError::FailClosed)
                .build()
                .unwrap()
                .layer_service(ok_service())
        })
        .collect();
    let mut tasks = Vec::new();
    for i in 0..(3 * n) {
        let svc = instances[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            let resp = svc
                .oneshot(req("198.51.100.7:1000", "GET", "/"))
                .await
                .unwrap();
            resp.status()
        }));
    }
    let mut admitted = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        admitted, n,
        "exactly the quota across instances (cluster: {cluster})"
    );
    assert_eq!(refused, 2 * n);
}

/// A small deterministic generator, so a failure can be reproduced from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[tokio::test]
async fn redis_script_and_rust_gcra_agree() {
    for (_, b) in support::redis_backends(&support::unique("diff")) {
        script_and_rust_agree(RedisStore::new(b)).await;
    }
}

async fn script_and_rust_agree(store: RedisStore) {
    for seed in 1..=12u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // 1, 2, 3 quotas in turn: the one-quota script and the general one.
        let nq = 1 + (seed % 3) as usize;
        let quotas: Vec<Quota> = (0..nq)
            .map(|i| {
                let q: Quota = format!("{}/{}s", 1 + rng.next(20), 1 + rng.next(60))
                    .parse()
                    .unwrap();
                let burst = 1 + rng.next(u64::from(q.limit()) + 3) as u32;
                q.burst(burst).unwrap().named(&format!("q{i}")).unwrap()
            })
            .collect();
        let specs = quota_specs(&quotas);
        let spec_refs: Vec<&QuotaSpec> = specs.iter().collect();
        let gcras: Vec<Gcra> = specs.iter().map(|r| r.gcra()).collect();
        let key = format!("seed{seed}");
        let mut now = 1_700_000_000_000_000u64;
        let mut tats: Vec<Option<u64>> = vec![None; nq];
        for step in 0..150 {
            now += rng.next(3_000_000);
            let cost = 1 + rng.next(4);
            let (want, stored) = gcra::check_all(&gcras, &tats, now, cost);
            let got = store
                .check_at(&key, &spec_refs, cost, Some(now))
                .await
                .unwrap();
            assert_eq!(got.allowed(), stored.is_some(), "seed {seed} step {step}");
            assert_eq!(got.verdicts(), &want[..], "seed {seed} step {step}");
            if let Some(t) = stored {
                tats = t.into_iter().map(Some).collect();
            }
        }
    }
}

fn quota_specs(quotas: &[Quota]) -> Vec<QuotaSpec> {
    quotas
        .iter()
        .enumerate()
        .map(|(i, q)| QuotaSpec::new(i, q))
        .collect()
}

#[tokio::test]
async fn a_refusal_by_one_quota_consumes_none_of_the_others() {
    for (name, store) in stores() {
        let mut svc = RateLimitLayer::builder()
            .store(store)
            .quota(quota("5/1h", "api"))
            .quota_for(quota("2/1h", "export"), |r| {
                r.method == http::Method::POST && r.uri.path() == "/exports"
            })
            .build()
            .unwrap()
            .layer_service(ok_service());
        let peer = "192.0.2.10:1";
        assert_eq!(
            status(&mut svc, req(peer, "POST", "/exports")).await.0,
            StatusCode::OK,
            "{name}"
        );
        assert_eq!(
            status(&mut svc, req(peer, "POST", "/exports")).await.0,
            StatusCode::OK,
            "{name}"
        );
        let (s, h) = status(&mut svc, req(peer, "POST", "/exports")).await;
        assert_eq!(
            s,
            StatusCode::TOO_MANY_REQUESTS,
            "{name}: export quota used up"
        );
        assert_eq!(
            h[RATELIMIT_POLICY], "\"api\";q=5;w=3600, \"export\";q=2;w=3600",
            "{name}"
        );
        assert!(
            h[RATELIMIT].to_str().unwrap().starts_with("\"api\";r=3;"),
            "{name}: {:?}",
            h[RATELIMIT]
        );
        // The refused export took nothing from `api`: 3 more GETs pass, the 4th does not.
        for i in 0..3 {
            assert_eq!(
                status(&mut svc, req(peer, "GET", "/x")).await.0,
                StatusCode::OK,
                "{name} get {i}"
            );
        }
        assert_eq!(
            status(&mut svc, req(peer, "GET", "/x")).await.0,
            StatusCode::TOO_MANY_REQUESTS,
            "{name}"
        );
    }
}

/// The in-process store, and the Redis store on one node and on a Cluster.
fn stores() -> Vec<(&'static str, AnyStore)> {
    let mut all: Vec<(&'static str, AnyStore)> = vec![("memory", MemoryStore::new().into())];
    for (name, backend) in support::redis_backends(&support::unique("atom")) {
        all.push((name, RedisStore::new(backend).into()));
    }
    all
}

#[tokio::test]
async fn costs_weigh_requests() {
    for (name, store) in stores() {
        let mut svc = RateLimitLayer::builder()
            .store(store)
            .quota(quota("5/1h", "units"))
            .cost(|r| {
                r.headers
                    .get("x-cost")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(1)
            })
            .build()
            .unwrap()
            .layer_service(ok_service());
        let with_cost = |c: &str| {
            let mut r = req("192.0.2.20:1", "GET", "/");
            r.headers_mut().insert("x-cost", c.parse().unwrap());
            r
        };
        assert_eq!(
            status(&mut svc, with_cost("3")).await.0,
            StatusCode::OK,
            "{name}"
        );
        assert_eq!(
            status(&mut svc, with_cost("3")).await.0,
            StatusCode::TOO_MANY_REQUESTS,
            "{name}"
        );
        assert_eq!(
            status(&mut svc, with_cost("2")).await.0,
            StatusCode::OK,
            "{name}"
        );
        // Larger than the burst: refused, and no Retry-After can be honest.
        let (s, h) = status(&mut svc, with_cost("6")).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{name}");
        assert!(h.get(http::header::RETRY_AFTER).is_none(), "{name}");
        // Cost 0 is not counted at all.
        assert_eq!(
            status(&mut svc, with_cost("0")).await.0,
            StatusCode::OK,
            "{name}"
        );
    }
}

#[tokio::test]
async fn retry_after_is_honest_against_redis() {
    // One Redis and the Cluster, at once (each waits out its own Retry-After).
    let runs: Vec<_> = support::redis_backends(&support::unique("honest"))
        .into_iter()
        .map(|(_, b)| tokio::spawn(retry_after_honest(RedisStore::new(b))))
        .collect();
    for r in runs {
        r.await.unwrap();
    }
}

async fn retry_after_honest(store: RedisStore) {
    let mut svc = RateLimitLayer::builder()
        .store(store)
        .quota(quota("2/2s", "fast"))
        .build()
        .unwrap()
        .layer_service(ok_service());
    let peer = "192.0.2.30:1";
    assert_eq!(
        status(&mut svc, req(peer, "GET", "/")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        status(&mut svc, req(peer, "GET", "/")).await.0,
        StatusCode::OK
    );
    let (s, h) = status(&mut svc, req(peer, "GET", "/")).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = h[http::header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(
        status(&mut svc, req(peer, "GET", "/")).await.0,
        StatusCode::OK,
        "admitted after Retry-After"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_exact_in_process() {
    let mut svc = RateLimitLayer::builder()
        .clock(Clock::tokio())
        .quota(quota("3/1m", "m"))
        .x_ratelimit_headers(true)
        .build()
        .unwrap()
        .layer_service(ok_service());
    let peer = "192.0.2.31:1";
    for _ in 0..3 {
        assert_eq!(
            status(&mut svc, req(peer, "GET", "/")).await.0,
            StatusCode::OK
        );
    }
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(req(peer, "GET", "/"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let refusal = resp
        .extensions()
        .get::<RateLimited>()
        .cloned()
        .expect("typed refusal in extensions");
    let h = resp.headers();
    assert_eq!(h[http::header::RETRY_AFTER], "20");
    assert_eq!(h["x-ratelimit-limit"], "3");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert_eq!(h["ratelimit"], "\"m\";r=0;t=60");
    assert_eq!(h["content-type"], "application/json");
    let wait = refusal.retry_after.unwrap();
    tokio::time::advance(wait - Duration::from_millis(1)).await;
    assert_eq!(
        status(&mut svc, req(peer, "GET", "/")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        status(&mut svc, req(peer, "GET", "/")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let mut svc = RateLimitLayer::builder()
        .key(
            ClientIp::builder()
                .trust_cidr("10.0.0.0/8")
                .build()
                .unwrap(),
        )
        .quota(quota("3/1h", "q"))
        .build()
        .unwrap()
        .layer_service(ok_service());
    for i in 0..4 {
        let mut r = req("203.0.113.5:999", "GET", "/");
        r.headers_mut().insert(
            "x-forwarded-for",
            format!("10.0.0.{i}, 198.51.100.{i}").parse().unwrap(),
        );
        let want = if i < 3 {
            StatusCode::OK
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(status(&mut svc, r).await.0, want, "request {i}");
    }
    // Behind a trusted proxy, the forwarded client is the key.
    let mut r = req("10.1.1.1:1", "GET", "/");
    r.headers_mut()
        .insert("x-forwarded-for", "198.51.100.77".parse().unwrap());
    assert_eq!(status(&mut svc, r).await.0, StatusCode::OK);
}

#[tokio::test]
async fn shadow_mode_decides_but_never_refuses() {
    let mut svc = RateLimitLayer::builder()
        .quota(quota("2/1h", "q"))
        .shadow(true)
        .headers_on_success(true)
        .build()
        .unwrap()
        .layer_service(ok_service());
    let mut remaining = Vec::new();
    for _ in 0..4 {
        let (s, h) = status(&mut svc, req("192.0.2.40:1", "GET", "/")).await;
        assert_eq!(s, StatusCode::OK);
        let v = h[RATELIMIT].to_str().unwrap().to_owned();
        remaining.push(v.split(';').nth(1).unwrap().to_owned());
    }
    // It really decides: the quota runs out, and the would-be refusals say so.
    assert_eq!(remaining, ["r=1", "r=0", "r=0", "r=0"]);

    // Shadow mode admits even when the store fails and the layer would fail closed.
    let down = support::free_port();
    let mut svc = RateLimitLayer::builder()
        .store(RedisStore::new(backend(
            &format!("redis://127.0.0.1:{down}"),
            "shadow",
        )))
        .quota(quota("1/1h", "q"))
        .on_store_error(OnStoreError::FailClosed)
        .shadow(true)
        .build()
        .unwrap()
        .layer_service(ok_service());
    assert_eq!(
        status(&mut svc, req("192.0.2.41:1", "GET", "/")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn layers_sharing_a_memory_store_share_quotas_by_name() {
    let store = MemoryStore::new();
    let layer = |name: &str| {
        RateLimitLayer::builder()
            .store(store.clone())
            .quota(quota("2/1h", name))
            .build()
            .unwrap()
            .layer_service(ok_service())
    };
    let (mut a, mut b, mut other) = (layer("shared"), layer("shared"), layer("other"));
    let peer = "192.0.2.80:1";
    assert_eq!(
        status(&mut a, req(peer, "GET", "/")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        status(&mut b, req(peer, "GET", "/")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        status(&mut a, req(peer, "GET", "/")).await.0,
        StatusCode::TOO_MANY_REQUESTS,
        "same name: one quota"
    );
    assert_eq!(
        status(&mut other, req(peer, "GET", "/")).await.0,
        StatusCode::OK,
        "another name: its own state"
    );
}

#[tokio::test]
async fn a_flood_of_new_keys_into_a_full_store_is_still_limited() {
    // One state per shard: the store is full almost at once.
    let mut svc = RateLimitLayer::builder()
        .store(MemoryStore::with_max_keys(64).unwrap())
        .quota(quota("1/1h", "q"))
        .build()
        .unwrap()
        .layer_service(ok_service());
    let mut admitted = 0;
    for i in 0..2000u32 {
        let peer = format!("10.{}.{}.{}:1", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
        if status(&mut svc, req(&peer, "GET", "/")).await.0 == StatusCode::OK {
            admitted += 1;
        }
    }
    // Each shard holds one key of its own and one overflow bucket: at most 128 admitted.
    assert!(
        admitted <= 128,
        "{admitted} of 2000 new clients admitted past the cap"
    );
    assert!(admitted >= 64, "{admitted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_kept_across_the_redis_round_trip() {
    for (_, b) in support::redis_backends(&support::unique("ready")) {
        readiness_kept(RedisStore::new(b)).await;
    }
}

async fn readiness_kept(store: RedisStore) {
    // The inner service admits one request at a time (its readiness is a permit).
    let slow = tower::service_fn(|_req: Request<()>| async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let inner = tower::ServiceBuilder::new()
        .concurrency_limit(1)
        .service(slow);
    let svc = RateLimitLayer::builder()
        .store(store)
        .quota(quota("5/1h", "q"))
        .headers_on_success(true)
        .build()
        .unwrap()
        .layer_service(inner);
    let start = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let resp = svc.oneshot(req("192.0.2.90:1", "GET", "/")).await.unwrap();
                (resp.status(), resp.headers().contains_key(RATELIMIT))
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let (s, has_headers) = t.await.unwrap();
        assert!(
            has_headers,
            "headers on admitted and refused responses alike"
        );
        if s == StatusCode::OK {
            ok += 1;
        } else {
            assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
        }
    }
    assert_eq!(ok, 5);
    // The five admitted ones ran one at a time: the permit travelled with each request.
    assert!(
        start.elapsed() >= Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
}

/// A one-quota layer on the Redis at `url`, with `timeout` and failure `mode`.
fn layer_on_redis(
    url: &str,
    timeout: Duration,
    q: &str,
    mode: OnStoreError,
) -> tower_scale::rate_limit::RateLimit<
    Inner,
    tower_scale::key::PeerIp,
    RedisStore,
    tower_scale::refusal::JsonRefusal,
> {
    let b = RedisBackend::builder(url)
        .prefix(support::unique("modes"))
        .timeout(timeout)
        .build()
        .unwrap();
    RateLimitLayer::builder()
        .store(RedisStore::new(b))
        .quota(quota(q, "q"))
        .on_store_error(mode)
        .build()
        .unwrap()
        .layer_service(ok_service())
}

#[tokio::test]
async fn a_hung_redis_costs_at_most_the_timeout() {
    let server = support::RedisServer::start();
    let timeout = Duration::from_millis(50);
    let make = |mode| layer_on_redis(&server.url(), timeout, "3/1h", mode);
    let mut open = make(OnStoreError::FailOpen);
    let mut closed = make(OnStoreError::FailClosed);
    let mut local = make(OnStoreError::Local { share: 1.0 });
    // Connected and warm before the hang.
    assert_eq!(
        status(&mut open, req("192.0.2.95:1", "GET", "/")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        status(&mut closed, req("192.0.2.95:1", "GET", "/")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        status(&mut local, req("192.0.2.95:1", "GET", "/")).await.0,
        StatusCode::OK
    );
    server.freeze();
    let cases: [(&str, &mut _, StatusCode); 3] = [
        ("open", &mut open, StatusCode::OK),
        ("closed", &mut closed, StatusCode::SERVICE_UNAVAILABLE),
        ("local", &mut local, StatusCode::OK),
    ];
    for (name, svc, want) in cases {
        let t = Instant::now();
        let (s, _) = status(svc, req("192.0.2.96:1", "GET", "/")).await;
        let took = t.elapsed();
        assert_eq!(s, want, "{name}");
        assert!(
            took >= timeout && took < timeout + Duration::from_millis(150),
            "{name}: took {took:?}"
        );
    }
    server.thaw();
    support::eventually("Redis answers again", Duration::from_secs(10), || {
        let mut c = closed.clone();
        async move {
            (status(&mut c, req("192.0.2.97:1", "GET", "/")).await.0 == StatusCode::OK)
                .then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn store_failure_modes_with_redis_killed() {
    let mut server = support::RedisServer::start();
    let timeout = Duration::from_millis(50);
    let make = |mode| layer_on_redis(&server.url(), timeout, "4/1h", mode);
    let mut open = make(OnStoreError::FailOpen);
    let mut closed = make(OnStoreError::FailClosed);
    let mut local = make(OnStoreError::Local { share: 0.5 });
    assert_eq!(
        status(&mut open, req("192.0.2.50:1", "GET", "/")).await.0,
        StatusCode::OK
    );

    server.kill();
    let timed =
        |took: Duration| assert!(took < timeout + Duration::from_millis(250), "took {took:?}");
    for i in 0..6 {
        let t = Instant::now();
        assert_eq!(
            status(&mut open, req("192.0.2.51:1", "GET", "/")).await.0,
            StatusCode::OK,
            "open {i}"
        );
        timed(t.elapsed());
        let t = Instant::now();
        let (s, h) = status(&mut closed, req("192.0.2.51:1", "GET", "/")).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "closed {i}");
        assert_eq!(h[http::header::RETRY_AFTER], "1");
        timed(t.elapsed());
    }
    // Local: half of 4 = 2 per instance while Redis is down.
    let mut got = Vec::new();
    for _ in 0..4 {
        let t = Instant::now();
        got.push(status(&mut local, req("192.0.2.52:1", "GET", "/")).await.0);
        timed(t.elapsed());
    }
    assert_eq!(
        got,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );

    // Redis is back: shared limiting resumes without a restart (4 per hour for a new key).
    server.restart();
    let peer = "192.0.2.53:1";
    support::eventually("limiting to resume", Duration::from_secs(10), || {
        let mut c = closed.clone();
        async move {
            (status(&mut c, req("192.0.2.99:1", "GET", "/")).await.0 == StatusCode::OK)
                .then_some(())
        }
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(status(&mut closed, req(peer, "GET", "/")).await.0);
    }
    assert_eq!(statuses[..4], [StatusCode::OK; 4]);
    assert_eq!(statuses[4], StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn unkeyed_requests_share_a_bucket_and_unmatched_quotas_are_skipped() {
    let mut svc = RateLimitLayer::builder()
        .quota_for(quota("2/1h", "only-api"), |r| {
            r.uri.path().starts_with("/api")
        })
        .build()
        .unwrap()
        .layer_service(ok_service());
    // No peer address at all: one shared bucket.
    let bare = || Request::builder().uri("/api/x").body(()).unwrap();
    assert_eq!(status(&mut svc, bare()).await.0, StatusCode::OK);
    assert_eq!(status(&mut svc, bare()).await.0, StatusCode::OK);
    assert_eq!(
        status(&mut svc, bare()).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A path no quota applies to is never limited.
    for _ in 0..5 {
        assert_eq!(
            status(&mut svc, req("192.0.2.60:1", "GET", "/other"))
                .await
                .0,
            StatusCode::OK
        );
    }
}

#[tokio::test(start_paused = true)]
async fn memory_stays_bounded() {
    let store = MemoryStore::builder()
        .max_keys(64 * 100)
        .clock(Clock::tokio())
        .build()
        .unwrap();
    let q = quota("1/10ms", "tiny");
    let spec = QuotaSpec::new(0, &q);
    let refs = [&spec];
    for i in 0..20_000u32 {
        store.decide(&i, &refs, 1);
    }
    // The cap, plus one overflow bucket per shard for the keys that did not fit.
    assert!(
        store.len() <= 64 * 100 + 64,
        "the hard cap holds: {}",
        store.len()
    );
    // Once every bucket has refilled, use sweeps the keys away. Drive every shard with
    // requests that are refused (cost over the burst), which store nothing themselves.
    tokio::time::advance(Duration::from_millis(20)).await;
    for i in 0..(2 * 64 * 4096u32) {
        store.decide(&(1_000_000 + i), &refs, 2);
    }
    assert_eq!(store.len(), 0, "refilled keys are dropped");
}

#[test]
fn bad_configuration_is_an_error() {
    assert_eq!(
        RateLimitLayer::builder().build().unwrap_err().setting(),
        "quota"
    );
    let e = RateLimitLayer::builder()
        .quota(quota("1/1s", "a"))
        .quota(quota("2/1s", "a"))
        .build()
        .unwrap_err();
    assert_eq!(e.setting(), "quota name");
    let e = RateLimitLayer::builder()
        .quota(quota("1/1s", "a"))
        .on_store_error(OnStoreError::Local { share: 0.0 })
        .build()
        .unwrap_err();
    assert_eq!(e.setting(), "share");
    let mut b = RateLimitLayer::builder();
    for i in 0..9 {
        b = b.quota(quota("1/1s", &format!("q{i}")));
    }
    assert!(b.build().is_err());
    assert!(MemoryStore::with_max_keys(10).is_err());
}

#[test]
fn public_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RateLimitLayer>();
    assert_send_sync::<
        tower_scale::rate_limit::RateLimit<
            Inner,
            tower_scale::key::PeerIp,
            RedisStore,
            tower_scale::refusal::JsonRefusal,
        >,
    >();
    assert_send_sync::<MemoryStore>();
    assert_send_sync::<RedisStore>();
    fn assert_send<T: Send>() {}
    assert_send::<
        <tower_scale::rate_limit::RateLimit<
            Inner,
            tower_scale::key::PeerIp,
            RedisStore,
            tower_scale::refusal::JsonRefusal,
        > as Service<Request<()>>>::Future,
    >();
}

/// Commands a private Redis has served, by name.
async fn command_counts(url: &str) -> std::collections::HashMap<String, u64> {
    let info: String = support::redis_raw(url, &["INFO", "commandstats"]).await;
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn one_round_trip_per_request_whatever_the_number_of_quotas() {
    let server = support::RedisServer::start();
    let backend = backend(&server.url(), "trips");
    for quotas in [1usize, 3] {
        let mut b = RateLimitLayer::builder().store(RedisStore::new(backend.clone()));
        for i in 0..quotas {
            b = b.quota(quota("1000/1h", &format!("q{i}")));
        }
        let mut svc = b.build().unwrap().layer_service(ok_service());
        // The first call loads the script (EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA).
        status(&mut svc, req("192.0.2.70:1", "GET", "/")).await;
        let _: String = support::redis_raw(&server.url(), &["CONFIG", "RESETSTAT"]).await;
        let n = 50;
        for _ in 0..n {
            assert_eq!(
                status(&mut svc, req("192.0.2.70:1", "GET", "/")).await.0,
                StatusCode::OK
            );
        }
        let counts = command_counts(&server.url()).await;
        // Redis counts the commands a script runs too: TIME once, a GET and a SET per quota.
        let per_quota = n * quotas as u64;
        assert_eq!(
            counts.get("evalsha"),
            Some(&n),
            "{quotas} quotas: {counts:?}"
        );
        assert_eq!(counts.get("time"), Some(&n), "{quotas} quotas: {counts:?}");
        assert_eq!(
            counts.get("get"),
            Some(&per_quota),
            "{quotas} quotas: {counts:?}"
        );
        assert_eq!(
            counts.get("set"),
            Some(&per_quota),
            "{quotas} quotas: {counts:?}"
        );
        // Nothing else: one round trip (the EVALSHA) per request.
        let others: u64 = counts
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "evalsha" | "time" | "get" | "set" | "info" | "config|resetstat"
                )
            })
            .map(|(_, v)| v)
            .sum();
        assert_eq!(others, 0, "{quotas} quotas: {counts:?}");
    }
}

/// An admitted request carries its headers to the response: every quota in the policy and
/// state lists, the `X-RateLimit-*` trio when asked for, and a second layer's fields
/// appended to the first's rather than replacing them.
#[tokio::test]
async fn admitted_requests_carry_every_header_through_nested_layers() {
    let inner_layer = RateLimitLayer::builder()
        .quota(quota("5/1h", "api"))
        .quota(quota("9/1h", "burst"))
        .headers_on_success(true)
        .x_ratelimit_headers(true)
        .build()
        .unwrap();
    let outer_layer = RateLimitLayer::builder()
        .quota(quota("7/1h", "edge"))
        .headers_on_success(true)
        .build()
        .unwrap();
    let mut svc = outer_layer.layer_service(inner_layer.layer_service(ok_service()));
    let (s, h) = status(&mut svc, req("192.0.2.120:1", "GET", "/")).await;
    assert_eq!(s, StatusCode::OK);
    let all = |name: &http::HeaderName| -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        all(&RATELIMIT_POLICY),
        [
            "\"api\";q=5;w=3600, \"burst\";q=9;w=3600",
            "\"edge\";q=7;w=3600"
        ]
    );
    let state = all(&RATELIMIT);
    assert_eq!(state.len(), 2, "{state:?}");
    assert!(state[0].starts_with("\"api\";r=4;t="), "{state:?}");
    assert!(state[0].contains(", \"burst\";r=8;t="), "{state:?}");
    assert!(state[1].starts_with("\"edge\";r=6;t="), "{state:?}");
    // The trio describes the inner layer's tightest quota.
    assert_eq!(h["x-ratelimit-limit"], "5");
    assert_eq!(h["x-ratelimit-remaining"], "4");
}

/// A shared store whose checks are counted: the round trips it makes.
#[derive(Clone)]
struct Counted {
    inner: RedisStore,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<K: std::hash::Hash + std::fmt::Display> tower_scale::rate_limit::store::Store<K> for Counted {
    fn check(
        &self,
        key: &K,
        quotas: &[&QuotaSpec],
        cost: u64,
    ) -> tower_scale::rate_limit::store::StoreFuture {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.check(key, quotas, cost)
    }
}

/// Three instances leasing from one Redis (a node, then a Cluster), under concurrent
/// load (eight requests at a time each, the quota's worth in all): together they admit no
/// more than the quota, lose at most a batch an instance to leases left unused, and make
/// a fraction of the round trips (one a request without leases).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leasing_instances_keep_the_quota_with_a_fraction_of_the_round_trips() {
    for cluster in [false, true] {
        let prefix = support::unique("lease");
        let (n, batch) = (300usize, 40u64);
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let instances: Vec<_> = (0..3)
            .map(|_| {
                let backend = if cluster {
                    support::redis_cluster_backend(&prefix)
                } else {
                    backend(&support::redis_url(), &prefix)
                };
                let shared = Counted {
                    inner: RedisStore::new(backend),
                    calls: std::sync::Arc::clone(&calls),
                };
                RateLimitLayer::builder()
                    .store(
                        tower_scale::rate_limit::LeasingStore::builder(shared)
                            .batch(batch)
                            .ttl(Duration::from_secs(60))
                            .build()
                            .unwrap(),
                    )
                    .quota(quota(&format!("{n}/1h"), "leased"))
                    .on_store_error(OnStoreError::FailClosed)
                    .build()
                    .unwrap()
                    .layer_service(ok_service())
            })
            .collect();
        let mut admitted = 0;
        let mut sent = 0;
        while sent < n {
            let mut wave = Vec::new();
            for i in 0..24 {
                let svc = instances[i % 3].clone();
                wave.push(tokio::spawn(async move {
                    svc.oneshot(req("198.51.100.9:1000", "GET", "/"))
                        .await
                        .unwrap()
                        .status()
                }));
            }
            sent += wave.len();
            for t in wave {
                match t.await.unwrap() {
                    StatusCode::OK => admitted += 1,
                    StatusCode::TOO_MANY_REQUESTS => {}
                    other => panic!("unexpected {other}"),
                }
            }
        }
        let trips = calls.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            (n - 3 * batch as usize..=n).contains(&admitted),
            "cluster {cluster}: {admitted} admitted of {n}"
        );
        assert!(
            trips < sent / 3,
            "cluster {cluster}: {trips} round trips for {sent} requests"
        );
        eprintln!(
            "cluster {cluster}: {admitted} admitted of {n}, {trips} round trips for {sent} requests"
        );
    }
}
