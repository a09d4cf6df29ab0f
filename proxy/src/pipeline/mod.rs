//! The request path, in order: the path normalized (`request_path`), the checks up to the quotas
//! (`checks`), admission by the counter store, then the backend (or a direct response), and the
//! response's headers (`response`), metrics and access-log line; a gRPC caller's refusal last
//! put in gRPC's terms (`grpc`). [`Proxy::handle`] runs them; every await of a request is there.

pub mod abandoned;
pub mod auth;
pub mod call;
pub mod checks;
pub mod grpc;
pub mod problem;
pub mod request_path;
pub mod response;
pub mod upgrade;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::{Either, Full};
use jiff::Timestamp;

use crate::config::{ProxyConfig, RouteEntry};
use crate::http1::client_headers::ClientHeaders;
use crate::http1::raw_headers::RawHeaders;
use crate::llm::meter::Settlement;
use crate::llm::reservation::{self, Refusal, Reserved};
use crate::llm::{CallRequest, Charge, Estimates, Ledger, Meter, MeteredBody, request};
use crate::quota::{CounterStore, Metered, PlanEntry, Subject};
use crate::telemetry::access_log::{AccessLog, AccessRecord, CallFields, DeferredLine};
use crate::telemetry::metrics::{ProxyMetrics, TOKEN_TYPES, micros, token_values};
use crate::upstream::Upstream;
use crate::upstream::forward::{
    self, ForwardContext, RequestBody, UpstreamClient, downstream_response, upstream_request,
};
use crate::upstream::h1 as upstream_h1;
use crate::upstream::pool::{UpstreamBody, UpstreamError, UpstreamPool};
use crate::upstream::websocket::ExtendedConnect;
use auth::KeyMemo;
use checks::Verdict;
use problem::{Problem, ProblemKind};
pub use response::{ProxyBody, ResponseLines, problem_response, take_lines, with_lines_in_map};
use tollgate_crds::error_chain::error_chain;

/// A backend response's header `name` (lower case), from its map or its relayed lines.
fn backend_header<'r>(resp: &'r Response<UpstreamBody>, name: &'static str) -> Option<&'r str> {
    resp.headers()
        .get(name)
        .map(HeaderValue::as_bytes)
        .or_else(|| resp.body().relayed_headers().and_then(|r| r.get(name)))
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// A backend response's `Content-Type`.
fn backend_content_type(resp: &Response<UpstreamBody>) -> Option<&str> {
    backend_header(resp, "content-type")
}

/// The proxy: current configuration, counters, the backend client and telemetry.
#[derive(Debug)]
pub struct Proxy<S> {
    config: ArcSwap<ProxyConfig>,
    store: Arc<S>,
    client: UpstreamClient,
    pool: Arc<UpstreamPool>,
    metrics: ProxyMetrics,
    access_log: AccessLog,
    /// Recent usage by model, for metered calls' reservations.
    estimates: Arc<Estimates>,
    /// What each tenant's metered calls used this month.
    ledger: Arc<Ledger>,
    /// Whether the listener takes connections from this host only: the one case where requests
    /// may be a workload's own without a key (an egress sidecar's).
    loopback_only: bool,
}

/// The client end of a connection, described once per connection.
#[derive(Debug)]
pub struct ClientConn {
    /// Peer address.
    pub addr: SocketAddr,
    /// Peer IP as text (access log), formatted once.
    pub ip: Arc<str>,
    /// The same, as an `X-Forwarded-For` value.
    pub ip_header: HeaderValue,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The last API key sent on the connection and its digest.
    pub keys: KeyMemo,
    /// Turns true when the proxy shuts down; a WebSocket relayed from this connection holds it
    /// (shutdown waits for it to close).
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// The connection's place under the listener's `--max-connections` (and in its count of open
    /// connections): held by the connection, and by a WebSocket relayed from it, so that the
    /// place is free only once both ended. `None` outside a listener.
    pub place: Option<Arc<dyn std::any::Any + Send + Sync>>,
    /// Set by the engine serving the connection when it watches for idleness: what a WebSocket
    /// relayed from it holds so that the connection counts as busy (an HTTP/2 connection stays
    /// open for the WebSocket's stream, and must not be closed as idle meanwhile).
    pub busy: std::sync::OnceLock<Busy>,
}

/// Makes a token that keeps a connection busy while held (see [`ClientConn::busy`]).
pub struct Busy(pub Box<dyn Fn() -> Box<dyn std::any::Any + Send> + Send + Sync>);

impl std::fmt::Debug for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Busy")
    }
}

impl ClientConn {
    /// Describes a new connection.
    pub fn new(addr: SocketAddr, tls: bool) -> Self {
        // A connection made outside a listener (tests, benches) is never told to stop.
        let (_, stop) = tokio::sync::watch::channel(false);
        let ip = addr.ip().to_string();
        Self {
            addr,
            ip_header: HeaderValue::from_str(&ip).unwrap_or(HeaderValue::from_static("unknown")),
            ip: Arc::from(ip),
            tls,
            keys: KeyMemo::default(),
            stop,
            place: None,
            busy: std::sync::OnceLock::new(),
        }
    }

    /// The connection, told of shutdown by `stop`.
    pub fn watching(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stop = stop;
        self
    }

    /// The connection, holding `place` (see [`ClientConn::place`]).
    pub fn holding(mut self, place: Arc<dyn std::any::Any + Send + Sync>) -> Self {
        self.place = Some(place);
        self
    }
}

/// How an admitted request is served (see `Proxy::prepare`).
enum Forward<'a> {
    /// Answered by the proxy itself (a direct response).
    Answered(Response<ProxyBody>),
    /// Cannot be forwarded: refunded and answered with this problem.
    Refused(ProblemKind, &'static str),
    /// A WebSocket upgrade: sent by [`Proxy::send_upgrade`] (`upgrade`).
    Upgrade {
        route: &'a RouteEntry,
        request: Request<RequestBody>,
    },
    /// An LLM call on a route that translates it or falls back: sent by [`Proxy::send_call`] (`call`).
    Call {
        route: &'a RouteEntry,
        request: Request<RequestBody>,
    },
    /// Sent to the route's backend.
    Backend {
        route: &'a RouteEntry,
        request: BackendRequest<'a>,
        /// When forwarding began: the backend's response time is measured from here.
        started: Instant,
    },
}

/// A request on its way to a backend.
enum BackendRequest<'a> {
    /// A bodiless request over plain HTTP: its head, written by this task to a pooled connection.
    Inline {
        authority: &'a http::uri::Authority,
        head: Vec<u8>,
        method: http::Method,
        /// The route's timeout.
        due: Instant,
    },
    /// Through hyper (a body, or HTTPS).
    Hyper(Sending<'a>),
}

/// How a request goes to its backend through hyper.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// A pooled HTTP/1.1 connection to a plain-HTTP backend ([`UpstreamPool`]).
    Pool,
    /// The generic HTTP/1.1 client (HTTPS backends).
    Http1,
    /// The HTTP/2 client (gRPC calls, `protocol: HTTP2`).
    Http2,
}

/// A backend response on its way.
type Sending<'a> =
    Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + Send + 'a>>;

impl<S: CounterStore> Proxy<S> {
    /// A proxy with an empty configuration (404 for everything until one is applied).
    pub fn new(
        store: Arc<S>,
        client: UpstreamClient,
        metrics: ProxyMetrics,
        access_log: AccessLog,
        ledger: Arc<Ledger>,
    ) -> Self {
        Self {
            config: ArcSwap::from_pointee(ProxyConfig::empty()),
            store,
            client,
            pool: UpstreamPool::new(),
            metrics,
            access_log,
            estimates: Arc::new(Estimates::new()),
            ledger,
            loopback_only: false,
        }
    }

    /// Tells the proxy where it listens. Only on a loopback address does it take a snapshot's
    /// workload tenant (an egress sidecar's identity): reachable from elsewhere, that would let
    /// anyone call as the tenant without a key.
    pub fn listening_on(mut self, listen: std::net::SocketAddr) -> Self {
        self.loopback_only = listen.ip().is_loopback();
        self
    }

    /// Whether call usage was recorded since the last time this was asked (worth saving).
    pub fn ledger_changed(&self) -> bool {
        self.ledger.take_dirty()
    }

    /// What each tenant's requests under plans that meter usage used in the month current at
    /// `now` (this proxy's share), priced in each plan's currency.
    pub fn call_usage(&self, now: Timestamp) -> Vec<tollgate_crds::stream::CallUsageRecord> {
        let config = self.config();
        let currencies: std::collections::HashMap<&str, &str> = config
            .plans
            .values()
            .filter_map(|p| Some((&*p.id, p.plan.pricing.as_ref()?.currency.as_str())))
            .collect();
        self.ledger
            .current(now, |plan| currencies.get(plan).map(|c| (*c).to_owned()))
    }

    /// Swaps in a new configuration; in-flight requests finish with the one they loaded.
    pub fn apply(&self, config: ProxyConfig) {
        let config = config.for_listener(self.loopback_only);
        self.metrics
            .config_version
            .set(i64::try_from(config.version).unwrap_or(i64::MAX));
        self.config.store(Arc::new(config));
        // What building it freed (a parsed YAML world, the last configuration if no request
        // still holds it) goes back to the kernel now: an idle proxy would keep it resident.
        tollgate_alloc::release_freed_memory();
    }

    /// The configuration being enforced.
    pub fn config(&self) -> Arc<ProxyConfig> {
        self.config.load_full()
    }

    /// The counter store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Handles one request end to end.
    // Not an `async fn`: its body would start by moving the arguments into locals, and the
    // future would keep room for both (the request twice: ~300 bytes more to move per request).
    #[allow(clippy::manual_async_fn)]
    pub fn handle<'a>(
        &'a self,
        mut req: Request<RequestBody>,
        raw: RawHeaders,
        client: &'a ClientConn,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'a {
        async move {
            let started = Instant::now();
            let now = Timestamp::now();
            let config = self.config.load_full();
            // An HTTP/2 WebSocket goes the way of the HTTP/1.1 upgrade it stands for.
            let extended = crate::upstream::websocket::from_extended_connect(&mut req);
            let websocket_over_h2 = extended == ExtendedConnect::WebSocket;
            let method = req.method().clone();
            // Routed and forwarded with one spelling of the path: the route matched must be the
            // path the backend serves (`/free/../paid` is `/paid`).
            let path_refused = match extended {
                ExtendedConnect::Other => Some(
                    "Of the protocols HTTP/2's extended CONNECT can carry, Tollgate carries WebSocket only.",
                ),
                _ => request_path::unroutable(&method, req.uri())
                    .or_else(|| request_path::normalize(req.uri_mut()).err()),
            };
            // The URI shares the request's bytes: a reference count, not a copy.
            let uri = req.uri().clone();
            let path = uri.path();

            // Dropped armed if the client gives up before the answer: still logged and counted.
            let mut watch = abandoned::Watch::new(
                &self.access_log,
                &self.metrics,
                &client.ip,
                method.as_str(),
                path,
                (now, started),
            );
            let mut verdict = Verdict {
                grpc: grpc::call(&req),
                websocket_over_h2,
                ..Verdict::default()
            };
            // Set when the backend answered: when the request went to it.
            let mut backend_started = None;
            // Every await of the request path is in this function: a nested async fn's future is
            // moved whole into its caller's on each call (kilobytes of memcpy per request).
            let checked = match path_refused {
                Some(detail) => Err(Problem::new(ProblemKind::BadRequest, detail)),
                None => checks::check(&config, &req, &raw, &client.keys, now, &mut verdict),
            };
            watch.found(verdict.route, verdict.tenant);
            let decided = match checked {
                Ok(Some(subject)) => {
                    // Boxed: only plans that read calls reserve (a cold path here).
                    // A route that translates or falls back reads every call (to send it again).
                    let reads = subject.plan.reads_calls
                        || verdict.route.is_some_and(|r| r.calls.is_some());
                    let reserved = match reads {
                        true => Box::pin(self.reserve(&mut req, &mut verdict, subject.plan)).await,
                        false => Ok(Reserved::default()),
                    };
                    match reserved {
                        Ok(reserved) => {
                            let admission =
                                self.store.admit(subject, now, &reserved.reserved).await;
                            verdict.reserved = reserved;
                            checks::admitted(admission, now, &mut verdict)
                        }
                        Err(problem) => Err(problem),
                    }
                }
                Ok(None) => Ok(()),
                Err(problem) => Err(problem),
            };
            if decided.is_err()
                && verdict.limits.is_none()
                && let (Some(tenant), Some(plan)) = (&verdict.tenant, &verdict.plan)
            {
                // Refused before the quota check: the tenant still learns where its limits stand.
                // Boxed here and below: cold paths kept out of the hot path's future, which is
                // moved on every await (each kilobyte there is a memcpy per request).
                verdict.limits = Some(
                    Box::pin(self.store.peek(
                        Subject {
                            tenant: &tenant.id,
                            plan,
                        },
                        now,
                    ))
                    .await,
                );
            }
            let (mut response, problem_kind) = match decided {
                Err(problem) => {
                    let kind = problem.kind;
                    (problem_response(&problem, path), Some(kind))
                }
                Ok(()) => match self.prepare(req, &raw, &mut verdict, client, now) {
                    Forward::Answered(resp) => (resp, None),
                    Forward::Refused(kind, detail) => {
                        Box::pin(self.failed(&verdict, now, kind, detail, path)).await
                    }
                    // Boxed: upgrades are a cold path here.
                    Forward::Upgrade { route, request } => {
                        let (response, kind, started) = Box::pin(self.send_upgrade(
                            request,
                            &raw,
                            &mut verdict,
                            route,
                            client,
                            now,
                            path,
                        ))
                        .await;
                        backend_started = started;
                        (response, kind)
                    }
                    // Boxed: the LLM call path (translation, fallbacks) is a cold path here.
                    Forward::Call { route, request } => {
                        let (response, kind, started) = Box::pin(self.send_call(
                            request,
                            &raw,
                            &mut verdict,
                            route,
                            client,
                            now,
                            path,
                        ))
                        .await;
                        backend_started = started;
                        (response, kind)
                    }
                    Forward::Backend {
                        route,
                        request,
                        started,
                    } => {
                        let sent = match request {
                            BackendRequest::Inline {
                                authority,
                                head,
                                method,
                                due,
                            } => {
                                self.pool
                                    .send_inline(authority, &head, &method, due.into())
                                    .await
                            }
                            BackendRequest::Hyper(sending) => sending.await,
                        };
                        match sent {
                            Ok(resp) => {
                                backend_started = Some(started);
                                (self.relayed(resp, &mut verdict, route, now), None)
                            }
                            // Boxed: only a failure awaits (its refund).
                            Err(err) => {
                                Box::pin(self.backend_failed(err, &verdict, route, now, path)).await
                            }
                        }
                    }
                },
            };
            watch.answered();
            // One clock read for both the backend's response time and the request's latency.
            let answered = Instant::now();
            if let Some(backend_started) = backend_started {
                self.metrics
                    .upstream_duration
                    .observe((answered - backend_started).as_secs_f64());
            }
            response::decorate(&mut response, &verdict, problem_kind);

            let status = response.status();
            let reason = problem_kind.map_or("ok", ProblemKind::slug);
            let elapsed = answered - started;
            match &verdict.route {
                Some(route) => route.telemetry.observe(
                    &self.metrics,
                    &route.id,
                    status.as_u16(),
                    reason,
                    elapsed.as_secs_f64(),
                ),
                None => {
                    self.metrics
                        .requests
                        .with_label_values(&["none", status.as_str(), reason])
                        .inc();
                    self.metrics
                        .duration
                        .with_label_values(&["none"])
                        .observe(elapsed.as_secs_f64());
                }
            }
            if problem_kind.is_some() {
                self.metrics
                    .rejections
                    .with_label_values(&[status.as_str(), reason])
                    .inc();
            }
            if let (Some(per_tenant), Some(tenant)) =
                (&self.metrics.tenant_requests, &verdict.tenant)
            {
                per_tenant.with_label_values(&[&tenant.id, reason]).inc();
            }
            let record = AccessRecord {
                time: now,
                client: &client.ip,
                method: method.as_str(),
                path,
                route: verdict.route.as_ref().map(|r| &*r.id),
                tenant: verdict.tenant.as_ref().map(|t| &*t.id),
                status: status.as_u16(),
                problem: problem_kind.map(ProblemKind::slug),
                latency: elapsed,
                bytes: http_body::Body::size_hint(response.body()).exact(),
                call: None,
            };
            match &verdict.deferred_line {
                // A metered response: its line waits for what the call used.
                Some(line) => line.head(
                    &self.access_log,
                    &record,
                    &client.ip,
                    verdict.route.map(|r| &r.id),
                    verdict.tenant.map(|t| &t.id),
                    problem_kind.map(ProblemKind::slug),
                ),
                None => self.access_log.record(&record),
            }
            // Counted and logged above under the HTTP status, as any refusal.
            if verdict.grpc.is_some() {
                response = grpc::own_answer(response, problem_kind);
            }
            response
        }
    }

    /// How an admitted request is served: a direct response, or what to send to the backend.
    fn prepare<'a>(
        &'a self,
        req: Request<RequestBody>,
        raw: &RawHeaders,
        v: &mut Verdict<'a>,
        client: &ClientConn,
        now: Timestamp,
    ) -> Forward<'a> {
        let Some(route) = v.route else {
            return Forward::Refused(ProblemKind::RouteNotFound, "No route.");
        };
        // An HTTP/2 WebSocket anywhere but to a backend that switches: any 2xx would open its
        // stream as a tunnel to nothing.
        if v.websocket_over_h2 && !(route.route.websocket && route.upstream.is_some()) {
            return Forward::Refused(
                ProblemKind::BadRequest,
                "This API does not carry WebSocket connections.",
            );
        }
        if let Some(direct) = &route.direct {
            // No backend generated anything: only the per-request price stays.
            if let Some(mut meter) = self.meter_for(
                v,
                route,
                route.route.metering,
                direct.status,
                (None, None),
                now,
                false,
            ) {
                meter.finish(true);
            }
            let mut resp = Response::new(Either::Left(Full::new(direct.body.clone())));
            *resp.status_mut() = direct.status;
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, direct.content_type.clone());
            return Forward::Answered(resp);
        }
        // Only a route that carries WebSockets (`spec.websocket`): elsewhere the upgrade headers
        // are dropped as any hop-by-hop header, and the backend sees a plain request.
        if route.route.websocket
            && route.upstream.is_some()
            && crate::upstream::websocket::is_upgrade(&req)
        {
            return Forward::Upgrade {
                route,
                request: req,
            };
        }

        if let Some(prompt) = &route.prompt {
            return match *req.method() {
                http::Method::POST => Forward::Call {
                    route,
                    request: req,
                },
                http::Method::GET => {
                    // Answered here: the request's own price is all it costs (as a direct
                    // response's).
                    if let Some(mut meter) = self.meter_for(
                        v,
                        route,
                        route.route.metering,
                        http::StatusCode::OK,
                        (None, None),
                        now,
                        false,
                    ) {
                        meter.finish(true);
                    }
                    let mut resp = Response::new(Either::Left(Full::new(prompt.description())));
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    Forward::Answered(resp)
                }
                _ => Forward::Refused(
                    ProblemKind::BadRequest,
                    "A prompt API takes POST (a call) and GET (its description and schemas).",
                ),
            };
        }
        if let Some(backends) = &route.calls {
            let caller = route.route.caller_api();
            let is_call = req.method() == http::Method::POST
                && crate::llm::translate::is_call(caller, req.uri().path());
            if is_call {
                return Forward::Call {
                    route,
                    request: req,
                };
            }
            // Anything else goes to the route's own backend, as it came: only when that
            // backend speaks the callers' API.
            if backends.first().is_none_or(|b| b.api != caller) {
                return Forward::Refused(
                    ProblemKind::BadRequest,
                    "This API translates calls for its backend: only POST requests to its chat completions (OpenAI) or messages (Anthropic) endpoint can be served.",
                );
            }
        }
        let Some(upstream) = route.upstream.as_ref() else {
            return Forward::Refused(
                ProblemKind::BackendUnavailable,
                "The API's backend URL is unusable.",
            );
        };
        let cx = ForwardContext {
            upstream,
            tenant: v.tenant.map(|t| &t.header),
            client_ip: &client.ip_header,
            tls: client.tls,
            authority: req.uri().authority().cloned(),
            // A metered call's answer is read on its way: never compressed.
            identity_encoding: v.call.is_some() && v.plan.is_some_and(|p| p.meters_usage),
        };
        let plain_http = upstream.scheme == http::uri::Scheme::HTTP;
        let started = Instant::now();
        let mut due = started + Duration::from_millis(route.route.timeout_ms);
        let request = if route.route.http2 || v.grpc.is_some() {
            let trailers = grpc::accepts_trailers(ClientHeaders::of(req.headers(), raw));
            let Ok(mut upstream_req) = upstream_request(req, raw, &cx, true) else {
                return Forward::Refused(
                    ProblemKind::BadRequest,
                    "The request target cannot be forwarded.",
                );
            };
            *upstream_req.version_mut() = http::Version::HTTP_2;
            // A gRPC caller's deadline, not the route's timeout, bounds the wait for the answer
            // (its first message may come late); the backend gets what is left of it.
            if let Some(deadline) = v.grpc.and_then(|c| c.deadline) {
                due = deadline;
                upstream_req.headers_mut().insert(
                    grpc::GRPC_TIMEOUT,
                    grpc::remaining_timeout(deadline, started),
                );
            }
            if trailers {
                // The one hop-by-hop header HTTP/2 keeps (RFC 9113 section 8.2.2); gRPC
                // servers look for it.
                upstream_req
                    .headers_mut()
                    .insert(header::TE, HeaderValue::from_static("trailers"));
            }
            BackendRequest::Hyper(self.send_by_hyper(upstream, upstream_req, Via::Http2, due))
        } else if plain_http && upstream_h1::eligible(&req) {
            // The common case: the forwarded head is written straight from the client's request.
            BackendRequest::Inline {
                authority: &upstream.authority,
                head: forward::request_head(&req, raw, &cx),
                method: req.method().clone(),
                due,
            }
        } else {
            let Ok(upstream_req) = upstream_request(req, raw, &cx, !plain_http) else {
                return Forward::Refused(
                    ProblemKind::BadRequest,
                    "The request target cannot be forwarded.",
                );
            };
            let via = if plain_http { Via::Pool } else { Via::Http1 };
            BackendRequest::Hyper(self.send_by_hyper(upstream, upstream_req, via, due))
        };
        Forward::Backend {
            route,
            request,
            started,
        }
    }

    /// Sends a request through hyper `via` a pooled connection or a generic client. Boxed: the
    /// inline exchange is the common case.
    fn send_by_hyper<'a>(
        &'a self,
        upstream: &'a Upstream,
        req: Request<RequestBody>,
        via: Via,
        due: Instant,
    ) -> Sending<'a> {
        Box::pin(async move {
            let client = match via {
                Via::Pool => {
                    let sent = self.pool.send(&upstream.authority, req);
                    return tokio::time::timeout_at(due.into(), sent)
                        .await
                        .unwrap_or(Err(UpstreamError::TimedOut));
                }
                Via::Http2 => {
                    let sent = tokio::time::timeout_at(due.into(), self.client.http2.send(req));
                    return match sent.await {
                        Ok(Ok((resp, stream))) => Ok(downstream_response(resp)
                            .map(|body| UpstreamBody::on_stream(body, stream))),
                        Ok(Err(e)) => Err(UpstreamError::Connect {
                            authority: upstream.authority.clone(),
                            reason: error_chain(&e),
                        }),
                        Err(_) => Err(UpstreamError::TimedOut),
                    };
                }
                Via::Http1 => &self.client.http1,
            };
            let sent = tokio::time::timeout_at(due.into(), async {
                let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
                Ok::<_, String>(downstream_response(resp).map(UpstreamBody::detached))
            })
            .await;
            match sent {
                Ok(sent) => sent.map_err(|reason| UpstreamError::Connect {
                    authority: upstream.authority.clone(),
                    reason,
                }),
                Err(_) => Err(UpstreamError::TimedOut),
            }
        })
    }

    /// The problem for a failed backend exchange (the charge refunded).
    async fn backend_failed(
        &self,
        err: UpstreamError,
        v: &Verdict<'_>,
        route: &RouteEntry,
        now: Timestamp,
        path: &str,
    ) -> (Response<ProxyBody>, Option<ProblemKind>) {
        let deadline = v.grpc.and_then(|c| c.timeout);
        let (kind, detail) = match (&err, deadline) {
            (UpstreamError::TimedOut, Some(deadline)) => (
                ProblemKind::BackendTimeout,
                format!(
                    "The API's backend did not answer within the call's deadline ({deadline:?}). The call was not charged."
                ),
            ),
            (UpstreamError::TimedOut, None) => (
                ProblemKind::BackendTimeout,
                format!(
                    "The API's backend did not answer within {} ms. The request was not charged.",
                    route.route.timeout_ms
                ),
            ),
            _ => (
                ProblemKind::BackendUnavailable,
                "The API's backend could not be reached. The request was not charged; retry later."
                    .to_owned(),
            ),
        };
        // The access log says which requests failed; only this says why.
        if let Some(left_out) = route.backend_warnings.due(Instant::now()) {
            let backend = route.upstream.as_ref().map(|u| u.authority.as_str());
            tracing::warn!(
                route = %route.id,
                backend = %backend.unwrap_or("-"),
                error = %err,
                answered = %kind.slug(),
                failures_not_logged = left_out,
                "backend request failed (not charged; at most one warning per route every 10 s)"
            );
        }
        self.failed(v, now, kind, &detail, path).await
    }

    /// A backend's response on its way to the client: metered when the plan meters usage, its
    /// body bounded by the route's timeout. It comes without hop-by-hop headers: the inline
    /// exchange never keeps them, the hyper paths remove them.
    fn relayed(
        &self,
        resp: Response<UpstreamBody>,
        v: &mut Verdict<'_>,
        route: &RouteEntry,
        now: Timestamp,
    ) -> Response<ProxyBody> {
        self.relayed_from(resp, v, route, route.route.metering, None, now)
    }

    /// [`Proxy::relayed`] for a backend speaking `api`, its answer rewritten by `translator`
    /// when it speaks another API than the caller.
    fn relayed_from(
        &self,
        resp: Response<UpstreamBody>,
        v: &mut Verdict<'_>,
        route: &RouteEntry,
        api: tollgate_crds::resources::Metering,
        translator: Option<crate::llm::translate::Translator>,
        now: Timestamp,
    ) -> Response<ProxyBody> {
        // The content type is looked up only for a plan that meters usage.
        let meter = match &v.plan {
            Some(plan) if plan.meters_usage => self.meter_for(
                v,
                route,
                api,
                resp.status(),
                (
                    backend_content_type(&resp),
                    backend_header(&resp, "content-encoding"),
                ),
                now,
                true,
            ),
            _ => None,
        };
        let strip_usage_chunk = v.call.as_ref().is_some_and(|c| c.strip_usage_chunk)
            && backend_content_type(&resp)
                .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("text/event-stream"));
        let mut resp = resp;
        let rewrite: Option<Box<dyn crate::llm::meter::Rewrite>> = match translator {
            Some(translator) => {
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(translator.content_type()),
                );
                Some(Box::new(translator))
            }
            None if strip_usage_chunk => {
                Some(Box::<crate::llm::meter::UsageChunkFilter>::default())
            }
            None => None,
        };
        if rewrite.is_some() {
            // The client gets other bytes than the backend sent.
            resp.headers_mut().remove(header::CONTENT_LENGTH);
        }
        // A gRPC stream may be quiet for long between messages: it ends by its deadline, its
        // caller or its backend, not by the route's timeout.
        let body_timeout = match v.grpc {
            Some(_) => None,
            None => Some(Duration::from_millis(route.route.timeout_ms)),
        };
        resp.map(|body| {
            let body = match body_timeout {
                Some(limit) => body.with_read_timeout(limit),
                None => body,
            };
            Either::Right(MeteredBody::new(body, meter, rewrite))
        })
    }

    /// Reads a metered call's request and computes what it reserves. A call generates (and is
    /// read) when it is a POST on a route that reads tokens; anything else (a model list, a
    /// stored answer fetched again) reserves the per-request price only. `Err` when the call
    /// cannot be reserved: too large, unreadable or not JSON, a model without a price.
    async fn reserve(
        &self,
        req: &mut Request<RequestBody>,
        v: &mut Verdict<'_>,
        plan: &PlanEntry,
    ) -> Result<Reserved, Problem> {
        let (Some(route), Some(tenant)) = (v.route, v.tenant) else {
            return Ok(Reserved::default());
        };
        // A translated call is read in the API its caller speaks.
        let metering = route.route.caller_api();
        let route_name = route.route.key.name.as_str();
        let refused = |kind, detail: String| {
            Problem::new(kind, detail)
                .with("tenant", &*tenant.id)
                .with("apiRoute", route_name)
        };
        if !metering.reads_tokens() || req.method() != http::Method::POST {
            return reservation::reserve(plan, &tenant.id, None, &self.estimates)
                .map_err(|_| refused(ProblemKind::BadRequest, "Nothing to price.".to_owned()));
        }
        let body = std::mem::replace(req.body_mut(), RequestBody::Empty);
        let timeout = Duration::from_millis(route.route.timeout_ms);
        let limited = http_body_util::Limited::new(body, request::MAX_BODY);
        let read = tokio::time::timeout(timeout, http_body_util::BodyExt::collect(limited)).await;
        let bytes = match read {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(refused(
                    ProblemKind::RequestTooLarge,
                    format!(
                        "The request body is larger than {} MiB, the most a metered call can have: its usage cannot be estimated. Send a smaller request.",
                        request::MAX_BODY / (1024 * 1024)
                    ),
                ));
            }
            Ok(Err(_)) | Err(_) => {
                return Err(refused(
                    ProblemKind::BadRequest,
                    "The request body could not be read in full; send it again.".to_owned(),
                ));
            }
        };
        // A prompt API's body is the input of the call it makes: the call is read instead.
        let (bytes, call_path) = match &route.prompt {
            Some(prompt) => match prompt.render(&bytes) {
                Ok(call) => (call, "/v1/chat/completions"),
                Err(e) => return Err(refused(ProblemKind::InvalidInput, e.to_string())),
            },
            None => (bytes, req.uri().path()),
        };
        let max_output = plan.plan.reservation.max_output_tokens;
        let inspected = request::inspect(metering, call_path, &bytes, max_output);
        // A plan that reads calls only for quotas of some models needs no model from a request
        // that is not a JSON call (an upload): it goes as it came, outside those quotas.
        if inspected.is_none() && !plan.meters_usage && plan.plan.allowed_models.is_empty() {
            *req.body_mut() = RequestBody::Buffered(Some(bytes));
            return reservation::reserve(plan, &tenant.id, None, &self.estimates)
                .map_err(|_| refused(ProblemKind::BadRequest, "Nothing to price.".to_owned()));
        }
        if let Some(model) = inspected.as_ref().and_then(|c| c.model.as_deref())
            && model.len() > crate::llm::estimate::MAX_MODEL_NAME
        {
            return Err(refused(
                ProblemKind::BadRequest,
                format!(
                    "The model name is {} bytes long; a model name has at most {}.",
                    model.len(),
                    crate::llm::estimate::MAX_MODEL_NAME
                ),
            ));
        }
        let Some(mut call) = inspected else {
            return Err(refused(
                ProblemKind::BadRequest,
                format!(
                    "A call to the metered API {route_name} must send a JSON object (uncompressed): its usage is estimated from it before it is sent."
                ),
            ));
        };
        if !plan.plan.allows_model(call.model.as_deref()) {
            let plan_name = plan.plan.key.name.as_str();
            let named = call.model.as_deref().unwrap_or("(none)");
            return Err(refused(
                ProblemKind::ModelNotAllowed,
                format!(
                    "The plan {plan_name} does not allow the model {named}. Use one of: {}.",
                    plan.plan.allowed_models.join(", ")
                ),
            )
            .with("model", named)
            .with("allowedModels", plan.plan.allowed_models.clone()));
        }
        if let (Some(backends), Some(model)) = (&route.calls, call.model.as_mut()) {
            // Priced as the backend's model (a fallback's answer names its own).
            if let Some(first) = backends.first() {
                *model = crate::llm::translate::backend_model(&first.models, model).to_owned();
            }
        }
        if !plan.meters_usage && route.calls.is_none() {
            // Read for its model only (an allowlist, quotas for some models): nothing is
            // reserved from a bound, so the call goes as it came.
            call.rewritten = None;
            call.strip_usage_chunk = false;
        }
        let sent = call.rewritten.take().unwrap_or(bytes);
        *req.body_mut() = RequestBody::Buffered(Some(sent));
        let reserved = reservation::reserve(plan, &tenant.id, Some(&call), &self.estimates);
        v.call = Some(Box::new(call));
        reserved.map_err(|refusal| {
            let plan_name = plan.plan.key.name.as_str();
            match refusal {
                Refusal::Unpriced(model) => refused(
                    ProblemKind::ModelNotPriced,
                    format!(
                        "The plan {plan_name} has no price for the model {model}, and its usage counts against a Cost quota, so it cannot be charged. Use a model the plan prices, or ask the API provider to price this one."
                    ),
                )
                .with("model", model),
                Refusal::NoModel => refused(
                    ProblemKind::ModelNotPriced,
                    format!(
                        "The call names no model, and the plan {plan_name} counts cost by model. Name the model in the request."
                    ),
                ),
            }
        })
    }

    /// A meter for the response when the plan has token or Cost quotas: it settles the call's
    /// reservation when the response ends.
    #[allow(clippy::too_many_arguments)]
    fn meter_for(
        &self,
        v: &mut Verdict<'_>,
        route: &RouteEntry,
        api: tollgate_crds::resources::Metering,
        status: http::StatusCode,
        (content_type, content_encoding): (Option<&str>, Option<&str>),
        now: Timestamp,
        from_backend: bool,
    ) -> Option<Meter> {
        let (tenant, plan) = (v.tenant?, v.plan?);
        if !plan.meters_usage {
            return None;
        }
        let pricing = plan.plan.pricing.clone();
        let call = v.call.as_deref();
        let prices_tokens = reservation::prices_tokens(plan, call.and_then(|c| c.model.as_deref()));
        // The settlement runs after the response; it keeps its own references.
        let (tenant, plan) = (Arc::clone(&tenant.id), Arc::clone(plan));
        let store = self.store.clone();
        let Reserved {
            reserved,
            unreported,
            unreported_tokens,
        } = v.reserved;
        let settled_tenant = Arc::clone(&tenant);
        let line = Arc::new(DeferredLine::default());
        v.deferred_line = Some(Arc::clone(&line));
        let recorded = Recorded {
            ledger: Arc::clone(&self.ledger),
            metrics: self.metrics.clone(),
            access_log: self.access_log.clone(),
            route: Arc::clone(&route.id),
            currency: pricing.as_ref().map(|p| p.currency.clone()),
            line,
        };
        let settle = Box::new(move |charge: Charge| {
            recorded.record(&tenant, &plan, now, &charge);
            // The quotas that count the call are the ones its reservation was taken from.
            let used = Metered {
                outside: reserved.outside,
                ..charge.metered
            };
            // A call that reserved something is always settled: its final amount is what the
            // store's settled usage (and so the billing export) counts, even when it equals
            // the reservation.
            if used == reserved && reserved.is_nothing() {
                return;
            }
            tokio::spawn(async move {
                let subject = Subject {
                    tenant: &tenant,
                    plan: &plan,
                };
                store.settle(subject, &reserved, &used, now).await
            });
        });
        // Only a call that generates, answered by its backend, has usage to read.
        let metering = match (&v.call, from_backend) {
            (Some(_), true) => api,
            _ => tollgate_crds::resources::Metering::Requests,
        };
        let settlement = Settlement {
            metering,
            tenant: settled_tenant,
            reserved,
            unreported,
            unreported_tokens,
            free_without_usage: call.is_some_and(|c| c.free_without_usage),
            pricing,
            prices_tokens,
            request_model: call.and_then(|c| c.model.clone()),
            body_bytes: call.map_or(0, |c: &CallRequest| c.body_bytes),
            estimates: Arc::clone(&self.estimates),
            settle,
        };
        Some(Meter::new(
            status,
            content_type,
            content_encoding,
            settlement,
        ))
    }

    /// A request the proxy failed: refund the charge, answer with a problem.
    async fn failed(
        &self,
        v: &Verdict<'_>,
        now: Timestamp,
        kind: ProblemKind,
        detail: &str,
        path: &str,
    ) -> (Response<ProxyBody>, Option<ProblemKind>) {
        if v.charged
            && let (Some(tenant), Some(plan)) = (&v.tenant, &v.plan)
        {
            Box::pin(self.store.refund(
                Subject {
                    tenant: &tenant.id,
                    plan,
                },
                &v.reserved.reserved,
                now,
            ))
            .await;
        }
        let mut problem = Problem::new(kind, detail);
        if let Some(route) = &v.route {
            problem = problem.with("apiRoute", route.route.key.name.as_str());
        }
        (problem_response(&problem, path), Some(kind))
    }
}

/// Where a settled call is recorded besides its quotas: the tenant's month in the ledger, the
/// token and cost metrics, and the call's access-log line.
struct Recorded {
    ledger: Arc<Ledger>,
    metrics: ProxyMetrics,
    access_log: AccessLog,
    route: Arc<str>,
    currency: Option<String>,
    line: Arc<DeferredLine>,
}

impl Recorded {
    fn record(&self, tenant: &Arc<str>, plan: &PlanEntry, admitted: Timestamp, charge: &Charge) {
        let tokens = charge.tokens.into();
        let cost = charge.metered.cost;
        self.ledger.record(tenant, plan, admitted, &tokens, cost);
        let per_tenant = self.metrics.tenant_llm.as_ref();
        for (kind, count) in TOKEN_TYPES.iter().zip(token_values(&tokens)) {
            if count > 0 {
                self.metrics
                    .llm_tokens
                    .with_label_values(&[&*self.route, kind])
                    .inc_by(count);
                if let Some((by_tenant, _)) = per_tenant {
                    by_tenant
                        .with_label_values(&[&**tenant, kind])
                        .inc_by(count);
                }
            }
        }
        if let Some(currency) = &self.currency {
            let micros = micros(cost);
            self.metrics
                .llm_cost_micros
                .with_label_values(&[&*self.route, currency])
                .inc_by(micros);
            if let Some((_, by_tenant)) = per_tenant {
                by_tenant
                    .with_label_values(&[&**tenant, currency])
                    .inc_by(micros);
            }
        }
        self.line.used(
            &self.access_log,
            CallFields {
                model: charge.model.clone(),
                tokens,
                cost,
                currency: self.currency.clone(),
            },
        );
    }
}
