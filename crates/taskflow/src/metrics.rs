//! The engine's OpenTelemetry instruments. Labels never carry ids or user ids.

use opentelemetry::metrics::{Counter, Gauge, Histogram, UpDownCounter};

/// Instruments, built once from the global meter provider when the engine starts.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub(crate) submitted: Counter<u64>,
    pub(crate) completed: Counter<u64>,
    pub(crate) failed: Counter<u64>,
    pub(crate) retried: Counter<u64>,
    pub(crate) recovered: Counter<u64>,
    pub(crate) running: UpDownCounter<i64>,
    pub(crate) pending: Gauge<u64>,
    pub(crate) duration: Histogram<f64>,
    pub(crate) rejected: Counter<u64>,
    pub(crate) streams_active: UpDownCounter<i64>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let meter = opentelemetry::global::meter("taskflow");
        Self {
            submitted: meter.u64_counter("taskflow.tasks.submitted").build(),
            completed: meter.u64_counter("taskflow.tasks.completed").build(),
            failed: meter.u64_counter("taskflow.tasks.failed").build(),
            retried: meter.u64_counter("taskflow.tasks.retried").build(),
            recovered: meter.u64_counter("taskflow.tasks.recovered").build(),
            running: meter.i64_up_down_counter("taskflow.tasks.running").build(),
            pending: meter.u64_gauge("taskflow.tasks.pending").build(),
            duration: meter
                .f64_histogram("taskflow.task.duration")
                .with_unit("s")
                .build(),
            rejected: meter.u64_counter("taskflow.admission.rejected").build(),
            streams_active: meter.i64_up_down_counter("taskflow.streams.active").build(),
        }
    }
}
