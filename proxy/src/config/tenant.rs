//! A tenant as the request path sees it: its id, header value and the plan of each subscription.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderValue;
use tollgate_crds::snapshot::{ObjectKey, Tenant};

use crate::fast_map::FastMap;
use crate::quota::PlanEntry;

/// A tenant with its plans resolved.
#[derive(Debug)]
pub struct TenantEntry {
    /// The compiled tenant.
    pub tenant: Tenant,
    /// `namespace/name`, also the `X-Tollgate-Tenant` value.
    pub id: Arc<str>,
    /// `X-Tollgate-Tenant` header value.
    pub header: HeaderValue,
    /// The default plan.
    pub plan: Option<Arc<PlanEntry>>,
    /// Subscribed route name -> plan for that route (the subscription's own, or the default).
    pub subscriptions: FastMap<String, Option<Arc<PlanEntry>>>,
}

impl TenantEntry {
    /// Resolves `tenant`'s plans.
    pub fn new(tenant: Tenant, plans: &HashMap<ObjectKey, Arc<PlanEntry>>) -> Self {
        let id: Arc<str> = Arc::from(tenant.key.to_string());
        let header =
            HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        let plan = tenant.plan.as_ref().and_then(|k| plans.get(k).cloned());
        let subscriptions = tenant
            .subscriptions
            .iter()
            .map(|s| {
                let sub_plan = match &s.plan {
                    Some(k) => plans.get(k).cloned(),
                    None => plan.clone(),
                };
                (s.route.clone(), sub_plan)
            })
            .collect();
        Self {
            tenant,
            id,
            header,
            plan,
            subscriptions,
        }
    }
}
