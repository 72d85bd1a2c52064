//! The errors of the task model: [`WorkError`] (work could not be
//! enqueued, cancelled or found) and [`StoreError`] (the store failed),
//! whatever the store's backend.

use std::path::PathBuf;

use super::{TaskId, TaskState};

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
    Backend(String),
    /// The database of a shared store could not be reached, or refused
    /// this host (a wrong password, an unknown database, too many
    /// connections). Nothing was changed.
    #[error("cannot use the task store database {database}: {detail}. Nothing was changed")]
    Unavailable {
        /// The database, without its password.
        database: String,
        /// What the connection or the server said.
        detail: String,
    },
    /// The database holds another program's tables, a `workhost` schema
    /// without workhost's mark, or a store of a newer schema version.
    /// Nothing was changed.
    #[error(
        "the database {database} is not a workhost store ({detail}); give workhost a database of its own. Nothing was changed"
    )]
    ForeignDatabase {
        /// The database, without its password.
        database: String,
        /// What was found.
        detail: String,
    },
    /// This host's lease on a shared store ran out before it renewed it:
    /// another host may already be running its work again. Its runs are
    /// stopped (`lease-lost`); it registers again before claiming.
    #[error(
        "this host's lease on the task store ran out before it could renew it ({0}); its runs are stopped and retried, and it joins again"
    )]
    LeaseLost(String),
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

/// Why work could not be enqueued, cancelled or found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkError {
    /// Bad input data.
    #[error("input data refused: {0}")]
    Data(crate::data::DataError),
    /// A request that makes no sense; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// No handler of that name.
    #[error("no handler named {0:?}; the manifest's [handlers] table lists the handlers")]
    UnknownHandler(String),
    /// No task with that id.
    #[error("no task with id {0}")]
    UnknownTask(TaskId),
    /// The task exists, but its state does not allow the action (a
    /// SUCCEEDED task cannot be retried, a RUNNING one cannot be deleted).
    #[error(
        "task {id} is {}; only {} tasks can be {}",
        state.as_str().to_uppercase(),
        action.allowed(),
        action.done()
    )]
    WrongState {
        /// The task.
        id: TaskId,
        /// Its state.
        state: TaskState,
        /// What was asked of it.
        action: TaskAction,
    },
    /// The action cannot apply now because of other work: a task whose
    /// prerequisite stays FAILED or CANCELLED cannot be retried alone, a
    /// finished task that unfinished work runs after cannot be deleted.
    /// The message says what to do instead.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an operator asks of one task, for [`WorkError::WrongState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskAction {
    /// Enqueue a FAILED or CANCELLED task again.
    Retry,
    /// Make a delayed ENQUEUED task due now.
    RunNow,
    /// Delete a finished task.
    Delete,
    /// Cancel an unfinished task.
    Cancel,
}

impl TaskAction {
    /// The states the action applies to, as a message names them.
    pub fn allowed(self) -> &'static str {
        match self {
            TaskAction::Retry => "FAILED or CANCELLED",
            TaskAction::RunNow => "ENQUEUED",
            TaskAction::Delete => "SUCCEEDED, FAILED or CANCELLED",
            TaskAction::Cancel => "ENQUEUED, BLOCKED or RUNNING",
        }
    }

    /// The action done, as a message says it ("retried").
    pub fn done(self) -> &'static str {
        match self {
            TaskAction::Retry => "retried",
            TaskAction::RunNow => "run now",
            TaskAction::Delete => "deleted",
            TaskAction::Cancel => "cancelled",
        }
    }

    /// Whether a task in `state` may have this action done to it.
    pub fn applies_to(self, state: TaskState) -> bool {
        match self {
            TaskAction::Retry => matches!(state, TaskState::Failed | TaskState::Cancelled),
            TaskAction::RunNow => state == TaskState::Enqueued,
            TaskAction::Delete => state.is_finished(),
            TaskAction::Cancel => !state.is_finished(),
        }
    }
}
