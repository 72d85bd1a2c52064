//! Live handler updates ([`Host::reload`], docs/versions.md): a new
//! manifest's handlers are loaded beside the running ones, checked, and
//! swapped in whole; runs already going keep the version they started
//! with. A reload with an error changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::engine::{EngineConfig, LoadError};
use crate::executor::Executor;
use crate::outcome::StopReason;
use crate::store::Query;
use crate::work::{StoreError, TaskId, TaskState, WorkError};

use super::config::{HandlerConfig, HostConfig, check_handler_name};
use super::dispatcher::{Handlers, LoadedHandler};
use super::{Host, blocking};

/// How a reload treats work of handlers the new manifest removes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadOptions {
    /// Cancel the unfinished work of removed handlers (recorded as
    /// cancelled, saying why) instead of refusing the reload.
    pub drop_pending: bool,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// Handlers new in the manifest.
    pub added: Vec<String>,
    /// Handlers gone from the manifest.
    pub removed: Vec<String>,
    /// Handlers whose component changed: name and the new component's
    /// SHA-256 (hex).
    pub updated: Vec<(String, String)>,
    /// Handlers whose settings changed but not their component.
    pub reconfigured: Vec<String>,
    /// Tasks of removed handlers cancelled (`drop_pending`).
    pub dropped: Vec<TaskId>,
    /// Settings that changed but take effect only at the next start.
    pub warnings: Vec<String>,
}

impl ReloadReport {
    /// One line for an operator: what changed.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.added.is_empty() {
            parts.push(format!("added {}", self.added.join(", ")));
        }
        if !self.updated.is_empty() {
            let updated: Vec<String> = self
                .updated
                .iter()
                .map(|(n, d)| format!("{n} (sha256:{})", &d[..d.len().min(12)]))
                .collect();
            parts.push(format!("updated {}", updated.join(", ")));
        }
        if !self.reconfigured.is_empty() {
            parts.push(format!("reconfigured {}", self.reconfigured.join(", ")));
        }
        if !self.removed.is_empty() {
            parts.push(format!("removed {}", self.removed.join(", ")));
        }
        if !self.dropped.is_empty() {
            parts.push(format!(
                "cancelled {} pending task(s) of removed handlers",
                self.dropped.len()
            ));
        }
        if parts.is_empty() {
            parts.push("nothing changed".into());
        }
        parts.join("; ")
    }
}

/// Why a reload was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// A handler's component could not be loaded.
    #[error("reload refused, nothing changed: handler {name:?} ({path:?}): {source}")]
    Handler {
        /// Handler name.
        name: String,
        /// Component path.
        path: std::path::PathBuf,
        /// Why.
        source: LoadError,
    },
    /// A removed handler still has unfinished work.
    #[error(
        "reload refused, nothing changed: handler {handler:?} is not in the new manifest but {count} of its tasks are unfinished (ids {}); let them finish, cancel them, or reload with --drop-pending to cancel them",
        ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
    )]
    Pending {
        /// The handler.
        handler: String,
        /// How many unfinished tasks it has.
        count: usize,
        /// The first of them (at most 20).
        ids: Vec<TaskId>,
    },
    /// The new manifest is not usable (a handler name, a memory limit past
    /// the budget, a schedule).
    #[error("reload refused, nothing changed: {0}")]
    Invalid(String),
    /// The store refused a read or write the reload needed.
    #[error("reload refused, nothing changed: {0}")]
    Store(#[from] StoreError),
}

impl Host {
    /// Reloads the handlers (and their schedules and limits) from `config`,
    /// as `serve` does on SIGHUP: changed components are compiled in the
    /// background while the host goes on serving, then every handler is
    /// swapped in at once. Runs already going finish on the version they
    /// started with; runs that start after use the new one. A handler
    /// removed with unfinished work is refused ([`ReloadError::Pending`])
    /// unless `options.drop_pending`. Any error changes nothing. Settings
    /// of the host itself (data directory, store, concurrency, memory
    /// budget, engine) take effect at the next start; the report warns of
    /// each that changed.
    pub async fn reload(&self, config: HostConfig, options: ReloadOptions) -> Result<ReloadReport, ReloadError> {
        let inner = &self.inner;
        let _one_at_a_time = inner.reloading.lock().await;
        let old = inner.handlers();
        let mut report = ReloadReport::default();
        for h in &config.handlers {
            check_handler_name(&h.name).map_err(|e| ReloadError::Invalid(e.to_string()))?;
            if h.memory_limit() > inner.memory_budget {
                return Err(ReloadError::Invalid(format!(
                    "handler {:?} may use {} bytes of memory per run, more than the host's memory budget of {} bytes",
                    h.name,
                    h.memory_limit(),
                    inner.memory_budget
                )));
            }
        }
        for s in &config.schedules {
            if !config.handlers.iter().any(|h| h.name == s.handler) {
                return Err(ReloadError::Invalid(format!(
                    "schedule {:?} names handler {:?}, which the new manifest lacks",
                    s.name, s.handler
                )));
            }
        }
        // Load what changed, off the runtime's threads: the host serves on.
        let (metered, unmetered) = {
            let e = inner.executors.lock().unwrap_or_else(|e| e.into_inner());
            (e.0.clone(), e.1.clone())
        };
        let previous: HashMap<String, Arc<LoadedHandler>> = old.by_name.clone();
        let configs = config.handlers.clone();
        let engine = metered.engine().config().clone();
        let components = inner.data_dir.join("components");
        let (loaded, unmetered) =
            blocking(move || load_changed(configs, &previous, metered, unmetered, engine, &components)).await?;
        // Work of removed handlers.
        let removed: Vec<String> = old.names.iter().filter(|n| !loaded.contains_key(*n)).cloned().collect();
        // Each removed handler's first unfinished tasks, a few per state
        // from the handler index (never the whole queue).
        let mut pending: Vec<(String, Vec<TaskId>)> = Vec::new();
        for handler in &removed {
            let mut ids = Vec::new();
            for state in UNFINISHED {
                ids.extend(pending_of(inner, handler, state, None, PENDING_SHOWN).await?);
            }
            if !ids.is_empty() {
                ids.sort_unstable();
                ids.truncate(PENDING_SHOWN);
                pending.push((handler.clone(), ids));
            }
        }
        if !options.drop_pending
            && let Some((handler, ids)) = pending.first()
        {
            let counts = inner.queue.store.count_by_handler().await?;
            let count = counts
                .get(handler)
                .map_or(0, |c| UNFINISHED.iter().filter_map(|s| c.get(s)).sum());
            return Err(ReloadError::Pending {
                handler: handler.clone(),
                count: count.max(ids.len()),
                ids: ids.clone(),
            });
        }
        // Nothing can fail from here on but the store, whose writes below
        // each stand on their own.
        for (name, h) in &loaded {
            match old.by_name.get(name) {
                None => report.added.push(name.clone()),
                Some(o) if o.handler.component() != h.handler.component() || o.config.fuel != h.config.fuel => {
                    report
                        .updated
                        .push((name.clone(), h.handler.component().digest.clone()));
                }
                Some(o) if format!("{:?}", o.config) != format!("{:?}", h.config) => {
                    report.reconfigured.push(name.clone())
                }
                Some(_) => {}
            }
        }
        report.added.sort();
        report.updated.sort();
        report.reconfigured.sort();
        report.removed = removed.clone();
        report.warnings = restart_warnings(inner, &config);
        let mut names: Vec<String> = loaded.keys().cloned().collect();
        names.sort();
        if let Some(u) = unmetered {
            inner.executors.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(u);
        }
        *inner.handlers.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Handlers::new(loaded));
        *inner.queue.handlers.write().unwrap_or_else(|e| e.into_inner()) = names;
        inner.queue.store.set_limits(config.limits());
        if options.drop_pending && !pending.is_empty() {
            let reason = format!(
                "cancelled by a reload: its handler ({}) is no longer in the manifest (--drop-pending)",
                removed.join(", ")
            );
            // A batch at a time, so memory holds ids, never the queue.
            for (handler, _) in &pending {
                for state in UNFINISHED {
                    let mut after = None;
                    loop {
                        let ids = pending_of(inner, handler, state, after, DROP_BATCH).await?;
                        let Some(&last) = ids.last() else { break };
                        after = Some(last);
                        let changes = inner
                            .queue
                            .store
                            .cancel_because(ids.clone(), reason.clone(), inner.queue.now())
                            .await?;
                        inner.stop_running(&ids, StopReason::Cancelled);
                        inner.queue.publish(&changes, |_| ("cancelled", reason.clone()));
                        report.dropped.extend(ids);
                    }
                }
            }
            report.dropped.sort_unstable();
        }
        for s in &config.schedules {
            inner.queue.enqueue(s.request()).await.map_err(|e| match e {
                WorkError::Store(e) => ReloadError::Store(e),
                other => ReloadError::Invalid(format!("schedule {:?}: {other}", s.name)),
            })?;
        }
        inner.prune_components().await;
        inner.queue.wake.notify_one();
        Ok(report)
    }
}

type Loaded = (HashMap<String, Arc<LoadedHandler>>, Option<Executor>);

/// Each handler of `configs`: the running one with its new settings when
/// its component (bytes and engine) is unchanged, else loaded anew and
/// kept among the retained versions (docs/versions.md; a host that cannot
/// keep it still serves the current one). A start loads with no
/// `previous`.
pub(super) fn load_changed(
    configs: Vec<HandlerConfig>,
    previous: &HashMap<String, Arc<LoadedHandler>>,
    metered: Executor,
    mut unmetered: Option<Executor>,
    engine: EngineConfig,
    components: &std::path::Path,
) -> Result<Loaded, ReloadError> {
    let mut out = HashMap::new();
    for hc in configs {
        let fail = |source| ReloadError::Handler {
            name: hc.name.clone(),
            path: hc.component.clone(),
            source,
        };
        let bytes = std::fs::read(&hc.component).map_err(|source| {
            fail(LoadError::Io {
                path: hc.component.clone(),
                source,
            })
        })?;
        let digest = crate::engine::sha256_hex(&bytes);
        let same = previous
            .get(&hc.name)
            .filter(|o| o.handler.component().digest == digest && o.config.fuel == hc.fuel);
        let handler = match same {
            Some(o) => o.handler.clone(),
            None => {
                let executor = if hc.fuel {
                    &metered
                } else {
                    if unmetered.is_none() {
                        let e = Executor::new(EngineConfig {
                            fuel: false,
                            ..engine.clone()
                        })
                        .map_err(|e| ReloadError::Invalid(format!("cannot build the unmetered engine: {e}")))?;
                        // Only the start has no unmetered engine to reuse.
                        unmetered = Some(e);
                    }
                    unmetered.as_ref().expect("just set")
                };
                let handler = executor.load_bytes(&bytes).map_err(fail)?;
                let _ = super::components::retain(components, &hc.name, &digest, &bytes);
                handler
            }
        };
        out.insert(hc.name.clone(), Arc::new(LoadedHandler { handler, config: hc }));
    }
    Ok((out, unmetered))
}

/// The host settings `config` changes that a reload does not apply.
fn restart_warnings(inner: &super::dispatcher::Inner, config: &HostConfig) -> Vec<String> {
    let mut w = Vec::new();
    let mut differs = |what: &str, changed: bool| {
        if changed {
            w.push(format!("{what} changed; it takes effect when the host restarts"));
        }
    };
    differs("data_dir", config.data_dir != inner.data_dir);
    differs(
        "max_concurrency",
        config.max_concurrency.max(1) != inner.max_concurrency,
    );
    differs("memory_budget", config.memory_budget != inner.memory_budget);
    differs("poll interval", config.poll_interval != inner.poll);
    w
}

/// The states of work a removed handler leaves pending.
const UNFINISHED: [TaskState; 3] = [TaskState::Enqueued, TaskState::Blocked, TaskState::Running];

/// How many of a removed handler's pending tasks a refusal names.
const PENDING_SHOWN: usize = 20;

/// How many pending tasks `--drop-pending` cancels per transaction.
const DROP_BATCH: usize = 1000;

/// Up to `limit` ids of `handler`'s tasks in `state` above `after`, oldest
/// first: one range of the handler index.
async fn pending_of(
    inner: &super::dispatcher::Inner,
    handler: &str,
    state: TaskState,
    after: Option<TaskId>,
    limit: usize,
) -> Result<Vec<TaskId>, StoreError> {
    let q = Query {
        handler: Some(handler.to_string()),
        state: Some(state),
        after_id: after,
        limit: Some(limit),
        ..Query::default()
    };
    Ok(inner.queue.store.query(q).await?.into_iter().map(|t| t.id).collect())
}
