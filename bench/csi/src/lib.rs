//! CSI driver benchmarks: latency summaries for the `bench-csi` harness.
//!
//! The harness (src/main.rs) drives the real `strata-csi` binary over its unix socket on a
//! loop-backed pool; this module only turns samples into figures.

use std::time::Duration;

/// Percentiles of a set of latency samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

impl Summary {
    /// Nearest-rank percentiles; `None` for no samples.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort();
        let rank = |p: f64| {
            let r = ((p / 100.0) * s.len() as f64).ceil() as usize;
            s[r.clamp(1, s.len()) - 1]
        };
        let total: Duration = s.iter().sum();
        Some(Summary {
            n: s.len(),
            p50: rank(50.0),
            p99: rank(99.0),
            max: s[s.len() - 1],
            mean: total / s.len() as u32,
        })
    }
}

/// Operations per second for `n` operations in `elapsed`.
pub fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

/// `1.234 ms` style.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(&samples).unwrap();
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.max, Duration::from_millis(100));
        assert_eq!(Summary::of(&[]), None);
        let one = Summary::of(&[Duration::from_millis(7)]).unwrap();
        assert_eq!(
            (one.p50, one.p99),
            (Duration::from_millis(7), Duration::from_millis(7))
        );
    }

    #[test]
    fn rate_is_ops_per_second() {
        assert_eq!(rate(500, Duration::from_secs(2)), 250.0);
    }
}
