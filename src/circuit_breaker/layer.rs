//! [`CircuitBreakerLayer`], its builder, keys and handle.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::core::{Breaker, Config, State, Transition, Window};
use super::service::CircuitBreaker;
use crate::ConfigError;
use crate::classify::HttpClassifier;
use crate::clock::Clock;
use crate::duration::micros;
use crate::key::KeyExtractor;
use crate::keyed::KeyedMap;

/// Which breaker a request goes through.
pub trait BreakerKey<Req>: Clone + Send + Sync + 'static {
    /// What identifies the breaker.
    type Key<'a>: Hash
    where
        Req: 'a;

    /// The request's breaker, or `None` for the layer's shared one.
    fn key<'a>(&self, req: &'a Req) -> Option<Self::Key<'a>>;
}

/// One breaker for every request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl<Req> BreakerKey<Req> for Single {
    type Key<'a>
        = ()
    where
        Req: 'a;

    #[inline]
    fn key(&self, _: &Req) -> Option<()> {
        None
    }
}

/// One breaker per upstream host (the default): the request URI's authority (an outgoing
/// client's request), else its `Host` header. Requests naming no host share the layer's
/// breaker.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerHost;

impl<B> BreakerKey<http::Request<B>> for PerHost {
    type Key<'a>
        = &'a str
    where
        B: 'a;

    #[inline]
    fn key<'a>(&self, req: &'a http::Request<B>) -> Option<&'a str> {
        match req.uri().authority() {
            Some(a) => Some(a.as_str()),
            None => req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok()),
        }
    }
}

/// Keys breakers with one of the crate's [`KeyExtractor`]s, the same ones the rate
/// limiter uses: [`HeaderKey`](crate::key::HeaderKey) for a tenant header,
/// [`ClientIp`](crate::key::ClientIp), [`RouteKey`](crate::key::RouteKey) for one breaker
/// per route of an inbound service. A request the extractor cannot key shares the layer's
/// breaker.
#[derive(Debug, Clone)]
pub struct ByKey<K>(pub K);

impl<K: KeyExtractor, B> BreakerKey<http::Request<B>> for ByKey<K> {
    type Key<'a>
        = K::Key
    where
        B: 'a;

    fn key(&self, req: &http::Request<B>) -> Option<K::Key> {
        self.0.extract(req).ok()
    }
}

/// Keys requests with a closure; from [`key_fn`].
#[derive(Clone)]
pub struct KeyFn<F>(F);

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFn")
    }
}

/// Keys requests with `f` (e.g. by tenant); `None` uses the layer's shared breaker.
pub fn key_fn<Req, K, F>(f: F) -> KeyFn<F>
where
    F: Fn(&Req) -> Option<K> + Clone + Send + Sync + 'static,
    K: Hash,
{
    KeyFn(f)
}

impl<Req, K, F> BreakerKey<Req> for KeyFn<F>
where
    F: Fn(&Req) -> Option<K> + Clone + Send + Sync + 'static,
    K: Hash,
{
    type Key<'a>
        = K
    where
        Req: 'a;

    fn key(&self, req: &Req) -> Option<K> {
        (self.0)(req)
    }
}

const SHARDS: usize = 16;

/// What every clone of the layer and its services share.
pub(crate) struct Shared<K, C> {
    pub(crate) name: Arc<str>,
    pub(crate) config: Config,
    pub(crate) key: K,
    pub(crate) classifier: C,
    pub(crate) clock: Clock,
    /// The breaker of unkeyed requests.
    pub(crate) single: Arc<Breaker>,
    /// The keyed breakers; a shard's `ticks` are the overflowing calls left before its
    /// next eviction sweep, so a full shard whose breakers all hold something is not
    /// rescanned on every call.
    breakers: KeyedMap<Arc<Breaker>>,
    refused: std::sync::OnceLock<::metrics::Counter>,
}

/// A full shard that found nothing to evict waits this many overflowing calls to sweep again.
const SWEEP_BACKOFF: u32 = 256;

impl<K, C> Shared<K, C> {
    /// The breaker for a key hash, made on first use. A full shard drops breakers that hold
    /// nothing against their host (closed, no failure or slow call in the live window); if
    /// none can go, the key shares the layer's breaker, so memory stays bounded whatever
    /// the keys.
    pub(crate) fn breaker(&self, hash: u64) -> Arc<Breaker> {
        self.breaker_or_room(hash)
            .unwrap_or_else(|| Arc::clone(&self.single))
    }

    /// As [`breaker`](Self::breaker), but `None` rather than the shared breaker when there
    /// is no room.
    fn breaker_or_room(&self, hash: u64) -> Option<Arc<Breaker>> {
        let mut shard = self.breakers.lock(hash);
        if let Some(b) = shard.map.get(&hash) {
            return Some(Arc::clone(b));
        }
        let max = self.breakers.max_per_shard();
        if shard.map.len() >= max {
            if shard.ticks > 0 {
                shard.ticks -= 1;
                return None;
            }
            let now = self.clock.now_us();
            shard.map.retain(|_, b| !b.is_idle(now));
            if shard.map.len() >= max {
                shard.ticks = SWEEP_BACKOFF;
                return None;
            }
        }
        let b = Arc::new(Breaker::new(&self.config));
        shard.map.insert(hash, Arc::clone(&b));
        Some(b)
    }

    /// The breaker for a key hash if it has one; never makes one.
    fn find(&self, hash: u64) -> Option<Arc<Breaker>> {
        self.breakers.lock(hash).map.get(&hash).cloned()
    }

    /// Counts a refusal (the handle is registered on first use, with the recorder of the
    /// time).
    pub(crate) fn count_refusal(&self) {
        self.refused
            .get_or_init(|| {
                ::metrics::counter!("tower_scale.circuit_breaker.refused", "breaker" => self.name.to_string())
            })
            .increment(1);
    }

    pub(crate) fn hash(&self, key: impl Hash) -> u64 {
        self.breakers.hash(key)
    }

    pub(crate) fn transitioned(&self, t: Transition) {
        ::metrics::counter!(
            "tower_scale.circuit_breaker.transitions",
            "breaker" => self.name.to_string(),
            "from" => t.from.as_str(),
            "to" => t.to.as_str()
        )
        .increment(1);
        let tripped = ::metrics::gauge!("tower_scale.circuit_breaker.tripped", "breaker" => self.name.to_string());
        match (t.from, t.to) {
            (State::Closed, State::Closed) => {}
            (State::Closed, _) => tripped.increment(1.0),
            (_, State::Closed) => tripped.decrement(1.0),
            _ => {}
        }
        match t.to {
            State::Open => {
                tracing::warn!(breaker = %self.name, from = t.from.as_str(), "circuit breaker opened")
            }
            State::HalfOpen => {
                tracing::info!(breaker = %self.name, "circuit breaker half-open: probing")
            }
            State::Closed => {
                tracing::info!(breaker = %self.name, from = t.from.as_str(), "circuit breaker closed")
            }
        }
    }
}

/// Applies [`CircuitBreaker`] to a service. Clones share their breakers.
pub struct CircuitBreakerLayer<K = PerHost, C = HttpClassifier> {
    pub(crate) shared: Arc<Shared<K, C>>,
}

impl<K, C> Clone for CircuitBreakerLayer<K, C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, C> fmt::Debug for CircuitBreakerLayer<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("name", &self.shared.name)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<S, K, C> Layer<S> for CircuitBreakerLayer<K, C> {
    type Service = CircuitBreaker<S, K, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

impl CircuitBreakerLayer {
    /// A builder with the defaults: one breaker per upstream host ([`PerHost`]), a window
    /// of the last 100 calls, opening at a 50% failure rate once 20 calls are in it, open
    /// for 30 s, then 3 probes; HTTP classification ([`HttpClassifier`]).
    pub fn builder() -> CircuitBreakerLayerBuilder {
        CircuitBreakerLayerBuilder {
            name: "default".into(),
            config: Config {
                window: Window::Count(100),
                failure_rate: 0.5,
                slow_rate: 1.0,
                slow_call_us: None,
                minimum_calls: 20,
                open_us: 30_000_000,
                open_backoff: 1.0,
                max_open_us: 30_000_000,
                probes: 3,
            },
            max_open: None,
            key: PerHost,
            classifier: HttpClassifier::default(),
            clock: None,
            max_keys: 10_000,
        }
    }
}

impl<K, C> CircuitBreakerLayer<K, C> {
    /// A handle to read and force this layer's breakers.
    pub fn handle(&self) -> CircuitBreakerHandle<K, C> {
        CircuitBreakerHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Reads and forces a layer's breakers, from [`CircuitBreakerLayer::handle`].
pub struct CircuitBreakerHandle<K = PerHost, C = HttpClassifier> {
    shared: Arc<Shared<K, C>>,
}

impl<K, C> Clone for CircuitBreakerHandle<K, C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, C> fmt::Debug for CircuitBreakerHandle<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerHandle")
            .field("name", &self.shared.name)
            .field("state", &self.state())
            .finish()
    }
}

impl<K, C> CircuitBreakerHandle<K, C> {
    /// The state of the shared (unkeyed) breaker.
    pub fn state(&self) -> State {
        self.shared.single.state()
    }

    /// The state of `key`'s breaker (closed if it has none). `key` hashes as the layer's
    /// key does: a `&str` or `String` host for [`PerHost`]. Reading makes no breaker.
    pub fn state_of(&self, key: impl Hash) -> State {
        self.shared
            .find(self.shared.hash(key))
            .map_or(State::Closed, |b| b.state())
    }

    /// Opens the shared breaker and keeps it open until forced otherwise or reset.
    pub fn force_open(&self) {
        self.force(&self.shared.single, Some(State::Open));
    }

    /// Closes the shared breaker and keeps it closed, whatever the calls do, until forced
    /// otherwise or reset.
    pub fn force_closed(&self) {
        self.force(&self.shared.single, Some(State::Closed));
    }

    /// Makes the shared breaker a fresh closed breaker that judges calls again.
    pub fn reset(&self) {
        self.force(&self.shared.single, None);
    }

    /// [`force_open`](Self::force_open) for `key`'s breaker, made if it has none.
    ///
    /// # Errors
    ///
    /// [`NoRoom`] if the layer holds `max_keys` breakers and none can be dropped (the
    /// shared breaker is never forced in a key's place).
    pub fn force_open_key(&self, key: impl Hash) -> Result<(), NoRoom> {
        let b = self
            .shared
            .breaker_or_room(self.shared.hash(key))
            .ok_or(NoRoom)?;
        self.force(&b, Some(State::Open));
        Ok(())
    }

    /// [`reset`](Self::reset) for `key`'s breaker; nothing to do if it has none.
    pub fn reset_key(&self, key: impl Hash) {
        if let Some(b) = self.shared.find(self.shared.hash(key)) {
            self.force(&b, None);
        }
    }

    fn force(&self, b: &Breaker, to: Option<State>) {
        let t = b.force(&self.shared.config, to, self.shared.clock.now_us());
        self.shared.transitioned(t);
    }
}

/// A keyed breaker could not be made: the layer holds `max_keys` breakers, none idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoom;

impl fmt::Display for NoRoom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no room for another keyed breaker (max_keys reached)")
    }
}

impl std::error::Error for NoRoom {}

/// Builds a [`CircuitBreakerLayer`].
#[must_use]
pub struct CircuitBreakerLayerBuilder<K = PerHost, C = HttpClassifier> {
    name: String,
    config: Config,
    max_open: Option<Duration>,
    key: K,
    classifier: C,
    clock: Option<Clock>,
    max_keys: usize,
}

impl<K, C> fmt::Debug for CircuitBreakerLayerBuilder<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayerBuilder")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<K, C> CircuitBreakerLayerBuilder<K, C> {
    /// The name in metrics and logs (default `default`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Which calls are judged (default the last 100).
    pub fn window(mut self, window: Window) -> Self {
        self.config.window = window;
        self
    }

    /// Opens when at least this share of the window failed (default 0.5).
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.config.failure_rate = rate;
        self
    }

    /// Calls taking `threshold` or longer are slow; opens when at least `rate` of the window
    /// was slow (default: slowness is not judged).
    pub fn slow_calls(mut self, threshold: Duration, rate: f64) -> Self {
        self.config.slow_call_us = Some(micros(threshold));
        self.config.slow_rate = rate;
        self
    }

    /// Judges only once the window holds this many calls (default 20).
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.config.minimum_calls = n;
        self
    }

    /// How long the breaker stays open before probing (default 30 s).
    pub fn open_duration(mut self, d: Duration) -> Self {
        self.config.open_us = micros(d);
        self
    }

    /// Each consecutive trip (probes failed again) multiplies the open duration by
    /// `multiplier`, up to `max` (default: no backoff).
    pub fn open_backoff(mut self, multiplier: f64, max: Duration) -> Self {
        self.config.open_backoff = multiplier;
        self.max_open = Some(max);
        self
    }

    /// How many probe calls pass while half-open (default 3); the rest are refused.
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.config.probes = n;
        self
    }

    /// At most this many keyed breakers (default 10,000); see [`PerHost`].
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// The time source (default [`Clock::system`]; [`Clock::tokio`] in tests that pause
    /// time).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Which breaker each request goes through (default [`PerHost`]: one per upstream
    /// host; [`Single`] for one breaker, as a service that is not HTTP needs).
    pub fn key<K2>(self, key: K2) -> CircuitBreakerLayerBuilder<K2, C> {
        CircuitBreakerLayerBuilder {
            name: self.name,
            config: self.config,
            max_open: self.max_open,
            key,
            classifier: self.classifier,
            clock: self.clock,
            max_keys: self.max_keys,
        }
    }

    /// What a failure is (default [`HttpClassifier`]: 5xx and errors; use
    /// [`ErrorIsFailure`](crate::classify::ErrorIsFailure) for services that are not HTTP).
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerLayerBuilder<K, C2> {
        CircuitBreakerLayerBuilder {
            name: self.name,
            config: self.config,
            max_open: self.max_open,
            key: self.key,
            classifier,
            clock: self.clock,
            max_keys: self.max_keys,
        }
    }

    /// Validates the settings.
    ///
    /// # Errors
    ///
    /// A rate outside (0, 1], an empty or oversized window, zero minimum calls or probes, a
    /// zero open duration, a backoff below 1 or a maximum below the open duration, fewer
    /// than 16 keys.
    pub fn build(mut self) -> Result<CircuitBreakerLayer<K, C>, ConfigError> {
        self.config.max_open_us = self.max_open.map_or(self.config.open_us, micros);
        self.config.validate()?;
        let breakers = KeyedMap::new(SHARDS, self.max_keys)
            .ok_or_else(|| ConfigError::new("max_keys", format!("must be at least {SHARDS}")))?;
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        let name: Arc<str> = Arc::from(self.name);
        Ok(CircuitBreakerLayer {
            shared: Arc::new(Shared {
                single: Arc::new(Breaker::new(&self.config)),
                refused: std::sync::OnceLock::new(),
                name,
                config: self.config,
                key: self.key,
                classifier: self.classifier,
                clock: self.clock.unwrap_or_default(),
                breakers,
            }),
        })
    }
}
