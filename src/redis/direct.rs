//! The Cluster connection's direct path for scripts.
//!
//! redis-rs's Cluster connection routes every call through a task of its own: the command
//! is copied into a message, sent over a channel, wrapped in a boxed request, routed, and
//! handed to the node's multiplexed connection, whose own task writes it; the reply comes
//! back the same way. Skipping it saved 2.3–4.4 µs of the rate-limit bench's CPU a decision
//! (`docs/benchmarks.md`, "Scripts straight to their master").
//!
//! Most hot calls the layers make (rate-limit decisions, session loads and saves, cache
//! writes, job fetches) are an `EVALSHA` whose keys share one hash tag, so its node follows
//! from its first key. [`ClusterConn`] keeps, beside redis-rs's connection, a slot map of
//! its own (from `CLUSTER SLOTS`) and a multiplexed connection to each master, and sends
//! such a script straight to the master of its slot. redis-rs's connection stays the
//! authority: any answer that says the map may be stale (`MOVED`, a dropped or refused
//! connection, a node loading or down) sends the call through it, which follows
//! redirections and failovers as before, and the map is dropped and learnt again in the
//! background. A call that hangs is ended by the caller's timeout, on this path as on
//! redis-rs's. A key in a slot being migrated (`ASK`, `TRYAGAIN`) and `NOSCRIPT` (so that a
//! script is loaded where redis-rs routes) also send the call through it, and the map
//! stands. Everything else (plain commands, pipelines, transactions, a slot whose master is
//! not known) goes through redis-rs's connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, MultiplexedConnection};
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use ::redis::{AsyncConnectionConfig, Cmd, ConnectionInfo, RedisResult, RetryMethod, Value};
use arc_swap::ArcSwapOption;

/// Redis Cluster's slot count.
const SLOTS: usize = 16_384;
/// A slot whose master has no direct connection.
const NONE: u16 = u16::MAX;
/// After a call found the map stale, it is learnt again at most this often.
const REFRESH_STALE: Duration = Duration::from_millis(250);
/// While the map has no direct connection for a slot (a master unreachable or with no
/// endpoint in `CLUSTER SLOTS`), it is learnt again at most this often: each time opens
/// a connection to every master.
const REFRESH_GAPS: Duration = Duration::from_secs(5);

/// A Cluster connection: redis-rs's, and a direct route to each master for scripts. Cheap
/// to clone; clones share both.
#[derive(Clone)]
pub(super) struct ClusterConn {
    pub(super) client: ClusterConnection,
    direct: Arc<Direct>,
}

/// The slot map and the masters' connections, shared by every clone.
struct Direct {
    map: ArcSwapOption<SlotMap>,
    refreshing: AtomicBool,
    /// When the last refresh started, in milliseconds since `epoch` (0: never).
    last_refresh: AtomicU64,
    epoch: std::time::Instant,
    /// Credentials and TLS for the masters, from the first node given.
    seed: ConnectionInfo,
    config: AsyncConnectionConfig,
    /// Bounds one refresh: `CLUSTER SLOTS` and the connections to the masters.
    limit: Duration,
    /// Calls answered on the direct path, and slot maps learnt (for tests).
    #[cfg(test)]
    counts: [std::sync::atomic::AtomicUsize; 2],
}

/// Each slot's master, as learnt from `CLUSTER SLOTS`.
struct SlotMap {
    /// The index in `masters` of each slot's master, or [`NONE`].
    owner: Box<[u16]>,
    masters: Vec<MultiplexedConnection>,
}

impl ClusterConn {
    pub(super) fn new(
        client: ClusterConnection,
        seed: ConnectionInfo,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(response_timeout));
        Self {
            client,
            direct: Arc::new(Direct {
                map: ArcSwapOption::empty(),
                refreshing: AtomicBool::new(false),
                last_refresh: AtomicU64::new(0),
                epoch: std::time::Instant::now(),
                seed,
                config,
                limit: connect_timeout + response_timeout,
                #[cfg(test)]
                counts: Default::default(),
            }),
        }
    }

    /// Sends `cmd`: a script with keys straight to its slot's master when that is known,
    /// anything else (and anything the direct path cannot answer) through redis-rs.
    pub(super) async fn request(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        if let Some(slot) = script_slot(cmd) {
            match self.direct.node(slot) {
                Some(mut node) => {
                    let reply = node.req_packed_command(cmd).await;
                    match Verdict::of(&reply) {
                        Verdict::Answered => {
                            #[cfg(test)]
                            self.direct.counts[0].fetch_add(1, Ordering::Relaxed);
                            return reply;
                        }
                        // The map stands; redis-rs's connection takes this call.
                        Verdict::Through => {}
                        Verdict::Stale => {
                            tracing::debug!(
                                ?reply,
                                slot,
                                "direct Cluster call not answered; the slot map is learnt again"
                            );
                            self.direct.map.store(None);
                            Direct::refresh(&self.direct, &self.client, REFRESH_STALE);
                        }
                    }
                }
                None => {
                    let every = if self.direct.map.load().is_some() {
                        REFRESH_GAPS
                    } else {
                        REFRESH_STALE
                    };
                    Direct::refresh(&self.direct, &self.client, every);
                }
            }
        }
        self.client.req_packed_command(cmd).await
    }

    /// Whether a slot map is in use.
    #[cfg(test)]
    pub(super) fn has_map(&self) -> bool {
        self.direct.map.load().is_some()
    }

    /// Calls answered on the direct path, and slot maps learnt, so far.
    #[cfg(test)]
    pub(super) fn counts(&self) -> (usize, usize) {
        let [answered, learnt] = &self.direct.counts;
        (
            answered.load(Ordering::Relaxed),
            learnt.load(Ordering::Relaxed),
        )
    }
}

/// What a reply on the direct path says.
enum Verdict {
    /// The node answered: the reply (a value, or an error of the command itself such as a
    /// script's error or `CROSSSLOT`) is the caller's.
    Answered,
    /// The map stands, but this call is for redis-rs's connection: `NOSCRIPT` (redis-rs
    /// decides where a script is loaded), or a key in a slot being migrated (`ASK`,
    /// `TRYAGAIN`), which redis-rs follows.
    Through,
    /// The map may be stale or the node unreachable: `MOVED`, a node that is down,
    /// loading or now a replica, or a failed connection.
    Stale,
}

impl Verdict {
    fn of(reply: &RedisResult<Value>) -> Self {
        use ::redis::ServerErrorKind as K;
        // A multiplexed connection hands a server's error back as a value; a failed
        // connection or a timeout is an error.
        let kind = match reply {
            Ok(Value::ServerError(e)) => e.kind(),
            Ok(_) => return Self::Answered,
            Err(e) => match e.kind() {
                ::redis::ErrorKind::Server(k) => Some(k),
                _ if matches!(e.retry_method(), RetryMethod::NoRetry) => return Self::Answered,
                _ => return Self::Stale,
            },
        };
        match kind {
            Some(K::NoScript | K::Ask | K::TryAgain) => Self::Through,
            Some(K::Moved | K::ClusterDown | K::MasterDown | K::BusyLoading | K::ReadOnly) => {
                Self::Stale
            }
            _ => Self::Answered,
        }
    }
}

impl Direct {
    /// The connection to `slot`'s master, if the map knows it.
    fn node(&self, slot: u16) -> Option<MultiplexedConnection> {
        let map = self.map.load();
        let map = map.as_ref()?;
        map.masters
            .get(usize::from(map.owner[usize::from(slot)]))
            .cloned()
    }

    /// Learns the slot map again in the background, unless a refresh runs or ran within
    /// `every`, or there is no Tokio runtime to run it on. A refresh that fails leaves the
    /// map as it was.
    fn refresh(this: &Arc<Self>, client: &ClusterConnection, every: Duration) {
        let now = u64::try_from(this.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let last = this.last_refresh.load(Ordering::Relaxed);
        let every = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now < last.saturating_add(every) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if this.refreshing.swap(true, Ordering::Acquire) {
            return;
        }
        this.last_refresh.store(now, Ordering::Relaxed);
        /// Lets the next refresh run however this one ends, even if its task is dropped
        /// unfinished (its runtime shutting down).
        struct Running(Arc<Direct>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.refreshing.store(false, Ordering::Release);
            }
        }
        let (running, mut client) = (Running(Arc::clone(this)), client.clone());
        runtime.spawn(async move {
            let me = &running.0;
            match tokio::time::timeout(me.limit, me.learn(&mut client)).await {
                Ok(Ok(map)) => {
                    #[cfg(test)]
                    me.counts[1].fetch_add(1, Ordering::Relaxed);
                    me.map.store(Some(Arc::new(map)));
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot learn the Cluster's slot map; calls go through the Cluster client");
                }
                Err(_) => {
                    tracing::debug!(limit = ?me.limit, "learning the Cluster's slot map timed out; calls go through the Cluster client");
                }
            }
        });
    }

    /// Asks a master for the slot map (`CLUSTER SLOTS`) and connects to each master.
    /// A master that cannot be reached keeps its slots on the Cluster client's path.
    async fn learn(&self, client: &mut ClusterConnection) -> RedisResult<SlotMap> {
        let reply = client
            .route_command(
                ::redis::cmd("CLUSTER").arg("SLOTS").clone(),
                // A master: a replica's view may lag a slot's move.
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
            )
            .await?;
        let ranges = parse_slots(&reply);
        let mut addrs: Vec<(String, u16)> = Vec::new();
        let mut owner = vec![NONE; SLOTS].into_boxed_slice();
        for (start, end, host, port) in ranges {
            let i = match addrs.iter().position(|(h, p)| *h == host && *p == port) {
                Some(i) => i,
                None => {
                    addrs.push((host, port));
                    addrs.len() - 1
                }
            };
            let i = u16::try_from(i).unwrap_or(NONE);
            owner[usize::from(start)..=usize::from(end)].fill(i);
        }
        let connect = addrs.iter().map(|(host, port)| async move {
            let info = super::node_info(host, *port, &self.seed);
            let client = ::redis::Client::open(info).ok()?;
            client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await
                .ok()
        });
        let conns = futures_util::future::join_all(connect).await;
        // A master not reached: its slots stay on the Cluster client's path.
        let mut masters = Vec::with_capacity(conns.len());
        let mut index = vec![NONE; conns.len()];
        for (i, conn) in conns.into_iter().enumerate() {
            if let Some(conn) = conn {
                index[i] = u16::try_from(masters.len()).unwrap_or(NONE);
                masters.push(conn);
            }
        }
        for o in owner.iter_mut() {
            if *o != NONE {
                *o = index[usize::from(*o)];
            }
        }
        Ok(SlotMap { owner, masters })
    }
}

/// The slot ranges of a `CLUSTER SLOTS` reply with their master's host and port. Ranges
/// whose master has no known endpoint (an empty or null host, `?`, an unspecified
/// address) are left out.
fn parse_slots(reply: &Value) -> Vec<(u16, u16, String, u16)> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    let int = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    ranges
        .iter()
        .filter_map(|range| {
            let Value::Array(fields) = range else {
                return None;
            };
            let (start, end) = (int(fields.first()?)?, int(fields.get(1)?)?);
            let Value::Array(master) = fields.get(2)? else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
                Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            let port = int(master.get(1)?)?;
            // An empty, unknown or unspecified host names "the node that answered", which
            // the answer does not say: those slots stay on redis-rs's path.
            let known = !host.is_empty() && host != "?" && host != "0.0.0.0" && host != "::";
            (start <= end && usize::from(end) < SLOTS && known).then_some((start, end, host, port))
        })
        .collect()
}

/// The slot of an `EVALSHA <sha> <numkeys> <key> ...` (or `EVAL`) with at least one key:
/// its first key's. `None` for any other command.
fn script_slot(cmd: &Cmd) -> Option<u16> {
    match cmd.args_iter().next()? {
        ::redis::Arg::Simple(name)
            if name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL") =>
        {
            script_key(cmd).map(slot)
        }
        _ => None,
    }
}

/// The first key of a script call (`EVALSHA|EVAL <script> <numkeys> <keys...> ...`), if it
/// has one.
pub(super) fn script_key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().skip(2);
    let numkeys = match args.next()? {
        ::redis::Arg::Simple(n) => std::str::from_utf8(n).ok()?.parse::<usize>().ok()?,
        _ => return None,
    };
    if numkeys == 0 {
        return None;
    }
    match args.next()? {
        ::redis::Arg::Simple(key) => Some(key),
        _ => None,
    }
}

/// Redis Cluster's slot of `key`: CRC16 (XMODEM) of its hash tag, or of the whole key when
/// it has none (no `{`, no `}` after it, or nothing between them), modulo 16,384.
pub(super) fn slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS as u16
}

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), the checksum Redis Cluster
/// hashes keys with.
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16_TABLE[usize::from(((crc >> 8) as u8) ^ b)]
    })
}

const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster_hashing() {
        // Values from `CLUSTER KEYSLOT` (and the Redis Cluster specification's examples).
        assert_eq!(slot(b"foo"), 12_182);
        assert_eq!(slot(b"bar"), 5_061);
        assert_eq!(slot(b"hello"), 866);
        // The CRC16 check value of the XMODEM variant.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_ne!(
            slot(b"foo{}{bar}"),
            slot(b"bar"),
            "an empty tag hashes the whole key"
        );
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
        assert_eq!(slot(b""), 0);
    }

    #[test]
    fn redirections_and_failed_connections_send_a_call_through_the_cluster_client() {
        let reply = |wire: &str| Ok(::redis::parse_redis_value(wire.as_bytes()).unwrap());
        let verdict = |r: &RedisResult<Value>| match Verdict::of(r) {
            Verdict::Answered => "answered",
            Verdict::Through => "through",
            Verdict::Stale => "stale",
        };
        for (wire, expected) in [
            (":1\r\n", "answered"),
            ("$-1\r\n", "answered"),
            ("-ERR user script failed\r\n", "answered"),
            (
                "-CROSSSLOT Keys in request don't hash to the same slot\r\n",
                "answered",
            ),
            ("-WRONGTYPE Operation against a key\r\n", "answered"),
            ("-NOSCRIPT No matching script\r\n", "through"),
            ("-ASK 1999 127.0.0.1:7001\r\n", "through"),
            (
                "-TRYAGAIN Multiple keys request during rehashing\r\n",
                "through",
            ),
            ("-MOVED 1999 127.0.0.1:7001\r\n", "stale"),
            ("-CLUSTERDOWN The cluster is down\r\n", "stale"),
            ("-MASTERDOWN Link with MASTER is down\r\n", "stale"),
            ("-LOADING Redis is loading the dataset\r\n", "stale"),
            (
                "-READONLY You can't write against a read only replica\r\n",
                "stale",
            ),
        ] {
            assert_eq!(verdict(&reply(wire)), expected, "{wire:?}");
        }
        let dropped: RedisResult<Value> =
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe).into());
        assert_eq!(verdict(&dropped), "stale");
        let timed_out: RedisResult<Value> =
            Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into());
        assert_eq!(verdict(&timed_out), "stale");
        let moved: RedisResult<Value> = match ::redis::parse_redis_value(b"-MOVED 1 h:1\r\n") {
            Ok(Value::ServerError(e)) => Err(e.into()),
            other => panic!("{other:?}"),
        };
        assert_eq!(verdict(&moved), "stale");
        let parse: RedisResult<Value> = Err((::redis::ErrorKind::Parse, "bad reply").into());
        assert_eq!(verdict(&parse), "stale");
        let client: RedisResult<Value> = Err((::redis::ErrorKind::Client, "bad call").into());
        assert_eq!(verdict(&client), "answered");
    }

    #[test]
    fn only_scripts_with_keys_have_a_slot() {
        let evalsha = ::redis::cmd("EVALSHA")
            .arg("abc")
            .arg(2)
            .arg("t:{x}:a")
            .arg("t:{x}:b")
            .arg(1)
            .clone();
        assert_eq!(script_slot(&evalsha), Some(slot(b"x")));
        let eval = ::redis::cmd("eval").arg("return 1").arg(1).arg("k").clone();
        assert_eq!(script_slot(&eval), Some(slot(b"k")));
        let no_keys = ::redis::cmd("EVALSHA").arg("abc").arg(0).arg(1).clone();
        assert_eq!(script_slot(&no_keys), None);
        let bad = ::redis::cmd("EVALSHA").arg("abc").arg("x").arg("k").clone();
        assert_eq!(script_slot(&bad), None);
        assert_eq!(script_slot(::redis::cmd("GET").arg("k")), None);
        assert_eq!(script_slot(&::redis::cmd("EVALSHA")), None);
    }

    #[test]
    fn a_slots_reply_names_each_range_master() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node("?", 7001)]),
            Value::Array(vec![Value::Int(10923), Value::Int(16000), node("", 7002)]),
            Value::Array(vec![
                Value::Int(16001),
                Value::Int(16100),
                node("0.0.0.0", 7002),
            ]),
            Value::Array(vec![
                Value::Int(16101),
                Value::Int(16383),
                Value::Array(vec![Value::Nil, Value::Int(7002)]),
            ]),
            Value::Array(vec![Value::Int(9), Value::Int(3), node("h", 1)]),
            Value::Array(vec![Value::Int(0), Value::Int(16384), node("h", 1)]),
            Value::Int(3),
            Value::Array(vec![Value::Int(0)]),
        ]);
        assert_eq!(
            parse_slots(&reply),
            vec![(0, 5460, "127.0.0.1".to_owned(), 7000)]
        );
        assert!(parse_slots(&Value::Nil).is_empty());
    }
}
