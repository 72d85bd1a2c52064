//! Schedules through the library (docs/schedules.md): cron in time zones
//! over days of manual clock, missed fires by catch-up policy, priorities,
//! expedited work and rates on a running host, and the manifest's declared
//! schedules.

use std::time::Duration;

use workhost::{
    CatchUp, CronSchedule, DeviceOverrides, ExistingWorkPolicy, HandlerLimits, Millis, OutOfQuotaPolicy, Rate,
    ScheduleConfig, TaskId, TaskInfo, TaskState, TestDriver, WorkRequest,
};
use workhost_tests::host_config;

const MIN: Millis = 60_000;
const HOUR: Millis = 3_600_000;

async fn task(d: &TestDriver, id: TaskId) -> TaskInfo {
    d.queue().get(id).await.unwrap().unwrap()
}

fn at(rfc3339: &str) -> Millis {
    workhost::units::parse_rfc3339(rfc3339).unwrap()
}

/// Moves the manual clock to `to` in steps of `step`, letting what is due
/// at each step run; returns when each run of `id` started (from the
/// host's events).
async fn walk(d: &TestDriver, id: TaskId, to: Millis, step: Millis) -> Vec<Millis> {
    let mut events = d.queue().subscribe();
    let mut started = Vec::new();
    while d.now() < to {
        d.advance(Duration::from_millis(step.min(to - d.now()) as u64));
        d.run_until_idle().await;
        while let Ok(e) = events.try_recv() {
            if e.id == id && e.event == "started" {
                started.push(e.at);
            }
        }
    }
    started
}

/// The driver's clock moved to `to` with nothing enqueued.
async fn driver_at(dir: &tempfile::TempDir, to: &str) -> TestDriver {
    let d = TestDriver::start(host_config(dir.path())).await.unwrap();
    d.advance(Duration::from_millis((at(to) - d.now()) as u64));
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weekday_cron_in_paris_runs_at_nine_local_on_each_weekday_for_two_weeks() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDriver::start(host_config(dir.path())).await.unwrap(); // Thursday 2026-01-01 00:00Z
    let schedule = CronSchedule::new("0 9 * * MON-FRI", Some("Europe/Paris"), CatchUp::Last).unwrap();
    let id = d
        .queue()
        .enqueue(WorkRequest::cron("echo", "standup", schedule))
        .await
        .unwrap()
        .id;
    assert_eq!(task(&d, id).await.next_run_at, at("2026-01-01T08:00:00Z"));
    let started = walk(&d, id, at("2026-01-15T00:00:00Z"), HOUR).await;
    let expected: Vec<Millis> = [1, 2, 5, 6, 7, 8, 9, 12, 13, 14]
        .iter()
        .map(|day| at(&format!("2026-01-{day:02}T08:00:00Z")))
        .collect();
    assert_eq!(
        started, expected,
        "09:00 Paris (08:00Z) on each weekday, never on the weekend"
    );
    let t = task(&d, id).await;
    assert_eq!(
        (t.state, t.next_run_at),
        (TaskState::Enqueued, at("2026-01-15T08:00:00Z"))
    );
    assert!(t.attempts.iter().all(|a| a.outcome.as_deref() == Some("success")));
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_and_a_repeated_hour_each_run_a_daily_cron_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver_at(&dir, "2026-03-27T12:00:00Z").await;
    let schedule = CronSchedule::new("30 2 * * *", Some("Europe/Paris"), CatchUp::Last).unwrap();
    let id = d
        .queue()
        .enqueue(WorkRequest::cron("echo", "nightly", schedule))
        .await
        .unwrap()
        .id;
    let spring = walk(&d, id, at("2026-03-31T00:00:00Z"), 30 * MIN).await;
    assert_eq!(
        spring,
        [
            at("2026-03-28T01:30:00Z"), // 02:30 CET
            at("2026-03-29T01:30:00Z"), // 02:30 does not exist: 03:30 CEST, once
            at("2026-03-30T00:30:00Z"), // 02:30 CEST
        ]
    );
    d.advance(Duration::from_millis((at("2026-10-24T12:00:00Z") - d.now()) as u64));
    d.run_until_idle().await; // the fires missed meanwhile: one run (catch-up last)
    let autumn = walk(&d, id, at("2026-10-27T00:00:00Z"), 30 * MIN).await;
    assert_eq!(
        autumn,
        [
            at("2026-10-25T00:30:00Z"), // the first 02:30 (CEST); not again at 02:30 CET
            at("2026-10-26T01:30:00Z"), // 02:30 CET
        ]
    );
    d.shutdown().await;
}

/// No host runs for 5 h 10 min past an hourly schedule's fire at 01:00:
/// fires 01:00 to 05:00 were missed.
async fn missed(policy: CatchUp) -> (TaskInfo, usize) {
    let dir = tempfile::tempdir().unwrap();
    let d = TestDriver::start(host_config(dir.path())).await.unwrap();
    let schedule = CronSchedule::new("0 * * * *", None, policy).unwrap();
    let id = d
        .queue()
        .enqueue(WorkRequest::cron("echo", "hourly", schedule))
        .await
        .unwrap()
        .id;
    // The host stops; the next one starts (on the same store) and finds
    // the clock 5 h 10 min later.
    d.shutdown().await;
    let d = TestDriver::start(host_config(dir.path())).await.unwrap();
    let mut events = d.queue().subscribe();
    d.advance(Duration::from_millis((5 * HOUR + 10 * MIN) as u64));
    d.run_until_idle().await;
    let mut runs = 0;
    while let Ok(e) = events.try_recv() {
        if e.id == id && e.event == "started" {
            runs += 1;
        }
    }
    let t = task(&d, id).await;
    d.shutdown().await;
    (t, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_fires_run_as_the_catch_up_policy_says() {
    let next = at("2026-01-01T06:00:00Z");
    let (t, runs) = missed(CatchUp::None).await;
    assert_eq!(
        (runs, t.next_run_at, t.output.clone()),
        (0, next, None),
        "none: skipped"
    );
    let skip = t.attempts.last().unwrap();
    assert_eq!(skip.stop_reason.as_deref(), Some("missed-fire"));
    assert!(
        t.error.as_deref().unwrap().contains("2026-01-01T01:00:00"),
        "{:?}",
        t.error
    );
    let (t, runs) = missed(CatchUp::Last).await;
    assert_eq!((runs, t.next_run_at), (1, next), "last: once, for 05:00");
    let (t, runs) = missed(CatchUp::All(10)).await;
    assert_eq!((runs, t.next_run_at), (5, next), "all: each of 01:00 to 05:00");
    let (t, runs) = missed(CatchUp::All(2)).await;
    assert_eq!((runs, t.next_run_at), (2, next), "all, at most 2: 04:00 and 05:00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_work_starts_first_on_a_busy_handler() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = host_config(dir.path());
    config.handlers.iter_mut().for_each(|h| h.concurrency = 1);
    let d = TestDriver::start(config).await.unwrap();
    d.queue().pause().await.unwrap();
    let mut ids = Vec::new();
    for p in [9u8, 5, 0, 7] {
        let mut r = WorkRequest::one_off("echo", format!("p{p}"));
        r.priority = p;
        ids.push(d.queue().enqueue(r).await.unwrap().id);
    }
    let mut events = d.queue().subscribe();
    d.queue().resume().await.unwrap();
    d.run_until_idle().await;
    let mut order = Vec::new();
    while let Ok(e) = events.try_recv() {
        if e.event == "started" {
            order.push(e.id);
        }
    }
    assert_eq!(order, [ids[2], ids[1], ids[3], ids[0]], "0, 5, 7, 9");
    let mut bad = WorkRequest::one_off("echo", "x");
    bad.priority = 10;
    let e = d.queue().enqueue(bad).await.unwrap_err().to_string();
    assert!(e.contains("priority 10") && e.contains("0 (highest) to 9"), "{e}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expedited_work_runs_while_the_device_is_busy_within_its_quota() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = host_config(dir.path());
    for h in config.handlers.iter_mut() {
        h.expedited_quota = Some(Rate::parse("1/h").unwrap());
    }
    let d = TestDriver::start(config).await.unwrap();
    d.set_device(DeviceOverrides {
        idle: Some(false),
        ..DeviceOverrides::default()
    });
    let idle_only = |expedited: Option<OutOfQuotaPolicy>| {
        let mut r = WorkRequest::one_off("echo", "e");
        r.constraints.device_idle = true;
        r.expedited = expedited;
        r
    };
    let normal = d.queue().enqueue(idle_only(None)).await.unwrap().id;
    let fast = d
        .queue()
        .enqueue(idle_only(Some(OutOfQuotaPolicy::RunAsNormal)))
        .await
        .unwrap();
    let over = d
        .queue()
        .enqueue(idle_only(Some(OutOfQuotaPolicy::RunAsNormal)))
        .await
        .unwrap();
    assert!(
        over.warnings.iter().any(|w| w.contains("expedited quota")),
        "{:?}",
        over.warnings
    );
    let dropped = d
        .queue()
        .enqueue(idle_only(Some(OutOfQuotaPolicy::Drop)))
        .await
        .unwrap();
    d.run_until_idle().await;
    assert_eq!(
        task(&d, fast.id).await.state,
        TaskState::Succeeded,
        "expedited: not held by idle"
    );
    assert_eq!(task(&d, normal).await.state, TaskState::Enqueued);
    assert_eq!(
        task(&d, over.id).await.state,
        TaskState::Enqueued,
        "over the quota: normal work"
    );
    assert_eq!(task(&d, dropped.id).await.state, TaskState::Cancelled);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_over_its_handlers_rate_waits_without_spending_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = host_config(dir.path());
    for h in config.handlers.iter_mut() {
        h.rate = Some(Rate::parse("2/min").unwrap());
    }
    assert_eq!(
        config.limits().get("echo"),
        Some(&HandlerLimits {
            rate: Some(Rate::parse("2/min").unwrap()),
            expedited_quota: None
        })
    );
    let d = TestDriver::start(config).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            d.queue()
                .enqueue(WorkRequest::one_off("echo", format!("t{i}")))
                .await
                .unwrap()
                .id,
        );
    }
    let states = |d: &TestDriver| {
        let d = d.queue().clone();
        let ids = ids.clone();
        async move {
            let mut out = Vec::new();
            for id in ids {
                let t = d.get(id).await.unwrap().unwrap();
                out.push((t.state, t.run_attempt_count));
            }
            out
        }
    };
    use TaskState::*;
    d.run_until_idle().await;
    assert_eq!(
        states(&d).await,
        [
            (Succeeded, 1),
            (Succeeded, 1),
            (Enqueued, 0),
            (Enqueued, 0),
            (Enqueued, 0)
        ]
    );
    d.advance(Duration::from_secs(60));
    d.run_until_idle().await;
    assert_eq!(states(&d).await[..4], [(Succeeded, 1); 4]);
    d.advance(Duration::from_secs(60));
    d.run_until_idle().await;
    assert_eq!(states(&d).await[4], (Succeeded, 1));
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_schedules_are_registered_once_and_a_changed_one_takes_effect() {
    let dir = tempfile::tempdir().unwrap();
    let declare = |expr: &str| {
        let mut config = host_config(dir.path());
        config.schedules.push(ScheduleConfig {
            name: "nightly-report".into(),
            handler: "echo".into(),
            task: "report".into(),
            schedule: CronSchedule::new(expr, Some("America/New_York"), CatchUp::None).unwrap(),
            input: workhost::Data::new().with("kind", "daily"),
            priority: 2,
        });
        config
    };
    let d = TestDriver::start(declare("0 23 * * *")).await.unwrap();
    let listed = |d: &TestDriver| {
        let q = d.queue().clone();
        async move {
            q.query(workhost::Query {
                unique_name: Some("nightly-report".into()),
                ..Default::default()
            })
            .await
            .unwrap()
        }
    };
    let first = listed(&d).await;
    assert_eq!(first.len(), 1);
    // 23:00 New York (EST, UTC-5) is 04:00Z the next day.
    assert_eq!(first[0].next_run_at, at("2026-01-01T04:00:00Z"));
    assert_eq!(first[0].priority, 2);
    assert_eq!(first[0].input.get("kind"), Some(&"daily".into()));
    d.shutdown().await;
    let d = TestDriver::start(declare("0 23 * * *")).await.unwrap();
    assert_eq!(listed(&d).await, first, "a restart keeps the one task and its fire");
    d.shutdown().await;
    let d = TestDriver::start(declare("0 22 * * *")).await.unwrap();
    let changed = listed(&d).await;
    assert_eq!((changed.len(), changed[0].id), (1, first[0].id));
    assert_eq!(changed[0].next_run_at, at("2026-01-01T03:00:00Z"));
    let mut other = WorkRequest::cron("echo", "x", CronSchedule::new("@daily", None, CatchUp::Last).unwrap());
    other.unique = Some(("nightly-report".into(), ExistingWorkPolicy::Keep));
    assert_eq!(d.queue().enqueue(other).await.unwrap().id, first[0].id);
    d.shutdown().await;
}

// ---------------------------------------------------------------------------
// The command line.

fn wh(manifest: &std::path::Path, args: &[&str]) -> workhost_tests::CliRun {
    let mut all = args.to_vec();
    all.extend(["--config", manifest.to_str().unwrap()]);
    workhost_tests::workhost(&all, manifest.parent().unwrap())
}

#[test]
fn bad_schedule_input_is_refused_naming_the_field_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let m = workhost_tests::write_manifest(dir.path());
    for (args, says) in [
        (vec!["--cron", "0 25 * * *"], vec!["--cron", "hour", "0-23"]),
        (vec!["--cron", "* * *"], vec!["--cron", "3 fields", "expected 5"]),
        (vec!["--cron", "0 9 * * FUN"], vec!["day-of-week", "FUN"]),
        (
            vec!["--cron", "0 9 * * *", "--tz", "Mars/Olympus"],
            vec!["--tz", "Mars/Olympus"],
        ),
        (vec!["--at", "2026-12-01 09:00"], vec!["--at", "RFC 3339"]),
        (vec!["--priority", "10"], vec!["priority 10", "0 (highest) to 9"]),
        (vec!["--priority", "300"], vec!["--priority"]),
        (
            vec!["--cron", "0 9 * * *", "--catch-up", "sometimes"],
            vec!["--catch-up", "sometimes"],
        ),
        (vec!["--every", "1h", "--expedited"], vec!["--expedited"]),
        (vec!["--cron", "0 9 * * *", "--every", "1h"], vec!["--cron", "--every"]),
        (
            vec!["--delay", "1h", "--at", "2026-12-01T09:00:00Z"],
            vec!["--at", "--delay"],
        ),
    ] {
        let mut all = vec!["enqueue", "echo", "--task", "t"];
        all.extend(&args);
        let run = wh(&m, &all);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        for s in says {
            assert!(run.stderr.contains(s), "{args:?}: {s:?} not in {}", run.stderr);
        }
    }
    let list = wh(&m, &["list", "--json"]);
    assert_eq!(list.json(), serde_json::json!([]), "nothing was stored");
    // A rate that is not N/unit, in the manifest, names its key.
    let mut text = std::fs::read_to_string(&m).unwrap();
    text = text.replacen("[handlers.echo]\n", "[handlers.echo]\nrate = \"100/fortnight\"\n", 1);
    std::fs::write(&m, text).unwrap();
    let run = wh(&m, &["list"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("handlers.echo.rate") && run.stderr.contains("N/unit"),
        "{}",
        run.stderr
    );
}

#[test]
fn cron_check_prints_the_next_fires_and_enqueue_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let m = workhost_tests::write_manifest(dir.path());
    let check = |args: &[&str]| workhost_tests::workhost(args, dir.path());
    let run = check(&[
        "cron",
        "check",
        "0 9 * * MON-FRI",
        "--tz",
        "Europe/Paris",
        "--next",
        "7",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let v = run.json();
    let next: Vec<&str> = v["next"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(next.len(), 7);
    for (fire, local) in next.iter().zip(v["next_local"].as_array().unwrap()) {
        let local = local.as_str().unwrap();
        assert!(local.contains(" 09:00:00 "), "{local}");
        assert!(fire.contains("T08:00:00") || fire.contains("T07:00:00"), "{fire}");
    }
    let human = check(&["cron", "check", "@hourly"]);
    assert_eq!(human.code, 0, "{human:?}");
    assert!(
        human.stdout.contains("0 0 * * * *") || human.stdout.contains("@hourly") || human.stdout.contains("0 * * * *")
    );
    let bad = check(&["cron", "check", "61 * * * *"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("minute"), "{}", bad.stderr);
    let bad = check(&["cron", "check", "0 9 * * *", "--tz", "Nowhere/Land"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("--tz") && bad.stderr.contains("Nowhere/Land"),
        "{}",
        bad.stderr
    );

    let id = wh(
        &m,
        &[
            "enqueue",
            "echo",
            "--task",
            "daily",
            "--cron",
            "30 6 * * *",
            "--tz",
            "Asia/Tokyo",
            "--catch-up",
            "all",
            "--catch-up-max",
            "3",
        ],
    )
    .stdout
    .trim()
    .to_string();
    let t = wh(&m, &["inspect", &id, "--json", "--next", "3"]).json();
    assert_eq!(t["cron"], "30 6 * * *");
    assert_eq!(t["tz"], "Asia/Tokyo");
    assert_eq!(t["catch_up"], "all:3");
    assert_eq!(t["kind"], "periodic");
    let runs = t["next_runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for r in runs {
        assert!(r.as_str().unwrap().contains("T21:30:00"), "06:30 Tokyo is 21:30Z: {r}");
    }
    let list = wh(&m, &["list", "--json", "--next", "2"]).json();
    assert_eq!(list[0]["next_runs"].as_array().unwrap().len(), 2);
    // An exact time in the past runs at once, with a warning.
    let run = wh(
        &m,
        &[
            "enqueue",
            "echo",
            "--task",
            "late",
            "--at",
            "2020-01-01T00:00:00+01:00",
            "--priority",
            "1",
            "--json",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.json()["warnings"][0].as_str().unwrap().contains("in the past"),
        "{run:?}"
    );
    let id = run.json()["id"].to_string();
    let t = wh(&m, &["inspect", &id, "--json"]).json();
    assert_eq!(t["priority"], 1);
    let future = wh(
        &m,
        &[
            "enqueue",
            "echo",
            "--task",
            "exact",
            "--at",
            "2999-01-01T09:00:00+01:00",
        ],
    );
    assert_eq!(future.code, 2, "more than ten years away: {future:?}");
    let run = wh(
        &m,
        &[
            "enqueue",
            "echo",
            "--task",
            "exact",
            "--at",
            "2030-06-01T09:00:00+02:00",
        ],
    );
    let t = wh(&m, &["inspect", run.stdout.trim(), "--json"]).json();
    assert_eq!(t["next_run_at"], "2030-06-01T07:00:00.000Z");
}

/// A run whose finish hands its slot on to the next run of the same task
/// (a missed fire due at once, caught up) leaves that run its place: the
/// host counts it running while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_handed_on_to_the_same_task_keeps_its_next_run_counted() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut config = host_config(dir.path());
        config.max_concurrency = 1;
        config
            .handlers
            .push(workhost::HandlerConfig::new("ledger", workhost_tests::guests::LEDGER));
        config
    };
    let d = TestDriver::start(config()).await.unwrap();
    let schedule = CronSchedule::new("0 * * * *", None, CatchUp::All(3)).unwrap();
    let mut request = WorkRequest::cron("ledger", "slow", schedule);
    request.input = workhost::Data::new().with("sleep_ms", 600i64).with("count", false);
    let id = d.queue().enqueue(request).await.unwrap().id;
    // The next host finds fires missed (as in `missed`), three of them to
    // catch up: each run's finish leaves the task due again at once, and
    // claims it for its own slot.
    d.shutdown().await;
    let d = TestDriver::start(config()).await.unwrap();
    let mut events = d.queue().subscribe();
    d.advance(Duration::from_millis((5 * HOUR + 10 * MIN) as u64));
    let mut starts = 0;
    while starts < 2 {
        let e = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("two runs start")
            .unwrap();
        if e.id == id && e.event == "started" {
            starts += 1;
        }
    }
    // The first run's end is well past; the second sleeps on.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(d.host().running(), vec![id], "the second run holds the slot");
    d.run_until_idle().await;
    assert_eq!(d.host().running(), Vec::<TaskId>::new());
    d.shutdown().await;
}
