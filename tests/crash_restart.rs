//! SIGKILL during a count, restart, re-attach with the last seq: the stream continues to
//! `completed` with no lost or repeated tick.

mod common;

use std::time::Duration;

use common::{Server, temp_dir, ticks};

#[tokio::test]
async fn sigkill_then_restart_and_reattach_loses_and_repeats_nothing() {
    let dir = temp_dir();
    let mut server = Server::start(dir.path(), &[]).await;
    let mut sse = server
        .sse_post(
            "/api/demo/count",
            "alice",
            r#"{"to":40,"delay_ms":50}"#,
            None,
        )
        .await;
    let key = sse
        .header("x-appkit-task-idempotency-key")
        .unwrap()
        .to_owned();
    let mut seen = Vec::new();
    while let Some(frame) = sse.next_frame().await {
        let stop = frame.event == "tick" && frame.json()["i"] == 10;
        seen.push(frame);
        if stop {
            break;
        }
    }
    server.signal("KILL");
    let status = server.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), None, "killed by a signal");
    drop(sse);

    let server = Server::start(dir.path(), &[]).await;
    let last = seen.last().and_then(|f| f.id).unwrap();
    let after = server
        .sse_attach(&key, "alice", Some(&last.to_string()))
        .await
        .frames_to_end()
        .await;
    assert_eq!(after[0].event, "ready");
    let ids: Vec<u64> = after[1..].iter().map(|f| f.id.unwrap()).collect();
    let expected: Vec<u64> = (last + 1..=last + ids.len() as u64).collect();
    assert_eq!(ids, expected, "seqs continue without gap or repeat");
    assert_eq!(after.last().unwrap().event, "completed");
    assert_eq!(after.last().unwrap().json()["result"]["total"], 40);
    let mut all = ticks(&seen);
    all.extend(ticks(&after));
    assert_eq!(all, (1..=40).collect::<Vec<_>>(), "every tick exactly once");
}
