//! Gemini `generateContent` behind an OpenAI Chat Completions front door: the call translated
//! to Gemini's request (its model in the path), its answer, stream and errors brought back.

use serde_json::{Map, Value, json};

use super::common::{
    CHAT_MEMBERS, Stage, Unsupported, check_members, now_seconds, openai_chunk, openai_usage_chunk,
    parse_data_url, text_of,
};
use super::sse::Event;

/// Between a tool call id's own part and the `thoughtSignature` Gemini attached to the call.
const SIGNATURE_MARK: &str = ".sig.";

/// An OpenAI Chat Completions request as a Gemini request, and the path it goes to
/// (`/v1beta/models/{model}:generateContent`, or `:streamGenerateContent?alt=sse`).
pub fn request_from_openai(
    doc: &Map<String, Value>,
) -> Result<(String, Map<String, Value>), Unsupported> {
    // Gemini also takes structured output, a seed and the penalties.
    let members = [
        CHAT_MEMBERS,
        &[
            "response_format",
            "seed",
            "presence_penalty",
            "frequency_penalty",
        ],
    ]
    .concat();
    check_members(doc, "the Gemini API", &members)?;
    if doc.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        return Err(Unsupported(
            "parallel_tool_calls: false cannot be honoured by a Gemini backend".into(),
        ));
    }
    let model = doc.get("model").and_then(Value::as_str).unwrap_or("");
    if model.is_empty()
        || !model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(Unsupported(format!(
            "the model {model:?} cannot be named in a Gemini request path (letters, digits, '-', '.' and '_')"
        )));
    }
    let streamed = doc.get("stream").and_then(Value::as_bool) == Some(true);
    let path = match streamed {
        true => format!("/v1beta/models/{model}:streamGenerateContent?alt=sse"),
        false => format!("/v1beta/models/{model}:generateContent"),
    };
    let mut out = Map::new();
    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // Gemini answers a function call by its name; OpenAI by the call's id.
    let mut call_names: Vec<(String, Value)> = Vec::new();
    let empty = Vec::new();
    for (i, m) in doc
        .get("messages")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
        .iter()
        .enumerate()
    {
        let content = &m["content"];
        match m["role"].as_str().unwrap_or("") {
            "system" | "developer" => {
                system.push(json!({"text": text_of(content, &format!("messages[{i}]"))?}))
            }
            "user" => push_content(&mut contents, "user", user_parts(content, i)?),
            "assistant" => {
                let mut parts = Vec::new();
                if !content.is_null() {
                    let text = text_of(content, &format!("messages[{i}]"))?;
                    if !text.is_empty() {
                        parts.push(json!({"text": text}));
                    }
                }
                for call in m["tool_calls"].as_array().unwrap_or(&empty) {
                    let function = &call["function"];
                    let args: Value = serde_json::from_str(function["arguments"].as_str().unwrap_or("{}"))
                        .map_err(|_| Unsupported(format!(
                            "messages[{i}].tool_calls: the arguments of a tool call must be a JSON object to be sent to a Gemini backend"
                        )))?;
                    let mut part =
                        json!({"functionCall": {"name": function["name"], "args": args}});
                    if let Some(id) = call["id"].as_str() {
                        call_names.push((id.to_owned(), function["name"].clone()));
                        // Gemini's signature of its reasoning travels in the call's id: it wants
                        // it back with the call.
                        if let Some((_, signature)) = id.split_once(SIGNATURE_MARK) {
                            part["thoughtSignature"] = Value::from(signature);
                        }
                    }
                    parts.push(part);
                }
                push_content(&mut contents, "model", parts);
            }
            "tool" => {
                let id = m["tool_call_id"].as_str().unwrap_or("");
                // The latest call with that id (ids repeat across a conversation's turns).
                let Some((_, name)) = call_names.iter().rev().find(|(c, _)| c == id) else {
                    return Err(Unsupported(format!(
                        "messages[{i}]: the tool result for {id:?} answers no tool call of an earlier assistant message (Gemini needs the function's name)"
                    )));
                };
                let text = text_of(content, &format!("messages[{i}]"))?;
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(o)) => Value::Object(o),
                    _ => json!({"content": text}),
                };
                push_content(
                    &mut contents,
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                );
            }
            other => {
                return Err(Unsupported(format!(
                    "messages[{i}].role {other:?} cannot be sent to a Gemini backend"
                )));
            }
        }
    }
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": system}));
    }
    out.insert("contents".into(), Value::Array(contents));
    let mut config = Map::new();
    if let Some(bound) = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|n| doc.get(*n).and_then(Value::as_u64))
    {
        config.insert("maxOutputTokens".into(), Value::from(bound));
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(v) = doc.get(from).filter(|v| !v.is_null()) {
            config.insert(to.into(), v.clone());
        }
    }
    match doc.get("stop") {
        Some(Value::String(s)) => {
            config.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            config.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(format) = doc.get("response_format").filter(|f| !f.is_null()) {
        match format["type"].as_str() {
            Some("text") => {}
            Some("json_object") => {
                config.insert("responseMimeType".into(), json!("application/json"));
            }
            Some("json_schema") => {
                config.insert("responseMimeType".into(), json!("application/json"));
                config.insert(
                    "responseJsonSchema".into(),
                    format["json_schema"]["schema"].clone(),
                );
            }
            _ => {
                return Err(Unsupported(format!(
                    "response_format {format} cannot be sent to a Gemini backend"
                )));
            }
        }
    }
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    let tools = doc.get("tools").and_then(Value::as_array).unwrap_or(&empty);
    if !tools.is_empty() {
        let mut declarations = Vec::new();
        for (i, tool) in tools.iter().enumerate() {
            if tool["type"].as_str() != Some("function") {
                return Err(Unsupported(format!(
                    "tools[{i}]: only function tools can be sent to a Gemini backend"
                )));
            }
            let f = &tool["function"];
            let mut d = json!({"name": f["name"]});
            if let Some(desc) = f.get("description") {
                d["description"] = desc.clone();
            }
            if let Some(p) = f.get("parameters") {
                d["parametersJsonSchema"] = p.clone();
            }
            declarations.push(d);
        }
        out.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
    }
    if let Some(choice) = doc.get("tool_choice").filter(|c| !c.is_null()) {
        let config = match choice {
            Value::String(s) if s == "auto" => json!({"mode": "AUTO"}),
            Value::String(s) if s == "none" => json!({"mode": "NONE"}),
            Value::String(s) if s == "required" => json!({"mode": "ANY"}),
            Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
                json!({"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]})
            }
            _ => {
                return Err(Unsupported(format!(
                    "tool_choice {choice} cannot be sent to a Gemini backend"
                )));
            }
        };
        out.insert(
            "toolConfig".into(),
            json!({"functionCallingConfig": config}),
        );
    }
    Ok((path, out))
}

/// Appends `parts` as content of `role`, joined to the last content of the same role.
fn push_content(contents: &mut Vec<Value>, role: &str, parts: Vec<Value>) {
    if parts.is_empty() {
        return;
    }
    if let Some(last) = contents.last_mut()
        && last["role"] == role
        && let Some(p) = last["parts"].as_array_mut()
    {
        p.extend(parts);
        return;
    }
    contents.push(json!({"role": role, "parts": parts}));
}

/// The media type of an image URL, from its extension: Gemini needs it with the URL.
fn image_type(url: &str) -> Option<&'static str> {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    let ext = path.rsplit_once('.')?.1.to_owned();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        _ => return None,
    })
}

fn user_parts(content: &Value, i: usize) -> Result<Vec<Value>, Unsupported> {
    let parts = match content {
        Value::String(s) => return Ok(vec![json!({"text": s})]),
        Value::Array(parts) => parts,
        _ => {
            return Err(Unsupported(format!(
                "messages[{i}].content must be a string or an array of parts"
            )));
        }
    };
    parts
        .iter()
        .map(|part| match part["type"].as_str() {
            Some("text") => Ok(json!({"text": part["text"]})),
            Some("image_url") => {
                let url = part["image_url"]["url"].as_str().unwrap_or("");
                if let Some((media_type, data)) = parse_data_url(url) {
                    return Ok(json!({"inlineData": {"mimeType": media_type, "data": data}}));
                }
                let Some(media_type) = image_type(url) else {
                    return Err(Unsupported(format!(
                        "messages[{i}].content: a Gemini backend needs an image's type; send a data: URL, or a URL whose path ends in .png, .jpg, .jpeg, .webp, .gif, .heic or .heif"
                    )));
                };
                Ok(json!({"fileData": {"mimeType": media_type, "fileUri": url}}))
            }
            other => Err(Unsupported(format!(
                "messages[{i}].content: a part of type {} cannot be sent to a Gemini backend (text and image_url can)",
                other.unwrap_or("(none)")
            ))),
        })
        .collect()
}

/// Gemini's finish reason as OpenAI's (`tool_calls` when the candidate called functions).
fn finish_reason(reason: &str, called: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if called => "tool_calls",
        _ => "stop",
    }
}

/// Gemini's `usageMetadata` as OpenAI's `usage`: thoughts count as completion (reasoning)
/// tokens, tool-use prompts as prompt tokens.
fn usage_to_openai(usage: &Value) -> Value {
    let n = |name: &str| usage[name].as_u64().unwrap_or(0);
    let prompt = n("promptTokenCount") + n("toolUsePromptTokenCount");
    let completion = n("candidatesTokenCount") + n("thoughtsTokenCount");
    json!({"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": prompt + completion,
           "prompt_tokens_details": {"cached_tokens": n("cachedContentTokenCount")},
           "completion_tokens_details": {"reasoning_tokens": n("thoughtsTokenCount")}})
}

/// The text and function calls of a candidate's parts (thought summaries left out). Each call's
/// id is `call_{answer}_{n}` (unique across a conversation's turns), with Gemini's
/// `thoughtSignature` after [`SIGNATURE_MARK`] when it gave one.
fn read_parts(candidate: &Value, answer: &str, first_call: usize) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for part in candidate["content"]["parts"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if part["thought"] == true {
            continue;
        }
        if let Some(t) = part["text"].as_str() {
            text.push_str(t);
        }
        if let Some(call) = part.get("functionCall") {
            let index = first_call + calls.len();
            let mut id = call["id"]
                .as_str()
                .map_or_else(|| format!("call_{answer}_{index}"), str::to_owned);
            if let Some(signature) = part["thoughtSignature"].as_str() {
                id.push_str(SIGNATURE_MARK);
                id.push_str(signature);
            }
            calls.push(json!({"index": index, "id": id, "type": "function",
                "function": {"name": call["name"], "arguments": call["args"].to_string()}}));
        }
    }
    (text, calls)
}

/// A Gemini answer as an OpenAI chat completion.
pub fn answer_to_openai(answer: &Value) -> Value {
    let candidate = &answer["candidates"][0];
    let (text, mut calls) = read_parts(candidate, &answer_id(answer), 0);
    for call in &mut calls {
        if let Some(c) = call.as_object_mut() {
            c.remove("index");
        }
    }
    let finish = match candidate["finishReason"].as_str() {
        Some(reason) => finish_reason(reason, !calls.is_empty()),
        // No candidate: the prompt was blocked.
        None if answer["promptFeedback"]["blockReason"].is_string() => "content_filter",
        None => "stop",
    };
    let mut message = json!({"role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::from(text) },
        "refusal": null});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    json!({"id": answer["responseId"].as_str().unwrap_or("chatcmpl-gemini"),
           "object": "chat.completion", "created": now_seconds(), "model": answer["modelVersion"],
           "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
           "usage": usage_to_openai(&answer["usageMetadata"])})
}

/// An answer's identity for its calls' ids: its `responseId`, else one made here.
fn answer_id(answer: &Value) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    match answer["responseId"].as_str() {
        Some(id) => id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(32)
            .collect(),
        None => format!(
            "{:x}{:x}",
            now_seconds(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ),
    }
}

/// A Gemini error body (`{"error": {"code", "message", "status"}}`) as OpenAI's.
pub fn error_to_openai(body: &Value) -> Value {
    let error = &body["error"];
    json!({"error": {"message": error["message"].as_str().unwrap_or("The backend refused the call."),
                     "type": error["status"].as_str().map_or("api_error".to_owned(), str::to_ascii_lowercase),
                     "param": null, "code": error["status"]}})
}

/// A Gemini stream as OpenAI chunks (Gemini ends its stream without a marker: the chunks'
/// end is the stream's).
#[derive(Debug)]
pub struct StreamToOpenAI {
    include_usage: bool,
    started: bool,
    id: Value,
    model: Value,
    created: i64,
    calls: usize,
    usage: Option<Value>,
    /// The answer's identity, for its calls' ids.
    answer: String,
    /// A candidate finished (`finishReason`): the stream's end is the answer's.
    finished: bool,
    /// An error event came: nothing follows.
    failed: bool,
}

impl StreamToOpenAI {
    /// `include_usage`: the caller asked for the usage chunk.
    pub fn new(include_usage: bool) -> Self {
        Self {
            include_usage,
            started: false,
            id: Value::Null,
            model: Value::Null,
            created: now_seconds(),
            calls: 0,
            usage: None,
            answer: String::new(),
            finished: false,
            failed: false,
        }
    }
}

impl Stage for StreamToOpenAI {
    fn push(&mut self, event: Event, out: &mut Vec<Event>) {
        let Event::Json { data, .. } = event else {
            return;
        };
        if self.failed {
            return;
        }
        if data.get("error").is_some() {
            self.failed = true;
            out.push(Event::data(error_to_openai(&data)));
            return;
        }
        if !self.started {
            self.started = true;
            self.answer = answer_id(&data);
            self.id = json!(data["responseId"].as_str().unwrap_or("chatcmpl-gemini"));
            self.model = data["modelVersion"].clone();
            out.push(Event::data(openai_chunk(
                &self.id,
                &self.model,
                self.created,
                json!({"role": "assistant", "content": ""}),
                None,
            )));
        }
        if data["usageMetadata"].is_object() {
            self.usage = Some(usage_to_openai(&data["usageMetadata"]));
        }
        let candidate = &data["candidates"][0];
        let (text, calls) = read_parts(candidate, &self.answer, self.calls);
        self.calls += calls.len();
        let mut delta = Map::new();
        if !text.is_empty() {
            delta.insert("content".into(), Value::from(text));
        }
        if !calls.is_empty() {
            delta.insert("tool_calls".into(), Value::Array(calls));
        }
        let finish = candidate["finishReason"]
            .as_str()
            .map(|r| finish_reason(r, self.calls > 0));
        self.finished |= finish.is_some();
        if !delta.is_empty() || finish.is_some() {
            out.push(Event::data(openai_chunk(
                &self.id,
                &self.model,
                self.created,
                Value::Object(delta),
                finish,
            )));
        }
    }

    fn end(&mut self, out: &mut Vec<Event>) {
        if !self.started || self.failed {
            return;
        }
        if !self.finished {
            // Cut before a candidate finished: the caller must not take it for a whole answer.
            out.push(Event::data(json!({"error": {
                "message": "The backend's stream ended before the answer was complete.",
                "type": "api_error", "param": null, "code": null}})));
            return;
        }
        if self.include_usage
            && let Some(usage) = self.usage.take()
        {
            out.push(Event::data(openai_usage_chunk(
                &self.id,
                &self.model,
                self.created,
                usage,
            )));
        }
        out.push(Event::Done);
    }
}
