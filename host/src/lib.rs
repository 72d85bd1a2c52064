//! workhost: WorkManager for WebAssembly.
//!
//! Every task handler is a WebAssembly component exporting
//! `workhost:task/handler@0.1.x` (see `wit/task.wit`). Every run gets its own
//! fresh instance under a wall-clock, fuel, memory, table and stack budget,
//! and ends as a [`RunOutcome`] value.
//!
//! # Layout
//!
//! The scheduler:
//!
//! - [`Host`], [`HostConfig`], [`HandlerConfig`]: handlers, the dispatcher,
//!   device state, graceful shutdown and [`HostAlert`]s; [`load_manifest`]
//!   builds the config from `workhost.toml`.
//! - [`Queue`]: enqueue, cancel, query, pause, prune and [`TaskEvent`]s,
//!   also from a process that runs nothing.
//! - [`TestDriver`], [`ManualClock`]: a host on a manual clock for tests.
//! - [`WorkRequest`], [`TaskInfo`], [`TaskState`], [`ExistingWorkPolicy`],
//!   [`BackoffPolicy`], [`Periodic`]: what is enqueued and what is known.
//! - [`CronSchedule`], [`CatchUp`], [`Rate`], [`OutOfQuotaPolicy`],
//!   [`claim_key`], and the [`cron`] expressions: cron schedules in time
//!   zones, priorities, expedited work and rates (docs/schedules.md).
//! - [`decide`]: the retry policy, from a run's result to the next state.
//! - [`TaskStore`], [`SqliteStore`]: the durable store (docs/store.md).
//! - [`Constraints`], [`DeviceState`], [`DeviceOverrides`]: when work may run.
//! - [`Grants`], [`AllowedOrigin`]: what a handler may touch; [`Resolver`]:
//!   how outbound HTTP names become the addresses checked and connected to.
//!
//! The executor:
//!
//! - [`Executor`], [`Handler`], [`RunRequest`], [`StopHandle`]: load a
//!   component once, run it many times, stop a run from outside.
//! - [`Engine`], [`EngineConfig`]: the wasmtime configuration and the
//!   compile cache; the only place that touches `wasmtime::Config`.
//! - [`Budget`], [`TaskKind`]: per-run limits and their defaults.
//! - [`RunOutcome`], [`RunResult`], [`StopReason`]: how a run ended.
//! - [`Data`], [`Value`]: task data, its 10 KiB limit and JSON form.
//! - [`Kv`], [`KvStore`], [`MemoryKv`]: the handler's key-value store.
//! - [`units`]: durations and sizes as people write them.
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use workhost::{Data, EngineConfig, Executor, RunRequest};
//!
//! let executor = Executor::new(EngineConfig::default())?;
//! let handler = executor.load_file("target/guests/echo.wasm".as_ref())?;
//! let mut request = RunRequest::new("greet");
//! request.input = Data::new().with("name", "world");
//! let outcome = handler.run(request).await;
//! assert_eq!(outcome.output().and_then(|o| o.get("name")), Some(&"world".into()));
//! # Ok(())
//! # }
//! ```

mod bindings;
mod budget;
mod config_values;
pub mod cron;
mod data;
mod device;
mod engine;
mod executor;
mod grants;
mod host;
mod kv;
mod manifest;
mod metrics;
mod names;
mod outbound;
mod outcome;
mod platform;
mod progress;
mod quota;
mod retry;
mod runlog;
mod store;
pub mod units;
mod work;

pub use budget::{Budget, DEFAULT_FUEL, TaskKind};
pub use config_values::{
    ConfigError, ConfigValue, MAX_CONFIG_KEY_BYTES, MAX_CONFIG_VALUE_BYTES, MAX_SECRET_BYTES, REDACTED, check_config,
};
pub use data::{Data, DataError, MAX_DATA_BYTES, Value};
pub use device::{
    Constraints, DeviceOverrides, DeviceState, LinuxPaths, NetworkState, NetworkType, Readings, Thresholds,
};
pub use engine::{CacheStatus, DEFAULT_CACHE_MAX_BYTES, EPOCH_TICK, Engine, EngineConfig, EngineError, LoadError};
pub use executor::{ComponentId, Executor, HANDLER_EXPORT, Handler, RunRequest, StopHandle};
pub use grants::{
    AllowedOrigin, DEFAULT_DATA_QUOTA_BYTES, GUEST_DATA_DIR, Grants, HttpLimits, OriginError, is_internal,
};
pub use host::{
    CLOCK_JUMP_THRESHOLD, Clock, HANDLER_NAME_PATTERN, HandlerConfig, HandlerNameError, HandlerStatus, Host, HostAlert,
    HostConfig, HostError, HostHandle, HostStats, HttpSettings, HttpToken, MAX_HANDLER_NAME_BYTES, MIN_PIN_DIGITS,
    ManualClock, PRUNE_EVERY, Queue, RETAINED_VERSIONS, ReloadError, ReloadOptions, ReloadReport, ScheduleConfig,
    SteadyReading, SystemClock, TaskEvent, TestDriver, check_handler_name, default_memory_budget,
};
pub use kv::{Kv, KvError, KvFuture, KvLimits, KvStore, MemoryKv};
pub use manifest::{
    MIN_TOKEN_CHARS, ManifestError, ManifestUse, load_manifest, load_manifest_for, parse_manifest, parse_manifest_for,
};
pub use metrics::{ACTIVITY_MINUTES, Gauges, Metrics, MinuteActivity};
pub use outbound::{ResolveFuture, Resolver, SystemResolver};
pub use outcome::{Failure, MAX_ERROR_BYTES, RunOutcome, RunResult, StopReason};
pub use platform::{ProgressSink, TaskFacts};
pub use progress::{PROGRESS_CALLS_PER_INTERVAL, PROGRESS_INTERVAL};
pub use retry::{RetryFacts, Transition, decide, decide_orphaned};
pub use runlog::{LOG_LINE_OVERHEAD, LogLevel, LogLine, LogSource};
pub use store::{
    Change, Claimed, ClockJump, CommitHook, DEFAULT_HOST_LEASE, EnqueueHooks, FinishedAndClaimed, HandlerCounts,
    HandlerWait, HostIdentity, HostInfo, NextClaim, PERIODIC_ATTEMPTS_KEPT, PgStore, Query, Selector, SqliteStore,
    StoreFuture, TaskStore,
};
pub use work::{
    AttemptRecord, BackoffPolicy, BudgetOverride, CatchUp, CronSchedule, DEFAULT_BACKOFF, DEFAULT_CATCH_UP_CAP,
    DEFAULT_FREQUENCY, DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY, EXPEDITED_LEAD, Enqueued, ExistingWorkPolicy,
    HIGHEST_PRIORITY, HandlerLimits, LOWEST_PRIORITY, LateStart, MAX_CATCH_UP, MISFIRE_GRACE, Millis, OutOfQuotaPolicy,
    PRIORITY_STEP, Periodic, PeriodicFloor, Rate, StoreError, TaskAction, TaskId, TaskInfo, TaskState, WorkError,
    WorkRequest, backoff_delay, claim_key, first_run, limits, millis, quota_spent, resume_schedule,
};
