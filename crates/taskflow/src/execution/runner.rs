//! One attempt of one task: run the handler under its guards, then record the outcome.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use opentelemetry::KeyValue;
use serde_json::Value;
use tracing::{Instrument, debug, info, info_span, warn};

use super::retry::backoff;
use crate::engine::{Registered, RunnerCtl, Shared, StopReason, duration_ms};
use crate::handler::{ContextInner, TaskContext, TaskError, lock};
use crate::store::{Fence, Finish, OpResult, WriteOp, now_ms};
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

/// Starts a runner for a task this node has claimed (its slot is already taken).
pub(crate) fn spawn(
    shared: Arc<Shared>,
    task: TaskInfo,
    recovery: bool,
    registered: Arc<Registered>,
) {
    let ctl = RunnerCtl::new(task.attempt);
    // A runner of an earlier attempt still here lost its lease (this node re-claimed the
    // task after recovery): it must stop and may not write.
    if let Some(stale) = lock(&shared.running).insert(task.id.clone(), ctl.clone()) {
        stale.request(StopReason::LeaseLost);
    }
    shared.metrics.running.add(1, &[]);
    let span = info_span!(
        "taskflow.task.execute",
        task.name = %task.name,
        task.id = %task.id,
        task.attempt = task.attempt,
    );
    if let Some(parent) = lock(&shared.trace_parents).get(&task.id).cloned() {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        // Without an OpenTelemetry layer there is nothing to join; that is fine.
        let _ = span.set_parent(parent);
    }
    let tracker = shared.runners.clone();
    tracker.spawn(run(shared, task, recovery, registered, ctl).instrument(span));
}

async fn run(
    shared: Arc<Shared>,
    task: TaskInfo,
    recovery: bool,
    registered: Arc<Registered>,
    ctl: RunnerCtl,
) {
    let fence = Fence {
        task_id: task.id.clone(),
        node: shared.node.clone(),
        attempt: task.attempt,
    };
    let started = Instant::now();
    // A first attempt straight from submit or claim has no checkpoints; anything else may.
    let fresh = task.attempt == 1 && task.last_seq <= 2 && !recovery;
    let checkpoints = if fresh {
        Default::default()
    } else {
        match shared.store.steps(&task.id).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "loading step checkpoints failed; retrying the attempt");
                let error = TaskError::retryable(format!("loading checkpoints: {e}"));
                finish(
                    &shared,
                    &task,
                    &fence,
                    &registered,
                    Ran::Returned(Err(error)),
                    None,
                )
                .await;
                release_slot(&shared, &task);
                cleanup(&shared, &task, &ctl, started);
                return;
            }
        }
    };
    let user = lock(&shared.user_contexts).get(&task.id).cloned();
    let ctx = TaskContext::new(ContextInner {
        writer: shared.writer.clone(),
        fence: fence.clone(),
        name: task.name.clone(),
        key: task.idempotency_key.clone(),
        owner: task.user_id.clone(),
        recovery,
        token: ctl.token.clone(),
        user,
        checkpoints,
        used_steps: Default::default(),
        step_events: Default::default(),
    });
    debug!("attempt started");
    let fut = (registered.handler)(ctx, task.input.clone());
    let ran = guarded(
        fut,
        &ctl,
        registered.options.timeout,
        shared.config.stop_grace,
    )
    .await;
    // The handler is done: its slot goes to the next task now, so the next claim can
    // share a commit with this attempt's outcome instead of waiting behind it.
    release_slot(&shared, &task);
    finish(&shared, &task, &fence, &registered, ran, ctl.reason()).await;
    cleanup(&shared, &task, &ctl, started);
}

fn release_slot(shared: &Arc<Shared>, task: &TaskInfo) {
    lock(&shared.slots).release(task.user_id.as_deref(), &task.name);
    shared.kick();
}

/// Runs the handler with panic capture, the attempt timeout and the stop grace.
async fn guarded(
    fut: futures_util::future::BoxFuture<'static, Result<Value, TaskError>>,
    ctl: &RunnerCtl,
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
        () = ctl.token.cancelled() => tokio::select! {
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

/// Decides what the attempt came to and records it (fenced).
async fn finish(
    shared: &Arc<Shared>,
    task: &TaskInfo,
    fence: &Fence,
    registered: &Registered,
    ran: Ran,
    reason: Option<StopReason>,
) {
    let name = KeyValue::new("task.name", task.name.clone());
    let outcome = match (reason, ran) {
        // Cancelled: the cancel already committed the terminal state. Lease lost: another
        // node owns the task now. Either way this runner may not write.
        (Some(StopReason::Cancel | StopReason::LeaseLost), _) => return,
        (_, Ran::Returned(Ok(result))) => Finish::Complete { result },
        (Some(StopReason::Stop), _) => Finish::Suspend {
            reason: "stopped".to_owned(),
        },
        (Some(StopReason::Shutdown), _) => Finish::Release,
        (None, Ran::Returned(Err(e))) => failure(shared, task, &e),
        (None, Ran::Panicked(msg)) => failure(shared, task, &TaskError::retryable(msg)),
        (None, Ran::TimedOut | Ran::Abandoned) => {
            let e = TaskError::retryable(format!(
                "attempt timed out after {} ms",
                registered.options.timeout.as_millis()
            ));
            failure(shared, task, &e)
        }
    };
    let terminal = matches!(outcome, Finish::Complete { .. } | Finish::Fail { .. });
    let retry_at = match &outcome {
        Finish::Retry { run_at, .. } => Some(*run_at),
        _ => None,
    };
    match &outcome {
        Finish::Complete { .. } => shared.metrics.completed.add(1, &[name]),
        Finish::Fail { .. } => shared.metrics.failed.add(1, &[name]),
        Finish::Retry { .. } => shared.metrics.retried.add(1, &[name]),
        Finish::Suspend { .. } | Finish::Release => {}
    }
    let op = WriteOp::Finish {
        fence: fence.clone(),
        outcome,
        now: now_ms(),
    };
    match shared.writer.write(op).await.map(|o| o.result) {
        Ok(OpResult::Applied) => {}
        Ok(_) => {
            info!("attempt outcome refused: the task is no longer owned by this runner");
            return;
        }
        Err(e) => {
            // The lease will expire and the reaper recovers the task.
            warn!(error = %e, "recording the attempt outcome failed");
            return;
        }
    }
    if terminal {
        lock(&shared.user_contexts).remove(&task.id);
        lock(&shared.trace_parents).remove(&task.id);
    }
    if let Some(run_at) = retry_at {
        schedule_wake(shared, run_at);
    }
    if matches!(reason, Some(StopReason::Shutdown)) {
        shared.pending_estimate.fetch_add(1, Ordering::Relaxed);
    }
}

fn failure(shared: &Shared, task: &TaskInfo, e: &TaskError) -> Finish {
    let error = e.to_json();
    if e.is_permanent() || task.attempt >= task.max_attempts {
        info!(error = %e, "task failed");
        return Finish::Fail { error };
    }
    let delay = backoff(
        task.attempt,
        shared.config.retry_base,
        shared.config.retry_cap,
    );
    debug!(error = %e, delay_ms = delay.as_millis(), "attempt failed; retrying");
    Finish::Retry {
        error,
        run_at: now_ms() + duration_ms(delay),
    }
}

/// Wakes the executor when a retry becomes due.
fn schedule_wake(shared: &Arc<Shared>, run_at: i64) {
    let delay = Duration::from_millis(u64::try_from(run_at - now_ms()).unwrap_or(0));
    let weak = Arc::downgrade(shared);
    let stop = shared.stop_claiming.clone();
    shared.background.spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(delay) => {
                if let Some(shared) = weak.upgrade() {
                    shared.kick();
                }
            }
        }
    });
}

fn cleanup(shared: &Arc<Shared>, task: &TaskInfo, ctl: &RunnerCtl, started: Instant) {
    {
        let mut running = lock(&shared.running);
        if running
            .get(&task.id)
            .is_some_and(|c| c.attempt == ctl.attempt)
        {
            running.remove(&task.id);
        }
    }
    shared.metrics.running.add(-1, &[]);
    shared.metrics.duration.record(
        started.elapsed().as_secs_f64(),
        &[KeyValue::new("task.name", task.name.clone())],
    );
    ctl.done.cancel();
}
