//! A silent task gets `: hb` comments after each idle interval, and none once the stream
//! closed.

mod common;

use std::time::Duration;

use common::{Item, Server, temp_dir};

const INTERVAL_MS: u64 = 200;

#[tokio::test]
async fn silent_task_gets_heartbeats_at_the_interval_and_none_after_close() {
    let dir = temp_dir();
    let server = Server::start(
        dir.path(),
        &[("APPKIT_SSE_KEEPALIVE_MS", &INTERVAL_MS.to_string())],
    )
    .await;
    let mut sse = server
        .sse_post("/api/demo/sleep", "alice", r#"{"ms":1500}"#, None)
        .await;
    let mut items = Vec::new();
    while let Some(r) = sse.next().await {
        items.push(r);
    }
    // The body ended (terminal chunk read): nothing, comment or frame, follows it.
    assert!(sse.next().await.is_none());

    let kinds: Vec<String> = items
        .iter()
        .map(|r| match &r.item {
            Item::Frame(raw) => common::Frame::parse(raw).event,
            Item::Comment(c) => {
                assert_eq!(c, ": hb", "keep-alive comment text");
                "hb".to_owned()
            }
        })
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("ready"));
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("completed"),
        "{kinds:?}"
    );
    let beats = kinds.iter().filter(|k| *k == "hb").count();
    // 1.5 s of silence at 200 ms: about 7; a loaded machine may stretch intervals.
    assert!(beats >= 3, "only {beats} heartbeats: {kinds:?}");

    // Each heartbeat comes a full interval after the previous item (wall clock, reset by
    // each frame), with a little scheduling tolerance.
    let min_gap = Duration::from_millis(INTERVAL_MS - 40);
    for pair in items.windows(2) {
        if matches!(pair[1].item, Item::Comment(_)) {
            let gap = pair[1].at.duration_since(pair[0].at);
            assert!(gap >= min_gap, "heartbeat after only {gap:?}: {kinds:?}");
        }
    }
}

#[tokio::test]
async fn frames_reset_the_idle_timer() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[("APPKIT_SSE_KEEPALIVE_MS", "1000")]).await;
    // Ticks every 100 ms: far below the interval, so no heartbeat is due while ticking,
    // though the whole stream lasts well over one interval.
    let mut sse = server
        .sse_post(
            "/api/demo/count",
            "alice",
            r#"{"to":25,"delay_ms":100}"#,
            None,
        )
        .await;
    let mut items = Vec::new();
    while let Some(r) = sse.next().await {
        items.push(r);
    }
    let first = items.first().unwrap().at;
    let last = items.last().unwrap().at;
    assert!(last.duration_since(first) > Duration::from_millis(1000));
    for pair in items.windows(2) {
        if matches!(pair[1].item, Item::Comment(_)) {
            // Only an idle gap of a full interval may produce one.
            let gap = pair[1].at.duration_since(pair[0].at);
            assert!(gap >= Duration::from_millis(960), "heartbeat after {gap:?}");
        }
    }
}
