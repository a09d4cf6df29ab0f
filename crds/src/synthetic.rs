//! Synthetic configurations of a given size, for benchmarks and memory checks (10,000 tenants and
//! 1,000 routes is the reference size).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::resources::{
    ApiKeyRef, ApiRoute, ApiRouteSpec, Backend, LocalObjectReference, Period, Quota, QuotaPolicy,
    QuotaPolicySpec, RateLimit, RouteMatch, SecretKeyRef, Subscription, Tenant, TenantSpec,
};

/// Objects of a synthetic configuration.
#[derive(Debug, Default)]
pub struct Synthetic {
    /// Routes `route-00000`.. on `/api/NNNNN`.
    pub routes: Vec<ApiRoute>,
    /// Tenants `tenant-00000`.., each subscribed to [`Shape::subscriptions`] routes, keys
    /// `key-tenant-NNNNN` (and `key-tenant-NNNNN-K` for more keys than one).
    pub tenants: Vec<Tenant>,
    /// Plans `plan-0`..`plan-9`.
    pub plans: Vec<QuotaPolicy>,
    /// One key Secret per tenant, or one for all ([`Shape::one_secret`]).
    pub secrets: Vec<Secret>,
}

/// The size and shape of a synthetic world.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Tenants.
    pub tenants: usize,
    /// Routes.
    pub routes: usize,
    /// Routes each tenant subscribes to (at most `routes`).
    pub subscriptions: usize,
    /// API keys per tenant.
    pub keys: usize,
    /// Every key in one Secret, not a Secret per tenant.
    pub one_secret: bool,
}

impl Shape {
    /// `tenants` tenants and `routes` routes; 3 subscriptions and a key Secret per tenant.
    pub fn new(tenants: usize, routes: usize) -> Self {
        Self {
            tenants,
            routes,
            subscriptions: 3,
            keys: 1,
            one_secret: false,
        }
    }
}

fn meta(namespace: &str, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.to_owned()),
        ..Default::default()
    }
}

/// `tenants` tenants and `routes` routes in `namespace`, with 10 plans ([`Shape::new`]).
pub fn synthetic(namespace: &str, tenants: usize, routes: usize) -> Synthetic {
    synthetic_shaped(namespace, &Shape::new(tenants, routes))
}

/// A world of `shape` in `namespace`, with 10 plans.
pub fn synthetic_shaped(namespace: &str, shape: &Shape) -> Synthetic {
    let (tenants, routes) = (shape.tenants, shape.routes);
    let mut s = Synthetic::default();
    let mut shared_keys = BTreeMap::new();
    for i in 0..10 {
        s.plans.push(QuotaPolicy {
            metadata: meta(namespace, format!("plan-{i}")),
            spec: QuotaPolicySpec {
                rate_limits: vec![RateLimit {
                    name: "per-second".into(),
                    requests: 10 + i,
                    window: "1s".into(),
                }],
                quotas: vec![Quota {
                    name: "monthly-requests".into(),
                    metric: Default::default(),
                    limit: format!("{}", 1000 * (i + 1)),
                    period: Period::Month,
                    models: vec![],
                    alert_at: vec![],
                    meter_event_name: None,
                    when_exhausted: Default::default(),
                    overage_meter_event_name: None,
                }],
                timezone: "UTC".into(),
                ..Default::default()
            },
            status: None,
        });
    }
    for i in 0..routes {
        s.routes.push(ApiRoute {
            metadata: meta(namespace, format!("route-{i:05}")),
            spec: ApiRouteSpec {
                route_match: RouteMatch {
                    path_prefix: Some(format!("/api/{i:05}")),
                    ..Default::default()
                },
                backend: Backend {
                    url: Some("http://127.0.0.1:9000".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
            status: None,
        });
    }
    for i in 0..tenants {
        let name = format!("tenant-{i:05}");
        // Key k of the tenant: its Secret entry and value.
        let key = |k: usize| match k {
            0 => (name.clone(), format!("key-{name}")),
            k => (format!("{name}-{k}"), format!("key-{name}-{k}")),
        };
        let mut api_keys = Vec::new();
        let mut own_keys = BTreeMap::new();
        for k in 0..shape.keys {
            let (entry, value) = key(k);
            let secret_ref = if shape.one_secret {
                shared_keys.insert(entry.clone(), value);
                SecretKeyRef {
                    name: SHARED_SECRET.into(),
                    key: entry,
                }
            } else {
                // The first key keeps the entry name the earlier worlds used.
                let entry = if k == 0 { "apiKey".to_owned() } else { entry };
                own_keys.insert(entry.clone(), value);
                SecretKeyRef {
                    name: format!("{name}-key"),
                    key: entry,
                }
            };
            api_keys.push(ApiKeyRef { secret_ref });
        }
        if !shape.one_secret {
            s.secrets
                .push(key_secret(namespace, format!("{name}-key"), own_keys));
        }
        let subscriptions = (0..shape.subscriptions.min(routes))
            .map(|k| Subscription {
                api_route_ref: LocalObjectReference::new(format!(
                    "route-{:05}",
                    (i * 3 + k) % routes.max(1)
                )),
                quota_policy_ref: None,
            })
            .collect();
        s.tenants.push(Tenant {
            metadata: meta(namespace, name.clone()),
            spec: TenantSpec {
                quota_policy_ref: Some(LocalObjectReference::new(format!("plan-{}", i % 10))),
                api_keys,
                subscriptions,
                ..Default::default()
            },
            status: None,
        });
    }
    if shape.one_secret {
        s.secrets
            .push(key_secret(namespace, SHARED_SECRET.into(), shared_keys));
    }
    s
}

/// The Secret holding every key of a [`Shape::one_secret`] world.
const SHARED_SECRET: &str = "tenant-keys";

/// A Secret of API keys (labelled as the operator selects them).
fn key_secret(namespace: &str, name: String, keys: BTreeMap<String, String>) -> Secret {
    let mut metadata = meta(namespace, name);
    metadata.labels = Some(BTreeMap::from([(
        "tollgate.dev/api-key".to_owned(),
        "true".to_owned(),
    )]));
    Secret {
        metadata,
        string_data: Some(keys),
        ..Default::default()
    }
}

impl Synthetic {
    /// The objects as `compile` input.
    pub fn objects(&self) -> crate::compile::Objects<'_> {
        crate::compile::Objects {
            routes: self.routes.iter().collect(),
            tenants: self.tenants.iter().collect(),
            plans: self.plans.iter().collect(),
            secrets: self.secrets.iter().collect(),
        }
    }

    /// All objects as one multi-document YAML stream (for standalone mode).
    pub fn to_yaml(&self) -> Result<String, SyntheticYamlError> {
        let mut out = String::new();
        let mut push = |value: serde_json::Value| -> Result<(), SyntheticYamlError> {
            out.push_str("---\n");
            out.push_str(&serde_saphyr::to_string_with_options(
                &value,
                crate::yaml_style(),
            )?);
            Ok(())
        };
        for p in &self.plans {
            push(serde_json::to_value(p)?)?;
        }
        for r in &self.routes {
            push(serde_json::to_value(r)?)?;
        }
        for t in &self.tenants {
            push(serde_json::to_value(t)?)?;
        }
        for sec in &self.secrets {
            let mut v = serde_json::to_value(sec)?;
            if let Some(m) = v.as_object_mut() {
                m.insert("apiVersion".into(), "v1".into());
                m.insert("kind".into(), "Secret".into());
            }
            push(v)?;
        }
        Ok(out)
    }
}

/// Why a synthetic world could not be written as YAML.
#[derive(Debug, thiserror::Error)]
pub enum SyntheticYamlError {
    /// An object did not convert to a JSON value.
    #[error("converting an object: {0}")]
    Value(#[from] serde_json::Error),
    /// The YAML writer failed.
    #[error("writing YAML: {0}")]
    Yaml(#[from] serde_saphyr::SerializeError),
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_synthetic_world_compiles_without_diagnostics() {
        let s = super::synthetic("bench", 100, 20);
        let c = crate::compile(&s.objects());
        assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
        assert_eq!(
            (
                c.snapshot.tenants.len(),
                c.snapshot.routes.len(),
                c.snapshot.plans.len()
            ),
            (100, 20, 10)
        );
    }
}
