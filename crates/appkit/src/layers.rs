//! The host's error layer: every error response is logged once and, in production,
//! redacted. (The other host layer, the request policy the user extractors read, is a
//! plain [`axum::Extension`].)

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ErrorReport, REDACTED_MESSAGE, error_body};

/// Logs each error response once (503 at warn, other 5xx at error, 4xx at debug) from the
/// [`ErrorReport`] an [`Error`](crate::Error) leaves in the response extensions and, when
/// `production`, replaces a 5xx message with "Server error" (the code stays).
pub(crate) async fn log_and_redact_errors(
    State(production): State<bool>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut response = next.run(req).await;
    let Some(report) = response.extensions_mut().remove::<ErrorReport>() else {
        return response;
    };
    let status = response.status();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        // Degraded but handled (shutting down, the database out of reach): not a bug.
        tracing::warn!(
            http.request.method = %method,
            url.path = %path,
            http.response.status_code = status.as_u16(),
            code = report.code,
            error = %report.message,
            "request refused: service unavailable"
        );
    } else if status.is_server_error() {
        tracing::error!(
            http.request.method = %method,
            url.path = %path,
            http.response.status_code = status.as_u16(),
            code = report.code,
            error = %report.message,
            "request failed"
        );
    } else {
        tracing::debug!(
            http.request.method = %method,
            url.path = %path,
            http.response.status_code = status.as_u16(),
            code = report.code,
            error = %report.message,
            "request refused"
        );
    }
    if production && status.is_server_error() {
        let (mut parts, _) = response.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        let body = error_body(REDACTED_MESSAGE, report.code)
            .into_response()
            .into_body();
        return Response::from_parts(parts, body);
    }
    response
}
