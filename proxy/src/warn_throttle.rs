//! At most one warning per interval about a failure that repeats.
//!
//! A dead backend fails every request sent to it. A warning per request would bury the rest of
//! the log under load (and cost a log write per failure); no warning at all leaves the operator
//! with 502s and no cause. So the first failure is logged at once, the next ones at most once per
//! interval, each warning saying how many failures it stands for.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The throttle of one kind of warning (one per route for its backend's failures).
#[derive(Debug)]
pub struct WarnThrottle {
    every: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_warned: Option<Instant>,
    left_out: u64,
}

impl WarnThrottle {
    /// A throttle that lets a warning through at most once per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new(State {
                last_warned: None,
                left_out: 0,
            }),
        }
    }

    /// A failure happened at `now`. `Some(n)`: log it, saying that `n` failures since the last
    /// warning were not logged. `None`: counted for the next warning instead.
    pub fn due(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock();
        match state.last_warned {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                state.left_out += 1;
                None
            }
            _ => {
                state.last_warned = Some(now);
                Some(std::mem::take(&mut state.left_out))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_failure_warns_then_one_per_interval_with_the_count_left_out() {
        let throttle = WarnThrottle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(throttle.due(t0), Some(0));
        for s in 1..=9 {
            assert_eq!(throttle.due(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(throttle.due(t0 + Duration::from_secs(10)), Some(9));
        assert_eq!(throttle.due(t0 + Duration::from_secs(11)), None);
        // A quiet spell longer than the interval: the next failure warns at once.
        assert_eq!(throttle.due(t0 + Duration::from_secs(60)), Some(1));
    }

    #[test]
    fn a_clock_reading_from_before_the_last_warning_is_counted_not_logged() {
        // Threads read the clock before taking the lock, so readings can arrive out of order.
        let throttle = WarnThrottle::new(Duration::from_secs(10));
        let t0 = Instant::now() + Duration::from_secs(5);
        assert_eq!(throttle.due(t0), Some(0));
        assert_eq!(throttle.due(t0 - Duration::from_secs(1)), None);
        assert_eq!(throttle.due(t0 + Duration::from_secs(10)), Some(1));
    }
}
