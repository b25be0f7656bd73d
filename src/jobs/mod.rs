//! Background jobs: slow work leaves the request path for a queue that workers in any
//! instance drain.
//!
//! A request handler enqueues a job on a [`Queue`] and answers at once; a [`Worker`] pool
//! (in every instance, or in processes of its own) runs it. Any instance reads the job's
//! [`JobStatus`] by id: queued, scheduled, running with its progress, retrying with its
//! last error, succeeded with its result, or dead.
//!
//! - **Stores:** [`RedisJobStore`] (feature `redis`) shares queues between instances;
//!   [`MemoryJobStore`] keeps them in the process (one instance, tests, embedded defaults).
//! - **At-least-once:** a running job holds a lease its worker renews; when a worker dies,
//!   its jobs run again elsewhere once their lease expires. Make effects idempotent, keyed
//!   by [`JobContext::id`].
//! - **Retries:** a failed attempt (an `Err` or a panic) runs again after an exponential
//!   [`Backoff`] with jitter; after the last attempt the job is dead, kept with its error.
//! - **Options per job** ([`Enqueue`]): a delay or a run-at time, attempts, a priority, and
//!   an idempotency key that makes a second enqueue return the first job.
//! - **Bounded memory:** finished jobs, their results and idempotency keys are removed
//!   after the queue's retention; payloads have a size limit.
//! - **Graceful shutdown:** [`WorkerHandle::shutdown`] stops fetching, lets running jobs
//!   finish until a deadline and hands the rest back at once.
//!
//! - **Async request-reply:** [`offload::OffloadLayer`] stores a matched request (or one
//!   that sends `Prefer: respond-async`) as a job, answers `202 Accepted` with a status
//!   resource, and serves the response a worker got from the same service.
//!
//! The metrics are listed in the `metrics` submodule's table: counters of enqueued,
//! started, succeeded, retried, dead and taken-over jobs, a run-time histogram, and queue
//! depth and head age gauges.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use tower_scale::jobs::{MemoryJobStore, Queue, Worker};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Email { to: String }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let queue: Queue<Email> = Queue::builder("emails").store(MemoryJobStore::new()).build()?;
//! let workers = Worker::builder(queue.clone())
//!     .concurrency(8)
//!     .spawn(|job| async move {
//!         // send the email to job.payload().to ...
//!         Ok::<_, std::io::Error>(format!("sent to {}", job.payload().to))
//!     });
//!
//! let id = queue.enqueue(&Email { to: "zoe@example.com".into() }).await?;
//! # loop {
//! #     if queue.status(&id).await?.is_some_and(|s| s.state.is_finished()) { break }
//! #     tokio::time::sleep(Duration::from_millis(5)).await;
//! # }
//! let status = queue.status(&id).await?.expect("kept for the retention");
//! assert_eq!(status.result_as::<String>()?, "sent to zoe@example.com");
//! workers.shutdown(Duration::from_secs(10)).await;
//! # Ok(()) }
//! ```

mod job;
mod metrics;
pub mod offload;
mod queue;
#[cfg(feature = "redis")]
mod redis_store;
pub mod store;
mod worker;

pub use job::{Enqueue, Enqueued, JobError, JobId, JobState, JobStatus, QueueStats};
pub use queue::{MAX_IDEMPOTENCY_KEY, Queue, QueueBuilder};
#[cfg(feature = "redis")]
pub use redis_store::RedisJobStore;
pub use store::MemoryJobStore;
pub use worker::{Backoff, Drained, JobContext, Worker, WorkerBuilder, WorkerHandle};
