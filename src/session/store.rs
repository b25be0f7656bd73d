//! Where sessions live: the in-process [`MemoryStore`], and, for implementing a store of
//! your own, the [`SessionStore`] trait and what it reads and writes. Users of the layer
//! need only a store: [`MemoryStore`] or
//! [`RedisSessionStore`](super::RedisSessionStore).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Clock;
use crate::duration::micros as us;
use crate::{ConfigError, StoreUnavailable};

/// A store call's future.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreUnavailable>> + Send>>;

/// A session's values: JSON text per key. Keys are the application's own, so the map
/// hashes them with a fast seeded hash (foldhash) rather than SipHash; build one with
/// `Values::default()` or by collecting pairs.
pub type Values = HashMap<String, String, ValuesHasher>;

/// The hasher of [`Values`]: a fast hash (foldhash), randomly seeded per map.
#[derive(Debug, Clone, Default)]
pub struct ValuesHasher(foldhash::fast::RandomState);

impl std::hash::BuildHasher for ValuesHasher {
    type Hasher = ValuesHash;

    #[inline]
    fn build_hasher(&self) -> ValuesHash {
        ValuesHash(self.0.build_hasher())
    }
}

/// The state of one [`ValuesHasher`] hash. Its own type, so the hash function behind it
/// can change without changing this crate's API.
#[derive(Clone)]
pub struct ValuesHash(foldhash::fast::FoldHasher<'static>);

impl std::fmt::Debug for ValuesHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValuesHash").finish_non_exhaustive()
    }
}

impl std::hash::Hasher for ValuesHash {
    #[inline]
    fn finish(&self) -> u64 {
        self.0.finish()
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.0.write_u8(i);
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.0.write_u16(i);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.0.write_u32(i);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0.write_u64(i);
    }

    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.0.write_u128(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.0.write_usize(i);
    }
}

/// A session as the store hands it back: its values (JSON text per key) and its owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Each key's value, as JSON text.
    pub values: Values,
    /// The user the session belongs to, if it was logged in.
    pub user: Option<String>,
}

/// One change to a session's values. Changes are applied per key: two requests of one
/// session that change different keys both keep their changes; for one key the last write
/// wins, except [`Op::Increment`], which adds atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Sets a key to a JSON value.
    Set(String, String),
    /// Removes a key.
    Remove(String),
    /// Adds to an integer value (a missing key counts as 0).
    Increment(String, i64),
}

/// What to write for one request.
#[derive(Debug, Clone)]
pub struct Save {
    /// The session's storage key (the hash of its id).
    pub key: String,
    /// The storage key it had before `cycle_id`: its values move to `key`, and the old id
    /// stops working.
    pub renamed_from: Option<String>,
    /// The changes, in order.
    pub ops: Vec<Op>,
    /// The owner to record (login), if it changed.
    pub user: Option<String>,
    /// The session's owner as loaded, if it had one: for stores that index sessions by
    /// user and must move the entry when the id changes.
    pub owner: Option<String>,
    /// True for a session this request created.
    pub new: bool,
    /// With `user` set: the most sessions the user may have. When this one would exceed
    /// it, the user's oldest sessions (by creation) end.
    pub max_per_user: usize,
}

/// What [`SessionStore::save`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Saved {
    /// False if nothing was written: the session was not new and no longer exists.
    pub applied: bool,
    /// The value each [`Op::Increment`] of the save left in the store, in their order.
    pub counts: Vec<i64>,
}

impl Saved {
    /// Written; `counts` as [`Saved::counts`].
    pub fn applied(counts: Vec<i64>) -> Self {
        Saved {
            applied: true,
            counts,
        }
    }

    /// Nothing written: the session is gone.
    pub fn gone() -> Self {
        Saved::default()
    }
}

/// The timeouts a store enforces.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// A session unused for this long is gone.
    pub idle: Duration,
    /// A session this old is gone, however busy.
    pub absolute: Duration,
    /// Reading a session pushes its idle expiry back at most this often.
    pub touch_every: Duration,
}

/// Keeps sessions. Every method is one round trip for a networked store.
pub trait SessionStore: Send + Sync + 'static {
    /// The session under `key`, or `None` if there is none (or it expired, idle or
    /// absolute). Also extends its idle expiry if the last extension is older than
    /// `touch_every`, in the same call.
    fn load(&self, key: &str, life: Lifetimes) -> StoreFuture<Option<Record>>;

    /// [`load`](Self::load) for stores that answer without waiting (in-process ones):
    /// `Some` answer, and no future to box. The default, `None`, means "call `load`".
    fn load_now(
        &self,
        key: &str,
        life: Lifetimes,
    ) -> Option<Result<Option<Record>, StoreUnavailable>> {
        let _ = (key, life);
        None
    }

    /// [`load_now`](Self::load_now) for in-process stores that keep each record behind a
    /// reference count: the stored record itself, shared with the request until it
    /// changes something (nothing is copied for a request that only reads). The default,
    /// `None`, means "call `load_now`".
    fn load_shared(
        &self,
        key: &str,
        life: Lifetimes,
    ) -> Option<Result<Option<Arc<Record>>, StoreUnavailable>> {
        let _ = (key, life);
        None
    }

    /// Applies `save` and sets the idle expiry, atomically. Returns [`Saved::gone`],
    /// applying nothing, if the session is not new and no longer exists (it expired, was
    /// logged out, or its id was rotated by a concurrent request): a late write must not
    /// bring a session back. Otherwise [`Saved::applied`] with the value each increment
    /// left. On a login (`user` set) the session joins the user's index, and the user's
    /// oldest sessions beyond `max_per_user` end.
    fn save(&self, save: Save, life: Lifetimes) -> StoreFuture<Saved>;

    /// Deletes the session under `key` (logout).
    fn destroy(&self, key: &str) -> StoreFuture<()>;

    /// Deletes every session of `user` (log out everywhere); returns how many.
    fn destroy_user(&self, user: &str) -> StoreFuture<u64>;
}

/// Sessions in this process: for one instance, tests and development. Bounded: at most
/// `max_sessions` (default 100,000); expired sessions are dropped as the map is used, and a
/// full store drops the sessions closest to their idle expiry first.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Mem>>,
    clock: Clock,
    max: usize,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_sessions", &self.max)
            .finish_non_exhaustive()
    }
}

/// Sessions by storage key. The keys are SHA-256 digests (of ids the server made, or of
/// whatever a client sends, for lookups), which no client can steer, so a fast hasher is
/// safe here. The user index keeps the standard one: user names may come from clients.
type Sessions = HashMap<String, Entry, foldhash::fast::RandomState>;

#[derive(Default)]
struct Mem {
    sessions: Sessions,
    users: HashMap<String, HashSet<String>>,
    ops: u64,
}

struct Entry {
    /// Shared with the requests that read it; a save changes a copy if any still hold it.
    record: Arc<Record>,
    created_us: u64,
    touched_us: u64,
    expires_us: u64,
}

impl Entry {
    /// Neither idle nor absolute timeout has passed.
    fn alive(&self, now: u64, life: Lifetimes) -> bool {
        now < self.expires_us && now.saturating_sub(self.created_us) < us(life.absolute)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store of at most 100,000 sessions.
    pub fn new() -> Self {
        Self::with_max_sessions(100_000, Clock::default()).expect("the default is valid")
    }

    /// A store of at most `max` sessions, reading `clock` ([`Clock::tokio`] in tests that
    /// pause time).
    ///
    /// # Errors
    ///
    /// A `max` of 0.
    pub fn with_max_sessions(max: usize, clock: Clock) -> Result<Self, ConfigError> {
        if max == 0 {
            return Err(ConfigError::new("max_sessions", "must be at least 1"));
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(Mem::default())),
            clock,
            max,
        })
    }

    /// How many sessions are held (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// True if none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn load_sync(&self, key: &str, life: Lifetimes) -> Option<Arc<Record>> {
        let now = self.clock.now_us();
        let mut m = self.lock();
        match m.sessions.get_mut(key) {
            Some(e) if e.alive(now, life) => {
                if now.saturating_sub(e.touched_us) >= us(life.touch_every) {
                    e.touched_us = now;
                    e.expires_us = now.saturating_add(us(life.idle));
                }
                Some(e.record.clone())
            }
            Some(_) => {
                m.remove(key);
                None
            }
            None => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mem> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Mem {
    fn alive(&self, key: &str, now: u64, life: Lifetimes) -> bool {
        self.sessions.get(key).is_some_and(|e| e.alive(now, life))
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let e = self.sessions.remove(key)?;
        if let Some(u) = &e.record.user
            && let Some(set) = self.users.get_mut(u)
        {
            set.remove(key);
            if set.is_empty() {
                self.users.remove(u);
            }
        }
        Some(e)
    }

    /// Ends `user`'s oldest sessions (dead ones first) until at most `max` are left,
    /// never `keep`.
    fn cap_user(&mut self, user: &str, keep: &str, max: usize, now: u64, life: Lifetimes) {
        let Some(set) = self.users.get(user) else {
            return;
        };
        if set.len() <= max {
            return;
        }
        let mut all: Vec<(bool, u64, String)> = set
            .iter()
            .filter(|k| k.as_str() != keep)
            .map(|k| match self.sessions.get(k) {
                Some(e) => (e.alive(now, life), e.created_us, k.clone()),
                None => (false, 0, k.clone()),
            })
            .collect();
        all.sort_unstable();
        let excess = set.len() - max.max(1);
        for (_, _, k) in all.into_iter().take(excess) {
            if self.remove(&k).is_none()
                && let Some(set) = self.users.get_mut(user)
            {
                set.remove(&k);
            }
        }
    }

    /// Drops expired sessions every 1,024 operations, and makes room when full: a full
    /// store evicts, among a few sessions it looks at, the one closest to expiry, anonymous
    /// sessions before logged-in ones, so each save does bounded work.
    fn upkeep(&mut self, now: u64, life: Lifetimes, max: usize) {
        self.ops += 1;
        if self.ops.is_multiple_of(1024) {
            let dead: Vec<String> = self
                .sessions
                .iter()
                .filter(|(_, e)| {
                    now >= e.expires_us || now.saturating_sub(e.created_us) >= us(life.absolute)
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in dead {
                self.remove(&k);
            }
        }
        while self.sessions.len() >= max {
            let Some(k) = self
                .sessions
                .iter()
                .take(16)
                .min_by_key(|(_, e)| (e.record.user.is_some(), e.expires_us))
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove(&k);
        }
    }
}

impl SessionStore for MemoryStore {
    fn load(&self, key: &str, life: Lifetimes) -> StoreFuture<Option<Record>> {
        let record = self.load_sync(key, life).map(Arc::unwrap_or_clone);
        Box::pin(std::future::ready(Ok(record)))
    }

    fn load_now(
        &self,
        key: &str,
        life: Lifetimes,
    ) -> Option<Result<Option<Record>, StoreUnavailable>> {
        Some(Ok(self.load_sync(key, life).map(Arc::unwrap_or_clone)))
    }

    fn load_shared(
        &self,
        key: &str,
        life: Lifetimes,
    ) -> Option<Result<Option<Arc<Record>>, StoreUnavailable>> {
        Some(Ok(self.load_sync(key, life)))
    }

    fn save(&self, save: Save, life: Lifetimes) -> StoreFuture<Saved> {
        let now = self.clock.now_us();
        let mut m = self.lock();
        let from_old = save
            .renamed_from
            .as_deref()
            .filter(|old| m.alive(old, now, life))
            .and_then(|old| m.remove(old));
        let current = match from_old {
            Some(e) => Some(e),
            None if m.alive(&save.key, now, life) => m.remove(&save.key),
            None => {
                m.remove(&save.key);
                None
            }
        };
        let mut entry = match current {
            Some(e) => e,
            None if save.new => Entry {
                record: Arc::default(),
                created_us: now,
                touched_us: now,
                expires_us: now,
            },
            None => return Box::pin(std::future::ready(Ok(Saved::gone()))),
        };
        m.upkeep(now, life, self.max);
        let mut counts = Vec::new();
        let record = Arc::make_mut(&mut entry.record);
        for op in save.ops {
            match op {
                Op::Set(k, v) => {
                    record.values.insert(k, v);
                }
                Op::Remove(k) => {
                    record.values.remove(&k);
                }
                Op::Increment(k, by) => {
                    let cur = record
                        .values
                        .get(&k)
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(0);
                    let next = cur.saturating_add(by);
                    counts.push(next);
                    record.values.insert(k, next.to_string());
                }
            }
        }
        let login = save.user.is_some();
        if let Some(u) = save.user {
            record.user = Some(u);
        }
        entry.touched_us = now;
        entry.expires_us = now.saturating_add(us(life.idle));
        let user = entry.record.user.clone();
        m.sessions.insert(save.key.clone(), entry);
        if let Some(u) = user {
            m.users
                .entry(u.clone())
                .or_default()
                .insert(save.key.clone());
            if login {
                m.cap_user(&u, &save.key, save.max_per_user, now, life);
            }
        }
        Box::pin(std::future::ready(Ok(Saved::applied(counts))))
    }

    fn destroy(&self, key: &str) -> StoreFuture<()> {
        self.lock().remove(key);
        Box::pin(std::future::ready(Ok(())))
    }

    fn destroy_user(&self, user: &str) -> StoreFuture<u64> {
        let mut m = self.lock();
        let keys: Vec<String> = m
            .users
            .get(user)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let n = keys.iter().filter(|k| m.remove(k).is_some()).count() as u64;
        Box::pin(std::future::ready(Ok(n)))
    }
}
