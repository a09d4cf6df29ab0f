//! A call's reservation: what it may use, taken from its token and Cost quotas at admission,
//! before the call goes upstream, and replaced by what it used when the response ends.
//!
//! Input: the request body's size times the model's recent input tokens per byte
//! ([`super::estimate`]). Output: the call's own bound (`max_tokens`, ...), at most the plan's
//! `reservation.maxOutputTokens` (which is also the bound of a call that names none); with
//! `estimate: Learned`, lowered to the most the model's last calls used. Cost: those tokens at the
//! model's prices, plus the plan's per-request price.

use rust_decimal::Decimal;
use tollgate_crds::resources::{Metric, ReservationEstimate};

use super::estimate::Estimates;
use super::request::CallRequest;
use super::usage::Usage;
use crate::quota::{Metered, PlanEntry};

/// Why a call cannot be reserved, so is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The call names a model the plan has no price for, and the plan has a Cost quota: it
    /// cannot be charged (never silently free).
    Unpriced(String),
    /// The call names no model, and the plan has a Cost quota.
    NoModel,
}

/// What a call reserves, and what it is charged if no usage is ever reported for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reserved {
    /// Taken from the quotas at admission.
    pub reserved: Metered,
    /// Charged when a successful response ends without a usage report (a stream cut by the
    /// client, a stream that never reports): the call's bound rather than the learned estimate,
    /// so that cutting a stream short never pays less than the call may have cost.
    pub unreported: Metered,
    /// The tokens behind `unreported`.
    pub unreported_tokens: Usage,
}

/// Whether a call naming `model` counts in a Cost quota of the plan: then its tokens must have a
/// price.
pub fn prices_tokens(plan: &PlanEntry, model: Option<&str>) -> bool {
    plan.plan
        .quotas
        .iter()
        .any(|q| q.metric == Metric::Cost && q.counts_model(model))
}

/// Input tokens per byte assumed at least when a call's usage is never reported (English text
/// runs near 0.25; a tenant padding its calls must not lower what a cut stream is charged).
const UNREPORTED_MIN_INPUT_PER_BYTE: f64 = 0.25;

/// The reservation of `tenant`'s call under `plan`; `call` is `None` for a request that
/// generates nothing (not a POST, or a route that reads no tokens): only the per-request price.
pub fn reserve(
    plan: &PlanEntry,
    tenant: &str,
    call: Option<&CallRequest>,
    estimates: &Estimates,
) -> Result<Reserved, Refusal> {
    let pricing = plan.plan.pricing.as_ref();
    let per_request = pricing.and_then(|p| p.per_request).unwrap_or(Decimal::ZERO);
    let Some(call) = call else {
        let only = Metered {
            cost: per_request,
            outside: plan.quotas_outside(None),
            ..Metered::default()
        };
        return Ok(Reserved {
            reserved: only,
            unreported: only,
            unreported_tokens: Usage::default(),
        });
    };
    let model = call.model.as_deref();
    let price = model.and_then(|m| pricing.and_then(|p| p.model(m)));
    if prices_tokens(plan, model) && price.is_none() {
        return Err(model.map_or(Refusal::NoModel, |m| Refusal::Unpriced(m.to_owned())));
    }
    let policy = plan.plan.reservation;
    let bound = call
        .output_bound
        .unwrap_or(policy.max_output_tokens)
        .min(policy.max_output_tokens);
    let learned = model.and_then(|m| estimates.output(tenant, m));
    let output = match (policy.estimate, learned) {
        (ReservationEstimate::Learned, Some(recent)) => recent.min(bound),
        _ => bound,
    };
    let per_byte = estimates.input_per_byte(tenant, model);
    let tokens = |per_byte: f64| (call.body_bytes as f64 * per_byte).ceil() as u64;
    let outside = plan.quotas_outside(model);
    let usage = |input, output| Usage {
        input,
        output,
        ..Usage::default()
    };
    let priced = |usage: Usage| Metered {
        outside,
        ..usage.metered(pricing, price)
    };
    let unreported_tokens = usage(tokens(per_byte.max(UNREPORTED_MIN_INPUT_PER_BYTE)), bound);
    Ok(Reserved {
        reserved: priced(usage(tokens(per_byte), output)),
        unreported: priced(unreported_tokens),
        unreported_tokens,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn plan(reservation: serde_json::Value) -> PlanEntry {
        PlanEntry::from_spec(json!({
            "quotas": [{"name": "budget", "metric": "Cost", "limit": "5", "period": "Month"}],
            "pricing": {"currency": "USD", "perRequest": "0.001",
                        "models": [{"model": "gpt-4o", "inputPerMillionTokens": "2.5", "outputPerMillionTokens": "10"}]},
            "reservation": reservation}))
    }

    fn call(model: Option<&str>, bound: Option<u64>, bytes: usize) -> CallRequest {
        CallRequest {
            model: model.map(str::to_owned),
            output_bound: bound,
            body_bytes: bytes,
            ..CallRequest::default()
        }
    }

    fn tokens(m: Metered) -> (u64, u64) {
        (m.input_tokens, m.output_tokens)
    }

    #[test]
    fn bound_clamped_by_the_plan_and_learned_from_the_tenants_recent_calls() {
        let estimates = Estimates::new();
        let capped = plan(json!({"maxOutputTokens": 1000}));
        let reserve = |tenant: &str, c: &CallRequest| {
            reserve(&capped, tenant, Some(c), &estimates).expect("priced")
        };
        // No history: the request's bound, clamped to 1000; 200 bytes at 0.5 tokens per byte.
        let r = reserve("shop/a", &call(Some("gpt-4o"), Some(5000), 200));
        assert_eq!(tokens(r.reserved), (100, 1000));
        // 0.001 + 100 * 2.5/1e6 + 1000 * 10/1e6
        assert_eq!(
            r.reserved.cost,
            "0.01125".parse::<Decimal>().expect("decimal")
        );
        assert_eq!(r.unreported, r.reserved);
        // No bound named: the plan's.
        let r = reserve("shop/a", &call(Some("gpt-4o"), None, 0));
        assert_eq!(r.reserved.output_tokens, 1000);
        // Learned: this tenant's recent calls used at most 40 output tokens, 0.1 tokens per byte.
        estimates.learn("shop/a", "gpt-4o", 200, 20, 40);
        let r = reserve("shop/a", &call(Some("gpt-4o"), Some(5000), 200));
        assert_eq!(tokens(r.reserved), (20, 40));
        // Unreported usage is charged the bound, the input at no less than 0.25 per byte.
        assert_eq!(tokens(r.unreported), (50, 1000));
        // Another tenant's history does not lower this one's (nor the other way round).
        let r = reserve("shop/b", &call(Some("gpt-4o"), Some(5000), 200));
        assert_eq!(tokens(r.reserved), (100, 1000));
        // Never more than the call's own bound.
        let r = reserve("shop/a", &call(Some("gpt-4o"), Some(10), 0));
        assert_eq!(r.reserved.output_tokens, 10);
        // Bound: the learned history is not used.
        let worst = plan(json!({"estimate": "Bound"}));
        let r = super::reserve(
            &worst,
            "shop/a",
            Some(&call(Some("gpt-4o"), None, 0)),
            &estimates,
        )
        .expect("priced");
        assert_eq!(
            r.reserved.output_tokens, 4096,
            "the default maxOutputTokens"
        );
    }

    #[test]
    fn an_unpriced_or_unnamed_model_is_refused_under_a_cost_quota_only() {
        let estimates = Estimates::new();
        let cost = plan(json!({}));
        let refused = reserve(
            &cost,
            "t",
            Some(&call(Some("mystery"), None, 10)),
            &estimates,
        );
        assert_eq!(refused, Err(Refusal::Unpriced("mystery".into())));
        let unnamed = reserve(&cost, "t", Some(&call(None, None, 10)), &estimates);
        assert_eq!(unnamed, Err(Refusal::NoModel));
        let tokens_only = PlanEntry::from_spec(json!({
            "quotas": [{"name": "t", "metric": "TotalTokens", "limit": "5000", "period": "Day"}]}));
        let r = reserve(
            &tokens_only,
            "t",
            Some(&call(Some("mystery"), Some(7), 0)),
            &estimates,
        )
        .expect("no prices needed");
        assert_eq!(
            (r.reserved.output_tokens, r.reserved.cost),
            (7, Decimal::ZERO)
        );
        // A request that generates nothing reserves the per-request price only.
        let r = reserve(&cost, "t", None, &estimates).expect("nothing to price");
        assert_eq!(
            r.reserved,
            Metered {
                cost: "0.001".parse().expect("decimal"),
                ..Metered::default()
            }
        );
    }
}
