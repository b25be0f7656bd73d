//! [`CacheEngineBuilder`]: the engine's settings, validated, and its construction.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::engine::{CacheEngine, FENCE_SLOTS, FastMap, Inner};
use super::entry::{Entry, Lifetimes};
use crate::ConfigError;
use crate::clock::Clock;
#[cfg(feature = "redis")]
use crate::redis::RedisBackend;

impl CacheEngine {
    /// Starts a builder: 64 MiB of L1, a 60 s TTL with 10% jitter, no stale serving, no
    /// Redis tier.
    pub fn builder() -> CacheEngineBuilder {
        CacheEngineBuilder {
            max_bytes: 64 << 20,
            defaults: Lifetimes {
                ttl: Duration::from_secs(60),
                swr: Duration::ZERO,
                sie: Duration::ZERO,
            },
            jitter: 0.1,
            unsubscribed_ttl: Duration::from_secs(1),
            max_tags: 100_000,
            clock: None,
            #[cfg(feature = "redis")]
            redis: None,
            #[cfg(feature = "redis")]
            heartbeat: Duration::from_secs(1),
        }
    }
}

/// Builds a [`CacheEngine`].
#[derive(Debug, Clone)]
#[must_use]
pub struct CacheEngineBuilder {
    pub(super) max_bytes: u64,
    pub(super) defaults: Lifetimes,
    pub(super) jitter: f64,
    pub(super) unsubscribed_ttl: Duration,
    pub(super) max_tags: usize,
    pub(super) clock: Option<Clock>,
    #[cfg(feature = "redis")]
    pub(super) redis: Option<RedisBackend>,
    #[cfg(feature = "redis")]
    pub(super) heartbeat: Duration,
}

struct EntryExpiry;

impl moka::Expiry<String, Arc<Entry>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Entry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        // The engine's own clock decides freshness; moka only evicts what can never be
        // served again. Its clock does not follow paused test time, so give it the real
        // remaining span and a second's slack.
        let span = value.end().saturating_sub(value.stored_at);
        Some(Duration::from_micros(span) + Duration::from_secs(1))
    }

    fn expire_after_update(
        &self,
        key: &String,
        value: &Arc<Entry>,
        updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated_at)
    }
}

impl CacheEngineBuilder {
    /// L1 size bound in bytes of keys and values (default 64 MiB). moka evicts the least
    /// likely to be used again (TinyLFU) past it.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// How long a value is fresh unless the caller or the response says otherwise
    /// (default 60 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.defaults.ttl = ttl;
        self
    }

    /// Up to this fraction of each TTL is cut at random (default 0.1), so values stored
    /// together do not all expire, and reload, at once. 0 turns it off.
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }

    /// Stale-while-revalidate: for this long after a value goes stale it is still served,
    /// at once, while one background load refreshes it (default 0: off).
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.defaults.swr = window;
        self
    }

    /// Stale-if-error: for this long after a value goes stale it is served when the
    /// loader fails (default 0: off).
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.defaults.sie = window;
        self
    }

    /// The longest an L1 entry is trusted while invalidations from other instances may
    /// be missed (the Redis subscription is down or not yet up; default 1 s). Without
    /// Redis there are no other instances and this does not apply.
    pub fn unsubscribed_ttl(mut self, ttl: Duration) -> Self {
        self.unsubscribed_ttl = ttl;
        self
    }

    /// How many tags this process tracks versions of before it starts the table afresh
    /// (and drops its L1), default 100,000.
    pub fn max_tags(mut self, n: usize) -> Self {
        self.max_tags = n;
        self
    }

    /// The clock L1 freshness is read from (default [`Clock::system`]); tests that pause
    /// Tokio's time pass [`Clock::tokio`].
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Adds the shared L2 tier and cross-instance invalidation through this Redis.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, backend: RedisBackend) -> Self {
        self.redis = Some(backend);
        self
    }

    /// How often the invalidation subscriber proves its subscription alive by hearing
    /// its own heartbeat (default 1 s). After three silent intervals it counts the
    /// subscription as lost and resubscribes.
    #[cfg(feature = "redis")]
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// Validates the configuration and builds the engine; with Redis, starts the
    /// invalidation subscriber (a Tokio task that ends when the last clone of the engine
    /// is dropped).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a zero size or TTL, a jitter outside `0..1`, or windows and
    /// TTLs beyond a year.
    ///
    /// # Panics
    ///
    /// With Redis, must be called within a Tokio runtime.
    pub fn build(self) -> Result<CacheEngine, ConfigError> {
        crate::describe::once();
        const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
        if self.max_bytes == 0 {
            return Err(ConfigError::new(
                "max_bytes",
                "must be above zero; 64 MiB is a common start",
            ));
        }
        if self.defaults.ttl.is_zero() || self.defaults.ttl > YEAR {
            return Err(ConfigError::new(
                "ttl",
                "must be between 1 µs and a year; seconds to minutes suit most data",
            ));
        }
        if self.defaults.swr > YEAR || self.defaults.sie > YEAR {
            return Err(ConfigError::new(
                "stale_while_revalidate/stale_if_error",
                "must be at most a year",
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(ConfigError::new(
                "ttl_jitter",
                "must be a fraction in 0..1 (0.1 cuts up to 10% off each TTL)",
            ));
        }
        if self.unsubscribed_ttl.is_zero() || self.unsubscribed_ttl > YEAR {
            return Err(ConfigError::new(
                "unsubscribed_ttl",
                "must be between 1 µs and a year; about a second bounds staleness well",
            ));
        }
        if self.max_tags == 0 {
            return Err(ConfigError::new("max_tags", "must be above zero"));
        }
        #[cfg(feature = "redis")]
        if self.heartbeat.is_zero() {
            return Err(ConfigError::new(
                "heartbeat",
                "must be above zero; a second suits most deployments",
            ));
        }
        let l1 = moka::sync::Cache::builder()
            .max_capacity(self.max_bytes)
            .weigher(|k: &String, v: &Arc<Entry>| {
                let bytes = k.len() + v.value.len() + 128 + v.tags.len() * 32;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .expire_after(EntryExpiry)
            .build_with_hasher(foldhash::fast::RandomState::default());
        let seed = foldhash::fast::RandomState::default().hash_one(0u8);
        #[cfg(feature = "redis")]
        let has_redis = self.redis.is_some();
        #[cfg(not(feature = "redis"))]
        let has_redis = false;
        let metrics = super::metrics::Metrics::new();
        let inner = Arc::new(Inner {
            l1,
            clock: self.clock.unwrap_or_default(),
            defaults: self.defaults,
            jitter: self.jitter,
            unsubscribed_ttl: self.unsubscribed_ttl,
            flights: Mutex::new(FastMap::default()),
            tags: RwLock::new(FastMap::default()),
            max_tags: self.max_tags,
            epoch: AtomicU64::new(0),
            broad: AtomicU64::new(0),
            slots: (0..FENCE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            slot_hasher: foldhash::fast::FixedState::with_seed(seed),
            subscribed: AtomicBool::new(!has_redis),
            rng: crate::hash::Jitter::with_seed(seed),
            #[cfg(feature = "redis")]
            l2: self.redis.map(|b| super::l2::L2::new(b, seed)),
            metrics,
        });
        inner
            .metrics
            .subscribed
            .set(if has_redis { 0.0 } else { 1.0 });
        #[cfg(feature = "redis")]
        if let Some(l2) = &inner.l2 {
            let local: std::sync::Weak<dyn super::l2::Local> = Arc::downgrade(&inner) as _;
            tokio::spawn(super::l2::listen(
                local,
                l2.backend.clone(),
                l2.channel.clone(),
                self.heartbeat,
                seed,
            ));
        }
        Ok(CacheEngine { inner })
    }
}
