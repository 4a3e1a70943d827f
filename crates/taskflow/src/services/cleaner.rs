//! Retention, and the sweep of local state.
//!
//! Every purge interval, terminal and suspended tasks older than the retention go, with
//! their events and steps, in bounded rounds; so do old commit markers. Every reap
//! interval, local entries of tasks waiting elsewhere are checked against the store and
//! dropped once their task is no longer pending (claimed or controlled by another node,
//! or purged) — the backstop for hints the notifier missed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::error::Result;
use crate::execution::executor::{duration_ms, unexpected};
use crate::node::Node;
use crate::store::{OpResult, WriteOp, now_ms};

/// Local entries checked against the store per sweep, longest-waiting first.
const SWEEP_LIMIT: usize = 1_000;

/// Commit markers are only read right after a failed COMMIT; an hour is plenty.
const MARKER_RETENTION: Duration = Duration::from_secs(3600);

pub(crate) async fn run(node: Arc<Node>) {
    let mut last_purge: Option<Instant> = None;
    while super::tick(&node, node.config.reap_interval).await {
        if let Err(e) = sweep_local(&node).await {
            warn!(error = %e, "local state sweep failed");
        }
        if last_purge.is_none_or(|t| t.elapsed() >= node.config.purge_interval) {
            last_purge = Some(Instant::now());
            if let Err(e) = purge(&node).await {
                warn!(error = %e, "retention sweep failed");
            }
        }
    }
}

/// Drops local entries whose task waits no more (on this node or any other).
pub(crate) async fn sweep_local(node: &Node) -> Result<()> {
    let waiting = node
        .local
        .waiting_for(node.config.poll_interval, SWEEP_LIMIT);
    if waiting.is_empty() {
        return Ok(());
    }
    let still = node.store.tasks_still_pending(&waiting).await?;
    let pending: std::collections::HashSet<&String> = still.iter().collect();
    let gone: Vec<String> = waiting
        .iter()
        .filter(|id| !pending.contains(id))
        .cloned()
        .collect();
    node.local.forget_waiting(&gone);
    node.local.touch(&still);
    Ok(())
}

/// Deletes what retention allows, in bounded rounds.
pub(crate) async fn purge(node: &Node) -> Result<u64> {
    let now = now_ms();
    let before = now - duration_ms(node.config.retention);
    let mut total = 0;
    loop {
        let op = WriteOp::Purge {
            terminal_before: before,
            suspended_before: before,
            batches_before: now - duration_ms(MARKER_RETENTION),
        };
        let n = match node.writer.write(op).await?.result {
            OpResult::Count(n) => n,
            other => return Err(unexpected(&other)),
        };
        total += n;
        if n < crate::store::batch::PURGE_LIMIT.unsigned_abs() || node.lifecycle.is_closing() {
            break;
        }
    }
    if total > 0 {
        info!(tasks = total, "retention sweep deleted old tasks");
    }
    Ok(total)
}
