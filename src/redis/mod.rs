//! The shared Redis backend: one connection handle for every layer that keeps state in Redis.
//!
//! [`RedisBackend`] talks to one Redis ([`RedisBackend::builder`]) or to a Redis Cluster
//! ([`RedisBackend::cluster`]), with the same API for every layer. On one Redis it holds
//! one multiplexed connection (concurrent requests pipeline on one socket, so a clone per
//! request costs nothing), reconnecting by itself after a failure. On a Cluster it holds a
//! multiplexed connection per node, learns the slot map from the nodes it is given, and
//! follows `MOVED`/`ASK` redirections and failovers without a restart; scripts go straight
//! to their slot's master once the map is known. On top it adds
//! what every layer needs and must not write twice:
//!
//! - **A key layout**: `{prefix}:{namespace}:{{tag}}[:suffix]`. The tag is the logical key
//!   (a client, a session, a cache entry) in Redis Cluster hash-tag braces, so every Redis key
//!   of one logical key lands on one slot and a Lua script may touch them all. The tag is
//!   escaped so no input can break out of the braces. Every script and multi-key command
//!   the layers send stays within one slot (`docs/architecture.md` lists each layer's keys).
//! - **Scripts** by `EVALSHA`, loaded on first use and reloaded after a `NOSCRIPT` (a Redis
//!   restart or `SCRIPT FLUSH`).
//! - **A per-call timeout**, so a slow Redis never stalls a request for longer than the
//!   caller chose. A call that times out is a [`StoreUnavailable`]; each layer turns it into
//!   its documented degraded behaviour.
//! - **Health**: [`RedisBackend::ping`] measures a round trip.
//! - **Metrics**: `tower_scale.redis.command.duration` (histogram, seconds, label `op`) and
//!   `tower_scale.redis.command.errors` (counter, labels `op`, `kind`).
//!
//! The backend connects lazily: building it never waits for Redis, and a service can start
//! while Redis is down.
//!
//! The timeout runs on `tokio::time`. In a test that pauses time (`start_paused`), Tokio
//! jumps the clock forward whenever every task waits, including on a Redis reply, so calls
//! to a real Redis time out at once: test real-Redis paths with real time.
//!
//! The backend is what users build and hand to the layers' Redis stores; the commands it
//! sends are the layers' own, so its API is the builder, the key layout and health. Code
//! that needs Redis for its own data keeps its own client: no redis-rs type is part of
//! this crate's API.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_scale::rate_limit::RedisStore;
//! use tower_scale::redis::RedisBackend;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = RedisBackend::builder("redis://127.0.0.1:6379")
//!     .prefix("myapp")
//!     .timeout(Duration::from_millis(50))
//!     .build()?;
//!
//! assert_eq!(redis.key("visits", "user:42"), "myapp:visits:{user:42}");
//! println!("Redis answered a PING in {:?}", redis.ping().await?);
//! let store = RedisStore::new(redis.clone()); // shared by every instance
//! # let _ = store;
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, FromRedisValue, RedisFuture};
use tokio::time::Instant;

// The commands the layers send: each helper below exists in the builds whose layers use it.
#[cfg(any(
    feature = "rate-limit",
    feature = "session",
    feature = "cache",
    feature = "jobs"
))]
pub(crate) use ::redis::Value;
pub(crate) use ::redis::{Cmd, cmd};
#[cfg(any(feature = "cache", feature = "jobs"))]
pub(crate) use ::redis::{Pipeline, pipe};

use crate::key::escape_key_part;
use crate::{ConfigError, StoreUnavailable};

mod direct;
use direct::ClusterConn;

/// A Lua script, sent by `EVALSHA` and loaded on `NOSCRIPT`: redis-rs's, with its source,
/// so that on a Cluster it is loaded on the one node that asked (a `SCRIPT LOAD` sent to
/// every node would fail while any of them is down).
#[cfg(any(
    feature = "rate-limit",
    feature = "session",
    feature = "cache",
    feature = "jobs"
))]
#[derive(Clone)]
pub(crate) struct Script {
    hash: Arc<str>,
    code: Arc<str>,
}

#[cfg(any(
    feature = "rate-limit",
    feature = "session",
    feature = "cache",
    feature = "jobs"
))]
impl Script {
    pub(crate) fn new(code: &str) -> Self {
        Self {
            hash: ::redis::Script::new(code).get_hash().into(),
            code: code.into(),
        }
    }

    /// The SHA-1 `EVALSHA` names it by.
    pub(crate) fn get_hash(&self) -> &str {
        &self.hash
    }

    /// An invocation with `key` as its first key.
    #[cfg(any(feature = "session", test))]
    pub(crate) fn key<T: ::redis::ToRedisArgs>(&self, key: T) -> Invocation<'_> {
        let mut inv = self.prepare_invoke();
        inv.key(key);
        inv
    }

    /// An invocation with `arg` as its first argument.
    #[cfg(test)]
    pub(crate) fn arg<T: ::redis::ToRedisArgs>(&self, arg: T) -> Invocation<'_> {
        let mut inv = self.prepare_invoke();
        inv.arg(arg);
        inv
    }

    /// An invocation with no keys or arguments yet.
    #[cfg(any(feature = "session", test))]
    pub(crate) fn prepare_invoke(&self) -> Invocation<'_> {
        Invocation {
            script: self,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// A call of a [`Script`] with its keys and arguments, for [`RedisBackend::invoke`].
#[cfg(any(feature = "session", test))]
pub(crate) struct Invocation<'a> {
    script: &'a Script,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

#[cfg(any(feature = "session", test))]
impl Invocation<'_> {
    pub(crate) fn key<T: ::redis::ToRedisArgs>(&mut self, key: T) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    pub(crate) fn arg<T: ::redis::ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }
}

/// The shared Redis connection, key layout and call discipline. Cheap to clone.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

/// The connection: to one Redis, or to a Cluster. Both multiplex and reconnect by
/// themselves; a clone shares the connection.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConn),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, ::redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => Box::pin(c.request(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a ::redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<::redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.client.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.client.get_db(),
        }
    }
}

struct Inner {
    conn: Conn,
    /// For pub/sub: the one Redis, or each node given for a Cluster (on a Cluster a
    /// message published on any node reaches the subscribers of every node).
    #[cfg(feature = "cache")]
    clients: Vec<Client>,
    /// The node the next subscription tries first, moved on after a failure.
    #[cfg(feature = "cache")]
    next_client: std::sync::atomic::AtomicUsize,
    #[cfg(feature = "cache")]
    connect_timeout: Duration,
    prefix: String,
    timeout: Duration,
    address: String,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("address", &self.inner.address)
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisBackend`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisBackendBuilder {
    url: String,
    /// The nodes of a Cluster; `None` for one Redis at `url`.
    cluster: Option<Vec<String>>,
    prefix: String,
    timeout: Duration,
    connect_timeout: Duration,
}

impl RedisBackend {
    /// Starts a builder for the Redis at `url` (`redis://host:port/db`, `rediss://`,
    /// `redis+unix:///path`).
    pub fn builder(url: impl Into<String>) -> RedisBackendBuilder {
        RedisBackendBuilder {
            url: url.into(),
            cluster: None,
            prefix: "tower-scale".into(),
            timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(500),
        }
    }

    /// Starts a builder for a Redis Cluster, reached through any of `nodes`
    /// (`redis://host:port` URLs; one reachable node is enough, the rest of the Cluster
    /// is discovered from it). Every layer works on it with the same API as on one Redis.
    ///
    /// ```no_run
    /// use tower_scale::redis::RedisBackend;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let redis = RedisBackend::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
    ///     .prefix("myapp")
    ///     .build()?;
    /// assert!(redis.is_cluster());
    /// # Ok(()) }
    /// ```
    pub fn cluster<I, S>(nodes: I) -> RedisBackendBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisBackendBuilder {
            url: String::new(),
            cluster: Some(nodes.into_iter().map(Into::into).collect()),
            prefix: "tower-scale".into(),
            timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(500),
        }
    }

    /// True for a backend on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.conn, Conn::Cluster(_))
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The server address (without credentials), for logs and health reports: for a
    /// Cluster, the nodes it was given.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// The Redis key for `tag` in `namespace`: `{prefix}:{namespace}:{{tag}}`.
    ///
    /// `tag` is escaped (`%`, `{`, `}` are percent-encoded; the empty tag is written `%`,
    /// which no escaped tag can be, because Redis ignores an empty `{}`), so two different
    /// tags never give the same key and no tag can move the hash slot. `namespace` is
    /// escaped the same way, and its `:` too, so (prefix, namespace) pairs cannot collide.
    pub fn key(&self, namespace: &str, tag: &str) -> String {
        let mut k = self.key_head(namespace);
        k.push_str(&escape_tag(tag));
        k.push('}');
        k
    }

    /// `{prefix}:{namespace}:{`: what every key of `namespace` starts with, for callers
    /// that write the tag themselves (escaped with [`escape_tag`]) and then `}`.
    pub fn key_head(&self, namespace: &str) -> String {
        let namespace = escape_key_part(namespace);
        let mut k = String::with_capacity(self.inner.prefix.len() + namespace.len() + 48);
        k.push_str(&self.inner.prefix);
        k.push(':');
        if namespace.contains(':') {
            k.push_str(&namespace.replace(':', "%3A"));
        } else {
            k.push_str(&namespace);
        }
        k.push_str(":{");
        k
    }

    /// A second key on the same hash slot as [`key`](Self::key)`(namespace, tag)`:
    /// `{prefix}:{namespace}:{{tag}}:{suffix}`.
    pub fn key_with_suffix(&self, namespace: &str, tag: &str, suffix: &str) -> String {
        let mut k = self.key(namespace, tag);
        k.push(':');
        k.push_str(&escape_key_part(suffix));
        k
    }

    /// Runs a command with the timeout, recording its round trip under `op`.
    ///
    /// # Errors
    ///
    /// [`StoreUnavailable`] if Redis does not answer within the timeout, the connection
    /// fails, or Redis answers with an error.
    pub(crate) async fn query<T: FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &Cmd,
    ) -> Result<T, StoreUnavailable> {
        let mut conn = self.inner.conn.clone();
        self.timed(op, cmd.query_async(&mut conn)).await
    }

    /// Sends a pipeline (several commands, one round trip) with the timeout, recording its
    /// round trip under `op`.
    ///
    /// # Errors
    ///
    /// As [`query`](Self::query).
    #[cfg(any(feature = "cache", feature = "jobs"))]
    pub(crate) async fn pipeline<T: FromRedisValue>(
        &self,
        op: &'static str,
        pipeline: &Pipeline,
    ) -> Result<T, StoreUnavailable> {
        let mut conn = self.inner.conn.clone();
        self.timed(op, pipeline.query_async(&mut conn)).await
    }

    /// Runs a script invocation (EVALSHA, loading the script on `NOSCRIPT`) with the
    /// timeout, recording its round trip under `op`.
    ///
    /// # Errors
    ///
    /// As [`query`](Self::query). A `NOSCRIPT` reply is not an error: the script is loaded
    /// and called again within the same timeout.
    #[cfg(any(feature = "session", test))]
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        op: &'static str,
        invocation: &Invocation<'_>,
    ) -> Result<T, StoreUnavailable> {
        let mut c = cmd("EVALSHA");
        c.arg(invocation.script.get_hash())
            .arg(invocation.keys.len())
            .arg(&invocation.keys)
            .arg(&invocation.args);
        self.evalsha(op, invocation.script, &c).await
    }

    /// Runs `cmd`, an `EVALSHA` of `script` the caller built (`EVALSHA <sha> <numkeys>
    /// <keys...> <args...>`, with [`Script::get_hash`]), with the timeout, recording its
    /// round trip under `op`; on `NOSCRIPT` the script is loaded and `cmd` sent again
    /// within the same timeout. Cheaper than [`invoke`](Self::invoke), which copies every
    /// argument once more into the command it builds.
    ///
    /// # Errors
    ///
    /// As [`query`](Self::query).
    #[cfg(any(
        feature = "rate-limit",
        feature = "session",
        feature = "cache",
        feature = "jobs"
    ))]
    pub(crate) async fn evalsha<T: FromRedisValue>(
        &self,
        op: &'static str,
        script: &Script,
        cmd: &Cmd,
    ) -> Result<T, StoreUnavailable> {
        let mut conn = self.inner.conn.clone();
        self.timed(op, async move {
            let no_script = |r: &::redis::RedisResult<T>| {
                matches!(r, Err(e) if e.kind() == ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoScript))
            };
            let reply = cmd.query_async(&mut conn).await;
            if !no_script(&reply) {
                return reply;
            }
            load(&mut conn, script, cmd).await?;
            let reply = cmd.query_async(&mut conn).await;
            if !no_script(&reply) {
                return reply;
            }
            // On a Cluster whose slot just moved, the script was loaded on the node the
            // client's slot map names, which the call, redirected, no longer reaches. The
            // call goes once with the script's source (`EVAL`), which runs it wherever it
            // lands and keeps it there.
            as_eval(cmd, script).query_async(&mut conn).await
        })
        .await
    }

    /// A new dedicated connection subscribed to `channel` (a name from
    /// [`channel`](Self::channel)), for listeners such as the cache's invalidation
    /// subscriber. Pub/sub needs a connection of its own: the shared multiplexed one keeps
    /// serving commands. On a Cluster it is a connection to one of the nodes given (plain
    /// pub/sub reaches every node's subscribers); after a failure the next attempt tries
    /// the next node.
    ///
    /// # Errors
    ///
    /// [`StoreUnavailable`] if the connection or the `SUBSCRIBE` does not complete within
    /// the connect timeout plus the call timeout.
    #[cfg(feature = "cache")]
    pub(crate) async fn subscribe(
        &self,
        channel: &str,
    ) -> Result<::redis::aio::PubSub, StoreUnavailable> {
        use std::sync::atomic::Ordering::Relaxed;
        let limit = self.inner.connect_timeout + self.inner.timeout;
        let clients = &self.inner.clients;
        let i = self.inner.next_client.load(Relaxed) % clients.len();
        let fut = async {
            let mut pubsub = clients[i].get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, ::redis::RedisError>(pubsub)
        };
        let res = match tokio::time::timeout(limit, fut).await {
            Ok(Ok(p)) => return Ok(p),
            Ok(Err(e)) => Err(StoreUnavailable::backend(e)),
            Err(_) => Err(StoreUnavailable::timeout(limit)),
        };
        // The next attempt tries the next node (a Cluster node that failed over, say).
        self.inner.next_client.store(i + 1, Relaxed);
        res
    }

    /// Subscriptions to `channel` for a listener that must hear every message soon: on
    /// one Redis, the one; on a Cluster, one on each master. A message reaches every node,
    /// but one published on another node crosses the Cluster bus first, which held some
    /// messages for tens of milliseconds (`docs/benchmarks.md`); the layers publish on the
    /// master of the key or tag concerned, so a subscriber on every master hears each
    /// message first from where it was published (and again, later, from the others).
    ///
    /// # Errors
    ///
    /// As [`subscribe`](Self::subscribe), for any of them; on a Cluster also when its
    /// masters cannot be listed.
    #[cfg(feature = "cache")]
    pub(crate) async fn subscribe_all(
        &self,
        channel: &str,
    ) -> Result<Vec<::redis::aio::PubSub>, StoreUnavailable> {
        if !self.is_cluster() {
            return Ok(vec![self.subscribe(channel).await?]);
        }
        let nodes: String = self
            .query("cluster_nodes", cmd("CLUSTER").arg("NODES"))
            .await?;
        let seed = self.inner.clients[0].get_connection_info().clone();
        let masters: Vec<::redis::Client> = nodes
            .lines()
            .filter_map(|line| master_address(line, &seed))
            .filter_map(|info| ::redis::Client::open(info).ok())
            .collect();
        if masters.is_empty() {
            return Err(StoreUnavailable::backend(std::io::Error::other(
                "the Cluster lists no reachable master",
            )));
        }
        let limit = self.inner.connect_timeout + self.inner.timeout;
        let subscribe = masters.iter().map(|client| async move {
            let fut = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(channel).await?;
                Ok::<_, ::redis::RedisError>(pubsub)
            };
            match tokio::time::timeout(limit, fut).await {
                Ok(Ok(p)) => Ok(p),
                Ok(Err(e)) => Err(StoreUnavailable::backend(e)),
                Err(_) => Err(StoreUnavailable::timeout(limit)),
            }
        });
        futures_util::future::try_join_all(subscribe).await
    }

    /// The pub/sub channel `{prefix}:{name}`, so applications sharing a Redis under
    /// different prefixes do not hear each other.
    pub fn channel(&self, name: &str) -> String {
        format!("{}:{}", self.inner.prefix, escape_key_part(name))
    }

    /// Sends `PING` and returns the round-trip time.
    ///
    /// # Errors
    ///
    /// [`StoreUnavailable`] if Redis does not answer within the timeout, the connection
    /// fails, or Redis answers with an error.
    pub async fn ping(&self) -> Result<Duration, StoreUnavailable> {
        let start = Instant::now();
        if self.is_cluster() {
            // On a Cluster, `PING` goes to every master and fails if any is down: one
            // node answering says the Cluster is reachable, and a master that is down is
            // its slots' concern (each layer's failure mode), not the whole service's.
            let _: String = self.query("ping", cmd("ECHO").arg("ping")).await?;
        } else {
            let _: String = self.query("ping", &cmd("PING")).await?;
        }
        Ok(start.elapsed())
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = ::redis::RedisResult<T>>,
    ) -> Result<T, StoreUnavailable> {
        let start = Instant::now();
        let res = tokio::time::timeout(self.inner.timeout, fut).await;
        let elapsed = start.elapsed();
        match res {
            Ok(Ok(v)) => {
                ::metrics::histogram!("tower_scale.redis.command.duration", "op" => op)
                    .record(elapsed.as_secs_f64());
                Ok(v)
            }
            Ok(Err(e)) => {
                ::metrics::counter!("tower_scale.redis.command.errors", "op" => op, "kind" => "error")
                    .increment(1);
                tracing::debug!(op, error = %e, address = %self.inner.address, "redis call failed");
                Err(StoreUnavailable::backend(e))
            }
            Err(_) => {
                ::metrics::counter!("tower_scale.redis.command.errors", "op" => op, "kind" => "timeout")
                    .increment(1);
                tracing::debug!(op, timeout = ?self.inner.timeout, address = %self.inner.address, "redis call timed out");
                Err(StoreUnavailable::timeout(self.inner.timeout))
            }
        }
    }
}

impl RedisBackendBuilder {
    /// The key prefix every key starts with (default `tower-scale`): one per application
    /// sharing a Redis. Must be non-empty and free of `{`, `}` and whitespace.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one call may take before it counts as a failure (default 100 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long one connection attempt may take (default 500 ms).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Validates the configuration and creates the (lazy) connection.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a URL redis-rs cannot parse, a Cluster without nodes, a bad
    /// prefix or a zero timeout.
    ///
    /// # Panics
    ///
    /// Must be called within a Tokio runtime, which the connection's background work runs on.
    pub fn build(self) -> Result<RedisBackend, ConfigError> {
        crate::describe::once();
        if self.prefix.is_empty()
            || self
                .prefix
                .chars()
                .any(|c| c == '{' || c == '}' || c.is_whitespace())
        {
            return Err(ConfigError::new(
                "prefix",
                format!(
                    "`{}` must be non-empty, with no braces or whitespace (braces would break Redis Cluster hash tags)",
                    self.prefix
                ),
            ));
        }
        if self
            .cluster
            .as_ref()
            .is_some_and(|nodes| nodes.is_empty() || nodes.iter().any(|n| n.trim().is_empty()))
        {
            return Err(ConfigError::new(
                "redis_cluster_nodes",
                "list at least one node, e.g. redis://127.0.0.1:7000",
            ));
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(ConfigError::new(
                "timeout",
                "must be above zero; a few tens of milliseconds suits a Redis on the same network",
            ));
        }
        let parse = |url: &str| {
            Client::open(url).map_err(|e| {
                ConfigError::new(
                    "redis_url",
                    format!(
                        "cannot parse the Redis URL `{url}` ({e}); write e.g. redis://127.0.0.1:6379/0"
                    ),
                )
            })
        };
        let response_timeout = self.timeout.max(Duration::from_secs(1));
        let (conn, clients, address) = if let Some(nodes) = &self.cluster {
            let clients = nodes
                .iter()
                .map(|u| parse(u.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            let address = format!(
                "cluster {}",
                clients
                    .iter()
                    .map(|c| c.get_connection_info().addr().to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let client = ::redis::cluster::ClusterClientBuilder::new(
                clients.iter().map(|c| c.get_connection_info().clone()),
            )
            .connection_timeout(self.connect_timeout)
            .response_timeout(response_timeout)
            // Redirections and reconnections are retried, with short waits: callers are
            // bounded by `timeout` anyway.
            .retries(3)
            .min_retry_wait(10)
            .max_retry_wait(200)
            .build()
            .map_err(|e| {
                ConfigError::new(
                    "redis_cluster_nodes",
                    format!("cannot set up the Redis Cluster client: {e}"),
                )
            })?;
            let config = ::redis::cluster::ClusterConfig::new()
                .set_connection_timeout(self.connect_timeout)
                .set_response_timeout(response_timeout);
            let conn = ClusterConn::new(
                client.get_pending_async_connection_with_config(config),
                clients[0].get_connection_info().clone(),
                self.connect_timeout,
                response_timeout,
            );
            (Conn::Cluster(conn), clients, address)
        } else {
            let client = parse(&self.url)?;
            let address = client.get_connection_info().addr().to_string();
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(Some(response_timeout))
                // Reconnect attempts back off up to a second; callers are bounded by `timeout`.
                .set_number_of_retries(3)
                .set_max_delay(Duration::from_secs(1));
            let conn =
                ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(|e| {
                    ConfigError::new(
                        "redis_url",
                        format!("cannot create the Redis connection: {e}"),
                    )
                })?;
            (Conn::Single(conn), vec![client], address)
        };
        #[cfg(not(feature = "cache"))]
        let _ = clients;
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                conn,
                #[cfg(feature = "cache")]
                clients,
                #[cfg(feature = "cache")]
                next_client: std::sync::atomic::AtomicUsize::new(0),
                #[cfg(feature = "cache")]
                connect_timeout: self.connect_timeout,
                prefix: self.prefix,
                timeout: self.timeout,
                address,
            }),
        })
    }
}

/// A `CLUSTER NODES` line's address, if it is a master not marked failed, as connection
/// settings: the seed's (credentials, TLS), at the node's host and port.
#[cfg(feature = "cache")]
fn master_address(line: &str, seed: &::redis::ConnectionInfo) -> Option<::redis::ConnectionInfo> {
    let mut fields = line.split_whitespace();
    let addr = fields.nth(1)?;
    let flags = fields.next()?;
    let flags: Vec<&str> = flags.split(',').collect();
    if !flags.contains(&"master") || flags.iter().any(|f| f.starts_with("fail")) {
        return None;
    }
    let hostport = addr.split('@').next()?;
    let (host, port) = hostport.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if host.is_empty() || port == 0 {
        return None;
    }
    Some(node_info(host, port, seed))
}

/// Connection settings for the node at `host:port`: the seed's (credentials, TLS).
fn node_info(host: &str, port: u16, seed: &::redis::ConnectionInfo) -> ::redis::ConnectionInfo {
    let addr = match seed.addr() {
        ::redis::ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ::redis::ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ::redis::ConnectionAddr::Tcp(host.to_owned(), port),
    };
    seed.clone().set_addr(addr)
}

/// Loads `script` where `cmd` (its `EVALSHA`) runs: on one Redis, there; on a Cluster, on
/// the master of the slot of `cmd`'s first key.
#[cfg(any(
    feature = "rate-limit",
    feature = "session",
    feature = "cache",
    feature = "jobs"
))]
async fn load(conn: &mut Conn, script: &Script, cmd: &Cmd) -> ::redis::RedisResult<()> {
    use ::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
    let mut load = ::redis::cmd("SCRIPT");
    load.arg("LOAD").arg(&*script.code);
    match (conn, direct::script_key(cmd)) {
        (Conn::Cluster(c), Some(key)) => {
            let route = Route::with_key(key, SlotAddr::Master);
            c.client
                .route_command(
                    load,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                )
                .await?;
        }
        (conn, _) => {
            let _: ::redis::Value = load.query_async(conn).await?;
        }
    }
    Ok(())
}

/// `cmd`, an `EVALSHA` of `script`, as an `EVAL` with the script's source.
#[cfg(any(
    feature = "rate-limit",
    feature = "session",
    feature = "cache",
    feature = "jobs"
))]
fn as_eval(cmd: &Cmd, script: &Script) -> Cmd {
    let mut eval = ::redis::cmd("EVAL");
    eval.arg(&*script.code);
    for arg in cmd.args_iter().skip(2) {
        if let ::redis::Arg::Simple(a) = arg {
            eval.arg(a);
        }
    }
    eval
}

/// A tag as keys hold it: escaped with [`escape_key_part`], and the empty tag written `%`
/// (which no escaped tag can be).
pub fn escape_tag(tag: &str) -> std::borrow::Cow<'_, str> {
    if tag.is_empty() {
        std::borrow::Cow::Borrowed("%")
    } else {
        escape_key_part(tag)
    }
}

#[cfg(test)]
mod tests;
