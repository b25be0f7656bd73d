//! The jobs' metrics, through the `metrics` facade, labelled by queue:
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `tower_scale.jobs.enqueued` | counter | jobs written (an idempotent repeat is not counted) |
//! | `tower_scale.jobs.offloaded` | counter | requests the offload layer answered 202 |
//! | `tower_scale.jobs.started` | counter | attempts started |
//! | `tower_scale.jobs.succeeded` | counter | jobs that succeeded |
//! | `tower_scale.jobs.retried` | counter | failed attempts scheduled again |
//! | `tower_scale.jobs.dead` | counter | jobs moved to the dead letters by this process's workers |
//! | `tower_scale.jobs.taken_over` | counter | jobs whose worker stopped renewing, put back in line |
//! | `tower_scale.jobs.run.duration` | histogram (s) | handler run time of each attempt |
//! | `tower_scale.jobs.depth` | gauge, label `state` | jobs queued, scheduled, running, dead (sampled by workers every 5 s) |
//! | `tower_scale.jobs.head_age` | gauge (s) | how long the job next in line has waited |

use std::time::Duration;

use super::job::QueueStats;

fn count(name: &'static str, queue: &str, n: u64) {
    if n > 0 {
        ::metrics::counter!(name, "queue" => queue.to_owned()).increment(n);
    }
}

pub(crate) fn enqueued(queue: &str) {
    enqueued_n(queue, 1);
}

pub(crate) fn enqueued_n(queue: &str, n: u64) {
    count("tower_scale.jobs.enqueued", queue, n);
}

pub(crate) fn offloaded(queue: &str) {
    count("tower_scale.jobs.offloaded", queue, 1);
}

pub(crate) fn started(queue: &str) {
    count("tower_scale.jobs.started", queue, 1);
}

pub(crate) fn succeeded(queue: &str, n: u64) {
    count("tower_scale.jobs.succeeded", queue, n);
}

pub(crate) fn retried(queue: &str) {
    count("tower_scale.jobs.retried", queue, 1);
}

pub(crate) fn dead(queue: &str) {
    count("tower_scale.jobs.dead", queue, 1);
}

pub(crate) fn reclaimed(queue: &str, taken_over: u32, buried: u32) {
    count("tower_scale.jobs.taken_over", queue, taken_over.into());
    count("tower_scale.jobs.dead", queue, buried.into());
}

pub(crate) fn ran(queue: &str, took: Duration) {
    ::metrics::histogram!("tower_scale.jobs.run.duration", "queue" => queue.to_owned())
        .record(took.as_secs_f64());
}

pub(crate) fn stats(queue: &str, s: &QueueStats) {
    for (state, n) in [
        ("queued", s.queued),
        ("scheduled", s.scheduled),
        ("running", s.running),
        ("dead", s.dead),
    ] {
        ::metrics::gauge!("tower_scale.jobs.depth", "queue" => queue.to_owned(), "state" => state)
            .set(n as f64);
    }
    ::metrics::gauge!("tower_scale.jobs.head_age", "queue" => queue.to_owned())
        .set(s.head_age.map_or(0.0, |d| d.as_secs_f64()));
}
