//! The engine both faces share: the L1 moka tier, request coalescing, fences and tag
//! versions, and (with `redis`) the L2 tier and the invalidation subscriber.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::LoadError;
use crate::ConfigError;
use crate::clock::Clock;
#[cfg(feature = "redis")]
use crate::redis::RedisBackend;

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
    decoded: OnceLock<Arc<dyn Any + Send + Sync>>,
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

    fn end(&self) -> u64 {
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

type Flight = watch::Sender<Option<Outcome>>;
type TagVersions = Box<[(Box<str>, u64)]>;
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

const FENCE_SLOTS: usize = 4096;
/// Versions made in this process have the top bit set; Redis's are microsecond times, below
/// it, so the two never meet.
const LOCAL_VERSION: u64 = 1 << 63;
/// The two-tier cache engine. Cheap to clone; every clone is the same cache.
///
/// Build it once per process with [`CacheEngine::builder`] and hand it to the faces:
/// [`Cache`](super::Cache) for application data and
/// [`ResponseCacheLayer`](super::ResponseCacheLayer) for HTTP responses. Both may share
/// one engine (their keys live in separate namespaces).
#[derive(Clone)]
pub struct CacheEngine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    l1: moka::sync::Cache<String, Arc<Entry>, foldhash::fast::RandomState>,
    pub(crate) clock: Clock,
    pub(crate) defaults: Lifetimes,
    jitter: f64,
    unsubscribed_ttl: Duration,
    flights: Mutex<FastMap<String, Arc<Flight>>>,
    tags: RwLock<FastMap<Box<str>, u64>>,
    max_tags: usize,
    epoch: AtomicU64,
    broad: AtomicU64,
    slots: Box<[AtomicU64]>,
    slot_hasher: foldhash::fast::FixedState,
    /// True while every invalidation from other instances reaches this one.
    subscribed: AtomicBool,
    rng: crate::hash::Jitter,
    #[cfg(feature = "redis")]
    pub(crate) l2: Option<super::l2::L2>,
    pub(crate) metrics: super::metrics::Metrics,
}

impl fmt::Debug for CacheEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("CacheEngine");
        d.field("entries", &self.inner.l1.entry_count())
            .field("defaults", &self.inner.defaults);
        #[cfg(feature = "redis")]
        d.field(
            "redis",
            &self.inner.l2.as_ref().map(|l2| l2.backend.address()),
        );
        d.finish_non_exhaustive()
    }
}

/// Builds a [`CacheEngine`].
#[derive(Debug, Clone)]
#[must_use]
pub struct CacheEngineBuilder {
    max_bytes: u64,
    defaults: Lifetimes,
    jitter: f64,
    unsubscribed_ttl: Duration,
    max_tags: usize,
    clock: Option<Clock>,
    #[cfg(feature = "redis")]
    redis: Option<RedisBackend>,
    #[cfg(feature = "redis")]
    heartbeat: Duration,
}

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

    /// Drops `key` (a full engine key, namespace included) here and, with Redis, from L2
    /// and every instance's L1.
    pub(crate) async fn invalidate_key(&self, key: &str) -> Result<(), crate::StoreUnavailable> {
        self.inner.drop_key(key);
        self.inner.metrics.invalidation_sent("key");
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.inner.l2 {
            let told = l2.invalidate_key(key).await;
            // A load that began after the first drop may have read L2 before Redis
            // deleted the entry, and put it into L1 meanwhile: drop again once Redis is
            // done (own messages are not applied).
            self.inner.drop_key(key);
            return told;
        }
        Ok(())
    }

    /// Drops every key that starts with `prefix` (a full engine key prefix).
    pub(crate) async fn invalidate_key_prefix(
        &self,
        prefix: &str,
    ) -> Result<(), crate::StoreUnavailable> {
        self.inner.drop_prefix(prefix);
        self.inner.metrics.invalidation_sent("prefix");
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.inner.l2 {
            let told = l2.invalidate_prefix(prefix).await;
            self.inner.drop_prefix(prefix);
            return told;
        }
        Ok(())
    }

    /// Invalidates every entry stored with `tag`, on every instance: one counter bump in
    /// Redis and one message, whatever the number of entries (they are checked against
    /// the tag's version when read).
    ///
    /// The local part is done before this returns, even when it returns an error.
    ///
    /// # Errors
    ///
    /// [`StoreUnavailable`](crate::StoreUnavailable) if Redis could not be told: the
    /// other instances keep their copies until their TTL ends or their subscription
    /// notices the outage.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), crate::StoreUnavailable> {
        self.inner.metrics.invalidation_sent("tag");
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.inner.l2 {
            // Make the local copy unusable at once; the version from Redis follows.
            self.inner.bump_tag_local(tag);
            let version = l2.invalidate_tag(tag).await?;
            self.inner.set_tag_version(tag, version, None);
            return Ok(());
        }
        self.inner.bump_tag_local(tag);
        Ok(())
    }

    /// Empties this instance's L1 (not L2, not other instances).
    pub fn clear_local(&self) {
        self.inner.l1.invalidate_all();
        self.inner.stamp_broad();
    }

    /// Number of entries in L1 (approximate: moka applies writes in batches).
    pub fn local_entries(&self) -> u64 {
        self.inner.l1.run_pending_tasks();
        self.inner.l1.entry_count()
    }

    /// True while invalidations from other instances are known to reach this one (always
    /// true without Redis). While false, L1 entries are trusted for at most the
    /// `unsubscribed_ttl`.
    pub fn is_subscribed(&self) -> bool {
        self.inner.subscribed.load(Ordering::Acquire)
    }

    pub(crate) fn now(&self) -> u64 {
        self.inner.clock.now_us()
    }

    /// Looks `key` up in L1.
    #[inline]
    pub(crate) fn lookup(&self, key: &str) -> Lookup {
        self.lookup_now(key).0
    }

    /// Looks `key` up in L1; also returns the time it was judged at (0 for a miss).
    #[inline]
    pub(crate) fn lookup_now(&self, key: &str) -> (Lookup, u64) {
        let inner = &*self.inner;
        let Some(entry) = inner.l1_get(key) else {
            return (Lookup::Miss { fallback: None }, 0);
        };
        if !entry.tags.is_empty() && !inner.tags_current(&entry.tags) {
            inner.l1.invalidate(key);
            return (Lookup::Miss { fallback: None }, 0);
        }
        let now = inner.clock.now_us();
        let found = if now < entry.fresh_until {
            Lookup::Fresh(entry)
        } else if now < entry.swr_until {
            Lookup::Stale(entry)
        } else if now < entry.sie_until {
            Lookup::Miss {
                fallback: Some(entry),
            }
        } else {
            Lookup::Miss { fallback: None }
        };
        (found, now)
    }

    /// Becomes the one loader of `key` in this process, or a waiter on the one there is.
    pub(crate) fn begin(&self, key: &str) -> Begin {
        let mut flights = self.inner.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = flights.get(key) {
            self.inner.metrics.coalesced.increment(1);
            return Begin::Wait(flight.subscribe());
        }
        let flight = Arc::new(watch::Sender::new(None));
        flights.insert(key.to_owned(), Arc::clone(&flight));
        drop(flights);
        Begin::Leader(Leader {
            engine: self.clone(),
            key: key.to_owned(),
            flight,
            fence: self.inner.epoch.load(Ordering::Acquire),
            tag_snapshot: None,
            #[cfg(feature = "redis")]
            l2_fence: None,
        })
    }

    /// Writes a value whatever loads are under way (after the caller invalidated the key
    /// everywhere): reads the fences from L2 and stores, as a load would.
    pub(crate) async fn write(
        &self,
        key: &str,
        value: Bytes,
        decoded: Arc<dyn Any + Send + Sync>,
        lifetimes: Lifetimes,
        tags: &[&str],
    ) {
        // A flight of its own that is not in the map: waiters of a concurrent load are
        // not disturbed, and that load is fenced off by the invalidation before this.
        let mut leader = Leader {
            engine: self.clone(),
            key: key.to_owned(),
            flight: Arc::new(watch::Sender::new(None)),
            fence: self.inner.epoch.load(Ordering::Acquire),
            tag_snapshot: None,
            #[cfg(feature = "redis")]
            l2_fence: None,
        };
        let _ = leader.read_l2(tags).await;
        // With Redis, L1 is not filled: two instances writing one key at once must not
        // each keep their own value; every instance reads the winner from L2 next.
        #[cfg(feature = "redis")]
        let shared = self.inner.l2.is_some();
        #[cfg(not(feature = "redis"))]
        let shared = false;
        leader
            .store(value, Some(decoded), lifetimes, tags, !shared)
            .await;
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.inner.l2 {
            // Instances that read the key between the first invalidation and the write
            // drop it again.
            let _ = l2.publish_key(key).await;
        }
    }

    /// A random TTL cut of up to `jitter`, so entries stored together do not expire
    /// together.
    fn jittered(&self, ttl: Duration) -> Duration {
        if self.inner.jitter <= 0.0 || ttl.is_zero() {
            return ttl;
        }
        ttl.mul_f64(1.0 - self.inner.jitter * self.inner.rng.unit())
    }
}

/// Either the loader of a key or a waiter for it.
pub(crate) enum Begin {
    Leader(Leader),
    Wait(watch::Receiver<Option<Outcome>>),
}

/// Waits for the loader that `rx` follows. `None` if it went away without an outcome
/// (its caller was cancelled): the waiter should begin again.
pub(crate) async fn wait(mut rx: watch::Receiver<Option<Outcome>>) -> Option<Outcome> {
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
    engine: CacheEngine,
    pub(crate) key: String,
    flight: Arc<Flight>,
    fence: u64,
    tag_snapshot: Option<TagVersions>,
    #[cfg(feature = "redis")]
    l2_fence: Option<super::l2::Fence>,
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
            let Some(read) = l2.get(&self.key, tags, &inner).await else {
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

impl Inner {
    /// Inserts `entry` into moka unless an invalidation that touches `key` came after
    /// `fence`; the check is made again after the insert (an invalidation may land
    /// between check and insert), and the entry taken out if it failed.
    pub(crate) fn insert_fenced(&self, key: &str, entry: Arc<Entry>, fence: u64) {
        if !self.local_fence_ok(key, fence) {
            return;
        }
        self.l1.insert(key.to_owned(), entry);
        if !self.local_fence_ok(key, fence) {
            self.l1.invalidate(key);
        }
    }

    /// What L1 may hold of an entry read from L2: while invalidations may be missed, its
    /// lifetimes are cut to `unsubscribed_ttl`, as for a loaded value.
    #[cfg(feature = "redis")]
    fn l1_copy(&self, entry: &Arc<Entry>) -> Arc<Entry> {
        if self.subscribed.load(Ordering::Acquire) {
            return Arc::clone(entry);
        }
        let cap = self
            .clock
            .now_us()
            .saturating_add(crate::duration::micros(self.unsubscribed_ttl));
        Arc::new(Entry::from_parts(
            entry.value.clone(),
            entry.stored_at,
            entry.fresh_until.min(cap),
            entry.swr_until.min(cap),
            entry.sie_until.min(cap),
            entry.tags.clone(),
        ))
    }

    /// L1's entry for `key`.
    #[inline]
    fn l1_get(&self, key: &str) -> Option<Arc<Entry>> {
        self.l1.get(key)
    }

    fn slot(&self, key: &str) -> &AtomicU64 {
        let h = self.slot_hasher.hash_one(key) as usize;
        &self.slots[h % FENCE_SLOTS]
    }

    fn bump_epoch(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// True if no invalidation that could touch `key` happened after `snapshot`.
    fn local_fence_ok(&self, key: &str, snapshot: u64) -> bool {
        self.slot(key).load(Ordering::Acquire) <= snapshot
            && self.broad.load(Ordering::Acquire) <= snapshot
    }

    /// Stamps the key's fence slot before removing it from moka (so a load under way does
    /// not store) and after (so neither does a load that began while it was removed).
    pub(crate) fn drop_key(&self, key: &str) {
        let e = self.bump_epoch();
        self.slot(key).fetch_max(e, Ordering::AcqRel);
        self.l1.invalidate(key);
        let e = self.bump_epoch();
        self.slot(key).fetch_max(e, Ordering::AcqRel);
    }

    fn stamp_broad(&self) {
        let e = self.bump_epoch();
        self.broad.fetch_max(e, Ordering::AcqRel);
    }

    pub(crate) fn drop_prefix(&self, prefix: &str) {
        self.stamp_broad();
        let doomed: Vec<Arc<String>> = self
            .l1
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k)
            .collect();
        for k in doomed {
            self.l1.invalidate(k.as_str());
        }
        self.stamp_broad();
    }

    /// Forgets every local copy and tag version: invalidations may have been missed.
    #[cfg(feature = "redis")]
    pub(crate) fn drop_all(&self) {
        self.stamp_broad();
        self.tags.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.l1.invalidate_all();
        self.stamp_broad();
    }

    fn tags_current(&self, tags: &[(Box<str>, u64)]) -> bool {
        let table = self.tags.read().unwrap_or_else(|e| e.into_inner());
        tags.iter().all(|(t, v)| table.get(t) == Some(v))
    }

    /// The version of `tag` this process knows; an unknown tag gets a new local version
    /// (one no other tag state ever had, so no older entry can match it).
    fn tag_version_or_init(&self, tag: &str) -> u64 {
        if let Some(v) = self.tags.read().unwrap_or_else(|e| e.into_inner()).get(tag) {
            return *v;
        }
        let mut table = self.tags.write().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = table.get(tag) {
            return *v;
        }
        let v = LOCAL_VERSION | self.bump_epoch();
        self.insert_tag(&mut table, tag, v);
        v
    }

    /// Bounded by `max_tags`: a full table starts over. That is safe: an entry whose tag
    /// is forgotten reads as invalid, and a tag learned again gets a version no entry has
    /// (locally) or the one Redis holds.
    fn insert_tag(&self, table: &mut FastMap<Box<str>, u64>, tag: &str, version: u64) {
        if table.len() >= self.max_tags {
            table.clear();
        }
        table.insert(tag.into(), version);
    }

    /// A local tag invalidation: entries loaded under the old version stop matching.
    fn bump_tag_local(&self, tag: &str) {
        let v = LOCAL_VERSION | self.bump_epoch();
        let mut table = self.tags.write().unwrap_or_else(|e| e.into_inner());
        match table.get_mut(tag) {
            Some(old) => *old = v,
            None => self.insert_tag(&mut table, tag, v),
        }
    }

    /// Records a version Redis reported. Versions only move forward, with one exception:
    /// a tag whose key expired in Redis (no invalidation for longer than its TTL) reads 0
    /// again, which is taken when the known version is older than `expired_before`.
    #[cfg(feature = "redis")]
    pub(crate) fn set_tag_version(&self, tag: &str, version: u64, expired_before: Option<u64>) {
        let mut table = self.tags.write().unwrap_or_else(|e| e.into_inner());
        match table.get_mut(tag) {
            Some(v) if *v >= LOCAL_VERSION || *v < version => *v = version,
            Some(v) if version == 0 && expired_before.is_some_and(|t| *v < t) => *v = 0,
            Some(_) => {}
            None => self.insert_tag(&mut table, tag, version),
        }
    }

    #[cfg(feature = "redis")]
    pub(crate) fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    #[cfg(feature = "redis")]
    pub(crate) fn set_subscribed(&self, on: bool) {
        let was = self.subscribed.swap(on, Ordering::AcqRel);
        if on || was {
            // On (re)subscribing, invalidations sent while we were not listening are
            // lost; on losing the subscription, future ones will be. Either way the local
            // copies can no longer be trusted.
            self.drop_all();
        }
        self.metrics.subscribed.set(if on { 1.0 } else { 0.0 });
    }
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
            tokio::spawn(super::l2::listen(
                Arc::downgrade(&inner),
                l2.backend.clone(),
                l2.channel.clone(),
                self.heartbeat,
                seed,
            ));
        }
        Ok(CacheEngine { inner })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> CacheEngine {
        CacheEngine::builder()
            .ttl_jitter(0.0)
            .clock(Clock::tokio())
            .build()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_after_an_invalidation_is_not_kept() {
        let e = engine();
        let Begin::Leader(leader) = e.begin("k") else {
            panic!("first caller leads")
        };
        e.invalidate_key("k").await.unwrap();
        let lt = e.inner.defaults;
        let entry = leader
            .store(Bytes::from_static(b"old"), None, lt, &[], true)
            .await;
        assert_eq!(&entry.value[..], b"old");
        assert!(matches!(e.lookup("k"), Lookup::Miss { fallback: None }));
        leader.complete(Outcome::Pass);
        // A load that begins after the invalidation is stored.
        let Begin::Leader(leader) = e.begin("k") else {
            panic!("the old flight ended")
        };
        leader
            .store(Bytes::from_static(b"new"), None, lt, &[], true)
            .await;
        assert!(matches!(e.lookup("k"), Lookup::Fresh(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_tag_invalidated_during_a_load_fences_its_store() {
        let e = engine();
        let lt = e.inner.defaults;
        let Begin::Leader(mut leader) = e.begin("k") else {
            panic!()
        };
        assert!(leader.read_l2(&["t"]).await.is_none());
        e.invalidate_tag("t").await.unwrap();
        leader.store(Bytes::new(), None, lt, &["t"], true).await;
        // The entry carries the tag's version from before the invalidation.
        assert!(matches!(e.lookup("k"), Lookup::Miss { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn lifetimes_move_from_fresh_to_stale_to_gone() {
        let e = engine();
        let lt = Lifetimes {
            ttl: Duration::from_secs(10),
            swr: Duration::from_secs(5),
            sie: Duration::from_secs(20),
        };
        let Begin::Leader(leader) = e.begin("k") else {
            panic!()
        };
        leader.store(Bytes::new(), None, lt, &[], true).await;
        drop(leader);
        let steps = [
            ("fresh", 9, "fresh"),
            ("swr", 2, "stale"),
            ("sie", 5, "fallback"),
            ("gone", 15, "gone"),
        ];
        for (name, advance, want) in steps {
            tokio::time::advance(Duration::from_secs(advance)).await;
            let got = match e.lookup("k") {
                Lookup::Fresh(_) => "fresh",
                Lookup::Stale(_) => "stale",
                Lookup::Miss { fallback: Some(_) } => "fallback",
                Lookup::Miss { fallback: None } => "gone",
            };
            assert_eq!(got, want, "step {name}");
        }
    }

    #[test]
    fn bad_config_names_the_setting() {
        let cases = [
            ("max_bytes", CacheEngine::builder().max_bytes(0)),
            ("ttl", CacheEngine::builder().ttl(Duration::ZERO)),
            ("ttl_jitter", CacheEngine::builder().ttl_jitter(1.5)),
            ("ttl_jitter", CacheEngine::builder().ttl_jitter(f64::NAN)),
            (
                "unsubscribed_ttl",
                CacheEngine::builder().unsubscribed_ttl(Duration::ZERO),
            ),
            (
                "stale_while_revalidate/stale_if_error",
                CacheEngine::builder().stale_if_error(Duration::MAX),
            ),
        ];
        for (setting, b) in cases {
            assert_eq!(b.build().unwrap_err().setting(), setting);
        }
    }
}
