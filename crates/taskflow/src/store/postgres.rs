//! The PostgreSQL store: several processes share one task database.
//!
//! Claims use `FOR UPDATE SKIP LOCKED`; every runner write is fenced by owner and attempt;
//! the idempotency unique index holds across processes. Each commit that appends events or
//! creates claimable work sends a `NOTIFY` (`taskflow_events`, `taskflow_work`), which one
//! shared `LISTEN` connection per store turns into [`Notice`]s — wake-up hints only, since
//! notifications can be lost while the listener reconnects; subscribers and executors also
//! poll.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::postgres::{PgListener, PgPool, PgRow};
use sqlx::{Postgres, Row, Transaction};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::effects::recovery_decision;
use super::{
    Backend, ClaimParams, ClaimedTask, Control, Fence, Finish, Notice, OpOutcome, OpResult,
    RenewedLease, Store, SubmitParams, WriteOp, started_event,
};
use crate::error::{Error, Result};
use crate::event::{EventKind, NewEvent, TaskEvent};
use crate::task::{IdempotencyMode, TaskInfo, TaskStatus};

const EVENTS_CHANNEL: &str = "taskflow_events";
const WORK_CHANNEL: &str = "taskflow_work";

/// The Postgres store. Create it with [`PostgresStore::new`] on a pool (for example the
/// `appkit-lakebase` pool); it applies its migrations and starts its listener.
#[derive(Debug)]
pub struct PostgresStore {
    pool: PgPool,
    instance: String,
    notices: broadcast::Sender<Notice>,
    tracker: TaskTracker,
    stop: CancellationToken,
}

macro_rules! task_cols {
    () => {
        "id, name, idempotency_key, user_id, input, status, attempt, max_attempts, result, \
         error, last_seq, created_at, updated_at"
    };
}

impl PostgresStore {
    /// Applies migrations on `pool` and starts the shared `LISTEN` connection.
    ///
    /// # Errors
    ///
    /// Store or migration errors.
    ///
    /// # Cancellation safety
    ///
    /// Not cancellation safe: migrations may be partly applied (each runs in a transaction,
    /// so a later call resumes cleanly).
    pub async fn new(pool: PgPool) -> Result<Self> {
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let (notices, _) = broadcast::channel(1024);
        let store = Self {
            pool,
            instance: uuid::Uuid::now_v7().simple().to_string(),
            notices,
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
        };
        store.tracker.spawn(listen(
            store.pool.clone(),
            store.instance.clone(),
            store.notices.clone(),
            store.stop.clone(),
        ));
        Ok(store)
    }

    /// The pool this store runs on.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Forwards notifications from other processes until stopped; reconnects on loss.
async fn listen(
    pool: PgPool,
    instance: String,
    notices: broadcast::Sender<Notice>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                debug!(error = %e, "task store listener cannot connect yet");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = listener.listen_all([EVENTS_CHANNEL, WORK_CHANNEL]).await {
            warn!(error = %e, "task store listener failed to LISTEN");
            continue;
        }
        backoff = Duration::from_millis(100);
        // Anything may have been missed while not listening.
        let _ = notices.send(Notice::Resync);
        loop {
            let received = tokio::select! {
                () = stop.cancelled() => return,
                r = listener.try_recv() => r,
            };
            match received {
                Ok(Some(n)) => {
                    let (from, task) = n.payload().split_once(':').unwrap_or((n.payload(), ""));
                    if from == instance {
                        continue;
                    }
                    let notice = if n.channel() == EVENTS_CHANNEL {
                        Notice::Events(task.to_owned())
                    } else {
                        Notice::Work
                    };
                    let _ = notices.send(notice);
                }
                Ok(None) => {
                    let _ = notices.send(Notice::Resync);
                }
                Err(e) => {
                    debug!(error = %e, "task store listener lost its connection");
                    break;
                }
            }
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn is_exclusive(&self) -> bool {
        false
    }

    fn notices(&self) -> Option<broadcast::Receiver<Notice>> {
        Some(self.notices.subscribe())
    }

    async fn write_batch(&self, ops: &[WriteOp]) -> Result<Vec<OpOutcome>> {
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(ops.len());
        let mut work = false;
        for op in ops {
            let o = apply(&mut tx, op).await?;
            work |= creates_work(op, &o);
            out.push(o);
        }
        let tasks: BTreeSet<String> = out
            .iter()
            .flat_map(|o| {
                o.events
                    .iter()
                    .map(|e| format!("{}:{}", self.instance, e.task_id))
            })
            .collect();
        if !tasks.is_empty() {
            sqlx::query("SELECT pg_notify('taskflow_events', x) FROM unnest($1::text[]) AS x")
                .bind(tasks.into_iter().collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
        }
        if work {
            sqlx::query("SELECT pg_notify('taskflow_work', $1)")
                .bind(format!("{}:", self.instance))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn task_by_key(&self, key: &str, user: Option<&str>) -> Result<Option<TaskInfo>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            task_cols!(),
            " FROM tasks WHERE idempotency_key = $1 AND user_id = $2 \
             ORDER BY created_at DESC, id DESC LIMIT 1"
        ))
        .bind(key)
        .bind(user.unwrap_or(""))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| task_from_row(&r)).transpose()
    }

    async fn task_by_id(&self, id: &str) -> Result<Option<TaskInfo>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            task_cols!(),
            " FROM tasks WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
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
             WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(task_id)
        .bind(i64::try_from(after_seq).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn steps(&self, task_id: &str) -> Result<HashMap<String, Value>> {
        let rows = sqlx::query("SELECT name, result FROM task_steps WHERE task_id = $1")
            .bind(task_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<Value, _>(1)?)))
            .collect()
    }

    async fn tasks_failed(&self, limit: u32) -> Result<Vec<TaskInfo>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_cols!(),
            " FROM tasks WHERE status = 'failed' ORDER BY updated_at DESC, id DESC LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn tasks_pending_count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE status = 'pending'")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn health(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        // The pool may be shared (Lakebase): its owner closes it.
    }
}

/// Whether a committed op left claimable work behind.
fn creates_work(op: &WriteOp, o: &OpOutcome) -> bool {
    match (op, &o.result) {
        (WriteOp::Submit(p), OpResult::Submitted { created: true, .. }) => p.claim.is_none(),
        (WriteOp::Finish { outcome, .. }, OpResult::Applied) => {
            matches!(outcome, Finish::Retry { .. } | Finish::Release)
        }
        (WriteOp::Control { .. }, OpResult::Controlled { from, to }) => {
            from != to && *to == TaskStatus::Pending
        }
        (WriteOp::Reap { .. }, OpResult::Count(n)) => *n > 0,
        _ => false,
    }
}

type Tx<'a> = Transaction<'a, Postgres>;

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

fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

async fn find_by_key(tx: &mut Tx<'_>, key: &str, user: &str) -> Result<Option<TaskInfo>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        task_cols!(),
        " FROM tasks WHERE idempotency_key = $1 AND user_id = $2 \
         ORDER BY created_at DESC, id DESC LIMIT 1"
    ))
    .bind(key)
    .bind(user)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|r| task_from_row(&r)).transpose()
}

fn existing(task: TaskInfo) -> OpOutcome {
    outcome(
        OpResult::Submitted {
            task: Box::new(task),
            created: false,
            claimed: false,
        },
        vec![],
    )
}

async fn submit(tx: &mut Tx<'_>, p: &SubmitParams) -> Result<OpOutcome> {
    let user = p.user_id.as_deref().unwrap_or("");
    if p.mode == IdempotencyMode::AtMostOnce
        && let Some(task) = find_by_key(tx, &p.key, user).await?
    {
        return Ok(existing(task));
    }
    let (status, attempt, last_seq) = match p.claim {
        Some(_) => (TaskStatus::Running, 1, 2),
        None => (TaskStatus::Pending, 0, 1),
    };
    let inserted = sqlx::query(
        "INSERT INTO tasks (id, name, idempotency_key, user_id, input, status, attempt, \
         max_attempts, auto_recover, owner_node, lease_expires_at, run_at, created_at, \
         updated_at, last_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, \
         $12, $13) ON CONFLICT DO NOTHING",
    )
    .bind(&p.id)
    .bind(&p.name)
    .bind(&p.key)
    .bind(user)
    .bind(&p.input)
    .bind(status.as_str())
    .bind(attempt)
    .bind(int(p.max_attempts))
    .bind(p.auto_recover)
    .bind(p.claim.as_ref().map(|c| c.node.as_str()))
    .bind(p.claim.as_ref().map(|c| c.lease_until))
    .bind(p.now)
    .bind(last_seq)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        let task = find_by_key(tx, &p.key, user)
            .await?
            .ok_or_else(|| corrupt("idempotency conflict without a visible task".to_owned()))?;
        return Ok(existing(task));
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

/// Inserts events with consecutive seqs starting at `first_seq`, in one statement.
async fn insert_events(
    tx: &mut Tx<'_>,
    task_id: &str,
    first_seq: i64,
    events: &[NewEvent],
    now: i64,
) -> Result<Vec<TaskEvent>> {
    if events.is_empty() {
        return Ok(vec![]);
    }
    let seqs: Vec<i64> = (0..events.len())
        .map(|i| first_seq + i64::try_from(i).unwrap_or(0))
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    let payloads: Vec<Value> = events.iter().map(|e| e.payload.clone()).collect();
    sqlx::query(
        "INSERT INTO task_events (task_id, seq, kind, name, payload, created_at) \
         SELECT $1, s, k, n, p, $6 FROM unnest($2::bigint[], $3::text[], $4::text[], $5::jsonb[]) \
         AS t(s, k, n, p)",
    )
    .bind(task_id)
    .bind(&seqs)
    .bind(&kinds)
    .bind(&names)
    .bind(&payloads)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(events
        .iter()
        .zip(seqs)
        .map(|(ev, seq)| TaskEvent {
            task_id: task_id.to_owned(),
            seq: u64::try_from(seq).unwrap_or(0),
            kind: ev.kind,
            name: ev.name.clone(),
            payload: ev.payload.clone(),
            created_at: now,
        })
        .collect())
}

async fn claim(tx: &mut Tx<'_>, p: &ClaimParams) -> Result<OpOutcome> {
    let mut budget = p.budget.clone();
    if budget.global == 0 || p.names.is_empty() {
        let result = OpResult::Claimed {
            tasks: vec![],
            more: budget.global == 0,
        };
        return Ok(outcome(result, vec![]));
    }
    let window = budget.window();
    let candidates = sqlx::query(
        "SELECT id, user_id, name, recovery, auto_recover FROM tasks \
         WHERE status = 'pending' AND run_at <= $1 AND name = ANY($2) \
         ORDER BY run_at, id LIMIT $3 FOR UPDATE SKIP LOCKED",
    )
    .bind(p.now)
    .bind(&p.names)
    .bind(i64::try_from(window).unwrap_or(1024))
    .fetch_all(&mut **tx)
    .await?;
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
        let ids: Vec<&str> = chosen.keys().map(String::as_str).collect();
        let rows = sqlx::query(concat!(
            "UPDATE tasks SET status = 'running', attempt = attempt + 1, owner_node = $1, \
             lease_expires_at = $2, control = NULL, recovery = FALSE, last_seq = last_seq + 1, \
             updated_at = $3 WHERE id = ANY($4) AND status = 'pending' RETURNING ",
            task_cols!()
        ))
        .bind(&p.node)
        .bind(p.lease_until)
        .bind(p.now)
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await?;
        for row in &rows {
            let task = task_from_row(row)?;
            let seq = i64::try_from(task.last_seq).unwrap_or(i64::MAX);
            events.extend(
                insert_events(tx, &task.id, seq, &[started_event(task.attempt)], p.now).await?,
            );
            let (recovery, auto_recover) = chosen.get(&task.id).copied().unwrap_or_default();
            claimed.push(ClaimedTask {
                task,
                recovery,
                auto_recover,
            });
        }
    }
    let result = OpResult::Claimed {
        tasks: claimed,
        more: more || skipped,
    };
    Ok(outcome(result, events))
}

async fn emit(
    tx: &mut Tx<'_>,
    fence: &Fence,
    events: &[NewEvent],
    step: Option<(&String, &Value)>,
) -> Result<OpOutcome> {
    let now = super::now_ms();
    let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
    let last: Option<i64> = sqlx::query_scalar(
        "UPDATE tasks SET last_seq = last_seq + $1, updated_at = $2 \
         WHERE id = $3 AND owner_node = $4 AND attempt = $5 AND status = 'running' \
         RETURNING last_seq",
    )
    .bind(n)
    .bind(now)
    .bind(&fence.task_id)
    .bind(&fence.node)
    .bind(int(fence.attempt))
    .fetch_optional(&mut **tx)
    .await?;
    let Some(last) = last else {
        return Ok(outcome(OpResult::Fenced, vec![]));
    };
    if let Some((name, result)) = step {
        sqlx::query(
            "INSERT INTO task_steps (task_id, name, result, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&fence.task_id)
        .bind(name)
        .bind(result)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    let events = insert_events(tx, &fence.task_id, last - n + 1, events, now).await?;
    Ok(outcome(OpResult::Applied, events))
}

async fn finish(tx: &mut Tx<'_>, fence: &Fence, finish: &Finish, now: i64) -> Result<OpOutcome> {
    let (status, result, error, run_at, event) = super::effects::finish_effects(fence, finish, now);
    let bump = i64::from(event.is_some());
    let release = matches!(finish, Finish::Release);
    let last: Option<i64> = sqlx::query_scalar(
        "UPDATE tasks SET status = $1, result = coalesce($2, result), \
         error = coalesce($3, error), run_at = coalesce($4, run_at), owner_node = NULL, \
         lease_expires_at = NULL, control = NULL, attempt = attempt - $5, recovery = $6, \
         last_seq = last_seq + $7, updated_at = $8 \
         WHERE id = $9 AND owner_node = $10 AND attempt = $11 AND status = 'running' \
         RETURNING last_seq",
    )
    .bind(status.as_str())
    .bind(result)
    .bind(error)
    .bind(run_at)
    .bind(i32::from(release))
    .bind(release)
    .bind(bump)
    .bind(now)
    .bind(&fence.task_id)
    .bind(&fence.node)
    .bind(int(fence.attempt))
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
    let row = sqlx::query("SELECT status FROM tasks WHERE id = $1 FOR UPDATE")
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
            sqlx::query("UPDATE tasks SET control = 'stop' WHERE id = $1 AND status = 'running'")
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
        return Ok(unchanged());
    };
    let last: Option<i64> = sqlx::query_scalar(
        "UPDATE tasks SET status = $1, run_at = CASE WHEN $1 = 'pending' THEN $2 ELSE run_at END, \
         max_attempts = CASE WHEN status = 'failed' THEN attempt + max_attempts ELSE max_attempts END, \
         owner_node = CASE WHEN $1 = 'cancelled' THEN NULL ELSE owner_node END, \
         lease_expires_at = CASE WHEN $1 = 'cancelled' THEN NULL ELSE lease_expires_at END, \
         last_seq = last_seq + 1, updated_at = $2 WHERE id = $3 AND status = $4 RETURNING last_seq",
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
        "UPDATE tasks SET lease_expires_at = $1 WHERE owner_node = $2 AND status = 'running' \
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
                attempt: u32::try_from(r.try_get::<i32, _>(1)?).unwrap_or(0),
                stop_requested: r.try_get::<Option<String>, _>(2)?.as_deref() == Some("stop"),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(outcome(OpResult::Renewed(leases), vec![]))
}

async fn reap(tx: &mut Tx<'_>, now: i64, cutoff: i64, all: bool) -> Result<OpOutcome> {
    let rows = sqlx::query(
        "SELECT id, attempt, max_attempts, auto_recover, created_at FROM tasks \
         WHERE status = 'running' AND ($1 OR lease_expires_at < $2) FOR UPDATE SKIP LOCKED",
    )
    .bind(all)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    let mut events = Vec::new();
    for r in &rows {
        let id: String = r.try_get(0)?;
        let attempt: i32 = r.try_get(1)?;
        let max_attempts: i32 = r.try_get(2)?;
        let (status, error, event) = recovery_decision(
            i64::from(attempt),
            i64::from(max_attempts),
            r.try_get(3)?,
            r.try_get::<i64, _>(4)? < cutoff,
        );
        let last: Option<i64> = sqlx::query_scalar(
            "UPDATE tasks SET status = $1, error = coalesce($2, error), owner_node = NULL, \
             lease_expires_at = NULL, control = NULL, recovery = TRUE, run_at = $3, \
             last_seq = last_seq + 1, updated_at = $3 \
             WHERE id = $4 AND status = 'running' AND attempt = $5 RETURNING last_seq",
        )
        .bind(status.as_str())
        .bind(error)
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
    let ids: Vec<String> = sqlx::query_scalar(
        "DELETE FROM tasks WHERE \
         (status IN ('completed', 'failed', 'cancelled') AND updated_at < $1) \
         OR (status = 'suspended' AND updated_at < $2) RETURNING id",
    )
    .bind(terminal_before)
    .bind(suspended_before)
    .fetch_all(&mut **tx)
    .await?;
    if !ids.is_empty() {
        sqlx::query("DELETE FROM task_events WHERE task_id = ANY($1)")
            .bind(&ids)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM task_steps WHERE task_id = ANY($1)")
            .bind(&ids)
            .execute(&mut **tx)
            .await?;
    }
    let n = u64::try_from(ids.len()).unwrap_or(0);
    Ok(outcome(OpResult::Count(n), vec![]))
}

fn parse_status(s: &str) -> Result<TaskStatus> {
    TaskStatus::parse(s).ok_or_else(|| corrupt(format!("unknown task status `{s}`")))
}

fn corrupt(msg: String) -> Error {
    Error::StoreUnavailable(std::sync::Arc::new(sqlx::Error::Protocol(msg)))
}

fn task_from_row(row: &PgRow) -> Result<TaskInfo> {
    let user: String = row.try_get(3)?;
    Ok(TaskInfo {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        idempotency_key: row.try_get(2)?,
        user_id: (!user.is_empty()).then_some(user),
        input: row.try_get(4)?,
        status: parse_status(&row.try_get::<String, _>(5)?)?,
        attempt: u32::try_from(row.try_get::<i32, _>(6)?).unwrap_or(0),
        max_attempts: u32::try_from(row.try_get::<i32, _>(7)?).unwrap_or(0),
        result: row.try_get(8)?,
        error: row.try_get(9)?,
        last_seq: u64::try_from(row.try_get::<i64, _>(10)?).unwrap_or(0),
        created_at: row.try_get(11)?,
        updated_at: row.try_get(12)?,
    })
}

fn event_from_row(row: &PgRow) -> Result<TaskEvent> {
    let kind: String = row.try_get(2)?;
    Ok(TaskEvent {
        task_id: row.try_get(0)?,
        seq: u64::try_from(row.try_get::<i64, _>(1)?).unwrap_or(0),
        kind: EventKind::parse(&kind)
            .ok_or_else(|| corrupt(format!("unknown event kind `{kind}`")))?,
        name: row.try_get(3)?,
        payload: row.try_get(4)?,
        created_at: row.try_get(5)?,
    })
}
