//! The task store on the Lakebase pool (APPKIT_TASKS_STORE=lakebase, `PG*` variables):
//! tasks run on it, `/ready` checks it, and SIGINT then SIGTERM close it exactly once, at
//! shutdown step 5 after the task store, with one log line per step, and exit 0.
//!
//! Needs `TEST_DATABASE_URL`; prints that it skipped without it.

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

mod common;
#[path = "common/pg.rs"]
mod pg;

use common::{DEADLINE, Server, temp_dir, ticks};
use pg::TestDb;

const STEPS: [&str; 7] = [
    "shutdown: started by SIGINT",
    "shutdown: readiness off",
    "shutdown: draining",
    "shutdown: aborting active operations",
    "shutdown: http server closed",
    "shutdown: core services closed",
    "shutdown: complete",
];

fn position(lines: &[String], what: &str, pred: impl Fn(&str) -> bool) -> usize {
    let found: Vec<usize> = (0..lines.len()).filter(|&i| pred(&lines[i])).collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one line {what}:\n{}",
        lines.join("\n")
    );
    found[0]
}

#[tokio::test]
async fn lakebase_pool_closes_exactly_once_after_the_task_store() {
    let Some(url) = pg::database_url("lakebase_shutdown") else {
        return;
    };
    let db = TestDb::create(&url, "lakebase").await;
    let dir = temp_dir();
    let mut env = db.lakebase_env(&format!("{}_app", db.schema));
    env.push((
        "RUST_LOG".to_owned(),
        "info,appkit::shutdown=debug,appkit_lakebase=debug".to_owned(),
    ));
    // A task still running at shutdown keeps step 3 busy for this long, so the SIGTERM
    // surely lands while the sequence runs.
    env.push(("TASKFLOW_DRAIN_TIMEOUT_MS".to_owned(), "1000".to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut server = Server::start(dir.path(), &env).await;
    server
        .logs
        .wait_for("lakebase pool ready", |l| l.contains("lakebase pool ready"))
        .await;
    assert_eq!(server.get("/ready", "lena").await.status, 200);

    // The store works on the shared pool, in the test's schema.
    let mut sse = server
        .sse_post(
            "/api/demo/count",
            "lena",
            r#"{"to": 3, "delay_ms": 10}"#,
            None,
        )
        .await;
    let key = sse
        .header("X-AppKit-Task-Idempotency-Key")
        .unwrap()
        .to_owned();
    let frames = sse.frames_to_end().await;
    assert_eq!(ticks(&frames), [1, 2, 3]);
    assert_eq!(db.task_count(&key).await, 1, "the task is in {}", db.schema);

    let mut long = server
        .sse_post(
            "/api/demo/count",
            "lena",
            r#"{"to": 1000, "delay_ms": 50}"#,
            None,
        )
        .await;
    let long_key = long
        .header("X-AppKit-Task-Idempotency-Key")
        .unwrap()
        .to_owned();
    db.wait_events(&long_key, "a tick", |e| !pg::stored_ticks(e).is_empty())
        .await;

    server.signal("INT");
    server
        .logs
        .wait_for("shutdown started", |l| {
            l.contains("shutdown: started by SIGINT")
        })
        .await;
    server.signal("TERM");
    let status = server.wait_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(0), "logs:\n{}", server.logs.dump());
    let frames = long.frames_to_end().await;
    assert_eq!(frames.last().unwrap().event, "error", "drained: {frames:?}");
    // Released for the next process, with its attempt not spent.
    let events = db.events(&long_key).await;
    assert_eq!(pg::started_attempts(&events), [1]);
    assert_eq!(pg::count_kind(&events, "completed"), 0);
    assert_eq!(db.task_status(&long_key).await, "pending");

    let lines = server.logs.snapshot();
    for step in STEPS {
        position(&lines, step, |l| l.contains(step));
    }
    let taskflow = position(&lines, "closing the task engine", |l| {
        l.contains("closing") && l.contains("service=taskflow")
    });
    let hook = position(&lines, "closing the lakebase pool", |l| {
        l.contains("closing") && l.contains("service=lakebase")
    });
    let closed = position(&lines, "lakebase pool closed", |l| {
        l.contains("lakebase pool closed")
    });
    let core = position(&lines, "core services closed", |l| {
        l.contains("shutdown: core services closed")
    });
    assert!(
        taskflow < hook && hook < closed && closed < core,
        "task store, then the pool, inside step 5:\n{}",
        lines.join("\n")
    );
    assert_eq!(server.logs.count("lakebase pool already closed"), 0);
    assert_eq!(
        server.logs.count("shutdown already in progress"),
        1,
        "SIGTERM changed nothing"
    );
    db.cleanup().await;
}
