//! gRPC through the proxy, with grpcio on both ends (a client as users' code has it, a test
//! service as the backend, tests/python/grpc_peer.py): unary, server-streaming and
//! bidirectional calls over HTTP/2 to the backend with their metadata and trailers, a caller's
//! deadline passed on, one backend connection carrying concurrent calls, TLS backends reached
//! with ALPN h2, and every refusal as a gRPC status with decodable google.rpc details.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use support::ProxyProcess;

/// The test service, killed when dropped.
struct Service {
    child: Child,
    port: u16,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the test service; over TLS with `tls` (certificate and key files).
fn service(tls: Option<(&std::path::Path, &std::path::Path)>) -> Service {
    let port = support::free_port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/grpc_peer.py");
    let mut cmd = Command::new(tollgate_tests::python::sdk_python());
    cmd.arg(script).args(["serve", &port.to_string()]);
    if let Some((cert, key)) = tls {
        cmd.arg(cert).arg(key);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the gRPC service");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the service's first line");
    assert_eq!(line.trim(), "listening");
    Service { child, port }
}

fn world(backend: &str) -> String {
    let dead = support::free_port();
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: roomy}}
spec:
  quotas: [{{name: monthly, metric: Requests, limit: "100000", period: Month}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: one-a-month}}
spec:
  quotas: [{{name: monthly, metric: Requests, limit: "1", period: Month}}]
  paymentUrl: https://billing.example.com/upgrade
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: one-an-hour}}
spec:
  rateLimits: [{{name: hourly, requests: 1, window: 1h}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: keys}}
stringData: {{roomy: key-roomy, frugal: key-frugal, hasty: key-hasty, loner: key-loner}}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: roomy}}
spec:
  quotaPolicyRef: {{name: roomy}}
  apiKeys: [{{secretRef: {{name: keys, key: roomy}}}}]
  subscriptions: [{{apiRouteRef: {{name: echo}}}}, {{apiRouteRef: {{name: dead}}}}, {{apiRouteRef: {{name: h2only}}}}, {{apiRouteRef: {{name: h1}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: frugal}}
spec:
  quotaPolicyRef: {{name: one-a-month}}
  apiKeys: [{{secretRef: {{name: keys, key: frugal}}}}]
  subscriptions: [{{apiRouteRef: {{name: echo}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: hasty}}
spec:
  quotaPolicyRef: {{name: one-an-hour}}
  apiKeys: [{{secretRef: {{name: keys, key: hasty}}}}]
  subscriptions: [{{apiRouteRef: {{name: echo}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: loner}}
spec:
  quotaPolicyRef: {{name: roomy}}
  apiKeys: [{{secretRef: {{name: keys, key: loner}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: echo}}
spec:
  match: {{pathPrefix: /tollgate.test.Echo}}
  backend: {{url: "{backend}"}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: dead}}
spec:
  match: {{pathPrefix: /tollgate.test.Dead}}
  backend: {{url: "http://127.0.0.1:{dead}"}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: h2only}}
spec:
  match: {{pathPrefix: /h2only}}
  backend: {{url: "{backend}", protocol: HTTP2}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: h1}}
spec:
  match: {{pathPrefix: /h1}}
  backend: {{url: "{backend}"}}
"#
    )
}

/// Runs `calls` from one grpcio channel to the proxy; their outcomes, in order.
async fn calls(p: &ProxyProcess, calls: Value) -> Vec<Value> {
    let s = json!({"target": p.listen.to_string(), "calls": calls});
    let out = tokio::task::spawn_blocking(move || {
        tollgate_tests::python::run_json("grpc_peer.py", &["call"], &s).expect("the client ran")
    })
    .await
    .expect("join");
    out["calls"].as_array().cloned().expect("calls")
}

/// The detail of `kind` (`google.rpc.ErrorInfo`...) in a failed call's decoded status.
fn detail<'a>(call: &'a Value, kind: &str) -> &'a Value {
    call["status"]["details"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["type"] == format!("google.rpc.{kind}")))
        .unwrap_or_else(|| panic!("no {kind} in {call}"))
}

/// What a gRPC call sent with hyper's own HTTP/2 client (no gRPC library: nothing enforces a
/// deadline on the client's side, and the frames are seen as they came) got back.
struct RawCall {
    status: u16,
    headers: http::HeaderMap,
    /// The stream ended with the response's HEADERS frame (a trailers-only response).
    trailers_only: bool,
    data: bytes::Bytes,
    trailers: Option<http::HeaderMap>,
}

/// Calls `path` on the proxy over h2c with `headers`, a StringValue of `value` as the message.
async fn raw_call(p: &ProxyProcess, path: &str, value: &str, headers: &[(&str, &str)]) -> RawCall {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let mut req = http::Request::post(format!("http://{}{path}", p.listen))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    // The gRPC prefix (not compressed, the length), then field 1 (a string) of the StringValue.
    let mut message = vec![0u8];
    message.extend_from_slice(&(2 + value.len() as u32).to_be_bytes());
    message.extend_from_slice(&[0x0a, value.len() as u8]);
    message.extend_from_slice(value.as_bytes());
    let message = bytes::Bytes::from(message);
    let resp = client
        .request(
            req.body(http_body_util::Full::new(message))
                .expect("request"),
        )
        .await
        .expect("an HTTP/2 answer");
    let (parts, mut body) = resp.into_parts();
    let trailers_only = http_body::Body::is_end_stream(&body);
    let (mut data, mut trailers) = (Vec::new(), None);
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("a frame");
        match frame.into_data() {
            Ok(bytes) => data.extend_from_slice(&bytes),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    RawCall {
        status: parts.status.as_u16(),
        headers: parts.headers,
        trailers_only,
        data: data.into(),
        trailers,
    }
}

/// Established TCP connections to `port` on loopback (the proxy's to a backend).
fn connections_to(port: u16) -> usize {
    let out = Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            "dst",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test]
async fn unary_streaming_and_bidirectional_calls_reach_the_backend_over_http2_with_their_trailers()
{
    let backend = service(None);
    let url = format!("http://127.0.0.1:{}", backend.port);
    let p = ProxyProcess::start(&[("world.yaml", world(&url))]).await;
    let out = calls(
        &p,
        json!([
            {"method": "Unary", "key": "key-roomy", "value": "hello", "timeout": 7},
            {"method": "ServerStream", "key": "key-roomy", "value": "5"},
            {"method": "Bidi", "key": "key-roomy", "value": ["a", "b", "c"]},
            {"method": "Fail", "key": "key-roomy"},
        ]),
    )
    .await;
    let unary = &out[0];
    assert_eq!(unary["code"], "OK", "{unary}");
    let seen: Value = serde_json::from_str(unary["messages"][0].as_str().expect("text"))
        .expect("the service's JSON");
    assert_eq!(seen["value"], "hello");
    assert_eq!(
        seen["tenant"], "default/roomy",
        "the tenant header reached the backend"
    );
    assert_eq!(seen["key_seen"], false, "the API key did not");
    let left = seen["deadline_left"]
        .as_f64()
        .expect("a deadline reached the backend");
    // At most the caller's 7 s (gRPC servers round a deadline up by a few ms).
    assert!(left > 0.0 && left < 7.5, "the caller's deadline: {left}");
    assert_eq!(unary["initial"]["x-initial"], "yes", "{unary}");
    assert_eq!(unary["trailing"]["x-trailer"], "kept", "{unary}");

    let stream = &out[1];
    assert_eq!(stream["code"], "OK", "{stream}");
    assert_eq!(stream["messages"], json!(["0", "1", "2", "3", "4"]));
    assert_eq!(stream["trailing"]["x-trailer"], "streamed", "{stream}");

    let bidi = &out[2];
    assert_eq!(bidi["code"], "OK", "{bidi}");
    assert_eq!(bidi["messages"], json!(["echo:a", "echo:b", "echo:c"]));

    // The backend's own failure and its details reach the caller as the backend sent them.
    let failed = &out[3];
    assert_eq!(failed["code"], "NOT_FOUND", "{failed}");
    assert_eq!(failed["message"], "no such thing");
    let info = detail(failed, "ErrorInfo");
    assert_eq!(info["reason"], "NOT_HERE", "{failed}");
    assert_eq!(p.used("roomy", None).await, "4", "each call is one request");

    // A call past its deadline ends as DEADLINE_EXCEEDED; the backend was told the deadline.
    let late = calls(
        &p,
        json!([{"method": "Slow", "key": "key-roomy", "value": "5", "timeout": 1}]),
    )
    .await;
    assert_eq!(late[0]["code"], "DEADLINE_EXCEEDED", "{}", late[0]);

    // A raw call the backend answers: its message and its trailers.
    let raw = raw_call(
        &p,
        "/tollgate.test.Echo/Unary",
        "raw",
        &[("authorization", "Bearer key-roomy")],
    )
    .await;
    assert_eq!(raw.status, 200);
    assert!(!raw.data.is_empty());
    let trailers = raw.trailers.expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-trailer"], "kept");

    // A caller that gives up before the answer (its stream reset) is still logged and counted:
    // 499, client-closed.
    let key = [("authorization", "Bearer key-roomy")];
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        raw_call(&p, "/tollgate.test.Echo/Slow", "5", &key),
    )
    .await;
    assert!(gave_up.is_err(), "the call was still waiting");
    p.wait_for_metric(
        r#"tollgate_proxy_requests_total{reason="client-closed",route="default/echo",status="499"}"#,
        1.0,
    )
    .await;

    // Calls at once share one connection to the backend (HTTP/2 streams), which stays open.
    let concurrent: Vec<Value> = (0..8)
        .map(|_| json!({"method": "Slow", "key": "key-roomy", "value": "0.5"}))
        .collect();
    let ps = std::sync::Arc::new(p);
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (p, c) = (ps.clone(), concurrent.clone());
            tokio::spawn(async move { calls(&p, json!(c)).await })
        })
        .collect();
    for run in runs {
        for call in run.await.expect("join") {
            assert_eq!(call["code"], "OK", "{call}");
        }
    }
    assert_eq!(
        connections_to(backend.port),
        1,
        "one HTTP/2 connection carried every call"
    );
}

#[tokio::test]
async fn protocol_http2_sends_every_request_over_http2() {
    let backend = support::Backend::start_h2c().await;
    let p = ProxyProcess::start(&[("world.yaml", world(&backend.url()))]).await;
    let key = [("authorization", "Bearer key-roomy")];
    let h2 = p.post("/h2only/x?q=1", &key, "a body").await;
    assert_eq!(h2.status, 200, "{h2:?}\n{}", p.stderr());
    let seen = h2.json();
    assert_eq!(seen["version"], "HTTP/2.0");
    assert_eq!(seen["uri"], format!("http://{}/h2only/x?q=1", backend.addr));
    assert_eq!(seen["body"], "a body");
    assert_eq!(seen["headers"]["x-tollgate-tenant"], "default/roomy");
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    let bodiless = p
        .get(
            "/h2only/y",
            &[key[0], ("te", "trailers"), ("x-custom", "kept")],
        )
        .await;
    let seen = bodiless.json();
    assert_eq!(seen["method"], "GET", "{bodiless:?}");
    assert_eq!(seen["headers"]["te"], "trailers", "{seen}");
    assert_eq!(seen["headers"]["x-custom"], "kept", "{seen}");

    // The proxy holds a call's deadline itself, for a backend that does not (nor the client):
    // DEADLINE_EXCEEDED when it passes, and the call is not charged.
    let before = p.used("roomy", None).await;
    let key = [
        ("authorization", "Bearer key-roomy"),
        ("grpc-timeout", "300m"),
    ];
    let slow = raw_call(&p, "/tollgate.test.Echo/slow/5000", "late", &key).await;
    assert_eq!(slow.status, 200);
    assert!(slow.trailers_only, "{:?}", slow.headers);
    assert_eq!(slow.headers["grpc-status"], "4", "{:?}", slow.headers);
    assert!(
        slow.headers["grpc-message"]
            .to_str()
            .is_ok_and(|m| m.contains("call's deadline")),
        "{:?}",
        slow.headers
    );
    assert_eq!(p.used("roomy", None).await, before, "not charged");
    // A backend that answers in time: its message and trailers, and the deadline it was told.
    let quick = raw_call(&p, "/tollgate.test.Echo/slow/1", "quick", &key).await;
    assert_eq!(
        quick.trailers.as_ref().map(|t| &t["grpc-status"]),
        Some(&http::HeaderValue::from_static("0"))
    );
    // Without it the request goes over HTTP/1.1, which this backend does not speak.
    p.get("/h1/x", &key)
        .await
        .problem(502, "backend-unavailable");
}

#[tokio::test]
async fn refusals_reach_grpc_callers_as_statuses_that_tell_pay_from_retry_later() {
    let backend = service(None);
    let url = format!("http://127.0.0.1:{}", backend.port);
    let p = ProxyProcess::start(&[("world.yaml", world(&url))]).await;
    let out = calls(
        &p,
        json!([
            {"method": "Unary", "value": "no key"},
            {"method": "Unary", "key": "key-frugal", "value": "first"},
            {"method": "Unary", "key": "key-frugal", "value": "second"},
            {"method": "Unary", "key": "key-hasty", "value": "first"},
            {"method": "ServerStream", "key": "key-hasty", "value": "3"},
            {"method": "Unary", "key": "key-loner", "value": "not subscribed"},
            {"service": "tollgate.test.Dead", "method": "Unary", "key": "key-roomy"},
            {"service": "other.Service", "method": "Unary", "key": "key-roomy"},
        ]),
    )
    .await;

    let no_key = &out[0];
    assert_eq!(no_key["code"], "UNAUTHENTICATED", "{no_key}");
    assert_eq!(detail(no_key, "ErrorInfo")["reason"], "UNAUTHORIZED");
    assert_eq!(detail(no_key, "ErrorInfo")["domain"], "tollgate.dev");

    // Pay: RESOURCE_EXHAUSTED with QUOTA_EXHAUSTED, the quota and where to pay.
    assert_eq!(out[1]["code"], "OK", "{}", out[1]);
    let exhausted = &out[2];
    assert_eq!(exhausted["code"], "RESOURCE_EXHAUSTED", "{exhausted}");
    assert_eq!(exhausted["status"]["code"], 8);
    let info = detail(exhausted, "ErrorInfo");
    assert_eq!(info["reason"], "QUOTA_EXHAUSTED", "{exhausted}");
    assert_eq!(info["metadata"]["tenant"], "default/frugal");
    assert_eq!(info["metadata"]["quota"], "monthly");
    assert_eq!(
        info["metadata"]["paymentUrl"],
        "https://billing.example.com/upgrade"
    );
    assert!(info["metadata"]["resetsAt"].is_string(), "{exhausted}");
    let violation = &detail(exhausted, "QuotaFailure")["violations"][0];
    assert_eq!(violation["subject"], "tenant:default/frugal");
    assert_eq!(violation["quota_id"], "monthly");
    assert_eq!(violation["quota_value"], 1);
    assert_eq!(
        detail(exhausted, "Help")["links"][0]["url"],
        "https://billing.example.com/upgrade"
    );
    assert!(
        exhausted["trailing"]["ratelimit"].is_string(),
        "the RateLimit headers come as metadata: {exhausted}"
    );

    // Retry later: RESOURCE_EXHAUSTED with RATE_LIMITED and when (a streaming call alike).
    assert_eq!(out[3]["code"], "OK", "{}", out[3]);
    let limited = &out[4];
    assert_eq!(limited["code"], "RESOURCE_EXHAUSTED", "{limited}");
    assert_eq!(detail(limited, "ErrorInfo")["reason"], "RATE_LIMITED");
    let delay = detail(limited, "RetryInfo")["retry_delay_seconds"]
        .as_i64()
        .expect("a delay");
    assert!(delay > 0 && delay <= 3600, "{limited}");
    assert_eq!(
        limited["trailing"]["retry-after"],
        delay.to_string(),
        "{limited}"
    );

    let loner = &out[5];
    assert_eq!(loner["code"], "PERMISSION_DENIED", "{loner}");
    assert_eq!(detail(loner, "ErrorInfo")["reason"], "NOT_SUBSCRIBED");

    let dead = &out[6];
    assert_eq!(dead["code"], "UNAVAILABLE", "{dead}");
    assert_eq!(detail(dead, "ErrorInfo")["reason"], "BACKEND_UNAVAILABLE");

    let unknown = &out[7];
    assert_eq!(unknown["code"], "UNIMPLEMENTED", "{unknown}");
    assert_eq!(detail(unknown, "ErrorInfo")["reason"], "ROUTE_NOT_FOUND");

    assert_eq!(
        p.used("roomy", None).await,
        "0",
        "a call its backend did not answer is not charged"
    );

    // On the wire: one HEADERS frame ending the stream, no body, no content-length.
    let raw = raw_call(&p, "/tollgate.test.Echo/Unary", "no key", &[]).await;
    assert_eq!(raw.status, 200);
    assert!(raw.trailers_only, "a trailers-only response");
    assert!(raw.data.is_empty() && raw.trailers.is_none());
    assert_eq!(raw.headers["content-type"], "application/grpc");
    assert_eq!(raw.headers["grpc-status"], "16");
    assert!(
        raw.headers.get("content-length").is_none(),
        "{:?}",
        raw.headers
    );
    assert!(raw.headers.contains_key("grpc-status-details-bin"));

    // Metrics count them under their problems' HTTP statuses, as any refusal.
    for (reason, status) in [
        ("unauthorized", 401),
        ("quota-exhausted", 402),
        ("rate-limited", 429),
        ("not-subscribed", 403),
        ("backend-unavailable", 502),
        ("route-not-found", 404),
    ] {
        let series =
            format!(r#"tollgate_proxy_rejections_total{{reason="{reason}",status="{status}"}}"#);
        p.wait_for_metric(&series, 1.0).await;
    }
}

#[tokio::test]
async fn a_tls_backend_is_reached_with_alpn_h2() {
    let ca = tollgate_tests::pki::Ca::new("grpc test CA").expect("CA");
    let pair = ca.server(&["127.0.0.1"]).expect("certificate");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, ca_file) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert, &pair.cert_pem).expect("write");
    std::fs::write(&key, &pair.key_pem).expect("write");
    std::fs::write(&ca_file, &ca.cert_pem).expect("write");
    let backend = service(Some((&cert, &key)));
    let url = format!("https://127.0.0.1:{}", backend.port);
    let p = ProxyProcess::start_with(
        &[("world.yaml", world(&url))],
        &["--backend-ca", ca_file.to_str().expect("utf-8 path")],
    )
    .await;
    let out = calls(
        &p,
        json!([
            {"method": "Unary", "key": "key-roomy", "value": "over TLS"},
            {"method": "Bidi", "key": "key-roomy", "value": ["x", "y"]},
        ]),
    )
    .await;
    assert_eq!(out[0]["code"], "OK", "{}", out[0]);
    assert_eq!(out[0]["trailing"]["x-trailer"], "kept", "{}", out[0]);
    assert_eq!(
        out[1]["messages"],
        json!(["echo:x", "echo:y"]),
        "{}",
        out[1]
    );
}

/// A burst of small unary answers waiting at once to be relayed: h2 closes a connection that
/// holds too many small DATA frames unread, in proportion to its window. With hyper's adaptive
/// windows (64 KiB at first) about 130 did; this burst, 64 connections of 40 calls on one worker thread, got
/// ENHANCE_YOUR_CALM for most of its calls.
#[tokio::test]
async fn a_burst_of_calls_shares_the_backend_connection_without_closing_it() {
    let backend = support::Backend::start_h2c().await;
    let p = ProxyProcess::start_with(
        &[("world.yaml", world(&backend.url()))],
        &["--worker-threads", "1"],
    )
    .await;
    let calls = (0..64).map(|_| {
        // A client (a connection) each, as many callers are.
        let listen = p.listen;
        tokio::spawn(async move {
            let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .http2_only(true)
                    .build_http();
            let sends = (0..40).map(|i| {
                let client = client.clone();
                async move {
                    let message = format!("\x00\x00\x00\x00\x04call{}", i % 10);
                    let req = http::Request::post(format!("http://{listen}/tollgate.test.Echo/U"))
                        .header("content-type", "application/grpc")
                        .header("te", "trailers")
                        .header("authorization", "Bearer key-roomy")
                        .body(http_body_util::Full::new(bytes::Bytes::from(message)))
                        .expect("request");
                    let resp = match client.request(req).await {
                        Ok(resp) => resp,
                        Err(e) => return (0, Some(format!("no answer: {e:?}"))),
                    };
                    let (parts, body) = resp.into_parts();
                    let body = http_body_util::BodyExt::collect(body)
                        .await
                        .expect("the body");
                    let status = body
                        .trailers()
                        .and_then(|t| t.get("grpc-status"))
                        .or(parts.headers.get("grpc-status"))
                        .map(|v| v.to_str().unwrap_or("?").to_owned());
                    (parts.status.as_u16(), status)
                }
            });
            futures::future::join_all(sends).await
        })
    });
    let mut failed = Vec::new();
    for conn in futures::future::join_all(calls).await {
        for (status, grpc_status) in conn.expect("join") {
            if status != 200 || grpc_status.as_deref() != Some("0") {
                failed.push((status, grpc_status));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 2560 calls failed, e.g. {:?}\n{}",
        failed.len(),
        &failed[..failed.len().min(3)],
        p.stderr()
    );
    assert_eq!(p.used("roomy", None).await, "2560");
}

/// More calls at once than one connection takes: another connection opens beside it (a
/// backend's stream limit would otherwise queue them), and every call is answered.
#[tokio::test]
async fn calls_beyond_one_connections_share_open_another() {
    let backend = support::Backend::start_h2c().await;
    let p = ProxyProcess::start(&[("world.yaml", world(&backend.url()))]).await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let listen = p.listen;
    // 150 calls that each take 2 s at the backend: more than the 100 one connection takes.
    let calls = (0..150).map(|_| {
        let client = client.clone();
        async move {
            let req = http::Request::post(format!("http://{listen}/tollgate.test.Echo/slow/2000"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("authorization", "Bearer key-roomy")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"\x00\x00\x00\x00\x00",
                )))
                .expect("request");
            let resp = client.request(req).await.expect("an answer");
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .expect("the body");
            body.trailers()
                .and_then(|t| t.get("grpc-status"))
                .map(|v| v.to_str().unwrap_or("?").to_owned())
        }
    });
    let statuses = futures::future::join_all(calls).await;
    assert!(
        statuses.iter().all(|s| s.as_deref() == Some("0")),
        "{statuses:?}\n{}",
        p.stderr()
    );
    assert_eq!(
        connections_to(backend.addr.port()),
        2,
        "a second connection took the calls past the first's 100"
    );
}

/// A TLS backend that does not agree to HTTP/2 (no ALPN h2): 502 at once, and the log says why
/// (not a frame error at the first call).
#[tokio::test]
async fn a_tls_backend_without_http2_is_refused_with_the_reason() {
    let ca = tollgate_tests::pki::Ca::new("h1 test CA").expect("CA");
    let pair = ca.server(&["127.0.0.1"]).expect("certificate");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).expect("write");
    let h1_only = tollgate_tests::llm_backend::LlmBackend::start_tls(&pair, "Bearer x")
        .await
        .expect("an HTTPS backend");
    let p = ProxyProcess::start_with(
        &[("world.yaml", world(&h1_only.https_url()))],
        &["--backend-ca", ca_file.to_str().expect("utf-8 path")],
    )
    .await;
    let reply = p
        .get("/h2only/x", &[("authorization", "Bearer key-roomy")])
        .await;
    reply.problem(502, "backend-unavailable");
    assert!(
        p.stderr().contains("did not agree to HTTP/2"),
        "{}",
        p.stderr()
    );
    assert_eq!(p.used("roomy", None).await, "0", "not charged");
}
