//! With an endpoint: spans (parent/child, HTTP, propagated), a metric and a log record
//! all reach a real OTLP/HTTP receiver, flushed by `shutdown`.

use appkit_testkit::otlp as common;

use std::time::Duration;

use appkit_telemetry::config::{OtlpConfig, Protocol};
use appkit_telemetry::propagation::{add_link_from, inject_context, set_parent_from};
use appkit_telemetry::{TelemetryConfig, http_server_span, record_http_status};
use http::{HeaderMap, Method, StatusCode};
use opentelemetry::KeyValue;

/// Long enough that nothing is exported before `shutdown` flushes.
const NEVER: Duration = Duration::from_secs(3600);
const REMOTE_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const REMOTE_SPAN_ID: &str = "00f067aa0ba902b7";
const SPAN_KIND_SERVER: i32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_metrics_and_logs_are_exported_and_flushed_by_shutdown() {
    let receiver = common::Receiver::start().await;
    let mut config = TelemetryConfig::new("telemetry-test").with_otlp(
        OtlpConfig::new(&receiver.endpoint, Protocol::HttpProtobuf)
            .with_timeout(Duration::from_secs(2))
            .with_batch_delay(NEVER)
            .with_metric_export_interval(NEVER),
    );
    config
        .resource_attributes
        .push(("deployment.environment".into(), "test".into()));
    let guard = appkit_telemetry::init(config).expect("init");
    assert!(guard.exporting());
    let threads = common::wait_for_otel_sdk_threads(3).await;
    assert_eq!(threads.len(), 3, "one thread per signal: {threads:?}");

    // A parent with a child, and a log event inside the child.
    tracing::info_span!("test.parent").in_scope(|| {
        tracing::info_span!("test.child", task.id = "t-1").in_scope(|| {
            tracing::info!(task.id = "t-1", "hello from the test");
        });
    });

    // A counter through the global meter, as taskflow records.
    opentelemetry::global::meter("taskflow")
        .u64_counter("test.requests")
        .build()
        .add(3, &[KeyValue::new("outcome", "ok")]);

    // An HTTP server span continuing a remote trace, and task spans linked to it.
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        format!("00-{REMOTE_TRACE_ID}-{REMOTE_SPAN_ID}-01")
            .parse()
            .unwrap(),
    );
    let request = http_server_span(&Method::GET, Some("/api/demo/tasks/{key}"), &headers);
    let carrier = inject_context(&request);
    assert!(
        carrier["traceparent"].contains(REMOTE_TRACE_ID),
        "{carrier:?}"
    );
    record_http_status(&request, StatusCode::OK);
    drop(request);
    let child_task = tracing::info_span!("test.task.child");
    assert!(set_parent_from(&child_task, &carrier));
    drop(child_task);
    let linked_task = tracing::info_span!("test.task.linked");
    assert!(add_link_from(&linked_task, &carrier));
    drop(linked_task);

    assert_eq!(
        receiver.snapshot().trace_requests,
        0,
        "nothing is exported before shutdown"
    );
    guard.shutdown().await.expect("shutdown");
    let got = receiver.snapshot();
    assert_eq!(got.decode_errors, 0);

    let parent = got.span("test.parent");
    let child = got.span("test.child");
    assert_eq!(child.trace_id, parent.trace_id);
    assert_eq!(child.parent_span_id, parent.span_id);
    assert_eq!(child.attribute("task.id"), Some("t-1"));
    assert_eq!(parent.service_name.as_deref(), Some("telemetry-test"));

    let http = got.span("GET /api/demo/tasks/{key}");
    assert_eq!(http.kind, SPAN_KIND_SERVER);
    assert_eq!(http.trace_id, REMOTE_TRACE_ID);
    assert_eq!(http.parent_span_id, REMOTE_SPAN_ID);
    assert_eq!(http.attribute("http.request.method"), Some("GET"));
    assert_eq!(http.attribute("http.route"), Some("/api/demo/tasks/{key}"));
    assert_eq!(http.attribute("http.response.status_code"), Some("200"));

    let child_task = got.span("test.task.child");
    assert_eq!(child_task.trace_id, REMOTE_TRACE_ID);
    assert_eq!(child_task.parent_span_id, http.span_id);
    let linked_task = got.span("test.task.linked");
    assert_ne!(linked_task.trace_id, REMOTE_TRACE_ID);
    assert_eq!(
        linked_task.links,
        vec![(REMOTE_TRACE_ID.to_owned(), http.span_id.clone())]
    );

    assert!(
        got.metric_names.iter().any(|n| n == "test.requests"),
        "{:?}",
        got.metric_names
    );

    let log = got
        .logs
        .iter()
        .find(|l| l.body == "hello from the test")
        .unwrap_or_else(|| panic!("log record missing: {:?}", got.logs));
    assert_eq!(log.trace_id, child.trace_id, "log correlated with its span");
    assert_eq!(log.span_id, child.span_id);

    let left = common::wait_for_no_otel_sdk_threads().await;
    assert!(left.is_empty(), "exporter threads still running: {left:?}");
}
