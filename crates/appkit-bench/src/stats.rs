//! Small measurement helpers shared by the modes: percentiles and peak RSS.

use std::time::Duration;

/// Latency percentiles in milliseconds, rounded to microseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub(crate) struct Percentiles {
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples`; `None` when there are none.
    pub(crate) fn of(mut samples: Vec<Duration>) -> Option<Self> {
        samples.sort_unstable();
        let max = *samples.last()?;
        Some(Self {
            p50_ms: ms(nearest_rank(&samples, 500)),
            p99_ms: ms(nearest_rank(&samples, 990)),
            max_ms: ms(max),
        })
    }
}

/// The nearest-rank percentile of sorted, non-empty `sorted`, with `permille` in 1..=1000.
fn nearest_rank(sorted: &[Duration], permille: usize) -> Duration {
    let rank = (permille * sorted.len()).div_ceil(1000).max(1);
    sorted[rank - 1]
}

/// Milliseconds, rounded to three decimals.
pub(crate) fn ms(d: Duration) -> f64 {
    round3(d.as_secs_f64() * 1e3)
}

/// `x` rounded to three decimals, for readable JSON.
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// This process's peak resident set size (`VmHWM` in `/proc/self/status`), in KiB.
pub(crate) fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(samples).unwrap();
        assert_eq!((p.p50_ms, p.p99_ms, p.max_ms), (50.0, 99.0, 100.0));
        let p = Percentiles::of(vec![Duration::from_millis(7)]).unwrap();
        assert_eq!((p.p50_ms, p.p99_ms), (7.0, 7.0));
        assert_eq!(Percentiles::of(vec![]), None);
    }

    #[test]
    fn reads_peak_rss_on_linux() {
        assert!(peak_rss_kib().is_some_and(|k| k > 0));
    }
}
