//! What each state change does, shared by the backends so they cannot drift apart.

use serde_json::{Value, json};

use super::{Control, Fence, Finish};
use crate::event::{EventKind, NewEvent};
use crate::task::TaskStatus;

/// The columns and event a finished attempt writes:
/// `(status, result, error, run_at, event)`.
pub(crate) fn finish_effects(
    fence: &Fence,
    finish: &Finish,
    now: i64,
) -> (
    TaskStatus,
    Option<Value>,
    Option<Value>,
    Option<i64>,
    Option<NewEvent>,
) {
    match finish {
        Finish::Complete { result } => (
            TaskStatus::Completed,
            Some(result.clone()),
            None,
            None,
            Some(NewEvent::engine(
                EventKind::Completed,
                json!({ "result": result }),
            )),
        ),
        Finish::Retry { error, run_at } => (
            TaskStatus::Pending,
            None,
            Some(error.clone()),
            Some(*run_at),
            Some(NewEvent::engine(
                EventKind::Retrying,
                json!({"attempt": fence.attempt, "error": error, "retryInMs": (run_at - now).max(0)}),
            )),
        ),
        Finish::Fail { error } => (
            TaskStatus::Failed,
            None,
            Some(error.clone()),
            None,
            Some(NewEvent::engine(
                EventKind::Failed,
                json!({"error": error, "attempt": fence.attempt}),
            )),
        ),
        Finish::Suspend { reason } => (
            TaskStatus::Suspended,
            None,
            None,
            None,
            Some(NewEvent::engine(
                EventKind::Suspended,
                json!({ "reason": reason }),
            )),
        ),
        Finish::Release => (TaskStatus::Pending, None, None, Some(now), None),
    }
}

/// The state a client's request moves a task to, with its event; `None` when the request
/// changes nothing from `from` (an idempotent repeat, or a refused transition).
pub(crate) fn control_effect(action: Control, from: TaskStatus) -> Option<(TaskStatus, NewEvent)> {
    use TaskStatus::{Failed, Pending, Running, Suspended};
    let (to, event) = match (action, from) {
        (Control::Stop, Pending) => (
            Suspended,
            NewEvent::engine(EventKind::Suspended, json!({"reason": "stopped"})),
        ),
        (Control::Resume, Suspended) => (Pending, NewEvent::engine(EventKind::Resumed, json!({}))),
        (Control::Cancel, Pending | Running | Suspended) => (
            TaskStatus::Cancelled,
            NewEvent::engine(EventKind::Cancelled, json!({"reason": "cancelled"})),
        ),
        (Control::Redrive, Failed) => (
            Pending,
            NewEvent::engine(EventKind::Resumed, json!({"redrive": true})),
        ),
        _ => return None,
    };
    Some((to, event))
}

/// What recovery does with a running task whose node is gone.
pub(crate) fn recovery_decision(
    attempt: i64,
    max_attempts: i64,
    auto_recover: bool,
    too_old: bool,
) -> (TaskStatus, Option<Value>, NewEvent) {
    let fail = |message: &str| {
        let error = json!({"message": message, "kind": "lease_expired"});
        (
            TaskStatus::Failed,
            Some(error.clone()),
            NewEvent::engine(
                EventKind::Failed,
                json!({"error": error, "attempt": attempt}),
            ),
        )
    };
    if too_old {
        fail("task exceeded recovery_max_age after its node stopped")
    } else if attempt >= max_attempts {
        fail("node stopped during the last allowed attempt")
    } else if auto_recover {
        let error = json!({"message": "lease expired", "kind": "lease_expired"});
        (
            TaskStatus::Pending,
            Some(error.clone()),
            NewEvent::engine(
                EventKind::Retrying,
                json!({"attempt": attempt, "error": error, "retryInMs": 0}),
            ),
        )
    } else {
        (
            TaskStatus::Suspended,
            None,
            NewEvent::engine(EventKind::Suspended, json!({"reason": "lease_expired"})),
        )
    }
}
