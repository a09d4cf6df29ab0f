//! The translations on their own: requests, whole answers, streams cut anywhere, errors.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::sse::{self, Event};
use super::*;

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn translated(caller: Api, backend: Api, path: &str, doc: Value) -> (String, Value) {
    let models = BTreeMap::from([("gpt-4o".to_owned(), "mapped".to_owned())]);
    let out = request(caller, backend, path, &object(doc), &models).expect("translatable");
    let body = serde_json::from_slice(&out.body).expect("json");
    (out.path, body)
}

fn refused(caller: Api, backend: Api, doc: Value) -> String {
    request(caller, backend, "/v1/x", &object(doc), &BTreeMap::new())
        .expect_err("refused")
        .0
}

/// Runs a backend's answer through a translator, cut into pieces of `piece` bytes.
fn through(translator: &mut Translator, body: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(piece.max(1)) {
        out.extend_from_slice(&translator.pass(Bytes::copy_from_slice(chunk)));
    }
    out.extend_from_slice(&translator.rest());
    out
}

fn events(text: &[u8]) -> Vec<Event> {
    let mut reader = sse::Reader::default();
    let mut events = reader.push(text).expect("events");
    events.extend(reader.finish());
    events
}

#[test]
fn an_openai_conversation_becomes_anthropic_messages() {
    let (path, body) = translated(
        Api::OpenAI,
        Api::Anthropic,
        "/v1/chat/completions",
        json!({"model": "gpt-4o", "max_completion_tokens": 100, "n": 1, "temperature": 0.5,
               "stop": "END", "user": "u-1", "parallel_tool_calls": false,
               "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
               "tool_choice": "required",
               "messages": [
                   {"role": "system", "content": "One."},
                   {"role": "developer", "content": [{"type": "text", "text": "Two."}]},
                   {"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Calling.", "tool_calls": [
                       {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}},
                       {"id": "b", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                   {"role": "tool", "tool_call_id": "a", "content": "1"},
                   {"role": "tool", "tool_call_id": "b", "content": "2"},
                   {"role": "user", "content": "And?"}]}),
    );
    assert_eq!(path, "/v1/messages");
    assert_eq!(body["model"], "mapped");
    assert_eq!(body["system"], "One.\n\nTwo.");
    assert_eq!(body["max_tokens"], 100);
    assert_eq!(body["stop_sequences"], json!(["END"]));
    assert_eq!(body["metadata"], json!({"user_id": "u-1"}));
    assert_eq!(
        body["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    assert_eq!(body["tools"][0]["input_schema"], json!({"type": "object"}));
    let messages = body["messages"].as_array().expect("messages");
    // Tool results and the next user turn are one user message: turns alternate.
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert_eq!(
        messages[1]["content"][1],
        json!({"type": "tool_use", "id": "a", "name": "f", "input": {"x": 1}})
    );
    assert_eq!(
        messages[2]["content"],
        json!([{"type": "tool_result", "tool_use_id": "a", "content": "1"},
               {"type": "tool_result", "tool_use_id": "b", "content": "2"},
               {"type": "text", "text": "And?"}])
    );
    let data_image = translated(
        Api::OpenAI,
        Api::Anthropic,
        "/v1/chat/completions",
        json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}),
    )
    .1;
    assert_eq!(
        data_image["messages"][0]["content"][0]["source"],
        json!({"type": "base64", "media_type": "image/png", "data": "AAAA"})
    );
    assert_eq!(data_image["max_tokens"], 4096, "Anthropic needs a bound");
}

#[test]
fn what_a_backend_cannot_do_is_refused_by_name() {
    let chat = |extra: Value| {
        let mut doc = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        for (k, v) in object(extra) {
            doc[k] = v;
        }
        doc
    };
    assert!(
        refused(Api::OpenAI, Api::Anthropic, chat(json!({"logprobs": true})))
            .contains("`logprobs` cannot be translated for the Anthropic Messages API")
    );
    assert!(refused(Api::OpenAI, Api::Anthropic, chat(json!({"n": 2}))).contains("`n`"));
    assert!(
        refused(
            Api::OpenAI,
            Api::Anthropic,
            chat(json!({"temperature": 1.5}))
        )
        .contains("temperature above 1")
    );
    assert!(
        refused(
            Api::OpenAI,
            Api::Gemini,
            chat(json!({"response_format": {"type": "xml"}}))
        )
        .contains("response_format")
    );
    assert!(
        refused(
            Api::OpenAI,
            Api::Gemini,
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://x/photo"}}]}]})
        )
        .contains("needs an image's type")
    );
    assert!(
        refused(
            Api::OpenAI,
            Api::Gemini,
            json!({"model": "../admin", "messages": []})
        )
        .contains("cannot be named in a Gemini request path")
    );
    assert!(
        refused(
            Api::OpenAI,
            Api::Gemini,
            json!({"model": "m", "messages": [{"role": "tool", "tool_call_id": "zz", "content": "1"}]})
        )
        .contains("answers no tool call")
    );
    assert!(
        refused(
            Api::Anthropic,
            Api::OpenAI,
            json!({"model": "m", "max_tokens": 5, "top_k": 3, "messages": []})
        )
        .contains("`top_k`")
    );
    assert!(
        refused(
            Api::Anthropic,
            Api::OpenAI,
            json!({"model": "m", "max_tokens": 5, "tools": [{"type": "web_search_20250305", "name": "w"}], "messages": []})
        )
        .contains("server tools")
    );
    // Neutral values pass: they ask for nothing a backend would do differently.
    assert!(
        request(
            Api::OpenAI,
            Api::Anthropic,
            "/v1/chat/completions",
            &object(chat(
                json!({"n": 1, "logprobs": false, "presence_penalty": 0, "response_format": {"type": "text"}})
            )),
            &BTreeMap::new()
        )
        .is_ok()
    );
}

#[test]
fn an_anthropic_call_becomes_an_openai_chat_request() {
    let (path, body) = translated(
        Api::Anthropic,
        Api::OpenAI,
        "/v1/messages",
        json!({"model": "gpt-4o", "max_tokens": 50, "system": [{"type": "text", "text": "Sys."}],
               "stream": true, "stop_sequences": ["X"],
               "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": true},
               "tools": [{"name": "f", "input_schema": {"type": "object"}}],
               "messages": [
                   {"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": [{"type": "thinking", "thinking": "..."},
                       {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
                   {"role": "user", "content": [
                       {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "ok"}]},
                       {"type": "text", "text": "Next"},
                       {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "BB"}}]}]}),
    );
    assert_eq!(path, "/v1/chat/completions");
    assert_eq!(body["model"], "mapped");
    assert_eq!(body["max_completion_tokens"], 50);
    assert_eq!(body["stop"], json!(["X"]));
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["parallel_tool_calls"], false);
    assert_eq!(
        body["tool_choice"],
        json!({"type": "function", "function": {"name": "f"}})
    );
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "Sys."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "Next"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,BB"}}]}])
    );
}

#[test]
fn same_api_calls_keep_their_path_and_map_the_model() {
    let (path, body) = translated(
        Api::OpenAI,
        Api::OpenAI,
        "/openai/v1/chat/completions?x=1",
        json!({"model": "gpt-4o", "logprobs": true, "messages": []}),
    );
    assert_eq!(path, "/openai/v1/chat/completions?x=1");
    assert_eq!(
        (&body["model"], &body["logprobs"]),
        (&json!("mapped"), &json!(true))
    );
    let (path, _) = translated(
        Api::Gemini,
        Api::Gemini,
        "/v1beta/models/gpt-4o:streamGenerateContent?alt=sse",
        json!({"contents": []}),
    );
    assert_eq!(path, "/v1beta/models/mapped:streamGenerateContent?alt=sse");
}

const ANTHROPIC_STREAM: &str = concat!(
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude\",\"usage\":{\"input_tokens\":7,\"cache_read_input_tokens\":3,\"output_tokens\":1}}}\n\n",
    "event: ping\ndata: {\"type\":\"ping\"}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"f\",\"input\":{}}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":\"}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t2\",\"name\":\"g\",\"input\":{}}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"1}\"}}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":12}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);

#[test]
fn an_anthropic_stream_reaches_an_openai_caller_wherever_it_is_cut() {
    let new = |usage| {
        Translator::new(
            Api::OpenAI,
            Api::Anthropic,
            StatusCode::OK,
            Some("text/event-stream; charset=utf-8"),
            usage,
        )
        .expect("a translation")
    };
    let whole = through(&mut new(true), ANTHROPIC_STREAM.as_bytes(), usize::MAX);
    for piece in [1, 7, 64] {
        assert_eq!(
            through(&mut new(true), ANTHROPIC_STREAM.as_bytes(), piece),
            whole,
            "pieces of {piece}"
        );
    }
    let out = events(&whole);
    let data: Vec<&Value> = out
        .iter()
        .filter_map(|e| match e {
            Event::Json { data, .. } => Some(data),
            Event::Done | Event::Raw { .. } => None,
        })
        .collect();
    assert_eq!(out.last(), Some(&Event::Done));
    assert_eq!(data[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(data[1]["choices"][0]["delta"]["content"], "Hi");
    // Tool calls keep OpenAI's own numbering; a delta for the first after the second began
    // still goes to the first.
    assert_eq!(
        data[2]["choices"][0]["delta"]["tool_calls"][0],
        json!({"index": 0, "id": "t1", "type": "function", "function": {"name": "f", "arguments": ""}})
    );
    assert_eq!(data[4]["choices"][0]["delta"]["tool_calls"][0]["index"], 1);
    assert_eq!(
        data[5]["choices"][0]["delta"]["tool_calls"][0],
        json!({"index": 0, "function": {"arguments": "1}"}})
    );
    assert_eq!(data[6]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        data[7]["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22,
               "prompt_tokens_details": {"cached_tokens": 3}})
    );
    assert!(
        data.iter()
            .all(|d| d["id"] == "msg_1" && d["model"] == "claude")
    );
    let without = events(&through(&mut new(false), ANTHROPIC_STREAM.as_bytes(), 5));
    assert_eq!(without.len(), out.len() - 1, "no usage chunk unasked");
}

#[test]
fn an_openai_stream_reaches_an_anthropic_caller() {
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "c1", "model": "gpt", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let stream = [
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "Hel"}), Value::Null),
        chunk(json!({"content": "lo"}), Value::Null),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "x", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 1, "id": "y", "type": "function", "function": {"name": "g", "arguments": "{\"a\""}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 1, "function": {"arguments": ":2}"}}]}),
            json!("tool_calls"),
        ),
        format!(
            "data: {}\n\n",
            json!({"id": "c1", "model": "gpt", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 2}}})
        ),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let mut translator = Translator::new(
        Api::Anthropic,
        Api::OpenAI,
        StatusCode::OK,
        Some("text/event-stream"),
        false,
    )
    .expect("a translation");
    let out = events(&through(&mut translator, stream.as_bytes(), 3));
    let kinds: Vec<String> = out
        .iter()
        .map(|e| match e {
            Event::Json { name, data } => {
                assert_eq!(name.as_deref(), data["type"].as_str(), "named by type");
                let delta = data["delta"]["type"].as_str().unwrap_or("");
                format!(
                    "{}{}",
                    data["type"].as_str().unwrap_or(""),
                    if delta.is_empty() {
                        String::new()
                    } else {
                        format!(":{delta}")
                    }
                )
            }
            Event::Done | Event::Raw { .. } => "DONE".to_owned(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "message_start",
            "content_block_start",
            "content_block_delta:text_delta",
            "content_block_delta:text_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta:input_json_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta:input_json_delta",
            "content_block_delta:input_json_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let Event::Json { data: delta, .. } = &out[12] else {
        panic!("message_delta")
    };
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(
        delta["usage"],
        json!({"input_tokens": 7, "output_tokens": 4, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2})
    );
}

#[test]
fn a_gemini_stream_reaches_an_anthropic_caller_through_openai() {
    let stream = concat!(
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hel\"}],\"role\":\"model\"}}],\"modelVersion\":\"gemini\",\"responseId\":\"r\"}\r\n\r\n",
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"lo\"}],\"role\":\"model\"},\"finishReason\":\"MAX_TOKENS\"}],\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":2,\"thoughtsTokenCount\":3}}\r\n\r\n",
    );
    let mut translator = Translator::new(
        Api::Anthropic,
        Api::Gemini,
        StatusCode::OK,
        Some("text/event-stream"),
        false,
    )
    .expect("a translation");
    let out = events(&through(&mut translator, stream.as_bytes(), 10));
    let last_two: Vec<&Value> = out[out.len() - 2..]
        .iter()
        .map(|e| match e {
            Event::Json { data, .. } => data,
            Event::Done | Event::Raw { .. } => panic!("Anthropic streams end with message_stop"),
        })
        .collect();
    assert_eq!(last_two[0]["delta"]["stop_reason"], "max_tokens");
    assert_eq!(
        last_two[0]["usage"]["output_tokens"], 5,
        "thoughts are output"
    );
    assert_eq!(last_two[0]["usage"]["input_tokens"], 5);
    assert_eq!(last_two[1]["type"], "message_stop");
}

#[test]
fn whole_answers_and_errors_come_back_in_the_callers_shape() {
    let answer = |caller, backend, status: u16, body: &str| -> Value {
        let mut t = Translator::new(
            caller,
            backend,
            StatusCode::from_u16(status).expect("status"),
            Some("application/json"),
            false,
        )
        .expect("a translation");
        serde_json::from_slice(&through(&mut t, body.as_bytes(), 4)).expect("json")
    };
    let from_gemini = answer(
        Api::OpenAI,
        Api::Gemini,
        200,
        r#"{"candidates":[{"content":{"parts":[{"text":"thinking","thought":true},{"functionCall":{"name":"f","args":{"a":1}},"thoughtSignature":"SIG"}]},"finishReason":"STOP"}],
            "usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":6,"cachedContentTokenCount":1},"modelVersion":"gemini-x","responseId":"r1"}"#,
    );
    assert_eq!(from_gemini["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        from_gemini["choices"][0]["message"],
        json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
            {"id": "call_r1_0.sig.SIG", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]})
    );
    assert_eq!(
        from_gemini["usage"]["prompt_tokens_details"]["cached_tokens"],
        1
    );
    assert_eq!(from_gemini["model"], "gemini-x");
    let blocked = answer(
        Api::OpenAI,
        Api::Gemini,
        200,
        r#"{"promptFeedback":{"blockReason":"SAFETY"}}"#,
    );
    assert_eq!(blocked["choices"][0]["finish_reason"], "content_filter");
    let refusal = answer(
        Api::Anthropic,
        Api::OpenAI,
        200,
        r#"{"id":"c","model":"m","choices":[{"message":{"role":"assistant","content":null,"refusal":"No."},"finish_reason":"content_filter"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
    );
    assert_eq!(refusal["content"], json!([{"type": "text", "text": "No."}]));
    assert_eq!(refusal["stop_reason"], "refusal");
    assert_eq!(
        answer(
            Api::Anthropic,
            Api::Gemini,
            429,
            r#"{"error":{"code":429,"message":"Slow down","status":"RESOURCE_EXHAUSTED"}}"#
        ),
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"}})
    );
    // Not the provider's JSON (a load balancer's page): said so, in the caller's shape.
    let page = answer(Api::OpenAI, Api::Anthropic, 502, "<html>Bad Gateway</html>");
    assert_eq!(
        page["error"]["message"],
        "The backend answered 502: <html>Bad Gateway</html>"
    );
    assert!(
        Translator::new(Api::OpenAI, Api::OpenAI, StatusCode::OK, None, false).is_none(),
        "nothing to translate"
    );
}

#[test]
fn gemini_calls_keep_their_signature_and_ids_stay_unique_across_turns() {
    let call = |id: &str, name: &str| {
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": id, "type": "function", "function": {"name": name, "arguments": "{}"}}]})
    };
    let (_, body) = translated(
        Api::OpenAI,
        Api::Gemini,
        "/v1/chat/completions",
        json!({"model": "g", "messages": [
            {"role": "user", "content": "1"},
            call("call_0", "first"),
            {"role": "tool", "tool_call_id": "call_0", "content": "a"},
            call("call_a_0.sig.SIG", "second"),
            {"role": "tool", "tool_call_id": "call_a_0.sig.SIG", "content": "b"},
            call("call_0", "third"),
            {"role": "tool", "tool_call_id": "call_0", "content": "c"}]}),
    );
    let contents = body["contents"].as_array().expect("contents");
    assert_eq!(
        contents[3]["parts"][0],
        json!({"functionCall": {"name": "second", "args": {}}, "thoughtSignature": "SIG"}),
        "the signature goes back with its call"
    );
    assert_eq!(
        contents[6]["parts"][0]["functionResponse"]["name"], "third",
        "a repeated id answers its latest call"
    );
}

#[test]
fn a_stream_cut_before_its_end_ends_in_an_error_event() {
    let cut_anthropic = ANTHROPIC_STREAM
        .split("event: message_delta")
        .next()
        .expect("a prefix");
    let last = |caller, backend, stream: &str| -> Event {
        let mut t = Translator::new(
            caller,
            backend,
            StatusCode::OK,
            Some("text/event-stream"),
            true,
        )
        .expect("a translation");
        events(&through(&mut t, stream.as_bytes(), 9))
            .pop()
            .expect("events")
    };
    let is_error = |e: &Event| match e {
        Event::Json { data, .. } => data.get("error").is_some(),
        Event::Done | Event::Raw { .. } => false,
    };
    assert!(is_error(&last(Api::OpenAI, Api::Anthropic, cut_anthropic)));
    let gemini_cut = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hel\"}]}}]}\n\n";
    assert!(is_error(&last(Api::OpenAI, Api::Gemini, gemini_cut)));
    let Event::Json { data, .. } = last(Api::Anthropic, Api::Gemini, gemini_cut) else {
        panic!("an event")
    };
    assert_eq!(data["type"], "error", "no message_stop after a cut");
    let openai_cut = format!(
        "data: {}\n\n",
        json!({"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}]})
    );
    let Event::Json { data, .. } = last(Api::Anthropic, Api::OpenAI, &openai_cut) else {
        panic!("an event")
    };
    assert_eq!(data["type"], "error");
    // A whole stream does not.
    assert_eq!(
        last(Api::OpenAI, Api::Anthropic, ANTHROPIC_STREAM),
        Event::Done
    );
}

#[test]
fn a_call_whose_id_repeats_on_every_delta_stays_one_block() {
    let chunk = |args: &str| {
        format!(
            "data: {}\n\n",
            json!({"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": "same", "type": "function", "function": {"name": "f", "arguments": args}}]},
                "finish_reason": null}]})
        )
    };
    let stream = [chunk("{\"a\""), chunk(":1}"), "data: [DONE]\n\n".to_owned()].concat();
    let mut t = Translator::new(
        Api::Anthropic,
        Api::OpenAI,
        StatusCode::OK,
        Some("text/event-stream"),
        false,
    )
    .expect("a translation");
    let starts = events(&through(&mut t, stream.as_bytes(), 1000))
        .iter()
        .filter(|e| matches!(e, Event::Json { data, .. } if data["type"] == "content_block_start"))
        .count();
    assert_eq!(starts, 1);
}
