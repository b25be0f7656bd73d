//! [`RedisStore`]: rate-limit state shared by every instance through Redis.

use std::fmt::{self, Write as _};
use std::sync::Arc;

use super::gcra::Verdict;
use super::store::{Decision, QuotaSpec, Store, StoreFuture};
use crate::StoreUnavailable;
use crate::redis::{Cmd, RedisBackend, Script, Value, escape_tag};

const SCRIPT: &str = concat!(include_str!("now.lua"), include_str!("gcra.lua"));
const SCRIPT_ONE: &str = concat!(include_str!("now.lua"), include_str!("gcra_one.lua"));

/// Rate-limit state in Redis, shared by every instance pointed at it.
///
/// One Lua script per request evaluates all its quotas atomically with Redis's own clock
/// (`TIME`), so instances with skewed clocks agree and N instances admit exactly the
/// quota, not N times it. One round trip, whatever the number of quotas. Keys are
/// `{prefix}:rl:{{client}}:{quota}`: one hash tag per client, so the script is valid on
/// Redis Cluster. Each key expires when its bucket would be full again.
///
/// Calls are bounded by the backend's timeout; what the layer does when Redis fails is its
/// `on_store_error` setting.
#[derive(Clone)]
pub struct RedisStore {
    backend: RedisBackend,
    // Several quotas, and the one-quota case with nothing to loop over (most requests).
    script: Arc<Script>,
    script_one: Arc<Script>,
    /// `{prefix}:rl:{`, what every key starts with.
    head: Arc<str>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on `backend` (whose timeout bounds each decision: 20–50 ms suits a Redis on
    /// the same network).
    pub fn new(backend: RedisBackend) -> Self {
        Self {
            head: Arc::from(backend.key_head("rl")),
            backend,
            script: Arc::new(Script::new(SCRIPT)),
            script_one: Arc::new(Script::new(SCRIPT_ONE)),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &RedisBackend {
        &self.backend
    }

    /// Evaluates at an explicit instant (µs) instead of Redis `TIME`: lets tests compare the
    /// script with [`gcra`](super::gcra) exactly. Services never need it.
    #[doc(hidden)]
    pub async fn check_at(
        &self,
        key: &str,
        quotas: &[&QuotaSpec],
        cost: u64,
        now_us: Option<u64>,
    ) -> Result<Decision, StoreUnavailable> {
        let keys: Vec<String> = quotas.iter().map(|q| self.key_of(key, q)).collect();
        let cmd = self.command(&keys, quotas, cost, now_us);
        self.send(&cmd, quotas.len()).await
    }

    /// `{prefix}:rl:{client}:quota`: the key of one quota's state, in one allocation.
    fn key_of(&self, client: impl fmt::Display, quota: &QuotaSpec) -> String {
        let suffix = quota.key_suffix();
        let mut k = String::with_capacity(self.head.len() + 40 + suffix.len());
        k.push_str(&self.head);
        let start = k.len();
        let _ = write!(k, "{client}");
        if k.len() == start || needs_escape(&k.as_bytes()[start..]) {
            let tag = escape_tag(&k[start..]).into_owned();
            k.truncate(start);
            k.push_str(&tag);
        }
        k.push_str(suffix);
        k
    }

    /// `EVALSHA sha numkeys keys... cost now (emission burst)...`, built in buffers sized
    /// once.
    fn command(
        &self,
        keys: &[String],
        quotas: &[&QuotaSpec],
        cost: u64,
        now_us: Option<u64>,
    ) -> Cmd {
        let script = self.script_for(quotas.len());
        let args = 5 + keys.len() + 2 * quotas.len();
        let bytes = 64 + keys.iter().map(String::len).sum::<usize>() + 40 * quotas.len();
        let mut c = Cmd::with_capacity(args, bytes);
        c.arg("EVALSHA").arg(script.get_hash()).arg(keys.len());
        for k in keys {
            c.arg(k.as_str());
        }
        c.arg(cost);
        match now_us {
            Some(n) => c.arg(n),
            None => c.arg(""),
        };
        for q in quotas {
            let g = q.gcra();
            c.arg(g.emission_us).arg(g.burst);
        }
        c
    }

    async fn send(&self, cmd: &Cmd, n: usize) -> Result<Decision, StoreUnavailable> {
        let reply: Value = self
            .backend
            .evalsha("rate_limit", self.script_for(n), cmd)
            .await?;
        parse(&reply, n)
    }

    fn script_for(&self, quotas: usize) -> &Script {
        if quotas == 1 {
            &self.script_one
        } else {
            &self.script
        }
    }
}

fn needs_escape(s: &[u8]) -> bool {
    s.iter().any(|b| matches!(b, b'%' | b'{' | b'}'))
}

fn malformed(what: impl fmt::Display) -> StoreUnavailable {
    StoreUnavailable::backend(std::io::Error::other(format!(
        "rate-limit script replied {what}"
    )))
}

fn int(v: &Value) -> Result<i64, StoreUnavailable> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(malformed(format_args!("{other:?} where a number belongs"))),
    }
}

fn verdict(retry: i64, reset: i64) -> Verdict {
    let retry = if retry < 0 { u64::MAX } else { retry as u64 };
    Verdict {
        // Each quota's own verdict; a refused request is refused by at least one.
        allowed: retry == 0,
        retry_after_us: retry,
        reset_us: u64::try_from(reset).unwrap_or(0),
    }
}

/// Reads the script's reply. One quota: the reset time alone if admitted (the reply on
/// the hot path is one integer), `{retry_after, reset}` if not. Several: `{allowed, now,
/// then per quota: retry_after, reset}`.
fn parse(reply: &Value, n: usize) -> Result<Decision, StoreUnavailable> {
    match (n, reply) {
        (1, Value::Int(reset)) => Ok(Decision::one(verdict(0, *reset))),
        (1, Value::Array(a)) if a.len() == 2 => {
            Ok(Decision::one(verdict(int(&a[0])?, int(&a[1])?)))
        }
        (_, Value::Array(a)) if n != 1 && a.len() == 2 + 2 * n => {
            let allowed = int(&a[0])? == 1;
            let mut verdicts = Vec::with_capacity(n);
            for c in a[2..].chunks_exact(2) {
                verdicts.push(verdict(int(&c[0])?, int(&c[1])?));
            }
            let d = Decision::new(verdicts);
            debug_assert_eq!(d.allowed(), allowed);
            Ok(d)
        }
        (_, other) => Err(malformed(format_args!("{other:?} for {n} quotas"))),
    }
}

impl<K: fmt::Display> Store<K> for RedisStore {
    fn check(&self, key: &K, quotas: &[&QuotaSpec], cost: u64) -> StoreFuture {
        let this = self.clone();
        let n = quotas.len();
        let cmd = if let [q] = quotas {
            let k = self.key_of(key, q);
            self.command(std::slice::from_ref(&k), quotas, cost, None)
        } else {
            let keys: Vec<String> = quotas.iter().map(|q| self.key_of(key, q)).collect();
            self.command(&keys, quotas, cost, None)
        };
        StoreFuture::Pending(Box::pin(async move { this.send(&cmd, n).await }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::Quota;

    fn spec(name: &str) -> QuotaSpec {
        QuotaSpec::new(0, &"5/1s".parse::<Quota>().unwrap().named(name).unwrap())
    }

    #[tokio::test]
    async fn keys_are_the_backends_layout() {
        // A lazy backend: nothing connects until a command is sent.
        let backend = RedisBackend::builder("redis://127.0.0.1:1")
            .prefix("p")
            .build()
            .unwrap();
        let store = RedisStore::new(backend.clone());
        for tag in ["k:198.51.100.4", "", "%", "a{b}c", "k:é%{}"] {
            for name in ["default", "api-v2"] {
                assert_eq!(
                    store.key_of(tag, &spec(name)),
                    backend.key_with_suffix("rl", tag, name),
                    "{tag:?} {name:?}"
                );
            }
        }
    }

    #[test]
    fn replies_are_read_by_shape() {
        let d = parse(&Value::Int(200_000), 1).unwrap();
        assert!(d.allowed());
        assert_eq!(d.verdicts()[0].reset_us, 200_000);
        let d = parse(&Value::Array(vec![Value::Int(150), Value::Int(900)]), 1).unwrap();
        assert!(!d.allowed());
        assert_eq!(
            (d.verdicts()[0].retry_after_us, d.verdicts()[0].reset_us),
            (150, 900)
        );
        let d = parse(&Value::Array(vec![Value::Int(-1), Value::Int(0)]), 1).unwrap();
        assert_eq!(d.verdicts()[0].retry_after_us, u64::MAX, "-1: never");
        let two = Value::Array([0, 7, 0, 10, 40, 50].map(Value::Int).to_vec());
        let d = parse(&two, 2).unwrap();
        assert!(!d.allowed() && d.verdicts()[0].allowed && !d.verdicts()[1].allowed);
        assert!(
            parse(&Value::Array(vec![Value::Int(1), Value::Int(5)]), 0)
                .unwrap()
                .allowed()
        );
        // Anything else is an error, not a panic.
        for (bad, n) in [
            (Value::Nil, 1),
            (Value::Int(3), 2),
            (Value::Array(vec![Value::Int(1)]), 1),
            (Value::Array(vec![Value::Nil, Value::Int(1)]), 1),
            (Value::Array([1, 2, 3].map(Value::Int).to_vec()), 2),
        ] {
            assert!(parse(&bad, n).is_err(), "{bad:?}");
        }
    }
}
