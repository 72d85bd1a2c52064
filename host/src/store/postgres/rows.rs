//! Task rows as [`TaskInfo`], the parameters statements share, and this
//! backend's errors, turned into the store's at the seam.

use std::time::Duration;

use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use crate::budget::TaskKind;
use crate::data::Data;
use crate::device::{Constraints, DeviceState, NetworkType};
use crate::work::{
    BackoffPolicy, BudgetOverride, Millis, Periodic, StoreError, TaskId, TaskInfo, TaskState, WorkError,
};

/// An error inside this backend: the database's, the pool's, or one the
/// store or the work model names. Turned into [`StoreError`] or
/// [`WorkError`] at the seam, naming the database.
#[derive(Debug)]
pub(super) enum Fail {
    Pg(tokio_postgres::Error),
    Pool(String),
    Store(StoreError),
    Work(WorkError),
    /// A kv rule refused the call (too many keys, not a counter, overflow).
    Kv(crate::kv::KvError),
    /// A write of a run that no longer holds its task.
    Fenced,
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

impl From<WorkError> for Fail {
    fn from(e: WorkError) -> Self {
        Fail::Work(e)
    }
}

/// The message of a database error: the server's own when it sent one.
fn detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

impl Fail {
    /// A deadlock or a serialization failure: the transaction may be tried
    /// again from the start.
    pub(super) fn is_retryable(&self) -> bool {
        matches!(self, Fail::Pg(e) if matches!(e.code(), Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::T_R_SERIALIZATION_FAILURE))
    }

    /// As the store's error; `database` names the store.
    pub(super) fn store(self, database: &str) -> StoreError {
        match self {
            Fail::Store(e) | Fail::Work(WorkError::Store(e)) => e,
            Fail::Work(e) => StoreError::Backend(e.to_string()),
            Fail::Kv(e) => StoreError::Backend(e.to_string()),
            Fail::Fenced => StoreError::Backend("the run no longer holds its task".into()),
            Fail::Pool(detail) => StoreError::Unavailable {
                database: database.to_string(),
                detail,
            },
            Fail::Pg(e) => {
                let text = detail(&e);
                match e.code() {
                    Some(c) if *c == SqlState::DISK_FULL || *c == SqlState::OUT_OF_MEMORY => StoreError::Full(text),
                    Some(c) if *c == SqlState::READ_ONLY_SQL_TRANSACTION => StoreError::ReadOnly(text),
                    Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE || *c == SqlState::QUERY_CANCELED => {
                        StoreError::Busy(text)
                    }
                    Some(c)
                        if *c == SqlState::INVALID_PASSWORD
                            || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                            || *c == SqlState::INVALID_CATALOG_NAME
                            || *c == SqlState::ADMIN_SHUTDOWN
                            || *c == SqlState::CANNOT_CONNECT_NOW
                            || *c == SqlState::TOO_MANY_CONNECTIONS =>
                    {
                        StoreError::Unavailable {
                            database: database.to_string(),
                            detail: text,
                        }
                    }
                    // No server error: the connection itself failed.
                    None if e.is_closed() || e.as_db_error().is_none() => StoreError::Unavailable {
                        database: database.to_string(),
                        detail: text,
                    },
                    _ => StoreError::Backend(text),
                }
            }
        }
    }

    /// As the work model's error.
    pub(super) fn work(self, database: &str) -> WorkError {
        match self {
            Fail::Work(e) => e,
            other => WorkError::Store(other.store(database)),
        }
    }
}

/// The device's state as the statements' `$1..$5` (see `device_filter!`).
pub(super) struct DeviceParams {
    pub(super) networks: Vec<i64>,
    pub(super) charging: bool,
    pub(super) battery_low: bool,
    pub(super) idle: bool,
    pub(super) storage_low: bool,
}

pub(super) fn device_params(device: &DeviceState) -> DeviceParams {
    DeviceParams {
        networks: NetworkType::ALL
            .iter()
            .filter(|t| t.holds(&device.network))
            .map(|t| t.code())
            .collect(),
        charging: device.charging,
        battery_low: device.battery_low,
        idle: device.idle,
        storage_low: device.storage_low,
    }
}

/// A lease as the database stores it.
pub(super) fn lease_param(lease: u64) -> i64 {
    i64::try_from(lease).unwrap_or(i64::MAX)
}

/// The host's wall clock, for the times only records keep (when a write
/// was fenced).
pub(super) fn wall_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Task `id`'s data `column`; damaged text is an error naming the task.
pub(super) fn data_column(id: TaskId, column: &str, text: Option<String>) -> Result<Option<Data>, Fail> {
    text.map(|t| {
        Data::from_typed_json(&t).map_err(|e| {
            Fail::Store(StoreError::DamagedTask {
                id,
                detail: format!("its {column} is not task data: {e}"),
            })
        })
    })
    .transpose()
}

/// A row of `task_columns!` as the task and its period start.
pub(super) fn task_from_row(r: &Row) -> Result<(TaskInfo, Millis), Fail> {
    let id: TaskId = r.try_get("id")?;
    let named = |column: &str, text: &str| {
        Fail::Store(StoreError::DamagedTask {
            id,
            detail: format!("its {column} is {text:?}, which no workhost writes"),
        })
    };
    let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
    let count = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
    let kind: String = r.try_get("kind")?;
    let state: String = r.try_get("state")?;
    let backoff: String = r.try_get("backoff")?;
    let frequency: Option<i64> = r.try_get("frequency_ms")?;
    let flex: Option<i64> = r.try_get("flex_ms")?;
    let info = TaskInfo {
        id,
        handler: r.try_get("handler")?,
        task: r.try_get("task")?,
        kind: TaskKind::parse(&kind).ok_or_else(|| named("kind", &kind))?,
        state: TaskState::parse(&state).ok_or_else(|| named("state", &state))?,
        unique_name: r.try_get("unique_name")?,
        tags: r.try_get("tags")?,
        input: data_column(id, "input", r.try_get("input")?)?.unwrap_or_default(),
        output: data_column(id, "output", r.try_get("output")?)?,
        progress: data_column(id, "progress", r.try_get("progress")?)?,
        run_attempt_count: count(r.try_get("attempts")?),
        max_attempts: count(r.try_get("max_attempts")?),
        next_run_at: r.try_get("next_run_at")?,
        periodic: frequency.map(|f| Periodic {
            frequency: ms(f),
            flex: ms(flex.unwrap_or(f)),
        }),
        backoff: BackoffPolicy::parse(&backoff).ok_or_else(|| named("backoff", &backoff))?,
        backoff_delay: ms(r.try_get("backoff_delay_ms")?),
        budget: BudgetOverride {
            timeout: r.try_get::<_, Option<i64>>("timeout_ms")?.map(ms),
            fuel: r
                .try_get::<_, Option<i64>>("fuel")?
                .map(|f| u64::try_from(f).unwrap_or(0)),
            max_memory_bytes: r
                .try_get::<_, Option<i64>>("max_memory")?
                .map(|m| u64::try_from(m).unwrap_or(0)),
        },
        stop_reason: r.try_get("stop_reason")?,
        error: r.try_get("error")?,
        after: r.try_get("after")?,
        created_at: r.try_get("created_at")?,
        finished_at: r.try_get("finished_at")?,
        constraints: Constraints {
            network: NetworkType::from_code(r.try_get("req_network")?),
            charging: r.try_get("req_charging")?,
            battery_not_low: r.try_get("req_battery")?,
            device_idle: r.try_get("req_idle")?,
            storage_not_low: r.try_get("req_storage")?,
        },
        priority: u8::try_from(r.try_get::<_, i64>("priority")?).unwrap_or(crate::work::DEFAULT_PRIORITY),
        expedited: r.try_get("expedited")?,
        cron: match r.try_get::<_, Option<String>>("cron")? {
            None => None,
            Some(text) => Some(crate::work::CronSchedule::from_stored(&text).ok_or_else(|| named("cron", &text))?),
        },
        pin: r.try_get("pin")?,
        attempts: Vec::new(),
    };
    Ok((info, r.try_get("period_start")?))
}
