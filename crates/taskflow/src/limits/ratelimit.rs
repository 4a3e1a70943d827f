//! Sliding-window rate limits.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A limit of `max` submissions per sliding `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Submissions allowed per window.
    pub max: u32,
    /// The window length.
    pub window: Duration,
}

impl RateLimit {
    /// `max` submissions per `window`.
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max: max.max(1),
            window: window.max(Duration::from_millis(1)),
        }
    }
}

/// Sliding-window counter (the previous window's count, weighted by how much of it still
/// overlaps the sliding window, plus the current window's count), per key.
#[derive(Debug)]
pub(crate) struct SlidingWindow {
    limit: RateLimit,
    origin: Instant,
    buckets: HashMap<String, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    window_index: u64,
    current: u32,
    previous: u32,
}

impl SlidingWindow {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            origin: Instant::now(),
            buckets: HashMap::new(),
        }
    }

    /// Counts one submission for `key` at `now`, or says how long until one would fit.
    pub(crate) fn try_acquire(&mut self, key: &str, now: Instant) -> Result<(), Duration> {
        let window = self.limit.window.as_nanos();
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        let index = u64::try_from(elapsed / window).unwrap_or(u64::MAX);
        let into = elapsed % window;
        if self.buckets.len() > 10_000 {
            self.buckets.retain(|_, b| b.window_index + 1 >= index);
        }
        let bucket = self.buckets.entry(key.to_owned()).or_insert(Bucket {
            window_index: index,
            current: 0,
            previous: 0,
        });
        if bucket.window_index != index {
            bucket.previous = if bucket.window_index + 1 == index {
                bucket.current
            } else {
                0
            };
            bucket.current = 0;
            bucket.window_index = index;
        }
        let overlap = (window - into) as f64 / window as f64;
        let estimate = f64::from(bucket.previous) * overlap + f64::from(bucket.current);
        if estimate + 1.0 <= f64::from(self.limit.max) {
            bucket.current += 1;
            return Ok(());
        }
        // Time until the weighted previous count has decayed enough, or the window rolls.
        let needed = estimate + 1.0 - f64::from(self.limit.max);
        let wait_nanos = if bucket.previous > 0 {
            needed / f64::from(bucket.previous) * window as f64
        } else {
            (window - into) as f64
        };
        // Clamped to [1, window] nanoseconds, so the cast cannot truncate meaningfully.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let wait = Duration::from_nanos(wait_nanos.ceil().clamp(1.0, window as f64) as u64);
        Err(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_max_then_refuses_with_a_retry_hint() {
        let mut w = SlidingWindow::new(RateLimit::new(3, Duration::from_secs(10)));
        let t0 = w.origin;
        for _ in 0..3 {
            assert!(w.try_acquire("u", t0).is_ok());
        }
        let wait = w.try_acquire("u", t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        // Another key has its own budget.
        assert!(w.try_acquire("v", t0).is_ok());
    }

    #[test]
    fn previous_window_decays_as_it_slides_out() {
        let mut w = SlidingWindow::new(RateLimit::new(4, Duration::from_secs(10)));
        let t0 = w.origin;
        for _ in 0..4 {
            w.try_acquire("u", t0).unwrap();
        }
        // Just after the roll-over the previous 4 still weigh almost fully.
        assert!(
            w.try_acquire("u", t0 + Duration::from_millis(10_100))
                .is_err()
        );
        // Halfway through the next window they weigh 2: two more fit, not three.
        let mid = t0 + Duration::from_secs(15);
        assert!(w.try_acquire("u", mid).is_ok());
        assert!(w.try_acquire("u", mid).is_ok());
        assert!(w.try_acquire("u", mid).is_err());
        // Two windows later everything is forgotten.
        let later = t0 + Duration::from_secs(30);
        for _ in 0..4 {
            assert!(w.try_acquire("u", later).is_ok());
        }
    }
}
