//! Turns the store's cross-process hints into subscriber re-reads, executor wake-ups and
//! dropped local state (a task another node acted on has left this node).

use std::sync::Arc;

use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

use crate::node::Node;
use crate::store::Notice;

pub(crate) async fn run(node: Arc<Node>, mut notices: Receiver<Notice>) {
    loop {
        let notice = tokio::select! {
            () = node.lifecycle.stop_claiming.cancelled() => break,
            n = notices.recv() => n,
        };
        match notice {
            Ok(Notice::Events(task_id)) => {
                node.hub.hint(&task_id);
                node.local.forget_waiting(std::slice::from_ref(&task_id));
            }
            Ok(Notice::Work) => node.work.kick(),
            Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => {
                node.hub.hint_all();
                node.work.kick();
            }
            Err(RecvError::Closed) => break,
        }
    }
}
