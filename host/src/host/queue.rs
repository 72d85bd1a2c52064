//! [`Queue`]: enqueue, cancel, query, pause and prune on the store, and the
//! [`TaskEvent`]s of this process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, broadcast};

use crate::store::{Change, EnqueueHooks, HostInfo, Query, Selector, SqliteStore, TaskStore};
use crate::work::StoreError;
use crate::work::{Enqueued, Millis, PeriodicFloor, TaskId, TaskInfo, TaskState, WorkError, WorkRequest};

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
        }
    }

    /// Resolves version pins (`handler@digest-prefix`) among the
    /// components retained in `data_dir` (see docs/versions.md).
    pub fn with_components_in(mut self, data_dir: &std::path::Path) -> Queue {
        self.components = Some(data_dir.join("components"));
        self
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
        let (mut enqueued, _) = self.store.enqueue(request, now, hooks).await?;
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

pub(super) fn publish(
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
