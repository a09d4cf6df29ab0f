//! The Helm chart: lint, render for every documented option, schema validation, deploy/ kept in
//! sync, and a real `helm install` into the test API server whose RBAC the operator then runs on.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use kube::api::Api;
use tollgate_crds::resources::QuotaPolicy;
use tollgate_tests::fleet::{Fleet, eventually};
use tollgate_tests::{cluster, helm_ok, repo_root, run_helm};

fn chart() -> String {
    repo_root().join("charts/tollgate").display().to_string()
}

fn kinds(rendered: &str) -> Vec<String> {
    let mut kinds: Vec<String> = rendered
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(str::to_owned)
        .collect();
    kinds.sort();
    kinds
}

#[test]
fn helm_lint_is_clean() -> Result<()> {
    let out = helm_ok(&["lint", &chart()])?;
    assert!(out.contains("0 chart(s) failed"), "{out}");
    Ok(())
}

#[test]
fn the_chart_renders_for_defaults_and_every_documented_option() -> Result<()> {
    let defaults = kinds(&helm_ok(&["template", "t", &chart()])?);
    for kind in [
        "ClusterRole",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Role",
        "Service",
        "ServiceAccount",
    ] {
        assert!(
            defaults.iter().any(|k| k == kind),
            "default render lacks {kind}: {defaults:?}"
        );
    }
    let cases: &[(&str, &str)] = &[
        ("metrics.serviceMonitor.enabled=true", "ServiceMonitor"),
        ("metrics.prometheusRule.enabled=true", "PrometheusRule"),
        ("metrics.dashboard.enabled=true", "ConfigMap"),
        ("redis.deploy=true", "StatefulSet"),
    ];
    for (set, kind) in cases {
        let rendered = kinds(&helm_ok(&["template", "t", &chart(), "--set", set])?);
        assert!(
            rendered.iter().any(|k| k == kind),
            "--set {set} renders no {kind}"
        );
    }
    let no_hpa = helm_ok(&[
        "template",
        "t",
        &chart(),
        "--set",
        "proxy.autoscaling.enabled=false",
        "--set",
        "proxy.replicas=5",
    ])?;
    assert!(!no_hpa.contains("kind: HorizontalPodAutoscaler") && no_hpa.contains("replicas: 5"));
    let lb = helm_ok(&[
        "template",
        "t",
        &chart(),
        "--set",
        "proxy.service.type=LoadBalancer",
    ])?;
    assert!(lb.contains("type: LoadBalancer"));
    let scoped = helm_ok(&[
        "template",
        "t",
        &chart(),
        "--set",
        "operator.watchNamespaces={shop,billing}",
    ])?;
    assert!(scoped.contains("--namespace=shop,billing"));
    // One Redis for the fleet: proxies count there and the operator reads usage from it, with
    // the same URL and CA.
    let tls_cluster = helm_ok(&[
        "template",
        "t",
        &chart(),
        "--set-string",
        r"redis.url=rediss+cluster://r1:6379\,r2:6379",
        "--set",
        "redis.caSecret=redis-ca",
    ])?;
    assert_eq!(
        tls_cluster
            .matches("- --store=rediss+cluster://r1:6379,r2:6379")
            .count(),
        2,
        "proxy and operator"
    );
    assert_eq!(
        tls_cluster
            .matches("--store-ca-file=/etc/tollgate/redis-ca/ca.crt")
            .count(),
        2
    );
    assert_eq!(tls_cluster.matches("secretName: redis-ca").count(), 2);
    let sentinel = helm_ok(&[
        "template",
        "t",
        &chart(),
        "--set-string",
        r"redis.url=redis+sentinel://s1:26379\,s2/orders",
    ])?;
    assert_eq!(
        sentinel
            .matches("- --store=redis+sentinel://s1:26379,s2/orders")
            .count(),
        2
    );
    // The PrometheusRule carries files/alerts.yaml, the file promtool tests.
    let rules = helm_ok(&[
        "template",
        "t",
        &chart(),
        "--set",
        "metrics.prometheusRule.enabled=true",
    ])?;
    assert!(rules.contains("alert: TollgateNoOperatorLeader"));
    Ok(())
}

#[test]
fn values_schema_rejects_a_wrong_type_with_a_clear_message() -> Result<()> {
    let out = run_helm(&["template", "t", &chart(), "--set", "proxy.replicas=many"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/proxy/replicas") && err.contains("want integer"),
        "{err}"
    );
    let out = run_helm(&[
        "template",
        "t",
        &chart(),
        "--set",
        "proxy.service.type=Ingress",
    ])?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("/proxy/service/type"));
    let out = run_helm(&["template", "t", &chart(), "--set", "operator.replica=2"])?;
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("additional properties 'replica' not allowed"),
        "typos are caught"
    );
    Ok(())
}

#[test]
fn deploy_manifests_are_rendered_from_the_chart() -> Result<()> {
    let committed = std::fs::read_to_string(repo_root().join("deploy/tollgate.yaml"))?;
    let rendered = helm_ok(&[
        "template",
        "tollgate",
        &chart(),
        "--namespace",
        "tollgate-system",
        "--skip-crds",
    ])?;
    let body = committed
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        body.trim(),
        rendered.trim(),
        "deploy/tollgate.yaml is stale: run deploy/render.sh"
    );
    Ok(())
}

/// The objects of `kind` in a rendering, by name.
fn objects(rendered: &str, kind: &str) -> Vec<(String, serde_json::Value)> {
    rendered
        .split("\n---")
        .filter_map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).ok())
        .filter(|value| value["kind"] == kind)
        .map(|value| {
            (
                value["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                value,
            )
        })
        .collect()
}

#[test]
fn network_policies_are_on_by_default_and_admit_only_prometheus_to_metrics() -> Result<()> {
    let rendered = helm_ok(&["template", "t", &chart(), "--set", "redis.deploy=true"])?;
    let policies = objects(&rendered, "NetworkPolicy");
    let names: Vec<&str> = policies.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "t-tollgate-operator",
            "t-tollgate-proxy",
            "t-tollgate-redis"
        ]
    );
    let prometheus = serde_json::json!([{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }]);
    for (name, policy) in &policies {
        for rule in policy["spec"]["ingress"].as_array().expect("ingress rules") {
            let ports: Vec<i64> = rule["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .filter_map(|p| p["port"].as_i64())
                .collect();
            match ports.as_slice() {
                // The API port is the ingress: open to every client.
                [8080] => assert!(rule.get("from").is_none(), "{name}: {rule}"),
                [9090] | [9091] => assert_eq!(rule["from"], prometheus, "{name}: {rule}"),
                // The config stream and Redis: this release's pods only.
                [8443] | [6379] => {
                    for peer in rule["from"].as_array().expect("peers") {
                        assert_eq!(
                            peer["podSelector"]["matchLabels"]["app.kubernetes.io/instance"], "t",
                            "{name}: {peer}"
                        );
                        assert!(peer.get("namespaceSelector").is_none(), "{name}: {peer}");
                    }
                }
                other => panic!("{name}: a rule for ports {other:?}"),
            }
        }
    }
    let off = helm_ok(&[
        "template",
        "t",
        &chart(),
        "--set",
        "networkPolicy.enabled=false",
    ])?;
    assert!(objects(&off, "NetworkPolicy").is_empty());
    Ok(())
}

#[test]
fn chart_rbac_is_the_documented_least_privilege() -> Result<()> {
    let rendered = helm_ok(&[
        "template",
        "tollgate",
        &chart(),
        "--namespace",
        "tollgate-system",
    ])?;
    let rules_of = |yaml: &str, kind: &str| -> Result<serde_json::Value> {
        for doc in yaml.split("\n---") {
            let value: serde_json::Value =
                serde_saphyr::from_str(doc).unwrap_or(serde_json::Value::Null);
            if value["kind"] == kind
                && value["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("operator"))
            {
                return Ok(value["rules"].clone());
            }
        }
        bail!("no {kind} in the rendering")
    };
    let documented = std::fs::read_to_string(repo_root().join("deploy/operator-rbac.yaml"))?;
    for kind in ["ClusterRole", "Role"] {
        assert_eq!(
            rules_of(&rendered, kind)?,
            rules_of(&documented, kind)?,
            "{kind} rules differ from deploy/operator-rbac.yaml"
        );
    }
    Ok(())
}

#[tokio::test]
async fn helm_install_creates_the_release_and_the_operator_reconciles_with_its_rbac() -> Result<()>
{
    let mut fleet = Fleet::new("helm").await?;
    let ns = fleet.ns.name.clone();
    let kubeconfig = cluster().kubeconfig().display().to_string();
    helm_ok(&[
        "install",
        "tg",
        &chart(),
        "--namespace",
        &ns,
        "--kubeconfig",
        &kubeconfig,
        "--skip-crds",
        "--wait=false",
    ])?;
    let created = fleet.ns.kubectl(
        &[
            "get",
            "deploy,svc,sa,pdb,hpa,role,rolebinding",
            "-o",
            "name",
        ],
        None,
    )?;
    let created = String::from_utf8_lossy(&created.stdout).into_owned();
    for name in [
        "deployment.apps/tg-tollgate-operator",
        "deployment.apps/tg-tollgate-proxy",
        "service/tg-tollgate-operator",
        "service/tg-tollgate-proxy",
        "serviceaccount/tg-tollgate-operator",
        "serviceaccount/tg-tollgate-proxy",
        "poddisruptionbudget.policy/tg-tollgate-proxy",
        "horizontalpodautoscaler.autoscaling/tg-tollgate-proxy",
        "role.rbac.authorization.k8s.io/tg-tollgate-operator",
    ] {
        assert!(
            created.contains(name),
            "helm install did not create {name}:\n{created}"
        );
    }
    let pod = cluster().kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "deploy/tg-tollgate-proxy",
        "-o",
        "jsonpath={.spec.template.spec}",
    ])?;
    assert!(
        pod.contains("\"runAsNonRoot\":true") && pod.contains("\"readOnlyRootFilesystem\":true"),
        "{pod}"
    );

    // Run the operator as the chart's ServiceAccount, with exactly the chart's RBAC.
    let token = cluster().kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "token",
        "tg-tollgate-operator",
        "--duration",
        "1h",
    ])?;
    let operator_kubeconfig = cluster().token_kubeconfig(&format!("{ns}-operator"), &token)?;
    let proxy_sa = format!("{ns}:tg-tollgate-proxy");
    fleet
        .start_operator_as(
            &operator_kubeconfig,
            &[
                ("--tls-secret", "tg-tollgate-operator-tls"),
                ("--lease-name", "tg-tollgate-operator"),
                ("--proxy-service-account", &proxy_sa),
            ],
        )
        .await?;
    fleet
        .wait_leader(0)
        .await
        .with_context(|| fleet.operator_log(0))?;
    fleet.ns.apply_ok(
        "apiVersion: tollgate.dev/v1alpha1\nkind: QuotaPolicy\nmetadata: {name: plan}\nspec: {quotas: [{name: q, limit: '5', period: Day}]}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {name: hello}\nspec: {match: {pathPrefix: /hello}, backend: {directResponse: {status: 200}}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: k, labels: {tollgate.dev/api-key: \"true\"}}\nstringData: {apiKey: key-helm}\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {name: t}\nspec: {quotaPolicyRef: {name: plan}, apiKeys: [{secretRef: {name: k}}], subscriptions: [{apiRouteRef: {name: hello}}]}\n",
    )?;
    let plans: Api<QuotaPolicy> = Api::namespaced(fleet.ns.client.clone(), &ns);
    eventually(
        Duration::from_secs(20),
        "the operator to write status with the chart's RBAC",
        || async {
            let s = plans.get("plan").await.ok()?.status?;
            s.conditions
                .iter()
                .find(|c| c.type_ == "Accepted" && c.status == "True")
                .cloned()
        },
    )
    .await
    .with_context(|| fleet.operator_log(0))?;

    // A proxy with the chart's proxy ServiceAccount token (audience tollgate) gets the config.
    let token = cluster().kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "token",
        "tg-tollgate-proxy",
        "--audience",
        "tollgate",
        "--duration",
        "1h",
    ])?;
    let token_file = fleet.dir().join("chart-proxy-token");
    std::fs::write(&token_file, token.trim())?;
    fleet.start_proxy_with_token("chart-proxy", token_file)?;
    fleet.wait_status(0, "/hello", "key-helm", 200).await?;
    assert!(
        !fleet.operator_log(0).contains("forbidden"),
        "no RBAC denial:\n{}",
        fleet.operator_log(0)
    );
    helm_ok(&[
        "uninstall",
        "tg",
        "--namespace",
        &ns,
        "--kubeconfig",
        &kubeconfig,
    ])?;
    Ok(())
}

#[test]
fn usage_export_renders_its_flags_and_refuses_what_cannot_work() -> Result<()> {
    let default = helm_ok(&["template", "t", &chart()])?;
    assert!(!default.contains("--usage-export"));
    let refused = |sets: &[&str], why: &str| -> Result<()> {
        let chart = chart();
        let mut args = vec!["template", "t", chart.as_str()];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = run_helm(&args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(!out.status.success(), "{sets:?} rendered");
        anyhow::ensure!(stderr.contains(why), "{sets:?}: {stderr}");
        Ok(())
    };
    refused(&["usageExport.sink=cloudevents"], "needs redis")?;
    refused(
        &["usageExport.sink=cloudevents", "redis.deploy=true"],
        "usageExport.url",
    )?;
    refused(
        &["usageExport.sink=stripe", "redis.deploy=true"],
        "needs stripe.enabled",
    )?;
    refused(&["usageExport.sink=kafka", "redis.deploy=true"], "sink")?;

    let cloud = helm_ok(&[
        "template",
        "t",
        &chart(),
        "--set",
        "usageExport.sink=cloudevents",
        "--set",
        "usageExport.url=https://openmeter.example.com/api/v1/events",
        "--set",
        "usageExport.tokenSecret=openmeter",
        "--set",
        "redis.url=redis://redis:6379",
    ])?;
    for wanted in [
        "- --usage-export=cloudevents\n",
        "- --usage-export-interval=60s\n",
        "- \"--usage-export-url=https://openmeter.example.com/api/v1/events\"\n",
        "- --usage-export-token-file=/etc/tollgate/usage-export/token\n",
        "secretName: openmeter\n",
        "- --store=redis://redis:6379\n",
        // The proxies hold requests back from billing for the same time.
        "- --settle-after=60s\n",
    ] {
        assert!(cloud.contains(wanted), "{wanted:?} in the render");
    }
    // To Stripe without the periodic subscription read: the key, the read off.
    let stripe = helm_ok(&[
        "template",
        "t",
        &chart(),
        "--set",
        "usageExport.sink=stripe",
        "--set",
        "redis.deploy=true",
        "--set",
        "stripe.enabled=true",
        "--set",
        "stripe.existingSecret=tollgate-stripe",
        "--set",
        "stripe.repair.enabled=false",
    ])?;
    for wanted in [
        "- --usage-export=stripe\n",
        "- --stripe-api-key-file=/etc/tollgate/stripe/api-key\n",
        "- --stripe-repair-interval=0s\n",
    ] {
        assert!(stripe.contains(wanted), "{wanted:?} in the render");
    }
    Ok(())
}

#[test]
fn stripe_renders_the_receiver_its_secret_service_and_ingress() -> Result<()> {
    let default = helm_ok(&["template", "t", &chart()])?;
    assert!(!default.contains("--stripe-webhook-listen"));
    // Without the Secret's name: a clear refusal, not a pod that cannot start.
    let missing = run_helm(&["template", "t", &chart(), "--set", "stripe.enabled=true"])?;
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("stripe.existingSecret"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let rendered = helm_ok(&[
        "template",
        "t",
        &chart(),
        "--namespace",
        "tg",
        "--set",
        "stripe.enabled=true",
        "--set",
        "stripe.existingSecret=tollgate-stripe",
        "--set",
        "stripe.ingress.enabled=true",
        "--set",
        "stripe.ingress.host=hooks.example.com",
        "--set",
        "redis.caSecret=redis-ca",
    ])?;
    for wanted in [
        "- --stripe-webhook-listen=0.0.0.0:9444\n",
        "- --stripe-webhook-secrets=/etc/tollgate/stripe/webhook-secrets\n",
        "- --stripe-api-key-file=/etc/tollgate/stripe/api-key\n",
        "- --stripe-api-base=https://api.stripe.com\n",
        "- --stripe-repair-interval=10m\n",
        "secretName: tollgate-stripe\n",
        // The Redis CA's volume stays beside Stripe's.
        "secretName: redis-ca\n",
        "mountPath: /etc/tollgate/stripe",
    ] {
        assert!(rendered.contains(wanted), "{wanted:?} in the render");
    }
    let services = objects(&rendered, "Service");
    let stripe = services
        .iter()
        .find(|(name, _)| name == "t-tollgate-operator-stripe")
        .context("the Stripe Service")?;
    assert_eq!(stripe.1["spec"]["ports"][0]["port"], 443);
    let ingresses = objects(&rendered, "Ingress");
    let rule = &ingresses.first().context("the Ingress")?.1["spec"]["rules"][0];
    assert_eq!(rule["host"], "hooks.example.com");
    assert_eq!(rule["http"]["paths"][0]["path"], "/stripe/webhook");
    // The NetworkPolicy admits Stripe's deliveries to the receiver's port.
    assert!(
        objects(&rendered, "NetworkPolicy")
            .iter()
            .any(|(_, p)| p.to_string().contains("9444")),
        "a NetworkPolicy admits port 9444"
    );
    // Webhooks alone: no API key, no reads.
    let webhooks_only = helm_ok(&[
        "template",
        "t",
        &chart(),
        "--set",
        "stripe.enabled=true",
        "--set",
        "stripe.existingSecret=s",
        "--set",
        "stripe.repair.enabled=false",
    ])?;
    assert!(
        webhooks_only.contains("--stripe-webhook-listen")
            && !webhooks_only.contains("--stripe-api-key-file")
    );
    Ok(())
}

#[test]
fn injection_renders_a_webhook_that_never_reaches_kube_system_or_the_release() -> Result<()> {
    let default = helm_ok(&["template", "t", &chart()])?;
    assert!(objects(&default, "MutatingWebhookConfiguration").is_empty());
    let rendered = helm_ok(&[
        "template",
        "t",
        &chart(),
        "--namespace",
        "tg",
        "--set",
        "injection.enabled=true",
    ])?;
    let webhooks = objects(&rendered, "MutatingWebhookConfiguration");
    let [(name, configuration)] = &webhooks[..] else {
        bail!("one MutatingWebhookConfiguration, not {}", webhooks.len());
    };
    assert_eq!(name, "t-tollgate-sidecar-injector");
    let hook = &configuration["webhooks"][0];
    assert_eq!(
        hook["namespaceSelector"]["matchLabels"],
        serde_json::json!({"tollgate.dev/injection": "enabled"})
    );
    let excluded = &hook["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(excluded["operator"], "NotIn");
    for ns in ["kube-system", "tg"] {
        assert!(
            excluded["values"]
                .as_array()
                .is_some_and(|v| v.iter().any(|n| n == ns)),
            "{ns} excluded: {excluded}"
        );
    }
    assert_eq!(
        (
            &hook["failurePolicy"],
            &hook["sideEffects"],
            &hook["timeoutSeconds"]
        ),
        (
            &serde_json::json!("Fail"),
            &serde_json::json!("None"),
            &serde_json::json!(5)
        )
    );
    assert_eq!(
        hook["clientConfig"]["service"]["name"],
        "t-tollgate-operator-webhook"
    );
    // Sidecars in opted-in namespaces may reach the config stream through the NetworkPolicy.
    let policy = objects(&rendered, "NetworkPolicy")
        .into_iter()
        .find(|(name, _)| name == "t-tollgate-operator")
        .map(|(_, p)| p)
        .expect("the operator's NetworkPolicy");
    let sidecars = serde_json::json!([{"namespaceSelector": {"matchLabels": {"tollgate.dev/injection": "enabled"}}}]);
    assert!(
        policy["spec"]["ingress"]
            .as_array()
            .is_some_and(|rules| rules.iter().any(
                |r| r["from"] == sidecars && r["ports"] == serde_json::json!([{"port": 8443}])
            )),
        "{policy}"
    );
    // The operator serves it, keeps its caBundle, and its certificate names the Service (read
    // as text: the pod template's labels repeat a key, which the YAML parser here refuses).
    for wanted in [
        "- --webhook-listen=0.0.0.0:9443\n",
        "- --webhook-configuration=t-tollgate-sidecar-injector\n",
        "- --sidecar-control-plane=https://t-tollgate-operator.tg.svc:8443\n",
    ] {
        assert!(
            rendered.contains(wanted),
            "{wanted:?} in the operator's args"
        );
    }
    let sans: Vec<&str> = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("- --tls-san="))
        .context("--tls-san in the operator's args")?
        .split(',')
        .collect();
    assert!(
        sans.contains(&"t-tollgate-operator-webhook.tg.svc"),
        "{sans:?}"
    );
    Ok(())
}
