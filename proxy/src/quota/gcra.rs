//! Rate limits with GCRA (the generic cell rate algorithm, as in ATM networks and redis-cell).
//!
//! A limit of `requests` per `window` is a token bucket of `requests` tokens refilled at
//! `requests / window`: a client may send a burst of up to `requests` at once, then one request
//! every `window / requests`. Over any interval of length L at most `requests + L * requests /
//! window` requests are admitted (so at most `2 * requests - 1` in one window, and only right after
//! an idle period); the long-run rate is exactly the limit. The whole state is one number, the
//! theoretical arrival time (TAT): no timers, no per-request log, the same cost for 1 s or 1 h.

/// GCRA state of one limit for one subject. Times are in nanoseconds since the Unix epoch, so a
/// limit of up to 10^9 requests per second keeps its exact emission interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gcra {
    /// Theoretical arrival time.
    tat_ns: i64,
}

const NANOS_PER_MS: i64 = 1_000_000;

/// Outcome of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcraDecision {
    /// Admitted; `new_tat_ns` must be committed with [`Gcra::commit`] if the request goes ahead.
    Allow {
        /// The TAT after this request.
        new_tat_ns: i64,
    },
    /// Rejected; the next request is allowed in `retry_after_ms`.
    Deny {
        /// Milliseconds until one request is allowed.
        retry_after_ms: u64,
    },
}

impl Gcra {
    fn interval_ns(requests: u64, window_ns: i64) -> i64 {
        (window_ns / i64::try_from(requests.max(1)).unwrap_or(i64::MAX)).max(1)
    }

    fn window_ns(window_ms: u64) -> i64 {
        i64::try_from(window_ms)
            .unwrap_or(i64::MAX / NANOS_PER_MS)
            .saturating_mul(NANOS_PER_MS)
    }

    /// Whether one more request fits at `now_ns`.
    pub fn check(&self, requests: u64, window_ms: u64, now_ns: i64) -> GcraDecision {
        let window = Self::window_ns(window_ms);
        let new_tat = self
            .tat_ns
            .max(now_ns)
            .saturating_add(Self::interval_ns(requests, window));
        let allow_at = new_tat - window;
        if now_ns < allow_at {
            let wait_ns = allow_at - now_ns;
            GcraDecision::Deny {
                retry_after_ms: u64::try_from((wait_ns + NANOS_PER_MS - 1) / NANOS_PER_MS)
                    .unwrap_or(0),
            }
        } else {
            GcraDecision::Allow {
                new_tat_ns: new_tat,
            }
        }
    }

    /// Records an admitted request.
    pub fn commit(&mut self, new_tat_ns: i64) {
        self.tat_ns = new_tat_ns;
    }

    /// Requests still allowed at `now_ns`, and milliseconds until the limit is fully available
    /// again (when none remain: until the next request is allowed).
    pub fn remaining(&self, requests: u64, window_ms: u64, now_ns: i64) -> (u64, u64) {
        let window = Self::window_ns(window_ms);
        let interval = Self::interval_ns(requests, window);
        let backlog = (self.tat_ns - now_ns).max(0);
        let free = (window - backlog).max(0);
        let remaining = u64::try_from(free / interval).unwrap_or(0).min(requests);
        let reset_ns = if remaining == 0 {
            backlog + interval - window
        } else {
            backlog
        };
        (
            remaining,
            u64::try_from((reset_ns.max(0) + NANOS_PER_MS - 1) / NANOS_PER_MS).unwrap_or(0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = NANOS_PER_MS;

    fn admit(g: &mut Gcra, requests: u64, window_ms: u64, now_ms: i64) -> bool {
        match g.check(requests, window_ms, now_ms * MS) {
            GcraDecision::Allow { new_tat_ns } => {
                g.commit(new_tat_ns);
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
            g.check(5, 1000, now * MS),
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
        assert_eq!(g.remaining(5, 1000, 1000 * MS), (5, 0));
    }

    #[test]
    fn limits_above_one_per_millisecond_keep_their_burst() {
        // Regression: with millisecond resolution the interval rounded up to 1 ms, capping every
        // limit at 1000 per second (a limit of 5000/s admitted only 1000).
        let mut g = Gcra::default();
        let admitted = (0..5000).filter(|_| admit(&mut g, 5000, 1000, 0)).count();
        assert_eq!(admitted, 5000);
        assert!(!admit(&mut g, 5000, 1000, 0));
        let mut g = Gcra::default();
        assert_eq!(
            (0..200_000)
                .filter(|_| admit(&mut g, 100_000_000, 1000, 0))
                .count(),
            200_000
        );
    }
}
