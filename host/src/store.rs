//! The durable task store: the [`TaskStore`] trait every backend
//! implements, and [`SqliteStore`], the embedded default (one SQLite database
//! in WAL mode in the data directory). Only this module does disk IO for
//! tasks. Schema and commit protocol: docs/store.md.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::budget::TaskKind;
use crate::data::Data;
use crate::device::DeviceState;
use crate::kv::{KvError, KvFuture, KvStore, parse_counter};
use crate::outcome::RunOutcome;
use crate::retry::{RetryFacts, Transition};
use crate::work::{
    AttemptRecord, BackoffPolicy, BudgetOverride, Enqueued, ExistingWorkPolicy, Millis, Periodic, TaskId, TaskInfo,
    TaskState, WorkError, WorkRequest,
};

/// The store failed, or the file is not a workhost database.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file exists but is not a workhost database (another program's
    /// SQLite file, or not SQLite at all). Nothing was changed.
    #[error(
        "{path:?} is not a workhost database ({detail}); move it away or use another data directory. Nothing was changed"
    )]
    Foreign {
        /// The database file.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// The file is a database SQLite finds damaged. Nothing was changed.
    #[error(
        "{path:?} is damaged ({detail}); restore it from a backup, or move it away to start an empty store. Nothing was changed"
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// A task's row holds what no workhost writes (text that is not task
    /// data, an unknown state or kind): the row was damaged. The task is
    /// named; nothing is read in its place.
    #[error(
        "task {id} is damaged in the store ({detail}); cancel it (`workhost cancel {id}`) and enqueue it again, or restore the database from a backup"
    )]
    DamagedTask {
        /// The task.
        id: TaskId,
        /// What is wrong, naming the column.
        detail: String,
    },
    /// SQLite reported an error.
    #[error("task store error: {0}")]
    Sqlite(String),
    /// The store's files could not grow: the disk is full, or a quota or
    /// file-size limit was reached. The change that met it was rolled back;
    /// everything committed before it is kept.
    #[error(
        "the task store could not be written ({0}); most often the disk, or a quota or file-size limit, is full. This change was not made; everything accepted before it is kept. Free some space and try again"
    )]
    Full(String),
    /// The store's files or directory are read-only to this process.
    #[error(
        "the task store is read-only to this process ({0}): make the data directory and the files in it writable for this user, or use another data directory. Nothing was changed"
    )]
    ReadOnly(String),
    /// Another process held the store's write lock past the wait (10 s).
    /// Nothing was changed; try again.
    #[error("the task store is busy: another process held its lock too long ({0}). Nothing was changed; try again")]
    Busy(String),
    /// The data directory could not be used.
    #[error("cannot use the data directory {path:?}: {detail}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        detail: String,
    },
}

/// A damaged column of task `id`'s row, carried through rusqlite's error
/// type out of a row mapper and turned into [`StoreError::DamagedTask`].
#[derive(Debug)]
struct Damaged {
    id: TaskId,
    detail: String,
}

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task {} is damaged ({})", self.id, self.detail)
    }
}

impl std::error::Error for Damaged {}

/// The error of a damaged `column` of task `id`.
fn damaged(id: TaskId, column: &str, what: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(Damaged {
        id,
        detail: format!("its {column} {what}"),
    }))
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi;
        if let rusqlite::Error::ToSqlConversionFailure(inner) = &e
            && let Some(d) = inner.downcast_ref::<Damaged>()
        {
            return StoreError::DamagedTask {
                id: d.id,
                detail: d.detail.clone(),
            };
        }
        let detail = e.to_string();
        let Some(code) = e.sqlite_error() else {
            return StoreError::Sqlite(detail);
        };
        match code.extended_code {
            // A write that could not grow a file: ENOSPC is SQLITE_FULL; a
            // quota or RLIMIT_FSIZE (EDQUOT, EFBIG) comes back as a failed
            // write, append or truncate.
            ffi::SQLITE_FULL | ffi::SQLITE_IOERR_WRITE | ffi::SQLITE_IOERR_TRUNCATE | ffi::SQLITE_IOERR_SHMSIZE => {
                StoreError::Full(detail)
            }
            c if c & 0xff == ffi::SQLITE_READONLY => StoreError::ReadOnly(detail),
            c if c & 0xff == ffi::SQLITE_BUSY || c & 0xff == ffi::SQLITE_LOCKED => StoreError::Busy(detail),
            _ => StoreError::Sqlite(detail),
        }
    }
}

impl From<rusqlite::Error> for WorkError {
    fn from(e: rusqlite::Error) -> Self {
        WorkError::Store(e.into())
    }
}

/// Which tasks a cancel or query selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// One task.
    Id(TaskId),
    /// Every task with this unique name.
    UniqueName(String),
    /// Every task with this tag.
    Tag(String),
    /// Every task.
    All,
}

/// A filter for [`TaskStore::query`]; unset fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Only this state.
    pub state: Option<TaskState>,
    /// Only tasks with this tag.
    pub tag: Option<String>,
    /// Only tasks with this unique name.
    pub unique_name: Option<String>,
    /// Only these ids.
    pub ids: Option<Vec<TaskId>>,
    /// Only ids above this one (tasks enqueued since).
    pub after_id: Option<TaskId>,
    /// At most this many, oldest first (default: all).
    pub limit: Option<usize>,
}

/// A task claimed for a run: the record as it was claimed (state RUNNING,
/// attempt counted).
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// The task.
    pub info: TaskInfo,
    /// Start of its current period (periodic work).
    pub period_start: Millis,
}

impl Claimed {
    /// The facts the retry policy needs.
    pub fn retry_facts(&self) -> RetryFacts {
        RetryFacts {
            kind: self.info.kind,
            periodic: self.info.periodic,
            period_start: self.period_start,
            attempts: self.info.run_attempt_count,
            max_attempts: self.info.max_attempts,
            backoff: self.info.backoff,
            backoff_delay_ms: crate::work::millis(self.info.backoff_delay),
        }
    }
}

/// What became of the tasks a store operation touched, for observers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The task.
    pub id: TaskId,
    /// Its new state.
    pub state: TaskState,
}

/// What [`TaskStore::follow_clock`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClockJump {
    /// How far the wall clock jumped (negative: backwards); 0 if it did not.
    pub by: Millis,
    /// The ENQUEUED and BLOCKED tasks whose due time moved with it.
    pub moved: Vec<Change>,
}

/// Due work waiting for a handler (see [`TaskStore::waiting_for_handler`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerWait {
    /// The handler the work names.
    pub handler: String,
    /// How many of its tasks are due.
    pub due: usize,
    /// The oldest of them, to name in a message.
    pub first: TaskId,
}

/// A durable task store. Every method is atomic and durable when it returns.
/// Backends pass the conformance suite in `tests/all/store.rs`.
pub trait TaskStore: Send + Sync {
    /// Enqueues work (already checked by [`WorkRequest::checked`]), applying
    /// its unique-work policy atomically.
    fn enqueue(&self, request: WorkRequest, now: Millis) -> Result<(Enqueued, Vec<Change>), WorkError>;
    /// Claims up to `limit` due ENQUEUED tasks whose handler `may_run` (at
    /// most that handler's count of free slots) and whose constraints hold
    /// in `device`, marking them RUNNING and counting the attempt. Fair
    /// across handlers: each handler with a free slot gets its oldest due
    /// task before any handler gets a second (oldest due first within a
    /// round), so one handler's backlog never holds up another's due task,
    /// and work of a handler not in `may_run` holds up nothing.
    fn claim(
        &self,
        now: Millis,
        limit: usize,
        may_run: &HashMap<String, usize>,
        device: &DeviceState,
    ) -> Result<Vec<Claimed>, StoreError>;
    /// Records a finished run and applies its transition, unless the task
    /// left RUNNING meanwhile (cancelled). Unblocks, fails or cancels
    /// dependents as needed.
    fn finish(
        &self,
        id: TaskId,
        attempt: u32,
        transition: Transition,
        outcome: &RunOutcome,
        now: Millis,
    ) -> Result<Vec<Change>, StoreError>;
    /// Stores a running task's latest progress.
    fn set_progress(&self, id: TaskId, progress: &Data) -> Result<(), StoreError>;
    /// Cancels unfinished tasks and their dependents; returns what changed.
    fn cancel(&self, selector: &Selector, now: Millis) -> Result<Vec<Change>, StoreError>;
    /// Makes ENQUEUED (or BLOCKED-free) task `id` due at `now`: the test
    /// driver's "initial delay met" and "period delay met".
    fn make_due(&self, id: TaskId, now: Millis) -> Result<(), WorkError>;
    /// One task with its attempt history.
    fn get(&self, id: TaskId) -> Result<Option<TaskInfo>, StoreError>;
    /// Tasks matching the filter, without attempt history.
    fn query(&self, query: &Query) -> Result<Vec<TaskInfo>, StoreError>;
    /// The highest task id so far (0 for an empty store).
    fn last_id(&self) -> Result<TaskId, StoreError>;
    /// How many tasks are in each state.
    fn count_by_state(&self) -> Result<HashMap<TaskState, usize>, StoreError>;
    /// The earliest `next_run_at` of ENQUEUED work of `handlers` whose
    /// constraints hold in `device`.
    fn next_due(&self, handlers: &[String], device: &DeviceState) -> Result<Option<Millis>, StoreError>;
    /// ENQUEUED work due at `now` whose handler is not one of `known`, per
    /// handler: work a host with only `known` handlers never claims.
    fn waiting_for_handler(&self, known: &[String], now: Millis) -> Result<Vec<HandlerWait>, StoreError>;
    /// Re-enqueues work a dead host left RUNNING (its attempt stays counted).
    fn recover(&self, now: Millis) -> Result<Vec<Change>, StoreError>;
    /// Sets the paused flag shared by every process on this store.
    fn set_paused(&self, paused: bool) -> Result<(), StoreError>;
    /// The paused flag.
    fn paused(&self) -> Result<bool, StoreError>;
    /// Follows the wall clock across jumps. `reading` is the wall clock
    /// minus a steady clock that a change of the wall clock does not move,
    /// on boot `boot`. The first reading on a boot is only recorded. A later
    /// one that differs from the recorded one by `threshold` or more means
    /// the wall clock jumped by the difference: every unfinished task's due
    /// time and period start move by it, so a wait keeps its length, and the
    /// new reading is recorded. The check and the move are one transaction,
    /// so processes sharing the store move each task once. Returns the jump
    /// and the tasks waiting to run that it moved.
    fn follow_clock(&self, boot: &str, reading: Millis, threshold: Millis) -> Result<ClockJump, StoreError>;
    /// Deletes finished tasks that finished before `before`, with their
    /// attempts, tags and dependencies; returns how many. A finished task
    /// that an unfinished task runs after is kept, so a waiting child keeps
    /// its parents' outputs.
    fn prune(&self, before: Millis) -> Result<usize, StoreError>;
    /// The earliest time a task kept in the store finished (a read: it
    /// tells whether a [`Self::prune`] may have something to do).
    fn oldest_finished(&self) -> Result<Option<Millis>, StoreError>;
    /// A number that changes whenever another connection commits (cheap;
    /// polled to notice other processes' work).
    fn change_counter(&self) -> Result<u64, StoreError>;
    /// The durable kv backend on this store.
    fn kv(&self) -> Arc<dyn KvStore>;
}

/// `PRAGMA application_id` of a workhost database ("wkhs").
const APPLICATION_ID: i64 = 0x776b_6873;
/// Schema version in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 5;

/// How many attempts a periodic task keeps: its latest runs, over every
/// period (older ones are deleted as each run is recorded).
pub const PERIODIC_ATTEMPTS_KEPT: u32 = 10;

/// Migrations: `MIGRATIONS[v - 1]` takes a database from version `v` to
/// `v + 1`, inside the same transaction as the version bump.
const MIGRATIONS: &[&str] = &[
    // 1 -> 2: constraints.
    "ALTER TABLE tasks ADD COLUMN req_network INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE tasks ADD COLUMN req_charging INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE tasks ADD COLUMN req_battery INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE tasks ADD COLUMN req_idle INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE tasks ADD COLUMN req_storage INTEGER NOT NULL DEFAULT 0;",
    // 2 -> 3: claims look per handler.
    "CREATE INDEX IF NOT EXISTS tasks_handler_due ON tasks(state, handler, next_run_at);",
    // 3 -> 4: task data is written in its typed form (Data::to_typed_json),
    // which an older workhost would misread; rows written before stay in
    // the plain form, which is still read.
    "",
    // 4 -> 5: an attempt row's key is the task's run number, so a periodic
    // task's runs no longer overwrite each other; `run_attempt` is the
    // attempt count the run saw (NULL in older rows: the key).
    "ALTER TABLE attempts ADD COLUMN run_attempt INTEGER;",
];
/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 1024;

const SCHEMA: &str = r#"
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    handler TEXT NOT NULL,
    task TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    unique_name TEXT,
    input TEXT NOT NULL,
    output TEXT,
    progress TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    next_run_at INTEGER NOT NULL,
    initial_delay_ms INTEGER NOT NULL DEFAULT 0,
    period_start INTEGER NOT NULL DEFAULT 0,
    frequency_ms INTEGER,
    flex_ms INTEGER,
    backoff TEXT NOT NULL,
    backoff_delay_ms INTEGER NOT NULL,
    timeout_ms INTEGER,
    fuel INTEGER,
    max_memory INTEGER,
    stop_reason TEXT,
    error TEXT,
    created_at INTEGER NOT NULL,
    finished_at INTEGER,
    req_network INTEGER NOT NULL DEFAULT 0,
    req_charging INTEGER NOT NULL DEFAULT 0,
    req_battery INTEGER NOT NULL DEFAULT 0,
    req_idle INTEGER NOT NULL DEFAULT 0,
    req_storage INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tasks_due ON tasks(state, next_run_at);
CREATE INDEX tasks_handler_due ON tasks(state, handler, next_run_at);
CREATE INDEX tasks_unique ON tasks(unique_name) WHERE unique_name IS NOT NULL;
CREATE INDEX tasks_finished ON tasks(finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE tags (tag TEXT NOT NULL, task_id INTEGER NOT NULL, PRIMARY KEY (tag, task_id)) WITHOUT ROWID;
CREATE INDEX tags_task ON tags(task_id);
CREATE TABLE deps (parent INTEGER NOT NULL, child INTEGER NOT NULL, PRIMARY KEY (parent, child)) WITHOUT ROWID;
CREATE INDEX deps_child ON deps(child);
CREATE TABLE attempts (
    task_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    outcome TEXT,
    stop_reason TEXT,
    error TEXT,
    fuel INTEGER,
    peak_memory INTEGER,
    log TEXT,
    run_attempt INTEGER,
    PRIMARY KEY (task_id, attempt)
) WITHOUT ROWID;
CREATE TABLE kv (namespace TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (namespace, key)) WITHOUT ROWID;
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"#;

type Reply = Box<dyn FnOnce(Option<StoreError>) + Send>;

/// Runs in the writer thread right after the commit that made a write
/// durable, before any later write.
pub type CommitHook<T> = Box<dyn FnOnce(&T) + Send>;

/// Where a write's result goes: a blocked thread or an awaiting task.
enum ReplyTo<T> {
    Blocking(mpsc::SyncSender<T>),
    Async(tokio::sync::oneshot::Sender<T>),
}

impl<T> ReplyTo<T> {
    fn send(self, value: T) {
        match self {
            ReplyTo::Blocking(tx) => {
                let _ = tx.send(value);
            }
            ReplyTo::Async(tx) => {
                let _ = tx.send(value);
            }
        }
    }
}

fn writer_stopped() -> StoreError {
    StoreError::Sqlite("the store's writer thread has stopped".into())
}

type Job = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;

/// Most async writes queued for the writer at once; further async callers
/// wait for a place (backpressure) rather than grow the queue.
pub const WRITE_QUEUE_CAP: usize = 1024;

/// The embedded store: `<data_dir>/workhost.db`, SQLite in WAL mode with
/// `synchronous=FULL`. Writes go through one writer thread that commits
/// whatever is queued in one transaction (group commit) and acknowledges
/// each write only after that commit.
pub struct SqliteStore {
    path: PathBuf,
    jobs: Mutex<mpsc::Sender<Job>>,
    /// Places in the writer's queue for async callers ([`WRITE_QUEUE_CAP`]):
    /// an async write waits for one before it joins the queue, so a burst
    /// of writers waits instead of growing the queue. Blocking callers wait
    /// for their own commit, one write per thread, so they need none.
    queue_places: Arc<tokio::sync::Semaphore>,
    reader: Mutex<Connection>,
    kv: Arc<SqliteKv>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir`. A file that is
    /// not a workhost database is refused, never reset.
    pub fn open(data_dir: &Path) -> Result<Arc<SqliteStore>, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            detail: e.to_string(),
        })?;
        let path = data_dir.join("workhost.db");
        let (writer, header) = open_connection(&path)?;
        // A store already at this schema needs no write, so opening one
        // never waits on another process's write lock.
        if !header.is_current() {
            init_schema(&writer, &path)?;
        }
        let (reader, _) = open_connection(&path)?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("workhost-store".into())
            .spawn(move || writer_loop(writer, rx))
            .map_err(|e| StoreError::Sqlite(format!("cannot start the writer thread: {e}")))?;
        Ok(Arc::new_cyclic(|weak: &std::sync::Weak<SqliteStore>| SqliteStore {
            path,
            jobs: Mutex::new(tx),
            queue_places: Arc::new(tokio::sync::Semaphore::new(WRITE_QUEUE_CAP)),
            reader: Mutex::new(reader),
            kv: Arc::new(SqliteKv { store: weak.clone() }),
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `f` for the writer's next transaction; its result goes to
    /// `reply` after that transaction commits. `hook` runs in the writer
    /// thread right after the commit, before any later job.
    fn submit<T: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        hook: Option<CommitHook<T>>,
        reply: ReplyTo<Result<T, E>>,
    ) {
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            let reply: Reply = Box::new(move |commit_error| {
                let result = match commit_error {
                    Some(e) => Err(e.into()),
                    None => {
                        if let (Ok(value), Some(hook)) = (&result, hook) {
                            hook(value);
                        }
                        result
                    }
                };
                reply.send(result);
            });
            (ok, reply)
        });
        // If the writer has stopped, the job (and its reply sender) is
        // dropped, and the waiting side reports that.
        let _ = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).send(job);
    }

    /// Runs `f` in the writer's next transaction and blocks until it commits.
    fn write<T: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(f, None, ReplyTo::Blocking(tx));
        rx.recv().unwrap_or_else(|_| Err(writer_stopped().into()))
    }

    /// Runs `f` in the writer's next transaction and waits, without blocking
    /// a thread, until it commits.
    async fn write_async<T: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        hook: Option<CommitHook<T>>,
    ) -> Result<T, E> {
        let Ok(place) = self.queue_places.clone().acquire_owned().await else {
            return Err(writer_stopped().into());
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        // The place is given back when the writer has run the job.
        self.submit(
            move |conn| {
                drop(place);
                f(conn)
            },
            hook,
            ReplyTo::Async(tx),
        );
        rx.await.unwrap_or_else(|_| Err(writer_stopped().into()))
    }

    /// [`TaskStore::enqueue`] without blocking a thread. `before_commit`
    /// sees the result inside the transaction, before any other connection
    /// can read it; `on_commit` right after it is durable and before any
    /// later write, so observers learn of a task before anyone can claim it.
    pub async fn enqueue_async(
        &self,
        request: WorkRequest,
        now: Millis,
        before_commit: CommitHook<(Enqueued, Vec<Change>)>,
        on_commit: CommitHook<(Enqueued, Vec<Change>)>,
    ) -> Result<(Enqueued, Vec<Change>), WorkError> {
        let job = move |conn: &Connection| {
            let result = enqueue_in(conn, request, now);
            if let Ok(value) = &result {
                before_commit(value);
            }
            result
        };
        self.write_async(job, Some(on_commit)).await
    }

    /// [`TaskStore::claim`] without blocking a thread; claims nothing while
    /// the store is paused, and only work whose constraints hold in `device`.
    pub async fn claim_async(
        &self,
        now: Millis,
        limit: usize,
        may_run: HashMap<String, usize>,
        device: DeviceState,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.write_async(move |conn| claim_in(conn, now, limit, may_run, &device, true), None)
            .await
    }

    /// [`TaskStore::set_progress`] without blocking a thread, fenced by the
    /// attempt: a report of an attempt that is no longer the task's current
    /// run changes nothing. The host calls it at most every 250 ms per run
    /// (see `host::progress`).
    pub async fn set_progress_async(&self, id: TaskId, attempt: u32, progress: &Data) -> Result<(), StoreError> {
        let json = progress.to_typed_json();
        self.write_async(move |conn| progress_in(conn, id, Some(attempt), &json), None)
            .await
    }

    /// [`TaskStore::finish`] without blocking a thread.
    pub async fn finish_async(
        &self,
        id: TaskId,
        attempt: u32,
        transition: Transition,
        outcome: &RunOutcome,
        now: Millis,
    ) -> Result<Vec<Change>, StoreError> {
        let record = AttemptEnd::of(outcome);
        self.write_async(move |conn| finish_in(conn, id, attempt, transition, record, now), None)
            .await
    }

    /// Runs `f` on the reader connection in one read transaction, so a read
    /// of several statements (a task, then its attempts) sees one commit:
    /// without it a claim committing between them showed a task still
    /// ENQUEUED with the attempt that claim had opened.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        Ok(snapshot(&conn, f)?)
    }

    /// [`Self::read`] if the reader connection is free now; `None` (and `f`
    /// unrun) while another read holds it.
    fn try_read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Option<Result<T, StoreError>> {
        let conn = match self.reader.try_lock() {
            Ok(conn) => conn,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(snapshot(&conn, f).map_err(StoreError::from))
    }
}

/// `f` inside one deferred (read) transaction of `conn`.
fn snapshot<T>(conn: &Connection, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let tx = conn.unchecked_transaction()?;
    let out = f(&tx)?;
    tx.commit()?;
    Ok(out)
}

/// What opening a connection read of the database's header.
struct Header {
    app_id: i64,
    tables: i64,
    version: i64,
}

impl Header {
    /// A workhost store at this build's schema version.
    fn is_current(&self) -> bool {
        self.app_id == APPLICATION_ID && self.version == SCHEMA_VERSION
    }
}

/// Opens a connection and reads the header; refuses a foreign or damaged
/// file.
fn open_connection(path: &Path) -> Result<(Connection, Header), StoreError> {
    let foreign = |detail: String| StoreError::Foreign {
        path: path.to_path_buf(),
        detail,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::DataDir {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // Another process may be creating the store right now. SQLite does not
    // always wait on its busy handler here (switching a new file to WAL
    // needs an exclusive lock), so "busy" and "locked" are retried for up
    // to 10 s: they mean "wait", never "foreign".
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let header = loop {
        match check_header_and_enable_wal(&conn) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            // Only SQLite saying "this is no database" makes a file foreign;
            // anything else (read-only, disk full, I/O) is said as itself.
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) => {
                return Err(foreign(e.to_string()));
            }
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseCorrupt) => {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
            Ok(h) if h.app_id != APPLICATION_ID && (h.app_id != 0 || h.tables != 0) => {
                return Err(foreign(format!(
                    "its application id is {:#x} with {} schema objects",
                    h.app_id, h.tables
                )));
            }
            Ok(h) => break h,
        }
    };
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok((conn, header))
}

/// Reads the application id, the count of schema objects and the schema
/// version from one snapshot (a mixed view of a store being created, its
/// tables without its application id, would look foreign), then switches a
/// workhost or empty file to WAL.
fn check_header_and_enable_wal(conn: &Connection) -> rusqlite::Result<Header> {
    let header = snapshot(conn, |conn| {
        conn.query_row(
            "SELECT (SELECT application_id FROM pragma_application_id), (SELECT count(*) FROM sqlite_master), \
             (SELECT user_version FROM pragma_user_version)",
            [],
            |r| {
                Ok(Header {
                    app_id: r.get(0)?,
                    tables: r.get(1)?,
                    version: r.get(2)?,
                })
            },
        )
    })?;
    if header.app_id == APPLICATION_ID || (header.app_id == 0 && header.tables == 0) {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    Ok(header)
}

/// Creates or migrates the schema in one immediate transaction, reading the
/// header again under the lock (another process may have done it first).
fn init_schema(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| -> Result<(), StoreError> {
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let app_id: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
        if app_id == 0 {
            conn.execute_batch(SCHEMA)?;
            conn.pragma_update(None, "application_id", APPLICATION_ID)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        } else if (1..SCHEMA_VERSION).contains(&version) {
            for migration in &MIGRATIONS[(version - 1) as usize..] {
                conn.execute_batch(migration)?;
            }
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        } else if version != SCHEMA_VERSION {
            return Err(StoreError::Foreign {
                path: path.to_path_buf(),
                detail: format!("schema version {version}, this workhost reads versions 1 to {SCHEMA_VERSION}"),
            });
        }
        Ok(())
    })();
    conn.execute_batch(if result.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
    result
}

/// A value of the `settings` table, shared by every process on the store.
fn setting(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT value FROM settings WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()
}

/// Sets a value of the `settings` table.
fn set_setting(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)")?
        .execute([key, value])?;
    Ok(())
}

/// The writer thread: takes every queued job, runs each in a savepoint of one
/// transaction, commits once, then acknowledges them all.
fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(batch.len());
        let begin = conn.execute_batch("BEGIN IMMEDIATE");
        if let Err(e) = begin {
            let e = StoreError::from(e);
            for job in batch {
                // Run nothing; every job is answered with the error.
                let (_, reply) = job(&failed_connection_marker());
                reply(Some(e.clone()));
            }
            continue;
        }
        for job in batch {
            let _ = conn.execute_batch("SAVEPOINT job");
            let (ok, reply) = job(&conn);
            let _ = conn.execute_batch(if ok {
                "RELEASE job"
            } else {
                "ROLLBACK TO job; RELEASE job"
            });
            replies.push(reply);
        }
        let commit = conn.execute_batch("COMMIT").err().map(StoreError::from);
        if commit.is_some() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for reply in replies {
            reply(commit.clone());
        }
    }
}

/// A connection to an empty in-memory database: jobs that run on it after a
/// failed BEGIN produce errors that are then replaced by the BEGIN error.
fn failed_connection_marker() -> Connection {
    Connection::open_in_memory().expect("an in-memory SQLite database always opens")
}

fn kind_str(kind: TaskKind) -> &'static str {
    kind.as_str()
}

fn backoff_str(b: BackoffPolicy) -> &'static str {
    b.as_str()
}

const TASK_COLUMNS: &str = "id, handler, task, kind, state, unique_name, input, output, progress, attempts, max_attempts, \
     next_run_at, frequency_ms, flex_ms, backoff, backoff_delay_ms, timeout_ms, fuel, max_memory, stop_reason, error, \
     created_at, finished_at, period_start, req_network, req_charging, req_battery, req_idle, req_storage";

/// Task `id`'s data `column`; damaged text is an error naming the task.
fn data_column(id: TaskId, column: &str, text: Option<String>) -> rusqlite::Result<Option<Data>> {
    text.map(|t| Data::from_typed_json(&t).map_err(|e| damaged(id, column, format_args!("is not task data: {e}"))))
        .transpose()
}

fn row_to_info(r: &rusqlite::Row<'_>) -> rusqlite::Result<(TaskInfo, Millis)> {
    let frequency: Option<i64> = r.get(12)?;
    let flex: Option<i64> = r.get(13)?;
    let ms = |v: i64| std::time::Duration::from_millis(v.max(0) as u64);
    let id: TaskId = r.get(0)?;
    let named = |column: &str, text: String| damaged(id, column, format_args!("is {text:?}, which no workhost writes"));
    let kind: String = r.get(3)?;
    let state: String = r.get(4)?;
    let backoff: String = r.get(14)?;
    let info = TaskInfo {
        id,
        handler: r.get(1)?,
        task: r.get(2)?,
        kind: TaskKind::parse(&kind).ok_or_else(|| named("kind", kind.clone()))?,
        state: TaskState::parse(&state).ok_or_else(|| named("state", state.clone()))?,
        unique_name: r.get(5)?,
        tags: Vec::new(),
        input: data_column(id, "input", r.get(6)?)?.unwrap_or_default(),
        output: data_column(id, "output", r.get(7)?)?,
        progress: data_column(id, "progress", r.get(8)?)?,
        run_attempt_count: r.get(9)?,
        max_attempts: r.get(10)?,
        next_run_at: r.get(11)?,
        periodic: frequency.map(|f| Periodic {
            frequency: ms(f),
            flex: ms(flex.unwrap_or(f)),
        }),
        backoff: match backoff.as_str() {
            "linear" => BackoffPolicy::Linear,
            "exponential" => BackoffPolicy::Exponential,
            _ => return Err(named("backoff", backoff)),
        },
        backoff_delay: ms(r.get(15)?),
        budget: BudgetOverride {
            timeout: r.get::<_, Option<i64>>(16)?.map(ms),
            fuel: r.get::<_, Option<i64>>(17)?.map(|f| f as u64),
            max_memory_bytes: r.get::<_, Option<i64>>(18)?.map(|m| m as u64),
        },
        stop_reason: r.get(19)?,
        error: r.get(20)?,
        after: Vec::new(),
        created_at: r.get(21)?,
        finished_at: r.get(22)?,
        constraints: crate::device::Constraints {
            network: crate::device::NetworkType::from_code(r.get(24)?),
            charging: r.get(25)?,
            battery_not_low: r.get(26)?,
            device_idle: r.get(27)?,
            storage_not_low: r.get(28)?,
        },
        attempts: Vec::new(),
    };
    Ok((info, r.get(23)?))
}

fn load_tags_and_deps(conn: &Connection, info: &mut TaskInfo) -> rusqlite::Result<()> {
    let mut s = conn.prepare_cached("SELECT tag FROM tags WHERE task_id = ?1 ORDER BY tag")?;
    info.tags = s.query_map([info.id], |r| r.get(0))?.collect::<Result<_, _>>()?;
    let mut s = conn.prepare_cached("SELECT parent FROM deps WHERE child = ?1 ORDER BY parent")?;
    info.after = s.query_map([info.id], |r| r.get(0))?.collect::<Result<_, _>>()?;
    Ok(())
}

fn load_task(conn: &Connection, id: TaskId) -> rusqlite::Result<Option<(TaskInfo, Millis)>> {
    let mut s = conn.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))?;
    let Some((mut info, period_start)) = s.query_row([id], row_to_info).optional()? else {
        return Ok(None);
    };
    load_tags_and_deps(conn, &mut info)?;
    Ok(Some((info, period_start)))
}

fn set_state(
    conn: &Connection,
    id: TaskId,
    state: TaskState,
    error: Option<&str>,
    now: Millis,
) -> rusqlite::Result<()> {
    let finished = state.is_finished().then_some(now);
    conn.prepare_cached("UPDATE tasks SET state = ?2, error = COALESCE(?3, error), finished_at = ?4 WHERE id = ?1")?
        .execute(params![id, state.as_str(), error, finished])?;
    Ok(())
}

/// Fails or cancels every unfinished dependent of `id`, transitively.
fn propagate(
    conn: &Connection,
    id: TaskId,
    state: TaskState,
    now: Millis,
    changes: &mut Vec<Change>,
) -> rusqlite::Result<()> {
    let mut stack = vec![id];
    while let Some(parent) = stack.pop() {
        let children: Vec<TaskId> = conn
            .prepare_cached(
                "SELECT d.child FROM deps d JOIN tasks t ON t.id = d.child \
                 WHERE d.parent = ?1 AND t.state IN ('enqueued', 'blocked', 'running')",
            )?
            .query_map([parent], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for child in children {
            let error = (state == TaskState::Failed).then(|| format!("task {parent} that this task runs after failed"));
            set_state(conn, child, state, error.as_deref(), now)?;
            changes.push(Change { id: child, state });
            stack.push(child);
        }
    }
    Ok(())
}

/// Moves BLOCKED dependents of `id` whose parents have all succeeded to
/// ENQUEUED, merging the parents' outputs over their input.
fn unblock(conn: &Connection, id: TaskId, now: Millis, changes: &mut Vec<Change>) -> rusqlite::Result<()> {
    let children: Vec<TaskId> = conn
        .prepare_cached(
            "SELECT d.child FROM deps d JOIN tasks t ON t.id = d.child WHERE d.parent = ?1 AND t.state = 'blocked'",
        )?
        .query_map([id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for child in children {
        try_release(conn, child, now, changes)?;
    }
    Ok(())
}

/// Decides a dependent task's state from its parents: FAILED or CANCELLED
/// if one did, ENQUEUED (with merged input) if all succeeded, else BLOCKED.
fn try_release(
    conn: &Connection,
    child: TaskId,
    now: Millis,
    changes: &mut Vec<Change>,
) -> rusqlite::Result<TaskState> {
    let parents: Vec<(TaskId, String, Option<String>)> = conn
        .prepare_cached("SELECT t.id, t.state, t.output FROM deps d JOIN tasks t ON t.id = d.parent WHERE d.child = ?1 ORDER BY t.id")?
        .query_map([child], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (parent, state, _) in &parents {
        let state = TaskState::parse(state);
        if matches!(state, Some(TaskState::Failed) | Some(TaskState::Cancelled)) {
            let s = state.expect("matched");
            let error = (s == TaskState::Failed).then(|| format!("task {parent} that this task runs after failed"));
            set_state(conn, child, s, error.as_deref(), now)?;
            changes.push(Change { id: child, state: s });
            propagate(conn, child, s, now, changes)?;
            return Ok(s);
        }
    }
    if parents.iter().any(|(_, s, _)| s != "succeeded") {
        return Ok(TaskState::Blocked);
    }
    let (input, delay): (String, i64) = conn.query_row(
        "SELECT input, initial_delay_ms FROM tasks WHERE id = ?1",
        [child],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut merged = data_column(child, "input", Some(input))?.unwrap_or_default();
    for (parent, _, output) in &parents {
        if let Some(out) = data_column(*parent, "output", output.clone())? {
            merged.merge(&out);
        }
    }
    if let Err(e) = merged.validate() {
        set_state(
            conn,
            child,
            TaskState::Failed,
            Some(&format!("merged input refused: {e}")),
            now,
        )?;
        changes.push(Change {
            id: child,
            state: TaskState::Failed,
        });
        propagate(conn, child, TaskState::Failed, now, changes)?;
        return Ok(TaskState::Failed);
    }
    conn.prepare_cached("UPDATE tasks SET state = 'enqueued', input = ?2, next_run_at = ?3 WHERE id = ?1")?
        .execute(params![child, merged.to_typed_json(), now + delay])?;
    changes.push(Change {
        id: child,
        state: TaskState::Enqueued,
    });
    Ok(TaskState::Enqueued)
}

fn cancel_ids(conn: &Connection, ids: &[TaskId], now: Millis, changes: &mut Vec<Change>) -> rusqlite::Result<()> {
    for &id in ids {
        let state: Option<String> = conn
            .query_row("SELECT state FROM tasks WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        if state
            .as_deref()
            .and_then(TaskState::parse)
            .is_some_and(|s| !s.is_finished())
        {
            set_state(conn, id, TaskState::Cancelled, None, now)?;
            changes.push(Change {
                id,
                state: TaskState::Cancelled,
            });
            propagate(conn, id, TaskState::Cancelled, now, changes)?;
        }
    }
    Ok(())
}

fn write_constraints(conn: &Connection, id: TaskId, c: &crate::device::Constraints) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE tasks SET req_network = ?2, req_charging = ?3, req_battery = ?4, req_idle = ?5, req_storage = ?6 WHERE id = ?1",
    )?
    .execute(params![id, c.network.code(), c.charging, c.battery_not_low, c.device_idle, c.storage_not_low])?;
    Ok(())
}

/// The columns a request sets and the UPDATE policy may change in place:
/// everything but identity, kind, state and schedule. [`spec_values`]
/// gives their values in this order.
macro_rules! spec_columns {
    () => {
        "handler, task, input, max_attempts, frequency_ms, flex_ms, backoff, backoff_delay_ms, timeout_ms, fuel, max_memory"
    };
}

const INSERT_TASK: &str = concat!(
    "INSERT INTO tasks (",
    spec_columns!(),
    ", kind, state, unique_name, next_run_at, initial_delay_ms, period_start, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"
);

const UPDATE_SPEC: &str = concat!(
    "UPDATE tasks SET (",
    spec_columns!(),
    ") = (?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) WHERE id = ?1"
);

/// The values of [`spec_columns`], in its order.
fn spec_values(r: &WorkRequest) -> [rusqlite::types::Value; 11] {
    use rusqlite::types::Value;
    let int = |v: Option<i64>| v.map_or(Value::Null, Value::Integer);
    [
        Value::Text(r.handler.clone()),
        Value::Text(r.task.clone()),
        Value::Text(r.input.to_typed_json()),
        Value::Integer(i64::from(r.max_attempts)),
        int(r.periodic.map(|p| crate::work::millis(p.frequency))),
        int(r.periodic.map(|p| crate::work::millis(p.flex))),
        Value::Text(backoff_str(r.backoff).into()),
        Value::Integer(crate::work::millis(r.backoff_delay)),
        int(r.budget.timeout.map(crate::work::millis)),
        int(r.budget.fuel.map(|f| i64::try_from(f).unwrap_or(i64::MAX))),
        int(r.budget.max_memory_bytes.map(|m| i64::try_from(m).unwrap_or(i64::MAX))),
    ]
}

fn write_tags(conn: &Connection, id: TaskId, tags: &[String]) -> rusqlite::Result<()> {
    for tag in tags {
        conn.prepare_cached("INSERT OR IGNORE INTO tags (tag, task_id) VALUES (?1, ?2)")?
            .execute(params![tag, id])?;
    }
    Ok(())
}

fn insert_task(
    conn: &Connection,
    r: &WorkRequest,
    after: &[TaskId],
    now: Millis,
    changes: &mut Vec<Change>,
) -> Result<TaskId, WorkError> {
    let delay = crate::work::millis(r.initial_delay);
    let (period_start, next_run_at) = match r.periodic {
        Some(p) => (now.saturating_add(delay), p.due_in_period(now.saturating_add(delay))),
        None => (0, now.saturating_add(delay)),
    };
    let state = if after.is_empty() {
        TaskState::Enqueued
    } else {
        TaskState::Blocked
    };
    use rusqlite::types::Value;
    let values = spec_values(r).into_iter().chain([
        Value::Text(kind_str(r.kind).into()),
        Value::Text(state.as_str().into()),
        r.unique.as_ref().map_or(Value::Null, |(n, _)| Value::Text(n.clone())),
        Value::Integer(next_run_at),
        Value::Integer(delay),
        Value::Integer(period_start),
        Value::Integer(now),
    ]);
    conn.prepare_cached(INSERT_TASK)?
        .execute(rusqlite::params_from_iter(values))?;
    let id = conn.last_insert_rowid();
    if !r.constraints.is_empty() {
        write_constraints(conn, id, &r.constraints)?;
    }
    write_tags(conn, id, &r.tags)?;
    for parent in after {
        let exists: bool = conn.query_row("SELECT EXISTS(SELECT 1 FROM tasks WHERE id = ?1)", [parent], |r| {
            r.get(0)
        })?;
        if !exists {
            return Err(WorkError::UnknownTask(*parent));
        }
        conn.prepare_cached("INSERT OR IGNORE INTO deps (parent, child) VALUES (?1, ?2)")?
            .execute(params![parent, id])?;
    }
    if after.is_empty() {
        changes.push(Change { id, state });
    } else if try_release(conn, id, now, changes)? == TaskState::Blocked {
        changes.push(Change {
            id,
            state: TaskState::Blocked,
        });
    }
    Ok(id)
}

fn enqueue_in(conn: &Connection, mut r: WorkRequest, now: Millis) -> Result<(Enqueued, Vec<Change>), WorkError> {
    let mut changes = Vec::new();
    let mut after = std::mem::take(&mut r.after);
    if let Some((name, policy)) = r.unique.clone() {
        // The latest task with this name, and every unfinished one.
        let latest: Option<(TaskId, String)> = conn
            .query_row(
                "SELECT id, state FROM tasks WHERE unique_name = ?1 ORDER BY id DESC LIMIT 1",
                [&name],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let unfinished: Vec<TaskId> = conn
            .prepare_cached(
                "SELECT id FROM tasks WHERE unique_name = ?1 AND state IN ('enqueued', 'running', 'blocked') ORDER BY id",
            )?
            .query_map([&name], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        let latest_state = latest.as_ref().and_then(|(_, s)| TaskState::parse(s));
        use ExistingWorkPolicy::*;
        match policy {
            Keep if !unfinished.is_empty() => {
                return Ok((
                    Enqueued {
                        id: unfinished[0],
                        created: false,
                        warnings: Vec::new(),
                    },
                    changes,
                ));
            }
            Update if !unfinished.is_empty() => {
                let id = unfinished[0];
                let values = std::iter::once(rusqlite::types::Value::Integer(id)).chain(spec_values(&r));
                conn.prepare_cached(UPDATE_SPEC)?
                    .execute(rusqlite::params_from_iter(values))?;
                write_constraints(conn, id, &r.constraints)?;
                conn.execute("DELETE FROM tags WHERE task_id = ?1", [id])?;
                write_tags(conn, id, &r.tags)?;
                return Ok((
                    Enqueued {
                        id,
                        created: false,
                        warnings: Vec::new(),
                    },
                    changes,
                ));
            }
            Replace | CancelAndReenqueue => cancel_ids(conn, &unfinished, now, &mut changes)?,
            Append => after.extend(latest.map(|(id, _)| id)),
            AppendOrReplace => {
                if !matches!(latest_state, Some(TaskState::Failed) | Some(TaskState::Cancelled)) {
                    after.extend(latest.map(|(id, _)| id));
                }
            }
            Keep | Update => {}
        }
    }
    let id = insert_task(conn, &r, &after, now, &mut changes)?;
    Ok((
        Enqueued {
            id,
            created: true,
            warnings: Vec::new(),
        },
        changes,
    ))
}

/// Claims up to `limit` due tasks (see [`TaskStore::claim`]); with
/// `unless_paused`, nothing while the store is paused.
fn claim_in(
    conn: &Connection,
    now: Millis,
    limit: usize,
    free: HashMap<String, usize>,
    device: &DeviceState,
    unless_paused: bool,
) -> Result<Vec<Claimed>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    if unless_paused && setting(conn, "paused")?.as_deref() == Some("1") {
        return Ok(Vec::new());
    }
    // Each handler's oldest due tasks, as many as it has free slots, then
    // round by round: every handler's first before anyone's second.
    let sql = format!(
        "SELECT id, next_run_at FROM tasks WHERE state = 'enqueued' AND handler = ?1 AND next_run_at <= ?2{} \
         ORDER BY next_run_at, id LIMIT ?3",
        constraint_filter(device)
    );
    let mut handlers: Vec<(&String, &usize)> = free.iter().filter(|(_, slots)| **slots > 0).collect();
    handlers.sort();
    let mut candidates: Vec<(usize, Millis, TaskId)> = Vec::new();
    let mut stmt = conn.prepare_cached(&sql)?;
    for (handler, slots) in handlers {
        let due = stmt.query_map(params![handler, now, (*slots).min(limit) as i64], |r| {
            Ok((r.get::<_, TaskId>(0)?, r.get::<_, Millis>(1)?))
        })?;
        for (round, row) in due.enumerate() {
            let (id, due_at) = row?;
            candidates.push((round, due_at, id));
        }
    }
    drop(stmt);
    candidates.sort_unstable();
    let mut claimed = Vec::new();
    for (_, _, id) in candidates {
        if claimed.len() >= limit {
            break;
        }
        let mut stmt = conn.prepare_cached(&format!(
            "UPDATE tasks SET state = 'running', attempts = attempts + 1, progress = NULL \
             WHERE id = ?1 AND state = 'enqueued' RETURNING {TASK_COLUMNS}"
        ))?;
        let Some((mut info, period_start)) = stmt.query_row([id], row_to_info).optional()? else {
            continue;
        };
        load_tags_and_deps(conn, &mut info)?;
        conn.prepare_cached(
            "INSERT INTO attempts (task_id, attempt, run_attempt, started_at) \
             VALUES (?1, (SELECT coalesce(max(attempt), 0) + 1 FROM attempts WHERE task_id = ?1), ?2, ?3)",
        )?
        .execute(params![id, info.run_attempt_count, now])?;
        claimed.push(Claimed { info, period_start });
    }
    Ok(claimed)
}

/// SQL that keeps only tasks whose constraints hold in `device`.
fn constraint_filter(device: &DeviceState) -> String {
    let networks: Vec<String> = crate::device::NetworkType::ALL
        .iter()
        .filter(|t| t.holds(&device.network))
        .map(|t| t.code().to_string())
        .collect();
    let mut sql = format!(" AND req_network IN ({})", networks.join(","));
    if !device.charging {
        sql.push_str(" AND req_charging = 0");
    }
    if device.battery_low {
        sql.push_str(" AND req_battery = 0");
    }
    if !device.idle {
        sql.push_str(" AND req_idle = 0");
    }
    if device.storage_low {
        sql.push_str(" AND req_storage = 0");
    }
    sql
}

fn progress_in(conn: &Connection, id: TaskId, attempt: Option<u32>, json: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE tasks SET progress = ?2 WHERE id = ?1 AND state = 'running' AND (?3 IS NULL OR attempts = ?3)",
    )?
    .execute(params![id, json, attempt])?;
    Ok(())
}

/// What an attempt's row records of its run.
struct AttemptEnd {
    outcome: String,
    stop_reason: Option<String>,
    error: Option<String>,
    fuel: Option<i64>,
    peak_memory: i64,
    log: String,
}

impl AttemptEnd {
    fn of(outcome: &RunOutcome) -> AttemptEnd {
        AttemptEnd {
            outcome: outcome.kind().to_string(),
            stop_reason: outcome.stop_reason().map(str::to_string),
            error: outcome.error().map(str::to_string),
            fuel: outcome.fuel_consumed.map(|f| i64::try_from(f).unwrap_or(i64::MAX)),
            peak_memory: i64::try_from(outcome.peak_memory_bytes).unwrap_or(i64::MAX),
            log: serde_json::to_string(&outcome.log).unwrap_or_else(|_| "[]".into()),
        }
    }
}

/// Records a finished run and applies its transition (see
/// [`TaskStore::finish`]).
fn finish_in(
    conn: &Connection,
    id: TaskId,
    attempt: u32,
    t: Transition,
    a: AttemptEnd,
    now: Millis,
) -> Result<Vec<Change>, StoreError> {
    conn.prepare_cached(
        "UPDATE attempts SET ended_at = ?3, outcome = ?4, stop_reason = ?5, error = ?6, fuel = ?7, \
         peak_memory = ?8, log = ?9 WHERE task_id = ?1 AND attempt = \
         (SELECT max(attempt) FROM attempts WHERE task_id = ?1 AND coalesce(run_attempt, attempt) = ?2)",
    )?
    .execute(params![
        id,
        attempt,
        now,
        a.outcome,
        a.stop_reason,
        a.error,
        a.fuel,
        a.peak_memory,
        a.log
    ])?;
    let finished = t.state.is_finished().then_some(now);
    let updated = conn
        .prepare_cached(
            "UPDATE tasks SET state = ?3, next_run_at = ?4, period_start = ?5, attempts = ?6, \
             output = COALESCE(?7, output), stop_reason = ?8, error = ?9, finished_at = ?10 \
             WHERE id = ?1 AND state = 'running' AND attempts = ?2",
        )?
        .execute(params![
            id,
            attempt,
            t.state.as_str(),
            t.next_run_at,
            t.period_start,
            t.attempts,
            t.output.as_ref().map(Data::to_typed_json),
            t.stop_reason,
            t.error,
            finished,
        ])?;
    // A periodic task keeps its latest runs only.
    conn.prepare_cached(
        "DELETE FROM attempts WHERE task_id = ?1 \
         AND attempt <= (SELECT max(attempt) FROM attempts WHERE task_id = ?1) - ?2 \
         AND EXISTS (SELECT 1 FROM tasks WHERE id = ?1 AND kind = 'periodic')",
    )?
    .execute(params![id, PERIODIC_ATTEMPTS_KEPT])?;
    let mut changes = Vec::new();
    if updated == 1 {
        changes.push(Change { id, state: t.state });
        match t.state {
            TaskState::Succeeded => unblock(conn, id, now, &mut changes)?,
            TaskState::Failed | TaskState::Cancelled => propagate(conn, id, t.state, now, &mut changes)?,
            _ => {}
        }
    }
    Ok(changes)
}

fn selector_ids(conn: &Connection, selector: &Selector) -> rusqlite::Result<Vec<TaskId>> {
    let unfinished = "state IN ('enqueued', 'running', 'blocked')";
    let (sql, arg): (String, Option<String>) = match selector {
        Selector::Id(id) => (
            format!("SELECT id FROM tasks WHERE id = ?1 AND {unfinished}"),
            Some(id.to_string()),
        ),
        Selector::UniqueName(n) => (
            format!("SELECT id FROM tasks WHERE unique_name = ?1 AND {unfinished}"),
            Some(n.clone()),
        ),
        Selector::Tag(t) => (
            format!("SELECT t.id FROM tasks t JOIN tags g ON g.task_id = t.id WHERE g.tag = ?1 AND t.{unfinished}"),
            Some(t.clone()),
        ),
        Selector::All => (format!("SELECT id FROM tasks WHERE {unfinished}"), None),
    };
    let mut s = conn.prepare(&sql)?;
    match arg {
        Some(a) => s.query_map([a], |r| r.get(0))?.collect(),
        None => s.query_map([], |r| r.get(0))?.collect(),
    }
}

impl TaskStore for SqliteStore {
    fn enqueue(&self, request: WorkRequest, now: Millis) -> Result<(Enqueued, Vec<Change>), WorkError> {
        self.write(move |conn| enqueue_in(conn, request, now))
    }

    fn claim(
        &self,
        now: Millis,
        limit: usize,
        may_run: &HashMap<String, usize>,
        device: &DeviceState,
    ) -> Result<Vec<Claimed>, StoreError> {
        let (may_run, device) = (may_run.clone(), device.clone());
        self.write(move |conn| claim_in(conn, now, limit, may_run, &device, false))
    }

    fn finish(
        &self,
        id: TaskId,
        attempt: u32,
        t: Transition,
        outcome: &RunOutcome,
        now: Millis,
    ) -> Result<Vec<Change>, StoreError> {
        let record = AttemptEnd::of(outcome);
        self.write(move |conn| finish_in(conn, id, attempt, t, record, now))
    }

    fn set_progress(&self, id: TaskId, progress: &Data) -> Result<(), StoreError> {
        let json = progress.to_typed_json();
        self.write(move |conn| progress_in(conn, id, None, &json))
    }

    fn cancel(&self, selector: &Selector, now: Millis) -> Result<Vec<Change>, StoreError> {
        let selector = selector.clone();
        self.write(move |conn| {
            let ids = selector_ids(conn, &selector)?;
            let mut changes = Vec::new();
            cancel_ids(conn, &ids, now, &mut changes)?;
            Ok::<_, StoreError>(changes)
        })
    }

    fn make_due(&self, id: TaskId, now: Millis) -> Result<(), WorkError> {
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE tasks SET next_run_at = ?2 WHERE id = ?1 AND state = 'enqueued'",
                params![id, now],
            )?;
            if n == 0 {
                return Err(WorkError::Invalid(format!("task {id} is not enqueued")));
            }
            Ok(())
        })
    }

    fn get(&self, id: TaskId) -> Result<Option<TaskInfo>, StoreError> {
        self.read(|conn| {
            let Some((mut info, _)) = load_task(conn, id)? else {
                return Ok(None);
            };
            let mut s = conn.prepare_cached(
                "SELECT coalesce(run_attempt, attempt), started_at, ended_at, outcome, stop_reason, error, fuel, \
                 peak_memory, log FROM attempts WHERE task_id = ?1 ORDER BY attempt",
            )?;
            info.attempts = s
                .query_map([id], |r| {
                    let log: Option<String> = r.get(8)?;
                    Ok(AttemptRecord {
                        attempt: r.get(0)?,
                        started_at: r.get(1)?,
                        ended_at: r.get(2)?,
                        outcome: r.get(3)?,
                        stop_reason: r.get(4)?,
                        error: r.get(5)?,
                        fuel_consumed: r.get::<_, Option<i64>>(6)?.map(|f| f as u64),
                        peak_memory_bytes: r.get::<_, Option<i64>>(7)?.map(|m| m as u64),
                        log: match log {
                            Some(l) => serde_json::from_str(&l)
                                .map_err(|e| damaged(id, "attempt log", format_args!("is not a log: {e}")))?,
                            None => Vec::new(),
                        },
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(Some(info))
        })
    }

    fn query(&self, q: &Query) -> Result<Vec<TaskInfo>, StoreError> {
        self.read(|conn| {
            let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks t WHERE 1 = 1");
            let mut args: Vec<String> = Vec::new();
            if let Some(state) = q.state {
                args.push(state.as_str().to_string());
                sql.push_str(&format!(" AND t.state = ?{}", args.len()));
            }
            if let Some(tag) = &q.tag {
                args.push(tag.clone());
                sql.push_str(&format!(
                    " AND t.id IN (SELECT task_id FROM tags WHERE tag = ?{})",
                    args.len()
                ));
            }
            if let Some(name) = &q.unique_name {
                args.push(name.clone());
                sql.push_str(&format!(" AND t.unique_name = ?{}", args.len()));
            }
            if let Some(ids) = &q.ids {
                let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
                sql.push_str(&format!(" AND t.id IN ({})", list.join(",")));
            }
            if let Some(after) = q.after_id {
                sql.push_str(&format!(" AND t.id > {after}"));
            }
            sql.push_str(" ORDER BY t.id");
            if let Some(limit) = q.limit {
                sql.push_str(&format!(" LIMIT {limit}"));
            }
            let mut s = conn.prepare(&sql)?;
            let mut out: Vec<TaskInfo> = s
                .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                    row_to_info(r).map(|(i, _)| i)
                })?
                .collect::<Result<_, _>>()?;
            for info in &mut out {
                load_tags_and_deps(conn, info)?;
            }
            Ok(out)
        })
    }

    fn last_id(&self) -> Result<TaskId, StoreError> {
        self.read(|conn| conn.query_row("SELECT coalesce(max(id), 0) FROM tasks", [], |r| r.get(0)))
    }

    fn count_by_state(&self) -> Result<HashMap<TaskState, usize>, StoreError> {
        self.read(|conn| {
            let mut s = conn.prepare_cached("SELECT state, count(*) FROM tasks GROUP BY state")?;
            let rows = s.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = HashMap::new();
            for row in rows {
                let (state, n) = row?;
                if let Some(state) = TaskState::parse(&state) {
                    out.insert(state, n as usize);
                }
            }
            Ok(out)
        })
    }

    fn next_due(&self, handlers: &[String], device: &DeviceState) -> Result<Option<Millis>, StoreError> {
        // One indexed look per handler: the earliest due of each.
        let sql = format!(
            "SELECT min(next_run_at) FROM tasks WHERE state = 'enqueued' AND handler = ?1{}",
            constraint_filter(device)
        );
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut earliest: Option<Millis> = None;
            for handler in handlers {
                let due: Option<Millis> = stmt.query_row([handler], |r| r.get(0))?;
                earliest = earliest.into_iter().chain(due).min();
            }
            Ok(earliest)
        })
    }

    fn waiting_for_handler(&self, known: &[String], now: Millis) -> Result<Vec<HandlerWait>, StoreError> {
        self.read(|conn| {
            // The handlers of enqueued work, one index seek each (not a scan
            // of a backlog), then a count of the due work of those unknown.
            let handlers: Vec<String> = conn
                .prepare_cached(
                    "WITH RECURSIVE h(name) AS ( \
                       SELECT (SELECT min(handler) FROM tasks WHERE state = 'enqueued') \
                       UNION ALL \
                       SELECT (SELECT min(handler) FROM tasks WHERE state = 'enqueued' AND handler > h.name) \
                       FROM h WHERE h.name IS NOT NULL) \
                     SELECT name FROM h WHERE name IS NOT NULL",
                )?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut due = conn.prepare_cached(
                "SELECT count(*), min(id) FROM tasks WHERE state = 'enqueued' AND handler = ?1 AND next_run_at <= ?2",
            )?;
            let mut out = Vec::new();
            for handler in handlers.into_iter().filter(|h| !known.contains(h)) {
                let (count, first): (i64, Option<TaskId>) =
                    due.query_row(params![handler, now], |r| Ok((r.get(0)?, r.get(1)?)))?;
                if let Some(first) = first {
                    out.push(HandlerWait {
                        handler,
                        due: count as usize,
                        first,
                    });
                }
            }
            Ok(out)
        })
    }

    fn recover(&self, now: Millis) -> Result<Vec<Change>, StoreError> {
        self.write(move |conn| {
            let ids: Vec<TaskId> = conn
                .prepare("SELECT id FROM tasks WHERE state = 'running'")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for id in &ids {
                conn.execute(
                    "UPDATE attempts SET ended_at = ?2, outcome = 'stopped', stop_reason = 'host-shutdown', \
                     error = 'the host died during this run' WHERE task_id = ?1 AND ended_at IS NULL",
                    params![id, now],
                )?;
                conn.execute(
                    "UPDATE tasks SET state = CASE WHEN attempts >= max_attempts AND kind != 'periodic' THEN 'failed' ELSE 'enqueued' END, \
                     next_run_at = ?2, stop_reason = 'host-shutdown', \
                     error = CASE WHEN attempts >= max_attempts AND kind != 'periodic' THEN 'gave up after ' || attempts || CASE WHEN attempts = 1 THEN ' attempt' ELSE ' attempts' END || '; the last one died with its host' ELSE error END, \
                     finished_at = CASE WHEN attempts >= max_attempts AND kind != 'periodic' THEN ?2 ELSE NULL END WHERE id = ?1",
                    params![id, now],
                )?;
            }
            let mut changes = Vec::new();
            for id in ids {
                let state: String = conn.query_row("SELECT state FROM tasks WHERE id = ?1", [id], |r| r.get(0))?;
                let state = TaskState::parse(&state).unwrap_or(TaskState::Enqueued);
                changes.push(Change { id, state });
                if state == TaskState::Failed {
                    propagate(conn, id, state, now, &mut changes)?;
                }
            }
            Ok::<_, StoreError>(changes)
        })
    }

    fn set_paused(&self, paused: bool) -> Result<(), StoreError> {
        self.write(move |conn| Ok::<_, StoreError>(set_setting(conn, "paused", if paused { "1" } else { "0" })?))
    }

    fn paused(&self) -> Result<bool, StoreError> {
        self.read(|conn| Ok(setting(conn, "paused")?.is_some_and(|v| v == "1")))
    }

    fn follow_clock(&self, boot: &str, reading: Millis, threshold: Millis) -> Result<ClockJump, StoreError> {
        let boot = boot.to_owned();
        self.write(move |conn| {
            let recorded = match (setting(conn, "clock_boot")?, setting(conn, "clock_reading")?) {
                (Some(b), Some(r)) if b == boot => r.parse::<Millis>().ok(),
                _ => None,
            };
            let mut jump = ClockJump::default();
            if let Some(recorded) = recorded {
                let by = reading - recorded;
                if by.abs() < threshold {
                    return Ok::<_, StoreError>(jump);
                }
                jump.by = by;
                let mut waiting =
                    conn.prepare("SELECT id, state FROM tasks WHERE state IN ('enqueued', 'blocked') ORDER BY id")?;
                for row in waiting.query_map([], |r| Ok((r.get::<_, TaskId>(0)?, r.get::<_, String>(1)?)))? {
                    let (id, state) = row?;
                    if let Some(state) = TaskState::parse(&state) {
                        jump.moved.push(Change { id, state });
                    }
                }
                conn.execute(
                    "UPDATE tasks SET next_run_at = next_run_at + ?1, \
                     period_start = CASE WHEN frequency_ms IS NULL THEN period_start ELSE period_start + ?1 END \
                     WHERE state IN ('enqueued', 'blocked', 'running')",
                    [by],
                )?;
            }
            set_setting(conn, "clock_boot", &boot)?;
            set_setting(conn, "clock_reading", &reading.to_string())?;
            Ok(jump)
        })
    }

    fn prune(&self, before: Millis) -> Result<usize, StoreError> {
        self.write(move |conn| {
            let where_ = "finished_at IS NOT NULL AND finished_at < ?1 AND NOT EXISTS (SELECT 1 FROM deps d \
                 JOIN tasks c ON c.id = d.child WHERE d.parent = tasks.id AND c.state IN ('enqueued', 'blocked', 'running'))";
            conn.execute(&format!("DELETE FROM tags WHERE task_id IN (SELECT id FROM tasks WHERE {where_})"), [before])?;
            conn.execute(&format!("DELETE FROM attempts WHERE task_id IN (SELECT id FROM tasks WHERE {where_})"), [before])?;
            conn.execute(
                &format!("DELETE FROM deps WHERE parent IN (SELECT id FROM tasks WHERE {where_}) OR child IN (SELECT id FROM tasks WHERE {where_})"),
                [before],
            )?;
            Ok::<_, StoreError>(conn.execute(&format!("DELETE FROM tasks WHERE {where_}"), [before])?)
        })
    }

    fn oldest_finished(&self) -> Result<Option<Millis>, StoreError> {
        self.read(|conn| conn.query_row("SELECT min(finished_at) FROM tasks", [], |r| r.get(0)))
    }

    fn change_counter(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
                .map(|v| v as u64)
        })
    }

    fn kv(&self) -> Arc<dyn KvStore> {
        self.kv.clone()
    }
}

/// The durable kv backend: the `kv` table of the task store.
struct SqliteKv {
    store: std::sync::Weak<SqliteStore>,
}

impl SqliteKv {
    fn store(&self) -> Result<Arc<SqliteStore>, KvError> {
        self.store
            .upgrade()
            .ok_or_else(|| KvError::Unavailable("the task store is closed".into()))
    }

    /// Runs `f` in the writer's next transaction; resolves once it commits.
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, KvError> + Send + 'static,
    ) -> KvFuture<'_, T> {
        let store = self.store();
        Box::pin(async move { store?.write_async(f, None).await })
    }
}

fn kv_err(e: StoreError) -> KvError {
    KvError::Unavailable(e.to_string())
}

fn count_keys(conn: &Connection, ns: &str) -> rusqlite::Result<u32> {
    conn.query_row("SELECT count(*) FROM kv WHERE namespace = ?1", [ns], |r| r.get(0))
}

impl From<StoreError> for KvError {
    fn from(e: StoreError) -> Self {
        kv_err(e)
    }
}

/// A get reads at once when the reader connection is free (in WAL mode a
/// read never waits for the writer); while a long read (a large query)
/// holds that connection, the get waits for it on the blocking pool. A
/// write awaits its group commit. No call blocks the awaiting thread.
impl KvStore for SqliteKv {
    fn get<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        fn get_in(conn: &Connection, ns: &str, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
            conn.query_row(
                "SELECT value FROM kv WHERE namespace = ?1 AND key = ?2",
                [ns, key],
                |r| r.get(0),
            )
            .optional()
        }
        let store = match self.store() {
            Ok(store) => store,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        if let Some(now) = store.try_read(|conn| get_in(conn, namespace, key)) {
            return Box::pin(std::future::ready(now.map_err(kv_err)));
        }
        let (ns, key) = (namespace.to_string(), key.to_string());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.read(|conn| get_in(conn, &ns, &key)))
                .await
                .map_err(|e| KvError::Unavailable(format!("the kv read failed: {e}")))?
                .map_err(kv_err)
        })
    }

    fn set<'a>(&'a self, namespace: &'a str, key: &'a str, value: &'a [u8], max_keys: u32) -> KvFuture<'a, ()> {
        let (ns, key, value) = (namespace.to_string(), key.to_string(), value.to_vec());
        self.write(move |conn| {
            let exists: bool = conn
                .query_row(
                    "SELECT EXISTS(SELECT 1 FROM kv WHERE namespace = ?1 AND key = ?2)",
                    [&ns, &key],
                    |r| r.get(0),
                )
                .map_err(sq)?;
            if !exists && count_keys(conn, &ns).map_err(sq)? >= max_keys {
                return Err(KvError::TooManyKeys(max_keys));
            }
            conn.execute(
                "INSERT OR REPLACE INTO kv (namespace, key, value) VALUES (?1, ?2, ?3)",
                params![ns, key, value],
            )
            .map_err(sq)?;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, ()> {
        let (ns, key) = (namespace.to_string(), key.to_string());
        self.write(move |conn| {
            conn.execute("DELETE FROM kv WHERE namespace = ?1 AND key = ?2", [&ns, &key])
                .map_err(sq)?;
            Ok(())
        })
    }

    fn increment<'a>(&'a self, namespace: &'a str, key: &'a str, delta: i64, max_keys: u32) -> KvFuture<'a, i64> {
        let (ns, key) = (namespace.to_string(), key.to_string());
        self.write(move |conn| {
            let current: Option<Vec<u8>> = conn
                .query_row(
                    "SELECT value FROM kv WHERE namespace = ?1 AND key = ?2",
                    [&ns, &key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sq)?;
            let current = match current {
                Some(v) => parse_counter(&v)?,
                None if count_keys(conn, &ns).map_err(sq)? >= max_keys => return Err(KvError::TooManyKeys(max_keys)),
                None => 0,
            };
            let next = current.checked_add(delta).ok_or(KvError::Overflow)?;
            conn.execute(
                "INSERT OR REPLACE INTO kv (namespace, key, value) VALUES (?1, ?2, ?3)",
                params![ns, key, next.to_string().into_bytes()],
            )
            .map_err(sq)?;
            Ok(next)
        })
    }
}

fn sq(e: rusqlite::Error) -> KvError {
    KvError::Unavailable(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While a long read holds the reader connection, a kv get waits for it
    /// off the thread that awaits it: the run's thread keeps serving.
    #[tokio::test]
    async fn a_kv_get_waits_for_a_busy_reader_without_blocking_its_thread() {
        let dir = std::env::temp_dir().join(format!("workhost-kv-reader-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqliteStore::open(&dir).unwrap();
        let kv = store.kv();
        kv.set("h", "k", b"v", 10).await.unwrap();
        let (locked, is_locked) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let holder = {
            let store = store.clone();
            std::thread::spawn(move || {
                let _long_read = store.reader.lock().unwrap();
                locked.send(()).unwrap();
                let _ = released.recv_timeout(std::time::Duration::from_secs(5));
            })
        };
        is_locked.recv().unwrap();
        let mut get = kv.get("h", "k");
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut get)
                .await
                .is_err(),
            "the get must be pending, not done or blocking, while the reader is held"
        );
        release.send(()).unwrap();
        assert_eq!(get.await, Ok(Some(b"v".to_vec())));
        holder.join().unwrap();
        drop((kv, store));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_version_1_database_is_migrated_in_place_keeping_its_tasks() {
        let dir = std::env::temp_dir().join(format!("workhost-migrate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqliteStore::open(&dir).unwrap();
        let id = store.enqueue(WorkRequest::one_off("h", "kept"), 1).unwrap().0.id;
        let path = store.path().to_path_buf();
        drop(store);
        // Turn it back into a version 1 database.
        let conn = Connection::open(&path).unwrap();
        for column in ["req_network", "req_charging", "req_battery", "req_idle", "req_storage"] {
            conn.execute_batch(&format!("ALTER TABLE tasks DROP COLUMN {column}"))
                .unwrap();
        }
        conn.execute_batch("ALTER TABLE attempts DROP COLUMN run_attempt; DROP INDEX tasks_handler_due")
            .unwrap();
        // Task data as stores before version 4 wrote it: plain JSON.
        conn.execute("UPDATE tasks SET input = '{\"l\":[1,2]}' WHERE id = ?1", [id])
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        drop(conn);
        let store = SqliteStore::open(&dir).unwrap();
        let task = store.get(id).unwrap().unwrap();
        assert_eq!(
            (task.task.as_str(), task.constraints),
            ("kept", crate::device::Constraints::default())
        );
        assert_eq!(
            task.input,
            Data::new().with("l", crate::data::Value::S64List(vec![1, 2]))
        );
        let version: i64 = store
            .read(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
