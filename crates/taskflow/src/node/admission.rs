//! Admission of new submissions: the bound on pending tasks and the rate limits.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::handler::lock;
use crate::limits::SlidingWindow;
use crate::metrics::Metrics;

/// Admission state of one node.
#[derive(Debug)]
pub(crate) struct Admission {
    max_pending: u64,
    /// Pending tasks in the store, as last counted plus this node's changes since.
    pending: AtomicU64,
    retry_after: Duration,
    windows: Mutex<Windows>,
}

#[derive(Debug)]
struct Windows {
    global: Option<SlidingWindow>,
    per_user: Option<SlidingWindow>,
}

impl Admission {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            max_pending: config.max_pending,
            pending: AtomicU64::new(0),
            retry_after: config.poll_interval,
            windows: Mutex::new(Windows {
                global: config.rate_limit.map(SlidingWindow::new),
                per_user: config.user_rate_limit.map(SlidingWindow::new),
            }),
        }
    }

    /// Admits one submission of `user`, or says why not and when to try again.
    ///
    /// # Errors
    ///
    /// [`Error::Rejected`] over the pending bound or a rate limit.
    pub(crate) fn admit(&self, user: Option<&str>, metrics: &Metrics) -> Result<()> {
        let reject = |reason: &'static str, retry_after| {
            metrics
                .rejected
                .add(1, &[opentelemetry::KeyValue::new("reason", reason)]);
            Err(Error::Rejected {
                reason,
                retry_after,
            })
        };
        if self.pending.load(Ordering::Relaxed) >= self.max_pending {
            return reject("too many pending tasks", self.retry_after);
        }
        let now = Instant::now();
        let mut windows = lock(&self.windows);
        if let Some(window) = windows.global.as_mut()
            && let Err(wait) = window.try_acquire("", now)
        {
            return reject("rate limit exceeded", wait);
        }
        if let (Some(window), Some(user)) = (windows.per_user.as_mut(), user)
            && let Err(wait) = window.try_acquire(user, now)
        {
            return reject("user rate limit exceeded", wait);
        }
        Ok(())
    }

    /// Replaces the estimate with a count from the store.
    pub(crate) fn set_pending(&self, n: u64) {
        self.pending.store(n, Ordering::Relaxed);
    }

    pub(crate) fn add_pending(&self, n: u64) {
        self.pending.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn remove_pending(&self, n: u64) {
        let _ = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some(p.saturating_sub(n))
            });
    }
}
