//! What the rate limiter costs, beside its peers in the same run.
//!
//! - `rate_limit/{global,peer-ip,x-forwarded-for}`: the in-process limiter through the layer
//!   versus tower_governor's `GovernorLayer`, over a no-op service, on the admit path
//!   (quotas far above the request rate). Peer-IP and XFF requests rotate over 1,024
//!   clients. Added cost = median minus `baseline`.
//! - `rate_limit/redis-64`: decisions with 64 concurrent callers on one multiplexed Redis
//!   connection, through the layer with the Redis store, versus raw redis-rs EVALSHA of a
//!   single-quota GCRA script (the floor: Redis running Lua); and, with
//!   `TEST_REDIS_CLUSTER_NODES` set, the store on the Redis Cluster
//!   (`tower-scale-store-cluster`) beside the one on a single node. Needs a Redis at
//!   `TEST_REDIS_URL` (default redis://127.0.0.1:6379).
//! - Memory: resident-set growth after 1,000,000 distinct keys, ours versus governor's
//!   keyed limiter (what tower_governor uses), printed before the benches run.

mod common;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use criterion::{Criterion, criterion_group};
use http::{Request, Response};
use http_body_util::BodyExt;
use redis::Script;
use tower::{Layer, Service, ServiceExt};
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::{GlobalKeyExtractor, PeerIpKeyExtractor, SmartIpKeyExtractor};
use tower_scale::key::{ClientIp, GlobalKey, PeerIp};
use tower_scale::rate_limit::store::{BucketKey, QuotaSpec, Store, StoreFuture};
use tower_scale::rate_limit::{LeasingStore, MemoryStore, Quota, RateLimitLayer, RedisStore};
use tower_scale::redis::RedisBackend;

fn noop()
-> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = impl Send>
+ Clone
+ Send {
    tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::from("{\"id\":42}")))
    })
}

fn clients() -> Vec<IpAddr> {
    (0..1024u32)
        .map(|i| IpAddr::from([198, 51, (i >> 8) as u8, (i & 0xff) as u8]))
        .collect()
}

#[derive(Clone, Copy)]
enum Kind {
    Global,
    Peer,
    Xff,
}

/// One request. A function of its own so `scripts/bench-instructions.sh` can count them.
#[inline(never)]
fn request(kind: Kind, client: IpAddr) -> Request<Body> {
    let mut req = Request::builder()
        .uri("/products/42")
        .body(Body::empty())
        .unwrap();
    match kind {
        Kind::Global => {
            req.extensions_mut()
                .insert(ConnectInfo(SocketAddr::new(client, 4000)));
        }
        Kind::Peer => {
            req.extensions_mut()
                .insert(ConnectInfo(SocketAddr::new(client, 4000)));
        }
        Kind::Xff => {
            // Behind a load balancer at 10.0.0.1, which appended the client address.
            req.extensions_mut()
                .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 1], 4000))));
            req.headers_mut()
                .insert("x-forwarded-for", client.to_string().parse().unwrap());
        }
    }
    req
}

fn run<S, B>(rt: &tokio::runtime::Runtime, svc: &S, kind: Kind, iters: u64) -> Duration
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let clients = clients();
    let mut svc = svc.clone();
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..iters {
            let req = request(kind, clients[(i % 1024) as usize]);
            let resp = svc.ready().await.unwrap().call(req).await.unwrap();
            assert!(resp.status().is_success(), "the admit path must admit");
            std::hint::black_box(resp.into_body().collect().await.unwrap());
        }
        start.elapsed()
    })
}

fn unlimited() -> Quota {
    // A million per second with a burst of four billion: far above any rate this loop
    // reaches, so every request is admitted.
    Quota::new(1_000_000, Duration::from_secs(1))
        .unwrap()
        .burst(u32::MAX)
        .unwrap()
}

/// One key kind: the bare service, ours and tower_governor's, in one group.
fn compare<K, G>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    kind: Kind,
    ours: K,
    theirs: G,
) where
    K: tower_scale::key::KeyExtractor,
    G: tower_governor::key_extractor::KeyExtractor + Send + Sync + 'static,
    G::Key: Send + Sync + 'static,
{
    let mut g = c.benchmark_group(format!("rate_limit/{name}"));
    g.bench_function("baseline", |b| b.iter_custom(|n| run(rt, &noop(), kind, n)));
    let ours = RateLimitLayer::builder()
        .key(ours)
        .quota(unlimited())
        .build()
        .unwrap()
        .layer(noop());
    g.bench_function("tower-scale", |b| {
        b.iter_custom(|n| run(rt, &ours, kind, n))
    });
    let conf = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(theirs)
        .finish()
        .unwrap();
    let theirs = GovernorLayer::new(Arc::new(conf)).layer(noop());
    g.bench_function("tower_governor", |b| {
        b.iter_custom(|n| run(rt, &theirs, kind, n))
    });
    g.finish();
}

fn in_process(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    compare(
        c,
        &rt,
        "global",
        Kind::Global,
        GlobalKey,
        GlobalKeyExtractor,
    );
    compare(
        c,
        &rt,
        "peer-ip",
        Kind::Peer,
        PeerIp::new(),
        PeerIpKeyExtractor,
    );
    let behind_lb = ClientIp::builder()
        .trust_cidr("10.0.0.0/8")
        .build()
        .unwrap();
    compare(
        c,
        &rt,
        "x-forwarded-for",
        Kind::Xff,
        behind_lb,
        SmartIpKeyExtractor,
    );
}

/// A plain single-quota GCRA script: the floor a Redis limiter cannot go below.
const RAW_GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission = tonumber(ARGV[1])
local cap = emission * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + emission
if new_tat - cap > now then return 0 end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 1
";

fn redis(c: &mut Criterion) {
    let url = common::redis_url();
    let rt = common::runtime();
    let backend = rt.block_on(async {
        let b = RedisBackend::builder(url.clone())
            .prefix("bench")
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        b.ping().await.map(|_| b)
    });
    let Ok(backend) = backend else {
        eprintln!("rate_limit/redis-64 skipped: no Redis at {url}");
        return;
    };
    const CALLERS: u64 = 64;
    let clients = Arc::new(clients());
    let mut g = c.benchmark_group("rate_limit/redis-64");
    g.sample_size(20).measurement_time(Duration::from_secs(8));

    let script = Arc::new(Script::new(RAW_GCRA));
    let raw = rt.block_on(common::raw_redis(&url));
    g.bench_function("raw-evalsha", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                let tasks: Vec<_> = (0..CALLERS)
                    .map(|t| {
                        let (raw, script, clients) =
                            (raw.clone(), Arc::clone(&script), Arc::clone(&clients));
                        tokio::spawn(async move {
                            let mut conn = raw;
                            for i in (t..iters).step_by(CALLERS as usize) {
                                let key = format!("bench:raw:{{{}}}", clients[(i % 1024) as usize]);
                                let ok: i64 = script
                                    .key(key)
                                    .arg(1)
                                    .arg(u32::MAX)
                                    .invoke_async(&mut conn)
                                    .await
                                    .unwrap();
                                std::hint::black_box(ok);
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed()
            })
        })
    });

    // The limiter's decision path alone: the store, as the layer calls it; on one Redis,
    // and on the Redis Cluster (`TEST_REDIS_CLUSTER_NODES`) in the same run.
    let quota = unlimited();
    let spec = Arc::new(QuotaSpec::new(0, &quota));
    let mut stores = vec![("tower-scale-store", RedisStore::new(backend.clone()))];
    if let Ok(nodes) = std::env::var("TEST_REDIS_CLUSTER_NODES") {
        let cluster = rt.block_on(async {
            let b = RedisBackend::cluster(nodes.split(','))
                .prefix("bench")
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            b.ping().await.map(|_| b)
        });
        match cluster {
            Ok(b) => stores.push(("tower-scale-store-cluster", RedisStore::new(b))),
            Err(e) => eprintln!("rate_limit/redis-64 cluster skipped: {e}"),
        }
    }
    for (name, store) in stores {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..CALLERS)
                        .map(|t| {
                            let (store, spec, clients) =
                                (store.clone(), Arc::clone(&spec), Arc::clone(&clients));
                            tokio::spawn(async move {
                                for i in (t..iters).step_by(CALLERS as usize) {
                                    let key = BucketKey::Key(clients[(i % 1024) as usize]);
                                    let StoreFuture::Pending(check) =
                                        store.check(&key, &[&*spec], 1)
                                    else {
                                        unreachable!("a Redis check is a round trip")
                                    };
                                    assert!(check.await.unwrap().allowed());
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
    }

    // The whole layer: HTTP request in, response out, decision in between; and the same
    // with leases of 20 units (`LeasingStore`), which decides most requests in process.
    let layer = RateLimitLayer::builder()
        .store(RedisStore::new(backend.clone()))
        .quota(unlimited())
        .build()
        .unwrap();
    layer_bench(
        &mut g,
        &rt,
        "tower-scale-layer",
        layer.layer(noop()),
        &clients,
    );
    let leasing = RateLimitLayer::builder()
        .store(
            LeasingStore::builder(RedisStore::new(backend.clone()))
                .batch(20)
                .ttl(Duration::from_secs(1))
                .build()
                .unwrap(),
        )
        .quota(unlimited())
        .build()
        .unwrap();
    layer_bench(
        &mut g,
        &rt,
        "tower-scale-layer-leasing",
        leasing.layer(noop()),
        &clients,
    );
    g.finish();
}

/// 64 callers sending HTTP requests of 1,024 rotating clients through `svc`.
fn layer_bench<S>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    svc: S,
    clients: &Arc<Vec<IpAddr>>,
) where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    const CALLERS: u64 = 64;
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                let tasks: Vec<_> = (0..CALLERS)
                    .map(|t| {
                        let (svc, clients) = (svc.clone(), Arc::clone(clients));
                        tokio::spawn(async move {
                            for i in (t..iters).step_by(CALLERS as usize) {
                                let req = request(Kind::Peer, clients[(i % 1024) as usize]);
                                let resp = svc.clone().oneshot(req).await.unwrap();
                                assert!(resp.status().is_success());
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed()
            })
        })
    });
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// Resident memory added by 1,000,000 distinct keys. Ours first: whatever the allocator
/// keeps after it is dropped can only make governor's figure smaller, not ours.
fn memory_report() {
    const KEYS: u32 = 1_000_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ours = rt.block_on(async {
        let before = rss_bytes();
        // Headroom: the cap is enforced per shard, and shards fill unevenly.
        let store = MemoryStore::with_max_keys(2 * KEYS as usize).unwrap();
        let q: Quota = "10/1h".parse().unwrap();
        let spec = QuotaSpec::new(0, &q);
        let refs = [&spec];
        for i in 0..KEYS {
            store.decide(&IpAddr::from(i.to_be_bytes()), &refs, 1);
        }
        let grown = rss_bytes().saturating_sub(before);
        assert_eq!(store.len(), KEYS as usize);
        grown
    });
    let theirs = {
        let before = rss_bytes();
        let limiter = governor::RateLimiter::<IpAddr, _, _>::dashmap(governor::Quota::per_hour(
            NonZeroU32::new(10).unwrap(),
        ));
        for i in 0..KEYS {
            let _ = limiter.check_key(&IpAddr::from(i.to_be_bytes()));
        }
        let grown = rss_bytes().saturating_sub(before);
        assert_eq!(limiter.len(), KEYS as usize);
        grown
    };
    let line = format!(
        "rate_limit/memory-1M-keys: tower-scale MemoryStore {:.1} MiB ({} B/key); governor keyed (tower_governor) {:.1} MiB ({} B/key)",
        ours as f64 / 1048576.0,
        ours / u64::from(KEYS),
        theirs as f64 / 1048576.0,
        theirs / u64::from(KEYS)
    );
    println!("{line}");
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let _ = std::fs::create_dir_all(format!("{dir}/criterion"));
    let _ = std::fs::write(
        format!("{dir}/criterion/rate_limit_memory.txt"),
        line + "\n",
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(60);
    targets = in_process, redis
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --benches` and `--list` runs must stay quick.
    if !args
        .iter()
        .any(|a| a == "--list" || a == "--test" || a == "--profile-time")
    {
        memory_report();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
