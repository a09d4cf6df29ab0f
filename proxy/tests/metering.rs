//! Token and Cost quotas: each call's usage reserved at admission and settled from the usage the
//! backend reports (OpenAI, Anthropic and Gemini formats, JSON and streamed), with the ways a
//! call used to leave unmetered (no usage in a stream, a client leaving before the usage chunk,
//! a huge JSON body, many concurrent calls on a nearly spent budget) each closed.

mod support;

use std::time::Duration;

use support::{Backend, ProxyProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn world(backend: &str) -> String {
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: tokens}}
spec:
  quotas: [{{name: daily-tokens, metric: TotalTokens, limit: "100", period: Day}}]
  reservation: {{maxOutputTokens: 20}}
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: big}}
spec:
  quotas: [{{name: daily-tokens, metric: TotalTokens, limit: "1000000", period: Day}}]
  allowedModels: [gpt-4o-mini, "claude-*", "gemini-*"]
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: nearly-spent}}
spec:
  quotas: [{{name: daily-tokens, metric: TotalTokens, limit: "3000", period: Day}}]
  reservation: {{estimate: Bound}}
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: budget}}
spec:
  quotas: [{{name: monthly-cost, metric: Cost, limit: "0.02", period: Month}}]
  reservation: {{maxOutputTokens: 20}}
  pricing:
    currency: USD
    perRequest: "0.001"
    models: [{{model: gpt-4o-mini, inputPerMillionTokens: "100", outputPerMillionTokens: "200"}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: per-model}}
spec:
  quotas:
  - {{name: calls, limit: "100", period: Day}}
  - {{name: gpt-4o-calls, limit: "1", period: Day, models: [gpt-4o]}}
  - {{name: claude-tokens, metric: TotalTokens, limit: "50", period: Day, models: ["claude-*"]}}
  - {{name: claude-cost, metric: Cost, limit: "1", period: Day, models: ["claude-*"]}}
  reservation: {{maxOutputTokens: 20}}
  pricing:
    currency: USD
    models: [{{model: claude-opus-4-6, inputPerMillionTokens: "5", outputPerMillionTokens: "25"}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: gpt-4o-calls-only}}
spec:
  quotas: [{{name: gpt-4o-calls, limit: "1", period: Day, models: [gpt-4o]}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: models-only}}
spec:
  quotas: [{{name: calls, limit: "100", period: Day}}]
  allowedModels: [gpt-4o-mini]
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: chat}}
spec:
  match: {{pathPrefix: /v1/chat}}
  backend: {{url: "{backend}"}}
  metering: OpenAI
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: messages}}
spec:
  match: {{pathPrefix: /v1/messages}}
  backend: {{url: "{backend}"}}
  metering: Anthropic
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: gemini}}
spec:
  match: {{pathPrefix: /v1beta/models}}
  backend: {{url: "{backend}"}}
  metering: Gemini
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: provider}}
spec:
  match: {{pathPrefix: /provider}}
  backend:
    url: "{backend}"
    requestHeaders:
    - {{name: Authorization, secretKeyRef: {{name: provider-key}}, valuePrefix: "Bearer "}}
    - {{name: x-goog-api-key, secretKeyRef: {{name: provider-key}}}}
  metering: OpenAI
---
apiVersion: v1
kind: Secret
metadata: {{name: provider-key, labels: {{tollgate.dev/backend-credentials: "true"}}}}
stringData: {{apiKey: sk-provider-secret}}
---
apiVersion: v1
kind: Secret
metadata: {{name: keys}}
stringData: {{t: key-tokens, b: key-budget, g: key-big, n: key-nearly, m: key-models, a: key-allow, u: key-upload}}
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
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: heavy}}
spec:
  quotaPolicyRef: {{name: big}}
  apiKeys: [{{secretRef: {{name: keys, key: g}}}}]
  subscriptions: [{{apiRouteRef: {{name: chat}}}}, {{apiRouteRef: {{name: messages}}}}, {{apiRouteRef: {{name: gemini}}}}, {{apiRouteRef: {{name: provider}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: late}}
spec:
  quotaPolicyRef: {{name: nearly-spent}}
  apiKeys: [{{secretRef: {{name: keys, key: n}}}}]
  subscriptions: [{{apiRouteRef: {{name: chat}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: team}}
spec:
  quotaPolicyRef: {{name: per-model}}
  apiKeys: [{{secretRef: {{name: keys, key: m}}}}]
  subscriptions: [{{apiRouteRef: {{name: chat}}}}, {{apiRouteRef: {{name: messages}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: picky}}
spec:
  quotaPolicyRef: {{name: models-only}}
  apiKeys: [{{secretRef: {{name: keys, key: a}}}}]
  subscriptions: [{{apiRouteRef: {{name: chat}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: uploader}}
spec:
  quotaPolicyRef: {{name: gpt-4o-calls-only}}
  apiKeys: [{{secretRef: {{name: keys, key: u}}}}]
  subscriptions: [{{apiRouteRef: {{name: chat}}}}]
"#
    )
}

const CHAT: &str = "/v1/chat/completions";
const JSON: (&str, &str) = ("content-type", "application/json");

async fn used(p: &ProxyProcess, tenant: &str, quota: &str) -> String {
    p.used(tenant, Some(quota)).await
}

async fn wait_used(p: &ProxyProcess, tenant: &str, quota: &str, want: &str) {
    // Polled up to 20 s: settling follows the response, and a loaded machine may take a while.
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

/// POSTs `body` to `path` with `headers` (lines ending in CRLF) over a raw connection, reads the
/// streamed answer until `marker` has arrived, and hangs up: a client that leaves mid-stream.
async fn read_until_then_hang_up(
    p: &ProxyProcess,
    path: &str,
    headers: &str,
    body: &str,
    marker: &str,
) {
    let mut conn = tokio::net::TcpStream::connect(p.listen)
        .await
        .expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Content-Type: application/json\r\n\
         X-Llm-Pause-Before-Usage-Ms: 3000\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(marker) {
        let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf))
            .await
            .expect("the stream goes on")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
}

async fn start() -> (Backend, ProxyProcess) {
    let backend = Backend::start().await;
    let p = ProxyProcess::start(&[("world.yaml", world(&backend.url()))]).await;
    (backend, p)
}

#[tokio::test]
async fn usage_replaces_the_reservation_and_a_call_whose_reservation_cannot_fit_is_refused() {
    let (_backend, p) = start().await;
    let auth = ("authorization", "Bearer key-tokens");
    let body = r#"{"model":"gpt-4o-mini","max_tokens":20}"#;
    // Each call reports 10 + 20 tokens; it reserved its bound (20) plus an input estimate.
    for expected in ["30", "60", "90"] {
        let r = p.post(CHAT, &[auth, JSON], body).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json()["choices"][0]["message"]["content"],
            "Hello",
            "the body reaches the client intact"
        );
        wait_used(&p, "counter", "daily-tokens", expected).await;
    }
    // 10 tokens are left, the call may use 30: refused before the backend, saying so.
    let r = p.post(CHAT, &[auth, JSON], body).await;
    let problem = r.problem(402, "quota-exhausted");
    assert_eq!(
        (problem["quota"].as_str(), problem["metric"].as_str()),
        (Some("daily-tokens"), Some("TotalTokens"))
    );
    assert_eq!(problem["used"], 90);
    assert_eq!(problem["reserved"], 30, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("could use up to 30")),
        "{problem}"
    );
    // A call asking for less output fits.
    let small = r#"{"model":"gpt-4o-mini","max_tokens":0}"#;
    assert_eq!(p.post(CHAT, &[auth, JSON], small).await.status, 200);
    wait_used(&p, "counter", "daily-tokens", "100").await;
}

#[tokio::test]
async fn requests_that_generate_nothing_are_not_charged_tokens_and_queued_work_is() {
    let (_backend, p) = start().await;
    let auth = ("authorization", "Bearer key-tokens");
    // A GET (fetching a stored answer, listing models) is not a generation: its usage, if the
    // answer repeats one, was charged when it was generated.
    let r = p.get(CHAT, &[auth]).await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("application/json"))
    );
    assert!(
        r.json()["usage"].is_object(),
        "the stored answer names its usage"
    );
    // A free API's whole answer without usage (counting tokens).
    let r = p
        .post(
            "/v1/chat/count_tokens",
            &[auth, JSON],
            r#"{"model":"gpt-4o-mini"}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    // Both settled at nothing: then a call that reports usage is counted alone.
    let body = r#"{"model":"gpt-4o-mini","max_tokens":20}"#;
    assert_eq!(p.post(CHAT, &[auth, JSON], body).await.status, 200);
    wait_used(&p, "counter", "daily-tokens", "30").await;
    // A POST answered without usage on another API (work queued for later, as a background
    // call): charged its bound, 5 output tokens and 38 bytes at the learned 10 tokens per 39.
    let queued = r#"{"model":"gpt-4o-mini","max_tokens":5}"#;
    assert_eq!(
        p.post("/v1/chat/queued", &[auth, JSON], queued)
            .await
            .status,
        200
    );
    wait_used(&p, "counter", "daily-tokens", "45").await;
}

#[tokio::test]
async fn a_call_that_cannot_be_estimated_or_read_compressed_is_handled_so() {
    let (_backend, p) = start().await;
    let auth = ("authorization", "Bearer key-big");
    // Not a JSON object (here: a compressed body): refused, nothing reaches the backend.
    let problem = p
        .post(
            CHAT,
            &[auth, ("content-encoding", "gzip")],
            "\x1f\u{8b}not json",
        )
        .await
        .problem(400, "bad-request");
    assert_eq!(problem["apiRoute"], "chat");
    // The client may accept compression; the backend is asked for none (its usage is read).
    let r = p
        .post(
            "/v1/chat/echo",
            &[auth, JSON, ("accept-encoding", "gzip, br")],
            r#"{"model":"gpt-4o-mini"}"#,
        )
        .await;
    assert_eq!(r.json()["headers"]["accept-encoding"], "identity");
    // Under a Cost quota a call must name its model.
    let problem = p
        .post(
            CHAT,
            &[("authorization", "Bearer key-budget"), JSON],
            r#"{"max_tokens":5}"#,
        )
        .await
        .problem(403, "model-not-priced");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("names no model"))
    );
}

#[tokio::test]
async fn a_stream_is_asked_for_usage_and_the_client_sees_only_what_it_asked_for() {
    let (_backend, p) = start().await;
    let auth = ("authorization", "Bearer key-big");
    // The client did not ask for usage: Tollgate asks, reads it, and keeps that chunk away.
    let r = p
        .post(
            CHAT,
            &[auth, JSON],
            r#"{"model":"gpt-4o-mini","stream":true}"#,
        )
        .await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("text/event-stream"))
    );
    let text = String::from_utf8_lossy(&r.body);
    assert_eq!(
        text.matches("data: ").count(),
        3,
        "two chunks and [DONE]: {text}"
    );
    assert!(!text.contains("\"usage\":{"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    wait_used(&p, "heavy", "daily-tokens", "30").await;
    // A client that asked gets the usage chunk, as the provider sent it.
    let asked = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true}}"#;
    let r = p.post(CHAT, &[auth, JSON], asked).await;
    let text = String::from_utf8_lossy(&r.body);
    assert_eq!(text.matches("data: ").count(), 4, "{text}");
    assert!(text.contains("\"completion_tokens\":20"), "{text}");
    wait_used(&p, "heavy", "daily-tokens", "60").await;
}

#[tokio::test]
async fn cost_is_priced_per_request_and_per_token_by_model_and_an_unpriced_model_is_refused() {
    let (_backend, p) = start().await;
    let auth = ("authorization", "Bearer key-budget");
    let body = r#"{"model":"gpt-4o-mini","max_tokens":20}"#;
    // 0.001 per request + 10 x 100/1M + 20 x 200/1M = 0.006 per call.
    assert_eq!(p.post(CHAT, &[auth, JSON], body).await.status, 200);
    wait_used(&p, "spender", "monthly-cost", "0.006").await;
    let streamed = r#"{"model":"gpt-4o-mini","max_tokens":20,"stream":true}"#;
    assert_eq!(p.post(CHAT, &[auth, JSON], streamed).await.status, 200);
    wait_used(&p, "spender", "monthly-cost", "0.012").await;
    assert_eq!(p.post(CHAT, &[auth, JSON], body).await.status, 200);
    wait_used(&p, "spender", "monthly-cost", "0.018").await;
    let problem = p
        .post(CHAT, &[auth, JSON], body)
        .await
        .problem(402, "quota-exhausted");
    assert_eq!(
        (
            problem["metric"].as_str(),
            problem["limit"].as_str(),
            problem["used"].as_str()
        ),
        (Some("Cost"), Some("0.02"), Some("0.018"))
    );
    // A model the plan has no price for is never served free.
    let unpriced = r#"{"model":"mystery-model","max_tokens":5}"#;
    let problem = p
        .post(CHAT, &[auth, JSON], unpriced)
        .await
        .problem(403, "model-not-priced");
    assert_eq!(problem["model"], "mystery-model");
    assert_eq!(used(&p, "spender", "monthly-cost").await, "0.018");
}

#[tokio::test]
async fn a_stream_without_usage_is_charged_its_reservation() {
    // Bypass (a): the backend sends no usage, even asked. Five calls, five reservations charged.
    let (_backend, p) = start().await;
    let auth = ("authorization", "Bearer key-big");
    let body = r#"{"model":"gpt-4o-mini","stream":true,"max_tokens":100}"#;
    let headers = [auth, JSON, ("x-llm-usage", "none")];
    let call = || p.post(CHAT, &headers, body);
    assert_eq!(call().await.status, 200);
    // 54 bytes at 0.5 tokens per byte (nothing learned: no usage came) + 100.
    wait_used(&p, "heavy", "daily-tokens", "127").await;
    for _ in 0..4 {
        assert_eq!(call().await.status, 200);
    }
    wait_used(&p, "heavy", "daily-tokens", "635").await;
}

#[tokio::test]
async fn a_client_leaving_before_the_usage_chunk_is_charged_its_reservation() {
    // Bypass (b): read up to finish_reason, hang up while the usage chunk is pending.
    let (_backend, p) = start().await;
    let body = r#"{"model":"gpt-4o-mini","stream":true,"max_tokens":100}"#;
    read_until_then_hang_up(
        &p,
        CHAT,
        "Authorization: Bearer key-big\r\n",
        body,
        "\"finish_reason\":\"stop\"",
    )
    .await;
    wait_used(&p, "heavy", "daily-tokens", "127").await;
}

#[tokio::test]
async fn a_json_answer_of_any_size_is_metered() {
    // Bypass (c): 5 MiB of logprobs before the usage, past the old 4 MiB inspection limit.
    let (_backend, p) = start().await;
    let auth = ("authorization", "Bearer key-big");
    let big = (5 * 1024 * 1024).to_string();
    let r = p
        .post(
            CHAT,
            &[auth, JSON, ("x-llm-logprobs-bytes", big.as_str())],
            r#"{"model":"gpt-4o-mini","max_tokens":100}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.len() > 5 * 1024 * 1024);
    wait_used(&p, "heavy", "daily-tokens", "30").await;
}

#[tokio::test]
async fn concurrent_slow_calls_cannot_spend_past_a_nearly_spent_budget() {
    // Bypass (d): 20 concurrent slow calls, each using 1010 tokens, on a 3000-token budget.
    let (_backend, p) = start().await;
    let body = r#"{"model":"gpt-4o-mini","max_tokens":1000}"#;
    let headers = [
        ("authorization", "Bearer key-nearly"),
        JSON,
        ("x-llm-output-tokens", "1000"),
        ("x-llm-delay-ms", "500"),
    ];
    let calls: Vec<_> = (0..20).map(|_| p.post(CHAT, &headers, body)).collect();
    let replies = futures::future::join_all(calls).await;
    let served = replies.iter().filter(|r| r.status == 200).count();
    for refused in replies.iter().filter(|r| r.status != 200) {
        let problem = refused.problem(402, "quota-exhausted");
        assert!(
            problem["reserved"].as_u64().is_some_and(|r| r >= 1000),
            "{problem}"
        );
    }
    // Each reserved 1000 + 21 (41 bytes at 0.5 per byte): two fit in 3000, the third does not.
    assert_eq!(
        served,
        2,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    wait_used(&p, "late", "daily-tokens", "2020").await;
}

#[tokio::test]
async fn anthropic_and_gemini_usage_is_read_json_and_streamed() {
    let (_backend, p) = start().await;
    let auth = ("authorization", "Bearer key-big");
    let messages = r#"{"model":"claude-opus-4-6","max_tokens":100,"messages":[{"role":"user","content":"Hi"}]}"#;
    assert_eq!(
        p.post("/v1/messages", &[auth, JSON], messages).await.status,
        200
    );
    wait_used(&p, "heavy", "daily-tokens", "30").await;
    let streamed = r#"{"model":"claude-opus-4-6","max_tokens":100,"stream":true,"messages":[]}"#;
    let r = p.post("/v1/messages", &[auth, JSON], streamed).await;
    assert!(String::from_utf8_lossy(&r.body).contains("event: message_delta"));
    wait_used(&p, "heavy", "daily-tokens", "60").await;
    let gemini =
        r#"{"contents":[{"parts":[{"text":"Hi"}]}],"generationConfig":{"maxOutputTokens":100}}"#;
    let path = "/v1beta/models/gemini-2.5-flash:generateContent";
    assert_eq!(p.post(path, &[auth, JSON], gemini).await.status, 200);
    wait_used(&p, "heavy", "daily-tokens", "90").await;
    let path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
    let r = p.post(path, &[auth, JSON], gemini).await;
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    wait_used(&p, "heavy", "daily-tokens", "120").await;
}

#[tokio::test]
async fn the_provider_key_comes_from_a_secret_and_never_from_or_to_the_caller() {
    let (_backend, p) = start().await;
    let r = p
        .post(
            "/provider/echo",
            &[
                ("authorization", "Bearer key-big"),
                ("X_Goog_Api_Key", "caller-made-up"),
                JSON,
            ],
            r#"{"model":"gpt-4o-mini"}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = &r.json()["headers"];
    assert_eq!(seen["authorization"], "Bearer sk-provider-secret");
    assert_eq!(seen["x-goog-api-key"], "sk-provider-secret");
    assert!(
        !r.body.windows(14).any(|w| w == b"caller-made-up"),
        "a caller's header of the same name, even spelled with `_`, is dropped: {seen}"
    );
    assert_eq!(seen["x-tollgate-tenant"], "default/heavy");
    assert!(
        !r.body.windows(7).any(|w| w == b"key-big"),
        "the caller's key never reaches the backend"
    );
    // The access log and the proxy's own log never carry the credential.
    let log = format!("{:?}{}", p.access_log(), p.stderr());
    assert!(!log.contains("sk-provider-secret"), "{log}");
}

#[tokio::test]
async fn an_anthropic_stream_cut_before_its_last_report_is_charged_its_bound() {
    // message_start says 1 output token: a client that reads the content and hangs up before
    // message_delta must not pay for 1.
    let (_backend, p) = start().await;
    let body = r#"{"model":"claude-opus-4-6","stream":true,"max_tokens":100,"messages":[]}"#;
    read_until_then_hang_up(
        &p,
        "/v1/messages",
        "X-Api-Key: key-big\r\n",
        body,
        "content_block_stop",
    )
    .await;
    // 72 bytes at 0.5 tokens per byte, and the bound of 100.
    wait_used(&p, "heavy", "daily-tokens", "136").await;
}

#[tokio::test]
async fn a_model_the_plan_does_not_allow_is_refused_before_the_backend() {
    let (_backend, p) = start().await;
    let auth = ("authorization", "Bearer key-big");
    let problem = p
        .post(CHAT, &[auth, JSON], r#"{"model":"gpt-4o","max_tokens":5}"#)
        .await
        .problem(403, "model-not-allowed");
    assert_eq!(problem["model"], "gpt-4o");
    assert_eq!(
        problem["allowedModels"],
        serde_json::json!(["gpt-4o-mini", "claude-*", "gemini-*"])
    );
    // A plan that lists models needs the call to name one.
    p.post(CHAT, &[auth, JSON], r#"{"max_tokens":5}"#)
        .await
        .problem(403, "model-not-allowed");
    // Nothing was reserved or charged for either.
    assert_eq!(used(&p, "heavy", "daily-tokens").await, "0");
    let allowed = r#"{"model":"gpt-4o-mini","max_tokens":5}"#;
    assert_eq!(p.post(CHAT, &[auth, JSON], allowed).await.status, 200);
}

/// Per-model budgets inside one plan (tenant `team`): what each call is refused, and by which
/// quota. The counters themselves are checked by the callers.
async fn spend_per_model_budgets(p: &ProxyProcess) {
    let auth = ("authorization", "Bearer key-models");
    let gpt4o = r#"{"model":"gpt-4o","max_tokens":20}"#;
    let r = p.post(CHAT, &[auth, JSON], gpt4o).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The headers name what every request counts in, not the quotas for some models.
    let policy = r.header("ratelimit-policy").expect("RateLimit-Policy");
    assert!(
        policy.contains("\"calls\"") && !policy.contains("gpt-4o-calls"),
        "{policy}"
    );
    let problem = p
        .post(CHAT, &[auth, JSON], gpt4o)
        .await
        .problem(402, "quota-exhausted");
    assert_eq!(problem["quota"], "gpt-4o-calls");
    // Another model is not refused by gpt-4o's spent quota, and needs no price: no Cost quota
    // counts it.
    let mini = r#"{"model":"gpt-4o-mini","max_tokens":20}"#;
    assert_eq!(p.post(CHAT, &[auth, JSON], mini).await.status, 200);
    // A request that is not a call counts in `calls` only.
    assert_eq!(p.get(CHAT, &[auth]).await.status, 200);
    // Claude: 10 input and 20 output tokens are used of the 50 (42 reserved: 43 bytes at the
    // first guess of 0.5 tokens per byte, and the bound of 20).
    let claude = r#"{"model":"claude-opus-4-6","max_tokens":20}"#;
    assert_eq!(
        p.post("/v1/messages", &[auth, JSON], claude).await.status,
        200
    );
}

#[tokio::test]
async fn a_plan_budgets_some_models_apart_and_other_calls_are_neither_counted_nor_refused() {
    let (_backend, p) = start().await;
    spend_per_model_budgets(&p).await;
    wait_used(&p, "team", "claude-tokens", "30").await;
    // 10 x 5 + 20 x 25 per million.
    wait_used(&p, "team", "claude-cost", "0.00055").await;
    assert_eq!(used(&p, "team", "gpt-4o-calls").await, "1");
    assert_eq!(used(&p, "team", "calls").await, "4");
    // The month's usage by token type and in money: the four requests answered (the GET and
    // the unpriced models cost nothing, Claude's call its tokens), in /usage and the metrics.
    let usage = p.usage().await;
    let month = usage["calls"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["tenant"] == "default/team"))
        .cloned()
        .unwrap_or_else(|| panic!("no calls row for team: {usage}"));
    assert_eq!(
        (&month["requests"], &month["cost"], &month["currency"]),
        (
            &serde_json::json!(4),
            &serde_json::json!("0.00055"),
            &serde_json::json!("USD")
        )
    );
    assert_eq!(
        month["tokens"],
        serde_json::json!({"input": 30, "cachedInput": 0, "cacheWriteInput": 0, "output": 60, "reasoning": 0})
    );
    let messages = "route=\"default/messages\"";
    let exposed = p.metrics_text().await;
    let series = |name: &str, label: &str| {
        exposed
            .lines()
            .find(|l| l.starts_with(name) && l.contains(messages) && l.contains(label))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    assert_eq!(
        series("tollgate_proxy_llm_tokens_total", "type=\"output\""),
        Some(20)
    );
    assert_eq!(
        series("tollgate_proxy_llm_tokens_total", "type=\"input\""),
        Some(10)
    );
    assert_eq!(
        series("tollgate_proxy_llm_cost_micros_total", "currency=\"USD\""),
        Some(550)
    );
    // The call's access-log line, written when its answer ended, says what it used.
    // Lines reach stdout within a writer tick: polled (up to 10 s on a loaded machine).
    let mut line = None;
    for _ in 0..500 {
        line = p
            .access_log()
            .into_iter()
            .find(|l| l["path"] == "/v1/messages" && l["status"] == 200);
        if line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = line.expect("the Claude call's line");
    assert_eq!(
        (
            &line["tenant"],
            &line["model"],
            &line["cost"],
            &line["currency"]
        ),
        (
            &serde_json::json!("default/team"),
            &serde_json::json!("claude-opus-4-6"),
            &serde_json::json!("0.00055"),
            &serde_json::json!("USD")
        )
    );
    assert_eq!(line["tokens"]["output"], 20);
    // A model name longer than any model's is refused before anything is reserved.
    let long = format!(r#"{{"model":"claude-{}","max_tokens":5}}"#, "x".repeat(300));
    p.post(
        "/v1/messages",
        &[("authorization", "Bearer key-models"), JSON],
        &long,
    )
    .await
    .problem(400, "bad-request");
    // The next Claude call reserves what the last used (30), more than the 20 left.
    let auth = ("authorization", "Bearer key-models");
    let claude = r#"{"model":"claude-opus-4-6","max_tokens":20}"#;
    let problem = p
        .post("/v1/messages", &[auth, JSON], claude)
        .await
        .problem(402, "quota-exhausted");
    assert_eq!(problem["quota"], "claude-tokens");
    let mini = r#"{"model":"gpt-4o-mini","max_tokens":20}"#;
    assert_eq!(p.post(CHAT, &[auth, JSON], mini).await.status, 200);
    assert_eq!(used(&p, "team", "claude-tokens").await, "30");
    assert_eq!(used(&p, "team", "calls").await, "5");
}

#[tokio::test]
async fn per_model_budgets_hold_with_redis() {
    let redis = tollgate_tests::redis::Redis::start(support::free_port());
    let backend = Backend::start().await;
    let p = ProxyProcess::start_with(
        &[("world.yaml", world(&backend.url()))],
        &["--store", &redis.url()],
    )
    .await;
    spend_per_model_budgets(&p).await;
    // Settled in the fleet's counters (Cost in millionths).
    let counter = |quota: &str| redis.total(&format!("tollgate:{{default/team|*}}:{quota}:*"));
    for _ in 0..1000 {
        if counter("claude-tokens") == 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        ["claude-tokens", "claude-cost", "gpt-4o-calls", "calls"].map(counter),
        [30, 550, 1, 4]
    );
    let auth = ("authorization", "Bearer key-models");
    let claude = r#"{"model":"claude-opus-4-6","max_tokens":20}"#;
    p.post("/v1/messages", &[auth, JSON], claude)
        .await
        .problem(402, "quota-exhausted");
    let mini = r#"{"model":"gpt-4o-mini","max_tokens":20}"#;
    assert_eq!(p.post(CHAT, &[auth, JSON], mini).await.status, 200);
}

#[tokio::test]
async fn an_allowlist_holds_on_a_plan_that_counts_requests_only_and_sends_calls_unchanged() {
    let (_backend, p) = start().await;
    let auth = ("authorization", "Bearer key-allow");
    p.post(CHAT, &[auth, JSON], r#"{"model":"gpt-4o","max_tokens":5}"#)
        .await
        .problem(403, "model-not-allowed");
    assert_eq!(used(&p, "picky", "calls").await, "0");
    // No token budget: the call's own bound is not lowered to the plan's default of 4096.
    let big = r#"{"model":"gpt-4o-mini","max_tokens":5000}"#;
    let r = p
        .post(CHAT, &[auth, JSON, ("x-llm-output-tokens", "5000")], big)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["usage"]["completion_tokens"], 5000);
    assert_eq!(used(&p, "picky", "calls").await, "1");
}

#[tokio::test]
async fn the_months_call_usage_survives_a_restart() {
    let (_backend, mut p) = start().await;
    let auth = ("authorization", "Bearer key-budget");
    let body = r#"{"model":"gpt-4o-mini","max_tokens":5}"#;
    assert_eq!(p.post(CHAT, &[auth, JSON], body).await.status, 200);
    // 0.001 per request, 10 x 100 and 5 x 200 per million tokens.
    wait_used(&p, "spender", "monthly-cost", "0.003").await;
    let month = |usage: serde_json::Value| {
        usage["calls"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["tenant"] == "default/spender"))
            .cloned()
            .unwrap_or_default()
    };
    let before = month(p.usage().await);
    assert_eq!(
        (
            &before["requests"],
            &before["cost"],
            &before["tokens"]["output"]
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!("0.003"),
            &serde_json::json!(5)
        )
    );
    p.restart().await;
    assert_eq!(month(p.usage().await), before);
}

#[tokio::test]
async fn a_quota_for_some_models_lets_other_requests_through_as_they_came() {
    // Regression: a plan with only a quota for gpt-4o refused a body that is not a JSON call
    // (an upload) with 400, though no quota of it counts such a request.
    let (_backend, p) = start().await;
    let auth = ("authorization", "Bearer key-upload");
    let upload = p
        .post(
            CHAT,
            &[auth, ("content-type", "text/plain")],
            "not a JSON call",
        )
        .await;
    assert_eq!(
        upload.status,
        200,
        "{}",
        String::from_utf8_lossy(&upload.body)
    );
    let gpt4o = r#"{"model":"gpt-4o","max_tokens":5}"#;
    assert_eq!(p.post(CHAT, &[auth, JSON], gpt4o).await.status, 200);
    p.post(CHAT, &[auth, JSON], gpt4o)
        .await
        .problem(402, "quota-exhausted");
    assert_eq!(used(&p, "uploader", "gpt-4o-calls").await, "1");
}
