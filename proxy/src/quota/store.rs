//! The [`CounterStore`] trait the stores implement, and whose counters they keep ([`Subject`]).

use std::future::Future;
use std::sync::Arc;

use super::decision::{Admission, LimitState, Metered};
use super::plan::PlanEntry;
use jiff::Timestamp;

/// Whose counters: a tenant under one plan.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    /// The tenant's id (`namespace/name`).
    pub tenant: &'a Arc<str>,
    /// The plan that applies to this request (the subscription's, or the tenant's default).
    pub plan: &'a PlanEntry,
}

/// One counter, for `/usage`, persistence and the operator's status roll-ups (the wire type of
/// usage reports).
pub use tollgate_crds::stream::UsageRecord as UsageRow;

/// Where counters live.
pub trait CounterStore: Send + Sync + 'static {
    /// Checks the plan's quotas, then its rate limits, and if all pass charges one request to
    /// Requests quotas and `reservation` to token and Cost quotas. A token or Cost quota admits
    /// while it is not used up and the reservation fits in what is left.
    fn admit(
        &self,
        subject: Subject<'_>,
        now: Timestamp,
        reservation: &Metered,
    ) -> impl Future<Output = Admission> + Send;

    /// The current states without charging (for RateLimit headers on responses that were refused
    /// before the quota check: 403, billing 402s).
    fn peek(
        &self,
        subject: Subject<'_>,
        now: Timestamp,
    ) -> impl Future<Output = (Vec<LimitState>, Vec<LimitState>)> + Send;

    /// Gives back what `admit` charged (the proxy failed the request: 502/504): the request and
    /// the reservation. `now` is when it was admitted: a period that has ended since is not
    /// touched.
    fn refund(
        &self,
        subject: Subject<'_>,
        reservation: &Metered,
        now: Timestamp,
    ) -> impl Future<Output = ()> + Send;

    /// Replaces a call's reservation with what it used, in the token and Cost quotas of the
    /// period of `now`, when the call was admitted (a response may end in the next period).
    fn settle(
        &self,
        subject: Subject<'_>,
        reserved: &Metered,
        used: &Metered,
        now: Timestamp,
    ) -> impl Future<Output = ()> + Send;

    /// Charges usage that nothing reserved.
    fn charge(
        &self,
        subject: Subject<'_>,
        used: Metered,
        now: Timestamp,
    ) -> impl Future<Output = ()> + Send {
        // Counted in the quotas that count the call, as a reservation would have been.
        let nothing = Metered {
            outside: used.outside,
            ..Metered::default()
        };
        async move { self.settle(subject, &nothing, &used, now).await }
    }

    /// Current counters.
    fn usage(&self) -> Vec<UsageRow>;
}
