//! `files`: writes the input string `text` to `/data/note.txt` in its
//! granted data directory, reads it back, lists the directory, and reports
//! what happened when it tried to leave it.
use std::fs;
use workhost_guest::{Handler, Input, Outcome, Output};

struct Files;

/// What an attempt got: `ok`, or the error's kind.
fn outcome<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{:?}", e.kind()),
    }
}

impl Handler for Files {
    fn execute(_name: &str, input: Input) -> Result<Outcome, String> {
        let text = input.str("text").unwrap_or("hello from a handler");
        fs::write("/data/note.txt", text).map_err(|e| format!("writing /data/note.txt: {e}"))?;
        let read = fs::read_to_string("/data/note.txt").map_err(|e| format!("reading /data/note.txt: {e}"))?;
        let entries = fs::read_dir("/data")
            .map_err(|e| format!("listing /data: {e}"))?
            .count();
        Output::new()
            .with("read", read)
            .with("entries", entries as i64)
            .with("parent", outcome(fs::write("/data/../outside.txt", "x")))
            .with("absolute", outcome(fs::read_to_string("/etc/passwd")))
            .with("root", outcome(fs::read_dir("/")))
            .with("symlink", outcome(fs::read_to_string("/data/link/passwd")))
            .success()
    }
}

workhost_guest::export_handler!(Files);
