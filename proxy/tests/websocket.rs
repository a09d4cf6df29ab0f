//! WebSocket upgrades through the proxy, with the `websockets` Python library on both ends (a
//! client as users' code has it, an echo server as the backend): admitted and charged like any
//! request, refused with the same problem bodies before the upgrade, relayed both ways, closed
//! with a close frame when idle too long or when the proxy shuts down.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use support::ProxyProcess;

/// The echo backend, killed when dropped.
struct Echo {
    child: Child,
    port: u16,
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn script() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/python/websocket_peer.py"
    )
    .to_owned()
}

fn echo() -> Echo {
    let port = support::free_port();
    let mut child = Command::new(tollgate_tests::python::sdk_python())
        .arg(script())
        .args(["serve", &port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the echo backend");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the backend's first line");
    assert_eq!(line.trim(), "listening");
    Echo { child, port }
}

fn world(backend_port: u16) -> String {
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: roomy}}
spec:
  quotas: [{{name: monthly, metric: Requests, limit: "1000", period: Month}}]
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
stringData: {{roomy: key-roomy, frugal: key-frugal, hasty: key-hasty}}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: hasty}}
spec:
  quotaPolicyRef: {{name: one-an-hour}}
  apiKeys: [{{secretRef: {{name: keys, key: hasty}}}}]
  subscriptions: [{{apiRouteRef: {{name: chat}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: roomy}}
spec:
  quotaPolicyRef: {{name: roomy}}
  apiKeys: [{{secretRef: {{name: keys, key: roomy}}}}]
  subscriptions: [{{apiRouteRef: {{name: chat}}}}, {{apiRouteRef: {{name: quiet}}}}, {{apiRouteRef: {{name: plain}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: frugal}}
spec:
  quotaPolicyRef: {{name: one-a-month}}
  apiKeys: [{{secretRef: {{name: keys, key: frugal}}}}]
  subscriptions: [{{apiRouteRef: {{name: chat}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: chat}}
spec:
  match: {{pathPrefix: /chat}}
  backend: {{url: "http://127.0.0.1:{backend_port}"}}
  websocket: {{}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: quiet}}
spec:
  match: {{pathPrefix: /quiet}}
  backend: {{url: "http://127.0.0.1:{backend_port}"}}
  websocket: {{idleTimeout: 1s}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: plain}}
spec:
  match: {{pathPrefix: /plain}}
  backend: {{url: "http://127.0.0.1:{backend_port}"}}
"#
    )
}

/// Runs the client scenario `s` against `path` on the proxy.
async fn call(p: &ProxyProcess, path: &str, mut s: Value) -> Value {
    s["url"] = json!(format!("ws://{}{path}", p.listen));
    tokio::task::spawn_blocking(move || {
        tollgate_tests::python::run_json("websocket_peer.py", &["call"], &s)
            .expect("the client ran")
    })
    .await
    .expect("join")
}

#[tokio::test]
async fn messages_go_both_ways_after_every_check_and_refusals_come_before_the_upgrade() {
    let backend = echo();
    let p = ProxyProcess::start(&[("world.yaml", world(backend.port))]).await;
    let out = call(
        &p,
        "/chat",
        json!({"key": "key-roomy", "messages": ["hello", "again", "close"]}),
    )
    .await;
    // "close" makes the backend close: its close frame reaches the client as it sent it.
    assert_eq!(out["echoes"], json!(["hello", "again"]), "{out}");
    assert_eq!(
        (&out["close_code"], &out["close_reason"]),
        (&json!(1000), &json!("asked to")),
        "{out}"
    );
    p.wait_for_metric(
        r#"tollgate_proxy_websocket_connections_total{end="backend_closed"}"#,
        1.0,
    )
    .await;
    assert!(
        p.metric(
            r#"tollgate_proxy_websocket_bytes_total{direction="client_to_backend",route="default/chat"}"#
        )
        .await
            > 0.0
    );
    assert_eq!(
        p.used("roomy", None).await,
        "1",
        "the upgrade is one request"
    );

    // A route that does not carry WebSockets sends the request on without its upgrade headers:
    // the backend asks for them (426), and nothing is relayed.
    let plain = call(&p, "/plain", json!({"key": "key-roomy", "messages": ["x"]})).await;
    assert_eq!(plain["status"], 426, "{plain}");
    // No key: the same 401 problem as any request, before anything reaches the backend.
    let refused = call(&p, "/chat", json!({"messages": ["x"]})).await;
    assert_eq!(refused["status"], 401, "{refused}");
    assert_eq!(refused["content_type"], "application/problem+json");
    assert_eq!(
        refused["body"]["type"],
        "https://tollgate.dev/problems/unauthorized"
    );
    // A quota of one request a month: the second upgrade is 402, with where to pay.
    let first = call(
        &p,
        "/chat",
        json!({"key": "key-frugal", "messages": ["one"]}),
    )
    .await;
    assert_eq!(first["echoes"], json!(["one"]), "{first}");
    let second = call(
        &p,
        "/chat",
        json!({"key": "key-frugal", "messages": ["two"]}),
    )
    .await;
    assert_eq!(second["status"], 402, "{second}");
    assert_eq!(
        second["body"]["paymentUrl"],
        "https://billing.example.com/upgrade"
    );
    // A rate limit of one upgrade an hour: the second is 429.
    let first = call(
        &p,
        "/chat",
        json!({"key": "key-hasty", "messages": ["one"]}),
    )
    .await;
    assert_eq!(first["echoes"], json!(["one"]), "{first}");
    let second = call(
        &p,
        "/chat",
        json!({"key": "key-hasty", "messages": ["two"]}),
    )
    .await;
    assert_eq!(second["status"], 429, "{second}");
    assert_eq!(
        second["body"]["type"],
        "https://tollgate.dev/problems/rate-limited"
    );
}

#[tokio::test]
async fn an_idle_connection_and_every_connection_at_shutdown_get_a_close_frame() {
    let backend = echo();
    let mut p = ProxyProcess::start(&[("world.yaml", world(backend.port))]).await;
    // The quiet route closes after a second without a byte.
    let idle = call(
        &p,
        "/quiet",
        json!({"key": "key-roomy", "messages": ["hi"], "wait_close": 30}),
    )
    .await;
    assert_eq!(
        (&idle["close_code"], &idle["close_reason"]),
        (&json!(1001), &json!("idle timeout")),
        "{idle}"
    );
    // A connection open when the proxy is told to stop is closed by it, not cut.
    let listen = p.listen;
    let waiting = tokio::task::spawn_blocking(move || {
        let s = json!({"url": format!("ws://{listen}/chat"), "key": "key-roomy",
                       "messages": ["hi"], "wait_close": 60});
        tollgate_tests::python::run_json("websocket_peer.py", &["call"], &s)
            .expect("the client ran")
    });
    p.wait_for_metric("tollgate_proxy_websocket_connections_open", 1.0)
        .await;
    // While it is open: its bytes are counted already, and it keeps its place among the
    // connections (under --max-connections).
    p.wait_for_metric(
        r#"tollgate_proxy_websocket_bytes_total{direction="backend_to_client",route="default/chat"}"#,
        1.0,
    )
    .await;
    assert_eq!(
        p.metric("tollgate_proxy_active_connections").await,
        1.0,
        "the relayed connection is still counted"
    );
    let status = p.terminate().await;
    assert!(status.success(), "a clean exit: {status}");
    let closed = waiting.await.expect("join");
    assert_eq!(closed["echoes"], json!(["hi"]), "{closed}");
    assert_eq!(
        (&closed["close_code"], &closed["close_reason"]),
        (&json!(1001), &json!("server shutting down")),
        "{closed}"
    );
}

/// A masked client frame (text) with `payload`.
fn client_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [7u8, 1, 2, 3];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// An HTTP/2 WebSocket request (RFC 8441) on `sender`: its status, its headers, and the stream
/// once opened.
async fn extended_connect(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    listen: std::net::SocketAddr,
    path: &str,
    key: Option<&str>,
) -> (u16, http::HeaderMap, Option<hyper::upgrade::Upgraded>) {
    let mut req = http::Request::connect(format!("http://{listen}{path}"))
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13");
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let mut resp = sender
        .send_request(req.body(http_body_util::Empty::new()).expect("request"))
        .await
        .expect("an answer");
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let stream = match status {
        200 => Some(hyper::upgrade::on(&mut resp).await.expect("the stream")),
        _ => None,
    };
    (status, headers, stream)
}

/// A route whose backend answers upgrades with a plain 200 (the test backend's JSON echo), for a
/// tenant of its own.
fn no_switch(backend: &support::Backend) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: more-keys}}
stringData: {{k: key-other}}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: other}}
spec:
  quotaPolicyRef: {{name: roomy}}
  apiKeys: [{{secretRef: {{name: more-keys, key: k}}}}]
  subscriptions: [{{apiRouteRef: {{name: noswitch}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: noswitch}}
spec:
  match: {{pathPrefix: /noswitch}}
  backend: {{url: "{}"}}
  websocket: {{}}
"#,
        backend.url()
    )
}

/// An HTTP/2 connection to the proxy whose SETTINGS (which allow extended CONNECT) are in.
async fn h2_connection(
    p: &ProxyProcess,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(p.listen)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("an HTTP/2 connection");
    tokio::spawn(conn);
    let warm = http::Request::get(format!("http://{}/plain", p.listen))
        .body(http_body_util::Empty::new())
        .expect("request");
    let _ = sender.send_request(warm).await.expect("an answer");
    sender
}

/// Sends `text` on a WebSocket stream and reads its echo.
async fn echo_over<S>(ws: &mut S, text: &[u8]) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ws.write_all(&client_frame(text)).await.expect("write");
    let mut head = [0u8; 2];
    ws.read_exact(&mut head).await.expect("the echo's head");
    assert_eq!(head[0], 0x81, "a text frame");
    let mut payload = vec![0u8; usize::from(head[1] & 0x7F)];
    ws.read_exact(&mut payload).await.expect("the echo");
    payload
}

#[tokio::test]
async fn an_http2_websocket_outlives_its_connections_idle_timeout() {
    let backend = echo();
    let p = ProxyProcess::start_with(
        &[("world.yaml", world(backend.port))],
        &["--idle-timeout", "1s"],
    )
    .await;
    let mut sender = h2_connection(&p).await;
    let (status, headers, stream) =
        extended_connect(&mut sender, p.listen, "/chat", Some("key-roomy")).await;
    assert_eq!(status, 200, "{headers:?}");
    let mut ws = hyper_util::rt::TokioIo::new(stream.expect("the stream"));
    assert_eq!(echo_over(&mut ws, b"first").await, b"first");
    // Three idle timeouts of the connection with nothing but the WebSocket on it: the
    // WebSocket's own limits (5 minutes idle) are what apply to it.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(echo_over(&mut ws, b"still here").await, b"still here");
}

#[tokio::test]
async fn http2_clients_open_websockets_with_extended_connect() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = echo();
    let plain = support::Backend::start().await;
    let p = ProxyProcess::start(&[
        ("world.yaml", world(backend.port)),
        ("more.yaml", no_switch(&plain)),
    ])
    .await;
    let mut sender = h2_connection(&p).await;
    let (status, headers, stream) =
        extended_connect(&mut sender, p.listen, "/chat", Some("key-roomy")).await;
    assert_eq!(status, 200, "{headers:?}\n{}", p.stderr());
    assert!(headers.get("sec-websocket-accept").is_none(), "{headers:?}");
    let mut ws = hyper_util::rt::TokioIo::new(stream.expect("the stream"));
    ws.write_all(&client_frame(b"over h2"))
        .await
        .expect("write");
    // The echo: an unmasked text frame with the same payload.
    let mut head = [0u8; 2];
    ws.read_exact(&mut head).await.expect("the echo's head");
    assert_eq!(head, [0x81, 7]);
    let mut payload = [0u8; 7];
    ws.read_exact(&mut payload).await.expect("the echo");
    assert_eq!(&payload, b"over h2");
    drop(ws);
    assert_eq!(
        p.used("roomy", None).await,
        "1",
        "the upgrade is one request"
    );

    // Refused before anything reaches the backend, as any request: no key is 401.
    let (status, headers, _) = extended_connect(&mut sender, p.listen, "/chat", None).await;
    assert_eq!(status, 401, "{headers:?}");
    assert_eq!(headers["content-type"], "application/problem+json");
    // A route that does not carry WebSockets refuses: a plain answer would open a dead tunnel.
    let (status, _, _) = extended_connect(&mut sender, p.listen, "/plain", Some("key-roomy")).await;
    assert_eq!(status, 400);
    // So does a backend that answers the upgrade without switching: 502, not charged.
    let (status, headers, _) =
        extended_connect(&mut sender, p.listen, "/noswitch", Some("key-other")).await;
    assert_eq!(status, 502, "{headers:?}");
    assert_eq!(p.used("other", None).await, "0");
    // Other protocols over extended CONNECT are not carried.
    let udp = http::Request::connect(format!("http://{}/chat", p.listen))
        .extension(hyper::ext::Protocol::from_static("connect-udp"))
        .header("authorization", "Bearer key-roomy")
        .body(http_body_util::Empty::new())
        .expect("request");
    let refused = sender.send_request(udp).await.expect("an answer");
    assert_eq!(refused.status(), 400);
}
