//! Telemetry configuration, parsed from `RUST_LOG`, `APPKIT_ENV` and the standard `OTEL_*` variables.
//!
//! This is the only module of the crate that reads the environment.
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `RUST_LOG` | log/span filter (`tracing_subscriber::EnvFilter` syntax) | `info,opentelemetry=warn` |
//! | `APPKIT_ENV` | `production` → JSON logs, `development` → human-readable logs | `production` when `DATABRICKS_APP_NAME` is set, else `development` |
//! | `OTEL_SDK_DISABLED` | `true` (or `1`) turns every exporter off | `false` |
//! | `OTEL_SERVICE_NAME` | `service.name` resource attribute | see below |
//! | `OTEL_RESOURCE_ATTRIBUTES` | extra resource attributes, `key=value,key2=value2` (values percent-decoded) | none |
//! | `DATABRICKS_APP_NAME` | service name when `OTEL_SERVICE_NAME` and `service.name` are absent; JSON logs when `APPKIT_ENV` is unset | — |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | base URL for every signal (`/v1/{traces,metrics,logs}` appended for http/protobuf) | none: no export |
//! | `OTEL_EXPORTER_OTLP_{TRACES,METRICS,LOGS}_ENDPOINT` | full URL for one signal, used as-is | the base URL |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_EXPORTER_OTLP_{SIGNAL}_PROTOCOL` | `http/protobuf` or `grpc` | `http/protobuf` |
//! | `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_{SIGNAL}_HEADERS` | request headers, `key=value,…` (values percent-decoded; redacted in errors) | none |
//! | `OTEL_EXPORTER_OTLP_TIMEOUT` | per-export timeout, milliseconds | `10000` |
//! | `OTEL_{TRACES,METRICS,LOGS}_EXPORTER` | `otlp` or `none` (turns one signal off) | `otlp` |
//! | `OTEL_TRACES_SAMPLER` | `parentbased_always_on`, `parentbased_always_off`, `parentbased_traceidratio`, `always_on`, `always_off`, `traceidratio` | `parentbased_always_on` |
//! | `OTEL_TRACES_SAMPLER_ARG` | ratio in `[0, 1]` for the `*traceidratio` samplers | `1.0` |
//! | `OTEL_METRIC_EXPORT_INTERVAL` | metric export interval, milliseconds | `60000` |
//! | `OTEL_BSP_SCHEDULE_DELAY` | span batch delay, milliseconds | `5000` |
//! | `OTEL_BLRP_SCHEDULE_DELAY` | log-record batch delay, milliseconds | `1000` |
//!
//! The service name is `OTEL_SERVICE_NAME`, else `service.name` from
//! `OTEL_RESOURCE_ATTRIBUTES`, else `DATABRICKS_APP_NAME`, else the executable's file name.
//! A signal is exported only when its own endpoint or the base endpoint is set; with no
//! endpoint at all nothing is exported and no exporter thread is started.
//!
//! Values follow [`appkit_env`]'s rules, as every AppKit variable does: empty counts as
//! unset, booleans are `true`/`false` (any case) or `1`/`0`, durations whole milliseconds,
//! and every bad variable is reported at once.

use std::fmt;
use std::time::Duration;

use appkit_env::{Env, Shown};

/// Default log filter when `RUST_LOG` is unset (the OTel SDK's own chatter only from warn up).
pub const DEFAULT_LOG_FILTER: &str = "info,opentelemetry=warn";
/// Default per-export timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`).
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default metric export interval (`OTEL_METRIC_EXPORT_INTERVAL`).
pub const DEFAULT_METRIC_EXPORT_INTERVAL: Duration = Duration::from_secs(60);
/// Default delay between span batch exports (`OTEL_BSP_SCHEDULE_DELAY`).
pub const DEFAULT_TRACES_BATCH_DELAY: Duration = Duration::from_secs(5);
/// Default delay between log-record batch exports (`OTEL_BLRP_SCHEDULE_DELAY`).
pub const DEFAULT_LOGS_BATCH_DELAY: Duration = Duration::from_secs(1);
/// Default bound on [`TelemetryGuard::shutdown`](crate::TelemetryGuard::shutdown).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

const SIGNALS: [(&str, &str); 3] = [
    ("TRACES", "/v1/traces"),
    ("METRICS", "/v1/metrics"),
    ("LOGS", "/v1/logs"),
];

/// Everything [`init`](crate::init) needs; build it with [`TelemetryConfig::from_env`] or
/// [`TelemetryConfig::new`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use appkit_telemetry::TelemetryConfig;
/// use appkit_telemetry::config::{LogFormat, OtlpConfig, Protocol};
///
/// let config = TelemetryConfig::new("my-app")
///     .with_log_format(LogFormat::Json)
///     .with_otlp(OtlpConfig::new("http://127.0.0.1:4318", Protocol::HttpProtobuf))
///     .with_shutdown_timeout(Duration::from_secs(3));
/// assert!(config.otlp.is_some());
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct TelemetryConfig {
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Extra resource attributes (from `OTEL_RESOURCE_ATTRIBUTES`), in order.
    pub resource_attributes: Vec<(String, String)>,
    /// How log lines are written to stdout.
    pub log_format: LogFormat,
    /// The `RUST_LOG` filter; it applies to logs and spans alike. Default [`DEFAULT_LOG_FILTER`].
    pub log_filter: String,
    /// The trace sampler. Default [`Sampler::ParentBasedAlwaysOn`].
    pub sampler: Sampler,
    /// OTLP export; `None` means nothing is exported and no exporter thread runs.
    pub otlp: Option<OtlpConfig>,
    /// Bound on the whole of [`TelemetryGuard::shutdown`](crate::TelemetryGuard::shutdown).
    /// Default [`DEFAULT_SHUTDOWN_TIMEOUT`].
    pub shutdown_timeout: Duration,
}

/// The stdout log format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event, coloured when stdout is a terminal (development).
    #[default]
    Pretty,
    /// One JSON object per line (production; `APPKIT_ENV=production`).
    Json,
}

/// The OTLP wire protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Protobuf over HTTP (`http/protobuf`), sent with a blocking client from the exporter thread.
    #[default]
    HttpProtobuf,
    /// gRPC (`grpc`); [`init`](crate::init) must then run inside a Tokio runtime.
    Grpc,
}

/// The trace sampler, as named by `OTEL_TRACES_SAMPLER`.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Sampler {
    /// Sample everything.
    AlwaysOn,
    /// Sample nothing.
    AlwaysOff,
    /// Sample this fraction of traces, by trace id.
    TraceIdRatio(f64),
    /// Follow the parent's decision; sample every root.
    #[default]
    ParentBasedAlwaysOn,
    /// Follow the parent's decision; sample no root.
    ParentBasedAlwaysOff,
    /// Follow the parent's decision; sample this fraction of roots.
    ParentBasedTraceIdRatio(f64),
}

/// Where and how the three signals are exported.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct OtlpConfig {
    /// Span export; `None` turns traces off.
    pub traces: Option<SignalExport>,
    /// Metric export; `None` turns metrics off.
    pub metrics: Option<SignalExport>,
    /// Log-record export; `None` turns OTLP logs off (stdout logs are unaffected).
    pub logs: Option<SignalExport>,
    /// Per-export timeout. Default [`DEFAULT_EXPORT_TIMEOUT`].
    pub timeout: Duration,
    /// Metric export interval. Default [`DEFAULT_METRIC_EXPORT_INTERVAL`].
    pub metric_export_interval: Duration,
    /// Delay between span batch exports. Default [`DEFAULT_TRACES_BATCH_DELAY`].
    pub traces_batch_delay: Duration,
    /// Delay between log-record batch exports. Default [`DEFAULT_LOGS_BATCH_DELAY`].
    pub logs_batch_delay: Duration,
}

/// The destination of one signal.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignalExport {
    /// Full URL: for http/protobuf including the `/v1/…` path, for gRPC the collector address.
    pub endpoint: String,
    /// Wire protocol.
    pub protocol: Protocol,
    /// Extra request headers (often credentials; never printed by `Debug`).
    pub headers: Vec<(String, String)>,
}

impl fmt::Debug for SignalExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("SignalExport")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("headers", &header_names)
            .finish()
    }
}

impl TelemetryConfig {
    /// A configuration with the given service name, human-readable logs and no export.
    pub fn new(service_name: impl Into<String>) -> Self {
        Self {
            service_name: service_name.into(),
            resource_attributes: Vec::new(),
            log_format: LogFormat::default(),
            log_filter: DEFAULT_LOG_FILTER.to_owned(),
            sampler: Sampler::default(),
            otlp: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }

    /// Reads the configuration from the environment (see the [module docs](self)).
    ///
    /// # Errors
    ///
    /// Returns one [`ConfigError`] listing every malformed variable, with its value
    /// (redacted for headers) and the expected form.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut env = Env::process();
        let config = Self::read(&mut env);
        env.finish(config)
    }

    /// Parses the configuration from any variable lookup (a variable's value, or `None`
    /// if unset); [`from_env`](Self::from_env) looks in the process environment.
    ///
    /// # Errors
    ///
    /// As for [`from_env`](Self::from_env).
    ///
    /// # Examples
    ///
    /// ```
    /// let err = appkit_telemetry::TelemetryConfig::from_lookup(|name| {
    ///     (name == "OTEL_TRACES_SAMPLER").then(|| "sometimes".to_owned())
    /// })
    /// .unwrap_err();
    /// assert!(err.to_string().contains("OTEL_TRACES_SAMPLER"));
    /// ```
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut env = Env::new(get);
        let config = Self::read(&mut env);
        env.finish(config)
    }

    /// Reads the configuration through `env`, which records every problem (so a host can
    /// read its own variables through the same [`Env`] and report all problems at once).
    /// Where a variable is bad the configuration holds its default.
    pub fn read(env: &mut Env<'_>) -> Self {
        Parser { env }.config()
    }

    /// Sets the stdout log format.
    #[must_use]
    pub fn with_log_format(mut self, format: LogFormat) -> Self {
        self.log_format = format;
        self
    }

    /// Sets the log filter (`RUST_LOG` syntax).
    #[must_use]
    pub fn with_log_filter(mut self, filter: impl Into<String>) -> Self {
        self.log_filter = filter.into();
        self
    }

    /// Sets the trace sampler.
    #[must_use]
    pub fn with_sampler(mut self, sampler: Sampler) -> Self {
        self.sampler = sampler;
        self
    }

    /// Turns OTLP export on with these settings.
    #[must_use]
    pub fn with_otlp(mut self, otlp: OtlpConfig) -> Self {
        self.otlp = Some(otlp);
        self
    }

    /// Sets the bound on [`TelemetryGuard::shutdown`](crate::TelemetryGuard::shutdown).
    #[must_use]
    pub fn with_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }
}

impl OtlpConfig {
    /// Exports all three signals to one collector with default intervals.
    ///
    /// For [`Protocol::HttpProtobuf`] `endpoint` is the base URL and `/v1/traces`,
    /// `/v1/metrics`, `/v1/logs` are appended; for [`Protocol::Grpc`] it is used as-is.
    pub fn new(endpoint: impl Into<String>, protocol: Protocol) -> Self {
        let base = endpoint.into();
        let signal = |path: &str| {
            Some(SignalExport {
                endpoint: signal_url(&base, path, protocol),
                protocol,
                headers: Vec::new(),
            })
        };
        Self {
            traces: signal("/v1/traces"),
            metrics: signal("/v1/metrics"),
            logs: signal("/v1/logs"),
            timeout: DEFAULT_EXPORT_TIMEOUT,
            metric_export_interval: DEFAULT_METRIC_EXPORT_INTERVAL,
            traces_batch_delay: DEFAULT_TRACES_BATCH_DELAY,
            logs_batch_delay: DEFAULT_LOGS_BATCH_DELAY,
        }
    }

    /// Sets the per-export timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the metric export interval.
    #[must_use]
    pub fn with_metric_export_interval(mut self, interval: Duration) -> Self {
        self.metric_export_interval = interval;
        self
    }

    /// Sets the span and log-record batch delays to the same value.
    #[must_use]
    pub fn with_batch_delay(mut self, delay: Duration) -> Self {
        self.traces_batch_delay = delay;
        self.logs_batch_delay = delay;
        self
    }

    /// Adds a request header to every signal.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let (name, value) = (name.into(), value.into());
        for signal in [&mut self.traces, &mut self.metrics, &mut self.logs]
            .into_iter()
            .flatten()
        {
            signal.headers.push((name.clone(), value.clone()));
        }
        self
    }

    /// Whether at least one signal is exported.
    pub(crate) fn any_signal(&self) -> bool {
        self.traces.is_some() || self.metrics.is_some() || self.logs.is_some()
    }
}

fn signal_url(base: &str, path: &str, protocol: Protocol) -> String {
    match protocol {
        Protocol::Grpc => base.to_owned(),
        Protocol::HttpProtobuf => format!("{}{path}", base.trim_end_matches('/')),
    }
}

/// Every malformed variable found while reading the telemetry configuration (the
/// [`appkit_env`] report: each names its variable, value, secrets redacted, and the
/// expected form).
pub use appkit_env::Problems as ConfigError;

/// One malformed variable of a [`ConfigError`].
pub use appkit_env::Problem as ConfigProblem;

/// Reads the variables through an [`Env`], which collects the problems.
struct Parser<'e, 'a> {
    env: &'e mut Env<'a>,
}

impl Parser<'_, '_> {
    fn config(&mut self) -> TelemetryConfig {
        let resource_attributes = self
            .env
            .key_values("OTEL_RESOURCE_ATTRIBUTES", Shown::Plain)
            .unwrap_or_default();
        let service_name = self.service_name(&resource_attributes);
        TelemetryConfig {
            service_name,
            resource_attributes,
            log_format: self.log_format(),
            log_filter: self.log_filter(),
            sampler: self.sampler(),
            otlp: self.otlp(),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }

    fn service_name(&mut self, resource_attributes: &[(String, String)]) -> String {
        self.env
            .string("OTEL_SERVICE_NAME")
            .or_else(|| {
                resource_attributes
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .or_else(|| self.env.string("DATABRICKS_APP_NAME"))
            .unwrap_or_else(binary_name)
    }

    fn log_format(&mut self) -> LogFormat {
        let choices = [
            ("development", LogFormat::Pretty),
            ("production", LogFormat::Json),
        ];
        match self.env.one_of("APPKIT_ENV", &choices) {
            Some(format) => format,
            // Unset: production on Databricks Apps (as the host decides), else development.
            None if !self.env.is_set("APPKIT_ENV") && self.env.is_set("DATABRICKS_APP_NAME") => {
                LogFormat::Json
            }
            None => LogFormat::Pretty,
        }
    }

    fn log_filter(&mut self) -> String {
        self.env
            .parse("RUST_LOG", |filter| {
                match tracing_subscriber::EnvFilter::builder().parse(filter) {
                    Ok(_) => Ok(filter.to_owned()),
                    Err(e) => Err(format!(
                        "comma-separated `target=level` directives, e.g. `info,taskflow=debug` ({e})"
                    )),
                }
            })
            .unwrap_or_else(|| DEFAULT_LOG_FILTER.to_owned())
    }

    fn sampler(&mut self) -> Sampler {
        #[derive(Clone, Copy)]
        enum Kind {
            On,
            Off,
            Ratio,
            ParentOn,
            ParentOff,
            ParentRatio,
        }
        let choices = [
            ("parentbased_always_on", Kind::ParentOn),
            ("parentbased_always_off", Kind::ParentOff),
            ("parentbased_traceidratio", Kind::ParentRatio),
            ("always_on", Kind::On),
            ("always_off", Kind::Off),
            ("traceidratio", Kind::Ratio),
        ];
        match self.env.one_of("OTEL_TRACES_SAMPLER", &choices) {
            None => Sampler::default(),
            Some(Kind::On) => Sampler::AlwaysOn,
            Some(Kind::Off) => Sampler::AlwaysOff,
            Some(Kind::Ratio) => Sampler::TraceIdRatio(self.sampler_ratio()),
            Some(Kind::ParentOn) => Sampler::ParentBasedAlwaysOn,
            Some(Kind::ParentOff) => Sampler::ParentBasedAlwaysOff,
            Some(Kind::ParentRatio) => Sampler::ParentBasedTraceIdRatio(self.sampler_ratio()),
        }
    }

    fn sampler_ratio(&mut self) -> f64 {
        self.env
            .parse("OTEL_TRACES_SAMPLER_ARG", |arg| match arg.parse::<f64>() {
                Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
                _ => Err("a number from 0 to 1, e.g. `0.25`".to_owned()),
            })
            .unwrap_or(1.0)
    }

    fn otlp(&mut self) -> Option<OtlpConfig> {
        let disabled = self.env.bool("OTEL_SDK_DISABLED").unwrap_or(false);
        let base = self.endpoint("OTEL_EXPORTER_OTLP_ENDPOINT");
        let protocol = self
            .protocol("OTEL_EXPORTER_OTLP_PROTOCOL")
            .unwrap_or_default();
        let headers = self.headers("OTEL_EXPORTER_OTLP_HEADERS");
        let config = OtlpConfig {
            traces: self.signal(0, base.as_deref(), protocol, &headers),
            metrics: self.signal(1, base.as_deref(), protocol, &headers),
            logs: self.signal(2, base.as_deref(), protocol, &headers),
            timeout: self.millis("OTEL_EXPORTER_OTLP_TIMEOUT", DEFAULT_EXPORT_TIMEOUT),
            metric_export_interval: self.millis(
                "OTEL_METRIC_EXPORT_INTERVAL",
                DEFAULT_METRIC_EXPORT_INTERVAL,
            ),
            traces_batch_delay: self.millis("OTEL_BSP_SCHEDULE_DELAY", DEFAULT_TRACES_BATCH_DELAY),
            logs_batch_delay: self.millis("OTEL_BLRP_SCHEDULE_DELAY", DEFAULT_LOGS_BATCH_DELAY),
        };
        (!disabled && config.any_signal()).then_some(config)
    }

    /// One signal's export, from its own variables falling back to the general ones.
    fn signal(
        &mut self,
        index: usize,
        base: Option<&str>,
        protocol: Protocol,
        headers: &[(String, String)],
    ) -> Option<SignalExport> {
        let (signal, path) = SIGNALS[index];
        let vars = signal_vars(signal);
        let enabled = self
            .env
            .one_of(vars.exporter, &[("otlp", true), ("none", false)])
            .unwrap_or(true);
        let own_endpoint = self.endpoint(vars.endpoint);
        let protocol = self.protocol(vars.protocol).unwrap_or(protocol);
        let mut own_headers = self.headers(vars.headers);
        let endpoint = match (own_endpoint, base) {
            (Some(own), _) => own,
            (None, Some(base)) => signal_url(base, path, protocol),
            (None, None) => return None,
        };
        if own_headers.is_empty() {
            own_headers = headers.to_vec();
        }
        enabled.then_some(SignalExport {
            endpoint,
            protocol,
            headers: own_headers,
        })
    }

    /// An http(s) URL, kept as written (a gRPC endpoint is used as-is).
    fn endpoint(&mut self, name: &'static str) -> Option<String> {
        self.env.parse_shown(name, Shown::Url, |value| {
            appkit_env::parse_url(value, &["http", "https"]).map(|_| value.to_owned())
        })
    }

    fn protocol(&mut self, name: &'static str) -> Option<Protocol> {
        self.env.one_of(
            name,
            &[
                ("http/protobuf", Protocol::HttpProtobuf),
                ("grpc", Protocol::Grpc),
            ],
        )
    }

    /// Request headers: often credentials, so redacted in problems.
    fn headers(&mut self, name: &'static str) -> Vec<(String, String)> {
        self.env.key_values(name, Shown::Secret).unwrap_or_default()
    }

    fn millis(&mut self, name: &'static str, default: Duration) -> Duration {
        self.env.millis(name, 0).unwrap_or(default)
    }
}

struct SignalVars {
    endpoint: &'static str,
    protocol: &'static str,
    headers: &'static str,
    exporter: &'static str,
}

fn signal_vars(signal: &str) -> SignalVars {
    match signal {
        "TRACES" => SignalVars {
            endpoint: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            protocol: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            headers: "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            exporter: "OTEL_TRACES_EXPORTER",
        },
        "METRICS" => SignalVars {
            endpoint: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            protocol: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
            headers: "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
            exporter: "OTEL_METRICS_EXPORTER",
        },
        _ => SignalVars {
            endpoint: "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            protocol: "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
            headers: "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
            exporter: "OTEL_LOGS_EXPORTER",
        },
    }
}

/// The executable's file name, the last-resort service name.
fn binary_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|path| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown_service".to_owned())
}

#[cfg(test)]
mod tests;
