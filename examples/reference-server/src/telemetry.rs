//! Logs, metrics and request ids.

use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tower_http::request_id::{MakeRequestId, RequestId};
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

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
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
        HeaderValue::from_bytes(&id).ok().map(RequestId::new)
    }
}

/// Drops a client's request id that is empty, longer than 128 bytes or not visible
/// ASCII, so that one is made in its place.
pub fn drop_insane_request_id(mut req: Request) -> Request {
    let sane = req.headers().get(&X_REQUEST_ID).is_none_or(|v| {
        (1..=128).contains(&v.len()) && v.as_bytes().iter().all(u8::is_ascii_graphic)
    });
    if !sane {
        req.headers_mut().remove(&X_REQUEST_ID);
    }
    req
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
        let mut make = MakeId::default();
        let req = http::Request::new(());
        let ids: Vec<String> = (0..3)
            .map(|_| {
                let id = make.make_request_id(&req).expect("an id");
                id.header_value().to_str().unwrap().to_owned()
            })
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
