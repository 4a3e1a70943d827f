//! Renews this node's leases every third of the lease; stops runs that lost theirs and
//! runs another node asked to stop.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::error::Result;
use crate::execution::executor::{duration_ms, unexpected};
use crate::node::{Node, StopReason};
use crate::store::{OpResult, WriteOp, now_ms};

pub(crate) async fn run(node: Arc<Node>) {
    let every = (node.config.lease / 3).max(Duration::from_millis(10));
    while super::tick(&node, every).await {
        if let Err(e) = renew(&node).await {
            warn!(error = %e, "lease renewal failed");
        }
    }
}

async fn renew(node: &Node) -> Result<()> {
    let before = node.local.runs();
    if before.is_empty() {
        return Ok(());
    }
    let op = WriteOp::LeaseRenew {
        node: node.id.clone(),
        until: now_ms() + duration_ms(node.config.lease),
    };
    let held = match node.writer.write(op).await?.result {
        OpResult::Renewed(held) => held,
        other => return Err(unexpected(&other)),
    };
    let held_ids: HashSet<(&str, u32)> =
        held.iter().map(|l| (l.task_id.as_str(), l.epoch)).collect();
    for (id, run) in &before {
        if !held_ids.contains(&(id.as_str(), run.epoch)) {
            warn!(task.id = %id, "lease lost; stopping the local run");
            run.request(StopReason::LeaseLost);
        }
    }
    for lease in held.iter().filter(|l| l.stop_requested) {
        if let Some(run) = node.local.run(&lease.task_id) {
            run.request(StopReason::Stop);
        }
    }
    Ok(())
}
