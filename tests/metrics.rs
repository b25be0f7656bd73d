//! The HTTP metrics layer, observed through the real Prometheus exporter.
//!
//! One recorder per test binary (a process-wide global); each test uses its own routes so
//! tests can run in parallel and read only their own series.

mod support;

use support::LayerExt;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_scale::ServiceBuilderExt;
use tower_scale::metrics::{
    DEFAULT_DURATION_BUCKETS, DURATION_METRIC, HttpMetrics, HttpMetricsLayer, MetricsBody,
    ResponseFuture, route_fn,
};

fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .with_recommended_naming(true)
            .set_buckets_for_metric(
                Matcher::Full(DURATION_METRIC.into()),
                DEFAULT_DURATION_BUCKETS,
            )
            .unwrap()
            .install_recorder()
            .unwrap()
    })
}

/// The value of the sample `name{...}` whose labels include every `k="v"` in `labels`.
fn sample(name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = prometheus().render();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A metrics layer labelled by the raw path: for services without axum's matched path.
fn path_labelled() -> tower_scale::metrics::HttpMetricsLayerBuilder<
    tower_scale::metrics::RouteFn<
        impl Fn(tower_scale::key::RequestRef<'_>) -> Option<std::borrow::Cow<'static, str>>
        + Clone
        + Send
        + Sync
        + 'static,
    >,
> {
    HttpMetricsLayer::builder().route_label(route_fn(|r| Some(r.uri.path().to_owned().into())))
}

fn route(r: &'static str) -> (&'static str, &'static str) {
    ("http_route", r)
}

async fn send(app: &Router, method: &str, uri: &str) -> (StatusCode, Bytes) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn route_template_never_raw_path() {
    prometheus();
    let app = Router::new()
        .route("/tmpl/products/{id}", get(|| async { "p" }))
        .layer(HttpMetricsLayer::new());
    for id in 0..25 {
        let (status, _) = send(&app, "GET", &format!("/tmpl/products/{id}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let count = sample(
        "http_server_request_duration_seconds_count",
        &[
            route("/tmpl/products/{id}"),
            ("http_request_method", "GET"),
            ("http_response_status_code", "200"),
        ],
    );
    assert_eq!(count, Some(25.0));
    let total = sample(
        "http_server_requests_total",
        &[route("/tmpl/products/{id}"), ("outcome", "success")],
    );
    assert_eq!(total, Some(25.0));
    let text = prometheus().render();
    assert!(
        !text.contains("/tmpl/products/7"),
        "a raw path leaked into a label"
    );
    assert!(
        text.contains("http_server_request_duration_seconds_bucket{"),
        "buckets, not a summary"
    );
}

#[tokio::test]
async fn unmatched_requests_share_one_label_and_odd_methods_are_other() {
    prometheus();
    // The layer sees no MatchedPath for requests the router's fallback handles.
    let app = Router::new()
        .route("/odd/known", get(|| async { "k" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "nope") })
        .layer(
            HttpMetricsLayer::builder()
                .unmatched_label("odd-unmatched")
                .build()
                .unwrap(),
        );
    for p in ["/odd/a", "/odd/b/c", "/odd/%2e%2e"] {
        send(&app, "GET", p).await;
    }
    send(&app, "BREW", "/odd/known").await;
    assert_eq!(
        sample(
            "http_server_request_duration_seconds_count",
            &[route("odd-unmatched"), ("http_response_status_code", "404")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            "http_server_request_duration_seconds_count",
            &[route("/odd/known"), ("http_request_method", "_OTHER")]
        ),
        Some(1.0)
    );
}

#[tokio::test(start_paused = true)]
async fn duration_lasts_until_the_body_ends() {
    prometheus();
    // The handler takes 250 ms; the body then takes another 500 ms to finish.
    let svc = ServiceBuilder::new()
        .http_metrics(
            HttpMetricsLayer::builder()
                .route_label(route_fn(|_| Some("/timed".into())))
                .build()
                .unwrap(),
        )
        .service_fn(|_req: Request<()>| async {
            tokio::time::sleep(Duration::from_millis(250)).await;
            Ok::<_, Infallible>(Response::new(SlowBody::new(Duration::from_millis(500))))
        });
    let resp = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(
        sample("http_server_active_requests", &[route("/timed")]),
        Some(1.0),
        "in flight while the body streams"
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"done");
    assert_eq!(
        sample("http_server_active_requests", &[route("/timed")]),
        Some(0.0)
    );
    let sum = sample(
        "http_server_request_duration_seconds_sum",
        &[route("/timed")],
    )
    .unwrap();
    assert!((sum - 0.75).abs() < 0.01, "recorded {sum}s, want 0.75s");
    // 0.75 s falls in the 0.75 bucket, not the 0.5 one.
    assert_eq!(
        sample(
            "http_server_request_duration_seconds_bucket",
            &[route("/timed"), ("le", "0.5")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            "http_server_request_duration_seconds_bucket",
            &[route("/timed"), ("le", "0.75")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn gauge_cannot_leak_on_cancel_panic_or_dropped_body() {
    prometheus();
    let layer = path_labelled().build().unwrap();

    // Cancelled before the service answered.
    let mut svc = layer.layer_service(tower::service_fn(|_req: Request<()>| async {
        std::future::pending::<Result<Response<Empty<Bytes>>, Infallible>>().await
    }));
    let fut = svc.call(Request::builder().uri("/leak/cancel").body(()).unwrap());
    assert_eq!(
        sample("http_server_active_requests", &[route("/leak/cancel")]),
        Some(1.0)
    );
    drop(fut);
    assert_eq!(
        sample("http_server_active_requests", &[route("/leak/cancel")]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            "http_server_request_duration_seconds_count",
            &[route("/leak/cancel")]
        ),
        None,
        "no response, nothing timed"
    );

    // The handler panics.
    let svc = layer.layer_service(tower::service_fn(|_req: Request<()>| async {
        if true {
            panic!("handler bug");
        }
        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
    }));
    let joined =
        tokio::spawn(svc.oneshot(Request::builder().uri("/leak/panic").body(()).unwrap())).await;
    assert!(joined.unwrap_err().is_panic());
    assert_eq!(
        sample("http_server_active_requests", &[route("/leak/panic")]),
        Some(0.0)
    );

    // The client hangs up: the body is dropped before its end.
    let svc = layer.layer_service(tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(SlowBody::new(Duration::from_secs(3600))))
    }));
    let resp = svc
        .oneshot(Request::builder().uri("/leak/hangup").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        sample("http_server_active_requests", &[route("/leak/hangup")]),
        Some(1.0)
    );
    drop(resp);
    assert_eq!(
        sample("http_server_active_requests", &[route("/leak/hangup")]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            "http_server_request_duration_seconds_count",
            &[route("/leak/hangup")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn errors_and_5xx_are_failures() {
    prometheus();
    let layer = path_labelled().build().unwrap();
    let svc = layer.layer_service(tower::service_fn(|req: Request<()>| async move {
        match req.uri().path() {
            "/fail/err" => Err(std::io::Error::other("upstream reset")),
            _ => Ok(Response::builder()
                .status(503)
                .body(Full::new(Bytes::from_static(b"x")))
                .unwrap()),
        }
    }));
    assert!(
        svc.clone()
            .oneshot(Request::builder().uri("/fail/err").body(()).unwrap())
            .await
            .is_err()
    );
    let resp = svc
        .oneshot(Request::builder().uri("/fail/503").body(()).unwrap())
        .await
        .unwrap();
    resp.into_body().collect().await.unwrap();
    assert_eq!(
        sample(
            "http_server_requests_total",
            &[
                route("/fail/err"),
                ("http_response_status_code", "error"),
                ("outcome", "failure")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            "http_server_requests_total",
            &[
                route("/fail/503"),
                ("http_response_status_code", "503"),
                ("outcome", "failure")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample("http_server_active_requests", &[route("/fail/err")]),
        Some(0.0)
    );
}

/// One service, several routes and statuses in turn: the route a service saw first and
/// the status a route answered first are kept at hand, and every other one is still
/// counted under its own labels.
#[tokio::test]
async fn one_service_counts_each_route_and_status_apart() {
    prometheus();
    let layer = path_labelled().build().unwrap();
    let svc = layer.layer_service(tower::service_fn(|req: Request<()>| async move {
        let status = req.uri().query().unwrap_or("200").parse::<u16>().unwrap();
        Ok::<_, Infallible>(
            Response::builder()
                .status(status)
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
    }));
    let sent = [
        ("/turn/a", 200),
        ("/turn/b", 404),
        ("/turn/a", 200),
        ("/turn/a", 503),
        ("/turn/b", 200),
        ("/turn/a", 200),
        ("/turn/b", 404),
    ];
    for (path, status) in sent {
        let resp = svc
            .clone()
            .oneshot(
                Request::builder()
                    .uri(format!("{path}?{status}"))
                    .body(())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), status);
        resp.into_body().collect().await.unwrap();
    }
    for (path, status, want) in [
        ("/turn/a", "200", 3.0),
        ("/turn/a", "503", 1.0),
        ("/turn/b", "404", 2.0),
        ("/turn/b", "200", 1.0),
    ] {
        assert_eq!(
            sample(
                "http_server_requests_total",
                &[route(path), ("http_response_status_code", status)]
            ),
            Some(want),
            "{path} {status}"
        );
    }
    assert_eq!(
        sample(
            "http_server_requests_total",
            &[route("/turn/b"), ("http_response_status_code", "503")]
        ),
        None
    );
}

#[tokio::test]
async fn route_labels_are_capped() {
    prometheus();
    let layer = path_labelled()
        .max_routes(3)
        .overflow_label("cap-overflow")
        .build()
        .unwrap();
    let svc = layer.layer_service(tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
    }));
    for i in 0..10 {
        let resp = svc
            .clone()
            .oneshot(
                Request::builder()
                    .uri(format!("/cap/{i}"))
                    .body(())
                    .unwrap(),
            )
            .await
            .unwrap();
        drop(resp);
    }
    assert_eq!(
        sample(
            "http_server_request_duration_seconds_count",
            &[route("cap-overflow")]
        ),
        Some(7.0)
    );
    assert!(
        sample(
            "http_server_request_duration_seconds_count",
            &[route("/cap/2")]
        )
        .is_some()
    );
    assert!(
        sample(
            "http_server_request_duration_seconds_count",
            &[route("/cap/3")]
        )
        .is_none()
    );
}

#[test]
fn bad_configuration_is_an_error() {
    assert_eq!(
        HttpMetricsLayer::builder()
            .max_routes(0)
            .build()
            .unwrap_err()
            .setting(),
        "max_routes"
    );
    assert!(
        HttpMetricsLayer::builder()
            .unmatched_label(" ")
            .build()
            .is_err()
    );
    assert!(
        HttpMetricsLayer::builder()
            .metric_names("", "b", "c")
            .build()
            .is_err()
    );
}

#[test]
fn public_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    type Svc = tower::util::ServiceFn<
        fn(Request<()>) -> std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>>,
    >;
    assert_send_sync::<HttpMetricsLayer>();
    assert_send_sync::<
        HttpMetrics<
            Svc,
            tower_scale::metrics::DefaultRouteLabel,
            tower_scale::classify::HttpClassifier,
        >,
    >();
    assert_send_sync::<MetricsBody<Empty<Bytes>>>();
    assert_send::<
        ResponseFuture<
            std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>>,
            tower_scale::classify::HttpClassifier,
        >,
    >();
}

/// A body that yields "done" after a delay.
struct SlowBody {
    sleep: Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl SlowBody {
    fn new(after: Duration) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(after)),
            done: false,
        }
    }
}

impl http_body::Body for SlowBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.done = true;
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                    b"done",
                )))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// axum clones a route's service for every request and moves its future several times on
/// the way to the connection: both stay small (the classifier, 128 bytes before, was in
/// each).
#[test]
fn service_and_future_stay_small() {
    type Svc = tower::util::ServiceFn<
        fn(Request<()>) -> std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>>,
    >;
    type Metrics = HttpMetrics<
        Svc,
        tower_scale::metrics::DefaultRouteLabel,
        tower_scale::classify::HttpClassifier,
    >;
    type Future = ResponseFuture<
        std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>>,
        tower_scale::classify::HttpClassifier,
    >;
    assert!(
        std::mem::size_of::<Metrics>() <= 64,
        "{}",
        std::mem::size_of::<Metrics>()
    );
    type Inner = std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>>;
    let added = std::mem::size_of::<Future>() - std::mem::size_of::<Inner>();
    assert!(
        added <= 96,
        "the future adds {added} bytes to its inner one"
    );
}
