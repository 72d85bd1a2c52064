//! Metered to the host's edge, through the CLI: what a run, a request or a
//! typo can make the host keep is bounded, and every bound is a clear
//! error or a marker, never a wrap or a silent loss.

use std::path::Path;

use workhost_tests::{CliRun, Daemon, guests, root, workhost, write_manifest};

fn wh(manifest: &Path, args: &[&str]) -> CliRun {
    let mut all = args.to_vec();
    all.extend(["--config", manifest.to_str().unwrap()]);
    workhost(&all, manifest.parent().unwrap())
}

fn exec(args: &[&str]) -> CliRun {
    workhost_tests::workhost_exec(args)
}

#[test]
fn a_huge_error_message_is_cut_to_8_kib_with_a_marker_in_exec_json() {
    let run = exec(&[guests::HOSTILE, "--input", "mode=huge-error", "--json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.len() < 64 << 10, "{} bytes printed", run.stdout.len());
    let json = run.json();
    let error = json["error"].as_str().unwrap();
    assert!(error.len() <= workhost::MAX_ERROR_BYTES, "{} bytes", error.len());
    let cut = (4 << 20) - error.split('…').next().unwrap().len();
    assert!(
        error.ends_with(&format!("[error message cut: {cut} more bytes]")),
        "{}",
        &error[error.len() - 80..]
    );
}

#[test]
fn a_flood_of_bare_newlines_is_stored_as_at_most_the_line_and_byte_caps() {
    let run = exec(&[guests::HOSTILE, "--input", "mode=newline-flood", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json = run.json();
    let log = json["log"].as_array().unwrap();
    assert!(log.len() <= 1001, "{} lines", log.len());
    let stored = serde_json::to_string(&json["log"]).unwrap().len();
    assert!(stored <= (64 << 10) + 512, "{stored} bytes of log");
    let marker = log.last().unwrap()["message"].as_str().unwrap();
    assert!(marker.starts_with("log truncated"), "{marker}");
    assert!(run.stdout.len() < 128 << 10, "{} bytes printed", run.stdout.len());
}

#[test]
fn exit_inside_a_handler_fails_the_run_and_not_the_host() {
    let run = exec(&[guests::HOSTILE, "--input", "mode=exit", "--json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let json = run.json();
    assert_eq!(json["outcome"], "failed", "{json}");
    assert!(json["error"].as_str().unwrap().contains("exit"), "{json}");
}

#[test]
fn durations_and_counts_past_their_bounds_are_refused_at_enqueue_and_nothing_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path());
    let long = "x".repeat(300);
    let many_tags: Vec<String> = (0..65).flat_map(|i| ["--tag".to_string(), format!("t{i}")]).collect();
    let mut cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--delay", "7000000d"], "initial delay"),
        // Past what a duration can hold at all (the due time would wrap).
        (vec!["--delay", "106751991167d"], "\"106751991167d\" is not a duration"),
        (vec!["--delay", "3651d"], "longer than the limit of 3650d"),
        (vec!["--every", "3651d"], "the period"),
        (vec!["--every", "1h", "--flex", "4000d"], "the flex"),
        (vec!["--backoff-delay", "9999d"], "the backoff delay"),
        (
            vec!["--max-attempts", "10001"],
            "max attempts is 10001; the limit is 10000",
        ),
        (vec!["--task", &long], "the task name is 300 bytes; the limit is 256"),
        (vec!["--unique", &long], "the unique name is 300 bytes"),
    ];
    cases.push((
        many_tags.iter().map(String::as_str).collect(),
        "the number of tags is 65",
    ));
    for (extra, words) in &cases {
        let mut args = vec!["enqueue", "echo"];
        if !extra.contains(&"--task") {
            args.extend(["--task", "t"]);
        }
        args.extend(extra.iter().copied());
        let run = wh(&m, &args);
        assert_eq!(run.code, 2, "{extra:?}: {run:?}");
        assert!(
            run.stderr.contains(words),
            "{extra:?}: {words:?} missing from {}",
            run.stderr
        );
    }
    // A delay that would wrap past the end of time (`u64` milliseconds)
    // is not a duration at all.
    let run = wh(
        &m,
        &["enqueue", "echo", "--task", "t", "--delay", "999999999999999999d"],
    );
    assert_eq!(run.code, 2, "{run:?}");
    let list = wh(&m, &["list", "--json"]);
    assert_eq!(list.code, 0, "{list:?}");
    assert_eq!(list.json(), serde_json::json!([]), "nothing was enqueued");
    // At the bound is accepted, and due when the bound says.
    let ok = wh(&m, &["enqueue", "echo", "--task", "t", "--delay", "3650d", "--json"]);
    assert_eq!(ok.code, 0, "{ok:?}");
}

#[test]
fn periodic_work_without_a_flex_runs_in_the_whole_period_and_warns_only_of_what_was_given() {
    let dir = tempfile::tempdir().unwrap();
    let cache = root().join("target/test-compile-cache");
    let m = dir.path().join("workhost.toml");
    std::fs::write(
        &m,
        format!(
            "cache_dir = {cache:?}\ndata_dir = \"data\"\n\n[handlers.echo]\ncomponent = {:?}\n",
            guests::ECHO
        ),
    )
    .unwrap();
    let run = wh(&m, &["enqueue", "echo", "--task", "p", "--every", "1m", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let warnings = run.json()["warnings"].clone();
    assert_eq!(
        warnings,
        serde_json::json!(["frequency 1m is below the minimum 15m; using 15m"]),
        "only the frequency was given: {}",
        run.stderr
    );
    let id = run.json()["id"].to_string();
    let t = wh(&m, &["inspect", &id, "--json"]).json();
    assert_eq!(t["flex_ms"], 15 * 60_000, "{t}");
    assert_eq!(
        t["next_run_at"], t["created_at"],
        "the first run is at once, not at the end of the period: {t}"
    );
}

#[test]
fn a_second_serve_on_a_served_directory_exits_1_not_2() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path());
    let _daemon = Daemon::start(&m);
    // The daemon says it serves once it holds the directory's lock.
    let start = Instant::now();
    while !std::fs::read_to_string(m.with_file_name("serve.log"))
        .unwrap_or_default()
        .contains("workhost: serving")
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the first serve never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The second must give up at once; should it ever serve, kill it
    // rather than hang the suite.
    let mut second = workhost_tests::workhost_command(&["serve", "--config", m.to_str().unwrap()], dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second serve on a served directory kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("already running"), "{stderr}");
}

#[test]
fn a_secret_over_1_kib_stops_the_manifest_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("workhost.toml");
    std::fs::write(
        &m,
        format!(
            "data_dir = \"data\"\n\n[handlers.echo]\ncomponent = {:?}\n\n[handlers.echo.secrets]\ntoken = {{ env = \"BIG_SECRET_FOR_EDGE_TEST\" }}\n",
            guests::ECHO
        ),
    )
    .unwrap();
    // The secret is in the child's environment only; serve must refuse it
    // and exit (killed, and the test failed, if it ever serves).
    let run = {
        let mut command = workhost_tests::workhost_command(&["serve", "--config", m.to_str().unwrap()], dir.path());
        command.env("BIG_SECRET_FOR_EDGE_TEST", "s".repeat(2000));
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("serve started with a secret over the limit");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        CliRun::from(child.wait_with_output().unwrap())
    };
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("secret \"token\" is 2000 bytes; the limit for a secret is 1024"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_debug_keeps_printing_after_a_burst_and_says_how_many_it_skipped() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path());
    // stdout is a pipe nobody reads yet: the printer stalls once it is full,
    // so the burst outruns it.
    let mut daemon = std::process::Command::new(workhost_tests::workhost_bin())
        .args(["serve", "--debug", "--config", m.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let queue = workhost::Queue::open(
        &dir.path().join("data"),
        vec!["echo".into()],
        workhost::PeriodicFloor::default(),
        std::time::Duration::from_secs(86_400),
    )
    .unwrap();
    let n = 3000;
    let mut last = 0;
    for i in 0..n {
        last = queue
            .enqueue(workhost::WorkRequest::one_off("echo", format!("burst {i}")))
            .await
            .unwrap()
            .id;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while queue.get(last).await.unwrap().unwrap().state != workhost::TaskState::Succeeded {
        assert!(std::time::Instant::now() < deadline, "the burst never finished");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // One more task after the burst: its events must still be printed.
    let after = queue
        .enqueue(workhost::WorkRequest::one_off("echo", "after the burst"))
        .await
        .unwrap()
        .id;
    let mut stdout = daemon.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 1 << 16];
        let needle = format!("task {after} succeeded");
        loop {
            let n = stdout.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&all).contains(&needle) {
                break;
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let printed = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    daemon.kill().unwrap();
    let _ = daemon.wait();
    assert!(
        printed.contains("state changes skipped (too many at once to print)"),
        "no skip notice in {} bytes",
        printed.len()
    );
    assert!(
        printed.contains(&format!("task {after} succeeded")),
        "printing stopped after the burst"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_no_instance_slot_free_is_stopped_host_busy_not_failed() {
    use workhost::{EngineConfig, Executor, RunRequest, RunResult, StopHandle, StopReason};
    let executor = Executor::new(EngineConfig {
        fuel: false,
        max_concurrent_runs: 1,
        ..EngineConfig::default()
    })
    .unwrap();
    assert!(
        executor.engine().uses_pooling(),
        "this test needs the pooling allocator"
    );
    let spin = executor.load_file(guests::SPIN.as_ref()).unwrap();
    let echo = executor.load_file(guests::ECHO.as_ref()).unwrap();
    let stop = StopHandle::default();
    let start_spin = || {
        let mut r = RunRequest::new("spin");
        r.budget.timeout = std::time::Duration::from_secs(20);
        r.stop = stop.clone();
        let spin = spin.clone();
        tokio::spawn(async move { spin.run(r).await })
    };
    let mut spinning = start_spin();
    // Until the spin run holds the one slot, echo may still get it; and a
    // spin that started while an echo held the slot is itself host-busy,
    // so it is started again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let busy = loop {
        if spinning.is_finished() {
            let ended = spinning.await.unwrap();
            assert_eq!(
                ended.result,
                RunResult::Stopped(StopReason::HostBusy),
                "{:?}",
                ended.log
            );
            spinning = start_spin();
        }
        let outcome = echo.run(RunRequest::new("echo")).await;
        match outcome.result {
            RunResult::Succeeded(_) => {}
            other => break (other, outcome.log),
        }
        assert!(std::time::Instant::now() < deadline, "echo never met the busy slot");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(busy.0, RunResult::Stopped(StopReason::HostBusy), "{:?}", busy.1);
    stop.stop(StopReason::Cancelled);
    let spun = spinning.await.unwrap();
    assert_eq!(spun.result, RunResult::Stopped(StopReason::Cancelled));
    // The slot is free again.
    assert!(matches!(
        echo.run(RunRequest::new("echo")).await.result,
        RunResult::Succeeded(_)
    ));
}

#[test]
fn store_commands_need_only_the_data_directory_not_components_or_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("workhost.toml");
    std::fs::write(
        &m,
        "data_dir = \"data\"\n\n[handlers.gone]\ncomponent = \"removed.wasm\"\n\n[handlers.gone.secrets]\ntoken = { env = \"WORKHOST_EDGE_UNSET_SECRET\" }\n",
    )
    .unwrap();
    let id = wh(&m, &["enqueue", "gone", "--task", "t"]);
    assert_eq!(id.code, 0, "{id:?}");
    let id = id.stdout.trim().to_string();
    for args in [
        &["list"][..],
        &["inspect", &id],
        &["status"],
        &["pause"],
        &["resume"],
        &["prune"],
        &["cancel", &id],
    ] {
        let run = wh(&m, args);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
    }
    // Running handlers needs them: serve names the missing component.
    let serve = workhost_tests::workhost_expecting_exit(&["serve", "--config", m.to_str().unwrap()], dir.path());
    assert_eq!(serve.code, 2, "{serve:?}");
    assert!(serve.stderr.contains("handlers.gone.component"), "{}", serve.stderr);
    // A missing manifest: the library's words, then the flag.
    let missing = wh(&dir.path().join("nowhere.toml"), &["list"]);
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(missing.stderr.contains("hint: `--config PATH`"), "{}", missing.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_at_once_never_reserve_more_than_the_memory_budget_and_the_rest_wait() {
    use std::time::{Duration, Instant};
    use workhost::{HandlerConfig, Host, HostConfig, HostError, Selector, TaskState, WorkRequest};
    let dir = tempfile::tempdir().unwrap();
    let mut config = HostConfig::new(dir.path());
    config.engine.cache_dir = Some(root().join("target/test-compile-cache"));
    let mut spin = HandlerConfig::new("spin", guests::SPIN);
    spin.fuel = false;
    spin.concurrency = 4;
    spin.budget.timeout = Duration::from_secs(60);
    spin.budget.max_memory_bytes = 64 << 20;
    spin.processing_budget.max_memory_bytes = 64 << 20;
    config.handlers.push(spin);

    // A handler that could never fit is refused when the host starts.
    let mut too_big = config.clone();
    too_big.memory_budget = 32 << 20;
    match Host::start(too_big).await {
        Err(e @ HostError::MemoryBudget { .. }) => assert!(e.to_string().contains("\"spin\""), "{e}"),
        other => panic!("expected a memory budget error, got {:?}", other.map(|_| ())),
    }

    // Room for two runs of 64 MiB: of four spinning tasks, two run and two wait.
    config.memory_budget = 128 << 20;
    let host = Host::start(config).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            host.queue()
                .enqueue(WorkRequest::one_off("spin", format!("s{i}")))
                .await
                .unwrap()
                .id,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while host.running().len() < 2 {
        assert!(Instant::now() < deadline, "two runs never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Several polls later, still two: the others wait for memory.
    for _ in 0..20 {
        assert!(
            host.running().len() <= 2,
            "{} runs of 64 MiB under a 128 MiB budget",
            host.running().len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut waiting = 0;
    for id in &ids {
        if host.queue().get(*id).await.unwrap().unwrap().state == TaskState::Enqueued {
            waiting += 1;
        }
    }
    assert_eq!(waiting, 2, "two tasks wait for memory");
    // A run that ends frees its memory: a waiting task starts.
    let first = host.running()[0];
    host.cancel(Selector::Id(first)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut enqueued = 0;
        for id in &ids {
            if host.queue().get(*id).await.unwrap().unwrap().state == TaskState::Enqueued {
                enqueued += 1;
            }
        }
        if enqueued == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no waiting task started after memory was freed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    host.cancel(Selector::All).await.unwrap();
    host.shutdown().await;
}

#[test]
fn manifest_durations_and_counts_past_their_bounds_are_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let component = guests::ECHO;
    let cases = [
        (
            "retention = \"3651d\"\n".to_string(),
            "retention",
            "longer than the limit of 3650d",
        ),
        (
            "shutdown_grace = \"2h\"\n".to_string(),
            "shutdown_grace",
            "longer than the limit of 1h",
        ),
        (
            "max_concurrency = 20000\n".to_string(),
            "max_concurrency",
            "20000 is over the limit of 10000",
        ),
        (
            format!("[handlers.x]\ncomponent = {component:?}\ntimeout = \"25h\"\n"),
            "handlers.x.timeout",
            "longer than the limit of 1d",
        ),
        (
            format!("[handlers.x]\ncomponent = {component:?}\nmax_memory = \"5GiB\"\n"),
            "handlers.x.max_memory",
            "over the limit of 4294967296",
        ),
        (
            format!("[handlers.x]\ncomponent = {component:?}\nfuel = 2000000000000000\n"),
            "handlers.x.fuel",
            "over the limit",
        ),
    ];
    for (text, key, words) in cases {
        let m = dir.path().join("workhost.toml");
        std::fs::write(&m, &text).unwrap();
        let run = wh(&m, &["list"]);
        assert_eq!(run.code, 2, "{text:?}: {run:?}");
        assert!(
            run.stderr.contains(key) && run.stderr.contains(words),
            "{text:?}: {key:?} and {words:?} missing from {}",
            run.stderr
        );
    }
}
