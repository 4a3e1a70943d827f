//! The claim loop: turns pending work in the store into runners, within the slots.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{debug, warn};

use super::runner;
use crate::engine::{Shared, duration_ms, unreachable_outcome};
use crate::error::Result;
use crate::handler::lock;
use crate::store::{ClaimParams, ClaimedTask, OpResult, WriteOp, now_ms};

/// Runs until the engine stops claiming. Wakes on a local signal or every poll interval.
pub(crate) async fn run(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            () = shared.stop_claiming.cancelled() => break,
            () = shared.wake.notified() => {}
            () = tokio::time::sleep(shared.config.poll_interval) => {
                shared.backlog.store(true, Ordering::Release);
                refresh_pending(&shared).await;
            }
        }
        if let Err(e) = claim_available(&shared).await {
            warn!(error = %e, "claiming pending tasks failed; will retry at the next poll");
        }
    }
}

async fn refresh_pending(shared: &Shared) {
    if let Ok(n) = shared.store.tasks_pending_count().await {
        shared.pending_estimate.store(n, Ordering::Relaxed);
        shared.metrics.pending.record(n, &[]);
    }
}

/// Claims while there are free slots and the store may hold ready work.
async fn claim_available(shared: &Arc<Shared>) -> Result<()> {
    while shared.backlog.swap(false, Ordering::AcqRel) {
        if shared.stop_claiming.is_cancelled() {
            return Ok(());
        }
        let budget = {
            let mut slots = lock(&shared.slots);
            let budget = slots.budget();
            if budget.global == 0 {
                // A finishing runner kicks us again.
                shared.backlog.store(true, Ordering::Release);
                return Ok(());
            }
            slots.claiming = true;
            budget
        };
        let now = now_ms();
        let params = ClaimParams {
            node: shared.node.clone(),
            now,
            lease_until: now + duration_ms(shared.config.lease),
            names: shared.registered_names(),
            budget,
        };
        let outcome = shared.writer.write(WriteOp::Claim(params)).await;
        let claimed = {
            let mut slots = lock(&shared.slots);
            slots.claiming = false;
            match outcome.map(|o| o.result) {
                Ok(OpResult::Claimed { tasks, more }) => {
                    for t in &tasks {
                        slots.take(t.task.user_id.as_deref(), &t.task.name);
                    }
                    if more {
                        shared.backlog.store(true, Ordering::Release);
                    }
                    tasks
                }
                Ok(other) => return unreachable_outcome(&other),
                Err(e) => {
                    shared.backlog.store(true, Ordering::Release);
                    return Err(e);
                }
            }
        };
        spawn_all(shared, claimed);
    }
    Ok(())
}

fn spawn_all(shared: &Arc<Shared>, claimed: Vec<ClaimedTask>) {
    if claimed.is_empty() {
        return;
    }
    debug!(count = claimed.len(), "claimed pending tasks");
    let n = u64::try_from(claimed.len()).unwrap_or(0);
    let _ = shared
        .pending_estimate
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
            Some(p.saturating_sub(n))
        });
    for c in claimed {
        match shared.registered(&c.task.name) {
            Some(registered) => runner::spawn(shared.clone(), c.task, c.recovery, registered),
            None => {
                // Claims only name registered tasks, and registrations are never removed.
                warn!(task.id = %c.task.id, task.name = %c.task.name, "claimed a task with no handler");
                lock(&shared.slots).release(c.task.user_id.as_deref(), &c.task.name);
            }
        }
    }
}
