//! Sidecar injection on the real kube-apiserver: the API server calls the operator's webhook over
//! TLS (the caBundle set by the operator itself), with the namespace selector and failure policy
//! the chart uses. Pods are only admitted here (no kubelet), which is what the webhook decides.

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tollgate_tests::TestNamespace;
use tollgate_tests::fleet::{Fleet, eventually, get};

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
