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
use crate::store::{
    Change, Claimed, ClockJump, CommitHook, EnqueueHooks, FinishedAndClaimed, HandlerCounts, HandlerWait, HostIdentity,
    HostInfo, NextClaim, Query, Selector, StoreFuture, TaskStore,
};
use crate::work::{Enqueued, HandlerLimits, Millis, StoreError, TaskId, TaskInfo, TaskState, WorkError, WorkRequest};

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

/// What SQLite's error `e` means to the store's users (backend-neutral:
/// no rusqlite type leaves this module).
fn store_error(e: rusqlite::Error) -> StoreError {
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
        return StoreError::Backend(detail);
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
        _ => StoreError::Backend(detail),
    }
}

/// An error inside this backend: SQLite's, or one the store or the work
/// model names. Turned into [`StoreError`] or [`WorkError`] at the seam.
#[derive(Debug)]
enum Fail {
    Sql(rusqlite::Error),
    Store(StoreError),
    Work(WorkError),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Sql(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

impl From<WorkError> for Fail {
    fn from(e: WorkError) -> Self {
        Fail::Work(e)
    }
}

impl Fail {
    /// As the store's error.
    fn store(self) -> StoreError {
        match self {
            Fail::Sql(e) => store_error(e),
            Fail::Store(e) | Fail::Work(WorkError::Store(e)) => e,
            Fail::Work(e) => StoreError::Backend(e.to_string()),
        }
    }

    /// As the work model's error.
    fn work(self) -> WorkError {
        match self {
            Fail::Sql(e) => WorkError::Store(store_error(e)),
            Fail::Store(e) => WorkError::Store(e),
            Fail::Work(e) => e,
        }
    }
}

/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 1024;

/// Hears whether the transaction a job ran in committed.
type Reply = Box<dyn FnOnce(Option<StoreError>) + Send>;

fn writer_stopped() -> StoreError {
    StoreError::Backend("the store's writer thread has stopped".into())
}

fn store_closed() -> StoreError {
    StoreError::Backend("the task store is closed".into())
}

type Job = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;

/// Most writes queued for the writer at once; further writers wait for a
/// place (backpressure) rather than grow the queue.
pub const WRITE_QUEUE_CAP: usize = 1024;

/// The embedded store: `<data_dir>/workhost.db`, SQLite in WAL mode with
/// `synchronous=FULL`. Writes go through one writer thread that commits
/// whatever is queued in one transaction (group commit) and acknowledges
/// each write only after that commit. Reads run on a reader connection on
/// the blocking pool; in WAL mode they never wait for the writer.
pub struct SqliteStore {
    path: PathBuf,
    /// This store, for reads that move to the blocking pool.
    this: std::sync::Weak<SqliteStore>,
    jobs: Mutex<mpsc::Sender<Job>>,
    /// Places in the writer's queue ([`WRITE_QUEUE_CAP`]): a write waits
    /// for one before it joins the queue, so a burst of writers waits
    /// instead of growing the queue.
    queue_places: Arc<tokio::sync::Semaphore>,
    reader: Mutex<Connection>,
    kv: Arc<SqliteKv>,
    /// Each handler's rate and expedited quota ([`TaskStore::set_limits`]).
    limits: Mutex<Arc<HashMap<String, HandlerLimits>>>,
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
        let (writer, header) = open_connection(&path).map_err(Fail::store)?;
        // A store already at this schema needs no write, so opening one
        // never waits on another process's write lock.
        if !header.is_current() {
            init_schema(&writer, &path).map_err(Fail::store)?;
        }
        let (reader, _) = open_connection(&path).map_err(Fail::store)?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("workhost-store".into())
            .spawn(move || writer_loop(writer, rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Arc::new_cyclic(|weak: &std::sync::Weak<SqliteStore>| SqliteStore {
            path,
            this: weak.clone(),
            jobs: Mutex::new(tx),
            queue_places: Arc::new(tokio::sync::Semaphore::new(WRITE_QUEUE_CAP)),
            reader: Mutex::new(reader),
            kv: Arc::new(SqliteKv { store: weak.clone() }),
            limits: Mutex::default(),
        }))
    }

    fn limits(&self) -> Arc<HashMap<String, HandlerLimits>> {
        self.limits.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn rates(&self) -> HashMap<String, crate::work::Rate> {
        self.limits()
            .iter()
            .filter_map(|(h, l)| l.rate.map(|r| (h.clone(), r)))
            .collect()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in the writer's next transaction and waits, without blocking
    /// a thread, until it commits. `hook` runs in the writer thread right
    /// after the commit, before any later job. A job that fails is rolled
    /// back to its savepoint; the others of its batch still commit.
    async fn write<T: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        hook: Option<CommitHook<T>>,
    ) -> Result<T, E> {
        let Ok(place) = self.queue_places.clone().acquire_owned().await else {
            return Err(writer_stopped().into());
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            // The place is given back when the writer has run the job.
            drop(place);
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
                let _ = tx.send(result);
            });
            (ok, reply)
        });
        // If the writer has stopped, the job (and its reply sender) is
        // dropped, and the receiver below reports that.
        let _ = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).send(job);
        rx.await.unwrap_or_else(|_| Err(writer_stopped().into()))
    }

    /// Runs `f` on the reader connection in one read transaction, so a read
    /// of several statements (a task, then its attempts) sees one commit:
    /// without it a claim committing between them showed a task still
    /// ENQUEUED with the attempt that claim had opened.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        snapshot(&conn, f).map_err(store_error)
    }

    /// [`Self::read`] on the blocking pool, so the awaiting thread never
    /// waits for the disk or for a long read holding the connection.
    fn read_async<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreFuture<'static, Result<T, StoreError>> {
        let this = self.this.upgrade();
        Box::pin(async move {
            let this = this.ok_or_else(store_closed)?;
            tokio::task::spawn_blocking(move || this.read(f))
                .await
                .unwrap_or_else(|e| Err(StoreError::Backend(format!("a store read failed: {e}"))))
        })
    }

    /// A write of SQL that only SQLite can refuse, as the trait returns it.
    fn write_sql<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreFuture<'_, Result<T, StoreError>> {
        Box::pin(async move {
            self.write(move |conn| f(conn).map_err(Fail::from), None)
                .await
                .map_err(Fail::store)
        })
    }

    /// [`Self::read`] if the reader connection is free now; `None` (and `f`
    /// unrun) while another read holds it.
    fn try_read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Option<Result<T, StoreError>> {
        let conn = match self.reader.try_lock() {
            Ok(conn) => conn,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(snapshot(&conn, f).map_err(store_error))
    }
}

/// `f` inside one deferred (read) transaction of `conn`.
fn snapshot<T>(conn: &Connection, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let tx = conn.unchecked_transaction()?;
    let out = f(&tx)?;
    tx.commit()?;
    Ok(out)
}

/// Runs one cached statement of no result (a savepoint's).
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// The writer thread: takes every queued job, runs each in a savepoint of one
/// transaction, commits once, then acknowledges them all. Its own
/// statements (`BEGIN`, the savepoints, `COMMIT`) are prepared once.
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
        let begin = run_cached(&conn, "BEGIN IMMEDIATE");
        if let Err(e) = begin {
            let e = store_error(e);
            for job in batch {
                // Run nothing; every job is answered with the error.
                let (_, reply) = job(&failed_connection_marker());
                reply(Some(e.clone()));
            }
            continue;
        }
        for job in batch {
            let _ = run_cached(&conn, "SAVEPOINT job");
            let (ok, reply) = job(&conn);
            if !ok {
                let _ = run_cached(&conn, "ROLLBACK TO job");
            }
            let _ = run_cached(&conn, "RELEASE job");
            replies.push(reply);
        }
        let commit = run_cached(&conn, "COMMIT").err().map(store_error);
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

/// Every write is one job of the writer's group commit; every read runs on
/// the reader connection on the blocking pool.
impl TaskStore for SqliteStore {
    fn enqueue(
        &self,
        request: WorkRequest,
        now: Millis,
        hooks: EnqueueHooks,
    ) -> StoreFuture<'_, Result<(Enqueued, Vec<Change>), WorkError>> {
        let EnqueueHooks {
            before_commit,
            on_commit,
        } = hooks;
        let quota = self.limits().get(&request.handler).and_then(|l| l.expedited_quota);
        let job = move |conn: &Connection| {
            let result = enqueue_in(conn, request, now, quota);
            if let (Ok(value), Some(hook)) = (&result, before_commit) {
                hook(value);
            }
            result
        };
        Box::pin(async move { self.write(job, on_commit).await.map_err(Fail::work) })
    }

    fn claim(
        &self,
        _me: HostIdentity,
        now: Millis,
        limit: usize,
        may_run: HashMap<String, usize>,
        device: DeviceState,
    ) -> StoreFuture<'_, Result<Vec<Claimed>, StoreError>> {
        let rates = self.rates();
        self.write_sql(move |conn| claim_in(conn, now, limit, may_run, &device, &rates, None))
    }

    /// One job: the finish, then the claim in a savepoint of its own, so a
    /// claim that fails is rolled back alone.
    fn finish_then_claim<'a>(
        &'a self,
        id: TaskId,
        lease: u64,
        transition: Transition,
        outcome: &'a RunOutcome,
        now: Millis,
        next: Option<NextClaim>,
    ) -> StoreFuture<'a, Result<FinishedAndClaimed, StoreError>> {
        let record = AttemptEnd::of(outcome);
        let rates = if next.is_some() { self.rates() } else { HashMap::new() };
        self.write_sql(move |conn| {
            let changes = finish_in(conn, id, lease, transition, record, now)?;
            let Some(next) = next else {
                return Ok((changes, Vec::new()));
            };
            run_cached(conn, "SAVEPOINT claim")?;
            let claimed = claim_in(conn, next.now, 1, next.may_run, &next.device, &rates, Some(&next.after));
            if claimed.is_err() {
                run_cached(conn, "ROLLBACK TO claim")?;
            }
            run_cached(conn, "RELEASE claim")?;
            Ok((changes, claimed.unwrap_or_default()))
        })
    }

    fn finish<'a>(
        &'a self,
        id: TaskId,
        lease: u64,
        transition: Transition,
        outcome: &'a RunOutcome,
        now: Millis,
    ) -> StoreFuture<'a, Result<Vec<Change>, StoreError>> {
        let record = AttemptEnd::of(outcome);
        self.write_sql(move |conn| finish_in(conn, id, lease, transition, record, now))
    }

    fn set_progress<'a>(
        &'a self,
        id: TaskId,
        lease: u64,
        progress: &'a Data,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        let json = progress.to_typed_json();
        self.write_sql(move |conn| progress_in(conn, id, lease, &json))
    }

    fn cancel(&self, selector: Selector, now: Millis) -> StoreFuture<'_, Result<Vec<Change>, StoreError>> {
        self.write_sql(move |conn| cancel_in(conn, &selector, now))
    }

    fn cancel_matching(&self, query: Query, now: Millis) -> StoreFuture<'_, Result<Vec<Change>, StoreError>> {
        self.write_sql(move |conn| cancel_matching_in(conn, &query, now))
    }

    fn retry(&self, query: Query, now: Millis) -> StoreFuture<'_, Result<Vec<Change>, StoreError>> {
        self.write_sql(move |conn| retry_in(conn, &query, now))
    }

    fn run_now(&self, query: Query, now: Millis) -> StoreFuture<'_, Result<Vec<Change>, StoreError>> {
        self.write_sql(move |conn| run_now_in(conn, &query, now))
    }

    fn delete(&self, query: Query) -> StoreFuture<'_, Result<Vec<TaskId>, StoreError>> {
        self.write_sql(move |conn| delete_in(conn, &query))
    }

    fn set_handler_paused(&self, handler: String, paused: bool) -> StoreFuture<'_, Result<(), StoreError>> {
        self.write_sql(move |conn| set_handler_paused_in(conn, &handler, paused))
    }

    fn paused_handlers(&self) -> StoreFuture<'_, Result<Vec<String>, StoreError>> {
        self.read_async(paused_handlers_in)
    }

    fn count_by_handler(&self) -> StoreFuture<'_, Result<HandlerCounts, StoreError>> {
        self.read_async(count_by_handler_in)
    }

    fn pins_in_use(&self) -> StoreFuture<'_, Result<Vec<String>, StoreError>> {
        self.read_async(pins_in_use_in)
    }

    fn cancel_because(
        &self,
        ids: Vec<TaskId>,
        reason: String,
        now: Millis,
    ) -> StoreFuture<'_, Result<Vec<Change>, StoreError>> {
        self.write_sql(move |conn| {
            let mut changes = Vec::new();
            cancel_ids(conn, &ids, now, &mut changes)?;
            let mut note = conn.prepare_cached("UPDATE tasks SET error = ?2 WHERE id = ?1 AND state = 'cancelled'")?;
            for id in &ids {
                note.execute(params![id, reason])?;
            }
            Ok(changes)
        })
    }

    fn make_due(&self, id: TaskId, now: Millis) -> StoreFuture<'_, Result<(), WorkError>> {
        Box::pin(async move {
            self.write(move |conn| make_due_in(conn, id, now), None)
                .await
                .map_err(Fail::work)
        })
    }

    fn get(&self, id: TaskId) -> StoreFuture<'_, Result<Option<TaskInfo>, StoreError>> {
        self.read_async(move |conn| get_in(conn, id))
    }

    fn query(&self, query: Query) -> StoreFuture<'_, Result<Vec<TaskInfo>, StoreError>> {
        self.read_async(move |conn| query_in(conn, &query))
    }

    fn last_id(&self) -> StoreFuture<'_, Result<TaskId, StoreError>> {
        self.read_async(|conn| conn.query_row("SELECT coalesce(max(id), 0) FROM tasks", [], |r| r.get(0)))
    }

    fn count_by_state(&self) -> StoreFuture<'_, Result<HashMap<TaskState, usize>, StoreError>> {
        self.read_async(count_by_state_in)
    }

    fn next_due(
        &self,
        handlers: Vec<String>,
        device: DeviceState,
    ) -> StoreFuture<'_, Result<Option<Millis>, StoreError>> {
        let rates = self.rates();
        self.read_async(move |conn| next_due_in(conn, &handlers, &device, &rates))
    }

    fn waiting_for_handler(
        &self,
        known: Vec<String>,
        now: Millis,
    ) -> StoreFuture<'_, Result<Vec<HandlerWait>, StoreError>> {
        self.read_async(move |conn| waiting_for_handler_in(conn, &known, now))
    }

    /// Every RUNNING task: the caller holds `serve.lock`, so no other host
    /// runs anything on this store.
    fn recover(&self, _me: HostIdentity, now: Millis) -> StoreFuture<'_, Result<Vec<Change>, StoreError>> {
        Box::pin(async move {
            self.write(move |conn| recover_in(conn, now), None)
                .await
                .map_err(Fail::store)
        })
    }

    fn set_limits(&self, limits: HashMap<String, HandlerLimits>) {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(limits);
    }

    fn set_paused(&self, paused: bool) -> StoreFuture<'_, Result<(), StoreError>> {
        let value = if paused { "1" } else { "0" };
        self.write_sql(move |conn| set_setting(conn, "paused", value))
    }

    fn paused(&self) -> StoreFuture<'_, Result<bool, StoreError>> {
        self.read_async(|conn| Ok(setting(conn, "paused")?.is_some_and(|v| v == "1")))
    }

    fn follow_clock(
        &self,
        boot: String,
        reading: Millis,
        threshold: Millis,
    ) -> StoreFuture<'_, Result<ClockJump, StoreError>> {
        self.write_sql(move |conn| follow_clock_in(conn, &boot, reading, threshold))
    }

    fn prune(&self, before: Millis) -> StoreFuture<'_, Result<usize, StoreError>> {
        self.write_sql(move |conn| prune_in(conn, before))
    }

    fn oldest_finished(&self) -> StoreFuture<'_, Result<Option<Millis>, StoreError>> {
        self.read_async(|conn| conn.query_row("SELECT min(finished_at) FROM tasks", [], |r| r.get(0)))
    }

    /// `PRAGMA data_version` on the reader connection: SQLite answers from
    /// memory, so this runs inline.
    fn change_counter(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
                .map(|v| v as u64)
        })
    }

    fn kv(&self) -> Arc<dyn KvStore> {
        self.kv.clone()
    }

    /// One row per data directory's host; a start replaces the row of the
    /// incarnation before it.
    fn register_host(&self, me: HostIdentity, now: Millis) -> StoreFuture<'_, Result<(), StoreError>> {
        self.write_sql(move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO hosts (id, incarnation, started_at, renewed_at) VALUES (?1, ?2, ?3, ?3)",
                params![me.id, me.incarnation, now],
            )
            .map(|_| ())
        })
    }

    /// Without leases there is nothing to renew: the running set.
    fn renew_host(&self, _me: HostIdentity, _now: Millis) -> StoreFuture<'_, Result<Vec<(TaskId, u64)>, StoreError>> {
        self.read_async(running_leases_in)
    }

    fn leave_host(&self, me: HostIdentity) -> StoreFuture<'_, Result<(), StoreError>> {
        self.write_sql(move |conn| {
            conn.execute(
                "DELETE FROM hosts WHERE id = ?1 AND incarnation = ?2",
                params![me.id, me.incarnation],
            )
            .map(|_| ())
        })
    }

    /// A host is live while it holds the data directory's `serve.lock`
    /// (a host killed with SIGKILL leaves its row, not its lock).
    fn hosts(&self, _now: Millis) -> StoreFuture<'_, Result<Vec<HostInfo>, StoreError>> {
        let lock = self.path.with_file_name("serve.lock");
        let read = self.read_async(hosts_in);
        Box::pin(async move {
            let mut hosts = read.await?;
            let live = tokio::task::spawn_blocking(move || serve_lock_held(&lock))
                .await
                .unwrap_or(false);
            for h in &mut hosts {
                h.live = live;
                if !live {
                    h.running = 0;
                }
            }
            Ok(hosts)
        })
    }
}

/// Whether a process holds `lock` (a `serve.lock`) now.
fn serve_lock_held(lock: &Path) -> bool {
    match std::fs::OpenOptions::new().write(true).open(lock) {
        Ok(file) => file.try_lock().is_err(),
        Err(_) => false,
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

    /// A newest-first page by state or by handler walks an index from its
    /// end: SQLite never sorts the table for it.
    #[test]
    fn newest_first_pages_read_an_index_without_sorting() {
        let dir = tempfile_dir("plan");
        let store = SqliteStore::open(&dir).unwrap();
        for q in [
            Query {
                state: Some(TaskState::Failed),
                ..Query::default()
            },
            Query {
                handler: Some("h".into()),
                ..Query::default()
            },
            Query::default(),
        ] {
            let (sql, args) = query_sql(&Query {
                newest_first: true,
                before_id: Some(1000),
                limit: Some(50),
                ..q
            });
            let plan: Vec<String> = store
                .read(|c| {
                    c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?
                        .query_map(rusqlite::params_from_iter(args.iter()), |r| r.get::<_, String>(3))?
                        .collect()
                })
                .unwrap();
            assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{sql}: {plan:?}");
        }
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The claim's look for due work walks the claim-order index (no
    /// sort) and stays prepared whatever its limit: a statement SQLite must
    /// prepare again at each claim cost more than the claim itself.
    #[test]
    fn the_claim_walks_its_index_and_is_prepared_once() {
        let dir = tempfile_dir("claim-plan");
        let store = SqliteStore::open(&dir).unwrap();
        for device in [
            DeviceState::default(),
            DeviceState {
                charging: true,
                ..DeviceState::default()
            },
        ] {
            let sql = claim_sql(&device);
            let (plan, reprepared) = store
                .read(|c| {
                    let plan: Vec<String> = c
                        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?
                        .query_map(params!["h", 5, 1, 10], |r| r.get::<_, String>(3))?
                        .collect::<Result<_, _>>()?;
                    let mut s = c.prepare(&sql)?;
                    for limit in 1..=10i64 {
                        let rows: Vec<i64> = s
                            .query_map(params!["h", limit, limit, limit], |r| r.get(0))?
                            .collect::<Result<_, _>>()?;
                        assert!(rows.is_empty());
                    }
                    Ok((plan, s.get_status(rusqlite::StatementStatus::RePrepare)))
                })
                .unwrap();
            assert!(
                plan.iter().any(|p| p.contains("tasks_enqueued_claim")),
                "{sql}: {plan:?}"
            );
            assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{sql}: {plan:?}");
            assert_eq!(reprepared, 0, "{sql} was prepared again as its limit changed");
        }
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("workhost-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn a_version_1_database_is_migrated_in_place_keeping_its_tasks() {
        let dir = std::env::temp_dir().join(format!("workhost-migrate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqliteStore::open(&dir).unwrap();
        let id = store
            .enqueue(WorkRequest::one_off("h", "kept"), 1, EnqueueHooks::default())
            .await
            .unwrap()
            .0
            .id;
        let path = store.path().to_path_buf();
        drop(store);
        // Turn it back into a version 1 database.
        let conn = Connection::open(&path).unwrap();
        for column in ["req_network", "req_charging", "req_battery", "req_idle", "req_storage"] {
            conn.execute_batch(&format!("ALTER TABLE tasks DROP COLUMN {column}"))
                .unwrap();
        }
        conn.execute_batch(
            "DROP INDEX tasks_handler; DROP INDEX tasks_state; DROP INDEX tasks_pin; DROP TABLE paused_handlers; \
             ALTER TABLE attempts DROP COLUMN run_attempt; DROP INDEX tasks_enqueued_due; DROP TABLE hosts; \
             CREATE INDEX tasks_due ON tasks(state, next_run_at); \
             DROP INDEX tasks_enqueued_claim; DROP INDEX tasks_expedited; DROP TABLE starts; \
             ALTER TABLE tasks DROP COLUMN priority; ALTER TABLE tasks DROP COLUMN expedited; \
             ALTER TABLE tasks DROP COLUMN cron; ALTER TABLE tasks DROP COLUMN pin; \
             ALTER TABLE attempts DROP COLUMN component; ALTER TABLE attempts DROP COLUMN contract",
        )
        .unwrap();
        // Task data as stores before version 4 wrote it: plain JSON.
        conn.execute("UPDATE tasks SET input = '{\"l\":[1,2]}' WHERE id = ?1", [id])
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        drop(conn);
        let store = SqliteStore::open(&dir).unwrap();
        let task = store.get(id).await.unwrap().unwrap();
        assert_eq!(
            (task.task.as_str(), task.constraints),
            ("kept", crate::device::Constraints::default())
        );
        assert_eq!(
            (task.priority, task.expedited, task.cron),
            (crate::work::DEFAULT_PRIORITY, false, None),
            "version 7's columns take their defaults"
        );
        assert_eq!(
            task.input,
            Data::new().with("l", crate::data::Value::S64List(vec![1, 2]))
        );
        let version: i64 = store
            .read(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(version, schema::SCHEMA_VERSION);
        let indexes: Vec<String> = store
            .read(|c| {
                c.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks' ORDER BY name")?
                    .query_map([], |r| r.get(0))?
                    .collect()
            })
            .unwrap();
        for (name, present) in [
            ("tasks_due", false),
            ("tasks_handler_due", false),
            ("tasks_claim", false),
            ("tasks_enqueued_due", true),
            ("tasks_enqueued_claim", true),
        ] {
            assert_eq!(indexes.iter().any(|i| i == name), present, "{name} in {indexes:?}");
        }
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
