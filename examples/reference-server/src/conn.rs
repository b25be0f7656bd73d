//! Connection accounting for the serve loop: which open connections are between requests,
//! so that a full server closes the oldest idle one (a silent client, a half-sent request,
//! a keep-alive connection nobody uses) to make room for a new client, and closes the new
//! one only when every open connection is serving a request; and the header-read timeout:
//! a connection that has waited longer than it for a request's headers (whether none,
//! some or all but the last line have come) is closed by [`Registry::sweep`], which the
//! serve loop runs every [`Registry::sweep_every`].
//!
//! So a request arms no timer of its own for the header-read timeout (hyper's allocates
//! and registers one for every request on a keep-alive connection); the cost is that a
//! connection is closed up to one sweep interval after its timeout, never before.
//!
//! A connection told to close closes only if it has carried no request since it was
//! chosen and has none in progress ([`Conn::may_close`]): a notice never cuts a request
//! or a response that came after it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// When it was accepted, then when its last response body ended: when it started
    /// waiting for a request's headers, in ms since the registry's epoch.
    last_response_ms: AtomicU64,
    /// Chosen by [`Registry::close_oldest_idle`] and not yet closed: not chosen again.
    evicted: AtomicBool,
    /// The request count at the last notice: the connection closes only if it is still
    /// that ([`Conn::may_close`]).
    close_at_requests: AtomicU64,
    /// Told to close: the connection's task drops it, if [`Conn::may_close`] then.
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
        conn.last_response_ms
            .store(self.now_ms(), Ordering::Release);
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

    /// How often [`Registry::sweep`] should run for a header-read timeout: a quarter of it,
    /// from 10 ms to 250 ms.
    pub(crate) fn sweep_every(header_read: std::time::Duration) -> std::time::Duration {
        (header_read / 4).clamp(
            std::time::Duration::from_millis(10),
            std::time::Duration::from_millis(250),
        )
    }

    /// Tells every connection that has waited longer than `header_read` for a request's
    /// headers to close. Returns how many were told.
    pub(crate) fn sweep(&self, header_read: std::time::Duration) -> usize {
        let now = self.now_ms();
        let limit = header_read.as_millis() as u64;
        let open = self.lock();
        let mut told = 0;
        for c in open.values() {
            // In this order: a request that ends between the reads leaves a count that
            // changed or a stamp that is fresh, never an old stamp with no request.
            let requests = c.requests.load(Ordering::Acquire);
            let idle = c.busy.load(Ordering::Acquire) == 0;
            let since = c.last_response_ms.load(Ordering::Acquire);
            if idle && now.saturating_sub(since) > limit {
                c.tell_to_close(requests);
                told += 1;
            }
        }
        told
    }

    /// Tells the oldest idle connection to close, and marks it so that it is not picked
    /// twice while the notice stands: first one that never carried a request (a silent
    /// client, a half-sent request), else one whose last response ended more than
    /// [`SETTLE_MS`] ago (an idle keep-alive). False if there is none: every connection is serving a request or has
    /// just answered one.
    pub(crate) fn close_oldest_idle(&self) -> bool {
        let now = self.now_ms();
        let open = self.lock();
        // Each connection's request count is read before it is judged idle (see `sweep`).
        let idle = |c: &Conn| {
            let requests = c.requests.load(Ordering::Acquire);
            let idle = c.busy.load(Ordering::Acquire) == 0 && !c.evicted.load(Ordering::Acquire);
            idle.then_some(requests)
        };
        let settled =
            |c: &Conn| now.saturating_sub(c.last_response_ms.load(Ordering::Acquire)) > SETTLE_MS;
        let victim = open
            .iter()
            .filter_map(|(id, c)| idle(c).filter(|&r| r == 0).map(|r| (*id, r)))
            .min()
            .or_else(|| {
                open.iter()
                    .filter_map(|(id, c)| idle(c).filter(|_| settled(c)).map(|r| (*id, r)))
                    .min()
            });
        match victim {
            Some((id, requests)) => {
                let c = &open[&id];
                c.evicted.store(true, Ordering::Release);
                c.tell_to_close(requests);
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

    fn tell_to_close(&self, requests: u64) {
        self.close_at_requests.store(requests, Ordering::Release);
        self.close.notify_one();
    }

    /// Told to close, and still as it was when chosen: no request in progress and none
    /// since. When not, the notice is spent; a connection chosen to make room can be
    /// chosen again, and the sweep still times it.
    pub(crate) fn may_close(&self) -> bool {
        let requests = self.requests.load(Ordering::Acquire);
        let still = self.busy.load(Ordering::Acquire) == 0
            && requests == self.close_at_requests.load(Ordering::Acquire);
        if !still {
            self.evicted.store(false, Ordering::Release);
        }
        still
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
        let r = ten_seconds_old();
        let a = r.register();
        let b = r.register();
        let c = r.register();
        let busy_a = a.conn.enter(&r);
        assert!(r.close_oldest_idle(), "b never carried a request");
        assert!(told(&b.conn) && b.conn.may_close(), "b is told to close");
        assert!(!told(&a.conn) && !told(&c.conn));
        let busy_c = c.conn.enter(&r);
        assert!(
            !r.close_oldest_idle(),
            "a and c are both serving, and b is not chosen twice"
        );
        drop(busy_a);
        assert!(
            !r.close_oldest_idle(),
            "a just answered: its response may still be on its way"
        );
        // a's last response ended long ago.
        a.conn.last_response_ms.store(0, Ordering::Release);
        assert!(r.close_oldest_idle(), "a has settled");
        assert!(told(&a.conn) && a.conn.may_close());
        drop((busy_c, b, c, a));
        assert!(r.lock().is_empty());
    }

    /// A registry ten seconds old, so "long ago" (a stamp of 0) is representable.
    fn ten_seconds_old() -> Arc<Registry> {
        Arc::new(Registry {
            epoch: std::time::Instant::now()
                .checked_sub(std::time::Duration::from_secs(10))
                .unwrap(),
            ..Registry::default()
        })
    }

    /// Whether the connection was told to close (takes the notice).
    fn told(c: &Conn) -> bool {
        let mut closing = std::pin::pin!(c.closing());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        closing.as_mut().poll(&mut cx).is_ready()
    }

    #[test]
    fn the_sweep_closes_connections_waiting_past_the_header_timeout_and_only_them() {
        use std::time::Duration;
        let r = ten_seconds_old();
        let (a, b, c) = (r.register(), r.register(), r.register());
        // a and b have waited 10 s for headers; b is serving a request all the same.
        a.conn.last_response_ms.store(0, Ordering::Release);
        b.conn.last_response_ms.store(0, Ordering::Release);
        let busy_b = b.conn.enter(&r);
        assert_eq!(r.sweep(Duration::from_secs(1)), 1);
        assert!(told(&a.conn) && a.conn.may_close(), "a waited too long");
        assert!(!told(&b.conn), "b is serving a request");
        assert!(!told(&c.conn), "c has just been accepted");
        // b's response ends: stamped now, so it has a full timeout again.
        drop(busy_b);
        assert!(b.conn.last_response_ms.load(Ordering::Acquire) >= 10_000);
        assert_eq!(
            r.sweep(Duration::from_secs(1)),
            1,
            "a again, until it closes"
        );
        assert!(!told(&b.conn));
        assert_eq!(r.sweep(Duration::from_secs(20)), 0, "nothing waited 20 s");
        drop((a, b, c));
    }

    #[test]
    fn a_notice_is_spent_if_a_request_came_after_it() {
        use std::time::Duration;
        let r = ten_seconds_old();
        let a = r.register();
        a.conn.last_response_ms.store(0, Ordering::Release);
        assert_eq!(r.sweep(Duration::from_secs(1)), 1);
        // A request comes and is answered before the connection's task sees the notice.
        drop(a.conn.enter(&r));
        assert!(told(&a.conn));
        assert!(
            !a.conn.may_close(),
            "the request that came after the notice"
        );
        // Evicted to make room, then a request: still in the registry, chosen again later
        // and timed by the sweep.
        a.conn.last_response_ms.store(0, Ordering::Release);
        assert!(r.close_oldest_idle());
        assert!(
            !r.close_oldest_idle(),
            "not chosen twice while its notice stands"
        );
        drop(a.conn.enter(&r));
        assert!(told(&a.conn) && !a.conn.may_close());
        assert_eq!(r.lock().len(), 1, "still registered");
        a.conn.last_response_ms.store(0, Ordering::Release);
        assert!(
            r.close_oldest_idle(),
            "chosen again once its notice was spent"
        );
        assert!(told(&a.conn) && a.conn.may_close());
        assert_eq!(
            r.sweep(Duration::from_secs(1)),
            1,
            "and the sweep still times it"
        );
    }

    #[test]
    fn sweeps_run_four_times_per_timeout_within_bounds() {
        use std::time::Duration;
        assert_eq!(
            Registry::sweep_every(Duration::from_secs(10)),
            Duration::from_millis(250)
        );
        assert_eq!(
            Registry::sweep_every(Duration::from_millis(400)),
            Duration::from_millis(100)
        );
        assert_eq!(
            Registry::sweep_every(Duration::from_millis(20)),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn the_descriptor_limit_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(descriptor_limit().is_some_and(|n| n > 0));
        }
    }
}
