//! The checks a request passes before it is forwarded, in api.md's order: host, route, lifecycle,
//! API key, subscription, approval, billing state, paid-through date — then the quotas and rate
//! limits, which the counter store decides ([`admitted`] turns its answer into a refusal).
//!
//! Each check is a function of the request and one configuration version: no sockets, no
//! counters, no clock but the `now` passed in. The first that fails answers the request.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, header};
use jiff::Timestamp;
use rust_decimal::Decimal;
use serde_json::Value;
use tollgate_crds::resources::{BillingState, LifecycleState, SubscriptionState};

use super::auth::{ConflictingKeys, KeyMemo, presented_key};
use super::problem::{Problem, ProblemKind};
use crate::config::router::request_host;
use crate::config::{PlanEntry, ProxyConfig, RouteEntry, TenantEntry};
use crate::http1::client_headers::ClientHeaders;
use crate::http1::raw_headers::RawHeaders;
use crate::llm::CallRequest;
use crate::llm::reservation::Reserved;
use crate::quota::{Admission, LimitState, Subject};
use crate::telemetry::access_log::DeferredLine;

/// What was decided about a request, borrowed from the configuration version it loaded (no
/// reference counts touched per request). Filled in as the checks pass: a refusal still knows
/// the route and tenant it was about (for metrics, the access log and RateLimit headers).
#[derive(Debug, Default)]
pub struct Verdict<'c> {
    /// The matched route.
    pub route: Option<&'c Arc<RouteEntry>>,
    /// The tenant whose key was presented.
    pub tenant: Option<&'c Arc<TenantEntry>>,
    /// The plan that applies: the subscription's, or the tenant's default.
    pub plan: Option<&'c Arc<PlanEntry>>,
    /// Limit states for the RateLimit headers: (rate limits, quotas).
    pub limits: Option<(Vec<LimitState>, Vec<LimitState>)>,
    /// Admission charged one request and the reservation (refunded if forwarding fails).
    pub charged: bool,
    /// What admission reserved in the token and Cost quotas.
    pub reserved: Reserved,
    /// The metered call's request, when its body was read (boxed: most requests have none).
    pub call: Option<Box<CallRequest>>,
    /// A metered response's access-log line, written when the call is settled.
    pub deferred_line: Option<Arc<DeferredLine>>,
    /// The request is a gRPC call: its refusals are put in gRPC's terms.
    pub grpc: Option<super::grpc::Call>,
    /// The request is an HTTP/2 WebSocket (RFC 8441's extended CONNECT), now in the shape of an
    /// HTTP/1.1 upgrade: answered 200, not 101, once the backend switched.
    pub websocket_over_h2: bool,
}

/// Runs the checks up to the quotas. `Err` is the first that fails; `Ok(Some(subject))` the
/// counters to admit the request against, `Ok(None)` when no plan applies (nothing to count).
pub fn check<'c, B>(
    config: &'c ProxyConfig,
    req: &Request<B>,
    raw: &RawHeaders,
    keys: &KeyMemo,
    now: Timestamp,
    v: &mut Verdict<'c>,
) -> Result<Option<Subject<'c>>, Problem> {
    let headers = ClientHeaders::of(req.headers(), raw);
    let route = route(config, req, headers)?;
    v.route = Some(route);
    lifecycle(route)?;
    let tenant = tenant(config, headers, keys)?;
    v.tenant = Some(tenant);
    v.plan = tenant.plan.as_ref();
    // A refusal from here on keeps the subscription's plan: its RateLimit headers are shown.
    v.plan = subscription(route, tenant)?;
    approval(route, tenant)?;
    billing(route, tenant, v.plan, now)?;
    Ok(v.plan.map(|plan| Subject {
        tenant: &tenant.id,
        plan,
    }))
}

/// The route for the request's host, path and method (404 when none).
fn route<'c, B>(
    config: &'c ProxyConfig,
    req: &Request<B>,
    headers: ClientHeaders<'_>,
) -> Result<&'c Arc<RouteEntry>, Problem> {
    let Ok(host_header) = headers.single(&header::HOST) else {
        // RFC 9112 section 3.2: the route and the backend could read different hosts.
        return Err(Problem::new(
            ProblemKind::BadRequest,
            "The request has more than one Host header; send exactly one.",
        ));
    };
    if host_header.is_none()
        && req.version() == http::Version::HTTP_11
        && req.uri().host().is_none()
    {
        // RFC 9112 section 3.2: the route would be chosen without knowing the host.
        return Err(Problem::new(
            ProblemKind::BadRequest,
            "HTTP/1.1 requests must carry a Host header.",
        ));
    }
    let host = request_host(req.uri(), host_header);
    let path = req.uri().path();
    config
        .routes
        .route_for(&host, path, req.method())
        .ok_or_else(|| {
            Problem::new(
                ProblemKind::RouteNotFound,
                format!(
                    "No API is configured for {} {host}{path}. Check the host, path and method.",
                    req.method()
                ),
            )
        })
}

/// A retired route serves nothing (410).
fn lifecycle(route: &RouteEntry) -> Result<(), Problem> {
    if route.route.lifecycle != LifecycleState::Retired {
        return Ok(());
    }
    let route_name = route.route.key.name.as_str();
    Err(Problem::new(
        ProblemKind::RouteRetired,
        format!(
            "The API {route_name} has been retired and no longer serves requests; move to its successor."
        ),
    )
    .with("apiRoute", route_name))
}

/// The tenant whose key the request presents (401 for none or an unknown one; 400 for two);
/// on an egress sidecar, its workload's tenant.
fn tenant<'c>(
    config: &'c ProxyConfig,
    headers: ClientHeaders<'_>,
    keys: &KeyMemo,
) -> Result<&'c Arc<TenantEntry>, Problem> {
    if let Some(own) = &config.workload_tenant {
        return Ok(own);
    }
    let presented = presented_key(headers, keys).map_err(|ConflictingKeys| {
        Problem::new(
            ProblemKind::BadRequest,
            "The request carries two different API keys (in `Authorization: Bearer` or `X-Api-Key` headers). Send one key.",
        )
    })?;
    let Some(digest) = presented else {
        return Err(Problem::new(
            ProblemKind::Unauthorized,
            "No API key was sent. Send it as `Authorization: Bearer <key>` or `X-Api-Key: <key>`.",
        ));
    };
    config.tenants_by_key.get(&digest).ok_or_else(|| {
        Problem::new(
            ProblemKind::Unauthorized,
            "The API key is not valid. Check it for typos, or ask your API provider for a new one.",
        )
    })
}

/// The plan of the tenant's subscription to the route (403 when it has none). Routes match
/// subscriptions in the tenant's own namespace only.
fn subscription<'c>(
    route: &RouteEntry,
    tenant: &'c TenantEntry,
) -> Result<Option<&'c Arc<PlanEntry>>, Problem> {
    let route_name = route.route.key.name.as_str();
    let subscription = (tenant.tenant.key.namespace == route.route.key.namespace)
        .then(|| tenant.subscriptions.get(route_name))
        .flatten();
    subscription.map(Option::as_ref).ok_or_else(|| {
        let tenant_name = tenant.tenant.key.name.as_str();
        Problem::new(
            ProblemKind::NotSubscribed,
            format!(
                "Tenant {tenant_name} is not subscribed to the API {route_name}. Subscribe to it to call it."
            ),
        )
        .with("tenant", &*tenant.id)
        .with("apiRoute", route_name)
    })
}

/// The route owner's approval of the subscription (403 while pending, or when rejected).
fn approval(route: &RouteEntry, tenant: &TenantEntry) -> Result<(), Problem> {
    let route_name = route.route.key.name.as_str();
    let tenant_name = tenant.tenant.key.name.as_str();
    let (kind, detail) = match route.route.subscription_state(tenant_name) {
        SubscriptionState::Active | SubscriptionState::RouteNotFound => return Ok(()),
        SubscriptionState::PendingApproval => (
            ProblemKind::ApprovalPending,
            format!(
                "The subscription of {tenant_name} to {route_name} is waiting for the API owner's approval."
            ),
        ),
        SubscriptionState::Rejected => (
            ProblemKind::SubscriptionRejected,
            format!("The API owner rejected the subscription of {tenant_name} to {route_name}."),
        ),
    };
    Err(Problem::new(kind, detail)
        .with("tenant", &*tenant.id)
        .with("apiRoute", route_name))
}

/// The tenant's billing state and paid-through date (402 when it must pay, with the plan's
/// payment URL).
fn billing(
    route: &RouteEntry,
    tenant: &TenantEntry,
    plan: Option<&Arc<PlanEntry>>,
    now: Timestamp,
) -> Result<(), Problem> {
    // Cloned only into a refusal.
    let payment_url = || plan.and_then(|p| p.plan.payment_url.clone());
    let refused = |kind, detail: String| {
        Problem::new(kind, detail)
            .with("tenant", &*tenant.id)
            .with("apiRoute", route.route.key.name.as_str())
    };
    let billing_problem = match tenant.tenant.billing_state {
        BillingState::Active => None,
        // Within the plan's grace period (Stripe still retrying the payment): served.
        BillingState::PastDue
            if tenant
                .tenant
                .past_due_grace_until
                .is_some_and(|until| now < until) =>
        {
            None
        }
        BillingState::PastDue => Some((
            ProblemKind::AccountPastDue,
            "The account has an overdue payment. Settle the balance to resume calls.",
        )),
        BillingState::Suspended => Some((
            ProblemKind::AccountSuspended,
            "The account is suspended. Contact the API provider to restore it.",
        )),
        BillingState::Cancelled => Some((
            ProblemKind::SubscriptionCancelled,
            "The subscription was cancelled. Subscribe again to resume calls.",
        )),
    };
    if let Some((kind, detail)) = billing_problem {
        return Err(refused(kind, detail.to_owned()).with_opt("paymentUrl", payment_url()));
    }
    if let Some(paid_through) = tenant.tenant.paid_through
        && now > paid_through
    {
        return Err(refused(
            ProblemKind::SubscriptionExpired,
            format!("The subscription was paid through {paid_through}. Renew it to resume calls."),
        )
        .with("paidThrough", paid_through.to_string())
        .with_opt("paymentUrl", payment_url()));
    }
    Ok(())
}

/// The request's fate after the quota check: `Err` when a quota (402) or rate limit (429)
/// refused it, or the store could not be asked and the plan fails closed (503). The limit states
/// are kept in `v` for the RateLimit headers.
pub fn admitted(admission: Admission, now: Timestamp, v: &mut Verdict<'_>) -> Result<(), Problem> {
    let (Some(tenant), Some(plan)) = (v.tenant, v.plan) else {
        // Only a request with a tenant and a plan is counted.
        return Ok(());
    };
    let tenant_name = tenant.tenant.key.name.as_str();
    let route_name = v.route.map_or("", |r| r.route.key.name.as_str());
    match admission {
        Admission::Admitted {
            rate_limits,
            quotas,
        } => {
            v.limits = Some((rate_limits, quotas));
            v.charged = true;
            Ok(())
        }
        Admission::QuotaExhausted {
            exhausted,
            needed,
            rate_limits,
            quotas,
        } => {
            v.limits = Some((rate_limits, quotas));
            let quota = &plan.plan.quotas[exhausted.index];
            let window = exhausted.window;
            let upgrade = if plan.plan.payment_url.is_some() {
                " at paymentUrl"
            } else {
                ""
            };
            // A metered call refused with allowance left: its reservation did not fit.
            let reservation_too_large =
                quota.metric != tollgate_crds::resources::Metric::Requests
                    && exhausted.used < quota.limit;
            let detail = if reservation_too_large {
                format!(
                    "This call could use up to {} ({:?}), more than the {} left of tenant {tenant_name}'s {} allowance of {} for this {:?}; it was not sent. Ask for less output (max_tokens), upgrade the plan{upgrade}, or wait for the next period.",
                    needed.normalize(),
                    quota.metric,
                    exhausted.remaining.normalize(),
                    quota.name,
                    quota.limit,
                    quota.period,
                )
            } else {
                format!(
                    "Tenant {tenant_name} used its {} allowance of {} ({:?}) for this {:?}. Upgrade the plan{upgrade} or wait for the next period.",
                    quota.name, quota.limit, quota.metric, quota.period,
                )
            };
            let problem = Problem::new(ProblemKind::QuotaExhausted, detail);
            let problem = if reservation_too_large {
                problem.with("reserved", decimal_json(needed))
            } else {
                problem
            };
            Err(problem
            .with("tenant", &*tenant.id)
            .with("apiRoute", route_name)
            .with("quota", quota.name.as_str())
            .with("metric", format!("{:?}", quota.metric))
            .with("limit", decimal_json(quota.limit))
            .with("used", decimal_json(exhausted.used))
            .with_opt("periodStart", window.map(|w| w.start.to_string()))
            .with_opt("resetsAt", window.map(|w| w.end.to_string()))
            .with_opt("paymentUrl", plan.plan.payment_url.clone())
            .with("retryAfter", exhausted.reset_seconds))
        }
        Admission::RateLimited {
            exceeded,
            rate_limits,
            quotas,
        } => {
            v.limits = Some((rate_limits, quotas));
            let rl = &plan.plan.rate_limits[exceeded.index];
            let resets_at = now
                .checked_add(Duration::from_secs(exceeded.reset_seconds))
                .ok();
            Err(Problem::new(
                ProblemKind::RateLimited,
                format!(
                    "Tenant {tenant_name} exceeded {} requests per {}s ({}). Retry after {} s.",
                    rl.requests,
                    rl.window_ms / 1000,
                    rl.name,
                    exceeded.reset_seconds
                ),
            )
            .with("tenant", &*tenant.id)
            .with("apiRoute", route_name)
            .with("quota", rl.name.as_str())
            .with("metric", "Requests")
            .with("limit", rl.requests)
            .with_opt("resetsAt", resets_at.map(|t| t.to_string()))
            .with("retryAfter", exceeded.reset_seconds))
        }
        Admission::StoreUnavailable => Err(Problem::new(
            ProblemKind::QuotaStoreUnavailable,
            "Usage cannot be checked right now and this plan does not allow unchecked calls. Retry shortly.",
        )
        .with("tenant", &*tenant.id)
        .with("apiRoute", route_name)),
    }
}

/// A decimal as a JSON number when it is whole (counts), else a string (money stays exact).
fn decimal_json(d: Decimal) -> Value {
    use rust_decimal::prelude::ToPrimitive;
    if d.fract().is_zero()
        && let Some(n) = d.to_u64()
    {
        return Value::from(n);
    }
    Value::String(d.normalize().to_string())
}

#[cfg(test)]
mod tests {
    //! One row per refusal of api.md's table, over a configuration built in memory from the same
    //! resources users apply: no sockets, no counter store, a `now` chosen by the test.

    use http::{HeaderMap, Method};
    use k8s_openapi::api::core::v1::Secret;
    use serde_json::json;
    use tollgate_crds::compile::{Objects, compile};
    use tollgate_crds::resources::{ApiRoute, QuotaPolicy, Tenant};
    use tollgate_crds::snapshot::Snapshot;

    use super::*;
    use crate::quota::PlanEntry;

    fn object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).expect("a valid test object")
    }

    fn route(name: &str, spec: serde_json::Value) -> ApiRoute {
        object(
            json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiRoute",
            "metadata": {"name": name, "namespace": "shop"}, "spec": spec}),
        )
    }

    fn direct(path: &str) -> serde_json::Value {
        json!({"match": {"pathPrefix": path}, "backend": {"directResponse": {"status": 200, "body": "ok"}}})
    }

    /// A tenant named after its key, subscribed to `routes`, with `billing` as given.
    fn tenant(
        namespace: &str,
        name: &str,
        routes: &[&str],
        billing: serde_json::Value,
    ) -> (Tenant, Secret) {
        let subscriptions: Vec<_> = routes
            .iter()
            .map(|r| json!({"apiRouteRef": {"name": r}}))
            .collect();
        let tenant = object(
            json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"quotaPolicyRef": {"name": "starter"},
                     "apiKeys": [{"secretRef": {"name": format!("{name}-key")}}],
                     "billing": billing, "subscriptions": subscriptions}}),
        );
        let secret = object(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("{name}-key"), "namespace": namespace},
            "stringData": {"apiKey": format!("key-{namespace}-{name}")}}));
        (tenant, secret)
    }

    fn world(now: Timestamp) -> ProxyConfig {
        ProxyConfig::build(1, world_snapshot(now))
    }

    fn world_snapshot(now: Timestamp) -> Snapshot {
        let plans: Vec<QuotaPolicy> = ["shop", "elsewhere"]
            .iter()
            .map(|ns| object(json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "QuotaPolicy",
                "metadata": {"name": "starter", "namespace": ns},
                "spec": {"rateLimits": [{"name": "per-second", "requests": 2, "window": "1s"}],
                         "quotas": [{"name": "monthly", "metric": "Requests", "limit": "20", "period": "Month"}],
                         "paymentUrl": "https://pay.example/upgrade",
                         "pastDueGracePeriod": "72h"}})))
            .collect();
        let mut gated = direct("/v1/gated");
        gated["approval"] = json!("Manual");
        gated["approvedTenants"] = json!(["paying"]);
        gated["rejectedTenants"] = json!(["refused"]);
        let mut retired = direct("/v1/retired");
        retired["lifecycle"] = json!({"state": "Retired"});
        let mut hosted = direct("/v1/hosted");
        hosted["hosts"] = json!(["api.example.com"]);
        hosted["match"]["methods"] = json!(["GET"]);
        let routes = [
            route("open", direct("/v1/open")),
            route("gated", gated),
            route("retired", retired),
            route("hosted", hosted),
        ];
        let all = ["open", "gated", "retired", "hosted"];
        let yesterday = now
            .checked_sub(jiff::SignedDuration::from_hours(24))
            .expect("a day ago");
        let tomorrow = now
            .checked_add(jiff::SignedDuration::from_hours(24))
            .expect("a day on");
        // Past due in Stripe since `since`: within the plan's 72 h grace, or past it.
        let from_stripe = |name: &str, since: Timestamp| {
            let (mut t, secret) = tenant(
                "shop",
                name,
                &all,
                json!({"stripe": {"customer": "cus_1", "subscription": "sub_1"}}),
            );
            t.status = Some(object(json!({"stripe": {
                "customer": "cus_1", "subscription": "sub_1",
                "subscriptionStatus": "past_due", "state": "PastDue", "since": since.to_string(),
                "lastEvent": "evt_1", "lastEventTime": since.to_string(),
                "updatedAt": since.to_string()}})));
            (t, secret)
        };
        let tenants = [
            from_stripe("retrying", yesterday),
            from_stripe(
                "overdue",
                now.checked_sub(jiff::SignedDuration::from_hours(73))
                    .expect("73 h ago"),
            ),
            tenant(
                "shop",
                "paying",
                &all,
                json!({"paidThrough": tomorrow.to_string()}),
            ),
            tenant("shop", "waiting", &all, json!({})),
            tenant("shop", "refused", &all, json!({})),
            tenant("shop", "unsubscribed", &[], json!({})),
            tenant("elsewhere", "stranger", &all, json!({})),
            tenant("shop", "late", &all, json!({"state": "PastDue"})),
            tenant("shop", "suspended", &all, json!({"state": "Suspended"})),
            tenant("shop", "cancelled", &all, json!({"state": "Cancelled"})),
            tenant(
                "shop",
                "lapsed",
                &all,
                json!({"paidThrough": yesterday.to_string()}),
            ),
        ];
        let compiled = compile(&Objects {
            routes: routes.iter().collect(),
            tenants: tenants.iter().map(|(t, _)| t).collect(),
            plans: plans.iter().collect(),
            secrets: tenants.iter().map(|(_, s)| s).collect(),
        });
        assert!(
            compiled.diagnostics.is_empty(),
            "{:?}",
            compiled.diagnostics
        );
        compiled.snapshot
    }

    struct Case {
        what: &'static str,
        method: Method,
        host: &'static str,
        path: &'static str,
        headers: Vec<(&'static str, &'static str)>,
        /// `None`: every check passes.
        refused: Option<ProblemKind>,
        /// Members the problem body must carry.
        members: &'static [(&'static str, &'static str)],
        /// The tenant an admitted request counts against.
        admitted_as: &'static str,
    }

    const PAYING: &str = "Bearer key-shop-paying";
    const PAYMENT: (&str, &str) = ("paymentUrl", "https://pay.example/upgrade");

    fn case(what: &'static str, path: &'static str, key: &'static str) -> Case {
        let headers = match key {
            "" => vec![],
            key => vec![("authorization", key)],
        };
        Case {
            what,
            method: Method::GET,
            host: "api.example.com",
            path,
            headers,
            refused: None,
            members: &[],
            admitted_as: "shop/paying",
        }
    }

    impl Case {
        fn refused(
            mut self,
            kind: ProblemKind,
            members: &'static [(&'static str, &'static str)],
        ) -> Self {
            self.refused = Some(kind);
            self.members = members;
            self
        }
    }

    #[test]
    fn each_refusal_of_the_contract_comes_from_its_check() {
        use ProblemKind::*;
        let now = Timestamp::now();
        let config = world(now);
        let cases = [
            case(
                "a subscribed, approved, paid-up tenant passes",
                "/v1/gated",
                PAYING,
            ),
            case("no route for the path", "/v2/unknown", PAYING).refused(RouteNotFound, &[]),
            Case {
                method: Method::POST,
                ..case("the host matches but not the method", "/v1/hosted", PAYING)
            }
            .refused(RouteNotFound, &[]),
            Case {
                host: "other.example.com",
                ..case("the method matches but not the host", "/v1/hosted", PAYING)
            }
            .refused(RouteNotFound, &[]),
            Case {
                headers: vec![("host", "a.example.com"), ("host", "b.example.com")],
                ..case("two Host headers", "/v1/open", "")
            }
            .refused(BadRequest, &[]),
            case(
                "a retired route, before the key is looked at",
                "/v1/retired",
                "",
            )
            .refused(RouteRetired, &[("apiRoute", "retired")]),
            case("no key", "/v1/open", "").refused(Unauthorized, &[]),
            case("an unknown key", "/v1/open", "Bearer key-nobody").refused(Unauthorized, &[]),
            Case {
                headers: vec![("authorization", PAYING), ("x-api-key", "key-shop-late")],
                ..case("two different keys", "/v1/open", "")
            }
            .refused(BadRequest, &[]),
            Case {
                headers: vec![("x-api-key", "key-shop-paying")],
                ..case("the key in X-Api-Key", "/v1/open", "")
            },
            case(
                "a Basic Authorization is not a key",
                "/v1/open",
                "Basic a2V5LXNob3AtcGF5aW5n",
            )
            .refused(Unauthorized, &[]),
            case("not subscribed", "/v1/open", "Bearer key-shop-unsubscribed").refused(
                NotSubscribed,
                &[("tenant", "shop/unsubscribed"), ("apiRoute", "open")],
            ),
            case(
                "subscribed in another namespace",
                "/v1/open",
                "Bearer key-elsewhere-stranger",
            )
            .refused(
                NotSubscribed,
                &[("tenant", "elsewhere/stranger"), ("apiRoute", "open")],
            ),
            case(
                "waiting for approval",
                "/v1/gated",
                "Bearer key-shop-waiting",
            )
            .refused(
                ApprovalPending,
                &[("tenant", "shop/waiting"), ("apiRoute", "gated")],
            ),
            case("approval refused", "/v1/gated", "Bearer key-shop-refused").refused(
                SubscriptionRejected,
                &[("tenant", "shop/refused"), ("apiRoute", "gated")],
            ),
            case("past due", "/v1/open", "Bearer key-shop-late")
                .refused(AccountPastDue, &[("tenant", "shop/late"), PAYMENT]),
            Case {
                admitted_as: "shop/retrying",
                ..case(
                    "past due in Stripe, within the plan's grace period",
                    "/v1/open",
                    "Bearer key-shop-retrying",
                )
            },
            case(
                "past due in Stripe, past the grace period",
                "/v1/open",
                "Bearer key-shop-overdue",
            )
            .refused(AccountPastDue, &[("tenant", "shop/overdue"), PAYMENT]),
            case("suspended", "/v1/open", "Bearer key-shop-suspended")
                .refused(AccountSuspended, &[("tenant", "shop/suspended"), PAYMENT]),
            case("cancelled", "/v1/open", "Bearer key-shop-cancelled").refused(
                SubscriptionCancelled,
                &[("tenant", "shop/cancelled"), PAYMENT],
            ),
            case(
                "paid through yesterday",
                "/v1/open",
                "Bearer key-shop-lapsed",
            )
            .refused(
                SubscriptionExpired,
                &[("tenant", "shop/lapsed"), ("apiRoute", "open"), PAYMENT],
            ),
            case(
                "billing is checked after approval",
                "/v1/gated",
                "Bearer key-shop-late",
            )
            .refused(ApprovalPending, &[]),
        ];
        for case in cases {
            let mut headers = HeaderMap::new();
            for (name, value) in &case.headers {
                headers.append(*name, value.parse().expect("header value"));
            }
            if !headers.contains_key(header::HOST) {
                headers.insert(header::HOST, case.host.parse().expect("host"));
            }
            let mut req = Request::builder()
                .method(case.method.clone())
                .uri(case.path)
                .body(())
                .expect("request");
            *req.headers_mut() = headers;
            let mut verdict = Verdict::default();
            let checked = check(
                &config,
                &req,
                &RawHeaders::default(),
                &KeyMemo::default(),
                now,
                &mut verdict,
            );
            match (checked, case.refused) {
                (Ok(subject), None) => {
                    let subject = subject.expect("a plan to count against");
                    assert_eq!(&**subject.tenant, case.admitted_as, "{}", case.what);
                    assert_eq!(&*subject.plan.id, "shop/starter", "{}", case.what);
                }
                (Err(problem), Some(kind)) => {
                    assert_eq!(problem.kind, kind, "{}: {:?}", case.what, problem.members);
                    for (name, value) in case.members {
                        assert_eq!(
                            problem.members.get(*name),
                            Some(&json!(value)),
                            "{}: {name}",
                            case.what
                        );
                    }
                }
                (got, want) => panic!(
                    "{}: got {:?}, want a refusal {want:?}",
                    case.what,
                    got.map(|s| s.map(|s| s.tenant.clone()))
                ),
            }
        }
    }

    /// An egress sidecar: the app's SDK may send a key of its own (or none); every request is
    /// the workload's tenant's, and only where the proxy listens on loopback.
    #[test]
    fn an_egress_sidecars_requests_are_its_workloads_tenants_on_loopback_only() {
        let now = Timestamp::now();
        let mut snapshot = world_snapshot(now);
        snapshot.workload_tenant = Some(tollgate_crds::snapshot::ObjectKey::new("shop", "paying"));
        let request = |key: Option<&str>| {
            let mut req = Request::builder()
                .uri("/v1/open")
                .header(header::HOST, "api.example.com");
            if let Some(key) = key {
                req = req.header(header::AUTHORIZATION, key);
            }
            req.body(()).expect("request")
        };
        let tenant_of = |config: &ProxyConfig, key: Option<&str>| {
            let mut verdict = Verdict::default();
            check(
                config,
                &request(key),
                &RawHeaders::default(),
                &KeyMemo::default(),
                now,
                &mut verdict,
            )
            .map(|s| s.map(|s| s.tenant.to_string()))
            .map_err(|p| p.kind)
        };
        let sidecar = ProxyConfig::build(2, snapshot.clone()).for_listener(true);
        for key in [
            None,
            Some("Bearer sk-app-placeholder"),
            Some("Bearer key-shop-late"),
        ] {
            assert_eq!(
                tenant_of(&sidecar, key),
                Ok(Some("shop/paying".to_owned())),
                "{key:?}"
            );
        }
        let exposed = ProxyConfig::build(2, snapshot).for_listener(false);
        assert!(exposed.workload_tenant.is_none());
        assert_eq!(tenant_of(&exposed, None), Err(ProblemKind::Unauthorized));
        assert_eq!(
            tenant_of(&exposed, Some("Bearer key-shop-late")),
            Err(ProblemKind::AccountPastDue)
        );
    }

    #[test]
    fn a_refusal_keeps_what_it_learned_for_headers_and_metrics() {
        let now = Timestamp::now();
        let config = world(now);
        let req = |key: &str| {
            Request::builder()
                .uri("/v1/gated")
                .header(header::HOST, "api.example.com")
                .header(header::AUTHORIZATION, key)
                .body(())
                .expect("request")
        };
        let mut verdict = Verdict::default();
        let refused = check(
            &config,
            &req("Bearer key-shop-waiting"),
            &RawHeaders::default(),
            &KeyMemo::default(),
            now,
            &mut verdict,
        );
        assert_eq!(
            refused.err().map(|p| p.kind),
            Some(ProblemKind::ApprovalPending)
        );
        assert_eq!(verdict.route.map(|r| &*r.id), Some("shop/gated"));
        assert_eq!(verdict.tenant.map(|t| &*t.id), Some("shop/waiting"));
        // The subscription's plan: its RateLimit headers go on the 403.
        assert_eq!(verdict.plan.map(|p| &*p.id), Some("shop/starter"));
        assert!(verdict.limits.is_none() && !verdict.charged);
    }

    fn limit(index: usize, used: u64, reset_seconds: u64) -> LimitState {
        LimitState {
            index,
            remaining: Decimal::ZERO,
            used: Decimal::from(used),
            reset_seconds,
            window: None,
        }
    }

    /// The store's answer turned into the response's fate, for a tenant on `starter`.
    fn admit(admission: Admission, now: Timestamp) -> (Result<(), Problem>, bool, bool) {
        let config = world(now);
        let tenant = config
            .tenants_by_key
            .values()
            .find(|t| &*t.id == "shop/paying")
            .expect("tenant");
        let plan: &Arc<PlanEntry> = tenant.plan.as_ref().expect("plan");
        let route = config
            .routes
            .route_for("api.example.com", "/v1/open", &Method::GET);
        let mut v = Verdict {
            route,
            tenant: Some(tenant),
            plan: Some(plan),
            ..Verdict::default()
        };
        let fate = admitted(admission, now, &mut v);
        (fate, v.charged, v.limits.is_some())
    }

    #[test]
    fn the_stores_answer_becomes_402_429_or_503() {
        let now = Timestamp::now();
        let (fate, charged, limits) = admit(
            Admission::Admitted {
                rate_limits: vec![limit(0, 1, 1)],
                quotas: vec![limit(0, 1, 9)],
            },
            now,
        );
        assert!(fate.is_ok() && charged && limits, "admitted and charged");

        let (fate, charged, limits) = admit(
            Admission::QuotaExhausted {
                exhausted: limit(0, 20, 3600),
                needed: Decimal::ONE,
                rate_limits: vec![],
                quotas: vec![limit(0, 20, 3600)],
            },
            now,
        );
        let problem = fate.expect_err("402");
        assert_eq!(problem.kind, ProblemKind::QuotaExhausted);
        assert!(!charged && limits, "refused, not charged, headers kept");
        for (name, value) in [
            ("quota", json!("monthly")),
            ("metric", json!("Requests")),
            ("limit", json!(20)),
            ("used", json!(20)),
            ("retryAfter", json!(3600)),
            ("tenant", json!("shop/paying")),
            ("apiRoute", json!("open")),
            ("paymentUrl", json!("https://pay.example/upgrade")),
        ] {
            assert_eq!(problem.members.get(name), Some(&value), "{name}");
        }

        let (fate, charged, _) = admit(
            Admission::RateLimited {
                exceeded: limit(0, 2, 1),
                rate_limits: vec![limit(0, 2, 1)],
                quotas: vec![],
            },
            now,
        );
        let problem = fate.expect_err("429");
        assert_eq!(problem.kind, ProblemKind::RateLimited);
        assert!(!charged);
        assert_eq!(problem.members.get("retryAfter"), Some(&json!(1)));
        assert_eq!(problem.members.get("quota"), Some(&json!("per-second")));
        let resets_at = now
            .checked_add(Duration::from_secs(1))
            .expect("time")
            .to_string();
        assert_eq!(problem.members.get("resetsAt"), Some(&json!(resets_at)));

        let (fate, charged, limits) = admit(Admission::StoreUnavailable, now);
        assert_eq!(
            fate.expect_err("503").kind,
            ProblemKind::QuotaStoreUnavailable
        );
        assert!(!charged && !limits);
    }

    #[test]
    fn money_stays_exact_and_counts_are_numbers() {
        assert_eq!(decimal_json(Decimal::from(20)), json!(20));
        assert_eq!(decimal_json("0.10".parse().expect("decimal")), json!("0.1"));
        assert_eq!(decimal_json("-1".parse().expect("decimal")), json!("-1"));
    }
}
