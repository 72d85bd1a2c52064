//! [`Queue`]: enqueue, cancel, retry, run now, delete, query, pause (the
//! whole store or one handler) and prune on the store, and the
//! [`TaskEvent`]s of this process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, broadcast};

use crate::metrics::Metrics;
use crate::store::{Change, EnqueueHooks, HandlerCounts, HostInfo, Query, Selector, SqliteStore, TaskStore};
use crate::work::StoreError;
use crate::work::{Enqueued, Millis, PeriodicFloor, TaskAction, TaskId, TaskInfo, TaskState, WorkError, WorkRequest};

use super::{Clock, SystemClock, TaskEvent};

/// The shared part of a host that needs no handlers: enqueue, cancel,
/// query, pause, prune. CLI commands open one on the data directory while a
/// daemon may be running on it.
#[derive(Clone)]
pub struct Queue {
    pub(super) store: Arc<dyn TaskStore>,
    /// The handler names enqueue accepts (a reload changes them).
    pub(super) handlers: Arc<std::sync::RwLock<Vec<String>>>,
    pub(super) floor: PeriodicFloor,
    pub(super) retention: Duration,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) events: broadcast::Sender<TaskEvent>,
    pub(super) wake: Arc<Notify>,
    /// Where retained component versions are (`<data_dir>/components`), to
    /// resolve version pins; `None`: pins must give the full digest.
    pub(super) components: Option<std::path::PathBuf>,
    /// Ids this process enqueued and already reported, while anyone
    /// subscribes: the dispatcher reports the others as enqueued elsewhere.
    pub(super) reported: Arc<Mutex<std::collections::HashSet<TaskId>>>,
    /// What this process did, for `/metrics` (see [`Metrics`]).
    pub(super) metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("store", &self.store)
            .field("handlers", &self.handlers)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// Opens the embedded store in `data_dir` ([`SqliteStore`]). `handlers`
    /// are the names enqueue accepts.
    pub fn open(
        data_dir: &std::path::Path,
        handlers: Vec<String>,
        floor: PeriodicFloor,
        retention: Duration,
    ) -> Result<Queue, StoreError> {
        Ok(Self::with_store(
            SqliteStore::open(data_dir)?,
            handlers,
            floor,
            retention,
        ))
    }

    /// A queue on `store`, any backend. `handlers` are the names enqueue
    /// accepts.
    pub fn with_store(
        store: Arc<dyn TaskStore>,
        handlers: Vec<String>,
        floor: PeriodicFloor,
        retention: Duration,
    ) -> Queue {
        Queue {
            store,
            handlers: Arc::new(std::sync::RwLock::new(handlers)),
            floor,
            retention,
            clock: Arc::new(SystemClock),
            events: broadcast::channel(4096).0,
            wake: Arc::new(Notify::new()),
            components: None,
            reported: Arc::new(Mutex::new(std::collections::HashSet::new())),
            metrics: Arc::default(),
        }
    }

    /// Resolves version pins (`handler@digest-prefix`) among the
    /// components retained in `data_dir` (see docs/versions.md).
    pub fn with_components_in(mut self, data_dir: &std::path::Path) -> Queue {
        self.components = Some(data_dir.join("components"));
        self
    }

    /// What this process's queue (and the host on it) did: the counters
    /// behind `/metrics` and the dashboard's activity chart.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn TaskStore> {
        &self.store
    }

    /// Now, by the queue's clock.
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// Enqueues work; durable when this returns.
    pub async fn enqueue(&self, mut request: WorkRequest) -> Result<Enqueued, WorkError> {
        if let Some((name, pin)) = request.handler.split_once('@') {
            request.pin = Some(pin.to_string());
            request.handler = name.to_string();
        }
        if !self
            .handlers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&request.handler)
        {
            return Err(WorkError::UnknownHandler(request.handler));
        }
        if let Some(pin) = &request.pin {
            request.pin = Some(match &self.components {
                Some(dir) => super::components::resolve(dir, &request.handler, pin).map_err(WorkError::Invalid)?,
                None => {
                    super::components::check_pin(&request.handler, pin).map_err(WorkError::Invalid)?;
                    if pin.len() != 64 {
                        return Err(WorkError::Invalid(format!(
                            "the version pin {}@{pin} must be the full SHA-256 (64 hex digits) here: this queue knows no retained components",
                            request.handler
                        )));
                    }
                    pin.to_ascii_lowercase()
                }
            });
        }
        let (request, mut warnings) = request.checked(&self.floor)?;
        let now = self.now();
        if let Some(at) = request.run_at {
            if at > now.saturating_add(crate::work::millis(crate::work::limits::MAX_DURATION)) {
                return Err(WorkError::Invalid(format!(
                    "the start time {} is more than ten years away",
                    crate::units::format_rfc3339(at)
                )));
            }
            if at < now {
                warnings.push(format!(
                    "the start time {} is in the past; the work runs at once",
                    crate::units::format_rfc3339(at)
                ));
            }
        }
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
        let hooks = EnqueueHooks {
            before_commit: Some(before_commit),
            on_commit: Some(on_commit),
        };
        let (handler, kind) = (request.handler.clone(), request.kind);
        let span = tracing::info_span!("enqueue", handler = %handler, task = tracing::field::Empty);
        let (mut enqueued, _) =
            tracing::Instrument::instrument(self.store.enqueue(request, now, hooks), span.clone()).await?;
        span.record("task", enqueued.id);
        if enqueued.created {
            self.metrics.enqueued(&handler, kind);
        }
        warnings.append(&mut enqueued.warnings);
        enqueued.warnings = warnings;
        self.wake.notify_one();
        Ok(enqueued)
    }

    /// Cancels work (and its dependents); returns the ids cancelled.
    pub async fn cancel(&self, selector: Selector) -> Result<Vec<TaskId>, StoreError> {
        let changes = self.store.cancel(selector, self.now()).await?;
        self.publish(&changes, |_| ("cancelled", String::new()));
        self.wake.notify_one();
        Ok(changes.iter().map(|c| c.id).collect())
    }

    /// Cancels the unfinished tasks the query's filter fields match (its
    /// paging fields are ignored) and their dependents; returns the ids
    /// cancelled. A running one stops (its host notices the cancel).
    pub async fn cancel_matching(&self, query: Query) -> Result<Vec<TaskId>, StoreError> {
        let changes = self.store.cancel_matching(query, self.now()).await?;
        self.publish(&changes, |_| ("cancelled", String::new()));
        self.wake.notify_one();
        Ok(changes.iter().map(|c| c.id).collect())
    }

    /// Enqueues again the FAILED and CANCELLED tasks the query's filter
    /// fields match (paging fields ignored), due now with a fresh count of
    /// attempts, and revives, as BLOCKED, the dependents that ended
    /// because of them ([`TaskStore::retry`] says exactly what changes).
    /// Returns the ids changed.
    pub async fn retry(&self, query: Query) -> Result<Vec<TaskId>, StoreError> {
        let changes = self.store.retry(query, self.now()).await?;
        self.publish(&changes, |c| match c.state {
            TaskState::Blocked => ("retried", "waits for the work it runs after".into()),
            _ => ("retried", "due now".into()),
        });
        self.wake.notify_one();
        Ok(changes.iter().map(|c| c.id).collect())
    }

    /// Makes the delayed ENQUEUED tasks the query's filter fields match
    /// (paging fields ignored) due now (see [`TaskStore::run_now`]);
    /// returns the ids changed.
    pub async fn run_now(&self, query: Query) -> Result<Vec<TaskId>, StoreError> {
        let changes = self.store.run_now(query, self.now()).await?;
        self.publish(&changes, |_| ("rescheduled", "run now".into()));
        self.wake.notify_one();
        Ok(changes.iter().map(|c| c.id).collect())
    }

    /// Deletes the finished tasks the query's filter fields match (paging
    /// fields ignored), with their attempts, tags and dependency rows; a
    /// finished task that unfinished work runs after is kept. Returns the
    /// ids deleted. Each is published as a `deleted` event with the state
    /// it had: the deletion runs once per finished state (a transaction
    /// each) unless the query names one.
    pub async fn delete(&self, query: Query) -> Result<Vec<TaskId>, StoreError> {
        let states = match query.state {
            Some(s) if s.is_finished() => vec![s],
            Some(_) => return Ok(Vec::new()),
            None => vec![TaskState::Succeeded, TaskState::Failed, TaskState::Cancelled],
        };
        let mut all = Vec::new();
        for state in states {
            let q = Query {
                state: Some(state),
                ..query.clone()
            };
            let ids = self.store.delete(q).await?;
            let changes: Vec<Change> = ids.iter().map(|&id| Change { id, state }).collect();
            self.publish(&changes, |_| ("deleted", String::new()));
            all.extend(ids);
        }
        all.sort_unstable();
        Ok(all)
    }

    /// Task `id`, or [`WorkError::UnknownTask`]; [`WorkError::WrongState`]
    /// unless `action` applies to its state.
    async fn task_for(&self, id: TaskId, action: TaskAction) -> Result<TaskInfo, WorkError> {
        let task = self.store.get(id).await?.ok_or(WorkError::UnknownTask(id))?;
        if !action.applies_to(task.state) {
            return Err(WorkError::WrongState {
                id,
                state: task.state,
                action,
            });
        }
        Ok(task)
    }

    /// Task `id` as it is now (it was just changed).
    async fn task_now(&self, id: TaskId) -> Result<TaskInfo, WorkError> {
        self.store.get(id).await?.ok_or(WorkError::UnknownTask(id))
    }

    /// The query of one task.
    fn one(id: TaskId) -> Query {
        Query {
            ids: Some(vec![id]),
            ..Query::default()
        }
    }

    /// Retries one FAILED or CANCELLED task (see [`Self::retry`]); returns
    /// it as it is now. [`WorkError::UnknownTask`] if there is none,
    /// [`WorkError::WrongState`] in another state, and
    /// [`WorkError::Conflict`] if work it runs after is FAILED or CANCELLED
    /// (retry that work instead: its dependents come back with it).
    pub async fn retry_task(&self, id: TaskId) -> Result<TaskInfo, WorkError> {
        let task = self.task_for(id, TaskAction::Retry).await?;
        if self.retry(Self::one(id)).await?.contains(&id) {
            return self.task_now(id).await;
        }
        let mut blocking = None;
        for parent in &task.after {
            if let Some(p) = self.store.get(*parent).await?
                && matches!(p.state, TaskState::Failed | TaskState::Cancelled)
            {
                blocking = Some(p);
                break;
            }
        }
        Err(match blocking {
            Some(p) => WorkError::Conflict(format!(
                "task {id} cannot be retried: task {}, which it runs after, is {}; retry task {} (its dependents come back with it)",
                p.id,
                p.state.as_str().to_uppercase(),
                p.id
            )),
            // It changed state meanwhile.
            None => match self.task_now(id).await?.state {
                state if !TaskAction::Retry.applies_to(state) => WorkError::WrongState {
                    id,
                    state,
                    action: TaskAction::Retry,
                },
                _ => WorkError::Conflict(format!("task {id} could not be retried; try again")),
            },
        })
    }

    /// Makes one ENQUEUED task due now (see [`Self::run_now`]; one already
    /// due is left as it is); returns it as it is now.
    /// [`WorkError::UnknownTask`] if there is none, [`WorkError::WrongState`]
    /// in another state.
    pub async fn run_now_task(&self, id: TaskId) -> Result<TaskInfo, WorkError> {
        self.task_for(id, TaskAction::RunNow).await?;
        self.run_now(Self::one(id)).await?;
        self.task_now(id).await
    }

    /// Deletes one finished task (see [`Self::delete`]).
    /// [`WorkError::UnknownTask`] if there is none, [`WorkError::WrongState`]
    /// while it is unfinished, and [`WorkError::Conflict`] while unfinished
    /// work runs after it (that work needs its output).
    pub async fn delete_task(&self, id: TaskId) -> Result<(), WorkError> {
        let task = self.task_for(id, TaskAction::Delete).await?;
        let q = Query {
            state: Some(task.state),
            ..Self::one(id)
        };
        if self.delete(q).await?.contains(&id) {
            return Ok(());
        }
        match self.store.get(id).await? {
            None => Ok(()),
            Some(t) if !t.state.is_finished() => Err(WorkError::WrongState {
                id,
                state: t.state,
                action: TaskAction::Delete,
            }),
            Some(_) => Err(WorkError::Conflict(format!(
                "task {id} is kept: unfinished work runs after it and needs its output; cancel that work or let it finish first"
            ))),
        }
    }

    /// Cancels one unfinished task and its dependents; returns it as it is
    /// now. [`WorkError::UnknownTask`] if there is none,
    /// [`WorkError::WrongState`] once it finished.
    pub async fn cancel_task(&self, id: TaskId) -> Result<TaskInfo, WorkError> {
        self.task_for(id, TaskAction::Cancel).await?;
        let cancelled = self.cancel(Selector::Id(id)).await?;
        let task = self.task_now(id).await?;
        if !cancelled.contains(&id) && task.state != TaskState::Cancelled {
            return Err(WorkError::WrongState {
                id,
                state: task.state,
                action: TaskAction::Cancel,
            });
        }
        Ok(task)
    }

    /// Pauses one handler on every process of the store: none of its work
    /// starts until [`Self::resume_handler`]; its running work finishes and
    /// new work is still enqueued. [`WorkError::UnknownHandler`] for a name
    /// this queue does not accept.
    pub async fn pause_handler(&self, name: &str) -> Result<(), WorkError> {
        if !self.knows_handler(name) {
            return Err(WorkError::UnknownHandler(name.to_string()));
        }
        Ok(self.store.set_handler_paused(name.to_string(), true).await?)
    }

    /// Resumes a handler after [`Self::pause_handler`].
    /// [`WorkError::UnknownHandler`] for a name this queue does not accept,
    /// unless it is paused (a handler paused, then removed from the
    /// manifest, can still be resumed).
    pub async fn resume_handler(&self, name: &str) -> Result<(), WorkError> {
        if !self.knows_handler(name) && !self.store.paused_handlers().await?.iter().any(|h| h == name) {
            return Err(WorkError::UnknownHandler(name.to_string()));
        }
        self.store.set_handler_paused(name.to_string(), false).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// The paused handlers, sorted.
    pub async fn paused_handlers(&self) -> Result<Vec<String>, StoreError> {
        self.store.paused_handlers().await
    }

    /// How many tasks each handler has in each state.
    pub async fn count_by_handler(&self) -> Result<HandlerCounts, StoreError> {
        self.store.count_by_handler().await
    }

    fn knows_handler(&self, name: &str) -> bool {
        self.handlers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|h| h == name)
    }

    /// One task with its attempt history.
    pub async fn get(&self, id: TaskId) -> Result<Option<TaskInfo>, StoreError> {
        self.store.get(id).await
    }

    /// Tasks matching the filter.
    pub async fn query(&self, query: Query) -> Result<Vec<TaskInfo>, StoreError> {
        self.store.query(query).await
    }

    /// How many tasks are in each state.
    pub async fn count_by_state(&self) -> Result<HashMap<TaskState, usize>, StoreError> {
        self.store.count_by_state().await
    }

    /// Pauses: nothing new starts, in this process or any other on the
    /// store, until `resume`.
    pub async fn pause(&self) -> Result<(), StoreError> {
        self.store.set_paused(true).await
    }

    /// Resumes after `pause`.
    pub async fn resume(&self) -> Result<(), StoreError> {
        self.store.set_paused(false).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Whether the store is paused.
    pub async fn is_paused(&self) -> Result<bool, StoreError> {
        self.store.paused().await
    }

    /// Removes finished work older than the retention period (`all`:
    /// every finished task); returns how many.
    pub async fn prune(&self, all: bool) -> Result<usize, StoreError> {
        let before = if all {
            Millis::MAX
        } else {
            self.now().saturating_sub(crate::work::millis(self.retention))
        };
        self.store.prune(before).await
    }

    /// Every host recorded as serving the store, newest first.
    pub async fn hosts(&self) -> Result<Vec<HostInfo>, StoreError> {
        self.store.hosts(self.now()).await
    }

    /// A stream of state changes made by this process.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.events.subscribe()
    }

    pub(super) fn publish(&self, changes: &[Change], describe: impl Fn(&Change) -> (&'static str, String)) {
        publish(&self.events, self.now(), changes, describe);
    }
}

/// Sends one event per change, described by `describe`; builds nothing
/// while nobody listens.
pub(super) fn publish(
    events: &broadcast::Sender<TaskEvent>,
    at: Millis,
    changes: &[Change],
    describe: impl Fn(&Change) -> (&'static str, String),
) {
    if events.receiver_count() == 0 {
        return;
    }
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
