//! For implementing a store of your own: the [`Store`] trait, what a store is handed
//! ([`QuotaSpec`], the key as a [`BucketKey`]) and what it answers ([`Decision`],
//! [`StoreFuture`]). Users of the layer need none of this: they pick
//! [`MemoryStore`](super::MemoryStore), [`RedisStore`](super::RedisStore) or
//! [`AnyStore`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use std::sync::Arc;

use super::gcra::{Gcra, Verdict};
use crate::StoreUnavailable;

pub use super::service::BucketKey;

/// The most quotas one layer may hold (and so one request may be checked against).
pub const MAX_QUOTAS: usize = 8;

/// One quota of a layer, as its store sees it: built once per quota, handed to the store
/// by reference on every request.
#[derive(Debug, Clone)]
pub struct QuotaSpec {
    index: usize,
    name: Arc<str>,
    /// `}:` and the escaped name: how store keys end (see `RedisStore`).
    key_suffix: Arc<str>,
    salt: u64,
    gcra: Gcra,
}

impl QuotaSpec {
    /// `quota` at position `index` of its layer.
    pub fn new(index: usize, quota: &super::Quota) -> Self {
        Self {
            index,
            name: Arc::from(quota.name()),
            key_suffix: Arc::from(format!("}}:{}", crate::key::escape_key_part(quota.name()))),
            salt: salt(quota.name()),
            gcra: quota.gcra(),
        }
    }

    /// A stable 64-bit hash of the name, for in-process stores to key state by name.
    pub fn salt(&self) -> u64 {
        self.salt
    }

    /// The quota's position in its layer (0..MAX_QUOTAS): a stable slot for its state.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The quota's name: what identifies its state in a store. Quotas with different names
    /// never share state; layers sharing a store share a quota's state exactly when they
    /// give it the same name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `}:` then the name, escaped for store keys: the end of a hash-tagged key holding
    /// this quota's state.
    pub fn key_suffix(&self) -> &str {
        &self.key_suffix
    }

    /// The GCRA constants to evaluate.
    pub fn gcra(&self) -> Gcra {
        self.gcra
    }
}

/// A stable hash of the name, every bit depending on every byte.
fn salt(name: &str) -> u64 {
    crate::hash::mix64(crate::hash::fnv1a(name.as_bytes()))
}

/// A store's answer for one request: admitted or not, and each quota's verdict, in the
/// order the quotas were given.
#[derive(Debug, Clone)]
pub struct Decision {
    allowed: bool,
    verdicts: Verdicts,
}

// One quota per request is the common case: keep its verdict inline.
#[derive(Debug, Clone)]
enum Verdicts {
    One(Verdict),
    Many(Box<[Verdict]>),
}

impl Decision {
    /// A decision from per-quota verdicts. The request is admitted only if every verdict
    /// admits it.
    pub fn new(verdicts: impl IntoIterator<Item = Verdict>) -> Self {
        let all: Vec<Verdict> = verdicts.into_iter().collect();
        if let [one] = all[..] {
            return Self::one(one);
        }
        Decision {
            allowed: all.iter().all(|v| v.allowed),
            verdicts: Verdicts::Many(all.into_boxed_slice()),
        }
    }

    /// The decision of a request checked against one quota.
    pub fn one(verdict: Verdict) -> Self {
        Decision {
            allowed: verdict.allowed,
            verdicts: Verdicts::One(verdict),
        }
    }

    /// True if the request is admitted.
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// Each quota's verdict.
    pub fn verdicts(&self) -> &[Verdict] {
        match &self.verdicts {
            Verdicts::One(v) => std::slice::from_ref(v),
            Verdicts::Many(vs) => vs,
        }
    }
}

/// What [`Store::check`] returns: an answer now (in-process stores) or later (network
/// stores). The layer takes the first without allocating.
pub enum StoreFuture {
    /// Decided without waiting.
    Ready(Result<Decision, StoreUnavailable>),
    /// Decided by a round trip.
    Pending(BoxedCheck),
}

/// A store check that answers later.
pub type BoxedCheck = Pin<Box<dyn Future<Output = Result<Decision, StoreUnavailable>> + Send>>;

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
    fn check(&self, key: &K, quotas: &[&QuotaSpec], cost: u64) -> StoreFuture;

    /// The fast path of the commonest request, for stores that answer without waiting:
    /// one quota, and only "admitted" is of interest. Returns `true` if the request was
    /// admitted and its units taken; `false` if it was not decided here, with nothing
    /// taken, and the layer then calls [`check`](Self::check). The default decides
    /// nothing.
    #[inline]
    fn try_admit(&self, key: &K, quota: &QuotaSpec, cost: u64) -> bool {
        let _ = (key, quota, cost);
        false
    }
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
    fn check(&self, key: &K, quotas: &[&QuotaSpec], cost: u64) -> StoreFuture {
        match self {
            AnyStore::Memory(s) => s.check(key, quotas, cost),
            #[cfg(feature = "redis")]
            AnyStore::Redis(s) => s.check(key, quotas, cost),
        }
    }

    #[inline]
    fn try_admit(&self, key: &K, quota: &QuotaSpec, cost: u64) -> bool {
        match self {
            AnyStore::Memory(s) => s.try_admit(key, quota, cost),
            #[cfg(feature = "redis")]
            AnyStore::Redis(_) => false,
        }
    }
}
