//! Every metric the layers record, with its unit and help text, in one place: what
//! [`describe_metrics`](crate::describe_metrics) sends to the installed recorder, so
//! Prometheus shows `# HELP` and `# TYPE` for each series and unit suffixes where the
//! exporter adds them.

use ::metrics::Unit;

/// The kind of a metric.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

use Kind::{Counter, Gauge, Histogram};

/// (name, kind, unit, help): every `tower_scale.*` metric. The HTTP metrics layer
/// describes its own (their names are configurable).
const CATALOGUE: &[(&str, Kind, Option<Unit>, &str)] = &[
    // Redis backend
    (
        "tower_scale.redis.command.duration",
        Histogram,
        Some(Unit::Seconds),
        "Round trip of one Redis call (command, pipeline or script) that answered, by op.",
    ),
    (
        "tower_scale.redis.command.errors",
        Counter,
        None,
        "Redis calls that failed, by op and kind (error or timeout).",
    ),
    // Rate limiting
    (
        "tower_scale.rate_limit.decisions",
        Counter,
        None,
        "Rate-limit decisions, by quota and decision.",
    ),
    (
        "tower_scale.rate_limit.store_errors",
        Counter,
        None,
        "Rate-limit checks the shared store could not answer (the fallback decided).",
    ),
    (
        "tower_scale.rate_limit.store_full",
        Counter,
        None,
        "Keys the in-process rate-limit store evicted because it was full.",
    ),
    (
        "tower_scale.rate_limit.lease_checks",
        Counter,
        None,
        "Rate-limit checks through a LeasingStore, by source: decided from a lease, or by the shared store.",
    ),
    // Sessions
    (
        "tower_scale.session.loads",
        Counter,
        None,
        "Sessions read from the store.",
    ),
    (
        "tower_scale.session.saves",
        Counter,
        None,
        "Session writes applied by the store.",
    ),
    (
        "tower_scale.session.created",
        Counter,
        None,
        "Sessions created.",
    ),
    (
        "tower_scale.session.destroyed",
        Counter,
        None,
        "Sessions ended by logout or log out everywhere.",
    ),
    (
        "tower_scale.session.expired",
        Counter,
        None,
        "Well-formed session ids the store no longer knew (expired, ended or rotated).",
    ),
    (
        "tower_scale.session.store_errors",
        Counter,
        None,
        "Session store calls that failed (the request was answered 503).",
    ),
    // Cache
    (
        "tower_scale.cache.hits",
        Counter,
        None,
        "Cache lookups answered from the cache, by tier.",
    ),
    (
        "tower_scale.cache.misses",
        Counter,
        None,
        "Cache lookups that had to load.",
    ),
    (
        "tower_scale.cache.stale_served",
        Counter,
        None,
        "Stale entries served, by reason (revalidate or error).",
    ),
    (
        "tower_scale.cache.coalesced",
        Counter,
        None,
        "Lookups that waited for another caller's load of the same key.",
    ),
    (
        "tower_scale.cache.loads",
        Counter,
        None,
        "Loads run, by outcome (ok or error).",
    ),
    (
        "tower_scale.cache.invalidations",
        Counter,
        None,
        "Invalidations this instance sent or received, by direction and kind.",
    ),
    (
        "tower_scale.cache.subscribed",
        Gauge,
        None,
        "1 while invalidations from other instances reach this one, else 0.",
    ),
    // Database routing
    (
        "tower_scale.db_route.reads",
        Counter,
        None,
        "Read routing decisions, by destination (replica or primary) and reason.",
    ),
    (
        "tower_scale.db_route.replica_lag_bytes",
        Gauge,
        Some(Unit::Bytes),
        "WAL bytes a replica was behind the primary at its last health check.",
    ),
    (
        "tower_scale.db_route.replica_lag_seconds",
        Gauge,
        Some(Unit::Seconds),
        "Time a replica was behind the primary at its last health check.",
    ),
    (
        "tower_scale.db_route.health_changes",
        Counter,
        None,
        "Replicas going in or out of rotation, by replica and health.",
    ),
    (
        "tower_scale.db_route.replica_failures",
        Counter,
        None,
        "Reads that failed on a replica and were retried on the primary.",
    ),
    // Circuit breakers
    (
        "tower_scale.circuit_breaker.transitions",
        Counter,
        None,
        "Circuit breaker state changes, by breaker and from/to state.",
    ),
    (
        "tower_scale.circuit_breaker.refused",
        Counter,
        None,
        "Calls refused by an open circuit breaker.",
    ),
    (
        "tower_scale.circuit_breaker.tripped",
        Gauge,
        None,
        "Breakers of this name (one per key for keyed breakers) not closed: open or half-open.",
    ),
    // Retries
    (
        "tower_scale.retry.retries",
        Counter,
        None,
        "Attempts retried.",
    ),
    (
        "tower_scale.retry.budget_exhausted",
        Counter,
        None,
        "Retries not made because the retry budget was spent.",
    ),
    // Jobs
    (
        "tower_scale.jobs.enqueued",
        Counter,
        None,
        "Jobs enqueued, by queue.",
    ),
    (
        "tower_scale.jobs.started",
        Counter,
        None,
        "Job attempts started, by queue.",
    ),
    (
        "tower_scale.jobs.succeeded",
        Counter,
        None,
        "Jobs finished successfully, by queue.",
    ),
    (
        "tower_scale.jobs.retried",
        Counter,
        None,
        "Job attempts that failed and will run again, by queue.",
    ),
    (
        "tower_scale.jobs.dead",
        Counter,
        None,
        "Jobs dead-lettered after their last attempt, by queue.",
    ),
    (
        "tower_scale.jobs.taken_over",
        Counter,
        None,
        "Jobs whose worker lost its lease and that another took over, by queue.",
    ),
    (
        "tower_scale.jobs.offloaded",
        Counter,
        None,
        "Requests the offload layer stored as jobs, by queue.",
    ),
    (
        "tower_scale.jobs.run.duration",
        Histogram,
        Some(Unit::Seconds),
        "How long job attempts ran, by queue.",
    ),
    (
        "tower_scale.jobs.depth",
        Gauge,
        None,
        "Jobs in a queue, by state, as last sampled by a worker pool.",
    ),
    (
        "tower_scale.jobs.head_age",
        Gauge,
        Some(Unit::Seconds),
        "How long the oldest ready job has waited, as last sampled by a worker pool.",
    ),
];

/// Sends every description to the current recorder.
pub(crate) fn all() {
    for &(name, kind, unit, help) in CATALOGUE {
        match (kind, unit) {
            (Counter, Some(u)) => ::metrics::describe_counter!(name, u, help),
            (Counter, None) => ::metrics::describe_counter!(name, help),
            (Gauge, Some(u)) => ::metrics::describe_gauge!(name, u, help),
            (Gauge, None) => ::metrics::describe_gauge!(name, help),
            (Histogram, Some(u)) => ::metrics::describe_histogram!(name, u, help),
            (Histogram, None) => ::metrics::describe_histogram!(name, help),
        }
    }
}

/// [`all`], once per process: what each layer's build calls (a recorder installed after
/// the first layer was built gets them from [`describe_metrics`](crate::describe_metrics)).
pub(crate) fn once() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(all);
}

#[cfg(test)]
mod tests {
    /// Every `tower_scale.*` name the sources record is in the catalogue, and no other.
    #[test]
    fn the_catalogue_names_every_metric_the_sources_record() {
        let names: std::collections::BTreeSet<&str> =
            super::CATALOGUE.iter().map(|(n, ..)| *n).collect();
        assert_eq!(names.len(), super::CATALOGUE.len(), "a name twice");
        let mut recorded = std::collections::BTreeSet::new();
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut dirs = vec![std::path::PathBuf::from(root)];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && !path.ends_with("describe.rs")
                {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for part in text.split("\"tower_scale.").skip(1) {
                        let end = part.find('"').unwrap();
                        recorded.insert(format!("tower_scale.{}", &part[..end]));
                    }
                }
            }
        }
        let recorded: std::collections::BTreeSet<&str> =
            recorded.iter().map(String::as_str).collect();
        assert_eq!(recorded, names);
    }
}
