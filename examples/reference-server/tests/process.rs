//! The reference server as real processes, over HTTP: what needs a process (signals,
//! exit codes, several instances sharing Redis, PostgreSQL with a streaming replica).

mod common;
#[path = "../../../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{cache_status, call, catalog_file, get, login, put_product, set_cookie};
use http::{Method, StatusCode};

/// The binary cargo built for this test run: `reference-server` or `pricing-upstream`.
fn example(name: &str) -> &'static str {
    match name {
        "reference_server" => env!("CARGO_BIN_EXE_reference-server"),
        "pricing_upstream" => env!("CARGO_BIN_EXE_pricing-upstream"),
        other => panic!("no binary {other}"),
    }
}

/// A running example process, killed on drop.
struct Proc {
    child: Child,
    base: String,
}

impl Proc {
    fn start(name: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn(name, Command::new(example(name)), env)
    }

    /// As [`start`](Self::start), with the process's descriptor limit at `nofile`.
    fn start_with_fd_limit(name: &str, env: &[(&str, &str)], nofile: u32) -> Self {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "ulimit -n \"$0\" && exec \"$1\""])
            .arg(nofile.to_string())
            .arg(example(name));
        Self::spawn(name, cmd, env)
    }

    fn spawn(name: &str, mut cmd: Command, env: &[(&str, &str)]) -> Self {
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        // Keep reading what it prints, as a supervisor would.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("{name} did not print its address: {line:?}"))
            .to_owned();
        Self { child, base }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(std::time::Instant::now() < deadline, "process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn price_route_and_graceful_shutdown() {
    let upstream = Proc::start("pricing_upstream", &[("DELAY_MS", "800")]);
    let mut server = Proc::start(
        "reference_server",
        &[("PRICING_URL", &upstream.base), ("DRAIN", "0s")],
    );
    let base = server.base.clone();

    // In flight when SIGTERM arrives: it still completes, then the server exits 0.
    let pending = tokio::spawn(async move { get(&base, "/products/7/price").await });
    // Signal only once the call is in flight: the upstream has received it.
    let upstream_base = upstream.base.clone();
    support::eventually(
        "the price call to reach the upstream",
        Duration::from_secs(10),
        || {
            let base = upstream_base.clone();
            async move {
                (get(&base, "/admin/faults").await.json()["calls"].as_u64() >= Some(1))
                    .then_some(())
            }
        },
    )
    .await;
    server.signal("-TERM");
    let r = pending.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["id"], 7);
    assert!(r.json()["price_cents"].as_i64().is_some());
    let status = server.wait_exit(Duration::from_secs(12));
    assert!(status.success(), "exit status {status}");

    // Faults on: the price route answers 503 with Retry-After.
    let server = Proc::start("reference_server", &[("PRICING_URL", &upstream.base)]);
    let r = call(
        &upstream.base,
        Method::PUT,
        "/admin/faults",
        &[],
        r#"{"fail_rate":1.0,"delay_ms":0}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get(&server.base, "/products/7/price").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(
        call(
            &upstream.base,
            Method::PUT,
            "/admin/faults",
            &[],
            r#"{"fail_rate":2}"#
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );
}

/// On SIGTERM or SIGINT, `/readyz` answers 503 for `DRAIN` while requests are still
/// served; then the server stops accepting and exits 0.
#[tokio::test]
async fn sigterm_drains_before_it_stops_accepting() {
    for signal in ["-TERM", "-INT"] {
        drains_on(signal).await;
    }
}

/// A signal sent as soon as the server says where it listens already starts the drain:
/// the process exits 0, not by the signal's default action.
#[test]
fn a_signal_right_after_start_drains_too() {
    for signal in ["-TERM", "-INT"] {
        let mut server = Proc::start("reference_server", &[("DRAIN", "0s")]);
        server.signal(signal);
        let status = server.wait_exit(Duration::from_secs(5));
        assert!(status.success(), "{signal}: exit status {status}");
    }
}

async fn drains_on(signal: &str) {
    let mut server = Proc::start("reference_server", &[("DRAIN", "1500ms")]);
    assert_eq!(get(&server.base, "/readyz").await.status, StatusCode::OK);
    server.signal(signal);
    let signalled = std::time::Instant::now();
    support::eventually(
        "/readyz to say draining",
        Duration::from_secs(2),
        || async {
            let r = get(&server.base, "/readyz").await;
            (r.status == StatusCode::SERVICE_UNAVAILABLE).then_some(())
        },
    )
    .await;
    let r = get(&server.base, "/readyz").await;
    assert!(r.json()["error"].as_str().unwrap().contains("draining"));
    // Still serving meanwhile, on new connections too.
    let mut served = 0;
    while signalled.elapsed() < Duration::from_millis(1200) {
        assert_eq!(
            get(&server.base, "/products/3").await.status,
            StatusCode::OK
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served >= 10, "{served}");
    let status = server.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "exit status {status}");
    assert!(
        signalled.elapsed() >= Duration::from_millis(1500),
        "stopped before the drain ended: {:?}",
        signalled.elapsed()
    );
}

#[test]
fn bad_configuration_stops_start_with_the_variable_named() {
    for (var, value) in [
        ("RATE_LIMIT", "lots"),
        ("LISTEN", "not-an-address"),
        ("TRUSTED_PROXIES", "10.0.0.0/40"),
        ("CACHE_TTL", "0s"),
    ] {
        let out = Command::new(example("reference_server"))
            .env_clear()
            .env(var, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}: {stderr}");
        assert!(
            stderr.contains(var),
            "{var}: message must name the variable: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{var}: {stderr}");
    }
}

#[tokio::test]
async fn instances_sharing_redis_share_the_quota() {
    let redis = support::RedisServer::start();
    let db = catalog_file();
    let env = [
        ("REDIS_URL", redis.url()),
        ("DATABASE_FILE", db.path().to_owned()),
        ("RATE_LIMIT", "4/1h".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = Proc::start("reference_server", &env);
    let b = Proc::start("reference_server", &env);
    for base in [&a.base, &b.base, &a.base, &b.base] {
        assert_eq!(get(base, "/products/2").await.status, StatusCode::OK);
    }
    // Four admitted in all: both instances now refuse this client.
    assert_eq!(
        get(&a.base, "/products/2").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        get(&b.base, "/products/2").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    // A login on one instance is a session on the other (sessions live in Redis); /me is
    // outside the rate-limited routes.
    let r = call(&a.base, Method::POST, "/login", &[], r#"{"user":"roam"}"#).await;
    let set = r.headers["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set.split(';').next().unwrap();
    let me = call(&b.base, Method::GET, "/me", &[("cookie", cookie)], "").await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json()["user"], "roam");
    let me = call(&a.base, Method::GET, "/me", &[("cookie", cookie)], "").await;
    assert_eq!(me.json()["visits"], 2, "one counter across both instances");
}

/// With `RATE_LIMIT_LEASE`, instances take their units from Redis in batches: together
/// they still admit no more than the shared quota (less by at most a batch an instance),
/// and most decisions are made from a lease, with no round trip.
#[tokio::test]
async fn leasing_instances_keep_the_shared_quota() {
    let redis = support::RedisServer::start();
    let db = catalog_file();
    let env = [
        ("REDIS_URL", redis.url()),
        ("DATABASE_FILE", db.path().to_owned()),
        ("RATE_LIMIT", "40/1h".to_owned()),
        ("RATE_LIMIT_LEASE", "5".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (a, b) = (
        Proc::start("reference_server", &env),
        Proc::start("reference_server", &env),
    );
    let mut admitted = 0;
    for i in 0..60 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        match get(base, "/products/2").await.status {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!((30..=40).contains(&admitted), "{admitted} admitted of 40");
    let mut from_leases = 0.0;
    for base in [&a.base, &b.base] {
        let m = get(base, "/metrics").await.text();
        from_leases += m
            .lines()
            .find(|l| l.starts_with(r#"tower_scale_rate_limit_lease_checks_total{source="lease"}"#))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no lease decisions counted:\n{m}"));
    }
    assert!(from_leases >= 25.0, "{from_leases} decisions from leases");
}

#[tokio::test]
async fn price_route_breaker_opens_on_faults_and_closes_after() {
    let upstream = Proc::start("pricing_upstream", &[("FAIL_RATE", "1")]);
    let server = Proc::start(
        "reference_server",
        &[
            ("PRICING_URL", &upstream.base),
            ("PRICING_BREAKER_OPEN", "1s"),
        ],
    );
    let upstream_calls = || async {
        get(&upstream.base, "/admin/faults").await.json()["calls"]
            .as_u64()
            .unwrap()
    };

    // Faults on: retried failures first, then the breaker opens and answers at once.
    let mut opened = false;
    for _ in 0..20 {
        let start = std::time::Instant::now();
        let r = get(&server.base, "/products/7/price").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers.contains_key("retry-after"));
        if r.json()["error"]
            .as_str()
            .unwrap()
            .contains("circuit breaker open")
        {
            assert!(
                start.elapsed() < Duration::from_millis(200),
                "refused fast: {:?}",
                start.elapsed()
            );
            opened = true;
            break;
        }
    }
    assert!(
        opened,
        "the breaker opened against an upstream failing every call"
    );
    let before = upstream_calls().await;
    for _ in 0..10 {
        let r = get(&server.base, "/products/7/price").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(
        upstream_calls().await <= before + 2,
        "while open, at most the half-open probes reach the upstream"
    );

    // Faults off: after the open duration the probes pass and the breaker closes.
    let r = call(
        &upstream.base,
        Method::PUT,
        "/admin/faults",
        &[],
        r#"{"fail_rate":0,"delay_ms":0}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let base = server.base.clone();
    support::eventually("the price route to answer 200 again", Duration::from_secs(10), || {
        let base = base.clone();
        async move { (get(&base, "/products/7/price").await.status == StatusCode::OK).then_some(()) }
    })
    .await;
    for _ in 0..5 {
        assert_eq!(
            get(&server.base, "/products/7/price").await.status,
            StatusCode::OK
        );
    }
    let metrics = String::from_utf8(get(&server.base, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("tower_scale_circuit_breaker_transitions"),
        "transitions in /metrics"
    );
}

/// Two instances on one Redis, and two on the Redis Cluster, each pair sharing a catalogue
/// file: an entry one stores the other reads from L2, and a `PUT` on one is what both serve
/// afterwards (neither refills the shared cache from a catalogue of its own).
#[tokio::test]
async fn instances_sharing_redis_share_the_cache_and_its_invalidations() {
    let redis = support::RedisServer::start();
    let cluster = support::redis_cluster_nodes().join(",");
    for (var, value) in [("REDIS_URL", redis.url()), ("REDIS_CLUSTER_NODES", cluster)] {
        share_the_cache(var, &value).await;
    }
}

async fn share_the_cache(var: &str, value: &str) {
    let db = catalog_file();
    // A prefix of its own: the Cluster is shared by every test run.
    let prefix = support::unique("refsrv");
    let env = [
        (var, value),
        ("DATABASE_FILE", db.path()),
        ("REDIS_PREFIX", &prefix),
    ];
    let a = Proc::start("reference_server", &env);
    let b = Proc::start("reference_server", &env);
    // The subscribers connect within moments of start; until then L1 is trusted for 1 s.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let on_a = get(&a.base, "/products/4").await;
    assert!(
        cache_status(&on_a).contains("stored"),
        "{var}: {}",
        cache_status(&on_a)
    );
    let r = get(&b.base, "/products/4").await;
    assert!(
        cache_status(&r).contains("detail=l2"),
        "{var}: B reads A's entry: {}",
        cache_status(&r)
    );
    // One entry, one validator: a client's `If-None-Match` holds on either instance.
    assert_eq!(r.headers["etag"], on_a.headers["etag"], "{var}");
    let r = get(&b.base, "/products/4").await;
    assert!(
        cache_status(&r).contains("hit; ttl="),
        "{var}: {}",
        cache_status(&r)
    );

    let cookie = login(&b.base, "editor").await;
    let r = put_product(&b.base, &cookie, 4, "Renamed on B", 1).await;
    assert_eq!(r.status, StatusCode::OK, "{var}");
    // For a moment after its write the writer reads past every instance's cache, so it
    // sees the write even on one that the invalidation message has not reached yet: its
    // reads there are answered by the database, never by a stored copy.
    let mark = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("db_pos="))
        .unwrap_or_else(|| panic!("{var}: the write is marked"))
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let writer = format!("{cookie}; {mark}");
    for _ in 0..2 {
        let r = call(
            &a.base,
            Method::GET,
            "/products/4",
            &[("cookie", &writer)],
            "",
        )
        .await;
        assert_eq!(r.json()["name"], "Renamed on B", "{var}: the writer on A");
        assert!(
            !cache_status(&r).contains("hit"),
            "{var}: the writer's read on A: {}",
            cache_status(&r)
        );
    }
    // A drops its copy, and from then on both serve the new product, however often they
    // are asked.
    support::eventually(
        &format!("{var}: A to drop /products/4"),
        Duration::from_secs(2),
        || async {
            let r = get(&a.base, "/products/4").await;
            (r.json()["name"] == "Renamed on B").then_some(())
        },
    )
    .await;
    for _ in 0..5 {
        for (who, base) in [("A", &a.base), ("B", &b.base)] {
            let r = get(base, "/products/4").await;
            assert_eq!(r.json()["name"], "Renamed on B", "{var}: {who}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A server on `pair` (its primary and replica) with `extra` settings, once an uncached
/// read is served by the replica (the seed has replayed there); that read's answer.
async fn on_pair(pair: &support::PgPair, extra: &[(&str, &str)]) -> (Proc, common::Resp) {
    let (primary_url, replica_url) = (pair.primary_url(), pair.replica_url());
    let mut env = vec![
        ("DATABASE_URL", primary_url.as_str()),
        ("DATABASE_REPLICA_URLS", replica_url.as_str()),
    ];
    env.extend_from_slice(extra);
    let server = Proc::start("reference_server", &env);
    // Until the seed has replayed, a read that fails there is served by the primary, and
    // says so.
    let r = support::eventually(
        "a product served by the replica",
        Duration::from_secs(10),
        || async {
            let r = call(
                &server.base,
                Method::GET,
                "/products/1",
                &[("cache-control", "no-store")],
                "",
            )
            .await;
            (r.status == StatusCode::OK && r.headers["x-db-route"] == "replica").then_some(r)
        },
    )
    .await;
    (server, r)
}

/// The replica stops under steady uncached reads: none fails. The first read that fails
/// on it is retried on the primary and takes it out of rotation, before any health check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_under_load_fails_no_read() {
    let pair = support::PgPair::start();
    let (server, _) = on_pair(&pair, &[("RATE_LIMIT", "1000000/1s")]).await;
    let base = server.base.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for t in 0..4 {
        let (base, stop) = (base.clone(), std::sync::Arc::clone(&stop));
        readers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let path = format!("/products/{}", 1 + (t * 100 + i) % 500);
                let r = call(
                    &base,
                    Method::GET,
                    &path,
                    &[("cache-control", "no-store")],
                    "",
                )
                .await;
                if r.status == StatusCode::OK {
                    ok += 1;
                } else {
                    failed.push(r.status);
                }
                i += 1;
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    pair.stop_replica();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for r in readers {
        let (o, f) = r.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    eprintln!(
        "replica stopped under load: {ok} reads served, {} failed",
        failed.len()
    );
    assert!(ok > 100, "{ok}");
    assert!(failed.is_empty(), "failed reads: {failed:?}");
    // Now served by the primary.
    let r = call(
        &base,
        Method::GET,
        "/products/9",
        &[("cache-control", "no-store")],
        "",
    )
    .await;
    assert_eq!(r.headers["x-db-route"], "primary");
}

#[tokio::test]
async fn with_postgres_reads_go_to_the_replica_and_a_writer_reads_its_write() {
    let pair = support::PgPair::start();
    let replica_url = pair.replica_url();
    // The seed reaches the replica; an uncached read is served there.
    let (server, r) = on_pair(&pair, &[("SESSION_COOKIE_SECURE", "0")]).await;
    let base = &server.base;
    assert_eq!(r.json()["name"], "Product 1");
    assert_eq!(r.headers["x-db-route"], "replica");
    let ready = get(base, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);

    // Replay paused on the replica: the writer's next read goes to the primary and sees
    // its write; another client still reads the replica.
    let (replica, conn) = tokio_postgres::connect(&replica_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    support::pause_replay(&replica_url).await;
    let session = login(base, "writer").await;
    let put = put_product(base, &session, 2, "Written", 7).await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(put.headers["x-db-route"], "primary");
    let token = set_cookie(&put, "db_pos").expect("a write sets the token");
    // Wait for a health check to see the paused replica's position.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cookies = format!("{session}; {token}");
    // Another client reads through the cache: a miss, served by the paused replica, and
    // stored.
    let theirs = call(base, Method::GET, "/products/2", &[], "").await;
    assert_eq!(
        theirs.json()["name"],
        "Product 2",
        "the paused replica has not replayed it"
    );
    assert_eq!(theirs.headers["x-db-route"], "replica");
    let hit = call(base, Method::GET, "/products/2", &[], "").await;
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    assert_eq!(hit.json()["name"], "Product 2");
    // The writer reads through the same cache and still sees its write, from the
    // primary; the entry is refreshed with it.
    let mine = call(
        base,
        Method::GET,
        "/products/2",
        &[("cookie", &cookies)],
        "",
    )
    .await;
    assert_eq!(mine.json()["name"], "Written", "the writer sees its write");
    assert_eq!(mine.headers["x-db-route"], "primary");
    let after = call(base, Method::GET, "/products/2", &[], "").await;
    assert!(
        cache_status(&after).contains("hit"),
        "{}",
        cache_status(&after)
    );
    assert_eq!(after.json()["name"], "Written", "the refreshed entry");

    replica
        .execute("SELECT pg_wal_replay_resume()", &[])
        .await
        .unwrap();
    support::eventually(
        "the writer back on the replica",
        Duration::from_secs(10),
        || async {
            let r = call(
                base,
                Method::GET,
                "/products/2",
                &[("cookie", &cookies), ("cache-control", "no-store")],
                "",
            )
            .await;
            (r.headers["x-db-route"] == "replica" && r.json()["name"] == "Written").then_some(())
        },
    )
    .await;
}

/// An export accepted by one instance and running on a second that is killed (SIGKILL,
/// mid-export) is finished by a third within the export lease (10 s) plus a margin.
#[tokio::test]
async fn an_export_whose_instance_dies_is_finished_by_another() {
    let redis = support::RedisServer::start();
    let url = redis.url();
    let db = catalog_file();
    let db = db.path();
    let accepts = Proc::start(
        "reference_server",
        &[
            ("REDIS_URL", &url),
            ("DATABASE_FILE", db),
            ("EXPORT_WORKERS", "0"),
        ],
    );
    let mut runs = Proc::start(
        "reference_server",
        &[
            ("REDIS_URL", &url),
            ("DATABASE_FILE", db),
            ("EXPORT_WORKERS", "1"),
            ("EXPORT_PAGE_DELAY", "400ms"),
        ],
    );
    let r = call(&accepts.base, Method::POST, "/exports", &[], "").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let location = r.headers["location"].to_str().unwrap().to_owned();
    support::eventually(
        "the export runs on the second instance",
        Duration::from_secs(10),
        || async {
            let s = get(&accepts.base, &location).await.json();
            (s["state"] == "running" && s["progress"].as_u64() >= Some(10)).then_some(())
        },
    )
    .await;
    runs.signal("-KILL");
    runs.wait_exit(Duration::from_secs(5));
    let killed = std::time::Instant::now();
    let _third = Proc::start(
        "reference_server",
        &[
            ("REDIS_URL", &url),
            ("DATABASE_FILE", db),
            ("EXPORT_WORKERS", "1"),
        ],
    );
    let file = support::eventually(
        "another instance finishes it",
        Duration::from_secs(20),
        || async {
            let r = get(&accepts.base, &location).await;
            (r.headers["content-type"] == "text/csv; charset=utf-8").then_some(r)
        },
    )
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(10 + 3),
        "finished {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(file.text().lines().count(), 1001, "the whole catalogue");
}

/// Slow clients cannot hold an instance: half-sent and silent connections are closed after
/// the header timeout, connections past the cap are closed at once, and `/healthz` keeps
/// answering while the cap is not reached.
#[tokio::test]
async fn slow_and_silent_connections_are_closed_and_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Proc::start(
        "reference_server",
        &[("HEADER_READ_TIMEOUT", "1s"), ("MAX_CONNECTIONS", "40")],
    );
    let addr = server.base.trim_start_matches("http://").to_owned();
    // 30 half-sent requests.
    let mut slow = Vec::new();
    for _ in 0..30 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let start = std::time::Instant::now();
    assert_eq!(get(&server.base, "/healthz").await.status, StatusCode::OK);
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    // A keep-alive connection that waits less than the timeout between requests is kept:
    // the timeout is never cut short.
    let mut kept = tokio::net::TcpStream::connect(&addr).await.unwrap();
    for _ in 0..2 {
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(2), kept.read(&mut buf))
            .await
            .expect("answered")
            .unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    drop(kept);
    // Closed by the server once the header timeout passes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for s in &mut slow {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf))
            .await
            .expect("closed, not hanging")
            .unwrap_or(0);
        // A 408 or nothing, then the end.
        let _ = n;
        let rest = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf))
            .await
            .expect("closed, not hanging");
        assert!(matches!(rest, Ok(0) | Err(_)), "still open: {rest:?}");
    }
    drop(slow);
    // Silent connections up to the cap; one more closes the oldest silent one and is
    // served.
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&server.base, "/healthz").await.status, StatusCode::OK);
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_millis(500), silent[0].read(&mut buf))
        .await
        .expect("the oldest silent connection is closed, not held");
    assert!(matches!(r, Ok(0) | Err(_)), "oldest: {r:?}");
    drop(silent);
}

/// Past the connection cap, with the descriptor limit below `MAX_CONNECTIONS`: half-sent
/// requests cannot lock clients out (each new connection closes the oldest idle one, and
/// `/healthz` answers at once), all of them are closed after the header timeout, and a
/// new connection is refused only while every open one is serving a request.
#[tokio::test]
async fn past_the_cap_idle_connections_make_room_and_busy_ones_do_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Proc::start_with_fd_limit(
        "reference_server",
        &[
            ("HEADER_READ_TIMEOUT", "3s"),
            ("LOGIN_RATE_LIMIT", "10000/1m"),
        ],
        256,
    );
    let addr = server.base.trim_start_matches("http://").to_owned();
    // 300 half-sent requests: more than the 256 descriptors the process may open.
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let mut took = Vec::new();
    for _ in 0..5 {
        let start = std::time::Instant::now();
        assert_eq!(get(&server.base, "/healthz").await.status, StatusCode::OK);
        took.push(start.elapsed());
    }
    took.sort();
    eprintln!("/healthz past the cap: {took:?}");
    assert!(took[2] < Duration::from_millis(100), "{took:?}");
    // Every half-sent request is closed by the header timeout at the latest.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut open = 0;
    for s in &mut slow {
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(_)) => {} // a 408, then the end
                Err(_) => {
                    open += 1;
                    break;
                }
            }
        }
    }
    assert_eq!(open, 0, "half-sent connections still open");
    drop(slow);
    // Requests in progress up to the cap (bodies that never come): a new connection is
    // closed at once, for none of them can be closed to make room.
    let mut busy = Vec::new();
    let cap = 256 - 64;
    for _ in 0..cap {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n")
            .await
            .unwrap();
        busy.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut over = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = over
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_millis(500), over.read(&mut buf))
        .await
        .expect("refused at once, not held");
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "over a cap of busy connections: {r:?}"
    );
    drop(busy);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get(&server.base, "/healthz").await.status, StatusCode::OK);
}

/// With `METRICS_LISTEN`, `/metrics` answers there and not on the public listener.
#[tokio::test]
async fn metrics_can_have_a_listener_of_their_own() {
    let port = support::free_port();
    let at = format!("127.0.0.1:{port}");
    let server = Proc::start("reference_server", &[("METRICS_LISTEN", &at)]);
    assert_eq!(
        get(&server.base, "/products/1").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&server.base, "/metrics").await.status,
        StatusCode::NOT_FOUND
    );
    let m = support::eventually("the metrics listener", Duration::from_secs(5), || async {
        let r = get(&format!("http://{at}"), "/metrics").await;
        (r.status == StatusCode::OK).then_some(r.text())
    })
    .await;
    assert!(m.contains(r#"http_route="/products/{id}""#), "{m}");
    let main = get(&server.base, "/healthz").await;
    assert_eq!(main.status, StatusCode::OK);
    // The metrics listener answers as the server does: the instance's name and a request
    // id on every answer, errors as JSON.
    let r = get(&format!("http://{at}"), "/metrics").await;
    assert_eq!(r.headers["x-served-by"], main.headers["x-served-by"]);
    assert!(!r.headers["x-request-id"].is_empty());
    let r = get(&format!("http://{at}"), "/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json()["error"].is_string(), "{}", r.text());
    assert!(!r.headers["x-request-id"].is_empty());
}

/// Without `INSTANCE_ID`, an instance bound to every address is named by its host, not
/// by `0.0.0.0`, which would name every machine alike.
#[tokio::test]
async fn an_instance_on_every_address_is_named_by_its_host() {
    let server = Proc::start("reference_server", &[("LISTEN", "0.0.0.0:0")]);
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let r = get(&server.base, "/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-served-by"], format!("{}:{port}", host.trim()));
}
