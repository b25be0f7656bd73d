//! The response body wrapper that ends a request's measurement.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::handles::{MethodEntry, StatusEntry};

/// A request in flight: counted in the active-requests gauge from creation until drop.
///
/// Dropping it is the only way to end it, so the gauge cannot leak: a cancelled future, a
/// panicking handler and a client that hangs up mid-body all drop it.
#[derive(Debug)]
pub(crate) struct InFlight {
    start: Instant,
    entry: Arc<MethodEntry>,
    status: Option<Arc<StatusEntry>>,
}

impl InFlight {
    #[inline]
    pub(crate) fn start(entry: Arc<MethodEntry>) -> Self {
        entry.active.increment(1.0);
        Self {
            start: Instant::now(),
            entry,
            status: None,
        }
    }

    #[inline]
    pub(crate) fn entry(&self) -> &MethodEntry {
        &self.entry
    }

    /// The call produced a response (or error) with these handles: record them when done.
    #[inline]
    pub(crate) fn finished_as(&mut self, status: Arc<StatusEntry>) {
        self.status = Some(status);
    }
}

impl Drop for InFlight {
    #[inline]
    fn drop(&mut self) {
        self.entry.active.decrement(1.0);
        // No status means the future was dropped before the inner service answered: the
        // client went away, and there is no response to time.
        if let Some(s) = &self.status {
            s.duration.record(self.start.elapsed().as_secs_f64());
            s.requests.increment(1);
        }
    }
}

pin_project! {
    /// Response body of [`HttpMetrics`](super::HttpMetrics): passes frames through and ends
    /// the request's measurement when the body ends, errors, or is dropped.
    #[derive(Debug)]
    pub struct MetricsBody<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
    }
}

impl<B> MetricsBody<B> {
    pub(crate) fn new(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner,
            in_flight: Some(in_flight),
        }
    }
}

impl<B: Body> Body for MetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let res = this.inner.as_mut().poll_frame(cx);
        match &res {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                this.in_flight.take();
            }
            Poll::Ready(Some(Ok(_))) => {
                // Record as soon as the body is known to be over, not when it is dropped.
                // `is_end_stream` is only checked once a frame was produced.
                if this.in_flight.is_some() && this.inner.is_end_stream() {
                    this.in_flight.take();
                }
            }
            Poll::Pending => {}
        }
        res
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
