//! Every guest example, run through the library, behaves as its README's
//! "Expectations" section says.

use std::sync::{Arc, Mutex};

use workhost::{Data, Failure, LogSource, RunRequest, RunResult, StopReason, TaskKind, Value};
use workhost_tests::{executor, guests};

async fn run(guest: &str, request: RunRequest) -> workhost::RunOutcome {
    let handler = executor().load_file(guest.as_ref()).unwrap();
    handler.run(request).await
}

fn request(input: Data) -> RunRequest {
    let mut r = RunRequest::new("task");
    r.input = input;
    r
}

#[tokio::test]
async fn echo_returns_its_input_as_output() {
    let input = Data::new()
        .with("i", 7i64)
        .with("f", 0.25)
        .with("b", true)
        .with("s", "text")
        .with("il", vec![1i64, 2])
        .with("fl", vec![0.5])
        .with("bl", vec![true, false])
        .with("sl", vec!["a".to_string()]);
    let outcome = run(guests::ECHO, request(input.clone())).await;
    assert_eq!(outcome.result, RunResult::Succeeded(input));
    assert!(outcome.fuel_consumed.unwrap() > 0);
    assert!(outcome.peak_memory_bytes > 0);
}

#[tokio::test]
async fn counter_increments_its_kv_counter_across_runs() {
    let handler = executor().load_file(guests::COUNTER.as_ref()).unwrap();
    let kv = workhost::Kv::in_memory("counter");
    for expected in 1..=3i64 {
        let mut r = RunRequest::new("count");
        r.kv = kv.clone();
        let outcome = handler.run(r).await;
        assert_eq!(
            outcome.output().unwrap().get("total_executions"),
            Some(&Value::S64(expected))
        );
    }
    assert_eq!(kv.get("totalExecutions").await.unwrap(), Some(b"3".to_vec()));
}

#[tokio::test]
async fn flaky_retries_until_its_attempt_reaches_succeed_at() {
    let handler = executor().load_file(guests::FLAKY.as_ref()).unwrap();
    for (attempt, succeed_at, succeeds) in [
        (1, None, false),
        (2, None, false),
        (3, None, true),
        (1, Some(1), true),
        (4, Some(5), false),
    ] {
        let mut r = RunRequest::new("flaky");
        r.task.attempt = attempt;
        if let Some(n) = succeed_at {
            r.input = Data::new().with("succeed_at", n as i64);
        }
        let outcome = handler.run(r).await;
        if succeeds {
            assert_eq!(
                outcome.result,
                RunResult::Succeeded(Data::new().with("attempts", attempt as i64))
            );
        } else {
            assert_eq!(outcome.result, RunResult::Retry, "attempt {attempt}");
            assert_eq!(outcome.exit_code(), 75);
        }
    }
}

#[tokio::test]
async fn fail_fails_permanently_with_its_message() {
    let outcome = run(guests::FAIL, request(Data::new().with("message", "disk on fire"))).await;
    assert_eq!(outcome.result, RunResult::Failed(Failure::Error("disk on fire".into())));
    assert_eq!(outcome.stop_reason(), None);
    let outcome = run(guests::FAIL, request(Data::new())).await;
    assert_eq!(outcome.error(), Some("fail handler failed on purpose"));
}

#[tokio::test]
async fn trap_fails_with_the_trap_message_and_its_panic_in_the_log() {
    let outcome = run(guests::TRAP, request(Data::new())).await;
    match &outcome.result {
        RunResult::Failed(Failure::Trap(message)) => {
            assert!(message.contains("unreachable"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(outcome.stop_reason(), Some("trap"));
    assert!(
        outcome
            .log
            .iter()
            .any(|l| l.source == LogSource::Stderr && l.message.contains("trap handler panicked on purpose")),
        "{:#?}",
        outcome.log
    );
}

#[tokio::test]
async fn chatty_logs_at_every_level_captures_stdio_reports_progress_and_sees_its_context() {
    let progress = Arc::new(Mutex::new(Vec::new()));
    let seen = progress.clone();
    let mut r = request(Data::new().with("repeat", 2i64));
    r.task.id = "task-42".into();
    r.task.unique_name = Some("nightly".into());
    r.task.tags = vec!["a".into(), "b".into()];
    r.task.kind = TaskKind::Processing;
    r.task.attempt = 4;
    r.progress = Some(Arc::new(move |d: &Data| seen.lock().unwrap().push(d.clone())));
    let outcome = run(guests::CHATTY, r).await;

    let out = outcome.output().expect("chatty succeeds");
    assert_eq!(out.get("task_id"), Some(&Value::from("task-42")));
    assert_eq!(out.get("unique_name"), Some(&Value::from("nightly")));
    assert_eq!(out.get("tags"), Some(&Value::StringList(vec!["a".into(), "b".into()])));
    assert_eq!(out.get("kind"), Some(&Value::from("processing")));
    assert_eq!(out.get("attempt"), Some(&Value::S64(4)));
    let Some(Value::S64(left)) = out.get("time_left_ms") else {
        panic!("{out}")
    };
    assert!(*left > 0 && *left <= 600_000, "{left}");

    let lines: Vec<(LogSource, String, String)> = outcome
        .log
        .iter()
        .map(|l| (l.source, format!("{:?}", l.level), l.message.clone()))
        .collect();
    for i in 0..2 {
        for level in ["Trace", "Debug", "Info", "Warn", "Error"] {
            let msg = format!("{} line {i}", level.to_lowercase());
            assert!(
                lines.contains(&(LogSource::Handler, level.into(), msg.clone())),
                "{msg} missing from {lines:#?}"
            );
        }
        assert!(lines.contains(&(LogSource::Stdout, "Info".into(), format!("stdout line {i}"))));
        assert!(lines.contains(&(LogSource::Stderr, "Warn".into(), format!("stderr line {i}"))));
    }
    assert_eq!(*progress.lock().unwrap(), vec![Data::new().with("percent", 50i64)]);
}

#[tokio::test]
async fn a_flood_of_log_lines_is_capped_with_a_marker() {
    let mut r = request(Data::new().with("repeat", 1000i64));
    r.budget.max_log_bytes = 4096;
    r.budget.max_log_lines = 20;
    let outcome = run(guests::CHATTY, r.clone()).await;
    assert!(outcome.output().is_some());
    // What is stored, not only the message bytes: each kept line as JSON.
    let kept: Vec<_> = outcome.log.iter().filter(|l| l.source != LogSource::Host).collect();
    let stored: usize = kept.iter().map(|l| serde_json::to_string(l).unwrap().len() + 1).sum();
    assert!(stored <= 4096, "{stored} bytes stored");
    assert!(kept.len() <= 20, "{} lines kept", kept.len());
    // With a line cap below what the bytes allow, the line cap decides.
    r.budget.max_log_bytes = 64 << 10;
    r.budget.max_log_lines = 5;
    let few = run(guests::CHATTY, r).await;
    assert_eq!(few.log.iter().filter(|l| l.source != LogSource::Host).count(), 5);
    let marker = outcome.log.last().unwrap();
    assert_eq!(marker.source, LogSource::Host);
    assert!(marker.message.contains("more lines"), "{}", marker.message);
}

#[tokio::test]
async fn spin_hog_and_recurse_are_stopped_by_their_budgets() {
    let mut r = request(Data::new());
    r.budget.fuel = Some(5_000_000);
    assert_eq!(
        run(guests::SPIN, r).await.result,
        RunResult::Stopped(StopReason::FuelExhausted)
    );

    let mut r = request(Data::new());
    r.budget.max_memory_bytes = 32 << 20;
    let outcome = run(guests::HOG, r).await;
    assert_eq!(outcome.result, RunResult::Stopped(StopReason::MemoryExceeded));
    assert!(
        outcome.peak_memory_bytes <= 32 << 20 && outcome.peak_memory_bytes > 16 << 20,
        "{}",
        outcome.peak_memory_bytes
    );

    assert_eq!(
        run(guests::RECURSE, request(Data::new())).await.result,
        RunResult::Stopped(StopReason::StackOverflow)
    );
}
