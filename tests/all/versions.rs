//! Live handler updates and versions (docs/versions.md): a reload swaps
//! components under load without losing or failing work, refuses what it
//! cannot do and changes nothing then, records on every attempt the
//! component it ran, and runs work pinned to a version on that version.

use std::time::{Duration, Instant};

use workhost::{Data, Host, HostConfig, Query, ReloadError, ReloadOptions, TaskId, TaskInfo, TaskState, WorkRequest};
use workhost_tests::{guests, host_config};

/// A host whose handler `work` is `component`, 100 runs at once.
fn config(dir: &std::path::Path, component: &str) -> HostConfig {
    let mut c = host_config(dir);
    c.max_concurrency = 100;
    c.device.read_machine = false;
    let mut work = workhost::HandlerConfig::new("work", component);
    work.concurrency = 100;
    work.budget.max_memory_bytes = 16 << 20;
    c.handlers.push(work);
    c
}

fn waiting(sleep_ms: i64) -> WorkRequest {
    let mut r = WorkRequest::one_off("work", "job");
    r.input = Data::new().with("count", false).with("sleep_ms", sleep_ms);
    r
}

async fn all_finished(host: &Host, ids: &[TaskId], limit: Duration) -> Vec<TaskInfo> {
    let start = Instant::now();
    loop {
        let tasks = host
            .queue()
            .query(Query {
                ids: Some(ids.to_vec()),
                ..Query::default()
            })
            .await
            .unwrap();
        if tasks.iter().all(|t| t.state.is_finished()) {
            let mut out = Vec::new();
            for t in tasks {
                out.push(host.queue().get(t.id).await.unwrap().unwrap());
            }
            return out;
        }
        assert!(start.elapsed() < limit, "not finished after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The component digest of one run of `work` now.
async fn digest_now(host: &Host) -> String {
    let id = host.queue().enqueue(waiting(0)).await.unwrap().id;
    let t = all_finished(host, &[id], Duration::from_secs(60)).await.remove(0);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    t.attempts[0]
        .component
        .clone()
        .expect("the attempt records its component")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_swaps_the_component_and_every_run_keeps_the_version_it_started_with() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(config(dir.path(), guests::LEDGER)).await.unwrap();
    let old = digest_now(&host).await;
    let mut ids = Vec::new();
    for _ in 0..1_100 {
        ids.push(host.queue().enqueue(waiting(400)).await.unwrap().id);
    }
    // Wait for 100 running (the other 1,000 wait), then swap.
    let start = Instant::now();
    loop {
        let running = host
            .queue()
            .count_by_state()
            .await
            .unwrap()
            .get(&TaskState::Running)
            .copied();
        if running == Some(100) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "100 never ran at once: {running:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let running_at_swap: Vec<TaskId> = host
        .queue()
        .query(Query {
            state: Some(TaskState::Running),
            ..Query::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    let report = host
        .reload(config(dir.path(), guests::ECHO), ReloadOptions::default())
        .await
        .unwrap();
    let swapped_at = host.queue().now();
    assert_eq!(report.updated.len(), 1, "{report:?}");
    let new = report.updated[0].1.clone();
    assert_ne!(new, old);
    let tasks = all_finished(&host, &ids, Duration::from_secs(240)).await;
    for t in &tasks {
        assert_eq!(
            t.state,
            TaskState::Succeeded,
            "no task is lost or failed by the swap: {t:?}"
        );
        assert_eq!(t.attempts.len(), 1, "one run each: {t:?}");
        let ran = t.attempts[0].component.as_deref().unwrap();
        assert!(ran == old || ran == new, "{ran}");
        if running_at_swap.contains(&t.id) {
            assert_eq!(
                ran, old,
                "task {} was running at the swap: it ends on its version",
                t.id
            );
        }
        if t.attempts[0].started_at > swapped_at {
            assert_eq!(ran, new, "task {} started after the swap", t.id);
        }
        assert_eq!(
            t.attempts[0]
                .contract
                .as_deref()
                .map(|c| c.starts_with("workhost:task/handler@0.1.")),
            Some(true)
        );
    }
    assert!(
        tasks
            .iter()
            .any(|t| t.attempts[0].component.as_deref() == Some(new.as_str()))
    );
    assert!(running_at_swap.len() >= 100);

    // A broken new component is refused; the current one keeps serving.
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"not a component").unwrap();
    let err = host
        .reload(config(dir.path(), broken.to_str().unwrap()), ReloadOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ReloadError::Handler { .. }), "{err}");
    assert!(
        err.to_string().contains("nothing changed") && err.to_string().contains("work"),
        "{err}"
    );
    assert_eq!(digest_now(&host).await, new, "the old one keeps serving");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_handler_with_pending_work_is_refused_unless_its_work_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(config(dir.path(), guests::ECHO)).await.unwrap();
    let mut r = WorkRequest::one_off("fail", "later");
    r.initial_delay = Duration::from_secs(3600);
    let pending = host.queue().enqueue(r).await.unwrap().id;
    let without = |c: &mut HostConfig| c.handlers.retain(|h| h.name != "fail");
    let mut next = config(dir.path(), guests::ECHO);
    without(&mut next);
    let err = host.reload(next.clone(), ReloadOptions::default()).await.unwrap_err();
    match &err {
        ReloadError::Pending { handler, count, ids } => {
            assert_eq!(
                (handler.as_str(), *count, ids.as_slice()),
                ("fail", 1, [pending].as_slice())
            );
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("--drop-pending"), "{err}");
    // Nothing changed: the handler is still there.
    // Delayed, so it is still pending (not run and failed) at the next reload.
    let mut x = WorkRequest::one_off("fail", "x");
    x.initial_delay = Duration::from_secs(3600);
    assert!(host.queue().enqueue(x).await.is_ok());
    let report = host.reload(next, ReloadOptions { drop_pending: true }).await.unwrap();
    assert_eq!(report.removed, ["fail"]);
    assert_eq!(report.dropped.len(), 2);
    let t = host.queue().get(pending).await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Cancelled);
    assert!(
        t.error.as_deref().unwrap().contains("no longer in the manifest"),
        "{:?}",
        t.error
    );
    let e = host
        .queue()
        .enqueue(WorkRequest::one_off("fail", "x"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("fail"), "{e}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_pinned_to_a_version_runs_it_after_a_reload_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(config(dir.path(), guests::LEDGER)).await.unwrap();
    let ledger = digest_now(&host).await;
    host.reload(config(dir.path(), guests::ECHO), ReloadOptions::default())
        .await
        .unwrap();
    let echo = digest_now(&host).await;
    let pinned = |prefix: &str| {
        let mut r = waiting(0);
        r.handler = format!("work@{prefix}");
        r
    };
    let id = host.queue().enqueue(pinned(&ledger[..10])).await.unwrap().id;
    let t = all_finished(&host, &[id], Duration::from_secs(60)).await.remove(0);
    assert_eq!(
        t.pin.as_deref(),
        Some(ledger.as_str()),
        "the prefix resolves to the full digest"
    );
    assert_eq!(
        (t.state, t.attempts[0].component.as_deref()),
        (TaskState::Succeeded, Some(ledger.as_str()))
    );
    for (bad, says) in [("12", "8 to 64 hex digits"), ("ffffffffffff", "no retained component")] {
        let e = host.queue().enqueue(pinned(bad)).await.unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
    // A restart on the current version still runs pinned work on the old.
    let waiting_id = {
        let mut r = pinned(&ledger[..8]);
        r.initial_delay = Duration::from_millis(1500);
        host.queue().enqueue(r).await.unwrap().id
    };
    host.shutdown().await;
    let host = Host::start(config(dir.path(), guests::ECHO)).await.unwrap();
    let t = all_finished(&host, &[waiting_id], Duration::from_secs(60))
        .await
        .remove(0);
    assert_eq!(t.attempts[0].component.as_deref(), Some(ledger.as_str()));
    assert_eq!(digest_now(&host).await, echo);
    host.shutdown().await;
}

#[test]
fn serve_reloads_on_workhost_reload_and_refuses_a_broken_manifest_changing_nothing() {
    use workhost_tests::{Daemon, workhost, write_manifest};
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path());
    let wh = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--config", m.to_str().unwrap()]);
        workhost(&all, dir.path())
    };
    let no_serve = wh(&["reload"]);
    assert_eq!(no_serve.code, 1, "{no_serve:?}");
    assert!(no_serve.stderr.contains("no `workhost serve`"), "{}", no_serve.stderr);
    let _daemon = Daemon::start(&m);
    let start = Instant::now();
    while !dir.path().join("data/serve.pid").exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "serve never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let component = |id: &str| {
        let start = Instant::now();
        loop {
            let t = wh(&["inspect", id, "--json"]).json();
            if t["state"] == "succeeded" {
                return t["attempts"][0]["component"].as_str().unwrap().to_string();
            }
            assert!(start.elapsed() < Duration::from_secs(60), "{t}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let before = wh(&["enqueue", "echo", "--task", "t"]).stdout.trim().to_string();
    // It ran on the version of the start before the manifest changes.
    let before = component(&before);
    // Point `echo` at another component: the reload swaps it.
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.replacen(guests::ECHO, guests::COMPAT_ECHO, 1)).unwrap();
    let run = wh(&["reload", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let v = run.json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["report"]["updated"][0][0], "echo", "{v}");
    let after = wh(&["enqueue", "echo", "--task", "t"]).stdout.trim().to_string();
    assert_ne!(before, component(&after));
    let human = wh(&["inspect", &after]);
    assert!(human.stdout.contains("component sha256:"), "{}", human.stdout);
    // A manifest naming a missing component: refused, exit 2, nothing changed.
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.replacen(guests::COMPAT_ECHO, "/nonexistent/echo.wasm", 1)).unwrap();
    let run = wh(&["reload"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("nothing changed") && run.stderr.contains("nonexistent"),
        "{}",
        run.stderr
    );
    std::fs::write(&m, text).unwrap();
    let again = wh(&["enqueue", "echo", "--task", "t"]).stdout.trim().to_string();
    assert_eq!(
        component(&again),
        component(&after),
        "the running version keeps serving"
    );
}
