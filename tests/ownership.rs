//! Ownership on every task route: another user's task answers exactly like a missing one.

mod common;

use common::{Server, temp_dir};

#[tokio::test]
async fn another_user_gets_404_on_every_task_route() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[("APPKIT_SSE_DISCONNECT_GRACE_MS", "60000")]).await;
    let body = r#"{"ms":60000}"#;
    let mut alice = server
        .sse_post("/api/demo/sleep", "alice", body, None)
        .await;
    let key = alice
        .header("x-appkit-task-idempotency-key")
        .unwrap()
        .to_owned();
    assert_eq!(alice.next_frame().await.unwrap().event, "ready");
    assert_eq!(alice.next_frame().await.unwrap().event, "started");

    let missing = "0".repeat(64);
    for (method, suffix) in [
        ("GET", ""),
        ("GET", "/events"),
        ("POST", "/stop"),
        ("POST", "/resume"),
        ("POST", "/cancel"),
    ] {
        let mut answers = Vec::new();
        for k in [key.as_str(), missing.as_str()] {
            let path = format!("/api/demo/tasks/{k}{suffix}");
            let r = common::request(
                server.addr,
                method,
                &path,
                &[("X-Forwarded-User", "bob")],
                None,
            )
            .await;
            assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
            answers.push(r.body);
        }
        assert_eq!(
            answers[0], answers[1],
            "{method} {suffix}: indistinguishable from missing"
        );
        let v: serde_json::Value = serde_json::from_slice(&answers[0]).unwrap();
        assert_eq!(v["code"], "NOT_FOUND");
    }
    // Alice still owns and sees it, untouched by bob's attempts.
    let status = server.get(&format!("/api/demo/tasks/{key}"), "alice").await;
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["status"], "running");
    assert_eq!(status.json()["userId"], "alice");

    // The same input from bob is bob's own task.
    let mut bob = server.sse_post("/api/demo/sleep", "bob", body, None).await;
    let bob_key = bob
        .header("x-appkit-task-idempotency-key")
        .unwrap()
        .to_owned();
    assert_ne!(bob_key, key);
    assert_eq!(bob.next_frame().await.unwrap().event, "ready");
}

#[tokio::test]
async fn production_answers_401_without_a_user() {
    let dir = temp_dir();
    let server = Server::start(
        dir.path(),
        &[
            ("APPKIT_ENV", "production"),
            ("APPKIT_TRUST_FORWARDED_USER", "true"),
        ],
    )
    .await;
    let no_user = common::request(
        server.addr,
        "POST",
        "/api/demo/count",
        &[],
        Some(r#"{"to":1,"delay_ms":1}"#),
    )
    .await;
    assert_eq!(no_user.status, 401);
    assert_eq!(no_user.json()["code"], "UNAUTHORIZED");
    let r = common::request(server.addr, "GET", "/api/demo/tasks/abc", &[], None).await;
    assert_eq!(r.status, 401);
    let r = server.get("/api/demo/tasks/abc", "alice").await;
    assert_eq!(r.status, 404);
    // Health and the page need no user.
    assert_eq!(
        common::request(server.addr, "GET", "/health", &[], None)
            .await
            .status,
        200
    );
    let page = common::request(server.addr, "GET", "/", &[], None).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("dev-playground"));
}
