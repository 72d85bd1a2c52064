//! The operations of several statements, each run inside the one
//! transaction its caller opened: opening (identity and migrations),
//! enqueue with its unique-work policy, finish, chains, cancel, reads,
//! rescue and the clock follower. They port the SQLite backend's
//! `ops.rs` rule for rule, with row locks where SQLite's single writer
//! made them unnecessary (docs/scale-out.md).

use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::types::ToSql;

use crate::data::Data;
use crate::outcome::{RunOutcome, StopReason};
use crate::retry::Transition;
use crate::store::{Change, Claimed, ClockJump, HostIdentity, PERIODIC_ATTEMPTS_KEPT, Query, Selector};
use crate::work::{
    AttemptRecord, Enqueued, ExistingWorkPolicy, Millis, StoreError, TaskId, TaskInfo, TaskState, WorkError,
    WorkRequest,
};

use super::rows::{Fail, data_column, lease_param, task_from_row};
use super::sql;
use crate::store::plan::{RetryNode, cause, plan_retry};

/// Most tasks one prune transaction deletes.
pub(super) const PRUNE_BATCH: i64 = 5000;

/// Most runs one rescue transaction ends.
const RESCUE_BATCH: i64 = 500;

type Tx<'a> = Transaction<'a>;

/// A prepared (and cached, per connection) statement's rows, in a
/// transaction or on a pooled connection: the statements of every task,
/// run and read go through here or [`exec`] (tokio-postgres given a
/// statement's text prepares it again at every call, a round trip of its
/// own); start-up, leases and operator actions may pass text.
pub(super) async fn rows(
    client: &impl GenericClient,
    statement: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, Fail> {
    let stmt = client.prepare_cached(statement).await?;
    Ok(client.query(&stmt, params).await?)
}

/// The one row of a prepared statement that always returns one (an
/// aggregate), see [`rows`]; its column `column` as an `i64`.
pub(super) async fn one_i64(
    client: &impl GenericClient,
    statement: &str,
    params: &[&(dyn ToSql + Sync)],
    column: &str,
) -> Result<i64, Fail> {
    let stmt = client.prepare_cached(statement).await?;
    Ok(client.query_one(&stmt, params).await?.try_get(column)?)
}

/// A prepared statement's count of rows changed (see [`rows`]).
pub(super) async fn exec(
    client: &impl GenericClient,
    statement: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, Fail> {
    let stmt = client.prepare_cached(statement).await?;
    Ok(client.execute(&stmt, params).await?)
}

/// `sql::CLAIM`'s parameters but each handler's slots (see the statement).
pub(super) struct ClaimParams<'p> {
    pub(super) device: &'p super::rows::DeviceParams,
    pub(super) me: &'p HostIdentity,
    pub(super) handlers: &'p Vec<&'p str>,
    pub(super) limit: i64,
    pub(super) now: Millis,
    pub(super) budgets: &'p Vec<i64>,
    pub(super) grace: i64,
    pub(super) key_bound: i64,
}

/// The rows `sql::CLAIM` claims with `p` and each handler's `slots`,
/// inside a transaction or as a statement of its own.
pub(super) async fn claim_rows(
    client: &impl GenericClient,
    p: &ClaimParams<'_>,
    slots: &Vec<i64>,
) -> Result<Vec<tokio_postgres::Row>, Fail> {
    let stmt = client.prepare_cached(sql::CLAIM).await?;
    let d = p.device;
    let params: [&(dyn ToSql + Sync); 14] = [
        &d.networks,
        &d.charging,
        &d.battery_low,
        &d.idle,
        &d.storage_low,
        &p.me.id,
        &p.me.incarnation,
        p.handlers,
        slots,
        &p.limit,
        &p.now,
        p.budgets,
        &p.grace,
        &p.key_bound,
    ];
    Ok(client.query(&stmt, &params).await?)
}

/// Tells every host, at commit, that something changed (`what` is for
/// anyone reading the channel; hosts count notifications).
pub(super) async fn notify(tx: &Tx<'_>, what: &str) -> Result<(), Fail> {
    let payload = format!("{{\"k\":\"{what}\"}}");
    rows(tx, sql::NOTIFY, &[&payload]).await?;
    Ok(())
}

/// Creates or migrates the schema (see `PgStore::migrate`).
pub(super) async fn migrate_in(tx: &Tx<'_>, database: &str) -> Result<(), Fail> {
    let foreign = |detail: String| {
        Fail::Store(StoreError::ForeignDatabase {
            database: database.to_string(),
            detail,
        })
    };
    tx.execute(sql::MIGRATION_LOCK, &[]).await?;
    let found = tx.query_one(sql::IDENTITY, &[]).await?;
    let (has_schema, has_meta): (bool, bool) = (found.try_get("has_schema")?, found.try_get("has_meta")?);
    let version = if has_meta {
        let mark = tx.query_one(sql::READ_IDENTITY, &[]).await?;
        if mark.try_get::<_, Option<String>>("application")?.as_deref() != Some(sql::APPLICATION) {
            return Err(foreign(
                "its schema `workhost` carries no workhost mark in workhost.meta".into(),
            ));
        }
        let version: Option<String> = mark.try_get("schema_version")?;
        version.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0)
    } else if has_schema {
        return Err(foreign("it has a schema `workhost` without workhost.meta".into()));
    } else {
        let others: i64 = found.try_get("other_tables")?;
        if others > 0 {
            let first: Option<String> = found.try_get("first_other")?;
            return Err(foreign(format!(
                "it holds {others} tables of another program (one is {})",
                first.unwrap_or_default()
            )));
        }
        0
    };
    if version > sql::SCHEMA_VERSION {
        return Err(foreign(format!(
            "its schema version is {version}, this workhost reads versions up to {}",
            sql::SCHEMA_VERSION
        )));
    }
    if version < sql::SCHEMA_VERSION {
        for migration in &sql::MIGRATIONS[usize::try_from(version).unwrap_or(0)..] {
            tx.batch_execute(migration).await?;
        }
        tx.execute(sql::SET_SCHEMA_VERSION, &[&sql::SCHEMA_VERSION.to_string()])
            .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Enqueue.

/// Enqueues work with its unique-work policy (the SQLite store's rules).
pub(super) async fn enqueue_in(
    tx: &Tx<'_>,
    mut r: WorkRequest,
    now: Millis,
    quota: Option<crate::work::Rate>,
) -> Result<(Enqueued, Vec<Change>), Fail> {
    let mut changes = Vec::new();
    let mut warnings = Vec::new();
    // Expedited work within the handler's quota, counted under a lock so
    // hosts enqueueing at once never both take the last place.
    if let (Some(policy), Some(q)) = (r.expedited, quota) {
        exec(tx, sql::LIMIT_LOCK, &[&format!("quota:{}", r.handler)]).await?;
        let since = now.saturating_sub(q.window_ms());
        let used = one_i64(tx, sql::EXPEDITED_SINCE, &[&r.handler, &since], "n").await?;
        if used >= i64::from(q.count) {
            let (dropped, warning) = crate::work::quota_spent(&r.handler, q, policy);
            r.expedited = None;
            warnings.push(warning);
            if let Some(why) = dropped {
                let id = insert_task(tx, &r, &[], now, &mut changes, Some(&why)).await?;
                return Ok((
                    Enqueued {
                        id,
                        created: true,
                        warnings,
                    },
                    changes,
                ));
            }
        }
    }
    let mut after = std::mem::take(&mut r.after);
    if let Some((name, policy)) = r.unique.clone() {
        // Every enqueue of this name waits here for the one before it.
        exec(tx, sql::UNIQUE_LOCK, &[&name]).await?;
        let latest = rows(tx, sql::UNIQUE_LATEST, &[&name]).await?;
        let latest: Option<(TaskId, String)> = match latest.first() {
            Some(row) => Some((row.try_get(0)?, row.try_get(1)?)),
            None => None,
        };
        let unfinished: Vec<TaskId> = rows(tx, sql::UNIQUE_UNFINISHED, &[&name])
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        let latest_state = latest.as_ref().and_then(|(_, s)| TaskState::parse(s));
        let kept = |id| {
            Ok((
                Enqueued {
                    id,
                    created: false,
                    warnings: warnings.clone(),
                },
                Vec::new(),
            ))
        };
        use ExistingWorkPolicy::*;
        match policy {
            Keep if !unfinished.is_empty() => return kept(unfinished[0]),
            Update if !unfinished.is_empty() => {
                let id = unfinished[0];
                let spec = Spec::of(&r);
                // A changed cron schedule takes effect at once.
                if let Some(c) = &spec.cron {
                    let (fire, _) = crate::work::first_run(&r, now);
                    exec(tx, sql::RESCHEDULE_CRON, &[&id, &fire, c]).await?;
                }
                exec(
                    tx,
                    sql::UPDATE_SPEC,
                    &[
                        &id,
                        &spec.handler,
                        &spec.task,
                        &spec.input,
                        &spec.max_attempts,
                        &spec.frequency,
                        &spec.flex,
                        &spec.backoff,
                        &spec.backoff_delay,
                        &spec.timeout,
                        &spec.fuel,
                        &spec.max_memory,
                        &spec.network,
                        &spec.charging,
                        &spec.battery,
                        &spec.idle,
                        &spec.storage,
                        &spec.priority,
                        &spec.cron,
                        &spec.pin,
                    ],
                )
                .await?;
                exec(tx, sql::DELETE_TAGS, &[&id]).await?;
                let tagged = vec![id; r.tags.len()];
                exec(tx, sql::INSERT_TAGS, &[&tagged, &r.tags]).await?;
                return kept(id);
            }
            Replace | CancelAndReenqueue => cancel_ids(tx, &unfinished, now, &mut changes).await?,
            Append => after.extend(latest.map(|(id, _)| id)),
            AppendOrReplace => {
                if !matches!(latest_state, Some(TaskState::Failed) | Some(TaskState::Cancelled)) {
                    after.extend(latest.map(|(id, _)| id));
                }
            }
            Keep | Update => {}
        }
    }
    let id = insert_task(tx, &r, &after, now, &mut changes, None).await?;
    Ok((
        Enqueued {
            id,
            created: true,
            warnings,
        },
        changes,
    ))
}

/// The columns a request sets, as the statements bind them.
struct Spec {
    handler: String,
    task: String,
    input: String,
    max_attempts: i64,
    frequency: Option<i64>,
    flex: Option<i64>,
    backoff: &'static str,
    backoff_delay: i64,
    timeout: Option<i64>,
    fuel: Option<i64>,
    max_memory: Option<i64>,
    network: i64,
    charging: bool,
    battery: bool,
    idle: bool,
    storage: bool,
    priority: i64,
    cron: Option<String>,
    pin: Option<String>,
}

impl Spec {
    fn of(r: &WorkRequest) -> Spec {
        let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Spec {
            handler: r.handler.clone(),
            task: r.task.clone(),
            input: r.input.to_typed_json(),
            max_attempts: i64::from(r.max_attempts),
            frequency: r.periodic.map(|p| crate::work::millis(p.frequency)),
            flex: r.periodic.map(|p| crate::work::millis(p.flex)),
            backoff: r.backoff.as_str(),
            backoff_delay: crate::work::millis(r.backoff_delay),
            timeout: r.budget.timeout.map(crate::work::millis),
            fuel: r.budget.fuel.map(big),
            max_memory: r.budget.max_memory_bytes.map(big),
            network: r.constraints.network.code(),
            charging: r.constraints.charging,
            battery: r.constraints.battery_not_low,
            idle: r.constraints.device_idle,
            storage: r.constraints.storage_not_low,
            priority: i64::from(r.priority),
            cron: r.cron.as_ref().map(|c| c.to_stored()),
            pin: r.pin.clone(),
        }
    }
}

/// Whether enqueueing `r` is a plain insert (no unique name, nothing it
/// runs after, no expedited quota to count): many such go in one
/// statement ([`enqueue_plain_in`]).
pub(super) fn is_plain(r: &WorkRequest, quota: Option<crate::work::Rate>) -> bool {
    r.unique.is_none() && r.after.is_empty() && !(r.expedited.is_some() && quota.is_some())
}

/// Enqueues plain requests ([`is_plain`]) in one insert: what
/// [`enqueue_in`] returns for each, in order.
pub(super) async fn enqueue_plain_in(
    tx: &Tx<'_>,
    requests: &[(&WorkRequest, Millis)],
) -> Result<Vec<(Enqueued, Vec<Change>)>, Fail> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<NewTask<'_>> = requests
        .iter()
        .map(|&(r, now)| NewTask::of(r, TaskState::Enqueued, now, None))
        .collect();
    let ids = insert_rows(tx, &rows).await?;
    Ok(ids
        .into_iter()
        .map(|id| {
            let enqueued = Enqueued {
                id,
                created: true,
                warnings: Vec::new(),
            };
            (
                enqueued,
                vec![Change {
                    id,
                    state: TaskState::Enqueued,
                }],
            )
        })
        .collect())
}

/// A task row to insert: a request's columns, with its state.
struct NewTask<'r> {
    r: &'r WorkRequest,
    spec: Spec,
    state: TaskState,
    now: Millis,
    /// Why it was dropped (out of its expedited quota; then CANCELLED).
    dropped: Option<&'r str>,
}

impl<'r> NewTask<'r> {
    fn of(r: &'r WorkRequest, state: TaskState, now: Millis, dropped: Option<&'r str>) -> NewTask<'r> {
        NewTask {
            r,
            spec: Spec::of(r),
            state,
            now,
            dropped,
        }
    }
}

/// Inserts `tasks` (and their tags) in one statement; their ids, in order.
async fn insert_rows(tx: &Tx<'_>, tasks: &[NewTask<'_>]) -> Result<Vec<TaskId>, Fail> {
    fn col<'t, 'r, T>(tasks: &'t [NewTask<'r>], f: impl Fn(&'t NewTask<'r>) -> T) -> Vec<T> {
        tasks.iter().map(f).collect()
    }
    let found = rows(
        tx,
        sql::INSERT_TASK,
        &[
            &col(tasks, |t| t.spec.handler.as_str()),
            &col(tasks, |t| t.spec.task.as_str()),
            &col(tasks, |t| t.spec.input.as_str()),
            &col(tasks, |t| t.spec.max_attempts),
            &col(tasks, |t| t.spec.frequency),
            &col(tasks, |t| t.spec.flex),
            &col(tasks, |t| t.spec.backoff),
            &col(tasks, |t| t.spec.backoff_delay),
            &col(tasks, |t| t.spec.timeout),
            &col(tasks, |t| t.spec.fuel),
            &col(tasks, |t| t.spec.max_memory),
            &col(tasks, |t| t.r.kind.as_str()),
            &col(tasks, |t| t.state.as_str()),
            &col(tasks, |t| t.r.unique.as_ref().map(|(n, _)| n.as_str())),
            &col(tasks, |t| crate::work::first_run(t.r, t.now).1),
            &col(tasks, |t| crate::work::millis(t.r.initial_delay)),
            &col(tasks, |t| crate::work::first_run(t.r, t.now).0),
            &col(tasks, |t| t.now),
            &col(tasks, |t| t.spec.network),
            &col(tasks, |t| t.spec.charging),
            &col(tasks, |t| t.spec.battery),
            &col(tasks, |t| t.spec.idle),
            &col(tasks, |t| t.spec.storage),
            &col(tasks, |t| t.spec.priority),
            &col(tasks, |t| t.spec.cron.as_deref()),
            &col(tasks, |t| t.r.expedited.is_some()),
            &col(tasks, |t| t.dropped.map(|_| t.now)),
            &col(tasks, |t| t.dropped),
            &col(tasks, |t| t.spec.pin.as_deref()),
        ],
    )
    .await?;
    let mut ids: Vec<TaskId> = found.iter().map(|row| row.try_get(0)).collect::<Result<_, _>>()?;
    if ids.len() != tasks.len() {
        return Err(Fail::Store(StoreError::Backend(format!(
            "an insert of {} tasks returned {} ids",
            tasks.len(),
            ids.len()
        ))));
    }
    // Taken in insert order, which is `tasks`' order.
    ids.sort_unstable();
    let (mut tagged, mut tags) = (Vec::new(), Vec::new());
    for (task, &id) in tasks.iter().zip(&ids) {
        for tag in &task.r.tags {
            tagged.push(id);
            tags.push(tag.as_str());
        }
    }
    if !tags.is_empty() {
        exec(tx, sql::INSERT_TAGS, &[&tagged, &tags]).await?;
    }
    Ok(ids)
}

async fn insert_task(
    tx: &Tx<'_>,
    r: &WorkRequest,
    after: &[TaskId],
    now: Millis,
    changes: &mut Vec<Change>,
    dropped: Option<&str>,
) -> Result<TaskId, Fail> {
    // The parents first, locked so none finishes unseen (FOR SHARE).
    if !after.is_empty() {
        let found: Vec<TaskId> = rows(tx, sql::LOCK_PARENTS, &[&after])
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        if let Some(missing) = after.iter().find(|p| !found.contains(p)) {
            return Err(WorkError::UnknownTask(*missing).into());
        }
    }
    let state = if dropped.is_some() {
        TaskState::Cancelled
    } else if after.is_empty() {
        TaskState::Enqueued
    } else {
        TaskState::Blocked
    };
    let id = insert_rows(tx, &[NewTask::of(r, state, now, dropped)]).await?[0];
    if dropped.is_some() {
        changes.push(Change { id, state });
        return Ok(id);
    }
    if after.is_empty() {
        changes.push(Change { id, state });
    } else {
        exec(tx, sql::INSERT_DEPS, &[&after, &id]).await?;
        if try_release(tx, id, now, changes).await? == TaskState::Blocked {
            changes.push(Change {
                id,
                state: TaskState::Blocked,
            });
        }
    }
    Ok(id)
}

// ---------------------------------------------------------------------------
// Chains.

/// Decides a dependent task's state from its parents, with the task locked
/// first: FAILED or CANCELLED if one did, ENQUEUED (with the parents'
/// outputs merged over its input) if all succeeded, else BLOCKED.
async fn try_release(tx: &Tx<'_>, child: TaskId, now: Millis, changes: &mut Vec<Change>) -> Result<TaskState, Fail> {
    let locked = rows(tx, sql::LOCK_TASK, &[&child]).await?;
    let Some(me) = locked.first() else {
        return Ok(TaskState::Blocked);
    };
    if me.try_get::<_, String>("state")? != "blocked" {
        return Ok(TaskState::parse(&me.try_get::<_, String>("state")?).unwrap_or(TaskState::Blocked));
    }
    let input: String = me.try_get("input")?;
    let delay: i64 = me.try_get("initial_delay_ms")?;
    let parents: Vec<(TaskId, String, Option<String>)> = rows(tx, sql::PARENT_STATES, &[&child])
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<_, Fail>>()?;
    for (parent, state, _) in &parents {
        let state = TaskState::parse(state);
        if let Some(s @ (TaskState::Failed | TaskState::Cancelled)) = state {
            set_state(tx, child, s, Some(&cause(*parent, s)), now).await?;
            changes.push(Change { id: child, state: s });
            propagate(tx, &[child], s, now, changes).await?;
            return Ok(s);
        }
    }
    if parents.iter().any(|(_, s, _)| s != "succeeded") {
        return Ok(TaskState::Blocked);
    }
    let mut merged = data_column(child, "input", Some(input))?.unwrap_or_default();
    for (parent, _, output) in &parents {
        if let Some(out) = data_column(*parent, "output", output.clone())? {
            merged.merge(&out);
        }
    }
    if let Err(e) = merged.validate() {
        set_state(
            tx,
            child,
            TaskState::Failed,
            Some(&format!("merged input refused: {e}")),
            now,
        )
        .await?;
        changes.push(Change {
            id: child,
            state: TaskState::Failed,
        });
        propagate(tx, &[child], TaskState::Failed, now, changes).await?;
        return Ok(TaskState::Failed);
    }
    exec(
        tx,
        sql::RELEASE,
        &[&child, &merged.to_typed_json(), &now.saturating_add(delay)],
    )
    .await?;
    changes.push(Change {
        id: child,
        state: TaskState::Enqueued,
    });
    Ok(TaskState::Enqueued)
}

async fn set_state(tx: &Tx<'_>, id: TaskId, state: TaskState, error: Option<&str>, now: Millis) -> Result<(), Fail> {
    let finished = state.is_finished().then_some(now);
    exec(tx, sql::SET_STATE, &[&id, &state.as_str(), &error, &finished]).await?;
    Ok(())
}

/// Fails or cancels every unfinished dependent of `ids`, transitively.
async fn propagate(
    tx: &Tx<'_>,
    ids: &[TaskId],
    state: TaskState,
    now: Millis,
    changes: &mut Vec<Change>,
) -> Result<(), Fail> {
    for row in rows(tx, sql::PROPAGATE, &[&ids, &state.as_str(), &now]).await? {
        changes.push(Change {
            id: row.try_get(0)?,
            state,
        });
    }
    Ok(())
}

/// Releases the BLOCKED dependents of `id` whose parents all succeeded.
async fn unblock(tx: &Tx<'_>, id: TaskId, now: Millis, changes: &mut Vec<Change>) -> Result<(), Fail> {
    let children: Vec<TaskId> = rows(tx, sql::BLOCKED_CHILDREN, &[&id])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    for child in children {
        Box::pin(try_release(tx, child, now, changes)).await?;
    }
    Ok(())
}

async fn cancel_ids(tx: &Tx<'_>, ids: &[TaskId], now: Millis, changes: &mut Vec<Change>) -> Result<(), Fail> {
    if ids.is_empty() {
        return Ok(());
    }
    let cancelled: Vec<TaskId> = rows(tx, sql::CANCEL, &[&ids, &now])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    changes.extend(cancelled.iter().map(|&id| Change {
        id,
        state: TaskState::Cancelled,
    }));
    propagate(tx, &cancelled, TaskState::Cancelled, now, changes).await
}

/// Cancels the unfinished tasks `selector` picks, and their dependents.
pub(super) async fn cancel_in(tx: &Tx<'_>, selector: &Selector, now: Millis) -> Result<Vec<Change>, Fail> {
    let found = match selector {
        Selector::Id(id) => rows(tx, sql::SELECT_BY_ID, &[id]).await?,
        Selector::UniqueName(n) => rows(tx, sql::SELECT_BY_UNIQUE_NAME, &[n]).await?,
        Selector::Tag(t) => rows(tx, sql::SELECT_BY_TAG, &[t]).await?,
        Selector::All => rows(tx, sql::SELECT_ALL, &[]).await?,
    };
    let ids: Vec<TaskId> = found.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
    let mut changes = Vec::new();
    cancel_ids(tx, &ids, now, &mut changes).await?;
    Ok(changes)
}

// ---------------------------------------------------------------------------
// Finish and rescue.

/// What an attempt's row records of its run.
pub(super) struct AttemptEnd {
    outcome: String,
    stop_reason: Option<String>,
    error: Option<String>,
    fuel: Option<i64>,
    peak_memory: i64,
    log: String,
    component: Option<String>,
    contract: Option<String>,
}

impl AttemptEnd {
    pub(super) fn of(outcome: &RunOutcome) -> AttemptEnd {
        AttemptEnd {
            outcome: outcome.kind().to_string(),
            stop_reason: outcome.stop_reason().map(str::to_string),
            error: outcome.error().map(str::to_string),
            fuel: outcome.fuel_consumed.map(|f| i64::try_from(f).unwrap_or(i64::MAX)),
            peak_memory: i64::try_from(outcome.peak_memory_bytes).unwrap_or(i64::MAX),
            log: serde_json::to_string(&outcome.log).unwrap_or_else(|_| "[]".into()),
            component: outcome.component.as_ref().map(|c| c.digest.clone()),
            contract: outcome.component.as_ref().map(|c| c.contract.clone()),
        }
    }

    /// The record of a run its host died during.
    fn orphaned() -> AttemptEnd {
        AttemptEnd {
            outcome: "stopped".into(),
            stop_reason: Some(StopReason::HostShutdown.as_str().into()),
            error: Some("the host died during this run".into()),
            fuel: None,
            peak_memory: 0,
            log: "[]".into(),
            component: None,
            contract: None,
        }
    }
}

/// One run's end, as [`finish_many_in`] records it.
pub(super) struct Ending<'a> {
    pub(super) id: TaskId,
    pub(super) lease: u64,
    pub(super) transition: &'a Transition,
    pub(super) record: &'a AttemptEnd,
    pub(super) now: Millis,
}

/// Records how the run holding `lease` ended and applies its transition if
/// that run is still the task's current one; then releases, fails or
/// cancels dependents. A refused (fenced) finish changes only the run's own
/// attempt row.
pub(super) async fn finish_in(
    tx: &Tx<'_>,
    id: TaskId,
    lease: u64,
    t: &Transition,
    a: &AttemptEnd,
    now: Millis,
) -> Result<Vec<Change>, Fail> {
    let end = Ending {
        id,
        lease,
        transition: t,
        record: a,
        now,
    };
    Ok(finish_many_in(tx, &[end]).await?.pop().unwrap_or_default())
}

/// `f` of each of `ends`, in `order`: one array parameter.
fn column<'e, T>(ends: &'e [Ending<'_>], order: &[usize], f: impl Fn(&'e Ending<'_>) -> T) -> Vec<T> {
    order.iter().map(|&i| f(&ends[i])).collect()
}

/// [`finish_in`] for many runs (of distinct tasks) in one statement, plus
/// one for their dependents: the changes of each, in `ends`' order.
/// Tasks are locked in id order, and dependents handled in that order.
pub(super) async fn finish_many_in(tx: &Tx<'_>, ends: &[Ending<'_>]) -> Result<Vec<Vec<Change>>, Fail> {
    let mut order: Vec<usize> = (0..ends.len()).collect();
    order.sort_by_key(|&i| ends[i].id);
    let ids = column(ends, &order, |e| e.id);
    let leases = column(ends, &order, |e| lease_param(e.lease));
    let nows = column(ends, &order, |e| e.now);
    let outcomes = column(ends, &order, |e| e.record.outcome.as_str());
    let run_stops = column(ends, &order, |e| e.record.stop_reason.as_deref());
    let run_errors = column(ends, &order, |e| e.record.error.as_deref());
    let fuels = column(ends, &order, |e| e.record.fuel);
    let peaks = column(ends, &order, |e| e.record.peak_memory);
    let logs = column(ends, &order, |e| e.record.log.as_str());
    let states = column(ends, &order, |e| e.transition.state.as_str());
    let next_runs = column(ends, &order, |e| e.transition.next_run_at);
    let periods = column(ends, &order, |e| e.transition.period_start);
    let attempts = column(ends, &order, |e| i64::from(e.transition.attempts));
    let outputs = column(ends, &order, |e| e.transition.output.as_ref().map(Data::to_typed_json));
    let stops = column(ends, &order, |e| e.transition.stop_reason.as_deref());
    let errors = column(ends, &order, |e| e.transition.error.as_deref());
    let finished = column(ends, &order, |e| e.transition.state.is_finished().then_some(e.now));
    let components = column(ends, &order, |e| e.record.component.as_deref());
    let contracts = column(ends, &order, |e| e.record.contract.as_deref());
    // One index lookup per run in each table, whatever the statistics
    // say: a young `attempts` table (not yet analyzed, or grown since) is
    // otherwise read whole at every batch. Only for this transaction.
    tx.batch_execute(sql::INDEX_LOOKUPS_ONLY).await?;
    let found = rows(
        tx,
        sql::FINISH,
        &[
            &ids,
            &leases,
            &nows,
            &outcomes,
            &run_stops,
            &run_errors,
            &fuels,
            &peaks,
            &logs,
            &states,
            &next_runs,
            &periods,
            &attempts,
            &outputs,
            &stops,
            &errors,
            &finished,
            &components,
            &contracts,
        ],
    )
    .await?;
    let mut applied = std::collections::HashMap::with_capacity(found.len());
    for row in &found {
        let id: TaskId = row.try_get("id")?;
        if row.try_get::<_, bool>("applied")? {
            applied.insert(id, row.try_get::<_, bool>("periodic")?);
        }
    }
    let mut changes: Vec<Vec<Change>> = ends.iter().map(|_| Vec::new()).collect();
    // Only work that ended can have dependents to release or fail.
    let ended: Vec<TaskId> = order
        .iter()
        .map(|&i| &ends[i])
        .filter(|e| applied.contains_key(&e.id) && e.transition.state.is_finished())
        .map(|e| e.id)
        .collect();
    let parents: std::collections::HashSet<TaskId> = if ended.is_empty() {
        Default::default()
    } else {
        rows(tx, sql::WITH_DEPENDENTS, &[&ended])
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?
    };
    for &i in &order {
        let e = &ends[i];
        let Some(&periodic) = applied.get(&e.id) else {
            continue;
        };
        let state = e.transition.state;
        let mine = &mut changes[i];
        mine.push(Change { id: e.id, state });
        if periodic {
            exec(
                tx,
                sql::TRIM_PERIODIC_ATTEMPTS,
                &[&e.id, &i64::from(PERIODIC_ATTEMPTS_KEPT)],
            )
            .await?;
        }
        if parents.contains(&e.id) {
            match state {
                TaskState::Succeeded => unblock(tx, e.id, e.now, mine).await?,
                TaskState::Failed | TaskState::Cancelled => propagate(tx, &[e.id], state, e.now, mine).await?,
                _ => {}
            }
        }
    }
    Ok(changes)
}

/// Ends the runs of hosts that are gone (see `TaskStore::recover`): each
/// decided by `retry::decide_orphaned` and applied as a finish under the
/// dead run's lease.
pub(super) async fn rescue_in(tx: &Tx<'_>, me: &HostIdentity, now: Millis) -> Result<Vec<Change>, Fail> {
    // A dead host's row locked by its own unfinished transaction (it froze
    // mid-renewal) is not waited for: the next round tries again, once the
    // server has ended that session.
    tx.batch_execute("SET LOCAL lock_timeout = '1s'").await?;
    let orphans = rows(tx, sql::RESCUE, &[&me.id, &me.incarnation, &RESCUE_BATCH]).await?;
    let mut changes = Vec::new();
    for row in &orphans {
        let (info, period_start) = task_from_row(row)?;
        let lease: Option<i64> = row.try_get("lease")?;
        let lease = lease.and_then(|l| u64::try_from(l).ok()).unwrap_or(0);
        let id = info.id;
        let claimed = Claimed {
            info,
            period_start,
            lease,
        };
        let t = crate::retry::decide_orphaned(&claimed.retry_facts(), now);
        changes.extend(finish_in(tx, id, lease, &t, &AttemptEnd::orphaned(), now).await?);
    }
    Ok(changes)
}

// ---------------------------------------------------------------------------
// Reads.

/// Task `id` with its attempt history.
pub(super) async fn get_in(tx: &Tx<'_>, id: TaskId) -> Result<Option<TaskInfo>, Fail> {
    let found = rows(tx, sql::GET_TASK, &[&id]).await?;
    let Some(row) = found.first() else {
        return Ok(None);
    };
    let (mut info, _) = task_from_row(row)?;
    for r in rows(tx, sql::GET_ATTEMPTS, &[&id]).await? {
        let log: Option<String> = r.try_get("log")?;
        let count = |v: Option<i64>| v.map(|n| u64::try_from(n).unwrap_or(0));
        info.attempts.push(AttemptRecord {
            attempt: u32::try_from(r.try_get::<_, i64>("run_attempt")?).unwrap_or(u32::MAX),
            started_at: r.try_get("started_at")?,
            ended_at: r.try_get("ended_at")?,
            outcome: r.try_get("outcome")?,
            stop_reason: r.try_get("stop_reason")?,
            error: r.try_get("error")?,
            fuel_consumed: count(r.try_get("fuel")?),
            peak_memory_bytes: count(r.try_get("peak_memory")?),
            log: match log {
                Some(l) => serde_json::from_str(&l).map_err(|e| {
                    Fail::Store(StoreError::DamagedTask {
                        id,
                        detail: format!("its attempt log is not a log: {e}"),
                    })
                })?,
                None => Vec::new(),
            },
            component: r.try_get("component")?,
            contract: r.try_get("contract")?,
        });
    }
    Ok(Some(info))
}

/// The values of `task_filter!`'s `$1..$8` for `q`'s filter fields.
struct Filter {
    state: Option<&'static str>,
    tag: Option<String>,
    unique_name: Option<String>,
    ids: Option<Vec<TaskId>>,
    handler: Option<String>,
    search: Option<String>,
    kind: Option<&'static str>,
    dependents_of: Option<TaskId>,
}

impl Filter {
    fn of(q: &Query) -> Filter {
        Filter {
            state: q.state.map(|s| s.as_str()),
            tag: q.tag.clone(),
            unique_name: q.unique_name.clone(),
            ids: q.ids.clone(),
            handler: q.handler.clone(),
            search: q.search_pattern(),
            kind: q.kind.map(|k| k.as_str()),
            dependents_of: q.dependents_of,
        }
    }

    /// `$1..$8`, then `more`.
    fn params<'a>(&'a self, more: &[&'a (dyn ToSql + Sync)]) -> Vec<&'a (dyn ToSql + Sync)> {
        let mut all: Vec<&'a (dyn ToSql + Sync)> = vec![
            &self.state,
            &self.tag,
            &self.unique_name,
            &self.ids,
            &self.handler,
            &self.search,
            &self.kind,
            &self.dependents_of,
        ];
        all.extend_from_slice(more);
        all
    }
}

/// Tasks matching `q`, by id (newest first if it says so).
pub(super) async fn query_in(client: &impl GenericClient, q: &Query) -> Result<Vec<TaskInfo>, Fail> {
    let filter = Filter::of(q);
    let limit: Option<i64> = q.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
    let stmt = client
        .prepare_cached(if q.newest_first { sql::QUERY_NEWEST } else { sql::QUERY })
        .await?;
    client
        .query(&stmt, &filter.params(&[&q.after_id, &q.before_id, &limit]))
        .await?
        .iter()
        .map(|r| task_from_row(r).map(|(i, _)| i))
        .collect()
}

/// The ids of the tasks `q`'s filter fields match in one of `states`.
async fn matching(tx: &Tx<'_>, q: &Query, states: &[&str]) -> Result<Vec<TaskId>, Fail> {
    let filter = Filter::of(q);
    let states: Vec<&str> = states.to_vec();
    rows(tx, sql::MATCHING, &filter.params(&[&states]))
        .await?
        .iter()
        .map(|r| Ok(r.try_get(0)?))
        .collect()
}

/// Cancels the unfinished tasks `q` matches, and their dependents.
pub(super) async fn cancel_matching_in(tx: &Tx<'_>, q: &Query, now: Millis) -> Result<Vec<Change>, Fail> {
    let ids = matching(tx, q, &["enqueued", "running", "blocked"]).await?;
    let mut changes = Vec::new();
    cancel_ids(tx, &ids, now, &mut changes).await?;
    Ok(changes)
}

/// See `TaskStore::retry`: reads the tasks concerned a level of the chain
/// at a time, asks [`plan_retry`], and applies its plan in one statement.
pub(super) async fn retry_in(tx: &Tx<'_>, q: &Query, now: Millis) -> Result<Vec<Change>, Fail> {
    let seeds = matching(tx, q, &["failed", "cancelled"]).await?;
    let mut nodes: std::collections::HashMap<TaskId, RetryNode> = std::collections::HashMap::new();
    let mut todo = seeds.clone();
    while !todo.is_empty() {
        todo.sort_unstable();
        todo.dedup();
        todo.retain(|id| !nodes.contains_key(id));
        let mut next = Vec::new();
        for row in rows(tx, sql::RETRY_NODES, &[&todo]).await? {
            let id: TaskId = row.try_get("id")?;
            let state = |s: &str| TaskState::parse(s).unwrap_or(TaskState::Failed);
            let parents: Vec<TaskId> = row.try_get("parents")?;
            let parent_states: Vec<String> = row.try_get("parent_states")?;
            let children: Vec<TaskId> = row.try_get("children")?;
            let child_states: Vec<String> = row.try_get("child_states")?;
            let child_errors: Vec<Option<String>> = row.try_get("child_errors")?;
            let ended_by_it: Vec<TaskId> = children
                .iter()
                .zip(&child_states)
                .zip(&child_errors)
                .filter(|((_, s), e)| e.as_deref() == Some(cause(id, state(s)).as_str()))
                .map(|((c, _), _)| *c)
                .collect();
            next.extend(ended_by_it.iter().copied());
            let node = RetryNode {
                state: state(&row.try_get::<_, String>("state")?),
                parents: parents
                    .into_iter()
                    .zip(parent_states.iter().map(|s| state(s)))
                    .collect(),
                ended_by_it,
            };
            nodes.insert(id, node);
        }
        todo = next;
    }
    let plan = plan_retry(&seeds, &nodes);
    if plan.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<TaskId> = plan.iter().map(|(id, _)| *id).collect();
    let infos = query_in(
        tx,
        &Query {
            ids: Some(ids.clone()),
            ..Query::default()
        },
    )
    .await?;
    let (mut states, mut due, mut starts) = (Vec::new(), Vec::new(), Vec::new());
    for (id, state) in &plan {
        let (start, next) = infos
            .iter()
            .find(|t| t.id == *id)
            .map_or((0, now), |t| crate::work::resume_schedule(t, now));
        states.push(state.as_str());
        due.push(next);
        starts.push(start);
    }
    let mut changes: Vec<Change> = rows(tx, sql::RETRY, &[&ids, &states, &due, &starts])
        .await?
        .iter()
        .map(|r| {
            let state: String = r.try_get(1)?;
            Ok(Change {
                id: r.try_get(0)?,
                state: TaskState::parse(&state).unwrap_or(TaskState::Enqueued),
            })
        })
        .collect::<Result<_, Fail>>()?;
    changes.sort_by_key(|c| c.id);
    Ok(changes)
}

/// See `TaskStore::run_now`.
pub(super) async fn run_now_in(tx: &Tx<'_>, q: &Query, now: Millis) -> Result<Vec<Change>, Fail> {
    let filter = Filter::of(q);
    let mut ids: Vec<TaskId> = rows(tx, sql::RUN_NOW, &filter.params(&[&now]))
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    ids.sort_unstable();
    Ok(ids
        .into_iter()
        .map(|id| Change {
            id,
            state: TaskState::Enqueued,
        })
        .collect())
}

/// See `TaskStore::delete`.
pub(super) async fn delete_in(tx: &Tx<'_>, q: &Query) -> Result<Vec<TaskId>, Fail> {
    let filter = Filter::of(q);
    let mut ids: Vec<TaskId> = rows(tx, sql::DELETE_TASKS, &filter.params(&[]))
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    ids.sort_unstable();
    Ok(ids)
}

// ---------------------------------------------------------------------------
// The clock follower.

/// See `TaskStore::follow_clock`; serialized across hosts by an advisory
/// lock, so a jump moves every task once.
pub(super) async fn follow_clock_in(
    tx: &Tx<'_>,
    boot: &str,
    reading: Millis,
    threshold: Millis,
) -> Result<ClockJump, Fail> {
    tx.execute(sql::CLOCK_LOCK, &[]).await?;
    let setting = |key: &'static str| async move {
        let row = tx.query_opt(sql::GET_SETTING, &[&key]).await?;
        Ok::<_, Fail>(row.map(|r| r.get::<_, String>(0)))
    };
    let recorded = match (setting("clock_boot").await?, setting("clock_reading").await?) {
        (Some(b), Some(r)) if b == boot => r.parse::<Millis>().ok(),
        _ => None,
    };
    let mut jump = ClockJump::default();
    if let Some(recorded) = recorded {
        let by = reading.saturating_sub(recorded);
        if by.saturating_abs() < threshold {
            return Ok(jump);
        }
        jump.by = by;
        for row in tx.query(sql::CLOCK_WAITING, &[]).await? {
            let state: String = row.try_get(1)?;
            if let Some(state) = TaskState::parse(&state) {
                jump.moved.push(Change {
                    id: row.try_get(0)?,
                    state,
                });
            }
        }
        tx.execute(sql::CLOCK_MOVE, &[&by]).await?;
    }
    tx.execute(sql::SET_SETTING, &[&"clock_boot", &boot]).await?;
    tx.execute(sql::SET_SETTING, &[&"clock_reading", &reading.to_string()])
        .await?;
    Ok(jump)
}
