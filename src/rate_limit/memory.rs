//! [`MemoryStore`]: rate-limit state in this process.

use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::store::{Decision, MAX_QUOTAS, QuotaSpec, Store, StoreFuture};
use crate::ConfigError;
use crate::clock::Clock;
use crate::keyed::KeyedMap;

/// A shard of the store: (key, quota) hash to the GCRA theoretical arrival time; `ticks`
/// counts checks since the last sweep.
type Shard = crate::keyed::Shard<u64>;

const SHARDS: usize = 64;
/// Every this many checks a shard drops the keys whose buckets are full again.
const SWEEP_EVERY: u32 = 4096;
/// A full shard sweeps at most this often (in checks).
const FULL_SWEEP_EVERY: u32 = 256;

/// Rate-limit state in this process: a sharded map from key to each quota's GCRA
/// theoretical arrival time.
///
/// Memory stays bounded: a key whose bucket has refilled carries no information (its state
/// equals having none), so such keys are dropped as the map is used, and memory follows
/// the number of keys active within one period. A hard cap (`max_keys`, default 1,000,000)
/// bounds it regardless. It counts (key, quota) states, and is kept per shard (`max_keys /
/// 64` each), so with uneven hashing a shard fills somewhat before `max_keys` in total
/// (about 0.3% before, at a million). In a full shard, *new* keys share one overflow
/// bucket per quota: they are still limited, together, while the keys already held keep
/// their own state; a warning is logged once and `tower_scale.rate_limit.store_full`
/// counts each such decision.
///
/// Keys are stored as 64-bit seeded hashes (foldhash, with a random seed per store), not as
/// themselves: 16 bytes per key and quota whatever the key type. Two keys share state only
/// if their hashes collide; the seed is never exposed, so a client cannot aim for a
/// collision, and an accidental one among a million keys has a chance of about 1 in 30 million.
///
/// Clones share state. Each instance of a service has its own: use
/// [`RedisStore`](super::RedisStore) to share quotas between instances.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tats: KeyedMap<u64>,
    clock: Clock,
    warned_full: AtomicBool,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store remembering at most 1,000,000 keys.
    pub fn new() -> Self {
        Self::with_max_keys(1_000_000).expect("the default is valid")
    }

    /// A store holding at most `max_keys` (key, quota) states.
    ///
    /// # Errors
    ///
    /// A `max_keys` below 64 (one per shard).
    pub fn with_max_keys(max_keys: usize) -> Result<Self, ConfigError> {
        Self::builder().max_keys(max_keys).build()
    }

    /// A builder, to set the key cap and the clock.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            max_keys: 1_000_000,
            clock: None,
        }
    }

    /// How many (key, quota) states are held now.
    pub fn len(&self) -> usize {
        self.inner.tats.len()
    }

    /// True if no state is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key's hash, the time, and its shard, locked, swept when due.
    #[inline(always)]
    fn enter<K: Hash>(&self, key: &K) -> (u64, u64, std::sync::MutexGuard<'_, Shard>) {
        let h = self.inner.tats.hash(key);
        let now = self.inner.clock.now_us();
        let mut shard = self.inner.tats.lock(h);
        shard.ticks += 1;
        if shard.ticks >= SWEEP_EVERY {
            sweep(&mut shard, now);
        }
        (h, now, shard)
    }

    /// Admits a request against one quota if it fits, taking its units (what
    /// [`Store::try_admit`] does); `false`, with nothing taken, if it does not.
    pub fn admit<K: Hash>(&self, key: &K, quota: &QuotaSpec, cost: u64) -> bool {
        let (h, now, mut shard) = self.enter(key);
        let slot = slot(h, quota);
        if shard.map.len() >= self.inner.tats.max_per_shard() && !shard.map.contains_key(&slot) {
            // A full shard and a new key: `check` decides (and counts) that case.
            return false;
        }
        let gcra = quota.gcra();
        match shard.map.get_mut(&slot) {
            Some(tat) => match gcra.admit(Some(*tat), now, cost) {
                Some(new_tat) => {
                    *tat = new_tat;
                    true
                }
                None => false,
            },
            None => match gcra.admit(None, now, cost) {
                Some(new_tat) => {
                    shard.map.insert(slot, new_tat);
                    true
                }
                None => false,
            },
        }
    }

    /// Decides synchronously (what [`Store::check`] returns as ready).
    pub fn decide<K: Hash>(&self, key: &K, quotas: &[&QuotaSpec], cost: u64) -> Decision {
        let (h, now, mut shard) = self.enter(key);
        if let [q] = quotas {
            return decide_one(
                &mut shard,
                slot(h, q),
                q,
                now,
                cost,
                self.inner.tats.max_per_shard(),
                &self.inner.warned_full,
            );
        }
        let n = quotas.len().min(MAX_QUOTAS);
        let mut slots = [0u64; MAX_QUOTAS];
        let mut tats = [None; MAX_QUOTAS];
        let mut results = Vec::with_capacity(n);
        for (i, q) in quotas.iter().take(n).enumerate() {
            slots[i] = resolve(
                &mut shard,
                slot(h, q),
                q,
                now,
                self.inner.tats.max_per_shard(),
                &self.inner.warned_full,
            );
            tats[i] = shard.map.get(&slots[i]).copied();
            results.push(q.gcra().check(tats[i], now, cost));
        }
        if results.iter().all(|(v, _)| v.allowed) {
            for (i, (_, t)) in results.iter().enumerate() {
                if let Some(t) = t {
                    shard.map.insert(slots[i], *t);
                }
            }
            Decision::new(results.into_iter().map(|(v, _)| v))
        } else {
            // Nothing was taken: report the quotas that would have admitted it as they stand.
            Decision::new(
                results
                    .into_iter()
                    .zip(quotas)
                    .enumerate()
                    .map(|(i, ((v, _), q))| {
                        if v.allowed {
                            q.gcra().state(tats[i], now)
                        } else {
                            v
                        }
                    }),
            )
        }
    }
}

/// Each quota's slot for a key: the key's hash mixed with the quota's name, so quotas
/// with different names never share state, and layers sharing a store share a quota's
/// state exactly when they name it alike (as in Redis).
fn slot(h: u64, q: &QuotaSpec) -> u64 {
    h ^ q.salt()
}

/// Where the overflow slots live (mixed with each quota's salt).
const OVERFLOW: u64 = 0xA5A5_5A5A_C3C3_3C3C;

/// The slot a key's quota lives in: its own, unless the shard is full and the key is
/// new. Then it is the shard's overflow slot for that quota, shared by every key that
/// did not fit, so those keys are still limited (together) rather than not at all.
#[inline]
fn resolve(
    shard: &mut Shard,
    slot: u64,
    q: &QuotaSpec,
    now: u64,
    max: usize,
    warned: &AtomicBool,
) -> u64 {
    if shard.map.len() < max || shard.map.contains_key(&slot) {
        return slot;
    }
    resolve_full(shard, slot, q, now, max, warned)
}

#[cold]
#[inline(never)]
fn resolve_full(
    shard: &mut Shard,
    slot: u64,
    q: &QuotaSpec,
    now: u64,
    max: usize,
    warned: &AtomicBool,
) -> u64 {
    // Full: sweep, but not on every request, or a flood of new keys would make each of
    // them scan the shard.
    if shard.ticks >= FULL_SWEEP_EVERY {
        sweep(shard, now);
        if shard.map.len() < max {
            return slot;
        }
    }
    if !warned.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            max_keys = max * SHARDS,
            "rate limit: in-process store is full; new keys share an overflow bucket until others expire"
        );
    }
    ::metrics::counter!("tower_scale.rate_limit.store_full").increment(1);
    OVERFLOW ^ q.salt()
}

/// One quota: a single probe of the map.
fn decide_one(
    shard: &mut Shard,
    slot: u64,
    q: &QuotaSpec,
    now: u64,
    cost: u64,
    max: usize,
    warned: &AtomicBool,
) -> Decision {
    let slot = resolve(shard, slot, q, now, max, warned);
    match shard.map.entry(slot) {
        Entry::Occupied(mut e) => {
            let (v, t) = q.gcra().check(Some(*e.get()), now, cost);
            if let Some(t) = t {
                *e.get_mut() = t;
            }
            Decision::one(v)
        }
        Entry::Vacant(e) => {
            let (v, t) = q.gcra().check(None, now, cost);
            if let Some(t) = t {
                e.insert(t);
            }
            Decision::one(v)
        }
    }
}

fn sweep(shard: &mut Shard, now: u64) {
    shard.map.retain(|_, tat| *tat > now);
    shard.ticks = 0;
}

/// Builds a [`MemoryStore`]; from [`MemoryStore::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryStoreBuilder {
    max_keys: usize,
    clock: Option<Clock>,
}

impl MemoryStoreBuilder {
    /// At most this many (key, quota) states (default 1,000,000; at least 64).
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Where the store reads the time (default [`Clock::system`]; [`Clock::tokio`] in tests
    /// that pause time).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The store.
    ///
    /// # Errors
    ///
    /// A `max_keys` below 64 (one per shard).
    pub fn build(self) -> Result<MemoryStore, ConfigError> {
        let tats = KeyedMap::new(SHARDS, self.max_keys)
            .ok_or_else(|| ConfigError::new("max_keys", format!("must be at least {SHARDS}")))?;
        Ok(MemoryStore {
            inner: Arc::new(Inner {
                tats,
                clock: self.clock.unwrap_or_default(),
                warned_full: AtomicBool::new(false),
            }),
        })
    }
}

impl<K: Hash> Store<K> for MemoryStore {
    fn check(&self, key: &K, quotas: &[&QuotaSpec], cost: u64) -> StoreFuture {
        StoreFuture::Ready(Ok(self.decide(key, quotas, cost)))
    }

    fn try_admit(&self, key: &K, quota: &QuotaSpec, cost: u64) -> bool {
        self.admit(key, quota, cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::Quota;

    #[tokio::test(start_paused = true)]
    async fn admit_takes_units_only_when_it_admits() {
        let store = MemoryStore::builder()
            .clock(Clock::tokio())
            .build()
            .unwrap();
        let q = QuotaSpec::new(0, &"3/1m".parse::<Quota>().unwrap());
        assert!(store.admit(&"k", &q, 2));
        assert!(!store.admit(&"k", &q, 2), "2 more do not fit in 1");
        assert!(
            store.admit(&"k", &q, 1),
            "the refusal took nothing: 1 still fits"
        );
        assert!(!store.admit(&"k", &q, 1));
        assert!(!store.admit(&"k", &q, 4), "more than the burst never fits");
        // The full check agrees: nothing left, 20 s to the next unit.
        let d = store.decide(&"k", &[&q], 1);
        assert!(!d.allowed());
        assert_eq!(d.verdicts()[0].retry_after_us, 20_000_000);
    }
}
