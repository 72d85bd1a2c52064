//! What a host has done, counted as it happens: the Prometheus metrics of
//! `/metrics` ([`Metrics::render`]) and the per-minute activity behind the
//! dashboard's charts ([`Metrics::activity`]).
//!
//! Counters and histograms are this process's own, as Prometheus expects
//! (a deployment of several hosts sums them): `enqueued` counts the
//! requests this process's [`Queue`](crate::Queue) accepted, `started` and
//! `finished` the runs this host made. What the whole queue holds comes
//! from the store at each scrape ([`Gauges`]), so work enqueued by another
//! process shows there. Labels are bounded: handler, kind, state, outcome
//! and stop reason, never a task id.
//!
//! One uncontended mutex per event; the render and the activity read take
//! it once.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::budget::TaskKind;
use crate::outcome::RunOutcome;
use crate::work::{Millis, TaskState};

/// Minutes of activity kept ([`Metrics::activity`]).
pub const ACTIVITY_MINUTES: usize = 60;

/// Bucket bounds of run durations and due-to-start latency, seconds.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];
/// Bucket bounds of fuel consumed per run.
const FUEL: &[f64] = &[1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11];
/// Bucket bounds of a run's peak linear memory, bytes (64 KiB pages).
const BYTES: &[f64] = &[
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    4294967296.0,
];

/// A Prometheus histogram with fixed bounds (cumulative when rendered).
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative; the last is +Inf.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    fn observe(&mut self, v: f64) {
        let i = self.bounds.iter().position(|b| v <= *b).unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
    }

    fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The upper bound of the bucket holding quantile `q` (0..1).
    fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((n as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(self.bounds.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        None
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c;
            let le = match self.bounds.get(i) {
                Some(b) => format!("{b}"),
                None => "+Inf".into(),
            };
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// One minute of this host's runs (see [`Metrics::activity`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MinuteActivity {
    /// The minute's start, ms since the epoch.
    pub minute: Millis,
    /// Runs that succeeded (a periodic task's period included).
    pub succeeded: u64,
    /// Runs after which the task FAILED.
    pub failed: u64,
    /// Runs after which the task waits for another attempt.
    pub retried: u64,
    /// Runs started in the minute.
    pub started: u64,
    /// Median time from due to start of the runs started, ms (the upper
    /// bound of its histogram bucket); `None` if none started.
    pub latency_p50_ms: Option<f64>,
    /// 95th percentile of the same.
    pub latency_p95_ms: Option<f64>,
}

#[derive(Debug)]
struct Minute {
    start: Millis,
    succeeded: u64,
    failed: u64,
    retried: u64,
    latency: Histogram,
}

/// A counter per label set under one handler: the handler's name is the
/// outer key, copied once at its first event, so counting an event
/// allocates nothing.
type PerHandler<K> = BTreeMap<String, BTreeMap<K, u64>>;

#[derive(Debug, Default)]
struct State {
    /// By handler, then kind.
    enqueued: PerHandler<&'static str>,
    /// By handler, then kind.
    started: PerHandler<&'static str>,
    /// By handler, then (kind, outcome, stop reason).
    finished: PerHandler<(&'static str, &'static str, &'static str)>,
    run_seconds: BTreeMap<String, Histogram>,
    due_to_start: BTreeMap<String, Histogram>,
    fuel: BTreeMap<String, Histogram>,
    peak_memory: BTreeMap<String, Histogram>,
    /// Store writes refused, by operation (`claim`, `finish`).
    refused: BTreeMap<&'static str, u64>,
    minutes: VecDeque<Minute>,
}

impl State {
    fn minute(&mut self, at: Millis) -> &mut Minute {
        let start = at - at.rem_euclid(60_000);
        if self.minutes.back().is_none_or(|m| m.start < start) {
            self.minutes.push_back(Minute {
                start,
                succeeded: 0,
                failed: 0,
                retried: 0,
                latency: Histogram::new(SECONDS),
            });
            while self.minutes.len() > ACTIVITY_MINUTES {
                self.minutes.pop_front();
            }
        }
        // A clock that went back counts in the latest minute.
        self.minutes.back_mut().expect("just pushed")
    }
}

/// The queue as the store holds it, and this host's limits, read at each
/// scrape: the gauges of [`Metrics::render`].
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Tasks per handler and state.
    pub tasks: BTreeMap<String, HashMap<TaskState, usize>>,
    /// Runs going on now in this host, per handler.
    pub running: BTreeMap<String, usize>,
    /// Concurrency limit per handler.
    pub concurrency: BTreeMap<String, usize>,
    /// The host's limit over every handler.
    pub max_concurrency: usize,
    /// Whether the whole queue is paused.
    pub paused: bool,
    /// Handlers paused on their own.
    pub paused_handlers: Vec<String>,
}

/// A host's counters and histograms (see the module's documentation).
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

/// The `outcome` and `stop_reason` labels of a run: the outcome's own
/// names ([`RunOutcome::kind`]), as attempt records use them.
fn outcome_label(outcome: &RunOutcome) -> (&'static str, &'static str) {
    let reason = match &outcome.result {
        crate::outcome::RunResult::Stopped(reason) => reason.as_str(),
        _ => "",
    };
    (outcome.kind(), reason)
}

/// Observes `v` in `handler`'s histogram, made with `bounds` at its first
/// observation; the handler's name is copied only then, not per run.
fn observe(by_handler: &mut BTreeMap<String, Histogram>, handler: &str, bounds: &'static [f64], v: f64) {
    match by_handler.get_mut(handler) {
        Some(h) => h.observe(v),
        None => {
            let mut h = Histogram::new(bounds);
            h.observe(v);
            by_handler.insert(handler.to_string(), h);
        }
    }
}

/// Counts one event of `handler` with the labels `key`; the handler's name
/// is copied only at its first event.
fn count<K: Ord>(counters: &mut PerHandler<K>, handler: &str, key: K) {
    if !counters.contains_key(handler) {
        counters.insert(handler.to_string(), BTreeMap::new());
    }
    if let Some(by_key) = counters.get_mut(handler) {
        *by_key.entry(key).or_default() += 1;
    }
}

/// Every counter of `counters`: handler, labels, count.
fn each<K>(counters: &PerHandler<K>) -> impl Iterator<Item = (&String, &K, &u64)> {
    counters
        .iter()
        .flat_map(|(h, by_key)| by_key.iter().map(move |(k, n)| (h, k, n)))
}

/// Escapes a label value (handler names are restricted, but be exact).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request was accepted as a new task.
    pub(crate) fn enqueued(&self, handler: &str, kind: TaskKind) {
        count(&mut self.lock().enqueued, handler, kind.as_str());
    }

    /// A run started `late` after its task was due.
    pub(crate) fn started(&self, handler: &str, kind: TaskKind, late: Duration, at: Millis) {
        let mut s = self.lock();
        count(&mut s.started, handler, kind.as_str());
        let seconds = late.as_secs_f64();
        observe(&mut s.due_to_start, handler, SECONDS, seconds);
        s.minute(at).latency.observe(seconds);
    }

    /// A run ended with `outcome` and its task went to `state`
    /// (`next_period`: periodic work moved on to its next period).
    pub(crate) fn finished(
        &self,
        handler: &str,
        kind: TaskKind,
        outcome: &RunOutcome,
        state: TaskState,
        next_period: bool,
        at: Millis,
    ) {
        let (result, reason) = outcome_label(outcome);
        let mut s = self.lock();
        count(&mut s.finished, handler, (kind.as_str(), result, reason));
        observe(&mut s.run_seconds, handler, SECONDS, outcome.duration.as_secs_f64());
        if let Some(fuel) = outcome.fuel_consumed {
            observe(&mut s.fuel, handler, FUEL, fuel as f64);
        }
        observe(&mut s.peak_memory, handler, BYTES, outcome.peak_memory_bytes as f64);
        let m = s.minute(at);
        match state {
            TaskState::Succeeded => m.succeeded += 1,
            TaskState::Failed => m.failed += 1,
            TaskState::Enqueued if next_period && result == "success" => m.succeeded += 1,
            TaskState::Enqueued if !next_period => m.retried += 1,
            _ => {}
        }
    }

    /// The store refused a write of `op` (`claim`, `finish`).
    pub(crate) fn refused(&self, op: &'static str) {
        *self.lock().refused.entry(op).or_default() += 1;
    }

    /// The last [`ACTIVITY_MINUTES`] minutes up to `now`, oldest first,
    /// one entry per minute (minutes without runs have zeros).
    pub fn activity(&self, now: Millis) -> Vec<MinuteActivity> {
        let s = self.lock();
        let last = now - now.rem_euclid(60_000);
        (0..ACTIVITY_MINUTES as i64)
            .rev()
            .map(|ago| {
                let minute = last - ago * 60_000;
                match s.minutes.iter().find(|m| m.start == minute) {
                    Some(m) => MinuteActivity {
                        minute,
                        succeeded: m.succeeded,
                        failed: m.failed,
                        retried: m.retried,
                        started: m.latency.count(),
                        latency_p50_ms: m.latency.quantile(0.5).map(|s| s * 1000.0),
                        latency_p95_ms: m.latency.quantile(0.95).map(|s| s * 1000.0),
                    },
                    None => MinuteActivity {
                        minute,
                        succeeded: 0,
                        failed: 0,
                        retried: 0,
                        started: 0,
                        latency_p50_ms: None,
                        latency_p95_ms: None,
                    },
                }
            })
            .collect()
    }

    /// The Prometheus text exposition (format 0.0.4) of these metrics and
    /// of `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(8192);
        let s = self.lock();
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            &mut out,
            "workhost_tasks_enqueued_total",
            "counter",
            "Tasks this process's queue accepted.",
        );
        for (h, k, n) in each(&s.enqueued) {
            let _ = writeln!(
                out,
                "workhost_tasks_enqueued_total{{handler=\"{}\",kind=\"{k}\"}} {n}",
                label(h)
            );
        }
        family(
            &mut out,
            "workhost_runs_started_total",
            "counter",
            "Runs this host started.",
        );
        for (h, k, n) in each(&s.started) {
            let _ = writeln!(
                out,
                "workhost_runs_started_total{{handler=\"{}\",kind=\"{k}\"}} {n}",
                label(h)
            );
        }
        family(
            &mut out,
            "workhost_runs_finished_total",
            "counter",
            "Runs this host finished, by outcome (success, retry, failed, stopped) and stop reason.",
        );
        for (h, (k, o, r), n) in each(&s.finished) {
            let _ = writeln!(
                out,
                "workhost_runs_finished_total{{handler=\"{}\",kind=\"{k}\",outcome=\"{o}\",stop_reason=\"{r}\"}} {n}",
                label(h)
            );
        }
        let histograms: [(&str, &str, &BTreeMap<String, Histogram>); 4] = [
            (
                "workhost_run_duration_seconds",
                "Wall-clock time of each run.",
                &s.run_seconds,
            ),
            (
                "workhost_due_to_start_seconds",
                "Time from a task being due to its run starting.",
                &s.due_to_start,
            ),
            (
                "workhost_run_fuel",
                "Fuel each run consumed (metered handlers).",
                &s.fuel,
            ),
            (
                "workhost_run_peak_memory_bytes",
                "Peak linear memory of each run.",
                &s.peak_memory,
            ),
        ];
        for (name, help, by_handler) in histograms {
            family(&mut out, name, "histogram", help);
            for (h, hist) in by_handler {
                hist.render(&mut out, name, &format!("handler=\"{}\"", label(h)));
            }
        }
        family(
            &mut out,
            "workhost_store_writes_refused_total",
            "counter",
            "Store writes this host had refused (and offered again), by operation.",
        );
        for op in ["claim", "finish"] {
            let n = s.refused.get(op).copied().unwrap_or(0);
            let _ = writeln!(out, "workhost_store_writes_refused_total{{op=\"{op}\"}} {n}");
        }
        drop(s);
        family(
            &mut out,
            "workhost_tasks",
            "gauge",
            "Tasks in the store, by handler and state.",
        );
        for (h, states) in &gauges.tasks {
            for st in TaskState::ALL {
                let n = states.get(st).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "workhost_tasks{{handler=\"{}\",state=\"{}\"}} {n}",
                    label(h),
                    st.as_str()
                );
            }
        }
        family(
            &mut out,
            "workhost_running",
            "gauge",
            "Runs going on in this host, by handler.",
        );
        for (h, n) in &gauges.running {
            let _ = writeln!(out, "workhost_running{{handler=\"{}\"}} {n}", label(h));
        }
        family(
            &mut out,
            "workhost_concurrency_limit",
            "gauge",
            "Most runs at once, per handler (and handler=\"\" for the whole host).",
        );
        let _ = writeln!(
            out,
            "workhost_concurrency_limit{{handler=\"\"}} {}",
            gauges.max_concurrency
        );
        for (h, n) in &gauges.concurrency {
            let _ = writeln!(out, "workhost_concurrency_limit{{handler=\"{}\"}} {n}", label(h));
        }
        family(
            &mut out,
            "workhost_paused",
            "gauge",
            "1 if paused: the whole queue (handler=\"\") or one handler.",
        );
        let _ = writeln!(out, "workhost_paused{{handler=\"\"}} {}", u8::from(gauges.paused));
        for h in gauges.concurrency.keys() {
            let p = gauges.paused_handlers.iter().any(|x| x == h);
            let _ = writeln!(out, "workhost_paused{{handler=\"{}\"}} {}", label(h), u8::from(p));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_quantiles_take_bucket_bounds() {
        let mut h = Histogram::new(SECONDS);
        for v in [0.0004, 0.003, 0.003, 2.0] {
            h.observe(v);
        }
        assert_eq!(h.count(), 4);
        assert_eq!(h.quantile(0.5), Some(0.005));
        assert_eq!(h.quantile(0.95), Some(2.5));
        let mut out = String::new();
        h.render(&mut out, "x", "handler=\"a\"");
        assert!(out.contains("x_bucket{handler=\"a\",le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{handler=\"a\",le=\"0.005\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{handler=\"a\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count{handler=\"a\"} 4\n"), "{out}");
    }

    #[test]
    fn activity_has_one_entry_per_minute_and_drops_old_minutes() {
        let m = Metrics::default();
        let t0 = 1_000 * 60_000;
        m.started("h", TaskKind::OneOff, Duration::from_millis(3), t0 + 5);
        m.started("h", TaskKind::OneOff, Duration::from_millis(3), t0 + 120_000);
        let a = m.activity(t0 + 120_000);
        assert_eq!(a.len(), ACTIVITY_MINUTES);
        assert_eq!(a.last().unwrap().minute, t0 + 120_000);
        assert_eq!(a.last().unwrap().started, 1);
        assert_eq!(a[ACTIVITY_MINUTES - 3].started, 1);
        assert_eq!(a[ACTIVITY_MINUTES - 3].latency_p50_ms, Some(5.0));
        assert_eq!(a[ACTIVITY_MINUTES - 2].started, 0);
        // Two hours on, both minutes are gone.
        let later = m.activity(t0 + 120 * 60_000);
        assert!(later.iter().all(|x| x.started == 0));
    }
}
