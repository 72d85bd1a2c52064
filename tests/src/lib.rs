//! Test support for workhost's integration tests and benchmarks: paths of
//! the built guest examples, the `workhost` binary, a PostgreSQL server
//! with a fresh database per test (`pg`), and small helpers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use workhost::{EngineConfig, Executor};

/// Runs `make(i)` for every `i` in `0..n`, each future on a task of its
/// own and at most `limit` at once (the benchmarks' "N in flight"); returns
/// their outputs in the order they finished.
pub async fn in_flight<T, Fut>(n: usize, limit: usize, mut make: impl FnMut(usize) -> Fut) -> Vec<T>
where
    T: Send + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if set.len() >= limit {
            out.push(
                set.join_next()
                    .await
                    .expect("a task is in flight")
                    .expect("a task panicked"),
            );
        }
        set.spawn(make(i));
    }
    while let Some(done) = set.join_next().await {
        out.push(done.expect("a task panicked"));
    }
    out
}

pub mod chaos;
pub mod http_client;
pub mod pg;

/// Paths of the guest examples, built from source by `build.rs`.
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// An executor with the default engine, no compile cache.
pub fn executor() -> Executor {
    Executor::new(EngineConfig::default()).expect("building the default engine")
}

/// An executor on an engine without fuel metering.
pub fn unmetered_executor() -> Executor {
    Executor::new(EngineConfig {
        fuel: false,
        ..EngineConfig::default()
    })
    .expect("building an unmetered engine")
}

/// The `workhost` binary, built once per test process with the cargo that
/// runs the tests (so it is never stale).
pub fn workhost_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        // Cargo describes the test's own package in the environment; a build
        // script that tracks those variables (ring's) would otherwise
        // rebuild, here and in the next `cargo build` from a shell, each time.
        const FOR_THE_TEST: [&str; 8] = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ];
        for (key, _) in std::env::vars_os() {
            if FOR_THE_TEST.iter().any(|p| key.to_string_lossy().starts_with(p)) {
                command.env_remove(key);
            }
        }
        let status = command
            .current_dir(root())
            // `--workspace` resolves features as `cargo test --workspace`
            // does; building `-p workhost` alone would resolve them
            // differently and rebuild wasmtime on every test run.
            .args(["build", "--quiet", "--workspace", "--bins"])
            .status()
            .expect("running cargo build for the workhost binary");
        assert!(status.success(), "building the workhost binary failed");
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/all-<hash> -> target/<profile>/workhost
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .join("workhost");
        assert!(bin.is_file(), "no workhost binary at {}", bin.display());
        bin
    })
}

/// What a finished `workhost` command printed and returned.
#[derive(Debug)]
pub struct CliRun {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliRun {
    /// Standard output parsed as one JSON value.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON value ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl From<Output> for CliRun {
    fn from(out: Output) -> Self {
        CliRun {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// `workhost <args>` with its compile cache in `cache`, not yet started.
pub fn workhost_command(args: &[&str], cache: &Path) -> Command {
    let mut command = Command::new(workhost_bin());
    command.args(args).env("XDG_CACHE_HOME", cache);
    command
}

/// Runs `workhost exec <args>` with a fresh compile cache, and waits.
pub fn workhost_exec(args: &[&str]) -> CliRun {
    let cache = tempfile::tempdir().expect("a temporary cache directory");
    let mut all = vec!["exec"];
    all.extend_from_slice(args);
    workhost(&all, cache.path())
}

/// Runs `workhost <args>` with its compile cache in `cache`, and waits.
pub fn workhost(args: &[&str], cache: &Path) -> CliRun {
    workhost_command(args, cache).output().expect("running workhost").into()
}

/// Runs `workhost serve` (or another command that may not end) expecting it
/// to exit on its own within 60 s; panics, after killing it, if it does
/// not, so a regression fails the test instead of hanging the suite.
pub fn workhost_expecting_exit(args: &[&str], cache: &Path) -> CliRun {
    let mut child = workhost_command(args, cache)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running workhost");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().expect("waiting for workhost").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("workhost {args:?} was expected to exit but still ran after 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("collecting workhost's output").into()
}

/// A host configuration on `data_dir` with every example as a handler
/// (named like the example; `spin` runs without fuel so only the clock or
/// a cancel stops it) and the periodic floors lowered to 1 s.
pub fn host_config(data_dir: &Path) -> workhost::HostConfig {
    let mut config = workhost::HostConfig::new(data_dir);
    for (name, path) in [
        ("echo", guests::ECHO),
        ("counter", guests::COUNTER),
        ("flaky", guests::FLAKY),
        ("fail", guests::FAIL),
        ("trap", guests::TRAP),
        ("spin", guests::SPIN),
        ("chatty", guests::CHATTY),
    ] {
        let mut handler = workhost::HandlerConfig::new(name, path);
        handler.fuel = name != "spin";
        config.handlers.push(handler);
    }
    config.periodic_floor = workhost::PeriodicFloor {
        min_frequency: std::time::Duration::from_secs(1),
        min_flex: std::time::Duration::from_secs(1),
    };
    config
}

/// What the operating system refuses a `workhost` process, to see how it
/// copes: see [`workhost_restricted`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Restrictions {
    /// Make file permissions bind even for root: the process runs without
    /// `CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH` and `CAP_FOWNER`, so a
    /// directory made read-only with `chmod` is read-only to it.
    pub obey_permissions: bool,
    /// No file may grow past this many bytes (`RLIMIT_FSIZE`, with
    /// `SIGXFSZ` ignored so a write that would pass it fails with `EFBIG`):
    /// the disk filling up, as far as one process can tell.
    pub max_file_bytes: Option<u64>,
}

/// Runs `workhost <args>` (compile cache in `cache`) under `restrictions`,
/// and waits. Panics if the restrictions cannot be put in place, so a test
/// never passes without them.
pub fn workhost_restricted(args: &[&str], cache: &Path, restrictions: Restrictions) -> CliRun {
    use std::os::unix::process::CommandExt;
    let mut command = workhost_command(args, cache);
    let restrict = move || -> std::io::Result<()> {
        if restrictions.obey_permissions {
            // SAFETY: geteuid and prctl only read and set this process's
            // credentials; both are async-signal-safe.
            #[allow(unsafe_code)]
            unsafe {
                if libc::geteuid() == 0 {
                    // For root, the capabilities kept across exec are the
                    // bounding set, so dropping them from it is enough.
                    // CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
                    // (linux/capability.h; libc has no names for them).
                    for cap in [1, 2, 3] {
                        if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                }
            }
        }
        if let Some(bytes) = restrictions.max_file_bytes {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            // SAFETY: signal and setrlimit only change this process's
            // disposition and limits; both are async-signal-safe.
            #[allow(unsafe_code)]
            unsafe {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        Ok(())
    };
    // SAFETY: the closure calls only async-signal-safe functions and
    // allocates nothing.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(restrict);
    }
    let child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running workhost under {restrictions:?}: {e}"));
    // A command that should have failed at once but serves instead must not
    // hang the test run.
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(out) => out.expect("waiting for workhost").into(),
        Err(_) => {
            // SAFETY: kill only sends a signal to the child we started.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            panic!("workhost {args:?} under {restrictions:?} still running after 60 s")
        }
    }
}

/// Writes a manifest in `dir` naming every example as a handler (with
/// `spin` unmetered and a 60 s budget) and a data directory beside it;
/// returns the manifest's path.
pub fn write_manifest(dir: &Path) -> PathBuf {
    let cache = root().join("target/test-compile-cache");
    let mut text = format!("cache_dir = {cache:?}\n");
    text.push_str("data_dir = \"data\"\nmin_periodic_interval = \"1s\"\nmin_flex = \"1s\"\nshutdown_grace = \"1s\"\n");
    for (name, path) in [
        ("echo", guests::ECHO),
        ("counter", guests::COUNTER),
        ("flaky", guests::FLAKY),
        ("fail", guests::FAIL),
        ("chatty", guests::CHATTY),
        ("spin", guests::SPIN),
    ] {
        text.push_str(&format!("\n[handlers.{name}]\ncomponent = {path:?}\n"));
        if name == "spin" {
            text.push_str("fuel = false\ntimeout = \"60s\"\n");
        }
    }
    let path = dir.join("workhost.toml");
    std::fs::write(&path, text).expect("writing the test manifest");
    path
}

/// A `workhost serve` child process, killed when dropped.
pub struct Daemon(pub std::process::Child);

impl Daemon {
    /// Starts `workhost serve --config <manifest>`; its stderr goes to
    /// `serve.log` beside the manifest.
    pub fn start(manifest: &Path) -> Daemon {
        Self::start_with(manifest, &[])
    }

    /// Starts `workhost serve --debug`; its stdout (the state changes) goes
    /// to `events.log` beside the manifest.
    pub fn start_debug(manifest: &Path) -> Daemon {
        Self::start_with(manifest, &["--debug"])
    }

    fn start_with(manifest: &Path, extra: &[&str]) -> Daemon {
        let stdout = if extra.contains(&"--debug") {
            std::fs::File::create(manifest.with_file_name("events.log"))
                .expect("creating events.log")
                .into()
        } else {
            std::process::Stdio::null()
        };
        Daemon(
            Command::new(workhost_bin())
                .args(["serve", "--config"])
                .arg(manifest)
                .args(extra)
                .stdout(stdout)
                .stderr(std::fs::File::create(manifest.with_file_name("serve.log")).expect("creating serve.log"))
                .spawn()
                .expect("starting workhost serve"),
        )
    }

    /// Kills it with SIGKILL, as a crash would.
    pub fn kill9(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tiny HTTP/1.1 server on 127.0.0.1 for tests: `/` answers 200 with
/// "hello world", `/big` 200 with 1 MiB, `/slow` 200 after 3 s, anything
/// else 404. Each connection
/// serves one request. It stops when the test process ends.
pub struct TestServer {
    /// Its port.
    pub port: u16,
}

impl TestServer {
    /// Starts the server on a free port.
    pub fn start() -> TestServer {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a test port");
        let port = listener.local_addr().expect("local address").port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).is_err() {
                        return;
                    }
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let (status, body): (&str, Vec<u8>) = match path.as_str() {
                        "/" => ("200 OK", b"hello world".to_vec()),
                        "/big" => ("200 OK", vec![b'x'; 1 << 20]),
                        "/slow" => {
                            std::thread::sleep(std::time::Duration::from_secs(3));
                            ("200 OK", b"late".to_vec())
                        }
                        _ => ("404 Not Found", b"no".to_vec()),
                    };
                    let mut stream = stream;
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&body);
                });
            }
        });
        TestServer { port }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Reads `YYYY-MM-DDTHH:MM:SS.mmmZ` (as the CLI prints) into ms since the
/// epoch.
pub fn parse_rfc3339_ms(text: &str) -> i64 {
    let n = |range: std::ops::Range<usize>| text[range].parse::<i64>().expect("an RFC 3339 time");
    let (y, mo, d) = (n(0..4), n(5..7), n(8..10));
    let (h, mi, s, ms) = (n(11..13), n(14..16), n(17..19), n(20..23));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 86_400 + h * 3600 + mi * 60 + s) * 1000) + ms
}

/// This process's resident memory (VmRSS), MiB; 0 where it cannot be read.
pub fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
