//! How a failed CSI call is retried (k8s-semantics §3.9 step 4) and the per-item exponential backoff.

use std::time::Duration;

/// gRPC status codes, by number, so this module needs no tonic.
pub mod code {
    pub const CANCELLED: i32 = 1;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const ABORTED: i32 = 10;
    pub const UNAVAILABLE: i32 = 14;
}

/// What to do after CreateVolume failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The operation may still be running in the driver: retry the very same call.
    InBackground,
    /// Placement failed: clear `selected-node` so a node is picked again.
    Reschedule,
    /// Final for this attempt; retried later with backoff (never given up).
    Final,
    /// Final and unlikely to change (InvalidArgument): retried with a slower backoff.
    Infeasible,
}

/// `checkError`: `code` is None for an error that is not a gRPC status (a transport failure).
pub fn classify(code: Option<i32>, topology_supported: bool, node_selected: bool) -> Disposition {
    match code {
        None => Disposition::InBackground,
        Some(code::RESOURCE_EXHAUSTED) if topology_supported && node_selected => {
            Disposition::Reschedule
        }
        Some(code::CANCELLED | code::DEADLINE_EXCEEDED | code::UNAVAILABLE | code::ABORTED) => {
            Disposition::InBackground
        }
        Some(code::INVALID_ARGUMENT) => Disposition::Infeasible,
        Some(_) => Disposition::Final,
    }
}

/// Per-item exponential backoff: `start` doubling up to `max` (upstream 1 s → 5 min).
#[derive(Debug, Clone)]
pub struct Backoff {
    start: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(start: Duration, max: Duration) -> Self {
        Self {
            start,
            max,
            failures: 0,
        }
    }

    /// The delay before the next attempt, growing with each call.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        self.start.saturating_mul(factor).min(self.max)
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_check_error() {
        for c in [
            code::ABORTED,
            code::UNAVAILABLE,
            code::DEADLINE_EXCEEDED,
            code::CANCELLED,
        ] {
            assert_eq!(classify(Some(c), true, true), Disposition::InBackground);
        }
        assert_eq!(classify(None, false, false), Disposition::InBackground);
        assert_eq!(
            classify(Some(code::RESOURCE_EXHAUSTED), true, true),
            Disposition::Reschedule
        );
        assert_eq!(
            classify(Some(code::RESOURCE_EXHAUSTED), true, false),
            Disposition::Final,
            "Immediate: no node to clear"
        );
        assert_eq!(
            classify(Some(code::RESOURCE_EXHAUSTED), false, true),
            Disposition::Final
        );
        assert_eq!(
            classify(Some(code::INVALID_ARGUMENT), true, true),
            Disposition::Infeasible
        );
        assert_eq!(classify(Some(13), true, true), Disposition::Final);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<_> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
