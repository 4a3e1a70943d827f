//! appkit: a host for web apps that run long, durable work for browser users.
//!
//! An [`App`] mounts [`Plugin`]s (their routes under `/api/{name}`), gives each a
//! [`PluginContext`] with the durable task engine ([`taskflow`]), and turns one request
//! into a durable task whose events stream to the browser over SSE with
//! [`PluginContext::execute`]. One single-flight coordinator ([`shutdown`]) drains
//! streams, work, connections and services exactly once.
//!
//! - [`UserContext`]: the request's user from the platform proxy's headers (401 in
//!   production without one).
//! - [`Error`]: what handlers answer with: one JSON shape `{"error", "code"}`, the right
//!   statuses. Start-up and shutdown failures are a separate [`RunError`].
//! - [`TaskRequest`]: the user and the `Last-Event-ID` resume cursor, taken together by
//!   every call that streams a task, so no route can forget the cursor.
//! - [`task_routes`]: status, events, stop, resume and cancel of a task by key, with
//!   ownership checks.
//! - `/health`, `/ready`, and the built front end with an SPA fallback.
//! - Telemetry: [`App::run`] starts [`appkit_telemetry`] first (stdout logs; OTLP traces,
//!   metrics and logs when `OTEL_EXPORTER_OTLP_ENDPOINT` is set), traces every request
//!   with a span named by its matched route, and flushes it once as the last shutdown step.
//!
//! ```no_run
//! use appkit::{App, Plugin};
//!
//! struct Hello;
//! impl Plugin for Hello {
//!     fn name(&self) -> &str {
//!         "hello"
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), appkit::RunError> {
//!     App::builder().plugin(Hello).build_from_env()?.run().await
//! }
//! ```

mod app;
pub mod config;
mod error;
pub mod extract;
mod health;
mod layers;
mod plugin;
mod routes;
mod run_error;
mod server;
mod services;
pub mod shutdown;
mod static_files;
pub mod stream;
mod telemetry;

pub use app::{App, AppBuilder};
pub use appkit_lakebase as lakebase;
pub use appkit_lakebase::LakebasePool;
pub use appkit_telemetry;
pub use appkit_telemetry::TelemetryGuard;
pub use async_trait::async_trait;
pub use config::{Config, ConfigError, Environment, EnvironmentSource, UntrustedIdentity};
pub use error::{BoxError, Error, REDACTED_MESSAGE, Result};
pub use extract::{TaskRequest, UserContext};
pub use plugin::{ExecuteSettings, Plugin, PluginContext, SetupContext};
pub use routes::task_routes;
pub use run_error::RunError;
pub use shutdown::ShutdownHandle;
pub use stream::LastEventId;
pub use taskflow;

#[cfg(test)]
mod tests;

/// The README's code blocks, compiled as doc tests so the README cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

/// The getting-started guide's plugin, compiled as a doc test like the README's.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/getting-started.md")]
struct GettingStartedDoctests;

/// The crate's own README (the one crates.io shows), compiled as doc tests too.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;
