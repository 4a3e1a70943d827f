//! SIGKILL crash test on the SQLite store.
//!
//! The test binary re-executes itself as a worker process (the `worker_process` test, which
//! does nothing unless `TASKFLOW_CRASH_WORKER` names a directory). The worker opens the
//! store in that directory, submits tasks, runs them and follows their event streams,
//! recording everything it does in append-only side logs. The parent SIGKILLs it at random
//! moments, restarts it on the same files, and finally lets one worker run to completion.
//! Then it checks, against the logs and the store:
//!
//! - every acknowledged submit (a line in `ack.log`, written after `submit` returned)
//!   completed, exactly once (one `completed` event, the last);
//! - no step body ran again after its checkpoint committed: in `side.log`, no body line of
//!   a step follows a line written after `ctx.step` returned for that step, and the result
//!   the task ended with for each step is the one produced by the last body run of it;
//! - events emitted inside a step were committed with its checkpoint (once per step);
//! - every task's event seqs are 1..=last with no gap and no reuse;
//! - subscribers that resumed after each crash from the last seq they had recorded saw
//!   every event exactly once, identical (seq, name, payload) to what the store holds.
//!
//! Logs are written with one `write` on an `O_APPEND` file per line: a SIGKILL cannot
//! tear a line, and the page cache survives the process, so no fsync is needed.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod crash_worker;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crash_worker::{Logs, WORKER_ENV, run_worker};
use futures_util::StreamExt;
use taskflow::{Config, EventKind, SqliteStore, TaskEvent, TaskFlow, TaskStatus};

/// SIGKILLs before the final run.
const KILLS: u32 = 24;
/// Random delay between the worker's "ready" and the kill.
const KILL_DELAY_MS: std::ops::RangeInclusive<u64> = 20..=300;
/// Bound on a worker reaching "ready", and on the final worker finishing.
const READY_DEADLINE: Duration = Duration::from_secs(30);
const FINAL_DEADLINE: Duration = Duration::from_secs(90);

/// The worker, when the parent re-executes this binary; a no-op otherwise.
#[test]
fn worker_process() {
    if let Some(dir) = std::env::var_os(WORKER_ENV) {
        run_worker(Path::new(&dir));
    }
}

#[test]
fn sigkill_at_random_moments_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let began = Instant::now();
    let mut kills = 0;
    for generation in 0..KILLS {
        let mut worker = Worker::spawn(dir.path(), generation, false);
        worker.wait_ready();
        std::thread::sleep(Duration::from_millis(fastrand::u64(KILL_DELAY_MS)));
        if let Some(status) = worker.child.try_wait().unwrap() {
            panic!("worker {generation} exited on its own before the kill: {status}");
        }
        worker.child.kill().unwrap();
        worker.child.wait().unwrap();
        kills += 1;
    }
    let mut last = Worker::spawn(dir.path(), KILLS, true);
    last.wait_ready();
    let status = last.wait_exit(FINAL_DEADLINE);
    assert!(status.success(), "final worker failed: {status}");
    eprintln!(
        "crash: {kills} kills + final run in {:.1} s",
        began.elapsed().as_secs_f64()
    );

    let logs = Logs::read(dir.path());
    let stored = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(read_store(dir.path(), &logs));
    verify(&logs, &stored, kills);
}

/// One worker process and the lines of its stdout.
struct Worker {
    child: Child,
    lines: mpsc::Receiver<String>,
    generation: u32,
}

impl Worker {
    fn spawn(dir: &Path, generation: u32, last: bool) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "worker_process",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(WORKER_ENV, dir)
            .env(crash_worker::GENERATION_ENV, generation.to_string())
            .env(crash_worker::LAST_ENV, if last { "1" } else { "0" })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            generation,
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.ends_with(crash_worker::READY) => return,
                Ok(_) => {}
                Err(e) => {
                    let _ = self.child.kill();
                    let status = self.child.wait().unwrap();
                    panic!("worker {} not ready ({e}); exit: {status}", self.generation);
                }
            }
        }
    }

    /// Waits for stdout to close (the process ended), then reaps it.
    fn wait_exit(&mut self, bound: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return self.child.wait().unwrap(),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("worker {} did not finish within {bound:?}", self.generation);
                }
            }
        }
    }
}

/// What the store holds for one task.
struct Stored {
    status: TaskStatus,
    last_seq: u64,
    result: Vec<String>,
    events: Vec<TaskEvent>,
}

async fn read_store(dir: &Path, logs: &Logs) -> BTreeMap<String, Stored> {
    let store = SqliteStore::open(dir.join(crash_worker::DB)).await.unwrap();
    let flow = TaskFlow::start(store, Config::default()).await.unwrap();
    let mut out = BTreeMap::new();
    for key in logs.acked.values() {
        let info = flow.status(key, None).await.unwrap();
        let mut stream = flow.subscribe(key, None, 0).await.unwrap();
        let mut events = Vec::new();
        while let Some(event) = stream.next().await {
            events.push(event.unwrap());
        }
        let result = info
            .result
            .map(|r| serde_json::from_value(r).unwrap())
            .unwrap_or_default();
        let stored = Stored {
            status: info.status,
            last_seq: info.last_seq,
            result,
            events,
        };
        out.insert(key.clone(), stored);
    }
    flow.shutdown().await;
    out
}

fn verify(logs: &Logs, stored: &BTreeMap<String, Stored>, kills: u32) {
    let tasks = crash_worker::TASKS;
    assert_eq!(
        logs.acked.len(),
        tasks,
        "every task is acknowledged in the end"
    );
    let mut reruns = 0;
    let mut recovered = 0;
    for (key, task) in stored {
        assert_eq!(task.status, TaskStatus::Completed, "{key}");
        let seqs: Vec<u64> = task.events.iter().map(|e| e.seq).collect();
        let want: Vec<u64> = (1..=task.last_seq).collect();
        assert_eq!(seqs, want, "{key}: stored seqs are 1..=last_seq, each once");
        let completed = task
            .events
            .iter()
            .filter(|e| e.kind == EventKind::Completed);
        assert_eq!(completed.count(), 1, "{key}: completed exactly once");
        assert_eq!(
            task.events.last().unwrap().kind,
            EventKind::Completed,
            "{key}"
        );
        recovered += usize::from(task.events.iter().any(|e| e.kind == EventKind::Retrying));
        verify_seen(key, task, logs.seen.get(key).map_or(&[][..], Vec::as_slice));
        reruns += verify_steps(key, task, logs);
    }
    let busy_lives: std::collections::BTreeSet<&str> = logs
        .side
        .values()
        .flatten()
        .filter_map(|l| l.strip_prefix("body g")?.split('.').next())
        .collect();
    eprintln!(
        "crash: {kills} kills; step bodies ran in {} of {} worker lives; {recovered} of \
         {tasks} tasks recovered after a crash; {reruns} step bodies re-ran legitimately \
         (crash before their checkpoint)",
        busy_lives.len(),
        kills + 1
    );
    assert!(
        recovered > 0,
        "no kill interrupted a running task: the test exercised nothing"
    );
}

/// The subscriber's log equals the store's events, each once and in order.
fn verify_seen(key: &str, task: &Stored, seen: &[crash_worker::Seen]) {
    let seen_seqs: Vec<u64> = seen.iter().map(|s| s.seq).collect();
    let want: Vec<u64> = (1..=task.last_seq).collect();
    assert_eq!(
        seen_seqs, want,
        "{key}: resumed subscribers saw every seq exactly once"
    );
    for (s, e) in seen.iter().zip(&task.events) {
        assert_eq!(
            (s.name.as_str(), &s.payload),
            (e.name.as_str(), &e.payload),
            "{key} seq {}: what a subscriber saw is what the store holds (seq not reused)",
            e.seq
        );
    }
}

/// Step bodies never re-ran after their checkpoint; returns the legitimate re-runs.
fn verify_steps(key: &str, task: &Stored, logs: &Logs) -> usize {
    let steps = crash_worker::STEPS;
    assert_eq!(task.result.len(), steps, "{key}: one result per step");
    let mut reruns = 0;
    for (s, result) in task.result.iter().enumerate() {
        let step = format!("s{s}");
        let lines = logs.side.get(&(key.to_owned(), step.clone()));
        let lines = lines.map_or(&[][..], Vec::as_slice);
        let runs = |what: &str| -> Vec<&str> {
            lines.iter().filter_map(|l| l.strip_prefix(what)).collect()
        };
        let (bodies, returned) = (runs("body "), runs("returned "));
        assert!(!bodies.is_empty(), "{key} {step}: the body ran");
        reruns += bodies.len() - 1;
        if let Some(first) = lines.iter().position(|l| l.starts_with("returned ")) {
            let late = lines[first..].iter().find(|l| l.starts_with("body "));
            assert!(
                late.is_none(),
                "{key} {step}: body ran after its checkpoint: {late:?}"
            );
        }
        assert_eq!(
            bodies.last(),
            Some(&result.as_str()),
            "{key} {step}: the checkpointed result comes from the last body run"
        );
        assert!(
            returned.iter().all(|r| r == result),
            "{key} {step}: every run got the checkpointed result, got {returned:?}"
        );
        let progress: Vec<&serde_json::Value> = task
            .events
            .iter()
            .filter(|e| e.name == "progress" && e.payload["step"] == s)
            .map(|e| &e.payload["run"])
            .collect();
        assert_eq!(
            progress,
            [result],
            "{key} {step}: the in-step event was committed once, with the checkpoint"
        );
    }
    reruns
}
