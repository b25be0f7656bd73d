//! Async request-reply as a tower layer: a slow request is stored as a job and answered
//! `202 Accepted` at once; a worker runs it later through the same service, and the
//! client fetches the response from a status resource.
//!
//! [`OffloadLayer`] takes the requests its [`when`](OffloadLayerBuilder::when) predicate
//! matches, and any request that sends `Prefer: respond-async` (RFC 7240). It stores the
//! method, path and query, an allow-list of headers and the body (up to a cap; a larger
//! body is answered 413) as a job on a [`Queue`](crate::jobs::Queue), and answers:
//!
//! ```text
//! 202 Accepted
//! Location: /jobs/3f0c…
//! Retry-After: 1
//! Preference-Applied: respond-async        (when the client asked)
//! {"job": "3f0c…", "status": "/jobs/3f0c…"}
//! ```
//!
//! A [`Worker`](crate::jobs::Worker) with [`OffloadLayer::handler`] runs each stored
//! request through the inner service (marked [`Offloaded`], so it is not offloaded again)
//! and keeps its response. `GET /jobs/{id}` answers `202` with the job's state, progress
//! and `Retry-After` while it waits or runs, then the stored response itself (status,
//! headers but `Set-Cookie` and hop-by-hop ones, body), and `500` if every attempt failed;
//! `404` for an unknown or expired id. An `Idempotency-Key` header gives the same job
//! (and `Location`) for the same key, method and path while the job is kept; keys are not
//! scoped to a client, so clients should send unguessable ones (UUIDs), as the IETF draft
//! on the header advises. A response over the response cap is kept as a `502` saying so.
//!
//! Anyone holding a job's URL may read its response: the id is 128 random bits, so the
//! URL is the capability. Serve responses private to one user only behind a check of your
//! own in front of the status path.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::post};
//! use tower_scale::jobs::offload::{OffloadLayer, OffloadedRequest};
//! use tower_scale::jobs::{MemoryJobStore, Queue, Worker};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let queue: Queue<OffloadedRequest> = Queue::builder("http")
//!     .store(MemoryJobStore::new())
//!     .retention(Duration::from_secs(3600))
//!     .build()?;
//! let offload = OffloadLayer::builder(queue)
//!     .when(|req| req.uri.path() == "/reports")
//!     .build()?;
//! let routes = Router::new().route("/reports", post(|body: String| async move {
//!     // a slow report...
//!     format!("report of {} bytes", body.len())
//! }));
//! let workers = Worker::builder(offload.queue().clone())
//!     .concurrency(4)
//!     .spawn(offload.handler(routes.clone()));
//! let app = routes.layer(offload);
//! # drop(app);
//! # workers.shutdown(Duration::from_secs(1)).await;
//! # Ok(()) }
//! ```

mod layer;
mod service;
mod stored;

pub use layer::{HandlerFuture, OffloadLayer, OffloadLayerBuilder, Offloaded};
pub use service::{Offload, OffloadBody, ResponseFuture};
pub use stored::{OffloadedRequest, StoredResponse};
