//! Telemetry in the host: the request span at the outermost layer, starting
//! [`appkit_telemetry`] first, and its flush as the last shutdown step.
//!
//! [`App::run`](crate::App::run) starts telemetry before any other core service (the
//! task engine's instruments come from the global meter provider it installs) unless the
//! app passed its own guard with [`AppBuilder::telemetry`](crate::AppBuilder::telemetry).
//! The shutdown coordinator flushes it once, after every other service has closed,
//! within the shutdown deadline; an export failure is logged and never fatal.

use std::time::Duration;

use appkit_telemetry::{TelemetryConfig, TelemetryGuard};
use axum::Router;
use axum::body::Body;
use axum::extract::MatchedPath;
use http::{Request, Response};
use tower_http::trace::TraceLayer;
use tracing::{Span, info, warn};

use crate::config::{Config, ConfigError};
use crate::run_error::RunError;

/// How an app gets its telemetry.
#[derive(Debug)]
pub(crate) enum Telemetry {
    /// Already running (the app's own guard), or off ([`TelemetryGuard::disabled`]).
    Ready(TelemetryGuard),
    /// Started by [`App::run`](crate::App::run), first, with this configuration.
    Init(Box<TelemetryConfig>),
}

impl Telemetry {
    /// Telemetry that is off: nothing installed, nothing flushed.
    pub(crate) fn off() -> Self {
        Self::Ready(TelemetryGuard::disabled())
    }

    /// Installs the subscriber and exporters (for [`Telemetry::Init`]) and returns the
    /// guard the shutdown coordinator flushes.
    ///
    /// # Errors
    ///
    /// [`RunError::Start`] when `appkit_telemetry::init` fails (bad filter, exporter set-up,
    /// a subscriber already installed).
    pub(crate) fn start(self) -> Result<TelemetryGuard, RunError> {
        match self {
            Self::Ready(guard) => Ok(guard),
            Self::Init(config) => {
                appkit_telemetry::init(*config).map_err(|e| RunError::start("telemetry", e))
            }
        }
    }
}

/// Reads the telemetry variables (`OTEL_*`, `RUST_LOG`, …) beside the host's, reporting
/// the problems of both in one [`ConfigError`].
///
/// The telemetry flush is bounded by the smaller of its default bound and the host's
/// shutdown timeout (the shutdown deadline bounds it again).
pub(crate) fn configs_from_env(
    host: Result<Config, ConfigError>,
) -> Result<(Config, TelemetryConfig), ConfigError> {
    merge(host, TelemetryConfig::from_env())
}

fn merge(
    host: Result<Config, ConfigError>,
    telemetry: Result<TelemetryConfig, appkit_telemetry::ConfigError>,
) -> Result<(Config, TelemetryConfig), ConfigError> {
    match (host, telemetry) {
        (Ok(host), Ok(telemetry)) => {
            let bound =
                appkit_telemetry::config::DEFAULT_SHUTDOWN_TIMEOUT.min(host.shutdown_timeout);
            Ok((host, telemetry.with_shutdown_timeout(bound)))
        }
        (host, telemetry) => {
            // One problem type: both lists join; a bad `APPKIT_ENV` (both read it) is
            // listed once.
            let mut problems = host.err().unwrap_or_default();
            problems.append(telemetry.err().unwrap_or_default());
            Err(problems)
        }
    }
}

/// Adds the request span as the outermost layer of `router`.
///
/// One span per request, made by [`appkit_telemetry::http_server_span`]: named
/// `"{METHOD} {route}"` by the matched route template (`GET /api/demo/tasks/{key}`),
/// never the raw path, and continuing the caller's W3C `traceparent`. `Router::layer`
/// runs it after routing, so [`MatchedPath`] holds the full path of routes nested
/// through any number of routers; unmatched requests (fallbacks) are named by the method
/// alone. The span lasts until the response body ends, so an SSE stream's span covers the
/// stream. Errors are logged by the error layer inside it, not here.
pub(crate) fn with_request_spans(router: Router) -> Router {
    router.layer(
        TraceLayer::new_for_http()
            .make_span_with(|req: &Request<Body>| {
                let route = req
                    .extensions()
                    .get::<MatchedPath>()
                    .map(MatchedPath::as_str);
                appkit_telemetry::http_server_span(req.method(), route, req.headers())
            })
            .on_request(())
            .on_response(|res: &Response<Body>, _: Duration, span: &Span| {
                appkit_telemetry::record_http_status(span, res.status());
            })
            .on_body_chunk(())
            .on_eos(())
            .on_failure(()),
    )
}

/// The last part of shutdown step 5: flush telemetry once, by `deadline`.
///
/// Logs `shutdown: telemetry flushed` on success. A failed flush was already logged by
/// the guard (`shutdown: telemetry flush failed …`); a flush cut short by the deadline is
/// logged here. Neither is an error: the shutdown goes on and the process exits 0.
pub(crate) async fn flush(guard: &TelemetryGuard, deadline: tokio::time::Instant) {
    match tokio::time::timeout_at(deadline, guard.shutdown()).await {
        Ok(Ok(())) => info!("shutdown: telemetry flushed"),
        Ok(Err(_)) => {}
        Err(_) => warn!(
            "shutdown: telemetry flush cut short by the shutdown deadline; unexported telemetry is lost"
        ),
    }
}

#[cfg(test)]
mod tests;
