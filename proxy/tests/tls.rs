//! TLS termination with rustls: HTTP/2 and HTTP/1.1 by ALPN; h2c with prior knowledge, including
//! concurrent streams with different keys on one connection.

mod support;

use std::process::Command;

use support::ProxyProcess;

const WORLD: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {name: hello}
spec:
  match: {pathPrefix: /hello}
  backend: {directResponse: {status: 200, body: hi}}
---
apiVersion: v1
kind: Secret
metadata: {name: k}
stringData: {apiKey: tls-key-1}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {name: t}
spec:
  apiKeys: [{secretRef: {name: k}}]
  subscriptions: [{apiRouteRef: {name: hello}}]
"#;

/// `curl` with the given flags and the test world's key; returns (http_version, status, body).
fn curl(args: &[&str]) -> (String, String, String) {
    curl_with_key("tls-key-1", args)
}

/// `curl` with the given flags, sending `key` as `X-Api-Key`.
fn curl_with_key(key: &str, args: &[&str]) -> (String, String, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_version} %{http_code}", "-H"])
        .arg(format!("x-api-key: {key}"))
        .args(args)
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, meta) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (version, status) = meta.split_once(' ').unwrap_or((meta, ""));
    (version.to_owned(), status.to_owned(), body.to_owned())
}

#[tokio::test]
async fn tls_serves_http2_and_http11_by_alpn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    let p = ProxyProcess::start_with(
        &[("world.yaml", WORLD.to_owned())],
        &[
            "--tls-cert",
            &cert_path.display().to_string(),
            "--tls-key",
            &key_path.display().to_string(),
        ],
    )
    .await;
    let url = format!("https://localhost:{}/hello", p.listen.port());
    let ca = cert_path.display().to_string();
    assert_eq!(
        curl(&["--cacert", &ca, "--http2", &url]),
        ("2".into(), "200".into(), "hi".into())
    );
    assert_eq!(
        curl(&["--cacert", &ca, "--http1.1", &url]),
        ("1.1".into(), "200".into(), "hi".into())
    );
    // Plain HTTP on the TLS port: the handshake fails, the connection is counted as such.
    let plain = format!("http://127.0.0.1:{}/hello", p.listen.port());
    let _ = curl(&["--max-time", "5", &plain]);
    let mut counted = String::new();
    for _ in 0..50 {
        let (_, _, body) = support::get_raw(p.admin, "/metrics", &[])
            .await
            .expect("metrics");
        counted = String::from_utf8_lossy(&body)
            .lines()
            .find(|l| l.starts_with("tollgate_proxy_connections_total{outcome=\"tls_failed\"}"))
            .unwrap_or_default()
            .to_owned();
        if counted.ends_with(" 1") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(counted.ends_with(" 1"), "{counted:?}");
}

#[tokio::test]
async fn plaintext_serves_h2c_with_prior_knowledge() {
    let p = ProxyProcess::start(&[("world.yaml", WORLD.to_owned())]).await;
    let url = format!("http://127.0.0.1:{}/hello", p.listen.port());
    assert_eq!(
        curl(&["--http2-prior-knowledge", &url]),
        ("2".into(), "200".into(), "hi".into())
    );
}

#[tokio::test]
async fn bad_tls_files_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.crt");
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate-proxy"))
        .args([
            "--manifests",
            &dir.path().display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--tls-cert",
            &missing.display().to_string(),
            "--tls-key",
            &missing.display().to_string(),
        ])
        .args([
            "--state-dir",
            &dir.path().join("state").display().to_string(),
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("reading TLS certificate") && stderr.contains("missing.crt"),
        "{stderr}"
    );
}

/// Two tenants on an echo backend: `key-a` is `default/a`, `key-b` is `default/b`.
fn two_tenants(backend: &support::Backend) -> String {
    let tenant = |name: &str| {
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData: {{apiKey: key-{name}}}\n\
             ---\napiVersion: tollgate.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: {name}}}\n\
             spec: {{apiKeys: [{{secretRef: {{name: {name}}}}}], subscriptions: [{{apiRouteRef: {{name: echo}}}}]}}\n"
        )
    };
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: echo}}\n\
         spec: {{match: {{pathPrefix: /}}, backend: {{url: \"{}\"}}}}\n{}{}",
        backend.url(),
        tenant("a"),
        tenant("b")
    )
}

// Multi-threaded: `curl` blocks its thread, and the echo backend must run meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_tells_the_backend_its_host() {
    // HTTP/2 names the host in `:authority`, not in a Host header: before, the backend got no
    // X-Forwarded-Host at all.
    let backend = support::Backend::start().await;
    let p = ProxyProcess::start(&[("world.yaml", two_tenants(&backend))]).await;
    let authority = format!("127.0.0.1:{}", p.listen.port());
    let (version, status, body) = curl_with_key(
        "key-a",
        &["--http2-prior-knowledge", &format!("http://{authority}/x")],
    );
    assert_eq!((version.as_str(), status.as_str()), ("2", "200"), "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).expect("echo JSON");
    assert_eq!(seen["headers"]["x-forwarded-host"], authority.as_str());
}

#[tokio::test]
async fn concurrent_h2c_streams_with_different_keys_each_get_their_own_tenant() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let backend = support::Backend::start().await;
    let p = ProxyProcess::start(&[("world.yaml", two_tenants(&backend))]).await;
    let io = TokioIo::new(
        tokio::net::TcpStream::connect(p.listen)
            .await
            .expect("connect"),
    );
    let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("h2c handshake");
    tokio::spawn(connection);
    // Streams of one connection share its key memo: concurrent streams with different keys
    // (and a wrong one) must each be answered for their own key.
    let mut dice = support::Dice::new(11);
    let mut streams = tokio::task::JoinSet::new();
    for i in 0..300 {
        let (key, tenant) = match dice.below(5) {
            0 | 1 => ("key-a", Some("default/a")),
            2 | 3 => ("key-b", Some("default/b")),
            _ => ("key-c", None),
        };
        let request = hyper::Request::get(format!("http://api.test/s/{i}"))
            .header("x-api-key", key)
            .body(Empty::<bytes::Bytes>::new())
            .expect("request");
        let mut sender = sender.clone();
        streams.spawn(async move {
            let response = sender.send_request(request).await.expect("response");
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.expect("body");
            (i, tenant, status, body.to_bytes())
        });
    }
    let mut answered = 0;
    while let Some(done) = streams.join_next().await {
        let (i, tenant, status, body) = done.expect("stream task");
        match tenant {
            Some(tenant) => {
                assert_eq!(status, 200, "stream {i}");
                let echo: serde_json::Value = serde_json::from_slice(&body).expect("echo");
                assert_eq!(echo["uri"], format!("/s/{i}"), "stream {i}");
                assert_eq!(echo["headers"]["x-tollgate-tenant"], tenant, "stream {i}");
            }
            None => assert_eq!(status, 401, "stream {i}"),
        }
        answered += 1;
    }
    assert_eq!(answered, 300);
}
