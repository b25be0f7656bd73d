//! [`RedisSessionStore`]: sessions in Redis, shared by every instance.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::store::{Lifetimes, Op, Record, Save, Saved, SessionStore, StoreFuture};
use crate::duration::micros as us;
use crate::redis::{RedisBackend, Script, Value};

/// Lua's side of the key escaping (`escape_key_part`): `%`, `{`, `}` percent-encoded.
const ESCAPE: &str = r"
local function tag(s)
  return (s:gsub('%%', '%%25'):gsub('{', '%%7B'):gsub('}', '%%7D'))
end
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

/// KEYS[1] session, KEYS[2] its old key ('' unless the id was cycled).
/// ARGV: idle (ms), absolute (µs), user ('' for no change), index prefix, old hash, new
/// hash, '1' if the session is new, the most sessions per user, then triples (op, key,
/// value): s = set, r = remove, i = increment. Returns {0}, writing nothing, for a session
/// that is not new and is gone; else {1, the value each increment left, as text}.
///
/// The user's index is a sorted set of session hashes scored by creation time (µs): the
/// cap ends the oldest, and members past the absolute timeout are dropped.
const SAVE: &str = r"
local now = now_us()
local key, old = KEYS[1], KEYS[2]
local idle, abs = ARGV[1], tonumber(ARGV[2])
local user, idx, oldhash, newhash, new = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local cap = tonumber(ARGV[8])
if old ~= '' and redis.call('EXISTS', old) == 1 then
  redis.call('RENAME', old, key)
  local u = redis.call('HGET', key, '$u')
  if u then
    local index = idx .. tag(u) .. '}'
    redis.call('ZREM', index, oldhash)
    redis.call('ZADD', index, redis.call('HGET', key, '$c') or now, newhash)
  end
end
local c = tonumber(redis.call('HGET', key, '$c'))
if c and now - c >= abs then
  local u = redis.call('HGET', key, '$u')
  if u then redis.call('ZREM', idx .. tag(u) .. '}', newhash) end
  redis.call('DEL', key)
  c = nil
end
if c == nil then
  -- Gone (expired, logged out, or rotated away): only a new session is made here.
  if new ~= '1' then return {0} end
  c = now
  redis.call('HSET', key, '$c', now)
end
local out = {1}
local i = 9
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
if user ~= '' then
  local prev = redis.call('HGET', key, '$u')
  if prev and prev ~= user then redis.call('ZREM', idx .. tag(prev) .. '}', newhash) end
  redis.call('HSET', key, '$u', user)
  local index = idx .. tag(user) .. '}'
  local head = string.sub(key, 1, #key - #newhash - 1)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', string.format('(%d', now - abs))
  redis.call('ZADD', index, c, newhash)
  -- Over the cap: the oldest sessions end (never this one).
  local over = redis.call('ZCARD', index) - cap
  if over > 0 then
    for _, h in ipairs(redis.call('ZRANGE', index, 0, over)) do
      if over > 0 and h ~= newhash then
        redis.call('DEL', head .. h .. '}')
        redis.call('ZREM', index, h)
        over = over - 1
      end
    end
  end
  redis.call('PEXPIRE', index, math.ceil(abs / 1000))
end
redis.call('HSET', key, '$t', now)
redis.call('PEXPIRE', key, idle)
return out
";

/// KEYS[1] session. ARGV: index prefix, hash.
const DESTROY: &str = r"
local u = redis.call('HGET', KEYS[1], '$u')
if u then redis.call('ZREM', ARGV[1] .. tag(u) .. '}', ARGV[2]) end
return redis.call('DEL', KEYS[1])
";

/// KEYS[1] the user's index. ARGV: session key prefix.
const DESTROY_USER: &str = r"
local n = 0
for _, h in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  n = n + redis.call('DEL', ARGV[1] .. h .. '}')
end
redis.call('DEL', KEYS[1])
return n
";

/// Sessions in Redis: one hash per session under `{prefix}:sess:{SHA-256 of the id}`, with
/// the idle timeout as its TTL, and a sorted set per user (`{prefix}:sessidx:{user}`, the
/// user's session hashes by creation time) for log out everywhere and the per-user cap. Every operation is one script, so one round trip. Redis's clock (`TIME`)
/// decides the timeouts, so instances with skewed clocks agree.
///
/// The scripts touch the user index beside the session, so they need one Redis, not Redis
/// Cluster (which the backend does not support yet either).
#[derive(Clone)]
pub struct RedisSessionStore {
    backend: RedisBackend,
    scripts: Arc<Scripts>,
    session_head: Arc<str>,
    index_head: Arc<str>,
}

struct Scripts {
    load: Script,
    save: Script,
    destroy: Script,
    destroy_user: Script,
}

impl fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSessionStore")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

fn script(body: &str) -> Script {
    Script::new(&format!("{ESCAPE}{body}"))
}

fn ms(d: Duration) -> u64 {
    crate::duration::millis(d).max(1)
}

impl RedisSessionStore {
    /// A store on `backend` (whose timeout bounds each call).
    pub fn new(backend: RedisBackend) -> Self {
        Self {
            session_head: Arc::from(backend.key_head("sess")),
            index_head: Arc::from(backend.key_head("sessidx")),
            backend,
            scripts: Arc::new(Scripts {
                load: script(LOAD),
                save: script(SAVE),
                destroy: script(DESTROY),
                destroy_user: script(DESTROY_USER),
            }),
        }
    }

    fn key(&self, hash: &str) -> String {
        format!("{}{hash}}}", self.session_head)
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

/// The save script's answer: `{0}`, or `{1, count...}` with each count as text.
fn saved(reply: &[Value]) -> Saved {
    match reply.first() {
        Some(Value::Int(1)) => Saved::applied(
            reply[1..]
                .iter()
                .map(|v| match v {
                    Value::BulkString(b) => std::str::from_utf8(b)
                        .ok()
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0),
                    Value::Int(n) => *n,
                    _ => 0,
                })
                .collect(),
        ),
        _ => Saved::gone(),
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
            let old = save.renamed_from.as_deref().map(|h| this.key(h));
            let mut inv = this.scripts.save.prepare_invoke();
            inv.key(this.key(&save.key)).key(old.unwrap_or_default());
            inv.arg(ms(life.idle))
                .arg(us(life.absolute))
                .arg(save.user.as_deref().unwrap_or(""))
                .arg(&*this.index_head)
                .arg(save.renamed_from.as_deref().unwrap_or(""))
                .arg(&save.key)
                .arg(if save.new { "1" } else { "0" })
                .arg(save.max_per_user.max(1));
            for op in &save.ops {
                match op {
                    Op::Set(k, v) => inv.arg("s").arg(k).arg(v),
                    Op::Remove(k) => inv.arg("r").arg(k).arg(""),
                    Op::Increment(k, by) => inv.arg("i").arg(k).arg(*by),
                };
            }
            let reply: Vec<Value> = this.backend.invoke("session_save", &inv).await?;
            Ok(saved(&reply))
        })
    }

    fn destroy(&self, key: &str) -> StoreFuture<()> {
        let this = self.clone();
        let key = key.to_owned();
        Box::pin(async move {
            let mut inv = this.scripts.destroy.key(this.key(&key));
            inv.arg(&*this.index_head).arg(&key);
            let _: i64 = this.backend.invoke("session_destroy", &inv).await?;
            Ok(())
        })
    }

    fn destroy_user(&self, user: &str) -> StoreFuture<u64> {
        let this = self.clone();
        let index = self.backend.key("sessidx", user);
        Box::pin(async move {
            let mut inv = this.scripts.destroy_user.key(index);
            inv.arg(&*this.session_head);
            let n: u64 = this.backend.invoke("session_destroy_user", &inv).await?;
            Ok(n)
        })
    }
}
