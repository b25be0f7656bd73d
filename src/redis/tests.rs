//! The shared Redis backend: key layout and configuration, then its call discipline
//! (timeouts, scripts, reconnection) against real Redis servers.

#[allow(unreachable_pub)]
#[path = "../../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use super::{RedisBackend, Script, cmd};

fn backend(url: &str, prefix: &str) -> RedisBackend {
    RedisBackend::builder(url)
        .prefix(prefix)
        .timeout(Duration::from_millis(250))
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
    // One connection: concurrent calls all report the same client id.
    let mut ids = Vec::new();
    for _ in 0..50 {
        let r = r.clone();
        ids.push(tokio::spawn(async move {
            r.query::<i64>("client_id", &cmd("CLIENT").arg("ID").clone())
                .await
                .unwrap()
        }));
    }
    let mut seen = std::collections::HashSet::new();
    for t in ids {
        seen.insert(t.await.unwrap());
    }
    assert_eq!(
        seen.len(),
        1,
        "concurrent calls used {} connections",
        seen.len()
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
    // The same through a caller-built EVALSHA.
    let _: String = r
        .query("flush", &cmd("SCRIPT").arg("FLUSH").clone())
        .await
        .unwrap();
    let evalsha = cmd("EVALSHA").arg(script.get_hash()).arg(0).arg(8).clone();
    let v: i64 = r.evalsha("double", &script, &evalsha).await.unwrap();
    assert_eq!(v, 16);
    let v: i64 = r.evalsha("double", &script, &evalsha).await.unwrap();
    assert_eq!(v, 16);

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

#[tokio::test]
async fn keys_of_one_tag_share_a_cluster_slot() {
    // A cluster-enabled node answers CLUSTER KEYSLOT with Redis's own hashing.
    let server = support::RedisServer::start_with(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
    ]);
    let r = backend(&server.url(), "app");
    let slot = |key: String| {
        let r = r.clone();
        async move {
            r.query::<i64>("keyslot", cmd("CLUSTER").arg("KEYSLOT").arg(key))
                .await
                .unwrap()
        }
    };
    let cases: &[(&str, &str)] = &[
        ("plain", "user:1"),
        ("empty tag", ""),
        ("braces in tag", "a}b{c"),
        ("open brace only", "{x"),
        ("percent", "%7D"),
    ];
    for (name, tag) in cases {
        let a = slot(r.key("ns", tag)).await;
        let b = slot(r.key_with_suffix("ns", tag, "index")).await;
        let c = slot(r.key_with_suffix("other{ns}", tag, "x}y")).await;
        // The Cluster connection's own hashing, which routes scripts, agrees.
        let key = r.key("ns", tag);
        assert_eq!(
            i64::from(super::direct::slot(key.as_bytes())),
            a,
            "case {name}: {key}"
        );
        assert_eq!(a, b, "case {name}: key and suffixed key on one slot");
        assert_eq!(a, c, "case {name}: the namespace does not move the slot");
    }
    // And different tags do spread over slots.
    let mut slots = std::collections::HashSet::new();
    for i in 0..50 {
        let key = r.key("ns", &format!("user:{i}"));
        let s = slot(key.clone()).await;
        assert_eq!(i64::from(super::direct::slot(key.as_bytes())), s, "{key}");
        slots.insert(s);
    }
    for key in [
        "foo", "", "{}", "a{}b{c}", "a{{b}}", "{a}{b}", "x{", "}{y}", "é{ü}",
    ] {
        assert_eq!(
            i64::from(super::direct::slot(key.as_bytes())),
            slot(key.to_owned()).await,
            "{key:?}"
        );
    }
    assert!(
        slots.len() > 30,
        "tags should hash to many slots, got {}",
        slots.len()
    );
}

#[tokio::test]
async fn a_redis_that_never_answers_times_out() {
    // Accepts connections and reads, never replies: the hung-server case.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let r = RedisBackend::builder(format!("redis://127.0.0.1:{port}"))
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let start = Instant::now();
    let err = r.ping().await.unwrap_err();
    let took = start.elapsed();
    assert!(err.is_timeout(), "want a timeout, got {err}");
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_millis(600),
        "took {took:?}"
    );
}

#[tokio::test]
async fn key_layout_is_hash_tagged_and_escaped() {
    let r = RedisBackend::builder("redis://127.0.0.1:1")
        .prefix("app")
        .build()
        .unwrap();
    assert_eq!(r.key("rl", "1.2.3.4"), "app:rl:{1.2.3.4}");
    assert_eq!(r.key("rl", "a}b{c"), "app:rl:{a%7Db%7Bc}");
    assert_eq!(r.key_with_suffix("s", "id", "u{1}"), "app:s:{id}:u%7B1%7D");
    assert_ne!(r.key("rl", "%7D"), r.key("rl", "}"));
    assert_eq!(r.key("rl", ""), "app:rl:{%}");
    assert_ne!(r.key("rl", ""), r.key("rl", "%"));
    assert_eq!(r.key("a:b", "t"), "app:a%3Ab:{t}");
    assert_eq!(r.key("n{s}", "t"), "app:n%7Bs%7D:{t}");
}

#[tokio::test]
async fn bad_config_names_the_setting() {
    let cases = [
        (
            "empty prefix",
            RedisBackend::builder("redis://127.0.0.1").prefix(""),
            "prefix",
        ),
        (
            "brace prefix",
            RedisBackend::builder("redis://127.0.0.1").prefix("a{b"),
            "prefix",
        ),
        (
            "space prefix",
            RedisBackend::builder("redis://127.0.0.1").prefix("a b"),
            "prefix",
        ),
        (
            "zero timeout",
            RedisBackend::builder("redis://127.0.0.1").timeout(Duration::ZERO),
            "timeout",
        ),
        ("bad url", RedisBackend::builder("http://nope"), "redis_url"),
        (
            "cluster without nodes",
            RedisBackend::cluster(Vec::<String>::new()),
            "redis_cluster_nodes",
        ),
        (
            "cluster with an empty node",
            RedisBackend::cluster(["redis://127.0.0.1:7000", " "]),
            "redis_cluster_nodes",
        ),
        (
            "cluster with a bad node",
            RedisBackend::cluster(["http://nope"]),
            "redis_url",
        ),
        ("garbage url", RedisBackend::builder("::::"), "redis_url"),
    ];
    for (name, b, setting) in cases {
        let err = b.build().unwrap_err();
        assert_eq!(err.setting(), setting, "case {name}");
    }
}

#[tokio::test]
async fn unreachable_redis_fails_within_the_timeout() {
    // Nothing listens on port 1.
    let r = RedisBackend::builder("redis://127.0.0.1:1")
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let start = std::time::Instant::now();
    let err = r.ping().await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_millis(800),
        "took {:?}",
        start.elapsed()
    );
    let _ = err.to_string();
    assert!(format!("{r:?}").contains("127.0.0.1:1"));
}

/// On the shared Cluster: commands reach keys on every master, a pipeline and a script
/// run on one slot, scripts are loaded again on every node after `SCRIPT FLUSH`, and pub/sub
/// reaches a subscriber whatever node it is on.
#[tokio::test]
async fn a_cluster_backend_serves_every_slot() {
    let prefix = support::unique("cl");
    let r = RedisBackend::cluster(support::redis_cluster_nodes())
        .prefix(&prefix)
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(r.is_cluster());
    assert!(
        r.address().starts_with("cluster 127.0.0.1:"),
        "{}",
        r.address()
    );
    assert!(r.ping().await.is_ok());
    // Keys spread over the three masters.
    let mut nodes = std::collections::HashSet::new();
    for i in 0..30 {
        let key = r.key("ns", &format!("user:{i}"));
        let _: () = r
            .query("set", cmd("SET").arg(&key).arg(i).arg("PX").arg(60_000))
            .await
            .unwrap();
        let v: i64 = r.query("get", cmd("GET").arg(&key)).await.unwrap();
        assert_eq!(v, i);
        let slot: u16 = r
            .query("keyslot", cmd("CLUSTER").arg("KEYSLOT").arg(&key))
            .await
            .unwrap();
        nodes.insert(slot / 5462);
    }
    assert_eq!(nodes.len(), 3, "keys on every master's slots");
    // A script touching two keys of one tag, and a declared-key EVALSHA.
    let script = Script::new(
        "redis.call('SET', KEYS[2], ARGV[1]) return redis.call('INCRBY', KEYS[1], ARGV[1])",
    );
    let (a, b) = (r.key("ns", "t"), r.key_with_suffix("ns", "t", "x"));
    let v: i64 = r
        .invoke("two", script.key(&a).key(&b).arg(5))
        .await
        .unwrap();
    assert_eq!(v, 5);
    // SCRIPT FLUSH reaches every node; the next call loads the script where it runs.
    let _: () = r
        .query("flush", &cmd("SCRIPT").arg("FLUSH").clone())
        .await
        .unwrap();
    let evalsha = cmd("EVALSHA")
        .arg(script.get_hash())
        .arg(2)
        .arg(&a)
        .arg(&b)
        .arg(2)
        .clone();
    let v: i64 = r.evalsha("two", &script, &evalsha).await.unwrap();
    assert_eq!(v, 7);
    // Keys of different slots in one script are refused: the layers never send one.
    let cross = Script::new("return redis.call('GET', KEYS[2])");
    let err = r
        .invoke::<Option<String>>("cross", cross.key(r.key("ns", "a")).key(r.key("ns", "b")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CrossSlot"), "{err}");
    // A message published through the cluster connection reaches a subscriber.
    let channel = r.channel("news");
    let pubsub = r.subscribe(&channel).await.unwrap();
    let mut messages = pubsub.into_on_message();
    let heard = async {
        use futures_util::StreamExt;
        messages
            .next()
            .await
            .map(|m| m.get_payload::<String>().unwrap())
    };
    let publish = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n: i64 = r
            .query("publish", cmd("PUBLISH").arg(&channel).arg("hello"))
            .await
            .unwrap();
        n
    };
    let (heard, _) = tokio::join!(tokio::time::timeout(Duration::from_secs(2), heard), publish);
    assert_eq!(heard.unwrap().as_deref(), Some("hello"));
}

/// `CLUSTER NODES` lines: masters that are up become connection settings at their
/// address (the seed's otherwise); replicas, failed or suspected masters and garbage do not.
#[cfg(feature = "cache")]
#[test]
fn cluster_nodes_lines_name_the_masters_to_subscribe_to() {
    let seed = ::redis::Client::open("redis://:secret@10.0.0.9:7000/")
        .unwrap()
        .get_connection_info()
        .clone();
    let cases = [
        (
            "07c3 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460",
            Some(30001),
        ),
        (
            "67ed 127.0.0.1:30002@40002,host-b master - 0 0 2 connected 5461-10922",
            Some(30002),
        ),
        (
            "e7d1 127.0.0.1:30004@40004 slave 07c3 0 0 1 connected",
            None,
        ),
        (
            "292f 127.0.0.1:30003@40003 master,fail - 0 0 3 disconnected",
            None,
        ),
        (
            "292f 127.0.0.1:30003@40003 master,fail? - 0 0 3 connected 10923-16383",
            None,
        ),
        ("", None),
        ("garbage", None),
        ("x 127.0.0.1:notaport@1 master - 0 0 0 connected", None),
    ];
    for (line, want) in cases {
        let got = super::master_address(line, &seed);
        let port = got.as_ref().and_then(|i| match i.addr() {
            ::redis::ConnectionAddr::Tcp(h, p) => {
                assert_eq!(h, "127.0.0.1");
                Some(*p)
            }
            _ => None,
        });
        assert_eq!(port, want, "{line:?}");
        if let Some(info) = got {
            assert_eq!(
                info.redis_settings().password(),
                Some("secret"),
                "the seed's credentials are kept"
            );
        }
    }
}

/// On a Cluster, scripts go straight to their slot's master once the connection has learnt
/// the slot map, on every master. A slot that moved since is followed through the Cluster
/// client (the call succeeds) and the map is learnt again, after which the slot's calls go
/// straight to its new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scripts_go_straight_to_their_master_and_follow_a_moved_slot() {
    let prefix = support::unique("direct");
    let r = RedisBackend::cluster(support::redis_cluster_nodes())
        .prefix(&prefix)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let super::Conn::Cluster(conn) = &r.inner.conn else {
        panic!("a Cluster backend")
    };
    // Reads its key and answers its argument: the test writes no key, so that a slot it
    // used can be moved (a master refuses to give up a slot that holds keys).
    let script = Script::new("return redis.call('EXISTS', KEYS[1]) + tonumber(ARGV[1])");
    let call = |key: &str, n: i64| {
        cmd("EVALSHA")
            .arg(script.get_hash())
            .arg(1)
            .arg(key)
            .arg(n)
            .clone()
    };
    let first = r.key("ns", "first");
    assert_eq!(
        r.evalsha::<i64>("t", &script, &call(&first, 1))
            .await
            .unwrap(),
        1
    );
    support::eventually("the slot map", Duration::from_secs(5), || async {
        (conn.counts().1 >= 1).then_some(())
    })
    .await;

    // Keys on every master: each call answered on the direct path.
    let (answered, _) = conn.counts();
    let mut masters = std::collections::HashSet::new();
    for i in 0..30 {
        let key = r.key("ns", &format!("user:{i}"));
        assert_eq!(
            r.evalsha::<i64>("t", &script, &call(&key, i))
                .await
                .unwrap(),
            i
        );
        masters.insert(super::direct::slot(key.as_bytes()) / 5462);
    }
    assert_eq!(masters.len(), 3, "keys on every master's slots");
    assert_eq!(conn.counts().0, answered + 30, "every call went straight");

    // Move one key's slot to another master behind the connection's back.
    let (tag, _) = support::cluster_empty_slot_tag("moved").await;
    let key = r.key("ns", &tag);
    let slot = super::direct::slot(key.as_bytes());
    assert_eq!(
        r.evalsha::<i64>("t", &script, &call(&key, 7))
            .await
            .unwrap(),
        7
    );
    let all = support::cluster_masters(slot).await;
    let owner = all.iter().find(|m| m.2).unwrap().0.clone();
    let other = all.iter().find(|m| !m.2).unwrap().0.clone();
    support::assign_slot(slot, &other, &all).await;
    let (answered, learnt) = conn.counts();
    let followed = r.evalsha::<i64>("t", &script, &call(&key, 8)).await;
    let after = conn.counts();
    // Calls keep succeeding until the map is learnt again and the slot's calls go
    // straight to its new master.
    let relearnt = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let before = conn.counts();
            let v = r.evalsha::<i64>("t", &script, &call(&key, 9)).await;
            if v.is_err() || (conn.counts().0 > before.0 && conn.counts().1 > learnt) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    support::assign_slot(slot, &owner, &all).await;

    assert_eq!(followed.unwrap(), 8, "the moved slot's call is followed");
    assert_eq!(
        after.0, answered,
        "a redirected call is not answered directly"
    );
    assert_eq!(
        relearnt
            .expect("the slot map is learnt again within 5 s")
            .unwrap(),
        9
    );

    // A slot being migrated: its owner answers `ASK` for a key it does not hold, redis-rs
    // follows it to the importing master, and the map stands.
    let (tag, _) = support::cluster_empty_slot_tag("migrating").await;
    let key = r.key("ns", &tag);
    let slot = super::direct::slot(key.as_bytes());
    assert_eq!(
        r.evalsha::<i64>("t", &script, &call(&key, 1))
            .await
            .unwrap(),
        1
    );
    let all = support::cluster_masters(slot).await;
    let (source, target) = (
        all.iter().find(|m| m.2).unwrap().clone(),
        all.iter().find(|m| !m.2).unwrap().clone(),
    );
    let setslot = |url: String, args: Vec<String>| async move {
        let mut c = support::cluster_node(&url).await;
        let _: () = ::redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(args)
            .query_async(&mut c)
            .await
            .unwrap();
    };
    setslot(target.1.clone(), vec!["IMPORTING".into(), source.0.clone()]).await;
    setslot(source.1.clone(), vec!["MIGRATING".into(), target.0.clone()]).await;
    let before = conn.counts();
    let asked = r.evalsha::<i64>("t", &script, &call(&key, 2)).await;
    // Time for a refresh the call might have started to finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = conn.counts();
    let map_stood = conn.has_map();
    setslot(source.1.clone(), vec!["STABLE".into()]).await;
    setslot(target.1.clone(), vec!["STABLE".into()]).await;
    assert_eq!(asked.unwrap(), 2, "the migrating slot's call is followed");
    assert_eq!(after.0, before.0, "an `ASK` is not answered directly");
    assert!(
        map_stood && after.1 == before.1,
        "the map stands after an `ASK`, and is not learnt again"
    );
    assert_eq!(
        r.evalsha::<i64>("t", &script, &call(&key, 3))
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        conn.counts().0,
        after.0 + 1,
        "and the next call goes straight"
    );
}

/// The last resort after a second `NOSCRIPT` (a slot that moved under a Cluster client):
/// the call sent as `EVAL` with the script's source runs the same script with the same keys
/// and arguments; `evalsha` takes it when loading the script did not make `EVALSHA` work.
#[tokio::test]
async fn an_evalsha_sent_as_eval_runs_the_same_script() {
    let r = backend(&support::redis_url(), &support::unique("eval"));
    let script = Script::new("return {KEYS[1], KEYS[2], ARGV[1], ARGV[2], #ARGV}");
    let (a, b) = (r.key("ns", "a"), r.key("ns", "b"));
    let call = |script: &Script| {
        cmd("EVALSHA")
            .arg(script.get_hash())
            .arg(2)
            .arg(&a)
            .arg(&b)
            .arg("x")
            .arg(b"\xff\x00".as_slice())
            .clone()
    };
    let expected = (
        a.clone(),
        b.clone(),
        "x".to_owned(),
        vec![0xff_u8, 0],
        2_i64,
    );
    let eval = super::as_eval(&call(&script), &script);
    let got: (String, String, String, Vec<u8>, i64) = r.query("eval", &eval).await.unwrap();
    assert_eq!(got, expected);
    // A script whose SHA-1 names source nobody loads: `SCRIPT LOAD` of its source never
    // makes its `EVALSHA` work, as on a Cluster where the load and the call reach
    // different nodes, so only the `EVAL` answers.
    let unloadable = Script {
        hash: Script::new("return 'never loaded'").hash.clone(),
        code: script.code.clone(),
    };
    let got: (String, String, String, Vec<u8>, i64) = r
        .evalsha("evalsha", &unloadable, &call(&unloadable))
        .await
        .unwrap();
    assert_eq!(got, expected);
}
