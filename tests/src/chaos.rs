//! The crash harness: a mixed workload (one-off, periodic, chains, retries,
//! unique work) in a child `workhost serve`, killed with SIGKILL at random
//! moments and restarted, then checked (see [`run`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Daemon, guests, workhost_bin, write_manifest};

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Seeds every random choice: the same seed makes the same workload and
    /// kill delays.
    pub seed: u64,
    /// How many times the daemon is killed with SIGKILL and restarted.
    pub kills: usize,
    /// One-off tasks enqueued between two kills.
    pub tasks_per_round: usize,
    /// The PostgreSQL database of the store (`database` in the manifest,
    /// with a 2 s host lease); `None`: the embedded SQLite store.
    pub database: Option<String>,
}

/// What happened; [`run`] has already checked every promise.
#[derive(Debug, Clone, Default)]
pub struct ChaosReport {
    /// Tasks accepted (their `enqueue` printed an id).
    pub accepted: usize,
    /// One-off tasks that succeeded (all of them but the pending unique one,
    /// or `run` panics).
    pub succeeded: usize,
    /// Kills.
    pub kills: usize,
    /// Attempts the host recorded as cut off by a kill: the at-least-once
    /// repeats.
    pub runs_cut_by_kills: usize,
    /// Runs the guest counted beyond the attempts that finished: runs cut
    /// off by a kill after they had started work, done again (at-least-once).
    pub repeated_runs: usize,
    /// Runs of the periodic task.
    pub periodic_runs: i64,
    /// Wall-clock time of the whole harness.
    pub elapsed: Duration,
}

/// xorshift64*: enough randomness for choosing delays, and reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Harness {
    manifest: PathBuf,
}

impl Harness {
    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(workhost_bin())
            .args(args)
            .arg("--config")
            .arg(&self.manifest)
            .env("XDG_CACHE_HOME", self.manifest.parent().unwrap())
            .output()
            .expect("running workhost")
    }

    /// Enqueues; returns the id, or panics (an enqueue refused here is a bug).
    fn enqueue(&self, args: &[&str]) -> String {
        let mut all = vec!["enqueue", "ledger"];
        all.extend(args);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "enqueue {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn inspect(&self, id: &str) -> serde_json::Value {
        let out = self.cli(&["inspect", id, "--json"]);
        assert!(
            out.status.success(),
            "inspect {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("inspect prints JSON")
    }
}

/// One one-off task the harness enqueued, and what it expects of it.
struct Expect {
    id: String,
    retries: i64,
    parent: Option<String>,
}

/// Runs the harness and checks, at the end:
/// - every accepted one-off task succeeded, with no attempt after its
///   success (no succeeded task ran again);
/// - every attempt that is neither the success nor an asked-for retry was
///   cut off by a kill (repeats happen only for runs in flight at a kill);
/// - the guest's own count of runs per task is at most the attempts the
///   host recorded;
/// - a chained task started only after its parent finished;
/// - a unique name enqueued with `keep` before and after kills is one
///   pending task;
/// - the periodic task is still scheduled and ran;
/// - SQLite's `integrity_check` passes (on the SQLite store).
///
/// Panics naming the first broken promise.
pub fn run(config: ChaosConfig) -> ChaosReport {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let manifest = write_manifest(dir.path());
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    if let Some(url) = &config.database {
        text = format!("database = {url:?}\nhost_lease = \"2s\"\n{text}");
    }
    text.push_str(&format!(
        "\n[handlers.ledger]\ncomponent = {:?}\nconcurrency = 4\n",
        guests::LEDGER
    ));
    std::fs::write(&manifest, text).unwrap();
    let h = Harness { manifest };
    let mut rng = Rng(config.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut report = ChaosReport::default();
    let mut expects: Vec<Expect> = Vec::new();

    let mut daemon = Daemon::start(&h.manifest);
    let periodic = h.enqueue(&["--task", "tick", "--every", "1s", "--unique", "tick"]);
    // Pending for the whole run, so `keep` must keep returning it.
    let only = [
        "--task", "only", "--unique", "only", "--policy", "keep", "--delay", "1h",
    ];
    let unique = h.enqueue(&only);
    report.accepted += 2;

    for round in 0..config.kills {
        for i in 0..config.tasks_per_round {
            let sleep = rng.below(200).to_string();
            let kind = rng.below(10);
            let input = format!("sleep_ms={sleep}");
            let (retries, parent) = if kind == 0 {
                (1, None)
            } else if kind <= 2 && !expects.is_empty() {
                let p = expects[rng.below(expects.len() as u64) as usize].id.clone();
                (0, Some(p))
            } else {
                (0, None)
            };
            let name = format!("r{round}-{i}");
            let retries_arg = format!("retries={retries}");
            let mut args = vec!["--task", &name, "--input", &input, "--input", &retries_arg];
            if retries > 0 {
                args.extend(["--backoff", "linear", "--backoff-delay", "10s"]);
            }
            if let Some(p) = &parent {
                args.extend(["--after", p]);
            }
            let id = h.enqueue(&args);
            report.accepted += 1;
            expects.push(Expect { id, retries, parent });
        }
        // The same unique name again, while work is in flight.
        assert_eq!(
            h.enqueue(&only),
            unique,
            "keep returned another task for a pending unique name"
        );
        std::thread::sleep(Duration::from_millis(rng.below(600)));
        daemon.kill9();
        report.kills += 1;
        daemon = Daemon::start(&h.manifest);
    }

    // Everything accepted must finish.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut finals: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for e in &expects {
        loop {
            let t = h.inspect(&e.id);
            if t["state"] == "succeeded" {
                finals.insert(e.id.clone(), t);
                break;
            }
            assert!(
                !matches!(t["state"].as_str(), Some("failed" | "cancelled")),
                "task {} ended {}: {t}",
                e.id,
                t["state"]
            );
            assert!(Instant::now() < deadline, "task {} never finished: {t}", e.id);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let tick = h.inspect(&periodic);
    drop(daemon);

    for e in &expects {
        let t = &finals[&e.id];
        let attempts = t["attempts"].as_array().expect("attempts");
        let last = attempts.last().expect("a succeeded task has attempts");
        assert_eq!(
            last["outcome"], "success",
            "task {}: the last attempt is the success: {t}",
            e.id
        );
        let successes = attempts.iter().filter(|a| a["outcome"] == "success").count();
        assert_eq!(successes, 1, "task {} succeeded more than once: {t}", e.id);
        // Every attempt before the success either asked for a retry (on an
        // attempt the input told it to) or was cut off by a kill.
        let mut cut = 0;
        for a in &attempts[..attempts.len() - 1] {
            if a["outcome"] == "retry" {
                assert!(
                    a["attempt"].as_i64().unwrap_or(0) <= e.retries,
                    "task {}: a retry nobody asked for: {t}",
                    e.id
                );
            } else {
                assert_eq!(
                    a["error"], "the host died during this run",
                    "task {}: an attempt that was neither the success nor a retry, and not cut by a kill: {t}",
                    e.id
                );
                cut += 1;
            }
        }
        assert!(
            last["attempt"].as_i64().unwrap_or(0) > e.retries,
            "task {}: succeeded on an attempt that should have retried: {t}",
            e.id
        );
        report.runs_cut_by_kills += cut;
        // The guest counts every run that got as far as its first host call:
        // each attempt that finished, plus any a kill cut off after that.
        let runs = t["output"]["runs"].as_i64().expect("ledger's output has runs") as usize;
        let finished = attempts.len() - cut;
        assert!(
            (finished..=attempts.len()).contains(&runs),
            "task {}: the guest ran {runs} times; the host recorded {} attempts, {cut} cut by kills: {t}",
            e.id,
            attempts.len()
        );
        report.repeated_runs += runs - finished;
        if let Some(p) = &e.parent {
            let parent_end = ms(&finals[p]["finished_at"]);
            let child_start = ms(&attempts[0]["started_at"]);
            assert!(
                child_start >= parent_end,
                "task {} started at {child_start} before its parent {p} finished at {parent_end}",
                e.id
            );
        }
        report.succeeded += 1;
    }

    assert!(
        matches!(tick["state"].as_str(), Some("enqueued" | "running")),
        "the periodic task is no longer scheduled: {tick}"
    );
    report.periodic_runs = tick["attempts"].as_array().map_or(0, |a| a.len() as i64);
    assert!(report.periodic_runs >= 1, "the periodic task never ran: {tick}");

    let listed = h.cli(&["list", "--unique", "only", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "unique name `only`: {listed}");
    assert_eq!(listed[0]["state"], "enqueued", "unique name `only`: {listed}");

    // PostgreSQL checks its own pages; SQLite's file gets an integrity check.
    if config.database.is_none() {
        integrity_check(&dir.path().join("data").join("workhost.db"));
    }
    report.elapsed = started.elapsed();
    report
}

/// A time as `inspect --json` prints it (RFC 3339 text, or ms since the
/// epoch), in ms since the epoch.
fn ms(v: &serde_json::Value) -> i64 {
    v.as_i64()
        .or_else(|| v.as_str().map(crate::parse_rfc3339_ms))
        .unwrap_or_else(|| panic!("{v} is not a time"))
}

/// Runs SQLite's `PRAGMA integrity_check` on the store (after the last
/// daemon is gone).
fn integrity_check(db: &Path) {
    let conn = rusqlite::Connection::open(db).expect("opening the store");
    let result: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("running integrity_check");
    assert_eq!(result, "ok", "integrity_check of {}", db.display());
}
