//! A real OTLP/HTTP receiver on loopback that decodes the protobuf an exporter sends
//! (`/v1/traces`, `/v1/metrics`, `/v1/logs`), and the OTel SDK's threads of this process.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;

use crate::DEADLINE;

/// One span as the receiver decoded it.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// Span name.
    pub name: String,
    /// Trace id, hex.
    pub trace_id: String,
    /// Span id, hex.
    pub span_id: String,
    /// Parent span id, hex (empty for a root).
    pub parent_span_id: String,
    /// `SpanKind` as its protobuf number.
    pub kind: i32,
    /// Attributes, values as text.
    pub attributes: Vec<(String, String)>,
    /// `(trace_id, span_id)` of each link.
    pub links: Vec<(String, String)>,
    /// The resource's `service.name`.
    pub service_name: Option<String>,
}

impl ReceivedSpan {
    /// The attribute `key`, as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One log record as the receiver decoded it.
#[derive(Clone, Debug)]
pub struct ReceivedLog {
    /// The body, as text.
    pub body: String,
    /// Trace id, hex (empty outside a span).
    pub trace_id: String,
    /// Span id, hex (empty outside a span).
    pub span_id: String,
}

/// Everything received so far.
#[derive(Clone, Debug, Default)]
pub struct Received {
    /// Requests to `/v1/traces`.
    pub trace_requests: usize,
    /// Requests to `/v1/metrics`.
    pub metric_requests: usize,
    /// Requests to `/v1/logs`.
    pub log_requests: usize,
    /// Requests whose body did not decode.
    pub decode_errors: usize,
    /// Every span.
    pub spans: Vec<ReceivedSpan>,
    /// The name of every metric in every request.
    pub metric_names: Vec<String>,
    /// Every log record.
    pub logs: Vec<ReceivedLog>,
}

impl Received {
    /// The first span named `name`.
    ///
    /// # Panics
    /// When there is none.
    pub fn span(&self, name: &str) -> &ReceivedSpan {
        self.spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span named {name:?} in {:#?}", self.spans))
    }

    /// Every span named `name`.
    pub fn spans_named(&self, name: &str) -> Vec<&ReceivedSpan> {
        self.spans.iter().filter(|s| s.name == name).collect()
    }
}

#[derive(Debug, Default)]
struct Shared {
    received: Mutex<Received>,
}

/// A running receiver; `endpoint` is its base URL (`http://127.0.0.1:PORT`).
#[derive(Debug)]
pub struct Receiver {
    /// Base URL, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    shared: Arc<Shared>,
}

impl Receiver {
    /// Binds 127.0.0.1:0 and serves `/v1/traces`, `/v1/metrics`, `/v1/logs`.
    ///
    /// # Panics
    /// When it cannot bind.
    pub async fn start() -> Receiver {
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .route("/v1/traces", post(traces))
            .route("/v1/metrics", post(metrics))
            .route("/v1/logs", post(logs))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let endpoint = format!(
            "http://{}",
            listener.local_addr().expect("the receiver's address")
        );
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        Receiver { endpoint, shared }
    }

    /// A copy of everything received so far.
    pub fn snapshot(&self) -> Received {
        self.shared.received.lock().expect("receiver lock").clone()
    }

    /// Waits until what was received satisfies `pred`, polling under [`DEADLINE`].
    ///
    /// # Panics
    /// After [`DEADLINE`], with everything received.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Received) -> bool) -> Received {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let got = self.snapshot();
            if pred(&got) {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the receiver never got {what} within {DEADLINE:?}: {got:#?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

fn protobuf(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        body,
    )
        .into_response()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn any_value_text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), any_value_text(kv.value.as_ref())))
        .collect()
}

async fn traces(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let mut received = shared.received.lock().expect("receiver lock");
    received.trace_requests += 1;
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        received.decode_errors += 1;
        return StatusCode::BAD_REQUEST.into_response();
    };
    for resource_spans in request.resource_spans {
        let service_name = resource_spans.resource.as_ref().and_then(|r| {
            attributes(&r.attributes)
                .into_iter()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v)
        });
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                received.spans.push(ReceivedSpan {
                    name: span.name.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    service_name: service_name.clone(),
                });
            }
        }
    }
    protobuf(ExportTraceServiceResponse::default().encode_to_vec())
}

async fn metrics(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let mut received = shared.received.lock().expect("receiver lock");
    received.metric_requests += 1;
    let Ok(request) = ExportMetricsServiceRequest::decode(body) else {
        received.decode_errors += 1;
        return StatusCode::BAD_REQUEST.into_response();
    };
    for resource_metrics in request.resource_metrics {
        for scope_metrics in resource_metrics.scope_metrics {
            for metric in scope_metrics.metrics {
                received.metric_names.push(metric.name);
            }
        }
    }
    protobuf(ExportMetricsServiceResponse::default().encode_to_vec())
}

async fn logs(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let mut received = shared.received.lock().expect("receiver lock");
    received.log_requests += 1;
    let Ok(request) = ExportLogsServiceRequest::decode(body) else {
        received.decode_errors += 1;
        return StatusCode::BAD_REQUEST.into_response();
    };
    for resource_logs in request.resource_logs {
        for scope_logs in resource_logs.scope_logs {
            for record in scope_logs.log_records {
                received.logs.push(ReceivedLog {
                    body: any_value_text(record.body.as_ref()),
                    trace_id: hex(&record.trace_id),
                    span_id: hex(&record.span_id),
                });
            }
        }
    }
    protobuf(ExportLogsServiceResponse::default().encode_to_vec())
}

/// Names of this process's threads started by the OTel SDK (batch processors, readers).
///
/// Linux truncates thread names to 15 bytes: `OpenTelemetry.T…`, `OpenTelemetry.M…`, ….
pub fn otel_sdk_threads() -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with("OpenTelemetry"))
        .collect()
}

/// Waits until `count` OTel SDK threads are visible (a new thread names itself after it
/// starts, so a read right after spawning can miss it).
pub async fn wait_for_otel_sdk_threads(count: usize) -> Vec<String> {
    poll_otel_sdk_threads(|threads| threads.len() >= count).await
}

/// Waits until no OTel SDK thread is left, and returns those still there at the deadline.
/// A batch processor answers its shutdown call before its thread has exited, so a read
/// right after shutdown can still see it.
pub async fn wait_for_no_otel_sdk_threads() -> Vec<String> {
    poll_otel_sdk_threads(<[String]>::is_empty).await
}

/// The OTel SDK threads once `done` holds for them, or at a 5 s deadline.
async fn poll_otel_sdk_threads(done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let threads = otel_sdk_threads();
        if done(&threads) || std::time::Instant::now() > deadline {
            return threads;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
