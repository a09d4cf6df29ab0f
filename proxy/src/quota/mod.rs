//! The quota engine: calendar quotas (402) and rate limits (429) per (tenant, plan).
//!
//! Counters are per (tenant, plan, quota): every route a tenant calls under the same plan draws on
//! the same allowance. They live behind [`CounterStore`] so the hot path does not care whether they
//! are in memory (standalone) or shared through Redis (fleet).
//!
//! Semantics, whatever the store:
//! - Quotas are checked before rate limits; a request is charged only if every check passes, and
//!   check-and-charge is atomic per (tenant, plan): concurrent requests never overshoot a limit.
//! - A Requests quota admits while `used + 1 <= limit`; token and Cost quotas, charged after the
//!   response, admit while `used < limit` (the last request may overshoot by its own usage).
//! - Counters key on the period's start; a new period starts from zero.

pub mod gcra;
pub mod memory;
pub mod persist;

use std::future::Future;

use jiff::Timestamp;
use rust_decimal::Decimal;
use tollgate_crds::period::PeriodWindow;

use crate::config::{PlanEntry, TenantEntry};

pub use memory::MemoryStore;

/// Whose counters: a tenant under one plan.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    /// The tenant.
    pub tenant: &'a TenantEntry,
    /// The plan that applies to this request (the subscription's, or the tenant's default).
    pub plan: &'a PlanEntry,
}

/// The state of one limit after a decision, for RateLimit headers and problem bodies.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitState {
    /// Index into the plan's `rate_limits` or `quotas`.
    pub index: usize,
    /// Units left (requests for rate limits and Requests quotas).
    pub remaining: Decimal,
    /// Units used in the current window or period.
    pub used: Decimal,
    /// Seconds until the limit resets (rate limits: until a request is allowed when none remain).
    pub reset_seconds: u64,
    /// The calendar period, for quotas.
    pub window: Option<PeriodWindow>,
}

/// The outcome of an admission check.
#[derive(Clone, Debug, PartialEq)]
pub enum Admission {
    /// Admitted and charged one request.
    Admitted {
        /// Rate limit states.
        rate_limits: Vec<LimitState>,
        /// Quota states.
        quotas: Vec<LimitState>,
    },
    /// A quota is exhausted (402).
    QuotaExhausted {
        /// The exhausted quota.
        exhausted: LimitState,
        /// All rate limit states (for headers).
        rate_limits: Vec<LimitState>,
        /// All quota states (for headers).
        quotas: Vec<LimitState>,
    },
    /// A rate limit is exceeded (429).
    RateLimited {
        /// The exceeded limit; `reset_seconds` is the Retry-After.
        exceeded: LimitState,
        /// All rate limit states.
        rate_limits: Vec<LimitState>,
        /// All quota states.
        quotas: Vec<LimitState>,
    },
    /// The counter store cannot be reached and the plan is FailClosed (503).
    StoreUnavailable,
}

/// Usage metered from a backend response, charged to token and Cost quotas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Metered {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Cost in the plan's currency.
    pub cost: Decimal,
}

/// One counter, for `/usage`, persistence and the operator's status roll-ups (the wire type of
/// usage reports).
pub use tollgate_crds::stream::UsageRecord as UsageRow;

/// Where counters live.
pub trait CounterStore: Send + Sync + 'static {
    /// Checks the plan's quotas, then its rate limits, and charges one request if all pass.
    fn admit(&self, subject: Subject<'_>, now: Timestamp)
    -> impl Future<Output = Admission> + Send;

    /// The current states without charging (for RateLimit headers on responses that were refused
    /// before the quota check: 403, billing 402s).
    fn peek(
        &self,
        subject: Subject<'_>,
        now: Timestamp,
    ) -> impl Future<Output = (Vec<LimitState>, Vec<LimitState>)> + Send;

    /// Gives back the request charged by `admit` (the proxy failed it: 502/504).
    fn refund(&self, subject: Subject<'_>, now: Timestamp) -> impl Future<Output = ()> + Send;

    /// Charges metered usage to the token and Cost quotas.
    fn charge(
        &self,
        subject: Subject<'_>,
        metered: Metered,
        now: Timestamp,
    ) -> impl Future<Output = ()> + Send;

    /// Current counters.
    fn usage(&self) -> Vec<UsageRow>;
}
pub mod redis;
