//! Background jobs: every behaviour against both stores (in process and real Redis), then
//! what only Redis has (shared queues, a Redis restart with persistence).

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tower_scale::jobs::store::{JobStore, Lifetimes};
use tower_scale::jobs::{
    Backoff, Enqueue, JobError, JobId, JobState, JobStatus, MemoryJobStore, Queue, RedisJobStore,
    Worker,
};

use support::{eventually, redis_backend, redis_url, unique};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Task {
    n: u32,
    #[serde(default)]
    sleep_ms: u64,
}

fn task(n: u32) -> Task {
    Task { n, sleep_ms: 0 }
}

/// The two stores every behaviour runs against.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    Redis,
    Cluster,
}

const KINDS: [Kind; 3] = [Kind::Memory, Kind::Redis, Kind::Cluster];

fn store(kind: Kind) -> Arc<dyn JobStoreFactory> {
    match kind {
        Kind::Memory => Arc::new(MemoryJobStore::new()),
        Kind::Cluster => Arc::new(RedisJobStore::new(support::redis_cluster_backend(&unique(
            "jobs",
        )))),
        Kind::Redis => Arc::new(RedisJobStore::new(redis_backend(
            &redis_url(),
            &unique("jobs"),
        ))),
    }
}

/// Builds queues over one shared store.
trait JobStoreFactory: Send + Sync {
    fn queue(&self, name: &str, lease: Duration, retention: Duration) -> Queue<Task>;
}

impl<S: JobStore + Clone> JobStoreFactory for S {
    fn queue(&self, name: &str, lease: Duration, retention: Duration) -> Queue<Task> {
        Queue::builder(name)
            .store(self.clone())
            .lease(lease)
            .retention(retention)
            .max_attempts(3)
            .max_payload(4096)
            .build()
            .unwrap()
    }
}

fn queue(kind: Kind) -> Queue<Task> {
    store(kind).queue("q", Duration::from_secs(5), Duration::from_secs(60))
}

fn fast() -> Backoff {
    Backoff::exponential(Duration::from_millis(40), Duration::from_millis(200))
}

async fn finished(q: &Queue<Task>, id: &JobId) -> JobStatus {
    eventually("the job finishes", Duration::from_secs(10), || async {
        q.status(id)
            .await
            .unwrap()
            .filter(|s| s.state.is_finished())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_once_and_its_result_is_kept() {
    for kind in KINDS {
        let q = queue(kind);
        let runs = Arc::new(AtomicU32::new(0));
        let r = Arc::clone(&runs);
        let workers = Worker::builder(q.clone()).concurrency(2).spawn(move |job| {
            let r = Arc::clone(&r);
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                assert!(job.progress(50).await, "{kind:?}: progress while leased");
                Ok::<_, String>(job.payload().n * 2)
            }
        });
        let id = q.enqueue(&task(21)).await.unwrap();
        let s = finished(&q, &id).await;
        assert_eq!(s.state, JobState::Succeeded, "{kind:?}: {s:?}");
        assert_eq!(s.result_as::<u32>().unwrap(), 42, "{kind:?}");
        assert_eq!(
            (s.attempts, s.max_attempts, s.progress),
            (1, 3, Some(100)),
            "{kind:?}"
        );
        assert!(s.finished_at.unwrap() >= s.enqueued_at, "{kind:?}");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{kind:?}");
        let stats = q.stats().await.unwrap();
        assert_eq!(
            (stats.queued, stats.running, stats.dead),
            (0, 0, 0),
            "{kind:?}"
        );
        assert_eq!(
            workers.shutdown(Duration::from_secs(1)).await.handed_back,
            0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_with_backoff_then_succeed_or_die() {
    for kind in KINDS {
        let q = queue(kind);
        let seen: Arc<Mutex<HashMap<u32, Vec<Instant>>>> = Arc::default();
        let s2 = Arc::clone(&seen);
        let workers = Worker::builder(q.clone())
            .backoff(fast())
            .poll_interval(Duration::from_millis(10))
            .spawn(move |job| {
                let seen = Arc::clone(&s2);
                async move {
                    let n = job.payload().n;
                    seen.lock()
                        .unwrap()
                        .entry(n)
                        .or_default()
                        .push(Instant::now());
                    match (n, job.attempt()) {
                        // Job 1 fails twice, then succeeds on its last attempt.
                        (1, a) if a < 3 => Err(format!("flaky {a}")),
                        (1, _) => Ok("third time"),
                        // Job 2 always fails: dead after 3 attempts, with its last error.
                        (2, a) => Err(format!("broken {a}")),
                        // Job 3 panics.
                        _ => panic!("handler bug"),
                    }
                }
            });
        let ok = q.enqueue(&task(1)).await.unwrap();
        let bad = q.enqueue(&task(2)).await.unwrap();
        let panics = q
            .enqueue_with(&task(3), Enqueue::new().max_attempts(1))
            .await
            .unwrap()
            .id;

        let s = finished(&q, &ok).await;
        assert_eq!(
            (s.state, s.attempts),
            (JobState::Succeeded, 3),
            "{kind:?}: {s:?}"
        );
        assert_eq!(
            s.error.as_deref(),
            Some("flaky 2"),
            "{kind:?}: the last error stays"
        );
        let s = finished(&q, &bad).await;
        assert_eq!(
            (s.state, s.attempts),
            (JobState::Dead, 3),
            "{kind:?}: {s:?}"
        );
        assert_eq!(s.error.as_deref(), Some("broken 3"), "{kind:?}");
        let s = finished(&q, &panics).await;
        assert_eq!(s.state, JobState::Dead, "{kind:?}");
        assert!(
            s.error.unwrap().contains("panicked: handler bug"),
            "{kind:?}"
        );
        assert_eq!(q.stats().await.unwrap().dead, 2, "{kind:?}");

        // Backoff: attempt n+1 starts no earlier than half the nominal delay after n, and
        // not absurdly later (the poll interval is 10 ms).
        let times = seen.lock().unwrap()[&1].clone();
        for (n, pair) in times.windows(2).enumerate() {
            let gap = pair[1] - pair[0];
            let nominal = fast().nominal(n as u32 + 1);
            assert!(
                gap >= nominal / 2 && gap < nominal + Duration::from_millis(400),
                "{kind:?}: retry {n} after {gap:?}, nominal {nominal:?}"
            );
        }
        workers.shutdown(Duration::from_secs(1)).await;
    }
}

#[test]
fn backoff_doubles_up_to_its_cap() {
    let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1));
    let n: Vec<u64> = (1..=6).map(|a| b.nominal(a).as_millis() as u64).collect();
    assert_eq!(n, [100, 200, 400, 800, 1000, 1000]);
    assert_eq!(b.nominal(200), Duration::from_secs(1), "no overflow");
}

/// Jobs of one priority run in the order they were enqueued, however each was written: one
/// at a time, with an idempotency key (a script in Redis) or in a bulk enqueue. In Redis,
/// equal priorities share a score and the ready set orders them by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_priorities_run_in_enqueue_order() {
    for kind in KINDS {
        let q = queue(kind);
        for n in 0..40 {
            let options = if n % 5 == 0 {
                Enqueue::new().idempotency_key(format!("fifo-{n}"))
            } else {
                Enqueue::new()
            };
            q.enqueue_with(&task(n), options).await.unwrap();
        }
        let bulk: Vec<Task> = (40..80).map(task).collect();
        let ids = q.enqueue_all(&bulk, Enqueue::new()).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let o = Arc::clone(&order);
        let workers = Worker::builder(q.clone()).concurrency(1).spawn(move |job| {
            o.lock().unwrap().push(job.payload().n);
            async { Ok::<_, String>(()) }
        });
        finished(&q, &ids[39]).await;
        workers.shutdown(Duration::from_secs(1)).await;
        let order = order.lock().unwrap().clone();
        assert_eq!(order, (0..80).collect::<Vec<u32>>(), "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_jobs_wait_and_priorities_go_first() {
    for kind in KINDS {
        let q = queue(kind);
        let order = Arc::new(Mutex::new(Vec::new()));
        let delayed = q
            .enqueue_with(&task(9), Enqueue::new().delay(Duration::from_millis(600)))
            .await
            .unwrap()
            .id;
        assert_eq!(
            q.status(&delayed).await.unwrap().unwrap().state,
            JobState::Scheduled
        );
        for (n, p) in [(1, 0), (2, 5), (3, 0), (4, 9)] {
            q.enqueue_with(&task(n), Enqueue::new().priority(p))
                .await
                .unwrap();
        }
        let start = Instant::now();
        let o = Arc::clone(&order);
        let workers = Worker::builder(q.clone())
            .concurrency(1)
            .poll_interval(Duration::from_millis(20))
            .spawn(move |job| {
                let o = Arc::clone(&o);
                async move {
                    o.lock().unwrap().push((job.payload().n, start.elapsed()));
                    Ok::<_, String>(())
                }
            });
        finished(&q, &delayed).await;
        let order = order.lock().unwrap().clone();
        let ns: Vec<u32> = order.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            ns,
            [4, 2, 1, 3, 9],
            "{kind:?}: priority, then enqueue order, then the delayed one"
        );
        assert!(
            order[4].1 >= Duration::from_millis(550),
            "{kind:?}: delayed job ran at {:?}",
            order[4].1
        );
        workers.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_gives_the_first_job() {
    for kind in KINDS {
        let q = queue(kind);
        let a = q
            .enqueue_with(&task(1), Enqueue::new().idempotency_key("order-7"))
            .await
            .unwrap();
        let b = q
            .enqueue_with(&task(2), Enqueue::new().idempotency_key("order-7"))
            .await
            .unwrap();
        let c = q
            .enqueue_with(&task(3), Enqueue::new().idempotency_key("order-8"))
            .await
            .unwrap();
        assert!(a.created && !b.created && c.created, "{kind:?}");
        assert_eq!(a.id, b.id, "{kind:?}");
        assert_ne!(a.id, c.id, "{kind:?}");
        // Keys with braces and colons stay distinct (they are escaped into Redis keys).
        let d = q
            .enqueue_with(&task(4), Enqueue::new().idempotency_key("{x}:y"))
            .await
            .unwrap();
        let e = q
            .enqueue_with(&task(5), Enqueue::new().idempotency_key("{x}:y}"))
            .await
            .unwrap();
        assert!(d.created && e.created, "{kind:?}");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let workers = Worker::builder(q.clone()).spawn(move |job| {
            s.lock().unwrap().push(job.payload().n);
            async { Ok::<_, String>(()) }
        });
        finished(&q, &a.id).await;
        // After it finished, within the retention, the key still names it.
        let again = q
            .enqueue_with(&task(6), Enqueue::new().idempotency_key("order-7"))
            .await
            .unwrap();
        assert_eq!((again.id, again.created), (a.id.clone(), false), "{kind:?}");
        workers.shutdown(Duration::from_secs(1)).await;
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_unstable();
        assert_eq!(
            seen,
            [1, 3, 4, 5],
            "{kind:?}: job 2 and 6 were never separate jobs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_removed_after_the_retention() {
    for kind in KINDS {
        let q = store(kind).queue("short", Duration::from_secs(5), Duration::from_millis(300));
        let workers = Worker::builder(q.clone())
            .backoff(fast())
            .spawn(|job| async move {
                if job.payload().n == 0 {
                    Err("no")
                } else {
                    Ok(())
                }
            });
        let ok = q
            .enqueue_with(&task(1), Enqueue::new().idempotency_key("k"))
            .await
            .unwrap()
            .id;
        let dead = q
            .enqueue_with(&task(0), Enqueue::new().max_attempts(1))
            .await
            .unwrap()
            .id;
        finished(&q, &ok).await;
        finished(&q, &dead).await;
        eventually("both expire", Duration::from_secs(5), || async {
            (q.status(&ok).await.unwrap().is_none() && q.status(&dead).await.unwrap().is_none())
                .then_some(())
        })
        .await;
        // The idempotency key went with its job: the same key makes a new job now.
        let again = q
            .enqueue_with(&task(1), Enqueue::new().idempotency_key("k"))
            .await
            .unwrap();
        assert!(again.created && again.id != ok, "{kind:?}");
        finished(&q, &again.id).await;
        // The dead-letter set is trimmed too (by the workers' fetches).
        eventually("no dead letters", Duration::from_secs(5), || async {
            (q.stats().await.unwrap().dead == 0).then_some(())
        })
        .await;
        workers.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_died_is_taken_over_and_the_stale_worker_is_fenced() {
    for kind in KINDS {
        let name = unique("takeover");
        let st = store(kind);
        let q = st.queue(&name, Duration::from_millis(300), Duration::from_secs(60));
        let id = q.enqueue(&task(5)).await.unwrap();
        // A "worker" leases the job through the store and dies: it never renews.
        let raw = q.store();
        let life = Lifetimes::new(Duration::from_millis(300), Duration::from_secs(60));
        let leased = raw.fetch(&name, 1, "dead-worker", life).await.unwrap();
        assert_eq!(leased.jobs.len(), 1, "{kind:?}");
        assert_eq!(
            q.status(&id).await.unwrap().unwrap().state,
            JobState::Running
        );

        let start = Instant::now();
        let workers = Worker::builder(q.clone())
            .poll_interval(Duration::from_millis(20))
            .spawn(|job| async move { Ok::<_, String>(job.attempt()) });
        let s = finished(&q, &id).await;
        assert_eq!(s.state, JobState::Succeeded, "{kind:?}");
        assert_eq!(
            s.result_as::<u32>().unwrap(),
            2,
            "{kind:?}: the second attempt ran it"
        );
        assert!(
            start.elapsed() < Duration::from_millis(300 + 500),
            "{kind:?}: within the lease plus a margin"
        );
        // The dead worker comes back: it cannot overwrite the outcome.
        assert!(
            !raw.complete(&name, &id, "dead-worker", "\"late\"".into(), life)
                .await
                .unwrap()
        );
        assert!(!raw.renew(&name, &id, "dead-worker", life).await.unwrap());
        assert_eq!(
            q.status(&id).await.unwrap().unwrap().result.as_deref(),
            Some("2")
        );
        workers.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_short_jobs_and_hands_long_ones_back() {
    for kind in KINDS {
        let q = queue(kind);
        let started = Arc::new(AtomicU32::new(0));
        let s = Arc::clone(&started);
        let workers = Worker::builder(q.clone()).concurrency(2).spawn(move |job| {
            s.fetch_add(1, Ordering::SeqCst);
            let ms = job.payload().sleep_ms;
            async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, String>(())
            }
        });
        let short = q
            .enqueue(&Task {
                n: 1,
                sleep_ms: 200,
            })
            .await
            .unwrap();
        let long = q
            .enqueue(&Task {
                n: 2,
                sleep_ms: 60_000,
            })
            .await
            .unwrap();
        eventually("both start", Duration::from_secs(5), || async {
            (started.load(Ordering::SeqCst) == 2).then_some(())
        })
        .await;
        let t = Instant::now();
        let drained = workers.shutdown(Duration::from_millis(600)).await;
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{kind:?}: took {:?}",
            t.elapsed()
        );
        assert_eq!((drained.finished, drained.handed_back), (1, 1), "{kind:?}");
        assert_eq!(
            q.status(&short).await.unwrap().unwrap().state,
            JobState::Succeeded
        );
        let s = q.status(&long).await.unwrap().unwrap();
        assert_eq!(
            (s.state, s.attempts),
            (JobState::Queued, 0),
            "{kind:?}: back in line at once, attempt not counted"
        );
        // The next pool picks it up without waiting for a lease.
        let again = Worker::builder(q.clone()).spawn(|_| async { Ok::<_, String>("done") });
        let s = finished(&q, &long).await;
        assert_eq!((s.state, s.attempts), (JobState::Succeeded, 1), "{kind:?}");
        again.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_loses_nothing() {
    for kind in KINDS {
        let q = queue(kind);
        let big = Task { n: 1, sleep_ms: 0 };
        let huge: Queue<String> = Queue::builder("q")
            .store(MemoryJobStore::new())
            .max_payload(10)
            .build()
            .unwrap();
        match huge.enqueue(&"x".repeat(100)).await {
            Err(
                e @ JobError::TooLarge {
                    size: 102,
                    limit: 10,
                },
            ) => assert!(e.to_string().contains("limit")),
            other => panic!("{other:?}"),
        }
        for key in [String::new(), "k".repeat(300)] {
            let err = q
                .enqueue_with(&big, Enqueue::new().idempotency_key(key))
                .await
                .unwrap_err();
            assert!(matches!(err, JobError::Invalid(_)), "{kind:?}: {err}");
        }
        let err = q
            .enqueue_with(&big, Enqueue::new().max_attempts(0))
            .await
            .unwrap_err();
        assert!(matches!(err, JobError::Invalid(_)), "{err}");
        // Unknown and malformed ids.
        assert!(JobId::parse("nope").is_none());
        assert!(JobId::parse("../../etc/passwd").is_none());
        assert!(JobId::parse(&"A".repeat(32)).is_none(), "lowercase only");
        let unknown = JobId::parse(&"0".repeat(32)).unwrap();
        assert_eq!(q.status(&unknown).await.unwrap(), None, "{kind:?}");
        assert_eq!(
            q.stats().await.unwrap().queued,
            0,
            "{kind:?}: nothing was written"
        );
    }
    // A payload the worker's type cannot read goes straight to the dead letters.
    for kind in KINDS {
        let st = store(kind);
        let q = st.queue("typed", Duration::from_secs(5), Duration::from_secs(60));
        let raw: Queue<serde_json::Value> =
            Queue::builder("typed").store(q.store()).build().unwrap();
        let id = raw
            .enqueue(&serde_json::json!({"n": "not a number"}))
            .await
            .unwrap();
        let ran = Arc::new(AtomicU32::new(0));
        let r = Arc::clone(&ran);
        let workers = Worker::builder(q.clone()).spawn(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, String>(()) }
        });
        let s = finished(&q, &id).await;
        assert_eq!((s.state, s.attempts), (JobState::Dead, 1), "{kind:?}");
        assert!(s.error.unwrap().contains("cannot be read"), "{kind:?}");
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        workers.shutdown(Duration::from_secs(1)).await;
    }
}

#[test]
fn bad_queue_config_names_the_setting() {
    let b = || Queue::<Task>::builder("ok").store(MemoryJobStore::new());
    let cases = [
        (
            "empty name",
            Queue::<Task>::builder("").store(MemoryJobStore::new()),
            "queue",
        ),
        (
            "brace",
            Queue::<Task>::builder("a{b}").store(MemoryJobStore::new()),
            "queue",
        ),
        ("no store", Queue::<Task>::builder("q"), "store"),
        ("tiny lease", b().lease(Duration::from_millis(5)), "lease"),
        (
            "huge lease",
            b().lease(Duration::from_secs(2 * 24 * 3600)),
            "lease",
        ),
        (
            "endless retention",
            b().retention(Duration::MAX),
            "retention",
        ),
        ("zero retention", b().retention(Duration::ZERO), "retention"),
        ("zero attempts", b().max_attempts(0), "max_attempts"),
    ];
    for (name, builder, setting) in cases {
        assert_eq!(builder.build().unwrap_err().setting(), setting, "{name}");
    }
}

/// Two pools on one Redis queue ("two instances") share the work: every job runs, and an
/// idempotent effect (a set keyed by job id) is applied once per job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_on_one_redis_queue_share_every_job() {
    let st = store(Kind::Redis);
    let name = unique("shared");
    let qa = st.queue(&name, Duration::from_secs(5), Duration::from_secs(60));
    let qb = st.queue(&name, Duration::from_secs(5), Duration::from_secs(60));
    let runs = Arc::new(AtomicU32::new(0));
    let per_pool = [Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0))];
    let effects: Arc<Mutex<HashMap<JobId, u32>>> = Arc::default();
    let pool = |q: Queue<Task>, mine: Arc<AtomicU32>| {
        let (runs, effects) = (Arc::clone(&runs), Arc::clone(&effects));
        Worker::builder(q).concurrency(4).spawn(move |job| {
            runs.fetch_add(1, Ordering::SeqCst);
            mine.fetch_add(1, Ordering::SeqCst);
            effects
                .lock()
                .unwrap()
                .entry(job.id().clone())
                .or_insert(job.payload().n);
            async { Ok::<_, String>(()) }
        })
    };
    let (a, b) = (
        pool(qa.clone(), Arc::clone(&per_pool[0])),
        pool(qb.clone(), Arc::clone(&per_pool[1])),
    );
    const N: u32 = 2_000;
    for n in 0..N {
        if n % 2 == 0 {
            qa.enqueue(&task(n)).await.unwrap()
        } else {
            qb.enqueue(&task(n)).await.unwrap()
        };
    }
    eventually("every job ran", Duration::from_secs(30), || async {
        (effects.lock().unwrap().len() == N as usize).then_some(())
    })
    .await;
    eventually("the queue is empty", Duration::from_secs(5), || async {
        let s = qa.stats().await.unwrap();
        (s.queued + s.running + s.scheduled == 0).then_some(())
    })
    .await;
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
    let mut ns: Vec<u32> = effects.lock().unwrap().values().copied().collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..N).collect::<Vec<_>>());
    let (ran_a, ran_b) = (
        per_pool[0].load(Ordering::SeqCst),
        per_pool[1].load(Ordering::SeqCst),
    );
    assert!(
        ran_a > N / 10 && ran_b > N / 10,
        "both pools took a share: {ran_a} and {ran_b}"
    );
    let extra = runs.load(Ordering::SeqCst) - N;
    println!("{N} jobs, {extra} ran more than once");
    assert_eq!(extra, 0, "no worker died, so no job ran twice");
}

/// Redis killed and restarted (with an append-only file): the pool resumes by itself, no
/// job Redis persisted is lost, and it does not spin while Redis is away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_resume_after_a_redis_restart_and_lose_nothing_persisted() {
    let mut server =
        support::RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let backend = redis_backend(&server.url(), "restart");
    let q: Queue<Task> = Queue::builder("q")
        .store(RedisJobStore::new(backend))
        .lease(Duration::from_secs(2))
        .build()
        .unwrap();
    let done: Arc<Mutex<Vec<u32>>> = Arc::default();
    let d = Arc::clone(&done);
    let workers = Worker::builder(q.clone())
        .concurrency(2)
        .poll_interval(Duration::from_millis(20))
        .spawn(move |job| {
            d.lock().unwrap().push(job.payload().n);
            async { Ok::<_, String>(()) }
        });
    for n in 0..20 {
        q.enqueue(&task(n)).await.unwrap();
    }
    eventually("the first batch runs", Duration::from_secs(5), || async {
        (done.lock().unwrap().len() >= 20).then_some(())
    })
    .await;
    workers.shutdown(Duration::from_secs(1)).await;
    // Jobs written while no worker runs, then Redis crashes and comes back.
    let mut ids = Vec::new();
    for n in 100..150 {
        ids.push(q.enqueue(&task(n)).await.unwrap());
    }
    server.kill();
    let workers = {
        let d = Arc::clone(&done);
        Worker::builder(q.clone())
            .concurrency(2)
            .poll_interval(Duration::from_millis(20))
            .spawn(move |job| {
                d.lock().unwrap().push(job.payload().n);
                async { Ok::<_, String>(()) }
            })
    };
    // While Redis is down the pool backs off instead of spinning.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!workers.is_finished());
    server.restart();
    eventually(
        "every persisted job runs",
        Duration::from_secs(20),
        || async {
            let d = done.lock().unwrap();
            (100..150).all(|n| d.contains(&n)).then_some(())
        },
    )
    .await;
    for id in &ids {
        assert_eq!(
            q.status(id).await.unwrap().unwrap().state,
            JobState::Succeeded
        );
    }
    workers.shutdown(Duration::from_secs(1)).await;
}

/// A per-queue rate limit shared through Redis by two pools: job starts follow the quota
/// (20 per second, no burst: one every 50 ms), whatever the pools' concurrency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_rate_limit_is_shared_by_every_pool() {
    use tower_scale::rate_limit::{Quota, RedisStore};
    let prefix = unique("jobs-rl");
    let st = RedisJobStore::new(redis_backend(&redis_url(), &prefix));
    let q = st.queue("limited", Duration::from_secs(5), Duration::from_secs(60));
    let quota = Quota::new(20, Duration::from_secs(1))
        .unwrap()
        .burst(1)
        .unwrap();
    let starts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let pool = || {
        let s = Arc::clone(&starts);
        Worker::builder(q.clone())
            .concurrency(4)
            .poll_interval(Duration::from_millis(10))
            .rate_limit(
                &quota,
                RedisStore::new(redis_backend(&redis_url(), &prefix)),
            )
            .spawn(move |_| {
                s.lock().unwrap().push(Instant::now());
                async { Ok::<_, String>(()) }
            })
    };
    let (a, b) = (pool(), pool());
    for n in 0..20 {
        q.enqueue(&task(n)).await.unwrap();
    }
    eventually("every job ran", Duration::from_secs(10), || async {
        (starts.lock().unwrap().len() == 20).then_some(())
    })
    .await;
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
    let mut t = starts.lock().unwrap().clone();
    t.sort();
    // Eleven starts span at least ten emission intervals (500 ms), less scheduling slack.
    for w in t.windows(11) {
        let span = w[10] - w[0];
        assert!(
            span >= Duration::from_millis(430),
            "11 starts within {span:?}"
        );
    }
    let total = t[19] - t[0];
    assert!(
        total >= Duration::from_millis(850),
        "20 starts in {total:?}"
    );
}

/// A batch above the concurrency: the extra jobs wait in the pool; one that waited half
/// its lease goes back unstarted (its attempt not counted) rather than run on a short
/// lease; a shutdown hands the waiting ones back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_fetches_wait_in_the_pool_and_go_back_unstarted() {
    for kind in KINDS {
        let q = store(kind).queue(
            &unique("batch"),
            Duration::from_millis(400),
            Duration::from_secs(60),
        );
        let ids: Vec<JobId> = {
            let mut v = Vec::new();
            for n in 0..4 {
                v.push(q.enqueue(&Task { n, sleep_ms: 250 }).await.unwrap());
            }
            v
        };
        let pool = || {
            Worker::builder(q.clone())
                .concurrency(1)
                .batch(4)
                .poll_interval(Duration::from_millis(20))
                .spawn(|job| {
                    let ms = job.payload().sleep_ms;
                    async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok::<_, String>(job.attempt())
                    }
                })
        };
        let workers = pool();
        for id in &ids {
            let s = finished(&q, id).await;
            assert_eq!(
                (s.state, s.attempts),
                (JobState::Succeeded, 1),
                "{kind:?}: {s:?}"
            );
        }
        workers.shutdown(Duration::from_secs(1)).await;
        // Shutdown with jobs waiting in the pool: they are back in line at once.
        for n in 0..4 {
            q.enqueue(&Task { n, sleep_ms: 300 }).await.unwrap();
        }
        let workers = pool();
        eventually(
            "one fetch leases all four",
            Duration::from_secs(5),
            || async { (q.stats().await.unwrap().running == 4).then_some(()) },
        )
        .await;
        let drained = workers.shutdown(Duration::from_secs(2)).await;
        assert_eq!((drained.finished, drained.handed_back), (1, 3), "{kind:?}");
        let s = q.stats().await.unwrap();
        assert_eq!((s.queued, s.running), (3, 0), "{kind:?}");
    }
}

/// Concurrent enqueues go to the store together (one call for those that wait on
/// another): each caller still gets its own job, and one idempotency key one job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_are_batched_and_each_gets_its_answer() {
    for kind in KINDS {
        let q = queue(kind);
        let calls: Vec<_> = (0..200)
            .map(|n| {
                let q = q.clone();
                tokio::spawn(async move {
                    let key = (n % 4 == 0).then(|| "same-key".to_owned());
                    let opts = match key {
                        Some(k) => Enqueue::new().idempotency_key(k),
                        None => Enqueue::new(),
                    };
                    (n, q.enqueue_with(&task(n), opts).await.unwrap())
                })
            })
            .collect();
        let mut keyed = Vec::new();
        let mut plain = std::collections::HashSet::new();
        for c in calls {
            let (n, e) = c.await.unwrap();
            if n % 4 == 0 {
                keyed.push(e);
            } else {
                assert!(e.created, "{kind:?}");
                assert!(plain.insert(e.id), "{kind:?}: an id given twice");
            }
        }
        assert_eq!(keyed.iter().filter(|e| e.created).count(), 1, "{kind:?}");
        assert!(keyed.iter().all(|e| e.id == keyed[0].id), "{kind:?}");
        assert_eq!(q.stats().await.unwrap().queued, 151, "{kind:?}");
        for id in plain.iter().take(5) {
            assert_eq!(q.status(id).await.unwrap().unwrap().state, JobState::Queued);
        }
    }
}

/// Fencing, in the store: once a lease expired and another fetch took the job over, every
/// call under the old token changes nothing, and the new holder's calls work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_over_lease_fences_the_old_holder_out() {
    for kind in KINDS {
        let name = unique("fence");
        let q = store(kind).queue(&name, Duration::from_millis(200), Duration::from_secs(60));
        let st = q.store();
        let life = Lifetimes::new(Duration::from_millis(200), Duration::from_secs(60));
        let id = q.enqueue(&task(1)).await.unwrap();
        assert_eq!(st.fetch(&name, 1, "old", life).await.unwrap().jobs.len(), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let taken = st.fetch(&name, 1, "new", life).await.unwrap();
        assert_eq!((taken.taken_over, taken.jobs.len()), (1, 1), "{kind:?}");
        assert_eq!(taken.jobs[0].attempt, 2, "{kind:?}");
        // The old holder, while the new one holds the lease:
        assert!(
            !st.renew(&name, &id, "old", life).await.unwrap(),
            "{kind:?}"
        );
        assert!(
            !st.progress(&name, &id, "old", 50).await.unwrap(),
            "{kind:?}"
        );
        assert!(!st.release(&name, &id, "old").await.unwrap(), "{kind:?}");
        let failed = st
            .fail(&name, &id, "old", "late".into(), None, life)
            .await
            .unwrap();
        assert_eq!(
            failed,
            tower_scale::jobs::store::Failed::LeaseLost,
            "{kind:?}"
        );
        assert!(
            !st.complete(&name, &id, "old", "\"old\"".into(), life)
                .await
                .unwrap()
        );
        let many = tower_scale::jobs::store::Completion::new(id.clone(), "old", "\"old\"".into());
        assert_eq!(
            st.complete_many(&name, vec![many], life).await.unwrap(),
            [false]
        );
        let s = q.status(&id).await.unwrap().unwrap();
        assert_eq!(
            (s.state, s.progress, s.error),
            (JobState::Running, None, None),
            "{kind:?}"
        );
        // The new holder:
        assert!(st.renew(&name, &id, "new", life).await.unwrap(), "{kind:?}");
        assert!(
            st.progress(&name, &id, "new", 60).await.unwrap(),
            "{kind:?}"
        );
        let done = tower_scale::jobs::store::Completion::new(id.clone(), "new", "\"new\"".into());
        assert_eq!(
            st.complete_many(&name, vec![done], life).await.unwrap(),
            [true]
        );
        let s = q.status(&id).await.unwrap().unwrap();
        assert_eq!(
            (s.state, s.result.as_deref()),
            (JobState::Succeeded, Some("\"new\"")),
            "{kind:?}"
        );
    }
}

/// Jobs waiting in a pool go back before their lease runs out, so another instance starts
/// them on their first attempt (with one attempt each, a takeover would kill them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_jobs_go_back_before_another_instance_must_take_them_over() {
    for kind in KINDS {
        let st = store(kind);
        let name = unique("waiting");
        let q = st.queue(&name, Duration::from_millis(400), Duration::from_secs(60));
        let mut ids = Vec::new();
        for n in 0..4 {
            let opts = Enqueue::new().max_attempts(1);
            ids.push(
                q.enqueue_with(&Task { n, sleep_ms: 600 }, opts)
                    .await
                    .unwrap()
                    .id,
            );
        }
        let slow = |q: Queue<Task>, c: usize, batch: usize| {
            Worker::builder(q)
                .concurrency(c)
                .batch(batch)
                .poll_interval(Duration::from_millis(20))
                .spawn(|job| {
                    let ms = job.payload().sleep_ms;
                    async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok::<_, String>(job.attempt())
                    }
                })
        };
        // A takes all four (one runs, three wait); B, started a little later, is free.
        let a = slow(q.clone(), 1, 4);
        eventually("A leased all four", Duration::from_secs(5), || async {
            (q.stats().await.unwrap().running == 4).then_some(())
        })
        .await;
        let b = slow(
            st.queue(&name, Duration::from_millis(400), Duration::from_secs(60)),
            4,
            4,
        );
        for id in &ids {
            let s = finished(&q, id).await;
            assert_eq!(
                (s.state, s.attempts),
                (JobState::Succeeded, 1),
                "{kind:?}: {s:?}"
            );
        }
        a.shutdown(Duration::from_secs(1)).await;
        b.shutdown(Duration::from_secs(1)).await;
    }
}

/// A bulk enqueue: every job written (in store calls of up to 128), each with its own id;
/// a payload over the limit anywhere in the batch writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_all_writes_every_job_or_none() {
    for kind in KINDS {
        let q = queue(kind);
        let tasks: Vec<Task> = (0..300).map(task).collect();
        let ids = q
            .enqueue_all(&tasks, Enqueue::new().priority(3))
            .await
            .unwrap();
        assert_eq!(ids.len(), 300, "{kind:?}");
        // A store asked to write no jobs writes none and says so.
        assert!(
            q.store()
                .enqueue_many("q", Vec::new())
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            ids.iter().collect::<std::collections::HashSet<_>>().len(),
            300
        );
        assert_eq!(q.stats().await.unwrap().queued, 300, "{kind:?}");
        let s = q.status(&ids[299]).await.unwrap().unwrap();
        assert_eq!((s.state, s.max_attempts), (JobState::Queued, 3), "{kind:?}");

        let q2 = queue(kind);
        let mut bad = vec![task(1); 3];
        bad.push(Task { n: 2, sleep_ms: 0 });
        let big = Queue::<String>::builder("big")
            .store(q2.store())
            .max_payload(8)
            .build()
            .unwrap();
        let err = big
            .enqueue_all(&["ok".to_owned(), "x".repeat(50)], Enqueue::new())
            .await
            .unwrap_err();
        assert!(matches!(err, JobError::TooLarge { .. }), "{kind:?}: {err}");
        assert_eq!(
            big.stats().await.unwrap().queued,
            0,
            "{kind:?}: nothing written"
        );
        let err = q2
            .enqueue_all(&bad, Enqueue::new().idempotency_key("k"))
            .await
            .unwrap_err();
        assert!(matches!(err, JobError::Invalid(_)), "{kind:?}");

        let ran = Arc::new(AtomicU32::new(0));
        let r = Arc::clone(&ran);
        let w = Worker::builder(q.clone()).concurrency(8).spawn(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, String>(()) }
        });
        eventually("all ran", Duration::from_secs(10), || async {
            (ran.load(Ordering::SeqCst) == 300).then_some(())
        })
        .await;
        w.shutdown(Duration::from_secs(1)).await;
    }
}

/// A queue whose slot moved to another master after the client learned the slot map (a
/// reshard, or a failover seen from a client that has not refreshed yet): a plain enqueue
/// is a `MULTI`/`EXEC`, which Redis aborts on the redirect, and the store writes the job
/// through its script instead, which the client redirects. Nothing is lost, nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueues_follow_a_slot_that_moved() {
    // The queue's name is its keys' hash tag; its slot must hold no other test's keys.
    let (name, slot) = support::cluster_empty_slot_tag(&unique("moved")).await;
    let q = store(Kind::Cluster).queue(&name, Duration::from_secs(5), Duration::from_secs(60));
    // The client is connected and knows the slot map before the slot moves.
    assert_eq!(q.stats().await.unwrap().queued, 0);
    let all = support::cluster_masters(slot).await;
    let owner = all.iter().find(|m| m.2).unwrap().0.clone();
    let other = all.iter().find(|m| !m.2).unwrap().0.clone();
    support::assign_slot(slot, &other, &all).await;

    let one = q.enqueue(&task(1)).await;
    let many = q.enqueue_all(&[task(2), task(3)], Enqueue::new()).await;
    let queued = q.stats().await.map(|s| s.queued);

    // Put the slot back (its keys removed first: a node refuses to give up a slot it
    // holds keys in), whatever happened above.
    let target_url = &all.iter().find(|m| m.0 == other).unwrap().1;
    let mut target = support::cluster_node(target_url).await;
    let keys: Vec<String> = redis::cmd("CLUSTER")
        .arg("GETKEYSINSLOT")
        .arg(slot)
        .arg(1000)
        .query_async(&mut target)
        .await
        .unwrap();
    for k in &keys {
        let _: i64 = redis::cmd("DEL")
            .arg(k)
            .query_async(&mut target)
            .await
            .unwrap();
    }
    support::assign_slot(slot, &owner, &all).await;

    one.expect("a single plain enqueue after the move");
    assert_eq!(many.expect("a bulk enqueue after the move").len(), 2);
    assert_eq!(queued.unwrap(), 3);
}
