//! Logs, metrics and request ids.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tower::{Layer, Service};
use tower_scale::key::{ClientIp, KeyExtractor};
use tower_scale::metrics::{DEFAULT_DURATION_BUCKETS, DURATION_METRIC};

/// The request id header: echoed when the client sent a sane one, made here otherwise.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Logs to stderr at `RUST_LOG` (default `info`).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The process's Prometheus recorder, installed on first use (the `metrics` facade has one
/// recorder per process; every app in it reports there), with the OpenTelemetry buckets for
/// request durations and finer ones for the layers' own timings.
///
/// # Errors
///
/// The recorder could not be built or installed.
pub fn prometheus() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = install().map_err(|e| format!("metrics recorder: {e}"))?;
            // Histograms are buffered until drained; drain them regularly, not only on
            // scrape.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("prometheus-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .map_err(|e| format!("metrics upkeep thread: {e}"))?;
            Ok(handle)
        })
        .clone()
}

fn install() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
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
        .install_recorder()
}

/// Makes request ids: 24 hex digits, unique in the process and unguessable across
/// restarts.
#[derive(Clone, Default)]
pub struct MakeId {
    seed: RandomState,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl MakeId {
    /// A new id.
    pub fn make(&self) -> HeaderValue {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        // 16 hex digits of a seeded hash of the sequence, then its low 32 bits: written
        // on the stack (the formatter cost a request some 1,300 instructions).
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = [0u8; 24];
        let (hash, low) = (self.seed.hash_one(n), u64::from(n as u32));
        for (i, d) in id[..16].iter_mut().enumerate() {
            *d = HEX[((hash >> (60 - 4 * i)) & 15) as usize];
        }
        for (i, d) in id[16..].iter_mut().enumerate() {
            *d = HEX[((low >> (28 - 4 * i)) & 15) as usize];
        }
        HeaderValue::from_bytes(&id).expect("hex digits are a header value")
    }
}

/// Whether a client's request id is kept: 1 to 128 bytes of visible ASCII.
fn sane(id: &HeaderValue) -> bool {
    (1..=128).contains(&id.len()) && id.as_bytes().iter().all(u8::is_ascii_graphic)
}

/// Request ids and the instance's name, in one layer. A request keeps the client's
/// `x-request-id` when it is sane ([`sane`]); otherwise one is made ([`MakeId`]) and
/// put in the request, where the request's span reads it. The response carries the
/// request's id (unless the handler set one) and `x-served-by`, the instance's name.
///
/// One layer instead of tower-http's `SetRequestId` and `PropagateRequestId` and a
/// `SetResponseHeader`: those keep the id in the request's and the response's extensions
/// (an allocation each) and each moves the request's future once more
/// (`docs/benchmarks.md`, "End to end over HTTP").
#[derive(Clone)]
pub struct RequestIdLayer {
    make: MakeId,
    served_by: HeaderValue,
}

impl RequestIdLayer {
    /// Ids made by a new [`MakeId`]; responses name `served_by`.
    pub fn new(served_by: HeaderValue) -> Self {
        Self {
            make: MakeId::default(),
            served_by,
        }
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIds<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIds {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`RequestIdLayer`].
#[derive(Clone)]
pub struct RequestIds<S> {
    inner: S,
    layer: RequestIdLayer,
}

impl<S, B, ResB> Service<http::Request<B>> for RequestIds<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let id = match req.headers().get(&X_REQUEST_ID) {
            Some(id) if sane(id) => id.clone(),
            _ => {
                let id = self.layer.make.make();
                req.headers_mut().insert(X_REQUEST_ID, id.clone());
                id
            }
        };
        RequestIdFuture {
            inner: self.inner.call(req),
            headers: Some((id, self.layer.served_by.clone())),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`RequestIds`].
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        headers: Option<(HeaderValue, HeaderValue)>,
    }
}

impl<F, ResB, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<http::Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if let Some((id, served_by)) = this.headers.take() {
            let headers = res.headers_mut();
            if !headers.contains_key(&X_REQUEST_ID) {
                headers.insert(X_REQUEST_ID, id);
            }
            headers.insert(crate::X_SERVED_BY, served_by);
        }
        Poll::Ready(Ok(res))
    }
}

/// Whether the request span or any of tower-http's request events would be recorded by
/// the installed subscriber: all of them are at debug level, which is off by default
/// (`RUST_LOG` unset is `info`). [`crate::app`] leaves the trace layer out when none
/// would be: it would otherwise still read the clock six times a request (its latencies),
/// wrap the response body and move the request's future once more, to record nothing.
/// Decided when the app is built: a subscriber installed later is not seen.
pub fn tracing_requests() -> bool {
    tracing::enabled!(tracing::Level::DEBUG)
        || tracing::enabled!(target: "tower_http::trace::on_request", tracing::Level::DEBUG)
        || tracing::enabled!(target: "tower_http::trace::on_response", tracing::Level::DEBUG)
        || tracing::enabled!(target: "tower_http::trace::on_failure", tracing::Level::DEBUG)
}

/// The span of one request: its id, the client address behind the trusted proxies,
/// method and path.
pub fn request_span(client_ip: ClientIp) -> impl Fn(&Request) -> tracing::Span + Clone {
    move |req: &Request| {
        let id = req
            .headers()
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // Field values are evaluated only when the span is enabled: at the default level
        // (info) the client's address is neither extracted nor formatted.
        tracing::debug_span!(
            "request",
            id,
            client = %ClientAddr(client_ip.extract(req).ok()),
            method = %req.method(),
            path = %req.uri().path()
        )
    }
}

/// The client's address as a span field: empty when there is none.
struct ClientAddr(Option<std::net::IpAddr>);

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_24_hex_digits_ending_in_the_sequence() {
        let make = MakeId::default();
        let ids: Vec<String> = (0..3)
            .map(|_| make.make().to_str().unwrap().to_owned())
            .collect();
        for id in &ids {
            assert_eq!(id.len(), 24, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
        }
        // The low 32 bits of the sequence, in order (other tests may take ids between).
        let seq = |id: &str| u32::from_str_radix(&id[16..], 16).unwrap();
        assert!(
            seq(&ids[0]) < seq(&ids[1]) && seq(&ids[1]) < seq(&ids[2]),
            "{ids:?}"
        );
        assert_ne!(ids[0][..16], ids[1][..16]);
    }
}
