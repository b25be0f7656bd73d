//! What a job is from the outside: its id, its state, its status, the options it is
//! enqueued with and the errors the queue answers.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::StoreUnavailable;

/// A job's id: 32 lowercase hex digits, unique across instances: the time it was made, in
/// microseconds, then 76 random bits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub(crate) String);

impl JobId {
    /// A fresh random id.
    ///
    /// # Panics
    ///
    /// If the operating system has no random source, which no supported platform lacks
    /// (as for session ids).
    pub(crate) fn random() -> Self {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the OS random source is available");
        Self(crate::hex::encode(&bytes))
    }

    /// A fresh id for a job: 13 hex digits of the time in microseconds since the Unix
    /// epoch, then 76 random bits (19 hex digits). Within a process each id's time is
    /// later than the one before (the clock is not trusted to move forward), so ids sort
    /// in the order they were made; the Redis store breaks ties of priority by id, which
    /// keeps equal priorities in enqueue order without a shared counter.
    ///
    /// # Panics
    ///
    /// As [`random`](Self::random).
    pub(crate) fn ordered() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
        static LAST: AtomicU64 = AtomicU64::new(0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let next = |last: u64| now.max(last.saturating_add(1));
        let last = LAST
            .fetch_update(Relaxed, Relaxed, |last| Some(next(last)))
            .unwrap_or_else(|last| last);
        // 52 bits of microseconds last until the year 2112.
        let time = next(last) & ((1 << 52) - 1);
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the OS random source is available");
        let random = u128::from_be_bytes(bytes) & ((1 << 76) - 1);
        Self(crate::hex::encode(
            &((u128::from(time) << 76) | random).to_be_bytes(),
        ))
    }

    /// Parses an id a client sent back (from a URL, say): `None` unless it has the shape
    /// of an id, so a lookup never sends arbitrary input to the store.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// Delayed: runs at its `run_at`.
    Scheduled,
    /// A worker holds its lease.
    Running,
    /// An attempt failed; the next one is scheduled after a backoff.
    Retrying,
    /// Done; its result is kept for the queue's retention.
    Succeeded,
    /// Failed its last attempt (or its payload cannot be read): kept with its last error
    /// for the queue's retention, in the dead-letter set.
    Dead,
}

impl JobState {
    /// The state's name as the status resource and the store write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
        }
    }

    #[cfg(feature = "redis")]
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "scheduled" => Self::Scheduled,
            "running" => Self::Running,
            "retrying" => Self::Retrying,
            "succeeded" => Self::Succeeded,
            "dead" => Self::Dead,
            _ => return None,
        })
    }

    /// True for `Succeeded` and `Dead`: nothing more will happen to the job.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Dead)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's status, as any instance reads it by id.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobStatus {
    /// The job.
    pub id: JobId,
    /// Where it is.
    pub state: JobState,
    /// Attempts started so far (a hand-back at shutdown does not count).
    pub attempts: u32,
    /// The most attempts it gets.
    pub max_attempts: u32,
    /// The progress (0..=100) the running job last reported; 100 once it succeeded.
    pub progress: Option<u8>,
    /// The error of the last failed attempt.
    pub error: Option<String>,
    /// The result (JSON text) once it succeeded.
    pub result: Option<String>,
    /// When it was enqueued.
    pub enqueued_at: SystemTime,
    /// When it succeeded or died.
    pub finished_at: Option<SystemTime>,
}

impl JobStatus {
    /// The result, read as `R`.
    ///
    /// # Errors
    ///
    /// [`JobError::Payload`] if the job has no result yet or it is not an `R`.
    pub fn result_as<R: serde::de::DeserializeOwned>(&self) -> Result<R, JobError> {
        let text = self.result.as_deref().ok_or_else(|| {
            JobError::Payload(format!("job {} has no result ({})", self.id, self.state))
        })?;
        serde_json::from_str(text)
            .map_err(|e| JobError::Payload(format!("result of job {}: {e}", self.id)))
    }
}

/// How many jobs a queue holds, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Waiting for a worker now.
    pub queued: u64,
    /// Delayed or waiting for a retry.
    pub scheduled: u64,
    /// Held by a worker.
    pub running: u64,
    /// In the dead-letter set (kept for the retention).
    pub dead: u64,
    /// How long the job next in line has waited since it was enqueued.
    pub head_age: Option<Duration>,
}

/// Options of one enqueue.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Enqueue {
    pub(crate) delay: Duration,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) priority: u8,
    pub(crate) idempotency_key: Option<String>,
}

impl Enqueue {
    /// The defaults: run now, the queue's attempts, priority 0, no idempotency key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs the job no earlier than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Runs the job no earlier than `at` (now if `at` has passed).
    pub fn run_at(self, at: SystemTime) -> Self {
        let delay = at.duration_since(SystemTime::now()).unwrap_or_default();
        self.delay(delay)
    }

    /// At most this many attempts (at least 1) instead of the queue's default.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// Jobs with a higher priority run first (default 0); equal priorities run in order.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// A second enqueue with the same key, while the first job exists (queued, running, or
    /// finished and within the retention), returns the first job instead of a new one.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// What an enqueue gave.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Enqueued {
    /// The job.
    pub id: JobId,
    /// False when the idempotency key named a job that already existed: `id` is that job.
    pub created: bool,
}

/// Why a queue operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum JobError {
    /// The store did not answer in time or failed; nothing was written, or the write is
    /// unknown (an enqueue may then be retried with its idempotency key).
    Store(StoreUnavailable),
    /// The payload (or a result) is not valid for its type.
    Payload(String),
    /// The serialized payload is bigger than the queue accepts.
    TooLarge {
        /// Its size in bytes.
        size: usize,
        /// The queue's limit.
        limit: usize,
    },
    /// An option is out of range (an empty or over-long idempotency key, zero attempts).
    Invalid(String),
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(e) => write!(f, "job store unavailable: {e}"),
            Self::Payload(m) => write!(f, "bad job payload: {m}"),
            Self::TooLarge { size, limit } => write!(
                f,
                "job payload is {size} bytes, over the queue's limit of {limit}; store large data elsewhere and enqueue a reference to it"
            ),
            Self::Invalid(m) => write!(f, "invalid job option: {m}"),
        }
    }
}

impl std::error::Error for JobError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StoreUnavailable> for JobError {
    fn from(e: StoreUnavailable) -> Self {
        Self::Store(e)
    }
}

/// Milliseconds since the Unix epoch as a `SystemTime`.
pub(crate) fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A `SystemTime` as milliseconds since the Unix epoch.
pub(crate) fn to_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_ids_sort_in_the_order_they_were_made_and_parse() {
        let ids: Vec<JobId> = (0..10_000).map(|_| JobId::ordered()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids out of order");
        for id in &ids[..10] {
            assert_eq!(JobId::parse(id.as_str()).as_ref(), Some(id));
        }
        // The first 13 digits are the time: within a minute of now.
        let micros = u64::from_str_radix(&ids[0].as_str()[..13], 16).unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        assert!(now.as_micros().abs_diff(u128::from(micros)) < 60_000_000);
        // The rest is random: two ids made in the same microsecond still differ there.
        let tails: std::collections::HashSet<&str> =
            ids.iter().map(|id| &id.as_str()[13..]).collect();
        assert_eq!(tails.len(), ids.len());
    }
}
