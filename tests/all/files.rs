//! The data-directory grant: a handler sees its directory at /data and
//! nothing else of the host's filesystem.

use std::sync::Arc;

use workhost::{Data, Grants, RunRequest, Value};
use workhost_tests::{executor, guests};

#[tokio::test]
async fn a_granted_data_directory_is_read_write_at_slash_data_and_cannot_be_left() {
    let dir = tempfile::tempdir().unwrap();
    let handler = executor().load_file(guests::FILES.as_ref()).unwrap();
    let mut r = RunRequest::new("files");
    r.input = Data::new().with("text", "kept on the host");
    r.grants = Arc::new(Grants {
        data_dir: Some(dir.path().join("h")),
        ..Grants::default()
    });
    std::fs::create_dir_all(dir.path().join("h")).unwrap();
    std::os::unix::fs::symlink("/etc", dir.path().join("h/link")).unwrap();
    let out = handler.run(r).await.output().cloned().expect("files succeeds");
    assert_eq!(out.get("read"), Some(&Value::from("kept on the host")));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("h/note.txt")).unwrap(),
        "kept on the host"
    );
    for attempt in ["parent", "absolute", "root", "symlink"] {
        let Some(Value::String(got)) = out.get(attempt) else {
            panic!("{attempt} missing: {out}")
        };
        assert_ne!(got, "ok", "{attempt} left the directory: {out}");
    }
    assert!(!dir.path().join("outside.txt").exists());
}

#[tokio::test]
async fn without_a_grant_there_is_no_filesystem() {
    let handler = executor().load_file(guests::FILES.as_ref()).unwrap();
    let outcome = handler.run(RunRequest::new("files")).await;
    assert!(
        outcome.error().unwrap().contains("writing /data/note.txt"),
        "{:?}",
        outcome.result
    );
}

#[test]
fn the_manifest_grants_each_handler_its_own_directory_under_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = \"store\"\n[handlers.f]\ncomponent = {:?}\ndata_dir = true\n[handlers.g]\ncomponent = {:?}\n",
        guests::FILES,
        guests::ECHO
    );
    let config = workhost::parse_manifest(&text, &dir.path().join("workhost.toml"), None).unwrap();
    let grants = |name: &str| {
        config
            .handlers
            .iter()
            .find(|h| h.name == name)
            .unwrap()
            .grants
            .data_dir
            .clone()
    };
    assert_eq!(grants("f"), Some(dir.path().join("store/handlers/f")));
    assert_eq!(grants("g"), None);
}

/// Names that would leave `handlers/`, or that are not one plain path
/// component, with the names the examples and benches use beside them.
const BAD_NAMES: &[&str] = &[
    "..",
    ".",
    "../escape",
    "a/b",
    "/abs",
    ".hidden",
    "-dash",
    "Upper",
    "a b",
    "é",
    "",
    "x\\y",
    "a.b",
];

#[test]
fn handler_names_follow_one_pattern() {
    let long = "a".repeat(64);
    for good in ["echo", "echo-py", "fetch_feed", "0", "9lives", long.as_str()] {
        assert_eq!(workhost::check_handler_name(good), Ok(()), "{good:?}");
    }
    for bad in BAD_NAMES.iter().copied().chain([format!("{long}a").as_str()]) {
        let error = workhost::check_handler_name(bad).unwrap_err().to_string();
        assert!(
            error.contains(&format!("{bad:?}")) && error.contains(workhost::HANDLER_NAME_PATTERN),
            "{error}"
        );
    }
}

#[test]
fn a_handler_name_that_could_leave_handlers_is_refused_by_the_manifest_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    for bad in BAD_NAMES {
        let text = format!(
            "data_dir = \"store\"\n[handlers.{bad:?}]\ncomponent = {:?}\ndata_dir = true\n",
            guests::FILES
        );
        let path = dir.path().join("workhost.toml");
        std::fs::write(&path, &text).unwrap();
        let error = workhost::load_manifest(&path, None).unwrap_err().to_string();
        assert!(
            error.contains(&format!("handler name {bad:?}")) && error.contains(workhost::HANDLER_NAME_PATTERN),
            "{bad:?}: {error}"
        );
        let cache = dir.path().join("cache");
        let run = workhost_tests::workhost(&["list", "--config", path.to_str().unwrap()], &cache);
        assert_eq!(run.code, 2, "{bad:?}: {run:?}");
        assert!(run.stderr.contains("is not allowed"), "{bad:?}: {}", run.stderr);
    }
    assert!(!dir.path().join("store/escape").exists());
}

#[tokio::test]
async fn a_host_refuses_a_handler_name_that_could_leave_handlers() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["..", "../escape", "a/b"] {
        let mut config = workhost::HostConfig::new(dir.path().join("store"));
        config.handlers.push(workhost::HandlerConfig::new(bad, guests::ECHO));
        let error = workhost::Host::start(config).await.unwrap_err();
        assert!(matches!(error, workhost::HostError::HandlerName(_)), "{bad:?}: {error}");
        assert!(error.to_string().contains(&format!("{bad:?}")), "{error}");
    }
}

#[test]
fn exec_dir_grants_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = workhost_tests::workhost(
        &[
            "exec",
            guests::FILES,
            "--dir",
            data.to_str().unwrap(),
            "--input",
            "text=via exec",
            "--json",
        ],
        dir.path(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(std::fs::read_to_string(data.join("note.txt")).unwrap(), "via exec");
}

async fn escape(grants: Grants, kv: workhost::Kv, input: Data) -> Data {
    escape_run(grants, kv, input).await.0
}

async fn escape_run(grants: Grants, kv: workhost::Kv, input: Data) -> (Data, workhost::RunOutcome) {
    let handler = executor().load_file(guests::ESCAPE.as_ref()).unwrap();
    let mut r = RunRequest::new("escape");
    r.grants = Arc::new(grants);
    r.kv = kv;
    r.input = input;
    let outcome = handler.run(r).await;
    let report = outcome
        .output()
        .cloned()
        .unwrap_or_else(|| panic!("escape succeeds: {:?}", outcome.result));
    (report, outcome)
}

fn entry(report: &Data, key: &str) -> String {
    match report.get(key) {
        Some(Value::String(s)) => s.clone(),
        other => panic!("{key}: {other:?} in {report}"),
    }
}

#[tokio::test]
async fn escape_tries_every_forbidden_thing_and_each_is_denied() {
    let dir = tempfile::tempdir().unwrap();
    let server = workhost_tests::TestServer::start();
    let store: Arc<dyn workhost::KvStore> = Arc::new(workhost::MemoryKv::default());
    // Another handler's key, in the same store.
    workhost::Kv::new(store.clone(), "counter", workhost::KvLimits::default())
        .set("count", b"41")
        .await
        .unwrap();
    let grants = Grants {
        data_dir: Some(dir.path().join("escape")),
        data_quota_bytes: 1 << 20,
        ..Grants::default()
    };
    let (report, outcome) = escape_run(
        grants,
        workhost::Kv::new(store, "escape", workhost::KvLimits::default()),
        Data::new()
            .with("denied_url", server.url("/"))
            .with("socket_addr", format!("127.0.0.1:{}", server.port))
            .with("other_key", "count")
            .with("quota_bytes", 2i64 << 20),
    )
    .await;
    let expect = |key: &str, starts: &str| {
        let got = entry(&report, key);
        assert!(
            got.starts_with(starts),
            "{key}: expected {starts:?}, got {got:?}\n{report}"
        );
    };
    expect("http_off_list", "denied: ErrorCode::HttpRequestDenied");
    expect("host_file", "denied: NotFound");
    expect("environment", "denied: empty");
    expect("socket", "denied: ");
    expect("dns", "denied: ");
    expect("other_kv", "denied: not found");
    expect("quota", "denied: I/O error");
    expect("quota_one_write", "denied: error code quota");
    expect("parent_dir", "denied: ");
    expect("symlink_out", "denied: ");
    expect("config", "denied: none");
    for (key, value) in report.iter() {
        assert!(
            matches!(value, Value::String(s) if s.starts_with("denied")),
            "{key} got through: {value:?}"
        );
    }
    // The quota stopped the write at the quota, not past it.
    let quota = entry(&report, "quota");
    let kept: u64 = quota
        .rsplit_once(" after ")
        .unwrap()
        .1
        .trim_end_matches(" bytes")
        .parse()
        .unwrap();
    assert!(kept <= 1 << 20, "{quota}");
    assert!(
        outcome
            .log
            .iter()
            .any(|l| l.message.contains("refused") && l.message.contains("quota of 1048576 bytes")),
        "{:?}",
        outcome.log
    );
    assert!(!dir.path().join("outside.txt").exists());
}

#[tokio::test]
async fn the_quota_counts_what_the_directory_already_holds_and_writes_within_it_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("h");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("sub/old"), vec![0u8; 900 << 10]).unwrap();
    let grants = Grants {
        data_dir: Some(data.clone()),
        data_quota_bytes: 1 << 20,
        ..Grants::default()
    };
    // 900 KiB held + 200 KiB is past 1 MiB.
    let report = escape(
        grants.clone(),
        workhost::Kv::in_memory("escape"),
        Data::new().with("quota_bytes", 200i64 << 10),
    )
    .await;
    assert!(entry(&report, "quota").starts_with("denied: I/O error"), "{report}");
    assert_eq!(entry(&report, "quota_one_write"), "denied: error code quota");
    // 100 KiB fits.
    let report = escape(
        grants.clone(),
        workhost::Kv::in_memory("escape"),
        Data::new().with("quota_bytes", 100i64 << 10),
    )
    .await;
    assert_eq!(entry(&report, "quota"), format!("ALLOWED: wrote {} bytes", 100 << 10));
    // The first write's file was removed, but room freed during a run
    // comes back only at the next run: 900 + 100 + 100 KiB is past 1 MiB.
    assert_eq!(entry(&report, "quota_one_write"), "denied: error code quota");
    // Freeing room on the host makes room for the next run.
    std::fs::remove_file(data.join("sub/old")).unwrap();
    let report = escape(
        grants,
        workhost::Kv::in_memory("escape"),
        Data::new().with("quota_bytes", 1000i64 << 10),
    )
    .await;
    assert!(entry(&report, "quota").starts_with("ALLOWED"), "{report}");
}

#[test]
fn the_manifest_and_exec_set_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[handlers.f]\ncomponent = {:?}\ndata_dir = true\ndata_quota = \"2MiB\"\n[handlers.g]\ncomponent = {:?}\ndata_dir = true\n",
        guests::FILES,
        guests::FILES
    );
    let config = workhost::parse_manifest(&text, &dir.path().join("workhost.toml"), None).unwrap();
    assert_eq!(config.handlers[0].grants.data_quota_bytes, 2 << 20);
    assert_eq!(
        config.handlers[1].grants.data_quota_bytes,
        workhost::DEFAULT_DATA_QUOTA_BYTES
    );
    let bad = text.replace("\"2MiB\"", "\"lots\"");
    let message = workhost::parse_manifest(&bad, &dir.path().join("workhost.toml"), None)
        .unwrap_err()
        .to_string();
    assert!(message.contains("handlers.f.data_quota"), "{message}");

    let data = dir.path().join("data");
    let run = workhost_tests::workhost(
        &[
            "exec",
            guests::ESCAPE,
            "--dir",
            data.to_str().unwrap(),
            "--dir-quota",
            "64KiB",
            "--input",
            "quota_bytes=65537",
            "--json",
        ],
        dir.path(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let quota = run.json()["output"]["quota"].as_str().unwrap().to_string();
    assert!(quota.starts_with("denied: I/O error"), "{quota}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_of_a_handler_share_one_quota_for_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let grants = Arc::new(Grants {
        data_dir: Some(dir.path().to_path_buf()),
        data_quota_bytes: 1 << 20,
        ..Grants::default()
    });
    let handler = executor().load_file(guests::HOSTILE.as_ref()).unwrap();
    // Each run writes first (so each measures a nearly empty directory),
    // then, while the other is still going, 600 KiB: together past 1 MiB.
    let run = |name: &str| {
        let mut r = RunRequest::new("fill");
        r.grants = grants.clone();
        r.input = Data::new()
            .with("mode", "fill")
            .with("name", name)
            .with("bytes", 600i64 << 10)
            .with("wait_ms", 500i64);
        handler.run(r)
    };
    let (a, b) = tokio::join!(run("a"), run("b"));
    let outputs: Vec<Data> = [a, b]
        .into_iter()
        .map(|o| {
            o.output()
                .cloned()
                .unwrap_or_else(|| panic!("fill succeeds: {:?}", o.result))
        })
        .collect();
    let wrote = outputs.iter().filter(|o| o.get("wrote").is_some()).count();
    let refused = outputs.iter().filter(|o| o.get("refused").is_some()).count();
    assert_eq!(
        (wrote, refused),
        (1, 1),
        "one fill fits, the other is refused: {outputs:?}"
    );
    let held: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(held <= 1 << 20, "the directory holds {held} bytes, past its quota");
}
