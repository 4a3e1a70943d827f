//! [`SqlStore`]: the one [`Storage`] implementation, generic over a [`Driver`].
//!
//! Exactly-once writes: every batch inserts a commit marker (its id) in its own
//! transaction. When the COMMIT reports an error, the marker is looked up: present means
//! the database committed and the batch's outcomes stand (returned as if nothing failed);
//! absent means nothing of the batch was applied, so it is safe to try its ops again.
//! A batch is never re-applied on a guess.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::broadcast;
use tracing::warn;

use super::batch::{Batch, ClaimCursor};
use super::driver::Driver;
use super::ops::{OpOutcome, WriteOp};
use super::rows::{CountRow, EventRow, IdRow, StepRow, TaskRow};
use super::sql::{Opening, SqlConn, args};
use super::{Backend, Faults, Notice, Storage};
use crate::error::{Error, Result};
use crate::event::TaskEvent;
use crate::key::key_hash;
use crate::task::TaskInfo;

/// How long a batch whose COMMIT failed keeps asking the database whether it committed,
/// before its callers get [`Error::OutcomeUnknown`]. The writer answers nothing else
/// meanwhile, so this bounds how long an outage that began during a COMMIT holds every
/// queued write: a short blip is still settled exactly, a longer outage answers "unknown"
/// (callers retry with the same idempotency key) instead of holding submits for a minute.
const MARKER_CHECK_DEADLINE: Duration = Duration::from_secs(5);

/// How long one batch may take, from BEGIN to the end of COMMIT, before its connection is
/// dropped: a database that accepts but no longer answers must not hold the writer (and
/// every submit behind it) until the socket dies. Batches take milliseconds; a batch
/// dropped before its COMMIT was sent is a plain outage (nothing committed), one dropped
/// during COMMIT is settled by its marker like any ambiguous COMMIT.
const BATCH_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A store: the batch algorithm over one driver's dialect and connections.
#[derive(Debug)]
pub(crate) struct SqlStore<D> {
    driver: D,
    faults: Faults,
    cursor: ClaimCursor,
}

impl<D: Driver> SqlStore<D> {
    pub(crate) fn new(driver: D) -> Self {
        Self {
            driver,
            faults: Faults::default(),
            cursor: ClaimCursor::default(),
        }
    }

    pub(crate) fn driver(&self) -> &D {
        &self.driver
    }

    /// Decides an ambiguous COMMIT by its marker: the outcomes if the batch committed, the
    /// commit's error if it did not.
    async fn settle(
        &self,
        batch_id: &str,
        out: Vec<OpOutcome>,
        commit_error: Error,
    ) -> Result<Vec<OpOutcome>> {
        let deadline = tokio::time::Instant::now() + MARKER_CHECK_DEADLINE;
        let mut delay = Duration::from_millis(20);
        loop {
            match self.committed(batch_id).await {
                Ok(true) => {
                    warn!(error = %commit_error, "commit reported an error but the batch committed");
                    return Ok(out);
                }
                Ok(false) => return Err(commit_error),
                Err(Error::ShuttingDown) => return Err(Error::OutcomeUnknown),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    warn!(error = %e, "cannot tell whether a batch committed");
                    return Err(Error::OutcomeUnknown);
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    async fn committed(&self, batch_id: &str) -> Result<bool> {
        if Faults::take(&self.faults.marker_unreadable) {
            return Err(Error::injected("marker unreadable"));
        }
        let mut conn = self.driver.reader().acquire().await?;
        let row: Option<CountRow> = conn
            .fetch_optional(D::SQL.batch_committed, args![batch_id])
            .await?;
        Ok(row.is_some_and(|r| r.n > 0))
    }
}

#[async_trait]
impl<D: Driver> Storage for SqlStore<D> {
    fn backend(&self) -> Backend {
        D::BACKEND
    }

    fn is_exclusive(&self) -> bool {
        D::EXCLUSIVE
    }

    async fn write_batch(&self, ops: &[WriteOp]) -> Result<Vec<OpOutcome>> {
        let batch_id = uuid::Uuid::now_v7().simple().to_string();
        let now = super::now_ms();
        let closing = D::SQL.close_batch;
        let mut conn = self.driver.write_conn().await?;
        let committing = AtomicBool::new(false);
        // Whether sqlx holds the transaction, and so rolls it back after an error.
        let held = AtomicBool::new(false);
        // A database that accepts but stops answering (a network partition, a paused
        // host) would hold this batch, and every write queued behind it, for as long as
        // the socket lives: bound it.
        let attempt = tokio::time::timeout(BATCH_STALL_TIMEOUT, async {
            // The id is 32 hex digits and the time an integer: nothing to escape.
            let mark = format!("INSERT INTO task_batches (id, created_at) VALUES ('{batch_id}', ");
            let mut opening = D::SQL.begin_batch.to_owned();
            if closing.is_none() {
                // The transaction and its commit marker in one round trip.
                opening.push_str(&format!("; {mark}{now})"));
            }
            if Faults::take(&self.faults.fail_after_begin) {
                opening.push_str(&format!("; {mark}0); {mark}0)"));
            }
            if let Some(close) = closing {
                // BEGIN goes in front of the batch's first statement, and its events, its
                // commit marker and COMMIT in one last statement: a batch of one op is two
                // calls to SQLite's worker thread instead of four.
                let mut conn = Opening::new(&mut *conn, opening);
                let mut batch = Batch::new(&mut conn, D::SQL, &self.cursor, &batch_id);
                let out = batch.apply(self.driver.instance(), ops).await?;
                let args = batch.close_args(now)?;
                if Faults::take(&self.faults.fail_before_commit) {
                    return Err(Error::injected("rolled back"));
                }
                let close = if Faults::take(&self.faults.fail_before_commit_statement) {
                    Cow::Owned(close.replacen("; COMMIT", &format!("; {mark}0); COMMIT"), 1))
                } else {
                    Cow::Borrowed(close)
                };
                committing.store(true, Ordering::SeqCst);
                let committed = conn.execute(close, args).await.map(drop);
                return Ok((out, committed));
            }
            let mut tx =
                sqlx::Connection::begin_with(&mut *conn, sqlx::AssertSqlSafe(opening)).await?;
            held.store(true, Ordering::SeqCst);
            let out = Batch::new(&mut *tx, D::SQL, &self.cursor, &batch_id)
                .apply(self.driver.instance(), ops)
                .await?;
            if Faults::take(&self.faults.fail_before_commit) {
                tx.rollback().await?;
                return Err(Error::injected("rolled back"));
            }
            if Faults::take(&self.faults.fail_before_commit_statement) {
                (*tx).execute(format!("{mark}0)"), args![]).await?;
            }
            committing.store(true, Ordering::SeqCst);
            let committed = tx.commit().await;
            Ok((out, committed))
        })
        .await;
        let (out, committed) = match attempt {
            Ok(Err(e)) => {
                if !held.load(Ordering::SeqCst) {
                    // A transaction sqlx does not count (opened by the batch's first
                    // statement, or by a multi-statement BEGIN that failed part-way) may
                    // still be open, and no rollback would be sent for it: the connection
                    // is closed, which rolls it back, instead of pooled.
                    D::discard(conn);
                }
                return Err(e);
            }
            Ok(Ok(result)) => result,
            Err(_elapsed) => {
                // Close the socket, so the server rolls back whatever it got; a connection
                // with a statement in flight must not go back to the pool.
                D::discard(conn);
                let stalled = Error::stalled(BATCH_STALL_TIMEOUT);
                if !committing.load(Ordering::SeqCst) {
                    // COMMIT was never sent: nothing of the batch can have committed.
                    return Err(stalled);
                }
                return self
                    .settle(&batch_id, Vec::new(), stalled)
                    .await
                    .and_then(|_| {
                        // Committed, but the outcomes went with the dropped future: the callers
                        // cannot be told them, so they are told nothing is known.
                        Err(Error::OutcomeUnknown)
                    });
            }
        };
        if committed.is_err() && !held.load(Ordering::SeqCst) {
            // The closing statement failed before or at its COMMIT: whatever is still open
            // is rolled back with the connection; the marker tells what committed.
            D::discard(conn);
        }
        let ambiguous = Faults::take(&self.faults.commit_then_fail);
        match committed {
            Ok(()) if !ambiguous => Ok(out),
            Ok(()) => {
                self.settle(
                    &batch_id,
                    out,
                    Error::injected("committed, reported failed"),
                )
                .await
            }
            Err(e) => self.settle(&batch_id, out, e.into()).await,
        }
    }

    async fn task_by_key(&self, key: &str, user: Option<&str>) -> Result<Option<TaskInfo>> {
        let mut conn = self.driver.reader().acquire().await?;
        let row: Option<TaskRow> = conn
            .fetch_optional(D::SQL.task_by_key, {
                let user = user.unwrap_or("");
                args![key, user, key_hash(key, user)]
            })
            .await?;
        row.map(TaskInfo::try_from).transpose()
    }

    async fn task_by_id(&self, id: &str) -> Result<Option<TaskInfo>> {
        let mut conn = self.driver.reader().acquire().await?;
        let row: Option<TaskRow> = conn.fetch_optional(D::SQL.task_by_id, args![id]).await?;
        row.map(TaskInfo::try_from).transpose()
    }

    async fn events_after(
        &self,
        task_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<TaskEvent>> {
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let mut conn = self.driver.reader().acquire().await?;
        let rows: Vec<EventRow> = conn
            .fetch_all(D::SQL.events_after, args![task_id, after, i64::from(limit)])
            .await?;
        rows.into_iter().map(TaskEvent::try_from).collect()
    }

    async fn steps(&self, task_id: &str) -> Result<HashMap<String, Value>> {
        let mut conn = self.driver.reader().acquire().await?;
        let rows: Vec<StepRow> = conn.fetch_all(D::SQL.steps, args![task_id]).await?;
        Ok(rows.into_iter().map(|r| (r.name, r.result.0)).collect())
    }

    async fn tasks_failed(&self, limit: u32) -> Result<Vec<TaskInfo>> {
        let mut conn = self.driver.reader().acquire().await?;
        let rows: Vec<TaskRow> = conn
            .fetch_all(D::SQL.tasks_failed, args![i64::from(limit)])
            .await?;
        rows.into_iter().map(TaskInfo::try_from).collect()
    }

    async fn tasks_pending_count(&self) -> Result<u64> {
        let mut conn = self.driver.reader().acquire().await?;
        let row: Option<CountRow> = conn.fetch_optional(D::SQL.pending_count, args![]).await?;
        Ok(row.map_or(0, |r| u64::try_from(r.n).unwrap_or(0)))
    }

    async fn tasks_still_pending(&self, ids: &[String]) -> Result<Vec<String>> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let mut conn = self.driver.reader().acquire().await?;
        let rows: Vec<IdRow> = conn
            .fetch_all(D::SQL.still_pending, args![super::batch::json_text(&ids)?])
            .await?;
        Ok(rows.into_iter().map(|r| r.id).collect())
    }

    fn notices(&self) -> Option<broadcast::Receiver<Notice>> {
        self.driver.notices()
    }

    fn faults(&self) -> &Faults {
        &self.faults
    }

    async fn health(&self) -> Result<()> {
        let mut conn = self.driver.reader().acquire().await?;
        conn.execute(D::SQL.health, args![]).await?;
        Ok(())
    }

    async fn close(&self) {
        self.driver.close().await;
    }
}
