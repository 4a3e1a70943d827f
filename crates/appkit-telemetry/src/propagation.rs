//! W3C trace-context carried in a `HashMap<String, String>`, to link work to its request.
//!
//! A request handler captures its span's context with [`inject_context`] and stores the
//! map with the work it starts (for example in a task's input or metadata); the code that
//! runs the work later makes its span a child of, or links it to, that request with
//! [`set_parent_from`] or [`add_link_from`]. Prefer a link for work that outlives the
//! request (durable tasks, retries after a restart): a parent would stretch the request's
//! trace over hours.
//!
//! All three use the global propagator installed by [`init`](crate::init) (W3C
//! `traceparent` / `tracestate`). Without an OTel trace layer (export off) the map is
//! empty and the other two do nothing.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::trace::TraceContextExt as _;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Returns the span's trace context as W3C headers (`traceparent`, maybe `tracestate`).
///
/// This starts the span's OTel counterpart, so call it after any `set_parent_from` on
/// the same span.
pub fn inject_context(span: &Span) -> HashMap<String, String> {
    let context = span.context();
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut carrier);
    });
    carrier
}

/// Makes `span` a child of the trace context in `carrier`; returns whether it did.
///
/// Returns `false` when the carrier holds no valid context, when no OTel layer is
/// installed, or when the span was already started (entered, or `inject_context` called).
pub fn set_parent_from(span: &Span, carrier: &HashMap<String, String>) -> bool {
    let context = extract(carrier);
    context.span().span_context().is_valid() && span.set_parent(context).is_ok()
}

/// Adds a link from `span` to the trace context in `carrier`; returns whether it did.
///
/// Returns `false` when the carrier holds no valid context.
pub fn add_link_from(span: &Span, carrier: &HashMap<String, String>) -> bool {
    let context = extract(carrier);
    let span_context = context.span().span_context().clone();
    if !span_context.is_valid() {
        return false;
    }
    span.add_link(span_context);
    true
}

fn extract(carrier: &HashMap<String, String>) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(carrier))
}
