//! Usage metering from backend responses, for token and Cost quotas.
//!
//! Routes with `metering: OpenAI` have their response bodies read as they stream by (never
//! buffered for the client): a JSON body's `usage` object, or the `usage` of the Server-Sent Events
//! chunks of a streamed completion (`stream_options.include_usage`), together with the `model`.
//! Both the Chat Completions names (`prompt_tokens`, `completion_tokens`) and the Responses API
//! names (`input_tokens`, `output_tokens`) are understood. When the body ends, the usage is priced
//! with the plan's `pricing` and charged once. A Cost quota's `perRequest` price is charged for
//! every served request, metered or not.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use rust_decimal::Decimal;
use serde_json::Value;
use tollgate_crds::snapshot::Pricing;

use crate::http1::raw_headers::{OwnLines, RawHeaders};
use crate::quota::Metered;
use crate::upstream::pool::UpstreamBody;

/// Longest JSON body inspected for `usage` (larger ones pass through unmetered for tokens).
const MAX_JSON_BODY: usize = 4 * 1024 * 1024;
/// Longest single SSE line kept while looking for `usage`.
const MAX_SSE_LINE: usize = 1024 * 1024;

/// What to do with the usage once the response is complete.
pub type Charge = Box<dyn FnOnce(Metered) + Send>;

/// How the body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json`: the whole body is one document.
    Json,
    /// `text/event-stream`: `data:` lines, each a JSON chunk.
    EventStream,
    /// Nothing to read (Requests metering): only per-request prices are charged.
    None,
}

/// Watches a body go by and charges its usage when it ends.
pub struct Meter {
    format: Format,
    buffer: Vec<u8>,
    input_tokens: u64,
    output_tokens: u64,
    model: Option<String>,
    pricing: Option<Pricing>,
    charge: Option<Charge>,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl Meter {
    /// A meter for a response with `content_type`.
    pub fn new(
        tokens: bool,
        content_type: Option<&str>,
        pricing: Option<Pricing>,
        charge: Charge,
    ) -> Self {
        let format = match content_type {
            _ if !tokens => Format::None,
            Some(ct) if ct.starts_with("text/event-stream") => Format::EventStream,
            Some(ct) if ct.starts_with("application/json") || ct.contains("+json") => Format::Json,
            _ => Format::None,
        };
        Self {
            format,
            buffer: Vec::new(),
            input_tokens: 0,
            output_tokens: 0,
            model: None,
            pricing,
            charge: Some(charge),
        }
    }

    /// Feeds one chunk of the body.
    pub fn observe(&mut self, chunk: &[u8]) {
        match self.format {
            Format::None => {}
            Format::Json => {
                if self.buffer.len() + chunk.len() <= MAX_JSON_BODY {
                    self.buffer.extend_from_slice(chunk);
                } else {
                    self.format = Format::None;
                    self.buffer = Vec::new();
                }
            }
            Format::EventStream => {
                for &byte in chunk {
                    if byte == b'\n' {
                        let line = std::mem::take(&mut self.buffer);
                        self.sse_line(&line);
                    } else if self.buffer.len() < MAX_SSE_LINE {
                        self.buffer.push(byte);
                    }
                }
            }
        }
    }

    fn sse_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.trim_ascii();
        if data.is_empty() || data == b"[DONE]" {
            return;
        }
        if let Ok(doc) = serde_json::from_slice::<Value>(data) {
            self.document(&doc);
        }
    }

    fn document(&mut self, doc: &Value) {
        // The Responses API nests the final usage in `response`.
        let doc = doc
            .get("response")
            .filter(|r| r.get("usage").is_some())
            .unwrap_or(doc);
        if let Some(model) = doc.get("model").and_then(Value::as_str) {
            self.model = Some(model.to_owned());
        }
        let Some(usage) = doc.get("usage").filter(|u| u.is_object()) else {
            return;
        };
        let count = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|n| usage.get(*n).and_then(Value::as_u64))
        };
        // Later chunks carry cumulative totals: the last report wins.
        if let Some(input) = count(["prompt_tokens", "input_tokens"]) {
            self.input_tokens = input;
        }
        if let Some(output) = count(["completion_tokens", "output_tokens"]) {
            self.output_tokens = output;
        }
    }

    /// The body ended: price the usage and charge it (once).
    pub fn finish(&mut self) {
        let Some(charge) = self.charge.take() else {
            return;
        };
        if self.format == Format::Json && !self.buffer.is_empty() {
            if let Ok(doc) = serde_json::from_slice::<Value>(&self.buffer) {
                self.document(&doc);
            }
            self.buffer = Vec::new();
        } else if self.format == Format::EventStream && !self.buffer.is_empty() {
            let line = std::mem::take(&mut self.buffer);
            self.sse_line(&line);
        }
        let metered = Metered {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cost: self.cost(),
        };
        if metered != Metered::default() {
            charge(metered);
        }
    }

    fn cost(&self) -> Decimal {
        let Some(pricing) = &self.pricing else {
            return Decimal::ZERO;
        };
        let mut cost = pricing.per_request.unwrap_or(Decimal::ZERO);
        if let Some(price) = self.model.as_deref().and_then(|m| pricing.model(m)) {
            let million = Decimal::from(1_000_000);
            cost += Decimal::from(self.input_tokens) * price.input_per_million_tokens / million;
            cost += Decimal::from(self.output_tokens) * price.output_per_million_tokens / million;
        }
        cost
    }
}

/// A backend body, metered when the route and plan need it.
#[derive(Debug)]
pub struct MeteredBody {
    /// Boxed: a response is moved several times on its way to the client, and the backend body
    /// (its connection, framing state and relayed headers) is most of its size.
    inner: Box<UpstreamBody>,
    meter: Option<Box<Meter>>,
    /// Headers the proxy adds, as lines (its `RateLimit` headers), written with the relayed ones.
    own_lines: OwnLines,
}

impl MeteredBody {
    /// `inner`, watched by `meter` if any.
    pub fn new(inner: UpstreamBody, meter: Option<Meter>) -> Self {
        Self {
            inner: Box::new(inner),
            meter: meter.map(Box::new),
            own_lines: OwnLines::default(),
        }
    }

    /// Sets the headers the proxy adds as lines; they override relayed ones of the same name.
    pub fn set_own_lines(&mut self, lines: OwnLines) {
        self.own_lines = lines;
    }

    /// Takes the proxy's lines and the backend's headers still to relay as bytes (see
    /// [`crate::http1::raw_headers`]).
    pub fn take_lines(&mut self) -> (OwnLines, RawHeaders) {
        (
            std::mem::take(&mut self.own_lines),
            self.inner.take_relayed_headers(),
        )
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = crate::upstream::pool::BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut *self.inner).poll_frame(cx);
        if let Some(meter) = self.meter.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        meter.observe(data);
                    }
                }
                Poll::Ready(None) => meter.finish(),
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // The client went away mid-stream, or the server never polled an empty body: the backend
        // still did (some of) the work, so what it reported so far is charged.
        if let Some(meter) = self.meter.as_mut() {
            meter.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use tollgate_crds::snapshot::ModelPrice;

    fn pricing() -> Pricing {
        Pricing {
            currency: "USD".into(),
            per_request: Some(Decimal::new(1, 4)),
            models: vec![ModelPrice {
                model: "gpt-4o-mini".into(),
                input_per_million_tokens: Decimal::new(15, 2),
                output_per_million_tokens: Decimal::new(60, 2),
            }],
        }
    }

    fn meter(content_type: &str) -> (Meter, Arc<Mutex<Vec<Metered>>>) {
        let charged = Arc::new(Mutex::new(Vec::new()));
        let sink = charged.clone();
        let m = Meter::new(
            true,
            Some(content_type),
            Some(pricing()),
            Box::new(move |u| sink.lock().expect("lock").push(u)),
        );
        (m, charged)
    }

    #[test]
    fn json_usage_is_priced_by_model() {
        let (mut m, charged) = meter("application/json");
        let body = br#"{"id":"x","model":"gpt-4o-mini-2024-07-18","usage":{"prompt_tokens":1000,"completion_tokens":2000,"total_tokens":3000}}"#;
        m.observe(&body[..20]);
        m.observe(&body[20..]);
        m.finish();
        m.finish();
        let charged = charged.lock().expect("lock");
        assert_eq!(charged.len(), 1, "charged once");
        assert_eq!(
            (charged[0].input_tokens, charged[0].output_tokens),
            (1000, 2000)
        );
        // 0.0001 + 1000 * 0.15/1e6 + 2000 * 0.60/1e6 = 0.0001 + 0.00015 + 0.0012
        assert_eq!(charged[0].cost, Decimal::new(145, 5));
    }

    #[test]
    fn streamed_usage_is_read_from_the_last_chunk_split_anywhere() {
        let (mut m, charged) = meter("text/event-stream; charset=utf-8");
        let stream = "data: {\"model\":\"gpt-4o-mini\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
                      data: {\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":5}}\r\n\r\n\
                      data: [DONE]\n\n";
        for chunk in stream.as_bytes().chunks(13) {
            m.observe(chunk);
        }
        m.finish();
        let charged = charged.lock().expect("lock");
        assert_eq!((charged[0].input_tokens, charged[0].output_tokens), (7, 5));
    }

    #[test]
    fn responses_api_names_are_understood() {
        let (mut m, charged) = meter("text/event-stream");
        m.observe(b"data: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-4o-mini\",\"usage\":{\"input_tokens\":3,\"output_tokens\":4}}}\n");
        m.finish();
        assert_eq!(charged.lock().expect("lock")[0].input_tokens, 3);
    }

    #[test]
    fn without_usage_only_the_per_request_price_is_charged() {
        let (mut m, charged) = meter("text/plain");
        m.observe(b"hello");
        m.finish();
        let charged = charged.lock().expect("lock");
        assert_eq!(
            (charged[0].input_tokens, charged[0].cost),
            (0, Decimal::new(1, 4))
        );
    }
}
