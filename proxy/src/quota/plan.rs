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
        let ratelimit_headers = headers::Template::new(&plan, &request_quotas);
        Self {
            ratelimit_headers,
            id: Arc::from(plan.key.to_string()),
            plan,
            tz,
            request_quotas,
            meters_usage,
        }
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
