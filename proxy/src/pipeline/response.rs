//! The response side of the pipeline: problem bodies as responses, the RateLimit headers
//! (IETF draft), `WWW-Authenticate`, and a route's Deprecation and Sunset headers.

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderValue};
use http_body_util::{Either, Full};
use serde_json::Value;

use super::checks::Verdict;
use super::problem::{self, Problem, ProblemKind};
use crate::http1::raw_headers::{self, OwnLines, RawHeaders};
use crate::llm::MeteredBody;

/// Response body: a buffered body made by the proxy, or the backend's streamed body.
pub type ProxyBody = Either<Full<Bytes>, MeteredBody>;

/// Header lines a response carries besides its map (see [`crate::http1::raw_headers`]): the proxy's own
/// (they override the backend's) and the backend's, relayed. The HTTP/1.1 engine writes them
/// after the map's headers.
#[derive(Debug, Default)]
pub struct ResponseLines {
    /// Set by the proxy (`RateLimit` headers on a relayed response).
    pub own: OwnLines,
    /// The backend's end-to-end headers.
    pub relayed: RawHeaders,
}

/// Takes the header lines a response carries besides its map.
pub fn take_lines(body: &mut ProxyBody) -> ResponseLines {
    match body {
        Either::Left(_) => ResponseLines::default(),
        Either::Right(metered) => {
            let (own, relayed) = metered.take_lines();
            ResponseLines { own, relayed }
        }
    }
}

/// `resp` with its header lines moved into its map, for hyper to write: the proxy's replace
/// same-named ones, the backend's fill in what the map lacks.
pub fn with_lines_in_map(mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let lines = take_lines(resp.body_mut());
    raw_headers::override_into(&lines.own, resp.headers_mut());
    raw_headers::merge_into(lines.relayed, resp.headers_mut());
    resp
}

/// Adds the RateLimit, `Tollgate-Overage`, `WWW-Authenticate`, Deprecation and Sunset headers.
pub fn decorate(resp: &mut Response<ProxyBody>, v: &Verdict<'_>, problem: Option<ProblemKind>) {
    if let (Some(plan), Some((rate_limits, quotas))) = (&v.plan, &v.limits) {
        let template = &plan.ratelimit_headers;
        // The quotas this request did not count in (other models'): never named as overage.
        let outside = v.reserved.reserved.outside;
        match resp.body_mut() {
            // A relayed response is written from lines: no map, no header value to validate.
            Either::Right(metered) => {
                if let Some(lines) = template.lines(rate_limits, quotas, outside) {
                    metered.set_own_lines(lines);
                }
            }
            Either::Left(_) => {
                if let Some((policy, state)) = template.headers(rate_limits, quotas) {
                    resp.headers_mut().insert(RATELIMIT_POLICY, policy);
                    resp.headers_mut().insert(RATELIMIT, state);
                }
                if let Some(overage) = template.overage_header(quotas, outside) {
                    resp.headers_mut().insert(TOLLGATE_OVERAGE, overage);
                }
            }
        }
    }
    let headers = resp.headers_mut();
    if problem == Some(ProblemKind::Unauthorized) {
        let (name, value) = problem::www_authenticate();
        headers.insert(name, value);
    }
    if let Some(route) = &v.route {
        if let Some(d) = &route.deprecation {
            headers.insert(DEPRECATION, d.clone());
        }
        if let Some(s) = &route.sunset {
            headers.insert(SUNSET, s.clone());
        }
    }
}

const RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");
const DEPRECATION: http::HeaderName = http::HeaderName::from_static("deprecation");
const SUNSET: http::HeaderName = http::HeaderName::from_static("sunset");
const TOLLGATE_OVERAGE: http::HeaderName =
    http::HeaderName::from_static(crate::quota::headers::OVERAGE_HEADER);

/// A problem as an HTTP response (Retry-After from the `retryAfter` member).
pub fn problem_response(problem: &Problem, instance: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Left(Full::new(problem.body(instance))));
    *resp.status_mut() = problem.kind.status();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, problem::content_type());
    if let Some(secs) = problem.members.get("retryAfter").and_then(Value::as_u64)
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}
