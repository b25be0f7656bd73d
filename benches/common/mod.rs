//! Shared by the benches: the measured loop, the criterion set-up, and the floor of layers
//! that hand per-request state to handlers. Each bench uses the parts it needs.
#![allow(dead_code, unused_macros, unused_imports)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::Request;
use tower::{Service, ServiceExt};

/// The measured loop: `iters` requests, the i-th made by `request(i)`, each sent through
/// `svc` and its answer dropped, on one thread. `scripts/bench-instructions.sh` divides
/// this function's instructions by the calls of the bench's `request` function.
#[inline(never)]
pub fn run<S, B>(
    rt: &tokio::runtime::Runtime,
    svc: &S,
    request: impl Fn(u64) -> Request<B>,
    iters: u64,
) -> Duration
where
    S: Service<Request<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut svc = svc.clone();
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..iters {
            let ready = ServiceExt::<Request<B>>::ready(&mut svc).await;
            let resp = ready.unwrap().call(request(i)).await.unwrap();
            std::hint::black_box(resp);
        }
        start.elapsed()
    })
}

/// The floor of any layer that gives a handler per-request state through the request's
/// extensions (where an axum extractor finds it) and looks at that state again when the
/// handler is done: one shared flag, put in the extensions, kept by the layer's future and
/// read after the response. No cookies, no routing, no store; no boxed future.
#[derive(Clone)]
pub struct ExtensionFloor<S>(pub S);

impl<S, B> Service<Request<B>> for ExtensionFloor<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = FloorFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let flag = Arc::new(AtomicBool::new(false));
        req.extensions_mut().insert(Arc::clone(&flag));
        FloorFuture {
            fut: self.0.call(req),
            flag,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct FloorFuture<F> {
        #[pin]
        fut: F,
        flag: Arc<AtomicBool>,
    }
}

impl<F: Future> Future for FloorFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = ready!(this.fut.poll(cx));
        std::hint::black_box(this.flag.load(Ordering::Relaxed));
        Poll::Ready(out)
    }
}

/// The bench binary's `main`: the given functions as one criterion group, 1 s of warm-up
/// and 4 s of measurement per bench, then criterion's summary.
macro_rules! bench_main {
    ($($target:path),+ $(,)?) => {
        criterion::criterion_group! {
            name = group;
            config = criterion::Criterion::default()
                .measurement_time(std::time::Duration::from_secs(4))
                .warm_up_time(std::time::Duration::from_secs(1));
            targets = $($target),+
        }

        fn main() {
            group();
            criterion::Criterion::default().configure_from_args().final_summary();
        }
    };
}
pub(crate) use bench_main;

/// The Redis the benches use: `TEST_REDIS_URL`, else the standard local port.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The runtime of the benches that wait on Redis: two workers, as the machine has cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A plain multiplexed redis-rs connection to `url`, for baselines and for looking inside
/// Redis past the crate's API.
pub async fn raw_redis(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}
