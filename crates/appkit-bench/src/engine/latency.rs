//! Phase 2: paced submits at a moderate rate, each followed by a subscription that waits
//! for the task's `completed` event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use taskflow::{EventKind, SubmitOptions, Submitted, TaskFlow};
use tokio::task::JoinSet;

use super::TASK;
use super::recorder::Recorder;
use crate::stats::Percentiles;

/// Bound on one task's submit → completed, so a lost event fails the bench.
const TASK_DEADLINE: Duration = Duration::from_secs(30);

/// What the phase measured.
#[derive(Debug)]
pub(super) struct Latency {
    /// Tasks submitted.
    pub(super) tasks: usize,
    /// Submits per second actually achieved.
    pub(super) achieved_rate: f64,
    /// Submit → handler entry.
    pub(super) start: Option<Percentiles>,
    /// Submit → `completed` event received by the subscriber.
    pub(super) complete: Option<Percentiles>,
}

/// Submits tasks `base..base + rate * secs` open-loop at `rate` per second.
pub(super) async fn run(
    flow: &TaskFlow,
    rec: &Arc<Recorder>,
    base: usize,
    rate: u32,
    secs: u32,
) -> Result<Latency> {
    let n = usize::try_from(u64::from(rate) * u64::from(secs))?;
    let begin = Instant::now();
    let mut tasks = JoinSet::new();
    for j in 0..n {
        // Open loop: the schedule does not wait for earlier tasks, so a slow engine shows
        // up as latency rather than as a lower offered rate.
        let due = begin + Duration::from_nanos(u64::try_from(j)? * 1_000_000_000 / u64::from(rate));
        tokio::time::sleep_until(due.into()).await;
        tasks.spawn(one(flow.clone(), rec.clone(), base + j, due));
    }
    let submitting = begin.elapsed();
    let mut complete = Vec::with_capacity(n);
    while let Some(joined) = tasks.join_next().await {
        complete.push(joined.context("latency task panicked")??);
    }
    let start = Percentiles::of(
        (base..base + n)
            .filter_map(|i| rec.submit_to_start(i))
            .collect(),
    );
    Ok(Latency {
        tasks: n,
        achieved_rate: n as f64 / submitting.as_secs_f64(),
        start,
        complete: Percentiles::of(complete),
    })
}

/// Submits task `i`, subscribes from seq 0, and returns submit → `completed` received,
/// timed from `due`, the moment the schedule says the submit is sent: time the spawned
/// task waits to run counts too (no coordinated omission).
async fn one(flow: TaskFlow, rec: Arc<Recorder>, i: usize, due: Instant) -> Result<Duration> {
    let t0 = due;
    rec.submitting_at(i, due);
    let key = match flow.submit(TASK, i, SubmitOptions::new()).await? {
        Submitted::Created(h) => h.idempotency_key,
        Submitted::Existing(_, status) => bail!("task {i} attached to an existing {status} task"),
    };
    let mut events = flow.subscribe(&key, None, 0).await?;
    let mut expect_seq = 1;
    loop {
        let event = tokio::time::timeout(TASK_DEADLINE, events.next())
            .await
            .with_context(|| format!("task {i}: no completion within {TASK_DEADLINE:?}"))?
            .with_context(|| format!("task {i}: stream ended without a terminal event"))??;
        if event.seq != expect_seq {
            bail!("task {i}: got seq {} where {expect_seq} was due", event.seq);
        }
        expect_seq += 1;
        match event.kind {
            EventKind::Completed => return Ok(t0.elapsed()),
            k if k.is_terminal() => bail!("task {i} ended {}: {}", k.as_str(), event.payload),
            _ => {}
        }
    }
}
