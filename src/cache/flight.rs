//! Single-flight: one load per key per instance. The first caller to miss leads
//! ([`Leader`]): it reads L2, loads, stores behind the fences and hands the outcome to
//! every caller that waited ([`wait`]).

use std::any::Any;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::watch;

use super::engine::CacheEngine;
use super::entry::{Entry, Lifetimes, Outcome, TagVersions};

pub(super) type Flight = watch::Sender<Option<Outcome>>;

/// Either the loader of a key or a waiter for it.
pub(super) enum Begin {
    Leader(Leader),
    Wait(watch::Receiver<Option<Outcome>>),
}

/// What joining a key's load gave: the lead, the outcome of the load under way, or word
/// that its leader went away without one.
pub(crate) enum Join {
    Lead(Leader),
    Done(Outcome),
    Abandoned,
}

/// Waits for the loader that `rx` follows. `None` if it went away without an outcome
/// (its caller was cancelled): the waiter should begin again.
pub(super) async fn wait(mut rx: watch::Receiver<Option<Outcome>>) -> Option<Outcome> {
    match rx.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone(),
        Err(_) => None,
    }
}

/// The one loader of a key in this process. Dropping it without [`complete`] lets the
/// waiters begin again (one of them becomes the loader).
///
/// [`complete`]: Leader::complete
pub(crate) struct Leader {
    pub(super) engine: CacheEngine,
    pub(crate) key: String,
    pub(super) flight: Arc<Flight>,
    pub(super) fence: u64,
    pub(super) tag_snapshot: Option<TagVersions>,
    #[cfg(feature = "redis")]
    pub(super) l2_fence: Option<super::l2::Fence>,
}

impl Leader {
    /// Records the versions of `tags` (the tags the loaded value will carry) as they are
    /// before the load, and reads L2 (one round trip; nothing without Redis or while
    /// Redis is failing), noting what a later [`store`](Self::store) must check so that it
    /// never writes back a value older than an invalidation that happened meanwhile.
    /// Returns a valid L2 entry (fresh or within a stale window).
    pub(crate) async fn read_l2(&mut self, tags: &[&str]) -> Option<Arc<Entry>> {
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.engine.inner.l2 {
            let inner = Arc::clone(&self.engine.inner);
            let Some(read) = l2.get(&self.key, tags, &inner.clock).await else {
                self.snapshot_local(tags);
                return None;
            };
            let expired_before = Some(read.fence.expired_before());
            for (tag, version) in tags.iter().zip(&read.fence.tag_versions) {
                inner.set_tag_version(tag, *version, expired_before);
            }
            self.tag_snapshot = Some(
                tags.iter()
                    .zip(&read.fence.tag_versions)
                    .map(|(t, v)| ((*t).into(), *v))
                    .collect(),
            );
            self.l2_fence = Some(read.fence);
            let entry = read.entry?;
            // The read checked the entry's tag versions against Redis: they were current a
            // moment ago. Learn them, unless a newer invalidation already arrived.
            for (tag, version) in &entry.tags {
                inner.set_tag_version(tag, *version, expired_before);
            }
            if !entry.tags.is_empty() && !inner.tags_current(&entry.tags) {
                return None;
            }
            inner.metrics.hit_l2.increment(1);
            inner.insert_fenced(&self.key, inner.l1_copy(&entry), self.fence);
            return Some(entry);
        }
        self.snapshot_local(tags);
        None
    }

    fn snapshot_local(&mut self, tags: &[&str]) {
        let inner = &self.engine.inner;
        self.tag_snapshot = Some(
            tags.iter()
                .map(|t| ((*t).into(), inner.tag_version_or_init(t)))
                .collect(),
        );
    }

    /// Stores a loaded value in L1 and L2, unless an invalidation of the key (or of a
    /// prefix, or of one of its tags) arrived since this load began. Returns the entry,
    /// which callers use whether or not it was stored.
    pub(crate) async fn store(
        &self,
        value: Bytes,
        decoded: Option<Arc<dyn Any + Send + Sync>>,
        lifetimes: Lifetimes,
        tags: &[&str],
        fill_l1: bool,
    ) -> Arc<Entry> {
        let inner = &*self.engine.inner;
        let now = inner.clock.now_us();
        let ttl = self.engine.jittered(lifetimes.ttl);
        let fresh_until = now.saturating_add(crate::duration::micros(ttl));
        let mut swr_until = fresh_until.saturating_add(crate::duration::micros(lifetimes.swr));
        let mut sie_until = fresh_until.saturating_add(crate::duration::micros(lifetimes.sie));
        let mut l1_fresh_until = fresh_until;
        if !inner.subscribed.load(Ordering::Acquire) {
            // Invalidations from other instances may be missed: this copy is trusted
            // briefly, stale windows included. L2 keeps the full lifetimes.
            let cap = now.saturating_add(crate::duration::micros(inner.unsubscribed_ttl));
            l1_fresh_until = l1_fresh_until.min(cap);
            swr_until = swr_until.min(cap);
            sie_until = sie_until.min(cap);
        }
        let tag_versions: Box<[(Box<str>, u64)]> = match &self.tag_snapshot {
            Some(snapshot) => snapshot.clone(),
            None => tags
                .iter()
                .map(|t| ((*t).into(), inner.tag_version_or_init(t)))
                .collect(),
        };
        let entry = Arc::new(Entry {
            value,
            stored_at: now,
            fresh_until: l1_fresh_until,
            swr_until,
            sie_until,
            tags: tag_versions,
            decoded: OnceLock::new(),
        });
        if let Some(d) = decoded {
            let _ = entry.decoded.set(d);
        }
        let fresh_locally = inner.local_fence_ok(&self.key, self.fence)
            && (entry.tags.is_empty() || inner.tags_current(&entry.tags));
        // L2 is written whatever the local fence says: the script's own checks (generation,
        // prefix generation, tag versions) are the ones every instance agrees on, while the
        // local fence also moves for local reasons (the subscription coming back empties
        // L1) that say nothing about the value.
        #[cfg(feature = "redis")]
        if let (Some(l2), Some(fence)) = (&inner.l2, &self.l2_fence) {
            let stored = l2.set(&self.key, &entry, ttl, lifetimes, tags, fence).await;
            // A refusal means an instance invalidated meanwhile.
            if stored == Some(false) {
                return entry;
            }
        }
        if fresh_locally && fill_l1 {
            inner.insert_fenced(&self.key, Arc::clone(&entry), self.fence);
        }
        entry
    }

    /// The loader (a call of the inner service, a user's loader) answered.
    pub(crate) fn load_succeeded(&self) {
        self.engine.inner.metrics.load_ok.increment(1);
    }

    /// The loader failed (an error, or a 5xx from the inner service).
    pub(crate) fn load_failed(&self) {
        self.engine.inner.metrics.load_err.increment(1);
    }

    /// Hands `outcome` to every waiter and ends the flight.
    pub(crate) fn complete(self, outcome: Outcome) {
        self.flight.send_replace(Some(outcome));
        // Drop removes the flight from the map.
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let mut flights = self
            .engine
            .inner
            .flights
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if flights
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            flights.remove(&self.key);
        }
    }
}
