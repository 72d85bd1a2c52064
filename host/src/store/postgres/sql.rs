//! The PostgreSQL store's SQL: the schema migrations and one constant per
//! statement, with its parameters (`$n`, and the Rust type to bind) and its
//! result columns. Every statement names its tables with the `workhost`
//! schema, so it needs no `search_path` (PgBouncer in transaction mode
//! passes none). Protocol and reasons: docs/scale-out.md.
//!
//! Each operation runs in one READ COMMITTED transaction; row locks, and
//! transaction-scoped advisory locks where there is no row to lock yet,
//! make the read-decide-write steps exact across hosts. Times the host
//! decides are `i64` milliseconds (`Millis`) passed in, as with SQLite, so
//! the test driver's clock works; leases are judged on the database's
//! clock (`now()`) only.
//!
//! Statements that filter on a task's constraints take the device's state
//! as `$1..$5`, in `device_filter!`'s order.
//!
//! tests/all/postgres.rs prepares every statement in [`ALL`] against a
//! migrated database and runs the claim, finish, lease, rescue and unique
//! paths against a real server.

/// The schema migrations: `MIGRATIONS[v]` takes a store from version `v`
/// to `v + 1` (0: an empty database). Run in order under
/// [`MIGRATION_LOCK`], followed by [`SET_SCHEMA_VERSION`], in the one
/// transaction that opens the store.
pub const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001.sql"),
    include_str!("migrations/0002.sql"),
    include_str!("migrations/0003.sql"),
    include_str!("migrations/0004.sql"),
    include_str!("migrations/0005.sql"),
];

/// The schema version this build writes: a store at a higher one is
/// refused by name, never read.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The value of `workhost.meta`'s `application` row: the mark that the
/// database is a workhost store.
pub const APPLICATION: &str = "workhost";

/// The channel's name, for statements.
macro_rules! channel {
    () => {
        "workhost"
    };
}

/// The LISTEN/NOTIFY channel every host listens on. Payloads are small
/// JSON objects naming what changed: `{"k":"enq","handler":…,"due":…}`,
/// `{"k":"cancel","ids":[…]}`, `{"k":"pause"}`, `{"k":"resume"}`,
/// `{"k":"rescued"}`, `{"k":"retry"}`, `{"k":"due"}`, `{"k":"delete"}`,
/// `{"k":"pause-handler"}`, `{"k":"resume-handler"}`. A notification is delivered only after its
/// transaction commits, so it doubles as the store's change counter: a
/// host counts what its listener hears.
pub const CHANNEL: &str = channel!();

// ---------------------------------------------------------------------------
// Shared fragments.

/// The SQL that keeps only tasks `t` whose constraints hold on the device
/// described by `$1` (`bigint[]`: the NetworkType codes the device's
/// network satisfies), `$2` (`bool`: charging), `$3` (`bool`: battery low),
/// `$4` (`bool`: idle), `$5` (`bool`: storage low); what
/// `constraint_filter` builds as text for SQLite.
macro_rules! device_filter {
    () => {
        "t.req_network = ANY($1::bigint[]) AND (NOT t.req_charging OR $2::bool) \
         AND (NOT t.req_battery OR NOT $3::bool) AND (NOT t.req_idle OR $4::bool OR t.expedited) \
         AND (NOT t.req_storage OR NOT $5::bool)"
    };
}

/// A task row `t` as every read returns it: the SQLite store's
/// `TASK_COLUMNS` in the same order (0..=28), then `tags` (`text[]`,
/// sorted), `after` (`bigint[]`: the tasks it runs after, sorted) and
/// `lease` (`bigint`, NULL unless RUNNING).
macro_rules! task_columns {
    () => {
        "t.id, t.handler, t.task, t.kind, t.state, t.unique_name, t.input, t.output, t.progress, t.attempts, \
         t.max_attempts, t.next_run_at, t.frequency_ms, t.flex_ms, t.backoff, t.backoff_delay_ms, t.timeout_ms, \
         t.fuel, t.max_memory, t.stop_reason, t.error, t.created_at, t.finished_at, t.period_start, t.req_network, \
         t.req_charging, t.req_battery, t.req_idle, t.req_storage, t.priority, t.expedited, t.cron, t.pin, \
         ARRAY(SELECT g.tag FROM workhost.tags g WHERE g.task_id = t.id ORDER BY g.tag) AS tags, \
         ARRAY(SELECT d.parent FROM workhost.deps d WHERE d.child = t.id ORDER BY d.parent) AS after, \
         t.lease"
    };
}

/// The condition on task rows `t` of a `Query`'s filter fields; a NULL
/// parameter matches everything: `$1` `Option<&str>` state, `$2`
/// `Option<&str>` tag, `$3` `Option<&str>` unique name, `$4`
/// `Option<Vec<i64>>` ids, `$5` `Option<&str>` handler, `$6`
/// `Option<&str>` search (a `LIKE` pattern, `\` escaping; matched in any
/// case against the id as text, handler, task name, unique name, tags,
/// input and error), `$7` `Option<&str>` kind, `$8` `Option<i64>` only
/// the tasks that run after this one.
macro_rules! task_filter {
    () => {
        "($1::text IS NULL OR t.state = $1)
  AND ($2::text IS NULL OR t.id IN (SELECT task_id FROM workhost.tags WHERE tag = $2))
  AND ($3::text IS NULL OR t.unique_name = $3)
  AND ($4::bigint[] IS NULL OR t.id = ANY($4))
  AND ($5::text IS NULL OR t.handler = $5)
  AND ($6::text IS NULL OR t.id::text ILIKE $6 OR t.handler ILIKE $6 OR t.task ILIKE $6 OR t.unique_name ILIKE $6
       OR t.input ILIKE $6 OR t.error ILIKE $6
       OR EXISTS (SELECT 1 FROM workhost.tags g WHERE g.task_id = t.id AND g.tag ILIKE $6))
  AND ($7::text IS NULL OR t.kind = $7)
  AND ($8::bigint IS NULL OR t.id IN (SELECT child FROM workhost.deps WHERE parent = $8))"
    };
}

/// A task row `t`'s claim order (see `work::claim_key`), written as
/// `tasks_claim_order` indexes it.
macro_rules! claim_key {
    () => {
        "(t.next_run_at + t.priority * 300000 - CASE WHEN t.expedited THEN 31536000000 ELSE 0 END)"
    };
}

/// The states of unfinished work.
macro_rules! unfinished {
    () => {
        "('enqueued', 'running', 'blocked')"
    };
}

/// The columns that end a run: `lease` and its companions cleared.
macro_rules! no_lease {
    () => {
        "lease = NULL, lease_host = NULL, lease_incarnation = NULL, deadline_at = NULL"
    };
}

// ---------------------------------------------------------------------------
// Identity and migrations.

/// Serializes migrations: the first statement of the transaction that
/// opens a store. Two hosts starting at once on an empty database create
/// the schema once; the second then finds it current.
pub const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended('workhost.migrate', 0))";

/// What the database holds, before anything is read or written: `has_schema`
/// (`bool`: a schema named `workhost` exists), `has_meta` (`bool`:
/// `workhost.meta` exists), `other_tables` (`i64`: tables and views outside
/// the system schemas, `workhost` and extensions' own), `first_other`
/// (`text`, NULL if none: one of them, `schema.name`, to name in the
/// refusal). An empty database becomes a store; a database with other
/// tables and no store is another program's and is refused, naming one.
pub const IDENTITY: &str = "\
SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'workhost') AS has_schema,
       to_regclass('workhost.meta') IS NOT NULL AS has_meta,
       count(*) AS other_tables,
       min(format('%I.%I', n.nspname, c.relname)) AS first_other
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'workhost')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')";

/// The store's identity, once [`IDENTITY`] found `workhost.meta`:
/// `application` (`text`, NULL if missing: must be [`APPLICATION`]) and
/// `schema_version` (`text`, NULL if missing). A `workhost` schema without
/// the mark is refused as foreign; a version above [`SCHEMA_VERSION`] is
/// refused naming both versions.
pub const READ_IDENTITY: &str = "\
SELECT (SELECT value FROM workhost.meta WHERE key = 'application') AS application,
       (SELECT value FROM workhost.meta WHERE key = 'schema_version') AS schema_version";

/// Records the schema version after the migrations ran. `$1` `text`: the
/// version.
pub const SET_SCHEMA_VERSION: &str = "\
INSERT INTO workhost.meta (key, value) VALUES ('schema_version', $1)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value";

// ---------------------------------------------------------------------------
// Enqueue.

/// Serializes enqueues of one unique name across hosts, until the
/// transaction ends; taken before [`UNIQUE_LATEST`], so the policy code
/// reads what the previous holder committed. Blocking, never the try
/// variant (which, skipping on contention, would lose the enqueue when the
/// holder rolls back). A hash collision only serializes two names. `$1`
/// `text`: the unique name.
pub const UNIQUE_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended('workhost.unique:' || $1::text, 0))";

/// The latest task with a unique name: `id`, `state`. `$1` `text`: the
/// name.
pub const UNIQUE_LATEST: &str = "\
SELECT id, state FROM workhost.tasks WHERE unique_name = $1 ORDER BY id DESC LIMIT 1";

/// The unfinished tasks with a unique name, oldest first: `id`. `$1`
/// `text`: the name.
pub const UNIQUE_UNFINISHED: &str = concat!(
    "SELECT id FROM workhost.tasks WHERE unique_name = $1 AND state IN ",
    unfinished!(),
    " ORDER BY id"
);

/// Inserts tasks, one per array element, in the arrays' order; returns
/// each one's `id` (ids are taken in that order: sorted, they match it).
/// `$1` handler, `$2` task, `$3` input (typed JSON), `$4` max_attempts,
/// `$5` frequency_ms, `$6` flex_ms, `$7` backoff, `$8` backoff_delay_ms,
/// `$9` timeout_ms, `$10` fuel, `$11` max_memory, `$12` kind, `$13` state
/// (`enqueued`, or `blocked` when it runs after other work), `$14`
/// unique_name, `$15` next_run_at, `$16` initial_delay_ms, `$17`
/// period_start, `$18` created_at, `$19` req_network, `$20..$23`
/// req_charging, req_battery, req_idle, req_storage (`bool[]`), `$24`
/// priority, `$25` cron, `$26` expedited (`bool[]`), `$27` finished_at and
/// `$28` error: set for a request dropped as out of its expedited quota
/// (state `cancelled`); `$29` pin. Text columns are `text[]`, numbers
/// `bigint[]`, NULL where a column is unset.
pub const INSERT_TASK: &str = "\
INSERT INTO workhost.tasks (handler, task, input, max_attempts, frequency_ms, flex_ms, backoff, backoff_delay_ms,
    timeout_ms, fuel, max_memory, kind, state, unique_name, next_run_at, initial_delay_ms, period_start, created_at,
    req_network, req_charging, req_battery, req_idle, req_storage, priority, cron, expedited, finished_at, error, pin)
SELECT handler, task, input, max_attempts, frequency_ms, flex_ms, backoff, backoff_delay_ms, timeout_ms, fuel,
    max_memory, kind, state, unique_name, next_run_at, initial_delay_ms, period_start, created_at, req_network,
    req_charging, req_battery, req_idle, req_storage, priority, cron, expedited, finished_at, error, pin
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::text[],
    $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::text[], $13::text[], $14::text[], $15::bigint[],
    $16::bigint[], $17::bigint[], $18::bigint[], $19::bigint[], $20::bool[], $21::bool[], $22::bool[], $23::bool[],
    $24::bigint[], $25::text[], $26::bool[], $27::bigint[], $28::text[], $29::text[])
    WITH ORDINALITY AS r(handler, task, input, max_attempts, frequency_ms, flex_ms, backoff, backoff_delay_ms,
        timeout_ms, fuel, max_memory, kind, state, unique_name, next_run_at, initial_delay_ms, period_start,
        created_at, req_network, req_charging, req_battery, req_idle, req_storage, priority, cron, expedited,
        finished_at, error, pin, n)
ORDER BY n
RETURNING id";

/// Tags tasks: `$1` `bigint[]` tasks, `$2` `text[]` tags (pairs).
pub const INSERT_TAGS: &str = "\
INSERT INTO workhost.tags (tag, task_id) SELECT DISTINCT t, id FROM unnest($1::bigint[], $2::text[]) AS u(id, t)
ON CONFLICT DO NOTHING";

/// Locks the tasks new work runs after, in id order, and reads them:
/// `id`, `state`. `FOR SHARE` conflicts with a parent's finish (an
/// UPDATE), so whichever of the two commits second sees the other: the
/// child is never left BLOCKED behind a parent that already finished. A
/// parent missing from the result does not exist (or was just pruned).
/// `$1` `bigint[]`: the parents.
pub const LOCK_PARENTS: &str = "\
SELECT id, state FROM workhost.tasks WHERE id = ANY($1::bigint[]) ORDER BY id FOR SHARE";

/// Records that `$2` (`i64`) runs after each of `$1` (`bigint[]`).
pub const INSERT_DEPS: &str = "\
INSERT INTO workhost.deps (parent, child) SELECT DISTINCT unnest($1::bigint[]), $2::bigint ON CONFLICT DO NOTHING";

/// The UPDATE policy: changes an unfinished task's spec in place (not its
/// identity, kind, state or schedule). `$1` `i64` task, then [`INSERT_TASK`]'s
/// `$1..$11` as `$2..$12`, its `$19..$23` as `$13..$17`, its `$24..$25`
/// as `$18..$19`, and its `$29` as `$20`.
pub const UPDATE_SPEC: &str = "\
UPDATE workhost.tasks SET (handler, task, input, max_attempts, frequency_ms, flex_ms, backoff, backoff_delay_ms,
    timeout_ms, fuel, max_memory, req_network, req_charging, req_battery, req_idle, req_storage, priority, cron, pin)
    = ($2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
WHERE id = $1";

/// The UPDATE policy on cron work whose schedule changed: a task waiting
/// for its next fire (not a retry) waits for the new schedule's. `$1`
/// `i64` task, `$2` `i64` the new first fire, `$3` `text` the new schedule
/// (stored form).
pub const RESCHEDULE_CRON: &str = "\
UPDATE workhost.tasks SET next_run_at = $2, period_start = $2
WHERE id = $1 AND state = 'enqueued' AND attempts = 0 AND cron IS NOT NULL AND cron <> $3";

/// Removes a task's tags (before the UPDATE policy writes the new ones).
/// `$1` `i64`: the task.
pub const DELETE_TAGS: &str = "DELETE FROM workhost.tags WHERE task_id = $1";

/// Tells every host, at commit, what changed (see [`CHANNEL`]). `$1`
/// `text`: the JSON payload. One per transaction: NOTIFY serializes
/// commits, and identical payloads in one transaction are sent once.
pub const NOTIFY: &str = concat!("SELECT pg_notify('", channel!(), "', $1)");

// ---------------------------------------------------------------------------
// Claim.

/// Claims due work for a host, fairly, in one statement: each handler's
/// oldest due ENQUEUED tasks whose constraints hold (`$1..$5`, see
/// `device_filter!`), at most its free slots, taken round by round
/// (every handler's first before any handler's second; oldest due first
/// within a round) up to `$10` in all. Rows another claimer holds are
/// skipped, not waited for (`FOR UPDATE SKIP LOCKED`). Nothing of a paused
/// handler; nothing at all while the store is paused or the host's lease has expired (its row is held `FOR
/// KEY SHARE`, so a claim and the reaper of that host serialize). The
/// same statement counts the attempt, takes the next lease from
/// `lease_seq`, records host, incarnation and deadline, and opens the
/// attempt row.
///
/// `$6` `text` host id, `$7` `text` incarnation, `$8` `text[]` handlers,
/// `$9` `bigint[]` their free slots (same order), `$10` `i64` limit, `$11`
/// `i64` now (ms), `$12` `bigint[]` each handler's longest run budget (ms),
/// `$13` `i64` grace (ms) added to the budget for the deadline, `$14`
/// `i64` the largest claim key a due task can have (now plus nine priority
/// steps), which ends the walk of `tasks_claim_order`.
///
/// Returns the claimed tasks, `task_columns!` then `round` (`i64`), in
/// claim order.
pub const CLAIM: &str = concat!(
    "WITH live AS MATERIALIZED (
    SELECT 1 FROM workhost.hosts
    WHERE id = $6 AND incarnation = $7 AND expires_at > now()
    FOR KEY SHARE
),
want AS MATERIALIZED (
    SELECT w.handler, least(w.slots, $10::bigint) AS slots, w.budget_ms
    FROM unnest($8::text[], $9::bigint[], $12::bigint[]) AS w(handler, slots, budget_ms)
    WHERE w.slots > 0
      AND EXISTS (SELECT 1 FROM live)
      AND NOT EXISTS (SELECT 1 FROM workhost.meta WHERE key = 'paused' AND value = '1')
      AND NOT EXISTS (SELECT 1 FROM workhost.paused_handlers p WHERE p.handler = w.handler)
),
candidates AS (
    SELECT c.id, c.key, w.budget_ms,
           row_number() OVER (PARTITION BY w.handler ORDER BY c.key, c.id) AS round
    FROM want w CROSS JOIN LATERAL (
        SELECT t.id, ",
    claim_key!(),
    " AS key FROM workhost.tasks t
        WHERE t.state = 'enqueued' AND t.handler = w.handler AND ",
    claim_key!(),
    " <= $14::bigint AND t.next_run_at <= $11 AND ",
    device_filter!(),
    "
        ORDER BY ",
    claim_key!(),
    ", t.id
        LIMIT w.slots
        FOR UPDATE SKIP LOCKED
    ) c
),
picked AS (
    SELECT id, round, key, budget_ms FROM candidates ORDER BY round, key, id LIMIT $10
),
claimed AS (
    UPDATE workhost.tasks t
    SET state = 'running', attempts = t.attempts + 1, progress = NULL,
        lease = nextval('workhost.lease_seq'), lease_host = $6, lease_incarnation = $7,
        deadline_at = now() + (coalesce(t.timeout_ms, p.budget_ms) + $13::bigint) * interval '1 millisecond'
    FROM picked p
    WHERE t.id = p.id AND t.state = 'enqueued'
    RETURNING t.*, p.round, p.key
),
opened AS (
    INSERT INTO workhost.attempts (task_id, lease, run_attempt, host, started_at)
    SELECT id, lease, attempts, $6, $11 FROM claimed
)
SELECT ",
    task_columns!(),
    ", t.round
FROM claimed t
ORDER BY t.round, t.key, t.id"
);

/// The earliest due time of ENQUEUED work of some handlers whose
/// constraints hold (`$1..$5`): one index probe per handler, none for a
/// paused handler (whose work the claim leaves). `$6` `text[]`: the
/// handlers. Returns `due` (`Option<i64>`).
pub const NEXT_DUE: &str = concat!(
    "SELECT min(d.next_run_at) AS due
FROM unnest($6::text[]) AS h(handler) CROSS JOIN LATERAL (
    SELECT t.next_run_at FROM workhost.tasks t
    WHERE t.state = 'enqueued' AND t.handler = h.handler AND ",
    device_filter!(),
    "
    ORDER BY t.next_run_at LIMIT 1
) d
WHERE NOT EXISTS (SELECT 1 FROM workhost.paused_handlers p WHERE p.handler = h.handler)"
);

/// Due ENQUEUED work whose handler is none of `$1` (`text[]`) and is not
/// paused, per handler, at `$2` (`i64` now): `handler`, `due` (`i64`), `first` (`i64`,
/// the oldest). Walks the distinct handlers with one index probe each
/// (a skip scan), never the backlog.
pub const WAITING_FOR_HANDLER: &str = "\
WITH RECURSIVE h(name) AS (
    (SELECT handler FROM workhost.tasks WHERE state = 'enqueued' ORDER BY handler LIMIT 1)
    UNION ALL
    SELECT (SELECT t.handler FROM workhost.tasks t WHERE t.state = 'enqueued' AND t.handler > h.name
            ORDER BY t.handler LIMIT 1)
    FROM h WHERE h.name IS NOT NULL
)
SELECT h.name AS handler, c.due, c.first
FROM h CROSS JOIN LATERAL (
    SELECT count(*) AS due, min(t.id) AS first FROM workhost.tasks t
    WHERE t.state = 'enqueued' AND t.handler = h.name AND t.next_run_at <= $2
) c
WHERE h.name IS NOT NULL AND h.name <> ALL($1::text[]) AND c.due > 0
  AND NOT EXISTS (SELECT 1 FROM workhost.paused_handlers p WHERE p.handler = h.name)
ORDER BY h.name";

// ---------------------------------------------------------------------------
// Finish, progress: fenced by the lease.

/// Records the ends of runs, many in one statement (a host's batch of
/// finishes, or one): each run's transition is applied only if that run
/// is still its task's current one (RUNNING with its lease). Otherwise the
/// task is untouched: it was cancelled, or rescued (and perhaps claimed
/// again) after the run's host lost its lease. Each run's attempt row
/// records its outcome either way; a refused write of a run whose task was
/// not cancelled also sets its `fenced_at`. At most one run per task (the
/// caller's rule): the updates join on the task.
///
/// One array per column, one element per run, in task-id order (so two
/// hosts' batches lock rows in one order): `$1` task ids, `$2` leases,
/// `$3` now (`bigint[]`). The attempt: `$4` outcome, `$5` stop_reason,
/// `$6` error (`text[]`), `$7` fuel, `$8` peak_memory (`bigint[]`), `$9`
/// log (`text[]`, JSON). The transition: `$10` state (`text[]`), `$11`
/// next_run_at, `$12` period_start, `$13` attempts (`bigint[]`), `$14`
/// output (kept when NULL), `$15` stop_reason, `$16` error (`text[]`),
/// `$17` finished_at (`bigint[]`). The component that ran: `$18` digest,
/// `$19` contract (`text[]`).
///
/// Returns one row per run, by task id: `id`, `applied` (`bool`: the
/// transition was applied; then the caller releases or fails
/// dependents), `periodic` (`bool`: applied to periodic work, whose old
/// attempts the caller trims), `fenced` (`bool`: refused, and not because
/// the task was cancelled).
pub const FINISH: &str = concat!(
    "WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                         $7::bigint[], $8::bigint[], $9::text[], $10::text[], $11::bigint[], $12::bigint[],
                         $13::bigint[], $14::text[], $15::text[], $16::text[], $17::bigint[], $18::text[],
                         $19::text[])
    AS i(id, lease, now, outcome, run_stop_reason, run_error, fuel, peak_memory, log, state, next_run_at,
         period_start, attempts, output, stop_reason, error, finished_at, component, contract)
),
done AS (
    UPDATE workhost.tasks t
    SET state = i.state, next_run_at = i.next_run_at, period_start = i.period_start, attempts = i.attempts,
        output = coalesce(i.output, t.output), stop_reason = i.stop_reason, error = i.error,
        finished_at = i.finished_at, ",
    no_lease!(),
    "
    FROM input i
    -- `= ANY`: an index lookup per run, whatever the planner estimates of
    -- the input (a join alone was planned as a scan of every running row).
    WHERE t.id = ANY($1::bigint[]) AND t.id = i.id AND t.state = 'running' AND t.lease = i.lease
    RETURNING t.id, t.kind
),
now_state AS (
    -- The latest states of the tasks not updated, not the snapshot's:
    -- waits for a cancel in flight.
    SELECT t.id, t.state FROM workhost.tasks t
    WHERE t.id = ANY($1::bigint[]) AND t.id NOT IN (SELECT id FROM done)
    ORDER BY t.id FOR SHARE
),
fenced AS (
    SELECT i.id, d.id IS NULL AND coalesce(n.state, '') <> 'cancelled' AS fenced
    FROM input i LEFT JOIN done d ON d.id = i.id LEFT JOIN now_state n ON n.id = i.id
),
recorded AS (
    -- Each run's own row, unless a rescue already closed it; a refused
    -- write is marked either way.
    UPDATE workhost.attempts a
    SET ended_at = CASE WHEN a.ended_at IS NULL THEN i.now ELSE a.ended_at END,
        outcome = CASE WHEN a.ended_at IS NULL THEN i.outcome ELSE a.outcome END,
        stop_reason = CASE WHEN a.ended_at IS NULL THEN i.run_stop_reason ELSE a.stop_reason END,
        error = CASE WHEN a.ended_at IS NULL THEN i.run_error ELSE a.error END,
        fuel = CASE WHEN a.ended_at IS NULL THEN i.fuel ELSE a.fuel END,
        peak_memory = CASE WHEN a.ended_at IS NULL THEN i.peak_memory ELSE a.peak_memory END,
        log = CASE WHEN a.ended_at IS NULL THEN i.log ELSE a.log END,
        component = CASE WHEN a.ended_at IS NULL THEN i.component ELSE a.component END,
        contract = CASE WHEN a.ended_at IS NULL THEN i.contract ELSE a.contract END,
        fenced_at = CASE WHEN f.fenced THEN coalesce(a.fenced_at, i.now) ELSE a.fenced_at END
    FROM input i JOIN fenced f ON f.id = i.id
    WHERE a.task_id = ANY($1::bigint[]) AND a.lease = ANY($2::bigint[]) AND a.task_id = i.id AND a.lease = i.lease
)
SELECT i.id, d.id IS NOT NULL AS applied, coalesce(d.kind = 'periodic', false) AS periodic, f.fenced
FROM input i LEFT JOIN done d ON d.id = i.id JOIN fenced f ON f.id = i.id
ORDER BY i.id"
);

/// Plans the rest of the transaction with index lookups and nested loops
/// only ([`FINISH`] runs under it: its per-run lookups must not become
/// scans of a table whose statistics are stale).
pub const INDEX_LOOKUPS_ONLY: &str = "SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off";

/// Which of the tasks `$1` (`bigint[]`) have dependents: `parent`. Read
/// after [`FINISH`], in a statement of its own: a dependent committed
/// while the finish waited on its parent's row is seen.
pub const WITH_DEPENDENTS: &str = "\
SELECT DISTINCT parent FROM workhost.deps WHERE parent = ANY($1::bigint[])";

/// A periodic task keeps its latest `$2` (`i64`, PERIODIC_ATTEMPTS_KEPT)
/// runs: deletes older attempt rows of task `$1` (`i64`), if periodic.
pub const TRIM_PERIODIC_ATTEMPTS: &str = "\
DELETE FROM workhost.attempts a
WHERE a.task_id = $1
  AND EXISTS (SELECT 1 FROM workhost.tasks WHERE id = $1 AND kind = 'periodic')
  AND a.lease < (SELECT lease FROM workhost.attempts WHERE task_id = $1 ORDER BY lease DESC
                 OFFSET ($2::bigint - 1) LIMIT 1)";

/// Stores a running task's latest progress, only from its current run:
/// `$1` `i64` task, `$2` `i64` lease, `$3` `text` progress (typed JSON).
/// 0 rows: the run was cancelled or lost its lease (see
/// [`MARK_FENCED`]).
pub const SET_PROGRESS: &str = "\
UPDATE workhost.tasks SET progress = $3 WHERE id = $1 AND state = 'running' AND lease = $2";

/// Records on run `$2` (`i64` lease) of task `$1` (`i64`) that a write of
/// it was refused at `$3` (`i64`), unless the task was cancelled (a
/// cancelled run's late writes are expected, not fenced). Returns one row
/// per marked run.
pub const MARK_FENCED: &str = "\
UPDATE workhost.attempts a SET fenced_at = coalesce(a.fenced_at, $3)
WHERE a.task_id = $1 AND a.lease = $2
  AND NOT EXISTS (SELECT 1 FROM workhost.tasks t WHERE t.id = $1 AND t.state = 'cancelled')
RETURNING a.lease";

// ---------------------------------------------------------------------------
// Chains: release, fail, cancel.

/// Locks a waiting task before its parents are read ([`PARENT_STATES`]),
/// so two parents finishing at once on two hosts release it exactly once:
/// the second waits for the first to commit and then sees both parents
/// done. `$1` `i64`: the task. Returns `state`, `input`,
/// `initial_delay_ms`.
pub const LOCK_TASK: &str = "\
SELECT state, input, initial_delay_ms FROM workhost.tasks WHERE id = $1 FOR UPDATE";

/// A task's parents: `id`, `state`, `output`, by id. `$1` `i64`: the task.
pub const PARENT_STATES: &str = "\
SELECT t.id, t.state, t.output FROM workhost.deps d JOIN workhost.tasks t ON t.id = d.parent
WHERE d.child = $1 ORDER BY t.id";

/// The BLOCKED dependents of a task that just succeeded: `child`, by id.
/// `$1` `i64`: the task.
pub const BLOCKED_CHILDREN: &str = "\
SELECT d.child FROM workhost.deps d JOIN workhost.tasks t ON t.id = d.child
WHERE d.parent = $1 AND t.state = 'blocked' ORDER BY d.child";

/// Releases a BLOCKED task whose parents all succeeded: `$1` `i64` task,
/// `$2` `text` its input with the parents' outputs merged, `$3` `i64`
/// next_run_at.
pub const RELEASE: &str = "\
UPDATE workhost.tasks SET state = 'enqueued', input = $2, next_run_at = $3 WHERE id = $1 AND state = 'blocked'";

/// Sets a task's state (and error, when given), ending any run it has:
/// `$1` `i64` task, `$2` `text` state, `$3` `Option<&str>` error, `$4`
/// `Option<i64>` finished_at.
pub const SET_STATE: &str = concat!(
    "UPDATE workhost.tasks SET state = $2, error = coalesce($3, error), finished_at = $4, ",
    no_lease!(),
    " WHERE id = $1"
);

/// Fails or cancels every unfinished dependent of tasks `$1` (`bigint[]`),
/// transitively, through unfinished tasks only: `$2` `text` the state
/// (`failed` or `cancelled`), `$3` `i64` now. A failed dependent's error
/// names the parent it was reached through (the nearest, then the lowest
/// id), and so does a cancelled one's: the text of `store::plan::cause`,
/// which a retry of that parent reads. Locks them in id order (no deadlock
/// with another propagation).
/// Returns `id`, `state` of each task changed, by id.
pub const PROPAGATE: &str = concat!(
    "WITH RECURSIVE down(id, parent, depth) AS (
    SELECT d.child, d.parent, 1 FROM workhost.deps d WHERE d.parent = ANY($1::bigint[])
    UNION
    SELECT d.child, d.parent, down.depth + 1
    FROM down JOIN workhost.deps d ON d.parent = down.id
    JOIN workhost.tasks t ON t.id = down.id AND t.state IN ",
    unfinished!(),
    "
),
nearest AS (
    SELECT DISTINCT ON (id) id, parent FROM down ORDER BY id, depth, parent
),
locked AS (
    SELECT t.id, n.parent FROM workhost.tasks t JOIN nearest n ON n.id = t.id
    WHERE t.state IN ",
    unfinished!(),
    "
    ORDER BY t.id
    FOR UPDATE OF t
)
UPDATE workhost.tasks t
SET state = $2,
    error = CASE WHEN $2 = 'failed' THEN format('task %s that this task runs after failed', l.parent)
                 ELSE format('task %s that this task runs after was cancelled', l.parent) END,
    finished_at = $3, ",
    no_lease!(),
    "
FROM locked l WHERE t.id = l.id
RETURNING t.id, t.state"
);

/// Unfinished tasks by id: `id`. `$1` `i64`.
pub const SELECT_BY_ID: &str = concat!(
    "SELECT id FROM workhost.tasks WHERE id = $1 AND state IN ",
    unfinished!()
);

/// Unfinished tasks with a unique name: `id`. `$1` `text`.
pub const SELECT_BY_UNIQUE_NAME: &str = concat!(
    "SELECT id FROM workhost.tasks WHERE unique_name = $1 AND state IN ",
    unfinished!(),
    " ORDER BY id"
);

/// Unfinished tasks with a tag: `id`. `$1` `text`.
pub const SELECT_BY_TAG: &str = concat!(
    "SELECT t.id FROM workhost.tasks t JOIN workhost.tags g ON g.task_id = t.id WHERE g.tag = $1 AND t.state IN ",
    unfinished!(),
    " ORDER BY t.id"
);

/// Every unfinished task: `id`.
pub const SELECT_ALL: &str = concat!(
    "SELECT id FROM workhost.tasks WHERE state IN ",
    unfinished!(),
    " ORDER BY id"
);

/// Cancels unfinished tasks `$1` (`bigint[]`) at `$2` (`i64`), running
/// ones included (their run's later finish is then refused by its lease).
/// Locks them in id order. Returns `id` and `host` (`Option<String>`: the
/// host that was running it, to notify) of each task cancelled; then
/// [`PROPAGATE`] cancels their dependents.
pub const CANCEL: &str = concat!(
    "WITH target AS (
    SELECT id, lease_host FROM workhost.tasks
    WHERE id = ANY($1::bigint[]) AND state IN ",
    unfinished!(),
    "
    ORDER BY id FOR UPDATE
)
UPDATE workhost.tasks t SET state = 'cancelled', finished_at = $2, ",
    no_lease!(),
    "
FROM target WHERE t.id = target.id
RETURNING t.id, target.lease_host AS host"
);

/// Records why cancelled tasks were cancelled: `$1` `bigint[]` the tasks,
/// `$2` `text` the reason (their error).
pub const CANCEL_REASON: &str =
    "UPDATE workhost.tasks SET error = $2 WHERE id = ANY($1::bigint[]) AND state = 'cancelled'";

/// Makes ENQUEUED task `$1` (`i64`) due at `$2` (`i64`): the test driver's
/// "delay met". 0 rows: it is not enqueued.
pub const MAKE_DUE: &str = "\
UPDATE workhost.tasks SET next_run_at = $2, period_start = CASE WHEN cron IS NULL THEN period_start ELSE $2 END
WHERE id = $1 AND state = 'enqueued'";

// ---------------------------------------------------------------------------
// Reads. A read of several statements (a task, then its attempts) runs in
// one REPEATABLE READ READ ONLY transaction, so it sees one commit.

/// One task: `task_columns!`. `$1` `i64`.
pub const GET_TASK: &str = concat!("SELECT ", task_columns!(), " FROM workhost.tasks t WHERE t.id = $1");

/// A task's runs, oldest first: `run_attempt`, `started_at`, `ended_at`,
/// `outcome`, `stop_reason`, `error`, `fuel`, `peak_memory`, `log`, `lease`,
/// `host`, `fenced_at`, `component`, `contract`. `$1` `i64`.
pub const GET_ATTEMPTS: &str = "\
SELECT run_attempt, started_at, ended_at, outcome, stop_reason, error, fuel, peak_memory, log, lease, host, fenced_at,
    component, contract
FROM workhost.attempts WHERE task_id = $1 ORDER BY lease";

/// Tasks matching a filter, oldest first: `task_columns!`. `$1..$8` the
/// filter (`task_filter!`), `$9` `Option<i64>` only ids above, `$10`
/// `Option<i64>` only ids below, `$11` `Option<i64>` at most this many.
pub const QUERY: &str = concat!(
    "SELECT ",
    task_columns!(),
    "
FROM workhost.tasks t
WHERE ",
    task_filter!(),
    "
  AND ($9::bigint IS NULL OR t.id > $9)
  AND ($10::bigint IS NULL OR t.id < $10)
ORDER BY t.id
LIMIT $11::bigint"
);

/// [`QUERY`], newest first: a page with a limit walks the primary key (or
/// `tasks_state`, `tasks_handler`) backwards, never sorting the table.
pub const QUERY_NEWEST: &str = concat!(
    "SELECT ",
    task_columns!(),
    "
FROM workhost.tasks t
WHERE ",
    task_filter!(),
    "
  AND ($9::bigint IS NULL OR t.id > $9)
  AND ($10::bigint IS NULL OR t.id < $10)
ORDER BY t.id DESC
LIMIT $11::bigint"
);

/// The ids of the tasks a filter matches (`$1..$8`, `task_filter!`) whose
/// state is one of `$9` (`text[]`), by id: what a bulk cancel or retry
/// acts on.
pub const MATCHING: &str = concat!(
    "SELECT t.id FROM workhost.tasks t WHERE ",
    task_filter!(),
    "
  AND t.state = ANY($9::text[])
ORDER BY t.id"
);

/// What a retry reads of tasks `$1` (`bigint[]`): `id`, `state`, `parents`
/// (`bigint[]`) with `parent_states` (`text[]`, same order), and the
/// FAILED or CANCELLED dependents `children` (`bigint[]`) with
/// `child_states` (`text[]`) and `child_errors` (`text[]`, NULL elements):
/// the caller keeps those whose error names the task as their cause.
pub const RETRY_NODES: &str = "\
SELECT t.id, t.state,
    ARRAY(SELECT p.id FROM workhost.deps d JOIN workhost.tasks p ON p.id = d.parent
          WHERE d.child = t.id ORDER BY p.id) AS parents,
    ARRAY(SELECT p.state FROM workhost.deps d JOIN workhost.tasks p ON p.id = d.parent
          WHERE d.child = t.id ORDER BY p.id) AS parent_states,
    ARRAY(SELECT c.id FROM workhost.deps d JOIN workhost.tasks c ON c.id = d.child
          WHERE d.parent = t.id AND c.state IN ('failed', 'cancelled') ORDER BY c.id) AS children,
    ARRAY(SELECT c.state FROM workhost.deps d JOIN workhost.tasks c ON c.id = d.child
          WHERE d.parent = t.id AND c.state IN ('failed', 'cancelled') ORDER BY c.id) AS child_states,
    ARRAY(SELECT c.error FROM workhost.deps d JOIN workhost.tasks c ON c.id = d.child
          WHERE d.parent = t.id AND c.state IN ('failed', 'cancelled') ORDER BY c.id) AS child_errors
FROM workhost.tasks t WHERE t.id = ANY($1::bigint[])";

/// Enqueues FAILED or CANCELLED tasks again (a retry's plan): `$1`
/// `bigint[]` the tasks, `$2` `text[]` each one's new state (`enqueued`
/// or `blocked`), `$3` `bigint[]` next_run_at, `$4` `bigint[]`
/// period_start. The attempt count goes back to 0; finish time, error and
/// stop reason are cleared; the attempts are kept. Locks the rows in id
/// order. Returns `id`, `state` of each task changed.
pub const RETRY: &str = "\
WITH target AS (
    SELECT t.id FROM workhost.tasks t
    WHERE t.id = ANY($1::bigint[]) AND t.state IN ('failed', 'cancelled')
    ORDER BY t.id FOR UPDATE
)
UPDATE workhost.tasks t
SET state = u.state, attempts = 0, next_run_at = u.next_run_at, period_start = u.period_start,
    finished_at = NULL, error = NULL, stop_reason = NULL
FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[]) AS u(id, state, next_run_at, period_start)
WHERE t.id = u.id AND t.id IN (SELECT id FROM target)
RETURNING t.id, t.state";

/// Makes the ENQUEUED tasks a filter matches (`$1..$8`, `task_filter!`)
/// that are due after `$9` (`i64` now) due at `$9`; a cron task keeps its
/// period start, the fire the run stands for. Returns `id`.
pub const RUN_NOW: &str = concat!(
    "UPDATE workhost.tasks t SET next_run_at = $9 WHERE ",
    task_filter!(),
    "
  AND t.state = 'enqueued' AND t.next_run_at > $9::bigint
RETURNING t.id"
);

/// Deletes the finished tasks a filter matches (`$1..$8`,
/// `task_filter!`), with their tags, attempts and dependencies, keeping
/// (as [`PRUNE`]) a finished task that unfinished work runs after, and
/// skipping rows another transaction holds. Returns `id` of each task
/// deleted.
pub const DELETE_TASKS: &str = concat!(
    "WITH doomed AS (
    SELECT t.id FROM workhost.tasks t
    WHERE ",
    task_filter!(),
    "
      AND t.state IN ('succeeded', 'failed', 'cancelled')
      AND NOT EXISTS (SELECT 1 FROM workhost.deps d JOIN workhost.tasks c ON c.id = d.child
                      WHERE d.parent = t.id AND c.state IN ",
    unfinished!(),
    ")
    ORDER BY t.id
    FOR UPDATE OF t SKIP LOCKED
),
tags AS (DELETE FROM workhost.tags WHERE task_id IN (SELECT id FROM doomed)),
attempts AS (DELETE FROM workhost.attempts WHERE task_id IN (SELECT id FROM doomed)),
deps AS (DELETE FROM workhost.deps WHERE parent IN (SELECT id FROM doomed) OR child IN (SELECT id FROM doomed))
DELETE FROM workhost.tasks WHERE id IN (SELECT id FROM doomed) RETURNING id"
);

/// Pauses a handler: `$1` `text`.
pub const PAUSE_HANDLER: &str =
    "INSERT INTO workhost.paused_handlers (handler) VALUES ($1) ON CONFLICT (handler) DO NOTHING";

/// Resumes a handler: `$1` `text`.
pub const RESUME_HANDLER: &str = "DELETE FROM workhost.paused_handlers WHERE handler = $1";

/// The paused handlers: `handler`, sorted.
pub const PAUSED_HANDLERS: &str = "SELECT handler FROM workhost.paused_handlers ORDER BY handler";

/// How many tasks each handler has in each state: `handler`, `state`,
/// `count` (`i64`). A scan: for dashboards and the CLI.
pub const COUNT_BY_HANDLER: &str =
    "SELECT handler, state, count(*) AS count FROM workhost.tasks GROUP BY handler, state";

/// The distinct pins of unfinished work: `pin`. Reads the partial index
/// `tasks_pin` (pinned tasks only).
pub const PINS_IN_USE: &str = concat!(
    "SELECT DISTINCT pin FROM workhost.tasks WHERE pin IS NOT NULL AND state IN ",
    unfinished!(),
    " ORDER BY pin"
);

/// The highest task id so far (0 when empty): `id`. Ids come from a
/// sequence and are not handed out in commit order, so this is no cursor
/// of what committed since.
pub const LAST_ID: &str = "SELECT coalesce(max(id), 0) AS id FROM workhost.tasks";

/// How many tasks are in each state: `state`, `count` (`i64`). A full
/// scan: for the CLI, not for metrics.
pub const COUNT_BY_STATE: &str = "SELECT state, count(*) AS count FROM workhost.tasks GROUP BY state";

/// The earliest time a kept task finished: `finished_at` (`Option<i64>`).
pub const OLDEST_FINISHED: &str = "SELECT min(finished_at) AS finished_at FROM workhost.tasks";

// ---------------------------------------------------------------------------
// Settings: pause, the clock follower.

/// A shared setting: `value` (no row: unset). `$1` `text` key.
pub const GET_SETTING: &str = "SELECT value FROM workhost.meta WHERE key = $1";

/// Sets a shared setting: `$1` `text` key, `$2` `text` value. Pausing is
/// `paused` = `1`; the claim reads it in its own statement, so it holds on
/// every host from the commit on.
pub const SET_SETTING: &str = "\
INSERT INTO workhost.meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value";

/// Serializes the wall-clock follower across hosts, so due times move once
/// per jump: taken before reading `clock_boot` and `clock_reading`.
pub const CLOCK_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended('workhost.clock', 0))";

/// The tasks a clock jump moves, reported to observers: `id`, `state`.
pub const CLOCK_WAITING: &str = "\
SELECT id, state FROM workhost.tasks WHERE state IN ('enqueued', 'blocked') AND cron IS NULL ORDER BY id";

/// Moves every unfinished task's due time (and a periodic one's period
/// start) by `$1` (`i64` ms); not cron work, whose fire times are
/// wall-clock times (fires a jump skipped are missed fires).
pub const CLOCK_MOVE: &str = concat!(
    "UPDATE workhost.tasks SET next_run_at = next_run_at + $1,
    period_start = CASE WHEN frequency_ms IS NULL THEN period_start ELSE period_start + $1 END
WHERE cron IS NULL AND state IN ",
    unfinished!()
);

// ---------------------------------------------------------------------------
// Schedules: expedited quota and rates.

/// Serializes what counts against a handler's expedited quota or rate
/// across hosts, until the transaction ends. `$1` `text`: `quota:` or
/// `rate:` and the handler.
pub const LIMIT_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended('workhost.limit:' || $1::text, 0))";

/// How many expedited requests of a handler were accepted since a time:
/// `n` (`i64`). `$1` `text` handler, `$2` `i64` since (exclusive).
pub const EXPEDITED_SINCE: &str =
    "SELECT count(*) AS n FROM workhost.tasks WHERE handler = $1 AND expedited AND created_at > $2";

/// Forgets a handler's run starts older than its window. `$1` `text`
/// handler, `$2` `i64` the window's start (inclusive).
pub const FORGET_STARTS: &str = "DELETE FROM workhost.starts WHERE handler = $1 AND at <= $2";

/// How many runs of a handler started since a time: `n` (`i64`). `$1`
/// `text` handler, `$2` `i64` since (exclusive).
pub const COUNT_STARTS: &str = "SELECT count(*) AS n FROM workhost.starts WHERE handler = $1 AND at > $2";

/// Records `$2` (`i64`) starts of handler `$1` (`text`) at `$3` (`i64`).
pub const RECORD_STARTS: &str =
    "INSERT INTO workhost.starts (handler, at) SELECT $1, $3 FROM generate_series(1, $2::bigint)";

/// The start that fills a handler's window when it is the `$2`-th (`i64`,
/// from 0) most recent: `at` (`i64`). `$1` `text` handler.
pub const NTH_START: &str = "SELECT at FROM workhost.starts WHERE handler = $1 ORDER BY at DESC LIMIT 1 OFFSET $2";

/// The database's clock, in ms since the epoch (`i64`): what a host anchors
/// its due times to, so hosts agree on "due".
#[allow(dead_code)] // Prepared by tests/all/postgres.rs; hosts keep their own clocks for due times.
pub const DB_NOW: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now";

// ---------------------------------------------------------------------------
// Hosts: leases and rescue.

/// Registers a host: `$1` `text` id, `$2` `text` incarnation (new on every
/// start), `$3` `i64` lease time (ms), `$4` `bool` take over a live row of
/// this id (the caller holds the data directory's `serve.lock`, so the
/// previous process on it is dead). Returns `expires_at` (`i64` ms) when
/// registered; no row when another live process serves as this id.
pub const REGISTER_HOST: &str = "\
INSERT INTO workhost.hosts AS h (id, incarnation, expires_at)
VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond')
ON CONFLICT (id) DO UPDATE
SET incarnation = EXCLUDED.incarnation, started_at = now(), renewed_at = now(), expires_at = EXCLUDED.expires_at
WHERE h.expires_at <= now() OR $4::bool
RETURNING (extract(epoch FROM h.expires_at) * 1000)::bigint AS expires_at";

/// Renews a host's lease by `$3` (`i64` ms), only while it has not
/// expired: `$1` `text` id, `$2` `text` incarnation. Returns `expires_at`
/// (`i64` ms); no row: the lease is lost (it expired, or a rescuer deleted
/// it), and stays lost: the host stops its runs and registers anew. A
/// renewal and a reaper of the same row serialize on it.
pub const RENEW_HOST: &str = "\
UPDATE workhost.hosts SET renewed_at = now(), expires_at = now() + $3::bigint * interval '1 millisecond'
WHERE id = $1 AND incarnation = $2 AND expires_at > now()
RETURNING (extract(epoch FROM expires_at) * 1000)::bigint AS expires_at";

/// A host's running set as the store sees it: `id`, `lease`. Read with
/// every renewal; a local run missing here was cancelled or rescued
/// elsewhere and is stopped (a cancel whose notification was lost).
/// `$1` `text` id, `$2` `text` incarnation.
pub const RUNNING_OF_HOST: &str = "\
SELECT id, lease FROM workhost.tasks WHERE state = 'running' AND lease_host = $1 AND lease_incarnation = $2
ORDER BY id";

/// Ends a host's lease at a clean shutdown (after its runs were ended):
/// `$1` `text` id, `$2` `text` incarnation.
pub const DEREGISTER_HOST: &str = "DELETE FROM workhost.hosts WHERE id = $1 AND incarnation = $2";

/// Every host, for `workhost hosts`: `id`, `incarnation`, `started_at`,
/// `renewed_at`, `expires_at` (`i64` ms), `live` (`bool`: its lease has
/// not expired), `running` (`i64`).
pub const LIST_HOSTS: &str = "\
SELECT h.id, h.incarnation,
       (extract(epoch FROM h.started_at) * 1000)::bigint AS started_at,
       (extract(epoch FROM h.renewed_at) * 1000)::bigint AS renewed_at,
       (extract(epoch FROM h.expires_at) * 1000)::bigint AS expires_at,
       h.expires_at > now() AS live,
       (SELECT count(*) FROM workhost.tasks t
        WHERE t.state = 'running' AND t.lease_host = h.id AND t.lease_incarnation = h.incarnation) AS running
FROM workhost.hosts h ORDER BY h.id";

/// Rescue, step 1 (any host, periodically; the first statement of its
/// transaction): deletes the rows of hosts whose lease expired, then locks
/// and returns the runs nobody holds a lease for any more, up to `$3`
/// (`i64`): RUNNING tasks of a host just deleted, of a host or incarnation
/// with no row (deleted earlier), of this host's earlier incarnations (`$1`
/// `text` id, `$2` `text` current incarnation: a restart rescues its own
/// runs at once), or past their deadline. A host whose row another
/// transaction holds (renewing it) is not deleted if the renewal commits,
/// and its runs are not returned: a run is judged dead only through the
/// row this statement deleted or found missing, never through a stale read
/// of an expiry. Rows another rescuer holds are skipped.
///
/// Returns `task_columns!` (with the dead run's `lease`): the caller
/// decides each run's end with the retry policy (a stop with
/// `host-shutdown`: the attempt counted) and applies it with [`FINISH`] and
/// that lease, in the same transaction.
pub const RESCUE: &str = concat!(
    "WITH dead AS (
    DELETE FROM workhost.hosts WHERE expires_at <= now() RETURNING id, incarnation
),
orphans AS (
    SELECT t.id FROM workhost.tasks t
    WHERE t.state = 'running'
      AND ((t.lease_host, t.lease_incarnation) IN (SELECT id, incarnation FROM dead)
           OR NOT EXISTS (SELECT 1 FROM workhost.hosts h WHERE h.id = t.lease_host AND h.incarnation = t.lease_incarnation)
           OR (t.lease_host = $1 AND t.lease_incarnation <> $2)
           OR t.deadline_at < now())
    ORDER BY t.id
    LIMIT $3
    FOR UPDATE OF t SKIP LOCKED
)
SELECT ",
    task_columns!(),
    "
FROM workhost.tasks t JOIN orphans o ON o.id = t.id
ORDER BY t.id"
);

// ---------------------------------------------------------------------------
// Prune.

/// Deletes up to `$2` (`i64`) tasks that finished before `$1` (`i64`),
/// with their tags, attempts and dependencies, keeping a finished task
/// that unfinished work runs after (the child keeps its parents' outputs).
/// Rows another transaction holds are skipped (a new dependent locking
/// its parent, for one). Returns `id` of each task deleted; run it until
/// it deletes fewer than `$2`.
pub const PRUNE: &str = concat!(
    "WITH doomed AS (
    SELECT t.id FROM workhost.tasks t
    WHERE t.finished_at < $1
      AND NOT EXISTS (SELECT 1 FROM workhost.deps d JOIN workhost.tasks c ON c.id = d.child
                      WHERE d.parent = t.id AND c.state IN ",
    unfinished!(),
    ")
    ORDER BY t.id LIMIT $2
    FOR UPDATE OF t SKIP LOCKED
),
tags AS (DELETE FROM workhost.tags WHERE task_id IN (SELECT id FROM doomed)),
attempts AS (DELETE FROM workhost.attempts WHERE task_id IN (SELECT id FROM doomed)),
deps AS (DELETE FROM workhost.deps WHERE parent IN (SELECT id FROM doomed) OR child IN (SELECT id FROM doomed))
DELETE FROM workhost.tasks WHERE id IN (SELECT id FROM doomed) RETURNING id"
);

// ---------------------------------------------------------------------------
// kv.

/// A value: `value` (`Vec<u8>`). `$1` `text` namespace, `$2` `text` key.
pub const KV_GET: &str = "SELECT value FROM workhost.kv WHERE namespace = $1 AND key = $2";

/// A value, locked for an increment: `value`. `$1` namespace, `$2` key.
pub const KV_GET_FOR_UPDATE: &str = "SELECT value FROM workhost.kv WHERE namespace = $1 AND key = $2 FOR UPDATE";

/// The fence of a run's kv write, first in its transaction: one row while
/// task `$1` (`i64`) is RUNNING with lease `$2` (`i64`), held `FOR SHARE`
/// so a rescue or cancel of it waits for the write to commit; no row: the
/// write is refused (and [`MARK_FENCED`]).
pub const KV_FENCE: &str = "\
SELECT 1 AS held FROM workhost.tasks WHERE id = $1 AND state = 'running' AND lease = $2 FOR SHARE";

/// Writes the value of a key that exists: `$1` namespace, `$2` key, `$3`
/// `&[u8]` value. No row changed: the key is new.
pub const KV_UPDATE: &str = "UPDATE workhost.kv SET value = $3 WHERE namespace = $1 AND key = $2";

/// Adds a new key: `$1` namespace, `$2` key, `$3` `&[u8]` value. No row
/// added: another transaction added it first (this one waited for it to
/// commit). Followed, when a row was added, by [`KV_KEY_ADDED`].
pub const KV_INSERT: &str = "\
INSERT INTO workhost.kv (namespace, key, value) VALUES ($1, $2, $3)
ON CONFLICT (namespace, key) DO NOTHING";

/// Counts a new key into its namespace if the namespace has room: `$1`
/// namespace, `$2` `i64` the limit. No row: the namespace is full (the
/// transaction is rolled back). The namespace's row is locked until
/// commit, so new keys of one namespace are counted one at a time, across
/// hosts, and the limit holds exactly.
pub const KV_KEY_ADDED: &str = "\
INSERT INTO workhost.kv_namespaces AS n (namespace, keys)
SELECT $1, 1 WHERE $2::bigint >= 1
ON CONFLICT (namespace) DO UPDATE SET keys = n.keys + 1 WHERE n.keys < $2::bigint";

/// Counts a deleted key out of its namespace: `$1` namespace. After a
/// [`KV_DELETE`] that removed a row. Never below zero: a count an older
/// host left short (see docs/scale-out.md, "Upgrading") must not make
/// every later delete fail.
pub const KV_KEY_REMOVED: &str = "UPDATE workhost.kv_namespaces SET keys = greatest(keys - 1, 0) WHERE namespace = $1";

/// Deletes a key: `$1` namespace, `$2` key.
pub const KV_DELETE: &str = "DELETE FROM workhost.kv WHERE namespace = $1 AND key = $2";

// ---------------------------------------------------------------------------

/// Every statement above, by name: what the tests prepare against a
/// migrated database (parse, name resolution and parameter types).
#[allow(dead_code)] // Read by tests/all/postgres.rs, which includes this file.
pub const ALL: &[(&str, &str)] = &[
    ("MIGRATION_LOCK", MIGRATION_LOCK),
    ("IDENTITY", IDENTITY),
    ("READ_IDENTITY", READ_IDENTITY),
    ("SET_SCHEMA_VERSION", SET_SCHEMA_VERSION),
    ("UNIQUE_LOCK", UNIQUE_LOCK),
    ("UNIQUE_LATEST", UNIQUE_LATEST),
    ("UNIQUE_UNFINISHED", UNIQUE_UNFINISHED),
    ("INSERT_TASK", INSERT_TASK),
    ("INSERT_TAGS", INSERT_TAGS),
    ("LOCK_PARENTS", LOCK_PARENTS),
    ("INSERT_DEPS", INSERT_DEPS),
    ("UPDATE_SPEC", UPDATE_SPEC),
    ("DELETE_TAGS", DELETE_TAGS),
    ("RESCHEDULE_CRON", RESCHEDULE_CRON),
    ("NOTIFY", NOTIFY),
    ("CLAIM", CLAIM),
    ("NEXT_DUE", NEXT_DUE),
    ("WAITING_FOR_HANDLER", WAITING_FOR_HANDLER),
    ("FINISH", FINISH),
    ("WITH_DEPENDENTS", WITH_DEPENDENTS),
    ("TRIM_PERIODIC_ATTEMPTS", TRIM_PERIODIC_ATTEMPTS),
    ("SET_PROGRESS", SET_PROGRESS),
    ("MARK_FENCED", MARK_FENCED),
    ("LOCK_TASK", LOCK_TASK),
    ("PARENT_STATES", PARENT_STATES),
    ("BLOCKED_CHILDREN", BLOCKED_CHILDREN),
    ("RELEASE", RELEASE),
    ("SET_STATE", SET_STATE),
    ("PROPAGATE", PROPAGATE),
    ("SELECT_BY_ID", SELECT_BY_ID),
    ("SELECT_BY_UNIQUE_NAME", SELECT_BY_UNIQUE_NAME),
    ("SELECT_BY_TAG", SELECT_BY_TAG),
    ("SELECT_ALL", SELECT_ALL),
    ("CANCEL", CANCEL),
    ("MAKE_DUE", MAKE_DUE),
    ("CANCEL_REASON", CANCEL_REASON),
    ("LIMIT_LOCK", LIMIT_LOCK),
    ("EXPEDITED_SINCE", EXPEDITED_SINCE),
    ("FORGET_STARTS", FORGET_STARTS),
    ("COUNT_STARTS", COUNT_STARTS),
    ("RECORD_STARTS", RECORD_STARTS),
    ("NTH_START", NTH_START),
    ("GET_TASK", GET_TASK),
    ("GET_ATTEMPTS", GET_ATTEMPTS),
    ("QUERY", QUERY),
    ("QUERY_NEWEST", QUERY_NEWEST),
    ("MATCHING", MATCHING),
    ("RETRY_NODES", RETRY_NODES),
    ("RETRY", RETRY),
    ("RUN_NOW", RUN_NOW),
    ("DELETE_TASKS", DELETE_TASKS),
    ("PAUSE_HANDLER", PAUSE_HANDLER),
    ("RESUME_HANDLER", RESUME_HANDLER),
    ("PAUSED_HANDLERS", PAUSED_HANDLERS),
    ("COUNT_BY_HANDLER", COUNT_BY_HANDLER),
    ("PINS_IN_USE", PINS_IN_USE),
    ("LAST_ID", LAST_ID),
    ("COUNT_BY_STATE", COUNT_BY_STATE),
    ("OLDEST_FINISHED", OLDEST_FINISHED),
    ("GET_SETTING", GET_SETTING),
    ("SET_SETTING", SET_SETTING),
    ("CLOCK_LOCK", CLOCK_LOCK),
    ("CLOCK_WAITING", CLOCK_WAITING),
    ("CLOCK_MOVE", CLOCK_MOVE),
    ("DB_NOW", DB_NOW),
    ("REGISTER_HOST", REGISTER_HOST),
    ("RENEW_HOST", RENEW_HOST),
    ("RUNNING_OF_HOST", RUNNING_OF_HOST),
    ("DEREGISTER_HOST", DEREGISTER_HOST),
    ("LIST_HOSTS", LIST_HOSTS),
    ("RESCUE", RESCUE),
    ("PRUNE", PRUNE),
    ("KV_GET", KV_GET),
    ("KV_GET_FOR_UPDATE", KV_GET_FOR_UPDATE),
    ("KV_FENCE", KV_FENCE),
    ("KV_UPDATE", KV_UPDATE),
    ("KV_INSERT", KV_INSERT),
    ("KV_KEY_ADDED", KV_KEY_ADDED),
    ("KV_KEY_REMOVED", KV_KEY_REMOVED),
    ("KV_DELETE", KV_DELETE),
];
