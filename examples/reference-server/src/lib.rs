//! The tower-scale reference server: a small product catalogue assembling every layer of
//! the crate, as a library ([`app`] for in-process tests, [`run`] to serve) and a thin
//! `main.rs`.
//!
//! `cargo run --release --example reference_server` starts it with nothing else installed
//! (embedded SQLite database, in-process state). Its routes and configuration are in
//! `docs/reference-server.md`.
//!
//! The path of a request, outermost first: request id and `x-served-by` ─▶ trace span
//! (when debug logging would record it) ─▶ JSON error bodies ─▶ latency histograms ─▶
//! request timeout ─▶ body limit ─▶ rate limits ─▶ sessions ─▶ the route. The product routes add the response
//! cache and, inside it, database routing; the price route calls its upstream through
//! retries and a circuit breaker.

pub mod catalog;
pub mod config;
mod conn;
pub mod error;
mod routes;
pub mod state;
pub mod telemetry;
pub mod timeout;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, StatusCode};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tower_scale::metrics::HttpMetricsLayer;

pub use config::Config;
pub use error::Failure;
pub use state::AppState;

/// Names the instance that answered, on every response.
pub const X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");

/// The largest request body taken (product and login bodies are far smaller).
pub const MAX_BODY: usize = 64 * 1024;

/// How long a request may take as a whole before it is answered 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a request body may go without sending anything before the request fails.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long in-flight requests may run after SIGTERM before the process exits anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The whole service: every route and layer, ready for `axum::serve` (with connect info,
/// for the client address) or, in tests, `tower::ServiceExt::oneshot`.
pub fn app(state: AppState) -> Router {
    let shared = Arc::clone(&state.shared);
    // Only when it would record something (`telemetry::tracing_requests`). Its response
    // body is boxed again, so that both ways give the next layer out the same type.
    let trace = telemetry::tracing_requests().then(|| {
        tower::ServiceBuilder::new()
            .map_response(axum::response::IntoResponse::into_response)
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(telemetry::request_span(shared.client_ip.clone()))
                    // 5xx answers are the service's own story (a failing upstream, a
                    // refused dependency), already counted in the metrics.
                    .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
            )
    });
    Router::new()
        .merge(routes::sessions::router())
        .merge(routes::products::router(&state))
        .merge(routes::price::router())
        .merge(routes::exports::router())
        .merge(routes::ops::router(shared.metrics_public))
        .fallback(routes::ops::not_found)
        .method_not_allowed_fallback(routes::ops::method_not_allowed)
        // One `layer` call for the whole stack: axum boxes every route's service, future
        // and body once per call, so a call per layer would cost each request a boxed
        // clone, future and body more per layer (`docs/benchmarks.md`, "End to end").
        // A `ServiceBuilder`'s first layer is the outermost.
        .layer(
            tower::ServiceBuilder::new()
                .layer(telemetry::RequestIdLayer::new(shared.instance.clone()))
                .option_layer(trace)
                // A plain function of the response: `axum::middleware::map_response` would
                // clone the whole stack inside it and box a future on every request.
                .layer(tower::util::MapResponseLayer::new(error::json_errors))
                // `json_errors` reads an axum `Response`: the metrics layer's body boxed.
                .layer(tower::util::MapResponseLayer::new(
                    axum::response::IntoResponse::into_response,
                ))
                .layer(HttpMetricsLayer::new())
                .layer(timeout::RequestTimeoutLayer::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    REQUEST_TIMEOUT,
                ))
                .layer(RequestBodyLimitLayer::new(MAX_BODY))
                .layer(state.layers.rate_limit)
                .layer(state.layers.sessions),
        )
        .with_state(shared)
}

/// The server's `main`: logs, configuration from the environment and arguments, [`run`];
/// exit code 2 for bad configuration, 1 for a failure while running.
#[tokio::main]
pub async fn main() -> std::process::ExitCode {
    use std::process::ExitCode;
    telemetry::init_tracing();
    let config = match Config::from_env_and_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("reference_server: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ Failure::Config(_)) => {
            eprintln!("reference_server: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("reference_server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Binds `config.listen`, builds the state, prints where it listens and what it uses, and
/// serves until SIGTERM or SIGINT; then finishes in-flight requests for up to
/// [`SHUTDOWN_GRACE`].
///
/// # Errors
///
/// [`Failure::Config`] for a setting that is wrong, [`Failure::Run`] for a failure to
/// listen or serve.
pub async fn run(config: Config) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            Failure::Run(format!("cannot listen on {} (LISTEN): {e}", config.listen).into())
        })?;
    let addr = listener.local_addr()?;
    let instance = config
        .instance_id
        .clone()
        .unwrap_or_else(|| default_instance_id(addr));
    let state = AppState::build(&config, &instance).await?;
    // Before the line that says the server listens: a SIGTERM sent as soon as that line is
    // read must start the drain, not end the process by the signal's default action.
    let signals = StopSignals::register()?;

    say(format_args!(
        "reference_server listening on http://{addr} as {instance}"
    ));
    say(format_args!(
        "backends: database={} ({} products); redis={}; pricing={}; cache ttl {:?}; rate limits {} and {} on exports; export workers {}; secure session cookie {}",
        if config.database_url.is_some() {
            format!(
                "postgres, {} replica(s)",
                config.database_replica_urls.len()
            )
        } else {
            "embedded sqlite".to_owned()
        },
        catalog::SEED_PRODUCTS,
        match (&config.redis_url, config.redis_cluster_nodes.len()) {
            (Some(_), _) => "redis",
            (None, 0) => "none (in-process)",
            (None, _) => "redis cluster",
        },
        config.pricing_url.as_deref().unwrap_or("none"),
        config.cache_ttl,
        config.rate_limit,
        config.export_rate_limit,
        config.export_workers,
        config.session_cookie_secure,
    ));

    if let Some(at) = config.metrics_listen {
        let metrics = tokio::net::TcpListener::bind(at).await.map_err(|e| {
            Failure::Run(format!("cannot listen on {at} (METRICS_LISTEN): {e}").into())
        })?;
        say(format_args!(
            "metrics on http://{}/metrics",
            metrics.local_addr()?
        ));
        // Its answers carry `x-served-by` and `x-request-id`, and its errors are JSON, as
        // every answer of the server's.
        let router = routes::ops::metrics_router()
            .fallback(routes::ops::not_found)
            .layer(
                tower::ServiceBuilder::new()
                    .layer(telemetry::RequestIdLayer::new(
                        state.shared.instance.clone(),
                    ))
                    .layer(tower::util::MapResponseLayer::new(error::json_errors)),
            )
            .with_state(Arc::clone(&state.shared));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(metrics, router).await {
                tracing::warn!(error = %e, "the metrics listener stopped");
            }
        });
    }
    let workers = state.spawn_export_workers();
    let draining = Arc::clone(&state.shared);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let stop = Arc::new(stop);
    let signalled = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = serve(
        listener,
        app(state),
        Limits {
            header_read: config.header_read_timeout,
            max_connections: config.max_connections,
        },
        signalled(stopping.clone()),
    );
    let grace = async {
        signalled(stopping.clone()).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    // Export workers stop alongside the requests: running exports may finish within the
    // grace; the rest go back to the queue at once, for another instance to run.
    let exports = async {
        signalled(stopping.clone()).await;
        if let Some(w) = workers {
            let drained = w.shutdown(SHUTDOWN_GRACE).await;
            tracing::info!(
                finished = drained.finished,
                handed_back = drained.handed_back,
                "export workers stopped"
            );
        }
    };
    let requests = async {
        let res = tokio::select! {
            res = server => res,
            _ = grace => {
                tracing::warn!("in-flight requests still running after {SHUTDOWN_GRACE:?}; exiting");
                Ok(())
            }
        };
        // A server that failed stops the workers too.
        let _ = stop.send(true);
        res
    };
    tokio::spawn(shutdown_signal(
        signals,
        Arc::clone(&stop),
        draining,
        config.drain,
    ));
    let (served, ()) = tokio::join!(requests, exports);
    served?;
    say(format_args!("reference_server stopped"));
    Ok(())
}

/// What one connection may hold.
struct Limits {
    header_read: Duration,
    max_connections: usize,
}

/// Accepts connections until `stop`, then finishes the open ones' in-flight requests
/// (the caller bounds how long). A connection must send a request's headers within
/// `header_read` of the server waiting for them (a silent, half-sent or idle keep-alive
/// connection is closed then, or up to a quarter of `header_read` (250 ms at most) later:
/// [`conn::Registry::sweep`]), and a request body must make progress every
/// [`BODY_TIMEOUT`]. At most `max_connections` are open (fewer if the process's descriptor
/// limit is lower): a new connection past the cap closes the oldest connection that has
/// no request in progress, and is itself closed at once only when every open connection
/// is serving a request, so slow clients can neither exhaust the descriptors nor lock
/// new clients out. `ConnectInfo` is set as `axum::serve` would.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::TokioIo;
    use tower::ServiceExt;

    let mut http = hyper::server::conn::http1::Builder::new();
    // The header-read timeout is the registry's sweep (below), not hyper's, which would
    // allocate and arm a timer for every request on a keep-alive connection.
    http.header_read_timeout(None).keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let max = connection_cap(limits.max_connections);
    let open = Arc::new(tokio::sync::Semaphore::new(max));
    let registry = Arc::new(conn::Registry::default());
    let _sweeper = {
        let registry = Arc::clone(&registry);
        let header_read = limits.header_read;
        AbortOnDrop(tokio::spawn(async move {
            let mut every = tokio::time::interval(conn::Registry::sweep_every(header_read));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                registry.sweep(header_read);
            }
        }))
    };
    let mut last_error_log: Option<std::time::Instant> = None;
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: log at most once a second and let the
                    // open connections finish instead of spinning on accept.
                    if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(error = %e, "accept failed");
                        last_error_log = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let permit = match Arc::clone(&open).try_acquire_owned() {
            Ok(p) => p,
            Err(_) if registry.close_oldest_idle() => {
                // Its task drops it, and its permit, at its next poll.
                match tokio::time::timeout(
                    Duration::from_millis(100),
                    Arc::clone(&open).acquire_owned(),
                )
                .await
                {
                    Ok(Ok(p)) => p,
                    _ => continue,
                }
            }
            Err(_) => {
                // Full of requests in progress: closed at once, the client sees the
                // connection end.
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let registered = registry.register();
        let on = Arc::clone(&registered.conn);
        let reg = Arc::clone(&registry);
        let app = app.clone();
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let busy = on.enter(&reg);
            // The body must make progress every `BODY_TIMEOUT`. Wrapped here, where axum
            // boxes the body anyway, rather than by a `Router::layer`, which would box every
            // route once more and clone that box on every request.
            let mut req = req.map(|body| {
                axum::body::Body::new(tower_http::timeout::TimeoutBody::new(BODY_TIMEOUT, body))
            });
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let fut = app.clone().oneshot(req);
            async move {
                let res = fut.await?;
                Ok::<_, std::convert::Infallible>(res.map(|b| conn::Guarded::new(b, busy)))
            }
        });
        let conn = http.serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _permit = permit;
            tokio::pin!(conn);
            loop {
                tokio::select! {
                    res = &mut conn => {
                        if let Err(e) = res {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    // Closed to make room or for waiting too long for a request's headers
                    // (dropping the connection closes the socket), unless a request
                    // arrived since it was chosen.
                    () = registered.conn.closing() => {
                        if registered.conn.may_close() {
                            break;
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `configured`, or less if the process may not open that many descriptors: a margin of
/// 64 stays for the listener, Redis, the database pools and files.
fn connection_cap(configured: usize) -> usize {
    match conn::descriptor_limit() {
        Some(fds) if fds.saturating_sub(64) < configured => {
            let cap = fds.saturating_sub(64).max(16);
            tracing::warn!(
                configured,
                descriptors = fds,
                cap,
                "MAX_CONNECTIONS is above what the descriptor limit allows; raise `ulimit -n` to allow more"
            );
            cap
        }
        _ => configured,
    }
}

/// The instance's name when `INSTANCE_ID` is not set: `host:port` as bound, with the
/// machine's host name in place of an unspecified address (`0.0.0.0`, `::`), which would
/// name every machine alike.
fn default_instance_id(addr: std::net::SocketAddr) -> String {
    if !addr.ip().is_unspecified() {
        return addr.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()));
    match host {
        Some(h) => format!("{h}:{}", addr.port()),
        None => addr.to_string(),
    }
}

/// The signals that start a shutdown (SIGTERM, SIGINT), registered when made.
struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn register() -> Result<Self, Failure> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.interrupt.recv() => {},
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// On SIGTERM or SIGINT: `/readyz` answers 503 for `drain` while requests are still
/// served (so a load balancer polling it takes the instance out first), then `stop`.
async fn shutdown_signal(
    mut signals: StopSignals,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    shared: Arc<state::Shared>,
    drain: Duration,
) {
    signals.recv().await;
    shared
        .draining
        .store(true, std::sync::atomic::Ordering::Release);
    if !drain.is_zero() {
        tracing::info!(
            ?drain,
            "draining: /readyz answers 503, requests are still served"
        );
        tokio::time::sleep(drain).await;
    }
    tracing::info!("shutting down: no new connections, finishing in-flight requests and exports");
    let _ = stop.send(true);
}

/// Prints a line to stdout. A closed stdout (a supervisor that stopped reading) must not
/// take the server down, so write errors are ignored.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
