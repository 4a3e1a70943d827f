//! The write protocol between the engine and its store: ops, their parameters and their
//! outcomes. Internal: reachable from outside only through the `testing` feature, for the
//! store conformance suite.

use std::collections::HashMap;

use serde_json::Value;

use crate::event::NewEvent;
use crate::event::TaskEvent;
use crate::task::{IdempotencyMode, TaskInfo, TaskStatus};

/// The claim a runner holds: fenced writes must match all three.
///
/// `epoch` counts claims of the task and is never reused, unlike the attempt number (a
/// recovery or a shutdown release gives the attempt back), so a stale runner can never
/// pass the fence of a later claim, even on the same node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The task.
    pub task_id: String,
    /// The node that claimed it.
    pub node: String,
    /// The claim's epoch.
    pub epoch: u32,
}

/// One change for [`Storage::write_batch`](super::Storage::write_batch).
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
        /// The attempt that ended (reported in its event).
        attempt: u32,
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
    /// Delete old terminal and suspended tasks with their events and steps (at most
    /// a bounded number per op; the `Count` says how many), and old commit markers.
    Purge {
        /// Terminal tasks last updated before this go.
        terminal_before: i64,
        /// Suspended tasks last updated before this go.
        suspended_before: i64,
        /// Commit markers of batches before this go.
        batches_before: i64,
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
    /// Attempts allowed (handler failures).
    pub max_attempts: u32,
    /// Recoveries allowed (process deaths, lost leases).
    pub max_recoveries: u32,
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
    /// The claim's epoch (see [`Fence`]).
    pub epoch: u32,
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
    /// The claim's epoch.
    pub epoch: u32,
    /// A stop was requested from another node.
    pub stop_requested: bool,
}
