//! The shared Redis backend against real Redis servers.

mod support;

use std::time::{Duration, Instant};

use tower_scale::redis::{RedisBackend, Script, cmd};

fn backend(url: &str, prefix: &str) -> RedisBackend {
    RedisBackend::builder(url)
        .prefix(prefix)
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
}

#[tokio::test]
async fn ping_and_prefixed_keys_on_the_shared_redis() {
    let prefix = support::unique("backend");
    let r = backend(&support::redis_url(), &prefix);
    let rtt = r.ping().await.unwrap();
    assert!(rtt < Duration::from_millis(300));

    let key = r.key("ns", "user:1");
    assert_eq!(key, format!("{prefix}:ns:{{user:1}}"));
    let _: () = r
        .query("set", cmd("SET").arg(&key).arg("v").arg("PX").arg(10_000))
        .await
        .unwrap();
    let v: String = r.query("get", cmd("GET").arg(&key)).await.unwrap();
    assert_eq!(v, "v");
    // Redis itself puts both keys of one tag on one slot (what Redis Cluster requires).
    let other = r.key_with_suffix("ns", "user:1", "index");
    let slot_a: i64 = r
        .query("keyslot", cmd("CLUSTER").arg("KEYSLOT").arg(&key))
        .await
        .unwrap_or(-1);
    let slot_b: i64 = r
        .query("keyslot", cmd("CLUSTER").arg("KEYSLOT").arg(&other))
        .await
        .unwrap_or(-2);
    if slot_a >= 0 {
        assert_eq!(slot_a, slot_b, "hash tags must pin both keys to one slot");
    }
    let _: i64 = r.query("del", cmd("DEL").arg(&key)).await.unwrap();
}

#[tokio::test]
async fn concurrent_calls_share_one_multiplexed_connection() {
    let r = backend(&support::redis_url(), &support::unique("mux"));
    let key = r.key("counter", "c");
    let script = Script::new("return redis.call('INCR', KEYS[1])");
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let r = r.clone();
        let key = key.clone();
        let script = script.clone();
        tasks.push(tokio::spawn(async move {
            r.invoke::<i64>("incr", &script.key(&key)).await.unwrap()
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=200).collect::<Vec<i64>>(),
        "every INCR ran exactly once"
    );
    // One connection: the clients Redis sees from us did not grow with the task count.
    let clients: String = r.query("client", cmd("CLIENT").arg("LIST")).await.unwrap();
    assert!(
        clients.lines().count() < 50,
        "clients: {}",
        clients.lines().count()
    );
    let _: i64 = r.query("del", cmd("DEL").arg(&key)).await.unwrap();
}

#[tokio::test]
async fn scripts_survive_script_flush_and_restart() {
    let mut server = support::RedisServer::start();
    let r = backend(&server.url(), "flush");
    let script = Script::new("return tonumber(ARGV[1]) * 2");
    let v: i64 = r.invoke("double", &script.arg(21)).await.unwrap();
    assert_eq!(v, 42);

    // NOSCRIPT after a flush: loaded again transparently.
    let _: String = r
        .query("flush", &cmd("SCRIPT").arg("FLUSH").clone())
        .await
        .unwrap();
    let v: i64 = r.invoke("double", &script.arg(5)).await.unwrap();
    assert_eq!(v, 10);

    // Redis dies: calls fail within the timeout, never hang.
    server.kill();
    for _ in 0..3 {
        let start = Instant::now();
        let err = r.invoke::<i64>("double", &script.arg(1)).await.unwrap_err();
        assert!(
            start.elapsed() < Duration::from_millis(900),
            "took {:?}: {err}",
            start.elapsed()
        );
    }

    // Redis comes back (with no scripts): the same backend reconnects by itself.
    server.restart();
    let v: i64 = support::eventually("reconnect", Duration::from_secs(10), || async {
        r.invoke::<i64>("double", &script.arg(4)).await.ok()
    })
    .await;
    assert_eq!(v, 8);
    assert!(r.ping().await.is_ok());
}

#[tokio::test]
async fn a_backend_can_be_built_while_redis_is_down() {
    let port = support::free_port();
    let r = backend(&format!("redis://127.0.0.1:{port}"), "lazy");
    assert!(r.ping().await.is_err());
    assert!(r.ping().await.unwrap_err().to_string().len() > 10);
}
