//! Tollgate as real Pods on a real node (tests/src/node.rs): images built offline and imported,
//! `helm install` to Ready, traffic through the proxy Service, plan changes at every pod.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tollgate_tests::images::{TEST_REGISTRY, TEST_TAG};
use tollgate_tests::{TestNamespace, node};

/// One HTTP/1.1 request over a fresh connection from inside the node's network; the status, the
/// response head's lines and the body.
fn request(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    let mut stream = node().node.connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
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

/// The ClusterIP and first port of a Service.
fn service_address(ns: &TestNamespace, service: &str) -> Result<SocketAddr> {
    let out = ns.kubectl(
        &[
            "get",
            "service",
            service,
            "-o",
            "jsonpath={.spec.clusterIP}:{.spec.ports[0].port}",
        ],
        None,
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("service {service} address {text:?}"))
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
    let local = node();
    eprintln!(
        "images built in {:.1}s; control plane, node and DNS Ready in {:.1}s",
        local.images_built_in.as_secs_f64(),
        local.node.started_in.as_secs_f64()
    );
    let rt = tokio::runtime::Runtime::new()?;
    let ns = rt.block_on(TestNamespace::new("node-echo"))?;
    ns.apply_ok(&echo_backend_yaml(2))?;
    wait_rollout(&ns, "echo", "120s")?;
    let address = service_address(&ns, "echo")?;
    // Both pods are Ready; kube-proxy programs the second one's endpoint within a moment.
    let mut pods = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while pods.len() < 2 && Instant::now() < deadline {
        let response = match request(address, "/hello", &[]) {
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
        pods.insert(body["pod"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(pods.len(), 2, "both pods answer behind the Service: {pods:?}");
    eprintln!("echo pods answered in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
