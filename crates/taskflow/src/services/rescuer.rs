//! Recovery of tasks whose process died or lost its lease: a scan every reap interval,
//! and, on an exclusive store, of every `running` row at start-up.

use std::sync::Arc;

use tracing::{Instrument, info, info_span, warn};

use crate::error::Result;
use crate::execution::executor::{duration_ms, unexpected};
use crate::node::Node;
use crate::store::{OpResult, WriteOp, now_ms};

pub(crate) async fn run(node: Arc<Node>) {
    while super::tick(&node, node.config.reap_interval).await {
        let span = info_span!("taskflow.recovery.scan");
        if let Err(e) = reap(&node, false).instrument(span).await {
            warn!(error = %e, "recovery scan failed");
        }
    }
}

/// On an exclusive store every `running` row belongs to a dead process: recover them all.
pub(crate) async fn recover_at_startup(node: &Node) -> Result<()> {
    let span = info_span!("taskflow.recovery.scan", startup = true);
    let n = reap(node, true).instrument(span).await?;
    if n > 0 {
        info!(
            tasks = n,
            "recovered tasks left running by a previous process"
        );
    }
    Ok(())
}

async fn reap(node: &Node, all: bool) -> Result<u64> {
    let now = now_ms();
    let op = WriteOp::Reap {
        now,
        max_age_cutoff: now - duration_ms(node.config.recovery_max_age),
        all,
    };
    match node.writer.write(op).await?.result {
        OpResult::Count(n) => {
            if n > 0 {
                node.metrics.recovered.add(n, &[]);
                node.work.kick();
            }
            Ok(n)
        }
        other => Err(unexpected(&other)),
    }
}
