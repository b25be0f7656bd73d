//! [`DbRouter`]: a primary, its replicas, their health, and the choice of where a read
//! goes.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::position::{ConsistencyToken, Lsn};
use crate::ConfigError;

use crate::BoxError;

/// Where a replica stands, as the health check reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaPosition {
    /// The last WAL position it replayed.
    pub replayed: Lsn,
    /// How long ago it replayed its last transaction; `None` when it is not known. Used
    /// only when the replica is behind the primary's position (or that is unknown).
    pub lag: Option<Duration>,
}

/// What the router asks of a database handle (a pool): the driver-specific part. The sqlx
/// implementation for `PgPool` comes with the `sqlx-postgres` feature.
pub trait PositionSource: Send + Sync + 'static {
    /// The primary's current WAL position (for PostgreSQL `pg_current_wal_insert_lsn()`,
    /// which, unlike `pg_current_wal_lsn()`, is never behind a commit that returned).
    fn write_position(&self) -> impl Future<Output = Result<Lsn, BoxError>> + Send;

    /// A replica's replayed position and lag.
    fn replica_position(&self) -> impl Future<Output = Result<ReplicaPosition, BoxError>> + Send;
}

/// Why a read goes to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PrimaryReason {
    /// The router has no replicas.
    NoReplicas,
    /// Every replica is down or lags beyond the bounds.
    NoHealthyReplica,
    /// The client wrote recently and no healthy replica has replayed its write yet.
    NotReplayed,
    /// The client wrote recently, through a driver that gives no position: it reads from
    /// the primary for the time pin.
    TimePinned,
    /// The request writes: its reads go to the primary too.
    Write,
}

impl PrimaryReason {
    /// A short label for metrics and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoReplicas => "no_replicas",
            Self::NoHealthyReplica => "no_healthy_replica",
            Self::NotReplayed => "not_replayed",
            Self::TimePinned => "time_pinned",
            Self::Write => "write",
        }
    }
}

/// Where a read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadRoute {
    /// The replica at this index.
    Replica(usize),
    /// The primary, and why.
    Primary(PrimaryReason),
}

/// One replica's health as last checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaHealth {
    /// Its name (as given to the builder).
    pub name: String,
    /// Reachable and within the lag bounds.
    pub healthy: bool,
    /// Its last replayed position.
    pub replayed: Lsn,
    /// Bytes of WAL behind the primary at the last check.
    pub lag_bytes: u64,
    /// Time behind at the last check.
    pub lag: Duration,
}

/// A primary and its replicas. Cheap to clone.
///
/// Reads go to a healthy replica, in turn, unless the client's [`ConsistencyToken`] says
/// it wrote something no healthy replica has replayed yet; then, and when no replica is
/// healthy, to the primary. Writes go to the primary. Health is read by
/// [`check_health`](Self::check_health), which
/// [`spawn_health_checks`](Self::spawn_health_checks) runs periodically: a replica that
/// cannot be reached within the check timeout, or lags beyond `max_lag` or
/// `max_lag_bytes`, is skipped until a later check finds it well.
pub struct DbRouter<P> {
    inner: Arc<Inner<P>>,
}

impl<P> Clone for DbRouter<P> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<P> {
    primary: P,
    replicas: Box<[Slot<P>]>,
    next: AtomicUsize,
    max_lag: Duration,
    max_lag_bytes: u64,
    time_pin: Duration,
    token_max_age: Duration,
    check_timeout: Duration,
    /// `tower_scale.db_route.reads` by destination and reason, registered once.
    reads: [::metrics::Counter; 6],
}

struct Slot<P> {
    name: String,
    pool: P,
    healthy: AtomicBool,
    /// Failed reads reported so far: a health check that began before the latest one
    /// does not put the replica back.
    failures: AtomicU64,
    replayed: AtomicU64,
    lag_bytes: AtomicU64,
    lag_ms: AtomicU64,
}

impl<P> fmt::Debug for DbRouter<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbRouter")
            .field("replicas", &self.health())
            .field("max_lag", &self.inner.max_lag)
            .field("max_lag_bytes", &self.inner.max_lag_bytes)
            .finish_non_exhaustive()
    }
}

/// Builds a [`DbRouter`].
#[must_use]
pub struct DbRouterBuilder<P> {
    primary: P,
    replicas: Vec<(String, P)>,
    max_lag: Duration,
    max_lag_bytes: u64,
    time_pin: Duration,
    token_max_age: Duration,
    check_timeout: Duration,
}

impl<P> fmt::Debug for DbRouterBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbRouterBuilder")
            .field("replicas", &self.replicas.len())
            .finish_non_exhaustive()
    }
}

impl<P> DbRouter<P> {
    /// Starts a builder around the primary.
    pub fn builder(primary: P) -> DbRouterBuilder<P> {
        DbRouterBuilder {
            primary,
            replicas: Vec::new(),
            max_lag: Duration::from_secs(10),
            max_lag_bytes: 64 << 20,
            time_pin: Duration::from_secs(2),
            token_max_age: Duration::from_secs(30),
            check_timeout: Duration::from_secs(1),
        }
    }

    /// The primary: for writes, and for reads that must see the latest data.
    pub fn writer(&self) -> &P {
        &self.inner.primary
    }

    /// The handle a route names (the primary for a replica index this router does not
    /// have).
    pub fn handle(&self, route: ReadRoute) -> &P {
        match route {
            ReadRoute::Replica(i) => self
                .inner
                .replicas
                .get(i)
                .map_or(&self.inner.primary, |r| &r.pool),
            ReadRoute::Primary(_) => &self.inner.primary,
        }
    }

    /// A read on replica `index` failed: it is out of rotation until the next health check
    /// finds it well, so other requests stop trying it at once (a passive health check).
    pub(crate) fn replica_failed(&self, index: usize) {
        let Some(slot) = self.inner.replicas.get(index) else {
            return;
        };
        slot.failures.fetch_add(1, Ordering::AcqRel);
        if slot.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(replica = %slot.name, "replica read failed; out of rotation until its next health check");
            ::metrics::counter!("tower_scale.db_route.health_changes", "replica" => slot.name.clone(), "healthy" => "false")
                .increment(1);
        }
        ::metrics::counter!("tower_scale.db_route.replica_failures", "replica" => slot.name.clone())
            .increment(1);
    }

    /// Whether the router has replicas. Without them every read is the primary's, so the
    /// routing layer sets no token.
    pub fn has_replicas(&self) -> bool {
        !self.inner.replicas.is_empty()
    }

    /// How long a database may take to answer a position read.
    pub(crate) fn check_timeout(&self) -> Duration {
        self.inner.check_timeout
    }

    /// How long a client's token is honoured (its reads may be pinned to the primary for
    /// at most this long).
    pub fn token_max_age(&self) -> Duration {
        self.inner.token_max_age
    }

    /// Where a read goes, for a client that carries `token` (checked against `now_ms`,
    /// milliseconds since the Unix epoch).
    pub fn route_read(&self, token: Option<&ConsistencyToken>, now_ms: u64) -> ReadRoute {
        self.route(token, || now_ms, self.turn())
    }

    /// [`route_read`](Self::route_read) for a token as the client sent it, whose age has
    /// not been checked. A token too old, or from the future, counts as none; but the
    /// clock is read only when the answer depends on it: a time pin, or a position that no
    /// healthy replica has replayed yet. Once a replica has replayed the client's write,
    /// which is the usual case a few milliseconds after it, the token's age cannot change
    /// where the read goes, a replica: without the token it would go to the next healthy
    /// replica in turn, with it to the next one that has replayed the write.
    pub(crate) fn route_carried(&self, token: &ConsistencyToken) -> ReadRoute {
        let max_age = self.inner.token_max_age;
        // One turn per request, whichever way it is routed.
        let turn = self.turn();
        if token.lsn.is_none() {
            let now = super::position::now_ms();
            let token = token.is_current(now, max_age).then_some(token);
            return self.route(token, || now, turn);
        }
        // A token with a position never asks for the time.
        let route = self.route(Some(token), || 0, turn);
        if route != ReadRoute::Primary(PrimaryReason::NotReplayed) {
            return route;
        }
        let now = super::position::now_ms();
        if token.is_current(now, max_age) {
            route
        } else {
            self.route(None, || now, turn)
        }
    }

    /// The next turn of the round robin among replicas.
    fn turn(&self) -> usize {
        self.inner.next.fetch_add(1, Ordering::Relaxed)
    }

    fn route(
        &self,
        token: Option<&ConsistencyToken>,
        now_ms: impl FnOnce() -> u64,
        turn: usize,
    ) -> ReadRoute {
        let inner = &*self.inner;
        let n = inner.replicas.len();
        if n == 0 {
            return ReadRoute::Primary(PrimaryReason::NoReplicas);
        }
        let needed = match token {
            Some(ConsistencyToken {
                lsn: None,
                issued_ms,
            }) => {
                let pin = crate::duration::millis(inner.time_pin);
                if now_ms() < issued_ms.saturating_add(pin) {
                    return ReadRoute::Primary(PrimaryReason::TimePinned);
                }
                None
            }
            Some(ConsistencyToken { lsn: Some(l), .. }) => Some(*l),
            None => None,
        };
        let mut i = turn % n;
        let mut any_healthy = false;
        for _ in 0..n {
            let slot = &inner.replicas[i];
            if slot.healthy.load(Ordering::Acquire) {
                any_healthy = true;
                if needed.is_none_or(|l| slot.replayed.load(Ordering::Acquire) >= l.0) {
                    return ReadRoute::Replica(i);
                }
            }
            i = if i + 1 == n { 0 } else { i + 1 };
        }
        ReadRoute::Primary(if any_healthy {
            PrimaryReason::NotReplayed
        } else {
            PrimaryReason::NoHealthyReplica
        })
    }

    /// Counts a routing decision in `tower_scale.db_route.reads`.
    pub(crate) fn record(&self, route: ReadRoute) {
        let i = match route {
            ReadRoute::Replica(_) => 0,
            ReadRoute::Primary(PrimaryReason::NoReplicas) => 1,
            ReadRoute::Primary(PrimaryReason::NoHealthyReplica) => 2,
            ReadRoute::Primary(PrimaryReason::NotReplayed) => 3,
            ReadRoute::Primary(PrimaryReason::TimePinned) => 4,
            ReadRoute::Primary(PrimaryReason::Write) => 5,
        };
        self.inner.reads[i].increment(1);
    }

    /// Every replica's health as last checked.
    pub fn health(&self) -> Vec<ReplicaHealth> {
        self.inner
            .replicas
            .iter()
            .map(|s| ReplicaHealth {
                name: s.name.clone(),
                healthy: s.healthy.load(Ordering::Acquire),
                replayed: Lsn(s.replayed.load(Ordering::Acquire)),
                lag_bytes: s.lag_bytes.load(Ordering::Acquire),
                lag: Duration::from_millis(s.lag_ms.load(Ordering::Acquire)),
            })
            .collect()
    }
}

impl<P: PositionSource> DbRouter<P> {
    /// Checks every replica once: its replayed position against the primary's write
    /// position, and its lag. A replica that errs or does not answer within the check
    /// timeout is unhealthy until a later check. If the primary cannot be read, replicas
    /// are judged by their time lag alone.
    pub async fn check_health(&self) {
        let inner = &*self.inner;
        let primary = match tokio::time::timeout(
            inner.check_timeout,
            inner.primary.write_position(),
        )
        .await
        {
            Ok(Ok(p)) => Some(p),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "primary position unavailable; replicas judged by time lag");
                None
            }
            Err(_) => {
                tracing::debug!("primary position timed out; replicas judged by time lag");
                None
            }
        };
        for slot in inner.replicas.iter() {
            let failures = slot.failures.load(Ordering::Acquire);
            let read =
                tokio::time::timeout(inner.check_timeout, slot.pool.replica_position()).await;
            let was = slot.healthy.load(Ordering::Acquire);
            let now = match read {
                Ok(Ok(pos)) => {
                    let lag_bytes = primary.map_or(0, |p| p.0.saturating_sub(pos.replayed.0));
                    let lag = if lag_bytes == 0 && primary.is_some() {
                        Duration::ZERO
                    } else {
                        pos.lag.unwrap_or(Duration::ZERO)
                    };
                    // Stored as read, not kept at its highest: a replica rebuilt from an older
                    // backup must not be trusted with positions it no longer has.
                    slot.replayed.store(pos.replayed.0, Ordering::Release);
                    slot.lag_bytes.store(lag_bytes, Ordering::Release);
                    slot.lag_ms
                        .store(crate::duration::millis(lag), Ordering::Release);
                    lag <= inner.max_lag && lag_bytes <= inner.max_lag_bytes
                }
                Ok(Err(e)) => {
                    tracing::debug!(replica = %slot.name, error = %e, "replica health check failed");
                    false
                }
                Err(_) => {
                    tracing::debug!(replica = %slot.name, "replica health check timed out");
                    false
                }
            };
            // A read failed on it while this check ran: the check's good answer predates it.
            let now = now && slot.failures.load(Ordering::Acquire) == failures;
            slot.healthy.store(now, Ordering::Release);
            if was != now {
                tracing::warn!(replica = %slot.name, healthy = now, "replica health changed");
                ::metrics::counter!("tower_scale.db_route.health_changes", "replica" => slot.name.clone(), "healthy" => if now { "true" } else { "false" })
                    .increment(1);
            }
            ::metrics::gauge!("tower_scale.db_route.replica_lag_bytes", "replica" => slot.name.clone())
                .set(slot.lag_bytes.load(Ordering::Acquire) as f64);
            ::metrics::gauge!("tower_scale.db_route.replica_lag_seconds", "replica" => slot.name.clone())
                .set(slot.lag_ms.load(Ordering::Acquire) as f64 / 1000.0);
        }
    }

    /// Runs [`check_health`](Self::check_health) now and then every `every` (at least
    /// 10 ms apart), on a Tokio task that ends when the last clone of the router is
    /// dropped.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn spawn_health_checks(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner<P>> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                DbRouter { inner }.check_health().await;
                tokio::time::sleep(every.max(Duration::from_millis(10))).await;
            }
        })
    }
}

impl<P> DbRouterBuilder<P> {
    /// Adds a replica, named for logs and metrics.
    pub fn replica(mut self, name: impl Into<String>, pool: P) -> Self {
        self.replicas.push((name.into(), pool));
        self
    }

    /// The most a replica may lag in time and stay in use (default 10 s).
    pub fn max_lag(mut self, lag: Duration) -> Self {
        self.max_lag = lag;
        self
    }

    /// The most WAL a replica may be behind the primary and stay in use (default 64 MiB).
    pub fn max_lag_bytes(mut self, bytes: u64) -> Self {
        self.max_lag_bytes = bytes;
        self
    }

    /// How long a client that wrote through a driver with no position reads from the
    /// primary (default 2 s, as Rails' `DatabaseSelector`).
    pub fn time_pin(mut self, pin: Duration) -> Self {
        self.time_pin = pin;
        self
    }

    /// How long a token is honoured (default 30 s): the longest a client (or a forged
    /// token) can be kept on the primary.
    pub fn token_max_age(mut self, age: Duration) -> Self {
        self.token_max_age = age;
        self
    }

    /// How long one replica's health check may take (default 1 s).
    pub fn check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout;
        self
    }

    /// Validates and builds. Replicas start healthy with an unknown position (0): reads
    /// without a token use them at once, reads after a write wait for the first check.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for duplicate or empty replica names, zero timeouts, or a time
    /// pin longer than the token's age.
    pub fn build(self) -> Result<DbRouter<P>, ConfigError> {
        crate::describe::once();
        for (i, (name, _)) in self.replicas.iter().enumerate() {
            if name.is_empty() || self.replicas[..i].iter().any(|(n, _)| n == name) {
                return Err(ConfigError::new(
                    "replica",
                    format!("replica names must be non-empty and distinct (`{name}`)"),
                ));
            }
        }
        if self.check_timeout.is_zero() || self.token_max_age.is_zero() {
            return Err(ConfigError::new(
                "check_timeout/token_max_age",
                "must be above zero",
            ));
        }
        if self.time_pin > self.token_max_age {
            return Err(ConfigError::new(
                "time_pin",
                "must not exceed token_max_age, which bounds every pin",
            ));
        }
        Ok(DbRouter {
            inner: Arc::new(Inner {
                primary: self.primary,
                replicas: self
                    .replicas
                    .into_iter()
                    .map(|(name, pool)| Slot {
                        name,
                        pool,
                        healthy: AtomicBool::new(true),
                        failures: AtomicU64::new(0),
                        replayed: AtomicU64::new(0),
                        lag_bytes: AtomicU64::new(0),
                        lag_ms: AtomicU64::new(0),
                    })
                    .collect(),
                next: AtomicUsize::new(0),
                max_lag: self.max_lag,
                max_lag_bytes: self.max_lag_bytes,
                time_pin: self.time_pin,
                token_max_age: self.token_max_age,
                check_timeout: self.check_timeout,
                reads: [
                    ("replica", "healthy"),
                    ("primary", PrimaryReason::NoReplicas.as_str()),
                    ("primary", PrimaryReason::NoHealthyReplica.as_str()),
                    ("primary", PrimaryReason::NotReplayed.as_str()),
                    ("primary", PrimaryReason::TimePinned.as_str()),
                    ("primary", PrimaryReason::Write.as_str()),
                ]
                .map(|(to, why)| {
                    ::metrics::counter!("tower_scale.db_route.reads", "to" => to, "why" => why)
                }),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle whose positions the test sets.
    struct Fake {
        write: AtomicU64,
        replayed: AtomicU64,
        up: AtomicBool,
    }

    impl Fake {
        fn new(write: u64, replayed: u64) -> Arc<Self> {
            Arc::new(Self {
                write: AtomicU64::new(write),
                replayed: AtomicU64::new(replayed),
                up: AtomicBool::new(true),
            })
        }
    }

    impl PositionSource for Arc<Fake> {
        async fn write_position(&self) -> Result<Lsn, BoxError> {
            Ok(Lsn(self.write.load(Ordering::Relaxed)))
        }

        async fn replica_position(&self) -> Result<ReplicaPosition, BoxError> {
            if !self.up.load(Ordering::Relaxed) {
                return Err("down".into());
            }
            Ok(ReplicaPosition {
                replayed: Lsn(self.replayed.load(Ordering::Relaxed)),
                lag: None,
            })
        }
    }

    #[tokio::test]
    async fn routing_table() {
        let primary = Fake::new(100, 0);
        let (a, b) = (Fake::new(0, 100), Fake::new(0, 40));
        let router = DbRouter::builder(primary.clone())
            .replica("a", a.clone())
            .replica("b", b.clone())
            .max_lag_bytes(1_000)
            .build()
            .unwrap();
        router.check_health().await;
        let now = 10_000_000;
        let token = |lsn: Option<u64>, age: u64| ConsistencyToken {
            lsn: lsn.map(Lsn),
            issued_ms: now - age,
        };
        // Without a token, reads alternate between the healthy replicas.
        let mut seen = [0; 2];
        for _ in 0..10 {
            match router.route_read(None, now) {
                ReadRoute::Replica(i) => seen[i] += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen, [5, 5]);
        struct Case {
            name: &'static str,
            token: Option<ConsistencyToken>,
            want: ReadRoute,
        }
        let cases = [
            Case {
                name: "replayed by a only",
                token: Some(token(Some(90), 0)),
                want: ReadRoute::Replica(0),
            },
            Case {
                name: "replayed by none",
                token: Some(token(Some(101), 0)),
                want: ReadRoute::Primary(PrimaryReason::NotReplayed),
            },
            Case {
                name: "time pin holds",
                token: Some(token(None, 1_000)),
                want: ReadRoute::Primary(PrimaryReason::TimePinned),
            },
        ];
        for case in cases {
            assert_eq!(
                router.route_read(case.token.as_ref(), now),
                case.want,
                "case {}",
                case.name
            );
        }
        // The time pin ends.
        assert!(matches!(
            router.route_read(Some(&token(None, 3_000)), now),
            ReadRoute::Replica(_)
        ));

        // b lags beyond the byte bound, a goes down: no healthy replica.
        primary.write.store(2_000, Ordering::Relaxed);
        a.up.store(false, Ordering::Relaxed);
        router.check_health().await;
        assert_eq!(
            router.route_read(None, now),
            ReadRoute::Primary(PrimaryReason::NoHealthyReplica)
        );
        let h = router.health();
        assert!(!h[0].healthy && !h[1].healthy);
        assert_eq!(h[1].lag_bytes, 1_960);
        // Both recover.
        a.up.store(true, Ordering::Relaxed);
        a.replayed.store(2_000, Ordering::Relaxed);
        b.replayed.store(1_500, Ordering::Relaxed);
        router.check_health().await;
        assert!(router.health().iter().all(|h| h.healthy));

        let alone = DbRouter::builder(Fake::new(0, 0)).build().unwrap();
        assert_eq!(
            alone.route_read(None, now),
            ReadRoute::Primary(PrimaryReason::NoReplicas)
        );
    }

    #[tokio::test]
    async fn carried_tokens_are_aged_only_when_it_matters() {
        let (a, b) = (Fake::new(0, 100), Fake::new(0, 40));
        let router = DbRouter::builder(Fake::new(100, 0))
            .replica("a", a.clone())
            .replica("b", b.clone())
            .token_max_age(Duration::from_secs(30))
            .time_pin(Duration::from_secs(2))
            .build()
            .unwrap();
        router.check_health().await;
        let now = super::super::position::now_ms();
        let token = |lsn: Option<u64>, issued_ms: u64| ConsistencyToken {
            lsn: lsn.map(Lsn),
            issued_ms,
        };
        let cases = [
            (
                "replayed by a: a",
                token(Some(90), now),
                ReadRoute::Replica(0),
            ),
            (
                "replayed by a, too old: a all the same",
                token(Some(90), now - 60_000),
                ReadRoute::Replica(0),
            ),
            (
                "replayed by none, fresh: the primary",
                token(Some(101), now - 1_000),
                ReadRoute::Primary(PrimaryReason::NotReplayed),
            ),
            (
                "replayed by none, from the far future: no token",
                token(Some(101), now + 3_600_000),
                ReadRoute::Replica(usize::MAX),
            ),
            (
                "replayed by none, too old: no token",
                token(Some(u64::MAX), now - 31_000),
                ReadRoute::Replica(usize::MAX),
            ),
            (
                "time pin, fresh: the primary",
                token(None, now - 500),
                ReadRoute::Primary(PrimaryReason::TimePinned),
            ),
            (
                "time pin, over: a replica",
                token(None, now - 2_500),
                ReadRoute::Replica(usize::MAX),
            ),
            (
                "time pin from the far future: no token",
                token(None, now + 3_600_000),
                ReadRoute::Replica(usize::MAX),
            ),
        ];
        for (name, t, want) in cases {
            // `Replica(usize::MAX)`: any replica (no token alternates between them).
            for _ in 0..2 {
                match (router.route_carried(&t), want) {
                    (ReadRoute::Replica(_), ReadRoute::Replica(usize::MAX)) => {}
                    (got, want) => assert_eq!(got, want, "case {name}"),
                }
            }
        }
        // Stale tokens are routed as no token, one round-robin turn each: reads still
        // alternate.
        let stale = token(Some(u64::MAX), now - 31_000);
        let mut seen = [0; 2];
        for _ in 0..10 {
            match router.route_carried(&stale) {
                ReadRoute::Replica(i) => seen[i] += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen, [5, 5]);
        // No healthy replica: the primary, whatever the token.
        a.up.store(false, Ordering::Relaxed);
        b.up.store(false, Ordering::Relaxed);
        router.check_health().await;
        assert_eq!(
            router.route_carried(&token(Some(1), now)),
            ReadRoute::Primary(PrimaryReason::NoHealthyReplica)
        );
    }

    #[test]
    fn bad_config_names_the_setting() {
        let p = || Fake::new(0, 0);
        let cases = [
            ("replica", DbRouter::builder(p()).replica("", p())),
            (
                "replica",
                DbRouter::builder(p()).replica("a", p()).replica("a", p()),
            ),
            (
                "check_timeout/token_max_age",
                DbRouter::builder(p()).check_timeout(Duration::ZERO),
            ),
            (
                "time_pin",
                DbRouter::builder(p()).time_pin(Duration::from_secs(60)),
            ),
        ];
        for (setting, b) in cases {
            assert_eq!(b.build().unwrap_err().setting(), setting);
        }
    }
}
