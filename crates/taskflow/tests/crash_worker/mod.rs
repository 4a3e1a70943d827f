//! The worker process of the crash test, and the append-only logs both sides read.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use taskflow::{
    Config, IdempotencyMode, SqliteStore, SubmitOptions, TaskContext, TaskError, TaskFlow,
    TaskOptions,
};
use tokio::task::JoinSet;

/// Names the worker's directory; absent, the worker test does nothing.
pub(crate) const WORKER_ENV: &str = "TASKFLOW_CRASH_WORKER";
/// The worker's generation (0, 1, …), recorded in every step run it makes.
pub(crate) const GENERATION_ENV: &str = "TASKFLOW_CRASH_GENERATION";
/// `1` for the final worker, which exits once everything is done; others wait to be killed.
pub(crate) const LAST_ENV: &str = "TASKFLOW_CRASH_LAST";
/// The line the worker prints once it is up and following its tasks again.
pub(crate) const READY: &str = "taskflow-crash-worker ready";
/// The database file in the directory.
pub(crate) const DB: &str = "tasks.db";
/// Tasks submitted over the whole test.
pub(crate) const TASKS: usize = 200;
/// Checkpointed steps per task.
pub(crate) const STEPS: usize = 4;

/// `<index> <key>`, written after `submit` returned.
const ACKS: &str = "ack.log";
/// `<key> <seq> <name> <payload>`, written by the subscribers as events arrive.
const EVENTS: &str = "events.log";
/// `<key> <step> body <run>` when a step body starts; `<key> <step> returned <run>` after
/// `ctx.step` returned (the checkpoint is committed by then).
const SIDE: &str = "side.log";
/// Pause between submits: spreads the submits over many worker lives.
const SUBMIT_PACE: Duration = Duration::from_millis(20);

/// One event as a subscriber recorded it.
#[derive(Debug)]
pub(crate) struct Seen {
    pub(crate) seq: u64,
    pub(crate) name: String,
    pub(crate) payload: Value,
}

/// The logs, parsed.
#[derive(Debug, Default)]
pub(crate) struct Logs {
    /// Acknowledged tasks: index → key.
    pub(crate) acked: BTreeMap<usize, String>,
    /// Events the subscribers recorded, per key, in log order.
    pub(crate) seen: HashMap<String, Vec<Seen>>,
    /// `body <run>` / `returned <run>` per (key, step), in log order.
    pub(crate) side: HashMap<(String, String), Vec<String>>,
}

impl Logs {
    pub(crate) fn read(dir: &Path) -> Self {
        let mut logs = Self::default();
        for line in lines(&dir.join(ACKS)) {
            let (i, key) = line.split_once(' ').unwrap();
            let old = logs.acked.insert(i.parse().unwrap(), key.to_owned());
            assert!(old.is_none(), "task {i} acknowledged twice");
        }
        for line in lines(&dir.join(EVENTS)) {
            let mut parts = line.splitn(4, ' ');
            let mut next = || parts.next().unwrap();
            let (key, seq, name, payload) = (next(), next(), next(), next());
            logs.seen.entry(key.to_owned()).or_default().push(Seen {
                seq: seq.parse().unwrap(),
                name: name.to_owned(),
                payload: serde_json::from_str(payload).unwrap(),
            });
        }
        for line in lines(&dir.join(SIDE)) {
            let mut parts = line.splitn(3, ' ');
            let mut next = || parts.next().unwrap();
            let (key, step, what) = (next(), next(), next());
            let entry = logs.side.entry((key.to_owned(), step.to_owned()));
            entry.or_default().push(what.to_owned());
        }
        logs
    }
}

fn lines(path: &Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("reading {}: {e}", path.display()),
    }
}

/// An `O_APPEND` log written one whole line per `write`, so a kill never tears a line.
#[derive(Debug)]
struct Append(File);

impl Append {
    fn open(path: PathBuf) -> Arc<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        Arc::new(Self(file))
    }

    fn line(&self, line: &str) {
        let buf = format!("{line}\n");
        let written = (&self.0).write(buf.as_bytes()).unwrap();
        assert_eq!(written, buf.len(), "short append");
    }
}

/// Runs one worker life: resume, submit what is not acknowledged, follow every task.
pub(crate) fn run_worker(dir: &Path) {
    let generation: u32 = std::env::var(GENERATION_ENV).unwrap().parse().unwrap();
    let last = std::env::var(LAST_ENV).unwrap() == "1";
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(work(dir, generation, last));
}

async fn work(dir: &Path, generation: u32, last: bool) {
    let logs = Logs::read(dir);
    let store = SqliteStore::open(dir.join(DB)).await.unwrap();
    let config = Config::default()
        .global_slots(4)
        .lease(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(50))
        .retry_base(Duration::from_millis(10))
        .retry_cap(Duration::from_millis(50));
    let flow = TaskFlow::start(store, config).await.unwrap();
    register(&flow, Append::open(dir.join(SIDE)), generation);
    let events = Append::open(dir.join(EVENTS));
    let mut followers = JoinSet::new();
    for key in logs.acked.values() {
        // Resume from the last recorded seq, even past a terminal event (the stream then
        // ends at once).
        let after = logs
            .seen
            .get(key)
            .and_then(|s| s.last())
            .map_or(0, |e| e.seq);
        followers.spawn(follow(flow.clone(), key.clone(), after, events.clone()));
    }
    // The test harness may have printed part of a line already.
    println!("\n{READY}");
    let acks = Append::open(dir.join(ACKS));
    for i in (0..TASKS).filter(|i| !logs.acked.contains_key(i)) {
        let key = format!("job-{i}");
        let options = SubmitOptions::new()
            .idempotency_key(&key)
            .mode(IdempotencyMode::AtMostOnce);
        let submitted = flow.submit("job", i, options).await.unwrap();
        assert_eq!(submitted.handle().idempotency_key, key);
        acks.line(&format!("{i} {key}"));
        followers.spawn(follow(flow.clone(), key, 0, events.clone()));
        tokio::time::sleep(SUBMIT_PACE).await;
    }
    while let Some(joined) = followers.join_next().await {
        joined.unwrap();
    }
    if !last {
        // Everything is done; wait for the kill like any other life.
        std::future::pending::<()>().await;
    }
    flow.shutdown().await;
}

/// Records every event of `key` after `after` until its terminal event.
async fn follow(flow: TaskFlow, key: String, after: u64, log: Arc<Append>) {
    let mut stream = flow
        .subscribe(&key, None, after)
        .await
        .unwrap_or_else(|e| panic!("resuming {key} after seq {after}: {e}"));
    while let Some(event) = stream.next().await {
        let e = event.unwrap_or_else(|e| panic!("event stream of {key}: {e}"));
        log.line(&format!("{key} {} {} {}", e.seq, e.name, e.payload));
    }
}

/// `job`: STEPS checkpointed steps, each emitting inside and after itself; returns the
/// run id each step's checkpoint holds.
fn register(flow: &TaskFlow, side: Arc<Append>, generation: u32) {
    let runs = Arc::new(AtomicU32::new(0));
    let options = TaskOptions::new()
        .max_attempts(10_000)
        .max_recoveries(10_000);
    let handler = move |ctx: TaskContext, _index: usize| {
        let (side, runs) = (side.clone(), runs.clone());
        async move {
            let key = ctx.idempotency_key().to_owned();
            let mut results = Vec::with_capacity(STEPS);
            for s in 0..STEPS {
                let step = format!("s{s}");
                let n = runs.fetch_add(1, Ordering::Relaxed);
                let run = format!("g{generation}.a{}.r{n}", ctx.attempt());
                let body = async {
                    side.line(&format!("{key} {step} body {run}"));
                    ctx.emit("progress", json!({ "step": s, "run": run }))
                        .await?;
                    let pause = Duration::from_millis(fastrand::u64(2..=12));
                    tokio::time::sleep(pause).await;
                    Ok::<_, TaskError>(run.clone())
                };
                let result: String = ctx.step(&step, body).await?;
                side.line(&format!("{key} {step} returned {result}"));
                ctx.emit("after", json!({ "step": s })).await?;
                results.push(result);
            }
            Ok::<_, TaskError>(results)
        }
    };
    flow.register_with("job", options, handler).unwrap();
}
