//! An LLM call on a route that translates it or falls back: sent to each of the route's backends
//! in turn, translated for the API each speaks, until one answers with something other than 429
//! or 5xx (or the last one answers at all). Nothing has reached the client before the answer
//! chosen, so trying the next backend is safe; the call was admitted (and reserved) once and is
//! settled once, with the usage of the backend that answered.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::{Either, Full};
use jiff::Timestamp;
use serde_json::Value;

use super::checks::Verdict;
use super::problem::{Problem, ProblemKind};
use super::{ClientConn, Proxy, ProxyBody, Via, problem_response};
use crate::config::RouteEntry;
use crate::config::route::CallBackend;
use crate::http1::raw_headers::RawHeaders;
use crate::llm::prompt::{Answer, PromptEntry};
use crate::llm::request::MAX_BODY;
use crate::llm::translate::{self, Translator};
use crate::quota::CounterStore;
use crate::upstream::forward::{ForwardContext, RequestBody, upstream_request};

/// The version header Anthropic requires, sent when the caller (speaking another API) did not.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// A prompt API's answer from the model's (read whole: metered as it is read, its status
/// decided by what it says).
async fn prompt_answer(
    prompt: &PromptEntry,
    resp: Response<ProxyBody>,
    route: &RouteEntry,
    path: &str,
) -> (Response<ProxyBody>, Option<ProblemKind>) {
    let (parts, body) = match read_whole(resp, route, path).await {
        Ok(read) => read,
        Err(refused) => return refused,
    };
    let json = |status, body: Bytes| {
        let mut resp = Response::new(Either::Left(Full::new(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    };
    match prompt.answer(parts.status, &body) {
        Answer::Output(output) => (
            json(http::StatusCode::OK, Bytes::from(output.to_string())),
            None,
        ),
        Answer::Backend => (json(parts.status, body), None),
        // The model ran: the call is charged what it used.
        Answer::Invalid { reason, text } => {
            let shown: String = text.chars().take(2000).collect();
            let problem = Problem::new(ProblemKind::InvalidModelOutput, reason)
                .with("apiRoute", route.route.key.name.as_str())
                .with("answer", shown);
            (
                problem_response(&problem, path),
                Some(ProblemKind::InvalidModelOutput),
            )
        }
    }
}

/// A response's body read whole (at most [`translate::MAX_ANSWER`] bytes, within the route's
/// timeout), metered on the way. A body that does not arrive in full was charged what the call
/// may have used (its reservation, as any answer cut before its usage): the problem says so.
async fn read_whole(
    resp: Response<ProxyBody>,
    route: &RouteEntry,
    path: &str,
) -> Result<(http::response::Parts, Bytes), (Response<ProxyBody>, Option<ProblemKind>)> {
    let (parts, body) = resp.into_parts();
    let timeout = Duration::from_millis(route.route.timeout_ms);
    let limited = http_body_util::Limited::new(body, translate::MAX_ANSWER);
    let read = tokio::time::timeout(timeout, http_body_util::BodyExt::collect(limited)).await;
    let (kind, detail) = match read {
        Ok(Ok(collected)) => return Ok((parts, collected.to_bytes())),
        Err(_) => (
            ProblemKind::BackendTimeout,
            format!(
                "The model's answer did not arrive in full within {} ms; the call was charged its reservation.",
                route.route.timeout_ms
            ),
        ),
        Ok(Err(_)) => (
            ProblemKind::BackendUnavailable,
            format!(
                "The model's answer was cut off or larger than {} MiB; the call was charged its reservation.",
                translate::MAX_ANSWER / (1024 * 1024)
            ),
        ),
    };
    let problem = Problem::new(kind, detail).with("apiRoute", route.route.key.name.as_str());
    Err((problem_response(&problem, path), Some(kind)))
}

/// A translated whole answer: answered 502 when the backend's 2xx answer could not be
/// translated (not JSON, too large), since the caller's SDK would read it as an answer.
async fn whole_answer(
    resp: Response<ProxyBody>,
    backend_status: http::StatusCode,
    route: &RouteEntry,
    path: &str,
) -> (Response<ProxyBody>, Option<ProblemKind>) {
    let (mut parts, body) = match read_whole(resp, route, path).await {
        Ok(read) => read,
        Err(refused) => return refused,
    };
    if backend_status.is_success() && translate::is_error_body(&body) {
        parts.status = http::StatusCode::BAD_GATEWAY;
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    (
        Response::from_parts(parts, Either::Left(Full::new(body))),
        None,
    )
}

/// Whether a backend's answer sends the call on to the next backend: rate limited or failed.
fn worth_another(status: http::StatusCode) -> bool {
    status == http::StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

impl<S: CounterStore> Proxy<S> {
    /// Sends the call to the route's backends in order; the response, the problem if the proxy
    /// answered, and when the answering backend was asked.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_call(
        &self,
        req: Request<RequestBody>,
        raw: &RawHeaders,
        v: &mut Verdict<'_>,
        route: &RouteEntry,
        client: &ClientConn,
        now: Timestamp,
        path: &str,
    ) -> (Response<ProxyBody>, Option<ProblemKind>, Option<Instant>) {
        let backends = route.calls.as_deref().unwrap_or_default();
        let caller = route.route.caller_api();
        let (parts, body) = req.into_parts();
        let bytes = match body {
            RequestBody::Buffered(bytes) => bytes.unwrap_or_default(),
            // Not read for the plan (none applies): read here, as for a metered call.
            other => {
                let limited = http_body_util::Limited::new(other, MAX_BODY);
                let timeout = Duration::from_millis(route.route.timeout_ms);
                match tokio::time::timeout(timeout, http_body_util::BodyExt::collect(limited)).await
                {
                    Ok(Ok(collected)) => collected.to_bytes(),
                    _ => {
                        let (resp, kind) = self
                            .failed(
                                v,
                                now,
                                ProblemKind::BadRequest,
                                "The request body could not be read in full (at most 32 MiB); send it again.",
                                path,
                            )
                            .await;
                        return (resp, kind, None);
                    }
                }
            }
        };
        // A prompt API's body becomes its call here when no plan read it (and made it so).
        let bytes = match &route.prompt {
            Some(prompt) if v.call.is_none() => match prompt.render(&bytes) {
                Ok(call) => call,
                Err(e) => {
                    let (resp, kind) = self
                        .failed(v, now, ProblemKind::InvalidInput, &e.to_string(), path)
                        .await;
                    return (resp, kind, None);
                }
            },
            _ => bytes,
        };
        let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(&bytes) else {
            let (resp, kind) = self
                .failed(
                    v,
                    now,
                    ProblemKind::BadRequest,
                    "A call to this API must send a JSON object (uncompressed): it is translated for the backend.",
                    path,
                )
                .await;
            return (resp, kind, None);
        };
        // The usage chunk of an OpenAI stream goes to the caller only when it asked (the proxy
        // may have asked for it, for metering).
        let include_usage = doc
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            == Some(&Value::Bool(true))
            && !v.call.as_ref().is_some_and(|c| c.strip_usage_chunk);
        let path_and_query = match route.prompt {
            Some(_) => "/v1/chat/completions",
            None => parts.uri.path_and_query().map_or(path, |pq| pq.as_str()),
        };
        // Every backend's request first: "the last backend" is the last one that can take the
        // call, whose answer (even a 429 or 5xx) is the caller's.
        let mut attempts = Vec::with_capacity(backends.len());
        for (i, backend) in backends.iter().enumerate() {
            match translate::request(caller, backend.api, path_and_query, &doc, &backend.models) {
                Ok(outbound) => attempts.push((backend, outbound)),
                // The route's own backend cannot take the call: the caller learns why.
                Err(unsupported) if i == 0 => {
                    let (resp, kind) = self
                        .failed(v, now, ProblemKind::BadRequest, &unsupported.0, path)
                        .await;
                    return (resp, kind, None);
                }
                // A fallback that cannot is passed over.
                Err(unsupported) => {
                    tracing::debug!(route = %route.id, backend = i, reason = %unsupported, "fallback backend skipped: it cannot take the call");
                }
            }
        }
        let mut last_failure = None;
        let count = attempts.len();
        for (i, (backend, outbound)) in attempts.into_iter().enumerate() {
            let last = i + 1 == count;
            let Some(request) = self.backend_request(&parts, raw, v, client, backend, outbound)
            else {
                continue;
            };
            let started = Instant::now();
            let due = started + Duration::from_millis(backend.timeout_ms);
            let via = match backend.upstream.scheme == http::uri::Scheme::HTTP {
                true => Via::Pool,
                false => Via::Http1,
            };
            let sent = self
                .send_by_hyper(&backend.upstream, request, via, due)
                .await;
            match sent {
                Ok(resp) if last || !worth_another(resp.status()) => {
                    let status = resp.status();
                    let translator = Translator::new(
                        caller,
                        backend.api,
                        status,
                        super::backend_content_type(&resp),
                        include_usage,
                    );
                    // A whole answer is read before it is answered: its status follows what
                    // the translation made of it.
                    let whole = translator.as_ref().is_some_and(|t| !t.streams());
                    let resp = self.relayed_from(resp, v, route, backend.api, translator, now);
                    if let Some(prompt) = &route.prompt {
                        let (resp, kind) = prompt_answer(prompt, resp, route, path).await;
                        return (resp, kind, Some(started));
                    }
                    if whole {
                        let (resp, kind) = whole_answer(resp, status, route, path).await;
                        return (resp, kind, Some(started));
                    }
                    return (resp, None, Some(started));
                }
                Ok(resp) => {
                    self.metrics
                        .fallbacks
                        .with_label_values(&[&route.id, resp.status().as_str()])
                        .inc();
                    tracing::info!(route = %route.id, backend = %backend.upstream.authority, status = resp.status().as_u16(), "backend refused the call; trying the next");
                }
                Err(err) => {
                    let reason = if matches!(err, crate::upstream::pool::UpstreamError::TimedOut) {
                        "timeout"
                    } else {
                        "unreachable"
                    };
                    if !last {
                        self.metrics
                            .fallbacks
                            .with_label_values(&[&route.id, reason])
                            .inc();
                        tracing::info!(route = %route.id, backend = %backend.upstream.authority, error = %err, "backend failed; trying the next");
                    }
                    last_failure = Some(err);
                }
            }
        }
        let (resp, kind) = match last_failure {
            Some(err) => self.backend_failed(err, v, route, now, path).await,
            None => {
                self.failed(
                    v,
                    now,
                    ProblemKind::BackendUnavailable,
                    "No backend of this API can take the call. The request was not charged.",
                    path,
                )
                .await
            }
        };
        (resp, kind, None)
    }

    /// The request `backend` gets: the caller's headers (rewritten as for any backend), the
    /// translated body and its path.
    fn backend_request(
        &self,
        parts: &http::request::Parts,
        raw: &RawHeaders,
        v: &Verdict<'_>,
        client: &ClientConn,
        backend: &CallBackend,
        outbound: translate::Outbound,
    ) -> Option<Request<RequestBody>> {
        let mut request = Request::new(RequestBody::Buffered(Some(outbound.body)));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = outbound.path.parse().ok()?;
        *request.headers_mut() = parts.headers.clone();
        if backend.api == tollgate_crds::resources::Metering::Anthropic {
            request
                .headers_mut()
                .entry("anthropic-version")
                .or_insert(HeaderValue::from_static(ANTHROPIC_VERSION));
        }
        let cx = ForwardContext {
            upstream: &backend.upstream,
            tenant: v.tenant.map(|t| &t.header),
            client_ip: &client.ip_header,
            tls: client.tls,
            authority: parts.uri.authority().cloned(),
            // The answer is read (metered, translated): never compressed.
            identity_encoding: true,
        };
        let absolute = backend.upstream.scheme != http::uri::Scheme::HTTP;
        upstream_request(request, raw, &cx, absolute).ok()
    }
}
