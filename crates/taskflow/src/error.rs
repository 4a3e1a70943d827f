//! The engine's error type.

use std::time::Duration;

use crate::task::TaskStatus;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when talking to the engine.
///
/// Variants are named by cause. Handlers do not return this type; they return
/// [`TaskError`](crate::TaskError), whose variants decide what happens to the attempt.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// The store could not be reached or is temporarily unable to answer (connection
    /// refused or lost, pool exhausted, database restarting, disk full, lock timeout).
    /// Trying again later may succeed.
    #[error("task store unavailable")]
    StoreUnavailable(#[source] std::sync::Arc<sqlx::Error>),
    /// A store statement failed for a reason that retrying will not fix (a bug or a schema
    /// that does not match this version).
    #[error("task store query failed")]
    Store(#[source] std::sync::Arc<sqlx::Error>),
    /// The store holds a value this version cannot read (an unknown status, a malformed
    /// JSON column, a negative counter).
    #[error("corrupt task store data: {0}")]
    Corrupt(String),
    /// The engine reached a state it considers impossible; a bug.
    #[error("internal task engine error: {0}")]
    Internal(String),
    /// A write's COMMIT failed and the store did not answer, before the deadline, whether
    /// it had committed: the write may or may not have happened.
    #[error("task store did not confirm whether the write committed")]
    OutcomeUnknown,
    /// Applying the store's migrations failed.
    #[error("task store migration failed")]
    Migration(#[source] std::sync::Arc<sqlx::migrate::MigrateError>),
    /// A stored JSON value or input could not be (de)serialized.
    #[error("json encoding failed")]
    Json(#[source] std::sync::Arc<serde_json::Error>),
    /// A file needed by the store could not be opened.
    #[error("task store file error")]
    Io(#[source] std::sync::Arc<std::io::Error>),
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

impl Error {
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        Self::Corrupt(what.into())
    }

    pub(crate) fn internal(what: impl Into<String>) -> Self {
        Self::Internal(what.into())
    }

    /// A batch that made no progress for `timeout` (the database accepted it and stopped
    /// answering): the store counts as out of reach.
    pub(crate) fn stalled(timeout: std::time::Duration) -> Self {
        let io = std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the task store did not answer a write for {timeout:?}"),
        );
        Self::StoreUnavailable(std::sync::Arc::new(sqlx::Error::Io(io)))
    }

    /// A store failure made up by a test's armed fault (see `testing::Faults`).
    pub(crate) fn injected(what: &str) -> Self {
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            format!("injected fault: {what}"),
        );
        Self::StoreUnavailable(std::sync::Arc::new(sqlx::Error::Io(io)))
    }

    /// `true` when the store is unreachable or temporarily unable to answer, so trying
    /// again later may succeed (HTTP hosts answer 503 for these).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::StoreUnavailable(_) | Self::ShuttingDown | Self::OutcomeUnknown
        )
    }
}

/// Classifies store errors by cause, the same way for both backends: unreachable or
/// transient → [`Error::StoreUnavailable`]; unreadable data → [`Error::Corrupt`];
/// anything else → [`Error::Store`].
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &e {
            E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
                Self::StoreUnavailable(std::sync::Arc::new(e))
            }
            E::Database(db) => {
                let sqlite = db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some();
                let code = db.code().unwrap_or_default();
                if transient_code(sqlite, &code) {
                    Self::StoreUnavailable(std::sync::Arc::new(e))
                } else if corrupt_code(sqlite, &code) {
                    Self::Corrupt(db.message().to_owned())
                } else {
                    Self::Store(std::sync::Arc::new(e))
                }
            }
            E::ColumnDecode { .. } | E::Decode(_) | E::ColumnNotFound(_) => {
                Self::Corrupt(e.to_string())
            }
            _ => Self::Store(std::sync::Arc::new(e)),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Self::Json(std::sync::Arc::new(e))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::Io(std::sync::Arc::new(e))
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self::Migration(std::sync::Arc::new(e))
    }
}

/// Result codes (SQLite, numeric, possibly extended) and SQLSTATE classes and codes
/// (Postgres) that mean "not now" rather than "never". A failed login (class 28) counts:
/// with rotating credentials (Lakebase) it passes once the credential is refreshed.
fn transient_code(sqlite: bool, code: &str) -> bool {
    if sqlite {
        // BUSY, LOCKED, NOMEM, IOERR, FULL, CANTOPEN, PROTOCOL (primary codes).
        return code
            .parse::<u32>()
            .is_ok_and(|n| matches!(n & 0xff, 5 | 6 | 7 | 10 | 13 | 14 | 15));
    }
    code.starts_with("08") // connection exception
        || code.starts_with("28") // invalid authorization (credential rotation, role locked)
        || code.starts_with("53") // insufficient resources
        || code.starts_with("57P") // admin / crash shutdown, cannot connect now
        || matches!(code, "40001" | "40P01" | "55P03" | "25006")
}

/// SQLite's CORRUPT and NOTADB; Postgres' data_corrupted and index_corrupted.
fn corrupt_code(sqlite: bool, code: &str) -> bool {
    if sqlite {
        return code
            .parse::<u32>()
            .is_ok_and(|n| matches!(n & 0xff, 11 | 26));
    }
    matches!(code, "XX001" | "XX002")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(e: sqlx::Error) -> Error {
        Error::from(e)
    }

    #[test]
    fn unreachable_stores_are_unavailable_and_bugs_are_not() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(classify(sqlx::Error::Io(io)).is_unavailable());
        assert!(classify(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(classify(sqlx::Error::PoolClosed).is_unavailable());
        assert!(Error::OutcomeUnknown.is_unavailable());
        let bug = classify(sqlx::Error::Protocol("unexpected message".into()));
        assert!(matches!(bug, Error::Store(_)), "{bug:?}");
        assert!(!bug.is_unavailable());
        let missing = classify(sqlx::Error::ColumnNotFound("epoch".into()));
        assert!(matches!(missing, Error::Corrupt(_)), "{missing:?}");
    }

    #[test]
    fn result_codes_are_read_by_cause() {
        // SQLite: BUSY, FULL and IOERR (with an extended code) are transient; CORRUPT is not.
        let sqlite = |c| transient_code(true, c);
        assert!(sqlite("5") && sqlite("13") && sqlite("266"));
        assert!(
            !sqlite("19"),
            "a constraint violation is a bug, not an outage"
        );
        assert!(corrupt_code(true, "11") && corrupt_code(true, "26"));
        // Postgres: connection exceptions, failed logins, shutdown, resource exhaustion,
        // serialization; numeric SQLSTATEs are not read as SQLite codes.
        for code in ["08006", "28000", "57P01", "53100", "40001", "40P01"] {
            assert!(transient_code(false, code), "{code}");
        }
        assert!(
            !transient_code(false, "23505"),
            "a unique violation is not transient"
        );
        assert!(!transient_code(false, "42P01"), "a missing table is a bug");
        assert!(corrupt_code(false, "XX001") && !corrupt_code(false, "11"));
    }
}
