//! The node's background services, each named by its job:
//!
//! - [`lease_keeper`]: renews this node's leases and stops runs that lost theirs;
//! - [`rescuer`]: recovers tasks whose process died or lost its lease;
//! - [`cleaner`]: retention of old tasks and commit markers, and the sweep of local
//!   state for tasks that left this node;
//! - [`notifier`]: turns other processes' hints into subscriber re-reads, executor
//!   wake-ups and dropped local state.

use std::sync::Arc;
use std::time::Duration;

use crate::node::Node;

pub(crate) mod cleaner;
pub(crate) mod lease_keeper;
pub(crate) mod notifier;
pub(crate) mod rescuer;

/// Starts every service on the node's background tracker.
pub(crate) fn spawn_all(node: &Arc<Node>) {
    let tracker = &node.lifecycle.background;
    tracker.spawn(lease_keeper::run(node.clone()));
    tracker.spawn(rescuer::run(node.clone()));
    tracker.spawn(cleaner::run(node.clone()));
    if let Some(notices) = node.store.notices() {
        tracker.spawn(notifier::run(node.clone(), notices));
    }
}

/// Sleeps `every`, or returns `false` at once when the node stops its services.
pub(crate) async fn tick(node: &Node, every: Duration) -> bool {
    tokio::select! {
        () = node.lifecycle.stop_claiming.cancelled() => false,
        () = tokio::time::sleep(every) => true,
    }
}
