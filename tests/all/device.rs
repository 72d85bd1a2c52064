//! Constraints hold work back and stop it (through the TestDriver's manual
//! device state), and the Linux provider reads this machine.

use std::time::Duration;

use workhost::{
    Constraints, DeviceOverrides, DeviceState, LinuxPaths, NetworkType, TaskState, TestDriver, Thresholds, WorkRequest,
};
use workhost_tests::host_config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_waits_enqueued_until_its_constraints_hold() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDriver::start(host_config(dir.path())).await.unwrap();
    d.set_device(DeviceOverrides {
        charging: Some(false),
        metered: Some(true),
        ..DeviceOverrides::default()
    });
    let mut r = WorkRequest::one_off("echo", "sync");
    r.constraints = Constraints {
        network: NetworkType::Unmetered,
        charging: true,
        ..Constraints::default()
    };
    let id = d.queue().enqueue(r).await.unwrap().id;
    let free = d
        .queue()
        .enqueue(WorkRequest::one_off("echo", "free"))
        .await
        .unwrap()
        .id;
    d.run_until_idle().await;
    assert_eq!(d.queue().get(free).await.unwrap().unwrap().state, TaskState::Succeeded);
    assert_eq!(d.queue().get(id).await.unwrap().unwrap().state, TaskState::Enqueued);
    d.set_device(DeviceOverrides {
        charging: Some(true),
        metered: Some(true),
        ..DeviceOverrides::default()
    });
    d.run_until_idle().await;
    assert_eq!(
        d.queue().get(id).await.unwrap().unwrap().state,
        TaskState::Enqueued,
        "still metered"
    );
    d.set_device(DeviceOverrides::default());
    d.run_until_idle().await;
    assert_eq!(d.queue().get(id).await.unwrap().unwrap().state, TaskState::Succeeded);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_work_whose_constraint_stops_holding_is_stopped_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDriver::start(host_config(dir.path())).await.unwrap();
    let mut r = WorkRequest::one_off("spin", "maintenance");
    r.constraints = Constraints {
        charging: true,
        device_idle: true,
        ..Constraints::default()
    };
    let id = d.queue().enqueue(r).await.unwrap().id;
    while d.queue().get(id).await.unwrap().unwrap().state != TaskState::Running {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    d.set_device(DeviceOverrides {
        charging: Some(false),
        ..DeviceOverrides::default()
    });
    d.run_until_idle().await;
    let t = d.queue().get(id).await.unwrap().unwrap();
    assert_eq!(
        (t.state, t.stop_reason.as_deref()),
        (TaskState::Enqueued, Some("constraint-lost"))
    );
    assert_eq!(t.attempts[0].stop_reason.as_deref(), Some("constraint-lost"));
    assert_eq!(t.next_run_at, d.now() + 30_000, "retried with backoff");
    d.advance(Duration::from_secs(30));
    d.run_until_idle().await;
    assert_eq!(
        d.queue().get(id).await.unwrap().unwrap().state,
        TaskState::Enqueued,
        "still not charging"
    );
    d.host().cancel(workhost::Selector::Id(id)).await.unwrap();
    d.shutdown().await;
}

#[test]
fn the_linux_provider_reads_this_machine() {
    let dir = tempfile::tempdir().unwrap();
    let state = DeviceState::read_linux(&LinuxPaths::default(), dir.path(), &Thresholds::default());
    let r = &state.readings;
    let (free, total) = (r.storage_free_bytes.unwrap(), r.storage_total_bytes.unwrap());
    assert!(free > 0 && free <= total, "{r:?}");
    assert!(r.load_per_cpu.unwrap() >= 0.0);
    // The network reading agrees with the routing table.
    let routes = std::fs::read_to_string("/proc/net/route").unwrap();
    let has_default = routes
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(1) == Some("00000000"));
    assert_eq!(
        state.network.connected,
        has_default && !r.default_route_interfaces.is_empty(),
        "{r:?}"
    );
    // No battery reported means mains power, as on servers and VMs.
    if r.battery_percent.is_none() && r.mains_online.is_none() {
        assert!(state.charging && !state.battery_low);
    }
}
