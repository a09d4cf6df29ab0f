//! A provider-compatible test backend: OpenAI Chat Completions, Anthropic Messages and Gemini
//! `generateContent`, JSON and streamed, shaped as the official SDKs parse them, with the usage
//! each provider reports. [`answer`] serves one request (the proxy tests' echo backend hands
//! these paths to it); [`LlmBackend`] runs it on its own port.
//!
//! Like the providers, an OpenAI stream reports usage only when the request asked
//! (`stream_options.include_usage`). Test knobs come as request headers (the proxy relays them):
//! `x-llm-delay-ms` (wait before answering), `x-llm-usage: none` (never report usage),
//! `x-llm-chunks` (content chunks in an OpenAI stream), `x-llm-logprobs-bytes` (inflate a JSON
//! answer), `x-llm-output-tokens` (a longer answer), `x-llm-pause-before-usage-ms` (a stream
//! pauses after its last content chunk, before its usage), `x-llm-fail` (answer with that
//! status and the provider's error body), `x-llm-reply` (the text to answer), `x-llm-garbage`
//! (answer 200 with a body that is not JSON, as a broken server would).
//!
//! A call that offers tools is answered with a call of the first one (`{"city": "Paris"}`); a
//! call whose last message is a tool's result is answered `Result: <that result>`. An
//! [`LlmBackend`] records the calls it received, and may fail every call with one status
//! ([`LlmBackend::start_failing`]), as a provider out of capacity does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// The backend on a loopback port; dropping it stops it.
#[derive(Debug)]
pub struct LlmBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    received: Arc<Mutex<Vec<Received>>>,
}

/// A call the backend received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Path and query.
    pub path: String,
    /// Request headers.
    pub headers: http::HeaderMap,
    /// The JSON body (`null` when it was not JSON).
    pub body: Value,
}

impl Drop for LlmBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LlmBackend {
    /// Starts on a free loopback port.
    pub async fn start() -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind the LLM backend")
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        Self::serve(addr, None).await
    }

    /// Starts on a free loopback port, answering every call with `status` and the error body
    /// of the provider the call is for.
    pub async fn start_failing(status: u16) -> Self {
        Self::serve(SocketAddr::from(([127, 0, 0, 1], 0)), Some(status))
            .await
            .expect("bind the LLM backend")
    }

    async fn serve(addr: SocketAddr, fail: Option<u16>) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                // As providers' servers do: a stream's small events go out as written.
                let _ = stream.set_nodelay(true);
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let serve = service_fn(move |req: Request<Incoming>| {
                        let log = Arc::clone(&log);
                        async move {
                            let (parts, body) = req.into_parts();
                            let bytes = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            log.lock().expect("log").push(Received {
                                path: parts
                                    .uri
                                    .path_and_query()
                                    .map_or("/", |p| p.as_str())
                                    .to_owned(),
                                headers: parts.headers.clone(),
                                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                            });
                            let mut req = Request::from_parts(parts, Full::new(bytes));
                            if let Some(status) = fail {
                                req.headers_mut().insert("x-llm-fail", status.into());
                            }
                            Ok::<_, Infallible>(answer(req).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), serve)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            task,
            received,
        })
    }

    /// The calls received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("log").clone()
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts on a free loopback port as a provider does: HTTPS with `cert`, and 401 to every
    /// request that does not carry `authorization` (the credential only the gateway holds).
    pub async fn start_tls(
        cert: &crate::pki::CertPair,
        authorization: &str,
    ) -> anyhow::Result<Self> {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())?;
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        let tls = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let authorization = http::HeaderValue::from_str(authorization)?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tls, authorization) = (tls.clone(), authorization.clone());
                tokio::spawn(async move {
                    let Ok(stream) = tls.accept(stream).await else {
                        return;
                    };
                    let serve = service_fn(move |req: Request<Incoming>| {
                        let authorized = req.headers().get("authorization") == Some(&authorization);
                        async move {
                            Ok::<_, Infallible>(if authorized {
                                answer(req).await
                            } else {
                                unauthorized()
                            })
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), serve)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            task,
            received: Arc::default(),
        })
    }

    /// Its HTTPS base URL (from [`LlmBackend::start_tls`]).
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// OpenAI's answer to a missing or wrong API key.
fn unauthorized() -> Response<AnyBody> {
    let body = json!({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                "code": "invalid_api_key"}});
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = hyper::StatusCode::UNAUTHORIZED;
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("value"));
    resp
}

/// Prompt tokens every answer reports.
pub const PROMPT_TOKENS: u64 = 10;
/// Output tokens an answer reports when the request's bound allows.
pub const OUTPUT_TOKENS: u64 = 20;

pub type AnyBody = BoxBody<Bytes, Infallible>;

/// Whether `path` is one of the provider APIs answered here.
pub fn handles(path: &str) -> bool {
    path.ends_with("/chat/completions")
        || path == "/v1/messages"
        || path.contains(":generateContent")
        || path.contains(":streamGenerateContent")
}

struct Knobs {
    /// Content chunks in a stream (2 when 0).
    chunks: u64,
    /// Output tokens to report (before the request's bound); `OUTPUT_TOKENS` when 0.
    output_tokens: u64,
    delay_ms: u64,
    no_usage: bool,
    logprobs_bytes: usize,
    pause_before_usage_ms: u64,
}

fn header_number<B>(req: &Request<B>, name: &str) -> u64 {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Answers a provider call.
pub async fn answer<B>(req: Request<B>) -> Response<AnyBody>
where
    B: hyper::body::Body,
{
    let knobs = Knobs {
        chunks: header_number(&req, "x-llm-chunks"),
        output_tokens: header_number(&req, "x-llm-output-tokens"),
        delay_ms: header_number(&req, "x-llm-delay-ms"),
        no_usage: req
            .headers()
            .get("x-llm-usage")
            .is_some_and(|v| v == "none"),
        logprobs_bytes: header_number(&req, "x-llm-logprobs-bytes") as usize,
        pause_before_usage_ms: header_number(&req, "x-llm-pause-before-usage-ms"),
    };
    let path = req.uri().path().to_owned();
    let fail = header_number(&req, "x-llm-fail");
    let garbage = header_number(&req, "x-llm-garbage") > 0;
    let req_reply = req
        .headers()
        .get("x-llm-reply")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let doc: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    tokio::time::sleep(Duration::from_millis(knobs.delay_ms)).await;
    let api = if path == "/v1/messages" {
        Api::Anthropic
    } else if path.contains("enerateContent") {
        Api::Gemini
    } else {
        Api::OpenAI
    };
    if garbage {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"<html>oops</html>")).boxed());
        resp.headers_mut()
            .insert("content-type", "application/json".parse().expect("value"));
        return resp;
    }
    if let Ok(status) = u16::try_from(fail)
        && (400..600).contains(&status)
    {
        return provider_error(api, status);
    }
    let reply = match req_reply {
        Some(text) => Reply::Text(text),
        None => reply(api, &doc),
    };
    let bound = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|n| doc[*n].as_u64())
        .or_else(|| doc["generationConfig"]["maxOutputTokens"].as_u64())
        .unwrap_or(u64::MAX);
    let wanted = match knobs.output_tokens {
        0 => OUTPUT_TOKENS,
        n => n,
    };
    let output = wanted.min(bound);
    let streamed = doc["stream"] == true || path.contains(":streamGenerateContent");
    let openai_api = path.ends_with("/chat/completions");
    let (events, json_body) = match api {
        Api::Anthropic => anthropic(&doc, output, &knobs, &reply),
        Api::Gemini => gemini(&gemini_model(&path), output, &knobs, &reply),
        Api::OpenAI => openai(&doc, output, &knobs, &reply),
    };
    if streamed {
        stream(events, knobs.pause_before_usage_ms, openai_api)
    } else {
        let mut resp = Response::new(Full::new(Bytes::from(json_body.to_string())).boxed());
        resp.headers_mut()
            .insert("content-type", "application/json".parse().expect("value"));
        resp
    }
}

/// SSE events (the last one or two carry usage) and the JSON answer.
type Answer = (Vec<(Option<&'static str>, Value)>, Value);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAI,
    Anthropic,
    Gemini,
}

/// What the model answers.
enum Reply {
    /// Text.
    Text(String),
    /// A call of this tool with `{"city": "Paris"}`.
    Tool(String),
}

/// The arguments every tool call here carries.
pub const TOOL_ARGUMENTS: &str = r#"{"city":"Paris"}"#;

/// A tool's result in the call's last message, else the first tool offered, else "Hello".
fn reply(api: Api, doc: &Value) -> Reply {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let result = match api {
        Api::OpenAI => doc["messages"]
            .as_array()
            .and_then(|m| m.last())
            .filter(|m| m["role"] == "tool")
            .map(|m| text(&m["content"])),
        Api::Anthropic => doc["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_array())
            .and_then(|c| c.iter().find(|b| b["type"] == "tool_result"))
            .map(|b| text(&b["content"])),
        Api::Gemini => doc["contents"]
            .as_array()
            .and_then(|c| c.last())
            .and_then(|c| c["parts"].as_array())
            .and_then(|p| p.iter().find_map(|p| p.get("functionResponse")))
            .map(|r| text(&r["response"])),
    };
    if let Some(result) = result {
        return Reply::Text(format!("Result: {result}"));
    }
    let tool = match api {
        Api::OpenAI => doc["tools"][0]["function"]["name"].as_str(),
        Api::Anthropic => doc["tools"][0]["name"].as_str(),
        Api::Gemini => doc["tools"][0]["functionDeclarations"][0]["name"].as_str(),
    };
    match tool {
        Some(name) => Reply::Tool(name.to_owned()),
        None => Reply::Text("Hello".to_owned()),
    }
}

/// The provider's error body for `status`.
fn provider_error(api: Api, status: u16) -> Response<AnyBody> {
    let message = format!("The test backend fails this call with {status}.");
    let body = match api {
        Api::OpenAI => json!({"error": {"message": message, "type": "server_error", "param": null,
                                        "code": status.to_string()}}),
        Api::Anthropic => json!({"type": "error", "error": {"type":
            if status == 429 { "rate_limit_error" } else { "overloaded_error" }, "message": message}}),
        Api::Gemini => json!({"error": {"code": status, "message": message,
            "status": if status == 429 { "RESOURCE_EXHAUSTED" } else { "UNAVAILABLE" }}}),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("value"));
    resp
}

/// The model in a Gemini path.
fn gemini_model(path: &str) -> String {
    path.split_once("/models/")
        .map(|(_, m)| m.split(':').next().unwrap_or(m).to_owned())
        .unwrap_or_else(|| "gemini-2.5-flash".to_owned())
}

fn openai(doc: &Value, output: u64, knobs: &Knobs, reply: &Reply) -> Answer {
    let model = doc["model"].as_str().unwrap_or("gpt-4o-mini").to_owned();
    let usage = json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": output,
                       "total_tokens": PROMPT_TOKENS + output,
                       "prompt_tokens_details": {"cached_tokens": 0}});
    let chunk = |choices: Value, usage: Value| {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": model, "choices": choices, "usage": usage})
    };
    let asked = doc["stream_options"]["include_usage"] == true;
    match reply {
        Reply::Tool(name) => {
            let call = json!({"id": "call_1", "type": "function",
                              "function": {"name": name, "arguments": TOOL_ARGUMENTS}});
            let mut events = vec![
                (
                    None,
                    chunk(
                        json!([{"index": 0, "delta": {"role": "assistant", "content": null,
                    "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                    "function": {"name": name, "arguments": ""}}]}, "finish_reason": null}]),
                        Value::Null,
                    ),
                ),
                (
                    None,
                    chunk(
                        json!([{"index": 0, "delta": {"tool_calls": [{"index": 0,
                    "function": {"arguments": "{\"city\":"}}]}, "finish_reason": null}]),
                        Value::Null,
                    ),
                ),
                (
                    None,
                    chunk(
                        json!([{"index": 0, "delta": {"tool_calls": [{"index": 0,
                    "function": {"arguments": "\"Paris\"}"}}]}, "finish_reason": "tool_calls"}]),
                        Value::Null,
                    ),
                ),
            ];
            if asked && !knobs.no_usage {
                events.push((None, chunk(json!([]), usage.clone())));
            }
            let answer = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000,
                "model": model, "usage": usage,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [call]},
                             "finish_reason": "tool_calls"}]});
            return (events, answer);
        }
        Reply::Text(text) if text != "Hello" => {
            let (a, b) = text.split_at(text.len() / 2);
            let mut events = vec![
                (
                    None,
                    chunk(
                        json!([{"index": 0, "delta": {"role": "assistant", "content": a}, "finish_reason": null}]),
                        Value::Null,
                    ),
                ),
                (
                    None,
                    chunk(
                        json!([{"index": 0, "delta": {"content": b}, "finish_reason": "stop"}]),
                        Value::Null,
                    ),
                ),
            ];
            if asked && !knobs.no_usage {
                events.push((None, chunk(json!([]), usage.clone())));
            }
            let answer = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000,
                "model": model, "usage": usage,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]});
            return (events, answer);
        }
        Reply::Text(_) => {}
    }
    // "Hel", then as many "lo" as asked, the last one finishing the answer.
    let extra = knobs.chunks.saturating_sub(2);
    let mut events = vec![(
        None,
        chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": null}]),
            Value::Null,
        ),
    )];
    for i in 0..=extra {
        let finish = if i == extra {
            json!("stop")
        } else {
            Value::Null
        };
        events.push((
            None,
            chunk(
                json!([{"index": 0, "delta": {"content": "lo"}, "finish_reason": finish}]),
                Value::Null,
            ),
        ));
    }
    if asked && !knobs.no_usage {
        events.push((None, chunk(json!([]), usage.clone())));
    }
    let mut answer = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop",
                     "logprobs": {"filler": "x".repeat(knobs.logprobs_bytes)}}]});
    if !knobs.no_usage {
        answer["usage"] = usage;
    }
    (events, answer)
}

fn anthropic(doc: &Value, output: u64, knobs: &Knobs, reply: &Reply) -> Answer {
    let model = doc["model"]
        .as_str()
        .unwrap_or("claude-opus-4-6")
        .to_owned();
    let start_usage = json!({"input_tokens": PROMPT_TOKENS, "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 0, "output_tokens": 1});
    let message_start = (
        Some("message_start"),
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
        "role": "assistant", "model": model, "content": [], "usage": start_usage}}),
    );
    let (mut events, content, stop) = match reply {
        Reply::Text(text) => {
            // One delta, or as many as asked: "Hel", then "lo"s.
            let deltas: Vec<String> = match knobs.chunks {
                0 | 1 => vec![text.clone()],
                n => std::iter::once("Hel".to_owned())
                    .chain((1..n).map(|_| "lo".to_owned()))
                    .collect(),
            };
            let mut events = vec![
                message_start,
                (
                    Some("content_block_start"),
                    json!({"type": "content_block_start", "index": 0,
                           "content_block": {"type": "text", "text": ""}}),
                ),
            ];
            events.extend(deltas.iter().map(|d| {
                (
                    Some("content_block_delta"),
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": d}}),
                )
            }));
            events.push((
                Some("content_block_stop"),
                json!({"type": "content_block_stop", "index": 0}),
            ));
            (
                events,
                json!([{"type": "text", "text": deltas.concat()}]),
                "end_turn",
            )
        }
        Reply::Tool(name) => (
            vec![
                message_start,
                (
                    Some("content_block_start"),
                    json!({"type": "content_block_start", "index": 0,
                           "content_block": {"type": "tool_use", "id": "toolu_1", "name": name, "input": {}}}),
                ),
                (
                    Some("content_block_delta"),
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
                ),
                (
                    Some("content_block_delta"),
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
                ),
                (
                    Some("content_block_stop"),
                    json!({"type": "content_block_stop", "index": 0}),
                ),
            ],
            json!([{"type": "tool_use", "id": "toolu_1", "name": name, "input": {"city": "Paris"}}]),
            "tool_use",
        ),
    };
    if !knobs.no_usage {
        events.push((
            Some("message_delta"),
            json!({"type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": output}}),
        ));
    }
    events.push((Some("message_stop"), json!({"type": "message_stop"})));
    let answer = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop, "stop_sequence": null,
        "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": output,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}});
    (events, answer)
}

fn gemini(model: &str, output: u64, knobs: &Knobs, reply: &Reply) -> Answer {
    let usage = |out: u64| {
        json!({"promptTokenCount": PROMPT_TOKENS, "candidatesTokenCount": out,
                                  "totalTokenCount": PROMPT_TOKENS + out})
    };
    // The last chunk finishes the candidate (`finishReason`), its usage the final count.
    let chunk = |part: Value, out: u64, last: bool| {
        let mut c = json!({"candidates": [{"content": {"parts": [part], "role": "model"}}],
                           "modelVersion": model, "responseId": "gemini-1"});
        if last {
            c["candidates"][0]["finishReason"] = json!("STOP");
        }
        if !knobs.no_usage {
            c["usageMetadata"] = usage(out);
        }
        c
    };
    match reply {
        Reply::Text(text) => {
            let cut = text.len().min(3);
            let events = vec![
                (None, chunk(json!({"text": &text[..cut]}), 1, false)),
                (None, chunk(json!({"text": &text[cut..]}), output, true)),
            ];
            (events, chunk(json!({"text": text}), output, true))
        }
        Reply::Tool(name) => {
            let call = json!({"functionCall": {"name": name, "args": {"city": "Paris"}}});
            (
                vec![(None, chunk(call.clone(), output, true))],
                chunk(call, output, true),
            )
        }
    }
}

/// Streams `events` as SSE (ended by `data: [DONE]` when `done`), pausing `pause_ms` before the
/// usage.
fn stream(
    events: Vec<(Option<&'static str>, Value)>,
    pause_ms: u64,
    done: bool,
) -> Response<AnyBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Frame<Bytes>>(4);
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|f| (Ok::<_, Infallible>(f), rx))
    });
    let body = http_body_util::StreamBody::new(frames);
    tokio::spawn(async move {
        // The pause comes before the last event that reports usage (after the content).
        let reports = |d: &Value| {
            d.get("usage").is_some_and(|u| !u.is_null()) || d.get("usageMetadata").is_some()
        };
        let pause_at = events
            .iter()
            .rposition(|(_, d)| reports(d))
            .filter(|&i| i > 0);
        for (i, (event, data)) in events.into_iter().enumerate() {
            if Some(i) == pause_at && pause_ms > 0 {
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            }
            let text = match event {
                Some(name) => format!("event: {name}\ndata: {data}\n\n"),
                None => format!("data: {data}\n\n"),
            };
            if tx.send(Frame::data(Bytes::from(text))).await.is_err() {
                return;
            }
        }
        // Only OpenAI ends its streams so.
        if !done {
            return;
        }
        let _ = tx
            .send(Frame::data(Bytes::from_static(b"data: [DONE]\n\n")))
            .await;
    });
    let mut resp = Response::new(body.boxed());
    resp.headers_mut()
        .insert("content-type", "text/event-stream".parse().expect("value"));
    resp
}
