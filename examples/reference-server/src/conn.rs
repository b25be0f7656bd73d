//! Connection accounting for the serve loop: which open connections are between requests,
//! so that a full server closes the oldest idle one (a silent client, a half-sent request,
//! a keep-alive connection nobody uses) to make room for a new client, and closes the new
//! one only when every open connection is serving a request.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;

/// The open connections, by accept order.
#[derive(Default)]
pub(crate) struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
}

/// One open connection.
#[derive(Default)]
pub(crate) struct Conn {
    /// Requests handed to the application and not yet answered in full (body included).
    busy: AtomicUsize,
    /// Told to close: the connection's task drops it.
    close: tokio::sync::Notify,
}

/// A connection's place in the registry; leaves it on drop.
pub(crate) struct Registered {
    id: u64,
    pub(crate) conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register(self: &Arc<Self>) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::default());
        self.lock().insert(id, Arc::clone(&conn));
        Registered {
            id,
            conn,
            registry: Arc::clone(self),
        }
    }

    /// Tells the oldest connection with no request in progress to close, and forgets it
    /// (so it is not picked twice). False if every connection is serving a request.
    pub(crate) fn close_oldest_idle(&self) -> bool {
        let mut open = self.lock();
        let victim = open
            .iter()
            .filter(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
            .map(|(id, _)| *id)
            .min();
        match victim.and_then(|id| open.remove(&id)) {
            Some(c) => {
                c.close.notify_one();
                true
            }
            None => false,
        }
    }
}

impl Conn {
    /// Resolves when the serve loop wants this connection closed.
    pub(crate) async fn closing(&self) {
        self.close.notified().await;
    }

    /// A request starts: the connection is busy until the guard (kept by the response
    /// body) drops.
    pub(crate) fn enter(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }
}

/// A request in progress on a connection.
pub(crate) struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection marked busy until it is sent or dropped.
pub(crate) struct Guarded {
    inner: axum::body::Body,
    busy: Option<Busy>,
}

impl Guarded {
    pub(crate) fn new(inner: axum::body::Body, busy: Busy) -> Self {
        Self {
            inner,
            busy: Some(busy),
        }
    }
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.busy = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

/// The soft limit on open descriptors of this process (Linux), if it can be read.
pub(crate) fn descriptor_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_idle_connection_is_closed_first_and_busy_ones_never() {
        let r = Arc::new(Registry::default());
        let a = r.register();
        let b = r.register();
        let c = r.register();
        let busy_a = a.conn.enter();
        assert!(r.close_oldest_idle(), "b is idle");
        assert_eq!(r.lock().len(), 2, "b left the registry");
        assert!(r.lock().contains_key(&a.id) && r.lock().contains_key(&c.id));
        let busy_c = c.conn.enter();
        assert!(!r.close_oldest_idle(), "a and c are both serving");
        drop(busy_a);
        assert!(r.close_oldest_idle(), "a is idle again");
        drop((busy_c, b));
        drop(c);
        assert!(r.lock().is_empty());
    }

    #[test]
    fn the_descriptor_limit_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(descriptor_limit().is_some_and(|n| n > 0));
        }
    }
}
