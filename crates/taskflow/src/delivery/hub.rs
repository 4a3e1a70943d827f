//! Per-task live channels, fed by the writer after each commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::broadcast;

use crate::event::TaskEvent;

/// Live events buffered per task before a slow subscriber lags (and re-reads the store).
const CHANNEL_CAPACITY: usize = 16;

/// What a live channel carries.
#[derive(Debug, Clone)]
pub(crate) enum Live {
    /// A committed event.
    Event(Arc<TaskEvent>),
    /// Something was committed elsewhere (another node): re-read the store.
    Hint,
}

type Channels = HashMap<String, broadcast::Sender<Live>>;

/// Registry of live channels, one per task that has subscribers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hub {
    channels: Arc<Mutex<Option<Channels>>>,
}

impl Hub {
    pub(crate) fn new() -> Self {
        Self {
            channels: Arc::new(Mutex::new(Some(HashMap::new()))),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Option<Channels>) -> R) -> R {
        let mut guard = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    /// Sends a committed event to the task's subscribers, if any.
    pub(crate) fn publish(&self, event: &TaskEvent) {
        self.with(|channels| {
            if let Some(tx) = channels.as_ref().and_then(|c| c.get(&event.task_id)) {
                let _ = tx.send(Live::Event(Arc::new(event.clone())));
            }
        });
    }

    /// Tells every subscriber to re-read the store (hints may have been lost).
    pub(crate) fn hint_all(&self) {
        self.with(|channels| {
            for tx in channels.iter().flat_map(|c| c.values()) {
                let _ = tx.send(Live::Hint);
            }
        });
    }

    /// Tells the task's subscribers to re-read the store.
    pub(crate) fn hint(&self, task_id: &str) {
        self.with(|channels| {
            if let Some(tx) = channels.as_ref().and_then(|c| c.get(task_id)) {
                let _ = tx.send(Live::Hint);
            }
        });
    }

    /// Registers a subscriber; `None` once the hub is closed.
    pub(crate) fn subscribe(&self, task_id: &str) -> Option<Subscription> {
        let rx = self.with(|channels| {
            let channels = channels.as_mut()?;
            let tx = channels
                .entry(task_id.to_owned())
                .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0);
            Some(tx.subscribe())
        })?;
        Some(Subscription {
            hub: self.clone(),
            task_id: task_id.to_owned(),
            rx: Some(rx),
        })
    }

    /// Drops every channel: subscribers see the end of the live feed.
    pub(crate) fn close(&self) {
        self.with(Option::take);
    }
}

/// A live registration; unregisters on drop.
#[derive(Debug)]
pub(crate) struct Subscription {
    hub: Hub,
    task_id: String,
    rx: Option<broadcast::Receiver<Live>>,
}

impl Subscription {
    pub(crate) fn receiver(&mut self) -> &mut broadcast::Receiver<Live> {
        self.rx.as_mut().expect("receiver is only taken in drop")
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.rx.take());
        self.hub.with(|channels| {
            if let Some(channels) = channels.as_mut()
                && channels
                    .get(&self.task_id)
                    .is_some_and(|tx| tx.receiver_count() == 0)
            {
                channels.remove(&self.task_id);
            }
        });
    }
}
