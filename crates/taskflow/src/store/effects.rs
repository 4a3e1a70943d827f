//! What each state change does, shared by the backends so they cannot drift apart.

use serde_json::{Value, json};

use super::{Control, Fence, Finish, OpOutcome, OpResult, SubmitParams, started_event};
use crate::event::{EventKind, NewEvent, TaskEvent};
use crate::task::{TaskInfo, TaskStatus};

/// An op's outcome.
pub(crate) fn outcome(result: OpResult, events: Vec<TaskEvent>) -> OpOutcome {
    OpOutcome { result, events }
}

/// The outcome of a submit that attached to `task`.
pub(crate) fn existing(task: TaskInfo) -> OpOutcome {
    outcome(
        OpResult::Submitted {
            task: Box::new(task),
            created: false,
            claimed: false,
        },
        vec![],
    )
}

/// `(status, attempt, last_seq)` of a new task: claimed at once or pending.
pub(crate) fn submit_shape(p: &SubmitParams) -> (TaskStatus, u32, u64) {
    match p.claim {
        Some(_) => (TaskStatus::Running, 1, 2),
        None => (TaskStatus::Pending, 0, 1),
    }
}

/// Gives `events` consecutive seqs from `first_seq` and queues them in `batch` (the
/// backend writes a batch's events in bulk before it commits).
pub(crate) fn append_events(
    batch: &mut Vec<TaskEvent>,
    task_id: &str,
    first_seq: i64,
    events: &[NewEvent],
    now: i64,
) -> Vec<TaskEvent> {
    let out: Vec<TaskEvent> = events
        .iter()
        .zip(first_seq..)
        .map(|(ev, seq)| TaskEvent {
            task_id: task_id.to_owned(),
            seq: u64::try_from(seq).unwrap_or(0),
            kind: ev.kind,
            name: ev.name.clone(),
            payload: ev.payload.clone(),
            created_at: now,
        })
        .collect();
    batch.extend(out.iter().cloned());
    out
}

/// The outcome of a submit that inserted its task, queueing its first events.
pub(crate) fn created(batch: &mut Vec<TaskEvent>, p: &SubmitParams) -> OpOutcome {
    let (status, attempt, last_seq) = submit_shape(p);
    let mut new = vec![NewEvent::engine(EventKind::Created, json!({}))];
    if p.claim.is_some() {
        new.push(started_event(1));
    }
    let events = append_events(batch, &p.id, 1, &new, p.now);
    let task = TaskInfo {
        id: p.id.clone(),
        name: p.name.clone(),
        idempotency_key: p.key.clone(),
        user_id: p.user_id.clone(),
        input: p.input.clone(),
        status,
        attempt,
        max_attempts: p.max_attempts,
        result: None,
        error: None,
        last_seq,
        created_at: p.now,
        updated_at: p.now,
    };
    outcome(
        OpResult::Submitted {
            task: Box::new(task),
            created: true,
            claimed: p.claim.is_some(),
        },
        events,
    )
}

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
