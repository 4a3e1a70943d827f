//! The node's lifecycle: trackers for its tasks, and the drain and close of shutdown,
//! each run once.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use super::Node;
use super::local::StopReason;

/// Trackers and tokens of one node.
#[derive(Debug, Default)]
pub(crate) struct Lifecycle {
    closing: AtomicBool,
    /// Cancelled to stop claiming and the background services.
    pub(crate) stop_claiming: CancellationToken,
    /// The executor and the maintenance services.
    pub(crate) background: TaskTracker,
    /// One task per run.
    pub(crate) runners: TaskTracker,
    /// The group-commit writer.
    pub(crate) writer: TaskTracker,
    pub(crate) writer_close: CancellationToken,
    drained: OnceCell<()>,
    closed: OnceCell<()>,
}

impl Lifecycle {
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.initialized()
    }
}

impl Node {
    /// Stops claiming and drains, once: running tasks get the drain timeout to finish;
    /// the rest are asked to stop with reason `shutdown` and released to `pending`.
    pub(crate) async fn drain(&self) {
        self.lifecycle
            .drained
            .get_or_init(|| self.drain_once())
            .await;
    }

    async fn drain_once(&self) {
        let life = &self.lifecycle;
        life.closing.store(true, Ordering::Release);
        life.stop_claiming.cancel();
        life.runners.close();
        info!(
            running = self.slots.running(),
            "taskflow: draining running tasks"
        );
        let drained = tokio::time::timeout(self.config.drain_timeout, life.runners.wait())
            .await
            .is_ok();
        if !drained {
            let runs = self.local.runs();
            info!(
                tasks = runs.len(),
                "taskflow: releasing tasks still running after drain timeout"
            );
            for (_, run) in runs {
                run.request(StopReason::Shutdown);
            }
            life.runners.wait().await;
        }
        life.background.close();
        life.background.wait().await;
    }

    /// Drains (if not done yet), then commits the last writes, ends every subscription
    /// and closes the store, once.
    pub(crate) async fn close(&self) {
        self.drain().await;
        self.lifecycle
            .closed
            .get_or_init(|| self.close_once())
            .await;
    }

    async fn close_once(&self) {
        let life = &self.lifecycle;
        self.hub.close();
        life.writer_close.cancel();
        life.writer.close();
        life.writer.wait().await;
        self.store.close().await;
        info!("taskflow: stopped");
    }
}
