//! The durable task store: the [`TaskStore`] trait, the one seam between
//! the host and its storage, and its backends ([`SqliteStore`], the
//! embedded default). Only this module does disk IO for tasks. Schema and
//! commit protocol: docs/store.md.
//!
//! - `sqlite`: [`SqliteStore`] (one SQLite database in WAL mode in the
//!   data directory, one writer thread, group commit).
//! - `postgres`: [`PgStore`] (one PostgreSQL database that any number of
//!   hosts share: claims skip locked rows, runs and hosts hold leases).

mod plan;
mod postgres;
mod sqlite;

pub use postgres::{DEFAULT_HOST_LEASE, PgStore};
pub use sqlite::SqliteStore;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

use crate::data::Data;
use crate::device::DeviceState;
use crate::kv::KvStore;
use crate::outcome::RunOutcome;
use crate::retry::{RetryFacts, Transition};
use crate::work::{Enqueued, HandlerLimits, Millis, StoreError, TaskId, TaskInfo, TaskState, WorkError, WorkRequest};

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

/// A filter for [`TaskStore::query`] and the bulk actions
/// ([`TaskStore::retry`], [`TaskStore::run_now`], [`TaskStore::delete`],
/// [`TaskStore::cancel_matching`]); unset fields match everything.
///
/// The filter fields are `state`, `tag`, `unique_name`, `ids`, `handler`
/// and `search`. The paging fields, `after_id`, `before_id`, `limit` and
/// `newest_first`, shape a page of [`TaskStore::query`] only: a bulk
/// action ignores all four and applies to every task the filter fields
/// match (a dashboard's "retry all that match", whatever page it shows).
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
    /// Only tasks of this handler.
    pub handler: Option<String>,
    /// Only tasks where this text occurs, in any case (SQLite folds ASCII
    /// letters only; PostgreSQL every letter), in the id as text, the
    /// handler, the task name, the unique name, a tag, the input (its
    /// stored JSON text) or the last error. `%`, `_` and `\` are matched
    /// as themselves. A scan of the tasks the other fields leave: give a
    /// `limit`.
    pub search: Option<String>,
    /// Only tasks of this kind.
    pub kind: Option<crate::budget::TaskKind>,
    /// Only the tasks that run after this one (its direct dependents).
    pub dependents_of: Option<TaskId>,
    /// Paging: only ids above this one (tasks enqueued since).
    pub after_id: Option<TaskId>,
    /// Paging: only ids below this one: the cursor of newest-first pages
    /// (the last id of one page is `before_id` of the next).
    pub before_id: Option<TaskId>,
    /// Paging: at most this many (default: all).
    pub limit: Option<usize>,
    /// Paging: newest (highest id) first; the default is oldest first. With
    /// a `limit`, a page is read from the id index's end: no sort of the
    /// whole table.
    pub newest_first: bool,
}

impl Query {
    /// The `LIKE` pattern of [`Self::search`]: the text with `\`, `%`
    /// and `_` escaped by `\`, between `%`s.
    pub(crate) fn search_pattern(&self) -> Option<String> {
        self.search.as_ref().map(|text| {
            let mut p = String::with_capacity(text.len() + 2);
            p.push('%');
            for c in text.chars() {
                if matches!(c, '\\' | '%' | '_') {
                    p.push('\\');
                }
                p.push(c);
            }
            p.push('%');
            p
        })
    }
}

/// How many tasks each handler has in each state
/// ([`TaskStore::count_by_handler`]).
pub type HandlerCounts = HashMap<String, HashMap<TaskState, usize>>;

/// A task claimed for a run: the record as it was claimed (state RUNNING,
/// attempt counted), and the lease that fences the run's writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// The task.
    pub info: TaskInfo,
    /// Start of its current period (periodic work).
    pub period_start: Millis,
    /// The run's fencing token: a number the store issues with each claim
    /// of the task, larger than any before it (it survives periods and
    /// recovery, unlike the attempt count). [`TaskStore::finish`] and
    /// [`TaskStore::set_progress`] carry it, and change nothing once the
    /// task has been claimed again or has left RUNNING meanwhile.
    pub lease: u64,
}

impl Claimed {
    /// The facts the retry policy needs.
    pub fn retry_facts(&self) -> RetryFacts {
        RetryFacts {
            kind: self.info.kind,
            periodic: self.info.periodic,
            cron: self.info.cron.clone(),
            period_start: self.period_start,
            attempts: self.info.run_attempt_count,
            max_attempts: self.info.max_attempts,
            backoff: self.info.backoff,
            backoff_delay_ms: crate::work::millis(self.info.backoff_delay),
        }
    }
}

/// What [`TaskStore::finish_then_claim`] returns: the finish's changes,
/// and the task claimed for the freed slot, if any.
pub type FinishedAndClaimed = (Vec<Change>, Vec<Claimed>);

/// The claim [`TaskStore::finish_then_claim`] makes for the slot a finished
/// run frees.
#[derive(Debug, Clone)]
pub struct NextClaim {
    /// The claiming host.
    pub me: HostIdentity,
    /// The claim's "now" (the dispatcher's, after following the clock).
    pub now: Millis,
    /// The handlers that may start a run, each with its free slots
    /// (counting the freed one).
    pub may_run: HashMap<String, usize>,
    /// The device state constraints are checked against.
    pub device: DeviceState,
    /// The handler of the run that ended: another handler's first due task
    /// goes before its next.
    pub after: String,
}

/// Who a host is to its store. `id` stays the same across restarts of a
/// host on one data directory (it is kept in `<data_dir>/host-id`);
/// `incarnation` is new with every start, so a store tells a restarted
/// host from the run it replaced.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct HostIdentity {
    /// Stable per data directory: the host name and a random suffix.
    pub id: String,
    /// New with every start.
    pub incarnation: String,
}

/// A host serving a store, as the store knows it (`workhost hosts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostInfo {
    /// Its id (see [`HostIdentity`]).
    pub id: String,
    /// Its current incarnation.
    pub incarnation: String,
    /// When this incarnation started, ms since the epoch.
    pub started_at: Millis,
    /// When it last renewed its lease (the start, on a store without
    /// leases).
    pub renewed_at: Millis,
    /// When its lease runs out unless renewed; `None` on a store that one
    /// host serves at a time (no leases: see [`TaskStore::host_lease`]).
    pub expires_at: Option<Millis>,
    /// Whether it is serving now.
    pub live: bool,
    /// How many tasks it runs.
    pub running: usize,
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

/// The future a [`TaskStore`] method returns (boxed, so the trait is used
/// as `dyn TaskStore`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What [`TaskStore::enqueue`] runs around its commit: `before_commit` sees
/// the result inside the transaction, before any other connection can read
/// it; `on_commit` runs right after it is durable and before this store
/// makes any later write, so observers hear of a task before this process
/// can claim it.
#[derive(Default)]
pub struct EnqueueHooks {
    /// Runs inside the transaction, before the commit.
    pub before_commit: Option<CommitHook<(Enqueued, Vec<Change>)>>,
    /// Runs right after the commit.
    pub on_commit: Option<CommitHook<(Enqueued, Vec<Change>)>>,
}

impl std::fmt::Debug for EnqueueHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnqueueHooks")
            .field("before_commit", &self.before_commit.is_some())
            .field("on_commit", &self.on_commit.is_some())
            .finish()
    }
}

/// A durable task store: the one seam between the host and its storage.
/// The host, its queue and the CLI reach every backend through this trait
/// alone. Every method is atomic and durable when its future resolves, and
/// none blocks the thread that awaits it. Backends pass the conformance
/// suite in `tests/all/store.rs`, which runs every case on every backend.
///
/// The retry rule lives in [`crate::decide`] and nowhere else: a store
/// applies the [`Transition`] it is given, and recovery asks the same
/// module what follows a run its host died during.
pub trait TaskStore: Send + Sync + std::fmt::Debug {
    /// Enqueues work (already checked by [`WorkRequest::checked`]), applying
    /// its unique-work policy atomically; runs `hooks` around the commit.
    fn enqueue(
        &self,
        request: WorkRequest,
        now: Millis,
        hooks: EnqueueHooks,
    ) -> StoreFuture<'_, Result<(Enqueued, Vec<Change>), WorkError>>;
    /// Claims up to `limit` due ENQUEUED tasks for host `me`, whose handler `may_run` (at
    /// most that handler's count of free slots) and whose constraints hold
    /// in `device`, marking them RUNNING, counting the attempt and issuing
    /// each a lease. Nothing while the store is paused, and no more runs of
    /// a handler than its rate allows (see [`Self::set_limits`]). Fair across
    /// handlers: each handler with a free slot gets its first due task
    /// before any handler gets a second; within a handler, expedited work
    /// first, then by due time aged by priority ([`crate::work::claim_key`]),
    /// so one handler's backlog never holds up another's due task, and work
    /// of a handler not in `may_run` holds up nothing.
    fn claim(
        &self,
        me: HostIdentity,
        now: Millis,
        limit: usize,
        may_run: HashMap<String, usize>,
        device: DeviceState,
    ) -> StoreFuture<'_, Result<Vec<Claimed>, StoreError>>;
    /// Records how the run holding `lease` ended, and applies its
    /// transition unless the task left RUNNING or was claimed again
    /// meanwhile (cancelled, or recovered): then only the run's own attempt
    /// record is completed. Unblocks, fails or cancels dependents as needed.
    fn finish<'a>(
        &'a self,
        id: TaskId,
        lease: u64,
        transition: Transition,
        outcome: &'a RunOutcome,
        now: Millis,
    ) -> StoreFuture<'a, Result<Vec<Change>, StoreError>>;
    /// [`Self::finish`], then, when `next` is given, a claim of at most one
    /// task for the slot the run frees, as [`Self::claim`] would make it
    /// (pause, rates, constraints and `next.may_run` alike), in the same
    /// commit where the backend can: a host under load keeps each run slot
    /// busy without a round trip through its dispatcher. A claim that
    /// fails claims nothing and never undoes the finish. Among handlers'
    /// first due tasks, one of a handler other than `next.after` comes
    /// first, so a slot passes round the handlers rather than staying with
    /// one. The default records the finish and claims nothing (the
    /// dispatcher claims for the slot).
    fn finish_then_claim<'a>(
        &'a self,
        id: TaskId,
        lease: u64,
        transition: Transition,
        outcome: &'a RunOutcome,
        now: Millis,
        next: Option<NextClaim>,
    ) -> StoreFuture<'a, Result<FinishedAndClaimed, StoreError>> {
        let _ = next;
        Box::pin(async move { Ok((self.finish(id, lease, transition, outcome, now).await?, Vec::new())) })
    }
    /// Stores the latest progress of the run holding `lease`; changes
    /// nothing once that run is no longer the task's current one.
    fn set_progress<'a>(
        &'a self,
        id: TaskId,
        lease: u64,
        progress: &'a Data,
    ) -> StoreFuture<'a, Result<(), StoreError>>;
    /// Cancels unfinished tasks and their dependents; returns what changed.
    fn cancel(&self, selector: Selector, now: Millis) -> StoreFuture<'_, Result<Vec<Change>, StoreError>>;
    /// Cancels the unfinished tasks the query's filter fields match (its
    /// paging fields are ignored), and their dependents, in one
    /// transaction; returns what changed.
    fn cancel_matching(&self, query: Query, now: Millis) -> StoreFuture<'_, Result<Vec<Change>, StoreError>>;
    /// Enqueues again, in one transaction, the FAILED and CANCELLED tasks
    /// the query's filter fields match (paging fields ignored): each is
    /// due at `now` (periodic work resumes its schedule from `now`:
    /// [`crate::resume_schedule`]) with its attempt count back to 0 and its
    /// finish time, error and stop reason cleared; its attempt history is
    /// kept, and its runs' records keep their increasing keys. The
    /// dependents that ended because of a retried task (transitively) come
    /// back with it, as BLOCKED. A task that still waits for work it runs
    /// after, or for a task retried with it, becomes BLOCKED rather than
    /// ENQUEUED; one whose prerequisite is FAILED or CANCELLED and not
    /// retried with it is left as it is. Returns what changed, by id.
    fn retry(&self, query: Query, now: Millis) -> StoreFuture<'_, Result<Vec<Change>, StoreError>>;
    /// Makes the ENQUEUED tasks the query's filter fields match (paging
    /// fields ignored) that are due after `now` due at `now`: a delay, a
    /// backoff or a period's wait ends at once. Periodic work runs this
    /// period now (its next period follows as if it had run on time); cron
    /// work runs its pending fire now. Returns what changed.
    fn run_now(&self, query: Query, now: Millis) -> StoreFuture<'_, Result<Vec<Change>, StoreError>>;
    /// Deletes the finished (SUCCEEDED, FAILED, CANCELLED) tasks the query's
    /// filter fields match (paging fields ignored), with their attempts,
    /// tags and dependency rows, as [`Self::prune`] does: a finished task
    /// that an unfinished task runs after is kept, and so is one another
    /// transaction holds at that moment (PostgreSQL). Returns the ids
    /// deleted.
    fn delete(&self, query: Query) -> StoreFuture<'_, Result<Vec<TaskId>, StoreError>>;
    /// Pauses (or resumes) one handler, durably and for every process on
    /// the store: [`Self::claim`] starts none of its work while it is
    /// paused, and [`Self::next_due`] and [`Self::waiting_for_handler`] leave
    /// its work out. Its running work finishes; enqueues are still taken.
    fn set_handler_paused(&self, handler: String, paused: bool) -> StoreFuture<'_, Result<(), StoreError>>;
    /// The paused handlers, sorted.
    fn paused_handlers(&self) -> StoreFuture<'_, Result<Vec<String>, StoreError>>;
    /// How many tasks each handler has in each state (a scan of an
    /// index: for dashboards and the CLI, not for every wake).
    fn count_by_handler(&self) -> StoreFuture<'_, Result<HandlerCounts, StoreError>>;
    /// The distinct version pins of unfinished work (an index of pinned
    /// tasks only: memory by pins, not by tasks).
    fn pins_in_use(&self) -> StoreFuture<'_, Result<Vec<String>, StoreError>>;
    /// Cancels the unfinished tasks `ids` (and their dependents) in one
    /// transaction, recording `reason` as each one's error; returns what
    /// changed.
    fn cancel_because(
        &self,
        ids: Vec<TaskId>,
        reason: String,
        now: Millis,
    ) -> StoreFuture<'_, Result<Vec<Change>, StoreError>>;
    /// Makes ENQUEUED task `id` due at `now`: the test driver's "initial
    /// delay met" and "period delay met" (unlike [`Self::run_now`], a cron
    /// task's run then stands for a fire at `now`).
    fn make_due(&self, id: TaskId, now: Millis) -> StoreFuture<'_, Result<(), WorkError>>;
    /// One task with its attempt history.
    fn get(&self, id: TaskId) -> StoreFuture<'_, Result<Option<TaskInfo>, StoreError>>;
    /// Tasks matching the filter, without attempt history.
    fn query(&self, query: Query) -> StoreFuture<'_, Result<Vec<TaskInfo>, StoreError>>;
    /// The highest task id so far (0 for an empty store).
    fn last_id(&self) -> StoreFuture<'_, Result<TaskId, StoreError>>;
    /// How many tasks are in each state.
    fn count_by_state(&self) -> StoreFuture<'_, Result<HashMap<TaskState, usize>, StoreError>>;
    /// The earliest `next_run_at` of ENQUEUED work of `handlers` whose
    /// constraints hold in `device`.
    fn next_due(
        &self,
        handlers: Vec<String>,
        device: DeviceState,
    ) -> StoreFuture<'_, Result<Option<Millis>, StoreError>>;
    /// ENQUEUED work due at `now` whose handler is not one of `known`, per
    /// handler: work a host with only `known` handlers never claims.
    fn waiting_for_handler(
        &self,
        known: Vec<String>,
        now: Millis,
    ) -> StoreFuture<'_, Result<Vec<HandlerWait>, StoreError>>;
    /// Ends the runs of hosts that are gone: on a store with host leases,
    /// the RUNNING tasks of hosts whose lease ran out and of `me`'s earlier
    /// incarnations; on a store one host serves at a time (no leases; the
    /// caller holds the data directory's `serve.lock`), every RUNNING task.
    /// Each attempt is recorded as stopped (`host-shutdown`, "the host died
    /// during this run") and what follows is [`crate::decide_orphaned`]'s
    /// decision, applied as [`Self::finish`] applies a run's.
    fn recover(&self, me: HostIdentity, now: Millis) -> StoreFuture<'_, Result<Vec<Change>, StoreError>>;
    /// How long a host's lease on this store lasts without renewal, if the
    /// store has leases (several hosts may serve it at once: a host renews
    /// with [`Self::renew_host`] well within it, and stops its own runs
    /// when it could not). `None`, the default: one host serves the store
    /// at a time and holds no lease.
    fn host_lease(&self) -> Option<std::time::Duration> {
        None
    }
    /// Records host `me` as serving this store, from `now`.
    fn register_host(&self, me: HostIdentity, now: Millis) -> StoreFuture<'_, Result<(), StoreError>>;
    /// Renews `me`'s lease and returns the tasks it holds (id and lease):
    /// any run of `me` missing there was cancelled or rescued elsewhere.
    /// [`StoreError::LeaseLost`] once the lease ran out: it is never
    /// renewed after that; the host registers again.
    fn renew_host(&self, me: HostIdentity, now: Millis) -> StoreFuture<'_, Result<Vec<(TaskId, u64)>, StoreError>>;
    /// Removes `me` as it stops serving (after its runs ended).
    fn leave_host(&self, me: HostIdentity) -> StoreFuture<'_, Result<(), StoreError>>;
    /// Every host recorded as serving this store, at `now`.
    fn hosts(&self, now: Millis) -> StoreFuture<'_, Result<Vec<HostInfo>, StoreError>>;
    /// Sets each handler's scheduling limits, from this process's
    /// manifest: its rate (claims start no more of its runs per window,
    /// counted over every host on the store) and its expedited quota
    /// (enqueues accept no more expedited requests per window). A handler
    /// not named has neither.
    fn set_limits(&self, limits: HashMap<String, HandlerLimits>);
    /// Sets the paused flag shared by every process on this store.
    fn set_paused(&self, paused: bool) -> StoreFuture<'_, Result<(), StoreError>>;
    /// The paused flag.
    fn paused(&self) -> StoreFuture<'_, Result<bool, StoreError>>;
    /// Follows the wall clock across jumps. `reading` is the wall clock
    /// minus a steady clock that a change of the wall clock does not move,
    /// on boot `boot`. The first reading on a boot is only recorded. A later
    /// one that differs from the recorded one by `threshold` or more means
    /// the wall clock jumped by the difference: every unfinished task's due
    /// time and period start move by it, so a wait keeps its length, and the
    /// new reading is recorded. The check and the move are one transaction,
    /// so processes sharing the store move each task once. Returns the jump
    /// and the tasks waiting to run that it moved.
    fn follow_clock(
        &self,
        boot: String,
        reading: Millis,
        threshold: Millis,
    ) -> StoreFuture<'_, Result<ClockJump, StoreError>>;
    /// Deletes finished tasks that finished before `before`, with their
    /// attempts, tags and dependencies; returns how many. A finished task
    /// that an unfinished task runs after is kept, so a waiting child keeps
    /// its parents' outputs.
    fn prune(&self, before: Millis) -> StoreFuture<'_, Result<usize, StoreError>>;
    /// The earliest time a task kept in the store finished (a read: it
    /// tells whether a [`Self::prune`] may have something to do).
    fn oldest_finished(&self) -> StoreFuture<'_, Result<Option<Millis>, StoreError>>;
    /// A number that changes whenever another process commits. Cheap and
    /// answered at once (the dispatcher calls it at every wake, inline):
    /// a backend reads an in-memory counter, never the network.
    fn change_counter(&self) -> Result<u64, StoreError>;
    /// The durable kv backend on this store.
    fn kv(&self) -> Arc<dyn KvStore>;
    /// The kv backend a run of task `id` holding `lease` writes through:
    /// on a store several hosts share, its writes change nothing once the
    /// run's lease was taken away (the guest sees the kv store
    /// unavailable, and the run's attempt is marked fenced). The default,
    /// for a store one host serves at a time: [`Self::kv`].
    fn run_kv(&self, id: TaskId, lease: u64) -> Arc<dyn KvStore> {
        let _ = (id, lease);
        self.kv()
    }
}

/// How many attempts a periodic task keeps: its latest runs, over every
/// period (older ones are deleted as each run is recorded).
pub const PERIODIC_ATTEMPTS_KEPT: u32 = 10;

/// A callback a store runs at a point of a write's commit (see
/// [`EnqueueHooks`]).
pub type CommitHook<T> = Box<dyn FnOnce(&T) + Send>;
