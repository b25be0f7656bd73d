//! [`RedisStore`]: rate-limit state shared by every instance through Redis.

use std::fmt;
use std::sync::Arc;

use super::gcra::Verdict;
use super::store::{Decision, QuotaSpec, Store, StoreFuture};
use crate::StoreUnavailable;
use crate::redis::{RedisBackend, Script};

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
        let keys: Vec<String> = quotas
            .iter()
            .map(|q| self.backend.key_with_suffix("rl", key, q.name()))
            .collect();
        let mut args: Vec<String> = Vec::with_capacity(2 + 2 * quotas.len());
        args.push(cost.to_string());
        args.push(now_us.map(|n| n.to_string()).unwrap_or_default());
        for q in quotas {
            args.push(q.gcra().emission_us.to_string());
            args.push(q.gcra().burst.to_string());
        }
        run(&self.backend, self.script_for(quotas.len()), keys, args).await
    }

    fn script_for(&self, quotas: usize) -> &Script {
        if quotas == 1 {
            &self.script_one
        } else {
            &self.script
        }
    }
}

async fn run(
    backend: &RedisBackend,
    script: &Script,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<Decision, StoreUnavailable> {
    let mut inv = script.prepare_invoke();
    for k in &keys {
        inv.key(k);
    }
    for a in &args {
        inv.arg(a);
    }
    let out: Vec<i64> = backend.invoke("rate_limit", &inv).await?;
    if keys.len() == 1 && out.len() == 2 {
        // The one-quota script leaves out `allowed` (implied) and `now`.
        let full = [i64::from(out[0] == 0), 0, out[0], out[1]];
        return parse(&full, 1);
    }
    parse(&out, keys.len())
}

fn parse(out: &[i64], n: usize) -> Result<Decision, StoreUnavailable> {
    if out.len() != 2 + 2 * n {
        return Err(StoreUnavailable::backend(std::io::Error::other(format!(
            "rate-limit script returned {} values, expected {}",
            out.len(),
            2 + 2 * n
        ))));
    }
    let allowed = out[0] == 1;
    let verdicts = out[2..].chunks_exact(2).map(|c| {
        let retry = if c[0] < 0 { u64::MAX } else { c[0] as u64 };
        Verdict {
            // Each quota's own verdict; a refused request is refused by at least one.
            allowed: retry == 0,
            retry_after_us: retry,
            reset_us: u64::try_from(c[1]).unwrap_or(0),
        }
    });
    let d = Decision::new(verdicts);
    debug_assert_eq!(d.allowed(), allowed);
    Ok(d)
}

impl<K: fmt::Display> Store<K> for RedisStore {
    fn check(&self, key: &K, quotas: &[&QuotaSpec], cost: u64) -> StoreFuture {
        let this = self.clone();
        let key = key.to_string();
        let keys: Vec<String> = quotas
            .iter()
            .map(|q| this.backend.key_with_suffix("rl", &key, q.name()))
            .collect();
        let mut args: Vec<String> = Vec::with_capacity(2 + 2 * quotas.len());
        args.push(cost.to_string());
        args.push(String::new());
        for q in quotas {
            args.push(q.gcra().emission_us.to_string());
            args.push(q.gcra().burst.to_string());
        }
        let n = quotas.len();
        StoreFuture::Pending(Box::pin(async move {
            run(&this.backend, this.script_for(n), keys, args).await
        }))
    }
}
