//! Store failures reach the log: under each layer, Redis going away gives one WARN line
//! (not one per request, so an outage does not flood the log), while the layer degrades
//! as documented and its metrics count every failure.

mod support;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use support::LayerExt;
use tower::ServiceExt;
use tower_scale::cache::{Cache, CacheEngine};
use tower_scale::jobs::{Queue, RedisJobStore, Worker};
use tower_scale::rate_limit::{Quota, RateLimitLayer, RedisStore};
use tower_scale::redis::RedisBackend;
use tower_scale::session::{RedisSessionStore, Session, SessionLayer};

/// What the layers log at WARN and above, while the guard lives (this thread's tasks).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn start() -> (Self, tracing::subscriber::DefaultGuard) {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (out, tracing::subscriber::set_default(subscriber))
    }

    /// The WARN lines that contain `needle`.
    fn warns(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(" WARN ") && l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

/// A backend on a port where nothing listens: every call fails at once.
fn dead() -> RedisBackend {
    RedisBackend::builder("redis://127.0.0.1:1")
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap()
}

fn request(path: &str) -> Request<Full<Bytes>> {
    let mut r = Request::post(path).body(Full::default()).unwrap();
    r.extensions_mut()
        .insert("192.0.2.1:1".parse::<SocketAddr>().unwrap());
    r
}

/// A Cluster whose only seed does not answer.
fn dead_cluster() -> RedisBackend {
    RedisBackend::cluster(["redis://127.0.0.1:1"])
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_rate_limit_store_failure_logs_one_warn_line() {
    for backend in [dead(), dead_cluster()] {
        rate_limit_warns_once(backend).await;
    }
}

async fn rate_limit_warns_once(backend: RedisBackend) {
    let (log, _guard) = Captured::start();
    let cluster = backend.is_cluster();
    let svc = RateLimitLayer::builder()
        .store(RedisStore::new(backend))
        .quota("5/1m".parse::<Quota>().unwrap())
        .build()
        .unwrap()
        .layer_service(tower::service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }));
    for _ in 0..5 {
        let r = svc.clone().oneshot(request("/")).await.unwrap();
        // The default fallback: the instance enforces the quota alone.
        assert_eq!(r.status(), StatusCode::OK);
    }
    let lines = log.warns("rate limit: store unavailable");
    assert_eq!(lines.len(), 1, "cluster: {cluster}: {lines:#?}");
    assert!(lines[0].contains("skipped=0"), "{}", lines[0]);
}

#[tokio::test]
async fn a_session_store_failure_logs_one_warn_line() {
    let (log, _guard) = Captured::start();
    let svc = SessionLayer::builder(RedisSessionStore::new(dead()))
        .build()
        .unwrap()
        .layer_service(tower::service_fn(|req: Request<Full<Bytes>>| async move {
            let s = req.extensions().get::<Session>().cloned().unwrap();
            let status = match s.increment("n", 1).await {
                Ok(_) => StatusCode::OK,
                Err(e) => e.status(),
            };
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = status;
            Ok::<_, Infallible>(r)
        }));
    for _ in 0..5 {
        let r = svc.clone().oneshot(request("/")).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let lines = log.warns("session store unavailable");
    assert_eq!(lines.len(), 1, "{lines:#?}");
}

#[tokio::test]
async fn a_cache_l2_failure_logs_one_warn_line() {
    let (log, _guard) = Captured::start();
    let engine = CacheEngine::builder().redis(dead()).build().unwrap();
    let cache: Cache<str, u64> = Cache::new(&engine, "logs");
    for i in 0..5u64 {
        let key = format!("k{i}");
        // Served by the loader, L1 only.
        let v = cache
            .get_or_load(&key, move || async move { Ok::<_, Infallible>(i) })
            .await
            .unwrap();
        assert_eq!(v, i);
    }
    let lines = log.warns("cache L2 unavailable");
    assert_eq!(lines.len(), 1, "{lines:#?}");
}

#[derive(Serialize, Deserialize)]
struct Job {
    n: u32,
}

#[tokio::test]
async fn a_job_store_failure_logs_one_warn_line_per_pool() {
    let (log, _guard) = Captured::start();
    let queue: Queue<Job> = Queue::builder("logs")
        .store(RedisJobStore::new(dead()))
        .build()
        .unwrap();
    // The caller of an enqueue gets the error itself.
    assert!(queue.enqueue(&Job { n: 1 }).await.is_err());
    let pool = Worker::builder(queue).spawn(|_job| async move { Ok::<_, String>(()) });
    // Fetches fail and back off (50 ms, doubling) for a second: several failures.
    tokio::time::sleep(Duration::from_secs(1)).await;
    pool.shutdown(Duration::from_millis(100)).await;
    let lines = log.warns("job fetch failed");
    assert_eq!(lines.len(), 1, "{lines:#?}");
}
