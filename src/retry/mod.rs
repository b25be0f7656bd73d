//! Retries for HTTP calls: backoff with full jitter, a deadline, a retry budget, and only
//! what is safe to send twice.
//!
//! [`RetryLayer`] wraps a service taking `http::Request<ReplayBody<B>>` (a hyper client, or
//! any tower service) and gives back one taking `http::Request<B>`. A call is retried when
//! the shared [`Classify`](crate::classify::Classify) says it failed (for HTTP: 5xx,
//! transport errors; never 4xx) or its attempt timed out, and only if:
//!
//! - its method is idempotent (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) or it carries an
//!   `Idempotency-Key` header;
//! - its body can be sent again: empty, or at most the body cap (64 KiB by default) by its
//!   size hint, in which case it is buffered first; larger bodies and bodies of unknown size
//!   are streamed once;
//! - attempts remain (3 in all by default), the overall [`deadline`] leaves room for the
//!   wait, and the [`RetryBudget`] allows it (by default 20% of requests plus 10 per
//!   second, shared by every clone, so an outage cannot multiply the load on the upstream);
//! - a failed response's `Retry-After` (seconds or an HTTP date) is not over the cap (5 s
//!   by default): it is waited out instead of the backoff.
//!
//! Backoff before retry n is uniform in [0, min(max, base × 2^(n−1))] ("full jitter",
//! 25 ms and 1 s by default). A response carrying a circuit breaker's `CircuitOpen` in its
//! extensions is returned as it is: retries belong outside the breaker (see the
//! [`circuit_breaker`](crate::circuit_breaker) module's composition notes).
//!
//! For services that are not HTTP, [`RetryAnyLayer`] (from
//! [`RetryLayerBuilder::build_any`]) retries any service whose requests can be cloned, with
//! the same backoff, deadline, attempt timeout and budget; every request is taken as safe to
//! send again.
//!
//! Metrics: `tower_scale.retry.retries` (counter) and `tower_scale.retry.budget_exhausted`.
//!
//! [`deadline`]: RetryLayerBuilder::deadline
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_scale::retry::{ReplayBody, RetryLayer};
//!
//! let retry = RetryLayer::builder()
//!     .max_attempts(3)
//!     .deadline(Duration::from_secs(2))
//!     .attempt_timeout(Duration::from_millis(500))
//!     .build()?;
//! let client = tower::service_fn(|_req: http::Request<ReplayBody<String>>| async {
//!     Ok::<_, std::io::Error>(http::Response::new(String::new()))
//! });
//! let svc = ServiceBuilder::new().layer(retry).service(client);
//! # let _ = svc;
//! # Ok::<(), tower_scale::ConfigError>(())
//! ```
//!
//! # Errors
//!
//! [`RetryLayerBuilder::build`] returns a [`ConfigError`](crate::ConfigError) for settings
//! out of range. The service's error is [`RetryError`]: the last attempt's error, a
//! deadline or timeout that passed, or a request body that failed while buffered.
//!
//! # Cancel safety
//!
//! Dropping the future drops the attempt in flight; nothing else is left behind.

mod any;
mod body;
mod budget;
mod error;
mod future;
mod layer;
mod policy;
mod service;

pub use any::{AnyFuture, RetryAny, RetryAnyLayer};
pub use body::ReplayBody;
pub use budget::RetryBudget;
pub use error::RetryError;
pub use future::ResponseFuture;
pub use layer::{RetryLayer, RetryLayerBuilder};
pub use policy::is_idempotent;
pub use service::Retry;
