//! A collector that accepts connections but never answers cannot hold shutdown past its bound.

use std::time::{Duration, Instant};

use appkit_telemetry::TelemetryConfig;
use appkit_telemetry::config::{OtlpConfig, Protocol};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_at_its_bound_when_the_collector_hangs() {
    // Accept every connection and hold it open without reading or answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let endpoint = format!("http://{}", listener.local_addr().expect("local address"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });

    let mut otlp = OtlpConfig::new(endpoint, Protocol::HttpProtobuf)
        .with_timeout(Duration::from_secs(30))
        .with_batch_delay(Duration::from_secs(3600));
    otlp.metrics = None;
    otlp.logs = None;
    let config = TelemetryConfig::new("hung-collector")
        .with_shutdown_timeout(Duration::from_secs(1))
        .with_otlp(otlp);
    let guard = appkit_telemetry::init(config).expect("init");
    tracing::info_span!("test.work").in_scope(|| tracing::info!("working"));

    let started = Instant::now();
    let outcome = guard.shutdown().await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "a 30 s export must not hold a 1 s shutdown: took {elapsed:?}"
    );
    assert!(outcome.is_err(), "the lost flush is reported: {outcome:?}");
}
