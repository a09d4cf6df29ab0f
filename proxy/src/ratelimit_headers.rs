//! `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers) as RFC 9651
//! Structured Field lists, one item per request-counted policy: each rate limit, then each quota
//! with metric Requests. For a calendar quota `w` is the current period's length in seconds.

use std::fmt::Write;

use http::HeaderValue;
use rust_decimal::prelude::ToPrimitive;

use crate::config::PlanEntry;
use crate::quota::LimitState;

/// The two header values, or `None` when the plan has no request-counted limit.
pub fn headers(
    plan: &PlanEntry,
    rate_limits: &[LimitState],
    quotas: &[LimitState],
) -> Option<(HeaderValue, HeaderValue)> {
    let mut policy = String::new();
    let mut state = String::new();
    for s in rate_limits {
        let Some(rl) = plan.plan.rate_limits.get(s.index) else {
            continue;
        };
        let sep = if policy.is_empty() { "" } else { ", " };
        let _ = write!(
            policy,
            "{sep}\"{}\";q={};w={}",
            rl.name,
            rl.requests,
            (rl.window_ms / 1000).max(1)
        );
        let _ = write!(
            state,
            "{sep}\"{}\";r={};t={}",
            rl.name,
            whole(&s.remaining),
            s.reset_seconds
        );
    }
    for &i in &plan.request_quotas {
        let (Some(q), Some(s)) = (plan.plan.quotas.get(i), quotas.get(i)) else {
            continue;
        };
        let w = s.window.map_or(0, |w| w.length_seconds());
        let sep = if policy.is_empty() { "" } else { ", " };
        let _ = write!(policy, "{sep}\"{}\";q={};w={w}", q.name, whole(&q.limit));
        let _ = write!(
            state,
            "{sep}\"{}\";r={};t={}",
            q.name,
            whole(&s.remaining),
            s.reset_seconds
        );
    }
    if policy.is_empty() {
        return None;
    }
    Some((
        HeaderValue::from_str(&policy).ok()?,
        HeaderValue::from_str(&state).ok()?,
    ))
}

fn whole(d: &rust_decimal::Decimal) -> u64 {
    d.trunc().to_u64().unwrap_or(0)
}
