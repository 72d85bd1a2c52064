//! [`PgStore`]: the store several hosts share, on PostgreSQL. Each
//! operation is one READ COMMITTED transaction of the statements in
//! `sql.rs` (retried on a deadlock or serialization failure); claims skip
//! locked rows, every run holds a lease that fences its writes, hosts hold
//! leases judged on the database's clock, and LISTEN/NOTIFY tells every
//! host of every change. Protocol and reasons: docs/scale-out.md.
//!
//! - `sql`: the schema migrations and one constant per statement.
//! - `rows`: task rows to [`TaskInfo`], and the errors of this backend.
//! - `ops`: the operations that take several statements (enqueue, finish,
//!   chains, rescue), run inside one transaction.
//! - `batch`: group commit: the writers of enqueues and finishes, many
//!   to a transaction.
//! - `kv`: the handlers' kv stores on the `kv` table.

mod batch;
mod kv;
mod ops;
mod rows;
pub(crate) mod sql;
mod tls;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use crate::data::Data;
use crate::device::DeviceState;
use crate::kv::KvStore;
use crate::outcome::RunOutcome;
use crate::retry::Transition;
use crate::store::{
    Change, Claimed, ClockJump, EnqueueHooks, HandlerCounts, HandlerWait, HostIdentity, HostInfo, Query, Selector,
    StoreFuture, TaskStore,
};
use crate::work::{Enqueued, Millis, StoreError, TaskId, TaskInfo, TaskState, WorkError, WorkRequest};

use rows::{Fail, device_params, task_from_row};

/// How long a host's lease lasts without renewal: a host renews seven
/// times in it, and a host that has not renewed for this long is presumed
/// dead and its work rescued.
pub const DEFAULT_HOST_LEASE: Duration = Duration::from_secs(15);

/// Most connections a host opens to the database (one more listens).
pub const POOL_SIZE: usize = 8;

/// How many times an operation is tried when the database reports a
/// deadlock or a serialization failure (both mean "try again").
const TRIES: usize = 4;

/// Awaits `$attempt` (an `async` block yielding `Result<T, Fail>`), again
/// from the start when the database reports a deadlock or a serialization
/// failure, up to [`TRIES`] times.
macro_rules! retrying {
    ($attempt:expr) => {{
        let mut tries = 0;
        loop {
            tries += 1;
            let attempt: Result<_, Fail> = $attempt.await;
            match attempt {
                Err(f) if f.is_retryable() && tries < TRIES => continue,
                other => break other,
            }
        }
    }};
}

/// Runs `$body` (an expression using the transaction `$tx`, yielding
/// `Result<T, Fail>`) in one transaction on a pooled connection, commits,
/// and tries again from the start when the database reports a deadlock or
/// a serialization failure.
macro_rules! in_tx {
    ($store:expr, |$tx:ident| $body:expr) => {
        retrying!(async {
            let mut client = $store.client().await?;
            let $tx = client.transaction().await?;
            let value = $body?;
            $tx.commit().await?;
            Ok(value)
        })
    };
}
pub(super) use {in_tx, retrying};

/// The store on PostgreSQL: `PgStore::open("postgres://...")`.
pub struct PgStore {
    pool: Pool,
    /// The database, as messages name it (no password).
    name: String,
    /// Bumped by the listener at every notification (every commit of a
    /// change, by any host); see [`TaskStore::change_counter`].
    changes: Arc<AtomicU64>,
    /// Whether the listener is connected; while it is not, every read of
    /// the change counter counts as a change (a poll).
    listening: Arc<AtomicBool>,
    listener: tokio::task::JoinHandle<()>,
    /// The enqueue and finish writers' queues (`batch`): each writer ends
    /// once its queue's sender is dropped with the store.
    enqueues: tokio::sync::mpsc::UnboundedSender<batch::EnqueueJob>,
    finishes: tokio::sync::mpsc::UnboundedSender<batch::FinishJob>,
    lease: Duration,
    kv: Arc<kv::PgKv>,
    /// Each handler's rate and expedited quota ([`TaskStore::set_limits`]).
    limits: std::sync::Mutex<Arc<HashMap<String, crate::work::HandlerLimits>>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// `url` without its password, to name the database in messages.
fn display_name(config: &tokio_postgres::Config) -> String {
    let user = config.get_user().unwrap_or("");
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            // One port for all hosts, or one each (libpq's rule).
            match ports.get(i).or(ports.first().filter(|_| ports.len() == 1)) {
                Some(&port) if port != 5432 => format!("{host}:{port}"),
                _ => host,
            }
        })
        .collect();
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{}/{db}", hosts.join(","))
}

impl PgStore {
    /// Connects to the database at `url` (a `postgres://` URL or a
    /// `key=value` connection string), and creates or migrates its schema.
    /// A database that holds another program's tables, a `workhost` schema
    /// without workhost's mark, or a store of a newer schema version is
    /// refused, naming it, and left unchanged; so is one that cannot be
    /// reached or refuses the credentials. TLS is as libpq's `sslmode`,
    /// `sslrootcert`, `sslcert` and `sslkey` options in `url` say
    /// (docs/scale-out.md, "Connections").
    pub async fn open(url: &str) -> Result<Arc<PgStore>, StoreError> {
        Self::open_with_lease(url, DEFAULT_HOST_LEASE).await
    }

    /// [`Self::open`] with hosts holding leases of `lease`.
    pub async fn open_with_lease(url: &str, lease: Duration) -> Result<Arc<PgStore>, StoreError> {
        Self::open_with(url, None, lease).await
    }

    /// As [`PgStore::open_with_lease`], with the LISTEN connection to
    /// `listen_url` when given, instead of to `url`: behind a pooler in
    /// transaction mode (PgBouncer), which cannot hold a LISTEN, `url` names
    /// the pooler and `listen_url` the server itself. Same database: a
    /// listener on another one hears nothing of this one's changes. A
    /// `listen_url` that cannot be parsed or connected to is refused at
    /// open, naming it.
    pub async fn open_with(url: &str, listen_url: Option<&str>, lease: Duration) -> Result<Arc<PgStore>, StoreError> {
        let parse = |url: &str, label: &str| -> Result<(tokio_postgres::Config, tls::Tls), StoreError> {
            let refused = |detail: String| StoreError::Unavailable {
                database: label.into(),
                detail,
            };
            let (rest, tls) = tls::split(url).map_err(refused)?;
            let mut config = rest
                .parse()
                .map_err(|e| refused(format!("it is not a PostgreSQL connection URL or string: {e}")))?;
            tls::settle(&mut config);
            Ok((config, tls))
        };
        let (mut config, tls) = parse(url, "the database URL")?;
        let listen_config = listen_url.map(|u| parse(u, "the listener URL")).transpose()?;
        // A host frozen (SIGSTOP, a paused VM) inside a transaction would
        // hold its row locks, and with them every other host's rescue of
        // its work, until it woke: the server ends such a session after a
        // lease, releasing them. This workhost's transactions never wait
        // on anything but the database.
        let idle = format!(
            "-c idle_in_transaction_session_timeout={}",
            crate::work::millis(lease).max(1000)
        );
        let options = match config.get_options() {
            Some(given) if !given.is_empty() => format!("{given} {idle}"),
            _ => idle,
        };
        config.options(&options);
        let name = display_name(&config);
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot build the connection pool: {e}")))?;
        let changes = Arc::new(AtomicU64::new(0));
        let listening = Arc::new(AtomicBool::new(false));
        let probe = Arc::new(Probe::default());
        // With a listener URL of its own, the listener's first connection
        // is reported (and checked below); without, the pool's own first
        // connection (the migration) tells whether the database is there.
        let (first, connected) = tokio::sync::oneshot::channel();
        let (listen_to, listen_tls) = listen_config.clone().unwrap_or_else(|| (config.clone(), tls));
        let listener = tokio::spawn(listen(
            listen_to,
            listen_tls,
            changes.clone(),
            listening.clone(),
            probe.clone(),
            listen_config.is_some().then_some(first),
        ));
        if let Some((listen_config, _)) = &listen_config {
            // Refused now rather than polled for ever: a listener that
            // never connects, or listens to another database, would leave
            // this host hearing nothing of other hosts' work. Before the
            // schema is touched, so a refusal changes nothing.
            let label = format!("the listener URL ({})", display_name(listen_config));
            let checked = check_listener(&pool, &name, &probe, connected, &label).await;
            if let Err(e) = checked {
                listener.abort();
                return Err(e);
            }
        }
        let (enqueues, enqueue_queue) = tokio::sync::mpsc::unbounded_channel();
        let (finishes, finish_queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(batch::enqueuer(pool.clone(), name.clone(), enqueue_queue));
        tokio::spawn(batch::finisher(pool.clone(), name.clone(), finish_queue));
        let store = Arc::new_cyclic(|weak| PgStore {
            pool,
            name,
            changes,
            listening,
            listener,
            enqueues,
            finishes,
            lease,
            kv: Arc::new(kv::PgKv {
                store: weak.clone(),
                fence: None,
            }),
            limits: std::sync::Mutex::default(),
        });
        store.migrate().await?;
        Ok(store)
    }

    fn limits(&self) -> Arc<HashMap<String, crate::work::HandlerLimits>> {
        self.limits.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The database, as messages name it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A pooled connection.
    async fn client(&self) -> Result<deadpool_postgres::Object, Fail> {
        pooled(&self.pool).await
    }

    /// Turns this backend's error into the store's, naming the database.
    fn store_error(&self, f: Fail) -> StoreError {
        f.store(&self.name)
    }

    fn work_error(&self, f: Fail) -> WorkError {
        f.work(&self.name)
    }

    /// Creates or migrates the schema, in one transaction under the
    /// migration lock (hosts starting at once on an empty database create
    /// it once). Refuses what is not a workhost store, changing nothing.
    async fn migrate(&self) -> Result<(), StoreError> {
        in_tx!(self, |tx| ops::migrate_in(&tx, &self.name).await).map_err(|f| self.store_error(f))
    }
}

/// A connection from `pool`.
async fn pooled(pool: &Pool) -> Result<deadpool_postgres::Object, Fail> {
    pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => Fail::Pg(e),
        other => Fail::Pool(other.to_string()),
    })
}

/// The error of a writer (`batch`) that stopped before it answered.
fn writer_stopped(what: &str) -> StoreError {
    StoreError::Backend(format!("the PostgreSQL store's {what} writer stopped"))
}

/// How long the listener URL's check waits to hear the probe it sends
/// through the pool.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A notification the listener waits for (its payload), to tell whoever
/// sent it: the check that the listener URL reaches the pool's database.
#[derive(Default)]
struct Probe(std::sync::Mutex<Option<(String, tokio::sync::oneshot::Sender<()>)>>);

impl Probe {
    /// Tells the waiter, if `payload` is the one it waits for.
    fn heard(&self, payload: &str) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|(want, _)| want == payload)
            && let Some((_, tell)) = slot.take()
        {
            let _ = tell.send(());
        }
    }
}

/// Checks the listener at open (`database_listen`): its first connection
/// and LISTEN succeeded (`connected`), and a notification sent through the
/// pool (the `database` URL) is heard on it, so both reach one database.
async fn check_listener(
    pool: &Pool,
    database: &str,
    probe: &Probe,
    connected: tokio::sync::oneshot::Receiver<Result<(), tokio_postgres::Error>>,
    label: &str,
) -> Result<(), StoreError> {
    match connected.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Fail::Pg(e).store(label)),
        Err(_) => return Err(StoreError::Backend("the listener stopped before it connected".into())),
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let payload = format!("{{\"k\":\"probe\",\"n\":\"{}-{nanos}\"}}", std::process::id());
    let (tell, heard) = tokio::sync::oneshot::channel();
    *probe.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((payload.clone(), tell));
    let client = pooled(pool).await.map_err(|f| f.store(database))?;
    client
        .execute(sql::NOTIFY, &[&payload])
        .await
        .map_err(|e| Fail::Pg(e).store(database))?;
    match tokio::time::timeout(PROBE_TIMEOUT, heard).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(StoreError::Unavailable {
            database: label.to_string(),
            detail: format!(
                "it does not reach the database URL's database: a notification sent there was not heard on it \
                 within {} s (both URLs must name one database, through a pooler or not)",
                PROBE_TIMEOUT.as_secs()
            ),
        }),
    }
}

/// Listens on the store's channel, counting notifications into `changes`,
/// and reconnects (after a second) when the connection ends; `listening`
/// says whether it is connected. The first connection's outcome goes to
/// `first` when given, and if that one fails the listener stops (the store
/// is refused). Notifications are shown to `probe`.
async fn listen(
    config: tokio_postgres::Config,
    tls: tls::Tls,
    changes: Arc<AtomicU64>,
    listening: Arc<AtomicBool>,
    probe: Arc<Probe>,
    mut first: Option<tokio::sync::oneshot::Sender<Result<(), tokio_postgres::Error>>>,
) {
    loop {
        let session = listen_once(&config, &tls, &changes, &listening, &probe, &mut first).await;
        if let Err(e) = session
            && let Some(first) = first.take()
        {
            let _ = first.send(Err(e));
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One listener session: connects, LISTENs (reporting that to `first`, if
/// it is still there) and counts notifications until the connection ends.
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &tls::Tls,
    changes: &Arc<AtomicU64>,
    listening: &AtomicBool,
    probe: &Arc<Probe>,
    first: &mut Option<tokio::sync::oneshot::Sender<Result<(), tokio_postgres::Error>>>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tls.clone()).await?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let (changes_seen, probe) = (changes.clone(), probe.clone());
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    changes_seen.fetch_add(1, Ordering::AcqRel);
                    probe.heard(n.payload());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        drop(ready_tx);
    });
    let listened = client.batch_execute(&format!("LISTEN {}", sql::CHANNEL)).await;
    if listened.is_ok() {
        listening.store(true, Ordering::Release);
        if let Some(first) = first.take() {
            let _ = first.send(Ok(()));
        }
        // Whatever happened while nobody listened counts as a change.
        changes.fetch_add(1, Ordering::AcqRel);
        let _ = ready_rx.await;
    }
    listening.store(false, Ordering::Release);
    driver.abort();
    listened
}

impl TaskStore for PgStore {
    fn enqueue(
        &self,
        request: WorkRequest,
        now: Millis,
        hooks: EnqueueHooks,
    ) -> StoreFuture<'_, Result<(Enqueued, Vec<Change>), WorkError>> {
        Box::pin(async move {
            let quota = self.limits().get(&request.handler).and_then(|l| l.expedited_quota);
            let (reply, answer) = tokio::sync::oneshot::channel();
            let job = batch::EnqueueJob {
                request,
                now,
                quota,
                hooks,
                reply,
            };
            self.enqueues
                .send(job)
                .map_err(|_| WorkError::Store(writer_stopped("enqueue")))?;
            answer.await.map_err(|_| WorkError::Store(writer_stopped("enqueue")))?
        })
    }

    fn claim(
        &self,
        me: HostIdentity,
        now: Millis,
        limit: usize,
        may_run: HashMap<String, usize>,
        device: DeviceState,
    ) -> StoreFuture<'_, Result<Vec<Claimed>, StoreError>> {
        Box::pin(async move {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let mut handlers: Vec<(&String, &usize)> = may_run.iter().filter(|(_, n)| **n > 0).collect();
            handlers.sort();
            let names: Vec<&str> = handlers.iter().map(|(h, _)| h.as_str()).collect();
            let free: Vec<i64> = handlers
                .iter()
                .map(|(_, n)| i64::try_from(**n).unwrap_or(i64::MAX))
                .collect();
            let limits = self.limits();
            let rates: Vec<Option<crate::work::Rate>> =
                names.iter().map(|h| limits.get(*h).and_then(|l| l.rate)).collect();
            let key_bound = crate::work::claim_key(now, crate::work::LOWEST_PRIORITY, false);
            // The deadline backstop of a run without its own timeout: the
            // longest timeout any run may have.
            let budget = crate::work::millis(crate::work::limits::MAX_TIMEOUT);
            let budgets: Vec<i64> = names.iter().map(|_| budget).collect();
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let grace = crate::work::millis(Duration::from_secs(60));
            let d = device_params(&device);
            let claim = |rows: Vec<tokio_postgres::Row>| -> Result<Vec<Claimed>, Fail> {
                rows.iter()
                    .map(|row| {
                        let (info, period_start) = task_from_row(row)?;
                        let lease: Option<i64> = row.try_get("lease")?;
                        Ok(Claimed {
                            info,
                            period_start,
                            lease: lease.and_then(|l| u64::try_from(l).ok()).unwrap_or(0),
                        })
                    })
                    .collect()
            };
            let params = ops::ClaimParams {
                device: &d,
                me: &me,
                handlers: &names,
                limit,
                now,
                budgets: &budgets,
                grace,
                key_bound,
            };
            if rates.iter().all(Option::is_none) {
                // No window to count: the claim is one statement, atomic
                // on its own, so it runs without BEGIN and COMMIT (one
                // round trip instead of three).
                return retrying!(async {
                    let client = self.client().await?;
                    claim(ops::claim_rows(&client, &params, &free).await?)
                })
                .map_err(|f| self.store_error(f));
            }
            in_tx!(self, |tx| async {
                // A rate-limited handler gets no more slots than its window
                // has room for, counted under a lock every host takes.
                let mut slots = free.clone();
                for (i, rate) in rates.iter().enumerate() {
                    if let Some(rate) = rate {
                        let handler = names[i];
                        ops::exec(&tx, sql::LIMIT_LOCK, &[&format!("rate:{handler}")]).await?;
                        let since = now.saturating_sub(rate.window_ms());
                        ops::exec(&tx, sql::FORGET_STARTS, &[&handler, &since]).await?;
                        let used = ops::one_i64(&tx, sql::COUNT_STARTS, &[&handler, &since], "n").await?;
                        slots[i] = slots[i].min((i64::from(rate.count) - used).max(0));
                    }
                }
                let claimed = claim(ops::claim_rows(&tx, &params, &slots).await?)?;
                for (i, rate) in rates.iter().enumerate() {
                    let n = claimed.iter().filter(|c| c.info.handler == names[i]).count() as i64;
                    if rate.is_some() && n > 0 {
                        ops::exec(&tx, sql::RECORD_STARTS, &[&names[i], &n, &now]).await?;
                    }
                }
                Ok::<_, Fail>(claimed)
            }
            .await)
            .map_err(|f| self.store_error(f))
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
        let record = ops::AttemptEnd::of(outcome);
        Box::pin(async move {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let job = batch::FinishJob {
                id,
                lease,
                transition,
                record,
                now,
                reply,
            };
            self.finishes.send(job).map_err(|_| writer_stopped("finish"))?;
            answer.await.map_err(|_| writer_stopped("finish"))?
        })
    }

    fn set_progress<'a>(
        &'a self,
        id: TaskId,
        lease: u64,
        progress: &'a Data,
    ) -> StoreFuture<'a, Result<(), StoreError>> {
        let json = progress.to_typed_json();
        Box::pin(async move {
            let lease = rows::lease_param(lease);
            in_tx!(self, |tx| async {
                let n = ops::exec(&tx, sql::SET_PROGRESS, &[&id, &lease, &json]).await?;
                if n == 0 {
                    let now = crate::work::millis(rows::wall_now());
                    ops::exec(&tx, sql::MARK_FENCED, &[&id, &lease, &now]).await?;
                }
                Ok::<_, Fail>(())
            }
            .await)
            .map_err(|f| self.store_error(f))
        })
    }

    fn cancel(&self, selector: Selector, now: Millis) -> StoreFuture<'_, Result<Vec<Change>, StoreError>> {
        Box::pin(async move {
            in_tx!(self, |tx| async {
                let changes = ops::cancel_in(&tx, &selector, now).await?;
                if !changes.is_empty() {
                    ops::notify(&tx, "cancel").await?;
                }
                Ok::<_, Fail>(changes)
            }
            .await)
            .map_err(|f| self.store_error(f))
        })
    }

    fn cancel_matching(&self, query: Query, now: Millis) -> StoreFuture<'_, Result<Vec<Change>, StoreError>> {
        Box::pin(async move {
            in_tx!(self, |tx| async {
                let changes = ops::cancel_matching_in(&tx, &query, now).await?;
                if !changes.is_empty() {
                    ops::notify(&tx, "cancel").await?;
                }
                Ok::<_, Fail>(changes)
            }
            .await)
            .map_err(|f| self.store_error(f))
        })
    }

    fn retry(&self, query: Query, now: Millis) -> StoreFuture<'_, Result<Vec<Change>, StoreError>> {
        Box::pin(async move {
            in_tx!(self, |tx| async {
                let changes = ops::retry_in(&tx, &query, now).await?;
                if !changes.is_empty() {
                    ops::notify(&tx, "retry").await?;
                }
                Ok::<_, Fail>(changes)
            }
            .await)
            .map_err(|f| self.store_error(f))
        })
    }

    fn run_now(&self, query: Query, now: Millis) -> StoreFuture<'_, Result<Vec<Change>, StoreError>> {
        Box::pin(async move {
            in_tx!(self, |tx| async {
                let changes = ops::run_now_in(&tx, &query, now).await?;
                if !changes.is_empty() {
                    ops::notify(&tx, "due").await?;
                }
                Ok::<_, Fail>(changes)
            }
            .await)
            .map_err(|f| self.store_error(f))
        })
    }

    fn delete(&self, query: Query) -> StoreFuture<'_, Result<Vec<TaskId>, StoreError>> {
        Box::pin(async move {
            in_tx!(self, |tx| async {
                let ids = ops::delete_in(&tx, &query).await?;
                if !ids.is_empty() {
                    ops::notify(&tx, "delete").await?;
                }
                Ok::<_, Fail>(ids)
            }
            .await)
            .map_err(|f| self.store_error(f))
        })
    }

    fn set_handler_paused(&self, handler: String, paused: bool) -> StoreFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            in_tx!(self, |tx| async {
                let statement = if paused {
                    sql::PAUSE_HANDLER
                } else {
                    sql::RESUME_HANDLER
                };
                tx.execute(statement, &[&handler]).await?;
                ops::notify(&tx, if paused { "pause-handler" } else { "resume-handler" }).await?;
                Ok::<_, Fail>(())
            }
            .await)
            .map_err(|f| self.store_error(f))
        })
    }

    fn paused_handlers(&self) -> StoreFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let read = async {
                let client = self.client().await?;
                ops::rows(&client, sql::PAUSED_HANDLERS, &[])
                    .await?
                    .iter()
                    .map(|r| Ok(r.try_get(0)?))
                    .collect::<Result<Vec<String>, Fail>>()
            };
            read.await.map_err(|f| self.store_error(f))
        })
    }

    fn count_by_handler(&self) -> StoreFuture<'_, Result<HandlerCounts, StoreError>> {
        Box::pin(async move {
            let read = async {
                let client = self.client().await?;
                let mut out: HandlerCounts = HashMap::new();
                for row in ops::rows(&client, sql::COUNT_BY_HANDLER, &[]).await? {
                    let handler: String = row.try_get(0)?;
                    let state: String = row.try_get(1)?;
                    let n: i64 = row.try_get(2)?;
                    if let Some(state) = TaskState::parse(&state) {
                        out.entry(handler)
                            .or_default()
                            .insert(state, usize::try_from(n).unwrap_or(0));
                    }
                }
                Ok::<_, Fail>(out)
            };
            read.await.map_err(|f| self.store_error(f))
        })
    }

    fn pins_in_use(&self) -> StoreFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let read = async {
                let client = self.client().await?;
                ops::rows(&client, sql::PINS_IN_USE, &[])
                    .await?
                    .iter()
                    .map(|r| Ok(r.try_get(0)?))
                    .collect::<Result<Vec<String>, Fail>>()
            };
            read.await.map_err(|f| self.store_error(f))
        })
    }

    fn cancel_because(
        &self,
        ids: Vec<TaskId>,
        reason: String,
        now: Millis,
    ) -> StoreFuture<'_, Result<Vec<Change>, StoreError>> {
        Box::pin(async move {
            in_tx!(self, |tx| async {
                let mut changes = Vec::new();
                for id in &ids {
                    changes.extend(ops::cancel_in(&tx, &Selector::Id(*id), now).await?);
                }
                tx.execute(sql::CANCEL_REASON, &[&ids, &reason]).await?;
                if !changes.is_empty() {
                    ops::notify(&tx, "cancel").await?;
                }
                Ok::<_, Fail>(changes)
            }
            .await)
            .map_err(|f| self.store_error(f))
        })
    }

    fn make_due(&self, id: TaskId, now: Millis) -> StoreFuture<'_, Result<(), WorkError>> {
        Box::pin(async move {
            in_tx!(self, |tx| async {
                if tx.execute(sql::MAKE_DUE, &[&id, &now]).await? == 0 {
                    return Err(Fail::Work(WorkError::Invalid(format!("task {id} is not enqueued"))));
                }
                ops::notify(&tx, "due").await?;
                Ok(())
            }
            .await)
            .map_err(|f| self.work_error(f))
        })
    }

    fn get(&self, id: TaskId) -> StoreFuture<'_, Result<Option<TaskInfo>, StoreError>> {
        Box::pin(async move {
            let read = async {
                let mut client = self.client().await?;
                // One snapshot for the task and its attempts.
                let tx = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await?;
                let found = ops::get_in(&tx, id).await?;
                tx.commit().await?;
                Ok::<_, Fail>(found)
            };
            read.await.map_err(|f| self.store_error(f))
        })
    }

    fn query(&self, query: Query) -> StoreFuture<'_, Result<Vec<TaskInfo>, StoreError>> {
        Box::pin(async move {
            let read = async {
                let client = self.client().await?;
                ops::query_in(&client, &query).await
            };
            read.await.map_err(|f| self.store_error(f))
        })
    }

    fn last_id(&self) -> StoreFuture<'_, Result<TaskId, StoreError>> {
        Box::pin(async move {
            let read = async {
                let client = self.client().await?;
                // One row always (`coalesce(max(id), 0)`).
                ops::one_i64(&client, sql::LAST_ID, &[], "id").await
            };
            read.await.map_err(|f| self.store_error(f))
        })
    }

    fn count_by_state(&self) -> StoreFuture<'_, Result<HashMap<TaskState, usize>, StoreError>> {
        Box::pin(async move {
            let read = async {
                let client = self.client().await?;
                let mut out = HashMap::new();
                for row in ops::rows(&client, sql::COUNT_BY_STATE, &[]).await? {
                    let state: String = row.try_get(0)?;
                    let n: i64 = row.try_get(1)?;
                    if let Some(state) = TaskState::parse(&state) {
                        out.insert(state, usize::try_from(n).unwrap_or(0));
                    }
                }
                Ok::<_, Fail>(out)
            };
            read.await.map_err(|f| self.store_error(f))
        })
    }

    fn next_due(
        &self,
        handlers: Vec<String>,
        device: DeviceState,
    ) -> StoreFuture<'_, Result<Option<Millis>, StoreError>> {
        Box::pin(async move {
            let d = device_params(&device);
            let read = async {
                let client = self.client().await?;
                let stmt = client.prepare_cached(sql::NEXT_DUE).await?;
                // Handlers with a rate are looked at one by one: their work
                // is due no sooner than their window has room.
                let limits = self.limits();
                let rated = |h: &String| limits.get(h).and_then(|l| l.rate);
                let (one_by_one, together): (Vec<String>, Vec<String>) =
                    handlers.into_iter().partition(|h| rated(h).is_some());
                let mut groups: Vec<Vec<String>> = one_by_one.into_iter().map(|h| vec![h]).collect();
                groups.push(together);
                let mut earliest: Option<i64> = None;
                for group in groups.into_iter().filter(|g| !g.is_empty()) {
                    let row = client
                        .query_one(
                            &stmt,
                            &[
                                &d.networks,
                                &d.charging,
                                &d.battery_low,
                                &d.idle,
                                &d.storage_low,
                                &group,
                            ],
                        )
                        .await?;
                    let mut due = row.try_get::<_, Option<i64>>(0)?;
                    if let (Some(d), Some(rate)) = (due, rated(&group[0]).filter(|_| group.len() == 1)) {
                        let nth = i64::from(rate.count) - 1;
                        let filled = ops::rows(&client, sql::NTH_START, &[&group[0], &nth]).await?.pop();
                        if let Some(row) = filled {
                            let at: i64 = row.try_get("at")?;
                            due = Some(d.max(at.saturating_add(rate.window_ms())));
                        }
                    }
                    earliest = earliest.into_iter().chain(due).min();
                }
                Ok::<_, Fail>(earliest)
            };
            read.await.map_err(|f| self.store_error(f))
        })
    }

    fn waiting_for_handler(
        &self,
        known: Vec<String>,
        now: Millis,
    ) -> StoreFuture<'_, Result<Vec<HandlerWait>, StoreError>> {
        Box::pin(async move {
            let read = async {
                let client = self.client().await?;
                ops::rows(&client, sql::WAITING_FOR_HANDLER, &[&known, &now])
                    .await?
                    .iter()
                    .map(|row| {
                        Ok(HandlerWait {
                            handler: row.try_get("handler")?,
                            due: usize::try_from(row.try_get::<_, i64>("due")?).unwrap_or(0),
                            first: row.try_get("first")?,
                        })
                    })
                    .collect::<Result<Vec<_>, Fail>>()
            };
            read.await.map_err(|f| self.store_error(f))
        })
    }

    fn recover(&self, me: HostIdentity, now: Millis) -> StoreFuture<'_, Result<Vec<Change>, StoreError>> {
        Box::pin(async move {
            in_tx!(self, |tx| async {
                let changes = ops::rescue_in(&tx, &me, now).await?;
                if !changes.is_empty() {
                    ops::notify(&tx, "rescued").await?;
                }
                Ok::<_, Fail>(changes)
            }
            .await)
            .map_err(|f| self.store_error(f))
        })
    }

    fn set_limits(&self, limits: HashMap<String, crate::work::HandlerLimits>) {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(limits);
    }

    fn set_paused(&self, paused: bool) -> StoreFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let value = if paused { "1" } else { "0" };
            in_tx!(self, |tx| async {
                tx.execute(sql::SET_SETTING, &[&"paused", &value]).await?;
                ops::notify(&tx, if paused { "pause" } else { "resume" }).await?;
                Ok::<_, Fail>(())
            }
            .await)
            .map_err(|f| self.store_error(f))
        })
    }

    fn paused(&self) -> StoreFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let read = async {
                let client = self.client().await?;
                let row = ops::rows(&client, sql::GET_SETTING, &[&"paused"]).await?.pop();
                Ok::<_, Fail>(row.map(|r| r.get::<_, String>(0)).is_some_and(|v| v == "1"))
            };
            read.await.map_err(|f| self.store_error(f))
        })
    }

    fn follow_clock(
        &self,
        boot: String,
        reading: Millis,
        threshold: Millis,
    ) -> StoreFuture<'_, Result<ClockJump, StoreError>> {
        Box::pin(async move {
            in_tx!(self, |tx| ops::follow_clock_in(&tx, &boot, reading, threshold).await)
                .map_err(|f| self.store_error(f))
        })
    }

    fn prune(&self, before: Millis) -> StoreFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            let mut total = 0;
            loop {
                let n = in_tx!(self, |tx| async {
                    Ok::<_, Fail>(tx.query(sql::PRUNE, &[&before, &ops::PRUNE_BATCH]).await?.len())
                }
                .await)
                .map_err(|f| self.store_error(f))?;
                total += n;
                if i64::try_from(n).unwrap_or(i64::MAX) < ops::PRUNE_BATCH {
                    return Ok(total);
                }
            }
        })
    }

    fn oldest_finished(&self) -> StoreFuture<'_, Result<Option<Millis>, StoreError>> {
        Box::pin(async move {
            let read = async {
                let client = self.client().await?;
                Ok::<_, Fail>(
                    client
                        .query_one(sql::OLDEST_FINISHED, &[])
                        .await?
                        .try_get::<_, Option<i64>>(0)?,
                )
            };
            read.await.map_err(|f| self.store_error(f))
        })
    }

    /// The notifications the listener heard; while it is not connected,
    /// every call counts as a change, so the dispatcher reads the store at
    /// each poll instead of waiting to be told.
    fn change_counter(&self) -> Result<u64, StoreError> {
        if self.listening.load(Ordering::Acquire) {
            Ok(self.changes.load(Ordering::Acquire))
        } else {
            Ok(self.changes.fetch_add(1, Ordering::AcqRel) + 1)
        }
    }

    fn kv(&self) -> Arc<dyn KvStore> {
        self.kv.clone()
    }

    fn run_kv(&self, id: TaskId, lease: u64) -> Arc<dyn KvStore> {
        Arc::new(kv::PgKv {
            store: self.kv.store.clone(),
            fence: Some((id, rows::lease_param(lease))),
        })
    }

    fn host_lease(&self) -> Option<Duration> {
        Some(self.lease)
    }

    /// The caller holds its data directory's `serve.lock`, so an earlier
    /// incarnation of its id is dead: its row is taken over at once.
    fn register_host(&self, me: HostIdentity, _now: Millis) -> StoreFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let ttl = crate::work::millis(self.lease);
            let registered = in_tx!(self, |tx| async {
                let row = tx
                    .query_opt(sql::REGISTER_HOST, &[&me.id, &me.incarnation, &ttl, &true])
                    .await?;
                Ok::<_, Fail>(row.is_some())
            }
            .await)
            .map_err(|f| self.store_error(f))?;
            if registered {
                Ok(())
            } else {
                Err(StoreError::Backend(format!(
                    "another host serves {} as {:?}; give each host its own data directory",
                    self.name, me.id
                )))
            }
        })
    }

    fn renew_host(&self, me: HostIdentity, _now: Millis) -> StoreFuture<'_, Result<Vec<(TaskId, u64)>, StoreError>> {
        Box::pin(async move {
            let ttl = crate::work::millis(self.lease);
            in_tx!(self, |tx| async {
                if tx
                    .query_opt(sql::RENEW_HOST, &[&me.id, &me.incarnation, &ttl])
                    .await?
                    .is_none()
                {
                    return Err(Fail::Store(StoreError::LeaseLost(format!(
                        "{} holds no live lease of {:?}",
                        self.name, me.id
                    ))));
                }
                tx.query(sql::RUNNING_OF_HOST, &[&me.id, &me.incarnation])
                    .await?
                    .iter()
                    .map(|r| {
                        Ok((
                            r.try_get::<_, i64>(0)?,
                            u64::try_from(r.try_get::<_, i64>(1)?).unwrap_or(0),
                        ))
                    })
                    .collect::<Result<Vec<_>, Fail>>()
            }
            .await)
            .map_err(|f| self.store_error(f))
        })
    }

    fn leave_host(&self, me: HostIdentity) -> StoreFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            in_tx!(self, |tx| async {
                tx.execute(sql::DEREGISTER_HOST, &[&me.id, &me.incarnation]).await?;
                Ok::<_, Fail>(())
            }
            .await)
            .map_err(|f| self.store_error(f))
        })
    }

    fn hosts(&self, _now: Millis) -> StoreFuture<'_, Result<Vec<HostInfo>, StoreError>> {
        Box::pin(async move {
            let read = async {
                let client = self.client().await?;
                ops::rows(&client, sql::LIST_HOSTS, &[])
                    .await?
                    .iter()
                    .map(|r| {
                        Ok(HostInfo {
                            id: r.try_get("id")?,
                            incarnation: r.try_get("incarnation")?,
                            started_at: r.try_get("started_at")?,
                            renewed_at: r.try_get("renewed_at")?,
                            expires_at: Some(r.try_get("expires_at")?),
                            live: r.try_get("live")?,
                            running: usize::try_from(r.try_get::<_, i64>("running")?).unwrap_or(0),
                        })
                    })
                    .collect::<Result<Vec<_>, Fail>>()
            };
            read.await.map_err(|f| self.store_error(f))
        })
    }
}
