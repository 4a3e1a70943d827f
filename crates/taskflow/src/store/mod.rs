//! Storage: the sealed [`Store`] marker, the crate-private [`Storage`] interface the engine
//! writes through, and its one SQL implementation over two drivers.
//!
//! The store *is* the write-ahead log. The engine sends every change as a [`WriteOp`] to
//! one writer task, which hands all queued ops to [`Storage::write_batch`]; a batch is
//! applied in one transaction (group commit). Only after the commit are callers answered
//! and events published, so nothing a subscriber saw can be taken back by a crash.
//!
//! How the code is split:
//!
//! - [`batch`] is the algorithm, written once: fences, effects, claims under slot budgets,
//!   control transitions, recovery decisions, purge, and the commit marker that makes a
//!   batch exactly-once even when its COMMIT fails ambiguously.
//! - `sql` runs a statement on either backend's connection (binding [`sql::Arg`]s, mapping
//!   rows to named [`sqlx::FromRow`] structs in `rows`).
//! - `sqlite` and `postgres` are drivers: each supplies its SQL text ([`sql::Sql`]) and its
//!   connection handling (pools, the SQLite lock file and checkpointer, the Postgres
//!   listener), nothing else.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::error::Result;
use crate::event::TaskEvent;
use crate::task::TaskInfo;

pub(crate) mod batch;
mod driver;
mod effects;
mod ops;
mod postgres;
mod rows;
mod sql;
mod sql_store;
mod sqlite;

pub use ops::*;
pub use postgres::PostgresStore;
pub use sqlite::{SqliteStore, SqliteSynchronous};

/// Which database a store runs on, for the few places where behaviour differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite; one process owns the file.
    Sqlite,
    /// PostgreSQL; several processes share the database.
    Postgres,
}

mod sealed {
    /// Only this crate's stores implement [`Store`](super::Store).
    pub trait Sealed {
        /// The store as the engine uses it.
        fn into_storage(self) -> std::sync::Arc<dyn super::Storage>;
    }
}

/// Declares a public store type: a handle on the one [`Storage`] implementation over a
/// driver, sealed as a [`Store`].
macro_rules! store_type {
    ($(#[$doc:meta])* $store:ident($driver:ty)) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $store {
            inner: std::sync::Arc<$crate::store::sql_store::SqlStore<$driver>>,
        }

        impl $store {
            fn from_driver(driver: $driver) -> Self {
                let store = $crate::store::sql_store::SqlStore::new(driver);
                Self { inner: std::sync::Arc::new(store) }
            }

            fn driver(&self) -> &$driver {
                self.inner.driver()
            }
        }

        impl $crate::store::sealed::Sealed for $store {
            fn into_storage(self) -> std::sync::Arc<dyn $crate::store::Storage> {
                self.inner
            }
        }
    };
}
use store_type;

/// A durable backend the engine can start on: [`SqliteStore`] or [`PostgresStore`].
///
/// This trait is sealed: the engine's write protocol is internal, so stores cannot be
/// implemented outside this crate. Pass a store to [`TaskFlow::start`](crate::TaskFlow::start).
pub trait Store: sealed::Sealed + Send + Sync + Debug + 'static {}

impl<T: sealed::Sealed + Send + Sync + Debug + 'static> Store for T {}

/// Turns a public store into the engine's storage interface.
pub(crate) fn into_storage(store: impl Store) -> Arc<dyn Storage> {
    sealed::Sealed::into_storage(store)
}

/// What the engine needs from a store. Implemented once, by `SqlStore`, over each
/// driver.
#[async_trait]
pub trait Storage: Send + Sync + Debug + 'static {
    /// Which database this is.
    fn backend(&self) -> Backend;

    /// `true` when this process is the only writer (SQLite's lock file): live events are
    /// then complete and subscribers need no store polling, and every `running` row at
    /// start-up was left by a dead process.
    fn is_exclusive(&self) -> bool;

    /// Applies `ops` in one transaction and returns one outcome per op, in order.
    ///
    /// Exactly once: if the COMMIT fails ambiguously, the batch's commit marker is looked
    /// up and, when the batch did commit, its outcomes are returned as if nothing failed.
    ///
    /// # Errors
    ///
    /// A store failure fails the whole batch, and then nothing of it was committed.
    async fn write_batch(&self, ops: &[WriteOp]) -> Result<Vec<OpOutcome>>;

    /// The newest task with this key visible to `user` (`None` = ownerless tasks only).
    async fn task_by_key(&self, key: &str, user: Option<&str>) -> Result<Option<TaskInfo>>;

    /// A task by id, regardless of owner.
    async fn task_by_id(&self, id: &str) -> Result<Option<TaskInfo>>;

    /// Up to `limit` events of `task_id` with `seq > after_seq`, in seq order.
    async fn events_after(
        &self,
        task_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<TaskEvent>>;

    /// The step checkpoints of a task: step name → stored result.
    async fn steps(&self, task_id: &str) -> Result<HashMap<String, Value>>;

    /// Failed (dead-lettered) tasks, newest first.
    async fn tasks_failed(&self, limit: u32) -> Result<Vec<TaskInfo>>;

    /// Number of `pending` tasks.
    async fn tasks_pending_count(&self) -> Result<u64>;

    /// Which of `ids` are still `pending` (the others were claimed, controlled or purged).
    async fn tasks_still_pending(&self, ids: &[String]) -> Result<Vec<String>>;

    /// Wake-up hints from other processes sharing the store (`None` for an exclusive
    /// store). Hints can be lost; the engine also polls.
    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<Notice>>;

    /// Fault injection for tests (see [`Faults`]).
    fn faults(&self) -> &Faults;

    /// Checks that the store answers a trivial query.
    async fn health(&self) -> Result<()>;

    /// Releases connections and locks. Idempotent.
    async fn close(&self);
}

/// A hint that another process changed the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// New events were committed for this task.
    Events(String),
    /// Claimable work was created.
    Work,
    /// Hints may have been missed (the listener reconnected): re-check everything.
    Resync,
}

/// Faults a test can arm on a store to prove the batch protocol: each counter is the
/// number of upcoming batches it applies to. Disarmed (all zero) in normal use, where the
/// only cost is a few relaxed atomic loads per batch.
#[derive(Debug, Default)]
pub struct Faults {
    /// Commit the batch, then report the COMMIT as failed (an ambiguous commit: the
    /// connection dropped after the database committed).
    pub commit_then_fail: std::sync::atomic::AtomicU32,
    /// Roll the batch back and report a failure (the database never committed it).
    pub fail_before_commit: std::sync::atomic::AtomicU32,
    /// Make the statement list that opens the batch fail after its `BEGIN` (a second
    /// insert of the batch's marker), leaving the connection inside a transaction.
    pub fail_after_begin: std::sync::atomic::AtomicU32,
    /// Make the batch fail just before its `COMMIT`, after all its writes (a second insert
    /// of its marker). Where a batch ends in one statement list (SQLite: events, marker,
    /// `COMMIT`), the failing insert is in that list, so the error comes back with the
    /// transaction still open.
    pub fail_before_commit_statement: std::sync::atomic::AtomicU32,
    /// Make the check of a batch's commit marker (after an ambiguous COMMIT) fail as if
    /// the store were out of reach: this many checks, not batches.
    pub marker_unreadable: std::sync::atomic::AtomicU32,
}

impl Faults {
    /// Takes one armed fault from `counter`, if any.
    pub(crate) fn take(counter: &std::sync::atomic::AtomicU32) -> bool {
        use std::sync::atomic::Ordering;
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
