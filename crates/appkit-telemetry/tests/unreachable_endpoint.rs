//! An unreachable collector never blocks start-up or shutdown beyond its bound.

use std::time::{Duration, Instant};

use appkit_telemetry::config::{OtlpConfig, Protocol};
use appkit_telemetry::{Error, TelemetryConfig};

/// A loopback port with nothing listening: bound, then released.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("local address").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_within_its_bound_when_the_collector_is_down() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let config = TelemetryConfig::new("unreachable")
        .with_shutdown_timeout(Duration::from_secs(5))
        .with_otlp(
            OtlpConfig::new(endpoint, Protocol::HttpProtobuf)
                .with_timeout(Duration::from_secs(2))
                .with_batch_delay(Duration::from_secs(3600))
                .with_metric_export_interval(Duration::from_secs(3600)),
        );
    let guard = appkit_telemetry::init(config).expect("init succeeds without a collector");
    assert!(guard.exporting());

    for i in 0..3 {
        tracing::info_span!("test.work", i).in_scope(|| tracing::info!(i, "working"));
    }
    opentelemetry::global::meter("taskflow")
        .u64_counter("test.work.done")
        .build()
        .add(3, &[]);

    let started = Instant::now();
    let outcome = guard.shutdown().await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(10),
        "shutdown took {elapsed:?}"
    );
    assert!(
        matches!(
            outcome,
            Err(Error::ShutdownFailed { .. } | Error::ShutdownTimedOut { .. })
        ),
        "export failures are reported, not hidden: {outcome:?}"
    );

    // The process carries on: logging and spans still work, and shutdown stays a no-op
    // returning the same outcome.
    tracing::info_span!("after.shutdown").in_scope(|| tracing::warn!("still logging"));
    let again = guard.shutdown().await;
    assert_eq!(format!("{again:?}"), format!("{outcome:?}"));
}
