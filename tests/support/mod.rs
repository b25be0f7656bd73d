//! Shared test support: service addresses, per-test namespaces, private servers for fault
//! tests. The services come from `scripts/services.sh` (run by `scripts/test.sh`).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The shared Redis (`TEST_REDIS_URL`, else the standard local port).
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn required(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests through `bash scripts/test.sh`, which starts PostgreSQL with a streaming replica and sets it")
    })
}

/// The PostgreSQL primary.
pub fn pg_primary_url() -> String {
    required("TEST_DATABASE_URL")
}

/// A physical streaming replica of the primary.
pub fn pg_replica_url() -> String {
    required("TEST_DATABASE_REPLICA_URL")
}

/// A name no other test (in this or a parallel run) uses: for key prefixes and schemas.
pub fn unique(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "t_{}_{}_{}_{:x}",
        name,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private `redis-server` that a fault test may kill and restart. Killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts one with extra `redis-server` arguments (e.g. `--cluster-enabled yes`).
    pub fn start_with(extra: &[&str]) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("redis"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Self {
            port,
            child: None,
            dir,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/services.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes it (SIGSTOP): connections stay open and nothing answers, like a hung server.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Thaws a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Kills it at once (SIGKILL), like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Pauses WAL replay on the replica at `replica_url` and waits until it is paused
/// (`pg_wal_replay_pause()` only asks; a record may still be replayed until then).
#[allow(dead_code)]
pub async fn pause_replay(replica_url: &str) {
    let (client, conn) = tokio_postgres::connect(replica_url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {replica_url}: {e}"));
    tokio::spawn(conn);
    client
        .execute("SELECT pg_wal_replay_pause()", &[])
        .await
        .unwrap();
    eventually("replay paused", Duration::from_secs(5), || async {
        let state: String = client
            .query_one("SELECT pg_get_wal_replay_pause_state()", &[])
            .await
            .unwrap()
            .get(0);
        (state == "paused").then_some(())
    })
    .await;
}

/// Applies a layer to a service (`Layer::layer`, callable as a method on the layer).
pub trait LayerExt {
    fn layer_service<S>(&self, inner: S) -> <Self as tower::Layer<S>>::Service
    where
        Self: tower::Layer<S>;
}

impl<T> LayerExt for T {
    fn layer_service<S>(&self, inner: S) -> <Self as tower::Layer<S>>::Service
    where
        Self: tower::Layer<S>,
    {
        tower::Layer::layer(self, inner)
    }
}

/// Runs one raw command (`args[0]` with its arguments) on the Redis at `url`, over a
/// connection of its own: for tests that look inside Redis past the crate's API.
pub async fn redis_raw<T: redis::FromRedisValue>(url: &str, args: &[&str]) -> T {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await.unwrap()
}

/// The shared Redis Cluster's nodes (`TEST_REDIS_CLUSTER_NODES`: three masters with a
/// replica each, started by `scripts/services.sh`).
pub fn redis_cluster_nodes() -> Vec<String> {
    required("TEST_REDIS_CLUSTER_NODES")
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// A backend on the shared Redis Cluster with its own key prefix.
pub fn redis_cluster_backend(prefix: &str) -> tower_scale::redis::RedisBackend {
    tower_scale::redis::RedisBackend::cluster(redis_cluster_nodes())
        .prefix(prefix)
        .timeout(Duration::from_millis(250))
        .build()
        .unwrap()
}

/// Every Redis test runs against both: one node and a Cluster, each under `prefix`.
pub fn redis_backends(prefix: &str) -> Vec<(&'static str, tower_scale::redis::RedisBackend)> {
    vec![
        ("redis", redis_backend(&redis_url(), prefix)),
        ("cluster", redis_cluster_backend(prefix)),
    ]
}

/// One raw command on the shared Redis Cluster (routed by its key), for tests that look
/// past the crate's API.
pub async fn redis_cluster_raw<T: redis::FromRedisValue>(args: &[&str]) -> T {
    let client = redis::cluster::ClusterClient::new(redis_cluster_nodes()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await.unwrap()
}

/// A Redis backend on `url` with its own key prefix and a timeout tests can live with.
pub fn redis_backend(url: &str, prefix: &str) -> tower_scale::redis::RedisBackend {
    tower_scale::redis::RedisBackend::builder(url)
        .prefix(prefix)
        .timeout(Duration::from_millis(250))
        .build()
        .unwrap()
}

/// A private PostgreSQL primary with a physical streaming replica, for fault tests that
/// stop and start the replica (the shared pair from `scripts/services.sh` must never be
/// stopped). Both run from a temporary directory on free ports and are stopped, and the
/// directory removed, on drop. Starting a pair takes a few seconds.
pub struct PgPair {
    pub primary_port: u16,
    pub replica_port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

impl PgPair {
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries (scripts/services.sh installs them)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = PathBuf::from("/var/tmp").join(unique("pgpair"));
        std::fs::create_dir_all(&dir).unwrap();
        let pair = Self {
            primary_port: free_port(),
            replica_port: free_port(),
            dir,
            bin,
        };
        pair.chown();
        let primary = pair.dir.join("primary");
        pair.pg(
            "initdb",
            &[
                "-D",
                primary.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        pair.append_conf(
            &primary,
            &format!(
                "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
                 wal_level = replica\nmax_wal_senders = 5\nfsync = off\n\
                 synchronous_commit = off\nfull_page_writes = off\n",
                pair.primary_port,
                pair.dir.display()
            ),
        );
        pair.ctl(&primary, "start");
        let replica = pair.dir.join("replica");
        pair.pg(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &pair.primary_port.to_string(),
                "-U",
                "postgres",
                "-D",
                replica.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
            ],
        );
        pair.append_conf(
            &replica,
            &format!(
                "port = {}\nhot_standby = on\nwal_receiver_status_interval = 1s\n",
                pair.replica_port
            ),
        );
        pair.start_replica();
        pair
    }

    pub fn primary_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.primary_port
        )
    }

    pub fn replica_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.replica_port
        )
    }

    /// Stops the replica at once (`immediate`: like a crash).
    pub fn stop_replica(&self) {
        self.ctl(&self.dir.join("replica"), "stop");
    }

    /// Starts the replica (again) and waits until it accepts connections.
    pub fn start_replica(&self) {
        self.ctl(&self.dir.join("replica"), "start");
    }

    /// Stops the primary at once (`immediate`: like a crash).
    pub fn stop_primary(&self) {
        self.ctl(&self.dir.join("primary"), "stop");
    }

    /// Starts the primary (again) and waits until it accepts connections.
    pub fn start_primary(&self) {
        self.ctl(&self.dir.join("primary"), "start");
    }

    fn ctl(&self, data: &std::path::Path, action: &str) {
        if let Err(e) = self.try_ctl(data, action) {
            panic!("{e}");
        }
    }

    fn try_ctl(&self, data: &std::path::Path, action: &str) -> Result<(), String> {
        let log = data.with_extension("log");
        let mut args = vec![action, "-D", data.to_str().unwrap(), "-w"];
        let log_s = log.to_str().unwrap().to_owned();
        if action == "start" {
            args.extend(["-l", &log_s]);
        } else {
            args.extend(["-m", "immediate"]);
        }
        self.try_pg("pg_ctl", &args)
    }

    /// Runs a PostgreSQL program and panics with its output if it fails.
    fn pg(&self, program: &str, args: &[&str]) {
        if let Err(e) = self.try_pg(program, args) {
            panic!("{e}");
        }
    }

    /// Runs a PostgreSQL program, as the `postgres` user when we are root (the server
    /// refuses to run as root).
    fn try_pg(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let path = self.bin.join(program);
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false);
        let mut cmd = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = cmd
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn append_conf(&self, data: &std::path::Path, lines: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        f.write_all(lines.as_bytes()).unwrap();
    }

    fn chown(&self) {
        let _ = Command::new("chown")
            .args(["postgres:", self.dir.to_str().unwrap()])
            .status();
    }
}

impl Drop for PgPair {
    fn drop(&mut self) {
        // Never panics: it may run while a failed test unwinds. A node already stopped
        // is fine.
        for node in ["replica", "primary"] {
            let _ = self.try_ctl(&self.dir.join(node), "stop");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The node of the shared test Cluster at `url`, for admin commands.
pub async fn cluster_node(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The masters of the shared test Cluster: (id, URL, whether it serves `slot`).
pub async fn cluster_masters(slot: u16) -> Vec<(String, String, bool)> {
    let mut any = cluster_node(&redis_cluster_nodes()[0]).await;
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut any)
        .await
        .unwrap();
    nodes
        .lines()
        .filter(|l| l.split(' ').nth(2).is_some_and(|f| f.contains("master")))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let addr = f[1].split('@').next().unwrap();
            let serves = f[8..].iter().any(|r| {
                let mut ends = r.split('-').map(|n| n.parse::<u16>().unwrap_or(u16::MAX));
                let lo = ends.next().unwrap();
                let hi = ends.next().unwrap_or(lo);
                (lo..=hi).contains(&slot)
            });
            (f[0].to_owned(), format!("redis://{addr}"), serves)
        })
        .collect()
}

/// Assigns `slot` to the master `to` on every master of the shared test Cluster, as a
/// reshard does. The old owner refuses while it holds keys in the slot.
pub async fn assign_slot(slot: u16, to: &str, masters: &[(String, String, bool)]) {
    // The new owner first, then the others.
    let mut order: Vec<&(String, String, bool)> = masters.iter().collect();
    order.sort_by_key(|(id, _, _)| id != to);
    for (_, url, _) in order {
        let mut c = cluster_node(url).await;
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(to)
            .query_async(&mut c)
            .await
            .unwrap();
    }
}

/// A hash tag, made from `base`, whose slot holds no key on the shared test Cluster: a
/// test that moves a slot needs one, since a master refuses to give up a slot it holds
/// keys in (and the shared Cluster keeps other tests' keys).
pub async fn cluster_empty_slot_tag(base: &str) -> (String, u16) {
    let mut any = cluster_node(&redis_cluster_nodes()[0]).await;
    for i in 0..200 {
        let tag = format!("{base}-{i}");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&tag)
            .query_async(&mut any)
            .await
            .unwrap();
        let owner = cluster_masters(slot)
            .await
            .into_iter()
            .find(|m| m.2)
            .unwrap();
        let keys: u64 = redis::cmd("CLUSTER")
            .arg("COUNTKEYSINSLOT")
            .arg(slot)
            .query_async(&mut cluster_node(&owner.1).await)
            .await
            .unwrap();
        if keys == 0 {
            return (tag, slot);
        }
    }
    panic!("no empty slot among 200 tags from {base}");
}
