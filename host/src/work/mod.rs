//! Work requests and task records: what is enqueued, the task states, the
//! unique-work and backoff policies, and the scheduling arithmetic (backoff
//! delays, periodic windows). Pure: no wasmtime, no SQL.

use std::time::Duration;

use serde::Serialize;

use crate::budget::TaskKind;
use crate::data::Data;
use crate::runlog::LogLine;

mod error;
mod json;
mod schedule;

pub use error::{StoreError, TaskAction, WorkError};
pub use schedule::{
    CatchUp, CronSchedule, DEFAULT_CATCH_UP_CAP, DEFAULT_PRIORITY, EXPEDITED_LEAD, HIGHEST_PRIORITY, HandlerLimits,
    LOWEST_PRIORITY, LateStart, MAX_CATCH_UP, MISFIRE_GRACE, OutOfQuotaPolicy, PRIORITY_STEP, Rate, claim_key,
};

/// A task's id: unique in its data directory, never reused.
pub type TaskId = i64;

/// Milliseconds since the Unix epoch: how the store and the clock speak of
/// time.
pub type Millis = i64;

/// `d` in milliseconds, saturating at [`Millis::MAX`] (never wrapping).
/// Every duration that reaches the store was bounded at enqueue (see
/// [`limits`]), so the saturation is a second line of defence.
pub fn millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

/// The upper bounds of every duration and count a [`WorkRequest`] carries,
/// checked at enqueue (and for the manifest's values, at load). A request
/// past one is refused with a message naming the field and the bound.
pub mod limits {
    use std::time::Duration;

    /// Longest initial delay, period, flex or backoff delay: 3,650 days
    /// (about ten years).
    pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);
    /// Longest per-task wall-clock budget: 24 hours.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
    /// Largest per-task fuel budget: 10^15 units (hours of busy CPU).
    pub const MAX_FUEL: u64 = 1_000_000_000_000_000;
    /// Largest per-task memory budget: 4 GiB, all a 32-bit wasm memory can
    /// address.
    pub const MAX_MEMORY_BYTES: u64 = 4 << 30;
    /// Most attempts a task may be given.
    pub const MAX_ATTEMPTS: u32 = 10_000;
    /// Most tags on one task.
    pub const MAX_TAGS: usize = 64;
    /// Most tasks one task may run after.
    pub const MAX_AFTER: usize = 100;
    /// Longest task name, unique name or tag, in bytes.
    pub const MAX_NAME_BYTES: usize = 256;
}

/// The states of a task (see docs/task-states.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for its time, its constraints or a free slot.
    Enqueued,
    /// A run is going on.
    Running,
    /// Done (one-off and processing work only).
    Succeeded,
    /// Failed permanently (one-off and processing work only).
    Failed,
    /// Waiting for the work it depends on.
    Blocked,
    /// Cancelled; the only way periodic work ends.
    Cancelled,
}

crate::names::named_enum!(TaskState {
    Enqueued => "enqueued",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Blocked => "blocked",
    Cancelled => "cancelled",
});

impl TaskState {
    /// Whether the task can never run again.
    pub fn is_finished(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled)
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do when work with the same unique name is already pending or
/// running. One-off work takes `Keep` (default), `Replace`, `Append` or
/// `AppendOrReplace`; periodic work `Keep`, `Update` (default) or
/// `CancelAndReenqueue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExistingWorkPolicy {
    /// Keep the existing work; the new request is dropped and the existing
    /// id returned.
    Keep,
    /// Cancel the existing work (and its dependents) and enqueue the new.
    Replace,
    /// Enqueue the new work after the existing work, as its dependent; if
    /// the existing work fails or is cancelled, so does the new.
    Append,
    /// Like `Append`, but if the existing work already failed or was
    /// cancelled, start a fresh chain instead.
    AppendOrReplace,
    /// Periodic: change the existing work's spec in place, keeping its id,
    /// schedule and any run in progress.
    Update,
    /// Periodic: cancel the existing work and enqueue the new.
    CancelAndReenqueue,
}

crate::names::named_enum!(ExistingWorkPolicy {
    Keep => "keep",
    Replace => "replace",
    Append => "append",
    AppendOrReplace => "append-or-replace",
    Update => "update",
    CancelAndReenqueue => "cancel-and-reenqueue",
});

impl ExistingWorkPolicy {
    fn fits(self, periodic: bool) -> bool {
        use ExistingWorkPolicy::*;
        if periodic {
            matches!(self, Keep | Update | CancelAndReenqueue)
        } else {
            matches!(self, Keep | Replace | Append | AppendOrReplace)
        }
    }
}

/// How the delay before a retry grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackoffPolicy {
    /// `delay × 2^(attempt−1)` (default).
    Exponential,
    /// `delay × attempt`.
    Linear,
}

crate::names::named_enum!(BackoffPolicy {
    Exponential => "exponential",
    Linear => "linear",
});

/// Shortest backoff delay (WorkManager's MIN_BACKOFF_MILLIS).
pub const MIN_BACKOFF: Duration = Duration::from_secs(10);
/// Longest backoff delay, and the cap on any computed backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 3600);
/// Default backoff delay.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(30);
/// Default attempt limit.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 20;
/// Default period of periodic work.
pub const DEFAULT_FREQUENCY: Duration = Duration::from_secs(15 * 60);
/// Default floor of a period (an operator may lower it).
pub const MIN_FREQUENCY: Duration = Duration::from_secs(15 * 60);
/// Default floor of a flex window (an operator may lower it).
pub const MIN_FLEX: Duration = Duration::from_secs(5 * 60);

/// The backoff before retry number `attempt` (the attempt that just ended,
/// counting from 1): the delay clamped to [10 s, 5 h], grown by the policy,
/// capped at 5 h.
pub fn backoff_delay(policy: BackoffPolicy, delay: Duration, attempt: u32) -> Duration {
    let base = delay.clamp(MIN_BACKOFF, MAX_BACKOFF);
    let attempt = attempt.max(1);
    let grown = match policy {
        BackoffPolicy::Exponential => base.checked_mul(1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX)),
        BackoffPolicy::Linear => base.checked_mul(attempt),
    };
    grown.unwrap_or(MAX_BACKOFF).min(MAX_BACKOFF)
}

/// Periodic scheduling: a run in the last `flex` of every `frequency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Periodic {
    /// The period.
    pub frequency: Duration,
    /// The window at the end of each period in which the run happens
    /// (defaults to the whole period).
    pub flex: Duration,
}

impl Periodic {
    /// When the run of the period starting at `period_start` is due.
    pub fn due_in_period(&self, period_start: Millis) -> Millis {
        period_start.saturating_add(millis(self.frequency.saturating_sub(self.flex)))
    }
}

/// Floors for periodic work; a host setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodicFloor {
    /// Shortest period (default 15 min).
    pub min_frequency: Duration,
    /// Shortest flex (default 5 min).
    pub min_flex: Duration,
}

impl Default for PeriodicFloor {
    fn default() -> Self {
        PeriodicFloor {
            min_frequency: MIN_FREQUENCY,
            min_flex: MIN_FLEX,
        }
    }
}

impl PeriodicFloor {
    /// Clamps a period and flex to the floors (and flex to the period),
    /// returning a warning for each change, as WorkManager does.
    ///
    /// A flex equal to the period means the whole period (WorkManager's
    /// default): it follows the clamped period and is never warned about,
    /// so a warning names only values the user gave.
    pub fn clamp(&self, mut p: Periodic) -> (Periodic, Vec<String>) {
        let mut warnings = Vec::new();
        let whole_period = p.flex >= p.frequency;
        if p.frequency < self.min_frequency {
            warnings.push(format!(
                "frequency {} is below the minimum {}; using {}",
                crate::units::format_duration(p.frequency),
                crate::units::format_duration(self.min_frequency),
                crate::units::format_duration(self.min_frequency)
            ));
            p.frequency = self.min_frequency;
        }
        if whole_period {
            p.flex = p.frequency;
        } else if p.flex < self.min_flex {
            warnings.push(format!(
                "flex {} is below the minimum {}; using {}",
                crate::units::format_duration(p.flex),
                crate::units::format_duration(self.min_flex),
                crate::units::format_duration(self.min_flex)
            ));
            p.flex = self.min_flex;
        }
        if p.flex > p.frequency {
            p.flex = p.frequency;
        }
        (p, warnings)
    }
}

/// Per-task budget overrides; unset fields take the handler's budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BudgetOverride {
    /// Wall-clock budget.
    pub timeout: Option<Duration>,
    /// Fuel budget.
    pub fuel: Option<u64>,
    /// Memory budget in bytes.
    pub max_memory_bytes: Option<u64>,
}

/// A request to enqueue work.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkRequest {
    /// The handler (a name from the manifest or `Host::register`).
    pub handler: String,
    /// The task name passed to `execute-task`.
    pub task: String,
    /// One-off, periodic or processing. Periodic work needs `periodic`.
    pub kind: TaskKind,
    /// Input data (validated at enqueue).
    pub input: Data,
    /// Wait this long before the first run (one-off and processing).
    pub initial_delay: Duration,
    /// The schedule of periodic work.
    pub periodic: Option<Periodic>,
    /// A unique name and what to do when it is taken.
    pub unique: Option<(String, ExistingWorkPolicy)>,
    /// Tags.
    pub tags: Vec<String>,
    /// Work that must succeed first; its output is merged into this input.
    pub after: Vec<TaskId>,
    /// Backoff policy.
    pub backoff: BackoffPolicy,
    /// Backoff delay (clamped to [10 s, 5 h]).
    pub backoff_delay: Duration,
    /// Attempts before the task fails (one-off) or skips to its next period
    /// (periodic).
    pub max_attempts: u32,
    /// Budget overrides within the handler's.
    pub budget: BudgetOverride,
    /// What must hold before (and while) it runs.
    pub constraints: crate::device::Constraints,
    /// Priority within its handler, [`HIGHEST_PRIORITY`] (0) to
    /// [`LOWEST_PRIORITY`] (9); default [`DEFAULT_PRIORITY`] (5). See
    /// [`PRIORITY_STEP`] for the order it gives.
    pub priority: u8,
    /// Expedited work (WorkManager's `setExpedited`): taken before any
    /// normal work of its handler and not held by `device_idle`, within the
    /// handler's expedited quota; the policy says what happens over it.
    pub expedited: Option<OutOfQuotaPolicy>,
    /// The exact time of the first run, ms since the epoch, instead of
    /// `initial_delay` (one-off and processing work); a time already past
    /// runs at once, with a warning.
    pub run_at: Option<Millis>,
    /// A cron schedule: periodic work (kind `Periodic`) that runs at the
    /// expression's fire times instead of every `periodic.frequency`.
    pub cron: Option<CronSchedule>,
    /// Pin every run to one version of the handler's component: its
    /// SHA-256 (hex), or a prefix of at least 8 digits that
    /// [`Queue::enqueue`](crate::Queue::enqueue) resolves among the
    /// retained components (docs/versions.md). Also written
    /// `handler@digest-prefix` in [`Self::handler`].
    pub pin: Option<String>,
}

impl WorkRequest {
    /// Periodic work on a cron schedule (checked by [`CronSchedule::new`]).
    pub fn cron(handler: impl Into<String>, task: impl Into<String>, schedule: CronSchedule) -> WorkRequest {
        WorkRequest {
            kind: TaskKind::Periodic,
            cron: Some(schedule),
            ..WorkRequest::one_off(handler, task)
        }
    }

    /// One-off work with defaults.
    pub fn one_off(handler: impl Into<String>, task: impl Into<String>) -> WorkRequest {
        WorkRequest {
            handler: handler.into(),
            task: task.into(),
            kind: TaskKind::OneOff,
            input: Data::new(),
            initial_delay: Duration::ZERO,
            periodic: None,
            unique: None,
            tags: Vec::new(),
            after: Vec::new(),
            backoff: BackoffPolicy::Exponential,
            backoff_delay: DEFAULT_BACKOFF,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            budget: BudgetOverride::default(),
            constraints: crate::device::Constraints::default(),
            priority: DEFAULT_PRIORITY,
            expedited: None,
            run_at: None,
            cron: None,
            pin: None,
        }
    }

    /// Periodic work every `frequency` (flex = the whole period).
    pub fn periodic(handler: impl Into<String>, task: impl Into<String>, frequency: Duration) -> WorkRequest {
        WorkRequest {
            kind: TaskKind::Periodic,
            periodic: Some(Periodic {
                frequency,
                flex: frequency,
            }),
            unique: None,
            ..WorkRequest::one_off(handler, task)
        }
    }

    /// Long processing work (10 min default budget).
    pub fn processing(handler: impl Into<String>, task: impl Into<String>) -> WorkRequest {
        WorkRequest {
            kind: TaskKind::Processing,
            ..WorkRequest::one_off(handler, task)
        }
    }

    /// Checks what can be checked without the store; returns the request
    /// with periodic values clamped, and warnings.
    pub fn checked(mut self, floor: &PeriodicFloor) -> Result<(WorkRequest, Vec<String>), WorkError> {
        self.input.validate().map_err(WorkError::Data)?;
        if self.task.is_empty() {
            return Err(WorkError::Invalid("the task name must not be empty".into()));
        }
        if self.max_attempts == 0 {
            return Err(WorkError::Invalid("max attempts must be at least 1".into()));
        }
        if self.tags.iter().any(String::is_empty) {
            return Err(WorkError::Invalid("tags must not be empty".into()));
        }
        self.check_bounds()?;
        let periodic = self.kind == TaskKind::Periodic;
        if self.periodic.is_some() && self.cron.is_some() {
            return Err(WorkError::Invalid(
                "periodic work has a frequency or a cron schedule, not both".into(),
            ));
        }
        if periodic != (self.periodic.is_some() || self.cron.is_some()) {
            return Err(WorkError::Invalid(
                "periodic work needs a frequency or a cron schedule, and only periodic work has one".into(),
            ));
        }
        if self.priority > LOWEST_PRIORITY {
            return Err(WorkError::Invalid(format!(
                "priority {} is out of range; use 0 (highest) to 9 (lowest)",
                self.priority
            )));
        }
        if periodic && self.run_at.is_some() {
            return Err(WorkError::Invalid(
                "an exact start time (--at) is for one-off and processing work; periodic work starts by its schedule"
                    .into(),
            ));
        }
        if self.run_at.is_some() && !self.initial_delay.is_zero() {
            return Err(WorkError::Invalid(
                "give an exact start time (--at) or an initial delay (--delay), not both".into(),
            ));
        }
        if periodic && self.expedited.is_some() {
            return Err(WorkError::Invalid(
                "periodic work cannot be expedited (as in WorkManager); expedite one-off or processing work".into(),
            ));
        }
        if let Some(c) = &self.cron {
            // Re-checked here, so a schedule built by hand is checked too.
            let checked = CronSchedule::new(&c.expr, Some(&c.tz), c.catch_up)?;
            if let CatchUp::All(n) = c.catch_up
                && !(1..=MAX_CATCH_UP).contains(&n)
            {
                return Err(WorkError::Invalid(format!(
                    "the catch-up cap is {n}; it must be 1 to {MAX_CATCH_UP}"
                )));
            }
            self.cron = Some(checked);
        }
        if periodic && !self.after.is_empty() {
            return Err(WorkError::Invalid("periodic work cannot run after other work".into()));
        }
        if let Some((name, policy)) = &self.unique {
            if name.is_empty() {
                return Err(WorkError::Invalid("the unique name must not be empty".into()));
            }
            if !policy.fits(periodic) {
                return Err(WorkError::Invalid(format!(
                    "policy {policy:?} does not apply to {} work; use {}",
                    self.kind.as_str(),
                    if periodic {
                        "keep, update or cancel-and-reenqueue"
                    } else {
                        "keep, replace, append or append-or-replace"
                    }
                )));
            }
        }
        let mut warnings = Vec::new();
        if let Some(p) = self.periodic {
            let (p, w) = floor.clamp(p);
            self.periodic = Some(p);
            warnings = w;
        }
        Ok((self, warnings))
    }
}

impl WorkRequest {
    /// Checks every duration and count against [`limits`].
    fn check_bounds(&self) -> Result<(), WorkError> {
        use limits::*;
        let fmt = crate::units::format_duration;
        let too_long = |what: &str, d: Duration, max: Duration| {
            if d > max {
                Err(WorkError::Invalid(format!(
                    "{what} of {} is longer than the limit of {}",
                    fmt(d),
                    fmt(max)
                )))
            } else {
                Ok(())
            }
        };
        too_long("the initial delay", self.initial_delay, MAX_DURATION)?;
        too_long("the backoff delay", self.backoff_delay, MAX_DURATION)?;
        if let Some(p) = self.periodic {
            too_long("the period", p.frequency, MAX_DURATION)?;
            too_long("the flex", p.flex, MAX_DURATION)?;
        }
        if let Some(t) = self.budget.timeout {
            too_long("the timeout", t, MAX_TIMEOUT)?;
        }
        let over = |what: &str, n: u64, max: u64| {
            if n > max {
                Err(WorkError::Invalid(format!("{what} is {n}; the limit is {max}")))
            } else {
                Ok(())
            }
        };
        if let Some(f) = self.budget.fuel {
            over("the fuel budget", f, MAX_FUEL)?;
        }
        if let Some(m) = self.budget.max_memory_bytes {
            over("the memory budget", m, MAX_MEMORY_BYTES)?;
        }
        over("max attempts", u64::from(self.max_attempts), u64::from(MAX_ATTEMPTS))?;
        over("the number of tags", self.tags.len() as u64, MAX_TAGS as u64)?;
        over(
            "the number of tasks to run after",
            self.after.len() as u64,
            MAX_AFTER as u64,
        )?;
        let long_name = |what: &str, name: &str| {
            if name.len() > MAX_NAME_BYTES {
                Err(WorkError::Invalid(format!(
                    "{what} is {} bytes; the limit is {MAX_NAME_BYTES}",
                    name.len()
                )))
            } else {
                Ok(())
            }
        };
        long_name("the task name", &self.task)?;
        for t in &self.tags {
            long_name(&format!("tag {:?}", t.chars().take(32).collect::<String>()), t)?;
        }
        if let Some((u, _)) = &self.unique {
            long_name("the unique name", u)?;
        }
        Ok(())
    }
}

/// When new work first runs: `(period_start, next_run_at)`. One-off and
/// processing work: after its initial delay, or at its exact time (at once
/// if that is past). Interval work: its first period starts after the
/// delay. Cron work: its first fire after the delay.
pub fn first_run(r: &WorkRequest, now: Millis) -> (Millis, Millis) {
    let start = now.saturating_add(millis(r.initial_delay));
    if let Some(c) = &r.cron {
        let fire = c.next_after(start).unwrap_or(Millis::MAX / 2);
        return (fire, fire);
    }
    match r.periodic {
        Some(p) => (start, p.due_in_period(start)),
        None => (0, r.run_at.map_or(start, |at| at.max(now))),
    }
}

/// When a retried task (FAILED or CANCELLED, enqueued again at `now`)
/// runs: `(period_start, next_run_at)`. One-off and processing work: now.
/// Periodic work resumes its schedule from now, as if enqueued now: a new
/// period starts now (due in its flex window), a cron task waits for its
/// next fire after now.
pub fn resume_schedule(t: &TaskInfo, now: Millis) -> (Millis, Millis) {
    if let Some(c) = &t.cron {
        let fire = c.next_after(now).unwrap_or(Millis::MAX / 2);
        return (fire, fire);
    }
    match t.periodic {
        Some(p) => (now, p.due_in_period(now)),
        None => (0, now),
    }
}

/// What an expedited request of `handler` becomes when its quota `q` is
/// spent: the reason it is dropped (with [`OutOfQuotaPolicy::Drop`]) and
/// the warning the enqueue returns.
pub fn quota_spent(handler: &str, q: Rate, policy: OutOfQuotaPolicy) -> (Option<String>, String) {
    let spent = format!(
        "the expedited quota of handler {handler:?} ({} per {}) is spent",
        q.count,
        crate::units::format_duration(q.per)
    );
    match policy {
        OutOfQuotaPolicy::RunAsNormal => (None, format!("{spent}; enqueued as normal work (run-as-normal)")),
        OutOfQuotaPolicy::Drop => (
            Some(format!("dropped: {spent} (out-of-quota policy drop)")),
            format!("{spent}; the request was dropped (recorded as cancelled)"),
        ),
    }
}

/// What an enqueue did.
#[derive(Debug, Clone, PartialEq)]
pub struct Enqueued {
    /// The new task's id, or (with KEEP, or UPDATE) the existing one's.
    pub id: TaskId,
    /// Whether a new task was created.
    pub created: bool,
    /// Clamps applied (periodic floors).
    pub warnings: Vec<String>,
}

/// One attempt of a task, as kept in its history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptRecord {
    /// The attempt number (1 for the first).
    pub attempt: u32,
    /// Start time, ms since the epoch.
    pub started_at: Millis,
    /// End time, if it ended.
    pub ended_at: Option<Millis>,
    /// `success`, `retry`, `failed`, `stopped`, or none while running.
    pub outcome: Option<String>,
    /// The stop reason, if any.
    pub stop_reason: Option<String>,
    /// The error message, if any.
    pub error: Option<String>,
    /// Fuel consumed.
    pub fuel_consumed: Option<u64>,
    /// Peak linear memory.
    pub peak_memory_bytes: Option<u64>,
    /// The run's log.
    pub log: Vec<LogLine>,
    /// The SHA-256 (hex) of the component the run ran, once it ended
    /// (`None` when none ran: skipped, or its handler missing).
    pub component: Option<String>,
    /// The WIT contract that component exports
    /// (`workhost:task/handler@0.1.1`).
    pub contract: Option<String>,
}

/// Everything known about a task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskInfo {
    /// Id.
    pub id: TaskId,
    /// Handler name.
    pub handler: String,
    /// Task name.
    pub task: String,
    /// Kind.
    pub kind: TaskKind,
    /// State.
    pub state: TaskState,
    /// Unique name.
    pub unique_name: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Input data.
    pub input: Data,
    /// Output of the last successful run.
    pub output: Option<Data>,
    /// Latest progress of the current (or last) run.
    pub progress: Option<Data>,
    /// Attempts started since the last success (periodic) or ever (others).
    pub run_attempt_count: u32,
    /// Attempt limit.
    pub max_attempts: u32,
    /// Earliest time the next run may begin, ms since the epoch (for
    /// ENQUEUED work).
    pub next_run_at: Millis,
    /// Why the last run was stopped, if it was.
    pub stop_reason: Option<String>,
    /// The last error message.
    pub error: Option<String>,
    /// The periodic schedule.
    pub periodic: Option<Periodic>,
    /// Backoff policy.
    pub backoff: BackoffPolicy,
    /// Backoff delay (as requested).
    pub backoff_delay: Duration,
    /// Budget overrides.
    pub budget: BudgetOverride,
    /// What must hold before (and while) it runs.
    pub constraints: crate::device::Constraints,
    /// Tasks this one waits for.
    pub after: Vec<TaskId>,
    /// Priority within its handler (0 highest, 9 lowest).
    pub priority: u8,
    /// Whether it is expedited.
    pub expedited: bool,
    /// The cron schedule of cron work.
    pub cron: Option<CronSchedule>,
    /// The component version every run is pinned to (SHA-256, hex).
    pub pin: Option<String>,
    /// When it was enqueued.
    pub created_at: Millis,
    /// When it finished, if it did.
    pub finished_at: Option<Millis>,
    /// Attempt history (filled by `inspect`, empty in lists).
    pub attempts: Vec<AttemptRecord>,
}

impl TaskInfo {
    /// The next `n` times it is due to run, as far as its schedule says:
    /// its next run (if it waits to run), then, for periodic work, the runs
    /// of the periods or cron fires after it. Empty for finished work.
    pub fn next_runs(&self, n: usize) -> Vec<Millis> {
        if self.state.is_finished() || n == 0 {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(n);
        let waiting = matches!(self.state, TaskState::Enqueued);
        if waiting {
            out.push(self.next_run_at);
        }
        if let Some(c) = &self.cron {
            let after = if waiting {
                self.next_run_at
            } else {
                self.created_at.max(self.next_run_at)
            };
            out.extend(c.upcoming(after, n - out.len()));
        } else if let Some(p) = self.periodic {
            let frequency = millis(p.frequency).max(1);
            let mut at = out.last().copied().unwrap_or(self.next_run_at);
            while out.len() < n {
                at = at.saturating_add(frequency);
                out.push(at);
            }
        }
        out.truncate(n);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_the_formulas_and_clamps() {
        let s = Duration::from_secs;
        let exp = |d, a| backoff_delay(BackoffPolicy::Exponential, d, a);
        let lin = |d, a| backoff_delay(BackoffPolicy::Linear, d, a);
        assert_eq!(exp(s(30), 1), s(30));
        assert_eq!(exp(s(30), 2), s(60));
        assert_eq!(exp(s(30), 5), s(480));
        assert_eq!(lin(s(30), 1), s(30));
        assert_eq!(lin(s(30), 4), s(120));
        assert_eq!(exp(s(1), 1), s(10), "delay clamped up to 10 s");
        assert_eq!(lin(s(1), 3), s(30));
        assert_eq!(exp(s(6 * 3600), 1), MAX_BACKOFF, "delay clamped down to 5 h");
        assert_eq!(exp(s(30), 20), MAX_BACKOFF, "result capped at 5 h");
        assert_eq!(exp(s(30), 100), MAX_BACKOFF, "no overflow");
        assert_eq!(lin(s(3600), 10), MAX_BACKOFF);
    }

    #[test]
    fn periodic_floors_clamp_with_warnings() {
        let m = |n: u64| Duration::from_secs(n * 60);
        let floor = PeriodicFloor::default();
        // A flex of the whole period follows the clamped period, unwarned.
        let (p, w) = floor.clamp(Periodic {
            frequency: m(1),
            flex: m(1),
        });
        assert_eq!(
            p,
            Periodic {
                frequency: m(15),
                flex: m(15)
            }
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("1m") && w[0].contains("15m"), "{w:?}");
        // A flex the user gave is clamped with its own warning.
        let (p, w) = floor.clamp(Periodic {
            frequency: m(1),
            flex: Duration::from_secs(30),
        });
        assert_eq!(
            p,
            Periodic {
                frequency: m(15),
                flex: m(5)
            }
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[1].contains("flex 30s"), "{w:?}");
        let (p, w) = floor.clamp(Periodic {
            frequency: m(60),
            flex: m(90),
        });
        assert_eq!(
            p,
            Periodic {
                frequency: m(60),
                flex: m(60)
            }
        );
        assert!(w.is_empty());
        let low = PeriodicFloor {
            min_frequency: Duration::from_secs(1),
            min_flex: Duration::from_secs(1),
        };
        assert_eq!(
            low.clamp(Periodic {
                frequency: Duration::from_secs(2),
                flex: Duration::from_secs(2)
            })
            .1,
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_periodic_run_is_due_at_the_start_of_its_flex_window() {
        let p = Periodic {
            frequency: Duration::from_secs(900),
            flex: Duration::from_secs(300),
        };
        assert_eq!(p.due_in_period(1_000_000), 1_000_000 + 600_000);
    }

    #[test]
    fn policies_fit_their_kind() {
        let mut r = WorkRequest::one_off("h", "t");
        r.unique = Some(("u".into(), ExistingWorkPolicy::Update));
        assert!(
            r.checked(&PeriodicFloor::default())
                .unwrap_err()
                .to_string()
                .contains("keep, replace, append")
        );
        let mut r = WorkRequest::periodic("h", "t", DEFAULT_FREQUENCY);
        r.unique = Some(("u".into(), ExistingWorkPolicy::Append));
        assert!(
            r.checked(&PeriodicFloor::default())
                .unwrap_err()
                .to_string()
                .contains("keep, update or cancel-and-reenqueue")
        );
    }
}
