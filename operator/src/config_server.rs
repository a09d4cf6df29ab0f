//! The configuration stream (HTTPS): `GET /v1/config/stream?proxy=NAME` answers with
//! newline-delimited JSON, the full snapshot first and then one delta per new version;
//! `POST /v1/config/ack` records the version a proxy applied; `POST /v1/usage` takes a proxy's
//! counters, summed across proxies into `Tenant.status.usage`. Only the leader serves (followers
//! answer 503 and are not ready, so the Service sends proxies to the leader).
//!
//! Each stream carries its caller's share (see [`tollgate_crds::scope`]): the central proxies
//! everything but the sidecars' routes, a sidecar its own pod's routes, tenants and plans, as its
//! pod's labels and annotations said when the stream opened.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tollgate_crds::scope::{Direction, Workload, fleet_delta, fleet_view, workload_view};
use tollgate_crds::snapshot::Snapshot;
use tollgate_crds::stream::{CallUsageRecord, Delta, UsageRecord, UsageReport, diff};

use crate::metrics::OperatorMetrics;
use crate::proxy_auth::{Caller, ProxyAuthenticator, RefusedProxy};
use crate::publisher::Published;

const PING_EVERY: Duration = Duration::from_secs(15);

/// A proxy subscribed to the stream.
#[derive(Debug, Clone)]
pub struct ConnectedProxy {
    /// Its ServiceAccount, or its pod.
    pub identity: String,
    /// The last version it acknowledged.
    pub acked_version: u64,
    /// A sidecar's workload; `None` for a central proxy.
    pub workload: Option<Workload>,
    conn: u64,
}

/// The proxies connected to this replica.
#[derive(Debug, Default)]
pub struct ProxyRegistry {
    proxies: Mutex<HashMap<String, ConnectedProxy>>,
    /// Each proxy's last usage report. Kept after a disconnect: its counts still belong to the
    /// period (a restarted proxy keeps its counters and reports under the same name).
    usage: Mutex<HashMap<String, Vec<UsageRecord>>>,
    /// Each proxy's last report of the month's call usage, kept likewise.
    calls: Mutex<HashMap<String, Vec<CallUsageRecord>>>,
    seq: AtomicU64,
    /// Notified on connect, disconnect and ack.
    pub changed: Notify,
}

impl ProxyRegistry {
    fn connect(&self, name: &str, identity: &str, workload: Option<Workload>) -> u64 {
        let conn = self.seq.fetch_add(1, Ordering::Relaxed);
        self.proxies.lock().insert(
            name.to_owned(),
            ConnectedProxy {
                identity: identity.to_owned(),
                acked_version: 0,
                workload,
                conn,
            },
        );
        self.changed.notify_one();
        conn
    }

    fn disconnect(&self, name: &str, conn: u64) {
        let mut proxies = self.proxies.lock();
        // A reconnect may already have replaced this entry.
        if proxies.get(name).is_some_and(|p| p.conn == conn) {
            proxies.remove(name);
        }
        drop(proxies);
        self.changed.notify_one();
    }

    fn ack(&self, name: &str, version: u64) -> bool {
        let mut proxies = self.proxies.lock();
        let Some(p) = proxies.get_mut(name) else {
            return false;
        };
        p.acked_version = p.acked_version.max(version);
        drop(proxies);
        self.changed.notify_one();
        true
    }

    /// Whether `name` has a stream open as `identity` (a sidecar reports only while subscribed).
    fn is_connected(&self, name: &str, identity: &str) -> bool {
        self.proxies
            .lock()
            .get(name)
            .is_some_and(|p| p.identity == identity)
    }

    fn report(&self, report: UsageReport, now: jiff::Timestamp) {
        // Reports whose periods have all ended count nowhere any more: dropped, so the names of
        // sidecars long replaced (a pod's name changes with each rollout) do not pile up.
        let mut calls = self.calls.lock();
        calls.retain(|_, records| records.iter().any(|r| r.period_end > now));
        calls.insert(report.proxy.clone(), report.calls);
        drop(calls);
        let mut usage = self.usage.lock();
        usage.retain(|_, records| records.iter().any(|r| r.period_end > now));
        usage.insert(report.proxy, report.counters);
        drop(usage);
        self.changed.notify_one();
    }

    /// A tenant's call usage summed over every proxy's last report, per (plan, month), for the
    /// months that have not ended at `now`.
    pub fn call_usage_of(&self, tenant: &str, now: jiff::Timestamp) -> Vec<CallUsageRecord> {
        let mut sums: std::collections::BTreeMap<(String, jiff::Timestamp), CallUsageRecord> =
            Default::default();
        for record in self.calls.lock().values().flatten() {
            if record.tenant != tenant || record.period_end <= now {
                continue;
            }
            sums.entry((record.plan.clone(), record.period_start))
                .and_modify(|sum| {
                    sum.requests = sum.requests.saturating_add(record.requests);
                    sum.tokens.add(&record.tokens);
                    sum.cost += record.cost;
                })
                .or_insert_with(|| record.clone());
        }
        sums.into_values().collect()
    }

    /// A tenant's usage summed over every proxy's last report, per (plan, quota, period), for the
    /// periods that have not ended at `now`.
    pub fn usage_of(&self, tenant: &str, now: jiff::Timestamp) -> Vec<UsageRecord> {
        let mut sums: std::collections::BTreeMap<(String, String, jiff::Timestamp), UsageRecord> =
            Default::default();
        for record in self.usage.lock().values().flatten() {
            if record.tenant != tenant || record.period_end <= now {
                continue;
            }
            sums.entry((
                record.plan.clone(),
                record.quota.clone(),
                record.period_start,
            ))
            .and_modify(|sum| sum.used += record.used)
            .or_insert_with(|| record.clone());
        }
        sums.into_values().collect()
    }

    /// Every connected proxy, by name.
    pub fn connected(&self) -> Vec<(String, ConnectedProxy)> {
        let mut out: Vec<_> = self
            .proxies
            .lock()
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Name and acknowledged version of every connected proxy.
    pub fn list(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .proxies
            .lock()
            .iter()
            .map(|(n, p)| (n.clone(), p.acked_version))
            .collect();
        out.sort();
        out
    }
}

/// One line of the stream, serialized without cloning the snapshot.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum Outgoing<'a> {
    Full {
        version: u64,
        snapshot: &'a Snapshot,
    },
    Delta(&'a Delta),
    Ping,
}

#[derive(Deserialize)]
struct Ack {
    proxy: String,
    version: u64,
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Which share of the configuration a stream carries.
#[derive(Debug, Clone)]
enum Audience {
    /// A central proxy: everything but the sidecars' routes.
    Fleet,
    /// A sidecar: its pod's routes, their tenants and plans.
    Workload(Workload),
}

/// Shared state of the config server.
#[derive(Debug)]
pub struct ConfigServer {
    /// Latest publication.
    pub published: watch::Receiver<Arc<Published>>,
    /// Whether this replica leads.
    pub leading: watch::Receiver<bool>,
    /// Token verification.
    pub auth: ProxyAuthenticator,
    /// Connected proxies.
    pub registry: Arc<ProxyRegistry>,
    /// Metrics.
    pub metrics: OperatorMetrics,
}

fn json_response(status: StatusCode, detail: &str) -> Response<Body> {
    let body = serde_json::json!({"status": status.as_u16(), "detail": detail}).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn encode(msg: &Outgoing<'_>) -> Bytes {
    let mut line = serde_json::to_vec(msg).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

impl ConfigServer {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned();
        let caller = match self.auth.verify(&token).await {
            Ok(caller) => caller,
            Err(why) => return self.refuse(why),
        };
        if !*self.leading.borrow() {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "this operator replica is not the leader; retry",
            );
        }
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/v1/config/stream") => {
                let name = req
                    .uri()
                    .query()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("proxy=")))
                    .filter(|n| !n.is_empty() && n.len() <= 253)
                    .map(str::to_owned);
                let Some(name) = name else {
                    return json_response(StatusCode::BAD_REQUEST, "missing ?proxy=NAME");
                };
                if !caller.may_use_name(&name) {
                    return self.wrong_name(&caller, &name);
                }
                let audience = match &caller {
                    Caller::Fleet(_) => Audience::Fleet,
                    Caller::Pod {
                        namespace,
                        name,
                        uid,
                    } => match self.auth.workload_of(namespace, name, uid).await {
                        Ok(workload) => Audience::Workload(workload),
                        Err(why) => return self.refuse(why),
                    },
                };
                self.stream(name, caller.identity(), audience)
            }
            (&Method::POST, "/v1/config/ack") => {
                let body = match Limited::new(req.into_body(), 4096).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => {
                        return json_response(
                            StatusCode::BAD_REQUEST,
                            "ack body too large or unreadable",
                        );
                    }
                };
                let Ok(ack) = serde_json::from_slice::<Ack>(&body) else {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        "expected {\"proxy\": NAME, \"version\": N}",
                    );
                };
                if !caller.may_use_name(&ack.proxy) {
                    return self.wrong_name(&caller, &ack.proxy);
                }
                if !self.registry.ack(&ack.proxy, ack.version) {
                    return json_response(StatusCode::NOT_FOUND, "no stream open for this proxy");
                }
                let published = self.published.borrow().clone();
                if ack.version == published.version
                    && let Some(at) = published.published_at
                {
                    self.metrics.propagation.observe(at.elapsed().as_secs_f64());
                }
                let mut resp = Response::new(Full::new(Bytes::new()).boxed_unsync());
                *resp.status_mut() = StatusCode::NO_CONTENT;
                resp
            }
            (&Method::POST, "/v1/usage") => {
                let body = match Limited::new(req.into_body(), 64 * 1024 * 1024)
                    .collect()
                    .await
                {
                    Ok(b) => b.to_bytes(),
                    Err(_) => {
                        return json_response(
                            StatusCode::BAD_REQUEST,
                            "usage report too large or unreadable",
                        );
                    }
                };
                let Ok(mut report) = serde_json::from_slice::<UsageReport>(&body) else {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        "expected {\"proxy\": NAME, \"counters\": [...]}",
                    );
                };
                if !caller.may_use_name(&report.proxy) {
                    return self.wrong_name(&caller, &report.proxy);
                }
                // A sidecar reports only while its stream is open (so only an injected pod can),
                // and speaks for its own namespace's tenants only.
                if let Some(namespace) = caller.namespace() {
                    if !self
                        .registry
                        .is_connected(&report.proxy, &caller.identity())
                    {
                        return json_response(
                            StatusCode::CONFLICT,
                            "a sidecar reports usage only while its configuration stream is open",
                        );
                    }
                    let own =
                        |tenant: &str| tenant.split_once('/').map(|(ns, _)| ns) == Some(namespace);
                    report.counters.retain(|r| own(&r.tenant));
                    report.calls.retain(|r| own(&r.tenant));
                }
                self.registry.report(report, jiff::Timestamp::now());
                let mut resp = Response::new(Full::new(Bytes::new()).boxed_unsync());
                *resp.status_mut() = StatusCode::NO_CONTENT;
                resp
            }
            _ => json_response(
                StatusCode::NOT_FOUND,
                "try GET /v1/config/stream, POST /v1/config/ack or POST /v1/usage",
            ),
        }
    }

    /// A caller naming a proxy that is not its own (403): logged and counted, as a sidecar that
    /// does so is misconfigured (its `--proxy-name`) or trying to pass for another proxy.
    fn wrong_name(&self, caller: &Caller, proxy: &str) -> Response<Body> {
        self.metrics
            .proxy_refusals
            .with_label_values(&["wrong_name"])
            .inc();
        let detail = format!(
            "{} may only use its own proxy name (NAMESPACE/POD, as the injected --proxy-name gives it), not {proxy:?}",
            caller.identity()
        );
        tracing::warn!(%detail, "refused a caller of the configuration stream");
        json_response(StatusCode::FORBIDDEN, &detail)
    }

    /// Answers a caller that is not let in (401, or 503 when the fault is the operator's).
    fn refuse(&self, why: RefusedProxy) -> Response<Body> {
        self.metrics
            .proxy_refusals
            .with_label_values(&[why.label()])
            .inc();
        tracing::warn!(reason = %why, "refused a caller of the configuration stream");
        let status = if why.is_callers_fault() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(status, &why.to_string())
    }

    fn stream(
        self: Arc<Self>,
        name: String,
        identity: String,
        audience: Audience,
    ) -> Response<Body> {
        let (tx, rx) = mpsc::channel::<Bytes>(8);
        let server = self.clone();
        tokio::spawn(async move {
            let workload = match &audience {
                Audience::Fleet => None,
                Audience::Workload(w) => Some(w.clone()),
            };
            let conn = server.registry.connect(&name, &identity, workload);
            server
                .metrics
                .connected_proxies
                .set(i64::try_from(server.registry.list().len()).unwrap_or(0));
            tracing::info!(proxy = %name, %identity, "proxy subscribed");
            server.feed(&name, &audience, tx).await;
            server.registry.disconnect(&name, conn);
            server
                .metrics
                .connected_proxies
                .set(i64::try_from(server.registry.list().len()).unwrap_or(0));
            tracing::info!(proxy = %name, "proxy stream ended");
        });
        let frames = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
        });
        let mut resp = Response::new(StreamBody::new(frames.boxed()).boxed_unsync());
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-ndjson"),
        );
        resp.headers_mut().insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        resp
    }

    async fn send(&self, tx: &mpsc::Sender<Bytes>, kind: &str, line: Bytes) -> bool {
        self.metrics
            .push_bytes
            .with_label_values(&[kind])
            .inc_by(line.len() as u64);
        tx.send(line).await.is_ok()
    }

    /// Writes the stream until the proxy goes away or this replica stops leading.
    async fn feed(&self, name: &str, audience: &Audience, tx: mpsc::Sender<Bytes>) {
        let mut published = self.published.clone();
        let mut leading = self.leading.clone();
        let mut last = published.borrow_and_update().clone();
        while last.version == 0 {
            if published.changed().await.is_err() {
                return;
            }
            last = published.borrow_and_update().clone();
        }
        // A sidecar's deltas are computed from the view it holds; the fleet's come from the
        // published delta, filtered.
        let mut held = match audience {
            Audience::Fleet => None,
            Audience::Workload(workload) => Some((
                workload,
                workload_view(&last.snapshot, workload),
                Vec::new(),
            )),
        };
        let full = match &mut held {
            None => encode(&Outgoing::Full {
                version: last.version,
                snapshot: &fleet_view(&last.snapshot),
            }),
            Some((workload, view, problems)) => {
                log_unserved(name, problems, unserved(workload, &last.snapshot, view));
                encode(&Outgoing::Full {
                    version: last.version,
                    snapshot: view,
                })
            }
        };
        tracing::debug!(proxy = %name, version = last.version, bytes = full.len(), "sending full snapshot");
        if !self.send(&tx, "full", full).await {
            return;
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                changed = published.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let next = published.borrow_and_update().clone();
                    if next.version == last.version {
                        continue;
                    }
                    let (kind, line) = match &mut held {
                        None => ("delta", match &next.delta {
                            Some(delta) if delta.base == last.version => encode(&Outgoing::Delta(&fleet_delta(delta))),
                            // This stream missed a version: send the difference from what it has.
                            _ => encode(&Outgoing::Delta(&fleet_delta(&diff(&last.snapshot, &next.snapshot, last.version, next.version)))),
                        }),
                        Some((workload, held, problems)) => {
                            let view = workload_view(&next.snapshot, workload);
                            log_unserved(name, problems, unserved(workload, &next.snapshot, &view));
                            // A delta does not carry the egress identity: when it changes (the
                            // Tenant appeared after the sidecar connected), the whole view goes.
                            // Otherwise a delta, sent even when empty: every version is acked.
                            let line = if view.workload_tenant == held.workload_tenant {
                                ("delta", encode(&Outgoing::Delta(&diff(held, &view, last.version, next.version))))
                            } else {
                                ("full", encode(&Outgoing::Full { version: next.version, snapshot: &view }))
                            };
                            *held = view;
                            line
                        }
                    };
                    if !self.send(&tx, kind, line).await {
                        return;
                    }
                    last = next;
                }
                _ = ping.tick() => {
                    if !self.send(&tx, "ping", encode(&Outgoing::Ping)).await {
                        return;
                    }
                }
                changed = leading.changed() => {
                    if changed.is_err() || !*leading.borrow() {
                        return;
                    }
                }
            }
        }
    }
}

/// Why a sidecar's view leaves every request refused: a selector that matches none of its
/// pod's routes, routes no tenant subscribes to, an egress Tenant missing or not accepted. The
/// reason belongs in the operator's log, where the routes are; the sidecar only sees 404 or 401.
fn unserved(workload: &Workload, snapshot: &Snapshot, view: &Snapshot) -> Vec<String> {
    let mut problems = Vec::new();
    let ns = &workload.namespace;
    if view.routes.is_empty() {
        let selected: Vec<String> = snapshot
            .routes
            .iter()
            .filter(|r| workload.selects(r))
            .map(|r| r.key.name.clone())
            .collect();
        problems.push(if selected.is_empty() {
            format!(
                "no ApiRoute in namespace {ns} has a workloadSelector matching this pod's labels {:?}: the sidecar answers 404 to everything",
                workload.labels
            )
        } else {
            format!(
                "the ApiRoutes {selected:?} select this egress sidecar's pod but name no backend.url (an egress route leads out of the pod): the sidecar answers 404 to everything"
            )
        });
    }
    match &workload.direction {
        Direction::Egress { tenant } if view.workload_tenant.is_none() => problems.push(format!(
            "the egress sidecar's Tenant {ns}/{tenant} does not exist or was not accepted (see its status): the app's calls get 401"
        )),
        Direction::Ingress { .. } if !view.routes.is_empty() && view.tenants.is_empty() => {
            problems.push(format!(
                "no Tenant in namespace {ns} subscribes to this sidecar's routes: every request gets 401"
            ));
        }
        _ => {}
    }
    problems
}

/// Logs a sidecar's problems when they change (and when they clear), not on every version.
fn log_unserved(proxy: &str, logged: &mut Vec<String>, now: Vec<String>) {
    if *logged == now {
        return;
    }
    for problem in now.iter().filter(|p| !logged.contains(p)) {
        tracing::warn!(%proxy, "{problem}");
    }
    if now.is_empty() {
        tracing::info!(%proxy, "the sidecar's configuration serves its workload again");
    }
    *logged = now;
}

/// Time a client has to finish its TLS handshake, then each request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the stream over TLS until the task is dropped.
pub async fn serve(listener: TcpListener, tls: TlsAcceptor, server: Arc<ConfigServer>) {
    serve_https(listener, tls, move |req| {
        let server = server.clone();
        async move { server.handle(req).await }
    })
    .await;
}

/// Serves HTTPS/1.1 on `listener`, each request answered by `handle`.
pub async fn serve_https<F, Fut, B>(listener: TcpListener, tls: TlsAcceptor, handle: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (tls, handle) = (tls.clone(), handle.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(s)) => s,
                _ => {
                    tracing::debug!(%peer, "TLS handshake failed");
                    return;
                }
            };
            let service = service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(handle(req).await) }
            });
            // Streams are long by design; a head is not: a client that never finishes one is
            // dropped rather than held (the port is reachable from the whole cluster).
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
