//! `engine` mode: no-op tasks through [`TaskFlow`] on a [`SqliteStore`] in a temporary
//! directory (WAL, `synchronous=NORMAL`, the engine's defaults), engine and bench sharing
//! one multi-threaded tokio runtime, as in an app that embeds the engine. With
//! `--store postgres` the engine runs on a [`PostgresStore`] in a fresh schema of the
//! database at `TEST_DATABASE_URL` instead (same phases, same fields).
//!
//! The handler `bench.noop` takes its task index as input, records when it ran and returns
//! `null`. Tasks are submitted without a user and with derived idempotency keys, so every
//! submit pays for key derivation (JCS + SHA-256). `max_attempts` is 1: a failure is never
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
//!   `completed`, attempt 1, with exactly 3 events (`created`, `started`, `completed`); any
//!   other outcome fails the bench.
//!
//! # Phase 2: latency at moderate load (`--rate`, `--latency-secs`)
//!
//! Open-loop paced submits at `--rate` per second (tokio timers, 1 ms granularity, so
//! submits come in small bursts), on the same engine and database after phase 1. Each
//! submit is followed by `subscribe(key, None, 0)`, and the stream is read until
//! `completed`; seqs must arrive 1, 2, 3 with no gap.
//!
//! - `submit_to_complete_*_ms`: from just before `submit` is called to the `completed`
//!   event arriving on the subscriber's stream: the submit commit, the claim, the handler,
//!   the completion commit and delivery. An event is delivered only after its commit, so
//!   this is commit-to-visible.
//! - `submit_to_start_*_ms`: from just before `submit` is called to handler entry.
//!
//! `peak_rss_kib` is the process's `VmHWM` at the end (engine, bench bookkeeping and
//! SQLite page cache together).

mod latency;
mod recorder;
mod throughput;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use taskflow::{
    Config, DEFAULT_MAX_PENDING, PostgresStore, SqliteStore, TaskContext, TaskError, TaskFlow,
    TaskOptions,
};

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
}

/// Which store the engine runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreKind {
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
        };
        flags.finish()?;
        anyhow::ensure!(opts.tasks > 0, "--tasks must be at least 1");
        Ok(opts)
    }

    fn latency_tasks(&self) -> usize {
        usize::try_from(u64::from(self.rate) * u64::from(self.latency_secs)).unwrap_or(0)
    }
}

/// The JSON line.
#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    store: &'static str,
    tasks: usize,
    concurrency: usize,
    slots: usize,
    cpus: usize,
    elapsed_s: f64,
    tasks_per_s: f64,
    submit_phase_s: f64,
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

/// Runs both phases and returns the report as one JSON line.
pub(crate) async fn run(opts: Options) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let pending_bound = DEFAULT_MAX_PENDING.max(u64::try_from(opts.tasks)?.saturating_mul(2));
    let config = Config::default()
        .global_slots(opts.slots)
        .max_pending(pending_bound);
    let flow = match opts.store {
        StoreKind::Sqlite => {
            TaskFlow::start(
                SqliteStore::open(dir.path().join("tasks.db")).await?,
                config,
            )
            .await?
        }
        StoreKind::Postgres => TaskFlow::start(postgres_store().await?, config).await?,
    };
    let rec = Arc::new(Recorder::new(opts.tasks + opts.latency_tasks(), opts.tasks));
    register(&flow, &rec)?;
    let progress = tokio::spawn(progress(rec.clone(), opts.tasks));

    eprintln!(
        "engine: phase 1: {} tasks, {} submitters, {} slots",
        opts.tasks, opts.concurrency, opts.slots
    );
    let tp = throughput::run(&flow, &rec, opts.tasks, opts.concurrency).await?;
    progress.abort();
    eprintln!(
        "engine: phase 1 done in {:.3} s ({:.0} tasks/s); verifying every task",
        tp.elapsed.as_secs_f64(),
        opts.tasks as f64 / tp.elapsed.as_secs_f64()
    );
    let verify_began = Instant::now();
    throughput::verify(&flow, &tp.keys).await?;
    eprintln!(
        "engine: verified in {:.1} s",
        verify_began.elapsed().as_secs_f64()
    );

    let lat = if opts.rate > 0 && opts.latency_secs > 0 {
        eprintln!(
            "engine: phase 2: {} submits/s for {} s, each watched to completion",
            opts.rate, opts.latency_secs
        );
        Some(latency::run(&flow, &rec, opts.tasks, opts.rate, opts.latency_secs).await?)
    } else {
        None
    };
    flow.shutdown().await;
    let report = report(&opts, &tp, lat.as_ref());
    Ok(serde_json::to_string(&report)?)
}

fn register(flow: &TaskFlow, rec: &Arc<Recorder>) -> Result<()> {
    let rec = rec.clone();
    flow.register_with(
        TASK,
        TaskOptions::new().max_attempts(1),
        move |_ctx: TaskContext, i: usize| {
            let rec = rec.clone();
            async move {
                rec.handled(i);
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
        saturated_submit_to_start_p50_ms: p(|p| p.p50_ms, tp.start_latency),
        saturated_submit_to_start_p99_ms: p(|p| p.p99_ms, tp.start_latency),
        latency_rate: opts.rate,
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

/// A [`PostgresStore`] in a fresh schema of the database at `TEST_DATABASE_URL`.
async fn postgres_store() -> Result<PostgresStore> {
    use std::str::FromStr;
    let url = std::env::var("TEST_DATABASE_URL")
        .map_err(|_| anyhow::anyhow!("--store postgres reads TEST_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/test)"))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let schema = format!("bench_{stamp}_{}", std::process::id());
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&admin)
        .await?;
    admin.close().await;
    eprintln!("engine: postgres schema {schema}");
    let opts = sqlx::postgres::PgConnectOptions::from_str(&url)?
        .options([("search_path", schema.as_str())]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect_with(opts)
        .await?;
    Ok(PostgresStore::new(pool).await?)
}
