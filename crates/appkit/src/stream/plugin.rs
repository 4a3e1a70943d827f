//! SSE streams a plugin serves itself (not a task's events), drained at shutdown like
//! task bridges.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt, stream};

use super::SHUTTING_DOWN_MESSAGE;
use super::bridge::error_frame;
use super::keepalive::keep_alive;
use super::registry::PlainGuard;

struct State {
    events: Pin<Box<dyn Stream<Item = Event> + Send>>,
    guard: PlainGuard,
    done: bool,
}

/// The SSE response for a plugin's own `events`: each event as it comes, `: hb` after
/// `keepalive` idle, and at shutdown a final `event: error` /
/// `{"message":"server_shutting_down"}` frame, then the end of the stream. The stream
/// counts as open for the shutdown drain until its response body is dropped.
pub(crate) fn plugin_sse_response(
    events: impl Stream<Item = Event> + Send + 'static,
    guard: PlainGuard,
    keepalive: Duration,
) -> Response {
    let state = State {
        events: Box::pin(events),
        guard,
        done: false,
    };
    let frames = stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let drain = st.guard.drain_token().clone();
        let frame = tokio::select! {
            biased;
            () = drain.cancelled() => {
                st.done = true;
                error_frame(SHUTTING_DOWN_MESSAGE)
            }
            next = st.events.next() => next?,
        };
        Some((Ok::<_, Infallible>(frame), st))
    });
    let mut response = Sse::new(frames)
        .keep_alive(keep_alive(keepalive))
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    headers.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    response
}

/// The events a channel receives, until every sender is gone.
pub(crate) fn channel_events(
    receiver: tokio::sync::mpsc::Receiver<Event>,
) -> impl Stream<Item = Event> + Send + 'static {
    stream::unfold(receiver, |mut rx| async move {
        let event = rx.recv().await?;
        Some((event, rx))
    })
}
