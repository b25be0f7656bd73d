//! Shared by the benches of layers that hand per-request state to handlers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use http::Request;
use tower::Service;

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
