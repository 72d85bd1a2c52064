//! [`SqliteStore`]: the embedded store, one SQLite database in WAL mode in
//! the data directory. Writes go through one writer thread that commits
//! whatever is queued in one transaction (group commit).
//!
//! - `schema`: the schema, its migrations, and the checks on opening a file.
//! - `ops`: the SQL of each store operation, run inside the writer's
//!   transaction or a read snapshot.
//! - `kv`: the durable kv backend on the `kv` table.

mod kv;
mod ops;
mod schema;

use kv::SqliteKv;
use ops::*;
use schema::{init_schema, open_connection};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};

use crate::data::Data;
use crate::device::DeviceState;
use crate::kv::KvStore;
use crate::outcome::RunOutcome;
use crate::retry::Transition;
use crate::store::{Change, Claimed, ClockJump, CommitHook, HandlerWait, Query, Selector, TaskStore};
use crate::work::{AttemptRecord, Enqueued, Millis, StoreError, TaskId, TaskInfo, TaskState, WorkError, WorkRequest};

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

/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 1024;

type Reply = Box<dyn FnOnce(Option<StoreError>) + Send>;

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
        assert_eq!(version, schema::SCHEMA_VERSION);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
