//! `workhost exec`, driven the way a handler author drives it.

use workhost_tests::{CliRun, guests};

fn exec(args: &[&str]) -> CliRun {
    workhost_tests::workhost_exec(args)
}

#[test]
fn exec_echo_prints_one_json_object_with_every_field() {
    let run = exec(&[
        guests::ECHO,
        "--input-json",
        r#"{"list":[1,2],"n":1}"#,
        "--input",
        "n=2",
        "--input",
        "name=ada",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let json = run.json();
    assert_eq!(json["outcome"], "success");
    assert_eq!(
        json["output"],
        serde_json::json!({"list": [1, 2], "n": 2, "name": "ada"})
    );
    for field in ["stop_reason", "error"] {
        assert!(json[field].is_null(), "{field}: {json}");
    }
    assert!(json["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(json["fuel_consumed"].as_u64().unwrap() > 0);
    assert!(json["peak_memory_bytes"].as_u64().unwrap() > 0);
    assert_eq!(json["log"], serde_json::json!([]));
}

#[test]
fn exec_prints_a_readable_report_by_default() {
    let run = exec(&[guests::CHATTY, "--task", "hello"]);
    assert_eq!(run.code, 0, "{run:?}");
    for expected in [
        "outcome      success",
        "\"task\":\"hello\"",
        "fuel",
        "peak memory",
        "stdout: stdout line 0",
        "Warn stderr: stderr line 0",
    ] {
        assert!(
            run.stdout.contains(expected),
            "{expected:?} missing from\n{}",
            run.stdout
        );
    }
}

/// Each case: arguments, exit code, outcome, stop reason.
#[test]
fn exec_exit_codes_and_stop_reasons_follow_the_outcome() {
    let cases: &[(&[&str], i32, &str, Option<&str>)] = &[
        (&[guests::FLAKY], 75, "retry", None),
        (&[guests::FLAKY, "--attempt", "3"], 0, "success", None),
        (&[guests::FAIL], 1, "failed", None),
        (&[guests::TRAP], 1, "failed", Some("trap")),
        (
            &[guests::SPIN, "--timeout", "300ms", "--no-fuel"],
            1,
            "stopped",
            Some("timeout"),
        ),
        (
            &[guests::SPIN, "--fuel", "1000000"],
            1,
            "stopped",
            Some("fuel-exhausted"),
        ),
        (
            &[guests::HOG, "--max-memory", "32MiB"],
            1,
            "stopped",
            Some("memory-exceeded"),
        ),
        (&[guests::RECURSE], 1, "stopped", Some("stack-overflow")),
    ];
    for (args, code, outcome, reason) in cases {
        let mut args = args.to_vec();
        args.push("--json");
        let run = exec(&args);
        assert_eq!(run.code, *code, "{args:?}: {run:?}");
        let json = run.json();
        assert_eq!(json["outcome"], *outcome, "{args:?}");
        assert_eq!(json["stop_reason"].as_str(), *reason, "{args:?}");
    }
}

#[test]
fn exec_passes_kind_and_attempt_to_the_handler() {
    let json = exec(&[guests::CHATTY, "--kind", "periodic", "--attempt", "7", "--json"]).json();
    assert_eq!(json["output"]["kind"], "periodic");
    assert_eq!(json["output"]["attempt"], 7);
}

/// Each case: arguments after `exec`, and words the error must contain.
/// Every case exits 2 and prints no outcome.
#[test]
fn exec_refuses_bad_input_with_a_clear_message_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let text_file = dir.path().join("notes.wasm");
    std::fs::write(&text_file, "hello").unwrap();
    let core_module = dir.path().join("core.wasm");
    std::fs::write(&core_module, wat::parse_str("(module)").unwrap()).unwrap();
    let missing = dir.path().join("missing.wasm");
    let big = format!("blob={}", "x".repeat(11 * 1024));
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (vec![missing.to_str().unwrap()], &["cannot read", "missing.wasm"]),
        (vec![text_file.to_str().unwrap()], &["not a WebAssembly file"]),
        (
            vec![core_module.to_str().unwrap()],
            &["core WebAssembly module", "wasm-tools component new"],
        ),
        (
            vec![guests::ECHO, "--timeout", "5x"],
            &["--timeout", "\"5x\" is not a duration"],
        ),
        (vec![guests::ECHO, "--timeout", "soon"], &["\"soon\" is not a duration"]),
        (
            vec![guests::ECHO, "--max-memory", "12XB"],
            &["--max-memory", "\"12XB\" is not a size"],
        ),
        (
            vec![guests::ECHO, "--input", &big],
            &["over the 10240-byte limit", "\"blob\""],
        ),
        (
            vec![guests::ECHO, "--input-json", r#"{"nested":{"a":1}}"#],
            &["\"nested\"", "an object"],
        ),
        (
            vec![guests::ECHO, "--input-json", r#"{"nothing":null}"#],
            &["\"nothing\"", "null"],
        ),
        (
            vec![guests::ECHO, "--input-json", "{not json"],
            &["--input-json", "not valid"],
        ),
        (
            vec![guests::ECHO, "--input", "novalue"],
            &["\"novalue\" is not of the form KEY=VALUE"],
        ),
        (vec![guests::ECHO, "--kind", "weekly"], &["weekly"]),
        (vec![guests::ECHO, "--attempt", "0"], &["--attempt"]),
        (vec![guests::ECHO, "--fuel", "lots"], &["--fuel"]),
        (
            vec![guests::ECHO, "--allow-host", "example.com"],
            &["--allow-host", "\"example.com\" is not an origin"],
        ),
    ];
    for (args, words) in cases {
        let run = exec(&args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stdout.is_empty(), "{args:?} printed an outcome: {}", run.stdout);
        for word in words {
            assert!(
                run.stderr.contains(word),
                "{args:?}: {word:?} missing from {:?}",
                run.stderr
            );
        }
        assert!(!run.stderr.contains("panicked"), "{args:?}: {}", run.stderr);
    }
}
