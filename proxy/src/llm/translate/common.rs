//! What every translation uses: the refusal ([`Unsupported`]), a stream's step ([`Stage`]), the
//! check that a request carries nothing the backend's API cannot, message text, `data:` URLs,
//! and OpenAI's chunk shapes (the pivot's).

use serde_json::{Map, Value, json};

use super::sse::Event;

/// A request member, or a value of one, that the backend's API cannot carry; the text says which
/// and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

/// One step of a stream's translation: events of one API in, another's out.
pub trait Stage: Send + Sync + std::fmt::Debug {
    /// Translates one event.
    fn push(&mut self, event: Event, out: &mut Vec<Event>);
    /// The backend's stream ended.
    fn end(&mut self, _out: &mut Vec<Event>) {}
}

/// The Chat Completions members every backend's translation carries (or knows to change
/// nothing in the answer).
pub const CHAT_MEMBERS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "store",
    "metadata",
    "service_tier",
];

/// Refuses a request member the backend's API (`target`) has no place for. Members with a value
/// that changes nothing (`n: 1`, `logprobs: false`, a zero penalty, text output) pass.
pub fn check_members(
    doc: &Map<String, Value>,
    target: &str,
    known: &[&str],
) -> Result<(), Unsupported> {
    for (name, value) in doc {
        if known.contains(&name.as_str()) || is_neutral(name, value) {
            continue;
        }
        return Err(Unsupported(format!(
            "`{name}` cannot be translated for {target}, which this route's backend speaks; leave it out or use a route without translation"
        )));
    }
    Ok(())
}

/// A member whose value asks for nothing beyond the default.
fn is_neutral(name: &str, value: &Value) -> bool {
    match name {
        _ if value.is_null() => true,
        "n" | "candidate_count" => value.as_u64() == Some(1),
        "logprobs" => value == &Value::Bool(false),
        "presence_penalty" | "frequency_penalty" => value.as_f64() == Some(0.0),
        "response_format" => value["type"] == "text",
        "modalities" => value == &json!(["text"]),
        _ => false,
    }
}

/// A message content's text: a string, or text parts joined.
pub fn text_of(content: &Value, at: &str) -> Result<String, Unsupported> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                match part["type"].as_str() {
                    Some("text") => text.push_str(part["text"].as_str().unwrap_or("")),
                    other => {
                        return Err(Unsupported(format!(
                            "{at}: only text can be sent here, not a part of type {}",
                            other.unwrap_or("(none)")
                        )));
                    }
                }
            }
            Ok(text)
        }
        _ => Err(Unsupported(format!("{at}: the content is not text"))),
    }
}

/// A `data:` URL's media type and base64 data.
pub fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    Some((media_type, data))
}

/// Seconds since the epoch, for OpenAI's `created`.
pub fn now_seconds() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// An OpenAI `chat.completion.chunk` with one choice.
pub fn openai_chunk(
    id: &Value,
    model: &Value,
    created: i64,
    delta: Value,
    finish: Option<&str>,
) -> Value {
    json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
           "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
}

/// OpenAI's last chunk of a stream that asked for usage: no choices, the usage.
pub fn openai_usage_chunk(id: &Value, model: &Value, created: i64, usage: Value) -> Value {
    json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
           "choices": [], "usage": usage})
}
