//! Rows as the SQL statements return them, by column name, and their conversion to the
//! engine's types. Both drivers decode into these same structs.

use serde_json::Value;
use sqlx::types::Json;

use crate::error::{Error, Result};
use crate::event::{EventKind, TaskEvent};
use crate::task::{TaskInfo, TaskStatus};

/// The columns every statement that returns a task selects, as a literal for `concat!`.
macro_rules! task_columns {
    () => {
        "id, name, idempotency_key, user_id, input, status, attempt, max_attempts, \
         recoveries, result, error, last_seq, created_at, updated_at"
    };
}
pub(crate) use task_columns;

/// A `tasks` row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct TaskRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) idempotency_key: String,
    /// `''` means no owner.
    pub(crate) user_id: String,
    pub(crate) input: Json<Value>,
    pub(crate) status: String,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    pub(crate) recoveries: i32,
    pub(crate) result: Option<Json<Value>>,
    pub(crate) error: Option<Json<Value>>,
    pub(crate) last_seq: i64,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

impl TryFrom<TaskRow> for TaskInfo {
    type Error = Error;

    fn try_from(row: TaskRow) -> Result<Self> {
        Ok(TaskInfo {
            status: parse_status(&row.status)?,
            attempt: count(row.attempt, "attempt")?,
            max_attempts: count(row.max_attempts, "max_attempts")?,
            recoveries: count(row.recoveries, "recoveries")?,
            last_seq: seq(row.last_seq)?,
            user_id: (!row.user_id.is_empty()).then_some(row.user_id),
            id: row.id,
            name: row.name,
            idempotency_key: row.idempotency_key,
            input: row.input.0,
            result: row.result.map(|j| j.0),
            error: row.error.map(|j| j.0),
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// A task just claimed: the task and the claim's epoch.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ClaimedRow {
    #[sqlx(flatten)]
    pub(crate) task: TaskRow,
    pub(crate) epoch: i32,
}

/// A pending task considered by a claim.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct CandidateRow {
    pub(crate) id: String,
    pub(crate) user_id: String,
    pub(crate) name: String,
    pub(crate) recovery: bool,
    pub(crate) auto_recover: bool,
    pub(crate) run_at: i64,
}

/// A running task whose lease expired, as the rescuer decides on it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ReapRow {
    pub(crate) id: String,
    pub(crate) epoch: i32,
    pub(crate) attempt: i32,
    pub(crate) recoveries: i32,
    pub(crate) max_recoveries: i32,
    pub(crate) auto_recover: bool,
    pub(crate) created_at: i64,
}

/// A lease still held after renewal.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct LeaseRow {
    pub(crate) id: String,
    pub(crate) epoch: i32,
    pub(crate) control: Option<String>,
}

/// A fenced or conditional update that matched: the task and its new `last_seq`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SeqRow {
    pub(crate) id: String,
    pub(crate) last_seq: i64,
}

/// A fenced bulk update that matched one run: its fence and the task's new `last_seq`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct FencedSeqRow {
    pub(crate) id: String,
    pub(crate) node: String,
    pub(crate) epoch: i32,
    pub(crate) last_seq: i64,
}

/// A `task_events` row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EventRow {
    pub(crate) task_id: String,
    pub(crate) seq: i64,
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) payload: Json<Value>,
    pub(crate) created_at: i64,
}

impl TryFrom<EventRow> for TaskEvent {
    type Error = Error;

    fn try_from(row: EventRow) -> Result<Self> {
        Ok(TaskEvent {
            kind: EventKind::parse(&row.kind)
                .ok_or_else(|| Error::corrupt(format!("unknown event kind `{}`", row.kind)))?,
            seq: seq(row.seq)?,
            task_id: row.task_id,
            name: row.name,
            payload: row.payload.0,
            created_at: row.created_at,
        })
    }
}

/// A `task_steps` row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct StepRow {
    pub(crate) name: String,
    pub(crate) result: Json<Value>,
}

/// One id.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct IdRow {
    pub(crate) id: String,
}

/// One count.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct CountRow {
    pub(crate) n: i64,
}

/// One status.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct StatusRow {
    pub(crate) status: String,
}

pub(crate) fn parse_status(s: &str) -> Result<TaskStatus> {
    TaskStatus::parse(s).ok_or_else(|| Error::corrupt(format!("unknown task status `{s}`")))
}

/// A non-negative 32-bit column.
pub(crate) fn count(n: i32, column: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::corrupt(format!("negative {column} `{n}`")))
}

/// A non-negative 64-bit sequence number.
pub(crate) fn seq(n: i64) -> Result<u64> {
    u64::try_from(n).map_err(|_| Error::corrupt(format!("negative seq `{n}`")))
}
