//! Who receives which part of a snapshot.
//!
//! - The central proxies (the fleet) receive every route that selects no workload, and every
//!   tenant and plan.
//! - A sidecar receives only the routes whose `workloadSelector` matches its pod, the tenants
//!   subscribed to them (with those subscriptions alone) and their plans: never the fleet's other
//!   routes, nor the keys of tenants that cannot call it. An egress sidecar receives its own
//!   Tenant, without keys: every request it takes on localhost is that tenant's.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use crate::snapshot::{ObjectKey, Route, RouteBackend, Snapshot};
use crate::stream::Delta;

/// A pod with a sidecar, as the operator found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The pod's namespace: only routes and tenants there are its.
    pub namespace: String,
    /// The pod's labels, matched against routes' workload selectors.
    pub labels: BTreeMap<String, String>,
    /// Which way its sidecar faces.
    pub direction: Direction,
}

/// Which way a sidecar faces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Direction {
    /// Guards the pod's API; routes without a backend of their own go to the app on this port of
    /// localhost.
    Ingress {
        /// The app's port.
        app_port: u16,
    },
    /// Meters the app's own calls; they are charged to this Tenant (in the pod's namespace).
    Egress {
        /// The Tenant's name.
        tenant: String,
    },
}

impl Workload {
    /// Whether `route` selects this pod.
    pub fn selects(&self, route: &Route) -> bool {
        route.key.namespace == self.namespace
            && route
                .workload_selector
                .as_ref()
                .is_some_and(|wanted| wanted.iter().all(|(k, v)| self.labels.get(k) == Some(v)))
    }
}

impl Workload {
    /// Whether this workload's sidecar serves `route`: it selects the pod, and it is not a route
    /// back into the app on an egress sidecar (which leads out of the pod).
    pub fn serves(&self, route: &Route) -> bool {
        self.selects(route)
            && !(route.backend == RouteBackend::Workload
                && matches!(self.direction, Direction::Egress { .. }))
    }
}

/// Whether any route is served by sidecars (and so must be kept from the fleet).
fn has_workload_routes(snapshot: &Snapshot) -> bool {
    snapshot
        .routes
        .iter()
        .any(|r| r.workload_selector.is_some())
}

/// What the central proxies receive: the snapshot without the routes sidecars serve. Borrowed
/// when there are none (the common case costs nothing).
pub fn fleet_view(snapshot: &Snapshot) -> Cow<'_, Snapshot> {
    if !has_workload_routes(snapshot) {
        return Cow::Borrowed(snapshot);
    }
    let mut fleet = snapshot.clone();
    fleet.routes.retain(|r| r.workload_selector.is_none());
    Cow::Owned(fleet)
}

/// The fleet's share of `delta`: a route that now selects workloads is removed from the
/// central proxies (removing a route a proxy does not have changes nothing).
pub fn fleet_delta(delta: &Delta) -> Cow<'_, Delta> {
    if delta.routes.iter().all(|r| r.workload_selector.is_none()) {
        return Cow::Borrowed(delta);
    }
    let mut fleet = delta.clone();
    let (sidecar, central): (Vec<Route>, Vec<Route>) = std::mem::take(&mut fleet.routes)
        .into_iter()
        .partition(|r| r.workload_selector.is_some());
    fleet.routes = central;
    fleet
        .removed_routes
        .extend(sidecar.into_iter().map(|r| r.key));
    Cow::Owned(fleet)
}

/// What the sidecar of `workload` receives.
pub fn workload_view(snapshot: &Snapshot, workload: &Workload) -> Snapshot {
    let routes: Vec<Route> = snapshot
        .routes
        .iter()
        .filter(|r| workload.serves(r))
        .map(|r| {
            let mut route = r.clone();
            if let (RouteBackend::Workload, Direction::Ingress { app_port }) =
                (&route.backend, &workload.direction)
            {
                route.backend = RouteBackend::Http {
                    base_url: format!("http://127.0.0.1:{app_port}"),
                };
            }
            route
        })
        .collect();
    let names: HashSet<&str> = routes.iter().map(|r| r.key.name.as_str()).collect();
    let egress_tenant = match &workload.direction {
        Direction::Egress { tenant } => Some(ObjectKey::new(&workload.namespace, tenant)),
        Direction::Ingress { .. } => None,
    };
    let tenants: Vec<_> = snapshot
        .tenants
        .iter()
        .filter(|t| t.key.namespace == workload.namespace)
        .filter(|t| egress_tenant.as_ref().is_none_or(|own| &t.key == own))
        .filter_map(|t| {
            let mut tenant = t.clone();
            tenant
                .subscriptions
                .retain(|s| names.contains(s.route.as_str()));
            if egress_tenant.is_some() {
                // Its requests are told apart by where they come from, not by a key.
                tenant.key_digests.clear();
                return Some(tenant);
            }
            (!tenant.subscriptions.is_empty()).then_some(tenant)
        })
        .collect();
    let plans_used: HashSet<&ObjectKey> = tenants
        .iter()
        .flat_map(|t| {
            t.plan
                .iter()
                .chain(t.subscriptions.iter().filter_map(|s| s.plan.as_ref()))
        })
        .collect();
    let plans = snapshot
        .plans
        .iter()
        .filter(|p| plans_used.contains(&p.key))
        .cloned()
        .collect();
    let workload_tenant = egress_tenant.filter(|own| tenants.iter().any(|t| &t.key == own));
    Snapshot {
        routes,
        tenants,
        plans,
        workload_tenant,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{KeyDigest, Tenant, TenantSubscription};
    use crate::stream::diff;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn route(namespace: &str, name: &str, selector: Option<&[(&str, &str)]>) -> Route {
        Route {
            key: ObjectKey::new(namespace, name),
            generation: 1,
            hosts: Vec::new(),
            path: crate::snapshot::PathMatch::Prefix(format!("/{name}")),
            methods: Vec::new(),
            backend: match selector {
                Some(_) => RouteBackend::Workload,
                None => RouteBackend::Http {
                    base_url: "http://central.svc:80".into(),
                },
            },
            timeout_ms: 1000,
            request_headers: Vec::new(),
            metering: Default::default(),
            approval: Default::default(),
            approved_tenants: Vec::new(),
            rejected_tenants: Vec::new(),
            lifecycle: Default::default(),
            sunset: None,
            deprecated_at: None,
            workload_selector: selector.map(labels),
            caller_api: None,
            models: Default::default(),
            fallbacks: vec![],
            prompt: None,
            websocket: false,
            websocket_idle_ms: crate::snapshot::DEFAULT_WEBSOCKET_IDLE_MS,
            websocket_lifetime_ms: crate::snapshot::DEFAULT_WEBSOCKET_LIFETIME_MS,
            http2: false,
        }
    }

    fn tenant(namespace: &str, name: &str, routes: &[&str]) -> Tenant {
        Tenant {
            key: ObjectKey::new(namespace, name),
            display_name: None,
            key_digests: vec![KeyDigest::of(name.as_bytes())],
            plan: Some(ObjectKey::new(namespace, format!("{name}-plan"))),
            billing_state: Default::default(),
            past_due_grace_until: None,
            paid_through: None,
            subscriptions: routes
                .iter()
                .map(|r| TenantSubscription {
                    route: (*r).to_owned(),
                    plan: None,
                })
                .collect(),
        }
    }

    fn plan(namespace: &str, name: &str) -> crate::snapshot::Plan {
        serde_json::from_value(serde_json::json!({
            "key": {"namespace": namespace, "name": name},
            "rateLimits": [], "quotas": [], "timezone": "UTC", "pricing": null,
            "paymentUrl": null, "failurePolicy": "FailOpen"
        }))
        .expect("a plan")
    }

    /// Two teams' sidecar routes and one central route, in two namespaces.
    fn world() -> Snapshot {
        Snapshot {
            routes: vec![
                route("shop", "reports", Some(&[("app", "reports")])),
                route("shop", "billing", Some(&[("app", "billing")])),
                route("shop", "central", None),
                route("other", "reports", Some(&[("app", "reports")])),
            ],
            tenants: vec![
                tenant("shop", "acme", &["reports", "central"]),
                tenant("shop", "globex", &["billing"]),
                tenant("shop", "team-ml", &["reports"]),
                tenant("other", "acme", &["reports"]),
            ],
            plans: ["acme-plan", "globex-plan", "team-ml-plan"]
                .into_iter()
                .map(|p| plan("shop", p))
                .chain([plan("other", "acme-plan")])
                .collect(),
            workload_tenant: None,
        }
    }

    fn keys<'a, T>(items: &'a [T], key: impl Fn(&'a T) -> &'a ObjectKey) -> Vec<String> {
        items.iter().map(|t| key(t).to_string()).collect()
    }

    #[test]
    fn an_ingress_sidecar_gets_its_routes_their_tenants_and_plans_only() {
        let reports = Workload {
            namespace: "shop".into(),
            labels: labels(&[("app", "reports"), ("tier", "api")]),
            direction: Direction::Ingress { app_port: 8080 },
        };
        let view = workload_view(&world(), &reports);
        assert_eq!(keys(&view.routes, |r| &r.key), ["shop/reports"]);
        assert_eq!(
            view.routes[0].backend,
            RouteBackend::Http {
                base_url: "http://127.0.0.1:8080".into()
            },
            "the app beside it, on localhost"
        );
        assert_eq!(
            keys(&view.tenants, |t| &t.key),
            ["shop/acme", "shop/team-ml"]
        );
        assert_eq!(
            view.tenants[0].subscriptions.len(),
            1,
            "the central route is not its"
        );
        assert!(!view.tenants[0].key_digests.is_empty(), "callers need keys");
        assert_eq!(
            keys(&view.plans, |p| &p.key),
            ["shop/acme-plan", "shop/team-ml-plan"]
        );
        assert_eq!(view.workload_tenant, None);
    }

    #[test]
    fn every_selector_label_must_match() {
        let unlabelled = Workload {
            namespace: "shop".into(),
            labels: labels(&[("tier", "api")]),
            direction: Direction::Ingress { app_port: 8080 },
        };
        assert_eq!(workload_view(&world(), &unlabelled), Snapshot::default());
    }

    #[test]
    fn an_egress_sidecar_gets_its_tenant_without_keys_and_no_route_back_into_its_app() {
        let mut world = world();
        world.routes.push(Route {
            backend: RouteBackend::Http {
                base_url: "https://api.openai.com".into(),
            },
            ..route("shop", "openai", Some(&[("app", "reports")]))
        });
        world.tenants[2].subscriptions.push(TenantSubscription {
            route: "openai".into(),
            plan: None,
        });
        let job = Workload {
            namespace: "shop".into(),
            labels: labels(&[("app", "reports")]),
            direction: Direction::Egress {
                tenant: "team-ml".into(),
            },
        };
        let view = workload_view(&world, &job);
        assert_eq!(keys(&view.routes, |r| &r.key), ["shop/openai"]);
        let reports = world
            .route(&ObjectKey::new("shop", "reports"))
            .expect("route");
        assert!(
            job.selects(reports) && !job.serves(reports),
            "no route back into the app"
        );
        assert_eq!(keys(&view.tenants, |t| &t.key), ["shop/team-ml"]);
        assert!(view.tenants[0].key_digests.is_empty());
        assert_eq!(view.tenants[0].subscriptions.len(), 1);
        assert_eq!(keys(&view.plans, |p| &p.key), ["shop/team-ml-plan"]);
        assert_eq!(
            view.workload_tenant,
            Some(ObjectKey::new("shop", "team-ml"))
        );

        // A Tenant that does not exist (yet) names no identity: every call is 401.
        let nobody = Workload {
            direction: Direction::Egress {
                tenant: "nobody".into(),
            },
            ..job
        };
        let view = workload_view(&world, &nobody);
        assert!(view.tenants.is_empty() && view.workload_tenant.is_none());
    }

    #[test]
    fn the_fleet_never_gets_a_sidecar_route_even_through_a_delta() {
        let world = world();
        let fleet = fleet_view(&world);
        assert_eq!(keys(&fleet.routes, |r| &r.key), ["shop/central"]);
        assert_eq!(fleet.tenants.len(), world.tenants.len());

        let central_only = Snapshot {
            routes: vec![route("shop", "central", None)],
            ..world.clone()
        };
        assert!(matches!(fleet_view(&central_only), Cow::Borrowed(_)));

        // The central route moves to sidecars: the fleet is told to remove it.
        let mut moved = central_only.clone();
        moved.routes[0].workload_selector = Some(labels(&[("app", "central")]));
        let delta = diff(&central_only, &moved, 1, 2);
        let fleet = fleet_delta(&delta);
        assert!(fleet.routes.is_empty());
        assert_eq!(fleet.removed_routes, [ObjectKey::new("shop", "central")]);
        let plain = diff(&moved, &central_only, 2, 3);
        assert!(matches!(fleet_delta(&plain), Cow::Borrowed(_)));
    }
}
