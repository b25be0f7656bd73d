//! The state every clone of a layer shares: the settings and the breakers, one for
//! unkeyed calls and one per key, bounded.

use std::hash::Hash;
use std::sync::Arc;

use super::core::{Breaker, Config, State, Transition};
use crate::clock::Clock;
use crate::keyed::KeyedMap;

pub(super) const SHARDS: usize = 16;

/// What every clone of the layer and its services share.
pub(crate) struct Shared<K, C> {
    pub(crate) name: Arc<str>,
    pub(crate) config: Config,
    pub(crate) key: K,
    pub(crate) classifier: C,
    pub(crate) clock: Clock,
    /// The breaker of unkeyed requests.
    pub(crate) single: Arc<Breaker>,
    /// The keyed breakers; a shard's `ticks` are the overflowing calls left before its
    /// next eviction sweep, so a full shard whose breakers all hold something is not
    /// rescanned on every call.
    pub(super) breakers: KeyedMap<Arc<Breaker>>,
    pub(super) refused: std::sync::OnceLock<::metrics::Counter>,
}

/// A full shard that found nothing to evict waits this many overflowing calls to sweep again.
const SWEEP_BACKOFF: u32 = 256;

impl<K, C> Shared<K, C> {
    /// The breaker for a key hash, made on first use. A full shard drops breakers that hold
    /// nothing against their host (closed, no failure or slow call in the live window); if
    /// none can go, the key shares the layer's breaker, so memory stays bounded whatever
    /// the keys.
    pub(crate) fn breaker(&self, hash: u64) -> Arc<Breaker> {
        self.breaker_or_room(hash)
            .unwrap_or_else(|| Arc::clone(&self.single))
    }

    /// As [`breaker`](Self::breaker), but `None` rather than the shared breaker when there
    /// is no room.
    pub(super) fn breaker_or_room(&self, hash: u64) -> Option<Arc<Breaker>> {
        let mut shard = self.breakers.lock(hash);
        if let Some(b) = shard.map.get(&hash) {
            return Some(Arc::clone(b));
        }
        let max = self.breakers.max_per_shard();
        if shard.map.len() >= max {
            if shard.ticks > 0 {
                shard.ticks -= 1;
                return None;
            }
            let now = self.clock.now_us();
            shard.map.retain(|_, b| !b.is_idle(now));
            if shard.map.len() >= max {
                shard.ticks = SWEEP_BACKOFF;
                return None;
            }
        }
        let b = Arc::new(Breaker::new(&self.config));
        shard.map.insert(hash, Arc::clone(&b));
        Some(b)
    }

    /// The breaker for a key hash if it has one; never makes one.
    pub(super) fn find(&self, hash: u64) -> Option<Arc<Breaker>> {
        self.breakers.lock(hash).map.get(&hash).cloned()
    }

    /// Counts a refusal (the handle is registered on first use, with the recorder of the
    /// time).
    pub(crate) fn count_refusal(&self) {
        self.refused
            .get_or_init(|| {
                ::metrics::counter!("tower_scale.circuit_breaker.refused", "breaker" => self.name.to_string())
            })
            .increment(1);
    }

    pub(crate) fn hash(&self, key: impl Hash) -> u64 {
        self.breakers.hash(key)
    }

    pub(crate) fn transitioned(&self, t: Transition) {
        ::metrics::counter!(
            "tower_scale.circuit_breaker.transitions",
            "breaker" => self.name.to_string(),
            "from" => t.from.as_str(),
            "to" => t.to.as_str()
        )
        .increment(1);
        let tripped = ::metrics::gauge!("tower_scale.circuit_breaker.tripped", "breaker" => self.name.to_string());
        match (t.from, t.to) {
            (State::Closed, State::Closed) => {}
            (State::Closed, _) => tripped.increment(1.0),
            (_, State::Closed) => tripped.decrement(1.0),
            _ => {}
        }
        match t.to {
            State::Open => {
                tracing::warn!(breaker = %self.name, from = t.from.as_str(), "circuit breaker opened")
            }
            State::HalfOpen => {
                tracing::info!(breaker = %self.name, "circuit breaker half-open: probing")
            }
            State::Closed => {
                tracing::info!(breaker = %self.name, from = t.from.as_str(), "circuit breaker closed")
            }
        }
    }
}
