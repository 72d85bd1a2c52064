//! The SQL of each store operation, run on the writer's connection inside
//! its transaction, or on the reader inside a snapshot.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::budget::TaskKind;
use crate::data::Data;
use crate::device::DeviceState;
use crate::outcome::RunOutcome;
use crate::retry::Transition;
use crate::store::{
    Change, Claimed, ClockJump, HandlerCounts, HandlerWait, HostInfo, PERIODIC_ATTEMPTS_KEPT, Query, Selector,
};
use crate::work::{
    AttemptRecord, BackoffPolicy, BudgetOverride, Enqueued, ExistingWorkPolicy, Millis, Periodic, Rate, TaskId,
    TaskInfo, TaskState, WorkError, WorkRequest,
};

use super::schema::claim_key;
use super::{Fail, damaged};
use crate::store::plan::{RetryNode, cause, plan_retry};

/// A value of the `settings` table, shared by every process on the store.
pub(super) fn setting(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT value FROM settings WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()
}

/// Sets a value of the `settings` table.
pub(super) fn set_setting(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)")?
        .execute([key, value])?;
    Ok(())
}

pub(super) fn kind_str(kind: TaskKind) -> &'static str {
    kind.as_str()
}

pub(super) fn backoff_str(b: BackoffPolicy) -> &'static str {
    b.as_str()
}

pub(super) const TASK_COLUMNS: &str = "id, handler, task, kind, state, unique_name, input, output, progress, attempts, max_attempts, \
     next_run_at, frequency_ms, flex_ms, backoff, backoff_delay_ms, timeout_ms, fuel, max_memory, stop_reason, error, \
     created_at, finished_at, period_start, req_network, req_charging, req_battery, req_idle, req_storage, priority, \
     expedited, cron, pin";

/// Task `id`'s data `column`; damaged text is an error naming the task.
pub(super) fn data_column(id: TaskId, column: &str, text: Option<String>) -> rusqlite::Result<Option<Data>> {
    text.map(|t| Data::from_typed_json(&t).map_err(|e| damaged(id, column, format_args!("is not task data: {e}"))))
        .transpose()
}

pub(super) fn row_to_info(r: &rusqlite::Row<'_>) -> rusqlite::Result<(TaskInfo, Millis)> {
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
        priority: u8::try_from(r.get::<_, i64>(29)?).unwrap_or(crate::work::DEFAULT_PRIORITY),
        expedited: r.get(30)?,
        cron: match r.get::<_, Option<String>>(31)? {
            None => None,
            Some(text) => Some(
                crate::work::CronSchedule::from_stored(&text)
                    .ok_or_else(|| damaged(id, "cron", format_args!("is {text:?}, which no workhost writes")))?,
            ),
        },
        pin: r.get(32)?,
        attempts: Vec::new(),
    };
    Ok((info, r.get(23)?))
}

/// Reads task `info.id`'s tags and the tasks it runs after, in one
/// statement (a claim runs it for every task it claims).
pub(super) fn load_tags_and_deps(conn: &Connection, info: &mut TaskInfo) -> rusqlite::Result<()> {
    let mut s = conn.prepare_cached(
        "SELECT tag, NULL FROM tags WHERE task_id = ?1 UNION ALL SELECT NULL, parent FROM deps WHERE child = ?1",
    )?;
    let mut rows = s.query([info.id])?;
    let (mut tags, mut after) = (Vec::new(), Vec::new());
    while let Some(row) = rows.next()? {
        match row.get::<_, Option<String>>(0)? {
            Some(tag) => tags.push(tag),
            None => after.push(row.get(1)?),
        }
    }
    tags.sort_unstable();
    after.sort_unstable();
    (info.tags, info.after) = (tags, after);
    Ok(())
}

pub(super) fn load_task(conn: &Connection, id: TaskId) -> rusqlite::Result<Option<(TaskInfo, Millis)>> {
    let mut s = conn.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))?;
    let Some((mut info, period_start)) = s.query_row([id], row_to_info).optional()? else {
        return Ok(None);
    };
    load_tags_and_deps(conn, &mut info)?;
    Ok(Some((info, period_start)))
}

pub(super) fn set_state(
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

/// Fails or cancels every unfinished dependent of `id`, transitively;
/// each records its cause ([`cause`]), which a retry of it reads.
pub(super) fn propagate(
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
            set_state(conn, child, state, Some(&cause(parent, state)), now)?;
            changes.push(Change { id: child, state });
            stack.push(child);
        }
    }
    Ok(())
}

/// Moves BLOCKED dependents of `id` whose parents have all succeeded to
/// ENQUEUED, merging the parents' outputs over their input.
pub(super) fn unblock(conn: &Connection, id: TaskId, now: Millis, changes: &mut Vec<Change>) -> rusqlite::Result<()> {
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
pub(super) fn try_release(
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
            set_state(conn, child, s, Some(&cause(*parent, s)), now)?;
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

pub(super) fn cancel_ids(
    conn: &Connection,
    ids: &[TaskId],
    now: Millis,
    changes: &mut Vec<Change>,
) -> rusqlite::Result<()> {
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

pub(super) fn write_constraints(conn: &Connection, id: TaskId, c: &crate::device::Constraints) -> rusqlite::Result<()> {
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
        "handler, task, input, max_attempts, frequency_ms, flex_ms, backoff, backoff_delay_ms, timeout_ms, fuel, max_memory, \
         priority, cron, pin"
    };
}

pub(super) const INSERT_TASK: &str = concat!(
    "INSERT INTO tasks (",
    spec_columns!(),
    ", kind, state, unique_name, next_run_at, initial_delay_ms, period_start, created_at, expedited, finished_at, \
     error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, \
     ?23, ?24)"
);

pub(super) const UPDATE_SPEC: &str = concat!(
    "UPDATE tasks SET (",
    spec_columns!(),
    ") = (?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) WHERE id = ?1"
);

/// The values of [`spec_columns`], in its order.
pub(super) fn spec_values(r: &WorkRequest) -> [rusqlite::types::Value; 14] {
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
        Value::Integer(i64::from(r.priority)),
        r.cron.as_ref().map_or(Value::Null, |c| Value::Text(c.to_stored())),
        r.pin.as_ref().map_or(Value::Null, |p| Value::Text(p.clone())),
    ]
}

pub(super) fn write_tags(conn: &Connection, id: TaskId, tags: &[String]) -> rusqlite::Result<()> {
    for tag in tags {
        conn.prepare_cached("INSERT OR IGNORE INTO tags (tag, task_id) VALUES (?1, ?2)")?
            .execute(params![tag, id])?;
    }
    Ok(())
}

pub(super) fn insert_task(
    conn: &Connection,
    r: &WorkRequest,
    after: &[TaskId],
    now: Millis,
    changes: &mut Vec<Change>,
    dropped: Option<&str>,
) -> Result<TaskId, Fail> {
    let delay = crate::work::millis(r.initial_delay);
    let (period_start, next_run_at) = crate::work::first_run(r, now);
    let state = if dropped.is_some() {
        TaskState::Cancelled
    } else if after.is_empty() {
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
        Value::Integer(i64::from(r.expedited.is_some())),
        dropped.map_or(Value::Null, |_| Value::Integer(now)),
        dropped.map_or(Value::Null, |why| Value::Text(why.into())),
    ]);
    conn.prepare_cached(INSERT_TASK)?
        .execute(rusqlite::params_from_iter(values))?;
    let id = conn.last_insert_rowid();
    if !r.constraints.is_empty() {
        write_constraints(conn, id, &r.constraints)?;
    }
    write_tags(conn, id, &r.tags)?;
    if dropped.is_some() {
        changes.push(Change { id, state });
        return Ok(id);
    }
    for parent in after {
        let exists: bool = conn.query_row("SELECT EXISTS(SELECT 1 FROM tasks WHERE id = ?1)", [parent], |r| {
            r.get(0)
        })?;
        if !exists {
            return Err(WorkError::UnknownTask(*parent).into());
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

pub(super) fn enqueue_in(
    conn: &Connection,
    r: &WorkRequest,
    now: Millis,
    quota: Option<Rate>,
) -> Result<(Enqueued, Vec<Change>), Fail> {
    let mut changes = Vec::new();
    let mut warnings = Vec::new();
    // Expedited work within the handler's quota: the expedited requests it
    // accepted in the window before now.
    let mut dropped = None;
    // The request as it is enqueued: without its expedited flag once the
    // quota is spent.
    let mut as_normal = None;
    if let (Some(policy), Some(q)) = (r.expedited, quota) {
        let used: i64 = conn
            .prepare_cached("SELECT count(*) FROM tasks WHERE handler = ?1 AND expedited = 1 AND created_at > ?2")?
            .query_row(params![r.handler, now.saturating_sub(q.window_ms())], |row| row.get(0))?;
        if used >= i64::from(q.count) {
            let (why, warning) = crate::work::quota_spent(&r.handler, q, policy);
            warnings.push(warning);
            dropped = why;
            as_normal = Some(WorkRequest {
                expedited: None,
                ..r.clone()
            });
        }
    }
    let r = as_normal.as_ref().unwrap_or(r);
    if let Some(why) = &dropped {
        let id = insert_task(conn, r, &[], now, &mut changes, Some(why))?;
        return Ok((
            Enqueued {
                id,
                created: true,
                warnings,
            },
            changes,
        ));
    }
    let mut after = r.after.clone();
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
                        warnings,
                    },
                    changes,
                ));
            }
            Update if !unfinished.is_empty() => {
                let id = unfinished[0];
                // A changed cron schedule takes effect at once: a task
                // waiting for its next fire waits for the new one instead.
                if let Some(c) = &r.cron {
                    let (fire, _) = crate::work::first_run(r, now);
                    conn.prepare_cached(
                        "UPDATE tasks SET next_run_at = ?2, period_start = ?2 WHERE id = ?1 AND state = 'enqueued' \
                         AND attempts = 0 AND cron IS NOT NULL AND cron <> ?3",
                    )?
                    .execute(params![id, fire, c.to_stored()])?;
                }
                let values = std::iter::once(rusqlite::types::Value::Integer(id)).chain(spec_values(r));
                conn.prepare_cached(UPDATE_SPEC)?
                    .execute(rusqlite::params_from_iter(values))?;
                write_constraints(conn, id, &r.constraints)?;
                conn.execute("DELETE FROM tags WHERE task_id = ?1", [id])?;
                write_tags(conn, id, &r.tags)?;
                return Ok((
                    Enqueued {
                        id,
                        created: false,
                        warnings,
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
    let id = insert_task(conn, r, &after, now, &mut changes, None)?;
    Ok((
        Enqueued {
            id,
            created: true,
            warnings,
        },
        changes,
    ))
}

/// Claims up to `limit` due tasks (see [`TaskStore::claim`]); nothing
/// while the store is paused.
pub(super) fn claim_in(
    conn: &Connection,
    now: Millis,
    limit: usize,
    free: &HashMap<String, usize>,
    device: &DeviceState,
    rates: &HashMap<String, Rate>,
    after: Option<&str>,
) -> rusqlite::Result<Vec<Claimed>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // Whether the whole store is paused, and which handlers are, in one
    // statement: a row of NULL stands for the store.
    let mut paused: Vec<String> = Vec::new();
    let mut s = conn.prepare_cached(
        "SELECT NULL FROM settings WHERE key = 'paused' AND value = '1' \
         UNION ALL SELECT handler FROM paused_handlers",
    )?;
    let mut rows = s.query([])?;
    while let Some(row) = rows.next()? {
        match row.get::<_, Option<String>>(0)? {
            Some(handler) => paused.push(handler),
            None => return Ok(Vec::new()),
        }
    }
    drop(rows);
    drop(s);
    // Each handler's first due tasks in claim order (expedited, then due
    // time aged by priority: see `claim_key`), as many as it has free
    // slots and its rate allows, then round by round: every handler's
    // first before anyone's second. The index on the claim key is walked
    // in order; the bound on the key (a due task's key is at most now
    // plus nine priority steps) ends the walk.
    let sql = claim_sql_for(device);
    let key_bound = crate::work::claim_key(now, crate::work::LOWEST_PRIORITY, false);
    let mut handlers: Vec<(&String, &usize)> = free
        .iter()
        .filter(|(h, slots)| **slots > 0 && !paused.contains(h))
        .collect();
    handlers.sort();
    // (round, whether of the handler `after`, key, id, the handler if rated)
    let mut candidates: Vec<(usize, bool, Millis, TaskId, Option<&String>)> = Vec::new();
    let mut stmt = conn.prepare_cached(&sql)?;
    for (handler, slots) in handlers {
        let mut slots = (*slots).min(limit);
        let rate = rates.get(handler);
        if let Some(rate) = rate {
            slots = slots.min(rate_room(conn, handler, *rate, now)?);
        }
        if slots == 0 {
            continue;
        }
        let due = stmt.query_map(params![handler, now, slots as i64, key_bound], |r| {
            Ok((r.get::<_, TaskId>(0)?, r.get::<_, Millis>(1)?))
        })?;
        for (round, row) in due.enumerate() {
            let (id, key) = row?;
            candidates.push((round, after == Some(handler.as_str()), key, id, rate.map(|_| handler)));
        }
    }
    drop(stmt);
    candidates.sort_unstable();
    let mut claimed = Vec::new();
    for (_, _, _, id, rated) in candidates {
        if claimed.len() >= limit {
            break;
        }
        static CLAIM_ONE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "UPDATE tasks SET state = 'running', attempts = attempts + 1, progress = NULL \
                 WHERE id = ?1 AND state = 'enqueued' RETURNING {TASK_COLUMNS}"
            )
        });
        let mut stmt = conn.prepare_cached(&CLAIM_ONE)?;
        let Some((mut info, period_start)) = stmt.query_row([id], row_to_info).optional()? else {
            continue;
        };
        load_tags_and_deps(conn, &mut info)?;
        if let Some(handler) = rated {
            conn.prepare_cached("INSERT INTO starts (handler, at) VALUES (?1, ?2)")?
                .execute(params![handler, now])?;
        }
        // The attempt row's key, one more than any before it, is the run's
        // lease: it fences the run's progress and finish.
        let lease: i64 = conn
            .prepare_cached(
                "INSERT INTO attempts (task_id, attempt, run_attempt, started_at) \
                 VALUES (?1, (SELECT coalesce(max(attempt), 0) + 1 FROM attempts WHERE task_id = ?1), ?2, ?3) \
                 RETURNING attempt",
            )?
            .query_row(params![id, info.run_attempt_count, now], |r| r.get(0))?;
        claimed.push(Claimed {
            info,
            period_start,
            lease: u64::try_from(lease).unwrap_or(0),
        });
    }
    Ok(claimed)
}

/// What of a device state the claim's statement depends on
/// ([`constraint_filter`]): not its raw readings, which change at every
/// sample.
type ClaimKey = (crate::device::NetworkState, bool, bool, bool, bool);

thread_local! {
    /// The claim statement last made ([`claim_sql`]) and what of the device
    /// state it was made for: claims run on the store's writer thread, and
    /// that changes seldom, so most claims use the text made before.
    static CLAIM_SQL: std::cell::RefCell<Option<(ClaimKey, std::rc::Rc<str>)>> = const { std::cell::RefCell::new(None) };
}

/// [`claim_sql`] for `device`, made again only when what it depends on
/// changed.
fn claim_sql_for(device: &DeviceState) -> std::rc::Rc<str> {
    let key: ClaimKey = (
        device.network,
        device.charging,
        device.battery_low,
        device.idle,
        device.storage_low,
    );
    CLAIM_SQL.with_borrow_mut(|last| match last {
        Some((k, sql)) if *k == key => sql.clone(),
        _ => {
            let sql: std::rc::Rc<str> = claim_sql(device).into();
            *last = Some((key, sql.clone()));
            sql
        }
    })
}

/// The claim's look for one handler's due tasks in claim order: `?1` the
/// handler, `?2` now, `?3` how many, `?4` the bound on the claim key.
///
/// The limit is `(SELECT ?3)`, not `?3`: SQLite's planner reads a bare
/// parameter in LIMIT, so binding it expires the statement and every
/// claim parsed and planned it again (most of a claim's cost, found by
/// profiling the writer thread).
pub(super) fn claim_sql(device: &DeviceState) -> String {
    format!(
        "SELECT id, {key} FROM tasks WHERE state = 'enqueued' AND handler = ?1 AND {key} <= ?4 \
         AND next_run_at <= ?2{} ORDER BY {key}, id LIMIT (SELECT ?3)",
        constraint_filter(device),
        key = claim_key!(),
    )
}

/// How many more runs of `handler` its rate allows at `now`: the rate's
/// count less the runs started in the window before `now`. Forgets starts
/// older than the window.
pub(super) fn rate_room(conn: &Connection, handler: &str, rate: Rate, now: Millis) -> rusqlite::Result<usize> {
    let since = now.saturating_sub(rate.window_ms());
    conn.prepare_cached("DELETE FROM starts WHERE handler = ?1 AND at <= ?2")?
        .execute(params![handler, since])?;
    let used: i64 = conn
        .prepare_cached("SELECT count(*) FROM starts WHERE handler = ?1 AND at > ?2")?
        .query_row(params![handler, since], |r| r.get(0))?;
    Ok(usize::try_from(i64::from(rate.count) - used).unwrap_or(0))
}

/// When `handler`'s rate next has room, if its window ever filled: the
/// `count`-th most recent start plus the window (a time already past means
/// room now).
pub(super) fn rate_free_at(conn: &Connection, handler: &str, rate: Rate) -> rusqlite::Result<Option<Millis>> {
    conn.prepare_cached("SELECT at FROM starts WHERE handler = ?1 ORDER BY at DESC LIMIT 1 OFFSET ?2")?
        .query_row(params![handler, i64::from(rate.count) - 1], |r| r.get::<_, Millis>(0))
        .optional()
        .map(|at| at.map(|at| at.saturating_add(rate.window_ms())))
}

/// SQL that keeps only tasks whose constraints hold in `device`.
pub(super) fn constraint_filter(device: &DeviceState) -> String {
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
        // Expedited work is not held by `device_idle` (as WorkManager's).
        sql.push_str(" AND (req_idle = 0 OR expedited = 1)");
    }
    if device.storage_low {
        sql.push_str(" AND req_storage = 0");
    }
    sql
}

pub(super) fn progress_in(conn: &Connection, id: TaskId, lease: u64, json: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE tasks SET progress = ?2 WHERE id = ?1 AND state = 'running' \
         AND (SELECT max(attempt) FROM attempts WHERE task_id = ?1) = ?3",
    )?
    .execute(params![id, json, i64::try_from(lease).unwrap_or(i64::MAX)])?;
    Ok(())
}

/// What an attempt's row records of its run.
pub(super) struct AttemptEnd {
    pub(super) outcome: String,
    pub(super) stop_reason: Option<String>,
    pub(super) error: Option<String>,
    pub(super) fuel: Option<i64>,
    pub(super) peak_memory: i64,
    pub(super) log: String,
    /// The component that ran: digest and contract.
    pub(super) component: Option<(String, String)>,
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
            component: outcome
                .component
                .as_ref()
                .map(|c| (c.digest.clone(), c.contract.clone())),
        }
    }
}

/// A transition's output as the store keeps it (typed JSON), if it has one.
pub(super) fn output_json(t: &Transition) -> Option<String> {
    t.output.as_ref().map(Data::to_typed_json)
}

/// Records a finished run and applies its transition (see
/// [`TaskStore::finish`]). `output` is the transition's output in the
/// store's typed JSON ([`output_json`]), made before the job reaches the
/// writer thread.
pub(super) fn finish_in(
    conn: &Connection,
    id: TaskId,
    lease: u64,
    t: &Transition,
    output: Option<&str>,
    a: &AttemptEnd,
    now: Millis,
) -> rusqlite::Result<Vec<Change>> {
    let lease = i64::try_from(lease).unwrap_or(i64::MAX);
    // The run's own attempt row, unless something else ended it (recovery).
    conn.prepare_cached(
        "UPDATE attempts SET ended_at = ?3, outcome = ?4, stop_reason = ?5, error = ?6, fuel = ?7, \
         peak_memory = ?8, log = ?9, component = ?10, contract = ?11 \
         WHERE task_id = ?1 AND attempt = ?2 AND ended_at IS NULL",
    )?
    .execute(params![
        id,
        lease,
        now,
        a.outcome,
        a.stop_reason,
        a.error,
        a.fuel,
        a.peak_memory,
        a.log,
        a.component.as_ref().map(|c| &c.0),
        a.component.as_ref().map(|c| &c.1)
    ])?;
    let finished = t.state.is_finished().then_some(now);
    let updated = conn
        .prepare_cached(
            "UPDATE tasks SET state = ?3, next_run_at = ?4, period_start = ?5, attempts = ?6, \
             output = COALESCE(?7, output), stop_reason = ?8, error = ?9, finished_at = ?10 \
             WHERE id = ?1 AND state = 'running' \
             AND (SELECT max(attempt) FROM attempts WHERE task_id = ?1) = ?2",
        )?
        .execute(params![
            id,
            lease,
            t.state.as_str(),
            t.next_run_at,
            t.period_start,
            t.attempts,
            output,
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

pub(super) fn selector_ids(conn: &Connection, selector: &Selector) -> rusqlite::Result<Vec<TaskId>> {
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

/// Task `id` with its tags, dependencies and attempt history.
pub(super) fn get_in(conn: &Connection, id: TaskId) -> rusqlite::Result<Option<TaskInfo>> {
    let Some((mut info, _)) = load_task(conn, id)? else {
        return Ok(None);
    };
    let mut s = conn.prepare_cached(
        "SELECT coalesce(run_attempt, attempt), started_at, ended_at, outcome, stop_reason, error, fuel, \
         peak_memory, log, component, contract FROM attempts WHERE task_id = ?1 ORDER BY attempt",
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
                component: r.get(9)?,
                contract: r.get(10)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(info))
}

/// The condition on `tasks t` of `q`'s filter fields (not its paging
/// fields), its values appended to `args` (numbered on from them).
pub(super) fn filter_sql(q: &Query, args: &mut Vec<String>) -> String {
    fn arg(args: &mut Vec<String>, value: String) -> String {
        args.push(value);
        format!("?{}", args.len())
    }
    let mut sql = String::from("1 = 1");
    if let Some(state) = q.state {
        sql.push_str(&format!(" AND t.state = {}", arg(args, state.as_str().into())));
    }
    if let Some(tag) = &q.tag {
        sql.push_str(&format!(
            " AND t.id IN (SELECT task_id FROM tags WHERE tag = {})",
            arg(args, tag.clone())
        ));
    }
    if let Some(name) = &q.unique_name {
        sql.push_str(&format!(" AND t.unique_name = {}", arg(args, name.clone())));
    }
    if let Some(handler) = &q.handler {
        sql.push_str(&format!(" AND t.handler = {}", arg(args, handler.clone())));
    }
    if let Some(ids) = &q.ids {
        let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        sql.push_str(&format!(" AND t.id IN ({})", list.join(",")));
    }
    if let Some(kind) = q.kind {
        sql.push_str(&format!(" AND t.kind = {}", arg(args, kind.as_str().into())));
    }
    if let Some(parent) = q.dependents_of {
        sql.push_str(&format!(
            " AND t.id IN (SELECT child FROM deps WHERE parent = {})",
            arg(args, parent.to_string())
        ));
    }
    if let Some(pattern) = q.search_pattern() {
        let p = arg(args, pattern);
        let like = |column: &str| format!("{column} LIKE {p} ESCAPE '\\'");
        sql.push_str(&format!(
            " AND ({} OR {} OR {} OR {} OR {} OR {} OR EXISTS (SELECT 1 FROM tags g WHERE g.task_id = t.id AND {}))",
            like("CAST(t.id AS TEXT)"),
            like("t.handler"),
            like("t.task"),
            like("t.unique_name"),
            like("t.input"),
            like("t.error"),
            like("g.tag"),
        ));
    }
    sql
}

/// The ids of the tasks `q`'s filter fields match that also meet `and`
/// (a condition on `tasks t`), by id.
pub(super) fn matching_ids(conn: &Connection, q: &Query, and: &str) -> rusqlite::Result<Vec<TaskId>> {
    let mut args = Vec::new();
    let sql = format!(
        "SELECT t.id FROM tasks t WHERE {} AND {and} ORDER BY t.id",
        filter_sql(q, &mut args)
    );
    conn.prepare(&sql)?
        .query_map(rusqlite::params_from_iter(args.iter()), |r| r.get(0))?
        .collect()
}

/// Tasks matching `q`, with tags and dependencies, by id (oldest first
/// unless `newest_first`).
pub(super) fn query_in(conn: &Connection, q: &Query) -> rusqlite::Result<Vec<TaskInfo>> {
    let (sql, args) = query_sql(q);
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
}

/// The statement of [`query_in`] and its values.
pub(super) fn query_sql(q: &Query) -> (String, Vec<String>) {
    let mut args: Vec<String> = Vec::new();
    let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks t WHERE {}", filter_sql(q, &mut args));
    if let Some(after) = q.after_id {
        sql.push_str(&format!(" AND t.id > {after}"));
    }
    if let Some(before) = q.before_id {
        sql.push_str(&format!(" AND t.id < {before}"));
    }
    sql.push_str(if q.newest_first {
        " ORDER BY t.id DESC"
    } else {
        " ORDER BY t.id"
    });
    if let Some(limit) = q.limit {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    (sql, args)
}

/// The unfinished tasks `q` matches, and their dependents, cancelled.
pub(super) fn cancel_matching_in(conn: &Connection, q: &Query, now: Millis) -> rusqlite::Result<Vec<Change>> {
    let ids = matching_ids(conn, q, "t.state IN ('enqueued', 'running', 'blocked')")?;
    let mut changes = Vec::new();
    cancel_ids(conn, &ids, now, &mut changes)?;
    Ok(changes)
}

/// What a retry reads of task `id` (see [`plan_retry`]); `None` if there
/// is no such task.
fn retry_node(conn: &Connection, id: TaskId) -> rusqlite::Result<Option<RetryNode>> {
    let state: Option<String> = conn
        .prepare_cached("SELECT state FROM tasks WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    let Some(state) = state.as_deref().and_then(TaskState::parse) else {
        return Ok(None);
    };
    let states = |rows: Vec<(TaskId, String, Option<String>)>| -> Vec<(TaskId, TaskState, Option<String>)> {
        rows.into_iter()
            .filter_map(|(id, s, e)| TaskState::parse(&s).map(|s| (id, s, e)))
            .collect()
    };
    let parents = conn
        .prepare_cached("SELECT t.id, t.state, NULL FROM deps d JOIN tasks t ON t.id = d.parent WHERE d.child = ?1")?
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let children = conn
        .prepare_cached(
            "SELECT t.id, t.state, t.error FROM deps d JOIN tasks t ON t.id = d.child \
             WHERE d.parent = ?1 AND t.state IN ('failed', 'cancelled')",
        )?
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    Ok(Some(RetryNode {
        state,
        parents: states(parents).into_iter().map(|(p, s, _)| (p, s)).collect(),
        ended_by_it: states(children)
            .into_iter()
            .filter(|(_, s, e)| e.as_deref() == Some(cause(id, *s).as_str()))
            .map(|(c, _, _)| c)
            .collect(),
    }))
}

/// See [`TaskStore::retry`]: the backend-neutral plan ([`plan_retry`])
/// over what this transaction reads, applied.
pub(super) fn retry_in(conn: &Connection, q: &Query, now: Millis) -> rusqlite::Result<Vec<Change>> {
    let seeds = matching_ids(conn, q, "t.state IN ('failed', 'cancelled')")?;
    let mut nodes: HashMap<TaskId, RetryNode> = HashMap::new();
    let mut todo = seeds.clone();
    while let Some(id) = todo.pop() {
        if nodes.contains_key(&id) {
            continue;
        }
        if let Some(node) = retry_node(conn, id)? {
            todo.extend(node.ended_by_it.iter().copied());
            nodes.insert(id, node);
        }
    }
    let mut changes = Vec::new();
    for (id, state) in plan_retry(&seeds, &nodes) {
        let Some((info, _)) = load_task(conn, id)? else {
            continue;
        };
        let (period_start, next_run_at) = crate::work::resume_schedule(&info, now);
        let n = conn
            .prepare_cached(
                "UPDATE tasks SET state = ?2, attempts = 0, next_run_at = ?3, period_start = ?4, finished_at = NULL, \
                 error = NULL, stop_reason = NULL WHERE id = ?1 AND state IN ('failed', 'cancelled')",
            )?
            .execute(params![id, state.as_str(), next_run_at, period_start])?;
        if n == 1 {
            changes.push(Change { id, state });
        }
    }
    Ok(changes)
}

/// See [`TaskStore::run_now`].
pub(super) fn run_now_in(conn: &Connection, q: &Query, now: Millis) -> rusqlite::Result<Vec<Change>> {
    let ids = matching_ids(conn, q, &format!("t.state = 'enqueued' AND t.next_run_at > {now}"))?;
    let mut update = conn.prepare_cached("UPDATE tasks SET next_run_at = ?2 WHERE id = ?1")?;
    for id in &ids {
        update.execute(params![id, now])?;
    }
    Ok(ids
        .into_iter()
        .map(|id| Change {
            id,
            state: TaskState::Enqueued,
        })
        .collect())
}

/// See [`TaskStore::delete`]: finished tasks no unfinished task runs
/// after, with their rows (as [`prune_in`]).
pub(super) fn delete_in(conn: &Connection, q: &Query) -> rusqlite::Result<Vec<TaskId>> {
    let ids = matching_ids(
        conn,
        q,
        "t.state IN ('succeeded', 'failed', 'cancelled') AND NOT EXISTS (SELECT 1 FROM deps d \
         JOIN tasks c ON c.id = d.child WHERE d.parent = t.id AND c.state IN ('enqueued', 'blocked', 'running'))",
    )?;
    for statement in [
        "DELETE FROM tags WHERE task_id = ?1",
        "DELETE FROM attempts WHERE task_id = ?1",
        "DELETE FROM deps WHERE parent = ?1 OR child = ?1",
        "DELETE FROM tasks WHERE id = ?1",
    ] {
        let mut s = conn.prepare_cached(statement)?;
        for id in &ids {
            s.execute([id])?;
        }
    }
    Ok(ids)
}

/// The paused handlers, sorted.
pub(super) fn paused_handlers_in(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached("SELECT handler FROM paused_handlers ORDER BY handler")?
        .query_map([], |r| r.get(0))?
        .collect()
}

/// Pauses or resumes `handler`.
pub(super) fn set_handler_paused_in(conn: &Connection, handler: &str, paused: bool) -> rusqlite::Result<()> {
    let sql = if paused {
        "INSERT OR IGNORE INTO paused_handlers (handler) VALUES (?1)"
    } else {
        "DELETE FROM paused_handlers WHERE handler = ?1"
    };
    conn.prepare_cached(sql)?.execute([handler])?;
    Ok(())
}

/// How many tasks each handler has in each state.
pub(super) fn count_by_handler_in(conn: &Connection) -> rusqlite::Result<HandlerCounts> {
    let mut s = conn.prepare_cached("SELECT handler, state, count(*) FROM tasks GROUP BY handler, state")?;
    let rows = s.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
    })?;
    let mut out: HandlerCounts = HashMap::new();
    for row in rows {
        let (handler, state, n) = row?;
        if let Some(state) = TaskState::parse(&state) {
            out.entry(handler)
                .or_default()
                .insert(state, usize::try_from(n).unwrap_or(0));
        }
    }
    Ok(out)
}

/// The distinct pins of unfinished work (the partial index `tasks_pin`).
pub(super) fn pins_in_use_in(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached(
        "SELECT DISTINCT pin FROM tasks WHERE pin IS NOT NULL AND state IN ('enqueued', 'blocked', 'running') \
         ORDER BY pin",
    )?
    .query_map([], |r| r.get(0))?
    .collect()
}

/// How many tasks are in each state.
pub(super) fn count_by_state_in(conn: &Connection) -> rusqlite::Result<HashMap<TaskState, usize>> {
    let mut s = conn.prepare_cached("SELECT state, count(*) FROM tasks GROUP BY state")?;
    let rows = s.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = HashMap::new();
    for row in rows {
        let (state, n) = row?;
        if let Some(state) = TaskState::parse(&state) {
            out.insert(state, usize::try_from(n).unwrap_or(0));
        }
    }
    Ok(out)
}

/// The earliest due time of ENQUEUED work of `handlers` whose constraints
/// hold in `device`: one indexed look per handler.
pub(super) fn next_due_in(
    conn: &Connection,
    handlers: &[String],
    device: &DeviceState,
    rates: &HashMap<String, Rate>,
) -> rusqlite::Result<Option<Millis>> {
    let sql = format!(
        "SELECT min(next_run_at) FROM tasks WHERE state = 'enqueued' AND handler = ?1{}",
        constraint_filter(device)
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut earliest: Option<Millis> = None;
    // A paused handler's work is not due: the dispatcher would wake for
    // work the claim then leaves.
    let paused = paused_handlers_in(conn)?;
    for handler in handlers.iter().filter(|h| !paused.contains(h)) {
        let mut due: Option<Millis> = stmt.query_row([handler], |r| r.get(0))?;
        // Work over its handler's rate is due when the window has room.
        if let (Some(d), Some(rate)) = (due, rates.get(handler))
            && let Some(free) = rate_free_at(conn, handler, *rate)?
        {
            due = Some(d.max(free));
        }
        earliest = earliest.into_iter().chain(due).min();
    }
    Ok(earliest)
}

/// Due ENQUEUED work whose handler is not one of `known`, per handler.
pub(super) fn waiting_for_handler_in(
    conn: &Connection,
    known: &[String],
    now: Millis,
) -> rusqlite::Result<Vec<HandlerWait>> {
    // The handlers of enqueued work, one index seek each (not a scan of a
    // backlog), then a count of the due work of those unknown.
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
    let paused = paused_handlers_in(conn)?;
    for handler in handlers
        .into_iter()
        .filter(|h| !known.contains(h) && !paused.contains(h))
    {
        let (count, first): (i64, Option<TaskId>) =
            due.query_row(params![handler, now], |r| Ok((r.get(0)?, r.get(1)?)))?;
        if let Some(first) = first {
            out.push(HandlerWait {
                handler,
                due: usize::try_from(count).unwrap_or(0),
                first,
            });
        }
    }
    Ok(out)
}

/// Ends the runs a dead host left RUNNING (see [`TaskStore::recover`]):
/// the retry module decides what follows each, and the decision is applied
/// as a finished run's is.
pub(super) fn recover_in(conn: &Connection, now: Millis) -> Result<Vec<Change>, Fail> {
    let orphans: Vec<(TaskInfo, Millis)> = conn
        .prepare(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE state = 'running' ORDER BY id"
        ))?
        .query_map([], row_to_info)?
        .collect::<Result<_, _>>()?;
    let mut changes = Vec::new();
    for (info, period_start) in orphans {
        let id = info.id;
        let lease = current_lease(conn, id)?;
        let claimed = Claimed {
            info,
            period_start,
            lease,
        };
        let transition = crate::retry::decide_orphaned(&claimed.retry_facts(), now);
        let record = AttemptEnd {
            outcome: "stopped".into(),
            stop_reason: Some(crate::outcome::StopReason::HostShutdown.as_str().into()),
            error: Some("the host died during this run".into()),
            fuel: None,
            peak_memory: 0,
            log: "[]".into(),
            component: None,
        };
        let output = output_json(&transition);
        changes.extend(finish_in(
            conn,
            id,
            lease,
            &transition,
            output.as_deref(),
            &record,
            now,
        )?);
    }
    Ok(changes)
}

/// See [`TaskStore::follow_clock`].
pub(super) fn follow_clock_in(
    conn: &Connection,
    boot: &str,
    reading: Millis,
    threshold: Millis,
) -> rusqlite::Result<ClockJump> {
    let recorded = match (setting(conn, "clock_boot")?, setting(conn, "clock_reading")?) {
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
        // Cron work keeps its fire times: they are wall-clock times, and
        // fires a jump skipped are missed fires (catch-up decides).
        let mut waiting = conn.prepare(
            "SELECT id, state FROM tasks WHERE state IN ('enqueued', 'blocked') AND cron IS NULL ORDER BY id",
        )?;
        for row in waiting.query_map([], |r| Ok((r.get::<_, TaskId>(0)?, r.get::<_, String>(1)?)))? {
            let (id, state) = row?;
            if let Some(state) = TaskState::parse(&state) {
                jump.moved.push(Change { id, state });
            }
        }
        conn.execute(
            "UPDATE tasks SET next_run_at = next_run_at + ?1, \
             period_start = CASE WHEN frequency_ms IS NULL THEN period_start ELSE period_start + ?1 END \
             WHERE state IN ('enqueued', 'blocked', 'running') AND cron IS NULL",
            [by],
        )?;
    }
    set_setting(conn, "clock_boot", boot)?;
    set_setting(conn, "clock_reading", &reading.to_string())?;
    Ok(jump)
}

/// Deletes finished work that finished before `before` and that no
/// unfinished task runs after; returns how many tasks.
pub(super) fn prune_in(conn: &Connection, before: Millis) -> rusqlite::Result<usize> {
    let where_ = "finished_at IS NOT NULL AND finished_at < ?1 AND NOT EXISTS (SELECT 1 FROM deps d \
         JOIN tasks c ON c.id = d.child WHERE d.parent = tasks.id AND c.state IN ('enqueued', 'blocked', 'running'))";
    conn.execute(
        &format!("DELETE FROM tags WHERE task_id IN (SELECT id FROM tasks WHERE {where_})"),
        [before],
    )?;
    conn.execute(
        &format!("DELETE FROM attempts WHERE task_id IN (SELECT id FROM tasks WHERE {where_})"),
        [before],
    )?;
    conn.execute(
        &format!(
            "DELETE FROM deps WHERE parent IN (SELECT id FROM tasks WHERE {where_}) \
             OR child IN (SELECT id FROM tasks WHERE {where_})"
        ),
        [before],
    )?;
    conn.execute(&format!("DELETE FROM tasks WHERE {where_}"), [before])
}

/// Cancels the unfinished tasks `selector` picks, and their dependents.
pub(super) fn cancel_in(conn: &Connection, selector: &Selector, now: Millis) -> rusqlite::Result<Vec<Change>> {
    let ids = selector_ids(conn, selector)?;
    let mut changes = Vec::new();
    cancel_ids(conn, &ids, now, &mut changes)?;
    Ok(changes)
}

/// Makes ENQUEUED task `id` due at `now`.
pub(super) fn make_due_in(conn: &Connection, id: TaskId, now: Millis) -> Result<(), Fail> {
    let n = conn.execute(
        "UPDATE tasks SET next_run_at = ?2, \
         period_start = CASE WHEN cron IS NULL THEN period_start ELSE ?2 END WHERE id = ?1 AND state = 'enqueued'",
        params![id, now],
    )?;
    if n == 0 {
        return Err(WorkError::Invalid(format!("task {id} is not enqueued")).into());
    }
    Ok(())
}

/// The lease of task `id`'s current run: the key of its latest attempt row
/// (0 if it has none).
pub(super) fn current_lease(conn: &Connection, id: TaskId) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT coalesce(max(attempt), 0) FROM attempts WHERE task_id = ?1")?
        .query_row([id], |r| r.get::<_, i64>(0))
        .map(|l| u64::try_from(l).unwrap_or(0))
}

/// The RUNNING tasks and their leases.
pub(super) fn running_leases_in(conn: &Connection) -> rusqlite::Result<Vec<(TaskId, u64)>> {
    conn.prepare_cached(
        "SELECT t.id, coalesce((SELECT max(attempt) FROM attempts a WHERE a.task_id = t.id), 0) \
         FROM tasks t WHERE t.state = 'running' ORDER BY t.id",
    )?
    .query_map([], |r| {
        Ok((r.get::<_, TaskId>(0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0)))
    })?
    .collect()
}

/// The hosts recorded, each with the count of RUNNING tasks (one host
/// serves a SQLite store at a time: they are its).
pub(super) fn hosts_in(conn: &Connection) -> rusqlite::Result<Vec<HostInfo>> {
    let running: i64 = conn.query_row("SELECT count(*) FROM tasks WHERE state = 'running'", [], |r| r.get(0))?;
    conn.prepare_cached("SELECT id, incarnation, started_at, renewed_at FROM hosts ORDER BY started_at DESC")?
        .query_map([], |r| {
            Ok(HostInfo {
                id: r.get(0)?,
                incarnation: r.get(1)?,
                started_at: r.get(2)?,
                renewed_at: r.get(3)?,
                expires_at: None,
                live: false,
                running: usize::try_from(running).unwrap_or(0),
            })
        })?
        .collect()
}
