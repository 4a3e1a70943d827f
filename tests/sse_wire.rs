//! The SSE wire contract (`docs/host.md`), frame by frame, against the real binary.

mod common;

use common::{Frame, Item, Server, temp_dir};

#[tokio::test]
async fn count_streams_the_exact_frames_then_closes() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]).await;
    let mut sse = server
        .sse_post(
            "/api/demo/count",
            "alice",
            r#"{"to":3,"delay_ms":10}"#,
            None,
        )
        .await;
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.header("cache-control"), Some("no-cache, no-transform"));
    assert_eq!(sse.header("x-accel-buffering"), Some("no"));
    let key = sse
        .header("x-appkit-task-idempotency-key")
        .expect("key header")
        .to_owned();
    assert_eq!(key.len(), 64);
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));

    let mut items = Vec::new();
    while let Some(r) = sse.next().await {
        items.push(r.item);
    }
    let expected = [
        format!("event: ready\ndata: {{\"idempotencyKey\":\"{key}\"}}"),
        "id: 2\nevent: started\ndata: {\"attempt\":1}".to_owned(),
        "id: 3\nevent: tick\ndata: {\"i\":1}".to_owned(),
        "id: 4\nevent: tick\ndata: {\"i\":2}".to_owned(),
        "id: 5\nevent: tick\ndata: {\"i\":3}".to_owned(),
        "id: 6\nevent: completed\ndata: {\"result\":{\"total\":3}}".to_owned(),
    ]
    .map(Item::Frame);
    assert_eq!(items, expected);

    let status = server
        .get(&format!("/api/demo/tasks/{key}"), "alice")
        .await
        .json();
    assert_eq!(status["status"], "completed");
    assert_eq!(status["result"], serde_json::json!({"total": 3}));
    assert_eq!(status["lastSeq"], 6);
}

#[tokio::test]
async fn flaky_streams_retries_then_completes() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]).await;
    let mut sse = server
        .sse_post("/api/demo/flaky", "alice", r#"{"fail_times":2}"#, None)
        .await;
    let frames = sse.frames_to_end().await;
    let names: Vec<_> = frames.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "ready",
            "started",
            "retrying",
            "started",
            "retrying",
            "started",
            "completed"
        ]
    );
    let ids: Vec<_> = frames.iter().skip(1).map(|f| f.id.expect("id")).collect();
    assert_eq!(ids, (2..=7).collect::<Vec<_>>());
    assert_eq!(frames[2].json()["attempt"], 1);
    assert!(frames[2].json()["error"]["message"].is_string());
    assert_eq!(frames[5].json(), serde_json::json!({"attempt": 3}));
    assert_eq!(
        frames[6].json(),
        serde_json::json!({"result": {"attempts": 3}})
    );
}

#[tokio::test]
async fn last_event_id_is_parsed_robustly() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]).await;
    let mut sse = server
        .sse_post("/api/demo/count", "alice", r#"{"to":2,"delay_ms":1}"#, None)
        .await;
    let key = sse
        .header("x-appkit-task-idempotency-key")
        .unwrap()
        .to_owned();
    let all = sse.frames_to_end().await;
    assert_eq!(all.last().map(|f| f.event.as_str()), Some("completed"));

    // Anything but an unsigned integer is no cursor: the whole stream again.
    for junk in ["abc", "-1", "1.5", "0x2", " "] {
        let frames = server
            .sse_attach(&key, "alice", Some(junk))
            .await
            .frames_to_end()
            .await;
        assert_eq!(frames, all, "Last-Event-ID {junk:?}");
    }
    // A cursor resumes after it.
    let frames = server
        .sse_attach(&key, "alice", Some("3"))
        .await
        .frames_to_end()
        .await;
    let ids: Vec<_> = frames.iter().filter_map(|f| f.id).collect();
    assert_eq!(ids, [4, 5]);
    // At the terminal event: just `ready`, then the end.
    let frames = server
        .sse_attach(&key, "alice", Some("5"))
        .await
        .frames_to_end()
        .await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].event, "ready");
    // Past the last event: a clear 400.
    let path = format!("/api/demo/tasks/{key}/events");
    let refused = common::Sse::open(
        server.addr,
        "GET",
        &path,
        &[("X-Forwarded-User", "alice"), ("Last-Event-ID", "99")],
        None,
    )
    .await
    .expect_err("refused");
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["code"], "INVALID_INPUT");
    assert!(refused.json()["error"].as_str().unwrap().contains("99"));
}

#[tokio::test]
async fn bad_input_is_a_json_400_before_any_stream() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]).await;
    for body in [
        "{",
        r#"{"to":"three","delay_ms":1}"#,
        r#"{"to":3}"#,
        r#"{"to":3,"delay_ms":1,"extra":1}"#,
        r#"{"to":0,"delay_ms":1}"#,
    ] {
        let r = server.post("/api/demo/count", "alice", body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.json()["code"], "INVALID_INPUT", "{body}");
        assert!(r.json()["error"].is_string());
    }
    let frame = Frame::parse("id: 7\nevent: x\ndata: a\ndata: b");
    assert_eq!(frame.data, "a\nb");
}
