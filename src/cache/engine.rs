//! The engine both faces share: the L1 moka tier, request coalescing, fences and tag
//! versions, and (with `redis`) the L2 tier and the invalidation subscriber.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::entry::{Entry, Lifetimes, Lookup};
use super::flight::{Begin, Flight, Join, Leader, wait};
use crate::clock::Clock;

pub(super) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

pub(super) const FENCE_SLOTS: usize = 4096;

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
    pub(super) l1: moka::sync::Cache<String, Arc<Entry>, foldhash::fast::RandomState>,
    pub(crate) clock: Clock,
    pub(crate) defaults: Lifetimes,
    pub(super) jitter: f64,
    pub(super) unsubscribed_ttl: Duration,
    pub(super) flights: Mutex<FastMap<String, Arc<Flight>>>,
    pub(super) tags: RwLock<FastMap<Box<str>, u64>>,
    pub(super) max_tags: usize,
    pub(super) epoch: AtomicU64,
    pub(super) broad: AtomicU64,
    pub(super) slots: Box<[AtomicU64]>,
    pub(super) slot_hasher: foldhash::fast::FixedState,
    /// True while every invalidation from other instances reaches this one.
    pub(super) subscribed: AtomicBool,
    pub(super) rng: crate::hash::Jitter,
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

impl CacheEngine {
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

    /// Joins the load of `key` in this process: leads it, or waits for the one under way
    /// and gets its outcome, or learns that its leader went away without one (then the
    /// face looks in L1 again: the leader may have filled it from L2 before it went).
    pub(crate) async fn join(&self, key: &str) -> Join {
        match self.begin(key) {
            Begin::Leader(leader) => Join::Lead(leader),
            Begin::Wait(rx) => match wait(rx).await {
                Some(outcome) => Join::Done(outcome),
                None => Join::Abandoned,
            },
        }
    }

    /// Leads a load of `key` if none is under way (a background refresh, a variant's
    /// first load); `None` if one is.
    pub(crate) fn try_lead(&self, key: &str) -> Option<Leader> {
        match self.begin(key) {
            Begin::Leader(leader) => Some(leader),
            Begin::Wait(_) => None,
        }
    }

    /// A leader for `key` that no caller waits on and that holds up no load (its flight is
    /// not in the map): for an update that comes with another request, such as the
    /// fields of a `HEAD` response. It reads the fences and stores as any leader.
    pub(crate) fn detached_leader(&self, key: &str) -> Leader {
        Leader {
            engine: self.clone(),
            key: key.to_owned(),
            flight: Arc::new(watch::Sender::new(None)),
            fence: self.inner.epoch.load(Ordering::Acquire),
            tag_snapshot: None,
            #[cfg(feature = "redis")]
            l2_fence: None,
        }
    }

    /// True if L1 still holds `entry`'s value for `key` (the same bytes: a copy read
    /// again from Redis counts) and no load of the key is under way: an update of `entry`
    /// (a `HEAD` response's fields) must not overwrite a newer copy stored meanwhile.
    pub(crate) fn still_holds(&self, key: &str, entry: &Entry) -> bool {
        let loading = self
            .inner
            .flights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(key);
        !loading
            && self
                .inner
                .l1
                .get(key)
                .is_some_and(|e| e.value == entry.value)
    }

    /// The lifetimes an entry gets unless its load says otherwise.
    pub(crate) fn defaults(&self) -> Lifetimes {
        self.inner.defaults
    }

    /// A face served a fresh L1 entry.
    #[inline]
    pub(crate) fn served_fresh(&self) {
        self.inner.metrics.hit_l1.increment(1);
    }

    /// A face served an entry past fresh, within stale-while-revalidate; it refreshes the
    /// entry with the leader, if it gets one (none while a load is under way).
    pub(crate) fn served_stale(&self, key: &str) -> Option<Leader> {
        self.inner.metrics.stale_revalidate.increment(1);
        self.try_lead(key)
    }

    /// L1 had nothing a face could serve.
    pub(crate) fn missed(&self) {
        self.inner.metrics.miss.increment(1);
    }

    /// A face served an entry within stale-if-error because the load failed.
    pub(crate) fn served_stale_on_error(&self) {
        self.inner.metrics.stale_error.increment(1);
    }

    /// Becomes the one loader of `key` in this process, or a waiter on the one there is.
    fn begin(&self, key: &str) -> Begin {
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
        let mut leader = self.detached_leader(key);
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
    pub(super) fn jittered(&self, ttl: Duration) -> Duration {
        if self.inner.jitter <= 0.0 || ttl.is_zero() {
            return ttl;
        }
        ttl.mul_f64(1.0 - self.inner.jitter * self.inner.rng.unit())
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
    pub(super) fn l1_copy(&self, entry: &Arc<Entry>) -> Arc<Entry> {
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
    pub(super) fn local_fence_ok(&self, key: &str, snapshot: u64) -> bool {
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

    pub(super) fn tags_current(&self, tags: &[(Box<str>, u64)]) -> bool {
        let table = self.tags.read().unwrap_or_else(|e| e.into_inner());
        tags.iter().all(|(t, v)| table.get(t) == Some(v))
    }

    /// The version of `tag` this process knows; an unknown tag gets a new local version
    /// (one no other tag state ever had, so no older entry can match it).
    pub(super) fn tag_version_or_init(&self, tag: &str) -> u64 {
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

#[cfg(feature = "redis")]
impl super::l2::Local for Inner {
    fn invalidated(&self, what: super::l2::Invalidation<'_>) {
        use super::l2::Invalidation;
        match what {
            Invalidation::Key(key) => {
                self.metrics.invalidation_received("key");
                self.drop_key(key);
            }
            Invalidation::Prefix(prefix) => {
                self.metrics.invalidation_received("prefix");
                self.drop_prefix(prefix);
            }
            Invalidation::Tag { tag, version, own } => {
                if !own {
                    self.metrics.invalidation_received("tag");
                }
                self.set_tag_version(tag, version, None);
            }
        }
    }

    fn is_subscribed(&self) -> bool {
        Inner::is_subscribed(self)
    }

    fn set_subscribed(&self, on: bool) {
        Inner::set_subscribed(self, on);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::Outcome;

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
        let Some(leader) = e.try_lead("k") else {
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
        let Some(leader) = e.try_lead("k") else {
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
        let Some(mut leader) = e.try_lead("k") else {
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
        let Some(leader) = e.try_lead("k") else {
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
