//! Task events: the per-task, gapless, durable log that subscribers read.

use serde::Serialize;

/// What kind of event this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The task was committed (always seq 1).
    Created,
    /// An attempt started; payload `{"attempt": n}`.
    Started,
    /// An attempt failed and another is scheduled; payload `{"attempt", "error", "retryInMs"}`.
    Retrying,
    /// The task was stopped or recovered without `auto_recover`; payload `{"reason"}`.
    Suspended,
    /// A suspended task was resumed.
    Resumed,
    /// Terminal: payload `{"result": …}`.
    Completed,
    /// Terminal: payload `{"error": {"message", "kind"}, "attempt": n}`.
    Failed,
    /// Terminal: payload `{"reason"}`.
    Cancelled,
    /// A user event emitted by the handler with [`TaskContext::emit`](crate::TaskContext::emit).
    Custom,
}

impl EventKind {
    /// The stored name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Started => "started",
            Self::Retrying => "retrying",
            Self::Suspended => "suspended",
            Self::Resumed => "resumed",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Custom => "custom",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "created" => Self::Created,
            "started" => Self::Started,
            "retrying" => Self::Retrying,
            "suspended" => Self::Suspended,
            "resumed" => Self::Resumed,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "custom" => Self::Custom,
            _ => return None,
        })
    }

    /// `true` for the kinds after which a task's stream ends.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// Event names a handler may not use for its own events, because clients read them as
/// engine or transport signals.
pub const RESERVED_EVENT_NAMES: &[&str] = &[
    "ready",
    "error",
    "heartbeat",
    "created",
    "completed",
    "failed",
    "cancelled",
    "suspended",
    "started",
    "retrying",
    "resumed",
];

/// One committed event of one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskEvent {
    /// The task it belongs to.
    pub task_id: String,
    /// Position in the task's log: 1, 2, 3 … with no gaps, never reused.
    pub seq: u64,
    /// The kind of event.
    pub kind: EventKind,
    /// The event's name: the kind's name for engine events, the handler's name for
    /// [`EventKind::Custom`].
    pub name: String,
    /// The JSON payload.
    pub payload: serde_json::Value,
    /// Commit time, milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// An event not yet committed; the store assigns its seq at commit.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The kind.
    pub kind: EventKind,
    /// The name (the kind's name for engine events).
    pub name: String,
    /// The JSON payload.
    pub payload: serde_json::Value,
}

impl NewEvent {
    pub(crate) fn engine(kind: EventKind, payload: serde_json::Value) -> Self {
        Self {
            kind,
            name: kind.as_str().to_owned(),
            payload,
        }
    }
}
