//! The SQLite schema, its migrations, and the checks on opening a file:
//! a file that is not a workhost database is refused, never reset.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::work::StoreError;

use super::{Fail, snapshot};

/// The claim order of a task row (see [`crate::work::claim_key`]): due
/// time, plus 5 minutes per priority level, minus a year if expedited.
/// Written the same in the index and in the claim, so the claim walks the
/// index in order.
macro_rules! claim_key {
    () => {
        "(next_run_at + priority * 300000 - expedited * 31536000000)"
    };
}
pub(super) use claim_key;

/// What version 7 added, for a new store and for the migration alike.
macro_rules! schedule_schema {
    () => {
        concat!(
            "CREATE INDEX IF NOT EXISTS tasks_claim ON tasks(state, handler, ",
            claim_key!(),
            ");
CREATE INDEX IF NOT EXISTS tasks_expedited ON tasks(handler, created_at) WHERE expedited = 1;
CREATE TABLE IF NOT EXISTS starts (handler TEXT NOT NULL, at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS starts_handler ON starts(handler, at);
"
        )
    };
}

/// What version 9 added, for a new store and for the migration alike.
macro_rules! operations_schema {
    () => {
        "CREATE INDEX IF NOT EXISTS tasks_handler ON tasks(handler, id);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks(state, id);
CREATE INDEX IF NOT EXISTS tasks_pin ON tasks(pin) WHERE pin IS NOT NULL;
CREATE TABLE IF NOT EXISTS paused_handlers (handler TEXT PRIMARY KEY) WITHOUT ROWID;
"
    };
}

/// What version 10 changed: the indexes that find due work hold ENQUEUED
/// tasks only (partial indexes), so a claim or a finish no longer moves
/// entries of every state through them, and the index on (state, due time),
/// which no query needs, is gone. A claim or a finish cost the writer about
/// half as much (ARCHITECTURE.md, "Performance notes").
macro_rules! due_schema {
    () => {
        concat!(
            "DROP INDEX IF EXISTS tasks_due;
DROP INDEX IF EXISTS tasks_handler_due;
DROP INDEX IF EXISTS tasks_claim;
CREATE INDEX IF NOT EXISTS tasks_enqueued_due ON tasks(handler, next_run_at) WHERE state = 'enqueued';
CREATE INDEX IF NOT EXISTS tasks_enqueued_claim ON tasks(handler, ",
            claim_key!(),
            ") WHERE state = 'enqueued';
"
        )
    };
}

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 256;

/// `PRAGMA application_id` of a workhost database ("wkhs").
pub(super) const APPLICATION_ID: i64 = 0x776b_6873;
/// Schema version in `PRAGMA user_version`.
pub(super) const SCHEMA_VERSION: i64 = 10;

/// Migrations: `MIGRATIONS[v - 1]` takes a database from version `v` to
/// `v + 1`, inside the same transaction as the version bump.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 5 -> 6: the hosts that serve the store (`workhost hosts`).
    "CREATE TABLE IF NOT EXISTS hosts (id TEXT PRIMARY KEY, incarnation TEXT NOT NULL, started_at INTEGER NOT NULL, \
     renewed_at INTEGER NOT NULL) WITHOUT ROWID;",
    // 6 -> 7: schedules (docs/schedules.md): priorities, expedited work
    // and cron schedules; the claim order's index; the run starts a
    // handler's rate counts.
    concat!(
        "ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 5;
     ALTER TABLE tasks ADD COLUMN expedited INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE tasks ADD COLUMN cron TEXT;",
        schedule_schema!()
    ),
    // 7 -> 8: the component each attempt ran, and the version a task is
    // pinned to (docs/versions.md).
    "ALTER TABLE attempts ADD COLUMN component TEXT;
     ALTER TABLE attempts ADD COLUMN contract TEXT;
     ALTER TABLE tasks ADD COLUMN pin TEXT;",
    // 8 -> 9: operations (retry, run now, delete, handler pause): lists
    // newest first by handler or state from an index, the pins of
    // unfinished work without a scan, and the paused handlers.
    operations_schema!(),
    // 9 -> 10: the due-work indexes hold ENQUEUED tasks only.
    due_schema!(),
];

pub(super) const SCHEMA: &str = concat!(
    r#"
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
    req_storage INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 5,
    expedited INTEGER NOT NULL DEFAULT 0,
    cron TEXT,
    pin TEXT
);
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
    component TEXT,
    contract TEXT,
    PRIMARY KEY (task_id, attempt)
) WITHOUT ROWID;
CREATE TABLE kv (namespace TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (namespace, key)) WITHOUT ROWID;
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE hosts (id TEXT PRIMARY KEY, incarnation TEXT NOT NULL, started_at INTEGER NOT NULL, renewed_at INTEGER NOT NULL) WITHOUT ROWID;
"#,
    schedule_schema!(),
    operations_schema!(),
    due_schema!()
);

/// What opening a connection read of the database's header.
pub(super) struct Header {
    pub(super) app_id: i64,
    pub(super) tables: i64,
    pub(super) version: i64,
}

impl Header {
    /// A workhost store at this build's schema version.
    pub(super) fn is_current(&self) -> bool {
        self.app_id == APPLICATION_ID && self.version == SCHEMA_VERSION
    }
}

/// Opens a connection and reads the header; refuses a foreign or damaged
/// file.
pub(super) fn open_connection(path: &Path) -> Result<(Connection, Header), Fail> {
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
                return Err(foreign(e.to_string()).into());
            }
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseCorrupt) => {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                }
                .into());
            }
            Err(e) => return Err(e.into()),
            Ok(h) if h.app_id != APPLICATION_ID && (h.app_id != 0 || h.tables != 0) => {
                return Err(foreign(format!(
                    "its application id is {:#x} with {} schema objects",
                    h.app_id, h.tables
                ))
                .into());
            }
            Ok(h) => break h,
        }
    };
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // Every statement the store runs stays prepared: rusqlite keeps 16 by
    // default, fewer than a claim, a finish and an enqueue use between
    // them, and a statement pushed out is parsed and planned again.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok((conn, header))
}

/// Reads the application id, the count of schema objects and the schema
/// version from one snapshot (a mixed view of a store being created, its
/// tables without its application id, would look foreign), then switches a
/// workhost or empty file to WAL.
pub(super) fn check_header_and_enable_wal(conn: &Connection) -> rusqlite::Result<Header> {
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
pub(super) fn init_schema(conn: &Connection, path: &Path) -> Result<(), Fail> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| -> Result<(), Fail> {
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
            }
            .into());
        }
        Ok(())
    })();
    conn.execute_batch(if result.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
    result
}
