//! Tracing and OpenTelemetry for appkit: one [`init`], one flush-once [`TelemetryGuard`].
//!
//! - **Logs** go to stdout through a `tracing-subscriber` fmt layer: JSON in production,
//!   human-readable in development, filtered by `RUST_LOG`.
//! - **OTLP export** of traces, metrics and logs starts when `OTEL_EXPORTER_OTLP_ENDPOINT`
//!   (or a per-signal endpoint) is set: http/protobuf by default, gRPC with
//!   `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`. Without an endpoint nothing is exported and no
//!   exporter thread runs. See [`config`] for every variable.
//! - **HTTP spans** are named by the matched route and continue the caller's W3C trace:
//!   see [`http`]. Work started by a request can carry its trace context: see
//!   [`propagation`].
//! - **Field names** are catalogued in [`fields`].
//!
//! # Order of start-up and shutdown
//!
//! Call [`init`] first, before the task engine starts (its instruments come from the
//! global meter provider that `init` installs). Call [`TelemetryGuard::shutdown`] last,
//! after everything that emits telemetry has stopped; it flushes every provider exactly
//! once, off the async worker threads, within a bound.
//!
//! # Examples
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let guard = appkit_telemetry::init(appkit_telemetry::TelemetryConfig::from_env()?)?;
//! tracing::info!("listening");
//! // … run the app; on shutdown, as the last step:
//! if let Err(e) = guard.shutdown().await {
//!     eprintln!("telemetry: {e}"); // already logged; never fatal
//! }
//! # Ok(())
//! # }
//! ```

pub mod config;
mod counted;
mod error;
pub mod fields;
pub mod http;
mod init;
pub mod propagation;

pub use config::{ConfigError, TelemetryConfig};
pub use error::{Error, Result};
pub use http::{http_server_span, record_http_status};
pub use init::{TelemetryGuard, init};

/// This crate's README, compiled as doc tests so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
