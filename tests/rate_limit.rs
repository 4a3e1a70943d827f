//! Over the per-user rate limit: 429 with `Retry-After`, in the JSON error shape.

mod common;

use common::{Server, temp_dir};

#[tokio::test]
async fn tight_rate_limit_answers_429_with_retry_after() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[("APPKIT_RATE_LIMIT_PER_USER", "2/60000ms")]).await;
    for ms in [1, 2] {
        let mut sse = server
            .sse_post(
                "/api/demo/sleep",
                "alice",
                &format!(r#"{{"ms":{ms}}}"#),
                None,
            )
            .await;
        assert_eq!(sse.frames_to_end().await.last().unwrap().event, "completed");
    }
    let r = server.post("/api/demo/sleep", "alice", r#"{"ms":3}"#).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["code"], "RATE_LIMITED");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After header")
        .parse()
        .expect("whole seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // The limit is per user.
    let mut bob = server
        .sse_post("/api/demo/sleep", "bob", r#"{"ms":3}"#, None)
        .await;
    assert_eq!(bob.frames_to_end().await.last().unwrap().event, "completed");
}
