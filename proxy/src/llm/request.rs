//! What a call asks for, read from its body before it goes upstream: the model, its own bound on
//! output, and whether a streamed OpenAI chat request must be asked to report usage.

use bytes::Bytes;
use serde_json::Value;
use tollgate_crds::resources::Metering;

/// The largest request body read on a route with token metering (a call with images inlined as
/// base64 runs to megabytes). Larger ones are refused with 413: they cannot be estimated.
pub const MAX_BODY: usize = 32 * 1024 * 1024;

/// Most parallel choices (`n`, `candidateCount`) a bound is multiplied by.
const MAX_CHOICES: u64 = 128;

/// A call's request, as the reservation needs it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CallRequest {
    /// The model the request names (`model`, or Gemini's path `/models/{model}:...`).
    pub model: Option<String>,
    /// The request's own bound on output tokens, times its parallel choices.
    pub output_bound: Option<u64>,
    /// The body's size: the input estimate is made from it.
    pub body_bytes: usize,
    /// The body to send instead of the client's (`stream_options.include_usage` added).
    pub rewritten: Option<Bytes>,
    /// The client did not ask for usage chunks: the one added for metering is kept from it.
    pub strip_usage_chunk: bool,
}

/// Reads `body` of a request to `path` on a route metered as `metering`; `None` when it is not a
/// JSON object (every provider's calls are; a compressed or malformed body cannot be estimated,
/// and its model cannot be known).
pub fn inspect(metering: Metering, path: &str, body: &[u8]) -> Option<CallRequest> {
    let mut call = CallRequest {
        body_bytes: body.len(),
        ..CallRequest::default()
    };
    if metering == Metering::Gemini {
        call.model = gemini_model(path).map(str::to_owned);
    }
    let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    let number = |v: Option<&Value>| v.and_then(Value::as_u64);
    let (bound, choices) = match metering {
        Metering::Gemini => {
            let config = doc.get("generationConfig");
            (
                number(config.and_then(|c| c.get("maxOutputTokens"))),
                number(config.and_then(|c| c.get("candidateCount"))),
            )
        }
        _ => (
            ["max_completion_tokens", "max_tokens", "max_output_tokens"]
                .iter()
                .find_map(|name| number(doc.get(*name))),
            number(doc.get("n")),
        ),
    };
    let choices = choices.unwrap_or(1).clamp(1, MAX_CHOICES);
    call.output_bound = bound.map(|b| b.saturating_mul(choices));
    if call.model.is_none() {
        call.model = doc.get("model").and_then(Value::as_str).map(str::to_owned);
    }
    let streamed = doc.get("stream").and_then(Value::as_bool) == Some(true);
    let asked_for_usage = doc
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    // Chat Completions (and legacy Completions) report usage in a stream only when asked; the
    // Responses API always does.
    if metering == Metering::OpenAI
        && streamed
        && !asked_for_usage
        && path.ends_with("/completions")
    {
        let options = doc
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Default::default()));
        if !options.is_object() {
            *options = Value::Object(Default::default());
        }
        if let Some(options) = options.as_object_mut() {
            options.insert("include_usage".to_owned(), Value::Bool(true));
        }
        if let Ok(body) = serde_json::to_vec(&doc) {
            call.rewritten = Some(Bytes::from(body));
            call.strip_usage_chunk = true;
        }
    }
    Some(call)
}

/// The model in a Gemini path: `/v1beta/models/gemini-2.5-flash:generateContent`.
fn gemini_model(path: &str) -> Option<&str> {
    let after = path.split_once("/models/")?.1;
    let model = after.split_once(':').map_or(after, |(m, _)| m);
    (!model.is_empty() && !model.contains('/')).then_some(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_providers_bound_and_model() {
        let openai = inspect(
            Metering::OpenAI,
            "/v1/chat/completions",
            br#"{"model":"gpt-4o","max_completion_tokens":100,"max_tokens":5,"n":3}"#,
        )
        .expect("a JSON object");
        assert_eq!(
            (openai.model.as_deref(), openai.output_bound),
            (Some("gpt-4o"), Some(300))
        );
        let responses = inspect(
            Metering::OpenAI,
            "/v1/responses",
            br#"{"model":"o4-mini","max_output_tokens":64,"stream":true}"#,
        )
        .expect("a JSON object");
        assert_eq!(responses.output_bound, Some(64));
        assert!(
            responses.rewritten.is_none(),
            "the Responses API reports usage unasked"
        );
        let anthropic = inspect(
            Metering::Anthropic,
            "/v1/messages",
            br#"{"model":"claude-opus-4-6","max_tokens":1024,"messages":[]}"#,
        )
        .expect("a JSON object");
        assert_eq!(anthropic.output_bound, Some(1024));
        let gemini = inspect(
            Metering::Gemini,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            br#"{"contents":[],"generationConfig":{"maxOutputTokens":50,"candidateCount":2}}"#,
        )
        .expect("a JSON object");
        assert_eq!(
            (gemini.model.as_deref(), gemini.output_bound),
            (Some("gemini-2.5-flash"), Some(100))
        );
        let unbounded = inspect(
            Metering::OpenAI,
            "/v1/embeddings",
            br#"{"model":"e","input":"x"}"#,
        )
        .expect("a JSON object");
        assert_eq!((unbounded.output_bound, unbounded.body_bytes), (None, 25));
        assert_eq!(inspect(Metering::OpenAI, "/v1/x", b"not json"), None);
        assert_eq!(inspect(Metering::OpenAI, "/v1/x", b"[1]"), None);
    }

    #[test]
    fn a_streamed_chat_request_is_asked_for_usage_only_when_it_did_not_ask() {
        let call = inspect(
            Metering::OpenAI,
            "/v1/chat/completions",
            br#"{"model":"gpt-4o","stream":true,"stream_options":{"other":1}}"#,
        )
        .expect("a JSON object");
        assert!(call.strip_usage_chunk);
        let sent: Value =
            serde_json::from_slice(&call.rewritten.expect("rewritten")).expect("json");
        assert_eq!(
            sent["stream_options"],
            serde_json::json!({"other": 1, "include_usage": true})
        );
        let asked = inspect(
            Metering::OpenAI,
            "/v1/chat/completions",
            br#"{"stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .expect("a JSON object");
        assert!(asked.rewritten.is_none() && !asked.strip_usage_chunk);
        let not_streamed = inspect(
            Metering::OpenAI,
            "/v1/chat/completions",
            br#"{"stream":false}"#,
        )
        .expect("a JSON object");
        assert!(not_streamed.rewritten.is_none());
    }
}
