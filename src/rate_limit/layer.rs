//! [`RateLimitLayer`] and its builder.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};

use ::metrics::Counter;
use http::HeaderValue;
use tower_layer::Layer;

use super::memory::MemoryStore;
use super::quota::Quota;
use super::response::RateLimited;
use super::service::{Applied, RateLimit};
use super::store::{MAX_QUOTAS, QuotaSpec};
use crate::ConfigError;
use crate::clock::Clock;
use crate::key::{KeyExtractor, PeerIp, RequestRef};
use crate::refusal::{JsonRefusal, OnRefusal};

type Matcher = Arc<dyn Fn(RequestRef<'_>) -> bool + Send + Sync>;
type CostFn = Arc<dyn Fn(RequestRef<'_>) -> u32 + Send + Sync>;

/// What to do when the store cannot answer in time (Redis down or slow).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum OnStoreError {
    /// Admit the request (availability over protection). Counted in metrics.
    FailOpen,
    /// Refuse with 503 and `Retry-After: 1` (protection over availability).
    FailClosed,
    /// Enforce each quota in this process, scaled to `share` of it (e.g. `1.0 / instances`),
    /// until the store answers again.
    Local {
        /// The fraction of each quota one instance enforces on its own (0 < share <= 1).
        share: f64,
    },
}

pub(crate) struct Rule {
    pub(crate) quota: Quota,
    pub(crate) spec: QuotaSpec,
    pub(crate) matcher: Option<Matcher>,
    pub(crate) policy: HeaderValue,
    pub(crate) allowed: OnceLock<Counter>,
    pub(crate) refused: OnceLock<Counter>,
}

impl Rule {
    pub(crate) fn counter<'a>(
        &self,
        slot: &'a OnceLock<Counter>,
        decision: &'static str,
    ) -> &'a Counter {
        slot.get_or_init(|| {
            ::metrics::counter!(
                "tower_scale.rate_limit.decisions",
                "quota" => self.quota.name().to_owned(),
                "decision" => decision
            )
        })
    }
}

pub(crate) enum Fallback {
    Open,
    Closed,
    Local {
        store: MemoryStore,
        specs: Vec<QuotaSpec>,
        /// Each quota's share, as the headers of a locally decided request describe it.
        quotas: Vec<(Quota, HeaderValue)>,
    },
}

pub(crate) struct Shared<K, S, R> {
    pub(crate) key: K,
    pub(crate) store: S,
    pub(crate) rules: Vec<Rule>,
    pub(crate) cost: Option<CostFn>,
    pub(crate) fallback: Fallback,
    pub(crate) shadow: bool,
    pub(crate) headers_on_success: bool,
    pub(crate) x_headers: bool,
    /// Store failures logged at WARN at most once per 10 s, per layer.
    pub(crate) warn: crate::error::Throttle,
    pub(crate) response: R,
    /// True if no quota has a predicate, so every quota applies to every request.
    pub(crate) unconditional: bool,
    /// True if, besides, every request costs 1: nothing about a request needs a look.
    pub(crate) simple: bool,
    pub(crate) all: Applied,
}

/// Applies [`RateLimit`] to a service. Cheap to clone; clones share quotas' state.
pub struct RateLimitLayer<K = PeerIp, S = MemoryStore, R = JsonRefusal> {
    pub(crate) shared: Arc<Shared<K, S, R>>,
}

impl<K, S, R> Clone for RateLimitLayer<K, S, R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K: fmt::Debug, S: fmt::Debug, R> fmt::Debug for RateLimitLayer<K, S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quotas: Vec<String> = self
            .shared
            .rules
            .iter()
            .map(|r| r.quota.to_string())
            .collect();
        f.debug_struct("RateLimitLayer")
            .field("key", &self.shared.key)
            .field("store", &self.shared.store)
            .field("quotas", &quotas)
            .field("shadow", &self.shared.shadow)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// Starts a builder keyed by the peer IP, with the in-process store.
    pub fn builder() -> RateLimitLayerBuilder {
        RateLimitLayerBuilder {
            key: PeerIp::new(),
            store: MemoryStore::new(),
            response: JsonRefusal,
            settings: Settings {
                rules: Vec::new(),
                cost: None,
                on_error: OnStoreError::FailOpen,
                shadow: false,
                headers_on_success: false,
                x_headers: false,
                clock: None,
                default_store: true,
            },
        }
    }
}

impl<In, K: Clone, S: Clone, R> Layer<In> for RateLimitLayer<K, S, R> {
    type Service = RateLimit<In, K, S, R>;

    fn layer(&self, inner: In) -> Self::Service {
        RateLimit {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Builds a [`RateLimitLayer`].
#[must_use]
pub struct RateLimitLayerBuilder<K = PeerIp, S = MemoryStore, R = JsonRefusal> {
    key: K,
    store: S,
    response: R,
    settings: Settings,
}

/// What the builder holds besides its three type parameters.
struct Settings {
    rules: Vec<(Quota, Option<Matcher>)>,
    cost: Option<CostFn>,
    on_error: OnStoreError,
    shadow: bool,
    headers_on_success: bool,
    x_headers: bool,
    /// The clock of the in-process stores the builder makes itself.
    clock: Option<Clock>,
    /// True while the store is the builder's own default, not one given to `store`.
    default_store: bool,
}

impl<K, S, R> fmt::Debug for RateLimitLayerBuilder<K, S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayerBuilder")
            .finish_non_exhaustive()
    }
}

impl<K, S, R> RateLimitLayerBuilder<K, S, R> {
    /// Whose request it is (default: [`PeerIp`]). Requests that cannot be keyed share one
    /// "unkeyed" bucket per quota.
    pub fn key<K2: KeyExtractor>(self, key: K2) -> RateLimitLayerBuilder<K2, S, R> {
        RateLimitLayerBuilder {
            key,
            store: self.store,
            response: self.response,
            settings: self.settings,
        }
    }

    /// Where state lives (default: [`MemoryStore`], this process only; use
    /// [`RedisStore`](super::RedisStore) to share quotas between instances).
    pub fn store<S2: Clone>(mut self, store: S2) -> RateLimitLayerBuilder<K, S2, R> {
        self.settings.default_store = false;
        RateLimitLayerBuilder {
            key: self.key,
            store,
            response: self.response,
            settings: self.settings,
        }
    }

    /// The clock of the in-process stores the layer makes itself: the default
    /// [`MemoryStore`] and the [`OnStoreError::Local`] fallback (default
    /// [`Clock::system`]; [`Clock::tokio`] for tests that pause time). A store given to
    /// [`store`](Self::store) keeps its own clock.
    pub fn clock(mut self, clock: Clock) -> Self
    where
        S: 'static,
    {
        if self.settings.default_store {
            let own: &mut dyn Any = &mut self.store;
            if let Some(store) = own.downcast_mut::<MemoryStore>() {
                *store = MemoryStore::builder()
                    .clock(clock.clone())
                    .build()
                    .expect("the default key cap is valid");
            }
        }
        self.settings.clock = Some(clock);
        self
    }

    /// How refusals are answered (default: [`JsonRefusal`], a JSON 429 or 503 with
    /// `Retry-After`).
    pub fn response<R2: OnRefusal<RateLimited>>(
        self,
        response: R2,
    ) -> RateLimitLayerBuilder<K, S, R2> {
        RateLimitLayerBuilder {
            key: self.key,
            store: self.store,
            response,
            settings: self.settings,
        }
    }

    /// A quota every request counts against.
    pub fn quota(mut self, quota: Quota) -> Self {
        self.settings.rules.push((quota, None));
        self
    }

    /// A quota only the requests `applies` selects count against (e.g. one route). All
    /// quotas that apply to a request are checked together, atomically, in one store call.
    pub fn quota_for(
        mut self,
        quota: Quota,
        applies: impl Fn(RequestRef<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.settings.rules.push((quota, Some(Arc::new(applies))));
        self
    }

    /// What a request costs (default 1 for every request). A cost of 0 is not checked.
    pub fn cost(mut self, cost: impl Fn(RequestRef<'_>) -> u32 + Send + Sync + 'static) -> Self {
        self.settings.cost = Some(Arc::new(cost));
        self
    }

    /// What to do when the store cannot answer (default [`OnStoreError::FailOpen`]).
    pub fn on_store_error(mut self, mode: OnStoreError) -> Self {
        self.settings.on_error = mode;
        self
    }

    /// Decide and report, never refuse: for trying a quota on live traffic.
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.settings.shadow = shadow;
        self
    }

    /// Also send `RateLimit`/`RateLimit-Policy` on admitted responses (default: on refusals
    /// only, which is cheaper).
    pub fn headers_on_success(mut self, on: bool) -> Self {
        self.settings.headers_on_success = on;
        self
    }

    /// Also send `X-RateLimit-Limit`, `-Remaining` and `-Reset` (the quota closest to
    /// refusing), for clients that predate the IETF fields.
    pub fn x_ratelimit_headers(mut self, on: bool) -> Self {
        self.settings.x_headers = on;
        self
    }

    /// Validates the configuration.
    ///
    /// # Errors
    ///
    /// No quota, more than eight, two with one name, or a fallback share outside (0, 1].
    pub fn build(self) -> Result<RateLimitLayer<K, S, R>, ConfigError> {
        crate::describe::once();
        if self.settings.rules.is_empty() {
            return Err(ConfigError::new(
                "quota",
                "add at least one quota with .quota(...)",
            ));
        }
        if self.settings.rules.len() > MAX_QUOTAS {
            return Err(ConfigError::new(
                "quota",
                format!("at most {MAX_QUOTAS} quotas per layer; use another layer for more"),
            ));
        }
        for (i, (q, _)) in self.settings.rules.iter().enumerate() {
            if self.settings.rules[..i]
                .iter()
                .any(|(o, _)| o.name() == q.name())
            {
                return Err(ConfigError::new(
                    "quota name",
                    format!(
                        "two quotas are named `{}`; name them apart with .named(...)",
                        q.name()
                    ),
                ));
            }
        }
        let fallback = match self.settings.on_error {
            OnStoreError::FailOpen => Fallback::Open,
            OnStoreError::FailClosed => Fallback::Closed,
            OnStoreError::Local { share } => {
                if !(share > 0.0 && share <= 1.0) {
                    return Err(ConfigError::new(
                        "share",
                        format!("{share} is not a share; use 0 < share <= 1, e.g. 1/instances"),
                    ));
                }
                let shares: Vec<Quota> = self
                    .settings
                    .rules
                    .iter()
                    .map(|(q, _)| q.share(share))
                    .collect();
                Fallback::Local {
                    store: MemoryStore::builder()
                        .clock(self.settings.clock.clone().unwrap_or_default())
                        .build()?,
                    specs: shares
                        .iter()
                        .enumerate()
                        .map(|(i, q)| QuotaSpec::new(i, q))
                        .collect(),
                    quotas: shares
                        .into_iter()
                        .map(|q| {
                            let policy = super::response::policy_item(&q);
                            (q, policy)
                        })
                        .collect(),
                }
            }
        };
        let unconditional = self.settings.rules.iter().all(|(_, m)| m.is_none());
        let simple = unconditional && self.settings.cost.is_none();
        let mut all = Applied {
            idx: [0; MAX_QUOTAS],
            n: self.settings.rules.len(),
        };
        for (i, slot) in all
            .idx
            .iter_mut()
            .enumerate()
            .take(self.settings.rules.len())
        {
            *slot = i as u8;
        }
        let rules = self
            .settings
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, (quota, matcher))| Rule {
                spec: QuotaSpec::new(i, &quota),
                policy: super::response::policy_item(&quota),
                quota,
                matcher,
                allowed: OnceLock::new(),
                refused: OnceLock::new(),
            })
            .collect();
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                key: self.key,
                store: self.store,
                rules,
                cost: self.settings.cost,
                fallback,
                shadow: self.settings.shadow,
                headers_on_success: self.settings.headers_on_success,
                x_headers: self.settings.x_headers,
                warn: crate::error::Throttle::new(),
                response: self.response,
                unconditional,
                simple,
                all,
            }),
        })
    }
}
