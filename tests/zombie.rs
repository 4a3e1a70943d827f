//! A zombie runner: the process running a task is paused (SIGSTOP) past its lease, the
//! other process takes the task over, then the first is resumed (SIGCONT). Its late writes
//! are fenced: the event log stays gapless with one `completed`, and every tick is there
//! exactly once (a tick is committed with its step's checkpoint, so a late write of the
//! zombie's landing after the takeover would show up as a duplicate or out-of-order tick).
//!
//! Needs `TEST_DATABASE_URL`; prints that it skipped without it.

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

mod common;
#[path = "common/pg.rs"]
mod pg;

use common::temp_dir;
use pg::{SHORT_LEASE_MS, SHORT_REAP_MS, TestDb, assert_count_ran_once, started_attempts};

const USER: &str = "zed";

#[tokio::test]
async fn paused_runner_past_its_lease_is_fenced_after_takeover() {
    let Some(url) = pg::database_url("zombie") else {
        return;
    };
    let db = TestDb::create(&url, "zombie").await;
    // A process paused inside a transaction would hold its row locks for ever; the server
    // ends such a session, as a production database should be configured to.
    let sql = format!(
        "ALTER ROLE {} SET idle_in_transaction_session_timeout = '1s'",
        db.schema
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&db.admin)
        .await
        .unwrap();
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

    // Submitted on A, usually run by A (either may claim it); the stream stays open so
    // the task is not stopped. The process running it becomes the zombie.
    let body = r#"{"to": 8, "delay_ms": 500}"#;
    let mut on_a = a.sse_post("/api/demo/count", USER, body, None).await;
    let key = on_a
        .header("X-AppKit-Task-Idempotency-Key")
        .unwrap()
        .to_owned();
    assert_eq!(on_a.next_frame().await.unwrap().event, "ready");
    db.wait_events(&key, "tick 2", |e| pg::stored_ticks(e).len() >= 2)
        .await;
    let (mut zombie, mut other) = pg::runner_and_other(&db, &key, a, b).await;

    zombie.signal("STOP");
    let taken_over = db
        .wait_events(&key, "the other's recovered run", |e| {
            started_attempts(e).len() >= 2
        })
        .await;
    assert_eq!(db.owner_node(&key).await, Some(pg::node_id(&other)));
    let ticks_at_takeover = pg::stored_ticks(&taken_over).len();
    assert!(
        ticks_at_takeover < 8,
        "the other must still be running when the zombie wakes up: {taken_over:#?}"
    );
    zombie.signal("CONT");

    // The zombie notices it lost the task (heartbeat) or has a write refused (fence),
    // whichever comes first after it wakes up.
    let fenced = zombie
        .logs
        .wait_for("showing A was fenced", |l| {
            l.contains("lease lost") || l.contains("no longer owned")
        })
        .await;
    println!("zombie: {fenced}");

    // Seqs are assigned at commit, so a late write of A's would appear after B's
    // `started` as a duplicate or out-of-order tick, or an event after `completed`.
    db.wait_events(&key, "completed", |e| pg::count_kind(e, "completed") > 0)
        .await;
    let events = db.events(&key).await;
    assert_count_ran_once(&key, &events, 8);
    // The zombie's process did not fail the handler: the recovered run keeps attempt 1.
    assert_eq!(started_attempts(&events), [1, 1], "{events:#?}");
    assert_eq!(pg::count_kind(&events, "retrying"), 1, "{events:#?}");

    // Both processes are still healthy and stop cleanly.
    assert_eq!(zombie.get("/health", USER).await.status, 200);
    drop(on_a);
    for server in [&mut zombie, &mut other] {
        server.signal("TERM");
        let status = server.wait_exit(common::DEADLINE).await;
        assert!(
            status.success(),
            "exit {status}; logs:\n{}",
            server.logs.dump()
        );
    }
    db.cleanup().await;
}
