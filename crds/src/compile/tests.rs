use k8s_openapi::api::core::v1::Secret;

use super::*;
use crate::resources::{BillingState, Tenant as TenantCr};

/// Objects parsed from YAML, as users write them.
#[derive(Default)]
struct World {
    routes: Vec<ApiRoute>,
    tenants: Vec<TenantCr>,
    plans: Vec<QuotaPolicy>,
    secrets: Vec<Secret>,
}

impl World {
    fn parse(yaml: &str) -> Self {
        let mut w = World::default();
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml).expect("yaml");
        for value in docs {
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .expect("kind")
                .to_owned();
            match kind.as_str() {
                "ApiRoute" => w
                    .routes
                    .push(serde_json::from_value(value).expect("ApiRoute")),
                "Tenant" => w
                    .tenants
                    .push(serde_json::from_value(value).expect("Tenant")),
                "QuotaPolicy" => w
                    .plans
                    .push(serde_json::from_value(value).expect("QuotaPolicy")),
                "Secret" => w
                    .secrets
                    .push(serde_json::from_value(value).expect("Secret")),
                other => panic!("unexpected kind {other}"),
            }
        }
        w
    }

    fn with(mut self, yaml: &str) -> Self {
        let more = World::parse(yaml);
        self.routes.extend(more.routes);
        self.tenants.extend(more.tenants);
        self.plans.extend(more.plans);
        self.secrets.extend(more.secrets);
        self
    }

    fn compile(&self) -> Compiled {
        compile(&Objects {
            routes: self.routes.iter().collect(),
            tenants: self.tenants.iter().collect(),
            plans: self.plans.iter().collect(),
            secrets: self.secrets.iter().collect(),
        })
    }
}

const BASE: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: pro, namespace: shop}
spec:
  rateLimits: [{name: per-second, requests: 50, window: 1s}]
  quotas: [{name: monthly-requests, metric: Requests, limit: "100000", period: Month}]
  timezone: Europe/Berlin
  paymentUrl: https://billing.example.com/upgrade
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {name: chat, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  hosts: [api.example.com]
  match: {pathPrefix: /v1/chat/, methods: [POST]}
  backend: {url: "http://127.0.0.1:9000/", timeout: 5s}
---
apiVersion: v1
kind: Secret
metadata: {name: acme-key, namespace: shop}
stringData: {apiKey: "acme-secret-1\n"}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: acme, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  quotaPolicyRef: {name: pro}
  apiKeys: [{secretRef: {name: acme-key}}]
  subscriptions: [{apiRouteRef: {name: chat}}]
"#;

fn only_diagnostic(c: &Compiled) -> &Diagnostic {
    assert_eq!(
        c.diagnostics.len(),
        1,
        "expected one diagnostic, got {:#?}",
        c.diagnostics
    );
    &c.diagnostics[0]
}

#[test]
fn a_valid_world_compiles_completely() {
    let c = World::parse(BASE).compile();
    assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
    let s = &c.snapshot;
    assert_eq!(s.plans.len(), 1);
    assert_eq!(s.plans[0].quotas[0].limit, Decimal::from(100_000));
    assert_eq!(s.plans[0].rate_limits[0].window_ms, 1000);
    assert_eq!(s.routes.len(), 1);
    let route = &s.routes[0];
    assert_eq!(
        route.path,
        PathMatch::Prefix("/v1/chat".into()),
        "trailing slash dropped"
    );
    assert_eq!(
        route.backend,
        RouteBackend::Http {
            base_url: "http://127.0.0.1:9000".into()
        }
    );
    assert_eq!(route.timeout_ms, 5000);
    let tenant = &s.tenants[0];
    // The key's trailing newline is not part of the key.
    assert_eq!(tenant.key_digests, vec![KeyDigest::of(b"acme-secret-1")]);
    assert_eq!(tenant.plan, Some(ObjectKey::new("shop", "pro")));
    assert_eq!(
        c.subscriptions[&tenant.key][0].state,
        SubscriptionState::Active
    );
}

#[test]
fn snapshot_never_contains_key_material() {
    let c = World::parse(BASE).compile();
    let json = serde_json::to_string(&c.snapshot).expect("serializable");
    assert!(!json.contains("acme-secret-1"));
}

#[test]
fn objects_without_namespace_are_in_default() {
    let c = World::parse(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: free}
spec: {}
"#,
    )
    .compile();
    assert_eq!(c.snapshot.plans[0].key, ObjectKey::new("default", "free"));
    assert_eq!(c.snapshot.plans[0].timezone, "UTC");
}

fn plan_diagnostic(spec: &str) -> Diagnostic {
    let yaml = format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: QuotaPolicy\nmetadata: {{name: bad, namespace: shop}}\nspec: {spec}\n"
    );
    let c = World::parse(BASE).with(&yaml).compile();
    assert_eq!(c.snapshot.plans.len(), 1, "the good plan stays");
    let d = only_diagnostic(&c).clone();
    assert_eq!(
        (d.kind, d.object.name.as_str()),
        (ObjectKind::QuotaPolicy, "bad")
    );
    d
}

#[test]
fn unknown_time_zone_is_reported_on_the_field() {
    let d = plan_diagnostic("{timezone: Mars/Olympus_Mons}");
    assert_eq!(
        (d.field.as_str(), d.reason),
        ("spec.timezone", Reason::UnknownTimeZone)
    );
    assert!(d.message.contains("Mars/Olympus_Mons"));
}

#[test]
fn malformed_decimal_is_reported_on_the_field() {
    let d = plan_diagnostic(r#"{quotas: [{name: q, limit: "1,000", period: Month}]}"#);
    assert_eq!(
        (d.field.as_str(), d.reason),
        ("spec.quotas[0].limit", Reason::Invalid)
    );
    let d = plan_diagnostic(
        r#"{quotas: [{name: q, metric: Cost, limit: "1.1234567", period: Month}], pricing: {currency: USD}}"#,
    );
    assert_eq!(d.field, "spec.quotas[0].limit");
}

#[test]
fn count_quotas_need_whole_numbers() {
    let d = plan_diagnostic(
        r#"{quotas: [{name: q, metric: InputTokens, limit: "10.5", period: Day}]}"#,
    );
    assert_eq!(d.field, "spec.quotas[0].limit");
    assert!(d.message.contains("whole number"), "{}", d.message);
}

#[test]
fn cost_quota_without_pricing_is_reported() {
    let d = plan_diagnostic(
        r#"{quotas: [{name: budget, metric: Cost, limit: "50.00", period: Month}]}"#,
    );
    assert_eq!(d.field, "spec.pricing");
}

#[test]
fn rate_limit_window_must_be_between_1s_and_1h() {
    let d = plan_diagnostic("{rateLimits: [{name: r, requests: 5, window: 2h}]}");
    assert_eq!(d.field, "spec.rateLimits[0].window");
    let d = plan_diagnostic("{rateLimits: [{name: r, requests: 5, window: 500ms}]}");
    assert_eq!(d.field, "spec.rateLimits[0].window");
    let d = plan_diagnostic("{rateLimits: [{name: r, requests: 5, window: soon}]}");
    assert_eq!(d.field, "spec.rateLimits[0].window");
}

#[test]
fn duplicate_limit_names_are_reported() {
    let d = plan_diagnostic(
        r#"{quotas: [{name: q, limit: "1", period: Day}, {name: q, limit: "2", period: Month}]}"#,
    );
    assert_eq!(d.field, "spec.quotas[1].name");
}

fn route_yaml(name: &str, created: &str, spec: &str) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: {name}, namespace: shop, creationTimestamp: \"{created}\"}}\nspec: {spec}\n"
    )
}

fn route_diagnostic(spec: &str) -> Diagnostic {
    let c = World::parse(BASE)
        .with(&route_yaml("bad", "2026-02-01T00:00:00Z", spec))
        .compile();
    assert_eq!(c.snapshot.routes.len(), 1, "the good route stays");
    let d = only_diagnostic(&c).clone();
    assert_eq!(
        (d.kind, d.object.name.as_str()),
        (ObjectKind::ApiRoute, "bad")
    );
    d
}

#[test]
fn route_needs_exactly_one_of_path_and_prefix() {
    let d = route_diagnostic("{match: {pathPrefix: /a, path: /a}, backend: {url: 'http://x:1'}}");
    assert_eq!(d.field, "spec.match");
    let d = route_diagnostic("{match: {}, backend: {url: 'http://x:1'}}");
    assert_eq!(d.field, "spec.match");
}

#[test]
fn route_paths_must_be_in_the_normal_form_requests_are_matched_on() {
    for (spec, field, says) in [
        (
            "{pathPrefix: /v1//chat}",
            "spec.match.pathPrefix",
            "write \"/v1/chat\"",
        ),
        (
            "{path: /v1/./chat}",
            "spec.match.path",
            "write \"/v1/chat\"",
        ),
        ("{path: /%7Euser}", "spec.match.path", "write \"/~user\""),
        (
            "{pathPrefix: /a/..;/b}",
            "spec.match.pathPrefix",
            "backends read differently",
        ),
    ] {
        let d = route_diagnostic(&format!(
            "{{match: {spec}, backend: {{url: 'http://x:1'}}}}"
        ));
        assert_eq!(d.field, field, "{spec}");
        assert!(d.message.contains(says), "{spec}: {}", d.message);
    }
}

#[test]
fn route_needs_exactly_one_backend() {
    let d = route_diagnostic(
        "{match: {path: /a}, backend: {url: 'http://x:1', service: {name: s, port: 80}}}",
    );
    assert_eq!(d.field, "spec.backend");
    let d = route_diagnostic("{match: {path: /a}, backend: {}}");
    assert_eq!(d.field, "spec.backend");
}

#[test]
fn a_route_for_sidecars_may_leave_its_backend_to_the_selected_pods_app() {
    let d = route_diagnostic("{match: {path: /a}}");
    assert_eq!(d.field, "spec.backend", "no backend, no selector");
    let d = route_diagnostic("{match: {path: /a}, workloadSelector: {matchLabels: {}}}");
    assert_eq!(d.field, "spec.workloadSelector.matchLabels");

    let c = World::parse(BASE)
        .with(&route_yaml(
            "sidecar",
            "2026-02-01T00:00:00Z",
            "{match: {path: /a}, workloadSelector: {matchLabels: {app: reports}}}",
        ))
        .with(&route_yaml(
            "egress",
            "2026-02-01T00:00:00Z",
            "{match: {path: /v1/chat/completions}, workloadSelector: {matchLabels: {app: batch}}, backend: {url: 'https://api.openai.com'}}",
        ))
        .compile();
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    let route = |name: &str| {
        c.snapshot
            .routes
            .iter()
            .find(|r| r.key.name == name)
            .expect("compiled")
    };
    assert_eq!(route("sidecar").backend, RouteBackend::Workload);
    assert_eq!(
        route("sidecar")
            .workload_selector
            .as_ref()
            .and_then(|s| s.get("app"))
            .map(String::as_str),
        Some("reports")
    );
    assert!(matches!(route("egress").backend, RouteBackend::Http { .. }));
}

#[test]
fn route_url_must_be_a_base_url() {
    let d = route_diagnostic("{match: {path: /a}, backend: {url: 'ftp://x'}}");
    assert_eq!(d.field, "spec.backend.url");
    let d = route_diagnostic("{match: {path: /a}, backend: {url: 'http://x:99999'}}");
    assert_eq!(d.field, "spec.backend.url");
}

#[test]
fn approved_tenants_need_manual_approval() {
    let d = route_diagnostic(
        "{match: {path: /a}, backend: {url: 'http://x:1'}, approvedTenants: [acme]}",
    );
    assert_eq!(d.field, "spec.approvedTenants");
}

#[test]
fn conflicting_routes_older_wins() {
    // Same host, same prefix, overlapping method: the newer route is excluded, whatever its name.
    let c = World::parse(BASE)
        .with(&route_yaml("aaa-newer", "2026-03-01T00:00:00Z", "{hosts: [API.example.com], match: {pathPrefix: /v1/chat, methods: [POST, GET]}, backend: {url: 'http://y:1'}}"))
        .compile();
    let d = only_diagnostic(&c);
    assert_eq!(
        (d.object.name.as_str(), d.reason, d.field.as_str()),
        ("aaa-newer", Reason::Conflict, "spec.match")
    );
    assert!(
        d.message.contains("shop/chat"),
        "names the winner: {}",
        d.message
    );
    assert_eq!(c.snapshot.routes.len(), 1);
    assert_eq!(c.snapshot.routes[0].key.name, "chat");
}

#[test]
fn same_path_on_different_methods_or_hosts_is_no_conflict() {
    let c = World::parse(BASE)
        .with(&route_yaml("chat-get", "2026-03-01T00:00:00Z", "{hosts: [api.example.com], match: {pathPrefix: /v1/chat, methods: [GET]}, backend: {url: 'http://y:1'}}"))
        .with(&route_yaml("chat-other-host", "2026-03-01T00:00:00Z", "{hosts: [other.example.com], match: {pathPrefix: /v1/chat}, backend: {url: 'http://y:1'}}"))
        .compile();
    assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
    assert_eq!(c.snapshot.routes.len(), 3);
}

#[test]
fn routes_are_in_match_order() {
    let c = World::default()
        .with(&route_yaml("any-host", "2026-01-01T00:00:00Z", "{match: {pathPrefix: /}, backend: {url: 'http://y:1'}}"))
        .with(&route_yaml("wild", "2026-01-01T00:00:00Z", "{hosts: ['*.example.com'], match: {pathPrefix: /}, backend: {url: 'http://y:1'}}"))
        .with(&route_yaml("exact-prefix", "2026-01-01T00:00:00Z", "{hosts: [api.example.com], match: {pathPrefix: /v1}, backend: {url: 'http://y:1'}}"))
        .with(&route_yaml("exact-long-prefix", "2026-01-01T00:00:00Z", "{hosts: [api.example.com], match: {pathPrefix: /v1/chat}, backend: {url: 'http://y:1'}}"))
        .with(&route_yaml("exact-path", "2026-01-01T00:00:00Z", "{hosts: [api.example.com], match: {path: /v1}, backend: {url: 'http://y:1'}}"))
        .compile();
    let order: Vec<&str> = c
        .snapshot
        .routes
        .iter()
        .map(|r| r.key.name.as_str())
        .collect();
    assert_eq!(
        order,
        [
            "exact-path",
            "exact-long-prefix",
            "exact-prefix",
            "wild",
            "any-host"
        ]
    );
}

fn tenant_diagnostic(spec: &str) -> Diagnostic {
    let yaml = format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: bad, namespace: shop, creationTimestamp: \"2026-05-01T00:00:00Z\"}}\nspec: {spec}\n"
    );
    let c = World::parse(BASE)
        .with("apiVersion: v1\nkind: Secret\nmetadata: {name: bad-key, namespace: shop}\nstringData: {apiKey: bad-secret, empty: '  '}\n")
        .with(&yaml)
        .compile();
    assert_eq!(c.snapshot.tenants.len(), 1, "the good tenant stays");
    assert_eq!(c.snapshot.tenants[0].key.name, "acme");
    let d = only_diagnostic(&c).clone();
    assert_eq!(
        (d.kind, d.object.name.as_str()),
        (ObjectKind::Tenant, "bad")
    );
    d
}

#[test]
fn tenant_with_missing_plan_is_excluded() {
    let d = tenant_diagnostic("{quotaPolicyRef: {name: enterprise}}");
    assert_eq!(
        (d.field.as_str(), d.reason),
        ("spec.quotaPolicyRef.name", Reason::PlanNotFound)
    );
    let d = tenant_diagnostic(
        "{subscriptions: [{apiRouteRef: {name: chat}, quotaPolicyRef: {name: nope}}]}",
    );
    assert_eq!(
        (d.field.as_str(), d.reason),
        (
            "spec.subscriptions[0].quotaPolicyRef.name",
            Reason::PlanNotFound
        )
    );
}

#[test]
fn tenant_on_a_rejected_plan_is_excluded() {
    let c = World::parse(BASE)
        .with("apiVersion: tollgate.dev/v1alpha1\nkind: QuotaPolicy\nmetadata: {name: broken, namespace: shop}\nspec: {timezone: Nowhere/Here}\n")
        .with("apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {name: bad, namespace: shop}\nspec: {quotaPolicyRef: {name: broken}}\n")
        .compile();
    let reasons: Vec<Reason> = c.diagnostics.iter().map(|d| d.reason).collect();
    assert_eq!(reasons, [Reason::UnknownTimeZone, Reason::PlanNotAccepted]);
}

#[test]
fn tenant_with_missing_secret_or_key_is_excluded() {
    let d = tenant_diagnostic("{apiKeys: [{secretRef: {name: nope}}]}");
    assert_eq!(
        (d.field.as_str(), d.reason),
        ("spec.apiKeys[0].secretRef.name", Reason::SecretNotFound)
    );
    let d = tenant_diagnostic("{apiKeys: [{secretRef: {name: bad-key, key: token}}]}");
    assert_eq!(
        (d.field.as_str(), d.reason),
        ("spec.apiKeys[0].secretRef.key", Reason::SecretKeyNotFound)
    );
    let d = tenant_diagnostic("{apiKeys: [{secretRef: {name: bad-key, key: empty}}]}");
    assert_eq!(d.reason, Reason::SecretKeyNotFound);
}

#[test]
fn a_key_shared_by_two_tenants_stays_with_the_older() {
    let d = tenant_diagnostic("{apiKeys: [{secretRef: {name: acme-key}}]}");
    assert_eq!(
        (d.field.as_str(), d.reason),
        ("spec.apiKeys[0]", Reason::DuplicateApiKey)
    );
    assert!(d.message.contains("shop/acme"));
}

#[test]
fn malformed_paid_through_is_reported() {
    let d = tenant_diagnostic("{billing: {state: Active, paidThrough: next-tuesday}}");
    assert_eq!(d.field, "spec.billing.paidThrough");
}

#[test]
fn subscription_states_follow_route_approval() {
    let c = World::parse(BASE)
        .with(&route_yaml("manual", "2026-01-01T00:00:00Z", "{match: {path: /m}, backend: {url: 'http://y:1'}, approval: Manual, approvedTenants: [someone-else]}"))
        .with(&route_yaml("closed", "2026-01-01T00:00:00Z", "{match: {path: /c}, backend: {url: 'http://y:1'}, approval: Manual, approvedTenants: [t], rejectedTenants: [t]}"))
        .with("apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {name: t, namespace: shop}\nspec: {billing: {state: PastDue}, subscriptions: [{apiRouteRef: {name: manual}}, {apiRouteRef: {name: closed}}, {apiRouteRef: {name: gone}}]}\n")
        .compile();
    assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
    let states: Vec<SubscriptionState> = c.subscriptions[&ObjectKey::new("shop", "t")]
        .iter()
        .map(|s| s.state)
        .collect();
    assert_eq!(
        states,
        [
            SubscriptionState::PendingApproval,
            SubscriptionState::Rejected,
            SubscriptionState::RouteNotFound
        ]
    );
    let t = c
        .snapshot
        .tenants
        .iter()
        .find(|t| t.key.name == "t")
        .expect("compiled");
    assert_eq!(t.billing_state, BillingState::PastDue);
}

#[test]
fn one_bad_object_of_each_kind_never_affects_the_others() {
    let good = World::parse(BASE).compile();
    let with_bad = World::parse(BASE)
        .with("apiVersion: tollgate.dev/v1alpha1\nkind: QuotaPolicy\nmetadata: {name: zz-bad, namespace: shop}\nspec: {timezone: Bad/Zone}\n")
        .with(&route_yaml("zz-bad", "2020-01-01T00:00:00Z", "{match: {path: relative}, backend: {url: 'http://y:1'}}"))
        .with("apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {name: zz-bad, namespace: shop}\nspec: {apiKeys: [{secretRef: {name: missing}}]}\n")
        .compile();
    assert_eq!(with_bad.diagnostics.len(), 3, "{:#?}", with_bad.diagnostics);
    assert_eq!(with_bad.snapshot, good.snapshot);
}

#[test]
fn parse_decimal_accepts_money_and_rejects_floats() {
    assert_eq!(parse_decimal("50.00"), Ok(Decimal::new(5000, 2)));
    assert_eq!(parse_decimal("0.000150"), Ok(Decimal::new(150, 6)));
    for bad in ["", "1e3", "-1", "1.", ".5", "1.1234567", "NaN"] {
        assert!(parse_decimal(bad).is_err(), "{bad}");
    }
}

#[test]
fn backend_request_headers_take_their_values_from_secrets() {
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: openai, namespace: shop, labels: {tollgate.dev/backend-credentials: 'true'}}\nstringData: {apiKey: \"sk-test-123\\n\", other: x}\n";
    let spec = "{match: {pathPrefix: /llm}, backend: {url: 'https://api.openai.com', requestHeaders: [{name: Authorization, secretKeyRef: {name: openai}, valuePrefix: 'Bearer '}]}}";
    let c = World::parse(BASE)
        .with(secret)
        .with(&route_yaml("llm", "2026-02-01T00:00:00Z", spec))
        .compile();
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    let route = c
        .snapshot
        .routes
        .iter()
        .find(|r| r.key.name == "llm")
        .expect("compiled");
    assert_eq!(route.request_headers.len(), 1);
    assert_eq!(route.request_headers[0].name, "Authorization");
    assert_eq!(route.request_headers[0].value, "Bearer sk-test-123");
    assert!(
        !format!("{route:?}").contains("sk-test"),
        "Debug never shows a credential"
    );

    // Missing Secret, missing key, a header the proxy owns, a value that would split a request,
    // a tenant's key Secret (labelled tollgate.dev/api-key, not as a backend credential).
    for (spec, field, reason) in [
        (
            "{match: {pathPrefix: /b}, backend: {url: 'http://x:1', requestHeaders: [{name: x-api-key, secretKeyRef: {name: nowhere}}]}}",
            "spec.backend.requestHeaders[0].secretKeyRef.name",
            Reason::SecretNotFound,
        ),
        (
            "{match: {pathPrefix: /b}, backend: {url: 'http://x:1', requestHeaders: [{name: x-api-key, secretKeyRef: {name: openai, key: missing}}]}}",
            "spec.backend.requestHeaders[0].secretKeyRef.key",
            Reason::SecretKeyNotFound,
        ),
        (
            "{match: {pathPrefix: /b}, backend: {url: 'http://x:1', requestHeaders: [{name: X-Tollgate-Tenant, secretKeyRef: {name: openai}}]}}",
            "spec.backend.requestHeaders[0].name",
            Reason::Invalid,
        ),
        (
            "{match: {pathPrefix: /b}, backend: {url: 'http://x:1', requestHeaders: [{name: x_api_key, secretKeyRef: {name: openai}}]}}",
            "spec.backend.requestHeaders[0].name",
            Reason::Invalid,
        ),
        (
            "{match: {pathPrefix: /b}, backend: {url: 'http://x:1', requestHeaders: [{name: x-api-key, secretKeyRef: {name: acme-key}}]}}",
            "spec.backend.requestHeaders[0].secretKeyRef.name",
            Reason::Invalid,
        ),
        (
            "{match: {pathPrefix: /b}, backend: {url: 'http://x:1', requestHeaders: [{name: x-api-key, secretKeyRef: {name: openai, key: other}, valuePrefix: \"a\\r\\nb: \"}]}}",
            "spec.backend.requestHeaders[0].secretKeyRef.key",
            Reason::Invalid,
        ),
    ] {
        let c = World::parse(BASE)
            .with(secret)
            .with(&route_yaml("bad", "2026-02-01T00:00:00Z", spec))
            .compile();
        let d = only_diagnostic(&c);
        assert_eq!(
            (d.field.as_str(), d.reason),
            (field, reason),
            "{spec}: {}",
            d.message
        );
    }
}

/// The QuotaPolicy `shop/llm` with `spec`, compiled beside the base world.
fn compiled_plan(spec: &str) -> crate::snapshot::Plan {
    let yaml = format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: QuotaPolicy\nmetadata: {{name: llm, namespace: shop}}\nspec: {spec}\n"
    );
    World::parse(BASE)
        .with(&yaml)
        .compile()
        .snapshot
        .plans
        .into_iter()
        .find(|p| p.key.name == "llm")
        .expect("compiled")
}

#[test]
fn allowed_models_are_names_or_prefixes_ending_in_a_star() {
    let d = plan_diagnostic("{allowedModels: [gpt-4o, 'claude-*-opus']}");
    assert_eq!(d.field, "spec.allowedModels[1]");
    let plan = compiled_plan("{allowedModels: [gpt-4o, 'claude-*']}");
    for (model, allowed) in [
        (Some("gpt-4o"), true),
        (Some("gpt-4o-mini"), false),
        (Some("claude-opus-4-6"), true),
        (Some("gemini-2.5-flash"), false),
        (None, false),
    ] {
        assert_eq!(plan.allows_model(model), allowed, "{model:?}");
    }
}

#[test]
fn a_quota_for_some_models_counts_only_their_calls_and_a_plan_has_at_most_16_quotas() {
    let d =
        plan_diagnostic("{quotas: [{name: q, limit: '1', period: Day, models: [gpt-4o, '*']}]}");
    assert_eq!(d.field, "spec.quotas[0].models[1]");
    let many: Vec<String> = (0..17)
        .map(|i| format!("{{name: q{i}, limit: '1', period: Day}}"))
        .collect();
    let d = plan_diagnostic(&format!("{{quotas: [{}]}}", many.join(", ")));
    assert_eq!(d.field, "spec.quotas");
    assert!(d.message.contains("at most 16"), "{}", d.message);

    let plan = compiled_plan(
        "{quotas: [{name: all, limit: '9', period: Day}, {name: claude, limit: '1', period: Day, models: ['claude-*']}]}",
    );
    let (all, claude) = (&plan.quotas[0], &plan.quotas[1]);
    for (model, counted) in [
        (Some("claude-opus-4-6"), true),
        (Some("gpt-4o"), false),
        (None, false),
    ] {
        assert!(all.counts_model(model), "{model:?}");
        assert_eq!(claude.counts_model(model), counted, "{model:?}");
    }
}

#[test]
fn spend_alert_thresholds_are_percentages_each_once_in_order() {
    let d = plan_diagnostic("{quotas: [{name: q, limit: '10', period: Day, alertAt: [50, 0]}]}");
    assert_eq!(d.field, "spec.quotas[0].alertAt");
    assert!(d.message.contains("0 is not a percentage"), "{}", d.message);
    let d = plan_diagnostic("{quotas: [{name: q, limit: '10', period: Day, alertAt: [150]}]}");
    assert_eq!(d.field, "spec.quotas[0].alertAt");
    let plan = compiled_plan(
        "{quotas: [{name: q, limit: '10', period: Day, alertAt: [100, 50, 80, 50]}]}",
    );
    assert_eq!(plan.quotas[0].alert_at, [50, 80, 100]);
}

#[test]
fn exported_event_names_are_valid_each_once_per_plan_and_overage_needs_both() {
    let plan = compiled_plan(
        "{quotas: [{name: q, limit: '10', period: Month, meterEventName: api_requests, \
         whenExhausted: Overage, overageMeterEventName: api_requests_overage}]}",
    );
    let q = &plan.quotas[0];
    assert!(q.overage);
    assert_eq!(q.meter_event_name.as_deref(), Some("api_requests"));
    assert_eq!(
        q.overage_meter_event_name.as_deref(),
        Some("api_requests_overage")
    );
    assert!(!compiled_plan("{quotas: [{name: q, limit: '10', period: Day}]}").quotas[0].overage);
    // Budgets for different models count different calls: one name for both is fine.
    let plan = compiled_plan(
        "{quotas: [{name: a, metric: TotalTokens, limit: '10', period: Day, models: ['gpt-*'], meterEventName: tokens}, \
         {name: b, metric: TotalTokens, limit: '10', period: Day, models: ['claude-*'], meterEventName: tokens}]}",
    );
    assert_eq!(plan.quotas.len(), 2);

    for (spec, field, says) in [
        (
            "{quotas: [{name: q, limit: '1', period: Day, meterEventName: 'api requests'}]}",
            "spec.quotas[0].meterEventName",
            "1 to 100 letters",
        ),
        (
            "{quotas: [{name: d, limit: '1', period: Day, meterEventName: calls}, \
             {name: m, limit: '9', period: Month, meterEventName: calls}]}",
            "spec.quotas[1].meterEventName",
            "billed twice",
        ),
        (
            // A budget for some models and the quota every request counts in: the budget's
            // calls would be billed twice.
            "{quotas: [{name: a, metric: TotalTokens, limit: '10', period: Day, models: ['gpt-*'], meterEventName: tokens}, \
             {name: all, metric: TotalTokens, limit: '99', period: Day, meterEventName: tokens}]}",
            "spec.quotas[1].meterEventName",
            "billed twice",
        ),
        (
            "{quotas: [{name: q, limit: '1', period: Day, meterEventName: a, overageMeterEventName: b}]}",
            "spec.quotas[0].overageMeterEventName",
            "whenExhausted: Overage",
        ),
        (
            "{quotas: [{name: q, limit: '1', period: Day, whenExhausted: Overage, overageMeterEventName: b}]}",
            "spec.quotas[0].overageMeterEventName",
            "needs meterEventName",
        ),
    ] {
        let d = plan_diagnostic(spec);
        assert_eq!(d.field, field, "{spec}");
        assert!(d.message.contains(says), "{spec}: {}", d.message);
    }
}

#[test]
fn translated_routes_and_fallbacks_compile_to_backends_in_order() {
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: gemini, namespace: shop, labels: {tollgate.dev/backend-credentials: 'true'}}\nstringData: {apiKey: g-123}\n";
    let spec = "{match: {pathPrefix: /v1}, metering: Anthropic, translate: {from: OpenAI, models: {gpt-4o: claude-sonnet-4-5}}, backend: {url: 'https://api.anthropic.com'}, fallbacks: [{url: 'https://generativelanguage.googleapis.com/', api: Gemini, models: {gpt-4o: gemini-2.5-pro}, timeout: 5s, requestHeaders: [{name: x-goog-api-key, secretKeyRef: {name: gemini}}]}, {service: {name: vllm, port: 8000}}]}";
    let c = World::parse(BASE)
        .with(secret)
        .with(&route_yaml("llm", "2026-02-01T00:00:00Z", spec))
        .compile();
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    let route = c
        .snapshot
        .routes
        .iter()
        .find(|r| r.key.name == "llm")
        .expect("compiled");
    assert_eq!(route.caller_api, Some(Metering::OpenAI));
    assert_eq!(route.models["gpt-4o"], "claude-sonnet-4-5");
    assert!(route.calls_llm());
    let [gemini, vllm] = &route.fallbacks[..] else {
        panic!("two fallbacks: {:?}", route.fallbacks)
    };
    assert_eq!(
        (gemini.api, gemini.timeout_ms, gemini.base_url.as_str()),
        (
            Metering::Gemini,
            5000,
            "https://generativelanguage.googleapis.com"
        )
    );
    assert_eq!(gemini.request_headers[0].value, "g-123");
    assert_eq!(
        (vllm.api, vllm.base_url.as_str()),
        (Metering::Anthropic, "http://vllm.shop.svc:8000"),
        "the route's API when not named"
    );

    for (spec, field) in [
        (
            "{match: {pathPrefix: /b}, translate: {from: OpenAI}, backend: {url: 'http://x:1'}}",
            "spec.metering",
        ),
        (
            "{match: {pathPrefix: /b}, fallbacks: [{url: 'http://y:1'}], backend: {url: 'http://x:1'}}",
            "spec.fallbacks",
        ),
        (
            "{match: {pathPrefix: /b}, metering: OpenAI, fallbacks: [{url: 'http://y:1', service: {name: s, port: 1}}], backend: {url: 'http://x:1'}}",
            "spec.fallbacks[0]",
        ),
        (
            "{match: {pathPrefix: /b}, metering: OpenAI, fallbacks: [{url: 'http://y:1', api: Requests}], backend: {url: 'http://x:1'}}",
            "spec.fallbacks[0].api",
        ),
        (
            "{match: {pathPrefix: /b}, metering: Gemini, fallbacks: [{url: 'http://y:1', api: OpenAI}], backend: {url: 'http://x:1'}}",
            "spec.fallbacks[0].api",
        ),
        (
            "{match: {pathPrefix: /b}, metering: OpenAI, fallbacks: [{url: 'http://y:1', timeout: 0s}], backend: {url: 'http://x:1'}}",
            "spec.fallbacks[0].timeout",
        ),
        (
            "{match: {pathPrefix: /b}, metering: OpenAI, fallbacks: [{url: 'http://y:1', requestHeaders: [{name: x-api-key, secretKeyRef: {name: nowhere}}]}], backend: {url: 'http://x:1'}}",
            "spec.fallbacks[0].requestHeaders[0].secretKeyRef.name",
        ),
        (
            "{match: {pathPrefix: /b}, metering: OpenAI, translate: {from: Anthropic, models: {'a b': c}}, backend: {url: 'http://x:1'}}",
            "spec.translate.models",
        ),
        (
            "{match: {pathPrefix: /b}, metering: OpenAI, translate: {from: Anthropic}, backend: {directResponse: {status: 200}}}",
            "spec.translate",
        ),
    ] {
        let c = World::parse(BASE)
            .with(&route_yaml("bad", "2026-02-01T00:00:00Z", spec))
            .compile();
        let d = only_diagnostic(&c);
        assert_eq!(d.field.as_str(), field, "{spec}: {}", d.message);
    }
}

#[test]
fn prompt_apis_compile_with_their_schemas_checked() {
    let prompt = |extra: &str| {
        format!(
            "{{match: {{path: /v1/summary}}, metering: OpenAI, backend: {{url: 'https://api.openai.com'}}, prompt: {{model: gpt-4o-mini, system: 'Summarize in {{{{lang}}}}.', user: '{{{{ text }}}}', inputSchema: {{type: object, properties: {{text: {{type: string}}, lang: {{type: string}}}}}}{extra}}}}}"
        )
    };
    let c = World::parse(BASE)
        .with(&route_yaml(
            "summary",
            "2026-02-01T00:00:00Z",
            &prompt(", temperature: '0.2', maxOutputTokens: 200, responseSchema: {type: object}"),
        ))
        .compile();
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    let route = c
        .snapshot
        .routes
        .iter()
        .find(|r| r.key.name == "summary")
        .expect("compiled");
    let compiled = route.prompt.as_ref().expect("a prompt");
    assert_eq!(
        (compiled.temperature, compiled.max_output_tokens),
        (Some(0.2), Some(200))
    );
    assert!(route.calls_llm());
    assert_eq!(route.caller_api(), Metering::OpenAI);

    for (spec, field) in [
        (
            prompt("").replace("'{{ text }}'", "'{{ text }} {{ topic }}'"),
            "spec.prompt.user",
        ),
        (
            prompt("").replace("{type: object, properties", "{type: array, properties"),
            "spec.prompt.inputSchema",
        ),
        (
            prompt(", responseSchema: {type: 7}"),
            "spec.prompt.responseSchema",
        ),
        (prompt(", temperature: '2.5'"), "spec.prompt.temperature"),
        (
            prompt("").replace(
                "metering: OpenAI",
                "metering: OpenAI, translate: {from: Anthropic}",
            ),
            "spec.translate",
        ),
        (
            prompt("").replace("metering: OpenAI, ", ""),
            "spec.metering",
        ),
    ] {
        let c = World::parse(BASE)
            .with(&route_yaml("bad", "2026-02-01T00:00:00Z", &spec))
            .compile();
        let d = only_diagnostic(&c);
        assert_eq!(d.field.as_str(), field, "{spec}: {}", d.message);
    }
}

#[test]
fn websocket_limits_have_defaults_and_bounds() {
    let route = |spec: &str| {
        World::parse(BASE)
            .with(&route_yaml("ws", "2026-02-01T00:00:00Z", spec))
            .compile()
    };
    let c = route("{match: {pathPrefix: /ws}, backend: {url: 'http://x:1'}}");
    let compiled = c
        .snapshot
        .routes
        .iter()
        .find(|r| r.key.name == "ws")
        .expect("compiled");
    assert_eq!(
        (compiled.websocket_idle_ms, compiled.websocket_lifetime_ms),
        (
            crate::snapshot::DEFAULT_WEBSOCKET_IDLE_MS,
            crate::snapshot::DEFAULT_WEBSOCKET_LIFETIME_MS
        )
    );
    let c = route(
        "{match: {pathPrefix: /ws}, backend: {url: 'http://x:1'}, websocket: {idleTimeout: 30s, maxLifetime: 2h}}",
    );
    let compiled = c
        .snapshot
        .routes
        .iter()
        .find(|r| r.key.name == "ws")
        .expect("compiled");
    assert_eq!(
        (compiled.websocket_idle_ms, compiled.websocket_lifetime_ms),
        (30_000, 7_200_000)
    );
    for (spec, field) in [
        (
            "{match: {pathPrefix: /ws}, backend: {url: 'http://x:1'}, websocket: {idleTimeout: 500ms}}",
            "spec.websocket.idleTimeout",
        ),
        (
            "{match: {pathPrefix: /ws}, backend: {url: 'http://x:1'}, websocket: {maxLifetime: 200h}}",
            "spec.websocket.maxLifetime",
        ),
        (
            "{match: {pathPrefix: /ws}, backend: {url: 'http://x:1'}, metering: OpenAI, websocket: {}}",
            "spec.websocket",
        ),
    ] {
        let c = route(spec);
        let d = only_diagnostic(&c);
        assert_eq!(d.field.as_str(), field, "{spec}: {}", d.message);
    }
}

#[test]
fn http2_backends_are_opt_in_and_refused_where_tollgate_writes_http1() {
    let route = |spec: &str| {
        World::parse(BASE)
            .with(&route_yaml("grpc", "2026-02-01T00:00:00Z", spec))
            .compile()
    };
    let http2 = |spec: &str| {
        route(spec)
            .snapshot
            .routes
            .iter()
            .find(|r| r.key.name == "grpc")
            .map(|r| r.http2)
    };
    assert_eq!(
        http2("{match: {pathPrefix: /g}, backend: {url: 'http://x:1'}}"),
        Some(false),
        "Auto by default: only gRPC calls go over HTTP/2"
    );
    assert_eq!(
        http2("{match: {pathPrefix: /g}, backend: {url: 'https://x:1', protocol: HTTP2}}"),
        Some(true)
    );
    for spec in [
        "{match: {pathPrefix: /g}, backend: {url: 'http://x:1', protocol: HTTP2}, websocket: {}}",
        "{match: {pathPrefix: /g}, backend: {directResponse: {status: 200}, protocol: HTTP2}}",
        "{match: {pathPrefix: /g}, backend: {url: 'http://x:1', protocol: HTTP2}, metering: OpenAI, translate: {from: Anthropic}}",
    ] {
        let c = route(spec);
        let d = only_diagnostic(&c);
        assert_eq!(
            d.field.as_str(),
            "spec.backend.protocol",
            "{spec}: {}",
            d.message
        );
    }
}
