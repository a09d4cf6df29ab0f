//! At most one warning per interval about a failure that repeats, and reachability changes of a
//! dependency logged when they happen rather than per call.
//!
//! A dead backend fails every request sent to it. A warning per request would bury the rest of
//! the log under load (and cost a log write per failure); no warning at all leaves the operator
//! with 502s and no cause. So the first failure is logged at once, the next ones at most once per
//! interval, each warning saying how many failures it stands for.

use std::sync::atomic::{AtomicBool, Ordering};
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

/// What to log about a dependency's reachability, from the outcome of each call to it: a warning
/// when calls fail, a note when they succeed again, never a line per call. Calls from many tasks
/// interleave, so a flaky dependency (half its calls timing out) flips between the two all the
/// time: warnings are throttled like [`WarnThrottle`]'s, and "reachable again" follows only a
/// warning that was logged.
#[derive(Debug)]
pub struct Reachability {
    /// The last line logged was a warning (the log says the dependency is down).
    warned: AtomicBool,
    warnings: WarnThrottle,
}

/// A change of reachability worth a log line.
#[derive(Debug, PartialEq, Eq)]
pub enum ReachabilityChange {
    /// Calls fail; `failures_not_logged` failed calls since the last warning were throttled.
    Lost { failures_not_logged: u64 },
    /// Calls succeed again after a logged [`ReachabilityChange::Lost`].
    Regained,
}

impl Reachability {
    /// Reachable until a call fails; at most one warning per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            warned: AtomicBool::new(false),
            warnings: WarnThrottle::new(every),
        }
    }

    /// A call finished at `now`, failed or not: the change to log, if any.
    pub fn observe(&self, failed: bool, now: Instant) -> Option<ReachabilityChange> {
        if failed {
            if self.warned.load(Ordering::Relaxed) {
                return None; // part of the outage already logged
            }
            let failures_not_logged = self.warnings.due(now)?;
            // Two tasks can both get here at once; only one logs.
            (!self.warned.swap(true, Ordering::Relaxed)).then_some(ReachabilityChange::Lost {
                failures_not_logged,
            })
        } else {
            self.warned
                .swap(false, Ordering::Relaxed)
                .then_some(ReachabilityChange::Regained)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_logged_when_it_starts_and_when_it_ends() {
        let r = Reachability::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(r.observe(false, t0), None);
        assert_eq!(
            r.observe(true, t0),
            Some(ReachabilityChange::Lost {
                failures_not_logged: 0
            })
        );
        for _ in 0..100 {
            assert_eq!(r.observe(true, t0), None, "not per failed call");
        }
        assert_eq!(r.observe(false, t0), Some(ReachabilityChange::Regained));
        assert_eq!(r.observe(false, t0), None);
    }

    #[test]
    fn a_flapping_dependency_logs_at_most_two_lines_per_interval() {
        let r = Reachability::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let mut lines = Vec::new();
        // Every other call fails, ten calls a second, for 25 s.
        for i in 0..250u64 {
            let now = t0 + Duration::from_millis(i * 100);
            if let Some(change) = r.observe(i % 2 == 1, now) {
                lines.push((i, change));
            }
        }
        let lost = |failures_not_logged| ReachabilityChange::Lost {
            failures_not_logged,
        };
        assert_eq!(
            lines,
            [
                (1, lost(0)),
                (2, ReachabilityChange::Regained),
                (101, lost(49)),
                (102, ReachabilityChange::Regained),
                (201, lost(49)),
                (202, ReachabilityChange::Regained),
            ]
        );
    }

    #[test]
    fn an_outage_that_starts_inside_the_interval_is_logged_when_the_interval_ends() {
        let r = Reachability::new(Duration::from_secs(10));
        let t0 = Instant::now();
        // A blip at t0, logged; a real outage from t0 + 5 s, every call failing.
        assert!(r.observe(true, t0).is_some());
        assert_eq!(r.observe(false, t0), Some(ReachabilityChange::Regained));
        let mut lines = Vec::new();
        for s in 5..30 {
            if let Some(change) = r.observe(true, t0 + Duration::from_secs(s)) {
                lines.push((s, change));
            }
        }
        assert_eq!(
            lines,
            [(
                10,
                ReachabilityChange::Lost {
                    failures_not_logged: 5
                }
            )]
        );
    }

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
