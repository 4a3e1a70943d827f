//! One SSE response fed by one task's event stream.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use taskflow::{EventKind, EventStream, TaskEvent};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::{debug, warn};

use super::keepalive::keep_alive;
use super::registry::{BridgeGuard, Outcome};
use super::{IDEMPOTENCY_KEY_HEADER, SHUTTING_DOWN_MESSAGE};
use crate::error::{Error, REDACTED_MESSAGE};

/// What one bridge needs.
#[derive(Debug)]
pub(crate) struct BridgeParams {
    /// The task's idempotency key (header and `ready` frame).
    pub(crate) key: String,
    /// The task's events after the resume cursor.
    pub(crate) events: EventStream,
    /// The bridge's registration.
    pub(crate) guard: BridgeGuard,
    /// Redact in-band error messages (production).
    pub(crate) redact: bool,
    /// Idle time before a `: hb` comment.
    pub(crate) keepalive: Duration,
}

/// Builds the SSE response for a bridge (the wire contract in `docs/host.md`).
///
/// # Errors
///
/// [`Error::Internal`] if the key cannot be a header value (the engine only issues keys
/// that can).
pub(crate) fn sse_response(params: BridgeParams) -> Result<Response, Error> {
    let key_header = HeaderValue::from_str(&params.key)
        .map_err(|_| Error::Internal("idempotency key is not a valid header value".into()))?;
    let keepalive = params.keepalive;
    let body = Sse::new(frames(params)).keep_alive(keep_alive(keepalive));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    headers.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    headers.insert(HeaderName::from_static(IDEMPOTENCY_KEY_HEADER), key_header);
    Ok(response)
}

enum Phase {
    Ready,
    Streaming,
    Done,
}

/// One bridge's state, polled by hand rather than through `stream::unfold`: unfold keeps
/// a slot for the state and, while a frame is pending, a second copy inside its future,
/// and every byte here is paid by every open bridge. The task key lives once, in the
/// guard.
struct State {
    phase: Phase,
    events: EventStream,
    guard: BridgeGuard,
    redact: bool,
    /// Resolves when the server drains bridges at shutdown.
    drain: Pin<Box<WaitForCancellationFutureOwned>>,
}

/// The frames: `ready`, then each task event but `created`, until a terminal event, the
/// shutdown drain, or an error.
fn frames(params: BridgeParams) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    let drain = Box::pin(params.guard.drain_token().clone().cancelled_owned());
    State {
        phase: Phase::Ready,
        events: params.events,
        guard: params.guard,
        redact: params.redact,
        drain,
    }
}

impl Stream for State {
    type Item = Result<Event, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let st = self.get_mut();
        next_frame(st, cx).map(|frame| frame.map(Ok))
    }
}

fn next_frame(st: &mut State, cx: &mut Context<'_>) -> Poll<Option<Event>> {
    match st.phase {
        Phase::Done => return Poll::Ready(None),
        Phase::Ready => {
            st.phase = Phase::Streaming;
            let data = serde_json::json!({ "idempotencyKey": st.guard.key() }).to_string();
            return Poll::Ready(Some(Event::default().event("ready").data(data)));
        }
        Phase::Streaming => {}
    }
    loop {
        // The drain first, as a biased select would.
        if st.drain.as_mut().poll(cx).is_ready() {
            let message = SHUTTING_DOWN_MESSAGE.to_owned();
            return Poll::Ready(Some(close(st, Outcome::Closed, message)));
        }
        let frame = match ready!(st.events.poll_next_unpin(cx)) {
            None => {
                st.phase = Phase::Done;
                st.guard.finish(Outcome::TaskEnded);
                return Poll::Ready(None);
            }
            Some(Ok(event)) if event.kind == EventKind::Created => continue,
            Some(Ok(event)) => event_frame(st, &event),
            Some(Err(taskflow::Error::ShuttingDown)) => {
                close(st, Outcome::Closed, SHUTTING_DOWN_MESSAGE.to_owned())
            }
            Some(Err(e)) => {
                warn!(task.key = %st.guard.key(), error = %e, "task event stream failed");
                let message = in_band_message(st.redact, &Error::from(e));
                close(st, Outcome::Closed, message)
            }
        };
        return Poll::Ready(Some(frame));
    }
}

/// The frame for one task event: `id: seq`, `event: name`, `data: json`.
fn event_frame(st: &mut State, event: &TaskEvent) -> Event {
    if event.name.contains(['\r', '\n']) {
        // The engine refuses such names at emit; never put one on the wire.
        warn!(task.key = %st.guard.key(), seq = event.seq, "event name with CR or LF refused");
        let message = in_band_message(st.redact, &Error::Internal("invalid event name".into()));
        return close(st, Outcome::Closed, message);
    }
    if event.kind.is_terminal() {
        st.phase = Phase::Done;
        st.guard.finish(Outcome::TaskEnded);
    }
    let data = match super::failure::client_payload(event.kind, &event.payload, st.redact) {
        Some(payload) => payload.to_string(),
        None => event.payload.to_string(),
    };
    Event::default()
        .id(event.seq.to_string())
        .event(&event.name)
        .data(data)
}

/// Ends the stream after an `event: error` frame with `message`.
fn close(st: &mut State, outcome: Outcome, message: String) -> Event {
    debug!(task.key = %st.guard.key(), %message, "closing sse bridge");
    st.phase = Phase::Done;
    st.guard.finish(outcome);
    error_frame(&message)
}

fn in_band_message(redact: bool, e: &Error) -> String {
    if redact && e.status_code().is_server_error() {
        REDACTED_MESSAGE.to_owned()
    } else {
        crate::error::error_chain(e)
    }
}

/// An `event: error` frame with `{"message": …}`.
pub(crate) fn error_frame(message: &str) -> Event {
    let data = serde_json::json!({ "message": message }).to_string();
    Event::default().event("error").data(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn wire(event: Event) -> String {
        use http_body_util::BodyExt;
        let stream = futures_util::stream::iter([Ok::<_, Infallible>(event)]);
        let body = Sse::new(stream).into_response().into_body();
        let bytes = body.collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn error_frame_has_no_id() {
        assert_eq!(
            wire(error_frame(SHUTTING_DOWN_MESSAGE)).await,
            "event: error\ndata: {\"message\":\"server_shutting_down\"}\n\n"
        );
    }

    #[tokio::test]
    async fn multi_line_data_becomes_several_data_lines() {
        let event = Event::default().id("3").event("note").data("a\nb\nc");
        assert_eq!(
            wire(event).await,
            "id: 3\nevent: note\ndata: a\ndata: b\ndata: c\n\n"
        );
    }
}
