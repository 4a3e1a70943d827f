//! A Postgres outage while tasks run. The server logs in as a role of this test's own; the
//! outage is real for that role only: new logins are refused (`ALTER ROLE … NOLOGIN`) and
//! its open connections are terminated, again and again, for the whole window. Other
//! tests on the same server are untouched.
//!
//! While the database is gone the server keeps serving: `/health` 200 and the web page,
//! while `/ready`, submissions and status reads answer 503 with the JSON error shape.
//! Afterwards every task that was acknowledged (stream opened with its `ready` frame) still
//! completes, with ticks 1..=n exactly once, and a browser re-attaching with
//! `Last-Event-ID` gets the rest of each stream.
//!
//! Needs `TEST_DATABASE_URL`; prints that it skipped without it.

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

mod common;
#[path = "common/pg.rs"]
mod pg;

use std::time::Duration;

use common::{DEADLINE, Frame, Sse, temp_dir, ticks};
use pg::{SHORT_LEASE_MS, SHORT_REAP_MS, TestDb, assert_count_ran_once};
use serde_json::Value;
use tokio::time::Instant;

const USER: &str = "olga";
const TASKS: u64 = 4;
const TICKS: u64 = 10;

/// Polls `check` every 50 ms until it is true, within the deadline.
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "not {what} within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The JSON error shape with a 503.
fn assert_unavailable(what: &str, r: &common::Response) {
    assert_eq!(r.status, 503, "{what}: {}", r.text());
    let body: Value = r.json();
    assert!(body["error"].is_string(), "{what}: {body}");
    assert!(body["code"].is_string(), "{what}: {body}");
}

/// Reads `sse` to its end; if the server closed it with an in-band `error` (the database
/// went away under it), re-attaches with `Last-Event-ID` as a browser would, retrying while
/// the attach is refused, until the task's stream ends with `completed`.
async fn follow_to_completion(
    server_addr: std::net::SocketAddr,
    key: String,
    mut sse: Sse,
) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut reattached = 0;
    loop {
        let got = sse.frames_to_end().await;
        let ended_in_error = got.last().is_some_and(|f| f.event == "error");
        frames.extend(
            got.into_iter()
                .filter(|f| f.event != "ready" && f.event != "error"),
        );
        if !ended_in_error {
            break;
        }
        let last = frames.last().and_then(|f| f.id).unwrap_or(0).to_string();
        let path = format!("/api/demo/tasks/{key}/events");
        let deadline = Instant::now() + DEADLINE;
        sse = loop {
            let headers = [("X-Forwarded-User", USER), ("Last-Event-ID", last.as_str())];
            match Sse::open(server_addr, "GET", &path, &headers, None).await {
                Ok(sse) => break sse,
                Err(r) => {
                    assert_eq!(r.status, 503, "re-attach refused: {}", r.text());
                    assert!(Instant::now() < deadline, "could not re-attach to {key}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        reattached += 1;
    }
    println!("task {key}: stream followed with {reattached} re-attach(es)");
    frames
}

#[tokio::test]
async fn server_survives_a_database_outage_and_acknowledged_tasks_complete() {
    let Some(url) = pg::database_url("pg_outage") else {
        return;
    };
    let db = TestDb::create(&url, "outage").await;
    let dir = temp_dir();
    let app = format!("{}_app", db.schema);
    let (lease, reap) = (SHORT_LEASE_MS.to_string(), SHORT_REAP_MS.to_string());
    let mut server = db
        .start_server(
            dir.path(),
            &app,
            &[
                ("TASKFLOW_LEASE_MS", lease.as_str()),
                ("TASKFLOW_REAP_INTERVAL_MS", reap.as_str()),
            ],
        )
        .await;
    assert_eq!(server.get("/ready", USER).await.status, 200);

    // Acknowledged tasks: each stream answered 200 with its ready frame.
    let mut followers = Vec::new();
    let mut keys = Vec::new();
    for i in 0..TASKS {
        let body = format!(r#"{{"to": {TICKS}, "delay_ms": {}}}"#, 300 + i);
        let mut sse = server.sse_post("/api/demo/count", USER, &body, None).await;
        let key = sse
            .header("X-AppKit-Task-Idempotency-Key")
            .unwrap()
            .to_owned();
        assert_eq!(sse.next_frame().await.unwrap().event, "ready");
        keys.push(key.clone());
        followers.push(tokio::spawn(follow_to_completion(server.addr, key, sse)));
    }
    for key in &keys {
        db.wait_events(key, "a first tick", |e| !pg::stored_ticks(e).is_empty())
            .await;
    }

    let mut running = 0;
    for key in &keys {
        running += usize::from(pg::count_kind(&db.events(key).await, "completed") == 0);
    }
    assert!(
        running > 0,
        "tasks are still running when the database goes away"
    );
    // The server's connections carry its own application_name (so only they are hit).
    assert!(db.app_backends(&app).await > 0, "connections named {app}");

    // The outage: logins refused, connections killed, repeatedly, for the whole window.
    let killed = db.outage_begin().await;
    assert!(killed > 0, "the server had connections to terminate");
    println!("outage: terminated {killed} backends of {app}");
    let window_started = Instant::now();
    let killer = {
        let admin = db.admin.clone();
        let (role, app) = (db.schema.clone(), app.clone());
        tokio::spawn(async move {
            loop {
                let _: Result<i64, _> = sqlx::query_scalar(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE usename = $1 OR application_name = $2",
                )
                .bind(&role)
                .bind(&app)
                .fetch_one(&admin)
                .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Submissions that need the database answer 503 (once the pool notices).
    let fresh = r#"{"to": 1, "delay_ms": 1}"#;
    let deadline = Instant::now() + DEADLINE;
    let refused = loop {
        let r = server.post("/api/demo/count", USER, fresh).await;
        if r.status == 503 {
            break r;
        }
        assert!(Instant::now() < deadline, "no 503 during the outage: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_unavailable("submit during the outage", &refused);
    assert_eq!(
        refused.json()["code"],
        "STORE_UNAVAILABLE",
        "{}",
        refused.text()
    );
    let status = server
        .get(&format!("/api/demo/tasks/{}", keys[0]), USER)
        .await;
    assert_unavailable("status during the outage", &status);
    let ready = server.get("/ready", USER).await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    // What does not need the database keeps working.
    let health = server.get("/health", USER).await;
    assert_eq!(
        (health.status, health.json()["status"].clone()),
        (200, "ok".into())
    );
    let page = server.get("/", USER).await;
    assert_eq!(page.status, 200, "the web page is served from disk");
    assert!(page.text().contains("<html"), "{}", page.text());

    // Keep the database away for more than a lease, so running tasks lose theirs.
    let window = Duration::from_millis(SHORT_LEASE_MS * 2);
    while window_started.elapsed() < window {
        assert_eq!(server.get("/health", USER).await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    killer.abort();
    db.outage_end().await;
    println!("outage over after {:?}", window_started.elapsed());

    // The server recovers on its own: ready again, submissions accepted.
    wait_until("ready again", || async {
        server.get("/ready", USER).await.status == 200
    })
    .await;
    for (key, follower) in keys.iter().zip(followers) {
        let frames = follower.await.unwrap();
        assert_eq!(
            ticks(&frames),
            (1..=TICKS).collect::<Vec<_>>(),
            "task {key}: every tick once across re-attaches: {frames:#?}"
        );
        assert_eq!(frames.last().unwrap().event, "completed", "task {key}");
        let events = db.events(key).await;
        assert_count_ran_once(key, &events, TICKS);
        println!("task {key}: attempts {:?}", pg::started_attempts(&events));
    }
    let mut after = server.sse_post("/api/demo/count", USER, fresh, None).await;
    let after_frames = after.frames_to_end().await;
    assert_eq!(after_frames.last().unwrap().event, "completed");

    assert!(
        server.logs.count("panicked") == 0,
        "no panic in the server; logs:\n{}",
        server.logs.dump()
    );
    server.signal("TERM");
    let exit = server.wait_exit(DEADLINE).await;
    assert!(exit.success(), "exit {exit}");
    db.cleanup().await;
}
