//! Phase 1: as many no-op tasks as the engine takes, from concurrent submitters.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use futures_util::future::try_join_all;
use taskflow::{EventKind, SubmitOptions, Submitted, TaskFlow, TaskStatus};
use tokio::task::JoinSet;

use super::TASK;
use super::recorder::Recorder;
use crate::stats::Percentiles;

/// How many of the last tasks to return are watched to time the last commit.
const TAIL: usize = 64;
/// Bound on the whole phase, so a stuck engine fails the bench instead of hanging it.
const DEADLINE: Duration = Duration::from_secs(300);

/// What the phase measured.
#[derive(Debug)]
pub(super) struct Throughput {
    /// First submit → last `completed` event observed.
    pub(super) elapsed: Duration,
    /// First submit → last submit acknowledged.
    pub(super) submitting: Duration,
    /// Submit → handler entry, under saturation.
    pub(super) start_latency: Option<Percentiles>,
    /// Idempotency keys, by task index.
    pub(super) keys: Vec<String>,
    /// CPU time in the measured window: this process, Postgres backends (see `cpu`).
    pub(super) cpu: (Option<Duration>, Option<Duration>),
}

/// Submits tasks `0..n` from `concurrency` submitters and waits until all are completed.
pub(super) async fn run(
    flow: &TaskFlow,
    rec: &Arc<Recorder>,
    n: usize,
    concurrency: usize,
) -> Result<Throughput> {
    let first_submit = Instant::now();
    let keys = submit_all(flow, rec, n, concurrency).await?;
    let submitting = first_submit.elapsed();
    wait_all_completed(flow, rec, &keys).await?;
    let elapsed = first_submit.elapsed();
    let start_latency = Percentiles::of((0..n).filter_map(|i| rec.submit_to_start(i)).collect());
    Ok(Throughput {
        elapsed,
        submitting,
        start_latency,
        keys,
        cpu: (None, None),
    })
}

/// Submits tasks `0..n` from `concurrency` submitters; their keys by task index, once
/// every submit is acknowledged (committed).
pub(super) async fn submit_all(
    flow: &TaskFlow,
    rec: &Arc<Recorder>,
    n: usize,
    concurrency: usize,
) -> Result<Vec<String>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut submitters = JoinSet::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        submitters.spawn(submitter(flow.clone(), rec.clone(), next.clone(), n));
    }
    let mut keys = vec![String::new(); n];
    while let Some(joined) = submitters.join_next().await {
        for (i, key) in joined.context("submitter panicked")?? {
            keys[i] = key;
        }
    }
    Ok(keys)
}

/// Waits until the handlers of all `keys` ran and the last completions are committed
/// (see the module docs of `engine` for why watching the last returners is enough).
pub(super) async fn wait_all_completed(
    flow: &TaskFlow,
    rec: &Arc<Recorder>,
    keys: &[String],
) -> Result<()> {
    let n = keys.len();
    tokio::time::timeout(DEADLINE, rec.all_returned())
        .await
        .with_context(|| {
            format!(
                "only {} of {n} handlers ran within {DEADLINE:?}",
                rec.returns()
            )
        })?;
    let tail = rec.last_returned(n, TAIL);
    try_join_all(tail.iter().map(|&i| wait_completed(flow, &keys[i]))).await?;
    Ok(())
}

async fn submitter(
    flow: TaskFlow,
    rec: Arc<Recorder>,
    next: Arc<AtomicUsize>,
    n: usize,
) -> Result<Vec<(usize, String)>> {
    let mut keys = Vec::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            return Ok(keys);
        }
        rec.submitting(i);
        match flow.submit(TASK, i, SubmitOptions::new()).await? {
            Submitted::Created(h) => keys.push((i, h.idempotency_key)),
            Submitted::Existing(_, status) => {
                bail!("task {i} attached to an existing {status} task")
            }
        }
    }
}

/// Waits for the task's `completed` event (replayed if it already committed).
async fn wait_completed(flow: &TaskFlow, key: &str) -> Result<()> {
    let mut events = flow.subscribe(key, None, 0).await?;
    while let Some(event) = events.next().await {
        let event = event?;
        match event.kind {
            EventKind::Completed => return Ok(()),
            k if k.is_terminal() => bail!("task {key} ended {}: {}", k.as_str(), event.payload),
            _ => {}
        }
    }
    bail!("event stream of task {key} ended without a terminal event")
}

/// Checks, untimed, that every task is still pending with only its `created` event (the
/// `submit` workload runs no executor).
pub(super) async fn verify_pending(flow: &TaskFlow, keys: &[String]) -> Result<()> {
    let mut checks = futures_util::stream::iter(keys)
        .map(|key| async move { (key, flow.status(key, None).await) })
        .buffer_unordered(8);
    while let Some((key, status)) = checks.next().await {
        let task = status.with_context(|| format!("status of {key}"))?;
        if task.status != TaskStatus::Pending || task.last_seq != 1 {
            bail!(
                "task {key}: status {} last_seq {} (want pending, 1)",
                task.status,
                task.last_seq
            );
        }
    }
    Ok(())
}

/// Checks, untimed, that every task completed in one attempt with exactly `events` events
/// (`created`, `started`, the handler's, `completed`).
pub(super) async fn verify(flow: &TaskFlow, keys: &[String], events: u64) -> Result<()> {
    let mut checks = futures_util::stream::iter(keys)
        .map(|key| async move { (key, flow.status(key, None).await) })
        .buffer_unordered(8);
    while let Some((key, status)) = checks.next().await {
        let task = status.with_context(|| format!("status of {key}"))?;
        if task.status != TaskStatus::Completed || task.attempt != 1 || task.last_seq != events {
            bail!(
                "task {key}: status {} attempt {} last_seq {} (want completed, 1, {events})",
                task.status,
                task.attempt,
                task.last_seq
            );
        }
    }
    Ok(())
}
