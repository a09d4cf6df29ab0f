//! A call's reservation: what it may use, taken from its token and Cost quotas at admission,
//! before the call goes upstream, and replaced by what it used when the response ends.
//!
//! Input: the request body's size times the model's recent input tokens per byte
//! ([`super::estimate`]). Output: the call's own bound (`max_tokens`, ...), at most the plan's
//! `reservation.maxOutputTokens` (which is also the bound of a call that names none); with
//! `estimate: Learned`, lowered to the most the model's last calls used. Cost: those tokens at the
//! model's prices, plus the plan's per-request price.

use rust_decimal::Decimal;
use tollgate_crds::resources::{Metering, Metric, ReservationEstimate};

use super::estimate::Estimates;
use super::request::CallRequest;
use super::usage::Usage;
use crate::quota::{Metered, PlanEntry};

/// The call names a model the plan has no price for, and the plan has a Cost quota: it cannot be
/// charged, so it is not served (never silently free).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpriced {
    /// The model named.
    pub model: String,
}

/// Whether the plan counts money: then every token must have a price.
pub fn prices_tokens(plan: &PlanEntry) -> bool {
    plan.plan.quotas.iter().any(|q| q.metric == Metric::Cost)
}

/// The reservation for a call on a route metered as `metering` under `plan`; `call` is `None`
/// when the route reads no tokens (only the per-request price is reserved).
pub fn reserve(
    plan: &PlanEntry,
    metering: Metering,
    call: Option<&CallRequest>,
    estimates: &Estimates,
) -> Result<Metered, Unpriced> {
    let pricing = plan.plan.pricing.as_ref();
    let per_request = pricing.and_then(|p| p.per_request).unwrap_or(Decimal::ZERO);
    let Some(call) = call.filter(|_| metering.reads_tokens()) else {
        return Ok(Metered {
            cost: per_request,
            ..Metered::default()
        });
    };
    let model = call.model.as_deref();
    let price = model.and_then(|m| pricing.and_then(|p| p.model(m)));
    if let Some(model) = model
        && price.is_none()
        && prices_tokens(plan)
    {
        return Err(Unpriced {
            model: model.to_owned(),
        });
    }
    let policy = plan.plan.reservation;
    let bound = call
        .output_bound
        .unwrap_or(policy.max_output_tokens)
        .min(policy.max_output_tokens);
    let output = match (policy.estimate, model.and_then(|m| estimates.output(m))) {
        (ReservationEstimate::Learned, Some(recent)) => recent.min(bound),
        _ => bound,
    };
    let input = (call.body_bytes as f64 * estimates.input_per_byte(model)).ceil() as u64;
    let usage = Usage {
        input,
        output,
        ..Usage::default()
    };
    Ok(usage.metered(pricing, price))
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

    #[test]
    fn bound_clamped_by_the_plan_and_learned_from_recent_calls() {
        let estimates = Estimates::new();
        let capped = plan(json!({"maxOutputTokens": 1000}));
        let reserve = |c: &CallRequest| reserve(&capped, Metering::OpenAI, Some(c), &estimates);
        // No history: the request's bound, clamped to 1000; 200 bytes at 0.5 tokens per byte.
        let r = reserve(&call(Some("gpt-4o"), Some(5000), 200)).expect("priced");
        assert_eq!((r.input_tokens, r.output_tokens), (100, 1000));
        // 0.001 + 100 * 2.5/1e6 + 1000 * 10/1e6
        assert_eq!(r.cost, "0.01125".parse::<Decimal>().expect("decimal"));
        // No bound named: the plan's.
        assert_eq!(
            reserve(&call(Some("gpt-4o"), None, 0))
                .expect("priced")
                .output_tokens,
            1000
        );
        // Learned: recent calls used at most 40 output tokens and 0.25 tokens per byte.
        estimates.learn("gpt-4o", 200, 50, 40);
        let r = reserve(&call(Some("gpt-4o"), Some(5000), 200)).expect("priced");
        assert_eq!((r.input_tokens, r.output_tokens), (50, 40));
        // Never more than the call's own bound.
        assert_eq!(
            reserve(&call(Some("gpt-4o"), Some(10), 0))
                .expect("priced")
                .output_tokens,
            10
        );
        // Bound: the learned history is not used.
        let worst = plan(json!({"estimate": "Bound"}));
        let r = super::reserve(
            &worst,
            Metering::OpenAI,
            Some(&call(Some("gpt-4o"), None, 0)),
            &estimates,
        )
        .expect("priced");
        assert_eq!(r.output_tokens, 4096, "the default maxOutputTokens");
    }

    #[test]
    fn an_unpriced_model_is_refused_under_a_cost_quota_only() {
        let estimates = Estimates::new();
        let refused = reserve(
            &plan(json!({})),
            Metering::OpenAI,
            Some(&call(Some("mystery"), None, 10)),
            &estimates,
        );
        assert_eq!(
            refused,
            Err(Unpriced {
                model: "mystery".into()
            })
        );
        let tokens_only = PlanEntry::from_spec(json!({
            "quotas": [{"name": "t", "metric": "TotalTokens", "limit": "5000", "period": "Day"}]}));
        let r = reserve(
            &tokens_only,
            Metering::OpenAI,
            Some(&call(Some("mystery"), Some(7), 0)),
            &estimates,
        )
        .expect("no prices needed");
        assert_eq!((r.output_tokens, r.cost), (7, Decimal::ZERO));
        // A route that reads no tokens reserves the per-request price only.
        let r = reserve(
            &plan(json!({})),
            Metering::Requests,
            Some(&call(Some("mystery"), None, 10)),
            &estimates,
        )
        .expect("no tokens");
        assert_eq!(
            r,
            Metered {
                input_tokens: 0,
                output_tokens: 0,
                cost: "0.001".parse().expect("decimal")
            }
        );
    }
}
