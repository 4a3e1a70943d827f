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
use serde_json::Value;
use sqlx::postgres::{PgListener, PgPool, PgRow};
use sqlx::{Postgres, Row, Transaction};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::effects::recovery_decision;
use super::effects::{append_events, created, existing, outcome, submit_shape};
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
        let mut tx = Tx {
            inner: self.pool.begin().await?,
            events: Vec::new(),
        };
        // Submits and attempt outcomes in bulk (one statement each for the batch), then the
        // rest in queue order; ops in one batch are concurrent, so any order is valid.
        let mut out: Vec<Option<OpOutcome>> = vec![None; ops.len()];
        submit_all(&mut tx, ops, &mut out).await?;
        finish_all(&mut tx, ops, &mut out).await?;
        for (op, slot) in ops.iter().zip(out.iter_mut()) {
            if slot.is_none() {
                *slot = Some(apply(&mut tx, op).await?);
            }
        }
        let out: Vec<OpOutcome> = out.into_iter().flatten().collect();
        let work = ops.iter().zip(&out).any(|(op, o)| creates_work(op, o));
        flush_events(&mut tx).await?;
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
                .execute(tx.conn())
                .await?;
        }
        if work {
            sqlx::query("SELECT pg_notify('taskflow_work', $1)")
                .bind(format!("{}:", self.instance))
                .execute(tx.conn())
                .await?;
        }
        tx.inner.commit().await?;
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

/// A batch's transaction plus the events its ops appended, written in bulk before commit.
struct Tx<'a> {
    inner: Transaction<'a, Postgres>,
    events: Vec<TaskEvent>,
}

impl Tx<'_> {
    fn conn(&mut self) -> &mut sqlx::PgConnection {
        &mut self.inner
    }
}

/// Writes the batch's events in one statement.
async fn flush_events(tx: &mut Tx<'_>) -> Result<()> {
    let events = std::mem::take(&mut tx.events);
    if events.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = events.iter().map(|e| e.task_id.as_str()).collect();
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| i64::try_from(e.seq).unwrap_or(i64::MAX))
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    let payloads: Vec<&Value> = events.iter().map(|e| &e.payload).collect();
    let times: Vec<i64> = events.iter().map(|e| e.created_at).collect();
    sqlx::query(
        "INSERT INTO task_events (task_id, seq, kind, name, payload, created_at) \
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::jsonb[], \
         $6::bigint[])",
    )
    .bind(&ids)
    .bind(&seqs)
    .bind(&kinds)
    .bind(&names)
    .bind(&payloads)
    .bind(&times)
    .execute(tx.conn())
    .await?;
    Ok(())
}

async fn apply(tx: &mut Tx<'_>, op: &WriteOp) -> Result<OpOutcome> {
    match op {
        WriteOp::Submit(_) | WriteOp::Finish { .. } => Err(corrupt(
            "submit and finish ops are applied in bulk".to_owned(),
        )),
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
    .fetch_optional(tx.conn())
    .await?;
    row.map(|r| task_from_row(&r)).transpose()
}

/// Applies every `Submit` of the batch: one multi-row insert (in key order, so two
/// processes inserting the same keys cannot deadlock), then per-op outcomes.
async fn submit_all(tx: &mut Tx<'_>, ops: &[WriteOp], out: &mut [Option<OpOutcome>]) -> Result<()> {
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
        inserting.push(i);
    }
    if inserting.is_empty() {
        return Ok(());
    }
    let params: Vec<&SubmitParams> = inserting
        .iter()
        .filter_map(|&i| match &ops[i] {
            WriteOp::Submit(p) => Some(p),
            _ => None,
        })
        .collect();
    let shapes: Vec<_> = params.iter().map(|p| submit_shape(p)).collect();
    let inserted: Vec<String> = sqlx::query_scalar(
        "INSERT INTO tasks (id, name, idempotency_key, user_id, input, status, attempt, \
         max_attempts, auto_recover, owner_node, lease_expires_at, run_at, created_at, \
         updated_at, last_seq) \
         SELECT id, name, key, usr, input, status, attempt, max_attempts, auto_recover, node, \
         lease, now, now, now, last_seq \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::text[], \
         $7::int[], $8::int[], $9::bool[], $10::text[], $11::bigint[], $12::bigint[], \
         $13::bigint[]) AS v(id, name, key, usr, input, status, attempt, max_attempts, \
         auto_recover, node, lease, now, last_seq) \
         ORDER BY key, usr ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(params.iter().map(|p| p.id.as_str()).collect::<Vec<_>>())
    .bind(params.iter().map(|p| p.name.as_str()).collect::<Vec<_>>())
    .bind(params.iter().map(|p| p.key.as_str()).collect::<Vec<_>>())
    .bind(
        params
            .iter()
            .map(|p| p.user_id.as_deref().unwrap_or(""))
            .collect::<Vec<_>>(),
    )
    .bind(params.iter().map(|p| &p.input).collect::<Vec<_>>())
    .bind(shapes.iter().map(|s| s.0.as_str()).collect::<Vec<_>>())
    .bind(shapes.iter().map(|s| int(s.1)).collect::<Vec<i32>>())
    .bind(
        params
            .iter()
            .map(|p| int(p.max_attempts))
            .collect::<Vec<_>>(),
    )
    .bind(params.iter().map(|p| p.auto_recover).collect::<Vec<_>>())
    .bind(
        params
            .iter()
            .map(|p| p.claim.as_ref().map(|c| c.node.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(
        params
            .iter()
            .map(|p| p.claim.as_ref().map(|c| c.lease_until))
            .collect::<Vec<_>>(),
    )
    .bind(params.iter().map(|p| p.now).collect::<Vec<_>>())
    .bind(
        shapes
            .iter()
            .map(|s| i64::try_from(s.2).unwrap_or(i64::MAX))
            .collect::<Vec<i64>>(),
    )
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
                .ok_or_else(|| corrupt("idempotency conflict without a visible task".to_owned()))?;
            existing(task)
        });
    }
    Ok(())
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
    .fetch_all(tx.conn())
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
    .fetch_optional(tx.conn())
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
        .execute(tx.conn())
        .await?;
    }
    let events = append_events(&mut tx.events, &fence.task_id, last - n + 1, events, now);
    Ok(outcome(OpResult::Applied, events))
}

/// Applies every `Finish` of the batch in one fenced multi-row update.
async fn finish_all(tx: &mut Tx<'_>, ops: &[WriteOp], out: &mut [Option<OpOutcome>]) -> Result<()> {
    let mut rows = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let WriteOp::Finish {
            fence,
            outcome: finish,
            now,
        } = op
        else {
            continue;
        };
        let effects = super::effects::finish_effects(fence, finish, *now);
        rows.push((i, fence, matches!(finish, Finish::Release), *now, effects));
    }
    if rows.is_empty() {
        return Ok(());
    }
    let applied: Vec<(String, i64)> = sqlx::query_as(
        "UPDATE tasks SET status = v.status, result = coalesce(v.result, tasks.result), \
         error = coalesce(v.error, tasks.error), run_at = coalesce(v.run_at, tasks.run_at), \
         owner_node = NULL, lease_expires_at = NULL, control = NULL, \
         attempt = tasks.attempt - v.dec, recovery = v.dec = 1, \
         last_seq = tasks.last_seq + v.bump, updated_at = v.now \
         FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::jsonb[], $6::jsonb[], \
         $7::bigint[], $8::int[], $9::bigint[], $10::bigint[]) \
         AS v(id, node, attempt, status, result, error, run_at, dec, bump, now) \
         WHERE tasks.id = v.id AND tasks.owner_node = v.node AND tasks.attempt = v.attempt \
         AND tasks.status = 'running' RETURNING tasks.id, tasks.last_seq",
    )
    .bind(
        rows.iter()
            .map(|r| r.1.task_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.1.node.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| int(r.1.attempt)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.4.0.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.4.1.as_ref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.4.2.as_ref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.4.3).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| i32::from(r.2)).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| i64::from(r.4.4.is_some()))
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.3).collect::<Vec<_>>())
    .fetch_all(tx.conn())
    .await?;
    let applied: HashMap<String, i64> = applied.into_iter().collect();
    for (i, fence, _, now, (_, _, _, _, event)) in rows {
        out[i] = Some(match applied.get(&fence.task_id) {
            None => outcome(OpResult::Fenced, vec![]),
            Some(&last) => {
                let events = match event {
                    Some(ev) => append_events(&mut tx.events, &fence.task_id, last, &[ev], now),
                    None => vec![],
                };
                outcome(OpResult::Applied, events)
            }
        });
    }
    Ok(())
}

async fn control(tx: &mut Tx<'_>, id: &str, action: Control, now: i64) -> Result<OpOutcome> {
    let row = sqlx::query("SELECT status FROM tasks WHERE id = $1 FOR UPDATE")
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
            sqlx::query("UPDATE tasks SET control = 'stop' WHERE id = $1 AND status = 'running'")
                .bind(id)
                .execute(tx.conn())
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
        "UPDATE tasks SET lease_expires_at = $1 WHERE owner_node = $2 AND status = 'running' \
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
    .fetch_all(tx.conn())
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
    let ids: Vec<String> = sqlx::query_scalar(
        "DELETE FROM tasks WHERE \
         (status IN ('completed', 'failed', 'cancelled') AND updated_at < $1) \
         OR (status = 'suspended' AND updated_at < $2) RETURNING id",
    )
    .bind(terminal_before)
    .bind(suspended_before)
    .fetch_all(tx.conn())
    .await?;
    if !ids.is_empty() {
        sqlx::query("DELETE FROM task_events WHERE task_id = ANY($1)")
            .bind(&ids)
            .execute(tx.conn())
            .await?;
        sqlx::query("DELETE FROM task_steps WHERE task_id = ANY($1)")
            .bind(&ids)
            .execute(tx.conn())
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
