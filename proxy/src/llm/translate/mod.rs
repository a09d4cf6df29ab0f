//! Translation between provider APIs, for a route whose callers speak one API and whose backend
//! another (`spec.translate`, and fallback backends of another provider).
//!
//! OpenAI Chat Completions is the pivot: a call goes from the caller's API to OpenAI's (when
//! the caller speaks Anthropic Messages) and on to the backend's (Anthropic or Gemini); the
//! answer, its stream and its errors come back the same way. So each provider needs a
//! translation to and from OpenAI only ([`anthropic`], [`gemini`]), and an Anthropic caller
//! reaches a Gemini backend through both.
//!
//! What a caller asks for that the backend cannot do is refused with [`Unsupported`] (a 400
//! before anything is charged), never dropped: every member of a request is either translated,
//! or known to change nothing in the answer (`user`, `store`, `metadata`, `service_tier`).
//!
//! The backend's usage is metered before translation (`llm::meter` reads the backend's own
//! format), so what a call is charged does not depend on what the caller speaks.

pub mod anthropic;
pub mod common;
pub mod gemini;
pub mod sse;

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value, json};
use tollgate_crds::resources::Metering as Api;

use crate::llm::meter::Rewrite;
pub use common::{Stage, Unsupported};
use sse::Event;

/// Larger answers than this are not translated (an error is answered instead): they are read
/// whole first. Twice the largest request a metered call may send.
pub const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// A caller's call as one backend takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The path and query to append to the backend's base URL.
    pub path: String,
    /// The JSON body.
    pub body: Bytes,
}

/// Whether a request to `path` is a call of `api` that can be translated: Chat Completions,
/// Messages, or Gemini's `generateContent` (streamed or not).
pub fn is_call(api: Api, path: &str) -> bool {
    match api {
        Api::OpenAI => path.ends_with("/chat/completions"),
        Api::Anthropic => path.ends_with("/messages"),
        Api::Gemini => path.contains(":generateContent") || path.contains(":streamGenerateContent"),
        Api::Requests => false,
    }
}

/// The model a backend is asked for when the caller names `model` (the route's map, else the
/// name itself).
pub fn backend_model<'m>(models: &'m BTreeMap<String, String>, model: &'m str) -> &'m str {
    models.get(model).map_or(model, String::as_str)
}

/// The caller's call (`doc`, sent to `path_and_query` in the `caller` API) as the `backend` API
/// takes it, its model mapped by `models`.
pub fn request(
    caller: Api,
    backend: Api,
    path_and_query: &str,
    doc: &Map<String, Value>,
    models: &BTreeMap<String, String>,
) -> Result<Outbound, Unsupported> {
    let mut doc = doc.clone();
    if let Some(model) = doc.get("model").and_then(Value::as_str) {
        let mapped = backend_model(models, model).to_owned();
        doc.insert("model".into(), Value::from(mapped));
    }
    let encode = |doc: Map<String, Value>| Bytes::from(Value::Object(doc).to_string());
    if caller == backend {
        let path = match caller {
            Api::Gemini => gemini_path_with_model(path_and_query, models),
            _ => path_and_query.to_owned(),
        };
        return Ok(Outbound {
            path,
            body: encode(doc),
        });
    }
    let openai = match caller {
        Api::OpenAI => doc,
        Api::Anthropic => anthropic::request_to_openai(&doc)?,
        Api::Gemini | Api::Requests => {
            return Err(Unsupported(
                "only OpenAI Chat Completions and Anthropic Messages calls can be translated"
                    .into(),
            ));
        }
    };
    let (path, body) = match backend {
        Api::OpenAI => ("/v1/chat/completions".to_owned(), openai),
        Api::Anthropic => (
            "/v1/messages".to_owned(),
            anthropic::request_from_openai(&openai)?,
        ),
        Api::Gemini => gemini::request_from_openai(&openai)?,
        Api::Requests => {
            return Err(Unsupported("the backend's API is not known".into()));
        }
    };
    Ok(Outbound {
        path,
        body: encode(body),
    })
}

/// A Gemini path (`/v1beta/models/{model}:method?query`) with its model mapped.
fn gemini_path_with_model(path_and_query: &str, models: &BTreeMap<String, String>) -> String {
    let Some((before, after)) = path_and_query.split_once("/models/") else {
        return path_and_query.to_owned();
    };
    let end = after.find([':', '?']).unwrap_or(after.len());
    let model = &after[..end];
    format!(
        "{before}/models/{}{}",
        backend_model(models, model),
        &after[end..]
    )
}

/// A backend's answer on its way to the caller, translated: a stream event by event, anything
/// else read whole and translated at its end (a JSON answer, or an error).
#[derive(Debug)]
pub struct Translator {
    caller: Api,
    backend: Api,
    status: u16,
    body: Body,
}

#[derive(Debug)]
enum Body {
    Stream {
        reader: sse::Reader,
        stages: Vec<Box<dyn Stage>>,
        broken: bool,
    },
    Whole(BytesMut),
}

impl Translator {
    /// The translation of an answer with `status` and `content_type` from a `backend` to a
    /// `caller` of another API; `None` when both speak the same. `include_usage`: an OpenAI
    /// caller asked for the usage chunk of its stream.
    pub fn new(
        caller: Api,
        backend: Api,
        status: http::StatusCode,
        content_type: Option<&str>,
        include_usage: bool,
    ) -> Option<Self> {
        if caller == backend {
            return None;
        }
        let streamed = status.is_success()
            && content_type
                .is_some_and(|t| t.to_ascii_lowercase().starts_with("text/event-stream"));
        let body = if streamed {
            // The usage chunk is needed on the way through OpenAI's shape whenever the caller
            // is not the one who could decline it.
            let usage = include_usage || caller != Api::OpenAI;
            let mut stages: Vec<Box<dyn Stage>> = Vec::new();
            match backend {
                Api::Anthropic => stages.push(Box::new(anthropic::StreamToOpenAI::new(usage))),
                Api::Gemini => stages.push(Box::new(gemini::StreamToOpenAI::new(usage))),
                Api::OpenAI | Api::Requests => {}
            }
            if caller == Api::Anthropic {
                stages.push(Box::new(anthropic::StreamFromOpenAI::default()));
            }
            Body::Stream {
                reader: sse::Reader::default(),
                stages,
                broken: false,
            }
        } else {
            Body::Whole(BytesMut::new())
        };
        Some(Self {
            caller,
            backend,
            status: status.as_u16(),
            body,
        })
    }

    /// Whether the answer is a stream, translated event by event (else it is read whole).
    pub fn streams(&self) -> bool {
        matches!(self.body, Body::Stream { .. })
    }

    /// The content type of what the caller gets.
    pub fn content_type(&self) -> &'static str {
        match self.body {
            Body::Stream { .. } => "text/event-stream",
            Body::Whole(_) => "application/json",
        }
    }

    /// Runs `events` through every stage.
    fn through(stages: &mut [Box<dyn Stage>], events: Vec<Event>, ended: bool) -> Vec<Event> {
        let mut events = events;
        for stage in stages.iter_mut() {
            let mut out = Vec::new();
            for event in events {
                // A stage reads documents; a raw event goes as it is only to the caller.
                stage.push(event.parsed(), &mut out);
            }
            if ended {
                stage.end(&mut out);
            }
            events = out;
        }
        events
    }

    /// The whole answer (or error) as the caller's API has it.
    fn whole(&self, body: &[u8]) -> Bytes {
        let doc: Option<Value> = serde_json::from_slice(body).ok();
        let doc = match (doc, self.status) {
            (Some(doc), 200..=299) => {
                let openai = match self.backend {
                    Api::Anthropic => anthropic::answer_to_openai(&doc),
                    Api::Gemini => gemini::answer_to_openai(&doc),
                    _ => doc,
                };
                match self.caller {
                    Api::Anthropic => anthropic::answer_from_openai(&openai),
                    _ => openai,
                }
            }
            (doc, status) => {
                let openai = match (doc, self.backend) {
                    (Some(doc), Api::Anthropic) => anthropic::error_to_openai(&doc),
                    (Some(doc), Api::Gemini) => gemini::error_to_openai(&doc),
                    (Some(doc), _) if doc["error"]["message"].is_string() => doc,
                    // Not the provider's JSON (a load balancer's page): its start, as text.
                    (_, _) => {
                        let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
                        json!({"error": {"message": format!("The backend answered {status}: {text}"),
                                         "type": "api_error", "param": null, "code": null}})
                    }
                };
                match self.caller {
                    Api::Anthropic => anthropic::error_from_openai(status, &openai),
                    _ => openai,
                }
            }
        };
        Bytes::from(doc.to_string())
    }
}

impl Rewrite for Translator {
    fn pass(&mut self, chunk: Bytes) -> Bytes {
        match &mut self.body {
            Body::Whole(buf) => {
                if buf.len() <= MAX_ANSWER {
                    buf.extend_from_slice(&chunk);
                }
                Bytes::new()
            }
            Body::Stream {
                reader,
                stages,
                broken,
            } => {
                if *broken {
                    return Bytes::new();
                }
                match reader.push(&chunk) {
                    Ok(events) => sse::encode(&Self::through(stages, events, false)),
                    Err(e) => {
                        *broken = true;
                        tracing::warn!(error = %e, "a translated stream was cut");
                        sse::encode(&[stream_error(
                            self.caller,
                            "The backend's stream could not be translated (an event too long); it was cut.",
                        )])
                    }
                }
            }
        }
    }

    fn rest(&mut self) -> Bytes {
        match &mut self.body {
            Body::Whole(buf) => {
                let buf = std::mem::take(buf);
                if buf.len() > MAX_ANSWER {
                    let too_large = json!({"error": {"message": format!(
                        "The backend's answer is larger than {} MiB, the most Tollgate translates.",
                        MAX_ANSWER / (1024 * 1024)), "type": "api_error", "param": null, "code": null}});
                    return Bytes::from(too_large.to_string());
                }
                self.whole(&buf)
            }
            Body::Stream {
                reader,
                stages,
                broken,
            } => {
                if *broken {
                    return Bytes::new();
                }
                let last = reader.finish().into_iter().collect();
                sse::encode(&Self::through(stages, last, true))
            }
        }
    }
}

/// Whether a translated whole answer is an error (OpenAI's `{"error": ...}` or Anthropic's
/// `{"type": "error"}`): what a 2xx answer that could not be translated became.
pub fn is_error_body(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).map_or(true, |doc| {
        doc.get("error").is_some() || doc["type"] == "error"
    })
}

/// An error event in the caller's API, for a stream that cannot go on.
fn stream_error(caller: Api, message: &str) -> Event {
    match caller {
        Api::Anthropic => Event::typed(json!({"type": "error",
            "error": {"type": "api_error", "message": message}})),
        _ => Event::data(json!({"error": {"message": message, "type": "api_error",
            "param": null, "code": null}})),
    }
}

#[cfg(test)]
mod tests;
