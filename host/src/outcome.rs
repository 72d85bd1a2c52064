//! What a run ends with: a [`RunOutcome`] value, decided once, that the
//! caller (the CLI, or the scheduler's retry policy) acts on.

use std::time::Duration;

use serde::Serialize;

use crate::data::Data;
use crate::runlog::LogLine;

/// Why a run was stopped from outside the guest. Stopped runs are retried
/// with backoff (WorkManager reschedules stopped work) until the task's
/// attempt limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum StopReason {
    /// The wall-clock budget ran out.
    Timeout,
    /// The fuel (instruction) budget ran out.
    FuelExhausted,
    /// The guest tried to grow its memory past the budget.
    MemoryExceeded,
    /// The guest overflowed the wasm stack limit.
    StackOverflow,
    /// Someone cancelled the task.
    Cancelled,
    /// A constraint the task requires stopped holding.
    ConstraintLost,
    /// The host shut down while the run was going on.
    HostShutdown,
    /// The host had no instance slot or memory for the run when it was to
    /// start (the pooling allocator's limit, or memory refused by the
    /// system). Retried like any stop, never a failure of the handler.
    HostBusy,
    /// The host's lease on a shared store ran out before it could renew it
    /// (the database was unreachable, or the host was frozen): another host
    /// may run the task again, so this host stops its own run. Retried
    /// like any stop.
    LeaseLost,
    /// Cron work whose fire was missed (no run started within
    /// [`crate::work::MISFIRE_GRACE`] of it) under catch-up `none`: the
    /// run was skipped, never started, and the task waits for its next
    /// fire.
    MissedFire,
}

impl StopReason {
    /// The reason's name as it appears in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Timeout => "timeout",
            StopReason::FuelExhausted => "fuel-exhausted",
            StopReason::MemoryExceeded => "memory-exceeded",
            StopReason::StackOverflow => "stack-overflow",
            StopReason::Cancelled => "cancelled",
            StopReason::ConstraintLost => "constraint-lost",
            StopReason::HostShutdown => "host-shutdown",
            StopReason::HostBusy => "host-busy",
            StopReason::LeaseLost => "lease-lost",
            StopReason::MissedFire => "missed-fire",
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunResult {
    /// `ok(success(output))`.
    Succeeded(Data),
    /// `ok(retry)`: run again after the backoff delay.
    Retry,
    /// A permanent failure: `err(message)`, a trap, or output the host
    /// refused.
    Failed(Failure),
    /// Stopped from outside before it ended.
    Stopped(StopReason),
}

/// A permanent failure and what caused it.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The handler returned `err(message)`.
    Error(String),
    /// The handler trapped (panic, unreachable, out-of-bounds access, ...).
    Trap(String),
    /// The handler returned output the host refused (over 10 KiB, bad key
    /// or float); the message names the problem.
    BadOutput(String),
}

/// Longest failure message kept, in bytes. A longer one is cut at a
/// character boundary and ends with a marker saying how many bytes were
/// cut, before it reaches the log, the store or `--json`.
pub const MAX_ERROR_BYTES: usize = 8 << 10;

impl Failure {
    /// The same failure with its message cut to [`MAX_ERROR_BYTES`].
    pub fn capped(self) -> Failure {
        match self {
            Failure::Error(m) => Failure::Error(cap_message(m)),
            Failure::Trap(m) => Failure::Trap(cap_message(m)),
            Failure::BadOutput(m) => Failure::BadOutput(cap_message(m)),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            Failure::Error(m) | Failure::Trap(m) | Failure::BadOutput(m) => m,
        }
    }
}

/// `m` cut to [`MAX_ERROR_BYTES`] (marker included), at a character
/// boundary.
fn cap_message(m: String) -> String {
    if m.len() <= MAX_ERROR_BYTES {
        return m;
    }
    // The marker is at most 64 bytes; keep the rest for the message.
    let mut keep = MAX_ERROR_BYTES - 64;
    while !m.is_char_boundary(keep) {
        keep -= 1;
    }
    let cut = m.len() - keep;
    let mut out = m;
    out.truncate(keep);
    out.push_str(&format!("… [error message cut: {cut} more bytes]"));
    out
}

/// Everything known about one finished run.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// How it ended.
    pub result: RunResult,
    /// Wall-clock time from the start of instantiation to the end.
    pub duration: Duration,
    /// Fuel consumed, when the run had a fuel budget. After a trap other
    /// than fuel exhaustion this is a lower bound.
    pub fuel_consumed: Option<u64>,
    /// The largest linear memory the guest reached, in bytes.
    pub peak_memory_bytes: u64,
    /// The run's log lines, capped.
    pub log: Vec<LogLine>,
    /// The component that ran (`None` when none did: the run was skipped
    /// or its handler was missing), shared with the handler.
    pub component: Option<std::sync::Arc<crate::executor::ComponentId>>,
}

impl RunOutcome {
    /// `success`, `retry`, `failed` or `stopped`.
    pub fn kind(&self) -> &'static str {
        match self.result {
            RunResult::Succeeded(_) => "success",
            RunResult::Retry => "retry",
            RunResult::Failed(_) => "failed",
            RunResult::Stopped(_) => "stopped",
        }
    }

    /// The stop reason in SPEC terms: a [`StopReason`], or `trap` for a
    /// trapped run.
    pub fn stop_reason(&self) -> Option<&'static str> {
        match &self.result {
            RunResult::Stopped(r) => Some(r.as_str()),
            RunResult::Failed(Failure::Trap(_)) => Some("trap"),
            _ => None,
        }
    }

    /// The output data of a successful run.
    pub fn output(&self) -> Option<&Data> {
        match &self.result {
            RunResult::Succeeded(d) => Some(d),
            _ => None,
        }
    }

    /// The error message of a failed run.
    pub fn error(&self) -> Option<&str> {
        match &self.result {
            RunResult::Failed(f) => Some(f.message()),
            _ => None,
        }
    }

    /// The CLI exit code: 0 success, 75 retry (EX_TEMPFAIL), 1 failed or
    /// stopped.
    pub fn exit_code(&self) -> i32 {
        match self.result {
            RunResult::Succeeded(_) => 0,
            RunResult::Retry => 75,
            RunResult::Failed(_) | RunResult::Stopped(_) => 1,
        }
    }

    /// The outcome as the JSON object `workhost exec --json` prints.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "outcome": self.kind(),
            "output": self.output(),
            "stop_reason": self.stop_reason(),
            "error": self.error(),
            "duration_ms": self.duration.as_secs_f64() * 1000.0,
            "fuel_consumed": self.fuel_consumed,
            "peak_memory_bytes": self.peak_memory_bytes,
            "log": self.log,
        })
    }
}
