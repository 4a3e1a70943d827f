//! The registry of open bridges: the shutdown drain and the disconnect grace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use taskflow::TaskFlow;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// What happens to a task when its SSE client goes away.
///
/// With `stop_on_disconnect` (the default) the task is stopped (suspended) once `grace`
/// has passed without another client attaching to it; without, it runs on and can be
/// re-attached. Neither applies at server shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DisconnectPolicy {
    /// Stop the task when the last client is gone for `grace`.
    pub(crate) stop_on_disconnect: bool,
    /// How long a re-attach may take.
    pub(crate) grace: Duration,
}

/// Open bridges: counted for the drain, and per task for the disconnect grace.
#[derive(Debug, Clone)]
pub(crate) struct BridgeRegistry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    drain: CancellationToken,
    state: Mutex<State>,
    emptied: Notify,
    timers: TaskTracker,
    default_policy: DisconnectPolicy,
}

#[derive(Debug, Default)]
struct State {
    open: usize,
    tasks: HashMap<String, TaskEntry>,
    /// Policies that differ from the default, by task key, until the task ends.
    policies: HashMap<String, DisconnectPolicy>,
}

/// Bridges attached to one task; `epoch` counts attaches, so a grace timer can tell that
/// someone re-attached in the meantime.
#[derive(Debug, Default)]
struct TaskEntry {
    attached: usize,
    epoch: u64,
    timers: usize,
}

impl BridgeRegistry {
    pub(crate) fn new(default_policy: DisconnectPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                drain: CancellationToken::new(),
                state: Mutex::new(State::default()),
                emptied: Notify::new(),
                timers: TaskTracker::new(),
                default_policy,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers the policy a task's bridges use (execute_task's settings), so re-attached
    /// streams follow it too.
    pub(crate) fn set_policy(&self, key: &str, policy: DisconnectPolicy) {
        let mut state = self.state();
        if policy == self.inner.default_policy {
            state.policies.remove(key);
        } else {
            state.policies.insert(key.to_owned(), policy);
        }
    }

    /// The policy for `key`'s bridges.
    pub(crate) fn policy(&self, key: &str) -> DisconnectPolicy {
        self.state()
            .policies
            .get(key)
            .copied()
            .unwrap_or(self.inner.default_policy)
    }

    /// Registers a bridge for task `key` of `user`.
    pub(crate) fn attach(
        &self,
        taskflow: TaskFlow,
        key: &str,
        user: Option<String>,
    ) -> BridgeGuard {
        let policy = self.policy(key);
        let mut state = self.state();
        state.open += 1;
        let entry = state.tasks.entry(key.to_owned()).or_default();
        entry.attached += 1;
        entry.epoch += 1;
        let epoch = entry.epoch;
        drop(state);
        BridgeGuard {
            registry: self.clone(),
            taskflow,
            key: key.to_owned(),
            user,
            epoch,
            policy,
            drain: self.inner.drain.clone(),
            outcome: Outcome::Open,
        }
    }

    /// Registers a plugin-owned stream: counted for the drain like a bridge, with no task
    /// behind it (so no disconnect grace).
    pub(crate) fn attach_plain(&self) -> PlainGuard {
        self.state().open += 1;
        PlainGuard {
            registry: self.clone(),
            drain: self.inner.drain.clone(),
        }
    }

    /// Open bridges (and plugin-owned streams) right now.
    pub(crate) fn open(&self) -> usize {
        self.state().open
    }

    /// Tells every bridge to send its shutdown frame and close, cancels pending grace
    /// timers, and waits up to `timeout` for all bridges to be gone. Returns how many are
    /// still open.
    pub(crate) async fn drain(&self, timeout: Duration) -> usize {
        self.inner.drain.cancel();
        self.inner.timers.close();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let emptied = self.inner.emptied.notified();
            let open = self.open();
            if open == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, emptied).await.is_err() {
                return self.open();
            }
        }
        let _ = tokio::time::timeout_at(deadline, self.inner.timers.wait()).await;
        0
    }

    fn detach_plain(&self) {
        let mut state = self.state();
        state.open = state.open.saturating_sub(1);
        if state.open == 0 {
            self.inner.emptied.notify_waiters();
        }
    }

    fn detach(&self, key: &str, forget_policy: bool) {
        let mut state = self.state();
        state.open = state.open.saturating_sub(1);
        if let Some(entry) = state.tasks.get_mut(key) {
            entry.attached = entry.attached.saturating_sub(1);
            if entry.attached == 0 && entry.timers == 0 {
                state.tasks.remove(key);
            }
        }
        if forget_policy {
            state.policies.remove(key);
        }
        if state.open == 0 {
            self.inner.emptied.notify_waiters();
        }
    }

    /// Starts the grace timer for a bridge whose client went away.
    fn start_grace(&self, guard: &BridgeGuard) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if let Some(entry) = self.state().tasks.get_mut(&guard.key) {
            entry.timers += 1;
        }
        let registry = self.clone();
        let taskflow = guard.taskflow.clone();
        let key = guard.key.clone();
        let user = guard.user.clone();
        let epoch = guard.epoch;
        let grace = guard.policy.grace;
        let drain = self.inner.drain.clone();
        self.inner.timers.spawn(async move {
            let elapsed = tokio::select! {
                () = drain.cancelled() => false,
                () = tokio::time::sleep(grace) => true,
            };
            let abandoned = registry.end_grace(&key, epoch) && elapsed;
            if abandoned {
                stop_abandoned(&taskflow, &key, user.as_deref()).await;
            }
        });
    }

    /// Ends a grace timer; `true` when nobody attached to the task since `epoch`.
    fn end_grace(&self, key: &str, epoch: u64) -> bool {
        let mut state = self.state();
        let Some(entry) = state.tasks.get_mut(key) else {
            return true;
        };
        entry.timers = entry.timers.saturating_sub(1);
        let abandoned = entry.attached == 0 && entry.epoch == epoch;
        if entry.attached == 0 && entry.timers == 0 {
            state.tasks.remove(key);
        }
        abandoned
    }
}

async fn stop_abandoned(taskflow: &TaskFlow, key: &str, user: Option<&str>) {
    match taskflow.stop(key, user).await {
        Ok(status) => {
            info!(task.key = %key, %status, "task stopped: its client left and did not come back")
        }
        Err(taskflow::Error::InvalidTransition { .. } | taskflow::Error::ShuttingDown) => {
            debug!(task.key = %key, "task already ended; nothing to stop after disconnect");
        }
        Err(e) => warn!(task.key = %key, error = %e, "stopping a task after disconnect failed"),
    }
}

/// How a bridge ended, which decides what its drop does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Still streaming: a drop now means the client went away.
    Open,
    /// The task reached a terminal state.
    TaskEnded,
    /// Closed by the server (shutdown frame or in-band error).
    Closed,
}

/// One open bridge. Dropping it while [`Outcome::Open`] starts the disconnect grace.
#[derive(Debug)]
pub(crate) struct BridgeGuard {
    registry: BridgeRegistry,
    taskflow: TaskFlow,
    key: String,
    user: Option<String>,
    epoch: u64,
    policy: DisconnectPolicy,
    drain: CancellationToken,
    outcome: Outcome,
}

impl BridgeGuard {
    /// The task's idempotency key.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Cancelled when the server drains bridges at shutdown.
    pub(crate) fn drain_token(&self) -> &CancellationToken {
        &self.drain
    }

    /// Records how the bridge ended.
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let client_left = self.outcome == Outcome::Open
            && self.policy.stop_on_disconnect
            && !self.drain.is_cancelled();
        if client_left {
            self.registry.start_grace(self);
        }
        self.registry
            .detach(&self.key, self.outcome == Outcome::TaskEnded);
    }
}

/// One open plugin-owned stream; dropping it (the response body is gone) detaches it.
#[derive(Debug)]
pub(crate) struct PlainGuard {
    registry: BridgeRegistry,
    drain: CancellationToken,
}

impl PlainGuard {
    /// Cancelled when the server drains streams at shutdown.
    pub(crate) fn drain_token(&self) -> &CancellationToken {
        &self.drain
    }
}

impl Drop for PlainGuard {
    fn drop(&mut self) {
        self.registry.detach_plain();
    }
}
