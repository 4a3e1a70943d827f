//! A real OTLP/HTTP receiver on loopback that decodes the protobuf the exporter sends
//! (adapted from `crates/appkit-telemetry/tests/common/mod.rs`).
//!
//! Only `tests/telemetry.rs` uses it; lints are relaxed by `common/mod.rs`.

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

/// One span as the receiver decoded it.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub kind: i32,
    pub attributes: Vec<(String, String)>,
    /// `(trace_id, span_id)` of each link.
    pub links: Vec<(String, String)>,
    pub service_name: Option<String>,
}

impl ReceivedSpan {
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
    pub body: String,
    pub trace_id: String,
    pub span_id: String,
}

/// Everything received so far.
#[derive(Clone, Debug, Default)]
pub struct Received {
    pub trace_requests: usize,
    pub metric_requests: usize,
    pub log_requests: usize,
    pub decode_errors: usize,
    pub spans: Vec<ReceivedSpan>,
    pub metric_names: Vec<String>,
    pub logs: Vec<ReceivedLog>,
}

impl Received {
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

#[derive(Default)]
struct Shared {
    received: Mutex<Received>,
}

/// A running receiver; `endpoint` is its base URL (`http://127.0.0.1:PORT`).
pub struct Receiver {
    pub endpoint: String,
    shared: Arc<Shared>,
}

impl Receiver {
    /// Binds 127.0.0.1:0 and serves `/v1/traces`, `/v1/metrics`, `/v1/logs`.
    pub async fn start() -> Receiver {
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .route("/v1/traces", post(traces))
            .route("/v1/metrics", post(metrics))
            .route("/v1/logs", post(logs))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { endpoint, shared }
    }

    /// A copy of everything received so far.
    pub fn snapshot(&self) -> Received {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits until what was received satisfies `pred`, polling under `DEADLINE`.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Received) -> bool) -> Received {
        let deadline = tokio::time::Instant::now() + super::DEADLINE;
        loop {
            let got = self.snapshot();
            if pred(&got) {
                return got;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "the receiver never got {what} within {:?}: {got:#?}",
                    super::DEADLINE
                );
            }
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
    let mut received = shared.received.lock().unwrap();
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
    let mut received = shared.received.lock().unwrap();
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
    let mut received = shared.received.lock().unwrap();
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
