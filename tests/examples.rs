//! The scenario examples (`examples/*.rs`) run as a user runs them, each answering the
//! requests its header comment promises, so they cannot rot. `cargo test` builds them
//! beside this test; each needing Redis gets a private one.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// An example's binary, built by `cargo test` next to this test's.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo test` (which builds the examples), not only this test",
        path.display()
    );
    path
}

/// A running example, killed on drop.
struct Running {
    child: Child,
    base: String,
}

impl Running {
    fn start(name: &str, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(binary(name))
            .env("LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("{name} printed no address: {line:?}"))
            .to_owned();
        Self { child, base }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request; its status, headers and body.
async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, http::HeaderMap, String) {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = client
        .request(req.body(body.to_owned().into()).unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// The `name=value` of the first `Set-Cookie`.
fn first_cookie(headers: &http::HeaderMap) -> String {
    let set = headers["set-cookie"].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

/// Logs `user` in with the examples' `POST /login` (JSON `{"user": ...}`, answered
/// "hello USER"); the session cookie.
async fn login(base: &str, user: &str) -> String {
    let (status, headers, body) = send(
        "POST",
        &format!("{base}/login"),
        &[("content-type", "application/json")],
        &format!(r#"{{"user":"{user}"}}"#),
    )
    .await;
    assert_eq!((status, body), (200, format!("hello {user}\n")));
    first_cookie(&headers)
}

/// The `/metrics` line counting requests to the route template `/products/{id}`, and the
/// whole page.
async fn products_count(base: &str) -> (String, String) {
    let (_, _, metrics) = send("GET", &format!("{base}/metrics"), &[], "").await;
    let count = metrics
        .lines()
        .find(|l| {
            l.starts_with("http_server_request_duration_seconds_count")
                && l.contains(r#"http_route="/products/{id}""#)
        })
        .unwrap_or_else(|| panic!("no histogram for the route template:\n{metrics}"))
        .to_owned();
    (count, metrics)
}

#[tokio::test]
async fn metrics_counts_requests_by_route_template() {
    let ex = Running::start("metrics", &[]);
    for _ in 0..2 {
        let (status, _, body) = send("GET", &format!("{}/products/7", ex.base), &[], "").await;
        assert_eq!((status, body.as_str()), (200, "product 7\n"));
    }
    let (count, metrics) = products_count(&ex.base).await;
    assert!(count.ends_with(" 2"), "{count}");
    assert!(!metrics.contains("/products/7"), "raw paths are not labels");
}

#[tokio::test]
async fn rate_limit_redis_refuses_the_eleventh_export_in_an_hour() {
    let redis = support::RedisServer::start();
    let ex = Running::start("rate_limit_redis", &[("REDIS_URL", &redis.url())]);
    let url = format!("{}/exports", ex.base);
    for i in 1..=10 {
        let (status, _, body) = send("POST", &url, &[], "").await;
        assert_eq!(
            (status, body.as_str()),
            (200, "export started\n"),
            "export {i}"
        );
    }
    let (status, headers, _) = send("POST", &url, &[], "").await;
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    // The general quota still has room.
    let (status, _, _) = send("GET", &format!("{}/products", ex.base), &[], "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn sessions_redis_logs_in_counts_and_logs_out() {
    let redis = support::RedisServer::start();
    let ex = Running::start("sessions_redis", &[("REDIS_URL", &redis.url())]);
    let cookie = login(&ex.base, "ada").await;
    for n in 1..=2 {
        let (_, _, body) = send(
            "GET",
            &format!("{}/visits", ex.base),
            &[("cookie", &cookie)],
            "",
        )
        .await;
        assert_eq!(body, format!("ada: visit {n}\n"));
    }
    let (_, _, body) = send(
        "POST",
        &format!("{}/logout", ex.base),
        &[("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(body, "bye\n");
    let (_, _, body) = send(
        "GET",
        &format!("{}/visits", ex.base),
        &[("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(
        body, "anonymous: visit 1\n",
        "the old cookie is a new, anonymous session"
    );
}

#[tokio::test]
async fn cache_aside_loads_once_and_reloads_after_an_update() {
    let redis = support::RedisServer::start();
    // Two instances sharing Redis: one's update reaches the other's memory.
    let a = Running::start("cache_aside", &[("REDIS_URL", &redis.url())]);
    let b = Running::start("cache_aside", &[("REDIS_URL", &redis.url())]);
    let get = |base: &str| format!("{base}/users/1");
    let (_, _, first) = send("GET", &get(&a.base), &[], "").await;
    assert_eq!(first, "user 1 (loads so far: 1)\n");
    let (_, _, again) = send("GET", &get(&a.base), &[], "").await;
    assert_eq!(again, first, "from the cache: no second load");
    let (_, _, updated) = send("PUT", &get(&a.base), &[], "Grace").await;
    assert_eq!(updated, "updated\n");
    let (_, _, after) = send("GET", &get(&a.base), &[], "").await;
    assert_eq!(after, "Grace (loads so far: 2)\n");
    // B has its own "database" (a map in its memory) but reads A's entry from Redis.
    let (_, _, from_b) = send("GET", &get(&b.base), &[], "").await;
    assert_eq!(
        from_b, "Grace (loads so far: 0)\n",
        "served from the shared tier"
    );
}

#[tokio::test]
async fn jobs_runs_a_report_off_the_request_and_shows_its_state() {
    let ex = Running::start("jobs", &[]);
    let (status, headers, body) = send("POST", &format!("{}/reports", ex.base), &[], "march").await;
    assert_eq!(status, 202, "{body}");
    let location = headers["location"].to_str().unwrap().to_owned();
    let url = format!("{}{location}", ex.base);
    let done = support::eventually("the report", std::time::Duration::from_secs(10), || async {
        let (_, _, body) = send("GET", &url, &[], "").await;
        body.contains("succeeded").then_some(body)
    })
    .await;
    assert!(done.contains("the report for march"), "{done}");
    let (status, _, _) = send("GET", &format!("{}/reports/nope", ex.base), &[], "").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn http_cache_answers_from_memory_with_etags_and_drops_on_put() {
    let ex = Running::start("http_cache", &[]);
    let url = format!("{}/articles/1", ex.base);
    let (_, first, body) = send("GET", &url, &[], "").await;
    assert_eq!(body, "article 1 (handler run 1)\n");
    assert!(
        first["cache-status"].to_str().unwrap().contains("fwd=miss"),
        "{first:?}"
    );
    let (_, second, body) = send("GET", &url, &[], "").await;
    assert_eq!(body, "article 1 (handler run 1)\n", "not run again");
    assert!(
        second["cache-status"].to_str().unwrap().contains("hit"),
        "{second:?}"
    );
    let etag = second["etag"].to_str().unwrap().to_owned();
    let (status, _, body) = send("GET", &url, &[("if-none-match", &etag)], "").await;
    assert_eq!((status, body.as_str()), (304, ""));
    let (status, _, _) = send("PUT", &url, &[], "").await;
    assert_eq!(status, 200);
    let (_, _, body) = send("GET", &url, &[], "").await;
    assert_eq!(
        body, "article 1 (handler run 2)\n",
        "the PUT dropped the copy"
    );
}

#[tokio::test]
async fn resilient_client_retries_then_opens_and_closes_its_breaker() {
    let ex = Running::start("resilient_client", &[]);
    let quote = format!("{}/quote", ex.base);
    // Every other upstream call fails: the retry hides it.
    for _ in 0..3 {
        let (status, _, body) = send("GET", &quote, &[], "").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("price 42"), "{body}");
    }
    send("POST", &format!("{}/upstream/down", ex.base), &[], "").await;
    // Failing every call: 503, and once the breaker has seen enough, refused at once.
    let mut open = false;
    for _ in 0..8 {
        let started = std::time::Instant::now();
        let (status, _, body) = send("GET", &quote, &[], "").await;
        assert_eq!(status, 503, "{body}");
        if body.contains("open") {
            assert!(
                started.elapsed() < std::time::Duration::from_millis(200),
                "{body}"
            );
            open = true;
            break;
        }
    }
    assert!(open, "the breaker never opened");
    send("POST", &format!("{}/upstream/up", ex.base), &[], "").await;
    // Closed again after its open second, by a probe that succeeds.
    support::eventually(
        "the breaker to close",
        std::time::Duration::from_secs(5),
        || async {
            let (status, _, _) = send("GET", &quote, &[], "").await;
            (status == 200).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn db_route_sqlx_reads_a_replica_and_the_writer_reads_its_write() {
    let pair = support::PgPair::start();
    let ex = Running::start(
        "db_route_sqlx",
        &[
            ("DATABASE_URL", &pair.primary_url()),
            ("DATABASE_REPLICA_URL", &pair.replica_url()),
        ],
    );
    // The seeded note, once the replica has replayed it and a health check has seen
    // the replica: read there.
    let first = format!("{}/notes/1", ex.base);
    support::eventually(
        "a read on the replica",
        std::time::Duration::from_secs(10),
        || async {
            let (status, headers, body) = send("GET", &first, &[], "").await;
            (status == 200 && body == "the first note\n" && headers["x-db-route"] == "replica")
                .then_some(())
        },
    )
    .await;

    // A fresh commit replayed just before the pause: the router measures a replica's
    // lag from its last replayed commit, so the paused replica stays within `max_lag`
    // (5 s) for the rest of the test, however long the start took.
    let (_, _, warm) = send("POST", &format!("{}/notes", ex.base), &[], "warm-up").await;
    let warm = format!("{}/notes/{}", ex.base, warm.trim());
    support::eventually(
        "the warm-up note on the replica",
        std::time::Duration::from_secs(10),
        || async {
            let (status, headers, _) = send("GET", &warm, &[], "").await;
            (status == 200 && headers["x-db-route"] == "replica").then_some(())
        },
    )
    .await;
    // Replay paused: the replica will not see the next write.
    support::pause_replay(&pair.replica_url()).await;
    let (status, headers, id) = send("POST", &format!("{}/notes", ex.base), &[], "mine").await;
    assert_eq!(status, 201, "{id}");
    assert_eq!(headers["x-db-route"], "primary");
    let token = first_cookie(&headers);
    assert!(token.starts_with("db_pos="), "{token}");
    let mine = format!("{}/notes/{}", ex.base, id.trim());
    // Without the cookie: the replica, which has not replayed it.
    let (status, headers, _) = send("GET", &mine, &[], "").await;
    assert_eq!(status, 404);
    assert_eq!(headers["x-db-route"], "replica");
    // With it: the primary, and the note.
    let (status, headers, body) = send("GET", &mine, &[("cookie", &token)], "").await;
    assert_eq!((status, body.as_str()), (200, "mine\n"));
    assert_eq!(headers["x-db-route"], "primary");
    // Once the replica has replayed the write, the writer's reads go back to it.
    let (replica, conn) = tokio_postgres::connect(&pair.replica_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    replica
        .execute("SELECT pg_wal_replay_resume()", &[])
        .await
        .unwrap();
    support::eventually(
        "the writer's reads back on the replica",
        std::time::Duration::from_secs(10),
        || async {
            let (status, headers, _) = send("GET", &mine, &[("cookie", &token)], "").await;
            (status == 200 && headers["x-db-route"] == "replica").then_some(())
        },
    )
    .await;
}

/// The fenced blocks of `docs/getting-started.md`: (info string, body).
fn guide_blocks() -> Vec<(String, String)> {
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/getting-started.md"
    ))
    .unwrap();
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in guide.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.to_owned(), String::new())),
            (Some(_), Some("")) => blocks.push(open.take().unwrap()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "an unclosed block in the guide");
    blocks
}

#[test]
fn the_guide_shows_the_example_program_and_fragments_of_it() {
    let program = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/getting_started.rs"
    ))
    .unwrap();
    // The example is the guide's finished program under a header comment.
    let body = program
        .split_once("\n\n")
        .map(|(header, rest)| {
            assert!(header.lines().all(|l| l.starts_with("//!")), "{header}");
            rest
        })
        .unwrap();
    let blocks = guide_blocks();
    let whole = blocks
        .iter()
        .rfind(|(info, _)| info == "rust,no_run")
        .expect("the finished program");
    assert_eq!(
        whole.1, body,
        "docs/getting-started.md's last program and examples/getting_started.rs differ"
    );
    // Every line of every step's fragment is in it (the fragments are not compiled).
    let lines: std::collections::HashSet<&str> = body.lines().map(str::trim).collect();
    let mut fragments = 0;
    for (_, fragment) in blocks.iter().filter(|(info, _)| info == "rust,ignore") {
        fragments += 1;
        for line in fragment.lines().map(str::trim).filter(|l| !l.is_empty()) {
            assert!(
                lines.contains(line),
                "a guide fragment's line is not in the program: {line:?}"
            );
        }
    }
    assert_eq!(fragments, 4, "steps 1, 2 (two) and 3");
}

/// What the guide promises, on two instances sharing one Redis.
#[tokio::test]
async fn getting_started_shares_quota_and_session_across_two_instances() {
    let redis = support::RedisServer::start();
    let a = Running::start("getting_started", &[("REDIS_URL", &redis.url())]);
    let b = Running::start("getting_started", &[("REDIS_URL", &redis.url())]);
    let host = |base: &str| base.trim_start_matches("http://").to_owned();

    // Step 1: the product, and its histogram by route template.
    let (status, _, body) = send("GET", &format!("{}/products/7", a.base), &[], "").await;
    assert_eq!(
        (status, body),
        (200, format!("product 7 (from {})\n", host(&a.base)))
    );
    let (count, _) = products_count(&a.base).await;
    assert!(count.ends_with(" 1"), "{count}");

    // Steps 2 and 4: 110 requests of one forwarded client, alternating instances.
    let mut ok = 0;
    let mut refused = 0;
    for i in 0..110 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let (status, headers, _) = send(
            "GET",
            &format!("{base}/products/1"),
            &[("x-forwarded-for", "10.0.0.9")],
            "",
        )
        .await;
        match status {
            200 => ok += 1,
            429 => {
                assert!(headers.contains_key("retry-after"), "{headers:?}");
                refused += 1;
            }
            other => panic!("{other}"),
        }
    }
    assert!(
        (100..=102).contains(&ok),
        "{ok} admitted, {refused} refused"
    );
    // This machine's own quota is another key.
    let (status, _, _) = send("GET", &format!("{}/products/1", b.base), &[], "").await;
    assert_eq!(status, 200);

    // Steps 3 and 4: log in on A, add to the cart on A then on B.
    let cookie = login(&a.base, "grace").await;
    for (n, ex) in [(1, &a), (2, &b)] {
        let (_, _, body) = send(
            "POST",
            &format!("{}/cart", ex.base),
            &[("cookie", &cookie)],
            "",
        )
        .await;
        assert_eq!(
            body,
            format!("grace: {n} in the cart (from {})\n", host(&ex.base))
        );
    }
}
