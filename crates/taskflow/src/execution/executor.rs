//! The claim loop: turns pending work in the store into runners, within the slots.

use std::sync::Arc;

use tracing::{debug, warn};

use super::runner;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::store::{ClaimParams, ClaimedTask, OpResult, WriteOp, now_ms};

/// Runs until the node stops claiming. Wakes on a local signal or every poll interval.
pub(crate) async fn run(node: Arc<Node>) {
    loop {
        tokio::select! {
            () = node.lifecycle.stop_claiming.cancelled() => break,
            () = node.work.woken() => {}
            () = tokio::time::sleep(node.config.poll_interval) => {
                node.work.set();
                refresh_pending(&node).await;
            }
        }
        if let Err(e) = claim_available(&node).await {
            warn!(error = %e, "claiming pending tasks failed; will retry at the next poll");
        }
    }
}

async fn refresh_pending(node: &Node) {
    if let Ok(n) = node.store.tasks_pending_count().await {
        node.admission.set_pending(n);
        node.metrics.pending.record(n, &[]);
    }
}

/// Claims while there are free slots and the store may hold ready work.
async fn claim_available(node: &Arc<Node>) -> Result<()> {
    while node.work.take() {
        if node.lifecycle.stop_claiming.is_cancelled() {
            return Ok(());
        }
        if !node.slots.begin_claim() {
            // A finishing runner wakes us while the flag is set. Set it before looking
            // again, so a slot freed in between is not missed.
            node.work.set();
            if !node.slots.begin_claim() {
                return Ok(());
            }
            node.work.take();
        }
        // The claim is built when its batch is: by then the runners whose outcomes share
        // that batch have freed their slots, and the claim takes those too.
        let late = node.clone();
        let outcome = node
            .writer
            .write_late(move || {
                let now = now_ms();
                WriteOp::Claim(ClaimParams {
                    node: late.id.clone(),
                    now,
                    lease_until: now + duration_ms(late.config.lease),
                    names: late.registry.names(),
                    budget: late.slots.claim_budget(),
                })
            })
            .await;
        let claimed = match outcome.map(|o| o.result) {
            Ok(OpResult::Claimed { tasks, more }) => {
                node.slots.end_claim(&tasks);
                if more {
                    node.work.set();
                }
                tasks
            }
            Ok(other) => {
                node.slots.end_claim(&[]);
                return Err(unexpected(&other));
            }
            Err(e) => {
                node.slots.end_claim(&[]);
                node.work.set();
                return Err(e);
            }
        };
        spawn_all(node, claimed);
    }
    Ok(())
}

fn spawn_all(node: &Arc<Node>, claimed: Vec<ClaimedTask>) {
    if claimed.is_empty() {
        return;
    }
    debug!(count = claimed.len(), "claimed pending tasks");
    node.admission
        .remove_pending(u64::try_from(claimed.len()).unwrap_or(0));
    for c in claimed {
        match node.registry.get(&c.task.name) {
            Some(registered) => runner::spawn(node.clone(), c, registered),
            None => {
                // Claims only name registered tasks, and registrations are never removed.
                warn!(task.id = %c.task.id, task.name = %c.task.name, "claimed a task with no handler");
                node.slots.release(c.task.user_id.as_deref(), &c.task.name);
            }
        }
    }
}

/// The error for a store answer that does not fit the op.
pub(crate) fn unexpected(other: &OpResult) -> Error {
    Error::internal(format!("store returned an unexpected outcome: {other:?}"))
}

pub(crate) fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
