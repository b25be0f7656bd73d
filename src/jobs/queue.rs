//! [`Queue`]: a named queue of typed jobs over a store.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::job::{Enqueue, Enqueued, JobError, JobId, JobStatus, QueueStats};
use super::store::{JobStore, Lifetimes, NewJob};
use crate::ConfigError;

/// The longest idempotency key a queue accepts, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

/// A named queue of jobs whose payloads are `T`. Cheap to clone; every clone, in every
/// instance, with the same name and a store on the same Redis, is the same queue.
///
/// Enqueue from request handlers; run the jobs with a [`Worker`](super::Worker); read a
/// job's status by id from anywhere.
pub struct Queue<T> {
    pub(crate) shared: Arc<Shared>,
    _payload: PhantomData<fn(T) -> T>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) store: Arc<dyn JobStore>,
    pub(crate) life: Lifetimes,
    pub(crate) max_attempts: u32,
    pub(crate) max_payload: usize,
    /// Wakes this process's idle workers when it enqueues a job.
    pub(crate) enqueued: tokio::sync::Notify,
    /// Enqueues that arrived while another was on its way to the store.
    batch: std::sync::Mutex<Batch>,
}

/// Natural batching of enqueues: the first caller goes straight to the store; callers that
/// arrive while a call is out wait here, and go together in the next call.
#[derive(Debug, Default)]
struct Batch {
    in_flight: usize,
    pending: Vec<(NewJob, Reply)>,
}

type Reply = tokio::sync::oneshot::Sender<Result<(JobId, bool), crate::StoreUnavailable>>;

/// Ends a flight: the next batch goes out, or the queue takes enqueues directly again.
struct Flight<'a>(&'a Arc<Shared>);

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let Some(batch) = self.0.take_pending() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(Arc::clone(self.0).flush(batch));
            }
            Err(_) => {
                // No runtime to run them on (it is shutting down): their callers are told
                // so by the dropped replies, and the queue is left free.
                drop(batch);
                while self.0.take_pending().is_some() {}
            }
        }
    }
}

/// Store calls of one queue's enqueues on their way at once, before the next wait to go
/// together: enough to keep a multiplexed connection's pipeline busy.
const MAX_FLIGHTS: usize = 4;

/// Most enqueues that may wait for a store call before new ones are refused.
const MAX_PENDING: usize = 4096;

/// Most jobs written in one store call.
const ENQUEUE_BATCH: usize = 128;

impl Shared {
    /// Writes `job`: at once if no other enqueue of this queue is on its way, else with
    /// the others that waited, in one store call after it.
    async fn enqueue(
        self: &Arc<Self>,
        job: NewJob,
    ) -> Result<(JobId, bool), crate::StoreUnavailable> {
        let waiting = {
            let mut b = self
                .batch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if b.in_flight >= MAX_FLIGHTS && b.pending.len() >= MAX_PENDING {
                // The store is slow or down and callers keep coming: refuse rather than
                // queue without bound.
                return Err(crate::StoreUnavailable::backend(std::io::Error::other(
                    "too many enqueues are waiting for the job store",
                )));
            }
            if b.in_flight >= MAX_FLIGHTS {
                let (tx, rx) = tokio::sync::oneshot::channel();
                b.pending.push((job, tx));
                Err(rx)
            } else {
                b.in_flight += 1;
                Ok(job)
            }
        };
        match waiting {
            Err(rx) => rx.await.unwrap_or_else(|_| {
                Err(crate::StoreUnavailable::backend(std::io::Error::other(
                    "the batched enqueue was dropped",
                )))
            }),
            Ok(job) => {
                // Whether this call completes or its caller gives up on it, those that came
                // meanwhile go on in a task of their own (so this caller is not kept
                // flushing under sustained load, and a cancelled call strands nobody).
                let _flight = Flight(self);
                self.store.enqueue(&self.name, job).await
            }
        }
    }

    /// The waiting enqueues (up to a batch), or `None` and the flight ended.
    fn take_pending(&self) -> Option<Vec<(NewJob, Reply)>> {
        let mut b = self
            .batch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A caller that gave up (its request timed out, say) does not get its job written.
        b.pending.retain(|(_, reply)| !reply.is_closed());
        if b.pending.is_empty() {
            b.in_flight -= 1;
            return None;
        }
        let n = b.pending.len().min(ENQUEUE_BATCH);
        Some(b.pending.drain(..n).collect())
    }

    async fn flush(self: Arc<Self>, mut batch: Vec<(NewJob, Reply)>) {
        let mut flight = FlushGuard {
            shared: Arc::clone(&self),
            ended: false,
        };
        loop {
            let (jobs, replies): (Vec<NewJob>, Vec<Reply>) = batch.into_iter().unzip();
            match self.store.enqueue_many(&self.name, jobs).await {
                Ok(done) => {
                    for (reply, d) in replies.into_iter().zip(done) {
                        let _ = reply.send(Ok(d));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.duplicate()));
                    }
                }
            }
            match self.take_pending() {
                Some(next) => batch = next,
                None => {
                    flight.ended = true;
                    return;
                }
            }
        }
    }
}

/// Ends a flush's flight even if the flush never finishes (its task dropped with the
/// runtime, or a store that panicked): the waiting callers are told (their replies
/// dropped) and the queue takes enqueues again.
struct FlushGuard {
    shared: Arc<Shared>,
    ended: bool,
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let mut b = self
            .shared
            .batch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        b.in_flight = b.in_flight.saturating_sub(1);
        if b.in_flight == 0 {
            b.pending.clear();
        }
    }
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            _payload: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.shared.name)
            .field("store", &self.shared.store)
            .field("lease", &self.shared.life.lease)
            .field("retention", &self.shared.life.retention)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Queue`].
#[derive(Debug)]
#[must_use]
pub struct QueueBuilder<T> {
    name: String,
    store: Option<Arc<dyn JobStore>>,
    lease: Duration,
    retention: Duration,
    max_attempts: u32,
    max_payload: usize,
    _payload: PhantomData<fn(T) -> T>,
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// Starts a builder for the queue `name` (letters, digits, `-`, `_`, `.`, `:`; at most
    /// 128 bytes).
    pub fn builder(name: impl Into<String>) -> QueueBuilder<T> {
        QueueBuilder {
            name: name.into(),
            store: None,
            lease: Duration::from_secs(30),
            retention: Duration::from_secs(24 * 3600),
            max_attempts: 5,
            max_payload: 512 * 1024,
            _payload: PhantomData,
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The store the queue's jobs live in.
    pub fn store(&self) -> Arc<dyn JobStore> {
        Arc::clone(&self.shared.store)
    }

    /// Enqueues a job to run now with the queue's defaults.
    ///
    /// # Errors
    ///
    /// As [`enqueue_with`](Self::enqueue_with).
    pub async fn enqueue(&self, payload: &T) -> Result<JobId, JobError> {
        Ok(self.enqueue_with(payload, Enqueue::new()).await?.id)
    }

    /// Enqueues a job with options (delay, attempts, priority, idempotency key).
    ///
    /// # Errors
    ///
    /// [`JobError::Payload`] if `payload` does not serialize, [`JobError::TooLarge`] over
    /// the queue's payload limit, [`JobError::Invalid`] for a bad option,
    /// [`JobError::Store`] if the store failed (the job may or may not be written: enqueue
    /// with an idempotency key to retry safely).
    pub async fn enqueue_with(&self, payload: &T, options: Enqueue) -> Result<Enqueued, JobError> {
        let payload =
            serde_json::to_string(payload).map_err(|e| JobError::Payload(e.to_string()))?;
        self.enqueue_json(payload, options).await
    }

    /// Enqueues many jobs with the same options, written to the store in calls of up to
    /// 128 jobs (one round trip each with Redis): for producers that have a batch at hand
    /// (a fan-out, an import). Returns each job's id, in order.
    ///
    /// # Errors
    ///
    /// As [`enqueue_with`](Self::enqueue_with), for the first job that fails to validate
    /// (nothing is written then) or the first store call that fails (the calls before it
    /// were written). An idempotency key in `options` would make every job the first one,
    /// so it is refused.
    pub async fn enqueue_all<'a>(
        &self,
        payloads: impl IntoIterator<Item = &'a T>,
        options: Enqueue,
    ) -> Result<Vec<JobId>, JobError>
    where
        T: 'a,
    {
        if options.idempotency_key.is_some() {
            return Err(JobError::Invalid(
                "enqueue_all takes no idempotency key (every job would be the first)".into(),
            ));
        }
        let jobs = payloads
            .into_iter()
            .map(|p| {
                let payload =
                    serde_json::to_string(p).map_err(|e| JobError::Payload(e.to_string()))?;
                self.new_job(payload, &options)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let s = &self.shared;
        let mut ids = Vec::with_capacity(jobs.len());
        let mut jobs = jobs.into_iter().peekable();
        while jobs.peek().is_some() {
            let chunk: Vec<NewJob> = jobs.by_ref().take(ENQUEUE_BATCH).collect();
            let written = s.store.enqueue_many(&s.name, chunk).await?;
            super::metrics::enqueued_n(&s.name, written.len() as u64);
            ids.extend(written.into_iter().map(|(id, _)| id));
            s.enqueued.notify_one();
        }
        Ok(ids)
    }

    /// A job to write, checked against the queue's limits.
    fn new_job(&self, payload: String, options: &Enqueue) -> Result<NewJob, JobError> {
        let s = &self.shared;
        if payload.len() > s.max_payload {
            return Err(JobError::TooLarge {
                size: payload.len(),
                limit: s.max_payload,
            });
        }
        if let Some(k) = &options.idempotency_key
            && (k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY)
        {
            return Err(JobError::Invalid(format!(
                "an idempotency key is 1..={MAX_IDEMPOTENCY_KEY} bytes, got {}",
                k.len()
            )));
        }
        let max_attempts = options.max_attempts.unwrap_or(s.max_attempts);
        if max_attempts == 0 {
            return Err(JobError::Invalid("max_attempts must be at least 1".into()));
        }
        Ok(NewJob {
            id: JobId::ordered(),
            payload,
            max_attempts,
            priority: options.priority,
            delay: options.delay,
            idempotency_key: options.idempotency_key.clone(),
        })
    }

    pub(crate) async fn enqueue_json(
        &self,
        payload: String,
        options: Enqueue,
    ) -> Result<Enqueued, JobError> {
        let s = &self.shared;
        let job = self.new_job(payload, &options)?;
        let (id, created) = s.enqueue(job).await?;
        if created {
            s.enqueued.notify_one();
            super::metrics::enqueued(&s.name);
        }
        Ok(Enqueued { id, created })
    }

    /// The status of job `id`, or `None` for an unknown or expired id.
    ///
    /// # Errors
    ///
    /// [`JobError::Store`] if the store failed.
    pub async fn status(&self, id: &JobId) -> Result<Option<JobStatus>, JobError> {
        Ok(self.shared.store.status(&self.shared.name, id).await?)
    }

    /// How many jobs the queue holds, by state.
    ///
    /// # Errors
    ///
    /// [`JobError::Store`] if the store failed.
    pub async fn stats(&self) -> Result<QueueStats, JobError> {
        Ok(self.shared.store.stats(&self.shared.name).await?)
    }
}

impl<T: Serialize + DeserializeOwned> QueueBuilder<T> {
    /// Where the jobs live: a [`MemoryJobStore`](super::MemoryJobStore) or a
    /// [`RedisJobStore`](super::RedisJobStore). Required.
    pub fn store(mut self, store: impl JobStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// How long a worker holds a job without renewing (default 30 s). Workers renew at a
    /// third of it; a job whose worker died runs again elsewhere after at most this long.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long finished jobs (their status, result, error and idempotency key) are kept
    /// (default 24 h).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Attempts per job unless its enqueue says otherwise (default 5).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// The largest serialized payload accepted, in bytes (default 512 KiB).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Validates the configuration.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting: a bad name, no store,
    /// a lease under 100 ms or over 24 h, a retention of zero or over 366 days, zero
    /// attempts.
    pub fn build(self) -> Result<Queue<T>, ConfigError> {
        crate::describe::once();
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 128
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        if !name_ok {
            return Err(ConfigError::new(
                "queue",
                format!(
                    "`{}`: a queue name is 1..=128 of letters, digits, `-`, `_`, `.`, `:`",
                    self.name
                ),
            ));
        }
        let store = self.store.ok_or_else(|| {
            ConfigError::new(
                "store",
                "a queue needs a store: MemoryJobStore or RedisJobStore",
            )
        })?;
        if self.lease < Duration::from_millis(100) || self.lease > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::new("lease", "must be from 100ms to 24h"));
        }
        if self.retention.is_zero() || self.retention > Duration::from_secs(366 * 24 * 3600) {
            return Err(ConfigError::new(
                "retention",
                "must be above zero and at most 366 days",
            ));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::new("max_attempts", "must be at least 1"));
        }
        Ok(Queue {
            shared: Arc::new(Shared {
                name: self.name,
                store,
                life: Lifetimes {
                    lease: self.lease,
                    retention: self.retention,
                },
                max_attempts: self.max_attempts,
                max_payload: self.max_payload,
                enqueued: tokio::sync::Notify::new(),
                batch: std::sync::Mutex::default(),
            }),
            _payload: PhantomData,
        })
    }
}
