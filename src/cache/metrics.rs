//! The cache's own metrics, registered once per engine so the hit path only bumps a handle.

use metrics::{Counter, Gauge, counter, gauge};

pub(crate) struct Metrics {
    pub(crate) hit_l1: Counter,
    #[cfg(feature = "redis")]
    pub(crate) hit_l2: Counter,
    pub(crate) miss: Counter,
    pub(crate) stale_revalidate: Counter,
    pub(crate) stale_error: Counter,
    pub(crate) load_ok: Counter,
    pub(crate) load_err: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) subscribed: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Self {
            hit_l1: counter!("tower_scale.cache.hits", "tier" => "l1"),
            #[cfg(feature = "redis")]
            hit_l2: counter!("tower_scale.cache.hits", "tier" => "l2"),
            miss: counter!("tower_scale.cache.misses"),
            stale_revalidate: counter!("tower_scale.cache.stale_served", "reason" => "revalidate"),
            stale_error: counter!("tower_scale.cache.stale_served", "reason" => "error"),
            load_ok: counter!("tower_scale.cache.loads", "outcome" => "ok"),
            load_err: counter!("tower_scale.cache.loads", "outcome" => "error"),
            coalesced: counter!("tower_scale.cache.coalesced"),
            subscribed: gauge!("tower_scale.cache.subscribed"),
        }
    }

    pub(crate) fn invalidation_sent(&self, kind: &'static str) {
        counter!("tower_scale.cache.invalidations", "direction" => "sent", "kind" => kind)
            .increment(1);
    }

    #[cfg(feature = "redis")]
    pub(crate) fn invalidation_received(&self, kind: &'static str) {
        counter!("tower_scale.cache.invalidations", "direction" => "received", "kind" => kind)
            .increment(1);
    }
}
