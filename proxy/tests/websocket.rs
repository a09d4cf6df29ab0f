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
