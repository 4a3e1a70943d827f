//! Lock-free per-task timestamps written by the submitters and the handler.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Timestamps per task index, in nanoseconds since `epoch` plus one (0 = not recorded).
#[derive(Debug)]
pub(super) struct Recorder {
    epoch: Instant,
    submitted: Box<[AtomicU64]>,
    started: Box<[AtomicU64]>,
    /// `return_order[k]` is the index of the k-th handler to return.
    return_order: Box<[AtomicUsize]>,
    returns: AtomicUsize,
    /// When this many handlers have returned, `all_returned` is notified (once).
    notify_at: usize,
    all_returned: Notify,
}

impl Recorder {
    /// Room for `capacity` task indexes; notifies once `notify_at` handlers returned.
    pub(super) fn new(capacity: usize, notify_at: usize) -> Self {
        let slots = |n| (0..n).map(|_| AtomicU64::new(0)).collect();
        Self {
            epoch: Instant::now(),
            submitted: slots(capacity),
            started: slots(capacity),
            return_order: (0..capacity)
                .map(|_| AtomicUsize::new(usize::MAX))
                .collect(),
            returns: AtomicUsize::new(0),
            notify_at,
            all_returned: Notify::new(),
        }
    }

    fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.epoch).as_nanos()).map_or(u64::MAX, |n| n + 1)
    }

    /// Records that task `i` is about to be submitted.
    pub(super) fn submitting(&self, i: usize) {
        self.submitting_at(i, Instant::now());
    }

    /// Records that task `i` was due to be submitted at `at`.
    pub(super) fn submitting_at(&self, i: usize, at: Instant) {
        self.submitted[i].store(self.stamp(at), Ordering::Relaxed);
    }

    /// Called by the handler on entry and just before it returns (both in one poll).
    pub(super) fn handled(&self, i: usize) {
        self.started[i].store(self.stamp(Instant::now()), Ordering::Relaxed);
        let k = self.returns.fetch_add(1, Ordering::AcqRel);
        if let Some(slot) = self.return_order.get(k) {
            slot.store(i, Ordering::Release);
        }
        if k + 1 == self.notify_at {
            self.all_returned.notify_one();
        }
    }

    /// Handlers returned so far.
    pub(super) fn returns(&self) -> usize {
        self.returns.load(Ordering::Acquire)
    }

    /// Resolves once `notify_at` handlers have returned.
    pub(super) async fn all_returned(&self) {
        if self.returns() < self.notify_at {
            self.all_returned.notified().await;
        }
    }

    /// Indexes of the last `n` handlers (of the first `upto` returns) to return.
    pub(super) fn last_returned(&self, upto: usize, n: usize) -> Vec<usize> {
        self.return_order[upto.saturating_sub(n)..upto]
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .collect()
    }

    /// Submit → handler entry of task `i`, if both were recorded.
    pub(super) fn submit_to_start(&self, i: usize) -> Option<Duration> {
        let submitted = self.submitted[i].load(Ordering::Relaxed);
        let started = self.started[i].load(Ordering::Relaxed);
        (submitted > 0 && started >= submitted).then(|| Duration::from_nanos(started - submitted))
    }
}
