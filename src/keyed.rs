//! [`KeyedMap`]: per-key state in this process, bounded and sharded. The one map under
//! the in-process rate limiter (GCRA state per client) and the per-key circuit breakers
//! (a breaker per upstream host); each decides what to drop when a shard is full.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash};
use std::sync::{Mutex, MutexGuard};

use foldhash::quality::RandomState;

use crate::hash::PreHashed;

/// Keys are held as 64-bit hashes, seeded per map (foldhash, a random seed the map never
/// shows), so every key costs the same whatever its type, and a client cannot aim for a
/// collision. Shards are locked one at a time and padded to a cache line each, so threads
/// on different shards do not contend, not even through false sharing.
pub(crate) struct KeyedMap<V> {
    shards: Box<[Padded<Mutex<Shard<V>>>]>,
    hasher: RandomState,
    max_per_shard: usize,
}

/// One shard: its map from key hash to state, and a counter its owner paces sweeps with.
pub(crate) struct Shard<V> {
    pub(crate) map: HashMap<u64, V, BuildHasherDefault<PreHashed>>,
    pub(crate) ticks: u32,
}

#[repr(align(64))]
struct Padded<T>(T);

impl<V> fmt::Debug for KeyedMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedMap")
            .field("shards", &self.shards.len())
            .field("max_per_shard", &self.max_per_shard)
            .finish_non_exhaustive()
    }
}

impl<V> KeyedMap<V> {
    /// `shards` shards (a power of two) holding at most `max_keys` keys in all, split
    /// evenly; `None` if `max_keys` is below one per shard.
    pub(crate) fn new(shards: usize, max_keys: usize) -> Option<Self> {
        debug_assert!(shards.is_power_of_two());
        if max_keys < shards {
            return None;
        }
        Some(Self {
            shards: (0..shards)
                .map(|_| {
                    Padded(Mutex::new(Shard {
                        map: HashMap::default(),
                        ticks: 0,
                    }))
                })
                .collect(),
            hasher: RandomState::default(),
            max_per_shard: max_keys / shards,
        })
    }

    /// The key's hash, under this map's seed.
    #[inline]
    pub(crate) fn hash(&self, key: impl Hash) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The shard of a key hash, locked. A panic under the lock leaves plain data behind,
    /// so a poisoned lock is still usable.
    #[inline]
    pub(crate) fn lock(&self, hash: u64) -> MutexGuard<'_, Shard<V>> {
        // High bits pick the shard; the shard's own map uses the low bits for buckets.
        let i = ((hash >> 32) as usize) & (self.shards.len() - 1);
        self.shards[i].0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many keys one shard may hold.
    #[inline]
    pub(crate) fn max_per_shard(&self) -> usize {
        self.max_per_shard
    }

    /// How many keys are held now, in all shards.
    #[cfg(any(feature = "rate-limit", test))]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.0.lock().unwrap_or_else(|p| p.into_inner()).map.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_over_every_shard_and_the_cap_is_split() {
        let m: KeyedMap<u32> = KeyedMap::new(16, 1600).unwrap();
        assert_eq!(m.max_per_shard(), 100);
        assert!(KeyedMap::<u32>::new(16, 15).is_none());
        for k in 0..1600u32 {
            let h = m.hash(k);
            m.lock(h).map.insert(h, k);
        }
        assert_eq!(m.len(), 1600);
        let per_shard: Vec<usize> = m
            .shards
            .iter()
            .map(|s| s.0.lock().unwrap().map.len())
            .collect();
        assert!(
            per_shard.iter().all(|&n| (50..=150).contains(&n)),
            "{per_shard:?}"
        );
    }
}
