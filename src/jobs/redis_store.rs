//! [`RedisJobStore`]: queues in Redis, shared by every instance.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::job::{JobId, JobState, JobStatus, QueueStats, from_millis};
use super::store::{
    Completion, Failed, Fetched, JobStore, LEASE_EXPIRED, Leased, Lifetimes, NewJob, StoreFuture,
};
use crate::StoreUnavailable;
use crate::redis::{Cmd, Pipeline, RedisBackend, Script, Value, cmd, pipe};

const PRELUDE: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function num(x) return string.format('%.0f', x) end
";

/// KEYS: ready, scheduled, job, [idempotency]. ARGV: id, payload, max attempts, rank,
/// delay (ms), job key prefix. Returns {id, 1} for a new job, {id, 0} for an existing one.
/// (A job with neither a delay nor an idempotency key is written without a script: see
/// [`plain_enqueue`].)
const ENQUEUE: &str = r"
local now = now_ms()
if KEYS[4] then
  local prior = redis.call('GET', KEYS[4])
  if prior and redis.call('EXISTS', ARGV[6] .. prior) == 1 then
    return {prior, 0}
  end
  redis.call('SET', KEYS[4], ARGV[1])
end
local delay = tonumber(ARGV[5])
local state = 'queued'
if delay > 0 then
  state = 'scheduled'
  redis.call('ZADD', KEYS[2], num(now + delay), ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
end
redis.call('HSET', KEYS[3], 's', state, 'p', ARGV[2], 'a', 0, 'm', ARGV[3], 'r', ARGV[4],
  'c', now, 'i', KEYS[4] or '')
return {ARGV[1], 1}
";

/// KEYS: ready, scheduled. ARGV: job key prefix, then per job: id, payload, max attempts,
/// rank, delay (ms), idempotency key ('' for none). Returns {id, 1 or 0} per job, as
/// ENQUEUE does.
const ENQUEUE_MANY: &str = r"
local now = now_ms()
local out = {}
for i = 2, #ARGV, 6 do
  local id, ik = ARGV[i], ARGV[i + 5]
  local prior = false
  if ik ~= '' then
    prior = redis.call('GET', ik)
    if prior and redis.call('EXISTS', ARGV[1] .. prior) == 0 then prior = false end
  end
  if prior then
    out[#out + 1] = prior
    out[#out + 1] = 0
  else
    if ik ~= '' then redis.call('SET', ik, id) end
    local delay = tonumber(ARGV[i + 4])
    local state = 'queued'
    if delay > 0 then
      state = 'scheduled'
      redis.call('ZADD', KEYS[2], num(now + delay), id)
    else
      redis.call('ZADD', KEYS[1], ARGV[i + 3], id)
    end
    redis.call('HSET', ARGV[1] .. id, 's', state, 'p', ARGV[i + 1], 'a', 0, 'm', ARGV[i + 2],
      'r', ARGV[i + 3], 'c', now, 'i', ik)
    out[#out + 1] = id
    out[#out + 1] = 1
  end
end
return out
";

/// KEYS: ready, scheduled, running, dead. ARGV: job key prefix, max, lease (ms), token,
/// retention (ms), the lease-expired message's head. Returns {taken over, buried, then
/// per leased job: id, payload, attempt, max attempts}.
const FETCH: &str = r"
local now = now_ms()
local jp, retention = ARGV[1], tonumber(ARGV[5])
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 256)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[2], id)
  local rank = redis.call('HGET', jp .. id, 'r')
  if rank then
    redis.call('ZADD', KEYS[1], rank, id)
    redis.call('HSET', jp .. id, 's', 'queued')
  end
end
local taken, buried = 0, 0
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 256)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[3], id)
  local jk = jp .. id
  local f = redis.call('HMGET', jk, 'a', 'm', 'r', 'i')
  if f[1] then
    redis.call('HDEL', jk, 't')
    if tonumber(f[1]) >= tonumber(f[2]) then
      redis.call('HSET', jk, 's', 'dead', 'f', now,
        'e', 'lease expired on attempt ' .. f[1] .. ' of ' .. f[2] .. ARGV[6])
      redis.call('ZADD', KEYS[4], now, id)
      redis.call('PEXPIRE', jk, retention)
      if f[4] and f[4] ~= '' then redis.call('PEXPIRE', f[4], retention) end
      buried = buried + 1
    else
      redis.call('ZADD', KEYS[1], f[3], id)
      redis.call('HSET', jk, 's', 'queued')
      taken = taken + 1
    end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', num(now - retention))
local out = {taken, buried}
local n = tonumber(ARGV[2])
if n > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[1], n)
  local deadline = num(now + tonumber(ARGV[3]))
  for i = 1, #popped, 2 do
    local id = popped[i]
    local jk = jp .. id
    local f = redis.call('HMGET', jk, 'p', 'm')
    if f[1] then
      local a = redis.call('HINCRBY', jk, 'a', 1)
      redis.call('HSET', jk, 's', 'running', 't', ARGV[4])
      redis.call('ZADD', KEYS[3], deadline, id)
      out[#out + 1] = id
      out[#out + 1] = f[1]
      out[#out + 1] = a
      out[#out + 1] = tonumber(f[2])
    end
  end
end
return out
";

/// KEYS: running, job. ARGV: token, lease (ms), id. Returns 1, or 0 if the lease is lost.
const RENEW: &str = r"
if redis.call('HGET', KEYS[2], 't') ~= ARGV[1] then return 0 end
redis.call('ZADD', KEYS[1], 'XX', num(now_ms() + tonumber(ARGV[2])), ARGV[3])
return 1
";

/// KEYS: job. ARGV: token, progress. Returns 1, or 0 if the lease is lost.
const PROGRESS: &str = r"
if redis.call('HGET', KEYS[1], 't') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'g', ARGV[2])
return 1
";

/// KEYS: running, job. ARGV: token, result, retention (ms), id. Returns 1, or 0 if the
/// lease is lost.
const COMPLETE: &str = r"
if redis.call('HGET', KEYS[2], 't') ~= ARGV[1] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[4])
redis.call('HDEL', KEYS[2], 't', 'p')
redis.call('HSET', KEYS[2], 's', 'succeeded', 'o', ARGV[2], 'f', now_ms(), 'g', 100)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local ik = redis.call('HGET', KEYS[2], 'i')
if ik and ik ~= '' then redis.call('PEXPIRE', ik, ARGV[3]) end
return 1
";

/// KEYS: running. ARGV: retention (ms), job key prefix, then (id, token, result) per
/// job. Returns 1 or 0 (lease lost) per job.
const COMPLETE_MANY: &str = r"
local now = now_ms()
local out = {}
for i = 3, #ARGV, 3 do
  local id = ARGV[i]
  local jk = ARGV[2] .. id
  if redis.call('HGET', jk, 't') ~= ARGV[i + 1] then
    out[#out + 1] = 0
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', jk, 't', 'p')
    redis.call('HSET', jk, 's', 'succeeded', 'o', ARGV[i + 2], 'f', now, 'g', 100)
    redis.call('PEXPIRE', jk, ARGV[1])
    local ik = redis.call('HGET', jk, 'i')
    if ik and ik ~= '' then redis.call('PEXPIRE', ik, ARGV[1]) end
    out[#out + 1] = 1
  end
end
return out
";

/// KEYS: running, scheduled, dead, job. ARGV: token, error, retry in (ms; -1: none),
/// retention (ms), id. Returns 1 retrying, 2 dead, 0 lease lost.
const FAIL: &str = r"
if redis.call('HGET', KEYS[4], 't') ~= ARGV[1] then return 0 end
local now = now_ms()
redis.call('ZREM', KEYS[1], ARGV[5])
redis.call('HDEL', KEYS[4], 't')
local f = redis.call('HMGET', KEYS[4], 'a', 'm', 'i')
local retry = tonumber(ARGV[3])
if retry >= 0 and tonumber(f[1]) < tonumber(f[2]) then
  redis.call('HSET', KEYS[4], 's', 'retrying', 'e', ARGV[2])
  redis.call('ZADD', KEYS[2], num(now + retry), ARGV[5])
  return 1
end
redis.call('HSET', KEYS[4], 's', 'dead', 'e', ARGV[2], 'f', now)
redis.call('ZADD', KEYS[3], now, ARGV[5])
redis.call('PEXPIRE', KEYS[4], ARGV[4])
if f[3] and f[3] ~= '' then redis.call('PEXPIRE', f[3], ARGV[4]) end
return 2
";

/// KEYS: running, ready, job. ARGV: token, id. Returns 1, or 0 if the lease is lost.
const RELEASE: &str = r"
if redis.call('HGET', KEYS[3], 't') ~= ARGV[1] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[3], 't')
redis.call('HINCRBY', KEYS[3], 'a', -1)
redis.call('HSET', KEYS[3], 's', 'queued')
redis.call('ZADD', KEYS[2], redis.call('HGET', KEYS[3], 'r'), ARGV[2])
return 1
";

/// KEYS: ready, scheduled, running, dead. ARGV: job key prefix. Returns {queued,
/// scheduled, running, dead, enqueue time of the head (ms) or -1, now (ms)}.
const STATS: &str = r"
local head = redis.call('ZRANGE', KEYS[1], 0, 0)
local c = -1
if head[1] then c = tonumber(redis.call('HGET', ARGV[1] .. head[1], 'c') or -1) end
return {redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[3]),
  redis.call('ZCARD', KEYS[4]), c, now_ms()}
";

/// Jobs in Redis, shared by every instance pointed at the same Redis and prefix.
///
/// Built on the crate's [`RedisBackend`]: its timeout bounds every call, and a call that
/// fails is a [`StoreUnavailable`] (an enqueue's caller sees it; a worker backs off and
/// tries again).
///
/// # Layout
///
/// All keys of queue `q` carry the hash tag `{q}`, so each step is one Lua script (or one
/// `MULTI`/`EXEC`) on one slot (a Redis Cluster runs each queue on one shard; spread a hot
/// queue over several queue names). With the backend's prefix `p`:
///
/// | key | type | holds |
/// |---|---|---|
/// | `p:jobs:{q}:ready` | sorted set | jobs waiting, scored by priority; equal scores sort by id, which begins with the enqueue time |
/// | `p:jobs:{q}:scheduled` | sorted set | delayed and retrying jobs, scored by due time (ms) |
/// | `p:jobs:{q}:running` | sorted set | leased jobs, scored by lease deadline (ms) |
/// | `p:jobs:{q}:dead` | sorted set | dead letters, scored by time of death; trimmed after the retention |
/// | `p:jobs:{q}:j:<id>` | hash | one job: state, payload, attempts, lease token, error, result, progress, times |
/// | `p:jobs:{q}:k:<key>` | string | an idempotency key's job id |
///
/// Why sorted sets and scripts rather than Streams or `LMOVE` lists: a job here needs a
/// delay, a priority, a renewable lease with a fencing token, a retry time and a status
/// readable by id. A stream's consumer group gives the lease (idle time, `XAUTOCLAIM`) but
/// neither delay, priority nor status, so a second structure is needed anyway; a list
/// gives order alone. With sorted sets every transition is one atomic call on one slot, and
/// a job costs at most three round trips: its enqueue (shared when enqueues are concurrent),
/// a fetch (shared by a batch of jobs) and its acknowledgement (shared by the pool's
/// successes of the moment). The choice was made on those grounds; the throughput it gives
/// beside apalis (whose Redis backend uses lists and Lua) is in `docs/benchmarks.md`.
/// An enqueue with no delay and no idempotency key, the common one, is not a script but a
/// `MULTI`/`EXEC` of one `HSET` per job and one `ZADD`: a `redis.call` costs Redis more than
/// the command it runs, and this halved Redis's own CPU time per job. On a Cluster, a slot
/// that moved aborts the transaction (redis-rs does not follow a redirect inside one); the
/// job is then written by the script, which it does follow.
///
/// Time is Redis's own (`TIME`), so instances with skewed clocks agree on due times and
/// lease deadlines. Two things use the enqueuing instance's clock: a job's creation time
/// (so the oldest job's age is off by the clocks' skew) and, through its id, its place
/// among jobs of equal priority (jobs from instances whose clocks differ by a second may
/// run up to that second out of their enqueue order; one process's jobs keep theirs, unless
/// its clock stepped back across a restart).
/// Finished jobs and their idempotency keys expire after the retention (`PEXPIRE`), and
/// the dead-letter set is trimmed by time: memory stays bounded.
///
/// What Redis keeps across its own restart is what its persistence keeps: with AOF
/// (`appendfsync everysec`) at most the last second of enqueues and transitions; with no
/// persistence, every job. A job lost that way is never run; a job whose completion was
/// lost runs again (at-least-once).
#[derive(Clone)]
pub struct RedisJobStore {
    inner: Arc<Inner>,
}

struct Inner {
    backend: RedisBackend,
    enqueue: Script,
    enqueue_many: Script,
    fetch: Script,
    renew: Script,
    progress: Script,
    complete: Script,
    complete_many: Script,
    fail: Script,
    release: Script,
    stats: Script,
}

impl fmt::Debug for RedisJobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisJobStore")
            .field("backend", &self.inner.backend)
            .finish()
    }
}

/// The keys of one queue.
struct Keys {
    head: String,
}

impl Keys {
    fn new(backend: &RedisBackend, queue: &str) -> Self {
        Self {
            head: backend.key(NAMESPACE, queue),
        }
    }

    fn of(&self, suffix: &str) -> String {
        let mut k = String::with_capacity(self.head.len() + 1 + suffix.len());
        k.push_str(&self.head);
        k.push(':');
        k.push_str(suffix);
        k
    }

    /// The queue's four sorted sets, as FETCH and STATS take them.
    fn sets(&self) -> [String; 4] {
        ["ready", "scheduled", "running", "dead"].map(|n| self.of(n))
    }

    fn job(&self, id: &JobId) -> String {
        self.of(&format!("j:{id}"))
    }
}

const NAMESPACE: &str = "jobs";

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

fn evalsha(script: &Script, keys: &[&str], args: &mut dyn FnMut(&mut Cmd)) -> Cmd {
    let mut c = cmd("EVALSHA");
    c.arg(script.get_hash()).arg(keys.len());
    for k in keys {
        c.arg(*k);
    }
    args(&mut c);
    c
}

impl RedisJobStore {
    /// Queues in the Redis behind `backend`, under its prefix.
    pub fn new(backend: RedisBackend) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                enqueue: script(ENQUEUE),
                enqueue_many: script(ENQUEUE_MANY),
                fetch: script(FETCH),
                renew: script(RENEW),
                progress: script(PROGRESS),
                complete: script(COMPLETE),
                complete_many: script(COMPLETE_MANY),
                fail: script(FAIL),
                release: script(RELEASE),
                stats: script(STATS),
            }),
        }
    }

    fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        script: fn(&Inner) -> &Script,
        cmd: Cmd,
        parse: fn(Value) -> Result<T, StoreUnavailable>,
    ) -> StoreFuture<T> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let reply: Value = inner.backend.evalsha(op, script(&inner), &cmd).await?;
            parse(reply)
        })
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// A job's score in the ready set: its priority alone (higher first). Jobs of equal
/// priority share a score, so the set orders them by id, and ids begin with the time they
/// were made ([`JobId::ordered`]): enqueue order, with no counter to update. The factor
/// keeps the scores of queues written by earlier versions (which added a counter) in the
/// same priority bands.
fn rank(priority: u8) -> u64 {
    u64::from(255 - priority) << 44
}

/// Whether a job is written without a script: no delay (whose due time is Redis's clock)
/// and no idempotency key (which is checked before writing).
fn is_plain(job: &NewJob) -> bool {
    job.delay.is_zero() && job.idempotency_key.is_none()
}

/// Writes jobs that are [plain](is_plain) in one `MULTI`/`EXEC`: a `HSET` per job, then
/// one `ZADD` of them all. Atomic as a script is, and about half of Redis's CPU per job
/// of the script, whose `redis.call`s each cost more than the command they run (see
/// `docs/benchmarks.md`). The creation time is this process's clock.
fn plain_enqueue(k: &Keys, jobs: &[NewJob]) -> Pipeline {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, ms);
    let mut p = pipe();
    p.atomic();
    let mut add = cmd("ZADD");
    add.arg(k.of("ready"));
    for j in jobs {
        let rank = rank(j.priority);
        p.cmd("HSET")
            .arg(k.job(&j.id))
            .arg("s")
            .arg("queued")
            .arg("p")
            .arg(&j.payload)
            .arg("a")
            .arg(0)
            .arg("m")
            .arg(j.max_attempts)
            .arg("r")
            .arg(rank)
            .arg("c")
            .arg(created)
            .ignore();
        add.arg(rank).arg(j.id.as_str());
    }
    p.add_command(add).ignore();
    p
}

impl RedisJobStore {
    /// One job through the ENQUEUE script: a delay, an idempotency key, or a plain job whose
    /// transaction was aborted.
    fn enqueue_scripted(&self, queue: &str, job: NewJob) -> StoreFuture<(JobId, bool)> {
        let k = Keys::new(&self.inner.backend, queue);
        let (ready, scheduled, jk) = (k.of("ready"), k.of("scheduled"), k.job(&job.id));
        let idem = job.idempotency_key.as_deref().map(|key| {
            self.inner
                .backend
                .key_with_suffix(NAMESPACE, queue, &format!("k:{key}"))
        });
        let mut keys = vec![ready.as_str(), scheduled.as_str(), jk.as_str()];
        if let Some(i) = &idem {
            keys.push(i);
        }
        let c = evalsha(&self.inner.enqueue, &keys, &mut |c| {
            c.arg(job.id.as_str())
                .arg(&job.payload)
                .arg(job.max_attempts)
                .arg(rank(job.priority))
                .arg(ms(job.delay))
                .arg(k.of("j:"));
        });
        self.call(
            "jobs_enqueue",
            |i| &i.enqueue,
            c,
            |v| {
                let a = array(&v, 2)?;
                let id = text(&a[0])?;
                let id =
                    JobId::parse(&id).ok_or_else(|| malformed(format_args!("job id {id:?}")))?;
                Ok((id, int(&a[1])? == 1))
            },
        )
    }

    /// Jobs through the ENQUEUE_MANY script, as [`enqueue_scripted`](Self::enqueue_scripted).
    fn enqueue_many_scripted(
        &self,
        queue: &str,
        jobs: Vec<NewJob>,
    ) -> StoreFuture<Vec<(JobId, bool)>> {
        let k = Keys::new(&self.inner.backend, queue);
        let (ready, scheduled) = (k.of("ready"), k.of("scheduled"));
        let n = jobs.len();
        let c = evalsha(&self.inner.enqueue_many, &[&ready, &scheduled], &mut |c| {
            c.arg(k.of("j:"));
            for j in &jobs {
                let idem = j
                    .idempotency_key
                    .as_deref()
                    .map_or_else(String::new, |key| {
                        self.inner
                            .backend
                            .key_with_suffix(NAMESPACE, queue, &format!("k:{key}"))
                    });
                c.arg(j.id.as_str())
                    .arg(&j.payload)
                    .arg(j.max_attempts)
                    .arg(rank(j.priority))
                    .arg(ms(j.delay))
                    .arg(idem);
            }
        });
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let reply: Value = inner
                .backend
                .evalsha("jobs_enqueue", &inner.enqueue_many, &c)
                .await?;
            let a = array(&reply, 2 * n)?;
            a.chunks_exact(2)
                .map(|p| {
                    let id = text(&p[0])?;
                    let id = JobId::parse(&id)
                        .ok_or_else(|| malformed(format_args!("job id {id:?}")))?;
                    Ok((id, int(&p[1])? == 1))
                })
                .collect()
        })
    }
}

/// Whether a plain enqueue's transaction was aborted, so nothing of it was written. On a
/// Redis Cluster a redirect (a slot that moved after a failover or a reshard, or is
/// moving) inside `MULTI` aborts the `EXEC`, and redis-rs follows redirects only for a
/// command or script of its own: the job is then written by the script, which it
/// redirects (and whose `MOVED` refreshes its slot map).
fn aborted(e: &StoreUnavailable) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<::redis::RedisError>())
        .is_some_and(|r| {
            r.kind() == ::redis::ErrorKind::Server(::redis::ServerErrorKind::ExecAbort)
        })
}

impl JobStore for RedisJobStore {
    fn enqueue(&self, queue: &str, job: NewJob) -> StoreFuture<(JobId, bool)> {
        if !is_plain(&job) {
            return self.enqueue_scripted(queue, job);
        }
        let p = plain_enqueue(
            &Keys::new(&self.inner.backend, queue),
            std::slice::from_ref(&job),
        );
        let (this, queue) = (self.clone(), queue.to_owned());
        Box::pin(async move {
            match this.inner.backend.pipeline::<()>("jobs_enqueue", &p).await {
                Ok(()) => Ok((job.id, true)),
                Err(e) if aborted(&e) => this.enqueue_scripted(&queue, job).await,
                Err(e) => Err(e),
            }
        })
    }

    fn enqueue_many(&self, queue: &str, jobs: Vec<NewJob>) -> StoreFuture<Vec<(JobId, bool)>> {
        if jobs.is_empty() {
            // Nothing to write (and a `ZADD` of no members would be refused).
            return Box::pin(async { Ok(Vec::new()) });
        }
        if !jobs.iter().all(is_plain) {
            return self.enqueue_many_scripted(queue, jobs);
        }
        let p = plain_enqueue(&Keys::new(&self.inner.backend, queue), &jobs);
        let (this, queue) = (self.clone(), queue.to_owned());
        Box::pin(async move {
            match this.inner.backend.pipeline::<()>("jobs_enqueue", &p).await {
                Ok(()) => Ok(jobs.into_iter().map(|j| (j.id, true)).collect()),
                Err(e) if aborted(&e) => this.enqueue_many_scripted(&queue, jobs).await,
                Err(e) => Err(e),
            }
        })
    }

    fn fetch(&self, queue: &str, max: usize, token: &str, life: Lifetimes) -> StoreFuture<Fetched> {
        let k = Keys::new(&self.inner.backend, queue);
        let keys = k.sets();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let c = evalsha(&self.inner.fetch, &keys, &mut |c| {
            c.arg(k.of("j:"))
                .arg(max)
                .arg(ms(life.lease))
                .arg(token)
                .arg(ms(life.retention))
                .arg(LEASE_EXPIRED);
        });
        self.call(
            "jobs_fetch",
            |i| &i.fetch,
            c,
            |v| {
                let Value::Array(a) = &v else {
                    return Err(malformed(format_args!("{v:?} for a fetch")));
                };
                if a.len() < 2 || (a.len() - 2) % 4 != 0 {
                    return Err(malformed(format_args!("{} items for a fetch", a.len())));
                }
                let mut out = Fetched {
                    taken_over: count(&a[0])?,
                    buried: count(&a[1])?,
                    jobs: Vec::with_capacity((a.len() - 2) / 4),
                };
                for j in a[2..].chunks_exact(4) {
                    let id = text(&j[0])?;
                    out.jobs.push(Leased {
                        id: JobId::parse(&id)
                            .ok_or_else(|| malformed(format_args!("job id {id:?}")))?,
                        payload: text(&j[1])?,
                        attempt: count(&j[2])?,
                        max_attempts: count(&j[3])?,
                    });
                }
                Ok(out)
            },
        )
    }

    fn renew(&self, queue: &str, id: &JobId, token: &str, life: Lifetimes) -> StoreFuture<bool> {
        let k = Keys::new(&self.inner.backend, queue);
        let (running, jk) = (k.of("running"), k.job(id));
        let c = evalsha(&self.inner.renew, &[&running, &jk], &mut |c| {
            c.arg(token).arg(ms(life.lease)).arg(id.as_str());
        });
        self.call("jobs_renew", |i| &i.renew, c, flag)
    }

    fn progress(&self, queue: &str, id: &JobId, token: &str, progress: u8) -> StoreFuture<bool> {
        let jk = Keys::new(&self.inner.backend, queue).job(id);
        let c = evalsha(&self.inner.progress, &[&jk], &mut |c| {
            c.arg(token).arg(progress.min(100));
        });
        self.call("jobs_progress", |i| &i.progress, c, flag)
    }

    fn complete(
        &self,
        queue: &str,
        id: &JobId,
        token: &str,
        result: String,
        life: Lifetimes,
    ) -> StoreFuture<bool> {
        let k = Keys::new(&self.inner.backend, queue);
        let (running, jk) = (k.of("running"), k.job(id));
        let c = evalsha(&self.inner.complete, &[&running, &jk], &mut |c| {
            c.arg(token)
                .arg(&result)
                .arg(ms(life.retention).max(1))
                .arg(id.as_str());
        });
        self.call("jobs_complete", |i| &i.complete, c, flag)
    }

    fn complete_many(
        &self,
        queue: &str,
        jobs: Vec<Completion>,
        life: Lifetimes,
    ) -> StoreFuture<Vec<bool>> {
        let k = Keys::new(&self.inner.backend, queue);
        let running = k.of("running");
        let n = jobs.len();
        let c = evalsha(&self.inner.complete_many, &[&running], &mut |c| {
            c.arg(ms(life.retention).max(1)).arg(k.of("j:"));
            for j in &jobs {
                c.arg(j.id.as_str()).arg(&j.token).arg(&j.result);
            }
        });
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let reply: Value = inner
                .backend
                .evalsha("jobs_complete", &inner.complete_many, &c)
                .await?;
            let a = array(&reply, n)?;
            a.iter().map(|v| Ok(int(v)? == 1)).collect()
        })
    }

    fn fail(
        &self,
        queue: &str,
        id: &JobId,
        token: &str,
        error: String,
        retry_in: Option<Duration>,
        life: Lifetimes,
    ) -> StoreFuture<Failed> {
        let k = Keys::new(&self.inner.backend, queue);
        let keys = [k.of("running"), k.of("scheduled"), k.of("dead"), k.job(id)];
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let retry = retry_in.map_or(-1, |d| i64::try_from(ms(d)).unwrap_or(i64::MAX));
        let c = evalsha(&self.inner.fail, &keys, &mut |c| {
            c.arg(token)
                .arg(&error)
                .arg(retry)
                .arg(ms(life.retention).max(1))
                .arg(id.as_str());
        });
        self.call(
            "jobs_fail",
            |i| &i.fail,
            c,
            |v| match int(&v)? {
                0 => Ok(Failed::LeaseLost),
                1 => Ok(Failed::Retrying),
                2 => Ok(Failed::Dead),
                n => Err(malformed(format_args!("{n} for a failed attempt"))),
            },
        )
    }

    fn release(&self, queue: &str, id: &JobId, token: &str) -> StoreFuture<bool> {
        let k = Keys::new(&self.inner.backend, queue);
        let (running, ready, jk) = (k.of("running"), k.of("ready"), k.job(id));
        let c = evalsha(&self.inner.release, &[&running, &ready, &jk], &mut |c| {
            c.arg(token).arg(id.as_str());
        });
        self.call("jobs_release", |i| &i.release, c, flag)
    }

    fn status(&self, queue: &str, id: &JobId) -> StoreFuture<Option<JobStatus>> {
        let jk = Keys::new(&self.inner.backend, queue).job(id);
        let inner = Arc::clone(&self.inner);
        let id = id.clone();
        Box::pin(async move {
            let mut c = cmd("HMGET");
            c.arg(&jk).arg(&["s", "a", "m", "g", "e", "o", "c", "f"]);
            let v: Vec<Option<String>> = inner.backend.query("jobs_status", &c).await?;
            let [s, a, m, g, e, o, c, f]: [Option<String>; 8] = v
                .try_into()
                .map_err(|v: Vec<_>| malformed(format_args!("{} fields for a status", v.len())))?;
            let Some(s) = s else { return Ok(None) };
            let state =
                JobState::parse(&s).ok_or_else(|| malformed(format_args!("state {s:?}")))?;
            let number = |x: Option<String>| x.and_then(|x| x.parse::<u64>().ok());
            Ok(Some(JobStatus {
                id,
                state,
                attempts: number(a).unwrap_or(0).try_into().unwrap_or(u32::MAX),
                max_attempts: number(m).unwrap_or(0).try_into().unwrap_or(u32::MAX),
                progress: number(g).map(|g| g.min(100) as u8),
                error: e,
                result: o,
                enqueued_at: from_millis(number(c).unwrap_or(0)),
                finished_at: number(f).map(from_millis),
            }))
        })
    }

    fn stats(&self, queue: &str) -> StoreFuture<QueueStats> {
        let k = Keys::new(&self.inner.backend, queue);
        let keys = k.sets();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let c = evalsha(&self.inner.stats, &keys, &mut |c| {
            c.arg(k.of("j:"));
        });
        self.call(
            "jobs_stats",
            |i| &i.stats,
            c,
            |v| {
                let a = array(&v, 6)?;
                let n = |i: usize| -> Result<u64, StoreUnavailable> {
                    u64::try_from(int(&a[i])?).map_err(|_| malformed("a negative count"))
                };
                let (head, now) = (int(&a[4])?, int(&a[5])?);
                Ok(QueueStats {
                    queued: n(0)?,
                    scheduled: n(1)?,
                    running: n(2)?,
                    dead: n(3)?,
                    head_age: (head >= 0)
                        .then(|| Duration::from_millis(u64::try_from(now - head).unwrap_or(0))),
                })
            },
        )
    }
}

fn malformed(what: impl fmt::Display) -> StoreUnavailable {
    StoreUnavailable::backend(std::io::Error::other(format!("job script replied {what}")))
}

fn array(v: &Value, n: usize) -> Result<&[Value], StoreUnavailable> {
    match v {
        Value::Array(a) if a.len() == n => Ok(a),
        other => Err(malformed(format_args!("{other:?} where {n} items belong"))),
    }
}

fn int(v: &Value) -> Result<i64, StoreUnavailable> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(malformed(format_args!("{other:?} where a number belongs"))),
    }
}

fn count(v: &Value) -> Result<u32, StoreUnavailable> {
    u32::try_from(int(v)?).map_err(|_| malformed("a count out of range"))
}

fn text(v: &Value) -> Result<String, StoreUnavailable> {
    match v {
        Value::BulkString(b) => {
            String::from_utf8(b.clone()).map_err(|_| malformed("text that is not UTF-8"))
        }
        Value::SimpleString(s) => Ok(s.clone()),
        other => Err(malformed(format_args!("{other:?} where text belongs"))),
    }
}

fn flag(v: Value) -> Result<bool, StoreUnavailable> {
    Ok(int(&v)? == 1)
}
