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
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::effects::{append_events, created, existing, outcome, submit_shape};
use super::{
    Backend, ClaimParams, ClaimedTask, Control, Fence, Finish, OpOutcome, OpResult, RenewedLease,
    Store, WriteOp, started_event,
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
    background: TaskTracker,
    stop: CancellationToken,
}

/// How often the WAL is checkpointed into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// Copies committed WAL frames into the database file without blocking the writer
/// (`PASSIVE`), until stopped; a last checkpoint at close.
async fn checkpoint_loop(mut conn: SqliteConnection, stop: CancellationToken) {
    loop {
        let stopped = tokio::select! {
            () = stop.cancelled() => true,
            () = tokio::time::sleep(CHECKPOINT_INTERVAL) => false,
        };
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            tracing::debug!(error = %e, "wal checkpoint failed; retrying later");
        }
        if stopped {
            break;
        }
    }
    let _ = conn.close().await;
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
            .pragma("cache_size", "-4000")
            // Checkpoints run on their own connection (below), never inside the writer's
            // commit, where their fsync would stall every caller of that batch.
            .pragma("wal_autocheckpoint", "0");
        let mut writer = SqliteConnection::connect_with(&opts).await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut writer)
            .await?;
        let checkpointer = SqliteConnection::connect_with(&opts).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(opts.read_only(true))
            .await?;
        let background = TaskTracker::new();
        let stop = CancellationToken::new();
        background.spawn(checkpoint_loop(checkpointer, stop.clone()));
        Ok(Self {
            path,
            writer: tokio::sync::Mutex::new(Some(writer)),
            reader,
            lock: std::sync::Mutex::new(Some(lock)),
            background,
            stop,
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
        let mut tx = Tx {
            inner: conn.begin().await?,
            events: Vec::new(),
        };
        // Submits and attempt outcomes are applied in bulk (one statement each for the whole
        // batch), then everything else in queue order. Ops in one batch are concurrent, so
        // any order of them is a valid serialization.
        let mut out: Vec<Option<OpOutcome>> = vec![None; ops.len()];
        submit_all(&mut tx, ops, &mut out).await?;
        finish_all(&mut tx, ops, &mut out).await?;
        for (op, slot) in ops.iter().zip(out.iter_mut()) {
            if slot.is_none() {
                *slot = Some(apply(&mut tx, op).await?);
            }
        }
        let out = out.into_iter().flatten().collect();
        flush_events(&mut tx).await?;
        tx.inner.commit().await?;
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
        self.stop.cancel();
        self.background.close();
        self.background.wait().await;
        self.reader.close().await;
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
    }
}

/// A batch's transaction plus the events its ops appended, written in bulk before commit.
struct Tx<'a> {
    inner: Transaction<'a, Sqlite>,
    events: Vec<TaskEvent>,
}

impl Tx<'_> {
    fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.inner
    }
}

/// Rows per multi-row event insert (6 parameters each, far below SQLite's limit).
const EVENT_ROWS_PER_INSERT: usize = 128;

/// Writes the batch's events with as few statements as possible.
async fn flush_events(tx: &mut Tx<'_>) -> Result<()> {
    let events = std::mem::take(&mut tx.events);
    for chunk in events.chunks(EVENT_ROWS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO task_events (task_id, seq, kind, name, payload, created_at) VALUES ",
        );
        for i in 0..chunk.len() {
            sql.push_str(if i == 0 {
                "(?, ?, ?, ?, ?, ?)"
            } else {
                ", (?, ?, ?, ?, ?, ?)"
            });
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for e in chunk {
            query = query
                .bind(&e.task_id)
                .bind(i64::try_from(e.seq).unwrap_or(i64::MAX))
                .bind(e.kind.as_str())
                .bind(&e.name)
                .bind(e.payload.to_string())
                .bind(e.created_at);
        }
        query.execute(tx.conn()).await?;
    }
    Ok(())
}

async fn apply(tx: &mut Tx<'_>, op: &WriteOp) -> Result<OpOutcome> {
    match op {
        WriteOp::Submit(_) | WriteOp::Finish { .. } => {
            Err(corrupt("submit and finish ops are applied in bulk".into()))
        }
        WriteOp::Claim(p) => claim(tx, p).await,
        WriteOp::Emit { fence, events } => emit(tx, fence, events, None).await,
        WriteOp::Step {
            fence,
            name,
            result,
            events,
        } => emit(tx, fence, events, Some((name, result))).await,

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

async fn find_by_key(tx: &mut Tx<'_>, key: &str, user: &str) -> Result<Option<TaskInfo>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        task_cols!(),
        " FROM tasks WHERE idempotency_key = ? AND user_id = ? \
         ORDER BY created_at DESC, id DESC LIMIT 1"
    ))
    .bind(key)
    .bind(user)
    .fetch_optional(tx.conn())
    .await?;
    row.map(|r| task_from_row(&r)).transpose()
}

/// Applies every `Submit` of the batch: one multi-row insert, then per-op outcomes.
async fn submit_all(tx: &mut Tx<'_>, ops: &[WriteOp], out: &mut [Option<OpOutcome>]) -> Result<()> {
    let mut rows = Vec::new();
    let mut inserting = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let WriteOp::Submit(p) = op else { continue };
        let user = p.user_id.as_deref().unwrap_or("");
        if p.mode == IdempotencyMode::AtMostOnce
            && let Some(task) = find_by_key(tx, &p.key, user).await?
        {
            out[i] = Some(existing(task));
            continue;
        }
        let (status, attempt, last_seq) = submit_shape(p);
        rows.push(json!({
            "id": p.id, "name": p.name, "key": p.key, "user": user,
            "input": p.input.to_string(), "status": status.as_str(), "attempt": attempt,
            "max_attempts": p.max_attempts, "auto_recover": p.auto_recover,
            "node": p.claim.as_ref().map(|c| &c.node),
            "lease": p.claim.as_ref().map(|c| c.lease_until),
            "now": p.now, "last_seq": last_seq,
        }));
        inserting.push(i);
    }
    if rows.is_empty() {
        return Ok(());
    }
    let inserted: Vec<String> = sqlx::query_scalar(
        "INSERT INTO tasks (id, name, idempotency_key, user_id, input, status, attempt, \
         max_attempts, auto_recover, owner_node, lease_expires_at, run_at, created_at, \
         updated_at, last_seq) \
         SELECT value ->> 'id', value ->> 'name', value ->> 'key', value ->> 'user', \
         value ->> 'input', value ->> 'status', value ->> 'attempt', value ->> 'max_attempts', \
         value ->> 'auto_recover', value ->> 'node', value ->> 'lease', value ->> 'now', \
         value ->> 'now', value ->> 'now', value ->> 'last_seq' \
         FROM jsonb_each(?) WHERE 1 ORDER BY key ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(Value::Array(rows).to_string())
    .fetch_all(tx.conn())
    .await?;
    let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
    for i in inserting {
        let WriteOp::Submit(p) = &ops[i] else {
            continue;
        };
        out[i] = Some(if inserted.contains(&p.id) {
            created(&mut tx.events, p)
        } else {
            let user = p.user_id.as_deref().unwrap_or("");
            let task = find_by_key(tx, &p.key, user)
                .await?
                .ok_or_else(|| corrupt("idempotency conflict without a visible task".into()))?;
            existing(task)
        });
    }
    Ok(())
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
    .fetch_all(tx.conn())
    .await?;
    let window = budget.window();
    let more = candidates.len() >= window;
    let mut skipped = false;
    let mut chosen: HashMap<String, (bool, bool)> = HashMap::new();
    for c in &candidates {
        let id: String = c.try_get(0)?;
        let user: String = c.try_get(1)?;
        let name: String = c.try_get(2)?;
        if budget.admit((!user.is_empty()).then_some(user.as_str()), &name) {
            chosen.insert(id, (c.try_get(3)?, c.try_get(4)?));
        } else {
            skipped = true;
        }
    }
    let mut claimed = Vec::with_capacity(chosen.len());
    let mut events = Vec::with_capacity(chosen.len());
    if !chosen.is_empty() {
        let ids = serde_json::to_string(&chosen.keys().collect::<Vec<_>>())?;
        let rows = sqlx::query(concat!(
            "UPDATE tasks SET status = 'running', attempt = attempt + 1, owner_node = ?, \
             lease_expires_at = ?, control = NULL, recovery = 0, last_seq = last_seq + 1, \
             updated_at = ? WHERE id IN (SELECT value FROM json_each(?)) AND status = 'pending' \
             RETURNING ",
            task_cols!()
        ))
        .bind(&p.node)
        .bind(p.lease_until)
        .bind(p.now)
        .bind(ids)
        .fetch_all(tx.conn())
        .await?;
        for row in &rows {
            let task = task_from_row(row)?;
            let seq = i64::try_from(task.last_seq).unwrap_or(i64::MAX);
            events.extend(append_events(
                &mut tx.events,
                &task.id,
                seq,
                &[started_event(task.attempt)],
                p.now,
            ));
            let (recovery, auto_recover) = chosen.get(&task.id).copied().unwrap_or_default();
            claimed.push(ClaimedTask {
                task,
                recovery,
                auto_recover,
            });
        }
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
    .fetch_optional(tx.conn())
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
        .execute(tx.conn())
        .await?;
    }
    let events = append_events(&mut tx.events, &fence.task_id, first, events, now);
    Ok(outcome(OpResult::Applied, events))
}

/// Applies every `Finish` of the batch in one fenced multi-row update.
async fn finish_all(tx: &mut Tx<'_>, ops: &[WriteOp], out: &mut [Option<OpOutcome>]) -> Result<()> {
    let mut rows = Vec::new();
    let mut effects = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let WriteOp::Finish {
            fence,
            outcome: finish,
            now,
        } = op
        else {
            continue;
        };
        let (status, result, error, run_at, event) =
            super::effects::finish_effects(fence, finish, *now);
        let release = matches!(finish, Finish::Release);
        rows.push(json!({
            "id": fence.task_id, "node": fence.node, "attempt": fence.attempt,
            "status": status.as_str(), "result": result.as_ref().map(Value::to_string),
            "error": error.as_ref().map(Value::to_string), "run_at": run_at,
            "dec": i64::from(release), "bump": i64::from(event.is_some()), "now": now,
        }));
        effects.push((i, fence.task_id.clone(), event, *now));
    }
    if rows.is_empty() {
        return Ok(());
    }
    let applied: Vec<(String, i64)> = sqlx::query_as(
        "UPDATE tasks SET status = v.status, result = coalesce(v.result, tasks.result), \
         error = coalesce(v.error, tasks.error), run_at = coalesce(v.run_at, tasks.run_at), \
         owner_node = NULL, lease_expires_at = NULL, control = NULL, \
         attempt = tasks.attempt - v.dec, recovery = v.dec, last_seq = tasks.last_seq + v.bump, \
         updated_at = v.now \
         FROM (SELECT value ->> 'id' AS id, value ->> 'node' AS node, \
               value ->> 'attempt' AS attempt, value ->> 'status' AS status, \
               value ->> 'result' AS result, value ->> 'error' AS error, \
               value ->> 'run_at' AS run_at, value ->> 'dec' AS dec, value ->> 'bump' AS bump, \
               value ->> 'now' AS now FROM jsonb_each(?)) AS v \
         WHERE tasks.id = v.id AND tasks.owner_node = v.node AND tasks.attempt = v.attempt \
         AND tasks.status = 'running' RETURNING tasks.id, tasks.last_seq",
    )
    .bind(Value::Array(rows).to_string())
    .fetch_all(tx.conn())
    .await?;
    let applied: HashMap<String, i64> = applied.into_iter().collect();
    for (i, task_id, event, now) in effects {
        out[i] = Some(match applied.get(&task_id) {
            None => outcome(OpResult::Fenced, vec![]),
            Some(&last) => {
                let events = match event {
                    Some(ev) => append_events(&mut tx.events, &task_id, last, &[ev], now),
                    None => vec![],
                };
                outcome(OpResult::Applied, events)
            }
        });
    }
    Ok(())
}

async fn control(tx: &mut Tx<'_>, id: &str, action: Control, now: i64) -> Result<OpOutcome> {
    let row = sqlx::query("SELECT status FROM tasks WHERE id = ?")
        .bind(id)
        .fetch_optional(tx.conn())
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
                .execute(tx.conn())
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
    .fetch_optional(tx.conn())
    .await?;
    let Some(last) = last else {
        return Ok(unchanged());
    };
    let events = append_events(&mut tx.events, id, last, &[event], now);
    Ok(outcome(OpResult::Controlled { from, to }, events))
}

async fn lease_renew(tx: &mut Tx<'_>, node: &str, until: i64) -> Result<OpOutcome> {
    let rows = sqlx::query(
        "UPDATE tasks SET lease_expires_at = ? WHERE owner_node = ? AND status = 'running' \
         RETURNING id, attempt, control",
    )
    .bind(until)
    .bind(node)
    .fetch_all(tx.conn())
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
    .fetch_all(tx.conn())
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
        .fetch_optional(tx.conn())
        .await?;
        if let Some(last) = last {
            events.extend(append_events(&mut tx.events, &id, last, &[event], now));
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
    .execute(tx.conn())
    .await?;
    sqlx::query(
        "DELETE FROM task_steps WHERE task_id IN (SELECT id FROM tasks WHERE \
         (status IN ('completed', 'failed', 'cancelled') AND updated_at < ?1) \
         OR (status = 'suspended' AND updated_at < ?2))",
    )
    .bind(terminal_before)
    .bind(suspended_before)
    .execute(tx.conn())
    .await?;
    let n = sqlx::query(
        "DELETE FROM tasks WHERE \
         (status IN ('completed', 'failed', 'cancelled') AND updated_at < ?1) \
         OR (status = 'suspended' AND updated_at < ?2)",
    )
    .bind(terminal_before)
    .bind(suspended_before)
    .execute(tx.conn())
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
