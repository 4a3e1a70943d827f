//! One attempt of one task: run the handler under its guards, then record the outcome.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use opentelemetry::KeyValue;
use serde_json::Value;
use tracing::{Instrument, debug, info, info_span, warn};

use super::executor::duration_ms;
use crate::backoff::backoff;
use crate::handler::{ContextInner, TaskContext, TaskError};
use crate::node::{Node, Registered, RunControl, StopReason};
use crate::store::{ClaimedTask, Fence, Finish, OpResult, WriteOp, now_ms};
use crate::task::TaskInfo;

/// How the handler's future ended.
#[derive(Debug)]
enum Ran {
    Returned(Result<Value, TaskError>),
    Panicked(String),
    TimedOut,
    /// Asked to stop and still running after the grace: dropped.
    Abandoned,
}

/// One run: the claimed task, its fence and its local control.
struct Run {
    node: Arc<Node>,
    task: TaskInfo,
    fence: Fence,
    recovery: bool,
    registered: Arc<Registered>,
    control: RunControl,
}

/// Starts a runner for a task this node has claimed (its slot is already taken).
pub(crate) fn spawn(node: Arc<Node>, claimed: ClaimedTask, registered: Arc<Registered>) {
    let ClaimedTask {
        task,
        epoch,
        recovery,
        ..
    } = claimed;
    let start = node.local.begin_run(&task.id, epoch);
    node.metrics.running.add(1, &[]);
    let span = info_span!(
        "taskflow.task.execute",
        task.name = %task.name,
        task.id = %task.id,
        task.attempt = task.attempt,
    );
    if let Some(parent) = start.trace {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        // Without an OpenTelemetry layer there is nothing to join; that is fine.
        let _ = span.set_parent(parent);
    }
    let run = Run {
        fence: Fence {
            task_id: task.id.clone(),
            node: node.id.clone(),
            epoch,
        },
        node: node.clone(),
        task,
        recovery,
        registered,
        control: start.control,
    };
    node.lifecycle
        .runners
        .spawn(run.execute(start.user).instrument(span));
}

impl Run {
    async fn execute(self, user: Option<crate::handler::UserContext>) {
        let started = Instant::now();
        let ran = match self.checkpoints().await {
            Ok(checkpoints) => {
                let ctx = TaskContext::new(ContextInner {
                    writer: self.node.writer.clone(),
                    fence: self.fence.clone(),
                    attempt: self.task.attempt,
                    name: self.task.name.clone(),
                    key: self.task.idempotency_key.clone(),
                    owner: self.task.user_id.clone(),
                    recovery: self.recovery,
                    token: self.control.token.clone(),
                    user,
                    checkpoints,
                    used_steps: Default::default(),
                    step_events: Default::default(),
                });
                debug!("attempt started");
                let fut = (self.registered.handler)(ctx, self.task.input.clone());
                guarded(
                    fut,
                    &self.control,
                    self.registered.options.timeout,
                    self.node.config.stop_grace,
                )
                .await
            }
            Err(e) => {
                warn!(error = %e, "loading step checkpoints failed; retrying the attempt");
                Ran::Returned(Err(TaskError::retryable(format!(
                    "loading checkpoints: {e}"
                ))))
            }
        };
        // The handler is done: its slot goes to the next task now, so the next claim can
        // share a commit with this attempt's outcome instead of waiting behind it. Only
        // when work may be waiting: a claim that finds nothing still costs a batch, and
        // while the flag is clear a new submit claims its task at once, in its own commit.
        self.node
            .slots
            .release(self.task.user_id.as_deref(), &self.task.name);
        self.node.work.wake_if_set();
        let waiting = self.finish(ran).await;
        self.node
            .local
            .end_run(&self.task.id, self.fence.epoch, waiting);
        self.node.metrics.running.add(-1, &[]);
        self.node.metrics.duration.record(
            started.elapsed().as_secs_f64(),
            &[KeyValue::new("task.name", self.task.name.clone())],
        );
        self.control.done.cancel();
    }

    /// The step checkpoints of earlier runs (none for a first attempt straight from its
    /// submit or claim).
    async fn checkpoints(&self) -> crate::Result<std::collections::HashMap<String, Value>> {
        let fresh = self.task.attempt == 1 && self.task.last_seq <= 2 && !self.recovery;
        if fresh {
            return Ok(Default::default());
        }
        self.node.store.steps(&self.task.id).await
    }

    /// Decides what the attempt came to and records it (fenced). Returns `true` when the
    /// task waits for a retry that this node may run.
    async fn finish(&self, ran: Ran) -> bool {
        let reason = self.control.reason();
        let outcome = match (reason, ran) {
            // Cancelled: the cancel already committed the terminal state. Lease lost:
            // another claim owns the task now. Either way this runner may not write.
            (Some(StopReason::Cancel | StopReason::LeaseLost), _) => return false,
            (_, Ran::Returned(Ok(result))) => Finish::Complete { result },
            (Some(StopReason::Stop), _) => Finish::Suspend {
                reason: "stopped".to_owned(),
            },
            (Some(StopReason::Shutdown), _) => Finish::Release,
            (None, Ran::Returned(Err(e))) => self.failure(&e),
            (None, Ran::Panicked(msg)) => self.failure(&TaskError::retryable(msg)),
            (None, Ran::TimedOut | Ran::Abandoned) => self.failure(&TaskError::retryable(format!(
                "attempt timed out after {} ms",
                self.registered.options.timeout.as_millis()
            ))),
        };
        let name = KeyValue::new("task.name", self.task.name.clone());
        let metrics = &self.node.metrics;
        let retry_at = match &outcome {
            Finish::Complete { .. } => {
                metrics.completed.add(1, &[name]);
                None
            }
            Finish::Fail { .. } => {
                metrics.failed.add(1, &[name]);
                None
            }
            Finish::Retry { run_at, .. } => {
                metrics.retried.add(1, &[name]);
                Some(*run_at)
            }
            Finish::Suspend { .. } | Finish::Release => None,
        };
        let released = matches!(outcome, Finish::Release);
        let op = WriteOp::Finish {
            fence: self.fence.clone(),
            attempt: self.task.attempt,
            outcome,
            now: now_ms(),
        };
        match self.node.writer.write(op).await.map(|o| o.result) {
            Ok(OpResult::Applied) => {}
            Ok(_) => {
                info!("attempt outcome refused: the task is no longer owned by this runner");
                return false;
            }
            Err(e) => {
                // The lease will expire and the rescuer recovers the task.
                warn!(error = %e, "recording the attempt outcome failed");
                return false;
            }
        }
        if released {
            self.node.admission.add_pending(1);
        }
        match retry_at {
            Some(run_at) => {
                schedule_wake(&self.node, run_at);
                true
            }
            None => false,
        }
    }

    fn failure(&self, e: &TaskError) -> Finish {
        let error = e.to_json();
        if e.is_permanent() || self.task.attempt >= self.task.max_attempts {
            info!(error = %e, "task failed");
            return Finish::Fail { error };
        }
        let config = &self.node.config;
        let delay = backoff(self.task.attempt, config.retry_base, config.retry_cap);
        debug!(error = %e, delay_ms = delay.as_millis(), "attempt failed; retrying");
        Finish::Retry {
            error,
            run_at: now_ms() + duration_ms(delay),
        }
    }
}

/// Runs the handler with panic capture, the attempt timeout and the stop grace.
async fn guarded(
    fut: futures_util::future::BoxFuture<'static, Result<Value, TaskError>>,
    control: &RunControl,
    timeout: Duration,
    grace: Duration,
) -> Ran {
    let mut fut = AssertUnwindSafe(fut).catch_unwind();
    let ended = |r: std::thread::Result<Result<Value, TaskError>>| match r {
        Ok(r) => Ran::Returned(r),
        Err(panic) => Ran::Panicked(panic_message(panic.as_ref())),
    };
    tokio::select! {
        r = &mut fut => ended(r),
        () = tokio::time::sleep(timeout) => Ran::TimedOut,
        () = control.token.cancelled() => tokio::select! {
            r = &mut fut => ended(r),
            () = tokio::time::sleep(grace) => Ran::Abandoned,
        },
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    format!("handler panicked: {text}")
}

/// Wakes the executor when a retry becomes due.
fn schedule_wake(node: &Arc<Node>, run_at: i64) {
    let delay = Duration::from_millis(u64::try_from(run_at - now_ms()).unwrap_or(0));
    let weak = Arc::downgrade(node);
    let stop = node.lifecycle.stop_claiming.clone();
    node.lifecycle.background.spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(delay) => {
                if let Some(node) = weak.upgrade() {
                    node.work.kick();
                }
            }
        }
    });
}
