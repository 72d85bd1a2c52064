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
