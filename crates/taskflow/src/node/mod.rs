//! The running node: the parts that own the engine's state in this process.
//!
//! [`TaskFlow`](crate::TaskFlow) is the cheap handle plugins hold; it points at one
//! [`Node`]. The node is plain state, built from parts that each own theirs — the
//! registry, admission, slots, local tasks, the work signal and the lifecycle — and
//! knows nothing of the executor or the maintenance services, which take it as input.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use crate::config::Config;
use crate::delivery::Hub;
use crate::metrics::Metrics;
use crate::store::Storage;
use crate::writer::Writer;

mod admission;
mod lifecycle;
pub(crate) mod local;
mod registry;
mod slots;

pub(crate) use admission::Admission;
pub(crate) use lifecycle::Lifecycle;
pub(crate) use local::{LocalTasks, RunControl, StopReason};
pub(crate) use registry::{Registered, Registry};
pub(crate) use slots::Slots;

/// One engine instance in this process.
#[derive(Debug)]
pub(crate) struct Node {
    /// This node's id: the lease owner name.
    pub(crate) id: String,
    pub(crate) config: Config,
    pub(crate) store: Arc<dyn Storage>,
    pub(crate) writer: Writer,
    pub(crate) hub: Hub,
    pub(crate) registry: Registry,
    pub(crate) admission: Admission,
    pub(crate) slots: Slots,
    pub(crate) local: LocalTasks,
    pub(crate) work: WorkSignal,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) metrics: Metrics,
}

impl Node {
    /// Builds the node and starts its writer; nothing else runs yet.
    pub(crate) fn new(store: Arc<dyn Storage>, config: Config) -> Self {
        let hub = Hub::new();
        let lifecycle = Lifecycle::default();
        let writer = Writer::spawn(
            store.clone(),
            hub.clone(),
            &lifecycle.writer,
            lifecycle.writer_close.clone(),
        );
        Self {
            id: config
                .node_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            admission: Admission::new(&config),
            slots: Slots::new(config.global_slots, config.per_user_slots),
            config,
            store,
            writer,
            hub,
            registry: Registry::default(),
            local: LocalTasks::default(),
            work: WorkSignal::default(),
            lifecycle,
            metrics: Metrics::new(),
        }
    }
}

/// "The store may hold claimable work this node has not looked at": a flag plus a wake-up
/// for the executor.
#[derive(Debug)]
pub(crate) struct WorkSignal {
    backlog: AtomicBool,
    wake: Notify,
}

impl Default for WorkSignal {
    fn default() -> Self {
        Self {
            backlog: AtomicBool::new(true),
            wake: Notify::new(),
        }
    }
}

impl WorkSignal {
    /// Signals the executor that the store may hold work.
    pub(crate) fn kick(&self) {
        self.set();
        self.wake.notify_one();
    }

    /// Marks work as possibly waiting, without a wake-up (the executor is busy claiming).
    pub(crate) fn set(&self) {
        self.backlog.store(true, Ordering::Release);
    }

    /// Wakes the executor if work may be waiting (a slot was freed).
    pub(crate) fn wake_if_set(&self) {
        if self.is_set() {
            self.wake.notify_one();
        }
    }

    /// Takes the flag: `true` if work may be waiting.
    pub(crate) fn take(&self) -> bool {
        self.backlog.swap(false, Ordering::AcqRel)
    }

    /// `true` if work may be waiting (immediate claims at submit yield to it).
    pub(crate) fn is_set(&self) -> bool {
        self.backlog.load(Ordering::Acquire)
    }

    /// Resolves at the next wake-up.
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }
}
