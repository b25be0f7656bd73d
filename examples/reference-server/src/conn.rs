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

/// How long after its last response a connection still counts as busy: hyper hands the
/// last of a response body to its write buffer and drops the body before the bytes reach
/// a slow client, so the end of the body is not the end of the response.
const SETTLE_MS: u64 = 2_000;

/// The open connections, by accept order.
pub(crate) struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    epoch: std::time::Instant,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            next: AtomicU64::new(0),
            open: Mutex::default(),
            epoch: std::time::Instant::now(),
        }
    }
}

/// One open connection.
#[derive(Default)]
pub(crate) struct Conn {
    /// Requests handed to the application and not yet answered in full (body included).
    busy: AtomicUsize,
    /// Requests it has carried.
    requests: AtomicU64,
    /// When its last response body ended, in ms since the registry's epoch.
    last_response_ms: AtomicU64,
    /// Told to close: the connection's task drops it, if it is still idle then.
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

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Tells the oldest idle connection to close, and forgets it (so it is not picked
    /// twice): first one that never carried a request (a silent client, a half-sent
    /// request), else one whose last response ended more than [`SETTLE_MS`] ago (an idle
    /// keep-alive). False if there is none: every connection is serving a request or has
    /// just answered one.
    pub(crate) fn close_oldest_idle(&self) -> bool {
        let now = self.now_ms();
        let mut open = self.lock();
        let idle = |c: &Conn| c.busy.load(Ordering::Acquire) == 0;
        let fresh = |c: &Conn| c.requests.load(Ordering::Acquire) == 0;
        let settled =
            |c: &Conn| now.saturating_sub(c.last_response_ms.load(Ordering::Acquire)) > SETTLE_MS;
        let victim = open
            .iter()
            .filter(|(_, c)| idle(c) && fresh(c))
            .map(|(id, _)| *id)
            .min()
            .or_else(|| {
                open.iter()
                    .filter(|(_, c)| idle(c) && settled(c))
                    .map(|(id, _)| *id)
                    .min()
            });
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

    /// Still idle: no request arrived between its choice and now.
    pub(crate) fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }

    /// A request starts: the connection is busy until the guard (kept by the response
    /// body) drops.
    pub(crate) fn enter(self: &Arc<Self>, registry: &Arc<Registry>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self), Arc::clone(registry))
    }
}

/// A request in progress on a connection.
pub(crate) struct Busy(Arc<Conn>, Arc<Registry>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0
            .last_response_ms
            .store(self.1.now_ms(), Ordering::Release);
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
    fn silent_connections_go_first_then_settled_ones_and_busy_ones_never() {
        // A registry ten seconds old, so "long ago" is representable.
        let r = Arc::new(Registry {
            epoch: std::time::Instant::now()
                .checked_sub(std::time::Duration::from_secs(10))
                .unwrap(),
            ..Registry::default()
        });
        let a = r.register();
        let b = r.register();
        let c = r.register();
        let busy_a = a.conn.enter(&r);
        assert!(r.close_oldest_idle(), "b never carried a request");
        assert_eq!(r.lock().len(), 2, "b left the registry");
        assert!(r.lock().contains_key(&a.id) && r.lock().contains_key(&c.id));
        let busy_c = c.conn.enter(&r);
        assert!(!r.close_oldest_idle(), "a and c are both serving");
        drop(busy_a);
        assert!(
            !r.close_oldest_idle(),
            "a just answered: its response may still be on its way"
        );
        // a's last response ended long ago.
        a.conn.last_response_ms.store(0, Ordering::Release);
        assert!(r.close_oldest_idle(), "a has settled");
        assert!(!r.lock().contains_key(&a.id));
        drop((busy_c, b, c, a));
        assert!(r.lock().is_empty());
    }

    #[test]
    fn the_descriptor_limit_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(descriptor_limit().is_some_and(|n| n > 0));
        }
    }
}
