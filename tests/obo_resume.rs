//! A task that acts on behalf of its user, on the real binary: stopped, then resumed by a
//! request with a new `X-Forwarded-Access-Token`, its next run uses the new token.

mod common;

use common::{Frame, Server, Sse, request, temp_dir};

/// Reads frames until one named `event`.
async fn until(sse: &mut Sse, event: &str) -> Frame {
    while let Some(frame) = sse.next_frame().await {
        if frame.event == event {
            return frame;
        }
    }
    panic!("the stream ended before a `{event}` frame");
}

fn as_alice(token: &str) -> [(&str, &str); 2] {
    [
        ("X-Forwarded-User", "alice"),
        ("X-Forwarded-Access-Token", token),
    ]
}

#[tokio::test]
async fn a_resume_with_a_new_token_runs_with_the_new_token() {
    let dir = temp_dir();
    let mut server = Server::start(dir.path(), &[]).await;
    let mut sse = Sse::open(
        server.addr,
        "POST",
        "/api/demo/obo",
        &as_alice("first-token-AAAA"),
        Some(r#"{"ms":600000}"#),
    )
    .await
    .unwrap_or_else(|r| panic!("{} {}", r.status, r.text()));
    let key = sse
        .header("x-appkit-task-idempotency-key")
        .expect("key")
        .to_owned();
    let first = until(&mut sse, "token").await;
    assert_eq!(first.json()["tokenEnd"], "AAAA");

    let tasks = format!("/api/demo/tasks/{key}");
    let stop = request(
        server.addr,
        "POST",
        &format!("{tasks}/stop"),
        &as_alice("first-token-AAAA"),
        None,
    )
    .await;
    assert_eq!(stop.json()["status"], "suspended", "{}", stop.text());
    until(&mut sse, "suspended").await;

    // Another user cannot resume it.
    let theft = request(
        server.addr,
        "POST",
        &format!("{tasks}/resume"),
        &[
            ("X-Forwarded-User", "mallory"),
            ("X-Forwarded-Access-Token", "mallory-token-MMMM"),
        ],
        None,
    )
    .await;
    assert_eq!(theft.status, 404);

    let resume = request(
        server.addr,
        "POST",
        &format!("{tasks}/resume"),
        &as_alice("second-token-BBBB"),
        None,
    )
    .await;
    assert_eq!(resume.json()["status"], "pending", "{}", resume.text());
    until(&mut sse, "resumed").await;
    let second = until(&mut sse, "token").await;
    assert_eq!(
        second.json()["tokenEnd"],
        "BBBB",
        "the resumed run has the resuming request's token"
    );
    assert!(second.id > first.id);
    // The token itself never reaches the task's stored events.
    let status = request(server.addr, "GET", &tasks, &as_alice("x"), None).await;
    assert!(!status.text().contains("second-token"), "{}", status.text());

    let cancel = request(
        server.addr,
        "POST",
        &format!("{tasks}/cancel"),
        &as_alice("second-token-BBBB"),
        None,
    )
    .await;
    assert_eq!(cancel.json()["status"], "cancelled");
    until(&mut sse, "cancelled").await;
    server.signal("TERM");
    assert!(server.wait_exit(common::DEADLINE).await.success());
    assert_eq!(
        server
            .logs
            .count("acts on behalf of its user but is registered with auto_recover on"),
        0,
        "the demo registers its on-behalf-of task with auto_recover off"
    );
}

#[tokio::test]
async fn an_on_behalf_of_task_with_auto_recover_on_is_warned_about_once() {
    let dir = temp_dir();
    let mut server = Server::start(dir.path(), &[("DEV_PLAYGROUND_TEST_TASKS", "1")]).await;
    server.signal("TERM");
    assert!(server.wait_exit(common::DEADLINE).await.success());
    let needle = "acts on behalf of its user but is registered with auto_recover on";
    assert_eq!(server.logs.count(needle), 1, "{}", server.logs.dump());
    let line = server
        .logs
        .snapshot()
        .into_iter()
        .find(|l| l.contains(needle))
        .unwrap_or_default();
    assert!(
        line.contains("obo-careless")
            && line.contains("auto_recover(false)")
            && line.contains("WARN"),
        "{line}"
    );
}
