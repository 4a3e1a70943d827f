//! Without an endpoint nothing is exported, no exporter thread runs, and the helpers are harmless.

use appkit_testkit::otlp as common;

use appkit_telemetry::propagation::inject_context;
use appkit_telemetry::{Error, TelemetryConfig, http_server_span, record_http_status};
use http::{HeaderMap, Method, StatusCode};

#[tokio::test]
async fn without_an_endpoint_no_exporter_is_installed() {
    let guard = appkit_telemetry::init(TelemetryConfig::new("no-export")).expect("init");
    assert!(!guard.exporting());
    assert!(
        common::otel_sdk_threads().is_empty(),
        "{:?}",
        common::otel_sdk_threads()
    );

    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let span = http_server_span(&Method::POST, None, &headers);
    span.in_scope(|| tracing::info!("handled"));
    record_http_status(&span, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        inject_context(&span).is_empty(),
        "no OTel layer, no context"
    );
    opentelemetry::global::meter("taskflow")
        .u64_counter("test.noop")
        .build()
        .add(1, &[]);

    guard.shutdown().await.expect("nothing to flush");
    guard.shutdown().await.expect("still a no-op");
    appkit_telemetry::TelemetryGuard::disabled()
        .shutdown()
        .await
        .expect("a disabled guard shuts down at once");

    // The global subscriber can be installed once per process: a second init is an error.
    let second = appkit_telemetry::init(TelemetryConfig::new("again"));
    assert!(
        matches!(second, Err(Error::SubscriberAlreadySet(_))),
        "{second:?}"
    );
}
