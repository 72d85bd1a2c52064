//! WorkManager semantics on the durable store, driven through the library
//! with the TestDriver's manual clock: delays, retries and backoff,
//! periodic windows, unique work, chains, cancel, pause.

use std::time::Duration;

use workhost::{
    BackoffPolicy, Data, EnqueueHooks, ExistingWorkPolicy, Periodic, PeriodicFloor, Selector, TaskId, TaskInfo,
    TaskState, TestDriver, Value, WorkRequest,
};
use workhost_tests::host_config;

async fn driver(dir: &tempfile::TempDir) -> TestDriver {
    TestDriver::start(host_config(dir.path())).await.unwrap()
}

async fn task(d: &TestDriver, id: TaskId) -> TaskInfo {
    d.queue().get(id).await.unwrap().unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_off_work_waits_for_its_initial_delay_then_succeeds_with_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir).await;
    let mut r = WorkRequest::one_off("echo", "hello");
    r.input = Data::new().with("x", 1i64);
    r.initial_delay = secs(60);
    let id = d.queue().enqueue(r).await.unwrap().id;
    d.run_until_idle().await;
    let t = task(&d, id).await;
    assert_eq!((t.state, t.next_run_at), (TaskState::Enqueued, d.now() + 60_000));
    d.set_initial_delay_met(id).await.unwrap();
    d.run_until_idle().await;
    let t = task(&d, id).await;
    assert_eq!(t.state, TaskState::Succeeded);
    assert_eq!(t.output, Some(Data::new().with("x", 1i64)));
    assert_eq!(t.attempts.len(), 1);
    assert_eq!(t.attempts[0].outcome.as_deref(), Some("success"));
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_work_backs_off_linearly_and_exponentially_then_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir).await;
    for (policy, waits) in [
        (BackoffPolicy::Linear, [10, 20]),
        (BackoffPolicy::Exponential, [10, 20]),
    ] {
        let mut r = WorkRequest::one_off("flaky", "f");
        r.backoff = policy;
        r.backoff_delay = secs(1); // clamped up to 10 s
        let id = d.queue().enqueue(r).await.unwrap().id;
        for (attempt, wait) in waits.iter().enumerate() {
            d.run_until_idle().await;
            let t = task(&d, id).await;
            assert_eq!(
                (t.state, t.run_attempt_count),
                (TaskState::Enqueued, attempt as u32 + 1),
                "{policy:?}"
            );
            assert_eq!(
                t.next_run_at,
                d.now() + wait * 1000,
                "{policy:?} attempt {}",
                attempt + 1
            );
            d.advance(secs(*wait as u64));
        }
        d.run_until_idle().await;
        let t = task(&d, id).await;
        assert_eq!(t.state, TaskState::Succeeded, "{policy:?}");
        assert_eq!(t.output.unwrap().get("attempts"), Some(&Value::S64(3)));
        assert_eq!(
            t.attempts
                .iter()
                .map(|a| a.outcome.clone().unwrap())
                .collect::<Vec<_>>(),
            ["retry", "retry", "success"]
        );
    }
    // Exponential growth shows from the third attempt: 30 s, 60 s, 120 s.
    let mut r = WorkRequest::one_off("flaky", "g");
    r.input = Data::new().with("succeed_at", 10i64);
    let id = d.queue().enqueue(r).await.unwrap().id;
    for wait in [30, 60, 120] {
        d.run_until_idle().await;
        assert_eq!(task(&d, id).await.next_run_at, d.now() + wait * 1000);
        d.advance(secs(wait as u64));
    }
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_that_reaches_max_attempts_fails_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir).await;
    let mut r = WorkRequest::one_off("flaky", "f");
    r.input = Data::new().with("succeed_at", 10i64);
    r.max_attempts = 2;
    let id = d.queue().enqueue(r).await.unwrap().id;
    d.run_until_idle().await;
    d.advance(secs(30));
    d.run_until_idle().await;
    let t = task(&d, id).await;
    assert_eq!((t.state, t.run_attempt_count), (TaskState::Failed, 2));
    assert!(
        t.error.as_deref().unwrap().contains("gave up after 2 attempts"),
        "{:?}",
        t.error
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_work_runs_in_the_flex_window_of_every_period_and_never_ends() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir).await;
    let start = d.now();
    let mut r = WorkRequest::periodic("counter", "count", Duration::from_secs(900));
    r.periodic = Some(Periodic {
        frequency: secs(900),
        flex: secs(300),
    });
    let id = d.queue().enqueue(r).await.unwrap().id;
    d.run_until_idle().await;
    assert_eq!(
        task(&d, id).await.next_run_at,
        start + 600_000,
        "first run at the start of the first flex window"
    );
    d.advance(secs(599));
    d.run_until_idle().await;
    assert!(task(&d, id).await.attempts.is_empty());
    d.advance(secs(1));
    d.run_until_idle().await;
    let t = task(&d, id).await;
    assert_eq!(
        (t.state, t.run_attempt_count, t.next_run_at),
        (TaskState::Enqueued, 0, start + 1_500_000)
    );
    assert_eq!(t.output.unwrap().get("total_executions"), Some(&Value::S64(1)));
    d.set_period_delay_met(id).await.unwrap();
    d.run_until_idle().await;
    let t = task(&d, id).await;
    assert_eq!(t.output.unwrap().get("total_executions"), Some(&Value::S64(2)));
    assert_eq!(t.state, TaskState::Enqueued);
    d.host().cancel(Selector::Id(id)).await.unwrap();
    assert_eq!(task(&d, id).await.state, TaskState::Cancelled);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_frequency_and_flex_below_the_floor_are_clamped_with_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = host_config(dir.path());
    config.periodic_floor = PeriodicFloor::default();
    let d = TestDriver::start(config).await.unwrap();
    let mut r = WorkRequest::periodic("echo", "p", secs(60));
    r.periodic = Some(Periodic {
        frequency: secs(60),
        flex: secs(30),
    });
    let e = d.queue().enqueue(r).await.unwrap();
    assert_eq!(e.warnings.len(), 2, "{:?}", e.warnings);
    assert_eq!(
        task(&d, e.id).await.periodic,
        Some(Periodic {
            frequency: secs(900),
            flex: secs(300)
        })
    );
    d.shutdown().await;
}

fn unique(handler: &str, name: &str, policy: ExistingWorkPolicy) -> WorkRequest {
    let mut r = WorkRequest::one_off(handler, "u");
    r.unique = Some((name.into(), policy));
    r.initial_delay = secs(3600);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_off_unique_work_policies() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir).await;
    let q = d.queue();
    // KEEP: the existing work stays, its id is returned.
    let first = q.enqueue(unique("echo", "k", ExistingWorkPolicy::Keep)).await.unwrap();
    let again = q.enqueue(unique("echo", "k", ExistingWorkPolicy::Keep)).await.unwrap();
    assert_eq!((again.id, again.created), (first.id, false));
    // REPLACE: the existing work is cancelled.
    let replaced = q
        .enqueue(unique("echo", "k", ExistingWorkPolicy::Replace))
        .await
        .unwrap();
    assert_ne!(replaced.id, first.id);
    assert_eq!(task(&d, first.id).await.state, TaskState::Cancelled);
    // APPEND: the new work waits for the existing work.
    let appended = q
        .enqueue(unique("echo", "k", ExistingWorkPolicy::Append))
        .await
        .unwrap();
    let t = task(&d, appended.id).await;
    assert_eq!((t.state, t.after.clone()), (TaskState::Blocked, vec![replaced.id]));
    // APPEND_OR_REPLACE after a failure starts a fresh chain; APPEND fails.
    let failing = q
        .enqueue(unique("fail", "f", ExistingWorkPolicy::Keep))
        .await
        .unwrap()
        .id;
    d.set_initial_delay_met(failing).await.unwrap();
    d.run_until_idle().await;
    assert_eq!(task(&d, failing).await.state, TaskState::Failed);
    let after_fail = q
        .enqueue(unique("echo", "f", ExistingWorkPolicy::Append))
        .await
        .unwrap();
    assert_eq!(task(&d, after_fail.id).await.state, TaskState::Failed);
    let fresh = q
        .enqueue(unique("echo", "f", ExistingWorkPolicy::AppendOrReplace))
        .await
        .unwrap();
    let t = task(&d, fresh.id).await;
    assert_eq!((t.state, t.after.len()), (TaskState::Enqueued, 0));
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_unique_work_policies() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir).await;
    let q = d.queue();
    let periodic = |policy, input: i64| {
        let mut r = WorkRequest::periodic("echo", "p", secs(900));
        r.unique = Some(("sync".into(), policy));
        r.initial_delay = secs(3600);
        r.input = Data::new().with("v", input);
        r
    };
    let first = q.enqueue(periodic(ExistingWorkPolicy::Update, 1)).await.unwrap();
    let before = task(&d, first.id).await;
    let kept = q.enqueue(periodic(ExistingWorkPolicy::Keep, 2)).await.unwrap();
    assert_eq!(
        (kept.id, task(&d, first.id).await.input.get("v").cloned()),
        (first.id, Some(Value::S64(1)))
    );
    let updated = q.enqueue(periodic(ExistingWorkPolicy::Update, 3)).await.unwrap();
    let after = task(&d, first.id).await;
    assert_eq!((updated.id, updated.created), (first.id, false));
    assert_eq!(after.input.get("v"), Some(&Value::S64(3)));
    assert_eq!(after.next_run_at, before.next_run_at, "UPDATE keeps the schedule");
    let re = q
        .enqueue(periodic(ExistingWorkPolicy::CancelAndReenqueue, 4))
        .await
        .unwrap();
    assert!(re.created && re.id != first.id);
    assert_eq!(task(&d, first.id).await.state, TaskState::Cancelled);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_work_gets_its_parents_output_and_shares_their_fate() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir).await;
    let q = d.queue();
    let mut parent = WorkRequest::one_off("echo", "parent");
    parent.input = Data::new().with("from_parent", "p").with("shared", 1i64);
    parent.initial_delay = secs(10);
    let parent = q.enqueue(parent).await.unwrap().id;
    let mut child = WorkRequest::one_off("echo", "child");
    child.input = Data::new().with("own", true).with("shared", 2i64);
    child.after = vec![parent];
    let child = q.enqueue(child).await.unwrap().id;
    assert_eq!(task(&d, child).await.state, TaskState::Blocked);
    d.advance(secs(10));
    d.run_until_idle().await;
    let t = task(&d, child).await;
    assert_eq!(t.state, TaskState::Succeeded);
    assert_eq!(
        t.output,
        Some(
            Data::new()
                .with("from_parent", "p")
                .with("own", true)
                .with("shared", 1i64)
        )
    );

    // A failed parent fails its dependents, transitively; a cancelled one
    // cancels them.
    let failing = q.enqueue(WorkRequest::one_off("fail", "x")).await.unwrap().id;
    let mut c1 = WorkRequest::one_off("echo", "c1");
    c1.after = vec![failing];
    let c1 = q.enqueue(c1).await.unwrap().id;
    let mut c2 = WorkRequest::one_off("echo", "c2");
    c2.after = vec![c1];
    let c2 = q.enqueue(c2).await.unwrap().id;
    d.run_until_idle().await;
    for id in [failing, c1, c2] {
        assert_eq!(task(&d, id).await.state, TaskState::Failed, "task {id}");
    }
    let mut later = WorkRequest::one_off("echo", "later");
    later.initial_delay = secs(100);
    let later = q.enqueue(later).await.unwrap().id;
    let mut c3 = WorkRequest::one_off("echo", "c3");
    c3.after = vec![later];
    let c3 = q.enqueue(c3).await.unwrap().id;
    let cancelled = d.host().cancel(Selector::Id(later)).await.unwrap();
    assert_eq!(cancelled, vec![later, c3]);
    assert_eq!(task(&d, c3).await.state, TaskState::Cancelled);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_running_work_stops_it_and_cancel_selects_by_tag_name_and_all() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir).await;
    let q = d.queue();
    let id = q.enqueue(WorkRequest::one_off("spin", "forever")).await.unwrap().id;
    while task(&d, id).await.state != TaskState::Running {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let asked = std::time::Instant::now();
    d.host().cancel(Selector::Id(id)).await.unwrap();
    while !d.host().running().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(asked.elapsed() < Duration::from_secs(1), "{:?}", asked.elapsed());
    let t = task(&d, id).await;
    assert_eq!(t.state, TaskState::Cancelled);
    assert_eq!(t.attempts[0].stop_reason.as_deref(), Some("cancelled"));

    let mut ids = Vec::new();
    for (tag, name) in [("a", "n1"), ("a", "n2"), ("b", "n3"), ("c", "n4")] {
        let mut r = unique("echo", name, ExistingWorkPolicy::Keep);
        r.tags = vec![tag.into()];
        ids.push(q.enqueue(r).await.unwrap().id);
    }
    assert_eq!(
        d.host().cancel(Selector::Tag("a".into())).await.unwrap(),
        vec![ids[0], ids[1]]
    );
    assert_eq!(
        d.host().cancel(Selector::UniqueName("n3".into())).await.unwrap(),
        vec![ids[2]]
    );
    assert_eq!(d.host().cancel(Selector::All).await.unwrap(), vec![ids[3]]);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_hosts_start_nothing_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir).await;
    d.queue().pause().await.unwrap();
    assert!(d.queue().is_paused().await.unwrap());
    let id = d.queue().enqueue(WorkRequest::one_off("echo", "x")).await.unwrap().id;
    d.run_until_idle().await;
    assert_eq!(task(&d, id).await.state, TaskState::Enqueued);
    d.queue().resume().await.unwrap();
    d.run_until_idle().await;
    assert_eq!(task(&d, id).await.state, TaskState::Succeeded);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_is_durable_across_host_restarts_and_private_per_handler() {
    let dir = tempfile::tempdir().unwrap();
    for expected in [1i64, 2] {
        let d = driver(&dir).await;
        let id = d
            .queue()
            .enqueue(WorkRequest::one_off("counter", "c"))
            .await
            .unwrap()
            .id;
        d.run_until_idle().await;
        assert_eq!(
            task(&d, id).await.output.unwrap().get("total_executions"),
            Some(&Value::S64(expected))
        );
        d.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_naming_the_problem_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir).await;
    let q = d.queue();
    let err = q
        .enqueue(WorkRequest::one_off("nope", "x"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no handler named \"nope\""), "{err}");
    let mut r = WorkRequest::one_off("echo", "x");
    r.input = Data::new().with("blob", "x".repeat(11_000));
    assert!(q.enqueue(r).await.unwrap_err().to_string().contains("\"blob\""));
    let mut r = WorkRequest::one_off("echo", "x");
    r.after = vec![999];
    assert!(
        q.enqueue(r)
            .await
            .unwrap_err()
            .to_string()
            .contains("no task with id 999")
    );
    assert!(
        q.query(Default::default()).await.unwrap().is_empty(),
        "a refused request leaves nothing behind"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_select_by_state_tag_and_unique_name_and_events_stream() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir).await;
    let mut events = d.queue().subscribe();
    let mut r = unique("echo", "named", ExistingWorkPolicy::Keep);
    r.tags = vec!["t1".into(), "t2".into()];
    let delayed = d.queue().enqueue(r).await.unwrap().id;
    let ran = d.queue().enqueue(WorkRequest::one_off("echo", "now")).await.unwrap().id;
    d.run_until_idle().await;
    let q = d.queue();
    let cases = [
        (
            workhost::Query {
                state: Some(TaskState::Enqueued),
                ..Default::default()
            },
            vec![delayed],
        ),
        (
            workhost::Query {
                state: Some(TaskState::Succeeded),
                ..Default::default()
            },
            vec![ran],
        ),
        (
            workhost::Query {
                tag: Some("t2".into()),
                ..Default::default()
            },
            vec![delayed],
        ),
        (
            workhost::Query {
                unique_name: Some("named".into()),
                ..Default::default()
            },
            vec![delayed],
        ),
    ];
    for (query, expected) in cases {
        let found: Vec<TaskId> = q
            .query(query.clone())
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(found, expected, "{query:?}");
    }
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push((e.id, e.event));
    }
    assert_eq!(
        seen,
        [
            (delayed, "scheduled"),
            (ran, "scheduled"),
            (ran, "started"),
            (ran, "succeeded")
        ]
    );
    assert_eq!(q.prune(true).await.unwrap(), 1);
    assert!(q.get(ran).await.unwrap().is_none());
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_running_work_its_grace_then_stops_and_re_enqueues_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = host_config(dir.path());
    config.shutdown_grace = Duration::from_millis(100);
    let d = TestDriver::start(config.clone()).await.unwrap();
    let id = d
        .queue()
        .enqueue(WorkRequest::one_off("spin", "long"))
        .await
        .unwrap()
        .id;
    let done = d
        .queue()
        .enqueue(WorkRequest::one_off("echo", "quick"))
        .await
        .unwrap()
        .id;
    while task(&d, id).await.state != TaskState::Running {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while task(&d, done).await.state != TaskState::Succeeded {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let queue = d.queue().clone();
    d.shutdown().await;
    let t = queue.get(id).await.unwrap().unwrap();
    assert_eq!(
        (t.state, t.stop_reason.as_deref()),
        (TaskState::Enqueued, Some("host-shutdown"))
    );
    assert_eq!(t.attempts[0].stop_reason.as_deref(), Some("host-shutdown"));
    assert_eq!(queue.get(done).await.unwrap().unwrap().state, TaskState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reported_during_a_run_is_stored_with_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir).await;
    let id = d
        .queue()
        .enqueue(WorkRequest::one_off("chatty", "report"))
        .await
        .unwrap()
        .id;
    d.run_until_idle().await;
    let t = task(&d, id).await;
    assert_eq!(t.state, TaskState::Succeeded);
    assert_eq!(t.progress, Some(Data::new().with("percent", 50i64)));
    d.shutdown().await;
}

/// Enqueues `n` copies of `request` at once (they share group commits).
async fn enqueue_many(queue: &workhost::Queue, request: WorkRequest, n: usize) -> Vec<TaskId> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (queue, request) = (queue.clone(), request.clone());
        set.spawn(async move { queue.enqueue(request).await.unwrap().id });
    }
    let mut ids = set.join_all().await;
    ids.sort();
    ids
}

/// Enqueues `n` tasks of `handler` straight into the store, as a process
/// with another manifest would, due now on the driver's clock.
async fn enqueue_elsewhere(d: &TestDriver, handler: &str, n: usize) -> Vec<TaskId> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (store, request, now) = (d.queue().store().clone(), WorkRequest::one_off(handler, "t"), d.now());
        set.spawn(async move { store.enqueue(request, now, EnqueueHooks::default()).await.unwrap().0.id });
    }
    let mut ids = set.join_all().await;
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_handlers_backlog_and_unknown_handlers_work_hold_up_no_other_handler() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = host_config(dir.path());
    config.shutdown_grace = Duration::from_millis(100);
    for h in &mut config.handlers {
        if h.name == "spin" {
            h.concurrency = 1;
        }
    }
    let d = TestDriver::start(config).await.unwrap();
    let mut alerts = d.host().alerts();
    // Work of a handler this host lacks (enqueued under another manifest),
    // and a backlog of thousands on a handler whose one slot is taken by a
    // run that never ends on its own: all of it due before the echo task.
    let gone = enqueue_elsewhere(&d, "gone", 500).await;
    let mut spin = WorkRequest::one_off("spin", "s");
    spin.tags = vec!["spin".into()];
    enqueue_many(d.queue(), spin, 2000).await;
    let echo = d.queue().enqueue(WorkRequest::one_off("echo", "e")).await.unwrap().id;
    let start = std::time::Instant::now();
    while task(&d, echo).await.state != TaskState::Succeeded {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the echo task waits behind the backlogs: {:?}",
            task(&d, echo).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(d.host().running().len(), 1, "one spin run in its one slot");
    assert_eq!(task(&d, gone[0]).await.state, TaskState::Enqueued);
    let alert = tokio::time::timeout(Duration::from_secs(10), alerts.recv())
        .await
        .expect("an alert for the unknown handler")
        .unwrap();
    assert_eq!(alert.task, Some(gone[0]));
    assert!(
        alert.message.contains(&format!(
            "(the oldest is task {}) for handler \"gone\", which this host does not have",
            gone[0]
        )),
        "{}",
        alert.message
    );
    // More of its work changes nothing: one alert per handler. And the
    // work waiting for it does not keep the host from being idle.
    enqueue_elsewhere(&d, "gone", 10).await;
    d.host().cancel(Selector::Tag("spin".into())).await.unwrap();
    let echo = d.queue().enqueue(WorkRequest::one_off("echo", "e")).await.unwrap().id;
    tokio::time::timeout(Duration::from_secs(20), d.run_until_idle())
        .await
        .expect("work no host here can run leaves the host idle");
    assert_eq!(task(&d, echo).await.state, TaskState::Succeeded);
    assert_eq!(task(&d, gone[0]).await.state, TaskState::Enqueued);
    d.shutdown().await;
    while let Ok(a) = alerts.try_recv() {
        assert!(!a.message.contains("\"gone\""), "a second alert: {a:?}");
    }
}

/// Waits until the host's dispatcher has woken `n` more times.
async fn polls(d: &TestDriver, n: u64) {
    let target = d.host().stats().polls + n;
    let start = std::time::Instant::now();
    while d.host().stats().polls < target {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the dispatcher stopped polling"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_host_takes_no_write_lock_and_claims_only_when_work_is_due() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = host_config(dir.path());
    config.poll_interval = Duration::from_millis(1);
    let d = TestDriver::start(config).await.unwrap();
    let mut later = WorkRequest::one_off("echo", "later");
    later.initial_delay = secs(3600);
    let id = d.queue().enqueue(later).await.unwrap().id;
    d.run_until_idle().await;
    let before = d.host().stats();
    // Another process holds the store's write lock all along: a host that
    // tried to take it would wait on it.
    let holder = rusqlite::Connection::open(dir.path().join("workhost.db")).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    polls(&d, 200).await;
    assert_eq!(
        d.host().stats().claims,
        before.claims,
        "nothing was due, so nothing was claimed"
    );
    assert_eq!(
        task(&d, id).await.state,
        TaskState::Enqueued,
        "reads go on beside the lock"
    );
    holder.execute_batch("COMMIT").unwrap();
    // Once the work is due, one claim takes it.
    d.advance(secs(3600));
    d.run_until_idle().await;
    assert_eq!(task(&d, id).await.state, TaskState::Succeeded);
    polls(&d, 50).await;
    assert_eq!(d.host().stats().claims, before.claims + 1);
    // A paused host with due work claims nothing either.
    d.queue().pause().await.unwrap();
    let paused = d.queue().enqueue(WorkRequest::one_off("echo", "p")).await.unwrap().id;
    let before = d.host().stats();
    polls(&d, 100).await;
    assert_eq!(d.host().stats().claims, before.claims);
    d.queue().resume().await.unwrap();
    d.run_until_idle().await;
    assert_eq!(task(&d, paused).await.state, TaskState::Succeeded);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_data_keeps_its_types_through_the_store_empty_lists_too() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir).await;
    let input = Data::new()
        .with("s64s", Value::S64List(vec![]))
        .with("bools", Value::BoolList(vec![]))
        .with("f64s", Value::F64List(vec![]))
        .with("strings", Value::StringList(vec![]))
        .with("whole", 2.0f64);
    let mut parent = WorkRequest::one_off("echo", "parent");
    parent.input = input.clone();
    let parent = d.queue().enqueue(parent).await.unwrap().id;
    let mut child = WorkRequest::one_off("echo", "child");
    child.after = vec![parent];
    child.input = Data::new().with("own", Value::S64List(vec![]));
    let child = d.queue().enqueue(child).await.unwrap().id;
    assert_eq!(task(&d, parent).await.input, input, "input as stored");
    d.run_until_idle().await;
    let p = task(&d, parent).await;
    assert_eq!(
        (p.state, p.output),
        (TaskState::Succeeded, Some(input.clone())),
        "output"
    );
    let mut merged = input.clone();
    merged.insert("own", Value::S64List(vec![]));
    let c = task(&d, child).await;
    assert_eq!(c.input, merged, "chained input");
    assert_eq!(c.output, Some(merged), "what the child's handler got");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_prunes_finished_work_after_its_retention_and_keeps_a_waiting_childs_parents() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir).await;
    let done = d
        .queue()
        .enqueue(WorkRequest::one_off("echo", "done"))
        .await
        .unwrap()
        .id;
    let mut p1 = WorkRequest::one_off("echo", "p1");
    p1.input = Data::new().with("from_p1", 1i64);
    let p1 = d.queue().enqueue(p1).await.unwrap().id;
    let mut p2 = WorkRequest::one_off("echo", "p2");
    p2.initial_delay = secs(2 * 86_400);
    let p2 = d.queue().enqueue(p2).await.unwrap().id;
    let mut child = WorkRequest::one_off("echo", "child");
    child.after = vec![p1, p2];
    let child = d.queue().enqueue(child).await.unwrap().id;
    d.run_until_idle().await;
    assert_eq!(task(&d, done).await.state, TaskState::Succeeded);
    // Within the retention (1 day by default) everything is kept.
    d.advance(secs(86_400 - 60));
    d.run_until_idle().await;
    assert!(d.queue().get(done).await.unwrap().is_some());
    // Past it, the host prunes on its own, but not a parent whose child
    // still waits.
    d.advance(secs(60 + workhost::PRUNE_EVERY.as_secs()));
    d.run_until_idle().await;
    assert!(
        d.queue().get(done).await.unwrap().is_none(),
        "pruned after the retention"
    );
    let c = task(&d, child).await;
    assert_eq!((c.state, c.after), (TaskState::Blocked, vec![p1, p2]));
    assert_eq!(task(&d, p1).await.state, TaskState::Succeeded, "kept for its child");
    d.set_initial_delay_met(p2).await.unwrap();
    d.run_until_idle().await;
    let c = task(&d, child).await;
    assert_eq!(c.state, TaskState::Succeeded);
    assert_eq!(
        c.output.unwrap().get("from_p1"),
        Some(&Value::S64(1)),
        "the pruned-around parent's output"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_task_keeps_its_latest_attempts_over_every_period() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir).await;
    let kept = workhost::PERIODIC_ATTEMPTS_KEPT as usize;
    let id = d
        .queue()
        .enqueue(WorkRequest::periodic("counter", "count", secs(900)))
        .await
        .unwrap()
        .id;
    // The first period's run is due at once; each later one when the test
    // says its period delay is met.
    d.run_until_idle().await;
    let mut starts = vec![d.now()];
    for _ in 1..kept + 5 {
        d.advance(secs(1));
        d.set_period_delay_met(id).await.unwrap();
        d.run_until_idle().await;
        starts.push(d.now());
    }
    let t = task(&d, id).await;
    assert_eq!(
        t.output.unwrap().get("total_executions"),
        Some(&Value::S64(kept as i64 + 5))
    );
    assert_eq!(t.attempts.len(), kept, "{:?}", t.attempts);
    assert_eq!(
        t.attempts.iter().map(|a| a.started_at).collect::<Vec<_>>(),
        starts[5..],
        "the latest runs, oldest first"
    );
    assert!(
        t.attempts
            .iter()
            .all(|a| a.attempt == 1 && a.outcome.as_deref() == Some("success"))
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_handlers_work_waits_while_another_handlers_runs_then_runs_after_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir).await;
    let q = d.queue();
    q.pause_handler("echo").await.unwrap();
    assert_eq!(q.paused_handlers().await.unwrap(), ["echo"]);
    let waits = q.enqueue(WorkRequest::one_off("echo", "x")).await.unwrap().id;
    let runs = q.enqueue(WorkRequest::one_off("counter", "c")).await.unwrap().id;
    d.run_until_idle().await;
    assert_eq!(
        task(&d, waits).await.state,
        TaskState::Enqueued,
        "enqueue is still taken"
    );
    assert_eq!(task(&d, runs).await.state, TaskState::Succeeded);
    let counts = q.count_by_handler().await.unwrap();
    assert_eq!(counts["echo"][&TaskState::Enqueued], 1);
    assert!(matches!(
        q.pause_handler("nope").await,
        Err(workhost::WorkError::UnknownHandler(h)) if h == "nope"
    ));
    q.resume_handler("echo").await.unwrap();
    d.run_until_idle().await;
    assert_eq!(task(&d, waits).await.state, TaskState::Succeeded);
    assert_eq!(q.paused_handlers().await.unwrap(), Vec::<String>::new());
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_task_actions_tell_an_unknown_task_from_a_wrong_state_and_emit_events() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(&dir).await;
    let q = d.queue();
    let mut events = q.subscribe();
    let failed = q.enqueue(WorkRequest::one_off("fail", "f")).await.unwrap().id;
    let mut later = WorkRequest::one_off("echo", "later");
    later.initial_delay = secs(3600);
    let later = q.enqueue(later).await.unwrap().id;
    d.run_until_idle().await;
    assert_eq!(task(&d, failed).await.state, TaskState::Failed);
    let wrong = q.retry_task(later).await.unwrap_err();
    assert!(matches!(
        wrong,
        workhost::WorkError::WrongState {
            state: TaskState::Enqueued,
            action: workhost::TaskAction::Retry,
            ..
        }
    ));
    assert_eq!(
        wrong.to_string(),
        format!("task {later} is ENQUEUED; only FAILED or CANCELLED tasks can be retried")
    );
    assert!(matches!(
        q.retry_task(999).await,
        Err(workhost::WorkError::UnknownTask(999))
    ));
    assert!(matches!(
        q.delete_task(later).await,
        Err(workhost::WorkError::WrongState { .. })
    ));
    // Paused, so the dispatcher the retry wakes does not claim the task
    // before it is read back.
    q.pause().await.unwrap();
    let retried = q.retry_task(failed).await.unwrap();
    assert_eq!((retried.state, retried.run_attempt_count), (TaskState::Enqueued, 0));
    let ran = q.run_now_task(later).await.unwrap();
    assert_eq!(ran.next_run_at, d.now());
    q.resume().await.unwrap();
    d.run_until_idle().await;
    assert_eq!(task(&d, later).await.state, TaskState::Succeeded);
    assert_eq!(task(&d, failed).await.attempts.len(), 2);
    q.delete_task(later).await.unwrap();
    assert!(matches!(
        q.delete_task(later).await,
        Err(workhost::WorkError::UnknownTask(_))
    ));
    // Paused first, so the dispatcher cannot run it before the cancel.
    q.pause().await.unwrap();
    let cancel = q.enqueue(WorkRequest::one_off("echo", "c")).await.unwrap().id;
    assert_eq!(q.cancel_task(cancel).await.unwrap().state, TaskState::Cancelled);
    assert!(matches!(
        q.cancel_task(cancel).await,
        Err(workhost::WorkError::WrongState { .. })
    ));
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push((e.id, e.event));
    }
    for wanted in [
        (failed, "retried"),
        (later, "rescheduled"),
        (later, "deleted"),
        (cancel, "cancelled"),
    ] {
        assert!(seen.contains(&wanted), "{wanted:?} in {seen:?}");
    }
    d.shutdown().await;
}

/// A host with one run slot.
async fn one_slot(dir: &tempfile::TempDir) -> TestDriver {
    let mut config = host_config(dir.path());
    config.max_concurrency = 1;
    TestDriver::start(config).await.unwrap()
}

/// The events received so far: task and event name, in order.
fn received(events: &mut tokio::sync::broadcast::Receiver<workhost::TaskEvent>) -> Vec<(TaskId, &'static str)> {
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push((e.id, e.event));
    }
    seen
}

/// A run that ends hands its slot on in the same commit as its outcome
/// (`TaskStore::finish_then_claim`), and the slot goes round the handlers:
/// another handler's first due task before the finished run's handler's
/// next. One run slot, three `echo` tasks due before one `counter` task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freed_run_slot_goes_to_another_handlers_due_work_before_the_same_handlers_next() {
    let dir = tempfile::tempdir().unwrap();
    let d = one_slot(&dir).await;
    let q = d.queue();
    let mut events = q.subscribe();
    // All four are due before the first claim.
    q.pause().await.unwrap();
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            q.enqueue(WorkRequest::one_off("echo", format!("e{n}")))
                .await
                .unwrap()
                .id,
        );
    }
    let counter = q.enqueue(WorkRequest::one_off("counter", "c")).await.unwrap().id;
    q.resume().await.unwrap();
    d.run_until_idle().await;
    let started: Vec<TaskId> = received(&mut events)
        .into_iter()
        .filter(|(_, event)| *event == "started")
        .map(|(id, _)| id)
        .collect();
    assert_eq!(started, vec![ids[0], counter, ids[1], ids[2]]);
    for id in ids.iter().chain([&counter]) {
        assert_eq!(task(&d, *id).await.state, TaskState::Succeeded);
    }
    d.shutdown().await;
}

/// A dependent that a parent's finish releases, and that the slot's
/// hand-on claims in the same commit, is reported `scheduled` after its
/// parent's `succeeded` and before its own `started`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_dependent_claimed_by_the_hand_on_is_reported_scheduled_before_started() {
    let dir = tempfile::tempdir().unwrap();
    let d = one_slot(&dir).await;
    let q = d.queue();
    let mut events = q.subscribe();
    for round in 0..20 {
        let parent = q
            .enqueue(WorkRequest::one_off("echo", format!("p{round}")))
            .await
            .unwrap()
            .id;
        let mut r = WorkRequest::one_off("echo", format!("c{round}"));
        r.after = vec![parent];
        let child = q.enqueue(r).await.unwrap().id;
        d.run_until_idle().await;
        assert_eq!(task(&d, child).await.state, TaskState::Succeeded);
        let seen = received(&mut events);
        let at = |id, event| {
            seen.iter()
                .position(|s| *s == (id, event))
                .unwrap_or_else(|| panic!("{seen:?}"))
        };
        assert!(at(parent, "succeeded") < at(child, "started"), "{seen:?}");
        assert!(at(child, "scheduled") < at(child, "started"), "{seen:?}");
    }
    d.shutdown().await;
}
