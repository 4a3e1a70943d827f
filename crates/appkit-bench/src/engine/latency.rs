//! Phase 2: paced submits at a moderate rate, each followed by a subscription that waits
//! for the task's `completed` event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use taskflow::{EventKind, SubmitOptions, Submitted, TaskFlow};

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
    // The schedule is kept by an OS thread: tokio's timer has a 1 ms tick and fires 1-2 ms
    // after a deadline, which would be counted against the engine (every latency is timed
    // from the scheduled send time). A thread's sleep overshoots by tens of microseconds.
    let runtime = tokio::runtime::Handle::current();
    let (flow, recorder) = (flow.clone(), rec.clone());
    let pacer = std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || {
            let mut spawned = Vec::with_capacity(n);
            for j in 0..n {
                // Open loop: the schedule does not wait for earlier tasks, so a slow engine
                // shows up as latency rather than as a lower offered rate.
                let due = begin + Duration::from_nanos(j as u64 * 1_000_000_000 / u64::from(rate));
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                spawned.push(runtime.spawn(one(flow.clone(), recorder.clone(), base + j, due)));
            }
            (spawned, begin.elapsed())
        })?;
    let (spawned, submitting) = tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    let mut complete = Vec::with_capacity(n);
    for task in spawned {
        complete.push(task.await.context("latency task panicked")??);
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
