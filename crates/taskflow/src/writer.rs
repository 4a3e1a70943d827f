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

type Request = (WriteOp, oneshot::Sender<Result<OpOutcome>>);

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
        let (ops, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
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
