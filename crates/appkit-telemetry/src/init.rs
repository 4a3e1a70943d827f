//! The one-call set-up ([`init`]) and the guard that flushes everything once ([`TelemetryGuard`]).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{BatchLogProcessor, SdkLoggerProvider};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
use tokio::sync::watch;
use tracing_subscriber::filter::{EnvFilter, dynamic_filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, fmt};

use crate::config::{LogFormat, OtlpConfig, Protocol, Sampler, SignalExport, TelemetryConfig};
use crate::counted::{Counted, FailureCounter};
use crate::error::{Error, Result};

/// Installs the global `tracing` subscriber, the OTel providers and the W3C propagator.
///
/// Call it once, first thing in `main` and in particular **before the task engine
/// starts**: `taskflow` creates its instruments from `opentelemetry::global::meter`
/// when it starts, and instruments created before a meter provider is installed stay
/// no-ops forever.
///
/// What it installs:
/// - a stdout `fmt` layer, JSON or human-readable ([`LogFormat`]), filtered by
///   [`TelemetryConfig::log_filter`] (the filter applies to spans and OTLP export too);
/// - the W3C `traceparent` propagator as the global text-map propagator (always);
/// - when [`TelemetryConfig::otlp`] is set, for each configured signal: a batch span
///   processor + `tracing-opentelemetry` layer (traces), a periodic metric reader
///   installed as the global meter provider (metrics), a batch log processor fed by the
///   `tracing` events (logs). Each runs on its own thread. Without `otlp` no exporter is
///   built and no thread is started.
///
/// The exporters' own diagnostics (targets `opentelemetry*`, `reqwest`, `hyper*`, `h2`,
/// `tonic`, `tower`) are logged to stdout but never exported, so an unreachable collector
/// cannot feed itself.
///
/// # Errors
///
/// [`Error::InvalidLogFilter`] for a bad filter, [`Error::ExporterBuild`] when an exporter
/// cannot be built, [`Error::RuntimeRequired`] when gRPC export is configured outside a
/// Tokio runtime, and [`Error::SubscriberAlreadySet`] when a global subscriber exists
/// (nothing is installed then and the built exporters are dropped).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), appkit_telemetry::Error> {
/// let guard = appkit_telemetry::init(appkit_telemetry::TelemetryConfig::new("doc-example"))?;
/// tracing::info!("started");
/// assert!(!guard.exporting());
/// guard.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub fn init(config: TelemetryConfig) -> Result<TelemetryGuard> {
    let filter = EnvFilter::builder()
        .parse(&config.log_filter)
        .map_err(|source| Error::InvalidLogFilter {
            filter: config.log_filter.clone(),
            source,
        })?;
    let providers = match &config.otlp {
        Some(otlp) => Providers::build(otlp, &config, resource(&config))?,
        None => Providers::default(),
    };

    let fmt_layer = match config.log_format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .boxed(),
    };
    // Not cached per call site: once the guard shuts down, nothing more is handed to the
    // stopped providers (which would warn about every record emitted after shutdown).
    let trace_layer = providers.tracer.as_ref().map(|provider| {
        let closed = providers.closed.clone();
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("appkit"))
            .with_filter(dynamic_filter_fn(move |meta, _| {
                exportable(&closed, meta.target())
            }))
    });
    let log_layer = providers.logger.as_ref().map(|provider| {
        let closed = providers.closed.clone();
        OpenTelemetryTracingBridge::new(provider).with_filter(dynamic_filter_fn(move |meta, _| {
            exportable(&closed, meta.target())
        }))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(trace_layer)
        .with(log_layer)
        .try_init()
        .map_err(Error::SubscriberAlreadySet)?;

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if let Some(provider) = &providers.tracer {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    if let Some(provider) = &providers.meter {
        opentelemetry::global::set_meter_provider(provider.clone());
    }
    tracing::debug!(
        service.name = %config.service_name,
        traces = providers.tracer.is_some(),
        metrics = providers.meter.is_some(),
        logs = providers.logger.is_some(),
        "telemetry initialised"
    );
    Ok(TelemetryGuard::new(providers, config.shutdown_timeout))
}

/// Whether a span or event of `target` goes to the OTel layers: not after shutdown, and
/// never the exporters' own diagnostics.
fn exportable(closed: &AtomicBool, target: &str) -> bool {
    !closed.load(Ordering::Acquire) && !is_exporter_internal(target)
}

/// Targets of the exporters' own machinery, never exported (no feedback loop).
fn is_exporter_internal(target: &str) -> bool {
    const PREFIXES: [&str; 6] = ["opentelemetry", "reqwest", "hyper", "h2", "tonic", "tower"];
    PREFIXES.iter().any(|p| target.starts_with(p))
}

fn resource(config: &TelemetryConfig) -> Resource {
    Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attributes(
            config
                .resource_attributes
                .iter()
                .filter(|(k, _)| k != "service.name")
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .with_service_name(config.service_name.clone())
        .build()
}

/// The SDK providers of the exported signals; each is `None` when its signal is off.
#[derive(Clone, Debug, Default)]
struct Providers {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
    logger: Option<SdkLoggerProvider>,
    /// Failed exports of all three, counted to report a lost final flush.
    failures: FailureCounter,
    /// Set when the shutdown starts: `tracing` spans and events are no longer exported.
    closed: Arc<AtomicBool>,
}

impl Providers {
    fn build(otlp: &OtlpConfig, config: &TelemetryConfig, resource: Resource) -> Result<Self> {
        let needs_runtime = [&otlp.traces, &otlp.metrics, &otlp.logs]
            .into_iter()
            .flatten()
            .any(|s| s.protocol == Protocol::Grpc);
        if needs_runtime && tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::RuntimeRequired);
        }
        let failures = FailureCounter::default();
        Ok(Self {
            tracer: otlp
                .traces
                .as_ref()
                .map(|s| tracer_provider(s, otlp, config.sampler, resource.clone(), &failures))
                .transpose()?,
            meter: otlp
                .metrics
                .as_ref()
                .map(|s| meter_provider(s, otlp, resource.clone(), &failures))
                .transpose()?,
            logger: otlp
                .logs
                .as_ref()
                .map(|s| logger_provider(s, otlp, resource, &failures))
                .transpose()?,
            failures,
            closed: Arc::default(),
        })
    }

    fn any(&self) -> bool {
        self.tracer.is_some() || self.meter.is_some() || self.logger.is_some()
    }

    /// Flushes and shuts down every provider in parallel, each bounded by `timeout`.
    ///
    /// Blocking: run it off the async runtime's worker threads.
    fn shutdown_blocking(&self, timeout: Duration) -> Outcome {
        let failed_before = self.failures.get();
        let mut failures: Vec<String> = std::thread::scope(|scope| {
            let tracer = self
                .tracer
                .as_ref()
                .map(|p| scope.spawn(move || ("traces", p.shutdown_with_timeout(timeout))));
            let meter = self
                .meter
                .as_ref()
                .map(|p| scope.spawn(move || ("metrics", p.shutdown_with_timeout(timeout))));
            let logger = self
                .logger
                .as_ref()
                .map(|p| scope.spawn(move || ("logs", p.shutdown_with_timeout(timeout))));
            [tracer, meter, logger]
                .into_iter()
                .flatten()
                .filter_map(|handle| match handle.join() {
                    Ok((_, Ok(()))) => None,
                    Ok((signal, Err(e))) => Some(format!("{signal}: {e}")),
                    Err(_) => Some("a provider shutdown panicked".to_owned()),
                })
                .collect()
        });
        let lost = self.failures.get().saturating_sub(failed_before);
        if lost > 0 {
            failures.push(format!(
                "{lost} export(s) failed during the final flush (see the exporter's error logs)"
            ));
        }
        if failures.is_empty() {
            Outcome::Ok
        } else {
            Outcome::Failed(failures.join("; "))
        }
    }
}

fn headers_map(signal: &SignalExport) -> HashMap<String, String> {
    signal.headers.iter().cloned().collect()
}

fn grpc_metadata(signal: &SignalExport) -> opentelemetry_otlp::tonic_types::metadata::MetadataMap {
    let mut headers = http::HeaderMap::new();
    for (k, v) in &signal.headers {
        // Names and values were validated as `key=value` text; anything `http` still
        // rejects (e.g. a space in a name) is skipped rather than failing start-up.
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::try_from(k.as_str()),
            http::HeaderValue::try_from(v.as_str()),
        ) {
            headers.append(name, value);
        }
    }
    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers)
}

/// Builds one exporter of either protocol; `$builder` is e.g. `SpanExporter::builder()`.
macro_rules! build_exporter {
    ($builder:expr, $signal:expr, $otlp:expr, $name:literal) => {
        match $signal.protocol {
            Protocol::HttpProtobuf => $builder
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint($signal.endpoint.clone())
                .with_timeout($otlp.timeout)
                .with_headers(headers_map($signal))
                .build(),
            Protocol::Grpc => $builder
                .with_tonic()
                .with_endpoint($signal.endpoint.clone())
                .with_timeout($otlp.timeout)
                .with_metadata(grpc_metadata($signal))
                .build(),
        }
        .map_err(|source| Error::ExporterBuild {
            signal: $name,
            source,
        })
    };
}

fn tracer_provider(
    signal: &SignalExport,
    otlp: &OtlpConfig,
    sampler: Sampler,
    resource: Resource,
    failures: &FailureCounter,
) -> Result<SdkTracerProvider> {
    let exporter = build_exporter!(
        opentelemetry_otlp::SpanExporter::builder(),
        signal,
        otlp,
        "traces"
    )?;
    let batch = opentelemetry_sdk::trace::BatchConfigBuilder::default()
        .with_scheduled_delay(otlp.traces_batch_delay)
        .build();
    let processor = BatchSpanProcessor::builder(Counted::new(exporter, failures))
        .with_batch_config(batch)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sdk_sampler(sampler))
        .with_resource(resource)
        .build())
}

fn meter_provider(
    signal: &SignalExport,
    otlp: &OtlpConfig,
    resource: Resource,
    failures: &FailureCounter,
) -> Result<SdkMeterProvider> {
    let exporter = build_exporter!(
        opentelemetry_otlp::MetricExporter::builder(),
        signal,
        otlp,
        "metrics"
    )?;
    let reader = PeriodicReader::builder(Counted::new(exporter, failures))
        .with_interval(otlp.metric_export_interval)
        .build();
    Ok(SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build())
}

fn logger_provider(
    signal: &SignalExport,
    otlp: &OtlpConfig,
    resource: Resource,
    failures: &FailureCounter,
) -> Result<SdkLoggerProvider> {
    let exporter = build_exporter!(
        opentelemetry_otlp::LogExporter::builder(),
        signal,
        otlp,
        "logs"
    )?;
    let batch = opentelemetry_sdk::logs::BatchConfigBuilder::default()
        .with_scheduled_delay(otlp.logs_batch_delay)
        .build();
    let processor = BatchLogProcessor::builder(Counted::new(exporter, failures))
        .with_batch_config(batch)
        .build();
    Ok(SdkLoggerProvider::builder()
        .with_log_processor(processor)
        .with_resource(resource)
        .build())
}

fn sdk_sampler(sampler: Sampler) -> opentelemetry_sdk::trace::Sampler {
    use opentelemetry_sdk::trace::Sampler as S;
    match sampler {
        Sampler::AlwaysOn => S::AlwaysOn,
        Sampler::AlwaysOff => S::AlwaysOff,
        Sampler::TraceIdRatio(r) => S::TraceIdRatioBased(r),
        Sampler::ParentBasedAlwaysOn => S::ParentBased(Box::new(S::AlwaysOn)),
        Sampler::ParentBasedAlwaysOff => S::ParentBased(Box::new(S::AlwaysOff)),
        Sampler::ParentBasedTraceIdRatio(r) => S::ParentBased(Box::new(S::TraceIdRatioBased(r))),
    }
}

/// The result of the one shutdown, kept so that later calls return it again.
#[derive(Clone, Debug)]
enum Outcome {
    Ok,
    TimedOut(Duration),
    Failed(String),
}

impl Outcome {
    fn into_result(self) -> Result<()> {
        match self {
            Outcome::Ok => Ok(()),
            Outcome::TimedOut(timeout) => Err(Error::ShutdownTimedOut { timeout }),
            Outcome::Failed(failures) => Err(Error::ShutdownFailed { failures }),
        }
    }
}

/// The running shutdown: its deadline and where its outcome will appear.
#[derive(Debug)]
struct Started {
    deadline: tokio::time::Instant,
    outcome: watch::Receiver<Option<Outcome>>,
}

/// Owns the telemetry providers; [`shutdown`](Self::shutdown) flushes them exactly once.
///
/// Returned by [`init`]. Cheap to clone: clones share one shutdown. Keep one in the
/// host's shutdown coordinator and call [`shutdown`](Self::shutdown) as its last step,
/// after everything that may still emit spans or metrics has stopped.
///
/// Dropping the guard does **not** flush: the global providers stay installed for the
/// life of the process, and telemetry not yet exported when the process exits is lost.
#[derive(Clone, Debug)]
pub struct TelemetryGuard {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    providers: Providers,
    timeout: Duration,
    started: OnceLock<Started>,
    first_outcome: OnceLock<Outcome>,
}

impl TelemetryGuard {
    fn new(providers: Providers, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                providers,
                timeout,
                started: OnceLock::new(),
                first_outcome: OnceLock::new(),
            }),
        }
    }

    /// A guard that owns nothing, for hosts and tests that skip [`init`].
    ///
    /// Its [`shutdown`](Self::shutdown) returns `Ok(())` at once and
    /// [`exporting`](Self::exporting) is `false`.
    pub fn disabled() -> Self {
        Self::new(Providers::default(), Duration::ZERO)
    }

    /// Whether any OTLP exporter is installed (false when no endpoint was configured).
    pub fn exporting(&self) -> bool {
        self.inner.providers.any()
    }

    /// Flushes and shuts down every provider, once, bounded by the configured timeout.
    ///
    /// The first call starts the shutdown on a blocking thread (`spawn_blocking`: OTel
    /// provider shutdown blocks) and waits for it at most
    /// [`TelemetryConfig::shutdown_timeout`]. Calls made while it runs wait for the same
    /// outcome under the same deadline; calls after it finished return the first outcome
    /// at once and do nothing. The outcome is also logged once (debug on success, warn on
    /// failure), so callers need not log it again. Spans, metrics and log records produced
    /// after the shutdown are dropped; stdout logging keeps working.
    ///
    /// # Errors
    ///
    /// [`Error::ShutdownTimedOut`] when the bound passed (the blocking shutdown goes on in
    /// the background, itself bounded by the same timeout per provider), or
    /// [`Error::ShutdownFailed`] when a provider reported a failure, typically because the
    /// collector was unreachable and the final export was lost. Neither is fatal: the
    /// caller should carry on with its own shutdown.
    ///
    /// # Cancellation safety
    ///
    /// Cancel safe. Dropping the future does not stop the shutdown it started; a later
    /// call waits for that same shutdown under the original deadline.
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime.
    pub async fn shutdown(&self) -> Result<()> {
        if let Some(outcome) = self.inner.first_outcome.get() {
            return outcome.clone().into_result();
        }
        let started = self.inner.started.get_or_init(|| self.inner.start());
        let mut receiver = started.outcome.clone();
        let waited =
            tokio::time::timeout_at(started.deadline, receiver.wait_for(Option::is_some)).await;
        let outcome = match waited {
            Ok(Ok(outcome)) => outcome.clone().unwrap_or(Outcome::Ok),
            Ok(Err(_)) => Outcome::Failed("the shutdown thread ended without a result".into()),
            Err(_) => Outcome::TimedOut(self.inner.timeout),
        };
        if self.inner.first_outcome.set(outcome.clone()).is_ok() {
            log_outcome(&outcome);
        }
        self.inner
            .first_outcome
            .get()
            .cloned()
            .unwrap_or(outcome)
            .into_result()
    }
}

impl Inner {
    fn start(&self) -> Started {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let (sender, outcome) = watch::channel(None);
        self.providers.closed.store(true, Ordering::Release);
        if self.providers.any() {
            let providers = self.providers.clone();
            let timeout = self.timeout;
            tokio::task::spawn_blocking(move || {
                let _ = sender.send(Some(providers.shutdown_blocking(timeout)));
            });
        } else {
            let _ = sender.send(Some(Outcome::Ok));
        }
        Started { deadline, outcome }
    }
}

fn log_outcome(outcome: &Outcome) {
    match outcome {
        Outcome::Ok => tracing::debug!("telemetry flushed and shut down"),
        Outcome::TimedOut(timeout) => tracing::warn!(
            timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            "shutdown: telemetry flush timed out; unexported telemetry is lost"
        ),
        Outcome::Failed(failures) => tracing::warn!(
            failures = %failures,
            "shutdown: telemetry flush failed; unexported telemetry is lost"
        ),
    }
}
