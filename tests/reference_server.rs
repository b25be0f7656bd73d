//! The reference server as a real process, over HTTP: the contract in
//! `shared/reference-server.md`.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

fn example(name: &str) -> PathBuf {
    // Test binaries live in target/<profile>/deps; cargo builds examples beside them.
    let mut p = std::env::current_exe().unwrap();
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    let p = p.join("examples").join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo test` (it builds examples) or `cargo build --examples`",
        p.display()
    );
    p
}

/// A running example process, killed on drop.
struct Proc {
    child: Child,
    base: String,
}

impl Proc {
    fn start(name: &str, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(example(name));
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

struct Resp {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn call(
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    if !body.is_empty() {
        b = b.header("content-type", "application/json");
    }
    let resp = client()
        .request(b.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body,
    }
}

async fn get(base: &str, path: &str) -> Resp {
    call(base, Method::GET, path, &[], "").await
}

#[tokio::test]
async fn routes_follow_the_contract() {
    let server = Proc::start("reference_server", &[("INSTANCE_ID", "it-a")]);
    let base = &server.base;

    let r = get(base, "/products/1").await;
    assert_eq!(r.status, StatusCode::OK);
    let p = r.json();
    assert_eq!(
        (p["id"].as_i64(), p["name"].as_str()),
        (Some(1), Some("Product 1"))
    );
    assert!(p["price_cents"].as_i64().is_some() && p["version"].as_i64() == Some(1));
    assert_eq!(r.headers["x-served-by"], "it-a");
    assert!(!r.headers["x-request-id"].is_empty());
    assert_eq!(r.headers["x-db-route"], "primary");

    // Table of error cases: status and a JSON error body.
    let cases: &[(&str, Method, &str, &str, StatusCode)] = &[
        (
            "unknown product",
            Method::GET,
            "/products/999999",
            "",
            StatusCode::NOT_FOUND,
        ),
        (
            "non-numeric id",
            Method::GET,
            "/products/abc",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            "limit too big",
            Method::GET,
            "/products?limit=101",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            "limit zero",
            Method::GET,
            "/products?limit=0",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            "negative offset",
            Method::GET,
            "/products?offset=-1",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            "malformed JSON",
            Method::PUT,
            "/products/3",
            "{not json",
            StatusCode::BAD_REQUEST,
        ),
        (
            "empty name",
            Method::PUT,
            "/products/3",
            r#"{"name":"","price_cents":1}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "long name",
            Method::PUT,
            "/products/3",
            &format!(r#"{{"name":"{}","price_cents":1}}"#, "n".repeat(201)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "negative price",
            Method::PUT,
            "/products/3",
            r#"{"name":"x","price_cents":-1}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown route",
            Method::GET,
            "/nope",
            "",
            StatusCode::NOT_FOUND,
        ),
        (
            "wrong method",
            Method::DELETE,
            "/products/1",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "price without upstream",
            Method::GET,
            "/products/1/price",
            "",
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    ];
    // Sessions: writes need a login; /me counts its own calls; logout ends it.
    let r = call(
        base,
        Method::PUT,
        "/products/2",
        &[],
        r#"{"name":"x","price_cents":1}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "PUT needs a login");
    assert_eq!(get(base, "/me").await.status, StatusCode::UNAUTHORIZED);
    let r = call(base, Method::POST, "/login", &[], r#"{"user":""}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let planted = format!("id={}", "ab".repeat(32));
    let r = call(
        base,
        Method::POST,
        "/login",
        &[("cookie", &planted)],
        r#"{"user":"tester"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["user"], "tester");
    let set = r.headers["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    let cookie = set.split(';').next().unwrap().to_owned();
    assert_ne!(cookie, planted, "login never keeps the id sent");
    for visits in 1..=2 {
        let me = call(base, Method::GET, "/me", &[("cookie", &cookie)], "").await;
        assert_eq!(me.json()["user"], "tester");
        assert_eq!(me.json()["visits"], visits);
    }
    let auth: &[(&str, &str)] = &[("cookie", &cookie)];

    for (name, method, path, body, want) in cases {
        let r = call(base, method.clone(), path, auth, body).await;
        assert_eq!(r.status, *want, "case {name}");
        assert!(
            r.json()["error"].is_string(),
            "case {name}: JSON error body"
        );
        assert_eq!(r.headers["x-served-by"], "it-a", "case {name}");
    }

    // List with paging.
    let l = get(base, "/products?limit=5&offset=10").await.json();
    let ids: Vec<i64> = l["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![11, 12, 13, 14, 15]);
    assert_eq!(
        get(base, "/products").await.json()["products"]
            .as_array()
            .unwrap()
            .len(),
        20
    );

    // Upsert bumps the version; the next read sees it; a new id is created.
    let r = call(
        base,
        Method::PUT,
        "/products/2",
        auth,
        r#"{"name":"Renamed","price_cents":999}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["version"], 2);
    let again = get(base, "/products/2").await.json();
    assert_eq!(
        (
            again["name"].as_str(),
            again["price_cents"].as_i64(),
            again["version"].as_i64()
        ),
        (Some("Renamed"), Some(999), Some(2))
    );
    assert_eq!(
        call(
            base,
            Method::PUT,
            "/products/5001",
            auth,
            r#"{"name":"New","price_cents":0}"#
        )
        .await
        .json()["version"],
        1
    );

    let r = call(base, Method::POST, "/logout", auth, "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(
        r.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        call(base, Method::GET, "/me", auth, "").await.status,
        StatusCode::UNAUTHORIZED
    );

    // Request ids are echoed when sane, replaced when not.
    let r = call(
        base,
        Method::GET,
        "/healthz",
        &[("x-request-id", "client-abc-123")],
        "",
    )
    .await;
    assert_eq!(r.headers["x-request-id"], "client-abc-123");
    let long = "x".repeat(500);
    let r = call(
        base,
        Method::GET,
        "/healthz",
        &[("x-request-id", &long)],
        "",
    )
    .await;
    assert_ne!(r.headers["x-request-id"], long.as_str());

    assert_eq!(
        call(base, Method::POST, "/exports", &[], "").await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(get(base, "/healthz").await.status, StatusCode::OK);
    assert_eq!(get(base, "/readyz").await.status, StatusCode::OK);

    // Metrics: real histogram buckets labelled by route template, never by raw path.
    let m = String::from_utf8(get(base, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        m.lines().any(
            |l| l.starts_with("http_server_request_duration_seconds_bucket{")
                && l.contains(r#"http_route="/products/{id}""#)
                && l.contains(r#"http_response_status_code="200""#)
        ),
        "no duration buckets for /products/{{id}}:\n{m}"
    );
    assert!(
        m.contains(r#"http_route="unmatched""#),
        "the unknown route is counted as unmatched"
    );
    assert!(
        !m.contains("/products/999999") && !m.contains(r#""/nope""#),
        "raw paths leaked into labels"
    );
    assert!(m.contains("http_server_active_requests{"));
    assert!(m.contains("http_server_requests_total{"));
}

#[tokio::test]
async fn price_route_and_graceful_shutdown() {
    let upstream = Proc::start("pricing_upstream", &[("DELAY_MS", "800")]);
    let mut server = Proc::start("reference_server", &[("PRICING_URL", &upstream.base)]);
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

#[tokio::test]
async fn readiness_follows_redis() {
    let mut redis = support::RedisServer::start();
    let server = Proc::start("reference_server", &[("REDIS_URL", &redis.url())]);
    assert_eq!(get(&server.base, "/readyz").await.status, StatusCode::OK);
    redis.kill();
    let r = get(&server.base, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.json()["error"].as_str().unwrap().contains("redis"),
        "names the failing dependency"
    );
    assert_eq!(
        get(&server.base, "/healthz").await.status,
        StatusCode::OK,
        "alive while not ready"
    );
    assert_eq!(
        get(&server.base, "/products/1").await.status,
        StatusCode::OK,
        "Redis is not needed to read"
    );
    redis.restart();
    let base = server.base.clone();
    support::eventually("ready again", Duration::from_secs(10), || {
        let base = base.clone();
        async move { (get(&base, "/readyz").await.status == StatusCode::OK).then_some(()) }
    })
    .await;
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
async fn quotas_are_enforced_with_honest_headers() {
    let server = Proc::start(
        "reference_server",
        &[("RATE_LIMIT", "4/1h"), ("EXPORT_RATE_LIMIT", "2/1h")],
    );
    let base = &server.base;
    for i in 0..4 {
        let r = get(base, "/products/1").await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
        assert_eq!(r.headers["ratelimit-policy"], "\"api\";q=4;w=3600");
        assert!(
            r.headers["ratelimit"]
                .to_str()
                .unwrap()
                .starts_with(&format!("\"api\";r={};", 3 - i))
        );
    }
    let r = get(base, "/products/1").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (900..=901).contains(&wait),
        "one emission interval (15 min): {wait}"
    );
    assert!(r.json()["error"].as_str().unwrap().contains("api"));
    assert_eq!(
        r.headers["x-served-by"],
        server.base.trim_start_matches("http://")
    );
    // Never limited.
    for path in ["/healthz", "/readyz", "/metrics"] {
        for _ in 0..6 {
            assert_eq!(get(base, path).await.status, StatusCode::OK, "{path}");
        }
    }
    let m = String::from_utf8(get(base, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        m.contains(r#"tower_scale_rate_limit_decisions_total{quota="api",decision="refused"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"http_response_status_code="429""#));
}

#[tokio::test]
async fn exports_cost_both_quotas_and_a_refused_export_costs_neither() {
    let server = Proc::start(
        "reference_server",
        &[("RATE_LIMIT", "10/1h"), ("EXPORT_RATE_LIMIT", "2/1h")],
    );
    let base = &server.base;
    for _ in 0..2 {
        assert_eq!(
            call(base, Method::POST, "/exports", &[], "").await.status,
            StatusCode::ACCEPTED
        );
    }
    let r = call(base, Method::POST, "/exports", &[], "").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.headers["ratelimit-policy"],
        "\"api\";q=10;w=3600, \"export\";q=2;w=3600"
    );
    // 10 - 2 exports = 8 reads left; the refused export took none.
    for i in 0..8 {
        assert_eq!(
            get(base, "/products/1").await.status,
            StatusCode::OK,
            "read {i}"
        );
    }
    assert_eq!(
        get(base, "/products/1").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn instances_sharing_redis_share_the_quota() {
    let redis = support::RedisServer::start();
    let env = [
        ("REDIS_URL", redis.url()),
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

fn cache_status(r: &Resp) -> String {
    r.headers
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn login(base: &str, user: &str) -> String {
    let r = call(
        base,
        Method::POST,
        "/login",
        &[],
        &format!(r#"{{"user":"{user}"}}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let set = r.headers["set-cookie"].to_str().unwrap().to_owned();
    set.split(';').next().unwrap().to_owned()
}

/// `PUT /products/{id}` as the session in `cookie`.
async fn put_product(base: &str, cookie: &str, id: i64, name: &str, price_cents: i64) -> Resp {
    call(
        base,
        Method::PUT,
        &format!("/products/{id}"),
        &[("cookie", cookie)],
        &format!(r#"{{"name":"{name}","price_cents":{price_cents}}}"#),
    )
    .await
}

#[tokio::test]
async fn product_reads_are_cached_and_a_put_invalidates_them() {
    let server = Proc::start("reference_server", &[]);
    let base = &server.base;
    let first = get(base, "/products/3").await;
    assert!(
        cache_status(&first).contains("fwd=miss; stored"),
        "{}",
        cache_status(&first)
    );
    let hit = get(base, "/products/3").await;
    assert!(
        cache_status(&hit).contains("hit; ttl="),
        "{}",
        cache_status(&hit)
    );
    assert_eq!(hit.json(), first.json());
    assert_eq!(hit.headers["x-served-by"], first.headers["x-served-by"]);
    let etag = hit.headers["etag"].to_str().unwrap().to_owned();
    let r = call(
        base,
        Method::GET,
        "/products/3",
        &[("if-none-match", &etag)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let list = get(base, "/products?limit=5").await;
    assert_eq!(list.json()["products"][2]["name"], "Product 3");
    assert!(cache_status(&get(base, "/products?limit=5").await).contains("hit"));

    let cookie = login(base, "editor").await;
    let r = put_product(base, &cookie, 3, "Fresh", 5).await;
    assert_eq!(r.status, StatusCode::OK);
    // Both the product and the list are dropped: the next reads see the write.
    let after = get(base, "/products/3").await;
    assert!(
        cache_status(&after).contains("fwd=miss"),
        "{}",
        cache_status(&after)
    );
    assert_eq!(after.json()["name"], "Fresh");
    assert_ne!(after.headers["etag"].to_str().unwrap(), etag);
    let list = get(base, "/products?limit=5").await;
    assert_eq!(list.json()["products"][2]["name"], "Fresh");
    // The cache reports itself in /metrics.
    let m = String::from_utf8(get(base, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        m.contains("tower_scale_cache_hits"),
        "cache hits in /metrics"
    );
}

#[tokio::test]
async fn instances_sharing_redis_share_the_cache_and_its_invalidations() {
    let redis = support::RedisServer::start();
    let env = [("REDIS_URL", redis.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = Proc::start("reference_server", &env);
    let b = Proc::start("reference_server", &env);
    // The subscribers connect within moments of start; until then L1 is trusted for 1 s.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = get(&a.base, "/products/4").await;
    assert!(cache_status(&r).contains("stored"), "{}", cache_status(&r));
    let r = get(&b.base, "/products/4").await;
    assert!(
        cache_status(&r).contains("detail=l2"),
        "B reads A's entry: {}",
        cache_status(&r)
    );
    let r = get(&b.base, "/products/4").await;
    assert!(
        cache_status(&r).contains("hit; ttl="),
        "{}",
        cache_status(&r)
    );

    let cookie = login(&a.base, "editor").await;
    let r = put_product(&a.base, &cookie, 4, "Renamed on A", 1).await;
    assert_eq!(r.status, StatusCode::OK);
    // B drops its copy: its next read goes to its own database.
    support::eventually("B to drop /products/4", Duration::from_secs(2), || async {
        let r = get(&b.base, "/products/4").await;
        cache_status(&r).contains("fwd=miss").then_some(())
    })
    .await;
}

/// The first `name=value` of a response's `Set-Cookie` headers for `name`.
fn set_cookie(r: &Resp, name: &str) -> Option<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
        .find(|c| c.starts_with(&format!("{name}=")))
}

#[tokio::test]
async fn with_postgres_reads_go_to_the_replica_and_a_writer_reads_its_write() {
    let pair = support::PgPair::start();
    let (primary_url, replica_url) = (pair.primary_url(), pair.replica_url());
    let server = Proc::start(
        "reference_server",
        &[
            ("DATABASE_URL", &primary_url),
            ("DATABASE_REPLICA_URLS", &replica_url),
            ("SESSION_COOKIE_SECURE", "0"),
        ],
    );
    let base = &server.base;
    // The seed reaches the replica; an uncached read is served there.
    let r = support::eventually(
        "a product served by the replica",
        Duration::from_secs(10),
        || async {
            let r = call(
                base,
                Method::GET,
                "/products/1",
                &[("cache-control", "no-store")],
                "",
            )
            .await;
            (r.status == StatusCode::OK).then_some(r)
        },
    )
    .await;
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
