//! The Redis tier: entries as hashes, read by a pipeline of plain commands and written by
//! a Lua script that checks the fences (one round trip each, Redis `TIME` as the clock), per-key generations and tag versions as fences, and
//! the pub/sub subscriber that carries invalidations to every instance's L1.
//!
//! Layout (prefix `p`): entry `p:cache:{key}` (hash: `v` value, `f` fresh until, `w` end
//! of stale-while-revalidate, `i` end of stale-if-error, `c` stored at, all Redis ms, `t`
//! tags as JSON, on a Cluster `q` the prefix generation it was loaded under), generation
//! `p:cache:{key}:g`, tag version `p:cache-tag:{tag}`, prefix generation
//! `p:cache-meta:{prefix-gen}`, channel `p:cache-invalidations`.
//!
//! On one Redis, a read is one pipeline (the entry, its generation, the tags' versions and
//! the prefix generation) and the write script checks every fence before it writes. On a
//! Cluster those keys live on different slots, so no one command may touch them together:
//! a read sends the entry's pipeline (entry and generation, one slot) and a `GET` per tag
//! and for the prefix generation at the same time (one round trip in time, a command per
//! slot); the write script checks the generation only and records in the entry the tag
//! versions and prefix generation its load began under; and a read takes an entry only if
//! they are still the current ones. A write that raced an invalidation is then stored but
//! never served. A prefix invalidation on a Cluster does not scan the masters for the
//! prefix's entries: the new prefix generation makes every stored entry stale instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

use super::entry::{Entry, Lifetimes};
use crate::StoreUnavailable;
use crate::clock::Clock;
use crate::redis::{RedisBackend, Script, Value, cmd, pipe};

/// After an L2 failure, skip L2 for this long so a dead Redis costs one timeout, not one
/// per miss.
const L2_BACKOFF_US: u64 = 500_000;
/// Generation keys outlive any load; tag versions outlive any entry (entries are capped
/// at half of it), so an expired version can never make an old entry valid again.
const GEN_TTL_MS: u64 = 24 * 3600 * 1000;
const TAG_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
const MAX_ENTRY_MS: u64 = TAG_TTL_MS / 2;

const SET: &str = r"
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[5] then return 0 end
if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[6] then return 0 end
for i = 4, #KEYS do
  if (redis.call('GET', KEYS[i]) or '0') ~= ARGV[i + 4] then return 0 end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local f = now + tonumber(ARGV[2])
local w = f + tonumber(ARGV[3])
local i = f + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'f', f, 'w', w, 'i', i, 'c', now, 't', ARGV[7])
redis.call('PEXPIRE', KEYS[1], math.max(1, math.max(w, i) - now))
-- A tag in use keeps its version: its key lives as long as entries are stored with it.
for k = 4, #KEYS do redis.call('PEXPIRE', KEYS[k], ARGV[#ARGV]) end
return 1
";

const INVALIDATE_KEY: &str = r"
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[1])
return redis.call('PUBLISH', ARGV[1], ARGV[2])
";

/// Tag versions are Redis times in µs (or one more than the last, if the clock stalls), so
/// a tag key that expired and came back never repeats a version an entry recorded.
const INVALIDATE_TAG: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local t = redis.call('TIME')
local v = string.format('%.0f', math.max(cur + 1, tonumber(t[1]) * 1000000 + tonumber(t[2])))
redis.call('SET', KEYS[1], v, 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[1], 't' .. ARGV[4] .. v .. ' ' .. ARGV[2])
return v
";

/// KEYS[1] the prefix generation. Moves it to Redis's time in µs (or one past it, if the
/// clock stalls), as tag versions move: on a Cluster, a generation that failed over before
/// it replicated and was bumped again never repeats a value entries were loaded under.
const BUMP_PREFIX_GEN: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local t = redis.call('TIME')
local v = string.format('%.0f', math.max(cur + 1, tonumber(t[1]) * 1000000 + tonumber(t[2])))
redis.call('SET', KEYS[1], v)
return v
";

/// The write on a Cluster: KEYS entry, generation (one slot). ARGV as [`SET`] up to the
/// generation, then the prefix generation and the tags JSON, recorded in the entry.
const SET_CLUSTER: &str = r"
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[5] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local f = now + tonumber(ARGV[2])
local w = f + tonumber(ARGV[3])
local i = f + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'f', f, 'w', w, 'i', i, 'c', now, 't', ARGV[7], 'q', ARGV[6])
redis.call('PEXPIRE', KEYS[1], math.max(1, math.max(w, i) - now))
return 1
";

pub(crate) struct L2 {
    pub(crate) backend: RedisBackend,
    pub(crate) channel: String,
    pgen_key: String,
    /// On a Redis Cluster: reads and writes as the module docs say.
    cluster: bool,
    set: Script,
    invalidate_key: Script,
    invalidate_tag: Script,
    bump_prefix_gen: Script,
    down_until: AtomicU64,
    /// Failures logged at WARN at most once per 10 s.
    warn: crate::error::Throttle,
    /// This instance's id in messages (16 hex digits), so it skips its own.
    me: String,
}

/// What a store must find unchanged in Redis to write.
pub(crate) struct Fence {
    generation: String,
    pgen: String,
    pub(crate) tag_versions: Vec<u64>,
    /// Redis's clock at the read, µs.
    redis_us: u64,
}

impl Fence {
    /// Tag versions (Redis µs times) older than this belong to keys that may have expired.
    pub(crate) fn expired_before(&self) -> u64 {
        self.redis_us
            .saturating_sub(TAG_TTL_MS.saturating_mul(1000))
    }
}

pub(crate) struct Read {
    pub(crate) entry: Option<Arc<Entry>>,
    pub(crate) fence: Fence,
}

impl L2 {
    pub(crate) fn new(backend: RedisBackend, seed: u64) -> Self {
        let backend_is_cluster = backend.is_cluster();
        Self {
            channel: backend.channel("cache-invalidations"),
            pgen_key: backend.key("cache-meta", "prefix-gen"),
            cluster: backend.is_cluster(),
            backend,
            set: Script::new(if backend_is_cluster { SET_CLUSTER } else { SET }),
            invalidate_key: Script::new(INVALIDATE_KEY),
            invalidate_tag: Script::new(INVALIDATE_TAG),
            bump_prefix_gen: Script::new(BUMP_PREFIX_GEN),
            down_until: AtomicU64::new(0),
            warn: crate::error::Throttle::new(),
            me: format!("{seed:016x}"),
        }
    }

    fn me(&self) -> &str {
        &self.me
    }

    fn available(&self, clock: &Clock) -> bool {
        clock.now_us() >= self.down_until.load(Ordering::Relaxed)
    }

    fn failed(&self, clock: &Clock, err: &StoreUnavailable) {
        match self.warn.ready(std::time::Duration::from_secs(10)) {
            Some(skipped) => tracing::warn!(
                error = %err,
                skipped,
                "cache L2 unavailable; serving from L1 and the loader"
            ),
            None => tracing::debug!(error = %err, "cache L2 call failed"),
        }
        self.down_until.store(
            clock.now_us().saturating_add(L2_BACKOFF_US),
            Ordering::Relaxed,
        );
    }

    /// Reads `key` and the fence values in one round trip: a pipeline of plain commands
    /// (`TIME`, the generations, the tags' versions, `HMGET` of the entry), which costs
    /// Redis a fraction of a script call. `None` if Redis is failing (then nothing is
    /// written back to L2 for this load).
    pub(crate) async fn get(&self, key: &str, tags: &[&str], clock: &Clock) -> Option<Read> {
        if !self.available(clock) {
            return None;
        }
        let reply = if self.cluster {
            self.get_cluster(key, tags).await
        } else {
            let mut p = pipe();
            p.cmd("TIME")
                .cmd("GET")
                .arg(self.backend.key_with_suffix("cache", key, "g"))
                .cmd("GET")
                .arg(&self.pgen_key);
            for t in tags {
                p.cmd("GET").arg(self.backend.key("cache-tag", t));
            }
            p.cmd("HMGET")
                .arg(self.backend.key("cache", key))
                .arg(&["v", "f", "w", "i", "c", "t"]);
            self.backend.pipeline("cache_get", &p).await
        };
        let reply: Vec<Value> = match reply {
            Ok(v) => v,
            Err(e) => {
                self.failed(clock, &e);
                return None;
            }
        };
        let Some(mut read) = parse_get(reply, tags, clock.now_us()) else {
            tracing::warn!("cache L2 answered in an unexpected shape; treating it as a miss");
            return None;
        };
        // Tags the entry carries that the caller did not name (a plain `get` of a tagged
        // value): one more round trip to check their versions.
        if let Some(entry) = &read.entry {
            let unknown: Vec<&(Box<str>, u64)> = entry
                .tags
                .iter()
                .filter(|(t, _)| !tags.contains(&&**t))
                .collect();
            if !unknown.is_empty() {
                let keys: Vec<String> = unknown
                    .iter()
                    .map(|(t, _)| self.backend.key("cache-tag", t))
                    .collect();
                let current = match self.get_each(&keys).await {
                    Ok(v) => v,
                    Err(e) => {
                        self.failed(clock, &e);
                        return None;
                    }
                };
                let all_current = unknown
                    .iter()
                    .zip(current)
                    .all(|((_, v), now)| as_int(&now).unwrap_or(0).max(0) as u64 == *v);
                if !all_current {
                    read.entry = None;
                }
            }
        }
        Some(read)
    }

    /// The read on a Cluster, in the shape of the one-Redis pipeline's reply: the entry's
    /// slot (`TIME`, its generation, its fields with `q`) in one pipeline, and a `GET` of
    /// the prefix generation and of each tag's version on theirs, all at once.
    async fn get_cluster(&self, key: &str, tags: &[&str]) -> Result<Vec<Value>, StoreUnavailable> {
        let mut p = pipe();
        p.cmd("TIME")
            .cmd("GET")
            .arg(self.backend.key_with_suffix("cache", key, "g"))
            .cmd("HMGET")
            .arg(self.backend.key("cache", key))
            .arg(&["v", "f", "w", "i", "c", "t", "q"]);
        let mut meta = Vec::with_capacity(1 + tags.len());
        meta.push(self.pgen_key.clone());
        meta.extend(tags.iter().map(|t| self.backend.key("cache-tag", t)));
        let (entry, meta) = futures_util::future::join(
            self.backend.pipeline::<Vec<Value>>("cache_get", &p),
            self.get_each(&meta),
        )
        .await;
        let (mut entry, meta) = (entry?, meta?);
        if entry.len() != 3 {
            return Ok(Vec::new());
        }
        let fields = entry.pop().unwrap_or(Value::Nil);
        entry.extend(meta);
        entry.push(fields);
        Ok(entry)
    }

    /// `GET` of each key: one pipeline on one Redis; on a Cluster (the keys on different
    /// slots) one command each, sent together.
    async fn get_each(&self, keys: &[String]) -> Result<Vec<Value>, StoreUnavailable> {
        if !self.cluster {
            let mut p = pipe();
            for k in keys {
                p.cmd("GET").arg(k);
            }
            return self.backend.pipeline("cache_get", &p).await;
        }
        let gets = keys.iter().map(|k| async move {
            let get = cmd("GET").arg(k).clone();
            self.backend.query::<Value>("cache_get", &get).await
        });
        futures_util::future::try_join_all(gets).await
    }

    /// Writes `entry` unless the fence moved. `Some(true)` stored, `Some(false)` fenced
    /// off (an invalidation happened), `None` Redis failed.
    pub(crate) async fn set(
        &self,
        key: &str,
        entry: &Entry,
        ttl: Duration,
        lifetimes: Lifetimes,
        tags: &[&str],
        fence: &Fence,
    ) -> Option<bool> {
        let ms = crate::duration::millis;
        let ttl_ms = ms(ttl).clamp(1, MAX_ENTRY_MS);
        let swr_ms = ms(lifetimes.swr).min(MAX_ENTRY_MS - ttl_ms);
        let sie_ms = ms(lifetimes.sie).min(MAX_ENTRY_MS - ttl_ms);
        let tags_json = serde_json::to_string(
            &entry
                .tags
                .iter()
                .map(|(t, v)| (t.as_ref(), v.to_string(), self.backend.key("cache-tag", t)))
                .collect::<Vec<_>>(),
        )
        .ok()?;
        let mut c = cmd("EVALSHA");
        if self.cluster {
            // One slot: the fences on other slots are checked by the readers.
            c.arg(self.set.get_hash())
                .arg(2)
                .arg(self.backend.key("cache", key))
                .arg(self.backend.key_with_suffix("cache", key, "g"));
        } else {
            c.arg(self.set.get_hash())
                .arg(3 + tags.len())
                .arg(self.backend.key("cache", key))
                .arg(self.backend.key_with_suffix("cache", key, "g"))
                .arg(&self.pgen_key);
            for t in tags {
                c.arg(self.backend.key("cache-tag", t));
            }
        }
        c.arg(&entry.value[..])
            .arg(ttl_ms)
            .arg(swr_ms)
            .arg(sie_ms)
            .arg(&fence.generation)
            .arg(&fence.pgen)
            .arg(tags_json);
        if !self.cluster {
            for v in &fence.tag_versions {
                c.arg(v.to_string());
            }
            c.arg(TAG_TTL_MS);
        }
        match self
            .backend
            .evalsha::<i64>("cache_set", &self.set, &c)
            .await
        {
            Ok(n) => Some(n == 1),
            Err(e) => {
                tracing::debug!(error = %e, "cache L2 write failed");
                None
            }
        }
    }

    pub(crate) async fn invalidate_key(&self, key: &str) -> Result<(), StoreUnavailable> {
        let mut c = cmd("EVALSHA");
        c.arg(self.invalidate_key.get_hash())
            .arg(2)
            .arg(self.backend.key("cache", key))
            .arg(self.backend.key_with_suffix("cache", key, "g"))
            .arg(&self.channel)
            .arg(format!("k{}{key}", self.me()))
            .arg(GEN_TTL_MS);
        self.backend
            .evalsha::<i64>("cache_invalidate", &self.invalidate_key, &c)
            .await
            .map(drop)
    }

    /// Tells the other instances to drop `key` from L1, without touching L2.
    pub(crate) async fn publish_key(&self, key: &str) -> Result<(), StoreUnavailable> {
        self.backend
            .query::<i64>(
                "cache_invalidate",
                cmd("PUBLISH")
                    .arg(&self.channel)
                    .arg(format!("k{}{key}", self.me())),
            )
            .await
            .map(drop)
    }

    pub(crate) async fn invalidate_tag(&self, tag: &str) -> Result<u64, StoreUnavailable> {
        let mut c = cmd("EVALSHA");
        c.arg(self.invalidate_tag.get_hash())
            .arg(1)
            .arg(self.backend.key("cache-tag", tag))
            .arg(&self.channel)
            .arg(tag)
            .arg(TAG_TTL_MS)
            .arg(self.me());
        self.backend
            .evalsha::<u64>("cache_invalidate", &self.invalidate_tag, &c)
            .await
    }

    /// Bumps the prefix generation (fencing every load under way), deletes the matching
    /// entries (a `SCAN` of the cache's keys: O(keys), unlike tags), and tells every
    /// instance.
    pub(crate) async fn invalidate_prefix(&self, prefix: &str) -> Result<(), StoreUnavailable> {
        let mut bump = cmd("EVALSHA");
        bump.arg(self.bump_prefix_gen.get_hash())
            .arg(1)
            .arg(&self.pgen_key);
        let _: u64 = self
            .backend
            .evalsha("cache_invalidate", &self.bump_prefix_gen, &bump)
            .await?;
        if self.cluster {
            // No scan of every master: the entries recorded the old prefix generation, so
            // readers no longer take any of them.
            return self.publish_prefix(prefix).await;
        }
        let mut pattern = self.backend.key_head("cache");
        for ch in crate::key::escape_key_part(prefix).chars() {
            if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(ch);
        }
        pattern.push('*');
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .backend
                .query(
                    "cache_scan",
                    cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await?;
            // Generation keys stay: deleting one would let a count repeat.
            let keys: Vec<Vec<u8>> = keys.into_iter().filter(|k| !k.ends_with(b"}:g")).collect();
            if !keys.is_empty() {
                let _: i64 = self
                    .backend
                    .query("cache_invalidate", cmd("UNLINK").arg(keys))
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        self.publish_prefix(prefix).await
    }

    /// Tells every instance to drop its L1 copies under `prefix`.
    async fn publish_prefix(&self, prefix: &str) -> Result<(), StoreUnavailable> {
        let _: i64 = self
            .backend
            .query(
                "cache_invalidate",
                cmd("PUBLISH")
                    .arg(&self.channel)
                    .arg(format!("p{}{prefix}", self.me())),
            )
            .await?;
        Ok(())
    }
}

fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        _ => as_bytes(v).and_then(|b| std::str::from_utf8(b).ok()?.parse().ok()),
    }
}

/// Parses the read pipeline's replies: `TIME`, generation, prefix generation, one version
/// per caller tag, then the entry's fields. An entry whose recorded version of a caller tag
/// differs from the current one is dropped here.
fn parse_get(reply: Vec<Value>, tags: &[&str], now: u64) -> Option<Read> {
    let ntags = tags.len();
    if reply.len() != 4 + ntags {
        return None;
    }
    let text = |v: &Value| match v {
        Value::Nil => Some("0".to_owned()),
        v => as_bytes(v).map(|b| String::from_utf8_lossy(b).into_owned()),
    };
    let (redis_ms, redis_us) = match &reply[0] {
        Value::Array(t) if t.len() == 2 => {
            let (secs, micros) = (as_int(&t[0])?, as_int(&t[1])?);
            (
                secs.saturating_mul(1000).saturating_add(micros / 1000),
                secs.saturating_mul(1_000_000).saturating_add(micros).max(0) as u64,
            )
        }
        _ => return None,
    };
    let fence = Fence {
        generation: text(&reply[1])?,
        pgen: text(&reply[2])?,
        tag_versions: reply[3..3 + ntags]
            .iter()
            .map(|v| match v {
                Value::Nil => Some(0),
                v => as_int(v).map(|n| n.max(0) as u64),
            })
            .collect::<Option<_>>()?,
        redis_us,
    };
    let Value::Array(fields) = &reply[3 + ntags] else {
        return None;
    };
    // Six fields; seven on a Cluster, where the entry records its prefix generation.
    let recorded_pgen = match fields.len() {
        6 => None,
        7 => Some(match &fields[6] {
            Value::Nil => String::new(),
            v => String::from_utf8_lossy(as_bytes(v)?).into_owned(),
        }),
        _ => return None,
    };
    let entry = match &fields[0] {
        Value::Nil => None,
        v => {
            let value = Bytes::copy_from_slice(as_bytes(v)?);
            let us = |ms: i64| ms.saturating_mul(1000);
            let at = |ms: i64| now.saturating_add_signed(us(ms.saturating_sub(redis_ms)));
            let fresh_until = at(as_int(&fields[1])?);
            let swr_until = at(as_int(&fields[2])?);
            let sie_until = at(as_int(&fields[3])?);
            let stored_at =
                now.saturating_sub(us(redis_ms.saturating_sub(as_int(&fields[4])?)).max(0) as u64);
            let recorded: Vec<(String, String, String)> =
                serde_json::from_slice(as_bytes(&fields[5])?).ok()?;
            let recorded = recorded
                .into_iter()
                .map(|(t, v, _)| Some((t.into_boxed_str(), v.parse().ok()?)))
                .collect::<Option<Box<[(Box<str>, u64)]>>>()?;
            let current = recorded.iter().all(|(t, v)| {
                tags.iter()
                    .position(|c| *c == &**t)
                    .is_none_or(|i| fence.tag_versions[i] == *v)
            }) && recorded_pgen.is_none_or(|g| g == fence.pgen);
            current.then(|| {
                Arc::new(Entry::from_parts(
                    value,
                    stored_at,
                    fresh_until,
                    swr_until,
                    sie_until,
                    recorded,
                ))
            })
        }
    };
    Some(Read { entry, fence })
}

/// What the invalidation subscriber may do to the engine it serves: all it knows of it.
pub(crate) trait Local: Send + Sync + 'static {
    /// Another instance invalidated something (or this one did, for a tag: versions only
    /// move forward, so its own tag messages apply too).
    fn invalidated(&self, what: Invalidation<'_>);
    /// Whether every invalidation from other instances reaches this one.
    fn is_subscribed(&self) -> bool;
    /// The subscription came up or went down: either way, local copies are distrusted.
    fn set_subscribed(&self, on: bool);
}

/// One invalidation message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalidation<'a> {
    Key(&'a str),
    Prefix(&'a str),
    Tag {
        tag: &'a str,
        version: u64,
        /// Sent by this instance.
        own: bool,
    },
}

/// The invalidation subscriber: applies other instances' invalidations to this L1, and
/// proves its own subscription alive with a heartbeat. Ends when the engine is dropped.
pub(crate) async fn listen(
    engine: Weak<dyn Local>,
    backend: RedisBackend,
    channel: String,
    heartbeat: Duration,
    seed: u64,
) {
    let me = format!("{seed:016x}");
    let beat = format!("h{me}");
    let mut delay = Duration::from_millis(50);
    loop {
        let subscribed = backend.subscribe_all(&channel).await;
        let Some(local) = engine.upgrade() else {
            return;
        };
        let pubsubs = match subscribed {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "cache invalidation subscriber cannot subscribe");
                if local.is_subscribed() {
                    tracing::warn!(
                        "cache invalidation subscription lost; local copies are distrusted"
                    );
                    local.set_subscribed(false);
                }
                drop(local);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        delay = Duration::from_millis(50);
        local.set_subscribed(true);
        tracing::info!(channel = %channel, "cache invalidation subscriber listening");
        drop(local);
        // Every subscription's messages, and a `None` when any of them ends: then the
        // subscription is lost and made again (on a Cluster, from the current masters).
        let mut stream = futures_util::stream::select_all(pubsubs.into_iter().map(|p| {
            p.into_on_message()
                .map(Some)
                .chain(futures_util::stream::once(async { None }))
                .boxed()
        }));
        let mut heard = tokio::time::Instant::now();
        let mut next_beat = tokio::time::Instant::now();
        loop {
            if engine.strong_count() == 0 {
                return;
            }
            let now = tokio::time::Instant::now();
            if now >= next_beat {
                if now.duration_since(heard) > heartbeat * 3 {
                    tracing::warn!(
                        "cache invalidation subscriber heard no heartbeat; resubscribing"
                    );
                    break;
                }
                let backend = backend.clone();
                let (channel, beat) = (channel.clone(), beat.clone());
                tokio::spawn(async move {
                    let _ = backend
                        .query::<i64>("cache_heartbeat", cmd("PUBLISH").arg(channel).arg(beat))
                        .await;
                });
                next_beat = now + heartbeat;
            }
            let msg = match tokio::time::timeout_at(next_beat, stream.next()).await {
                Err(_) => continue,
                Ok(None | Some(None)) => break,
                Ok(Some(Some(msg))) => msg,
            };
            let payload = msg.get_payload_bytes();
            if payload == beat.as_bytes() {
                heard = tokio::time::Instant::now();
                continue;
            }
            let Some(local) = engine.upgrade() else {
                return;
            };
            apply(&*local, payload, &me);
        }
        let Some(local) = engine.upgrade() else {
            return;
        };
        tracing::warn!("cache invalidation subscription lost; local copies are distrusted");
        local.set_subscribed(false);
    }
}

/// Applies one message: `k<sender><key>`, `t<sender><version> <tag>`, `p<sender><prefix>`
/// (`<sender>` is 16 hex digits), `h...` heartbeats of other instances (ignored).
fn apply(local: &dyn Local, payload: &[u8], me: &str) {
    let (Some(&kind), Some(sender), Some(body)) =
        (payload.first(), payload.get(1..17), payload.get(17..))
    else {
        return;
    };
    let Ok(body) = std::str::from_utf8(body) else {
        return;
    };
    let own = sender == me.as_bytes();
    match kind {
        b'k' if !own => local.invalidated(Invalidation::Key(body)),
        b'p' if !own => local.invalidated(Invalidation::Prefix(body)),
        b't' => {
            // Own tag messages are applied too: versions only move forward.
            if let Some((version, tag)) = body.split_once(' ')
                && let Ok(version) = version.parse()
            {
                local.invalidated(Invalidation::Tag { tag, version, own });
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_replies_of_the_wrong_shape_are_misses_not_panics() {
        let time = || {
            Value::Array(vec![
                Value::BulkString(b"10".to_vec()),
                Value::BulkString(b"0".to_vec()),
            ])
        };
        let cases = [
            ("empty", vec![]),
            ("short", vec![time(), Value::Nil]),
            (
                "bad time",
                vec![
                    Value::Int(1),
                    Value::Nil,
                    Value::Nil,
                    Value::Array(vec![Value::Nil; 6]),
                ],
            ),
            (
                "fields not an array",
                vec![time(), Value::Nil, Value::Nil, Value::Int(3)],
            ),
        ];
        for (name, reply) in cases {
            assert!(parse_get(reply, &[], 1).is_none(), "case {name}");
        }
        let entry = |tag_version: &str| {
            Value::Array(vec![
                Value::BulkString(b"v".to_vec()),
                Value::BulkString(b"15000".to_vec()),
                Value::BulkString(b"16000".to_vec()),
                Value::BulkString(b"17000".to_vec()),
                Value::BulkString(b"9000".to_vec()),
                Value::BulkString(format!(r#"[["t","{tag_version}","k"]]"#).into_bytes()),
            ])
        };
        // Redis time 10 s; fresh until 15 s; stored at 9 s; local clock at 10 s.
        let ok = vec![
            time(),
            Value::BulkString(b"2".to_vec()),
            Value::Nil,
            Value::BulkString(b"3".to_vec()),
            entry("3"),
        ];
        let read = parse_get(ok, &["t"], 10_000_000).unwrap();
        let e = read.entry.unwrap();
        assert_eq!(e.fresh_until, 15_000_000);
        assert_eq!(e.stored_at, 9_000_000);
        assert_eq!(&*e.tags, &[("t".into(), 3)]);
        assert_eq!(read.fence.tag_versions, vec![3]);
        assert_eq!(read.fence.generation, "2");
        assert_eq!(read.fence.pgen, "0");
        // The tag moved on since the entry was stored: no entry, but the fence stands.
        let stale = vec![
            time(),
            Value::Nil,
            Value::Nil,
            Value::BulkString(b"4".to_vec()),
            entry("3"),
        ];
        let read = parse_get(stale, &["t"], 10_000_000).unwrap();
        assert!(read.entry.is_none());
        assert_eq!(read.fence.tag_versions, vec![4]);
    }
}
