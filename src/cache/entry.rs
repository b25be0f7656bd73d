//! What L1 and L2 hold: an [`Entry`] with its lifetimes and tag versions, and what a
//! lookup or a finished load says about it.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use super::LoadError;

/// How long an entry is fresh, and how long past that it may still be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetimes {
    pub(crate) ttl: Duration,
    pub(crate) swr: Duration,
    pub(crate) sie: Duration,
}

/// One cached value with its times (this process's [`Clock`], microseconds) and the tag
/// versions it was loaded under.
pub(crate) struct Entry {
    pub(crate) value: Bytes,
    pub(crate) stored_at: u64,
    pub(crate) fresh_until: u64,
    pub(crate) swr_until: u64,
    pub(crate) sie_until: u64,
    pub(crate) tags: Box<[(Box<str>, u64)]>,
    pub(super) decoded: OnceLock<Arc<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("bytes", &self.value.len())
            .field("fresh_until", &self.fresh_until)
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

impl Entry {
    #[cfg(feature = "redis")]
    pub(crate) fn from_parts(
        value: Bytes,
        stored_at: u64,
        fresh_until: u64,
        swr_until: u64,
        sie_until: u64,
        tags: Box<[(Box<str>, u64)]>,
    ) -> Self {
        Self {
            value,
            stored_at,
            fresh_until,
            swr_until,
            sie_until,
            tags,
            decoded: OnceLock::new(),
        }
    }

    /// The value decoded as `T`, decoding (once per entry) with `decode`.
    pub(crate) fn decoded<T: Any + Send + Sync>(
        &self,
        decode: impl FnOnce(&Bytes) -> Option<T>,
    ) -> Option<Arc<T>> {
        if let Some(d) = self.decoded.get() {
            return Arc::clone(d).downcast::<T>().ok();
        }
        let value: Arc<dyn Any + Send + Sync> = Arc::new(decode(&self.value)?);
        let _ = self.decoded.set(Arc::clone(&value));
        value.downcast::<T>().ok()
    }

    /// The value decoded as `T`, by reference (no reference count touched on the hit
    /// path), decoding once per entry with `decode`.
    pub(crate) fn decoded_ref<T: Any + Send + Sync>(
        &self,
        decode: impl FnOnce(&Bytes) -> Option<T>,
    ) -> Option<&T> {
        if self.decoded.get().is_none() {
            let value: Arc<dyn Any + Send + Sync> = Arc::new(decode(&self.value)?);
            let _ = self.decoded.set(value);
        }
        self.decoded.get()?.downcast_ref::<T>()
    }

    /// Seconds of freshness left at `now` (negative once stale), for `Cache-Status`.
    pub(crate) fn ttl_secs(&self, now: u64) -> i64 {
        (self.fresh_until as i64 - now as i64).div_euclid(1_000_000)
    }

    /// Whole seconds since the value was stored, for `Age`.
    pub(crate) fn age_secs(&self, now: u64) -> u64 {
        now.saturating_sub(self.stored_at) / 1_000_000
    }

    pub(super) fn end(&self) -> u64 {
        self.swr_until.max(self.sie_until)
    }
}

/// What L1 holds for a key.
pub(crate) enum Lookup {
    /// Fresh: serve it.
    Fresh(Arc<Entry>),
    /// Past fresh, within stale-while-revalidate: serve it and refresh in the background.
    Stale(Arc<Entry>),
    /// Nothing servable; `fallback` is an entry still within stale-if-error.
    Miss { fallback: Option<Arc<Entry>> },
}

/// What a finished load hands to the callers that waited for it.
#[derive(Clone)]
pub(crate) enum Outcome {
    Value(Arc<Entry>),
    /// The result could not be shared (an HTTP response that may not be stored): each
    /// waiter goes to the backend itself.
    Pass,
    Failed(LoadError),
}

pub(super) type TagVersions = Box<[(Box<str>, u64)]>;
