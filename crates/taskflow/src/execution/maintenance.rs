//! Background upkeep: lease renewal, the reaper, start-up recovery and retention.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{Instrument, info, info_span, warn};

use crate::engine::{Shared, StopReason, duration_ms, unreachable_outcome};
use crate::error::Result;
use crate::handler::lock;
use crate::store::{OpResult, WriteOp, now_ms};

/// Renews this node's leases every third of the lease; stops runners that lost theirs.
pub(crate) async fn heartbeat(shared: Arc<Shared>) {
    let every = (shared.config.lease / 3).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            () = shared.stop_claiming.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(e) = renew(&shared).await {
            warn!(error = %e, "lease renewal failed");
        }
    }
}

async fn renew(shared: &Shared) -> Result<()> {
    let before: Vec<(String, u32)> = lock(&shared.running)
        .iter()
        .map(|(id, ctl)| (id.clone(), ctl.attempt))
        .collect();
    if before.is_empty() {
        return Ok(());
    }
    let op = WriteOp::LeaseRenew {
        node: shared.node.clone(),
        until: now_ms() + duration_ms(shared.config.lease),
    };
    let OpResult::Renewed(held) = shared.writer.write(op).await?.result else {
        return Err(crate::Error::Fenced);
    };
    let held_ids: HashSet<(&str, u32)> = held
        .iter()
        .map(|l| (l.task_id.as_str(), l.attempt))
        .collect();
    let running = lock(&shared.running);
    for (id, attempt) in before
        .iter()
        .filter(|(id, a)| !held_ids.contains(&(id.as_str(), *a)))
    {
        if let Some(ctl) = running.get(id).filter(|c| c.attempt == *attempt) {
            warn!(task.id = %id, "lease lost; stopping the local run");
            ctl.request(StopReason::LeaseLost);
        }
    }
    for lease in held.iter().filter(|l| l.stop_requested) {
        if let Some(ctl) = running.get(&lease.task_id) {
            ctl.request(StopReason::Stop);
        }
    }
    Ok(())
}

/// Scans for expired leases every reap interval and sweeps retention every purge interval.
pub(crate) async fn reaper(shared: Arc<Shared>) {
    let mut last_purge: Option<Instant> = None;
    loop {
        tokio::select! {
            () = shared.stop_claiming.cancelled() => break,
            () = tokio::time::sleep(shared.config.reap_interval) => {}
        }
        let span = info_span!("taskflow.recovery.scan");
        if let Err(e) = reap(&shared, false).instrument(span).await {
            warn!(error = %e, "recovery scan failed");
        }
        if last_purge.is_none_or(|t| t.elapsed() >= shared.config.purge_interval) {
            last_purge = Some(Instant::now());
            if let Err(e) = purge(&shared).await {
                warn!(error = %e, "retention sweep failed");
            }
        }
    }
}

/// On an exclusive store every `running` row belongs to a dead process: recover them all.
pub(crate) async fn recover_at_startup(shared: &Shared) -> Result<()> {
    let span = info_span!("taskflow.recovery.scan", startup = true);
    let n = reap(shared, true).instrument(span).await?;
    if n > 0 {
        info!(
            tasks = n,
            "recovered tasks left running by a previous process"
        );
    }
    Ok(())
}

async fn reap(shared: &Shared, all: bool) -> Result<u64> {
    let now = now_ms();
    let op = WriteOp::Reap {
        now,
        max_age_cutoff: now - duration_ms(shared.config.recovery_max_age),
        all,
    };
    match shared.writer.write(op).await?.result {
        OpResult::Count(n) => {
            if n > 0 {
                shared.metrics.recovered.add(n, &[]);
                shared.kick();
            }
            Ok(n)
        }
        other => unreachable_outcome(&other),
    }
}

pub(crate) async fn purge(shared: &Shared) -> Result<u64> {
    let now = now_ms();
    let before = now - duration_ms(shared.config.retention);
    let op = WriteOp::Purge {
        terminal_before: before,
        suspended_before: before,
    };
    match shared.writer.write(op).await?.result {
        OpResult::Count(n) => {
            if n > 0 {
                info!(tasks = n, "retention sweep deleted old tasks");
            }
            Ok(n)
        }
        other => unreachable_outcome(&other),
    }
}

/// Turns the store's cross-process hints into subscriber re-reads and executor wake-ups.
pub(crate) async fn relay_notices(
    shared: Arc<Shared>,
    mut notices: tokio::sync::broadcast::Receiver<crate::store::Notice>,
) {
    use crate::store::Notice;
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let notice = tokio::select! {
            () = shared.stop_claiming.cancelled() => break,
            n = notices.recv() => n,
        };
        match notice {
            Ok(Notice::Events(task_id)) => shared.hub.hint(&task_id),
            Ok(Notice::Work) => shared.kick(),
            Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => {
                shared.hub.hint_all();
                shared.kick();
            }
            Err(RecvError::Closed) => break,
        }
    }
}
