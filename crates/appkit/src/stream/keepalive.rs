//! The idle keep-alive comment.

use std::time::Duration;

use axum::response::sse::KeepAlive;

/// Text of the keep-alive comment: the wire carries `: hb`.
pub(crate) const KEEPALIVE_TEXT: &str = "hb";

/// A keep-alive that sends `: hb` after `idle` without a frame.
///
/// axum's timer is a tokio `Sleep` owned by the response body: every frame resets it and
/// it is dropped with the stream, so no timer outlives a closed stream.
pub(crate) fn keep_alive(idle: Duration) -> KeepAlive {
    KeepAlive::new().interval(idle).text(KEEPALIVE_TEXT)
}
