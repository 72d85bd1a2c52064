//! The dashboard in a real headless Chromium (Debian's `chromium`, which
//! `scripts/chromium-install` installs from the setup recipe), driven by
//! Playwright (`playwright-core`, pinned in tests/browser/package-lock.json)
//! under `node --test`, against a real `workhost serve --http`. The
//! browser's steps are in tests/browser/dashboard.test.mjs; its screenshots
//! go to target/screenshots (`WORKHOST_SCREENSHOTS=docs/screenshots`
//! refreshes the README's).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use workhost_tests::{root, workhost_bin, write_manifest};

/// The browser the setup recipe installs.
fn chromium() -> String {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return path;
    }
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!(
        "no Chromium: run `scripts/just setup` (scripts/chromium-install installs Debian's chromium), or set CHROMIUM"
    );
}

#[test]
fn the_dashboard_shows_live_work_and_steers_it_in_a_real_browser() {
    let browser = chromium();
    let modules = root().join("tests/browser/node_modules/playwright-core");
    assert!(
        modules.exists(),
        "tests/browser/node_modules has no playwright-core: run `scripts/just setup` (scripts/npm-ci tests/browser)"
    );
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_manifest(dir.path());
    let log = dir.path().join("serve.log");
    let mut serve = Command::new(workhost_bin())
        .args(["serve", "--http", "127.0.0.1:0", "--config"])
        .arg(&manifest)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting workhost serve");
    // The listener prints its address once bound.
    let stderr = serve.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log_copy = log.clone();
    std::thread::spawn(move || {
        let mut out = std::fs::File::create(&log_copy).unwrap();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            use std::io::Write;
            let _ = writeln!(out, "{line}");
            if let Some(rest) = line.strip_prefix("workhost: dashboard and API at ") {
                let _ = tx.send(rest.trim().trim_end_matches('/').to_string());
            }
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
        panic!(
            "serve printed no address: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let shots = std::env::var("WORKHOST_SCREENSHOTS")
        .map(|d| root().join(d))
        .unwrap_or_else(|_| root().join("target/screenshots"));
    let started = Instant::now();
    let out = Command::new("node")
        .arg("--test")
        .arg(root().join("tests/browser/dashboard.test.mjs"))
        .current_dir(root())
        .env("WORKHOST_URL", &url)
        .env("WORKHOST_BIN", workhost_bin())
        .env("WORKHOST_MANIFEST", &manifest)
        .env("CHROMIUM", &browser)
        .env("SCREENSHOT_DIR", &shots)
        .output()
        .expect("running node --test (node is one of the tools the project needs)");
    let _ = serve.kill();
    let _ = serve.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the browser test failed after {:?}; serve's log:\n{}",
        started.elapsed(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(stdout.contains("# fail 0"), "{stdout}");
    for shot in ["overview.png", "tasks.png", "task-detail.png", "handlers.png"] {
        assert!(shots.join(shot).exists(), "no screenshot {shot} in {}", shots.display());
    }
}
