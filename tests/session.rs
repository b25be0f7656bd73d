//! Sessions through the layer, against the in-memory store and a real Redis.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::Notify;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};
use tower_scale::clock::Clock;
use tower_scale::session::store::{Op, Save, SessionStore};
use tower_scale::session::{MemoryStore, RedisSessionStore, Session, SessionError, SessionLayer};

type App = BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

fn text(code: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = code;
    r
}

fn error(e: SessionError) -> Response<Full<Bytes>> {
    text(e.status(), e.to_string())
}

/// The test application: each path does one thing with the session.
async fn handle(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let s = req.extensions().get::<Session>().cloned().unwrap();
    let path = req.uri().path().to_owned();
    let r = match path.as_str() {
        "/nothing" => Ok(text(StatusCode::OK, "untouched")),
        "/visits" => s
            .get::<i64>("visits")
            .await
            .map(|v| text(StatusCode::OK, v.unwrap_or(0).to_string())),
        "/inc" => s
            .increment("visits", 1)
            .await
            .map(|v| text(StatusCode::OK, v.to_string())),
        p if p.starts_with("/count/") => s
            .increment(&p["/count/".len()..], 1)
            .await
            .map(|v| text(StatusCode::OK, v.to_string())),
        "/both" => {
            // Two uses of one handle at once: the second waits for the lock the first
            // holds across its store call, then sees what the first did.
            let (added, read) = tokio::join!(s.increment("visits", 1), s.get::<i64>("visits"));
            added.and_then(|a| read.map(|r| text(StatusCode::OK, format!("{a},{r:?}"))))
        }
        "/me" => s.user().await.map(|u| match u {
            Some(u) => text(StatusCode::OK, u),
            None => text(StatusCode::UNAUTHORIZED, "no session"),
        }),
        "/logout" => {
            s.destroy().await;
            Ok(text(StatusCode::NO_CONTENT, ""))
        }
        "/everywhere" => s
            .log_out_everywhere()
            .await
            .map(|()| text(StatusCode::NO_CONTENT, "")),
        "/big" => s
            .insert("blob", &"x".repeat(20_000))
            .await
            .map(|()| text(StatusCode::OK, "stored")),
        p if p.starts_with("/gated-set/") || p.starts_with("/gated-count-set/") => {
            // Loads the session, says so, waits to be let go, then changes it: another
            // request of the session runs in between. `gated-count-set` first counts a
            // visit (an early write) and goes on whatever that answers.
            let (counts, name) = match p.strip_prefix("/gated-set/") {
                Some(name) => (false, name),
                None => (true, &p["/gated-count-set/".len()..]),
            };
            let (loaded, go) = gate(name);
            let read = s.get::<i64>("visits").await;
            loaded.notify_one();
            go.notified().await;
            if counts {
                let _ = s.increment("visits", 1).await;
            }
            match read {
                Ok(_) => s
                    .insert("note", &1)
                    .await
                    .map(|()| text(StatusCode::OK, "stored")),
                Err(e) => Err(e),
            }
        }
        p if p.starts_with("/login/") => s
            .login(&p["/login/".len()..])
            .await
            .map(|()| text(StatusCode::OK, "in")),
        _ => Ok(text(StatusCode::NOT_FOUND, "")),
    };
    Ok(r.unwrap_or_else(error))
}

/// (The handler has loaded its session, let it go on.)
type Gate = (Arc<Notify>, Arc<Notify>);

/// A named gate for `/gated-set/NAME`.
fn gate(name: &str) -> Gate {
    static GATES: LazyLock<Mutex<HashMap<String, Gate>>> = LazyLock::new(Mutex::default);
    GATES
        .lock()
        .unwrap()
        .entry(name.to_owned())
        .or_default()
        .clone()
}

fn app(
    store: impl SessionStore,
    tweak: impl FnOnce(
        tower_scale::session::SessionLayerBuilder,
    ) -> tower_scale::session::SessionLayerBuilder,
) -> App {
    let layer = tweak(SessionLayer::builder(store).secure(false))
        .build()
        .unwrap();
    BoxCloneSyncService::new(layer.layer(tower::service_fn(handle)))
}

/// A client with one cookie.
#[derive(Default, Clone)]
struct Client {
    cookie: Option<String>,
}

struct Reply {
    status: StatusCode,
    body: String,
    set_cookie: Option<String>,
}

impl Client {
    async fn call(&mut self, app: &App, path: &str) -> Reply {
        let mut req = Request::post(path);
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c.as_str());
        }
        let resp = app
            .clone()
            .oneshot(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        let set_cookie = resp
            .headers()
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().to_owned());
        if let Some(sc) = &set_cookie {
            let pair = sc.split(';').next().unwrap();
            self.cookie = (!sc.contains("Max-Age=0")).then(|| pair.to_owned());
        }
        let status = resp.status();
        let body = String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        Reply {
            status,
            body,
            set_cookie,
        }
    }
}

fn redis_store(url: &str) -> RedisSessionStore {
    RedisSessionStore::new(support::redis_backend(url, &support::unique("sess")))
}

/// Both stores, for the tests that hold for each.
type MakeApp = Box<dyn Fn() -> App>;

/// The in-process store, and the Redis store on one node and on a Cluster.
fn stores() -> Vec<(&'static str, MakeApp)> {
    let mem = MemoryStore::new();
    let mut all: Vec<(&'static str, MakeApp)> =
        vec![("memory", Box::new(move || app(mem.clone(), |b| b)))];
    for (name, backend) in support::redis_backends(&support::unique("sess")) {
        let store = RedisSessionStore::new(backend);
        all.push((name, Box::new(move || app(store.clone(), |b| b))));
    }
    all
}

#[tokio::test]
async fn a_session_made_on_one_instance_is_used_on_another() {
    for (name, make) in stores() {
        // Two "instances": two layers over one store.
        let (a, b) = (make(), make());
        let mut c = Client::default();
        let r = c.call(&a, "/inc").await;
        assert_eq!(r.status, StatusCode::OK, "{name}");
        let sc = r.set_cookie.unwrap();
        assert!(
            sc.contains("HttpOnly") && sc.contains("SameSite=Lax") && sc.contains("Path=/"),
            "{name}: {sc}"
        );
        assert_eq!(c.call(&b, "/inc").await.body, "2", "{name}");
        assert_eq!(c.call(&a, "/visits").await.body, "2", "{name}");
        // Unchanged: no new cookie.
        assert!(c.call(&b, "/visits").await.set_cookie.is_none(), "{name}");
    }
}

#[tokio::test]
async fn login_rotates_the_id_and_logout_ends_it() {
    for (name, make) in stores() {
        let app = make();
        let mut c = Client::default();
        c.call(&app, "/inc").await;
        let before = c.clone();
        assert_eq!(c.call(&app, "/login/ada").await.status, StatusCode::OK);
        assert_ne!(before.cookie, c.cookie, "{name}: login issues a new id");
        assert_eq!(c.call(&app, "/me").await.body, "ada", "{name}");
        assert_eq!(
            c.call(&app, "/visits").await.body,
            "1",
            "{name}: values kept across login"
        );
        let mut old = before;
        assert_eq!(
            old.call(&app, "/me").await.status,
            StatusCode::UNAUTHORIZED,
            "{name}: the pre-login id is dead"
        );
        let r = c.call(&app, "/logout").await;
        assert!(
            r.set_cookie.unwrap().contains("Max-Age=0"),
            "{name}: cookie cleared"
        );
        assert_eq!(
            c.call(&app, "/me").await.status,
            StatusCode::UNAUTHORIZED,
            "{name}"
        );
    }
}

#[tokio::test]
async fn log_out_everywhere_ends_every_session_of_the_user() {
    for (name, make) in stores() {
        let app = make();
        let (mut laptop, mut phone, mut other) =
            (Client::default(), Client::default(), Client::default());
        laptop.call(&app, "/login/bob").await;
        phone.call(&app, "/login/bob").await;
        other.call(&app, "/login/eve").await;
        assert_eq!(
            phone.call(&app, "/everywhere").await.status,
            StatusCode::NO_CONTENT,
            "{name}"
        );
        assert_eq!(
            laptop.call(&app, "/me").await.status,
            StatusCode::UNAUTHORIZED,
            "{name}"
        );
        assert_eq!(
            other.call(&app, "/me").await.body,
            "eve",
            "{name}: other users untouched"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_increments_count_fifty() {
    for (name, make) in stores() {
        let app = make();
        let mut c = Client::default();
        c.call(&app, "/inc").await;
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (app, mut c) = (app.clone(), c.clone());
            tasks.push(tokio::spawn(async move { c.call(&app, "/inc").await }));
        }
        let mut seen = Vec::new();
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.body);
            seen.push(r.body.parse::<i64>().unwrap());
        }
        // Each request sees the total its own increment made: 50 distinct values.
        seen.sort_unstable();
        assert_eq!(seen, (2..=51).collect::<Vec<_>>(), "{name}");
        assert_eq!(c.call(&app, "/visits").await.body, "51", "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_uses_of_one_handle_at_once_take_turns() {
    for (name, make) in stores() {
        let app = make();
        let mut c = Client::default();
        c.call(&app, "/inc").await;
        let r = c.call(&app, "/both").await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "2,Some(2)"),
            "{name}"
        );
        assert_eq!(c.call(&app, "/visits").await.body, "2", "{name}");
    }
}

#[tokio::test]
async fn bad_cookies_are_no_session_and_big_sessions_are_refused() {
    for (name, make) in stores() {
        let app = make();
        for junk in [
            "id=".to_owned(),
            "id=not-hex".to_owned(),
            format!("id={}", "A".repeat(64)),
            format!("id={}", "0".repeat(64)),
            format!("id={}", "x".repeat(8192)),
            "id=1; id=2".to_owned(),
            ";;;=;".to_owned(),
        ] {
            let mut c = Client {
                cookie: Some(junk.clone()),
            };
            let r = c.call(&app, "/me").await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}: {junk:.40}");
            let r = c.call(&app, "/inc").await;
            assert_eq!(r.status, StatusCode::OK, "{name}");
            assert!(
                r.set_cookie.is_some(),
                "{name}: a fresh id, never the one sent"
            );
        }
        let mut c = Client::default();
        assert_eq!(
            c.call(&app, "/big").await.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{name}"
        );
    }
}

#[tokio::test]
async fn the_store_holds_no_raw_id() {
    let prefix = support::unique("sess");
    let backend = support::redis_backend(&support::redis_url(), &prefix);
    let app = app(RedisSessionStore::new(backend.clone()), |b| b);
    let mut c = Client::default();
    c.call(&app, "/login/zoe").await;
    c.call(&app, "/inc").await;
    let id = c
        .cookie
        .clone()
        .unwrap()
        .split('=')
        .nth(1)
        .unwrap()
        .to_owned();
    // Everything under the prefix: the session hash and the user's index, keys and values.
    let url = support::redis_url();
    let keys: Vec<String> = support::redis_raw(&url, &["KEYS", &format!("{prefix}:*")]).await;
    assert_eq!(keys.len(), 2, "one session, one user index: {keys:?}");
    let mut dump = format!("{keys:?}");
    for k in &keys {
        let kind: String = support::redis_raw(&url, &["TYPE", k]).await;
        let v: Vec<String> = if kind == "hash" {
            support::redis_raw(&url, &["HGETALL", k]).await
        } else {
            support::redis_raw(&url, &["ZRANGE", k, "0", "-1", "WITHSCORES"]).await
        };
        dump.push_str(&format!("{v:?}"));
    }
    assert!(dump.contains("zoe"), "the dump is real: {dump}");
    assert!(!dump.contains(&id), "the raw id is in Redis: {dump}");
}

#[tokio::test]
async fn untouched_requests_send_nothing_to_redis() {
    let server = support::RedisServer::start();
    let store = RedisSessionStore::new(support::redis_backend(&server.url(), "s"));
    let app = app(store, |b| b);
    let probe = server.url();
    // Redis counts the commands a script runs under their own names, so "every command"
    // is the sum over all, and round trips are the client's own: EVALSHA (or EVAL, and
    // SCRIPT LOAD after a flush).
    let stats = |only_client: bool| {
        let probe = probe.clone();
        async move {
            let info: String = support::redis_raw(&probe, &["INFO", "commandstats"]).await;
            info.lines()
                .filter(|l| {
                    !only_client
                        || l.starts_with("cmdstat_evalsha:")
                        || l.starts_with("cmdstat_eval:")
                        || l.starts_with("cmdstat_script")
                })
                .filter_map(|l| l.split("calls=").nth(1))
                .filter_map(|r| r.split(',').next()?.parse::<u64>().ok())
                .sum::<u64>()
        }
    };
    let calls = || stats(false);
    let trips = || stats(true);
    let mut c = Client::default();
    // Both scripts loaded (a first call meets NOSCRIPT and loads its script).
    c.call(&app, "/inc").await;
    c.call(&app, "/visits").await;
    let before = calls().await;
    for _ in 0..10 {
        assert_eq!(c.call(&app, "/nothing").await.status, StatusCode::OK);
    }
    // The INFO calls themselves are the only commands.
    assert_eq!(
        calls().await - before,
        1,
        "no command for untouched requests"
    );
    // Read-only: one round trip; modified: two.
    let before = trips().await;
    c.call(&app, "/visits").await;
    assert_eq!(trips().await - before, 1, "read: one EVALSHA");
    let before = trips().await;
    c.call(&app, "/inc").await;
    assert_eq!(trips().await - before, 2, "modified: load and save");
}

#[tokio::test]
async fn redis_down_is_503_where_the_session_is_needed_only() {
    let mut server = support::RedisServer::start();
    let backend = tower_scale::redis::RedisBackend::builder(server.url())
        .prefix("down")
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let app = app(RedisSessionStore::new(backend), |b| b);
    let mut c = Client::default();
    assert_eq!(c.call(&app, "/inc").await.status, StatusCode::OK);
    server.kill();
    assert_eq!(c.call(&app, "/nothing").await.status, StatusCode::OK);
    let r = c.call(&app, "/visits").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    server.restart();
    let app2 = app.clone();
    support::eventually("sessions to work again", Duration::from_secs(10), || {
        let (app, mut c) = (app2.clone(), c.clone());
        async move { (c.call(&app, "/inc").await.status == StatusCode::OK).then_some(()) }
    })
    .await;
}

/// With an idle timeout shorter than twice the default `touch_every` (1 min), reads push
/// the expiry back every half idle timeout: a session only read stays alive. (With the
/// minute kept, every read here would come before the next touch was due, and the
/// session would end 30 s after it was made.)
#[tokio::test(start_paused = true)]
async fn a_short_idle_timeout_brings_touch_every_down_with_it() {
    let store = MemoryStore::with_max_sessions(1000, Clock::tokio()).unwrap();
    let app = app(store, |b| b.idle_timeout(Duration::from_secs(30)));
    let mut c = Client::default();
    c.call(&app, "/inc").await;
    for i in 0..8 {
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(c.call(&app, "/visits").await.body, "1", "read {i}");
    }
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(c.call(&app, "/visits").await.body, "0", "idle timeout");
}

#[tokio::test(start_paused = true)]
async fn idle_and_absolute_timeouts() {
    let store = MemoryStore::with_max_sessions(1000, Clock::tokio()).unwrap();
    let app = app(store, |b| {
        b.idle_timeout(Duration::from_secs(60))
            .absolute_timeout(Duration::from_secs(300))
            .touch_every(Duration::from_secs(10))
    });
    let mut c = Client::default();
    c.call(&app, "/inc").await;
    // Used every 50 s: the idle timeout never passes...
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(50)).await;
        assert_eq!(c.call(&app, "/visits").await.body, "1");
    }
    // ...but the absolute one does (250 s so far; 300 s since creation at the next step).
    tokio::time::advance(Duration::from_secs(50)).await;
    assert_eq!(c.call(&app, "/visits").await.body, "0", "absolute timeout");
    // A fresh session left alone for longer than the idle timeout is gone.
    let mut d = Client::default();
    d.call(&app, "/inc").await;
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(d.call(&app, "/visits").await.body, "0", "idle timeout");
}

#[tokio::test]
async fn redis_idle_timeout_is_the_keys_ttl() {
    let app = app(redis_store(&support::redis_url()), |b| {
        b.idle_timeout(Duration::from_millis(600))
            .touch_every(Duration::from_millis(100))
    });
    let mut c = Client::default();
    c.call(&app, "/inc").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.call(&app, "/visits").await.body,
        "1",
        "still alive; touched"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        c.call(&app, "/visits").await.body,
        "1",
        "the touch pushed expiry back"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        c.call(&app, "/visits").await.body,
        "0",
        "idle past the timeout"
    );
}

#[test]
fn bad_configuration_is_an_error() {
    let bad: Vec<Box<dyn Fn() -> Result<SessionLayer, tower_scale::ConfigError>>> = vec![
        Box::new(|| {
            SessionLayer::builder(MemoryStore::new())
                .cookie_name("a b")
                .build()
        }),
        Box::new(|| {
            SessionLayer::builder(MemoryStore::new())
                .path("no-slash")
                .build()
        }),
        Box::new(|| {
            SessionLayer::builder(MemoryStore::new())
                .domain("a;b")
                .build()
        }),
        Box::new(|| {
            SessionLayer::builder(MemoryStore::new())
                .secure(false)
                .host_prefix(true)
                .build()
        }),
        Box::new(|| {
            SessionLayer::builder(MemoryStore::new())
                .secure(false)
                .same_site(tower_scale::session::SameSite::None)
                .build()
        }),
        Box::new(|| {
            SessionLayer::builder(MemoryStore::new())
                .idle_timeout(Duration::from_secs(10))
                .absolute_timeout(Duration::from_secs(5))
                .build()
        }),
        Box::new(|| {
            SessionLayer::builder(MemoryStore::new())
                .max_bytes(0)
                .build()
        }),
        // A session only read would end while in use.
        Box::new(|| {
            SessionLayer::builder(MemoryStore::new())
                .idle_timeout(Duration::from_secs(60))
                .touch_every(Duration::from_secs(60))
                .build()
        }),
        // Read every 30 s, it would be pushed back only at the 31st second: too late.
        Box::new(|| {
            SessionLayer::builder(MemoryStore::new())
                .idle_timeout(Duration::from_secs(60))
                .touch_every(Duration::from_secs(31))
                .build()
        }),
    ];
    for (i, b) in bad.iter().enumerate() {
        assert!(b().is_err(), "case {i}");
    }
    let ok = SessionLayer::builder(MemoryStore::new())
        .host_prefix(true)
        .build();
    assert!(ok.is_ok());
    let e = SessionLayer::builder(MemoryStore::new())
        .idle_timeout(Duration::from_secs(60))
        .touch_every(Duration::from_secs(90))
        .build()
        .err()
        .unwrap();
    assert!(e.to_string().contains("touch_every"), "{e}");
}

fn life() -> tower_scale::session::store::Lifetimes {
    tower_scale::session::store::Lifetimes {
        idle: Duration::from_secs(60),
        absolute: Duration::from_secs(600),
        touch_every: Duration::from_secs(10),
    }
}

fn save(key: &str, ops: Vec<Op>, user: Option<&str>, new: bool) -> Save {
    Save {
        key: key.to_owned(),
        renamed_from: None,
        ops,
        user: user.map(str::to_owned),
        owner: None,
        new,
        max_per_user: 64,
    }
}

/// Both stores, raw.
fn raw_stores() -> Vec<(&'static str, Box<dyn SessionStore>)> {
    let mut all: Vec<(&'static str, Box<dyn SessionStore>)> =
        vec![("memory", Box::new(MemoryStore::new()))];
    for (name, backend) in support::redis_backends(&support::unique("sess")) {
        all.push((name, Box::new(RedisSessionStore::new(backend))));
    }
    all
}

/// A change made by a request whose session ended while it ran (a concurrent login rotated
/// its id, or a logout ended it) is not written, and the client hears so: 409, not the
/// handler's 200. The cookie is left alone: clearing it could clear the one the
/// concurrent login just set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_session_that_ended_meanwhile_is_refused_not_lost_in_silence() {
    for (name, make) in stores() {
        for (how, path, slow_path) in [
            ("login", "/login/ada", "gated-set"),
            ("logout", "/logout", "gated-set"),
            ("login, then an increment", "/login/ada", "gated-count-set"),
        ] {
            let app = make();
            let mut c = Client::default();
            c.call(&app, "/inc").await;
            let gate_name =
                format!("{name}-{slow_path}-{how}-{}", rand_key()).replace([' ', ','], "-");
            let (loaded, go) = gate(&gate_name);
            let mut slow = c.clone();
            let slow_app = app.clone();
            let path_of_slow = format!("/{slow_path}/{gate_name}");
            let slow = tokio::spawn(async move { slow.call(&slow_app, &path_of_slow).await });
            loaded.notified().await;
            let other = c.call(&app, path).await;
            assert!(other.status.is_success(), "{name}, {how}: {}", other.body);
            go.notify_one();
            let r = slow.await.unwrap();
            assert_eq!(r.status, StatusCode::CONFLICT, "{name}, {how}: {}", r.body);
            assert!(
                r.set_cookie.is_none(),
                "{name}, {how}: the cookie is left alone: {:?}",
                r.set_cookie
            );
            if path == "/login/ada" {
                // The login's new id still works, and holds nothing of the lost write.
                assert_eq!(c.call(&app, "/me").await.body, "ada", "{name}");
                assert_eq!(c.call(&app, "/visits").await.body, "1", "{name}");
            }
        }
    }
}

/// The size cap holds for increments as for inserts: counters under keys of the
/// client's choosing cannot grow a session past `max_bytes`.
#[tokio::test]
async fn increments_are_held_to_the_size_cap_too() {
    let app = app(MemoryStore::new(), |b| b.max_bytes(64));
    let mut c = Client::default();
    let mut stored = 0;
    for i in 0..20 {
        let r = c.call(&app, &format!("/count/counter-{i:02}")).await;
        if r.status == StatusCode::PAYLOAD_TOO_LARGE {
            break;
        }
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "1"));
        stored += 1;
    }
    // Each counter is 10 bytes of key and 1 of value: five fit in 64, a sixth does not.
    assert_eq!(stored, 5);
    // An existing counter still counts, within the cap.
    let r = c.call(&app, "/count/counter-00").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "2"));
}

#[tokio::test]
async fn a_late_write_never_brings_a_session_back() {
    for (name, store) in raw_stores() {
        let k = format!("{:064x}", rand_key());
        assert!(
            store
                .save(
                    save(
                        &k,
                        vec![Op::Set("a".into(), "1".into())],
                        Some("alice"),
                        true
                    ),
                    life()
                )
                .await
                .unwrap()
                .applied
        );
        // Logged out everywhere while another request of the session was running...
        assert_eq!(store.destroy_user("alice").await.unwrap(), 1, "{name}");
        // ...whose write arrives now: dropped.
        let late = save(&k, vec![Op::Increment("visits".into(), 1)], None, false);
        let saved = store.save(late, life()).await.unwrap();
        assert!(!saved.applied && saved.counts.is_empty(), "{name}");
        assert_eq!(
            store.load(&k, life()).await.unwrap(),
            None,
            "{name}: still gone"
        );
        assert_eq!(
            store.destroy_user("alice").await.unwrap(),
            0,
            "{name}: nothing left to count"
        );
    }
}

fn rand_key() -> u128 {
    use std::hash::{BuildHasher, RandomState};
    let s = RandomState::new();
    (u128::from(s.hash_one(1u8)) << 64) | u128::from(s.hash_one(2u8))
}

#[tokio::test]
async fn increments_are_i64_in_both_stores() {
    for (name, store) in raw_stores() {
        let k = format!("{:064x}", rand_key());
        let ops = vec![
            Op::Set("max".into(), i64::MAX.to_string()),
            Op::Set("float".into(), "2.0".into()),
            Op::Set("sci".into(), "1e300".into()),
            Op::Set("text".into(), "\"5\"".into()),
            Op::Increment("max".into(), 1),
            Op::Increment("float".into(), 1),
            Op::Increment("sci".into(), 1),
            Op::Increment("text".into(), 1),
            Op::Increment("fresh".into(), -3),
        ];
        let saved = store.save(save(&k, ops, None, true), life()).await.unwrap();
        assert!(saved.applied, "{name}");
        assert_eq!(
            saved.counts,
            [i64::MAX, 1, 1, 1, -3],
            "{name}: what each left"
        );
        let r = store.load(&k, life()).await.unwrap().unwrap();
        let v = |f: &str| r.values.get(f).cloned().unwrap();
        assert_eq!(v("max"), i64::MAX.to_string(), "{name}: saturates");
        assert_eq!(v("float"), "1", "{name}: not an integer counts as 0");
        assert_eq!(v("sci"), "1", "{name}");
        assert_eq!(v("text"), "1", "{name}");
        assert_eq!(v("fresh"), "-3", "{name}");
    }
}

#[tokio::test]
async fn another_users_login_starts_afresh() {
    for (name, make) in stores() {
        let app = make();
        let mut c = Client::default();
        c.call(&app, "/login/alice").await;
        c.call(&app, "/inc").await;
        assert_eq!(
            c.call(&app, "/login/bob").await.status,
            StatusCode::OK,
            "{name}"
        );
        assert_eq!(c.call(&app, "/me").await.body, "bob", "{name}");
        assert_eq!(
            c.call(&app, "/visits").await.body,
            "0",
            "{name}: nothing of alice's"
        );
        // The same user logging in again keeps the session's values.
        c.call(&app, "/inc").await;
        c.call(&app, "/login/bob").await;
        assert_eq!(c.call(&app, "/visits").await.body, "1", "{name}");
        // An empty user is refused, as the client's error.
        assert_eq!(
            c.call(&app, "/login/").await.status,
            StatusCode::BAD_REQUEST,
            "{name}"
        );
    }
}

#[tokio::test]
async fn user_names_up_to_the_limit_are_taken_and_longer_ones_are_the_clients_error() {
    use tower_scale::session::MAX_USER_BYTES;
    for (name, make) in stores() {
        let app = make();
        let mut c = Client::default();
        let user = "u".repeat(MAX_USER_BYTES);
        let r = c.call(&app, &format!("/login/{user}")).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.body);
        assert_eq!(c.call(&app, "/me").await.body, user, "{name}");
        let long = format!("/login/{}", "u".repeat(MAX_USER_BYTES + 1));
        let r = c.call(&app, &long).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name}: {}", r.body);
    }
}

/// However often one user logs in, the user keeps at most `max_sessions_per_user`
/// sessions: the oldest end, and the user's index in Redis stays within the cap.
#[tokio::test]
async fn logins_past_the_per_user_cap_end_the_oldest_sessions() {
    let url = support::redis_url();
    let prefix = support::unique("sesscap");
    let redis = RedisSessionStore::new(support::redis_backend(&url, &prefix));
    let cases: Vec<(&str, App)> = vec![
        (
            "memory",
            app(MemoryStore::new(), |b| b.max_sessions_per_user(3)),
        ),
        ("redis", app(redis, |b| b.max_sessions_per_user(3))),
        (
            "cluster",
            app(
                RedisSessionStore::new(support::redis_cluster_backend(&prefix)),
                |b| b.max_sessions_per_user(3),
            ),
        ),
    ];
    for (name, app) in cases {
        let mut clients = vec![Client::default(); 5];
        for c in &mut clients {
            assert_eq!(c.call(&app, "/login/cap").await.status, StatusCode::OK);
            // Each session holds a value, as a real one would.
            assert_eq!(c.call(&app, "/inc").await.body, "1", "{name}");
        }
        let mut alive = Vec::new();
        for c in &mut clients {
            alive.push(c.call(&app, "/me").await.status == StatusCode::OK);
        }
        assert_eq!(alive, [false, false, true, true, true], "{name}");
        // A login flood from one client: still three at most.
        let mut flood = Client::default();
        for _ in 0..100 {
            flood.cookie = None;
            flood.call(&app, "/login/cap").await;
        }
        if name == "redis" {
            let index = format!("{prefix}:sessidx:{{cap}}");
            let n: u64 = support::redis_raw(&url, &["ZCARD", &index]).await;
            assert_eq!(n, 3, "{name}: the index holds the cap");
            let keys: Vec<String> =
                support::redis_raw(&url, &["KEYS", &format!("{prefix}:sess:*")]).await;
            assert_eq!(keys.len(), 3, "{name}: {keys:?}");
        }
        let mut alive = 0;
        for c in &mut clients {
            alive += usize::from(c.call(&app, "/me").await.status == StatusCode::OK);
        }
        assert_eq!(alive, 0, "{name}: the flood's sessions are the newest");
        assert_eq!(flood.call(&app, "/me").await.body, "cap", "{name}");
    }
}

/// A store that fails its next `failing` saves, then works: for what happens when a write
/// does not go through.
#[derive(Clone, Default)]
struct Flaky {
    inner: MemoryStore,
    failing: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl SessionStore for Flaky {
    fn load(
        &self,
        key: &str,
        life: tower_scale::session::store::Lifetimes,
    ) -> tower_scale::session::store::StoreFuture<Option<tower_scale::session::store::Record>> {
        self.inner.load(key, life)
    }

    fn save(
        &self,
        save: Save,
        life: tower_scale::session::store::Lifetimes,
    ) -> tower_scale::session::store::StoreFuture<tower_scale::session::store::Saved> {
        use std::sync::atomic::Ordering;
        let fail = self
            .failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Box::pin(std::future::ready(Err(
                tower_scale::StoreUnavailable::failed("connection reset"),
            )));
        }
        self.inner.save(save, life)
    }

    fn destroy(&self, key: &str) -> tower_scale::session::store::StoreFuture<()> {
        self.inner.destroy(key)
    }

    fn destroy_user(&self, user: &str) -> tower_scale::session::store::StoreFuture<u64> {
        self.inner.destroy_user(user)
    }
}

/// An increment is written at once, with the changes made before it; when the store
/// cannot take it the caller gets the error, and the layer's write after the handler does
/// not send the increment either.
#[tokio::test]
async fn an_increment_that_could_not_be_written_is_not_written_later() {
    let store = Flaky::default();
    let app = app(store.clone(), |b| b);
    let mut c = Client::default();
    assert_eq!(c.call(&app, "/inc").await.body, "1");
    store.failing.store(1, std::sync::atomic::Ordering::SeqCst);
    let r = c.call(&app, "/inc").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(
        c.call(&app, "/visits").await.body,
        "1",
        "not written after the handler"
    );
    assert_eq!(c.call(&app, "/inc").await.body, "2");
}

/// A response made from the request's session is that user's own. A response cache
/// inside the session layer stores it only if it says it may be shared; what never
/// touched the session is cached as usual.
#[tokio::test]
async fn a_response_cache_inside_keeps_what_a_session_made_to_its_user() {
    use tower_scale::cache::{CacheEngine, ResponseCacheLayer};
    async fn handler(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
        let s = req.extensions().get::<Session>().cloned().unwrap();
        let path = req.uri().path().to_owned();
        let user = || async { s.user().await.unwrap().unwrap_or_default() };
        Ok(match path.as_str() {
            "/mine" => text(StatusCode::OK, user().await),
            "/mine-shared" => {
                let mut r = text(StatusCode::OK, user().await);
                r.headers_mut()
                    .insert("cache-control", "public, max-age=60".parse().unwrap());
                r
            }
            "/plain" => text(StatusCode::OK, "plain"),
            // Stored for revalidation only (`max-age=0`, a validator); a HEAD answer names
            // the user without saying it may be shared; a revalidation names nobody.
            "/etagged" => {
                let mut r = if req
                    .headers()
                    .get("if-none-match")
                    .is_some_and(|v| v == "\"v1\"")
                {
                    text(StatusCode::NOT_MODIFIED, "")
                } else {
                    let head = req.method() == http::Method::HEAD;
                    let mut r = text(StatusCode::OK, if head { "" } else { "same" });
                    let h = r.headers_mut();
                    h.insert("x-user", user().await.parse().unwrap());
                    let cc = if head {
                        "max-age=0"
                    } else {
                        "public, max-age=0"
                    };
                    h.insert("cache-control", cc.parse().unwrap());
                    if head {
                        h.insert("content-length", "4".parse().unwrap());
                    }
                    r
                };
                r.headers_mut().insert("etag", "\"v1\"".parse().unwrap());
                r
            }
            p if p.starts_with("/login/") => {
                s.login(&p["/login/".len()..]).await.unwrap();
                text(StatusCode::OK, "in")
            }
            _ => text(StatusCode::NOT_FOUND, ""),
        })
    }
    let engine = CacheEngine::builder().build().unwrap();
    let svc = tower::ServiceBuilder::new()
        .layer(
            SessionLayer::builder(MemoryStore::new())
                .secure(false)
                .build()
                .unwrap(),
        )
        .map_response(|r: Response<tower_scale::cache::CacheBody<Full<Bytes>>>| {
            r.map(axum::body::Body::new)
        })
        .layer(ResponseCacheLayer::builder(&engine).build().unwrap())
        .service_fn(handler);
    let call_as = |method: http::Method, cookie: Option<String>, path: &'static str| {
        let svc = svc.clone();
        async move {
            let mut req = Request::builder().method(method).uri(path);
            if let Some(c) = cookie {
                req = req.header("cookie", c);
            }
            let res = svc
                .oneshot(req.body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap();
            let status = res
                .headers()
                .get("cache-status")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let cookie = res
                .headers()
                .get("set-cookie")
                .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
            let user = res
                .headers()
                .get("x-user")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (
                String::from_utf8(body.to_vec()).unwrap(),
                status,
                cookie,
                user,
            )
        }
    };
    let call =
        |cookie: Option<String>, path: &'static str| call_as(http::Method::GET, cookie, path);
    let ada = call(None, "/login/ada").await.2;
    let bob = call(None, "/login/bob").await.2;
    assert!(ada.is_some() && bob.is_some());
    assert_eq!(call(ada.clone(), "/mine").await.0, "ada");
    let (body, status, ..) = call(bob.clone(), "/mine").await;
    assert_eq!(body, "bob", "ada's page is not served to bob ({status})");
    assert!(!status.contains("hit"), "{status}");
    // What never touched the session is cached as usual...
    call(ada.clone(), "/plain").await;
    assert!(call(bob.clone(), "/plain").await.1.contains("hit"));
    // ...and so is what the origin says may be shared, session or not.
    assert_eq!(call(ada.clone(), "/mine-shared").await.0, "ada");
    let (body, status, ..) = call(bob.clone(), "/mine-shared").await;
    assert_eq!(
        (body.as_str(), status.contains("hit")),
        ("ada", true),
        "{status}"
    );
    // A HEAD answer made from bob's session, not marked shareable, does not update the
    // kept entry's fields: a later revalidation (by anyone) still serves ada's.
    assert_eq!(
        call(ada.clone(), "/etagged").await.3.as_deref(),
        Some("ada")
    );
    let head = call_as(http::Method::HEAD, bob.clone(), "/etagged").await;
    assert_eq!(head.3.as_deref(), Some("bob"), "{}", head.1);
    let (body, status, _, user) = call(None, "/etagged").await;
    assert_eq!(
        (body.as_str(), user.as_deref()),
        ("same", Some("ada")),
        "{status}"
    );
}
