//! [`RedisSessionStore`]: sessions in Redis, shared by every instance.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::store::{Lifetimes, Op, Record, Save, Saved, SessionStore, StoreFuture};
use crate::duration::micros as us;
use crate::redis::{RedisBackend, Script, Value, cmd};

/// What every script starts with: Redis's clock in µs.
const PRELUDE: &str = r"
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
";

/// KEYS[1] session. ARGV: absolute (µs), touch interval (µs), idle (ms).
/// Returns the hash's fields and values, or nil if there is no live session.
const LOAD: &str = r"
local now = now_us()
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return false end
local c, t
for i = 1, #h, 2 do
  if h[i] == '$c' then c = tonumber(h[i + 1]) elseif h[i] == '$t' then t = tonumber(h[i + 1]) end
end
if c == nil or now - c >= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return false
end
if t == nil or now - t >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], '$t', now)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return h
";

/// KEYS[1] session, KEYS[2] its old key (only if the id was cycled: then on the same
/// slot, for the ids share their lineage). ARGV: idle (ms), absolute (µs), user ('' for
/// no change), '1' if the session is new, then triples (op, key, value): s = set,
/// r = remove, i = increment. Returns {0}, writing nothing, for a session that is not new
/// and is gone; else {1, its user or '', then the value each increment left, as text}.
const SAVE: &str = r"
local now = now_us()
local key, old = KEYS[1], KEYS[2] or ''
local idle, abs = ARGV[1], tonumber(ARGV[2])
local user, new = ARGV[3], ARGV[4]
if old ~= '' and redis.call('EXISTS', old) == 1 then
  redis.call('RENAME', old, key)
end
local c = tonumber(redis.call('HGET', key, '$c'))
if c and now - c >= abs then
  redis.call('DEL', key)
  c = nil
end
if c == nil then
  -- Gone (expired, logged out, or rotated away): only a new session is made here.
  if new ~= '1' then return {0} end
  redis.call('HSET', key, '$c', now)
end
if user ~= '' then redis.call('HSET', key, '$u', user) end
local out = {1, redis.call('HGET', key, '$u') or ''}
local i = 5
while i <= #ARGV do
  local op, k = ARGV[i], 'v:' .. ARGV[i + 1]
  if op == 's' then
    redis.call('HSET', key, k, ARGV[i + 2])
  elseif op == 'r' then
    redis.call('HDEL', key, k)
  else
    -- Integers only, as the Rust side reads them (i64); anything else counts as 0, and
    -- the sum saturates instead of wrapping.
    local cur = redis.call('HGET', key, k)
    if not cur or not string.match(cur, '^%-?%d+$') or #cur > 20 then
      redis.call('HSET', key, k, '0')
    end
    local ok = pcall(redis.call, 'HINCRBY', key, k, ARGV[i + 2])
    if not ok then
      local by = ARGV[i + 2]
      redis.call('HSET', key, k, string.sub(by, 1, 1) == '-' and '-9223372036854775808' or '9223372036854775807')
    end
    -- As text: Lua numbers are doubles, which would round values past 2^53.
    out[#out + 1] = redis.call('HGET', key, k)
  end
  i = i + 3
end
redis.call('HSET', key, '$t', now)
redis.call('PEXPIRE', key, idle)
return out
";

/// KEYS[1] a user's index. ARGV: the session's storage key, absolute (µs), the most
/// sessions per user. Adds the session (scored by now: the oldest login ends first; run
/// before the session is written, so no session of the user is ever unindexed), drops
/// members past the absolute timeout, and returns the members past the cap, oldest first,
/// for the caller to delete (they live on other slots) and only then remove from here.
const INDEX: &str = r"
local now = now_us()
local member, abs, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('(%d', now - abs))
redis.call('ZADD', KEYS[1], now, member)
redis.call('PEXPIRE', KEYS[1], math.ceil(abs / 1000))
local over = redis.call('ZCARD', KEYS[1]) - cap
local ended = {}
if over > 0 then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, over)) do
    if #ended < over and m ~= member then ended[#ended + 1] = m end
  end
end
return ended
";

/// KEYS[1] session. Deletes it; returns its user, or nil.
const DESTROY: &str = r"
local u = redis.call('HGET', KEYS[1], '$u')
redis.call('DEL', KEYS[1])
return u
";

/// Sessions in Redis, on one node or a Cluster: one hash per session under
/// `{prefix}:sess:{lineage}rest` (the storage key, hashes of the id: its lineage, shared by
/// the ids a login or `cycle_id` makes from it, is the hash tag, so renaming a session
/// stays within one slot), with the idle timeout as its TTL; and a sorted set per user
/// (`{prefix}:sessidx:{user}`, storage keys by login time) for log out everywhere and the
/// per-user cap. Loading and saving a session are one script on its slot, so one round
/// trip; a login adds one call on the user's index (and a delete per session the cap
/// ends), a logout one, log out everywhere one plus a delete per session. Redis's clock
/// (`TIME`) decides the timeouts, so instances with skewed clocks agree.
#[derive(Clone)]
pub struct RedisSessionStore {
    backend: RedisBackend,
    scripts: Arc<Scripts>,
    session_head: Arc<str>,
}

struct Scripts {
    load: Script,
    save: Script,
    index: Script,
    destroy: Script,
}

impl fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSessionStore")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

fn ms(d: Duration) -> u64 {
    crate::duration::millis(d).max(1)
}

impl RedisSessionStore {
    /// A store on `backend` (whose timeout bounds each call).
    pub fn new(backend: RedisBackend) -> Self {
        Self {
            session_head: Arc::from(backend.key_head("sess")),
            backend,
            scripts: Arc::new(Scripts {
                load: script(LOAD),
                save: script(SAVE),
                index: script(INDEX),
                destroy: script(DESTROY),
            }),
        }
    }

    /// `{prefix}:sess:{lineage}rest` for a storage key (16 digits of lineage, then 48).
    fn key(&self, storage: &str) -> String {
        let (lineage, rest) = storage.split_at(storage.len().min(16));
        let mut k = String::with_capacity(self.session_head.len() + storage.len() + 1);
        k.push_str(&self.session_head);
        k.push_str(lineage);
        k.push('}');
        k.push_str(rest);
        k
    }

    /// Removes `members` from the user index `index`.
    async fn unindex(
        &self,
        index: &str,
        members: &[String],
    ) -> Result<(), crate::StoreUnavailable> {
        let _: i64 = self
            .backend
            .query("session_index", cmd("ZREM").arg(index).arg(members))
            .await?;
        Ok(())
    }

    /// Deletes the sessions under `storage` keys, one call each (on a Cluster they live
    /// on different slots); returns how many existed.
    async fn delete_sessions(&self, storage: &[String]) -> Result<u64, crate::StoreUnavailable> {
        let mut n = 0;
        for m in storage {
            let deleted: u64 = self
                .backend
                .query("session_destroy", cmd("DEL").arg(self.key(m)))
                .await?;
            n += deleted;
        }
        Ok(n)
    }
}

fn record(reply: Value) -> Option<Record> {
    let Value::Array(items) = reply else {
        return None;
    };
    let mut rec = Record::default();
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    for pair in items.chunks_exact(2) {
        let (Some(k), Some(v)) = (text(&pair[0]), text(&pair[1])) else {
            continue;
        };
        if let Some(name) = k.strip_prefix("v:") {
            rec.values.insert(name.to_owned(), v);
        } else if k == "$u" {
            rec.user = Some(v);
        }
    }
    Some(rec)
}

/// The save script's answer, `{0}` or `{1, user, count...}` (each count as text), and the
/// session's user, if it has one.
fn saved(reply: &[Value]) -> (Saved, Option<String>) {
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match reply.first() {
        Some(Value::Int(1)) => {
            let owner = reply.get(1).and_then(text).filter(|u| !u.is_empty());
            let counts = reply
                .iter()
                .skip(2)
                .map(|v| match v {
                    Value::Int(n) => *n,
                    v => text(v).and_then(|t| t.parse().ok()).unwrap_or(0),
                })
                .collect();
            (Saved::applied(counts), owner)
        }
        _ => (Saved::gone(), None),
    }
}

impl SessionStore for RedisSessionStore {
    fn load(&self, key: &str, life: Lifetimes) -> StoreFuture<Option<Record>> {
        let this = self.clone();
        let key = self.key(key);
        Box::pin(async move {
            let mut inv = this.scripts.load.key(key);
            inv.arg(us(life.absolute))
                .arg(us(life.touch_every))
                .arg(ms(life.idle));
            let reply: Value = this.backend.invoke("session_load", &inv).await?;
            Ok(record(reply))
        })
    }

    fn save(&self, save: Save, life: Lifetimes) -> StoreFuture<Saved> {
        let this = self.clone();
        Box::pin(async move {
            // The user's index first, on its own slot (on a login, and when a logged-in
            // session's id changes): if it fails nothing has changed, and once the session
            // is written it is already indexed, so log out everywhere always finds it.
            let indexed = save
                .user
                .clone()
                .or_else(|| save.renamed_from.as_ref().and(save.owner.clone()));
            if let Some(user) = &indexed {
                let index = this.backend.key("sessidx", user);
                let mut inv = this.scripts.index.key(&index);
                inv.arg(&save.key)
                    .arg(us(life.absolute))
                    .arg(save.max_per_user.max(1));
                let ended: Vec<String> = this.backend.invoke("session_index", &inv).await?;
                // Past the cap: the sessions go first, their index entries after, so a
                // failure leaves them indexed for the next login to end.
                if !ended.is_empty() {
                    this.delete_sessions(&ended).await?;
                    this.unindex(&index, &ended).await?;
                }
            }
            let old = save.renamed_from.as_deref().map(|h| this.key(h));
            let mut inv = this.scripts.save.prepare_invoke();
            inv.key(this.key(&save.key));
            if let Some(old) = old {
                // Declared only when there is one: a declared '' would be a key of another
                // slot, which a Cluster refuses.
                inv.key(old);
            }
            inv.arg(ms(life.idle))
                .arg(us(life.absolute))
                .arg(save.user.as_deref().unwrap_or(""))
                .arg(if save.new { "1" } else { "0" });
            for op in &save.ops {
                match op {
                    Op::Set(k, v) => inv.arg("s").arg(k).arg(v),
                    Op::Remove(k) => inv.arg("r").arg(k).arg(""),
                    Op::Increment(k, by) => inv.arg("i").arg(k).arg(*by),
                };
            }
            let reply: Vec<Value> = this.backend.invoke("session_save", &inv).await?;
            let (saved, _) = saved(&reply);
            // The old id's entry: stale once the rename is done. Left behind if this fails
            // (it names a key that no longer exists, which every reader of the index skips).
            if let (Some(user), Some(old)) = (&indexed, &save.renamed_from) {
                let index = this.backend.key("sessidx", user);
                if let Err(e) = this.unindex(&index, std::slice::from_ref(old)).await {
                    tracing::debug!(error = %e, "stale session index entry left");
                }
            }
            Ok(saved)
        })
    }

    fn destroy(&self, key: &str) -> StoreFuture<()> {
        let this = self.clone();
        let key = key.to_owned();
        Box::pin(async move {
            let inv = this.scripts.destroy.key(this.key(&key));
            let user: Option<String> = this.backend.invoke("session_destroy", &inv).await?;
            if let Some(u) = user {
                // The session is gone: a failure here leaves a stale entry, no session.
                let index = this.backend.key("sessidx", &u);
                if let Err(e) = this.unindex(&index, std::slice::from_ref(&key)).await {
                    tracing::debug!(error = %e, "stale session index entry left");
                }
            }
            Ok(())
        })
    }

    fn destroy_user(&self, user: &str) -> StoreFuture<u64> {
        let this = self.clone();
        let index = self.backend.key("sessidx", user);
        Box::pin(async move {
            // Sessions first, then their entries: a failure leaves the rest indexed for a
            // second try. A login meanwhile indexes its session before writing it, so the
            // next pass finds it (or its save finds the session gone).
            let mut n = 0;
            for _ in 0..3 {
                let members: Vec<String> = this
                    .backend
                    .query(
                        "session_destroy_user",
                        cmd("ZRANGE").arg(&index).arg(0).arg(-1),
                    )
                    .await?;
                if members.is_empty() {
                    break;
                }
                n += this.delete_sessions(&members).await?;
                this.unindex(&index, &members).await?;
            }
            Ok(n)
        })
    }
}
