//! The kubelet's restart back-off: the first restart is immediate, then 10 s, doubling
//! to 5 min; a run that lasted 10 min resets it.

use std::time::Duration;

pub const INITIAL: Duration = Duration::from_secs(10);
pub const MAX: Duration = Duration::from_secs(300);
/// A run at least this long forgets earlier crashes (the kubelet's 2 x MAX).
pub const RESET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Default)]
pub struct Backoff {
    /// The delay before the next restart, once one exit has been seen.
    next: Option<Duration>,
}

impl Backoff {
    /// A run that lasted `ran` ended; returns how long to wait before the next start.
    pub fn on_exit(&mut self, ran: Duration) -> Duration {
        if ran >= RESET_AFTER {
            self.next = None;
        }
        match self.next {
            None => {
                self.next = Some(INITIAL);
                Duration::ZERO
            }
            Some(d) => {
                self.next = Some((d * 2).min(MAX));
                d
            }
        }
    }
}

/// The delay after the `failures`-th failure in a row to start (an image pull back-off).
pub fn start_failure_delay(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(8);
    (INITIAL * (1u32 << shift)).min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_five_minutes_and_resets_after_a_long_run() {
        let mut b = Backoff::default();
        let short = Duration::from_secs(1);
        let seen: Vec<u64> = (0..8).map(|_| b.on_exit(short).as_secs()).collect();
        assert_eq!(seen, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.on_exit(RESET_AFTER), Duration::ZERO);
        assert_eq!(b.on_exit(short), INITIAL);
    }

    #[test]
    fn start_failures_back_off_too() {
        let d: Vec<u64> = (1..=7).map(|n| start_failure_delay(n).as_secs()).collect();
        assert_eq!(d, [10, 20, 40, 80, 160, 300, 300]);
    }
}
