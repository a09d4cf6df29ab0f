//! Anthropic Messages and OpenAI Chat Completions, both ways: an OpenAI caller's call sent to an
//! Anthropic backend (and its answer, stream and errors brought back), and an Anthropic caller's
//! call sent to an OpenAI-compatible backend (the same the other way).

use serde_json::{Map, Value, json};

use super::common::{
    CHAT_MEMBERS, Stage, Unsupported, check_members, now_seconds, openai_chunk, openai_usage_chunk,
    parse_data_url, text_of,
};
use super::sse::Event;

/// What a call that names no bound asks Anthropic for (its `max_tokens` is required). The
/// proxy writes the plan's bound into every metered call before this is needed.
const DEFAULT_MAX_TOKENS: u64 = 4096;

// ---- OpenAI caller, Anthropic backend -------------------------------------------------------

/// An OpenAI Chat Completions request as an Anthropic Messages request.
pub fn request_from_openai(doc: &Map<String, Value>) -> Result<Map<String, Value>, Unsupported> {
    check_members(doc, "the Anthropic Messages API", CHAT_MEMBERS)?;
    let mut out = Map::new();
    out.insert(
        "model".into(),
        doc.get("model").cloned().unwrap_or(Value::Null),
    );
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    let empty = Vec::new();
    let input = doc
        .get("messages")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for (i, m) in input.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => system.push(text_of(content, &format!("messages[{i}]"))?),
            "user" => push_message(&mut messages, "user", user_blocks(content, i)?),
            "assistant" => {
                let mut blocks = Vec::new();
                let text = match content {
                    Value::Null => String::new(),
                    other => text_of(other, &format!("messages[{i}]"))?,
                };
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for call in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .unwrap_or(&empty)
                {
                    let function = call.get("function").unwrap_or(&Value::Null);
                    let arguments = function
                        .get("arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}");
                    let input: Value = serde_json::from_str(arguments).map_err(|_| {
                        Unsupported(format!(
                            "messages[{i}].tool_calls: the arguments of a tool call must be a JSON object to be sent to an Anthropic backend"
                        ))
                    })?;
                    blocks.push(json!({"type": "tool_use", "id": call.get("id"),
                                       "name": function.get("name"), "input": input}));
                }
                push_message(&mut messages, "assistant", blocks);
            }
            "tool" => {
                let result = json!({"type": "tool_result", "tool_use_id": m.get("tool_call_id"),
                                    "content": text_of(content, &format!("messages[{i}]"))?});
                push_message(&mut messages, "user", vec![result]);
            }
            other => {
                return Err(Unsupported(format!(
                    "messages[{i}].role {other:?} cannot be sent to an Anthropic backend (system, developer, user, assistant and tool can)"
                )));
            }
        }
    }
    if !system.is_empty() {
        out.insert("system".into(), Value::from(system.join("\n\n")));
    }
    out.insert("messages".into(), Value::Array(messages));
    let bound = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|n| doc.get(*n).and_then(Value::as_u64))
        .unwrap_or(DEFAULT_MAX_TOKENS);
    out.insert("max_tokens".into(), Value::from(bound));
    if let Some(t) = doc.get("temperature").filter(|t| !t.is_null()) {
        if t.as_f64().is_some_and(|t| t > 1.0) {
            return Err(Unsupported(
                "temperature above 1 has no equivalent on an Anthropic backend (its range is 0 to 1)"
                    .into(),
            ));
        }
        out.insert("temperature".into(), t.clone());
    }
    if let Some(p) = doc.get("top_p").filter(|p| !p.is_null()) {
        out.insert("top_p".into(), p.clone());
    }
    match doc.get("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if doc.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), Value::Bool(true));
    }
    if let Some(user) = doc.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    let tools = doc.get("tools").and_then(Value::as_array).unwrap_or(&empty);
    if !tools.is_empty() {
        let mut declared = Vec::new();
        for (i, tool) in tools.iter().enumerate() {
            if tool.get("type").and_then(Value::as_str) != Some("function") {
                return Err(Unsupported(format!(
                    "tools[{i}]: only function tools can be sent to an Anthropic backend"
                )));
            }
            let f = tool.get("function").unwrap_or(&Value::Null);
            let mut t = json!({"name": f.get("name"),
                "input_schema": f.get("parameters").cloned().unwrap_or(json!({"type": "object", "properties": {}}))});
            if let Some(d) = f.get("description") {
                t["description"] = d.clone();
            }
            declared.push(t);
        }
        out.insert("tools".into(), Value::Array(declared));
        let mut choice = match doc.get("tool_choice") {
            None | Some(Value::Null) => json!({"type": "auto"}),
            Some(Value::String(s)) if s == "auto" => json!({"type": "auto"}),
            Some(Value::String(s)) if s == "none" => json!({"type": "none"}),
            Some(Value::String(s)) if s == "required" => json!({"type": "any"}),
            Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("function") => {
                json!({"type": "tool", "name": o.get("function").and_then(|f| f.get("name"))})
            }
            Some(other) => {
                return Err(Unsupported(format!(
                    "tool_choice {other} cannot be sent to an Anthropic backend"
                )));
            }
        };
        if doc.get("parallel_tool_calls") == Some(&Value::Bool(false)) && choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = Value::Bool(true);
        }
        out.insert("tool_choice".into(), choice);
    }
    Ok(out)
}

/// Appends `blocks` as a message of `role`, joined to the last message when it has the same role
/// (Anthropic wants user and assistant turns to alternate; OpenAI's tool results are one
/// message each).
fn push_message(messages: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = messages.last_mut()
        && last["role"] == role
        && let Some(content) = last["content"].as_array_mut()
    {
        content.extend(blocks);
        return;
    }
    messages.push(json!({"role": role, "content": blocks}));
}

/// A user message's content as Anthropic content blocks.
fn user_blocks(content: &Value, i: usize) -> Result<Vec<Value>, Unsupported> {
    let parts = match content {
        Value::String(s) => return Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => parts,
        _ => {
            return Err(Unsupported(format!(
                "messages[{i}].content must be a string or an array of parts"
            )));
        }
    };
    parts
        .iter()
        .map(|part| match part.get("type").and_then(Value::as_str) {
            Some("text") => Ok(json!({"type": "text", "text": part.get("text")})),
            Some("image_url") => {
                let url = part
                    .get("image_url")
                    .and_then(|u| u.get("url"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                Ok(match parse_data_url(url) {
                    Some((media_type, data)) => json!({"type": "image",
                        "source": {"type": "base64", "media_type": media_type, "data": data}}),
                    None => json!({"type": "image", "source": {"type": "url", "url": url}}),
                })
            }
            other => Err(Unsupported(format!(
                "messages[{i}].content: a part of type {} cannot be sent to an Anthropic backend (text and image_url can)",
                other.unwrap_or("(none)")
            ))),
        })
        .collect()
}

/// Anthropic's stop reason as OpenAI's finish reason.
fn finish_reason(stop: Option<&str>) -> Option<&'static str> {
    stop.map(|s| match s {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    })
}

/// Anthropic's `usage` as OpenAI's: its cache counts are beside `input_tokens`, OpenAI's inside
/// `prompt_tokens`.
fn usage_to_openai(usage: &Value) -> Value {
    let n = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("cache_read_input_tokens");
    let prompt = n("input_tokens") + n("cache_creation_input_tokens") + cached;
    let completion = n("output_tokens");
    json!({"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": prompt + completion,
           "prompt_tokens_details": {"cached_tokens": cached}})
}

/// An Anthropic message as an OpenAI chat completion.
pub fn answer_to_openai(answer: &Value) -> Value {
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in answer["content"].as_array().into_iter().flatten() {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or("")),
            Some("tool_use") => calls.push(json!({"id": block["id"], "type": "function",
                "function": {"name": block["name"], "arguments": block["input"].to_string()}})),
            _ => {} // Thinking blocks: OpenAI's chat answer has no place for them.
        }
    }
    let mut message = json!({"role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::from(text) },
        "refusal": null});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    json!({"id": answer["id"], "object": "chat.completion", "created": now_seconds(),
           "model": answer["model"],
           "choices": [{"index": 0, "message": message, "logprobs": null,
                        "finish_reason": finish_reason(answer["stop_reason"].as_str()).unwrap_or("stop")}],
           "usage": usage_to_openai(&answer["usage"])})
}

/// An Anthropic error body as OpenAI's.
pub fn error_to_openai(body: &Value) -> Value {
    let error = &body["error"];
    json!({"error": {"message": error["message"].as_str().unwrap_or("The backend refused the call."),
                     "type": error["type"].as_str().unwrap_or("api_error"),
                     "param": null, "code": null}})
}

/// An Anthropic stream as OpenAI chunks.
#[derive(Debug)]
pub struct StreamToOpenAI {
    include_usage: bool,
    id: Value,
    model: Value,
    created: i64,
    usage: Map<String, Value>,
    /// OpenAI's tool call index for each Anthropic content block that is a tool use.
    tool_index: Vec<(u64, u64)>,
    /// `message_start` came.
    started: bool,
    /// `message_stop` or an error came: the stream ended as the backend meant it to.
    ended: bool,
    /// Every chunk's text up to its delta (`{"id":…,"choices":[{"index":0,"delta":`), made once:
    /// a text delta, nearly every event of a stream, is written without building a document.
    prefix: String,
}

impl StreamToOpenAI {
    /// `include_usage`: the caller asked for the usage chunk.
    pub fn new(include_usage: bool) -> Self {
        Self {
            include_usage,
            id: Value::Null,
            model: Value::Null,
            created: now_seconds(),
            usage: Map::new(),
            tool_index: Vec::new(),
            started: false,
            ended: false,
            prefix: String::new(),
        }
    }

    /// A chunk whose delta is `{"content": text}`, written as text.
    fn text_chunk(&self, text: &str) -> Event {
        let mut out = String::with_capacity(self.prefix.len() + text.len() + 64);
        out.push_str(&self.prefix);
        out.push_str(r#"{"content":"#);
        // Serializing a string cannot fail.
        out.push_str(&serde_json::to_string(text).unwrap_or_default());
        out.push_str(r#"},"logprobs":null,"finish_reason":null}]}"#);
        Event::Raw {
            name: None,
            data: out,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Event {
        Event::data(openai_chunk(
            &self.id,
            &self.model,
            self.created,
            delta,
            finish,
        ))
    }
}

impl Stage for StreamToOpenAI {
    fn push(&mut self, event: Event, out: &mut Vec<Event>) {
        let Event::Json { data, .. } = event else {
            return;
        };
        match data["type"].as_str() {
            Some("message_start") => {
                self.started = true;
                let message = &data["message"];
                self.id = message["id"].clone();
                self.model = message["model"].clone();
                if let Some(u) = message["usage"].as_object() {
                    self.usage.extend(u.clone());
                }
                self.prefix = format!(
                    r#"{{"id":{},"object":"chat.completion.chunk","created":{},"model":{},"choices":[{{"index":0,"delta":"#,
                    self.id, self.created, self.model
                );
                out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
            }
            Some("content_block_start") => {
                let block = &data["content_block"];
                match block["type"].as_str() {
                    Some("tool_use") => {
                        let index = self.tool_index.len() as u64;
                        self.tool_index
                            .push((data["index"].as_u64().unwrap_or(0), index));
                        out.push(self.chunk(
                            json!({"tool_calls": [{"index": index, "id": block["id"], "type": "function",
                                               "function": {"name": block["name"], "arguments": ""}}]}),
                            None,
                        ));
                    }
                    Some("text") if block["text"].as_str().is_some_and(|t| !t.is_empty()) => {
                        out.push(self.chunk(json!({"content": block["text"]}), None));
                    }
                    _ => {}
                }
            }
            Some("content_block_delta") => {
                let delta = &data["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        out.push(self.text_chunk(delta["text"].as_str().unwrap_or("")))
                    }
                    Some("input_json_delta") => {
                        let block = data["index"].as_u64().unwrap_or(0);
                        if let Some(&(_, index)) = self.tool_index.iter().find(|(b, _)| *b == block)
                        {
                            out.push(self.chunk(
                                json!({"tool_calls": [{"index": index,
                                    "function": {"arguments": delta["partial_json"]}}]}),
                                None,
                            ));
                        }
                    }
                    _ => {}
                }
            }
            Some("message_delta") => {
                if let Some(u) = data["usage"].as_object() {
                    self.usage.extend(
                        u.iter()
                            .filter(|(_, v)| !v.is_null())
                            .map(|(k, v)| (k.clone(), v.clone())),
                    );
                }
                let finish = finish_reason(data["delta"]["stop_reason"].as_str());
                if finish.is_some() {
                    out.push(self.chunk(json!({}), finish));
                }
            }
            Some("message_stop") => {
                if self.include_usage {
                    let usage = usage_to_openai(&Value::Object(self.usage.clone()));
                    out.push(Event::data(openai_usage_chunk(
                        &self.id,
                        &self.model,
                        self.created,
                        usage,
                    )));
                }
                self.ended = true;
                out.push(Event::Done);
            }
            Some("error") => {
                self.ended = true;
                out.push(Event::data(error_to_openai(&data)));
            }
            _ => {} // ping
        }
    }

    fn end(&mut self, out: &mut Vec<Event>) {
        // Cut before `message_stop`: the caller must not take it for a whole answer.
        if self.started && !self.ended {
            out.push(Event::data(json!({"error": {
                "message": "The backend's stream ended before the answer was complete.",
                "type": "api_error", "param": null, "code": null}})));
        }
    }
}

// ---- Anthropic caller, OpenAI-compatible backend ---------------------------------------------

/// An Anthropic Messages request as an OpenAI Chat Completions request.
pub fn request_to_openai(doc: &Map<String, Value>) -> Result<Map<String, Value>, Unsupported> {
    check_members(
        doc,
        "the OpenAI Chat Completions API",
        &[
            "model",
            "messages",
            "system",
            "max_tokens",
            "stop_sequences",
            "stream",
            "temperature",
            "top_p",
            "tools",
            "tool_choice",
            "metadata",
            "service_tier",
        ],
    )?;
    let mut out = Map::new();
    out.insert(
        "model".into(),
        doc.get("model").cloned().unwrap_or(Value::Null),
    );
    let mut messages = Vec::new();
    if let Some(system) = doc.get("system").filter(|s| !s.is_null()) {
        messages.push(json!({"role": "system", "content": text_of(system, "system")?}));
    }
    let empty = Vec::new();
    for (i, m) in doc
        .get("messages")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
        .iter()
        .enumerate()
    {
        let role = m["role"].as_str().unwrap_or("");
        let blocks = match &m["content"] {
            Value::String(s) => {
                messages.push(json!({"role": role, "content": s}));
                continue;
            }
            Value::Array(blocks) => blocks,
            _ => {
                return Err(Unsupported(format!(
                    "messages[{i}].content must be a string or an array of content blocks"
                )));
            }
        };
        match role {
            "user" => {
                let mut parts = Vec::new();
                for block in blocks {
                    match block["type"].as_str() {
                        // Tool results answer the assistant's last turn: they go first.
                        Some("tool_result") => {
                            let mut content =
                                text_of(&block["content"], &format!("messages[{i}].content"))?;
                            // OpenAI has no error flag on a tool's result: it is said in words.
                            if block["is_error"] == true {
                                content.insert_str(0, "Error: ");
                            }
                            messages.push(json!({"role": "tool",
                                "tool_call_id": block["tool_use_id"], "content": content}));
                        }
                        Some("text") => parts.push(json!({"type": "text", "text": block["text"]})),
                        Some("image") => {
                            let source = &block["source"];
                            let url = match source["type"].as_str() {
                                Some("base64") => format!(
                                    "data:{};base64,{}",
                                    source["media_type"].as_str().unwrap_or("image/png"),
                                    source["data"].as_str().unwrap_or("")
                                ),
                                Some("url") => source["url"].as_str().unwrap_or("").to_owned(),
                                _ => {
                                    return Err(Unsupported(format!(
                                        "messages[{i}].content: an image from a file cannot be sent to an OpenAI-compatible backend (base64 and url can)"
                                    )));
                                }
                            };
                            parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
                        }
                        other => {
                            return Err(Unsupported(format!(
                                "messages[{i}].content: a block of type {} cannot be sent to an OpenAI-compatible backend (text, image and tool_result can)",
                                other.unwrap_or("(none)")
                            )));
                        }
                    }
                }
                if !parts.is_empty() {
                    messages.push(json!({"role": "user", "content": parts}));
                }
            }
            "assistant" => {
                let mut text = String::new();
                let mut calls = Vec::new();
                for block in blocks {
                    match block["type"].as_str() {
                        Some("text") => text.push_str(block["text"].as_str().unwrap_or("")),
                        Some("tool_use") => calls.push(json!({"id": block["id"], "type": "function",
                            "function": {"name": block["name"], "arguments": block["input"].to_string()}})),
                        // Earlier reasoning: an OpenAI chat request has no place for it.
                        Some("thinking" | "redacted_thinking") => {}
                        other => {
                            return Err(Unsupported(format!(
                                "messages[{i}].content: a block of type {} cannot be sent to an OpenAI-compatible backend",
                                other.unwrap_or("(none)")
                            )));
                        }
                    }
                }
                let mut message = json!({"role": "assistant",
                    "content": if text.is_empty() { Value::Null } else { Value::from(text) }});
                if !calls.is_empty() {
                    message["tool_calls"] = Value::Array(calls);
                }
                messages.push(message);
            }
            other => {
                return Err(Unsupported(format!(
                    "messages[{i}].role {other:?}: Anthropic messages are from the user or the assistant"
                )));
            }
        }
    }
    out.insert("messages".into(), Value::Array(messages));
    if let Some(bound) = doc.get("max_tokens").and_then(Value::as_u64) {
        out.insert("max_completion_tokens".into(), Value::from(bound));
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stop_sequences", "stop"),
    ] {
        if let Some(v) = doc.get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), v.clone());
        }
    }
    if doc.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), Value::Bool(true));
        // Anthropic's stream ends with the usage; OpenAI's only when asked.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(user) = doc
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), Value::from(user));
    }
    let tools = doc.get("tools").and_then(Value::as_array).unwrap_or(&empty);
    if !tools.is_empty() {
        let mut functions = Vec::new();
        for (i, tool) in tools.iter().enumerate() {
            if tool
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t != "custom")
            {
                return Err(Unsupported(format!(
                    "tools[{i}]: Anthropic's server tools ({}) cannot be sent to an OpenAI-compatible backend",
                    tool["type"]
                )));
            }
            let mut function = json!({"name": tool["name"], "parameters": tool["input_schema"]});
            if let Some(d) = tool.get("description") {
                function["description"] = d.clone();
            }
            functions.push(json!({"type": "function", "function": function}));
        }
        out.insert("tools".into(), Value::Array(functions));
    }
    if let Some(choice) = doc.get("tool_choice").filter(|c| !c.is_null()) {
        let mapped = match choice["type"].as_str() {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => json!({"type": "function", "function": {"name": choice["name"]}}),
            _ => {
                return Err(Unsupported(format!(
                    "tool_choice {choice} cannot be sent to an OpenAI-compatible backend"
                )));
            }
        };
        out.insert("tool_choice".into(), mapped);
        if choice["disable_parallel_tool_use"] == true && !tools.is_empty() {
            out.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
    }
    Ok(out)
}

/// OpenAI's finish reason as Anthropic's stop reason.
fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// OpenAI's `usage` as Anthropic's (cached prompt tokens counted beside the others).
fn usage_from_openai(usage: &Value) -> Value {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let cached = n(&usage["prompt_tokens_details"]["cached_tokens"]);
    json!({"input_tokens": n(&usage["prompt_tokens"]).saturating_sub(cached),
           "output_tokens": n(&usage["completion_tokens"]),
           "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached})
}

/// An OpenAI chat completion as an Anthropic message.
pub fn answer_from_openai(answer: &Value) -> Value {
    let choice = &answer["choices"][0];
    let message = &choice["message"];
    let mut content = Vec::new();
    for text in [&message["content"], &message["refusal"]] {
        if let Some(t) = text.as_str().filter(|t| !t.is_empty()) {
            content.push(json!({"type": "text", "text": t}));
        }
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        let function = &call["function"];
        let input: Value = function["arguments"]
            .as_str()
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_else(|| json!({}));
        content.push(
            json!({"type": "tool_use", "id": call["id"], "name": function["name"], "input": input}),
        );
    }
    json!({"id": answer["id"], "type": "message", "role": "assistant", "model": answer["model"],
           "content": content, "stop_reason": stop_reason(choice["finish_reason"].as_str()),
           "stop_sequence": null, "usage": usage_from_openai(&answer["usage"])})
}

/// An OpenAI (or other, see [`super::error_to_openai`]) error body, answered with `status`, as
/// Anthropic's.
pub fn error_from_openai(status: u16, body: &Value) -> Value {
    let kind = match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    };
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("The backend refused the call.");
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// The content block a stream is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    /// A tool call, by its OpenAI index.
    Tool(u64),
}

/// An OpenAI stream (with its usage chunk) as Anthropic's events.
#[derive(Debug, Default)]
pub struct StreamFromOpenAI {
    started: bool,
    /// `message_stop` (or an error event) was sent: nothing follows.
    ended: bool,
    /// The open block and its Anthropic index.
    open: Option<(Open, u64)>,
    blocks: u64,
    stop: Option<String>,
    usage: Value,
}

impl StreamFromOpenAI {
    fn start(&mut self, chunk: &Value, out: &mut Vec<Event>) {
        if self.started {
            return;
        }
        self.started = true;
        out.push(Event::typed(json!({"type": "message_start", "message": {
            "id": chunk["id"], "type": "message", "role": "assistant", "content": [],
            "model": chunk["model"], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0}}})));
    }

    fn close(&mut self, out: &mut Vec<Event>) {
        if let Some((_, index)) = self.open.take() {
            out.push(Event::typed(
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    fn open(&mut self, kind: Open, block: Value, out: &mut Vec<Event>) -> u64 {
        if let Some((open, index)) = self.open
            && open == kind
        {
            return index;
        }
        self.close(out);
        let index = self.blocks;
        self.blocks += 1;
        self.open = Some((kind, index));
        out.push(Event::typed(
            json!({"type": "content_block_start", "index": index,
                                      "content_block": block}),
        ));
        index
    }

    /// The closing events: the open block's end, the stop reason and usage, `message_stop`.
    fn finish_message(&mut self, out: &mut Vec<Event>) {
        if !self.started || self.ended {
            return;
        }
        self.ended = true;
        self.close(out);
        let mut usage = usage_from_openai(&self.usage);
        if self.usage.is_null() {
            usage = json!({"output_tokens": 0});
        }
        out.push(Event::typed(json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason(self.stop.as_deref()), "stop_sequence": null},
            "usage": usage})));
        out.push(Event::typed(json!({"type": "message_stop"})));
    }
}

impl Stage for StreamFromOpenAI {
    fn push(&mut self, event: Event, out: &mut Vec<Event>) {
        let data = match event {
            Event::Done => return self.finish_message(out),
            Event::Json { data, .. } => data,
            // Parsed before it reaches a stage (`Translator::through`): never here.
            Event::Raw { .. } => return,
        };
        if self.ended {
            return;
        }
        if data.get("error").is_some_and(|e| !e.is_null()) {
            self.ended = true;
            out.push(Event::typed(json!({"type": "error", "error": {"type": "api_error",
                "message": data["error"]["message"].as_str().unwrap_or("The backend's stream failed.")}})));
            return;
        }
        self.start(&data, out);
        if data.get("usage").is_some_and(Value::is_object) {
            self.usage = data["usage"].clone();
        }
        let Some(choice) = data["choices"].get(0) else {
            return;
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            let index = self.open(Open::Text, json!({"type": "text", "text": ""}), out);
            // The common event, written without building a document.
            let text = serde_json::to_string(text).unwrap_or_default();
            out.push(Event::Raw {
                name: Some("content_block_delta"),
                data: format!(
                    r#"{{"type":"content_block_delta","index":{index},"delta":{{"type":"text_delta","text":{text}}}}}"#
                ),
            });
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let tool = call["index"].as_u64().unwrap_or(0);
            // A call's deltas share its index (some servers repeat its id on each): a new index
            // is a new call.
            let starts = self.open.is_none_or(|(open, _)| open != Open::Tool(tool));
            if starts {
                // A new call: the block before it ends.
                self.close(out);
            }
            let index = self.open(
                Open::Tool(tool),
                json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": {}}),
                out,
            );
            if let Some(args) = call["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                out.push(Event::typed(
                    json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": args}}),
                ));
            }
        }
        if let Some(finish) = choice["finish_reason"].as_str() {
            self.stop = Some(finish.to_owned());
        }
    }

    fn end(&mut self, out: &mut Vec<Event>) {
        // A stream that ended without `[DONE]` but finished its choice is complete (some
        // OpenAI-compatible servers omit it); one cut before that ends in an error event.
        if self.stop.is_some() {
            self.finish_message(out);
        } else if self.started && !self.ended {
            self.ended = true;
            out.push(Event::typed(
                json!({"type": "error", "error": {"type": "api_error",
                "message": "The backend's stream ended before the answer was complete."}}),
            ));
        }
    }
}
