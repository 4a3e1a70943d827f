//! HTTP server span helpers for a `tower_http::trace::TraceLayer`.
//!
//! The host builds one span per request at the outermost layer with
//! [`http_server_span`], named by the *matched route* (never the raw path, which carries
//! ids), continuing the caller's trace from its `traceparent` header, and records the
//! status with [`record_http_status`] when the response is ready:
//!
//! ```
//! use axum::{Router, body::Body, extract::MatchedPath, http::{Request, Response}, routing::get};
//! use tower_http::trace::TraceLayer;
//!
//! let app: Router = Router::new()
//!     .route("/api/demo/tasks/{key}", get(|| async { "ok" }))
//!     .layer(
//!         TraceLayer::new_for_http()
//!             .make_span_with(|req: &Request<Body>| {
//!                 let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
//!                 appkit_telemetry::http_server_span(req.method(), route, req.headers())
//!             })
//!             .on_response(|res: &Response<Body>, _latency, span: &tracing::Span| {
//!                 appkit_telemetry::record_http_status(span, res.status());
//!             }),
//!     );
//! ```
//!
//! `MatchedPath` is present when the layer is added with `Router::layer` (it runs after
//! routing); for unmatched requests (fallback, 404) the span is named by the method alone.

use http::{HeaderMap, Method, StatusCode};
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt as _;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Creates the server span for one request: OTel name `"{METHOD} {route}"`, kind server.
///
/// Fields: `http.request.method`, `http.route` (when `route` is known),
/// `http.response.status_code` (empty until [`record_http_status`]) and the
/// `otel.name` / `otel.kind` / `otel.status_code` controls read by `tracing-opentelemetry`.
/// When `headers` carry a valid W3C `traceparent` the span continues that trace (the
/// global propagator installed by [`init`](crate::init) decides; without `init` the
/// span has no parent). The `tracing` span name is the static `http_request`.
///
/// `route` must be the route template (`/api/demo/tasks/{key}`), not the request path.
pub fn http_server_span(method: &Method, route: Option<&str>, headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        "http_request",
        otel.name = %span_name(method, route),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = route,
        http.response.status_code = Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    if parent.span().span_context().is_valid() {
        // Fails only when no OTel layer is installed (export off) or the span is
        // disabled by the filter; in both cases there is no trace to continue.
        let _ = span.set_parent(parent);
    }
    span
}

/// Records the response status on a span made by [`http_server_span`].
///
/// A 5xx status also marks the span as an error (OTel server-span convention: 4xx is
/// the client's fault, not the server's).
pub fn record_http_status(span: &Span, status: StatusCode) {
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
}

/// The OTel span name: `"{METHOD} {route}"`, or the method alone when no route matched.
fn span_name(method: &Method, route: Option<&str>) -> String {
    match route {
        Some(route) => format!("{method} {route}"),
        None => method.to_string(),
    }
}

/// Reads propagation headers from an [`http::HeaderMap`].
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_name_uses_route_template_or_method() {
        assert_eq!(
            span_name(&Method::GET, Some("/api/demo/tasks/{key}")),
            "GET /api/demo/tasks/{key}"
        );
        assert_eq!(span_name(&Method::POST, None), "POST");
    }

    #[test]
    fn header_extractor_reads_case_insensitively() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", "00-abc-def-01".parse().unwrap());
        let extractor = HeaderExtractor(&headers);
        assert_eq!(extractor.get("Traceparent"), Some("00-abc-def-01"));
        assert_eq!(extractor.keys(), vec!["traceparent"]);
    }
}
