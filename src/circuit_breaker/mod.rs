//! Circuit breakers: stop calling an upstream that is failing, give it time, probe, resume.
//!
//! [`CircuitBreakerLayer`] wraps any tower service. While **closed**, calls pass and their
//! outcomes (judged by the shared [`Classify`](crate::classify::Classify); for HTTP, 5xx
//! and errors fail, 4xx do not) go into a sliding [`Window`]: the last N calls, or the
//! calls of the last N seconds. Once the window holds [`minimum_calls`], the breaker
//! **opens** when the failure rate, or the slow-call rate, reaches its threshold. Open, it
//! refuses every call at once with [`CircuitOpen`] (how long until it probes) for the open
//! duration, which can grow on consecutive trips ([`open_backoff`]). Then it is
//! **half-open**: a fixed number of probe calls pass, the rest are refused; the probes'
//! outcomes close it or open it again.
//!
//! Every state change starts a new *generation*: the outcome of a call that began in an
//! earlier generation is ignored, so a slow call from before a recovery cannot reopen the
//! breaker, and it cannot count as a probe. A probe whose caller gives up (the future is
//! dropped) frees its place for another.
//!
//! Breakers are per key: [`PerHost`] (the default) keeps one per upstream host (the URI's
//! authority as written, port included), [`Single`] one for every request, [`ByKey`] any
//! of the crate's [`KeyExtractor`](crate::key::KeyExtractor)s (a tenant header, the route),
//! [`key_fn`] anything else. Keyed breakers are bounded ([`max_keys`], default 10,000): a full map
//! drops the breakers that hold nothing against their host, and a key that still does not
//! fit shares the layer's own breaker.
//!
//! Put a timeout *inside* the breaker (between it and the upstream): a call that never
//! ends is neither a success nor a failure. Half-open probes that have not answered after
//! a whole open duration are replaced by fresh ones, so a hung probe cannot keep the
//! breaker half-open for good.
//!
//! Refusals are a typed error ([`BreakerError::Open`]); [`OpenAs503Layer`] turns them into
//! `503` responses with `Retry-After` for HTTP. A [`CircuitBreakerHandle`] reads the state
//! and forces a breaker open or closed, or resets it.
//!
//! Metrics: `tower_scale.circuit_breaker.transitions` (counter; `breaker`, `from`, `to`),
//! `tower_scale.circuit_breaker.tripped` (gauge: this layer's breakers not closed) and
//! `tower_scale.circuit_breaker.refused` (counter); transitions are logged (`warn` when
//! opening).
//!
//! # Composition
//!
//! Put retries *outside* the breaker — `retry ─▶ breaker ─▶ client` — so that one breaker
//! sees every attempt, and a refusal is an answer the retry layer does not retry (a
//! response carrying [`CircuitOpen`] in its extensions is never retried by
//! [`RetryLayer`](crate::retry::RetryLayer)). Put [`OpenAs503Layer`] between them: as an
//! error ([`BreakerError::Open`]) a refusal is just an error to the retry layer, which
//! would retry it. With a hyper client:
//!
//! ```
//! # #[cfg(feature = "retry")] {
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_scale::circuit_breaker::{CircuitBreakerLayer, OpenAs503Layer, PerHost};
//! use tower_scale::retry::{ReplayBody, RetryLayer};
//!
//! let retry = RetryLayer::builder().deadline(Duration::from_secs(2)).build()?;
//! let breaker = CircuitBreakerLayer::builder().key(PerHost).build()?;
//! // Any client taking `Request<ReplayBody<B>>`: a hyper client, here a stand-in.
//! let client = tower::service_fn(|_req: http::Request<ReplayBody<String>>| async {
//!     Ok::<_, std::io::Error>(http::Response::new(String::new()))
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(retry)
//!     .layer(OpenAs503Layer)
//!     .layer(breaker)
//!     .service(client);
//! # let _ = svc;
//! # }
//! # Ok::<(), tower_scale::ConfigError>(())
//! ```
//!
//! [`minimum_calls`]: CircuitBreakerLayerBuilder::minimum_calls
//! [`open_backoff`]: CircuitBreakerLayerBuilder::open_backoff
//! [`max_keys`]: CircuitBreakerLayerBuilder::max_keys
//!
//! # Errors
//!
//! [`CircuitBreakerLayerBuilder::build`] returns a [`ConfigError`](crate::ConfigError) for
//! settings out of range. The service's error is [`BreakerError`].
//!
//! # Panics
//!
//! [`ResponseFuture`] panics if polled after it completed.
//!
//! # Cancel safety
//!
//! Dropping a future before the inner call finishes records nothing against the upstream;
//! a half-open probe dropped this way is given back.

mod core;
mod error;
mod future;
mod handle;
mod key;
mod layer;
mod open_as_503;
mod registry;
mod service;

pub use self::core::{State, Window};
pub use error::{BreakerError, CircuitOpen};
pub use future::ResponseFuture;
pub use handle::{CircuitBreakerHandle, NoRoom};
pub use key::{BreakerKey, ByKey, KeyFn, PerHost, Single, key_fn};
pub use layer::{CircuitBreakerLayer, CircuitBreakerLayerBuilder};
pub use open_as_503::{OpenAs503, OpenAs503Future, OpenAs503Layer, open_response};
pub use service::CircuitBreaker;
