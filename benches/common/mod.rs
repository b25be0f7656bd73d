//! Shared by the benches of layers that hand per-request state to handlers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::Request;
use tower::{Service, ServiceExt};

/// The measured loop: `iters` requests made by `request`, each sent through `svc` and its
/// answer dropped, on one thread. `scripts/bench-instructions.sh` divides this function's
/// instructions by the calls of the bench's `request` function.
#[inline(never)]
pub fn run<S, B>(
    rt: &tokio::runtime::Runtime,
    svc: &S,
    request: impl Fn() -> Request<B>,
    iters: u64,
) -> Duration
where
    S: Service<Request<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut svc = svc.clone();
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let ready = ServiceExt::<Request<B>>::ready(&mut svc).await;
            let resp = ready.unwrap().call(request()).await.unwrap();
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
