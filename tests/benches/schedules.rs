//! The cost of cron schedules (docs/schedules.md, issue target: 10,000
//! cron schedules cost the dispatcher under 1 ms per poll and the host
//! under 20 MB), each figure beside a baseline from the same run:
//!
//! 1. The dispatcher's look at the store (`next_due` of every handler,
//!    then a claim that finds nothing due: what a poll does when it looks),
//!    median over 2,000 looks, on a store without schedules and on one
//!    with 10,000 cron schedules (every minute of the day in eight zones).
//! 2. A host serving those schedules for 5 s of wall clock: its process
//!    CPU time per dispatcher wake, against the same host without them.
//! 3. The host's RSS after registering the 10,000 schedules, against
//!    before.
//!
//! Run: `cargo bench -p workhost-tests --bench schedules`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use workhost::{CatchUp, CronSchedule, DeviceState, Host, HostIdentity, Queue, WorkRequest};
use workhost_tests::{host_config, rss_mib};

const SCHEDULES: usize = 10_000;
const ZONES: [&str; 8] = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "Asia/Tokyo",
    "Australia/Sydney",
    "America/Los_Angeles",
    "Asia/Kolkata",
    "Europe/London",
];

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (bare, _bare_dir) = start_host().await;
        let (busy, _busy_dir) = start_host().await;
        let before = rss_mib();
        let start = Instant::now();
        register(busy.queue(), SCHEDULES).await;
        let registered = start.elapsed();
        let after = rss_mib();
        println!(
            "{SCHEDULES} cron schedules registered in {:.1} s; host RSS {after:.1} MiB after, {before:.1} MiB before: +{:.1} MiB (target < 20 MB)",
            registered.as_secs_f64(),
            after - before
        );

        let (bare_look, busy_look) = (look_time(bare.queue()).await, look_time(busy.queue()).await);
        println!(
            "dispatcher look (next due + empty claim), median of 2000: {:.3} ms with {SCHEDULES} schedules, {:.3} ms without ({:.2}x; target < 1 ms)",
            ms(busy_look),
            ms(bare_look),
            busy_look.as_secs_f64() / bare_look.as_secs_f64().max(1e-9)
        );

        let (bare_cpu, bare_polls) = cpu_per_poll(&bare).await;
        let (busy_cpu, busy_polls) = cpu_per_poll(&busy).await;
        println!(
            "host over 5 s: {:.3} ms CPU per dispatcher wake with {SCHEDULES} schedules ({busy_polls} wakes), {:.3} ms without ({bare_polls} wakes)",
            busy_cpu, bare_cpu
        );
        bare.shutdown().await;
        busy.shutdown().await;
    });
}

async fn start_host() -> (Host, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = host_config(dir.path());
    config.engine.cache_dir = Some(workhost_tests::root().join("target/test-compile-cache"));
    config.device.read_machine = false;
    (Host::start(config).await.unwrap(), dir)
}

/// `n` schedules: minute `i % 60`, hour `i / 60 % 24`, in eight zones.
async fn register(q: &Queue, n: usize) {
    workhost_tests::in_flight(n, 64, |i| {
        let q = q.clone();
        async move {
            let expr = format!("{} {} * * *", i % 60, i / 60 % 24);
            let s = CronSchedule::new(&expr, Some(ZONES[i % ZONES.len()]), CatchUp::Last).unwrap();
            let mut r = WorkRequest::cron("echo", format!("s{i}"), s);
            r.unique = Some((format!("schedule-{i}"), workhost::ExistingWorkPolicy::Update));
            q.enqueue(r).await.unwrap();
        }
    })
    .await;
}

/// The median time of what a dispatcher's look asks of the store.
async fn look_time(q: &Queue) -> Duration {
    let store = q.store().clone();
    let handlers: Vec<String> = ["echo", "counter", "flaky", "fail", "trap", "spin", "chatty"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let may_run: HashMap<String, usize> = handlers.iter().map(|h| (h.clone(), 4)).collect();
    let me = HostIdentity {
        id: "bench".into(),
        incarnation: "1".into(),
    };
    let mut times = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let start = Instant::now();
        let now = q.now();
        let _ = store.next_due(handlers.clone(), DeviceState::default()).await.unwrap();
        let claimed = store
            .claim(me.clone(), now, 16, may_run.clone(), DeviceState::default())
            .await
            .unwrap();
        assert!(claimed.len() <= 1, "a fire may come due; nothing else is");
        times.push(start.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

/// The process's CPU time per dispatcher wake over 5 s of `host` serving.
async fn cpu_per_poll(host: &Host) -> (f64, u64) {
    let polls = host.stats().polls;
    let cpu = cpu_ms();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let wakes = host.stats().polls - polls;
    ((cpu_ms() - cpu) / wakes.max(1) as f64, wakes)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The process's user and system CPU time, ms (/proc/self/stat, in clock
/// ticks of 10 ms).
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) * 10.0
}
