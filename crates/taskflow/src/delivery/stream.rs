//! The resumable event stream returned by `subscribe`.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use futures_util::stream::{BoxStream, StreamExt, unfold};
use tokio::sync::broadcast::error::RecvError;

use super::hub::{Live, Subscription};
use crate::error::{Error, Result};
use crate::event::TaskEvent;
use crate::metrics::Metrics;
use crate::store::Storage;

/// Events read from the store per round trip during replay.
const REPLAY_PAGE: u32 = 256;

/// The events of one task, in seq order, each once: stored events after the cursor, then
/// live ones. Ends after a terminal event (`completed`, `failed`, `cancelled`).
///
/// A subscriber that falls behind re-reads the store instead of failing. The stream yields
/// `Err(Error::ShuttingDown)` (and ends) when the engine shuts down, and a store error if
/// a replay read fails.
///
/// # Cancellation safety
///
/// `next()` is cancellation safe: dropping a pending `next()` loses no event.
pub struct EventStream {
    inner: BoxStream<'static, Result<TaskEvent>>,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

impl Stream for EventStream {
    type Item = Result<TaskEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

struct State {
    store: Arc<dyn Storage>,
    task_id: String,
    after: u64,
    sub: Subscription,
    buffer: VecDeque<TaskEvent>,
    need_read: bool,
    done: bool,
    poll: Option<Duration>,
    _active: ActiveGuard,
}

struct ActiveGuard(Metrics);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.streams_active.add(-1, &[]);
    }
}

/// Builds the stream; `sub` must be registered before this is called (live first).
pub(crate) fn open(
    ended: bool,
    store: Arc<dyn Storage>,
    task_id: String,
    after: u64,
    sub: Subscription,
    poll: Option<Duration>,
    metrics: Metrics,
) -> EventStream {
    metrics.streams_active.add(1, &[]);
    let state = State {
        store,
        task_id,
        after,
        sub,
        buffer: VecDeque::new(),
        need_read: !ended,
        done: ended,
        poll,
        _active: ActiveGuard(metrics),
    };
    EventStream {
        inner: unfold(state, next).boxed(),
    }
}

async fn next(mut st: State) -> Option<(Result<TaskEvent>, State)> {
    loop {
        if st.done {
            return None;
        }
        if let Some(event) = take_next(&mut st) {
            return Some((Ok(event), st));
        }
        if st.need_read {
            match st
                .store
                .events_after(&st.task_id, st.after, REPLAY_PAGE)
                .await
            {
                Ok(events) => {
                    st.need_read = events.len() == REPLAY_PAGE as usize;
                    st.buffer.extend(events);
                    if !st.buffer.is_empty() {
                        continue;
                    }
                }
                Err(e) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
            }
        }
        let received = match st.poll {
            Some(every) => tokio::select! {
                r = st.sub.receiver().recv() => Some(r),
                () = tokio::time::sleep(every) => None,
            },
            None => Some(st.sub.receiver().recv().await),
        };
        match received {
            None | Some(Ok(Live::Hint) | Err(RecvError::Lagged(_))) => st.need_read = true,
            Some(Ok(Live::Event(event))) => {
                if event.seq > st.after {
                    st.buffer.push_back((*event).clone());
                }
            }
            Some(Err(RecvError::Closed)) => {
                st.done = true;
                return Some((Err(Error::ShuttingDown), st));
            }
        }
    }
}

/// Pops the next in-order event; on a gap, clears the buffer and asks for a store read.
fn take_next(st: &mut State) -> Option<TaskEvent> {
    while let Some(event) = st.buffer.pop_front() {
        if event.seq <= st.after {
            continue;
        }
        if event.seq != st.after + 1 {
            st.buffer.clear();
            st.need_read = true;
            return None;
        }
        st.after = event.seq;
        st.done = event.kind.is_terminal();
        return Some(event);
    }
    None
}
