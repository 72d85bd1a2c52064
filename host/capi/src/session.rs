//! One open host: its tokio runtime, the [`Host`], the handlers loaded for
//! `workhost_run_once`, the callback, and the graceful shutdown that ends
//! them in order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};
use tokio::sync::Semaphore;
use workhost::{
    Data, EngineConfig, Executor, Handler, HandlerConfig, Host, HostConfig, Kv, RunRequest, StopHandle, StopReason,
};

use crate::callback::{Callbacks, Target};
use crate::ffi::{Error, Result, lock};
use crate::{WORKHOST_ERR_HANDLER, WORKHOST_ERR_INVALID, WORKHOST_ERR_NOT_FOUND, WORKHOST_ERR_THREAD};

/// How long shutdown waits for the runtime's last threads (blocking
/// reads of the machine, the store's writer) once the host has stopped.
const RUNTIME_GRACE: Duration = Duration::from_secs(10);

/// An open host.
pub(crate) struct Session {
    /// The runtime's handle, for every call's `block_on`.
    handle: Handle,
    /// The runtime, taken and shut down by [`Session::shutdown`]. Every
    /// `block_on` happens under the host's read lock, a run-once permit or
    /// the shutdown, all before the runtime goes.
    runtime: Mutex<Option<Runtime>>,
    /// `None` once shut down.
    host: RwLock<Option<Host>>,
    /// Set at the start of shutdown: new calls are refused.
    closed: AtomicBool,
    /// One shutdown at a time.
    shutting_down: Mutex<()>,
    /// The manifest's handlers, for run-once.
    handlers: HashMap<String, HandlerConfig>,
    engine: EngineConfig,
    /// Handlers loaded for run-once, on first use.
    plugins: Mutex<Plugins>,
    /// Run-once calls in flight: at most the host's `max_concurrency`.
    plugin_slots: Arc<Semaphore>,
    slots: u32,
    /// The stop handles of the run-once calls in flight.
    plugin_runs: Mutex<HashMap<u64, StopHandle>>,
    next_run: AtomicU64,
    pub(crate) callbacks: Callbacks,
}

/// The executors and handlers of run-once: an engine of their own,
/// without the pooling allocator (the host's pool is sized for its
/// scheduled runs), one with and one without fuel, made on first use.
#[derive(Default)]
struct Plugins {
    metered: Option<Executor>,
    unmetered: Option<Executor>,
    loaded: HashMap<String, Handler>,
}

impl Session {
    /// Starts a host from a manifest's config on a runtime of its own.
    pub(crate) fn open(config: HostConfig) -> Result<Arc<Session>> {
        refuse_async_context()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("workhost")
            .build()
            .map_err(|e| Error::new(crate::WORKHOST_ERR_PANIC, format!("cannot start the runtime: {e}")))?;
        let handlers = config.handlers.iter().map(|h| (h.name.clone(), h.clone())).collect();
        let engine = config.engine.clone();
        let slots = u32::try_from(config.max_concurrency.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        let host = runtime.block_on(Host::start(config))?;
        Ok(Arc::new(Session {
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
            host: RwLock::new(Some(host)),
            closed: AtomicBool::new(false),
            shutting_down: Mutex::new(()),
            handlers,
            engine,
            plugins: Mutex::default(),
            plugin_slots: Arc::new(Semaphore::new(slots as usize)),
            slots,
            plugin_runs: Mutex::default(),
            next_run: AtomicU64::new(1),
            callbacks: Callbacks::default(),
        }))
    }

    /// Runs `f` on the host, blocking this thread until it is done.
    pub(crate) fn with_host<T>(&self, f: impl AsyncFnOnce(&Host) -> T) -> Result<T> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::shut_down());
        }
        refuse_async_context()?;
        let guard = self.host.read().unwrap_or_else(|e| e.into_inner());
        let host = guard.as_ref().ok_or_else(Error::shut_down)?;
        Ok(self.handle.block_on(f(host)))
    }

    /// Sets or clears the state-change callback.
    pub(crate) fn set_callback(&self, target: Option<Target>) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::shut_down());
        }
        // Waiting for a call of the previous callback to end holds no lock
        // of the host: that call may be using the host, behind a shutdown
        // waiting for its write lock.
        self.callbacks.replace(target);
        if target.is_none() {
            return Ok(());
        }
        let guard = self.host.read().unwrap_or_else(|e| e.into_inner());
        let host = guard.as_ref().ok_or_else(Error::shut_down)?;
        self.callbacks.start(&self.handle, || host.queue().subscribe())
    }

    /// Runs `handler` once, now, in a fresh instance, and returns its
    /// outcome as `workhost exec --json` prints it.
    pub(crate) fn run_once(&self, handler: &str, task: String, input: Option<String>) -> Result<String> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::shut_down());
        }
        refuse_async_context()?;
        let config = self.handlers.get(handler).ok_or_else(|| {
            let mut names: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
            names.sort_unstable();
            Error::new(
                WORKHOST_ERR_NOT_FOUND,
                format!(
                    "no handler named {handler:?}; the manifest's [handlers] table has {}",
                    names.join(", ")
                ),
            )
        })?;
        if task.is_empty() {
            return Err(Error::new(WORKHOST_ERR_INVALID, "the task name must not be empty"));
        }
        let input = match input {
            Some(text) => Data::from_json(&text)
                .map_err(|e| Error::new(WORKHOST_ERR_INVALID, format!("input data refused: {e}")))?,
            None => Data::new(),
        };
        let (permit, kv) = {
            let guard = self.host.read().unwrap_or_else(|e| e.into_inner());
            let host = guard.as_ref().ok_or_else(Error::shut_down)?;
            // Waiting here holds the read lock, which shutdown takes only
            // after every permit came back.
            let permit = self
                .handle
                .block_on(self.plugin_slots.clone().acquire_owned())
                .map_err(|_| Error::shut_down())?;
            (permit, host.queue().store().kv())
        };
        let loaded = self.plugin(config)?;
        let stop = StopHandle::new();
        let n = self.next_run.fetch_add(1, Ordering::Relaxed);
        lock(&self.plugin_runs).insert(n, stop.clone());
        // Registered first, checked second: a shutdown either sees this
        // run to stop it, or this call sees the shutdown.
        if self.closed.load(Ordering::SeqCst) {
            lock(&self.plugin_runs).remove(&n);
            return Err(Error::shut_down());
        }
        let mut request = RunRequest::new(task);
        request.task.id = format!("run-once-{n}");
        request.input = input;
        request.budget = config.budget.clone();
        request.kv = Kv::new(kv, config.name.clone(), config.kv_limits);
        request.stop = stop;
        request.grants = config.grants.clone();
        let outcome = self.handle.block_on(loaded.run(request));
        lock(&self.plugin_runs).remove(&n);
        drop(permit);
        Ok(outcome.to_json().to_string())
    }

    /// The handler `config` names, loaded for run-once (compiled, or read
    /// from the compile cache, on its first call).
    fn plugin(&self, config: &HandlerConfig) -> Result<Handler> {
        let mut plugins = lock(&self.plugins);
        if let Some(h) = plugins.loaded.get(&config.name) {
            return Ok(h.clone());
        }
        let executor = if config.fuel {
            &mut plugins.metered
        } else {
            &mut plugins.unmetered
        };
        if executor.is_none() {
            let _runtime = self.handle.enter();
            let engine = EngineConfig {
                fuel: config.fuel,
                pooling: false,
                max_concurrent_runs: self.slots,
                ..self.engine.clone()
            };
            *executor = Some(Executor::new(engine).map_err(|e| Error::new(WORKHOST_ERR_HANDLER, e.to_string()))?);
        }
        let handler = executor
            .as_ref()
            .expect("just made")
            .load_file(&config.component)
            .map_err(|e| {
                Error::new(
                    WORKHOST_ERR_HANDLER,
                    format!("handler {:?} ({:?}): {e}", config.name, config.component),
                )
            })?;
        plugins.loaded.insert(config.name.clone(), handler.clone());
        Ok(handler)
    }

    /// Whether this thread is the one the callback is called on.
    pub(crate) fn on_callback_thread(&self) -> bool {
        self.callbacks.on_callback_thread()
    }

    /// Shuts down: refuses new calls, stops run-once calls in flight, lets
    /// the host's running work finish within its grace period
    /// ([`Host::shutdown`]), delivers the events published until then to
    /// the callback, and ends the runtime. A second shutdown is refused
    /// with `WORKHOST_ERR_SHUTDOWN` once the first is done.
    pub(crate) fn shutdown(&self) -> Result<()> {
        if self.on_callback_thread() {
            return Err(Error::new(
                WORKHOST_ERR_THREAD,
                "workhost_shutdown and workhost_free cannot be called from the host's own callback (it would wait for itself); call them from another thread",
            ));
        }
        refuse_async_context()?;
        let _one = lock(&self.shutting_down);
        if self.closed.swap(true, Ordering::SeqCst) {
            return Err(Error::shut_down());
        }
        for stop in lock(&self.plugin_runs).values() {
            stop.stop(StopReason::HostShutdown);
        }
        // Every run-once call gives its permit back (the stopped ones when
        // their run ends, the waiting ones once they see the shutdown).
        if let Ok(all) = self.handle.block_on(self.plugin_slots.acquire_many(self.slots)) {
            all.forget();
        }
        self.plugin_slots.close();
        let host = self.host.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(host) = host {
            self.handle.block_on(host.shutdown());
        }
        self.callbacks.stop();
        *lock(&self.plugins) = Plugins::default();
        if let Some(runtime) = lock(&self.runtime).take() {
            runtime.shutdown_timeout(RUNTIME_GRACE);
        }
        Ok(())
    }
}

/// Refuses a call made on a thread that runs an async runtime: blocking it
/// on this library's runtime would panic or deadlock.
fn refuse_async_context() -> Result<()> {
    if Handle::try_current().is_ok() {
        return Err(Error::new(
            WORKHOST_ERR_THREAD,
            "called from a thread that runs a tokio runtime; workhost calls block, so call them from a plain thread (spawn_blocking)",
        ));
    }
    Ok(())
}

/// A session dropped without a shutdown (not reachable through the C ABI,
/// whose `workhost_free` shuts down first) still ends its host gracefully.
impl Drop for Session {
    fn drop(&mut self) {
        if !self.closed.load(Ordering::SeqCst) {
            let _ = self.shutdown();
        }
    }
}
