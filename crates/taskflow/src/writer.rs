//! The group-commit writer: one task per store turns queued ops into one transaction,
//! then answers the callers and publishes the committed events to the hub.
//!
//! A failed batch is never retried blindly. The store settles an ambiguous COMMIT itself
//! (see `Storage::write_batch`), so an error here means the batch did not commit — or,
//! with [`Error::OutcomeUnknown`], that nobody can tell yet. Only in the first case, and
//! only when the failure was not the store being unreachable, are the ops tried again one
//! by one, so that one bad op does not fail its neighbours.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Level, debug, warn};

use crate::delivery::Hub;
use crate::error::{Error, Result};
use crate::store::{OpOutcome, Storage, WriteOp};

/// Ops larger batches are split at, to bound one transaction's size.
const MAX_BATCH: usize = 512;

type Request = (Queued, oneshot::Sender<Result<OpOutcome>>);

/// An op as queued: ready, or built only when its batch is (see [`Writer::write_late`]).
#[allow(
    clippy::large_enum_variant,
    reason = "an op is queued once and moved into its batch; boxing it would allocate per op"
)]
enum Queued {
    Ready(WriteOp),
    Late(Box<dyn FnOnce() -> WriteOp + Send>),
}

impl Queued {
    fn into_op(self) -> WriteOp {
        match self {
            Self::Ready(op) => op,
            Self::Late(build) => build(),
        }
    }
}

/// Handle to the writer task. Cheap to clone. The writer stops when its close token is
/// cancelled and the queue is drained (or when every handle is dropped).
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    tx: mpsc::UnboundedSender<Request>,
}

impl Writer {
    /// Starts the writer on the current runtime.
    pub(crate) fn spawn(
        store: Arc<dyn Storage>,
        hub: Hub,
        tracker: &tokio_util::task::TaskTracker,
        close: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tracker.spawn(run(store, hub, rx, close));
        Self { tx }
    }

    /// Queues `op`; resolves after the batch holding it committed (or failed).
    pub(crate) async fn write(&self, op: WriteOp) -> Result<OpOutcome> {
        self.queue(Queued::Ready(op)).await
    }

    /// Queues an op that `build` makes when its batch is put together, not now: a claim
    /// built then takes every slot freed by the runners whose outcomes share its batch.
    pub(crate) async fn write_late(
        &self,
        build: impl FnOnce() -> WriteOp + Send + 'static,
    ) -> Result<OpOutcome> {
        self.queue(Queued::Late(Box::new(build))).await
    }

    async fn queue(&self, op: Queued) -> Result<OpOutcome> {
        let (reply, rx) = oneshot::channel();
        self.tx.send((op, reply)).map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }
}

async fn run(
    store: Arc<dyn Storage>,
    hub: Hub,
    mut rx: mpsc::UnboundedReceiver<Request>,
    close: CancellationToken,
) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => n,
            () = close.cancelled() => {
                // Refuse new writes, commit what is queued, then stop.
                rx.close();
                rx.recv_many(&mut batch, MAX_BATCH).await
            }
        };
        if received == 0 {
            break;
        }
        let (ops, replies): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .map(|(queued, reply)| (queued.into_op(), reply))
            .unzip();
        let started = Instant::now();
        let written = store.write_batch(&ops).await;
        if tracing::enabled!(Level::DEBUG) {
            let mix = OpMix::of(&ops);
            debug!(
                ops = ops.len(),
                submits = mix.submits,
                claims = mix.claims,
                finishes = mix.finishes,
                other = mix.other,
                micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                ok = written.is_ok(),
                "batch written"
            );
        }
        match written {
            Ok(outcomes) => deliver(&hub, outcomes, replies),
            Err(e) if ops.len() == 1 || e.is_unavailable() => fail_all(replies, &e),
            Err(e) => {
                // The batch did not commit: trying each op on its own is safe.
                warn!(error = %e, ops = ops.len(), "batch failed; trying its ops one by one");
                for (op, reply) in ops.into_iter().zip(replies) {
                    match store.write_batch(std::slice::from_ref(&op)).await {
                        Ok(outcomes) => deliver(&hub, outcomes, vec![reply]),
                        Err(e) => fail_all(vec![reply], &e),
                    }
                }
            }
        }
    }
}

/// What a batch held, for its debug line.
#[derive(Default)]
struct OpMix {
    submits: usize,
    claims: usize,
    finishes: usize,
    other: usize,
}

impl OpMix {
    fn of(ops: &[WriteOp]) -> Self {
        let mut mix = Self::default();
        for op in ops {
            match op {
                WriteOp::Submit(_) => mix.submits += 1,
                WriteOp::Claim(_) => mix.claims += 1,
                WriteOp::Finish { .. } => mix.finishes += 1,
                _ => mix.other += 1,
            }
        }
        mix
    }
}

fn fail_all(replies: Vec<oneshot::Sender<Result<OpOutcome>>>, e: &Error) {
    for reply in replies {
        let _ = reply.send(Err(e.clone()));
    }
}

fn deliver(hub: &Hub, outcomes: Vec<OpOutcome>, replies: Vec<oneshot::Sender<Result<OpOutcome>>>) {
    for outcome in &outcomes {
        for event in &outcome.events {
            hub.publish(event);
        }
    }
    for (outcome, reply) in outcomes.into_iter().zip(replies) {
        let _ = reply.send(Ok(outcome));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use futures_util::FutureExt;
    use serde_json::Value;
    use tokio::sync::{Notify, Semaphore, broadcast};

    use super::*;
    use crate::event::TaskEvent;
    use crate::store::{
        Backend, ClaimBudget, ClaimParams, Faults, Notice, OpResult, SubmitParams, now_ms,
    };
    use crate::task::{IdempotencyMode, TaskInfo};

    /// A store whose batches each wait for a permit, so the test decides when the writer
    /// goes on; `entered` fires as a batch starts waiting.
    #[derive(Debug)]
    struct Gated {
        inner: Arc<dyn Storage>,
        permits: Semaphore,
        entered: Notify,
    }

    #[async_trait]
    impl Storage for Gated {
        fn backend(&self) -> Backend {
            self.inner.backend()
        }
        fn is_exclusive(&self) -> bool {
            self.inner.is_exclusive()
        }
        async fn write_batch(&self, ops: &[WriteOp]) -> Result<Vec<OpOutcome>> {
            self.entered.notify_one();
            self.permits.acquire().await.unwrap().forget();
            self.inner.write_batch(ops).await
        }
        async fn task_by_key(&self, key: &str, user: Option<&str>) -> Result<Option<TaskInfo>> {
            self.inner.task_by_key(key, user).await
        }
        async fn task_by_id(&self, id: &str) -> Result<Option<TaskInfo>> {
            self.inner.task_by_id(id).await
        }
        async fn events_after(&self, id: &str, after: u64, limit: u32) -> Result<Vec<TaskEvent>> {
            self.inner.events_after(id, after, limit).await
        }
        async fn steps(&self, task_id: &str) -> Result<HashMap<String, Value>> {
            self.inner.steps(task_id).await
        }
        async fn tasks_failed(&self, limit: u32) -> Result<Vec<TaskInfo>> {
            self.inner.tasks_failed(limit).await
        }
        async fn tasks_pending_count(&self) -> Result<u64> {
            self.inner.tasks_pending_count().await
        }
        async fn tasks_still_pending(&self, ids: &[String]) -> Result<Vec<String>> {
            self.inner.tasks_still_pending(ids).await
        }
        fn notices(&self) -> Option<broadcast::Receiver<Notice>> {
            self.inner.notices()
        }
        fn faults(&self) -> &Faults {
            self.inner.faults()
        }
        async fn health(&self) -> Result<()> {
            self.inner.health().await
        }
        async fn close(&self) {
            self.inner.close().await;
        }
    }

    fn submit(n: usize) -> WriteOp {
        WriteOp::Submit(SubmitParams {
            id: uuid::Uuid::now_v7().to_string(),
            name: "job".to_owned(),
            key: format!("k{n}"),
            user_id: None,
            input: Value::Null,
            max_attempts: 1,
            max_recoveries: 1,
            auto_recover: true,
            mode: IdempotencyMode::default(),
            now: now_ms(),
            claim: None,
        })
    }

    fn claim(free: usize) -> WriteOp {
        let now = now_ms();
        WriteOp::Claim(ClaimParams {
            node: "n".to_owned(),
            now,
            lease_until: now + 30_000,
            names: vec!["job".to_owned()],
            budget: ClaimBudget {
                global: free,
                per_user: 8,
                ..ClaimBudget::default()
            },
        })
    }

    /// An op queued with `write_late` is made when its batch is put together, not when it
    /// was queued: a claim queued behind a busy batch sees the slots freed meanwhile.
    #[tokio::test]
    async fn a_late_op_is_built_when_its_batch_is() {
        let dir = tempfile::tempdir().unwrap();
        let inner = crate::store::into_storage(
            crate::SqliteStore::open(dir.path().join("t.db"))
                .await
                .unwrap(),
        );
        let ops: Vec<WriteOp> = (0..3).map(submit).collect();
        inner.write_batch(&ops).await.unwrap();
        let gated = Arc::new(Gated {
            inner,
            permits: Semaphore::new(0),
            entered: Notify::new(),
        });
        let tracker = tokio_util::task::TaskTracker::new();
        let close = CancellationToken::new();
        let writer = Writer::spawn(gated.clone(), Hub::new(), &tracker, close.clone());

        // The writer is busy with a batch that waits at the gate.
        let busy = tokio::spawn({
            let writer = writer.clone();
            async move { writer.write(claim(0)).await }
        });
        gated.entered.notified().await;

        // One slot is free when the claim is queued, three by the time its batch is made.
        let free = Arc::new(AtomicUsize::new(1));
        let built = Arc::new(AtomicUsize::new(0));
        let mut late = Box::pin(writer.write_late({
            let (free, built) = (free.clone(), built.clone());
            move || {
                built.fetch_add(1, Ordering::SeqCst);
                claim(free.load(Ordering::SeqCst))
            }
        }));
        // One poll queues it (it then waits for its batch).
        assert!((&mut late).now_or_never().is_none());
        assert_eq!(built.load(Ordering::SeqCst), 0, "built when queued");
        free.store(3, Ordering::SeqCst);

        gated.permits.add_permits(2);
        busy.await.unwrap().unwrap();
        match late.await.unwrap().result {
            OpResult::Claimed { tasks, .. } => assert_eq!(tasks.len(), 3),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(built.load(Ordering::SeqCst), 1);
        close.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
