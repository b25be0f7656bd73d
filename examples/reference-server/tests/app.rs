//! The reference server in process (`app()` with `oneshot`): the HTTP contract in
//! `shared/reference-server.md`, for everything that needs no second process.

mod common;
#[path = "../../../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use common::{app, app_and_workers, cache_status, call, catalog_file, get, login, put_product};
use http::{Method, StatusCode};

// `/metrics` is asserted in `tests/metrics.rs`, alone in its process: the metrics
// recorder is one per process, and these tests run side by side.

#[tokio::test]
async fn routes_follow_the_contract() {
    let app = app(&[]).await;
    let base = &app;

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
            "missing field",
            Method::PUT,
            "/products/3",
            r#"{"name":"x"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "price as a string",
            Method::PUT,
            "/products/3",
            r#"{"name":"x","price_cents":"5"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown field",
            Method::PUT,
            "/products/3",
            r#"{"name":"x","price_cents":1,"colour":"red"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "login with a number for a name",
            Method::POST,
            "/login",
            r#"{"user":5}"#,
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
    // The default cookie is Secure, so its name is `__Host-id`.
    let planted = format!("__Host-id={}", "ab".repeat(32));
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
}

/// `/readyz` names the database when the primary stops answering, and is ready again
/// once it is back; the process stays alive meanwhile.
#[tokio::test]
async fn readiness_follows_the_database() {
    let pair = support::PgPair::start();
    let primary = pair.primary_url();
    let server = app(&[("DATABASE_URL", &primary)]).await;
    assert_eq!(get(&server, "/readyz").await.status, StatusCode::OK);
    pair.stop_primary();
    let r = get(&server, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.json()["error"].as_str().unwrap().starts_with("database"),
        "names the failing dependency: {}",
        r.text()
    );
    assert_eq!(get(&server, "/healthz").await.status, StatusCode::OK);
    pair.start_primary();
    support::eventually("ready again", Duration::from_secs(10), || async {
        (get(&server, "/readyz").await.status == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test]
async fn readiness_follows_redis() {
    let mut redis = support::RedisServer::start();
    let db = catalog_file();
    let server = app(&[("REDIS_URL", &redis.url()), ("DATABASE_FILE", db.path())]).await;
    assert_eq!(get(&server, "/readyz").await.status, StatusCode::OK);
    redis.kill();
    let r = get(&server, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.json()["error"].as_str().unwrap().contains("redis"),
        "names the failing dependency"
    );
    assert_eq!(
        get(&server, "/healthz").await.status,
        StatusCode::OK,
        "alive while not ready"
    );
    assert_eq!(
        get(&server, "/products/1").await.status,
        StatusCode::OK,
        "Redis is not needed to read"
    );
    redis.restart();
    support::eventually("ready again", Duration::from_secs(10), || async {
        (get(&server, "/readyz").await.status == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test]
async fn quotas_are_enforced_with_honest_headers() {
    let app = app(&[("RATE_LIMIT", "4/1h"), ("EXPORT_RATE_LIMIT", "2/1h")]).await;
    let base = &app;
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
    assert_eq!(r.headers["x-served-by"], "it-a");
    // Never limited.
    for path in ["/healthz", "/readyz", "/metrics"] {
        for _ in 0..6 {
            assert_eq!(get(base, path).await.status, StatusCode::OK, "{path}");
        }
    }
}

#[tokio::test]
async fn exports_cost_both_quotas_and_a_refused_export_costs_neither() {
    let app = app(&[("RATE_LIMIT", "10/1h"), ("EXPORT_RATE_LIMIT", "2/1h")]).await;
    let base = &app;
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
async fn product_reads_are_cached_and_a_put_invalidates_them() {
    let app = app(&[]).await;
    let base = &app;
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
    assert!(hit.headers.contains_key("age"), "a hit says its age");
    let list = get(base, "/products?limit=5").await;
    assert_eq!(list.json()["products"][2]["name"], "Product 3");
    let list_hit = get(base, "/products?limit=5").await;
    assert!(cache_status(&list_hit).contains("hit"));
    assert!(list_hit.headers.contains_key("age"));
    // The list has the same validators as a product.
    let list_etag = list_hit.headers["etag"].to_str().unwrap().to_owned();
    let r = call(
        base,
        Method::GET,
        "/products?limit=5",
        &[("if-none-match", &list_etag)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);

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
}

/// With debug logging, the trace layer is in the stack (it is left out otherwise): each
/// request gets its span, with the request's id, and its events; answers are the same.
#[tokio::test]
async fn with_debug_logging_requests_are_traced_and_answered_alike() {
    #[derive(Clone, Default)]
    struct Log(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Log {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("reference_server=debug,tower_http=debug")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // This thread only: the test runtime polls everything here.
    let _guard = tracing::subscriber::set_default(subscriber);
    assert!(reference_server::telemetry::tracing_requests());
    let app = app(&[]).await;
    let r = get(&app, "/products/1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-served-by"], "it-a");
    let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    let r = get(&app, "/products/999999").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.headers["content-type"], "application/json");
    let big = format!(r#"{{"user":"{}"}}"#, "u".repeat(reference_server::MAX_BODY));
    let r = call(&app, Method::POST, "/login", &[], &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        r.json()["error"],
        "payload too large",
        "JSON on this path too"
    );
    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let span = format!("request{{id=\"{id}\"");
    assert!(
        log.lines()
            .any(|l| l.contains(&span) && l.contains("finished processing request")),
        "no finished event in the span of {id}:\n{log}"
    );
}

#[tokio::test]
async fn refusals_made_outside_the_handlers_are_json_too() {
    let app = app(&[]).await;
    let big = format!(r#"{{"user":"{}"}}"#, "u".repeat(reference_server::MAX_BODY));
    let r = call(&app, Method::POST, "/login", &[], &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.json()["error"], "payload too large");
    assert_eq!(r.headers["x-served-by"], "it-a");
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413_too() {
    use tower::ServiceExt;
    let app = app(&[]).await;
    let big = format!(r#"{{"user":"{}"}}"#, "u".repeat(reference_server::MAX_BODY));
    // No Content-Length: the limit is found while the body is read.
    let mut req = http::Request::post("/login")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(big))
        .unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from(
            common::CLIENT,
        )));
    let res = app.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn the_embedded_database_answers_as_the_primary_and_sets_no_token() {
    let app = app(&[]).await;
    let cookie = login(&app, "editor").await;
    let r = put_product(&app, &cookie, 9, "Nine", 9).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-db-route"], "primary");
    assert_eq!(
        common::set_cookie(&r, "db_pos"),
        None,
        "one database: nothing to be consistent with"
    );
    let r = get(&app, "/products/9").await;
    assert_eq!(
        (
            r.json()["name"].as_str(),
            r.headers["x-db-route"].to_str().unwrap()
        ),
        (Some("Nine"), "primary")
    );
}

#[tokio::test]
async fn an_export_runs_on_a_worker_and_gives_the_file() {
    // Ten pages of 100 rows, 30 ms apart: long enough to see it run.
    let (app, workers) = app_and_workers(&[("EXPORT_PAGE_DELAY", "30ms")]).await;
    let base = &app;
    // A name a spreadsheet would run as a formula, and one that needs quoting.
    let cookie = login(base, "exporter").await;
    for (id, name) in [(3, "=HYPERLINK(\"x\")"), (4, "Nuts, salted")] {
        let body = serde_json::json!({ "name": name, "price_cents": 5 }).to_string();
        let path = format!("/products/{id}");
        let r = call(base, Method::PUT, &path, &[("cookie", &cookie)], &body).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }

    let r = call(base, Method::POST, "/exports", &[], "").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let job = r.json()["job"].as_str().unwrap().to_owned();
    let location = r.headers["location"].to_str().unwrap().to_owned();
    assert_eq!(location, format!("/exports/{job}"));

    let mut states = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let file = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the export did not finish: {states:?}"
        );
        let r = get(base, &location).await;
        assert_eq!(r.status, StatusCode::OK);
        if r.headers["content-type"] == "text/csv; charset=utf-8" {
            break r;
        }
        let s = r.json();
        assert_eq!(s["job"], job.as_str());
        assert_eq!(r.headers["retry-after"], "1", "while it runs: {s}");
        states.push((
            s["state"].as_str().unwrap().to_owned(),
            s["progress"].as_u64().unwrap(),
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        states
            .iter()
            .any(|(s, p)| s == "running" && (1..100).contains(p)),
        "progress was visible while it ran: {states:?}"
    );
    assert!(
        file.headers["content-disposition"]
            .to_str()
            .unwrap()
            .contains(&format!("products-{job}.csv"))
    );
    let csv = file.text();
    let lines: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1001, "a header and every product");
    assert_eq!(lines[0], "id,name,price_cents,version");
    assert_eq!(lines[1], "1,Product 1,137,1");
    assert_eq!(lines[3], "3,\"'=HYPERLINK(\"\"x\"\")\",5,2");
    assert_eq!(lines[4], "4,\"Nuts, salted\",5,2");
    assert_eq!(lines[1000], "1000,Product 1000,7400,1");

    // Unknown, malformed and path-like ids are 404s with a JSON error.
    for path in [
        format!("/exports/{}", "0".repeat(32)),
        "/exports/nope".to_owned(),
        "/exports/..%2F..%2Fetc".to_owned(),
        format!("/exports/{}", job.to_uppercase()),
    ] {
        let r = get(base, &path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains("no such export")
        );
    }
    let drained = workers.unwrap().shutdown(Duration::from_secs(1)).await;
    assert_eq!(drained.handed_back, 0);
}

#[tokio::test]
async fn with_no_workers_an_export_waits_in_the_queue() {
    let (app, workers) = app_and_workers(&[("EXPORT_WORKERS", "0")]).await;
    assert!(workers.is_none());
    let r = call(&app, Method::POST, "/exports", &[], "").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = get(&app, r.headers["location"].to_str().unwrap()).await;
    assert_eq!(
        (s.json()["state"].as_str(), s.json()["progress"].as_u64()),
        (Some("queued"), Some(0))
    );
}

#[tokio::test]
async fn one_spelling_per_resource_so_no_alias_is_served_stale() {
    let app = app(&[("SESSION_COOKIE_SECURE", "0")]).await;
    let base = &app;
    assert_eq!(get(base, "/products/8").await.status, StatusCode::OK);
    let cookie = login(base, "editor").await;
    let body = r#"{"name":"Renamed","price_cents":5}"#;
    let r = call(
        base,
        Method::PUT,
        "/products/8",
        &[("cookie", &cookie)],
        body,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    for alias in [
        "/products/08",
        "/products/+8",
        "/products/%38",
        "/products/008",
        "/products/8?x=1",
        "/products/8?",
    ] {
        let r = get(base, alias).await;
        if alias == "/products/8?" {
            // An empty query is the same URI as none.
            assert_eq!(r.json()["name"], "Renamed", "{alias}");
            continue;
        }
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{alias}");
        assert!(r.json()["error"].as_str().unwrap().len() > 10, "{alias}");
    }
    assert_eq!(get(base, "/products/8").await.json()["name"], "Renamed");
    for list in [
        "/products?limit=05",
        "/products?limit=%35",
        "/products?limit=5&limit=5",
        "/products?limit=5&x=1",
        "/products?limit=+5",
    ] {
        assert_eq!(
            get(base, list).await.status,
            StatusCode::BAD_REQUEST,
            "{list}"
        );
    }
    assert_eq!(
        get(base, "/products?limit=5&offset=0").await.status,
        StatusCode::OK
    );
    assert_eq!(get(base, "/products?offset=5").await.status, StatusCode::OK);
}

#[tokio::test]
async fn text_fields_refuse_control_characters_and_take_any_script() {
    let app = app(&[("SESSION_COOKIE_SECURE", "0")]).await;
    let base = &app;
    // 43 euro signs: 43 characters, 129 bytes: a valid user name.
    let euros = "€".repeat(43);
    let body = serde_json::json!({ "user": euros }).to_string();
    let r = call(base, Method::POST, "/login", &[], &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let cookie = login(base, "editor").await;
    for (field, bad) in [
        ("user", "a\u{0}b"),
        ("user", "line\nbreak"),
        ("user", &"é".repeat(65)),
    ] {
        let body = serde_json::json!({ field: bad }).to_string();
        let r = call(base, Method::POST, "/login", &[], &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}: {}", r.text());
    }
    for bad in ["nul\u{0}here", "tab\there", "bell\u{7}"] {
        let body = serde_json::json!({ "name": bad, "price_cents": 1 }).to_string();
        let r = call(
            base,
            Method::PUT,
            "/products/9",
            &[("cookie", &cookie)],
            &body,
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}: {}", r.text());
    }
    let body = serde_json::json!({ "name": "Ünïcødé ✓", "price_cents": 1 }).to_string();
    let r = call(
        base,
        Method::PUT,
        "/products/9",
        &[("cookie", &cookie)],
        &body,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn logins_are_rate_limited_per_client() {
    let app = app(&[("SESSION_COOKIE_SECURE", "0"), ("LOGIN_RATE_LIMIT", "3/1h")]).await;
    for i in 0..3 {
        let r = call(&app, Method::POST, "/login", &[], r#"{"user":"flood"}"#).await;
        assert_eq!(r.status, StatusCode::OK, "login {i}");
    }
    let r = call(&app, Method::POST, "/login", &[], r#"{"user":"flood"}"#).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        r.headers["ratelimit-policy"]
            .to_str()
            .unwrap()
            .contains("\"login\";q=3")
    );
    assert!(r.headers.get("set-cookie").is_none(), "no session was made");
    // Other routes are not charged for it.
    assert_eq!(get(&app, "/products/1").await.status, StatusCode::OK);
}

/// A login from a live session issues a new id and ends the one sent, for the same user
/// or another; with `SESSION_COOKIE_SECURE=0` the cookie is `id`, without `Secure`.
#[tokio::test]
async fn a_login_over_a_live_session_never_keeps_its_id() {
    let app = app(&[("SESSION_COOKIE_SECURE", "0")]).await;
    for user in ["ada", "bob"] {
        let first = login(&app, "ada").await;
        assert!(first.starts_with("id="), "{first}");
        let r = call(
            &app,
            Method::POST,
            "/login",
            &[("cookie", &first)],
            &format!(r#"{{"user":"{user}"}}"#),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let set = r.headers["set-cookie"].to_str().unwrap().to_owned();
        assert!(!set.contains("Secure"), "{set}");
        let next = set.split(';').next().unwrap().to_owned();
        assert_ne!(next, first, "{user}: a new id");
        let me = call(&app, Method::GET, "/me", &[("cookie", &next)], "").await;
        assert_eq!(me.json()["user"], user);
        let old = call(&app, Method::GET, "/me", &[("cookie", &first)], "").await;
        assert_eq!(
            old.status,
            StatusCode::UNAUTHORIZED,
            "{user}: the old id is dead"
        );
    }
}

/// `/me` counts exactly: 50 parallel calls of one session see 50 distinct counts, 1 to 50.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_me_calls_see_distinct_counts() {
    let (url, db) = (support::redis_url(), catalog_file());
    for env in [
        &[][..],
        &[("REDIS_URL", url.as_str()), ("DATABASE_FILE", db.path())][..],
    ] {
        parallel_me(env).await;
    }
}

async fn parallel_me(env: &[(&str, &str)]) {
    let app = app(env).await;
    let cookie = login(&app, "counter").await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (app, cookie) = (app.clone(), cookie.clone());
        tasks.push(tokio::spawn(async move {
            let r = call(&app, Method::GET, "/me", &[("cookie", &cookie)], "").await;
            assert_eq!(r.status, StatusCode::OK);
            r.json()["visits"].as_i64().unwrap()
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=50).collect::<Vec<_>>(), "{env:?}");
}

/// Instances started together on an empty PostgreSQL database each prepare it; none fails
/// on the race between two `CREATE TABLE IF NOT EXISTS` (it did, on a fresh machine, for
/// the scale-out rig's three instances).
#[tokio::test]
async fn instances_preparing_an_empty_database_together_all_succeed() {
    use reference_server::catalog::{Database, SEED_PRODUCTS};
    use sqlx::postgres::PgPoolOptions;

    let admin_url = support::pg_primary_url();
    let (admin, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // Several fresh databases: the race is a window, not a certainty, on any one of them.
    for round in 0..5 {
        let name = support::unique(&format!("prepare{round}")).replace('-', "_");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let url = format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0);
        let mut pools = Vec::new();
        for _ in 0..6 {
            pools.push(
                PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .unwrap(),
            );
        }
        let mut prepares = tokio::task::JoinSet::new();
        for p in &pools {
            let p = p.clone();
            prepares.spawn(async move { Database::prepare(&p).await.map_err(|e| e.to_string()) });
        }
        while let Some(r) = prepares.join_next().await {
            if let Err(e) = r.unwrap() {
                panic!("round {round}: an instance failed to prepare: {e}");
            }
        }
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM products")
            .fetch_one(&pools[0])
            .await
            .unwrap();
        assert_eq!(count, SEED_PRODUCTS);
        for p in pools {
            p.close().await;
        }
        admin
            .batch_execute(&format!("DROP DATABASE {name}"))
            .await
            .unwrap();
    }
}
