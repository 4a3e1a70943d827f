//! Error types for telemetry set-up and shutdown.

use std::time::Duration;

use crate::config::ConfigError;

/// Result type of this crate, defaulting to [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from [`init`](crate::init) or [`TelemetryGuard::shutdown`](crate::TelemetryGuard::shutdown).
///
/// Set-up errors are fatal for the process: the caller should refuse to start.
/// Shutdown errors are informational: the telemetry that could not be exported is lost,
/// but nothing else is affected, so the shutdown sequence goes on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration was rejected; the source lists every problem.
    #[error("invalid telemetry configuration")]
    Config(#[from] ConfigError),

    /// The `RUST_LOG`-style log filter does not parse.
    #[error("invalid log filter {filter:?}")]
    InvalidLogFilter {
        /// The filter that was given.
        filter: String,
        /// Why it does not parse.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },

    /// An OTLP exporter could not be built (bad endpoint, TLS set-up, …).
    #[error("failed to build the OTLP {signal} exporter")]
    ExporterBuild {
        /// The signal whose exporter failed: `traces`, `metrics` or `logs`.
        signal: &'static str,
        /// What the exporter builder reported.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },

    /// gRPC export was configured but [`init`](crate::init) ran outside a Tokio runtime.
    #[error("OTLP gRPC export needs a Tokio runtime: call init inside one")]
    RuntimeRequired,

    /// A global `tracing` subscriber was already installed in this process.
    ///
    /// [`init`](crate::init) must be called once per process, before anything else
    /// installs a subscriber.
    #[error("a global tracing subscriber is already installed")]
    SubscriberAlreadySet(#[source] tracing_subscriber::util::TryInitError),

    /// Shutdown did not finish within its bound; unexported telemetry is lost.
    #[error("telemetry shutdown did not finish within {timeout:?}")]
    ShutdownTimedOut {
        /// The bound that was exceeded.
        timeout: Duration,
    },

    /// One or more providers reported a failure while flushing or shutting down.
    ///
    /// Typically the OTLP endpoint was unreachable and the final export was lost.
    #[error("telemetry shutdown reported failures: {failures}")]
    ShutdownFailed {
        /// One `signal: reason` entry per failing provider, separated by `; `.
        failures: String,
    },
}
