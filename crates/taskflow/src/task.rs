//! Tasks: their states, the record the store keeps, and how to submit one.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a task is in its life. See the state diagram in the crate docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting in the store to be claimed (new, retrying, resumed, recovered or released).
    Pending,
    /// Claimed by a node, which holds a lease on it.
    Running,
    /// Stopped (or recovered without `auto_recover`); waits for an explicit resume.
    Suspended,
    /// Finished with a result. Terminal.
    Completed,
    /// Failed with no attempts left (dead-lettered). Terminal; can be redriven.
    Failed,
    /// Cancelled. Terminal.
    Cancelled,
}

impl TaskStatus {
    /// The lowercase name stored in the database and shown to clients.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Suspended => "suspended",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses the stored name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "suspended" => Self::Suspended,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// `true` for `completed`, `failed` and `cancelled`.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of one task as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskInfo {
    /// UUIDv7, unique per run.
    pub id: String,
    /// The registered task name.
    pub name: String,
    /// The idempotency key the task was submitted under.
    pub idempotency_key: String,
    /// The owning user, if it was submitted on behalf of one.
    pub user_id: Option<String>,
    /// The input as submitted.
    pub input: serde_json::Value,
    /// Current state.
    pub status: TaskStatus,
    /// The current (or last) attempt's number: attempts whose handler ran and failed, plus
    /// one while running. A recovery or a shutdown release gives its attempt back.
    pub attempt: u32,
    /// Attempts allowed before the task is dead-lettered (handler failures only).
    pub max_attempts: u32,
    /// Times the task was recovered after its process died or lost its lease. Counted
    /// apart from attempts: a recovery gives the attempt back.
    pub recoveries: u32,
    /// The handler's result, once completed.
    pub result: Option<serde_json::Value>,
    /// The last error (`{"message", "kind"}`), once failed or while retrying.
    pub error: Option<serde_json::Value>,
    /// Seq of the last committed event.
    pub last_seq: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Last change, milliseconds since the Unix epoch.
    pub updated_at: i64,
}

/// How duplicate submissions of the same idempotency key are treated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IdempotencyMode {
    /// A duplicate attaches while the task is pending, running or suspended; after it
    /// ended (completed, failed, cancelled) a new run starts. The default.
    #[default]
    AtLeastOnce,
    /// A duplicate always attaches to the existing task, whatever its state: the work
    /// never runs twice while the task is retained.
    AtMostOnce,
}

/// Per-submission options.
///
/// # Examples
///
/// ```
/// use taskflow::{IdempotencyMode, SubmitOptions};
/// let opts = SubmitOptions::new()
///     .user("alice")
///     .idempotency_key("report-2026-11")
///     .mode(IdempotencyMode::AtMostOnce);
/// # let _ = opts;
/// ```
#[derive(Clone, Default)]
pub struct SubmitOptions {
    pub(crate) user: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) mode: IdempotencyMode,
    pub(crate) user_context: Option<Arc<dyn Any + Send + Sync>>,
    pub(crate) max_attempts: Option<u32>,
}

impl fmt::Debug for SubmitOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubmitOptions")
            .field("user", &self.user)
            .field("key", &self.key)
            .field("mode", &self.mode)
            .field("user_context", &self.user_context.is_some())
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

impl SubmitOptions {
    /// Options with no owner, a derived key and [`IdempotencyMode::AtLeastOnce`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Submits on behalf of `user`, who then owns the task. Take it only from a verified
    /// identity, never from a request body.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Uses `key` instead of the derived key (≤ 256 printable ASCII characters).
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets how duplicates are treated.
    pub fn mode(mut self, mode: IdempotencyMode) -> Self {
        self.mode = mode;
        self
    }

    /// Attaches a live, in-process value (typically the request's user context with its
    /// token) that the handler can read with [`TaskContext::user`](crate::TaskContext::user).
    ///
    /// It is never persisted: after a crash, or on another node, the handler sees `None`.
    pub fn user_context<T: Any + Send + Sync>(mut self, value: T) -> Self {
        self.user_context = Some(Arc::new(value));
        self
    }

    /// Attempts this task gets before it is dead-lettered, counting the first (at least
    /// 1), in place of its registration's [`TaskOptions::max_attempts`]. Applies only
    /// when the submit creates the task: a duplicate attaches to the existing task as is.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n.max(1));
        self
    }
}

/// A reference to a submitted task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskHandle {
    /// The task's id.
    pub id: String,
    /// The key to use for status, subscribe, stop, resume and cancel.
    pub idempotency_key: String,
}

/// What [`TaskFlow::submit`](crate::TaskFlow::submit) did. A duplicate is not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// A new task was committed.
    Created(TaskHandle),
    /// The submission attached to an existing task, which is in the given state.
    Existing(TaskHandle, TaskStatus),
}

impl Submitted {
    /// The task, whichever way it was reached.
    pub fn handle(&self) -> &TaskHandle {
        match self {
            Self::Created(h) | Self::Existing(h, _) => h,
        }
    }
}

/// Default attempts per task, counting the first.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default per-attempt timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Per-task-name options given at registration.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use taskflow::TaskOptions;
/// let opts = TaskOptions::new()
///     .max_attempts(5)
///     .timeout(Duration::from_secs(30))
///     .auto_recover(false)
///     .on_behalf_of(true)
///     .max_concurrency(2);
/// # let _ = opts;
/// ```
#[derive(Debug, Clone)]
pub struct TaskOptions {
    pub(crate) max_attempts: u32,
    pub(crate) timeout: Duration,
    pub(crate) auto_recover: bool,
    pub(crate) max_concurrency: Option<usize>,
    pub(crate) max_recoveries: Option<u32>,
    pub(crate) on_behalf_of: bool,
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: DEFAULT_TIMEOUT,
            auto_recover: true,
            max_concurrency: None,
            max_recoveries: None,
            on_behalf_of: false,
        }
    }
}

impl TaskOptions {
    /// The defaults: 3 attempts, 300 s timeout, `auto_recover` on, no per-name limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attempts before dead-lettering, counting the first (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Time one attempt may run before it fails (retryably).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether a task whose node died goes back to `pending` (`true`, the default) or to
    /// `suspended`, awaiting an explicit resume. Choose `false` for tasks that act with a
    /// user's token, which is never persisted.
    pub fn auto_recover(mut self, on: bool) -> Self {
        self.auto_recover = on;
        self
    }

    /// Marks tasks of this name as acting on behalf of their user, with the user's token
    /// from the live user context ([`SubmitOptions::user_context`]), which is never
    /// persisted. Such a task should be registered with
    /// [`auto_recover(false)`](Self::auto_recover), so a recovered run waits suspended
    /// instead of running without the token, and be resumed with a fresh context
    /// ([`TaskFlow::resume_with`](crate::TaskFlow::resume_with)); registering it with
    /// `auto_recover` on logs a warning.
    pub fn on_behalf_of(mut self, on: bool) -> Self {
        self.on_behalf_of = on;
        self
    }

    /// At most `n` tasks of this name run at once on one node.
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = Some(n.max(1));
        self
    }

    /// Times a task of this name may be recovered after its process died or lost its
    /// lease (default: the engine's [`Config::max_recoveries`](crate::Config::max_recoveries),
    /// 20). Past it the task fails with kind `recovery_limit`.
    pub fn max_recoveries(mut self, n: u32) -> Self {
        self.max_recoveries = Some(n);
        self
    }
}
