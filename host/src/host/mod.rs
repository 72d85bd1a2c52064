//! The background-task runtime: [`Queue`] (enqueue, cancel, query, pause,
//! prune; what CLI commands use) and [`Host`], which adds the handlers and
//! the dispatcher that claims due work, runs it on the executor and applies
//! the retry policy. [`TestDriver`] runs a host on a manual clock.
//!
//! - `config`: [`HostConfig`], [`HandlerConfig`], handler names.
//! - `clock`: [`Clock`], [`SystemClock`], [`ManualClock`].
//! - `queue`: [`Queue`] and [`TaskEvent`] publishing.
//! - `dispatcher`: the loop that claims due work and starts runs.
//! - `run`: one run, from claim to recorded outcome.
//! - `test_driver`: [`TestDriver`].

mod clock;
mod components;
mod config;
mod dispatcher;
mod handle;
mod lease;
mod queue;
mod reload;
mod run;
mod test_driver;

pub use clock::{CLOCK_JUMP_THRESHOLD, Clock, ManualClock, SteadyReading, SystemClock};
pub use components::{MIN_PIN_DIGITS, RETAINED_VERSIONS};
pub use config::{
    DeviceConfig, HANDLER_NAME_PATTERN, HandlerConfig, HandlerNameError, HostConfig, HttpSettings, HttpToken,
    MAX_HANDLER_NAME_BYTES, ScheduleConfig, check_handler_name, default_memory_budget,
};
pub use dispatcher::PRUNE_EVERY;
pub use handle::{HandlerStatus, HostHandle};
pub use queue::Queue;
pub use reload::{ReloadError, ReloadOptions, ReloadReport};
pub use test_driver::TestDriver;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, watch};

use crate::device::{DeviceOverrides, DeviceState};
use crate::engine::{EngineConfig, EngineError, LoadError};
use crate::executor::Executor;
use crate::outcome::StopReason;
use crate::store::Selector;
use crate::work::{Millis, TaskId, TaskState};
use crate::work::{StoreError, WorkError};

use dispatcher::{Handlers, Inner, dispatch, read_device, refresh_device};

/// Runs `f` on the blocking pool: loading components, reading the machine.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a host's blocking work does not panic")
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
    /// A declared schedule could not be registered.
    #[error("schedule {name:?}: {source}")]
    Schedule {
        /// The schedule's name.
        name: String,
        /// Why.
        source: WorkError,
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
    /// `retrying`, `rescheduled` (also by a run-now), `recovered`,
    /// `retried` (a FAILED or CANCELLED task enqueued again, or a dependent
    /// revived with it as BLOCKED), `deleted` (with the state it had), or
    /// `unrecorded` (the store refused a finished run's outcome; the host
    /// keeps it and offers it again until it is recorded, which its own
    /// event then reports).
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

/// A running host: the queue plus handlers and the dispatcher.
pub struct Host {
    inner: Arc<Inner>,
    /// Taken by `shutdown`.
    dispatcher: Option<tokio::task::JoinHandle<()>>,
    /// The device-state refresher, when the host reads the machine.
    refresher: Option<tokio::task::JoinHandle<()>>,
    grace: Duration,
    /// The lease keeper, on a store with host leases.
    keeper: Option<tokio::task::JoinHandle<()>>,
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
        let store = config.open_store().await?;
        store.set_limits(config.limits());
        let mut queue = Queue::with_store(store, names, config.periodic_floor, config.retention);
        queue.clock = clock;
        // Registered before the handlers load, so `workhost hosts` shows a
        // starting host as soon as it holds the data directory.
        let me = lease::identity(&config.data_dir)?;
        queue.store.register_host(me.clone(), queue.now()).await?;

        let handler_configs = config.handlers.clone();
        // The instance pool holds what the host may run at once, no more:
        // the dispatcher never starts more runs than `max_concurrency`.
        let engine = EngineConfig {
            max_concurrent_runs: u32::try_from(config.max_concurrency.max(1)).unwrap_or(u32::MAX),
            ..config.engine.clone()
        };
        let components_dir = config.data_dir.join("components");
        queue.components = Some(components_dir.clone());
        let (handlers, executors) = blocking(move || -> Result<_, HostError> {
            let metered = Executor::new(EngineConfig {
                fuel: true,
                ..engine.clone()
            })?;
            let (out, unmetered) = reload::load_changed(
                handler_configs,
                &HashMap::new(),
                metered.clone(),
                None,
                engine,
                &components_dir,
            )
            .map_err(|e| match e {
                reload::ReloadError::Handler { name, path, source } => HostError::Handler { name, path, source },
                other => HostError::Store(StoreError::Backend(other.to_string())),
            })?;
            Ok((out, (metered, unmetered)))
        })
        .await?;

        let (device_config, data_dir) = (config.device.clone(), config.data_dir.clone());
        let readings = blocking(move || read_device(&device_config, &data_dir)).await;
        let inner = Arc::new(Inner {
            queue,
            handlers: std::sync::RwLock::new(Arc::new(Handlers::new(handlers))),
            executors: Mutex::new(executors),
            pinned: Mutex::new(HashMap::new()),
            reloading: tokio::sync::Mutex::new(()),
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
            me: Mutex::new(me.clone()),
            lease_held: std::sync::atomic::AtomicBool::new(true),
            _lock: lock,
        });
        // Before recovery, so work recovered as due now is not moved by a
        // jump made while no host ran.
        let now = inner.follow_clock().await;
        let recovered = inner.queue.store.recover(me, now).await?;
        inner.queue.publish(&recovered, |c| {
            ("recovered", format!("was running when its host died; now {}", c.state))
        });
        inner.prune_components().await;
        // The deployment's schedules: each is unique work updated in place,
        // so a restart keeps its next fire and a changed one takes effect.
        for s in &config.schedules {
            inner
                .queue
                .enqueue(s.request())
                .await
                .map_err(|source| HostError::Schedule {
                    name: s.name.clone(),
                    source,
                })?;
        }
        let refresher = inner
            .device_config
            .read_machine
            .then(|| tokio::spawn(refresh_device(inner.clone())));
        let keeper = inner
            .queue
            .store
            .host_lease()
            .map(|ttl| tokio::spawn(lease::keep_lease(inner.clone(), ttl)));
        let dispatcher = tokio::spawn(dispatch(inner.clone()));
        Ok(Host {
            inner,
            dispatcher: Some(dispatcher),
            refresher,
            keeper,
            grace: config.shutdown_grace,
        })
    }

    /// The queue: enqueue, cancel, query, pause, subscribe.
    pub fn queue(&self) -> &Queue {
        &self.inner.queue
    }

    /// A cloneable handle on this host, for code that serves beside it
    /// (the HTTP API, `/metrics`).
    pub fn handle(&self) -> HostHandle {
        HostHandle {
            inner: self.inner.clone(),
        }
    }

    /// A stream of [`HostAlert`]s: the store refusing this host's writes,
    /// and taking them again. Separate from [`Queue::subscribe`], so
    /// listening costs the dispatcher nothing; `workhost serve` prints each
    /// alert to stderr.
    pub fn alerts(&self) -> broadcast::Receiver<HostAlert> {
        self.handle().alerts()
    }

    /// What the dispatcher has done so far.
    pub fn stats(&self) -> HostStats {
        self.handle().stats()
    }

    /// Cancels work; running work stops within about one epoch tick.
    pub async fn cancel(&self, selector: Selector) -> Result<Vec<TaskId>, StoreError> {
        self.handle().cancel(selector).await
    }

    /// The device state constraints are checked against now.
    pub fn device_state(&self) -> DeviceState {
        self.handle().device_state()
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
        self.handle().running()
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
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.await;
        }
        // Every run has ended: this host leaves the store's hosts.
        let me = self.inner.me.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let _ = self.inner.queue.store.leave_host(me).await;
    }
}
