//! [`CircuitBreakerLayer`] and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::core::{Breaker, Config, Window};
use super::handle::CircuitBreakerHandle;
use super::key::PerHost;
use super::registry::{SHARDS, Shared};
use super::service::CircuitBreaker;
use crate::ConfigError;
use crate::classify::HttpClassifier;
use crate::clock::Clock;
use crate::duration::micros;
use crate::keyed::KeyedMap;

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
    /// host; [`Single`](super::Single) for one breaker, as a service that is not HTTP needs).
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
        crate::describe::once();
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
