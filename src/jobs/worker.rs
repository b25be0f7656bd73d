//! [`Worker`]: a pool that runs a queue's jobs with bounded concurrency, renews their
//! leases, retries failures with backoff, and hands unfinished jobs back on shutdown.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::job::JobId;
use super::metrics;
use super::queue::{Queue, Shared};
use super::store::{Completion, Failed, Leased};
use crate::StoreUnavailable;
use crate::hash::Jitter;

/// Runs the jobs of one queue. Start it with [`Worker::builder`] and
/// [`WorkerBuilder::spawn`]; stop it with [`WorkerHandle::shutdown`].
#[derive(Debug)]
pub struct Worker(());

/// Configures a worker pool.
#[must_use]
pub struct WorkerBuilder<T> {
    queue: Queue<T>,
    concurrency: usize,
    poll: Duration,
    backoff: Backoff,
    batch: Option<usize>,
    limit: Option<Arc<dyn Limiter>>,
}

/// Job starts admitted by a rate limit shared by every worker of a queue.
trait Limiter: Send + Sync {
    /// Takes `n` starts; `Ok(None)` if admitted, else how long until one start may be.
    fn take(
        &self,
        n: u64,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Duration>, StoreUnavailable>> + Send>>;
}

#[cfg(feature = "rate-limit")]
struct Gcra<S> {
    store: S,
    quota: crate::rate_limit::store::QuotaSpec,
    key: String,
}

#[cfg(feature = "rate-limit")]
impl<S: crate::rate_limit::store::Store<String>> Limiter for Gcra<S> {
    fn take(
        &self,
        n: u64,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Duration>, StoreUnavailable>> + Send>> {
        use crate::rate_limit::store::StoreFuture;
        let verdict = |d: crate::rate_limit::store::Decision| {
            let v = d.verdicts()[0];
            (!d.allowed()).then(|| Duration::from_micros(v.retry_after_us.clamp(1_000, 60_000_000)))
        };
        match self.store.check(&self.key, &[&self.quota], n) {
            StoreFuture::Ready(r) => Box::pin(std::future::ready(r.map(verdict))),
            StoreFuture::Pending(f) => Box::pin(async move { f.await.map(verdict) }),
        }
    }
}

impl<T> fmt::Debug for WorkerBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("queue", &self.queue)
            .field("concurrency", &self.concurrency)
            .field("poll", &self.poll)
            .field("backoff", &self.backoff)
            .field("batch", &self.batch)
            .field("rate_limited", &self.limit.is_some())
            .finish()
    }
}

/// The delay before attempt `n + 1` after attempt `n` failed: `base · 2^(n-1)`, capped at
/// `max`, then drawn uniformly from its upper half (so retries of jobs that failed
/// together spread out, and the delay is never below half the nominal one).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// Exponential backoff from `base`, capped at `max`.
    pub fn exponential(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
        }
    }

    /// The nominal delay after attempt `attempt` (from 1) failed, before jitter.
    pub fn nominal(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    fn draw(&self, attempt: u32, jitter: &Jitter) -> Duration {
        let d = self.nominal(attempt);
        let half = d / 2;
        let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        d - half + Duration::from_millis(jitter.up_to(spread)).min(half)
    }
}

impl Default for Backoff {
    /// 1 s doubling up to 5 min.
    fn default() -> Self {
        Self::exponential(Duration::from_secs(1), Duration::from_secs(300))
    }
}

/// What a handler gets: the job's payload, id and attempt, and a way to report progress.
pub struct JobContext<T> {
    id: JobId,
    attempt: u32,
    max_attempts: u32,
    payload: T,
    token: Arc<str>,
    shared: Arc<Shared>,
}

impl<T> fmt::Debug for JobContext<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("queue", &self.shared.name)
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl<T> JobContext<T> {
    /// The job's id.
    pub fn id(&self) -> &JobId {
        &self.id
    }

    /// This attempt's number, from 1. Above 1, an earlier attempt failed or its worker
    /// died: make the job's effects idempotent (keyed by [`id`](Self::id)).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The most attempts the job gets.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The payload.
    pub fn payload(&self) -> &T {
        &self.payload
    }

    /// Reports progress (0..=100), readable in the job's status. Returns `false` if the
    /// job's lease was taken over (another worker runs it now; this attempt's outcome will
    /// not be recorded) or the store failed.
    pub async fn progress(&self, percent: u8) -> bool {
        let s = &self.shared;
        s.store
            .progress(&s.name, &self.id, &self.token, percent)
            .await
            .unwrap_or(false)
    }
}

/// A running worker pool. Dropping it stops fetching and lets running jobs finish, with no
/// deadline; [`shutdown`](Self::shutdown) sets one.
#[derive(Debug)]
pub struct WorkerHandle {
    phase: watch::Sender<Phase>,
    main: tokio::task::JoinHandle<Drained>,
}

/// What a shutdown did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Drained {
    /// Jobs that finished (succeeded or failed) after the shutdown began.
    pub finished: u32,
    /// Jobs still running at the deadline, stopped and handed back to the queue.
    pub handed_back: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Draining,
    Abort,
}

impl Worker {
    /// Starts configuring a pool for `queue`.
    pub fn builder<T>(queue: Queue<T>) -> WorkerBuilder<T> {
        WorkerBuilder {
            queue,
            concurrency: 4,
            poll: Duration::from_millis(250),
            backoff: Backoff::default(),
            batch: None,
            limit: None,
        }
    }
}

impl<T> WorkerBuilder<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    /// Jobs this pool runs at once (default 4; at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The longest an idle pool waits before looking for work again (default 250 ms).
    /// Jobs enqueued through a queue in this process wake it at once; delayed jobs and
    /// jobs enqueued elsewhere start within this interval.
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll.max(Duration::from_millis(1));
        self
    }

    /// Up to this many jobs per fetch (default: the concurrency). Above the concurrency,
    /// the jobs that do not fit wait in the pool, their leases running, until a slot
    /// frees (one that waited half its lease is handed back instead of started): fewer
    /// round trips for short jobs, at the price of holding jobs other instances' idle
    /// workers could run. Ignored under a [`rate_limit`](Self::rate_limit), which admits
    /// jobs as they start.
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = Some(n.max(1));
        self
    }

    /// The delay between attempts (default 1 s doubling up to 5 min).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Starts at most `quota`'s jobs of this queue per period, across every pool of every
    /// instance that shares `store` (the crate's GCRA: a [`MemoryStore`] limits this
    /// process, a [`RedisStore`] every instance), for jobs that call a rate-limited
    /// upstream. A pool waits for the quota's retry time when it is spent, and backs off
    /// like a failed fetch while the store is unavailable (it does not start jobs without
    /// the quota's consent).
    ///
    /// [`MemoryStore`]: crate::rate_limit::MemoryStore
    /// [`RedisStore`]: crate::rate_limit::RedisStore
    #[cfg(feature = "rate-limit")]
    pub fn rate_limit<S>(mut self, quota: &crate::rate_limit::Quota, store: S) -> Self
    where
        S: crate::rate_limit::store::Store<String>,
    {
        self.limit = Some(Arc::new(Gcra {
            store,
            quota: crate::rate_limit::store::QuotaSpec::new(0, quota),
            key: format!("jobs:{}", self.queue.shared.name),
        }));
        self
    }

    /// Starts the pool on the current Tokio runtime: `handler` runs each job. An `Ok`
    /// result is stored (as JSON) and the job succeeds; an `Err` (its `Display` is kept
    /// as the job's error) or a panic fails the attempt, retried after the backoff until
    /// the job's attempts are spent, then dead-lettered.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn spawn<H, Fut, R, E>(self, handler: H) -> WorkerHandle
    where
        H: Fn(JobContext<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Serialize + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let (phase, rx) = watch::channel(Phase::Running);
        let pool = Pool {
            shared: Arc::clone(&self.queue.shared),
            handler: Arc::new(handler),
            concurrency: self.concurrency,
            poll: self.poll,
            backoff: self.backoff,
            batch: self.batch.unwrap_or(self.concurrency),
            limit: self.limit,
            jitter: Arc::new(Jitter::new()),
            phase: rx,
            _payload: std::marker::PhantomData,
        };
        WorkerHandle {
            phase,
            main: tokio::spawn(pool.run()),
        }
    }
}

impl WorkerHandle {
    /// Stops fetching, lets running jobs finish for up to `deadline`, then stops the rest
    /// and hands them back to the queue at once (their attempt not counted), so another
    /// worker starts them without waiting for a lease to expire.
    pub async fn shutdown(mut self, deadline: Duration) -> Drained {
        let _ = self.phase.send(Phase::Draining);
        if let Ok(done) = tokio::time::timeout(deadline, &mut self.main).await {
            return done.unwrap_or_default();
        }
        let _ = self.phase.send(Phase::Abort);
        self.main.await.unwrap_or_default()
    }

    /// True once the pool has stopped.
    pub fn is_finished(&self) -> bool {
        self.main.is_finished()
    }
}

struct Pool<T, H> {
    shared: Arc<Shared>,
    handler: Arc<H>,
    concurrency: usize,
    poll: Duration,
    backoff: Backoff,
    batch: usize,
    limit: Option<Arc<dyn Limiter>>,
    jitter: Arc<Jitter>,
    phase: watch::Receiver<Phase>,
    _payload: std::marker::PhantomData<fn() -> T>,
}

enum Ended {
    Finished,
    HandedBack,
    /// Waited in the pool too long to start on its lease: handed back unstarted.
    Stale,
}

/// A job leased by a fetch, waiting in the pool for a free slot.
struct Waiting {
    job: Leased,
    token: Arc<str>,
    fetched: tokio::time::Instant,
}

/// A success on its way to the store.
struct Ack {
    id: JobId,
    token: Arc<str>,
    result: String,
}

/// Most successes recorded in one store call.
const ACK_BATCH: usize = 64;

const IDLE_MIN: Duration = Duration::from_millis(5);
const ERROR_MIN: Duration = Duration::from_millis(50);
const ERROR_MAX: Duration = Duration::from_secs(5);
/// A store outage is logged at WARN at most this often per pool (the metrics count all).
const WARN_EVERY: Duration = Duration::from_secs(10);
const STATS_EVERY: Duration = Duration::from_secs(5);

impl<T, H, Fut, R, E> Pool<T, H>
where
    T: Serialize + DeserializeOwned + Send + 'static,
    H: Fn(JobContext<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, E>> + Send + 'static,
    R: Serialize + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    async fn run(mut self) -> Drained {
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let mut running = JoinSet::new();
        let mut waiting: VecDeque<Waiting> = VecDeque::new();
        let (acks, rx) = mpsc::channel(4 * ACK_BATCH);
        let acker = tokio::spawn(acknowledge(Arc::clone(&self.shared), rx));
        let mut idle = IDLE_MIN;
        let mut failing = ERROR_MIN;
        let warn = crate::error::Throttle::new();
        let mut stats_at = tokio::time::Instant::now();
        let name = self.shared.name.clone();
        let life = self.shared.life;
        loop {
            while running.try_join_next().is_some() {}
            if stats_at.elapsed() >= STATS_EVERY {
                stats_at = tokio::time::Instant::now();
                if let Ok(s) = self.shared.store.stats(&name).await {
                    metrics::stats(&name, &s);
                }
            }
            // Jobs waiting in the pool are not renewed: one that has waited half its lease
            // goes back unstarted, before another instance's fetch can take it over (and
            // count an attempt it never had).
            let stale_at = waiting.front().map(|w| w.fetched + life.lease / 2);
            let first = tokio::select! {
                biased;
                _ = self.phase.wait_for(|p| *p != Phase::Running) => break,
                () = sleep_until(stale_at) => {
                    while waiting.front().is_some_and(|w| w.fetched.elapsed() >= life.lease / 2) {
                        let w = waiting.pop_front().expect("checked");
                        running.spawn(release(Arc::clone(&self.shared), w, Ended::Stale));
                    }
                    continue;
                }
                p = Arc::clone(&permits).acquire_owned() => p.expect("never closed"),
            };
            if let Some(w) = waiting.pop_front() {
                if w.fetched.elapsed() >= life.lease / 2 {
                    running.spawn(release(Arc::clone(&self.shared), w, Ended::Stale));
                } else {
                    running.spawn(self.attempt(w, first, acks.clone()));
                }
                continue;
            }
            let mut held = vec![first];
            while let Ok(p) = Arc::clone(&permits).try_acquire_owned() {
                held.push(p);
            }
            let mut want = held.len().max(self.batch);
            if let Some(limit) = &self.limit {
                match admitted(limit.as_ref(), held.len()).await {
                    Ok(Ok(n)) => want = n,
                    Ok(Err(wait)) => {
                        drop(held);
                        self.idle_until_stopped(wait).await;
                        continue;
                    }
                    Err(e) => {
                        drop(held);
                        match warn.ready(WARN_EVERY) {
                            Some(skipped) => {
                                tracing::warn!(queue = %name, error = %e, skipped, retry_in = ?failing, "job rate limit store failed")
                            }
                            None => {
                                tracing::debug!(queue = %name, error = %e, "job rate limit store failed")
                            }
                        }
                        self.idle_until_stopped(failing).await;
                        failing = (failing * 2).min(ERROR_MAX);
                        continue;
                    }
                }
            }
            let token: Arc<str> = JobId::random().0.into();
            let fetched_at = tokio::time::Instant::now();
            match self.shared.store.fetch(&name, want, &token, life).await {
                Ok(fetched) => {
                    failing = ERROR_MIN;
                    metrics::reclaimed(&name, fetched.taken_over, fetched.buried);
                    if fetched.jobs.is_empty() {
                        drop(held);
                        self.idle(idle).await;
                        idle = (idle * 2).min(self.poll);
                        continue;
                    }
                    idle = IDLE_MIN;
                    for job in fetched.jobs {
                        let w = Waiting {
                            job,
                            token: Arc::clone(&token),
                            fetched: fetched_at,
                        };
                        match held.pop() {
                            Some(permit) => {
                                running.spawn(self.attempt(w, permit, acks.clone()));
                            }
                            None => waiting.push_back(w),
                        }
                    }
                }
                Err(e) => {
                    drop(held);
                    match warn.ready(WARN_EVERY) {
                        Some(skipped) => {
                            tracing::warn!(queue = %name, error = %e, skipped, retry_in = ?failing, "job fetch failed")
                        }
                        None => tracing::debug!(queue = %name, error = %e, "job fetch failed"),
                    }
                    self.idle(failing).await;
                    failing = (failing * 2).min(ERROR_MAX);
                }
            }
        }
        // Jobs fetched but not started go back at once.
        for w in waiting.drain(..) {
            running.spawn(release(Arc::clone(&self.shared), w, Ended::HandedBack));
        }
        let mut drained = Drained::default();
        while let Some(ended) = running.join_next().await {
            match ended {
                Ok(Ended::HandedBack) => drained.handed_back += 1,
                Ok(Ended::Stale) => {}
                Ok(Ended::Finished) | Err(_) => drained.finished += 1,
            }
        }
        // Every success is recorded before the pool reports it stopped.
        drop(acks);
        let _ = acker.await;
        drained
    }

    /// Sleeps `d`, waking early only for a shutdown.
    async fn idle_until_stopped(&mut self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.phase.wait_for(|p| *p != Phase::Running) => {}
        }
    }

    /// Sleeps up to `d`, waking early for a local enqueue or a shutdown.
    async fn idle(&mut self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.shared.enqueued.notified() => {}
            _ = self.phase.wait_for(|p| *p != Phase::Running) => {}
        }
    }

    fn attempt(
        &self,
        waiting: Waiting,
        permit: OwnedSemaphorePermit,
        acks: mpsc::Sender<Ack>,
    ) -> impl Future<Output = Ended> + Send + 'static {
        let Waiting {
            job,
            token,
            fetched,
        } = waiting;
        let shared = Arc::clone(&self.shared);
        let handler = Arc::clone(&self.handler);
        let (backoff, jitter) = (self.backoff, Arc::clone(&self.jitter));
        let mut phase = self.phase.clone();
        let span = tracing::info_span!("job", queue = %shared.name, job.id = %job.id, attempt = job.attempt);
        async move {
            let (name, life) = (shared.name.as_str(), shared.life);
            let payload = match serde_json::from_str::<T>(&job.payload) {
                Ok(p) => p,
                Err(e) => {
                    // No attempt can read it: straight to the dead letters.
                    let error = format!("the payload cannot be read as this queue's job type: {e}");
                    tracing::warn!(%error, "job dead");
                    drop(permit);
                    let _ = shared.store.fail(name, &job.id, &token, error, None, life).await;
                    metrics::dead(name);
                    return Ended::Finished;
                }
            };
            metrics::started(name);
            let started = tokio::time::Instant::now();
            let ctx = JobContext {
                id: job.id.clone(),
                attempt: job.attempt,
                max_attempts: job.max_attempts,
                payload,
                token: Arc::clone(&token),
                shared: Arc::clone(&shared),
            };
            let mut work = tokio::spawn(handler(ctx).in_current_span());
            // Renewals every third of the lease from the fetch that set it. (Not
            // `interval`, whose first tick is "now": Tokio's timer wheel resolves it on its
            // next millisecond turn, which cost every job about a millisecond.)
            let every = life.lease / 3;
            let mut renew = tokio::time::interval_at(fetched + every, every);
            let outcome = loop {
                tokio::select! {
                    // A finished handler's outcome wins over a renewal or the deadline.
                    biased;
                    out = &mut work => break out,
                    _ = renew.tick() => {
                        match shared.store.renew(name, &job.id, &token, life).await {
                            Ok(true) => {}
                            Ok(false) => tracing::warn!("job lease lost: another worker runs it now"),
                            Err(e) => tracing::warn!(error = %e, "job lease renewal failed"),
                        }
                    }
                    _ = aborted(&mut phase) => {
                        drop(permit);
                        work.abort();
                        let _ = shared.store.release(name, &job.id, &token).await;
                        tracing::info!("job handed back at shutdown");
                        return Ended::HandedBack;
                    }
                }
            };
            metrics::ran(name, started.elapsed());
            // The slot is free once the handler is done; the outcome is recorded after.
            drop(permit);
            let error = match outcome {
                Ok(Ok(result)) => match serde_json::to_string(&result) {
                    Ok(json) => {
                        let ack = Ack {
                            id: job.id,
                            token,
                            result: json,
                        };
                        if let Err(mpsc::error::SendError(ack)) = acks.send(ack).await {
                            record(&shared, vec![ack]).await;
                        }
                        return Ended::Finished;
                    }
                    Err(e) => format!("the result does not serialize: {e}"),
                },
                Ok(Err(e)) => e.to_string(),
                Err(e) if e.is_panic() => format!("the handler panicked: {}", panic_message(e.into_panic())),
                Err(_) => "the handler was cancelled".to_owned(),
            };
            let retry_in = backoff.draw(job.attempt, &jitter);
            match shared.store.fail(name, &job.id, &token, error.clone(), Some(retry_in), life).await {
                Ok(Failed::Retrying) => {
                    tracing::info!(%error, ?retry_in, "job attempt failed; retrying");
                    metrics::retried(name);
                }
                Ok(Failed::Dead) => {
                    tracing::warn!(%error, "job dead: its last attempt failed");
                    metrics::dead(name);
                }
                Ok(_) => tracing::warn!(%error, "job attempt failed after its lease was taken over"),
                Err(e) => tracing::warn!(%error, store = %e, "job attempt failed and the store did not record it; it runs again after its lease"),
            }
            Ended::Finished
        }
        .instrument(span)
    }
}

/// How many of `wanted` job starts the limit admits now (`Ok(Ok(n))`, n >= 1), or how long
/// until one may start. All of them if it can, else one. Starts taken for jobs the fetch
/// does not find are not given back: an empty queue spends at most one start per poll.
async fn admitted(
    limit: &dyn Limiter,
    wanted: usize,
) -> Result<Result<usize, Duration>, StoreUnavailable> {
    if wanted > 1 && limit.take(wanted as u64).await?.is_none() {
        return Ok(Ok(wanted));
    }
    Ok(match limit.take(1).await? {
        None => Ok(1),
        Some(wait) => Err(wait),
    })
}

/// Records the pool's successes in batches of up to [`ACK_BATCH`]: what the jobs' handlers
/// finished while the last batch was on its way goes in the next.
async fn acknowledge(shared: Arc<Shared>, mut rx: mpsc::Receiver<Ack>) {
    let mut batch = Vec::with_capacity(ACK_BATCH);
    while rx.recv_many(&mut batch, ACK_BATCH).await > 0 {
        record(&shared, std::mem::take(&mut batch)).await;
    }
}

/// Records successes, trying again briefly if the store fails: a success that is never
/// recorded means the job runs again after its lease (at-least-once).
async fn record(shared: &Shared, acks: Vec<Ack>) {
    let jobs: Vec<Completion> = acks
        .into_iter()
        .map(|a| Completion::new(a.id, &*a.token, a.result))
        .collect();
    // Until half the lease has passed (the jobs' leases were last renewed at most a third
    // of it ago): past that, another worker may have taken them over anyway.
    let give_up = tokio::time::Instant::now() + shared.life.lease / 2;
    let mut wait = ERROR_MIN;
    loop {
        match shared
            .store
            .complete_many(&shared.name, jobs.clone(), shared.life)
            .await
        {
            Ok(done) => {
                let lost = done.iter().filter(|d| !**d).count();
                metrics::succeeded(&shared.name, (done.len() - lost) as u64);
                if lost > 0 {
                    tracing::warn!(queue = %shared.name, lost, "jobs finished after their leases were taken over; the other workers' outcomes stand");
                }
                return;
            }
            Err(e) if tokio::time::Instant::now() + wait < give_up => {
                tracing::warn!(queue = %shared.name, error = %e, jobs = jobs.len(), "jobs finished but the store did not record it; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(ERROR_MAX);
            }
            Err(e) => {
                tracing::warn!(queue = %shared.name, error = %e, jobs = jobs.len(), "jobs finished but the store never recorded it; they run again after their leases");
                return;
            }
        }
    }
}

/// Sleeps until `at`, or forever for `None`.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Hands a job that waited in the pool back to the queue, unstarted.
async fn release(shared: Arc<Shared>, w: Waiting, ended: Ended) -> Ended {
    let _ = shared
        .store
        .release(&shared.name, &w.job.id, &w.token)
        .await;
    ended
}

/// Resolves when the pool's shutdown deadline has passed. A dropped handle never aborts:
/// its pool drains, letting running jobs finish.
async fn aborted(phase: &mut watch::Receiver<Phase>) {
    if phase.wait_for(|p| *p == Phase::Abort).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}
