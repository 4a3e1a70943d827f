//! `engine` mode: no-op tasks through [`TaskFlow`] on a SQLite store in a temporary
//! directory (WAL, `synchronous=NORMAL`, the engine's defaults), engine and bench sharing
//! one multi-threaded tokio runtime, as in an app that embeds the engine. With
//! `--store postgres` the engine runs on a Postgres store in a fresh schema of the
//! database at `TEST_DATABASE_URL` instead (same phases, same fields), dropped when the
//! run ends.
//!
//! # Workloads (`--workload`)
//!
//! - `e2e` (default): phase 1 and phase 2 below: submit and run at once.
//! - `submit`: `--tasks` acknowledged submits from `--concurrency` submitters with no
//!   executor running (`Config::run_tasks(false)`); `tasks_per_s` = tasks / time from the
//!   first submit to the last acknowledgement. Every task is then checked to be pending.
//! - `drain`: `--tasks` tasks are submitted with no executor running (untimed), the
//!   engine is shut down, and a new one is started on the same store with `--slots`
//!   slots; `tasks_per_s` = tasks / time from just before that start to the last
//!   completion committed (measured as in phase 1). Shaped like graphile-worker's and
//!   pg-boss's drain benchmarks, so the ratios mean something.
//!
//! `--history H` first fills the store with H completed tasks and their events (see
//! `history`), then (Postgres) runs `VACUUM ANALYZE`, so a long-lived store is measured.
//!
//! The handler `bench.noop` takes its task index as input, records when it ran, emits
//! `--events` custom events (`tick`, payload the event's index; none by default), each
//! awaited as a handler awaits `emit`, runs `--steps` checkpointed steps (`step-<n>`, each
//! returning its index; none by default) one after another, and returns `null`. Tasks are
//! submitted without a user and with derived idempotency keys, so every submit pays for
//! key derivation (JCS + SHA-256). `max_attempts` is 1: a failure is never
//! hidden by a retry.
//!
//! # Phase 1: throughput
//!
//! `--concurrency` submitters call `submit` back to back (each waits for its acknowledgement,
//! i.e. the commit) until `--tasks` tasks are in, with `--slots` global slots.
//!
//! - `tasks_per_s` = `tasks` / `elapsed_s`, where `elapsed_s` runs from the first submit to
//!   the moment the bench has *observed* every task's `completed` event committed. The last
//!   commit is found this way: a handler returns and, in the same poll, its runner queues
//!   the `Finish` op to the single group-commit writer, which commits ops in queue order.
//!   So once every handler has returned, the tasks whose completion commits last are among
//!   the last to return; the bench subscribes (from seq 0) to the last 64 of them and stops
//!   the clock when all 64 streams have delivered `completed`. That is an upper bound on the
//!   true last commit (it includes the subscribe round trips).
//! - `submit_phase_s`: first submit → last submit acknowledged.
//! - `saturated_submit_to_start_*_ms`: per task, from just before `submit` was called to
//!   handler entry, while the engine is saturated (so it includes queueing behind the
//!   slots).
//! - After the clock stops, every task's status is read (untimed) and must be
//!   `completed`, attempt 1, with exactly 3 + `--events` events (`created`, `started`,
//!   the ticks, `completed`); any other outcome fails the bench.
//!
//! # Phase 2: latency at moderate load (`--rate`, `--latency-secs`)
//!
//! Open-loop paced submits at `--rate` per second, on the same engine and database after
//! phase 1. An OS thread keeps the schedule (tokio's timer would fire 1-2 ms late) and
//! spawns each submit onto the runtime at its scheduled time. Each submit is followed by
//! `subscribe(key, None, 0)`, and the stream is read until `completed`; seqs must arrive
//! 1, 2, 3, … with no gap. Every latency is timed from the scheduled send time, so a submit
//! that waits to run (a busy runtime, a late pacer) counts against the engine: no
//! coordinated omission.
//!
//! - `submit_to_complete_*_ms`: from the scheduled send time to the `completed`
//!   event arriving on the subscriber's stream: the submit commit, the claim, the handler,
//!   the completion commit and delivery. An event is delivered only after its commit, so
//!   this is commit-to-visible.
//! - `submit_to_start_*_ms`: from the scheduled send time to handler entry.
//!
//! `peak_rss_kib` is the process's `VmHWM` at the end (engine, bench bookkeeping and
//! SQLite page cache together).
//!
//! # CPU per task
//!
//! `cpu_ms_per_task`: user + system CPU time of this process (engine, bench and SQLite's
//! worker threads) over the measured window of phase 1, the `submit` window or the
//! `drain` window, divided by `--tasks`. `db_cpu_ms_per_task` (Postgres only, when the
//! server runs on this machine): the same for the server backends serving the bench's
//! connections, found by their `application_name` (`appkit-bench-<pid>`). Both come from
//! `/proc/<pid>/stat` (10 ms ticks). CPU per task is much less sensitive than wall time to
//! other work on a shared machine; flat cost means it does not grow with the store.

mod cpu;
mod history;
mod latency;
mod recorder;
mod store;
mod throughput;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use taskflow::{Config, DEFAULT_MAX_PENDING, TaskContext, TaskError, TaskFlow, TaskOptions};

use self::recorder::Recorder;
use crate::args::Flags;
use crate::stats::{Percentiles, peak_rss_kib, round3};

const TASK: &str = "bench.noop";

/// Settings of the `engine` mode.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    tasks: usize,
    concurrency: usize,
    slots: usize,
    rate: u32,
    latency_secs: u32,
    store: StoreKind,
    workload: Workload,
    history: usize,
    events: u32,
    steps: u32,
}

/// What is measured (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    E2e,
    Submit,
    Drain,
}

impl std::str::FromStr for Workload {
    type Err = std::io::Error;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "e2e" => Ok(Self::E2e),
            "submit" => Ok(Self::Submit),
            "drain" => Ok(Self::Drain),
            other => Err(std::io::Error::other(format!(
                "unknown workload `{other}` (e2e | submit | drain)"
            ))),
        }
    }
}

impl Workload {
    fn as_str(self) -> &'static str {
        match self {
            Self::E2e => "e2e",
            Self::Submit => "submit",
            Self::Drain => "drain",
        }
    }
}

/// Which store the engine runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StoreKind {
    /// A temporary SQLite file.
    Sqlite,
    /// A fresh schema in the database at `TEST_DATABASE_URL`.
    Postgres,
}

impl std::str::FromStr for StoreKind {
    type Err = std::io::Error;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "sqlite" => Ok(Self::Sqlite),
            "postgres" => Ok(Self::Postgres),
            other => Err(std::io::Error::other(format!(
                "unknown store `{other}` (sqlite | postgres)"
            ))),
        }
    }
}

impl Options {
    /// Reads the mode's flags (see the usage text in `main`).
    pub(crate) fn parse(mut flags: Flags) -> Result<Self> {
        let opts = Self {
            tasks: flags.take("tasks", 50_000)?,
            concurrency: flags.take("concurrency", 64)?,
            slots: flags.take("slots", 64)?,
            rate: flags.take("rate", 2_000)?,
            latency_secs: flags.take("latency-secs", 3)?,
            store: flags.take("store", StoreKind::Sqlite)?,
            workload: flags.take("workload", Workload::E2e)?,
            history: flags.take("history", 0)?,
            events: flags.take("events", 0)?,
            steps: flags.take("steps", 0)?,
        };
        flags.finish()?;
        anyhow::ensure!(opts.tasks > 0, "--tasks must be at least 1");
        Ok(opts)
    }

    /// Tasks of the paced latency phase (e2e only).
    fn latency_tasks(&self) -> usize {
        if self.workload != Workload::E2e {
            return 0;
        }
        usize::try_from(u64::from(self.rate) * u64::from(self.latency_secs)).unwrap_or(0)
    }
}

/// The JSON line.
#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    workload: &'static str,
    store: &'static str,
    history: usize,
    events_per_task: u32,
    steps_per_task: u32,
    tasks: usize,
    concurrency: usize,
    slots: usize,
    cpus: usize,
    elapsed_s: f64,
    tasks_per_s: f64,
    submit_phase_s: f64,
    cpu_ms_per_task: Option<f64>,
    db_cpu_ms_per_task: Option<f64>,
    saturated_submit_to_start_p50_ms: Option<f64>,
    saturated_submit_to_start_p99_ms: Option<f64>,
    latency_rate: u32,
    latency_tasks: usize,
    latency_achieved_rate: Option<f64>,
    submit_to_start_p50_ms: Option<f64>,
    submit_to_start_p99_ms: Option<f64>,
    submit_to_complete_p50_ms: Option<f64>,
    submit_to_complete_p99_ms: Option<f64>,
    submit_to_complete_max_ms: Option<f64>,
    peak_rss_kib: Option<u64>,
}

/// Runs the workload and returns the report as one JSON line.
pub(crate) async fn run(opts: Options) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let spec = store::StoreSpec::create(opts.store, dir.path()).await?;
    if opts.history > 0 {
        history::fill(&spec, opts.history).await?;
    }
    let pending_bound = DEFAULT_MAX_PENDING.max(u64::try_from(opts.tasks)?.saturating_mul(2));
    let config = Config::default()
        .global_slots(opts.slots)
        .max_pending(pending_bound);
    let rec = Arc::new(Recorder::new(opts.tasks + opts.latency_tasks(), opts.tasks));
    let (tp, lat) = match opts.workload {
        Workload::E2e => e2e(&opts, &spec, config, &rec).await?,
        Workload::Submit => (submit_only(&opts, &spec, config, &rec).await?, None),
        Workload::Drain => (drain(&opts, &spec, config, &rec).await?, None),
    };
    let report = report(&opts, &tp, lat.as_ref());
    spec.remove().await?;
    Ok(serde_json::to_string(&report)?)
}

/// Phase 1 (submit and run at once), its verification, then phase 2.
async fn e2e(
    opts: &Options,
    spec: &store::StoreSpec,
    config: Config,
    rec: &Arc<Recorder>,
) -> Result<(throughput::Throughput, Option<latency::Latency>)> {
    let flow = spec.start(config).await?;
    register(&flow, rec, opts)?;
    let progress = tokio::spawn(progress(rec.clone(), opts.tasks));
    eprintln!(
        "engine: phase 1: {} tasks, {} submitters, {} slots",
        opts.tasks, opts.concurrency, opts.slots
    );
    let cpu = cpu::Snapshot::take(spec.postgres()).await;
    let mut tp = throughput::run(&flow, rec, opts.tasks, opts.concurrency).await?;
    tp.cpu = cpu::Snapshot::take(spec.postgres()).await.since(&cpu);
    progress.abort();
    eprintln!(
        "engine: phase 1 done in {:.3} s ({:.0} tasks/s); verifying every task",
        tp.elapsed.as_secs_f64(),
        opts.tasks as f64 / tp.elapsed.as_secs_f64()
    );
    verify(&flow, &tp.keys, opts.events).await?;
    let lat = if opts.rate > 0 && opts.latency_secs > 0 {
        eprintln!(
            "engine: phase 2: {} submits/s for {} s, each watched to completion",
            opts.rate, opts.latency_secs
        );
        Some(latency::run(&flow, rec, opts.tasks, opts.rate, opts.latency_secs).await?)
    } else {
        None
    };
    flow.shutdown().await;
    Ok((tp, lat))
}

/// Acknowledged submits with no executor.
async fn submit_only(
    opts: &Options,
    spec: &store::StoreSpec,
    config: Config,
    rec: &Arc<Recorder>,
) -> Result<throughput::Throughput> {
    let flow = spec.start(config.run_tasks(false)).await?;
    register(&flow, rec, opts)?;
    eprintln!(
        "engine: submit: {} tasks, {} submitters, no executor",
        opts.tasks, opts.concurrency
    );
    let cpu = cpu::Snapshot::take(spec.postgres()).await;
    let began = Instant::now();
    let keys = throughput::submit_all(&flow, rec, opts.tasks, opts.concurrency).await?;
    let elapsed = began.elapsed();
    let cpu = cpu::Snapshot::take(spec.postgres()).await.since(&cpu);
    throughput::verify_pending(&flow, &keys).await?;
    flow.shutdown().await;
    Ok(throughput::Throughput {
        elapsed,
        submitting: elapsed,
        start_latency: None,
        keys,
        cpu,
    })
}

/// Submits with no executor (untimed), then times a fresh engine draining the backlog.
async fn drain(
    opts: &Options,
    spec: &store::StoreSpec,
    config: Config,
    rec: &Arc<Recorder>,
) -> Result<throughput::Throughput> {
    let submitter = spec.start(config.clone().run_tasks(false)).await?;
    register(&submitter, rec, opts)?;
    eprintln!("engine: drain: submitting {} tasks (untimed)", opts.tasks);
    let began = Instant::now();
    let keys = throughput::submit_all(&submitter, rec, opts.tasks, opts.concurrency).await?;
    let submitting = began.elapsed();
    submitter.shutdown().await;
    store::vacuum(spec).await?;
    eprintln!(
        "engine: drain: starting an executor with {} slots",
        opts.slots
    );
    let progress = tokio::spawn(progress(rec.clone(), opts.tasks));
    let cpu = cpu::Snapshot::take(spec.postgres()).await;
    let began = Instant::now();
    let flow = spec.start(config).await?;
    register(&flow, rec, opts)?;
    throughput::wait_all_completed(&flow, rec, &keys).await?;
    let elapsed = began.elapsed();
    let cpu = cpu::Snapshot::take(spec.postgres()).await.since(&cpu);
    progress.abort();
    verify(&flow, &keys, opts.events).await?;
    flow.shutdown().await;
    Ok(throughput::Throughput {
        elapsed,
        submitting,
        start_latency: None,
        keys,
        cpu,
    })
}

async fn verify(flow: &TaskFlow, keys: &[String], events: u32) -> Result<()> {
    let began = Instant::now();
    throughput::verify(flow, keys, 3 + u64::from(events)).await?;
    eprintln!("engine: verified in {:.1} s", began.elapsed().as_secs_f64());
    Ok(())
}

fn register(flow: &TaskFlow, rec: &Arc<Recorder>, opts: &Options) -> Result<()> {
    let rec = rec.clone();
    let (events, steps) = (opts.events, opts.steps);
    flow.register_with(
        TASK,
        TaskOptions::new().max_attempts(1),
        move |ctx: TaskContext, i: usize| {
            let rec = rec.clone();
            async move {
                rec.handled(i);
                for tick in 0..events {
                    ctx.emit("tick", tick)
                        .await
                        .map_err(|e| TaskError::permanent(e.to_string()))?;
                }
                for n in 0..steps {
                    let got: u32 = ctx.step(&format!("step-{n}"), async move { Ok(n) }).await?;
                    if got != n {
                        return Err(TaskError::permanent(format!("step {n} returned {got}")));
                    }
                }
                Ok::<_, TaskError>(())
            }
        },
    )
    .context("registering the bench task")
}

async fn progress(rec: Arc<Recorder>, n: usize) {
    let began = Instant::now();
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    loop {
        tick.tick().await;
        eprintln!(
            "engine: {:>5.1} s: {}/{n} handlers ran",
            began.elapsed().as_secs_f64(),
            rec.returns()
        );
    }
}

fn report(opts: &Options, tp: &throughput::Throughput, lat: Option<&latency::Latency>) -> Report {
    let p = |f: fn(&Percentiles) -> f64, v: Option<Percentiles>| v.as_ref().map(f);
    let start = lat.and_then(|l| l.start);
    let complete = lat.and_then(|l| l.complete);
    Report {
        mode: "engine",
        workload: opts.workload.as_str(),
        history: opts.history,
        events_per_task: opts.events,
        steps_per_task: opts.steps,
        store: match opts.store {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        },
        tasks: opts.tasks,
        concurrency: opts.concurrency,
        slots: opts.slots,
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        elapsed_s: round3(tp.elapsed.as_secs_f64()),
        tasks_per_s: round3(opts.tasks as f64 / tp.elapsed.as_secs_f64()),
        submit_phase_s: round3(tp.submitting.as_secs_f64()),
        cpu_ms_per_task: tp.cpu.0.map(|d| per_task(d, opts.tasks)),
        db_cpu_ms_per_task: tp.cpu.1.map(|d| per_task(d, opts.tasks)),
        saturated_submit_to_start_p50_ms: p(|p| p.p50_ms, tp.start_latency),
        saturated_submit_to_start_p99_ms: p(|p| p.p99_ms, tp.start_latency),
        latency_rate: if opts.workload == Workload::E2e {
            opts.rate
        } else {
            0
        },
        latency_tasks: lat.map_or(0, |l| l.tasks),
        latency_achieved_rate: lat.map(|l| round3(l.achieved_rate)),
        submit_to_start_p50_ms: p(|p| p.p50_ms, start),
        submit_to_start_p99_ms: p(|p| p.p99_ms, start),
        submit_to_complete_p50_ms: p(|p| p.p50_ms, complete),
        submit_to_complete_p99_ms: p(|p| p.p99_ms, complete),
        submit_to_complete_max_ms: p(|p| p.max_ms, complete),
        peak_rss_kib: peak_rss_kib(),
    }
}

/// Milliseconds of CPU per task, to three decimals.
fn per_task(cpu: Duration, tasks: usize) -> f64 {
    round3(cpu.as_secs_f64() * 1e3 / tasks as f64)
}
