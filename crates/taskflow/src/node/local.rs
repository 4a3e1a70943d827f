//! What this process keeps about a task beyond the store, in one map: the live user
//! context and trace parent given at submit, and the control of a run on this node.
//!
//! Entries follow the task: one is dropped whenever the task leaves this node for any
//! reason — it finished or was stopped here, was cancelled, lost its lease, was claimed or
//! controlled by another node (the notifier hears of it, and the cleaner's sweep catches
//! what a lost hint missed), or was purged. A task waiting for a retry on this node keeps
//! its entry, so its next run here still has the user's context.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::handler::lock;

use crate::handler::UserContext;

/// Why a run was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    Stop,
    Cancel,
    Shutdown,
    LeaseLost,
}

/// Control of one live run.
#[derive(Debug, Clone)]
pub(crate) struct RunControl {
    /// The claim's epoch: tells this run from a later claim of the same task.
    pub(crate) epoch: u32,
    pub(crate) token: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
    /// Cancelled when the run has recorded its outcome and let go of the task.
    pub(crate) done: CancellationToken,
}

impl RunControl {
    fn new(epoch: u32) -> Self {
        Self {
            epoch,
            token: CancellationToken::new(),
            reason: Arc::new(Mutex::new(None)),
            done: CancellationToken::new(),
        }
    }

    /// Asks the run to stop; the first reason wins.
    pub(crate) fn request(&self, reason: StopReason) {
        lock(&self.reason).get_or_insert(reason);
        self.token.cancel();
    }

    pub(crate) fn reason(&self) -> Option<StopReason> {
        *lock(&self.reason)
    }
}

/// One task's local state.
struct LocalTask {
    user: Option<UserContext>,
    trace: Option<opentelemetry::Context>,
    /// The run on this node, if one is live.
    run: Option<RunControl>,
    /// When the entry last changed (for the sweep of waiting entries).
    since: Instant,
}

impl LocalTask {
    fn empty() -> Self {
        Self {
            user: None,
            trace: None,
            run: None,
            since: Instant::now(),
        }
    }
}

/// What a new run starts with.
pub(crate) struct RunStart {
    pub(crate) control: RunControl,
    pub(crate) user: Option<UserContext>,
    pub(crate) trace: Option<opentelemetry::Context>,
}

/// The node's per-task local state.
#[derive(Default)]
pub(crate) struct LocalTasks {
    tasks: Mutex<HashMap<String, LocalTask>>,
}

impl std::fmt::Debug for LocalTasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTasks")
            .field("len", &self.len())
            .finish()
    }
}

impl LocalTasks {
    /// Remembers what a submit on this node brings, before its commit (a runner may start
    /// as soon as it lands). Nothing is kept when there is nothing to keep.
    pub(crate) fn remember(
        &self,
        task_id: &str,
        user: Option<UserContext>,
        trace: Option<opentelemetry::Context>,
    ) {
        if user.is_none() && trace.is_none() {
            return;
        }
        lock(&self.tasks).insert(
            task_id.to_owned(),
            LocalTask {
                user,
                trace,
                run: None,
                since: Instant::now(),
            },
        );
    }

    /// Replaces the user context the task's next run on this node starts with (a resume
    /// with a fresh token), keeping the rest of its entry; a live run keeps the context it
    /// started with.
    pub(crate) fn set_user(&self, task_id: &str, user: UserContext) {
        let mut tasks = lock(&self.tasks);
        let entry = tasks
            .entry(task_id.to_owned())
            .or_insert_with(LocalTask::empty);
        entry.user = Some(user);
        entry.since = Instant::now();
    }

    /// Registers a run of the claim `epoch`. A live run of an earlier claim of the same
    /// task lost its lease (this node claimed the task again after a recovery): it is
    /// told to stop, and its writes are refused by the fence anyway.
    pub(crate) fn begin_run(&self, task_id: &str, epoch: u32) -> RunStart {
        let control = RunControl::new(epoch);
        let mut tasks = lock(&self.tasks);
        let entry = tasks
            .entry(task_id.to_owned())
            .or_insert_with(LocalTask::empty);
        if let Some(stale) = entry.run.replace(control.clone()) {
            stale.request(StopReason::LeaseLost);
        }
        entry.since = Instant::now();
        RunStart {
            control,
            user: entry.user.clone(),
            trace: entry.trace.clone(),
        }
    }

    /// Ends the run of claim `epoch`. With `waiting` (a retry is scheduled and this node
    /// may run it), the entry stays without a run; otherwise it is dropped.
    pub(crate) fn end_run(&self, task_id: &str, epoch: u32, waiting: bool) {
        let mut tasks = lock(&self.tasks);
        let Some(entry) = tasks.get_mut(task_id) else {
            return;
        };
        if entry.run.as_ref().is_some_and(|r| r.epoch != epoch) {
            return; // a later claim's run owns the entry now
        }
        if waiting {
            entry.run = None;
            entry.since = Instant::now();
        } else {
            tasks.remove(task_id);
        }
    }

    /// Drops a task's entry, whatever it holds (cancelled, or leaving this node).
    pub(crate) fn forget(&self, task_id: &str) {
        lock(&self.tasks).remove(task_id);
    }

    /// Drops the entries of these tasks that have no live run here.
    pub(crate) fn forget_waiting(&self, task_ids: &[String]) {
        let mut tasks = lock(&self.tasks);
        for id in task_ids {
            if tasks.get(id).is_some_and(|t| t.run.is_none()) {
                tasks.remove(id);
            }
        }
    }

    /// Marks entries as just checked, so the next sweep looks at others first.
    pub(crate) fn touch(&self, task_ids: &[String]) {
        let mut tasks = lock(&self.tasks);
        let now = Instant::now();
        for id in task_ids {
            if let Some(t) = tasks.get_mut(id) {
                t.since = now;
            }
        }
    }

    /// Up to `limit` tasks with an entry but no run here, unchanged for at least `age`,
    /// the longest-waiting first.
    pub(crate) fn waiting_for(&self, age: Duration, limit: usize) -> Vec<String> {
        let tasks = lock(&self.tasks);
        let mut waiting: Vec<(Instant, &String)> = tasks
            .iter()
            .filter(|(_, t)| t.run.is_none() && t.since.elapsed() >= age)
            .map(|(id, t)| (t.since, id))
            .collect();
        waiting.sort_unstable();
        waiting
            .into_iter()
            .take(limit)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// The control of the task's live run here.
    pub(crate) fn run(&self, task_id: &str) -> Option<RunControl> {
        lock(&self.tasks).get(task_id).and_then(|t| t.run.clone())
    }

    /// Every live run here.
    pub(crate) fn runs(&self) -> Vec<(String, RunControl)> {
        lock(&self.tasks)
            .iter()
            .filter_map(|(id, t)| t.run.clone().map(|r| (id.clone(), r)))
            .collect()
    }

    /// Number of tasks with local state.
    pub(crate) fn len(&self) -> usize {
        lock(&self.tasks).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_run_drops_the_entry_and_a_retry_keeps_it_waiting() {
        let local = LocalTasks::default();
        local.remember("t", Some(Arc::new(7u32)), None);
        let run = local.begin_run("t", 1);
        assert!(run.user.is_some());
        local.end_run("t", 1, true);
        assert_eq!(local.waiting_for(Duration::ZERO, 10), ["t"]);
        local.begin_run("t", 2);
        assert!(local.waiting_for(Duration::ZERO, 10).is_empty());
        local.end_run("t", 1, false);
        assert_eq!(local.len(), 1, "a stale run's end leaves a later run alone");
        local.end_run("t", 2, false);
        assert_eq!(local.len(), 0);
    }

    #[test]
    fn a_fresh_user_context_reaches_the_next_run_and_keeps_the_live_one() {
        let local = LocalTasks::default();
        local.set_user("t", Arc::new("fresh"));
        let run = local.begin_run("t", 1);
        assert_eq!(
            run.user.and_then(|u| u.downcast::<&str>().ok()).as_deref(),
            Some(&"fresh")
        );
        local.set_user("t", Arc::new("newer"));
        assert!(local.run("t").is_some(), "the live run is kept");
        local.end_run("t", 1, true);
        let next = local.begin_run("t", 2);
        assert_eq!(
            next.user.and_then(|u| u.downcast::<&str>().ok()).as_deref(),
            Some(&"newer")
        );
    }

    #[test]
    fn a_new_claim_stops_the_stale_run_and_waiting_entries_can_be_forgotten() {
        let local = LocalTasks::default();
        let first = local.begin_run("t", 1).control;
        local.begin_run("t", 2);
        assert_eq!(first.reason(), Some(StopReason::LeaseLost));
        local.remember("w", Some(Arc::new(())), None);
        local.forget_waiting(&["t".to_owned(), "w".to_owned()]);
        assert!(local.run("t").is_some(), "a live run is not forgotten");
        assert_eq!(local.len(), 1);
    }
}
