//! Where jobs live: the [`JobStore`] trait a backend implements, and the in-process
//! [`MemoryJobStore`]. Users pick a store ([`MemoryJobStore`] or
//! [`RedisJobStore`](super::RedisJobStore)) and hand it to a
//! [`Queue`](super::Queue); the trait is for implementing a store of your own.
//!
//! Every operation on a running job carries the lease token its fetch handed out: a
//! worker whose lease expired and was taken over cannot complete, fail, renew or hand back
//! the job any more (its calls answer `false`), so a slow worker never overwrites the
//! outcome of the one that took over.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::job::{JobId, JobState, JobStatus, QueueStats, from_millis};
use crate::StoreUnavailable;

/// A store call's future.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreUnavailable>> + Send>>;

/// A job to write.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NewJob {
    /// Its id (fresh and random).
    pub id: JobId,
    /// The payload, JSON text.
    pub payload: String,
    /// The most attempts it gets (at least 1).
    pub max_attempts: u32,
    /// Higher runs first.
    pub priority: u8,
    /// Runs no earlier than this from now.
    pub delay: Duration,
    /// A second enqueue with this key returns the first job while it exists.
    pub idempotency_key: Option<String>,
}

/// A job a fetch leased to a worker.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Leased {
    /// The job.
    pub id: JobId,
    /// Its payload, JSON text.
    pub payload: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// The most attempts it gets.
    pub max_attempts: u32,
}

/// What one fetch did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Fetched {
    /// The jobs now leased to the caller under its token.
    pub jobs: Vec<Leased>,
    /// Jobs whose lease had expired (their worker died or stalled) put back in line.
    pub taken_over: u32,
    /// Jobs whose lease expired on their last attempt, moved to the dead-letter set.
    pub buried: u32,
}

/// One success to record: see [`JobStore::complete_many`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Completion {
    /// The job.
    pub id: JobId,
    /// The lease token its fetch handed out.
    pub token: String,
    /// Its result, JSON text.
    pub result: String,
}

impl Completion {
    /// A job's success under `token`, with its result.
    pub fn new(id: JobId, token: impl Into<String>, result: String) -> Self {
        Self {
            id,
            token: token.into(),
            result,
        }
    }
}

/// What a failed attempt led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failed {
    /// Scheduled for another attempt.
    Retrying,
    /// That was its last attempt (or no retry was asked): in the dead-letter set.
    Dead,
    /// The caller's lease had been taken over: nothing changed.
    LeaseLost,
}

/// Settings every call on a queue shares.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Lifetimes {
    /// How long a fetched job stays leased without a renewal.
    pub lease: Duration,
    /// How long a finished (succeeded or dead) job and its idempotency key are kept.
    pub retention: Duration,
}

impl Lifetimes {
    /// A lease and a retention.
    pub fn new(lease: Duration, retention: Duration) -> Self {
        Self { lease, retention }
    }
}

/// A job backend. Each method is one atomic step of a job's life.
pub trait JobStore: Send + Sync + std::fmt::Debug + 'static {
    /// Writes a job (or, for a known idempotency key, returns the existing job with
    /// `false`).
    fn enqueue(&self, queue: &str, job: NewJob) -> StoreFuture<(JobId, bool)>;

    /// Writes several jobs of one queue at once (concurrent enqueues, batched): for each,
    /// what [`enqueue`](Self::enqueue) would answer, in order. The default calls
    /// `enqueue` for each; a network store does them in one round trip.
    fn enqueue_many(&self, queue: &str, jobs: Vec<NewJob>) -> StoreFuture<Vec<(JobId, bool)>> {
        let calls: Vec<_> = jobs.into_iter().map(|j| self.enqueue(queue, j)).collect();
        Box::pin(async move {
            let mut out = Vec::with_capacity(calls.len());
            for c in calls {
                out.push(c.await?);
            }
            Ok(out)
        })
    }

    /// Leases up to `max` due jobs to `token`, highest priority first. Also moves due
    /// delayed and retrying jobs in line, takes over jobs whose lease expired, and drops
    /// dead letters older than the retention.
    fn fetch(&self, queue: &str, max: usize, token: &str, life: Lifetimes) -> StoreFuture<Fetched>;

    /// Extends the lease of a running job; `false` if the lease is no longer `token`'s.
    fn renew(&self, queue: &str, id: &JobId, token: &str, life: Lifetimes) -> StoreFuture<bool>;

    /// Records the progress (0..=100) a running job reports; `false` if the lease is lost.
    fn progress(&self, queue: &str, id: &JobId, token: &str, progress: u8) -> StoreFuture<bool>;

    /// Marks a running job succeeded with its result (JSON text); `false` if the lease is
    /// lost.
    fn complete(
        &self,
        queue: &str,
        id: &JobId,
        token: &str,
        result: String,
        life: Lifetimes,
    ) -> StoreFuture<bool>;

    /// Records several successes of one queue at once (a worker pool's acknowledgements,
    /// batched): for each, what [`complete`](Self::complete) would answer, in order. The
    /// default calls `complete` for each; a network store does them in one round trip.
    fn complete_many(
        &self,
        queue: &str,
        jobs: Vec<Completion>,
        life: Lifetimes,
    ) -> StoreFuture<Vec<bool>> {
        let calls: Vec<_> = jobs
            .into_iter()
            .map(|c| self.complete(queue, &c.id, &c.token, c.result, life))
            .collect();
        Box::pin(async move {
            let mut out = Vec::with_capacity(calls.len());
            for c in calls {
                out.push(c.await?);
            }
            Ok(out)
        })
    }

    /// Records a failed attempt: another attempt after `retry_in` if one is left and
    /// `retry_in` is given, else the dead-letter set.
    fn fail(
        &self,
        queue: &str,
        id: &JobId,
        token: &str,
        error: String,
        retry_in: Option<Duration>,
        life: Lifetimes,
    ) -> StoreFuture<Failed>;

    /// Hands a running job back (a worker shutting down): in line again at once, the
    /// attempt not counted. `false` if the lease is lost.
    fn release(&self, queue: &str, id: &JobId, token: &str) -> StoreFuture<bool>;

    /// A job's status, or `None` for an unknown or expired id.
    fn status(&self, queue: &str, id: &JobId) -> StoreFuture<Option<JobStatus>>;

    /// How many jobs the queue holds, by state.
    fn stats(&self, queue: &str) -> StoreFuture<QueueStats>;
}

/// A shared store is a store: one store behind several queues.
impl<S: JobStore + ?Sized> JobStore for Arc<S> {
    fn enqueue(&self, queue: &str, job: NewJob) -> StoreFuture<(JobId, bool)> {
        (**self).enqueue(queue, job)
    }
    fn enqueue_many(&self, queue: &str, jobs: Vec<NewJob>) -> StoreFuture<Vec<(JobId, bool)>> {
        (**self).enqueue_many(queue, jobs)
    }
    fn fetch(&self, queue: &str, max: usize, token: &str, life: Lifetimes) -> StoreFuture<Fetched> {
        (**self).fetch(queue, max, token, life)
    }
    fn renew(&self, queue: &str, id: &JobId, token: &str, life: Lifetimes) -> StoreFuture<bool> {
        (**self).renew(queue, id, token, life)
    }
    fn progress(&self, queue: &str, id: &JobId, token: &str, progress: u8) -> StoreFuture<bool> {
        (**self).progress(queue, id, token, progress)
    }
    fn complete(
        &self,
        queue: &str,
        id: &JobId,
        token: &str,
        result: String,
        life: Lifetimes,
    ) -> StoreFuture<bool> {
        (**self).complete(queue, id, token, result, life)
    }
    fn complete_many(
        &self,
        queue: &str,
        jobs: Vec<Completion>,
        life: Lifetimes,
    ) -> StoreFuture<Vec<bool>> {
        (**self).complete_many(queue, jobs, life)
    }
    fn fail(
        &self,
        queue: &str,
        id: &JobId,
        token: &str,
        error: String,
        retry_in: Option<Duration>,
        life: Lifetimes,
    ) -> StoreFuture<Failed> {
        (**self).fail(queue, id, token, error, retry_in, life)
    }
    fn release(&self, queue: &str, id: &JobId, token: &str) -> StoreFuture<bool> {
        (**self).release(queue, id, token)
    }
    fn status(&self, queue: &str, id: &JobId) -> StoreFuture<Option<JobStatus>> {
        (**self).status(queue, id)
    }
    fn stats(&self, queue: &str) -> StoreFuture<QueueStats> {
        (**self).stats(queue)
    }
}

/// Jobs in this process: for one instance, tests and embedded defaults. Jobs are lost with
/// the process, and other instances do not see them; use
/// [`RedisJobStore`](super::RedisJobStore) to share a queue.
#[derive(Debug, Clone, Default)]
pub struct MemoryJobStore {
    inner: Arc<Mutex<HashMap<String, Queue>>>,
    epoch: Epoch,
}

/// Wall-clock milliseconds that follow Tokio's clock, so tests that pause time see leases
/// and delays expire.
#[derive(Debug, Clone, Copy)]
struct Epoch {
    at: tokio::time::Instant,
    ms: u64,
}

impl Default for Epoch {
    fn default() -> Self {
        Self {
            at: tokio::time::Instant::now(),
            ms: super::job::to_millis(std::time::SystemTime::now()),
        }
    }
}

impl Epoch {
    fn now(&self) -> u64 {
        self.ms + ms(self.at.elapsed())
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

#[derive(Debug, Default)]
struct Queue {
    jobs: HashMap<JobId, Job>,
    /// (rank, id): rank orders by priority, then by enqueue order.
    ready: BTreeMap<(u64, JobId), ()>,
    /// (due ms, id): delayed and retrying jobs.
    scheduled: BTreeMap<(u64, JobId), ()>,
    /// (lease deadline ms, id).
    running: BTreeMap<(u64, JobId), ()>,
    /// (expiry ms, id): finished jobs, removed after the retention.
    finished: BTreeMap<(u64, JobId), ()>,
    idempotency: HashMap<String, JobId>,
    seq: u64,
}

#[derive(Debug)]
struct Job {
    state: JobState,
    payload: String,
    attempts: u32,
    max_attempts: u32,
    rank: u64,
    token: Option<String>,
    deadline: u64,
    due: u64,
    progress: Option<u8>,
    error: Option<String>,
    result: Option<String>,
    enqueued: u64,
    finished: Option<u64>,
    idempotency_key: Option<String>,
}

impl Queue {
    fn sweep(&mut self, now: u64) {
        while let Some((&(at, ref id), _)) = self.finished.first_key_value() {
            if at > now {
                break;
            }
            let id = id.clone();
            self.finished.pop_first();
            if let Some(job) = self.jobs.remove(&id)
                && let Some(k) = job.idempotency_key
            {
                self.idempotency.remove(&k);
            }
        }
    }

    fn finish(&mut self, id: &JobId, state: JobState, now: u64, life: Lifetimes) {
        if let Some(job) = self.jobs.get_mut(id) {
            job.state = state;
            job.token = None;
            job.finished = Some(now);
            if state == JobState::Succeeded {
                job.payload = String::new();
                job.progress = Some(100);
            }
            self.finished
                .insert((now.saturating_add(ms(life.retention)), id.clone()), ());
        }
    }

    fn leased<'a>(&'a mut self, id: &JobId, token: &str) -> Option<&'a mut Job> {
        self.jobs
            .get_mut(id)
            .filter(|j| j.state == JobState::Running && j.token.as_deref() == Some(token))
    }
}

impl MemoryJobStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T: Send + 'static>(
        &self,
        queue: &str,
        f: impl FnOnce(&mut Queue, u64) -> T,
    ) -> StoreFuture<T> {
        let now = self.epoch.now();
        let mut all = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let q = all.entry(queue.to_owned()).or_default();
        q.sweep(now);
        let out = f(q, now);
        Box::pin(std::future::ready(Ok(out)))
    }
}

impl JobStore for MemoryJobStore {
    fn enqueue(&self, queue: &str, job: NewJob) -> StoreFuture<(JobId, bool)> {
        self.with(queue, move |q, now| {
            if let Some(k) = &job.idempotency_key
                && let Some(prior) = q.idempotency.get(k)
                && q.jobs.contains_key(prior)
            {
                return (prior.clone(), false);
            }
            q.seq += 1;
            let rank = (u64::from(255 - job.priority) << 44) + q.seq;
            // Whole milliseconds, as the Redis store counts them.
            let delayed = ms(job.delay) > 0;
            let due = now.saturating_add(ms(job.delay));
            if delayed {
                q.scheduled.insert((due, job.id.clone()), ());
            } else {
                q.ready.insert((rank, job.id.clone()), ());
            }
            if let Some(k) = &job.idempotency_key {
                q.idempotency.insert(k.clone(), job.id.clone());
            }
            q.jobs.insert(
                job.id.clone(),
                Job {
                    state: if delayed {
                        JobState::Scheduled
                    } else {
                        JobState::Queued
                    },
                    payload: job.payload,
                    attempts: 0,
                    max_attempts: job.max_attempts,
                    rank,
                    token: None,
                    deadline: 0,
                    due,
                    progress: None,
                    error: None,
                    result: None,
                    enqueued: now,
                    finished: None,
                    idempotency_key: job.idempotency_key,
                },
            );
            (job.id, true)
        })
    }

    fn fetch(&self, queue: &str, max: usize, token: &str, life: Lifetimes) -> StoreFuture<Fetched> {
        let token = token.to_owned();
        self.with(queue, move |q, now| {
            let mut out = Fetched::default();
            while let Some((&(due, ref id), _)) = q.scheduled.first_key_value() {
                if due > now {
                    break;
                }
                let id = id.clone();
                q.scheduled.pop_first();
                if let Some(job) = q.jobs.get_mut(&id) {
                    job.state = JobState::Queued;
                    q.ready.insert((job.rank, id), ());
                }
            }
            while let Some((&(deadline, ref id), _)) = q.running.first_key_value() {
                if deadline > now {
                    break;
                }
                let id = id.clone();
                q.running.pop_first();
                let Some(job) = q.jobs.get_mut(&id) else {
                    continue;
                };
                if job.attempts >= job.max_attempts {
                    job.error = Some(lease_expired(job.attempts, job.max_attempts));
                    q.finish(&id, JobState::Dead, now, life);
                    out.buried += 1;
                } else {
                    job.state = JobState::Queued;
                    job.token = None;
                    q.ready.insert((job.rank, id), ());
                    out.taken_over += 1;
                }
            }
            while out.jobs.len() < max {
                let Some(((_, id), ())) = q.ready.pop_first() else {
                    break;
                };
                let Some(job) = q.jobs.get_mut(&id) else {
                    continue;
                };
                job.attempts += 1;
                job.state = JobState::Running;
                job.token = Some(token.clone());
                job.deadline = now.saturating_add(ms(life.lease));
                q.running.insert((job.deadline, id.clone()), ());
                out.jobs.push(Leased {
                    id,
                    payload: job.payload.clone(),
                    attempt: job.attempts,
                    max_attempts: job.max_attempts,
                });
            }
            out
        })
    }

    fn renew(&self, queue: &str, id: &JobId, token: &str, life: Lifetimes) -> StoreFuture<bool> {
        let (id, token) = (id.clone(), token.to_owned());
        self.with(queue, move |q, now| {
            let Some(job) = q.leased(&id, &token) else {
                return false;
            };
            let old = job.deadline;
            job.deadline = now.saturating_add(ms(life.lease));
            let new = job.deadline;
            q.running.remove(&(old, id.clone()));
            q.running.insert((new, id), ());
            true
        })
    }

    fn progress(&self, queue: &str, id: &JobId, token: &str, progress: u8) -> StoreFuture<bool> {
        let (id, token) = (id.clone(), token.to_owned());
        self.with(queue, move |q, _| match q.leased(&id, &token) {
            Some(job) => {
                job.progress = Some(progress.min(100));
                true
            }
            None => false,
        })
    }

    fn complete(
        &self,
        queue: &str,
        id: &JobId,
        token: &str,
        result: String,
        life: Lifetimes,
    ) -> StoreFuture<bool> {
        let (id, token) = (id.clone(), token.to_owned());
        self.with(queue, move |q, now| {
            let Some(job) = q.leased(&id, &token) else {
                return false;
            };
            job.result = Some(result);
            let deadline = job.deadline;
            q.running.remove(&(deadline, id.clone()));
            q.finish(&id, JobState::Succeeded, now, life);
            true
        })
    }

    fn fail(
        &self,
        queue: &str,
        id: &JobId,
        token: &str,
        error: String,
        retry_in: Option<Duration>,
        life: Lifetimes,
    ) -> StoreFuture<Failed> {
        let (id, token) = (id.clone(), token.to_owned());
        self.with(queue, move |q, now| {
            let Some(job) = q.leased(&id, &token) else {
                return Failed::LeaseLost;
            };
            job.error = Some(error);
            let deadline = job.deadline;
            let retry = retry_in.filter(|_| job.attempts < job.max_attempts);
            q.running.remove(&(deadline, id.clone()));
            match retry {
                Some(after) => {
                    let job = q.jobs.get_mut(&id).expect("leased above");
                    job.state = JobState::Retrying;
                    job.token = None;
                    job.due = now.saturating_add(ms(after));
                    q.scheduled.insert((job.due, id), ());
                    Failed::Retrying
                }
                None => {
                    q.finish(&id, JobState::Dead, now, life);
                    Failed::Dead
                }
            }
        })
    }

    fn release(&self, queue: &str, id: &JobId, token: &str) -> StoreFuture<bool> {
        let (id, token) = (id.clone(), token.to_owned());
        self.with(queue, move |q, _| {
            let Some(job) = q.leased(&id, &token) else {
                return false;
            };
            job.attempts -= 1;
            job.state = JobState::Queued;
            job.token = None;
            let (deadline, rank) = (job.deadline, job.rank);
            q.running.remove(&(deadline, id.clone()));
            q.ready.insert((rank, id), ());
            true
        })
    }

    fn status(&self, queue: &str, id: &JobId) -> StoreFuture<Option<JobStatus>> {
        let id = id.clone();
        self.with(queue, move |q, _| {
            let job = q.jobs.get(&id)?;
            Some(JobStatus {
                id,
                state: job.state,
                attempts: job.attempts,
                max_attempts: job.max_attempts,
                progress: job.progress,
                error: job.error.clone(),
                result: job.result.clone(),
                enqueued_at: from_millis(job.enqueued),
                finished_at: job.finished.map(from_millis),
            })
        })
    }

    fn stats(&self, queue: &str) -> StoreFuture<QueueStats> {
        self.with(queue, |q, now| QueueStats {
            queued: q.ready.len() as u64,
            scheduled: q.scheduled.len() as u64,
            running: q.running.len() as u64,
            dead: q
                .jobs
                .values()
                .filter(|j| j.state == JobState::Dead)
                .count() as u64,
            head_age: q
                .ready
                .first_key_value()
                .and_then(|((_, id), _)| q.jobs.get(id))
                .map(|j| Duration::from_millis(now.saturating_sub(j.enqueued))),
        })
    }
}

/// The error a job gets when its lease expired on its last attempt, after "lease expired
/// on attempt N of M".
pub(crate) const LEASE_EXPIRED: &str =
    ": the worker stopped renewing it (it died, stalled or lost the store)";

fn lease_expired(attempt: u32, max: u32) -> String {
    format!("lease expired on attempt {attempt} of {max}{LEASE_EXPIRED}")
}
