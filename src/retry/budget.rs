//! [`RetryBudget`]: retries as a share of requests, so retries cannot turn an outage into a
//! storm.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::ConfigError;
use crate::clock::Clock;

/// How many retries are allowed: a share of the requests of the last `ttl` plus a floor per
/// second (Finagle's and Envoy's budget). Shared by every clone of a layer; give several
/// layers one budget with [`RetryLayerBuilder::budget`](super::RetryLayerBuilder::budget).
///
/// Requests and retries are counted in one-second buckets over `ttl`; a retry is allowed
/// while `retries < ratio × requests + floor × ttl_seconds` over that window. Against an
/// upstream failing every call, the upstream sees at most about `(1 + ratio) × requests`
/// plus the floor, not `attempts × requests`.
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    /// (second, requests, retries) per bucket, one per second in a ring of 64 (a power of
    /// two, so finding a second's bucket is a mask, not a division); the last `ttl` count.
    buckets: Box<[Bucket]>,
    ttl: u64,
    ratio_milli: u64,
    floor_per_sec: u64,
    clock: Clock,
}

const RING: u64 = 64;

/// A bucket's second while it is being emptied for a new one.
const ROTATING: u64 = u64::MAX;

#[derive(Default)]
struct Bucket {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &(self.inner.ratio_milli as f64 / 1000.0))
            .field("floor_per_sec", &self.inner.floor_per_sec)
            .field("ttl_secs", &self.inner.ttl)
            .finish()
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(0.2, 10, Duration::from_secs(10)).expect("the defaults are valid")
    }
}

impl RetryBudget {
    /// Retries up to `ratio` of the requests (0.2: one retry per five requests) plus
    /// `floor_per_sec` per second, over the last `ttl` (whole seconds, 1 to 60).
    ///
    /// # Errors
    ///
    /// A ratio outside 0..=10 or a ttl outside 1..=60 s.
    pub fn new(ratio: f64, floor_per_sec: u32, ttl: Duration) -> Result<Self, ConfigError> {
        Self::with_clock(ratio, floor_per_sec, ttl, Clock::default())
    }

    /// As [`new`](Self::new), reading `clock` ([`Clock::tokio`] in tests that pause time).
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn with_clock(
        ratio: f64,
        floor_per_sec: u32,
        ttl: Duration,
        clock: Clock,
    ) -> Result<Self, ConfigError> {
        if !(0.0..=10.0).contains(&ratio) {
            return Err(ConfigError::new(
                "budget ratio",
                format!("{ratio} is not a ratio of requests; use 0 to 10 (0.2 = 20%)"),
            ));
        }
        let secs = ttl.as_secs();
        if !(1..=60).contains(&secs) {
            return Err(ConfigError::new(
                "budget ttl",
                format!("{ttl:?}; use 1 s to 60 s"),
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                buckets: (0..RING).map(|_| Bucket::default()).collect(),
                ttl: secs,
                ratio_milli: (ratio * 1000.0).round() as u64,
                floor_per_sec: u64::from(floor_per_sec),
                clock,
            }),
        })
    }

    fn now_sec(&self) -> u64 {
        // +1 so that second 0 is never a real second: fresh buckets hold 0.
        self.inner.clock.now_us() / 1_000_000 + 1
    }

    /// The current second's bucket, emptied first if it holds an older second. A bucket
    /// being emptied is marked [`ROTATING`] until it is, so `withdraw` never counts an old
    /// second's numbers as this one's.
    fn bucket(&self, sec: u64) -> &Bucket {
        let b = &self.inner.buckets[(sec & (RING - 1)) as usize];
        let seen = b.second.load(Ordering::Acquire);
        if seen != sec
            && seen != ROTATING
            && b.second
                .compare_exchange(seen, ROTATING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // Counts added while the bucket rotates may be lost: a few requests at the turn
            // of a second, which only makes the budget a little stricter.
            b.requests.store(0, Ordering::Relaxed);
            b.retries.store(0, Ordering::Relaxed);
            b.second.store(sec, Ordering::Release);
        }
        b
    }

    /// Counts one request (every first attempt).
    #[inline]
    pub fn deposit(&self) {
        let sec = self.now_sec();
        self.bucket(sec).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget: `false` if it is spent. Callers racing each other
    /// can each see the last retry as free, so the budget may be exceeded by as many retries
    /// as there are threads withdrawing at the same instant.
    pub fn withdraw(&self) -> bool {
        let sec = self.now_sec();
        let n = self.inner.ttl;
        let oldest = sec.saturating_sub(n - 1);
        let (mut requests, mut retries) = (0u64, 0u64);
        for b in self.inner.buckets.iter() {
            let s = b.second.load(Ordering::Acquire);
            if s != ROTATING && s >= oldest && s <= sec {
                requests += b.requests.load(Ordering::Relaxed);
                retries += b.retries.load(Ordering::Relaxed);
            }
        }
        let allowed_milli = requests * self.inner.ratio_milli + self.inner.floor_per_sec * n * 1000;
        if (retries + 1) * 1000 > allowed_milli {
            return false;
        }
        self.bucket(sec).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_share_of_requests_plus_the_floor() {
        let b = RetryBudget::with_clock(0.2, 1, Duration::from_secs(10), Clock::tokio()).unwrap();
        for _ in 0..100 {
            b.deposit();
        }
        // 20% of 100, plus 1 per second over 10 s.
        let granted = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 30);
        // Eleven seconds on, the window is empty again: only the floor.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!((0..100).filter(|_| b.withdraw()).count(), 10);
    }

    #[test]
    fn bad_settings_are_errors() {
        assert!(RetryBudget::new(-0.1, 1, Duration::from_secs(10)).is_err());
        assert!(RetryBudget::new(0.2, 1, Duration::ZERO).is_err());
        assert!(RetryBudget::new(0.2, 1, Duration::from_secs(61)).is_err());
    }
}
