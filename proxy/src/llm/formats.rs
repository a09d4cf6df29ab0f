//! Where each provider reports a call's usage and model, in JSON bodies and streamed events.
//!
//! - OpenAI: `usage` with `prompt_tokens`/`completion_tokens` (Chat Completions, Embeddings) or
//!   `input_tokens`/`output_tokens` (Responses, whose streamed events nest it in `response`);
//!   cached tokens (`*_tokens_details.cached_tokens`) are part of the prompt count and reasoning
//!   tokens part of the completion count.
//! - Anthropic: `usage` with `input_tokens`, `output_tokens`, `cache_creation_input_tokens` and
//!   `cache_read_input_tokens` (the cache counts are beside `input_tokens`, not in it); streamed,
//!   `message_start` carries `message.usage` and each `message_delta` a cumulative `usage`.
//! - Gemini: `usageMetadata` with `promptTokenCount` (cached included),
//!   `cachedContentTokenCount`, `candidatesTokenCount`, `thoughtsTokenCount` (beside the
//!   candidates) and `toolUsePromptTokenCount`; the model is `modelVersion`.
//!
//! A later report replaces an earlier one field by field: streamed counts are cumulative.

use serde_json::Value;
use tollgate_crds::resources::Metering;

use super::usage::Usage;

/// The top-level members that can carry usage or the model, in any provider's JSON body.
pub const MEMBERS: &[&str] = &[
    "model",
    "usage",
    "usageMetadata",
    "modelVersion",
    "response",
    "message",
];

/// What a response reported so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// The usage, once any was reported.
    pub usage: Option<Usage>,
    /// The model that answered, as the response names it.
    pub model: Option<String>,
    /// A streamed report that comes only once the call is over: OpenAI's usage (its only report),
    /// Anthropic's `message_delta`, Gemini's chunk with a `finishReason`. Before it, the counts are
    /// running totals (Anthropic's `message_start` says 1 output token).
    pub last: bool,
}

impl Report {
    /// Reads one JSON document (a whole body, an SSE event's data, or a member found by
    /// [`super::json_scan`] wrapped as `{name: value}`).
    pub fn read(&mut self, metering: Metering, doc: &Value) {
        match metering {
            Metering::Requests => {}
            Metering::OpenAI => {
                // Streamed Responses events nest the response (and its final usage).
                let doc = doc.get("response").filter(|r| r.is_object()).unwrap_or(doc);
                self.model_from(doc, "model");
                if let Some(usage) = doc.get("usage").filter(|u| u.is_object()) {
                    self.openai(usage);
                    self.last = true;
                }
            }
            Metering::Anthropic => {
                // `message_start` nests the message; `message_delta` has `usage` at the top.
                let message = doc.get("message").filter(|m| m.is_object());
                for part in message.into_iter().chain(std::iter::once(doc)) {
                    self.model_from(part, "model");
                    if let Some(usage) = part.get("usage").filter(|u| u.is_object()) {
                        self.anthropic(usage);
                    }
                }
                let event = doc.get("type").and_then(Value::as_str);
                if matches!(event, Some("message_delta" | "message_stop")) {
                    self.last = true;
                }
            }
            Metering::Gemini => {
                self.model_from(doc, "modelVersion");
                if let Some(usage) = doc.get("usageMetadata").filter(|u| u.is_object()) {
                    self.gemini(usage);
                }
                let finished = doc
                    .get("candidates")
                    .and_then(Value::as_array)
                    .is_some_and(|c| c.iter().any(|c| c.get("finishReason").is_some()));
                if finished {
                    self.last = true;
                }
            }
        }
    }

    fn model_from(&mut self, doc: &Value, member: &str) {
        if let Some(model) = doc.get(member).and_then(Value::as_str) {
            self.model = Some(model.to_owned());
        }
    }

    fn openai(&mut self, usage: &Value) {
        let first = |names: [&str; 2]| names.iter().find_map(|n| count(usage, n));
        let detail = |outer: [&str; 2], inner: &str| {
            outer
                .iter()
                .find_map(|o| usage.get(*o).and_then(|d| count(d, inner)))
                .unwrap_or(0)
        };
        let prompt = first(["prompt_tokens", "input_tokens"]).unwrap_or(0);
        let completion = first(["completion_tokens", "output_tokens"]).unwrap_or(0);
        let cached = detail(
            ["prompt_tokens_details", "input_tokens_details"],
            "cached_tokens",
        )
        .min(prompt);
        let reasoning = detail(
            ["completion_tokens_details", "output_tokens_details"],
            "reasoning_tokens",
        )
        .min(completion);
        self.usage = Some(Usage {
            input: prompt - cached,
            cache_read: cached,
            cache_write: 0,
            output: completion - reasoning,
            reasoning,
        });
    }

    fn anthropic(&mut self, usage: &Value) {
        let u = self.usage.get_or_insert_with(Usage::default);
        for (name, field) in [
            ("input_tokens", &mut u.input),
            ("cache_read_input_tokens", &mut u.cache_read),
            ("cache_creation_input_tokens", &mut u.cache_write),
            ("output_tokens", &mut u.output),
        ] {
            if let Some(n) = count(usage, name) {
                *field = n;
            }
        }
    }

    fn gemini(&mut self, usage: &Value) {
        let n = |name| count(usage, name).unwrap_or(0);
        let cached = n("cachedContentTokenCount").min(n("promptTokenCount"));
        self.usage = Some(Usage {
            input: n("promptTokenCount") - cached + n("toolUsePromptTokenCount"),
            cache_read: cached,
            cache_write: 0,
            output: n("candidatesTokenCount"),
            reasoning: n("thoughtsTokenCount"),
        });
    }
}

/// A token count (a non-negative integer; anything else is not a count).
fn count(obj: &Value, name: &str) -> Option<u64> {
    obj.get(name).and_then(Value::as_u64)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(metering: Metering, docs: &[Value]) -> Report {
        let mut report = Report::default();
        for doc in docs {
            report.read(metering, doc);
        }
        report
    }

    #[test]
    fn openai_chat_responses_and_embeddings() {
        let chat = read(
            Metering::OpenAI,
            &[
                json!({"model": "gpt-4o-2024-08-06", "usage": {"prompt_tokens": 100, "completion_tokens": 50,
                "prompt_tokens_details": {"cached_tokens": 40}, "completion_tokens_details": {"reasoning_tokens": 20}}}),
            ],
        );
        assert_eq!(chat.model.as_deref(), Some("gpt-4o-2024-08-06"));
        assert_eq!(
            chat.usage,
            Some(Usage {
                input: 60,
                cache_read: 40,
                cache_write: 0,
                output: 30,
                reasoning: 20
            })
        );
        let responses = read(
            Metering::OpenAI,
            &[
                json!({"type": "response.created", "response": {"model": "o4-mini", "usage": null}}),
                json!({"type": "response.completed", "response": {"model": "o4-mini", "usage": {"input_tokens": 10,
                    "output_tokens": 7, "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 5}}}}),
            ],
        );
        assert_eq!(responses.model.as_deref(), Some("o4-mini"));
        assert_eq!(
            responses
                .usage
                .map(|u| (u.input_tokens(), u.output_tokens(), u.reasoning)),
            Some((10, 7, 5))
        );
        let embeddings = read(
            Metering::OpenAI,
            &[
                json!({"object": "list", "model": "text-embedding-3-small", "usage": {"prompt_tokens": 8, "total_tokens": 8}}),
            ],
        );
        assert_eq!(
            embeddings
                .usage
                .map(|u| (u.input_tokens(), u.output_tokens())),
            Some((8, 0))
        );
    }

    #[test]
    fn anthropic_streamed_counts_accumulate_field_by_field() {
        let report = read(
            Metering::Anthropic,
            &[
                json!({"type": "message_start", "message": {"model": "claude-opus-4-6", "usage": {"input_tokens": 12,
                    "cache_creation_input_tokens": 300, "cache_read_input_tokens": 2000, "output_tokens": 1}}}),
                json!({"type": "content_block_delta", "delta": {"text": "Hi"}}),
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 42}}),
            ],
        );
        assert_eq!(report.model.as_deref(), Some("claude-opus-4-6"));
        assert!(report.last, "message_delta is the last report");
        let started = read(
            Metering::Anthropic,
            &[
                json!({"type": "message_start", "message": {"usage": {"input_tokens": 12, "output_tokens": 1}}}),
            ],
        );
        assert!(!started.last, "message_start's counts are running totals");
        assert_eq!(
            report.usage,
            Some(Usage {
                input: 12,
                cache_read: 2000,
                cache_write: 300,
                output: 42,
                reasoning: 0
            })
        );
    }

    #[test]
    fn gemini_thoughts_and_cached_content() {
        let report = read(
            Metering::Gemini,
            &[
                json!({"modelVersion": "gemini-2.5-flash", "usageMetadata": {"promptTokenCount": 100,
                "cachedContentTokenCount": 60, "candidatesTokenCount": 20, "thoughtsTokenCount": 30, "totalTokenCount": 150}}),
            ],
        );
        assert_eq!(report.model.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(
            report.usage,
            Some(Usage {
                input: 40,
                cache_read: 60,
                cache_write: 0,
                output: 20,
                reasoning: 30
            })
        );
    }

    #[test]
    fn a_format_does_not_read_another_providers_fields() {
        let gemini_doc = json!({"usageMetadata": {"promptTokenCount": 5}});
        assert_eq!(read(Metering::OpenAI, &[gemini_doc]).usage, None);
        let openai_doc = json!({"usage": {"prompt_tokens": 5}});
        assert_eq!(read(Metering::Gemini, &[openai_doc]).usage, None);
    }
}
