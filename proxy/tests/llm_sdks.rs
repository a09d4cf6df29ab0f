//! The official `openai` and `anthropic` Python SDKs call the proxy as users' code would, against
//! provider-compatible test backends, streamed and not: budgets charged from the reported usage
//! until they answer 402, a stream the client cuts, a model without a price.

mod support;

use rust_decimal::Decimal;
use serde_json::{Value, json};
use support::{Backend, ProxyProcess};

fn world(backend: &str) -> String {
    let plan = |name: &str, quota: &str| {
        format!(
            r#"
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: {name}}}
spec:
  quotas: [{quota}]
  paymentUrl: https://billing.example.com/upgrade
  pricing:
    currency: USD
    models:
    - {{model: gpt-4o-mini, inputPerMillionTokens: "0.15", outputPerMillionTokens: "0.60"}}
    - {{model: gpt-4o, inputPerMillionTokens: "2.50", outputPerMillionTokens: "10"}}
    - {{model: claude-opus-4-6, inputPerMillionTokens: "5", outputPerMillionTokens: "25"}}
---"#
        )
    };
    let tenant = |name: &str, plan: &str| {
        format!(
            r#"
apiVersion: v1
kind: Secret
metadata: {{name: {name}-key}}
stringData: {{apiKey: key-{name}}}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: {name}}}
spec:
  quotaPolicyRef: {{name: {plan}}}
  apiKeys: [{{secretRef: {{name: {name}-key}}}}]
  subscriptions: [{{apiRouteRef: {{name: openai}}}}, {{apiRouteRef: {{name: anthropic}}}}]
---"#
        )
    };
    format!(
        r#"{}{}{}{}{}{}
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: openai}}
spec:
  match: {{pathPrefix: /v1/chat}}
  backend: {{url: "{backend}"}}
  metering: OpenAI
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: anthropic}}
spec:
  match: {{pathPrefix: /v1/messages}}
  backend: {{url: "{backend}"}}
  metering: Anthropic
"#,
        plan(
            "small",
            r#"{name: monthly, metric: Cost, limit: "0.001", period: Month}"#
        ),
        plan(
            "roomy",
            r#"{name: monthly, metric: Cost, limit: "5", period: Month}"#
        ),
        plan(
            "tokens",
            r#"{name: daily, metric: TotalTokens, limit: "100000", period: Day}"#
        ),
        tenant("team-a", "small"),
        tenant("team-b", "roomy"),
        tenant("team-c", "tokens"),
    )
}

/// Runs the SDK scenario `s` against the proxy; the outcome of each call.
async fn sdk(p: &ProxyProcess, mut s: Value) -> Vec<Value> {
    s["base"] = json!(format!("http://{}", p.listen));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/llm_sdk.py");
    let python = tollgate_tests::python::sdk_python();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(s.to_string())
            .output()
            .expect("run the SDK script")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "the SDK script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script's JSON")
}

async fn used(p: &ProxyProcess, tenant: &str) -> Decimal {
    p.used(tenant, None).await.parse().expect("a decimal")
}

/// Waits for `tenant`'s usage to read `want` (settling follows the response).
async fn wait_used(p: &ProxyProcess, tenant: &str, want: Decimal) {
    for _ in 0..500 {
        if used(p, tenant).await == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{tenant}: used {} (wanted {want})", used(p, tenant).await);
}

fn dec(s: &str) -> Decimal {
    s.parse().expect("decimal")
}

async fn start() -> (Backend, ProxyProcess) {
    let backend = Backend::start().await;
    let p = ProxyProcess::start(&[("world.yaml", world(&backend.url()))]).await;
    (backend, p)
}

#[tokio::test]
async fn openai_sdk_calls_are_charged_until_the_budget_answers_402() {
    let (_backend, p) = start().await;
    let outcomes = sdk(
        &p,
        json!({"sdk": "openai", "key": "key-team-a", "model": "gpt-4o", "max_tokens": 20, "calls": 8}),
    )
    .await;
    let served = outcomes.iter().take_while(|o| o["status"] == 200).count();
    assert!(served >= 3, "{outcomes:?}");
    for ok in &outcomes[..served] {
        assert_eq!(ok["text"], "Hello");
        assert_eq!(
            ok["usage"]["completion_tokens"], 20,
            "the SDK reads the usage"
        );
    }
    for refused in &outcomes[served..] {
        assert_eq!(refused["status"], 402, "{refused}");
        assert_eq!(refused["content_type"], "application/problem+json");
        let problem = &refused["problem"];
        assert_eq!(
            problem["type"],
            "https://tollgate.dev/problems/quota-exhausted"
        );
        assert_eq!(
            (
                &problem["quota"],
                &problem["metric"],
                &problem["paymentUrl"]
            ),
            (
                &json!("monthly"),
                &json!("Cost"),
                &json!("https://billing.example.com/upgrade")
            )
        );
    }
    // Each call: 10 x 2.50/1M + 20 x 10/1M.
    let per_call = dec("0.000225");
    wait_used(&p, "team-a", per_call * Decimal::from(served)).await;
    assert!(
        used(&p, "team-a").await <= dec("0.001"),
        "never past the budget"
    );
    // The Anthropic SDK on the same budget is refused too, in its own error type.
    let outcomes = sdk(
        &p,
        json!({"sdk": "anthropic", "key": "key-team-a", "model": "claude-opus-4-6", "max_tokens": 20}),
    )
    .await;
    assert_eq!(outcomes[0]["status"], 402, "{outcomes:?}");
}

#[tokio::test]
async fn both_sdks_streamed_and_not_are_charged_what_the_provider_reported() {
    let (_backend, p) = start().await;
    // Streamed without asking for usage: the client sees no usage chunk, the budget is charged.
    let streamed = sdk(
        &p,
        json!({"sdk": "openai", "key": "key-team-b", "model": "gpt-4o-mini", "max_tokens": 20, "stream": true}),
    )
    .await;
    assert_eq!(
        (&streamed[0]["text"], &streamed[0]["usage_chunks"]),
        (&json!("Hello"), &json!(0)),
        "{streamed:?}"
    );
    // 10 x 0.15/1M + 20 x 0.60/1M
    let mini = dec("0.0000135");
    wait_used(&p, "team-b", mini).await;
    // Anthropic, JSON then streamed: 10 x 5/1M + 20 x 25/1M each.
    let claude = dec("0.00055");
    for stream in [false, true] {
        let outcome = sdk(
            &p,
            json!({"sdk": "anthropic", "key": "key-team-b", "model": "claude-opus-4-6", "max_tokens": 20, "stream": stream}),
        )
        .await;
        assert_eq!(outcome[0]["text"], "Hello", "{outcome:?}");
        assert_eq!(outcome[0]["usage"]["output_tokens"], 20);
    }
    wait_used(&p, "team-b", mini + claude * Decimal::from(2)).await;
}

#[tokio::test]
async fn a_stream_the_client_cuts_before_its_usage_is_charged_its_reservation() {
    let (_backend, p) = start().await;
    let outcome = sdk(
        &p,
        json!({"sdk": "openai", "key": "key-team-c", "model": "gpt-4o-mini", "max_tokens": 20, "stream": true,
               "cut_after": 2, "headers": {"x-llm-pause-before-usage-ms": "3000"}}),
    )
    .await;
    assert_eq!(outcome[0]["events"], 2, "{outcome:?}");
    // Nothing was reported: the reservation stands (the 20 output tokens the call was allowed,
    // and the input estimated from its body), never zero.
    for _ in 0..500 {
        if used(&p, "team-c").await > Decimal::from(20) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("charged {}", used(&p, "team-c").await);
}

#[tokio::test]
async fn a_model_without_a_price_is_refused_under_a_cost_quota() {
    let (_backend, p) = start().await;
    let outcome = sdk(
        &p,
        json!({"sdk": "openai", "key": "key-team-b", "model": "o9-preview", "max_tokens": 20}),
    )
    .await;
    assert_eq!(outcome[0]["status"], 403, "{outcome:?}");
    let problem = &outcome[0]["problem"];
    assert_eq!(
        problem["type"],
        "https://tollgate.dev/problems/model-not-priced"
    );
    assert_eq!(problem["model"], "o9-preview");
    assert_eq!(used(&p, "team-b").await, Decimal::ZERO);
}
