//! The tower-scale reference server: a small product catalogue assembling the crate's layers.
//!
//! `cargo run --release --example reference_server` starts it with nothing else installed
//! (embedded SQLite database, in-process state). Its routes and configuration are in
//! `docs/reference-server.md`; configuration is from the environment or `--flags`, the
//! variables listed there.
//!
//! What it assembles: latency histograms on every route; per-client rate limits, sessions
//! and the product response cache (shared through Redis when `REDIS_URL` is set); retries
//! and a circuit breaker on the price route; the catalogue on the embedded database, or on
//! PostgreSQL with read/write routing to its replicas.

mod catalog;
mod config;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use serde_json::json;
use tower::ServiceExt;
use tower_scale::cache::{CacheEngine, ResponseCacheLayer};
use tower_scale::circuit_breaker::{
    CircuitBreakerHandle, CircuitBreakerLayer, CircuitOpen, OpenAs503Layer, PerHost, Window,
};
use tower_scale::key::{ClientIp, KeyExtractor};
use tower_scale::metrics::{DEFAULT_DURATION_BUCKETS, DURATION_METRIC, HttpMetricsLayer};
use tower_scale::rate_limit::{AnyStore, MemoryStore, OnStoreError, RateLimitLayer, RedisStore};
use tower_scale::redis::RedisBackend;
use tower_scale::retry::{BoxError, ReplayBody, RetryError, RetryLayer};
use tower_scale::session::{
    MemoryStore as SessionMemoryStore, RedisSessionStore, Session, SessionLayer,
};
use tracing::Instrument;

use catalog::{Catalog, Embedded};
use config::Config;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tower_scale::db_route::{Db, DbRouteLayer, DbRouter, X_DB_ROUTE};

const X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

struct AppState {
    catalog: Catalog,
    redis: Option<RedisBackend>,
    pricing: Option<Pricing>,
    prometheus: PrometheusHandle,
    instance: HeaderValue,
    client_ip: ClientIp,
    jobs: AtomicU64,
    ids: RandomState,
    id_seq: AtomicU64,
}

type Shared = Arc<AppState>;

/// The pricing upstream's client: retries outside a circuit breaker, each attempt bounded.
type PriceClient = tower::util::BoxCloneSyncService<
    http::Request<Empty<Bytes>>,
    http::Response<axum::body::Body>,
    RetryError<BoxError>,
>;

struct Pricing {
    base: String,
    client: PriceClient,
}

/// Retry (3 attempts within 2.5 s, never into an open breaker) ─▶ 503 for refusals ─▶
/// circuit breaker (opens at 50% failures of the last 20 calls, once 5 are in; probes with
/// 2) ─▶ 1 s per attempt ─▶ hyper client. The timeout sits inside the breaker, so a hung
/// upstream counts as failing.
fn price_client(open: Duration) -> Result<(PriceClient, CircuitBreakerHandle<PerHost>), Failure> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_millis(500)));
    let client: Client<HttpConnector, ReplayBody<Empty<Bytes>>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let breaker = CircuitBreakerLayer::builder()
        .name("pricing")
        .key(PerHost)
        .window(Window::Count(20))
        .minimum_calls(5)
        .failure_rate(0.5)
        .open_duration(open)
        .half_open_probes(2)
        .build()
        .map_err(|e| Failure::Config(format!("pricing breaker: {e}")))?;
    let handle = breaker.handle();
    let retry = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Duration::from_millis(50), Duration::from_millis(400))
        .deadline(Duration::from_millis(2500))
        .build()
        .map_err(|e| Failure::Config(format!("pricing retry: {e}")))?;
    let svc = tower::ServiceBuilder::new()
        .layer(retry)
        .layer(OpenAs503Layer)
        .layer(breaker)
        .map_response(|r: http::Response<hyper::body::Incoming>| r.map(axum::body::Body::new))
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(1)))
        .service(client);
    Ok((tower::util::BoxCloneSyncService::new(svc), handle))
}

/// A JSON error response: `{"error": "..."}` with a status.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "database error");
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
}

/// Product ids are 1..=MAX_PRODUCT_ID, which bounds what an (until sessions land,
/// unauthenticated) client can add to the in-memory catalogue.
const MAX_PRODUCT_ID: i64 = 1_000_000;

/// The `{id}` of a product route; a bad one is a JSON 400, whatever bytes the path holds.
struct ProductId(i64);

impl<S: Send + Sync> FromRequestParts<S> for ProductId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
        raw.parse::<i64>()
            .ok()
            .filter(|id| (1..=MAX_PRODUCT_ID).contains(id))
            .map(ProductId)
            .ok_or_else(|| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("product id must be a whole number in 1..={MAX_PRODUCT_ID}"),
                )
            })
    }
}

/// The request's database handles, present with PostgreSQL (`DbRouteLayer`).
type PgDb = Option<axum::Extension<Db<PgPool>>>;

fn with_db_route(resp: impl IntoResponse) -> Response {
    // The embedded database answers everything as the primary; with PostgreSQL the routing
    // layer replaces this with the database the handler really used.
    let mut r = resp.into_response();
    r.headers_mut()
        .insert(X_DB_ROUTE, HeaderValue::from_static("primary"));
    r
}

async fn get_product(
    State(s): State<Shared>,
    ProductId(id): ProductId,
    db: PgDb,
) -> Result<Response, ApiError> {
    match s.catalog.get(db.as_deref(), id).await.map_err(internal)? {
        Some(p) => Ok(with_db_route(Json(p))),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no product {id}"))),
    }
}

async fn list_products(
    State(s): State<Shared>,
    db: PgDb,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let number = |name: &str, default: i64, min: i64, max: i64| -> Result<i64, ApiError> {
        match q.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    ApiError(
                        StatusCode::BAD_REQUEST,
                        format!("`{name}` must be a whole number in {min}..={max}"),
                    )
                }),
        }
    };
    let limit = number("limit", 20, 1, 100)?;
    let offset = number("offset", 0, 0, i64::from(i32::MAX))?;
    let products = s
        .catalog
        .list(db.as_deref(), limit, offset)
        .await
        .map_err(internal)?;
    Ok(with_db_route(Json(
        json!({ "products": products, "limit": limit, "offset": offset }),
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductInput {
    name: String,
    price_cents: i64,
}

async fn put_product(
    State(s): State<Shared>,
    session: Session,
    ProductId(id): ProductId,
    db: PgDb,
    body: Result<Json<ProductInput>, JsonRejection>,
) -> Result<Response, Response> {
    if session
        .user()
        .await
        .map_err(IntoResponse::into_response)?
        .is_none()
    {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "log in first (POST /login)".into(),
        )
        .into_response());
    }
    put_product_as(s, id, db.as_deref(), body)
        .await
        .map_err(IntoResponse::into_response)
}

async fn put_product_as(
    s: Shared,
    id: i64,
    db: Option<&Db<PgPool>>,
    body: Result<Json<ProductInput>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(input) = body.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let name = input.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "`name` must be 1..=200 characters".into(),
        ));
    }
    if input.price_cents < 0 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "`price_cents` must be >= 0".into(),
        ));
    }
    let p = s
        .catalog
        .upsert(db, id, name, input.price_cents)
        .await
        .map_err(internal)?;
    Ok(with_db_route(Json(p)))
}

async fn create_export(State(s): State<Shared>) -> Response {
    let n = s.jobs.fetch_add(1, Ordering::Relaxed) + 1;
    let job = format!("{}-{n}", s.instance.to_str().unwrap_or("export"));
    (StatusCode::ACCEPTED, Json(json!({ "job": job }))).into_response()
}

async fn get_price(
    State(s): State<Shared>,
    ProductId(id): ProductId,
) -> Result<Response, ApiError> {
    let unavailable = |msg: String| {
        let mut r = ApiError(StatusCode::SERVICE_UNAVAILABLE, msg).into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        r
    };
    let Some(p) = &s.pricing else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "pricing upstream not configured (set PRICING_URL)".into(),
        ));
    };
    let uri = format!("{}/price/{id}", p.base);
    let Ok(req) = http::Request::get(uri).body(Empty::<Bytes>::new()) else {
        // PRICING_URL was checked at start; only an id could break it, and ids are numbers.
        return Ok(unavailable("pricing upstream URL is invalid".into()));
    };
    let resp = match p.client.clone().oneshot(req).await {
        Ok(resp) => resp,
        Err(e) => return Ok(unavailable(format!("pricing upstream failed: {e}"))),
    };
    if let Some(open) = resp.extensions().get::<CircuitOpen>() {
        // Refused at once by the open breaker: its Retry-After is the time until it probes.
        let secs = open.retry_after.as_micros().div_ceil(1_000_000).max(1) as u64;
        let mut r = ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "pricing upstream unavailable (circuit breaker open)".into(),
        )
        .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Ok(r);
    }
    let status = resp.status();
    // The retry deadline and the attempt timeout end with the response head: the body gets
    // its own bound, in time and in size.
    let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024).collect();
    let body = match tokio::time::timeout(Duration::from_secs(1), body).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => return Ok(unavailable(format!("pricing upstream body failed: {e}"))),
        Err(_) => return Ok(unavailable("pricing upstream body timed out".into())),
    };
    if !status.is_success() {
        return Ok(unavailable(format!("pricing upstream answered {status}")));
    }
    let price = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("price_cents").and_then(|c| c.as_i64()));
    match price {
        Some(price) => Ok(Json(json!({ "id": id, "price_cents": price })).into_response()),
        None => Ok(unavailable("pricing upstream sent no price".into())),
    }
}

async fn metrics(State(s): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.prometheus.render(),
    )
        .into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(s): State<Shared>) -> Response {
    let mut failing = Vec::new();
    if let Err(e) = s.catalog.ping().await {
        failing.push(format!("database: {e}"));
    }
    if let Some(r) = &s.redis
        && let Err(e) = r.ping().await
    {
        failing.push(format!("redis ({}): {e}", r.address()));
    }
    if failing.is_empty() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, failing.join("; ")).into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route".into(),
    )
}

/// Adds `x-served-by` and `x-request-id` to every response (echoing a sane client id).
async fn identify(State(s): State<Shared>, mut req: Request, next: Next) -> Response {
    let id = match req.headers().get(&X_REQUEST_ID) {
        Some(v)
            if (1..=128).contains(&v.len()) && v.as_bytes().iter().all(u8::is_ascii_graphic) =>
        {
            v.clone()
        }
        _ => {
            let n = s.id_seq.fetch_add(1, Ordering::Relaxed);
            let id = format!("{:016x}{:08x}", s.ids.hash_one(n), n as u32);
            let v = HeaderValue::from_str(&id).expect("hex is a valid header value");
            req.headers_mut().insert(X_REQUEST_ID, v.clone());
            v
        }
    };
    // Operators see who sent what: the client address behind the trusted proxies.
    let client = s
        .client_ip
        .extract(&req)
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let span = tracing::debug_span!("request", id = ?id, client = %client, method = %req.method(), path = %req.uri().path());
    let mut resp = next.run(req).instrument(span).await;
    resp.headers_mut().insert(X_SERVED_BY, s.instance.clone());
    resp.headers_mut().insert(X_REQUEST_ID, id);
    resp
}

/// `RATE_LIMIT` per client on `/products*` and `/exports`, plus `EXPORT_RATE_LIMIT` on
/// `POST /exports` (both checked in one store call). Shared through Redis when configured;
/// while Redis is down each instance enforces `RATE_LIMIT_FALLBACK_SHARE` of the quotas on
/// its own. `/metrics`,
/// `/healthz` and `/readyz` are never limited.
fn rate_limit(config: &Config, redis: Option<&RedisBackend>) -> RateLimitLayer<ClientIp, AnyStore> {
    let store: AnyStore = match redis {
        Some(r) => RedisStore::new(r.clone()).into(),
        None => MemoryStore::new().into(),
    };
    RateLimitLayer::builder()
        .key(config.client_ip.clone())
        .store(store)
        .quota_for(config.rate_limit.clone(), |r| {
            let p = r.uri.path();
            p == "/products" || p.starts_with("/products/") || p == "/exports"
        })
        .quota_for(config.export_rate_limit.clone(), |r| {
            r.method == http::Method::POST && r.uri.path() == "/exports"
        })
        .on_store_error(OnStoreError::Local {
            share: config.rate_limit_fallback_share,
        })
        .headers_on_success(true)
        .build()
        .expect("two distinct quota names and a valid share")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginInput {
    user: String,
}

async fn login(
    session: Session,
    body: Result<Json<LoginInput>, JsonRejection>,
) -> Result<Response, Response> {
    let Json(input) =
        body.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()).into_response())?;
    let user = input.user.trim();
    if user.is_empty() || user.chars().count() > 64 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "`user` must be 1..=64 characters".into(),
        )
        .into_response());
    }
    // A new id whatever the client sent: a session planted before login is worthless.
    session
        .login(user)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(Json(json!({ "user": user })).into_response())
}

async fn me(session: Session) -> Result<Response, Response> {
    let Some(user) = session.user().await.map_err(IntoResponse::into_response)? else {
        return Err(
            ApiError(StatusCode::UNAUTHORIZED, "no session; POST /login".into()).into_response(),
        );
    };
    let visits = session
        .increment("visits", 1)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(Json(json!({ "user": user, "visits": visits })).into_response())
}

async fn logout(session: Session) -> StatusCode {
    session.destroy().await;
    StatusCode::NO_CONTENT
}

fn sessions(config: &Config, redis: Option<&RedisBackend>) -> Result<SessionLayer, Failure> {
    let builder = match redis {
        Some(r) => SessionLayer::builder(RedisSessionStore::new(r.clone())),
        None => SessionLayer::builder(SessionMemoryStore::new()),
    };
    builder
        .secure(config.session_cookie_secure)
        // `__Host-id` whenever the cookie is Secure: no sibling subdomain can plant one.
        .host_prefix(config.session_cookie_secure)
        .build()
        .map_err(|e| Failure::Config(format!("sessions: {e}")))
}

/// The product routes' response cache: L1 in process, L2 and invalidation through Redis
/// when `REDIS_URL` is set. A `PUT /products/{id}` invalidates its own path (the layer
/// does that for every unsafe request) and the list, on every instance.
fn response_cache(
    config: &Config,
    redis: Option<&RedisBackend>,
) -> Result<ResponseCacheLayer, Failure> {
    let mut engine = CacheEngine::builder()
        .ttl(config.cache_ttl)
        .stale_if_error(config.cache_ttl.saturating_mul(5));
    if let Some(r) = redis {
        engine = engine.redis(r.clone());
    }
    let engine = engine
        .build()
        .map_err(|e| Failure::Config(format!("CACHE_TTL: {e}")))?;
    ResponseCacheLayer::builder(&engine)
        .invalidates(|req| {
            if req.uri.path().starts_with("/products/") {
                vec![ResponseCacheLayer::path_tag("/products")]
            } else {
                Vec::new()
            }
        })
        .build()
        .map_err(|e| Failure::Config(format!("cache: {e}")))
}

/// PostgreSQL: pools to the primary and each replica (connected lazily, so the server
/// starts while a replica is down), the router with health checks every second, the
/// schema and seed on the primary, and the routing layer for the product routes.
async fn postgres(url: &str, config: &Config) -> Result<(Catalog, DbRouteLayer<PgPool>), Failure> {
    let pool = |url: &str, var: &str| {
        PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(url)
            .map_err(|e| Failure::Config(format!("{var}: {e}")))
    };
    let mut router = DbRouter::builder(pool(url, "DATABASE_URL")?);
    for (i, replica) in config.database_replica_urls.iter().enumerate() {
        router = router.replica(
            format!("replica-{}", i + 1),
            pool(replica, "DATABASE_REPLICA_URLS")?,
        );
    }
    let router = router
        .build()
        .map_err(|e| Failure::Config(format!("DATABASE_REPLICA_URLS: {e}")))?;
    router.spawn_health_checks(Duration::from_secs(1));
    let catalog = Catalog::postgres(router.clone()).await.map_err(|e| {
        Failure::Run(format!("cannot prepare the PostgreSQL catalogue: {e}").into())
    })?;
    let layer = DbRouteLayer::builder(router)
        .secure(config.session_cookie_secure)
        .route_header(true)
        .build()
        .map_err(|e| Failure::Config(format!("database routing: {e}")))?;
    Ok((catalog, layer))
}

fn app(
    state: Shared,
    limits: RateLimitLayer<ClientIp, AnyStore>,
    sessions: SessionLayer,
    cache: ResponseCacheLayer,
    db_route: Option<DbRouteLayer<PgPool>>,
) -> Router<()> {
    let mut products = Router::new()
        .route("/products", get(list_products))
        .route("/products/{id}", get(get_product).put(put_product));
    // Inside the cache: a hit never reaches the database; a miss is routed.
    if let Some(layer) = &db_route {
        products = products.layer(layer.clone());
    }
    let mut products = products.layer(cache);
    if let Some(layer) = db_route {
        // A client who just wrote reads past the cache (refreshing its entry): another
        // client may have filled it from a replica that had not replayed the write.
        products = products.layer(middleware::map_request(move |mut req: Request| {
            let layer = layer.clone();
            async move {
                if layer.current_token(req.headers()).is_some() {
                    req.headers_mut()
                        .append(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                }
                req
            }
        }));
    }
    Router::new()
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/logout", post(logout))
        .merge(products)
        .route("/products/{id}/price", get(get_price))
        .route("/exports", post(create_export))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(sessions)
        .layer(limits)
        .layer(HttpMetricsLayer::new())
        .layer(middleware::from_fn_with_state(state.clone(), identify))
        .with_state(state)
}

async fn shutdown_signal(notify: Arc<tokio::sync::Notify>) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    notify.notify_one();
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let config = match Config::from_env_and_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("reference_server: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("reference_server: bad configuration: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Run(e)) => {
            eprintln!("reference_server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a line to stdout. A closed stdout (a supervisor that stopped reading) must not
/// take the server down, so write errors are ignored.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Why the server stopped: bad configuration (exit 2) or a failure while running (exit 1).
enum Failure {
    Config(String),
    Run(Box<dyn std::error::Error>),
}

impl<E: Into<Box<dyn std::error::Error>>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Run(e.into())
    }
}

async fn run(config: Config) -> Result<(), Failure> {
    let prometheus = PrometheusBuilder::new()
        .with_recommended_naming(true)
        .set_buckets_for_metric(
            Matcher::Full(DURATION_METRIC.into()),
            DEFAULT_DURATION_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Prefix("tower_scale".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ],
        )?
        .install_recorder()?;
    {
        // Histograms are buffered until drained; drain them regularly, not only on scrape.
        let handle = prometheus.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        });
    }

    let (catalog, db_route) = match &config.database_url {
        None => (
            Catalog::Embedded(
                Embedded::open()
                    .map_err(|e| format!("cannot create the embedded database: {e}"))?,
            ),
            None,
        ),
        Some(url) => {
            let (catalog, layer) = postgres(url, &config).await?;
            (catalog, Some(layer))
        }
    };
    let redis = match &config.redis_url {
        None => None,
        Some(url) => Some(
            RedisBackend::builder(url.clone())
                .prefix("reference-server")
                // A slow Redis must not stall requests: past this, rate limits fall back
                // to each instance's own share and readiness reports Redis as failing.
                .timeout(Duration::from_millis(50))
                .build()
                .map_err(|e| Failure::Config(format!("REDIS_URL: {e}")))?,
        ),
    };
    let pricing = match &config.pricing_url {
        None => None,
        Some(base) => {
            let (client, _breaker) = price_client(config.pricing_breaker_open)?;
            Some(Pricing {
                base: base.clone(),
                client,
            })
        }
    };

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            Failure::Run(format!("cannot listen on {} (LISTEN): {e}", config.listen).into())
        })?;
    let addr = listener.local_addr()?;
    let instance = config
        .instance_id
        .clone()
        .unwrap_or_else(|| addr.to_string());
    let state = Arc::new(AppState {
        catalog,
        redis: redis.clone(),
        pricing,
        prometheus,
        instance: HeaderValue::from_str(&instance)
            .map_err(|_| "INSTANCE_ID: not a valid header value")?,
        client_ip: config.client_ip.clone(),
        jobs: AtomicU64::new(0),
        ids: RandomState::new(),
        id_seq: AtomicU64::new(0),
    });

    say(format_args!(
        "reference_server listening on http://{addr} as {instance}"
    ));
    say(format_args!(
        "backends: database={} ({} products); redis={}; pricing={}; cache ttl {:?}; rate limits {} and {} on exports; secure session cookie {}",
        if config.database_url.is_some() {
            format!(
                "postgres, {} replica(s)",
                config.database_replica_urls.len()
            )
        } else {
            "embedded sqlite".to_owned()
        },
        catalog::SEED_PRODUCTS,
        redis
            .as_ref()
            .map_or("none (in-process)".to_owned(), |r| r.address().to_owned()),
        config.pricing_url.as_deref().unwrap_or("none"),
        config.cache_ttl,
        config.rate_limit,
        config.export_rate_limit,
        config.session_cookie_secure,
    ));

    let notify = Arc::new(tokio::sync::Notify::new());
    let limits = rate_limit(&config, redis.as_ref());
    let sessions = sessions(&config, redis.as_ref())?;
    let cache = response_cache(&config, redis.as_ref())?;
    let server = axum::serve(
        listener,
        app(state, limits, sessions, cache, db_route)
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal(Arc::clone(&notify)));
    let grace = async {
        notify.notified().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        res = server => res?,
        _ = grace => tracing::warn!("in-flight requests still running after {SHUTDOWN_GRACE:?}; exiting"),
    }
    say(format_args!("reference_server stopped"));
    Ok(())
}
