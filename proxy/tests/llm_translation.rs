//! Routes that translate calls between provider APIs, and fall back between backends, driven by
//! the official `openai` and `anthropic` Python SDKs against provider-compatible test backends
//! that record what they received: the OpenAI SDK unchanged against Anthropic and Gemini
//! backends, the Anthropic SDK against an OpenAI-compatible one.

mod support;

use rust_decimal::Decimal;
use serde_json::{Value, json};
use support::ProxyProcess;
use tollgate_tests::llm_backend::{LlmBackend, PROMPT_TOKENS};

/// A plan pricing every model the backends answer as, and a tenant subscribed to every route.
fn world(routes: &str) -> String {
    format!(
        r#"
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: llm}}
spec:
  quotas: [{{name: monthly, metric: Cost, limit: "5", period: Month}}]
  allowedModels: [gpt-4o, claude-opus-4-6, gemini-2.5-flash]
  pricing:
    currency: USD
    models:
    - {{model: gpt-4o, inputPerMillionTokens: "2.50", outputPerMillionTokens: "10"}}
    - {{model: claude-opus-4-6, inputPerMillionTokens: "5", outputPerMillionTokens: "25"}}
    - {{model: gemini-2.5-flash, inputPerMillionTokens: "0.30", outputPerMillionTokens: "2.50"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: team-key}}
stringData: {{apiKey: key-team}}
---
apiVersion: v1
kind: Secret
metadata: {{name: provider, labels: {{tollgate.dev/backend-credentials: "true"}}}}
stringData: {{key: sk-provider-secret}}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: team}}
spec:
  quotaPolicyRef: {{name: llm}}
  apiKeys: [{{secretRef: {{name: team-key}}}}]
  subscriptions: [{{apiRouteRef: {{name: to-anthropic}}}}, {{apiRouteRef: {{name: to-gemini}}}},
                  {{apiRouteRef: {{name: to-openai}}}}, {{apiRouteRef: {{name: fallback}}}},
                  {{apiRouteRef: {{name: sentiment}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: tiny}}
spec:
  quotas: [{{name: monthly, metric: Cost, limit: "0.003", period: Month}}]
  paymentUrl: https://billing.example.com/upgrade
  pricing:
    currency: USD
    models:
    - {{model: claude-opus-4-6, inputPerMillionTokens: "5", outputPerMillionTokens: "25"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: frugal-key}}
stringData: {{apiKey: key-frugal}}
---
apiVersion: tollgate.dev/v1alpha1
kind: Tenant
metadata: {{name: frugal}}
spec:
  quotaPolicyRef: {{name: tiny}}
  apiKeys: [{{secretRef: {{name: frugal-key}}}}]
  subscriptions: [{{apiRouteRef: {{name: sentiment}}}}]
{routes}"#
    )
}

fn routes(anthropic: &str, gemini: &str, openai: &str, failing: &str) -> String {
    format!(
        r#"---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: to-anthropic}}
spec:
  match: {{pathPrefix: /anthropic}}
  metering: Anthropic
  translate: {{from: OpenAI, models: {{gpt-4o: claude-opus-4-6}}}}
  backend:
    url: "{anthropic}"
    requestHeaders: [{{name: x-api-key, secretKeyRef: {{name: provider, key: key}}}}]
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: to-gemini}}
spec:
  match: {{pathPrefix: /gemini}}
  metering: Gemini
  translate: {{from: OpenAI, models: {{gpt-4o: gemini-2.5-flash}}}}
  backend: {{url: "{gemini}"}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: to-openai}}
spec:
  match: {{pathPrefix: /claude}}
  metering: OpenAI
  translate: {{from: Anthropic, models: {{claude-opus-4-6: gpt-4o}}}}
  backend: {{url: "{openai}"}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: fallback}}
spec:
  match: {{pathPrefix: /fallback}}
  metering: Anthropic
  translate: {{from: OpenAI, models: {{gpt-4o: claude-opus-4-6}}}}
  backend: {{url: "{failing}"}}
  fallbacks:
  - {{url: "{gemini}", api: Gemini, models: {{gpt-4o: gemini-2.5-flash}}}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: sentiment}}
spec:
  match: {{path: /v1/sentiment}}
  metering: Anthropic
  backend: {{url: "{anthropic}"}}
  prompt:
    model: claude-opus-4-6
    description: The sentiment of a text.
    system: Classify the sentiment of the user's text.
    user: "Text: {{{{text}}}}"
    maxOutputTokens: 64
    inputSchema:
      type: object
      required: [text]
      properties: {{text: {{type: string, maxLength: 1000}}}}
      additionalProperties: false
    responseSchema:
      type: object
      required: [sentiment]
      properties: {{sentiment: {{enum: [positive, negative, neutral]}}}}
"#
    )
}

struct World {
    anthropic: LlmBackend,
    gemini: LlmBackend,
    openai: LlmBackend,
    failing: LlmBackend,
    proxy: ProxyProcess,
}

async fn start(failing_status: u16) -> World {
    let anthropic = LlmBackend::start().await;
    let gemini = LlmBackend::start().await;
    let openai = LlmBackend::start().await;
    let failing = LlmBackend::start_failing(failing_status).await;
    let yaml = world(&routes(
        &anthropic.url(),
        &gemini.url(),
        &openai.url(),
        &failing.url(),
    ));
    let proxy = ProxyProcess::start(&[("world.yaml", yaml)]).await;
    World {
        anthropic,
        gemini,
        openai,
        failing,
        proxy,
    }
}

/// Runs the SDK scenario `s` against `base` (a path on the proxy).
async fn sdk(p: &ProxyProcess, base: &str, mut s: Value) -> Value {
    s["base"] = json!(format!("http://{}{base}", p.listen));
    s["key"] = json!("key-team");
    tokio::task::spawn_blocking(move || {
        tollgate_tests::python::run_json("llm_translation.py", &[], &s)
            .expect("the SDK scenario ran")
    })
    .await
    .expect("join")
}

async fn used(p: &ProxyProcess) -> Decimal {
    p.used("team", None).await.parse().expect("a decimal")
}

/// Waits for the tenant's usage to read `want` (settling follows the response).
async fn wait_used(p: &ProxyProcess, want: Decimal) {
    for _ in 0..500 {
        if used(p).await == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("used {} (wanted {want})", used(p).await);
}

/// The OpenAI SDK's view of a call answered by another provider: the same for both backends.
fn assert_openai_shapes(out: &Value, backend: &str) {
    let chat = &out["chat"];
    assert_eq!(chat["object"], "chat.completion", "{backend}: {chat}");
    assert_eq!(
        (&chat["text"], &chat["finish"]),
        (&json!("Hello"), &json!("stop")),
        "{backend}"
    );
    assert_eq!(chat["usage"]["prompt_tokens"], PROMPT_TOKENS, "{backend}");
    assert_eq!(chat["usage"]["completion_tokens"], 20, "{backend}");
    assert_eq!(
        chat["usage"]["total_tokens"],
        PROMPT_TOKENS + 20,
        "{backend}"
    );
    let stream = &out["stream"];
    assert_eq!(
        (&stream["text"], &stream["finish"]),
        (&json!("Hello"), &json!("stop")),
        "{backend}: {stream}"
    );
    assert_eq!(
        stream["usage"]["completion_tokens"], 20,
        "{backend}: the usage chunk"
    );
    assert_eq!(
        out["stream_without_usage"]["usage_chunks"], 0,
        "{backend}: a stream that did not ask gets no usage chunk"
    );
    let call = &out["tool_call"];
    assert_eq!(
        (
            &call["name"],
            &call["arguments"],
            &call["finish"],
            &call["content"]
        ),
        (
            &json!("get_weather"),
            &json!({"city": "Paris"}),
            &json!("tool_calls"),
            &Value::Null
        ),
        "{backend}"
    );
    assert_eq!(
        out["tool_result"]["text"],
        if backend == "gemini" {
            // Gemini takes a function's response as an object.
            json!(r#"Result: {"content":"sunny"}"#)
        } else {
            json!("Result: sunny")
        },
        "{backend}: the tool's result reached the backend"
    );
    assert_eq!(
        out["stream_tool_call"],
        json!({"name": "get_weather", "arguments": {"city": "Paris"}, "finish": "tool_calls"}),
        "{backend}"
    );
    assert_eq!(out["image"]["text"], "Hello", "{backend}");
    let error = &out["backend_error"];
    assert_eq!(
        (&error["status"], &error["class"]),
        (&json!(429), &json!("RateLimitError")),
        "{backend}: {error}"
    );
    assert!(
        error["body"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("fails this call with 429")),
        "{backend}: the provider's message, in OpenAI's error shape: {error}"
    );
    let unsupported = &out["unsupported"];
    assert_eq!(
        (&unsupported["status"], &unsupported["class"]),
        (&json!(400), &json!("BadRequestError")),
        "{backend}: {unsupported}"
    );
    assert_eq!(unsupported["content_type"], "application/problem+json");
    // A 200 that is not the provider's JSON cannot be an answer: 502, in OpenAI's error shape.
    let garbage = &out["garbage"];
    assert_eq!(
        (&garbage["status"], &garbage["class"]),
        (&json!(502), &json!("InternalServerError")),
        "{backend}: {garbage}"
    );
    assert!(
        garbage["body"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("<html>oops</html>")),
        "{backend}: {garbage}"
    );
    assert!(
        unsupported["body"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("`logprobs` cannot be translated")),
        "{backend}: {unsupported}"
    );
}

#[tokio::test]
async fn the_openai_sdk_works_unchanged_against_anthropic_and_gemini_backends() {
    let w = start(503).await;
    let before = used(&w.proxy).await;
    let out = sdk(
        &w.proxy,
        "/anthropic/v1",
        json!({"sdk": "openai", "model": "gpt-4o"}),
    )
    .await;
    assert_openai_shapes(&out, "anthropic");
    assert_eq!(
        out["chat"]["model"], "claude-opus-4-6",
        "the model that answered"
    );

    // What the Anthropic backend received: Messages calls, mapped, with its credential.
    let received = w.anthropic.received();
    assert!(received.iter().all(|r| r.path == "/v1/messages"));
    let first = &received[0];
    assert_eq!(first.body["model"], "claude-opus-4-6");
    assert_eq!(first.body["system"], "Be brief.");
    assert_eq!(first.body["max_tokens"], 64);
    assert_eq!(
        first.body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}])
    );
    assert_eq!(first.headers["anthropic-version"], "2023-06-01");
    assert_eq!(first.headers["x-api-key"], "sk-provider-secret");
    assert!(
        received
            .iter()
            .all(|r| r.headers.get("authorization").is_none()),
        "the tenant's key never reaches the provider"
    );
    let tools = received
        .iter()
        .find(|r| r.body["tools"].is_array())
        .expect("a call with tools");
    assert_eq!(
        tools.body["tools"][0]["input_schema"]["required"],
        json!(["city"])
    );
    assert_eq!(tools.body["tool_choice"], json!({"type": "auto"}));
    let image = received
        .iter()
        .find(|r| r.body.to_string().contains("cat.png"))
        .expect("the image call");
    assert_eq!(
        image.body["messages"][0]["content"][1],
        json!({"type": "image", "source": {"type": "url", "url": "https://images.example.com/cat.png"}})
    );

    let out = sdk(
        &w.proxy,
        "/gemini/v1",
        json!({"sdk": "openai", "model": "gpt-4o"}),
    )
    .await;
    assert_openai_shapes(&out, "gemini");
    let received = w.gemini.received();
    assert_eq!(
        received[0].path,
        "/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(
        received[0].body["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    assert_eq!(received[0].body["generationConfig"]["maxOutputTokens"], 64);
    assert!(
        received
            .iter()
            .any(|r| r.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
    );
    let answered = received
        .iter()
        .find(|r| r.body.to_string().contains("functionResponse"))
        .expect("the tool's result");
    assert_eq!(
        answered.body["contents"][2]["parts"][0]["functionResponse"]["name"], "get_weather",
        "Gemini gets the function's name for the OpenAI call id"
    );
    let image = received
        .iter()
        .find(|r| r.body.to_string().contains("cat.png"))
        .expect("the image call");
    assert_eq!(
        image.body["contents"][0]["parts"][1],
        json!({"fileData": {"mimeType": "image/png", "fileUri": "https://images.example.com/cat.png"}})
    );
    // Every answered call was charged, priced by the backend's model; the refused ones not.
    assert!(used(&w.proxy).await > before);
}

#[tokio::test]
async fn the_anthropic_sdk_works_unchanged_against_an_openai_compatible_backend() {
    let w = start(503).await;
    let out = sdk(
        &w.proxy,
        "/claude",
        json!({"sdk": "anthropic", "model": "claude-opus-4-6"}),
    )
    .await;
    let chat = &out["chat"];
    assert_eq!(
        (&chat["type"], &chat["text"], &chat["stop"], &chat["model"]),
        (
            &json!("message"),
            &json!("Hello"),
            &json!("end_turn"),
            &json!("gpt-4o")
        ),
        "{chat}"
    );
    assert_eq!(chat["usage"]["input_tokens"], PROMPT_TOKENS);
    assert_eq!(chat["usage"]["output_tokens"], 20);
    let stream = &out["stream"];
    assert_eq!(
        (&stream["text"], &stream["stop"]),
        (&json!("Hello"), &json!("end_turn")),
        "{stream}"
    );
    assert_eq!(stream["usage"]["output_tokens"], 20, "{stream}");
    assert_eq!(stream["usage"]["input_tokens"], PROMPT_TOKENS, "{stream}");
    assert_eq!(
        out["tool_call"],
        json!({"name": "get_weather", "arguments": {"city": "Paris"}, "stop": "tool_use"})
    );
    assert_eq!(
        out["tool_result"],
        json!({"text": "Result: sunny", "stop": "end_turn"})
    );
    assert_eq!(
        out["stream_tool_call"],
        json!({"name": "get_weather", "arguments": {"city": "Paris"}, "stop": "tool_use"})
    );
    let error = &out["backend_error"];
    assert_eq!(
        (
            &error["status"],
            &error["class"],
            &error["body"]["error"]["type"]
        ),
        (
            &json!(429),
            &json!("RateLimitError"),
            &json!("rate_limit_error")
        ),
        "{error}"
    );
    let unsupported = &out["unsupported"];
    assert_eq!(unsupported["status"], 400, "{unsupported}");
    assert!(
        unsupported["body"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("`thinking` cannot be translated")),
        "{unsupported}"
    );
    // The OpenAI-compatible backend got Chat Completions calls.
    let received = w.openai.received();
    assert!(received.iter().all(|r| r.path == "/v1/chat/completions"));
    assert_eq!(
        received[0].body["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}])
    );
    assert_eq!(received[0].body["model"], "gpt-4o");
    assert_eq!(received[0].body["max_completion_tokens"], 64);
    let streamed = received
        .iter()
        .find(|r| r.body["stream"] == true)
        .expect("a streamed call");
    assert_eq!(
        streamed.body["stream_options"],
        json!({"include_usage": true}),
        "asked for the usage Anthropic's stream ends with"
    );
    let tool_result = received
        .iter()
        .find(|r| r.body.to_string().contains("\"tool\""))
        .expect("the tool's result");
    assert_eq!(
        tool_result.body["messages"][2],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "sunny"})
    );
}

#[tokio::test]
async fn a_failing_backend_falls_back_to_the_next_and_the_call_is_charged_once() {
    for status in [429, 503] {
        let w = start(status).await;
        let out = sdk(
            &w.proxy,
            "/fallback/v1",
            json!({"sdk": "openai", "model": "gpt-4o", "cases": ["chat", "stream", "no_fallback_can"]}),
        )
        .await;
        assert_eq!(out["chat"]["text"], "Hello", "{status}: {out}");
        assert_eq!(
            out["chat"]["model"], "gemini-2.5-flash",
            "{status}: the fallback answered"
        );
        assert_eq!(out["stream"]["text"], "Hello", "{status}: {out}");
        // A call the Gemini fallback cannot take (`parallel_tool_calls: false`): the failing
        // backend's own answer is the caller's, not a made-up one.
        assert_eq!(
            out["no_fallback_can"]["status"], status,
            "{status}: {}",
            out["no_fallback_can"]
        );
        // Three calls (one JSON, two streamed), each tried on the failing backend first, and
        // the one no fallback could take.
        assert_eq!(w.failing.received().len(), 4, "{status}");
        assert_eq!(w.gemini.received().len(), 3, "{status}");
        assert!(w.anthropic.received().is_empty() && w.openai.received().is_empty());
        // Charged once each, priced by the model that answered: 10 x 0.30/1M + 20 x 2.50/1M.
        let per_call: Decimal = "0.000053".parse().expect("decimal");
        wait_used(&w.proxy, per_call * Decimal::from(3)).await;
        assert_eq!(
            w.proxy
                .metric(&format!(
                    r#"tollgate_proxy_backend_fallbacks_total{{reason="{status}",route="default/fallback"}}"#
                ))
                .await,
            3.0
        );
    }
}

#[tokio::test]
async fn a_prompt_api_answers_refuses_what_its_schema_does_not_take_and_ends_in_402() {
    let w = start(503).await;
    let p = &w.proxy;
    let key = [("authorization", "Bearer key-team")];
    let described = p.get("/v1/sentiment", &key).await;
    assert_eq!(described.status, 200);
    let description = described.json();
    assert_eq!(description["inputSchema"]["required"], json!(["text"]));
    assert_eq!(
        (&description["method"], &description["model"]),
        (&json!("POST"), &json!("claude-opus-4-6"))
    );

    let positive = [
        ("authorization", "Bearer key-team"),
        ("content-type", "application/json"),
        ("x-llm-reply", r#"{"sentiment": "positive"}"#),
    ];
    let answered = p
        .post("/v1/sentiment", &positive, r#"{"text": "I love it"}"#)
        .await;
    assert_eq!(answered.status, 200, "{:?}", answered.body);
    assert_eq!(
        answered.json(),
        json!({"output": {"sentiment": "positive"}, "model": "claude-opus-4-6",
               "usage": {"inputTokens": PROMPT_TOKENS, "outputTokens": 20}})
    );
    let call = w.anthropic.received().pop().expect("the call");
    assert_eq!(call.path, "/v1/messages");
    assert_eq!(call.body["model"], "claude-opus-4-6");
    assert_eq!(call.body["max_tokens"], 64);
    assert_eq!(
        call.body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "Text: I love it"}]}])
    );
    let system = call.body["system"].as_str().expect("a system prompt");
    assert!(
        system.starts_with("Classify the sentiment of the user's text.")
            && system.contains(r#""enum":["positive","negative","neutral"]"#),
        "{system}"
    );

    // A body the schema refuses never reaches the model and is not charged.
    let calls = w.anthropic.received().len();
    // The one call answered so far, once settled (the reservation until then): 10 x 5/1M +
    // 20 x 25/1M.
    let charged: Decimal = "0.00055".parse().expect("decimal");
    wait_used(p, charged).await;
    for body in [r#"{"text": 5}"#, r#"{"txt": "x"}"#, "not json"] {
        let refused = p.post("/v1/sentiment", &positive, body).await;
        let problem = refused.problem(400, "invalid-input");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("input schema")),
            "{problem}"
        );
    }
    assert_eq!(w.anthropic.received().len(), calls);
    assert_eq!(used(p).await, charged);

    // An answer the response schema does not allow: 502, with what the model said.
    let unsure = [
        ("authorization", "Bearer key-team"),
        ("x-llm-reply", "It is hard to say."),
    ];
    let invalid = p.post("/v1/sentiment", &unsure, r#"{"text": "Hmm"}"#).await;
    let problem = invalid.problem(502, "invalid-model-output");
    assert_eq!(problem["answer"], "It is hard to say.");

    // Budgeted like any call: the tiny plan answers 402 once its reservation no longer fits.
    let frugal = [
        ("authorization", "Bearer key-frugal"),
        ("x-llm-reply", r#"{"sentiment": "neutral"}"#),
    ];
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let reply = p.post("/v1/sentiment", &frugal, r#"{"text": "ok"}"#).await;
        statuses.push(reply.status);
        if reply.status == 402 {
            let problem = reply.problem(402, "quota-exhausted");
            assert_eq!(problem["paymentUrl"], "https://billing.example.com/upgrade");
            break;
        }
    }
    assert!(
        statuses.first() == Some(&200) && statuses.last() == Some(&402),
        "{statuses:?}"
    );
    let spent: Decimal = p.used("frugal", None).await.parse().expect("decimal");
    assert!(
        spent <= "0.003".parse().expect("decimal"),
        "never past the budget: {spent}"
    );
}
