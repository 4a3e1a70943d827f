//! The shutdown coordinator on the real process: signals, the bridge drain, each step
//! once, exit codes, and tasks released for the next process.

mod common;

use std::time::Duration;

use common::{Frame, Server, temp_dir, ticks};
use tokio::time::Instant;

const SHUTDOWN_FRAME: &str = "event: error\ndata: {\"message\":\"server_shutting_down\"}";

const STEPS: [&str; 8] = [
    "shutdown: started by SIGINT",
    "shutdown: readiness off",
    "shutdown: draining 3 sse bridges",
    "shutdown: aborting active operations",
    "shutdown: http server closed",
    "shutdown: core services closed",
    "shutdown: telemetry flushed",
    "shutdown: complete",
];

/// Reads frames until the first tick.
async fn until_tick(sse: &mut common::Sse) -> Vec<Frame> {
    let mut seen = Vec::new();
    while let Some(frame) = sse.next_frame().await {
        let tick = frame.event == "tick";
        seen.push(frame);
        if tick {
            return seen;
        }
    }
    panic!("stream ended before a tick: {seen:?}");
}

/// Reads raw items to the end; returns the last frame's raw text.
async fn last_raw_frame(sse: &mut common::Sse) -> String {
    let mut last = None;
    while let Some(r) = sse.next().await {
        if let common::Item::Frame(raw) = r.item {
            last = Some(raw);
        }
    }
    last.expect("at least one frame")
}

#[tokio::test]
async fn sigint_then_sigterm_drains_every_stream_and_runs_each_step_once() {
    let dir = temp_dir();
    let mut server = Server::start(dir.path(), &[("TASKFLOW_DRAIN_TIMEOUT_MS", "300")]).await;
    let mut streams = Vec::new();
    for to in [1000, 1001, 1002] {
        let body = format!(r#"{{"to":{to},"delay_ms":50}}"#);
        let mut sse = server
            .sse_post("/api/demo/count", "alice", &body, None)
            .await;
        until_tick(&mut sse).await;
        streams.push(sse);
    }
    let signalled = Instant::now();
    server.signal("INT");
    // The scenario: a second signal 20 ms after the first.
    tokio::time::sleep(Duration::from_millis(20)).await;
    server.signal("TERM");

    for sse in &mut streams {
        assert_eq!(last_raw_frame(sse).await, SHUTDOWN_FRAME);
    }
    let status = server.wait_exit(Duration::from_secs(20)).await;
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "logs:\n{}", server.logs.dump());
    assert!(
        took < Duration::from_secs(10),
        "shutdown took {took:?} of a 15 s deadline"
    );

    for step in STEPS {
        assert_eq!(
            server.logs.count(step),
            1,
            "{step:?}; logs:\n{}",
            server.logs.dump()
        );
    }
    // No other `shutdown: …` step line (the message follows a space; the target does not).
    assert_eq!(
        server.logs.count(" shutdown: "),
        STEPS.len(),
        "{}",
        server.logs.dump()
    );
    assert_eq!(server.logs.count("taskflow: stopped"), 1);
    // The second signal was seen, and changed nothing.
    assert_eq!(
        server.logs.count("shutdown already in progress; ignored"),
        1
    );
    let order: Vec<usize> = STEPS
        .iter()
        .map(|s| {
            server
                .logs
                .snapshot()
                .iter()
                .position(|l| l.contains(s))
                .unwrap()
        })
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "steps out of order: {order:?}"
    );
}

#[tokio::test]
async fn a_task_running_at_shutdown_completes_after_restart() {
    let dir = temp_dir();
    let env = [("TASKFLOW_DRAIN_TIMEOUT_MS", "100")];
    let mut server = Server::start(dir.path(), &env).await;
    let mut sse = server
        .sse_post(
            "/api/demo/count",
            "alice",
            r#"{"to":20,"delay_ms":100}"#,
            None,
        )
        .await;
    let key = sse
        .header("x-appkit-task-idempotency-key")
        .unwrap()
        .to_owned();
    let mut seen = until_tick(&mut sse).await;
    server.signal("TERM");
    let mut rest = sse.frames_to_end().await;
    let last_frame = rest.pop().expect("shutdown frame");
    assert_eq!(last_frame.event, "error");
    assert_eq!(last_frame.json()["message"], "server_shutting_down");
    seen.extend(rest);
    assert_eq!(
        server.wait_exit(Duration::from_secs(20)).await.code(),
        Some(0)
    );
    assert!(
        server.logs.count("releasing tasks still running") == 1,
        "the task was released, not finished: {}",
        server.logs.dump()
    );

    let server = Server::start(dir.path(), &env).await;
    let last = seen.iter().rev().find_map(|f| f.id).unwrap();
    let after = server
        .sse_attach(&key, "alice", Some(&last.to_string()))
        .await
        .frames_to_end()
        .await;
    assert_eq!(after.last().unwrap().event, "completed");
    assert_eq!(after.last().unwrap().json()["result"]["total"], 20);
    let mut all = ticks(&seen);
    all.extend(ticks(&after));
    assert_eq!(all, (1..=20).collect::<Vec<_>>(), "every tick once");
}

#[tokio::test]
async fn a_handler_ignoring_cancellation_cannot_hold_the_process_past_the_deadline() {
    let dir = temp_dir();
    let mut server = Server::start(
        dir.path(),
        &[
            ("DEV_PLAYGROUND_TEST_TASKS", "1"),
            ("APPKIT_SHUTDOWN_TIMEOUT_MS", "1500"),
            ("TASKFLOW_DRAIN_TIMEOUT_MS", "60000"),
            ("TASKFLOW_STOP_GRACE_MS", "60000"),
        ],
    )
    .await;
    let mut sse = server
        .sse_post("/api/demo/stubborn", "alice", r#"{"ms":600000}"#, None)
        .await;
    loop {
        let frame = sse.next_frame().await.expect("started");
        if frame.event == "started" {
            break;
        }
    }
    let signalled = Instant::now();
    server.signal("TERM");
    assert_eq!(last_raw_frame(&mut sse).await, SHUTDOWN_FRAME);
    let status = server.wait_exit(Duration::from_secs(20)).await;
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(1), "logs:\n{}", server.logs.dump());
    assert!(
        took >= Duration::from_millis(1400),
        "exited after {took:?}, before the deadline"
    );
    assert_eq!(
        server
            .logs
            .count("deadline of 1500 ms passed during step `abort active operations`"),
        1,
        "{}",
        server.logs.dump()
    );
    assert_eq!(server.logs.count("shutdown: complete"), 0);
}
