//! Configuration from the environment (and the same names as `--flags`), validated at start.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tower_scale::duration::parse as parse_duration;
use tower_scale::key::ClientIp;
use tower_scale::rate_limit::Quota;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where `/metrics` is served instead of the main listener, if set.
    pub metrics_listen: Option<SocketAddr>,
    pub instance_id: Option<String>,
    pub redis_url: Option<String>,
    /// What every Redis key and channel of this service starts with (`REDIS_PREFIX`): one
    /// per service (or per catalogue) sharing a Redis.
    pub redis_prefix: String,
    /// The Redis Cluster's seed nodes (`REDIS_CLUSTER_NODES`); empty without a Cluster.
    pub redis_cluster_nodes: Vec<String>,
    pub pricing_url: Option<String>,
    /// How long the pricing breaker stays open before probing.
    pub pricing_breaker_open: Duration,
    pub rate_limit: Quota,
    pub export_rate_limit: Quota,
    /// Per-client quota on `POST /login`.
    pub login_rate_limit: Quota,
    pub rate_limit_fallback_share: f64,
    /// Units each instance takes from Redis per lease (`RATE_LIMIT_LEASE`); 0: none.
    pub rate_limit_lease: u64,
    pub client_ip: ClientIp,
    pub session_cookie_secure: bool,
    pub cache_ttl: Duration,
    /// PostgreSQL primary; `None` for the embedded database.
    pub database_url: Option<String>,
    /// The embedded catalogue in an SQLite file the instances on this machine share
    /// (`DATABASE_FILE`), instead of in memory.
    pub database_file: Option<std::path::PathBuf>,
    pub database_replica_urls: Vec<String>,
    /// Export workers in this instance (0: it only accepts exports).
    pub export_workers: usize,
    /// A pause between the pages an export reads, to spare the database.
    pub export_page_delay: Duration,
    /// How long a connection may take to send a request's headers, counted from when the
    /// server starts waiting for them (so it bounds idle keep-alive connections too).
    pub header_read_timeout: Duration,
    /// Open connections past which new ones are closed at once.
    pub max_connections: usize,
    /// On SIGTERM, how long `/readyz` answers 503 while requests are still served, before
    /// the server stops accepting (`DRAIN`).
    pub drain: Duration,
}

/// A configuration error: which variable, and what is wrong with its value.
#[derive(Debug)]
pub struct BadVar {
    pub var: &'static str,
    pub message: String,
}

impl fmt::Display for BadVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.message)
    }
}

fn bad(var: &'static str, message: impl Into<String>) -> BadVar {
    BadVar {
        var,
        message: message.into(),
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(format!("`{other}` is not 0 or 1")),
    }
}

fn parse_url(s: &str, schemes: &[&str]) -> Result<String, String> {
    let s = s.trim();
    if schemes
        .iter()
        .any(|sch| s.starts_with(&format!("{sch}://")))
        && s.len() > 8
    {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` is not a URL starting with {}://",
            schemes.join(":// or ")
        ))
    }
}

/// The pricing base URL: `http://host[:port][/path]`, no query or fragment (the price path
/// is appended to it).
fn parse_pricing_url(s: &str) -> Result<String, String> {
    let s = parse_url(s, &["http"])?;
    let uri: http::Uri = s
        .parse()
        .map_err(|e| format!("`{s}` is not a valid URL: {e}"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{s}` has no host"));
    }
    // `Uri::port` quietly answers `None` for a port it cannot read: check the text.
    let authority = uri.authority().map_or("", |a| a.as_str());
    if let Some((_, port)) = authority.rsplit_once(':')
        && !port.ends_with(']')
        && port.parse::<u16>().is_err()
    {
        return Err(format!(
            "`{s}` has a port that is not a number in 0..=65535"
        ));
    }
    if uri.query().is_some() || s.contains('#') {
        return Err(format!(
            "`{s}` must not have a query or fragment; /price/{{id}} is appended to it"
        ));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

impl Config {
    /// Reads the configuration from `lookup` (the environment, with `--flag value` and
    /// `--flag=value` arguments taking precedence under the same names, lower-cased with
    /// dashes: `--rate-limit 10/1m`).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, BadVar> {
        let get = |var: &'static str| lookup(var).filter(|v| !v.trim().is_empty());

        let metrics_listen = match get("METRICS_LISTEN") {
            None => None,
            Some(v) => Some(v.trim().parse().map_err(|_| {
                bad(
                    "METRICS_LISTEN",
                    format!("`{v}` is not an address; write e.g. 127.0.0.1:9090"),
                )
            })?),
        };
        let listen = match get("LISTEN") {
            None => "127.0.0.1:8080".parse().unwrap(),
            Some(v) => v.trim().parse().map_err(|_| {
                bad(
                    "LISTEN",
                    format!("`{v}` is not an address; write e.g. 127.0.0.1:8080"),
                )
            })?,
        };
        let instance_id = match get("INSTANCE_ID") {
            Some(v) if v.len() > 128 || !v.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(bad(
                    "INSTANCE_ID",
                    "must be 1..128 visible ASCII characters (it goes in a header)",
                ));
            }
            other => other,
        };
        let redis_url = get("REDIS_URL")
            .map(|v| parse_url(&v, &["redis", "rediss", "redis+unix"]))
            .transpose()
            .map_err(|m| bad("REDIS_URL", m))?;
        let redis_prefix = get("REDIS_PREFIX").map_or_else(
            || Ok("reference-server".to_owned()),
            |v| {
                let v = v.trim().to_owned();
                if v.len() <= 64
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
                {
                    Ok(v)
                } else {
                    Err(bad(
                        "REDIS_PREFIX",
                        "1 to 64 ASCII letters, digits, `-`, `_`, `.` and `:`",
                    ))
                }
            },
        )?;
        let redis_cluster_nodes: Vec<String> = match get("REDIS_CLUSTER_NODES") {
            None => Vec::new(),
            Some(v) => v
                .split(',')
                .map(|n| parse_url(n, &["redis", "rediss"]))
                .collect::<Result<_, _>>()
                .map_err(|m| bad("REDIS_CLUSTER_NODES", m))?,
        };
        if redis_url.is_some() && !redis_cluster_nodes.is_empty() {
            return Err(bad(
                "REDIS_CLUSTER_NODES",
                "set either REDIS_URL (one Redis) or REDIS_CLUSTER_NODES (a Cluster), not both",
            ));
        }
        let database_url = get("DATABASE_URL")
            .map(|v| parse_url(&v, &["postgres", "postgresql"]))
            .transpose()
            .map_err(|m| bad("DATABASE_URL", m))?;
        let replicas: Vec<String> = match get("DATABASE_REPLICA_URLS") {
            None => Vec::new(),
            Some(v) => v
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|p| parse_url(p, &["postgres", "postgresql"]))
                .collect::<Result<_, _>>()
                .map_err(|m| bad("DATABASE_REPLICA_URLS", m))?,
        };
        if !replicas.is_empty() && database_url.is_none() {
            return Err(bad(
                "DATABASE_REPLICA_URLS",
                "replicas need a primary: set DATABASE_URL too",
            ));
        }
        let database_file = match get("DATABASE_FILE") {
            None => None,
            Some(v) if v.trim().is_empty() => {
                return Err(bad(
                    "DATABASE_FILE",
                    "give a path, e.g. /var/tmp/catalog.sqlite",
                ));
            }
            Some(_) if database_url.is_some() => {
                return Err(bad(
                    "DATABASE_FILE",
                    "set either DATABASE_URL (PostgreSQL) or DATABASE_FILE (SQLite), not both",
                ));
            }
            Some(v) => Some(std::path::PathBuf::from(v.trim())),
        };
        let shared_redis = redis_url.is_some() || !redis_cluster_nodes.is_empty();
        if shared_redis && database_url.is_none() && database_file.is_none() {
            // The cache would be shared and the catalogue not: an instance would refill the
            // shared cache from its own copy and undo another instance's writes.
            return Err(bad(
                if redis_url.is_some() {
                    "REDIS_URL"
                } else {
                    "REDIS_CLUSTER_NODES"
                },
                "shared Redis needs a shared catalogue, or each instance would serve its own \
                 in-memory copy through the shared cache: set DATABASE_URL (PostgreSQL) or \
                 DATABASE_FILE (an SQLite file the instances on this machine share)",
            ));
        }
        let pricing_url = get("PRICING_URL")
            .map(|v| parse_pricing_url(&v))
            .transpose()
            .map_err(|m| bad("PRICING_URL", m))?;
        let pricing_breaker_open =
            parse_duration(&get("PRICING_BREAKER_OPEN").unwrap_or_else(|| "5s".into()))
                .ok()
                .filter(|d| !d.is_zero() && *d <= Duration::from_secs(3600))
                .ok_or_else(|| {
                    bad(
                        "PRICING_BREAKER_OPEN",
                        "use a duration from 1ms to 1h, e.g. 5s",
                    )
                })?;
        let quota = |var: &'static str, default: &str, name: &str| {
            get(var)
                .unwrap_or_else(|| default.into())
                .parse::<Quota>()
                .and_then(|q| q.named(name))
                .map_err(|e| bad(var, e.to_string()))
        };
        let rate_limit = quota("RATE_LIMIT", "100/15m", "api")?;
        let export_rate_limit = quota("EXPORT_RATE_LIMIT", "10/1h", "export")?;
        let login_rate_limit = quota("LOGIN_RATE_LIMIT", "20/15m", "login")?;
        let rate_limit_fallback_share = match get("RATE_LIMIT_FALLBACK_SHARE") {
            None => 1.0,
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0 && *s <= 1.0)
                .ok_or_else(|| {
                    bad(
                        "RATE_LIMIT_FALLBACK_SHARE",
                        format!(
                            "`{v}` is not a share; use 0 < share <= 1, e.g. 0.25 for four instances"
                        ),
                    )
                })?,
        };
        let rate_limit_lease = match get("RATE_LIMIT_LEASE") {
            None => 0,
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= 10_000)
                .ok_or_else(|| {
                    bad(
                        "RATE_LIMIT_LEASE",
                        format!("`{v}` is not a number of units 0..=10000 (0: no leases)"),
                    )
                })?,
        };
        let client_ip = ClientIp::builder()
            .trust_cidrs(&get("TRUSTED_PROXIES").unwrap_or_default())
            .build()
            .map_err(|e| bad("TRUSTED_PROXIES", e.to_string()))?;
        let session_cookie_secure = get("SESSION_COOKIE_SECURE")
            .map(|v| parse_bool(&v))
            .transpose()
            .map_err(|m| bad("SESSION_COOKIE_SECURE", m))?
            .unwrap_or(true);
        let cache_ttl = parse_duration(&get("CACHE_TTL").unwrap_or_else(|| "60s".into()))
            .map_err(|e| bad("CACHE_TTL", e.to_string()))?;
        // Stale-if-error keeps five TTLs, and the cache keeps nothing past a year.
        if cache_ttl > Duration::from_secs(73 * 24 * 3600) {
            return Err(bad(
                "CACHE_TTL",
                "at most 73 days (stale-if-error keeps a product for five TTLs, at most a year)",
            ));
        }

        let export_workers = match get("EXPORT_WORKERS") {
            None => 2,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= 64)
                .ok_or_else(|| {
                    bad(
                        "EXPORT_WORKERS",
                        format!("`{v}` is not a worker count; use 0 to 64 (0: this instance only accepts exports)"),
                    )
                })?,
        };
        let export_page_delay = match get("EXPORT_PAGE_DELAY") {
            None => Duration::ZERO,
            Some(v) if matches!(v.trim(), "0" | "0s" | "0ms") => Duration::ZERO,
            Some(v) => parse_duration(&v)
                .ok()
                .filter(|d| *d <= Duration::from_secs(60))
                .ok_or_else(|| {
                    bad(
                        "EXPORT_PAGE_DELAY",
                        "use a duration from 0s to 60s, e.g. 10ms",
                    )
                })?,
        };

        let header_read_timeout =
            parse_duration(&get("HEADER_READ_TIMEOUT").unwrap_or_else(|| "10s".into()))
                .ok()
                .filter(|d| *d >= Duration::from_millis(100) && *d <= Duration::from_secs(600))
                .ok_or_else(|| {
                    bad(
                        "HEADER_READ_TIMEOUT",
                        "use a duration from 100ms to 10m, e.g. 10s",
                    )
                })?;
        let drain = get("DRAIN").unwrap_or_else(|| "2s".into());
        let drain = match drain.trim() {
            "0" | "0s" | "0ms" => Ok(Duration::ZERO),
            v => parse_duration(v),
        }
        .ok()
        .filter(|d| *d <= Duration::from_secs(300))
        .ok_or_else(|| {
            bad(
                "DRAIN",
                "use a duration up to 5m, e.g. 2s (0s stops accepting at once)",
            )
        })?;
        let max_connections = match get("MAX_CONNECTIONS") {
            None => 4096,
            Some(v) => v.trim().parse::<usize>().ok().filter(|n| (1..=1_000_000).contains(n)).ok_or_else(|| {
                bad(
                    "MAX_CONNECTIONS",
                    format!("`{v}` is not a connection count; use 1 to 1000000, below the process's descriptor limit"),
                )
            })?,
        };

        Ok(Self {
            listen,
            metrics_listen,
            instance_id,
            redis_url,
            redis_prefix,
            redis_cluster_nodes,
            pricing_url,
            pricing_breaker_open,
            rate_limit,
            export_rate_limit,
            login_rate_limit,
            rate_limit_fallback_share,
            rate_limit_lease,
            client_ip,
            session_cookie_secure,
            cache_ttl,
            database_url,
            database_file,
            database_replica_urls: replicas,
            export_workers,
            export_page_delay,
            header_read_timeout,
            drain,
            max_connections,
        })
    }

    /// The environment, overridden by `--var value` / `--var=value` arguments.
    pub fn from_env_and_args() -> Result<Self, BadVar> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut flags = std::collections::HashMap::new();
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            let Some(name) = a.strip_prefix("--") else {
                return Err(bad(
                    "arguments",
                    format!("unexpected argument `{a}`; flags look like --listen 127.0.0.1:8080"),
                ));
            };
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n.to_owned(), v.to_owned()),
                None => {
                    i += 1;
                    let v = args
                        .get(i)
                        .ok_or_else(|| bad("arguments", format!("--{name} needs a value")))?;
                    (name.to_owned(), v.clone())
                }
            };
            flags.insert(name.to_ascii_uppercase().replace('-', "_"), value);
            i += 1;
        }
        Self::from_lookup(|var| flags.get(var).cloned().or_else(|| std::env::var(var).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_are_named_for_their_headers() {
        let c = Config::from_lookup(|v| (v == "RATE_LIMIT").then(|| "5/1m".to_owned())).unwrap();
        assert_eq!((c.rate_limit.name(), c.rate_limit.limit()), ("api", 5));
        assert_eq!(
            (c.export_rate_limit.name(), c.export_rate_limit.limit()),
            ("export", 10)
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases = [
            ("LISTEN", "nope"),
            ("RATE_LIMIT", "lots"),
            ("RATE_LIMIT", "0/1m"),
            ("RATE_LIMIT_FALLBACK_SHARE", "0"),
            ("RATE_LIMIT_LEASE", "-1"),
            ("RATE_LIMIT_LEASE", "10001"),
            ("RATE_LIMIT_LEASE", "some"),
            ("RATE_LIMIT_FALLBACK_SHARE", "1.5"),
            ("RATE_LIMIT_FALLBACK_SHARE", "half"),
            ("EXPORT_RATE_LIMIT", "1/forever"),
            ("LOGIN_RATE_LIMIT", "0/1m"),
            ("TRUSTED_PROXIES", "10.0.0.0/99"),
            ("SESSION_COOKIE_SECURE", "maybe"),
            ("CACHE_TTL", "soon"),
            ("CACHE_TTL", "74d"),
            ("PRICING_BREAKER_OPEN", "0s"),
            ("PRICING_BREAKER_OPEN", "soon"),
            ("REDIS_URL", "localhost:6379"),
            ("PRICING_URL", "ftp://x"),
            ("PRICING_URL", "http://host:99999"),
            ("PRICING_URL", "http://host/base?x=1"),
            ("PRICING_URL", "http:// spaced"),
            ("INSTANCE_ID", "has space"),
            ("DATABASE_URL", "mysql://x"),
            ("DATABASE_REPLICA_URLS", "postgres://r"),
            ("EXPORT_WORKERS", "-1"),
            ("EXPORT_WORKERS", "1000"),
            ("EXPORT_WORKERS", "some"),
            ("EXPORT_PAGE_DELAY", "2m"),
            ("EXPORT_PAGE_DELAY", "slow"),
            ("HEADER_READ_TIMEOUT", "0s"),
            ("HEADER_READ_TIMEOUT", "1h"),
            ("MAX_CONNECTIONS", "0"),
            ("MAX_CONNECTIONS", "many"),
            ("METRICS_LISTEN", "localhost"),
            ("DRAIN", "10m"),
            ("REDIS_PREFIX", "has space"),
            ("REDIS_PREFIX", "a{b}"),
            ("DRAIN", "a while"),
            ("REDIS_CLUSTER_NODES", "localhost:7000"),
            ("REDIS_CLUSTER_NODES", "redis://a:7000,,redis://b:7000"),
        ];
        for (var, value) in cases {
            let err = Config::from_lookup(|v| (v == var).then(|| value.to_owned())).unwrap_err();
            assert_eq!(err.var, var);
        }
        assert!(Config::from_lookup(|_| None).is_ok());
        // One Redis or a Cluster, not both.
        let both = Config::from_lookup(|v| match v {
            "REDIS_URL" => Some("redis://127.0.0.1:6379".into()),
            "REDIS_CLUSTER_NODES" => Some("redis://127.0.0.1:7000".into()),
            "DATABASE_FILE" => Some("/tmp/c.sqlite".into()),
            _ => None,
        })
        .unwrap_err();
        assert_eq!(both.var, "REDIS_CLUSTER_NODES");
        let nodes = Config::from_lookup(|v| match v {
            "REDIS_CLUSTER_NODES" => Some("redis://a:7000, redis://b:7000".into()),
            "DATABASE_FILE" => Some("/tmp/c.sqlite".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            nodes.redis_cluster_nodes,
            ["redis://a:7000", "redis://b:7000"]
        );
        // Shared Redis with a per-process catalogue is refused, naming what to set.
        for var in ["REDIS_URL", "REDIS_CLUSTER_NODES"] {
            let err = Config::from_lookup(|v| (v == var).then(|| "redis://127.0.0.1:7000".into()))
                .unwrap_err();
            assert_eq!(err.var, var);
            assert!(err.to_string().contains("DATABASE_FILE"), "{err}");
        }
        let both_dbs = Config::from_lookup(|v| match v {
            "DATABASE_URL" => Some("postgres://x/y".into()),
            "DATABASE_FILE" => Some("/tmp/c.sqlite".into()),
            _ => None,
        })
        .unwrap_err();
        assert_eq!(both_dbs.var, "DATABASE_FILE");
    }
}
