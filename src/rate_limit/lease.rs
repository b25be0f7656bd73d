//! [`LeasingStore`]: a shared store's units taken in batches, so most decisions need no
//! round trip.

use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::metrics::Counter;

use super::gcra::Verdict;
use super::store::{Decision, MAX_QUOTAS, QuotaSpec, Store, StoreFuture};
use crate::ConfigError;
use crate::clock::Clock;
use crate::keyed::KeyedMap;

const SHARDS: usize = 64;

/// A store in front of a shared one (usually a [`RedisStore`](super::RedisStore)) that
/// takes a key's units `batch` at a time and hands them out in this process: of every
/// `batch + 1` requests of a busy key, one makes a round trip and the rest are decided
/// here.
///
/// When a request finds no lease for its key (and the quotas it is checked against), the
/// store asks the shared one for the request's cost plus `batch` units in one check. If
/// the quotas have room for them all, the request is admitted and the `batch` units become
/// this instance's lease, good for `ttl` from the answer. While that ask is in flight, the
/// key's other requests are checked alone (one ask of a key at a time, so concurrent
/// requests never take two batches). If the quotas have no room for a batch, the request
/// is checked alone (its second round trip) and so is every request of the key for `ttl`:
/// near its limit a key costs one round trip a request, as without leasing. A request
/// dearer than a batch is always checked alone; one dearer than what its lease has left
/// uses those units first and asks for the rest with a new batch.
///
/// **The bound.** A leased unit is taken from the shared quota when it is leased, so the
/// instances together never admit more than the quota grants; what a lease changes is
/// *when*. An instance may admit its leased units up to `ttl` after taking them, so in any
/// window a quota may admit more than it would grant within that window alone by the units
/// leased before the window and used in it: at most `batch` per instance for each set of
/// quotas a key is checked against (a key checked against quota A on some routes and
/// against A and B on others holds two leases, both drawing on A). Units left when a lease
/// expires are not given back: a key admits less, never more, by at most as much. Refusals
/// are decided by the shared store, so their `RateLimit` headers are exact; an admission
/// from a lease reports the quota as it stood when the lease was taken, less the units this
/// instance has handed out since. An ask that gets no answer (the shared store failed, or
/// the request was dropped) leaves the key checked alone for the longer of `ttl` and 1 s
/// at most.
///
/// Keys are held as seeded 64-bit hashes, in at most `max_keys` leases (default 100,000);
/// a full store decides new keys through the shared store. Clones share their leases.
///
/// ```
/// use std::time::Duration;
/// use tower_scale::rate_limit::{LeasingStore, MemoryStore, Quota, RateLimitLayer};
///
/// // In production the shared store is a `RedisStore`.
/// let store = LeasingStore::builder(MemoryStore::new())
///     .batch(20)
///     .ttl(Duration::from_millis(500))
///     .build()?;
/// let layer = RateLimitLayer::builder()
///     .store(store)
///     .quota("1000/1m".parse::<Quota>()?)
///     .build()?;
/// # let _ = layer;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct LeasingStore<S> {
    inner: S,
    leases: Arc<Leases>,
}

struct Leases {
    map: KeyedMap<Lease>,
    batch: u64,
    ttl_us: u64,
    clock: Clock,
    /// `tower_scale.rate_limit.lease_checks` by source (a lease, the shared store),
    /// registered on first use.
    checks: [OnceLock<Counter>; 2],
}

/// What this process holds for one key (and quota set), each good until `until_us`
/// (this process's clock, µs).
#[derive(Clone, Copy)]
struct Lease {
    until_us: u64,
    state: LeaseState,
}

#[derive(Clone, Copy)]
enum LeaseState {
    /// A batch is being asked for: the key's other requests are checked alone meanwhile,
    /// so concurrent requests never take two batches (and lose one).
    Asking,
    /// Units to hand out. `taken_us` is when they were taken, and `resets` each quota's
    /// `reset_us` then (the bucket with every leased unit taken), in the order the quotas
    /// were given.
    Units {
        left: u64,
        taken_us: u64,
        resets: [u64; MAX_QUOTAS],
    },
    /// The shared store had no room for a batch: the key's requests are checked alone.
    Refused,
}

impl<S: fmt::Debug> fmt::Debug for LeasingStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeasingStore")
            .field("inner", &self.inner)
            .field("batch", &self.leases.batch)
            .field("ttl_us", &self.leases.ttl_us)
            .finish_non_exhaustive()
    }
}

/// Builds a [`LeasingStore`].
#[must_use]
#[derive(Debug)]
pub struct LeasingStoreBuilder<S> {
    inner: S,
    batch: u64,
    ttl: Duration,
    max_keys: usize,
    clock: Option<Clock>,
}

impl<S> LeasingStore<S> {
    /// A builder over the shared store `inner`, with the defaults: batches of 10 units,
    /// leases good for 1 s, at most 100,000 keys.
    pub fn builder(inner: S) -> LeasingStoreBuilder<S> {
        LeasingStoreBuilder {
            inner,
            batch: 10,
            ttl: Duration::from_secs(1),
            max_keys: 100_000,
            clock: None,
        }
    }

    /// How many leases are held now (live or noting a refusal), for tests and metrics.
    pub fn len(&self) -> usize {
        self.leases.map.len()
    }

    /// True if no lease is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<S> LeasingStoreBuilder<S> {
    /// Units taken per lease, beyond the request that takes it (default 10; 1..=10,000).
    /// The larger, the fewer round trips, and the more a quota can run ahead of its rate
    /// in a window (see [`LeasingStore`]).
    pub fn batch(mut self, units: u64) -> Self {
        self.batch = units;
        self
    }

    /// How long a lease's units may be handed out, from the shared store's answer
    /// (default 1 s; 10 ms..=1 h), and how long a key whose batch was refused is decided
    /// without one.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The most keys (per quota set) holding a lease at once (default 100,000; at least 64).
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// The clock leases are timed by (default: the system's; tests pass Tokio's).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    ///
    /// A batch of 0 or over 10,000, a ttl under 10 ms or over an hour, fewer than 64 keys.
    pub fn build(self) -> Result<LeasingStore<S>, ConfigError> {
        if !(1..=10_000).contains(&self.batch) {
            return Err(ConfigError::new("batch", "must be 1..=10,000 units"));
        }
        if self.ttl < Duration::from_millis(10) || self.ttl > Duration::from_secs(3600) {
            return Err(ConfigError::new("ttl", "must be 10 ms..=1 h"));
        }
        let map = KeyedMap::new(SHARDS, self.max_keys)
            .ok_or_else(|| ConfigError::new("max_keys", "must be at least 64"))?;
        Ok(LeasingStore {
            inner: self.inner,
            leases: Arc::new(Leases {
                map,
                batch: self.batch,
                ttl_us: u64::try_from(self.ttl.as_micros()).unwrap_or(u64::MAX),
                clock: self.clock.unwrap_or_default(),
                checks: Default::default(),
            }),
        })
    }
}

/// What a request found in this process.
enum Found {
    /// Admitted from the lease: the decision.
    Leased(Decision),
    /// Ask the shared store for the request and a batch. `carried`: units of a spent lease
    /// (fewer than the request's cost), which the request uses first.
    Ask { carried: u64 },
    /// A batch is being asked for, was refused lately, or the store is full: check the
    /// request alone.
    Alone,
}

/// How long an ask of a key keeps the key's other requests away from the shared store's
/// batches at least: an answer slower than the lease's ttl must not let a second ask start.
const ASK_GUARD_US: u64 = 1_000_000;

impl Leases {
    fn slot<K: Hash>(&self, key: &K, quotas: &[&QuotaSpec]) -> u64 {
        let mut salts = [0u64; MAX_QUOTAS];
        for (s, q) in salts.iter_mut().zip(quotas) {
            *s = q.salt();
        }
        self.map.hash((key, &salts[..quotas.len().min(MAX_QUOTAS)]))
    }

    /// Decides the request from the key's lease if it can; else says how to decide it,
    /// noting an ask in flight (so the key's other requests go alone meanwhile).
    fn find(&self, slot: u64, quotas: &[&QuotaSpec], cost: u64, now: u64) -> Found {
        let mut shard = self.map.lock(slot);
        let live = shard.map.get_mut(&slot).filter(|l| now < l.until_us);
        let carried = match live.map(|l| &mut l.state) {
            Some(LeaseState::Units {
                left,
                taken_us,
                resets,
            }) if *left >= cost => {
                *left -= cost;
                let (left, taken_us) = (*left, *taken_us);
                return Found::Leased(decision(
                    quotas.len(),
                    quotas.iter().zip(*resets).map(|(q, reset)| {
                        // The bucket as this instance sees it: as it stood when the lease
                        // was taken, less the units not handed out yet, drained since.
                        let level = reset.saturating_sub(left.saturating_mul(q.gcra().emission_us));
                        Verdict {
                            allowed: true,
                            retry_after_us: 0,
                            reset_us: level.saturating_sub(now.saturating_sub(taken_us)),
                        }
                    }),
                ));
            }
            Some(LeaseState::Asking | LeaseState::Refused) => return Found::Alone,
            // Spent: what is left is the request's to use first.
            Some(LeaseState::Units { left, .. }) => *left,
            None => 0,
        };
        if shard.map.len() >= self.map.max_per_shard() && !shard.map.contains_key(&slot) {
            // Full: make room from the leases past their time, if any.
            shard.map.retain(|_, l| now < l.until_us);
            if shard.map.len() >= self.map.max_per_shard() {
                return Found::Alone;
            }
        }
        shard.map.insert(
            slot,
            Lease {
                until_us: now.saturating_add(self.ttl_us.max(ASK_GUARD_US)),
                state: LeaseState::Asking,
            },
        );
        Found::Ask { carried }
    }

    /// The shared store admitted the request and a batch: the batch is this instance's,
    /// for `ttl` from the answer.
    fn lease(&self, slot: u64, d: &Decision) {
        let now = self.clock.now_us();
        let mut resets = [0u64; MAX_QUOTAS];
        for (r, v) in resets.iter_mut().zip(d.verdicts()) {
            *r = v.reset_us;
        }
        self.settle(
            slot,
            now,
            LeaseState::Units {
                left: self.batch,
                taken_us: now,
                resets,
            },
        );
    }

    /// The shared store had no room for a batch: decide this key alone for `ttl`.
    fn refused(&self, slot: u64) {
        self.settle(slot, self.clock.now_us(), LeaseState::Refused);
    }

    /// Replaces the key's `Asking` note with what the ask gave. Only one ask of a key is
    /// in flight at a time, so this overwrites no units.
    fn settle(&self, slot: u64, now: u64, state: LeaseState) {
        let mut shard = self.map.lock(slot);
        if shard.map.len() < self.map.max_per_shard() || shard.map.contains_key(&slot) {
            shard.map.insert(
                slot,
                Lease {
                    until_us: now.saturating_add(self.ttl_us),
                    state,
                },
            );
        }
    }

    /// The ask failed (the shared store did not answer): the note goes, and the key's next
    /// request asks again.
    fn abandon(&self, slot: u64) {
        let mut shard = self.map.lock(slot);
        if shard
            .map
            .get(&slot)
            .is_some_and(|l| matches!(l.state, LeaseState::Asking))
        {
            shard.map.remove(&slot);
        }
    }
}

/// A decision of per-quota verdicts, with no allocation for the usual single quota.
fn decision(quotas: usize, mut verdicts: impl Iterator<Item = Verdict>) -> Decision {
    if quotas == 1
        && let Some(v) = verdicts.next()
    {
        return Decision::one(v);
    }
    Decision::new(verdicts)
}

/// The decision for the request alone, out of one that also took a batch: each quota as
/// it would stand without the batch.
fn without_batch(d: &Decision, quotas: &[&QuotaSpec], batch: u64) -> Decision {
    decision(
        quotas.len(),
        d.verdicts().iter().zip(quotas).map(|(v, q)| Verdict {
            reset_us: v
                .reset_us
                .saturating_sub(batch.saturating_mul(q.gcra().emission_us)),
            ..*v
        }),
    )
}

impl<K, S> Store<K> for LeasingStore<S>
where
    K: Hash + Clone + Send + Sync + 'static,
    S: Store<K>,
{
    fn check(&self, key: &K, quotas: &[&QuotaSpec], cost: u64) -> StoreFuture {
        let l = &self.leases;
        let want = cost.saturating_add(l.batch);
        if cost > l.batch || quotas.iter().any(|q| want > q.gcra().burst) {
            // A request dearer than a batch, or a batch no quota could ever hold: alone.
            l.count(false);
            return self.inner.check(key, quotas, cost);
        }
        let now = l.clock.now_us();
        let slot = l.slot(key, quotas);
        let carried = match l.find(slot, quotas, cost, now) {
            Found::Leased(d) => {
                l.count(true);
                return StoreFuture::Ready(Ok(d));
            }
            Found::Alone => {
                l.count(false);
                return self.inner.check(key, quotas, cost);
            }
            Found::Ask { carried } => carried,
        };
        // The request's units not carried, and a batch.
        let (own, batch) = (cost - carried, l.batch);
        l.count(false);
        let leases = Arc::clone(&self.leases);
        match self.inner.check(key, quotas, own + batch) {
            StoreFuture::Ready(Ok(d)) if d.allowed() => {
                leases.lease(slot, &d);
                StoreFuture::Ready(Ok(without_batch(&d, quotas, batch)))
            }
            StoreFuture::Ready(Ok(_)) => {
                leases.refused(slot);
                l.count(false);
                self.inner.check(key, quotas, own)
            }
            StoreFuture::Ready(Err(e)) => {
                leases.abandon(slot);
                StoreFuture::Ready(Err(e))
            }
            StoreFuture::Pending(asked) => {
                let (inner, key) = (self.inner.clone(), key.clone());
                let specs: Vec<QuotaSpec> = quotas.iter().map(|q| (*q).clone()).collect();
                StoreFuture::Pending(Box::pin(async move {
                    let d = match asked.await {
                        Ok(d) => d,
                        Err(e) => {
                            leases.abandon(slot);
                            return Err(e);
                        }
                    };
                    let refs: Vec<&QuotaSpec> = specs.iter().collect();
                    if d.allowed() {
                        leases.lease(slot, &d);
                        return Ok(without_batch(&d, &refs, batch));
                    }
                    leases.refused(slot);
                    leases.count(false);
                    match inner.check(&key, &refs, own) {
                        StoreFuture::Ready(r) => r,
                        StoreFuture::Pending(f) => f.await,
                    }
                }))
            }
        }
    }
}

impl Leases {
    /// Counts a check decided from a lease, or sent to the shared store.
    fn count(&self, from_lease: bool) {
        let (i, source) = if from_lease {
            (0, "lease")
        } else {
            (1, "store")
        };
        self.checks[i]
            .get_or_init(
                || ::metrics::counter!("tower_scale.rate_limit.lease_checks", "source" => source),
            )
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::rate_limit::{MemoryStore, Quota};

    /// A shared store whose calls are counted: the round trips a real one would make.
    #[derive(Clone)]
    struct Counted {
        inner: MemoryStore,
        calls: Arc<AtomicUsize>,
        /// The units asked for, admitted or not.
        units: Arc<AtomicUsize>,
    }

    impl<K: Hash + fmt::Display> Store<K> for Counted {
        fn check(&self, key: &K, quotas: &[&QuotaSpec], cost: u64) -> StoreFuture {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.units
                .fetch_add(usize::try_from(cost).unwrap(), Ordering::Relaxed);
            self.inner.check(key, quotas, cost)
        }
    }

    fn shared() -> Counted {
        Counted {
            inner: MemoryStore::builder()
                .clock(Clock::tokio())
                .build()
                .unwrap(),
            calls: Arc::default(),
            units: Arc::default(),
        }
    }

    fn leasing(inner: Counted, batch: u64) -> LeasingStore<Counted> {
        LeasingStore::builder(inner)
            .batch(batch)
            .ttl(Duration::from_secs(1))
            .clock(Clock::tokio())
            .build()
            .unwrap()
    }

    fn spec(q: &str) -> QuotaSpec {
        QuotaSpec::new(0, &q.parse::<Quota>().unwrap())
    }

    fn decide(s: &LeasingStore<Counted>, key: &str, q: &QuotaSpec) -> Decision {
        match s.check(&key.to_owned(), &[q], 1) {
            StoreFuture::Ready(r) => r.unwrap(),
            StoreFuture::Pending(_) => unreachable!("the memory store answers at once"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_key_makes_one_round_trip_per_batch_and_never_passes_its_quota() {
        let inner = shared();
        let calls = Arc::clone(&inner.calls);
        let s = leasing(inner, 9);
        let q = spec("100/1m");
        let admitted = (0..150).filter(|_| decide(&s, "a", &q).allowed()).count();
        assert_eq!(admitted, 100);
        // 10 leases of 1 + 9 units; then each refusal: one batch asked and refused, then
        // the request alone, and no lease asked again within the ttl.
        assert_eq!(calls.load(Ordering::Relaxed), 10 + 2 + 49);
    }

    #[tokio::test(start_paused = true)]
    async fn instances_together_never_admit_more_than_the_quota_grants() {
        let inner = shared();
        let (a, b) = (leasing(inner.clone(), 10), leasing(inner, 10));
        let q = spec("100/1m");
        let mut admitted = 0;
        for i in 0..300 {
            let s = if i % 3 == 0 { &a } else { &b };
            admitted += usize::from(decide(s, "k", &q).allowed());
        }
        // Every leased unit was taken from the shared quota; what a lease still held when
        // the quota ran out is lost to it, at most one batch an instance.
        assert!((100 - 2 * 10..=100).contains(&admitted), "{admitted}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_expires_and_its_units_are_not_handed_out_after() {
        let inner = shared();
        let calls = Arc::clone(&inner.calls);
        let s = leasing(inner, 10);
        let q = spec("1000/1s");
        assert!(decide(&s, "a", &q).allowed());
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(decide(&s, "a", &q).allowed());
        assert_eq!(calls.load(Ordering::Relaxed), 1, "from the lease");
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(decide(&s, "a", &q).allowed());
        assert_eq!(calls.load(Ordering::Relaxed), 2, "a new lease");
    }

    #[tokio::test(start_paused = true)]
    async fn admissions_from_a_lease_count_down_the_reported_remaining() {
        let s = leasing(shared(), 4);
        let q = spec("10/1m");
        let remaining: Vec<u64> = (0..5)
            .map(|_| decide(&s, "a", &q).verdicts()[0].remaining(&q.gcra()))
            .collect();
        // As the shared store alone would report them: 10 units, one taken per request.
        assert_eq!(remaining, [9, 8, 7, 6, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_and_quota_sets_lease_apart() {
        let inner = shared();
        let calls = Arc::clone(&inner.calls);
        let s = leasing(inner, 10);
        let (q, r) = (
            spec("100/1m"),
            QuotaSpec::new(1, &"50/1m".parse::<Quota>().unwrap().named("r").unwrap()),
        );
        for key in ["a", "b"] {
            assert!(decide(&s, key, &q).allowed());
        }
        let both = match s.check(&"a".to_owned(), &[&q, &r], 1) {
            StoreFuture::Ready(d) => d.unwrap(),
            StoreFuture::Pending(_) => unreachable!(),
        };
        assert!(both.allowed());
        assert_eq!(
            calls.load(Ordering::Relaxed),
            3,
            "one lease per key and per quota set"
        );
        assert_eq!(s.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_dearer_than_its_lease_uses_what_is_left_and_one_dearer_than_a_batch_goes_alone()
     {
        let inner = shared();
        let calls = Arc::clone(&inner.calls);
        let s = leasing(inner, 10);
        let q = spec("100/1m");
        let check = |cost| match s.check(&"a".to_owned(), &[&q], cost) {
            StoreFuture::Ready(r) => r.unwrap().allowed(),
            StoreFuture::Pending(_) => unreachable!(),
        };
        // Dearer than a batch: alone, every time, and nothing is lost.
        assert!((0..5).all(|_| check(11)));
        assert_eq!(calls.load(Ordering::Relaxed), 5);
        // 45 units left. Costs of 3: a lease of 10 with the first, 3 + 3 + 3 from it, then
        // its last unit carried into the next ask (3 - 1 + 10 units); once a batch no
        // longer fits, alone. Nothing is lost: all 45 units go, three at a time.
        let admitted = (0..20).filter(|_| check(3)).count();
        assert_eq!(admitted, 15);
    }

    /// A shared store that answers after `delay` (a round trip), or fails.
    #[derive(Clone)]
    struct Slow {
        inner: Counted,
        delay: Duration,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl<K: Hash + fmt::Display> Store<K> for Slow {
        fn check(&self, key: &K, quotas: &[&QuotaSpec], cost: u64) -> StoreFuture {
            let StoreFuture::Ready(answer) = self.inner.check(key, quotas, cost) else {
                unreachable!()
            };
            let (delay, fail) = (self.delay, self.fail.load(Ordering::Relaxed));
            StoreFuture::Pending(Box::pin(async move {
                tokio::time::sleep(delay).await;
                if fail {
                    return Err(crate::StoreUnavailable::backend(std::io::Error::other(
                        "down",
                    )));
                }
                answer
            }))
        }
    }

    async fn answer(f: StoreFuture) -> Result<Decision, crate::StoreUnavailable> {
        match f {
            StoreFuture::Ready(r) => r,
            StoreFuture::Pending(f) => f.await,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_ask_at_a_time_a_lease_timed_from_its_answer_and_a_failed_ask_forgotten() {
        let inner = shared();
        let (calls, units) = (Arc::clone(&inner.calls), Arc::clone(&inner.units));
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let slow = Slow {
            inner,
            delay: Duration::from_millis(20),
            fail: Arc::clone(&fail),
        };
        let s = LeasingStore::builder(slow)
            .batch(10)
            .ttl(Duration::from_millis(10))
            .clock(Clock::tokio())
            .build()
            .unwrap();
        let q = spec("100/1m");
        let key = "a".to_owned();
        // Five at once: one asks for a batch, four are checked alone meanwhile.
        let at_once: Vec<_> = (0..5)
            .map(|_| tokio::spawn(answer(s.check(&key, &[&q], 1))))
            .collect();
        for f in at_once {
            assert!(f.await.unwrap().unwrap().allowed());
        }
        assert_eq!(calls.load(Ordering::Relaxed), 5);
        assert_eq!(
            units.load(Ordering::Relaxed),
            11 + 4,
            "one batch taken, not five"
        );
        // The answer came 20 ms after the ask, past a 10 ms ttl counted from the ask: the
        // lease is good for 10 ms from the answer.
        tokio::time::advance(Duration::from_millis(5)).await;
        assert!(answer(s.check(&key, &[&q], 1)).await.unwrap().allowed());
        assert_eq!(calls.load(Ordering::Relaxed), 5, "from the lease");
        // An ask that fails is forgotten: the next request asks again.
        tokio::time::advance(Duration::from_millis(10)).await;
        fail.store(true, Ordering::Relaxed);
        assert!(answer(s.check(&key, &[&q], 1)).await.is_err());
        fail.store(false, Ordering::Relaxed);
        let before = calls.load(Ordering::Relaxed);
        assert!(answer(s.check(&key, &[&q], 1)).await.unwrap().allowed());
        assert!(answer(s.check(&key, &[&q], 1)).await.unwrap().allowed());
        assert_eq!(
            calls.load(Ordering::Relaxed),
            before + 1,
            "a new lease, then a decision from it"
        );
    }

    #[test]
    fn bad_settings_are_errors() {
        assert!(
            LeasingStore::builder(MemoryStore::new())
                .batch(0)
                .build()
                .is_err()
        );
        assert!(
            LeasingStore::builder(MemoryStore::new())
                .batch(10_001)
                .build()
                .is_err()
        );
        assert!(
            LeasingStore::builder(MemoryStore::new())
                .ttl(Duration::ZERO)
                .build()
                .is_err()
        );
        assert!(
            LeasingStore::builder(MemoryStore::new())
                .ttl(Duration::from_secs(7200))
                .build()
                .is_err()
        );
        assert!(
            LeasingStore::builder(MemoryStore::new())
                .max_keys(10)
                .build()
                .is_err()
        );
        assert!(LeasingStore::builder(MemoryStore::new()).build().is_ok());
    }
}
