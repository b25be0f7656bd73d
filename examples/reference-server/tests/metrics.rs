//! `/metrics` of the app in process, alone in this test binary (the `metrics` recorder is
//! one per process): every layer reports, by route template, never by raw path.

mod common;
#[path = "../../../tests/support/mod.rs"]
mod support;

use common::{app, app_and_workers, call, get, sample};
use http::{Method, StatusCode};

#[tokio::test]
async fn metrics_report_every_layer_by_route_template() {
    let app = app(&[("RATE_LIMIT", "4/1h")]).await;
    // Four admitted on the api quota: a miss and a hit of one product, an unknown
    // product, the list; then a refusal.
    assert_eq!(get(&app, "/products/1").await.status, StatusCode::OK);
    assert_eq!(get(&app, "/products/1").await.status, StatusCode::OK);
    assert_eq!(
        get(&app, "/products/999999").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(&app, "/products").await.status, StatusCode::OK);
    assert_eq!(
        get(&app, "/products/1").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(get(&app, "/nope").await.status, StatusCode::NOT_FOUND);

    let m = get(&app, "/metrics").await.text();
    assert!(
        m.lines().any(
            |l| l.starts_with("http_server_request_duration_seconds_bucket{")
                && l.contains(r#"http_request_method="GET""#)
                && l.contains(r#"http_route="/products/{id}""#)
                && l.contains(r#"http_response_status_code="200""#)
        ),
        "no duration buckets for /products/{{id}}:\n{m}"
    );
    assert!(
        m.lines().any(
            |l| l.starts_with("http_server_request_duration_seconds_count{")
                && l.contains(r#"http_route="/products/{id}""#)
                && l.contains(r#"http_response_status_code="429""#)
                && l.trim_end().ends_with(" 1")
        ),
        "one 429 on /products/{{id}}:\n{m}"
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
    assert_eq!(
        sample(
            &m,
            r#"tower_scale_rate_limit_decisions_total{quota="api",decision="refused"}"#
        ),
        1.0,
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("tower_scale_cache_hits") && !l.trim_end().ends_with(" 0")),
        "the cache hit is counted:\n{m}"
    );

    // An export: the jobs' counters and run-time histogram, by queue.
    let (app, workers) = app_and_workers(&[]).await;
    let r = call(&app, Method::POST, "/exports", &[], "").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let location = r.headers["location"].to_str().unwrap().to_owned();
    support::eventually(
        "the export finishes",
        std::time::Duration::from_secs(20),
        || async {
            let r = get(&app, &location).await;
            (r.headers["content-type"] == "text/csv; charset=utf-8").then_some(())
        },
    )
    .await;
    workers
        .unwrap()
        .shutdown(std::time::Duration::from_secs(2))
        .await;
    let m = get(&app, "/metrics").await.text();
    for series in [
        r#"tower_scale_jobs_enqueued_total{queue="exports"}"#,
        r#"tower_scale_jobs_started_total{queue="exports"}"#,
        r#"tower_scale_jobs_succeeded_total{queue="exports"}"#,
        r#"tower_scale_jobs_run_duration_seconds_count{queue="exports"}"#,
    ] {
        assert_eq!(sample(&m, series), 1.0, "{series}:\n{m}");
    }
    promtool_finds_nothing(&m);
}

/// `promtool check metrics` (Prometheus's own linter: help text, types, unit suffixes,
/// counter names) has nothing to say about what `/metrics` served.
fn promtool_finds_nothing(metrics: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/services.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}
