//! Runs one task in a fresh, limited instance. Per handler, the `Linker` and
//! `InstancePre` are built once ([`Executor::load_file`]); per run only a
//! `Store` is created and the component instantiated ([`Handler::run`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::Trap;
use wasmtime::component::{HasSelf, Linker};

use crate::bindings::{Outcome, TaskHandler, TaskHandlerPre};
use crate::budget::{Budget, RunLimiter};
use crate::config_values::Redactor;
use crate::data::Data;
use crate::engine::{CacheStatus, Engine, EngineConfig, EngineError, LoadError};
use crate::kv::Kv;
use crate::outcome::{Failure, RunOutcome, RunResult, StopReason};
use crate::platform::{ProgressSink, RunState, TaskFacts, data_from_wit, data_into_wit};
use crate::quota::QuotaFsData;
use crate::runlog::{LogLevel, LogSource, SharedLog};

/// The name of the export every handler must have.
pub const HANDLER_EXPORT: &str = "workhost:task/handler@0.1.1";

/// The prefix of every handler export this host serves (`@0.1.0`, `@0.1.1`).
const COMPATIBLE_EXPORT: &str = "workhost:task/handler@0.1.";

/// Loads components as handlers on one [`Engine`], with the platform
/// imports and WASI 0.2 linked once.
#[derive(Clone)]
pub struct Executor {
    engine: Engine,
    linker: Arc<Linker<RunState>>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl Executor {
    /// Builds the engine and links WASI 0.2 and the platform imports.
    pub fn new(config: EngineConfig) -> Result<Executor, EngineError> {
        let engine = Engine::new(config)?;
        let mut linker: Linker<RunState> = Linker::new(engine.wasmtime());
        let link_error = |e: wasmtime::Error| EngineError::Wasmtime(format!("linking the platform: {e:#}"));
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link_error)?;
        // wasi:filesystem/types again, in front of wasmtime-wasi's: the data
        // directory's quota (see `quota`).
        linker.allow_shadowing(true);
        wasmtime_wasi::p2::bindings::filesystem::types::add_to_linker::<RunState, QuotaFsData>(&mut linker, |s| {
            s.quota_fs()
        })
        .map_err(link_error)?;
        linker.allow_shadowing(false);
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(link_error)?;
        TaskHandler::add_to_linker::<_, HasSelf<RunState>>(&mut linker, |s| s).map_err(link_error)?;
        Ok(Executor {
            engine,
            linker: Arc::new(linker),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Loads the component at `path` as a handler.
    pub fn load_file(&self, path: &Path) -> Result<Handler, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.load_bytes(&bytes)
    }

    /// Loads a component from its bytes as a handler: compiles it (or loads
    /// it from the cache), checks its imports and its export, and pre-links
    /// it.
    pub fn load_bytes(&self, bytes: &[u8]) -> Result<Handler, LoadError> {
        let (component, cache) = self.engine.load_component(bytes)?;
        let ty = component.component_type();
        let engine = self.engine.wasmtime();
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            let detail = format!("{e:#}");
            let name = ty
                .imports(engine)
                .map(|(name, _)| name.to_string())
                .find(|name| detail.contains(name.as_str()))
                .unwrap_or_else(|| "an unknown import".to_string());
            LoadError::MissingImport { name, detail }
        })?;
        let exports: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_string()).collect();
        // A handler built against any 0.1.x contract is served: 0.1.x
        // versions only add, and wasmtime matches names semver-compatibly.
        if !exports.iter().any(|e| e.starts_with(COMPATIBLE_EXPORT)) {
            if let Some(other) = exports.iter().find(|e| e.starts_with("workhost:task/handler@")) {
                return Err(LoadError::WrongVersion {
                    expected: HANDLER_EXPORT,
                    found: other.clone(),
                });
            }
            let found = if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.iter().map(|e| format!("`{e}`")).collect::<Vec<_>>().join(", ")
            };
            return Err(LoadError::MissingExport {
                expected: HANDLER_EXPORT,
                found,
            });
        }
        let pre = TaskHandlerPre::new(pre).map_err(|e| LoadError::BadExport {
            expected: HANDLER_EXPORT,
            detail: format!("{e:#}"),
        })?;
        let contract = exports
            .iter()
            .find(|e| e.starts_with(COMPATIBLE_EXPORT))
            .cloned()
            .unwrap_or_else(|| HANDLER_EXPORT.to_string());
        Ok(Handler {
            inner: Arc::new(HandlerInner {
                pre,
                engine: self.engine.clone(),
                cache,
                component: Arc::new(ComponentId {
                    digest: crate::engine::sha256_hex(bytes),
                    contract,
                }),
            }),
        })
    }
}

/// A loaded, pre-linked task handler. Cheap to clone; runs may go on
/// concurrently, each in its own instance.
#[derive(Clone)]
pub struct Handler {
    inner: Arc<HandlerInner>,
}

struct HandlerInner {
    pre: TaskHandlerPre<RunState>,
    engine: Engine,
    cache: CacheStatus,
    /// Shared with every outcome of this handler's runs.
    component: Arc<ComponentId>,
}

/// Which component a handler is: what every attempt records of the
/// version it ran (`inspect` shows it; docs/versions.md).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ComponentId {
    /// The SHA-256 of the component's bytes, lowercase hex (64 digits).
    pub digest: String,
    /// The WIT contract it exports, as found (`workhost:task/handler@0.1.1`).
    pub contract: String,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("cache", &self.inner.cache)
            .finish_non_exhaustive()
    }
}

/// Stops a run from outside: cancel, constraint lost, host shutdown. The
/// first reason given wins. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct StopHandle(Arc<StopState>);

/// The reason a run was stopped, and who waits for it.
#[derive(Debug, Default)]
struct StopState {
    reason: std::sync::OnceLock<StopReason>,
    stopped: tokio::sync::Notify,
}

impl StopHandle {
    /// A handle that has not stopped anything yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops the run (or the run about to start) for `reason`. The guest
    /// yields at every epoch tick, so a running guest stops within about
    /// one tick (10 ms).
    pub fn stop(&self, reason: StopReason) {
        if self.0.reason.set(reason).is_ok() {
            self.0.stopped.notify_waiters();
        }
    }

    /// The reason given, if the run was stopped.
    pub fn reason(&self) -> Option<StopReason> {
        self.0.reason.get().copied()
    }

    async fn stopped(&self) -> StopReason {
        loop {
            // Registered before the reason is read, so a stop between the
            // two still wakes this waiter.
            let notified = self.0.stopped.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = self.reason() {
                return reason;
            }
            notified.await;
        }
    }
}

/// One run's input: the task's facts and data, its budget, and the services
/// it may use.
#[derive(Clone)]
pub struct RunRequest {
    /// What the `context` import reports.
    pub task: TaskFacts,
    /// The input data.
    pub input: Data,
    /// The run's limits.
    pub budget: Budget,
    /// The handler's kv namespace.
    pub kv: Kv,
    /// Called with each progress report.
    pub progress: Option<ProgressSink>,
    /// Stops the run from outside.
    pub stop: StopHandle,
    /// What the handler may touch: outbound HTTP, a data directory,
    /// configuration values and secrets.
    pub grants: Arc<crate::grants::Grants>,
    /// Resolves the host names of outbound HTTP requests, once per request
    /// (default: [`SystemResolver`](crate::SystemResolver)).
    pub resolver: Arc<dyn crate::outbound::Resolver>,
}

impl RunRequest {
    /// A first attempt of one-off task `name` with empty input, the default
    /// budget and a fresh in-memory kv.
    pub fn new(name: impl Into<String>) -> RunRequest {
        let name = name.into();
        RunRequest {
            task: TaskFacts {
                id: "exec".to_string(),
                name: name.clone(),
                unique_name: None,
                tags: Vec::new(),
                kind: crate::budget::TaskKind::OneOff,
                attempt: 1,
            },
            input: Data::new(),
            budget: Budget::default(),
            kv: Kv::in_memory(name),
            progress: None,
            stop: StopHandle::new(),
            grants: NO_GRANTS.get_or_init(Arc::default).clone(),
            resolver: crate::outbound::system_resolver(),
        }
    }
}

/// The grants of [`RunRequest::new`] (none), shared by every request
/// that keeps them.
static NO_GRANTS: std::sync::OnceLock<Arc<crate::grants::Grants>> = std::sync::OnceLock::new();

impl Handler {
    /// Whether loading this handler compiled it or found it in the cache.
    pub fn cache_status(&self) -> CacheStatus {
        self.inner.cache
    }

    /// Which component this is: its digest and contract.
    pub fn component(&self) -> &ComponentId {
        &self.inner.component
    }

    /// Runs one task in a fresh instance and reports how it ended. Never
    /// panics on guest behaviour: every end is a [`RunOutcome`].
    pub async fn run(&self, request: RunRequest) -> RunOutcome {
        let RunRequest {
            task,
            input,
            budget,
            kv,
            progress,
            stop,
            grants,
            resolver,
        } = request;
        let started = Instant::now();
        let deadline = started + budget.timeout;
        let redactor = Redactor::new(&grants.config);
        let log = SharedLog::new(started, budget.max_log_bytes, budget.max_log_lines, redactor.clone());
        let engine = &self.inner.engine;
        let fuel = engine.meters_fuel().then(|| budget.fuel.unwrap_or(u64::MAX));
        let task = Arc::new(task);
        let state = RunState::new(
            RunLimiter::new(&budget),
            log.clone(),
            task.clone(),
            started,
            deadline,
            kv,
            progress,
            grants,
            resolver,
        );
        let mut store = wasmtime::Store::new(engine.wasmtime(), state);
        store.limiter(|s| &mut s.limiter);
        engine.prepare_store(&mut store, fuel);
        let input = data_into_wit(input);

        let quota = store.data().data_quota();
        let ended = {
            let call = async {
                // Inside the race, so a slow walk of a big directory still
                // ends at the deadline or a stop.
                if let Some(q) = quota {
                    q.measure().await;
                }
                let instance = match self.inner.pre.instantiate_async(&mut store).await {
                    Ok(instance) => instance,
                    // No slot or memory for an instance: the host's
                    // shortage, not the handler's failure.
                    Err(e) if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() => {
                        return Err(e.context(HostBusy));
                    }
                    Err(e) => return Err(e),
                };
                instance
                    .workhost_task_handler()
                    .call_execute_task(&mut store, &task.name, &input)
                    .await
            };
            // A stop is checked before the call is polled, so a run stopped
            // before it starts never instantiates. The call is polled first:
            // a run that ends without waiting never registers a waiter for
            // the stop or the deadline.
            match stop.reason() {
                Some(reason) => Err(reason),
                None => tokio::select! {
                    biased;
                    result = call => Ok(result),
                    reason = stop.stopped() => Err(reason),
                    () = tokio::time::sleep_until(deadline.into()) => Err(StopReason::Timeout),
                },
            }
        };

        let out_of_fuel = matches!(&ended, Ok(Err(e)) if matches!(e.downcast_ref::<Trap>(), Some(Trap::OutOfFuel)));
        let fuel_consumed = fuel.map(|initial| {
            if out_of_fuel {
                initial
            } else {
                initial - store.get_fuel().unwrap_or(initial)
            }
        });
        let limiter = &store.data().limiter;
        let result = match ended {
            Err(reason) => RunResult::Stopped(reason),
            Ok(Ok(Ok(Outcome::Success(pairs)))) => match data_from_wit(pairs) {
                Ok(output) => RunResult::Succeeded(redactor.data(output)),
                Err(e) => RunResult::Failed(Failure::BadOutput(format!("output data refused: {e}"))),
            },
            Ok(Ok(Ok(Outcome::Retry))) => RunResult::Retry,
            Ok(Ok(Err(message))) => RunResult::Failed(Failure::Error(redactor.text(message))),
            Ok(Err(error)) => {
                let what = if error.downcast_ref::<HostBusy>().is_some() {
                    "run not started"
                } else {
                    "run trapped"
                };
                log.push(LogLevel::Error, LogSource::Host, format!("{what}: {error:#}"));
                match classify_trap(&error, limiter.memory_refused) {
                    RunResult::Failed(Failure::Trap(m)) => RunResult::Failed(Failure::Trap(redactor.text(m))),
                    other => other,
                }
            }
        };
        let result = match result {
            RunResult::Failed(f) => RunResult::Failed(f.capped()),
            other => other,
        };
        RunOutcome {
            result,
            duration: started.elapsed(),
            fuel_consumed,
            peak_memory_bytes: limiter.peak_memory as u64,
            log: log.finish(),
            component: Some(self.inner.component.clone()),
        }
    }
}

/// Marks an instantiation the host had no room for.
#[derive(Debug, thiserror::Error)]
#[error("the host has no instance slot free for this run; it is retried")]
struct HostBusy;

/// Names what stopped a trapped run. A refused memory grow decides
/// `memory-exceeded` whatever trap followed (a Rust guest aborts with
/// `unreachable` when its allocator fails).
fn classify_trap(error: &wasmtime::Error, memory_refused: bool) -> RunResult {
    if error.downcast_ref::<HostBusy>().is_some() {
        return RunResult::Stopped(StopReason::HostBusy);
    }
    if memory_refused {
        return RunResult::Stopped(StopReason::MemoryExceeded);
    }
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return RunResult::Failed(Failure::Trap(format!(
            "the handler called exit({}) instead of returning a result; return from execute-task (err for a failure)",
            exit.0
        )));
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => RunResult::Stopped(StopReason::FuelExhausted),
        Some(Trap::StackOverflow) => RunResult::Stopped(StopReason::StackOverflow),
        Some(trap) => RunResult::Failed(Failure::Trap(trap.to_string())),
        None => RunResult::Failed(Failure::Trap(format!("{error:#}"))),
    }
}
