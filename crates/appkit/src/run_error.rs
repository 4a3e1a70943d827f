//! Why an app could not start, or did not stop in time: never an HTTP answer.

use crate::config::{ConfigError, UntrustedIdentity};
use crate::error::BoxError;

/// An error of building, starting or stopping an [`App`](crate::App): what
/// [`AppBuilder::build_from_env`](crate::AppBuilder::build_from_env),
/// [`AppBuilder::build`](crate::AppBuilder::build) and [`App::run`](crate::App::run)
/// return. Request handlers answer with [`Error`](crate::Error) instead; the two never
/// mix, so a start-up failure cannot reach a client as a catch-all 500.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The configuration is invalid; the message names every bad variable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Production outside Databricks Apps with no decision on trusting the forwarded
    /// identity headers; the message says what to set.
    #[error(transparent)]
    UntrustedIdentity(#[from] UntrustedIdentity),
    /// A plugin name is not a valid path segment.
    #[error("invalid plugin name `{0}`: use 1 to 64 of a-z, 0-9, `-` and `_`")]
    InvalidPluginName(String),
    /// Two plugins share a name.
    #[error("duplicate plugin name `{0}`")]
    DuplicatePlugin(String),
    /// A plugin's setup failed.
    #[error("setup of plugin `{plugin}` failed")]
    Setup {
        /// The plugin.
        plugin: String,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// A core service could not start (telemetry, the Lakebase pool, the task store or
    /// engine, the signal handlers).
    #[error("starting {service} failed")]
    Start {
        /// The service.
        service: &'static str,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The shutdown deadline (`APPKIT_SHUTDOWN_TIMEOUT_MS`) passed while a step was still
    /// running; the steps after it did not run.
    #[error("shutdown deadline passed during step `{step}`")]
    ShutdownTimedOut {
        /// The step that hung.
        step: &'static str,
    },
}

impl RunError {
    /// A core service that failed to start.
    pub(crate) fn start(service: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Start {
            service,
            source: source.into(),
        }
    }
}
