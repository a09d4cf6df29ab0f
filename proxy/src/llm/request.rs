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
    /// The bound on output tokens the call is sent with (its own, or the plan's when it named
    /// none or more), times its parallel choices; 0 for an API that generates no output
    /// (embeddings, moderations, token counts); `None` for an API whose bound is not known.
    pub output_bound: Option<u64>,
    /// The body's size: the input estimate is made from it.
    pub body_bytes: usize,
    /// The body to send instead of the client's (a bound added or lowered,
    /// `stream_options.include_usage` added).
    pub rewritten: Option<Bytes>,
    /// The client did not ask for usage chunks: the one added for metering is kept from it.
    pub strip_usage_chunk: bool,
    /// An API that is free and reports no usage (token counts, moderations): a whole answer
    /// without usage costs the per-request price only.
    pub free_without_usage: bool,
}

/// Where an API keeps the call's bound on output tokens (per choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BoundField {
    /// A top-level member (`max_completion_tokens`, `max_tokens`, `max_output_tokens`).
    Top(&'static str),
    /// Gemini's `generationConfig.maxOutputTokens`.
    GeminiConfig,
    /// The API generates no output.
    NoOutput,
    /// Not known (a path Tollgate does not recognise): nothing is rewritten.
    Unknown,
}

/// The bound field of the API at `path` when the request names none.
fn bound_field(metering: Metering, path: &str) -> BoundField {
    let ends = |suffix: &str| path.ends_with(suffix);
    match metering {
        Metering::Requests => BoundField::Unknown,
        _ if ends("/embeddings")
            || ends("/moderations")
            || ends("/count_tokens")
            || ends(":countTokens")
            || ends(":embedContent")
            || ends(":batchEmbedContents") =>
        {
            BoundField::NoOutput
        }
        Metering::OpenAI if ends("/chat/completions") => BoundField::Top("max_completion_tokens"),
        Metering::OpenAI if ends("/completions") => BoundField::Top("max_tokens"),
        Metering::OpenAI if ends("/responses") => BoundField::Top("max_output_tokens"),
        Metering::Anthropic if ends("/messages") => BoundField::Top("max_tokens"),
        Metering::Gemini if path.contains(":generateContent") || ends(":streamGenerateContent") => {
            BoundField::GeminiConfig
        }
        _ => BoundField::Unknown,
    }
}

/// Reads `body` of a request to `path` on a route metered as `metering`, and sends it with a
/// bound of at most `max_output` output tokens in all (the plan's `reservation.maxOutputTokens`):
/// a call that names none, or more, gets that bound written into its request, so that what it is
/// charged when its usage is never reported is what the provider may bill. `None` when the body
/// is not a JSON object (every provider's calls are; a compressed or malformed body cannot be
/// estimated, and its model cannot be known).
pub fn inspect(
    metering: Metering,
    path: &str,
    body: &[u8],
    max_output: u64,
) -> Option<CallRequest> {
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
    let mut changed = false;
    let field = bound_field(metering, path);
    call.free_without_usage = field == BoundField::NoOutput && !path.ends_with("/embeddings");
    let number = |v: Option<&Value>| v.and_then(Value::as_u64);
    let choices = match metering {
        Metering::Gemini => number(
            doc.get("generationConfig")
                .and_then(|c| c.get("candidateCount")),
        ),
        _ => number(doc.get("n")),
    }
    .unwrap_or(1)
    .clamp(1, MAX_CHOICES);
    // Each choice may produce the bound: the plan's is shared among them.
    let per_choice_cap = (max_output / choices).max(1);
    call.output_bound = match field {
        BoundField::NoOutput => Some(0),
        BoundField::Unknown => ["max_completion_tokens", "max_tokens", "max_output_tokens"]
            .iter()
            .find_map(|name| number(doc.get(*name)))
            .map(|b| b.saturating_mul(choices)),
        BoundField::Top(default_name) => {
            // The member the client used, else the API's own.
            let name = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
                .into_iter()
                .find(|n| doc.contains_key(*n))
                .unwrap_or(default_name);
            let asked = number(doc.get(name));
            if asked.is_none_or(|b| b > per_choice_cap) {
                doc.insert(name.to_owned(), Value::from(per_choice_cap));
                changed = true;
            }
            Some(asked.unwrap_or(per_choice_cap).min(per_choice_cap) * choices)
        }
        BoundField::GeminiConfig => {
            let config = doc
                .entry("generationConfig")
                .or_insert_with(|| Value::Object(Default::default()));
            if !config.is_object() {
                *config = Value::Object(Default::default());
            }
            let asked = number(config.get("maxOutputTokens"));
            if asked.is_none_or(|b| b > per_choice_cap)
                && let Some(config) = config.as_object_mut()
            {
                config.insert("maxOutputTokens".to_owned(), Value::from(per_choice_cap));
                changed = true;
            }
            Some(asked.unwrap_or(per_choice_cap).min(per_choice_cap) * choices)
        }
    };
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
        call.strip_usage_chunk = true;
        changed = true;
    }
    if changed {
        match serde_json::to_vec(&doc) {
            Ok(body) => call.rewritten = Some(Bytes::from(body)),
            // Cannot happen for a document just parsed; sent as it came, nothing stripped.
            Err(_) => call.strip_usage_chunk = false,
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

    fn sent(call: &CallRequest) -> Value {
        serde_json::from_slice(call.rewritten.as_ref().expect("rewritten")).expect("json")
    }

    #[test]
    fn each_providers_bound_and_model() {
        let inspect = |m, path, body: &[u8]| inspect(m, path, body, 4096).expect("a JSON object");
        let openai = inspect(
            Metering::OpenAI,
            "/v1/chat/completions",
            br#"{"model":"gpt-4o","max_completion_tokens":100,"max_tokens":5,"n":3}"#,
        );
        assert_eq!(
            (openai.model.as_deref(), openai.output_bound),
            (Some("gpt-4o"), Some(300))
        );
        assert!(
            openai.rewritten.is_none(),
            "within the plan's bound: sent as it came"
        );
        let responses = inspect(
            Metering::OpenAI,
            "/v1/responses",
            br#"{"model":"o4-mini","max_output_tokens":64,"stream":true}"#,
        );
        assert_eq!(responses.output_bound, Some(64));
        assert!(
            responses.rewritten.is_none(),
            "the Responses API reports usage unasked"
        );
        let anthropic = inspect(
            Metering::Anthropic,
            "/v1/messages",
            br#"{"model":"claude-opus-4-6","max_tokens":1024,"messages":[]}"#,
        );
        assert_eq!(anthropic.output_bound, Some(1024));
        let gemini = inspect(
            Metering::Gemini,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            br#"{"contents":[],"generationConfig":{"maxOutputTokens":50,"candidateCount":2}}"#,
        );
        assert_eq!(
            (gemini.model.as_deref(), gemini.output_bound),
            (Some("gemini-2.5-flash"), Some(100))
        );
        let embeddings = inspect(
            Metering::OpenAI,
            "/v1/embeddings",
            br#"{"model":"e","input":"x"}"#,
        );
        assert_eq!(
            (embeddings.output_bound, embeddings.body_bytes),
            (Some(0), 25)
        );
        assert!(!embeddings.free_without_usage, "embeddings report usage");
        let counting = inspect(Metering::Anthropic, "/v1/messages/count_tokens", b"{}");
        assert!(counting.free_without_usage && counting.output_bound == Some(0));
        assert_eq!(
            super::inspect(Metering::OpenAI, "/v1/x", b"not json", 1),
            None
        );
        assert_eq!(super::inspect(Metering::OpenAI, "/v1/x", b"[1]", 1), None);
    }

    #[test]
    fn a_call_is_sent_with_no_more_than_the_plans_bound() {
        // No bound named: the API's own member is added.
        let none = inspect(
            Metering::OpenAI,
            "/v1/chat/completions",
            br#"{"model":"m"}"#,
            500,
        )
        .expect("json");
        assert_eq!(none.output_bound, Some(500));
        assert_eq!(sent(&none)["max_completion_tokens"], 500);
        // More than the plan's: lowered, in the member the client used, shared among choices.
        let more = inspect(
            Metering::OpenAI,
            "/v1/chat/completions",
            br#"{"model":"m","max_tokens":32000,"n":2}"#,
            500,
        )
        .expect("json");
        assert_eq!(more.output_bound, Some(500));
        assert_eq!(sent(&more)["max_tokens"], 250);
        assert!(sent(&more).get("max_completion_tokens").is_none());
        let gemini = inspect(
            Metering::Gemini,
            "/v1beta/models/g:generateContent",
            br#"{"contents":[]}"#,
            300,
        )
        .expect("json");
        assert_eq!(sent(&gemini)["generationConfig"]["maxOutputTokens"], 300);
        let anthropic = inspect(
            Metering::Anthropic,
            "/v1/messages",
            br#"{"model":"c","max_tokens":9000,"messages":[]}"#,
            4096,
        )
        .expect("json");
        assert_eq!(sent(&anthropic)["max_tokens"], 4096);
        // A path Tollgate does not know is sent as it came.
        let unknown =
            inspect(Metering::OpenAI, "/v1/other", br#"{"model":"m"}"#, 10).expect("json");
        assert!(unknown.rewritten.is_none() && unknown.output_bound.is_none());
    }

    #[test]
    fn a_streamed_chat_request_is_asked_for_usage_only_when_it_did_not_ask() {
        let inspect = |body: &[u8]| {
            super::inspect(Metering::OpenAI, "/v1/chat/completions", body, 4096).expect("json")
        };
        let call = inspect(
            br#"{"model":"gpt-4o","max_tokens":9,"stream":true,"stream_options":{"other":1}}"#,
        );
        assert!(call.strip_usage_chunk);
        assert_eq!(
            sent(&call)["stream_options"],
            serde_json::json!({"other": 1, "include_usage": true})
        );
        let asked =
            inspect(br#"{"max_tokens":9,"stream":true,"stream_options":{"include_usage":true}}"#);
        assert!(asked.rewritten.is_none() && !asked.strip_usage_chunk);
        let not_streamed = inspect(br#"{"max_tokens":9,"stream":false}"#);
        assert!(not_streamed.rewritten.is_none());
    }
}
