//! The engine's error type.

use std::time::Duration;

use crate::task::TaskStatus;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when talking to the engine.
///
/// Variants are named by cause. Handlers do not return this type; they return
/// [`TaskError`](crate::TaskError), whose variants decide what happens to the attempt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input was refused by validation (name, size, key form, reserved event name…).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// What was invalid (`task name`, `input`, `idempotency key`, …).
        field: &'static str,
        /// Why, in words meant for the caller.
        reason: String,
    },
    /// No task with that key is visible to this caller.
    ///
    /// A task owned by another user answers exactly like a task that does not exist.
    #[error("task not found")]
    NotFound,
    /// No handler is registered under that task name.
    #[error("unknown task name `{0}`")]
    UnknownTask(String),
    /// A task name was registered twice.
    #[error("task name `{0}` is already registered")]
    DuplicateTask(String),
    /// The requested transition is not allowed from the task's current state.
    #[error("cannot {action} a task that is {from}")]
    InvalidTransition {
        /// The state the task was in.
        from: TaskStatus,
        /// What was asked (`stop`, `resume`, `cancel`, `redrive`).
        action: &'static str,
    },
    /// A resume cursor (`after_seq`) points past the task's last event.
    #[error("event cursor {after_seq} is beyond the last event {last_seq}")]
    CursorOutOfRange {
        /// The cursor the caller gave.
        after_seq: u64,
        /// The last committed event of the task.
        last_seq: u64,
    },
    /// Admission refused the submission (rate limit or pending bound); try again later.
    #[error("{reason}, retry after {} ms", retry_after.as_millis())]
    Rejected {
        /// Which limit refused it.
        reason: &'static str,
        /// When trying again may succeed.
        retry_after: Duration,
    },
    /// The engine is shutting down and accepts no new work.
    #[error("task engine is shutting down")]
    ShuttingDown,
    /// The runner no longer owns the task (lease lost, cancelled, or stopped); the write was refused.
    #[error("task is no longer owned by this runner")]
    Fenced,
    /// Another process holds the store's lock file.
    #[error("store is locked by another process ({path})")]
    Locked {
        /// The lock file.
        path: String,
    },
    /// The store failed or could not be reached.
    #[error("task store unavailable")]
    StoreUnavailable(#[source] std::sync::Arc<sqlx::Error>),
    /// Applying the store's migrations failed.
    #[error("task store migration failed")]
    Migration(#[source] std::sync::Arc<sqlx::migrate::MigrateError>),
    /// A stored JSON value or input could not be (de)serialized.
    #[error("json encoding failed")]
    Json(#[from] serde_json::Error),
    /// A file needed by the store could not be opened.
    #[error("task store file error")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// Seconds-resolution hint for a `Retry-After` header, when the error has one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Rejected { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::StoreUnavailable(std::sync::Arc::new(e))
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self::Migration(std::sync::Arc::new(e))
    }
}
