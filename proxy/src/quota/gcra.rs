//! Rate limits with GCRA (the generic cell rate algorithm, as in ATM networks and redis-cell).
//!
//! A limit of `requests` per `window` is a token bucket of `requests` tokens refilled at
//! `requests / window`: a client may send a burst of up to `requests` at once, then one request
//! every `window / requests`. Over any interval of length L at most `requests + L * requests /
//! window` requests are admitted (so at most `2 * requests - 1` in one window, and only right after
//! an idle period); the long-run rate is exactly the limit. The whole state is one number, the
//! theoretical arrival time (TAT): no timers, no per-request log, the same cost for 1 s or 1 h.

/// GCRA state of one limit for one subject.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gcra {
    /// Theoretical arrival time, in ms since the Unix epoch.
    tat_ms: i64,
}

/// Outcome of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcraDecision {
    /// Admitted; `new_tat_ms` must be committed with [`Gcra::commit`] if the request goes ahead.
    Allow {
        /// The TAT after this request.
        new_tat_ms: i64,
    },
    /// Rejected; the next request is allowed in `retry_after_ms`.
    Deny {
        /// Milliseconds until one request is allowed.
        retry_after_ms: u64,
    },
}

impl Gcra {
    fn interval_ms(requests: u64, window_ms: u64) -> i64 {
        i64::try_from((window_ms / requests.max(1)).max(1)).unwrap_or(i64::MAX)
    }

    /// Whether one more request fits at `now_ms`.
    pub fn check(&self, requests: u64, window_ms: u64, now_ms: i64) -> GcraDecision {
        let interval = Self::interval_ms(requests, window_ms);
        let window = i64::try_from(window_ms).unwrap_or(i64::MAX);
        let new_tat = self.tat_ms.max(now_ms) + interval;
        let allow_at = new_tat - window;
        if now_ms < allow_at {
            GcraDecision::Deny {
                retry_after_ms: u64::try_from(allow_at - now_ms).unwrap_or(0),
            }
        } else {
            GcraDecision::Allow {
                new_tat_ms: new_tat,
            }
        }
    }

    /// Records an admitted request.
    pub fn commit(&mut self, new_tat_ms: i64) {
        self.tat_ms = new_tat_ms;
    }

    /// Requests still allowed right now, and milliseconds until the limit is fully available again
    /// (when none remain: until the next request is allowed).
    pub fn remaining(&self, requests: u64, window_ms: u64, now_ms: i64) -> (u64, u64) {
        let interval = Self::interval_ms(requests, window_ms);
        let window = i64::try_from(window_ms).unwrap_or(i64::MAX);
        let backlog = (self.tat_ms - now_ms).max(0);
        let free = (window - backlog).max(0);
        let remaining = u64::try_from(free / interval).unwrap_or(0).min(requests);
        let reset_ms = if remaining == 0 {
            backlog + interval - window
        } else {
            backlog
        };
        (remaining, u64::try_from(reset_ms.max(0)).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(g: &mut Gcra, requests: u64, window_ms: u64, now: i64) -> bool {
        match g.check(requests, window_ms, now) {
            GcraDecision::Allow { new_tat_ms } => {
                g.commit(new_tat_ms);
                true
            }
            GcraDecision::Deny { .. } => false,
        }
    }

    #[test]
    fn allows_a_burst_of_the_limit_then_denies() {
        let mut g = Gcra::default();
        let now = 1_000_000;
        for i in 0..5 {
            assert!(admit(&mut g, 5, 1000, now), "request {i}");
        }
        assert!(!admit(&mut g, 5, 1000, now));
        assert_eq!(
            g.check(5, 1000, now),
            GcraDecision::Deny {
                retry_after_ms: 200
            }
        );
        assert!(admit(&mut g, 5, 1000, now + 200));
    }

    #[test]
    fn admits_at_most_burst_plus_refill_in_any_interval() {
        // 10 per second, a request every 10 ms for 5 s.
        let mut g = Gcra::default();
        let mut admitted = Vec::new();
        for t in (0..5000).step_by(10) {
            if admit(&mut g, 10, 1000, t) {
                admitted.push(t);
            }
        }
        for (i, start) in admitted.iter().enumerate() {
            for len in [100, 500, 1000, 2000] {
                let in_interval = admitted[i..]
                    .iter()
                    .take_while(|t| **t < start + len)
                    .count() as i64;
                let bound = 10 + len / 100;
                assert!(
                    in_interval <= bound,
                    "{in_interval} admitted in {len} ms from {start} (bound {bound})"
                );
            }
        }
        // Sustained rate: the burst of 10 plus 10 per second after it.
        assert_eq!(admitted.len(), 10 + 49);
    }

    #[test]
    fn remaining_counts_down_and_reports_reset() {
        let mut g = Gcra::default();
        assert_eq!(g.remaining(5, 1000, 0), (5, 0));
        admit(&mut g, 5, 1000, 0);
        assert_eq!(g.remaining(5, 1000, 0), (4, 200));
        for _ in 0..4 {
            admit(&mut g, 5, 1000, 0);
        }
        // None left: the next request is allowed in 200 ms.
        assert_eq!(g.remaining(5, 1000, 0), (0, 200));
        assert_eq!(g.remaining(5, 1000, 1000), (5, 0));
    }
}
