//! `shutdown` flushes exactly once: concurrent and later calls share the first outcome.

use appkit_testkit::otlp as common;

use std::collections::HashMap;
use std::time::Duration;

use appkit_telemetry::TelemetryConfig;
use appkit_telemetry::config::{OtlpConfig, Protocol};

const NEVER: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_shutdown_exports_once_and_later_calls_are_no_ops() {
    let receiver = common::Receiver::start().await;
    let config = TelemetryConfig::new("shutdown-once").with_otlp(
        OtlpConfig::new(&receiver.endpoint, Protocol::HttpProtobuf)
            .with_timeout(Duration::from_secs(2))
            .with_batch_delay(NEVER)
            .with_metric_export_interval(NEVER),
    );
    let guard = appkit_telemetry::init(config).expect("init");

    for i in 0..5 {
        tracing::info_span!("test.work", i).in_scope(|| tracing::info!(i, "working"));
    }
    opentelemetry::global::meter("taskflow")
        .u64_counter("test.work.done")
        .build()
        .add(5, &[]);

    let other = guard.clone();
    let (first, concurrent) = tokio::join!(guard.shutdown(), other.shutdown());
    first.expect("first shutdown");
    concurrent.expect("concurrent shutdown shares the outcome");
    let after_first = receiver.snapshot();

    guard
        .shutdown()
        .await
        .expect("later shutdown returns the first outcome");
    other.shutdown().await.expect("on every clone");
    let got = receiver.snapshot();

    assert_eq!(got.trace_requests, 1, "one final span export");
    assert_eq!(got.metric_requests, 1, "one final metric export");
    assert_eq!(got.log_requests, 1, "one final log export");
    assert_eq!(got.spans.len(), after_first.spans.len());
    assert_eq!(got.logs.len(), after_first.logs.len());

    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for span in &got.spans {
        *by_id.entry(span.span_id.as_str()).or_default() += 1;
    }
    assert_eq!(by_id.len(), 5, "{:?}", got.spans);
    assert!(
        by_id.values().all(|&n| n == 1),
        "duplicate spans: {by_id:?}"
    );
    assert_eq!(got.logs.iter().filter(|l| l.body == "working").count(), 5);
}
