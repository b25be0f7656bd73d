//! The reference server scaled out as operators run it: three instances behind nginx, on a
//! Redis Cluster (3 masters, 3 replicas) and PostgreSQL with a streaming replica, started
//! by `scripts/scale-out.sh` (nginx, the instances and the Cluster private to this test),
//! under bounded load, through faults. Every count is printed; the run's figures go to
//! `docs/benchmarks.md`.

#[path = "../../../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The rig `scripts/scale-out.sh up` starts, stopped (`down`) on drop.
struct Rig {
    dir: PathBuf,
    port: u16,
    env: HashMap<String, String>,
}

fn script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/scale-out.sh").to_owned()
}

impl Rig {
    fn up() -> Self {
        let dir = std::env::temp_dir().join(support::unique("scale-out"));
        // Four ports in a row: nginx and the three instances (below the kernel's ephemeral
        // range, where an outgoing connection could take one first).
        let port = loop {
            let p = 22_000 + (support::free_port() % 10_000);
            if (p..p + 4).all(|q| std::net::TcpListener::bind(("127.0.0.1", q)).is_ok()) {
                break p;
            }
        };
        let mut rig = Rig {
            dir,
            port,
            env: HashMap::new(),
        };
        let out = rig.run(&["up"]);
        assert!(
            out.status.success(),
            "scale-out.sh up failed; logs in {}",
            rig.dir.display()
        );
        let env = std::fs::read_to_string(rig.dir.join("env")).unwrap();
        rig.env = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
            .collect();
        rig
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("bash")
            .arg(script())
            .args(args)
            .env("SCALE_OUT_DIR", &self.dir)
            .env("PORT", self.port.to_string())
            .env("REFERENCE_SERVER", env!("CARGO_BIN_EXE_reference-server"))
            .env("DRAIN", "1s")
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap()
    }

    fn nginx(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn instance(&self, n: u16) -> String {
        format!("http://127.0.0.1:{}", self.port + n)
    }

    fn signal(&self, n: u16, sig: &str) {
        let pid = std::fs::read_to_string(self.dir.join(format!("instance-{n}.pid"))).unwrap();
        let ok = Command::new("kill")
            .args([sig, pid.trim()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for instance `n` to exit (its port to refuse connections).
    fn wait_down(&self, n: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port + n)).is_ok() {
            assert!(Instant::now() < deadline, "instance {n} did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start(&self, n: u16) {
        assert!(self.run(&["start", &n.to_string()]).status.success());
    }

    fn cluster_ports(&self) -> Vec<u16> {
        self.env["CLUSTER_PORTS"]
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
        if std::thread::panicking() {
            eprintln!("scale-out rig's logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One HTTP client with pooled connections, as a load generator keeps; errors are
/// returned, never panics.
#[derive(Clone)]
struct Http(Client<HttpConnector, Full<Bytes>>);

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    fn served_by(&self) -> String {
        self.headers
            .get("x-served-by")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    }
}

impl Http {
    fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Http(
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        )
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Reply, String> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if !body.is_empty() {
            b = b.header("content-type", "application/json");
        }
        let req = b.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let res = tokio::time::timeout(Duration::from_secs(10), self.0.request(req))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = res.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("{e:?}"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    async fn get(&self, url: &str, client_ip: &str) -> Result<Reply, String> {
        self.send(Method::GET, url, &[("x-forwarded-for", client_ip)], "")
            .await
    }
}

/// A client address no earlier request used: each its own rate-limit bucket.
fn fresh_ip() -> String {
    static N: AtomicU32 = AtomicU32::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// What a stretch of load saw: per label, the outcomes (status or transport error).
#[derive(Default)]
struct Tally(BTreeMap<String, BTreeMap<String, u32>>);

impl Tally {
    fn add(&mut self, label: &str, outcome: &Result<Reply, String>) {
        let key = match outcome {
            Ok(r) => r.status.as_u16().to_string(),
            Err(e) => format!("error: {}", e.chars().take(60).collect::<String>()),
        };
        *self
            .0
            .entry(label.to_owned())
            .or_default()
            .entry(key)
            .or_default() += 1;
    }

    fn failed(&self, label: &str, ok: &[&str]) -> u32 {
        self.0.get(label).map_or(0, |m| {
            m.iter()
                .filter(|(k, _)| !ok.contains(&k.as_str()))
                .map(|(_, n)| n)
                .sum()
        })
    }

    fn total(&self, label: &str) -> u32 {
        self.0.get(label).map_or(0, |m| m.values().sum())
    }
}

/// Runs `workers` loops of `step` until `stop`, each pausing `pace` between requests.
async fn load<F, Fut>(workers: usize, pace: Duration, stop: Arc<AtomicBool>, step: F) -> Tally
where
    F: Fn(usize, u32) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Vec<(&'static str, Result<Reply, String>)>> + Send,
{
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (stop, step) = (Arc::clone(&stop), step.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                for (label, outcome) in step(w, i).await {
                    tally.add(label, &outcome);
                }
                i += 1;
                tokio::time::sleep(pace).await;
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        for (label, outcomes) in t.await.unwrap().0 {
            for (k, n) in outcomes {
                *all.0
                    .entry(label.clone())
                    .or_default()
                    .entry(k)
                    .or_default() += n;
            }
        }
    }
    all
}

async fn login(http: &Http, base: &str, user: &str) -> String {
    let r = http
        .send(
            Method::POST,
            &format!("{base}/login"),
            &[("x-forwarded-for", &fresh_ip())],
            &format!(r#"{{"user":"{user}"}}"#),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let set = r.headers["set-cookie"].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_behind_nginx_on_a_redis_cluster() {
    let rig = Rig::up();
    let http = Http::new();
    let nginx = rig.nginx();
    let instances: Vec<String> = (1..=3).map(|n| rig.instance(n)).collect();

    // 1. One quota shared exactly by the three instances: 300 requests of one client,
    //    8 at a time, through nginx; the default quota is 100 per 15 minutes.
    let client = fresh_ip();
    let eight = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = Vec::new();
    for i in 0..300 {
        let (http, url, client) = (
            http.clone(),
            format!("{nginx}/products/{}", 1 + i % 50),
            client.clone(),
        );
        let permit = Arc::clone(&eight).acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let r = http.get(&url, &client).await;
            drop(permit);
            r
        }));
    }
    let (mut admitted, mut refused, mut by) = (0, 0, BTreeSet::new());
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        match r.status {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("unexpected {other}"),
        }
        by.insert(r.served_by());
    }
    eprintln!("quota: {admitted} admitted, {refused} refused, served by {by:?}");
    assert_eq!((admitted, refused), (100, 200));
    assert_eq!(by.len(), 3, "every instance served some: {by:?}");

    // 2. A session made on one instance is served by all; 50 parallel increments across
    //    the instances see 50 distinct counts.
    let cookie = login(&http, &nginx, "scaler").await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (http, url, cookie) = (http.clone(), format!("{nginx}/me"), cookie.clone());
        tasks.push(tokio::spawn(async move {
            http.send(
                Method::GET,
                &url,
                &[("cookie", &cookie), ("x-forwarded-for", &fresh_ip())],
                "",
            )
            .await
            .unwrap()
        }));
    }
    let (mut counts, mut by) = (Vec::new(), BTreeSet::new());
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        counts.push(r.json()["visits"].as_i64().unwrap());
        by.insert(r.served_by());
    }
    counts.sort_unstable();
    eprintln!("sessions: 50 increments served by {by:?}");
    assert_eq!(counts, (1..=50).collect::<Vec<_>>());
    assert_eq!(by.len(), 3, "{by:?}");

    // 3. A PUT through nginx reaches one instance; every instance serves the new product
    //    within a measured time.
    let mut took = Vec::new();
    for round in 0..20 {
        let id = 900 + round;
        let name = format!("{} round {round}", support::unique("p"));
        let r = http
            .send(
                Method::PUT,
                &format!("{nginx}/products/{id}"),
                &[("cookie", &cookie), ("x-forwarded-for", &fresh_ip())],
                &format!(r#"{{"name":"{name}","price_cents":{round}}}"#),
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let start = Instant::now();
        for base in &instances {
            loop {
                let r = http
                    .get(&format!("{base}/products/{id}"), &fresh_ip())
                    .await
                    .unwrap();
                if r.json()["name"] == name.as_str() {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(3),
                    "{base} still serves the old product"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        took.push(start.elapsed());
    }
    took.sort();
    let (p50, p99) = (percentile(&took, 50), percentile(&took, 99));
    eprintln!("a PUT served by all three: p50 {p50:?}, p99 {p99:?} over 20 rounds");

    // 4. SIGTERM one instance under load (reads and idempotent writes): nothing fails.
    let stop = Arc::new(AtomicBool::new(false));
    let steady = {
        let (http, nginx, cookie) = (http.clone(), nginx.clone(), cookie.clone());
        move |w: usize, i: u32| {
            let (http, nginx, cookie) = (http.clone(), nginx.clone(), cookie.clone());
            async move {
                let read = http
                    .get(
                        &format!("{nginx}/products/{}", 1 + (w as u32 * 97 + i) % 800),
                        &fresh_ip(),
                    )
                    .await;
                let mut out = vec![("read", read)];
                if i.is_multiple_of(5) {
                    let id = 850 + w as u32;
                    let write = http
                        .send(
                            Method::PUT,
                            &format!("{nginx}/products/{id}"),
                            &[("cookie", &cookie), ("x-forwarded-for", &fresh_ip())],
                            &format!(r#"{{"name":"steady {w} {i}","price_cents":{i}}}"#),
                        )
                        .await;
                    out.push(("write", write));
                }
                out
            }
        }
    };
    let running = tokio::spawn(load(
        4,
        Duration::from_millis(5),
        Arc::clone(&stop),
        steady.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    rig.signal(2, "-TERM");
    let signalled = Instant::now();
    tokio::task::spawn_blocking({
        let port = rig.port;
        move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port + 2)).is_ok() {
                assert!(Instant::now() < deadline, "instance 2 did not stop");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    })
    .await
    .unwrap();
    let stopped_after = signalled.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let tally = running.await.unwrap();
    eprintln!(
        "SIGTERM under load (instance stopped {stopped_after:?} after the signal): {:?}",
        tally.0
    );
    assert!(tally.total("read") > 100, "{:?}", tally.0);
    assert_eq!(tally.failed("read", &["200"]), 0, "{:?}", tally.0);
    assert_eq!(tally.failed("write", &["200"]), 0, "{:?}", tally.0);
    rig.start(2);

    // 5. SIGKILL one instance under read load: nginx retries the reads that were cut off
    //    on another instance; none fails. It rejoins once started again.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = {
        let (http, nginx) = (http.clone(), nginx.clone());
        move |w: usize, i: u32| {
            let (http, nginx) = (http.clone(), nginx.clone());
            async move {
                let r = http
                    .get(
                        &format!("{nginx}/products/{}", 1 + (w as u32 * 31 + i) % 800),
                        &fresh_ip(),
                    )
                    .await;
                vec![("read", r)]
            }
        }
    };
    let running = tokio::spawn(load(
        4,
        Duration::from_millis(5),
        Arc::clone(&stop),
        reads.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    rig.signal(3, "-KILL");
    rig.wait_down(3);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let tally = running.await.unwrap();
    eprintln!("SIGKILL under read load: {:?}", tally.0);
    assert_eq!(tally.failed("read", &["200"]), 0, "{:?}", tally.0);
    rig.start(3);
    support::eventually(
        "instance 3 to serve through nginx again",
        Duration::from_secs(15),
        || async {
            let r = http
                .get(&format!("{nginx}/healthz"), &fresh_ip())
                .await
                .ok()?;
            (r.served_by() == "instance-3").then_some(())
        },
    )
    .await;

    // 6. A Cluster master dies under load: its replica takes over. Each layer does what
    //    its failure mode says meanwhile (rate limits: each instance's fallback share;
    //    the cache: L1 and the loader; sessions on the dead master's slots: 503), and all
    //    recover with no restart. A quota used up and a session written before the
    //    failover are still there after it.
    let spent = fresh_ip();
    for _ in 0..100 {
        let r = http
            .get(&format!("{nginx}/products/1"), &spent)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(
        http.get(&format!("{nginx}/products/1"), &spent)
            .await
            .unwrap()
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let mut sessions = Vec::new();
    for n in 0..12 {
        let c = login(&http, &nginx, &format!("fo{n}")).await;
        let r = http
            .send(
                Method::GET,
                &format!("{nginx}/me"),
                &[("cookie", &c), ("x-forwarded-for", &fresh_ip())],
                "",
            )
            .await
            .unwrap();
        assert_eq!(r.json()["visits"], 1);
        sessions.push(c);
    }
    let master = {
        let nodes: String = support::redis_raw(
            &format!("redis://127.0.0.1:{}", rig.cluster_ports()[0]),
            &["CLUSTER", "NODES"],
        )
        .await;
        let line = nodes
            .lines()
            .find(|l| l.contains("master") && !l.contains("fail"))
            .unwrap()
            .to_owned();
        let addr = line.split_whitespace().nth(1).unwrap();
        let port = addr
            .split(['@', ':'])
            .nth(1)
            .unwrap()
            .parse::<u16>()
            .unwrap();
        // Its first slot range, for a key of its own below.
        let range = line.split_whitespace().nth(8).unwrap().to_owned();
        (port, range)
    };
    let (master, range) = master;
    let (lo, hi) = range
        .split_once('-')
        .map(|(a, b)| (a.parse::<u16>().unwrap(), b.parse::<u16>().unwrap()))
        .unwrap();
    // Redis's own asynchronous-replication window: a counter on the doomed master,
    // incremented as fast as one connection goes until the kill; what its replica holds
    // afterwards, against what the master acknowledged.
    let nodes: Vec<String> = rig
        .cluster_ports()
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    let raw = redis::cluster::ClusterClient::new(nodes).unwrap();
    let mut counter_conn = raw.get_async_connection().await.unwrap();
    let mut counter = String::new();
    for i in 0.. {
        let k = format!("window:{i}");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&k)
            .query_async(&mut counter_conn)
            .await
            .unwrap();
        if (lo..=hi).contains(&slot) {
            counter = k;
            break;
        }
    }
    let acked = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let counting_stop = Arc::new(AtomicBool::new(false));
    let counting = {
        let (acked, counter, mut conn, stop) = (
            Arc::clone(&acked),
            counter.clone(),
            counter_conn.clone(),
            Arc::clone(&counting_stop),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match redis::cmd("INCR")
                    .arg(&counter)
                    .query_async::<i64>(&mut conn)
                    .await
                {
                    Ok(v) => acked.store(v, Ordering::Relaxed),
                    Err(_) => break,
                }
            }
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sessions = Arc::new(sessions);
    let mixed = {
        let (http, nginx, sessions) = (http.clone(), nginx.clone(), Arc::clone(&sessions));
        move |w: usize, i: u32| {
            let (http, nginx, sessions) = (http.clone(), nginx.clone(), Arc::clone(&sessions));
            async move {
                let read = http
                    .get(
                        &format!("{nginx}/products/{}", 1 + (w as u32 * 13 + i) % 800),
                        &fresh_ip(),
                    )
                    .await;
                let c = &sessions[(w + i as usize) % sessions.len()];
                let me = http
                    .send(
                        Method::GET,
                        &format!("{nginx}/me"),
                        &[("cookie", c), ("x-forwarded-for", &fresh_ip())],
                        "",
                    )
                    .await;
                vec![("products", read), ("me", me)]
            }
        }
    };
    let running = tokio::spawn(load(
        4,
        Duration::from_millis(10),
        Arc::clone(&stop),
        mixed.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid_file = rig.dir.join(format!("cluster/node-{master}/redis.pid"));
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let killed = Instant::now();
    counting_stop.store(true, Ordering::Relaxed);
    assert!(
        Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap()
            .success()
    );
    // The replica is promoted after the node timeout (1 s) and an election.
    let healthy = support::eventually(
        "the Cluster to recover",
        Duration::from_secs(20),
        || async {
            // Recovered when the live nodes agree the dead one failed (`fail`, not the
            // suspicion `fail?`) and every slot has a master again.
            let port = rig.cluster_ports().into_iter().find(|p| *p != master)?;
            let url = format!("redis://127.0.0.1:{port}");
            let nodes: String = support::redis_raw(&url, &["CLUSTER", "NODES"]).await;
            let dead = nodes.lines().find(|l| l.contains(&format!(":{master}@")))?;
            let failed = dead
                .split_whitespace()
                .nth(2)?
                .split(',')
                .any(|f| f == "fail");
            let info: String = support::redis_raw(&url, &["CLUSTER", "INFO"]).await;
            (failed && info.contains("cluster_state:ok")).then(|| killed.elapsed())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let during = running.await.unwrap();
    eprintln!(
        "master :{master} killed; cluster_state ok again after {healthy:?}; during the failover: {:?}",
        during.0
    );
    assert_eq!(during.failed("products", &["200"]), 0, "{:?}", during.0);
    assert_eq!(during.failed("me", &["200", "503"]), 0, "{:?}", during.0);
    // Recovered, with no restart: everything answers again.
    let after = load(
        4,
        Duration::from_millis(10),
        {
            let stop = Arc::new(AtomicBool::new(false));
            let s = Arc::clone(&stop);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                s.store(true, Ordering::Relaxed);
            });
            stop
        },
        mixed,
    )
    .await;
    eprintln!("after the failover: {:?}", after.0);
    assert_eq!(after.failed("products", &["200"]), 0, "{:?}", after.0);
    let _ = counting.await;
    let survived: i64 = redis::cmd("GET")
        .arg(&counter)
        .query_async::<Option<i64>>(&mut counter_conn)
        .await
        .unwrap()
        .unwrap_or(0);
    let acked = acked.load(Ordering::Relaxed);
    eprintln!(
        "asynchronous replication window: {acked} increments acknowledged by the master before it died, {survived} on the promoted replica, {} lost",
        acked - survived
    );
    assert!(
        survived > 0 && survived <= acked + 1,
        "{survived} of {acked}"
    );
    assert_eq!(after.failed("me", &["200"]), 0, "{:?}", after.0);
    // Written before the failover, and still there.
    assert_eq!(
        http.get(&format!("{nginx}/products/1"), &spent)
            .await
            .unwrap()
            .status,
        StatusCode::TOO_MANY_REQUESTS,
        "the spent quota survived the failover"
    );
    let mut kept = 0;
    for c in sessions.iter() {
        let r = http
            .send(
                Method::GET,
                &format!("{nginx}/me"),
                &[("cookie", c), ("x-forwarded-for", &fresh_ip())],
                "",
            )
            .await
            .unwrap();
        if r.status == StatusCode::OK && r.json()["visits"].as_i64() > Some(1) {
            kept += 1;
        }
    }
    eprintln!(
        "sessions kept through the failover: {kept} of {}",
        sessions.len()
    );
    assert_eq!(kept, sessions.len());
    // The dead master, started again, rejoins as a replica.
    assert!(
        rig.run(&["node-start", &master.to_string()])
            .status
            .success()
    );
    let url = format!("redis://127.0.0.1:{master}");
    support::eventually(
        "the old master to rejoin as a replica",
        Duration::from_secs(20),
        || async {
            let me: String = support::redis_raw(&url, &["CLUSTER", "NODES"]).await;
            let line = me.lines().find(|l| l.contains("myself"))?;
            (line.contains("slave") && !line.contains("fail")).then_some(())
        },
    )
    .await;
}
