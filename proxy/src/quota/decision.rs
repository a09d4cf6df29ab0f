//! A counter store's answer: the state of each limit, and whether the request is admitted.

use rust_decimal::Decimal;
use tollgate_crds::period::PeriodWindow;
use tollgate_crds::resources::Metric;

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
    /// A quota is exhausted, or the call's reservation does not fit in what is left (402).
    QuotaExhausted {
        /// The exhausted quota.
        exhausted: LimitState,
        /// What the call needed from it: one request, or its reservation.
        needed: Decimal,
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

/// Usage of a call for token and Cost quotas: reserved at admission, or metered from the
/// backend's response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Metered {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Cost in the plan's currency.
    pub cost: Decimal,
    /// The plan's quotas (bit `i` for `quotas[i]`) that do not count this request: quotas for
    /// other models. They neither take a share of it nor refuse it.
    pub outside: u16,
}

// One bit of `Metered::outside` per quota.
const _: () = assert!(tollgate_crds::compile::MAX_QUOTAS <= 16);

impl Metered {
    /// Whether quota `index` of the plan counts this request.
    pub fn counts_in(&self, index: usize) -> bool {
        index >= 16 || self.outside & (1 << index) == 0
    }

    /// What this request takes from quota `index`, of `metric`: `None` when that quota does not
    /// count it, one for a Requests quota, else its amount.
    pub fn share(&self, index: usize, metric: Metric) -> Option<Decimal> {
        self.counts_in(index)
            .then(|| self.amount(metric).unwrap_or(Decimal::ONE))
    }

    /// No tokens and no cost.
    pub fn is_nothing(&self) -> bool {
        self.input_tokens == 0 && self.output_tokens == 0 && self.cost.is_zero()
    }

    /// What this usage counts in a quota of `metric` (`None` for Requests quotas, which count
    /// admissions).
    pub fn amount(&self, metric: Metric) -> Option<Decimal> {
        Some(match metric {
            Metric::Requests => return None,
            Metric::InputTokens => Decimal::from(self.input_tokens),
            Metric::OutputTokens => Decimal::from(self.output_tokens),
            Metric::TotalTokens => {
                Decimal::from(self.input_tokens) + Decimal::from(self.output_tokens)
            }
            Metric::Cost => self.cost,
        })
    }
}
