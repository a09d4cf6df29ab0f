//! Metering a backend response as it streams by, and settling the call's reservation when it
//! ends.
//!
//! Bodies are read as they go to the client, never buffered for it: a JSON body through
//! [`MemberScanner`] (any size, constant memory), an event stream line by line. What the provider
//! reported ([`Report`]) is priced with the plan's prices and replaces the reservation taken at
//! admission:
//! - usage reported: that usage is charged (priced by the model the response names, else the one
//!   the request named);
//! - a complete JSON body without usage (a call that generated nothing: counting tokens, a
//!   moderation), or a failed response (the provider bills nothing): no tokens, the per-request
//!   price only;
//! - no usage from a successful response otherwise — the client left before the usage chunk, a
//!   stream that never reported, a body that was cut or cannot be read: the call's bound is
//!   charged ([`super::reservation::Reserved::unreported`]), never nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use memchr::memmem;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use serde_json::Value;
use tollgate_crds::resources::Metering;
use tollgate_crds::snapshot::Pricing;

use super::estimate::Estimates;
use super::formats::{MEMBERS, Report};
use super::json_scan::MemberScanner;
use super::usage::Usage;
use crate::http1::raw_headers::{OwnLines, RawHeaders};
use crate::quota::Metered;
use crate::telemetry::warn_throttle::WarnThrottle;
use crate::upstream::pool::UpstreamBody;

/// Longest single SSE line kept while looking for usage (longer lines are skipped).
const MAX_SSE_LINE: usize = 1024 * 1024;
/// Longest incomplete event the usage-chunk filter holds back; past it, the stream is not
/// filtered any more (it is not the event stream it claims to be).
const MAX_PENDING_EVENT: usize = 1024 * 1024;

/// Warnings about usage of a model without a price, at most one per minute.
static UNPRICED_WARNINGS: WarnThrottle = WarnThrottle::new(Duration::from_secs(60));

/// Replaces the call's reservation with what it used (the store's settle), and records it.
pub type Settle = Box<dyn FnOnce(Charge) + Send>;

/// What a call is charged when its response ends.
#[derive(Clone, Debug, PartialEq)]
pub struct Charge {
    /// What its quotas count.
    pub metered: Metered,
    /// Its tokens by type (the call's bound when no usage was reported).
    pub tokens: Usage,
    /// The model the answer named, else the request.
    pub model: Option<String>,
}

/// What the meter needs to settle a call.
pub struct Settlement {
    /// The usage format: the route's for a call that generates, `Requests` for anything else.
    pub metering: Metering,
    /// The tenant (estimates are learned per tenant).
    pub tenant: Arc<str>,
    /// What admission reserved.
    pub reserved: Metered,
    /// What is charged when a successful response reports no usage.
    pub unreported: Metered,
    /// The tokens behind `unreported`.
    pub unreported_tokens: Usage,
    /// An API that is free and reports no usage (token counts, moderations).
    pub free_without_usage: bool,
    /// The plan's prices.
    pub pricing: Option<Pricing>,
    /// Whether the plan counts money (an unpriced model is then worth a warning).
    pub prices_tokens: bool,
    /// The model the request named.
    pub request_model: Option<String>,
    /// The request body's size (the estimates learn tokens per byte).
    pub body_bytes: usize,
    /// Recent usage by model, to learn from this call.
    pub estimates: Arc<Estimates>,
    /// Called once with the actual usage.
    pub settle: Settle,
}

/// How the body is read.
#[derive(Debug)]
enum Format {
    /// `application/json`: the members that carry usage, picked out as they pass.
    Json(MemberScanner),
    /// `text/event-stream`: `data:` lines, each a JSON document; the line being read.
    EventStream(Vec<u8>),
    /// Nothing to read.
    None,
}

/// Watches a body go by and settles the call when it ends.
pub struct Meter {
    format: Format,
    report: Report,
    /// The backend answered 2xx.
    success: bool,
    settlement: Option<Settlement>,
}

impl std::fmt::Debug for Settlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settlement")
            .field("metering", &self.metering)
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl Meter {
    /// A meter for a response with `status` and `content_type`.
    /// A meter for a response with `status`, `content_type` and `content_encoding` (a body that
    /// is compressed cannot be read: it is charged as one that reported nothing).
    pub fn new(
        status: http::StatusCode,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        settlement: Settlement,
    ) -> Self {
        let content_type = content_type.map(str::to_ascii_lowercase);
        let encoded = content_encoding.is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"));
        let format = match content_type.as_deref() {
            _ if !settlement.metering.reads_tokens() || encoded => Format::None,
            Some(ct) if ct.starts_with("text/event-stream") => Format::EventStream(Vec::new()),
            Some(ct) if ct.starts_with("application/json") || ct.contains("+json") => {
                Format::Json(MemberScanner::new(MEMBERS))
            }
            _ => Format::None,
        };
        Self {
            format,
            report: Report::default(),
            success: status.is_success(),
            settlement: Some(settlement),
        }
    }

    fn metering(&self) -> Metering {
        self.settlement
            .as_ref()
            .map_or(Metering::Requests, |s| s.metering)
    }

    /// Feeds one chunk of the body.
    pub fn observe(&mut self, chunk: &[u8]) {
        let metering = self.metering();
        let report = &mut self.report;
        match &mut self.format {
            Format::None => {}
            Format::Json(scanner) => scanner.feed(chunk, &mut |name, value| {
                if let Ok(value) = serde_json::from_slice::<Value>(value) {
                    let mut doc = serde_json::Map::new();
                    doc.insert(name.to_owned(), value);
                    report.read(metering, &Value::Object(doc));
                }
            }),
            Format::EventStream(line) => {
                let mut rest = chunk;
                while let Some(end) = memchr::memchr(b'\n', rest) {
                    if line.is_empty() {
                        sse_line(metering, report, &rest[..end]);
                    } else {
                        keep(line, &rest[..end]);
                        sse_line(metering, report, line);
                        line.clear();
                    }
                    rest = &rest[end + 1..];
                }
                keep(line, rest);
            }
        }
    }

    /// The body ended (`ended`), or was dropped before its end: settle the call (once).
    pub fn finish(&mut self, ended: bool) {
        let Some(s) = self.settlement.take() else {
            return;
        };
        if let Format::EventStream(line) = &mut self.format
            && !line.is_empty()
        {
            sse_line(s.metering, &mut self.report, line);
            line.clear();
        }
        let per_request = s
            .pricing
            .as_ref()
            .and_then(|p| p.per_request)
            .unwrap_or_default();
        // Whether what was reported is the final count: a last streamed report, or a whole JSON
        // document (its usage is the call's).
        let whole_json = matches!(&self.format, Format::Json(scanner) if scanner.complete());
        let final_count = self.report.last || whole_json;
        let (metered, tokens) = match self.report.usage {
            // Running totals of an answer cut short (Anthropic's `message_start` says 1 output
            // token): what was reported, or the call's bound when that is more.
            Some(usage) if !final_count && self.success => {
                let price = |m: Option<&str>| m.and_then(|m| s.pricing.as_ref()?.model(m));
                let price = price(self.report.model.as_deref())
                    .or_else(|| price(s.request_model.as_deref()));
                let reported = usage.metered(s.pricing.as_ref(), price);
                let tokens = |m: &Metered| m.input_tokens.saturating_add(m.output_tokens);
                if tokens(&reported) > tokens(&s.unreported) {
                    (reported, usage)
                } else {
                    (s.unreported, s.unreported_tokens)
                }
            }
            Some(usage) => {
                let by_response = self.report.model.as_deref();
                let price = |m: Option<&str>| m.and_then(|m| s.pricing.as_ref()?.model(m));
                let price = price(by_response).or_else(|| price(s.request_model.as_deref()));
                if price.is_none()
                    && s.prices_tokens
                    && usage != Default::default()
                    && let Some(left_out) = UNPRICED_WARNINGS.due(Instant::now())
                {
                    tracing::warn!(
                        model = by_response.or(s.request_model.as_deref()).unwrap_or("-"),
                        warnings_not_logged = left_out,
                        "usage of a model without a price: its tokens count, but cost only the \
                         per-request price; add the model to the plan's pricing.models"
                    );
                }
                if let Some(model) = s.request_model.as_deref().or(by_response) {
                    s.estimates.learn(
                        &s.tenant,
                        model,
                        s.body_bytes,
                        usage.input_tokens(),
                        usage.output_tokens(),
                    );
                }
                (usage.metered(s.pricing.as_ref(), price), usage)
            }
            // A free API's whole answer (token counts, moderations).
            None if s.free_without_usage && (whole_json || ended) => (
                Metered {
                    cost: per_request,
                    ..Metered::default()
                },
                Usage::default(),
            ),
            // Never reported: what the call may have used is charged, the provider may bill it.
            None if self.success && s.metering.reads_tokens() => {
                (s.unreported, s.unreported_tokens)
            }
            None => (
                Metered {
                    cost: per_request,
                    ..Metered::default()
                },
                Usage::default(),
            ),
        };
        // Shown in the access log: a backend's name is cut to what a model name can be.
        let model = self.report.model.take().or(s.request_model).map(|mut m| {
            let mut end = m.len().min(super::estimate::MAX_MODEL_NAME);
            while !m.is_char_boundary(end) {
                end -= 1;
            }
            m.truncate(end);
            m
        });
        (s.settle)(Charge {
            metered,
            tokens,
            model,
        });
    }
}

/// Adds `bytes` to the line being read, up to [`MAX_SSE_LINE`].
fn keep(line: &mut Vec<u8>, bytes: &[u8]) {
    let room = MAX_SSE_LINE.saturating_sub(line.len());
    line.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// Reads one SSE line: only a `data:` line that carries a usage object is parsed (every
/// provider names the model in it too); the others are content, passed over without parsing.
fn sse_line(metering: Metering, report: &mut Report, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(data) = line.strip_prefix(b"data:") else {
        return;
    };
    if !carries_usage(data) {
        return;
    }
    if let Ok(doc) = serde_json::from_slice::<Value>(data.trim_ascii()) {
        report.read(metering, &doc);
    }
}

/// Whether `data` has a `"usage"` or `"usageMetadata"` member whose value is an object.
fn carries_usage(data: &[u8]) -> bool {
    memmem::find_iter(data, b"\"usage").any(|at| {
        let rest = &data[at + 6..];
        let rest = rest.strip_prefix(b"Metadata").unwrap_or(rest);
        let Some(rest) = rest.strip_prefix(b"\"") else {
            return false;
        };
        let rest = rest.trim_ascii_start();
        rest.strip_prefix(b":")
            .is_some_and(|v| v.trim_ascii_start().starts_with(b"{"))
    })
}

/// A rewrite of a response body on its way to the client: the bytes that may go out for each
/// chunk that came in, and what is left at the end.
pub trait Rewrite: Send + Sync + std::fmt::Debug {
    /// What the client may get now, `chunk` having come.
    fn pass(&mut self, chunk: Bytes) -> Bytes;
    /// What the client gets when the backend's body ended.
    fn rest(&mut self) -> Bytes;
}

impl Rewrite for UsageChunkFilter {
    fn pass(&mut self, chunk: Bytes) -> Bytes {
        UsageChunkFilter::pass(self, chunk)
    }

    fn rest(&mut self) -> Bytes {
        UsageChunkFilter::rest(self)
    }
}

/// Keeps the usage-only chunk that Tollgate asked an OpenAI stream for (`include_usage`) from a
/// client that did not ask for it: complete events pass as soon as they end, that one is dropped.
/// A stream whose events never end (not an event stream, whatever its type says) is passed
/// through unfiltered once [`MAX_PENDING_EVENT`] bytes are held.
#[derive(Debug, Default)]
pub struct UsageChunkFilter {
    pending: BytesMut,
    /// Given up: everything passes.
    off: bool,
}

impl UsageChunkFilter {
    /// The complete events in `pending` + `chunk`, minus the usage-only ones.
    pub fn pass(&mut self, chunk: Bytes) -> Bytes {
        if self.off {
            return chunk;
        }
        if self.pending.is_empty() && chunk.ends_with(b"\n\n") && !carries_usage(&chunk) {
            // The common case: whole events without usage, passed as they came (no copy).
            return chunk;
        }
        self.pending.extend_from_slice(&chunk);
        let mut out = BytesMut::new();
        while let Some(end) = event_end(&self.pending) {
            let event = self.pending.split_to(end);
            if !is_usage_only(&event) {
                out.extend_from_slice(&event);
            }
        }
        if self.pending.len() > MAX_PENDING_EVENT {
            self.off = true;
            out.extend_from_slice(&std::mem::take(&mut self.pending));
        }
        out.freeze()
    }

    /// What is left when the stream ends (an unterminated last event, dropped if it is the
    /// usage chunk).
    pub fn rest(&mut self) -> Bytes {
        let rest = std::mem::take(&mut self.pending).freeze();
        if !self.off && is_usage_only(&rest) {
            return Bytes::new();
        }
        rest
    }
}

/// The end (past the blank line) of the first complete event in `buf`.
fn event_end(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf).find_map(|i| match buf.get(i + 1) {
        Some(b'\n') => Some(i + 2),
        Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => Some(i + 3),
        _ => None,
    })
}

/// An event whose data is a chunk with no choices and a usage object.
fn is_usage_only(event: &[u8]) -> bool {
    if !carries_usage(event) {
        return false;
    }
    event.split(|&b| b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line.strip_prefix(b"data:")
            .and_then(|d| serde_json::from_slice::<Value>(d.trim_ascii()).ok())
            .is_some_and(|doc| {
                doc.get("choices")
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty)
                    && doc.get("usage").is_some_and(Value::is_object)
            })
    })
}

/// A backend body, metered when the route and plan need it.
#[derive(Debug)]
pub struct MeteredBody {
    /// Boxed: a response is moved several times on its way to the client, and the backend body
    /// (its connection, framing state and relayed headers) is most of its size.
    inner: Box<UpstreamBody>,
    meter: Option<Box<Meter>>,
    /// Set when the client gets other bytes than the backend sent: the usage chunk Tollgate
    /// asked for kept from it, or the answer translated to the client's API.
    filter: Option<Box<dyn Rewrite>>,
    /// Trailers held back while the filter's last bytes go out first.
    held: Option<Frame<Bytes>>,
    /// Headers the proxy adds, as lines (its `RateLimit` headers), written with the relayed ones.
    own_lines: OwnLines,
}

impl MeteredBody {
    /// `inner`, watched by `meter` if any (it reads the backend's bytes), and rewritten by
    /// `rewrite` on its way to the client.
    pub fn new(
        inner: UpstreamBody,
        meter: Option<Meter>,
        rewrite: Option<Box<dyn Rewrite>>,
    ) -> Self {
        Self {
            inner: Box::new(inner),
            meter: meter.map(Box::new),
            filter: rewrite,
            held: None,
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
        if let Some(trailers) = self.held.take() {
            return Poll::Ready(Some(Ok(trailers)));
        }
        loop {
            let polled = Pin::new(&mut *self.inner).poll_frame(cx);
            let this = &mut *self;
            if let Some(meter) = this.meter.as_mut() {
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            meter.observe(data);
                        }
                        // A body of known length is not polled past its last byte.
                        if this.inner.is_end_stream() {
                            meter.finish(true);
                        }
                    }
                    Poll::Ready(None) => meter.finish(true),
                    _ => {}
                }
            }
            let Some(filter) = this.filter.as_mut() else {
                return polled;
            };
            return match polled {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let passed = filter.pass(data);
                        if passed.is_empty() {
                            continue; // Only part of an event, or the dropped chunk.
                        }
                        Poll::Ready(Some(Ok(Frame::data(passed))))
                    }
                    // Trailers: what the filter still holds goes first.
                    Err(trailers) => {
                        let rest = filter.rest();
                        if rest.is_empty() {
                            Poll::Ready(Some(Ok(trailers)))
                        } else {
                            this.held = Some(trailers);
                            Poll::Ready(Some(Ok(Frame::data(rest))))
                        }
                    }
                },
                Poll::Ready(None) => {
                    let rest = filter.rest();
                    this.filter = None;
                    if rest.is_empty() {
                        Poll::Ready(None)
                    } else {
                        Poll::Ready(Some(Ok(Frame::data(rest))))
                    }
                }
                other => other,
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.filter.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.filter.is_some() {
            // Events may be dropped: the length is not known.
            return SizeHint::default();
        }
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // The client went away mid-stream, or the server never polled an empty body: what the
        // backend reported so far is charged, else the reservation (see the module).
        if let Some(meter) = self.meter.as_mut() {
            meter.finish(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rust_decimal::Decimal;
    use tollgate_crds::snapshot::ModelPrice;

    use super::*;

    fn pricing() -> Pricing {
        Pricing {
            currency: "USD".into(),
            per_request: Some(Decimal::new(1, 4)),
            models: vec![ModelPrice {
                model: "gpt-4o-mini".into(),
                input_per_million_tokens: Decimal::new(15, 2),
                output_per_million_tokens: Decimal::new(60, 2),
                cached_input_per_million_tokens: None,
                cache_write_input_per_million_tokens: None,
                reasoning_per_million_tokens: None,
            }],
        }
    }

    const RESERVED: Metered = Metered {
        input_tokens: 100,
        output_tokens: 500,
        cost: Decimal::ONE,
        outside: 0,
    };
    const UNREPORTED: Metered = Metered {
        input_tokens: 100,
        output_tokens: 4096,
        cost: Decimal::TWO,
        outside: 0,
    };

    fn meter_with(
        metering: Metering,
        status: u16,
        content_type: &str,
    ) -> (Meter, Arc<Mutex<Vec<Metered>>>) {
        meter_for(metering, status, content_type, None, false)
    }

    fn meter_for(
        metering: Metering,
        status: u16,
        content_type: &str,
        content_encoding: Option<&str>,
        free_without_usage: bool,
    ) -> (Meter, Arc<Mutex<Vec<Metered>>>) {
        let charged = Arc::new(Mutex::new(Vec::new()));
        let sink = charged.clone();
        let m = Meter::new(
            http::StatusCode::from_u16(status).expect("status"),
            Some(content_type),
            content_encoding,
            Settlement {
                metering,
                tenant: Arc::from("shop/a"),
                reserved: RESERVED,
                unreported: UNREPORTED,
                unreported_tokens: Usage {
                    input: UNREPORTED.input_tokens,
                    output: UNREPORTED.output_tokens,
                    ..Usage::default()
                },
                free_without_usage,
                pricing: Some(pricing()),
                prices_tokens: true,
                request_model: Some("gpt-4o-mini".into()),
                body_bytes: 100,
                estimates: Arc::new(Estimates::new()),
                settle: Box::new(move |c: Charge| sink.lock().expect("lock").push(c.metered)),
            },
        );
        (m, charged)
    }

    fn meter(content_type: &str) -> (Meter, Arc<Mutex<Vec<Metered>>>) {
        meter_with(Metering::OpenAI, 200, content_type)
    }

    #[test]
    fn json_usage_is_priced_by_model() {
        let (mut m, charged) = meter("application/json");
        let body = br#"{"id":"x","model":"gpt-4o-mini-2024-07-18","usage":{"prompt_tokens":1000,"completion_tokens":2000,"total_tokens":3000}}"#;
        m.observe(&body[..20]);
        m.observe(&body[20..]);
        m.finish(true);
        m.finish(true);
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
        m.finish(true);
        let charged = charged.lock().expect("lock");
        assert_eq!((charged[0].input_tokens, charged[0].output_tokens), (7, 5));
    }

    #[test]
    fn without_usage_a_success_is_charged_its_bound_unless_it_generated_nothing() {
        let per_request = Metered {
            cost: Decimal::new(1, 4),
            ..Metered::default()
        };
        // A stream cut before its usage chunk (or a backend that sends none).
        let (mut m, charged) = meter("text/event-stream");
        m.observe(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\n");
        m.finish(false);
        assert_eq!(charged.lock().expect("lock")[0], UNREPORTED);
        // A JSON answer cut short, or a body that cannot be read at all.
        let (mut m, charged) = meter("application/json");
        m.observe(br#"{"choices":[{"message":{"content":"hel"#);
        m.finish(false);
        assert_eq!(charged.lock().expect("lock")[0], UNREPORTED);
        let (mut m, charged) = meter("text/plain");
        m.observe(b"hello");
        m.finish(true);
        assert_eq!(charged.lock().expect("lock")[0], UNREPORTED);
        // A whole JSON answer without usage: generated elsewhere or later (a background call)
        // unless the API is a free one (counting tokens).
        let (mut m, charged) = meter("Application/JSON; charset=utf-8");
        m.observe(br#"{"id":"resp_1","status":"queued","usage":null}"#);
        m.finish(true);
        assert_eq!(charged.lock().expect("lock")[0], UNREPORTED);
        let (mut m, charged) = meter_for(Metering::Anthropic, 200, "application/json", None, true);
        m.observe(br#"{"input_tokens":1234}"#);
        m.finish(true);
        assert_eq!(charged.lock().expect("lock")[0], per_request);
        // A compressed answer cannot be read.
        let (mut m, charged) = meter_for(
            Metering::OpenAI,
            200,
            "application/json",
            Some("gzip"),
            false,
        );
        m.observe(b"\x1f\x8b...");
        m.finish(true);
        assert_eq!(charged.lock().expect("lock")[0], UNREPORTED);
        // Running totals of a stream cut before its last report: the bound, when it is more.
        let (mut m, charged) = meter_with(Metering::Anthropic, 200, "text/event-stream");
        m.observe(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n");
        m.finish(false);
        assert_eq!(charged.lock().expect("lock")[0], UNREPORTED);
        // The provider refused the call: it bills nothing; the per-request price stays.
        let (mut m, charged) = meter_with(Metering::OpenAI, 429, "application/json");
        m.observe(br#"{"error":{"message":"slow down"}}"#);
        m.finish(false);
        assert_eq!(charged.lock().expect("lock")[0], per_request);
    }

    #[test]
    fn only_usage_objects_are_parsed() {
        assert!(carries_usage(
            br#"{"choices":[],"usage" : {"prompt_tokens":1}}"#
        ));
        assert!(carries_usage(
            br#"{"usageMetadata":{"promptTokenCount":1}}"#
        ));
        assert!(!carries_usage(
            br#"{"choices":[{"delta":{}}],"usage":null}"#
        ));
        assert!(!carries_usage(br#"{"content":"the usage of words"}"#));
    }

    #[test]
    fn a_route_that_reads_no_tokens_charges_the_per_request_price() {
        let (mut m, charged) = meter_with(Metering::Requests, 200, "application/json");
        m.observe(br#"{"usage":{"prompt_tokens":1}}"#);
        m.finish(true);
        assert_eq!(
            charged.lock().expect("lock")[0],
            Metered {
                cost: Decimal::new(1, 4),
                ..Metered::default()
            }
        );
    }

    #[test]
    fn anthropic_and_gemini_streams_are_read() {
        let (mut m, charged) = meter_with(Metering::Anthropic, 200, "text/event-stream");
        m.observe(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n");
        m.observe(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":30}}\n\n");
        m.finish(true);
        let got = charged.lock().expect("lock")[0];
        assert_eq!((got.input_tokens, got.output_tokens), (9, 30));
        // Gemini without alt=sse: a JSON array of responses, the last usage wins.
        let (mut m, charged) = meter_with(Metering::Gemini, 200, "application/json");
        m.observe(br#"[{"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":1}},"#);
        m.observe(br#"{"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":8,"thoughtsTokenCount":2}}]"#);
        m.finish(true);
        let got = charged.lock().expect("lock")[0];
        assert_eq!((got.input_tokens, got.output_tokens), (4, 10));
    }

    #[test]
    fn the_usage_chunk_asked_for_by_tollgate_is_kept_from_the_client() {
        let mut filter = UsageChunkFilter::default();
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":5}}\r\n\r\n\
                      data: [DONE]\n\n";
        let mut out = Vec::new();
        for chunk in stream.as_bytes().chunks(7) {
            out.extend_from_slice(&filter.pass(Bytes::copy_from_slice(chunk)));
        }
        out.extend_from_slice(&filter.rest());
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: [DONE]\n\n"
        );
    }
}
