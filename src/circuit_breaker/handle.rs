//! [`CircuitBreakerHandle`]: read, force and reset breakers from outside the call path.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use super::core::{Breaker, State};
use super::key::PerHost;
use super::registry::Shared;
use crate::classify::HttpClassifier;

/// Reads and forces a layer's breakers, from [`CircuitBreakerLayer::handle`](super::CircuitBreakerLayer::handle).
pub struct CircuitBreakerHandle<K = PerHost, C = HttpClassifier> {
    pub(super) shared: Arc<Shared<K, C>>,
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
