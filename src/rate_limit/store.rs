//! Where rate-limit state lives: the [`Store`] trait and what it answers.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use super::gcra::{Gcra, Verdict};
use crate::StoreUnavailable;

/// The most quotas one layer may hold (and so one request may be checked against).
pub const MAX_QUOTAS: usize = 8;

/// One quota, as handed to a store.
#[derive(Debug, Clone, Copy)]
pub struct QuotaRef<'a> {
    pub(crate) index: usize,
    pub(crate) name: &'a str,
    pub(crate) gcra: Gcra,
}

impl<'a> QuotaRef<'a> {
    /// `quota` at position `index` of its layer: what a layer hands its store (public for
    /// stores' own tests).
    pub fn new(index: usize, quota: &'a super::Quota) -> Self {
        Self {
            index,
            name: quota.name(),
            gcra: quota.gcra(),
        }
    }

    /// The quota's position in its layer (0..MAX_QUOTAS): a stable slot for its state.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The quota's name: separates its state from other quotas' in a shared store.
    pub fn name(&self) -> &str {
        self.name
    }

    /// The GCRA constants to evaluate.
    pub fn gcra(&self) -> Gcra {
        self.gcra
    }
}

/// A store's answer for one request: admitted or not, and each quota's verdict, in the
/// order the quotas were given.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    allowed: bool,
    len: usize,
    verdicts: [Verdict; MAX_QUOTAS],
}

const NO_VERDICT: Verdict = Verdict {
    allowed: true,
    remaining: 0,
    retry_after_us: 0,
    reset_us: 0,
};

impl Decision {
    /// A decision from per-quota verdicts (at most [`MAX_QUOTAS`]; more are ignored). The
    /// request is admitted only if every verdict admits it.
    pub fn new(verdicts: impl IntoIterator<Item = Verdict>) -> Self {
        let mut d = Decision {
            allowed: true,
            len: 0,
            verdicts: [NO_VERDICT; MAX_QUOTAS],
        };
        for v in verdicts.into_iter().take(MAX_QUOTAS) {
            d.allowed &= v.allowed;
            d.verdicts[d.len] = v;
            d.len += 1;
        }
        d
    }

    /// True if the request is admitted.
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// Each quota's verdict.
    pub fn verdicts(&self) -> &[Verdict] {
        &self.verdicts[..self.len]
    }
}

/// What [`Store::check`] returns: an answer now (in-process stores) or later (network
/// stores). The layer takes the first without allocating.
#[allow(
    clippy::large_enum_variant,
    reason = "boxing the ready decision would allocate on every in-process check, which this type exists to avoid"
)]
pub enum StoreFuture {
    /// Decided without waiting.
    Ready(Result<Decision, StoreUnavailable>),
    /// Decided by a round trip.
    Pending(Pin<Box<dyn Future<Output = Result<Decision, StoreUnavailable>> + Send>>),
}

impl fmt::Debug for StoreFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreFuture::Ready(r) => f.debug_tuple("Ready").field(r).finish(),
            StoreFuture::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// Keeps the GCRA state of keys and evaluates requests against it.
///
/// A store must evaluate all `quotas` of one call atomically: admitted only if every
/// quota admits it, and a refused request changes no quota's state.
pub trait Store<K>: Clone + Send + Sync + 'static {
    /// Evaluates a request of `cost` units by `key` against `quotas`.
    fn check(&self, key: &K, quotas: &[QuotaRef<'_>], cost: u64) -> StoreFuture;
}

/// The in-process or the Redis store, chosen at run time (e.g. from configuration).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AnyStore {
    /// [`MemoryStore`](super::MemoryStore).
    Memory(super::MemoryStore),
    /// [`RedisStore`](super::RedisStore).
    #[cfg(feature = "redis")]
    Redis(super::RedisStore),
}

impl From<super::MemoryStore> for AnyStore {
    fn from(s: super::MemoryStore) -> Self {
        AnyStore::Memory(s)
    }
}

#[cfg(feature = "redis")]
impl From<super::RedisStore> for AnyStore {
    fn from(s: super::RedisStore) -> Self {
        AnyStore::Redis(s)
    }
}

impl<K: std::hash::Hash + fmt::Display> Store<K> for AnyStore {
    fn check(&self, key: &K, quotas: &[QuotaRef<'_>], cost: u64) -> StoreFuture {
        match self {
            AnyStore::Memory(s) => s.check(key, quotas, cost),
            #[cfg(feature = "redis")]
            AnyStore::Redis(s) => s.check(key, quotas, cost),
        }
    }
}
