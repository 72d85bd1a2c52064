//! Runs are stopped at once, from inside (budgets) and from outside
//! (cancel, constraint lost, host shutdown), and say why.

use std::time::{Duration, Instant};

use workhost::{RunRequest, RunResult, StopHandle, StopReason};
use workhost_tests::{executor, guests, unmetered_executor};

#[tokio::test]
async fn a_run_over_its_wall_clock_budget_stops_with_timeout() {
    let handler = unmetered_executor().load_file(guests::SPIN.as_ref()).unwrap();
    let mut r = RunRequest::new("spin");
    r.budget.timeout = Duration::from_millis(200);
    let outcome = handler.run(r).await;
    assert_eq!(outcome.result, RunResult::Stopped(StopReason::Timeout));
    assert_eq!(outcome.fuel_consumed, None, "an unmetered engine reports no fuel");
    assert!(outcome.duration >= Duration::from_millis(200));
}

#[tokio::test]
async fn a_run_over_its_fuel_budget_stops_with_fuel_exhausted_and_reports_the_fuel() {
    let handler = executor().load_file(guests::SPIN.as_ref()).unwrap();
    let mut r = RunRequest::new("spin");
    r.budget.fuel = Some(1_000_000);
    let outcome = handler.run(r).await;
    assert_eq!(outcome.result, RunResult::Stopped(StopReason::FuelExhausted));
    assert_eq!(outcome.fuel_consumed, Some(1_000_000));
}

/// Starts `spin`, stops it after it has run a while, and returns how long
/// the stop took to land.
async fn stop_latency(reason: StopReason) -> Duration {
    let handler = unmetered_executor().load_file(guests::SPIN.as_ref()).unwrap();
    let stop = StopHandle::new();
    let mut r = RunRequest::new("spin");
    r.stop = stop.clone();
    let run = tokio::spawn(async move { handler.run(r).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = Instant::now();
    stop.stop(reason);
    let outcome = run.await.unwrap();
    let latency = asked.elapsed();
    assert_eq!(outcome.result, RunResult::Stopped(reason));
    latency
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_task_stops_it_within_50_ms() {
    // A latency bound on a shared machine: the best of three tries must be
    // under the bound; every try must stop with the right reason.
    let mut best = Duration::MAX;
    for _ in 0..3 {
        best = best.min(stop_latency(StopReason::Cancelled).await);
    }
    assert!(best < Duration::from_millis(50), "cancel took {best:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraint_lost_and_host_shutdown_stop_a_run_with_their_reason() {
    for reason in [StopReason::ConstraintLost, StopReason::HostShutdown] {
        stop_latency(reason).await;
    }
}

#[tokio::test]
async fn a_run_stopped_before_it_starts_never_runs_and_the_first_reason_wins() {
    let handler = executor().load_file(guests::COUNTER.as_ref()).unwrap();
    let stop = StopHandle::new();
    stop.stop(StopReason::HostShutdown);
    stop.stop(StopReason::Cancelled);
    assert_eq!(stop.reason(), Some(StopReason::HostShutdown));
    let mut r = RunRequest::new("count");
    r.stop = stop;
    let kv = r.kv.clone();
    let outcome = handler.run(r).await;
    assert_eq!(outcome.result, RunResult::Stopped(StopReason::HostShutdown));
    assert_eq!(kv.get("totalExecutions").await.unwrap(), None);
}

/// A host shut down at once, before its dispatcher has run even once, stops:
/// on a one-thread runtime the dispatcher first runs inside `shutdown`, and
/// must still see that it was asked to stop.
#[tokio::test]
async fn a_host_shut_down_right_after_it_starts_stops() {
    let dir = tempfile::tempdir().unwrap();
    let host = workhost::Host::start(workhost_tests::host_config(dir.path()))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), host.shutdown())
        .await
        .expect("shutdown of a host whose dispatcher had not run yet never returned");
}

/// A kv backend whose calls never complete: a backend stuck on a commit, a
/// lock or the network. It counts the calls made.
struct StuckKv {
    calls: tokio::sync::watch::Sender<usize>,
}

impl StuckKv {
    fn new() -> StuckKv {
        StuckKv {
            calls: tokio::sync::watch::Sender::new(0),
        }
    }

    async fn stuck<T>(&self) -> Result<T, workhost::KvError> {
        self.calls.send_modify(|n| *n += 1);
        std::future::pending().await
    }

    async fn wait_for_calls(&self, n: usize) {
        self.calls.subscribe().wait_for(|&calls| calls >= n).await.unwrap();
    }
}

impl workhost::KvStore for StuckKv {
    fn get<'a>(&'a self, _: &'a str, _: &'a str) -> workhost::KvFuture<'a, Option<Vec<u8>>> {
        Box::pin(self.stuck())
    }
    fn set<'a>(&'a self, _: &'a str, _: &'a str, _: &'a [u8], _: u32) -> workhost::KvFuture<'a, ()> {
        Box::pin(self.stuck())
    }
    fn delete<'a>(&'a self, _: &'a str, _: &'a str) -> workhost::KvFuture<'a, ()> {
        Box::pin(self.stuck())
    }
    fn increment<'a>(&'a self, _: &'a str, _: &'a str, _: i64, _: u32) -> workhost::KvFuture<'a, i64> {
        Box::pin(self.stuck())
    }
}

/// A run waiting in a kv call that does not return (its backend is stuck)
/// is still stopped at its deadline and by a cancel: the run awaits the
/// call, so its deadline and stop signal are raced against it.
#[tokio::test]
async fn a_run_stuck_in_a_kv_call_still_stops_at_its_deadline_and_on_cancel() {
    let handler = executor().load_file(guests::COUNTER.as_ref()).unwrap();
    let backend = std::sync::Arc::new(StuckKv::new());
    for (n, reason) in [(1, StopReason::Timeout), (2, StopReason::Cancelled)] {
        let mut r = RunRequest::new("count");
        r.kv = workhost::Kv::new(backend.clone(), "counter", workhost::KvLimits::default());
        r.budget.timeout = match reason {
            StopReason::Timeout => Duration::from_millis(300),
            _ => Duration::from_secs(60),
        };
        let stop = StopHandle::new();
        r.stop = stop.clone();
        let run = handler.run(r);
        let stopper = async {
            backend.wait_for_calls(n).await;
            if reason == StopReason::Cancelled {
                stop.stop(reason);
            }
        };
        let (outcome, ()) = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(run, stopper) })
            .await
            .unwrap_or_else(|_| panic!("a run stuck in a kv call did not stop ({reason:?})"));
        assert_eq!(outcome.result, RunResult::Stopped(reason));
    }
}

/// Once `shutdown` returns, the data directory is free for the next host:
/// nothing of the old host (here its device-state refresher, kept busy by
/// a 1 ms refresh) still holds its lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_shut_down_frees_its_data_directory_for_the_next_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut config = workhost_tests::host_config(dir.path());
        config.device.refresh = Duration::from_millis(1);
        config
    };
    for round in 0..30 {
        let host = workhost::Host::start(config())
            .await
            .unwrap_or_else(|e| panic!("start {round}: {e}"));
        tokio::time::sleep(Duration::from_millis(3)).await;
        host.shutdown().await;
    }
}

/// A host dropped without `shutdown` stops in the background: its running
/// work is stopped (`host-shutdown`) and kept, and the data directory is
/// soon free for the next host, which runs that work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_host_stops_its_work_and_frees_its_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let host = workhost::Host::start(workhost_tests::host_config(dir.path()))
        .await
        .unwrap();
    let id = host
        .queue()
        .enqueue(workhost::WorkRequest::one_off("spin", "endless"))
        .await
        .unwrap()
        .id;
    while host.running().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let queue = host.queue().clone();
    drop(host);

    let asked = Instant::now();
    let next = loop {
        match workhost::Host::start(workhost_tests::host_config(dir.path())).await {
            Ok(host) => break host,
            Err(workhost::HostError::AlreadyServing(_)) if asked.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => panic!("the dropped host still holds its data directory: {e}"),
        }
    };
    let t = queue.get(id).await.unwrap().unwrap();
    assert_eq!(
        t.attempts[0].stop_reason.as_deref(),
        Some("host-shutdown"),
        "the dropped host stopped its run: {t:?}"
    );
    assert_ne!(t.state, workhost::TaskState::Failed, "{t:?}");
    next.shutdown().await;
}
