//! Sidecar injection on the real kube-apiserver: the API server calls the operator's webhook over
//! TLS (the caBundle set by the operator itself), with the namespace selector and failure policy
//! the chart uses. Pods are only admitted here (no kubelet), which is what the webhook decides.
//!
//! Then the sidecars themselves: each runs as the kubelet would run its injected container (its
//! arguments, environment and pod-bound token), subscribes with that token, and receives only
//! its own pod's share of the configuration.

use std::time::Duration;

use std::net::SocketAddr;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde_json::{Value, json};
use tollgate_crds::resources::Tenant;
use tollgate_tests::TestNamespace;
use tollgate_tests::fleet::{Fleet, eventually, get};
use tollgate_tests::llm_backend::LlmBackend;
use tollgate_tests::process::free_port;
use tollgate_tests::sidecar::{injected_pod, run_sidecar, template};

/// The name deploy/operator-rbac.yaml lets the operator patch.
const CONFIGURATION: &str = "tollgate-sidecar-injector";
const WAIT: Duration = Duration::from_secs(30);

/// The chart's webhook (charts/tollgate/templates/injection.yaml), with a URL instead of a
/// Service: the operator runs as a local process.
fn configuration(url: &str, operator_ns: &str) -> String {
    format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {{name: {CONFIGURATION}}}
webhooks:
- name: sidecar.tollgate.dev
  admissionReviewVersions: [v1]
  clientConfig: {{url: "{url}/inject"}}
  rules:
  - {{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods], scope: Namespaced}}
  namespaceSelector:
    matchLabels: {{tollgate.dev/injection: enabled}}
    matchExpressions:
    - {{key: kubernetes.io/metadata.name, operator: NotIn, values: [kube-system, kube-public, kube-node-lease, {operator_ns}]}}
  failurePolicy: Fail
  reinvocationPolicy: IfNeeded
  sideEffects: None
  timeoutSeconds: 5
"#
    )
}

fn pod(name: &str, annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, annotations: {{{annotations}}}}}\n\
         spec: {{containers: [{{name: app, image: app:1, ports: [{{containerPort: 8081}}]}}]}}\n"
    )
}

const INGRESS: &str = r#"tollgate.dev/inject: ingress, tollgate.dev/listen-port: "8080", tollgate.dev/app-port: "8081""#;

/// The names of a pod's init containers.
async fn init_containers(pods: &Api<Pod>, name: &str) -> Result<Vec<String>> {
    let pod = pods.get(name).await?;
    Ok(pod
        .spec
        .and_then(|s| s.init_containers)
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.name)
        .collect())
}

#[tokio::test]
async fn annotated_pods_in_opted_in_namespaces_get_the_sidecar_and_nothing_else_is_touched()
-> Result<()> {
    let mut fleet = Fleet::new("inject").await?;
    let kubeconfig = fleet.operator_kubeconfig().to_path_buf();
    let operator = fleet
        .start_operator_as(
            &kubeconfig,
            &[
                ("--webhook-listen", "127.0.0.1:0"),
                ("--webhook-configuration", CONFIGURATION),
                ("--sidecar-image", "tollgate-proxy:test"),
                (
                    "--sidecar-control-plane",
                    "https://tollgate-operator.tollgate-system.svc:8443",
                ),
            ],
        )
        .await?;
    let webhook = fleet.operators[operator]
        .webhook
        .expect("the webhook's address is logged");
    let admin = fleet.operators[operator].admin;
    let apps = TestNamespace::new("inject-apps").await?;
    let plain = TestNamespace::new("inject-plain").await?;
    apps.kubectl_ok(&[
        "label",
        "namespace",
        &apps.name,
        "tollgate.dev/injection=enabled",
    ])?;

    // Registered without a caBundle, as the chart does: the operator fills it in.
    fleet.ns.apply_ok(&configuration(
        &format!("https://{webhook}"),
        &fleet.ns.name,
    ))?;
    let ca = fleet.ns.kubectl_ok(&[
        "get",
        "secret",
        "tollgate-operator-tls",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ])?;
    eventually(WAIT, "the operator to set the caBundle", || async {
        let bundle = fleet
            .ns
            .kubectl_ok(&[
                "get",
                "mutatingwebhookconfiguration",
                CONFIGURATION,
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ])
            .ok()?;
        (bundle.trim() == ca.trim()).then_some(())
    })
    .await?;

    // An annotated pod in an opted-in namespace: the sidecar, first, a native sidecar, with the
    // ports it was asked for. The API server may take a moment to trust the new caBundle.
    let mut refusal = String::new();
    for _ in 0..60 {
        let out = apps.apply(&pod("api", INGRESS))?;
        if out.status.success() {
            refusal.clear();
            break;
        }
        refusal = String::from_utf8_lossy(&out.stderr).into_owned();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        refusal.is_empty(),
        "the annotated pod was not admitted: {refusal}"
    );
    let apps_pods: Api<Pod> = Api::namespaced(apps.client.clone(), &apps.name);
    let injected = apps_pods.get("api").await?;
    let spec = injected.spec.clone().expect("spec");
    let sidecar = &spec.init_containers.clone().expect("injected")[0];
    assert_eq!(
        (
            sidecar.name.as_str(),
            sidecar.restart_policy.as_deref(),
            sidecar.image.as_deref()
        ),
        (
            "tollgate-proxy",
            Some("Always"),
            Some("tollgate-proxy:test")
        )
    );
    let args = sidecar.args.clone().unwrap_or_default();
    for wanted in [
        "--listen=0.0.0.0:8080",
        "--control-plane=https://tollgate-operator.tollgate-system.svc:8443",
    ] {
        assert!(args.iter().any(|a| a == wanted), "{wanted} in {args:?}");
    }
    // The sidecar trusts the operator by its CA, carried in its environment.
    let ca_env = sidecar
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "TOLLGATE_CONTROL_PLANE_CA_PEM")
        .and_then(|e| e.value.clone())
        .unwrap_or_default();
    assert!(
        ca_env.starts_with("-----BEGIN CERTIFICATE-----"),
        "{ca_env}"
    );
    assert_eq!(
        injected
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("tollgate.dev/injected"))
            .map(String::as_str),
        Some("ingress listen=8080 app=8081")
    );

    // Re-submitting an injected pod (a copy under another name) changes nothing.
    let mut copy = serde_json::to_value(&injected)?;
    copy["metadata"] =
        serde_json::json!({"name": "api-copy", "annotations": injected.metadata.annotations});
    copy["spec"]["nodeName"] = serde_json::Value::Null;
    apps.kubectl_ok_stdin(&["create", "-f", "-"], &copy.to_string())?;
    assert_eq!(
        init_containers(&apps_pods, "api-copy").await?,
        ["tollgate-proxy"],
        "one sidecar, not two"
    );

    // Untouched: a pod without the annotation, and annotated pods where injection is not on.
    apps.apply_ok(&pod("plain-app", ""))?;
    assert!(init_containers(&apps_pods, "plain-app").await?.is_empty());
    plain.apply_ok(&pod("api", INGRESS))?;
    let plain_pods: Api<Pod> = Api::namespaced(plain.client.clone(), &plain.name);
    assert!(init_containers(&plain_pods, "api").await?.is_empty());
    fleet.ns.apply_ok(&pod("api", INGRESS))?;
    let own_pods: Api<Pod> = Api::namespaced(fleet.ns.client.clone(), &fleet.ns.name);
    assert!(
        init_containers(&own_pods, "api").await?.is_empty(),
        "the operator's own namespace"
    );

    // kube-system, even labelled: the selector leaves it out by name.
    let system = |args: &[&str]| -> Result<String> {
        let mut full = vec!["-n", "kube-system"];
        full.extend_from_slice(args);
        tollgate_tests::cluster().kubectl_ok(&full)
    };
    let system_pod = format!("inject-{}", fleet.ns.name);
    system(&[
        "label",
        "namespace",
        "kube-system",
        "tollgate.dev/injection=enabled",
    ])?;
    let created = tollgate_tests::kubectl_with(
        tollgate_tests::cluster().kubeconfig(),
        &["-n", "kube-system", "apply", "-f", "-"],
        Some(&pod(&system_pod, INGRESS)),
    );
    let system_init = system(&[
        "get",
        "pod",
        &system_pod,
        "-o",
        "jsonpath={.spec.initContainers[*].name}",
    ]);
    system(&[
        "label",
        "namespace",
        "kube-system",
        "tollgate.dev/injection-",
    ])?;
    let _ = system(&["delete", "pod", &system_pod, "--wait=false"]);
    assert!(created?.status.success());
    assert_eq!(system_init?.trim(), "", "kube-system is never injected");

    // A wrong annotation refuses the pod, naming the annotation: never an app without its plans.
    let refused = apps.apply(&pod(
        "typo",
        r#"tollgate.dev/inject: ingress, tollgate.dev/listen-port: "8080""#,
    ))?;
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("tollgate.dev/app-port"), "{message}");

    let metrics = String::from_utf8_lossy(&get(admin, "/metrics", &[]).await?.body).into_owned();
    for result in ["injected", "skipped", "denied"] {
        assert!(
            metrics.lines().any(|l| l.starts_with(&format!(
                "tollgate_operator_injections_total{{result=\"{result}\"}}"
            ))),
            "{result} counted:\n{metrics}"
        );
    }

    // The webhook down: namespaces that did not opt in create pods as before; an opted-in one
    // refuses them (failurePolicy Fail), rather than run an app without its sidecar.
    fleet.stop_operator(operator);
    plain.apply_ok(&pod("while-down", INGRESS))?;
    let blocked = apps.apply(&pod("while-down", INGRESS))?;
    assert!(
        !blocked.status.success(),
        "an opted-in namespace waits for the webhook"
    );
    fleet
        .ns
        .kubectl_ok(&["delete", "mutatingwebhookconfiguration", CONFIGURATION])?;
    Ok(())
}

async fn request(addr: SocketAddr, path: &str, key: &str) -> Result<tollgate_tests::fleet::Reply> {
    get(addr, path, &[("authorization", &format!("Bearer {key}"))]).await
}

#[tokio::test]
async fn each_sidecar_receives_only_its_workloads_routes_tenants_and_plans() -> Result<()> {
    let apps = TestNamespace::new("sidecar-apps").await?;
    let mut fleet = Fleet::new("sidecar").await?;
    let kubeconfig = fleet.operator_kubeconfig().to_path_buf();
    // The operator's own namespace is never injected: the apps live in one it watches.
    fleet
        .start_operator_as(&kubeconfig, &[("--namespace", &apps.name)])
        .await?;
    fleet.wait_leader(0).await?;

    // A provider on HTTPS (its own CA) that refuses calls without the team's credential, and an
    // app that answers its API.
    let provider_ca = tollgate_tests::pki::Ca::new("provider-ca")?;
    let provider_ca_file = fleet.dir().join("provider-ca.crt");
    std::fs::write(&provider_ca_file, &provider_ca.cert_pem)?;
    let provider = LlmBackend::start_tls(
        &provider_ca.server(&["127.0.0.1"])?,
        "Bearer sk-team-ml-provider-key",
    )
    .await?;
    let app = LlmBackend::start().await;
    let (reports_port, batch_port) = (free_port()?, free_port()?);

    apps.apply_ok(&format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: default}}
---
apiVersion: v1
kind: Secret
metadata: {{name: keys, labels: {{tollgate.dev/api-key: "true"}}}}
stringData: {{capped: key-capped, burst: key-burst, outsider: key-outsider}}
---
apiVersion: v1
kind: Secret
metadata: {{name: provider-key, labels: {{tollgate.dev/backend-credentials: "true"}}}}
stringData: {{apiKey: sk-team-ml-provider-key}}
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: capped}}
spec:
  quotas: [{{name: monthly-requests, metric: Requests, limit: "2", period: Month}}]
  paymentUrl: https://billing.example.com/upgrade
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: burst}}
spec:
  rateLimits: [{{name: per-minute, requests: 1, window: 1m}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: team-budget}}
spec:
  quotas: [{{name: monthly-tokens, metric: TotalTokens, limit: "100", period: Month}}]
  reservation: {{maxOutputTokens: 20, estimate: Bound}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: reports}}
spec:
  workloadSelector: {{matchLabels: {{app: reports}}}}
  match: {{pathPrefix: /reports}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: central}}
spec:
  match: {{pathPrefix: /central}}
  backend: {{directResponse: {{status: 200, body: central}}}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: openai}}
spec:
  workloadSelector: {{matchLabels: {{app: batch}}}}
  match: {{pathPrefix: /v1/chat/completions}}
  backend:
    url: {provider}
    requestHeaders:
    - {{name: Authorization, secretKeyRef: {{name: provider-key}}, valuePrefix: "Bearer "}}
  metering: OpenAI
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: capped}}
spec:
  quotaPolicyRef: {{name: capped}}
  apiKeys: [{{secretRef: {{name: keys, key: capped}}}}]
  subscriptions: [{{apiRouteRef: {{name: reports}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: burst}}
spec:
  quotaPolicyRef: {{name: burst}}
  apiKeys: [{{secretRef: {{name: keys, key: burst}}}}]
  subscriptions: [{{apiRouteRef: {{name: reports}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: outsider}}
spec:
  quotaPolicyRef: {{name: burst}}
  apiKeys: [{{secretRef: {{name: keys, key: outsider}}}}]
  subscriptions: [{{apiRouteRef: {{name: central}}}}]
"#,
        provider = provider.https_url()
    ))?;

    let template = template(&fleet)?;
    let pod = |name: &str, annotations: Value| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": apps.name, "labels": {"app": name},
                            "annotations": annotations},
               "spec": {"containers": [{"name": "app", "image": "app:1"}]}})
    };
    let (reports, reports_token) = injected_pod(
        &apps,
        &template,
        pod(
            "reports",
            json!({"tollgate.dev/inject": "ingress",
                   "tollgate.dev/listen-port": reports_port.to_string(),
                   "tollgate.dev/app-port": app.addr.port().to_string()}),
        ),
    )
    .await?;
    let (batch, batch_token) = injected_pod(
        &apps,
        &template,
        pod(
            "batch",
            json!({"tollgate.dev/inject": "egress", "tollgate.dev/tenant": "team-ml",
                   "tollgate.dev/listen-port": batch_port.to_string()}),
        ),
    )
    .await?;

    // The ingress sidecar: the app's API behind the plans of the tenants subscribed to it.
    let reports_sidecar = run_sidecar(&fleet, &reports, &reports_token, &[])?;
    let (listen, admin) = (reports_sidecar.listen, reports_sidecar.admin);
    eventually(WAIT, "the ingress sidecar's configuration", || async {
        request(listen, "/reports/q1", "key-capped")
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await?;
    let statuses = |key: &'static str, n: usize| async move {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(request(listen, "/reports/q1", key).await.map(|r| r.status));
        }
        out.into_iter().collect::<Result<Vec<u16>>>()
    };
    assert_eq!(statuses("key-capped", 2).await?, [200, 402], "2 a month");
    let refused = request(listen, "/reports/q1", "key-capped").await?;
    assert_eq!(
        refused.json()["type"],
        "https://tollgate.dev/problems/quota-exhausted"
    );
    assert_eq!(statuses("key-burst", 2).await?, [200, 429], "1 a minute");
    // Nothing else reached it: not the central route, nor another workload's provider route,
    // nor the key of a tenant that cannot call this workload (unknown here: 401, where the
    // central proxies, which know it, answer 403 not-subscribed).
    assert_eq!(
        request(listen, "/central", "key-outsider").await?.status,
        404
    );
    assert_eq!(
        request(listen, "/reports/q1", "key-outsider").await?.status,
        401
    );
    assert_eq!(
        request(listen, "/v1/chat/completions", "key-capped")
            .await?
            .status,
        404
    );
    assert_eq!(
        Fleet::metric(admin, "tollgate_proxy_config_version")
            .await
            .map(|v| v > 0.0),
        Some(true)
    );

    // Programmed counts the sidecars that serve the route, not the central proxies.
    let routes: Api<tollgate_crds::resources::ApiRoute> =
        Api::namespaced(apps.client.clone(), &apps.name);
    eventually(WAIT, "the sidecar route's Programmed condition", || async {
        let status = routes.get("reports").await.ok()?.status?;
        status
            .conditions
            .iter()
            .find(|c| c.type_ == "Programmed" && c.status == "True")
            .filter(|c| c.message.starts_with("1/1 sidecars"))
            .cloned()
    })
    .await?;

    // The central proxies never serve a sidecar's route.
    let central = fleet.start_proxy("central")?;
    fleet
        .wait_status(central, "/central", "key-outsider", 200)
        .await?;
    assert_eq!(
        fleet
            .call(central, "/reports/q1", "key-capped")
            .await?
            .status,
        404
    );

    // The egress sidecar: the app calls with the official SDK, with no key of its own; the
    // sidecar adds the team's provider key (the provider answers 401 without it), meters the
    // calls and refuses those the budget cannot hold: 30 tokens a call, 100 a month.
    let batch_sidecar = run_sidecar(
        &fleet,
        &batch,
        &batch_token,
        &[format!("--backend-ca={}", provider_ca_file.display())],
    )?;
    let (egress, egress_admin) = (batch_sidecar.listen, batch_sidecar.admin);
    assert!(
        egress.ip().is_loopback(),
        "never reachable from outside the pod"
    );
    eventually(WAIT, "the egress sidecar's configuration", || async {
        get(egress, "/v1/models", &[])
            .await
            .ok()
            .filter(|r| r.status == 404)
    })
    .await?;
    // Its Tenant does not exist yet (a chart installs pods before custom resources): 401, until
    // it appears, without a restart.
    let call = |calls: u32| {
        json!({"sdk": "openai", "base": format!("http://{egress}"), "key": "the-app-holds-no-key",
               "model": "gpt-4o-mini", "max_tokens": 20, "calls": calls})
    };
    assert_eq!(sdk(call(1)).await?[0]["status"], 401);
    apps.apply_ok(
        "apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {name: team-ml}\n\
         spec: {quotaPolicyRef: {name: team-budget}, subscriptions: [{apiRouteRef: {name: openai}}]}\n",
    )?;
    // The first call that passes is charged like the rest.
    eventually(
        WAIT,
        "the egress sidecar to take its new Tenant",
        || async {
            let outcome = sdk(call(1)).await.ok()?;
            (outcome[0]["status"] == 200).then_some(())
        },
    )
    .await?;
    let outcomes = sdk(call(4)).await?;
    // Admitted while a call fits in what is left (its output bound lowered to fit, as #20
    // built), then refused: the budget is never overspent.
    let statuses: Vec<u64> = outcomes
        .iter()
        .filter_map(|o| o["status"].as_u64())
        .collect();
    let served = statuses.iter().take_while(|s| **s == 200).count();
    assert!(
        served >= 1 && statuses[served..].iter().all(|s| *s == 402) && served < statuses.len(),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes[served]["problem"]["tenant"],
        format!("{}/team-ml", apps.name),
        "{outcomes:?}"
    );
    let usage = get(egress_admin, "/usage", &[]).await?.json();
    let used: u64 = usage["usage"][0]["used"]
        .as_str()
        .and_then(|u| u.parse().ok())
        .context("used")?;
    assert!(
        (60..=100).contains(&used),
        "never more than the budget: {usage}"
    );

    // The sidecars' usage reaches the Tenant's status like the central proxies'.
    let tenants: Api<Tenant> = Api::namespaced(apps.client.clone(), &apps.name);
    eventually(
        Duration::from_secs(60),
        "team-ml's calls in its status",
        || async {
            let s = tenants.get("team-ml").await.ok()?.status?;
            s.call_usage
                .first()
                .filter(|u| u.requests == 1 + served as u64)
                .cloned()
        },
    )
    .await
    .with_context(|| fleet.operator_log(0))?;
    Ok(())
}

/// Runs the official SDK scenario `s` (tests/python/llm_sdk.py); the outcome of each call.
async fn sdk(s: Value) -> Result<Vec<Value>> {
    let script = tollgate_tests::repo_root().join("tests/python/llm_sdk.py");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(tollgate_tests::python::sdk_python())
            .arg(script)
            .arg(s.to_string())
            .output()
    })
    .await??;
    anyhow::ensure!(
        out.status.success(),
        "the SDK script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}
