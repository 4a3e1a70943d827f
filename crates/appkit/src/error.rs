//! The host's error type and its one mapping to HTTP.
//!
//! Every handler error becomes JSON `{"error": message, "code": CODE}` with the matching
//! status. The error also travels in the response extensions as an [`ErrorReport`], so one
//! layer (`layers.rs`) logs it once and, in production, redacts 5xx messages to "Server
//! error". Start-up and shutdown failures are [`RunError`](crate::RunError), never an HTTP
//! answer.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Result alias with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error from plugin code.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The message 5xx errors show in production.
pub const REDACTED_MESSAGE: &str = "Server error";

/// What a request handler answers with when it fails.
///
/// Variants are named by cause. [`status_code`](Self::status_code) gives each one's HTTP
/// status and [`code`](Self::code) its stable machine-readable code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request was malformed or failed validation (400).
    #[error("{0}")]
    InvalidInput(String),
    /// The route needs a user and the request has none (401).
    #[error("authentication required")]
    Unauthorized,
    /// Nothing at this path, or no task with that key visible to this user (404).
    #[error("not found")]
    NotFound,
    /// No task handler is registered under the name (404).
    #[error("unknown task `{0}`")]
    UnknownTask(String),
    /// The operation conflicts with the resource's state (409).
    #[error("{0}")]
    Conflict(String),
    /// The request body is over the configured limit (413).
    #[error("request body is too large")]
    PayloadTooLarge,
    /// The request body has the wrong content type (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A rate limit or a queue bound refused the request (429 with `Retry-After`).
    #[error("too many requests, retry after {} s", retry_after_secs(*retry_after))]
    RateLimited {
        /// When trying again may succeed.
        retry_after: Duration,
    },
    /// The server is shutting down and takes no new work (503).
    #[error("server is shutting down")]
    ShuttingDown,
    /// The task store cannot be reached (503 with `Retry-After: 2`); the server keeps
    /// running and recovers when it answers again. Holds the engine's [`taskflow::Error::StoreUnavailable`] or
    /// [`taskflow::Error::OutcomeUnknown`]. A store that answers with a failure (a bug,
    /// corrupt data) is [`Error::Task`] instead: 500, since retrying will not help.
    #[error(transparent)]
    StoreUnavailable(taskflow::Error),
    /// The Lakebase database failed: 503 while it is closed, unreachable, slow or its
    /// credential cannot be obtained; 500 for a configuration error.
    #[error(transparent)]
    Database(appkit_lakebase::Error),
    /// An unexpected failure inside the server (500).
    #[error("{0}")]
    Internal(String),
    /// The task engine failed (500).
    #[error("task engine error")]
    Task(#[source] taskflow::Error),
}

impl Error {
    /// The HTTP status this error answers with.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidInput(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound | Self::UnknownTask(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::ShuttingDown | Self::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(e) if database_unavailable(e) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code clients can branch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "INVALID_INPUT",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::NotFound => "NOT_FOUND",
            Self::UnknownTask(_) => "UNKNOWN_TASK",
            Self::Conflict(_) => "CONFLICT",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::ShuttingDown => "SHUTTING_DOWN",
            Self::StoreUnavailable(_) => "STORE_UNAVAILABLE",
            Self::Database(e) if database_unavailable(e) => "DATABASE_UNAVAILABLE",
            _ => "INTERNAL",
        }
    }

    /// Wraps any error as an internal one.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }
}

/// The `Retry-After` a 503 for an unreachable task store carries: a client (or a proxy)
/// tries again after this instead of at once, and the server probes the store meanwhile.
const STORE_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Whole seconds for `Retry-After`: rounded up, at least 1.
fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

impl From<taskflow::Error> for Error {
    fn from(e: taskflow::Error) -> Self {
        use taskflow::Error as T;
        match e {
            T::Invalid { .. } | T::CursorOutOfRange { .. } => Self::InvalidInput(e.to_string()),
            T::NotFound => Self::NotFound,
            T::UnknownTask(name) => Self::UnknownTask(name),
            T::InvalidTransition { .. } => Self::Conflict(e.to_string()),
            T::Rejected { retry_after, .. } => Self::RateLimited { retry_after },
            T::ShuttingDown => Self::ShuttingDown,
            T::StoreUnavailable(_) | T::OutcomeUnknown => Self::StoreUnavailable(e),
            other => Self::Task(other),
        }
    }
}

impl From<appkit_lakebase::Error> for Error {
    fn from(e: appkit_lakebase::Error) -> Self {
        Self::Database(e)
    }
}

/// Whether a Lakebase error is the database being out of reach (503), not a bug (500).
fn database_unavailable(e: &appkit_lakebase::Error) -> bool {
    use appkit_lakebase::Error as L;
    matches!(
        e,
        L::Closed | L::Unavailable(_) | L::Timeout { .. } | L::Credential { .. }
    )
}

impl From<JsonRejection> for Error {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType(rejection.body_text()),
            s if s.is_client_error() => Self::InvalidInput(rejection.body_text()),
            _ => Self::Internal(rejection.body_text()),
        }
    }
}

/// What an error response carried, left in the response extensions for the error
/// middleware.
#[derive(Debug, Clone)]
pub(crate) struct ErrorReport {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

/// The JSON body of every error response.
pub(crate) fn error_body(message: &str, code: &str) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "error": message, "code": code }))
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let code = self.code();
        let message = error_chain(&self);
        let mut response = (status, error_body(&message, code)).into_response();
        let retry_after = match self {
            Self::RateLimited { retry_after } => Some(retry_after),
            Self::StoreUnavailable(_) => Some(STORE_RETRY_AFTER),
            _ => None,
        };
        if let Some(retry_after) = retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(retry_after)),
            );
        }
        response
            .extensions_mut()
            .insert(ErrorReport { code, message });
        response
    }
}

/// The error's message followed by its sources, `: `-separated.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }

    #[test]
    fn engine_errors_map_to_statuses() {
        let cases: Vec<(taskflow::Error, StatusCode)> = vec![
            (taskflow::Error::NotFound, StatusCode::NOT_FOUND),
            (
                taskflow::Error::CursorOutOfRange {
                    after_seq: 9,
                    last_seq: 2,
                },
                StatusCode::BAD_REQUEST,
            ),
            (
                taskflow::Error::Rejected {
                    reason: "rate limit exceeded",
                    retry_after: Duration::from_millis(1500),
                },
                StatusCode::TOO_MANY_REQUESTS,
            ),
            (
                taskflow::Error::ShuttingDown,
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                taskflow::Error::Locked { path: "x".into() },
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                taskflow::Error::Corrupt("unknown task status `x`".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                taskflow::Error::OutcomeUnknown,
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                taskflow::Error::StoreUnavailable(std::sync::Arc::new(
                    std::io::Error::other("connection refused").into(),
                )),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ];
        for (engine, status) in cases {
            assert_eq!(Error::from(engine).status_code(), status);
        }
    }

    #[test]
    fn store_unavailable_is_503_with_its_own_code() {
        let e = Error::from(taskflow::Error::StoreUnavailable(std::sync::Arc::new(
            std::io::Error::other("connection refused").into(),
        )));
        assert_eq!(e.code(), "STORE_UNAVAILABLE");
        let message = error_chain(&e);
        assert!(message.starts_with("task store unavailable"), "{message}");
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let unknown = Error::from(taskflow::Error::OutcomeUnknown).into_response();
        assert_eq!(unknown.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(unknown.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn database_errors_are_503_unless_misconfigured() {
        use appkit_lakebase::Error as L;
        let timeout = L::Timeout {
            timeout: Duration::from_secs(2),
        };
        for e in [
            L::Closed,
            timeout,
            L::credential("token endpoint down", None),
        ] {
            let e = Error::from(e);
            assert_eq!(e.status_code(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(e.code(), "DATABASE_UNAVAILABLE");
        }
        let config = appkit_lakebase::LakebaseConfig::from_url("mysql://x").unwrap_err();
        assert_eq!(
            Error::from(config).status_code(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn rate_limited_response_has_retry_after_header() {
        let response = Error::RateLimited {
            retry_after: Duration::from_millis(1500),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }
}
