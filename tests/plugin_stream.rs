//! A plugin-owned SSE stream (the demo's `clock`, served with `PluginContext::sse_channel`)
//! on the real binary: idle keep-alives, and at shutdown a final `server_shutting_down`
//! frame and a clean exit 0, however long the stream would have run.

mod common;

use std::time::Duration;

use common::{Item, Server, temp_dir};
use tokio::time::Instant;

#[tokio::test]
async fn a_never_ending_plugin_stream_is_drained_at_shutdown_and_the_exit_is_0() {
    let dir = temp_dir();
    let mut server = Server::start(
        dir.path(),
        &[
            ("APPKIT_SSE_KEEPALIVE_MS", "100"),
            // Long enough that a stream holding the HTTP close would show as a timeout.
            ("APPKIT_SHUTDOWN_TIMEOUT_MS", "20000"),
        ],
    )
    .await;
    let mut clock = server
        .sse_attach_path("/api/demo/clock?interval_ms=350", "alice")
        .await;
    // Ticks arrive, with keep-alive comments in the idle time between them.
    let mut ticks = 0;
    let mut comments = 0;
    while ticks < 2 || comments < 1 {
        match clock.next().await.expect("the clock runs").item {
            Item::Comment(c) => {
                assert_eq!(c, ": hb");
                comments += 1;
            }
            Item::Frame(raw) => {
                let frame = common::Frame::parse(&raw);
                assert_eq!(frame.event, "tick");
                ticks += 1;
                assert_eq!(frame.json()["n"], ticks);
            }
        }
    }

    let asked = Instant::now();
    server.signal("TERM");
    let rest = clock.frames_to_end().await;
    let last = rest.last().expect("a final frame");
    assert_eq!(last.event, "error");
    assert_eq!(last.json()["message"], "server_shutting_down");
    assert!(
        rest[..rest.len() - 1].iter().all(|f| f.event == "tick"),
        "{rest:?}"
    );
    let status = server.wait_exit(common::DEADLINE).await;
    assert!(
        status.success(),
        "exit {status}; logs:\n{}",
        server.logs.dump()
    );
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        asked.elapsed()
    );
    server
        .logs
        .wait_for("draining the stream", |l| {
            l.contains("shutdown: draining 1 sse bridges")
        })
        .await;
    assert_eq!(server.logs.count("shutdown: deadline"), 0);
}

#[tokio::test]
async fn a_plugin_stream_that_ends_closes_normally() {
    let dir = temp_dir();
    let mut server = Server::start(dir.path(), &[]).await;
    let mut clock = server
        .sse_attach_path("/api/demo/clock?interval_ms=5&ticks=3", "alice")
        .await;
    let frames = clock.frames_to_end().await;
    let ns: Vec<_> = frames.iter().map(|f| f.json()["n"].clone()).collect();
    assert_eq!(ns, [1, 2, 3]);
    assert!(frames.iter().all(|f| f.event == "tick"));
    // It no longer counts as open: nothing to drain.
    server.signal("TERM");
    assert!(server.wait_exit(common::DEADLINE).await.success());
    server
        .logs
        .wait_for("an empty drain", |l| {
            l.contains("shutdown: draining 0 sse bridges")
        })
        .await;
}
