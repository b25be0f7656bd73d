//! [`Cache`]: the application-data face of the engine.

use std::fmt::{self, Write as _};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::engine::CacheEngine;
use super::entry::{Entry, Lifetimes, Lookup, Outcome};
use super::flight::{Join, Leader};
use crate::StoreUnavailable;

use crate::BoxError;

/// Cache-aside for application data: values of type `V` under keys of type `K` (anything
/// `Display`), serialised with serde (JSON) for the Redis tier and kept decoded in L1.
///
/// Every method degrades rather than fails when Redis does: reads fall back to L1 and the
/// loader; only `set`, `set_with` and the `invalidate*` methods report that Redis could not
/// be told.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tower_scale::cache::{Cache, CacheEngine, LoadOptions};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let engine = CacheEngine::builder().ttl(Duration::from_secs(30)).build()?;
/// let users: Cache<u64, String> = Cache::new(&engine, "users");
///
/// // Concurrent misses of one key run the loader once; the others wait for it.
/// let name = users
///     .get_or_load(&42, || async { Ok::<_, std::io::Error>("Ada".to_string()) })
///     .await?;
/// assert_eq!(name, "Ada");
///
/// // Tagged values are invalidated together, in O(1), on every instance.
/// let opts = LoadOptions::new().tag("team:7").ttl(Duration::from_secs(5));
/// users.get_or_load_with(&43, &opts, || async { Ok::<_, std::io::Error>("Grace".into()) }).await?;
/// engine.invalidate_tag("team:7").await?;
/// assert_eq!(users.get(&43).await, None);
/// # Ok(()) }
/// ```
pub struct Cache<K: ?Sized, V> {
    engine: CacheEngine,
    namespace: Arc<str>,
    _types: PhantomData<fn(&K) -> V>,
}

impl<K: ?Sized, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            namespace: Arc::clone(&self.namespace),
            _types: PhantomData,
        }
    }
}

impl<K: ?Sized, V> fmt::Debug for Cache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.namespace)
            .field("engine", &self.engine)
            .finish()
    }
}

/// Per-call settings for [`Cache::get_or_load_with`] and [`Cache::set_with`]; unset ones
/// take the engine's defaults.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct LoadOptions {
    ttl: Option<Duration>,
    swr: Option<Duration>,
    sie: Option<Duration>,
    tags: Vec<String>,
}

impl LoadOptions {
    /// The engine's defaults, no tags.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long the value is fresh.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The stale-while-revalidate window.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.swr = Some(window);
        self
    }

    /// The stale-if-error window.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.sie = Some(window);
        self
    }

    /// Adds a tag: [`CacheEngine::invalidate_tag`] drops every value carrying it.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    fn lifetimes(&self, defaults: Lifetimes) -> Lifetimes {
        Lifetimes {
            ttl: self.ttl.unwrap_or(defaults.ttl),
            swr: self.swr.unwrap_or(defaults.swr),
            sie: self.sie.unwrap_or(defaults.sie),
        }
    }

    fn tag_refs(&self) -> Vec<&str> {
        self.tags.iter().map(String::as_str).collect()
    }
}

/// Why [`Cache::set`] or [`Cache::set_with`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum SetError {
    /// The value does not serialise as JSON (a map with non-string keys, a failing
    /// `Serialize`): nothing was changed, here or in Redis.
    Encode(serde_json::Error),
    /// Redis could not be told: the value is in this instance's L1 only, and other
    /// instances may keep their copies until those expire.
    Store(StoreUnavailable),
}

impl fmt::Display for SetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetError::Encode(e) => write!(f, "cache value does not serialise: {e}"),
            SetError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SetError::Encode(e) => Some(e),
            SetError::Store(e) => Some(e),
        }
    }
}

/// A loader failed. Every caller that waited for that load gets a clone; the failure is
/// not cached.
#[derive(Clone)]
pub struct LoadError {
    inner: Arc<dyn std::error::Error + Send + Sync>,
}

impl LoadError {
    fn new(err: impl Into<BoxError>) -> Self {
        Self {
            inner: Arc::from(err.into()),
        }
    }

    /// The loader's error, if it is a `T`.
    pub fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        self.inner.downcast_ref::<T>()
    }
}

impl fmt::Debug for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LoadError").field(&self.inner).finish()
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cache loader failed: {}", self.inner)
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.inner)
    }
}

impl<K, V> Cache<K, V>
where
    K: fmt::Display + ?Sized,
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// A cache of `V` values in `namespace` of `engine`. Caches with different
    /// namespaces never see each other's keys.
    pub fn new(engine: &CacheEngine, namespace: &str) -> Self {
        let ns = namespace.replace('%', "%25").replace(':', "%3A");
        Self {
            engine: engine.clone(),
            namespace: format!("d:{ns}:").into(),
            _types: PhantomData,
        }
    }

    /// The engine behind this cache.
    pub fn engine(&self) -> &CacheEngine {
        &self.engine
    }

    fn full_key(&self, key: &K) -> String {
        let mut k = String::with_capacity(self.namespace.len() + 24);
        k.push_str(&self.namespace);
        let _ = write!(k, "{key}");
        k
    }

    fn decode(entry: &Entry) -> Option<V> {
        decode::<V>(entry)
    }

    /// The value for `key` if one is cached and fresh (L1, then L2).
    pub async fn get(&self, key: &K) -> Option<V> {
        let full = self.full_key(key);
        loop {
            if let Lookup::Fresh(e) = self.engine.lookup(&full)
                && let Some(v) = Self::decode(&e)
            {
                self.engine.served_fresh();
                return Some(v);
            }
            match self.engine.join(&full).await {
                Join::Done(Outcome::Value(e)) => return Self::decode(&e),
                Join::Done(_) => return None,
                Join::Abandoned => {}
                Join::Lead(mut leader) => {
                    let entry = leader.read_l2(&[]).await;
                    let now = self.engine.now();
                    return entry
                        .filter(|e| now < e.fresh_until)
                        .and_then(|e| Self::decode(&e));
                }
            }
        }
    }

    /// Stores `value` under `key` with the engine's defaults (see
    /// [`set_with`](Self::set_with)).
    ///
    /// # Errors
    ///
    /// As [`set_with`](Self::set_with).
    pub async fn set(&self, key: &K, value: &V) -> Result<(), SetError> {
        self.set_with(key, value, &LoadOptions::new()).await
    }

    /// Stores `value` under `key`: every instance drops its copy first, then the value
    /// is written to L1 and L2.
    ///
    /// # Errors
    ///
    /// [`SetError::Encode`] if the value does not serialise (checked before anything
    /// changes); [`SetError::Store`] if Redis could not be told, and the value is then in
    /// this instance's L1 only.
    pub async fn set_with(&self, key: &K, value: &V, opts: &LoadOptions) -> Result<(), SetError> {
        let bytes = serde_json::to_vec(value).map_err(SetError::Encode)?;
        let full = self.full_key(key);
        let told = self.engine.invalidate_key(&full).await;
        let tags = opts.tag_refs();
        let lifetimes = opts.lifetimes(self.engine.defaults());
        self.engine
            .write(
                &full,
                Bytes::from(bytes),
                Arc::new(value.clone()),
                lifetimes,
                &tags,
            )
            .await;
        told.map_err(SetError::Store)
    }

    /// Drops `key` here, from Redis, and from every instance's L1 (within milliseconds,
    /// through pub/sub). A load of `key` under way anywhere does not write its value back
    /// afterwards.
    ///
    /// # Errors
    ///
    /// [`StoreUnavailable`] if Redis could not be told (the local copy is dropped).
    pub async fn invalidate(&self, key: &K) -> Result<(), StoreUnavailable> {
        self.engine.invalidate_key(&self.full_key(key)).await
    }

    /// Drops every key of this cache whose text starts with `prefix`, here and on every
    /// instance. In Redis this scans the cache's keys: prefer tags for frequent use.
    ///
    /// # Errors
    ///
    /// As [`invalidate`](Self::invalidate).
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<(), StoreUnavailable> {
        let full = format!("{}{prefix}", self.namespace);
        self.engine.invalidate_key_prefix(&full).await
    }

    /// The value for `key`: from L1, else L2, else `loader` (run once per key per
    /// instance however many callers miss at once; the others wait for its result).
    ///
    /// # Errors
    ///
    /// The loader's error, shared by every caller that waited for it and not cached,
    /// unless a stale value within stale-if-error can be served instead.
    pub async fn get_or_load<F, Fut, E>(&self, key: &K, loader: F) -> Result<V, LoadError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Into<BoxError> + Send,
    {
        self.get_or_load_with(key, &LoadOptions::new(), loader)
            .await
    }

    /// [`get_or_load`](Self::get_or_load) with a TTL, stale windows or tags of its own.
    ///
    /// # Errors
    ///
    /// As [`get_or_load`](Self::get_or_load).
    pub async fn get_or_load_with<F, Fut, E>(
        &self,
        key: &K,
        opts: &LoadOptions,
        loader: F,
    ) -> Result<V, LoadError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Into<BoxError> + Send,
    {
        let full = self.full_key(key);
        loop {
            let fallback = match self.engine.lookup(&full) {
                Lookup::Fresh(e) => match Self::decode(&e) {
                    Some(v) => {
                        self.engine.served_fresh();
                        return Ok(v);
                    }
                    None => None,
                },
                Lookup::Stale(e) => match Self::decode(&e) {
                    Some(v) => {
                        if let Some(leader) = self.engine.served_stale(&full) {
                            let (engine, opts) = (self.engine.clone(), opts.clone());
                            tokio::spawn(async move {
                                let _ = lead(&engine, leader, &opts, loader, None).await;
                            });
                        }
                        return Ok(v);
                    }
                    None => None,
                },
                Lookup::Miss { fallback } => fallback,
            };
            match self.engine.join(&full).await {
                Join::Done(Outcome::Value(e)) => {
                    if let Some(v) = Self::decode(&e) {
                        return Ok(v);
                    }
                }
                Join::Done(Outcome::Failed(err)) => {
                    return match fallback.as_deref().and_then(Self::decode) {
                        Some(v) => {
                            self.engine.served_stale_on_error();
                            Ok(v)
                        }
                        None => Err(err),
                    };
                }
                // The loader could not share its value, or went away: look again.
                Join::Done(Outcome::Pass) | Join::Abandoned => {}
                Join::Lead(leader) => {
                    return lead(&self.engine, leader, opts, loader, fallback).await;
                }
            }
        }
    }
}

async fn lead<V, F, Fut, E>(
    engine: &CacheEngine,
    mut leader: Leader,
    opts: &LoadOptions,
    loader: F,
    mut fallback: Option<Arc<Entry>>,
) -> Result<V, LoadError>
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
    E: Into<BoxError> + Send,
{
    let tags = opts.tag_refs();
    if let Some(e) = leader.read_l2(&tags).await {
        let now = engine.now();
        if now < e.fresh_until {
            if let Some(v) = decode::<V>(&e) {
                leader.complete(Outcome::Value(e));
                return Ok(v);
            }
        } else if now < e.sie_until {
            fallback = Some(e);
        }
    }
    engine.missed();
    match loader().await {
        Ok(v) => {
            leader.load_succeeded();
            let Ok(bytes) = serde_json::to_vec(&v) else {
                tracing::warn!(key = %leader.key, "cache value does not serialise; not cached");
                leader.complete(Outcome::Pass);
                return Ok(v);
            };
            let lifetimes = opts.lifetimes(engine.defaults());
            let entry = leader
                .store(
                    Bytes::from(bytes),
                    Some(Arc::new(v.clone())),
                    lifetimes,
                    &tags,
                    true,
                )
                .await;
            leader.complete(Outcome::Value(entry));
            Ok(v)
        }
        Err(e) => {
            leader.load_failed();
            let err = LoadError::new(e);
            if let Some(fb) = fallback
                && let Some(v) = decode::<V>(&fb)
            {
                engine.served_stale_on_error();
                leader.complete(Outcome::Value(fb));
                return Ok(v);
            }
            leader.complete(Outcome::Failed(err.clone()));
            Err(err)
        }
    }
}

fn decode<V: DeserializeOwned + Clone + Send + Sync + 'static>(entry: &Entry) -> Option<V> {
    entry
        .decoded::<V>(|b| serde_json::from_slice(b).ok())
        .map(|v| V::clone(&v))
}
