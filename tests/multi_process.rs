//! Two real dev-playground processes on one Postgres schema (APPKIT_TASKS_STORE=postgres://…):
//! tasks submitted to either run exactly once, a browser on one process follows a task
//! running on the other, concurrent duplicate submits to both create one task, and a task
//! of a SIGKILLed process is recovered by the other within lease + reap interval without
//! re-running a checkpointed step.
//!
//! Needs `TEST_DATABASE_URL`; prints that it skipped without it.

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

mod common;
#[path = "common/pg.rs"]
mod pg;

use std::time::Duration;

use common::{Frame, Server, Sse, temp_dir, ticks};
use pg::{SHORT_LEASE_MS, SHORT_REAP_MS, TestDb, assert_count_ran_once, started_attempts};
use tokio::time::Instant;

const USER: &str = "alice";

/// Opens a count stream on `server`, reads its `ready` frame, and returns the stream and
/// the task's idempotency key.
async fn start_count(server: &Server, to: u64, delay_ms: u64) -> (Sse, String) {
    let body = format!(r#"{{"to": {to}, "delay_ms": {delay_ms}}}"#);
    let mut sse = server.sse_post("/api/demo/count", USER, &body, None).await;
    let key = sse
        .header("X-AppKit-Task-Idempotency-Key")
        .expect("idempotency key header")
        .to_owned();
    let ready = sse.next_frame().await.expect("ready frame");
    assert_eq!(ready.event, "ready");
    (sse, key)
}

/// Attaches to `key`'s stream on `server` (as a browser would) and reads its `ready` frame.
async fn attach(server: &Server, key: &str) -> Sse {
    let mut sse = server.sse_attach(key, USER, None).await;
    let ready = sse.next_frame().await.expect("ready frame");
    assert_eq!(ready.event, "ready");
    sse
}

/// Graceful stop: SIGTERM, exit 0.
async fn stop(mut server: Server) {
    server.signal("TERM");
    let status = server.wait_exit(common::DEADLINE).await;
    assert!(
        status.success(),
        "exit {status}; logs:\n{}",
        server.logs.dump()
    );
}

/// The frames a task's stream delivered, apart from `ready`: ids strictly increasing, the
/// last one `completed`.
fn assert_stream_complete(key: &str, frames: &[Frame], n: u64) {
    let ids: Vec<u64> = frames.iter().map(|f| f.id.expect("event id")).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "task {key}: ids increase: {frames:#?}"
    );
    assert_eq!(
        ticks(frames),
        (1..=n).collect::<Vec<_>>(),
        "task {key}: {frames:#?}"
    );
    assert_eq!(frames.last().map(|f| f.event.as_str()), Some("completed"));
}

#[tokio::test]
async fn tasks_submitted_to_either_process_run_exactly_once_and_stream_from_both() {
    let Some(url) = pg::database_url("multi_process") else {
        return;
    };
    let db = TestDb::create(&url, "mp_once").await;
    let dir = temp_dir();
    let a = db
        .start_server(dir.path(), &format!("{}_a", db.schema), &[])
        .await;
    let b = db
        .start_server(dir.path(), &format!("{}_b", db.schema), &[])
        .await;

    // 20 count tasks, alternating A and B, each streamed to its end.
    let mut running = Vec::new();
    for i in 0..20u64 {
        let server = if i % 2 == 0 { &a } else { &b };
        let (mut sse, key) = start_count(server, 3, 20 + i).await;
        running.push((key, tokio::spawn(async move { sse.frames_to_end().await })));
    }
    let mut keys = Vec::new();
    for (key, frames) in running {
        let frames = frames.await.unwrap();
        assert_stream_complete(&key, &frames, 3);
        keys.push(key);
    }
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 20, "20 distinct tasks");
    for key in &keys {
        assert_eq!(db.task_count(key).await, 1, "one row for {key}");
        let events = db.events(key).await;
        assert_count_ran_once(key, &events, 3);
        assert_eq!(started_attempts(&events), [1], "task {key}: {events:#?}");
    }

    // A browser on B follows a task submitted on A: the same frames, to `completed`.
    let (mut on_a, key) = start_count(&a, 5, 150).await;
    let mut on_b = attach(&b, &key).await;
    let (frames_a, frames_b) = tokio::join!(on_a.frames_to_end(), on_b.frames_to_end());
    assert_stream_complete(&key, &frames_b, 5);
    assert_eq!(frames_a, frames_b, "both processes stream the same events");
    assert_count_ran_once(&key, &db.events(&key).await, 5);

    stop(a).await;
    stop(b).await;
    db.cleanup().await;
}

#[tokio::test]
async fn concurrent_duplicate_submits_to_both_processes_create_one_task() {
    let Some(url) = pg::database_url("multi_process") else {
        return;
    };
    let db = TestDb::create(&url, "mp_idem").await;
    let dir = temp_dir();
    let a = db
        .start_server(dir.path(), &format!("{}_a", db.schema), &[])
        .await;
    let b = db
        .start_server(dir.path(), &format!("{}_b", db.schema), &[])
        .await;
    for round in 0..3u64 {
        // Same user, same body: the same derived idempotency key, sent to both at once. The
        // task runs long enough (1.8 s) that neither request can arrive after it ended
        // (which would rightly start a new run).
        let body = format!(r#"{{"to": 3, "delay_ms": {}}}"#, 600 + round);
        let (on_a, on_b) = tokio::join!(
            a.sse_post("/api/demo/count", USER, &body, None),
            b.sse_post("/api/demo/count", USER, &body, None),
        );
        let (mut on_a, mut on_b) = (on_a, on_b);
        let key = on_a
            .header("X-AppKit-Task-Idempotency-Key")
            .unwrap()
            .to_owned();
        assert_eq!(
            on_b.header("X-AppKit-Task-Idempotency-Key"),
            Some(key.as_str()),
            "round {round}: both answers name the same task"
        );
        let (frames_a, frames_b) = tokio::join!(on_a.frames_to_end(), on_b.frames_to_end());
        for frames in [&frames_a[1..], &frames_b[1..]] {
            assert_stream_complete(&key, frames, 3);
        }
        assert_eq!(db.task_count(&key).await, 1, "round {round}: one task row");
        let events = db.events(&key).await;
        assert_count_ran_once(&key, &events, 3);
        assert_eq!(started_attempts(&events), [1], "round {round}: one run");
        assert_eq!(pg::count_kind(&events, "created"), 1, "round {round}");
    }
    stop(a).await;
    stop(b).await;
    db.cleanup().await;
}

#[tokio::test]
async fn sigkilled_process_task_is_recovered_by_the_other_without_rerunning_steps() {
    let Some(url) = pg::database_url("multi_process") else {
        return;
    };
    let db = TestDb::create(&url, "mp_kill").await;
    let dir = temp_dir();
    let (lease, reap) = (SHORT_LEASE_MS.to_string(), SHORT_REAP_MS.to_string());
    let short = [
        ("TASKFLOW_LEASE_MS", lease.as_str()),
        ("TASKFLOW_REAP_INTERVAL_MS", reap.as_str()),
    ];
    let a = db
        .start_server(dir.path(), &format!("{}_a", db.schema), &short)
        .await;
    let b = db
        .start_server(dir.path(), &format!("{}_b", db.schema), &short)
        .await;

    // Submitted on A: usually A claims it at once, but either may run it. The runner is
    // killed; a browser on the other process follows the task.
    let (on_a, key) = start_count(&a, 10, 500).await;
    db.wait_events(&key, "tick 1", |e| !pg::stored_ticks(e).is_empty())
        .await;
    let (mut runner, other) = pg::runner_and_other(&db, &key, a, b).await;
    let mut follower = attach(&other, &key).await;
    db.wait_events(&key, "tick 2", |e| pg::stored_ticks(e).len() >= 2)
        .await;
    runner.signal("KILL");
    let killed = Instant::now();
    runner.wait_exit(common::DEADLINE).await;
    let at_kill = db.events(&key).await;
    assert!(
        pg::stored_ticks(&at_kill).len() < 10,
        "the runner was killed mid-task: {at_kill:#?}"
    );

    let events = db
        .wait_events(&key, "a recovered run on the other process", |e| {
            started_attempts(e).len() >= 2
        })
        .await;
    let recovered_after = killed.elapsed();
    println!("recovered {recovered_after:?} after SIGKILL (lease {lease} ms, reap {reap} ms)");
    // Lease + scan interval, plus claim latency; generous for a loaded 2-core machine.
    let bound = Duration::from_millis(SHORT_LEASE_MS + SHORT_REAP_MS) + Duration::from_secs(5);
    assert!(recovered_after < bound, "{recovered_after:?}: {events:#?}");

    assert_eq!(db.owner_node(&key).await, Some(pg::node_id(&other)));
    let frames = follower.frames_to_end().await;
    assert_stream_complete(&key, &frames, 10);
    let events = db.events(&key).await;
    assert_count_ran_once(&key, &events, 10);
    // A process death is a recovery: the attempt is given back, not spent.
    assert_eq!(started_attempts(&events), [1, 1], "{events:#?}");
    let restarted = events
        .iter()
        .filter(|e| e.kind == "started")
        .nth(1)
        .unwrap();
    assert_eq!(restarted.payload["recovery"], true, "{restarted:?}");
    assert_eq!(restarted.payload["recoveries"], 1, "{restarted:?}");
    assert_eq!(pg::count_kind(&events, "retrying"), 1, "{events:#?}");
    let status = other.wait_status(&key, USER, "completed").await;
    assert_eq!(status["result"]["total"], 10);

    drop(on_a);
    stop(other).await;
    db.cleanup().await;
}
