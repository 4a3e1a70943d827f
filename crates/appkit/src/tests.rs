//! Router tests without a socket: errors, limits, users, static files, start-up checks.

mod generated;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use taskflow::{TaskContext, TaskError};
use tower::ServiceExt;

use crate::extract::Json;
use crate::{
    App, BoxError, Config, Environment, Error, Plugin, PluginContext, RunError, SetupContext,
    TaskRequest, UserContext,
};

struct Probe {
    name: &'static str,
    task: &'static str,
}

const SLEEP: taskflow::TaskDef<u64, u64> = taskflow::TaskDef::new("sleep");
/// `(n, pause_ms)`: `n` ticks, the pause before each.
const TICKS: taskflow::TaskDef<(u32, u64), ()> = taskflow::TaskDef::new("ticks");

async fn ticks(ctx: TaskContext, (n, pause_ms): (u32, u64)) -> Result<(), TaskError> {
    for i in 1..=n {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        ctx.emit("tick", json!({ "i": i })).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Plugin for Probe {
    fn name(&self) -> &str {
        self.name
    }

    async fn setup(&mut self, cx: &SetupContext) -> Result<(), BoxError> {
        cx.taskflow()
            .register(self.task, |ctx: TaskContext, ms: u64| async move {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    () = ctx.cancelled() => {}
                }
                Ok::<_, TaskError>(ms)
            })?;
        cx.taskflow().register(TICKS, ticks)?;
        cx.taskflow()
            .register(generated::EMIT_ALL, generated::emit_all)?;
        Ok(())
    }

    fn endpoints(&self) -> std::collections::BTreeMap<String, String> {
        [("echo".to_owned(), "/echo".to_owned())].into()
    }

    fn routes(&self) -> Router<PluginContext> {
        async fn echo(Json(v): Json<Value>) -> axum::Json<Value> {
            axum::Json(v)
        }
        async fn whoami(user: UserContext) -> String {
            user.id().to_owned()
        }
        async fn boom() -> Result<(), Error> {
            Err(Error::Internal("database password is hunter2".into()))
        }
        // Nothing special: the `TaskRequest` carries the resume cursor.
        async fn sleep(
            State(cx): State<PluginContext>,
            req: TaskRequest,
            Json(ms): Json<u64>,
        ) -> crate::Result<Response> {
            cx.execute(&req, SLEEP, ms).await
        }
        async fn start_ticks(
            State(cx): State<PluginContext>,
            req: TaskRequest,
            Json(input): Json<(u32, u64)>,
        ) -> crate::Result<Response> {
            cx.execute(&req, TICKS, input).await
        }
        Router::new()
            .route("/echo", post(echo))
            .route("/whoami", get(whoami))
            .route("/boom", get(boom))
            .route("/sleep", post(sleep))
            .route("/ticks", post(start_ticks))
            .route("/emit-all", post(generated::start_emit_all))
    }
}

fn probe() -> Probe {
    Probe {
        name: "probe",
        task: "sleep",
    }
}

struct Host {
    router: Router,
    _dir: tempfile::TempDir,
    started: crate::app::Started,
}

fn config(dir: &tempfile::TempDir) -> Config {
    let mut config = Config::default();
    config.tasks_store = crate::config::TasksStore::Sqlite(dir.path().join("tasks.db"));
    config.static_dir = Some(dir.path().join("static"));
    config.taskflow.drain_timeout = Duration::from_millis(50);
    config.taskflow.stop_grace = Duration::from_millis(50);
    config
}

async fn host_with(config: impl FnOnce(&mut Config), dir: tempfile::TempDir) -> Host {
    std::fs::create_dir_all(dir.path().join("static/assets")).unwrap();
    std::fs::write(dir.path().join("static/index.html"), "<h1>index</h1>").unwrap();
    std::fs::write(dir.path().join("static/assets/app.js"), "js()").unwrap();
    let mut c = self::config(&dir);
    config(&mut c);
    let app = App::builder().plugin(probe()).build(c).unwrap();
    let started = app.start().await.unwrap();
    Host {
        router: started.router.clone(),
        _dir: dir,
        started,
    }
}

async fn host(config: impl FnOnce(&mut Config)) -> Host {
    host_with(config, tempfile::tempdir().unwrap()).await
}

impl Host {
    async fn call(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
        let response = self.router.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let (s, _, b) = self
            .call(Request::get(path).body(Body::empty()).unwrap())
            .await;
        (s, b)
    }

    async fn stop(self) {
        self.started.taskflow.shutdown().await;
    }
}

fn json_post(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

fn error_json(body: &str) -> (String, String) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (
        v["error"].as_str().unwrap().to_owned(),
        v["code"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn health_and_ready_answer_and_ready_turns_503_at_shutdown() {
    let host = host(|_| {}).await;
    assert_eq!(
        host.get("/health").await,
        (StatusCode::OK, json!({"status": "ok"}).to_string())
    );
    assert_eq!(host.get("/ready").await.0, StatusCode::OK);
    host.started.shutdown.trigger("test");
    assert_eq!(
        host.get("/ready").await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "shutting_down"}).to_string()
        )
    );
    let (status, _, body) = host.call(json_post("/api/probe/sleep", "1")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_json(&body).1, "SHUTTING_DOWN");
    host.stop().await;
}

#[tokio::test]
async fn unknown_api_paths_answer_json_404_and_never_the_spa() {
    let host = host(|_| {}).await;
    for path in ["/api", "/api/nope", "/api/probe/nope", "/api/probe/echo/x"] {
        let (status, body) = host.get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_json(&body).1, "NOT_FOUND", "{path}");
    }
    host.stop().await;
}

#[tokio::test]
async fn static_files_are_served_with_an_spa_fallback() {
    let host = host(|_| {}).await;
    let config = r#"<script>window.__CONFIG__ = {"appName":null,"endpoints":{"probe":{"echo":"/api/probe/echo"}}};</script>"#;
    let page = format!("{config}<h1>index</h1>");
    assert_eq!(host.get("/").await, (StatusCode::OK, page.clone()));
    assert_eq!(
        host.get("/assets/app.js").await,
        (StatusCode::OK, "js()".into())
    );
    assert_eq!(host.get("/some/client/route").await, (StatusCode::OK, page));
    host.stop().await;
}

#[tokio::test]
async fn bad_bodies_answer_in_the_error_shape() {
    let host = host(|c| c.max_body_bytes = 64).await;
    let (status, _, body) = host.call(json_post("/api/probe/echo", "{not json")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_json(&body).1, "INVALID_INPUT");

    let big = format!("\"{}\"", "x".repeat(200));
    let (status, _, body) = host.call(json_post("/api/probe/echo", &big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_json(&body).1, "PAYLOAD_TOO_LARGE");

    let req = Request::post("/api/probe/echo")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("1"))
        .unwrap();
    let (status, _, body) = host.call(req).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error_json(&body).1, "UNSUPPORTED_MEDIA_TYPE");

    let (status, _, body) = host.call(json_post("/api/probe/echo", "[1]")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "[1]"));
    host.stop().await;
}

#[tokio::test]
async fn production_needs_a_user_and_redacts_server_errors() {
    let host = host(|c| {
        c.env = Environment::Production;
        c.trust_forwarded_user = Some(true);
    })
    .await;
    let (status, body) = host.get("/api/probe/whoami").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_json(&body).1, "UNAUTHORIZED");

    let req = Request::get("/api/probe/whoami")
        .header("X-Forwarded-User", "alice")
        .body(Body::empty())
        .unwrap();
    assert_eq!(host.call(req).await.2, "alice");

    let (status, body) = host.get("/api/probe/boom").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        error_json(&body),
        ("Server error".into(), "INTERNAL".into())
    );
    host.stop().await;
}

#[tokio::test]
async fn development_shows_server_errors_and_uses_the_local_user() {
    let host = host(|_| {}).await;
    assert_eq!(
        host.get("/api/probe/whoami").await.1,
        crate::extract::DEV_USER_ID
    );
    let (_, body) = host.get("/api/probe/boom").await;
    assert!(error_json(&body).0.contains("hunter2"));
    host.stop().await;
}

#[tokio::test]
async fn a_cursor_past_the_last_event_is_a_bad_request() {
    let host = host(|_| {}).await;
    let submit = || {
        Request::post("/api/probe/sleep")
            .header(header::CONTENT_TYPE, "application/json")
            .header("last-event-id", "999")
            .body(Body::from("60000"))
            .unwrap()
    };
    // A new task streams from its start whatever the cursor.
    let first = host.router.clone().oneshot(submit()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    // The same submission attaches to it, and the cursor is past its last event.
    let (status, _, body) = host.call(submit()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_json(&body).1, "INVALID_INPUT");
    drop(first);
    host.stop().await;
}

/// The `id:` lines of an SSE body.
fn sse_ids(body: &str) -> Vec<u64> {
    body.lines()
        .filter_map(|line| line.strip_prefix("id: "))
        .map(|id| id.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn a_handler_that_does_nothing_special_resumes_after_last_event_id() {
    let host = host(|_| {}).await;
    let submit = |last: Option<&str>| {
        let mut req =
            Request::post("/api/probe/ticks").header(header::CONTENT_TYPE, "application/json");
        if let Some(last) = last {
            req = req.header("last-event-id", last);
        }
        // 8 ticks, 30 ms apart: still running when the client comes back.
        req.body(Body::from("[8, 30]")).unwrap()
    };
    let first = host.router.clone().oneshot(submit(None)).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    // Read until the second tick (seq 4: `created` is 1, `started` 2), then drop the
    // connection, as a browser that lost its network would.
    let mut body = first.into_body();
    let mut seen = String::new();
    while !seen.contains("id: 4\n") {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the second tick within 10 s")
            .expect("the stream goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            seen.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    drop(body);
    assert_eq!(sse_ids(&seen), [2, 3, 4], "{seen}");
    // It reconnects with the last id it saw and the same request: the stream picks up
    // after it, though the route passes nothing but the `TaskRequest` along.
    let (status, _, resumed) = host.call(submit(Some("4"))).await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert!(resumed.starts_with("event: ready\n"), "{resumed}");
    // ticks 3..=8 are seqs 5..=10, then `completed` is 11.
    assert_eq!(sse_ids(&resumed), (5..=11).collect::<Vec<_>>(), "{resumed}");
    host.stop().await;
}

#[tokio::test]
async fn duplicate_plugin_names_are_refused() {
    let err = App::builder()
        .plugin(probe())
        .plugin(probe())
        .build(Config::default())
        .unwrap_err();
    assert!(
        matches!(err, RunError::DuplicatePlugin(ref n) if n == "probe"),
        "{err}"
    );
    let err = App::builder()
        .plugin(Probe {
            name: "Bad Name",
            task: "x",
        })
        .build(Config::default())
        .unwrap_err();
    assert!(matches!(err, RunError::InvalidPluginName(_)), "{err}");
}

#[tokio::test]
async fn duplicate_task_names_fail_setup_naming_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::builder()
        .plugin(probe())
        .plugin(Probe {
            name: "other",
            task: "sleep",
        })
        .build(config(&dir))
        .unwrap();
    let err = app.start().await.err().expect("setup must fail");
    let text = crate::error::error_chain(&err);
    assert!(text.contains("plugin `other`"), "{text}");
    assert!(text.contains("`sleep` is already registered"), "{text}");
}

#[tokio::test]
async fn production_elsewhere_needs_a_trust_decision_or_an_extractor_of_the_apps() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&dir);
    c.env = Environment::Production;
    let err = App::builder().plugin(probe()).build(c.clone()).unwrap_err();
    assert!(matches!(err, RunError::UntrustedIdentity(_)), "{err}");
    assert!(err.to_string().contains("APPKIT_TRUST_FORWARDED_USER=true"));

    // The app's own extractor: accepted, and the forwarded headers are never read.
    let app = App::builder()
        .plugin(probe())
        .user_extractor(|parts| {
            Ok(parts
                .headers
                .get("x-session")
                .and_then(|v| v.to_str().ok())
                .map(|s| UserContext::new(format!("session-{s}"))))
        })
        .build(c)
        .unwrap();
    let started = app.start().await.unwrap();
    let host = Host {
        router: started.router.clone(),
        _dir: dir,
        started,
    };
    let whoami = |headers: &[(&str, &str)]| {
        let mut req = Request::get("/api/probe/whoami");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Body::empty()).unwrap()
    };
    let (status, _, body) = host.call(whoami(&[("X-Forwarded-User", "mallory")])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _, body) = host.call(whoami(&[("x-session", "42")])).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "session-42"));
    host.stop().await;
}
