//! Several `workhost serve` processes sharing one PostgreSQL database: one
//! queue, each task run by one host, a dead or frozen host's work rescued,
//! unique work and periodic work exact across hosts, and a database that
//! is not workhost's refused at start.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use workhost_tests::{CliRun, Daemon, pg, workhost, write_manifest};

/// The lease hosts hold in these tests (the default is 15 s).
const LEASE: Duration = Duration::from_secs(2);

/// A host's own folder (data directory, manifest, logs) with a manifest
/// naming the shared database.
fn host_dir(root: &Path, name: &str, url: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let m = write_manifest(&dir);
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(
        &m,
        format!("database = {url:?}\nhost_lease = \"{}s\"\n{text}", LEASE.as_secs()),
    )
    .unwrap();
    m
}

fn wh(manifest: &Path, args: &[&str]) -> CliRun {
    let mut all = args.to_vec();
    all.extend(["--config", manifest.to_str().unwrap()]);
    workhost(&all, manifest.parent().unwrap())
}

fn ok(manifest: &Path, args: &[&str]) -> String {
    let run = wh(manifest, args);
    assert_eq!(run.code, 0, "{args:?}: {run:?}");
    run.stdout.trim().to_string()
}

fn task(manifest: &Path, id: &str) -> serde_json::Value {
    let run = wh(manifest, &["inspect", id, "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    run.json()
}

fn wait_for(
    manifest: &Path,
    id: &str,
    within: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let t = task(manifest, id);
        if done(&t) {
            return t;
        }
        assert!(start.elapsed() < within, "task {id} never got there in {within:?}: {t}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn live_hosts(manifest: &Path) -> Vec<serde_json::Value> {
    let hosts: serde_json::Value = serde_json::from_str(&ok(manifest, &["hosts", "--json"])).unwrap();
    hosts
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["live"] == true)
        .cloned()
        .collect()
}

fn wait_hosts(manifest: &Path, n: usize) {
    let start = Instant::now();
    while live_hosts(manifest).len() != n {
        assert!(start.elapsed() < Duration::from_secs(60), "never {n} live hosts");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn three_hosts_share_one_queue_and_run_each_task_once() {
    let db = pg::database();
    let root = tempfile::tempdir().unwrap();
    let ms: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|n| host_dir(root.path(), n, db.url()))
        .collect();
    let _hosts: Vec<Daemon> = ms.iter().map(|m| Daemon::start(m)).collect();
    wait_hosts(&ms[0], 3);
    let ids: Vec<String> = (0..45)
        .map(|i| {
            ok(
                &ms[i % 3],
                &["enqueue", "echo", "--task", &format!("t{i}"), "--input", "n=1"],
            )
        })
        .collect();
    for id in &ids {
        let t = wait_for(&ms[0], id, Duration::from_secs(60), |t| t["state"] == "succeeded");
        assert_eq!(t["attempts"].as_array().unwrap().len(), 1, "ran once: {t}");
    }
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&ms[2], &["list", "--state", "succeeded", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), ids.len());
    let table = ok(&ms[1], &["hosts"]);
    assert_eq!(table.lines().filter(|l| l.contains(" yes ")).count(), 3, "{table}");
}

#[test]
fn a_killed_hosts_running_work_is_rescued_by_another_within_its_lease() {
    let db = pg::database();
    let root = tempfile::tempdir().unwrap();
    let (ma, mb) = (
        host_dir(root.path(), "a", db.url()),
        host_dir(root.path(), "b", db.url()),
    );
    let a = Daemon::start(&ma);
    wait_hosts(&ma, 1);
    let spin = ok(&ma, &["enqueue", "spin", "--task", "forever"]);
    wait_for(&ma, &spin, Duration::from_secs(30), |t| t["state"] == "running");
    let _b = Daemon::start(&mb);
    wait_hosts(&mb, 2);
    a.kill9();
    let killed = Instant::now();
    let t = wait_for(&mb, &spin, LEASE * 4 + Duration::from_secs(10), |t| {
        t["run_attempt_count"] == 2 && t["state"] == "running"
    });
    let rescued_after = killed.elapsed();
    assert!(
        rescued_after <= LEASE + Duration::from_secs(5),
        "rescued {rescued_after:?} after the kill (lease {LEASE:?})"
    );
    assert_eq!(t["attempts"][0]["stop_reason"], "host-shutdown", "{t}");
    assert_eq!(t["attempts"][0]["error"], "the host died during this run");
    ok(&mb, &["cancel", &spin]);
    wait_for(&mb, &spin, Duration::from_secs(10), |t| {
        t["state"] == "cancelled" && t["attempts"][1]["ended_at"].is_i64()
    });
}

#[test]
fn a_frozen_host_past_its_lease_stops_its_own_run_and_its_writes_change_nothing() {
    let db = pg::database();
    let root = tempfile::tempdir().unwrap();
    let (ma, mb) = (
        host_dir(root.path(), "a", db.url()),
        host_dir(root.path(), "b", db.url()),
    );
    let a = Daemon::start(&ma);
    wait_hosts(&ma, 1);
    let spin = ok(&ma, &["enqueue", "spin", "--task", "forever"]);
    wait_for(&ma, &spin, Duration::from_secs(30), |t| t["state"] == "running");
    let _b = Daemon::start(&mb);
    wait_hosts(&mb, 2);
    let pid = a.0.id() as i32;
    // SAFETY-free: signals through the kill(1) program.
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    // b rescues the frozen host's run and runs it again.
    wait_for(&mb, &spin, LEASE * 4 + Duration::from_secs(10), |t| {
        t["run_attempt_count"] == 2 && t["state"] == "running"
    });
    signal("-CONT");
    // a wakes past its lease: it stops its own run (lease-lost); the
    // task keeps b's run, and a's record of the first run is the rescue's.
    let log = ma.with_file_name("serve.log");
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("lease on the store ran out") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "a never said its lease ran out: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let t = task(&mb, &spin);
    assert_eq!(
        (t["state"].as_str(), t["run_attempt_count"].as_i64()),
        (Some("running"), Some(2)),
        "{t}"
    );
    assert_eq!(t["attempts"][0]["stop_reason"], "host-shutdown", "{t}");
    assert!(t["attempts"][1]["ended_at"].is_null(), "b's run goes on: {t}");
    // a joined again as a new incarnation.
    wait_hosts(&mb, 2);
    ok(&mb, &["cancel", &spin]);
    drop(a);
}

#[test]
fn racing_enqueues_of_one_unique_name_from_several_processes_create_one_task() {
    let db = pg::database();
    let root = tempfile::tempdir().unwrap();
    let ms: Vec<PathBuf> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| host_dir(root.path(), n, db.url()))
        .collect();
    let runs: Vec<_> = ms
        .iter()
        .map(|m| {
            let m = m.clone();
            std::thread::spawn(move || {
                ok(
                    &m,
                    &[
                        "enqueue", "echo", "--task", "once", "--unique", "daily", "--policy", "keep", "--delay", "1h",
                    ],
                )
            })
        })
        .collect();
    let ids: Vec<String> = runs.into_iter().map(|r| r.join().unwrap()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&ms[0], &["list", "--unique", "daily", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}

#[test]
fn a_periodic_task_runs_once_per_period_with_three_hosts_serving() {
    let db = pg::database();
    let root = tempfile::tempdir().unwrap();
    let ms: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|n| host_dir(root.path(), n, db.url()))
        .collect();
    let _hosts: Vec<Daemon> = ms.iter().map(|m| Daemon::start(m)).collect();
    wait_hosts(&ms[0], 3);
    let id = ok(
        &ms[0],
        &["enqueue", "counter", "--task", "tick", "--every", "1s", "--flex", "1s"],
    );
    std::thread::sleep(Duration::from_millis(5500));
    ok(&ms[0], &["cancel", &id]);
    let t = task(&ms[0], &id);
    let starts: Vec<i64> = t["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["started_at"].as_i64().unwrap())
        .collect();
    assert!(
        (4..=7).contains(&starts.len()),
        "about one run per second over 5.5 s: {starts:?}"
    );
    for pair in starts.windows(2) {
        assert!(pair[1] - pair[0] >= 900, "two runs in one period: {starts:?}");
    }
}

#[test]
fn a_database_that_is_unreachable_or_another_programs_is_refused_at_start_naming_the_problem() {
    let db = pg::database();
    let root = tempfile::tempdir().unwrap();
    let m = host_dir(root.path(), "a", db.url());
    let refused = |url: &str, says: &str| {
        let run = workhost_tests::workhost_expecting_exit(
            &["serve", "--config", m.to_str().unwrap(), "--database", url],
            root.path(),
        );
        assert_eq!(run.code, 1, "{url}: {run:?}");
        assert!(run.stderr.contains(says), "{url}: {}", run.stderr);
    };
    refused(
        "postgresql:///workhost?host=/nonexistent-socket-dir",
        "cannot use the task store database",
    );
    refused(&pg::url_with_database(db.url(), "no_such_database"), "does not exist");
    let mut nobody = db.url().replace("user=workhost", "user=no_such_role");
    if nobody == db.url() {
        nobody = format!(
            "{}{}user=no_such_role",
            db.url(),
            if db.url().contains('?') { "&" } else { "?" }
        );
    }
    refused(&nobody, "no_such_role");
    // Another program's database: refused, and left as it was.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = db.connect().await;
        client.batch_execute("CREATE TABLE users (id int)").await.unwrap();
    });
    refused(db.url(), "is not a workhost store");
    rt.block_on(async {
        let client = db.connect().await;
        let schema: Option<String> = client
            .query_one("SELECT nspname::text FROM pg_namespace WHERE nspname = 'workhost'", &[])
            .await
            .map(|r| r.get(0))
            .ok();
        assert_eq!(schema, None, "nothing was created");
    });
}

/// `database_listen` (behind PgBouncer in transaction mode: the server
/// itself) carries the host's LISTEN, and only it: here the same server
/// under another `application_name`, so the sessions tell which URL each
/// came from. Work enqueued by another process still wakes the host. A
/// listener URL the host cannot use is refused at start, naming it.
#[test]
fn a_listener_url_apart_from_the_database_carries_the_listen_and_a_bad_one_is_refused_at_start() {
    let db = pg::database();
    let root = tempfile::tempdir().unwrap();
    let m = host_dir(root.path(), "a", db.url());
    let probe = "workhost_listener_probe";
    let listen_url = format!(
        "{}{}application_name={probe}",
        db.url(),
        if db.url().contains('?') { "&" } else { "?" }
    );
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, format!("database_listen = {listen_url:?}\n{text}")).unwrap();
    let _host = Daemon::start(&m);
    wait_hosts(&m, 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sessions = |name: &str| -> Vec<String> {
        rt.block_on(async {
            let client = db.connect().await;
            client
                .query(
                    "SELECT query FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
                    &[&name],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect()
        })
    };
    let start = Instant::now();
    loop {
        let probes = sessions(probe);
        if probes.len() == 1 && probes[0].starts_with("LISTEN") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "one LISTEN session on the listener URL: {probes:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let id = ok(&m, &["enqueue", "echo", "--task", "woken"]);
    wait_for(&m, &id, Duration::from_secs(30), |t| t["state"] == "succeeded");
    assert_eq!(sessions(probe).len(), 1, "only the listener uses the listener URL");

    let other = root.path().join("b");
    std::fs::create_dir_all(&other).unwrap();
    let refused = workhost_tests::workhost_expecting_exit(
        &[
            "serve",
            "--config",
            m.to_str().unwrap(),
            "--data-dir",
            other.to_str().unwrap(),
            "--database-listen",
            &pg::url_with_database(db.url(), "no_such_database"),
        ],
        root.path(),
    );
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("listener URL") && refused.stderr.contains("does not exist"),
        "{}",
        refused.stderr
    );

    // A listener URL that reaches another database (it connects and
    // LISTENs, but would hear nothing of this one) is refused too, before
    // the fresh database is touched.
    let (fresh, elsewhere) = (pg::database(), pg::database());
    let refused = workhost_tests::workhost_expecting_exit(
        &[
            "serve",
            "--config",
            m.to_str().unwrap(),
            "--data-dir",
            other.to_str().unwrap(),
            "--database",
            fresh.url(),
            "--database-listen",
            elsewhere.url(),
        ],
        root.path(),
    );
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("listener URL")
            && refused.stderr.contains("does not reach the database URL's database"),
        "{}",
        refused.stderr
    );
    let schemas: i64 = rt.block_on(async {
        fresh
            .connect()
            .await
            .query_one("SELECT count(*) FROM pg_namespace WHERE nspname = 'workhost'", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(schemas, 0, "a refused start created the schema");
}

#[test]
fn a_task_cancelled_from_another_process_stops_on_the_host_running_it_within_250_ms() {
    let db = pg::database();
    let root = tempfile::tempdir().unwrap();
    let (ma, mb) = (
        host_dir(root.path(), "a", db.url()),
        host_dir(root.path(), "b", db.url()),
    );
    let _a = Daemon::start(&ma);
    wait_hosts(&ma, 1);
    let spin = ok(&ma, &["enqueue", "spin", "--task", "forever"]);
    wait_for(&ma, &spin, Duration::from_secs(30), |t| t["state"] == "running");
    // The cancel comes from a process with the other host's manifest.
    ok(&mb, &["cancel", &spin]);
    let cancelled_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t = wait_for(&mb, &spin, Duration::from_secs(10), |t| {
        t["attempts"][0]["ended_at"].is_i64()
    });
    let ended = t["attempts"][0]["ended_at"].as_i64().unwrap();
    assert_eq!(t["state"], "cancelled", "{t}");
    assert!(
        ended - cancelled_at <= 250,
        "the run stopped {} ms after the cancel committed",
        ended - cancelled_at
    );
}

#[test]
fn postgres_stopped_and_started_under_load_loses_nothing_and_hosts_keep_their_runs() {
    let mut server = pg::OwnServer::start();
    let url = server.database("queue");
    let root = tempfile::tempdir().unwrap();
    let m = host_dir(root.path(), "a", &url);
    // A lease longer than the outage; spin gives up after 3 s and one
    // attempt, so its outcome comes while the database is down.
    let text = std::fs::read_to_string(&m)
        .unwrap()
        .replace(
            &format!("host_lease = \"{}s\"", LEASE.as_secs()),
            "host_lease = \"10s\"",
        )
        .replace("timeout = \"60s\"", "timeout = \"3s\"");
    std::fs::write(&m, text).unwrap();
    let _host = Daemon::start(&m);
    wait_hosts(&m, 1);
    let echoes: Vec<String> = (0..10)
        .map(|i| ok(&m, &["enqueue", "echo", "--task", &format!("e{i}")]))
        .collect();
    for id in &echoes {
        wait_for(&m, id, Duration::from_secs(30), |t| t["state"] == "succeeded");
    }
    let spin = ok(
        &m,
        &["enqueue", "spin", "--task", "three-seconds", "--max-attempts", "1"],
    );
    wait_for(&m, &spin, Duration::from_secs(30), |t| t["state"] == "running");

    server.stop();
    let refused = wh(&m, &["enqueue", "echo", "--task", "while-down"]);
    assert_eq!(
        refused.code, 1,
        "an enqueue while the database is down is refused: {refused:?}"
    );
    assert!(
        refused.stderr.contains("cannot use the task store database"),
        "{}",
        refused.stderr
    );
    std::thread::sleep(Duration::from_secs(4));
    server.restart();

    // The run went on through the outage and its outcome, refused while
    // the database was down, is recorded once it is back.
    let t = wait_for(&m, &spin, Duration::from_secs(30), |t| t["state"] == "failed");
    assert_eq!(t["run_attempt_count"], 1, "the same run, never rescued: {t}");
    assert_eq!(t["attempts"][0]["stop_reason"], "timeout", "{t}");
    for id in &echoes {
        assert_eq!(task(&m, id)["state"], "succeeded");
    }
    let after = ok(&m, &["enqueue", "echo", "--task", "after"]);
    wait_for(&m, &after, Duration::from_secs(30), |t| t["state"] == "succeeded");
    let log_path = m.with_file_name("serve.log");
    let start = Instant::now();
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap();
        if log.contains("takes this host's lease renewals again") || start.elapsed() > Duration::from_secs(20) {
            break log;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let count = |needle: &str| log.matches(needle).count();
    assert_eq!(
        count("refused the dispatcher's claim"),
        count("takes the dispatcher's claims again"),
        "{log}"
    );
    assert!(
        count("refused the dispatcher's claim") <= 1,
        "one alert while down: {log}"
    );
    assert_eq!(count("refused this host's lease renewal"), 1, "{log}");
    assert_eq!(count("takes this host's lease renewals again"), 1, "{log}");
    assert!(count("refused this run's outcome") <= 1, "{log}");
    assert_eq!(
        count("lease on the store ran out"),
        0,
        "the outage was shorter than the lease: {log}"
    );
}

/// A test certificate authority (rcgen), and what it issues.
struct Ca(rcgen::CertifiedIssuer<'static, rcgen::KeyPair>);

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        Ca(rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap())
    }

    /// A certificate for `common_name` and the DNS names `names`, and its
    /// key, both PEM.
    fn issue(&self, common_name: &str, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// TLS to PostgreSQL as libpq's `sslmode`, `sslrootcert`, `sslcert` and
/// `sslkey` say, in the database URL of the manifest: a host serves over
/// verify-full, every session it opens (pool and listener) is encrypted,
/// and each mode checks what it promises and no more; what a mode refuses
/// is refused at start (exit 1) naming the problem, as is a wrong password,
/// without showing it.
#[test]
fn tls_to_postgres_checks_what_its_sslmode_asks_and_a_refusal_names_the_problem() {
    let ca = Ca::new("workhost test CA");
    let stranger = Ca::new("another CA");
    // The server's certificate names `localhost` only, not 127.0.0.1.
    let (server_cert, server_key) = ca.issue("localhost", &["localhost"]);
    let (client_cert, client_key) = ca.issue("certuser", &[]);
    let server = pg::OwnServer::start_tls(&pg::ServerTls {
        cert_pem: server_cert,
        key_pem: server_key,
        client_ca_pem: ca.0.pem(),
        hba: [
            "hostssl certdb all 127.0.0.1/32 cert",
            "hostssl pwdb all 127.0.0.1/32 scram-sha-256",
            "hostssl all all 127.0.0.1/32 trust",
            "host all all 127.0.0.1/32 reject",
        ]
        .join("\n"),
    });
    server.admin_sql("CREATE DATABASE tlsdb");
    server.admin_sql("CREATE ROLE certuser LOGIN");
    server.admin_sql("CREATE DATABASE certdb OWNER certuser");
    server.admin_sql("CREATE ROLE pwuser LOGIN PASSWORD 'right-secret'");
    server.admin_sql("CREATE DATABASE pwdb OWNER pwuser");
    let root = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = root.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let ca_pem = file("ca.pem", &ca.0.pem());
    let stranger_pem = file("stranger.pem", &stranger.0.pem());
    let client_pem = file("client.pem", &client_cert);
    let client_key = file("client.key", &client_key);
    let port = server.port();
    let url = |user: &str, host: &str, db: &str, query: &str| format!("postgres://{user}@{host}:{port}/{db}?{query}");

    // verify-full by the name the certificate gives: a host serves and
    // runs a task, and every session of the database is encrypted.
    let full = url(
        "workhost",
        "localhost",
        "tlsdb",
        &format!("sslmode=verify-full&sslrootcert={ca_pem}"),
    );
    let m = host_dir(root.path(), "served", &full);
    let _host = Daemon::start(&m);
    wait_hosts(&m, 1);
    let id = ok(&m, &["enqueue", "echo", "--task", "over-tls"]);
    wait_for(&m, &id, Duration::from_secs(30), |t| t["state"] == "succeeded");
    let sessions = server.admin_query(
        "SELECT s.ssl::text FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.datname = 'tlsdb' AND a.backend_type = 'client backend'",
    );
    assert!(
        sessions.len() >= 2,
        "the pool and the listener are connected: {sessions:?}"
    );
    assert!(
        sessions.iter().all(|row| row[0].as_deref() == Some("true")),
        "every session is encrypted: {sessions:?}"
    );

    let start = |name: &str, url: &str| {
        let m = host_dir(root.path(), name, url);
        wh(&m, &["hosts", "--json"])
    };
    let accepted = [
        (
            "verify-ca checks the chain, not the name",
            url(
                "workhost",
                "127.0.0.1",
                "tlsdb",
                &format!("sslmode=verify-ca&sslrootcert={ca_pem}"),
            ),
        ),
        (
            "require takes the certificate as it is",
            url("workhost", "127.0.0.1", "tlsdb", "sslmode=require"),
        ),
        (
            "the default, prefer, negotiates TLS",
            url("workhost", "127.0.0.1", "tlsdb", ""),
        ),
        (
            "a key=value string",
            format!("host=localhost port={port} user=workhost dbname=tlsdb sslmode=verify-full sslrootcert='{ca_pem}'"),
        ),
        (
            "hostaddr alone: the address is the name, as libpq",
            format!("hostaddr=127.0.0.1 port={port} user=workhost dbname=tlsdb"),
        ),
        (
            "a unix socket never uses TLS (as libpq), whatever the mode",
            format!("{}&sslmode=require", server.database("sockdb")),
        ),
        (
            "a password (SCRAM inside TLS)",
            url(
                "pwuser:right-secret",
                "localhost",
                "pwdb",
                &format!("sslmode=verify-full&sslrootcert={ca_pem}"),
            ),
        ),
        (
            "a client certificate",
            url(
                "certuser",
                "localhost",
                "certdb",
                &format!("sslmode=verify-full&sslrootcert={ca_pem}&sslcert={client_pem}&sslkey={client_key}"),
            ),
        ),
    ];
    for (i, (what, url)) in accepted.iter().enumerate() {
        let run = start(&format!("accepted-{i}"), url);
        assert_eq!(run.code, 0, "{what} ({url}): {run:?}");
    }
    let refused = [
        (
            "the server refuses a session without TLS",
            url("workhost", "127.0.0.1", "tlsdb", "sslmode=disable"),
            "no encryption",
        ),
        (
            "verify-full refuses a certificate of another CA",
            url(
                "workhost",
                "localhost",
                "tlsdb",
                &format!("sslmode=verify-full&sslrootcert={stranger_pem}"),
            ),
            "UnknownIssuer",
        ),
        (
            "verify-ca refuses a certificate of another CA",
            url(
                "workhost",
                "127.0.0.1",
                "tlsdb",
                &format!("sslmode=verify-ca&sslrootcert={stranger_pem}"),
            ),
            "UnknownIssuer",
        ),
        (
            "require with a root file checks the chain against it (as libpq)",
            url(
                "workhost",
                "127.0.0.1",
                "tlsdb",
                &format!("sslmode=require&sslrootcert={stranger_pem}"),
            ),
            "UnknownIssuer",
        ),
        (
            "a client certificate without its key",
            url(
                "certuser",
                "localhost",
                "certdb",
                &format!("sslmode=verify-full&sslrootcert={ca_pem}&sslcert={client_pem}"),
            ),
            "without sslkey",
        ),
        (
            "verify-full refuses a host name the certificate does not give",
            url(
                "workhost",
                "127.0.0.1",
                "tlsdb",
                &format!("sslmode=verify-full&sslrootcert={ca_pem}"),
            ),
            "not valid for name",
        ),
        (
            "a root file that is not there",
            url(
                "workhost",
                "localhost",
                "tlsdb",
                "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            ),
            "sslrootcert",
        ),
        (
            "a mode libpq does not have",
            url("workhost", "localhost", "tlsdb", "sslmode=verify"),
            "sslmode \"verify\"",
        ),
        (
            "a wrong password",
            url(
                "pwuser:wrong-secret",
                "localhost",
                "pwdb",
                &format!("sslmode=verify-full&sslrootcert={ca_pem}"),
            ),
            "password authentication failed for user \"pwuser\"",
        ),
        (
            "the server asks for a client certificate",
            url(
                "certuser",
                "localhost",
                "certdb",
                &format!("sslmode=verify-full&sslrootcert={ca_pem}"),
            ),
            "certificate",
        ),
    ];
    for (i, (what, url, needle)) in refused.iter().enumerate() {
        let run = start(&format!("refused-{i}"), url);
        assert_eq!(run.code, 1, "{what} ({url}): {run:?}");
        assert!(
            run.stderr.contains(needle) && run.stderr.contains("Nothing was changed"),
            "{what}: the message names {needle:?}: {}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("secret"),
            "{what}: the message shows no password: {}",
            run.stderr
        );
    }
}
