//! Cancel-on-disconnect: a re-attach within the grace keeps the task running; a client
//! gone for longer than the grace gets its task stopped (suspended).

mod common;

use common::{Server, temp_dir, ticks};

/// Reads frames until the first tick; returns them.
async fn until_first_tick(sse: &mut common::Sse) -> Vec<common::Frame> {
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

#[tokio::test]
async fn reattach_within_grace_keeps_the_task_running() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[("APPKIT_SSE_DISCONNECT_GRACE_MS", "1500")]).await;
    // 30 ticks of 100 ms: the task outlives the grace by far.
    let mut sse = server
        .sse_post(
            "/api/demo/count",
            "alice",
            r#"{"to":30,"delay_ms":100}"#,
            None,
        )
        .await;
    let key = sse
        .header("x-appkit-task-idempotency-key")
        .unwrap()
        .to_owned();
    let seen = until_first_tick(&mut sse).await;
    drop(sse);
    let last = seen.last().unwrap().id.unwrap().to_string();
    let rest = server
        .sse_attach(&key, "alice", Some(&last))
        .await
        .frames_to_end()
        .await;
    let names: Vec<_> = rest.iter().map(|f| f.event.as_str()).collect();
    assert!(!names.contains(&"suspended"), "{names:?}");
    assert_eq!(names.last(), Some(&"completed"));
    let mut all = ticks(&seen);
    all.extend(ticks(&rest));
    assert_eq!(all, (1..=30).collect::<Vec<_>>());
    assert_eq!(
        server
            .get(&format!("/api/demo/tasks/{key}"), "alice")
            .await
            .json()["status"],
        "completed"
    );
}

#[tokio::test]
async fn disconnect_beyond_grace_suspends_then_resume_and_cancel_work() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[("APPKIT_SSE_DISCONNECT_GRACE_MS", "300")]).await;
    let mut sse = server
        .sse_post(
            "/api/demo/count",
            "alice",
            r#"{"to":500,"delay_ms":100}"#,
            None,
        )
        .await;
    let key = sse
        .header("x-appkit-task-idempotency-key")
        .unwrap()
        .to_owned();
    let seen = until_first_tick(&mut sse).await;
    drop(sse);
    server.wait_status(&key, "alice", "suspended").await;
    server
        .logs
        .wait_for("about the stop", |l| {
            l.contains("task stopped: its client left")
        })
        .await;

    // Re-attach after the last tick seen: the rest of the ticks, then `suspended`.
    let last = seen.last().unwrap().id.unwrap();
    let mut sse = server
        .sse_attach(&key, "alice", Some(&last.to_string()))
        .await;
    let mut after = Vec::new();
    while let Some(frame) = sse.next_frame().await {
        let suspended = frame.event == "suspended";
        after.push(frame);
        if suspended {
            break;
        }
    }
    assert_eq!(
        after.last().unwrap().json(),
        serde_json::json!({"reason": "stopped"})
    );

    // Resume: the same stream carries `resumed`, a new `started`, and more ticks.
    let r = server
        .post(&format!("/api/demo/tasks/{key}/resume"), "alice", "")
        .await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("pending"))
    );
    let mut names = Vec::new();
    while let Some(frame) = sse.next_frame().await {
        names.push(frame.event.clone());
        if frame.event == "tick" {
            break;
        }
    }
    assert_eq!(
        names[..2],
        ["resumed".to_owned(), "started".to_owned()],
        "{names:?}"
    );

    // Cancel: `cancelled` ends the stream.
    let r = server
        .post(&format!("/api/demo/tasks/{key}/cancel"), "alice", "")
        .await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("cancelled"))
    );
    let rest = sse.frames_to_end().await;
    assert_eq!(rest.last().unwrap().event, "cancelled");
    // Terminal: stop and resume conflict.
    for action in ["stop", "resume"] {
        let r = server
            .post(&format!("/api/demo/tasks/{key}/{action}"), "alice", "")
            .await;
        assert_eq!(r.status, 409, "{action}");
        assert_eq!(r.json()["code"], "CONFLICT");
    }
}
