//! Telemetry on the real process: the dev-playground exports to a real OTLP receiver
//! (decoding the protobuf it is sent), the task spans join the request's W3C trace, and
//! shutdown flushes everything exactly once; an unreachable collector changes nothing
//! for serving or for a prompt exit 0.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::otlp::Receiver;
use common::{Frame, Server, Sse, temp_dir};
use tokio::time::Instant;

/// The caller's trace, as a W3C `traceparent` (sampled).
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const REMOTE_PARENT: &str = "00f067aa0ba902b7";
/// A second trace, for the status request.
const STATUS_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const SPAN_KIND_SERVER: i32 = 2;
const COUNT_TO: usize = 3;

const STEPS: [&str; 8] = [
    "shutdown: started by SIGINT",
    "shutdown: readiness off",
    "shutdown: draining 0 sse bridges",
    "shutdown: aborting active operations",
    "shutdown: http server closed",
    "shutdown: core services closed",
    "shutdown: telemetry flushed",
    "shutdown: complete",
];

fn traceparent(trace_id: &str) -> String {
    format!("00-{trace_id}-{REMOTE_PARENT}-01")
}

/// Telemetry settings short enough that batches go out while the test runs.
fn otel_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
        ("OTEL_SERVICE_NAME", "dev-playground-e2e".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("OTEL_BLRP_SCHEDULE_DELAY", "100".to_owned()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200".to_owned()),
        (
            "RUST_LOG",
            "info,appkit::shutdown=debug,taskflow=debug,opentelemetry=warn".to_owned(),
        ),
    ]
}

async fn start(dir: &std::path::Path, env: &[(&'static str, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start(dir, &env).await
}

/// Starts a count as `alice` with `traceparent`, reads its stream to the end; returns the
/// idempotency key and the frames.
async fn count(server: &Server, traceparent: Option<&str>) -> (String, Vec<Frame>) {
    let mut headers = vec![("X-Forwarded-User", "alice")];
    if let Some(tp) = traceparent {
        headers.push(("traceparent", tp));
    }
    let body = format!(r#"{{"to":{COUNT_TO},"delay_ms":10}}"#);
    let mut sse = Sse::open(
        server.addr,
        "POST",
        "/api/demo/count",
        &headers,
        Some(&body),
    )
    .await
    .unwrap_or_else(|r| panic!("count refused: {} {}", r.status, r.text()));
    let key = sse
        .header("X-AppKit-Task-Idempotency-Key")
        .expect("idempotency key header")
        .to_owned();
    let frames = sse.frames_to_end().await;
    assert_eq!(
        frames.last().map(|f| f.event.as_str()),
        Some("completed"),
        "{frames:?}"
    );
    (key, frames)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_task_telemetry_reach_the_collector_once_in_the_callers_trace() {
    let receiver = Receiver::start().await;
    let dir = temp_dir();
    let mut server = start(dir.path(), &otel_env(&receiver.endpoint)).await;

    let (key, _) = count(&server, Some(&traceparent(TRACE_ID))).await;
    let status_path = format!("/api/demo/tasks/{key}");
    let status_tp = traceparent(STATUS_TRACE_ID);
    let status = common::request(
        server.addr,
        "GET",
        &status_path,
        &[("X-Forwarded-User", "alice"), ("traceparent", &status_tp)],
        None,
    )
    .await;
    assert_eq!(status.status, 200, "{}", status.text());

    // Let the batch processors export while the server runs, so the final flush has
    // already-exported spans to (not) send again.
    receiver
        .wait_for("the request and task spans", |got| {
            ["POST /api/demo/count", "taskflow.task.execute"]
                .iter()
                .all(|name| got.spans.iter().any(|s| s.name == *name))
                && got.spans_named("taskflow.step").len() == COUNT_TO
        })
        .await;

    server.signal("INT");
    // The scenario: a second signal 20 ms after the first.
    tokio::time::sleep(Duration::from_millis(20)).await;
    server.signal("TERM");
    let exit = server.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(exit.code(), Some(0), "logs:\n{}", server.logs.dump());
    for step in STEPS {
        assert_eq!(
            server.logs.count(step),
            1,
            "`{step}` once; logs:\n{}",
            server.logs.dump()
        );
    }

    // The process flushed before it exited: everything is here now.
    let got = receiver.snapshot();
    assert_eq!(got.decode_errors, 0);

    // Exactly once: no span exported twice (batch export, then the final flush).
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for span in &got.spans {
        *seen.entry(span.span_id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "spans exported more than once: {twice:?}");

    // The HTTP span: named by route, continuing the caller's trace.
    let http = got.span("POST /api/demo/count");
    assert_eq!(http.kind, SPAN_KIND_SERVER);
    assert_eq!(http.trace_id, TRACE_ID);
    assert_eq!(http.parent_span_id, REMOTE_PARENT);
    assert_eq!(http.attribute("http.route"), Some("/api/demo/count"));
    assert_eq!(http.attribute("http.request.method"), Some("POST"));
    assert_eq!(http.attribute("http.response.status_code"), Some("200"));
    assert_eq!(http.service_name.as_deref(), Some("dev-playground-e2e"));

    // The task spans: in the same trace, under the request span.
    let submit = got.span("taskflow.submit");
    assert_eq!(submit.trace_id, TRACE_ID);
    assert_eq!(submit.parent_span_id, http.span_id);
    let execute = got.span("taskflow.task.execute");
    assert_eq!(execute.trace_id, TRACE_ID);
    assert_eq!(execute.parent_span_id, submit.span_id);
    let steps = got.spans_named("taskflow.step");
    assert_eq!(steps.len(), COUNT_TO, "{steps:#?}");
    for step in steps {
        assert_eq!(step.trace_id, TRACE_ID);
        assert_eq!(step.parent_span_id, execute.span_id);
    }

    // A route of a router nested twice (/api/demo → /tasks) keeps its full template.
    let status_span = got.span("GET /api/demo/tasks/{key}");
    assert_eq!(status_span.trace_id, STATUS_TRACE_ID);
    assert_eq!(
        status_span.attribute("http.route"),
        Some("/api/demo/tasks/{key}")
    );
    assert!(
        got.spans.iter().all(|s| !s.name.contains(&key)),
        "no span is named by a raw path"
    );

    // Metrics from the engine.
    for metric in ["taskflow.tasks.submitted", "taskflow.tasks.completed"] {
        assert!(
            got.metric_names.iter().any(|n| n == metric),
            "{metric} missing: {:?}",
            got.metric_names
        );
    }

    // Log records: lifecycle lines, and the task's own correlated with its trace.
    assert!(
        got.logs.iter().any(|l| l.body.contains("listening on")),
        "{:#?}",
        got.logs
    );
    assert!(
        got.logs
            .iter()
            .any(|l| l.body == "shutdown: core services closed"),
        "log records emitted during shutdown are flushed: {:#?}",
        got.logs
    );
    let attempt = got
        .logs
        .iter()
        .find(|l| l.body == "attempt started")
        .unwrap_or_else(|| panic!("no `attempt started` record: {:#?}", got.logs));
    assert_eq!(attempt.trace_id, TRACE_ID);
    assert_eq!(attempt.span_id, execute.span_id);
}

/// A loopback port with nothing listening: bound, then released.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("local address").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_neither_breaks_serving_nor_delays_the_exit() {
    const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
    let dir = temp_dir();
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let mut env = otel_env(&endpoint);
    env.push((
        "APPKIT_SHUTDOWN_TIMEOUT_MS",
        SHUTDOWN_TIMEOUT.as_millis().to_string(),
    ));
    let mut server = start(dir.path(), &env).await;

    // Serving works: a task runs to completion while every export fails.
    let (_, frames) = count(&server, Some(&traceparent(TRACE_ID))).await;
    assert_eq!(common::ticks(&frames), [1, 2, 3]);

    let signalled = Instant::now();
    server.signal("TERM");
    let exit = server.wait_exit(Duration::from_secs(30)).await;
    let took = signalled.elapsed();
    assert_eq!(exit.code(), Some(0), "logs:\n{}", server.logs.dump());
    assert!(
        took < SHUTDOWN_TIMEOUT,
        "exit took {took:?}, over the {SHUTDOWN_TIMEOUT:?} shutdown deadline"
    );
    // The flush step ran once: flushed, or (usually) failed and logged as a warning.
    assert_eq!(
        server.logs.count("shutdown: telemetry flush"),
        1,
        "logs:\n{}",
        server.logs.dump()
    );
    assert_eq!(server.logs.count("shutdown: complete"), 1);
}
