//! Resuming with `Last-Event-ID` mid-stream gives every later event exactly once.

mod common;

use common::{Server, temp_dir, ticks};

#[tokio::test]
async fn resume_mid_stream_gives_every_later_event_once() {
    let dir = temp_dir();
    // A long grace: leaving the first stream must not suspend the task.
    let server = Server::start(dir.path(), &[("APPKIT_SSE_DISCONNECT_GRACE_MS", "60000")]).await;
    let body = r#"{"to":12,"delay_ms":100}"#;
    let mut first = server
        .sse_post("/api/demo/count", "alice", body, None)
        .await;
    let key = first
        .header("x-appkit-task-idempotency-key")
        .unwrap()
        .to_owned();
    let mut seen = Vec::new();
    while let Some(frame) = first.next_frame().await {
        let done = frame.event == "tick" && frame.json()["i"] == 4;
        seen.push(frame);
        if done {
            break;
        }
    }
    drop(first);
    let last = seen.last().and_then(|f| f.id).expect("tick has an id");

    // Attach through the task route while the task still runs.
    let mut attached = server
        .sse_attach(&key, "alice", Some(&last.to_string()))
        .await;
    let rest = attached.frames_to_end().await;
    assert_eq!(rest[0].event, "ready");
    let ids: Vec<_> = rest[1..].iter().map(|f| f.id.expect("id")).collect();
    let expected: Vec<_> = (last + 1..=last + ids.len() as u64).collect();
    assert_eq!(ids, expected, "contiguous, no repeat, no gap");
    assert_eq!(rest.last().unwrap().event, "completed");
    let mut all = ticks(&seen);
    all.extend(ticks(&rest));
    assert_eq!(all, (1..=12).collect::<Vec<_>>());

    // Submitting the same input again after the task ended starts a new run (AtLeastOnce)
    // under the same key, and a new run streams from its start whatever the cursor.
    let mut again = server
        .sse_post("/api/demo/count", "alice", body, Some(&last.to_string()))
        .await;
    let new_key = again
        .header("x-appkit-task-idempotency-key")
        .unwrap()
        .to_owned();
    assert_eq!(new_key, key, "same input, same user: same key");
    let frames = again.frames_to_end().await;
    assert_eq!(frames[1].id, Some(2), "a new run streams from its start");
    assert_eq!(ticks(&frames), (1..=12).collect::<Vec<_>>());
}

#[tokio::test]
async fn resubmitting_a_running_task_with_a_cursor_resumes_it() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[("APPKIT_SSE_DISCONNECT_GRACE_MS", "60000")]).await;
    let body = r#"{"to":10,"delay_ms":150}"#;
    let mut first = server
        .sse_post("/api/demo/count", "alice", body, None)
        .await;
    let mut seen = Vec::new();
    while let Some(frame) = first.next_frame().await {
        let done = frame.event == "tick";
        seen.push(frame);
        if done {
            break;
        }
    }
    let last = seen.last().and_then(|f| f.id).unwrap();
    let mut second = server
        .sse_post("/api/demo/count", "alice", body, Some(&last.to_string()))
        .await;
    let rest = second.frames_to_end().await;
    let ids: Vec<_> = rest[1..].iter().map(|f| f.id.unwrap()).collect();
    assert_eq!(ids.first(), Some(&(last + 1)));
    let mut all = ticks(&seen);
    all.extend(ticks(&rest));
    assert_eq!(all, (1..=10).collect::<Vec<_>>());
    // The first stream saw the same task to its end.
    let tail = first.frames_to_end().await;
    assert_eq!(tail.last().unwrap().event, "completed");
}
