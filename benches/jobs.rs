//! Background jobs on one Redis, beside apalis with its Redis backend (apalis-redis)
//! doing the same work in the same run: no-op jobs with a small JSON payload.
//!
//! - `jobs/enqueue-C`: C producers each enqueue one job at a time (awaiting each), until
//!   the sample's jobs are in; the time per job.
//! - `jobs/process-C`: the sample's jobs are enqueued first (not timed); then a worker
//!   pool of concurrency C starts and drains them; the time per job, from the pool's
//!   start to the last job's end.
//!
//! Each system gets a fresh queue per sample. Both fetch up to max(10, C) jobs at a time
//! (apalis's default batch is 10; the pool's `batch`); apalis runs with its concurrency
//! layer at C, the pool with `concurrency(C)`; everything else is each one's default.
//!
//!   `jobs/enqueue-1/ping-floor` is one caller awaiting a `PING` at a time on the same
//!   backend: the round trip every one-producer enqueue waits for, with no job in it.
//! - `jobs/enqueue-bulk-100`: one producer enqueues the sample's jobs 100 per call
//!   (`Queue::enqueue_all`; apalis's `push_bulk`).
//!
//! Before the groups, one pass per system counts the calls the client made to Redis per
//! job (Redis `MONITOR`; commands run inside Lua scripts excluded, a `MULTI`/`EXEC` block
//! counted once) and prints them, then Redis's own CPU time (`INFO cpu`) per job enqueued
//! by one producer and by 32.
//!
//! Run: `cargo bench --bench jobs --all-features` (needs Redis at `TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::{BoxDynError, TaskSink, WorkerBuilder, WorkerBuilderExt, WorkerContext};
use criterion::{Criterion, criterion_group};
use serde::{Deserialize, Serialize};
use tower_scale::jobs::{Queue, RedisJobStore, Worker};
use tower_scale::redis::RedisBackend;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Email {
    to: String,
    n: u64,
}

fn email(n: u64) -> Email {
    Email {
        to: "someone@example.com".into(),
        n,
    }
}

/// Jobs per call in the bulk-enqueue group.
const BULK: usize = 100;

static SEQ: AtomicU64 = AtomicU64::new(0);

fn fresh(name: &str) -> String {
    format!(
        "bench-{name}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes what a sample left in the shared Redis: every key naming this process's
/// bench queues (untimed).
async fn clean(url: &str) {
    let mut c = common::raw_redis(url).await;
    let pattern = format!("*bench-*-{}-*", std::process::id());
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut c)
                .await
                .unwrap();
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

/// Redis's own CPU time so far, user and system (`INFO cpu`), in seconds.
async fn redis_cpu(url: &str) -> f64 {
    let mut c = common::raw_redis(url).await;
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut c)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_user:")
                .or_else(|| l.strip_prefix("used_cpu_sys:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// Redis's CPU time per job, in microseconds, while `f` enqueued `n` jobs.
async fn redis_cpu_per_job<F: std::future::Future<Output = Duration>>(
    url: &str,
    n: u64,
    f: F,
) -> f64 {
    let before = redis_cpu(url).await;
    f.await;
    let after = redis_cpu(url).await;
    clean(url).await;
    (after - before) * 1e6 / n as f64
}

/// Runs a timed sample, then cleans up after it.
async fn after(sample: impl std::future::Future<Output = Duration>, url: &str) -> Duration {
    let took = sample.await;
    clean(url).await;
    took
}

struct Ours {
    backend: RedisBackend,
}

impl Ours {
    fn queue(&self) -> Queue<Email> {
        Queue::builder(fresh("ts"))
            .store(RedisJobStore::new(self.backend.clone()))
            .retention(Duration::from_secs(60))
            .build()
            .unwrap()
    }

    async fn enqueue(&self, n: u64, producers: u64) -> Duration {
        let q = self.queue();
        let start = Instant::now();
        let tasks: Vec<_> = (0..producers)
            .map(|p| {
                let q = q.clone();
                tokio::spawn(async move {
                    for i in (p..n).step_by(producers as usize) {
                        q.enqueue(&email(i)).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed()
    }

    /// One caller awaiting `n` `PING`s in turn on the backend the queue uses: the round
    /// trip (runtime, connection, Redis) that one producer waits for on every enqueue,
    /// with no job in it.
    async fn ping(&self, n: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            self.backend.ping().await.unwrap();
        }
        start.elapsed()
    }

    async fn enqueue_bulk(&self, n: u64) -> Duration {
        let q = self.queue();
        let jobs: Vec<Email> = (0..n).map(email).collect();
        let start = Instant::now();
        for chunk in jobs.chunks(BULK) {
            q.enqueue_all(chunk, tower_scale::jobs::Enqueue::new())
                .await
                .unwrap();
        }
        start.elapsed()
    }

    async fn process(&self, n: u64, concurrency: usize) -> Duration {
        let q = self.queue();
        fill(n, |i| {
            let q = q.clone();
            async move {
                q.enqueue(&email(i)).await.unwrap();
            }
        })
        .await;
        let done = Arc::new(AtomicU64::new(0));
        let all = Arc::new(tokio::sync::Notify::new());
        let start = Instant::now();
        let (d, a) = (Arc::clone(&done), Arc::clone(&all));
        let pool = Worker::builder(q)
            .concurrency(concurrency)
            .batch(concurrency.max(10))
            .spawn(move |job| {
                std::hint::black_box(job.payload());
                if d.fetch_add(1, Ordering::SeqCst) + 1 == n {
                    a.notify_one();
                }
                async { Ok::<_, std::convert::Infallible>(()) }
            });
        all.notified().await;
        let took = start.elapsed();
        pool.shutdown(Duration::from_secs(5)).await;
        took
    }
}

struct Apalis {
    conn: apalis_redis::ConnectionManager,
}

impl Apalis {
    fn storage(&self, concurrency: usize) -> apalis_redis::RedisStorage<Email> {
        let config = apalis_redis::Config::default()
            .queue(fresh("apalis"))
            .batch_size(concurrency.max(10));
        apalis_redis::RedisStorage::new(self.conn.clone()).with_config(config)
    }

    async fn enqueue(&self, n: u64, producers: u64) -> Duration {
        let storage = self.storage(10);
        let start = Instant::now();
        let tasks: Vec<_> = (0..producers)
            .map(|p| {
                let mut s = storage.clone();
                tokio::spawn(async move {
                    for i in (p..n).step_by(producers as usize) {
                        s.push(email(i)).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed()
    }

    async fn enqueue_bulk(&self, n: u64) -> Duration {
        let mut storage = self.storage(10);
        let jobs: Vec<Email> = (0..n).map(email).collect();
        let start = Instant::now();
        for chunk in jobs.chunks(BULK) {
            storage.push_bulk(chunk.to_vec()).await.unwrap();
        }
        start.elapsed()
    }

    async fn process(&self, n: u64, concurrency: usize) -> Duration {
        let storage = self.storage(concurrency);
        fill(n, |i| {
            let mut s = storage.clone();
            async move {
                s.push(email(i)).await.unwrap();
            }
        })
        .await;
        let done = Arc::new(AtomicU64::new(0));
        let d = Arc::clone(&done);
        let handler = move |job: Email, wrk: WorkerContext| {
            let d = Arc::clone(&d);
            async move {
                std::hint::black_box(job);
                if d.fetch_add(1, Ordering::SeqCst) + 1 == n {
                    let _ = wrk.stop();
                }
                Ok::<_, BoxDynError>(())
            }
        };
        let start = Instant::now();
        let worker = WorkerBuilder::new(fresh("apalis-worker"))
            .backend(storage)
            .concurrency(concurrency)
            .build(handler);
        // apalis's run sometimes ends with an error after `stop` (seen at concurrency
        // 32); the sample counts only if every job ran.
        if let Err(e) = worker.run().await {
            eprintln!("apalis: the worker's run ended with an error: {e}");
        }
        let took = start.elapsed();
        assert!(
            done.load(Ordering::SeqCst) >= n,
            "apalis ran {} of {n} jobs",
            done.load(Ordering::SeqCst)
        );
        took
    }
}

/// Enqueues `n` jobs, 32 at a time (untimed set-up).
async fn fill<F, Fut>(n: u64, push: F)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut batch = Vec::new();
    for i in 0..n {
        batch.push(tokio::spawn(push(i)));
        if batch.len() == 32 {
            for t in batch.drain(..) {
                t.await.unwrap();
            }
        }
    }
    for t in batch {
        t.await.unwrap();
    }
}

/// Calls clients made to Redis while `f` ran: `MONITOR` lines not from a Lua script, with
/// a `MULTI` ... `EXEC` block (sent in one write, answered in one reply) counted once.
async fn calls_during<F: std::future::Future<Output = ()>>(url: &str, f: F) -> u64 {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let addr = url.trim_start_matches("redis://").trim_end_matches('/');
    let addr = addr.split('/').next().unwrap().to_owned();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    sock.write_all(b"MONITOR\r\n").await.unwrap();
    let mut lines = BufReader::new(sock).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("+OK"));
    let counter = tokio::spawn(async move {
        let mut n = 0u64;
        // Clients inside a transaction: their queued commands and EXEC are not counted.
        let mut in_multi = std::collections::HashSet::new();
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("\"bench-stop-marker\"") {
                break;
            }
            // `<time> [<db> <client>] "<COMMAND>" <args...>`
            let Some((client, rest)) = l.split_once(" [").and_then(|(_, r)| r.split_once("] "))
            else {
                continue;
            };
            if client.ends_with(" lua") {
                continue;
            }
            let command = rest.split('"').nth(1).unwrap_or("").to_ascii_uppercase();
            if in_multi.contains(client) {
                if command == "EXEC" || command == "DISCARD" {
                    in_multi.remove(client);
                }
                continue;
            }
            if command == "MULTI" {
                in_multi.insert(client.to_owned());
            }
            n += 1;
        }
        n
    });
    f.await;
    let mut c = common::raw_redis(url).await;
    let _: () = redis::cmd("ECHO")
        .arg("bench-stop-marker")
        .query_async(&mut c)
        .await
        .map(|_: String| ())
        .unwrap();
    counter.await.unwrap()
}

fn jobs(c: &mut Criterion) {
    let url = common::redis_url();
    let rt = common::runtime();
    let ready = rt.block_on(async {
        let backend = RedisBackend::builder(url.clone())
            .prefix("bench")
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        backend.ping().await.ok()?;
        let conn = apalis_redis::connect(url.clone()).await.ok()?;
        Some((Ours { backend }, Apalis { conn }))
    });
    let Some((ours, apalis)) = ready else {
        eprintln!("jobs skipped: no Redis at {url}");
        return;
    };

    // Round trips per job, once per system: 1,000 jobs enqueued, then run at
    // concurrency 8. Then Redis's own CPU time per job enqueued, one producer and 32.
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    if !quick {
        rt.block_on(async {
            const N: u64 = 1_000;
            let ts = calls_during(&url, async {
                ours.process(N, 8).await;
            })
            .await;
            let ap = calls_during(&url, async {
                apalis.process(N, 8).await;
            })
            .await;
            clean(&url).await;
            let mut report = vec![format!(
                "jobs: client calls to Redis per job (enqueue, fetch, finish; {N} jobs, concurrency 8): tower-scale {:.2}, apalis {:.2}",
                ts as f64 / N as f64,
                ap as f64 / N as f64
            )];
            const E: u64 = 20_000;
            for producers in [1, 32] {
                let ts = redis_cpu_per_job(&url, E, ours.enqueue(E, producers)).await;
                let ap = redis_cpu_per_job(&url, E, apalis.enqueue(E, producers)).await;
                report.push(format!(
                    "jobs: Redis CPU per job enqueued ({E} jobs, {producers} producers): tower-scale {ts:.1} us, apalis {ap:.1} us"
                ));
            }
            let report = report.join("\n");
            eprintln!("{report}");
            let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
            let _ = std::fs::create_dir_all(format!("{dir}/criterion"));
            let _ = std::fs::write(format!("{dir}/criterion/jobs_round_trips.txt"), report + "\n");
        });
    }

    let mut g = c.benchmark_group("jobs/enqueue-bulk-100");
    g.bench_function("tower-scale", |b| {
        b.iter_custom(|n| rt.block_on(after(ours.enqueue_bulk(n), &url)))
    });
    g.bench_function("apalis", |b| {
        b.iter_custom(|n| rt.block_on(after(apalis.enqueue_bulk(n), &url)))
    });
    g.finish();

    for conc in [1usize, 8, 32] {
        let mut g = c.benchmark_group(format!("jobs/enqueue-{conc}"));
        g.bench_function("tower-scale", |b| {
            b.iter_custom(|n| rt.block_on(after(ours.enqueue(n, conc as u64), &url)))
        });
        g.bench_function("apalis", |b| {
            b.iter_custom(|n| rt.block_on(after(apalis.enqueue(n, conc as u64), &url)))
        });
        if conc == 1 {
            g.bench_function("ping-floor", |b| {
                b.iter_custom(|n| rt.block_on(ours.ping(n)))
            });
        }
        g.finish();
        let mut g = c.benchmark_group(format!("jobs/process-{conc}"));
        g.bench_function("tower-scale", |b| {
            b.iter_custom(|n| rt.block_on(after(ours.process(n, conc), &url)))
        });
        g.bench_function("apalis", |b| {
            b.iter_custom(|n| rt.block_on(after(apalis.process(n, conc), &url)))
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(10);
    targets = jobs
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
