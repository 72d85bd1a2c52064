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

fn writer_stopped() -> StoreError {
    StoreError::Backend("the store's writer thread has stopped".into())
}

fn store_closed() -> StoreError {
    StoreError::Backend("the task store is closed".into())
}

/// One write of the writer's group commit: run in the open transaction,
/// then answered after its commit.
trait WriteJob: Send {
    /// Runs the write; whether it succeeded. `careful` asks a job whose
    /// parts may fail on their own to keep them apart (see
    /// [`SqliteStore::finish_then_claim`]).
    fn run(&mut self, conn: &Connection, careful: bool) -> bool;
    /// Whether the write may run again after its changes were rolled back
    /// (it keeps what it needs to): such writes run without a savepoint of
    /// their own ([`run_batch`]).
    fn reruns(&self) -> bool;
    /// Runs right before the commit, after the last run of every job.
    fn before_commit(&mut self);
    /// Answers the caller once the transaction committed, or with
    /// `commit_error` if it did not.
    fn answer(self: Box<Self>, commit_error: Option<StoreError>);
}

type Job = Box<dyn WriteJob>;

/// A [`WriteJob`] of `f`, answering on `tx` with `f`'s last result.
struct Write<F, T, E> {
    f: F,
    reruns: bool,
    result: Option<Result<T, E>>,
    /// Runs before the commit on a successful result (inside the
    /// transaction: no other connection sees the write yet).
    before: Option<CommitHook<T>>,
    /// Runs right after the commit, in the writer thread, before any later
    /// job.
    after: Option<CommitHook<T>>,
    tx: tokio::sync::oneshot::Sender<Result<T, E>>,
    /// The job's place in the writer's queue, given back when it first runs.
    place: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl<F, T, E> WriteJob for Write<F, T, E>
where
    F: FnMut(&Connection, bool) -> Result<T, E> + Send,
    T: Send,
    E: From<StoreError> + Send,
{
    fn run(&mut self, conn: &Connection, careful: bool) -> bool {
        self.place = None;
        let result = (self.f)(conn, careful);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn reruns(&self) -> bool {
        self.reruns
    }

    fn before_commit(&mut self) {
        if let (Some(Ok(value)), Some(hook)) = (&self.result, self.before.take()) {
            hook(value);
        }
    }

    fn answer(self: Box<Self>, commit_error: Option<StoreError>) {
        let Write { result, after, tx, .. } = *self;
        let result = match (commit_error, result) {
            (Some(e), _) => Err(e.into()),
            (None, Some(result)) => {
                if let (Ok(value), Some(hook)) = (&result, after) {
                    hook(value);
                }
                result
            }
            (None, None) => Err(writer_stopped().into()),
        };
        let _ = tx.send(result);
    }
}

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

    /// Runs `f` in the writer's next transaction, in a savepoint of its
    /// own, and waits, without blocking a thread, until it commits. `hook`
    /// runs in the writer thread right after the commit, before any later
    /// job. A job that fails is rolled back to its savepoint; the others of
    /// its batch still commit.
    async fn write<T: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        hook: Option<CommitHook<T>>,
    ) -> Result<T, E> {
        let mut f = Some(f);
        let once = move |conn: &Connection, _careful: bool| match f.take() {
            Some(f) => f(conn),
            // A job that does not rerun runs once (`run_batch`).
            None => Err(writer_stopped().into()),
        };
        self.submit(once, false, None, hook).await
    }

    /// [`Self::write`] of a job that may run again: `f` keeps what it needs
    /// to, so it runs without a savepoint of its own and, should one of the
    /// batch's jobs without one fail, runs again (see [`run_batch`]).
    /// `before` runs once, before the commit, on its last result. The hot
    /// path's writes (enqueue, claim, finish) go this way.
    async fn write_again<T: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        f: impl FnMut(&Connection, bool) -> Result<T, E> + Send + 'static,
        before: Option<CommitHook<T>>,
        hook: Option<CommitHook<T>>,
    ) -> Result<T, E> {
        self.submit(f, true, before, hook).await
    }

    async fn submit<T: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        f: impl FnMut(&Connection, bool) -> Result<T, E> + Send + 'static,
        reruns: bool,
        before: Option<CommitHook<T>>,
        after: Option<CommitHook<T>>,
    ) -> Result<T, E> {
        let Ok(place) = self.queue_places.clone().acquire_owned().await else {
            return Err(writer_stopped().into());
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(Write {
            f,
            reruns,
            result: None,
            before,
            after,
            tx,
            place: Some(place),
        });
        // If the writer has stopped, the job (and its sender) is dropped,
        // and the receiver below reports that.
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

    /// [`Self::write_sql`] of a job that may run again
    /// ([`Self::write_again`]).
    fn write_sql_again<T: Send + 'static>(
        &self,
        mut f: impl FnMut(&Connection, bool) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreFuture<'_, Result<T, StoreError>> {
        Box::pin(async move {
            self.write_again(move |conn, careful| f(conn, careful).map_err(Fail::from), None, None)
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

/// `f` inside one deferred (read) transaction of `conn`, begun and ended by
/// statements prepared once (a burst's dispatcher reads at every wake).
fn snapshot<T>(conn: &Connection, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    if !conn.is_autocommit() {
        // A read that panicked left its transaction open.
        let _ = conn.execute_batch("ROLLBACK");
    }
    run_cached(conn, "BEGIN")?;
    let out = f(conn);
    let end = match &out {
        Ok(_) => run_cached(conn, "COMMIT"),
        Err(_) => run_cached(conn, "ROLLBACK"),
    };
    if end.is_err() && !conn.is_autocommit() {
        // Never leave the connection inside a transaction.
        let _ = conn.execute_batch("ROLLBACK");
    }
    let out = out?;
    end?;
    Ok(out)
}

/// Runs one cached statement of no result (a savepoint's).
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// The writer thread: takes every queued job, runs them in one transaction
/// ([`run_batch`]), commits once, then answers them all. Its own statements
/// (`BEGIN`, the savepoints, `COMMIT`) are prepared once.
fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = run_cached(&conn, "BEGIN IMMEDIATE") {
            // Nothing runs; every job is answered with the error.
            let e = store_error(e);
            for job in batch {
                job.answer(Some(e.clone()));
            }
            continue;
        }
        run_batch(&conn, &mut batch);
        if conn.is_autocommit() {
            // SQLite ended the transaction itself (a full disk, an I/O
            // error, no memory), or a rollback the batch needed failed:
            // nothing of the batch is written, and every job hears so.
            let lost = transaction_lost();
            for job in batch {
                job.answer(Some(lost.clone()));
            }
            continue;
        }
        for job in &mut batch {
            job.before_commit();
        }
        let commit = run_cached(&conn, "COMMIT").err().map(store_error);
        if commit.is_some() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for job in batch {
            job.answer(commit.clone());
        }
    }
}

/// The error of every job of a batch whose transaction ended before its
/// commit.
fn transaction_lost() -> StoreError {
    StoreError::Backend(
        "the store's transaction was rolled back after a write failed (a full disk, an I/O error or no memory); \
         nothing of this batch was written"
            .into(),
    )
}

/// Ends the writer's transaction: a savepoint it needed could not be made
/// or rolled back, so the batch is failed whole ([`writer_loop`] answers
/// it) rather than keep part of a failed job or write a job twice.
fn abandon(conn: &Connection) {
    let _ = conn.execute_batch("ROLLBACK");
}

/// Runs a batch's jobs in order in the open transaction, so that a job that
/// fails leaves no change and the others' changes stay. A job that does not
/// rerun runs in a savepoint of its own. Jobs that rerun run side by side
/// under one savepoint for all of them: a savepoint makes SQLite copy every
/// page a job first changes into its journal, about a seventh of the
/// writer's time in a burst when every job had one. Should one of them
/// fail, that savepoint is rolled back, and they run again up to the one
/// that failed, each in a savepoint of its own and careful, as a job that
/// does not rerun; the rest go on together. Once the transaction has
/// ended (SQLite rolls it back itself on some errors), nothing more runs:
/// outside it, a job's savepoint would commit on its own.
fn run_batch(conn: &Connection, batch: &mut [Job]) {
    let mut rest = batch;
    while let Some(first) = rest.first_mut() {
        if conn.is_autocommit() {
            return;
        }
        if !first.reruns() {
            run_alone(conn, first);
            rest = &mut rest[1..];
            continue;
        }
        let n = rest.iter().take_while(|j| j.reruns()).count();
        let (together, after) = rest.split_at_mut(n);
        run_together(conn, together);
        rest = after;
    }
}

/// Runs `job` careful, in a savepoint of its own (nothing once the
/// transaction has ended).
fn run_alone(conn: &Connection, job: &mut Job) {
    if conn.is_autocommit() {
        return;
    }
    if run_cached(conn, "SAVEPOINT job").is_err() {
        return abandon(conn);
    }
    if !job.run(conn, true) && !conn.is_autocommit() && run_cached(conn, "ROLLBACK TO job").is_err() {
        return abandon(conn);
    }
    if !conn.is_autocommit() && run_cached(conn, "RELEASE job").is_err() {
        abandon(conn);
    }
}

/// Runs jobs that rerun under one savepoint (see [`run_batch`]).
fn run_together(conn: &Connection, mut jobs: &mut [Job]) {
    while !jobs.is_empty() && !conn.is_autocommit() {
        if run_cached(conn, "SAVEPOINT jobs").is_err() {
            return abandon(conn);
        }
        let Some(failed) = jobs.iter_mut().position(|j| !j.run(conn, false)) else {
            if run_cached(conn, "RELEASE jobs").is_err() {
                abandon(conn);
            }
            return;
        };
        if conn.is_autocommit() {
            return;
        }
        if run_cached(conn, "ROLLBACK TO jobs").is_err() || run_cached(conn, "RELEASE jobs").is_err() {
            return abandon(conn);
        }
        let (again, rest) = jobs.split_at_mut(failed + 1);
        again.iter_mut().for_each(|j| run_alone(conn, j));
        jobs = rest;
    }
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
        let job = move |conn: &Connection, _careful: bool| enqueue_in(conn, &request, now, quota);
        Box::pin(async move {
            self.write_again(job, before_commit, on_commit)
                .await
                .map_err(Fail::work)
        })
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
        self.write_sql_again(move |conn, _careful| claim_in(conn, now, limit, &may_run, &device, &rates, None))
    }

    /// One job: the finish, then the claim. Careful (see `run_batch`),
    /// the claim runs in a savepoint of its own, so a claim that fails (a
    /// damaged task row) is rolled back alone and the finish still commits;
    /// otherwise a failed claim fails the job, which then runs again
    /// careful.
    fn finish_then_claim<'a>(
        &'a self,
        id: TaskId,
        lease: u64,
        transition: Transition,
        outcome: &'a RunOutcome,
        now: Millis,
        next: Option<NextClaim>,
    ) -> StoreFuture<'a, Result<FinishedAndClaimed, StoreError>> {
        let (record, output) = (AttemptEnd::of(outcome), output_json(&transition));
        let rates = if next.is_some() { self.rates() } else { HashMap::new() };
        let job = move |conn: &Connection, careful: bool| {
            let changes = finish_in(conn, id, lease, &transition, output.as_deref(), &record, now)?;
            let Some(next) = &next else {
                return Ok((changes, Vec::new()));
            };
            let claim = |conn| {
                claim_in(
                    conn,
                    next.now,
                    1,
                    &next.may_run,
                    &next.device,
                    &rates,
                    Some(&next.after),
                )
            };
            if !careful {
                return Ok((changes, claim(conn)?));
            }
            run_cached(conn, "SAVEPOINT claim")?;
            let claimed = claim(conn);
            if claimed.is_err() {
                run_cached(conn, "ROLLBACK TO claim")?;
            }
            run_cached(conn, "RELEASE claim")?;
            Ok((changes, claimed.unwrap_or_default()))
        };
        self.write_sql_again(job)
    }

    fn finish<'a>(
        &'a self,
        id: TaskId,
        lease: u64,
        transition: Transition,
        outcome: &'a RunOutcome,
        now: Millis,
    ) -> StoreFuture<'a, Result<Vec<Change>, StoreError>> {
        let finished = self.finish_then_claim(id, lease, transition, outcome, now, None);
        Box::pin(async move { finished.await.map(|(changes, _)| changes) })
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
        // One statement, prepared once, and no transaction around it.
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        conn.prepare_cached("PRAGMA data_version")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
            .map(|v| v as u64)
            .map_err(store_error)
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

    /// Holds SQLite's write lock so the writer waits in its `BEGIN` with one
    /// job of its own, while the writes under test queue up behind it into
    /// one batch; [`release`] of the connection it returns lets it go, and
    /// the handle ends with that first job.
    async fn hold_the_writer(store: &Arc<SqliteStore>) -> (Connection, tokio::task::JoinHandle<()>) {
        let holder = Connection::open(store.path()).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let first = {
            let store = store.clone();
            tokio::spawn(async move { store.write_sql(|c| set_setting(c, "first", "1")).await.unwrap() })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        (holder, first)
    }

    /// Lets the writer go 100 ms after it is first polled.
    async fn release(holder: Connection) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        holder.execute_batch("COMMIT").unwrap();
    }

    /// The settings `keys` as the store holds them.
    fn settings(store: &SqliteStore, keys: &str) -> Vec<(String, String)> {
        store
            .read(|c| {
                c.prepare(&format!(
                    "SELECT key, value FROM settings WHERE key IN ({keys}) ORDER BY key"
                ))?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
            })
            .unwrap()
    }

    /// A write of setting `key` that may rerun, counting its runs; `fails`
    /// says whether a run (careful or not) fails after writing, and how.
    fn again(
        store: &Arc<SqliteStore>,
        key: &'static str,
        runs: &Arc<std::sync::atomic::AtomicUsize>,
        fails: fn(&Connection, bool) -> Option<rusqlite::Error>,
    ) -> StoreFuture<'static, Result<(), StoreError>> {
        let (store, runs) = (store.clone(), runs.clone());
        Box::pin(async move {
            store
                .write_sql_again(move |c, careful| {
                    runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    set_setting(c, key, if careful { "careful" } else { "fast" })?;
                    fails(c, careful).map_or(Ok(()), Err)
                })
                .await
        })
    }

    /// A write of setting `key` (to "once") that does not rerun, counting
    /// its runs.
    fn once(
        store: &Arc<SqliteStore>,
        key: &'static str,
        runs: &Arc<std::sync::atomic::AtomicUsize>,
    ) -> StoreFuture<'static, Result<(), StoreError>> {
        let (store, runs) = (store.clone(), runs.clone());
        Box::pin(async move {
            store
                .write_sql(move |c| {
                    runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    set_setting(c, key, "once")
                })
                .await
        })
    }

    /// One batch of writes, some without savepoints of their own: one that
    /// fails on its first run (not careful) and succeeds careful, one that
    /// always fails, and one that does not rerun between them. Every write
    /// that succeeded commits once; nothing of a failed run stays; the jobs
    /// run together before a failure run again, each alone.
    #[tokio::test]
    async fn a_failed_write_in_a_batch_leaves_nothing_and_the_others_commit_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = std::env::temp_dir().join(format!("workhost-writer-batch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqliteStore::open(&dir).unwrap();
        let (holder, first) = hold_the_writer(&store).await;
        let runs: Vec<Arc<AtomicUsize>> = (0..6).map(|_| Arc::default()).collect();
        let refused = |_: &Connection, _| Some(rusqlite::Error::InvalidQuery);
        let (a, b, c, d, e, f, ()) = tokio::join!(
            again(&store, "a", &runs[0], |_, _| None),
            again(&store, "b", &runs[1], |_, careful| (!careful)
                .then_some(rusqlite::Error::InvalidQuery)),
            once(&store, "c", &runs[2]),
            again(&store, "d", &runs[3], |_, _| None),
            again(&store, "e", &runs[4], refused),
            again(&store, "f", &runs[5], |_, _| None),
            release(holder),
        );
        first.await.unwrap();
        assert!(a.is_ok() && b.is_ok() && c.is_ok() && d.is_ok() && f.is_ok());
        assert!(
            matches!(&e, Err(StoreError::Backend(m)) if m.contains("Query is not read-only")),
            "the failed write hears its own error: {e:?}"
        );
        let expect = [
            ("a", "careful"),
            ("b", "careful"),
            ("c", "once"),
            ("d", "careful"),
            ("f", "fast"),
        ];
        assert_eq!(
            settings(&store, "'a', 'b', 'c', 'd', 'e', 'f'"),
            expect.map(|(k, v)| (k.to_string(), v.to_string())),
            "each write that succeeded, as its last run left it"
        );
        let counts: Vec<usize> = runs.iter().map(|r| r.load(Ordering::SeqCst)).collect();
        // a and b ran together, then again alone after b failed; c alone
        // once; d and e together, then again alone after e failed; f once.
        assert_eq!(counts, [2, 2, 1, 2, 2, 1]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A write whose failure ends the whole transaction (as SQLite does on
    /// a full disk or an I/O error) fails its batch: nothing of it is
    /// written, every write hears so, and no later job runs outside the
    /// transaction, where its savepoint would commit on its own.
    #[tokio::test]
    async fn a_batch_whose_transaction_ends_early_writes_nothing_and_fails_every_write() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = std::env::temp_dir().join(format!("workhost-writer-lost-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqliteStore::open(&dir).unwrap();
        let (holder, first) = hold_the_writer(&store).await;
        let runs: Vec<Arc<AtomicUsize>> = (0..4).map(|_| Arc::default()).collect();
        let ends_it = |c: &Connection, _| {
            c.execute_batch("ROLLBACK").unwrap();
            Some(rusqlite::Error::InvalidQuery)
        };
        let (a, b, c, d, ()) = tokio::join!(
            again(&store, "a", &runs[0], |_, _| None),
            again(&store, "b", &runs[1], ends_it),
            once(&store, "c", &runs[2]),
            again(&store, "d", &runs[3], |_, _| None),
            release(holder),
        );
        first.await.unwrap();
        for (what, result) in [("a", a), ("b", b), ("c", c), ("d", d)] {
            assert!(
                matches!(&result, Err(StoreError::Backend(m)) if m.contains("nothing of this batch was written")),
                "{what}: {result:?}"
            );
        }
        assert_eq!(settings(&store, "'a', 'b', 'c', 'd'"), [], "nothing of the batch");
        let counts: Vec<usize> = runs.iter().map(|r| r.load(Ordering::SeqCst)).collect();
        assert_eq!(counts, [1, 1, 0, 0], "nothing ran after the transaction ended");
        // The writer goes on with the next batch.
        store.write_sql(|c| set_setting(c, "after", "1")).await.unwrap();
        assert_eq!(settings(&store, "'after'"), [("after".to_string(), "1".to_string())]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

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
