//! Background jobs across real processes on one Redis: two worker processes share a
//! queue, and one is killed (SIGKILL) mid-job.
//!
//! The worker processes are this test binary run again with `JOBS_WORKER_*` set: the
//! `worker_process` "test" below is the worker's main, and does nothing in a normal run.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tower_scale::jobs::{Queue, RedisJobStore, Worker};

use support::{eventually, redis_backend, redis_raw, redis_url, unique};

#[derive(Debug, Serialize, Deserialize)]
struct Effect {
    n: u32,
    sleep_ms: u64,
}

fn queue(url: &str, prefix: &str, lease: Duration) -> Queue<Effect> {
    Queue::builder("effects")
        .store(RedisJobStore::new(redis_backend(url, prefix)))
        .lease(lease)
        .build()
        .unwrap()
}

/// The worker process: 4 workers; each job applies its effect idempotently (a set keyed
/// by job id) and counts its run (a plain counter), in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_process() {
    let Ok(prefix) = std::env::var("JOBS_WORKER_PREFIX") else {
        return;
    };
    let url = std::env::var("JOBS_WORKER_REDIS").unwrap();
    let lease = Duration::from_millis(
        std::env::var("JOBS_WORKER_LEASE_MS")
            .unwrap()
            .parse()
            .unwrap(),
    );
    let q = queue(&url, &prefix, lease);
    let (effects, runs) = (format!("{prefix}:effects"), format!("{prefix}:runs"));
    let redis_url = url.clone();
    let _pool = Worker::builder(q)
        .concurrency(4)
        .poll_interval(Duration::from_millis(20))
        .spawn(move |job| {
            let (url, effects, runs) = (redis_url.clone(), effects.clone(), runs.clone());
            async move {
                let _: i64 = redis_raw(&url, &["INCR", &runs]).await;
                tokio::time::sleep(Duration::from_millis(job.payload().sleep_ms)).await;
                let _: i64 = redis_raw(&url, &["SADD", &effects, job.id().as_str()]).await;
                Ok::<_, String>(())
            }
        });
    // Runs until killed.
    println!("worker ready");
    std::future::pending::<()>().await;
}

struct WorkerProc(Child);

impl WorkerProc {
    fn start(url: &str, prefix: &str, lease: Duration) -> Self {
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "worker_process",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("JOBS_WORKER_PREFIX", prefix)
            .env("JOBS_WORKER_REDIS", url)
            .env("JOBS_WORKER_LEASE_MS", lease.as_millis().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn count(url: &str, prefix: &str) -> (u64, u64) {
    let effects: u64 = redis_raw(url, &["SCARD", &format!("{prefix}:effects")]).await;
    let runs: Option<u64> = redis_raw(url, &["GET", &format!("{prefix}:runs")]).await;
    (effects, runs.unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_jobs_across_two_worker_processes() {
    let (url, prefix) = (redis_url(), unique("procs"));
    let q = queue(&url, &prefix, Duration::from_secs(10));
    const N: u64 = 10_000;
    let enqueues: Vec<_> = (0..8)
        .map(|p| {
            let q = q.clone();
            tokio::spawn(async move {
                for n in (p..N as u32).step_by(8) {
                    q.enqueue(&Effect { n, sleep_ms: 0 }).await.unwrap();
                }
            })
        })
        .collect();
    let a = WorkerProc::start(&url, &prefix, Duration::from_secs(10));
    let b = WorkerProc::start(&url, &prefix, Duration::from_secs(10));
    for e in enqueues {
        e.await.unwrap();
    }
    let start = Instant::now();
    let (effects, runs) = eventually("every job ran", Duration::from_secs(60), || async {
        let c = count(&url, &prefix).await;
        (c.0 == N).then_some(c)
    })
    .await;
    println!(
        "{N} jobs on 2 processes x 4 workers: done {:?} after the last enqueue; {} runs, {} more than once",
        start.elapsed(),
        runs,
        runs - effects
    );
    // Every effect was applied (the wait above), each once since the set is keyed by job
    // id; and with no process dying, no job ran twice either.
    assert_eq!(runs, N, "no process died: no job ran twice");
    eventually("the queue is empty", Duration::from_secs(5), || async {
        let s = q.stats().await.unwrap();
        (s.queued + s.running + s.scheduled == 0).then_some(())
    })
    .await;
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_process_loses_no_job() {
    let (url, prefix) = (redis_url(), unique("kill"));
    let lease = Duration::from_millis(1500);
    let q = queue(&url, &prefix, lease);
    const N: u64 = 40;
    for n in 0..N as u32 {
        q.enqueue(&Effect { n, sleep_ms: 300 }).await.unwrap();
    }
    let mut a = WorkerProc::start(&url, &prefix, lease);
    // Killed with jobs in hand: some have run, four are running.
    eventually(
        "the first process is mid-queue",
        Duration::from_secs(20),
        || async {
            let (effects, _) = count(&url, &prefix).await;
            (effects >= 4).then_some(())
        },
    )
    .await;
    let running = q.stats().await.unwrap().running;
    a.kill();
    let killed = Instant::now();
    assert!(running > 0, "jobs were in hand when it died");
    let _b = WorkerProc::start(&url, &prefix, lease);
    let (effects, runs) = eventually("every job ran", Duration::from_secs(30), || async {
        let c = count(&url, &prefix).await;
        (c.0 == N).then_some(c)
    })
    .await;
    println!(
        "{N} jobs, a worker process killed with {running} in hand: all done {:?} after the kill; {} ran more than once",
        killed.elapsed(),
        runs - effects
    );
    // No job lost: every effect was applied (the wait above), and none is dead.
    assert_eq!(q.stats().await.unwrap().dead, 0, "no job died");
    // Again: the (at most 4) jobs running, and those finished whose success was still on
    // its way to Redis when the process died.
    assert!(
        runs >= N && runs - N <= 8,
        "only the jobs in hand ran again: {runs}"
    );
    // The second process took over the dead one's jobs after their lease, not later:
    // what was left (at most 36 jobs of 300 ms, 4 at a time) plus the lease and a margin.
    assert!(
        killed.elapsed() < lease + Duration::from_millis(36 / 4 * 300 + 2_000),
        "took {:?}",
        killed.elapsed()
    );
}
