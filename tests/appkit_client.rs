//! Drives the server the way AppKit's browser client (`subscribeToTask`) does: POST with
//! `Accept: text/event-stream`, the key from `X-AppKit-Task-Idempotency-Key`, a `ready`
//! frame, a retry of the same POST with `Last-Event-ID` after the connection drops, and
//! dispatch on `completed` / `failed` / `cancelled` — showing `payload.message` for a
//! failure, as the client does.

mod common;

use common::{Frame, Server, request, temp_dir};
use serde_json::Value;

/// What one `subscribeToTask` call ended with.
struct Outcome {
    key: String,
    /// Every frame after `ready`, across connections, terminal one last.
    frames: Vec<Frame>,
    connections: usize,
}

impl Outcome {
    fn terminal(&self) -> &Frame {
        self.frames.last().expect("a terminal frame")
    }

    /// What the client shows for a failure: `payload.message`.
    fn shown_message(&self) -> String {
        let payload = self.terminal().json();
        payload["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no top-level message: {payload}"))
            .to_owned()
    }
}

#[derive(Default, Clone, Copy)]
struct Options {
    /// Drop the connection once, right after the frame with this id.
    cut_after: Option<u64>,
    /// Cancel the task (task route) once its `started` frame arrives.
    cancel_when_started: bool,
}

const TERMINAL: [&str; 3] = ["completed", "failed", "cancelled"];

async fn subscribe_to_task(
    server: &Server,
    path: &str,
    user: &str,
    body: &str,
    options: Options,
) -> Outcome {
    let mut key: Option<String> = None;
    let mut last: Option<u64> = None;
    let mut frames = Vec::new();
    let mut connections = 0;
    let mut cut_after = options.cut_after;
    let mut cancel = options.cancel_when_started;
    loop {
        connections += 1;
        assert!(connections <= 5, "too many reconnects; frames: {frames:?}");
        let last_id = last.map(|l| l.to_string());
        let mut headers = vec![("X-Forwarded-User", user), ("Accept", "text/event-stream")];
        if let Some(last_id) = &last_id {
            headers.push(("Last-Event-ID", last_id.as_str()));
        }
        let mut sse = common::Sse::open(server.addr, "POST", path, &headers, Some(body))
            .await
            .unwrap_or_else(|r| panic!("stream refused: {} {}", r.status, r.text()));
        assert!(
            sse.header("content-type")
                .is_some_and(|v| v.starts_with("text/event-stream")),
            "{:?}",
            sse.headers
        );
        let this_key = sse
            .header("x-appkit-task-idempotency-key")
            .expect("the key header")
            .to_owned();
        if let Some(key) = &key {
            assert_eq!(key, &this_key, "a retry attaches to the same task");
        }
        let ready = sse.next_frame().await.expect("a ready frame");
        assert_eq!(ready.event, "ready");
        assert_eq!(ready.json()["idempotencyKey"], this_key.as_str());
        key = Some(this_key.clone());
        while let Some(frame) = sse.next_frame().await {
            if frame.event == "error" {
                break; // in-band error: the client retries with Last-Event-ID
            }
            let id = frame.id.expect("task frames have ids");
            assert!(
                last.is_none_or(|l| id > l),
                "ids increase: {id} after {last:?}"
            );
            last = Some(id);
            let event = frame.event.clone();
            frames.push(frame);
            if TERMINAL.contains(&event.as_str()) {
                return Outcome {
                    key: this_key,
                    frames,
                    connections,
                };
            }
            if cancel && event == "started" {
                cancel = false;
                let path = format!("/api/demo/tasks/{this_key}/cancel");
                let r = request(
                    server.addr,
                    "POST",
                    &path,
                    &[("X-Forwarded-User", user)],
                    None,
                )
                .await;
                assert_eq!(r.status, 200, "{}", r.text());
            }
            if cut_after == Some(id) {
                cut_after = None;
                break; // the connection drops: the client retries
            }
        }
    }
}

fn ticks(frames: &[Frame]) -> Vec<u64> {
    common::ticks(frames)
}

#[tokio::test]
async fn a_count_completes_across_a_retry_with_last_event_id() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]).await;
    // Events: started (2), tick 1 (3), tick 2 (4), …: drop after tick 2.
    let outcome = subscribe_to_task(
        &server,
        "/api/demo/count",
        "alice",
        r#"{"to":5,"delay_ms":150}"#,
        Options {
            cut_after: Some(4),
            ..Options::default()
        },
    )
    .await;
    assert_eq!(outcome.connections, 2, "one retry");
    assert_eq!(ticks(&outcome.frames), [1, 2, 3, 4, 5], "each tick once");
    assert_eq!(outcome.terminal().event, "completed");
    assert_eq!(outcome.terminal().json()["result"]["total"], 5);
}

#[tokio::test]
async fn a_cancelled_task_ends_the_subscription_with_cancelled() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]).await;
    let outcome = subscribe_to_task(
        &server,
        "/api/demo/sleep",
        "alice",
        r#"{"ms":600000}"#,
        Options {
            cancel_when_started: true,
            ..Options::default()
        },
    )
    .await;
    assert_eq!(outcome.terminal().event, "cancelled");
}

#[tokio::test]
async fn development_shows_the_handlers_failure_message() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]).await;
    // 20 planned failures, 10 attempts: it fails for good on the 10th.
    let outcome = subscribe_to_task(
        &server,
        "/api/demo/flaky",
        "alice",
        r#"{"fail_times":20}"#,
        Options {
            cut_after: Some(3),
            ..Options::default()
        },
    )
    .await;
    assert_eq!(outcome.connections, 2);
    let failed = outcome.terminal();
    assert_eq!(failed.event, "failed");
    assert_eq!(outcome.shown_message(), "planned failure 10 of 20");
    let payload = failed.json();
    assert_eq!(payload["error"]["kind"], "retryable");
    assert_eq!(payload["error"]["message"], "planned failure 10 of 20");
    assert_eq!(payload["attempt"], 10);
}

#[tokio::test]
async fn production_shows_a_generic_message_unless_the_error_is_public() {
    let dir = temp_dir();
    let server = Server::start(
        dir.path(),
        &[
            ("APPKIT_ENV", "production"),
            ("APPKIT_TRUST_FORWARDED_USER", "true"),
        ],
    )
    .await;
    let outcome = subscribe_to_task(
        &server,
        "/api/demo/flaky",
        "alice",
        r#"{"fail_times":20}"#,
        Options::default(),
    )
    .await;
    assert_eq!(outcome.terminal().event, "failed");
    assert_eq!(outcome.shown_message(), "Task failed");
    let payload = outcome.terminal().json();
    assert_eq!(payload["error"]["kind"], "retryable", "the kind stays");
    for frame in &outcome.frames {
        assert!(
            !frame.data.contains("planned failure"),
            "raw handler text reached the browser: {frame:?}"
        );
    }
    let retrying: Vec<Value> = outcome
        .frames
        .iter()
        .filter(|f| f.event == "retrying")
        .map(Frame::json)
        .collect();
    assert_eq!(retrying.len(), 9);
    assert!(retrying.iter().all(|r| r["message"].is_string()));
    // Nor through the status route.
    let status = server
        .get(&format!("/api/demo/tasks/{}", outcome.key), "alice")
        .await;
    assert_eq!(status.status, 200);
    assert!(
        !status.text().contains("planned failure"),
        "{}",
        status.text()
    );
    assert_eq!(status.json()["error"]["message"], "Task failed");
    assert_eq!(status.json()["error"]["kind"], "retryable");

    // A public error is shown as is.
    let outcome = subscribe_to_task(
        &server,
        "/api/demo/refuse",
        "alice",
        r#"{"reason":"the quota is used up"}"#,
        Options::default(),
    )
    .await;
    assert_eq!(outcome.terminal().event, "failed");
    assert_eq!(
        outcome.shown_message(),
        "request refused: the quota is used up"
    );
    assert_eq!(outcome.terminal().json()["error"]["kind"], "permanent");
    let status = server
        .get(&format!("/api/demo/tasks/{}", outcome.key), "alice")
        .await;
    assert_eq!(
        status.json()["error"]["message"],
        "request refused: the quota is used up"
    );
}

#[tokio::test]
async fn a_public_error_survives_a_restart() {
    let dir = temp_dir();
    let env = [
        ("APPKIT_ENV", "production"),
        ("APPKIT_TRUST_FORWARDED_USER", "true"),
    ];
    let mut server = Server::start(dir.path(), &env).await;
    let outcome = subscribe_to_task(
        &server,
        "/api/demo/refuse",
        "alice",
        r#"{"reason":"closed on Sundays"}"#,
        Options::default(),
    )
    .await;
    server.signal("TERM");
    assert!(server.wait_exit(common::DEADLINE).await.success());
    let server = Server::start(dir.path(), &env).await;
    let mut replay = server.sse_attach(&outcome.key, "alice", None).await;
    let frames = replay.frames_to_end().await;
    let failed = frames.last().expect("frames");
    assert_eq!(failed.event, "failed");
    assert_eq!(
        failed.json()["message"],
        "request refused: closed on Sundays"
    );
}
