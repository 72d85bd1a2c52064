//! How a host is built: [`HostConfig`], [`HandlerConfig`], [`DeviceConfig`],
//! and the handler-name rule.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::budget::{Budget, TaskKind};
use crate::data::Data;
use crate::device::{DeviceOverrides, Thresholds};
use crate::engine::EngineConfig;
use crate::kv::KvLimits;
use crate::work::{CronSchedule, HandlerLimits, PeriodicFloor, Rate, TaskInfo};

/// The pattern every handler name matches: lowercase ASCII letters, digits,
/// `-` and `_`, starting with a letter or digit, 1 to 64 bytes. A name is a
/// single path component (a handler's data directory is
/// `<data_dir>/handlers/<name>`), so it can never be `.`, `..`, hidden,
/// absolute or contain a separator.
pub const HANDLER_NAME_PATTERN: &str = "[a-z0-9][a-z0-9_-]{0,63}";

/// Longest handler name, in bytes.
pub const MAX_HANDLER_NAME_BYTES: usize = 64;

/// A handler name that does not match [`HANDLER_NAME_PATTERN`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "handler name {0:?} is not allowed; a handler name matches {HANDLER_NAME_PATTERN} (lowercase letters, digits, `-` and `_`, starting with a letter or digit, at most 64 bytes), for example \"fetch-feed\""
)]
pub struct HandlerNameError(pub String);

/// Checks that `name` matches [`HANDLER_NAME_PATTERN`]. The manifest and
/// [`Host::start`](super::Host::start) call it for every handler.
pub fn check_handler_name(name: &str) -> Result<(), HandlerNameError> {
    let body = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_';
    match name.as_bytes() {
        [first, rest @ ..]
            if (first.is_ascii_lowercase() || first.is_ascii_digit())
                && name.len() <= MAX_HANDLER_NAME_BYTES
                && rest.iter().all(|b| body(*b)) =>
        {
            Ok(())
        }
        _ => Err(HandlerNameError(name.to_string())),
    }
}

/// One handler of a host.
#[derive(Debug, Clone)]
pub struct HandlerConfig {
    /// The name work requests use; it matches [`HANDLER_NAME_PATTERN`].
    pub name: String,
    /// The component file.
    pub component: PathBuf,
    /// Default budget of one-off and periodic runs.
    pub budget: Budget,
    /// Default budget of processing runs.
    pub processing_budget: Budget,
    /// Most runs of this handler at once.
    pub concurrency: usize,
    /// Run on the fuel-metered engine (default) or the unmetered one.
    pub fuel: bool,
    /// kv limits.
    pub kv_limits: KvLimits,
    /// What it may touch (outbound HTTP).
    pub grants: Arc<crate::grants::Grants>,
    /// Most runs started per window, over every host on the store; work
    /// over it waits (manifest `rate = "100/min"`).
    pub rate: Option<Rate>,
    /// Most expedited requests accepted per window (manifest
    /// `expedited_quota = "10/h"`); `None`: no quota.
    pub expedited_quota: Option<Rate>,
}

impl HandlerConfig {
    /// A handler with default budgets and a concurrency of 4.
    pub fn new(name: impl Into<String>, component: impl Into<PathBuf>) -> Self {
        HandlerConfig {
            name: name.into(),
            component: component.into(),
            budget: Budget::for_kind(TaskKind::OneOff),
            processing_budget: Budget::for_kind(TaskKind::Processing),
            concurrency: 4,
            fuel: true,
            kv_limits: KvLimits::default(),
            grants: Arc::default(),
            rate: None,
            expedited_quota: None,
        }
    }
}

/// How a host is built.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where the database (and the compile cache) live.
    pub data_dir: PathBuf,
    /// The handlers.
    pub handlers: Vec<HandlerConfig>,
    /// Most runs at once over all handlers.
    pub max_concurrency: usize,
    /// Floors for periodic work.
    pub periodic_floor: PeriodicFloor,
    /// How long finished work is kept: a host prunes what finished longer
    /// ago (every [`PRUNE_EVERY`](super::PRUNE_EVERY)), and so does `prune`.
    pub retention: Duration,
    /// How long running work may go on after shutdown is asked for.
    pub shutdown_grace: Duration,
    /// How often the store is polled for other processes' changes.
    pub poll_interval: Duration,
    /// The engine of fuel-metered handlers (the unmetered engine copies it).
    pub engine: EngineConfig,
    /// Where the device state for constraints comes from.
    pub device: DeviceConfig,
    /// Most bytes of linear memory the runs going at once may be granted
    /// together (default: half the machine's physical memory,
    /// [`default_memory_budget`]). Work that does not fit waits for memory:
    /// handlers that all allocate their limit cannot get the host killed by
    /// the kernel.
    pub memory_budget: u64,
    /// The task store; `None` (the default): the embedded SQLite store in
    /// `data_dir`. Any [`TaskStore`](crate::TaskStore) backend serves.
    pub store: Option<Arc<dyn crate::store::TaskStore>>,
    /// A PostgreSQL database for the store, shared by every host that
    /// names it (`postgres://user@host/db`, or a `key=value` connection
    /// string); `None`: the embedded SQLite store in `data_dir`. Ignored
    /// when [`Self::store`] is set.
    pub database: Option<String>,
    /// The PostgreSQL server the store's LISTEN connection goes to, when it
    /// is not [`Self::database`]: behind a pooler in transaction mode
    /// (PgBouncer), which cannot hold a LISTEN, `database` names the pooler
    /// and this the server, for the same database. `None`: `database`.
    pub database_listen: Option<String>,
    /// How long a host's lease on a shared database lasts without renewal
    /// (default [`DEFAULT_HOST_LEASE`](crate::DEFAULT_HOST_LEASE), 15 s):
    /// a host renews seven times in it, and another host rescues the work
    /// of one that has not renewed for this long.
    pub host_lease: Duration,
    /// Cron schedules the deployment declares (manifest `[[schedules]]`):
    /// a host registers each as it starts (unique work, policy UPDATE), so
    /// a changed schedule takes effect and an unchanged one keeps its
    /// next fire.
    pub schedules: Vec<ScheduleConfig>,
    /// The operations listener (manifest `[http]`): the HTTP API, the
    /// dashboard and `/metrics`, served by the `workhost-http` crate beside
    /// `workhost serve`. The library itself opens no socket.
    pub http: Option<HttpSettings>,
}

/// Manifest `[http]`: where the operations listener listens and which
/// tokens it accepts (docs/http-api.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// The address (`127.0.0.1:8080`).
    pub listen: std::net::SocketAddr,
    /// `[[http.tokens]]`: none means an open listener, which only a
    /// loopback address may be.
    pub tokens: Vec<HttpToken>,
}

/// One `[[http.tokens]]` entry.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpToken {
    /// A name for people.
    pub name: String,
    /// The secret (read from the environment with `token = { env = "..." }`).
    pub secret: String,
    /// `true`: read and write; `false`: read only.
    pub write: bool,
}

impl std::fmt::Debug for HttpToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpToken")
            .field("name", &self.name)
            .field("secret", &"<hidden>")
            .field("write", &self.write)
            .finish()
    }
}

/// A cron schedule declared by the deployment (manifest `[[schedules]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    /// Its unique name: one task per name, kept across restarts.
    pub name: String,
    /// The handler it runs.
    pub handler: String,
    /// The task name passed to `execute-task` (default: `name`).
    pub task: String,
    /// When.
    pub schedule: CronSchedule,
    /// Input data of every run.
    pub input: Data,
    /// Priority (0 highest to 9 lowest).
    pub priority: u8,
}

impl ScheduleConfig {
    /// The work request that registers it.
    pub fn request(&self) -> crate::work::WorkRequest {
        let mut r = crate::work::WorkRequest::cron(&self.handler, &self.task, self.schedule.clone());
        r.input = self.input.clone();
        r.priority = self.priority;
        r.unique = Some((self.name.clone(), crate::work::ExistingWorkPolicy::Update));
        r
    }
}

/// Half the machine's physical memory (Linux `/proc/meminfo`), or 4 GiB
/// where it cannot be read: the default [`HostConfig::memory_budget`].
pub fn default_memory_budget() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib.saturating_mul(1024))
    });
    total.map_or(4 << 30, |t| t / 2)
}

/// Where a host's device state comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    /// Read this machine (Linux `/sys` and `/proc`, free space of the data
    /// directory); otherwise start from "everything available".
    pub read_machine: bool,
    /// Fields that replace the readings.
    pub overrides: DeviceOverrides,
    /// When readings count as low or busy.
    pub thresholds: Thresholds,
    /// How often the machine is read again.
    pub refresh: Duration,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            read_machine: true,
            overrides: DeviceOverrides::default(),
            thresholds: Thresholds::default(),
            refresh: Duration::from_secs(5),
        }
    }
}

impl HostConfig {
    /// Opens the store this configuration names: [`Self::store`], else the
    /// PostgreSQL [`Self::database`], else the SQLite store in
    /// [`Self::data_dir`].
    pub async fn open_store(&self) -> Result<Arc<dyn crate::store::TaskStore>, crate::work::StoreError> {
        if let Some(store) = &self.store {
            return Ok(store.clone());
        }
        match &self.database {
            Some(url) => {
                Ok(crate::store::PgStore::open_with(url, self.database_listen.as_deref(), self.host_lease).await?)
            }
            None => Ok(crate::store::SqliteStore::open(&self.data_dir)?),
        }
    }

    /// Defaults: 16 runs at once, WorkManager's periodic floors, 1 day of
    /// retention, a 10 s shutdown grace, a 25 ms poll, the compile cache
    /// in `<data_dir>/cache`, and half the physical memory for runs.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        HostConfig {
            engine: EngineConfig {
                cache_dir: Some(data_dir.join("cache")),
                ..EngineConfig::default()
            },
            data_dir,
            handlers: Vec::new(),
            max_concurrency: 16,
            periodic_floor: PeriodicFloor::default(),
            retention: Duration::from_secs(86_400),
            shutdown_grace: Duration::from_secs(10),
            poll_interval: Duration::from_millis(25),
            device: DeviceConfig::default(),
            memory_budget: default_memory_budget(),
            store: None,
            database: None,
            database_listen: None,
            host_lease: crate::store::DEFAULT_HOST_LEASE,
            schedules: Vec::new(),
            http: None,
        }
    }

    /// Each handler's rate and expedited quota, as the store applies them
    /// ([`TaskStore::set_limits`](crate::TaskStore::set_limits)).
    pub fn limits(&self) -> std::collections::HashMap<String, HandlerLimits> {
        self.handlers
            .iter()
            .filter(|h| h.rate.is_some() || h.expedited_quota.is_some())
            .map(|h| {
                (
                    h.name.clone(),
                    HandlerLimits {
                        rate: h.rate,
                        expedited_quota: h.expedited_quota,
                    },
                )
            })
            .collect()
    }
}

impl HandlerConfig {
    /// The largest memory limit a run of this handler may have, whatever
    /// its kind: what the host reserves of its memory budget per run.
    pub fn memory_limit(&self) -> u64 {
        self.budget
            .max_memory_bytes
            .max(self.processing_budget.max_memory_bytes)
    }

    /// The budget of a run of `task`: this handler's for the task's kind,
    /// narrowed by the task's own overrides (which may only narrow it).
    pub fn budget_of(&self, task: &TaskInfo) -> Budget {
        let mut budget = if task.kind == TaskKind::Processing {
            self.processing_budget.clone()
        } else {
            self.budget.clone()
        };
        if let Some(t) = task.budget.timeout {
            budget.timeout = budget.timeout.min(t);
        }
        if let Some(f) = task.budget.fuel {
            budget.fuel = Some(budget.fuel.map_or(f, |h| h.min(f)));
        }
        if let Some(m) = task.budget.max_memory_bytes {
            budget.max_memory_bytes = budget.max_memory_bytes.min(m);
        }
        budget
    }
}
