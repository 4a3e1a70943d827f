//! Task handlers: what they return, and the context they run with.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::event::{EventKind, NewEvent};
use crate::limits::{check_event_name, check_payload};
use crate::store::{Fence, OpResult, WriteOp};
use crate::writer::Writer;

/// How a handler's failure is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskErrorKind {
    /// Another attempt is scheduled (with backoff) while attempts remain; then the task
    /// fails. Spends the attempt.
    Retryable,
    /// The task fails at once, whatever attempts remain (dead-lettered, can be redriven).
    Permanent,
}

/// The error a handler returns. Any `std::error::Error` converts into a retryable one, so
/// `?` works in handlers.
///
/// The message is for operators: a host that faces browsers (appkit in production) shows
/// users a generic one instead, unless the error is marked [`public`](Self::public).
///
/// # Examples
///
/// ```
/// use taskflow::TaskError;
/// let e = TaskError::permanent("input refers to a deleted report");
/// assert!(e.is_permanent());
/// let e: TaskError = std::io::Error::other("disk hiccup").into();
/// assert!(!e.is_permanent());
/// let e = TaskError::permanent("the report has no rows").public();
/// assert!(e.is_public());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    message: String,
    kind: TaskErrorKind,
    public: bool,
}

impl TaskError {
    /// A failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: TaskErrorKind::Retryable,
            public: false,
        }
    }

    /// A failure no retry can fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: TaskErrorKind::Permanent,
            public: false,
        }
    }

    /// Marks the message as safe to show the task's user as is (it names no internals and
    /// no secrets), e.g. `TaskError::permanent("the report has no rows").public()`.
    ///
    /// Persisted with the error (`"public": true` in its JSON), so it holds after a
    /// restart.
    #[must_use]
    pub fn public(mut self) -> Self {
        self.public = true;
        self
    }

    /// `true` when the message may be shown to the task's user as is.
    pub fn is_public(&self) -> bool {
        self.public
    }

    /// `true` for [`TaskErrorKind::Permanent`].
    pub fn is_permanent(&self) -> bool {
        self.kind == TaskErrorKind::Permanent
    }

    /// The kind.
    pub fn kind(&self) -> TaskErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn to_json(&self) -> Value {
        let kind = match self.kind {
            TaskErrorKind::Retryable => "retryable",
            TaskErrorKind::Permanent => "permanent",
        };
        let mut json = serde_json::json!({"message": self.message, "kind": kind});
        if self.public {
            json["public"] = Value::Bool(true);
        }
        json
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for TaskError {
    fn from(e: E) -> Self {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Self::retryable(message)
    }
}

/// The live request context a handler may read (never persisted).
pub(crate) type UserContext = Arc<dyn Any + Send + Sync>;

pub(crate) type BoxHandler =
    Arc<dyn Fn(TaskContext, Value) -> BoxFuture<'static, Result<Value, TaskError>> + Send + Sync>;

/// Wraps a typed handler into the erased form the executor runs.
pub(crate) fn erase<In, Out, F, Fut>(handler: F) -> BoxHandler
where
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + Send + 'static,
    F: Fn(TaskContext, In) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Out, TaskError>> + Send + 'static,
{
    let handler = Arc::new(handler);
    Arc::new(move |ctx, input| {
        let handler = handler.clone();
        Box::pin(async move {
            let input: In = serde_json::from_value(input)
                .map_err(|e| TaskError::permanent(format!("invalid task input: {e}")))?;
            let out = handler(ctx, input).await?;
            serde_json::to_value(out)
                .map_err(|e| TaskError::permanent(format!("unserializable task output: {e}")))
        })
    })
}

/// What a running handler can do: emit events, checkpoint steps, watch for cancellation.
///
/// Cheap to clone; clones share the run.
#[derive(Clone)]
pub struct TaskContext {
    inner: Arc<ContextInner>,
}

pub(crate) struct ContextInner {
    pub(crate) writer: Writer,
    pub(crate) fence: Fence,
    pub(crate) attempt: u32,
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) owner: Option<String>,
    pub(crate) recovery: bool,
    pub(crate) token: CancellationToken,
    pub(crate) user: Option<UserContext>,
    pub(crate) checkpoints: HashMap<String, Value>,
    pub(crate) used_steps: Mutex<HashSet<String>>,
    pub(crate) step_events: Mutex<Option<Vec<NewEvent>>>,
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("task_id", &self.inner.fence.task_id)
            .field("name", &self.inner.name)
            .field("attempt", &self.inner.attempt)
            .finish_non_exhaustive()
    }
}

impl TaskContext {
    pub(crate) fn new(inner: ContextInner) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The task's id.
    pub fn task_id(&self) -> &str {
        &self.inner.fence.task_id
    }

    /// The task's name.
    pub fn task_name(&self) -> &str {
        &self.inner.name
    }

    /// The task's idempotency key.
    pub fn idempotency_key(&self) -> &str {
        &self.inner.key
    }

    /// The owning user's id, as persisted.
    pub fn owner(&self) -> Option<&str> {
        self.inner.owner.as_deref()
    }

    /// This attempt's number, starting at 1. Only handler failures (an error, a panic, a
    /// timeout) move it on; a run interrupted by its process dying, a lost lease or a
    /// shutdown gets the same number again (see [`is_recovery`](Self::is_recovery)).
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// `true` when the previous run of this task ended abnormally (its process died, it
    /// lost its lease, or it was released at shutdown). Completed steps are replayed from
    /// their checkpoints either way.
    pub fn is_recovery(&self) -> bool {
        self.inner.recovery
    }

    /// The live user context given at submit
    /// ([`SubmitOptions::user_context`](crate::SubmitOptions::user_context)), if this
    /// process still has it. Never persisted: `None` after a restart or on another node.
    pub fn user<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.inner.user.clone()?.downcast::<T>().ok()
    }

    /// `true` once the run was asked to stop (stop, cancel, shutdown or lost lease).
    pub fn is_cancelled(&self) -> bool {
        self.inner.token.is_cancelled()
    }

    /// Resolves when the run is asked to stop. The handler then has the stop grace period
    /// to return before its future is dropped.
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe.
    pub async fn cancelled(&self) {
        self.inner.token.cancelled().await;
    }

    /// Commits a user event named `name` and returns once it is durable and published.
    /// Inside [`step`](Self::step), the event is instead committed atomically with the
    /// step's checkpoint.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a reserved name (`ready`, `error`, `completed`, …), a name with
    /// CR or LF, or a payload over 1 MiB; [`Error::Fenced`] if this run no longer owns the
    /// task; store errors.
    ///
    /// # Cancellation safety
    ///
    /// Not cancellation safe: if dropped, the event may or may not be committed.
    pub async fn emit(&self, name: &str, payload: impl Serialize) -> Result<()> {
        check_event_name(name)?;
        let payload = serde_json::to_value(payload)?;
        check_payload("event payload", &payload)?;
        let event = NewEvent {
            kind: EventKind::Custom,
            name: name.to_owned(),
            payload,
        };
        {
            let mut buffered = lock(&self.inner.step_events);
            if let Some(events) = buffered.as_mut() {
                events.push(event);
                return Ok(());
            }
        }
        let op = WriteOp::Emit {
            fence: self.inner.fence.clone(),
            events: vec![event],
        };
        match self.inner.writer.write(op).await?.result {
            OpResult::Applied => Ok(()),
            _ => Err(Error::Fenced),
        }
    }

    /// Runs `fut` at most once per task, ever: its result is committed as a checkpoint
    /// named `name`, and any later attempt gets the stored result without running `fut`.
    /// Events emitted while `fut` runs are committed atomically with the checkpoint (and
    /// discarded if `fut` fails).
    ///
    /// # Errors
    ///
    /// `fut`'s own error; a permanent error if `name` was already used in this run or
    /// steps are nested; a retryable error if the checkpoint could not be committed.
    ///
    /// # Cancellation safety
    ///
    /// Not cancellation safe: if dropped after `fut` finished, its result may or may not
    /// have been checkpointed.
    pub async fn step<T, Fut>(&self, name: &str, fut: Fut) -> Result<T, TaskError>
    where
        T: Serialize + DeserializeOwned,
        Fut: Future<Output = Result<T, TaskError>>,
    {
        if !lock(&self.inner.used_steps).insert(name.to_owned()) {
            return Err(TaskError::permanent(format!(
                "step `{name}` was already used in this run"
            )));
        }
        if let Some(stored) = self.inner.checkpoints.get(name) {
            return serde_json::from_value(stored.clone()).map_err(|e| {
                TaskError::permanent(format!("checkpoint of step `{name}` does not decode: {e}"))
            });
        }
        {
            let mut buffered = lock(&self.inner.step_events);
            if buffered.is_some() {
                return Err(TaskError::permanent("steps cannot be nested"));
            }
            *buffered = Some(Vec::new());
        }
        let reset = ResetBuffer(&self.inner.step_events);
        let span = tracing::info_span!(
            "taskflow.step",
            task.name = %self.inner.name,
            task.id = %self.inner.fence.task_id,
            task.attempt = self.inner.attempt,
            step.name = %name,
        );
        let out = fut.instrument(span).await;
        let events = lock(&self.inner.step_events).take().unwrap_or_default();
        drop(reset);
        let value = out?;
        let result = serde_json::to_value(&value)
            .map_err(|e| TaskError::permanent(format!("step `{name}` result: {e}")))?;
        let op = WriteOp::Step {
            fence: self.inner.fence.clone(),
            name: name.to_owned(),
            result,
            events,
        };
        match self.inner.writer.write(op).await {
            Ok(o) if matches!(o.result, OpResult::Applied) => Ok(value),
            Ok(_) => Err(TaskError::retryable("task is no longer owned by this run")),
            Err(e) => Err(e.into()),
        }
    }
}

struct ResetBuffer<'a>(&'a Mutex<Option<Vec<NewEvent>>>);

impl Drop for ResetBuffer<'_> {
    fn drop(&mut self) {
        lock(self.0).take();
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_error_says_so_in_its_stored_json() {
        let plain = TaskError::permanent("db password rejected").to_json();
        assert_eq!(
            plain,
            serde_json::json!({"message": "db password rejected", "kind": "permanent"})
        );
        let public = TaskError::retryable("the report is still being built")
            .public()
            .to_json();
        assert_eq!(public["public"], true);
        assert_eq!(public["kind"], "retryable");
    }
}
