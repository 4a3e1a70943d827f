//! gRPC export: init inside the runtime, bounded shutdown when the collector is down.

use std::time::{Duration, Instant};

use appkit_telemetry::TelemetryConfig;
use appkit_telemetry::config::{OtlpConfig, Protocol};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_shutdown_returns_within_its_bound_when_the_collector_is_down() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = TelemetryConfig::new("unreachable-grpc")
        .with_shutdown_timeout(Duration::from_secs(5))
        .with_otlp(
            OtlpConfig::new(format!("http://127.0.0.1:{port}"), Protocol::Grpc)
                .with_timeout(Duration::from_secs(2))
                .with_batch_delay(Duration::from_secs(3600))
                .with_metric_export_interval(Duration::from_secs(3600)),
        );
    let guard = appkit_telemetry::init(config).expect("init succeeds without a collector");
    assert!(guard.exporting());
    tracing::info_span!("test.work").in_scope(|| tracing::info!("working"));

    let started = Instant::now();
    let outcome = guard.shutdown().await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(10),
        "shutdown took {elapsed:?}"
    );
    assert!(outcome.is_err(), "the lost export is reported: {outcome:?}");
}
