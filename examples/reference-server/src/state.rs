//! What the routes share, and the layers built from the configuration.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::postgres::PgPoolOptions;
use tower_scale::cache::{CacheEngine, ResponseCacheLayer};
use tower_scale::db_route::{DbRouteLayer, DbRouter};
use tower_scale::jobs::{MemoryJobStore, Queue, RedisJobStore, WorkerHandle};
use tower_scale::key::ClientIp;
use tower_scale::rate_limit::store::{QuotaSpec, Store, StoreFuture};
use tower_scale::rate_limit::{
    AnyStore, LeasingStore, MemoryStore, OnStoreError, RateLimitLayer, RedisStore,
};
use tower_scale::redis::RedisBackend;
use tower_scale::session::{MemoryStore as SessionMemoryStore, RedisSessionStore, SessionLayer};

use crate::catalog::Database;
use crate::config::Config;
use crate::error::Failure;
use crate::routes::exports::{self, ExportJob};
use crate::routes::price::Pricing;
use crate::telemetry;

/// Everything [`app`](crate::app) needs: the handlers' shared state and the layers.
#[derive(Clone)]
pub struct AppState {
    pub(crate) shared: Arc<Shared>,
    pub(crate) layers: Layers,
}

/// What the handlers share.
pub(crate) struct Shared {
    pub(crate) db: DbRouter<Database>,
    pub(crate) redis: Option<RedisBackend>,
    pub(crate) pricing: Option<Pricing>,
    pub(crate) prometheus: PrometheusHandle,
    /// `/metrics` on the main listener (no `METRICS_LISTEN`).
    pub(crate) metrics_public: bool,
    pub(crate) instance: HeaderValue,
    pub(crate) client_ip: ClientIp,
    pub(crate) exports: Queue<ExportJob>,
    /// Set on SIGTERM: `/readyz` answers 503 so load balancers stop sending new requests
    /// while the instance still serves them.
    pub(crate) draining: std::sync::atomic::AtomicBool,
    export_workers: usize,
    export_page_delay: Duration,
}

/// The rate limiter's store: Redis (or this process), and with `RATE_LIMIT_LEASE` the
/// Redis store behind leases, so most decisions need no round trip.
#[derive(Debug, Clone)]
pub(crate) enum LimitStore {
    Direct(AnyStore),
    Leased(LeasingStore<AnyStore>),
}

impl<K> Store<K> for LimitStore
where
    K: std::hash::Hash + std::fmt::Display + Clone + Send + Sync + 'static,
{
    fn check(&self, key: &K, quotas: &[&QuotaSpec], cost: u64) -> StoreFuture {
        match self {
            LimitStore::Direct(s) => s.check(key, quotas, cost),
            LimitStore::Leased(s) => s.check(key, quotas, cost),
        }
    }

    #[inline]
    fn try_admit(&self, key: &K, quota: &QuotaSpec, cost: u64) -> bool {
        match self {
            LimitStore::Direct(s) => s.try_admit(key, quota, cost),
            LimitStore::Leased(_) => false,
        }
    }
}

/// The tower-scale layers, as configured.
#[derive(Clone)]
pub(crate) struct Layers {
    pub(crate) rate_limit: RateLimitLayer<ClientIp, LimitStore>,
    pub(crate) sessions: SessionLayer,
    pub(crate) cache: ResponseCacheLayer,
    pub(crate) db_route: DbRouteLayer<Database>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("instance", &self.shared.instance)
            .field(
                "redis",
                &self.shared.redis.as_ref().map(RedisBackend::address),
            )
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Connects what `config` names (lazily, so the server starts while a dependency is
    /// down), prepares the database, and builds the layers. `instance` is the name in
    /// `x-served-by`.
    ///
    /// # Errors
    ///
    /// [`Failure::Config`] naming the setting that is wrong, or [`Failure::Run`] when the
    /// database cannot be prepared.
    pub async fn build(config: &Config, instance: &str) -> Result<Self, Failure> {
        let prometheus = telemetry::prometheus()?;
        let db = database(config).await?;
        // A slow Redis must not stall requests: past 50 ms, rate limits fall back to each
        // instance's own share and readiness reports Redis.
        let redis = redis_backend(config, Duration::from_millis(50))?;
        let pricing = match &config.pricing_url {
            None => None,
            Some(base) => Some(Pricing::new(base.clone(), config.pricing_breaker_open)?),
        };
        // Instances sharing Redis share the cache, and each drops its own copy of an entry
        // only when the invalidation message reaches it: a writer carries a token even
        // without replicas, so its next reads skip the cache wherever they land.
        let db_route = DbRouteLayer::builder(db.clone())
            .secure(config.session_cookie_secure)
            .route_header(true)
            .tokens_without_replicas(redis.is_some())
            .build()
            .map_err(|e| Failure::Config(format!("database routing: {e}")))?;
        let layers = Layers {
            rate_limit: rate_limit(config, redis.as_ref())?,
            sessions: sessions(config, redis.as_ref())?,
            cache: response_cache(config, redis.as_ref(), &db_route)?,
            db_route,
        };
        let exports = export_queue(config)?;
        let shared = Shared {
            db,
            redis,
            exports,
            draining: std::sync::atomic::AtomicBool::new(false),
            export_workers: config.export_workers,
            export_page_delay: config.export_page_delay,
            pricing,
            prometheus,
            metrics_public: config.metrics_listen.is_none(),
            instance: HeaderValue::from_str(instance)
                .map_err(|_| Failure::Config("INSTANCE_ID: not a valid header value".into()))?,
            client_ip: config.client_ip.clone(),
        };
        Ok(Self {
            shared: Arc::new(shared),
            layers,
        })
    }
}

impl AppState {
    /// Starts this instance's export workers (`EXPORT_WORKERS`; none for 0). Stop them
    /// with [`WorkerHandle::shutdown`], which hands unfinished exports back to the queue.
    pub fn spawn_export_workers(&self) -> Option<WorkerHandle> {
        let s = &self.shared;
        exports::spawn_workers(
            &s.exports,
            s.db.clone(),
            s.export_workers,
            s.export_page_delay,
        )
    }
}

/// The shared Redis, if configured: one (`REDIS_URL`) or a Cluster
/// (`REDIS_CLUSTER_NODES`), with this call timeout.
fn redis_backend(config: &Config, timeout: Duration) -> Result<Option<RedisBackend>, Failure> {
    let (builder, var) = match (&config.redis_url, &config.redis_cluster_nodes[..]) {
        (Some(url), _) => (RedisBackend::builder(url.clone()), "REDIS_URL"),
        (None, []) => return Ok(None),
        (None, nodes) => (RedisBackend::cluster(nodes), "REDIS_CLUSTER_NODES"),
    };
    builder
        .prefix(config.redis_prefix.clone())
        .timeout(timeout)
        .build()
        .map(Some)
        .map_err(|e| Failure::Config(format!("{var}: {e}")))
}

/// The export queue: in Redis with `REDIS_URL` or `REDIS_CLUSTER_NODES` (any instance's workers run any export),
/// else in process. Its own connection, with a timeout that suits a queue rather than
/// the request path's 50 ms.
fn export_queue(config: &Config) -> Result<Queue<ExportJob>, Failure> {
    let builder = Queue::builder(exports::QUEUE)
        .retention(exports::RETENTION)
        .lease(Duration::from_secs(10))
        .max_attempts(3);
    let builder = match redis_backend(config, Duration::from_millis(500))? {
        None => builder.store(MemoryJobStore::new()),
        Some(backend) => builder.store(RedisJobStore::new(backend)),
    };
    builder
        .build()
        .map_err(|e| Failure::Config(format!("exports: {e}")))
}

/// The embedded database, or PostgreSQL: pools to the primary and each replica (connected
/// lazily, so the server starts while a replica is down), the schema and seed on the
/// primary, and health checks every second.
async fn database(config: &Config) -> Result<DbRouter<Database>, Failure> {
    let Some(url) = &config.database_url else {
        let embedded = match &config.database_file {
            None => Database::embedded(),
            Some(path) => Database::embedded_file(path),
        }
        .map_err(|e| Failure::Run(format!("cannot create the embedded database: {e}").into()))?;
        return DbRouter::builder(embedded)
            .build()
            .map_err(|e| Failure::Config(format!("database: {e}")));
    };
    let pool = |url: &str, var: &str| {
        PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(url)
            .map_err(|e| Failure::Config(format!("{var}: {e}")))
    };
    let primary = pool(url, "DATABASE_URL")?;
    Database::prepare(&primary).await.map_err(|e| {
        Failure::Run(format!("cannot prepare the PostgreSQL catalogue: {e}").into())
    })?;
    let mut router = DbRouter::builder(Database::postgres(primary));
    for (i, replica) in config.database_replica_urls.iter().enumerate() {
        router = router.replica(
            format!("replica-{}", i + 1),
            Database::postgres(pool(replica, "DATABASE_REPLICA_URLS")?),
        );
    }
    let router = router
        .build()
        .map_err(|e| Failure::Config(format!("DATABASE_REPLICA_URLS: {e}")))?;
    router.spawn_health_checks(Duration::from_secs(1));
    Ok(router)
}

/// `RATE_LIMIT` per client on `/products*` and `/exports`, plus `EXPORT_RATE_LIMIT` on
/// `POST /exports` (both checked in one store call). Shared through Redis when configured;
/// while Redis is down each instance enforces `RATE_LIMIT_FALLBACK_SHARE` of the quotas on
/// its own. `/metrics`, `/healthz` and `/readyz` are never limited.
fn rate_limit(
    config: &Config,
    redis: Option<&RedisBackend>,
) -> Result<RateLimitLayer<ClientIp, LimitStore>, Failure> {
    let store = match redis {
        Some(r) if config.rate_limit_lease > 0 => LimitStore::Leased(
            LeasingStore::builder(AnyStore::from(RedisStore::new(r.clone())))
                .batch(config.rate_limit_lease)
                .build()
                .map_err(|e| Failure::Config(format!("RATE_LIMIT_LEASE: {e}")))?,
        ),
        Some(r) => LimitStore::Direct(RedisStore::new(r.clone()).into()),
        None => LimitStore::Direct(MemoryStore::new().into()),
    };
    RateLimitLayer::builder()
        .key(config.client_ip.clone())
        .store(store)
        .quota_for(config.rate_limit.clone(), |r| {
            let p = r.uri.path();
            p == "/products" || p.starts_with("/products/") || p == "/exports"
        })
        .quota_for(config.export_rate_limit.clone(), |r| {
            r.method == http::Method::POST && r.uri.path() == "/exports"
        })
        // Every login stores a session: one client must not be able to grow the store
        // without bound.
        .quota_for(config.login_rate_limit.clone(), |r| {
            r.method == http::Method::POST && r.uri.path() == "/login"
        })
        .on_store_error(OnStoreError::Local {
            share: config.rate_limit_fallback_share,
        })
        .headers_on_success(true)
        .build()
        .map_err(|e| Failure::Config(format!("RATE_LIMIT: {e}")))
}

fn sessions(config: &Config, redis: Option<&RedisBackend>) -> Result<SessionLayer, Failure> {
    let builder = match redis {
        Some(r) => SessionLayer::builder(RedisSessionStore::new(r.clone())),
        None => SessionLayer::builder(SessionMemoryStore::new()),
    };
    builder
        .secure(config.session_cookie_secure)
        // `__Host-id` whenever the cookie is Secure: no sibling subdomain can plant one.
        .host_prefix(config.session_cookie_secure)
        .build()
        .map_err(|e| Failure::Config(format!("sessions: {e}")))
}

/// How long after a write its cache tags are invalidated again, with replicas: past a
/// healthy replica's replay lag, and at a second, past which a lagging replica soon leaves
/// the rotation.
const REINVALIDATE_AFTER: [Duration; 2] = [Duration::from_millis(100), Duration::from_secs(1)];

/// The product routes' response cache: L1 in process, L2 and invalidation through Redis
/// when `REDIS_URL` is set. A `PUT /products/{id}` invalidates its own path (the layer
/// does that for every unsafe request) and the list, on every instance. A client who just
/// wrote reads past it, refreshing the entry; another client may have filled it from a
/// replica that had not replayed the write, which the later invalidations drop. Without
/// replicas but with Redis the writer carries the token too: another instance drops its
/// own copy only when the invalidation message reaches it.
fn response_cache(
    config: &Config,
    redis: Option<&RedisBackend>,
    db_route: &DbRouteLayer<Database>,
) -> Result<ResponseCacheLayer, Failure> {
    let mut engine = CacheEngine::builder()
        .ttl(config.cache_ttl)
        .stale_if_error(config.cache_ttl.saturating_mul(5));
    if let Some(r) = redis {
        engine = engine.redis(r.clone());
    }
    let engine = engine
        .build()
        .map_err(|e| Failure::Config(format!("CACHE_TTL: {e}")))?;
    let routing = db_route.clone();
    let layer = ResponseCacheLayer::builder(&engine)
        .invalidates(|req| {
            if req.uri.path().starts_with("/products/") {
                vec![ResponseCacheLayer::path_tag("/products")]
            } else {
                Vec::new()
            }
        })
        .refresh_if(move |req| routing.current_token(req.headers).is_some());
    // With replicas, a reader may refill the cache from one that has not replayed a write
    // yet: the write's tags go again a second later.
    let layer = if config.database_replica_urls.is_empty() {
        layer
    } else {
        REINVALIDATE_AFTER
            .into_iter()
            .fold(layer, |layer, after| layer.reinvalidate_after(after))
    };
    layer
        .build()
        .map_err(|e| Failure::Config(format!("cache: {e}")))
}
