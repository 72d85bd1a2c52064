//! The README's handler guides, run as written: each language's whole loop
//! (the `sh` block after `<!-- guide: LANG -->`), from an empty folder to
//! `workhost exec`, runs under bash in a fresh temporary folder, with this
//! checkout standing for `path/to/workhost` and the built `workhost` first
//! on PATH; what its `# prints:` lines say must appear in its output (spacing aside). A
//! guide that stops working fails here, so the README cannot drift.

use std::process::Command;

use workhost_tests::{root, workhost_bin};

/// The guide block of `lang` and the lines it promises to print.
fn guide(lang: &str) -> (String, Vec<String>) {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("reading README.md");
    let marker = format!("<!-- guide: {lang} -->");
    let at = readme
        .find(&marker)
        .unwrap_or_else(|| panic!("README.md has no {marker:?}"));
    let rest = &readme[at + marker.len()..];
    let start = rest
        .find("```sh\n")
        .unwrap_or_else(|| panic!("no sh block after {marker:?}"))
        + "```sh\n".len();
    let end = rest[start..].find("\n```").expect("an unterminated sh block");
    let block = rest[start..start + end].to_string();
    let prints: Vec<String> = block
        .lines()
        .filter_map(|l| l.trim().strip_prefix("# prints: "))
        .map(str::to_string)
        .collect();
    assert!(!prints.is_empty(), "the {lang} guide says nothing it prints");
    (block, prints)
}

fn check(lang: &str) {
    let (block, prints) = guide(lang);
    let script = block.replace("path/to/workhost", root().to_str().expect("a UTF-8 checkout path"));
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = workhost_bin().parent().unwrap();
    let path = std::env::join_paths(
        std::iter::once(bin_dir.to_path_buf())
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let mut bash = Command::new("bash");
    // A shell as the author has it: not the variables cargo sets for this
    // test (a target directory, flags, the test package's facts).
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME") || key.contains("RUSTFLAGS") || key == "OUT_DIR" {
            bash.env_remove(&*key);
        }
    }
    let out = bash
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        // Caches (pip's downloads, workhost's compiled components) kept in
        // target/, not in the home folder.
        .env("XDG_CACHE_HOME", root().join("target/guide-cache"))
        // zig's build of wasi-libc is the same each time: the one
        // tests/build.rs made.
        .env("ZIG_GLOBAL_CACHE_DIR", root().join("target/zig-cache"))
        .output()
        .expect("running bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the {lang} guide in README.md failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // `workhost exec` aligns its columns; compare words, not spaces.
    let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    for line in prints {
        assert!(
            words(&stdout).contains(&words(&line)),
            "the {lang} guide did not print {line:?}:\n{stdout}\n{stderr}"
        );
    }
}

#[test]
fn the_rust_guide_runs_as_written() {
    check("rust");
}

#[test]
fn the_python_guide_runs_as_written() {
    check("py");
}

#[test]
fn the_javascript_guide_runs_as_written() {
    check("js");
}

#[test]
fn the_c_guide_runs_as_written() {
    check("c");
}
