//! End-to-end throughput of `echo` tasks through the durable store: N tasks
//! enqueued (64 enqueues in flight, so they group-commit), claimed, run and
//! finished, next to the executor-only figure for the same N runs measured
//! in the same process. Also the due-to-started latency (attempt start −
//! enqueue time, ms resolution, for tasks due at once) at that load.
//!
//! Run: `cargo bench -p workhost-tests --bench scheduler` (`just bench`).
//! Not yet measured here: host memory with 1,000,000 pending tasks.

use std::time::{Duration, Instant};

use workhost::{Data, EngineConfig, Executor, Host, Query, RunRequest, TaskState, WorkRequest};
use workhost_tests::{guests, host_config};

const N: usize = 5_000;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Executor only: N runs of echo, 64 in flight.
        let executor = Executor::new(EngineConfig::default()).unwrap();
        let handler = executor.load_file(guests::ECHO.as_ref()).unwrap();
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..N {
            if set.len() >= 64 {
                set.join_next().await.unwrap().unwrap();
            }
            let h = handler.clone();
            set.spawn(async move {
                let mut r = RunRequest::new("bench");
                r.input = Data::new().with("i", i as i64);
                assert!(h.run(r).await.output().is_some());
            });
        }
        while set.join_next().await.is_some() {}
        let exec_rate = N as f64 / start.elapsed().as_secs_f64();

        // Through the durable store.
        let dir = tempfile::tempdir().unwrap();
        let mut config = host_config(dir.path());
        config.max_concurrency = 64;
        for h in &mut config.handlers {
            h.concurrency = 64;
        }
        let host = Host::start(config).await.unwrap();
        let queue = host.queue().clone();
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..N {
            if set.len() >= 64 {
                set.join_next().await.unwrap().unwrap();
            }
            let q = queue.clone();
            set.spawn(async move {
                let mut r = WorkRequest::one_off("echo", "bench");
                r.input = Data::new().with("i", i as i64);
                q.enqueue(r).await.unwrap();
            });
        }
        while set.join_next().await.is_some() {}
        let enqueued_in = start.elapsed();
        loop {
            let done = queue
                .query(Query {
                    state: Some(TaskState::Succeeded),
                    ..Query::default()
                })
                .await
                .unwrap()
                .len();
            if done == N {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let total = start.elapsed();
        let mut latencies = Vec::with_capacity(N);
        for t in queue.query(Query::default()).await.unwrap() {
            let info = queue.get(t.id).await.unwrap().unwrap();
            latencies.push(info.attempts[0].started_at - info.created_at);
        }
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        println!("{N} echo tasks, 64 enqueues in flight, 64 runs at once");
        println!("executor only        {exec_rate:>9.0} runs/s");
        println!(
            "durable, end to end  {:>9.0} tasks/s  (enqueue phase {:.2} s, all done {:.2} s)",
            N as f64 / total.as_secs_f64(),
            enqueued_in.as_secs_f64(),
            total.as_secs_f64()
        );
        println!(
            "ratio durable/executor: {:.2}",
            (N as f64 / total.as_secs_f64()) / exec_rate
        );
        println!(
            "due-to-started       p50 {} ms  p99 {} ms  max {} ms",
            pct(0.50),
            pct(0.99),
            latencies[latencies.len() - 1]
        );
        host.shutdown().await;
    });
}
