//! Storage: the `Store` trait the engine writes through, and its backends.
//!
//! The store *is* the write-ahead log. The engine sends every change as a [`WriteOp`] to
//! one writer task, which hands all queued ops to [`Store::write_batch`]; a backend applies
//! a batch in one transaction (group commit). Only after the commit are callers answered
//! and events published, so nothing a subscriber saw can be taken back by a crash.
//!
//! Every op that a runner issues is *fenced*: it names the node and attempt that claimed
//! the task, and a backend applies it only while the task is still `running` under that
//! claim. A refused fenced op is a value ([`OpResult::Fenced`]), not an error.
//!
//! The trait is public so that backends can live outside this crate, but it is not meant
//! for application code: use [`TaskFlow`](crate::TaskFlow).

use std::collections::HashMap;
use std::fmt::Debug;

use async_trait::async_trait;
use serde_json::Value;

use crate::error::Result;
use crate::event::{EventKind, NewEvent, TaskEvent};
use crate::task::{IdempotencyMode, TaskInfo, TaskStatus};

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
mod effects;
mod postgres;
mod sqlite;
pub(crate) mod writer;

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

/// A durable backend for the engine. See the module docs for the contract.
#[async_trait]
pub trait Store: Send + Sync + Debug + 'static {
    /// Which database this is.
    fn backend(&self) -> Backend;

    /// `true` when this process is the only writer (SQLite's lock file): live events are
    /// then complete and subscribers need no store polling, and every `running` row at
    /// start-up was left by a dead process.
    fn is_exclusive(&self) -> bool;

    /// Applies `ops` in one transaction and returns one outcome per op, in order.
    ///
    /// # Errors
    ///
    /// A store failure fails the whole batch; nothing of it is committed.
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

    /// Wake-up hints from other processes sharing the store (`None` for an exclusive
    /// store). Hints can be lost; the engine also polls.
    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<Notice>> {
        None
    }

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

/// The claim a runner holds: fenced writes must match all three.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The task.
    pub task_id: String,
    /// The node that claimed it.
    pub node: String,
    /// The attempt it claimed.
    pub attempt: u32,
}

/// One change for [`Store::write_batch`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum WriteOp {
    /// Insert a task (or find the one it duplicates).
    Submit(SubmitParams),
    /// Claim pending tasks for a node.
    Claim(ClaimParams),
    /// Append events for a running task (fenced).
    Emit {
        /// The runner's claim.
        fence: Fence,
        /// The events, in order.
        events: Vec<NewEvent>,
    },
    /// Commit a step checkpoint with the events emitted inside it (fenced).
    Step {
        /// The runner's claim.
        fence: Fence,
        /// Step name, unique per task.
        name: String,
        /// The step's JSON result.
        result: Value,
        /// Events emitted inside the step.
        events: Vec<NewEvent>,
    },
    /// End an attempt (fenced).
    Finish {
        /// The runner's claim.
        fence: Fence,
        /// What the attempt came to.
        outcome: Finish,
        /// Now, ms since the epoch.
        now: i64,
    },
    /// A client's request on a task that is not (only) the runner's business.
    Control {
        /// The task.
        task_id: String,
        /// What to do.
        action: Control,
        /// Now, ms since the epoch.
        now: i64,
    },
    /// Extend the leases of every task `node` runs; returns those still held.
    LeaseRenew {
        /// The node.
        node: String,
        /// New expiry, ms since the epoch.
        until: i64,
    },
    /// Recover running tasks whose lease expired (or, with `all`, every running task).
    Reap {
        /// Now, ms since the epoch.
        now: i64,
        /// Running tasks created before this are failed instead of recovered.
        max_age_cutoff: i64,
        /// Recover every running row regardless of lease (exclusive store at start-up).
        all: bool,
    },
    /// Delete old terminal and suspended tasks with their events and steps.
    Purge {
        /// Terminal tasks last updated before this go.
        terminal_before: i64,
        /// Suspended tasks last updated before this go.
        suspended_before: i64,
    },
}

/// A new task.
#[derive(Debug, Clone)]
pub struct SubmitParams {
    /// New id (UUIDv7).
    pub id: String,
    /// Task name.
    pub name: String,
    /// Idempotency key.
    pub key: String,
    /// Owner.
    pub user_id: Option<String>,
    /// Input JSON.
    pub input: Value,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Recover to pending (true) or suspended (false) after a node dies.
    pub auto_recover: bool,
    /// Duplicate handling.
    pub mode: IdempotencyMode,
    /// Now, ms since the epoch.
    pub now: i64,
    /// Claim the new task at once for this node (`created` + `started` in one commit).
    pub claim: Option<ClaimNow>,
}

/// Immediate claim of a submitted task.
#[derive(Debug, Clone)]
pub struct ClaimNow {
    /// The claiming node.
    pub node: String,
    /// Lease expiry, ms since the epoch.
    pub lease_until: i64,
}

/// Parameters of a claim.
#[derive(Debug, Clone)]
pub struct ClaimParams {
    /// The claiming node.
    pub node: String,
    /// Now; only tasks with `run_at <= now` are claimed.
    pub now: i64,
    /// Lease expiry for claimed tasks.
    pub lease_until: i64,
    /// Only tasks with these names (the ones this node has handlers for).
    pub names: Vec<String>,
    /// Slot budget; candidates it does not admit stay pending.
    pub budget: ClaimBudget,
}

/// Free execution slots, consulted per candidate while claiming.
#[derive(Debug, Clone, Default)]
pub struct ClaimBudget {
    /// Free global slots.
    pub global: usize,
    /// Slots per user.
    pub per_user: usize,
    /// Running count per user (absent = 0).
    pub user_running: HashMap<String, usize>,
    /// Per-name limits.
    pub name_limits: HashMap<String, usize>,
    /// Running count per limited name.
    pub name_running: HashMap<String, usize>,
}

impl ClaimBudget {
    /// Takes a slot for a task of `user` and `name` if one is free.
    pub fn admit(&mut self, user: Option<&str>, name: &str) -> bool {
        if self.global == 0 {
            return false;
        }
        if let Some(user) = user
            && self.user_running.get(user).copied().unwrap_or(0) >= self.per_user
        {
            return false;
        }
        if let Some(&limit) = self.name_limits.get(name) {
            if self.name_running.get(name).copied().unwrap_or(0) >= limit {
                return false;
            }
            *self.name_running.entry(name.to_owned()).or_default() += 1;
        }
        if let Some(user) = user {
            *self.user_running.entry(user.to_owned()).or_default() += 1;
        }
        self.global -= 1;
        true
    }

    /// How many candidates to look at: enough to skip past users at their limit.
    pub fn window(&self) -> usize {
        self.global.saturating_mul(4).clamp(16, 1024)
    }
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Finish {
    /// Success: `completed` with the result.
    Complete {
        /// The handler's output.
        result: Value,
    },
    /// Failure with another attempt scheduled: `pending` at `run_at`, event `retrying`.
    Retry {
        /// `{"message", "kind"}`.
        error: Value,
        /// When the next attempt may start.
        run_at: i64,
    },
    /// Failure with no attempt left: `failed` (dead-lettered).
    Fail {
        /// `{"message", "kind"}`.
        error: Value,
    },
    /// Stopped: `suspended`.
    Suspend {
        /// Why (`stopped`).
        reason: String,
    },
    /// Shutdown: back to `pending` without spending the attempt, lease released.
    Release,
}

/// A client's request on a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// pending → suspended. A running task is answered with its state untouched, for the
    /// engine to stop through its owner.
    Stop,
    /// Ask the owner of a running task to stop it (seen at its next lease renewal).
    RequestStop,
    /// suspended → pending.
    Resume,
    /// pending | running | suspended → cancelled. A running owner is fenced out.
    Cancel,
    /// failed → pending with a fresh set of attempts.
    Redrive,
}

/// The outcome of one op: what it returned, and the events it committed.
#[derive(Debug, Clone)]
pub struct OpOutcome {
    /// What the op returned.
    pub result: OpResult,
    /// Events committed by the op, to publish after the batch commits.
    pub events: Vec<TaskEvent>,
}

/// What an op returned.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum OpResult {
    /// `Submit`: the task, and whether it was created (else it is the duplicate's).
    Submitted {
        /// The task as stored after the op.
        task: Box<TaskInfo>,
        /// `true` if this op inserted it.
        created: bool,
        /// `true` if it was inserted already claimed by the submitting node.
        claimed: bool,
    },
    /// `Claim`: the claimed tasks.
    Claimed {
        /// Tasks now running on the claiming node.
        tasks: Vec<ClaimedTask>,
        /// More pending tasks may be ready (the window was full or candidates were skipped
        /// for lack of slots).
        more: bool,
    },
    /// `Emit`, `Step`, `Finish`: applied.
    Applied,
    /// A fenced op was refused: the runner no longer owns the task.
    Fenced,
    /// `Control`: the state before and after.
    Controlled {
        /// State before.
        from: TaskStatus,
        /// State after (equal to `from` when nothing changed).
        to: TaskStatus,
    },
    /// `Control` on an unknown id.
    NotFound,
    /// `LeaseRenew`: tasks still held, with a pending stop request flag.
    Renewed(Vec<RenewedLease>),
    /// `Reap`, `Purge`: rows affected.
    Count(u64),
}

/// A task handed to a runner by a claim.
#[derive(Debug, Clone)]
pub struct ClaimedTask {
    /// The task as claimed (status `running`, `attempt` already incremented).
    pub task: TaskInfo,
    /// The previous run of this task ended abnormally (crash, lease loss, shutdown).
    pub recovery: bool,
    /// Per-attempt timeout and recovery policy are the registry's business.
    pub auto_recover: bool,
}

/// A lease that is still held after renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewedLease {
    /// The task.
    pub task_id: String,
    /// Its attempt.
    pub attempt: u32,
    /// A stop was requested from another node.
    pub stop_requested: bool,
}

/// Payload of the `started` event.
pub(crate) fn started_event(attempt: u32) -> NewEvent {
    NewEvent::engine(
        EventKind::Started,
        serde_json::json!({ "attempt": attempt }),
    )
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
