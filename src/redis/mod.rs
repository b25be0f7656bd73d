//! The shared Redis backend: one connection handle for every layer that keeps state in Redis.
//!
//! [`RedisBackend`] wraps redis-rs's `ConnectionManager`: one multiplexed connection per
//! backend (concurrent requests pipeline on one socket, so a clone per request costs
//! nothing), reconnecting by itself after a failure. On top it adds what every layer needs
//! and must not write twice:
//!
//! - **A key layout**: `{prefix}:{namespace}:{{tag}}[:suffix]`. The tag is the logical key
//!   (a client, a session, a cache entry) in Redis Cluster hash-tag braces, so every Redis key
//!   of one logical key lands on one slot and a Lua script may touch them all. The tag is
//!   escaped so no input can break out of the braces.
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

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, FromRedisValue};
use tokio::time::Instant;

// The commands the layers send: each helper below exists in the builds whose layers use it.
#[cfg(any(
    feature = "rate-limit",
    feature = "session",
    feature = "cache",
    feature = "jobs"
))]
pub(crate) use ::redis::Script;
#[cfg(feature = "session")]
pub(crate) use ::redis::ScriptInvocation;
#[cfg(any(
    feature = "rate-limit",
    feature = "session",
    feature = "cache",
    feature = "jobs"
))]
pub(crate) use ::redis::Value;
pub(crate) use ::redis::{Cmd, cmd};
#[cfg(feature = "cache")]
pub(crate) use ::redis::{Pipeline, pipe};

use crate::key::escape_key_part;
use crate::{ConfigError, StoreUnavailable};

/// The shared Redis connection, key layout and call discipline. Cheap to clone.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    #[cfg(feature = "cache")]
    client: Client,
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
            prefix: "tower-scale".into(),
            timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(500),
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The server address (without credentials), for logs and health reports.
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
    #[cfg(feature = "cache")]
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
    #[cfg(feature = "session")]
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        op: &'static str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StoreUnavailable> {
        let mut conn = self.inner.conn.clone();
        self.timed(op, invocation.invoke_async(&mut conn)).await
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
    #[cfg(any(feature = "rate-limit", feature = "cache", feature = "jobs"))]
    pub(crate) async fn evalsha<T: FromRedisValue>(
        &self,
        op: &'static str,
        script: &Script,
        cmd: &Cmd,
    ) -> Result<T, StoreUnavailable> {
        let mut conn = self.inner.conn.clone();
        self.timed(op, async move {
            match cmd.query_async(&mut conn).await {
                Err(e)
                    if e.kind()
                        == ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoScript) =>
                {
                    script.load_async(&mut conn).await?;
                    cmd.query_async(&mut conn).await
                }
                other => other,
            }
        })
        .await
    }

    /// A new dedicated connection subscribed to `channel` (a name from
    /// [`channel`](Self::channel)), for listeners such as the cache's invalidation
    /// subscriber. Pub/sub needs a connection of its own: the shared multiplexed one keeps
    /// serving commands.
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
        let limit = self.inner.connect_timeout + self.inner.timeout;
        let fut = async {
            let mut pubsub = self.inner.client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, ::redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(StoreUnavailable::backend(e)),
            Err(_) => Err(StoreUnavailable::timeout(limit)),
        }
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
        let _: String = self.query("ping", &cmd("PING")).await?;
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
    /// A [`ConfigError`] for a URL redis-rs cannot parse, a bad prefix or a zero timeout.
    ///
    /// # Panics
    ///
    /// Must be called within a Tokio runtime, which the connection's background work runs on.
    pub fn build(self) -> Result<RedisBackend, ConfigError> {
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
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(ConfigError::new(
                "timeout",
                "must be above zero; a few tens of milliseconds suits a Redis on the same network",
            ));
        }
        let client = Client::open(self.url.as_str()).map_err(|e| {
            ConfigError::new(
                "redis_url",
                format!("cannot parse the Redis URL ({e}); write e.g. redis://127.0.0.1:6379/0"),
            )
        })?;
        let address = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout.max(Duration::from_secs(1))))
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
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                conn,
                #[cfg(feature = "cache")]
                client,
                #[cfg(feature = "cache")]
                connect_timeout: self.connect_timeout,
                prefix: self.prefix,
                timeout: self.timeout,
                address,
            }),
        })
    }
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
