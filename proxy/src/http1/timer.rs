//! One timer per connection for all its waits, moved as rarely as possible.
//!
//! `tokio::time::timeout` per request inserts a timer into the wheel and removes it again: at
//! tens of thousands of requests a second that, with the clock reads around it, was ~5% of the
//! proxy's user-space time. A [`LazyTimer`] stays in the wheel across waits. A wait moves it only
//! when it would fire too late for that wait; when it fires too early (it was set for an earlier
//! wait), the clock is read and it is moved once. A busy connection whose waits all have the same
//! limit touches the wheel about once per limit, not once per request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// A connection's timer.
#[derive(Debug)]
pub struct LazyTimer(Pin<Box<Sleep>>);

impl LazyTimer {
    /// A timer first set for `due`.
    pub fn new(due: Instant) -> Self {
        Self(Box::pin(tokio::time::sleep_until(due)))
    }

    /// Ready once `due` has passed.
    pub fn poll_due(&mut self, due: Instant, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.deadline() > due {
            self.0.as_mut().reset(due);
        }
        loop {
            match self.0.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if Instant::now() >= due => return Poll::Ready(()),
                Poll::Ready(()) => self.0.as_mut().reset(due),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_at_each_waits_own_due_time() {
        let start = Instant::now();
        let mut timer = LazyTimer::new(start + Duration::from_secs(1));
        // A later due time than the one set: the early firing is absorbed, not reported.
        let due = start + Duration::from_secs(3);
        std::future::poll_fn(|cx| timer.poll_due(due, cx)).await;
        assert_eq!(Instant::now(), due);
        // An earlier due time than the one set: the timer is moved forward.
        let due = Instant::now() + Duration::from_millis(10);
        std::future::poll_fn(|cx| timer.poll_due(due, cx)).await;
        assert_eq!(Instant::now(), due);
        // A due time already past: ready at once.
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(timer.poll_due(start, &mut cx).is_ready());
    }
}
