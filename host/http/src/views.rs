//! The JSON the API returns, as types: the OpenAPI document's schemas are
//! generated from these, and each is built from the library's own types
//! (a task's view is the JSON `workhost inspect --json` prints, checked by
//! a test).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use workhost::{AttemptRecord, HandlerStatus, HostInfo, LogLine, MinuteActivity, TaskInfo, TaskState};

/// RFC 3339, UTC, millisecond precision.
fn time(ms: i64) -> String {
    workhost::units::format_rfc3339(ms)
}

/// A task, as `workhost inspect --json` prints it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskView {
    /// Its id.
    pub id: i64,
    /// The handler that runs it.
    pub handler: String,
    /// The task name passed to `execute-task`.
    pub task: String,
    /// `one-off`, `periodic` or `processing`.
    pub kind: String,
    /// ENQUEUED, BLOCKED, RUNNING, SUCCEEDED, FAILED or CANCELLED.
    pub state: String,
    /// Its unique name, if it has one.
    pub unique_name: Option<String>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Input data: a map of keys to values.
    #[schema(value_type = Object)]
    pub input: serde_json::Value,
    /// Output of its last successful run.
    #[schema(value_type = Option<Object>)]
    pub output: Option<serde_json::Value>,
    /// The latest progress its run reported (by convention `done` and
    /// `total`, or `percent`).
    #[schema(value_type = Option<Object>)]
    pub progress: Option<serde_json::Value>,
    /// Attempts counted toward `max_attempts`.
    pub run_attempt_count: u32,
    /// Attempt limit.
    pub max_attempts: u32,
    /// When it is next due (ENQUEUED work).
    pub next_run_at: Option<String>,
    /// Why its last run was stopped.
    pub stop_reason: Option<String>,
    /// Its last error.
    pub error: Option<String>,
    /// Tasks it runs after.
    pub after: Vec<i64>,
    /// What must hold before it runs.
    #[schema(value_type = Object)]
    pub constraints: serde_json::Value,
    /// Period of periodic work, ms.
    pub every_ms: Option<u64>,
    /// Flex window of periodic work, ms.
    pub flex_ms: Option<u64>,
    /// Cron expression of cron work.
    pub cron: Option<String>,
    /// Zone of the cron expression.
    pub tz: Option<String>,
    /// Catch-up policy of cron work.
    pub catch_up: Option<String>,
    /// 0 (highest) to 9.
    pub priority: u8,
    /// Whether it is expedited.
    pub expedited: bool,
    /// The component version it is pinned to.
    pub pin: Option<String>,
    /// When it was enqueued.
    pub created_at: String,
    /// When it finished.
    pub finished_at: Option<String>,
    /// Its attempts, oldest first (in a task's detail; absent in lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<AttemptView>>,
}

impl TaskView {
    /// The view of `t`; `attempts`: with its attempt history.
    pub fn new(t: &TaskInfo, attempts: bool) -> TaskView {
        let json = |d: &workhost::Data| serde_json::to_value(d).unwrap_or(serde_json::Value::Null);
        TaskView {
            id: t.id,
            handler: t.handler.clone(),
            task: t.task.clone(),
            kind: t.kind.as_str().into(),
            state: t.state.as_str().into(),
            unique_name: t.unique_name.clone(),
            tags: t.tags.clone(),
            input: json(&t.input),
            output: t.output.as_ref().map(json),
            progress: t.progress.as_ref().map(json),
            run_attempt_count: t.run_attempt_count,
            max_attempts: t.max_attempts,
            next_run_at: (t.state == TaskState::Enqueued).then(|| time(t.next_run_at)),
            stop_reason: t.stop_reason.clone(),
            error: t.error.clone(),
            after: t.after.clone(),
            constraints: serde_json::to_value(t.constraints).unwrap_or(serde_json::Value::Null),
            every_ms: t.periodic.map(|p| millis(p.frequency)),
            flex_ms: t.periodic.map(|p| millis(p.flex)),
            cron: t.cron.as_ref().map(|c| c.expr.clone()),
            tz: t.cron.as_ref().map(|c| c.tz.clone()),
            catch_up: t.cron.as_ref().map(|c| c.catch_up.to_text()),
            priority: t.priority,
            expedited: t.expedited,
            pin: t.pin.clone(),
            created_at: time(t.created_at),
            finished_at: t.finished_at.map(time),
            attempts: attempts.then(|| t.attempts.iter().map(AttemptView::from).collect()),
        }
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One attempt of a task.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AttemptView {
    /// 1 for the first.
    pub attempt: u32,
    /// Start, ms since the epoch.
    pub started_at: i64,
    /// End, ms since the epoch (none while it runs).
    pub ended_at: Option<i64>,
    /// `success`, `retry`, `failed` or `stopped`.
    pub outcome: Option<String>,
    /// Why it was stopped.
    pub stop_reason: Option<String>,
    /// Its error.
    pub error: Option<String>,
    /// Fuel it consumed (metered handlers).
    pub fuel_consumed: Option<u64>,
    /// Its peak linear memory.
    pub peak_memory_bytes: Option<u64>,
    /// Its log.
    pub log: Vec<LogLineView>,
    /// SHA-256 of the component that ran it.
    pub component: Option<String>,
    /// The WIT contract version that component exports.
    pub contract: Option<String>,
}

impl From<&AttemptRecord> for AttemptView {
    fn from(a: &AttemptRecord) -> AttemptView {
        AttemptView {
            attempt: a.attempt,
            started_at: a.started_at,
            ended_at: a.ended_at,
            outcome: a.outcome.clone(),
            stop_reason: a.stop_reason.clone(),
            error: a.error.clone(),
            fuel_consumed: a.fuel_consumed,
            peak_memory_bytes: a.peak_memory_bytes,
            log: a.log.iter().map(LogLineView::from).collect(),
            component: a.component.clone(),
            contract: a.contract.clone(),
        }
    }
}

/// One line of a run's log.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LogLineView {
    /// Milliseconds since the run started.
    pub at_ms: u64,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// `handler`, `stdout`, `stderr` or `host`.
    pub source: String,
    /// The text.
    pub message: String,
}

impl From<&LogLine> for LogLineView {
    fn from(l: &LogLine) -> LogLineView {
        let text = |v: serde_json::Value| v.as_str().unwrap_or_default().to_string();
        LogLineView {
            at_ms: l.at_ms,
            level: text(serde_json::to_value(l.level).unwrap_or_default()),
            source: text(serde_json::to_value(l.source).unwrap_or_default()),
            message: l.message.clone(),
        }
    }
}

/// A task in a chain (see [`TaskDetail`]).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskSummary {
    /// Its id.
    pub id: i64,
    /// Its handler.
    pub handler: String,
    /// Its task name.
    pub task: String,
    /// Its state.
    pub state: String,
}

impl From<&TaskInfo> for TaskSummary {
    fn from(t: &TaskInfo) -> TaskSummary {
        TaskSummary {
            id: t.id,
            handler: t.handler.clone(),
            task: t.task.clone(),
            state: t.state.as_str().into(),
        }
    }
}

/// The chain around a task.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Chain {
    /// The tasks it runs after.
    pub after: Vec<TaskSummary>,
    /// The tasks that run after it.
    pub dependents: Vec<TaskSummary>,
}

/// A task with its attempts and its chain.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskDetail {
    /// The task (with `attempts`).
    #[serde(flatten)]
    pub task: TaskView,
    /// Its chain.
    pub chain: Chain,
}

/// A page of tasks, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskPage {
    /// The tasks.
    pub tasks: Vec<TaskView>,
    /// Pass as `cursor` for the next (older) page; none on the last page.
    pub next_cursor: Option<String>,
}

/// The filter of a list or a bulk action: unset fields match everything.
#[derive(Debug, Clone, Default, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Filter {
    /// Only this handler's tasks.
    pub handler: Option<String>,
    /// Only tasks in this state (ENQUEUED, BLOCKED, RUNNING, SUCCEEDED,
    /// FAILED, CANCELLED).
    pub state: Option<String>,
    /// Only tasks with this tag.
    pub tag: Option<String>,
    /// Only tasks with this unique name.
    pub unique_name: Option<String>,
    /// Text search: a case-insensitive substring of the id, handler, task
    /// name, unique name, tags, input or error.
    pub q: Option<String>,
}

/// The query of `GET /api/v1/tasks`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this handler's tasks.
    pub handler: Option<String>,
    /// Only tasks in this state.
    pub state: Option<String>,
    /// Only tasks with this tag.
    pub tag: Option<String>,
    /// Only tasks with this unique name.
    pub unique_name: Option<String>,
    /// Text search (see `Filter`).
    pub q: Option<String>,
    /// Most tasks per page, 1-500 (default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// An action applied to every task a filter matches.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    /// `cancel`, `retry`, `run-now` or `delete`.
    pub action: String,
    /// Which tasks; an empty filter matches every task.
    #[serde(default)]
    pub filter: Filter,
}

/// What a bulk action changed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BulkResult {
    /// The action.
    pub action: String,
    /// How many tasks it changed.
    pub count: usize,
    /// Their ids.
    pub ids: Vec<i64>,
}

/// The enqueue request: the fields of `WorkRequest::from_json`, checked
/// exactly as the CLI and the C ABI check them.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // The request is parsed by `WorkRequest::from_json`; this is its schema.
pub struct EnqueueRequest {
    /// The handler.
    pub handler: String,
    /// The task name passed to `execute-task`.
    pub task: String,
    /// `one-off`, `periodic` or `processing`.
    pub kind: Option<String>,
    /// Input data: keys to values (strings, numbers, booleans, arrays of one type).
    #[schema(value_type = Option<Object>)]
    pub input: Option<serde_json::Value>,
    /// Initial delay (`10s`, `1h30m`).
    pub delay: Option<String>,
    /// The time of the first run (RFC 3339).
    pub at: Option<String>,
    /// Period of periodic work.
    pub every: Option<String>,
    /// Flex window of periodic work.
    pub flex: Option<String>,
    /// Cron expression.
    pub cron: Option<String>,
    /// Zone of the cron expression.
    pub tz: Option<String>,
    /// `none`, `last` or `all`.
    pub catch_up: Option<String>,
    /// Most missed fires `all` runs (1-1000).
    pub catch_up_max: Option<u32>,
    /// A unique name.
    pub unique: Option<String>,
    /// `keep`, `replace`, `append`, `append-or-replace`, `update`, `cancel-and-reenqueue`.
    pub policy: Option<String>,
    /// Tags.
    pub tags: Option<Vec<String>>,
    /// Ids of tasks to run after.
    pub after: Option<Vec<i64>>,
    /// `exponential` or `linear`.
    pub backoff: Option<String>,
    /// Backoff delay.
    pub backoff_delay: Option<String>,
    /// Attempt limit (1-10000).
    pub max_attempts: Option<u32>,
    /// 0 (highest) to 9.
    pub priority: Option<u8>,
    /// Expedited work.
    pub expedited: Option<bool>,
    /// `run-as-normal` or `drop`.
    pub out_of_quota: Option<String>,
    /// Wall-clock budget.
    pub timeout: Option<String>,
    /// Fuel budget.
    pub fuel: Option<u64>,
    /// Memory budget (`64MiB` or bytes).
    #[schema(value_type = Option<String>)]
    pub max_memory: Option<serde_json::Value>,
    /// Constraints: `network`, `charging`, `battery_not_low`, `device_idle`, `storage_not_low`.
    #[schema(value_type = Option<Object>)]
    pub requires: Option<serde_json::Value>,
}

/// An accepted enqueue.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EnqueueResult {
    /// The task's id (with KEEP or UPDATE, the existing task's).
    pub id: i64,
    /// Whether a new task was created.
    pub created: bool,
    /// Clamps applied and other notes.
    pub warnings: Vec<String>,
    /// The task as it is now.
    pub task: TaskView,
}

/// A handler, with its limits and its tasks.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HandlerView {
    /// Its name.
    pub name: String,
    /// Paused on its own (its work waits; running work goes on).
    pub paused: bool,
    /// Runs going on in this host.
    pub running: usize,
    /// Most runs at once.
    pub concurrency: usize,
    /// Rate limit (`100/min`).
    pub rate: Option<String>,
    /// Quota of expedited requests.
    pub expedited_quota: Option<String>,
    /// SHA-256 of the component it runs.
    pub component: String,
    /// Its tasks by state.
    pub counts: BTreeMap<String, usize>,
}

impl HandlerView {
    pub(crate) fn new(h: HandlerStatus, paused: bool, counts: BTreeMap<String, usize>) -> HandlerView {
        HandlerView {
            name: h.name,
            paused,
            running: h.running,
            concurrency: h.concurrency,
            rate: h.rate,
            expedited_quota: h.expedited_quota,
            component: h.component,
            counts,
        }
    }
}

/// The last run of periodic work.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LastRun {
    /// `success`, `retry`, `failed` or `stopped`.
    pub outcome: Option<String>,
    /// When it ended (RFC 3339).
    pub ended_at: Option<String>,
    /// Its error.
    pub error: Option<String>,
}

/// Periodic or cron work.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PeriodicView {
    /// The task.
    pub task: TaskView,
    /// Its next runs (RFC 3339).
    pub next_runs: Vec<String>,
    /// Its last run.
    pub last: Option<LastRun>,
}

/// A page of periodic or cron work, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PeriodicPage {
    /// The tasks.
    pub periodic: Vec<PeriodicView>,
    /// Pass as `cursor` for the next (older) page; none on the last page.
    pub next_cursor: Option<String>,
}

/// The query of `GET /api/v1/periodic`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Most tasks per page, 1-500 (default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A host serving the store.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HostView {
    /// Its id.
    pub id: String,
    /// Its current incarnation.
    pub incarnation: String,
    /// When it started.
    pub started_at: String,
    /// When it last renewed its lease.
    pub renewed_at: String,
    /// When its lease runs out (stores with leases).
    pub expires_at: Option<String>,
    /// Whether it is serving.
    pub alive: bool,
    /// Tasks it runs.
    pub running: usize,
}

impl From<HostInfo> for HostView {
    fn from(h: HostInfo) -> HostView {
        HostView {
            id: h.id,
            incarnation: h.incarnation,
            started_at: time(h.started_at),
            renewed_at: time(h.renewed_at),
            expires_at: h.expires_at.map(time),
            alive: h.live,
            running: h.running,
        }
    }
}

/// Tasks by state and by handler.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Counts {
    /// Every task by state.
    pub by_state: BTreeMap<String, usize>,
    /// Tasks by handler, then state.
    pub by_handler: BTreeMap<String, BTreeMap<String, usize>>,
    /// Whether the whole queue is paused.
    pub paused: bool,
}

/// One minute of activity.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MinuteView {
    /// The minute's start (RFC 3339).
    pub minute: String,
    /// Runs that succeeded.
    pub succeeded: u64,
    /// Runs after which the task failed.
    pub failed: u64,
    /// Runs after which the task waits to be retried.
    pub retried: u64,
    /// Runs started.
    pub started: u64,
    /// Median due-to-start latency, ms.
    pub latency_p50_ms: Option<f64>,
    /// 95th percentile due-to-start latency, ms.
    pub latency_p95_ms: Option<f64>,
}

impl From<MinuteActivity> for MinuteView {
    fn from(m: MinuteActivity) -> MinuteView {
        MinuteView {
            minute: time(m.minute),
            succeeded: m.succeeded,
            failed: m.failed,
            retried: m.retried,
            started: m.started,
            latency_p50_ms: m.latency_p50_ms,
            latency_p95_ms: m.latency_p95_ms,
        }
    }
}

/// This host's last hour, a minute per entry, oldest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Activity {
    /// The minutes.
    pub minutes: Vec<MinuteView>,
}

/// Whether the whole queue is paused.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Paused {
    /// Paused.
    pub paused: bool,
}

/// The device state constraints are checked against.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeviceView {
    /// The state in effect (readings with overrides applied).
    #[schema(value_type = Object)]
    pub state: serde_json::Value,
    /// The overrides applied.
    #[schema(value_type = Object)]
    pub overrides: serde_json::Value,
}

/// Who the caller is, and the token its browser forms send.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Session {
    /// Whether the listener asks for tokens.
    pub auth: bool,
    /// `read` or `write`.
    pub access: String,
    /// The value of the `X-CSRF-Token` header that mutations without a
    /// bearer token must carry.
    pub csrf: String,
}
