//! The background-task runtime: [`Queue`] (enqueue, cancel, query, pause,
//! prune; what CLI commands use) and [`Host`], which adds the handlers and
//! the dispatcher that claims due work, runs it on the executor and applies
//! the retry policy. [`TestDriver`] runs a host on a manual clock.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, broadcast, watch};

use crate::budget::{Budget, TaskKind};
use crate::data::Data;
use crate::device::{Constraints, DeviceOverrides, DeviceState, LinuxPaths, Thresholds};
use crate::engine::{EngineConfig, EngineError, LoadError};
use crate::executor::{Executor, Handler, RunRequest, StopHandle};
use crate::kv::{Kv, KvLimits};
use crate::outcome::{RunResult, StopReason};
use crate::platform::TaskFacts;
use crate::retry::decide;
use crate::store::{Change, Claimed, Query, Selector, SqliteStore, StoreError, TaskStore};
use crate::work::{Enqueued, Millis, PeriodicFloor, TaskId, TaskInfo, TaskState, WorkError, WorkRequest};

/// Where "now" comes from.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now(&self) -> Millis;

    /// A reading of a steady clock, one that setting the wall clock does not
    /// move, taken together with [`Clock::now`]. A host compares the two to
    /// tell the wall clock jumping from time passing, and keeps every wait's
    /// length across a jump (see `docs/guarantees.md`). `None`, the default,
    /// means this clock never jumps: every move is time passing
    /// ([`ManualClock`]).
    fn steady(&self) -> Option<SteadyReading> {
        None
    }
}

/// A reading of a steady clock: see [`Clock::steady`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SteadyReading {
    /// Names the span the steady clock counts within (on Linux the boot, by
    /// its boot id); readings of different spans are never compared.
    pub epoch: Arc<str>,
    /// Milliseconds since the span began, counting time suspended.
    pub elapsed: Millis,
}

/// How long a host waits before offering a run's outcome again to a store
/// that refused it.
const FINISH_RETRY: Duration = Duration::from_millis(500);

/// How far the wall clock must move against the steady clock to count as a
/// jump. Smaller drifts (NTP slewing) are left alone until they add up.
pub const CLOCK_JUMP_THRESHOLD: Duration = Duration::from_secs(1);

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, crate::work::millis)
    }

    /// On Linux, `CLOCK_BOOTTIME` within the boot named by
    /// `/proc/sys/kernel/random/boot_id`; elsewhere `None`.
    fn steady(&self) -> Option<SteadyReading> {
        #[cfg(target_os = "linux")]
        {
            static BOOT: std::sync::OnceLock<Option<Arc<str>>> = std::sync::OnceLock::new();
            let epoch = BOOT
                .get_or_init(|| {
                    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                        .ok()
                        .map(|id| Arc::from(id.trim()))
                })
                .clone()?;
            let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
            Some(SteadyReading {
                epoch,
                elapsed: t.tv_sec * 1000 + t.tv_nsec / 1_000_000,
            })
        }
        #[cfg(not(target_os = "linux"))]
        None
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
}

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: Millis) -> Self {
        ManualClock {
            now: AtomicI64::new(start),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(crate::work::millis(by), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }
}

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
/// [`Host::start`] call it for every handler.
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
    /// ago (every [`PRUNE_EVERY`]), and so does `prune`.
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
        }
    }
}

/// A host could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine could not be built.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A handler's component could not be loaded.
    #[error("handler {name:?} ({path:?}): {source}")]
    Handler {
        /// Handler name.
        name: String,
        /// Component path.
        path: PathBuf,
        /// Why.
        source: LoadError,
    },
    /// A handler's name does not match [`HANDLER_NAME_PATTERN`].
    #[error(transparent)]
    HandlerName(#[from] HandlerNameError),
    /// Another process already runs a host on this data directory.
    #[error("another `workhost serve` is already running on {0:?}; stop it first, or use another data directory")]
    AlreadyServing(PathBuf),
    /// A handler's memory limit is more than the host's whole memory
    /// budget: none of its runs could ever start.
    #[error(
        "handler {name:?} may use {limit} bytes of memory per run, more than the host's memory budget of {budget} bytes; lower its max_memory or raise memory_budget"
    )]
    MemoryBudget {
        /// The handler.
        name: String,
        /// Its memory limit.
        limit: u64,
        /// The host's memory budget.
        budget: u64,
    },
}

/// What happened to a task, as observers see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskEvent {
    /// The task.
    pub id: TaskId,
    /// Its state after the event.
    pub state: TaskState,
    /// `scheduled`, `blocked`, `started`, `succeeded`, `failed`, `cancelled`,
    /// `retrying`, `rescheduled`, `recovered`, or `unrecorded` (the store
    /// refused a finished run's outcome; the host keeps it and offers it
    /// again until it is recorded, which its own event then reports).
    pub event: &'static str,
    /// Details: attempt, stop reason, next run time, error.
    pub detail: String,
    /// When, ms since the epoch.
    pub at: Millis,
}

/// A problem a host works around on its own but an operator should know
/// of, and its end: the store refusing the dispatcher's claims or a run's
/// outcome (a lock held too long, a full disk), then taking them again.
/// Nothing accepted is lost meanwhile. See [`Host::alerts`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostAlert {
    /// The task concerned, if one is.
    pub task: Option<TaskId>,
    /// What happened, in one line.
    pub message: String,
    /// When, ms since the epoch.
    pub at: Millis,
}

/// What a host's dispatcher has done so far (see [`Host::stats`]): enough
/// to see that an idle host takes no write lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HostStats {
    /// Times the dispatcher woke up: at each poll interval, each change it
    /// was told of, and each end of a run.
    pub polls: u64,
    /// Claim transactions it ran. Each takes the store's write lock, so
    /// the dispatcher runs one only when work of one of its handlers with a
    /// free slot is due.
    pub claims: u64,
}

/// The shared part of a host that needs no handlers: enqueue, cancel,
/// query, pause, prune. CLI commands open one on the data directory while a
/// daemon may be running on it.
#[derive(Clone)]
pub struct Queue {
    store: Arc<SqliteStore>,
    handlers: Arc<Vec<String>>,
    floor: PeriodicFloor,
    retention: Duration,
    clock: Arc<dyn Clock>,
    events: broadcast::Sender<TaskEvent>,
    wake: Arc<Notify>,
    /// Ids this process enqueued and already reported, while anyone
    /// subscribes: the dispatcher reports the others as enqueued elsewhere.
    reported: Arc<Mutex<std::collections::HashSet<TaskId>>>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("store", &self.store)
            .field("handlers", &self.handlers)
            .finish_non_exhaustive()
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("store calls do not panic")
}

impl Queue {
    /// Opens the store in `data_dir`. `handlers` are the names enqueue
    /// accepts.
    pub fn open(
        data_dir: &std::path::Path,
        handlers: Vec<String>,
        floor: PeriodicFloor,
        retention: Duration,
    ) -> Result<Queue, StoreError> {
        Ok(Queue {
            store: SqliteStore::open(data_dir)?,
            handlers: Arc::new(handlers),
            floor,
            retention,
            clock: Arc::new(SystemClock),
            events: broadcast::channel(4096).0,
            wake: Arc::new(Notify::new()),
            reported: Arc::new(Mutex::new(std::collections::HashSet::new())),
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<SqliteStore> {
        &self.store
    }

    /// Now, by the queue's clock.
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// Enqueues work; durable when this returns.
    pub async fn enqueue(&self, request: WorkRequest) -> Result<Enqueued, WorkError> {
        if !self.handlers.contains(&request.handler) {
            return Err(WorkError::UnknownHandler(request.handler));
        }
        let (request, warnings) = request.checked(&self.floor)?;
        let now = self.now();
        // The events are published in the writer thread right after the
        // commit, before any later write: a task is always `scheduled`
        // before a dispatcher can claim it and report it `started`.
        let (events, clock, reported) = (self.events.clone(), self.clock.clone(), self.reported.clone());
        // While anyone watches, this process's ids are noted inside the
        // transaction, so the dispatcher never takes them for another
        // process's enqueues.
        let watched = events.receiver_count() > 0;
        let before_commit: crate::store::CommitHook<(Enqueued, Vec<Change>)> =
            Box::new(move |(_, changes): &(Enqueued, Vec<Change>)| {
                if watched {
                    reported
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(changes.iter().map(|c| c.id));
                }
            });
        let on_commit: crate::store::CommitHook<(Enqueued, Vec<Change>)> =
            Box::new(move |(_, changes): &(Enqueued, Vec<Change>)| {
                publish(&events, clock.now(), changes, |c| match c.state {
                    TaskState::Blocked => ("blocked", String::new()),
                    TaskState::Cancelled => ("cancelled", "replaced by new unique work".into()),
                    TaskState::Failed => ("failed", "work it runs after failed".into()),
                    _ => ("scheduled", String::new()),
                });
            });
        let (mut enqueued, _) = self.store.enqueue_async(request, now, before_commit, on_commit).await?;
        enqueued.warnings = warnings;
        self.wake.notify_one();
        Ok(enqueued)
    }

    /// Cancels work (and its dependents); returns the ids cancelled.
    pub async fn cancel(&self, selector: Selector) -> Result<Vec<TaskId>, StoreError> {
        let (store, now) = (self.store.clone(), self.now());
        let changes = blocking(move || store.cancel(&selector, now)).await?;
        self.publish(&changes, |_| ("cancelled", String::new()));
        self.wake.notify_one();
        Ok(changes.iter().map(|c| c.id).collect())
    }

    /// One task with its attempt history.
    pub async fn get(&self, id: TaskId) -> Result<Option<TaskInfo>, StoreError> {
        let store = self.store.clone();
        blocking(move || store.get(id)).await
    }

    /// Tasks matching the filter.
    pub async fn query(&self, query: Query) -> Result<Vec<TaskInfo>, StoreError> {
        let store = self.store.clone();
        blocking(move || store.query(&query)).await
    }

    /// How many tasks are in each state.
    pub async fn count_by_state(&self) -> Result<HashMap<TaskState, usize>, StoreError> {
        let store = self.store.clone();
        blocking(move || store.count_by_state()).await
    }

    /// Pauses: nothing new starts, in this process or any other on the
    /// store, until `resume`.
    pub async fn pause(&self) -> Result<(), StoreError> {
        let store = self.store.clone();
        blocking(move || store.set_paused(true)).await
    }

    /// Resumes after `pause`.
    pub async fn resume(&self) -> Result<(), StoreError> {
        let store = self.store.clone();
        blocking(move || store.set_paused(false)).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Whether the store is paused.
    pub async fn is_paused(&self) -> Result<bool, StoreError> {
        let store = self.store.clone();
        blocking(move || store.paused()).await
    }

    /// Removes finished work older than the retention period (`all`:
    /// every finished task); returns how many.
    pub async fn prune(&self, all: bool) -> Result<usize, StoreError> {
        let before = if all {
            Millis::MAX
        } else {
            self.now().saturating_sub(crate::work::millis(self.retention))
        };
        let store = self.store.clone();
        blocking(move || store.prune(before)).await
    }

    /// A stream of state changes made by this process.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.events.subscribe()
    }

    fn publish(&self, changes: &[Change], describe: impl Fn(&Change) -> (&'static str, String)) {
        let at = self.now();
        for c in changes {
            let (event, detail) = describe(c);
            let _ = self.events.send(TaskEvent {
                id: c.id,
                state: c.state,
                event,
                detail,
                at,
            });
        }
    }
}

fn publish(
    events: &broadcast::Sender<TaskEvent>,
    at: Millis,
    changes: &[Change],
    describe: impl Fn(&Change) -> (&'static str, String),
) {
    for c in changes {
        let (event, detail) = describe(c);
        let _ = events.send(TaskEvent {
            id: c.id,
            state: c.state,
            event,
            detail,
            at,
        });
    }
}

/// A run going on.
struct Running {
    handler: String,
    stop: StopHandle,
    constraints: Constraints,
    /// The memory limit of the run, reserved from the host's budget.
    memory: u64,
}

/// A run's place in `Inner::running`: given back when dropped, so a run
/// whose task panics still frees its slot and its memory.
struct Slot {
    inner: Arc<Inner>,
    id: TaskId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        // A freed slot may let waiting work start.
        self.inner.queue.wake.notify_one();
    }
}

/// Reads the device state a host starts from.
fn read_device(config: &DeviceConfig, data_dir: &std::path::Path) -> DeviceState {
    if config.read_machine {
        DeviceState::read_linux(&LinuxPaths::default(), data_dir, &config.thresholds)
    } else {
        DeviceState::default()
    }
}

struct LoadedHandler {
    handler: Handler,
    config: HandlerConfig,
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

struct Inner {
    queue: Queue,
    /// Every run task of the host: shutdown waits on it instead of polling.
    runs: tokio_util::task::TaskTracker,
    /// See [`HostConfig::memory_budget`].
    memory_budget: u64,
    handlers: HashMap<String, LoadedHandler>,
    /// The handlers' names, sorted: the work this host may claim.
    handler_names: Vec<String>,
    max_concurrency: usize,
    poll: Duration,
    running: Mutex<HashMap<TaskId, Running>>,
    /// Odd while the dispatcher claims (from before its claim until the
    /// claimed tasks are in `running`), even otherwise: a committed claim
    /// is no longer due in the store, and not yet in `running`.
    claim_epoch: AtomicU64,
    shutting_down: watch::Sender<bool>,
    /// The device state constraints are checked against (readings with the
    /// overrides applied).
    device: watch::Sender<DeviceState>,
    /// The last readings (before overrides) and the overrides.
    device_source: Mutex<(DeviceState, DeviceOverrides)>,
    device_config: DeviceConfig,
    data_dir: PathBuf,
    /// The wall clock minus the steady clock when last recorded in the
    /// store (see [`Inner::follow_clock`]).
    clock_reading: Mutex<Option<Millis>>,
    alerts: broadcast::Sender<HostAlert>,
    /// When the dispatcher next looks for finished work past the retention
    /// period (clock ms).
    next_prune_at: AtomicI64,
    /// [`HostStats::polls`].
    polls: AtomicU64,
    /// [`HostStats::claims`].
    claims: AtomicU64,
    _lock: std::fs::File,
}

/// A running host: the queue plus handlers and the dispatcher.
pub struct Host {
    inner: Arc<Inner>,
    /// Taken by `shutdown`.
    dispatcher: Option<tokio::task::JoinHandle<()>>,
    /// The device-state refresher, when the host reads the machine.
    refresher: Option<tokio::task::JoinHandle<()>>,
    grace: Duration,
}

/// A host dropped without [`Host::shutdown`] stops in the background,
/// without grace: it takes no new work, its running work is stopped
/// (`host-shutdown`, re-enqueued, as at the end of a shutdown's grace), and
/// its data directory is free once those runs have ended.
impl Drop for Host {
    fn drop(&mut self) {
        // A shutdown that completed took the dispatcher, and nothing runs.
        // One that did not (its future dropped during the grace) set the
        // flag but may have stopped nothing yet: stop what runs. Stopping a
        // run twice keeps the first reason.
        if self.dispatcher.is_some() {
            if !self.inner.shutting_down.send_replace(true) {
                self.inner.queue.wake.notify_one();
            }
            let ids = self.running();
            self.inner.stop_running(&ids, StopReason::HostShutdown);
        }
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("queue", &self.inner.queue)
            .finish_non_exhaustive()
    }
}

impl Host {
    /// Starts a host on the system clock.
    pub async fn start(config: HostConfig) -> Result<Host, HostError> {
        Self::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Starts a host: opens the store, loads (or loads from the cache) every
    /// handler, re-enqueues work a dead host left running, and starts
    /// dispatching.
    pub async fn start_with_clock(config: HostConfig, clock: Arc<dyn Clock>) -> Result<Host, HostError> {
        for h in &config.handlers {
            check_handler_name(&h.name)?;
            if h.memory_limit() > config.memory_budget {
                return Err(HostError::MemoryBudget {
                    name: h.name.clone(),
                    limit: h.memory_limit(),
                    budget: config.memory_budget,
                });
            }
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|e| StoreError::DataDir {
            path: config.data_dir.clone(),
            detail: e.to_string(),
        })?;
        let lock_path = config.data_dir.join("serve.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::DataDir {
                path: config.data_dir.clone(),
                detail: e.to_string(),
            })?;
        if lock.try_lock().is_err() {
            return Err(HostError::AlreadyServing(config.data_dir.clone()));
        }
        let names = config.handlers.iter().map(|h| h.name.clone()).collect();
        let mut queue = Queue::open(&config.data_dir, names, config.periodic_floor, config.retention)?;
        queue.clock = clock;

        let handler_configs = config.handlers.clone();
        // The instance pool holds what the host may run at once, no more:
        // the dispatcher never starts more runs than `max_concurrency`.
        let engine = EngineConfig {
            max_concurrent_runs: u32::try_from(config.max_concurrency.max(1)).unwrap_or(u32::MAX),
            ..config.engine.clone()
        };
        let handlers = blocking(move || -> Result<HashMap<String, LoadedHandler>, HostError> {
            let metered = Executor::new(EngineConfig {
                fuel: true,
                ..engine.clone()
            })?;
            let mut unmetered = None;
            let mut out = HashMap::new();
            for hc in handler_configs {
                let executor = if hc.fuel {
                    &metered
                } else {
                    if unmetered.is_none() {
                        unmetered = Some(Executor::new(EngineConfig {
                            fuel: false,
                            ..engine.clone()
                        })?);
                    }
                    unmetered.as_ref().expect("just set")
                };
                let handler = executor.load_file(&hc.component).map_err(|source| HostError::Handler {
                    name: hc.name.clone(),
                    path: hc.component.clone(),
                    source,
                })?;
                out.insert(hc.name.clone(), LoadedHandler { handler, config: hc });
            }
            Ok(out)
        })
        .await?;

        let (device_config, data_dir) = (config.device.clone(), config.data_dir.clone());
        let readings = blocking(move || read_device(&device_config, &data_dir)).await;
        let mut handler_names: Vec<String> = handlers.keys().cloned().collect();
        handler_names.sort();
        let inner = Arc::new(Inner {
            queue,
            handlers,
            handler_names,
            max_concurrency: config.max_concurrency.max(1),
            memory_budget: config.memory_budget,
            runs: tokio_util::task::TaskTracker::new(),
            poll: config.poll_interval,
            running: Mutex::new(HashMap::new()),
            claim_epoch: AtomicU64::new(0),
            shutting_down: watch::channel(false).0,
            device: watch::channel(config.device.overrides.apply(readings.clone())).0,
            device_source: Mutex::new((readings, config.device.overrides)),
            device_config: config.device.clone(),
            data_dir: config.data_dir.clone(),
            clock_reading: Mutex::new(None),
            alerts: broadcast::channel(256).0,
            next_prune_at: AtomicI64::new(Millis::MIN),
            polls: AtomicU64::new(0),
            claims: AtomicU64::new(0),
            _lock: lock,
        });
        // Before recovery, so work recovered as due now is not moved by a
        // jump made while no host ran.
        let now = inner.follow_clock().await;
        let store = inner.queue.store.clone();
        let recovered = blocking(move || store.recover(now)).await?;
        inner.queue.publish(&recovered, |c| {
            ("recovered", format!("was running when its host died; now {}", c.state))
        });
        let refresher = inner
            .device_config
            .read_machine
            .then(|| tokio::spawn(refresh_device(inner.clone())));
        let dispatcher = tokio::spawn(dispatch(inner.clone()));
        Ok(Host {
            inner,
            dispatcher: Some(dispatcher),
            refresher,
            grace: config.shutdown_grace,
        })
    }

    /// The queue: enqueue, cancel, query, pause, subscribe.
    pub fn queue(&self) -> &Queue {
        &self.inner.queue
    }

    /// A stream of [`HostAlert`]s: the store refusing this host's writes,
    /// and taking them again. Separate from [`Queue::subscribe`], so
    /// listening costs the dispatcher nothing; `workhost serve` prints each
    /// alert to stderr.
    pub fn alerts(&self) -> broadcast::Receiver<HostAlert> {
        self.inner.alerts.subscribe()
    }

    /// What the dispatcher has done so far.
    pub fn stats(&self) -> HostStats {
        HostStats {
            polls: self.inner.polls.load(Ordering::Relaxed),
            claims: self.inner.claims.load(Ordering::Relaxed),
        }
    }

    /// Cancels work; running work stops within about one epoch tick.
    pub async fn cancel(&self, selector: Selector) -> Result<Vec<TaskId>, StoreError> {
        let ids = self.inner.queue.cancel(selector).await?;
        self.inner.stop_running(&ids, StopReason::Cancelled);
        Ok(ids)
    }

    /// The device state constraints are checked against now.
    pub fn device_state(&self) -> DeviceState {
        self.inner.device.borrow().clone()
    }

    /// Replaces the overrides of the device state (the embedding program
    /// knows, say, that the network is metered). Work whose constraints now
    /// hold starts; running work whose constraints no longer hold stops
    /// with `constraint-lost` and is retried.
    pub fn set_device_overrides(&self, overrides: DeviceOverrides) {
        let mut source = self.inner.device_source.lock().unwrap_or_else(|e| e.into_inner());
        source.1 = overrides;
        let state = overrides.apply(source.0.clone());
        drop(source);
        self.inner.set_device(state);
    }

    /// Reads the machine again now (instead of at the next refresh).
    pub async fn refresh_device_state(&self) {
        self.inner.refresh_device().await;
    }

    /// Ids of the tasks running now.
    pub fn running(&self) -> Vec<TaskId> {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// Takes no new work, lets running work finish within the grace period,
    /// then stops it (`host-shutdown`, re-enqueued) and returns once every
    /// task of the host has ended, so the data directory is free for the
    /// next host at once.
    pub async fn shutdown(mut self) {
        // `send_replace`, not `send`: `send` stores nothing while no
        // receiver exists, which is so until the dispatcher first runs, and
        // a shutdown that early would then wait on it forever.
        self.inner.shutting_down.send_replace(true);
        self.inner.queue.wake.notify_one();
        // Running work gets the grace period to end on its own. The
        // tracker's `wait` ends once it is closed and every run has ended;
        // the dispatcher, which alone starts runs, starts none after seeing
        // the flag, and a run it was starting is stopped below.
        self.inner.runs.close();
        let _ = tokio::time::timeout(self.grace, self.inner.runs.wait()).await;
        let ids = self.running();
        self.inner.stop_running(&ids, StopReason::HostShutdown);
        if let Some(dispatcher) = self.dispatcher.take() {
            let _ = dispatcher.await;
        }
        // The refresher holds the host (and with it the data directory's
        // lock) until it sees the shutdown, which may be after a reading
        // of the machine in progress.
        if let Some(refresher) = self.refresher.take() {
            let _ = refresher.await;
        }
    }
}

impl Inner {
    fn alert(&self, task: Option<TaskId>, message: String) {
        let _ = self.alerts.send(HostAlert {
            task,
            message,
            at: self.queue.now(),
        });
    }

    /// Keeps every wait's length when the wall clock jumps: compares the
    /// wall clock with the clock's steady reading and, when they moved
    /// apart by [`CLOCK_JUMP_THRESHOLD`] or more since the store last saw
    /// them, moves every unfinished task's due time by the jump
    /// ([`TaskStore::follow_clock`]). Called when the host starts (a jump
    /// while no host ran, on the same boot) and before every claim. Returns
    /// the wall clock it compared, the "now" a claim must use: a jump after
    /// that reading is seen by the next call, before the next claim.
    async fn follow_clock(&self) -> Millis {
        let now = self.queue.now();
        let Some(steady) = self.queue.clock.steady() else {
            return now;
        };
        let reading = now - steady.elapsed;
        let threshold = crate::work::millis(CLOCK_JUMP_THRESHOLD);
        let last = *self.clock_reading.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|l| (reading - l).abs() < threshold) {
            return now;
        }
        let store = self.queue.store.clone();
        let Ok(jump) = blocking(move || store.follow_clock(&steady.epoch, reading, threshold)).await else {
            // Tried again before the next claim.
            return now;
        };
        *self.clock_reading.lock().unwrap_or_else(|e| e.into_inner()) = Some(reading);
        if jump.by != 0 {
            let (way, by) = if jump.by > 0 {
                ("forward", jump.by)
            } else {
                ("backward", -jump.by)
            };
            // Said to the second: the two clocks are read a moment apart.
            let by = crate::units::format_duration(Duration::from_secs(((by + 500) / 1000) as u64));
            self.queue.publish(&jump.moved, |_| {
                (
                    "rescheduled",
                    format!("the wall clock jumped {way} by {by}; the task's wait keeps its length"),
                )
            });
        }
        now
    }

    /// Publishes a new device state: wakes the dispatcher, and stops running
    /// work whose constraints no longer hold.
    fn set_device(&self, state: DeviceState) {
        // Publish and scan under the lock the dispatcher holds while it
        // registers a claimed run and checks it against the device state:
        // a run is either seen here or sees the new state there.
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let lost: Vec<TaskId> = running
            .iter()
            .filter(|(_, r)| !r.constraints.hold(&state))
            .map(|(id, _)| *id)
            .collect();
        self.device.send_replace(state);
        for id in &lost {
            running[id].stop.stop(StopReason::ConstraintLost);
        }
        drop(running);
        self.queue.wake.notify_one();
    }

    async fn refresh_device(&self) {
        if !self.device_config.read_machine {
            return;
        }
        let (config, dir) = (self.device_config.clone(), self.data_dir.clone());
        let readings = blocking(move || read_device(&config, &dir)).await;
        let mut source = self.device_source.lock().unwrap_or_else(|e| e.into_inner());
        source.0 = readings;
        let state = source.1.apply(source.0.clone());
        drop(source);
        if state != *self.device.borrow() {
            self.set_device(state);
        }
    }

    fn stop_running(&self, ids: &[TaskId], reason: StopReason) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            if let Some(r) = running.get(id) {
                r.stop.stop(reason);
            }
        }
    }

    /// Runs that may start now: over all handlers, and per handler. Memory
    /// counts too: no more runs start than fit in what is left of the
    /// memory budget at the largest memory limit among the handlers with a
    /// free slot.
    fn free_slots(&self) -> (usize, HashMap<String, usize>) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut per: HashMap<String, usize> = self
            .handlers
            .iter()
            .map(|(n, h)| (n.clone(), h.config.concurrency))
            .collect();
        let mut reserved = 0u64;
        for r in running.values() {
            reserved = reserved.saturating_add(r.memory);
            if let Some(n) = per.get_mut(&r.handler) {
                *n = n.saturating_sub(1);
            }
        }
        let largest = per
            .iter()
            .filter(|(_, free)| **free > 0)
            .filter_map(|(n, _)| self.handlers.get(n))
            .map(|h| h.config.memory_limit())
            .max()
            .unwrap_or(1)
            .max(1);
        let fit = usize::try_from(self.memory_budget.saturating_sub(reserved) / largest).unwrap_or(usize::MAX);
        (self.max_concurrency.saturating_sub(running.len()).min(fit), per)
    }

    /// Raises one alert per handler name for due work that names a handler
    /// this host lacks (removed from the manifest, or enqueued under
    /// another): the host never claims it, so it waits, holding up nothing,
    /// until a host with that handler runs or it is cancelled. `alerted`
    /// holds the names already reported.
    async fn alert_waiting_for_handler(&self, now: Millis, alerted: &mut Vec<String>) {
        let store = self.queue.store.clone();
        let mut known = self.handler_names.clone();
        known.extend(alerted.iter().cloned());
        let Ok(waits) = blocking(move || store.waiting_for_handler(&known, now)).await else {
            // Looked at again at the next check.
            return;
        };
        for w in waits {
            let tasks = if w.due == 1 {
                format!("task {} is due", w.first)
            } else {
                format!("{} tasks are due (the oldest is task {})", w.due, w.first)
            };
            self.alert(
                Some(w.first),
                format!(
                    "{tasks} for handler {:?}, which this host does not have; they wait until a host with that \
                     handler serves this store: add it to the manifest, or cancel them",
                    w.handler
                ),
            );
            alerted.push(w.handler);
        }
    }

    /// Deletes finished work past the retention period (SPEC section 5),
    /// if a read finds any, so an idle store takes no write for it; then
    /// sets when to look next ([`PRUNE_EVERY`] later).
    async fn prune_finished(&self, now: Millis) {
        let before = now.saturating_sub(crate::work::millis(self.queue.retention));
        let store = self.queue.store.clone();
        let _ = blocking(move || match store.oldest_finished() {
            Ok(Some(oldest)) if oldest < before => store.prune(before).map(|_| ()),
            other => other.map(|_| ()),
        })
        .await;
        self.next_prune_at
            .store(now.saturating_add(crate::work::millis(PRUNE_EVERY)), Ordering::Release);
    }

    /// When work of the handlers with a free slot in `per` is next due;
    /// `None` if none is or the store is paused. A failed read says "now",
    /// so the claim tries and reports what the store says.
    async fn next_due(&self, per: &HashMap<String, usize>) -> Option<Millis> {
        let store = self.queue.store.clone();
        let device = self.device.borrow().clone();
        let handlers: Vec<String> = per.iter().filter(|(_, n)| **n > 0).map(|(h, _)| h.clone()).collect();
        let now = self.queue.now();
        let (paused, due) = blocking(move || (store.paused(), store.next_due(&handlers, &device))).await;
        match (paused, due) {
            (Ok(true), _) => None,
            (Ok(false), Ok(due)) => due,
            _ => Some(now),
        }
    }

    /// Whether nothing runs and nothing is due now whose constraints hold
    /// (or the host is paused).
    async fn idle(&self) -> bool {
        // No claim may start or end while `running` and the store are read:
        // a claimed task is in neither while its claim is under way.
        let epoch = self.claim_epoch.load(Ordering::Acquire);
        if epoch % 2 == 1 || !self.running.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            return false;
        }
        if self.queue.now() >= self.next_prune_at.load(Ordering::Acquire) {
            return false;
        }
        let store = self.queue.store.clone();
        let device = self.device.borrow().clone();
        let handlers = self.handler_names.clone();
        let (paused, due) = blocking(move || (store.paused(), store.next_due(&handlers, &device))).await;
        let idle = paused.unwrap_or(false) || due.ok().flatten().is_none_or(|d| d > self.queue.now());
        idle && self.claim_epoch.load(Ordering::Acquire) == epoch
    }
}

/// A streak of store writes refused in a row: its first refusal and its end
/// are what an operator is told of.
#[derive(Default)]
struct Refusals(u64);

impl Refusals {
    /// Counts a refusal; true if it starts a streak.
    fn refused(&mut self) -> bool {
        self.0 += 1;
        self.0 == 1
    }

    /// Ends a streak: how many writes it refused, if it was one.
    fn ended(&mut self) -> Option<u64> {
        (self.0 > 0).then(|| std::mem::take(&mut self.0))
    }
}

/// A claim under way: makes `Inner::claim_epoch` odd until dropped, even
/// if the dispatcher unwinds in between.
struct Claiming<'a>(&'a AtomicU64);

impl<'a> Claiming<'a> {
    fn begin(epoch: &'a AtomicU64) -> Claiming<'a> {
        epoch.fetch_add(1, Ordering::AcqRel);
        Claiming(epoch)
    }
}

impl Drop for Claiming<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// How often, by the host's clock, the dispatcher prunes finished work
/// past the retention period.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How often the dispatcher looks for due work of handlers it lacks.
const UNKNOWN_HANDLER_CHECK: Duration = Duration::from_secs(1);

/// The dispatcher: claims due work when slots are free, starts runs, and
/// notices other processes' cancels and pauses by polling the store.
///
/// It takes the write lock only to claim, and claims only when work is due:
/// at each wake it reads `PRAGMA data_version` (a read, no lock), and only
/// after a change (another process's commit or this one's), a wake (an
/// enqueue, a run's end, a new device state, a resume) or its due time
/// does it read again, from the reader connection, when the next work of
/// its handlers with a free slot is due and whether the store is paused.
/// Between those it sleeps until that due time or the poll interval,
/// whichever is first.
async fn dispatch(inner: Arc<Inner>) {
    let mut shutting_down = inner.shutting_down.subscribe();
    let runs = inner.runs.clone();
    let mut last_change = u64::MAX;
    let mut last_seen: Option<TaskId> = None;
    let mut claims_refused = Refusals::default();
    // Handlers named by due work that this host lacks, already alerted,
    // and when that was last looked at: first a second after the start, so
    // whoever subscribes to the alerts as the host starts hears of them.
    let mut alerted: Vec<String> = Vec::new();
    let mut handlers_checked = tokio::time::Instant::now();
    // When work of this host's handlers with a free slot is next due (None:
    // none, or paused), as last read; `look` asks for a new read.
    let mut due: Option<Millis> = None;
    let mut look = true;
    let mut looked_at = u64::MAX;
    loop {
        if *shutting_down.borrow() {
            break;
        }
        inner.polls.fetch_add(1, Ordering::Relaxed);
        let now = inner.follow_clock().await;
        let store = inner.queue.store.clone();
        // A read of SQLite's in-memory change counter: microseconds, so it
        // runs inline rather than on the blocking pool.
        let counter = store.change_counter().unwrap_or(0);
        let (free, per) = inner.free_slots();
        if counter != looked_at || due.is_some_and(|d| d <= now) {
            look = true;
        }
        if look && free > 0 {
            looked_at = counter;
            look = false;
            due = inner.next_due(&per).await;
        }
        let claiming = Claiming::begin(&inner.claim_epoch);
        let claimed = if free > 0 && due.is_some_and(|d| d <= now) {
            inner.claims.fetch_add(1, Ordering::Relaxed);
            let device = inner.device.borrow().clone();
            let claimed = store.claim_async(now, free, per, device).await;
            // Look again at once: what this claim left may be due too.
            look = true;
            claimed
        } else {
            Ok(Vec::new())
        };
        // A refused claim is tried again at the next wake or poll; the
        // first refusal of a streak and its end are alerts.
        match &claimed {
            Err(e) => {
                if claims_refused.refused() {
                    inner.alert(
                        None,
                        format!(
                            "the store refused the dispatcher's claim ({e}); no work starts until it takes writes \
                             again (tried every {} ms)",
                            inner.poll.as_millis()
                        ),
                    );
                }
            }
            Ok(_) => {
                if let Some(n) = claims_refused.ended() {
                    inner.alert(
                        None,
                        format!("the store takes the dispatcher's claims again, after {n} refused"),
                    );
                }
            }
        }
        // Report tasks other processes enqueued before any of them is
        // reported started.
        if inner.queue.events.receiver_count() > 0
            && (counter != last_change || claimed.as_ref().is_ok_and(|c| !c.is_empty()))
        {
            last_seen = Some(report_foreign_enqueues(&inner, last_seen).await);
        }
        for c in claimed.unwrap_or_default() {
            let stop = StopHandle::new();
            let memory = inner
                .handlers
                .get(&c.info.handler)
                .map_or(0, |h| h.config.budget_of(&c.info).max_memory_bytes);
            let running = Running {
                handler: c.info.handler.clone(),
                stop: stop.clone(),
                constraints: c.info.constraints,
                memory,
            };
            {
                // The claim used a snapshot of the device state; if it changed
                // since, the run stops at once (see `Inner::set_device`).
                // Likewise a shutdown (or drop) that came during the claim:
                // it set the flag before taking this lock to stop what runs,
                // so each run is stopped either by it or here.
                let mut all = inner.running.lock().unwrap_or_else(|e| e.into_inner());
                if !c.info.constraints.hold(&inner.device.borrow()) {
                    stop.stop(StopReason::ConstraintLost);
                }
                if *inner.shutting_down.borrow() {
                    stop.stop(StopReason::HostShutdown);
                }
                all.insert(c.info.id, running);
            }
            runs.spawn(run_task(inner.clone(), c, stop));
        }
        drop(claiming);
        if now >= inner.next_prune_at.load(Ordering::Acquire) {
            inner.prune_finished(now).await;
        }
        // A look at due work of unknown handlers every second: one read of
        // an index seek per handler of enqueued work.
        if handlers_checked.elapsed() >= UNKNOWN_HANDLER_CHECK {
            handlers_checked = tokio::time::Instant::now();
            inner.alert_waiting_for_handler(now, &mut alerted).await;
        }
        if counter != last_change {
            last_change = counter;
            notice_foreign_cancels(&inner).await;
        }
        // A run that ends wakes the dispatcher through its `Slot`.
        let nap = match due {
            Some(d) if d > now && !look => inner.poll.min(Duration::from_millis((d - now) as u64)),
            _ => inner.poll,
        };
        tokio::select! {
            () = inner.queue.wake.notified() => look = true,
            () = tokio::time::sleep(nap) => {}
            _ = shutting_down.changed() => {}
        }
    }
    runs.close();
    runs.wait().await;
}

/// Reports tasks another process enqueued since `last_seen`; the first call
/// only finds where to start. This process's own enqueues are noted in
/// `reported` inside their transaction, so they are never reported twice.
async fn report_foreign_enqueues(inner: &Arc<Inner>, last_seen: Option<TaskId>) -> TaskId {
    let store = inner.queue.store.clone();
    let query = match last_seen {
        Some(after) => Query {
            after_id: Some(after),
            limit: Some(1000),
            ..Query::default()
        },
        None => return blocking(move || store.last_id()).await.unwrap_or(0),
    };
    let Ok(tasks) = blocking(move || store.query(&query)).await else {
        return last_seen.unwrap_or(0);
    };
    let mut reported = inner.queue.reported.lock().unwrap_or_else(|e| e.into_inner());
    let changes: Vec<Change> = tasks
        .iter()
        .filter(|t| !reported.remove(&t.id))
        .map(|t| Change {
            id: t.id,
            state: t.state,
        })
        .collect();
    let last = tasks.last().map_or(last_seen.unwrap_or(0), |t| t.id);
    // Ids at or below `last` are never looked at again.
    reported.retain(|id| *id > last);
    drop(reported);
    inner.queue.publish(&changes, |c| {
        let event = if c.state == TaskState::Blocked {
            "blocked"
        } else {
            "scheduled"
        };
        (event, "enqueued by another process".into())
    });
    last
}

/// Reads the machine every `refresh` until shutdown.
async fn refresh_device(inner: Arc<Inner>) {
    let mut shutting_down = inner.shutting_down.subscribe();
    loop {
        tokio::select! {
            () = tokio::time::sleep(inner.device_config.refresh) => inner.refresh_device().await,
            // `wait_for`, not `changed`: a shutdown sent before this task
            // first ran is already the current value, and `changed` would
            // wait for a later one that never comes.
            _ = async { shutting_down.wait_for(|stopping| *stopping).await.is_ok() } => return,
        }
    }
}

/// Stops running work that another process cancelled.
async fn notice_foreign_cancels(inner: &Arc<Inner>) {
    let ids: Vec<TaskId> = inner
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .copied()
        .collect();
    if ids.is_empty() {
        return;
    }
    let store = inner.queue.store.clone();
    let q = Query {
        ids: Some(ids),
        ..Query::default()
    };
    if let Ok(tasks) = blocking(move || store.query(&q)).await {
        let cancelled: Vec<TaskId> = tasks
            .iter()
            .filter(|t| t.state == TaskState::Cancelled)
            .map(|t| t.id)
            .collect();
        inner.stop_running(&cancelled, StopReason::Cancelled);
    }
}

async fn run_task(inner: Arc<Inner>, claimed: Claimed, stop: StopHandle) {
    let _slot = Slot {
        inner: inner.clone(),
        id: claimed.info.id,
    };
    let info = &claimed.info;
    let queue = &inner.queue;
    let attempt = info.run_attempt_count;
    let _ = queue.events.send(TaskEvent {
        id: info.id,
        state: TaskState::Running,
        event: "started",
        detail: format!("{}/{} attempt {attempt}", info.handler, info.task),
        at: queue.now(),
    });
    let mut progress = None;
    let outcome = match inner.handlers.get(&info.handler) {
        Some(loaded) => {
            let budget = loaded.config.budget_of(info);
            let store = queue.store.clone();
            let id = info.id;
            progress = Some(crate::progress::ProgressWriter::new(Arc::new(move |d: Data| {
                let store = store.clone();
                Box::pin(async move {
                    let _ = store.set_progress_async(id, attempt, &d).await;
                })
            })));
            let request = RunRequest {
                task: TaskFacts {
                    id: info.id.to_string(),
                    name: info.task.clone(),
                    unique_name: info.unique_name.clone(),
                    tags: info.tags.clone(),
                    kind: info.kind,
                    attempt,
                },
                input: info.input.clone(),
                budget,
                kv: Kv::new(queue.store.kv(), info.handler.clone(), loaded.config.kv_limits),
                progress: progress.as_ref().map(|p| p.sink()),
                stop,
                grants: loaded.config.grants.clone(),
                resolver: Arc::new(crate::outbound::SystemResolver),
            };
            loaded.handler.run(request).await
        }
        None => crate::outcome::RunOutcome {
            result: RunResult::Failed(crate::outcome::Failure::Error(format!(
                "no handler named {:?} in this host's manifest",
                info.handler
            ))),
            duration: Duration::ZERO,
            fuel_consumed: None,
            peak_memory_bytes: 0,
            log: Vec::new(),
        },
    };
    if let Some(p) = &progress {
        p.finish().await;
    }
    let now = queue.now();
    let transition = decide(&claimed.retry_facts(), &outcome.result, now);
    let next = crate::units::format_rfc3339(transition.next_run_at);
    let why = match (&transition.stop_reason, &transition.error) {
        (Some(r), Some(e)) => format!("{r}: {e}"),
        (Some(r), None) => r.clone(),
        (None, Some(e)) => e.clone(),
        (None, None) => String::new(),
    };
    // Periodic work that moved on to its next period resets its attempts.
    let next_period = info.kind == TaskKind::Periodic && transition.attempts == 0;
    let id = info.id;
    let mut refused = Refusals::default();
    let changes = loop {
        match queue
            .store
            .finish_async(id, attempt, transition.clone(), &outcome, now)
            .await
        {
            Ok(changes) => {
                if let Some(n) = refused.ended() {
                    inner.alert(
                        Some(id),
                        format!("its run's outcome is recorded, after {n} refused writes"),
                    );
                }
                break changes;
            }
            // The store refused the write (a full disk, a lock held too
            // long). The outcome stays here and is offered again until the
            // store takes it, so it is recorded once there is room; the task
            // keeps its slot meanwhile, and the first refusal is reported.
            // A host stopped first leaves the task RUNNING, and the next
            // host recovers and reruns it (at least once).
            Err(e) if !*inner.shutting_down.borrow() => {
                if refused.refused() {
                    let change = Change {
                        id,
                        state: TaskState::Running,
                    };
                    let why = format!(
                        "the store refused this run's outcome ({e}); it is kept and offered again every {} ms",
                        FINISH_RETRY.as_millis()
                    );
                    inner.alert(Some(id), why.clone());
                    queue.publish(&[change], |_| ("unrecorded", why.clone()));
                }
                tokio::time::sleep(FINISH_RETRY).await
            }
            Err(_) => break Vec::new(),
        }
    };
    inner.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    queue.publish(&changes, |c| {
        if c.id != id {
            return match c.state {
                TaskState::Enqueued => ("scheduled", "the work it runs after succeeded".into()),
                s => (
                    if s == TaskState::Failed { "failed" } else { "cancelled" },
                    "the work it runs after ended".into(),
                ),
            };
        }
        match c.state {
            TaskState::Succeeded => ("succeeded", String::new()),
            TaskState::Failed => ("failed", why.clone()),
            TaskState::Cancelled => ("cancelled", String::new()),
            TaskState::Enqueued if next_period => ("rescheduled", format!("next period at {next}")),
            _ if why.is_empty() => ("retrying", format!("next attempt at {next}")),
            _ => ("retrying", format!("{why}; next attempt at {next}")),
        }
    });
    queue.wake.notify_one();
}

/// Runs a host on a manual clock so tests control time and delays
/// (WorkManager's TestDriver): nothing becomes due until the test says so.
pub struct TestDriver {
    host: Host,
    clock: Arc<ManualClock>,
}

impl std::fmt::Debug for TestDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDriver")
            .field("now", &self.clock.now())
            .finish_non_exhaustive()
    }
}

impl TestDriver {
    /// Starts a host on a manual clock reading 2026-01-01T00:00:00Z. The
    /// device state does not come from the machine: it starts as
    /// "everything available" and changes only through [`Self::set_device`].
    pub async fn start(mut config: HostConfig) -> Result<TestDriver, HostError> {
        config.device.read_machine = false;
        let clock = Arc::new(ManualClock::new(1_767_225_600_000));
        let host = Host::start_with_clock(config, clock.clone()).await?;
        Ok(TestDriver { host, clock })
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The queue.
    pub fn queue(&self) -> &Queue {
        self.host.queue()
    }

    /// Now, on the manual clock.
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// Moves the clock forward; work that becomes due starts.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.queue().wake.notify_one();
    }

    /// Makes a task's initial delay met: it is due now.
    pub async fn set_initial_delay_met(&self, id: TaskId) -> Result<(), WorkError> {
        let (store, now) = (self.queue().store.clone(), self.now());
        blocking(move || store.make_due(id, now)).await?;
        self.queue().wake.notify_one();
        Ok(())
    }

    /// Makes a periodic task's period delay met: its next run is due now.
    pub async fn set_period_delay_met(&self, id: TaskId) -> Result<(), WorkError> {
        self.set_initial_delay_met(id).await
    }

    /// Sets the device state (overrides on "everything available"):
    /// constraints that now hold let work start; running work whose
    /// constraints no longer hold stops with `constraint-lost`.
    pub fn set_device(&self, overrides: DeviceOverrides) {
        self.host.set_device_overrides(overrides);
    }

    /// Waits until nothing runs and nothing is due at the current time.
    pub async fn run_until_idle(&self) {
        loop {
            self.queue().wake.notify_one();
            tokio::time::sleep(Duration::from_millis(2)).await;
            if self.host.inner.idle().await {
                // Settle: a finishing run may have just made work due.
                tokio::time::sleep(Duration::from_millis(2)).await;
                if self.host.inner.idle().await {
                    return;
                }
            }
        }
    }

    /// Shuts the host down.
    pub async fn shutdown(self) {
        self.host.shutdown().await;
    }
}
