//! What each state change does — the columns it writes and the event it commits — as
//! pure functions, shared by every op of [`batch`](super::batch).

use serde_json::{Value, json};

use super::ops::{Control, Finish, SubmitParams};
use super::rows::ReapRow;
use crate::event::{EventKind, NewEvent};
use crate::task::TaskStatus;

/// Payload of the `started` event: the attempt and, when the previous run ended
/// abnormally, `recovery: true` with the number of recoveries so far.
pub(crate) fn started_event(attempt: u32, recovery: bool, recoveries: u32) -> NewEvent {
    let payload = if recovery {
        json!({ "attempt": attempt, "recovery": true, "recoveries": recoveries })
    } else {
        json!({ "attempt": attempt })
    };
    NewEvent::engine(EventKind::Started, payload)
}

/// `(status, attempt, epoch, last_seq)` of a new task: claimed at once or pending.
pub(crate) fn submit_shape(p: &SubmitParams) -> (TaskStatus, u32, u32, u64) {
    match p.claim {
        Some(_) => (TaskStatus::Running, 1, 1, 2),
        None => (TaskStatus::Pending, 0, 0, 1),
    }
}

/// The first events of a new task.
pub(crate) fn created_events(p: &SubmitParams) -> Vec<NewEvent> {
    let mut events = vec![NewEvent::engine(EventKind::Created, json!({}))];
    if p.claim.is_some() {
        events.push(started_event(1, false, 0));
    }
    events
}

/// What a finished attempt writes.
#[derive(Debug)]
pub(crate) struct FinishEffect {
    pub(crate) status: TaskStatus,
    pub(crate) result: Option<Value>,
    pub(crate) error: Option<Value>,
    pub(crate) run_at: Option<i64>,
    /// The attempt is given back (shutdown release).
    pub(crate) give_back: bool,
    pub(crate) event: Option<NewEvent>,
}

pub(crate) fn finish_effect(attempt: u32, finish: &Finish, now: i64) -> FinishEffect {
    let effect = |status, event| FinishEffect {
        status,
        result: None,
        error: None,
        run_at: None,
        give_back: false,
        event: Some(event),
    };
    match finish {
        Finish::Complete { result } => FinishEffect {
            result: Some(result.clone()),
            ..effect(
                TaskStatus::Completed,
                NewEvent::engine(EventKind::Completed, json!({ "result": result })),
            )
        },
        Finish::Retry { error, run_at } => FinishEffect {
            error: Some(error.clone()),
            run_at: Some(*run_at),
            ..effect(
                TaskStatus::Pending,
                NewEvent::engine(
                    EventKind::Retrying,
                    json!({"attempt": attempt, "error": error, "retryInMs": (run_at - now).max(0)}),
                ),
            )
        },
        Finish::Fail { error } => FinishEffect {
            error: Some(error.clone()),
            ..effect(
                TaskStatus::Failed,
                NewEvent::engine(
                    EventKind::Failed,
                    json!({"error": error, "attempt": attempt}),
                ),
            )
        },
        Finish::Suspend { reason } => effect(
            TaskStatus::Suspended,
            NewEvent::engine(EventKind::Suspended, json!({ "reason": reason })),
        ),
        Finish::Release => FinishEffect {
            status: TaskStatus::Pending,
            result: None,
            error: None,
            run_at: Some(now),
            give_back: true,
            event: None,
        },
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

/// What recovery does with a running task whose process died or lost its lease.
#[derive(Debug)]
pub(crate) struct Recovery {
    pub(crate) status: TaskStatus,
    pub(crate) error: Option<Value>,
    /// The attempt is given back: a process death is not a handler failure.
    pub(crate) give_back: bool,
    pub(crate) event: NewEvent,
}

/// Decides a recovery. Recoveries are counted apart from attempts: past `max_recoveries`
/// the task fails with kind `recovery_limit`, so a task that kills its process cannot
/// crash-loop forever; before that, it goes back to `pending` (auto-recover) or to
/// `suspended`, with its attempt given back.
pub(crate) fn recovery_decision(row: &ReapRow, too_old: bool) -> Recovery {
    let recoveries = row.recoveries.saturating_add(1);
    let fail = |message: String, kind: &str| {
        let error = json!({"message": message, "kind": kind});
        Recovery {
            status: TaskStatus::Failed,
            event: NewEvent::engine(
                EventKind::Failed,
                json!({"error": error, "attempt": row.attempt}),
            ),
            error: Some(error),
            give_back: false,
        }
    };
    if too_old {
        fail(
            "task exceeded recovery_max_age after its process stopped".to_owned(),
            "lease_expired",
        )
    } else if recoveries > row.max_recoveries {
        fail(
            format!(
                "task was interrupted {recoveries} times by its process stopping or losing \
                 its lease (max_recoveries = {})",
                row.max_recoveries
            ),
            "recovery_limit",
        )
    } else if row.auto_recover {
        let error = json!({"message": "lease expired", "kind": "lease_expired"});
        Recovery {
            status: TaskStatus::Pending,
            event: NewEvent::engine(
                EventKind::Retrying,
                json!({
                    "attempt": row.attempt, "error": error, "retryInMs": 0,
                    "recovery": true, "recoveries": recoveries,
                }),
            ),
            error: Some(error),
            give_back: true,
        }
    } else {
        Recovery {
            status: TaskStatus::Suspended,
            error: None,
            give_back: true,
            event: NewEvent::engine(
                EventKind::Suspended,
                json!({"reason": "lease_expired", "recoveries": recoveries}),
            ),
        }
    }
}
