//! Token and Cost quotas charged from an OpenAI-compatible backend's reported usage, for JSON and
//! streamed (SSE) responses.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Backend, ProxyProcess};

fn world(backend: &str) -> String {
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: tokens}}
spec:
  quotas: [{{name: daily-tokens, metric: TotalTokens, limit: "50", period: Day}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: budget}}
spec:
  quotas: [{{name: monthly-cost, metric: Cost, limit: "0.01", period: Month}}]
  pricing:
    currency: USD
    perRequest: "0.001"
    models: [{{model: gpt-4o-mini, inputPerMillionTokens: "100", outputPerMillionTokens: "200"}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: chat}}
spec:
  match: {{pathPrefix: /v1/chat}}
  backend: {{url: "{backend}"}}
  metering: OpenAI
---
apiVersion: v1
kind: Secret
metadata: {{name: keys}}
stringData: {{t: key-tokens, b: key-budget}}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: counter}}
spec:
  quotaPolicyRef: {{name: tokens}}
  apiKeys: [{{secretRef: {{name: keys, key: t}}}}]
  subscriptions: [{{apiRouteRef: {{name: chat}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: spender}}
spec:
  quotaPolicyRef: {{name: budget}}
  apiKeys: [{{secretRef: {{name: keys, key: b}}}}]
  subscriptions: [{{apiRouteRef: {{name: chat}}}}]
"#
    )
}

async fn used(p: &ProxyProcess, tenant: &str, quota: &str) -> String {
    let (_, _, body) = support::get_raw(p.admin, "/usage", &[])
        .await
        .expect("usage");
    let usage: Value = serde_json::from_slice(&body).expect("json");
    usage["usage"]
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["tenant"] == format!("default/{tenant}") && r["quota"] == quota)
        })
        .and_then(|r| r["used"].as_str())
        .unwrap_or("0")
        .to_owned()
}

async fn wait_used(p: &ProxyProcess, tenant: &str, quota: &str, want: &str) {
    // Polled up to 20 s: charging follows the response, and a loaded machine may take a while.
    for _ in 0..1000 {
        if used(p, tenant, quota).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{tenant}/{quota}: used {} (wanted {want})",
        used(p, tenant, quota).await
    );
}

#[tokio::test]
async fn tokens_from_json_responses_count_and_exhaust_the_quota() {
    let backend = Backend::start().await;
    let p = ProxyProcess::start(&[("world.yaml", world(&backend.url()))]).await;
    let auth = ("authorization", "Bearer key-tokens");
    for expected in ["30", "60"] {
        let r = p
            .post(
                "/v1/chat/completions",
                &[auth, ("content-type", "application/json")],
                r#"{"model":"gpt-4o-mini"}"#,
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json()["choices"][0]["message"]["content"],
            "Hello",
            "the body reaches the client intact"
        );
        wait_used(&p, "counter", "daily-tokens", expected).await;
    }
    let r = p.post("/v1/chat/completions", &[auth], "{}").await;
    let body = r.problem(402, "quota-exhausted");
    assert_eq!(
        (body["quota"].as_str(), body["metric"].as_str()),
        (Some("daily-tokens"), Some("TotalTokens"))
    );
    assert_eq!(body["used"], 60);
}

#[tokio::test]
async fn tokens_are_counted_for_a_bodiless_request_relayed_inline() {
    // A GET takes the inline backend path, whose response headers are relayed as bytes: the
    // meter still learns the body is JSON.
    let backend = Backend::start().await;
    let p = ProxyProcess::start(&[("world.yaml", world(&backend.url()))]).await;
    let r = p
        .get(
            "/v1/chat/completions",
            &[("authorization", "Bearer key-tokens")],
        )
        .await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("application/json"))
    );
    wait_used(&p, "counter", "daily-tokens", "30").await;
}

#[tokio::test]
async fn tokens_from_a_streamed_response_are_counted_and_the_stream_passes_through() {
    let backend = Backend::start().await;
    let p = ProxyProcess::start(&[("world.yaml", world(&backend.url()))]).await;
    let r = p
        .post(
            "/v1/chat/completions",
            &[("authorization", "Bearer key-tokens")],
            r#"{"stream":true}"#,
        )
        .await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("text/event-stream"))
    );
    let text = String::from_utf8_lossy(&r.body);
    assert_eq!(
        text.matches("data: ").count(),
        4,
        "every event reaches the client: {text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"));
    wait_used(&p, "counter", "daily-tokens", "30").await;
}

#[tokio::test]
async fn cost_is_priced_per_request_and_per_token_by_model() {
    let backend = Backend::start().await;
    let p = ProxyProcess::start(&[("world.yaml", world(&backend.url()))]).await;
    let auth = ("authorization", "Bearer key-budget");
    // 0.001 per request + 10 x 100/1M + 20 x 200/1M = 0.006 per call.
    assert_eq!(
        p.post("/v1/chat/completions", &[auth], "{}").await.status,
        200
    );
    wait_used(&p, "spender", "monthly-cost", "0.006").await;
    assert_eq!(
        p.post("/v1/chat/completions", &[auth], r#"{"stream":true}"#)
            .await
            .status,
        200
    );
    wait_used(&p, "spender", "monthly-cost", "0.012").await;
    let body = p
        .post("/v1/chat/completions", &[auth], "{}")
        .await
        .problem(402, "quota-exhausted");
    assert_eq!(
        (
            body["metric"].as_str(),
            body["limit"].as_str(),
            body["used"].as_str()
        ),
        (Some("Cost"), Some("0.01"), Some("0.012"))
    );
}
