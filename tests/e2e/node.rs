//! Tollgate as real Pods on a real node (tests/src/node.rs): images built offline and imported,
//! `helm install` to Ready, traffic through the proxy Service, plan changes at every pod.
//!
//! With `TOLLGATE_TEST_KUBECONFIG` (and `TOLLGATE_TEST_IMAGE_LOAD`) the same tests run on an
//! existing cluster, reached through port-forwards (tests/src/pods.rs); the fault tests that need
//! the node itself or the Service's load balancing say so and run on the local node only.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tollgate_tests::images::{TEST_REGISTRY, TEST_TAG};
use tollgate_tests::pods::Target;
use tollgate_tests::{Cluster, LocalNode, TestNamespace, pods};

/// One HTTP/1.1 request over a fresh connection to `target` (from inside the node's network, or
/// through a port-forward); the status, the response head's lines and the body.
fn request(target: &Target, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    let mut stream = pods().connect(target)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: tollgate.test\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    Response::parse(&raw)
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn parse(raw: &[u8]) -> Result<Self> {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("no response head in {text:?}"))?;
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status line in {text:?}"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Ok(Self {
            status,
            headers,
            body: body.to_owned(),
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How many requests of `tenant` reached the echo backend (its log has a line per request).
fn backend_requests(app: &TestNamespace, tenant: &str) -> Result<u64> {
    let out = app.kubectl(&["logs", "deployment/echo"], None)?;
    if !out.status.success() {
        bail!("kubectl logs: {}", String::from_utf8_lossy(&out.stderr));
    }
    let needle = format!("tenant={}/{tenant}", app.name);
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.ends_with(&needle))
        .count() as u64)
}

/// The local test node, for a test that needs it; `None` (and a line saying why the test does not
/// run) on an existing cluster.
fn local_node_for(test: &str, why: &str) -> Option<&'static LocalNode> {
    match tollgate_tests::cluster_with_node() {
        Cluster::LocalWithNode(local) => Some(local),
        _ => {
            // Not captured by the test harness: a test that passes without running says so.
            let _ = writeln!(
                std::io::stderr(),
                "{test}: not run on an existing cluster: {why}"
            );
            None
        }
    }
}

/// On an existing cluster, what a test installed is removed when it ends, passed or not (a
/// local node goes away with the test binary): its Helm release and its namespaces.
struct RemovedOnExistingCluster {
    release: Option<(String, String)>,
    namespaces: Vec<String>,
}

impl Drop for RemovedOnExistingCluster {
    fn drop(&mut self) {
        if pods().local_node().is_some() {
            return;
        }
        let kubeconfig = pods().kubeconfig().display().to_string();
        if let Some((release, namespace)) = &self.release {
            let uninstalled = tollgate_tests::run_helm(&[
                "--kubeconfig",
                &kubeconfig,
                "uninstall",
                release,
                "--namespace",
                namespace,
            ]);
            if let Err(e) = uninstalled {
                let _ = writeln!(std::io::stderr(), "helm uninstall {release}: {e:#}");
            }
        }
        for namespace in &self.namespaces {
            let _ = tollgate_tests::kubectl_with(
                pods().kubeconfig(),
                &["delete", "namespace", namespace, "--wait=false"],
                None,
            );
        }
    }
}

/// Port `port` of pod `name` in `ns`.
fn pod(ns: &TestNamespace, name: &str, port: u16) -> Target {
    Target::Pod {
        namespace: ns.name.clone(),
        name: name.to_owned(),
        port,
    }
}

/// `kubectl rollout status` of a Deployment, with the pods' state in the error.
fn wait_rollout(ns: &TestNamespace, deployment: &str, timeout: &str) -> Result<()> {
    let out = ns.kubectl(
        &[
            "rollout",
            "status",
            &format!("deployment/{deployment}"),
            &format!("--timeout={timeout}"),
        ],
        None,
    )?;
    if !out.status.success() {
        let pods = ns.kubectl(&["get", "pods,events", "-o", "wide"], None)?;
        bail!(
            "deployment {deployment} not rolled out: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&pods.stdout)
        );
    }
    Ok(())
}

fn echo_backend_yaml(replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: echo}}}}
  template:
    metadata: {{labels: {{app: echo}}}}
    spec:
      containers:
      - name: echo
        image: {TEST_REGISTRY}/echo-backend:{TEST_TAG}
        imagePullPolicy: Never
        env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        ports: [{{containerPort: 8080}}]
        readinessProbe:
          tcpSocket: {{port: 8080}}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {{name: echo}}
spec:
  selector: {{app: echo}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
    )
}

#[test]
fn pods_start_from_imported_images_and_answer_through_their_service() -> Result<()> {
    let started = Instant::now();
    if let Some(local) = pods().local_node() {
        eprintln!(
            "images built in {:.1}s; control plane, node and DNS Ready in {:.1}s",
            local.images_built_in.as_secs_f64(),
            local.node.started_in.as_secs_f64()
        );
    }
    let rt = tokio::runtime::Runtime::new()?;
    let ns = rt.block_on(TestNamespace::new("node-echo"))?;
    let _removed = RemovedOnExistingCluster {
        release: None,
        namespaces: vec![ns.name.clone()],
    };
    ns.apply_ok(&echo_backend_yaml(2))?;
    wait_rollout(&ns, "echo", "120s")?;
    let names = pod_names(&ns, "app=echo")?;
    assert_eq!(names.len(), 2, "{names:?}");
    // Each pod answers on its own address...
    for name in &names {
        let response = request(&pod(&ns, name, 8080), "/hello", &[])?;
        let body: serde_json::Value = serde_json::from_str(&response.body)?;
        assert_eq!(body["pod"], name.as_str(), "{body}");
    }
    // ...and both behind the Service (kube-proxy programs the second one's endpoint within a
    // moment). A port-forward to a Service reaches one pod: on an existing cluster, one is enough.
    let service = pods().service(&ns.name, "echo")?;
    let behind = if pods().local_node().is_some() { 2 } else { 1 };
    let mut answered = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.len() < behind && Instant::now() < deadline {
        let response = match request(&service, "/hello", &[]) {
            Ok(response) => response,
            // Refused until kube-proxy has programmed the first endpoint.
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e:#}");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            Err(e) => return Err(e),
        };
        assert_eq!(response.status, 200, "{response:?}");
        let body: serde_json::Value = serde_json::from_str(&response.body)?;
        assert_eq!(body["path"], "/hello", "{body}");
        answered.insert(body["pod"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(
        answered.len(),
        behind,
        "the pods answer behind the Service: {answered:?}"
    );
    eprintln!(
        "echo pods answered in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What went on in a namespace, for a failure message: pods, events, and every container's log.
fn diagnostics(ns: &TestNamespace) -> String {
    let mut text = String::new();
    if let Ok(out) = ns.kubectl(&["get", "pods,events", "-o", "wide"], None) {
        text.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    if let Ok(out) = ns.kubectl(
        &[
            "logs",
            "--all-containers",
            "--prefix",
            "--tail=400",
            "-l",
            "app.kubernetes.io/part-of=tollgate",
        ],
        None,
    ) {
        // The events of each process, not the access log (lines with a "path").
        let logs = String::from_utf8_lossy(&out.stdout);
        for line in logs.lines().filter(|l| !l.contains("\"path\":")) {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    text
}

/// The names of the running pods matching `selector`.
fn pod_names(ns: &TestNamespace, selector: &str) -> Result<Vec<String>> {
    let out = ns.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        selector,
        "--field-selector=status.phase=Running",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?;
    Ok(out.split_whitespace().map(str::to_owned).collect())
}

/// The plans, keys, tenants and routes of the test: `roomy` never limits, `hourly` allows one
/// request an hour (a second one at the same proxy is 429), `tiny` one request a month (a second
/// one is 402). Proxies count on their own here (no Redis): with two of them, three requests
/// always reach a proxy that has admitted one already.
fn tenants_yaml(roomy_per_second: u32) -> String {
    let mut yaml = format!(
        r#"apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: roomy}}
spec:
  rateLimits: [{{name: per-second, requests: {roomy_per_second}, window: 1s}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: hourly}}
spec:
  rateLimits: [{{name: per-hour, requests: 1, window: 1h}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: tiny}}
spec:
  quotas: [{{name: monthly-requests, metric: Requests, limit: "1", period: Month}}]
  paymentUrl: https://billing.example.com/upgrade?plan=tiny
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: fleet}}
spec:
  quotas: [{{name: monthly-requests, metric: Requests, limit: "{FLEET_LIMIT}", period: Month}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: echo}}
spec:
  match: {{pathPrefix: /echo}}
  backend: {{service: {{name: echo, port: 80}}}}
"#
    );
    for (tenant, plan) in [
        ("globex", "roomy"),
        ("acme", "hourly"),
        ("initech", "tiny"),
        ("hooli", "fleet"),
    ] {
        yaml.push_str(&format!(
            r#"---
apiVersion: v1
kind: Secret
metadata:
  name: {tenant}-key
  labels: {{tollgate.dev/api-key: "true"}}
stringData: {{apiKey: tg_node_{tenant}_0001}}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: {tenant}}}
spec:
  quotaPolicyRef: {{name: {plan}}}
  apiKeys: [{{secretRef: {{name: {tenant}-key}}}}]
  subscriptions: [{{apiRouteRef: {{name: echo}}}}]
"#
        ));
    }
    yaml
}

/// The `roomy` plan's rate: never reached by the tests' load, whatever the machine's speed.
const ROOMY_PER_SECOND: u32 = 1_000_000;

/// The monthly requests of the `fleet` plan (tenant hooli), counted in Redis across proxies.
const FLEET_LIMIT: u64 = 600;

fn key(tenant: &str) -> String {
    format!("Bearer tg_node_{tenant}_0001")
}

/// Asks `target` until `done` holds for a response (bounded); the last response.
fn until(
    target: &Target,
    tenant: &str,
    what: &str,
    done: impl Fn(&Response) -> bool,
) -> Result<Response> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let authorization = key(tenant);
    loop {
        let last = request(target, "/echo/x", &[("Authorization", &authorization)]);
        match &last {
            Ok(response) if done(response) => return last,
            _ if Instant::now() > deadline => bail!("{what}: not within 90 s; last: {last:?}"),
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// A release of the chart on the node, watching one application namespace of its own (so that
/// the tests' releases never see each other's tenants), with the echo backend and the tenants of
/// [`tenants_yaml`] there.
struct Installed {
    release: String,
    system: TestNamespace,
    app: TestNamespace,
    /// The proxy Service.
    proxy: Target,
    _removed: RemovedOnExistingCluster,
}

impl Installed {
    fn new(release: &str, extra: &[&str]) -> Result<Self> {
        // First: it starts this binary's cluster with the node (or loads the images into an
        // existing one).
        let pods = pods();
        let rt = tokio::runtime::Runtime::new()?;
        let system = rt.block_on(TestNamespace::new(&format!("{release}-system")))?;
        let app = rt.block_on(TestNamespace::new(&format!("{release}-app")))?;
        // Cluster-wide objects (the operator's ClusterRole, the webhook) are named after the
        // release: unique per run, for a cluster that outlives it.
        let release = format!("{release}-{}", std::process::id());
        let removed = RemovedOnExistingCluster {
            release: Some((release.clone(), system.name.clone())),
            namespaces: vec![system.name.clone(), app.name.clone()],
        };
        let started = Instant::now();
        let proxy_image = pods
            .images
            .iter()
            .find(|i| i.name == "tollgate-proxy")
            .context("proxy image")?;
        let tag = proxy_image
            .reference
            .rsplit_once(':')
            .map(|(_, tag)| tag)
            .context("image tag")?;
        let chart = tollgate_tests::repo_root().join("charts/tollgate");
        let mut args = vec![
            "--kubeconfig".to_owned(),
            pods.kubeconfig().display().to_string(),
            "install".to_owned(),
            release.clone(),
            chart.display().to_string(),
            "--namespace".into(),
            system.name.clone(),
            "--set".into(),
            format!("image.tag={tag}"),
            "--set".into(),
            format!("operator.watchNamespaces={{{}}}", app.name),
            "--wait".into(),
            "--timeout".into(),
            "5m".into(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if let Err(e) = tollgate_tests::helm_ok(&args) {
            bail!("{e:#}\n{}", diagnostics(&system));
        }
        eprintln!(
            "{release}: helm install --wait took {:.1}s",
            started.elapsed().as_secs_f64()
        );
        app.apply_ok(&echo_backend_yaml(1))?;
        wait_rollout(&app, "echo", "120s")?;
        app.apply_ok(&tenants_yaml(ROOMY_PER_SECOND))?;
        let proxy = pods.service(&system.name, &format!("{release}-proxy"))?;
        Ok(Self {
            release,
            system,
            app,
            proxy,
            _removed: removed,
        })
    }

    fn deployment(&self, component: &str) -> String {
        format!("{}-{component}", self.release)
    }

    /// The operator pods and the Lease's holder.
    fn operators(&self) -> Result<(Vec<String>, String)> {
        let holder = self.system.kubectl(
            &[
                "get",
                "lease",
                &self.deployment("operator"),
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
            None,
        )?;
        let pods = self.system.kubectl(
            &[
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=tollgate-operator",
                "--field-selector=status.phase=Running",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
            None,
        )?;
        Ok((
            String::from_utf8_lossy(&pods.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            String::from_utf8_lossy(&holder.stdout).trim().to_owned(),
        ))
    }
}

#[test]
fn helm_install_runs_tollgate_as_pods_that_enforce_plans() -> Result<()> {
    let started = Instant::now();
    let installed = Installed::new("tollgate", &[])?;
    let (system, app, proxy) = (&installed.system, &installed.app, &installed.proxy);

    // One leader among the operator's pods (Ready does not wait for the election), and its pod
    // alone labelled for the config Service.
    let holder = installed.wait_new_leader("")?;
    let (operators, _) = installed.operators()?;
    assert_eq!(operators.len(), 2, "{operators:?}");
    assert!(
        operators.contains(&holder),
        "the lease is held by one of the operator pods {operators:?}: {holder:?}"
    );
    installed.wait_leader_label(&holder)?;

    // 200 through the proxy Service, forwarded to the echo pod with the tenant named.
    let ok = until(proxy, "globex", "200 for globex", |r| r.status == 200)
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", diagnostics(system)))?;
    let echoed: serde_json::Value = serde_json::from_str(&ok.body)?;
    assert_eq!(echoed["path"], "/echo/x", "{echoed}");
    assert_eq!(
        echoed["headers"]["x-tollgate-tenant"],
        format!("{}/globex", app.name),
        "{echoed}"
    );
    assert!(
        echoed["headers"].get("authorization").is_none(),
        "the key is not forwarded: {echoed}"
    );
    assert_eq!(
        ok.header("ratelimit-policy"),
        Some(format!("\"per-second\";q={ROOMY_PER_SECOND};w=1").as_str()),
        "{ok:?}"
    );

    // 429: one request an hour per proxy.
    let limited = until(proxy, "acme", "429 for acme", |r| r.status == 429)?;
    assert!(limited.header("retry-after").is_some(), "{limited:?}");
    assert_eq!(
        limited.header("content-type"),
        Some("application/problem+json")
    );
    let problem: serde_json::Value = serde_json::from_str(&limited.body)?;
    assert_eq!(
        problem["type"], "https://tollgate.dev/problems/rate-limited",
        "{problem}"
    );
    assert_eq!(problem["status"], 429);

    // 402: the month's one request is spent.
    let exhausted = until(proxy, "initech", "402 for initech", |r| r.status == 402)?;
    let problem: serde_json::Value = serde_json::from_str(&exhausted.body)?;
    assert_eq!(
        problem["type"], "https://tollgate.dev/problems/quota-exhausted",
        "{problem}"
    );
    assert_eq!(problem["quota"], "monthly-requests", "{problem}");
    assert_eq!(
        problem["paymentUrl"],
        "https://billing.example.com/upgrade?plan=tiny"
    );
    assert!(exhausted.header("retry-after").is_some(), "{exhausted:?}");

    // A plan change reaches every proxy pod.
    app.apply_ok(&tenants_yaml(999))?;
    // The Deployment starts with one proxy; the HorizontalPodAutoscaler raises it to its minimum
    // of two within its first sync.
    let scaled = system.kubectl(
        &[
            "wait",
            &format!("deployment/{}", installed.deployment("proxy")),
            "--for=jsonpath={.status.readyReplicas}=2",
            "--timeout=120s",
        ],
        None,
    )?;
    if !scaled.status.success() {
        bail!(
            "two ready proxies: {}\n{}",
            String::from_utf8_lossy(&scaled.stderr),
            diagnostics(system)
        );
    }
    let proxies = pod_names(system, "app.kubernetes.io/name=tollgate-proxy")?;
    assert_eq!(
        proxies.len(),
        2,
        "the chart's default: two proxies ({proxies:?})"
    );
    for name in &proxies {
        until(
            &pod(system, name, 8080),
            "globex",
            "the new plan at every proxy",
            |r| r.header("ratelimit-policy") == Some("\"per-second\";q=999;w=1"),
        )?;
    }

    // The README's install steps end with the quickstart examples: they work through the
    // proxy Service too.
    let examples = tollgate_tests::repo_root().join("examples/quickstart");
    let out = app.kubectl(&["apply", "-f", &examples.display().to_string()], None)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hello = {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let last = request(
                proxy,
                "/v1/hello",
                &[("Authorization", "Bearer tg_demo_globex_0001")],
            );
            match &last {
                Ok(r) if r.status == 200 => break last?,
                _ if Instant::now() > deadline => bail!("the quickstart's hello: {last:?}"),
                _ => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    };
    assert_eq!(hello.body, r#"{"hello":"world"}"#);
    let out = app.kubectl(
        &[
            "wait",
            "tenant/acme",
            "tenant/globex",
            "--for=condition=Ready",
            "--timeout=60s",
        ],
        None,
    )?;
    assert!(
        out.status.success(),
        "the quickstart's tenants Ready: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Metrics from each pod: what it answered.
    let mut answered = 0.0;
    for name in &proxies {
        let response = request(&pod(system, name, 9090), "/metrics", &[])?;
        assert_eq!(response.status, 200);
        for line in response.body.lines() {
            if line.starts_with("tollgate_proxy_requests_total{") {
                answered += line
                    .rsplit_once(' ')
                    .and_then(|(_, v)| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
            }
        }
        assert!(
            response.body.contains("tollgate_proxy_config_version"),
            "{}",
            response.body
        );
    }
    assert!(
        answered >= 6.0,
        "both pods' metrics count the requests: {answered}"
    );
    eprintln!(
        "helm install to plans enforced: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Steady traffic from inside the node's network: `threads` clients, each sending one request
/// per fresh connection (what most clients of a public API do), until stopped; bounded by count
/// and time.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// 200s so far, over all clients.
    ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// 402s so far, over all clients.
    payment_required: std::sync::Arc<std::sync::atomic::AtomicU64>,
    workers: Vec<std::thread::JoinHandle<Tally>>,
}

/// What a client saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    /// Status codes other than 200, and connection errors, with a sample of each.
    failures: std::collections::BTreeMap<String, (u64, String)>,
}

impl Tally {
    fn failed(&self) -> u64 {
        self.failures.values().map(|(n, _)| n).sum()
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        for (kind, (n, sample)) in other.failures {
            let entry = self.failures.entry(kind).or_insert((0, sample));
            entry.0 += n;
        }
    }
}

impl Load {
    const MAX_REQUESTS_PER_CLIENT: u64 = 200_000;
    const MAX_DURATION: Duration = Duration::from_secs(300);

    fn start(target: &Target, tenant: &str, threads: usize) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let payment_required = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let workers = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                let ok = ok.clone();
                let payment_required = payment_required.clone();
                let authorization = key(tenant);
                let target = target.clone();
                std::thread::spawn(move || {
                    let mut tally = Tally::default();
                    let started = Instant::now();
                    for _ in 0..Self::MAX_REQUESTS_PER_CLIENT {
                        if stop.load(std::sync::atomic::Ordering::Relaxed)
                            || started.elapsed() > Self::MAX_DURATION
                        {
                            break;
                        }
                        match request(&target, "/echo/load", &[("Authorization", &authorization)]) {
                            Ok(r) if r.status == 200 => {
                                tally.ok += 1;
                                ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Ok(r) => {
                                if r.status == 402 {
                                    payment_required
                                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                                let entry = tally
                                    .failures
                                    .entry(format!("status {}", r.status))
                                    .or_insert((0, r.body.clone()));
                                entry.0 += 1;
                            }
                            Err(e) => {
                                let text = format!("{e:#}");
                                let kind = text.rsplit(": ").next().unwrap_or("").to_owned();
                                let entry = tally.failures.entry(kind).or_insert((0, text));
                                entry.0 += 1;
                            }
                        }
                    }
                    tally
                })
            })
            .collect();
        Self {
            stop,
            ok,
            payment_required,
            workers,
        }
    }

    /// Waits until the clients have had `n` answers counted by `counter` (bounded by the load's
    /// own limits).
    fn wait_for(counter: &std::sync::atomic::AtomicU64, n: u64) {
        let deadline = Instant::now() + Self::MAX_DURATION;
        while counter.load(std::sync::atomic::Ordering::Relaxed) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn finish(mut self) -> Tally {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = Tally::default();
        for worker in std::mem::take(&mut self.workers) {
            if let Ok(tally) = worker.join() {
                total.merge(tally);
            }
        }
        total
    }
}

/// A test that fails half-way stops its clients too (they would load the machine for minutes).
impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Installed {
    /// Waits until the proxy Deployment has `n` ready pods (the autoscaler's minimum is 2).
    fn wait_proxies(&self, n: u32) -> Result<()> {
        let out = self.system.kubectl(
            &[
                "wait",
                &format!("deployment/{}", self.deployment("proxy")),
                &format!("--for=jsonpath={{.status.readyReplicas}}={n}"),
                "--timeout=120s",
            ],
            None,
        )?;
        if !out.status.success() {
            bail!(
                "{n} ready proxies: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                diagnostics(&self.system)
            );
        }
        Ok(())
    }

    fn pods(&self, selector: &str) -> Result<Vec<String>> {
        let out = self.system.kubectl(
            &[
                "get",
                "pods",
                "-l",
                selector,
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
            None,
        )?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect())
    }

    /// Waits until each of `pods` is gone (terminated and deleted).
    fn wait_deleted(&self, pods: &[String]) -> Result<()> {
        let mut args = vec!["wait", "--for=delete", "--timeout=120s"];
        let names: Vec<String> = pods.iter().map(|p| format!("pod/{p}")).collect();
        args.extend(names.iter().map(String::as_str));
        let out = self.system.kubectl(&args, None)?;
        if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("NotFound") {
            bail!(
                "pods {pods:?} not gone: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                diagnostics(&self.system)
            );
        }
        Ok(())
    }
}

#[test]
fn a_rolling_restart_of_the_proxies_under_load_fails_no_request() -> Result<()> {
    let why = "the load must go through the Service's load balancing, and a port-forward ends with its pod";
    if local_node_for("rolling restart", why).is_none() {
        return Ok(());
    }
    let installed = Installed::new("tollgate-roll", &[])?;
    installed.wait_proxies(2)?;
    until(&installed.proxy, "globex", "200 for globex", |r| {
        r.status == 200
    })?;
    let old = installed.pods("app.kubernetes.io/name=tollgate-proxy")?;
    let load = Load::start(&installed.proxy, "globex", 2);
    std::thread::sleep(Duration::from_secs(2));
    let proxy = format!("deployment/{}", installed.deployment("proxy"));
    let restarted = Instant::now();
    let out = installed
        .system
        .kubectl(&["rollout", "restart", &proxy], None)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_rollout(&installed.system, &installed.deployment("proxy"), "180s")?;
    // The old pods drain after the rollout counts them out: the load runs until they are gone.
    installed.wait_deleted(&old)?;
    let rolled = restarted.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let tally = load.finish();
    eprintln!(
        "rollout restart of the proxies in {:.1}s under load: {} requests answered 200, {} failed {:?}",
        rolled.as_secs_f64(),
        tally.ok,
        tally.failed(),
        tally.failures
    );
    assert!(tally.ok > 0, "the load ran");
    assert_eq!(tally.failed(), 0, "no request failed: {:?}", tally.failures);
    Ok(())
}

impl Installed {
    /// The containerd ID of a pod's first container.
    fn container_id(&self, pod: &str) -> Result<String> {
        let out = self.system.kubectl(
            &[
                "get",
                "pod",
                pod,
                "-o",
                "jsonpath={.status.containerStatuses[0].containerID}",
            ],
            None,
        )?;
        let id = String::from_utf8_lossy(&out.stdout);
        id.trim()
            .strip_prefix("containerd://")
            .map(str::to_owned)
            .with_context(|| format!("{pod}'s container ID: {id:?}"))
    }

    /// Waits until the Lease names a holder other than `old`; the new holder.
    fn wait_new_leader(&self, old: &str) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, holder) = self.operators()?;
            if !holder.is_empty() && holder != old {
                return Ok(holder);
            }
            if Instant::now() > deadline {
                bail!(
                    "no new leader after {old} stopped leading\n{}",
                    diagnostics(&self.system)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until exactly one operator pod is labelled leader, and it is `holder`.
    fn wait_leader_label(&self, holder: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let labelled = self.pods("tollgate.dev/role=leader")?;
            if labelled == [holder] {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("pods labelled leader: {labelled:?}, the Lease's holder: {holder}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Applies `tenants_yaml(per_second)` and waits until every proxy pod enforces it.
    fn change_plan_everywhere(&self, per_second: u32) -> Result<()> {
        self.app.apply_ok(&tenants_yaml(per_second))?;
        let policy = format!("\"per-second\";q={per_second};w=1");
        for name in pod_names(&self.system, "app.kubernetes.io/name=tollgate-proxy")? {
            until(
                &pod(&self.system, &name, 8080),
                "globex",
                "the change at every proxy",
                |r| r.header("ratelimit-policy") == Some(policy.as_str()),
            )
            .map_err(|e| anyhow::anyhow!("{e:#}\n{}", diagnostics(&self.system)))?;
        }
        Ok(())
    }
}

#[test]
fn when_the_operator_leader_hangs_or_goes_a_standby_takes_over_and_proxies_keep_serving()
-> Result<()> {
    let why = "it freezes the leader's container through the node's containerd";
    let Some(local) = local_node_for("operator failover", why) else {
        return Ok(());
    };
    let installed = Installed::new("tollgate-failover", &[])?;
    installed.wait_proxies(2)?;
    until(&installed.proxy, "globex", "200 for globex", |r| {
        r.status == 200
    })?;
    let (_, first) = installed.operators()?;
    let load = Load::start(&installed.proxy, "globex", 1);

    // The leader hangs (frozen: it cannot renew, release or step down): the standby takes over
    // once the Lease has gone a full duration without renewal.
    let frozen = installed.container_id(&first)?;
    let hung = Instant::now();
    local.node.pause_container(&frozen)?;
    let second = installed.wait_new_leader(&first);
    let took_over = hung.elapsed();
    // Thawed: the old leader finds its Lease gone and stands by (one leader, one label).
    local.node.resume_container(&frozen)?;
    let second = second?;
    installed.wait_leader_label(&second)?;
    installed.change_plan_everywhere(998)?;

    // The new leader's pod is deleted (a drain, a rollout): it hands the Lease over at once.
    let deleted = Instant::now();
    let out = installed
        .system
        .kubectl(&["delete", "pod", &second, "--wait=false"], None)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let third = installed.wait_new_leader(&second)?;
    let handed_over = deleted.elapsed();
    installed.wait_leader_label(&third)?;
    installed.change_plan_everywhere(997)?;

    let tally = load.finish();
    eprintln!(
        "leader frozen: {second} took over in {:.1}s (lease 15s); leader's pod deleted: {third} took over in {:.1}s; under load {} answered 200, {} failed {:?}",
        took_over.as_secs_f64(),
        handed_over.as_secs_f64(),
        tally.ok,
        tally.failed(),
        tally.failures
    );
    assert!(tally.ok > 0, "the load ran");
    assert_eq!(
        tally.failed(),
        0,
        "the proxies kept serving: {:?}",
        tally.failures
    );
    Ok(())
}

#[test]
fn under_redis_fleet_quotas_a_killed_proxy_and_a_restarted_containerd_never_overspend() -> Result<()>
{
    let why =
        "it kills a container and restarts containerd on the node, whose disk holds Redis's volume";
    let Some(local) = local_node_for("fleet quotas under faults", why) else {
        return Ok(());
    };
    // The chart's Redis StatefulSet keeps its append-only file on a PersistentVolume: a hostPath
    // one here (no provisioner on the test node), owned by the Redis user.
    let data = tempfile::Builder::new()
        .prefix("tollgate-node-redis-")
        .tempdir()?;
    std::os::unix::fs::chown(data.path(), Some(999), Some(999))?;
    let pv = format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: redis-data-{pid}}}\n\
         spec: {{capacity: {{storage: 1Gi}}, accessModes: [ReadWriteOnce], persistentVolumeReclaimPolicy: Retain, \
         hostPath: {{path: {path}, type: Directory}}}}\n",
        pid = std::process::id(),
        path = data.path().display()
    );
    let out = tollgate_tests::kubectl_with(
        &local.plane.admin_kubeconfig,
        &["apply", "-f", "-"],
        Some(&pv),
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = Installed::new(
        "tollgate-redis",
        &[
            "--set",
            "redis.deploy=true",
            "--set",
            &format!("redis.image={TEST_REGISTRY}/redis:{TEST_TAG}"),
        ],
    )?;
    installed.wait_proxies(2)?;
    until(&installed.proxy, "hooli", "200 for hooli", |r| {
        r.status == 200
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", diagnostics(&installed.system)))?;
    let mut admitted = 1;

    // Half-way through the month's requests, one proxy is SIGKILLed (no drain, no flush).
    let load = Load::start(&installed.proxy, "hooli", 2);
    Load::wait_for(&load.ok, FLEET_LIMIT / 2);
    let victim = installed
        .pods("app.kubernetes.io/name=tollgate-proxy")?
        .into_iter()
        .next()
        .context("a proxy pod")?;
    local
        .node
        .kill_container(&installed.container_id(&victim)?)?;
    installed.wait_proxies(2)?;
    // Until the quota is spent, at both proxies.
    Load::wait_for(&load.payment_required, 100);
    let tally = load.finish();
    admitted += tally.ok;
    // The backend's count is the truth: a request admitted whose answer was lost with the killed
    // pod's connection counts there and not at the client.
    let reached = backend_requests(&installed.app, "hooli")?;
    assert!(
        reached >= admitted,
        "{reached} reached the backend, {admitted} answered 200"
    );
    admitted = reached;
    eprintln!(
        "fleet quota of {FLEET_LIMIT} under load with a proxy SIGKILLed: {admitted} admitted, other answers {:?}",
        tally.failures
    );
    assert!(
        admitted <= FLEET_LIMIT,
        "the fleet admitted {admitted} requests over a quota of {FLEET_LIMIT}"
    );
    assert!(
        tally.failures.contains_key("status 402")
            && tally
                .failures
                .keys()
                .all(|kind| kind == "status 402" || !kind.starts_with("status")),
        "402s once spent, and no other status (the killed pod may drop connections): {:?}",
        tally.failures
    );

    // containerd restarts under the running pods: they keep running, and the counters hold.
    let restarted = Instant::now();
    local.node.restart_containerd()?;
    for deployment in ["proxy", "operator"] {
        wait_rollout(&installed.system, &installed.deployment(deployment), "120s")?;
    }
    // Admissions after the restart (a proxy may still hold leased units) count too. While
    // kubelet reconnects to containerd the Service may refuse connections for a moment.
    let authorization = key("hooli");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut refused = 0;
    loop {
        match request(
            &installed.proxy,
            "/echo/x",
            &[("Authorization", &authorization)],
        ) {
            Ok(response) if response.status == 200 => admitted += 1,
            Ok(response) if response.status == 402 => break,
            Ok(response) => bail!("hooli after containerd's restart: {response:?}"),
            Err(e) if Instant::now() < deadline => {
                refused += 1;
                if refused == 1 {
                    eprintln!("after containerd's restart: {e:#}");
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => {
                return Err(e.context(format!(
                    "the proxies after containerd's restart\n{}",
                    diagnostics(&installed.system)
                )));
            }
        }
        assert!(
            admitted <= FLEET_LIMIT,
            "{admitted} admitted over {FLEET_LIMIT}"
        );
    }
    // And every proxy is spent: none holds leased units the other did not count.
    for name in pod_names(&installed.system, "app.kubernetes.io/name=tollgate-proxy")? {
        until(
            &pod(&installed.system, &name, 8080),
            "hooli",
            "402 at every proxy",
            |r| r.status == 402,
        )?;
    }
    let reached = backend_requests(&installed.app, "hooli")?;
    assert!(
        reached <= FLEET_LIMIT,
        "{reached} requests reached the backend over a quota of {FLEET_LIMIT}"
    );
    until(
        &installed.proxy,
        "globex",
        "200 after containerd's restart",
        |r| r.status == 200,
    )?;
    eprintln!(
        "containerd restarted; pods serving and the quota still spent ({admitted} of {FLEET_LIMIT} admitted) after {:.1}s ({refused} attempts refused meanwhile)",
        restarted.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Sidecars on a real node (issue #21): the chart's webhook injects them, the kubelet runs them as
/// native sidecars with their pod-bound tokens, and each enforces only its own workload's plans:
/// an app's API behind its ingress sidecar (402 and 429 through its Service), and a Job's LLM
/// calls through its egress sidecar (the provider key added, the team's budget ending in 402, the
/// Job completing).
#[test]
fn injected_sidecars_guard_an_apps_api_and_hold_a_jobs_llm_budget() -> Result<()> {
    let installed = Installed::new("tollgate-inject", &["--set", "injection.enabled=true"])?;
    let (system, app) = (&installed.system, &installed.app);
    app.kubectl_ok(&[
        "label",
        "namespace",
        &app.name,
        "tollgate.dev/injection=enabled",
    ])?;
    // The operator writes its CA into the webhook's configuration; pods wait for that.
    let configuration = format!("{}-sidecar-injector", installed.release);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let bundle = system.kubectl_ok(&[
            "get",
            "mutatingwebhookconfiguration",
            &configuration,
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ])?;
        if !bundle.trim().is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("no caBundle in {configuration}\n{}", diagnostics(system));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let ns = &app.name;
    let image = format!("{TEST_REGISTRY}/echo-backend:{TEST_TAG}");
    app.apply_ok(&format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: sidecar-keys, labels: {{tollgate.dev/api-key: "true"}}}}
stringData: {{capped: tg_sidecar_capped, burst: tg_sidecar_burst}}
---
apiVersion: v1
kind: Secret
metadata: {{name: provider-key, labels: {{tollgate.dev/backend-credentials: "true"}}}}
stringData: {{apiKey: sk-team-ml}}
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: capped}}
spec: {{quotas: [{{name: monthly-requests, metric: Requests, limit: "2", period: Month}}]}}
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: burst}}
spec: {{rateLimits: [{{name: per-hour, requests: 1, window: 1h}}]}}
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
spec: {{workloadSelector: {{matchLabels: {{app: reports}}}}, match: {{pathPrefix: /reports}}}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: openai}}
spec:
  workloadSelector: {{matchLabels: {{app: summaries}}}}
  match: {{pathPrefix: /v1/chat/completions}}
  backend:
    url: http://llm.{ns}.svc
    requestHeaders: [{{name: Authorization, secretKeyRef: {{name: provider-key}}, valuePrefix: "Bearer "}}]
  metering: OpenAI
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: capped}}
spec: {{quotaPolicyRef: {{name: capped}}, apiKeys: [{{secretRef: {{name: sidecar-keys, key: capped}}}}], subscriptions: [{{apiRouteRef: {{name: reports}}}}]}}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: burst}}
spec: {{quotaPolicyRef: {{name: burst}}, apiKeys: [{{secretRef: {{name: sidecar-keys, key: burst}}}}], subscriptions: [{{apiRouteRef: {{name: reports}}}}]}}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: team-ml}}
spec: {{quotaPolicyRef: {{name: team-budget}}, subscriptions: [{{apiRouteRef: {{name: openai}}}}]}}
---
# The provider: answers chat completions only with the team's key.
apiVersion: apps/v1
kind: Deployment
metadata: {{name: llm}}
spec:
  selector: {{matchLabels: {{app: llm}}}}
  template:
    metadata: {{labels: {{app: llm}}}}
    spec:
      containers:
      - {{name: llm, image: "{image}", imagePullPolicy: Never, args: [--provider-key, "Bearer sk-team-ml"]}}
---
apiVersion: v1
kind: Service
metadata: {{name: llm}}
spec: {{selector: {{app: llm}}, ports: [{{port: 80, targetPort: 8080}}]}}
---
# The app whose API the ingress sidecar guards: it listens on localhost only.
apiVersion: apps/v1
kind: Deployment
metadata: {{name: reports}}
spec:
  selector: {{matchLabels: {{app: reports}}}}
  template:
    metadata:
      labels: {{app: reports}}
      annotations: {{tollgate.dev/inject: ingress, tollgate.dev/listen-port: "8080", tollgate.dev/app-port: "8081"}}
    spec:
      containers:
      - {{name: app, image: "{image}", imagePullPolicy: Never, args: [--listen, "127.0.0.1:8081"]}}
---
apiVersion: v1
kind: Service
metadata: {{name: reports}}
spec: {{selector: {{app: reports}}, ports: [{{port: 80, targetPort: 8080}}]}}
"#
    ))?;
    wait_rollout(app, "llm", "120s")?;
    wait_rollout(app, "reports", "180s")?;
    let containers = app.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=reports",
        "-o",
        "jsonpath={.items[0].spec.initContainers[*].name}",
    ])?;
    assert_eq!(containers.trim(), "tollgate-proxy", "the injected sidecar");
    // One runtime worker for the 20m of CPU it requested (the downward API, from the kubelet).
    let started = app.kubectl_ok(&["logs", "deployment/reports", "-c", "tollgate-proxy"])?;
    assert!(
        started.lines().any(|l| l.contains("tollgate-proxy serving")
            && l.split_whitespace().any(|w| w == "workers=1")),
        "{started}"
    );

    // Through the app's own Service: its sidecar enforces the plans.
    let reports = pods().service(&app.name, "reports")?;
    let call = |key: &str| {
        request(
            &reports,
            "/reports/q1",
            &[("Authorization", &format!("Bearer {key}"))],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let first = loop {
        let r = call("tg_sidecar_capped");
        match r {
            Ok(r) if r.status == 200 => break r,
            r if Instant::now() > deadline => {
                bail!(
                    "the ingress sidecar never answered 200: {r:?}\n{}",
                    diagnostics(app)
                )
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    let echoed: serde_json::Value = serde_json::from_str(&first.body)?;
    assert_eq!(
        echoed["headers"]["x-tollgate-tenant"],
        format!("{ns}/capped"),
        "the app received the request, with its tenant: {echoed}"
    );
    assert_eq!(call("tg_sidecar_capped")?.status, 200);
    let exhausted = call("tg_sidecar_capped")?;
    assert_eq!(exhausted.status, 402, "{exhausted:?}");
    assert!(exhausted.body.contains("quota-exhausted"), "{exhausted:?}");
    assert_eq!(call("tg_sidecar_burst")?.status, 200);
    assert_eq!(call("tg_sidecar_burst")?.status, 429);

    // A Job that calls the provider through its egress sidecar, with no key of its own.
    app.apply_ok(&format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: summaries}}
spec:
  backoffLimit: 0
  template:
    metadata:
      labels: {{app: summaries}}
      annotations: {{tollgate.dev/inject: egress, tollgate.dev/tenant: team-ml}}
    spec:
      restartPolicy: Never
      containers:
      - name: app
        image: "{image}"
        imagePullPolicy: Never
        args: [--call, "http://127.0.0.1:15080/v1/chat/completions", --times, "5"]
"#
    ))?;
    let done = app.kubectl(
        &[
            "wait",
            "--for=condition=complete",
            "job/summaries",
            "--timeout=180s",
        ],
        None,
    )?;
    if !done.status.success() {
        bail!(
            "the Job did not complete: {}\n{}",
            String::from_utf8_lossy(&done.stderr),
            diagnostics(app)
        );
    }
    let printed = app.kubectl_ok(&["logs", "job/summaries", "-c", "app"])?;
    let statuses: Vec<u16> = printed
        .lines()
        .filter_map(|l| l.strip_prefix("status ")?.trim().parse().ok())
        .collect();
    let served = statuses.iter().take_while(|s| **s == 200).count();
    assert!(
        served >= 1 && served < statuses.len() && statuses[served..].iter().all(|s| *s == 402),
        "calls admitted while the budget holds, then 402: {statuses:?}"
    );
    // The provider saw the team's key on every call it answered, and nothing else.
    let provider = app.kubectl_ok(&["logs", "deployment/llm"])?;
    let keyed = provider
        .lines()
        .filter(|l| l.contains("provider-key=valid"))
        .count();
    assert_eq!(keyed, served, "{provider}");
    assert!(
        !provider.contains("provider-key=missing-or-wrong"),
        "{provider}"
    );
    Ok(())
}
