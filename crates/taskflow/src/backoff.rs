//! Exponential backoff with full jitter, for retries and reconnects.

use std::time::Duration;

/// Delay before the attempt after `attempt` (1-based): uniform in
/// `[0, min(cap, base · 2^(attempt-1))]`.
pub(crate) fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let ceiling = base.saturating_mul(1 << exp).min(cap);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_the_exponential_ceiling_and_cap() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(1);
        for attempt in 1..40 {
            let ceiling = (base * 2u32.pow(attempt.min(20) - 1)).min(cap);
            for _ in 0..50 {
                assert!(backoff(attempt, base, cap) <= ceiling);
            }
        }
        // Full jitter spreads: not every draw is the ceiling.
        let draws: Vec<_> = (0..50).map(|_| backoff(5, base, cap)).collect();
        assert!(draws.iter().any(|d| *d < cap / 2));
    }
}
