//! A PostgreSQL server for tests, and a fresh database in it for each test.
//!
//! [`database`] creates a database with a unique name and hands back its
//! URL. The server it lives in is, by default, a private throwaway one that
//! this test process starts on first use and stops when it ends:
//!
//! - `initdb` in a new directory under the temporary directory
//!   (`workhost-test-pg-<test pid>-<random>`), run as the unprivileged user
//!   `nobody` when the tests run as root (initdb and postgres refuse root);
//! - `postgres` listening on a unix socket in that directory only
//!   (`listen_addresses=''`: no TCP port, so parallel test processes and
//!   other servers on the machine never collide), with `fsync`,
//!   `synchronous_commit` and `full_page_writes` off: the data is thrown
//!   away, and they only matter if the machine itself crashes (stopping or
//!   killing postgres loses nothing committed), so a test pays no disk
//!   flushes;
//! - stopped at exit (SIGINT, postgres's fast shutdown, from an `atexit`
//!   handler) and its directory removed. If the test process is killed
//!   instead, postgres gets SIGINT from the kernel (`PR_SET_PDEATHSIG`), and
//!   the next test process to start a server removes the directories of
//!   test processes that are gone, stopping any server still running there.
//!
//! With `WORKHOST_TEST_DATABASE_URL` set to the URL of an existing server
//! (a role that may `CREATE DATABASE`), the tests use that server instead:
//! each test's database (`workhost_test_<pid>_<n>`) is created there and
//! dropped when the test ends.
//!
//! Nothing is skipped when PostgreSQL is missing: [`database`] panics naming
//! the step that failed (`scripts/just setup` installs PostgreSQL).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The environment variable naming an existing server to use instead of a
/// private one.
pub const URL_VARIABLE: &str = "WORKHOST_TEST_DATABASE_URL";

/// The role the private server is created with (`initdb -U`), trusted
/// without a password on its socket.
const ROLE: &str = "workhost";

/// The prefix of a private server's directory in the temporary directory;
/// the test process's pid follows, so a later process can tell a stale one.
const DIR_PREFIX: &str = "workhost-test-pg-";

/// A fresh database for one test. Dropping it drops the database on an
/// existing server (`WORKHOST_TEST_DATABASE_URL`); a private server's
/// databases go with the server.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    config: tokio_postgres::Config,
}

impl TestDatabase {
    /// Its name, unique in the server.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL for it, in the form libpq and tokio-postgres read.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its connection settings, for a connection the test drives itself
    /// (a listener, which reads notifications with `poll_message`).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// A connection to it: the client, with its connection driven by a task
    /// on the current tokio runtime.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = self
            .config
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test database {:?}: {e}", self.url));
        tokio::spawn(async move {
            // Ends with an error when the server goes away; the client's
            // calls report that.
            let _ = connection.await;
        });
        client
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Ok(Server::Existing { admin, .. }) = server() else {
            return;
        };
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&self.name));
        if let Err(e) = run_admin(admin.clone(), sql) {
            eprintln!("could not drop the test database {:?}: {e}", self.name);
        }
    }
}

/// A new, empty database for one test, on the test server (starting the
/// private one on first use). Panics, naming the step, when there is no
/// server to be had. Works from any thread, in or out of a tokio runtime.
pub fn database() -> TestDatabase {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let server = server().as_ref().unwrap_or_else(|e| panic!("{e}"));
    let name = format!(
        "workhost_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let (admin, url) = match server {
        Server::Private { socket_dir, admin, .. } => (
            admin.clone(),
            format!("postgresql:///{name}?host={}&user={ROLE}", socket_dir.display()),
        ),
        Server::Existing { admin, url } => (admin.clone(), url_with_database(url, &name)),
    };
    run_admin(admin, format!("CREATE DATABASE {}", quote_ident(&name)))
        .unwrap_or_else(|e| panic!("creating the test database {name:?} failed: {e}"));
    let config = url
        .parse()
        .unwrap_or_else(|e| panic!("the test database URL {url:?} does not parse: {e}"));
    TestDatabase { name, url, config }
}

/// The URL of the private server's maintenance database (`postgres`), or
/// of `WORKHOST_TEST_DATABASE_URL`; for tests of the server itself.
pub fn server_url() -> String {
    match server().as_ref().unwrap_or_else(|e| panic!("{e}")) {
        Server::Private { socket_dir, .. } => {
            format!("postgresql:///postgres?host={}&user={ROLE}", socket_dir.display())
        }
        Server::Existing { url, .. } => url.clone(),
    }
}

/// Whether the tests run on a private server this process started (and
/// not on `WORKHOST_TEST_DATABASE_URL`).
pub fn is_private() -> bool {
    matches!(server(), Ok(Server::Private { .. }))
}

/// The server the tests use.
enum Server {
    /// Started by this process.
    Private {
        /// Holds the data directory and the socket.
        socket_dir: PathBuf,
        /// The maintenance database, for CREATE DATABASE.
        admin: tokio_postgres::Config,
    },
    /// `WORKHOST_TEST_DATABASE_URL`.
    Existing {
        /// As given.
        url: String,
        /// The same, parsed.
        admin: tokio_postgres::Config,
    },
}

/// The server, started on first use; the error names the failed step.
fn server() -> &'static Result<Server, String> {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var(URL_VARIABLE) {
        Ok(url) if !url.is_empty() => {
            let admin = url
                .parse()
                .map_err(|e| format!("{URL_VARIABLE}={url:?} is not a PostgreSQL URL: {e}"))?;
            Ok(Server::Existing { url, admin })
        }
        _ => start_private().map_err(|e| {
            format!(
                "the tests' private PostgreSQL server did not start: {e}. `scripts/just setup` installs PostgreSQL; \
                 or set {URL_VARIABLE} to a server the tests may create databases in"
            )
        }),
    })
}

/// What `atexit` needs to stop the private server.
struct Running {
    pid: libc::pid_t,
    dir: PathBuf,
}

static RUNNING: OnceLock<Running> = OnceLock::new();

/// Starts the private server; the error names the step.
fn start_private() -> Result<Server, String> {
    let bin = server_programs()?;
    remove_stale_servers();
    let owner = unprivileged_owner()?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
        .tempdir()
        .map_err(|e| format!("creating its directory in {:?}: {e}", std::env::temp_dir()))?
        .keep();
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .map_err(|e| format!("handing its directory {dir:?} to uid {uid}: {e}"))?;
    }
    let data = dir.join("data");
    // initdb cleans up after itself on SIGTERM.
    let initdb = command(&bin.join("initdb"), &dir, owner, libc::SIGTERM)
        .arg("-D")
        .arg(&data)
        .args(["-U", ROLE, "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"])
        .output()
        .map_err(|e| format!("running {:?}: {e}", bin.join("initdb")))?;
    if !initdb.status.success() {
        return Err(format!(
            "initdb failed ({}): {}",
            initdb.status,
            String::from_utf8_lossy(&initdb.stderr).trim()
        ));
    }
    let pid = spawn_postgres(&bin.join("postgres"), &dir, owner, &[])?;
    let _ = RUNNING.set(Running { pid, dir: dir.clone() });
    // SAFETY: registers a function without arguments that libc calls once
    // at exit.
    #[allow(unsafe_code)]
    unsafe {
        libc::atexit(stop_at_exit);
    }
    let admin: tokio_postgres::Config = format!("postgresql:///postgres?host={}&user={ROLE}", dir.display())
        .parse()
        .map_err(|e| format!("its URL does not parse: {e}"))?;
    wait_until_ready(&dir, pid, &admin, DEFAULT_PORT)?;
    Ok(Server::Private { socket_dir: dir, admin })
}

/// The directory of `initdb` and `postgres`: the one of `initdb` on PATH,
/// else the newest `/usr/lib/postgresql/<major>/bin` (Debian keeps them off
/// PATH); the same places `scripts/postgres-install` looks.
fn server_programs() -> Result<PathBuf, String> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("initdb"))
        .find(|p| p.is_file());
    if let Some(initdb) = on_path {
        // Debian's /usr/bin wrappers and local links lead to the real one.
        let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        return Ok(real.parent().expect("a file has a parent").to_path_buf());
    }
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").is_file())
        .collect();
    majors.sort();
    majors
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "finding initdb: it is not on PATH nor in /usr/lib/postgresql/*/bin".to_string())
}

/// The user the server runs as when this process is root (initdb and
/// postgres refuse root): `nobody`, from /etc/passwd. `None` when not root.
fn unprivileged_owner() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid only reads this process's credentials.
    #[allow(unsafe_code)]
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd =
        std::fs::read_to_string("/etc/passwd").map_err(|e| format!("reading /etc/passwd to find `nobody`: {e}"))?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&"nobody"))
        .and_then(|fields| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
        .map(Some)
        .ok_or_else(|| {
            "finding the user `nobody` to run postgres as (it refuses root): it is not in /etc/passwd".to_string()
        })
}

/// `program`, run in `dir`, as `owner` when given (std drops root's
/// supplementary groups when it changes the uid), sent `signal` when the
/// thread that starts it ends (`PR_SET_PDEATHSIG`), so a killed test
/// process leaves nothing running.
fn command(program: &Path, dir: &Path, owner: Option<(u32, u32)>, signal: libc::c_int) -> Command {
    let mut command = Command::new(program);
    command.current_dir(dir).stdin(Stdio::null());
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
    // SAFETY: prctl is async-signal-safe and the closure allocates nothing.
    // It runs after the uid change, which would clear the setting.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// Starts `postgres` on the cluster in `dir` from a thread that lives as
/// long as the process, so the parent-death signal (which follows the
/// spawning thread) fires only when the process ends; returns its pid.
/// `extra` are more `-c name=value` settings, after (so over) the defaults.
fn spawn_postgres(
    program: &Path,
    dir: &Path,
    owner: Option<(u32, u32)>,
    extra: &[String],
) -> Result<libc::pid_t, String> {
    let log = std::fs::File::create(dir.join("server.log")).map_err(|e| format!("creating server.log: {e}"))?;
    // SIGINT: postgres's fast shutdown.
    let mut command = command(program, dir, owner, libc::SIGINT);
    command
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-k")
        .arg(dir)
        .args([
            "-c",
            "listen_addresses=",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            // Several serving hosts, each with a pool, share one server.
            "-c",
            "max_connections=300",
        ])
        .args(extra.iter().flat_map(|setting| ["-c", setting]))
        .stdout(Stdio::null())
        .stderr(log);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("workhost-test-postgres".into())
        .spawn(move || {
            let child: std::io::Result<Child> = command.spawn();
            let pid = child.as_ref().map(|c| c.id() as libc::pid_t).map_err(|e| e.to_string());
            let _ = tx.send(pid);
            // Keep the child (it is reaped at exit) and this thread.
            let _child = child;
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| format!("starting its thread: {e}"))?;
    rx.recv()
        .map_err(|_| "its thread ended".to_string())?
        .map_err(|e| format!("running {program:?}: {e}"))
}

/// The port of a server's socket (`.s.PGSQL.<port>`) unless it listens on
/// TCP too.
const DEFAULT_PORT: u16 = 5432;

/// Waits (up to 60 s) until the server answers on its socket for `port`;
/// fails early, with its log, if it exits.
fn wait_until_ready(dir: &Path, pid: libc::pid_t, admin: &tokio_postgres::Config, port: u16) -> Result<(), String> {
    let log = || {
        let text = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if !process_alive(pid) || is_zombie(pid) {
            return Err(format!("postgres exited at start; its log:\n{}", log()));
        }
        if dir.join(format!(".s.PGSQL.{port}")).exists() && run_admin(admin.clone(), "SELECT 1".into()).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("postgres did not answer within 60 s; its log:\n{}", log()));
        }
        // Polling a process we do not control; there is nothing to await.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stops the private server and removes its directory; libc calls it at
/// exit.
extern "C" fn stop_at_exit() {
    if let Some(running) = RUNNING.get() {
        stop(running.pid, true);
        let _ = std::fs::remove_dir_all(&running.dir);
    }
}

/// Stops the postmaster `pid` with SIGINT (fast shutdown: it ends every
/// session and exits cleanly; SIGKILL would leave its backends and shared
/// memory behind) and waits up to 30 s for it to exit, reaping it when it
/// is our child.
fn stop(pid: libc::pid_t, child: bool) {
    // SAFETY: kill and waitpid only signal and reap the given process.
    #[allow(unsafe_code)]
    unsafe {
        if libc::kill(pid, libc::SIGINT) != 0 {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if child {
                if libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) != 0 {
                    return;
                }
            } else if !process_alive(pid) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Whether process `pid` exists.
fn process_alive(pid: libc::pid_t) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether process `pid` has exited and waits to be reaped.
fn is_zombie(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Removes private-server directories of test processes that are gone,
/// first stopping a server still running in one (one whose postmaster.pid
/// names a live postgres process of that directory).
fn remove_stale_servers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(test_pid) = rest.split('-').next().and_then(|p| p.parse::<libc::pid_t>().ok()) else {
            continue;
        };
        if process_alive(test_pid) {
            continue;
        }
        let dir = entry.path();
        let data = dir.join("data");
        let postmaster = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse::<libc::pid_t>().ok());
        if let Some(pid) = postmaster {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("postgres") && cmdline.contains(&*data.to_string_lossy()) {
                stop(pid, false);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Runs `sql` on a connection of its own, from a thread of its own (so it
/// works inside and outside a tokio runtime).
fn run_admin(config: tokio_postgres::Config, sql: String) -> Result<(), String> {
    query_admin(config, sql).map(drop)
}

/// The rows of `sql` (several statements may be given), each column as
/// text, from a connection of its own (as [`run_admin`]).
fn query_admin(config: tokio_postgres::Config, sql: String) -> Result<Vec<Vec<Option<String>>>, String> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
            let driver = tokio::spawn(connection);
            let result = client.simple_query(&sql).await.map_err(|e| match e.as_db_error() {
                Some(db) => db.to_string(),
                None => e.to_string(),
            });
            drop(client);
            let _ = driver.await;
            Ok(result?
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => {
                        Some((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect())
                    }
                    _ => None,
                })
                .collect())
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the admin thread panicked".into()))
}

/// Writes a TLS server's files into `dir` (the key readable by its owner
/// only, as postgres demands) and picks a free port; returns the port and
/// the settings that turn TLS and the TCP listener on.
fn tls_settings(dir: &Path, owner: Option<(u32, u32)>, tls: &ServerTls) -> Result<(u16, Vec<String>), String> {
    use std::os::unix::fs::PermissionsExt;
    let files = [
        ("server.crt", &tls.cert_pem, 0o644),
        ("server.key", &tls.key_pem, 0o600),
        ("client-ca.crt", &tls.client_ca_pem, 0o644),
        ("tls_hba.conf", &format!("local all all trust\n{}\n", tls.hba), 0o644),
    ];
    for (name, text, mode) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("writing {path:?}: {e}"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {path:?}: {e}"))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| format!("chown {path:?}: {e}"))?;
        }
    }
    // The kernel's pick of a free port; released just before postgres
    // binds it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("finding a free port: {e}"))?
        .port();
    let file = |name: &str| dir.join(name).display().to_string();
    Ok((
        port,
        vec![
            "listen_addresses=127.0.0.1".into(),
            format!("port={port}"),
            "ssl=on".into(),
            format!("ssl_cert_file={}", file("server.crt")),
            format!("ssl_key_file={}", file("server.key")),
            format!("ssl_ca_file={}", file("client-ca.crt")),
            format!("hba_file={}", file("tls_hba.conf")),
        ],
    ))
}

/// `name` as a quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `url` naming database `name` instead of its own: a `postgres://` URL
/// gets the name as its path (a `dbname` parameter is dropped), a
/// `key=value` string gets `dbname=<name>` appended (the last one counts).
pub fn url_with_database(url: &str, name: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return format!("{url} dbname={name}");
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split_once('/').map_or(before_query, |(a, _)| a);
    let query: Vec<&str> = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty() && !p.starts_with("dbname="))
        .collect();
    let mut out = format!("{scheme}://{authority}/{name}");
    if !query.is_empty() {
        out.push('?');
        out.push_str(&query.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::url_with_database;

    #[test]
    fn a_url_names_the_test_database_in_place_of_its_own() {
        for (url, expected) in [
            ("postgres://u:p@db:5432/app", "postgres://u:p@db:5432/t1"),
            ("postgresql://db", "postgresql://db/t1"),
            (
                "postgresql:///app?host=/run/pg&user=u",
                "postgresql:///t1?host=/run/pg&user=u",
            ),
            (
                "postgres://db/app?dbname=other&sslmode=disable",
                "postgres://db/t1?sslmode=disable",
            ),
            (
                "host=/run/pg user=u dbname=app",
                "host=/run/pg user=u dbname=app dbname=t1",
            ),
        ] {
            assert_eq!(url_with_database(url, "t1"), expected, "{url}");
        }
    }
}

/// A private server that one test owns and may stop and start again (the
/// shared one serves every other test of the process). It needs the
/// server programs even when `WORKHOST_TEST_DATABASE_URL` names a server:
/// a test cannot stop that one. Stopped and removed when dropped.
#[derive(Debug)]
pub struct OwnServer {
    dir: PathBuf,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    pid: Option<libc::pid_t>,
    port: u16,
    extra: Vec<String>,
}

/// What a server with TLS on is given ([`OwnServer::start_tls`]).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Its certificate (chain), PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// The CA it checks client certificates against, PEM.
    pub client_ca_pem: String,
    /// Its `pg_hba.conf` lines for TCP (a `local` line trusting the socket
    /// comes first).
    pub hba: String,
}

impl OwnServer {
    /// Creates and starts it, on its unix socket only; panics naming the
    /// failed step.
    pub fn start() -> OwnServer {
        Self::start_with(None)
    }

    /// Creates and starts one that also listens on 127.0.0.1 at
    /// [`Self::port`] with TLS on, as `tls` says.
    pub fn start_tls(tls: &ServerTls) -> OwnServer {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<&ServerTls>) -> OwnServer {
        let start = || -> Result<OwnServer, String> {
            let bin = server_programs()?;
            let owner = unprivileged_owner()?;
            let dir = tempfile::Builder::new()
                .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
                .tempdir()
                .map_err(|e| format!("creating its directory: {e}"))?
                .keep();
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| format!("chown {dir:?}: {e}"))?;
            }
            let initdb = command(&bin.join("initdb"), &dir, owner, libc::SIGTERM)
                .arg("-D")
                .arg(dir.join("data"))
                .args(["-U", ROLE, "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"])
                .output()
                .map_err(|e| format!("running initdb: {e}"))?;
            if !initdb.status.success() {
                return Err(format!("initdb failed: {}", String::from_utf8_lossy(&initdb.stderr)));
            }
            let (port, extra) = match tls {
                None => (DEFAULT_PORT, Vec::new()),
                Some(tls) => tls_settings(&dir, owner, tls)?,
            };
            let mut server = OwnServer {
                dir,
                bin,
                owner,
                pid: None,
                port,
                extra,
            };
            server.start_again()?;
            Ok(server)
        };
        start().unwrap_or_else(|e| panic!("a test's own PostgreSQL server did not start: {e}"))
    }

    fn admin(&self) -> tokio_postgres::Config {
        format!(
            "postgresql:///postgres?host={}&port={}&user={ROLE}",
            self.dir.display(),
            self.port
        )
        .parse()
        .expect("a socket URL parses")
    }

    fn start_again(&mut self) -> Result<(), String> {
        let pid = spawn_postgres(&self.bin.join("postgres"), &self.dir, self.owner, &self.extra)?;
        self.pid = Some(pid);
        wait_until_ready(&self.dir, pid, &self.admin(), self.port)
    }

    /// Its TCP port on 127.0.0.1 ([`Self::start_tls`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `sql` as its superuser, over its socket; panics naming it.
    pub fn admin_sql(&self, sql: &str) {
        run_admin(self.admin(), sql.to_string()).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The rows of `sql` (as text), run as its superuser over its socket.
    pub fn admin_query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        query_admin(self.admin(), sql.to_string()).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Starts it again after [`Self::stop`].
    pub fn restart(&mut self) {
        self.start_again()
            .unwrap_or_else(|e| panic!("the test's own PostgreSQL server did not start again: {e}"));
    }

    /// Stops it (fast shutdown: every session ends).
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            stop(pid, true);
        }
    }

    /// Creates database `name`; returns its URL.
    pub fn database(&self, name: &str) -> String {
        run_admin(self.admin(), format!("CREATE DATABASE {}", quote_ident(name)))
            .unwrap_or_else(|e| panic!("creating database {name:?}: {e}"));
        format!(
            "postgresql:///{name}?host={}&port={}&user={ROLE}",
            self.dir.display(),
            self.port
        )
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
