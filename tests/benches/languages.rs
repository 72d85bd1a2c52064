//! The cost of one run of `echo` in every language next to the Rust one, and
//! restart-to-first-task of a host with a Python and a JavaScript handler
//! on a warm compile cache.
//!
//! Run: `cargo bench -p workhost-tests --bench languages` (or `just bench`).
//! Per-run figures are medians of batches on one thread, with the languages
//! interleaved so each sees the same machine noise; ratios are against Rust
//! measured in the same run.

use std::time::{Duration, Instant};

use workhost::{Data, EngineConfig, Executor, HandlerConfig, Host, HostConfig, RunRequest, TaskState, WorkRequest};
use workhost_tests::{guests, root};

const ROUNDS: usize = 7;
const BATCH: usize = 200;

fn cache() -> std::path::PathBuf {
    root().join("target/test-compile-cache")
}

/// Minor page faults of this process so far (`/proc/self/stat` field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may hold spaces; count from after it.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after
        .split_whitespace()
        .nth(7)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let executor = Executor::new(EngineConfig {
        cache_dir: Some(cache()),
        ..EngineConfig::default()
    })
    .unwrap();
    let mut builds = vec![("rust", guests::ECHO.to_string())];
    for (example, lang, path) in guests::LANGUAGE_EXAMPLES {
        if *example == "echo" {
            builds.push((lang, path.to_string()));
        }
    }
    let handlers: Vec<_> = builds
        .iter()
        .map(|(lang, path)| (*lang, executor.load_file(path.as_ref()).unwrap()))
        .collect();
    let input = Data::new().with("n", 1i64).with("name", "bench");
    println!(
        "echo, one run = instantiate + execute-task + drop, one thread; pooling allocator: {}",
        executor.engine().uses_pooling()
    );
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); handlers.len()];
    let mut faults = vec![0u64; handlers.len()];
    rt.block_on(async {
        for (_, h) in &handlers {
            for _ in 0..20 {
                let mut r = RunRequest::new("bench");
                r.input = input.clone();
                assert!(h.run(r).await.output().is_some());
            }
        }
        for _ in 0..ROUNDS {
            for (i, (_, h)) in handlers.iter().enumerate() {
                let f = minor_faults();
                let t = Instant::now();
                for _ in 0..BATCH {
                    let mut r = RunRequest::new("bench");
                    r.input = input.clone();
                    assert!(h.run(r).await.output().is_some());
                }
                times[i].push(t.elapsed() / BATCH as u32);
                faults[i] += minor_faults() - f;
            }
        }
    });
    let rust = median(times[0].clone());
    for (((lang, _), t), f) in handlers.iter().zip(times).zip(faults) {
        let t = median(t);
        // Issue 17's targets for one run on one thread.
        let target = match *lang {
            "py" => Some(500.0),
            "js" => Some(300.0),
            _ => None,
        };
        let verdict = target.map_or(String::new(), |us: f64| {
            let met = t.as_secs_f64() * 1e6 <= us;
            format!("  target <= {us:.0} us: {}", if met { "met" } else { "NOT met" })
        });
        println!(
            "echo-{lang:<5} {:>8.1} us/run  {:>7.0} runs/s  {:>6.1}x rust  {:>7.0} page faults/run{verdict}",
            t.as_secs_f64() * 1e6,
            1.0 / t.as_secs_f64(),
            t.as_secs_f64() / rust.as_secs_f64(),
            f as f64 / (ROUNDS * BATCH) as f64
        );
    }

    // Restart to first task: a host with the Python and JavaScript echo
    // handlers starts (store open, components loaded from the warm cache),
    // and a task enqueued at once runs to success on each.
    let mut restarts = Vec::new();
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let mut config = HostConfig::new(dir.path());
        config.engine.cache_dir = Some(cache());
        for (lang, path) in &builds {
            if *lang == "py" || *lang == "js" {
                config.handlers.push(HandlerConfig::new(format!("echo-{lang}"), path));
            }
        }
        let elapsed = rt.block_on(async {
            let start = Instant::now();
            let host = Host::start(config).await.unwrap();
            let q = host.queue().clone();
            let mut ids = Vec::new();
            for lang in ["py", "js"] {
                ids.push(
                    q.enqueue(WorkRequest::one_off(format!("echo-{lang}"), "first"))
                        .await
                        .unwrap()
                        .id,
                );
            }
            for id in ids {
                while q.get(id).await.unwrap().unwrap().state != TaskState::Succeeded {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            let elapsed = start.elapsed();
            host.shutdown().await;
            elapsed
        });
        restarts.push(elapsed);
    }
    let cold = {
        let start = Instant::now();
        let fresh = Executor::new(EngineConfig::default()).unwrap();
        let path = &builds.iter().find(|(l, _)| *l == "py").unwrap().1;
        fresh.load_file(path.as_ref()).unwrap();
        start.elapsed()
    };
    println!(
        "restart to first task (Python and JavaScript handlers, warm cache): median {:.0} ms (of 5); compiling the Python component without the cache: {:.1} s",
        median(restarts).as_secs_f64() * 1e3,
        cold.as_secs_f64()
    );
}
