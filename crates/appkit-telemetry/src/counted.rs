//! Exporter wrappers that count failed exports, so shutdown can report a lost final flush.
//!
//! The SDK's batch processors log an export failure but still report a successful
//! shutdown; counting failures here lets [`TelemetryGuard::shutdown`](crate::TelemetryGuard::shutdown)
//! say that the last batch was lost.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::logs::Severity;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// Counts failed exports across every wrapped exporter.
#[derive(Clone, Debug, Default)]
pub(crate) struct FailureCounter(Arc<AtomicUsize>);

impl FailureCounter {
    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    fn observe(&self, result: OTelSdkResult) -> OTelSdkResult {
        if result.is_err() {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        result
    }
}

/// An exporter whose failed exports are counted in a [`FailureCounter`].
#[derive(Debug)]
pub(crate) struct Counted<E> {
    inner: E,
    failures: FailureCounter,
}

impl<E> Counted<E> {
    pub(crate) fn new(inner: E, failures: &FailureCounter) -> Self {
        Self {
            inner,
            failures: failures.clone(),
        }
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let export = self.inner.export(batch);
        async move { self.failures.observe(export.await) }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: LogExporter> LogExporter for Counted<E> {
    fn export(&self, batch: LogBatch<'_>) -> impl Future<Output = OTelSdkResult> + Send {
        let export = self.inner.export(batch);
        async move { self.failures.observe(export.await) }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn event_enabled(&self, level: Severity, target: &str, name: Option<&str>) -> bool {
        self.inner.event_enabled(level, target, name)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for Counted<E> {
    fn export(&self, metrics: &ResourceMetrics) -> impl Future<Output = OTelSdkResult> + Send {
        let export = self.inner.export(metrics);
        async move { self.failures.observe(export.await) }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}
