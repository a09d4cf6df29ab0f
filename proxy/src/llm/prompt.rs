//! Prompt APIs: a route that publishes a prompt (`spec.prompt`). A caller's JSON body is checked
//! against the route's input schema and fills the prompt's placeholders; the call made from it is
//! an OpenAI Chat Completions call (translated for the backend like any other, metered and
//! budgeted the same); the model's answer goes back as `{"output", "model", "usage"}`, parsed and
//! checked when the route declares a response schema.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value, json};
use tollgate_crds::snapshot::Prompt;

/// A published prompt, its schemas compiled once.
pub struct PromptEntry {
    prompt: Prompt,
    input: jsonschema::Validator,
    response: Option<jsonschema::Validator>,
    /// The answer to a GET: what the API is and takes.
    description: Bytes,
}

impl std::fmt::Debug for PromptEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptEntry")
            .field("model", &self.prompt.model)
            .finish_non_exhaustive()
    }
}

/// Why a body was not made into a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// Not a JSON object.
    #[error("The body must be a JSON object (uncompressed), as the API's input schema describes.")]
    NotAnObject,
    /// The schema's complaint and where.
    #[error("The body does not match the API's input schema at {at}: {message}")]
    Schema { at: String, message: String },
}

/// What the model answered, as the caller gets it.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `{"output", "model", "usage"}`.
    Output(Value),
    /// The answer is not JSON matching the response schema; the text it was.
    Invalid { reason: String, text: String },
    /// The backend refused or failed: its status and (translated) body go as they are.
    Backend,
}

impl PromptEntry {
    /// The entry for a route's prompt; `None` when a schema does not compile (compile refused
    /// such a route already).
    pub fn new(route: &str, path: &str, prompt: &Prompt) -> Option<Self> {
        let input = jsonschema::validator_for(&prompt.input_schema).ok()?;
        let response = match &prompt.response_schema {
            Some(schema) => Some(jsonschema::validator_for(schema).ok()?),
            None => None,
        };
        let description = json!({"name": route, "method": "POST", "path": path,
            "description": prompt.description, "model": prompt.model,
            "inputSchema": prompt.input_schema, "responseSchema": prompt.response_schema});
        Some(Self {
            prompt: prompt.clone(),
            input,
            response,
            description: Bytes::from(description.to_string()),
        })
    }

    /// What a GET on the API answers: its name, path, model, description and schemas.
    pub fn description(&self) -> Bytes {
        self.description.clone()
    }

    /// The OpenAI Chat Completions call a caller's `body` makes.
    pub fn render(&self, body: &[u8]) -> Result<Bytes, InputError> {
        let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(body) else {
            return Err(InputError::NotAnObject);
        };
        let instance = Value::Object(doc);
        if let Err(e) = self.input.validate(&instance) {
            let at = e.instance_path().to_string();
            return Err(InputError::Schema {
                at: if at.is_empty() { "/".to_owned() } else { at },
                message: e.to_string(),
            });
        }
        let Value::Object(doc) = instance else {
            return Err(InputError::NotAnObject);
        };
        let mut system = self
            .prompt
            .system
            .as_deref()
            .map(|t| fill(t, &doc))
            .unwrap_or_default();
        if let Some(schema) = &self.prompt.response_schema {
            if !system.is_empty() {
                system.push_str("\n\n");
            }
            system.push_str(
                "Answer with one JSON value and nothing else (no prose, no code fence) that conforms to this JSON Schema:\n",
            );
            system.push_str(&schema.to_string());
        }
        let mut messages = Vec::new();
        if !system.is_empty() {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": fill(&self.prompt.user, &doc)}));
        let mut call = json!({"model": self.prompt.model, "messages": messages});
        if let Some(bound) = self.prompt.max_output_tokens {
            call["max_completion_tokens"] = json!(bound);
        }
        if let Some(t) = self.prompt.temperature {
            call["temperature"] = json!(t);
        }
        Ok(Bytes::from(call.to_string()))
    }

    /// The caller's answer from the model's (an OpenAI chat completion, translated from the
    /// backend's API when it speaks another), answered with `status`.
    pub fn answer(&self, status: StatusCode, body: &[u8]) -> Answer {
        if !status.is_success() {
            return Answer::Backend;
        }
        let Ok(completion) = serde_json::from_slice::<Value>(body) else {
            return Answer::Invalid {
                reason: "The backend's answer is not JSON.".into(),
                text: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
            };
        };
        let message = &completion["choices"][0]["message"];
        let text = message["content"]
            .as_str()
            .or_else(|| message["refusal"].as_str())
            .unwrap_or("")
            .to_owned();
        let output = match &self.response {
            None => Value::from(text.clone()),
            Some(validator) => {
                let Ok(value) = serde_json::from_str::<Value>(unfenced(&text)) else {
                    return Answer::Invalid {
                        reason: "The model's answer is not JSON.".into(),
                        text,
                    };
                };
                if let Err(e) = validator.validate(&value) {
                    let reason = format!(
                        "The model's answer does not match the response schema at {}: {e}",
                        e.instance_path()
                    );
                    return Answer::Invalid { reason, text };
                }
                value
            }
        };
        let usage = &completion["usage"];
        Answer::Output(json!({"output": output, "model": completion["model"],
            "usage": {"inputTokens": usage["prompt_tokens"], "outputTokens": usage["completion_tokens"]}}))
    }
}

/// `template` with each `{{name}}` replaced by the body's member `name`: text as it is,
/// anything else as JSON, nothing for an absent member. Inserted text is not scanned again.
fn fill(template: &str, doc: &Map<String, Value>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        out.push_str(&rest[..start]);
        match doc.get(after[..end].trim()) {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Null) | None => {}
            Some(other) => out.push_str(&other.to_string()),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// A JSON answer without the code fence some models put around it anyway.
fn unfenced(text: &str) -> &str {
    let text = text.trim();
    let Some(inner) = text.strip_prefix("```") else {
        return text;
    };
    let inner = inner.strip_suffix("```").unwrap_or(inner);
    // The fence's language tag (```json) ends at the first line break.
    match inner.split_once('\n') {
        Some((tag, body)) if !tag.trim_start().starts_with(['{', '[']) => body.trim(),
        _ => inner.trim(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(response_schema: Option<Value>) -> PromptEntry {
        let prompt = Prompt {
            model: "gpt-4o-mini".into(),
            description: Some("Sentiment of a text.".into()),
            system: Some("Classify {{ text }}.".into()),
            user: "Text: {{text}} ({{lang}}) {{n}}".into(),
            input_schema: json!({"type": "object", "required": ["text"],
                "properties": {"text": {"type": "string", "maxLength": 20},
                               "lang": {"type": "string"}, "n": {"type": "integer"}}}),
            response_schema,
            max_output_tokens: Some(30),
            temperature: Some(0.5),
        };
        PromptEntry::new("shop/sentiment", "/v1/sentiment", &prompt).expect("valid schemas")
    }

    #[test]
    fn a_body_fills_the_template_once_it_matches_the_schema() {
        let call: Value = serde_json::from_slice(
            &entry(None)
                .render(br#"{"text": "I {{lang}} it", "n": 3}"#)
                .expect("valid"),
        )
        .expect("json");
        assert_eq!(
            call,
            json!({"model": "gpt-4o-mini", "max_completion_tokens": 30, "temperature": 0.5,
                   "messages": [{"role": "system", "content": "Classify I {{lang}} it."},
                                {"role": "user", "content": "Text: I {{lang}} it () 3"}]}),
            "inserted text is not a template; an absent member is nothing"
        );
        assert_eq!(entry(None).render(b"[1]"), Err(InputError::NotAnObject));
        let Err(InputError::Schema { at, message }) = entry(None).render(br#"{"text": 5}"#) else {
            panic!("a schema error")
        };
        assert_eq!(at, "/text");
        assert!(message.contains("string"), "{message}");
        assert!(matches!(
            entry(None).render(br#"{"lang": "en"}"#),
            Err(InputError::Schema { .. })
        ));
        let with_schema = entry(Some(json!({"type": "object"})));
        let call: Value =
            serde_json::from_slice(&with_schema.render(br#"{"text": "x"}"#).expect("valid"))
                .expect("json");
        assert!(
            call["messages"][0]["content"]
                .as_str()
                .is_some_and(|s| s.ends_with(
                    r#"JSON Schema:
{"type":"object"}"#
                ))
        );
    }

    #[test]
    fn answers_are_parsed_and_checked_against_the_response_schema() {
        let completion = |content: &str| {
            json!({"model": "m", "choices": [{"message": {"content": content}}],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
            .to_string()
        };
        assert_eq!(
            entry(None).answer(StatusCode::OK, completion("positive").as_bytes()),
            Answer::Output(json!({"output": "positive", "model": "m",
                                  "usage": {"inputTokens": 3, "outputTokens": 4}}))
        );
        let schema = entry(Some(json!({"type": "object", "required": ["sentiment"],
            "properties": {"sentiment": {"enum": ["positive", "negative"]}}})));
        let Answer::Output(out) = schema.answer(
            StatusCode::OK,
            completion("```json\n{\"sentiment\": \"positive\"}\n```").as_bytes(),
        ) else {
            panic!("parsed")
        };
        assert_eq!(out["output"], json!({"sentiment": "positive"}));
        assert!(matches!(
            schema.answer(
                StatusCode::OK,
                completion(r#"{"sentiment": "meh"}"#).as_bytes()
            ),
            Answer::Invalid { .. }
        ));
        assert!(matches!(
            schema.answer(StatusCode::OK, completion("I think positive").as_bytes()),
            Answer::Invalid { .. }
        ));
        assert_eq!(
            schema.answer(StatusCode::TOO_MANY_REQUESTS, b"{}"),
            Answer::Backend
        );
        assert_eq!(unfenced("```\n[1]\n```"), "[1]");
        assert_eq!(unfenced("```{\"a\":1}```"), "{\"a\":1}");
    }
}
