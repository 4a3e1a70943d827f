//! The embedded SQLite store: one process owns the file.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous as Sync,
};
use sqlx::{Connection, Row, Sqlite, Transaction};

use super::{
    Backend, ClaimParams, ClaimedTask, Control, Fence, Finish, OpOutcome, OpResult, RenewedLease,
    Store, SubmitParams, WriteOp, started_event,
};
use crate::error::{Error, Result};
use crate::event::{EventKind, NewEvent, TaskEvent};
use crate::task::{IdempotencyMode, TaskInfo, TaskStatus};

/// How hard SQLite syncs on commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SqliteSynchronous {
    /// WAL + `synchronous=NORMAL`: survives any process crash (the default).
    #[default]
    Normal,
    /// `synchronous=FULL`: also survives power loss, at the cost of an fsync per commit.
    Full,
}

/// The SQLite store. Open it with [`SqliteStore::open`].
///
/// An advisory lock on `<file>.lock` makes one process the owner of the database; the OS
/// releases it when the process dies, so a SIGKILLed process never blocks its successor.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    writer: tokio::sync::Mutex<Option<SqliteConnection>>,
    reader: SqlitePool,
    lock: std::sync::Mutex<Option<File>>,
}

macro_rules! task_cols {
    () => {
        "id, name, idempotency_key, user_id, input, status, attempt, max_attempts, result, \
         error, last_seq, created_at, updated_at"
    };
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with `synchronous=NORMAL`, takes
    /// the lock file and applies migrations.
    ///
    /// # Errors
    ///
    /// [`Error::Locked`] if another live process owns the file; store or migration errors.
    ///
    /// # Cancellation safety
    ///
    /// Not cancellation safe: dropping the future may leave the lock file taken until the
    /// value is dropped.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, SqliteSynchronous::Normal).await
    }

    /// Like [`open`](Self::open), choosing the sync level.
    ///
    /// # Errors
    ///
    /// As for [`open`](Self::open).
    ///
    /// # Cancellation safety
    ///
    /// As for [`open`](Self::open).
    pub async fn open_with(path: impl AsRef<Path>, sync: SqliteSynchronous) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let lock = take_lock(&path)?;
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match sync {
                SqliteSynchronous::Normal => Sync::Normal,
                SqliteSynchronous::Full => Sync::Full,
            })
            .busy_timeout(Duration::from_secs(5))
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-16000");
        let mut writer = SqliteConnection::connect_with(&opts).await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut writer)
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(opts.read_only(true))
            .await?;
        Ok(Self {
            path,
            writer: tokio::sync::Mutex::new(Some(writer)),
            reader,
            lock: std::sync::Mutex::new(Some(lock)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn take_lock(db: &Path) -> Result<File> {
    let mut lock_path = db.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
            path: PathBuf::from(lock_path).display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn is_exclusive(&self) -> bool {
        true
    }

    async fn write_batch(&self, ops: &[WriteOp]) -> Result<Vec<OpOutcome>> {
        let mut guard = self.writer.lock().await;
        let conn = guard.as_mut().ok_or(Error::ShuttingDown)?;
        let mut tx = conn.begin().await?;
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            out.push(apply(&mut tx, op).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn task_by_key(&self, key: &str, user: Option<&str>) -> Result<Option<TaskInfo>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            task_cols!(),
            " FROM tasks WHERE idempotency_key = ? AND user_id = ? \
             ORDER BY created_at DESC, id DESC LIMIT 1"
        ))
        .bind(key)
        .bind(user.unwrap_or(""))
        .fetch_optional(&self.reader)
        .await?;
        row.map(|r| task_from_row(&r)).transpose()
    }

    async fn task_by_id(&self, id: &str) -> Result<Option<TaskInfo>> {
        let row = sqlx::query(concat!("SELECT ", task_cols!(), " FROM tasks WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.map(|r| task_from_row(&r)).transpose()
    }

    async fn events_after(
        &self,
        task_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<TaskEvent>> {
        let rows = sqlx::query(
            "SELECT task_id, seq, kind, name, payload, created_at FROM task_events \
             WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(task_id)
        .bind(i64::try_from(after_seq).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn steps(&self, task_id: &str) -> Result<HashMap<String, Value>> {
        let rows = sqlx::query("SELECT name, result FROM task_steps WHERE task_id = ?")
            .bind(task_id)
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| {
                let name: String = r.try_get(0)?;
                let result: String = r.try_get(1)?;
                Ok((name, serde_json::from_str(&result)?))
            })
            .collect()
    }

    async fn tasks_failed(&self, limit: u32) -> Result<Vec<TaskInfo>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_cols!(),
            " FROM tasks WHERE status = 'failed' ORDER BY updated_at DESC, id DESC LIMIT ?"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn tasks_pending_count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE status = 'pending'")
            .fetch_one(&self.reader)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn health(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn close(&self) {
        if let Some(conn) = self.writer.lock().await.take() {
            let _ = conn.close().await;
        }
        self.reader.close().await;
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
    }
}

type Tx<'a> = Transaction<'a, Sqlite>;

async fn apply(tx: &mut Tx<'_>, op: &WriteOp) -> Result<OpOutcome> {
    match op {
        WriteOp::Submit(p) => submit(tx, p).await,
        WriteOp::Claim(p) => claim(tx, p).await,
        WriteOp::Emit { fence, events } => emit(tx, fence, events, None).await,
        WriteOp::Step {
            fence,
            name,
            result,
            events,
        } => emit(tx, fence, events, Some((name, result))).await,
        WriteOp::Finish {
            fence,
            outcome,
            now,
        } => finish(tx, fence, outcome, *now).await,
        WriteOp::Control {
            task_id,
            action,
            now,
        } => control(tx, task_id, *action, *now).await,
        WriteOp::LeaseRenew { node, until } => lease_renew(tx, node, *until).await,
        WriteOp::Reap {
            now,
            max_age_cutoff,
            all,
        } => reap(tx, *now, *max_age_cutoff, *all).await,
        WriteOp::Purge {
            terminal_before,
            suspended_before,
        } => purge(tx, *terminal_before, *suspended_before).await,
    }
}

fn outcome(result: OpResult, events: Vec<TaskEvent>) -> OpOutcome {
    OpOutcome { result, events }
}

async fn find_by_key(tx: &mut Tx<'_>, key: &str, user: &str) -> Result<Option<TaskInfo>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        task_cols!(),
        " FROM tasks WHERE idempotency_key = ? AND user_id = ? \
         ORDER BY created_at DESC, id DESC LIMIT 1"
    ))
    .bind(key)
    .bind(user)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|r| task_from_row(&r)).transpose()
}

async fn submit(tx: &mut Tx<'_>, p: &SubmitParams) -> Result<OpOutcome> {
    let user = p.user_id.as_deref().unwrap_or("");
    if p.mode == IdempotencyMode::AtMostOnce
        && let Some(task) = find_by_key(tx, &p.key, user).await?
    {
        return Ok(outcome(
            OpResult::Submitted {
                task: Box::new(task),
                created: false,
                claimed: false,
            },
            vec![],
        ));
    }
    let (status, attempt, last_seq) = match p.claim {
        Some(_) => (TaskStatus::Running, 1, 2),
        None => (TaskStatus::Pending, 0, 1),
    };
    let inserted = sqlx::query(
        "INSERT INTO tasks (id, name, idempotency_key, user_id, input, status, attempt, \
         max_attempts, auto_recover, owner_node, lease_expires_at, run_at, created_at, \
         updated_at, last_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&p.id)
    .bind(&p.name)
    .bind(&p.key)
    .bind(user)
    .bind(p.input.to_string())
    .bind(status.as_str())
    .bind(attempt)
    .bind(i64::from(p.max_attempts))
    .bind(p.auto_recover)
    .bind(p.claim.as_ref().map(|c| c.node.as_str()))
    .bind(p.claim.as_ref().map(|c| c.lease_until))
    .bind(p.now)
    .bind(p.now)
    .bind(p.now)
    .bind(last_seq)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        let task = find_by_key(tx, &p.key, user).await?.ok_or_else(|| {
            Error::StoreUnavailable(std::sync::Arc::new(sqlx::Error::Protocol(
                "idempotency conflict without a visible task".into(),
            )))
        })?;
        return Ok(outcome(
            OpResult::Submitted {
                task: Box::new(task),
                created: false,
                claimed: false,
            },
            vec![],
        ));
    }
    let mut new = vec![NewEvent::engine(EventKind::Created, json!({}))];
    if p.claim.is_some() {
        new.push(started_event(1));
    }
    let events = insert_events(tx, &p.id, 1, &new, p.now).await?;
    let task = TaskInfo {
        id: p.id.clone(),
        name: p.name.clone(),
        idempotency_key: p.key.clone(),
        user_id: p.user_id.clone(),
        input: p.input.clone(),
        status,
        attempt: u32::try_from(attempt).unwrap_or(0),
        max_attempts: p.max_attempts,
        result: None,
        error: None,
        last_seq: u64::try_from(last_seq).unwrap_or(0),
        created_at: p.now,
        updated_at: p.now,
    };
    Ok(outcome(
        OpResult::Submitted {
            task: Box::new(task),
            created: true,
            claimed: p.claim.is_some(),
        },
        events,
    ))
}

async fn insert_events(
    tx: &mut Tx<'_>,
    task_id: &str,
    first_seq: i64,
    events: &[NewEvent],
    now: i64,
) -> Result<Vec<TaskEvent>> {
    let mut out = Vec::with_capacity(events.len());
    for (i, ev) in events.iter().enumerate() {
        let seq = first_seq + i64::try_from(i).unwrap_or(0);
        sqlx::query(
            "INSERT INTO task_events (task_id, seq, kind, name, payload, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(task_id)
        .bind(seq)
        .bind(ev.kind.as_str())
        .bind(&ev.name)
        .bind(ev.payload.to_string())
        .bind(now)
        .execute(&mut **tx)
        .await?;
        out.push(TaskEvent {
            task_id: task_id.to_owned(),
            seq: u64::try_from(seq).unwrap_or(0),
            kind: ev.kind,
            name: ev.name.clone(),
            payload: ev.payload.clone(),
            created_at: now,
        });
    }
    Ok(out)
}

async fn claim(tx: &mut Tx<'_>, p: &ClaimParams) -> Result<OpOutcome> {
    let mut budget = p.budget.clone();
    if budget.global == 0 || p.names.is_empty() {
        return Ok(outcome(
            OpResult::Claimed {
                tasks: vec![],
                more: budget.global == 0,
            },
            vec![],
        ));
    }
    let names = serde_json::to_string(&p.names)?;
    let candidates = sqlx::query(
        "SELECT id, user_id, name, recovery, auto_recover FROM tasks \
         WHERE status = 'pending' AND run_at <= ? \
         AND name IN (SELECT value FROM json_each(?)) ORDER BY run_at, id LIMIT ?",
    )
    .bind(p.now)
    .bind(names)
    .bind(i64::try_from(budget.window()).unwrap_or(1024))
    .fetch_all(&mut **tx)
    .await?;
    let window = budget.window();
    let more = candidates.len() >= window;
    let mut skipped = false;
    let mut claimed = Vec::new();
    let mut events = Vec::new();
    for c in candidates {
        let id: String = c.try_get(0)?;
        let user: String = c.try_get(1)?;
        let name: String = c.try_get(2)?;
        let user = (!user.is_empty()).then_some(user.as_str());
        if !budget.admit(user, &name) {
            skipped = true;
            continue;
        }
        let row = sqlx::query(concat!(
            "UPDATE tasks SET status = 'running', attempt = attempt + 1, owner_node = ?, \
             lease_expires_at = ?, control = NULL, recovery = 0, last_seq = last_seq + 1, \
             updated_at = ? WHERE id = ? AND status = 'pending' RETURNING ",
            task_cols!()
        ))
        .bind(&p.node)
        .bind(p.lease_until)
        .bind(p.now)
        .bind(&id)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else { continue };
        let task = task_from_row(&row)?;
        let seq = i64::try_from(task.last_seq).unwrap_or(i64::MAX);
        events.extend(insert_events(tx, &id, seq, &[started_event(task.attempt)], p.now).await?);
        claimed.push(ClaimedTask {
            task,
            recovery: c.try_get(3)?,
            auto_recover: c.try_get(4)?,
        });
    }
    Ok(outcome(
        OpResult::Claimed {
            tasks: claimed,
            more: more || skipped,
        },
        events,
    ))
}

/// Bumps `last_seq` by `n` under the fence; returns the first new seq.
async fn fenced_seq(tx: &mut Tx<'_>, fence: &Fence, n: usize, now: i64) -> Result<Option<i64>> {
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    let last: Option<i64> = sqlx::query_scalar(
        "UPDATE tasks SET last_seq = last_seq + ?, updated_at = ? \
         WHERE id = ? AND owner_node = ? AND attempt = ? AND status = 'running' \
         RETURNING last_seq",
    )
    .bind(n)
    .bind(now)
    .bind(&fence.task_id)
    .bind(&fence.node)
    .bind(fence.attempt)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(last.map(|last| last - n + 1))
}

async fn emit(
    tx: &mut Tx<'_>,
    fence: &Fence,
    events: &[NewEvent],
    step: Option<(&String, &Value)>,
) -> Result<OpOutcome> {
    let now = super::now_ms();
    let Some(first) = fenced_seq(tx, fence, events.len(), now).await? else {
        return Ok(outcome(OpResult::Fenced, vec![]));
    };
    if let Some((name, result)) = step {
        sqlx::query(
            "INSERT INTO task_steps (task_id, name, result, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&fence.task_id)
        .bind(name)
        .bind(result.to_string())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    let events = insert_events(tx, &fence.task_id, first, events, now).await?;
    Ok(outcome(OpResult::Applied, events))
}

async fn finish(tx: &mut Tx<'_>, fence: &Fence, finish: &Finish, now: i64) -> Result<OpOutcome> {
    let (status, result, error, run_at, event) = super::effects::finish_effects(fence, finish, now);
    let result = result.as_ref().map(Value::to_string);
    let error = error.as_ref().map(Value::to_string);
    let bump = i64::from(event.is_some());
    let release = matches!(finish, Finish::Release);
    let sql = concat!(
        "UPDATE tasks SET status = ?, result = coalesce(?, result), error = coalesce(?, error), ",
        "run_at = coalesce(?, run_at), owner_node = NULL, lease_expires_at = NULL, control = NULL, ",
        "attempt = attempt - ?, recovery = ?, last_seq = last_seq + ?, updated_at = ? ",
        "WHERE id = ? AND owner_node = ? AND attempt = ? AND status = 'running' RETURNING last_seq"
    );
    let last: Option<i64> = sqlx::query_scalar(sql)
        .bind(status.as_str())
        .bind(result)
        .bind(error)
        .bind(run_at)
        .bind(i64::from(release))
        .bind(release)
        .bind(bump)
        .bind(now)
        .bind(&fence.task_id)
        .bind(&fence.node)
        .bind(fence.attempt)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(last) = last else {
        return Ok(outcome(OpResult::Fenced, vec![]));
    };
    let events = match event {
        Some(ev) => insert_events(tx, &fence.task_id, last, &[ev], now).await?,
        None => vec![],
    };
    Ok(outcome(OpResult::Applied, events))
}

async fn control(tx: &mut Tx<'_>, id: &str, action: Control, now: i64) -> Result<OpOutcome> {
    let row = sqlx::query("SELECT status FROM tasks WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(row) = row else {
        return Ok(outcome(OpResult::NotFound, vec![]));
    };
    let from = parse_status(&row.try_get::<String, _>(0)?)?;
    let unchanged = || outcome(OpResult::Controlled { from, to: from }, vec![]);
    let Some((to, event)) = super::effects::control_effect(action, from) else {
        if action == Control::RequestStop && from == TaskStatus::Running {
            sqlx::query("UPDATE tasks SET control = 'stop' WHERE id = ? AND status = 'running'")
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
        return Ok(unchanged());
    };
    let last: Option<i64> = sqlx::query_scalar(
        "UPDATE tasks SET status = ?1, run_at = CASE WHEN ?1 = 'pending' THEN ?2 ELSE run_at END, \
         max_attempts = CASE WHEN status = 'failed' THEN attempt + max_attempts ELSE max_attempts END, \
         owner_node = CASE WHEN ?1 = 'cancelled' THEN NULL ELSE owner_node END, \
         lease_expires_at = CASE WHEN ?1 = 'cancelled' THEN NULL ELSE lease_expires_at END, \
         last_seq = last_seq + 1, updated_at = ?2 WHERE id = ?3 AND status = ?4 RETURNING last_seq",
    )
    .bind(to.as_str())
    .bind(now)
    .bind(id)
    .bind(from.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let Some(last) = last else {
        return Ok(unchanged());
    };
    let events = insert_events(tx, id, last, &[event], now).await?;
    Ok(outcome(OpResult::Controlled { from, to }, events))
}

async fn lease_renew(tx: &mut Tx<'_>, node: &str, until: i64) -> Result<OpOutcome> {
    let rows = sqlx::query(
        "UPDATE tasks SET lease_expires_at = ? WHERE owner_node = ? AND status = 'running' \
         RETURNING id, attempt, control",
    )
    .bind(until)
    .bind(node)
    .fetch_all(&mut **tx)
    .await?;
    let leases = rows
        .iter()
        .map(|r| {
            Ok(RenewedLease {
                task_id: r.try_get(0)?,
                attempt: r.try_get(1)?,
                stop_requested: r.try_get::<Option<String>, _>(2)?.as_deref() == Some("stop"),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(outcome(OpResult::Renewed(leases), vec![]))
}

async fn reap(tx: &mut Tx<'_>, now: i64, cutoff: i64, all: bool) -> Result<OpOutcome> {
    let rows = sqlx::query(
        "SELECT id, attempt, max_attempts, auto_recover, created_at FROM tasks \
         WHERE status = 'running' AND (? OR lease_expires_at < ?)",
    )
    .bind(all)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    let mut events = Vec::new();
    for r in &rows {
        let id: String = r.try_get(0)?;
        let attempt: i64 = r.try_get(1)?;
        let max_attempts: i64 = r.try_get(2)?;
        let auto_recover: bool = r.try_get(3)?;
        let created_at: i64 = r.try_get(4)?;
        let (status, error, event) = super::effects::recovery_decision(
            attempt,
            max_attempts,
            auto_recover,
            created_at < cutoff,
        );
        let last: Option<i64> = sqlx::query_scalar(
            "UPDATE tasks SET status = ?, error = coalesce(?, error), owner_node = NULL, \
             lease_expires_at = NULL, control = NULL, recovery = 1, run_at = ?, \
             last_seq = last_seq + 1, updated_at = ? \
             WHERE id = ? AND status = 'running' AND attempt = ? RETURNING last_seq",
        )
        .bind(status.as_str())
        .bind(error.as_ref().map(Value::to_string))
        .bind(now)
        .bind(now)
        .bind(&id)
        .bind(attempt)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(last) = last {
            events.extend(insert_events(tx, &id, last, &[event], now).await?);
        }
    }
    let n = u64::try_from(events.len()).unwrap_or(0);
    Ok(outcome(OpResult::Count(n), events))
}

async fn purge(tx: &mut Tx<'_>, terminal_before: i64, suspended_before: i64) -> Result<OpOutcome> {
    sqlx::query(
        "DELETE FROM task_events WHERE task_id IN (SELECT id FROM tasks WHERE \
         (status IN ('completed', 'failed', 'cancelled') AND updated_at < ?1) \
         OR (status = 'suspended' AND updated_at < ?2))",
    )
    .bind(terminal_before)
    .bind(suspended_before)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "DELETE FROM task_steps WHERE task_id IN (SELECT id FROM tasks WHERE \
         (status IN ('completed', 'failed', 'cancelled') AND updated_at < ?1) \
         OR (status = 'suspended' AND updated_at < ?2))",
    )
    .bind(terminal_before)
    .bind(suspended_before)
    .execute(&mut **tx)
    .await?;
    let n = sqlx::query(
        "DELETE FROM tasks WHERE \
         (status IN ('completed', 'failed', 'cancelled') AND updated_at < ?1) \
         OR (status = 'suspended' AND updated_at < ?2)",
    )
    .bind(terminal_before)
    .bind(suspended_before)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(outcome(OpResult::Count(n), vec![]))
}

fn parse_status(s: &str) -> Result<TaskStatus> {
    TaskStatus::parse(s).ok_or_else(|| corrupt(format!("unknown task status `{s}`")))
}

fn corrupt(msg: String) -> Error {
    Error::StoreUnavailable(std::sync::Arc::new(sqlx::Error::Protocol(msg)))
}

fn json_col(row: &SqliteRow, idx: usize) -> Result<Option<Value>> {
    let text: Option<String> = row.try_get(idx)?;
    Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
}

fn task_from_row(row: &SqliteRow) -> Result<TaskInfo> {
    let user: String = row.try_get(3)?;
    Ok(TaskInfo {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        idempotency_key: row.try_get(2)?,
        user_id: (!user.is_empty()).then_some(user),
        input: json_col(row, 4)?.unwrap_or(Value::Null),
        status: parse_status(&row.try_get::<String, _>(5)?)?,
        attempt: row.try_get(6)?,
        max_attempts: row.try_get(7)?,
        result: json_col(row, 8)?,
        error: json_col(row, 9)?,
        last_seq: u64::try_from(row.try_get::<i64, _>(10)?).unwrap_or(0),
        created_at: row.try_get(11)?,
        updated_at: row.try_get(12)?,
    })
}

fn event_from_row(row: &SqliteRow) -> Result<TaskEvent> {
    let kind: String = row.try_get(2)?;
    Ok(TaskEvent {
        task_id: row.try_get(0)?,
        seq: u64::try_from(row.try_get::<i64, _>(1)?).unwrap_or(0),
        kind: EventKind::parse(&kind)
            .ok_or_else(|| corrupt(format!("unknown event kind `{kind}`")))?,
        name: row.try_get(3)?,
        payload: json_col(row, 4)?.unwrap_or(Value::Null),
        created_at: row.try_get(5)?,
    })
}
