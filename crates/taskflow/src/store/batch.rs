//! The batch algorithm, written once for both backends: one call applies a batch of ops
//! inside the caller's transaction and returns one outcome per op.
//!
//! Submits, runners' event appends and step checkpoints, and attempt outcomes are applied
//! in bulk (one statement each for the whole batch), then everything else in queue order;
//! ops in one batch are concurrent, so any order of them is a valid serialization. Events
//! get their seqs here and are written in one statement before the commit. Every runner
//! write is fenced by `(node, epoch)`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};

use serde::Serialize;
use serde_json::Value;

use super::effects::{
    control_effect, created_events, finish_effect, recovery_decision, started_event, submit_shape,
};
use super::ops::{
    ClaimParams, ClaimedTask, Control, Fence, Finish, OpOutcome, OpResult, RenewedLease,
    SubmitParams, WriteOp,
};
use super::rows::{
    CandidateRow, ClaimedRow, FencedSeqRow, IdRow, LeaseRow, ReapRow, SeqRow, StatusRow, TaskRow,
    parse_status,
};
use super::sql::{Arg, Sql, SqlConn, args};
use crate::error::{Error, Result};
use crate::event::{NewEvent, TaskEvent};
use crate::key::key_hash;
use crate::task::{IdempotencyMode, TaskInfo, TaskStatus};

/// Rows one purge deletes at most; the cleaner comes back for the rest.
pub const PURGE_LIMIT: i64 = 5_000;

/// How far below the claim's clock the next claim's scan starts (milliseconds): room for
/// commits that became visible late and for other processes' clocks.
const CLAIM_MARGIN_MS: i64 = 1_000;

/// How often a claim scans every pending task, whatever the cursor says (milliseconds).
const CLAIM_RESCAN_MS: i64 = 1_000;

/// Where a claim's scan of the pending index starts: `run_at >= low`.
///
/// A Postgres index keeps an entry for every row version until VACUUM, so the pending
/// index's oldest end fills with entries of tasks claimed long ago. A claim scanning it
/// from its start would step over all of them, a cost that grows with every task ever
/// claimed (8.7 ms per claim after 100,000 tasks, with nothing pending). The cursor starts
/// the scan just below the oldest task the last claim saw, or just below the last claim's
/// time; once per [`CLAIM_RESCAN_MS`] a claim scans from the start, so a task that became
/// pending below the cursor (a late commit, another process's clock) waits at most that
/// long. A hint only: any value is correct, a low one is merely slower.
#[derive(Debug)]
pub(crate) struct ClaimCursor {
    low: AtomicI64,
    rescan_at: AtomicI64,
    /// The last claim's clock: a clock that went back means a full scan.
    last: AtomicI64,
}

impl Default for ClaimCursor {
    fn default() -> Self {
        Self {
            low: AtomicI64::new(i64::MIN),
            rescan_at: AtomicI64::new(i64::MIN),
            last: AtomicI64::new(i64::MIN),
        }
    }
}

impl ClaimCursor {
    /// The lower bound of a claim at `now`.
    fn start(&self, now: i64) -> i64 {
        let last = self.last.swap(now, Ordering::Relaxed);
        if now < last || now >= self.rescan_at.load(Ordering::Relaxed) {
            self.rescan_at
                .store(now.saturating_add(CLAIM_RESCAN_MS), Ordering::Relaxed);
            return i64::MIN;
        }
        self.low.load(Ordering::Relaxed)
    }

    /// A task became pending here, due at `run_at` or later: the next claim starts low
    /// enough to see it, whatever the clocks say.
    fn lower(&self, run_at: i64) {
        self.low.fetch_min(run_at, Ordering::Relaxed);
    }

    /// After a claim at `now` whose oldest candidate was due at `oldest`.
    fn advance(&self, now: i64, oldest: Option<i64>) {
        let low = now
            .saturating_sub(CLAIM_MARGIN_MS)
            .min(oldest.unwrap_or(i64::MAX));
        self.low.store(low, Ordering::Relaxed);
    }
}

/// One batch in one transaction.
pub(crate) struct Batch<'c, C: SqlConn> {
    conn: &'c mut C,
    sql: &'static Sql,
    cursor: &'c ClaimCursor,
    /// This batch's commit marker (never purged by the batch itself).
    batch_id: String,
    /// Events appended by the batch's ops, written in one statement before commit.
    events: Vec<TaskEvent>,
}

impl<'c, C: SqlConn> Batch<'c, C> {
    pub(crate) fn new(
        conn: &'c mut C,
        sql: &'static Sql,
        cursor: &'c ClaimCursor,
        batch_id: &str,
    ) -> Self {
        Self {
            conn,
            sql,
            cursor,
            batch_id: batch_id.to_owned(),
            events: Vec::new(),
        }
    }

    /// Applies `ops` inside the transaction the caller opened. Where the dialect ends a
    /// batch in one statement ([`Sql::close_batch`]) the events wait for it
    /// ([`close_args`](Self::close_args)); otherwise they are written (and other processes notified)
    /// here, and the caller commits.
    pub(crate) async fn apply(
        &mut self,
        instance: &str,
        ops: &[WriteOp],
    ) -> Result<Vec<OpOutcome>> {
        let mut out: Vec<Option<OpOutcome>> = vec![None; ops.len()];
        self.submit_all(ops, &mut out).await?;
        self.runner_writes_all(ops, &mut out).await?;
        self.finish_all(ops, &mut out).await?;
        for (op, slot) in ops.iter().zip(out.iter()) {
            if let Some(o) = slot {
                self.lower_cursor(op, o);
            }
        }
        for (op, slot) in ops.iter().zip(out.iter_mut()) {
            if slot.is_none() {
                let o = self.apply_one(op).await?;
                self.lower_cursor(op, &o);
                *slot = Some(o);
            }
        }
        let out: Vec<OpOutcome> = out.into_iter().flatten().collect();
        if self.sql.close_batch.is_none() {
            self.flush_events().await?;
            self.notify(instance, ops, &out).await?;
        }
        Ok(out)
    }

    /// The arguments of [`Sql::close_batch`] for this batch (its events, its commit
    /// marker); the caller sends that statement and settles an error of it by the marker.
    pub(crate) fn close_args(self, now: i64) -> Result<Vec<Arg>> {
        let rows: Vec<EventDoc<'_>> = self.events.iter().map(EventDoc::from).collect();
        Ok(args![json_text(&rows)?, self.batch_id, now])
    }

    /// Lowers the claim cursor to the clock of an op that left claimable work behind
    /// (its tasks are due at that time or later).
    fn lower_cursor(&self, op: &WriteOp, o: &OpOutcome) {
        if !creates_work(op, o) {
            return;
        }
        let now = match op {
            WriteOp::Submit(p) => p.now,
            WriteOp::Finish { now, .. }
            | WriteOp::Control { now, .. }
            | WriteOp::Reap { now, .. } => *now,
            _ => return,
        };
        self.cursor.lower(now);
    }

    async fn apply_one(&mut self, op: &WriteOp) -> Result<OpOutcome> {
        match op {
            WriteOp::Submit(_)
            | WriteOp::Emit { .. }
            | WriteOp::Step { .. }
            | WriteOp::Finish { .. } => Err(Error::internal(
                "submit, emit, step and finish ops are applied in bulk",
            )),
            WriteOp::Claim(p) => self.claim(p).await,
            WriteOp::Control {
                task_id,
                action,
                now,
            } => self.control(task_id, *action, *now).await,
            WriteOp::LeaseRenew { node, until } => self.lease_renew(node, *until).await,
            WriteOp::Reap {
                now,
                max_age_cutoff,
                all,
            } => self.reap(*now, *max_age_cutoff, *all).await,
            WriteOp::Purge {
                terminal_before,
                suspended_before,
                batches_before,
            } => {
                self.purge(*terminal_before, *suspended_before, *batches_before)
                    .await
            }
        }
    }

    /// Gives `events` consecutive seqs from `first_seq` and queues them for the batch.
    fn append(
        &mut self,
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
        self.events.extend(out.iter().cloned());
        out
    }

    async fn find_by_key(&mut self, key: &str, user: &str) -> Result<Option<TaskInfo>> {
        let row: Option<TaskRow> = self
            .conn
            .fetch_optional(self.sql.find_by_key, args![key, user, key_hash(key, user)])
            .await?;
        row.map(TaskInfo::try_from).transpose()
    }

    /// Every `Submit` of the batch: one multi-row insert that skips keys held by a live
    /// task, then per-op outcomes (a skipped op attaches to the task that holds its key).
    /// Submits of one key within the batch make one task: the first inserts, the others
    /// attach to it (the insert statement cannot see its own rows).
    async fn submit_all(&mut self, ops: &[WriteOp], out: &mut [Option<OpOutcome>]) -> Result<()> {
        let mut rows = Vec::new();
        let mut inserting = Vec::new();
        let mut first_of_key: HashMap<(&str, &str), usize> = HashMap::new();
        let mut repeats = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let WriteOp::Submit(p) = op else { continue };
            let user = p.user_id.as_deref().unwrap_or("");
            if let Some(&first) = first_of_key.get(&(p.key.as_str(), user)) {
                repeats.push((i, first));
                continue;
            }
            if p.mode == IdempotencyMode::AtMostOnce
                && let Some(task) = self.find_by_key(&p.key, user).await?
            {
                out[i] = Some(existing(task));
                continue;
            }
            first_of_key.insert((p.key.as_str(), user), i);
            rows.push(NewTaskDoc::new(p));
            inserting.push((i, p));
        }
        if !rows.is_empty() {
            let inserted: Vec<IdRow> = self
                .conn
                .fetch_all(self.sql.insert_tasks, args![json_text(&rows)?])
                .await?;
            let inserted: HashSet<String> = inserted.into_iter().map(|r| r.id).collect();
            for (i, p) in inserting {
                out[i] = Some(if inserted.contains(&p.id) {
                    self.created(p)
                } else {
                    let user = p.user_id.as_deref().unwrap_or("");
                    let task = self.find_by_key(&p.key, user).await?.ok_or_else(|| {
                        Error::corrupt("idempotency conflict without a visible task".to_owned())
                    })?;
                    existing(task)
                });
            }
        }
        for (i, first) in repeats {
            out[i] = Some(match out[first].as_ref().map(|o| &o.result) {
                Some(OpResult::Submitted { task, .. }) => existing((**task).clone()),
                _ => return Err(Error::corrupt("a repeated key without its first submit")),
            });
        }
        Ok(())
    }

    fn created(&mut self, p: &SubmitParams) -> OpOutcome {
        let (status, attempt, _, last_seq) = submit_shape(p);
        let events = self.append(&p.id, 1, &created_events(p), p.now);
        let task = TaskInfo {
            id: p.id.clone(),
            name: p.name.clone(),
            idempotency_key: p.key.clone(),
            user_id: p.user_id.clone(),
            input: p.input.clone(),
            status,
            attempt,
            max_attempts: p.max_attempts,
            recoveries: 0,
            result: None,
            error: None,
            last_seq,
            created_at: p.now,
            updated_at: p.now,
        };
        OpOutcome {
            result: OpResult::Submitted {
                task: Box::new(task),
                created: true,
                claimed: p.claim.is_some(),
            },
            events,
        }
    }

    /// Claims ready tasks oldest first, admitting each against the slot budget.
    async fn claim(&mut self, p: &ClaimParams) -> Result<OpOutcome> {
        let mut budget = p.budget.clone();
        if budget.global == 0 || p.names.is_empty() {
            let more = budget.global == 0;
            return Ok(result(OpResult::Claimed {
                tasks: vec![],
                more,
            }));
        }
        let names = json_text(&p.names)?;
        let from = self.cursor.start(p.now);
        // One candidate more than there are free slots (that one only tells whether more
        // work waits). Only when a per-user or per-name limit refused candidates while
        // slots remain does the claim read again, further (up to `window`), so the common
        // claim reads no row it will not take.
        let mut limit = budget.global.saturating_add(1);
        let mut chosen: HashMap<String, (bool, bool)> = HashMap::new();
        let mut refused: HashSet<String> = HashSet::new();
        let window = p.budget.window();
        let mut skipped = false;
        let mut first_read = true;
        let more = loop {
            let candidates: Vec<CandidateRow> = self
                .conn
                .fetch_all(
                    self.sql.claim_candidates,
                    args![
                        p.now,
                        names.as_str(),
                        i64::try_from(limit).unwrap_or(1024),
                        from
                    ],
                )
                .await?;
            if first_read {
                self.cursor
                    .advance(p.now, candidates.first().map(|c| c.run_at));
                first_read = false;
            }
            let full = candidates.len() >= limit;
            let mut limited = false;
            for c in candidates {
                if chosen.contains_key(&c.id) || refused.contains(&c.id) {
                    continue;
                }
                let user = (!c.user_id.is_empty()).then_some(c.user_id.as_str());
                if budget.admit(user, &c.name) {
                    chosen.insert(c.id, (c.recovery, c.auto_recover));
                } else {
                    skipped = true;
                    limited |= budget.global > 0;
                    refused.insert(c.id);
                }
            }
            if limited && full && budget.global > 0 && window > limit {
                limit = window;
                continue;
            }
            break full;
        };
        let mut tasks = Vec::with_capacity(chosen.len());
        let mut events = Vec::with_capacity(chosen.len());
        if !chosen.is_empty() {
            let ids = json_text(&chosen.keys().collect::<Vec<_>>())?;
            let rows: Vec<ClaimedRow> = self
                .conn
                .fetch_all(
                    self.sql.claim_mark,
                    args![&p.node, p.lease_until, p.now, ids],
                )
                .await?;
            for row in rows {
                let epoch = super::rows::count(row.epoch, "epoch")?;
                let task = TaskInfo::try_from(row.task)?;
                let (recovery, auto_recover) = chosen.get(&task.id).copied().unwrap_or_default();
                let started = started_event(task.attempt, recovery, task.recoveries);
                let seq = i64::try_from(task.last_seq).unwrap_or(i64::MAX);
                events.extend(self.append(&task.id, seq, &[started], p.now));
                tasks.push(ClaimedTask {
                    task,
                    epoch,
                    recovery,
                    auto_recover,
                });
            }
        }
        Ok(OpOutcome {
            result: OpResult::Claimed {
                tasks,
                more: more || skipped,
            },
            events,
        })
    }

    /// Every `Emit` and `Step` of the batch: one fenced multi-row update reserves each
    /// run's seqs, the events get them in queue order, and the checkpoints of the runs
    /// whose fence held go in one insert. A run's ops are grouped first (a handler may
    /// emit concurrently): an update applies at most one source row per task.
    async fn runner_writes_all(
        &mut self,
        ops: &[WriteOp],
        out: &mut [Option<OpOutcome>],
    ) -> Result<()> {
        let mut groups: Vec<RunWrites<'_>> = Vec::new();
        let mut group_of: HashMap<&Fence, usize> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            let (fence, events, step) = match op {
                WriteOp::Emit { fence, events } => (fence, events, None),
                WriteOp::Step {
                    fence,
                    name,
                    result,
                    events,
                } => (fence, events, Some((name.as_str(), result))),
                _ => continue,
            };
            let g = *group_of.entry(fence).or_insert_with(|| {
                groups.push(RunWrites {
                    fence,
                    n: 0,
                    ops: Vec::new(),
                });
                groups.len() - 1
            });
            groups[g].n += i64::try_from(events.len()).unwrap_or(i64::MAX);
            groups[g].ops.push((i, events, step));
        }
        if groups.is_empty() {
            return Ok(());
        }
        let now = super::now_ms();
        let rows: Vec<ReserveDoc<'_>> = groups
            .iter()
            .map(|g| ReserveDoc {
                id: &g.fence.task_id,
                node: &g.fence.node,
                epoch: g.fence.epoch,
                n: g.n,
                now,
            })
            .collect();
        let applied: Vec<FencedSeqRow> = self
            .conn
            .fetch_all(self.sql.bump_seqs, args![json_text(&rows)?])
            .await?;
        let applied: HashMap<Fence, i64> = applied
            .into_iter()
            .map(|r| {
                let fence = Fence {
                    task_id: r.id,
                    node: r.node,
                    epoch: super::rows::count(r.epoch, "epoch")?,
                };
                Ok((fence, r.last_seq))
            })
            .collect::<Result<_>>()?;
        let mut steps = Vec::new();
        for g in groups {
            let Some(&last_seq) = applied.get(g.fence) else {
                for (i, _, _) in g.ops {
                    out[i] = Some(result(OpResult::Fenced));
                }
                continue;
            };
            let mut next = last_seq - g.n + 1;
            for (i, events, step) in g.ops {
                let appended = self.append(&g.fence.task_id, next, events, now);
                next += i64::try_from(events.len()).unwrap_or(i64::MAX);
                if let Some((name, result)) = step {
                    steps.push(StepDoc {
                        task_id: &g.fence.task_id,
                        name,
                        result,
                        now,
                    });
                }
                out[i] = Some(OpOutcome {
                    result: OpResult::Applied,
                    events: appended,
                });
            }
        }
        if !steps.is_empty() {
            self.conn
                .execute(self.sql.insert_steps, args![json_text(&steps)?])
                .await?;
        }
        Ok(())
    }

    /// Every `Finish` of the batch in one fenced multi-row update.
    async fn finish_all(&mut self, ops: &[WriteOp], out: &mut [Option<OpOutcome>]) -> Result<()> {
        let mut rows = Vec::new();
        let mut pending = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let WriteOp::Finish {
                fence,
                attempt,
                outcome,
                now,
            } = op
            else {
                continue;
            };
            let effect = finish_effect(*attempt, outcome, *now);
            rows.push(FinishDoc {
                id: &fence.task_id,
                node: &fence.node,
                epoch: fence.epoch,
                status: effect.status.as_str(),
                result: effect.result,
                error: effect.error,
                run_at: effect.run_at,
                give_back: i64::from(effect.give_back),
                bump: i64::from(effect.event.is_some()),
                now: *now,
            });
            pending.push((i, &fence.task_id, effect.event, *now));
        }
        if rows.is_empty() {
            return Ok(());
        }
        let applied: Vec<SeqRow> = self
            .conn
            .fetch_all(self.sql.finish, args![json_text(&rows)?])
            .await?;
        let applied: HashMap<String, i64> =
            applied.into_iter().map(|r| (r.id, r.last_seq)).collect();
        for (i, task_id, event, now) in pending {
            out[i] = Some(match applied.get(task_id.as_str()) {
                None => result(OpResult::Fenced),
                Some(&last) => OpOutcome {
                    result: OpResult::Applied,
                    events: match event {
                        Some(ev) => self.append(task_id, last, &[ev], now),
                        None => vec![],
                    },
                },
            });
        }
        Ok(())
    }

    /// A client's request: a conditional transition from the state read under lock.
    async fn control(&mut self, id: &str, action: Control, now: i64) -> Result<OpOutcome> {
        let row: Option<StatusRow> = self
            .conn
            .fetch_optional(self.sql.control_status, args![id])
            .await?;
        let Some(row) = row else {
            return Ok(result(OpResult::NotFound));
        };
        let from = parse_status(&row.status)?;
        let unchanged = result(OpResult::Controlled { from, to: from });
        let Some((to, event)) = control_effect(action, from) else {
            if action == Control::RequestStop && from == TaskStatus::Running {
                self.conn.execute(self.sql.request_stop, args![id]).await?;
            }
            return Ok(unchanged);
        };
        let updated: Option<SeqRow> = self
            .conn
            .fetch_optional(
                self.sql.control_update,
                args![to.as_str(), now, id, from.as_str()],
            )
            .await?;
        let Some(updated) = updated else {
            return Ok(unchanged);
        };
        let events = self.append(id, updated.last_seq, &[event], now);
        Ok(OpOutcome {
            result: OpResult::Controlled { from, to },
            events,
        })
    }

    async fn lease_renew(&mut self, node: &str, until: i64) -> Result<OpOutcome> {
        let rows: Vec<LeaseRow> = self
            .conn
            .fetch_all(self.sql.lease_renew, args![until, node])
            .await?;
        let leases = rows
            .into_iter()
            .map(|r| {
                Ok(RenewedLease {
                    epoch: super::rows::count(r.epoch, "epoch")?,
                    stop_requested: r.control.as_deref() == Some("stop"),
                    task_id: r.id,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(result(OpResult::Renewed(leases)))
    }

    /// Recovers running tasks whose lease expired (or every running task, with `all`).
    async fn reap(&mut self, now: i64, cutoff: i64, all: bool) -> Result<OpOutcome> {
        let rows: Vec<ReapRow> = self
            .conn
            .fetch_all(self.sql.reap_candidates, args![all, now])
            .await?;
        let mut events = Vec::new();
        for row in &rows {
            let decision = recovery_decision(row, row.created_at < cutoff);
            let updated: Option<SeqRow> = self
                .conn
                .fetch_optional(
                    self.sql.reap_update,
                    args![
                        decision.status.as_str(),
                        decision.error,
                        i64::from(decision.give_back),
                        now,
                        &row.id,
                        i64::from(row.epoch),
                    ],
                )
                .await?;
            if let Some(updated) = updated {
                events.extend(self.append(&row.id, updated.last_seq, &[decision.event], now));
            }
        }
        let n = u64::try_from(events.len()).unwrap_or(0);
        Ok(OpOutcome {
            result: OpResult::Count(n),
            events,
        })
    }

    /// Deletes old terminal and suspended tasks with their events and steps, and old
    /// commit markers.
    async fn purge(
        &mut self,
        terminal_before: i64,
        suspended_before: i64,
        batches_before: i64,
    ) -> Result<OpOutcome> {
        let ids: Vec<IdRow> = self
            .conn
            .fetch_all(
                self.sql.purge_ids,
                args![terminal_before, suspended_before, PURGE_LIMIT],
            )
            .await?;
        if !ids.is_empty() {
            let ids = json_text(&ids.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())?;
            for sql in [
                self.sql.purge_events,
                self.sql.purge_steps,
                self.sql.purge_tasks,
            ] {
                self.conn.execute(sql, args![ids.clone()]).await?;
            }
        }
        self.conn
            .execute(
                self.sql.purge_batches,
                args![batches_before, &self.batch_id],
            )
            .await?;
        let n = u64::try_from(ids.len()).unwrap_or(0);
        Ok(result(OpResult::Count(n)))
    }

    async fn flush_events(&mut self) -> Result<()> {
        if self.events.is_empty() {
            return Ok(());
        }
        let rows: Vec<EventDoc<'_>> = self.events.iter().map(EventDoc::from).collect();
        let rows = json_text(&rows)?;
        self.conn
            .execute(self.sql.insert_events, args![rows])
            .await?;
        Ok(())
    }

    /// Wakes other processes: subscribers of tasks with new events, executors when work
    /// became claimable. Only backends shared between processes have statements for it.
    /// Both kinds go in one statement, so a batch pays at most one round trip for them.
    async fn notify(&mut self, instance: &str, ops: &[WriteOp], out: &[OpOutcome]) -> Result<()> {
        let Some(sql) = self.sql.notify else {
            return Ok(());
        };
        let tasks: BTreeSet<&str> = out
            .iter()
            .flat_map(|o| o.events.iter().map(|e| e.task_id.as_str()))
            .collect();
        let work = ops.iter().zip(out).any(|(op, o)| creates_work(op, o));
        if tasks.is_empty() && !work {
            return Ok(());
        }
        let payloads = json_text(&notice_payloads(instance, tasks))?;
        let work = work.then(|| format!("{instance}:"));
        self.conn.execute(sql, args![payloads, work]).await?;
        Ok(())
    }
}

/// A bulk statement's argument: one JSON document, bound as text (both backends parse it
/// once in SQL; building a `serde_json::Value` first would only add allocations).
pub(crate) fn json_text(value: &impl Serialize) -> Result<String> {
    Ok(serde_json::to_string(value)?)
}

/// Bytes of task ids one notification carries, well under Postgres' 8000-byte payload limit.
const NOTICE_BYTES: usize = 7_000;

/// The event notifications of a batch: `instance:id,id,…`, as few as fit, so a batch of
/// hundreds of tasks costs a handful of `pg_notify` calls instead of one per task.
fn notice_payloads<'a>(instance: &str, tasks: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current = String::new();
    for id in tasks {
        if !current.is_empty() && current.len() + id.len() + 1 > NOTICE_BYTES {
            payloads.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current.push_str(instance);
            current.push(':');
        } else {
            current.push(',');
        }
        current.push_str(id);
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    payloads
}

fn result(result: OpResult) -> OpOutcome {
    OpOutcome {
        result,
        events: vec![],
    }
}

/// The outcome of a submit that attached to `task`.
fn existing(task: TaskInfo) -> OpOutcome {
    result(OpResult::Submitted {
        task: Box::new(task),
        created: false,
        claimed: false,
    })
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

/// A new task as the bulk insert reads it.
#[derive(Serialize)]
struct NewTaskDoc<'a> {
    id: &'a str,
    name: &'a str,
    key: &'a str,
    kh: i64,
    usr: &'a str,
    input: &'a Value,
    status: &'static str,
    attempt: u32,
    max_attempts: u32,
    max_recoveries: u32,
    auto_recover: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<i64>,
    epoch: u32,
    now: i64,
    last_seq: u64,
}

impl<'a> NewTaskDoc<'a> {
    fn new(p: &'a SubmitParams) -> Self {
        let (status, attempt, epoch, last_seq) = submit_shape(p);
        let usr = p.user_id.as_deref().unwrap_or("");
        Self {
            id: &p.id,
            name: &p.name,
            key: &p.key,
            kh: key_hash(&p.key, usr),
            usr,
            input: &p.input,
            status: status.as_str(),
            attempt,
            max_attempts: p.max_attempts,
            max_recoveries: p.max_recoveries,
            auto_recover: p.auto_recover,
            node: p.claim.as_ref().map(|c| c.node.as_str()),
            lease: p.claim.as_ref().map(|c| c.lease_until),
            epoch,
            now: p.now,
            last_seq,
        }
    }
}

/// The emits and steps of one run within a batch, in queue order.
struct RunWrites<'a> {
    fence: &'a Fence,
    /// Events of all of them.
    n: i64,
    /// Each op's index in the batch, its events and, for a step, its checkpoint.
    ops: Vec<(usize, &'a [NewEvent], Option<Checkpoint<'a>>)>,
}

/// A step's name and result.
type Checkpoint<'a> = (&'a str, &'a Value);

/// A step's checkpoint as the bulk insert reads it.
#[derive(Serialize)]
struct StepDoc<'a> {
    task_id: &'a str,
    name: &'a str,
    result: &'a Value,
    now: i64,
}

/// A run's seq reservation (for its emits and steps) as the bulk update reads it.
#[derive(Serialize)]
struct ReserveDoc<'a> {
    id: &'a str,
    node: &'a str,
    epoch: u32,
    n: i64,
    now: i64,
}

/// An attempt's outcome as the bulk finish reads it.
#[derive(Serialize)]
struct FinishDoc<'a> {
    id: &'a str,
    node: &'a str,
    epoch: u32,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_at: Option<i64>,
    give_back: i64,
    bump: i64,
    now: i64,
}

/// An event as the bulk insert reads it.
#[derive(Serialize)]
struct EventDoc<'a> {
    task_id: &'a str,
    seq: u64,
    kind: &'static str,
    name: &'a str,
    payload: &'a Value,
    created_at: i64,
}

impl<'a> From<&'a TaskEvent> for EventDoc<'a> {
    fn from(e: &'a TaskEvent) -> Self {
        Self {
            task_id: &e.task_id,
            seq: e.seq,
            kind: e.kind.as_str(),
            name: &e.name,
            payload: &e.payload,
            created_at: e.created_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_cursor_skips_old_entries_and_rescans() {
        let c = ClaimCursor::default();
        assert_eq!(
            c.start(10_000),
            i64::MIN,
            "the first claim scans everything"
        );
        c.advance(10_000, Some(9_500));
        assert_eq!(c.start(10_100), 9_000, "margin below the claim's clock");
        c.advance(10_100, Some(5_000));
        assert_eq!(c.start(10_200), 5_000, "never above the oldest task seen");
        c.advance(10_200, None);
        assert_eq!(c.start(10_300), 9_200);
        assert_eq!(
            c.start(11_000),
            i64::MIN,
            "a full scan every CLAIM_RESCAN_MS"
        );
        c.advance(11_000, None);
        c.lower(4_000);
        assert_eq!(
            c.start(11_100),
            4_000,
            "work made pending here is seen at once"
        );
        assert_eq!(
            c.start(2_000),
            i64::MIN,
            "a clock that went back: full scan"
        );
    }

    #[test]
    fn event_notices_pack_many_tasks_under_the_payload_limit() {
        let ids: Vec<String> = (0..1000).map(|i| format!("{i:036}")).collect();
        let payloads = notice_payloads("node", ids.iter().map(String::as_str));
        assert!(
            payloads.len() > 1 && payloads.len() < 10,
            "{}",
            payloads.len()
        );
        let mut seen = Vec::new();
        for p in &payloads {
            assert!(p.len() <= NOTICE_BYTES + 64, "{}", p.len());
            let (from, list) = p.split_once(':').unwrap();
            assert_eq!(from, "node");
            seen.extend(list.split(',').map(str::to_owned));
        }
        assert_eq!(seen, ids);
        assert!(notice_payloads("node", []).is_empty());
    }
}
