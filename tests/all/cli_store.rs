//! The operator's surface: `workhost serve` and the commands that drive it
//! from other processes, on one data directory.

use std::path::Path;
use std::time::{Duration, Instant};

use workhost_tests::{CliRun, Daemon, Restrictions, workhost, workhost_restricted, write_manifest};

/// `args` followed by `--config <manifest>`.
fn with_config<'a>(manifest: &'a Path, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend(["--config", manifest.to_str().unwrap()]);
    all
}

fn wh(manifest: &Path, args: &[&str]) -> CliRun {
    workhost(&with_config(manifest, args), manifest.parent().unwrap())
}

fn ok(manifest: &Path, args: &[&str]) -> CliRun {
    let run = wh(manifest, args);
    assert_eq!(run.code, 0, "{args:?}: {run:?}");
    run
}

fn task(manifest: &Path, id: &str) -> serde_json::Value {
    ok(manifest, &["inspect", id, "--json"]).json()
}

/// Polls `inspect` until `done` holds (the daemon is another process).
fn wait_for(manifest: &Path, id: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let t = task(manifest, id);
        if done(&t) {
            return t;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "task {id} never got there: {t}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Adds `text` (TOML) to the end of the manifest.
fn append_to_manifest(manifest: &Path, text: &str) {
    let mut all = std::fs::read_to_string(manifest).unwrap();
    all.push_str(text);
    std::fs::write(manifest, all).unwrap();
}

/// Polls the file `name` beside the manifest (`events.log`, the
/// `serve --debug` output; `serve.log`, a daemon's stderr) until `done`
/// holds of it, for up to `limit`; returns it.
fn log_when(manifest: &Path, name: &str, limit: Duration, done: impl Fn(&str) -> bool) -> String {
    let path = manifest.with_file_name(name);
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if done(&log) {
            return log;
        }
        assert!(start.elapsed() < limit, "{name} never got there:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_daemon_runs_what_other_processes_enqueue_and_they_observe_and_control_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path());
    let _daemon = Daemon::start(&m);
    let id = ok(
        &m,
        &[
            "enqueue", "echo", "--task", "hi", "--input", "n=1", "--tag", "t", "--unique", "u",
        ],
    )
    .stdout
    .trim()
    .to_string();
    let t = wait_for(&m, &id, |t| t["state"] == "succeeded");
    assert_eq!(t["output"], serde_json::json!({"n": 1}));
    for field in [
        "id",
        "handler",
        "task",
        "kind",
        "state",
        "unique_name",
        "tags",
        "input",
        "output",
        "progress",
        "run_attempt_count",
        "next_run_at",
        "stop_reason",
        "attempts",
    ] {
        assert!(t.get(field).is_some(), "inspect --json lacks {field}: {t}");
    }
    assert_eq!(
        (
            t["kind"].as_str(),
            t["unique_name"].as_str(),
            t["attempts"][0]["outcome"].as_str()
        ),
        (Some("one-off"), Some("u"), Some("success"))
    );

    // Pause from here holds back work in the daemon; resume lets it run.
    ok(&m, &["pause"]);
    let held = ok(&m, &["enqueue", "echo", "--task", "held"]).stdout.trim().to_string();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(task(&m, &held)["state"], "enqueued");
    assert!(ok(&m, &["list"]).stdout.contains("paused"));
    ok(&m, &["resume"]);
    wait_for(&m, &held, |t| t["state"] == "succeeded");

    // Cancel from here stops a run going on in the daemon.
    let spin = ok(&m, &["enqueue", "spin", "--task", "forever"])
        .stdout
        .trim()
        .to_string();
    wait_for(&m, &spin, |t| t["state"] == "running");
    ok(&m, &["cancel", &spin]);
    let t = wait_for(&m, &spin, |t| t["attempts"][0]["stop_reason"] == "cancelled");
    assert_eq!(t["state"], "cancelled");

    let delayed = ok(&m, &["enqueue", "echo", "--task", "later", "--delay", "1h", "--json"]).json();
    let listed = ok(&m, &["list", "--state", "enqueued", "--json"]).json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], delayed["id"]);
    assert!(listed[0]["next_run_at"].as_str().unwrap().ends_with('Z'), "{listed}");
    assert!(ok(&m, &["list"]).stdout.contains("EARLIEST BEGIN"));
    assert_eq!(
        ok(&m, &["list", "--tag", "t", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(ok(&m, &["cancel", "--all"]).stdout.contains("cancelled 1 task"));
    assert!(ok(&m, &["prune", "--all"]).stdout.contains("pruned 4"));
}

#[test]
fn a_host_killed_with_sigkill_mid_run_loses_nothing_and_counts_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path());
    let daemon = Daemon::start(&m);
    let spin = ok(&m, &["enqueue", "spin", "--task", "forever"])
        .stdout
        .trim()
        .to_string();
    let delayed = ok(&m, &["enqueue", "echo", "--task", "later", "--delay", "2s"])
        .stdout
        .trim()
        .to_string();
    wait_for(&m, &spin, |t| t["state"] == "running");
    daemon.kill9();
    assert_eq!(task(&m, &spin)["state"], "running", "the dead host left it running");

    let _daemon = Daemon::start(&m);
    let t = wait_for(&m, &spin, |t| t["run_attempt_count"] == 2 && t["state"] == "running");
    assert_eq!(t["attempts"][0]["stop_reason"], "host-shutdown");
    assert_eq!(t["attempts"][0]["error"], "the host died during this run");
    wait_for(&m, &delayed, |t| t["state"] == "succeeded");
    ok(&m, &["cancel", &spin]);
}

#[test]
fn processes_racing_on_one_unique_name_never_both_win() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path());
    ok(&m, &["list"]); // create the store once
    let children: Vec<_> = (0..6)
        .map(|_| {
            std::process::Command::new(workhost_tests::workhost_bin())
                .args([
                    "enqueue", "echo", "--task", "race", "--unique", "race", "--policy", "keep", "--delay", "1h",
                    "--config",
                ])
                .arg(&m)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // All six run at once; each waits on SQLite's lock for its turn.
    let ids: std::collections::BTreeSet<String> = children
        .into_iter()
        .map(|c| {
            String::from_utf8(c.wait_with_output().unwrap().stdout)
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(
        ok(&m, &["list", "--unique", "race", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Each case: manifest text, words the error must contain.
#[test]
fn bad_manifests_and_requests_are_refused_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_manifest(dir.path());
    let cases: &[(&str, &[&str])] = &[
        ("data_dir = \"d\"\nfrobnicate = 1\n", &["frobnicate"]),
        (
            "[handlers.x]\ncomponent = \"missing.wasm\"\n",
            &["handlers.x.component", "missing.wasm"],
        ),
        ("[handlers.x]\ncompnent = \"a.wasm\"\n", &["compnent"]),
        ("max_concurrency = \"lots\"\n", &["max_concurrency"]),
        (
            "data_dir = \"d\"\nretention = \"forever\"\n",
            &["line 2, column 13", "retention", "\"forever\" is not a duration"],
        ),
        ("this is not toml", &["workhost.toml"]),
        (
            "data_dir = \"d\"\ndatabase_listen = \"postgres://server/db\"\n",
            &["database_listen", "set `database` too"],
        ),
        (
            "data_dir = \"d\"\ndatabase = \"postgres://pooler/db\"\ndatabase_listen = \"server\"\n",
            &["database_listen", "expected a PostgreSQL URL"],
        ),
        (
            "[handlers.x]\ncomponent = \"a.wasm\"\nfuel = \"lots\"\n",
            &["line 3", "fuel: true, false or a budget"],
        ),
    ];
    let bad_origin = format!(
        "[handlers.x]\ncomponent = {:?}\nallowed_hosts = [\"nope\"]\n",
        workhost_tests::guests::ECHO
    );
    let cases: Vec<(&str, &[&str])> = cases
        .iter()
        .copied()
        .chain([(
            bad_origin.as_str(),
            &["handlers.x.allowed_hosts", "\"nope\" is not an origin"][..],
        )])
        .collect();
    for (text, words) in &cases {
        let bad = dir.path().join("bad");
        std::fs::create_dir_all(&bad).unwrap();
        let path = bad.join("workhost.toml");
        std::fs::write(&path, text).unwrap();
        // `serve` needs all of the manifest (store commands do not need
        // the component files; see edge.rs).
        let run = workhost_tests::workhost_expecting_exit(&with_config(&path, &["serve"]), path.parent().unwrap());
        assert_eq!(run.code, 2, "{text:?}: {run:?}");
        for w in words.iter() {
            assert!(run.stderr.contains(w), "{text:?}: {w:?} missing from {}", run.stderr);
        }
    }
    let missing = dir.path().join("nowhere.toml");
    assert!(wh(&missing, &["list"]).stderr.contains("cannot read the manifest"));
    for (args, word) in [
        (&["enqueue", "nope", "--task", "x"][..], "no handler named \"nope\""),
        (
            &["enqueue", "echo", "--task", "x", "--delay", "soon"],
            "\"soon\" is not a duration",
        ),
        (
            &["enqueue", "echo", "--task", "x", "--input-json", "{\"a\":null}"],
            "\"a\"",
        ),
        (
            &["enqueue", "echo", "--task", "x", "--unique", "u", "--policy", "update"],
            "keep, replace, append",
        ),
        (
            &["enqueue", "echo", "--task", "x", "--after", "42"],
            "no task with id 42",
        ),
        (&["inspect", "42"], "no task with id 42"),
        (&["cancel"], "<ID>"),
    ] {
        let run = wh(&good, args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(
            run.stderr.contains(word),
            "{args:?}: {word:?} missing from {}",
            run.stderr
        );
    }
    assert!(
        ok(&good, &["list", "--json"]).json().as_array().unwrap().is_empty(),
        "refused requests stored nothing"
    );
}

fn restricted(manifest: &Path, args: &[&str], restrictions: Restrictions) -> CliRun {
    workhost_restricted(&with_config(manifest, args), manifest.parent().unwrap(), restrictions)
}

/// The ids `list --json` shows, in order.
fn listed(manifest: &Path) -> Vec<String> {
    let list = ok(manifest, &["list", "--json"]).json();
    let tasks = list.as_array().expect("list --json is an array");
    tasks.iter().map(|t| t["id"].to_string()).collect()
}

/// Sets the mode of `dir` and of every file in it.
fn chmod_all(dir: &Path, dir_mode: u32, file_mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file_mode)).unwrap();
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode)).unwrap();
}

#[test]
fn a_read_only_data_directory_is_refused_by_name_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path());
    let kept = ok(&m, &["enqueue", "echo", "--task", "kept", "--delay", "1h"])
        .stdout
        .trim()
        .to_string();
    let data = dir.path().join("data");
    chmod_all(&data, 0o555, 0o444);
    let read_only = Restrictions {
        obey_permissions: true,
        ..Restrictions::default()
    };
    for args in [
        &["enqueue", "echo", "--task", "refused"][..],
        &["cancel", kept.as_str()],
        &["pause"],
    ] {
        let run = restricted(&m, args, read_only);
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert!(
            run.stderr.contains("the task store is read-only to this process") && run.stderr.contains("writable"),
            "{args:?}: {}",
            run.stderr
        );
    }
    let serve = restricted(&m, &["serve"], read_only);
    assert_eq!(serve.code, 1, "{serve:?}");
    assert!(
        serve.stderr.contains("cannot use the data directory") && serve.stderr.contains("ermission denied"),
        "{}",
        serve.stderr
    );
    chmod_all(&data, 0o755, 0o644);
    assert_eq!(listed(&m), vec![kept.clone()], "the refused enqueue left nothing");
    assert_eq!(
        task(&m, &kept)["state"],
        "enqueued",
        "the refused cancel changed nothing"
    );
    ok(&m, &["enqueue", "echo", "--task", "writable again"]);
}

#[test]
fn a_full_disk_refuses_new_work_by_name_and_keeps_everything_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path());
    let mut accepted = vec![
        ok(&m, &["enqueue", "echo", "--task", "first"])
            .stdout
            .trim()
            .to_string(),
    ];
    let data = dir.path().join("data");
    let largest = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .max()
        .unwrap();
    let full = Restrictions {
        max_file_bytes: Some(largest + 256 * 1024),
        ..Restrictions::default()
    };
    let input = format!("text={}", "x".repeat(6000));
    let refused = loop {
        assert!(accepted.len() < 200, "the store kept growing past its file-size limit");
        let run = restricted(&m, &["enqueue", "echo", "--task", "filler", "--input", &input], full);
        if run.code != 0 {
            break run;
        }
        accepted.push(run.stdout.trim().to_string());
    };
    assert_eq!(refused.code, 1, "{refused:?}");
    for words in [
        "the task store could not be written",
        "everything accepted before it is kept",
    ] {
        assert!(refused.stderr.contains(words), "{words:?} missing: {}", refused.stderr);
    }
    assert!(accepted.len() > 2, "the limit left room for some work: {accepted:?}");

    // With room again: every accepted task is there, nothing else, and the
    // database is whole.
    assert_eq!(listed(&m), accepted);
    let db = rusqlite::Connection::open(data.join("workhost.db")).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    drop(db);
    ok(&m, &["enqueue", "echo", "--task", "room again"]);
}

/// A store that refuses a finished run's outcome does not lose it: the
/// daemon reports the outcome unrecorded, keeps it, and records it once the
/// store takes writes again. Here another process holds the store's write
/// lock past SQLite's 10 s busy wait, which is what a full disk looks like
/// to the daemon too: a write that fails while reads go on.
#[test]
fn a_run_outcome_the_store_refuses_is_kept_and_recorded_once_it_takes_writes() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path());
    append_to_manifest(
        &m,
        &format!(
            "\n[handlers.brief]\ncomponent = {:?}\nfuel = false\ntimeout = \"5s\"\n",
            workhost_tests::guests::SPIN
        ),
    );
    let _daemon = Daemon::start_debug(&m);
    let id = ok(&m, &["enqueue", "brief", "--task", "t"]).stdout.trim().to_string();
    wait_for(&m, &id, |t| t["state"] == "running");
    // Work that becomes due while the lock is held: the dispatcher claims
    // only then (an idle one takes no write lock).
    let due = ok(&m, &["enqueue", "echo", "--task", "due", "--delay", "2s"])
        .stdout
        .trim()
        .to_string();

    let mut lock = rusqlite::Connection::open(dir.path().join("data/workhost.db")).unwrap();
    let held = lock
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    assert_eq!(
        task(&m, &id)["state"],
        "running",
        "the lock was taken before the run ended"
    );
    // The run ends on its 5 s clock; its outcome waits on the lock for 10 s,
    // is refused, and is reported. Hold the lock until then.
    let marker = format!("task {id} unrecorded");
    let log = log_when(&m, "events.log", Duration::from_secs(60), |log| log.contains(&marker));
    let unrecorded = log.lines().find(|l| l.contains(&marker)).unwrap();
    assert!(
        unrecorded.contains("the store refused this run's outcome") && unrecorded.contains("offered again"),
        "{unrecorded}"
    );
    assert_eq!(task(&m, &id)["state"], "running", "nothing recorded while refused");
    // The operator is told on stderr, with or without --debug: the refused
    // outcome, and the dispatcher's claims refused meanwhile.
    let serve_log = log_when(&m, "serve.log", Duration::from_secs(60), |log| {
        log.contains(&format!("task {id}: the store refused this run's outcome"))
            && log.contains("the store refused the dispatcher's claim")
    });
    assert!(serve_log.contains("workhost: warning at "), "{serve_log}");
    // Every reading command goes on beside the held lock.
    ok(&m, &["list"]);
    ok(&m, &["status"]);
    held.rollback().unwrap();

    let t = wait_for(&m, &id, |t| t["state"] != "running");
    assert_eq!(t["attempts"][0]["stop_reason"], "timeout", "the kept outcome: {t}");
    wait_for(&m, &due, |t| t["state"] == "succeeded");
    assert_eq!(t["run_attempt_count"], 1);
    // And told when it is over.
    log_when(&m, "serve.log", Duration::from_secs(60), |log| {
        log.contains(&format!("task {id}: its run's outcome is recorded, after "))
            && log.contains("the store takes the dispatcher's claims again, after ")
    });
    // The daemon goes on taking work.
    let next = ok(&m, &["enqueue", "echo", "--task", "after"])
        .stdout
        .trim()
        .to_string();
    wait_for(&m, &next, |t| t["state"] == "succeeded");
}

#[test]
fn a_foreign_database_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path());
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let db = dir.path().join("data/workhost.db");
    std::fs::write(
        &db,
        b"this is somebody's notes, not a database, and it is long enough to matter............",
    )
    .unwrap();
    let before = std::fs::read(&db).unwrap();
    let run = wh(&m, &["list"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("is not a workhost database"), "{}", run.stderr);
    assert_eq!(std::fs::read(&db).unwrap(), before, "nothing was reset");
}

/// A manifest in `dir` and its store holding one task; returns the
/// manifest and the database file.
fn store_with_one_task(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let m = write_manifest(dir);
    ok(&m, &["enqueue", "echo", "--task", "a"]);
    (m, dir.join("data/workhost.db"))
}

#[test]
fn a_store_of_a_newer_schema_version_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (m, db) = store_with_one_task(dir.path());
    rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let run = wh(&m, &["list"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("schema version 99"), "{}", run.stderr);
    let version: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 99, "nothing was changed");
}

#[test]
fn a_damaged_database_is_refused_by_name_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (m, db) = store_with_one_task(dir.path());
    // Everything into the main file, so its page 1 is the one SQLite reads.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(conn);
    let mut bytes = std::fs::read(&db).unwrap();
    // Page 1, past SQLite's 100-byte file header, holds the schema's
    // b-tree: scribble over it.
    bytes[100..4096].fill(0xa5);
    std::fs::write(&db, &bytes).unwrap();
    for args in [&["list"][..], &["enqueue", "echo", "--task", "b"]] {
        let run = wh(&m, args);
        assert_eq!(run.code, 1, "{run:?}");
        assert!(
            run.stderr.contains("is damaged") && run.stderr.contains("restore it from a backup"),
            "{}",
            run.stderr
        );
    }
    assert_eq!(std::fs::read(&db).unwrap(), bytes, "nothing was changed");
}

#[test]
fn serve_debug_prints_every_state_change_including_work_enqueued_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path());
    let _daemon = Daemon::start_debug(&m);
    // Wait for the daemon to be up (it holds serve.lock once started).
    let ok_id = ok(&m, &["enqueue", "echo", "--task", "a"]).stdout.trim().to_string();
    wait_for(&m, &ok_id, |t| t["state"] == "succeeded");
    let id = ok(&m, &["enqueue", "fail", "--task", "b"]).stdout.trim().to_string();
    wait_for(&m, &id, |t| t["state"] == "failed");
    let want = [
        format!("task {id} scheduled (enqueued by another process)"),
        format!("task {id} started"),
        format!("task {id} failed (fail handler failed on purpose)"),
    ];
    let log = log_when(&m, "events.log", Duration::from_secs(20), |log| {
        want.iter().all(|w| log.contains(w.as_str()))
    });
    let positions: Vec<Option<usize>> = want.iter().map(|w| log.find(w.as_str())).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "out of order:\n{log}");
}

#[test]
fn status_names_what_each_task_waits_for_under_the_manifests_device_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path());
    append_to_manifest(&m, "\n[device]\ncharging = false\nmetered = true\nidle = true\n");
    let charging = ok(
        &m,
        &[
            "enqueue",
            "echo",
            "--task",
            "c",
            "--requires-charging",
            "--requires-network",
            "unmetered",
        ],
    );
    let charging = charging.stdout.trim().to_string();
    let idle = ok(&m, &["enqueue", "echo", "--task", "i", "--requires-device-idle"])
        .stdout
        .trim()
        .to_string();
    let status = ok(&m, &["status"]).stdout;
    assert!(
        status.contains(&format!("task {charging} waits for: network (unmetered), charging")),
        "{status}"
    );
    assert!(
        !status.contains(&format!("task {idle} ")),
        "idle is overridden to yes: {status}"
    );
    assert!(status.contains("charging          no"), "{status}");
    let json = ok(&m, &["status", "--json"]).json();
    assert_eq!(json["paused"], false);
    assert_eq!(json["device"]["charging"], false);
    assert_eq!(json["waiting"][0]["id"].to_string(), charging);
    assert_eq!(task(&m, &charging)["constraints"]["network"], "unmetered");

    // A daemon under these overrides runs the idle task and holds the other.
    let _daemon = Daemon::start(&m);
    wait_for(&m, &idle, |t| t["state"] == "succeeded");
    assert_eq!(task(&m, &charging)["state"], "enqueued");

    std::fs::write(
        dir.path().join("bad.toml"),
        "[device]\ncharging = \"yes\"\nsolar = true\n",
    )
    .unwrap();
    let run = wh(&dir.path().join("bad.toml"), &["status"]);
    assert_eq!(run.code, 2, "{run:?}");
}

#[test]
fn work_of_a_handler_the_manifest_lacks_is_shown_waiting_for_it_alerted_once_and_holds_up_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path());
    // Another manifest on the same data directory, whose "gone" handler
    // this one does not have.
    let other = dir.path().join("other.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&m)
            .unwrap()
            .replace("[handlers.echo]", "[handlers.gone]"),
    )
    .unwrap();
    let gone = ok(&other, &["enqueue", "gone", "--task", "g"])
        .stdout
        .trim()
        .to_string();
    let list = ok(&m, &["list"]).stdout;
    let row = list.lines().find(|l| l.contains(" gone ")).unwrap_or_default();
    assert!(
        row.contains("enqueued") && row.contains("waits for its handler"),
        "{list}"
    );
    let json = ok(&m, &["list", "--json"]).json();
    assert_eq!(json[0]["waiting_for"], serde_json::json!(["handler"]), "{json}");
    let status = ok(&m, &["status"]).stdout;
    assert!(
        status.contains(&format!(
            "task {gone} waits for: handler \"gone\" (not in this manifest)"
        )),
        "{status}"
    );
    let json = ok(&m, &["status", "--json"]).json();
    assert_eq!(
        json["waiting"][0]["waiting_for"],
        serde_json::json!(["handler"]),
        "{json}"
    );
    assert_eq!(
        ok(&other, &["list", "--json"]).json()[0].get("waiting_for"),
        None,
        "its own manifest has the handler"
    );

    let _daemon = Daemon::start(&m);
    let alert = format!("task {gone}: task {gone} is due for handler \"gone\", which this host does not have");
    log_when(&m, "serve.log", Duration::from_secs(30), |log| log.contains(&alert));
    ok(&other, &["enqueue", "gone", "--task", "g"]);
    let echo = ok(&m, &["enqueue", "echo", "--task", "e"]).stdout.trim().to_string();
    wait_for(&m, &echo, |t| t["state"] == "succeeded");
    // A second look at the store (after the enqueues) found the same handler.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(task(&m, &gone)["state"], "enqueued");
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert_eq!(log.matches("for handler \"gone\"").count(), 1, "{log}");
}

#[test]
fn a_closed_pipe_ends_a_listing_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path());
    for i in 0..50 {
        ok(&m, &["enqueue", "echo", "--task", &format!("t{i}"), "--delay", "1h"]);
    }
    let mut child = std::process::Command::new(workhost_tests::workhost_bin())
        .args(["list", "--config"])
        .arg(&m)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn work_enqueued_by_another_process_starts_within_250_ms_of_being_due() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path());
    let _daemon = Daemon::start(&m);
    let warmup = ok(&m, &["enqueue", "echo", "--task", "warmup"])
        .stdout
        .trim()
        .to_string();
    wait_for(&m, &warmup, |t| t["state"] == "succeeded");
    // The store's own timestamps: enqueue time and attempt start, so the
    // figure does not depend on how fast this test polls.
    let mut best = i64::MAX;
    for i in 0..3 {
        let id = ok(&m, &["enqueue", "echo", "--task", &format!("t{i}")])
            .stdout
            .trim()
            .to_string();
        let t = wait_for(&m, &id, |t| t["state"] == "succeeded");
        let created = t["created_at"].as_str().unwrap().to_string();
        let started = t["attempts"][0]["started_at"].as_i64().unwrap();
        let created_ms = workhost_tests::parse_rfc3339_ms(&created);
        best = best.min(started - created_ms);
    }
    assert!(best < 250, "best due-to-started across processes: {best} ms");
}

#[test]
fn data_dir_overrides_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path());
    let other = dir.path().join("elsewhere");
    ok(
        &m,
        &[
            "enqueue",
            "echo",
            "--task",
            "x",
            "--delay",
            "1h",
            "--data-dir",
            other.to_str().unwrap(),
        ],
    );
    assert!(other.join("workhost.db").is_file());
    assert_eq!(
        ok(&m, &["list", "--json"]).json().as_array().unwrap().len(),
        0,
        "the manifest's store is untouched"
    );
    assert_eq!(
        ok(&m, &["list", "--json", "--data-dir", other.to_str().unwrap()])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn processes_opening_a_brand_new_store_at_once_all_get_it() {
    // A daemon creating the store while CLI commands open it: none may see
    // the half-made file as foreign or give up on its lock.
    for round in 0..16 {
        let dir = tempfile::tempdir().unwrap();
        let m = write_manifest(dir.path());
        let _daemon = Daemon::start(&m);
        let children: Vec<_> = (0..3)
            .map(|i| {
                std::process::Command::new(workhost_tests::workhost_bin())
                    .args([
                        "enqueue",
                        "echo",
                        "--task",
                        &format!("t{i}"),
                        "--delay",
                        "1h",
                        "--config",
                    ])
                    .arg(&m)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The id `enqueue` printed.
fn enqueued(manifest: &Path, args: &[&str]) -> String {
    let mut all = vec!["enqueue"];
    all.extend_from_slice(args);
    ok(manifest, &all).stdout.trim().to_string()
}

#[test]
fn retry_run_now_and_delete_act_on_one_task_or_a_filter_and_refuse_a_wrong_state_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path());
    let later = enqueued(&m, &["echo", "--task", "later", "--delay", "1h", "--tag", "batch"]);
    let dropped = enqueued(&m, &["echo", "--task", "dropped", "--tag", "batch"]);
    ok(&m, &["cancel", &dropped]);

    let wrong = wh(&m, &["retry", &later]);
    assert_eq!(wrong.code, 2, "{wrong:?}");
    assert!(
        wrong.stderr.contains(&format!(
            "task {later} is ENQUEUED; only FAILED or CANCELLED tasks can be retried"
        )),
        "{wrong:?}"
    );
    let unknown = wh(&m, &["delete", "999"]);
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(unknown.stderr.contains("no task with id 999"), "{unknown:?}");
    let unfinished = wh(&m, &["delete", &later]);
    assert_eq!(unfinished.code, 2, "{unfinished:?}");
    assert!(
        unfinished
            .stderr
            .contains("only SUCCEEDED, FAILED or CANCELLED tasks can be deleted")
    );
    let unfiltered = wh(&m, &["retry"]);
    assert_eq!(unfiltered.code, 2, "{unfiltered:?}");
    assert!(unfiltered.stderr.contains("--all"), "{unfiltered:?}");

    let retried = ok(&m, &["retry", &dropped, "--json"]).json();
    assert_eq!(retried["state"], "enqueued");
    assert_eq!(retried["run_attempt_count"], 0);
    let due = ok(&m, &["run-now", "--tag", "batch", "--json"]).json();
    assert_eq!(due["made due now"], serde_json::json!([later.parse::<i64>().unwrap()]));
    assert!(
        ok(&m, &["run-now", &later])
            .stdout
            .contains(&format!("task {later} (now enqueued)"))
    );

    ok(&m, &["cancel", "--tag", "batch"]);
    let deleted = ok(&m, &["delete", "--all"]);
    assert!(deleted.stdout.starts_with("deleted 2 task(s)"), "{deleted:?}");
    assert_eq!(wh(&m, &["inspect", &later]).code, 2);

    // Cancel by filter: the fields combine.
    let kept = enqueued(&m, &["echo", "--task", "kept", "--delay", "1h"]);
    let gone = enqueued(&m, &["counter", "--task", "gone", "--delay", "1h"]);
    let cancelled = ok(&m, &["cancel", "--handler", "counter", "--state", "enqueued"]);
    assert!(
        cancelled.stdout.contains(&format!("cancelled 1 task(s): [{gone}]")),
        "{cancelled:?}"
    );
    assert_eq!(ok(&m, &["inspect", &kept, "--json"]).json()["state"], "enqueued");
    assert_eq!(
        ok(&m, &["cancel", "--search", "KEPT"]).stdout.trim(),
        format!("cancelled 1 task(s): [{kept}]")
    );
}

#[test]
fn list_pages_newest_first_with_a_hint_and_a_handler_pause_is_listed_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path());
    let ids: Vec<String> = (0..3)
        .map(|i| enqueued(&m, &["echo", "--task", &format!("t{i}"), "--input", "note=100%_sure"]))
        .collect();
    let other = enqueued(&m, &["counter", "--task", "c"]);
    let page = ok(&m, &["list", "--newest", "--limit", "2", "--handler", "echo"]);
    let rows: Vec<&str> = page.stdout.lines().skip(1).take(2).collect();
    assert!(
        rows[0].trim_start().starts_with(&ids[2]) && rows[1].trim_start().starts_with(&ids[1]),
        "{page:?}"
    );
    assert!(
        page.stdout.contains(&format!("the next page is `--before {}`", ids[1])),
        "{page:?}"
    );
    let next = ok(
        &m,
        &[
            "list",
            "--newest",
            "--limit",
            "2",
            "--handler",
            "echo",
            "--before",
            &ids[1],
            "--json",
        ],
    )
    .json();
    assert_eq!(next.as_array().unwrap().len(), 1);
    assert_eq!(next[0]["id"].to_string(), ids[0]);
    let found = ok(&m, &["list", "--search", "0%_S", "--json"]).json();
    assert_eq!(found.as_array().unwrap().len(), 3, "{found}");

    ok(&m, &["pause", "--handler", "echo"]);
    assert!(ok(&m, &["list"]).stdout.contains("handler \"echo\" is paused"));
    let unknown = wh(&m, &["pause", "--handler", "nope"]);
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(unknown.stderr.contains("no handler named \"nope\""), "{unknown:?}");
    {
        let _daemon = Daemon::start(&m);
        wait_for(&m, &other, |t| t["state"] == "succeeded");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(task(&m, &ids[0])["state"], "enqueued", "a paused handler's work waits");
        ok(&m, &["resume", "--handler", "echo"]);
        for id in &ids {
            wait_for(&m, id, |t| t["state"] == "succeeded");
        }
    }
    assert!(!ok(&m, &["list"]).stdout.contains("is paused"));
}
