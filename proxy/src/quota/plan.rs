//! A plan as the counters and the RateLimit headers use it, built once per configuration version.

use std::sync::Arc;

use jiff::tz::TimeZone;
use tollgate_crds::resources::Metric;
use tollgate_crds::snapshot::Plan;

use super::headers;

/// A plan and its parsed time zone.
#[derive(Debug)]
pub struct PlanEntry {
    /// The compiled plan.
    pub plan: Plan,
    /// `namespace/name`.
    pub id: Arc<str>,
    /// The plan's time zone (validated by compile; UTC if it somehow fails).
    pub tz: TimeZone,
    /// Indexes into `plan.quotas` of quotas that count requests (charged on admission and shown in
    /// RateLimit headers).
    pub request_quotas: Vec<usize>,
    /// Whether responses must be metered: a token or Cost quota is charged after the response.
    pub meters_usage: bool,
    /// Quotas for some models only (bit `i` for `quotas[i]`): a request that is not a call to
    /// one of their models is outside them.
    pub model_quotas: u16,
    /// Whether admission must read what a call asks for (its model, its bound): the plan meters
    /// usage, allows some models only, or has quotas for some models.
    pub reads_calls: bool,
    /// The RateLimit headers' fixed parts.
    pub ratelimit_headers: headers::Template,
}

impl PlanEntry {
    /// Precomputes what the hot path needs from `plan`.
    pub fn new(plan: Plan) -> Self {
        let tz = TimeZone::get(&plan.timezone).unwrap_or(TimeZone::UTC);
        let request_quotas: Vec<usize> = plan
            .quotas
            .iter()
            .enumerate()
            .filter(|(_, q)| q.metric == Metric::Requests)
            .map(|(i, _)| i)
            .collect();
        let meters_usage = plan.quotas.iter().any(|q| q.metric != Metric::Requests);
        let model_quotas = plan
            .quotas
            .iter()
            .enumerate()
            .filter(|(i, q)| !q.models.is_empty() && *i < 16)
            .fold(0u16, |mask, (i, _)| mask | 1 << i);
        let reads_calls = meters_usage || model_quotas != 0 || !plan.allowed_models.is_empty();
        // The headers describe what every request counts in: quotas for some models are named
        // in the problem that refuses a call, not on every response.
        let every_request: Vec<usize> = request_quotas
            .iter()
            .copied()
            .filter(|&i| plan.quotas[i].models.is_empty())
            .collect();
        let ratelimit_headers = headers::Template::new(&plan, &every_request);
        Self {
            ratelimit_headers,
            id: Arc::from(plan.key.to_string()),
            plan,
            tz,
            request_quotas,
            meters_usage,
            model_quotas,
            reads_calls,
        }
    }

    /// The quotas that do not count a call naming `model` (`None`: a request that names none,
    /// or is not a call), as [`super::Metered::outside`].
    pub fn quotas_outside(&self, model: Option<&str>) -> u16 {
        if self.model_quotas == 0 {
            return 0;
        }
        self.plan
            .quotas
            .iter()
            .enumerate()
            .filter(|(i, q)| *i < 16 && self.model_quotas & (1 << i) != 0 && !q.counts_model(model))
            .fold(0u16, |mask, (i, _)| mask | 1 << i)
    }
}

#[cfg(test)]
impl PlanEntry {
    /// A plan compiled from a QuotaPolicy spec (namespace `shop`, name `plan`), as the proxy
    /// builds it from a snapshot.
    pub(crate) fn from_spec(spec: serde_json::Value) -> Self {
        use tollgate_crds::compile::{Objects, compile};
        let policy: tollgate_crds::resources::QuotaPolicy =
            serde_json::from_value(serde_json::json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "QuotaPolicy",
            "metadata": {"name": "plan", "namespace": "shop"}, "spec": spec}))
            .expect("a valid QuotaPolicy");
        let compiled = compile(&Objects {
            plans: vec![&policy],
            ..Objects::default()
        });
        assert!(
            compiled.diagnostics.is_empty(),
            "{:?}",
            compiled.diagnostics
        );
        Self::new(compiled.snapshot.plans[0].clone())
    }
}
