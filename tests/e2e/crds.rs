//! The CRDs on a real kube-apiserver: installation, admission (schema + CEL), kubectl ergonomics,
//! and the status subresource.

use anyhow::Result;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tollgate_crds::resources::{QuotaPolicy, QuotaPolicyStatus};
use tollgate_tests::{TestNamespace, cluster, repo_root};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn crds_are_established_with_names_and_category() -> Result<()> {
    let out = cluster().kubectl_ok(&["get", "crd", "-o", "name"])?;
    for crd in [
        "apiroutes.tollgate.dev",
        "tenants.tollgate.dev",
        "quotapolicies.tollgate.dev",
    ] {
        assert!(out.contains(crd), "{crd} missing in {out}");
    }
    let resources =
        cluster().kubectl_ok(&["api-resources", "--api-group=tollgate.dev", "--no-headers"])?;
    for (short, kind) in [("ar", "ApiRoute"), ("tn", "Tenant"), ("qp", "QuotaPolicy")] {
        let line = resources
            .lines()
            .find(|l| l.contains(kind))
            .unwrap_or_default();
        assert!(
            line.split_whitespace().any(|w| w == short),
            "{kind} lacks short name {short}: {line:?}"
        );
    }
    Ok(())
}

fn all_example_manifests() -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![repo_root().join("examples")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[tokio::test]
async fn every_example_manifest_is_accepted() -> Result<()> {
    let files = all_example_manifests();
    assert!(
        !files.is_empty(),
        "no example manifests found under examples/"
    );
    let ns = TestNamespace::new("examples").await?;
    for file in files {
        let out = ns.kubectl(&["apply", "-f", &file.display().to_string()], None)?;
        assert!(
            out.status.success(),
            "{} rejected: {}",
            file.display(),
            stderr(&out)
        );
    }
    let listed = ns.kubectl(&["get", "tollgate", "-o", "name"], None)?;
    let listed = String::from_utf8_lossy(&listed.stdout);
    for name in [
        "apiroute.tollgate.dev/hello",
        "tenant.tollgate.dev/acme",
        "quotapolicy.tollgate.dev/starter",
    ] {
        assert!(
            listed.contains(name),
            "`kubectl get tollgate` lacks {name}:\n{listed}"
        );
    }
    Ok(())
}

/// One bad object per admission rule: (what is wrong, manifest, message the user must see).
const REJECTIONS: &[(&str, &str, &str)] = &[
    (
        "both path and pathPrefix",
        "kind: ApiRoute\nspec: {match: {path: /a, pathPrefix: /a}, backend: {url: 'http://x:1'}}",
        "exactly one of match.pathPrefix or match.path must be set",
    ),
    (
        "neither path nor pathPrefix",
        "kind: ApiRoute\nspec: {match: {methods: [GET]}, backend: {url: 'http://x:1'}}",
        "exactly one of match.pathPrefix or match.path must be set",
    ),
    (
        "two backends",
        "kind: ApiRoute\nspec: {match: {path: /a}, backend: {url: 'http://x:1', service: {name: s, port: 80}}}",
        "exactly one of backend.service, backend.url or backend.directResponse must be set",
    ),
    (
        "no backend",
        "kind: ApiRoute\nspec: {match: {path: /a}, backend: {timeout: 1s}}",
        "exactly one of backend.service, backend.url or backend.directResponse must be set",
    ),
    (
        "no backend at all",
        "kind: ApiRoute\nspec: {match: {path: /a}}",
        "exactly one of backend.service, backend.url or backend.directResponse must be set",
    ),
    (
        "a workload selector without labels",
        "kind: ApiRoute\nspec: {match: {path: /a}, workloadSelector: {matchLabels: {}}}",
        "workloadSelector.matchLabels needs at least one label",
    ),
    (
        "approvedTenants with Automatic approval",
        "kind: ApiRoute\nspec: {match: {path: /a}, backend: {url: 'http://x:1'}, approvedTenants: [acme]}",
        "approvedTenants is only allowed with approval: Manual",
    ),
    (
        "rejectedTenants with Automatic approval",
        "kind: ApiRoute\nspec: {match: {path: /a}, backend: {url: 'http://x:1'}, rejectedTenants: [acme]}",
        "rejectedTenants is only allowed with approval: Manual",
    ),
    (
        "timeout above 1h",
        "kind: ApiRoute\nspec: {match: {path: /a}, backend: {url: 'http://x:1', timeout: 2h}}",
        "timeout must be more than 0s and at most 1h",
    ),
    (
        "malformed timeout",
        "kind: ApiRoute\nspec: {match: {path: /a}, backend: {url: 'http://x:1', timeout: soon}}",
        "spec.backend.timeout",
    ),
    (
        "sunset on a published route",
        "kind: ApiRoute\nspec: {match: {path: /a}, backend: {url: 'http://x:1'}, lifecycle: {sunset: '2027-01-01T00:00:00Z'}}",
        "sunset applies to Deprecated or Retired routes only",
    ),
    (
        "wildcard in the middle of a host",
        "kind: ApiRoute\nspec: {hosts: ['api.*.com'], match: {path: /a}, backend: {url: 'http://x:1'}}",
        "spec.hosts[0]",
    ),
    (
        "direct response status out of range",
        "kind: ApiRoute\nspec: {match: {path: /a}, backend: {directResponse: {status: 700}}}",
        "spec.backend.directResponse.status",
    ),
    (
        "unknown method",
        "kind: ApiRoute\nspec: {match: {path: /a, methods: [FETCH]}, backend: {url: 'http://x:1'}}",
        "Unsupported value: \"FETCH\"",
    ),
    (
        "relative path",
        "kind: ApiRoute\nspec: {match: {path: a}, backend: {url: 'http://x:1'}}",
        "spec.match.path",
    ),
    (
        "translation without the backend's API",
        "kind: ApiRoute\nspec: {match: {path: /a}, translate: {from: OpenAI}, backend: {url: 'http://x:1'}}",
        "translate and fallbacks need metering to name the backend's API",
    ),
    (
        "a fallback with both a service and a url",
        "kind: ApiRoute\nspec: {match: {path: /a}, metering: OpenAI, backend: {url: 'http://x:1'}, fallbacks: [{url: 'http://y:1', service: {name: s, port: 1}}]}",
        "exactly one of service or url must be set",
    ),
    (
        "an unknown caller API",
        "kind: ApiRoute\nspec: {match: {path: /a}, metering: OpenAI, translate: {from: Gemini}, backend: {url: 'http://x:1'}}",
        "Unsupported value: \"Gemini\"",
    ),
    (
        "Cost quota without pricing",
        "kind: QuotaPolicy\nspec: {quotas: [{name: budget, metric: Cost, limit: '50.00', period: Month}]}",
        "a quota with metric Cost needs spec.pricing",
    ),
    (
        "an allowed model with * inside",
        "kind: QuotaPolicy\nspec: {allowedModels: [gpt-4o, 'claude-*-opus']}",
        "spec.allowedModels[1]: Invalid value",
    ),
    (
        "a quota for models, one of them a lone *",
        "kind: QuotaPolicy\nspec: {quotas: [{name: q, limit: '1', period: Day, models: [gpt-4o, '*']}]}",
        "spec.quotas[0].models[1]: Invalid value",
    ),
    (
        "fractional limit on a count",
        "kind: QuotaPolicy\nspec: {quotas: [{name: q, metric: Requests, limit: '10.5', period: Month}]}",
        "limit must be a whole number unless metric is Cost",
    ),
    (
        "malformed decimal",
        "kind: QuotaPolicy\nspec: {quotas: [{name: q, limit: '1,000', period: Month}]}",
        "spec.quotas[0].limit",
    ),
    (
        "window longer than 1h",
        "kind: QuotaPolicy\nspec: {rateLimits: [{name: r, requests: 5, window: 2h}]}",
        "window must be between 1s and 1h",
    ),
    (
        "zero requests",
        "kind: QuotaPolicy\nspec: {rateLimits: [{name: r, requests: 0, window: 1s}]}",
        "spec.rateLimits[0].requests",
    ),
    (
        "rate limit name with upper case",
        "kind: QuotaPolicy\nspec: {rateLimits: [{name: Per_Second, requests: 5, window: 1s}]}",
        "spec.rateLimits[0].name",
    ),
    (
        "duplicate rate limit names",
        "kind: QuotaPolicy\nspec: {rateLimits: [{name: r, requests: 5, window: 1s}, {name: r, requests: 9, window: 1m}]}",
        "Duplicate value",
    ),
    (
        "duplicate quota names",
        "kind: QuotaPolicy\nspec: {quotas: [{name: q, limit: '1', period: Day}, {name: q, limit: '2', period: Month}]}",
        "Duplicate value",
    ),
    (
        "unknown period",
        "kind: QuotaPolicy\nspec: {quotas: [{name: q, limit: '1', period: Fortnight}]}",
        "Unsupported value: \"Fortnight\"",
    ),
    (
        "unknown failure policy",
        "kind: QuotaPolicy\nspec: {failurePolicy: Maybe}",
        "Unsupported value: \"Maybe\"",
    ),
    (
        "lower-case currency",
        "kind: QuotaPolicy\nspec: {pricing: {currency: usd}}",
        "spec.pricing.currency",
    ),
    (
        "non-http payment URL",
        "kind: QuotaPolicy\nspec: {paymentUrl: 'ftp://billing'}",
        "spec.paymentUrl",
    ),
    (
        "unknown billing state",
        "kind: Tenant\nspec: {billing: {state: Overdue}}",
        "Unsupported value: \"Overdue\"",
    ),
    (
        "paidThrough that is not a time",
        "kind: Tenant\nspec: {billing: {paidThrough: next-week}}",
        "spec.billing.paidThrough",
    ),
    (
        "the same route subscribed twice",
        "kind: Tenant\nspec: {subscriptions: [{apiRouteRef: {name: chat}}, {apiRouteRef: {name: chat}}]}",
        "each ApiRoute may appear only once in subscriptions",
    ),
    (
        "invalid Secret name",
        "kind: Tenant\nspec: {apiKeys: [{secretRef: {name: Not_A_Name}}]}",
        "spec.apiKeys[0].secretRef.name",
    ),
    (
        "an overage event name on a quota that refuses",
        "kind: QuotaPolicy\nspec: {quotas: [{name: q, limit: '1', period: Day, meterEventName: a, overageMeterEventName: b}]}",
        "overageMeterEventName needs whenExhausted: Overage and meterEventName",
    ),
    (
        "a meter event name with a space",
        "kind: QuotaPolicy\nspec: {quotas: [{name: q, limit: '1', period: Day, meterEventName: 'api requests'}]}",
        "spec.quotas[0].meterEventName",
    ),
    (
        "an alert webhook that is not a URL",
        "kind: Tenant\nspec: {alertWebhook: {url: owner.example.com, secretRef: {name: hook, key: secret}}}",
        "spec.alertWebhook.url",
    ),
];

#[tokio::test]
async fn each_admission_rule_rejects_its_bad_object_with_its_message() -> Result<()> {
    let ns = TestNamespace::new("admission").await?;
    let mut failures = Vec::new();
    for (i, (what, body, message)) in REJECTIONS.iter().enumerate() {
        let manifest =
            format!("apiVersion: tollgate.dev/v1alpha1\nmetadata: {{name: bad-{i}}}\n{body}\n");
        let out = ns.apply(&manifest)?;
        let err = stderr(&out);
        if out.status.success() {
            failures.push(format!(
                "{what}: accepted, expected rejection with {message:?}"
            ));
        } else if !err.contains(message) {
            failures.push(format!("{what}: rejected, but without {message:?}: {err}"));
        }
    }
    assert!(
        failures.is_empty(),
        "admission mismatches:\n{}",
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn valid_edge_cases_are_accepted() -> Result<()> {
    let ns = TestNamespace::new("admission-ok").await?;
    ns.apply_ok(
        r#"apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {name: manual}
spec:
  hosts: ["*.example.com", api.example.org]
  match: {pathPrefix: /v1/chat, methods: [POST]}
  backend: {service: {name: chat-svc, port: 8080}, timeout: 1h}
  metering: OpenAI
  approval: Manual
  approvedTenants: [acme]
  rejectedTenants: [initech]
  lifecycle: {state: Deprecated, sunset: "2027-01-01T00:00:00Z", deprecatedAt: "2026-06-01T00:00:00Z"}
---
# Served by the sidecars of the pods labelled app=reports, forwarding to the app beside each.
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {name: sidecar}
spec:
  workloadSelector: {matchLabels: {app: reports}}
  match: {pathPrefix: /reports}
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {name: budget}
spec:
  rateLimits: [{name: per-hour, requests: 1000, window: 1h}]
  quotas:
  - {name: monthly-cost, metric: Cost, limit: "50.123456", period: Month}
  - {name: daily-tokens, metric: TotalTokens, limit: "1000000", period: Day}
  - {name: monthly-requests, limit: "100000", period: Month, meterEventName: api_requests,
     whenExhausted: Overage, overageMeterEventName: api_requests_overage}
  timezone: America/New_York
  pricing:
    currency: EUR
    perRequest: "0.0001"
    models: [{model: gpt-4o-mini, inputPerMillionTokens: "0.15", outputPerMillionTokens: "0.60"}]
  failurePolicy: FailOpen
"#,
    )?;
    Ok(())
}

#[tokio::test]
async fn printer_columns_and_category_work() -> Result<()> {
    let ns = TestNamespace::new("printer").await?;
    ns.apply_ok(&std::fs::read_to_string(
        repo_root().join("examples/quickstart/plans.yaml"),
    )?)?;
    ns.apply_ok(&std::fs::read_to_string(
        repo_root().join("examples/quickstart/routes.yaml"),
    )?)?;
    ns.apply_ok(&std::fs::read_to_string(
        repo_root().join("examples/quickstart/tenants.yaml"),
    )?)?;
    let routes = String::from_utf8_lossy(&ns.kubectl(&["get", "ar"], None)?.stdout).into_owned();
    let header: Vec<&str> = routes
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "HOSTS",
            "PREFIX",
            "PATH",
            "SERVICE",
            "URL",
            "ACCEPTED",
            "PROGRAMMED",
            "AGE"
        ]
    );
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with("hello") && l.contains("/v1/hello")),
        "{routes}"
    );
    let tenants = String::from_utf8_lossy(&ns.kubectl(&["get", "tn"], None)?.stdout).into_owned();
    let header: Vec<&str> = tenants
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "PLAN", "BILLING", "READY", "AGE"]);
    assert!(
        tenants
            .lines()
            .any(|l| l.starts_with("acme") && l.contains("starter")),
        "{tenants}"
    );
    let plans = String::from_utf8_lossy(&ns.kubectl(&["get", "qp"], None)?.stdout).into_owned();
    let header: Vec<&str> = plans
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "ACCEPTED", "AGE"]);
    let all = String::from_utf8_lossy(&ns.kubectl(&["get", "tollgate"], None)?.stdout).into_owned();
    for kind in [
        "apiroute.tollgate.dev/hello",
        "tenant.tollgate.dev/globex",
        "quotapolicy.tollgate.dev/pro",
    ] {
        assert!(
            all.contains(kind),
            "`kubectl get tollgate` lacks {kind}:\n{all}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn kubectl_explain_shows_field_docs() -> Result<()> {
    let out = cluster().kubectl_ok(&["explain", "apiroute.spec.backend"])?;
    assert!(
        out.contains("exactly one of service, url or directResponse"),
        "{out}"
    );
    let out = cluster().kubectl_ok(&["explain", "quotapolicy.spec.quotas.period"])?;
    assert!(out.contains("Calendar period"), "{out}");
    let out = cluster().kubectl_ok(&["explain", "tenant.status.conditions"])?;
    assert!(out.contains("observedGeneration"), "{out}");
    Ok(())
}

#[tokio::test]
async fn status_is_a_subresource() -> Result<()> {
    let ns = TestNamespace::new("status").await?;
    let plans: Api<QuotaPolicy> = Api::namespaced(ns.client.clone(), &ns.name);
    let plan: QuotaPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "QuotaPolicy",
        "metadata": {"name": "p"},
        "spec": {"quotas": [{"name": "q", "limit": "10", "period": "Day"}]},
        // Status sent with a create is dropped by the API server.
        "status": {"observedGeneration": 99}
    }))?;
    let created = plans.create(&PostParams::default(), &plan).await?;
    assert_eq!(created.status, None, "create must not set status");

    let status = serde_json::json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "QuotaPolicy",
        "status": {"observedGeneration": 1, "conditions": [{
            "type": "Accepted", "status": "True", "reason": "Accepted", "message": "ok",
            "lastTransitionTime": "2026-11-25T00:00:00Z", "observedGeneration": 1}]}
    });
    let pp = PatchParams::apply("tollgate-test").force();
    plans.patch_status("p", &pp, &Patch::Apply(&status)).await?;

    // A spec update leaves status alone...
    let mut current = plans.get("p").await?;
    current.spec.quotas[0].limit = "20".into();
    current.status = Some(QuotaPolicyStatus::default());
    let replaced = plans.replace("p", &PostParams::default(), &current).await?;
    assert_eq!(
        replaced.status.as_ref().and_then(|s| s.observed_generation),
        Some(1)
    );
    assert_eq!(replaced.metadata.generation, Some(2));

    // ...and a status update leaves spec alone (and does not bump the generation).
    let mut current = plans.get("p").await?;
    current.spec.quotas[0].limit = "999".into();
    if let Some(status) = current.status.as_mut() {
        status.observed_generation = Some(2);
    }
    let after = plans
        .replace_status("p", &PostParams::default(), &current)
        .await?;
    assert_eq!(after.spec.quotas[0].limit, "20");
    assert_eq!(after.metadata.generation, Some(2));
    assert_eq!(after.status.and_then(|s| s.observed_generation), Some(2));

    Ok(())
}
