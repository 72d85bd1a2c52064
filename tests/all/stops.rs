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
    assert_eq!(kv.get("totalExecutions").unwrap(), None);
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
