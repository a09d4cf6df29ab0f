//! gRPC callers: which requests are gRPC calls, their deadline, and the proxy's refusals in
//! gRPC's terms.
//!
//! A gRPC client reads a call's outcome from `grpc-status`, not from the HTTP status (gRPC over
//! HTTP/2, PROTOCOL-HTTP2.md). A refusal is therefore a trailers-only response: HTTP 200 whose
//! only HEADERS frame carries `grpc-status`, `grpc-message` (the problem's detail) and
//! `grpc-status-details-bin`, a `google.rpc.Status` whose details are an `ErrorInfo` with the
//! problem's members (reason, tenant, quota, resetsAt, paymentUrl...), and, as the case may be,
//! a `QuotaFailure` (an exhausted quota or rate limit), a `RetryInfo` (when to retry) and a
//! `Help` link (where to pay). The problem's headers (RateLimit, Retry-After) come along as
//! metadata. A client tells "pay" from "retry later" by the ErrorInfo's reason, as an HTTP
//! client does by the problem's type.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{Either, Full};
use prost::Message as _;
use serde_json::{Map, Value};

use super::problem::ProblemKind;
use crate::http1::client_headers::ClientHeaders;

/// What the proxy knows of a gRPC call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// The caller's timeout (`grpc-timeout`) as it came.
    pub timeout: Option<Duration>,
    /// When that timeout runs out, counted from the request's arrival.
    pub deadline: Option<Instant>,
}

/// The call a request makes, when it is a gRPC call: HTTP/2 with a `content-type` of
/// `application/grpc`, alone or with a `+format` or parameters (gRPC-Web is not gRPC: its
/// clients read statuses from the body).
pub fn call<B>(req: &http::Request<B>) -> Option<Call> {
    if req.version() != Version::HTTP_2 {
        return None;
    }
    let content_type = req.headers().get(header::CONTENT_TYPE)?.as_bytes();
    let rest = content_type.strip_prefix(b"application/grpc")?;
    if !(rest.is_empty() || rest.starts_with(b"+") || rest.starts_with(b";")) {
        return None;
    }
    let timeout = req.headers().get(GRPC_TIMEOUT).and_then(parse_timeout);
    Some(Call {
        timeout,
        deadline: timeout.and_then(|t| Instant::now().checked_add(t)),
    })
}

/// `grpc-timeout` for what is left of `deadline` at `now`, in the coarsest unit that keeps
/// millisecond precision (at least 1 ms: a deadline already past is the backend's to report
/// too).
pub fn remaining_timeout(deadline: Instant, now: Instant) -> HeaderValue {
    let ms = deadline.saturating_duration_since(now).as_millis().max(1);
    // At most 8 digits: 99,999,999 ms is 27 hours; beyond that, seconds, then hours.
    let text = if ms < 100_000_000 {
        format!("{ms}m")
    } else if ms / 1000 < 100_000_000 {
        format!("{}S", ms / 1000)
    } else {
        format!("{}H", (ms / 3_600_000).min(99_999_999))
    };
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("1m"))
}

/// The caller's timeout header.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Whether the client's `TE` accepts trailers (gRPC clients send `te: trailers`).
pub fn accepts_trailers(headers: ClientHeaders<'_>) -> bool {
    headers.get_all(&header::TE).any(|v| {
        v.split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    })
}

/// A `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n). `None` when
/// malformed (the call then has no deadline, as gRPC servers treat it).
pub fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let (digits, unit) = value
        .as_bytes()
        .split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// gRPC status codes (grpc/doc/statuscodes.md) the proxy answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Code {
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// The status a problem is for a gRPC caller: RESOURCE_EXHAUSTED for what waiting or paying
/// lifts (rate limits, quotas), UNAUTHENTICATED without a valid key, PERMISSION_DENIED for what
/// the tenant's subscription, approval, billing state or plan refuses.
pub fn code(kind: ProblemKind) -> Code {
    match kind {
        ProblemKind::RateLimited | ProblemKind::QuotaExhausted | ProblemKind::RequestTooLarge => {
            Code::ResourceExhausted
        }
        ProblemKind::Unauthorized => Code::Unauthenticated,
        ProblemKind::NotSubscribed
        | ProblemKind::ApprovalPending
        | ProblemKind::SubscriptionRejected
        | ProblemKind::AccountPastDue
        | ProblemKind::AccountSuspended
        | ProblemKind::SubscriptionCancelled
        | ProblemKind::SubscriptionExpired
        | ProblemKind::ModelNotPriced
        | ProblemKind::ModelNotAllowed => Code::PermissionDenied,
        ProblemKind::RouteNotFound | ProblemKind::RouteRetired => Code::Unimplemented,
        ProblemKind::QuotaStoreUnavailable | ProblemKind::BackendUnavailable => Code::Unavailable,
        ProblemKind::BackendTimeout => Code::DeadlineExceeded,
        ProblemKind::BadRequest | ProblemKind::InvalidInput => Code::InvalidArgument,
        ProblemKind::InvalidModelOutput => Code::Internal,
    }
}

/// The domain of the ErrorInfo (its reasons are unique within it).
pub const DOMAIN: &str = "tollgate.dev";

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");

/// A response the proxy made itself (`Either::Left`: a problem, or a route's directResponse) in
/// gRPC's terms for a gRPC caller: a problem as [`refusal`], a directResponse that is not a
/// success as a status (mapped from its HTTP status as gRPC's clients map one; its body, when
/// short text, as the message). Anything else as it is.
pub fn own_answer<B>(
    resp: Response<Either<Full<Bytes>, B>>,
    problem: Option<ProblemKind>,
) -> Response<Either<Full<Bytes>, B>> {
    if !matches!(resp.body(), Either::Left(_)) {
        return resp;
    }
    match problem {
        Some(kind) => refusal(resp, kind),
        None if !resp.status().is_success() => direct(resp),
        None => resp,
    }
}

/// The status gRPC's clients read from an HTTP status with no `grpc-status`
/// (doc/http-grpc-status-mapping.md).
fn code_of_http(status: StatusCode) -> Code {
    match status.as_u16() {
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        400 => Code::Internal,
        _ => Code::Unknown,
    }
}

/// A directResponse that is not a success, as a trailers-only status.
fn direct<B>(resp: Response<Either<Full<Bytes>, B>>) -> Response<Either<Full<Bytes>, B>> {
    let (mut parts, body) = resp.into_parts();
    let text = match body {
        Either::Left(full) => full_bytes(full),
        Either::Right(_) => Bytes::new(),
    };
    let message = match std::str::from_utf8(&text) {
        Ok(text) if !text.is_empty() && text.len() <= 1024 => text.trim().to_owned(),
        _ => parts
            .status
            .canonical_reason()
            .unwrap_or("error")
            .to_owned(),
    };
    let code = code_of_http(parts.status);
    parts.status = StatusCode::OK;
    set_status(&mut parts.headers, code, &message, None);
    Response::from_parts(parts, Either::Left(Full::new(Bytes::new())))
}

/// Sets a trailers-only response's headers: `grpc-status`, `grpc-message` and, when given,
/// `grpc-status-details-bin`.
fn set_status(
    headers: &mut http::HeaderMap,
    code: Code,
    message: &str,
    details: Option<&rpc::Status>,
) {
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(GRPC_STATUS, HeaderValue::from(code as i32));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert(GRPC_MESSAGE, message);
    }
    if let Some(details) = details {
        let details =
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(details.encode_to_vec());
        if let Ok(details) = HeaderValue::from_str(&details) {
            headers.insert(GRPC_STATUS_DETAILS, details);
        }
    }
}

/// A problem response (`problem_response`, decorated with its headers) as a gRPC refusal: a
/// trailers-only response with the same headers and the problem in `grpc-status-details-bin`.
pub fn refusal<B>(
    resp: Response<Either<Full<Bytes>, B>>,
    kind: ProblemKind,
) -> Response<Either<Full<Bytes>, B>> {
    let (mut parts, body) = resp.into_parts();
    let problem = match body {
        Either::Left(full) => match serde_json::from_slice(&full_bytes(full)) {
            Ok(Value::Object(members)) => members,
            _ => Map::new(),
        },
        Either::Right(_) => Map::new(),
    };
    let code = code(kind);
    let detail = problem
        .get("detail")
        .and_then(Value::as_str)
        .unwrap_or_else(|| kind.title())
        .to_owned();
    let status = status_proto(kind, code, &detail, &problem);
    parts.status = StatusCode::OK;
    set_status(&mut parts.headers, code, &detail, Some(&status));
    // An empty body: hyper ends the stream with the HEADERS frame (trailers-only).
    Response::from_parts(parts, Either::Left(Full::new(Bytes::new())))
}

/// The bytes of a body made whole (`Full` is ready at once: its one frame is taken without
/// waiting).
fn full_bytes(mut body: Full<Bytes>) -> Bytes {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut body).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

/// `grpc-message`'s encoding: bytes outside printable ASCII, and `%`, percent-encoded.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7E).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `google.rpc.Status` for a problem with `members`.
fn status_proto(
    kind: ProblemKind,
    code: Code,
    detail: &str,
    members: &Map<String, Value>,
) -> rpc::Status {
    let text = |name: &str| members.get(name).map(json_text);
    let mut details = Vec::with_capacity(4);
    // Every member but those that are the message or the HTTP rendering of it.
    let metadata: BTreeMap<String, String> = members
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "detail" | "title" | "instance" | "type"))
        .map(|(name, value)| (name.clone(), json_text(value)))
        .collect();
    details.push(rpc::any(
        "google.rpc.ErrorInfo",
        &rpc::ErrorInfo {
            reason: kind.slug().replace('-', "_").to_ascii_uppercase(),
            domain: DOMAIN.to_owned(),
            metadata,
        },
    ));
    if matches!(kind, ProblemKind::QuotaExhausted | ProblemKind::RateLimited) {
        details.push(rpc::any(
            "google.rpc.QuotaFailure",
            &rpc::QuotaFailure {
                violations: vec![rpc::Violation {
                    subject: text("tenant")
                        .map(|t| format!("tenant:{t}"))
                        .unwrap_or_default(),
                    description: detail.to_owned(),
                    quota_metric: text("metric").unwrap_or_default(),
                    quota_id: text("quota").unwrap_or_default(),
                    quota_value: members
                        .get("limit")
                        .and_then(whole_number)
                        .unwrap_or_default(),
                }],
            },
        ));
    }
    if let Some(seconds) = members.get("retryAfter").and_then(Value::as_i64) {
        details.push(rpc::any(
            "google.rpc.RetryInfo",
            &rpc::RetryInfo {
                retry_delay: Some(rpc::Duration { seconds, nanos: 0 }),
            },
        ));
    }
    if let Some(url) = text("paymentUrl") {
        details.push(rpc::any(
            "google.rpc.Help",
            &rpc::Help {
                links: vec![rpc::Link {
                    description: "Pay or change the plan to go on".to_owned(),
                    url,
                }],
            },
        ));
    }
    rpc::Status {
        code: code as i32,
        message: detail.to_owned(),
        details,
    }
}

/// A member's value as metadata text: strings as they are, anything else as JSON.
fn json_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A limit as a whole number, when it is one (limits are numbers, or decimal strings for Cost).
fn whole_number(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The messages of `google/rpc/status.proto` and `google/rpc/error_details.proto` the proxy
/// sends (the fields it fills; the tags are the protos').
mod rpc {
    use std::collections::BTreeMap;

    use prost::Message;

    /// `google.rpc.Status`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Status {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(message, repeated, tag = "3")]
        pub details: Vec<Any>,
    }

    /// `google.protobuf.Any`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Any {
        #[prost(string, tag = "1")]
        pub type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    /// `message` packed in an Any of the type `name`.
    pub fn any(name: &str, message: &impl Message) -> Any {
        Any {
            type_url: format!("type.googleapis.com/{name}"),
            value: message.encode_to_vec(),
        }
    }

    /// `google.rpc.ErrorInfo`.
    #[derive(Clone, PartialEq, Message)]
    pub struct ErrorInfo {
        #[prost(string, tag = "1")]
        pub reason: String,
        #[prost(string, tag = "2")]
        pub domain: String,
        #[prost(btree_map = "string, string", tag = "3")]
        pub metadata: BTreeMap<String, String>,
    }

    /// `google.rpc.QuotaFailure`.
    #[derive(Clone, PartialEq, Message)]
    pub struct QuotaFailure {
        #[prost(message, repeated, tag = "1")]
        pub violations: Vec<Violation>,
    }

    /// `google.rpc.QuotaFailure.Violation`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Violation {
        #[prost(string, tag = "1")]
        pub subject: String,
        #[prost(string, tag = "2")]
        pub description: String,
        #[prost(string, tag = "4")]
        pub quota_metric: String,
        #[prost(string, tag = "5")]
        pub quota_id: String,
        #[prost(int64, tag = "7")]
        pub quota_value: i64,
    }

    /// `google.rpc.RetryInfo`.
    #[derive(Clone, PartialEq, Message)]
    pub struct RetryInfo {
        #[prost(message, optional, tag = "1")]
        pub retry_delay: Option<Duration>,
    }

    /// `google.protobuf.Duration`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Duration {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }

    /// `google.rpc.Help`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Help {
        #[prost(message, repeated, tag = "1")]
        pub links: Vec<Link>,
    }

    /// `google.rpc.Help.Link`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Link {
        #[prost(string, tag = "1")]
        pub description: String,
        #[prost(string, tag = "2")]
        pub url: String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, content_type: &str, timeout: Option<&str>) -> http::Request<()> {
        let mut req = http::Request::builder()
            .method("POST")
            .version(version)
            .header("content-type", content_type);
        if let Some(t) = timeout {
            req = req.header("grpc-timeout", t);
        }
        req.body(()).expect("request")
    }

    #[test]
    fn grpc_calls_are_http2_with_a_grpc_content_type() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc; x=1",
        ] {
            assert!(call(&request(Version::HTTP_2, ct, None)).is_some(), "{ct}");
        }
        for ct in [
            "application/grpc-web",
            "application/grpcx",
            "application/json",
        ] {
            assert!(call(&request(Version::HTTP_2, ct, None)).is_none(), "{ct}");
        }
        assert!(call(&request(Version::HTTP_11, "application/grpc", None)).is_none());
        let timed = call(&request(Version::HTTP_2, "application/grpc", Some("250m")));
        assert_eq!(
            timed.and_then(|c| c.timeout),
            Some(Duration::from_millis(250))
        );
        assert!(timed.and_then(|c| c.deadline).is_some());
    }

    #[test]
    fn what_is_left_of_a_deadline_is_sent_on_in_eight_digits_at_most() {
        let now = Instant::now();
        let t = |d: Duration| remaining_timeout(now + d, now);
        assert_eq!(t(Duration::from_millis(1500)), "1500m");
        assert_eq!(t(Duration::ZERO), "1m", "a past deadline is still one");
        assert_eq!(t(Duration::from_secs(200_000)), "200000S");
        assert_eq!(t(Duration::from_secs(100_000_000 * 3600)), "99999999H");
        assert_eq!(remaining_timeout(now, now + Duration::from_secs(1)), "1m");
    }

    #[test]
    fn grpc_timeouts_follow_the_spec_and_malformed_ones_are_no_deadline() {
        let t = |v: &str| parse_timeout(&HeaderValue::from_str(v).expect("value"));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(t("7u"), Some(Duration::from_micros(7)));
        for bad in ["", "S", "123456789S", "10s", "1.5S", "-1S", "10"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(percent_encode("50% off: café"), "50%25 off: caf%C3%A9");
        assert_eq!(percent_encode("line\nbreak"), "line%0Abreak");
    }

    #[test]
    fn a_refusal_is_trailers_only_with_the_problem_in_its_details() {
        let problem =
            super::super::problem::Problem::new(ProblemKind::QuotaExhausted, "Monthly quota used.")
                .with("tenant", "acme")
                .with("quota", "monthly")
                .with("limit", 1)
                .with("metric", "Requests")
                .with("paymentUrl", "https://pay.example.com")
                .with("retryAfter", 60);
        // As `problem_response` makes it.
        let mut resp: Response<Either<_, http_body_util::Empty<Bytes>>> =
            Response::new(Either::Left(Full::new(problem.body("/svc/Method"))));
        resp.headers_mut().insert(
            "ratelimit",
            HeaderValue::from_static("\"monthly\";r=0;t=60"),
        );
        let resp = refusal(resp, ProblemKind::QuotaExhausted);
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "8");
        assert_eq!(h["grpc-message"], "Monthly quota used.");
        assert_eq!(h["ratelimit"], "\"monthly\";r=0;t=60", "headers kept");
        assert!(resp.body().is_end_stream(), "trailers-only");
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(h["grpc-status-details-bin"].as_bytes())
            .expect("base64");
        let status = rpc::Status::decode(bytes.as_slice()).expect("a google.rpc.Status");
        assert_eq!(status.code, 8);
        let types: Vec<&str> = status.details.iter().map(|d| d.type_url.as_str()).collect();
        assert_eq!(
            types,
            [
                "type.googleapis.com/google.rpc.ErrorInfo",
                "type.googleapis.com/google.rpc.QuotaFailure",
                "type.googleapis.com/google.rpc.RetryInfo",
                "type.googleapis.com/google.rpc.Help",
            ]
        );
        let info = rpc::ErrorInfo::decode(status.details[0].value.as_slice()).expect("ErrorInfo");
        assert_eq!(info.reason, "QUOTA_EXHAUSTED");
        assert_eq!(info.domain, "tollgate.dev");
        assert_eq!(info.metadata["tenant"], "acme");
        assert_eq!(info.metadata["paymentUrl"], "https://pay.example.com");
        assert_eq!(info.metadata["status"], "402");
        let quota =
            rpc::QuotaFailure::decode(status.details[1].value.as_slice()).expect("QuotaFailure");
        assert_eq!(quota.violations[0].subject, "tenant:acme");
        assert_eq!(quota.violations[0].quota_id, "monthly");
        assert_eq!(quota.violations[0].quota_value, 1);
    }

    #[test]
    fn a_direct_answer_that_is_not_a_success_is_a_status_and_the_rest_stays() {
        let direct = |status: u16, body: &'static str| {
            let mut resp: Response<Either<_, http_body_util::Empty<Bytes>>> =
                Response::new(Either::Left(Full::new(Bytes::from_static(body.as_bytes()))));
            *resp.status_mut() = StatusCode::from_u16(status).expect("status");
            own_answer(resp, None)
        };
        let down = direct(503, "Down for maintenance until 10:00.");
        assert_eq!(down.status(), StatusCode::OK);
        assert_eq!(down.headers()["grpc-status"], "14");
        assert_eq!(
            down.headers()["grpc-message"],
            "Down for maintenance until 10:00."
        );
        assert!(down.body().is_end_stream());
        let ok = direct(200, "fine");
        assert!(
            ok.headers().get("grpc-status").is_none(),
            "a success is left alone"
        );
    }

    #[test]
    fn every_problem_has_a_grpc_status_that_says_pay_or_wait_apart_from_the_rest() {
        assert_eq!(code(ProblemKind::RateLimited), Code::ResourceExhausted);
        assert_eq!(code(ProblemKind::QuotaExhausted), Code::ResourceExhausted);
        assert_eq!(code(ProblemKind::AccountPastDue), Code::PermissionDenied);
        assert_eq!(code(ProblemKind::Unauthorized), Code::Unauthenticated);
        assert_eq!(code(ProblemKind::BackendTimeout), Code::DeadlineExceeded);
        assert_eq!(code(ProblemKind::RouteNotFound), Code::Unimplemented);
    }
}
